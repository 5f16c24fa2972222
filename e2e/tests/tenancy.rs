//! Per-profile allowlists end to end: the real controllers with `allowed` blocks in the operator
//! configuration. A namespace a profile does not serve, and a topic outside the broker's
//! prefixes for the namespace, get `Ready=False` reason `NotAllowed` naming the rule and the
//! profile, and nothing in the connector, the secret store or the broker; what the rules allow is
//! provisioned as ever. (Each rule's edge cases: operator/src/plan/allowed.rs.)

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::stack::{DevStack, StackOptions, VAULT_FOLDER, condition, wait_for};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, PostParams};
use mqtt_dsp_operator::api::{MqttAsset, MqttTransfer};
use serde_json::json;

const WITHIN: Duration = Duration::from_secs(30);

fn asset(name: &str, connector: &str, topic: &str) -> MqttAsset {
    serde_json::from_value(json!({
        "apiVersion": "dsp-mqtt.io/v1alpha1",
        "kind": "MqttAsset",
        "metadata": {"name": name},
        "spec": {
            "connector": connector,
            "endpoint": {"type": "mqtt-wss"},
            "topics": [topic],
            "auth": {"mode": "usrpw"},
            "policy": {"access": {"participantIds": ["did:web:consumer-a.example.com"]}},
        },
    }))
    .expect("a valid MqttAsset")
}

fn ready(status: Option<&Vec<Condition>>) -> Option<(String, String, String)> {
    status.and_then(|c| condition(c, "Ready"))
}

/// Waits for `Ready=False` reason `NotAllowed` and gives its message.
async fn not_allowed(stack: &DevStack, name: &str) -> String {
    let api: Api<MqttAsset> = stack.api();
    let refused = wait_for(&api, name, WITHIN, "NotAllowed", |a| {
        ready(a.status.as_ref().map(|s| &s.conditions)).is_some_and(|(s, r, _)| s == "False" && r == "NotAllowed")
    })
    .await;
    ready(refused.status.as_ref().map(|s| &s.conditions)).unwrap().2
}

/// Nothing of asset `name` anywhere: connector (either), secret store, broker.
async fn nothing_provisioned(stack: &DevStack, name: &str) {
    let ns = &stack.namespace;
    let id = format!("{ns}-{name}");
    let user = format!("dsp-mqtt-{ns}-{name}");
    assert!(stack.edc.asset(&id).await.is_none(), "{name}: no asset in the stock connector");
    assert!(stack.edc.policy(&format!("{id}-access-policy")).await.is_none(), "{name}: no policy");
    assert!(stack.edc_fx.state.asset(&id).is_none(), "{name}: no asset in the reference connector");
    assert!(stack.edc_fx.state.policy(&format!("{id}-access-policy")).is_none(), "{name}: no policy");
    assert!(!stack.vault.holds(&format!("{VAULT_FOLDER}/{user}-secret")).await, "{name}: no secret (folder)");
    assert!(!stack.vault.holds(&format!("{user}-secret")).await, "{name}: no secret");
    assert!(stack.mosquitto.dynsec_client(&user).is_none(), "{name}: no Mosquitto user");
    assert!(stack.mosquitto.dynsec_role(&user).is_none(), "{name}: no Mosquitto role");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_or_topic_outside_the_profiles_rules_is_not_allowed_and_nothing_is_provisioned() {
    let allowed = BTreeMap::from([
        // The stock connector serves another team only.
        (
            "connectors.default".to_owned(),
            r#"{namespaces: [team-elsewhere], rawOdrl: true, openOffers: true}"#.to_owned(),
        ),
        // Mosquitto serves every namespace, each below its own prefix.
        ("brokers.default".to_owned(), r##"{namespaces: ["*"], topicPrefixes: ["tenants/{namespace}/#"]}"##.to_owned()),
    ]);
    let stack = DevStack::start(StackOptions { allowed, ..Default::default() }).await;
    let ns = stack.namespace.clone();
    let api: Api<MqttAsset> = stack.api();

    // A namespace the connector profile does not serve.
    let inside = format!("tenants/{ns}/line-1/#");
    api.create(&PostParams::default(), &asset("refused-namespace", "default", &inside)).await.unwrap();
    // A served namespace, a topic outside its prefix.
    api.create(&PostParams::default(), &asset("outside-prefix", "factoryx", "factory/line-1/#")).await.unwrap();
    // Within every rule: provisioned as ever.
    api.create(&PostParams::default(), &asset("inside", "factoryx", &inside)).await.unwrap();

    let message = not_allowed(&stack, "refused-namespace").await;
    assert!(
        message.starts_with(&format!(
            "connector profile \"default\" does not serve namespace \"{ns}\" (allowed.namespaces: [team-elsewhere])"
        )),
        "{message}"
    );
    let message = not_allowed(&stack, "outside-prefix").await;
    assert!(
        message.starts_with(&format!(
            "spec.topics[0] \"factory/line-1/#\" is not within the topic prefixes broker profile \"default\" allows namespace \"{ns}\" (allowed.topicPrefixes: [tenants/{ns}/#])"
        )),
        "{message}"
    );
    let ok = wait_for(&api, "inside", WITHIN, "Ready", |a| {
        ready(a.status.as_ref().map(|s| &s.conditions)).is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    assert!(ok.status.is_some());
    assert!(stack.edc_fx.state.asset(&format!("{ns}-inside")).is_some(), "the allowed asset is offered");
    assert!(stack.mosquitto.dynsec_client(&format!("dsp-mqtt-{ns}-inside")).is_some(), "and has its user");

    // A transfer of a refused asset is refused with it.
    let transfers: Api<MqttTransfer> = stack.api();
    let t: MqttTransfer = serde_json::from_value(json!({
        "apiVersion": "dsp-mqtt.io/v1alpha1",
        "kind": "MqttTransfer",
        "metadata": {"name": "t-outside"},
        "spec": {"assetRef": {"name": "outside-prefix"}, "consumer": {"participantId": "did:web:consumer-a.example.com"}},
    }))
    .unwrap();
    transfers.create(&PostParams::default(), &t).await.unwrap();
    let refused = wait_for(&transfers, "t-outside", WITHIN, "NotAllowed", |t| {
        ready(t.status.as_ref().map(|s| &s.conditions)).is_some_and(|(s, r, _)| s == "False" && r == "NotAllowed")
    })
    .await;
    let message = ready(refused.status.as_ref().map(|s| &s.conditions)).unwrap().2;
    assert!(message.contains("allowed.topicPrefixes"), "{message}");
    let consumer = format!("dsp-mqtt-transfer-{ns}-t-outside");
    assert!(stack.mosquitto.dynsec_client(&consumer).is_none(), "no consumer user");

    for name in ["refused-namespace", "outside-prefix"] {
        nothing_provisioned(&stack, name).await;
    }
    stack.teardown().await;
}
