//! The operator's own token refresh endpoint (ADR 012's `refreshEndpoint`).
//!
//! A consumer of an `oauth2` transfer holds a JWT and a refresh token of ours. It sends only the
//! refresh token (`grant_type=refresh_token`, RFC 6749 §6) and gets a new JWT for the transfer's
//! current grant, issued by the identity provider with the transfer's own client, whose secret
//! the consumer never sees, plus a new refresh token.
//!
//! Refresh tokens are opaque to the consumer: `v1.<transfer>.<secret>`, where `<transfer>` locates
//! the MqttTransfer (base64url of `namespace/name`, not a secret) and `<secret>` is 256 random
//! bits. The operator keeps only SHA-256 digests, in an annotation of the transfer's Secret
//! ([`ROTATION_ANNOTATION`]); a plain digest suffices because the token is random and long, not
//! a password. Rotation follows "retire on acknowledgement" (Tractus-X): each refresh returns a
//! new token, and the presented one stays valid until the new one has been used once, so a lost
//! response does not lock the consumer out.
//!
//! This module is the pure part (format, digests, rotation, request parsing, error shape);
//! [`service`] checks a request against the cluster and issues the token; [`server`] serves it.

pub mod consumer_auth;
pub mod server;
pub mod service;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Annotation on a transfer's Secret holding the digests of its valid refresh tokens:
/// `sha256:<current>` or `sha256:<current>,sha256:<next>`.
pub const ROTATION_ANNOTATION: &str = "dsp-mqtt.io/refresh-token";

/// The largest request body read (a refresh token is ~100 bytes; Tractus-X sends two short
/// parameters).
pub const MAX_BODY_BYTES: usize = 4096;

const PREFIX: &str = "v1";
const SECRET_BYTES: usize = 32;

/// A SHA-256 digest of a refresh token.
pub type Digest32 = [u8; 32];

/// A new refresh token for the transfer `namespace`/`name` and its digest.
pub fn mint(namespace: &str, name: &str) -> (SecretString, Digest32) {
    let secret: [u8; SECRET_BYTES] = rand::random();
    let token = format!(
        "{PREFIX}.{}.{}",
        URL_SAFE_NO_PAD.encode(format!("{namespace}/{name}")),
        URL_SAFE_NO_PAD.encode(secret)
    );
    let digest = digest(&token);
    (SecretString::from(token), digest)
}

/// SHA-256 of the token text.
pub fn digest(token: &str) -> Digest32 {
    Sha256::digest(token.as_bytes()).into()
}

/// The transfer (`namespace`, `name`) a refresh token names, if it has our shape. Says nothing
/// about validity: only the digest comparison does.
pub fn locate(token: &SecretString) -> Option<(String, String)> {
    let mut parts = token.expose_secret().split('.');
    let (prefix, transfer, secret) = (parts.next()?, parts.next()?, parts.next()?);
    if prefix != PREFIX || parts.next().is_some() {
        return None;
    }
    if URL_SAFE_NO_PAD.decode(secret).ok()?.len() != SECRET_BYTES {
        return None;
    }
    let transfer = String::from_utf8(URL_SAFE_NO_PAD.decode(transfer).ok()?).ok()?;
    let (namespace, name) = transfer.split_once('/')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains('/')).then(|| (namespace.to_owned(), name.to_owned()))
}

/// Which stored digest a presented token matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matched {
    /// The token issued last and already used (or the first one).
    Current,
    /// The token handed out by the last refresh, used now for the first time.
    Next,
}

/// The digests of a transfer's valid refresh tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Valid until [`Rotation::next`] is used.
    pub current: Digest32,
    /// Handed out by the last refresh, not yet used.
    pub next: Option<Digest32>,
}

impl Rotation {
    /// Only `first` is valid.
    pub fn new(first: Digest32) -> Self {
        Self { current: first, next: None }
    }

    /// Reads the annotation value; `None` when it is not ours.
    pub fn parse(text: &str) -> Option<Self> {
        let hex = |part: &str| -> Option<Digest32> {
            let hex = part.strip_prefix("sha256:")?;
            if hex.len() != 64 {
                return None;
            }
            let mut out = [0u8; 32];
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            Some(out)
        };
        let mut parts = text.split(',');
        let current = hex(parts.next()?)?;
        let next = match parts.next() {
            Some(part) => Some(hex(part)?),
            None => None,
        };
        parts.next().is_none().then_some(Self { current, next })
    }

    /// The annotation value.
    pub fn render(&self) -> String {
        let hex = |d: &Digest32| format!("sha256:{}", d.iter().map(|b| format!("{b:02x}")).collect::<String>());
        match &self.next {
            Some(next) => format!("{},{}", hex(&self.current), hex(next)),
            None => hex(&self.current),
        }
    }

    /// Which digest `presented` equals. Both comparisons always run, each in constant time, so
    /// the answer's timing says nothing about the stored digests.
    pub fn check(&self, presented: &Digest32) -> Option<Matched> {
        let current: bool = self.current.ct_eq(presented).into();
        let next: bool = self.next.map(|n| bool::from(n.ct_eq(presented))).unwrap_or(false);
        match (current, next) {
            (true, _) => Some(Matched::Current),
            (false, true) => Some(Matched::Next),
            _ => None,
        }
    }

    /// The state after a refresh with the token that `matched`, handing out `new`: using the
    /// next token retires the current one; using the current one again (its answer was lost)
    /// replaces the unused next one.
    pub fn rotate(&self, matched: Matched, new: Digest32) -> Rotation {
        let current = match (matched, self.next) {
            (Matched::Next, Some(next)) => next,
            _ => self.current,
        };
        Rotation { current, next: Some(new) }
    }
}

/// An error in the shape of RFC 6749 §5.2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthError {
    /// HTTP status.
    pub status: u16,
    /// `error`.
    pub code: &'static str,
    /// `error_description` (never holds a token).
    pub description: String,
    /// Seconds for `Retry-After` (429 only).
    pub retry_after: Option<u64>,
}

impl OAuthError {
    fn new(status: u16, code: &'static str, description: impl Into<String>) -> Self {
        Self { status, code, description: description.into(), retry_after: None }
    }

    /// 400 `invalid_request`: a parameter missing, repeated or malformed.
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", description)
    }

    /// 400 `invalid_grant`: the refresh token is unknown, retired, or its transfer may no longer
    /// get tokens.
    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(400, "invalid_grant", description)
    }

    /// 400 `unsupported_grant_type`.
    pub fn unsupported_grant_type(description: impl Into<String>) -> Self {
        Self::new(400, "unsupported_grant_type", description)
    }

    /// 401 `invalid_client`: the bearer JWT the configuration requires is missing or wrong.
    pub fn invalid_client(description: impl Into<String>) -> Self {
        Self::new(401, "invalid_client", description)
    }

    /// 429 with `Retry-After` (RFC 6585; the body keeps the RFC 6749 shape).
    pub fn too_many_requests(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(429, "slow_down", "too many refresh requests; retry after the time in Retry-After")
        }
    }

    /// 503 `temporarily_unavailable`: a backend did not answer.
    pub fn unavailable(description: impl Into<String>) -> Self {
        Self::new(503, "temporarily_unavailable", description)
    }

    /// 413 for a body over [`MAX_BODY_BYTES`].
    pub fn too_large() -> Self {
        Self::new(413, "invalid_request", format!("the request body is larger than {MAX_BODY_BYTES} bytes"))
    }

    /// The metrics label: the error code.
    pub fn reason(&self) -> &'static str {
        self.code
    }
}

/// A well-formed refresh request.
#[derive(Debug)]
pub struct RefreshRequest {
    /// The presented refresh token.
    pub refresh_token: SecretString,
}

/// Reads `grant_type` and `refresh_token` from a form body, falling back to the query string for
/// each (the Tractus-X client sends both). A parameter repeated within one source is an error
/// (RFC 6749 §3.2); `url`'s form decoder does the decoding (hand-written: only the rules above).
pub fn parse_request(
    query: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<RefreshRequest, OAuthError> {
    let is_form = content_type
        .and_then(|c| c.split(';').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if !body.is_empty() && !is_form {
        return Err(OAuthError::invalid_request("the body must be application/x-www-form-urlencoded"));
    }
    let from_body = params(body, "body")?;
    let from_query = params(query.unwrap_or_default().as_bytes(), "query string")?;
    let get = |key: &str| from_body.get(key).or_else(|| from_query.get(key)).map(String::as_str);
    match get("grant_type") {
        None | Some("") => return Err(OAuthError::invalid_request("grant_type is missing")),
        Some("refresh_token") => {}
        Some(_) => {
            return Err(OAuthError::unsupported_grant_type("only grant_type=refresh_token is served here"));
        }
    }
    match get("refresh_token") {
        None | Some("") => Err(OAuthError::invalid_request("refresh_token is missing")),
        Some(token) => Ok(RefreshRequest { refresh_token: SecretString::from(token.to_owned()) }),
    }
}

fn params(bytes: &[u8], source: &str) -> Result<std::collections::HashMap<String, String>, OAuthError> {
    let mut out = std::collections::HashMap::new();
    for (key, value) in url::form_urlencoded::parse(bytes) {
        if matches!(key.as_ref(), "grant_type" | "refresh_token")
            && out.insert(key.to_string(), value.into_owned()).is_some()
        {
            return Err(OAuthError::invalid_request(format!("{key} is repeated in the {source}")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    #[test]
    fn a_minted_token_locates_its_transfer_and_only_its_digest_matches() {
        let (token, digest) = mint("team-a", "t-1");
        assert_eq!(locate(&token), Some(("team-a".into(), "t-1".into())));
        assert_eq!(super::digest(token.expose_secret()), digest);
        let (other, _) = mint("team-a", "t-1");
        assert_ne!(other.expose_secret(), token.expose_secret(), "256 random bits per token");
        let rotation = Rotation::new(digest);
        assert_eq!(rotation.check(&digest), Some(Matched::Current));
        assert_eq!(rotation.check(&super::digest(other.expose_secret())), None);
    }

    #[test]
    fn tokens_of_another_shape_locate_nothing() {
        for text in ["", "v1", "v1..", "v2.dGVhbS1hL3QtMQ.AAAA", "v1.dGVhbS1hL3QtMQ.AAAA", "eyJhbGciOi.eyJ.sig"] {
            assert_eq!(locate(&SecretString::from(text)), None, "{text}");
        }
    }

    #[test]
    fn rotation_retires_the_old_token_once_the_new_one_is_used() {
        let [a, b, c, d] = [[1u8; 32], [2; 32], [3; 32], [4; 32]];
        let first = Rotation::new(a);
        // A refresh with a hands out b; a stays valid (the answer may have been lost).
        let after_a = first.rotate(first.check(&a).unwrap(), b);
        assert_eq!(after_a.check(&a), Some(Matched::Current));
        assert_eq!(after_a.check(&b), Some(Matched::Next));
        // The answer was lost: a again hands out c, and b (never delivered) is dropped.
        let retried = after_a.rotate(Matched::Current, c);
        assert_eq!(retried.check(&b), None);
        // c is used: a is retired.
        let after_c = retried.rotate(retried.check(&c).unwrap(), d);
        assert_eq!(after_c.check(&a), None);
        assert_eq!(after_c.check(&c), Some(Matched::Current));
        assert_eq!(after_c.check(&d), Some(Matched::Next));
        assert_eq!(Rotation::parse(&after_c.render()), Some(after_c.clone()));
        assert_eq!(Rotation::parse(&first.render()), Some(first));
        for bad in ["", "sha256:00", "md5:00", &format!("{},x", after_c.render())] {
            assert_eq!(Rotation::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_form_body_and_the_query_string_are_both_read() {
        let ok = parse_request(None, FORM, b"grant_type=refresh_token&refresh_token=v1.abc").unwrap();
        assert_eq!(ok.refresh_token.expose_secret(), "v1.abc");
        // Tractus-X: both in the query (and the body), a charset on the content type.
        let q = "grant_type=refresh_token&refresh_token=v1.q%2Bx";
        let ok = parse_request(Some(q), Some("application/x-www-form-urlencoded; charset=UTF-8"), b"").unwrap();
        assert_eq!(ok.refresh_token.expose_secret(), "v1.q+x");
        let ok = parse_request(Some("refresh_token=v1.query"), FORM, b"grant_type=refresh_token&refresh_token=v1.body")
            .unwrap();
        assert_eq!(ok.refresh_token.expose_secret(), "v1.body", "the body wins");
    }

    #[test]
    fn bad_requests_get_the_rfc_6749_error() {
        let code = |q: Option<&str>, ct: Option<&str>, body: &[u8]| parse_request(q, ct, body).unwrap_err().code;
        assert_eq!(code(None, FORM, b"refresh_token=x"), "invalid_request");
        assert_eq!(code(None, FORM, b"grant_type=client_credentials&refresh_token=x"), "unsupported_grant_type");
        assert_eq!(code(None, FORM, b"grant_type=refresh_token"), "invalid_request");
        assert_eq!(code(None, FORM, b"grant_type=refresh_token&refresh_token="), "invalid_request");
        assert_eq!(code(None, Some("application/json"), br#"{"grant_type":"refresh_token"}"#), "invalid_request");
        assert_eq!(
            code(None, FORM, b"grant_type=refresh_token&refresh_token=a&refresh_token=b"),
            "invalid_request",
            "a repeated parameter"
        );
        let e =
            parse_request(None, FORM, b"grant_type=refresh_token&refresh_token=a&refresh_token=v1.secret").unwrap_err();
        assert!(!e.description.contains("v1.secret"), "{e:?}");
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            /// Whatever arrives, the parser answers (no panic), and an error never echoes the
            /// token it was given.
            #[test]
            fn the_parser_never_panics_nor_echoes_a_token(
                query in proptest::option::of(".{0,200}"),
                body in proptest::collection::vec(any::<u8>(), 0..400),
                form in any::<bool>(),
            ) {
                let ct = if form { FORM } else { Some("text/plain") };
                if let Err(e) = parse_request(query.as_deref(), ct, &body) {
                    prop_assert!([400u16].contains(&e.status));
                    prop_assert!(!e.description.contains("refresh_token="));
                }
            }

            /// A request built from any token text round-trips through the form encoding.
            #[test]
            fn any_token_text_round_trips(token in "[ -~]{1,120}") {
                let body: String = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", &token)
                    .finish();
                let parsed = parse_request(None, FORM, body.as_bytes()).unwrap();
                prop_assert_eq!(parsed.refresh_token.expose_secret(), token.as_str());
            }

            /// `locate` accepts exactly what `mint` makes.
            #[test]
            fn locate_reads_back_what_mint_made(ns in "[a-z0-9-]{1,63}", name in "[a-z0-9.-]{1,80}") {
                let (token, _) = mint(&ns, &name);
                prop_assert_eq!(locate(&token), Some((ns, name)));
            }
        }
    }
}
