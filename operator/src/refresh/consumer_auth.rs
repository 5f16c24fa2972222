//! The optional second factor of a refresh request: `Authorization: Bearer <JWT>` signed by the
//! consumer (the Tractus-X refresh profile, where the key is the consumer's DID key). Verified
//! against the keys the configuration names (a JWKS URL or file); `iss` and `sub` must both be
//! the transfer's consumer participant id, `aud` one of the configured audiences when any are.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use url::Url;

use super::OAuthError;
use crate::config::{ConsumerAuth, ConsumerAuthMode};

/// Keys are read again after this long (a consumer's key rotation shows within it), and at
/// most this often when a JWT names a key id that is not known.
const KEYS_TTL: Duration = Duration::from_secs(300);
const UNKNOWN_KID_RETRY: Duration = Duration::from_secs(30);

enum Source {
    Url(Url),
    File(PathBuf),
}

/// Verifies consumers' bearer JWTs.
pub struct ConsumerVerifier {
    source: Source,
    audiences: Vec<String>,
    http: reqwest::Client,
    keys: tokio::sync::Mutex<Keys>,
}

/// The keys as last read, and when a JWT last named a key id they lacked.
#[derive(Default)]
struct Keys {
    read: Option<(Instant, JwkSet)>,
    last_miss: Option<Instant>,
}

impl std::fmt::Debug for ConsumerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerVerifier").field("audiences", &self.audiences).finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
}

impl ConsumerVerifier {
    /// `None` in mode `refreshToken` (nothing to verify).
    pub fn new(auth: &ConsumerAuth) -> Result<Option<Self>, String> {
        if auth.mode == ConsumerAuthMode::RefreshToken {
            return Ok(None);
        }
        let source = match (&auth.jwks_url, &auth.jwks_file) {
            (Some(url), _) => Source::Url(url.clone()),
            (None, Some(file)) => Source::File(file.clone()),
            (None, None) => return Err("refresh.consumerAuth: mode bearerJwt needs jwksUrl or jwksFile".into()),
        };
        let mut builder =
            reqwest::Client::builder().timeout(Duration::from_secs(10)).redirect(reqwest::redirect::Policy::limited(3));
        if let Some(ca) = &auth.jwks_ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| format!("refresh.consumerAuth.jwksCaFile {}: {e}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("refresh.consumerAuth.jwksCaFile {}: not PEM: {e}", ca.display()))?;
            builder = builder.tls_certs_only(certs);
        }
        let http = builder.build().map_err(|e| format!("cannot build the JWKS client: {e}"))?;
        Ok(Some(Self { source, audiences: auth.audiences.clone(), http, keys: tokio::sync::Mutex::default() }))
    }

    /// Checks the `Authorization` header of a refresh of `participant`'s transfer.
    pub async fn verify(&self, authorization: Option<&str>, participant: &str) -> Result<(), OAuthError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| OAuthError::invalid_client("a bearer JWT signed by the consumer is required"))?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| OAuthError::invalid_client("the bearer token is not a JWT"))?;
        if matches!(header.alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(OAuthError::invalid_client("the bearer JWT must be signed with a public-key algorithm"));
        }
        let candidates = self.keys_for(header.kid.as_deref(), header.alg).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = 30;
        if self.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audiences);
        }
        let mut last = None;
        for jwk in &candidates {
            let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
            match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
                Ok(data) => {
                    let claims = data.claims;
                    return if claims.iss == participant && claims.sub == participant {
                        Ok(())
                    } else {
                        Err(OAuthError::invalid_client(
                            "the bearer JWT's iss and sub must both be the transfer's consumer",
                        ))
                    };
                }
                Err(e) => last = Some(e),
            }
        }
        let why = match last.as_ref().map(|e| e.kind()) {
            Some(jsonwebtoken::errors::ErrorKind::ExpiredSignature) => "the bearer JWT has expired",
            Some(jsonwebtoken::errors::ErrorKind::InvalidAudience) => "the bearer JWT's aud is not this provider",
            Some(jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(_)) => "the bearer JWT lacks exp, iss or sub",
            _ => "the bearer JWT's signature does not verify with the consumers' keys",
        };
        Err(OAuthError::invalid_client(why))
    }

    /// The keys that may have signed a JWT with this header: the one with its `kid`, else
    /// every key of its algorithm's family.
    async fn keys_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<Vec<Jwk>, OAuthError> {
        let pick = |set: &JwkSet| -> Vec<Jwk> {
            match kid {
                Some(kid) => set.find(kid).cloned().into_iter().collect(),
                None => set
                    .keys
                    .iter()
                    .filter(|k| {
                        k.common.key_algorithm.and_then(|a| Algorithm::try_from(a).ok()).is_none_or(|a| a == alg)
                    })
                    .cloned()
                    .collect(),
            }
        };
        let mut keys = self.keys.lock().await;
        if let Some((at, set)) = &keys.read
            && at.elapsed() < KEYS_TTL
        {
            let found = pick(set);
            let may_reread = keys.last_miss.is_none_or(|t| t.elapsed() >= UNKNOWN_KID_RETRY);
            if !found.is_empty() || !may_reread {
                return Ok(found);
            }
            keys.last_miss = Some(Instant::now());
        }
        let set = self.load().await?;
        let found = pick(&set);
        keys.read = Some((Instant::now(), set));
        Ok(found)
    }

    async fn load(&self) -> Result<JwkSet, OAuthError> {
        let unavailable = |what: String| {
            tracing::warn!("cannot read the consumers' keys: {what}");
            OAuthError::unavailable("the consumers' keys cannot be read now")
        };
        let bytes = match &self.source {
            Source::File(path) => {
                tokio::fs::read(path).await.map_err(|e| unavailable(format!("{}: {e}", path.display())))?
            }
            Source::Url(url) => {
                let response =
                    self.http.get(url.clone()).send().await.map_err(|e| unavailable(format!("{url}: {e}")))?;
                if !response.status().is_success() {
                    return Err(unavailable(format!("{url}: HTTP {}", response.status())));
                }
                response.bytes().await.map_err(|e| unavailable(format!("{url}: {e}")))?.to_vec()
            }
        };
        serde_json::from_slice(&bytes).map_err(|e| unavailable(format!("not a JWKS document: {e}")))
    }
}
