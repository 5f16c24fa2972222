//! Keycloak (17 and later, no `/auth` prefix) as the identity provider, through its Admin REST API.
//!
//! What it relies on (domain.md §4): the operator's own confidential client logs in with
//! `client_credentials` at `/realms/{realm}/protocol/openid-connect/token`; clients are found with
//! `GET /admin/realms/{realm}/clients?clientId=X` (an array), created with `POST` (201 and a
//! `Location` naming the internal id), changed with `PUT .../clients/{uuid}`; protocol mappers live
//! under `.../clients/{uuid}/protocol-mappers/models`; the secret is `GET .../client-secret`.
//!
//! Choices worth knowing:
//! - The admin token is cached until shortly before `expires_in` and shared by all callers (one
//!   login at a time, behind a tokio mutex): logging in per call floods Keycloak with sessions, a
//!   known complaint against Crossplane's Keycloak provider. A 401 from the Admin API (token revoked,
//!   Keycloak restarted with another key) drops the cache and retries the request once.
//! - Ownership is two client attributes, [`OWNER_KEY`] and [`OWNER_RESOURCE_KEY`]. A client
//!   without our marker, or belonging to another resource, is never changed, deleted, nor is its
//!   secret read ([`BackendError::Foreign`]).
//! - Only mappers whose name starts with [`MAPPER_PREFIX`] are ours. Others on our client (added by
//!   an administrator, or the service-account mappers older Keycloak releases add by themselves)
//!   are left alone, so they never cause a write.
//! - A failed client_credentials grant for a *consumer's* client (disabled, wrong secret) is
//!   [`BackendError::Rejected`], not `Unauthorized`: `Unauthorized` tells the user to check the
//!   profile's credential, which is not what is wrong, and Keycloak's status for the case changed
//!   between releases (400 `unauthorized_client` up to 25, 401 `invalid_client` in 26), so only a
//!   mapping that ignores the status gives the same reason on every version. The operator's own
//!   login failing is `Unauthorized`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::{RequestBuilder, Response, StatusCode};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use url::Url;

use super::{ClientDefinition, HardcodedClaim, IdentityProvider, TokenSet};
use crate::backends::http::{self, HttpSettings};
use crate::backends::{BackendError, OWNER_KEY, OWNER_RESOURCE_KEY, Outcome, Owner, SecretString, System};
use crate::config::IdentityProviderProfile;

/// Longest token lifetime the client believes (one year).
const MAX_LIFETIME_SECONDS: u64 = 365 * 86_400;

const SYSTEM: System = System::Identity;

/// Names of the protocol mappers the operator manages start with this.
pub const MAPPER_PREFIX: &str = "dsp-mqtt-";
/// Name of the audience mapper.
const AUDIENCE_MAPPER: &str = "dsp-mqtt-audience";

const ATTR_USE_REFRESH_TOKEN: &str = "client_credentials.use_refresh_token";
const ATTR_TOKEN_LIFESPAN: &str = "access.token.lifespan";

/// Renew the admin token this long before it expires (at most a fifth of its lifetime, so that
/// short-lived tokens are still used for most of their life).
const RENEW_MARGIN: Duration = Duration::from_secs(30);

/// Where Keycloak is and how the operator logs in.
#[derive(Clone, Debug)]
pub struct KeycloakSettings {
    /// Base URL for the Admin API and the operator's own login, e.g. `https://keycloak:8443`
    /// (a path such as `/auth` for a reverse proxy is kept).
    pub base_url: Url,
    /// Realm in which clients are created and in which the operator's client lives.
    pub realm: String,
    /// The operator's confidential client (service account with `manage-clients`).
    pub client_id: String,
    /// Its secret.
    pub client_secret: SecretString,
    /// Token URL given to the connector and consumers (may differ from the internal one).
    pub public_token_url: Url,
    /// Timeout and CA bundle.
    pub http: HttpSettings,
}

impl KeycloakSettings {
    /// Settings from a configuration profile, its client secret and CA bundle already read.
    pub fn from_profile(
        profile: &IdentityProviderProfile,
        client_secret: SecretString,
        ca_bundle_pem: Option<String>,
    ) -> Self {
        Self {
            base_url: profile.admin_url.clone(),
            realm: profile.realm.clone(),
            client_id: profile.client_id.clone(),
            client_secret,
            public_token_url: profile.effective_token_url(),
            http: HttpSettings { timeout: Duration::from_secs(profile.timeout_seconds), ca_bundle_pem },
        }
    }
}

/// The operator's admin token and when to renew it.
struct AdminToken {
    value: SecretString,
    renew_at: Instant,
    /// Which login produced it, so that a 401 drops only the token that failed and not a newer
    /// one another caller fetched meanwhile.
    generation: u64,
}

#[derive(Default)]
struct TokenCache {
    current: Option<AdminToken>,
    logins: u64,
}

/// [`IdentityProvider`] backed by Keycloak's Admin REST API.
pub struct KeycloakClient {
    http: reqwest::Client,
    settings: KeycloakSettings,
    cache: tokio::sync::Mutex<TokenCache>,
}

impl std::fmt::Debug for KeycloakClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeycloakClient")
            .field("base_url", &self.settings.base_url.as_str())
            .field("realm", &self.settings.realm)
            .field("client_id", &self.settings.client_id)
            .finish_non_exhaustive()
    }
}

/// The parts of a ClientRepresentation the operator reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClientView {
    id: String,
    client_id: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    public_client: Option<bool>,
    #[serde(default)]
    service_accounts_enabled: Option<bool>,
    #[serde(default)]
    standard_flow_enabled: Option<bool>,
    #[serde(default)]
    direct_access_grants_enabled: Option<bool>,
    #[serde(default)]
    client_authenticator_type: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, Option<String>>,
    /// Absent when the client has none, or when a release leaves them out of listings.
    #[serde(default)]
    protocol_mappers: Option<Vec<MapperView>>,
}

impl ClientView {
    fn attribute(&self, key: &str) -> &str {
        self.attributes.get(key).and_then(|v| v.as_deref()).unwrap_or("")
    }
}

/// A found client: the typed view for comparing, the raw representation for a faithful PUT.
struct FoundClient {
    view: ClientView,
    raw: Map<String, Value>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MapperView {
    id: String,
    name: String,
    #[serde(default)]
    protocol_mapper: String,
    #[serde(default)]
    config: BTreeMap<String, Option<String>>,
}

/// A mapper as the operator wants it.
#[derive(Debug, PartialEq)]
struct DesiredMapper {
    name: String,
    protocol_mapper: &'static str,
    config: BTreeMap<&'static str, String>,
}

impl DesiredMapper {
    fn audience(audience: &str) -> Self {
        Self {
            name: AUDIENCE_MAPPER.to_owned(),
            protocol_mapper: "oidc-audience-mapper",
            config: BTreeMap::from([
                ("included.custom.audience", audience.to_owned()),
                ("access.token.claim", "true".to_owned()),
            ]),
        }
    }

    fn hardcoded(claim: &HardcodedClaim) -> Self {
        let (value, label) = match &claim.value {
            Value::String(s) => (s.clone(), "String"),
            other => (other.to_string(), "JSON"),
        };
        Self {
            name: format!("{MAPPER_PREFIX}claim-{}", claim.name),
            protocol_mapper: "oidc-hardcoded-claim-mapper",
            config: BTreeMap::from([
                ("claim.name", claim.name.clone()),
                ("claim.value", value),
                ("jsonType.label", label.to_owned()),
                ("access.token.claim", "true".to_owned()),
            ]),
        }
    }

    fn representation(&self, id: Option<&str>, extra_config: &BTreeMap<String, Option<String>>) -> Value {
        let mut config: Map<String, Value> =
            extra_config.iter().filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), Value::from(v.clone())))).collect();
        for (k, v) in &self.config {
            config.insert((*k).to_owned(), Value::from(v.clone()));
        }
        let mut rep = json!({
            "name": self.name,
            "protocol": "openid-connect",
            "protocolMapper": self.protocol_mapper,
            "config": config,
        });
        if let (Some(id), Some(obj)) = (id, rep.as_object_mut()) {
            obj.insert("id".into(), Value::from(id));
        }
        rep
    }

    /// Whether an existing mapper of the same name already is as desired (keys we do not set are
    /// Keycloak's or an administrator's business).
    fn matches(&self, existing: &MapperView) -> bool {
        existing.protocol_mapper == self.protocol_mapper
            && self.config.iter().all(|(key, want)| {
                let have = existing.config.get(*key).and_then(|v| v.as_deref()).unwrap_or("");
                if *key == "claim.value" && self.config.get("jsonType.label").map(String::as_str) == Some("JSON") {
                    // Keycloak stores the text as given; compare meaning, not whitespace.
                    match (serde_json::from_str::<Value>(have), serde_json::from_str::<Value>(want)) {
                        (Ok(a), Ok(b)) => a == b,
                        _ => have == want,
                    }
                } else {
                    have == want
                }
            })
    }
}

fn desired_mappers(client: &ClientDefinition) -> Vec<DesiredMapper> {
    let mut mappers: Vec<DesiredMapper> = client.audience.iter().map(|a| DesiredMapper::audience(a)).collect();
    mappers.extend(client.claims.iter().map(DesiredMapper::hardcoded));
    mappers
}

/// The attributes the operator owns on a client, as Keycloak stores them (strings). An empty
/// lifespan means "the realm's default" and is how Keycloak clears the attribute on update.
fn desired_attributes(client: &ClientDefinition) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        (OWNER_KEY, client.owner.managed_by()),
        (OWNER_RESOURCE_KEY, client.owner.marker()),
        (ATTR_USE_REFRESH_TOKEN, client.refresh_tokens_for_client_credentials.to_string()),
        (ATTR_TOKEN_LIFESPAN, client.access_token_lifespan_seconds.map(|s| s.to_string()).unwrap_or_default()),
    ])
}

/// Whether the client's own fields (not its mappers) are as desired.
fn client_fields_match(view: &ClientView, client: &ClientDefinition) -> bool {
    view.enabled.unwrap_or(true) == client.enabled
        && view.description.as_deref().unwrap_or("") == client.description
        && view.public_client == Some(false)
        && view.service_accounts_enabled == Some(true)
        && view.standard_flow_enabled == Some(false)
        && view.direct_access_grants_enabled == Some(false)
        && view.client_authenticator_type.as_deref() == Some("client-secret")
        && desired_attributes(client).iter().all(|(k, v)| view.attribute(k) == v)
}

/// Keycloak's error text from an error answer: `errorMessage` (admin API), `error` and
/// `error_description` (token endpoint and most admin errors), else the raw (bounded) body.
async fn keycloak_error(response: Response) -> String {
    let text = http::error_text(response).await;
    let Ok(Value::Object(body)) = serde_json::from_str::<Value>(&text) else { return text };
    let field = |k: &str| body.get(k).and_then(Value::as_str);
    match (field("errorMessage"), field("error"), field("error_description")) {
        (Some(message), _, _) => message.to_owned(),
        (None, Some(error), Some(description)) => format!("{error}: {description}"),
        (None, Some(error), None) => error.to_owned(),
        _ => text,
    }
}

/// The OAuth error code of a token-endpoint error text as built by [`keycloak_error`].
fn is_client_auth_error(message: &str) -> bool {
    message.starts_with("invalid_client") || message.starts_with("unauthorized_client")
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    expires_in: u64,
    #[serde(default)]
    refresh_token: Option<SecretString>,
    #[serde(default)]
    refresh_expires_in: Option<u64>,
}

impl KeycloakClient {
    /// A client for one Keycloak realm. Makes no request: the first call logs in.
    pub fn new(settings: KeycloakSettings) -> Result<Self, BackendError> {
        if settings.base_url.cannot_be_a_base() || !matches!(settings.base_url.scheme(), "https" | "http") {
            return Err(BackendError::Protocol {
                system: SYSTEM,
                operation: "configure",
                object: format!("base URL {}", settings.base_url),
                detail: "not an http(s) base URL".into(),
            });
        }
        let http = http::client(SYSTEM, &settings.http)?;
        Ok(Self { http, settings, cache: tokio::sync::Mutex::new(TokenCache::default()) })
    }

    /// How many times this client has logged in (admin token requests): a measure of how well
    /// the cache works.
    pub async fn admin_logins(&self) -> u64 {
        self.cache.lock().await.logins
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.settings.base_url.clone();
        // `new` refused URLs that cannot be a base, so this always succeeds.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn token_endpoint(&self) -> Url {
        self.url(&["realms", &self.settings.realm, "protocol", "openid-connect", "token"])
    }

    fn clients_url(&self, rest: &[&str]) -> Url {
        let mut segments = vec!["admin", "realms", self.settings.realm.as_str(), "clients"];
        segments.extend_from_slice(rest);
        self.url(&segments)
    }

    /// A valid admin token and its generation: the cached one, or a fresh login (one caller
    /// logs in, the others wait for it and share the result).
    async fn admin_token(&self, operation: &'static str, object: &str) -> Result<(SecretString, u64), BackendError> {
        let mut cache = self.cache.lock().await;
        if let Some(token) = &cache.current
            && Instant::now() < token.renew_at
        {
            return Ok((token.value.clone(), token.generation));
        }
        cache.current = None;
        let fresh = self.login(operation, object).await?;
        cache.logins += 1;
        // Capped: an absurd `expires_in` must not overflow the Instant arithmetic below.
        let lifetime = Duration::from_secs(fresh.expires_in.min(MAX_LIFETIME_SECONDS));
        let margin = RENEW_MARGIN.min(lifetime / 5);
        let token = AdminToken {
            value: fresh.access_token,
            renew_at: Instant::now() + lifetime.saturating_sub(margin),
            generation: cache.logins,
        };
        let result = (token.value.clone(), token.generation);
        cache.current = Some(token);
        Ok(result)
    }

    async fn login(&self, operation: &'static str, object: &str) -> Result<TokenResponse, BackendError> {
        let login_object = format!("{object} (operator client {})", self.settings.client_id);
        let request = self.http.post(self.token_endpoint()).form(&[
            ("grant_type", "client_credentials"),
            ("client_id", self.settings.client_id.as_str()),
            ("client_secret", self.settings.client_secret.expose_secret()),
        ]);
        let response = http::send(SYSTEM, operation, &login_object, self.settings.http.timeout, request).await?;
        let status = response.status();
        if status.is_success() {
            return response.json::<TokenResponse>().await.map_err(|e| BackendError::Protocol {
                system: SYSTEM,
                operation,
                object: login_object,
                detail: format!("the operator's login answered an unreadable token response: {e}"),
            });
        }
        let message = keycloak_error(response).await;
        if matches!(status, StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED) && is_client_auth_error(&message) {
            tracing::warn!(client_id = %self.settings.client_id, %status, "Keycloak refused the operator's client credentials");
            return Err(BackendError::Unauthorized {
                system: SYSTEM,
                operation,
                object: login_object,
                status: status.as_u16(),
            });
        }
        Err(http::status_error(SYSTEM, operation, &login_object, status, message))
    }

    async fn forget_token(&self, generation: u64) {
        let mut cache = self.cache.lock().await;
        if cache.current.as_ref().is_some_and(|t| t.generation == generation) {
            cache.current = None;
        }
    }

    /// Sends an Admin API request with the admin token; on a 401 logs in again and retries once.
    async fn admin_send(
        &self,
        operation: &'static str,
        object: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, BackendError> {
        let timeout = self.settings.http.timeout;
        let (token, generation) = self.admin_token(operation, object).await?;
        let response =
            http::send(SYSTEM, operation, object, timeout, build().bearer_auth(token.expose_secret())).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        tracing::debug!(operation, object, "admin token refused; logging in again");
        self.forget_token(generation).await;
        let (token, _) = self.admin_token(operation, object).await?;
        http::send(SYSTEM, operation, object, timeout, build().bearer_auth(token.expose_secret())).await
    }

    async fn fail(&self, operation: &'static str, object: &str, response: Response) -> BackendError {
        let status = response.status();
        http::status_error(SYSTEM, operation, object, status, keycloak_error(response).await)
    }

    fn protocol(operation: &'static str, object: &str, detail: String) -> BackendError {
        BackendError::Protocol { system: SYSTEM, operation, object: object.to_owned(), detail }
    }

    /// The client with this clientId, if any (with its mappers).
    async fn find(&self, operation: &'static str, client_id: &str) -> Result<Option<FoundClient>, BackendError> {
        let object = format!("client {client_id}");
        let url = self.clients_url(&[]);
        let response = self
            .admin_send(operation, &object, || self.http.get(url.clone()).query(&[("clientId", client_id)]))
            .await?;
        if !response.status().is_success() {
            return Err(self.fail(operation, &object, response).await);
        }
        let list: Vec<Map<String, Value>> = response
            .json()
            .await
            .map_err(|e| Self::protocol(operation, &object, format!("client list is not an array of clients: {e}")))?;
        // The query is an exact match in every release we know; checking costs nothing.
        let Some(raw) = list.into_iter().find(|c| c.get("clientId").and_then(Value::as_str) == Some(client_id)) else {
            return Ok(None);
        };
        let mut view: ClientView = serde_json::from_value(Value::Object(raw.clone()))
            .map_err(|e| Self::protocol(operation, &object, format!("unreadable client representation: {e}")))?;
        if view.protocol_mappers.is_none() {
            view.protocol_mappers = Some(self.mappers(operation, &object, &view.id).await?);
        }
        Ok(Some(FoundClient { view, raw }))
    }

    async fn mappers(
        &self,
        operation: &'static str,
        object: &str,
        uuid: &str,
    ) -> Result<Vec<MapperView>, BackendError> {
        let url = self.clients_url(&[uuid, "protocol-mappers", "models"]);
        let response = self.admin_send(operation, object, || self.http.get(url.clone())).await?;
        if !response.status().is_success() {
            return Err(self.fail(operation, object, response).await);
        }
        response
            .json()
            .await
            .map_err(|e| Self::protocol(operation, object, format!("unreadable protocol mappers: {e}")))
    }

    /// Refuses clients the operator did not create, or that belong to another resource.
    fn check_ours(view: &ClientView, owner: &Owner, operation: &'static str) -> Result<(), BackendError> {
        if owner.is_managed_by(view.attribute(OWNER_KEY)) && view.attribute(OWNER_RESOURCE_KEY) == owner.marker() {
            Ok(())
        } else {
            Err(BackendError::Foreign { system: SYSTEM, operation, object: format!("client {}", view.client_id) })
        }
    }

    /// Creates the client; `Ok(false)` when it appeared meanwhile (409).
    async fn create(&self, client: &ClientDefinition) -> Result<bool, BackendError> {
        const OPERATION: &str = "create";
        let object = format!("client {}", client.client_id);
        let attributes: Map<String, Value> = desired_attributes(client)
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_owned(), Value::from(v)))
            .collect();
        let no_config = BTreeMap::new();
        let mappers: Vec<Value> = desired_mappers(client).iter().map(|m| m.representation(None, &no_config)).collect();
        let body = json!({
            "clientId": client.client_id,
            "description": client.description,
            "enabled": client.enabled,
            "protocol": "openid-connect",
            "publicClient": false,
            "serviceAccountsEnabled": true,
            "standardFlowEnabled": false,
            "implicitFlowEnabled": false,
            "directAccessGrantsEnabled": false,
            "clientAuthenticatorType": "client-secret",
            "attributes": attributes,
            "protocolMappers": mappers,
        });
        let url = self.clients_url(&[]);
        let response = self.admin_send(OPERATION, &object, || self.http.post(url.clone()).json(&body)).await?;
        match response.status() {
            StatusCode::CREATED => {
                let uuid = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| l.rsplit('/').next())
                    .unwrap_or("?")
                    .to_owned();
                tracing::info!(client_id = %client.client_id, %uuid, "created Keycloak client");
                Ok(true)
            }
            StatusCode::CONFLICT => Ok(false),
            _ => Err(self.fail(OPERATION, &object, response).await),
        }
    }

    /// Brings an existing client of ours to `client`; whether anything was written.
    async fn update(&self, found: FoundClient, client: &ClientDefinition) -> Result<bool, BackendError> {
        let object = format!("client {}", client.client_id);
        let uuid = found.view.id.clone();
        let mut wrote = false;
        if !client_fields_match(&found.view, client) {
            const OPERATION: &str = "update";
            let mut body = found.raw;
            // PUT leaves absent fields alone; the secret and the mappers are not ours to resend.
            body.remove("secret");
            body.remove("protocolMappers");
            body.remove("access");
            for (key, value) in [
                ("enabled", Value::from(client.enabled)),
                ("description", Value::from(client.description.clone())),
                ("publicClient", Value::from(false)),
                ("serviceAccountsEnabled", Value::from(true)),
                ("standardFlowEnabled", Value::from(false)),
                ("directAccessGrantsEnabled", Value::from(false)),
                ("clientAuthenticatorType", Value::from("client-secret")),
            ] {
                body.insert(key.to_owned(), value);
            }
            let mut attributes = match body.remove("attributes") {
                Some(Value::Object(a)) => a,
                _ => Map::new(),
            };
            for (k, v) in desired_attributes(client) {
                attributes.insert(k.to_owned(), Value::from(v));
            }
            body.insert("attributes".into(), Value::Object(attributes));
            let url = self.clients_url(&[&uuid]);
            let response = self.admin_send(OPERATION, &object, || self.http.put(url.clone()).json(&body)).await?;
            if !response.status().is_success() {
                return Err(self.fail(OPERATION, &object, response).await);
            }
            wrote = true;
        }
        let existing = found.view.protocol_mappers.unwrap_or_default();
        let desired = desired_mappers(client);
        for want in &desired {
            let have = existing.iter().find(|m| m.name == want.name);
            wrote |= self.converge_mapper(&uuid, &object, have, want).await?;
        }
        for stale in existing.iter().filter(|m| m.name.starts_with(MAPPER_PREFIX)) {
            if !desired.iter().any(|d| d.name == stale.name) {
                self.delete_mapper(&uuid, &object, stale).await?;
                wrote = true;
            }
        }
        Ok(wrote)
    }

    /// Brings one mapper to `want`; whether anything was written.
    async fn converge_mapper(
        &self,
        uuid: &str,
        object: &str,
        have: Option<&MapperView>,
        want: &DesiredMapper,
    ) -> Result<bool, BackendError> {
        match have {
            Some(have) if want.matches(have) => Ok(false),
            Some(have) if have.protocol_mapper == want.protocol_mapper => {
                self.put_mapper(uuid, object, have, want).await?;
                Ok(true)
            }
            Some(have) => {
                // A mapper's type is its identity in Keycloak; change it by replacing the mapper.
                self.delete_mapper(uuid, object, have).await?;
                if self.post_mapper(uuid, object, want).await? {
                    Ok(true)
                } else {
                    Err(Self::protocol("create protocol mapper", object, format!("{} reappeared meanwhile", want.name)))
                }
            }
            None => {
                if self.post_mapper(uuid, object, want).await? {
                    return Ok(true);
                }
                // Someone created a mapper of that name meanwhile: read it and converge once.
                let mappers = self.mappers("read", object, uuid).await?;
                match mappers.iter().find(|m| m.name == want.name) {
                    Some(have) if want.matches(have) => Ok(false),
                    Some(have) if have.protocol_mapper == want.protocol_mapper => {
                        self.put_mapper(uuid, object, have, want).await?;
                        Ok(true)
                    }
                    _ => Err(Self::protocol(
                        "create protocol mapper",
                        object,
                        format!("{} conflicts with a mapper of the same name that cannot be converged", want.name),
                    )),
                }
            }
        }
    }

    /// Creates a mapper; `Ok(false)` on a 409 (a mapper of that name exists).
    async fn post_mapper(&self, uuid: &str, object: &str, want: &DesiredMapper) -> Result<bool, BackendError> {
        const OPERATION: &str = "create protocol mapper";
        let body = want.representation(None, &BTreeMap::new());
        let url = self.clients_url(&[uuid, "protocol-mappers", "models"]);
        let response = self.admin_send(OPERATION, object, || self.http.post(url.clone()).json(&body)).await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::CONFLICT => Ok(false),
            _ => Err(self.fail(OPERATION, object, response).await),
        }
    }

    async fn put_mapper(
        &self,
        uuid: &str,
        object: &str,
        have: &MapperView,
        want: &DesiredMapper,
    ) -> Result<(), BackendError> {
        const OPERATION: &str = "update protocol mapper";
        let body = want.representation(Some(&have.id), &have.config);
        let url = self.clients_url(&[uuid, "protocol-mappers", "models", &have.id]);
        let response = self.admin_send(OPERATION, object, || self.http.put(url.clone()).json(&body)).await?;
        if response.status().is_success() { Ok(()) } else { Err(self.fail(OPERATION, object, response).await) }
    }

    async fn delete_mapper(&self, uuid: &str, object: &str, have: &MapperView) -> Result<(), BackendError> {
        const OPERATION: &str = "delete protocol mapper";
        let url = self.clients_url(&[uuid, "protocol-mappers", "models", &have.id]);
        let response = self.admin_send(OPERATION, object, || self.http.delete(url.clone())).await?;
        if response.status().is_success() || response.status() == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(self.fail(OPERATION, object, response).await)
        }
    }
}

#[async_trait]
impl IdentityProvider for KeycloakClient {
    async fn ensure_client(&self, client: &ClientDefinition) -> Result<Outcome, BackendError> {
        let found = match self.find("read", &client.client_id).await? {
            Some(found) => found,
            None => {
                if self.create(client).await? {
                    return Ok(Outcome::Created);
                }
                // 409: it was created meanwhile (another replica, a retry); compare like any other.
                self.find("read", &client.client_id).await?.ok_or_else(|| {
                    Self::protocol(
                        "create",
                        &format!("client {}", client.client_id),
                        "409 on create, but the client cannot be found".into(),
                    )
                })?
            }
        };
        Self::check_ours(&found.view, &client.owner, "update")?;
        if self.update(found, client).await? {
            tracing::info!(client_id = %client.client_id, "updated Keycloak client");
            Ok(Outcome::Updated)
        } else {
            Ok(Outcome::Unchanged)
        }
    }

    async fn client_secret(&self, client_id: &str, owner: &Owner) -> Result<SecretString, BackendError> {
        const OPERATION: &str = "read secret of";
        let object = format!("client {client_id}");
        let Some(found) = self.find(OPERATION, client_id).await? else {
            return Err(BackendError::Rejected {
                system: SYSTEM,
                operation: OPERATION,
                object,
                status: 404,
                message: "no such client".into(),
            });
        };
        Self::check_ours(&found.view, owner, OPERATION)?;
        let url = self.clients_url(&[&found.view.id, "client-secret"]);
        let response = self.admin_send(OPERATION, &object, || self.http.get(url.clone())).await?;
        if !response.status().is_success() {
            return Err(self.fail(OPERATION, &object, response).await);
        }
        #[derive(Deserialize)]
        struct Credential {
            value: Option<SecretString>,
        }
        let credential: Credential = response
            .json()
            .await
            .map_err(|e| Self::protocol(OPERATION, &object, format!("unreadable credential: {e}")))?;
        credential.value.ok_or_else(|| Self::protocol(OPERATION, &object, "the client has no secret".into()))
    }

    async fn delete_client(&self, client_id: &str, owner: &Owner) -> Result<Outcome, BackendError> {
        const OPERATION: &str = "delete";
        let object = format!("client {client_id}");
        let Some(found) = self.find(OPERATION, client_id).await? else { return Ok(Outcome::Absent) };
        Self::check_ours(&found.view, owner, OPERATION)?;
        let url = self.clients_url(&[&found.view.id]);
        let response = self.admin_send(OPERATION, &object, || self.http.delete(url.clone())).await?;
        match response.status() {
            s if s.is_success() => {
                tracing::info!(%client_id, "deleted Keycloak client");
                Ok(Outcome::Deleted)
            }
            StatusCode::NOT_FOUND => Ok(Outcome::Absent),
            _ => Err(self.fail(OPERATION, &object, response).await),
        }
    }

    async fn issue_token(&self, client_id: &str, client_secret: &SecretString) -> Result<TokenSet, BackendError> {
        const OPERATION: &str = "issue token for";
        let object = format!("client {client_id}");
        let request = self.http.post(self.token_endpoint()).form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", client_secret.expose_secret()),
        ]);
        let response = http::send(SYSTEM, OPERATION, &object, self.settings.http.timeout, request).await?;
        let status = response.status();
        if !status.is_success() {
            let message = keycloak_error(response).await;
            // See the module doc: a consumer client's failure is not the profile's credential.
            if status.is_client_error() {
                return Err(BackendError::Rejected {
                    system: SYSTEM,
                    operation: OPERATION,
                    object,
                    status: status.as_u16(),
                    message,
                });
            }
            return Err(http::status_error(SYSTEM, OPERATION, &object, status, message));
        }
        let tokens: TokenResponse = response
            .json()
            .await
            .map_err(|e| Self::protocol(OPERATION, &object, format!("unreadable token response: {e}")))?;
        // Keycloak sends `refresh_expires_in: 0` when it issues no refresh token.
        let refresh_expires_in = tokens.refresh_token.as_ref().and(tokens.refresh_expires_in);
        Ok(TokenSet {
            access_token: tokens.access_token,
            expires_in: tokens.expires_in,
            refresh_token: tokens.refresh_token,
            refresh_expires_in,
        })
    }

    fn token_url(&self) -> String {
        self.settings.public_token_url.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition() -> ClientDefinition {
        ClientDefinition {
            client_id: "t-1".into(),
            description: "transfer".into(),
            enabled: true,
            access_token_lifespan_seconds: Some(300),
            refresh_tokens_for_client_credentials: true,
            audience: Some("broker".into()),
            claims: vec![
                HardcodedClaim { name: "scope".into(), value: Value::from("read:a/b") },
                HardcodedClaim { name: "acl".into(), value: json!({"sub": ["a/#"]}) },
            ],
            owner: Owner {
                installation: "test".into(),
                kind: "MqttTransfer".into(),
                namespace: "ns".into(),
                name: "t".into(),
            },
        }
    }

    #[test]
    fn strings_are_string_claims_and_everything_else_is_json() {
        let mappers = desired_mappers(&definition());
        assert_eq!(mappers.len(), 3);
        assert_eq!(mappers[0].protocol_mapper, "oidc-audience-mapper");
        assert_eq!(mappers[1].config["jsonType.label"], "String");
        assert_eq!(mappers[1].config["claim.value"], "read:a/b");
        assert_eq!(mappers[2].config["jsonType.label"], "JSON");
        assert_eq!(serde_json::from_str::<Value>(&mappers[2].config["claim.value"]).unwrap(), json!({"sub": ["a/#"]}));
        assert!(mappers.iter().all(|m| m.name.starts_with(MAPPER_PREFIX)));
    }

    #[test]
    fn json_claims_compare_by_meaning_not_by_spacing() {
        let want = DesiredMapper::hardcoded(&HardcodedClaim { name: "acl".into(), value: json!({"a": [1, 2]}) });
        let mut have = MapperView {
            id: "x".into(),
            name: want.name.clone(),
            protocol_mapper: "oidc-hardcoded-claim-mapper".into(),
            config: want.config.iter().map(|(k, v)| ((*k).to_owned(), Some(v.clone()))).collect(),
        };
        have.config.insert("claim.value".into(), Some("{ \"a\" : [1,2] }".into()));
        have.config.insert("userinfo.token.claim".into(), Some("true".into()));
        assert!(want.matches(&have), "whitespace and keys we do not own are no difference");
        have.config.insert("claim.value".into(), Some("{\"a\": [2, 1]}".into()));
        assert!(!want.matches(&have));
    }

    #[test]
    fn no_lifespan_is_stored_as_empty_which_equals_absent() {
        let mut client = definition();
        client.access_token_lifespan_seconds = None;
        let view: ClientView = serde_json::from_value(json!({
            "id": "u", "clientId": "t-1", "description": "transfer", "enabled": true, "publicClient": false,
            "serviceAccountsEnabled": true, "standardFlowEnabled": false, "directAccessGrantsEnabled": false,
            "clientAuthenticatorType": "client-secret",
            "attributes": {
                OWNER_KEY: "mqtt-dsp-operator/test", OWNER_RESOURCE_KEY: "MqttTransfer/ns/t",
                "client_credentials.use_refresh_token": "true"
            }
        }))
        .unwrap();
        assert!(client_fields_match(&view, &client));
        client.access_token_lifespan_seconds = Some(60);
        assert!(!client_fields_match(&view, &client));
    }

    #[test]
    fn debug_shows_no_secret() {
        let settings = KeycloakSettings {
            base_url: Url::parse("https://kc.example").unwrap(),
            realm: "r".into(),
            client_id: "op".into(),
            client_secret: SecretString::from("s3cr3t-value".to_owned()),
            public_token_url: Url::parse("https://kc.example/realms/r/protocol/openid-connect/token").unwrap(),
            http: HttpSettings::default(),
        };
        assert!(!format!("{settings:?}").contains("s3cr3t-value"));
        crate::install_crypto_provider();
        let client = KeycloakClient::new(settings).unwrap();
        assert!(!format!("{client:?}").contains("s3cr3t-value"));
    }
}
