//! The RabbitMQ client against a real RabbitMQ 3.10 (Debian's package): a usrpw consumer
//! provisioned through the management API connects over mqtts and wss, receives on its topic,
//! is refused elsewhere and cannot publish, is cut off by suspend, comes back after resume, and
//! is locked out after removal. Users the operator did not create are never touched.

use std::sync::OnceLock;
use std::time::Duration;

use e2e::brokers::rabbitmq::{ADMIN_PASSWORD, ADMIN_USER, RabbitMq};
use e2e::consumer::{ConnectError, Consumer, ConsumerOptions};
use e2e::fixtures::{consumer_options, grant, owner, password_of};
use e2e::tls::TestCa;
use mqtt_dsp_operator::backends::broker::Broker;
use mqtt_dsp_operator::backends::broker::rabbitmq::{RabbitmqClient, RabbitmqSettings};
use mqtt_dsp_operator::backends::http::HttpSettings;
use mqtt_dsp_operator::backends::{BackendError, Outcome, SecretString};

fn broker() -> &'static RabbitMq {
    static BROKER: OnceLock<RabbitMq> = OnceLock::new();
    BROKER.get_or_init(|| {
        mqtt_dsp_operator::install_crypto_provider();
        e2e::logs::init();
        e2e::logs::register_secret(ADMIN_PASSWORD);

        RabbitMq::start(&TestCa::new(), None).unwrap_or_else(|e| panic!("{e}"))
    })
}

fn admin(password: &str) -> RabbitmqClient {
    let b = broker();
    RabbitmqClient::new(RabbitmqSettings {
        management_url: b.management_url().parse().unwrap(),
        username: ADMIN_USER.into(),
        password: SecretString::from(password.to_owned()),
        vhost: "/".into(),
        exchange: "amq.topic".into(),
        resource_server_id: "rabbitmq".into(),
        additional_scopes_key: "dsp_mqtt_scopes".into(),
        http: HttpSettings { timeout: Duration::from_secs(5), ca_bundle_pem: Some(b.ca_pem.clone()) },
    })
    .unwrap()
}

fn options(url: String, username: &str, password: &str) -> ConsumerOptions {
    consumer_options(url, &broker().ca_pem, username, password)
}

async fn consumer(username: &str, url: String) -> Result<Consumer, ConnectError> {
    Consumer::connect(&options(url, username, &password_of(username))).await
}

/// A publisher with full rights (the admin user) feeding consumers.
async fn publish(topic: &str, payload: &str) {
    let publisher = Consumer::connect(&options(broker().mqtts_url(), ADMIN_USER, ADMIN_PASSWORD)).await.unwrap();
    assert!(publisher.publish(topic, payload.as_bytes()).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_provisioned_consumer_reads_its_topics_over_mqtts_and_wss_and_nothing_else() {
    let admin = admin(ADMIN_PASSWORD);
    assert_eq!(admin.ensure_user(&grant("consumer-a", &["factory/line-1/#"], true)).await.unwrap(), Outcome::Created);
    for url in [broker().mqtts_url(), broker().wss_url()] {
        let mut c = consumer("consumer-a", url.clone()).await.unwrap_or_else(|e| panic!("{url}: {e:?}"));
        assert!(c.subscribe("factory/line-1/temperature").await, "{url}: own topic denied");
        publish("factory/line-1/temperature", "21.5").await;
        let (topic, payload) = c.next_message(Duration::from_secs(3)).await.expect("message on own topic");
        assert_eq!((topic.as_str(), payload.as_slice()), ("factory/line-1/temperature", b"21.5".as_slice()));
        // RabbitMQ 3.10 closes the connection on a denied SUBSCRIBE; a fresh one per check.
        let mut other = consumer("consumer-a", url.clone()).await.unwrap();
        assert!(!other.subscribe("factory/line-2/temperature").await, "{url}: foreign topic granted");
        let mut wide = consumer("consumer-a", url.clone()).await.unwrap();
        assert!(!wide.subscribe("factory/#").await, "{url}: a wider filter granted");
    }
    // Read-only: a consumer's publish never reaches a subscriber.
    let mut listener = consumer("consumer-a", broker().mqtts_url()).await.unwrap();
    assert!(listener.subscribe("factory/line-1/#").await);
    let writer = consumer("consumer-a", broker().mqtts_url()).await.unwrap();
    writer.publish("factory/line-1/injected", b"evil").await;
    assert_eq!(listener.next_message(Duration::from_secs(1)).await, None, "a consumer's publish was delivered");
}

#[tokio::test]
async fn a_second_identical_ensure_writes_nothing_and_a_change_is_applied() {
    let admin = admin(ADMIN_PASSWORD);
    let g = grant("consumer-idem", &["plant/press/+/events"], true);
    assert_eq!(admin.ensure_user(&g).await.unwrap(), Outcome::Created);
    assert_eq!(admin.ensure_user(&g).await.unwrap(), Outcome::Unchanged);
    let changed = grant("consumer-idem", &["plant/press/status"], true);
    assert_eq!(admin.ensure_user(&changed).await.unwrap(), Outcome::Updated);
    let mut c = consumer("consumer-idem", broker().mqtts_url()).await.unwrap();
    assert!(c.subscribe("plant/press/status").await);
    let mut c = consumer("consumer-idem", broker().mqtts_url()).await.unwrap();
    assert!(!c.subscribe("plant/press/7/events").await, "the removed topic is still granted");
}

#[tokio::test]
async fn suspend_cuts_the_consumer_off_within_a_second_and_resume_lets_it_back() {
    let admin = admin(ADMIN_PASSWORD);
    let topics = ["line/3/#"];
    admin.ensure_user(&grant("consumer-s", &topics, true)).await.unwrap();
    let mut live = consumer("consumer-s", broker().mqtts_url()).await.unwrap();
    assert!(live.subscribe("line/3/speed").await);

    assert_eq!(admin.ensure_user(&grant("consumer-s", &topics, false)).await.unwrap(), Outcome::Updated);
    let took = live.wait_disconnected(Duration::from_secs(1)).await.expect("still connected 1 s after suspend");
    assert!(took <= Duration::from_secs(1));
    assert!(consumer("consumer-s", broker().mqtts_url()).await.is_err(), "a suspended consumer reconnected");
    assert_eq!(admin.ensure_user(&grant("consumer-s", &topics, false)).await.unwrap(), Outcome::Unchanged);

    // RabbitMQ suspends by deleting the user; resuming creates it again.
    assert!(admin.ensure_user(&grant("consumer-s", &topics, true)).await.unwrap().wrote());
    let mut back = consumer("consumer-s", broker().wss_url()).await.expect("reconnect after resume");
    assert!(back.subscribe("line/3/speed").await);
}

#[tokio::test]
async fn removal_locks_the_consumer_out_and_is_idempotent() {
    let admin = admin(ADMIN_PASSWORD);
    admin.ensure_user(&grant("consumer-r", &["r/#"], true)).await.unwrap();
    let mut live = consumer("consumer-r", broker().mqtts_url()).await.unwrap();
    assert!(live.subscribe("r/1").await);
    assert_eq!(admin.remove_user("consumer-r", &owner("consumer-r")).await.unwrap(), Outcome::Deleted);
    assert!(live.wait_disconnected(Duration::from_secs(1)).await.is_some(), "still connected after removal");
    assert!(matches!(consumer("consumer-r", broker().mqtts_url()).await, Err(ConnectError::Refused(_))));
    assert_eq!(admin.remove_user("consumer-r", &owner("consumer-r")).await.unwrap(), Outcome::Absent);
}

#[tokio::test]
async fn users_the_operator_did_not_create_are_never_touched() {
    let admin = admin(ADMIN_PASSWORD);
    let e = admin.ensure_user(&grant(ADMIN_USER, &["x/#"], true)).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e}");
    let e = admin.remove_user(ADMIN_USER, &owner("x")).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e}");
    // The admin can still log in: nothing was changed.
    assert!(Consumer::connect(&options(broker().mqtts_url(), ADMIN_USER, ADMIN_PASSWORD)).await.is_ok());
}

#[tokio::test]
async fn wrong_admin_credentials_are_reported_as_such_without_the_password() {
    let admin = admin("not-the-admin-password");
    let e = admin.ensure_user(&grant("consumer-x", &["x/#"], true)).await.unwrap_err();
    assert!(matches!(e, BackendError::Unauthorized { status: 401, .. }), "{e}");
    let text = format!("{e} {e:?}");
    assert!(!text.contains("not-the-admin-password") && !text.contains("consumer-x-password"), "{text}");
}

#[tokio::test]
async fn the_user_of_another_resource_is_foreign_too() {
    let admin = admin(ADMIN_PASSWORD);
    admin.ensure_user(&grant("consumer-o", &["o/#"], true)).await.unwrap();
    let mut theirs = grant("consumer-o", &["o/#", "more/#"], true);
    theirs.owner = owner("another-transfer");
    let e = admin.ensure_user(&theirs).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e}");
    let e = admin.remove_user("consumer-o", &owner("another-transfer")).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e}");
    let e = admin.set_password("consumer-o", &SecretString::from("x".repeat(24)), &owner("another-transfer")).await;
    assert!(matches!(e, Err(BackendError::Foreign { .. })), "{e:?}");
    // The rightful owner still has its access.
    let mut c = consumer("consumer-o", broker().mqtts_url()).await.unwrap();
    assert!(c.subscribe("o/1").await);
}

/// A user tagged before markers named the installation is adopted: the next ensure rewrites its
/// tags into this installation's and keeps its password; another installation's user of the
/// same resource is foreign.
#[tokio::test]
async fn the_old_marker_is_adopted_once_and_another_installations_is_foreign() {
    let b = broker();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(b.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let user = format!("{}/api/users/consumer-l", b.management_url());
    let legacy = "mqtt-dsp-operator,dsp-mqtt.io/owner=MqttTransfer/dataspace/consumer-l";
    let body = serde_json::json!({"password": password_of("consumer-l"), "tags": legacy});
    let put = http.put(&user).basic_auth(ADMIN_USER, Some(ADMIN_PASSWORD)).json(&body).send().await.unwrap();
    assert!(put.status().is_success(), "{}", put.status());

    let admin = admin(ADMIN_PASSWORD);
    admin.ensure_user(&grant("consumer-l", &["l/#"], true)).await.expect("adopted");
    let stored: serde_json::Value =
        http.get(&user).basic_auth(ADMIN_USER, Some(ADMIN_PASSWORD)).send().await.unwrap().json().await.unwrap();
    let tags = match &stored["tags"] {
        serde_json::Value::String(s) => s.split(',').map(str::to_owned).collect::<Vec<_>>(),
        list => list.as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect(),
    };
    assert!(tags.contains(&"mqtt-dsp-operator/test".to_owned()), "rewritten: {tags:?}");
    assert!(!tags.contains(&"mqtt-dsp-operator".to_owned()), "the old marker is gone: {tags:?}");
    assert_eq!(admin.ensure_user(&grant("consumer-l", &["l/#"], true)).await.unwrap(), Outcome::Unchanged);
    let mut c = consumer("consumer-l", b.mqtts_url()).await.expect("the password is kept");
    assert!(c.subscribe("l/1").await);

    let mut staging = grant("consumer-l", &["l/#"], true);
    staging.owner.installation = "staging".into();
    let e = admin.ensure_user(&staging).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e}");
    let e = admin.remove_user("consumer-l", &staging.owner).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e}");
}
