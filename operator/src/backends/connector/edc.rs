//! The Eclipse EDC Management API v3 client (EDC 0.15.x; domain.md §3).
//!
//! What it writes, and why this way:
//! - Bodies are compacted JSON-LD whose `@context` is `{"@vocab": "https://w3id.org/edc/v0.0.1/ns/"}`
//!   and nothing else. Declaring an `oauth2` or `dsp-mqtt` prefix would make the connector expand
//!   `oauth2:tokenUrl` to an IRI, and the factoryx-edc extension would no longer find it (domain.md
//!   §2, the JSON-LD trap). Without such a prefix, `oauth2:tokenUrl` is stored as the literal key.
//! - Assets, policy definitions and contract definitions carry the ownership markers in
//!   `privateProperties` (all three have them in EDC 0.15: `Asset`, `PolicyDefinition` and
//!   `ContractDefinition` each transform an `edc:privateProperties` object).
//! - Every ensure reads first (`GET …/{id}`), so a resync with nothing changed makes no write;
//!   a create that loses a race (409) reads again and compares.
//! - EDC answers GET with its own compaction: extra keys (`@type`, `createdAt`, an `id`
//!   property, a generated policy `@id`), `edc:`/`odrl:` prefixed or fully expanded names,
//!   `{"@id": …}` wrapped values and single-element arrays unwrapped. Both sides are brought to one
//!   canonical form of the fields the operator owns before comparing (`canonical`).
//! - Deletes read first too: an object without our marker is refused ([`BackendError::Foreign`]).
//!   A 409 on delete is [`BackendError::InUse`]: for an asset, a contract agreement references
//!   it, and agreements are never deleted.
//! - A 404 counts as "absent" only when EDC's own error array comes with it; a bare 404 means the
//!   route does not exist (a wrong `managementUrl`), and saying "absent" then would let a
//!   misconfigured operator believe every delete succeeded.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::HeaderValue;
use reqwest::{Method, Response, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};
use url::Url;

use super::{AssetDefinition, Connector, ContractDefinition, PolicyDefinition};
use crate::backends::http::{self, HttpSettings};
use crate::backends::{BackendError, OWNER_KEY, OWNER_RESOURCE_KEY, Outcome, Owner, SecretString, System};
use crate::config::ConnectorProfile;

/// The EDC vocabulary: the only `@vocab` the client declares.
pub const EDC_NAMESPACE: &str = "https://w3id.org/edc/v0.0.1/ns/";
const ODRL_NAMESPACE: &str = "http://www.w3.org/ns/odrl/2/";
const API_KEY_HEADER: &str = "X-Api-Key";
/// Bound on the error text carried into conditions and events.
const MAX_ERROR_TEXT: usize = 512;

const SYSTEM: System = System::Connector;

/// How to reach one connector's Management API.
#[derive(Clone, Debug)]
pub struct EdcSettings {
    /// Base URL of the Management API without the version, e.g. `https://edc/management`.
    pub management_url: Url,
    /// Sent as `X-Api-Key`.
    pub api_key: SecretString,
    /// Timeout and CA bundle.
    pub http: HttpSettings,
}

impl EdcSettings {
    /// Settings from a connector profile, with its API key and CA bundle already read.
    pub fn from_profile(profile: &ConnectorProfile, api_key: SecretString, ca_bundle_pem: Option<String>) -> Self {
        Self {
            management_url: profile.management_url.clone(),
            api_key,
            http: HttpSettings { timeout: Duration::from_secs(profile.timeout_seconds), ca_bundle_pem },
        }
    }
}

/// The three kinds of objects the operator keeps in the connector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Asset,
    Policy,
    ContractDefinition,
}

impl Kind {
    fn collection(self) -> &'static str {
        match self {
            Kind::Asset => "assets",
            Kind::Policy => "policydefinitions",
            Kind::ContractDefinition => "contractdefinitions",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::Asset => "asset",
            Kind::Policy => "policy definition",
            Kind::ContractDefinition => "contract definition",
        }
    }

    /// EDC puts the id of a policy-definition update in the path; assets and contract
    /// definitions are updated on the collection with the id in the body.
    fn update_in_path(self) -> bool {
        matches!(self, Kind::Policy)
    }

    /// The fields the operator owns, from a canonical object (see [`canonical`]).
    fn owned_view(self, id: &str, canonical: &Value) -> Value {
        let field = |name: &str| canonical.get(name).cloned().unwrap_or_else(|| Value::Object(Map::new()));
        let private = field("privateProperties");
        match self {
            Kind::Asset => {
                let mut properties = field("properties");
                if let Some(map) = properties.as_object_mut() {
                    // EDC adds the asset id as the `id` property; it is not ours to compare.
                    if map.get("id").and_then(Value::as_str) == Some(id) {
                        map.remove("id");
                    }
                }
                let mut data_address = field("dataAddress");
                if let Some(map) = data_address.as_object_mut() {
                    map.remove("@type");
                }
                json!({"properties": properties, "privateProperties": private, "dataAddress": data_address})
            }
            Kind::Policy => {
                let mut policy = field("policy");
                if let Some(map) = policy.as_object_mut() {
                    // EDC gives the stored policy a generated `@id`.
                    map.remove("@id");
                }
                json!({"policy": policy, "privateProperties": private})
            }
            Kind::ContractDefinition => {
                let selector = match canonical.get("assetsSelector") {
                    None => Value::Null,
                    Some(Value::Array(items)) => Value::Array(items.iter().map(without_type).collect()),
                    Some(single) => without_type(single),
                };
                json!({
                    "accessPolicyId": canonical.get("accessPolicyId"),
                    "contractPolicyId": canonical.get("contractPolicyId"),
                    "assetsSelector": selector,
                    "privateProperties": private,
                })
            }
        }
    }
}

fn without_type(value: &Value) -> Value {
    let mut value = value.clone();
    if let Some(map) = value.as_object_mut() {
        map.remove("@type");
    }
    value
}

/// Whose an object in the connector is, by its markers.
#[derive(Debug, PartialEq, Eq)]
enum Ownership {
    Ours,
    /// The operator's, but another resource's (its owner marker).
    OtherResource(String),
    /// Not the operator's.
    Foreign,
}

fn ownership(canonical: &Value, owner: &Owner) -> Ownership {
    let private = canonical.get("privateProperties");
    let marker = |key: &str| private.and_then(|p| p.get(key)).and_then(Value::as_str);
    if !marker(OWNER_KEY).is_some_and(|m| owner.is_managed_by(m)) {
        return Ownership::Foreign;
    }
    match marker(OWNER_RESOURCE_KEY) {
        Some(resource) if resource == owner.marker() => Ownership::Ours,
        Some(resource) => Ownership::OtherResource(resource.to_owned()),
        None => Ownership::OtherResource("an unnamed resource".to_owned()),
    }
}

/// The client of one connector's Management API v3.
#[derive(Clone, Debug)]
pub struct EdcClient {
    http: reqwest::Client,
    management_url: Url,
    /// Marked sensitive, so reqwest's Debug output redacts it.
    api_key: HeaderValue,
    timeout: Duration,
}

impl EdcClient {
    /// A client for `settings`. Fails when the CA bundle is not PEM, the URL cannot take a path,
    /// or the API key is not a valid header value (the error never shows the key).
    pub fn new(settings: EdcSettings) -> Result<Self, BackendError> {
        let http = http::client(SYSTEM, &settings.http)?;
        if settings.management_url.cannot_be_a_base() {
            return Err(BackendError::Protocol {
                system: SYSTEM,
                operation: "configure",
                object: "management URL".into(),
                detail: format!("{} cannot take a path", settings.management_url),
            });
        }
        let mut api_key =
            HeaderValue::from_str(settings.api_key.expose_secret()).map_err(|_| BackendError::Protocol {
                system: SYSTEM,
                operation: "configure",
                object: "API key".into(),
                detail: "the API key contains characters not allowed in an HTTP header".into(),
            })?;
        api_key.set_sensitive(true);
        Ok(Self { http, management_url: settings.management_url, api_key, timeout: settings.http.timeout })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.management_url.clone();
        // Checked in `new`: the URL can take a path.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("v3").extend(segments);
        }
        url
    }

    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        operation: &'static str,
        object: &str,
    ) -> Result<Response, BackendError> {
        let mut request = self.http.request(method, url).header(API_KEY_HEADER, self.api_key.clone());
        if let Some(body) = body {
            request = request.json(body);
        }
        http::send(SYSTEM, operation, object, self.timeout, request).await
    }

    /// Reads one object in canonical form; `None` when EDC says it does not exist.
    async fn read(&self, kind: Kind, id: &str) -> Result<Option<Value>, BackendError> {
        let object = object_name(kind, id);
        let response = self.call(Method::GET, self.url(&[kind.collection(), id]), None, "read", &object).await?;
        match response.status() {
            StatusCode::OK => {
                let body: Value = response.json().await.map_err(|e| protocol("read", &object, e))?;
                if !body.is_object() {
                    return Err(protocol("read", &object, "the answer is not a JSON object"));
                }
                Ok(Some(canonical(&body)))
            }
            StatusCode::NOT_FOUND => not_found(response, "read", &object).await.map(|()| None),
            _ => Err(failure(response, "read", &object).await),
        }
    }

    async fn create(&self, kind: Kind, id: &str, body: &Value) -> Result<Created, BackendError> {
        let object = object_name(kind, id);
        let response = self.call(Method::POST, self.url(&[kind.collection()]), Some(body), "create", &object).await?;
        match response.status() {
            // EDC answers 200 with an IdResponse; the id is the one we sent.
            s if s.is_success() => Ok(Created::Yes),
            StatusCode::CONFLICT => Ok(Created::AlreadyExists),
            _ => Err(failure(response, "create", &object).await),
        }
    }

    /// `Ok(false)` when the object vanished between our read and our write.
    async fn update(&self, kind: Kind, id: &str, body: &Value) -> Result<bool, BackendError> {
        let object = object_name(kind, id);
        let url =
            if kind.update_in_path() { self.url(&[kind.collection(), id]) } else { self.url(&[kind.collection()]) };
        let response = self.call(Method::PUT, url, Some(body), "update", &object).await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => not_found(response, "update", &object).await.map(|()| false),
            _ => Err(failure(response, "update", &object).await),
        }
    }

    /// Find → create → (on 409 read) → compare → update only when different.
    async fn ensure(&self, kind: Kind, id: &str, owner: &Owner, body: Value) -> Result<Outcome, BackendError> {
        let desired = kind.owned_view(id, &canonical(&body));
        // Two rounds cover one lost race either way (created by someone else after our read, or
        // deleted after our read); a third would mean someone fights us, which is an error.
        for _ in 0..2 {
            let Some(actual) = self.read(kind, id).await? else {
                match self.create(kind, id, &body).await? {
                    Created::Yes => {
                        tracing::debug!(kind = kind.noun(), id, "created in the connector");
                        return Ok(Outcome::Created);
                    }
                    Created::AlreadyExists => continue,
                }
            };
            check_ownership(kind, id, owner, &actual, "update")?;
            if kind.owned_view(id, &actual) == desired {
                return Ok(Outcome::Unchanged);
            }
            if self.update(kind, id, &body).await? {
                tracing::debug!(kind = kind.noun(), id, "updated in the connector");
                return Ok(Outcome::Updated);
            }
        }
        Err(protocol(
            "ensure",
            &object_name(kind, id),
            "it kept appearing and disappearing between read and write; is another writer changing it?",
        ))
    }

    async fn delete(&self, kind: Kind, id: &str, owner: &Owner) -> Result<Outcome, BackendError> {
        let object = object_name(kind, id);
        let Some(actual) = self.read(kind, id).await? else { return Ok(Outcome::Absent) };
        check_ownership(kind, id, owner, &actual, "delete")?;
        let response = self.call(Method::DELETE, self.url(&[kind.collection(), id]), None, "delete", &object).await?;
        match response.status() {
            s if s.is_success() => {
                tracing::debug!(kind = kind.noun(), id, "deleted from the connector");
                Ok(Outcome::Deleted)
            }
            StatusCode::NOT_FOUND => not_found(response, "delete", &object).await.map(|()| Outcome::Absent),
            StatusCode::CONFLICT => Err(BackendError::InUse {
                system: SYSTEM,
                operation: "delete",
                object,
                message: edc_error_text(response).await,
            }),
            _ => Err(failure(response, "delete", &object).await),
        }
    }
}

enum Created {
    Yes,
    AlreadyExists,
}

fn object_name(kind: Kind, id: &str) -> String {
    format!("{} {id}", kind.noun())
}

fn check_ownership(
    kind: Kind,
    id: &str,
    owner: &Owner,
    actual: &Value,
    operation: &'static str,
) -> Result<(), BackendError> {
    let object = match ownership(actual, owner) {
        Ownership::Ours => return Ok(()),
        Ownership::Foreign => object_name(kind, id),
        Ownership::OtherResource(other) => format!("{} (it belongs to {other})", object_name(kind, id)),
    };
    Err(BackendError::Foreign { system: SYSTEM, operation, object })
}

fn protocol(operation: &'static str, object: &str, detail: impl std::fmt::Display) -> BackendError {
    BackendError::Protocol { system: SYSTEM, operation, object: object.to_owned(), detail: detail.to_string() }
}

async fn failure(response: Response, operation: &'static str, object: &str) -> BackendError {
    let status = response.status();
    http::status_error(SYSTEM, operation, object, status, edc_error_text(response).await)
}

/// A 404 with EDC's error array is "no such object"; anything else is a missing route.
async fn not_found(response: Response, operation: &'static str, object: &str) -> Result<(), BackendError> {
    let text = response.text().await.unwrap_or_default();
    if serde_json::from_str::<Value>(&text).is_ok_and(|v| v.is_array()) {
        return Ok(());
    }
    Err(BackendError::Rejected {
        system: SYSTEM,
        operation,
        object: object.to_owned(),
        status: 404,
        message: "the Management API route does not exist: check the profile's managementUrl (the base path \
                  without /v3, e.g. https://edc/management)"
            .into(),
    })
}

/// EDC's error body, a JSON array of `{message, type, path, invalidValue}`, as one readable line:
/// `message (at path, value "…"); message …`. Anything else is passed on, bounded.
async fn edc_error_text(response: Response) -> String {
    let text = response.text().await.unwrap_or_default();
    bounded(&describe_edc_error(&text))
}

fn describe_edc_error(text: &str) -> String {
    let Ok(Value::Array(entries)) = serde_json::from_str::<Value>(text) else {
        return text.trim().to_owned();
    };
    let parts: Vec<String> = entries
        .iter()
        .map(|entry| {
            let message = entry.get("message").and_then(Value::as_str).unwrap_or("(no message)");
            let mut where_ = Vec::new();
            if let Some(path) = entry.get("path").and_then(Value::as_str).filter(|p| !p.is_empty()) {
                where_.push(format!("at {}", path.strip_prefix(EDC_NAMESPACE).unwrap_or(path)));
            }
            match entry.get("invalidValue") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => where_.push(format!("value \"{s}\"")),
                Some(other) => where_.push(format!("value {other}")),
            }
            if where_.is_empty() { message.to_owned() } else { format!("{message} ({})", where_.join(", ")) }
        })
        .collect();
    if parts.is_empty() { "(empty error list)".to_owned() } else { parts.join("; ") }
}

fn bounded(text: &str) -> String {
    if text.len() <= MAX_ERROR_TEXT {
        return text.to_owned();
    }
    let mut cut = MAX_ERROR_TEXT;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

/// One canonical form for what the client sends and what EDC answers, so that equal content
/// compares equal however EDC compacted it: `@context` dropped; `edc:`/`odrl:` prefixes and the
/// full EDC/ODRL namespace IRIs stripped from keys and string values; `{"@id": x}` and
/// `{"@value": x}` unwrapped; single-element arrays unwrapped; nulls and empty arrays dropped.
/// Keys with other prefixes (`oauth2:tokenUrl`, `dsp-mqtt:topic`) are left as they are.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            if map.len() == 1
                && let Some(inner) = map.get("@id").or_else(|| map.get("@value"))
            {
                return canonical(inner);
            }
            let mut out = Map::new();
            for (key, value) in map {
                if key == "@context" {
                    continue;
                }
                let value = canonical(value);
                if value.is_null() || value.as_array().is_some_and(Vec::is_empty) {
                    continue;
                }
                out.insert(strip_namespace(key).to_owned(), value);
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            let mut items: Vec<Value> = items.iter().map(canonical).filter(|v| !v.is_null()).collect();
            if items.len() == 1 { items.remove(0) } else { Value::Array(items) }
        }
        Value::String(s) => Value::String(strip_namespace(s).to_owned()),
        other => other.clone(),
    }
}

fn strip_namespace(name: &str) -> &str {
    for prefix in [EDC_NAMESPACE, "edc:", ODRL_NAMESPACE, "odrl:"] {
        if let Some(rest) = name.strip_prefix(prefix)
            && !rest.is_empty()
        {
            return rest;
        }
    }
    name
}

/// The request `@context`: the EDC vocabulary and nothing else (see the module doc).
fn context() -> Value {
    json!({"@vocab": EDC_NAMESPACE})
}

fn markers(user: &Map<String, Value>, owner: &Owner) -> Value {
    let mut private = user.clone();
    // Set last, so a user's private property can never disown the object.
    private.insert(OWNER_KEY.to_owned(), Value::String(owner.managed_by()));
    private.insert(OWNER_RESOURCE_KEY.to_owned(), Value::String(owner.marker()));
    Value::Object(private)
}

fn asset_body(asset: &AssetDefinition) -> Value {
    let mut data_address = Map::new();
    data_address.insert("@type".into(), Value::String("DataAddress".into()));
    data_address.extend(asset.data_address.clone());
    json!({
        "@context": context(),
        "@type": "Asset",
        "@id": asset.id,
        "properties": asset.properties,
        "privateProperties": markers(&asset.private_properties, &asset.owner),
        "dataAddress": data_address,
    })
}

fn policy_body(policy: &PolicyDefinition) -> Value {
    json!({
        "@context": context(),
        "@type": "PolicyDefinition",
        "@id": policy.id,
        "policy": policy.policy,
        "privateProperties": markers(&Map::new(), &policy.owner),
    })
}

fn contract_definition_body(definition: &ContractDefinition) -> Value {
    json!({
        "@context": context(),
        "@type": "ContractDefinition",
        "@id": definition.id,
        "accessPolicyId": definition.access_policy_id,
        "contractPolicyId": definition.contract_policy_id,
        "assetsSelector": [{
            "@type": "Criterion",
            "operandLeft": format!("{EDC_NAMESPACE}id"),
            "operator": "=",
            "operandRight": definition.asset_id,
        }],
        "privateProperties": markers(&Map::new(), &definition.owner),
    })
}

#[async_trait]
impl Connector for EdcClient {
    async fn ensure_asset(&self, asset: &AssetDefinition) -> Result<Outcome, BackendError> {
        self.ensure(Kind::Asset, &asset.id, &asset.owner, asset_body(asset)).await
    }

    async fn ensure_policy(&self, policy: &PolicyDefinition) -> Result<Outcome, BackendError> {
        self.ensure(Kind::Policy, &policy.id, &policy.owner, policy_body(policy)).await
    }

    async fn ensure_contract_definition(&self, definition: &ContractDefinition) -> Result<Outcome, BackendError> {
        self.ensure(Kind::ContractDefinition, &definition.id, &definition.owner, contract_definition_body(definition))
            .await
    }

    async fn delete_contract_definition(&self, id: &str, owner: &Owner) -> Result<Outcome, BackendError> {
        self.delete(Kind::ContractDefinition, id, owner).await
    }

    async fn delete_policy(&self, id: &str, owner: &Owner) -> Result<Outcome, BackendError> {
        self.delete(Kind::Policy, id, owner).await
    }

    async fn delete_asset(&self, id: &str, owner: &Owner) -> Result<Outcome, BackendError> {
        self.delete(Kind::Asset, id, owner).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner {
            installation: "test".into(),
            kind: "MqttAsset".into(),
            namespace: "factory".into(),
            name: "line-1".into(),
        }
    }

    #[test]
    fn canonical_form_ignores_edc_compaction_variants() {
        let sent = json!({
            "@context": {"@vocab": EDC_NAMESPACE},
            "policy": {
                "@context": "http://www.w3.org/ns/odrl.jsonld",
                "@type": "Set",
                "permission": [{"action": "use", "constraint": [
                    {"leftOperand": "BusinessPartnerDID", "operator": "eq", "rightOperand": "did:web:x"}
                ]}]
            }
        });
        let answered = json!({
            "@context": {"@vocab": EDC_NAMESPACE, "edc": EDC_NAMESPACE, "odrl": ODRL_NAMESPACE},
            "@id": "p1",
            "edc:policy": {
                "@type": "odrl:Set",
                "odrl:permission": {
                    "odrl:action": {"@id": "odrl:use"},
                    "odrl:constraint": {
                        "odrl:leftOperand": {"@id": "edc:BusinessPartnerDID"},
                        "http://www.w3.org/ns/odrl/2/operator": {"@id": "http://www.w3.org/ns/odrl/2/eq"},
                        "odrl:rightOperand": "did:web:x"
                    }
                },
                "odrl:prohibition": [],
                "odrl:obligation": []
            }
        });
        let view = |v: &Value| Kind::Policy.owned_view("p1", &canonical(v));
        assert_eq!(view(&sent), view(&answered));
    }

    #[test]
    fn canonical_form_keeps_foreign_prefixes_literal() {
        let v = canonical(&json!({"dataAddress": {"oauth2:tokenUrl": "https://idp/token", "dsp-mqtt:topic": "a/b"}}));
        assert_eq!(v["dataAddress"]["oauth2:tokenUrl"], "https://idp/token");
        assert_eq!(v["dataAddress"]["dsp-mqtt:topic"], "a/b");
    }

    #[test]
    fn a_changed_constraint_is_a_difference() {
        let a = json!({"policy": {"@type": "Set", "permission": [{"action": "use", "constraint": [
            {"leftOperand": "BusinessPartnerDID", "operator": "eq", "rightOperand": "did:web:a"}]}]}});
        let mut b = a.clone();
        b["policy"]["permission"][0]["constraint"][0]["rightOperand"] = json!("did:web:b");
        assert_ne!(Kind::Policy.owned_view("p", &canonical(&a)), Kind::Policy.owned_view("p", &canonical(&b)));
    }

    #[test]
    fn asset_view_ignores_edc_additions() {
        let asset = AssetDefinition {
            id: "a1".into(),
            properties: Map::from_iter([("name".to_owned(), json!("Line 1"))]),
            private_properties: Map::new(),
            data_address: Map::from_iter([("type".to_owned(), json!("Mqtt"))]),
            owner: owner(),
        };
        let mut answered = asset_body(&asset);
        answered["properties"]["id"] = json!("a1");
        answered["createdAt"] = json!(1_700_000_000_000_i64);
        answered["@type"] = json!("edc:Asset");
        let view = |v: &Value| Kind::Asset.owned_view("a1", &canonical(v));
        assert_eq!(view(&asset_body(&asset)), view(&answered));
    }

    #[test]
    fn markers_cannot_be_overridden_by_user_private_properties() {
        let user = Map::from_iter([(OWNER_KEY.to_owned(), json!("someone-else"))]);
        let private = markers(&user, &owner());
        assert_eq!(private[OWNER_KEY], "mqtt-dsp-operator/test");
        assert_eq!(private[OWNER_RESOURCE_KEY], "MqttAsset/factory/line-1");
    }

    #[test]
    fn ownership_needs_both_markers_of_this_installation() {
        let marked = |managed_by: &str, resource: &str| json!({"privateProperties": {OWNER_KEY: managed_by, OWNER_RESOURCE_KEY: resource}});
        let ours = marked("mqtt-dsp-operator/test", "MqttAsset/factory/line-1");
        assert_eq!(ownership(&ours, &owner()), Ownership::Ours);
        // Marked before markers named the installation: adopted (the next write rewrites it).
        let legacy = marked(crate::backends::OWNER_VALUE, "MqttAsset/factory/line-1");
        assert_eq!(ownership(&legacy, &owner()), Ownership::Ours);
        // Another installation's object of the same resource is not ours.
        let staging = marked("mqtt-dsp-operator/staging", "MqttAsset/factory/line-1");
        assert_eq!(ownership(&staging, &owner()), Ownership::Foreign);
        let other = marked("mqtt-dsp-operator/test", "MqttAsset/x/y");
        assert_eq!(ownership(&other, &owner()), Ownership::OtherResource("MqttAsset/x/y".into()));
        assert_eq!(ownership(&json!({"properties": {}}), &owner()), Ownership::Foreign);
    }

    #[test]
    fn edc_error_array_becomes_one_line() {
        let body = r#"[{"message":"DataAddress of type 'Mqtt' must contain valid property 'mqttEndpointType'","type":"ValidationFailure","path":"mqttEndpointType","invalidValue":"mqtt-wss"},
                      {"message":"mandatory object 'https://w3id.org/edc/v0.0.1/ns/properties' is missing","type":"ValidationFailure","path":"https://w3id.org/edc/v0.0.1/ns/properties","invalidValue":null}]"#;
        assert_eq!(
            describe_edc_error(body),
            "DataAddress of type 'Mqtt' must contain valid property 'mqttEndpointType' (at mqttEndpointType, \
             value \"mqtt-wss\"); mandatory object 'https://w3id.org/edc/v0.0.1/ns/properties' is missing (at properties)"
        );
        assert_eq!(describe_edc_error("<html>oops</html>"), "<html>oops</html>");
    }

    #[test]
    fn request_context_declares_the_vocabulary_only() {
        let body = contract_definition_body(&ContractDefinition {
            id: "cd".into(),
            access_policy_id: "p".into(),
            contract_policy_id: "p".into(),
            asset_id: "a".into(),
            owner: owner(),
        });
        assert_eq!(body["@context"], json!({"@vocab": EDC_NAMESPACE}));
        assert_eq!(body["assetsSelector"][0]["operandLeft"], "https://w3id.org/edc/v0.0.1/ns/id");
    }

    #[test]
    fn management_url_keeps_its_base_path() {
        crate::install_crypto_provider();
        let client = EdcClient::new(EdcSettings {
            management_url: Url::parse("https://edc.example/management/").unwrap(),
            api_key: SecretString::from("k"),
            http: HttpSettings { timeout: Duration::from_secs(1), ca_bundle_pem: None },
        })
        .unwrap();
        assert_eq!(client.url(&["assets", "urn:x/y"]).as_str(), "https://edc.example/management/v3/assets/urn:x%2Fy");
    }
}
