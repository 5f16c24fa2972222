//! The operator's refresh endpoint end to end, on real RabbitMQ with the real Keycloak: ADR 012's
//! scenario (a consumer refreshes with nothing but its refresh token and reconnects with the new
//! JWT), rotation ("retire on acknowledgement"), refusals once access is cut, the RFC 6749 error
//! for bad input with nothing changed, and the Tractus-X request shape with a bearer JWT in the
//! verifying mode.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use e2e::brokers::rabbitmq::{ADMIN_PASSWORD, ADMIN_USER};
use e2e::consumer::{ConnectError, Consumer, ConsumerOptions, FromSecret};
use e2e::stack::{DevStack, StackOptions, condition, wait_for};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use mqtt_dsp_operator::api::{MqttAsset, MqttTransfer};
use mqtt_dsp_operator::refresh::ROTATION_ANNOTATION;
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(30);
const TOPIC: &str = "factory/line-1/temperature";

fn asset() -> MqttAsset {
    serde_json::from_value(json!({
        "apiVersion": "dsp-mqtt.io/v1alpha1", "kind": "MqttAsset", "metadata": {"name": "line-1"},
        "spec": {
            "endpoint": {"type": "mqtt-tls"},
            "topics": ["factory/line-1/#"],
            "broker": "rabbitmq",
            "auth": {"mode": "oauth2"},
            "policy": {"access": {"participantIds": ["did:web:consumer-a.example.com", "did:web:consumer-b.example.com"]}},
        },
    }))
    .unwrap()
}

fn transfer(name: &str, consumer: &str) -> MqttTransfer {
    serde_json::from_value(json!({
        "apiVersion": "dsp-mqtt.io/v1alpha1", "kind": "MqttTransfer", "metadata": {"name": name},
        "spec": {
            "assetRef": {"name": "line-1"},
            "consumer": {"participantId": consumer},
            "topics": [TOPIC],
            "tokenLifetimeSeconds": 60,
        },
    }))
    .unwrap()
}

async fn start(refresh_extra: &str) -> DevStack {
    let stack =
        DevStack::start(StackOptions { rabbitmq: true, refresh_extra: refresh_extra.to_owned(), ..Default::default() })
            .await;
    let assets: Api<MqttAsset> = stack.api();
    assets.create(&PostParams::default(), &asset()).await.unwrap();
    wait_for(&assets, "line-1", WITHIN, "Ready", |a| {
        a.status.as_ref().and_then(|s| condition(&s.conditions, "Ready")).is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    stack
}

async fn active(stack: &DevStack, t: &MqttTransfer) -> MqttTransfer {
    let api: Api<MqttTransfer> = stack.api();
    api.create(&PostParams::default(), t).await.unwrap();
    wait_for(&api, t.metadata.name.as_deref().unwrap(), WITHIN, "Active", is_active).await
}

fn is_active(t: &MqttTransfer) -> bool {
    t.status.as_ref().and_then(|s| s.phase).map(|p| format!("{p:?}")).as_deref() == Some("Active")
}

async fn secret(stack: &DevStack, name: &str) -> Secret {
    stack.api::<Secret>().get(name).await.unwrap()
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    secret.data.as_ref()?.get(key).map(|v| String::from_utf8(v.0.clone()).unwrap())
}

fn rotation_state(secret: &Secret) -> Option<String> {
    secret.metadata.annotations.as_ref()?.get(ROTATION_ANNOTATION).cloned()
}

/// What came back from the endpoint.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("<none>")
    }

    fn token(&self, key: &str) -> String {
        let token = self.body[key].as_str().unwrap_or_else(|| panic!("no {key} in {}", self.body)).to_owned();
        e2e::logs::register_secret(&token);
        token
    }
}

/// POSTs `form` to `url` (with `query` and `bearer` when given), as a consumer would.
async fn post(
    stack: &DevStack,
    url: &str,
    query: &[(&str, &str)],
    form: &[(&str, &str)],
    bearer: Option<&str>,
) -> Answer {
    let mut request = stack.http().post(url).query(query).form(form);
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request.send().await.expect("the refresh endpoint answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    Answer { status, headers, body }
}

async fn refresh(stack: &DevStack, refresh_token: &str) -> Answer {
    post(stack, &stack.refresh_url, &[], &[("grant_type", "refresh_token"), ("refresh_token", refresh_token)], None)
        .await
}

fn options(stack: &DevStack, username: &str, jwt: &str) -> ConsumerOptions {
    ConsumerOptions {
        url: stack.rabbitmq.as_ref().unwrap().mqtts_url(),
        username: username.into(),
        password: jwt.into(),
        ca_pem: stack.ca.cert_pem(),
        client_id: format!("consumer-{}", uuid::Uuid::new_v4().simple()),
    }
}

/// Connects with `jwt`, subscribes to the transfer's topic and receives a message published
/// now: the token works for what the transfer grants.
async fn receives_live(stack: &DevStack, username: &str, jwt: &str) {
    let mut consumer = Consumer::connect(&options(stack, username, jwt)).await.expect("the JWT opens RabbitMQ");
    assert!(consumer.subscribe(TOPIC).await, "the transfer's topic");
    let publisher = Consumer::connect(&ConsumerOptions {
        username: ADMIN_USER.into(),
        ..options(stack, ADMIN_USER, ADMIN_PASSWORD)
    })
    .await
    .unwrap();
    let payload = uuid::Uuid::new_v4().to_string();
    assert!(publisher.publish(TOPIC, payload.as_bytes()).await);
    let (topic, body) = consumer.next_message(Duration::from_secs(5)).await.expect("a live message");
    assert_eq!((topic.as_str(), body), (TOPIC, payload.into_bytes()));
}

fn exp(jwt: &str) -> u64 {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["exp"].as_u64().expect("exp")
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adr_012_a_consumer_refreshes_with_only_its_refresh_token_and_reconnects() {
    let mut stack = start("").await;
    let participant = "did:web:consumer-a.example.com";
    active(&stack, &transfer("t-a", participant)).await;
    let identity = format!("dsp-mqtt-transfer-{}-t-a", stack.namespace);
    let client = stack.keycloak.client(&identity).await.expect("the transfer's client");
    assert_eq!(
        client.attributes.get("client_credentials.use_refresh_token").map(String::as_str),
        Some("false"),
        "Keycloak keeps no session per grant: the refresh token is the operator's"
    );

    // The DataAddress: our endpoint, our opaque refresh token, an absolute expiry.
    let s = secret(&stack, "t-a").await;
    let from = FromSecret::read(&s, &stack.ca.cert_pem()).expect("credentials");
    assert_eq!(text(&s, "refreshEndpoint").as_deref(), Some(stack.refresh_url.as_str()));
    let r0 = text(&s, "refreshToken").expect("a refresh token");
    e2e::logs::register_secret(&r0);
    assert!(r0.starts_with("v1.") && !r0.starts_with("eyJ"), "opaque, not Keycloak's JWT");
    assert_eq!(text(&s, "refreshAudience").as_deref(), Some("rabbitmq"));
    let expires_at = text(&s, "expiresAt").expect("dsp-mqtt:expiresAt");
    let at: k8s_openapi::jiff::Timestamp = expires_at.parse().expect("RFC 3339");
    assert_eq!(at.as_second() as u64, exp(&from.options.password), "expiresAt is the JWT's exp");
    let state0 = rotation_state(&s).expect("the digest is stored");
    assert!(!state0.contains(&r0) && state0.starts_with("sha256:"), "only a digest is stored");
    let status = serde_json::to_string(&stack.api::<MqttTransfer>().get("t-a").await.unwrap().status).unwrap();
    assert!(!status.contains(&r0), "no refresh token in status");
    receives_live(&stack, &from.options.username, &from.options.password).await;

    // Bad input: the RFC 6749 error, nothing changed.
    let logins = stack.keycloak.logins(&identity).await;
    let url = stack.refresh_url.clone();
    let bad = post(&stack, &url, &[], &[("refresh_token", &r0)], None).await;
    assert_eq!((bad.status, bad.error()), (400, "invalid_request"), "missing grant_type: {}", bad.body);
    let bad = post(&stack, &url, &[], &[("grant_type", "client_credentials"), ("refresh_token", &r0)], None).await;
    assert_eq!((bad.status, bad.error()), (400, "unsupported_grant_type"));
    let bad = post(&stack, &url, &[], &[("grant_type", "refresh_token")], None).await;
    assert_eq!((bad.status, bad.error()), (400, "invalid_request"), "missing refresh_token");
    let forged = format!("{}.{}", r0.rsplit_once('.').unwrap().0, URL_SAFE_NO_PAD.encode([7u8; 32]));
    let bad = refresh(&stack, &forged).await;
    assert_eq!((bad.status, bad.error()), (400, "invalid_grant"), "a token of the right shape but unknown");
    let bad = refresh(&stack, "not-even-our-shape").await;
    assert_eq!((bad.status, bad.error()), (400, "invalid_grant"));
    let big = "x".repeat(5000);
    let bad = post(&stack, &url, &[], &[("grant_type", "refresh_token"), ("refresh_token", &big)], None).await;
    assert_eq!((bad.status, bad.error()), (413, "invalid_request"), "oversized body");
    assert_eq!(bad.headers.get("cache-control").map(|v| v.to_str().unwrap()), Some("no-store"));
    let get = stack.http().get(&url).send().await.unwrap();
    assert_eq!(get.status().as_u16(), 405);
    assert_eq!(rotation_state(&secret(&stack, "t-a").await), Some(state0.clone()), "nothing rotated");
    assert_eq!(stack.keycloak.logins(&identity).await, logins, "no token issued");

    // ADR 012: only the refresh token, a new JWT back, reconnect with it.
    let first = refresh(&stack, &r0).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["token_type"], "Bearer");
    assert_eq!(first.body["expires_in"], 60);
    assert_eq!(first.headers.get("cache-control").map(|v| v.to_str().unwrap()), Some("no-store"));
    let a1 = first.token("access_token");
    let r1 = first.token("refresh_token");
    assert!(a1 != from.options.password && r1 != r0 && r1.starts_with("v1."));
    receives_live(&stack, &from.options.username, &a1).await;

    // Retire on acknowledgement: r0 stays valid until r1 is used; its repeat drops the unused r1.
    let again = refresh(&stack, &r0).await;
    assert_eq!(again.status, 200, "the answer may have been lost: r0 still works: {}", again.body);
    let r1b = again.token("refresh_token");
    let dropped = refresh(&stack, &r1).await;
    assert_eq!((dropped.status, dropped.error()), (400, "invalid_grant"), "r1 was never used and was replaced");
    let used = refresh(&stack, &r1b).await;
    assert_eq!(used.status, 200, "{}", used.body);
    let r2 = used.token("refresh_token");
    let retired = refresh(&stack, &r0).await;
    assert_eq!((retired.status, retired.error()), (400, "invalid_grant"), "r0 is retired once r1b was used");
    // An operator restart keeps the rotation; so does the controller's renewal of the JWT in
    // the Secret (at two thirds of its life, during the wait below): r2 stays good.
    let state = rotation_state(&secret(&stack, "t-a").await);
    stack.restart_controllers().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rotation_state(&secret(&stack, "t-a").await), state, "a restart rotates nothing");
    let api: Api<MqttTransfer> = stack.api();

    // The first JWT expires (60 s): RabbitMQ refuses it, while a refreshed one opens the broker.
    let original = from.options.password.clone();
    while now() <= exp(&original) + 1 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(matches!(
        Consumer::connect(&options(&stack, &from.options.username, &original)).await,
        Err(ConnectError::Refused(_))
    ));
    let late = refresh(&stack, &r2).await;
    assert_eq!(late.status, 200, "{}", late.body);
    let a3 = late.token("access_token");
    let r3 = late.token("refresh_token");
    receives_live(&stack, &from.options.username, &a3).await;

    // Suspension ends refreshes; resumption hands out a new refresh token, the old one is dead.
    let patch = |state: &str| Patch::Merge(json!({"spec": {"state": state}}));
    api.patch("t-a", &PatchParams::default(), &patch("Suspended")).await.unwrap();
    wait_for(&api, "t-a", WITHIN, "Suspended", |t| {
        t.status.as_ref().and_then(|s| s.phase).map(|p| format!("{p:?}")).as_deref() == Some("Suspended")
    })
    .await;
    let refused = refresh(&stack, &r3).await;
    assert_eq!((refused.status, refused.error()), (400, "invalid_grant"), "suspended: {}", refused.body);
    api.patch("t-a", &PatchParams::default(), &patch("Started")).await.unwrap();
    wait_for(&api, "t-a", WITHIN, "Active again", is_active).await;
    let resumed = secret(&stack, "t-a").await;
    let fresh = text(&resumed, "refreshToken").expect("a fresh refresh token");
    e2e::logs::register_secret(&fresh);
    assert_ne!(fresh, r3);
    let dead = refresh(&stack, &r3).await;
    assert_eq!((dead.status, dead.error()), (400, "invalid_grant"), "the pre-suspension token stays dead");
    let ok = refresh(&stack, &fresh).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let r4 = ok.token("refresh_token");

    // Termination ends them for good.
    api.patch("t-a", &PatchParams::default(), &patch("Terminated")).await.unwrap();
    wait_for(&api, "t-a", WITHIN, "Terminated", |t| {
        t.status.as_ref().and_then(|s| s.phase).map(|p| format!("{p:?}")).as_deref() == Some("Terminated")
    })
    .await;
    let refused = refresh(&stack, &r4).await;
    assert_eq!((refused.status, refused.error()), (400, "invalid_grant"), "terminated: {}", refused.body);

    // Counted by result, with no token in the metrics.
    let metrics = stack.metrics.encode().unwrap();
    for result in ["ok", "invalid_grant", "invalid_request", "unsupported_grant_type"] {
        assert!(metrics.contains(&format!("mqtt_dsp_operator_refreshes_total{{result=\"{result}\"}}")), "{result}");
    }
    for token in [&r0, &r1, &r2, &r3, &r4, &a1, &a3] {
        assert!(!metrics.contains(token.as_str()));
    }
    api.delete("t-a", &DeleteParams::default()).await.unwrap();
    stack.teardown().await;
}

/// A consumer's signing key (ECDSA P-256) as a JWKS document and a signer.
struct ConsumerKey {
    kid: String,
    key: jsonwebtoken::EncodingKey,
    jwk: Value,
}

impl ConsumerKey {
    fn new(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate().expect("a P-256 key");
        let raw = pair.public_key_raw();
        assert_eq!((raw.len(), raw[0]), (65, 4), "an uncompressed P-256 point");
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..]),
        });
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("PKCS#8 PEM");
        Self { kid: kid.into(), key, jwk }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).expect("ES256")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tractus_x_shaped_requests_with_a_bearer_jwt_are_verified_against_the_consumers_keys() {
    let participant = "did:web:consumer-b.example.com";
    let provider = "did:web:provider.example.com";
    let key = ConsumerKey::new("consumer-b-key-1");
    let stranger = ConsumerKey::new("consumer-b-key-1");
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [key.jwk]}).to_string()).unwrap();
    let extra = format!(
        "  consumerAuth: {{mode: bearerJwt, jwksFile: {}, audiences: [\"{provider}\"]}}\n  rateLimit: {{perTransferPerMinute: 4}}\n",
        jwks.display()
    );
    let stack = start(&extra).await;
    active(&stack, &transfer("t-b", participant)).await;
    let s = secret(&stack, "t-b").await;
    let r0 = text(&s, "refreshToken").expect("a refresh token");
    e2e::logs::register_secret(&r0);
    let jwt = text(&s, "authorization").unwrap();
    let claims = |iss: &str, sub: &str| {
        json!({"iss": iss, "sub": sub, "aud": provider, "jti": uuid::Uuid::new_v4().to_string(),
               "iat": now(), "exp": now() + 300, "token": jwt})
    };
    // As the Tractus-X client sends it: `/token` appended, the parameters in the form body and
    // in the query string, the bearer JWT signed with the consumer's key.
    let url = format!("{}/token", stack.refresh_url);
    let params = [("grant_type", "refresh_token"), ("refresh_token", r0.as_str())];
    let tx = |bearer: Option<String>| {
        let (stack, url) = (&stack, url.clone());
        async move { post(stack, &url, &params, &params, bearer.as_deref()).await }
    };

    let missing = tx(None).await;
    assert_eq!((missing.status, missing.error()), (401, "invalid_client"), "{}", missing.body);
    assert_eq!(missing.headers.get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"));
    let wrong_key = tx(Some(stranger.sign(&claims(participant, participant)))).await;
    assert_eq!((wrong_key.status, wrong_key.error()), (401, "invalid_client"), "another key with the same kid");
    let other_consumer = tx(Some(key.sign(&claims("did:web:someone-else", "did:web:someone-else")))).await;
    assert_eq!((other_consumer.status, other_consumer.error()), (401, "invalid_client"), "iss/sub of another");
    assert_eq!(rotation_state(&secret(&stack, "t-b").await), rotation_state(&s), "nothing rotated");

    let accepted = tx(Some(key.sign(&claims(participant, participant)))).await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    let a1 = accepted.token("access_token");
    accepted.token("refresh_token");
    receives_live(&stack, &text(&s, "username").unwrap(), &a1).await;

    // Per-transfer rate limit (4 a minute here): a burst gets 429 with Retry-After.
    let mut limited = None;
    for _ in 0..6 {
        let answer = tx(Some(key.sign(&claims(participant, participant)))).await;
        if answer.status == 429 {
            limited = Some(answer);
            break;
        }
        answer.token("refresh_token");
    }
    let limited = limited.expect("a 429 within the burst");
    assert_eq!(limited.error(), "slow_down");
    let retry: u64 = limited.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert!(stack.metrics.encode().unwrap().contains("mqtt_dsp_operator_refreshes_total{result=\"slow_down\"}"));
    stack.teardown().await;
}
