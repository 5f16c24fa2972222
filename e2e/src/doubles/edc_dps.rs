//! A double of an EDC 0.18 control plane's side of Data Plane Signaling 1.0, for the data plane
//! suite: EDC 0.18 is not on the Maven mirror here (0.16–0.18 answer 404), so no real control
//! plane of that release can run. Written from EDC 0.18.0's sources (tag `v0.18.0`:
//! `data-protocols/data-plane-signaling`, `data-plane-signaling-oauth2`) and the spec
//! (`eclipse-dataplane-signaling`, v1.0-RC3), read, not copied; what it checks is what those
//! sources check, nothing kinder:
//!
//! - Management API: `PUT /management/v4/dataplanes` (an upsert; `x-api-key`), `GET` (a JSON-LD
//!   list: `@id`, `url`, `allowedTransferTypes`, `state`), `DELETE …/{id}` (200, 404).
//! - Signaling calls to the data plane, as EDC's `DataPlaneSignalingClient` makes them: before
//!   each, a token from the registered `tokenEndpoint` (client credentials as form fields, 200
//!   with `access_token` or the call fails), then `POST {endpoint}/start` (a
//!   `DataFlowStartMessage` with every key EDC writes, `null`s included), `/{id}/suspend`
//!   (`{"messageId", "reason": "suspend"}`), `/{id}/resume` (`{"messageId", "dataAddress", "processId"}`
//!   with the stored address and a random `processId`), `/{id}/terminate` (`{"messageId"}`),
//!   `/{id}/completed` (`{}`). Any non-2xx is fatal for the process. A start's answer must have a
//!   `state`; `STARTED` with a `dataAddress` whose `endpointType` is set stores that address.
//! - Callbacks: `POST /signaling/transfers/{id}/dataflow/{prepared|started|completed|errored}`
//!   with `Authorization: Bearer <JWT>`: a signed JWS (no `none`) whose signature verifies
//!   against the registration's inline `jwks` when it has one (unchecked without, as in EDC),
//!   `sub` = the data plane id the process is bound to, `exp` in the future, `iat` (if any) not
//!   after now, a `jti` never seen before; an unknown process answers 401 (the filter runs
//!   first). `completed` moves a STARTED
//!   process to COMPLETED; `errored` (its body required) changes nothing (EDC only logs it).
//! - `POST /management/v3/transferprocesses/{id}/terminate` (`TerminateTransfer` with a reason):
//!   the provider's process goes TERMINATED and, as EDC's state machine does, the data plane
//!   gets `/{id}/terminate`.
//! - The consumer's side as far as EDC 0.18 keeps it: the EDR is the DataAddress of the first
//!   start and is republished unchanged after a resume ([`Process::consumer_edr`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, post, put};
use base64::Engine;
use serde_json::{Value, json};

use super::{DoubleServer, start};
use crate::tls::TestCa;

/// A process as the double's control plane holds it.
#[derive(Clone, Debug, Default)]
pub struct Process {
    /// The data plane it is bound to.
    pub data_plane_id: String,
    /// `STARTED`, `SUSPENDED`, `TERMINATED`, `COMPLETED`.
    pub state: String,
    /// The data address the data plane answered with (the EDR).
    pub data_address: Option<Value>,
    /// The callbacks received, by kind (`completed`, `errored`…), with their bodies; a
    /// Management API termination as `terminate`.
    pub callbacks: Vec<(String, Value)>,
    /// The EDR the consumer's connector holds: the first start's DataAddress (EDC 0.18 keeps it
    /// across a resume).
    pub consumer_edr: Option<Value>,
    /// The data plane's answer to the `/terminate` that followed a Management API termination.
    pub data_plane_terminated: Option<Result<(), String>>,
}

#[derive(Default)]
struct Inner {
    registrations: BTreeMap<String, Value>,
    processes: BTreeMap<String, Process>,
    jtis: std::collections::BTreeSet<String>,
    refused_callbacks: Vec<String>,
}

/// The double; cheap to clone.
#[derive(Clone)]
pub struct EdcDps {
    inner: Arc<Mutex<Inner>>,
    api_key: String,
    http: reqwest::Client,
}

/// Why a signaling call failed (EDC: fatal for the process).
#[derive(Debug)]
pub struct Fatal {
    /// HTTP status of the data plane's answer (0: no answer).
    pub status: u16,
    /// What it said, or why the call did not happen.
    pub detail: String,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

fn random() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl EdcDps {
    /// A double whose Management API wants `api_key`; its calls to data planes trust `ca`.
    pub fn new(ca: &TestCa, api_key: &str) -> Self {
        let root = reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).expect("the CA's PEM");
        let http = reqwest::Client::builder().tls_certs_only([root]).build().expect("an HTTPS client");
        EdcDps { inner: Arc::default(), api_key: api_key.to_owned(), http }
    }

    /// Serves the Management API below `/management` and the signaling callbacks below
    /// `/signaling` over HTTPS.
    pub async fn serve(&self, ca: &TestCa) -> std::io::Result<DoubleServer> {
        let router = Router::new()
            .route("/management/v4/dataplanes", put(register).get(list))
            .route("/management/v4/dataplanes/{id}", delete(unregister))
            .route("/signaling/transfers/{id}/dataflow/{kind}", post(callback))
            .route("/management/v3/transferprocesses/{id}/terminate", post(terminate_process))
            .with_state(self.clone());
        start(router, ca).await
    }

    /// The registration stored under `id`, as it was sent.
    pub fn registration(&self, id: &str) -> Option<Value> {
        self.inner.lock().unwrap().registrations.get(id).cloned()
    }

    /// Removes a registration behind the data plane's back.
    pub fn forget(&self, id: &str) {
        self.inner.lock().unwrap().registrations.remove(id);
    }

    /// The process `id`.
    pub fn process(&self, id: &str) -> Option<Process> {
        self.inner.lock().unwrap().processes.get(id).cloned()
    }

    /// Callbacks refused so far, with the reason.
    pub fn refused_callbacks(&self) -> Vec<String> {
        self.inner.lock().unwrap().refused_callbacks.clone()
    }

    /// EDC's `Oauth2CredentialsSignalingAuthorization`: a token per call from the registration's
    /// token endpoint.
    async fn token(&self, registration: &Value) -> Result<Option<String>, Fatal> {
        let auth = &registration["authorization"];
        if auth.is_null() {
            return Ok(None);
        }
        if auth["type"] != "oauth2_client_credentials" {
            return Err(Fatal { status: 0, detail: format!("Authorization {} not supported", auth["type"]) });
        }
        let text = |k: &str| auth[k].as_str().unwrap_or_default().to_owned();
        let form = [
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", text("clientId")),
            ("client_secret", text("clientSecret")),
        ];
        let response = self
            .http
            .post(text("tokenEndpoint"))
            .header("Accept", "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| Fatal { status: 0, detail: format!("token endpoint: {e}") })?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(Fatal { status, detail: "the token endpoint refused".into() });
        }
        let body: Value =
            response.json().await.map_err(|e| Fatal { status, detail: format!("token endpoint body: {e}") })?;
        body["access_token"]
            .as_str()
            .map(|t| Some(t.to_owned()))
            .ok_or_else(|| Fatal { status, detail: "no access_token".into() })
    }

    async fn call(&self, data_plane_id: &str, path: &str, body: Value) -> Result<(u16, Value), Fatal> {
        let registration = self
            .registration(data_plane_id)
            .ok_or_else(|| Fatal { status: 0, detail: format!("no data plane {data_plane_id}") })?;
        let endpoint = registration["endpoint"].as_str().unwrap_or_default().to_owned();
        let mut request = self.http.post(format!("{endpoint}/{path}")).json(&body);
        if let Some(token) = self.token(&registration).await? {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| Fatal { status: 0, detail: e.to_string() })?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(Fatal { status, detail: text });
        }
        let value =
            if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::Null) };
        Ok((status, value))
    }

    /// The provider's start of a `Mqtt-PULL` process on data plane `data_plane_id`, as EDC 0.18
    /// sends it; the answer's `state` and `dataAddress` are stored as EDC stores them.
    pub async fn start(
        &self,
        data_plane_id: &str,
        process_id: &str,
        dataset_id: &str,
        consumer: &str,
        callback_address: &str,
    ) -> Result<Value, Fatal> {
        self.start_with(data_plane_id, process_id, start_message(process_id, dataset_id, consumer, callback_address))
            .await
    }

    /// A start with the message as given (for refusals).
    pub async fn start_with(&self, data_plane_id: &str, process_id: &str, message: Value) -> Result<Value, Fatal> {
        let result = self.call(data_plane_id, "start", message).await;
        let mut inner = self.inner.lock().unwrap();
        let process = inner.processes.entry(process_id.to_owned()).or_default();
        process.data_plane_id = data_plane_id.to_owned();
        match &result {
            Ok((_, answer)) => {
                // EDC: `state` is required; the address needs its `endpointType`.
                let state = answer["state"]
                    .as_str()
                    .ok_or_else(|| Fatal { status: 200, detail: format!("the answer has no state: {answer}") });
                match state {
                    Ok(state) => {
                        process.state = state.to_owned();
                        if answer["dataAddress"].is_object() {
                            if answer["dataAddress"]["endpointType"].as_str().is_none() {
                                process.state = "TERMINATED".into();
                                return Err(Fatal { status: 200, detail: "dataAddress without endpointType".into() });
                            }
                            process.data_address = Some(answer["dataAddress"].clone());
                            process.consumer_edr.get_or_insert_with(|| answer["dataAddress"].clone());
                        }
                    }
                    Err(e) => {
                        process.state = "TERMINATED".into();
                        return Err(Fatal { status: e.status, detail: e.detail.clone() });
                    }
                }
                Ok(answer.clone())
            }
            Err(e) => {
                process.state = "TERMINATED".into();
                Err(Fatal { status: e.status, detail: e.detail.clone() })
            }
        }
    }

    fn bound(&self, process_id: &str) -> Result<String, Fatal> {
        self.process(process_id)
            .map(|p| p.data_plane_id)
            .ok_or_else(|| Fatal { status: 0, detail: format!("no process {process_id}") })
    }

    fn set_state(&self, process_id: &str, state: &str) {
        if let Some(p) = self.inner.lock().unwrap().processes.get_mut(process_id) {
            p.state = state.to_owned();
        }
    }

    /// Suspend (`reason` is always "suspend" in EDC 0.18).
    pub async fn suspend(&self, process_id: &str) -> Result<(), Fatal> {
        let dp = self.bound(process_id)?;
        let body = json!({"messageId": random(), "reason": "suspend"});
        let result = self.call(&dp, &format!("{}/suspend", enc(process_id)), body).await.map(drop);
        self.set_state(process_id, if result.is_ok() { "SUSPENDED" } else { "TERMINATED" });
        result
    }

    /// Resume of a process whose provider owns the address: the stored address goes along
    /// (and a random `processId`, as EDC's deprecated getter makes one); the answer must carry
    /// a `dataAddress` for the consumer.
    pub async fn resume(&self, process_id: &str) -> Result<Value, Fatal> {
        let dp = self.bound(process_id)?;
        let stored = self.process(process_id).and_then(|p| p.data_address).unwrap_or(Value::Null);
        let body = json!({"messageId": random(), "dataAddress": stored, "processId": random()});
        let result = self.call(&dp, &format!("{}/resume", enc(process_id)), body).await;
        let mut inner = self.inner.lock().unwrap();
        let process = inner.processes.get_mut(process_id).expect("bound above");
        match result {
            Ok((_, answer)) if answer["dataAddress"]["endpointType"].is_string() => {
                process.state = "STARTED".into();
                process.data_address = Some(answer["dataAddress"].clone());
                Ok(answer)
            }
            Ok((_, answer)) => {
                // The consumer refuses a resume without an address (EDC 0.18 TPPS).
                process.state = "TERMINATED".into();
                Err(Fatal { status: 200, detail: format!("a resume answer without a dataAddress: {answer}") })
            }
            Err(e) => {
                process.state = "TERMINATED".into();
                Err(e)
            }
        }
    }

    /// Terminate.
    pub async fn terminate(&self, process_id: &str) -> Result<(), Fatal> {
        let dp = self.bound(process_id)?;
        let result =
            self.call(&dp, &format!("{}/terminate", enc(process_id)), json!({"messageId": random()})).await.map(drop);
        self.set_state(process_id, "TERMINATED");
        result
    }

    /// Completed (the consumer's side completed the transfer): `{}`.
    pub async fn completed(&self, process_id: &str) -> Result<(), Fatal> {
        let dp = self.bound(process_id)?;
        let result = self.call(&dp, &format!("{}/completed", enc(process_id)), json!({})).await.map(drop);
        self.set_state(process_id, if result.is_ok() { "COMPLETED" } else { "TERMINATED" });
        result
    }
}

fn enc(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>().replace('+', "%20")
}

/// A `DataFlowStartMessage` as EDC 0.18 serializes it for a provider PULL start (Jackson with
/// `null`s; no `dataAddress`; `participantId` the provider, `counterPartyId` the consumer).
pub fn start_message(process_id: &str, dataset_id: &str, consumer: &str, callback_address: &str) -> Value {
    json!({
        "messageId": random(),
        "participantId": "did:web:provider.example.com",
        "counterPartyId": consumer,
        "dataspaceContext": "dataspace-protocol-http:2025-1",
        "processId": process_id,
        "agreementId": format!("agreement-{process_id}"),
        "datasetId": dataset_id,
        "callbackAddress": callback_address,
        "transferType": "Mqtt-PULL",
        "labels": [],
        "metadata": {},
        "claims": null,
    })
}

fn api_key_ok(double: &EdcDps, headers: &HeaderMap) -> bool {
    headers.get("x-api-key").and_then(|v| v.to_str().ok()) == Some(double.api_key.as_str())
}

fn edc_error(status: StatusCode, message: &str) -> (StatusCode, axum::Json<Value>) {
    (status, axum::Json(json!([{"message": message, "type": "InvalidRequest"}])))
}

async fn register(
    State(double): State<EdcDps>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, axum::Json<Value>) {
    if !api_key_ok(&double, &headers) {
        return edc_error(StatusCode::UNAUTHORIZED, "Request could not be authenticated");
    }
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return edc_error(StatusCode::BAD_REQUEST, "not JSON");
    };
    // EDC: `new URL(endpoint)` throws for a missing or bad one (a 500).
    if value["endpoint"].as_str().and_then(|e| url::Url::parse(e).ok()).is_none() {
        return edc_error(StatusCode::INTERNAL_SERVER_ERROR, "endpoint is not a URL");
    }
    let id = value["dataplaneId"].as_str().map(str::to_owned).unwrap_or_else(random);
    double.inner.lock().unwrap().registrations.insert(id, value);
    (StatusCode::OK, axum::Json(Value::Null))
}

async fn list(State(double): State<EdcDps>, headers: HeaderMap) -> (StatusCode, axum::Json<Value>) {
    if !api_key_ok(&double, &headers) {
        return edc_error(StatusCode::UNAUTHORIZED, "Request could not be authenticated");
    }
    let items: Vec<Value> = double
        .inner
        .lock()
        .unwrap()
        .registrations
        .iter()
        .map(|(id, r)| {
            json!({"@id": id, "@type": "DataPlaneInstance", "url": r["endpoint"],
                "allowedTransferTypes": r["transferTypes"], "state": "REGISTERED",
                "@context": {"@vocab": "https://w3id.org/edc/v0.0.1/ns/"}})
        })
        .collect();
    (StatusCode::OK, axum::Json(Value::Array(items)))
}

async fn unregister(
    State(double): State<EdcDps>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> (StatusCode, axum::Json<Value>) {
    if !api_key_ok(&double, &headers) {
        return edc_error(StatusCode::UNAUTHORIZED, "Request could not be authenticated");
    }
    match double.inner.lock().unwrap().registrations.remove(&id) {
        Some(_) => (StatusCode::OK, axum::Json(Value::Null)),
        None => edc_error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// The claims of a signed compact JWS, unverified (EDC 0.18 verifies a signature only against
/// a registered `jwks`/`jwksUri`).
fn jws_claims(token: &str) -> Result<Value, String> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 || parts[2].is_empty() {
        return Err("not a signed JWS".into());
    }
    let decode = |p: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .ok_or_else(|| "not base64url JSON".to_owned())
    };
    let header = decode(parts[0])?;
    if header["alg"].as_str().is_none_or(|a| a.eq_ignore_ascii_case("none")) {
        return Err("unsigned".into());
    }
    decode(parts[1])
}

/// The signature of a compact JWS against a JWK Set, the key chosen by `kid` (EDC's
/// `JwksPublicKeyResolver`); claims are checked by the caller.
fn verify_signature(token: &str, jwks: &Value) -> Result<(), String> {
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_value(jwks.clone()).map_err(|e| format!("the registered jwks: {e}"))?;
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("header: {e}"))?;
    let jwk = match &header.kid {
        Some(kid) => set.find(kid).ok_or_else(|| format!("no key {kid} in the registered jwks"))?,
        None => set.keys.first().ok_or("an empty jwks")?,
    };
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| format!("the registered key: {e}"))?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(token, &key, &validation).map(drop).map_err(|e| format!("signature: {e}"))
}

async fn callback(
    State(double): State<EdcDps>,
    Path((id, kind)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let mut inner = double.inner.lock().unwrap();
    let refuse = |inner: &mut Inner, why: String| {
        inner.refused_callbacks.push(format!("{kind} {id}: {why}"));
        StatusCode::UNAUTHORIZED
    };
    let Some(bound) = inner.processes.get(&id).map(|p| p.data_plane_id.clone()) else {
        return refuse(&mut inner, "unknown process".into());
    };
    let token = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let claims = match token.map(jws_claims) {
        Some(Ok(c)) => c,
        Some(Err(e)) => return refuse(&mut inner, e),
        None => return refuse(&mut inner, "no bearer".into()),
    };
    let jwks = inner.registrations.get(&bound).map(|r| r["authorization"]["jwks"].clone()).unwrap_or(Value::Null);
    if !jwks.is_null()
        && let Err(e) = verify_signature(token.unwrap_or_default(), &jwks)
    {
        return refuse(&mut inner, e);
    }
    if claims["sub"].as_str() != Some(bound.as_str()) {
        return refuse(&mut inner, format!("sub {} is not {bound}", claims["sub"]));
    }
    let t = now();
    if claims["exp"].as_u64().is_none_or(|exp| exp <= t) {
        return refuse(&mut inner, "exp missing or past".into());
    }
    if claims["iat"].as_u64().is_some_and(|iat| iat > t) {
        return refuse(&mut inner, "iat in the future".into());
    }
    if let Some(jti) = claims["jti"].as_str()
        && !inner.jtis.insert(jti.to_owned())
    {
        return refuse(&mut inner, "jti used before".into());
    }
    if !headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json")) {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if kind == "errored" && !body.is_object() {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let process = inner.processes.get_mut(&id).expect("found above");
    match kind.as_str() {
        "completed" => {
            if !matches!(process.state.as_str(), "STARTED" | "STARTING") {
                return StatusCode::CONFLICT;
            }
            process.state = "COMPLETED".into();
        }
        "errored" => {}
        "prepared" | "started" => return StatusCode::CONFLICT,
        _ => return StatusCode::NOT_FOUND,
    }
    process.callbacks.push((kind, body));
    StatusCode::OK
}

/// The Management API's termination of a process: TERMINATED, then `/terminate` to its data
/// plane (in the background, as EDC's state machine does it).
async fn terminate_process(
    State(double): State<EdcDps>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> (StatusCode, axum::Json<Value>) {
    if !api_key_ok(&double, &headers) {
        return edc_error(StatusCode::UNAUTHORIZED, "Request could not be authenticated");
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // EDC expands the JSON-LD: a bare type needs the EDC vocabulary as `@vocab`.
    let vocab = body["@context"]["@vocab"] == "https://w3id.org/edc/v0.0.1/ns/";
    let typed = (vocab && body["@type"] == "TerminateTransfer")
        || body["@type"] == "https://w3id.org/edc/v0.0.1/ns/TerminateTransfer";
    if !typed || body["reason"].as_str().is_none_or(str::is_empty) {
        return edc_error(StatusCode::BAD_REQUEST, "a TerminateTransfer with a reason");
    }
    {
        let mut inner = double.inner.lock().unwrap();
        let Some(process) = inner.processes.get_mut(&id) else {
            return edc_error(StatusCode::NOT_FOUND, "no such transfer process");
        };
        if matches!(process.state.as_str(), "TERMINATED" | "COMPLETED") {
            return edc_error(StatusCode::CONFLICT, "the transfer process is final");
        }
        process.state = "TERMINATED".into();
        process.callbacks.push(("terminate".into(), body));
    }
    let background = double.clone();
    tokio::spawn(async move {
        let Ok(dp) = background.bound(&id) else { return };
        let result = background
            .call(&dp, &format!("{}/terminate", enc(&id)), json!({"messageId": random()}))
            .await
            .map(drop)
            .map_err(|e| format!("HTTP {}: {}", e.status, e.detail));
        if let Some(p) = background.inner.lock().unwrap().processes.get_mut(&id) {
            p.data_plane_terminated = Some(result);
        }
    });
    (StatusCode::NO_CONTENT, axum::Json(Value::Null))
}
