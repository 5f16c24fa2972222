//! A consumer in the dataspace, through its own EDC connector's Management API: the catalog of a
//! provider, a contract negotiation, a `Mqtt-PULL` transfer and the EDR it yields (delivered to a
//! callback with the `transfer.process.started` event: EDC 0.15.1's controlplane-base-bom has no
//! `/v3/edrs` API), suspension and termination. Used by the data-plane tests and `make demo`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use reqwest::Method;
use serde_json::{Value, json};

use crate::systems::edc::{DSP_PROTOCOL, Edc};
use crate::tls::TestCa;

/// The EDC vocabulary.
pub const EDC_NAMESPACE: &str = "https://w3id.org/edc/v0.0.1/ns/";

/// What fails here.
pub type Failure = Box<dyn std::error::Error + Send + Sync>;

/// How long a negotiation or a transfer may take to reach its state.
pub const WITHIN: Duration = Duration::from_secs(60);

/// An HTTPS client trusting the run's CA.
pub fn http(ca: &TestCa) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).expect("the CA is PEM");
    reqwest::Client::builder().tls_certs_only([ca]).timeout(Duration::from_secs(60)).build().expect("a client")
}

/// One call to `edc`'s Management API: status and JSON body (`Null` when there is none).
pub async fn management(
    ca: &TestCa,
    edc: &Edc,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), Failure> {
    let mut request =
        http(ca).request(method, format!("{}{path}", edc.management_url)).header("X-Api-Key", &edc.api_key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.map_err(|e| format!("{path}: {e}"))?;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// The value of the first key anywhere in `v` whose local name (after the last `/`, `:` or `#`)
/// is `name`: EDC prefixes, expands or leaves keys bare depending on the path they took.
pub fn find<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    match v {
        Value::Object(o) => {
            for (k, value) in o {
                if k == name || k.rsplit(['/', ':', '#']).next() == Some(name) {
                    return Some(value);
                }
            }
            o.values().find_map(|value| find(value, name))
        }
        Value::Array(items) => items.iter().find_map(|i| find(i, name)),
        _ => None,
    }
}

/// A JSON-LD value as text (a string, `@value`, `@id`, or the first of a list).
pub fn text_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => text_of(o.get("@value").or(o.get("@id"))),
        Value::Array(items) => text_of(items.first()),
        _ => None,
    }
}

/// A JSON-LD value as a list (one value is a list of one).
pub fn as_list(v: Option<&Value>) -> Vec<Value> {
    match v {
        Some(Value::Array(items)) => items.clone(),
        Some(Value::Null) | None => Vec::new(),
        Some(one) => vec![one.clone()],
    }
}

/// Polls `f` every 300 ms until it gives a value; after `timeout` fails with `what` and the last
/// answer.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(last) if tokio::time::Instant::now() >= deadline => {
                return Err(format!("{what}: not within {timeout:?}; last: {last}").into());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// A consumer's connector and the run's CA.
#[derive(Clone, Copy)]
pub struct ConsumerConnector<'a> {
    /// The consumer's EDC.
    pub edc: &'a Edc,
    /// The CA its certificates (and the provider's) are of.
    pub ca: &'a TestCa,
}

impl ConsumerConnector<'_> {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<(u16, Value), Failure> {
        management(self.ca, self.edc, method, path, body).await
    }

    /// The provider's catalog entry for `asset_id` (its dataset), if the consumer may see it.
    pub async fn dataset(&self, provider: &Edc, asset_id: &str) -> Result<Option<Value>, Failure> {
        let request = json!({
            "@context": {"@vocab": EDC_NAMESPACE},
            "@type": "CatalogRequest",
            "counterPartyAddress": provider.dsp_url(),
            "counterPartyId": provider.participant_id,
            "protocol": DSP_PROTOCOL,
            "querySpec": {"filterExpression": [{"operandLeft": format!("{EDC_NAMESPACE}id"), "operator": "=", "operandRight": asset_id}]},
        });
        let (status, catalog) = self.call(Method::POST, "/v3/catalog/request", Some(request)).await?;
        if status != 200 {
            return Err(format!("catalog request: {status} {catalog}").into());
        }
        Ok(as_list(find(&catalog, "dataset")).into_iter().next())
    }

    /// Negotiates the first offer of `dataset` (for `asset_id` at `provider`); returns the
    /// consumer's agreement id once the negotiation is FINALIZED.
    pub async fn negotiate(&self, provider: &Edc, asset_id: &str, dataset: &Value) -> Result<String, Failure> {
        let mut policy = as_list(find(dataset, "hasPolicy")).into_iter().next().ok_or("no offer in the dataset")?;
        policy["@context"] = json!("http://www.w3.org/ns/odrl.jsonld");
        policy["assigner"] = json!(provider.participant_id);
        // Without an assignee the agreement's policy has none, and EDC 0.15.1's control plane
        // fails the data flow start with a NullPointerException (the start message's
        // participantId is the agreement policy's assignee).
        policy["assignee"] = json!(self.edc.participant_id);
        policy["target"] = json!(asset_id);
        let negotiation = json!({
            "@context": {"@vocab": EDC_NAMESPACE, "edc": EDC_NAMESPACE},
            "@type": "ContractRequest",
            "counterPartyAddress": provider.dsp_url(),
            "protocol": DSP_PROTOCOL,
            "policy": policy,
        });
        let (status, started) = self.call(Method::POST, "/v3/contractnegotiations", Some(negotiation)).await?;
        if status != 200 {
            return Err(format!("contract request: {status} {started}").into());
        }
        let id = started["@id"].as_str().ok_or("no negotiation id")?.to_owned();
        poll("an agreement", WITHIN, || {
            let id = id.clone();
            async move {
                let (_, n) = self
                    .call(Method::GET, &format!("/v3/contractnegotiations/{id}"), None)
                    .await
                    .map_err(|e| e.to_string())?;
                match (text_of(find(&n, "state")).as_deref(), text_of(find(&n, "contractAgreementId"))) {
                    (Some("FINALIZED"), Some(agreement)) => Ok(Ok(agreement)),
                    (Some("TERMINATED"), _) => Ok(Err(format!("the negotiation was terminated: {n}"))),
                    _ => Err(n.to_string()),
                }
            }
        })
        .await?
        .map_err(Into::into)
    }

    /// Requests a `Mqtt-PULL` transfer of `asset_id` under `agreement`, its started event going
    /// to `callback` (if any); returns the consumer's transfer process id.
    pub async fn request_transfer(
        &self,
        provider: &Edc,
        agreement: &str,
        asset_id: &str,
        callback: Option<&str>,
    ) -> Result<String, Failure> {
        let mut request = json!({
            "@context": {"@vocab": EDC_NAMESPACE},
            "@type": "TransferRequest",
            "counterPartyAddress": provider.dsp_url(),
            "protocol": DSP_PROTOCOL,
            "contractId": agreement,
            "assetId": asset_id,
            "transferType": "Mqtt-PULL",
        });
        if let Some(uri) = callback {
            request["callbackAddresses"] = json!([{
                "@type": "CallbackAddress",
                "transactional": false,
                "uri": uri,
                "events": ["transfer.process.started"],
            }]);
        }
        let (status, created) = self.call(Method::POST, "/v3/transferprocesses", Some(request)).await?;
        if status != 200 {
            return Err(format!("transfer request: {status} {created}").into());
        }
        Ok(created["@id"].as_str().ok_or("no transfer process id")?.to_owned())
    }

    /// The consumer's transfer process.
    pub async fn transfer(&self, id: &str) -> Result<Value, Failure> {
        Ok(self.call(Method::GET, &format!("/v3/transferprocesses/{id}"), None).await?.1)
    }

    /// Its state (`STARTED`, `SUSPENDED`, `TERMINATED`, …).
    pub async fn transfer_state(&self, id: &str) -> Result<String, Failure> {
        Ok(text_of(find(&self.transfer(id).await?, "state")).unwrap_or_default())
    }

    /// Waits until the transfer is in `state`; fails early when it was terminated instead.
    pub async fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Result<(), Failure> {
        poll(&format!("the consumer's transfer {state}"), timeout, || async move {
            match self.transfer_state(id).await.map_err(|e| e.to_string())?.as_str() {
                s if s == state => Ok(Ok(())),
                "TERMINATED" => {
                    // The reason only: the process may hold the EDR, credentials included.
                    let tp = self.transfer(id).await.unwrap_or_default();
                    let why = text_of(find(&tp, "errorDetail")).unwrap_or_default();
                    Ok(Err(format!("the transfer was terminated: {why}")))
                }
                other => Err(other.to_owned()),
            }
        })
        .await?
        .map_err(Into::into)
    }

    /// Asks the consumer's connector to suspend or terminate the transfer, with a reason.
    pub async fn end(&self, id: &str, end: End, reason: &str) -> Result<(), Failure> {
        let (action, type_) = match end {
            End::Suspend => ("suspend", "SuspendTransfer"),
            End::Terminate => ("terminate", "TerminateTransfer"),
        };
        let body = json!({"@context": {"@vocab": EDC_NAMESPACE}, "@type": type_, "reason": reason});
        let (status, answer) =
            self.call(Method::POST, &format!("/v3/transferprocesses/{id}/{action}"), Some(body)).await?;
        if status != 204 && status != 200 {
            return Err(format!("{action}: {status} {answer}").into());
        }
        Ok(())
    }
}

/// How a consumer ends (or pauses) a transfer.
#[derive(Clone, Copy, Debug)]
pub enum End {
    /// `POST /v3/transferprocesses/{id}/suspend`.
    Suspend,
    /// `POST /v3/transferprocesses/{id}/terminate`.
    Terminate,
}

/// The events a consumer's connector delivers to its callback.
#[derive(Clone, Default)]
pub struct Events(Arc<Mutex<Vec<Value>>>);

async fn receive_event(State(events): State<Events>, Json(body): Json<Value>) -> axum::http::StatusCode {
    events.0.lock().expect("not poisoned").push(body);
    axum::http::StatusCode::NO_CONTENT
}

impl Events {
    /// Serves the callback over HTTPS (a certificate of `ca`) on a loopback port; returns its
    /// URL and the server's task.
    pub async fn serve(&self, ca: &TestCa) -> Result<(String, tokio::task::JoinHandle<()>), Failure> {
        let router = axum::Router::new().route("/events", axum::routing::post(receive_event)).with_state(self.clone());
        let (addr, task) = crate::tls::serve_https(router, ca).await?;
        Ok((format!("https://{addr}/events"), task))
    }

    /// Forgets the events so far.
    pub fn clear(&self) {
        self.0.lock().expect("not poisoned").clear();
    }

    /// Every event so far.
    pub fn all(&self) -> Vec<Value> {
        self.0.lock().expect("not poisoned").clone()
    }

    /// Waits for the first event that carries `key` (an EDR property, e.g. `password`).
    pub async fn wait_for_key(&self, key: &str, timeout: Duration) -> Result<Value, Failure> {
        poll("the started event with the EDR", timeout, || async move {
            let all = self.all();
            let n = all.len();
            all.into_iter().find(|e| find(e, key).is_some()).ok_or_else(|| format!("{n} events"))
        })
        .await
    }
}
