//! The MqttAsset controller end to end: the real controller against the Kubernetes API test
//! server (or the `KUBECONFIG` cluster), the EDC, Keycloak and Vault doubles and real
//! Mosquitto / RabbitMQ. Each test has its own stack and namespace.

use std::time::Duration;

use e2e::brokers::mosquitto::PUBLISHER_PASSWORD;
use e2e::consumer::Consumer;
use e2e::fixtures::consumer_options;
use e2e::stack::{
    DevStack, StackOptions, VAULT_FOLDER, condition, events_about, events_about_once, wait_for, wait_gone,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use mqtt_dsp_operator::api::MqttAsset;
use mqtt_dsp_operator::backends::{OWNER_KEY, OWNER_RESOURCE_KEY, Owner};
use serde_json::{Value, json};

const READY_WITHIN: Duration = Duration::from_secs(30);

fn asset(name: &str, spec: Value) -> MqttAsset {
    serde_json::from_value(json!({
        "apiVersion": "dsp-mqtt.io/v1alpha1",
        "kind": "MqttAsset",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("a valid MqttAsset")
}

fn usrpw_spec() -> Value {
    json!({
        "endpoint": {"type": "mqtt-tls"},
        "topics": ["factory/line-1/#"],
        "auth": {"mode": "usrpw"},
        "properties": {"name": "Line 1 telemetry"},
        "policy": {"access": {"participantIds": ["did:web:consumer-a.example.com"]}},
    })
}

fn is_ready(a: &MqttAsset) -> bool {
    let Some(status) = &a.status else { return false };
    status.observed_generation == a.metadata.generation
        && condition(&status.conditions, "Ready").is_some_and(|(s, _, _)| s == "True")
}

fn ready_reason(a: &MqttAsset) -> Option<(String, String, String)> {
    a.status.as_ref().and_then(|s| condition(&s.conditions, "Ready"))
}

fn owner(stack: &DevStack, name: &str) -> Owner {
    stack.owner("MqttAsset", name)
}

async fn create(stack: &DevStack, asset: &MqttAsset) -> MqttAsset {
    let api: Api<MqttAsset> = stack.api();
    api.create(&PostParams::default(), asset).await.expect("create MqttAsset");
    wait_for(&api, &asset.metadata.name.clone().unwrap(), READY_WITHIN, "Ready", is_ready).await
}

async fn merge(stack: &DevStack, name: &str, patch: Value) -> MqttAsset {
    let api: Api<MqttAsset> = stack.api();
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await.expect("patch MqttAsset")
}

/// The asset's password as the connector would resolve it from Vault.
async fn vault_password(stack: &DevStack, alias: &str) -> String {
    let secret = stack.vault.secret(&format!("{VAULT_FOLDER}/{alias}")).await.expect("secret in Vault");
    secret.content().expect("content").to_owned()
}

// ---------------------------------------------------------------------------------------------
// Create → Ready

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usrpw_asset_becomes_ready_with_every_object_shaped_as_the_domain_says() {
    let stack = DevStack::start(StackOptions::default()).await;
    let name = "line-1";
    let ready = create(&stack, &asset(name, usrpw_spec())).await;
    let ns = &stack.namespace;
    let asset_id = format!("{ns}-{name}");
    let user = format!("dsp-mqtt-{ns}-{name}");
    let alias = format!("dsp-mqtt-{ns}-{name}-secret");

    // Connector: asset with the Mqtt dataAddress (ADR spelling on this profile), literal keys.
    let stored = stack.edc.asset(&asset_id).await.expect("asset in the connector");
    let da = &stored.data_address;
    assert_eq!(da["type"], "Mqtt");
    assert_eq!(da["baseUrl"], stack.mosquitto.mqtts_url());
    assert_eq!(da["mqttEndpointType"], "mqtt-tls");
    assert_eq!(da["username"], user.as_str());
    assert_eq!(da["passwordAlias"], alias.as_str());
    assert_eq!(da["dsp-mqtt:topic"], "factory/line-1/#");
    assert!(da.keys().all(|k| !k.starts_with("http")), "JSON-LD keys must stay literal: {da:?}");
    assert_eq!(stored.properties["name"], "Line 1 telemetry");
    assert_eq!(stored.private_properties[OWNER_KEY], stack.owner("MqttAsset", name).managed_by());
    assert_eq!(stored.private_properties[OWNER_RESOURCE_KEY], format!("MqttAsset/{ns}/{name}"));
    let policy = stack.edc.policy(&format!("{asset_id}-access-policy")).await.expect("access policy");
    assert_eq!(policy.policy["permission"][0]["constraint"][0]["leftOperand"], "BusinessPartnerDID");
    assert_eq!(policy.policy["permission"][0]["constraint"][0]["rightOperand"], "did:web:consumer-a.example.com");
    let cd =
        stack.edc.contract_definition(&format!("{asset_id}-contract-definition")).await.expect("contract definition");
    assert_eq!(cd.access_policy_id, format!("{asset_id}-access-policy"));
    assert_eq!(cd.contract_policy_id, format!("{asset_id}-access-policy"));
    assert_eq!(cd.assets_selector[0].operand_right, json!(asset_id));

    // Secret store: the password under the alias the connector resolves, marked as ours.
    let secret = stack.vault.secret(&format!("{VAULT_FOLDER}/{alias}")).await.expect("secret in Vault");
    assert_eq!(secret.custom_metadata.get(OWNER_KEY), Some(&stack.owner("MqttAsset", name).managed_by()));
    let password = vault_password(&stack, &alias).await;
    e2e::logs::register_secret(&password);
    assert!(password.len() >= 22, "at least 128 bits of randomness");

    // Broker: a user with a role; it reads the asset's topics with the Vault password, nothing else.
    assert!(stack.mosquitto.dynsec_client(&user).is_some(), "Mosquitto user");
    assert!(stack.mosquitto.dynsec_role(&user).is_some(), "Mosquitto role");
    let mut consumer =
        Consumer::connect(&consumer_options(stack.mosquitto.mqtts_url(), &stack.ca.cert_pem(), &user, &password))
            .await
            .expect("the asset identity connects with the password from Vault");
    assert!(consumer.subscribe("factory/line-1/temperature").await);
    assert!(!consumer.subscribe("factory/line-2/temperature").await, "outside the asset's topics");
    let publisher = Consumer::connect(&consumer_options(
        stack.mosquitto.mqtts_url(),
        &stack.ca.cert_pem(),
        "publisher",
        PUBLISHER_PASSWORD,
    ))
    .await
    .unwrap();
    assert!(publisher.publish("factory/line-1/temperature", b"21.5").await);
    let (topic, _) = consumer.next_message(Duration::from_secs(3)).await.expect("a message on the asset's topic");
    assert_eq!(topic, "factory/line-1/temperature");

    // Status: refs, every condition True, observedGeneration, the non-secret dataAddress.
    let status = ready.status.clone().unwrap();
    for type_ in ["IdentityReady", "SecretReady", "BrokerReady", "ConnectorReady", "Ready"] {
        let (s, reason, _) = condition(&status.conditions, type_).unwrap_or_else(|| panic!("{type_} missing"));
        assert_eq!((s.as_str(), reason.as_str()), ("True", "Reconciled"), "{type_}");
    }
    assert_eq!(status.connector.as_ref().unwrap().asset_id.as_deref(), Some(asset_id.as_str()));
    assert_eq!(status.broker.as_ref().unwrap().user.as_deref(), Some(user.as_str()));
    assert_eq!(status.secret.as_ref().unwrap().alias.as_deref(), Some(alias.as_str()));
    let status_json = serde_json::to_string(&status).unwrap();
    assert!(!status_json.contains(&password), "no secret in status");
    assert!(ready.metadata.finalizers.as_ref().is_some_and(|f| f.contains(&"dsp-mqtt.io/cleanup".to_owned())));
    let reconciled = |e: &[(String, String, String)]| e.iter().any(|(t, r, _)| t == "Normal" && r == "Reconciled");
    let events = events_about_once(&stack, name, reconciled).await;
    assert!(reconciled(&events), "a Ready event: {events:?}");
    assert!(events.iter().all(|(_, _, note)| !note.contains(&password)), "no secret in events");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_connector_gets_its_spelling_and_lists_an_mqtt_pull_distribution() {
    let stack = DevStack::start(StackOptions::default()).await;
    let mut spec = usrpw_spec();
    spec["connector"] = json!("factoryx");
    spec["endpoint"] = json!({"type": "mqtt-wss"});
    create(&stack, &asset("line-1", spec)).await;
    let asset_id = format!("{}-line-1", stack.namespace);
    let stored = stack.edc_fx.state.asset(&asset_id).expect("asset in the factoryx connector");
    assert_eq!(stored.data_address["mqttEndpointType"], "mqtt-wss-basic");
    assert_eq!(stored.data_address["baseUrl"], stack.mosquitto.wss_url());
    assert!(stack.edc.asset(&asset_id).await.is_none(), "not in the other connector");

    // The DSP catalog a consumer's connector receives.
    let http = stack.http();
    let catalog: Value = http
        .post(format!("{}/v3/catalog/request", stack.edc_fx.management_url))
        .header("X-Api-Key", e2e::doubles::edc::API_KEY)
        .json(&json!({
            "@context": {"@vocab": "https://w3id.org/edc/v0.0.1/ns/"},
            "counterPartyAddress": format!("{}/api/dsp", stack.edc_fx.server.base_url),
            "protocol": "dataspace-protocol-http:2025-1",
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dataset = catalog["dataset"].as_array().unwrap().iter().find(|d| d["@id"] == json!(asset_id)).expect("dataset");
    let formats: Vec<&str> =
        dataset["distribution"].as_array().unwrap().iter().filter_map(|d| d["format"].as_str()).collect();
    assert!(formats.contains(&"Mqtt-PULL"), "{formats:?}");
    assert_eq!(
        dataset["hasPolicy"][0]["permission"][0]["constraint"][0]["rightOperand"],
        "did:web:consumer-a.example.com"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_asset_on_rabbitmq_gets_a_client_whose_tokens_open_the_broker() {
    let stack = DevStack::start(StackOptions { rabbitmq: true, ..Default::default() }).await;
    let spec = json!({
        "broker": "rabbitmq",
        "endpoint": {"type": "mqtt-tls"},
        "topics": ["factory/line-1/#"],
        "auth": {"mode": "oauth2"},
        "policy": {"access": {"participantIds": ["BPNL000000000001"]}},
    });
    let ready = create(&stack, &asset("line-1", spec)).await;
    let ns = &stack.namespace;
    let client_id = format!("dsp-mqtt-{ns}-line-1");
    let alias = format!("dsp-mqtt-{ns}-line-1-secret");

    let client = stack.keycloak.client(&client_id).await.expect("Keycloak client");
    assert!(client.service_accounts_enabled && !client.public_client);
    let secret = vault_password(&stack, &alias).await;
    assert_eq!(secret, client.secret, "Vault holds the client's secret under the alias");
    let da = stack.edc.asset(&format!("{ns}-line-1")).await.unwrap().data_address;
    assert_eq!(da["oauth2:clientId"], client_id.as_str());
    assert_eq!(da["oauth2:clientSecretKeyAlias"], alias.as_str());
    assert_eq!(da["oauth2:tokenUrl"], stack.keycloak.token_url());
    assert!(!da.contains_key("username"));
    assert_eq!(
        ready.status.as_ref().unwrap().identity.as_ref().unwrap().client_id.as_deref(),
        Some(client_id.as_str())
    );

    // What the connector does on transfer start: client_credentials with the secret from Vault;
    // the JWT then opens RabbitMQ for the asset's topics only.
    let http = stack.http();
    let token: Value = http
        .post(stack.keycloak.token_url())
        .form(&[("grant_type", "client_credentials"), ("client_id", &client_id), ("client_secret", &secret)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwt = token["access_token"].as_str().expect("access token").to_owned();
    e2e::logs::register_secret(&jwt);
    let rabbit = stack.rabbitmq.as_ref().unwrap();
    let mut consumer = Consumer::connect(&consumer_options(rabbit.mqtts_url(), &stack.ca.cert_pem(), "ignored", &jwt))
        .await
        .expect("the JWT opens RabbitMQ");
    assert!(consumer.subscribe("factory/line-1/temperature").await, "asset topic granted");
    stack.teardown().await;
}

// ---------------------------------------------------------------------------------------------
// Updates, drift, resync

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_reaches_the_connector_only_and_a_topic_change_the_broker_and_the_asset() {
    let stack = DevStack::start(StackOptions::default()).await;
    create(&stack, &asset("line-1", usrpw_spec())).await;
    let asset_id = format!("{}-line-1", stack.namespace);
    let user = format!("dsp-mqtt-{}-line-1", stack.namespace);
    stack.edc.server.log.clear();
    stack.vault.server.log.clear();
    let broker_saved = stack.mosquitto.dynsec_saved_at();

    let updated = merge(
        &stack,
        "line-1",
        json!({"spec": {"policy": {"access": {"participantIds": ["did:web:consumer-b.example.com"]}}}}),
    )
    .await;
    let generation = updated.metadata.generation;
    let api: Api<MqttAsset> = stack.api();
    wait_for(&api, "line-1", READY_WITHIN, "Ready at the new generation", |a| {
        is_ready(a) && a.status.as_ref().unwrap().observed_generation == generation
    })
    .await;
    let policy = stack.edc.policy(&format!("{asset_id}-access-policy")).await.unwrap();
    assert_eq!(policy.policy["permission"][0]["constraint"][0]["rightOperand"], "did:web:consumer-b.example.com");
    let writes: Vec<_> = stack.edc.server.log.matching(|r| r.is_mutating());
    assert_eq!(writes.len(), 1, "one policy update: {writes:?}");
    assert!(writes[0].path.contains("/v3/policydefinitions/"), "{writes:?}");
    assert!(stack.vault.server.log.matching(|r| r.is_mutating()).is_empty(), "Vault untouched");
    assert_eq!(stack.mosquitto.dynsec_saved_at(), broker_saved, "Mosquitto untouched");

    stack.edc.server.log.clear();
    merge(&stack, "line-1", json!({"spec": {"topics": ["factory/line-1/#", "factory/line-9/#"]}})).await;
    wait_for(&api, "line-1", READY_WITHIN, "Ready with two topics", |a| {
        is_ready(a) && a.status.as_ref().unwrap().observed_generation > generation
    })
    .await;
    let role = stack.mosquitto.dynsec_role(&user).unwrap().to_string();
    assert!(role.contains("factory/line-9/#"), "broker role widened: {role}");
    let da = stack.edc.asset(&asset_id).await.unwrap().data_address;
    assert!(!da.contains_key("dsp-mqtt:topic"), "two topics: no single-topic key");
    let writes: Vec<_> = stack.edc.server.log.matching(|r| r.is_mutating());
    assert!(writes.iter().all(|w| w.path.ends_with("/v3/assets")), "only the asset changes: {writes:?}");
    assert!(stack.vault.server.log.matching(|r| r.is_mutating()).is_empty(), "Vault still untouched");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_with_nothing_changed_writes_nothing_anywhere() {
    let mut options = StackOptions::default();
    options.settings.resync = Duration::from_millis(500);
    let stack = DevStack::start(options).await;
    create(&stack, &asset("line-1", usrpw_spec())).await;
    // Let the reconcile triggered by our own status write pass.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let api: Api<MqttAsset> = stack.api();
    let before = api.get("line-1").await.unwrap();
    let reconciles_before = reconcile_count(&stack);
    stack.edc.server.log.clear();
    stack.vault.server.log.clear();
    stack.keycloak.server.log.clear();
    let broker_saved = stack.mosquitto.dynsec_saved_at();
    let writes_before = stack.metrics.backend_write_total();
    let kubernetes_before = stack.kubernetes_state().await;

    tokio::time::sleep(Duration::from_secs(3)).await;

    assert!(reconcile_count(&stack) >= reconciles_before + 3, "resyncs happened");
    assert!(!stack.edc.server.log.all().is_empty(), "the resync did look at the connector");
    assert_eq!(stack.edc.server.log.matching(|r| r.is_mutating()), vec![], "connector writes");
    assert_eq!(stack.vault.server.log.matching(|r| r.is_mutating()), vec![], "Vault writes");
    assert_eq!(stack.keycloak.server.log.matching(|r| r.is_mutating()), vec![], "Keycloak writes");
    assert_eq!(stack.mosquitto.dynsec_saved_at(), broker_saved, "Mosquitto writes");
    assert_eq!(stack.metrics.backend_write_total(), writes_before);
    let after = api.get("line-1").await.unwrap();
    assert_eq!(after.metadata.resource_version, before.metadata.resource_version, "no status write");
    assert_eq!(stack.kubernetes_state().await, kubernetes_before, "no Kubernetes writes (Events included)");
    stack.teardown().await;
}

fn reconcile_count(stack: &DevStack) -> u64 {
    let text = stack.metrics.encode().unwrap();
    text.lines()
        .filter(|l| l.starts_with("mqtt_dsp_operator_reconciles_total{") && l.contains("kind=\"MqttAsset\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_in_connector_secret_store_and_broker_is_repaired_on_resync() {
    let mut options = StackOptions::default();
    options.settings.resync = Duration::from_millis(500);
    let stack = DevStack::start(options).await;
    create(&stack, &asset("line-1", usrpw_spec())).await;
    let ns = stack.namespace.clone();
    let asset_id = format!("{ns}-line-1");
    let user = format!("dsp-mqtt-{ns}-line-1");
    let alias = format!("dsp-mqtt-{ns}-line-1-secret");
    let owner = owner(&stack, "line-1");
    let connector = &stack.backends.connectors["default"];

    // Connector: contract definition and asset deleted, the policy altered.
    connector.delete_contract_definition(&format!("{asset_id}-contract-definition"), &owner).await.unwrap();
    let intruder = json!({
        "@context": "http://www.w3.org/ns/odrl.jsonld",
        "@type": "Set",
        "permission": [{"action": "use", "constraint": [
            {"leftOperand": "BusinessPartnerDID", "operator": "eq", "rightOperand": "did:web:intruder.example.com"}
        ]}]
    });
    let policy_id = format!("{asset_id}-access-policy");
    connector
        .ensure_policy(&mqtt_dsp_operator::backends::connector::PolicyDefinition {
            id: policy_id.clone(),
            policy: intruder,
            owner: owner.clone(),
        })
        .await
        .unwrap();
    connector.delete_asset(&asset_id, &owner).await.unwrap();
    eventually("connector repaired", async || {
        stack.edc.asset(&asset_id).await.is_some()
            && stack.edc.contract_definition(&format!("{asset_id}-contract-definition")).await.is_some()
            && stack.edc.policy(&format!("{asset_id}-access-policy")).await.unwrap().policy["permission"][0]["constraint"][0]
                ["rightOperand"]
                == "did:web:consumer-a.example.com"
    })
    .await;

    // Secret store: the password deleted → a new one, in Vault and in the broker.
    let old_password = vault_password(&stack, &alias).await;
    let at = mqtt_dsp_operator::backends::secrets::SecretLocation {
        folder: Some(VAULT_FOLDER.into()),
        alias: alias.clone(),
    };
    stack.backends.secret_stores["default"].delete_secret(&at, &owner).await.unwrap();
    eventually("Vault repaired", async || {
        stack.vault.secret(&format!("{VAULT_FOLDER}/{alias}")).await.is_some_and(|s| s.content().is_some())
    })
    .await;
    let new_password = vault_password(&stack, &alias).await;
    e2e::logs::register_secret(&old_password);
    e2e::logs::register_secret(&new_password);
    assert!(new_password != old_password, "a new password");
    let connect = |password: String| {
        let options = consumer_options(stack.mosquitto.mqtts_url(), &stack.ca.cert_pem(), &user, &password);
        async move { Consumer::connect(&options).await }
    };
    // The broker step follows the secret step: give it its turn.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while connect(new_password.clone()).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the broker user did not get the new password");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(connect(old_password).await.is_err(), "the lost password no longer works");

    // Broker: the user deleted → recreated with the password from Vault.
    stack.backends.brokers["default"].remove_user(&user, &owner).await.unwrap();
    assert!(stack.mosquitto.dynsec_client(&user).is_none());
    eventually("Mosquitto repaired", async || stack.mosquitto.dynsec_client(&user).is_some()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // Created with the password the connector resolves (its role follows right after).
    while connect(new_password.clone()).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the recreated user does not take the password from Vault");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_and_rabbitmq_drift_is_repaired_and_vault_follows_a_new_client_secret() {
    let mut options = StackOptions { rabbitmq: true, ..Default::default() };
    options.settings.resync = Duration::from_millis(500);
    let stack = DevStack::start(options).await;
    let spec = json!({
        "broker": "rabbitmq",
        "endpoint": {"type": "mqtt-wss"},
        "topics": ["factory/line-1/#"],
        "auth": {"mode": "oauth2"},
        "policy": {"access": {"participantIds": ["BPNL000000000001"]}},
    });
    create(&stack, &asset("line-1", spec)).await;
    let client_id = format!("dsp-mqtt-{}-line-1", stack.namespace);
    let alias = format!("dsp-mqtt-{}-line-1-secret", stack.namespace);
    let old_secret = stack.keycloak.client(&client_id).await.unwrap().secret;
    stack.backends.identity_providers["default"].delete_client(&client_id, &owner(&stack, "line-1")).await.unwrap();
    eventually("client recreated", async || stack.keycloak.client(&client_id).await.is_some()).await;
    let new_secret = stack.keycloak.client(&client_id).await.unwrap().secret;
    assert_ne!(new_secret, old_secret);
    eventually("Vault follows", async || vault_password(&stack, &alias).await == new_secret).await;

    // RabbitMQ: a usrpw asset's user deleted behind our back is recreated.
    let mut usrpw = usrpw_spec();
    usrpw["broker"] = json!("rabbitmq");
    create(&stack, &asset("line-2", usrpw)).await;
    let rabbit_user = format!("dsp-mqtt-{}-line-2", stack.namespace);
    let removed = stack.backends.brokers["rabbitmq"].remove_user(&rabbit_user, &owner(&stack, "line-2")).await.unwrap();
    assert_eq!(removed, mqtt_dsp_operator::backends::Outcome::Deleted);
    let rabbit = stack.rabbitmq.as_ref().unwrap();
    let password = vault_password(&stack, &format!("dsp-mqtt-{}-line-2-secret", stack.namespace)).await;
    e2e::logs::register_secret(&password);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let options = consumer_options(rabbit.mqtts_url(), &stack.ca.cert_pem(), &rabbit_user, &password);
        if Consumer::connect(&options).await.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "RabbitMQ user not recreated");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A mapper removed behind our back comes back too.
    let mappers = stack.keycloak.client(&client_id).await.unwrap().protocol_mappers.len();
    assert!(mappers >= 1);
    stack.keycloak.edit_client(&client_id, |c| c.protocol_mappers.clear()).await;
    eventually("mappers restored", async || {
        stack.keycloak.client(&client_id).await.unwrap().protocol_mappers.len() == mappers
    })
    .await;
    stack.teardown().await;
}

async fn eventually(what: &str, check: impl AsyncFn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Deletion

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_every_external_object_then_the_resource() {
    let stack = DevStack::start(StackOptions::default()).await;
    create(&stack, &asset("line-1", usrpw_spec())).await;
    let ns = stack.namespace.clone();
    let api: Api<MqttAsset> = stack.api();
    stack.edc.server.log.clear();
    api.delete("line-1", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "line-1", READY_WITHIN).await;

    assert!(stack.edc.assets().await.is_empty(), "asset removed");
    assert!(stack.edc.policies().await.is_empty(), "policies removed");
    assert!(stack.edc.contract_definitions().await.is_empty(), "contract definition removed");
    assert!(
        stack.vault.secret(&format!("{VAULT_FOLDER}/dsp-mqtt-{ns}-line-1-secret")).await.is_none(),
        "secret removed"
    );
    assert!(stack.mosquitto.dynsec_client(&format!("dsp-mqtt-{ns}-line-1")).is_none(), "broker user removed");
    assert!(stack.mosquitto.dynsec_role(&format!("dsp-mqtt-{ns}-line-1")).is_none(), "broker role removed");
    // Safe order in the connector: contract definition, then policy, then asset.
    let deletes: Vec<String> = stack
        .edc
        .server
        .log
        .matching(|r| r.method == "DELETE" && r.status == 204)
        .into_iter()
        .map(|r| r.path)
        .collect();
    let position =
        |part: &str| deletes.iter().position(|p| p.contains(part)).unwrap_or_else(|| panic!("{part} in {deletes:?}"));
    assert!(position("contractdefinitions") < position("policydefinitions"));
    assert!(position("policydefinitions") < position("/v3/assets/"));
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_leaves_every_external_object_and_releases_the_resource() {
    let stack = DevStack::start(StackOptions::default()).await;
    let mut spec = usrpw_spec();
    spec["deletionPolicy"] = json!("Retain");
    create(&stack, &asset("line-1", spec)).await;
    let ns = stack.namespace.clone();
    let api: Api<MqttAsset> = stack.api();
    api.delete("line-1", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "line-1", READY_WITHIN).await;
    assert!(stack.edc.asset(&format!("{ns}-line-1")).await.is_some());
    assert_eq!(stack.edc.policies().await.len(), 1);
    assert_eq!(stack.edc.contract_definitions().await.len(), 1);
    assert!(stack.vault.secret(&format!("{VAULT_FOLDER}/dsp-mqtt-{ns}-line-1-secret")).await.is_some());
    assert!(stack.mosquitto.dynsec_client(&format!("dsp-mqtt-{ns}-line-1")).is_some());
    let retained = |e: &[(String, String, String)]| e.iter().any(|(_, r, _)| r == "Retained");
    let events = events_about_once(&stack, "line-1", retained).await;
    assert!(retained(&events), "{events:?}");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asset_under_contract_does_not_wedge_deletion() {
    let stack = DevStack::start(StackOptions::default()).await;
    create(&stack, &asset("line-1", usrpw_spec())).await;
    let ns = stack.namespace.clone();
    let asset_id = format!("{ns}-line-1");
    stack.edc.add_agreement(&asset_id).await;
    let api: Api<MqttAsset> = stack.api();
    api.delete("line-1", &DeleteParams::default()).await.unwrap();

    // The refusal is reported while attempts remain…
    let blocked = wait_for(&api, "line-1", READY_WITHIN, "reporting the refusal", |a| {
        ready_reason(a).is_some_and(|(s, r, _)| s == "False" && r == "InUse")
    })
    .await;
    let (_, _, message) = ready_reason(&blocked).unwrap();
    assert!(message.contains(&format!("asset {asset_id}")) && message.contains("left in place"), "{message}");
    // …then the resource goes, the asset stays (agreements need it), everything else is removed.
    wait_gone(&api, "line-1", READY_WITHIN).await;
    assert!(stack.edc.asset(&asset_id).await.is_some(), "the connector keeps an asset under contract");
    assert!(stack.edc.contract_definitions().await.is_empty(), "no longer offered");
    assert!(stack.edc.policies().await.is_empty());
    assert!(stack.mosquitto.dynsec_client(&format!("dsp-mqtt-{ns}-line-1")).is_none());
    let events = events_about(&stack, "line-1").await;
    assert!(events.iter().any(|(t, r, _)| t == "Warning" && r == "InUse"), "{events:?}");
    assert!(
        events.iter().any(|(_, r, note)| r == "CleanupAbandoned" && note.contains(&asset_id)),
        "an Event names what is left: {events:?}"
    );
    stack.teardown().await;
}

// ---------------------------------------------------------------------------------------------
// Bad input

async fn expect_not_ready(stack: &DevStack, name: &str, reason: &str) -> (String, String, String) {
    let api: Api<MqttAsset> = stack.api();
    let a = wait_for(&api, name, READY_WITHIN, &format!("Ready=False/{reason}"), |a| {
        a.status.as_ref().is_some_and(|s| s.observed_generation == a.metadata.generation)
            && ready_reason(a).is_some_and(|(s, r, _)| s == "False" && r == reason)
    })
    .await;
    ready_reason(&a).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_stable_reason_and_keeps_what_was_provisioned() {
    let stack = DevStack::start(StackOptions::default()).await;
    create(&stack, &asset("line-1", usrpw_spec())).await;
    let ns = stack.namespace.clone();
    let asset_id = format!("{ns}-line-1");
    let user = format!("dsp-mqtt-{ns}-line-1");

    // An unknown profile.
    merge(&stack, "line-1", json!({"spec": {"connector": "nope"}})).await;
    let (_, _, message) = expect_not_ready(&stack, "line-1", "UnknownProfile").await;
    assert!(message.contains("spec.connector") && message.contains("defined: default, factoryx"), "{message}");
    // A mode the broker cannot do.
    merge(&stack, "line-1", json!({"spec": {"connector": null, "auth": {"mode": "oauth2"}}})).await;
    let (_, _, message) = expect_not_ready(&stack, "line-1", "AuthModeUnsupported").await;
    assert!(message.contains("spec.auth.mode"), "{message}");
    // A topic the broker refuses (Mosquitto cannot grant filters with %).
    merge(&stack, "line-1", json!({"spec": {"auth": {"mode": "usrpw"}, "topics": ["factory/%u/#"]}})).await;
    let api: Api<MqttAsset> = stack.api();
    let (_, _, message) = expect_not_ready(&stack, "line-1", "Rejected").await;
    assert!(message.starts_with("broker:"), "{message}");
    let a = api.get("line-1").await.unwrap();
    let broker = condition(&a.status.as_ref().unwrap().conditions, "BrokerReady").unwrap();
    assert_eq!((broker.0.as_str(), broker.1.as_str()), ("False", "Rejected"));
    let connector = condition(&a.status.as_ref().unwrap().conditions, "ConnectorReady").unwrap();
    assert_eq!(connector.1, "Blocked");
    // A reserved private property.
    merge(
        &stack,
        "line-1",
        json!({"spec": {"topics": ["factory/line-1/#"], "privateProperties": {"dsp-mqtt.io/owner": "me"}}}),
    )
    .await;
    expect_not_ready(&stack, "line-1", "ReservedProperty").await;

    // Nothing provisioned before was lost on the way.
    assert!(stack.edc.asset(&asset_id).await.is_some());
    assert!(stack.mosquitto.dynsec_client(&user).is_some());
    assert!(stack.vault.secret(&format!("{VAULT_FOLDER}/dsp-mqtt-{ns}-line-1-secret")).await.is_some());
    // The Event follows the status write: give the last one a moment.
    let wanted = ["UnknownProfile", "AuthModeUnsupported", "Rejected", "ReservedProperty"];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let events = loop {
        let events = events_about(&stack, "line-1").await;
        let all = wanted.iter().all(|w| events.iter().any(|(t, r, _)| t == "Warning" && r == w));
        if all || tokio::time::Instant::now() >= deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for reason in wanted {
        assert!(events.iter().any(|(t, r, _)| t == "Warning" && r == reason), "{reason} Event: {events:?}");
    }

    // Fixing the spec makes it Ready again.
    merge(&stack, "line-1", json!({"spec": {"privateProperties": null}})).await;
    wait_for(&api, "line-1", READY_WITHIN, "Ready again", is_ready).await;
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_that_rejects_the_asset_is_named_in_the_condition() {
    let stack = DevStack::start(StackOptions::default()).await;
    let mut spec = usrpw_spec();
    // The reference connector refuses the ADR spelling: a misconfigured profile.
    spec["connector"] = json!("factoryx-misconfigured");
    let api: Api<MqttAsset> = stack.api();
    api.create(&PostParams::default(), &asset("line-1", spec)).await.unwrap();
    let (_, _, message) = expect_not_ready(&stack, "line-1", "Rejected").await;
    assert!(message.starts_with("connector:") && message.contains("mqttEndpointType"), "{message}");
    let a = api.get("line-1").await.unwrap();
    let connector = condition(&a.status.as_ref().unwrap().conditions, "ConnectorReady").unwrap();
    assert_eq!((connector.0.as_str(), connector.1.as_str()), ("False", "Rejected"));
    // Earlier steps succeeded and are kept.
    assert!(condition(&a.status.as_ref().unwrap().conditions, "BrokerReady").is_some_and(|c| c.0 == "True"));

    // Deleting a resource that never became ready still cleans up what it did create.
    api.delete("line-1", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "line-1", READY_WITHIN).await;
    assert!(stack.mosquitto.dynsec_client(&format!("dsp-mqtt-{}-line-1", stack.namespace)).is_none());
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_operator_restart_nothing_is_rewritten_and_changes_are_reconciled() {
    let mut stack = DevStack::start(StackOptions::default()).await;
    create(&stack, &asset("line-1", usrpw_spec())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let api: Api<MqttAsset> = stack.api();
    let before = api.get("line-1").await.unwrap();
    stack.edc.server.log.clear();
    stack.vault.server.log.clear();
    stack.restart_controllers().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!stack.edc.server.log.all().is_empty(), "the restarted controller looked at the connector");
    assert_eq!(stack.edc.server.log.matching(|r| r.is_mutating()), vec![], "and wrote nothing");
    assert_eq!(stack.vault.server.log.matching(|r| r.is_mutating()), vec![]);
    assert_eq!(api.get("line-1").await.unwrap().metadata.resource_version, before.metadata.resource_version);
    let generation =
        merge(&stack, "line-1", json!({"spec": {"properties": {"name": "renamed"}}})).await.metadata.generation;
    wait_for(&api, "line-1", READY_WITHIN, "the change reconciled", |a| {
        is_ready(a) && a.status.as_ref().unwrap().observed_generation == generation
    })
    .await;
    assert_eq!(stack.edc.asset(&format!("{}-line-1", stack.namespace)).await.unwrap().properties["name"], "renamed");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_asset_is_left_alone_until_the_annotation_goes() {
    let stack = DevStack::start(StackOptions::default()).await;
    create(&stack, &asset("line-1", usrpw_spec())).await;
    let api: Api<MqttAsset> = stack.api();
    merge(&stack, "line-1", json!({"metadata": {"annotations": {"dsp-mqtt.io/paused": "true"}}})).await;
    wait_for(&api, "line-1", READY_WITHIN, "Paused", |a| {
        a.status.as_ref().and_then(|s| condition(&s.conditions, "Paused")).is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    stack.edc.server.log.clear();
    let generation =
        merge(&stack, "line-1", json!({"spec": {"properties": {"name": "while paused"}}})).await.metadata.generation;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(stack.edc.server.log.all().is_empty(), "a paused asset is not reconciled");
    let asset_id = format!("{}-line-1", stack.namespace);
    assert_ne!(stack.edc.asset(&asset_id).await.unwrap().properties["name"], "while paused");

    merge(&stack, "line-1", json!({"metadata": {"annotations": {"dsp-mqtt.io/paused": null}}})).await;
    let resumed = wait_for(&api, "line-1", READY_WITHIN, "reconciled after the pause", |a| {
        is_ready(a) && a.status.as_ref().unwrap().observed_generation == generation
    })
    .await;
    assert!(condition(&resumed.status.unwrap().conditions, "Paused").is_none());
    assert_eq!(stack.edc.asset(&asset_id).await.unwrap().properties["name"], "while paused");
    let both = |events: &[(String, String, String)]| {
        events.iter().any(|(_, r, _)| r == "Paused") && events.iter().any(|(_, r, _)| r == "Resumed")
    };
    let events = events_about_once(&stack, "line-1", both).await;
    assert!(both(&events), "{events:?}");
    stack.teardown().await;
}

// ---------------------------------------------------------------------------------------------
// Reconcile on request

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconcile_request_annotation_repairs_drift_now_and_is_recorded_in_status() {
    // The resync is far away (5 min): only the annotation can bring the repair.
    let stack = DevStack::start(StackOptions::default()).await;
    create(&stack, &asset("line-1", usrpw_spec())).await;
    let asset_id = format!("{}-line-1", stack.namespace);
    // The reconcile that follows the controller's own status write passes first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.backends.connectors["default"].delete_asset(&asset_id, &owner(&stack, "line-1")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(stack.edc.asset(&asset_id).await.is_none(), "nothing repairs the drift before the resync");

    let requested_at = "2026-11-28T05:00:00Z";
    merge(&stack, "line-1", json!({"metadata": {"annotations": {"dsp-mqtt.io/reconcile-requested-at": requested_at}}}))
        .await;
    let api: Api<MqttAsset> = stack.api();
    let handled = wait_for(&api, "line-1", Duration::from_secs(10), "request handled", |a| {
        a.status.as_ref().and_then(|s| s.last_handled_reconcile_at.as_deref()) == Some(requested_at)
    })
    .await;
    assert!(stack.edc.asset(&asset_id).await.is_some(), "the connector asset is back");
    assert!(is_ready(&handled));

    // The backend calls are measured per system, operation and outcome: the connector answered
    // the asset's lookup with 404 and its re-creation with 200.
    let metrics = stack.metrics.encode().unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("mqtt_dsp_operator_backend_request_seconds_count{system=\"connector\"")
            && l.contains("outcome=\"404\"")),
        "{metrics}"
    );

    // The same value again asks for nothing: no status write.
    let version = handled.metadata.resource_version.clone();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(api.get("line-1").await.unwrap().metadata.resource_version, version);
    stack.teardown().await;
}

// ---------------------------------------------------------------------------------------------
// A profile removed from the configuration

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_in_a_profile_removed_from_the_configuration_are_left_in_place_with_an_event() {
    let mut stack = DevStack::start(StackOptions::default()).await;
    let mut spec = usrpw_spec();
    spec["connector"] = json!("factoryx");
    create(&stack, &asset("line-1", spec)).await;
    let asset_id = format!("{}-line-1", stack.namespace);
    assert!(stack.edc_fx.state.asset(&asset_id).is_some());

    // The operator restarts with a configuration without the `factoryx` connector, and the
    // asset moves to the default one.
    stack.stop_controllers().await;
    stack.config.connectors.remove("factoryx");
    let backends = mqtt_dsp_operator::backends::registry::Backends {
        connectors: stack
            .backends
            .connectors
            .iter()
            .filter(|(k, _)| *k != "factoryx")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        identity_providers: stack.backends.identity_providers.clone(),
        secret_stores: stack.backends.secret_stores.clone(),
        brokers: stack.backends.brokers.clone(),
    };
    stack.backends = std::sync::Arc::new(backends);
    let mut settings = StackOptions::default().settings;
    settings.namespace = Some(stack.namespace.clone());
    stack.start_controllers(settings);
    let moved = merge(&stack, "line-1", json!({"spec": {"connector": "default"}})).await;
    let api: Api<MqttAsset> = stack.api();
    wait_for(&api, "line-1", READY_WITHIN, "Ready on the default connector", |a| {
        is_ready(a) && a.metadata.generation == moved.metadata.generation
    })
    .await;

    assert!(stack.edc.asset(&asset_id).await.is_some(), "offered by the default connector");
    assert!(
        stack.edc_fx.state.asset(&asset_id).is_some(),
        "left in place in the connector the operator no longer knows"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let events = events_about(&stack, "line-1").await;
        if let Some((type_, _, note)) = events.iter().find(|(_, reason, _)| reason == "ProfileRemoved") {
            assert_eq!(type_, "Warning");
            assert!(note.contains("connectors.factoryx") && note.contains("left in place"), "{note}");
            assert!(note.contains(&format!("connector asset {asset_id}")), "the Event names the offer: {note}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no ProfileRemoved Event: {events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.teardown().await;
}

// ---------------------------------------------------------------------------------------------
// Concurrency bound

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_reconciles_run_at_once_than_the_bound() {
    // A slow Vault keeps each reconcile in flight long enough for the others to pile up behind
    // it: with a bound of 2, Vault never sees more than 2 requests at once (a reconcile calls it
    // one request at a time), however many assets wait.
    let mut options = StackOptions::default();
    options.settings.max_concurrent_reconciles = 2;
    let stack = DevStack::start(options).await;
    stack.vault.server.faults.set_latency(Duration::from_millis(150));
    let api: Api<MqttAsset> = stack.api();
    let names: Vec<String> = (1..=6).map(|i| format!("line-{i}")).collect();
    for name in &names {
        api.create(&PostParams::default(), &asset(name, usrpw_spec())).await.expect("create MqttAsset");
    }
    for name in &names {
        wait_for(&api, name, READY_WITHIN, "Ready", is_ready).await;
    }
    assert_eq!(
        stack.vault.server.faults.max_in_flight(),
        2,
        "6 assets created at once, at most 2 reconciles at a time: Vault should have been answering exactly 2 at its busiest"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asset_of_a_connector_the_operator_becomes_the_data_plane_of_drops_its_own_identity_and_back() {
    // With the operator as the connector's data plane (issue 15), every transfer gets its own
    // identity and the connector never resolves the asset's: the asset's broker user and Vault
    // secret are removed by the converge step, its connector dataAddress is the source only;
    // leaving that mode makes them again.
    let mut stack = DevStack::start(StackOptions::default()).await;
    let name = "line-1";
    create(&stack, &asset(name, usrpw_spec())).await;
    let ns = stack.namespace.clone();
    let (asset_id, user) = (format!("{ns}-{name}"), format!("dsp-mqtt-{ns}-{name}"));
    let key = format!("{VAULT_FOLDER}/dsp-mqtt-{ns}-{name}-secret");
    assert!(stack.mosquitto.dynsec_client(&user).is_some() && stack.vault.secret(&key).await.is_some());

    stack.stop_controllers().await;
    let data_plane = "listen: 127.0.0.1:0\npublicUrl: https://operator.example.com:8643\n\
                      tls: {certificate: {file: /unused.crt}, key: {file: /unused.key}}\ntoken: {env: UNUSED}\n\
                      registrations:\n  default: {controlUrl: \"https://edc.example.com:9191/control\"}\n";
    stack.config.data_plane = Some(serde_yaml::from_str(data_plane).unwrap());
    stack.restart_controllers().await;
    let api: Api<MqttAsset> = stack.api();
    let without = wait_for(&api, name, READY_WITHIN, "without an identity of its own", |a| {
        is_ready(a) && a.status.as_ref().is_some_and(|s| s.secret.is_none())
    })
    .await;
    let status = without.status.unwrap();
    assert!(status.identity.is_none() && status.broker.is_some_and(|b| b.user.is_none()));
    assert!(stack.mosquitto.dynsec_client(&user).is_none(), "the asset's broker user is gone");
    assert!(stack.mosquitto.dynsec_role(&user).is_none(), "and its role");
    assert!(stack.vault.secret(&key).await.is_none(), "the asset's Vault secret is gone");
    let da = stack.edc.asset(&asset_id).await.expect("still offered").data_address;
    assert!(!da.contains_key("username") && !da.contains_key("passwordAlias"), "the source address only: {da:?}");
    assert_eq!(da["baseUrl"], stack.mosquitto.mqtts_url());

    stack.stop_controllers().await;
    stack.config.data_plane = None;
    stack.restart_controllers().await;
    wait_for(&api, name, READY_WITHIN, "its identity again", |a| {
        is_ready(a) && a.status.as_ref().is_some_and(|s| s.secret.is_some())
    })
    .await;
    assert!(stack.mosquitto.dynsec_client(&user).is_some() && stack.vault.secret(&key).await.is_some());
    let password = vault_password(&stack, &format!("dsp-mqtt-{ns}-{name}-secret")).await;
    e2e::logs::register_secret(&password);
    Consumer::connect(&consumer_options(stack.mosquitto.mqtts_url(), &stack.ca.cert_pem(), &user, &password))
        .await
        .expect("the asset identity made again connects with its new password");
    assert_eq!(
        stack.edc.asset(&asset_id).await.unwrap().data_address["passwordAlias"],
        format!("dsp-mqtt-{ns}-{name}-secret")
    );
    stack.teardown().await;
}
