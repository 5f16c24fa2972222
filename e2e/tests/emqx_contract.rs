//! The EMQX broker client against the EMQX double: users and rules shaped as EMQX needs them,
//! idempotence on the request log, suspend/resume/remove with live clients, the JWT acl claim,
//! ownership, and how failures come back.

use std::time::Duration;

use e2e::doubles::DoubleServer;
use e2e::doubles::emqx::{Decision, DoubleRule, EmqxDouble};
use e2e::tls::TestCa;
use mqtt_dsp_operator::backends::broker::emqx::{AclClaimFormat, EmqxClient, EmqxSettings};
use mqtt_dsp_operator::backends::broker::{Broker, UserGrant};
use mqtt_dsp_operator::backends::http::HttpSettings;
use mqtt_dsp_operator::backends::{BackendError, Outcome, Owner, SecretString, System};
use serde_json::{Value, json};

const API_KEY: &str = "operator-key";
const API_SECRET: &str = "api-secret-4b1d";
const PASSWORD: &str = "consumer-pass-9f2e";
const AUDIENCE: &str = "emqx-broker";

struct Env {
    _ca: TestCa,
    ca_pem: String,
    double: EmqxDouble,
    server: DoubleServer,
}

async fn env() -> Env {
    mqtt_dsp_operator::install_crypto_provider();
    e2e::logs::init();
    e2e::logs::register_secret(API_SECRET);
    e2e::logs::register_secret(PASSWORD);

    let ca = TestCa::new();
    let double = EmqxDouble::new(API_KEY, API_SECRET);
    let server = double.start(&ca).await.unwrap();
    Env { ca_pem: ca.cert_pem(), _ca: ca, double, server }
}

impl Env {
    fn settings(&self, secret: &str, timeout: Duration) -> EmqxSettings {
        EmqxSettings::new(
            self.server.base_url.parse().unwrap(),
            API_KEY,
            SecretString::from(secret.to_owned()),
            HttpSettings { timeout, ca_bundle_pem: Some(self.ca_pem.clone()) },
        )
    }

    fn client(&self) -> EmqxClient {
        EmqxClient::new(self.settings(API_SECRET, Duration::from_secs(5)), AUDIENCE).unwrap()
    }

    fn mutating(&self) -> Vec<String> {
        self.server.log.matching(|r| r.is_mutating()).into_iter().map(|r| format!("{} {}", r.method, r.path)).collect()
    }
}

fn owner(name: &str) -> Owner {
    Owner { installation: "test".into(), kind: "MqttTransfer".into(), namespace: "plant-1".into(), name: name.into() }
}

fn grant(username: &str, topics: &[&str]) -> UserGrant {
    UserGrant {
        username: username.into(),
        password: SecretString::from(PASSWORD.to_owned()),
        topics: topics.iter().map(|t| t.to_string()).collect(),
        enabled: true,
        owner: owner(username),
    }
}

fn suspended(mut grant: UserGrant) -> UserGrant {
    grant.enabled = false;
    grant
}

fn triples(rules: &[DoubleRule]) -> Vec<(String, String, String)> {
    rules.iter().map(|r| (r.permission.clone(), r.action.clone(), r.topic.clone())).collect()
}

fn t(permission: &str, action: &str, topic: &str) -> (String, String, String) {
    (permission.into(), action.into(), topic.into())
}

fn marker(name: &str) -> String {
    format!("eq $dsp-mqtt.io/managed-by=mqtt-dsp-operator/test/dsp-mqtt.io/owner=MqttTransfer/plant-1/{name}")
}

#[tokio::test]
async fn creates_user_with_subscribe_only_rules_on_exactly_its_topics() {
    let env = env().await;
    let outcome = env.client().ensure_user(&grant("c-1", &["line-1/temp", "line-1/press/+"])).await.unwrap();
    assert_eq!(outcome, Outcome::Created);

    let user = env.double.user("c-1").unwrap();
    assert!(!user.is_superuser, "a superuser would bypass every rule");
    assert!(env.double.can_connect("c-1", PASSWORD));
    assert_eq!(
        triples(&env.double.rules("c-1").unwrap()),
        vec![
            t("deny", "all", &marker("c-1")),
            t("deny", "publish", "#"),
            t("deny", "subscribe", "eq line-1/press/#"),
            t("allow", "subscribe", "line-1/temp"),
            t("allow", "subscribe", "line-1/press/+"),
            t("deny", "all", "#"),
            t("deny", "all", "$SYS/#"),
        ]
    );
    // What a consumer experiences, evaluated the way EMQX evaluates the record.
    let d = &env.double;
    assert_eq!(d.authorize("c-1", "subscribe", "line-1/temp"), Decision::Allow);
    assert_eq!(d.authorize("c-1", "subscribe", "line-1/press/p7"), Decision::Allow);
    assert_eq!(d.authorize("c-1", "subscribe", "line-1/press/+"), Decision::Allow);
    // EMQX would let `+` in the rule take this `#`, which receives line-1/press/a/b.
    assert_eq!(d.authorize("c-1", "subscribe", "line-1/press/#"), Decision::Deny);
    assert_eq!(d.authorize("c-1", "subscribe", "line-1/humidity"), Decision::Deny);
    assert_eq!(d.authorize("c-1", "subscribe", "#"), Decision::Deny);
    assert_eq!(d.authorize("c-1", "subscribe", "$SYS/brokers"), Decision::Deny);
    assert_eq!(d.authorize("c-1", "publish", "line-1/temp"), Decision::Deny);
    assert_eq!(d.authorize("c-1", "publish", "anything/else"), Decision::Deny);
}

#[tokio::test]
async fn second_identical_ensure_makes_no_write() {
    let env = env().await;
    let client = env.client();
    let g = grant("c-1", &["a/#"]);
    client.ensure_user(&g).await.unwrap();
    env.server.log.clear();
    assert_eq!(client.ensure_user(&g).await.unwrap(), Outcome::Unchanged);
    assert_eq!(env.mutating(), Vec::<String>::new());
    assert!(!env.server.log.all().is_empty(), "it did read");
}

#[tokio::test]
async fn changed_topics_rewrite_the_rules_and_leave_the_password() {
    let env = env().await;
    let client = env.client();
    client.ensure_user(&grant("c-1", &["a/#"])).await.unwrap();
    env.server.log.clear();
    assert_eq!(client.ensure_user(&grant("c-1", &["b/+", "a/#"])).await.unwrap(), Outcome::Updated);
    assert_eq!(env.mutating(), vec!["PUT /api/v5/authorization/sources/built_in_database/rules/users/c-1"]);
    assert_eq!(env.double.authorize("c-1", "subscribe", "b/x"), Decision::Allow);
    assert!(env.double.can_connect("c-1", PASSWORD));
}

#[tokio::test]
async fn a_user_made_superuser_behind_our_back_is_put_back() {
    let env = env().await;
    let client = env.client();
    let g = grant("c-1", &["a"]);
    client.ensure_user(&g).await.unwrap();
    env.double.set_superuser("c-1", true);
    assert_eq!(env.double.authorize("c-1", "publish", "a"), Decision::Allow);
    assert_eq!(client.ensure_user(&g).await.unwrap(), Outcome::Updated);
    assert!(!env.double.user("c-1").unwrap().is_superuser);
    assert_eq!(env.double.authorize("c-1", "publish", "a"), Decision::Deny);
}

#[tokio::test]
async fn suspend_kicks_live_clients_and_leaves_a_deny() {
    let env = env().await;
    let client = env.client();
    let g = grant("c-1", &["a/#"]);
    client.ensure_user(&g).await.unwrap();
    env.double.connect_client("c-1-app", "c-1");
    env.double.connect_client("c-1-backup", "c-1");
    env.double.connect_client("someone-else", "other");

    assert_eq!(client.ensure_user(&suspended(g.clone())).await.unwrap(), Outcome::Updated);
    assert_eq!(env.double.connected_clients("c-1"), Vec::<String>::new());
    assert_eq!(env.double.all_clients(), vec!["someone-else"], "only c-1's clients are kicked");
    assert_eq!(env.double.authorize("c-1", "subscribe", "a/x"), Decision::Deny);
    assert!(!env.double.can_connect("c-1", PASSWORD), "a suspended user cannot connect again");
    assert_eq!(
        triples(&env.double.rules("c-1").unwrap()),
        vec![t("deny", "all", &marker("c-1")), t("deny", "all", "#"), t("deny", "all", "$SYS/#")]
    );

    env.server.log.clear();
    assert_eq!(client.ensure_user(&suspended(g)).await.unwrap(), Outcome::Unchanged);
    assert_eq!(env.mutating(), Vec::<String>::new());
}

#[tokio::test]
async fn resume_restores_rules_and_password() {
    let env = env().await;
    let client = env.client();
    let g = grant("c-1", &["a/#", "b"]);
    client.ensure_user(&g).await.unwrap();
    let granted = env.double.rules("c-1").unwrap();
    client.ensure_user(&suspended(g.clone())).await.unwrap();

    assert_eq!(client.ensure_user(&g).await.unwrap(), Outcome::Updated);
    assert_eq!(env.double.rules("c-1").unwrap(), granted);
    assert!(env.double.can_connect("c-1", PASSWORD));
    assert_eq!(env.double.authorize("c-1", "subscribe", "a/x"), Decision::Allow);

    env.server.log.clear();
    assert_eq!(client.ensure_user(&g).await.unwrap(), Outcome::Unchanged);
    assert_eq!(env.mutating(), Vec::<String>::new());
}

#[tokio::test]
async fn created_suspended_the_user_exists_but_cannot_connect() {
    let env = env().await;
    let outcome = env.client().ensure_user(&suspended(grant("c-1", &["a"]))).await.unwrap();
    assert_eq!(outcome, Outcome::Created);
    assert!(!env.double.can_connect("c-1", PASSWORD));
    assert_eq!(env.double.authorize("c-1", "subscribe", "a"), Decision::Deny);
}

#[tokio::test]
async fn set_password_applies_now_or_on_resume_when_suspended() {
    let env = env().await;
    let client = env.client();
    let g = grant("c-1", &["a"]);
    client.ensure_user(&g).await.unwrap();
    let new = SecretString::from("rotated-7c1".to_owned());
    assert_eq!(client.set_password("c-1", &new, &g.owner).await.unwrap(), Outcome::Updated);
    assert!(env.double.can_connect("c-1", "rotated-7c1"));

    client.ensure_user(&suspended(g.clone())).await.unwrap();
    env.server.log.clear();
    assert_eq!(client.set_password("c-1", &new, &g.owner).await.unwrap(), Outcome::Unchanged);
    assert_eq!(env.mutating(), Vec::<String>::new(), "a suspended user keeps its unknown password");
    assert!(!env.double.can_connect("c-1", "rotated-7c1"));
}

#[tokio::test]
async fn remove_deletes_user_and_rules_and_kicks() {
    let env = env().await;
    let client = env.client();
    let g = grant("c-1", &["a"]);
    client.ensure_user(&g).await.unwrap();
    env.double.connect_client("c-1-app", "c-1");

    assert_eq!(client.remove_user("c-1", &g.owner).await.unwrap(), Outcome::Deleted);
    assert_eq!(env.double.user("c-1"), None);
    assert_eq!(env.double.rules("c-1"), None);
    assert_eq!(env.double.connected_clients("c-1"), Vec::<String>::new());
    assert_eq!(env.double.kicked(), vec!["c-1-app"]);

    assert_eq!(client.remove_user("c-1", &g.owner).await.unwrap(), Outcome::Absent);
}

#[tokio::test]
async fn remove_of_a_user_that_never_existed_is_absent_without_writes() {
    let env = env().await;
    assert_eq!(env.client().remove_user("nobody", &owner("nobody")).await.unwrap(), Outcome::Absent);
    assert_eq!(env.mutating(), Vec::<String>::new());
}

#[tokio::test]
async fn leftover_rules_of_ours_are_completed_with_the_user() {
    // A crash after the rules were written and before the user was: the retry finishes the job.
    let env = env().await;
    let rules: Vec<Value> = [("deny", "all", marker("c-1").as_str()), ("deny", "all", "#")]
        .iter()
        .map(|(p, a, t)| json!({"permission": p, "action": a, "topic": t}))
        .collect();
    env.double.insert_rules("c-1", rules);
    assert_eq!(env.client().ensure_user(&grant("c-1", &["a"])).await.unwrap(), Outcome::Created);
    assert!(env.double.can_connect("c-1", PASSWORD));
    assert_eq!(env.double.authorize("c-1", "subscribe", "a"), Decision::Allow);
}

#[tokio::test]
async fn disconnect_kicks_every_client_of_the_identity_across_pages() {
    let env = env().await;
    for i in 0..150 {
        env.double.connect_client(&format!("sub-{i:03}"), "token-subject");
    }
    env.double.connect_client("bystander", "other");
    assert_eq!(env.client().disconnect("token-subject").await.unwrap(), 150);
    assert_eq!(env.double.all_clients(), vec!["bystander"]);
    assert_eq!(env.client().disconnect("token-subject").await.unwrap(), 0);
}

#[tokio::test]
async fn token_requirements_carry_a_subscribe_only_acl_claim() {
    let env = env().await;
    let topics = vec!["line-1/#".to_owned(), "line-2/temp".to_owned()];
    let req = env.client().token_requirements(&topics).unwrap();
    assert_eq!(req.audience, AUDIENCE);
    assert_eq!(req.claims.len(), 1);
    assert_eq!(req.claims[0].name, "acl");
    assert_eq!(
        req.claims[0].value,
        json!([
            {"permission": "deny", "action": "publish", "topic": "#"},
            {"permission": "allow", "action": "subscribe", "topic": "line-1/#"},
            {"permission": "allow", "action": "subscribe", "topic": "line-2/temp"},
            {"permission": "deny", "action": "all", "topic": "#"},
            {"permission": "deny", "action": "all", "topic": "$SYS/#"},
        ])
    );

    let mut settings = env.settings(API_SECRET, Duration::from_secs(5));
    settings.acl_claim_format = AclClaimFormat::Legacy;
    settings.acl_claim_name = "mqtt_acl".into();
    let legacy = EmqxClient::new(settings, AUDIENCE).unwrap().token_requirements(&topics).unwrap();
    assert_eq!(legacy.claims[0].name, "mqtt_acl");
    assert_eq!(legacy.claims[0].value, json!({"sub": ["line-1/#", "line-2/temp"]}));
    assert_eq!(env.server.log.all(), vec![], "token requirements need no request");
}

#[tokio::test]
async fn topics_emqx_would_misread_are_refused_before_any_request() {
    let env = env().await;
    let err = env.client().ensure_user(&grant("c-1", &["eq a/b"])).await.unwrap_err();
    assert!(matches!(err, BackendError::Unsupported { system: System::Emqx, .. }), "{err:?}");
    assert!(env.client().token_requirements(&["a/${username}".into()]).is_err());
    assert_eq!(env.server.log.all(), vec![]);
}

#[tokio::test]
async fn a_foreign_user_is_untouched() {
    let env = env().await;
    let client = env.client();
    env.double.insert_user("c-1", "their-password", false);
    env.double.connect_client("their-app", "c-1");

    let g = grant("c-1", &["a"]);
    assert!(matches!(client.ensure_user(&g).await.unwrap_err(), BackendError::Foreign { .. }));
    assert!(matches!(client.ensure_user(&suspended(g.clone())).await.unwrap_err(), BackendError::Foreign { .. }));
    assert!(matches!(
        client.set_password("c-1", &SecretString::from("x".to_owned()), &g.owner).await.unwrap_err(),
        BackendError::Foreign { .. }
    ));
    assert!(matches!(client.remove_user("c-1", &g.owner).await.unwrap_err(), BackendError::Foreign { .. }));

    assert_eq!(env.mutating(), Vec::<String>::new());
    assert!(env.double.can_connect("c-1", "their-password"));
    assert_eq!(env.double.rules("c-1"), None);
    assert_eq!(env.double.connected_clients("c-1"), vec!["their-app"]);
}

#[tokio::test]
async fn rules_without_our_marker_or_of_another_owner_are_foreign() {
    let env = env().await;
    let client = env.client();
    env.double.insert_rules("admin-made", vec![json!({"permission": "allow", "action": "all", "topic": "#"})]);
    let err = client.ensure_user(&grant("admin-made", &["a"])).await.unwrap_err();
    assert!(matches!(err, BackendError::Foreign { .. }), "{err:?}");
    assert!(matches!(
        client.remove_user("admin-made", &owner("admin-made")).await.unwrap_err(),
        BackendError::Foreign { .. }
    ));

    client.ensure_user(&grant("c-1", &["a"])).await.unwrap();
    let mut other = grant("c-1", &["a"]);
    other.owner = owner("another-transfer");
    let err = client.ensure_user(&other).await.unwrap_err();
    assert!(matches!(err, BackendError::Foreign { .. }), "{err:?}");
    assert!(err.to_string().contains("MqttTransfer/plant-1/c-1"), "{err}");
    assert!(matches!(client.remove_user("c-1", &other.owner).await.unwrap_err(), BackendError::Foreign { .. }));
    assert!(env.double.user("c-1").is_some());
}

#[tokio::test]
async fn wrong_credentials_are_unauthorized_and_the_secret_stays_out() {
    let env = env().await;
    let wrong = "wrong-secret-31c";
    let client = EmqxClient::new(env.settings(wrong, Duration::from_secs(5)), AUDIENCE).unwrap();
    let err = client.ensure_user(&grant("c-1", &["a"])).await.unwrap_err();
    assert!(matches!(err, BackendError::Unauthorized { status: 401, system: System::Emqx, .. }), "{err:?}");
    for text in [err.to_string(), format!("{err:?}"), format!("{client:?}")] {
        assert!(!text.contains(wrong) && !text.contains(PASSWORD), "{text}");
    }
    assert_eq!(env.double.user("c-1"), None);
}

#[tokio::test]
async fn a_missing_authenticator_is_rejected_with_emqx_text_and_no_password() {
    let env = env().await;
    let mut settings = env.settings(API_SECRET, Duration::from_secs(5));
    settings.authenticator_id = "password_based:mysql".into();
    let client = EmqxClient::new(settings, AUDIENCE).unwrap();
    let err = client.ensure_user(&grant("c-1", &["a"])).await.unwrap_err();
    match &err {
        BackendError::Rejected { status: 404, message, .. } => assert!(message.contains("NOT_FOUND"), "{message}"),
        other => panic!("expected Rejected 404, got {other:?}"),
    }
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains(PASSWORD) && !text.contains(API_SECRET), "{text}");
    }
}

#[tokio::test]
async fn set_password_of_a_missing_user_is_rejected() {
    let env = env().await;
    let err =
        env.client().set_password("nobody", &SecretString::from("p".to_owned()), &owner("nobody")).await.unwrap_err();
    assert!(matches!(err, BackendError::Rejected { status: 404, .. }), "{err:?}");
}

#[tokio::test]
async fn server_errors_are_unavailable_and_retryable() {
    let env = env().await;
    env.server.faults.fail_next(1, 503);
    let err = env.client().ensure_user(&grant("c-1", &["a"])).await.unwrap_err();
    assert!(matches!(err, BackendError::Unavailable { status: 503, .. }), "{err:?}");
    assert!(err.is_retryable());
    // And the next attempt goes through.
    assert_eq!(env.client().ensure_user(&grant("c-1", &["a"])).await.unwrap(), Outcome::Created);
}

#[tokio::test]
async fn a_stalled_broker_times_out() {
    let env = env().await;
    env.server.faults.stall(true);
    let client = EmqxClient::new(env.settings(API_SECRET, Duration::from_secs(1)), AUDIENCE).unwrap();
    let started = std::time::Instant::now();
    let err = client.disconnect("c-1").await.unwrap_err();
    assert!(matches!(err, BackendError::Timeout { timeout_seconds: 1, .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn an_api_url_ending_in_api_v5_is_used_as_is() {
    let env = env().await;
    let mut settings = env.settings(API_SECRET, Duration::from_secs(5));
    settings.api_url = format!("{}/api/v5/", env.server.base_url).parse().unwrap();
    EmqxClient::new(settings, AUDIENCE).unwrap().ensure_user(&grant("c-1", &["a"])).await.unwrap();
    assert!(env.double.user("c-1").is_some());
}

/// The double itself: strict where EMQX is.
mod double {
    use super::*;

    async fn raw(env: &Env, method: reqwest::Method, path: &str, body: Option<Value>, auth: bool) -> (u16, Value) {
        raw_as(env, method, path, body, auth.then_some(API_SECRET)).await
    }

    async fn raw_as(
        env: &Env,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        secret: Option<&str>,
    ) -> (u16, Value) {
        let http = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(env.ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap();
        let mut request = http.request(method, format!("{}{path}", env.server.base_url));
        if let Some(secret) = secret {
            request = request.basic_auth(API_KEY, Some(secret));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    const USERS: &str = "/api/v5/authentication/password_based:built_in_database/users";
    const RULES: &str = "/api/v5/authorization/sources/built_in_database/rules/users";

    #[tokio::test]
    async fn refuses_missing_and_wrong_credentials_in_emqx_shape() {
        let env = env().await;
        let (status, body) = raw(&env, reqwest::Method::GET, "/api/v5/clients", None, false).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("AUTHORIZATION_HEADER_ERROR")));
        let (status, body) = raw_as(&env, reqwest::Method::GET, "/api/v5/clients", None, Some("guess")).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("BAD_API_KEY_OR_SECRET")));
        let (status, _) = raw(&env, reqwest::Method::GET, "/api/v5/nothing-here", None, true).await;
        assert_eq!(status, 404);
    }

    #[tokio::test]
    async fn answers_duplicates_with_409_and_bad_bodies_with_400() {
        let env = env().await;
        let user = json!({"user_id": "u", "password": "p"});
        let (status, body) = raw(&env, reqwest::Method::POST, USERS, Some(user.clone()), true).await;
        assert_eq!((status, body), (201, json!({"user_id": "u", "is_superuser": false})));
        let (status, body) = raw(&env, reqwest::Method::POST, USERS, Some(user), true).await;
        assert_eq!((status, body["code"].as_str()), (409, Some("ALREADY_EXISTS")));

        let rules = json!([{"username": "u", "rules": [{"permission": "allow", "action": "subscribe", "topic": "a"}]}]);
        let (status, _) = raw(&env, reqwest::Method::POST, RULES, Some(rules.clone()), true).await;
        assert_eq!(status, 204);
        let (status, body) = raw(&env, reqwest::Method::POST, RULES, Some(rules), true).await;
        assert_eq!((status, body["code"].as_str()), (409, Some("ALREADY_EXISTS")));
        let (status, body) = raw(&env, reqwest::Method::GET, &format!("{RULES}/u"), None, true).await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({"username": "u", "rules": [
                {"permission": "allow", "action": "subscribe", "topic": "a", "qos": [0, 1, 2], "retain": "all"}
            ]})
        );

        let bad_action = json!([{"username": "v", "rules": [{"permission": "allow", "action": "sub", "topic": "a"}]}]);
        let (status, body) = raw(&env, reqwest::Method::POST, RULES, Some(bad_action), true).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("BAD_REQUEST")));
        let (status, body) =
            raw(&env, reqwest::Method::PUT, &format!("{USERS}/u"), Some(json!({"is_superuser": true})), true).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("BAD_REQUEST")), "the password is required");
        let (status, body) = raw(&env, reqwest::Method::DELETE, "/api/v5/clients/ghost", None, true).await;
        assert_eq!((status, body["code"].as_str()), (404, Some("CLIENTID_NOT_FOUND")));
        let (status, body) = raw(&env, reqwest::Method::GET, &format!("{USERS}/ghost"), None, true).await;
        assert_eq!((status, body["code"].as_str()), (404, Some("NOT_FOUND")));
    }
}
