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

/// Every external object of asset `asset` and transfer `transfer` in the stack's backends, by
/// name, as the backends store them (`None`: absent).
async fn objects(stack: &DevStack, assets: &[&str], transfers: &[&str]) -> BTreeMap<String, Option<String>> {
    let ns = &stack.namespace;
    let mut out = BTreeMap::new();
    for name in assets {
        let id = format!("{ns}-{name}");
        let user = format!("dsp-mqtt-{ns}-{name}");
        out.insert(format!("connector asset {id}"), stack.edc.asset(&id).await.map(|o| format!("{o:?}")));
        let policy = format!("{id}-access-policy");
        // Not the policy's `@id`: EDC 0.15 makes up a new one for every read.
        let stored = stack.edc.policy(&policy).await;
        let stored = stored.map(|o| format!("{:?}", (o.id, o.policy, o.private_properties, o.created_at)));
        out.insert(format!("connector policy {policy}"), stored);
        let cd = format!("{id}-contract-definition");
        let stored = stack.edc.contract_definition(&cd).await.map(|o| format!("{o:?}"));
        out.insert(format!("connector contract definition {cd}"), stored);
        let key = format!("{VAULT_FOLDER}/{user}-secret");
        out.insert(format!("secret {key}"), stack.vault.secret(&key).await.map(|o| format!("{o:?}")));
        out.insert(format!("Mosquitto user {user}"), stack.mosquitto.dynsec_client(&user).map(|o| o.to_string()));
        out.insert(format!("identity client {user}"), stack.keycloak.client(&user).await.map(|o| format!("{o:?}")));
    }
    for name in transfers {
        let user = format!("dsp-mqtt-transfer-{ns}-{name}");
        out.insert(format!("Mosquitto user {user}"), stack.mosquitto.dynsec_client(&user).map(|o| o.to_string()));
        out.insert(format!("Mosquitto role {user}"), stack.mosquitto.dynsec_role(&user).map(|o| o.to_string()));
        out.insert(format!("identity client {user}"), stack.keycloak.client(&user).await.map(|o| format!("{o:?}")));
    }
    out
}

/// The names of the objects that differ between two snapshots (values are not printed: they
/// hold passwords and client secrets).
fn changed(before: &BTreeMap<String, Option<String>>, after: &BTreeMap<String, Option<String>>) -> Vec<String> {
    before.iter().filter(|(k, v)| after.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect()
}

/// Two installations (say staging and production) on one cluster share one Mosquitto, one
/// Keycloak realm, one EDC and one Vault mount. Installation A provisions an offer and two
/// transfers (usrpw on Mosquitto, oauth2 on RabbitMQ with Keycloak). Installation B then sees the
/// same resources (same namespace and names, as a second cluster would): every object it meets is
/// A's, so B refuses with `Foreign`, changes nothing, and when the resources are deleted under B it
/// deletes nothing of A's. A, started again, finds everything as it left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_installation_sharing_the_backends_never_adopts_changes_or_deletes_the_firsts_objects() {
    let mut stack = DevStack::start(StackOptions { rabbitmq: true, ..Default::default() }).await;
    let ns = stack.namespace.clone();
    let assets: Api<MqttAsset> = stack.api();
    let transfers: Api<MqttTransfer> = stack.api();
    let mut usrpw = asset("line-1", "default", "factory/line-1/#");
    usrpw.spec.endpoint.endpoint_type = mqtt_dsp_operator::api::EndpointType::MqttTls;
    let mut oauth2 = asset("line-2", "default", "factory/line-2/#");
    oauth2.spec.broker = Some("rabbitmq".into());
    oauth2.spec.auth.mode = mqtt_dsp_operator::api::AuthMode::Oauth2;
    oauth2.spec.endpoint.endpoint_type = mqtt_dsp_operator::api::EndpointType::MqttTls;
    for a in [&usrpw, &oauth2] {
        assets.create(&PostParams::default(), a).await.unwrap();
    }
    for (t, a) in [("t-1", "line-1"), ("t-2", "line-2")] {
        let transfer: MqttTransfer = serde_json::from_value(json!({
            "apiVersion": "dsp-mqtt.io/v1alpha1",
            "kind": "MqttTransfer",
            "metadata": {"name": t},
            "spec": {"assetRef": {"name": a}, "consumer": {"participantId": "did:web:consumer-a.example.com"}},
        }))
        .unwrap();
        transfers.create(&PostParams::default(), &transfer).await.unwrap();
    }
    let is_ready = |c: Option<&Vec<Condition>>| ready(c).is_some_and(|(s, _, _)| s == "True");
    for name in ["line-1", "line-2"] {
        wait_for(&assets, name, WITHIN, "Ready", |a| is_ready(a.status.as_ref().map(|s| &s.conditions))).await;
    }
    for name in ["t-1", "t-2"] {
        wait_for(&transfers, name, WITHIN, "Ready", |t| is_ready(t.status.as_ref().map(|s| &s.conditions))).await;
    }
    let first = stack.config.installation().to_owned();
    let theirs = objects(&stack, &["line-1", "line-2"], &["t-1", "t-2"]).await;
    let present: Vec<&String> = theirs.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| k).collect();
    // Each asset: asset, policy, contract definition, secret, and its user (usrpw, Mosquitto) or
    // client (oauth2, Keycloak); the transfers: user and role (usrpw), client (oauth2).
    assert_eq!(present.len(), 13, "installation A's objects: {present:?}");

    // Installation B: same cluster, same backends, another installation name.
    stack.stop_controllers().await;
    stack.config.installation = "staging.mqtt-dsp-operator".into();
    stack.restart_controllers().await;
    let foreign = |c: Option<&Vec<Condition>>| ready(c).is_some_and(|(s, r, _)| s == "False" && r == "Foreign");
    for name in ["line-1", "line-2"] {
        let a = wait_for(&assets, name, WITHIN, "Foreign", |a| foreign(a.status.as_ref().map(|s| &s.conditions))).await;
        let message = ready(a.status.as_ref().map(|s| &s.conditions)).unwrap().2;
        assert!(message.contains("by another operator installation"), "{name}: {message}");
    }
    // Give B's transfers time to act on their assets' refusal, then compare.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = objects(&stack, &["line-1", "line-2"], &["t-1", "t-2"]).await;
    assert_eq!(changed(&theirs, &after), Vec::<String>::new(), "installation B changed A's objects");

    // Deleted under B: the finalizers go, A's objects stay.
    for name in ["t-1", "t-2"] {
        transfers.delete(name, &Default::default()).await.unwrap();
    }
    for name in ["line-1", "line-2"] {
        assets.delete(name, &Default::default()).await.unwrap();
    }
    for name in ["t-1", "t-2"] {
        e2e::stack::wait_gone(&transfers, name, WITHIN).await;
    }
    for name in ["line-1", "line-2"] {
        e2e::stack::wait_gone(&assets, name, WITHIN).await;
    }
    let after = objects(&stack, &["line-1", "line-2"], &["t-1", "t-2"]).await;
    assert_eq!(changed(&theirs, &after), Vec::<String>::new(), "installation B deleted or changed A's objects");
    eprintln!("installation B left all {} objects of installation A ({first}) untouched", present.len());

    // A's objects are A's to remove: the backends, as A, find and delete each one.
    let a_owner = |kind: &str, name: &str| mqtt_dsp_operator::backends::Owner {
        installation: first.clone(),
        ..stack.owner(kind, name)
    };
    let broker = &stack.backends.brokers["default"];
    for t in ["t-1"] {
        let user = format!("dsp-mqtt-transfer-{ns}-{t}");
        let removed = broker.remove_user(&user, &a_owner("MqttTransfer", t)).await.unwrap();
        assert_eq!(removed, mqtt_dsp_operator::backends::Outcome::Deleted, "{user} is A's");
    }
    let idp = &stack.backends.identity_providers["default"];
    let client = format!("dsp-mqtt-transfer-{ns}-t-2");
    let removed = idp.delete_client(&client, &a_owner("MqttTransfer", "t-2")).await.unwrap();
    assert_eq!(removed, mqtt_dsp_operator::backends::Outcome::Deleted, "{client} is A's");
    stack.teardown().await;
}

/// A transfer in a namespace the configuration does not serve (no Secret rights there, as the
/// chart leaves it) is refused, and deleting it — or its namespace — is not blocked by the
/// operator's cleanup finalizer: it cannot have written a Secret there, so a refused Secret read
/// means there is nothing of ours to remove.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_in_a_namespace_not_served_can_be_deleted() {
    let mut stack = DevStack::start(StackOptions::default()).await;
    let e2e::stack::Cluster::Local(plane) = stack.cluster else {
        eprintln!("skipped: needs the test control plane (KUBECONFIG points at another cluster)");
        return;
    };
    let namespace = plane.unserved_namespace("unserved").await;
    // The stack's controllers watch its namespace; these watch the unserved one.
    stack.stop_controllers().await;
    let mut settings = StackOptions::default().settings;
    settings.namespace = Some(namespace.clone());
    stack.start_controllers(settings);
    let transfers: Api<MqttTransfer> = Api::namespaced(stack.client.clone(), &namespace);
    let t: MqttTransfer = serde_json::from_value(json!({
        "apiVersion": "dsp-mqtt.io/v1alpha1",
        "kind": "MqttTransfer",
        "metadata": {"name": "t-unserved"},
        "spec": {"assetRef": {"name": "line-1"}, "consumer": {"participantId": "did:web:consumer-a.example.com"}},
    }))
    .unwrap();
    transfers.create(&PostParams::default(), &t).await.unwrap();
    // The operator takes it in hand (finalizer and status), then lets it go when deleted.
    wait_for(&transfers, "t-unserved", WITHIN, "a status", |t| t.status.is_some()).await;
    transfers.delete("t-unserved", &Default::default()).await.unwrap();
    e2e::stack::wait_gone(&transfers, "t-unserved", WITHIN).await;
    plane.delete_namespace(&namespace, WITHIN).await.expect("the namespace goes");
    stack.teardown().await;
}
