//! [`SecretStore`] on HashiCorp Vault KV version 2 (OpenBao speaks the same API), written the way
//! the connector's Vault extension reads it (domain.md §5): `{"data": {"content": "<value>"}}` at
//! `/v1/<mount>/data/<folder>/<alias>`.
//!
//! Ownership lives in the key's `custom_metadata` ([`OWNER_KEY`] and [`OWNER_RESOURCE_KEY`]). The
//! marker is written *before* the first version: Vault lets a key's metadata exist without any
//! version, so a crash between the two calls leaves a marked, empty key that the next ensure
//! recognises as ours and fills. The other order would leave an unmarked value that every later
//! reconcile would have to treat as foreign, forever.
//!
//! Every data write carries check-and-set (`options.cas`) with the version the decision was
//! based on, so a value that changed between our read and our write (another writer, a second
//! operator replica) is never silently overwritten: the write fails, the client reads again and
//! decides again, once. This also makes the client work on mounts with `cas_required`.
//!
//! Authentication: a static token, or Vault's Kubernetes auth method. A Kubernetes-auth token is
//! cached and renewed with `auth/token/renew-self` at two thirds of its lease while Vault says it
//! is renewable; once it is not (or a renewal is capped by the role's max TTL, or fails) the
//! client logs in again at that point. Renewal rather than a login per lease keeps one token (one
//! accessor in Vault's audit log) instead of a new one per period, and still needs no JWT;
//! logging in again is the fallback because only a login can go past the max TTL. A 403 on a
//! cached token (revoked, or Vault restored from a backup) triggers one fresh login and one retry;
//! a 403 on a token Vault has just issued is a missing policy and triggers nothing more.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::header::HeaderValue;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;
use url::Url;

use super::{SecretLocation, SecretStore};
use crate::backends::http::{self, HttpSettings};
use crate::backends::{
    BackendError, ExposeSecret, OWNER_KEY, OWNER_RESOURCE_KEY, Outcome, Owner, SecretString, System,
};
use crate::config::SecretStoreProfile;
use crate::credentials::{self, CredentialError};

const SYSTEM: System = System::SecretStore;
/// The only key of the secret's data the connector reads (domain.md §5).
const CONTENT_KEY: &str = "content";
const TOKEN_HEADER: &str = "X-Vault-Token";
/// Fraction of a lease after which the token is renewed (or replaced).
const RENEW_AT: f64 = 2.0 / 3.0;
/// How often ensure re-reads after a check-and-set conflict before giving up for this call.
const CAS_ATTEMPTS: usize = 2;

/// How to reach one Vault and which KV v2 mount to use.
#[derive(Clone, Debug)]
pub struct VaultSettings {
    /// Vault address, e.g. `https://vault:8200` (the client appends `/v1/...`).
    pub url: Url,
    /// Mount of the KV v2 engine, e.g. `secret` (EDC's default `/v1/secret`). May be nested.
    pub kv_mount: String,
    /// How the operator authenticates.
    pub auth: VaultAuthSettings,
    /// Timeout and CA bundle.
    pub http: HttpSettings,
}

/// How the operator authenticates to Vault. Debug output never shows the token.
#[derive(Clone, Debug)]
pub enum VaultAuthSettings {
    /// A Vault token, sent as `X-Vault-Token`. The client neither renews nor replaces it.
    Token(SecretString),
    /// Vault's Kubernetes auth method: the service account token is read from a file at every
    /// login (projected tokens rotate), exchanged for a Vault token that is cached and renewed.
    Kubernetes {
        /// Vault role to log in as.
        role: String,
        /// Mount of the auth method, e.g. `kubernetes`.
        mount: String,
        /// The service account token file.
        service_account_token_path: PathBuf,
    },
}

impl VaultSettings {
    /// Settings from a secret-store profile: resolves the token and the CA bundle the profile
    /// refers to. `client` and `namespace` are needed only for `secretRef` credentials.
    pub async fn from_profile(
        profile: &SecretStoreProfile,
        client: Option<&kube::Client>,
        namespace: &str,
    ) -> Result<Self, BackendError> {
        let auth = match (&profile.auth.token, &profile.auth.kubernetes) {
            (Some(token), None) => VaultAuthSettings::Token(credentials::resolve(token, client, namespace).await?),
            (None, Some(k8s)) => VaultAuthSettings::Kubernetes {
                role: k8s.role.clone(),
                mount: k8s.mount.clone(),
                service_account_token_path: k8s.service_account_token_path.clone(),
            },
            _ => return Err(CredentialError::Ambiguous.into()),
        };
        let ca_bundle_pem = match &profile.ca_bundle {
            Some(reference) => {
                Some(credentials::resolve(reference, client, namespace).await?.expose_secret().to_owned())
            }
            None => None,
        };
        Ok(Self {
            url: profile.url.clone(),
            kv_mount: profile.kv_mount.clone(),
            auth,
            http: HttpSettings { timeout: Duration::from_secs(profile.timeout_seconds), ca_bundle_pem },
        })
    }
}

/// A Vault KV v2 client; see the module documentation for how it writes and authenticates.
/// Cheap to share (`Arc`); concurrent calls share one cached token and one login at a time.
pub struct VaultClient {
    http: reqwest::Client,
    base: Url,
    mount: String,
    timeout: Duration,
    auth: Auth,
}

enum Auth {
    Token(SecretString),
    Kubernetes { role: String, mount: String, jwt_path: PathBuf, cache: Mutex<TokenCache> },
}

#[derive(Default)]
struct TokenCache {
    current: Option<LeasedToken>,
    /// Counts logins and renewals, so a 403 on an old token does not throw away a newer one.
    generation: u64,
}

struct LeasedToken {
    token: SecretString,
    generation: u64,
    renewable: bool,
    ttl: Duration,
    /// Vault refused a call right after issuing or renewing this token: a policy problem that
    /// another login would not fix.
    refused_when_new: bool,
    /// None: the token does not expire (lease_duration 0).
    renew_at: Option<Instant>,
    expires_at: Option<Instant>,
}

impl LeasedToken {
    fn usable(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
    fn fresh(&self, now: Instant) -> bool {
        self.renew_at.is_none_or(|at| now < at)
    }
    fn cached_use(&self) -> TokenUse {
        TokenUse {
            token: self.token.clone(),
            generation: self.generation,
            new: false,
            retry_on_refusal: !self.refused_when_new,
        }
    }
}

/// A token handed to one call.
struct TokenUse {
    token: SecretString,
    /// Which login or renewal it came from (0: a static token).
    generation: u64,
    /// Issued or renewed for this call.
    new: bool,
    /// Whether a 403 should cost a fresh login and one retry.
    retry_on_refusal: bool,
}

impl fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.auth {
            Auth::Token(_) => "token".to_owned(),
            Auth::Kubernetes { role, mount, .. } => format!("kubernetes (role {role} at auth/{mount})"),
        };
        f.debug_struct("VaultClient")
            .field("url", &self.base.as_str())
            .field("mount", &self.mount)
            .field("auth", &auth)
            .finish()
    }
}

/// What the data endpoint holds for a key.
enum Current {
    /// A live version: its data and the key's custom_metadata.
    Live { data: Map<String, Value>, custom_metadata: BTreeMap<String, String>, version: u64 },
    /// No live version (never written, deleted or destroyed).
    NoValue,
}

#[derive(Deserialize)]
struct DataEnvelope {
    data: DataBody,
}

#[derive(Deserialize)]
struct DataBody {
    data: Option<Map<String, Value>>,
    metadata: Option<VersionMetadata>,
}

#[derive(Deserialize)]
struct VersionMetadata {
    #[serde(default)]
    custom_metadata: Option<BTreeMap<String, String>>,
    version: u64,
}

#[derive(Deserialize)]
struct MetadataEnvelope {
    data: KeyMetadata,
}

#[derive(Deserialize)]
struct KeyMetadata {
    #[serde(default)]
    custom_metadata: Option<BTreeMap<String, String>>,
    current_version: u64,
}

#[derive(Deserialize)]
struct LoginEnvelope {
    auth: LoginAuth,
}

#[derive(Deserialize)]
struct LoginAuth {
    client_token: SecretString,
    lease_duration: u64,
    renewable: bool,
}

#[derive(Deserialize)]
struct ErrorBody {
    errors: Vec<String>,
}

/// A failed write: check-and-set conflicts are retried, everything else is returned.
enum WriteError {
    CasConflict(String),
    Other(BackendError),
}

impl From<BackendError> for WriteError {
    fn from(e: BackendError) -> Self {
        WriteError::Other(e)
    }
}

impl VaultClient {
    /// A client for `settings`. Makes no request: a wrong token or role shows on the first call.
    pub fn new(settings: VaultSettings) -> Result<Self, BackendError> {
        let http = http::client(SYSTEM, &settings.http)?;
        if settings.url.cannot_be_a_base() {
            return Err(BackendError::Protocol {
                system: SYSTEM,
                operation: "configure",
                object: "Vault address".into(),
                detail: format!("{} is not an http(s) base URL", settings.url),
            });
        }
        let auth = match settings.auth {
            VaultAuthSettings::Token(token) => Auth::Token(token),
            VaultAuthSettings::Kubernetes { role, mount, service_account_token_path } => Auth::Kubernetes {
                role,
                mount,
                jwt_path: service_account_token_path,
                cache: Mutex::new(TokenCache::default()),
            },
        };
        Ok(Self {
            http,
            base: settings.url,
            mount: settings.kv_mount.trim_matches('/').to_owned(),
            timeout: settings.http.timeout,
            auth,
        })
    }

    /// The key's path below the mount: `<folder>/<alias>`.
    fn key(at: &SecretLocation) -> String {
        match &at.folder {
            Some(folder) if !folder.trim_matches('/').is_empty() => {
                format!("{}/{}", folder.trim_matches('/'), at.alias.trim_matches('/'))
            }
            _ => at.alias.trim_matches('/').to_owned(),
        }
    }

    /// How objects are named in errors: the status path.
    fn object(&self, at: &SecretLocation) -> String {
        format!("secret {}", self.path(at))
    }

    /// `<base>/v1/<mount>/<section>/<key>`, each segment percent-encoded. Segments come from
    /// the resource, so `.`/`..`/empty ones are refused rather than letting them move the path.
    fn url(&self, section: &str, at: &SecretLocation, object: &str) -> Result<Url, BackendError> {
        let key = Self::key(at);
        let bad = |detail: String| BackendError::Rejected {
            system: SYSTEM,
            operation: "address",
            object: object.to_owned(),
            status: 0,
            message: detail,
        };
        if key.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
            return Err(bad(format!("alias and folder must not contain empty, '.' or '..' segments: {key:?}")));
        }
        let mut url = self.base.clone();
        {
            let mut segments =
                url.path_segments_mut().map_err(|()| bad("the Vault address is not a base URL".into()))?;
            segments.pop_if_empty().push("v1");
            segments.extend(self.mount.split('/').filter(|s| !s.is_empty()));
            segments.push(section);
            segments.extend(key.split('/'));
        }
        Ok(url)
    }

    fn auth_url(&self, path: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push("v1").push("auth");
            for part in path {
                segments.extend(part.split('/').filter(|s| !s.is_empty()));
            }
        }
        url
    }

    /// Sends a request built by `build` with the current token. A 403 on a cached Kubernetes
    /// token means it was revoked or expired early: log in once more and send once more. A 403
    /// on a token Vault has just issued or renewed is a policy refusal instead; the token is
    /// remembered as such so that a missing policy does not cost a login per call.
    async fn send(
        &self,
        operation: &'static str,
        object: &str,
        build: impl Fn(HeaderValue) -> RequestBuilder,
    ) -> Result<Response, BackendError> {
        let first = self.token().await?;
        let response = http::send(SYSTEM, operation, object, self.timeout, build(header(&first.token)?)).await?;
        if response.status() != StatusCode::FORBIDDEN {
            return Ok(response);
        }
        if !first.retry_on_refusal {
            if first.new {
                self.note_refusal(first.generation).await;
            }
            return Ok(response);
        }
        tracing::info!(system = SYSTEM.as_str(), operation, object, "Vault refused the cached token; logging in again");
        self.forget_token(first.generation).await;
        let second = self.token().await?;
        let response = http::send(SYSTEM, operation, object, self.timeout, build(header(&second.token)?)).await?;
        if response.status() == StatusCode::FORBIDDEN && second.new {
            self.note_refusal(second.generation).await;
        }
        Ok(response)
    }

    /// The token to send.
    async fn token(&self) -> Result<TokenUse, BackendError> {
        let (role, mount, jwt_path, cache) = match &self.auth {
            Auth::Token(token) => {
                return Ok(TokenUse { token: token.clone(), generation: 0, new: false, retry_on_refusal: false });
            }
            Auth::Kubernetes { role, mount, jwt_path, cache } => (role, mount, jwt_path, cache),
        };
        // Held across the login so that concurrent reconciles wait for one login instead of
        // each starting their own.
        let mut cache = cache.lock().await;
        let now = Instant::now();
        if let Some(current) = cache.current.as_ref().filter(|t| t.fresh(now)) {
            return Ok(current.cached_use());
        }
        let mut replacement = None;
        if let Some(current) = cache.current.as_ref().filter(|t| t.renewable && t.usable(now)) {
            match self.renew(&current.token).await {
                // A renewal at the very end of the max TTL grants nothing; only a login helps.
                Ok(lease) if lease.lease.is_zero() => {}
                Ok(mut lease) => {
                    // Vault caps a renewal at the role's max TTL, and will cap the next one
                    // again: when this lease runs low, log in instead of renewing.
                    lease.renewable &= lease.lease >= current.ttl;
                    lease.ttl = current.ttl;
                    replacement = Some(lease);
                }
                Err(e) => {
                    tracing::warn!(system = SYSTEM.as_str(), error = %e, "renewing the Vault token failed; logging in again");
                }
            }
        }
        let lease = match replacement {
            Some(lease) => lease,
            None => match self.login(role, mount, jwt_path).await {
                Ok(lease) => lease,
                // Vault or the token file is unavailable for a moment: a token that has not
                // expired yet still works, so use it and try again on the next call.
                Err(e) => match cache.current.as_ref().filter(|t| t.usable(now)) {
                    Some(current) => {
                        tracing::warn!(system = SYSTEM.as_str(), error = %e, "replacing the Vault token failed; using it until it expires");
                        return Ok(current.cached_use());
                    }
                    None => return Err(e),
                },
            },
        };
        cache.generation += 1;
        let token = lease.into_token(cache.generation, Instant::now());
        let answer =
            TokenUse { token: token.token.clone(), generation: token.generation, new: true, retry_on_refusal: false };
        cache.current = Some(token);
        Ok(answer)
    }

    async fn note_refusal(&self, generation: u64) {
        if let Auth::Kubernetes { cache, .. } = &self.auth
            && let Some(current) = cache.lock().await.current.as_mut().filter(|t| t.generation == generation)
        {
            current.refused_when_new = true;
        }
    }

    async fn forget_token(&self, generation: u64) {
        if let Auth::Kubernetes { cache, .. } = &self.auth {
            let mut cache = cache.lock().await;
            if cache.current.as_ref().is_some_and(|t| t.generation == generation) {
                cache.current = None;
            }
        }
    }

    async fn login(&self, role: &str, mount: &str, jwt_path: &std::path::Path) -> Result<Lease, BackendError> {
        const OPERATION: &str = "log in to";
        let object = format!("auth/{}/login as role {role}", mount.trim_matches('/'));
        let jwt = tokio::fs::read_to_string(jwt_path)
            .await
            .map_err(|source| CredentialError::File { path: jwt_path.display().to_string(), source })?;
        let jwt = SecretString::from(jwt.trim().to_owned());
        let body = json!({ "role": role, "jwt": jwt.expose_secret() });
        let request = self.http.post(self.auth_url(&[mount, "login"])).json(&body);
        let response = http::send(SYSTEM, OPERATION, &object, self.timeout, request).await?;
        if !response.status().is_success() {
            return Err(error_from(OPERATION, &object, response).await);
        }
        let envelope: LoginEnvelope = parse(OPERATION, &object, response).await?;
        tracing::info!(
            system = SYSTEM.as_str(),
            lease_seconds = envelope.auth.lease_duration,
            renewable = envelope.auth.renewable,
            "logged in to Vault"
        );
        Ok(Lease::from(envelope.auth))
    }

    async fn renew(&self, token: &SecretString) -> Result<Lease, BackendError> {
        const OPERATION: &str = "renew";
        let object = "the operator's Vault token";
        let request = self
            .http
            .post(self.auth_url(&["token", "renew-self"]))
            .header(TOKEN_HEADER, header(token)?)
            .json(&json!({}));
        let response = http::send(SYSTEM, OPERATION, object, self.timeout, request).await?;
        if !response.status().is_success() {
            return Err(error_from(OPERATION, object, response).await);
        }
        let envelope: LoginEnvelope = parse(OPERATION, object, response).await?;
        Ok(Lease::from(envelope.auth))
    }

    /// The data endpoint's view of a key.
    async fn read_current(&self, at: &SecretLocation) -> Result<Current, BackendError> {
        const OPERATION: &str = "read";
        let object = self.object(at);
        let url = self.url("data", at, &object)?;
        let response =
            self.send(OPERATION, &object, |token| self.http.get(url.clone()).header(TOKEN_HEADER, token)).await?;
        // A 404 also answers a deleted or destroyed latest version (with a body): no value.
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(Current::NoValue);
        }
        if !response.status().is_success() {
            return Err(error_from(OPERATION, &object, response).await);
        }
        let envelope: DataEnvelope = parse(OPERATION, &object, response).await?;
        match (envelope.data.data, envelope.data.metadata) {
            (Some(data), Some(metadata)) => Ok(Current::Live {
                data,
                custom_metadata: metadata.custom_metadata.unwrap_or_default(),
                version: metadata.version,
            }),
            (None, _) => Ok(Current::NoValue),
            (Some(_), None) => Err(protocol(OPERATION, &object, "a value without metadata")),
        }
    }

    /// The key's metadata; None when the key does not exist at all.
    async fn read_metadata(&self, at: &SecretLocation) -> Result<Option<KeyMetadata>, BackendError> {
        const OPERATION: &str = "read metadata of";
        let object = self.object(at);
        let url = self.url("metadata", at, &object)?;
        let response =
            self.send(OPERATION, &object, |token| self.http.get(url.clone()).header(TOKEN_HEADER, token)).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(error_from(OPERATION, &object, response).await);
        }
        let envelope: MetadataEnvelope = parse(OPERATION, &object, response).await?;
        Ok(Some(envelope.data))
    }

    /// Marks the key as ours; creates its metadata when the key does not exist yet.
    async fn mark(&self, at: &SecretLocation, owner: &Owner) -> Result<(), BackendError> {
        const OPERATION: &str = "mark";
        let object = self.object(at);
        let url = self.url("metadata", at, &object)?;
        let body = json!({ "custom_metadata": { OWNER_KEY: owner.managed_by(), OWNER_RESOURCE_KEY: owner.marker() } });
        let response = self
            .send(OPERATION, &object, |token| self.http.post(url.clone()).header(TOKEN_HEADER, token).json(&body))
            .await?;
        if !response.status().is_success() {
            return Err(error_from(OPERATION, &object, response).await);
        }
        Ok(())
    }

    /// Writes a new version `{"content": value}`, only if the current version is still `cas`.
    async fn write(&self, at: &SecretLocation, value: &SecretString, cas: u64) -> Result<(), WriteError> {
        const OPERATION: &str = "write";
        let object = self.object(at);
        let url = self.url("data", at, &object)?;
        let body = json!({ "options": { "cas": cas }, "data": { CONTENT_KEY: value.expose_secret() } });
        let response = self
            .send(OPERATION, &object, |token| self.http.post(url.clone()).header(TOKEN_HEADER, token).json(&body))
            .await?;
        if response.status().is_success() {
            return Ok(());
        }
        let status = response.status();
        let messages = error_messages(response).await;
        if status == StatusCode::BAD_REQUEST && messages.contains("check-and-set parameter did not match") {
            return Err(WriteError::CasConflict(messages));
        }
        Err(WriteError::Other(map_status(OPERATION, &object, status, messages)))
    }

    fn foreign(&self, operation: &'static str, at: &SecretLocation) -> BackendError {
        BackendError::Foreign { system: SYSTEM, operation, object: self.object(at) }
    }
}

#[async_trait]
impl SecretStore for VaultClient {
    async fn ensure_secret(
        &self,
        at: &SecretLocation,
        value: &SecretString,
        owner: &Owner,
    ) -> Result<Outcome, BackendError> {
        let mut conflict = String::new();
        let mut marked_fresh = false;
        for _ in 0..CAS_ATTEMPTS {
            let (cas, outcome) = match self.read_current(at).await? {
                Current::Live { data, custom_metadata, version } => {
                    if !is_ours(&custom_metadata, owner) {
                        return Err(self.foreign("overwrite", at));
                    }
                    let remarked = custom_metadata.get(OWNER_KEY) != Some(&owner.managed_by());
                    if remarked {
                        // Adopted from the marker without an installation: rewritten into this
                        // installation's.
                        self.mark(at, owner).await?;
                    }
                    if data.len() == 1 && data.get(CONTENT_KEY).and_then(Value::as_str) == Some(value.expose_secret()) {
                        return Ok(if remarked { Outcome::Updated } else { Outcome::Unchanged });
                    }
                    (version, Outcome::Updated)
                }
                // No live value, but the key may still exist: a foreign key whose latest
                // version was deleted, or our marker left by a crash before the first write.
                Current::NoValue => match self.read_metadata(at).await? {
                    None => {
                        self.mark(at, owner).await?;
                        marked_fresh = true;
                        (0, Outcome::Created)
                    }
                    Some(metadata) if is_ours(metadata.custom_metadata.as_ref().unwrap_or(&BTreeMap::new()), owner) => {
                        (metadata.current_version, Outcome::Created)
                    }
                    Some(_) => return Err(self.foreign("overwrite", at)),
                },
            };
            match self.write(at, value, cas).await {
                Ok(()) => return Ok(outcome),
                // The key was absent and someone else wrote it between our marker and our first
                // version: our marker may now sit on their key, so trusting it would overwrite
                // a foreign value.
                Err(WriteError::CasConflict(_)) if marked_fresh => return Err(self.foreign("overwrite", at)),
                Err(WriteError::CasConflict(message)) => {
                    tracing::info!(system = SYSTEM.as_str(), object = %self.object(at), "secret changed while writing; reading it again");
                    conflict = message;
                }
                Err(WriteError::Other(e)) => return Err(e),
            }
        }
        // Someone keeps writing this key; a later reconcile decides again.
        Err(BackendError::Unavailable {
            system: SYSTEM,
            operation: "write",
            object: self.object(at),
            status: StatusCode::BAD_REQUEST.as_u16(),
            message: format!("the secret kept changing while the operator wrote it: {conflict}"),
        })
    }

    /// Three requests instead of five: the metadata read (a key that does not exist at all has
    /// none), the owner marker, the first version with check-and-set 0. The data read of
    /// `ensure_secret` tells nothing more for a key without metadata. The metadata read is kept:
    /// the marker is a `POST` that replaces a key's custom metadata, so writing it blind could
    /// rewrite a foreign key's; and writing the value first, then the marker, would leave after
    /// a crash between the two a value without a marker, which no later reconcile may claim.
    async fn create_secret(
        &self,
        at: &SecretLocation,
        value: &SecretString,
        owner: &Owner,
    ) -> Result<Outcome, BackendError> {
        if self.read_metadata(at).await?.is_some() {
            return self.ensure_secret(at, value, owner).await;
        }
        self.mark(at, owner).await?;
        match self.write(at, value, 0).await {
            Ok(()) => Ok(Outcome::Created),
            // Written by someone else between our read and our marker: see ensure_secret.
            Err(WriteError::CasConflict(_)) => Err(self.foreign("overwrite", at)),
            Err(WriteError::Other(e)) => Err(e),
        }
    }

    async fn read_secret(&self, at: &SecretLocation, owner: &Owner) -> Result<Option<SecretString>, BackendError> {
        match self.read_current(at).await? {
            Current::NoValue => Ok(None),
            Current::Live { data, custom_metadata, .. } => {
                if !is_ours(&custom_metadata, owner) {
                    return Err(self.foreign("read", at));
                }
                match data.get(CONTENT_KEY) {
                    Some(Value::String(content)) => Ok(Some(SecretString::from(content.clone()))),
                    _ => Err(protocol("read", &self.object(at), "no string under the key \"content\"")),
                }
            }
        }
    }

    async fn delete_secret(&self, at: &SecretLocation, owner: &Owner) -> Result<Outcome, BackendError> {
        const OPERATION: &str = "delete";
        let Some(metadata) = self.read_metadata(at).await? else {
            return Ok(Outcome::Absent);
        };
        if !is_ours(metadata.custom_metadata.as_ref().unwrap_or(&BTreeMap::new()), owner) {
            return Err(self.foreign(OPERATION, at));
        }
        let object = self.object(at);
        let url = self.url("metadata", at, &object)?;
        let response =
            self.send(OPERATION, &object, |token| self.http.delete(url.clone()).header(TOKEN_HEADER, token)).await?;
        match response.status() {
            // Vault answers 204 whether or not the key existed; a 404 can only come from a proxy.
            StatusCode::NOT_FOUND => Ok(Outcome::Absent),
            s if s.is_success() => Ok(Outcome::Deleted),
            _ => Err(error_from(OPERATION, &object, response).await),
        }
    }

    fn path(&self, at: &SecretLocation) -> String {
        format!("{}/data/{}", self.mount, Self::key(at))
    }
}

/// A token as Vault granted it, before it is placed in the cache.
struct Lease {
    token: SecretString,
    lease: Duration,
    renewable: bool,
    /// The lease the login granted: what an uncapped renewal grants again.
    ttl: Duration,
}

impl From<LoginAuth> for Lease {
    fn from(auth: LoginAuth) -> Self {
        // Capped at a year: an absurd lease must not overflow the Instant arithmetic later.
        let lease = Duration::from_secs(auth.lease_duration.min(365 * 86_400));
        Lease { token: auth.client_token, lease, renewable: auth.renewable, ttl: lease }
    }
}

impl Lease {
    fn into_token(self, generation: u64, now: Instant) -> LeasedToken {
        let (renew_at, expires_at) = if self.lease.is_zero() {
            (None, None)
        } else {
            (Some(now + self.lease.mul_f64(RENEW_AT)), Some(now + self.lease))
        };
        LeasedToken {
            token: self.token,
            generation,
            renewable: self.renewable,
            ttl: self.ttl,
            refused_when_new: false,
            renew_at,
            expires_at,
        }
    }
}

fn header(token: &SecretString) -> Result<HeaderValue, BackendError> {
    let mut value = HeaderValue::from_str(token.expose_secret()).map_err(|_| BackendError::Protocol {
        system: SYSTEM,
        operation: "use",
        object: "the Vault token".into(),
        detail: "the token contains characters an HTTP header cannot carry".into(),
    })?;
    value.set_sensitive(true);
    Ok(value)
}

fn is_ours(custom_metadata: &BTreeMap<String, String>, owner: &Owner) -> bool {
    custom_metadata.get(OWNER_KEY).is_some_and(|m| owner.is_managed_by(m))
        && custom_metadata.get(OWNER_RESOURCE_KEY) == Some(&owner.marker())
}

fn protocol(operation: &'static str, object: &str, detail: &str) -> BackendError {
    BackendError::Protocol { system: SYSTEM, operation, object: object.to_owned(), detail: detail.to_owned() }
}

async fn parse<T: serde::de::DeserializeOwned>(
    operation: &'static str,
    object: &str,
    response: Response,
) -> Result<T, BackendError> {
    let bytes = response.bytes().await.map_err(|e| BackendError::Unreachable {
        system: SYSTEM,
        operation,
        object: object.to_owned(),
        source: Box::new(e),
    })?;
    // The serde error names the position and the expected shape, never the value.
    serde_json::from_slice(&bytes).map_err(|e| protocol(operation, object, &format!("not the expected JSON: {e}")))
}

/// Vault's own error text: the `errors` array joined, or the bounded body if it is not JSON.
async fn error_messages(response: Response) -> String {
    let text = http::error_text(response).await;
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) if !body.errors.is_empty() => body.errors.join("; "),
        Ok(_) => String::new(),
        Err(_) => text,
    }
}

async fn error_from(operation: &'static str, object: &str, response: Response) -> BackendError {
    let status = response.status();
    map_status(operation, object, status, error_messages(response).await)
}

/// Older Vault releases answer a missing token with 400 "missing client token", newer ones with
/// 403 (domain.md §5): both are an authentication failure.
fn map_status(operation: &'static str, object: &str, status: StatusCode, message: String) -> BackendError {
    if status == StatusCode::BAD_REQUEST && message.contains("missing client token") {
        return BackendError::Unauthorized { system: SYSTEM, operation, object: object.to_owned(), status: 400 };
    }
    http::status_error(SYSTEM, operation, object, status, message)
}
