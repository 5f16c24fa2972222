//! The Keycloak client (`operator/src/backends/identity/keycloak.rs`) against the Keycloak double
//! (`e2e/src/doubles/keycloak.rs`): what ends up in Keycloak, what it costs in requests, and how
//! each failure reaches the controller.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::doubles::keycloak::{self, KeycloakDouble};
use e2e::tls::TestCa;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mqtt_dsp_operator::backends::http::HttpSettings;
use mqtt_dsp_operator::backends::identity::keycloak::{KeycloakClient, KeycloakSettings};
use mqtt_dsp_operator::backends::identity::{ClientDefinition, HardcodedClaim, IdentityProvider};
use mqtt_dsp_operator::backends::{
    BackendError, ExposeSecret, OWNER_KEY, OWNER_RESOURCE_KEY, OWNER_VALUE, Outcome, Owner, SecretString,
};
use serde_json::{Value, json};
use url::Url;

const REALM: &str = "dataspace";
const OPERATOR: &str = "mqtt-dsp-operator";
const OPERATOR_SECRET: &str = "operator-secret-7f3a9c";

struct Stack {
    ca: TestCa,
    kc: KeycloakDouble,
}

impl Stack {
    async fn start() -> Self {
        mqtt_dsp_operator::install_crypto_provider();
        e2e::logs::init();
        e2e::logs::register_secret(OPERATOR_SECRET);

        let ca = TestCa::new();
        let kc = keycloak::start(&ca, REALM, OPERATOR, OPERATOR_SECRET).await.unwrap();
        Self { ca, kc }
    }

    fn settings(&self, secret: &str, timeout: Duration) -> KeycloakSettings {
        KeycloakSettings {
            base_url: Url::parse(&self.kc.server.base_url).unwrap(),
            realm: REALM.into(),
            client_id: OPERATOR.into(),
            client_secret: SecretString::from(secret.to_owned()),
            public_token_url: Url::parse("https://login.example.org/realms/dataspace/protocol/openid-connect/token")
                .unwrap(),
            http: HttpSettings { timeout, ca_bundle_pem: Some(self.ca.cert_pem()) },
        }
    }

    fn client(&self) -> KeycloakClient {
        KeycloakClient::new(self.settings(OPERATOR_SECRET, Duration::from_secs(5))).unwrap()
    }

    fn http(&self) -> reqwest::Client {
        let cert = reqwest::Certificate::from_pem(self.ca.cert_pem().as_bytes()).unwrap();
        reqwest::Client::builder().tls_certs_only([cert]).build().unwrap()
    }

    fn mutating_admin_requests(&self) -> usize {
        self.kc.server.log.matching(|r| r.is_mutating() && r.path.starts_with("/admin/")).len()
    }

    /// An admin token obtained the way the operator gets one (for raw requests to the double).
    async fn admin_token(&self) -> String {
        let response = self
            .http()
            .post(self.kc.token_url())
            .form(&[("grant_type", "client_credentials"), ("client_id", OPERATOR), ("client_secret", OPERATOR_SECRET)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
    }
}

fn owner(name: &str) -> Owner {
    Owner { kind: "MqttTransfer".into(), namespace: "factory".into(), name: name.into() }
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

/// Verifies a token against the double's JWKS as fetched over HTTPS.
async fn verify(stack: &Stack, token: &str, audience: &str) -> Result<Value, jsonwebtoken::errors::Error> {
    let jwks: JwkSet = stack.http().get(stack.kc.jwks_url()).send().await.unwrap().json().await.unwrap();
    let header = jsonwebtoken::decode_header(token)?;
    let kid = header.kid.clone().unwrap_or_default();
    let jwk = jwks.find(&kid).expect("the token's kid is in the JWKS");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[stack.kc.issuer()]);
    validation.leeway = 0;
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk)?, &validation).map(|d| d.claims)
}

#[tokio::test]
async fn create_then_read_back_as_keycloak_holds_it() {
    let stack = Stack::start().await;
    let client = stack.client();
    let def = transfer_client("t1");

    assert_eq!(client.ensure_client(&def).await.unwrap(), Outcome::Created);

    let stored = stack.kc.client(&def.client_id).expect("client created");
    assert!(!stored.public_client && stored.service_accounts_enabled);
    assert!(!stored.standard_flow_enabled && !stored.direct_access_grants_enabled && !stored.implicit_flow_enabled);
    assert_eq!(stored.client_authenticator_type, "client-secret");
    assert!(stored.enabled);
    assert_eq!(stored.description.as_deref(), Some("MqttTransfer factory/t1"));
    let attrs = &stored.attributes;
    assert_eq!(attrs[OWNER_KEY], OWNER_VALUE);
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
    let writes = stack.kc.server.log.matching(|r| r.is_mutating() && r.path.starts_with("/admin/"));
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!((writes[0].method.as_str(), writes[0].status), ("POST", 201));

    let secret = client.client_secret(&def.client_id, &def.owner).await.unwrap();
    assert_eq!(secret.expose_secret(), stored.secret);
    assert_eq!(client.token_url(), "https://login.example.org/realms/dataspace/protocol/openid-connect/token");
}

#[tokio::test]
async fn a_second_identical_ensure_writes_nothing() {
    let stack = Stack::start().await;
    let client = stack.client();
    let def = transfer_client("t1");
    client.ensure_client(&def).await.unwrap();
    stack.kc.server.log.clear();

    assert_eq!(client.ensure_client(&def).await.unwrap(), Outcome::Unchanged);

    let writes = stack.kc.server.log.matching(|r| r.is_mutating());
    assert!(writes.is_empty(), "no write and no new login: {writes:?}");
    assert_eq!(stack.kc.server.log.all().len(), 1, "one GET finds the client with its mappers");
}

#[tokio::test]
async fn a_changed_definition_updates_only_what_differs() {
    let stack = Stack::start().await;
    let client = stack.client();
    let mut def = transfer_client("t1");
    client.ensure_client(&def).await.unwrap();
    stack.kc.server.log.clear();

    def.description = "suspended".into();
    def.enabled = false;
    def.access_token_lifespan_seconds = None;
    def.audience = None;
    def.claims[0].value = json!("sensors/line-2/#");
    assert_eq!(client.ensure_client(&def).await.unwrap(), Outcome::Updated);

    let writes: Vec<(String, String)> = stack
        .kc
        .server
        .log
        .matching(|r| r.is_mutating())
        .into_iter()
        .map(|r| (r.method, r.path.rsplit_once("/clients/").map(|(_, p)| p.to_owned()).unwrap_or_default()))
        .collect();
    assert_eq!(writes.len(), 3, "client PUT, one mapper PUT, one mapper DELETE: {writes:?}");
    assert_eq!(writes.iter().filter(|(m, p)| m == "PUT" && !p.contains('/')).count(), 1);
    assert_eq!(writes.iter().filter(|(m, p)| m == "PUT" && p.contains("/protocol-mappers/")).count(), 1);
    assert_eq!(writes.iter().filter(|(m, _)| m == "DELETE").count(), 1);

    let stored = stack.kc.client(&def.client_id).unwrap();
    assert!(!stored.enabled);
    assert_eq!(stored.description.as_deref(), Some("suspended"));
    assert!(!stored.attributes.contains_key("access.token.lifespan"), "cleared back to the realm default");
    assert!(stored.mapper("dsp-mqtt-audience").is_none());
    assert_eq!(stored.mapper("dsp-mqtt-claim-mqtt_topic").unwrap().config["claim.value"], "sensors/line-2/#");
    assert_eq!(stored.attributes[OWNER_KEY], OWNER_VALUE, "the marker survives updates");

    stack.kc.server.log.clear();
    assert_eq!(client.ensure_client(&def).await.unwrap(), Outcome::Unchanged);
    assert_eq!(stack.mutating_admin_requests(), 0);
}

#[tokio::test]
async fn drift_made_by_hand_is_repaired_and_foreign_mappers_are_left_alone() {
    let stack = Stack::start().await;
    let client = stack.client();
    let def = transfer_client("t1");
    client.ensure_client(&def).await.unwrap();
    stack.kc.edit_client(&def.client_id, |c| {
        c.direct_access_grants_enabled = true;
        c.protocol_mappers.retain(|m| m.name != "dsp-mqtt-claim-acl");
        let audience = c.protocol_mappers.iter_mut().find(|m| m.name == "dsp-mqtt-audience").unwrap();
        audience.config.insert("included.custom.audience".into(), "someone-else".into());
        audience.config.insert("introspection.token.claim".into(), "true".into());
        c.protocol_mappers.push(e2e::doubles::keycloak::StoredMapper {
            id: "admin-added".into(),
            name: "Client IP Address".into(),
            protocol: "openid-connect".into(),
            protocol_mapper: "oidc-usersessionmodel-note-mapper".into(),
            config: BTreeMap::new(),
        });
    });

    assert_eq!(client.ensure_client(&def).await.unwrap(), Outcome::Updated);
    let stored = stack.kc.client(&def.client_id).unwrap();
    assert!(!stored.direct_access_grants_enabled);
    assert!(stored.mapper("dsp-mqtt-claim-acl").is_some());
    let audience = stored.mapper("dsp-mqtt-audience").unwrap();
    assert_eq!(audience.config["included.custom.audience"], "mqtt-broker");
    assert_eq!(audience.config["introspection.token.claim"], "true", "config keys we do not set are kept");
    assert!(stored.mapper("Client IP Address").is_some(), "a mapper without our prefix is not ours");

    stack.kc.server.log.clear();
    assert_eq!(client.ensure_client(&def).await.unwrap(), Outcome::Unchanged);
    assert_eq!(stack.mutating_admin_requests(), 0);
}

#[tokio::test]
async fn the_operator_logs_in_once_across_many_calls() {
    let stack = Stack::start().await;
    let client = stack.client();
    let defs: Vec<ClientDefinition> = (0..10).map(|i| transfer_client(&format!("t{i}"))).collect();

    // Concurrent first calls share one login.
    let results = futures::future::join_all(defs.iter().map(|d| client.ensure_client(d))).await;
    assert!(results.iter().all(|r| matches!(r, Ok(Outcome::Created))), "{results:?}");
    for def in &defs {
        client.ensure_client(def).await.unwrap();
        client.client_secret(&def.client_id, &def.owner).await.unwrap();
    }

    assert_eq!(stack.kc.logins(OPERATOR), 1);
    assert_eq!(client.admin_logins().await, 1);
}

#[tokio::test]
async fn an_expiring_admin_token_is_renewed_before_keycloak_refuses_it() {
    let stack = Stack::start().await;
    stack.kc.set_admin_token_lifespan(Duration::from_secs(1));
    let client = stack.client();
    let def = transfer_client("t1");
    client.ensure_client(&def).await.unwrap();

    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(client.ensure_client(&def).await.unwrap(), Outcome::Unchanged);

    assert_eq!(stack.kc.logins(OPERATOR), 2);
    let refused = stack.kc.server.log.matching(|r| r.status == 401);
    assert!(refused.is_empty(), "renewed before expiry, not after a refusal: {refused:?}");
}

#[tokio::test]
async fn a_revoked_admin_token_is_replaced_and_the_call_retried_once() {
    let stack = Stack::start().await;
    let client = stack.client();
    let def = transfer_client("t1");
    client.ensure_client(&def).await.unwrap();
    stack.kc.revoke_tokens();
    stack.kc.server.log.clear();

    assert_eq!(client.ensure_client(&def).await.unwrap(), Outcome::Unchanged);

    let statuses: Vec<(String, u16)> = stack.kc.server.log.all().into_iter().map(|r| (r.method, r.status)).collect();
    assert_eq!(
        statuses,
        vec![("GET".into(), 401), ("POST".into(), 200), ("GET".into(), 200)],
        "refused, one new login, the same request again"
    );
    assert_eq!(stack.kc.logins(OPERATOR), 2);
}

#[tokio::test]
async fn wrong_operator_credentials_are_unauthorized_and_never_shown() {
    let stack = Stack::start().await;
    let wrong = "wrong-operator-secret-d41d8c";
    let client = KeycloakClient::new(stack.settings(wrong, Duration::from_secs(5))).unwrap();

    let err = client.ensure_client(&transfer_client("t1")).await.unwrap_err();
    assert!(matches!(err, BackendError::Unauthorized { status: 401, .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert_no_secret(&err, wrong);

    // Keycloak 25 and before answer a disabled operator client with 400; still the profile's fault.
    stack.kc.set_pre_26_client_errors(true);
    stack.kc.edit_client(OPERATOR, |c| c.enabled = false);
    let client = stack.client();
    let err = client.ensure_client(&transfer_client("t1")).await.unwrap_err();
    assert!(matches!(err, BackendError::Unauthorized { status: 400, .. }), "{err:?}");
    assert_no_secret(&err, OPERATOR_SECRET);
    assert_eq!(stack.mutating_admin_requests(), 0);
}

#[tokio::test]
async fn a_token_of_a_client_without_admin_rights_is_forbidden() {
    let stack = Stack::start().await;
    let def = transfer_client("t1");
    stack.client().ensure_client(&def).await.unwrap();
    let secret = stack.kc.client(&def.client_id).unwrap().secret;
    // The operator profile pointed at a consumer's client: it can log in but not manage clients.
    let mut settings = stack.settings(&secret, Duration::from_secs(5));
    settings.client_id = def.client_id.clone();
    let client = KeycloakClient::new(settings).unwrap();

    let err = client.ensure_client(&transfer_client("t2")).await.unwrap_err();
    assert!(matches!(err, BackendError::Unauthorized { status: 403, .. }), "{err:?}");
    assert_no_secret(&err, &secret);
}

#[tokio::test]
async fn concurrent_creates_conflict_once_and_converge() {
    let stack = Stack::start().await;
    let client = stack.client();
    let def = transfer_client("t1");
    client.client_secret("warm-up-login", &warm_up_owner()).await.unwrap_err();
    // Slow answers make both callers see "absent" before either creates.
    stack.kc.server.faults.set_latency(Duration::from_millis(200));
    stack.kc.server.log.clear();

    let (a, b) = tokio::join!(client.ensure_client(&def), client.ensure_client(&def));
    let mut outcomes = vec![a.unwrap(), b.unwrap()];
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(outcomes, vec![Outcome::Created, Outcome::Unchanged]);

    let posts: Vec<u16> = stack
        .kc
        .server
        .log
        .matching(|r| r.method == "POST" && r.path.ends_with("/clients"))
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(posts.len(), 2);
    assert!(posts.contains(&201) && posts.contains(&409), "{posts:?}");
    assert_eq!(stack.kc.clients().iter().filter(|c| c.client_id == def.client_id).count(), 1);
}

#[tokio::test]
async fn server_errors_are_unavailable_and_retryable() {
    let stack = Stack::start().await;
    let client = stack.client();
    let def = transfer_client("t1");

    // During the login...
    stack.kc.server.faults.fail_next(1, 503);
    let err = client.ensure_client(&def).await.unwrap_err();
    assert!(matches!(err, BackendError::Unavailable { status: 503, .. }), "{err:?}");
    assert!(err.is_retryable());

    // ...and on the Admin API.
    client.client_secret("warm-up-login", &warm_up_owner()).await.unwrap_err();
    stack.kc.server.faults.fail_next(1, 500);
    let err = client.ensure_client(&def).await.unwrap_err();
    assert!(matches!(err, BackendError::Unavailable { status: 500, .. }), "{err:?}");
    assert!(err.is_retryable());

    assert_eq!(client.ensure_client(&def).await.unwrap(), Outcome::Created, "the next attempt succeeds");
}

#[tokio::test]
async fn a_stalled_keycloak_times_out() {
    let stack = Stack::start().await;
    let client = KeycloakClient::new(stack.settings(OPERATOR_SECRET, Duration::from_secs(1))).unwrap();
    stack.kc.server.faults.stall(true);

    let started = std::time::Instant::now();
    let err = client.ensure_client(&transfer_client("t1")).await.unwrap_err();
    assert!(matches!(err, BackendError::Timeout { timeout_seconds: 1, .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_foreign_client_is_neither_updated_nor_deleted_nor_its_secret_read() {
    let stack = Stack::start().await;
    let client = stack.client();
    let def = transfer_client("t1");
    stack.kc.insert_client(&def.client_id, BTreeMap::new());
    let before = stack.kc.client(&def.client_id).unwrap();

    let err = client.ensure_client(&def).await.unwrap_err();
    assert!(matches!(err, BackendError::Foreign { .. }), "{err:?}");
    let err = client.delete_client(&def.client_id, &def.owner).await.unwrap_err();
    assert!(matches!(err, BackendError::Foreign { .. }), "{err:?}");
    let err = client.client_secret(&def.client_id, &def.owner).await.unwrap_err();
    assert!(matches!(err, BackendError::Foreign { .. }), "{err:?}");
    assert_no_secret(&err, &before.secret);

    assert_eq!(stack.mutating_admin_requests(), 0);
    assert_eq!(stack.kc.client(&def.client_id).unwrap(), before);
}

#[tokio::test]
async fn a_client_of_another_resource_is_foreign_too() {
    let stack = Stack::start().await;
    let client = stack.client();
    let def = transfer_client("t1");
    let other = BTreeMap::from([
        (OWNER_KEY.to_owned(), OWNER_VALUE.to_owned()),
        (OWNER_RESOURCE_KEY.to_owned(), "MqttTransfer/elsewhere/t1".to_owned()),
    ]);
    stack.kc.insert_client(&def.client_id, other);

    assert!(matches!(client.ensure_client(&def).await, Err(BackendError::Foreign { .. })));
    assert!(matches!(client.delete_client(&def.client_id, &def.owner).await, Err(BackendError::Foreign { .. })));
    // Nor is its secret handed out to another resource.
    assert!(matches!(client.client_secret(&def.client_id, &def.owner).await, Err(BackendError::Foreign { .. })));
    assert_eq!(stack.mutating_admin_requests(), 0);
}

#[tokio::test]
async fn delete_removes_our_client_and_deleting_an_absent_one_is_absent() {
    let stack = Stack::start().await;
    let client = stack.client();
    let def = transfer_client("t1");
    client.ensure_client(&def).await.unwrap();

    assert_eq!(client.delete_client(&def.client_id, &def.owner).await.unwrap(), Outcome::Deleted);
    assert!(stack.kc.client(&def.client_id).is_none());
    assert_eq!(client.delete_client(&def.client_id, &def.owner).await.unwrap(), Outcome::Absent);

    let err = client.client_secret(&def.client_id, &def.owner).await.unwrap_err();
    assert!(matches!(err, BackendError::Rejected { status: 404, .. }), "{err:?}");
}

#[tokio::test]
async fn the_issued_jwt_carries_audience_and_claims_and_verifies_against_the_jwks() {
    let stack = Stack::start().await;
    let client = stack.client();
    let def = transfer_client("t1");
    client.ensure_client(&def).await.unwrap();
    let secret = client.client_secret(&def.client_id, &def.owner).await.unwrap();

    let tokens = client.issue_token(&def.client_id, &secret).await.unwrap();
    assert_eq!(tokens.expires_in, 120, "the client's access.token.lifespan");
    assert!(!format!("{tokens:?}").contains(tokens.access_token.expose_secret()));

    let claims = verify(&stack, tokens.access_token.expose_secret(), "mqtt-broker").await.unwrap();
    let stored = stack.kc.client(&def.client_id).unwrap();
    assert_eq!(claims["aud"], "mqtt-broker");
    assert_eq!(claims["azp"], def.client_id.as_str());
    assert_eq!(claims["sub"], stored.service_account_user_id.as_str());
    assert_eq!(claims["preferred_username"], format!("service-account-{}", def.client_id).as_str());
    assert_eq!(claims["mqtt_topic"], "sensors/line-1/#");
    assert_eq!(claims["acl"], json!({"sub": ["sensors/line-1/#"], "pub": []}), "JSON claims arrive as JSON");
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 120);

    // The same verification refuses what it must.
    assert!(verify(&stack, tokens.access_token.expose_secret(), "another-broker").await.is_err());
    let forged = stack.kc.sign_with_foreign_key(&stack.kc.access_token_claims(&def.client_id).unwrap());
    assert!(verify(&stack, &forged, "mqtt-broker").await.is_err(), "a foreign-signed token is refused");
    let expired = stack.kc.expired_token(&def.client_id).unwrap();
    let err = verify(&stack, &expired, "mqtt-broker").await.unwrap_err();
    assert_eq!(err.kind(), &jsonwebtoken::errors::ErrorKind::ExpiredSignature);

    // Discovery points at the same keys.
    let discovery: Value = stack.http().get(stack.kc.discovery_url()).send().await.unwrap().json().await.unwrap();
    assert_eq!(discovery["issuer"], stack.kc.issuer().as_str());
    assert_eq!(discovery["jwks_uri"], stack.kc.jwks_url().as_str());
    let jwks = stack.kc.jwks();
    assert_eq!(jwks["keys"][0]["alg"], "RS256");
    assert_eq!(jwks["keys"][0]["use"], "sig");
    assert_eq!(jwks["keys"][0]["kid"], stack.kc.key_id().as_str());
    let by_pem = DecodingKey::from_rsa_pem(stack.kc.public_key_pem().as_bytes()).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&["mqtt-broker"]);
    assert!(jsonwebtoken::decode::<Value>(tokens.access_token.expose_secret(), &by_pem, &validation).is_ok());
}

#[tokio::test]
async fn a_refresh_token_comes_only_when_enabled() {
    let stack = Stack::start().await;
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
    assert_eq!(tokens.refresh_expires_in, Some(1800));

    let secret = client.client_secret(&without.client_id, &without.owner).await.unwrap();
    let tokens = client.issue_token(&without.client_id, &secret).await.unwrap();
    assert!(tokens.refresh_token.is_none());
    assert_eq!(tokens.refresh_expires_in, None, "Keycloak's refresh_expires_in: 0 means none");
}

#[tokio::test]
async fn disabling_a_client_makes_issue_token_fail() {
    let stack = Stack::start().await;
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

    // Keycloak 25 and before: 400 unauthorized_client, the same reason for the controller.
    stack.kc.set_pre_26_client_errors(true);
    let err = client.issue_token(&def.client_id, &secret).await.unwrap_err();
    assert!(matches!(err, BackendError::Rejected { status: 400, .. }), "{err:?}");

    def.enabled = true;
    client.ensure_client(&def).await.unwrap();
    client.issue_token(&def.client_id, &secret).await.unwrap();
}

#[tokio::test]
async fn a_wrong_client_secret_is_rejected_without_showing_it() {
    let stack = Stack::start().await;
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

/// The double's own contract: the answers the client above relies on, as Keycloak gives them.
#[tokio::test]
async fn the_double_answers_like_keycloak() {
    let stack = Stack::start().await;
    let http = stack.http();
    let base = format!("{}/admin/realms/{REALM}", stack.kc.server.base_url);
    let token = stack.admin_token().await;

    let anonymous = http.get(format!("{base}/clients")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.json::<Value>().await.unwrap(), json!({"error": "HTTP 401 Unauthorized"}));
    let expired = stack.kc.expired_token(OPERATOR).unwrap();
    assert_eq!(http.get(format!("{base}/clients")).bearer_auth(expired).send().await.unwrap().status(), 401);
    let forged = stack.kc.sign_with_foreign_key(&stack.kc.access_token_claims(OPERATOR).unwrap());
    assert_eq!(http.get(format!("{base}/clients")).bearer_auth(forged).send().await.unwrap().status(), 401);

    let create = |body: Value| http.post(format!("{base}/clients")).bearer_auth(&token).json(&body).send();
    let created = create(json!({"clientId": "c1", "someFutureField": {"x": 1}})).await.unwrap();
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let uuid = location.rsplit('/').next().unwrap().to_owned();
    assert_eq!(location, format!("{base}/clients/{uuid}"));
    assert_eq!(stack.kc.client("c1").unwrap().id, uuid);

    let duplicate = create(json!({"clientId": "c1"})).await.unwrap();
    assert_eq!(duplicate.status(), 409);
    assert_eq!(duplicate.json::<Value>().await.unwrap(), json!({"errorMessage": "Client c1 already exists"}));
    let wrong_type = create(json!({"clientId": "c2", "enabled": "yes"})).await.unwrap();
    assert_eq!(wrong_type.status(), 400);
    assert_eq!(wrong_type.json::<Value>().await.unwrap()["error"], "unknown_error");
    let number_attribute =
        create(json!({"clientId": "c2", "attributes": {"access.token.lifespan": 300}})).await.unwrap();
    assert_eq!(number_attribute.status(), 400);
    let not_json = http.post(format!("{base}/clients")).bearer_auth(&token).body("clientId=c2").send().await.unwrap();
    assert_eq!(not_json.status(), 415);

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

    let other_realm = format!("{}/admin/realms/elsewhere/clients", stack.kc.server.base_url);
    assert_eq!(http.get(other_realm).bearer_auth(&token).send().await.unwrap().status(), 404);
    let no_route = format!("{base}/no-such-resource");
    assert_eq!(http.get(no_route).bearer_auth(&token).send().await.unwrap().status(), 404);

    let no_grant = http.post(stack.kc.token_url()).form(&[("client_id", OPERATOR)]).send().await.unwrap();
    assert_eq!(no_grant.status(), 400);
    assert_eq!(no_grant.json::<Value>().await.unwrap()["error"], "invalid_request");
    let basic = http
        .post(stack.kc.token_url())
        .basic_auth(OPERATOR, Some(OPERATOR_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 200, "client_secret_basic works as well");
}

fn warm_up_owner() -> Owner {
    Owner { kind: "MqttTransfer".into(), namespace: "dataspace".into(), name: "warm-up".into() }
}
