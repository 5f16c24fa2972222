//! Data Plane Signaling 1.0 (`eclipse-dataplane-signaling`, the signaling EDC 0.18 uses by
//! default), as EDC 0.18.0 speaks it: plain JSON with the RC2 field names (`transferType`,
//! `callbackAddress`; the RC3 names `profile` are read too).
//!
//! Below `<publicUrl>/<connector profile>/dps`:
//! - `POST token`: OAuth 2.0 client credentials (form fields or HTTP Basic). EDC 0.18
//!   authenticates to a data plane only as an `oauth2_client_credentials` client: before every
//!   call it fetches a token from the registered `tokenEndpoint` and sends it as a bearer. The
//!   operator is that token endpoint for its own signaling: the client secret is the data plane's
//!   shared token, the access token a JWT (HS256, 5 minutes) under a key derived from it, so the
//!   shared token itself never travels on a signaling call.
//! - `POST dataflows/start`, `POST dataflows/{id}/{suspend|resume|terminate|started|completed}`,
//!   `GET dataflows/{id}/status`, each with such a bearer; `dataflows/prepare` is the consumer
//!   data plane's and is refused.
//!
//! Callbacks to the control plane (`{callbackAddress}/transfers/{id}/dataflow/...`) carry a JWT
//! with `sub` = the registered data plane id, `exp` and a fresh `jti`, signed ES256 with a P-256
//! key derived from the shared token ([`CallbackKey`]); the registration carries its public key
//! as an inline `jwks`, against which EDC 0.18 verifies the signature.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::config::Signaling;
use super::message::{MAX_ID_LEN, MAX_PARTICIPANT_LEN, Refusal, SOURCE_TYPE, StartMessage, TRANSFER_TYPE, check_id};

/// Lifetime of an access token the token endpoint issues, in seconds.
pub const ACCESS_TOKEN_SECONDS: u64 = 300;
/// Lifetime of a callback JWT, in seconds.
pub const CALLBACK_TOKEN_SECONDS: u64 = 120;
/// The access tokens' audience.
const AUDIENCE: &str = "mqtt-dsp-operator/dps-signaling";

/// The JSON error body of a refusal: `{"error": reason}` (the spec gives errors no body; this is
/// the `error` member of its DataFlowStatusMessage).
pub fn error_body(r: &Refusal) -> Value {
    json!({"error": r.reason})
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// A fresh `messageId`.
pub fn message_id() -> String {
    random_id()
}

fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An HMAC key for `purpose` (the access tokens': `"access"`), derived from the shared token.
/// Hand-written because a hash with a label is all that is needed (the token is at least 32
/// random characters): it keeps the key apart from the token itself and from the callback key
/// ([`CallbackKey::derive`], another label).
pub fn derived_key(token: &str, purpose: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"mqtt-dsp-operator/dps-1.0/");
    h.update(purpose.as_bytes());
    h.update([0u8]);
    h.update(token.as_bytes());
    h.finalize().to_vec()
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    iat: u64,
    exp: u64,
    jti: String,
}

/// An access token for connector profile `connector`'s control plane.
pub fn issue_access_token(key: &[u8], connector: &str) -> String {
    let iat = now();
    let claims = Claims {
        iss: "mqtt-dsp-operator".into(),
        sub: connector.into(),
        aud: AUDIENCE.into(),
        iat,
        exp: iat + ACCESS_TOKEN_SECONDS,
        jti: random_id(),
    };
    // Signing with an HMAC key cannot fail.
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(key)).unwrap_or_default()
}

/// Checks a bearer access token: our signature, not expired, for `connector`.
pub fn verify_access_token(key: &[u8], token: &str, connector: &str) -> Result<(), Refusal> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "sub", "aud"]);
    validation.leeway = 5;
    let unauthorized = || Refusal { status: 401, reason: "not authenticated".into() };
    let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(key), &validation)
        .map_err(|_| unauthorized())?;
    if data.claims.sub != connector {
        return Err(unauthorized());
    }
    Ok(())
}

/// The key the data plane signs its callbacks with, and its public JWK.
#[derive(Clone)]
pub struct CallbackKey {
    encoding: EncodingKey,
    /// The public key as a JWK (`kty` EC, `crv` P-256, `kid`, `alg` ES256, `use` sig).
    pub jwk: Value,
    /// The key id (in the JWK and every callback's header).
    pub kid: String,
}

impl CallbackKey {
    /// The key derived from the shared token: every replica and every restart signs with the
    /// same key without configuring one, so the registration's `jwks` stays current. Hand-written
    /// derivation, as RFC 9180's DeriveKeyPair does for P-256: SHA-256 over a label, a counter and
    /// the token, until the digest is a valid scalar (all but about 2^-32 of digests are). The
    /// public key reveals nothing of the token.
    pub fn derive(token: &str) -> CallbackKey {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        use p256::pkcs8::EncodePrivateKey;
        for counter in 0u8..=u8::MAX {
            let mut h = Sha256::new();
            h.update(b"mqtt-dsp-operator/dps-1.0/callback-es256\0");
            h.update([counter]);
            h.update(token.as_bytes());
            let digest = h.finalize();
            let Ok(secret) = p256::SecretKey::from_slice(&digest) else { continue };
            let Ok(der) = secret.to_pkcs8_der() else { continue };
            let point = secret.public_key().to_encoded_point(false);
            let (Some(x), Some(y)) = (point.x(), point.y()) else { continue };
            let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b);
            let kid: String = Sha256::digest([x.as_slice(), y.as_slice()].concat())
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect();
            let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y), "kid": kid, "alg": "ES256", "use": "sig"});
            return CallbackKey { encoding: EncodingKey::from_ec_der(der.as_bytes()), jwk, kid };
        }
        // 256 invalid digests in a row: probability about 2^-8192.
        unreachable!("no valid P-256 scalar from 256 digests")
    }

    /// The JWK Set the registration carries (`authorization.jwks`).
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk]})
    }
}

/// The bearer JWT of a callback from data plane `data_plane_id`.
pub fn callback_token(key: &CallbackKey, data_plane_id: &str) -> String {
    // EDC 0.18 refuses an `iat` after its own clock with no leeway: backdated, so that a clock a
    // little ahead of the control plane's does not lose callbacks.
    let iat = now().saturating_sub(30);
    let claims = Claims {
        iss: data_plane_id.into(),
        sub: data_plane_id.into(),
        aud: "control-plane".into(),
        iat,
        exp: iat + 30 + CALLBACK_TOKEN_SECONDS,
        jti: random_id(),
    };
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    // Signing with a valid P-256 key cannot fail.
    jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap_or_default()
}

/// The client credentials of a token request: form fields `client_id` / `client_secret`, or
/// HTTP Basic; `grant_type` must be `client_credentials`.
pub fn client_credentials(authorization: Option<&[u8]>, body: &[u8]) -> Result<(String, String), (u16, Value)> {
    let mut grant = None;
    let (mut id, mut secret) = (None, None);
    for (k, v) in url::form_urlencoded::parse(body) {
        match k.as_ref() {
            "grant_type" => grant = Some(v.into_owned()),
            "client_id" => id = Some(v.into_owned()),
            "client_secret" => secret = Some(v.into_owned()),
            _ => {}
        }
    }
    if grant.as_deref() != Some("client_credentials") {
        return Err((400, json!({"error": "unsupported_grant_type"})));
    }
    if let Some(basic) = authorization.and_then(|a| a.strip_prefix(b"Basic "))
        && let Ok(decoded) = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, basic)
        && let Ok(text) = String::from_utf8(decoded)
        && let Some((user, password)) = text.split_once(':')
    {
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        id = Some(decode(user));
        secret = Some(decode(password));
    }
    match (id, secret) {
        (Some(id), Some(secret)) => Ok((id, secret)),
        _ => Err((401, json!({"error": "invalid_client"}))),
    }
}

/// The token endpoint's answer.
pub fn token_response(access_token: &str) -> Value {
    json!({"access_token": access_token, "token_type": "Bearer", "expires_in": ACCESS_TOKEN_SECONDS})
}

fn object(body: &[u8]) -> Result<Map<String, Value>, Refusal> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| Refusal::bad_request(format!("the body is not JSON: {e}")))?;
    match value {
        Value::Object(o) => Ok(o),
        _ => Err(Refusal::bad_request("the body must be a JSON object")),
    }
}

fn required<'a>(o: &'a Map<String, Value>, name: &str, max: usize) -> Result<&'a str, Refusal> {
    let text = match o.get(name) {
        None | Some(Value::Null) => return Err(Refusal::bad_request(format!("{name} is missing"))),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(Refusal::bad_request(format!("{name} must be a string"))),
    };
    check_id(name, text, max)?;
    Ok(text)
}

/// Parses and validates a `DataFlowStartMessage`: `processId`, `datasetId`, `agreementId` and
/// `counterPartyId` (the consumer; `participantId` is the provider itself) present, transfer
/// type (`transferType`, or RC3's `profile`) `Mqtt-PULL`.
pub fn parse_start(body: &[u8]) -> Result<StartMessage, Refusal> {
    let o = object(body)?;
    let process_id = required(&o, "processId", MAX_ID_LEN)?;
    let dataset_id = required(&o, "datasetId", MAX_ID_LEN)?;
    let agreement_id = required(&o, "agreementId", MAX_ID_LEN)?;
    let consumer = required(&o, "counterPartyId", MAX_PARTICIPANT_LEN)?;
    let transfer_type = ["transferType", "profile"]
        .iter()
        .find_map(|k| o.get(*k).filter(|v| !v.is_null()))
        .ok_or_else(|| Refusal::bad_request("transferType is missing"))?;
    if transfer_type.as_str() != Some(TRANSFER_TYPE) {
        let shown = transfer_type.as_str().map(str::to_owned).unwrap_or_else(|| transfer_type.to_string());
        return Err(Refusal::bad_request(format!(
            "transfer type {shown} is not served here; this data plane serves {TRANSFER_TYPE} only"
        )));
    }
    // A `dataAddress` is ignored: for a PULL it is no destination, and EDC 0.18 sends one
    // whenever the consumer's transfer request named a data destination.
    let callback_address = match o.get("callbackAddress") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => {
            let url =
                url::Url::parse(text).map_err(|_| Refusal::bad_request("callbackAddress must be an absolute URL"))?;
            if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
                return Err(Refusal::bad_request("callbackAddress must be an http(s) URL with a host"));
            }
            check_id("callbackAddress", text, 2048)?;
            Some(text.clone())
        }
        Some(_) => return Err(Refusal::bad_request("callbackAddress must be a string")),
    };
    Ok(StartMessage {
        process_id: process_id.to_owned(),
        dataset_id: dataset_id.to_owned(),
        agreement_id: agreement_id.to_owned(),
        participant_id: consumer.to_owned(),
        callback_address,
        signaling: Signaling::Dps1,
    })
}

/// The body of suspend, resume, terminate, started and completed: a JSON object, or nothing
/// (EDC sends `{}` with `completed`; the spec says no body). Its members are not used: EDC's
/// suspend reason is always "suspend", and its resume carries a random `processId`.
pub fn parse_notification(body: &[u8]) -> Result<(), Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    object(body).map(drop)
}

/// The EDR as a DSP `DataAddress` (what the spec's `dataAddress` is): `endpointType` `Mqtt`,
/// `endpoint` the broker URL, every other member of the transfer's DataAddress an
/// `EndpointProperty` named by its IRI as in the legacy EDR, with a string value (EDC refuses
/// other values).
pub fn data_address(transfer_address: &Map<String, Value>) -> Value {
    let properties: Vec<Value> = super::message::endpoint_properties(transfer_address)
        .map(|(name, value)| json!({"@type": "EndpointProperty", "name": name, "value": value}))
        .collect();
    let endpoint = transfer_address
        .get("endpoint")
        .or_else(|| transfer_address.get("dsp-mqtt:baseUrl"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    json!({
        "@type": "DataAddress",
        "endpointType": SOURCE_TYPE,
        "endpoint": endpoint,
        "endpointProperties": properties,
    })
}

/// The endpoint properties by name (the reverse of [`data_address`], for tests and
/// diagnostics).
pub fn endpoint_properties(address: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for p in address["endpointProperties"].as_array().into_iter().flatten() {
        if let (Some(name), Some(value)) = (p["name"].as_str(), p.get("value")) {
            out.insert(name.to_owned(), value.clone());
        }
    }
    out
}

/// A `DataFlowStatusMessage` (start and resume answers).
pub fn status_message(process_id: &str, state: &str, address: Option<Value>) -> Value {
    let mut m = json!({"messageId": random_id(), "dataFlowId": process_id, "state": state});
    if let Some(a) = address {
        m["dataAddress"] = a;
    }
    m
}

/// The spec's state name for a legacy (EDC `DataFlowStates`) one.
pub fn spec_state(legacy: &str) -> &'static str {
    match legacy {
        "RECEIVED" => "STARTING",
        "STARTED" => "STARTED",
        "SUSPENDED" => "SUSPENDED",
        "COMPLETED" => "COMPLETED",
        _ => "TERMINATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn start() -> Value {
        json!({"messageId": "m-1", "participantId": "did:web:provider", "counterPartyId": "did:web:consumer",
            "dataspaceContext": "dataspace-protocol-http:2025-1", "processId": "p-1", "agreementId": "a-1",
            "datasetId": "ds-1", "callbackAddress": "https://cp.example/api/signaling", "transferType": "Mqtt-PULL",
            "labels": [], "metadata": {}, "claims": null})
    }

    #[test]
    fn a_start_as_edc_0_18_sends_it_names_the_consumer_and_the_callback() {
        let m = parse_start(start().to_string().as_bytes()).unwrap();
        assert_eq!(m.participant_id, "did:web:consumer", "the counter-party, not the provider itself");
        assert_eq!((m.process_id.as_str(), m.dataset_id.as_str(), m.agreement_id.as_str()), ("p-1", "ds-1", "a-1"));
        assert_eq!(m.callback_address.as_deref(), Some("https://cp.example/api/signaling"));
        assert_eq!(m.signaling, Signaling::Dps1);
        let mut rc3 = start();
        rc3.as_object_mut().unwrap().remove("transferType");
        rc3["profile"] = json!("Mqtt-PULL");
        rc3.as_object_mut().unwrap().remove("callbackAddress");
        let m = parse_start(rc3.to_string().as_bytes()).unwrap();
        assert_eq!(m.callback_address, None, "RC3 has no callbackAddress");
        let mut with_destination = start();
        with_destination["dataAddress"] = json!({"endpointType": "HttpData", "endpoint": "https://c.example/x"});
        assert!(parse_start(with_destination.to_string().as_bytes()).is_ok(), "a PULL ignores a destination");
    }

    #[test]
    fn bad_starts_are_refused_with_a_reason() {
        let cases: Vec<(Value, &str)> = vec![
            (json!({"transferType": "HttpData-PULL"}), "not served here"),
            (json!({"transferType": "Mqtt-PUSH"}), "not served here"),
            (json!({"transferType": null}), "transferType is missing"),
            (json!({"counterPartyId": ""}), "counterPartyId is empty"),
            (json!({"processId": 7}), "processId must be a string"),
            (json!({"datasetId": "a\nb"}), "control characters"),
            (json!({"callbackAddress": "ftp://x"}), "callbackAddress"),
        ];
        for (patch, reason) in cases {
            let mut m = start();
            for (k, v) in patch.as_object().unwrap() {
                m[k] = v.clone();
            }
            let r = parse_start(m.to_string().as_bytes()).unwrap_err();
            assert_eq!(r.status, 400);
            assert!(r.reason.contains(reason), "{patch}: {}", r.reason);
        }
        assert!(parse_start(b"[1]").unwrap_err().reason.contains("JSON object"));
        assert!(parse_start(b"{").unwrap_err().reason.contains("not JSON"));
    }

    #[test]
    fn access_tokens_are_bound_to_key_profile_and_time() {
        let key = derived_key("t0ken-0123456789-0123456789-0123456789", "access");
        let token = issue_access_token(&key, "default");
        assert_eq!(verify_access_token(&key, &token, "default"), Ok(()));
        assert_eq!(verify_access_token(&key, &token, "other").unwrap_err().status, 401, "another profile's path");
        let other = derived_key("another-token-0123456789-0123456789", "access");
        assert_eq!(verify_access_token(&other, &token, "default").unwrap_err().status, 401);
        assert_ne!(key, derived_key("t0ken-0123456789-0123456789-0123456789", "callback"));
        let expired =
            Claims { iss: "x".into(), sub: "default".into(), aud: AUDIENCE.into(), iat: 1, exp: 2, jti: "j".into() };
        let expired =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &expired, &EncodingKey::from_secret(&key)).unwrap();
        assert_eq!(verify_access_token(&key, &expired, "default").unwrap_err().status, 401);
        assert_ne!(issue_access_token(&key, "default"), token, "every token has its own jti");
    }

    #[test]
    fn the_callback_key_is_the_tokens_own_and_verifies_its_callbacks() {
        const TOKEN: &str = "t0ken-0123456789-0123456789-0123456789";
        let key = CallbackKey::derive(TOKEN);
        assert_eq!(key.jwk, CallbackKey::derive(TOKEN).jwk, "every replica and restart: the same key");
        assert_ne!(key.jwk, CallbackKey::derive("another-token-0123456789-0123456789").jwk);
        assert!(!key.jwks().to_string().contains(TOKEN));
        let token = callback_token(&key, "dp-1");
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!((header.alg, header.kid.as_deref()), (Algorithm::ES256, Some(key.kid.as_str())));
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk.clone()).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&["control-plane"]);
        let claims = jsonwebtoken::decode::<Claims>(&token, &DecodingKey::from_jwk(&jwk).unwrap(), &validation)
            .expect("verifies with the registered JWK")
            .claims;
        assert_eq!(claims.sub, "dp-1");
        assert!(claims.iat <= now() && claims.exp > now());
        let other: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(CallbackKey::derive("another-token-0123456789-0123456789").jwk).unwrap();
        assert!(jsonwebtoken::decode::<Claims>(&token, &DecodingKey::from_jwk(&other).unwrap(), &validation).is_err());
        assert_ne!(callback_token(&key, "dp-1"), token, "a fresh jti each time");
    }

    #[test]
    fn client_credentials_come_as_form_fields_or_basic() {
        let form = b"grant_type=client_credentials&client_id=default&client_secret=s%26cret";
        assert_eq!(client_credentials(None, form).unwrap(), ("default".into(), "s&cret".into()));
        let basic =
            format!("Basic {}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "default:s%26cret"));
        let (id, secret) = client_credentials(Some(basic.as_bytes()), b"grant_type=client_credentials").unwrap();
        assert_eq!((id.as_str(), secret.as_str()), ("default", "s&cret"));
        assert_eq!(client_credentials(None, b"grant_type=password&client_id=a&client_secret=b").unwrap_err().0, 400);
        assert_eq!(client_credentials(None, b"grant_type=client_credentials&client_id=a").unwrap_err().0, 401);
    }

    #[test]
    fn the_data_address_has_the_broker_as_endpoint_and_string_properties() {
        let address: Map<String, Value> = serde_json::from_value(json!({
            "type": "Mqtt", "dsp-mqtt:baseUrl": "mqtts://broker:8883", "dsp-mqtt:topics": ["a/#", "b"],
            "dsp-mqtt:username": "u", "dsp-mqtt:password": "p"}))
        .unwrap();
        let a = data_address(&address);
        assert_eq!(a["endpointType"], "Mqtt");
        assert_eq!(a["endpoint"], "mqtts://broker:8883");
        let props = endpoint_properties(&a);
        let ns = crate::plan::transfer::DSP_MQTT_NAMESPACE;
        assert_eq!(props[&format!("{ns}username")], "u");
        assert_eq!(props[&format!("{ns}topics")], "[\"a/#\",\"b\"]");
        assert!(props.values().all(Value::is_string));
        assert!(!props.contains_key("type"));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        // Whatever arrives, parsing answers (never panics), and an accepted start has ids that
        // passed the checks.
        #[test]
        fn parsing_never_panics_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(m) = parse_start(&body) {
                prop_assert!(!m.process_id.trim().is_empty());
            }
            let _ = parse_notification(&body);
            let _ = client_credentials(Some(&body), &body);
        }

        #[test]
        fn mutated_starts_are_refused_or_valid(key in "[a-zA-Z]{1,16}", value in any::<i64>(), text in "\\PC{0,40}") {
            for replacement in [json!(value), json!(text.clone()), Value::Null, json!([text.clone()])] {
                let mut m = start();
                m[key.as_str()] = replacement;
                match parse_start(m.to_string().as_bytes()) {
                    Ok(s) => {
                        prop_assert!(check_id("processId", &s.process_id, MAX_ID_LEN).is_ok());
                        prop_assert!(check_id("counterPartyId", &s.participant_id, MAX_PARTICIPANT_LEN).is_ok());
                    }
                    Err(r) => prop_assert_eq!(r.status, 400),
                }
            }
        }
    }
}
