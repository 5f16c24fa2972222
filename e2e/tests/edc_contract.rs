//! Contract tests of the EDC Management API client, one suite for two targets: a real EDC control
//! plane (`e2e::systems::edc`, the release and why in its module documentation) and the EDC
//! double (`e2e::doubles::edc`). What a user cares about: the offer lands in the connector as
//! domain.md §2/§3 say, resyncs write nothing, foreign objects are left alone, teardown keeps
//! EDC's order, and every failure says what went wrong without leaking the API key.
//!
//! Each test body takes a [`Target`]; `contract_test!` makes one `#[tokio::test]` per target, named
//! `<test>::real_edc`, `<test>::double` (stock flavour) and `<test>::factoryx_double`. Assertions
//! read back through the Management API wherever they can, so they hold on both; what only the
//! double can show (its request log, fault injection, test hooks) is checked when the target is
//! the double, and the tests that need nothing else are double-only, each saying why. The
//! factoryx-edc flavour exists only as the double: its MQTT extension is not on Maven Central.
//!
//! The real EDC is started once for this binary and shared by concurrent tests, so every test
//! works on ids of its own ([`Ids`]) and never counts what it did not create.

use std::time::{Duration, Instant};

use e2e::doubles::LoggedRequest;
use e2e::doubles::edc::{self, DataPlane, EdcConfig, EdcDouble, Flavour};
use e2e::systems::edc::{DSP_PROTOCOL, Edc, EdcOptions};
use e2e::tls::TestCa;
use mqtt_dsp_operator::api::{AuthMode, EndpointType};
use mqtt_dsp_operator::backends::connector::edc::{EdcClient, EdcSettings};
use mqtt_dsp_operator::backends::connector::{
    AssetDefinition, Connector, ContractDefinition, OfferIds, PolicyDefinition, mqtt_endpoint_type,
};
use mqtt_dsp_operator::backends::http::HttpSettings;
use mqtt_dsp_operator::backends::{BackendError, OWNER_KEY, OWNER_RESOURCE_KEY, Outcome, Owner, SecretString};
use mqtt_dsp_operator::config::EndpointTypeSpelling;
use reqwest::Method;
use serde_json::{Map, Value, json};
use url::Url;

const EDC_NAMESPACE: &str = "https://w3id.org/edc/v0.0.1/ns/";

/// What a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// The real EDC control plane shared by this binary (`provider`).
    Real,
    /// A fresh double of this flavour.
    Double(Flavour),
}

impl Target {
    /// The spelling the connector accepts: factoryx-edc only its own, stock EDC any.
    fn spelling(self) -> EndpointTypeSpelling {
        match self {
            Target::Double(Flavour::Factoryx) => EndpointTypeSpelling::Factoryx,
            _ => EndpointTypeSpelling::Adr,
        }
    }
}

/// One `#[tokio::test]` per target for the async test body of the same name.
macro_rules! contract_test {
    ($name:ident: $($wrapper:ident => $target:expr),+ $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test]
                async fn $wrapper() {
                    super::$name($target).await
                }
            )+
        }
    };
}

/// The real EDC and the stock double.
macro_rules! on_both {
    ($name:ident) => {
        contract_test!($name: real_edc => Target::Real, double => Target::Double(Flavour::Stock));
    };
    ($name:ident, factoryx) => {
        contract_test!($name:
            real_edc => Target::Real,
            double => Target::Double(Flavour::Stock),
            factoryx_double => Target::Double(Flavour::Factoryx),
        );
    };
}

/// Ids of one test's objects, unique in the shared real EDC (whose catalog therefore lists every
/// test's offers: tests look for their own dataset).
struct Ids {
    asset: String,
    access: String,
    contract: String,
    definition: String,
}

impl Ids {
    fn new() -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        Ids {
            asset: format!("urn:mqtt:factory:line-1-{suffix}"),
            access: format!("line-1-access-{suffix}"),
            contract: format!("line-1-contract-{suffix}"),
            definition: format!("line-1-offer-{suffix}"),
        }
    }
}

struct Stack {
    target: Target,
    ca_pem: String,
    management_url: String,
    api_key: String,
    client: EdcClient,
    /// Only when the target is the double: its state, request log and faults.
    double: Option<EdcDouble>,
    /// The base URL of the management server without its path (for wrong-URL tests).
    server_url: String,
    ids: Ids,
}

fn real_connectors() -> (&'static Edc, &'static Edc) {
    // Both start together on first use (in parallel), so the catalog test finds its consumer up.
    // The consumer validates policies as stock EDC does by default.
    let edcs = e2e::systems::edc::shared(&[
        EdcOptions::named("provider"),
        EdcOptions::named("consumer").policy_validation(true),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    (edcs[0], edcs[1])
}

async fn stack(target: Target) -> Stack {
    mqtt_dsp_operator::install_crypto_provider();
    e2e::logs::init();
    match target {
        Target::Real => {
            let (provider, _) = real_connectors();
            let ca_pem = TestCa::shared().cert_pem();
            let client = client(&ca_pem, &provider.management_url, &provider.api_key, Duration::from_secs(10));
            let server_url = provider.management_url.trim_end_matches("/management").to_owned();
            Stack {
                target,
                ca_pem,
                management_url: provider.management_url.clone(),
                api_key: provider.api_key.clone(),
                client,
                double: None,
                server_url,
                ids: Ids::new(),
            }
        }
        Target::Double(flavour) => {
            e2e::logs::register_secret(edc::API_KEY);
            let ca = TestCa::new();
            let double = edc::start(&ca, EdcConfig::flavour(flavour)).await.unwrap();
            let client = client(&ca.cert_pem(), &double.management_url, edc::API_KEY, Duration::from_secs(5));
            Stack {
                target,
                ca_pem: ca.cert_pem(),
                management_url: double.management_url.clone(),
                api_key: edc::API_KEY.to_owned(),
                client,
                server_url: double.server.base_url.clone(),
                double: Some(double),
                ids: Ids::new(),
            }
        }
    }
}

fn client(ca_pem: &str, management_url: &str, api_key: &str, timeout: Duration) -> EdcClient {
    EdcClient::new(EdcSettings {
        management_url: Url::parse(management_url).unwrap(),
        api_key: SecretString::from(api_key.to_owned()),
        http: HttpSettings { timeout, ca_bundle_pem: Some(ca_pem.to_owned()) },
    })
    .unwrap()
}

fn owner() -> Owner {
    Owner { installation: "test".into(), kind: "MqttAsset".into(), namespace: "factory".into(), name: "line-1".into() }
}

fn object(value: Value) -> Map<String, Value> {
    value.as_object().unwrap().clone()
}

impl Stack {
    /// An oauth2 MQTT asset, with `mqttEndpointType` spelled the way `spelling` says.
    fn oauth2_asset(&self, spelling: EndpointTypeSpelling) -> AssetDefinition {
        AssetDefinition {
            id: self.ids.asset.clone(),
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

    fn asset(&self) -> AssetDefinition {
        self.oauth2_asset(self.target.spelling())
    }

    fn definition(&self) -> ContractDefinition {
        ContractDefinition {
            id: self.ids.definition.clone(),
            access_policy_id: self.ids.access.clone(),
            contract_policy_id: self.ids.contract.clone(),
            asset_id: self.ids.asset.clone(),
            owner: owner(),
        }
    }

    fn offer_ids(&self) -> OfferIds {
        OfferIds {
            contract_definition_id: self.ids.definition.clone(),
            policy_ids: vec![self.ids.access.clone(), self.ids.contract.clone(), self.ids.access.clone()],
            asset_id: self.ids.asset.clone(),
        }
    }

    async fn ensure_offer(&self) -> [Outcome; 4] {
        [
            self.client.ensure_asset(&self.asset()).await.unwrap(),
            self.client.ensure_policy(&policy(&self.ids.access, "did:web:consumer.example")).await.unwrap(),
            self.client.ensure_policy(&policy(&self.ids.contract, "did:web:consumer.example")).await.unwrap(),
            self.client.ensure_contract_definition(&self.definition()).await.unwrap(),
        ]
    }

    fn double(&self) -> Option<&EdcDouble> {
        self.double.as_ref()
    }

    /// The double's writes since the log was last cleared.
    fn mutating(&self) -> Vec<LoggedRequest> {
        self.double.as_ref().map(|d| d.server.log.matching(LoggedRequest::is_mutating)).unwrap_or_default()
    }

    fn clear_log(&self) {
        if let Some(d) = &self.double {
            d.server.log.clear();
        }
    }

    /// A request outside the client under test (someone else's tool, or a catalog query).
    async fn raw(&self, method: Method, path: &str, body: Option<Value>, key: Option<&str>) -> (u16, Value) {
        raw_at(&self.ca_pem, &self.management_url, method, path, body, key).await
    }

    async fn raw_with_key(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.raw(method, path, body, Some(&self.api_key.clone())).await
    }

    /// `GET /v3/<collection>/<id>` in plain form (see [`plain`]); `None` on 404.
    async fn read(&self, collection: &str, id: &str) -> Option<Value> {
        let path = format!("/v3/{collection}/{}", urlencode(id));
        let (status, body) = self.raw_with_key(Method::GET, &path, None).await;
        match status {
            200 => Some(plain(&body)),
            404 => None,
            other => panic!("GET {path}: {other} {body}"),
        }
    }

    async fn catalog(&self, counter_party: &str) -> Value {
        let request = catalog_request(counter_party);
        let (status, catalog) = self.raw_with_key(Method::POST, "/v3/catalog/request", Some(request)).await;
        assert_eq!(status, 200, "{catalog}");
        plain(&catalog)
    }

    /// What a catalog request of this target names as the counter-party: the real EDC asks its
    /// own DSP endpoint; the double answers itself whatever the address.
    fn own_dsp_url(&self) -> String {
        match self.target {
            Target::Real => real_connectors().0.dsp_url(),
            Target::Double(_) => "https://provider.example/api/dsp".to_owned(),
        }
    }
}

fn urlencode(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>().replace('+', "%20")
}

async fn raw_at(
    ca_pem: &str,
    management_url: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> (u16, Value) {
    let http = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let mut request = http.request(method, format!("{management_url}{path}"));
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

/// EDC's answers in one form whatever their compaction: `@context` dropped, `edc:`/`odrl:` and
/// the full EDC/ODRL namespaces stripped from keys, `{"@id": x}` unwrapped, single-element
/// arrays unwrapped. Other prefixes (`oauth2:`) stay.
fn plain(value: &Value) -> Value {
    fn strip(name: &str) -> &str {
        for prefix in [EDC_NAMESPACE, "edc:", "http://www.w3.org/ns/odrl/2/", "odrl:", "dcat:", "dct:"] {
            if let Some(rest) = name.strip_prefix(prefix).filter(|r| !r.is_empty()) {
                return rest;
            }
        }
        name
    }
    match value {
        Value::Object(map) => {
            if map.len() == 1
                && let Some(inner) = map.get("@id")
            {
                return plain(inner);
            }
            Value::Object(
                map.iter().filter(|(k, _)| *k != "@context").map(|(k, v)| (strip(k).to_owned(), plain(v))).collect(),
            )
        }
        Value::Array(items) if items.len() == 1 => plain(&items[0]),
        Value::Array(items) => Value::Array(items.iter().map(plain).collect()),
        Value::String(s) => Value::String(strip(s).to_owned()),
        other => other.clone(),
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

fn summary(requests: &[LoggedRequest]) -> Vec<String> {
    requests.iter().map(|r| format!("{} {} {}", r.method, r.path, r.status)).collect()
}

fn foreign_asset_body(id: &str) -> Value {
    json!({
        "@context": {"@vocab": EDC_NAMESPACE},
        "@id": id,
        "properties": {"name": "hand-made by another team"},
        "dataAddress": {"type": "HttpData", "baseUrl": "https://data.example/api"}
    })
}

// ---------------------------------------------------------------------------------------------
// Happy path and the shape of what is stored

on_both!(offer_is_created_and_stored_as_domain_says, factoryx);
async fn offer_is_created_and_stored_as_domain_says(target: Target) {
    let s = stack(target).await;
    assert_eq!(s.ensure_offer().await, [Outcome::Created; 4]);
    let ids = &s.ids;

    let asset = s.read("assets", &ids.asset).await.expect("asset stored");
    assert_eq!(asset["dataAddress"]["type"], "Mqtt");
    assert_eq!(asset["dataAddress"]["baseUrl"], "wss://broker.factory.example/mqtt");
    assert_eq!(asset["properties"]["name"], "Line 1 telemetry");
    assert_eq!(asset["privateProperties"][OWNER_KEY], "mqtt-dsp-operator/test");
    assert_eq!(asset["privateProperties"][OWNER_RESOURCE_KEY], "MqttAsset/factory/line-1");

    let access = s.read("policydefinitions", &ids.access).await.expect("policy stored");
    assert_eq!(access["privateProperties"][OWNER_KEY], "mqtt-dsp-operator/test");
    let constraint = &access["policy"]["permission"]["constraint"];
    assert_eq!(constraint["rightOperand"], "did:web:consumer.example", "{access}");
    assert_eq!(access["policy"]["permission"]["action"], "use", "{access}");

    let cd = s.read("contractdefinitions", &ids.definition).await.expect("contract definition stored");
    assert_eq!(
        (cd["accessPolicyId"].as_str(), cd["contractPolicyId"].as_str()),
        (Some(&*ids.access), Some(&*ids.contract))
    );
    let criterion = &cd["assetsSelector"];
    // `plain` strips the EDC namespace: EDC keeps the full IRI the client sent.
    assert_eq!(criterion["operandLeft"], "id", "{cd}");
    assert_eq!(criterion["operator"], "=");
    assert_eq!(criterion["operandRight"], ids.asset.as_str());
    assert_eq!(cd["privateProperties"][OWNER_RESOURCE_KEY], "MqttAsset/factory/line-1");

    // Each create is one read that found nothing and one POST answered 200.
    if s.double().is_some() {
        assert_eq!(
            summary(&s.mutating()),
            [
                "POST /management/v3/assets 200",
                "POST /management/v3/policydefinitions 200",
                "POST /management/v3/policydefinitions 200",
                "POST /management/v3/contractdefinitions 200",
            ]
        );
    }
}

on_both!(data_address_keeps_literal_oauth2_keys_and_the_chosen_spelling, factoryx);
async fn data_address_keeps_literal_oauth2_keys_and_the_chosen_spelling(target: Target) {
    let s = stack(target).await;
    let spelling = target.spelling();
    s.client.ensure_asset(&s.asset()).await.unwrap();
    let stored = s.read("assets", &s.ids.asset).await.unwrap()["dataAddress"].clone();
    let expected = if spelling == EndpointTypeSpelling::Factoryx { "mqtt-wss-oauth2" } else { "mqtt-wss" };
    assert_eq!(stored["mqttEndpointType"], expected, "{spelling:?}");
    assert_eq!(
        stored["oauth2:tokenUrl"], "https://idp.factory.example/realms/mqtt/protocol/openid-connect/token",
        "{spelling:?}: the connector must find the literal key in {stored}"
    );
    assert_eq!(stored["oauth2:clientId"], "asset-line-1");
    assert_eq!(stored["oauth2:clientSecretKeyAlias"], "mqtt-asset-line-1-secret");
    let keys = stored.as_object().unwrap().keys();
    assert!(keys.into_iter().all(|k| !k.starts_with("http")), "{spelling:?}: no expanded key in {stored}");
}

// The reference connector's data-address validation exists only in the factoryx double.
contract_test!(basic_auth_asset_passes_the_reference_validation: factoryx_double => Target::Double(Flavour::Factoryx));
async fn basic_auth_asset_passes_the_reference_validation(target: Target) {
    let s = stack(target).await;
    let mut asset = s.asset();
    asset.data_address = object(json!({
        "type": "Mqtt",
        "baseUrl": "mqtts://broker.factory.example:8883",
        "mqttEndpointType": mqtt_endpoint_type(EndpointTypeSpelling::Factoryx, EndpointType::MqttTls, AuthMode::Usrpw),
        "username": "asset-line-1",
        "passwordAlias": "mqtt-asset-line-1-password",
    }));
    assert_eq!(s.client.ensure_asset(&asset).await.unwrap(), Outcome::Created);
    assert_eq!(s.read("assets", &s.ids.asset).await.unwrap()["dataAddress"]["mqttEndpointType"], "mqtt-tcp-basic");
}

// factoryx-edc's validation: double only.
contract_test!(factoryx_connector_rejects_the_adr_spelling_readably: factoryx_double => Target::Double(Flavour::Factoryx));
async fn factoryx_connector_rejects_the_adr_spelling_readably(target: Target) {
    let s = stack(target).await;
    let err = s.client.ensure_asset(&s.oauth2_asset(EndpointTypeSpelling::Adr)).await.unwrap_err();
    let BackendError::Rejected { status, ref message, .. } = err else { panic!("expected Rejected, got {err:?}") };
    assert_eq!(status, 400);
    let text = err.to_string();
    assert!(text.contains("mqttEndpointType"), "{text}");
    assert!(text.contains("mqtt-wss"), "{text}");
    assert!(text.contains(&format!("asset {}", s.ids.asset)), "{text}");
    assert!(!message.starts_with('['), "the JSON error array is turned into prose: {message}");
    assert!(!err.is_retryable());
    assert!(s.read("assets", &s.ids.asset).await.is_none());
}

fn trap_body(id: &str) -> Value {
    json!({
        "@context": {"@vocab": EDC_NAMESPACE, "oauth2": "https://w3id.org/factoryx/oauth2/"},
        "@id": id,
        "properties": {"name": "trap"},
        "dataAddress": {
            "type": "Mqtt",
            "baseUrl": "wss://broker.factory.example/mqtt",
            "mqttEndpointType": "mqtt-wss-oauth2",
            "oauth2:tokenUrl": "https://idp.factory.example/token",
            "oauth2:clientId": "asset-line-1",
            "oauth2:clientSecretKeyAlias": "alias"
        }
    })
}

// factoryx-edc's validation: double only.
contract_test!(a_declared_oauth2_prefix_fails_the_reference_validation: factoryx_double => Target::Double(Flavour::Factoryx));
async fn a_declared_oauth2_prefix_fails_the_reference_validation(target: Target) {
    let s = stack(target).await;
    let (status, errors) = s.raw_with_key(Method::POST, "/v3/assets", Some(trap_body(&s.ids.asset))).await;
    assert_eq!(status, 400);
    assert!(errors.to_string().contains("exactly one set of auth"), "{errors}");
}

on_both!(a_declared_oauth2_prefix_is_stored_expanded_by_a_stock_connector);
async fn a_declared_oauth2_prefix_is_stored_expanded_by_a_stock_connector(target: Target) {
    let s = stack(target).await;
    let (status, body) = s.raw_with_key(Method::POST, "/v3/assets", Some(trap_body(&s.ids.asset))).await;
    assert_eq!(status, 200, "{body}");
    let stored = s.read("assets", &s.ids.asset).await.unwrap()["dataAddress"].clone();
    assert!(stored.get("oauth2:tokenUrl").is_none(), "{stored}");
    assert_eq!(stored["https://w3id.org/factoryx/oauth2/tokenUrl"], "https://idp.factory.example/token", "{stored}");
}

// ---------------------------------------------------------------------------------------------
// Idempotency and updates

on_both!(second_identical_ensure_makes_no_write, factoryx);
async fn second_identical_ensure_makes_no_write(target: Target) {
    let s = stack(target).await;
    s.ensure_offer().await;
    s.clear_log();

    // EDC answers with its own compaction (odrl: names, {"@id"} values, an `id` property, a
    // generated policy @id): the comparison has to see through it.
    assert_eq!(s.ensure_offer().await, [Outcome::Unchanged; 4]);
    if let Some(double) = s.double() {
        assert!(s.mutating().is_empty(), "{:?}", summary(&s.mutating()));
        assert_eq!(double.server.log.all().len(), 4, "one GET per object");
    }
}

on_both!(changed_objects_are_updated_once_each, factoryx);
async fn changed_objects_are_updated_once_each(target: Target) {
    let s = stack(target).await;
    s.ensure_offer().await;
    s.clear_log();

    let mut asset = s.asset();
    asset.data_address.insert("baseUrl".into(), json!("wss://broker2.factory.example/mqtt"));
    asset.properties.insert("description".into(), json!("now with a description"));
    assert_eq!(s.client.ensure_asset(&asset).await.unwrap(), Outcome::Updated);
    let changed = policy(&s.ids.contract, "did:web:other.example");
    assert_eq!(s.client.ensure_policy(&changed).await.unwrap(), Outcome::Updated);
    let mut cd = s.definition();
    cd.access_policy_id = s.ids.contract.clone();
    assert_eq!(s.client.ensure_contract_definition(&cd).await.unwrap(), Outcome::Updated);

    if s.double().is_some() {
        assert_eq!(
            summary(&s.mutating()),
            [
                "PUT /management/v3/assets 204".to_owned(),
                format!("PUT /management/v3/policydefinitions/{} 204", s.ids.contract),
                "PUT /management/v3/contractdefinitions 204".to_owned(),
            ]
        );
    }
    let stored = s.read("assets", &s.ids.asset).await.unwrap();
    assert_eq!(stored["dataAddress"]["baseUrl"], "wss://broker2.factory.example/mqtt");
    assert_eq!(stored["properties"]["description"], "now with a description");
    assert_eq!(stored["privateProperties"][OWNER_KEY], "mqtt-dsp-operator/test", "an update keeps the marker");
    let stored = s.read("policydefinitions", &s.ids.contract).await.unwrap();
    assert_eq!(stored["policy"]["permission"]["constraint"]["rightOperand"], "did:web:other.example", "{stored}");
    let stored = s.read("contractdefinitions", &s.ids.definition).await.unwrap();
    assert_eq!(stored["accessPolicyId"], s.ids.contract.as_str());

    s.clear_log();
    assert_eq!(s.client.ensure_asset(&asset).await.unwrap(), Outcome::Unchanged);
    assert_eq!(s.client.ensure_policy(&changed).await.unwrap(), Outcome::Unchanged);
    assert_eq!(s.client.ensure_contract_definition(&cd).await.unwrap(), Outcome::Unchanged);
    assert!(s.mutating().is_empty());
}

// Double only: losing the race needs the double's hook that hides an object from one read.
contract_test!(a_lost_create_race_reads_compares_and_updates: factoryx_double => Target::Double(Flavour::Factoryx));
async fn a_lost_create_race_reads_compares_and_updates(target: Target) {
    let s = stack(target).await;
    let double = s.double().unwrap();
    let asset_id = s.ids.asset.clone();
    s.client.ensure_asset(&s.asset()).await.unwrap();
    s.clear_log();
    // Someone else created it between our read and our create: the read says 404, POST says 409.
    double.state.hide_from_next_get(&asset_id);
    let mut asset = s.asset();
    asset.properties.insert("name".into(), json!("renamed"));

    assert_eq!(s.client.ensure_asset(&asset).await.unwrap(), Outcome::Updated);
    assert_eq!(
        summary(&double.server.log.all()),
        [
            format!("GET /management/v3/assets/{asset_id} 404"),
            "POST /management/v3/assets 409".to_owned(),
            format!("GET /management/v3/assets/{asset_id} 200"),
            "PUT /management/v3/assets 204".to_owned(),
        ]
    );
    assert_eq!(s.read("assets", &asset_id).await.unwrap()["properties"]["name"], "renamed");
}

// ---------------------------------------------------------------------------------------------
// Failures

on_both!(wrong_api_key_is_unauthorized_and_never_shown);
async fn wrong_api_key_is_unauthorized_and_never_shown(target: Target) {
    let s = stack(target).await;
    let secret = "wrong-key-that-must-never-leak-7f3a";
    let bad = client(&s.ca_pem, &s.management_url, secret, Duration::from_secs(5));
    let err = bad.ensure_asset(&s.asset()).await.unwrap_err();
    assert!(matches!(err, BackendError::Unauthorized { status: 401, .. }), "{err:?}");
    assert!(!err.is_retryable());
    for text in [err.to_string(), format!("{err:?}"), format!("{bad:?}")] {
        assert!(!text.contains(secret), "{text}");
    }
    assert!(s.read("assets", &s.ids.asset).await.is_none());

    // EDC's error array, with a wrong key or none.
    let path = format!("/v3/assets/{}", s.ids.asset);
    let (status, body) = s.raw(Method::GET, &path, None, Some(secret)).await;
    assert_eq!((status, body[0]["type"].as_str()), (401, Some("AuthenticationFailed")), "{body}");
    assert_eq!(body[0]["message"], "Request could not be authenticated");
    let (status, body) = s.raw(Method::GET, &path, None, None).await;
    assert_eq!((status, body[0]["type"].as_str()), (401, Some("AuthenticationFailed")), "{body}");
    assert_eq!(body[0]["message"], "x-api-key not found");
}

on_both!(errors_never_contain_the_api_key, factoryx);
async fn errors_never_contain_the_api_key(target: Target) {
    let s = stack(target).await;
    let mut errors = Vec::new();
    let mut untyped = s.asset();
    untyped.data_address.remove("type");
    errors.push(s.client.ensure_asset(&untyped).await.unwrap_err());
    if let Some(double) = s.double() {
        double.server.faults.fail_next(1, 503);
        errors.push(s.client.ensure_asset(&s.asset()).await.unwrap_err());
    }
    let wrong_url = format!("{}/not-management", s.server_url);
    errors.push(
        client(&s.ca_pem, &wrong_url, &s.api_key, Duration::from_secs(5))
            .delete_asset(&s.ids.asset, &owner())
            .await
            .unwrap_err(),
    );
    for err in &errors {
        let text = format!("{err} {err:?}");
        assert!(!text.contains(&s.api_key), "{text}");
    }
    let first = errors[0].to_string();
    assert!(first.contains("dataAddress") && first.contains("type"), "{first}");
}

on_both!(a_wrong_management_url_is_an_error_not_an_absent_object);
async fn a_wrong_management_url_is_an_error_not_an_absent_object(target: Target) {
    let s = stack(target).await;
    let wrong = client(&s.ca_pem, &format!("{}/api", s.server_url), &s.api_key, Duration::from_secs(5));
    let err = wrong.delete_asset(&s.ids.asset, &owner()).await.unwrap_err();
    assert!(matches!(err, BackendError::Rejected { status: 404, .. }), "{err:?}");
    assert!(err.to_string().contains("managementUrl"), "{err}");
    let err = wrong.ensure_asset(&s.asset()).await.unwrap_err();
    assert!(matches!(err, BackendError::Rejected { status: 404, .. }), "{err:?}");
}

// Double only: fault injection.
contract_test!(server_errors_are_retryable: double => Target::Double(Flavour::Stock));
async fn server_errors_are_retryable(target: Target) {
    let s = stack(target).await;
    s.double().unwrap().server.faults.fail_next(1, 503);
    let err = s.client.ensure_asset(&s.asset()).await.unwrap_err();
    assert!(matches!(err, BackendError::Unavailable { status: 503, .. }), "{err:?}");
    assert!(err.is_retryable());
    // The retry succeeds.
    assert_eq!(s.client.ensure_asset(&s.asset()).await.unwrap(), Outcome::Created);
}

// Double only: fault injection.
contract_test!(a_stalled_connector_times_out: double => Target::Double(Flavour::Stock));
async fn a_stalled_connector_times_out(target: Target) {
    let s = stack(target).await;
    let impatient = client(&s.ca_pem, &s.management_url, &s.api_key, Duration::from_secs(1));
    s.double().unwrap().server.faults.stall(true);
    let started = Instant::now();
    let err = impatient.ensure_asset(&s.asset()).await.unwrap_err();
    assert!(matches!(err, BackendError::Timeout { timeout_seconds: 1, .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Ownership

on_both!(a_foreign_asset_is_neither_updated_nor_deleted);
async fn a_foreign_asset_is_neither_updated_nor_deleted(target: Target) {
    let s = stack(target).await;
    let (status, body) = s.raw_with_key(Method::POST, "/v3/assets", Some(foreign_asset_body(&s.ids.asset))).await;
    assert_eq!(status, 200, "{body}");
    let before = s.read("assets", &s.ids.asset).await.unwrap();
    s.clear_log();

    let err = s.client.ensure_asset(&s.asset()).await.unwrap_err();
    assert!(matches!(err, BackendError::Foreign { operation: "update", .. }), "{err:?}");
    let err = s.client.delete_asset(&s.ids.asset, &owner()).await.unwrap_err();
    assert!(matches!(err, BackendError::Foreign { operation: "delete", .. }), "{err:?}");
    assert!(err.to_string().contains(&s.ids.asset), "{err}");

    assert!(s.mutating().is_empty(), "{:?}", summary(&s.mutating()));
    assert_eq!(s.read("assets", &s.ids.asset).await.unwrap(), before);
}

on_both!(another_resources_objects_are_refused_too);
async fn another_resources_objects_are_refused_too(target: Target) {
    let s = stack(target).await;
    s.client.ensure_policy(&policy(&s.ids.access, "did:web:a")).await.unwrap();
    let mut theirs = policy(&s.ids.access, "did:web:b");
    theirs.owner.name = "line-2".into();
    s.clear_log();
    let err = s.client.ensure_policy(&theirs).await.unwrap_err();
    assert!(matches!(err, BackendError::Foreign { .. }), "{err:?}");
    assert!(err.to_string().contains("MqttAsset/factory/line-1"), "{err}");
    let err = s.client.delete_policy(&s.ids.access, &theirs.owner).await.unwrap_err();
    assert!(matches!(err, BackendError::Foreign { .. }), "{err:?}");
    assert!(s.mutating().is_empty());
    let stored = s.read("policydefinitions", &s.ids.access).await.unwrap();
    assert_eq!(stored["policy"]["permission"]["constraint"]["rightOperand"], "did:web:a");
}

on_both!(deleting_absent_objects_is_absent);
async fn deleting_absent_objects_is_absent(target: Target) {
    let s = stack(target).await;
    assert_eq!(s.client.delete_contract_definition(&s.ids.definition, &owner()).await.unwrap(), Outcome::Absent);
    assert_eq!(s.client.delete_policy(&s.ids.access, &owner()).await.unwrap(), Outcome::Absent);
    assert_eq!(s.client.delete_asset(&s.ids.asset, &owner()).await.unwrap(), Outcome::Absent);
    s.client.teardown(&s.offer_ids(), &owner()).await.unwrap();
    assert!(s.mutating().is_empty(), "{:?}", summary(&s.mutating()));
}

// ---------------------------------------------------------------------------------------------
// Teardown and references

on_both!(teardown_deletes_contract_definition_then_policies_then_asset, factoryx);
async fn teardown_deletes_contract_definition_then_policies_then_asset(target: Target) {
    let s = stack(target).await;
    s.ensure_offer().await;
    s.clear_log();

    // The order is what makes it work on a real EDC: a referenced policy is not deletable.
    s.client.teardown(&s.offer_ids(), &owner()).await.unwrap();
    if s.double().is_some() {
        assert_eq!(
            summary(&s.mutating()),
            [
                format!("DELETE /management/v3/contractdefinitions/{} 204", s.ids.definition),
                format!("DELETE /management/v3/policydefinitions/{} 204", s.ids.access),
                format!("DELETE /management/v3/policydefinitions/{} 204", s.ids.contract),
                format!("DELETE /management/v3/assets/{} 204", s.ids.asset),
            ]
        );
    }
    assert!(s.read("contractdefinitions", &s.ids.definition).await.is_none());
    assert!(s.read("policydefinitions", &s.ids.access).await.is_none());
    assert!(s.read("policydefinitions", &s.ids.contract).await.is_none());
    assert!(s.read("assets", &s.ids.asset).await.is_none());
}

// Double only: an agreement on the real EDC needs a whole contract negotiation between two
// connectors (not written yet), and the exact sequence of deletes is read from the request log.
contract_test!(an_asset_under_agreement_is_in_use_and_nothing_is_deleted_after_it: factoryx_double => Target::Double(Flavour::Factoryx));
async fn an_asset_under_agreement_is_in_use_and_nothing_is_deleted_after_it(target: Target) {
    let s = stack(target).await;
    let double = s.double().unwrap();
    s.ensure_offer().await;
    double.state.add_agreement(&s.ids.asset);
    s.clear_log();

    let err = s.client.teardown(&s.offer_ids(), &owner()).await.unwrap_err();
    assert!(matches!(err, BackendError::InUse { operation: "delete", .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("contract agreement"), "{err}");
    let deletes = s.mutating();
    let last = deletes.last().unwrap();
    assert_eq!((last.method.as_str(), last.status), ("DELETE", 409));
    assert!(last.path.starts_with("/management/v3/assets/"), "{:?}", summary(&deletes));
    assert_eq!(deletes.len(), 4, "contract definition, two policies, then the asset: {:?}", summary(&deletes));
    assert!(s.read("assets", &s.ids.asset).await.is_some());

    // Retrying changes nothing and deletes nothing else.
    s.clear_log();
    let err = s.client.teardown(&s.offer_ids(), &owner()).await.unwrap_err();
    assert!(matches!(err, BackendError::InUse { .. }), "{err:?}");
    assert_eq!(summary(&s.mutating()), [format!("DELETE /management/v3/assets/{} 409", s.ids.asset)]);
}

on_both!(a_policy_referenced_by_a_contract_definition_is_in_use, factoryx);
async fn a_policy_referenced_by_a_contract_definition_is_in_use(target: Target) {
    let s = stack(target).await;
    s.ensure_offer().await;
    let err = s.client.delete_policy(&s.ids.access, &owner()).await.unwrap_err();
    assert!(matches!(err, BackendError::InUse { .. }), "{err:?}");
    assert!(err.to_string().contains("referenced by at least one contract definition"), "{err}");
    assert!(s.read("policydefinitions", &s.ids.access).await.is_some());
    // In the right order it goes.
    assert_eq!(s.client.delete_contract_definition(&s.ids.definition, &owner()).await.unwrap(), Outcome::Deleted);
    assert_eq!(s.client.delete_policy(&s.ids.access, &owner()).await.unwrap(), Outcome::Deleted);
}

// ---------------------------------------------------------------------------------------------
// Catalog

fn catalog_request(counter_party: &str) -> Value {
    json!({
        "@context": {"@vocab": EDC_NAMESPACE},
        "@type": "CatalogRequest",
        "counterPartyAddress": counter_party,
        "protocol": DSP_PROTOCOL
    })
}

/// The datasets of a catalog in plain form (a single one unwrapped or not).
fn datasets(catalog: &Value) -> Vec<Value> {
    match &catalog["dataset"] {
        Value::Array(items) => items.clone(),
        Value::Null => vec![],
        single => vec![single.clone()],
    }
}

fn dataset(catalog: &Value, id: &str) -> Option<Value> {
    datasets(catalog).into_iter().find(|d| d["@id"] == id)
}

fn formats(dataset: &Value) -> Vec<String> {
    let distributions = match &dataset["distribution"] {
        Value::Array(items) => items.clone(),
        Value::Null => vec![],
        single => vec![single.clone()],
    };
    distributions.iter().map(|d| d["format"].as_str().unwrap_or_default().to_owned()).collect()
}

// The factoryx-edc MQTT extension's distributions: double only.
contract_test!(catalog_lists_the_asset_with_an_mqtt_pull_distribution: factoryx_double => Target::Double(Flavour::Factoryx));
async fn catalog_lists_the_asset_with_an_mqtt_pull_distribution(target: Target) {
    let s = stack(target).await;
    s.ensure_offer().await;
    // An asset without a contract definition is not offered.
    let unoffered = json!({
        "@context": {"@vocab": EDC_NAMESPACE}, "@id": "unoffered", "properties": {},
        "dataAddress": {"type": "HttpData", "baseUrl": "https://data.example"}
    });
    assert_eq!(s.raw_with_key(Method::POST, "/v3/assets", Some(unoffered)).await.0, 200);

    let catalog = s.catalog(&s.own_dsp_url()).await;
    assert_eq!(catalog["@type"], "Catalog");
    assert!(dataset(&catalog, "unoffered").is_none(), "{catalog}");
    let dataset = dataset(&catalog, &s.ids.asset).expect("our dataset");
    assert_eq!(formats(&dataset), ["Mqtt-PULL", "HttpData-PULL"]);
    let offer = &dataset["hasPolicy"];
    assert_eq!(offer["@type"], "Offer");
    assert_eq!(offer["permission"]["constraint"]["rightOperand"], "did:web:consumer.example");
}

on_both!(stock_catalog_offers_mqtt_pull_only_through_a_registered_data_plane);
async fn stock_catalog_offers_mqtt_pull_only_through_a_registered_data_plane(target: Target) {
    let s = stack(target).await;
    s.ensure_offer().await;
    let unoffered = foreign_asset_body(&format!("{}-unoffered", s.ids.asset));
    assert_eq!(s.raw_with_key(Method::POST, "/v3/assets", Some(unoffered)).await.0, 200);

    let catalog = s.catalog(&s.own_dsp_url()).await;
    assert!(dataset(&catalog, &format!("{}-unoffered", s.ids.asset)).is_none(), "{catalog}");
    let ours = dataset(&catalog, &s.ids.asset).unwrap_or_else(|| panic!("our dataset in {catalog}"));
    let offer = &ours["hasPolicy"];
    assert_eq!(offer["@type"], "Offer", "{ours}");
    assert_eq!(offer["permission"]["constraint"]["rightOperand"], "did:web:consumer.example", "{ours}");
    let before = formats(&ours);

    match &s.double {
        Some(double) => double.state.register_data_plane(DataPlane {
            allowed_source_types: vec!["Mqtt".into()],
            allowed_transfer_types: vec!["Mqtt-PULL".into()],
        }),
        // Registered on the control API (legacy signaling); the catalog lists every registered
        // plane's transfer types, available or not, so no data plane has to answer.
        None => register_data_plane(real_connectors().0).await,
    }
    let catalog = s.catalog(&s.own_dsp_url()).await;
    let ours = dataset(&catalog, &s.ids.asset).unwrap();
    assert_eq!(formats(&ours), ["Mqtt-PULL"], "{ours}");
    // Before: nothing, unless another test of this binary registered the plane first.
    assert!(before.is_empty() || before == ["Mqtt-PULL"], "{before:?}");
}

async fn register_data_plane(edc: &Edc) {
    let http = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(TestCa::shared().cert_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let body = json!({
        "@context": {"@vocab": EDC_NAMESPACE},
        "@id": "mqtt-data-plane",
        "url": "https://127.0.0.1:9/signaling",
        "allowedSourceTypes": ["Mqtt"],
        "allowedTransferTypes": ["Mqtt-PULL"]
    });
    let response = http.post(format!("{}/v1/dataplanes", edc.control_url)).json(&body).send().await.unwrap();
    let status = response.status();
    assert!(status.is_success(), "{status}: {}", response.text().await.unwrap_or_default());
}

/// A second real EDC (the consumer) asks the provider for its catalog over DSP 2025-1, as a
/// dataspace participant would, and finds our offer.
#[tokio::test]
async fn a_consumer_edc_sees_the_offer_in_the_providers_catalog_over_dsp() {
    let s = stack(Target::Real).await;
    s.ensure_offer().await;
    let (provider, consumer) = real_connectors();
    let catalog = raw_at(
        &s.ca_pem,
        &consumer.management_url,
        Method::POST,
        "/v3/catalog/request",
        Some(catalog_request(&provider.dsp_url())),
        Some(&consumer.api_key),
    )
    .await;
    assert_eq!(catalog.0, 200, "{}", catalog.1);
    let catalog = plain(&catalog.1);
    assert_eq!(catalog["participantId"], provider.participant_id.as_str(), "{catalog}");
    let ours = dataset(&catalog, &s.ids.asset).unwrap_or_else(|| panic!("our dataset in {catalog}"));
    assert_eq!(ours["name"], "Line 1 telemetry", "{ours}");
    assert_eq!(ours["hasPolicy"]["permission"]["constraint"]["rightOperand"], "did:web:consumer.example", "{ours}");
}

/// Stock EDC with policy validation on (its default; the consumer runs so) refuses a constraint
/// whose left operand no extension binds, readably.
#[tokio::test]
async fn stock_policy_validation_refuses_unbound_left_operands_readably() {
    mqtt_dsp_operator::install_crypto_provider();
    e2e::logs::init();
    let (_, consumer) = real_connectors();
    let ca_pem = TestCa::shared().cert_pem();
    let strict = client(&ca_pem, &consumer.management_url, &consumer.api_key, Duration::from_secs(10));
    let id = format!("validated-{}", uuid::Uuid::new_v4().simple());
    let err = strict.ensure_policy(&policy(&id, "did:web:x")).await.unwrap_err();
    assert!(matches!(err, BackendError::Rejected { status: 400, .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("BusinessPartnerDID") && text.contains("not bound to any scopes"), "{text}");
    let BackendError::Rejected { message, .. } = &err else { unreachable!() };
    assert!(!message.starts_with('['), "prose, not the JSON array: {message}");
}

// ---------------------------------------------------------------------------------------------
// Refusals (a lenient double would make every test above worthless; the real EDC shows the
// double is strict in the same places and with the same answers)

on_both!(edc_refuses_malformed_objects);
async fn edc_refuses_malformed_objects(target: Target) {
    let s = stack(target).await;
    let id = &s.ids.asset;
    let post = |path: &'static str, body: Value| s.raw_with_key(Method::POST, path, Some(body));

    let mut no_context = foreign_asset_body(id);
    no_context.as_object_mut().unwrap().remove("@context");
    let (status, body) = post("/v3/assets", no_context).await;
    assert_eq!(status, 400);
    assert!(!body.is_array(), "no @context fails before any validator: {body}");

    let mut no_type = foreign_asset_body(id);
    no_type["dataAddress"].as_object_mut().unwrap().remove("type");
    let (status, body) = post("/v3/assets", no_type).await;
    assert_eq!((status, body[0]["type"].as_str()), (400, Some("ValidationFailure")), "{body}");
    assert_eq!(
        body[0]["path"], "https://w3id.org/edc/v0.0.1/ns/dataAddress/https://w3id.org/edc/v0.0.1/ns/type",
        "{body}"
    );

    assert_eq!(post("/v3/assets", foreign_asset_body(id)).await.0, 200);
    let (status, body) = post("/v3/assets", foreign_asset_body(id)).await;
    assert_eq!((status, body[0]["type"].as_str()), (409, Some("ObjectConflict")), "{body}");
    assert_eq!(body[0]["message"], format!("Asset with ID {id} already exists"));

    let bad_policy = json!({"@context": {"@vocab": EDC_NAMESPACE}, "@id": s.ids.access, "policy": {"@type": "Set"}});
    let (status, body) = post("/v3/policydefinitions", bad_policy).await;
    assert_eq!(status, 400, "a bare Set without the ODRL context is edc:Set: {body}");
    assert_eq!(body[0]["path"], "https://w3id.org/edc/v0.0.1/ns/policy/@type", "{body}");

    let good_policy = json!({"@context": {"@vocab": EDC_NAMESPACE}, "@id": s.ids.access,
        "policy": {"@context": "http://www.w3.org/ns/odrl.jsonld", "@type": "Set", "permission": [{"action": "use"}]}});
    assert_eq!(post("/v3/policydefinitions", good_policy.clone()).await.0, 200);
    let (status, body) = post("/v3/policydefinitions", good_policy).await;
    assert_eq!(
        (status, body[0]["message"].as_str()),
        (409, Some(&*format!("Policy with ID {} already exists", s.ids.access)))
    );
    let definition = json!({"@context": {"@vocab": EDC_NAMESPACE}, "@id": s.ids.definition,
        "accessPolicyId": s.ids.access, "contractPolicyId": s.ids.access,
        // Never an empty selector on the shared EDC: it would offer every other test's assets.
        "assetsSelector": [{"operandLeft": format!("{EDC_NAMESPACE}id"), "operator": "=", "operandRight": id}]});
    assert_eq!(post("/v3/contractdefinitions", definition.clone()).await.0, 200);
    let (status, body) = post("/v3/contractdefinitions", definition).await;
    let expected = format!("Contract Definition with ID {} already exists", s.ids.definition);
    assert_eq!((status, body[0]["message"].as_str()), (409, Some(&*expected)));

    let no_action = json!({"@context": {"@vocab": EDC_NAMESPACE}, "@id": format!("{}-2", s.ids.access),
        "policy": {"@context": "http://www.w3.org/ns/odrl.jsonld", "@type": "Set", "permission": [{"constraint": []}]}});
    assert_eq!(post("/v3/policydefinitions", no_action).await.0, 400);

    let no_policy_ids =
        json!({"@context": {"@vocab": EDC_NAMESPACE}, "@id": format!("{}-2", s.ids.definition), "assetsSelector": []});
    let (status, body) = post("/v3/contractdefinitions", no_policy_ids).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body.as_array().map(Vec::len), Some(2), "both policy ids are named: {body}");

    let (status, body) = s.raw_with_key(Method::GET, "/v3/assets/nope-never-made", None).await;
    assert_eq!((status, body[0]["type"].as_str()), (404, Some("ObjectNotFound")));
    assert_eq!(body[0]["message"], "Object of type Asset with ID=nope-never-made was not found");
    let (status, body) = s.raw_with_key(Method::GET, "/v3/nothing-here", None).await;
    assert_eq!(status, 404);
    assert!(!body.is_array(), "an unknown route has no error array: {body}");
    let empty_request = json!({"@context": {"@vocab": EDC_NAMESPACE}});
    let (status, body) = s.raw_with_key(Method::POST, "/v3/catalog/request", Some(empty_request)).await;
    assert_eq!(status, 400);
    assert!(!body.is_array(), "EDC does not validate a v3 catalog request, it fails: {body}");
    // Updating what does not exist: 404 in the error array (EDC 0.15.1 names `ID=null` here).
    let missing = json!({"@context": {"@vocab": EDC_NAMESPACE}, "@id": format!("{}-missing", s.ids.definition),
        "accessPolicyId": "a", "contractPolicyId": "b"});
    let (status, body) = s.raw_with_key(Method::PUT, "/v3/contractdefinitions", Some(missing)).await;
    assert_eq!((status, body[0]["type"].as_str()), (404, Some("ObjectNotFound")), "{body}");
}

/// Both real connectors stay within a test-sized footprint (heap capped at 256 MiB); the numbers
/// are printed for docs/dev-stack.md.
#[tokio::test]
async fn real_edcs_start_in_time_and_stay_small() {
    let (provider, consumer) = real_connectors();
    for edc in [provider, consumer] {
        let rss_mib = edc.rss_kib().expect("the JVM's RSS") / 1024;
        println!(
            "EDC {} {}: started in {:.1} s, RSS {rss_mib} MiB",
            edc.name,
            edc.version,
            edc.start_time.as_secs_f32()
        );
        assert!(rss_mib < 640, "{}: {rss_mib} MiB", edc.name);
        assert!(edc.start_time < std::time::Duration::from_secs(120));
    }
}
