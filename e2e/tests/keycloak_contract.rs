//! The Keycloak client (`operator/src/backends/identity/keycloak.rs`) against two targets from
//! the same test code: the real Keycloak (`e2e/src/systems/keycloak.rs`, a realm per test) and
//! the Keycloak double (`e2e/src/doubles/keycloak.rs`). What ends up in Keycloak, what it costs
//! in writes and logins, and how each failure reaches the controller.
//!
//! Each test body is `async fn name(target: Target)`; `both!` makes `real::name` and
//! `double::name` of it. On the real server, the double's request log is replaced by Keycloak's
//! own records: admin events (the operator's writes) and `CLIENT_LOGIN` events (its logins);
//! reads leave no record there, so request counts that include reads are checked on the double
//! only. Tests that need what only the double can do (injected 5xx, latency and stalls, admin
//! tokens expiring or revoked on demand, Keycloak 25's error codes, tokens signed by a foreign
//! key) are `double_only` and say why.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::doubles::keycloak::{self, KeycloakDouble, StoredClient, StoredMapper};
use e2e::systems::keycloak::{Keycloak, Realm};
use e2e::tls::TestCa;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mqtt_dsp_operator::backends::http::HttpSettings;
use mqtt_dsp_operator::backends::identity::keycloak::{KeycloakClient, KeycloakSettings};
use mqtt_dsp_operator::backends::identity::{ClientDefinition, HardcodedClaim, IdentityProvider};
use mqtt_dsp_operator::backends::{
    BackendError, ExposeSecret, OWNER_KEY, OWNER_RESOURCE_KEY, OWNER_VALUE, Outcome, Owner, SecretString,
};
use reqwest::Method;
use serde_json::{Value, json};
use url::Url;

const REALM: &str = "dataspace";
const OPERATOR: &str = "mqtt-dsp-operator";
const OPERATOR_SECRET: &str = "operator-secret-7f3a9c";

/// Where a test runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Real,
    Double,
}

enum Backend {
    Double(KeycloakDouble),
    Real { kc: &'static Keycloak, realm: Realm },
}

/// One write to the Admin API, as the double's request log or Keycloak's admin events show it.
#[derive(Clone, Debug, PartialEq)]
struct Write {
    /// `CREATE`, `UPDATE`, `DELETE` or `ACTION` (Keycloak's operation types).
    operation: String,
    /// `CLIENT` or `PROTOCOL_MAPPER`.
    resource: String,
}

fn write(operation: &str, resource: &str) -> Write {
    Write { operation: operation.into(), resource: resource.into() }
}

struct Stack {
    ca_pem: String,
    base_url: String,
    realm: String,
    backend: Backend,
}

impl Stack {
    async fn start(target: Target) -> Self {
        mqtt_dsp_operator::install_crypto_provider();
        e2e::logs::init();
        e2e::logs::register_secret(OPERATOR_SECRET);
        match target {
            Target::Double => {
                let ca = TestCa::new();
                let kc = keycloak::start(&ca, REALM, OPERATOR, OPERATOR_SECRET).await.unwrap();
                Self {
                    ca_pem: ca.cert_pem(),
                    base_url: kc.server.base_url.clone(),
                    realm: REALM.into(),
                    backend: Backend::Double(kc),
                }
            }
            Target::Real => {
                let kc = Keycloak::shared().await.unwrap_or_else(|e| panic!("{e}"));
                let realm = kc.create_realm(REALM, OPERATOR, OPERATOR_SECRET).await.unwrap();
                Self {
                    ca_pem: kc.ca_pem.clone(),
                    base_url: realm.base_url.clone(),
                    realm: realm.name.clone(),
                    backend: Backend::Real { kc, realm },
                }
            }
        }
    }

    /// The double, for what only it can do.
    fn double(&self) -> &KeycloakDouble {
        match &self.backend {
            Backend::Double(kc) => kc,
            Backend::Real { .. } => panic!("double-only step on the real Keycloak"),
        }
    }

    fn settings(&self, secret: &str, timeout: Duration) -> KeycloakSettings {
        KeycloakSettings {
            base_url: Url::parse(&self.base_url).unwrap(),
            realm: self.realm.clone(),
            client_id: OPERATOR.into(),
            client_secret: SecretString::from(secret.to_owned()),
            public_token_url: Url::parse("https://login.example.org/realms/dataspace/protocol/openid-connect/token")
                .unwrap(),
            http: HttpSettings { timeout, ca_bundle_pem: Some(self.ca_pem.clone()) },
        }
    }

    fn client(&self) -> KeycloakClient {
        KeycloakClient::new(self.settings(OPERATOR_SECRET, Duration::from_secs(10))).unwrap()
    }

    fn http(&self) -> reqwest::Client {
        let cert = reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap();
        reqwest::Client::builder().tls_certs_only([cert]).build().unwrap()
    }

    fn issuer(&self) -> String {
        format!("{}/realms/{}", self.base_url, self.realm)
    }
    fn token_url(&self) -> String {
        format!("{}/protocol/openid-connect/token", self.issuer())
    }
    fn jwks_url(&self) -> String {
        format!("{}/protocol/openid-connect/certs", self.issuer())
    }
    fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer())
    }
    fn admin_url(&self) -> String {
        format!("{}/admin/realms/{}", self.base_url, self.realm)
    }

    /// A master-realm Admin API call on the test's realm (real target only).
    async fn admin(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let Backend::Real { kc, realm } = &self.backend else { panic!("admin calls go to the real Keycloak") };
        let path = if path.is_empty() { realm.name.clone() } else { format!("{}/{path}", realm.name) };
        kc.admin(method, &path, body).await.unwrap()
    }

    /// The client with this clientId as Keycloak holds it.
    async fn stored(&self, client_id: &str) -> Option<StoredClient> {
        if let Backend::Double(kc) = &self.backend {
            return kc.client(client_id);
        }
        let (status, list) = self.admin(Method::GET, &format!("clients?clientId={client_id}"), None).await;
        assert_eq!(status, 200, "{list}");
        let rep = list.as_array()?.first()?.clone();
        let id = rep["id"].as_str().unwrap().to_owned();
        let (_, secret) = self.admin(Method::GET, &format!("clients/{id}/client-secret"), None).await;
        // Keycloak made it: the double registers its own, here the test does.
        e2e::logs::register_secret(secret["value"].as_str().unwrap_or_default());
        let (_, user) = self.admin(Method::GET, &format!("clients/{id}/service-account-user"), None).await;
        let secret = secret["value"].as_str().unwrap_or_default().to_owned();
        Some(StoredClient::from_representation(&rep, secret, user["id"].as_str().unwrap_or_default().to_owned()))
    }

    /// Changes a client behind the operator's back, as an administrator would.
    async fn edit_client(&self, client_id: &str, edit: impl FnOnce(&mut StoredClient)) {
        if let Backend::Double(kc) = &self.backend {
            assert!(kc.edit_client(client_id, edit));
            return;
        }
        let before = self.stored(client_id).await.expect("client to edit");
        let mut after = before.clone();
        edit(&mut after);
        let body = e2e::stack::keycloak::client_update(&before, &after);
        let id = &before.id;
        let (status, answer) = self.admin(Method::PUT, &format!("clients/{id}"), Some(&body)).await;
        assert_eq!(status, 204, "{answer}");
        let mapper_body = |m: &StoredMapper, with_id: bool| {
            let mut rep = json!({"name": m.name, "protocol": m.protocol, "protocolMapper": m.protocol_mapper,
                                 "config": m.config});
            if with_id {
                rep["id"] = Value::from(m.id.clone());
            }
            rep
        };
        for old in &before.protocol_mappers {
            match after.protocol_mappers.iter().find(|m| m.id == old.id) {
                None => {
                    let (status, answer) = self
                        .admin(Method::DELETE, &format!("clients/{id}/protocol-mappers/models/{}", old.id), None)
                        .await;
                    assert_eq!(status, 204, "{answer}");
                }
                Some(new) if new != old => {
                    let path = format!("clients/{id}/protocol-mappers/models/{}", old.id);
                    let (status, answer) = self.admin(Method::PUT, &path, Some(&mapper_body(new, true))).await;
                    assert_eq!(status, 204, "{answer}");
                }
                Some(_) => {}
            }
        }
        for new in after.protocol_mappers.iter().filter(|m| !before.protocol_mappers.iter().any(|o| o.id == m.id)) {
            let path = format!("clients/{id}/protocol-mappers/models");
            let (status, answer) = self.admin(Method::POST, &path, Some(&mapper_body(new, false))).await;
            assert_eq!(status, 201, "{answer}");
        }
    }

    /// Adds a client as an administrator would (no ownership marker unless in `attributes`).
    async fn insert_client(&self, client_id: &str, attributes: BTreeMap<String, String>) {
        if let Backend::Double(kc) = &self.backend {
            kc.insert_client(client_id, attributes);
            return;
        }
        let body = json!({
            "clientId": client_id, "description": "made by hand", "publicClient": false,
            "serviceAccountsEnabled": true, "standardFlowEnabled": false, "attributes": attributes,
        });
        let (status, answer) = self.admin(Method::POST, "clients", Some(&body)).await;
        assert_eq!(status, 201, "{answer}");
        // Secrets of clients made here are test data too.
        if let Some(c) = self.stored(client_id).await {
            e2e::logs::register_secret(&c.secret);
        }
    }

    /// Forgets the writes so far (to look at what one step did).
    async fn forget_writes(&self) {
        match &self.backend {
            Backend::Double(kc) => kc.server.log.clear(),
            Backend::Real { .. } => {
                let (status, answer) = self.admin(Method::DELETE, "admin-events", None).await;
                assert_eq!(status, 204, "{answer}");
            }
        }
    }

    /// The operator's successful Admin API writes since the last [`Stack::forget_writes`], oldest
    /// first (administrator edits made by the test are not counted).
    async fn writes(&self) -> Vec<Write> {
        match &self.backend {
            Backend::Double(kc) => kc
                .server
                .log
                .matching(|r| r.is_mutating() && r.path.starts_with("/admin/") && r.status < 400)
                .into_iter()
                .map(|r| {
                    let operation =
                        match (r.method.as_str(), r.path.ends_with("/clients") || r.path.ends_with("/models")) {
                            ("POST", true) => "CREATE",
                            ("POST", false) => "ACTION",
                            ("PUT", _) => "UPDATE",
                            ("DELETE", _) => "DELETE",
                            (other, _) => panic!("unexpected write {other}"),
                        };
                    let resource = if r.path.contains("/protocol-mappers/") { "PROTOCOL_MAPPER" } else { "CLIENT" };
                    write(operation, resource)
                })
                .collect(),
            Backend::Real { .. } => {
                let (status, events) = self.admin(Method::GET, "admin-events?max=1000", None).await;
                assert_eq!(status, 200, "{events}");
                let mut writes: Vec<Write> = events
                    .as_array()
                    .unwrap()
                    .iter()
                    // The operator logs in to this realm; the test's administrator to master.
                    .filter(|e| e["authDetails"]["realmId"] == self.realm.as_str())
                    .map(|e| write(e["operationType"].as_str().unwrap(), e["resourceType"].as_str().unwrap()))
                    .collect();
                writes.reverse();
                writes
            }
        }
    }

    /// Successful client_credentials grants of a client so far.
    async fn logins(&self, client_id: &str) -> usize {
        match &self.backend {
            Backend::Double(kc) => kc.logins(client_id) as usize,
            Backend::Real { .. } => {
                let path = format!("events?type=CLIENT_LOGIN&client={client_id}&max=1000");
                let (status, events) = self.admin(Method::GET, &path, None).await;
                assert_eq!(status, 200, "{events}");
                events.as_array().unwrap().len()
            }
        }
    }

    /// An admin token obtained the way the operator gets one (for raw requests).
    async fn operator_token(&self) -> String {
        let response = self
            .http()
            .post(self.token_url())
            .form(&[("grant_type", "client_credentials"), ("client_id", OPERATOR), ("client_secret", OPERATOR_SECRET)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let token = response.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
        e2e::logs::register_secret(&token);
        token
    }
}

e2e::both!(
    create_then_read_back_as_keycloak_holds_it,
    a_second_identical_ensure_writes_nothing,
    a_changed_definition_updates_only_what_differs,
    drift_made_by_hand_is_repaired_and_foreign_mappers_are_left_alone,
    the_operator_logs_in_once_across_many_calls,
    wrong_operator_credentials_are_unauthorized_and_never_shown,
    a_token_of_a_client_without_admin_rights_is_forbidden,
    a_foreign_client_is_neither_updated_nor_deleted_nor_its_secret_read,
    a_client_of_another_resource_is_foreign_too,
    delete_removes_our_client_and_deleting_an_absent_one_is_absent,
    the_issued_jwt_carries_audience_and_claims_and_verifies_against_the_jwks,
    a_refresh_token_comes_only_when_enabled,
    disabling_a_client_makes_issue_token_fail,
    a_wrong_client_secret_is_rejected_without_showing_it,
    keycloak_answers_as_the_client_relies_on,
);

fn owner(name: &str) -> Owner {
    Owner { installation: "test".into(), kind: "MqttTransfer".into(), namespace: "factory".into(), name: name.into() }
}

fn transfer_client(name: &str) -> ClientDefinition {
    ClientDefinition {
        client_id: format!("dsp-mqtt-{name}"),
        description: format!("MqttTransfer factory/{name}"),
        enabled: true,
        access_token_lifespan_seconds: Some(120),
        refresh_tokens_for_client_credentials: true,
        audience: Some("mqtt-broker".into()),
        claims: vec![
            HardcodedClaim { name: "mqtt_topic".into(), value: json!("sensors/line-1/#") },
            HardcodedClaim { name: "acl".into(), value: json!({"sub": ["sensors/line-1/#"], "pub": []}) },
        ],
        owner: owner(name),
    }
}

fn assert_no_secret(error: &BackendError, secret: &str) {
    let mut texts = vec![error.to_string(), format!("{error:?}")];
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        texts.push(s.to_string());
        source = s.source();
    }
    for text in texts {
        assert!(!text.contains(secret), "an error shows the secret: {text}");
    }
}

/// Verifies a token against the realm's JWKS as fetched over HTTPS.
async fn verify(stack: &Stack, token: &str, audience: &str) -> Result<Value, jsonwebtoken::errors::Error> {
    let jwks: JwkSet = stack.http().get(stack.jwks_url()).send().await.unwrap().json().await.unwrap();
    let header = jsonwebtoken::decode_header(token)?;
    let kid = header.kid.clone().unwrap_or_default();
    let jwk = jwks.find(&kid).expect("the token's kid is in the JWKS");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[stack.issuer()]);
    validation.leeway = 0;
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk)?, &validation).map(|d| d.claims)
}

fn warm_up_owner() -> Owner {
    Owner {
        installation: "test".into(),
        kind: "MqttTransfer".into(),
        namespace: "dataspace".into(),
        name: "warm-up".into(),
    }
}

async fn create_then_read_back_as_keycloak_holds_it(target: Target) {
    let stack = Stack::start(target).await;
    let client = stack.client();
    let def = transfer_client("t1");
    stack.forget_writes().await;

    assert_eq!(client.ensure_client(&def).await.unwrap(), Outcome::Created);

    let stored = stack.stored(&def.client_id).await.expect("client created");
    assert!(!stored.public_client && stored.service_accounts_enabled);
    assert!(!stored.standard_flow_enabled && !stored.direct_access_grants_enabled && !stored.implicit_flow_enabled);
    assert_eq!(stored.client_authenticator_type, "client-secret");
    assert!(stored.enabled);
    assert_eq!(stored.description.as_deref(), Some("MqttTransfer factory/t1"));
    let attrs = &stored.attributes;
    assert_eq!(attrs[OWNER_KEY], "mqtt-dsp-operator/test");
    assert_eq!(attrs[OWNER_RESOURCE_KEY], "MqttTransfer/factory/t1");
    assert_eq!(attrs["client_credentials.use_refresh_token"], "true");
    assert_eq!(attrs["access.token.lifespan"], "120");

    let audience = stored.mapper("dsp-mqtt-audience").expect("audience mapper");
    assert_eq!(audience.protocol_mapper, "oidc-audience-mapper");
    assert_eq!(audience.config["included.custom.audience"], "mqtt-broker");
    assert_eq!(audience.config["access.token.claim"], "true");
    let topic = stored.mapper("dsp-mqtt-claim-mqtt_topic").expect("string claim mapper");
    assert_eq!(topic.protocol_mapper, "oidc-hardcoded-claim-mapper");
    assert_eq!(topic.config["claim.name"], "mqtt_topic");
    assert_eq!(topic.config["claim.value"], "sensors/line-1/#");
    assert_eq!(topic.config["jsonType.label"], "String");
    assert_eq!(topic.config["access.token.claim"], "true");
    let acl = stored.mapper("dsp-mqtt-claim-acl").expect("JSON claim mapper");
    assert_eq!(acl.config["jsonType.label"], "JSON");
    assert_eq!(
        serde_json::from_str::<Value>(&acl.config["claim.value"]).unwrap(),
        json!({"sub": ["sensors/line-1/#"], "pub": []})
    );

    // One create carrying the mappers: no follow-up writes.
    assert_eq!(stack.writes().await, vec![write("CREATE", "CLIENT")]);
    if target == Target::Double {
        let posts = stack.double().server.log.matching(|r| r.is_mutating() && r.path.starts_with("/admin/"));
        assert_eq!((posts[0].method.as_str(), posts[0].status), ("POST", 201));
    }

    let secret = client.client_secret(&def.client_id, &def.owner).await.unwrap();
    assert_eq!(secret.expose_secret(), stored.secret);
    assert_eq!(client.token_url(), "https://login.example.org/realms/dataspace/protocol/openid-connect/token");
}

async fn a_second_identical_ensure_writes_nothing(target: Target) {
    let stack = Stack::start(target).await;
    let client = stack.client();
    let def = transfer_client("t1");
    client.ensure_client(&def).await.unwrap();
    stack.forget_writes().await;

    assert_eq!(client.ensure_client(&def).await.unwrap(), Outcome::Unchanged);

    assert_eq!(stack.writes().await, vec![]);
    assert_eq!(stack.logins(OPERATOR).await, 1, "no new login");
    if target == Target::Double {
        // Reads leave no trace on the real server.
        assert_eq!(stack.double().server.log.all().len(), 1, "one GET finds the client with its mappers");
    }
}

async fn a_changed_definition_updates_only_what_differs(target: Target) {
    let stack = Stack::start(target).await;
    let client = stack.client();
    let mut def = transfer_client("t1");
    client.ensure_client(&def).await.unwrap();
    stack.forget_writes().await;

    def.description = "suspended".into();
    def.enabled = false;
    def.access_token_lifespan_seconds = None;
    def.audience = None;
    def.claims[0].value = json!("sensors/line-2/#");
    assert_eq!(client.ensure_client(&def).await.unwrap(), Outcome::Updated);

    assert_eq!(
        stack.writes().await,
        vec![write("UPDATE", "CLIENT"), write("UPDATE", "PROTOCOL_MAPPER"), write("DELETE", "PROTOCOL_MAPPER")],
        "client PUT, one mapper PUT, one mapper DELETE"
    );

    let stored = stack.stored(&def.client_id).await.unwrap();
    assert!(!stored.enabled);
    assert_eq!(stored.description.as_deref(), Some("suspended"));
    assert!(!stored.attributes.contains_key("access.token.lifespan"), "cleared back to the realm default");
    assert!(stored.mapper("dsp-mqtt-audience").is_none());
    assert_eq!(stored.mapper("dsp-mqtt-claim-mqtt_topic").unwrap().config["claim.value"], "sensors/line-2/#");
    assert_eq!(stored.attributes[OWNER_KEY], "mqtt-dsp-operator/test", "the marker survives updates");

    stack.forget_writes().await;
    assert_eq!(client.ensure_client(&def).await.unwrap(), Outcome::Unchanged);
    assert_eq!(stack.writes().await, vec![]);
}

async fn drift_made_by_hand_is_repaired_and_foreign_mappers_are_left_alone(target: Target) {
    let stack = Stack::start(target).await;
    let client = stack.client();
    let def = transfer_client("t1");
    client.ensure_client(&def).await.unwrap();
    stack
        .edit_client(&def.client_id, |c| {
            c.direct_access_grants_enabled = true;
            c.protocol_mappers.retain(|m| m.name != "dsp-mqtt-claim-acl");
            let audience = c.protocol_mappers.iter_mut().find(|m| m.name == "dsp-mqtt-audience").unwrap();
            audience.config.insert("included.custom.audience".into(), "someone-else".into());
            audience.config.insert("introspection.token.claim".into(), "true".into());
            c.protocol_mappers.push(StoredMapper {
                id: "admin-added".into(),
                name: "Client IP Address".into(),
                protocol: "openid-connect".into(),
                protocol_mapper: "oidc-usersessionmodel-note-mapper".into(),
                config: BTreeMap::from([
                    ("user.session.note".into(), "clientAddress".into()),
                    ("claim.name".into(), "clientAddress".into()),
                ]),
            });
        })
        .await;

    stack.forget_writes().await;
    assert_eq!(client.ensure_client(&def).await.unwrap(), Outcome::Updated);
    let stored = stack.stored(&def.client_id).await.unwrap();
    assert!(!stored.direct_access_grants_enabled);
    assert!(stored.mapper("dsp-mqtt-claim-acl").is_some());
    let audience = stored.mapper("dsp-mqtt-audience").unwrap();
    assert_eq!(audience.config["included.custom.audience"], "mqtt-broker");
    assert_eq!(audience.config["introspection.token.claim"], "true", "config keys we do not set are kept");
    assert!(stored.mapper("Client IP Address").is_some(), "a mapper without our prefix is not ours");
    assert_eq!(
        stack.writes().await,
        vec![write("UPDATE", "CLIENT"), write("UPDATE", "PROTOCOL_MAPPER"), write("CREATE", "PROTOCOL_MAPPER")]
    );

    stack.forget_writes().await;
    assert_eq!(client.ensure_client(&def).await.unwrap(), Outcome::Unchanged);
    assert_eq!(stack.writes().await, vec![]);
}

async fn the_operator_logs_in_once_across_many_calls(target: Target) {
    let stack = Stack::start(target).await;
    let client = stack.client();
    let defs: Vec<ClientDefinition> = (0..10).map(|i| transfer_client(&format!("t{i}"))).collect();

    // Concurrent first calls share one login.
    let results = futures::future::join_all(defs.iter().map(|d| client.ensure_client(d))).await;
    assert!(results.iter().all(|r| matches!(r, Ok(Outcome::Created))), "{results:?}");
    for def in &defs {
        client.ensure_client(def).await.unwrap();
        client.client_secret(&def.client_id, &def.owner).await.unwrap();
    }

    assert_eq!(stack.logins(OPERATOR).await, 1);
    assert_eq!(client.admin_logins().await, 1);
}

/// Double only: the admin token's lifetime is set to one second on demand.
#[tokio::test]
async fn an_expiring_admin_token_is_renewed_before_keycloak_refuses_it() {
    let stack = Stack::start(Target::Double).await;
    stack.double().set_admin_token_lifespan(Duration::from_secs(1));
    let client = stack.client();
    let def = transfer_client("t1");
    client.ensure_client(&def).await.unwrap();

    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(client.ensure_client(&def).await.unwrap(), Outcome::Unchanged);

    assert_eq!(stack.double().logins(OPERATOR), 2);
    let refused = stack.double().server.log.matching(|r| r.status == 401);
    assert!(refused.is_empty(), "renewed before expiry, not after a refusal: {refused:?}");
}

/// Double only: revokes the issued tokens on demand and shows the 401 and the retry in its log.
#[tokio::test]
async fn a_revoked_admin_token_is_replaced_and_the_call_retried_once() {
    let stack = Stack::start(Target::Double).await;
    let client = stack.client();
    let def = transfer_client("t1");
    client.ensure_client(&def).await.unwrap();
    stack.double().revoke_tokens();
    stack.double().server.log.clear();

    assert_eq!(client.ensure_client(&def).await.unwrap(), Outcome::Unchanged);

    let statuses: Vec<(String, u16)> =
        stack.double().server.log.all().into_iter().map(|r| (r.method, r.status)).collect();
    assert_eq!(
        statuses,
        vec![("GET".into(), 401), ("POST".into(), 200), ("GET".into(), 200)],
        "refused, one new login, the same request again"
    );
    assert_eq!(stack.double().logins(OPERATOR), 2);
}

async fn wrong_operator_credentials_are_unauthorized_and_never_shown(target: Target) {
    let stack = Stack::start(target).await;
    let wrong = "wrong-operator-secret-d41d8c";
    let client = KeycloakClient::new(stack.settings(wrong, Duration::from_secs(10))).unwrap();

    let err = client.ensure_client(&transfer_client("t1")).await.unwrap_err();
    assert!(matches!(err, BackendError::Unauthorized { status: 401, .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert_no_secret(&err, wrong);

    // A disabled operator client (Keycloak 26: 401 invalid_client): still the profile's fault.
    stack.edit_client(OPERATOR, |c| c.enabled = false).await;
    let client = stack.client();
    let err = client.ensure_client(&transfer_client("t1")).await.unwrap_err();
    assert!(matches!(err, BackendError::Unauthorized { status: 401, .. }), "{err:?}");
    assert_no_secret(&err, OPERATOR_SECRET);
    assert_eq!(stack.writes().await, vec![]);
}

/// Double only: Keycloak 25 and before answer a disabled operator client with 400.
#[tokio::test]
async fn a_disabled_operator_client_on_keycloak_25_is_unauthorized_too() {
    let stack = Stack::start(Target::Double).await;
    stack.double().set_pre_26_client_errors(true);
    stack.double().edit_client(OPERATOR, |c| c.enabled = false);
    let err = stack.client().ensure_client(&transfer_client("t1")).await.unwrap_err();
    assert!(matches!(err, BackendError::Unauthorized { status: 400, .. }), "{err:?}");
    assert_no_secret(&err, OPERATOR_SECRET);
    assert_eq!(stack.writes().await, vec![]);
}

async fn a_token_of_a_client_without_admin_rights_is_forbidden(target: Target) {
    let stack = Stack::start(target).await;
    let def = transfer_client("t1");
    stack.client().ensure_client(&def).await.unwrap();
    let secret = stack.stored(&def.client_id).await.unwrap().secret;
    // The operator profile pointed at a consumer's client: it can log in but not manage clients.
    let mut settings = stack.settings(&secret, Duration::from_secs(10));
    settings.client_id = def.client_id.clone();
    let client = KeycloakClient::new(settings).unwrap();

    let err = client.ensure_client(&transfer_client("t2")).await.unwrap_err();
    assert!(matches!(err, BackendError::Unauthorized { status: 403, .. }), "{err:?}");
    assert_no_secret(&err, &secret);
}

/// Double only: two creates overlap only with the double's added latency.
#[tokio::test]
async fn concurrent_creates_conflict_once_and_converge() {
    let stack = Stack::start(Target::Double).await;
    let kc = stack.double();
    let client = stack.client();
    let def = transfer_client("t1");
    client.client_secret("warm-up-login", &warm_up_owner()).await.unwrap_err();
    // Slow answers make both callers see "absent" before either creates.
    kc.server.faults.set_latency(Duration::from_millis(200));
    kc.server.log.clear();

    let (a, b) = tokio::join!(client.ensure_client(&def), client.ensure_client(&def));
    let mut outcomes = vec![a.unwrap(), b.unwrap()];
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(outcomes, vec![Outcome::Created, Outcome::Unchanged]);

    let posts: Vec<u16> = kc
        .server
        .log
        .matching(|r| r.method == "POST" && r.path.ends_with("/clients"))
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(posts.len(), 2);
    assert!(posts.contains(&201) && posts.contains(&409), "{posts:?}");
    assert_eq!(kc.clients().iter().filter(|c| c.client_id == def.client_id).count(), 1);
}

/// Double only: injected 5xx answers.
#[tokio::test]
async fn server_errors_are_unavailable_and_retryable() {
    let stack = Stack::start(Target::Double).await;
    let kc = stack.double();
    let client = stack.client();
    let def = transfer_client("t1");

    // During the login...
    kc.server.faults.fail_next(1, 503);
    let err = client.ensure_client(&def).await.unwrap_err();
    assert!(matches!(err, BackendError::Unavailable { status: 503, .. }), "{err:?}");
    assert!(err.is_retryable());

    // ...and on the Admin API.
    client.client_secret("warm-up-login", &warm_up_owner()).await.unwrap_err();
    kc.server.faults.fail_next(1, 500);
    let err = client.ensure_client(&def).await.unwrap_err();
    assert!(matches!(err, BackendError::Unavailable { status: 500, .. }), "{err:?}");
    assert!(err.is_retryable());

    assert_eq!(client.ensure_client(&def).await.unwrap(), Outcome::Created, "the next attempt succeeds");
}

/// Double only: an injected stall.
#[tokio::test]
async fn a_stalled_keycloak_times_out() {
    let stack = Stack::start(Target::Double).await;
    let client = KeycloakClient::new(stack.settings(OPERATOR_SECRET, Duration::from_secs(1))).unwrap();
    stack.double().server.faults.stall(true);

    let started = std::time::Instant::now();
    let err = client.ensure_client(&transfer_client("t1")).await.unwrap_err();
    assert!(matches!(err, BackendError::Timeout { timeout_seconds: 1, .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(3));
}

async fn a_foreign_client_is_neither_updated_nor_deleted_nor_its_secret_read(target: Target) {
    let stack = Stack::start(target).await;
    let client = stack.client();
    let def = transfer_client("t1");
    stack.insert_client(&def.client_id, BTreeMap::new()).await;
    let before = stack.stored(&def.client_id).await.unwrap();
    stack.forget_writes().await;

    let err = client.ensure_client(&def).await.unwrap_err();
    assert!(matches!(err, BackendError::Foreign { .. }), "{err:?}");
    let err = client.delete_client(&def.client_id, &def.owner).await.unwrap_err();
    assert!(matches!(err, BackendError::Foreign { .. }), "{err:?}");
    let err = client.client_secret(&def.client_id, &def.owner).await.unwrap_err();
    assert!(matches!(err, BackendError::Foreign { .. }), "{err:?}");
    assert_no_secret(&err, &before.secret);

    assert_eq!(stack.writes().await, vec![]);
    assert_eq!(stack.stored(&def.client_id).await.unwrap(), before);
}

async fn a_client_of_another_resource_is_foreign_too(target: Target) {
    let stack = Stack::start(target).await;
    let client = stack.client();
    let def = transfer_client("t1");
    let other = BTreeMap::from([
        (OWNER_KEY.to_owned(), OWNER_VALUE.to_owned()),
        (OWNER_RESOURCE_KEY.to_owned(), "MqttTransfer/elsewhere/t1".to_owned()),
    ]);
    stack.insert_client(&def.client_id, other).await;
    stack.forget_writes().await;

    assert!(matches!(client.ensure_client(&def).await, Err(BackendError::Foreign { .. })));
    assert!(matches!(client.delete_client(&def.client_id, &def.owner).await, Err(BackendError::Foreign { .. })));
    // Nor is its secret handed out to another resource.
    assert!(matches!(client.client_secret(&def.client_id, &def.owner).await, Err(BackendError::Foreign { .. })));
    assert_eq!(stack.writes().await, vec![]);
}

async fn delete_removes_our_client_and_deleting_an_absent_one_is_absent(target: Target) {
    let stack = Stack::start(target).await;
    let client = stack.client();
    let def = transfer_client("t1");
    client.ensure_client(&def).await.unwrap();

    assert_eq!(client.delete_client(&def.client_id, &def.owner).await.unwrap(), Outcome::Deleted);
    assert!(stack.stored(&def.client_id).await.is_none());
    assert_eq!(client.delete_client(&def.client_id, &def.owner).await.unwrap(), Outcome::Absent);

    let err = client.client_secret(&def.client_id, &def.owner).await.unwrap_err();
    assert!(matches!(err, BackendError::Rejected { status: 404, .. }), "{err:?}");
}

async fn the_issued_jwt_carries_audience_and_claims_and_verifies_against_the_jwks(target: Target) {
    let stack = Stack::start(target).await;
    let client = stack.client();
    let def = transfer_client("t1");
    client.ensure_client(&def).await.unwrap();
    let secret = client.client_secret(&def.client_id, &def.owner).await.unwrap();

    let tokens = client.issue_token(&def.client_id, &secret).await.unwrap();
    // Keycloak counts `expires_in` from the moment it answers, so a second may have passed.
    assert!((119..=120).contains(&tokens.expires_in), "the client's access.token.lifespan: {}", tokens.expires_in);
    assert!(!format!("{tokens:?}").contains(tokens.access_token.expose_secret()));
    e2e::logs::register_secret(tokens.access_token.expose_secret());

    let claims = verify(&stack, tokens.access_token.expose_secret(), "mqtt-broker").await.unwrap();
    let stored = stack.stored(&def.client_id).await.unwrap();
    // Keycloak's default client scopes add `account` (the service account's default roles).
    assert_eq!(claims["aud"], json!(["mqtt-broker", "account"]));
    assert_eq!(claims["azp"], def.client_id.as_str());
    assert_eq!(claims["sub"], stored.service_account_user_id.as_str());
    assert_eq!(claims["preferred_username"], format!("service-account-{}", def.client_id).as_str());
    assert_eq!(claims["client_id"], def.client_id.as_str());
    assert_eq!(claims["mqtt_topic"], "sensors/line-1/#");
    assert_eq!(claims["acl"], json!({"sub": ["sensors/line-1/#"], "pub": []}), "JSON claims arrive as JSON");
    // Keycloak reads its clock for `iat` and for `exp` apart: across a second boundary they are
    // 121 s apart (seen once in CI).
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert!((120..=121).contains(&lifetime), "exp - iat = {lifetime}");
    assert_eq!(claims["typ"], "Bearer");

    // The same verification refuses another audience.
    assert!(verify(&stack, tokens.access_token.expose_secret(), "another-broker").await.is_err());

    // Discovery points at the same keys; the JWKS has the RS256 signing key.
    let discovery: Value = stack.http().get(stack.discovery_url()).send().await.unwrap().json().await.unwrap();
    assert_eq!(discovery["issuer"], stack.issuer().as_str());
    assert_eq!(discovery["jwks_uri"], stack.jwks_url().as_str());
    assert_eq!(discovery["token_endpoint"], stack.token_url().as_str());
    let jwks: Value = stack.http().get(stack.jwks_url()).send().await.unwrap().json().await.unwrap();
    let kid = jsonwebtoken::decode_header(tokens.access_token.expose_secret()).unwrap().kid.unwrap();
    let signing = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid.as_str()).unwrap();
    assert_eq!((signing["alg"].as_str(), signing["use"].as_str()), (Some("RS256"), Some("sig")));

    // Double only: it signs with a foreign key or backdates on demand, and serves its key as PEM.
    if let Backend::Double(kc) = &stack.backend {
        let forged = kc.sign_with_foreign_key(&kc.access_token_claims(&def.client_id).unwrap());
        assert!(verify(&stack, &forged, "mqtt-broker").await.is_err(), "a foreign-signed token is refused");
        let expired = kc.expired_token(&def.client_id).unwrap();
        let err = verify(&stack, &expired, "mqtt-broker").await.unwrap_err();
        assert_eq!(err.kind(), &jsonwebtoken::errors::ErrorKind::ExpiredSignature);
        assert_eq!(kid, kc.key_id());
        let by_pem = DecodingKey::from_rsa_pem(kc.public_key_pem().as_bytes()).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&["mqtt-broker"]);
        assert!(jsonwebtoken::decode::<Value>(tokens.access_token.expose_secret(), &by_pem, &validation).is_ok());
    }
}

async fn a_refresh_token_comes_only_when_enabled(target: Target) {
    let stack = Stack::start(target).await;
    let client = stack.client();
    let with = transfer_client("with");
    let mut without = transfer_client("without");
    without.refresh_tokens_for_client_credentials = false;
    for def in [&with, &without] {
        client.ensure_client(def).await.unwrap();
    }

    let secret = client.client_secret(&with.client_id, &with.owner).await.unwrap();
    let tokens = client.issue_token(&with.client_id, &secret).await.unwrap();
    assert!(tokens.refresh_token.is_some());
    assert_eq!(tokens.refresh_expires_in, Some(1800), "the realm's SSO session idle timeout");

    let secret = client.client_secret(&without.client_id, &without.owner).await.unwrap();
    let tokens = client.issue_token(&without.client_id, &secret).await.unwrap();
    assert!(tokens.refresh_token.is_none());
    assert_eq!(tokens.refresh_expires_in, None, "Keycloak's refresh_expires_in: 0 means none");
}

async fn disabling_a_client_makes_issue_token_fail(target: Target) {
    let stack = Stack::start(target).await;
    let client = stack.client();
    let mut def = transfer_client("t1");
    client.ensure_client(&def).await.unwrap();
    let secret = client.client_secret(&def.client_id, &def.owner).await.unwrap();
    client.issue_token(&def.client_id, &secret).await.unwrap();

    def.enabled = false;
    assert_eq!(client.ensure_client(&def).await.unwrap(), Outcome::Updated);
    let err = client.issue_token(&def.client_id, &secret).await.unwrap_err();
    match &err {
        BackendError::Rejected { status: 401, message, .. } => {
            assert!(message.starts_with("invalid_client"), "{message}")
        }
        other => panic!("expected Rejected 401 invalid_client, got {other:?}"),
    }
    assert!(!err.is_retryable());
    assert_no_secret(&err, secret.expose_secret());

    // Double only: Keycloak 25 and before, 400 unauthorized_client, the same reason for the
    // controller.
    if let Backend::Double(kc) = &stack.backend {
        kc.set_pre_26_client_errors(true);
        let err = client.issue_token(&def.client_id, &secret).await.unwrap_err();
        assert!(matches!(err, BackendError::Rejected { status: 400, .. }), "{err:?}");
    }

    def.enabled = true;
    client.ensure_client(&def).await.unwrap();
    client.issue_token(&def.client_id, &secret).await.unwrap();
}

async fn a_wrong_client_secret_is_rejected_without_showing_it(target: Target) {
    let stack = Stack::start(target).await;
    let client = stack.client();
    let def = transfer_client("t1");
    client.ensure_client(&def).await.unwrap();
    let wrong = SecretString::from("not-the-secret-0b1c2d".to_owned());

    let err = client.issue_token(&def.client_id, &wrong).await.unwrap_err();
    match &err {
        BackendError::Rejected { status: 401, message, .. } => {
            assert!(message.starts_with("unauthorized_client"), "{message}")
        }
        other => panic!("expected Rejected 401 unauthorized_client, got {other:?}"),
    }
    assert_no_secret(&err, "not-the-secret-0b1c2d");
}

/// The answers the client above relies on, in Keycloak's shapes: the double's own contract,
/// checked against the real server as well.
async fn keycloak_answers_as_the_client_relies_on(target: Target) {
    let stack = Stack::start(target).await;
    let http = stack.http();
    let base = stack.admin_url();
    let token = stack.operator_token().await;

    let anonymous = http.get(format!("{base}/clients")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.json::<Value>().await.unwrap(), json!({"error": "HTTP 401 Unauthorized"}));
    if let Backend::Double(kc) = &stack.backend {
        // Double only: expired and foreign-signed tokens on demand.
        let expired = kc.expired_token(OPERATOR).unwrap();
        assert_eq!(http.get(format!("{base}/clients")).bearer_auth(expired).send().await.unwrap().status(), 401);
        let forged = kc.sign_with_foreign_key(&kc.access_token_claims(OPERATOR).unwrap());
        assert_eq!(http.get(format!("{base}/clients")).bearer_auth(forged).send().await.unwrap().status(), 401);
    }

    let create = |body: Value| http.post(format!("{base}/clients")).bearer_auth(&token).json(&body).send();
    let unknown_field = create(json!({"clientId": "c1", "someFutureField": {"x": 1}})).await.unwrap();
    assert_eq!(unknown_field.status(), 400, "Keycloak 26 refuses fields it does not know");
    let message = unknown_field.json::<Value>().await.unwrap()["error"].as_str().unwrap().to_owned();
    assert!(
        message.starts_with(
            "Invalid json representation for ClientRepresentation. Unrecognized field \"someFutureField\""
        ),
        "{message}"
    );
    let created = create(json!({"clientId": "c1"})).await.unwrap();
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let uuid = location.rsplit('/').next().unwrap().to_owned();
    assert_eq!(location, format!("{base}/clients/{uuid}"));
    assert_eq!(stack.stored("c1").await.unwrap().id, uuid);

    let duplicate = create(json!({"clientId": "c1"})).await.unwrap();
    assert_eq!(duplicate.status(), 409);
    assert_eq!(duplicate.json::<Value>().await.unwrap(), json!({"errorMessage": "Client c1 already exists"}));
    let wrong_type = create(json!({"clientId": "c2", "enabled": "yes"})).await.unwrap();
    assert_eq!(wrong_type.status(), 400);
    assert_eq!(
        wrong_type.json::<Value>().await.unwrap(),
        json!({"error": "unknown_error", "error_description": "Cannot parse the JSON"})
    );
    if target == Target::Double {
        // Double only, stricter than Keycloak (which coerces the number to "300"): catches a
        // client that sends attributes as numbers.
        let number_attribute =
            create(json!({"clientId": "c2", "attributes": {"access.token.lifespan": 300}})).await.unwrap();
        assert_eq!(number_attribute.status(), 400);
    }
    let form = http
        .post(format!("{base}/clients"))
        .bearer_auth(&token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("clientId=c2")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 415);
    assert_eq!(
        form.json::<Value>().await.unwrap(),
        json!({"error": "The content-type header value did not match the value in @Consumes"})
    );
    // Without a Content-Type the body is read as JSON.
    let untyped = http.post(format!("{base}/clients")).bearer_auth(&token).body("clientId=c2").send().await.unwrap();
    assert_eq!(untyped.status(), 400);
    assert_eq!(
        untyped.json::<Value>().await.unwrap(),
        json!({"error": "invalid_request", "error_description": "Cannot parse the JSON"})
    );
    let untyped_json =
        http.post(format!("{base}/clients")).bearer_auth(&token).body(r#"{"clientId":"c3"}"#).send().await.unwrap();
    assert_eq!(untyped_json.status(), 201);

    let list: Value =
        http.get(format!("{base}/clients?clientId=c")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(list, json!([]), "clientId is an exact match");

    let unknown =
        http.get(format!("{base}/clients/{}", uuid::Uuid::new_v4())).bearer_auth(&token).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.json::<Value>().await.unwrap(), json!({"error": "Could not find client"}));
    let deleted = http.delete(format!("{base}/clients/{uuid}")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let again = http.delete(format!("{base}/clients/{uuid}")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(again.status(), 404);

    let other_realm = format!("{}/admin/realms/elsewhere-{}/clients", stack.base_url, uuid::Uuid::new_v4().simple());
    let other = http.get(other_realm).bearer_auth(&token).send().await.unwrap();
    assert_eq!(other.status(), 404);
    assert_eq!(other.json::<Value>().await.unwrap(), json!({"error": "Realm not found."}));
    let no_route = http.get(format!("{base}/no-such-resource")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(no_route.status(), 404);
    assert_eq!(no_route.json::<Value>().await.unwrap(), json!({"error": "HTTP 404 Not Found"}));

    let no_grant = http.post(stack.token_url()).form(&[("client_id", OPERATOR)]).send().await.unwrap();
    assert_eq!(no_grant.status(), 400);
    assert_eq!(
        no_grant.json::<Value>().await.unwrap(),
        json!({"error": "invalid_request", "error_description": "Missing form parameter: grant_type"})
    );
    let unknown_client = http
        .post(stack.token_url())
        .form(&[("grant_type", "client_credentials"), ("client_id", "nobody"), ("client_secret", "nothing-at-all")])
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_client.status(), 401);
    assert_eq!(
        unknown_client.json::<Value>().await.unwrap(),
        json!({"error": "invalid_client", "error_description": "Invalid client or Invalid client credentials"})
    );
    let basic = http
        .post(stack.token_url())
        .basic_auth(OPERATOR, Some(OPERATOR_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 200, "client_secret_basic works as well");
    let answer: Value = basic.json().await.unwrap();
    e2e::logs::register_secret(answer["access_token"].as_str().unwrap());
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["refresh_expires_in"], 0, "no refresh token without use_refresh_token");
    assert!(answer.get("refresh_token").is_none());
}
