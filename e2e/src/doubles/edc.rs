//! A double of the Eclipse EDC Management API v3 (EDC 0.15.x), with an optional factoryx-edc
//! flavour: assets, policy definitions, contract definitions and a catalog request.
//!
//! What it follows (domain.md §2 and §3, read against EDC's and factoryx-edc's source; the stock
//! flavour is checked against a real EDC 0.15.1 by `tests/edc_contract.rs`, which runs the same
//! tests on both):
//! - served under `/management`; every route needs `X-Api-Key`, else 401 with EDC's error array
//!   (`[{"message", "type": "AuthenticationFailed", "path", "invalidValue"}]`, message
//!   `x-api-key not found` without a key, `Request could not be authenticated` with a wrong one); unknown routes 404
//!   with an empty body (no error array: that is how a client tells "wrong URL" from "no object");
//! - bodies must be JSON objects whose `@context` declares `"@vocab":
//!   "https://w3id.org/edc/v0.0.1/ns/"`; keys are expanded against that context the JSON-LD way, so
//!   a declared `oauth2` (or `dsp-mqtt`) prefix turns `oauth2:tokenUrl` into an IRI, which is then
//!   stored and answered expanded — and the factoryx validation no longer finds the key, as in the
//!   reference connector (domain.md §2, the JSON-LD trap). Without the prefix the literal key stays.
//!   A body without any `@context` gets Jetty's bare HTML 400 (EDC's JSON-LD layer throws before
//!   any validator), a body that is not JSON a plain-text 400;
//! - create: 200 `{"@id", "createdAt"}`; a duplicate id: 409 (`ObjectConflict`, worded per type as
//!   EDC's services do: `Asset with ID …`, `Policy with ID …`, `Contract Definition with ID …`); unknown id on
//!   read, update or delete: 404 (`ObjectNotFound`); updates: 204. Assets and contract definitions
//!   are updated with `PUT` on the collection, policy definitions with `PUT …/{id}`; as in EDC the
//!   id in the body is the one updated;
//! - shape validation as EDC's validators do it, answered 400 with the error array: asset
//!   `properties` object mandatory, no key in both `properties` and `privateProperties`,
//!   `dataAddress.type` mandatory; policy `@type` must be ODRL `Set` (a bare `Set` only with the
//!   ODRL context), every rule needs an `action`, every constraint `leftOperand`, `operator` and
//!   `rightOperand` (or is a logical constraint); contract definitions need `accessPolicyId`,
//!   `contractPolicyId` and criteria with `operandLeft` and a known `operator`;
//! - [`Flavour::Factoryx`] adds factoryx-edc's source check for `dataAddress.type == "Mqtt"`:
//!   `mqttEndpointType` must parse as `mqtt-{wss|tcp}-{basic|oauth2}` (case-insensitive);
//!   exactly one auth set: `oauth2:tokenUrl` + `oauth2:clientId` + `oauth2:clientSecretKeyAlias`, or
//!   `username` + `passwordAlias`; `baseUrl` and `oauth2:tokenUrl` absolute with scheme and host;
//! - deletes: an asset referenced by a contract agreement ([`EdcState::add_agreement`]) and a
//!   policy referenced by a contract definition answer 409;
//! - GET answers the way EDC compacts: `@type`, `createdAt` (policy definitions only: 0.15.1
//!   answers none for assets and contract definitions), the output `@context`, the asset id
//!   repeated as the `id` property, policies rendered with `odrl:` names, `{"@id": …}` values, a
//!   generated policy `@id`, empty `prohibition`/`obligation` arrays and single-element arrays
//!   unwrapped — so a client has to compare semantically;
//! - `POST /v3/catalog/request` (needs `counterPartyAddress` and `protocol`, else a bare 400)
//!   answers a DSP 2025-1 catalog compacted as EDC does (dataset properties `edc:`-prefixed plus a
//!   bare `id`, offers without assigner, target or empty rule lists, left operands `edc:`-prefixed,
//!   no `dataset` key when there is none): one dataset per asset selected by a contract definition whose policies exist,
//!   an offer per such definition (its contract policy's rules), and distributions: `Mqtt-PULL`
//!   and `HttpData-PULL` for `Mqtt` assets in the factoryx flavour (its data-flow controller), plus
//!   whatever data planes registered with [`EdcState::register_data_plane`] offer (stock EDC).
//!
//! What it leaves out: query endpoints (`…/request` with a QuerySpec), contract negotiations and
//! agreements (only the agreement's effect on asset deletion), policy evaluation (access policies
//! do not filter the catalog), remote JSON-LD contexts (the ODRL context is recognised by name),
//! value expansion (only keys are expanded), `@vocab`-less but otherwise valid contexts (the real
//! EDC accepts e.g. an `edc` prefix with `edc:`-prefixed keys; this double refuses them on purpose,
//! as the operator must always send the vocabulary), and the v4 API.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Map, Value, json};

use super::DoubleServer;
use crate::tls::TestCa;

/// The API key the double accepts unless configured otherwise.
pub const API_KEY: &str = "edc-dev-api-key";
/// Where the Management API is served (EDC's `web.http.management.path`).
pub const MANAGEMENT_PATH: &str = "/management";
/// The EDC vocabulary.
pub const EDC_NAMESPACE: &str = "https://w3id.org/edc/v0.0.1/ns/";
const ODRL_NAMESPACE: &str = "http://www.w3.org/ns/odrl/2/";

/// Which connector the double plays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flavour {
    /// Stock EDC: any `mqttEndpointType`; `Mqtt` assets are offered only through registered data
    /// planes.
    #[default]
    Stock,
    /// factoryx-edc 0.3.0 (EDC 0.15.1): validates `Mqtt` data addresses and offers them as
    /// `Mqtt-PULL` and `HttpData-PULL`.
    Factoryx,
}

/// How the double is set up.
#[derive(Clone, Debug)]
pub struct EdcConfig {
    /// The `X-Api-Key` it accepts.
    pub api_key: String,
    /// Stock EDC or factoryx-edc.
    pub flavour: Flavour,
    /// The participant id named in catalogs.
    pub participant_id: String,
}

impl Default for EdcConfig {
    fn default() -> Self {
        Self { api_key: API_KEY.into(), flavour: Flavour::Stock, participant_id: "did:web:provider.example".into() }
    }
}

impl EdcConfig {
    /// The default configuration in the given flavour.
    pub fn flavour(flavour: Flavour) -> Self {
        Self { flavour, ..Self::default() }
    }
}

/// An asset as stored: keys compacted against the EDC vocabulary, other IRIs and literal keys
/// such as `oauth2:tokenUrl` as they are.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredAsset {
    /// Asset id.
    pub id: String,
    /// Public properties.
    pub properties: Map<String, Value>,
    /// Private properties (where the operator's markers live).
    pub private_properties: Map<String, Value>,
    /// The data address, `type` included.
    pub data_address: Map<String, Value>,
    /// Creation time, epoch milliseconds.
    pub created_at: i64,
}

/// A policy definition as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredPolicy {
    /// Policy definition id.
    pub id: String,
    /// The ODRL policy as sent, without its `@context`.
    pub policy: Value,
    /// Private properties.
    pub private_properties: Map<String, Value>,
    /// Creation time, epoch milliseconds.
    pub created_at: i64,
    /// The `@id` EDC gives the policy itself (answered on GET, changes on every write).
    pub policy_uid: String,
}

/// One asset-selector criterion.
#[derive(Clone, Debug, PartialEq)]
pub struct Criterion {
    /// E.g. `https://w3id.org/edc/v0.0.1/ns/id`.
    pub operand_left: String,
    /// E.g. `=`.
    pub operator: String,
    /// E.g. the asset id.
    pub operand_right: Value,
}

/// A contract definition as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredContractDefinition {
    /// Contract definition id.
    pub id: String,
    /// Access policy id.
    pub access_policy_id: String,
    /// Contract policy id.
    pub contract_policy_id: String,
    /// Asset selector (empty: every asset).
    pub assets_selector: Vec<Criterion>,
    /// Private properties.
    pub private_properties: Map<String, Value>,
    /// Creation time, epoch milliseconds.
    pub created_at: i64,
}

/// A data plane registered with the control plane (stock EDC offers transfer types through these).
#[derive(Clone, Debug, PartialEq)]
pub struct DataPlane {
    /// E.g. `["Mqtt"]`.
    pub allowed_source_types: Vec<String>,
    /// E.g. `["Mqtt-PULL"]`.
    pub allowed_transfer_types: Vec<String>,
}

#[derive(Debug, Default)]
struct Store {
    assets: BTreeMap<String, StoredAsset>,
    policies: BTreeMap<String, StoredPolicy>,
    contract_definitions: BTreeMap<String, StoredContractDefinition>,
    agreements: BTreeSet<String>,
    data_planes: Vec<DataPlane>,
    hidden_once: BTreeSet<String>,
}

/// The double's state, shared with the running server; tests read it and use its hooks.
#[derive(Clone, Debug, Default)]
pub struct EdcState(Arc<Mutex<Store>>);

impl EdcState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panicking handler must not hide the state from the test that looks at it.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
    /// The asset with this id, as stored.
    pub fn asset(&self, id: &str) -> Option<StoredAsset> {
        self.lock().assets.get(id).cloned()
    }
    /// Every asset, by id.
    pub fn assets(&self) -> Vec<StoredAsset> {
        self.lock().assets.values().cloned().collect()
    }
    /// The policy definition with this id, as stored.
    pub fn policy(&self, id: &str) -> Option<StoredPolicy> {
        self.lock().policies.get(id).cloned()
    }
    /// Every policy definition, by id.
    pub fn policies(&self) -> Vec<StoredPolicy> {
        self.lock().policies.values().cloned().collect()
    }
    /// The contract definition with this id, as stored.
    pub fn contract_definition(&self, id: &str) -> Option<StoredContractDefinition> {
        self.lock().contract_definitions.get(id).cloned()
    }
    /// Every contract definition, by id.
    pub fn contract_definitions(&self) -> Vec<StoredContractDefinition> {
        self.lock().contract_definitions.values().cloned().collect()
    }
    /// Test hook: a contract agreement now references the asset, so deleting it answers 409
    /// for good (EDC never deletes agreements).
    pub fn add_agreement(&self, asset_id: &str) {
        self.lock().agreements.insert(asset_id.to_owned());
    }
    /// Test hook: registers a data plane (what stock EDC needs to offer `Mqtt-PULL`).
    pub fn register_data_plane(&self, plane: DataPlane) {
        self.lock().data_planes.push(plane);
    }
    /// Test hook: the next GET of an object with this id answers 404 as if it did not exist yet —
    /// another writer creating it between a client's read and its write.
    pub fn hide_from_next_get(&self, id: &str) {
        self.lock().hidden_once.insert(id.to_owned());
    }
}

/// A running EDC double.
pub struct EdcDouble {
    /// The server: base URL, request log, faults.
    pub server: DoubleServer,
    /// State and test hooks.
    pub state: EdcState,
    /// The Management API base URL a client is configured with (`…/management`, no version).
    pub management_url: String,
    /// The configuration it runs with.
    pub config: EdcConfig,
}

/// Starts an EDC double over HTTPS with a certificate from `ca`.
pub async fn start(ca: &TestCa, config: EdcConfig) -> std::io::Result<EdcDouble> {
    let state = EdcState::default();
    let server = super::start(router(state.clone(), config.clone()), ca).await?;
    let management_url = format!("{}{MANAGEMENT_PATH}", server.base_url);
    Ok(EdcDouble { server, state, management_url, config })
}

#[derive(Clone)]
struct App {
    state: EdcState,
    config: Arc<EdcConfig>,
}

fn router(state: EdcState, config: EdcConfig) -> Router {
    let app = App { state, config: Arc::new(config) };
    let api = Router::new()
        .route("/v3/assets", post(create_asset).put(update_asset))
        .route("/v3/assets/{id}", get(get_asset).delete(delete_asset))
        .route("/v3/policydefinitions", post(create_policy))
        .route("/v3/policydefinitions/{id}", get(get_policy).put(update_policy).delete(delete_policy))
        .route("/v3/contractdefinitions", post(create_contract_definition).put(update_contract_definition))
        .route("/v3/contractdefinitions/{id}", get(get_contract_definition).delete(delete_contract_definition))
        .route("/v3/catalog/request", post(request_catalog))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_api_key))
        .with_state(app);
    Router::new().nest(MANAGEMENT_PATH, api)
}

async fn require_api_key(State(app): State<App>, request: Request, next: Next) -> Response {
    match request.headers().get("x-api-key").map(|v| v.to_str().ok()) {
        Some(given) if given == Some(app.config.api_key.as_str()) => next.run(request).await,
        Some(_) => error(StatusCode::UNAUTHORIZED, "AuthenticationFailed", "Request could not be authenticated"),
        None => error(StatusCode::UNAUTHORIZED, "AuthenticationFailed", "x-api-key not found"),
    }
}

// ---------------------------------------------------------------------------------------------
// Errors in EDC's shape

struct Violation {
    message: String,
    path: Option<String>,
    invalid_value: Option<Value>,
}

fn violation(message: impl Into<String>, path: impl Into<String>, invalid_value: Option<Value>) -> Violation {
    Violation { message: message.into(), path: Some(path.into()), invalid_value }
}

fn errors(status: StatusCode, kind: &str, violations: Vec<Violation>) -> Response {
    let body: Vec<Value> = violations
        .into_iter()
        .map(|v| json!({"message": v.message, "type": kind, "path": v.path, "invalidValue": v.invalid_value}))
        .collect();
    (status, axum::Json(Value::Array(body))).into_response()
}

fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    errors(status, kind, vec![Violation { message: message.into(), path: None, invalid_value: None }])
}

fn not_found(type_name: &str, id: &str) -> Response {
    error(StatusCode::NOT_FOUND, "ObjectNotFound", format!("Object of type {type_name} with ID={id} was not found"))
}

/// A duplicate id, worded as EDC 0.15.1's services word it (`what` is e.g. `Asset`, `Policy`,
/// `Contract Definition`).
fn conflict(what: &str, id: &str) -> Response {
    error(StatusCode::CONFLICT, "ObjectConflict", format!("{what} with ID {id} already exists"))
}

/// What Jetty answers when EDC's JSON-LD layer throws a bare `BadRequestException` (a body with
/// no `@context`, or a catalog request missing its mandatory fields): HTML, no error array.
fn bare_bad_request() -> Response {
    let html = "<html>\n<head>\n<meta http-equiv=\"Content-Type\" content=\"text/html;charset=ISO-8859-1\"/>\n\
                <title>Error 400 Bad Request</title>\n</head>\n<body>\n<h2>HTTP ERROR 400 Bad Request</h2>\n\
                </body>\n</html>\n";
    (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "text/html;charset=iso-8859-1")], html).into_response()
}

/// A refusal on its way out of a parser; boxed because a `Response` is large.
type Refused = Box<Response>;

fn refuse(response: Response) -> Refused {
    Box::new(response)
}

fn validation_failure(violations: Vec<Violation>) -> Response {
    errors(StatusCode::BAD_REQUEST, "ValidationFailure", violations)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn output_context() -> Value {
    json!({"@vocab": EDC_NAMESPACE, "edc": EDC_NAMESPACE, "odrl": ODRL_NAMESPACE})
}

fn id_response(id: &str, created_at: i64) -> Response {
    let body = json!({"@type": "IdResponse", "@id": id, "createdAt": created_at, "@context": output_context()});
    (StatusCode::OK, axum::Json(body)).into_response()
}

// ---------------------------------------------------------------------------------------------
// A small part of JSON-LD: key expansion against the request context, compaction against EDC's

struct Context {
    vocab: Option<String>,
    terms: BTreeMap<String, String>,
    /// A remote context was referenced by name (only ODRL's is understood).
    odrl_remote: bool,
}

impl Context {
    fn read(context: Option<&Value>) -> Context {
        let mut ctx = Context { vocab: None, terms: BTreeMap::new(), odrl_remote: false };
        let items: Vec<&Value> = match context {
            Some(Value::Array(items)) => items.iter().collect(),
            Some(other) => vec![other],
            None => vec![],
        };
        for item in items {
            match item {
                Value::Object(map) => {
                    for (key, value) in map {
                        match (key.as_str(), value) {
                            ("@vocab", Value::String(v)) => ctx.vocab = Some(v.clone()),
                            (k, Value::String(iri)) if !k.starts_with('@') => {
                                ctx.terms.insert(k.to_owned(), iri.clone());
                            }
                            (k, Value::Object(def)) if !k.starts_with('@') => {
                                if let Some(Value::String(iri)) = def.get("@id") {
                                    ctx.terms.insert(k.to_owned(), iri.clone());
                                }
                            }
                            _ => {}
                        }
                    }
                }
                Value::String(url) if url.contains("odrl") => ctx.odrl_remote = true,
                _ => {}
            }
        }
        ctx
    }

    /// The request context the double insists on (see the module doc).
    fn require_edc_vocab(body: &Map<String, Value>) -> Result<Context, Refused> {
        if !body.contains_key("@context") {
            return Err(refuse(bare_bad_request()));
        }
        let ctx = Context::read(body.get("@context"));
        if ctx.vocab.as_deref() == Some(EDC_NAMESPACE) {
            Ok(ctx)
        } else {
            Err(refuse(validation_failure(vec![violation(
                format!("@context must declare \"@vocab\": \"{EDC_NAMESPACE}\""),
                "@context",
                body.get("@context").cloned(),
            )])))
        }
    }

    /// The IRI a key expands to; `None` when JSON-LD would drop it.
    fn expand(&self, key: &str) -> Option<String> {
        if key.starts_with('@') {
            return Some(key.to_owned());
        }
        if let Some(iri) = self.terms.get(key) {
            return Some(iri.clone());
        }
        if let Some((prefix, suffix)) = key.split_once(':') {
            if suffix.starts_with("//") {
                return Some(key.to_owned());
            }
            // A declared prefix expands (the JSON-LD trap); an undeclared one leaves the key as an
            // absolute IRI with that scheme, i.e. literally `oauth2:tokenUrl`.
            return Some(match self.terms.get(prefix) {
                Some(iri) => format!("{iri}{suffix}"),
                None => key.to_owned(),
            });
        }
        self.vocab.as_ref().map(|vocab| format!("{vocab}{key}"))
    }

    fn field<'a>(&self, body: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
        let wanted = format!("{EDC_NAMESPACE}{name}");
        body.iter().find(|(k, _)| self.expand(k).as_deref() == Some(wanted.as_str())).map(|(_, v)| v)
    }

    /// Keys expanded, then compacted against EDC's output context (`@vocab` only).
    fn compact_map(&self, map: &Map<String, Value>) -> Map<String, Value> {
        let mut out = Map::new();
        for (key, value) in map {
            if key == "@context" {
                continue;
            }
            if let Some(iri) = self.expand(key) {
                out.insert(compact_iri(&iri), self.compact_value(value));
            }
        }
        out
    }

    fn compact_value(&self, value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(self.compact_map(map)),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.compact_value(v)).collect()),
            other => other.clone(),
        }
    }
}

fn compact_iri(iri: &str) -> String {
    match iri.strip_prefix(EDC_NAMESPACE) {
        Some(rest) if !rest.is_empty() => rest.to_owned(),
        _ => iri.to_owned(),
    }
}

fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<Map<String, Value>, Refused> {
    let json_content = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"));
    if !json_content {
        return Err(refuse(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "InvalidRequest",
            "Content-Type must be application/json",
        )));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(refuse(error(StatusCode::BAD_REQUEST, "InvalidRequest", "Request body must be a JSON object"))),
        // Jackson's message as plain text, as EDC answers it.
        Err(e) => Err(refuse(
            (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, "text/plain")],
                format!("Request body is not valid JSON: {e}"),
            )
                .into_response(),
        )),
    }
}

/// `@id`: optional (EDC generates one) but not blank.
fn parse_id(body: &Map<String, Value>, violations: &mut Vec<Violation>) -> String {
    match body.get("@id") {
        None => uuid::Uuid::new_v4().to_string(),
        Some(Value::String(id)) if !id.trim().is_empty() => id.clone(),
        Some(other) => {
            violations.push(violation("@id must be a non-blank string", "@id", Some(other.clone())));
            String::new()
        }
    }
}

fn optional_object(
    ctx: &Context,
    body: &Map<String, Value>,
    name: &str,
    violations: &mut Vec<Violation>,
) -> Map<String, Value> {
    match ctx.field(body, name) {
        None => Map::new(),
        Some(Value::Object(map)) => ctx.compact_map(map),
        Some(other) => {
            violations.push(violation(
                format!("'{EDC_NAMESPACE}{name}' must be an object"),
                format!("{EDC_NAMESPACE}{name}"),
                Some(other.clone()),
            ));
            Map::new()
        }
    }
}

fn mandatory_object(
    ctx: &Context,
    body: &Map<String, Value>,
    name: &str,
    violations: &mut Vec<Violation>,
) -> Option<Map<String, Value>> {
    match ctx.field(body, name) {
        Some(Value::Object(map)) => Some(ctx.compact_map(map)),
        other => {
            violations.push(violation(
                format!("mandatory object '{EDC_NAMESPACE}{name}' is missing"),
                format!("{EDC_NAMESPACE}{name}"),
                other.cloned(),
            ));
            None
        }
    }
}

fn mandatory_string(ctx: &Context, body: &Map<String, Value>, name: &str, violations: &mut Vec<Violation>) -> String {
    match ctx.field(body, name) {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        other => {
            violations.push(violation(
                format!("mandatory value '{EDC_NAMESPACE}{name}' is missing or it is blank"),
                format!("{EDC_NAMESPACE}{name}"),
                other.cloned(),
            ));
            String::new()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Assets

fn parse_asset(app: &App, headers: &HeaderMap, body: &Bytes) -> Result<StoredAsset, Refused> {
    let body = parse_body(headers, body)?;
    let ctx = Context::require_edc_vocab(&body)?;
    let mut violations = Vec::new();
    let id = parse_id(&body, &mut violations);
    let properties = mandatory_object(&ctx, &body, "properties", &mut violations).unwrap_or_default();
    let private_properties = optional_object(&ctx, &body, "privateProperties", &mut violations);
    if let Some(key) = properties.keys().find(|k| private_properties.contains_key(*k)) {
        violations.push(violation(
            format!("cannot exists duplicated keys between 'properties' and 'privateProperties' ({key})"),
            format!("{EDC_NAMESPACE}properties"),
            None,
        ));
    }
    let data_address = mandatory_object(&ctx, &body, "dataAddress", &mut violations).unwrap_or_default();
    let data_type = data_address.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
    if !violations.iter().any(|v| v.path.as_deref() == Some(&format!("{EDC_NAMESPACE}dataAddress")))
        && data_type.trim().is_empty()
    {
        violations.push(violation(
            format!("mandatory value '{EDC_NAMESPACE}type' is missing or it is blank"),
            format!("{EDC_NAMESPACE}dataAddress/{EDC_NAMESPACE}type"),
            None,
        ));
    }
    if !violations.is_empty() {
        return Err(refuse(validation_failure(violations)));
    }
    if app.config.flavour == Flavour::Factoryx && data_type == "Mqtt" {
        let problems = factoryx_mqtt_violations(&data_address);
        if !problems.is_empty() {
            // The asset service's data-address validation: a bad request listing the violations.
            return Err(refuse(errors(StatusCode::BAD_REQUEST, "InvalidRequest", problems)));
        }
    }
    Ok(StoredAsset { id, properties, private_properties, data_address, created_at: 0 })
}

/// factoryx-edc's `MqttDataAddressValidator` (mqtt-data-address module, release 0.3.0).
fn factoryx_mqtt_violations(data_address: &Map<String, Value>) -> Vec<Violation> {
    let text = |key: &str| data_address.get(key).and_then(Value::as_str).filter(|s| !s.trim().is_empty());
    let mut out = Vec::new();
    let url_violation = |key: &str| {
        violation(
            format!("DataAddress of type 'Mqtt' must contain a valid url with property '{key}'"),
            key,
            data_address.get(key).cloned(),
        )
    };
    if !is_absolute_url(text("baseUrl")) {
        out.push(url_violation("baseUrl"));
    }
    let endpoint_type = text("mqttEndpointType");
    if let Err(detail) = parse_endpoint_type(endpoint_type) {
        out.push(violation(
            format!("DataAddress of type 'Mqtt' must contain valid property 'mqttEndpointType': {detail}"),
            "mqttEndpointType",
            data_address.get("mqttEndpointType").cloned(),
        ));
    }
    let oauth2 =
        ["oauth2:tokenUrl", "oauth2:clientId", "oauth2:clientSecretKeyAlias"].iter().all(|k| text(k).is_some());
    let basic = ["username", "passwordAlias"].iter().all(|k| text(k).is_some());
    if oauth2 == basic {
        out.push(Violation {
            message: "DataAddress of type 'Mqtt' must contain exactly one set of auth 'oauth2' or 'basic'".into(),
            path: None,
            invalid_value: None,
        });
    } else if oauth2 && !is_absolute_url(text("oauth2:tokenUrl")) {
        out.push(url_violation("oauth2:tokenUrl"));
    }
    out
}

fn is_absolute_url(value: Option<&str>) -> bool {
    value.and_then(|v| url::Url::parse(v).ok()).is_some_and(|u| u.host_str().is_some_and(|h| !h.is_empty()))
}

fn parse_endpoint_type(value: Option<&str>) -> Result<(), String> {
    let Some(value) = value else { return Err("Failed to parse endpoint type null".into()) };
    let tokens: Vec<String> = value.split('-').map(str::to_ascii_uppercase).collect();
    if tokens.len() != 3 {
        return Err(format!("Failed to parse endpoint type {value}"));
    }
    let ok = tokens[0] == "MQTT"
        && matches!(tokens[1].as_str(), "WSS" | "TCP")
        && matches!(tokens[2].as_str(), "BASIC" | "OAUTH2");
    if ok {
        Ok(())
    } else {
        Err(format!("Failed to parse endpoint type [{}]", value.split('-').collect::<Vec<_>>().join(", ")))
    }
}

async fn create_asset(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let mut asset = match parse_asset(&app, &headers, &body) {
        Ok(asset) => asset,
        Err(response) => return *response,
    };
    let mut store = app.state.lock();
    if store.assets.contains_key(&asset.id) {
        return conflict("Asset", &asset.id);
    }
    asset.created_at = now_ms();
    let response = id_response(&asset.id, asset.created_at);
    store.assets.insert(asset.id.clone(), asset);
    response
}

async fn update_asset(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let mut asset = match parse_asset(&app, &headers, &body) {
        Ok(asset) => asset,
        Err(response) => return *response,
    };
    let mut store = app.state.lock();
    let Some(existing) = store.assets.get(&asset.id) else { return not_found("Asset", &asset.id) };
    asset.created_at = existing.created_at;
    store.assets.insert(asset.id.clone(), asset);
    StatusCode::NO_CONTENT.into_response()
}

async fn get_asset(State(app): State<App>, Path(id): Path<String>) -> Response {
    let mut store = app.state.lock();
    if store.hidden_once.remove(&id) {
        return not_found("Asset", &id);
    }
    let Some(asset) = store.assets.get(&id) else { return not_found("Asset", &id) };
    let mut properties = asset.properties.clone();
    properties.insert("id".into(), Value::String(asset.id.clone()));
    let mut data_address = Map::new();
    data_address.insert("@type".into(), json!("DataAddress"));
    data_address.extend(asset.data_address.clone());
    let mut body = json!({
        "@id": asset.id,
        "@type": "Asset",
        "properties": properties,
        "dataAddress": data_address,
        "@context": output_context(),
    });
    if !asset.private_properties.is_empty() {
        body["privateProperties"] = Value::Object(asset.private_properties.clone());
    }
    axum::Json(body).into_response()
}

async fn delete_asset(State(app): State<App>, Path(id): Path<String>) -> Response {
    let mut store = app.state.lock();
    if !store.assets.contains_key(&id) {
        return not_found("Asset", &id);
    }
    if store.agreements.contains(&id) {
        return error(
            StatusCode::CONFLICT,
            "ObjectConflict",
            format!("Asset {id} cannot be deleted as it is referenced by at least one contract agreement"),
        );
    }
    store.assets.remove(&id);
    StatusCode::NO_CONTENT.into_response()
}

// ---------------------------------------------------------------------------------------------
// Policy definitions

fn odrl_get<'a>(map: &'a Map<String, Value>, term: &str) -> Option<&'a Value> {
    map.get(term).or_else(|| map.get(&format!("odrl:{term}"))).or_else(|| map.get(&format!("{ODRL_NAMESPACE}{term}")))
}

fn as_items(value: Option<&Value>) -> Vec<&Value> {
    match value {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => items.iter().collect(),
        Some(single) => vec![single],
    }
}

fn validate_policy(ctx: &Context, policy: &Map<String, Value>) -> Vec<Violation> {
    let mut out = Vec::new();
    let inner = Context::read(policy.get("@context"));
    let odrl_known = inner.odrl_remote || ctx.terms.get("odrl").is_some_and(|iri| iri == ODRL_NAMESPACE);
    let set_iri = format!("{ODRL_NAMESPACE}Set");
    let policy_type = policy.get("@type").and_then(Value::as_str).unwrap_or_default();
    let expanded = match policy_type {
        "Set" if odrl_known => set_iri.clone(),
        "odrl:Set" => set_iri.clone(),
        t if t.contains(':') => t.to_owned(),
        t => format!("{EDC_NAMESPACE}{t}"),
    };
    if expanded != set_iri {
        out.push(violation(
            format!("{EDC_NAMESPACE}policy was expected to have @type {set_iri} but it was {expanded}"),
            format!("{EDC_NAMESPACE}policy/@type"),
            policy.get("@type").cloned(),
        ));
    }
    for rule_kind in ["permission", "prohibition", "obligation"] {
        for (i, rule) in as_items(odrl_get(policy, rule_kind)).into_iter().enumerate() {
            let path = format!("{EDC_NAMESPACE}policy/{ODRL_NAMESPACE}{rule_kind}/{i}");
            let Some(rule) = rule.as_object() else {
                out.push(violation("a rule must be an object", path, Some(rule.clone())));
                continue;
            };
            if odrl_get(rule, "action").is_none_or(Value::is_null) {
                out.push(violation(
                    format!("{path}/{ODRL_NAMESPACE}action is mandatory but missing or null"),
                    format!("{ODRL_NAMESPACE}action"),
                    None,
                ));
            }
            for constraint in as_items(odrl_get(rule, "constraint")) {
                validate_constraint(constraint, &path, &mut out);
            }
        }
    }
    out
}

fn validate_constraint(constraint: &Value, path: &str, out: &mut Vec<Violation>) {
    let Some(c) = constraint.as_object() else {
        out.push(violation("a constraint must be an object", path, Some(constraint.clone())));
        return;
    };
    if ["and", "or", "xone", "andSequence"].iter().any(|l| odrl_get(c, l).is_some()) {
        return;
    }
    for term in ["leftOperand", "operator", "rightOperand"] {
        if odrl_get(c, term).is_none_or(Value::is_null) {
            out.push(violation(
                format!("mandatory value '{ODRL_NAMESPACE}{term}' is missing or it is blank"),
                format!("{path}/{ODRL_NAMESPACE}constraint/{ODRL_NAMESPACE}{term}"),
                None,
            ));
        }
    }
}

fn parse_policy(headers: &HeaderMap, body: &Bytes) -> Result<StoredPolicy, Refused> {
    let body = parse_body(headers, body)?;
    let ctx = Context::require_edc_vocab(&body)?;
    let mut violations = Vec::new();
    let id = parse_id(&body, &mut violations);
    let private_properties = optional_object(&ctx, &body, "privateProperties", &mut violations);
    let mut policy = Value::Null;
    match ctx.field(&body, "policy") {
        Some(Value::Object(map)) => {
            violations.extend(validate_policy(&ctx, map));
            let mut stored = map.clone();
            stored.remove("@context");
            policy = Value::Object(stored);
        }
        other => violations.push(violation(
            format!("mandatory object '{EDC_NAMESPACE}policy' is missing"),
            format!("{EDC_NAMESPACE}policy"),
            other.cloned(),
        )),
    }
    if !violations.is_empty() {
        return Err(refuse(validation_failure(violations)));
    }
    Ok(StoredPolicy { id, policy, private_properties, created_at: 0, policy_uid: uuid::Uuid::new_v4().to_string() })
}

async fn create_policy(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let mut policy = match parse_policy(&headers, &body) {
        Ok(policy) => policy,
        Err(response) => return *response,
    };
    let mut store = app.state.lock();
    if store.policies.contains_key(&policy.id) {
        return conflict("Policy", &policy.id);
    }
    policy.created_at = now_ms();
    let response = id_response(&policy.id, policy.created_at);
    store.policies.insert(policy.id.clone(), policy);
    response
}

/// EDC takes the id to update from the body, not the path (its controller transforms the body).
async fn update_policy(
    State(app): State<App>,
    Path(_path_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut policy = match parse_policy(&headers, &body) {
        Ok(policy) => policy,
        Err(response) => return *response,
    };
    let mut store = app.state.lock();
    let Some(existing) = store.policies.get(&policy.id) else { return not_found("PolicyDefinition", &policy.id) };
    policy.created_at = existing.created_at;
    store.policies.insert(policy.id.clone(), policy);
    StatusCode::NO_CONTENT.into_response()
}

async fn get_policy(State(app): State<App>, Path(id): Path<String>) -> Response {
    let mut store = app.state.lock();
    if store.hidden_once.remove(&id) {
        return not_found("PolicyDefinition", &id);
    }
    let Some(policy) = store.policies.get(&id) else { return not_found("PolicyDefinition", &id) };
    let mut body = json!({
        "@id": policy.id,
        "@type": "PolicyDefinition",
        "createdAt": policy.created_at,
        "policy": render_policy(&policy.policy, &policy.policy_uid),
        "@context": output_context(),
    });
    if !policy.private_properties.is_empty() {
        body["privateProperties"] = Value::Object(policy.private_properties.clone());
    }
    axum::Json(body).into_response()
}

async fn delete_policy(State(app): State<App>, Path(id): Path<String>) -> Response {
    let mut store = app.state.lock();
    if !store.policies.contains_key(&id) {
        return not_found("PolicyDefinition", &id);
    }
    let referenced =
        store.contract_definitions.values().any(|cd| cd.access_policy_id == id || cd.contract_policy_id == id);
    if referenced {
        return error(
            StatusCode::CONFLICT,
            "ObjectConflict",
            format!("PolicyDefinition {id} cannot be deleted as it is referenced by at least one contract definition"),
        );
    }
    store.policies.remove(&id);
    StatusCode::NO_CONTENT.into_response()
}

/// The policy the way EDC answers it: ODRL terms prefixed, IRIs as `{"@id": …}`, a generated
/// `@id`, empty rule lists present, single-element arrays unwrapped.
fn render_policy(policy: &Value, uid: &str) -> Value {
    let empty = Map::new();
    let map = policy.as_object().unwrap_or(&empty);
    let rules = |kind: &str| unwrap_single(as_items(odrl_get(map, kind)).into_iter().map(render_rule).collect());
    json!({
        "@id": uid,
        "@type": "odrl:Set",
        "odrl:permission": rules("permission"),
        "odrl:prohibition": rules("prohibition"),
        "odrl:obligation": rules("obligation"),
    })
}

fn render_rule(rule: &Value) -> Value {
    let Some(map) = rule.as_object() else { return rule.clone() };
    let mut out = Map::new();
    if let Some(action) = odrl_get(map, "action") {
        out.insert("odrl:action".into(), as_iri(action, "odrl:"));
    }
    let constraints: Vec<Value> = as_items(odrl_get(map, "constraint")).into_iter().map(render_constraint).collect();
    if !constraints.is_empty() {
        out.insert("odrl:constraint".into(), unwrap_single(constraints));
    }
    Value::Object(out)
}

fn render_constraint(constraint: &Value) -> Value {
    let Some(map) = constraint.as_object() else { return constraint.clone() };
    let mut out = Map::new();
    for logical in ["and", "or", "xone", "andSequence"] {
        if let Some(inner) = odrl_get(map, logical) {
            let inner: Vec<Value> = as_items(Some(inner)).into_iter().map(render_constraint).collect();
            out.insert(format!("odrl:{logical}"), Value::Array(inner));
        }
    }
    if let Some(left) = odrl_get(map, "leftOperand") {
        out.insert("odrl:leftOperand".into(), as_iri(left, "edc:"));
    }
    if let Some(op) = odrl_get(map, "operator") {
        out.insert("odrl:operator".into(), as_iri(op, "odrl:"));
    }
    if let Some(right) = odrl_get(map, "rightOperand") {
        out.insert("odrl:rightOperand".into(), right.clone());
    }
    Value::Object(out)
}

fn as_iri(value: &Value, prefix: &str) -> Value {
    let name = match value {
        Value::String(s) => s.clone(),
        Value::Object(m) => match m.get("@id") {
            Some(Value::String(s)) => s.clone(),
            _ => return value.clone(),
        },
        other => return other.clone(),
    };
    let name = if name.contains(':') { name } else { format!("{prefix}{name}") };
    json!({"@id": name})
}

fn unwrap_single(mut items: Vec<Value>) -> Value {
    if items.len() == 1 { items.remove(0) } else { Value::Array(items) }
}

// ---------------------------------------------------------------------------------------------
// Contract definitions

const OPERATORS: &[&str] = &["=", "!=", "in", "like", "ilike", "<", "<=", ">", ">=", "contains"];

fn parse_contract_definition(headers: &HeaderMap, body: &Bytes) -> Result<StoredContractDefinition, Refused> {
    let body = parse_body(headers, body)?;
    let ctx = Context::require_edc_vocab(&body)?;
    let mut violations = Vec::new();
    let id = parse_id(&body, &mut violations);
    let access_policy_id = mandatory_string(&ctx, &body, "accessPolicyId", &mut violations);
    let contract_policy_id = mandatory_string(&ctx, &body, "contractPolicyId", &mut violations);
    let private_properties = optional_object(&ctx, &body, "privateProperties", &mut violations);
    let mut assets_selector = Vec::new();
    for (i, item) in as_items(ctx.field(&body, "assetsSelector")).into_iter().enumerate() {
        let path = format!("{EDC_NAMESPACE}assetsSelector/{i}");
        let Some(map) = item.as_object() else {
            violations.push(violation("a criterion must be an object", path, Some(item.clone())));
            continue;
        };
        let map = ctx.compact_map(map);
        let text = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_owned);
        let left = text("operandLeft");
        let operator = text("operator");
        if left.as_deref().is_none_or(|l| l.trim().is_empty()) {
            violations.push(violation(
                format!("mandatory value '{EDC_NAMESPACE}operandLeft' is missing or it is blank"),
                format!("{path}/{EDC_NAMESPACE}operandLeft"),
                None,
            ));
        }
        match operator.as_deref() {
            Some(op) if OPERATORS.contains(&op.to_ascii_lowercase().as_str()) => {}
            other => violations.push(violation(
                format!("operator must be one of {OPERATORS:?}"),
                format!("{path}/{EDC_NAMESPACE}operator"),
                other.map(|o| Value::String(o.to_owned())),
            )),
        }
        assets_selector.push(Criterion {
            operand_left: left.unwrap_or_default(),
            operator: operator.unwrap_or_default(),
            operand_right: map.get("operandRight").cloned().unwrap_or(Value::Null),
        });
    }
    if !violations.is_empty() {
        return Err(refuse(validation_failure(violations)));
    }
    Ok(StoredContractDefinition {
        id,
        access_policy_id,
        contract_policy_id,
        assets_selector,
        private_properties,
        created_at: 0,
    })
}

async fn create_contract_definition(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let mut definition = match parse_contract_definition(&headers, &body) {
        Ok(definition) => definition,
        Err(response) => return *response,
    };
    let mut store = app.state.lock();
    if store.contract_definitions.contains_key(&definition.id) {
        return conflict("Contract Definition", &definition.id);
    }
    definition.created_at = now_ms();
    let response = id_response(&definition.id, definition.created_at);
    store.contract_definitions.insert(definition.id.clone(), definition);
    response
}

async fn update_contract_definition(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let mut definition = match parse_contract_definition(&headers, &body) {
        Ok(definition) => definition,
        Err(response) => return *response,
    };
    let mut store = app.state.lock();
    let Some(existing) = store.contract_definitions.get(&definition.id) else {
        // Sic: EDC 0.15.1's update says `ID=null` here (it formats the message before the id).
        return not_found("ContractDefinition", "null");
    };
    definition.created_at = existing.created_at;
    store.contract_definitions.insert(definition.id.clone(), definition);
    StatusCode::NO_CONTENT.into_response()
}

async fn get_contract_definition(State(app): State<App>, Path(id): Path<String>) -> Response {
    let mut store = app.state.lock();
    if store.hidden_once.remove(&id) {
        return not_found("ContractDefinition", &id);
    }
    let Some(definition) = store.contract_definitions.get(&id) else {
        return not_found("ContractDefinition", &id);
    };
    let criteria: Vec<Value> = definition
        .assets_selector
        .iter()
        .map(|c| {
            json!({"@type": "Criterion", "operandLeft": c.operand_left, "operator": c.operator, "operandRight": c.operand_right})
        })
        .collect();
    let selector = if criteria.len() == 1 { unwrap_single(criteria) } else { Value::Array(criteria) };
    let mut body = json!({
        "@id": definition.id,
        "@type": "ContractDefinition",
        "accessPolicyId": definition.access_policy_id,
        "contractPolicyId": definition.contract_policy_id,
        "assetsSelector": selector,
        "@context": output_context(),
    });
    if !definition.private_properties.is_empty() {
        body["privateProperties"] = Value::Object(definition.private_properties.clone());
    }
    axum::Json(body).into_response()
}

async fn delete_contract_definition(State(app): State<App>, Path(id): Path<String>) -> Response {
    let mut store = app.state.lock();
    if store.contract_definitions.remove(&id).is_none() {
        return not_found("ContractDefinition", &id);
    }
    StatusCode::NO_CONTENT.into_response()
}

// ---------------------------------------------------------------------------------------------
// Catalog

fn selects(criterion: &Criterion, asset: &StoredAsset) -> bool {
    let left = compact_iri(criterion.operand_left.strip_prefix("edc:").unwrap_or(&criterion.operand_left));
    let value = if left == "id" {
        Some(Value::String(asset.id.clone()))
    } else {
        asset.properties.get(&left).or_else(|| asset.private_properties.get(&left)).cloned()
    };
    let Some(value) = value else { return false };
    match criterion.operator.to_ascii_lowercase().as_str() {
        "=" => value == criterion.operand_right,
        "!=" => value != criterion.operand_right,
        "in" => criterion.operand_right.as_array().is_some_and(|items| items.contains(&value)),
        // The rest would need EDC's type coercion; no operator test relies on them.
        _ => false,
    }
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

async fn request_catalog(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let body = match parse_body(&headers, &body) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let ctx = match Context::require_edc_vocab(&body) {
        Ok(ctx) => ctx,
        Err(response) => return *response,
    };
    let mut violations = Vec::new();
    let counter_party = mandatory_string(&ctx, &body, "counterPartyAddress", &mut violations);
    mandatory_string(&ctx, &body, "protocol", &mut violations);
    if !violations.is_empty() {
        // EDC 0.15.1 validates no v3 catalog request: its transformer fails, Jetty answers.
        return bare_bad_request();
    }

    let store = app.state.lock();
    let participant = app.config.participant_id.clone();
    let service_id = uuid::Uuid::new_v4().to_string();
    let mut datasets = Vec::new();
    for asset in store.assets.values() {
        let mut offers = Vec::new();
        for definition in store.contract_definitions.values() {
            let selected = definition.assets_selector.iter().all(|c| selects(c, asset));
            let (Some(_access), Some(contract)) =
                (store.policies.get(&definition.access_policy_id), store.policies.get(&definition.contract_policy_id))
            else {
                continue;
            };
            if !selected {
                continue;
            }
            let mut offer = Map::new();
            offer.insert(
                "@id".into(),
                json!(format!("{}:{}:{}", b64(&definition.id), b64(&asset.id), b64(&uuid::Uuid::new_v4().to_string()))),
            );
            offer.insert("@type".into(), json!("Offer"));
            // EDC 0.15.1's DSP 2025-1 offer: no assigner or target, empty rule lists left out.
            for kind in ["permission", "prohibition", "obligation"] {
                let rules: Vec<Value> = contract
                    .policy
                    .as_object()
                    .map(|p| as_items(odrl_get(p, kind)))
                    .unwrap_or_default()
                    .into_iter()
                    .map(dsp_rule)
                    .collect();
                if !rules.is_empty() {
                    offer.insert(kind.into(), Value::Array(rules));
                }
            }
            offers.push(Value::Object(offer));
        }
        if offers.is_empty() {
            continue;
        }
        let data_type = asset.data_address.get("type").and_then(Value::as_str).unwrap_or_default();
        let mut formats: Vec<String> = Vec::new();
        if app.config.flavour == Flavour::Factoryx && data_type == "Mqtt" {
            formats.extend(["Mqtt-PULL".to_owned(), "HttpData-PULL".to_owned()]);
        }
        for plane in &store.data_planes {
            if plane.allowed_source_types.iter().any(|t| t == data_type) {
                formats.extend(plane.allowed_transfer_types.iter().cloned());
            }
        }
        let mut seen = BTreeSet::new();
        formats.retain(|f| seen.insert(f.clone()));
        let distributions: Vec<Value> = formats
            .iter()
            .map(|f| json!({"@type": "Distribution", "format": f, "accessService": service_id}))
            .collect();
        // The DSP context has no EDC vocabulary: EDC's own properties come out `edc:`-prefixed,
        // and the asset id as a bare `id`.
        let mut dataset = Map::new();
        for (key, value) in &asset.properties {
            if key != "id" {
                dataset.insert(edc_prefixed(key), value.clone());
            }
        }
        dataset.insert("id".into(), Value::String(asset.id.clone()));
        dataset.insert("@id".into(), Value::String(asset.id.clone()));
        dataset.insert("@type".into(), json!("Dataset"));
        dataset.insert("hasPolicy".into(), Value::Array(offers));
        dataset.insert("distribution".into(), Value::Array(distributions));
        datasets.push(Value::Object(dataset));
    }
    let mut catalog = json!({
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld", "https://w3id.org/edc/dspace/v0.0.1"],
        "@id": uuid::Uuid::new_v4().to_string(),
        "@type": "Catalog",
        "participantId": participant,
        "service": [{
            "@id": service_id, "@type": "DataService",
            "endpointDescription": "dspace:connector", "endpointURL": counter_party
        }],
    });
    // An empty list is left out of the compacted catalog.
    if !datasets.is_empty() {
        catalog["dataset"] = Value::Array(datasets);
    }
    axum::Json(catalog).into_response()
}

/// A key of EDC's vocabulary as it comes out under the DSP context.
fn edc_prefixed(key: &str) -> String {
    if key.contains(':') { key.to_owned() } else { format!("edc:{key}") }
}

/// A rule of a contract policy as an offer in a DSP 2025-1 catalog shows it: left operands of
/// EDC's vocabulary `edc:`-prefixed, everything else as stored.
fn dsp_rule(rule: &Value) -> Value {
    let mut rule = rule.clone();
    fn visit(value: &mut Value) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(left)) = map.get_mut("leftOperand") {
                    *left = edc_prefixed(left);
                }
                map.values_mut().for_each(visit);
            }
            Value::Array(items) => items.iter_mut().for_each(visit),
            _ => {}
        }
    }
    visit(&mut rule);
    rule
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(value: Value) -> Context {
        Context::read(Some(&value))
    }

    #[test]
    fn undeclared_prefix_keeps_the_literal_key() {
        let c = ctx(json!({"@vocab": EDC_NAMESPACE}));
        assert_eq!(c.expand("oauth2:tokenUrl").as_deref(), Some("oauth2:tokenUrl"));
        assert_eq!(compact_iri(&c.expand("baseUrl").unwrap()), "baseUrl");
    }

    #[test]
    fn declared_prefix_expands_the_key() {
        let c = ctx(json!({"@vocab": EDC_NAMESPACE, "oauth2": "https://example.org/oauth2/"}));
        assert_eq!(c.expand("oauth2:tokenUrl").as_deref(), Some("https://example.org/oauth2/tokenUrl"));
    }

    #[test]
    fn without_vocab_plain_keys_are_dropped() {
        let c = ctx(json!({"edc": EDC_NAMESPACE}));
        assert_eq!(c.expand("properties"), None);
        assert_eq!(compact_iri(&c.expand("edc:properties").unwrap()), "properties");
    }

    #[test]
    fn endpoint_type_parser_is_the_reference_one() {
        assert!(parse_endpoint_type(Some("mqtt-wss-oauth2")).is_ok());
        assert!(parse_endpoint_type(Some("MQTT-TCP-Basic")).is_ok());
        assert!(parse_endpoint_type(Some("mqtt-wss")).is_err());
        assert!(parse_endpoint_type(Some("mqtt-tls-basic")).is_err());
        assert!(parse_endpoint_type(None).is_err());
    }
}
