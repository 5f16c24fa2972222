//! Contract tests: the EDC Management API client against the EDC double (stock and factoryx-edc
//! flavours). What a user cares about: the offer lands in the connector as domain.md §2/§3 say,
//! resyncs write nothing, foreign objects are left alone, teardown keeps EDC's order, and every
//! failure says what went wrong without leaking the API key.

use std::time::{Duration, Instant};

use e2e::doubles::LoggedRequest;
use e2e::doubles::edc::{self, DataPlane, EdcConfig, EdcDouble, Flavour};
use e2e::tls::TestCa;
use mqtt_dsp_operator::api::{AuthMode, EndpointType};
use mqtt_dsp_operator::backends::connector::edc::{EdcClient, EdcSettings};
use mqtt_dsp_operator::backends::connector::{
    AssetDefinition, Connector, ContractDefinition, OfferIds, PolicyDefinition, mqtt_endpoint_type,
};
use mqtt_dsp_operator::backends::http::HttpSettings;
use mqtt_dsp_operator::backends::{
    BackendError, OWNER_KEY, OWNER_RESOURCE_KEY, OWNER_VALUE, Outcome, Owner, SecretString,
};
use mqtt_dsp_operator::config::EndpointTypeSpelling;
use serde_json::{Map, Value, json};
use url::Url;

const ASSET: &str = "urn:mqtt:factory:line-1";
const ACCESS: &str = "line-1-access";
const CONTRACT: &str = "line-1-contract";
const DEFINITION: &str = "line-1-offer";

struct Stack {
    ca: TestCa,
    edc: EdcDouble,
    client: EdcClient,
}

async fn stack(flavour: Flavour) -> Stack {
    mqtt_dsp_operator::install_crypto_provider();
    e2e::logs::init();
    e2e::logs::register_secret(edc::API_KEY);
    let ca = TestCa::new();
    let edc = edc::start(&ca, EdcConfig::flavour(flavour)).await.unwrap();
    let client = client(&ca, &edc.management_url, edc::API_KEY, Duration::from_secs(5));
    Stack { ca, edc, client }
}

fn client(ca: &TestCa, management_url: &str, api_key: &str, timeout: Duration) -> EdcClient {
    EdcClient::new(EdcSettings {
        management_url: Url::parse(management_url).unwrap(),
        api_key: SecretString::from(api_key.to_owned()),
        http: HttpSettings { timeout, ca_bundle_pem: Some(ca.cert_pem()) },
    })
    .unwrap()
}

fn owner() -> Owner {
    Owner { kind: "MqttAsset".into(), namespace: "factory".into(), name: "line-1".into() }
}

fn object(value: Value) -> Map<String, Value> {
    value.as_object().unwrap().clone()
}

/// An oauth2 MQTT asset, with `mqttEndpointType` spelled the way `spelling` says.
fn oauth2_asset(spelling: EndpointTypeSpelling) -> AssetDefinition {
    AssetDefinition {
        id: ASSET.into(),
        properties: object(json!({"name": "Line 1 telemetry", "contenttype": "application/json"})),
        private_properties: Map::new(),
        data_address: object(json!({
            "type": "Mqtt",
            "baseUrl": "wss://broker.factory.example/mqtt",
            "mqttEndpointType": mqtt_endpoint_type(spelling, EndpointType::MqttWss, AuthMode::Oauth2),
            "oauth2:tokenUrl": "https://idp.factory.example/realms/mqtt/protocol/openid-connect/token",
            "oauth2:clientId": "asset-line-1",
            "oauth2:clientSecretKeyAlias": "mqtt-asset-line-1-secret",
        })),
        owner: owner(),
    }
}

fn policy(id: &str, partner: &str) -> PolicyDefinition {
    PolicyDefinition {
        id: id.into(),
        policy: json!({
            "@context": "http://www.w3.org/ns/odrl.jsonld",
            "@type": "Set",
            "permission": [{"action": "use", "constraint": [
                {"leftOperand": "BusinessPartnerDID", "operator": "eq", "rightOperand": partner}
            ]}]
        }),
        owner: owner(),
    }
}

fn definition() -> ContractDefinition {
    ContractDefinition {
        id: DEFINITION.into(),
        access_policy_id: ACCESS.into(),
        contract_policy_id: CONTRACT.into(),
        asset_id: ASSET.into(),
        owner: owner(),
    }
}

fn offer_ids() -> OfferIds {
    OfferIds {
        contract_definition_id: DEFINITION.into(),
        policy_ids: vec![ACCESS.into(), CONTRACT.into(), ACCESS.into()],
        asset_id: ASSET.into(),
    }
}

async fn ensure_offer(s: &Stack, spelling: EndpointTypeSpelling) -> [Outcome; 4] {
    [
        s.client.ensure_asset(&oauth2_asset(spelling)).await.unwrap(),
        s.client.ensure_policy(&policy(ACCESS, "did:web:consumer.example")).await.unwrap(),
        s.client.ensure_policy(&policy(CONTRACT, "did:web:consumer.example")).await.unwrap(),
        s.client.ensure_contract_definition(&definition()).await.unwrap(),
    ]
}

fn mutating(s: &Stack) -> Vec<LoggedRequest> {
    s.edc.server.log.matching(LoggedRequest::is_mutating)
}

fn summary(requests: &[LoggedRequest]) -> Vec<String> {
    requests.iter().map(|r| format!("{} {} {}", r.method, r.path, r.status)).collect()
}

/// A request outside the client under test (someone else's tool, or a catalog query).
async fn raw(s: &Stack, method: reqwest::Method, path: &str, body: Option<Value>, key: Option<&str>) -> (u16, Value) {
    let http = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(s.ca.cert_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let mut request = http.request(method, format!("{}{path}", s.edc.management_url));
    if let Some(key) = key {
        request = request.header("X-Api-Key", key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn foreign_asset_body() -> Value {
    json!({
        "@context": {"@vocab": edc::EDC_NAMESPACE},
        "@id": ASSET,
        "properties": {"name": "hand-made by another team"},
        "dataAddress": {"type": "HttpData", "baseUrl": "https://data.example/api"}
    })
}

// ---------------------------------------------------------------------------------------------
// Happy path and the shape of what is stored

#[tokio::test]
async fn offer_is_created_and_stored_as_domain_says() {
    let s = stack(Flavour::Factoryx).await;
    assert_eq!(ensure_offer(&s, EndpointTypeSpelling::Factoryx).await, [Outcome::Created; 4]);

    let asset = s.edc.state.asset(ASSET).expect("asset stored");
    assert_eq!(asset.data_address["type"], "Mqtt");
    assert_eq!(asset.data_address["baseUrl"], "wss://broker.factory.example/mqtt");
    assert_eq!(asset.properties["name"], "Line 1 telemetry");
    assert_eq!(asset.private_properties[OWNER_KEY], OWNER_VALUE);
    assert_eq!(asset.private_properties[OWNER_RESOURCE_KEY], "MqttAsset/factory/line-1");

    let access = s.edc.state.policy(ACCESS).expect("policy stored");
    assert_eq!(access.private_properties[OWNER_KEY], OWNER_VALUE);
    assert_eq!(access.policy["permission"][0]["constraint"][0]["rightOperand"], "did:web:consumer.example");

    let cd = s.edc.state.contract_definition(DEFINITION).expect("contract definition stored");
    assert_eq!((cd.access_policy_id.as_str(), cd.contract_policy_id.as_str()), (ACCESS, CONTRACT));
    assert_eq!(cd.assets_selector.len(), 1);
    assert_eq!(cd.assets_selector[0].operand_left, "https://w3id.org/edc/v0.0.1/ns/id");
    assert_eq!(cd.assets_selector[0].operator, "=");
    assert_eq!(cd.assets_selector[0].operand_right, ASSET);
    assert_eq!(cd.private_properties[OWNER_RESOURCE_KEY], "MqttAsset/factory/line-1");

    // Each create is one read that found nothing and one POST answered 200.
    assert_eq!(
        summary(&mutating(&s)),
        [
            "POST /management/v3/assets 200",
            "POST /management/v3/policydefinitions 200",
            "POST /management/v3/policydefinitions 200",
            "POST /management/v3/contractdefinitions 200",
        ]
    );
}

#[tokio::test]
async fn data_address_keeps_literal_oauth2_keys_and_the_chosen_spelling() {
    for (flavour, spelling, expected) in [
        (Flavour::Stock, EndpointTypeSpelling::Adr, "mqtt-wss"),
        (Flavour::Factoryx, EndpointTypeSpelling::Factoryx, "mqtt-wss-oauth2"),
    ] {
        let s = stack(flavour).await;
        s.client.ensure_asset(&oauth2_asset(spelling)).await.unwrap();
        let stored = s.edc.state.asset(ASSET).unwrap().data_address;
        assert_eq!(stored["mqttEndpointType"], expected, "{spelling:?}");
        assert_eq!(
            stored["oauth2:tokenUrl"], "https://idp.factory.example/realms/mqtt/protocol/openid-connect/token",
            "{spelling:?}: the connector must find the literal key"
        );
        assert_eq!(stored["oauth2:clientId"], "asset-line-1");
        assert_eq!(stored["oauth2:clientSecretKeyAlias"], "mqtt-asset-line-1-secret");
        assert!(stored.keys().all(|k| !k.starts_with("http")), "{spelling:?}: no expanded key in {stored:?}");
    }
}

#[tokio::test]
async fn basic_auth_asset_passes_the_reference_validation() {
    let s = stack(Flavour::Factoryx).await;
    let mut asset = oauth2_asset(EndpointTypeSpelling::Factoryx);
    asset.data_address = object(json!({
        "type": "Mqtt",
        "baseUrl": "mqtts://broker.factory.example:8883",
        "mqttEndpointType": mqtt_endpoint_type(EndpointTypeSpelling::Factoryx, EndpointType::MqttTls, AuthMode::Usrpw),
        "username": "asset-line-1",
        "passwordAlias": "mqtt-asset-line-1-password",
    }));
    assert_eq!(s.client.ensure_asset(&asset).await.unwrap(), Outcome::Created);
    assert_eq!(s.edc.state.asset(ASSET).unwrap().data_address["mqttEndpointType"], "mqtt-tcp-basic");
}

#[tokio::test]
async fn factoryx_connector_rejects_the_adr_spelling_readably() {
    let s = stack(Flavour::Factoryx).await;
    let err = s.client.ensure_asset(&oauth2_asset(EndpointTypeSpelling::Adr)).await.unwrap_err();
    let BackendError::Rejected { status, ref message, .. } = err else { panic!("expected Rejected, got {err:?}") };
    assert_eq!(status, 400);
    let text = err.to_string();
    assert!(text.contains("mqttEndpointType"), "{text}");
    assert!(text.contains("mqtt-wss"), "{text}");
    assert!(text.contains("asset urn:mqtt:factory:line-1"), "{text}");
    assert!(!message.starts_with('['), "the JSON error array is turned into prose: {message}");
    assert!(!err.is_retryable());
    assert!(s.edc.state.asset(ASSET).is_none());
}

#[tokio::test]
async fn a_declared_oauth2_prefix_breaks_the_asset_like_the_reference_connector() {
    let mut body = json!({
        "@context": {"@vocab": edc::EDC_NAMESPACE, "oauth2": "https://w3id.org/factoryx/oauth2/"},
        "@id": ASSET,
        "properties": {"name": "trap"},
        "dataAddress": {
            "type": "Mqtt",
            "baseUrl": "wss://broker.factory.example/mqtt",
            "mqttEndpointType": "mqtt-wss-oauth2",
            "oauth2:tokenUrl": "https://idp.factory.example/token",
            "oauth2:clientId": "asset-line-1",
            "oauth2:clientSecretKeyAlias": "alias"
        }
    });
    let s = stack(Flavour::Factoryx).await;
    let (status, errors) = raw(&s, reqwest::Method::POST, "/v3/assets", Some(body.clone()), Some(edc::API_KEY)).await;
    assert_eq!(status, 400);
    assert!(errors.to_string().contains("exactly one set of auth"), "{errors}");

    // A stock connector accepts it, but stores the expanded key: the literal one is gone.
    let s = stack(Flavour::Stock).await;
    body["@id"] = json!("trap");
    let (status, _) = raw(&s, reqwest::Method::POST, "/v3/assets", Some(body), Some(edc::API_KEY)).await;
    assert_eq!(status, 200);
    let stored = s.edc.state.asset("trap").unwrap().data_address;
    assert!(!stored.contains_key("oauth2:tokenUrl"));
    assert!(stored.contains_key("https://w3id.org/factoryx/oauth2/tokenUrl"));
}

// ---------------------------------------------------------------------------------------------
// Idempotency and updates

#[tokio::test]
async fn second_identical_ensure_makes_no_write() {
    let s = stack(Flavour::Factoryx).await;
    ensure_offer(&s, EndpointTypeSpelling::Factoryx).await;
    s.edc.server.log.clear();

    // EDC answers with its own compaction (odrl: names, {"@id"} values, an `id` property,
    // createdAt, a generated policy @id): the comparison has to see through it.
    assert_eq!(ensure_offer(&s, EndpointTypeSpelling::Factoryx).await, [Outcome::Unchanged; 4]);
    assert!(mutating(&s).is_empty(), "{:?}", summary(&mutating(&s)));
    assert_eq!(s.edc.server.log.all().len(), 4, "one GET per object");
}

#[tokio::test]
async fn changed_objects_are_updated_once_each() {
    let s = stack(Flavour::Factoryx).await;
    ensure_offer(&s, EndpointTypeSpelling::Factoryx).await;
    s.edc.server.log.clear();

    let mut asset = oauth2_asset(EndpointTypeSpelling::Factoryx);
    asset.data_address.insert("baseUrl".into(), json!("wss://broker2.factory.example/mqtt"));
    asset.properties.insert("description".into(), json!("now with a description"));
    assert_eq!(s.client.ensure_asset(&asset).await.unwrap(), Outcome::Updated);
    assert_eq!(s.client.ensure_policy(&policy(CONTRACT, "did:web:other.example")).await.unwrap(), Outcome::Updated);
    let mut cd = definition();
    cd.access_policy_id = CONTRACT.into();
    assert_eq!(s.client.ensure_contract_definition(&cd).await.unwrap(), Outcome::Updated);

    assert_eq!(
        summary(&mutating(&s)),
        [
            "PUT /management/v3/assets 204",
            format!("PUT /management/v3/policydefinitions/{CONTRACT} 204").as_str(),
            "PUT /management/v3/contractdefinitions 204",
        ]
    );
    let stored = s.edc.state.asset(ASSET).unwrap();
    assert_eq!(stored.data_address["baseUrl"], "wss://broker2.factory.example/mqtt");
    assert_eq!(stored.private_properties[OWNER_KEY], OWNER_VALUE, "an update keeps the marker");
    assert_eq!(
        s.edc.state.policy(CONTRACT).unwrap().policy["permission"][0]["constraint"][0]["rightOperand"],
        "did:web:other.example"
    );
    assert_eq!(s.edc.state.contract_definition(DEFINITION).unwrap().access_policy_id, CONTRACT);

    s.edc.server.log.clear();
    assert_eq!(s.client.ensure_asset(&asset).await.unwrap(), Outcome::Unchanged);
    assert!(mutating(&s).is_empty());
}

#[tokio::test]
async fn a_lost_create_race_reads_compares_and_updates() {
    let s = stack(Flavour::Factoryx).await;
    s.client.ensure_asset(&oauth2_asset(EndpointTypeSpelling::Factoryx)).await.unwrap();
    s.edc.server.log.clear();
    // Someone else created it between our read and our create: the read says 404, POST says 409.
    s.edc.state.hide_from_next_get(ASSET);
    let mut asset = oauth2_asset(EndpointTypeSpelling::Factoryx);
    asset.properties.insert("name".into(), json!("renamed"));

    assert_eq!(s.client.ensure_asset(&asset).await.unwrap(), Outcome::Updated);
    assert_eq!(
        summary(&s.edc.server.log.all()),
        [
            "GET /management/v3/assets/urn:mqtt:factory:line-1 404",
            "POST /management/v3/assets 409",
            "GET /management/v3/assets/urn:mqtt:factory:line-1 200",
            "PUT /management/v3/assets 204",
        ]
    );
    assert_eq!(s.edc.state.asset(ASSET).unwrap().properties["name"], "renamed");
}

// ---------------------------------------------------------------------------------------------
// Failures

#[tokio::test]
async fn wrong_api_key_is_unauthorized_and_never_shown() {
    let s = stack(Flavour::Stock).await;
    let secret = "wrong-key-that-must-never-leak-7f3a";
    let bad = client(&s.ca, &s.edc.management_url, secret, Duration::from_secs(5));
    let err = bad.ensure_asset(&oauth2_asset(EndpointTypeSpelling::Adr)).await.unwrap_err();
    assert!(matches!(err, BackendError::Unauthorized { status: 401, .. }), "{err:?}");
    assert!(!err.is_retryable());
    for text in [err.to_string(), format!("{err:?}"), format!("{bad:?}")] {
        assert!(!text.contains(secret), "{text}");
    }
    assert!(s.edc.state.assets().is_empty());

    // The double answers EDC's error array, with or without a key.
    let (status, body) = raw(&s, reqwest::Method::GET, "/v3/assets/x", None, None).await;
    assert_eq!(status, 401);
    assert_eq!(body[0]["type"], "AuthenticationFailed");
}

#[tokio::test]
async fn errors_never_contain_the_api_key() {
    let s = stack(Flavour::Factoryx).await;
    let mut errors = Vec::new();
    errors.push(s.client.ensure_asset(&oauth2_asset(EndpointTypeSpelling::Adr)).await.unwrap_err());
    s.edc.server.faults.fail_next(1, 503);
    errors.push(s.client.ensure_asset(&oauth2_asset(EndpointTypeSpelling::Factoryx)).await.unwrap_err());
    let wrong_url = format!("{}/not-management", s.edc.server.base_url);
    errors.push(
        client(&s.ca, &wrong_url, edc::API_KEY, Duration::from_secs(5))
            .delete_asset(ASSET, &owner())
            .await
            .unwrap_err(),
    );
    for err in &errors {
        let text = format!("{err} {err:?}");
        assert!(!text.contains(edc::API_KEY), "{text}");
    }
}

#[tokio::test]
async fn a_wrong_management_url_is_an_error_not_an_absent_object() {
    let s = stack(Flavour::Stock).await;
    let wrong = client(&s.ca, &format!("{}/api", s.edc.server.base_url), edc::API_KEY, Duration::from_secs(5));
    let err = wrong.delete_asset(ASSET, &owner()).await.unwrap_err();
    assert!(matches!(err, BackendError::Rejected { status: 404, .. }), "{err:?}");
    assert!(err.to_string().contains("managementUrl"), "{err}");
    let err = wrong.ensure_asset(&oauth2_asset(EndpointTypeSpelling::Adr)).await.unwrap_err();
    assert!(matches!(err, BackendError::Rejected { status: 404, .. }), "{err:?}");
}

#[tokio::test]
async fn server_errors_are_retryable() {
    let s = stack(Flavour::Stock).await;
    s.edc.server.faults.fail_next(1, 503);
    let err = s.client.ensure_asset(&oauth2_asset(EndpointTypeSpelling::Adr)).await.unwrap_err();
    assert!(matches!(err, BackendError::Unavailable { status: 503, .. }), "{err:?}");
    assert!(err.is_retryable());
    // The retry succeeds.
    assert_eq!(s.client.ensure_asset(&oauth2_asset(EndpointTypeSpelling::Adr)).await.unwrap(), Outcome::Created);
}

#[tokio::test]
async fn a_stalled_connector_times_out() {
    let s = stack(Flavour::Stock).await;
    let impatient = client(&s.ca, &s.edc.management_url, edc::API_KEY, Duration::from_secs(1));
    s.edc.server.faults.stall(true);
    let started = Instant::now();
    let err = impatient.ensure_asset(&oauth2_asset(EndpointTypeSpelling::Adr)).await.unwrap_err();
    assert!(matches!(err, BackendError::Timeout { timeout_seconds: 1, .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Ownership

#[tokio::test]
async fn a_foreign_asset_is_neither_updated_nor_deleted() {
    let s = stack(Flavour::Stock).await;
    let (status, _) =
        raw(&s, reqwest::Method::POST, "/v3/assets", Some(foreign_asset_body()), Some(edc::API_KEY)).await;
    assert_eq!(status, 200);
    let before = s.edc.state.asset(ASSET).unwrap();
    s.edc.server.log.clear();

    let err = s.client.ensure_asset(&oauth2_asset(EndpointTypeSpelling::Adr)).await.unwrap_err();
    assert!(matches!(err, BackendError::Foreign { operation: "update", .. }), "{err:?}");
    let err = s.client.delete_asset(ASSET, &owner()).await.unwrap_err();
    assert!(matches!(err, BackendError::Foreign { operation: "delete", .. }), "{err:?}");
    assert!(err.to_string().contains(ASSET), "{err}");

    assert!(mutating(&s).is_empty(), "{:?}", summary(&mutating(&s)));
    assert_eq!(s.edc.state.asset(ASSET).unwrap(), before);
}

#[tokio::test]
async fn another_resources_objects_are_refused_too() {
    let s = stack(Flavour::Stock).await;
    s.client.ensure_policy(&policy(ACCESS, "did:web:a")).await.unwrap();
    let mut theirs = policy(ACCESS, "did:web:b");
    theirs.owner.name = "line-2".into();
    s.edc.server.log.clear();
    let err = s.client.ensure_policy(&theirs).await.unwrap_err();
    assert!(matches!(err, BackendError::Foreign { .. }), "{err:?}");
    assert!(err.to_string().contains("MqttAsset/factory/line-1"), "{err}");
    let err = s.client.delete_policy(ACCESS, &theirs.owner).await.unwrap_err();
    assert!(matches!(err, BackendError::Foreign { .. }), "{err:?}");
    assert!(mutating(&s).is_empty());
}

#[tokio::test]
async fn deleting_absent_objects_is_absent() {
    let s = stack(Flavour::Stock).await;
    assert_eq!(s.client.delete_contract_definition(DEFINITION, &owner()).await.unwrap(), Outcome::Absent);
    assert_eq!(s.client.delete_policy(ACCESS, &owner()).await.unwrap(), Outcome::Absent);
    assert_eq!(s.client.delete_asset(ASSET, &owner()).await.unwrap(), Outcome::Absent);
    s.client.teardown(&offer_ids(), &owner()).await.unwrap();
    assert!(mutating(&s).is_empty(), "{:?}", summary(&mutating(&s)));
}

// ---------------------------------------------------------------------------------------------
// Teardown and references

#[tokio::test]
async fn teardown_deletes_contract_definition_then_policies_then_asset() {
    let s = stack(Flavour::Factoryx).await;
    ensure_offer(&s, EndpointTypeSpelling::Factoryx).await;
    s.edc.server.log.clear();

    s.client.teardown(&offer_ids(), &owner()).await.unwrap();
    assert_eq!(
        summary(&mutating(&s)),
        [
            format!("DELETE /management/v3/contractdefinitions/{DEFINITION} 204"),
            format!("DELETE /management/v3/policydefinitions/{ACCESS} 204"),
            format!("DELETE /management/v3/policydefinitions/{CONTRACT} 204"),
            "DELETE /management/v3/assets/urn:mqtt:factory:line-1 204".to_owned(),
        ]
    );
    assert!(s.edc.state.assets().is_empty());
    assert!(s.edc.state.policies().is_empty());
    assert!(s.edc.state.contract_definitions().is_empty());
}

#[tokio::test]
async fn an_asset_under_agreement_is_in_use_and_nothing_is_deleted_after_it() {
    let s = stack(Flavour::Factoryx).await;
    ensure_offer(&s, EndpointTypeSpelling::Factoryx).await;
    s.edc.state.add_agreement(ASSET);
    s.edc.server.log.clear();

    let err = s.client.teardown(&offer_ids(), &owner()).await.unwrap_err();
    assert!(matches!(err, BackendError::InUse { operation: "delete", .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("contract agreement"), "{err}");
    let deletes = mutating(&s);
    let last = deletes.last().unwrap();
    assert_eq!((last.method.as_str(), last.status), ("DELETE", 409));
    assert!(last.path.starts_with("/management/v3/assets/"), "{:?}", summary(&deletes));
    assert_eq!(deletes.len(), 4, "contract definition, two policies, then the asset: {:?}", summary(&deletes));
    assert!(s.edc.state.asset(ASSET).is_some());

    // Retrying changes nothing and deletes nothing else.
    s.edc.server.log.clear();
    let err = s.client.teardown(&offer_ids(), &owner()).await.unwrap_err();
    assert!(matches!(err, BackendError::InUse { .. }), "{err:?}");
    assert_eq!(summary(&mutating(&s)), ["DELETE /management/v3/assets/urn:mqtt:factory:line-1 409"]);
}

#[tokio::test]
async fn a_policy_referenced_by_a_contract_definition_is_in_use() {
    let s = stack(Flavour::Factoryx).await;
    ensure_offer(&s, EndpointTypeSpelling::Factoryx).await;
    let err = s.client.delete_policy(ACCESS, &owner()).await.unwrap_err();
    assert!(matches!(err, BackendError::InUse { .. }), "{err:?}");
    assert!(s.edc.state.policy(ACCESS).is_some());
    // In the right order it goes.
    assert_eq!(s.client.delete_contract_definition(DEFINITION, &owner()).await.unwrap(), Outcome::Deleted);
    assert_eq!(s.client.delete_policy(ACCESS, &owner()).await.unwrap(), Outcome::Deleted);
}

// ---------------------------------------------------------------------------------------------
// Catalog

fn catalog_request() -> Value {
    json!({
        "@context": {"@vocab": edc::EDC_NAMESPACE},
        "@type": "CatalogRequest",
        "counterPartyAddress": "https://provider.example/api/dsp",
        "protocol": "dataspace-protocol-http:2025-1"
    })
}

fn formats(dataset: &Value) -> Vec<String> {
    dataset["distribution"].as_array().unwrap().iter().map(|d| d["format"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn catalog_lists_the_asset_with_an_mqtt_pull_distribution() {
    let s = stack(Flavour::Factoryx).await;
    ensure_offer(&s, EndpointTypeSpelling::Factoryx).await;
    // An asset without a contract definition is not offered.
    let (status, _) = raw(
        &s,
        reqwest::Method::POST,
        "/v3/assets",
        Some(json!({
            "@context": {"@vocab": edc::EDC_NAMESPACE}, "@id": "unoffered", "properties": {},
            "dataAddress": {"type": "HttpData", "baseUrl": "https://data.example"}
        })),
        Some(edc::API_KEY),
    )
    .await;
    assert_eq!(status, 200);

    let (status, catalog) =
        raw(&s, reqwest::Method::POST, "/v3/catalog/request", Some(catalog_request()), Some(edc::API_KEY)).await;
    assert_eq!(status, 200, "{catalog}");
    assert_eq!(catalog["@type"], "Catalog");
    let datasets = catalog["dataset"].as_array().unwrap();
    assert_eq!(datasets.len(), 1, "{catalog}");
    let dataset = &datasets[0];
    assert_eq!(dataset["@id"], ASSET);
    assert_eq!(formats(dataset), ["Mqtt-PULL", "HttpData-PULL"]);
    let offer = &dataset["hasPolicy"][0];
    assert_eq!(offer["@type"], "Offer");
    assert_eq!(offer["permission"][0]["constraint"][0]["rightOperand"], "did:web:consumer.example");
}

#[tokio::test]
async fn stock_catalog_offers_mqtt_pull_only_through_a_registered_data_plane() {
    let s = stack(Flavour::Stock).await;
    ensure_offer(&s, EndpointTypeSpelling::Adr).await;
    let request = || raw(&s, reqwest::Method::POST, "/v3/catalog/request", Some(catalog_request()), Some(edc::API_KEY));
    let (_, catalog) = request().await;
    assert!(formats(&catalog["dataset"][0]).is_empty(), "{catalog}");

    s.edc.state.register_data_plane(DataPlane {
        allowed_source_types: vec!["Mqtt".into()],
        allowed_transfer_types: vec!["Mqtt-PULL".into()],
    });
    let (_, catalog) = request().await;
    assert_eq!(formats(&catalog["dataset"][0]), ["Mqtt-PULL"]);
}

// ---------------------------------------------------------------------------------------------
// The double's own strictness (a lenient double would make every test above worthless)

#[tokio::test]
async fn the_double_refuses_what_edc_refuses() {
    let s = stack(Flavour::Stock).await;
    let key = Some(edc::API_KEY);
    let post = |path: &'static str, body: Value| raw(&s, reqwest::Method::POST, path, Some(body), key);

    let mut no_context = foreign_asset_body();
    no_context.as_object_mut().unwrap().remove("@context");
    let (status, body) = post("/v3/assets", no_context).await;
    assert_eq!(status, 400);
    assert!(body[0]["message"].as_str().unwrap().contains("@vocab"), "{body}");

    let mut no_type = foreign_asset_body();
    no_type["dataAddress"].as_object_mut().unwrap().remove("type");
    assert_eq!(post("/v3/assets", no_type).await.0, 400);

    assert_eq!(post("/v3/assets", foreign_asset_body()).await.0, 200);
    let (status, body) = post("/v3/assets", foreign_asset_body()).await;
    assert_eq!(status, 409);
    assert_eq!(body[0]["type"], "ObjectConflict");

    let bad_policy = json!({"@context": {"@vocab": edc::EDC_NAMESPACE}, "@id": "p", "policy": {"@type": "Set"}});
    let (status, body) = post("/v3/policydefinitions", bad_policy).await;
    assert_eq!(status, 400, "a bare Set without the ODRL context is edc:Set: {body}");

    let no_action = json!({"@context": {"@vocab": edc::EDC_NAMESPACE}, "@id": "p",
        "policy": {"@context": "http://www.w3.org/ns/odrl.jsonld", "@type": "Set", "permission": [{"constraint": []}]}});
    assert_eq!(post("/v3/policydefinitions", no_action).await.0, 400);

    let no_policy_ids = json!({"@context": {"@vocab": edc::EDC_NAMESPACE}, "@id": "cd", "assetsSelector": []});
    assert_eq!(post("/v3/contractdefinitions", no_policy_ids).await.0, 400);

    let (status, body) = raw(&s, reqwest::Method::GET, "/v3/assets/nope", None, key).await;
    assert_eq!((status, body[0]["type"].as_str()), (404, Some("ObjectNotFound")));
    assert_eq!(raw(&s, reqwest::Method::GET, "/v3/nothing-here", None, key).await.0, 404);
    assert_eq!(
        raw(
            &s,
            reqwest::Method::POST,
            "/v3/catalog/request",
            Some(json!({"@context": {"@vocab": edc::EDC_NAMESPACE}})),
            key
        )
        .await
        .0,
        400
    );
}
