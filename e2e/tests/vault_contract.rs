//! The Vault client against the Vault double: the secret lands where and how the connector reads
//! it, ensure is idempotent, foreign secrets stay untouched, Vault's errors map to the shared
//! error variants, and Kubernetes-auth tokens are cached, renewed and replaced.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e::doubles::vault::{self, MissingTokenAnswer, VaultDouble, VaultDoubleConfig};
use e2e::tls::TestCa;
use mqtt_dsp_operator::backends::http::HttpSettings;
use mqtt_dsp_operator::backends::secrets::vault::{VaultAuthSettings, VaultClient, VaultSettings};
use mqtt_dsp_operator::backends::secrets::{SecretLocation, SecretStore};
use mqtt_dsp_operator::backends::{
    BackendError, ExposeSecret, OWNER_KEY, OWNER_RESOURCE_KEY, OWNER_VALUE, Outcome, Owner, SecretString,
};
use serde_json::{Map, Value, json};

const ROOT: &str = "root-token-for-tests";

struct Stack {
    ca: TestCa,
    vault: VaultDouble,
    jwt_files: std::sync::Mutex<Vec<PathBuf>>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for file in self.jwt_files.lock().unwrap().drain(..) {
            let _ = std::fs::remove_file(file);
        }
    }
}

async fn stack() -> Stack {
    stack_with(VaultDoubleConfig { root_token: ROOT.into(), ..Default::default() }).await
}

async fn stack_with(config: VaultDoubleConfig) -> Stack {
    mqtt_dsp_operator::install_crypto_provider();
    e2e::logs::init();
    e2e::logs::register_secret(ROOT);

    let ca = TestCa::new();
    let vault = vault::start_with(&ca, config).await.unwrap();
    Stack { ca, vault, jwt_files: Default::default() }
}

impl Stack {
    fn settings(&self, auth: VaultAuthSettings, timeout: Duration) -> VaultSettings {
        VaultSettings {
            url: self.vault.url(),
            kv_mount: self.vault.mount.clone(),
            auth,
            http: HttpSettings { timeout, ca_bundle_pem: Some(self.ca.cert_pem()) },
        }
    }
    fn client_with_token(&self, token: &str) -> VaultClient {
        let auth = VaultAuthSettings::Token(SecretString::from(token.to_owned()));
        VaultClient::new(self.settings(auth, Duration::from_secs(5))).unwrap()
    }
    fn client(&self) -> VaultClient {
        self.client_with_token(ROOT)
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
    fn mutating(&self) -> Vec<e2e::doubles::LoggedRequest> {
        self.vault.server.log.matching(|r| r.is_mutating())
    }
    fn forbidden(&self) -> usize {
        self.vault.server.log.matching(|r| r.status == 403).len()
    }
}

fn owner() -> Owner {
    Owner { kind: "MqttAsset".into(), namespace: "factory".into(), name: "line-1".into() }
}

fn other_owner() -> Owner {
    Owner { kind: "MqttAsset".into(), namespace: "factory".into(), name: "line-2".into() }
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
    BTreeMap::from([(OWNER_KEY.to_owned(), OWNER_VALUE.to_owned()), (OWNER_RESOURCE_KEY.to_owned(), owner.marker())])
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

#[tokio::test]
async fn ensure_creates_the_secret_where_and_how_edc_reads_it() {
    let s = stack().await;
    let client = s.client();
    let outcome = client.ensure_secret(&at("line-1-client-secret"), &secret("v1"), &owner()).await.unwrap();
    assert_eq!(outcome, Outcome::Created);

    // EDC reads {url}/v1/secret/data/{folder}/{alias} and only the key `content`.
    let stored = s.vault.secret("edc/line-1-client-secret").expect("stored under <folder>/<alias>");
    assert_eq!(stored.data, Some(content("v1")), "exactly {{\"content\": value}}");
    assert_eq!(stored.custom_metadata, our_marker(&owner()));
    assert_eq!(stored.current_version, 1);
    assert_eq!(client.path(&at("line-1-client-secret")), "secret/data/edc/line-1-client-secret");
    let writes: Vec<_> = s.mutating().into_iter().map(|r| (r.method, r.path)).collect();
    assert_eq!(
        writes,
        [
            ("POST".into(), "/v1/secret/metadata/edc/line-1-client-secret".into()),
            ("POST".into(), "/v1/secret/data/edc/line-1-client-secret".into()),
        ],
        "marker first, then the value"
    );

    let read = client.read_secret(&at("line-1-client-secret"), &owner()).await.unwrap();
    assert_eq!(read.unwrap().expose_secret(), "v1");
}

#[tokio::test]
async fn second_identical_ensure_makes_no_write() {
    let s = stack().await;
    let client = s.client();
    client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap();
    s.vault.server.log.clear();
    let outcome = client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap();
    assert_eq!(outcome, Outcome::Unchanged);
    assert!(s.mutating().is_empty(), "no write: {:?}", s.mutating());
    assert_eq!(s.vault.secret("edc/a").unwrap().current_version, 1);
}

#[tokio::test]
async fn different_value_is_written_as_a_new_version() {
    let s = stack().await;
    let client = s.client();
    client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap();
    s.vault.server.log.clear();
    let outcome = client.ensure_secret(&at("a"), &secret("v2"), &owner()).await.unwrap();
    assert_eq!(outcome, Outcome::Updated);
    let stored = s.vault.secret("edc/a").unwrap();
    assert_eq!(stored.content(), Some("v2"));
    assert_eq!(stored.current_version, 2);
    assert_eq!(stored.custom_metadata, our_marker(&owner()), "the marker survives an update");
    assert_eq!(s.mutating().len(), 1, "only the data write: {:?}", s.mutating());
}

#[tokio::test]
async fn wrong_token_is_unauthorized() {
    let s = stack().await;
    let e = s.client_with_token("not-the-root-token").ensure_secret(&at("a"), &secret("v1"), &owner()).await;
    assert!(matches!(e, Err(BackendError::Unauthorized { status: 403, .. })), "{e:?}");
    assert!(s.vault.secret("edc/a").is_none());
}

#[tokio::test]
async fn missing_token_is_unauthorized_in_both_answers_vault_gives() {
    let s = stack().await;
    let client = s.client_with_token("");
    let e = client.read_secret(&at("a"), &owner()).await;
    assert!(matches!(e, Err(BackendError::Unauthorized { status: 403, .. })), "newer Vault: {e:?}");
    s.vault.set_missing_token_answer(MissingTokenAnswer::MissingClientToken);
    let e = client.read_secret(&at("a"), &owner()).await;
    assert!(matches!(e, Err(BackendError::Unauthorized { status: 400, .. })), "older Vault: {e:?}");
}

#[tokio::test]
async fn absent_secret_reads_as_none_and_deletes_as_absent() {
    let s = stack().await;
    let client = s.client();
    assert!(client.read_secret(&at("nothing"), &owner()).await.unwrap().is_none());
    assert_eq!(client.delete_secret(&at("nothing"), &owner()).await.unwrap(), Outcome::Absent);
    assert!(s.mutating().is_empty(), "nothing to delete, nothing sent: {:?}", s.mutating());
}

#[tokio::test]
async fn delete_removes_the_secret_with_all_versions() {
    let s = stack().await;
    let client = s.client();
    client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap();
    client.ensure_secret(&at("a"), &secret("v2"), &owner()).await.unwrap();
    assert_eq!(client.delete_secret(&at("a"), &owner()).await.unwrap(), Outcome::Deleted);
    assert!(s.vault.secret("edc/a").is_none(), "metadata and versions are gone");
    assert_eq!(client.delete_secret(&at("a"), &owner()).await.unwrap(), Outcome::Absent);
}

/// Vault has no 409: its conflict is a check-and-set mismatch (400) when the key changed
/// between the client's read and its write.
#[tokio::test]
async fn concurrent_write_is_detected_and_decided_again() {
    let s = stack().await;
    let client = s.client();
    client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap();
    s.vault.interpose_writes("edc/a", &["written-by-someone-else"]);
    s.vault.server.log.clear();
    let outcome = client.ensure_secret(&at("a"), &secret("v2"), &owner()).await.unwrap();
    assert_eq!(outcome, Outcome::Updated);
    let stored = s.vault.secret("edc/a").unwrap();
    assert_eq!(stored.content(), Some("v2"));
    assert_eq!(stored.current_version, 3, "v1, the other writer's, ours");
    assert_eq!(s.vault.server.log.matching(|r| r.status == 400).len(), 1, "one refused write");
}

#[tokio::test]
async fn a_key_created_by_someone_else_while_we_create_it_is_left_to_them() {
    let s = stack().await;
    let client = s.client();
    // Absent when read; another writer gets its first version in before ours.
    s.vault.interpose_writes("edc/fresh", &["created-by-someone-else"]);
    let e = client.ensure_secret(&at("fresh"), &secret("ours"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e:?}");
    let stored = s.vault.secret("edc/fresh").unwrap();
    assert_eq!(stored.content(), Some("created-by-someone-else"), "the other writer's value was overwritten");
}

#[tokio::test]
async fn a_writer_that_keeps_winning_gives_a_retryable_error() {
    let s = stack().await;
    let client = s.client();
    client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap();
    s.vault.interpose_writes("edc/a", &["x", "y", "z"]);
    let e = client.ensure_secret(&at("a"), &secret("v2"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Unavailable { .. }) && e.is_retryable(), "{e:?}");
    assert!(e.to_string().contains("check-and-set"), "says why: {e}");
}

#[tokio::test]
async fn server_error_is_unavailable_and_retryable() {
    let s = stack().await;
    let client = s.client();
    s.vault.server.faults.fail_next(1, 503);
    let e = client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Unavailable { status: 503, .. }), "{e:?}");
    assert!(e.is_retryable());
    assert!(s.mutating().is_empty(), "nothing written after a failed read");
    assert_eq!(client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap(), Outcome::Created);
}

#[tokio::test]
async fn stalled_vault_times_out() {
    let s = stack().await;
    let auth = VaultAuthSettings::Token(secret(ROOT));
    let client = VaultClient::new(s.settings(auth, Duration::from_secs(1))).unwrap();
    s.vault.server.faults.stall(true);
    let started = Instant::now();
    let e = client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Timeout { timeout_seconds: 1, .. }), "{e:?}");
    assert!(e.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn foreign_secret_is_neither_overwritten_read_nor_deleted() {
    let s = stack().await;
    let client = s.client();
    // A Tractus-X refresh token in the same Vault.
    s.vault.plant_foreign("edc/a", "their-refresh-token");
    s.vault.server.log.clear();

    let e = client.ensure_secret(&at("a"), &secret("ours"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e:?}");
    let e = client.read_secret(&at("a"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e:?}");
    let e = client.delete_secret(&at("a"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e:?}");

    assert!(s.mutating().is_empty(), "not a single write: {:?}", s.mutating());
    let stored = s.vault.secret("edc/a").unwrap();
    assert_eq!(stored.content(), Some("their-refresh-token"));
    assert!(stored.custom_metadata.is_empty(), "not claimed");
    assert!(!all_text(&e).contains("their-refresh-token"));
}

#[tokio::test]
async fn foreign_secret_without_a_live_version_is_still_foreign() {
    let s = stack().await;
    let client = s.client();
    s.vault.plant_foreign("edc/a", "theirs");
    s.vault.delete_latest_version("edc/a");
    let e = client.ensure_secret(&at("a"), &secret("ours"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e:?}");
    let e = client.delete_secret(&at("a"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e:?}");
    assert_eq!(s.vault.secret("edc/a").unwrap().current_version, 1, "no version added");
}

#[tokio::test]
async fn secret_of_another_resource_is_foreign() {
    let s = stack().await;
    let client = s.client();
    client.ensure_secret(&at("shared-alias"), &secret("line-2's"), &other_owner()).await.unwrap();
    let e = client.ensure_secret(&at("shared-alias"), &secret("line-1's"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e:?}");
    let e = client.delete_secret(&at("shared-alias"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e:?}");
    assert_eq!(s.vault.secret("edc/shared-alias").unwrap().content(), Some("line-2's"));
}

#[tokio::test]
async fn marker_left_by_an_interrupted_create_is_completed() {
    let s = stack().await;
    let client = s.client();
    // The operator stopped after marking the key and before writing its first version.
    s.vault.plant("edc/a", None, Some(our_marker(&owner())));
    assert!(client.read_secret(&at("a"), &owner()).await.unwrap().is_none());
    assert_eq!(client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap(), Outcome::Created);
    assert_eq!(s.vault.secret("edc/a").unwrap().content(), Some("v1"));
    // And a cleanup that finds only the marker removes it.
    s.vault.plant("edc/b", None, Some(our_marker(&owner())));
    assert_eq!(client.delete_secret(&at("b"), &owner()).await.unwrap(), Outcome::Deleted);
    assert!(s.vault.secret("edc/b").is_none());
}

#[tokio::test]
async fn paths_follow_mount_folder_and_alias() {
    let s =
        stack_with(VaultDoubleConfig { root_token: ROOT.into(), mount: "kv/edc".into(), ..Default::default() }).await;
    let client = s.client();
    let no_folder = SecretLocation { folder: None, alias: "plain".into() };
    let nested = SecretLocation { folder: Some("provider/mqtt".into()), alias: "line-1".into() };
    client.ensure_secret(&no_folder, &secret("a"), &owner()).await.unwrap();
    client.ensure_secret(&nested, &secret("b"), &owner()).await.unwrap();
    assert_eq!(client.path(&no_folder), "kv/edc/data/plain");
    assert_eq!(client.path(&nested), "kv/edc/data/provider/mqtt/line-1");
    assert_eq!(s.vault.secret("plain").unwrap().content(), Some("a"));
    assert_eq!(s.vault.secret("provider/mqtt/line-1").unwrap().content(), Some("b"));
    let bad = SecretLocation { folder: Some("edc".into()), alias: "../escape".into() };
    let e = client.ensure_secret(&bad, &secret("c"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Rejected { .. }), "{e:?}");
}

#[tokio::test]
async fn kubernetes_login_happens_once_for_many_calls() {
    let s = stack().await;
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
    assert_eq!((s.vault.logins(), s.vault.renewals()), (1, 0), "one login, the token reused as is");
    assert_eq!(s.forbidden(), 0);
}

#[tokio::test]
async fn revoked_token_leads_to_one_login_and_success() {
    let s = stack().await;
    let client = s.kubernetes_client(vault::DEFAULT_ROLE, vault::DEFAULT_JWT);
    client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap();
    s.vault.revoke_issued_tokens();
    let outcome = client.ensure_secret(&at("a"), &secret("v2"), &owner()).await.unwrap();
    assert_eq!(outcome, Outcome::Updated);
    assert_eq!(s.vault.logins(), 2);
    assert_eq!(s.forbidden(), 1, "one refused call, then the new token");
    client.read_secret(&at("a"), &owner()).await.unwrap();
    assert_eq!(s.vault.logins(), 2, "the new token is cached");
}

#[tokio::test]
async fn policy_refusal_does_not_cost_a_login_per_call() {
    let s = stack().await;
    s.vault.deny_keys_under("edc/forbidden");
    let client = s.kubernetes_client(vault::DEFAULT_ROLE, vault::DEFAULT_JWT);
    client.read_secret(&at("allowed"), &owner()).await.unwrap();
    for _ in 0..5 {
        let e = client.read_secret(&at("forbidden"), &owner()).await.unwrap_err();
        assert!(matches!(e, BackendError::Unauthorized { status: 403, .. }), "{e:?}");
    }
    assert_eq!(s.vault.logins(), 2, "one retry to rule out a revoked token, then no more");
    client.read_secret(&at("allowed"), &owner()).await.unwrap();
    assert_eq!(s.vault.logins(), 2);
}

#[tokio::test]
async fn token_is_renewed_before_its_lease_ends() {
    let s = stack().await;
    s.vault.set_token_lease(Duration::from_secs(3), Duration::from_secs(3600), true);
    let client = s.kubernetes_client(vault::DEFAULT_ROLE, vault::DEFAULT_JWT);
    client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await; // past two thirds of 3 s
    client.read_secret(&at("a"), &owner()).await.unwrap();
    assert_eq!((s.vault.logins(), s.vault.renewals()), (1, 1), "renewed, not logged in again");
    tokio::time::sleep(Duration::from_millis(1200)).await; // past the original lease
    client.read_secret(&at("a"), &owner()).await.unwrap();
    assert_eq!(s.forbidden(), 0, "the token never lapsed");
    assert_eq!(s.vault.logins(), 1);
}

#[tokio::test]
async fn token_that_cannot_be_renewed_is_replaced_before_it_expires() {
    let s = stack().await;
    s.vault.set_token_lease(Duration::from_secs(3), Duration::from_secs(3600), false);
    let client = s.kubernetes_client(vault::DEFAULT_ROLE, vault::DEFAULT_JWT);
    client.ensure_secret(&at("a"), &secret("v1"), &owner()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    client.read_secret(&at("a"), &owner()).await.unwrap();
    assert_eq!((s.vault.logins(), s.vault.renewals()), (2, 0));
    assert_eq!(s.forbidden(), 0, "replaced before Vault refused it");
}

#[tokio::test]
async fn renewal_capped_by_max_ttl_is_followed_by_a_login() {
    let s = stack().await;
    // Login at 0 s with a 6 s lease; the renewal at 4 s is capped at the 8 s max TTL (3 s
    // granted, in whole seconds). At two thirds of that, renewing again would only be capped
    // again: the client logs in instead.
    s.vault.set_token_lease(Duration::from_secs(6), Duration::from_secs(8), true);
    let client = s.kubernetes_client(vault::DEFAULT_ROLE, vault::DEFAULT_JWT);
    client.read_secret(&at("a"), &owner()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(4100)).await;
    client.read_secret(&at("a"), &owner()).await.unwrap();
    assert_eq!((s.vault.logins(), s.vault.renewals()), (1, 1));
    tokio::time::sleep(Duration::from_millis(2400)).await;
    client.read_secret(&at("a"), &owner()).await.unwrap();
    assert_eq!((s.vault.logins(), s.vault.renewals()), (2, 1), "no second capped renewal");
    assert_eq!(s.forbidden(), 0);
}

#[tokio::test]
async fn kubernetes_login_failures_are_reported_without_the_jwt() {
    let s = stack().await;
    let e = s.kubernetes_client("no-such-role", vault::DEFAULT_JWT).read_secret(&at("a"), &owner()).await.unwrap_err();
    assert!(
        matches!(&e, BackendError::Rejected { status: 400, message, .. } if message.contains("invalid role name")),
        "{e:?}"
    );
    let wrong_jwt = "eyJhbGciOiJSUzI1NiJ9.d3Jvbmc.c2lnbmF0dXJl";
    let e = s.kubernetes_client(vault::DEFAULT_ROLE, wrong_jwt).read_secret(&at("a"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Unauthorized { status: 403, .. }), "{e:?}");
    assert!(!all_text(&e).contains(wrong_jwt));
    let auth = VaultAuthSettings::Kubernetes {
        role: vault::DEFAULT_ROLE.into(),
        mount: vault::KUBERNETES_AUTH_MOUNT.into(),
        service_account_token_path: "/nonexistent/token".into(),
    };
    let client = VaultClient::new(s.settings(auth, Duration::from_secs(5))).unwrap();
    let e = client.read_secret(&at("a"), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Credential(_)), "{e:?}");
    assert_eq!(s.vault.logins(), 0);
}

#[tokio::test]
async fn errors_and_debug_output_never_contain_secrets() {
    let s = stack().await;
    let value = "s3cr3t-client-secret-value";
    let token = "hvs.not-a-valid-token-0123456789";
    let client = s.client_with_token(token);
    let e = client.ensure_secret(&at("a"), &secret(value), &owner()).await.unwrap_err();
    assert!(matches!(e, BackendError::Unauthorized { .. }));
    let text = all_text(&e);
    assert!(!text.contains(value) && !text.contains(token), "{text}");
    // A failure on the write itself, after the value was sent.
    let client = s.client();
    client.ensure_secret(&at("a"), &secret("old"), &owner()).await.unwrap();
    s.vault.interpose_writes("edc/a", &["x", "y"]);
    let e = client.ensure_secret(&at("a"), &secret(value), &owner()).await.unwrap_err();
    let text = all_text(&e);
    assert!(!text.contains(value) && !text.contains(ROOT), "{text}");
    let settings = s.settings(VaultAuthSettings::Token(secret(token)), Duration::from_secs(1));
    let debug = format!("{settings:?} {:?}", VaultClient::new(settings.clone()).unwrap());
    assert!(!debug.contains(token), "{debug}");
}

/// The double refuses what Vault refuses, in Vault's shape.
#[tokio::test]
async fn double_answers_like_vault() {
    let s = stack().await;
    let http = mqtt_dsp_operator::backends::http::client(
        mqtt_dsp_operator::backends::System::SecretStore,
        &HttpSettings { timeout: Duration::from_secs(5), ca_bundle_pem: Some(s.ca.cert_pem()) },
    )
    .unwrap();
    let url = |path: &str| format!("{}/v1/{path}", s.vault.server.base_url);
    let answer = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        (status, if body.is_empty() { Value::Null } else { serde_json::from_str::<Value>(&body).unwrap() })
    };

    let r = http.get(url("secret/data/x")).send().await.unwrap();
    assert_eq!(answer(r).await, (403, json!({"errors": ["permission denied"]})));
    let r = http.get(url("secret/data/x")).header("X-Vault-Token", ROOT).send().await.unwrap();
    assert_eq!(answer(r).await, (404, json!({"errors": []})));
    let r = http.post(url("secret/data/x")).header("X-Vault-Token", ROOT).body("{not json").send().await.unwrap();
    let (status, body) = answer(r).await;
    assert_eq!(status, 400);
    assert!(body["errors"][0].as_str().unwrap().starts_with("failed to parse JSON input"), "{body}");
    let r = http.post(url("secret/data/x")).header("X-Vault-Token", ROOT).json(&json!({"content": "v"})).send().await;
    assert_eq!(answer(r.unwrap()).await, (400, json!({"errors": ["no data provided"]})));
    let r = http.post(url("secret/data/x")).header("X-Vault-Token", ROOT).json(&json!({"data": {"content": "v"}}));
    let (status, body) = answer(r.send().await.unwrap()).await;
    assert_eq!((status, &body["data"]["version"]), (200, &json!(1)));
    let r = http.post(url("secret/data/x")).header("X-Vault-Token", ROOT);
    let r = r.json(&json!({"data": {"content": "v"}, "options": {"cas": 0}})).send().await.unwrap();
    assert_eq!(
        answer(r).await,
        (400, json!({"errors": ["check-and-set parameter did not match the current version"]}))
    );
    let r = http.get(url("secret/data/x")).header("X-Vault-Token", ROOT).send().await.unwrap();
    let (status, body) = answer(r).await;
    assert_eq!(
        (status, &body["data"]["data"], &body["data"]["metadata"]["custom_metadata"]),
        (200, &json!({"content": "v"}), &Value::Null)
    );
    let r = http.post(url("secret/metadata/x")).header("X-Vault-Token", ROOT);
    let r = r.json(&json!({"custom_metadata": {"k": "x".repeat(513)}})).send().await.unwrap();
    assert_eq!(answer(r).await.0, 400, "custom_metadata values are limited to 512 bytes");
    let r = http.delete(url("secret/metadata/never-existed")).header("X-Vault-Token", ROOT).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 204, "Vault deletes idempotently");
    let r = http.get(url("nomount/data/x")).header("X-Vault-Token", ROOT).send().await.unwrap();
    assert_eq!(answer(r).await.0, 404);
    let r = http.post(url("auth/kubernetes/login")).json(&json!({"role": vault::DEFAULT_ROLE})).send().await.unwrap();
    assert_eq!(answer(r).await, (400, json!({"errors": ["missing jwt"]})));
    let r = http.post(url("auth/token/renew-self")).header("X-Vault-Token", "nope").send().await.unwrap();
    assert_eq!(answer(r).await, (403, json!({"errors": ["permission denied"]})));
}
