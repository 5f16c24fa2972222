//! A HashiCorp Vault double: one KV version 2 engine, the Kubernetes auth method and the token
//! renewal endpoint, in memory.
//!
//! Follows domain.md §5 and Vault's KV v2 plugin; `e2e/tests/vault_contract.rs` runs the same
//! tests against it and a real OpenBao 2.7.2 (`e2e/src/systems/vault.rs`), whose answers it
//! matches except where OpenBao differs from Vault (OpenBao adds `current_metadata_version` and
//! `metadata_cas_required` to key metadata and has no `mount_type` in its envelope; its JSON
//! parse error says "decode" where Vault's says "parse"):
//! - `X-Vault-Token` on every call but the login. A wrong, revoked or expired token gets 403
//!   `{"errors": ["permission denied"]}`; a missing one gets the same 403 (newer releases) or,
//!   after [`VaultDouble::set_missing_token_answer`], 400 `{"errors": ["missing client token"]}`
//!   (older releases). Errors always come as `{"errors": [...]}`; a plain 404 is `{"errors": []}`.
//! - `GET /v1/<mount>/data/<key>[?version=N]` → `{"data": {"data": {...}, "metadata": {version,
//!   created_time, deletion_time, destroyed, custom_metadata}}}`; version 0, a negative one or
//!   none is the latest, a non-number is 400; 404 when the key or version does not exist, 404
//!   *with* that body (`data: null`) when the version is deleted or destroyed.
//! - `POST|PUT /v1/<mount>/data/<key>` with `{"data": {...}, "options": {"cas": N}}` → 200 with the
//!   new version's metadata. Missing `data` → 400 "no data provided" (`"data": null` is stored as
//!   a version without data); a `cas` that is not the current version (0: the key has no
//!   version; negative: never) → 400 "check-and-set parameter did not match the current
//!   version"; `cas: null` is no cas. `DELETE` soft-deletes the latest version → 204.
//! - `GET /v1/<mount>/metadata/<key>` → key metadata with `versions`, `current_version`,
//!   `oldest_version` (0: nothing pruned), `custom_metadata` (null until set); 404 when absent.
//!   `POST|PUT` creates the key's metadata even without any version, replaces `custom_metadata`
//!   when given (values weakly typed: numbers as written, booleans "1"/"0"; `{}` or null clears
//!   it; validated: at most 64 keys, keys ≤ 128 and values ≤ 512 bytes, non-empty, every
//!   violation listed in Go's multierror text) and answers 204. `DELETE` removes the key with all
//!   versions and answers 204 even when there was nothing to delete.
//! - Inside the mount, a path ending in `/` is no key (GET 404 `{"errors": []}`, writes 400
//!   "cannot write to a path ending in '/'"); a section other than `data`/`metadata` is 404
//!   with the "Invalid path for a versioned K/V secrets engine" warning.
//! - `POST /v1/auth/kubernetes/login` with `{"role", "jwt"}`: missing field → 400 "missing role" /
//!   "missing jwt", unknown role → 400 `invalid role name "x"`, wrong JWT → 403 permission denied;
//!   success → `{"auth": {"client_token", "lease_duration", "renewable", ...}}`.
//! - `POST /v1/auth/token/renew-self`: extends a renewable token by its TTL, capped at its max
//!   TTL (with a warning, as Vault does); a non-renewable token gets 400, the root token (no
//!   lease) 400 "invalid lease ID".
//! - Unknown paths → 404 "no handler for route", unsupported methods → 405.
//!
//! Left out: policies (a valid token may do everything except what
//! [`VaultDouble::deny_keys_under`] forbids to login-issued tokens), `LIST` and `?list=true`, `PATCH`,
//! `undelete`/`destroy`, engine config (`max_versions`, `cas_required`, `delete_version_after`),
//! `Authorization: Bearer`, namespaces, response wrapping, token revocation endpoints, the JWT's
//! signature and the TokenReview call (the JWT is compared as a string).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Map, Value, json};

use super::{DoubleServer, start as start_server};
use crate::tls::TestCa;

/// The KV v2 mount a default double serves (EDC's `/v1/secret`).
pub const DEFAULT_MOUNT: &str = "secret";
/// Where the Kubernetes auth method is mounted.
pub const KUBERNETES_AUTH_MOUNT: &str = "kubernetes";
/// The Kubernetes auth role a default double accepts.
pub const DEFAULT_ROLE: &str = "mqtt-dsp-operator";
/// The service account JWT a default double accepts for [`DEFAULT_ROLE`].
pub const DEFAULT_JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6b3BlcmF0b3IifQ.c2ln";

/// What a double accepts and how it leases tokens.
#[derive(Clone, Debug)]
pub struct VaultDoubleConfig {
    /// KV v2 mount path (may be nested, e.g. `kv/edc`).
    pub mount: String,
    /// A token that never expires (Vault's root token).
    pub root_token: String,
    /// The Kubernetes auth role that may log in.
    pub kubernetes_role: String,
    /// The service account token that role accepts.
    pub kubernetes_jwt: String,
    /// `lease_duration` of tokens issued by a login (whole seconds, as Vault counts).
    pub token_ttl: Duration,
    /// How far renewals may extend a token, counted from its login.
    pub token_max_ttl: Duration,
    /// Whether issued tokens are renewable.
    pub renewable: bool,
}

impl Default for VaultDoubleConfig {
    fn default() -> Self {
        Self {
            mount: DEFAULT_MOUNT.into(),
            root_token: "root".into(),
            kubernetes_role: DEFAULT_ROLE.into(),
            kubernetes_jwt: DEFAULT_JWT.into(),
            token_ttl: Duration::from_secs(3600),
            token_max_ttl: Duration::from_secs(24 * 3600),
            renewable: true,
        }
    }
}

/// How the double answers a request without a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingTokenAnswer {
    /// 403 `{"errors": ["permission denied"]}` (newer Vault releases).
    PermissionDenied,
    /// 400 `{"errors": ["missing client token"]}` (older releases).
    MissingClientToken,
}

/// A key as tests see it.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretView {
    /// The current version's data; None when the key has no live version.
    pub data: Option<Map<String, Value>>,
    /// The key's custom_metadata (empty when never set).
    pub custom_metadata: BTreeMap<String, String>,
    /// The number of the latest version (0: none yet).
    pub current_version: u64,
}

impl SecretView {
    /// The value under `content`, the only key the connector reads.
    pub fn content(&self) -> Option<&str> {
        self.data.as_ref()?.get("content")?.as_str()
    }
}

/// A running Vault double. Stops when dropped.
pub struct VaultDouble {
    /// The HTTPS server: base URL, request log, fault injection.
    pub server: DoubleServer,
    /// The KV v2 mount.
    pub mount: String,
    /// The root token.
    pub root_token: String,
    state: Arc<Mutex<VaultState>>,
}

/// Starts a double with the default configuration and `root_token`.
pub async fn start(ca: &TestCa, root_token: &str) -> std::io::Result<VaultDouble> {
    start_with(ca, VaultDoubleConfig { root_token: root_token.into(), ..Default::default() }).await
}

/// Starts a double with `config`.
pub async fn start_with(ca: &TestCa, config: VaultDoubleConfig) -> std::io::Result<VaultDouble> {
    let mount = config.mount.trim_matches('/').to_owned();
    let state = Arc::new(Mutex::new(VaultState {
        mount: mount.clone(),
        root_token: config.root_token.clone(),
        role: config.kubernetes_role,
        jwt: config.kubernetes_jwt,
        ttl: config.token_ttl,
        max_ttl: config.token_max_ttl,
        renewable: config.renewable,
        missing_token: MissingTokenAnswer::PermissionDenied,
        tokens: HashMap::new(),
        keys: BTreeMap::new(),
        logins: 0,
        renewals: 0,
        interposed: HashMap::new(),
        denied_prefixes: Vec::new(),
    }));
    let router = Router::new()
        .route("/v1/{*path}", any(handle))
        .fallback(|| async { vault_errors(StatusCode::NOT_FOUND, &["no handler for route"]) })
        .with_state(state.clone());
    let server = start_server(router, ca).await?;
    Ok(VaultDouble { server, mount, root_token: config.root_token, state })
}

impl VaultDouble {
    /// The Vault address clients are given (`https://127.0.0.1:<port>`).
    pub fn url(&self) -> url::Url {
        url::Url::parse(&self.server.base_url).expect("the double's own URL")
    }

    /// A key below the mount (`edc/alias`), as stored.
    pub fn secret(&self, key: &str) -> Option<SecretView> {
        let state = self.state.lock().unwrap();
        let entry = state.keys.get(key)?;
        Some(SecretView {
            data: entry.live(entry.current_version).and_then(|v| v.data.as_object().cloned()),
            custom_metadata: entry.custom_metadata.clone().unwrap_or_default(),
            current_version: entry.current_version,
        })
    }

    /// Every key below the mount that exists (with or without a live version), sorted: what a
    /// recursive `LIST` would show.
    pub fn keys(&self) -> Vec<String> {
        self.state.lock().unwrap().keys.keys().cloned().collect()
    }

    /// Stores a key as someone else would: a new version with `data` (when given) and the key's
    /// `custom_metadata` replaced (when given). Creates the key if needed.
    pub fn plant(
        &self,
        key: &str,
        data: Option<Map<String, Value>>,
        custom_metadata: Option<BTreeMap<String, String>>,
    ) {
        let mut state = self.state.lock().unwrap();
        let entry = state.keys.entry(key.to_owned()).or_insert_with(KeyEntry::new);
        if let Some(custom_metadata) = custom_metadata {
            entry.custom_metadata = Some(custom_metadata);
        }
        if let Some(data) = data {
            entry.add_version(Value::Object(data));
        }
    }

    /// Stores `{"content": content}` at `key` without any custom_metadata: a secret written by
    /// the connector or Tractus-X, not by the operator.
    pub fn plant_foreign(&self, key: &str, content: &str) {
        self.plant(key, Some(content_map(content)), None);
    }

    /// Soft-deletes the latest version of `key` (what `DELETE /data/<key>` does).
    pub fn delete_latest_version(&self, key: &str) {
        let mut state = self.state.lock().unwrap();
        if let Some(entry) = state.keys.get_mut(key) {
            entry.soft_delete_latest();
        }
    }

    /// Removes `key` with every version and its metadata (what `DELETE /metadata/<key>` does):
    /// a key deleted behind the operator's back. Whether it existed.
    pub fn destroy(&self, key: &str) -> bool {
        self.state.lock().unwrap().keys.remove(key).is_some()
    }

    /// Every live key's data, to list the secrets a run handled (for the log check).
    pub fn live_data(&self) -> Vec<(String, Value)> {
        let state = self.state.lock().unwrap();
        state.keys.iter().filter_map(|(k, e)| e.live(e.current_version).map(|v| (k.clone(), v.data.clone()))).collect()
    }

    /// Before each of the next client writes to `key`, writes `{"content": c}` itself (one per
    /// element): a concurrent writer that makes a check-and-set fail.
    pub fn interpose_writes(&self, key: &str, contents: &[&str]) {
        let mut state = self.state.lock().unwrap();
        state.interposed.insert(key.to_owned(), contents.iter().map(|c| Value::Object(content_map(c))).collect());
    }

    /// Revokes every token issued by a login (the root token stays): what a Vault restart with
    /// a restored backup, an operator revoking the accessor, or expiry does to a cached token.
    pub fn revoke_issued_tokens(&self) {
        self.state.lock().unwrap().tokens.clear();
    }

    /// Refuses (403) every call of a login-issued token on keys starting with `prefix`: a
    /// policy that does not grant the operator's role that part of the mount.
    pub fn deny_keys_under(&self, prefix: &str) {
        self.state.lock().unwrap().denied_prefixes.push(prefix.to_owned());
    }

    /// Sets the lease of tokens issued from now on.
    pub fn set_token_lease(&self, ttl: Duration, max_ttl: Duration, renewable: bool) {
        let mut state = self.state.lock().unwrap();
        state.ttl = ttl;
        state.max_ttl = max_ttl;
        state.renewable = renewable;
    }

    /// How requests without a token are answered.
    pub fn set_missing_token_answer(&self, answer: MissingTokenAnswer) {
        self.state.lock().unwrap().missing_token = answer;
    }

    /// Successful Kubernetes logins so far.
    pub fn logins(&self) -> u32 {
        self.state.lock().unwrap().logins
    }

    /// Successful token renewals so far.
    pub fn renewals(&self) -> u32 {
        self.state.lock().unwrap().renewals
    }

    /// Tokens issued by logins that are still valid.
    pub fn valid_issued_tokens(&self) -> usize {
        let now = Instant::now();
        self.state.lock().unwrap().tokens.values().filter(|t| now < t.expires_at).count()
    }
}

struct VaultState {
    mount: String,
    root_token: String,
    role: String,
    jwt: String,
    ttl: Duration,
    max_ttl: Duration,
    renewable: bool,
    missing_token: MissingTokenAnswer,
    tokens: HashMap<String, IssuedToken>,
    keys: BTreeMap<String, KeyEntry>,
    logins: u32,
    renewals: u32,
    interposed: HashMap<String, Vec<Value>>,
    denied_prefixes: Vec<String>,
}

struct IssuedToken {
    expires_at: Instant,
    max_expires_at: Instant,
    ttl: Duration,
    renewable: bool,
}

struct KeyEntry {
    custom_metadata: Option<BTreeMap<String, String>>,
    versions: BTreeMap<u64, Version>,
    current_version: u64,
    created_time: String,
    updated_time: String,
}

struct Version {
    /// An object, or null (Vault stores `{"data": null}` as a version without data).
    data: Value,
    created_time: String,
    deletion_time: String,
    destroyed: bool,
}

impl KeyEntry {
    fn new() -> Self {
        let now = timestamp();
        Self {
            custom_metadata: None,
            versions: BTreeMap::new(),
            current_version: 0,
            created_time: now.clone(),
            updated_time: now,
        }
    }

    fn live(&self, version: u64) -> Option<&Version> {
        self.versions.get(&version).filter(|v| v.deletion_time.is_empty() && !v.destroyed)
    }

    fn add_version(&mut self, data: Value) -> u64 {
        self.current_version += 1;
        let now = timestamp();
        self.updated_time = now.clone();
        self.versions.insert(
            self.current_version,
            Version { data, created_time: now, deletion_time: String::new(), destroyed: false },
        );
        self.current_version
    }

    fn soft_delete_latest(&mut self) {
        if let Some(v) = self.versions.get_mut(&self.current_version)
            && v.deletion_time.is_empty()
        {
            v.deletion_time = timestamp();
        }
    }

    fn version_metadata(&self, number: u64, v: &Version) -> Value {
        json!({
            "version": number,
            "created_time": v.created_time,
            "deletion_time": v.deletion_time,
            "destroyed": v.destroyed,
            "custom_metadata": self.custom_metadata,
        })
    }
}

fn content_map(content: &str) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("content".into(), Value::String(content.to_owned()));
    map
}

type Shared = State<Arc<Mutex<VaultState>>>;

async fn handle(
    State(state): Shared,
    method: Method,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = state.lock().unwrap();
    if path == format!("auth/{KUBERNETES_AUTH_MOUNT}/login") {
        return if matches!(method, Method::POST | Method::PUT) { login(&mut state, &body) } else { unsupported() };
    }
    if let Some(refusal) = authenticate(&state, &headers) {
        return refusal;
    }
    if path == "auth/token/renew-self" {
        return if matches!(method, Method::POST | Method::PUT) {
            renew_self(&mut state, &headers, &body)
        } else {
            unsupported()
        };
    }
    let mount_prefix = format!("{}/", state.mount);
    let Some(rest) = path.strip_prefix(&mount_prefix) else {
        return no_handler(&path);
    };
    let (section, key) = rest.split_once('/').unwrap_or((rest, ""));
    if !matches!(section, "data" | "metadata") {
        return invalid_kv_path(&method);
    }
    // The mount itself or a "folder": nothing to read, nothing to delete, no write.
    if key.is_empty() || key.ends_with('/') {
        return match method {
            Method::GET => not_found(),
            Method::DELETE => StatusCode::NO_CONTENT.into_response(),
            Method::POST | Method::PUT => {
                vault_errors(StatusCode::BAD_REQUEST, &["cannot write to a path ending in '/'"])
            }
            _ => unsupported(),
        };
    }
    let token = headers.get("x-vault-token").and_then(|v| v.to_str().ok()).unwrap_or("");
    if token != state.root_token && state.denied_prefixes.iter().any(|p| key.starts_with(p.as_str())) {
        return permission_denied();
    }
    match (section, method) {
        ("data", Method::GET) => read_data(&state, key, query.as_deref()),
        ("data", Method::POST | Method::PUT) => write_data(&mut state, key, &body),
        ("data", Method::DELETE) => {
            if let Some(entry) = state.keys.get_mut(key) {
                entry.soft_delete_latest();
            }
            StatusCode::NO_CONTENT.into_response()
        }
        ("metadata", Method::GET) => read_metadata(&state, key),
        ("metadata", Method::POST | Method::PUT) => write_metadata(&mut state, key, &body),
        ("metadata", Method::DELETE) => {
            state.keys.remove(key);
            StatusCode::NO_CONTENT.into_response()
        }
        _ => unsupported(),
    }
}

/// The refusal when the request's token is missing or not valid.
fn authenticate(state: &VaultState, headers: &HeaderMap) -> Option<Response> {
    let token = headers.get("x-vault-token").and_then(|v| v.to_str().ok()).unwrap_or("");
    if token.is_empty() {
        return Some(match state.missing_token {
            MissingTokenAnswer::PermissionDenied => permission_denied(),
            MissingTokenAnswer::MissingClientToken => vault_errors(StatusCode::BAD_REQUEST, &["missing client token"]),
        });
    }
    let valid = token == state.root_token || state.tokens.get(token).is_some_and(|t| Instant::now() < t.expires_at);
    if valid { None } else { Some(permission_denied()) }
}

fn login(state: &mut VaultState, body: &[u8]) -> Response {
    let input = match parse_body(body) {
        Ok(input) => input,
        Err(refusal) => return refusal.into_response(),
    };
    let field = |name: &str| input.get(name).and_then(Value::as_str).unwrap_or("").to_owned();
    let (role, jwt) = (field("role"), field("jwt"));
    if role.is_empty() {
        return vault_errors(StatusCode::BAD_REQUEST, &["missing role"]);
    }
    if jwt.is_empty() {
        return vault_errors(StatusCode::BAD_REQUEST, &["missing jwt"]);
    }
    if role != state.role {
        return vault_errors(StatusCode::BAD_REQUEST, &[&format!("invalid role name {role:?}")]);
    }
    if jwt != state.jwt {
        return permission_denied();
    }
    let token = format!("hvs.{}", uuid::Uuid::new_v4().simple());
    let ttl = Duration::from_secs(state.ttl.as_secs());
    let now = Instant::now();
    state.tokens.insert(
        token.clone(),
        IssuedToken { expires_at: now + ttl, max_expires_at: now + state.max_ttl, ttl, renewable: state.renewable },
    );
    state.logins += 1;
    let auth = json!({
        "client_token": token,
        "accessor": uuid::Uuid::new_v4().simple().to_string(),
        "policies": ["default", "mqtt-dsp-operator"],
        "token_policies": ["default", "mqtt-dsp-operator"],
        "metadata": {
            "role": role,
            "service_account_name": "mqtt-dsp-operator",
            "service_account_namespace": "mqtt-dsp-operator",
            "service_account_secret_name": "",
            "service_account_uid": "00000000-0000-0000-0000-000000000001",
        },
        "lease_duration": ttl.as_secs(),
        "renewable": state.renewable,
        "entity_id": uuid::Uuid::new_v4().to_string(),
        "token_type": "service",
        "orphan": true,
        "mfa_requirement": null,
        "num_uses": 0,
    });
    (StatusCode::OK, axum::Json(envelope(Value::Null, Some(auth), None))).into_response()
}

fn renew_self(state: &mut VaultState, headers: &HeaderMap, body: &[u8]) -> Response {
    if let Err(refusal) = parse_body(body) {
        return refusal.into_response();
    }
    let token = headers.get("x-vault-token").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    if token == state.root_token {
        return vault_errors(StatusCode::BAD_REQUEST, &["invalid lease ID"]);
    }
    let renewable = state.renewable;
    let Some(issued) = state.tokens.get_mut(&token).filter(|t| t.renewable) else {
        return vault_errors(StatusCode::BAD_REQUEST, &["lease is not renewable"]);
    };
    let now = Instant::now();
    let wanted = now + issued.ttl;
    let (expires_at, warnings) = if wanted > issued.max_expires_at {
        (
            issued.max_expires_at,
            Some(json!([
                "TTL of the requested increment exceeded the effective max_ttl; TTL value is capped accordingly"
            ])),
        )
    } else {
        (wanted, None)
    };
    issued.expires_at = expires_at;
    let lease = expires_at.saturating_duration_since(now).as_secs();
    state.renewals += 1;
    let auth = json!({
        "client_token": token,
        "accessor": "",
        "policies": ["default", "mqtt-dsp-operator"],
        "token_policies": ["default", "mqtt-dsp-operator"],
        "metadata": {"role": state.role},
        "lease_duration": lease,
        "renewable": renewable,
        "token_type": "service",
        "orphan": true,
    });
    (StatusCode::OK, axum::Json(envelope(Value::Null, Some(auth), warnings))).into_response()
}

fn read_data(state: &VaultState, key: &str, query: Option<&str>) -> Response {
    let Some(entry) = state.keys.get(key) else { return not_found() };
    let requested = match query.unwrap_or("").split('&').find_map(|pair| pair.strip_prefix("version=")) {
        None | Some("") => 0,
        Some(v) => match v.parse::<i64>() {
            Ok(v) => v,
            Err(_) => {
                return vault_errors(
                    StatusCode::BAD_REQUEST,
                    &[
                        "Field validation failed: error converting input for field \"version\": '' cannot parse value as 'int': strconv.ParseInt: invalid syntax",
                    ],
                );
            }
        },
    };
    // 0, a negative number or none: the latest version.
    let number = u64::try_from(requested).ok().filter(|n| *n > 0).unwrap_or(entry.current_version);
    let Some(version) = entry.versions.get(&number) else { return not_found() };
    let metadata = entry.version_metadata(number, version);
    match entry.live(number) {
        Some(live) => {
            (StatusCode::OK, axum::Json(envelope(json!({ "data": live.data, "metadata": metadata }), None, None)))
                .into_response()
        }
        None => {
            (StatusCode::NOT_FOUND, axum::Json(envelope(json!({ "data": null, "metadata": metadata }), None, None)))
                .into_response()
        }
    }
}

fn write_data(state: &mut VaultState, key: &str, body: &[u8]) -> Response {
    let input = match parse_body(body) {
        Ok(input) => input,
        Err(refusal) => return refusal.into_response(),
    };
    // `{"data": null}` is a version without data (200); only a missing field is refused.
    let data = match input.get("data") {
        None => return vault_errors(StatusCode::BAD_REQUEST, &["no data provided"]),
        Some(data @ (Value::Object(_) | Value::Null)) => data.clone(),
        Some(other) => return vault_errors(StatusCode::BAD_REQUEST, &[&not_a_map("data", other)]),
    };
    // A negative cas parses and then matches no version; null counts as absent.
    let cas = match input.get("options").and_then(|o| o.get("cas")) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64(),
        Some(Value::String(s)) if s.parse::<i64>().is_ok() => s.parse::<i64>().ok(),
        Some(_) => return vault_errors(StatusCode::BAD_REQUEST, &["error parsing check-and-set parameter"]),
    };
    if let Some(mut pending) = state.interposed.remove(key) {
        if !pending.is_empty() {
            let other = pending.remove(0);
            state.keys.entry(key.to_owned()).or_insert_with(KeyEntry::new).add_version(other);
        }
        if !pending.is_empty() {
            state.interposed.insert(key.to_owned(), pending);
        }
    }
    // Every value written is a secret the run's logs must never show.
    for value in data.as_object().into_iter().flat_map(Map::values).filter_map(Value::as_str) {
        crate::logs::register_secret(value);
    }
    let entry = state.keys.entry(key.to_owned()).or_insert_with(KeyEntry::new);
    if cas.is_some_and(|cas| u64::try_from(cas) != Ok(entry.current_version)) {
        return vault_errors(StatusCode::BAD_REQUEST, &["check-and-set parameter did not match the current version"]);
    }
    let number = entry.add_version(data);
    let metadata = entry.versions.get(&number).map(|v| entry.version_metadata(number, v)).unwrap_or(Value::Null);
    (StatusCode::OK, axum::Json(envelope(metadata, None, None))).into_response()
}

fn read_metadata(state: &VaultState, key: &str) -> Response {
    let Some(entry) = state.keys.get(key) else { return not_found() };
    let versions: Map<String, Value> = entry
        .versions
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                json!({"created_time": v.created_time, "deletion_time": v.deletion_time, "destroyed": v.destroyed}),
            )
        })
        .collect();
    let data = json!({
        "cas_required": false,
        "created_time": entry.created_time,
        "current_version": entry.current_version,
        "custom_metadata": entry.custom_metadata,
        "delete_version_after": "0s",
        "max_versions": 0,
        // Moves only when versions beyond max_versions are pruned, which the double never does.
        "oldest_version": 0,
        "updated_time": entry.updated_time,
        "versions": versions,
    });
    (StatusCode::OK, axum::Json(envelope(data, None, None))).into_response()
}

fn write_metadata(state: &mut VaultState, key: &str, body: &[u8]) -> Response {
    let input = match parse_body(body) {
        Ok(input) => input,
        Err(refusal) => return refusal.into_response(),
    };
    // Vault's fast path: nothing it knows was given, nothing is written (not even created).
    if !["max_versions", "cas_required", "delete_version_after", "custom_metadata"]
        .iter()
        .any(|f| input.contains_key(*f))
    {
        return StatusCode::NO_CONTENT.into_response();
    }
    // Values are converted the way Vault's weak decoding does (numbers as written, booleans as
    // "1"/"0", null as ""); an empty map or null clears custom_metadata.
    let custom_metadata = match input.get("custom_metadata") {
        None => None,
        Some(Value::Null) => Some(BTreeMap::new()),
        Some(Value::Object(map)) => {
            let mut parsed = BTreeMap::new();
            for (k, v) in map {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => if *b { "1" } else { "0" }.to_owned(),
                    Value::Null => String::new(),
                    other => {
                        return vault_errors(
                            StatusCode::BAD_REQUEST,
                            &[&format!(
                                "custom_metadata validation failed: '' expected type 'string', got unconvertible type '{}'",
                                go_type(other)
                            )],
                        );
                    }
                };
                parsed.insert(k.clone(), text);
            }
            if let Some(problems) = custom_metadata_problems(&parsed) {
                return vault_errors(StatusCode::BAD_REQUEST, &[&problems]);
            }
            Some(parsed)
        }
        Some(other) => return vault_errors(StatusCode::BAD_REQUEST, &[&not_a_map("custom_metadata", other)]),
    };
    let entry = state.keys.entry(key.to_owned()).or_insert_with(KeyEntry::new);
    if let Some(custom_metadata) = custom_metadata {
        entry.custom_metadata = (!custom_metadata.is_empty()).then_some(custom_metadata);
        entry.updated_time = timestamp();
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Vault's limits on custom_metadata: every violation, in Go's multierror format.
fn custom_metadata_problems(map: &BTreeMap<String, String>) -> Option<String> {
    const PREFIX: &str = "custom_metadata validation failed";
    let mut problems = Vec::new();
    if map.len() > 64 {
        problems.push(format!("{PREFIX}: payload must contain at most 64 keys, provided {}", map.len()));
    }
    for (k, v) in map {
        if k.is_empty() || k.len() > 128 {
            problems.push(format!("{PREFIX}: length of key {k:?} is {} but must be 0 < len(key) <= 128", k.len()));
        }
        if v.is_empty() || v.len() > 512 {
            problems.push(format!(
                "{PREFIX}: length of value for key {k:?} is {} but must be 0 < len(value) <= 512",
                v.len()
            ));
        }
    }
    (!problems.is_empty()).then(|| multierror(&problems))
}

/// Go's `multierror` text, as Vault joins several errors into one message.
fn multierror(errors: &[String]) -> String {
    let head = match errors.len() {
        1 => "1 error occurred:".to_owned(),
        n => format!("{n} errors occurred:"),
    };
    let items: String = errors.iter().map(|e| format!("\n\t* {e}")).collect();
    format!("{head}{items}\n\n")
}

/// The name Go gives a decoded JSON value's type, as Vault's error messages show it.
fn go_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(_) => "float64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

/// A field that must be an object but is not.
fn not_a_map(field: &str, value: &Value) -> String {
    format!(
        "error converting input for field {field:?}: '' expected type 'map[string]interface {{}}', got unconvertible type '{}'",
        go_type(value)
    )
}

/// A JSON object body; an empty body counts as `{}` (Vault's CLI sends none on some calls).
fn parse_body(body: &[u8]) -> Result<Map<String, Value>, BadBody> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(BadBody("expected a JSON object".into())),
        Err(e) => Err(BadBody(e.to_string())),
    }
}

/// A body that is not a JSON object: 400 in Vault's words.
struct BadBody(String);

impl IntoResponse for BadBody {
    fn into_response(self) -> Response {
        vault_errors(StatusCode::BAD_REQUEST, &[&format!("failed to parse JSON input: {}", self.0)])
    }
}

/// Vault's response envelope.
fn envelope(data: Value, auth: Option<Value>, warnings: Option<Value>) -> Value {
    json!({
        "request_id": uuid::Uuid::new_v4().to_string(),
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": warnings,
        "auth": auth,
        "mount_type": if auth.is_some() { "" } else { "kv" },
    })
}

fn vault_errors(status: StatusCode, errors: &[&str]) -> Response {
    (status, axum::Json(json!({ "errors": errors }))).into_response()
}

fn permission_denied() -> Response {
    vault_errors(StatusCode::FORBIDDEN, &["permission denied"])
}

fn not_found() -> Response {
    vault_errors(StatusCode::NOT_FOUND, &[])
}

fn no_handler(path: &str) -> Response {
    vault_errors(StatusCode::NOT_FOUND, &[&format!("no handler for route {path:?}. route entry not found.")])
}

/// A path inside the KV v2 mount that is neither `data/…` nor `metadata/…`: 404 with a warning.
fn invalid_kv_path(method: &Method) -> Response {
    let command = match *method {
        Method::GET => "get",
        Method::DELETE => "delete",
        _ => "put",
    };
    let warning = format!(
        "Invalid path for a versioned K/V secrets engine. See the API docs for the appropriate API endpoints to use. If using the Vault CLI, use 'vault kv {command}' for this operation."
    );
    (StatusCode::NOT_FOUND, axum::Json(envelope(Value::Null, None, Some(json!([warning]))))).into_response()
}

fn unsupported() -> Response {
    vault_errors(StatusCode::METHOD_NOT_ALLOWED, &["1 error occurred:\n\t* unsupported operation\n\n"])
}

/// RFC 3339 UTC with microseconds, as Vault prints times.
fn timestamp() -> String {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60,
        since_epoch.subsec_micros()
    )
}
