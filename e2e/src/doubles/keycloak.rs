//! A Keycloak double: one realm's Admin REST API for clients, protocol mappers and client secrets,
//! its token endpoint (client_credentials and refresh_token), JWKS and OIDC discovery document.
//!
//! Follows domain.md §4 and Keycloak's own sources where domain.md is silent:
//! - login: `POST /realms/{realm}/protocol/openid-connect/token`, form-encoded, client id and
//!   secret in the form or as HTTP Basic. A wrong secret is 401 `unauthorized_client` "Invalid
//!   client or Invalid client credentials"; an unknown or disabled client is 401 `invalid_client`
//!   (Keycloak 26) or, with [`KeycloakDouble::set_pre_26_client_errors`], 400 `unauthorized_client`
//!   "Invalid client credentials" (Keycloak 25 and before). A client without a service account is
//!   400 `unauthorized_client`.
//! - tokens are RS256 JWTs with `iss`, `sub` (the service-account user), `azp`,
//!   `preferred_username` (`service-account-<clientId>`), `client_id`, `exp`, `iat`, `jti`, `typ`,
//!   `scope`, `aud` from audience mappers followed by `account` (what Keycloak's default client
//!   scopes add for a service account; one audience is a string, more an array) and every hardcoded claim (dotted names nest, JSON-typed
//!   values are parsed); a refresh token only when `client_credentials.use_refresh_token` is
//!   `"true"` (otherwise `refresh_expires_in: 0`, as Keycloak answers); `access.token.lifespan`
//!   overrides the realm's 300 s.
//! - Admin API: bearer token from this realm, not expired, not revoked, of a client allowed to
//!   manage clients (the operator's): else 401 `{"error":"HTTP 401 Unauthorized"}`, or 403
//!   `{"error":"HTTP 403 Forbidden"}` for a valid token of another client. `GET clients?clientId=`
//!   is an exact match returning full representations (secret and mappers included, mappers left
//!   out when there are none, as Keycloak does); `POST` answers 201 with `Location`, 409
//!   `{"errorMessage":"Client X already exists"}`; `PUT` merges (absent fields unchanged,
//!   attributes merged, an empty or null attribute removed) and answers 204; unknown ids are 404
//!   `{"error":"Could not find client"}`. Mappers: 201 + `Location`, 409 on a duplicate name,
//!   204 on update and delete. Bodies are JSON (a body without Content-Type is read as JSON, another
//!   type is 415 with Keycloak's `@Consumes` message; not JSON is 400 `invalid_request`); a field of the wrong type is 400
//!   `{"error":"unknown_error","error_description":"Cannot parse the JSON"}`; an unknown field is
//!   400 `Invalid json representation for ClientRepresentation. Unrecognized field "x"` (Keycloak
//!   adds the position). Unknown realm: 404 `{"error":"Realm not found."}`; unknown route: 404.
//!
//! Stricter than Keycloak: attribute and mapper config values must be JSON strings (Jackson would
//! coerce a number), so a client that sends `300` instead of `"300"` is caught.
//!
//! Left out: every other Admin API resource (roles, scopes, users, sessions), client scopes as
//! objects (their effect on tokens is fixed: `scope: "email profile"`, `aud` gains `account`),
//! the token claims no test reads (`sid`, `acr`, `realm_access`, `resource_access`,
//! `clientHost`, `clientAddress`, `email_verified`), a second (encryption) key in the JWKS,
//! other grants, token introspection and revocation endpoints, key rotation, service-account
//! mappers that Keycloak before 25 added to the client itself.
//!
//! Checked against a real Keycloak 26.5 by `e2e/tests/keycloak_contract.rs`, which runs the same
//! tests against both.
//!
//! The realm key is a committed test-only key (`e2e/fixtures/keycloak-realm-key.pem`): generating
//! RSA keys in a debug build takes seconds per double, and shelling out to `openssl` would make
//! the tests depend on an installed binary.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::DoubleServer;
use crate::tls::TestCa;

const REALM_KEY_FILE: &str = include_str!("../../fixtures/keycloak-realm-key.pem");
const REALM_PUBLIC_KEY_FILE: &str = include_str!("../../fixtures/keycloak-realm-key.pub.pem");
const FOREIGN_KEY_FILE: &str = include_str!("../../fixtures/keycloak-foreign-key.pem");

/// The realm's default access-token lifespan (Keycloak: 5 minutes).
const REALM_ACCESS_TOKEN_LIFESPAN: u64 = 300;
/// The realm's SSO session idle timeout: a refresh token's lifetime (Keycloak: 30 minutes).
const REALM_SSO_SESSION_IDLE: u64 = 1800;
/// The audience Keycloak's default client scopes add to a service account's tokens.
const ACCOUNT_AUDIENCE: &str = "account";
/// Default client scopes Keycloak puts into `scope`.
const DEFAULT_SCOPE: &str = "email profile";

/// The PEM block of a fixture file (the files start with a human-readable warning).
fn pem_block(file: &str) -> &str {
    let start = file.find("-----BEGIN").expect("fixture file holds a PEM block");
    &file[start..]
}

/// A client as the double stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredClient {
    /// Internal id (the `{uuid}` of Admin API paths).
    pub id: String,
    /// The client id.
    pub client_id: String,
    /// Description.
    pub description: Option<String>,
    /// Disabled clients get no tokens.
    pub enabled: bool,
    /// Public clients have no secret.
    pub public_client: bool,
    /// Whether client_credentials is allowed.
    pub service_accounts_enabled: bool,
    /// Authorization-code flow.
    pub standard_flow_enabled: bool,
    /// Implicit flow.
    pub implicit_flow_enabled: bool,
    /// Resource-owner password grant.
    pub direct_access_grants_enabled: bool,
    /// `client-secret` for id+secret authentication.
    pub client_authenticator_type: String,
    /// The client secret.
    pub secret: String,
    /// Attributes (strings, as Keycloak stores them).
    pub attributes: BTreeMap<String, String>,
    /// Protocol mappers, in creation order.
    pub protocol_mappers: Vec<StoredMapper>,
    /// Id of the client's service-account user (the `sub` of its tokens).
    pub service_account_user_id: String,
    /// Whether its tokens may use the Admin API (realm-management `manage-clients`).
    pub can_manage_clients: bool,
}

impl StoredClient {
    /// A real Keycloak's client representation (Admin API) with its secret and service-account
    /// user id, in the shape the double stores, so that tests compare both alike.
    pub fn from_representation(representation: &Value, secret: String, service_account_user_id: String) -> Self {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let flag = |k: &str| representation[k].as_bool().unwrap_or(false);
        Self {
            id: text(&representation["id"]),
            client_id: text(&representation["clientId"]),
            description: representation["description"].as_str().map(str::to_owned),
            enabled: flag("enabled"),
            public_client: flag("publicClient"),
            service_accounts_enabled: flag("serviceAccountsEnabled"),
            standard_flow_enabled: flag("standardFlowEnabled"),
            implicit_flow_enabled: flag("implicitFlowEnabled"),
            direct_access_grants_enabled: flag("directAccessGrantsEnabled"),
            client_authenticator_type: text(&representation["clientAuthenticatorType"]),
            secret,
            attributes: strings(&representation["attributes"]),
            protocol_mappers: representation["protocolMappers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| StoredMapper {
                    id: text(&m["id"]),
                    name: text(&m["name"]),
                    protocol: text(&m["protocol"]),
                    protocol_mapper: text(&m["protocolMapper"]),
                    config: strings(&m["config"]),
                })
                .collect(),
            service_account_user_id,
            can_manage_clients: false,
        }
    }

    /// A confidential service-account client with a fresh id and secret.
    fn new(client_id: &str) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            client_id: client_id.to_owned(),
            description: None,
            enabled: true,
            public_client: false,
            service_accounts_enabled: true,
            standard_flow_enabled: false,
            implicit_flow_enabled: false,
            direct_access_grants_enabled: false,
            client_authenticator_type: "client-secret".into(),
            secret: new_client_secret(),
            attributes: BTreeMap::new(),
            protocol_mappers: Vec::new(),
            service_account_user_id: uuid::Uuid::new_v4().to_string(),
            can_manage_clients: false,
        }
    }

    /// The mapper with this name.
    pub fn mapper(&self, name: &str) -> Option<&StoredMapper> {
        self.protocol_mappers.iter().find(|m| m.name == name)
    }

    fn representation(&self) -> Value {
        let mut rep = json!({
            "id": self.id,
            "clientId": self.client_id,
            "surrogateAuthRequired": false,
            "enabled": self.enabled,
            "alwaysDisplayInConsole": false,
            "clientAuthenticatorType": self.client_authenticator_type,
            "secret": self.secret,
            "redirectUris": [],
            "webOrigins": [],
            "notBefore": 0,
            "bearerOnly": false,
            "consentRequired": false,
            "standardFlowEnabled": self.standard_flow_enabled,
            "implicitFlowEnabled": self.implicit_flow_enabled,
            "directAccessGrantsEnabled": self.direct_access_grants_enabled,
            "serviceAccountsEnabled": self.service_accounts_enabled,
            "publicClient": self.public_client,
            "frontchannelLogout": false,
            "protocol": "openid-connect",
            "attributes": self.attributes,
            "authenticationFlowBindingOverrides": {},
            "fullScopeAllowed": true,
            "nodeReRegistrationTimeout": -1,
            "defaultClientScopes": ["web-origins", "service_account", "acr", "roles", "profile", "basic", "email"],
            "optionalClientScopes": ["address", "phone", "offline_access", "organization", "microprofile-jwt"],
            "access": {"view": true, "configure": true, "manage": true},
        });
        let obj = rep.as_object_mut().expect("object literal");
        if let Some(description) = &self.description {
            obj.insert("description".into(), Value::from(description.clone()));
        }
        if !self.protocol_mappers.is_empty() {
            let mappers: Vec<Value> = self.protocol_mappers.iter().map(StoredMapper::representation).collect();
            obj.insert("protocolMappers".into(), Value::from(mappers));
        }
        rep
    }
}

/// The string values of a JSON object (Keycloak's attributes and mapper configurations).
fn strings(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default()
}

/// A protocol mapper as the double stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredMapper {
    /// Mapper id.
    pub id: String,
    /// Name (unique per client).
    pub name: String,
    /// `openid-connect`.
    pub protocol: String,
    /// Mapper type, e.g. `oidc-audience-mapper`.
    pub protocol_mapper: String,
    /// Configuration (strings).
    pub config: BTreeMap<String, String>,
}

impl StoredMapper {
    fn representation(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "protocol": self.protocol,
            "protocolMapper": self.protocol_mapper,
            "consentRequired": false,
            "config": self.config,
        })
    }

    fn adds_to_access_token(&self) -> bool {
        self.config.get("access.token.claim").map(String::as_str) == Some("true")
    }
}

/// Mapper types the double knows how to apply (others are refused like unknown providers).
const KNOWN_MAPPERS: &[&str] = &["oidc-audience-mapper", "oidc-hardcoded-claim-mapper"];

/// A token the double issued (for the Admin API's checks and the tests' counts).
#[derive(Clone, Debug)]
struct IssuedToken {
    client_id: String,
    expires_at: Instant,
    revoked: bool,
}

struct Keys {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    foreign: EncodingKey,
    jwk: Jwk,
}

struct DoubleState {
    realm: String,
    base_url: String,
    issuer: String,
    clients: BTreeMap<String, StoredClient>,
    issued: HashMap<String, IssuedToken>,
    logins: HashMap<String, u64>,
    pre_26_client_errors: bool,
}

impl DoubleState {
    fn by_client_id(&self, client_id: &str) -> Option<&StoredClient> {
        self.clients.values().find(|c| c.client_id == client_id)
    }
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<DoubleState>>,
    keys: Arc<Keys>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, DoubleState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running Keycloak double for one realm. Stops when dropped.
pub struct KeycloakDouble {
    /// The HTTPS server: base URL, request log, fault injection.
    pub server: DoubleServer,
    shared: Shared,
}

/// Starts a Keycloak double for `realm` in which `operator_client_id` (secret `operator_secret`)
/// is a confidential service-account client allowed to manage clients.
pub async fn start(
    ca: &TestCa,
    realm: &str,
    operator_client_id: &str,
    operator_secret: &str,
) -> std::io::Result<KeycloakDouble> {
    let encoding = EncodingKey::from_rsa_pem(pem_block(REALM_KEY_FILE).as_bytes()).expect("realm key fixture");
    let decoding =
        DecodingKey::from_rsa_pem(pem_block(REALM_PUBLIC_KEY_FILE).as_bytes()).expect("realm public key fixture");
    let foreign = EncodingKey::from_rsa_pem(pem_block(FOREIGN_KEY_FILE).as_bytes()).expect("foreign key fixture");
    let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256).expect("JWK of the realm key");
    let kid = jwk.thumbprint(ThumbprintHash::SHA256).expect("JWK thumbprint");
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    jwk.common.key_algorithm = Some(KeyAlgorithm::RS256);
    let keys = Arc::new(Keys { kid, encoding, decoding, foreign, jwk });

    let mut operator = StoredClient::new(operator_client_id);
    operator.secret = operator_secret.to_owned();
    operator.can_manage_clients = true;
    operator.description = Some("mqtt-dsp-operator's own client (dev stack)".into());
    let state = DoubleState {
        realm: realm.to_owned(),
        base_url: String::new(),
        issuer: String::new(),
        clients: BTreeMap::from([(operator.id.clone(), operator)]),
        issued: HashMap::new(),
        logins: HashMap::new(),
        pre_26_client_errors: false,
    };
    let shared = Shared { state: Arc::new(Mutex::new(state)), keys };
    let server = super::start(router(shared.clone()), ca).await?;
    {
        let mut state = shared.lock();
        state.base_url = server.base_url.clone();
        state.issuer = format!("{}/realms/{realm}", server.base_url);
    }
    Ok(KeycloakDouble { server, shared })
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/realms/{realm}/protocol/openid-connect/token", post(token))
        .route("/realms/{realm}/protocol/openid-connect/certs", get(certs))
        .route("/realms/{realm}/.well-known/openid-configuration", get(discovery))
        .route("/admin/realms/{realm}/clients", get(list_clients).post(create_client))
        .route("/admin/realms/{realm}/clients/{id}", get(get_client).put(update_client).delete(delete_client))
        .route("/admin/realms/{realm}/clients/{id}/client-secret", get(get_secret).post(regenerate_secret))
        .route("/admin/realms/{realm}/clients/{id}/protocol-mappers/models", get(list_mappers).post(create_mapper))
        .route(
            "/admin/realms/{realm}/clients/{id}/protocol-mappers/models/{mapper}",
            get(get_mapper).put(update_mapper).delete(delete_mapper),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, json!({"error": "HTTP 404 Not Found"})) })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "HTTP 405 Method Not Allowed"}))
        })
        .with_state(shared)
}

fn now_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl KeycloakDouble {
    /// The realm.
    pub fn realm(&self) -> String {
        self.shared.lock().realm.clone()
    }

    /// `{base}/realms/{realm}`: the `iss` of every token.
    pub fn issuer(&self) -> String {
        self.shared.lock().issuer.clone()
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/protocol/openid-connect/token", self.issuer())
    }

    /// The JWKS endpoint.
    pub fn jwks_url(&self) -> String {
        format!("{}/protocol/openid-connect/certs", self.issuer())
    }

    /// The OIDC discovery document's URL.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer())
    }

    /// The realm's public key (SPKI PEM), for verifiers configured with a static key.
    pub fn public_key_pem(&self) -> String {
        pem_block(REALM_PUBLIC_KEY_FILE).to_owned()
    }

    /// The `kid` of the realm key.
    pub fn key_id(&self) -> String {
        self.shared.keys.kid.clone()
    }

    /// The JWKS document as served.
    pub fn jwks(&self) -> Value {
        jwks_document(&self.shared.keys)
    }

    /// Signs arbitrary claims with the realm key (RS256, the realm's `kid`).
    pub fn sign(&self, claims: &Value) -> String {
        sign(&self.shared.keys.encoding, &self.shared.keys.kid, claims)
    }

    /// Signs arbitrary claims with a key that is *not* the realm's, under the realm's `kid`: a
    /// forged token every verifier must refuse.
    pub fn sign_with_foreign_key(&self, claims: &Value) -> String {
        sign(&self.shared.keys.foreign, &self.shared.keys.kid, claims)
    }

    /// The claims an access token of `client_id` carries now (what the token endpoint would sign),
    /// or None for an unknown client.
    pub fn access_token_claims(&self, client_id: &str) -> Option<Value> {
        let state = self.shared.lock();
        let client = state.by_client_id(client_id)?;
        let now = now_seconds();
        Some(access_claims(&state.issuer, client, now, now + lifespan(client), &uuid::Uuid::new_v4().to_string()))
    }

    /// A correctly signed access token of `client_id` that expired five minutes ago.
    pub fn expired_token(&self, client_id: &str) -> Option<String> {
        let mut claims = self.access_token_claims(client_id)?;
        let now = now_seconds();
        claims["iat"] = Value::from(now - 600);
        claims["exp"] = Value::from(now - 300);
        Some(self.sign(&claims))
    }

    /// Every client, the operator's own included.
    pub fn clients(&self) -> Vec<StoredClient> {
        self.shared.lock().clients.values().cloned().collect()
    }

    /// The client with this clientId.
    pub fn client(&self, client_id: &str) -> Option<StoredClient> {
        self.shared.lock().by_client_id(client_id).cloned()
    }

    /// Successful token grants of a client so far (the operator's own logins included).
    pub fn logins(&self, client_id: &str) -> u64 {
        self.shared.lock().logins.get(client_id).copied().unwrap_or(0)
    }

    /// Adds a client as an administrator would (no ownership marker unless in `attributes`);
    /// returns its internal id.
    pub fn insert_client(&self, client_id: &str, attributes: BTreeMap<String, String>) -> String {
        let mut client = StoredClient::new(client_id);
        client.attributes = attributes;
        client.description = Some("made by hand".into());
        let id = client.id.clone();
        self.shared.lock().clients.insert(id.clone(), client);
        id
    }

    /// Changes a stored client behind the operator's back; false when it does not exist.
    pub fn edit_client(&self, client_id: &str, edit: impl FnOnce(&mut StoredClient)) -> bool {
        let mut state = self.shared.lock();
        match state.clients.values_mut().find(|c| c.client_id == client_id) {
            Some(client) => {
                edit(client);
                true
            }
            None => false,
        }
    }

    /// Sets the lifetime of the operator's (and any client-managing client's) admin tokens.
    pub fn set_admin_token_lifespan(&self, lifespan: Duration) {
        let mut state = self.shared.lock();
        for client in state.clients.values_mut().filter(|c| c.can_manage_clients) {
            client.attributes.insert("access.token.lifespan".into(), lifespan.as_secs().to_string());
        }
    }

    /// Revokes every token issued so far (Keycloak's "push not-before" / a key rotation).
    pub fn revoke_tokens(&self) {
        for token in self.shared.lock().issued.values_mut() {
            token.revoked = true;
        }
    }

    /// Answers unknown and disabled clients at the token endpoint like Keycloak 25 and before
    /// (400 `unauthorized_client`) instead of 26 (401 `invalid_client`).
    pub fn set_pre_26_client_errors(&self, on: bool) {
        self.shared.lock().pre_26_client_errors = on;
    }
}

fn jwks_document(keys: &Keys) -> Value {
    serde_json::to_value(JwkSet { keys: vec![keys.jwk.clone()] }).expect("JWKS serializes")
}

fn sign(key: &EncodingKey, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    header.typ = Some("JWT".into());
    let token = jsonwebtoken::encode(&header, claims, key).expect("RS256 signing");
    // Every token the double issues is a secret the run's logs must never show.
    crate::logs::register_secret(&token);
    token
}

/// An error answer on its way out of a helper (boxed: a `Response` is large).
type Refusal = Box<Response>;

fn error(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn realm_not_found() -> Response {
    error(StatusCode::NOT_FOUND, json!({"error": "Realm not found."}))
}

fn client_not_found() -> Response {
    error(StatusCode::NOT_FOUND, json!({"error": "Could not find client"}))
}

fn unparsable() -> Response {
    error(StatusCode::BAD_REQUEST, json!({"error": "unknown_error", "error_description": "Cannot parse the JSON"}))
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    error(status, json!({"error": code, "error_description": description}))
}

fn lifespan(client: &StoredClient) -> u64 {
    client
        .attributes
        .get("access.token.lifespan")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0)
        .unwrap_or(REALM_ACCESS_TOKEN_LIFESPAN)
}

/// Splits a claim name at unescaped dots (`a.b` nests, `a\.b` does not), like Keycloak.
fn claim_path(name: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'.') => {
                chars.next();
                parts.last_mut().expect("never empty").push('.');
            }
            '.' => parts.push(String::new()),
            c => parts.last_mut().expect("never empty").push(c),
        }
    }
    parts
}

fn set_claim(claims: &mut Map<String, Value>, name: &str, value: Value) {
    let path = claim_path(name);
    let mut target = claims;
    for part in &path[..path.len() - 1] {
        let entry = target.entry(part.clone()).or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        target = entry.as_object_mut().expect("just made an object");
    }
    target.insert(path[path.len() - 1].clone(), value);
}

/// A hardcoded claim's value converted by its `jsonType.label`, as Keycloak's mapper does.
fn typed_claim_value(config: &BTreeMap<String, String>) -> Option<Value> {
    let raw = config.get("claim.value")?;
    match config.get("jsonType.label").map(String::as_str) {
        Some("JSON") => serde_json::from_str(raw).ok(),
        Some("long") | Some("int") => raw.trim().parse::<i64>().ok().map(Value::from),
        Some("boolean") => raw.trim().parse::<bool>().ok().map(Value::from),
        _ => Some(Value::from(raw.clone())),
    }
}

fn access_claims(issuer: &str, client: &StoredClient, iat: u64, exp: u64, jti: &str) -> Value {
    let mut claims = Map::new();
    for (k, v) in [
        ("exp", Value::from(exp)),
        ("iat", Value::from(iat)),
        ("jti", Value::from(jti)),
        ("iss", Value::from(issuer)),
        ("sub", Value::from(client.service_account_user_id.clone())),
        ("typ", Value::from("Bearer")),
        ("azp", Value::from(client.client_id.clone())),
        ("scope", Value::from(DEFAULT_SCOPE)),
        ("preferred_username", Value::from(format!("service-account-{}", client.client_id))),
        ("client_id", Value::from(client.client_id.clone())),
    ] {
        claims.insert(k.to_owned(), v);
    }
    let mut audiences: Vec<String> = client
        .protocol_mappers
        .iter()
        .filter(|m| m.protocol_mapper == "oidc-audience-mapper" && m.adds_to_access_token())
        .filter_map(|m| m.config.get("included.custom.audience").or_else(|| m.config.get("included.client.audience")))
        .filter(|a| !a.is_empty())
        .cloned()
        .collect();
    // The default `roles` client scope adds every client whose roles the token carries: the
    // service account's default roles include the `account` client's, so Keycloak always adds
    // `account`, after the mappers' audiences.
    if !audiences.iter().any(|a| a == ACCOUNT_AUDIENCE) {
        audiences.push(ACCOUNT_AUDIENCE.to_owned());
    }
    match audiences.as_slice() {
        [] => {}
        [one] => {
            claims.insert("aud".into(), Value::from(one.clone()));
        }
        many => {
            claims.insert("aud".into(), Value::from(many.to_vec()));
        }
    }
    for mapper in client
        .protocol_mappers
        .iter()
        .filter(|m| m.protocol_mapper == "oidc-hardcoded-claim-mapper" && m.adds_to_access_token())
    {
        if let (Some(name), Some(value)) = (mapper.config.get("claim.name"), typed_claim_value(&mapper.config)) {
            set_claim(&mut claims, name, value);
        }
    }
    Value::Object(claims)
}

// ---------------------------------------------------------------- public endpoints

async fn certs(State(shared): State<Shared>, Path(realm): Path<String>) -> Response {
    if shared.lock().realm != realm {
        return realm_not_found();
    }
    axum::Json(jwks_document(&shared.keys)).into_response()
}

async fn discovery(State(shared): State<Shared>, Path(realm): Path<String>) -> Response {
    let state = shared.lock();
    if state.realm != realm {
        return realm_not_found();
    }
    let issuer = &state.issuer;
    // Required fields of OpenID Connect Discovery; only the token endpoint and the JWKS are served.
    axum::Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/protocol/openid-connect/auth"),
        "token_endpoint": format!("{issuer}/protocol/openid-connect/token"),
        "jwks_uri": format!("{issuer}/protocol/openid-connect/certs"),
        "grant_types_supported": ["client_credentials", "refresh_token"],
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": ["openid", "profile", "email"],
    }))
    .into_response()
}

/// Client id and secret from HTTP Basic (RFC 6749 §2.3.1: form-url-encoded parts) or the form.
fn client_credentials(headers: &HeaderMap, form: &HashMap<String, String>) -> (Option<String>, Option<String>) {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            let (id, secret) = s.split_once(':')?;
            let decode =
                |p: &str| url::form_urlencoded::parse(format!("x={p}").as_bytes()).next().map(|(_, v)| v.into_owned());
            Some((decode(id)?, decode(secret)?))
        });
    let (mut id, mut secret) = match basic {
        Some((id, secret)) => (Some(id), Some(secret)),
        None => (None, None),
    };
    if let Some(v) = form.get("client_id") {
        id = Some(v.clone());
    }
    if let Some(v) = form.get("client_secret") {
        secret = Some(v.clone());
    }
    (id, secret)
}

async fn token(State(shared): State<Shared>, Path(realm): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let form: HashMap<String, String> =
        if is_form { url::form_urlencoded::parse(&body).into_owned().collect() } else { HashMap::new() };
    let mut state = shared.lock();
    if state.realm != realm {
        return realm_not_found();
    }
    let grant = match form.get("grant_type").map(String::as_str) {
        None => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Missing form parameter: grant_type"),
        Some(g @ ("client_credentials" | "refresh_token")) => g.to_owned(),
        Some(_) => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "Unsupported grant_type"),
    };
    let (client_id, secret) = client_credentials(&headers, &form);
    let Some(client_id) = client_id else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_client", "Missing client_id parameter");
    };
    let unknown_or_disabled = if state.pre_26_client_errors {
        oauth_error(StatusCode::BAD_REQUEST, "unauthorized_client", "Invalid client credentials")
    } else {
        oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Invalid client or Invalid client credentials")
    };
    let Some(client) = state.by_client_id(&client_id).cloned() else { return unknown_or_disabled };
    if !client.enabled {
        return unknown_or_disabled;
    }
    if !client.public_client && secret.as_deref() != Some(client.secret.as_str()) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            "Invalid client or Invalid client credentials",
        );
    }
    if client.public_client {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "Public client not allowed to retrieve service account",
        );
    }
    if !client.service_accounts_enabled {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "Client not enabled to retrieve service account",
        );
    }
    if grant == "refresh_token" {
        let Some(refresh) = form.get("refresh_token") else {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Missing parameter: refresh_token");
        };
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = 0;
        validation.validate_aud = false;
        let valid = jsonwebtoken::decode::<Value>(refresh, &shared.keys.decoding, &validation).ok().filter(|t| {
            t.claims["typ"] == "Refresh"
                && t.claims["iss"] == state.issuer.as_str()
                && t.claims["jti"].as_str().and_then(|j| state.issued.get(j)).is_some_and(|i| !i.revoked)
        });
        let Some(data) = valid else {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "Invalid refresh token");
        };
        if data.claims["azp"] != client.client_id.as_str() {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Invalid refresh token. Token client and authorized client don't match",
            );
        }
    }

    let now = now_seconds();
    let expires_in = lifespan(&client);
    let jti = uuid::Uuid::new_v4().to_string();
    let access = access_claims(&state.issuer, &client, now, now + expires_in, &jti);
    let instant = Instant::now();
    state.issued.insert(
        jti,
        IssuedToken {
            client_id: client.client_id.clone(),
            expires_at: instant + Duration::from_secs(expires_in),
            revoked: false,
        },
    );
    let mut response = json!({
        "access_token": sign(&shared.keys.encoding, &shared.keys.kid, &access),
        "expires_in": expires_in,
        "refresh_expires_in": 0,
        "token_type": "Bearer",
        "not-before-policy": 0,
        "scope": DEFAULT_SCOPE,
    });
    if client.attributes.get("client_credentials.use_refresh_token").map(String::as_str) == Some("true") {
        let refresh_jti = uuid::Uuid::new_v4().to_string();
        let refresh = json!({
            "exp": now + REALM_SSO_SESSION_IDLE,
            "iat": now,
            "jti": refresh_jti,
            "iss": state.issuer,
            "aud": state.issuer,
            "sub": client.service_account_user_id,
            "typ": "Refresh",
            "azp": client.client_id,
            "scope": DEFAULT_SCOPE,
        });
        state.issued.insert(
            refresh_jti,
            IssuedToken {
                client_id: client.client_id.clone(),
                expires_at: instant + Duration::from_secs(REALM_SSO_SESSION_IDLE),
                revoked: false,
            },
        );
        response["refresh_token"] = Value::from(sign(&shared.keys.encoding, &shared.keys.kid, &refresh));
        response["refresh_expires_in"] = Value::from(REALM_SSO_SESSION_IDLE);
        // Keycloak keeps a session (and names it) only when it issues a refresh token.
        response["session_state"] = Value::from(uuid::Uuid::new_v4().simple().to_string());
    }
    *state.logins.entry(client.client_id.clone()).or_default() += 1;
    axum::Json(response).into_response()
}

// ---------------------------------------------------------------- Admin API

/// Checks the bearer token and the realm; returns the locked state on success.
fn admin<'a>(shared: &'a Shared, headers: &HeaderMap, realm: &str) -> Result<MutexGuard<'a, DoubleState>, Refusal> {
    let unauthorized = || Box::new(error(StatusCode::UNAUTHORIZED, json!({"error": "HTTP 401 Unauthorized"})));
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?;
    let mut validation = Validation::new(Algorithm::RS256);
    // Expiry is checked against the issue table below, to the millisecond.
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    validation.validate_aud = false;
    let data = jsonwebtoken::decode::<Value>(token, &shared.keys.decoding, &validation).map_err(|_| unauthorized())?;
    let state = shared.lock();
    let jti = data.claims["jti"].as_str().unwrap_or_default();
    let issued = state.issued.get(jti).ok_or_else(unauthorized)?;
    if issued.revoked || Instant::now() >= issued.expires_at || data.claims["typ"] != "Bearer" {
        return Err(unauthorized());
    }
    let allowed = state.by_client_id(&issued.client_id).is_some_and(|c| c.can_manage_clients && c.enabled);
    if !allowed {
        return Err(Box::new(error(StatusCode::FORBIDDEN, json!({"error": "HTTP 403 Forbidden"}))));
    }
    if state.realm != realm {
        return Err(Box::new(realm_not_found()));
    }
    Ok(state)
}

/// The fields of Keycloak 26's ClientRepresentation: any other is refused, as Keycloak does.
const CLIENT_FIELDS: &[&str] = &[
    "id",
    "clientId",
    "name",
    "description",
    "type",
    "rootUrl",
    "adminUrl",
    "baseUrl",
    "surrogateAuthRequired",
    "enabled",
    "alwaysDisplayInConsole",
    "clientAuthenticatorType",
    "secret",
    "registrationAccessToken",
    "defaultRoles",
    "redirectUris",
    "webOrigins",
    "notBefore",
    "bearerOnly",
    "consentRequired",
    "standardFlowEnabled",
    "implicitFlowEnabled",
    "directAccessGrantsEnabled",
    "serviceAccountsEnabled",
    "authorizationServicesEnabled",
    "directGrantsOnly",
    "publicClient",
    "frontchannelLogout",
    "protocol",
    "attributes",
    "authenticationFlowBindingOverrides",
    "fullScopeAllowed",
    "nodeReRegistrationTimeout",
    "registeredNodes",
    "protocolMappers",
    "clientTemplate",
    "useTemplateConfig",
    "useTemplateScope",
    "useTemplateMappers",
    "defaultClientScopes",
    "optionalClientScopes",
    "authorizationSettings",
    "access",
    "origin",
];

/// The fields of a ProtocolMapperRepresentation.
const MAPPER_FIELDS: &[&str] =
    &["id", "name", "protocol", "protocolMapper", "consentRequired", "consentText", "config"];

/// A JSON body of a representation with these `fields` (Keycloak 26 refuses unknown fields:
/// 400 "Invalid json representation for ClientRepresentation. Unrecognized field ...").
fn json_body<T: for<'de> Deserialize<'de>>(
    headers: &HeaderMap,
    body: &Bytes,
    representation: &str,
    fields: &[&str],
) -> Result<T, Refusal> {
    // Keycloak reads a body without a Content-Type as JSON.
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().is_ok_and(|v| v.starts_with("application/json")))
        .unwrap_or(true);
    if !is_json {
        return Err(Box::new(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            json!({"error": "The content-type header value did not match the value in @Consumes"}),
        )));
    }
    // Not JSON at all is `invalid_request`; JSON with a field of the wrong type `unknown_error`.
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_request", "error_description": "Cannot parse the JSON"}),
        ))
    })?;
    if let Some(unknown) = value.as_object().and_then(|o| o.keys().find(|k| !fields.contains(&k.as_str()))) {
        // Keycloak names the position too ("at line 1 column 37"); the double leaves it out.
        let message = format!("Invalid json representation for {representation}. Unrecognized field \"{unknown}\".");
        return Err(Box::new(error(StatusCode::BAD_REQUEST, json!({"error": message}))));
    }
    serde_json::from_value(value).map_err(|_| Box::new(unparsable()))
}

/// A ClientRepresentation as accepted on create and update: the fields the double keeps, each
/// with its real type; other known fields are ignored, unknown ones refused by `json_body`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClientInput {
    client_id: Option<String>,
    description: Option<String>,
    enabled: Option<bool>,
    public_client: Option<bool>,
    service_accounts_enabled: Option<bool>,
    standard_flow_enabled: Option<bool>,
    implicit_flow_enabled: Option<bool>,
    direct_access_grants_enabled: Option<bool>,
    client_authenticator_type: Option<String>,
    secret: Option<String>,
    protocol: Option<String>,
    attributes: Option<BTreeMap<String, Option<String>>>,
    protocol_mappers: Option<Vec<MapperInput>>,
}

/// A ProtocolMapperRepresentation.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MapperInput {
    name: Option<String>,
    protocol: Option<String>,
    protocol_mapper: Option<String>,
    #[allow(dead_code)]
    consent_required: Option<bool>,
    config: Option<BTreeMap<String, Option<String>>>,
}

impl MapperInput {
    fn into_stored(self, id: String) -> Result<StoredMapper, Refusal> {
        let bad = |m: &str| Box::new(error(StatusCode::BAD_REQUEST, json!({"errorMessage": m})));
        let name = self.name.filter(|n| !n.is_empty()).ok_or_else(|| bad("Protocol mapper name is required"))?;
        let protocol_mapper = self.protocol_mapper.ok_or_else(|| bad("Protocol mapper type is required"))?;
        if !KNOWN_MAPPERS.contains(&protocol_mapper.as_str()) {
            return Err(bad(&format!("Protocol mapper provider not found: {protocol_mapper}")));
        }
        let protocol = self.protocol.unwrap_or_else(|| "openid-connect".into());
        if protocol != "openid-connect" {
            return Err(bad(&format!("Unsupported protocol: {protocol}")));
        }
        let config = self.config.unwrap_or_default().into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect();
        Ok(StoredMapper { id, name, protocol, protocol_mapper, config })
    }
}

fn merge_attributes(target: &mut BTreeMap<String, String>, attributes: BTreeMap<String, Option<String>>) {
    for (key, value) in attributes {
        match value {
            Some(v) if !v.is_empty() => {
                target.insert(key, v);
            }
            _ => {
                target.remove(&key);
            }
        }
    }
}

fn exists_conflict(client_id: &str) -> Response {
    error(StatusCode::CONFLICT, json!({"errorMessage": format!("Client {client_id} already exists")}))
}

async fn list_clients(
    State(shared): State<Shared>,
    Path(realm): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let state = match admin(&shared, &headers, &realm) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let search = query.get("search").is_some_and(|s| s == "true");
    let list: Vec<Value> = state
        .clients
        .values()
        .filter(|c| match query.get("clientId") {
            None => true,
            Some(id) if search => c.client_id.to_lowercase().contains(&id.to_lowercase()),
            Some(id) => &c.client_id == id,
        })
        .map(StoredClient::representation)
        .collect();
    axum::Json(list).into_response()
}

async fn create_client(
    State(shared): State<Shared>,
    Path(realm): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = match admin(&shared, &headers, &realm) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let input: ClientInput = match json_body(&headers, &body, "ClientRepresentation", CLIENT_FIELDS) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    let Some(client_id) = input.client_id.filter(|c| !c.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, json!({"errorMessage": "Client id is missing"}));
    };
    if state.by_client_id(&client_id).is_some() {
        return exists_conflict(&client_id);
    }
    let mut client = StoredClient::new(&client_id);
    // Fields left out get Keycloak's model defaults: standard flow on, no service account.
    client.standard_flow_enabled = input.standard_flow_enabled.unwrap_or(true);
    client.direct_access_grants_enabled = input.direct_access_grants_enabled.unwrap_or(false);
    client.implicit_flow_enabled = input.implicit_flow_enabled.unwrap_or(false);
    client.service_accounts_enabled = input.service_accounts_enabled.unwrap_or(false);
    client.public_client = input.public_client.unwrap_or(false);
    client.enabled = input.enabled.unwrap_or(true);
    client.description = input.description;
    if let Some(t) = input.client_authenticator_type {
        client.client_authenticator_type = t;
    }
    if let Some(secret) = input.secret {
        client.secret = secret;
    }
    if let Some(protocol) = input.protocol
        && protocol != "openid-connect"
    {
        return error(StatusCode::BAD_REQUEST, json!({"errorMessage": format!("Unsupported protocol: {protocol}")}));
    }
    merge_attributes(&mut client.attributes, input.attributes.unwrap_or_default());
    for mapper in input.protocol_mappers.unwrap_or_default() {
        match mapper.into_stored(uuid::Uuid::new_v4().to_string()) {
            Ok(m) if client.mapper(&m.name).is_some() => {
                return error(
                    StatusCode::CONFLICT,
                    json!({"errorMessage": format!("Protocol mapper exists with same name: {}", m.name)}),
                );
            }
            Ok(m) => client.protocol_mappers.push(m),
            Err(r) => return *r,
        }
    }
    let id = client.id.clone();
    let location = format!("{}/admin/realms/{realm}/clients/{id}", state.base_url);
    state.clients.insert(id, client);
    created(&location)
}

fn created(location: &str) -> Response {
    let mut response = StatusCode::CREATED.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

async fn get_client(
    State(shared): State<Shared>,
    Path((realm, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let state = match admin(&shared, &headers, &realm) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match state.clients.get(&id) {
        Some(c) => axum::Json(c.representation()).into_response(),
        None => client_not_found(),
    }
}

async fn update_client(
    State(shared): State<Shared>,
    Path((realm, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = match admin(&shared, &headers, &realm) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let input: ClientInput = match json_body(&headers, &body, "ClientRepresentation", CLIENT_FIELDS) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    if !state.clients.contains_key(&id) {
        return client_not_found();
    }
    if let Some(new_id) = &input.client_id
        && state.clients.values().any(|c| &c.client_id == new_id && c.id != id)
    {
        return exists_conflict(new_id);
    }
    let client = state.clients.get_mut(&id).expect("checked above");
    // PUT merges: what is absent stays as it was; mappers are managed through their own resource.
    if let Some(v) = input.client_id {
        client.client_id = v;
    }
    if let Some(v) = input.description {
        client.description = Some(v);
    }
    let flags = [
        (input.enabled, &mut client.enabled),
        (input.public_client, &mut client.public_client),
        (input.service_accounts_enabled, &mut client.service_accounts_enabled),
        (input.standard_flow_enabled, &mut client.standard_flow_enabled),
        (input.implicit_flow_enabled, &mut client.implicit_flow_enabled),
        (input.direct_access_grants_enabled, &mut client.direct_access_grants_enabled),
    ];
    for (value, field) in flags {
        if let Some(v) = value {
            *field = v;
        }
    }
    if let Some(v) = input.client_authenticator_type {
        client.client_authenticator_type = v;
    }
    if let Some(v) = input.secret {
        client.secret = v;
    }
    if let Some(attributes) = input.attributes {
        merge_attributes(&mut client.attributes, attributes);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn delete_client(
    State(shared): State<Shared>,
    Path((realm, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut state = match admin(&shared, &headers, &realm) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match state.clients.remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => client_not_found(),
    }
}

async fn get_secret(
    State(shared): State<Shared>,
    Path((realm, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let state = match admin(&shared, &headers, &realm) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match state.clients.get(&id) {
        Some(c) => axum::Json(json!({"type": "secret", "value": c.secret})).into_response(),
        None => client_not_found(),
    }
}

async fn regenerate_secret(
    State(shared): State<Shared>,
    Path((realm, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut state = match admin(&shared, &headers, &realm) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match state.clients.get_mut(&id) {
        Some(c) => {
            c.secret = new_client_secret();
            axum::Json(json!({"type": "secret", "value": c.secret})).into_response()
        }
        None => client_not_found(),
    }
}

async fn list_mappers(
    State(shared): State<Shared>,
    Path((realm, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let state = match admin(&shared, &headers, &realm) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match state.clients.get(&id) {
        Some(c) => {
            let list: Vec<Value> = c.protocol_mappers.iter().map(StoredMapper::representation).collect();
            axum::Json(list).into_response()
        }
        None => client_not_found(),
    }
}

async fn create_mapper(
    State(shared): State<Shared>,
    Path((realm, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = match admin(&shared, &headers, &realm) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let input: MapperInput = match json_body(&headers, &body, "ProtocolMapperRepresentation", MAPPER_FIELDS) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    let base = state.base_url.clone();
    let Some(client) = state.clients.get_mut(&id) else { return client_not_found() };
    let mapper = match input.into_stored(uuid::Uuid::new_v4().to_string()) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    if client.mapper(&mapper.name).is_some() {
        return error(StatusCode::CONFLICT, json!({"errorMessage": "Protocol mapper exists with same name"}));
    }
    let location = format!("{base}/admin/realms/{realm}/clients/{id}/protocol-mappers/models/{}", mapper.id);
    client.protocol_mappers.push(mapper);
    created(&location)
}

fn mapper_not_found() -> Response {
    error(StatusCode::NOT_FOUND, json!({"error": "Model not found"}))
}

async fn get_mapper(
    State(shared): State<Shared>,
    Path((realm, id, mapper)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let state = match admin(&shared, &headers, &realm) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Some(client) = state.clients.get(&id) else { return client_not_found() };
    match client.protocol_mappers.iter().find(|m| m.id == mapper) {
        Some(m) => axum::Json(m.representation()).into_response(),
        None => mapper_not_found(),
    }
}

async fn update_mapper(
    State(shared): State<Shared>,
    Path((realm, id, mapper)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = match admin(&shared, &headers, &realm) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let input: MapperInput = match json_body(&headers, &body, "ProtocolMapperRepresentation", MAPPER_FIELDS) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    let Some(client) = state.clients.get_mut(&id) else { return client_not_found() };
    let Some(index) = client.protocol_mappers.iter().position(|m| m.id == mapper) else {
        return mapper_not_found();
    };
    let updated = match input.into_stored(mapper) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    if client.protocol_mappers.iter().enumerate().any(|(i, m)| i != index && m.name == updated.name) {
        return error(StatusCode::CONFLICT, json!({"errorMessage": "Protocol mapper exists with same name"}));
    }
    client.protocol_mappers[index] = updated;
    StatusCode::NO_CONTENT.into_response()
}

async fn delete_mapper(
    State(shared): State<Shared>,
    Path((realm, id, mapper)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut state = match admin(&shared, &headers, &realm) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Some(client) = state.clients.get_mut(&id) else { return client_not_found() };
    let before = client.protocol_mappers.len();
    client.protocol_mappers.retain(|m| m.id != mapper);
    if client.protocol_mappers.len() == before {
        return mapper_not_found();
    }
    StatusCode::NO_CONTENT.into_response()
}

/// A fresh client secret, registered for the end-of-run secret leak check.
fn new_client_secret() -> String {
    let secret = uuid::Uuid::new_v4().simple().to_string();
    crate::logs::register_secret(&secret);
    secret
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_claim_names_nest_unless_escaped() {
        let mut claims = Map::new();
        set_claim(&mut claims, "a.b", Value::from(1));
        set_claim(&mut claims, "a.c", Value::from(2));
        set_claim(&mut claims, "x\\.y", Value::from(3));
        assert_eq!(Value::Object(claims), json!({"a": {"b": 1, "c": 2}, "x.y": 3}));
    }

    #[test]
    fn fixture_keys_load_and_the_public_half_matches() {
        let key = EncodingKey::from_rsa_pem(pem_block(REALM_KEY_FILE).as_bytes()).unwrap();
        let public = DecodingKey::from_rsa_pem(pem_block(REALM_PUBLIC_KEY_FILE).as_bytes()).unwrap();
        let token = sign(&key, "k", &json!({"sub": "x", "exp": now_seconds() + 60}));
        let data = jsonwebtoken::decode::<Value>(&token, &public, &Validation::new(Algorithm::RS256)).unwrap();
        assert_eq!(data.claims["sub"], "x");
        let foreign = EncodingKey::from_rsa_pem(pem_block(FOREIGN_KEY_FILE).as_bytes()).unwrap();
        let forged = sign(&foreign, "k", &json!({"sub": "x", "exp": now_seconds() + 60}));
        assert!(jsonwebtoken::decode::<Value>(&forged, &public, &Validation::new(Algorithm::RS256)).is_err());
    }
}
