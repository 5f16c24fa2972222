//! oauth2 mode against a real RabbitMQ 3.10 with the OAuth 2.0 plugin, whose JWKS is the Keycloak
//! double's (HTTPS, the run's CA): a token issued through our Keycloak client, carrying the
//! scopes our RabbitMQ client asks for, connects over mqtts with the JWT as the CONNECT password,
//! receives on its topic and is refused on another; an expired token, a token signed by a foreign
//! key and a token for another audience are refused.
//!
//! One test function: RabbitMQ's `jwks_url` is fixed when the broker starts, so the identity
//! provider double must live as long as the broker does.

use std::time::Duration;

use e2e::brokers::rabbitmq::{ADMIN_PASSWORD, ADMIN_USER, OAuthSettings, RabbitMq};
use e2e::consumer::{ConnectError, Consumer, ConsumerOptions};
use e2e::doubles::keycloak;
use e2e::tls::TestCa;
use mqtt_dsp_operator::backends::broker::Broker;
use mqtt_dsp_operator::backends::broker::rabbitmq::{RabbitmqClient, RabbitmqSettings};
use mqtt_dsp_operator::backends::http::HttpSettings;
use mqtt_dsp_operator::backends::identity::keycloak::{KeycloakClient, KeycloakSettings};
use mqtt_dsp_operator::backends::identity::{ClientDefinition, IdentityProvider};
use mqtt_dsp_operator::backends::{ExposeSecret, Owner, SecretString};
use url::Url;

const REALM: &str = "dataspace";
const OPERATOR: &str = "mqtt-dsp-operator";
const OPERATOR_SECRET: &str = "operator-secret-for-rabbitmq-oauth2-test";
const SCOPES_KEY: &str = "dsp_mqtt_scopes";

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
    let ca = TestCa::new();
    let kc = keycloak::start(&ca, REALM, OPERATOR, OPERATOR_SECRET).await.unwrap();
    // Erlang's TLS hostname check does not match an IP address against an iPAddress SAN, so
    // RabbitMQ fetches the JWKS by the certificate's DNS name.
    let oauth = OAuthSettings {
        jwks_url: kc.jwks_url().replace("127.0.0.1", "localhost"),
        resource_server_id: "rabbitmq".into(),
        additional_scopes_key: SCOPES_KEY.into(),
    };
    let ca_pem = ca.cert_pem();
    let broker = tokio::task::spawn_blocking(move || RabbitMq::start(&ca, Some(&oauth)))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let http = HttpSettings { timeout: Duration::from_secs(5), ca_bundle_pem: Some(ca_pem.clone()) };
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
        base_url: Url::parse(&kc.server.base_url).unwrap(),
        realm: REALM.into(),
        client_id: OPERATOR.into(),
        client_secret: SecretString::from(OPERATOR_SECRET.to_owned()),
        public_token_url: Url::parse(&kc.token_url()).unwrap(),
        http,
    })
    .unwrap();

    // The transfer's client carries what the broker needs: audience and topic scopes.
    let requirements = rabbit.token_requirements(&["factory/line-1/#".into()]).unwrap();
    let owner = Owner { kind: "MqttTransfer".into(), namespace: "dataspace".into(), name: "t".into() };
    identity
        .ensure_client(&ClientDefinition {
            client_id: "dsp-mqtt-transfer-a".into(),
            description: "transfer a".into(),
            enabled: true,
            access_token_lifespan_seconds: Some(300),
            refresh_tokens_for_client_credentials: true,
            audience: Some(requirements.audience.clone()),
            claims: requirements.claims.clone(),
            owner: owner.clone(),
        })
        .await
        .unwrap();
    let secret = identity.client_secret("dsp-mqtt-transfer-a", &owner).await.unwrap();
    let tokens = identity.issue_token("dsp-mqtt-transfer-a", &secret).await.unwrap();
    let jwt = tokens.access_token.expose_secret().to_owned();

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
    let (topic, payload) = consumer.next_message(Duration::from_secs(3)).await.expect("message on own topic");
    assert_eq!((topic.as_str(), payload.as_slice()), ("factory/line-1/temperature", b"22.0".as_slice()));

    let mut other = Consumer::connect(&options(&broker, &jwt)).await.unwrap();
    assert!(!other.subscribe("factory/line-2/temperature").await, "a topic outside the token's scopes was granted");

    let expired = kc.expired_token("dsp-mqtt-transfer-a").unwrap();
    assert!(matches!(Consumer::connect(&options(&broker, &expired)).await, Err(ConnectError::Refused(_))));
    let claims = kc.access_token_claims("dsp-mqtt-transfer-a").unwrap();
    let forged = kc.sign_with_foreign_key(&claims);
    assert!(matches!(Consumer::connect(&options(&broker, &forged)).await, Err(ConnectError::Refused(_))));
    let mut wrong_audience = claims.clone();
    wrong_audience["aud"] = serde_json::json!("some-other-service");
    let wrong_audience = kc.sign(&wrong_audience);
    assert!(matches!(Consumer::connect(&options(&broker, &wrong_audience)).await, Err(ConnectError::Refused(_))));

    // A disabled client gets no new token: access ends with the current token's lifetime.
    identity
        .ensure_client(&ClientDefinition {
            client_id: "dsp-mqtt-transfer-a".into(),
            description: "transfer a".into(),
            enabled: false,
            access_token_lifespan_seconds: Some(300),
            refresh_tokens_for_client_credentials: true,
            audience: Some(requirements.audience.clone()),
            claims: requirements.claims.clone(),
            owner,
        })
        .await
        .unwrap();
    assert!(identity.issue_token("dsp-mqtt-transfer-a", &secret).await.is_err());
}

fn tail(broker: &RabbitMq) -> String {
    broker.log().lines().rev().take(30).collect::<Vec<_>>().join("\n")
}
