//! The Mosquitto client against a real Mosquitto 2 (Debian's package) with dynamic security:
//! a consumer provisioned through our client connects over mqtts and wss, receives on its topic,
//! is denied elsewhere and cannot publish, is cut off by suspend, comes back after resume, and is
//! locked out after removal. Objects the operator did not create are never touched.

use std::sync::OnceLock;
use std::time::Duration;

use e2e::brokers::mosquitto::{ADMIN_PASSWORD, Mosquitto, PUBLISHER_PASSWORD};
use e2e::consumer::{ConnectError, Consumer, ConsumerOptions};
use e2e::fixtures::{consumer_options, grant, owner, password_of};
use e2e::tls::TestCa;
use mqtt_dsp_operator::api::AuthMode;
use mqtt_dsp_operator::backends::broker::Broker;
use mqtt_dsp_operator::backends::broker::mosquitto::{MosquittoClient, MosquittoSettings};
use mqtt_dsp_operator::backends::{BackendError, Outcome, SecretString};

/// One broker per test binary (its watchdog stops it when the binary exits).
fn broker() -> &'static Mosquitto {
    static BROKER: OnceLock<Mosquitto> = OnceLock::new();
    BROKER.get_or_init(|| {
        mqtt_dsp_operator::install_crypto_provider();
        e2e::logs::init();
        e2e::logs::register_secret(ADMIN_PASSWORD);
        e2e::logs::register_secret(PUBLISHER_PASSWORD);

        let ca = TestCa::new();
        Mosquitto::start(&ca).unwrap_or_else(|e| panic!("{e}"))
    })
}

fn admin(password: &str) -> MosquittoClient {
    let b = broker();
    MosquittoClient::connect(&MosquittoSettings {
        admin_url: b.mqtts_url().parse().unwrap(),
        username: "admin".into(),
        password: SecretString::from(password.to_owned()),
        ca_bundle_pem: Some(b.ca_pem.clone()),
        timeout: Duration::from_secs(3),
        client_id: format!("operator-{}", uuid::Uuid::new_v4()),
    })
    .unwrap()
}

fn options(url: String, username: &str, password: &str) -> ConsumerOptions {
    consumer_options(url, &broker().ca_pem, username, password)
}

async fn consumer(username: &str, url: String) -> Result<Consumer, ConnectError> {
    Consumer::connect(&options(url, username, &password_of(username))).await
}

async fn publish(topic: &str, payload: &str) {
    let publisher = Consumer::connect(&options(broker().mqtts_url(), "publisher", PUBLISHER_PASSWORD)).await.unwrap();
    assert!(publisher.publish(topic, payload.as_bytes()).await);
    // Give the QoS 1 publish time to leave before the connection is dropped.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

fn dynsec_state() -> String {
    std::fs::read_to_string(broker().dir.join("dynamic-security.json")).unwrap()
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
        assert!(!c.subscribe("factory/line-2/temperature").await, "{url}: foreign topic granted");
        assert!(!c.subscribe("#").await, "{url}: wildcard over everything granted");
    }

    // Read-only: what the consumer publishes never reaches a subscriber.
    let mut c = consumer("consumer-a", broker().mqtts_url()).await.unwrap();
    assert!(c.subscribe("factory/line-1/#").await);
    assert!(c.publish("factory/line-1/injected", b"evil").await);
    assert_eq!(c.next_message(Duration::from_secs(1)).await, None, "a consumer's publish was delivered");
}

#[tokio::test]
async fn a_second_identical_ensure_writes_nothing_and_a_change_is_applied() {
    let admin = admin(ADMIN_PASSWORD);
    let g = grant("consumer-idem", &["plant/press/+/events"], true);
    assert_eq!(admin.ensure_user(&g).await.unwrap(), Outcome::Created);
    let before = dynsec_state();
    assert_eq!(admin.ensure_user(&g).await.unwrap(), Outcome::Unchanged);
    assert_eq!(dynsec_state(), before, "the dynamic-security state changed on a no-op ensure");

    let changed = grant("consumer-idem", &["plant/press/status"], true);
    assert_eq!(admin.ensure_user(&changed).await.unwrap(), Outcome::Updated);
    let mut c = consumer("consumer-idem", broker().mqtts_url()).await.unwrap();
    assert!(c.subscribe("plant/press/status").await);
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
    assert!(matches!(consumer("consumer-s", broker().mqtts_url()).await, Err(ConnectError::Refused(_))));
    assert_eq!(admin.ensure_user(&grant("consumer-s", &topics, false)).await.unwrap(), Outcome::Unchanged);

    assert_eq!(admin.ensure_user(&grant("consumer-s", &topics, true)).await.unwrap(), Outcome::Updated);
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
    assert!(!dynsec_state().contains("\"consumer-r\""), "a client or role of the consumer remains");
}

#[tokio::test]
async fn objects_the_operator_did_not_create_are_never_touched() {
    let admin = admin(ADMIN_PASSWORD);
    let before = dynsec_state();
    let e = admin.ensure_user(&grant("publisher", &["x/#"], true)).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e}");
    let e = admin.remove_user("publisher", &owner("publisher")).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e}");
    let e = admin.disconnect("admin").await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e}");
    assert_eq!(dynsec_state(), before);
}

#[tokio::test]
async fn oauth2_is_refused_with_a_reason_a_user_can_act_on() {
    let admin = admin(ADMIN_PASSWORD);
    assert!(!admin.supports(AuthMode::Oauth2) && admin.supports(AuthMode::Usrpw));
    let e = admin.token_requirements(&["a/#".into()]).unwrap_err();
    assert!(matches!(e, BackendError::Unsupported { .. }));
    assert!(e.to_string().contains("use auth.mode usrpw"), "{e}");
}

#[tokio::test]
async fn wrong_admin_credentials_are_reported_as_such_without_the_password() {
    let admin = admin("not-the-admin-password");
    let e = admin.ensure_user(&grant("consumer-x", &["x/#"], true)).await.unwrap_err();
    assert!(matches!(e, BackendError::Unauthorized { .. }), "{e}");
    assert!(!e.to_string().contains("not-the-admin-password") && !format!("{e:?}").contains("not-the-admin-password"));
    assert!(!e.to_string().contains("consumer-x-password"), "{e}");
}

#[tokio::test]
async fn a_password_can_be_rotated() {
    let admin = admin(ADMIN_PASSWORD);
    admin.ensure_user(&grant("consumer-p", &["p/#"], true)).await.unwrap();
    let new = SecretString::from("a-brand-new-password-0987654321".to_owned());
    assert_eq!(admin.set_password("consumer-p", &new, &owner("consumer-p")).await.unwrap(), Outcome::Updated);
    assert!(matches!(consumer("consumer-p", broker().mqtts_url()).await, Err(ConnectError::Refused(_))));
    let c = Consumer::connect(&options(broker().mqtts_url(), "consumer-p", "a-brand-new-password-0987654321")).await;
    assert!(c.is_ok());
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

/// A client and role marked before markers named the installation are adopted: the next ensure
/// rewrites both markers into this installation's (the consumer keeps its password and access);
/// another installation's objects of the same resource are foreign.
#[tokio::test]
async fn the_old_marker_is_adopted_once_and_another_installations_is_foreign() {
    let admin = admin(ADMIN_PASSWORD);
    let legacy = "dsp-mqtt.io/managed-by=mqtt-dsp-operator dsp-mqtt.io/owner=MqttTransfer/dataspace/consumer-l";
    let commands = serde_json::json!({"commands": [
        {"command": "createRole", "rolename": "consumer-l", "textdescription": legacy,
         "acls": [{"acltype": "subscribePattern", "topic": "l/#", "allow": true}]},
        {"command": "createClient", "username": "consumer-l", "password": password_of("consumer-l"),
         "textdescription": legacy, "roles": [{"rolename": "consumer-l"}]},
    ]});
    let operator = Consumer::connect(&options(broker().mqtts_url(), "admin", ADMIN_PASSWORD)).await.unwrap();
    assert!(operator.publish("$CONTROL/dynamic-security/v1", commands.to_string().as_bytes()).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !dynsec_state().contains("\"consumer-l\"") {
        assert!(tokio::time::Instant::now() < deadline, "the legacy client was never created");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut staging = grant("consumer-l", &["l/#"], true);
    staging.owner.installation = "staging".into();
    let e = admin.ensure_user(&grant("consumer-l", &["l/#"], true)).await;
    assert_eq!(e.unwrap(), Outcome::Updated, "adopted: the markers are rewritten");
    let ours = "dsp-mqtt.io/managed-by=mqtt-dsp-operator/test dsp-mqtt.io/owner=MqttTransfer/dataspace/consumer-l";
    assert_eq!(broker().dynsec_client("consumer-l").unwrap()["textdescription"], ours);
    assert_eq!(broker().dynsec_role("consumer-l").unwrap()["textdescription"], ours);
    assert_eq!(admin.ensure_user(&grant("consumer-l", &["l/#"], true)).await.unwrap(), Outcome::Unchanged);
    let mut c = consumer("consumer-l", broker().mqtts_url()).await.expect("the password is kept");
    assert!(c.subscribe("l/1").await);

    // Only this client and role: the other tests share the broker and change its state meanwhile.
    let state = || (broker().dynsec_client("consumer-l"), broker().dynsec_role("consumer-l"));
    let before = state();
    let e = admin.ensure_user(&staging).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e}");
    let e = admin.remove_user("consumer-l", &staging.owner).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e}");
    assert_eq!(state(), before, "another installation changed nothing");
}

/// `create_user`, what a new transfer uses: role and client in one control message, no read.
/// Should they exist already (a lost answer, a crash before status was written), they are
/// repaired as by `ensure_user` and the client gets the new password; a foreign client is
/// refused and left as it was.
#[tokio::test]
async fn create_makes_a_new_user_in_one_message_and_repairs_one_that_exists() {
    let admin = admin(ADMIN_PASSWORD);
    let g = grant("consumer-c", &["c/1/#"], true);
    assert_eq!(admin.create_user(&g).await.unwrap(), Outcome::Created);
    let mut c = consumer("consumer-c", broker().mqtts_url()).await.unwrap();
    assert!(c.subscribe("c/1/x").await);
    assert!(!c.subscribe("c/2/x").await, "more than its topics");
    assert_eq!(admin.ensure_user(&g).await.unwrap(), Outcome::Unchanged, "made as ensure_user makes it");

    // Made before, with other topics and another password: both are brought to this grant.
    let mut again = grant("consumer-c", &["c/2/#"], true);
    again.password = SecretString::from("the-password-of-the-retry-0123".to_owned());
    assert_eq!(admin.create_user(&again).await.unwrap(), Outcome::Updated);
    assert!(matches!(consumer("consumer-c", broker().mqtts_url()).await, Err(ConnectError::Refused(_))));
    let mut c = Consumer::connect(&options(broker().mqtts_url(), "consumer-c", "the-password-of-the-retry-0123"))
        .await
        .expect("the retry's password");
    assert!(c.subscribe("c/2/x").await);
    assert!(!c.subscribe("c/1/x").await, "the old topic is still granted");

    // Another resource's client of that name: refused, and it keeps its password and access.
    let mut theirs = grant("consumer-c", &["elsewhere/#"], true);
    theirs.owner = owner("another-transfer");
    theirs.password = SecretString::from("not-the-owners-password-012345".to_owned());
    let e = admin.create_user(&theirs).await.unwrap_err();
    assert!(matches!(e, BackendError::Foreign { .. }), "{e}");
    let mut c = Consumer::connect(&options(broker().mqtts_url(), "consumer-c", "the-password-of-the-retry-0123"))
        .await
        .expect("the owner's password still works");
    assert!(c.subscribe("c/2/x").await);
}
