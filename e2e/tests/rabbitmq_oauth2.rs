//! oauth2 mode against a real RabbitMQ 3.10 with the OAuth 2.0 plugin, whose JWKS is a realm of
//! the real Keycloak (`e2e/src/systems/keycloak.rs`, HTTPS, the run's shared CA): a token issued
//! through our Keycloak client, carrying the scopes our RabbitMQ client asks for, connects over
//! mqtts with the JWT as the CONNECT password, receives on its topic and is refused on another; an
//! expired token, a token signed by a foreign key and a token for another audience are refused.
//!
//! Every token but the forged one is the real Keycloak's: the expired one comes from a client
//! with a 1 s `access.token.lifespan` (the test waits for it to run out), the wrong-audience one
//! from a client whose audience mapper names another service, both made through our Keycloak
//! client like the transfer's own. A token signed by a key Keycloak does not hold cannot come
//! from Keycloak: it is the realm's token re-signed with the committed foreign test key
//! (`e2e/fixtures/keycloak-foreign-key.pem`) under the realm's `kid`, as an attacker would.
//! Nothing here needs the Keycloak double.
//!
//! One test function: RabbitMQ's `jwks_url` is fixed when the broker starts, so one realm serves
//! the broker's whole life.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use e2e::brokers::rabbitmq::{ADMIN_PASSWORD, ADMIN_USER, OAuthSettings, RabbitMq};
use e2e::consumer::{ConnectError, Consumer, ConsumerOptions};
use e2e::systems::keycloak::Keycloak;
use e2e::tls::TestCa;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mqtt_dsp_operator::backends::broker::Broker;
use mqtt_dsp_operator::backends::broker::rabbitmq::{RabbitmqClient, RabbitmqSettings};
use mqtt_dsp_operator::backends::http::HttpSettings;
use mqtt_dsp_operator::backends::identity::keycloak::{KeycloakClient, KeycloakSettings};
use mqtt_dsp_operator::backends::identity::{ClientDefinition, IdentityProvider};
use mqtt_dsp_operator::backends::{ExposeSecret, Owner, SecretString};
use serde_json::Value;
use url::Url;

const REALM_PREFIX: &str = "rabbitmq-oauth2";
const OPERATOR: &str = "mqtt-dsp-operator";
const OPERATOR_SECRET: &str = "operator-secret-for-rabbitmq-oauth2-test";
const SCOPES_KEY: &str = "dsp_mqtt_scopes";
const FOREIGN_KEY_FILE: &str = include_str!("../fixtures/keycloak-foreign-key.pem");

fn options(broker: &RabbitMq, password: &str) -> ConsumerOptions {
    ConsumerOptions {
        url: broker.mqtts_url(),
        // RabbitMQ takes the identity from the token's `sub`; the MQTT username is ignored.
        username: "ignored".into(),
        password: password.into(),
        ca_pem: broker.ca_pem.clone(),
        client_id: format!("consumer-{}", uuid::Uuid::new_v4().simple()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_the_identity_provider_grant_exactly_their_topics() {
    mqtt_dsp_operator::install_crypto_provider();
    e2e::logs::init();
    e2e::logs::register_secret(OPERATOR_SECRET);
    let kc = Keycloak::shared().await.unwrap_or_else(|e| panic!("{e}"));
    let realm = kc.create_realm(REALM_PREFIX, OPERATOR, OPERATOR_SECRET).await.unwrap();
    // Erlang's TLS hostname check does not match an IP address against an iPAddress SAN, so
    // RabbitMQ fetches the JWKS by the certificate's DNS name.
    let oauth = OAuthSettings {
        jwks_url: realm.localhost_jwks_url(),
        resource_server_id: "rabbitmq".into(),
        additional_scopes_key: SCOPES_KEY.into(),
    };
    // Keycloak's certificate is the shared CA's: RabbitMQ trusts that CA for the JWKS.
    let ca = TestCa::shared();
    let broker = tokio::task::spawn_blocking(move || RabbitMq::start(&ca, Some(&oauth)))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let http = HttpSettings { timeout: Duration::from_secs(10), ca_bundle_pem: Some(kc.ca_pem.clone()) };
    let rabbit = RabbitmqClient::new(RabbitmqSettings {
        management_url: broker.management_url().parse().unwrap(),
        username: ADMIN_USER.into(),
        password: SecretString::from(ADMIN_PASSWORD.to_owned()),
        vhost: "/".into(),
        exchange: "amq.topic".into(),
        resource_server_id: "rabbitmq".into(),
        additional_scopes_key: SCOPES_KEY.into(),
        http: http.clone(),
    })
    .unwrap();
    let identity = KeycloakClient::new(KeycloakSettings {
        base_url: Url::parse(&realm.base_url).unwrap(),
        realm: realm.name.clone(),
        client_id: OPERATOR.into(),
        client_secret: SecretString::from(OPERATOR_SECRET.to_owned()),
        public_token_url: Url::parse(&realm.token_url()).unwrap(),
        http,
    })
    .unwrap();

    // The transfer's client carries what the broker needs: audience and topic scopes.
    let requirements = rabbit.token_requirements(&["factory/line-1/#".into()]).unwrap();
    let owner = Owner {
        installation: "test".into(),
        kind: "MqttTransfer".into(),
        namespace: "dataspace".into(),
        name: "t".into(),
    };
    let definition = |client_id: &str, lifespan: u32, audience: &str| ClientDefinition {
        client_id: client_id.into(),
        description: format!("{client_id} (rabbitmq_oauth2 test)"),
        enabled: true,
        access_token_lifespan_seconds: Some(lifespan),
        refresh_tokens_for_client_credentials: true,
        audience: Some(audience.into()),
        claims: requirements.claims.clone(),
        owner: owner.clone(),
    };
    let issue = async |definition: &ClientDefinition| {
        identity.ensure_client(definition).await.unwrap();
        let secret = identity.client_secret(&definition.client_id, &owner).await.unwrap();
        let tokens = identity.issue_token(&definition.client_id, &secret).await.unwrap();
        let jwt = tokens.access_token.expose_secret().to_owned();
        e2e::logs::register_secret(&jwt);
        (secret, jwt)
    };
    let transfer = definition("dsp-mqtt-transfer-a", 300, &requirements.audience);
    let (secret, jwt) = issue(&transfer).await;
    // Same audience and scopes, a 1 s lifetime: its token runs out while the steps below run.
    let (_, expiring) = issue(&definition("dsp-mqtt-transfer-expiring", 1, &requirements.audience)).await;
    let (_, wrong_audience) = issue(&definition("dsp-mqtt-transfer-other-audience", 300, "some-other-service")).await;
    let claims = payload(&jwt);
    assert!(audiences(&claims).contains(&"rabbitmq".to_owned()), "the transfer's token: {claims}");

    let mut consumer = Consumer::connect(&options(&broker, &jwt)).await.unwrap_or_else(|e| {
        panic!(
            "a valid token was refused: {e:?}\n{}",
            broker.log().lines().rev().take(20).collect::<Vec<_>>().join("\n")
        )
    });
    assert!(consumer.subscribe("factory/line-1/temperature").await, "own topic denied:\n{}", tail(&broker));
    let publisher =
        Consumer::connect(&ConsumerOptions { username: ADMIN_USER.into(), ..options(&broker, ADMIN_PASSWORD) })
            .await
            .unwrap();
    assert!(publisher.publish("factory/line-1/temperature", b"22.0").await);
    let (topic, body) = consumer.next_message(Duration::from_secs(3)).await.expect("message on own topic");
    assert_eq!((topic.as_str(), body.as_slice()), ("factory/line-1/temperature", b"22.0".as_slice()));

    let mut other = Consumer::connect(&options(&broker, &jwt)).await.unwrap();
    assert!(!other.subscribe("factory/line-2/temperature").await, "a topic outside the token's scopes was granted");

    // Expired: Keycloak honoured the 1 s lifespan, and the token differs from the valid one in
    // its lifetime only (same audience, same scopes).
    let expiring_claims = payload(&expiring);
    let exp = expiring_claims["exp"].as_u64().expect("exp");
    assert_eq!(exp - expiring_claims["iat"].as_u64().expect("iat"), 1, "{expiring_claims}");
    assert_eq!(audiences(&expiring_claims), audiences(&claims));
    assert_eq!(expiring_claims[SCOPES_KEY], claims[SCOPES_KEY]);
    // RabbitMQ compares `exp` with its clock in whole seconds: wait until it is surely past.
    while now_seconds() <= exp + 1 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(matches!(Consumer::connect(&options(&broker, &expiring)).await, Err(ConnectError::Refused(_))));

    // Forged: the valid token's header and claims, signed by a key the realm does not hold.
    let forged = sign_with_foreign_key(&header(&jwt)["kid"], &claims);
    assert!(matches!(Consumer::connect(&options(&broker, &forged)).await, Err(ConnectError::Refused(_))));

    // Another audience: a real token with the same scopes, whose audience mapper names another
    // service instead of the broker.
    let wrong_claims = payload(&wrong_audience);
    let wrong_audiences = audiences(&wrong_claims);
    assert!(wrong_audiences.contains(&"some-other-service".to_owned()), "{wrong_claims}");
    assert!(!wrong_audiences.contains(&"rabbitmq".to_owned()), "{wrong_claims}");
    assert_eq!(wrong_claims[SCOPES_KEY], claims[SCOPES_KEY]);
    assert!(matches!(Consumer::connect(&options(&broker, &wrong_audience)).await, Err(ConnectError::Refused(_))));

    // A disabled client gets no new token: access ends with the current token's lifetime.
    identity.ensure_client(&ClientDefinition { enabled: false, ..transfer }).await.unwrap();
    assert!(identity.issue_token("dsp-mqtt-transfer-a", &secret).await.is_err());
}

fn tail(broker: &RabbitMq) -> String {
    broker.log().lines().rev().take(30).collect::<Vec<_>>().join("\n")
}

fn now_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// One JSON part of a JWT (0: header, 1: payload), read without verifying anything.
fn part(jwt: &str, index: usize) -> Value {
    let part = jwt.split('.').nth(index).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).expect("base64url");
    serde_json::from_slice(&bytes).expect("a JSON part")
}

fn header(jwt: &str) -> Value {
    part(jwt, 0)
}

fn payload(jwt: &str) -> Value {
    part(jwt, 1)
}

/// `aud` as a list (Keycloak sends a string for one audience, a list for several).
fn audiences(claims: &Value) -> Vec<String> {
    match &claims["aud"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(list) => list.iter().filter_map(|a| a.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

/// `claims` signed RS256 with the committed foreign test key under the realm's `kid`.
fn sign_with_foreign_key(kid: &Value, claims: &Value) -> String {
    let pem = &FOREIGN_KEY_FILE[FOREIGN_KEY_FILE.find("-----BEGIN").expect("a PEM block")..];
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("foreign key fixture");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.as_str().expect("the realm's token names its kid").to_owned());
    header.typ = Some("JWT".into());
    let token = jsonwebtoken::encode(&header, claims, &key).expect("RS256 signing");
    e2e::logs::register_secret(&token);
    token
}
