//! The MqttTransfer controller end to end, with real brokers: a consumer that reads only the
//! transfer's Secret connects, receives on its topics and nothing else; suspension cuts it off
//! at once, resumption gives fresh credentials, termination, expiry and deletion leave nothing
//! behind in any backend.

use std::time::Duration;

use e2e::brokers::mosquitto::PUBLISHER_PASSWORD;
use e2e::consumer::{Consumer, FromSecret};
use e2e::fixtures::consumer_options;
use e2e::stack::{DevStack, StackOptions, VAULT_FOLDER, condition, events_about, wait_for, wait_gone};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use mqtt_dsp_operator::api::{MqttAsset, MqttTransfer};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(30);

fn asset(name: &str, spec: Value) -> MqttAsset {
    serde_json::from_value(
        json!({"apiVersion": "dsp-mqtt.io/v1alpha1", "kind": "MqttAsset", "metadata": {"name": name}, "spec": spec}),
    )
    .unwrap()
}

fn transfer(name: &str, spec: Value) -> MqttTransfer {
    serde_json::from_value(
        json!({"apiVersion": "dsp-mqtt.io/v1alpha1", "kind": "MqttTransfer", "metadata": {"name": name}, "spec": spec}),
    )
    .unwrap()
}

fn mosquitto_asset() -> MqttAsset {
    asset(
        "line-1",
        json!({
            "endpoint": {"type": "mqtt-tls"},
            "topics": ["factory/line-1/#"],
            "auth": {"mode": "usrpw"},
            "policy": {"access": {"participantIds": ["did:web:consumer-a.example.com", "did:web:consumer-b.example.com"]}},
        }),
    )
}

/// The same asset on RabbitMQ in `oauth2` mode.
fn rabbitmq_oauth2_asset() -> MqttAsset {
    let mut a = mosquitto_asset();
    a.spec.broker = Some("rabbitmq".into());
    a.spec.auth.mode = mqtt_dsp_operator::api::AuthMode::Oauth2;
    a
}

fn to(consumer: &str) -> Value {
    json!({"assetRef": {"name": "line-1"}, "consumer": {"participantId": format!("did:web:{consumer}.example.com")}})
}

fn phase(t: &MqttTransfer) -> Option<String> {
    t.status.as_ref()?.phase.map(|p| format!("{p:?}"))
}

fn ready(t: &MqttTransfer) -> Option<(String, String, String)> {
    t.status.as_ref().and_then(|s| condition(&s.conditions, "Ready"))
}

fn is_active(t: &MqttTransfer) -> bool {
    phase(t).as_deref() == Some("Active")
        && t.status.as_ref().unwrap().observed_generation == t.metadata.generation
        && ready(t).is_some_and(|(s, _, _)| s == "True")
}

async fn with_ready_asset(stack: &DevStack, asset: &MqttAsset) {
    let api: Api<MqttAsset> = stack.api();
    api.create(&PostParams::default(), asset).await.unwrap();
    wait_for(&api, &asset.metadata.name.clone().unwrap(), WITHIN, "Ready", |a| {
        a.status.as_ref().and_then(|s| condition(&s.conditions, "Ready")).is_some_and(|(s, _, _)| s == "True")
    })
    .await;
}

async fn create_active(stack: &DevStack, t: &MqttTransfer) -> MqttTransfer {
    let api: Api<MqttTransfer> = stack.api();
    api.create(&PostParams::default(), t).await.unwrap();
    wait_for(&api, &t.metadata.name.clone().unwrap(), WITHIN, "Active", is_active).await
}

async fn set_state(stack: &DevStack, name: &str, state: &str) -> MqttTransfer {
    let api: Api<MqttTransfer> = stack.api();
    let patched =
        api.patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"state": state}}))).await.unwrap();
    let generation = patched.metadata.generation;
    wait_for(&api, name, WITHIN, &format!("{state} observed"), |t| {
        t.status.as_ref().is_some_and(|s| s.observed_generation == generation)
    })
    .await
}

async fn secret(stack: &DevStack, name: &str) -> Option<Secret> {
    let api: Api<Secret> = stack.api();
    api.get_opt(name).await.unwrap()
}

async fn from_secret(stack: &DevStack, name: &str) -> FromSecret {
    let s = secret(stack, name).await.expect("the transfer's Secret");
    FromSecret::read(&s, &stack.ca.cert_pem()).expect("credentials in the Secret")
}

async fn publish(stack: &DevStack, topic: &str, payload: &str) {
    let publisher = Consumer::connect(&consumer_options(
        stack.mosquitto.mqtts_url(),
        &stack.ca.cert_pem(),
        "publisher",
        PUBLISHER_PASSWORD,
    ))
    .await
    .unwrap();
    assert!(publisher.publish(topic, payload.as_bytes()).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usrpw_consumer_reads_only_the_secret_and_receives_its_topic_over_mqtts_and_wss() {
    let stack = DevStack::start(StackOptions::default()).await;
    with_ready_asset(&stack, &mosquitto_asset()).await;
    let mut spec = to("consumer-a");
    spec["topics"] = json!(["factory/line-1/temperature"]);
    let active = create_active(&stack, &transfer("t-a", spec)).await;

    let from = from_secret(&stack, "t-a").await;
    assert_eq!(from.topics, vec!["factory/line-1/temperature"]);
    assert_eq!(from.options.url, stack.mosquitto.mqtts_url());
    for url in [stack.mosquitto.mqtts_url(), stack.mosquitto.wss_url()] {
        let mut options = from.options.clone();
        options.url = url.clone();
        let mut c = Consumer::connect(&options).await.unwrap_or_else(|e| panic!("{url}: {e:?}"));
        assert!(c.subscribe("factory/line-1/temperature").await, "{url}: own topic");
        publish(&stack, "factory/line-1/temperature", "21.5").await;
        let (topic, payload) = c.next_message(Duration::from_secs(3)).await.expect("a message");
        assert_eq!((topic.as_str(), payload.as_slice()), ("factory/line-1/temperature", b"21.5".as_slice()));
        assert!(
            !c.subscribe("factory/line-1/pressure").await,
            "{url}: the asset's other topics are not this transfer's"
        );
        assert!(!c.subscribe("factory/line-2/temperature").await, "{url}: foreign topic");
    }
    // Read-only: what the consumer publishes reaches nobody.
    // Watched with the asset's own identity (password from Vault), which reads factory/line-1/#.
    let asset_user = format!("dsp-mqtt-{}-line-1", stack.namespace);
    let asset_password = stack
        .vault
        .secret(&format!("{VAULT_FOLDER}/dsp-mqtt-{}-line-1-secret", stack.namespace))
        .await
        .and_then(|s| s.content().map(str::to_owned))
        .unwrap();
    e2e::logs::register_secret(&asset_password);
    let mut watcher = Consumer::connect(&consumer_options(
        stack.mosquitto.mqtts_url(),
        &stack.ca.cert_pem(),
        &asset_user,
        &asset_password,
    ))
    .await
    .unwrap();
    assert!(watcher.subscribe("factory/line-1/#").await);
    let c = Consumer::connect(&from.options).await.unwrap();
    c.publish("factory/line-1/temperature", b"forged").await;
    assert_eq!(watcher.next_message(Duration::from_secs(1)).await, None, "a consumer must not publish");

    // Status: the DataAddress without credentials; the Secret has one key per field.
    let status = active.status.unwrap();
    let da = status.data_address.unwrap();
    assert_eq!(da["flowType"], "PULL");
    assert_eq!(da["dsp-mqtt:username"], format!("dsp-mqtt-transfer-{}-t-a", stack.namespace));
    assert!(!da.contains_key("dsp-mqtt:password"));
    assert!(!serde_json::to_string(&da).unwrap().contains(&from.options.password));
    let s = secret(&stack, "t-a").await.unwrap();
    let keys: Vec<&String> = s.data.as_ref().unwrap().keys().collect();
    for k in ["dataAddress.json", "baseUrl", "topic", "username", "password", "mqttEndpointType"] {
        assert!(keys.iter().any(|x| *x == k), "{k} in {keys:?}");
    }
    let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.controller), ("MqttTransfer", Some(true)));
    let events = events_about(&stack, "t-a").await;
    assert!(events.iter().all(|(_, _, n)| !n.contains(&from.options.password)));
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspension_cuts_the_consumer_off_at_once_and_resumption_gives_fresh_credentials() {
    let stack = DevStack::start(StackOptions::default()).await;
    with_ready_asset(&stack, &mosquitto_asset()).await;
    create_active(&stack, &transfer("t-a", to("consumer-a"))).await;
    let before = from_secret(&stack, "t-a").await;
    let mut c = Consumer::connect(&before.options).await.unwrap();
    assert!(c.subscribe("factory/line-1/#").await);

    let started = tokio::time::Instant::now();
    let api: Api<MqttTransfer> = stack.api();
    api.patch("t-a", &PatchParams::default(), &Patch::Merge(json!({"spec": {"state": "Suspended"}}))).await.unwrap();
    let cut = c.wait_disconnected(Duration::from_secs(5)).await.expect("disconnected");
    let latency = started.elapsed();
    eprintln!("suspend → disconnected: {latency:?}");
    assert!(latency < Duration::from_secs(1), "cut off within one second, took {latency:?} ({cut:?})");
    let suspended = wait_for(&api, "t-a", WITHIN, "Suspended", |t| phase(t).as_deref() == Some("Suspended")).await;
    assert!(Consumer::connect(&before.options).await.is_err(), "cannot reconnect while suspended");
    let s = secret(&stack, "t-a").await.expect("the Secret stays");
    assert!(FromSecret::read(&s, &stack.ca.cert_pem()).is_none(), "no credentials in the Secret while suspended");
    assert!(!s.data.as_ref().unwrap().contains_key("password"));
    assert_eq!(ready(&suspended).unwrap().1, "Suspended");

    set_state(&stack, "t-a", "Started").await;
    wait_for(&api, "t-a", WITHIN, "Active again", is_active).await;
    let after = from_secret(&stack, "t-a").await;
    assert_ne!(after.options.password, before.options.password, "fresh credentials");
    let mut c = Consumer::connect(&after.options).await.expect("connects again with the new password");
    assert!(c.subscribe("factory/line-1/#").await);
    assert!(Consumer::connect(&before.options).await.is_err(), "the old password stays dead");
    stack.teardown().await;
}

async fn assert_nothing_left(stack: &DevStack, name: &str) {
    let identity = format!("dsp-mqtt-transfer-{}-{name}", stack.namespace);
    assert!(stack.mosquitto.dynsec_client(&identity).is_none(), "broker user {identity} left");
    assert!(stack.mosquitto.dynsec_role(&identity).is_none(), "broker role {identity} left");
    assert!(stack.vault.secret(&format!("{VAULT_FOLDER}/{identity}-secret")).await.is_none(), "Vault secret left");
    assert!(stack.keycloak.client(&identity).await.is_none(), "Keycloak client left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn termination_expiry_and_deletion_leave_nothing_and_revoking_one_transfer_spares_the_other() {
    let stack = DevStack::start(StackOptions::default()).await;
    with_ready_asset(&stack, &mosquitto_asset()).await;
    let api: Api<MqttTransfer> = stack.api();
    create_active(&stack, &transfer("t-a", to("consumer-a"))).await;
    create_active(&stack, &transfer("t-b", to("consumer-b"))).await;
    let a = from_secret(&stack, "t-a").await;
    let b = from_secret(&stack, "t-b").await;
    assert_ne!(a.options.username, b.options.username, "credentials are per transfer");
    let mut ca = Consumer::connect(&a.options).await.unwrap();
    let mut cb = Consumer::connect(&b.options).await.unwrap();
    assert!(ca.subscribe("factory/line-1/#").await && cb.subscribe("factory/line-1/#").await);

    // Terminate a: it is cut off and gone everywhere; b keeps receiving.
    set_state(&stack, "t-a", "Terminated").await;
    let terminated = wait_for(&api, "t-a", WITHIN, "Terminated", |t| phase(t).as_deref() == Some("Terminated")).await;
    assert!(ca.wait_disconnected(Duration::from_secs(2)).await.is_some(), "a cut off");
    assert!(Consumer::connect(&a.options).await.is_err(), "a cannot reconnect");
    assert_nothing_left(&stack, "t-a").await;
    assert!(secret(&stack, "t-a").await.is_none(), "a's Secret removed");
    assert!(terminated.status.unwrap().data_address.is_none());
    publish(&stack, "factory/line-1/x", "still here").await;
    assert!(cb.next_message(Duration::from_secs(3)).await.is_some(), "b still receives");
    // Final: the API server refuses to start it again.
    let again = api.patch("t-a", &PatchParams::default(), &Patch::Merge(json!({"spec": {"state": "Started"}}))).await;
    assert!(matches!(again, Err(kube::Error::Api(ref s)) if s.code == 422), "{again:?}");

    // Expiry: b expires by itself, without anyone touching it.
    let expires = k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(3);
    api.patch("t-b", &PatchParams::default(), &Patch::Merge(json!({"spec": {"expiresAt": expires.to_string()}})))
        .await
        .unwrap();
    let expired =
        wait_for(&api, "t-b", Duration::from_secs(15), "Expired", |t| phase(t).as_deref() == Some("Expired")).await;
    assert!(cb.wait_disconnected(Duration::from_secs(2)).await.is_some(), "b cut off at expiry");
    assert_eq!(ready(&expired).unwrap().1, "Expired");
    assert_nothing_left(&stack, "t-b").await;

    // Deletion of an active transfer.
    create_active(&stack, &transfer("t-c", to("consumer-a"))).await;
    let c = from_secret(&stack, "t-c").await;
    api.delete("t-c", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "t-c", WITHIN).await;
    assert_nothing_left(&stack, "t-c").await;
    assert!(Consumer::connect(&c.options).await.is_err());
    let metrics = stack.metrics.encode().unwrap();
    assert!(!metrics.contains("name=\"t-c\""), "no token metric for a deleted transfer");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_on_rabbitmq_the_jwt_from_the_secret_opens_the_broker_and_is_renewed_not_reissued() {
    let stack = DevStack::start(StackOptions { rabbitmq: true, ..Default::default() }).await;
    let a = rabbitmq_oauth2_asset();
    with_ready_asset(&stack, &a).await;
    let mut spec = to("consumer-a");
    spec["topics"] = json!(["factory/line-1/temperature"]);
    spec["tokenLifetimeSeconds"] = json!(120);
    let active = create_active(&stack, &transfer("t-a", spec)).await;
    let identity = format!("dsp-mqtt-transfer-{}-t-a", stack.namespace);
    let client = stack.keycloak.client(&identity).await.expect("a client per transfer");
    assert_eq!(client.attributes.get("client_credentials.use_refresh_token").map(String::as_str), Some("false"));

    let from = from_secret(&stack, "t-a").await;
    let rabbit = stack.rabbitmq.as_ref().unwrap();
    assert_eq!(from.options.url, rabbit.mqtts_url());
    let mut c = Consumer::connect(&from.options).await.expect("the JWT opens RabbitMQ");
    assert!(c.subscribe("factory/line-1/temperature").await, "own topic");
    let s = secret(&stack, "t-a").await.unwrap();
    let data = s.data.as_ref().unwrap();
    let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    assert_eq!(text("expiresIn"), "120");
    assert_eq!(text("refreshEndpoint"), stack.refresh_url, "the operator's own endpoint (e2e/tests/refresh.rs)");
    assert!(text("refreshToken").starts_with("v1."));
    assert!(active.status.as_ref().and_then(|s| s.token_expires_at.as_ref()).is_some(), "status.tokenExpiresAt");
    // The gauge mirrors the expiry of the token the transfer holds now: compare it with the
    // status as it is when the metric is read (a reconcile may land between the two reads).
    let api: Api<MqttTransfer> = stack.api();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let expires_at = loop {
        let now = api.get("t-a").await.unwrap();
        let expires_at = now.status.and_then(|s| s.token_expires_at).expect("status.tokenExpiresAt");
        let metrics = stack.metrics.encode().unwrap();
        let expected = format!(
            "mqtt_dsp_operator_transfer_token_expiry_seconds{{namespace=\"{}\",name=\"t-a\"}} {}",
            stack.namespace,
            expires_at.0.as_second()
        );
        if metrics.contains(&expected) {
            break expires_at;
        }
        assert!(tokio::time::Instant::now() < deadline, "{expected} missing in:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // An operator restart does not re-issue a token that is still good.
    let issued = stack.keycloak.logins(&identity).await;
    let mut stack = stack;
    stack.restart_controllers().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stack.keycloak.logins(&identity).await, issued, "no new token after a restart");
    assert!(
        String::from_utf8(secret(&stack, "t-a").await.unwrap().data.unwrap()["authorization"].0.clone()).unwrap()
            == from.options.password,
        "the Secret keeps the token after a restart"
    );

    // Widening the transfer by a topic: the Secret gets a token issued for the new grant at
    // once, not the old token (which cannot read the new topic) until its renewal is due.
    let api: Api<MqttTransfer> = stack.api();
    let mut old = Consumer::connect(&from.options).await.expect("the first token still opens RabbitMQ");
    assert!(!old.subscribe("factory/line-1/pressure").await, "the first token does not read the new topic");
    let generation = api
        .patch(
            "t-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"topics": ["factory/line-1/temperature", "factory/line-1/pressure"]}})),
        )
        .await
        .unwrap()
        .metadata
        .generation;
    wait_for(&api, "t-a", WITHIN, "widened", |t| {
        is_active(t) && t.status.as_ref().is_some_and(|s| s.observed_generation == generation)
    })
    .await;
    let widened = from_secret(&stack, "t-a").await;
    assert!(widened.options.password != from.options.password, "a token issued for the widened grant");
    let mut c = Consumer::connect(&widened.options).await.expect("the new token opens RabbitMQ");
    assert!(c.subscribe("factory/line-1/pressure").await, "the new token reads the new topic");
    assert!(c.subscribe("factory/line-1/temperature").await, "and the first one");
    let issued = stack.keycloak.logins(&identity).await;
    let from = widened;

    // Two thirds of the lifetime later (simulated: the recorded expiry moved close), a new
    // token replaces it in the Secret.
    let soon = k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(10);
    api.patch_status(
        "t-a",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"tokenExpiresAt": soon.to_string()}})),
    )
    .await
    .unwrap();
    let renewed = wait_for(&api, "t-a", WITHIN, "renewed", |t| {
        t.status.as_ref().and_then(|s| s.token_expires_at.as_ref()).is_some_and(|e| e.0 > soon)
    })
    .await;
    let new_token = from_secret(&stack, "t-a").await.options.password;
    assert!(new_token != from.options.password, "a new token in the Secret");
    assert!(stack.keycloak.logins(&identity).await > issued);
    assert!(renewed.status.unwrap().token_expires_at.unwrap().0 > expires_at.0);

    // Deletion removes the client.
    api.delete("t-a", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "t-a", WITHIN).await;
    assert!(stack.keycloak.client(&identity).await.is_none());
    assert!(stack.vault.secret(&format!("{VAULT_FOLDER}/{identity}-secret")).await.is_none());
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_named_and_nothing_is_provisioned() {
    let stack = DevStack::start(StackOptions::default()).await;
    with_ready_asset(&stack, &mosquitto_asset()).await;
    let api: Api<MqttTransfer> = stack.api();

    let mut spec = to("consumer-a");
    spec["topics"] = json!(["factory/line-1/temperature", "factory/line-2/#"]);
    api.create(&PostParams::default(), &transfer("wide", spec)).await.unwrap();
    let t = wait_for(&api, "wide", WITHIN, "TopicsOutsideAsset", |t| {
        ready(t).is_some_and(|(_, r, _)| r == "TopicsOutsideAsset")
    })
    .await;
    let (s, _, message) = ready(&t).unwrap();
    assert_eq!(s, "False");
    assert!(message.contains("factory/line-2/#") && !message.contains("temperature"), "{message}");
    assert_nothing_left(&stack, "wide").await;
    assert!(secret(&stack, "wide").await.is_none());

    let mut spec = to("consumer-a");
    spec["assetRef"] = json!({"name": "no-such-asset"});
    api.create(&PostParams::default(), &transfer("orphan", spec)).await.unwrap();
    let t =
        wait_for(&api, "orphan", WITHIN, "AssetNotFound", |t| ready(t).is_some_and(|(_, r, _)| r == "AssetNotFound"))
            .await;
    assert!(ready(&t).unwrap().2.contains("no-such-asset"));
    assert_nothing_left(&stack, "orphan").await;

    // Illegal DSP transitions are refused by the API server.
    create_active(&stack, &transfer("t-a", to("consumer-a"))).await;
    set_state(&stack, "t-a", "Suspended").await;
    let completed =
        api.patch("t-a", &PatchParams::default(), &Patch::Merge(json!({"spec": {"state": "Completed"}}))).await;
    assert!(matches!(completed, Err(kube::Error::Api(ref s)) if s.code == 422), "Suspended → Completed: {completed:?}");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_asset_goes_its_transfers_lose_access_and_say_why() {
    let stack = DevStack::start(StackOptions::default()).await;
    with_ready_asset(&stack, &mosquitto_asset()).await;
    create_active(&stack, &transfer("t-a", to("consumer-a"))).await;
    let from = from_secret(&stack, "t-a").await;
    let mut c = Consumer::connect(&from.options).await.unwrap();
    assert!(c.subscribe("factory/line-1/#").await);
    let assets: Api<MqttAsset> = stack.api();
    assets.delete("line-1", &DeleteParams::default()).await.unwrap();
    let api: Api<MqttTransfer> = stack.api();
    let t = wait_for(&api, "t-a", WITHIN, "AssetNotFound", |t| ready(t).is_some_and(|(_, r, _)| r == "AssetNotFound"))
        .await;
    assert_eq!(phase(&t).as_deref(), Some("Failed"));
    assert!(c.wait_disconnected(Duration::from_secs(3)).await.is_some(), "cut off");
    assert_nothing_left(&stack, "t-a").await;
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_with_nothing_changed_writes_nothing() {
    let mut options = StackOptions::default();
    options.settings.resync = Duration::from_millis(500);
    let stack = DevStack::start(options).await;
    with_ready_asset(&stack, &mosquitto_asset()).await;
    // The status the first grant wrote is the one every resync keeps: read as soon as Active.
    let before = create_active(&stack, &transfer("t-a", to("consumer-a"))).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let api: Api<MqttTransfer> = stack.api();
    let secret_before = secret(&stack, "t-a").await.unwrap();
    stack.vault.server.log.clear();
    let broker_saved = stack.mosquitto.dynsec_saved_at();
    let writes = stack.metrics.backend_write_total();
    let kubernetes_before = stack.kubernetes_state().await;

    tokio::time::sleep(Duration::from_secs(3)).await;

    assert!(!stack.vault.server.log.all().is_empty(), "resyncs looked at Vault");
    assert_eq!(stack.vault.server.log.matching(|r| r.is_mutating()), vec![], "Vault writes");
    assert_eq!(stack.mosquitto.dynsec_saved_at(), broker_saved, "Mosquitto writes");
    assert_eq!(stack.metrics.backend_write_total(), writes);
    assert_eq!(api.get("t-a").await.unwrap().metadata.resource_version, before.metadata.resource_version, "status");
    let secret_after = secret(&stack, "t-a").await.unwrap();
    assert_eq!(secret_after.metadata.resource_version, secret_before.metadata.resource_version, "the Secret");
    assert_eq!(stack.kubernetes_state().await, kubernetes_before, "no Kubernetes writes at all");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_suspension_on_rabbitmq_closes_live_sessions_and_stops_new_tokens() {
    oauth2_suspension_on_rabbitmq_cuts_off(None).await;
}

/// The MQTT username is the consumer's to choose. For the operator to cut off a consumer that
/// connects under another name, the broker must list the session under what it authenticated
/// (the token's client or subject), or end it when the token expires. RabbitMQ 3.10 (Debian 12's)
/// does neither: this test fails there (the session is listed under the chosen name), and a
/// session whose 4 s token expired still received messages 13 s later. Kept, ignored, as the
/// check for a broker that can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "RabbitMQ 3.10 lists an oauth2 MQTT session under the CONNECT username and never ends it at token expiry: README, Limitations"]
async fn oauth2_on_rabbitmq_a_consumer_under_a_username_of_its_choosing_is_cut_off_too() {
    oauth2_suspension_on_rabbitmq_cuts_off(Some("someone-else-entirely")).await;
}

async fn oauth2_suspension_on_rabbitmq_cuts_off(username: Option<&str>) {
    let stack = DevStack::start(StackOptions { rabbitmq: true, ..Default::default() }).await;
    let a = rabbitmq_oauth2_asset();
    with_ready_asset(&stack, &a).await;
    create_active(&stack, &transfer("t-a", to("consumer-a"))).await;
    let mut from = from_secret(&stack, "t-a").await;
    if let Some(username) = username {
        from.options.username = username.into();
    }
    let mut c = Consumer::connect(&from.options).await.expect("the JWT opens RabbitMQ");
    assert!(c.subscribe("factory/line-1/#").await);
    // RabbitMQ lists a connection (which is how the operator finds it to close it) only after
    // its statistics interval: wait until it is listed, under the username the Secret gave.
    let identity = format!("dsp-mqtt-transfer-{}-t-a", stack.namespace);
    let rabbit = stack.rabbitmq.as_ref().unwrap();
    let http = stack.http();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let connections: Value = http
            .get(format!("{}/api/connections", rabbit.management_url()))
            .basic_auth(e2e::brokers::rabbitmq::ADMIN_USER, Some(e2e::brokers::rabbitmq::ADMIN_PASSWORD))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if connections.as_array().unwrap().iter().any(|c| c["user"] == json!(identity)) {
            break;
        }
        let chosen = connections.as_array().unwrap().iter().find(|c| username.is_some_and(|u| c["user"] == json!(u)));
        assert!(chosen.is_none(), "RabbitMQ lists the session under the username the consumer chose: {chosen:?}");
        assert!(tokio::time::Instant::now() < deadline, "RabbitMQ never listed the connection: {connections}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let started = tokio::time::Instant::now();
    let api: Api<MqttTransfer> = stack.api();
    api.patch("t-a", &PatchParams::default(), &Patch::Merge(json!({"spec": {"state": "Suspended"}}))).await.unwrap();
    c.wait_disconnected(Duration::from_secs(5)).await.expect("live session closed");
    let latency = started.elapsed();
    eprintln!("oauth2 suspend → disconnected: {latency:?}");
    assert!(latency < Duration::from_secs(1), "closed within one second, took {latency:?}");
    wait_for(&api, "t-a", WITHIN, "Suspended", |t| phase(t).as_deref() == Some("Suspended")).await;
    assert!(!stack.keycloak.client(&identity).await.unwrap().enabled, "no new tokens for a suspended transfer");
    let s = secret(&stack, "t-a").await.unwrap();
    assert!(FromSecret::read(&s, &stack.ca.cert_pem()).is_none(), "no token in the Secret");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_the_asset_below_a_transfer_revokes_that_transfer() {
    let stack = DevStack::start(StackOptions::default()).await;
    with_ready_asset(&stack, &mosquitto_asset()).await;
    let mut spec = to("consumer-a");
    spec["topics"] = json!(["factory/line-1/temperature"]);
    create_active(&stack, &transfer("t-a", spec)).await;
    let from = from_secret(&stack, "t-a").await;
    let mut c = Consumer::connect(&from.options).await.unwrap();
    assert!(c.subscribe("factory/line-1/temperature").await);

    let assets: Api<MqttAsset> = stack.api();
    assets
        .patch("line-1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"topics": ["factory/line-2/#"]}})))
        .await
        .unwrap();
    let api: Api<MqttTransfer> = stack.api();
    let t = wait_for(&api, "t-a", WITHIN, "TopicsOutsideAsset", |t| {
        ready(t).is_some_and(|(_, r, _)| r == "TopicsOutsideAsset")
    })
    .await;
    assert_eq!(phase(&t).as_deref(), Some("Failed"));
    assert!(c.wait_disconnected(Duration::from_secs(3)).await.is_some(), "cut off");
    assert_nothing_left(&stack, "t-a").await;
    assert!(Consumer::connect(&from.options).await.is_err());
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_made_before_a_failed_step_goes_with_the_asset() {
    // The transfer's Keycloak client is made, then the secret store fails: nothing has fully
    // succeeded yet. The asset then goes; the client must go with the transfer's access rather
    // than be orphaned because no successful reconcile ever recorded it.
    let stack = DevStack::start(StackOptions { rabbitmq: true, ..Default::default() }).await;
    let mut a = rabbitmq_oauth2_asset();
    // Retain: the asset's own deletion needs no Vault (which is about to fail).
    a.spec.deletion_policy = Some(mqtt_dsp_operator::api::DeletionPolicy::Retain);
    with_ready_asset(&stack, &a).await;
    stack.vault.server.faults.fail_next(u32::MAX, 503);

    let api: Api<MqttTransfer> = stack.api();
    api.create(&PostParams::default(), &transfer("t-a", to("consumer-a"))).await.unwrap();
    let identity = format!("dsp-mqtt-transfer-{}-t-a", stack.namespace);
    let stuck = wait_for(&api, "t-a", WITHIN, "stopped at the secret store", |t| {
        ready(t).is_some_and(|(s, r, _)| s == "False" && r == "Unavailable")
    })
    .await;
    assert_eq!(phase(&stuck).as_deref(), Some("Pending"));
    assert!(stack.keycloak.client(&identity).await.is_some(), "the client was made before the secret store failed");

    let assets: Api<MqttAsset> = stack.api();
    assets.delete("line-1", &DeleteParams::default()).await.unwrap();
    wait_gone(&assets, "line-1", WITHIN).await;
    // Revocation removes the client first; the secret store is still failing, so it retries
    // the rest until Vault is back.
    let deadline = tokio::time::Instant::now() + WITHIN;
    while stack.keycloak.client(&identity).await.is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the client made before the failure is still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.vault.server.faults.reset();
    wait_for(&api, "t-a", WITHIN, "AssetNotFound", |t| ready(t).is_some_and(|(_, r, _)| r == "AssetNotFound")).await;
    assert!(stack.keycloak.client(&identity).await.is_none());
    assert!(
        stack.vault.secret(&format!("{VAULT_FOLDER}/{identity}-secret")).await.is_none(),
        "nothing in Vault either"
    );

    api.delete("t-a", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "t-a", WITHIN).await;
    assert!(stack.keycloak.client(&identity).await.is_none());
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_follows_its_asset_to_another_broker_and_leaves_nothing_in_the_old_one() {
    let stack = DevStack::start(StackOptions { rabbitmq: true, ..Default::default() }).await;
    with_ready_asset(&stack, &mosquitto_asset()).await;
    create_active(&stack, &transfer("t-a", to("consumer-a"))).await;
    let identity = format!("dsp-mqtt-transfer-{}-t-a", stack.namespace);
    let before = from_secret(&stack, "t-a").await;
    Consumer::connect(&before.options).await.expect("the Mosquitto user works");
    // A second transfer, suspended during the move.
    create_active(&stack, &transfer("t-b", to("consumer-b"))).await;
    set_state(&stack, "t-b", "Suspended").await;
    let suspended = format!("dsp-mqtt-transfer-{}-t-b", stack.namespace);

    let assets: Api<MqttAsset> = stack.api();
    assets
        .patch("line-1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"broker": "rabbitmq"}})))
        .await
        .unwrap();
    let api: Api<MqttTransfer> = stack.api();
    wait_for(&api, "t-a", WITHIN, "Active on RabbitMQ", |t| {
        is_active(t)
            && t.status.as_ref().and_then(|s| s.broker.as_ref()).and_then(|b| b.profile.as_deref()) == Some("rabbitmq")
    })
    .await;
    assert!(stack.mosquitto.dynsec_client(&identity).is_none(), "the Mosquitto user is gone");
    assert!(stack.mosquitto.dynsec_role(&identity).is_none(), "the Mosquitto role is gone");
    assert!(Consumer::connect(&before.options).await.is_err(), "the old credentials open nothing");
    let after = from_secret(&stack, "t-a").await;
    assert_eq!(after.options.url, stack.rabbitmq.as_ref().unwrap().mqtts_url());
    let mut c = Consumer::connect(&after.options).await.expect("the Secret now opens RabbitMQ");
    assert!(c.subscribe("factory/line-1/temperature").await);

    // The suspended one moves too, stays suspended, and works on RabbitMQ once resumed.
    wait_for(&api, "t-b", WITHIN, "Suspended on RabbitMQ", |t| {
        phase(t).as_deref() == Some("Suspended")
            && t.status.as_ref().and_then(|s| s.broker.as_ref()).and_then(|b| b.profile.as_deref()) == Some("rabbitmq")
    })
    .await;
    assert!(stack.mosquitto.dynsec_client(&suspended).is_none(), "the suspended transfer's Mosquitto user is gone");
    set_state(&stack, "t-b", "Started").await;
    let resumed = from_secret(&stack, "t-b").await;
    assert_eq!(resumed.options.url, stack.rabbitmq.as_ref().unwrap().mqtts_url());
    Consumer::connect(&resumed.options).await.expect("resumed on RabbitMQ");
    api.delete("t-b", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "t-b", WITHIN).await;

    api.delete("t-a", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "t-a", WITHIN).await;
    let owner = stack.owner("MqttTransfer", "t-a");
    let left = stack.backends.brokers["rabbitmq"].remove_user(&identity, &owner).await.unwrap();
    assert_eq!(left, mqtt_dsp_operator::backends::Outcome::Absent, "no RabbitMQ user left behind");
    let owner = mqtt_dsp_operator::backends::Owner { name: "t-b".into(), ..owner };
    let left = stack.backends.brokers["rabbitmq"].remove_user(&suspended, &owner).await.unwrap();
    assert_eq!(left, mqtt_dsp_operator::backends::Outcome::Absent, "no RabbitMQ user of the resumed transfer left");
    assert_nothing_left(&stack, "t-a").await;
    assert_nothing_left(&stack, "t-b").await;
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_in_a_broker_removed_from_the_configuration_are_left_in_place_with_an_event() {
    let mut stack = DevStack::start(StackOptions { rabbitmq: true, ..Default::default() }).await;
    let mut on_rabbitmq = mosquitto_asset();
    on_rabbitmq.spec.broker = Some("rabbitmq".into());
    with_ready_asset(&stack, &on_rabbitmq).await;
    create_active(&stack, &transfer("t-a", to("consumer-a"))).await;
    create_active(&stack, &transfer("t-b", to("consumer-b"))).await;
    let rabbitmq = stack.backends.brokers["rabbitmq"].clone();

    // While the operator is down, t-b is deleted, the asset moves to the default broker, and the
    // operator comes back with a configuration that no longer has the `rabbitmq` broker.
    stack.stop_controllers().await;
    let api: Api<MqttTransfer> = stack.api();
    api.delete("t-b", &DeleteParams::default()).await.unwrap();
    let assets: Api<MqttAsset> = stack.api();
    assets
        .patch("line-1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"broker": "default"}})))
        .await
        .unwrap();
    stack.config.brokers.remove("rabbitmq");
    let backends = mqtt_dsp_operator::backends::registry::Backends {
        connectors: stack.backends.connectors.clone(),
        identity_providers: stack.backends.identity_providers.clone(),
        secret_stores: stack.backends.secret_stores.clone(),
        brokers: stack
            .backends
            .brokers
            .iter()
            .filter(|(k, _)| *k != "rabbitmq")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    stack.backends = std::sync::Arc::new(backends);
    let mut settings = StackOptions::default().settings;
    settings.namespace = Some(stack.namespace.clone());
    stack.start_controllers(settings);

    // t-a follows its asset to Mosquitto and works there; t-b's deletion completes.
    wait_for(&api, "t-a", WITHIN, "Active on the default broker", |t| {
        is_active(t)
            && t.status.as_ref().and_then(|s| s.broker.as_ref()).and_then(|b| b.profile.as_deref()) == Some("default")
    })
    .await;
    let moved = from_secret(&stack, "t-a").await;
    assert_eq!(moved.options.url, stack.mosquitto.mqtts_url());
    Consumer::connect(&moved.options).await.expect("the Secret now opens Mosquitto");
    wait_gone(&api, "t-b", WITHIN).await;

    // Each names what it left behind (status forgets it: the Event is the only record) and says
    // it is for a person to remove.
    for name in ["t-a", "t-b"] {
        let user = format!("dsp-mqtt-transfer-{}-{name}", stack.namespace);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let events = events_about(&stack, name).await;
            if let Some((type_, _, note)) = events.iter().find(|(_, reason, _)| reason == "ProfileRemoved") {
                assert_eq!(type_, "Warning");
                assert!(note.contains("brokers.rabbitmq") && note.contains("left in place"), "{name}: {note}");
                assert!(note.contains(&format!("broker user {user}")), "{name}: the Event names the user: {note}");
                assert!(note.contains("by hand") && !note.contains("restore"), "{name}: {note}");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no ProfileRemoved Event about {name}: {events:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The RabbitMQ users are indeed still there (removing them now, as a person would, finds
    // them), and nothing of either transfer is left anywhere else.
    for name in ["t-a", "t-b"] {
        let owner = stack.owner("MqttTransfer", name);
        let user = format!("dsp-mqtt-transfer-{}-{name}", stack.namespace);
        let left = rabbitmq.remove_user(&user, &owner).await.unwrap();
        assert_eq!(left, mqtt_dsp_operator::backends::Outcome::Deleted, "{name}'s RabbitMQ user was left in place");
    }
    api.delete("t-a", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "t-a", WITHIN).await;
    assert_nothing_left(&stack, "t-a").await;
    assert_nothing_left(&stack, "t-b").await;
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_broker_profile_keeps_the_live_user_and_still_revokes_on_deletion() {
    // The `rabbitmq` profile is renamed `rabbit` (same broker) while the operator is down. The
    // transfer that lives on keeps its user (the operator cannot tell the old name reached the
    // same broker, so it removes nothing there); the one deleted meanwhile is still revoked,
    // through the profile its asset names now.
    let mut stack = DevStack::start(StackOptions { rabbitmq: true, ..Default::default() }).await;
    let mut on_rabbitmq = mosquitto_asset();
    on_rabbitmq.spec.broker = Some("rabbitmq".into());
    with_ready_asset(&stack, &on_rabbitmq).await;
    create_active(&stack, &transfer("t-a", to("consumer-a"))).await;
    create_active(&stack, &transfer("t-b", to("consumer-b"))).await;
    let rabbitmq = stack.backends.brokers["rabbitmq"].clone();

    stack.stop_controllers().await;
    let api: Api<MqttTransfer> = stack.api();
    api.delete("t-b", &DeleteParams::default()).await.unwrap();
    let assets: Api<MqttAsset> = stack.api();
    assets
        .patch("line-1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"broker": "rabbit"}})))
        .await
        .unwrap();
    let profile = stack.config.brokers.remove("rabbitmq").unwrap();
    stack.config.brokers.insert("rabbit".into(), profile);
    let backends = mqtt_dsp_operator::backends::registry::Backends {
        connectors: stack.backends.connectors.clone(),
        identity_providers: stack.backends.identity_providers.clone(),
        secret_stores: stack.backends.secret_stores.clone(),
        brokers: stack
            .backends
            .brokers
            .iter()
            .map(|(k, v)| (if k == "rabbitmq" { "rabbit".to_owned() } else { k.clone() }, v.clone()))
            .collect(),
    };
    stack.backends = std::sync::Arc::new(backends);
    let deleted = stack.metrics.backend_writes("rabbitmq", "deleted");
    let mut settings = StackOptions::default().settings;
    settings.namespace = Some(stack.namespace.clone());
    stack.start_controllers(settings);

    wait_gone(&api, "t-b", WITHIN).await;
    wait_for(&api, "t-a", WITHIN, "Active under the new name", |t| {
        is_active(t)
            && t.status.as_ref().and_then(|s| s.broker.as_ref()).and_then(|b| b.profile.as_deref()) == Some("rabbit")
    })
    .await;
    let owner = |name: &str| stack.owner("MqttTransfer", name);
    let user = |name: &str| format!("dsp-mqtt-transfer-{}-{name}", stack.namespace);
    assert_eq!(
        stack.metrics.backend_writes("rabbitmq", "deleted"),
        deleted + 1,
        "exactly one RabbitMQ user deleted: the deleted transfer's"
    );
    assert_eq!(
        rabbitmq.remove_user(&user("t-b"), &owner("t-b")).await.unwrap(),
        mqtt_dsp_operator::backends::Outcome::Absent,
        "the deleted transfer's user was revoked through the renamed profile"
    );
    let live = from_secret(&stack, "t-a").await;
    Consumer::connect(&live.options).await.expect("the live transfer's Secret still opens RabbitMQ");

    // The Event names the user under the old profile name and says when it is not to be touched.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let events = events_about(&stack, "t-a").await;
        if let Some((_, _, note)) = events.iter().find(|(_, reason, _)| reason == "ProfileRemoved") {
            assert!(note.contains(&format!("brokers.rabbitmq (broker user {})", user("t-a"))), "{note}");
            assert!(note.contains("unless a profile still configured reaches the same backend"), "{note}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no ProfileRemoved Event about t-a: {events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    api.delete("t-a", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "t-a", WITHIN).await;
    assert_eq!(
        rabbitmq.remove_user(&user("t-a"), &owner("t-a")).await.unwrap(),
        mqtt_dsp_operator::backends::Outcome::Absent,
        "the live transfer's user goes with it"
    );
    assert_nothing_left(&stack, "t-a").await;
    assert_nothing_left(&stack, "t-b").await;
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_to_another_profile_of_the_same_broker_keeps_every_user() {
    // Two broker profiles for one Mosquitto (as for an internal and a public listener): moving
    // the asset between them moves nothing, and above all removes nothing.
    let mut stack = DevStack::start(StackOptions::default()).await;
    stack.stop_controllers().await;
    let alias = stack.config.brokers["default"].clone();
    stack.config.brokers.insert("same-mosquitto".into(), alias);
    let backends = mqtt_dsp_operator::backends::registry::Backends {
        connectors: stack.backends.connectors.clone(),
        identity_providers: stack.backends.identity_providers.clone(),
        secret_stores: stack.backends.secret_stores.clone(),
        brokers: {
            let mut brokers = stack.backends.brokers.clone();
            brokers.insert("same-mosquitto".into(), brokers["default"].clone());
            brokers
        },
    };
    stack.backends = std::sync::Arc::new(backends);
    let mut settings = StackOptions::default().settings;
    settings.namespace = Some(stack.namespace.clone());
    stack.start_controllers(settings);

    with_ready_asset(&stack, &mosquitto_asset()).await;
    create_active(&stack, &transfer("t-a", to("consumer-a"))).await;
    // A consumer connected before the move: Mosquitto drops the sessions of a user it deletes,
    // so the same connection still receiving afterwards shows that no user was deleted (not
    // deleted and made again by a later reconcile).
    let before = from_secret(&stack, "t-a").await;
    let mut c = Consumer::connect(&before.options).await.expect("the Secret opens the broker");
    assert!(c.subscribe("factory/line-1/temperature").await);
    let deleted = stack.metrics.backend_writes("mosquitto", "deleted");
    let assets: Api<MqttAsset> = stack.api();
    let moved = assets
        .patch("line-1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"broker": "same-mosquitto"}})))
        .await
        .unwrap();
    wait_for(&assets, "line-1", WITHIN, "Ready on the other profile", |a| {
        a.status.as_ref().is_some_and(|s| {
            s.observed_generation == moved.metadata.generation
                && s.broker.as_ref().and_then(|b| b.profile.as_deref()) == Some("same-mosquitto")
                && condition(&s.conditions, "Ready").is_some_and(|(r, _, _)| r == "True")
        })
    })
    .await;
    let api: Api<MqttTransfer> = stack.api();
    wait_for(&api, "t-a", WITHIN, "Active on the other profile", |t| {
        is_active(t)
            && t.status.as_ref().and_then(|s| s.broker.as_ref()).and_then(|b| b.profile.as_deref())
                == Some("same-mosquitto")
    })
    .await;

    let provider = format!("dsp-mqtt-{}-line-1", stack.namespace);
    let consumer = format!("dsp-mqtt-transfer-{}-t-a", stack.namespace);
    assert!(stack.mosquitto.dynsec_client(&provider).is_some(), "the asset's own user is still there");
    assert!(stack.mosquitto.dynsec_client(&consumer).is_some(), "the transfer's user is still there");
    assert_eq!(stack.metrics.backend_writes("mosquitto", "deleted"), deleted, "no Mosquitto user was deleted");
    publish(&stack, "factory/line-1/temperature", "21.5").await;
    let (topic, payload) =
        c.next_message(Duration::from_secs(5)).await.expect("the connection made before the move still receives");
    assert_eq!((topic.as_str(), payload.as_slice()), ("factory/line-1/temperature", &b"21.5"[..]));
    let after = from_secret(&stack, "t-a").await;
    assert_eq!(after.options.url, before.options.url, "the same broker URL");

    api.delete("t-a", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "t-a", WITHIN).await;
    assert_nothing_left(&stack, "t-a").await;
    stack.teardown().await;
}

// ---------------------------------------------------------------------------------------------
// Pause

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_transfer_takes_no_new_grant_but_termination_still_cuts_the_consumer_off() {
    let stack = DevStack::start(StackOptions::default()).await;
    with_ready_asset(&stack, &mosquitto_asset()).await;
    create_active(&stack, &transfer("t-a", to("consumer-a"))).await;
    let identity = format!("dsp-mqtt-transfer-{}-t-a", stack.namespace);
    let role = stack.mosquitto.dynsec_role(&identity).expect("the transfer's role");
    let creds = from_secret(&stack, "t-a").await;
    let mut c = Consumer::connect(&creds.options).await.expect("the Secret opens the broker");
    assert!(c.subscribe("factory/line-1/#").await);

    let api: Api<MqttTransfer> = stack.api();
    api.patch(
        "t-a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"dsp-mqtt.io/paused": "true"}}})),
    )
    .await
    .unwrap();
    wait_for(&api, "t-a", WITHIN, "Paused", |t| {
        t.status.as_ref().and_then(|s| condition(&s.conditions, "Paused")).is_some_and(|(s, _, _)| s == "True")
    })
    .await;

    // A narrower grant waits for the pause to end: generation not observed, the role unchanged.
    let narrowed = api
        .patch(
            "t-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"topics": ["factory/line-1/temperature"]}})),
        )
        .await
        .unwrap();
    // Watched for 3 s (a reconcile takes well under one), so a late one is caught too.
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = api.get("t-a").await.unwrap();
        assert_ne!(now.status.as_ref().unwrap().observed_generation, narrowed.metadata.generation, "not reconciled");
        assert_eq!(stack.mosquitto.dynsec_role(&identity).as_ref(), Some(&role), "the grant is left as it was");
    }

    // Termination is never paused: the consumer is cut off and the credentials open nothing.
    api.patch("t-a", &PatchParams::default(), &Patch::Merge(json!({"spec": {"state": "Terminated"}}))).await.unwrap();
    wait_for(&api, "t-a", WITHIN, "Terminated while paused", |t| phase(t).as_deref() == Some("Terminated")).await;
    assert!(c.wait_disconnected(Duration::from_secs(5)).await.is_some(), "the open session is closed");
    assert!(Consumer::connect(&creds.options).await.is_err(), "the old credentials open nothing");
    assert!(stack.mosquitto.dynsec_client(&identity).is_none(), "the broker user is gone");

    api.delete("t-a", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "t-a", WITHIN).await;
    assert_nothing_left(&stack, "t-a").await;
    stack.teardown().await;
}

/// Found by `make chaos` (docs/reliability.md, "Findings"): a password whose Vault write took
/// effect but whose answer was lost (or whose reconcile was killed right after it) never reaches
/// the broker. With the key gone from Vault (deleted behind the operator's back), the reconcile
/// makes a fresh password and writes it to Vault before it sets it on the broker user; when the
/// reconcile fails in between, the next one finds that password in Vault, takes it for the one
/// the broker has (`fresh` is false, the user exists: no `set_password`) and writes it into the
/// Secret: a Ready transfer whose Secret the broker refuses, for good.
///
/// Fixed by giving a fresh password to the broker before the secret store
/// (`controller/transfer/mod.rs`, as assets always did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_written_to_vault_whose_answer_was_lost_still_reaches_the_broker() {
    let stack = DevStack::start(StackOptions::default()).await;
    with_ready_asset(&stack, &mosquitto_asset()).await;
    create_active(&stack, &transfer("t-a", to("consumer-a"))).await;
    let before = from_secret(&stack, "t-a").await;
    let identity = format!("dsp-mqtt-transfer-{}-t-a", stack.namespace);
    let key = format!("{VAULT_FOLDER}/{identity}-secret");

    // The key goes behind the operator's back; the next two Vault writes (the owner marker of
    // the new key, then its first version) take effect but answer 500.
    stack.vault.delete(&key).await;
    stack.vault.server.faults.fail_after_apply(2, 500);
    let api: Api<MqttTransfer> = stack.api();
    let requested = format!("{}", chrono::Utc::now().timestamp_micros());
    let annotation = json!({"metadata": {"annotations": {"dsp-mqtt.io/reconcile-requested-at": requested}}});
    api.patch("t-a", &PatchParams::default(), &Patch::Merge(annotation)).await.unwrap();

    let deadline = tokio::time::Instant::now() + WITHIN;
    let after = loop {
        let now = from_secret(&stack, "t-a").await;
        if now.options.password != before.options.password {
            break now;
        }
        assert!(tokio::time::Instant::now() < deadline, "the Secret never got a new password");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    wait_for(&api, "t-a", WITHIN, "Active", is_active).await;
    let stored = stack.vault.secret(&key).await.expect("the key is back");
    assert_eq!(stored.content(), Some(after.options.password.as_str()), "Vault and the Secret agree");
    let mut c = Consumer::connect(&after.options).await.expect("the broker takes the Secret's password");
    assert!(c.subscribe("factory/line-1/#").await);
    stack.teardown().await;
}
