//! The dev stack's `default` connector: the real EDC control plane of this test binary
//! ([`crate::systems::edc`], one instance shared by every stack of the binary) behind a proxy of
//! the stack's own ([`crate::systems::proxy`]), so that each stack has its own request log and
//! fault switches while the connector is real.
//!
//! Tests inspect the connector as its administrator would, through the Management API directly
//! (never through the proxy, so inspection leaves no trace in the log the tests assert on). The
//! EDC is shared, so what a stack sees is narrowed to its own objects: ids that start with the
//! stack's namespace (the operator derives ids from `<namespace>-<name>`), or whose owner marker
//! names a resource in that namespace.
//!
//! Answers come in EDC's own compaction (`edc:`/`odrl:` prefixes, `{"@id": …}` values, single
//! elements unwrapped); [`plain`] brings them to the shape the operator sent, so that tests read
//! `policy["permission"][0]["constraint"][0]["rightOperand"]` whatever EDC made of it. Keys are
//! only stripped of the `edc:`/`odrl:` prefixes: a key EDC stored expanded to another IRI stays
//! visible as `http…`.

use std::time::Duration;

use mqtt_dsp_operator::backends::OWNER_RESOURCE_KEY;
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::doubles::DoubleServer;
use crate::doubles::edc::{Criterion, StoredAsset, StoredContractDefinition, StoredPolicy};
use crate::systems::edc::{self, DSP_PROTOCOL, Edc, EdcOptions};
use crate::systems::proxy;
use crate::tls::TestCa;

/// The EDC vocabulary.
pub const EDC_NAMESPACE: &str = "https://w3id.org/edc/v0.0.1/ns/";
const ODRL_NAMESPACE: &str = "http://www.w3.org/ns/odrl/2/";
/// The shared control plane the stacks of a test binary use as their `default` connector.
pub const PROVIDER: &str = "dev-stack";
/// A second control plane, started only when a test needs a contract agreement (a consumer
/// negotiates one with [`PROVIDER`]).
pub const CONSUMER: &str = "dev-stack-consumer";
/// The provider connector of stacks with [`crate::stack::StackOptions::participant_policies`]:
/// another instance, which evaluates participant constraints in its catalog.
pub const ENFORCING_PROVIDER: &str = "dev-stack-enforcing";
/// ODRL keys whose value is a list in what the operator sends (EDC unwraps single elements).
const LISTS: &[&str] = &["permission", "prohibition", "obligation", "constraint", "and", "or", "xone", "duty"];
/// Far more than a test stack makes; EDC's default page is 50.
const PAGE: u32 = 10_000;

/// The stack's `default` connector: the real EDC behind the stack's proxy.
pub struct StackEdc {
    /// The proxy the operator talks to: its request log and fault switches.
    pub server: DoubleServer,
    /// The Management API through the proxy (what the operator is configured with).
    pub management_url: String,
    /// The Management API's `X-Api-Key`.
    pub api_key: String,
    /// The real control plane.
    pub edc: &'static Edc,
    namespace: String,
}

impl StackEdc {
    /// The binary's shared EDC (started on first use; [`ENFORCING_PROVIDER`] with
    /// `participant_policies`, else [`PROVIDER`]) behind a new proxy; objects of `namespace` are
    /// this stack's.
    pub async fn start(ca: &TestCa, namespace: &str, participant_policies: bool) -> StackEdc {
        let edc = if participant_policies {
            let mut options = EdcOptions::named(ENFORCING_PROVIDER);
            options.participant_policies = true;
            shared_with(options).await
        } else {
            shared(PROVIDER).await
        };
        let upstream = edc.management_url.trim_end_matches("/management");
        let server = proxy::start(upstream, ca).await.expect("the EDC proxy");
        let management_url = format!("{}/management", server.base_url);
        StackEdc { server, management_url, api_key: edc.api_key.clone(), edc, namespace: namespace.to_owned() }
    }

    /// A Management API call straight to the EDC (not through the proxy): status and JSON body.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        call(self.edc, method, path, body).await
    }

    /// The asset `id`, if the connector has it.
    pub async fn asset(&self, id: &str) -> Option<StoredAsset> {
        self.read("assets", id).await.map(|v| asset(&v))
    }

    /// This stack's assets.
    pub async fn assets(&self) -> Vec<StoredAsset> {
        self.list("assets").await.iter().map(asset).collect()
    }

    /// The policy definition `id`, if the connector has it.
    pub async fn policy(&self, id: &str) -> Option<StoredPolicy> {
        self.read("policydefinitions", id).await.map(|v| policy(&v))
    }

    /// This stack's policy definitions.
    pub async fn policies(&self) -> Vec<StoredPolicy> {
        self.list("policydefinitions").await.iter().map(policy).collect()
    }

    /// The contract definition `id`, if the connector has it.
    pub async fn contract_definition(&self, id: &str) -> Option<StoredContractDefinition> {
        self.read("contractdefinitions", id).await.map(|v| contract_definition(&v))
    }

    /// This stack's contract definitions.
    pub async fn contract_definitions(&self) -> Vec<StoredContractDefinition> {
        self.list("contractdefinitions").await.iter().map(contract_definition).collect()
    }

    /// The dataset `asset_id` as a consumer's connector receives it from this connector's DSP
    /// catalog (the EDC asks its own DSP endpoint, over HTTPS), in [`plain`] form; `None` when
    /// it is not offered.
    pub async fn offered(&self, asset_id: &str) -> Option<Value> {
        let request = json!({
            "@context": {"@vocab": EDC_NAMESPACE},
            "@type": "CatalogRequest",
            "counterPartyAddress": self.edc.dsp_url(),
            "protocol": DSP_PROTOCOL,
            "querySpec": {"limit": PAGE},
        });
        let (status, catalog) = self.call(Method::POST, "/v3/catalog/request", Some(request)).await;
        assert_eq!(status, 200, "catalog request: {catalog}");
        let catalog = plain(&catalog);
        let datasets = match &catalog["dataset"] {
            Value::Array(items) => items.clone(),
            Value::Null => Vec::new(),
            one => vec![one.clone()],
        };
        datasets.into_iter().find(|d| d["@id"] == asset_id)
    }

    /// Makes a real contract agreement on `asset_id`: a consumer EDC ([`CONSUMER`], started on
    /// first use) takes the offer from this connector's catalog over DSP and negotiates it; returns
    /// once this connector holds the agreement (from then on EDC refuses to delete the asset).
    pub async fn add_agreement(&self, asset_id: &str) {
        let consumer = shared(CONSUMER).await;
        let request = json!({
            "@context": {"@vocab": EDC_NAMESPACE},
            "@type": "CatalogRequest",
            "counterPartyAddress": self.edc.dsp_url(),
            "counterPartyId": self.edc.participant_id,
            "protocol": DSP_PROTOCOL,
            "querySpec": {"filterExpression": [{"operandLeft": format!("{EDC_NAMESPACE}id"), "operator": "=", "operandRight": asset_id}]},
        });
        let (status, catalog) = call(consumer, Method::POST, "/v3/catalog/request", Some(request)).await;
        assert_eq!(status, 200, "the consumer's catalog request: {catalog}");
        let dataset = one(key(&catalog, "dataset")).unwrap_or_else(|| panic!("{asset_id} in the catalog: {catalog}"));
        let mut offer = one(key(dataset, "hasPolicy")).unwrap_or_else(|| panic!("an offer in {dataset}")).clone();
        // The offer as the catalog has it (DSP 2025-1 compaction: ODRL's terms unprefixed, EDC's
        // own `edc:`), read with ODRL's context, and with who offers what, as DSP wants it back.
        offer["@context"] = json!("http://www.w3.org/ns/odrl.jsonld");
        offer["assigner"] = json!(self.edc.participant_id);
        offer["target"] = json!(asset_id);
        let negotiation = json!({
            "@context": {"@vocab": EDC_NAMESPACE, "edc": EDC_NAMESPACE},
            "@type": "ContractRequest",
            "counterPartyAddress": self.edc.dsp_url(),
            "protocol": DSP_PROTOCOL,
            "policy": offer,
        });
        let (status, started) = call(consumer, Method::POST, "/v3/contractnegotiations", Some(negotiation)).await;
        assert_eq!(status, 200, "the consumer starts the negotiation: {started}\ncatalog: {catalog}");
        let id = started["@id"].as_str().expect("a negotiation id").to_owned();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let query = json!({"@context": {"@vocab": EDC_NAMESPACE}, "@type": "QuerySpec", "limit": PAGE});
            let (status, agreements) = self.call(Method::POST, "/v3/contractagreements/request", Some(query)).await;
            assert_eq!(status, 200, "{agreements}");
            let agreements = plain(&agreements);
            if agreements.as_array().into_iter().flatten().any(|a| a["assetId"] == asset_id) {
                return;
            }
            let (_, state) = call(consumer, Method::GET, &format!("/v3/contractnegotiations/{id}"), None).await;
            let state = plain(&state);
            assert!(
                tokio::time::Instant::now() < deadline && state["state"] != "TERMINATED",
                "no agreement on {asset_id} within 60 s; the consumer's negotiation: {state}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn read(&self, collection: &str, id: &str) -> Option<Value> {
        let path = format!("/v3/{collection}/{}", urlencode(id));
        match self.call(Method::GET, &path, None).await {
            (200, body) => Some(plain(&body)),
            (404, _) => None,
            (status, body) => panic!("GET {path}: {status} {body}"),
        }
    }

    /// Every object of `collection` that is this stack's.
    async fn list(&self, collection: &str) -> Vec<Value> {
        let query = json!({"@context": {"@vocab": EDC_NAMESPACE}, "@type": "QuerySpec", "limit": PAGE});
        let (status, body) = self.call(Method::POST, &format!("/v3/{collection}/request"), Some(query)).await;
        assert_eq!(status, 200, "POST /v3/{collection}/request: {body}");
        let prefix = format!("{}-", self.namespace);
        let resource = format!("/{}/", self.namespace);
        body.as_array()
            .into_iter()
            .flatten()
            .map(plain)
            .filter(|o| {
                o["@id"].as_str().is_some_and(|id| id.starts_with(&prefix))
                    || o["privateProperties"][OWNER_RESOURCE_KEY].as_str().is_some_and(|r| r.contains(&resource))
            })
            .collect()
    }
}

async fn shared(name: &'static str) -> &'static Edc {
    shared_with(EdcOptions::named(name)).await
}

async fn shared_with(options: EdcOptions) -> &'static Edc {
    tokio::task::spawn_blocking(move || edc::shared(&[options]))
        .await
        .expect("start-up task")
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0)
}

async fn call(edc: &Edc, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let ca = reqwest::Certificate::from_pem(TestCa::shared().cert_pem().as_bytes()).expect("the CA's PEM");
    let http = reqwest::Client::builder().tls_certs_only([ca]).build().expect("an HTTPS client");
    let mut request = http
        .request(method.clone(), format!("{}{path}", edc.management_url))
        .header("X-Api-Key", &edc.api_key)
        .timeout(Duration::from_secs(30));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn urlencode(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>().replace('+', "%20")
}

/// The value of `name` in `object`, however EDC prefixed the key.
fn key<'a>(object: &'a Value, name: &str) -> &'a Value {
    object
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| strip(k) == name || k.rsplit(['/', '#', ':']).next() == Some(name)))
        .map_or(&Value::Null, |(_, v)| v)
}

/// The one element of an unwrapped or single-element list.
fn one(value: &Value) -> Option<&Value> {
    match value {
        Value::Array(items) => items.first(),
        Value::Null => None,
        other => Some(other),
    }
}

fn strip(name: &str) -> &str {
    for prefix in ["edc:", "odrl:", "dcat:", "dct:", "dspace:"] {
        if let Some(rest) = name.strip_prefix(prefix).filter(|r| !r.is_empty()) {
            return rest;
        }
    }
    name
}

fn strip_value(value: &str) -> &str {
    for prefix in [EDC_NAMESPACE, ODRL_NAMESPACE] {
        if let Some(rest) = value.strip_prefix(prefix).filter(|r| !r.is_empty()) {
            return rest;
        }
    }
    strip(value)
}

/// EDC's answer in the shape the operator sent: `@context` dropped, `edc:`/`odrl:` (and DCAT)
/// prefixes stripped from keys, `{"@id": x}` and `{"@value": x}` unwrapped, the EDC and ODRL
/// namespaces stripped from string values, ODRL's list-valued keys always lists.
pub fn plain(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            if map.len() == 1
                && let Some(inner) = map.get("@id").or_else(|| map.get("@value"))
            {
                return plain(inner);
            }
            let mut out = Map::new();
            for (k, v) in map.iter().filter(|(k, _)| *k != "@context") {
                let k = strip(k);
                let v = plain(v);
                let v = match v {
                    Value::Array(_) | Value::Null => v,
                    single if LISTS.contains(&k) => Value::Array(vec![single]),
                    other => other,
                };
                out.insert(k.to_owned(), v);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(plain).collect()),
        Value::String(s) => Value::String(strip_value(s).to_owned()),
        other => other.clone(),
    }
}

fn object(value: &Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

fn asset(v: &Value) -> StoredAsset {
    StoredAsset {
        id: text(&v["@id"]),
        properties: object(&v["properties"]),
        private_properties: object(&v["privateProperties"]),
        data_address: {
            let mut da = object(&v["dataAddress"]);
            da.remove("@type");
            da
        },
        created_at: v["createdAt"].as_i64().unwrap_or_default(),
    }
}

fn policy(v: &Value) -> StoredPolicy {
    let mut policy = v["policy"].clone();
    let uid = policy.as_object_mut().and_then(|p| p.remove("@id")).map(|id| text(&id)).unwrap_or_default();
    StoredPolicy {
        id: text(&v["@id"]),
        policy,
        private_properties: object(&v["privateProperties"]),
        created_at: v["createdAt"].as_i64().unwrap_or_default(),
        policy_uid: uid,
    }
}

fn contract_definition(v: &Value) -> StoredContractDefinition {
    let selector = match &v["assetsSelector"] {
        Value::Array(items) => items.clone(),
        Value::Null => Vec::new(),
        one => vec![one.clone()],
    };
    StoredContractDefinition {
        id: text(&v["@id"]),
        access_policy_id: text(&v["accessPolicyId"]),
        contract_policy_id: text(&v["contractPolicyId"]),
        assets_selector: selector
            .iter()
            .map(|c| Criterion {
                operand_left: text(&c["operandLeft"]),
                operator: text(&c["operator"]),
                operand_right: c["operandRight"].clone(),
            })
            .collect(),
        private_properties: object(&v["privateProperties"]),
        created_at: v["createdAt"].as_i64().unwrap_or_default(),
    }
}
