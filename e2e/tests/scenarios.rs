//! `make e2e`: the user stories of mqtt-dsp-operator, one test each, told from the user's side.
//!
//! The provider acts the way `kubectl` does (through the Kubernetes API: create, patch, delete
//! MqttAssets and MqttTransfers); what is checked is what the people around the operator see: the
//! resources' status, the consumer's MQTT client (which knows nothing but the transfer's Secret)
//! connecting, receiving, being cut off or refused, the connector's catalog, and what every backend
//! holds. The controller suites (asset_controller.rs, transfer_controller.rs) check the details of
//! each step; these check that the stories hold end to end.
//!
//! Each test starts its own DevStack: the Kubernetes API test server, or the `KUBECONFIG` cluster
//! (a fresh namespace per test, CRDs installed beforehand), with the doubles and real brokers on
//! 127.0.0.1 and the controllers running in this process. Checks that need the test server's
//! internals are skipped on a real cluster, with a line saying so. docs/e2e.md has the table.

use std::future::Future;
use std::time::Duration;

use e2e::brokers::mosquitto::{self, PUBLISHER_PASSWORD};
use e2e::brokers::rabbitmq;
use e2e::consumer::{ConnectError, Consumer, ConsumerOptions, FromSecret};
use e2e::doubles::edc::{self, EdcDouble};
use e2e::fixtures::consumer_options;
use e2e::inventory::Inventory;
use e2e::stack::{DevStack, StackOptions, condition, events_about, wait_for, wait_gone};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use mqtt_dsp_operator::api::{
    AssetAuth, AssetPolicy, AssetRef, AuthMode, Endpoint, EndpointType, MqttAsset, MqttAssetSpec, MqttTransfer,
    MqttTransferSpec, PolicyRule, TransferPhase, TransferState,
};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// What the provider writes

/// An offer of `factory/<name>/#` on the default broker (Mosquitto), `usrpw`, `mqtt-tls`, in the
/// default connector, open to consumers a and b.
fn offer(name: &str) -> MqttAsset {
    MqttAsset::new(
        name,
        MqttAssetSpec {
            asset_id: None,
            connector: None,
            identity_provider: None,
            secret_store: None,
            broker: None,
            endpoint: Endpoint { endpoint_type: EndpointType::MqttTls, url: None },
            topics: vec![format!("factory/{name}/#")],
            auth: AssetAuth { mode: AuthMode::Usrpw, client_id: None, secret_alias: None },
            properties: None,
            private_properties: None,
            policy: AssetPolicy {
                access: PolicyRule {
                    participant_ids: Some(vec![participant("consumer-a"), participant("consumer-b")]),
                    odrl: None,
                },
                contract: None,
            },
            deletion_policy: None,
        },
    )
}

trait OfferExt {
    fn on_rabbitmq(self) -> Self;
    fn oauth2(self) -> Self;
    fn wss(self) -> Self;
    fn in_connector(self, profile: &str) -> Self;
}

impl OfferExt for MqttAsset {
    fn on_rabbitmq(mut self) -> Self {
        self.spec.broker = Some("rabbitmq".into());
        self
    }
    fn oauth2(mut self) -> Self {
        self.spec.auth.mode = AuthMode::Oauth2;
        self
    }
    fn wss(mut self) -> Self {
        self.spec.endpoint.endpoint_type = EndpointType::MqttWss;
        self
    }
    fn in_connector(mut self, profile: &str) -> Self {
        self.spec.connector = Some(profile.into());
        self
    }
}

fn participant(consumer: &str) -> String {
    format!("did:web:{consumer}.example.com")
}

/// A transfer of `asset` to `consumer`, named `<asset>-<consumer>`, state unset (Started).
fn transfer(asset: &str, consumer: &str) -> MqttTransfer {
    MqttTransfer::new(
        &format!("{asset}-{consumer}"),
        MqttTransferSpec {
            asset_ref: AssetRef { name: asset.into() },
            consumer: mqtt_dsp_operator::api::Consumer { participant_id: participant(consumer) },
            transfer_process_id: None,
            agreement_id: None,
            state: None,
            topics: None,
            expires_at: None,
            token_lifetime_seconds: None,
            secret_name: None,
        },
    )
}

trait TransferExt {
    fn topics(self, topics: &[&str]) -> Self;
    fn expires_in(self, seconds: i64) -> Self;
}

impl TransferExt for MqttTransfer {
    fn topics(mut self, topics: &[&str]) -> Self {
        self.spec.topics = Some(topics.iter().map(|t| t.to_string()).collect());
        self
    }
    /// `seconds` from now, in whole seconds (what the API server keeps of an RFC 3339 time).
    fn expires_in(mut self, seconds: i64) -> Self {
        let at = Timestamp::from_second(Timestamp::now().as_second() + seconds).expect("a valid time");
        self.spec.expires_at = Some(Time(at));
        self
    }
}

// ---------------------------------------------------------------------------------------------
// kubectl

fn ready_of(conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> Option<(String, String)> {
    condition(conditions, "Ready").map(|(s, r, _)| (s, r))
}

fn asset_ready(a: &MqttAsset) -> bool {
    a.status.as_ref().is_some_and(|s| {
        s.observed_generation == a.metadata.generation
            && ready_of(&s.conditions).is_some_and(|(s, r)| s == "True" && r == "Reconciled")
    })
}

fn phase(t: &MqttTransfer) -> Option<TransferPhase> {
    t.status.as_ref()?.phase
}

fn ready(t: &MqttTransfer) -> Option<(String, String)> {
    ready_of(&t.status.as_ref()?.conditions)
}

fn in_phase(t: &MqttTransfer, wanted: TransferPhase) -> bool {
    phase(t) == Some(wanted) && t.status.as_ref().is_some_and(|s| s.observed_generation == t.metadata.generation)
}

/// `kubectl apply` of an offer, then `kubectl wait --for=condition=Ready`.
async fn apply_offer(stack: &DevStack, asset: MqttAsset) -> MqttAsset {
    let api: Api<MqttAsset> = stack.api();
    let name = asset.metadata.name.clone().unwrap();
    api.create(&PostParams::default(), &asset).await.expect("create the MqttAsset");
    wait_for(&api, &name, WITHIN, "Ready", asset_ready).await
}

/// `kubectl apply` of a transfer, then wait until it is Active.
async fn grant(stack: &DevStack, t: MqttTransfer) -> MqttTransfer {
    let api: Api<MqttTransfer> = stack.api();
    let name = t.metadata.name.clone().unwrap();
    api.create(&PostParams::default(), &t).await.expect("create the MqttTransfer");
    wait_for(&api, &name, WITHIN, "Active", |t| in_phase(t, TransferPhase::Active)).await
}

/// `kubectl patch mqt <name> --type merge -p '{"spec":{"state":…}}'`, then wait for `phase`.
async fn set_state(stack: &DevStack, name: &str, state: TransferState, phase: TransferPhase) -> MqttTransfer {
    let api: Api<MqttTransfer> = stack.api();
    api.patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"state": state}})))
        .await
        .expect("patch spec.state");
    wait_for(&api, name, WITHIN, &format!("{phase:?}"), |t| in_phase(t, phase)).await
}

async fn secret(stack: &DevStack, name: &str) -> Option<Secret> {
    stack.api::<Secret>().get_opt(name).await.expect("read a Secret")
}

/// What the consumer's program reads: the transfer's Secret, nothing else.
async fn consumer_reads_secret(stack: &DevStack, transfer: &str) -> FromSecret {
    let s = secret(stack, transfer).await.unwrap_or_else(|| panic!("the Secret of {transfer}"));
    FromSecret::read(&s, &stack.ca.cert_pem()).unwrap_or_else(|| panic!("credentials in the Secret of {transfer}"))
}

/// Asserts the transfer's status shows where and what to read but no credential.
fn assert_status_without_credentials(t: &MqttTransfer, from: &FromSecret) {
    let status = t.status.as_ref().unwrap();
    let da = status.data_address.as_ref().expect("status.dataAddress");
    assert_eq!(da["dsp-mqtt:baseUrl"], json!(from.options.url));
    let text = serde_json::to_string(status).unwrap();
    assert!(!text.contains(&from.options.password), "a credential in status");
    assert_eq!(status.credentials_secret_ref.as_ref().map(|r| r.name.as_str()), t.metadata.name.as_deref());
}

// ---------------------------------------------------------------------------------------------
// The provider's devices and the consumer's client

/// A device of the provider publishing on Mosquitto (the stack's `publisher`).
async fn mosquitto_device(stack: &DevStack) -> Consumer {
    let options = consumer_options(stack.mosquitto.mqtts_url(), &stack.ca.cert_pem(), "publisher", PUBLISHER_PASSWORD);
    Consumer::connect(&options).await.expect("the publisher connects to Mosquitto")
}

/// A device of the provider publishing on RabbitMQ (the admin user).
async fn rabbitmq_device(stack: &DevStack) -> Consumer {
    let rabbit = stack.rabbitmq.as_ref().expect("a stack with RabbitMQ");
    let options =
        consumer_options(rabbit.mqtts_url(), &stack.ca.cert_pem(), rabbitmq::ADMIN_USER, rabbitmq::ADMIN_PASSWORD);
    Consumer::connect(&options).await.expect("the publisher connects to RabbitMQ")
}

/// The device publishes `payload` once; true when `consumer` receives it within 3 s.
async fn receives(consumer: &mut Consumer, device: &Consumer, topic: &str, payload: &str) -> bool {
    assert!(device.publish(topic, payload.as_bytes()).await, "the device publishes");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match consumer.next_message(left).await {
            Some((t, p)) if t == topic && p == payload.as_bytes() => return true,
            Some(_) => continue,
            None => return false,
        }
    }
}

/// The consumer connects with what the Secret gave it and subscribes to its topic.
async fn subscribed(options: &ConsumerOptions, topic: &str) -> Consumer {
    let mut c = Consumer::connect(options).await.unwrap_or_else(|e| panic!("{}: {e:?}", options.url));
    assert!(c.subscribe(topic).await, "{topic} granted");
    c
}

async fn assert_refused(options: &ConsumerOptions, what: &str) {
    match Consumer::connect(options).await {
        Err(ConnectError::Refused(_)) => {}
        Err(ConnectError::Failed(e)) => panic!("{what}: the broker should refuse the CONNECT, got {e}"),
        Ok(_) => panic!("{what}: connected"),
    }
}

async fn until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// What others see: the connector, its catalog, Vault

/// The datasets a consumer's connector receives from this connector's DSP catalog (the factoryx
/// double's; the stock connector is the real EDC: `stack.edc.offered`).
async fn catalog(stack: &DevStack, connector: &EdcDouble) -> Vec<Value> {
    let catalog: Value = stack
        .http()
        .post(format!("{}/v3/catalog/request", connector.management_url))
        .header("X-Api-Key", edc::API_KEY)
        .json(&json!({
            "@context": {"@vocab": edc::EDC_NAMESPACE},
            "counterPartyAddress": format!("{}/api/dsp", connector.server.base_url),
            "protocol": "dataspace-protocol-http:2025-1",
        }))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("a catalog")
        .json()
        .await
        .expect("a JSON catalog");
    match &catalog["dataset"] {
        Value::Array(datasets) => datasets.clone(),
        Value::Null => Vec::new(),
        one => vec![one.clone()],
    }
}

async fn offered(stack: &DevStack, connector: &EdcDouble, asset_id: &str) -> Option<Value> {
    catalog(stack, connector).await.into_iter().find(|d| d["@id"] == json!(asset_id))
}

/// What transfers named for `transfer` are left anywhere.
async fn objects_of(stack: &DevStack, transfer: &str) -> Vec<String> {
    let identity = format!("dsp-mqtt-transfer-{}-{transfer}", stack.namespace);
    let secret = format!("Secret {}/{transfer}", stack.namespace);
    Inventory::take(stack)
        .await
        .leftovers()
        .into_iter()
        .filter(|o| o.contains(&identity) || o.ends_with(&secret))
        .collect()
}

// =============================================================================================
// The stories

/// A provider offers a stream: the consumer's connector finds it in the DSP catalog as an
/// `Mqtt-PULL` distribution under the provider's policy, and the provider's connector can do what
/// it does on a transfer start: read the asset's DataAddress, resolve its secret from Vault and
/// open the broker with it, read-only and on the asset's topics only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_an_asset() {
    let stack = DevStack::start(StackOptions::default()).await;
    let ready = apply_offer(&stack, offer("line-1").in_connector("factoryx").wss()).await;
    let asset_id = format!("{}-line-1", stack.namespace);

    // kubectl get mqa: Ready, and the status names what exists without any secret.
    let status = ready.status.clone().unwrap();
    assert_eq!(status.connector.as_ref().unwrap().asset_id.as_deref(), Some(asset_id.as_str()));
    // kubectl describe mqa: the Event follows the status write.
    let stack_ref = &stack;
    until("a Reconciled Event", WITHIN, || async move {
        events_about(stack_ref, "line-1").await.iter().any(|(t, r, _)| t == "Normal" && r == "Reconciled")
    })
    .await;
    let events = events_about(&stack, "line-1").await;

    // The consumer's connector: the offer in the catalog, MQTT pull, for the named participants.
    let dataset = offered(&stack, &stack.edc_fx, &asset_id).await.expect("the asset in the DSP catalog");
    let formats: Vec<&str> = dataset["distribution"]
        .as_array()
        .expect("distributions")
        .iter()
        .filter_map(|d| d["format"].as_str())
        .collect();
    assert!(formats.contains(&"Mqtt-PULL"), "{formats:?}");
    let policy = dataset["hasPolicy"][0].to_string();
    assert!(policy.contains(&participant("consumer-a")) && policy.contains(&participant("consumer-b")), "{policy}");

    // The provider's connector on a transfer start: its DataAddress, as its Management API has it…
    let http = stack.http();
    let asset: Value = http
        .get(format!("{}/v3/assets/{asset_id}", stack.edc_fx.management_url))
        .header("X-Api-Key", edc::API_KEY)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("the asset from the Management API")
        .json()
        .await
        .unwrap();
    let da = &asset["dataAddress"];
    let field = |k: &str| da[k].as_str().unwrap_or_else(|| panic!("dataAddress.{k} in {da}")).to_owned();
    assert_eq!(field("type"), "Mqtt");
    assert_eq!(field("mqttEndpointType"), "mqtt-wss-basic");
    assert_eq!(status.data_address.as_ref().unwrap()["baseUrl"], json!(field("baseUrl")));
    // …the password resolved from Vault under the alias (the reference connector: no folder;
    // straight to OpenBao: the connector has no business with the operator's proxy)…
    let from_vault: Value = http
        .get(format!("{}v1/{}/data/{}", stack.vault.vault.url(), stack.vault.mount, field("passwordAlias")))
        .header("X-Vault-Token", stack.vault.token())
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("the alias resolves in Vault")
        .json()
        .await
        .unwrap();
    let password = from_vault["data"]["data"]["content"].as_str().expect("content").to_owned();
    e2e::logs::register_secret(&password);
    assert!(!serde_json::to_string(&status).unwrap().contains(&password), "no secret in status");
    assert!(events.iter().all(|(_, _, note)| !note.contains(&password)), "no secret in Events");
    // …opens the broker at baseUrl, for the asset's topics only.
    let options = consumer_options(field("baseUrl"), &stack.ca.cert_pem(), &field("username"), &password);
    let mut connector = subscribed(&options, "factory/line-1/#").await;
    let device = mosquitto_device(&stack).await;
    assert!(receives(&mut connector, &device, "factory/line-1/temperature", "21.5").await, "the stream flows");
    assert!(!connector.subscribe("factory/line-2/#").await, "another stream is not part of the offer");
    stack.teardown().await;
}

/// A provider grants a consumer a transfer, in both auth modes: the consumer's client, knowing
/// only the transfer's Secret, connects (a password on Mosquitto; a JWT on RabbitMQ), receives
/// the stream on its topic and is refused the asset's other topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_a_transfer_and_consume() {
    let stack = DevStack::start(StackOptions { rabbitmq: true, ..Default::default() }).await;
    apply_offer(&stack, offer("line-1")).await;
    apply_offer(&stack, offer("line-2").on_rabbitmq().oauth2()).await;
    let mosquitto_device = mosquitto_device(&stack).await;
    let rabbitmq_device = rabbitmq_device(&stack).await;

    for (asset, device) in [("line-1", &mosquitto_device), ("line-2", &rabbitmq_device)] {
        let own = format!("factory/{asset}/temperature");
        let name = format!("{asset}-consumer-a");
        let active = grant(&stack, transfer(asset, "consumer-a").topics(&[&own])).await;
        assert_eq!(ready(&active), Some(("True".into(), "Reconciled".into())), "{name}");
        let from = consumer_reads_secret(&stack, &name).await;
        assert_eq!(from.topics, vec![own.clone()], "{name}: the topic from the Secret");
        assert_status_without_credentials(&active, &from);

        let mut consumer = subscribed(&from.options, &own).await;
        assert!(receives(&mut consumer, device, &own, "21.5").await, "{name}: receives its stream");
        // Last: RabbitMQ closes the connection on a refused SUBSCRIBE.
        assert!(!consumer.subscribe(&format!("factory/{asset}/pressure")).await, "{name}: not its topic");
    }
    let rabbit = stack.rabbitmq.as_ref().unwrap();
    let from = consumer_reads_secret(&stack, "line-2-consumer-a").await;
    assert_eq!(from.options.url, rabbit.mqtts_url(), "the RabbitMQ transfer points at RabbitMQ");
    assert!(from.options.password.split('.').count() == 3, "a JWT as the CONNECT password");
    stack.teardown().await;
}

/// A provider suspends a transfer: the consumer is cut off, cannot come back, and misses
/// what is published meanwhile; the Secret keeps where to connect but no credentials. On resume
/// the consumer reads the Secret again and gets back in with fresh credentials (over wss here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_and_resume() {
    let stack = DevStack::start(StackOptions::default()).await;
    apply_offer(&stack, offer("line-1").wss()).await;
    grant(&stack, transfer("line-1", "consumer-a")).await;
    let device = mosquitto_device(&stack).await;
    let before = consumer_reads_secret(&stack, "line-1-consumer-a").await;
    assert_eq!(before.options.url, stack.mosquitto.wss_url());
    let mut consumer = subscribed(&before.options, "factory/line-1/#").await;
    assert!(receives(&mut consumer, &device, "factory/line-1/temperature", "before").await);

    let suspended = set_state(&stack, "line-1-consumer-a", TransferState::Suspended, TransferPhase::Suspended).await;
    assert!(consumer.wait_disconnected(Duration::from_secs(3)).await.is_some(), "cut off");
    assert_eq!(ready(&suspended), Some(("True".into(), "Suspended".into())));
    assert_refused(&before.options, "reconnecting while suspended").await;
    let s = secret(&stack, "line-1-consumer-a").await.expect("the Secret stays while suspended");
    assert!(FromSecret::read(&s, &stack.ca.cert_pem()).is_none(), "no credentials while suspended");
    let da: Value = serde_json::from_slice(&s.data.as_ref().unwrap()["dataAddress.json"].0).unwrap();
    assert_eq!(da["dsp-mqtt:baseUrl"], json!(stack.mosquitto.wss_url()), "still says where to connect");
    device.publish("factory/line-1/temperature", b"while suspended").await;

    set_state(&stack, "line-1-consumer-a", TransferState::Started, TransferPhase::Active).await;
    let after = consumer_reads_secret(&stack, "line-1-consumer-a").await;
    assert!(after.options.password != before.options.password, "fresh credentials");
    let mut consumer = subscribed(&after.options, "factory/line-1/#").await;
    assert!(device.publish("factory/line-1/temperature", b"after").await);
    let first = consumer.next_message(Duration::from_secs(3)).await.expect("receives again");
    assert_eq!(first.1, b"after", "the first message after resuming (what came meanwhile is missed)");
    assert_refused(&before.options, "the credentials from before the suspension").await;
    stack.teardown().await;
}

/// A provider terminates one consumer's transfer and completes another's: each is cut off for
/// good, its Secret and every backend object of it are gone, and a terminated transfer cannot be
/// started again; the other consumer is not touched until its own transfer ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate() {
    let stack = DevStack::start(StackOptions::default()).await;
    apply_offer(&stack, offer("line-1")).await;
    grant(&stack, transfer("line-1", "consumer-a")).await;
    grant(&stack, transfer("line-1", "consumer-b")).await;
    let device = mosquitto_device(&stack).await;
    let a = consumer_reads_secret(&stack, "line-1-consumer-a").await;
    let b = consumer_reads_secret(&stack, "line-1-consumer-b").await;
    let mut consumer_a = subscribed(&a.options, "factory/line-1/#").await;
    let mut consumer_b = subscribed(&b.options, "factory/line-1/#").await;
    assert!(!objects_of(&stack, "line-1-consumer-a").await.is_empty(), "the inventory sees a transfer's objects");

    let terminated = set_state(&stack, "line-1-consumer-a", TransferState::Terminated, TransferPhase::Terminated).await;
    assert_eq!(ready(&terminated), Some(("True".into(), "Terminated".into())));
    assert!(consumer_a.wait_disconnected(Duration::from_secs(3)).await.is_some(), "a cut off");
    assert_refused(&a.options, "a terminated transfer's credentials").await;
    assert_eq!(objects_of(&stack, "line-1-consumer-a").await, Vec::<String>::new(), "left of a");
    assert!(receives(&mut consumer_b, &device, "factory/line-1/temperature", "b").await, "b still receives");
    let api: Api<MqttTransfer> = stack.api();
    let restart = api
        .patch("line-1-consumer-a", &PatchParams::default(), &Patch::Merge(json!({"spec": {"state": "Started"}})))
        .await;
    assert!(matches!(restart, Err(kube::Error::Api(ref s)) if s.code == 422), "Terminated is final: {restart:?}");

    let completed = set_state(&stack, "line-1-consumer-b", TransferState::Completed, TransferPhase::Completed).await;
    assert_eq!(ready(&completed), Some(("True".into(), "Completed".into())));
    assert!(consumer_b.wait_disconnected(Duration::from_secs(3)).await.is_some(), "b cut off");
    assert_refused(&b.options, "a completed transfer's credentials").await;
    assert_eq!(objects_of(&stack, "line-1-consumer-b").await, Vec::<String>::new(), "left of b");
    // The offer itself stays.
    let asset_id = format!("{}-line-1", stack.namespace);
    assert!(stack.edc.offered(&asset_id).await.is_some(), "still offered");
    stack.teardown().await;
}

/// A transfer granted until a given time ends by itself: the consumer is cut off at `expiresAt`
/// without anyone acting, nothing of the transfer remains, and moving `expiresAt` later does not
/// bring it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire() {
    let stack = DevStack::start(StackOptions::default()).await;
    apply_offer(&stack, offer("line-1")).await;
    let expiring = transfer("line-1", "consumer-a").expires_in(6);
    let expires_at = expiring.spec.expires_at.clone().unwrap().0;
    grant(&stack, expiring).await;
    assert!(Timestamp::now() < expires_at, "granted too slowly to see it before expiry");
    let device = mosquitto_device(&stack).await;
    let from = consumer_reads_secret(&stack, "line-1-consumer-a").await;
    let mut consumer = subscribed(&from.options, "factory/line-1/#").await;
    assert!(receives(&mut consumer, &device, "factory/line-1/temperature", "in time").await);

    assert!(consumer.wait_disconnected(Duration::from_secs(15)).await.is_some(), "cut off at expiry");
    let cut_at = Timestamp::now();
    assert!(cut_at >= expires_at, "cut off at {cut_at}, before expiresAt {expires_at}");
    let api: Api<MqttTransfer> = stack.api();
    let expired = wait_for(&api, "line-1-consumer-a", WITHIN, "Expired", |t| in_phase(t, TransferPhase::Expired)).await;
    assert_eq!(ready(&expired), Some(("True".into(), "Expired".into())));
    assert_refused(&from.options, "expired credentials").await;
    assert_eq!(objects_of(&stack, "line-1-consumer-a").await, Vec::<String>::new(), "left of the transfer");

    // Extending an expired transfer grants nothing: expiry is final, like termination.
    let later = (Timestamp::now() + SignedDuration::from_secs(3600)).to_string();
    let patched = api
        .patch("line-1-consumer-a", &PatchParams::default(), &Patch::Merge(json!({"spec": {"expiresAt": later}})))
        .await
        .expect("expiresAt may be changed");
    let generation = patched.metadata.generation;
    let seen = wait_for(&api, "line-1-consumer-a", WITHIN, "the change observed", |t| {
        t.status.as_ref().is_some_and(|s| s.observed_generation == generation)
    })
    .await;
    assert_eq!(phase(&seen), Some(TransferPhase::Expired));
    assert!(secret(&stack, "line-1-consumer-a").await.is_none(), "no new Secret");
    assert_refused(&from.options, "expired credentials after extending").await;
    stack.teardown().await;
}

/// A provider withdraws an offer that consumers are still reading: the deletion is not blocked,
/// the offer leaves the catalog, every consumer is cut off and its transfer says why, nothing of
/// the offer or the transfers is left in any backend; offering it again lets the transfers back
/// in with fresh Secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_an_asset_with_live_transfers() {
    let stack = DevStack::start(StackOptions::default()).await;
    apply_offer(&stack, offer("line-1")).await;
    let asset_id = format!("{}-line-1", stack.namespace);
    let names = ["line-1-consumer-a", "line-1-consumer-b"];
    let mut consumers = Vec::new();
    for (consumer, name) in ["consumer-a", "consumer-b"].into_iter().zip(names) {
        grant(&stack, transfer("line-1", consumer)).await;
        let from = consumer_reads_secret(&stack, name).await;
        consumers.push((subscribed(&from.options, "factory/line-1/#").await, from));
    }
    assert!(stack.edc.offered(&asset_id).await.is_some());

    let assets: Api<MqttAsset> = stack.api();
    assets.delete("line-1", &DeleteParams::default()).await.expect("kubectl delete mqa line-1");
    wait_gone(&assets, "line-1", WITHIN).await;
    let transfers: Api<MqttTransfer> = stack.api();
    for (consumer, from) in &mut consumers {
        assert!(consumer.wait_disconnected(Duration::from_secs(5)).await.is_some(), "cut off");
        assert_refused(&from.options, "a transfer of a deleted asset").await;
    }
    for name in names {
        let t = wait_for(&transfers, name, WITHIN, "AssetNotFound", |t| {
            ready(t).is_some_and(|(_, reason)| reason == "AssetNotFound")
        })
        .await;
        assert_eq!(phase(&t), Some(TransferPhase::Failed), "{name}");
        let message = condition(&t.status.unwrap().conditions, "Ready").unwrap().2;
        assert!(message.contains("line-1"), "{name}: the message names the asset: {message}");
    }
    assert!(stack.edc.offered(&asset_id).await.is_none(), "no longer in the catalog");
    let left = Inventory::take(&stack).await;
    assert!(left.is_empty(), "left behind: {:#?}", left.leftovers());

    // Offered again: the transfers are granted again, with new credentials.
    apply_offer(&stack, offer("line-1")).await;
    let device = mosquitto_device(&stack).await;
    for (name, (_, before)) in names.into_iter().zip(&consumers) {
        wait_for(&transfers, name, WITHIN, "Active again", |t| in_phase(t, TransferPhase::Active)).await;
        let after = consumer_reads_secret(&stack, name).await;
        assert_ne!(after.options.password, before.options.password, "{name}: fresh credentials");
        let mut consumer = subscribed(&after.options, "factory/line-1/#").await;
        assert!(receives(&mut consumer, &device, "factory/line-1/temperature", name).await, "{name} receives");
    }
    stack.teardown().await;
}

/// Someone changes what the operator made behind its back — a cluster admin deletes a transfer's
/// Secret, a broker admin deletes the consumer's broker user, a connector admin deletes the
/// offer's contract definition: at the next resync each is put back, and the consumer gets in
/// again with the credentials it already has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_drift() {
    let mut options = StackOptions::default();
    options.settings.resync = Duration::from_millis(500);
    let stack = DevStack::start(options).await;
    apply_offer(&stack, offer("line-1")).await;
    grant(&stack, transfer("line-1", "consumer-a")).await;
    let device = mosquitto_device(&stack).await;
    let from = consumer_reads_secret(&stack, "line-1-consumer-a").await;
    let mut consumer = subscribed(&from.options, "factory/line-1/#").await;

    // kubectl delete secret line-1-consumer-a
    let secrets: Api<Secret> = stack.api();
    let uid = secrets.get("line-1-consumer-a").await.unwrap().metadata.uid;
    secrets.delete("line-1-consumer-a", &DeleteParams::default()).await.expect("kubectl delete secret");
    let (stack_ref, uid) = (&stack, &uid);
    until("the Secret is back", WITHIN, || async move {
        secret(stack_ref, "line-1-consumer-a").await.is_some_and(|s| s.metadata.uid != *uid)
    })
    .await;
    let again = consumer_reads_secret(&stack, "line-1-consumer-a").await;
    assert_eq!(again.options.password, from.options.password, "the same credentials as before");

    // A broker admin deletes the consumer's user (Mosquitto's dynamic-security API).
    let identity = format!("dsp-mqtt-transfer-{}-line-1-consumer-a", stack.namespace);
    let admin = Consumer::connect(&consumer_options(
        stack.mosquitto.mqtts_url(),
        &stack.ca.cert_pem(),
        "admin",
        mosquitto::ADMIN_PASSWORD,
    ))
    .await
    .expect("the broker admin connects");
    let command = json!({"commands": [{"command": "deleteClient", "username": identity}]});
    assert!(admin.publish("$CONTROL/dynamic-security/v1", command.to_string().as_bytes()).await);
    assert!(consumer.wait_disconnected(Duration::from_secs(5)).await.is_some(), "the admin's deletion cuts it off");
    let deadline = tokio::time::Instant::now() + WITHIN;
    let mut consumer = loop {
        if let Ok(c) = Consumer::connect(&from.options).await {
            break c;
        }
        assert!(tokio::time::Instant::now() < deadline, "the consumer does not get back in with its credentials");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(consumer.subscribe("factory/line-1/#").await, "with its topics");
    assert!(receives(&mut consumer, &device, "factory/line-1/temperature", "repaired").await);

    // A connector admin deletes the offer's contract definition: the offer leaves the catalog…
    let asset_id = format!("{}-line-1", stack.namespace);
    let path = format!("/v3/contractdefinitions/{asset_id}-contract-definition");
    let (status, answer) = stack.edc.call(reqwest::Method::DELETE, &path, None).await;
    assert!((200..300).contains(&status), "{status}: {answer}");
    // …and comes back.
    let asset_id = &asset_id;
    until("offered again", WITHIN, || async move { stack_ref.edc.offered(asset_id).await.is_some() }).await;
    stack.teardown().await;
}

/// The operator restarts (an upgrade, a node drain) while consumers are reading, in both auth
/// modes: nobody is cut off, no token is re-issued, no password changes, and nothing is written —
/// not to the brokers, Keycloak, Vault, the Secrets or the resources' status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_without_reissuing_credentials() {
    let mut stack = DevStack::start(StackOptions { rabbitmq: true, ..Default::default() }).await;
    apply_offer(&stack, offer("line-1")).await;
    apply_offer(&stack, offer("line-2").on_rabbitmq().oauth2()).await;
    let mosquitto_device = mosquitto_device(&stack).await;
    let rabbitmq_device = rabbitmq_device(&stack).await;
    let names = ["line-1-consumer-a", "line-2-consumer-a"];
    let mut consumers = Vec::new();
    for (asset, name) in ["line-1", "line-2"].into_iter().zip(names) {
        grant(&stack, transfer(asset, "consumer-a")).await;
        let from = consumer_reads_secret(&stack, name).await;
        consumers.push((subscribed(&from.options, &format!("factory/{asset}/#")).await, from));
    }
    // Let the reconciles that follow our own writes pass.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let oauth2_client = format!("dsp-mqtt-transfer-{}-line-2-consumer-a", stack.namespace);
    let tokens_issued = stack.keycloak.logins(&oauth2_client).await;
    assert!(tokens_issued >= 1);
    let transfers: Api<MqttTransfer> = stack.api();
    let assets: Api<MqttAsset> = stack.api();
    let mut versions = Vec::new();
    for name in names {
        versions.push((format!("Secret {name}"), secret(&stack, name).await.unwrap().metadata.resource_version));
        versions.push((format!("MqttTransfer {name}"), transfers.get(name).await.unwrap().metadata.resource_version));
    }
    for name in ["line-1", "line-2"] {
        versions.push((format!("MqttAsset {name}"), assets.get(name).await.unwrap().metadata.resource_version));
    }
    stack.vault.server.log.clear();
    stack.keycloak.server.log.clear();
    stack.edc.server.log.clear();
    let mosquitto_saved = stack.mosquitto.dynsec_saved_at();
    let kubernetes_before = stack.kubernetes_state().await;
    let reconciled = reconciles(&stack);

    stack.restart_controllers().await;
    let stack_ref = &stack;
    until("the restarted operator reconciled all four resources", WITHIN, || async move {
        reconciles(stack_ref) >= reconciled + 4
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    for ((consumer, _), (asset, device)) in
        consumers.iter_mut().zip([("line-1", &mosquitto_device), ("line-2", &rabbitmq_device)])
    {
        let topic = format!("factory/{asset}/temperature");
        assert!(receives(consumer, device, &topic, "after the restart").await, "{asset}: the consumer never noticed");
    }
    assert_eq!(stack.keycloak.logins(&oauth2_client).await, tokens_issued, "no token re-issued");
    for (name, (_, before)) in names.iter().zip(&consumers) {
        let now = consumer_reads_secret(&stack, name).await;
        assert_eq!(now.options.password, before.options.password, "{name}: the same credentials");
    }
    for (what, before) in versions {
        let now = match what.split_once(' ').unwrap() {
            ("Secret", name) => secret(&stack, name).await.unwrap().metadata.resource_version,
            ("MqttTransfer", name) => transfers.get(name).await.unwrap().metadata.resource_version,
            (_, name) => assets.get(name).await.unwrap().metadata.resource_version,
        };
        assert_eq!(now, before, "{what} rewritten");
    }
    assert!(!stack.edc.server.log.all().is_empty(), "the restarted operator looked at the connector");
    for (backend, log) in
        [("Vault", &stack.vault.server.log), ("Keycloak", &stack.keycloak.server.log), ("EDC", &stack.edc.server.log)]
    {
        assert_eq!(log.matching(|r| r.is_mutating()), vec![], "{backend} writes after the restart");
    }
    assert_eq!(stack.mosquitto.dynsec_saved_at(), mosquitto_saved, "Mosquitto writes after the restart");
    assert_eq!(
        stack.kubernetes_state().await,
        kubernetes_before,
        "Kubernetes writes (Events included) after the restart"
    );
    stack.teardown().await;
}

fn reconciles(stack: &DevStack) -> u64 {
    let text = stack.metrics.encode().unwrap();
    text.lines()
        .filter(|l| l.starts_with("mqtt_dsp_operator_reconciles_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Uninstalling: with offers on both brokers in both auth modes and in both connectors, and
/// transfers active and suspended, every MqttTransfer and MqttAsset is deleted at once (as
/// `kubectl delete mqt,mqa --all` before `helm uninstall`); once they are gone and the operator
/// stopped, no backend holds anything the operator made and no transfer Secret is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_leaves_nothing_behind() {
    let mut stack = DevStack::start(StackOptions { rabbitmq: true, ..Default::default() }).await;
    apply_offer(&stack, offer("line-1")).await;
    apply_offer(&stack, offer("line-2").on_rabbitmq().oauth2().wss().in_connector("factoryx")).await;
    apply_offer(&stack, offer("line-3").on_rabbitmq()).await;
    for asset in ["line-1", "line-2", "line-3"] {
        grant(&stack, transfer(asset, "consumer-a")).await;
    }
    grant(&stack, transfer("line-1", "consumer-b")).await;
    set_state(&stack, "line-1-consumer-b", TransferState::Suspended, TransferPhase::Suspended).await;

    // The inventory sees every kind of object before (else an empty one would prove nothing).
    let before = Inventory::take(&stack).await;
    for (backend, found) in [
        ("connectors", &before.connectors),
        ("Keycloak", &before.identity_provider),
        ("Vault", &before.secret_store),
        ("Mosquitto", &before.mosquitto),
        ("RabbitMQ", &before.rabbitmq),
        ("Kubernetes", &before.kubernetes),
    ] {
        assert!(!found.is_empty(), "the inventory finds nothing in {backend}: {before:#?}");
    }
    assert!(before.connectors.iter().any(|o| o.starts_with("factoryx:")), "{before:#?}");
    assert_eq!(before.kubernetes.len(), 4, "one Secret per transfer: {before:#?}");

    let transfers: Api<MqttTransfer> = stack.api();
    let assets: Api<MqttAsset> = stack.api();
    let (all, delete) = (ListParams::default(), DeleteParams::default());
    let (t, a) = tokio::join!(transfers.delete_collection(&delete, &all), assets.delete_collection(&delete, &all));
    t.expect("delete every MqttTransfer");
    a.expect("delete every MqttAsset");
    let (transfers, assets, all) = (&transfers, &assets, &all);
    until("every MqttTransfer and MqttAsset gone", WITHIN, || async move {
        transfers.list(all).await.unwrap().items.is_empty() && assets.list(all).await.unwrap().items.is_empty()
    })
    .await;
    // helm uninstall: the operator goes.
    stack.stop_controllers().await;

    let left = Inventory::take(&stack).await;
    let in_backends: Vec<String> = left.leftovers().into_iter().filter(|o| !o.starts_with("Kubernetes:")).collect();
    assert_eq!(in_backends, Vec::<String>::new(), "left behind in the backends");
    // The Secrets are the operator's to delete, and Kubernetes' garbage collector's (they are
    // owned by their transfers), which may take a moment on a real cluster.
    let stack_ref = &stack;
    until("no transfer Secret left", Duration::from_secs(10), || async move {
        let left = Inventory::take(stack_ref).await.kubernetes;
        if !left.is_empty() {
            eprintln!("waiting for: {left:?}");
        }
        left.is_empty()
    })
    .await;
    stack.teardown().await;
}
