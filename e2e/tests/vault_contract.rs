//! The Vault client (`operator/src/backends/secrets/vault.rs`) against two targets from the same
//! test code: a real Vault-compatible server (OpenBao, `e2e/src/systems/vault.rs`, a KV v2 mount
//! of its own per test) and the Vault double (`e2e/src/doubles/vault.rs`). The secret lands where
//! and how the connector reads it, ensure is idempotent, foreign secrets stay untouched, Vault's
//! errors map to the shared error variants, and Kubernetes-auth tokens are cached, renewed and
//! replaced.
//!
//! Each test body is `async fn name(target: Target)`; `both!` makes `real::name` and
//! `double::name` of it. On the real server the double's request log is replaced by the key's
//! metadata, OpenBao's own record of writes: `current_version` counts data writes,
//! `current_metadata_version` (OpenBao's) metadata writes, `updated_time` moves with either.
//! Reads leave no record there, so request sequences (marker before value, nothing sent at all)
//! are checked on the double only. Tests that need what only the double can do (a writer
//! interposed between the client's read and write, injected 5xx and stalls, token leases and
//! revocation on demand, Kubernetes logins, which on the real server need a TokenReview API
//! behind its Kubernetes auth method, and older Vault's 400 for a missing token) are
//! `double_only` and say why.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e::doubles::vault::{self, MissingTokenAnswer, SecretView, VaultDouble, VaultDoubleConfig};
use e2e::systems::vault::Vault;
use e2e::tls::TestCa;
use mqtt_dsp_operator::backends::http::HttpSettings;
use mqtt_dsp_operator::backends::secrets::vault::{VaultAuthSettings, VaultClient, VaultSettings};
use mqtt_dsp_operator::backends::secrets::{SecretLocation, SecretStore};
use mqtt_dsp_operator::backends::{
    BackendError, ExposeSecret, OWNER_KEY, OWNER_RESOURCE_KEY, Outcome, Owner, SecretString,
};
use reqwest::Method;
use serde_json::{Map, Value, json};
use url::Url;

/// The double's root token (the real server's is random, made at its start).
const DOUBLE_ROOT: &str = "root-token-for-tests";

/// Where a test runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Real,
    Double,
}

enum Backend {
    Double(VaultDouble),
    Real(&'static Vault),
}

struct Stack {
    ca_pem: String,
    url: Url,
    /// The KV v2 mount of this test.
    mount: String,
    root: String,
    backend: Backend,
    jwt_files: std::sync::Mutex<Vec<PathBuf>>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for file in self.jwt_files.lock().unwrap().drain(..) {
            let _ = std::fs::remove_file(file);
        }
    }
}

impl Stack {
    /// EDC's default mount `secret` on the double; a fresh `secret-<random>` on the real server.
    async fn start(target: Target) -> Self {
        Self::start_at(target, vault::DEFAULT_MOUNT).await
    }

    /// `mount` (may be nested) on the double; `<mount>-<random>` on the real server.
    async fn start_at(target: Target, mount: &str) -> Self {
        mqtt_dsp_operator::install_crypto_provider();
        e2e::logs::init();
        e2e::logs::register_secret(DOUBLE_ROOT);
        match target {
            Target::Double => {
                let ca = TestCa::new();
                let config =
                    VaultDoubleConfig { root_token: DOUBLE_ROOT.into(), mount: mount.into(), ..Default::default() };
                let double = vault::start_with(&ca, config).await.unwrap();
                Self {
                    ca_pem: ca.cert_pem(),
                    url: double.url(),
                    mount: double.mount.clone(),
                    root: DOUBLE_ROOT.into(),
                    backend: Backend::Double(double),
                    jwt_files: Default::default(),
                }
            }
            Target::Real => {
                let real = Vault::shared().await.unwrap_or_else(|e| panic!("{e}"));
                let mount = real.create_kv2_mount(mount).await.unwrap();
                Self {
                    ca_pem: real.ca_pem.clone(),
                    url: real.url(),
                    mount,
                    root: real.root_token().to_owned(),
                    backend: Backend::Real(real),
                    jwt_files: Default::default(),
                }
            }
        }
    }

    /// The double, for what only it can do.
    fn double(&self) -> &VaultDouble {
        match &self.backend {
            Backend::Double(double) => double,
            Backend::Real(_) => panic!("double-only step on the real server"),
        }
    }

    fn settings(&self, auth: VaultAuthSettings, timeout: Duration) -> VaultSettings {
        VaultSettings {
            url: self.url.clone(),
            kv_mount: self.mount.clone(),
            auth,
            http: HttpSettings { timeout, ca_bundle_pem: Some(self.ca_pem.clone()) },
        }
    }
    fn client_with_token(&self, token: &str) -> VaultClient {
        let auth = VaultAuthSettings::Token(SecretString::from(token.to_owned()));
        VaultClient::new(self.settings(auth, Duration::from_secs(5))).unwrap()
    }
    fn client(&self) -> VaultClient {
        self.client_with_token(&self.root)
    }
    fn kubernetes_client(&self, role: &str, jwt: &str) -> VaultClient {
        let auth = VaultAuthSettings::Kubernetes {
            role: role.into(),
            mount: vault::KUBERNETES_AUTH_MOUNT.into(),
            service_account_token_path: self.jwt_file(jwt),
        };
        VaultClient::new(self.settings(auth, Duration::from_secs(5))).unwrap()
    }
    /// A service account token file, as the kubelet projects it (with a trailing newline).
    fn jwt_file(&self, jwt: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("vault-contract-jwt-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, format!("{jwt}\n")).unwrap();
        self.jwt_files.lock().unwrap().push(path.clone());
        path
    }

    /// The double's mutating requests since the last clear (double only).
    fn mutating(&self) -> Vec<e2e::doubles::LoggedRequest> {
        self.double().server.log.matching(|r| r.is_mutating())
    }
    fn forbidden(&self) -> usize {
        self.double().server.log.matching(|r| r.status == 403).len()
    }
    /// Forgets the double's request log (nothing to do on the real server).
    fn clear_log(&self) {
        if let Backend::Double(double) = &self.backend {
            double.server.log.clear();
        }
    }

    fn http(&self) -> reqwest::Client {
        let cert = reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap();
        reqwest::Client::builder().tls_certs_only([cert]).timeout(Duration::from_secs(10)).build().unwrap()
    }

    fn api_url(&self, path: &str) -> String {
        format!("{}v1/{path}", self.url)
    }

    /// A request with the root token; the status and the JSON answer (Null when empty).
    async fn api(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut request = self.http().request(method, self.api_url(path)).header("X-Vault-Token", &self.root);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The key's metadata as the server answers it (read with the root token); None on 404.
    async fn metadata(&self, key: &str) -> Option<Value> {
        let (status, body) = self.api(Method::GET, &format!("{}/metadata/{key}", self.mount), None).await;
        match status {
            200 => Some(body["data"].clone()),
            404 => None,
            _ => panic!("metadata of {key}: {status} {body}"),
        }
    }

    /// A key below the mount as stored: the double's state, or the real server's answers.
    async fn stored(&self, key: &str) -> Option<SecretView> {
        if let Backend::Double(double) = &self.backend {
            return double.secret(key);
        }
        let metadata = self.metadata(key).await?;
        let (status, body) = self.api(Method::GET, &format!("{}/data/{key}", self.mount), None).await;
        let data = match status {
            200 => body["data"]["data"].as_object().cloned(),
            404 => None,
            _ => panic!("data of {key}: {status} {body}"),
        };
        let custom_metadata = metadata["custom_metadata"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect())
            .unwrap_or_default();
        Some(SecretView { data, custom_metadata, current_version: metadata["current_version"].as_u64().unwrap() })
    }

    /// Everything the server records about a key's writes: the metadata, without the per-read
    /// envelope. Equal before and after a step: the step wrote nothing to the key.
    async fn write_record(&self, key: &str) -> Option<Value> {
        self.metadata(key).await
    }

    /// Stores a key as someone else would (with the root token): `custom_metadata` replaced
    /// (when given), then a new version with `data` (when given).
    async fn plant(
        &self,
        key: &str,
        data: Option<Map<String, Value>>,
        custom_metadata: Option<BTreeMap<String, String>>,
    ) {
        if let Backend::Double(double) = &self.backend {
            return double.plant(key, data, custom_metadata);
        }
        if let Some(custom_metadata) = custom_metadata {
            let body = json!({ "custom_metadata": custom_metadata });
            let (status, answer) = self.api(Method::POST, &format!("{}/metadata/{key}", self.mount), Some(&body)).await;
            assert_eq!(status, 204, "{answer}");
        }
        if let Some(data) = data {
            let body = json!({ "data": data });
            let (status, answer) = self.api(Method::POST, &format!("{}/data/{key}", self.mount), Some(&body)).await;
            assert_eq!(status, 200, "{answer}");
        }
    }

    /// `{"content": content}` without custom_metadata: a secret of the connector or Tractus-X.
    async fn plant_foreign(&self, key: &str, value: &str) {
        e2e::logs::register_secret(value);
        self.plant(key, Some(content(value)), None).await;
    }

    /// Soft-deletes the latest version (`DELETE /data/<key>`).
    async fn delete_latest_version(&self, key: &str) {
        if let Backend::Double(double) = &self.backend {
            return double.delete_latest_version(key);
        }
        let (status, answer) = self.api(Method::DELETE, &format!("{}/data/{key}", self.mount), None).await;
        assert_eq!(status, 204, "{answer}");
    }
}

fn owner() -> Owner {
    Owner { installation: "test".into(), kind: "MqttAsset".into(), namespace: "factory".into(), name: "line-1".into() }
}

fn other_owner() -> Owner {
    Owner { installation: "test".into(), kind: "MqttAsset".into(), namespace: "factory".into(), name: "line-2".into() }
}

fn at(alias: &str) -> SecretLocation {
    SecretLocation { folder: Some("edc".into()), alias: alias.into() }
}

fn secret(value: &str) -> SecretString {
    SecretString::from(value.to_owned())
}

fn content(value: &str) -> Map<String, Value> {
    json!({ "content": value }).as_object().unwrap().clone()
}

fn our_marker(owner: &Owner) -> BTreeMap<String, String> {
    BTreeMap::from([(OWNER_KEY.to_owned(), owner.managed_by()), (OWNER_RESOURCE_KEY.to_owned(), owner.marker())])
}

fn all_text(e: &BackendError) -> String {
    let mut text = format!("{e} {e:?}");
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(" {s} {s:?}"));
        source = s.source();
    }
    text
}

fn time(value: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(value.as_str().unwrap()).unwrap()
}

e2e::both!(
    ensure_creates_the_secret_where_and_how_edc_reads_it,
    second_identical_ensure_makes_no_write,
    different_value_is_written_as_a_new_version,
    wrong_token_is_unauthorized,
    missing_token_is_unauthorized,
    absent_secret_reads_as_none_and_deletes_as_absent,
    delete_removes_the_secret_with_all_versions,
    foreign_secret_is_neither_overwritten_read_nor_deleted,
    foreign_secret_without_a_live_version_is_still_foreign,
    secret_of_another_resource_is_foreign,
    the_old_marker_is_adopted_once_and_another_installations_is_foreign,
    marker_left_by_an_interrupted_create_is_completed,
    create_of_a_new_key_reads_only_its_metadata_and_meets_existing_keys_as_ensure_does,
    paths_follow_mount_folder_and_alias,
    kubernetes_login_failures_before_any_token_review_are_reported,
    errors_and_debug_output_never_contain_the_token_or_the_value,
    answers_like_vault,
);

async fn ensure_creates_the_secret_where_and_how_edc_reads_it(target: Target) {
    let s = Stack::start(target).await;
    let client = s.client();
    let outcome = client.ensure_secret(&at("line-1-client-secret"), &secret("v1"), &owner()).await.unwrap();
    assert_eq!(outcome, Outcome::Created);

    // EDC reads {url}/v1/secret/data/{folder}/{alias} and only the key `content`.
    let stored = s.stored("edc/line-1-client-secret").await.expect("stored under <folder>/<alias>");
    assert_eq!(stored.data, Some(content("v1")), "exactly {{\"content\": value}}");
    assert_eq!(stored.custom_metadata, our_marker(&owner()));
    assert_eq!(stored.current_version, 1);
    assert_eq!(client.path(&at("line-1-client-secret")), format!("{}/data/edc/line-1-client-secret", s.mount));
    // Marker first: the key existed before its first version (written together, both times
    // would be the same).
    let metadata = s.metadata("edc/line-1-client-secret").await.unwrap();
    assert!(time(&metadata["created_time"]) < time(&metadata["versions"]["1"]["created_time"]), "{metadata}");
    if target == Target::Real {
        assert_eq!(metadata["current_metadata_version"], 1, "one metadata write: {metadata}");
    } else {
        let writes: Vec<_> = s.mutating().into_iter().map(|r| (r.method, r.path)).collect();
        assert_eq!(
            writes,
            [
                ("POST".into(), "/v1/secret/metadata/edc/line-1-client-secret".into()),
                ("POST".into(), "/v1/secret/data/edc/line-1-client-secret".into()),
            ],
            "marker first, then the value"
        );
    }

    let read = client.read_secret(&at("line-1-client-secret"), &owner()).await.unwrap();
    assert_eq!(read.unwrap().expose_secret(), "v1");
}

async fn second_identical_ensure_makes_no_write(target: Target) {
    let s = Stack::start(target).await;
    let client = s.client();
    client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap();
    let before = s.write_record("edc/a").await;
    s.clear_log();
    let outcome = client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap();
    assert_eq!(outcome, Outcome::Unchanged);
    assert_eq!(s.write_record("edc/a").await, before, "nothing written");
    if target == Target::Double {
        assert!(s.mutating().is_empty(), "no write: {:?}", s.mutating());
    }
    assert_eq!(s.stored("edc/a").await.unwrap().current_version, 1);
}

async fn different_value_is_written_as_a_new_version(target: Target) {
    let s = Stack::start(target).await;
    let client = s.client();
    client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap();
    let before = s.metadata("edc/a").await.unwrap();
    s.clear_log();
    let outcome = client.ensure_secret(&at("a"), &secret("v2"), &owner()).await.unwrap();
    assert_eq!(outcome, Outcome::Updated);
    let stored = s.stored("edc/a").await.unwrap();
    assert_eq!(stored.content(), Some("v2"));
    assert_eq!(stored.current_version, 2);
    assert_eq!(stored.custom_metadata, our_marker(&owner()), "the marker survives an update");
    if target == Target::Real {
        let after = s.metadata("edc/a").await.unwrap();
        assert_eq!(after["current_metadata_version"], before["current_metadata_version"], "only the data write");
    } else {
        assert_eq!(s.mutating().len(), 1, "only the data write: {:?}", s.mutating());
    }
}

async fn wrong_token_is_unauthorized(target: Target) {
    let s = Stack::start(target).await;
    let e = s.client_with_token("not-the-root-token").ensure_secret(&at("a"), &secret("v1"), &owner()).await;
    assert!(matches!(e, Err(BackendError::Unauthorized { status: 403, .. })), "{e:?}");
    assert!(s.stored("edc/a").await.is_none());
}

/// Vault 1.x since 1.10 and OpenBao answer a request without a token with 403.
async fn missing_token_is_unauthorized(target: Target) {
    let s = Stack::start(target).await;
    let e = s.client_with_token("").read_secret(&at("a"), &owner()).await;
    assert!(matches!(e, Err(BackendError::Unauthorized { status: 403, .. })), "{e:?}");
}

async fn absent_secret_reads_as_none_and_deletes_as_absent(target: Target) {
    let s = Stack::start(target).await;
    let client = s.client();
    assert!(client.read_secret(&at("nothing"), &owner()).await.unwrap().is_none());
    assert_eq!(client.delete_secret(&at("nothing"), &owner()).await.unwrap(), Outcome::Absent);
    assert!(s.metadata("edc/nothing").await.is_none(), "nothing created");
    if target == Target::Double {
        assert!(s.mutating().is_empty(), "nothing to delete, nothing sent: {:?}", s.mutating());
    }
}

async fn delete_removes_the_secret_with_all_versions(target: Target) {
    let s = Stack::start(target).await;
    let client = s.client();
    client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap();
    client.ensure_secret(&at("a"), &secret("v2"), &owner()).await.unwrap();
    assert_eq!(client.delete_secret(&at("a"), &owner()).await.unwrap(), Outcome::Deleted);
    assert!(s.stored("edc/a").await.is_none(), "metadata and versions are gone");
    let (status, _) = s.api(Method::GET, &format!("{}/data/edc/a?version=1", s.mount), None).await;
    assert_eq!(status, 404, "no version left behind");
    assert_eq!(client.delete_secret(&at("a"), &owner()).await.unwrap(), Outcome::Absent);
}

async fn foreign_secret_is_neither_overwritten_read_nor_deleted(target: Target) {
    let s = Stack::start(target).await;
    let client = s.client();
    // A Tractus-X refresh token in the same Vault.
    s.plant_foreign("edc/a", "their-refresh-token").await;
    let before = s.write_record("edc/a").await;
    s.clear_log();

    let e = client.ensure_secret(&at("a"), &secret("ours"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e:?}");
    let e = client.read_secret(&at("a"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e:?}");
    let e = client.delete_secret(&at("a"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e:?}");

    assert_eq!(s.write_record("edc/a").await, before, "not a single write");
    if target == Target::Double {
        assert!(s.mutating().is_empty(), "not a single write: {:?}", s.mutating());
    }
    let stored = s.stored("edc/a").await.unwrap();
    assert_eq!(stored.content(), Some("their-refresh-token"));
    assert!(stored.custom_metadata.is_empty(), "not claimed");
    assert!(!all_text(&e).contains("their-refresh-token"));
}

async fn foreign_secret_without_a_live_version_is_still_foreign(target: Target) {
    let s = Stack::start(target).await;
    let client = s.client();
    s.plant_foreign("edc/a", "theirs-deleted").await;
    s.delete_latest_version("edc/a").await;
    let e = client.ensure_secret(&at("a"), &secret("ours"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e:?}");
    let e = client.delete_secret(&at("a"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e:?}");
    assert_eq!(s.stored("edc/a").await.unwrap().current_version, 1, "no version added");
}

async fn secret_of_another_resource_is_foreign(target: Target) {
    let s = Stack::start(target).await;
    let client = s.client();
    client.ensure_secret(&at("shared-alias"), &secret("line-2's"), &other_owner()).await.unwrap();
    let e = client.ensure_secret(&at("shared-alias"), &secret("line-1's"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e:?}");
    let e = client.delete_secret(&at("shared-alias"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e:?}");
    assert_eq!(s.stored("edc/shared-alias").await.unwrap().content(), Some("line-2's"));
}

async fn the_old_marker_is_adopted_once_and_another_installations_is_foreign(target: Target) {
    let s = Stack::start(target).await;
    let client = s.client();
    let legacy = BTreeMap::from([
        (OWNER_KEY.to_owned(), "mqtt-dsp-operator".to_owned()),
        (OWNER_RESOURCE_KEY.to_owned(), owner().marker()),
    ]);
    s.plant("edc/old", Some(content("v1")), Some(legacy)).await;
    // Same value: the marker alone is rewritten (a write, once).
    assert_eq!(client.ensure_secret(&at("old"), &secret("v1"), &owner()).await.unwrap(), Outcome::Updated);
    assert_eq!(s.stored("edc/old").await.unwrap().custom_metadata, our_marker(&owner()));
    assert_eq!(client.ensure_secret(&at("old"), &secret("v1"), &owner()).await.unwrap(), Outcome::Unchanged);
    // To another installation the key is foreign.
    let staging = Owner { installation: "staging".into(), ..owner() };
    let e = client.ensure_secret(&at("old"), &secret("v2"), &staging).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e:?}");
    let e = client.delete_secret(&at("old"), &staging).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e:?}");
    assert_eq!(s.stored("edc/old").await.unwrap().content(), Some("v1"));
}

async fn marker_left_by_an_interrupted_create_is_completed(target: Target) {
    let s = Stack::start(target).await;
    let client = s.client();
    // The operator stopped after marking the key and before writing its first version.
    s.plant("edc/a", None, Some(our_marker(&owner()))).await;
    assert!(client.read_secret(&at("a"), &owner()).await.unwrap().is_none());
    assert_eq!(client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap(), Outcome::Created);
    assert_eq!(s.stored("edc/a").await.unwrap().content(), Some("v1"));
    // And a cleanup that finds only the marker removes it.
    s.plant("edc/b", None, Some(our_marker(&owner()))).await;
    assert_eq!(client.delete_secret(&at("b"), &owner()).await.unwrap(), Outcome::Deleted);
    assert!(s.stored("edc/b").await.is_none());
}

/// `create_secret`: what a new transfer uses when status records nothing; three requests for a
/// key that does not exist, and the general path for one that does.
async fn create_of_a_new_key_reads_only_its_metadata_and_meets_existing_keys_as_ensure_does(target: Target) {
    let s = Stack::start(target).await;
    let client = s.client();
    s.clear_log();
    assert_eq!(client.create_secret(&at("new"), &secret("v1"), &owner()).await.unwrap(), Outcome::Created);
    let stored = s.stored("edc/new").await.unwrap();
    assert_eq!((stored.content(), stored.current_version), (Some("v1"), 1));
    assert_eq!(stored.custom_metadata, our_marker(&owner()));
    if target == Target::Double {
        let requests: Vec<_> =
            s.double().server.log.all().into_iter().map(|r| format!("{} {}", r.method, r.path)).collect();
        assert_eq!(
            requests,
            ["GET /v1/secret/metadata/edc/new", "POST /v1/secret/metadata/edc/new", "POST /v1/secret/data/edc/new"],
            "metadata read, marker, value: no data read"
        );
    }

    // A key that exists after all: ours with another value is updated, ours with the same
    // value is left as it is, a marker left by an interrupted create is completed, and a
    // foreign one is refused without a write.
    assert_eq!(client.create_secret(&at("new"), &secret("v2"), &owner()).await.unwrap(), Outcome::Updated);
    assert_eq!(s.stored("edc/new").await.unwrap().content(), Some("v2"));
    assert_eq!(client.create_secret(&at("new"), &secret("v2"), &owner()).await.unwrap(), Outcome::Unchanged);
    s.plant("edc/marked", None, Some(our_marker(&owner()))).await;
    assert_eq!(client.create_secret(&at("marked"), &secret("v1"), &owner()).await.unwrap(), Outcome::Created);
    assert_eq!(s.stored("edc/marked").await.unwrap().content(), Some("v1"));
    s.plant_foreign("edc/theirs", "their-value").await;
    let before = s.write_record("edc/theirs").await;
    let e = client.create_secret(&at("theirs"), &secret("ours"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e:?}");
    assert_eq!(s.write_record("edc/theirs").await, before, "not a single write");
    let stored = s.stored("edc/theirs").await.unwrap();
    assert_eq!(stored.content(), Some("their-value"));
    assert!(stored.custom_metadata.is_empty(), "not claimed");
}

async fn paths_follow_mount_folder_and_alias(target: Target) {
    let s = Stack::start_at(target, "kv/edc").await;
    let client = s.client();
    let no_folder = SecretLocation { folder: None, alias: "plain".into() };
    let nested = SecretLocation { folder: Some("provider/mqtt".into()), alias: "line-1".into() };
    client.ensure_secret(&no_folder, &secret("a"), &owner()).await.unwrap();
    client.ensure_secret(&nested, &secret("b"), &owner()).await.unwrap();
    assert!(s.mount.starts_with("kv/edc"), "{}", s.mount);
    assert_eq!(client.path(&no_folder), format!("{}/data/plain", s.mount));
    assert_eq!(client.path(&nested), format!("{}/data/provider/mqtt/line-1", s.mount));
    assert_eq!(s.stored("plain").await.unwrap().content(), Some("a"));
    assert_eq!(s.stored("provider/mqtt/line-1").await.unwrap().content(), Some("b"));
    let bad = SecretLocation { folder: Some("edc".into()), alias: "../escape".into() };
    let e = client.ensure_secret(&bad, &secret("c"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Rejected { .. }), "{e:?}");
}

/// An unknown role (checked before the JWT goes to Kubernetes' TokenReview) and an unreadable
/// token file (no request at all).
async fn kubernetes_login_failures_before_any_token_review_are_reported(target: Target) {
    let s = Stack::start(target).await;
    let e = s.kubernetes_client("no-such-role", vault::DEFAULT_JWT).read_secret(&at("a"), &owner()).await.unwrap_err();
    assert!(
        matches!(&e, BackendError::Rejected { status: 400, message, .. } if message.contains("invalid role name")),
        "{e:?}"
    );
    assert!(!all_text(&e).contains(vault::DEFAULT_JWT));
    let auth = VaultAuthSettings::Kubernetes {
        role: vault::DEFAULT_ROLE.into(),
        mount: vault::KUBERNETES_AUTH_MOUNT.into(),
        service_account_token_path: "/nonexistent/token".into(),
    };
    let client = VaultClient::new(s.settings(auth, Duration::from_secs(5))).unwrap();
    let e = client.read_secret(&at("a"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Credential(_)), "{e:?}");
    if target == Target::Double {
        assert_eq!(s.double().logins(), 0);
    }
}

async fn errors_and_debug_output_never_contain_the_token_or_the_value(target: Target) {
    let s = Stack::start(target).await;
    let value = "s3cr3t-client-secret-value";
    let token = "hvs.not-a-valid-token-0123456789";
    let client = s.client_with_token(token);
    let e = client.ensure_secret(&at("a"), &secret(value), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Unauthorized { .. }));
    let text = all_text(&e);
    assert!(!text.contains(value) && !text.contains(token), "{text}");
    let settings = s.settings(VaultAuthSettings::Token(secret(token)), Duration::from_secs(1));
    let debug = format!("{settings:?} {:?}", VaultClient::new(settings.clone()).unwrap());
    assert!(!debug.contains(token), "{debug}");
    if let Backend::Real(real) = &s.backend {
        let log = real.log();
        assert!(log.contains("OpenBao server started"), "{log}");
        assert!(!log.contains(&s.root) && !log.contains(value), "the server's own log shows a secret");
    }
}

/// What the client relies on, and what the double imitates, in the server's own words.
async fn answers_like_vault(target: Target) {
    let s = Stack::start(target).await;
    let http = mqtt_dsp_operator::backends::http::client(
        mqtt_dsp_operator::backends::System::SecretStore,
        &HttpSettings { timeout: Duration::from_secs(5), ca_bundle_pem: Some(s.ca_pem.clone()) },
    )
    .unwrap();
    let m = s.mount.clone();
    let url = |path: &str| s.api_url(path);
    let answer = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        (status, if body.is_empty() { Value::Null } else { serde_json::from_str::<Value>(&body).unwrap() })
    };
    let root = s.root.as_str();
    let post = |path: String, body: Value| http.post(url(&path)).header("X-Vault-Token", root).json(&body).send();

    let r = http.get(url(&format!("{m}/data/x"))).send().await.unwrap();
    assert_eq!(answer(r).await, (403, json!({"errors": ["permission denied"]})), "no token");
    let r = http.get(url(&format!("{m}/data/x"))).header("X-Vault-Token", "wrong-token").send().await.unwrap();
    assert_eq!(answer(r).await, (403, json!({"errors": ["permission denied"]})), "wrong token");
    let r = http.get(url(&format!("{m}/data/x"))).header("X-Vault-Token", root).send().await.unwrap();
    assert_eq!(answer(r).await, (404, json!({"errors": []})));
    let r = http.post(url(&format!("{m}/data/x"))).header("X-Vault-Token", root).body("{not json").send().await;
    let (status, body) = answer(r.unwrap()).await;
    assert_eq!(status, 400);
    // Vault says "failed to parse JSON input: …", OpenBao "failed to decode JSON input: …".
    let message = body["errors"][0].as_str().unwrap();
    assert!(message.starts_with("failed to parse JSON input") || message.starts_with("failed to decode JSON input"));
    let r = post(format!("{m}/data/x"), json!({"content": "v"})).await.unwrap();
    assert_eq!(answer(r).await, (400, json!({"errors": ["no data provided"]})));
    let r = post(format!("{m}/data/x"), json!({"data": "v"})).await.unwrap();
    assert_eq!(
        answer(r).await,
        (
            400,
            json!({"errors": ["error converting input for field \"data\": '' expected type 'map[string]interface {}', got unconvertible type 'string'"]})
        )
    );
    let r = post(format!("{m}/data/x"), json!({"data": {"content": "v"}, "options": {"cas": null}})).await.unwrap();
    let (status, body) = answer(r).await;
    assert_eq!((status, &body["data"]["version"], &body["data"]["custom_metadata"]), (200, &json!(1), &Value::Null));
    for cas in [json!(0), json!(-1), json!("0")] {
        let r = post(format!("{m}/data/x"), json!({"data": {"content": "v"}, "options": {"cas": cas}})).await.unwrap();
        assert_eq!(
            answer(r).await,
            (400, json!({"errors": ["check-and-set parameter did not match the current version"]})),
            "cas {cas}"
        );
    }
    let r = post(format!("{m}/data/x"), json!({"data": {"content": "v"}, "options": {"cas": "one"}})).await.unwrap();
    assert_eq!(answer(r).await, (400, json!({"errors": ["error parsing check-and-set parameter"]})));
    let r = http.get(url(&format!("{m}/data/x"))).header("X-Vault-Token", root).send().await.unwrap();
    let (status, body) = answer(r).await;
    assert_eq!(
        (status, &body["data"]["data"], &body["data"]["metadata"]["custom_metadata"]),
        (200, &json!({"content": "v"}), &Value::Null)
    );
    for version in ["0", "-1"] {
        let r = http.get(url(&format!("{m}/data/x?version={version}"))).header("X-Vault-Token", root).send().await;
        let (status, body) = answer(r.unwrap()).await;
        assert_eq!((status, &body["data"]["metadata"]["version"]), (200, &json!(1)), "version {version}: the latest");
    }
    let r = http.get(url(&format!("{m}/data/x?version=7"))).header("X-Vault-Token", root).send().await.unwrap();
    assert_eq!(answer(r).await, (404, json!({"errors": []})));
    let r = http.get(url(&format!("{m}/data/x?version=abc"))).header("X-Vault-Token", root).send().await.unwrap();
    assert_eq!(answer(r).await.0, 400);

    // A version with data null is stored, and reads as such.
    let r = post(format!("{m}/data/null-data"), json!({"data": null})).await.unwrap();
    assert_eq!(answer(r).await.0, 200);
    let r = http.get(url(&format!("{m}/data/null-data"))).header("X-Vault-Token", root).send().await.unwrap();
    let (status, body) = answer(r).await;
    assert_eq!((status, &body["data"]["data"]), (200, &Value::Null));

    // custom_metadata: weakly typed values, every violation listed, {} and null clear it.
    let r = post(format!("{m}/metadata/x"), json!({"custom_metadata": {"n": 1.5, "t": true, "f": false}})).await;
    assert_eq!(answer(r.unwrap()).await.0, 204);
    let metadata = s.metadata("x").await.unwrap();
    assert_eq!(metadata["custom_metadata"], json!({"n": "1.5", "t": "1", "f": "0"}));
    assert_eq!((&metadata["current_version"], &metadata["oldest_version"]), (&json!(1), &json!(0)));
    let r = post(format!("{m}/metadata/x"), json!({"custom_metadata": {"k": "x".repeat(513), "": "v"}})).await;
    let (status, body) = answer(r.unwrap()).await;
    // Every violation is listed, in Go's "N errors occurred" form; their order follows Go's map
    // iteration, which is random, so they are compared as a set.
    let message = body["errors"][0].as_str().unwrap_or_default();
    let mut listed: Vec<&str> = message.lines().filter_map(|l| l.strip_prefix("\t* ")).collect();
    listed.sort_unstable();
    assert_eq!(
        (status, message.lines().next(), listed),
        (
            400,
            Some("2 errors occurred:"),
            vec![
                "custom_metadata validation failed: length of key \"\" is 0 but must be 0 < len(key) <= 128",
                "custom_metadata validation failed: length of value for key \"k\" is 513 but must be 0 < len(value) <= 512",
            ]
        ),
        "custom_metadata values are limited to 512 bytes, keys must not be empty: {body}"
    );
    let r = post(format!("{m}/metadata/x"), json!({"custom_metadata": {"a": ["b"]}})).await.unwrap();
    assert_eq!(
        answer(r).await,
        (
            400,
            json!({"errors": ["custom_metadata validation failed: '' expected type 'string', got unconvertible type '[]interface {}'"]})
        )
    );
    let r = post(format!("{m}/metadata/x"), json!({"custom_metadata": {}})).await.unwrap();
    assert_eq!(answer(r).await.0, 204);
    assert_eq!(s.metadata("x").await.unwrap()["custom_metadata"], Value::Null, "{{}} clears custom_metadata");
    let r = post(format!("{m}/metadata/y"), json!({"custom_metadata": null})).await.unwrap();
    assert_eq!(answer(r).await.0, 204);
    let metadata = s.metadata("y").await.expect("null custom_metadata still creates the key");
    assert_eq!((&metadata["custom_metadata"], &metadata["current_version"]), (&Value::Null, &json!(0)));
    let r = post(format!("{m}/metadata/z"), json!({"unknown": 1})).await.unwrap();
    assert_eq!(answer(r).await.0, 204);
    assert!(s.metadata("z").await.is_none(), "nothing known given, nothing created");

    let r = http.delete(url(&format!("{m}/metadata/never-existed"))).header("X-Vault-Token", root).send().await;
    assert_eq!(r.unwrap().status().as_u16(), 204, "Vault deletes idempotently");
    // The mount itself and "folders" are no keys.
    let r = http.get(url(&format!("{m}/data/"))).header("X-Vault-Token", root).send().await.unwrap();
    assert_eq!(answer(r).await, (404, json!({"errors": []})));
    let r = post(format!("{m}/data/edc/"), json!({"data": {"content": "v"}})).await.unwrap();
    assert_eq!(answer(r).await, (400, json!({"errors": ["cannot write to a path ending in '/'"]})));
    let r = http.get(url(&format!("{m}/x"))).header("X-Vault-Token", root).send().await.unwrap();
    let (status, body) = answer(r).await;
    assert_eq!((status, &body["data"]), (404, &Value::Null));
    assert!(body["warnings"][0].as_str().unwrap().starts_with("Invalid path for a versioned K/V secrets engine"));
    let r = http.get(url("nomount/data/x")).header("X-Vault-Token", root).send().await.unwrap();
    assert_eq!(
        answer(r).await,
        (404, json!({"errors": ["no handler for route \"nomount/data/x\". route entry not found."]}))
    );

    let r = http.post(url("auth/kubernetes/login")).json(&json!({"role": vault::DEFAULT_ROLE})).send().await.unwrap();
    assert_eq!(answer(r).await, (400, json!({"errors": ["missing jwt"]})));
    let r = http.post(url("auth/kubernetes/login")).json(&json!({"jwt": vault::DEFAULT_JWT})).send().await.unwrap();
    assert_eq!(answer(r).await, (400, json!({"errors": ["missing role"]})));
    let r = http.post(url("auth/token/renew-self")).header("X-Vault-Token", "nope").send().await.unwrap();
    assert_eq!(answer(r).await, (403, json!({"errors": ["permission denied"]})));
    let r = http.post(url("auth/token/renew-self")).header("X-Vault-Token", root).json(&json!({})).send().await;
    assert_eq!(answer(r.unwrap()).await, (400, json!({"errors": ["invalid lease ID"]})), "the root token has no lease");
}

/// Real only: the server stays within a test-sized footprint; the numbers are printed for
/// docs/dev-stack.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_server_starts_in_time_and_stays_small() {
    let real = Vault::shared().await.unwrap_or_else(|e| panic!("{e}"));
    let rss_mib = real.rss_kib().expect("the server's RSS") / 1024;
    println!(
        "OpenBao {}: started (initialised, unsealed, KV v2 mounted) in {:.2} s, RSS {rss_mib} MiB",
        e2e::systems::vault::VERSION,
        real.start_time.as_secs_f32()
    );
    assert!(rss_mib < 256, "{rss_mib} MiB");
    assert!(real.start_time < Duration::from_secs(20), "{:?}", real.start_time);
}

// ---- Double only ----

async fn double_stack() -> Stack {
    Stack::start(Target::Double).await
}

/// Double only: Vault before 1.10 answered a missing token with 400; OpenBao and newer Vault
/// cannot be made to.
#[tokio::test]
async fn missing_token_as_older_vault_answers_it_is_unauthorized() {
    let s = double_stack().await;
    s.double().set_missing_token_answer(MissingTokenAnswer::MissingClientToken);
    let e = s.client_with_token("").read_secret(&at("a"), &owner()).await;
    assert!(matches!(e, Err(BackendError::Unauthorized { status: 400, .. })), "older Vault: {e:?}");
}

/// Double only: another writer interposed between the client's read and its write.
/// Vault has no 409: its conflict is a check-and-set mismatch (400) when the key changed
/// between the client's read and its write.
#[tokio::test]
async fn concurrent_write_is_detected_and_decided_again() {
    let s = double_stack().await;
    let client = s.client();
    client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap();
    s.double().interpose_writes("edc/a", &["written-by-someone-else"]);
    s.clear_log();
    let outcome = client.ensure_secret(&at("a"), &secret("v2"), &owner()).await.unwrap();
    assert_eq!(outcome, Outcome::Updated);
    let stored = s.double().secret("edc/a").unwrap();
    assert_eq!(stored.content(), Some("v2"));
    assert_eq!(stored.current_version, 3, "v1, the other writer's, ours");
    assert_eq!(s.double().server.log.matching(|r| r.status == 400).len(), 1, "one refused write");
}

/// Double only: another writer interposed between the client's marker and its first version.
#[tokio::test]
async fn a_key_created_by_someone_else_while_we_create_it_is_left_to_them() {
    let s = double_stack().await;
    let client = s.client();
    // Absent when read; another writer gets its first version in before ours.
    s.double().interpose_writes("edc/fresh", &["created-by-someone-else"]);
    let e = client.ensure_secret(&at("fresh"), &secret("ours"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e:?}");
    let stored = s.double().secret("edc/fresh").unwrap();
    assert_eq!(stored.content(), Some("created-by-someone-else"), "the other writer's value was overwritten");
}

/// Double only: a writer interposed before each of the client's writes.
#[tokio::test]
async fn a_writer_that_keeps_winning_gives_a_retryable_error() {
    let s = double_stack().await;
    let client = s.client();
    client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap();
    s.double().interpose_writes("edc/a", &["x", "y", "z"]);
    let e = client.ensure_secret(&at("a"), &secret("v2"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Unavailable { .. }) && e.is_retryable(), "{e:?}");
    assert!(e.to_string().contains("check-and-set"), "says why: {e}");
}

/// Double only: a failure of the write itself, after the value was sent (interposed writers).
#[tokio::test]
async fn a_failed_write_never_shows_the_value_or_the_token() {
    let s = double_stack().await;
    let value = "s3cr3t-client-secret-value";
    let client = s.client();
    client.ensure_secret(&at("a"), &secret("old"), &owner()).await.unwrap();
    s.double().interpose_writes("edc/a", &["x", "y"]);
    let e = client.ensure_secret(&at("a"), &secret(value), &owner()).await.unwrap_err();
    let text = all_text(&e);
    assert!(!text.contains(value) && !text.contains(DOUBLE_ROOT), "{text}");
}

/// Double only: an injected 503.
#[tokio::test]
async fn server_error_is_unavailable_and_retryable() {
    let s = double_stack().await;
    let client = s.client();
    s.double().server.faults.fail_next(1, 503);
    let e = client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Unavailable { status: 503, .. }), "{e:?}");
    assert!(e.is_retryable());
    assert!(s.mutating().is_empty(), "nothing written after a failed read");
    assert_eq!(client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap(), Outcome::Created);
}

/// Double only: an injected stall.
#[tokio::test]
async fn stalled_vault_times_out() {
    let s = double_stack().await;
    let auth = VaultAuthSettings::Token(secret(DOUBLE_ROOT));
    let client = VaultClient::new(s.settings(auth, Duration::from_secs(1))).unwrap();
    s.double().server.faults.stall(true);
    let started = Instant::now();
    let e = client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Timeout { timeout_seconds: 1, .. }), "{e:?}");
    assert!(e.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
}

/// Double only (this and the Kubernetes-auth tests below): a successful Kubernetes login needs
/// a TokenReview API behind the real server's auth method; the double counts logins and
/// renewals and sets leases on demand.
#[tokio::test]
async fn kubernetes_login_happens_once_for_many_calls() {
    let s = double_stack().await;
    let client = s.kubernetes_client(vault::DEFAULT_ROLE, vault::DEFAULT_JWT);
    // Concurrent first calls wait for one login instead of starting their own.
    let calls = (0..8).map(|i| {
        let client = &client;
        async move { client.ensure_secret(&at(&format!("k{i}")), &secret("v"), &owner()).await }
    });
    for result in futures::future::join_all(calls).await {
        assert_eq!(result.unwrap(), Outcome::Created);
    }
    for i in 0..8 {
        client.read_secret(&at(&format!("k{i}")), &owner()).await.unwrap().unwrap();
    }
    assert_eq!((s.double().logins(), s.double().renewals()), (1, 0), "one login, the token reused as is");
    assert_eq!(s.forbidden(), 0);
}

/// Double only: revokes issued tokens on demand.
#[tokio::test]
async fn revoked_token_leads_to_one_login_and_success() {
    let s = double_stack().await;
    let client = s.kubernetes_client(vault::DEFAULT_ROLE, vault::DEFAULT_JWT);
    client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap();
    s.double().revoke_issued_tokens();
    let outcome = client.ensure_secret(&at("a"), &secret("v2"), &owner()).await.unwrap();
    assert_eq!(outcome, Outcome::Updated);
    assert_eq!(s.double().logins(), 2);
    assert_eq!(s.forbidden(), 1, "one refused call, then the new token");
    client.read_secret(&at("a"), &owner()).await.unwrap();
    assert_eq!(s.double().logins(), 2, "the new token is cached");
}

/// Double only: a policy refusal for login-issued tokens.
#[tokio::test]
async fn policy_refusal_does_not_cost_a_login_per_call() {
    let s = double_stack().await;
    s.double().deny_keys_under("edc/forbidden");
    let client = s.kubernetes_client(vault::DEFAULT_ROLE, vault::DEFAULT_JWT);
    client.read_secret(&at("allowed"), &owner()).await.unwrap();
    for _ in 0..5 {
        let e = client.read_secret(&at("forbidden"), &owner()).await.unwrap_err();
        assert!(matches!(e, BackendError::Unauthorized { status: 403, .. }), "{e:?}");
    }
    assert_eq!(s.double().logins(), 2, "one retry to rule out a revoked token, then no more");
    client.read_secret(&at("allowed"), &owner()).await.unwrap();
    assert_eq!(s.double().logins(), 2);
}

/// Double only: token leases set on demand.
#[tokio::test]
async fn token_is_renewed_before_its_lease_ends() {
    let s = double_stack().await;
    s.double().set_token_lease(Duration::from_secs(3), Duration::from_secs(3600), true);
    let client = s.kubernetes_client(vault::DEFAULT_ROLE, vault::DEFAULT_JWT);
    client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await; // past two thirds of 3 s
    client.read_secret(&at("a"), &owner()).await.unwrap();
    assert_eq!((s.double().logins(), s.double().renewals()), (1, 1), "renewed, not logged in again");
    tokio::time::sleep(Duration::from_millis(1200)).await; // past the original lease
    client.read_secret(&at("a"), &owner()).await.unwrap();
    assert_eq!(s.forbidden(), 0, "the token never lapsed");
    assert_eq!(s.double().logins(), 1);
}

/// Double only: token leases set on demand.
#[tokio::test]
async fn token_that_cannot_be_renewed_is_replaced_before_it_expires() {
    let s = double_stack().await;
    s.double().set_token_lease(Duration::from_secs(3), Duration::from_secs(3600), false);
    let client = s.kubernetes_client(vault::DEFAULT_ROLE, vault::DEFAULT_JWT);
    client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    client.read_secret(&at("a"), &owner()).await.unwrap();
    assert_eq!((s.double().logins(), s.double().renewals()), (2, 0));
    assert_eq!(s.forbidden(), 0, "replaced before Vault refused it");
}

/// Double only: token leases set on demand.
#[tokio::test]
async fn renewal_capped_by_max_ttl_is_followed_by_a_login() {
    let s = double_stack().await;
    // Login at 0 s with a 6 s lease; the renewal at 4 s is capped at the 8 s max TTL (3 s
    // granted, in whole seconds). At two thirds of that, renewing again would only be capped
    // again: the client logs in instead.
    s.double().set_token_lease(Duration::from_secs(6), Duration::from_secs(8), true);
    let client = s.kubernetes_client(vault::DEFAULT_ROLE, vault::DEFAULT_JWT);
    client.read_secret(&at("a"), &owner()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(4100)).await;
    client.read_secret(&at("a"), &owner()).await.unwrap();
    assert_eq!((s.double().logins(), s.double().renewals()), (1, 1));
    tokio::time::sleep(Duration::from_millis(2400)).await;
    client.read_secret(&at("a"), &owner()).await.unwrap();
    assert_eq!((s.double().logins(), s.double().renewals()), (2, 1), "no second capped renewal");
    assert_eq!(s.forbidden(), 0);
}

/// Double only: a configured role that rejects the service account token (on the real server
/// TokenReview decides that).
#[tokio::test]
async fn a_rejected_service_account_token_is_unauthorized_and_not_shown() {
    let s = double_stack().await;
    let wrong_jwt = "eyJhbGciOiJSUzI1NiJ9.d3Jvbmc.c2lnbmF0dXJl";
    let e = s.kubernetes_client(vault::DEFAULT_ROLE, wrong_jwt).read_secret(&at("a"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Unauthorized { status: 403, .. }), "{e:?}");
    assert!(!all_text(&e).contains(wrong_jwt));
    assert_eq!(s.double().logins(), 0);
}
