//! Registration with a connector's control plane, kept current: read first, register only when
//! the instance is missing or differs.
//! - Legacy signaling (EDC 0.15–0.17): the control API, `POST {control}/v1/dataplanes`.
//!   Registering again is not free: EDC's `register` resets the instance to REGISTERED until its
//!   next availability check, so an unconditional loop would keep the plane from being AVAILABLE
//!   and out of the selection.
//! - Data Plane Signaling 1.0 (EDC 0.18): the Management API, `PUT {management}/v4/dataplanes`
//!   (an upsert) with the endpoint, the transfer type and the OAuth 2.0 client credentials the
//!   control plane authenticates with ([`super::dps`]). The listing EDC answers shows no
//!   credentials, so the first check of a run always writes (a changed token reaches the control
//!   plane), and later checks write only when the instance is missing or differs.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use super::config::{DataPlaneConfig, Registration, Signaling};
use super::message::{EDC_NAMESPACE, SOURCE_TYPE, TRANSFER_TYPE};

/// One control plane to register with.
#[derive(Clone)]
pub struct Target {
    /// The connector profile.
    pub connector: String,
    /// `{control}/v1/dataplanes`.
    pub endpoint: String,
    /// The data plane id.
    pub id: String,
    /// The URL the control plane calls (with the connector and the token as path segments).
    pub url: SecretString,
    /// `X-Api-Key` for the control API, when it wants one.
    pub api_key: Option<SecretString>,
    /// How often to check.
    pub period: Duration,
    /// HTTP client trusting the control API's CA.
    pub http: reqwest::Client,
    /// The signaling registered for.
    pub signaling: Signaling,
    /// Data Plane Signaling 1.0: the token endpoint and client credentials registered
    /// (`clientId` the connector profile, `clientSecret` the shared token).
    pub oauth2: Option<(String, SecretString)>,
    /// Data Plane Signaling 1.0: whether this run has written the registration yet.
    pub written: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("connector", &self.connector)
            .field("endpoint", &self.endpoint)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What a check found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Registered as wanted; the control plane's state for it (`AVAILABLE`, `REGISTERED`…).
    Current(String),
    /// It was missing or differed and was registered.
    Registered,
}

/// The Data Plane Signaling 1.0 endpoint registered: `<publicUrl>/<connector>/dps/dataflows`
/// (the control plane appends `/start`, `/{id}/suspend`…).
pub fn dps_endpoint(public_url: &url::Url, connector: &str) -> String {
    format!("{}/{connector}/dps/dataflows", public_url.as_str().trim_end_matches('/'))
}

/// The token endpoint registered for Data Plane Signaling 1.0: `<publicUrl>/<connector>/dps/token`.
pub fn dps_token_endpoint(public_url: &url::Url, connector: &str) -> String {
    format!("{}/{connector}/dps/token", public_url.as_str().trim_end_matches('/'))
}

/// The URL registered: `<publicUrl>/<connector>/<token>`.
pub fn registered_url(public_url: &url::Url, connector: &str, token: &SecretString) -> SecretString {
    SecretString::from(format!("{}/{connector}/{}", public_url.as_str().trim_end_matches('/'), token.expose_secret()))
}

impl Target {
    /// The target of a configured registration (reads its CA bundle and API key).
    pub async fn from_config(
        config: &crate::config::Config,
        dp: &DataPlaneConfig,
        connector: &str,
        registration: &Registration,
        token: &SecretString,
        client: &kube::Client,
        namespace: &str,
    ) -> Result<Target, String> {
        let profile = config.connectors.get(connector);
        let ca = registration.ca_bundle.as_ref().or(profile.and_then(|c| c.ca_bundle.as_ref()));
        let ca_pem = match ca {
            Some(c) => Some(
                crate::credentials::resolve(c, Some(client), namespace)
                    .await
                    .map_err(|e| format!("registrations.{connector}.caBundle: {e}"))?
                    .expose_secret()
                    .to_owned(),
            ),
            None => None,
        };
        let api_key_ref = match registration.signaling {
            Signaling::Legacy => registration.api_key.as_ref(),
            Signaling::Dps1 => profile.map(|p| &p.api_key),
        };
        let api_key = match api_key_ref {
            Some(c) => Some(
                crate::credentials::resolve(c, Some(client), namespace)
                    .await
                    .map_err(|e| format!("registrations.{connector}.apiKey: {e}"))?,
            ),
            None => None,
        };
        let http = crate::backends::http::client(
            crate::backends::System::Connector,
            &crate::backends::http::HttpSettings { timeout: Duration::from_secs(10), ca_bundle_pem: ca_pem },
        )
        .map_err(|e| e.to_string())?;
        let (endpoint, url, oauth2) = match (registration.signaling, &registration.control_url, profile) {
            (Signaling::Legacy, Some(control), _) => (
                format!("{}/v1/dataplanes", control.as_str().trim_end_matches('/')),
                registered_url(&dp.public_url, connector, token),
                None,
            ),
            (Signaling::Dps1, _, Some(p)) => (
                format!("{}/v4/dataplanes", p.management_url.as_str().trim_end_matches('/')),
                SecretString::from(dps_endpoint(&dp.public_url, connector)),
                Some((dps_token_endpoint(&dp.public_url, connector), token.clone())),
            ),
            _ => return Err(format!("registrations.{connector}: no controlUrl, or no connector profile")),
        };
        Ok(Target {
            connector: connector.to_owned(),
            endpoint,
            id: dp.data_plane_id(connector, config.installation()),
            url,
            api_key,
            period: Duration::from_secs(registration.check_period_seconds),
            http,
            signaling: registration.signaling,
            oauth2,
            written: Default::default(),
        })
    }

    /// Data Plane Signaling 1.0: the Management API base the registration goes through, and
    /// its `X-Api-Key` (what terminating a process there needs too).
    pub fn management(&self) -> Option<(String, SecretString)> {
        if self.signaling != Signaling::Dps1 {
            return None;
        }
        let base = self.endpoint.strip_suffix("/v4/dataplanes")?;
        Some((base.to_owned(), self.api_key.clone()?))
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, url);
        if let Some(key) = &self.api_key {
            r = r.header("X-Api-Key", key.expose_secret());
        }
        r
    }

    /// The registration body.
    pub fn body(&self) -> Value {
        if let Some((token_endpoint, secret)) = &self.oauth2 {
            // EDC 0.18 reads `transferTypes`; the spec's RC3 calls them `profiles`.
            return json!({
                "dataplaneId": self.id,
                "endpoint": self.url.expose_secret(),
                "transferTypes": [TRANSFER_TYPE],
                "profiles": [TRANSFER_TYPE],
                "labels": [],
                "authorization": {
                    "type": "oauth2_client_credentials",
                    "tokenEndpoint": token_endpoint,
                    "clientId": self.connector,
                    "clientSecret": secret.expose_secret(),
                    // What EDC verifies the data plane's callbacks against.
                    "jwks": super::dps::CallbackKey::derive(secret.expose_secret()).jwks(),
                },
            });
        }
        json!({
            "@context": {"@vocab": EDC_NAMESPACE},
            "@id": self.id,
            "@type": "DataPlaneInstance",
            "url": self.url.expose_secret(),
            "allowedSourceTypes": [SOURCE_TYPE],
            "allowedTransferTypes": [TRANSFER_TYPE],
        })
    }

    /// Reads the instance; registers it when missing or different. Errors name the step and the
    /// status, never the URL (it holds the token).
    pub async fn ensure(&self) -> Result<Outcome, String> {
        if self.signaling == Signaling::Dps1 {
            return self.ensure_dps().await;
        }
        let url = format!("{}/{}", self.endpoint, urlencode(&self.id));
        let response = self
            .request(reqwest::Method::GET, &url)
            .send()
            .await
            .map_err(|e| format!("reading the registration: {}", without_url(e)))?;
        let status = response.status().as_u16();
        match status {
            200 => {
                let found: Value =
                    response.json().await.map_err(|e| format!("reading the registration: {}", without_url(e)))?;
                if self.matches(&found) {
                    return Ok(Outcome::Current(text(member(&found, "state")).unwrap_or_default()));
                }
            }
            // EDC answers an unknown id with 404 (and, in some releases, 400).
            404 | 400 => {}
            other => return Err(format!("reading the registration: HTTP {other}")),
        }
        let response = self
            .request(reqwest::Method::POST, &self.endpoint)
            .json(&self.body())
            .send()
            .await
            .map_err(|e| format!("registering: {}", without_url(e)))?;
        match response.status().as_u16() {
            200..=299 => Ok(Outcome::Registered),
            other => {
                let body: String = response.text().await.unwrap_or_default().chars().take(500).collect();
                Err(format!("registering: HTTP {other}: {body}"))
            }
        }
    }

    async fn ensure_dps(&self) -> Result<Outcome, String> {
        use std::sync::atomic::Ordering;
        if self.written.load(Ordering::Acquire) {
            let response = self
                .request(reqwest::Method::GET, &self.endpoint)
                .send()
                .await
                .map_err(|e| format!("reading the registrations: {}", without_url(e)))?;
            match response.status().as_u16() {
                200 => {
                    let found: Value =
                        response.json().await.map_err(|e| format!("reading the registrations: {}", without_url(e)))?;
                    let ours = match &found {
                        Value::Array(items) => items.iter().find(|i| text(&i["@id"]).as_deref() == Some(&self.id)),
                        _ => None,
                    };
                    if let Some(ours) = ours
                        && self.matches(ours)
                    {
                        return Ok(Outcome::Current(text(member(ours, "state")).unwrap_or_default()));
                    }
                }
                other => return Err(format!("reading the registrations: HTTP {other}")),
            }
        }
        let response = self
            .request(reqwest::Method::PUT, &self.endpoint)
            .json(&self.body())
            .send()
            .await
            .map_err(|e| format!("registering: {}", without_url(e)))?;
        match response.status().as_u16() {
            200..=299 => {
                self.written.store(true, Ordering::Release);
                Ok(Outcome::Registered)
            }
            other => {
                let mut body = response.text().await.unwrap_or_default();
                // The connector's answer could echo what we sent, the client secret with it.
                if let Some((_, secret)) = &self.oauth2 {
                    body = body.replace(secret.expose_secret(), "[redacted]");
                }
                let body: String = body.chars().take(500).collect();
                Err(format!("registering: HTTP {other}: {body}"))
            }
        }
    }

    /// The instance EDC lists is ours as registered: our URL and transfer type (and, for the
    /// legacy registration, source type; for Data Plane Signaling 1.0, not UNREGISTERED).
    fn matches(&self, found: &Value) -> bool {
        let ours = text(member(found, "url")).as_deref() == Some(self.url.expose_secret())
            && texts(member(found, "allowedTransferTypes")) == [TRANSFER_TYPE];
        ours && match self.signaling {
            Signaling::Legacy => texts(member(found, "allowedSourceTypes")) == [SOURCE_TYPE],
            Signaling::Dps1 => text(member(found, "state")).as_deref() != Some("UNREGISTERED"),
        }
    }
}

/// The client for callbacks to the control planes: trusts the CA bundles of every registration
/// (or of its connector profile); the system roots when none is configured.
pub async fn callback_client(
    config: &crate::config::Config,
    dp: &DataPlaneConfig,
    client: &kube::Client,
    namespace: &str,
) -> Result<reqwest::Client, String> {
    let mut pem = String::new();
    for (connector, registration) in &dp.registrations {
        let ca =
            registration.ca_bundle.as_ref().or(config.connectors.get(connector).and_then(|c| c.ca_bundle.as_ref()));
        if let Some(ca) = ca {
            let bundle = crate::credentials::resolve(ca, Some(client), namespace)
                .await
                .map_err(|e| format!("registrations.{connector}.caBundle: {e}"))?;
            pem.push_str(bundle.expose_secret());
            pem.push('\n');
        }
    }
    crate::backends::http::client(
        crate::backends::System::Connector,
        &crate::backends::http::HttpSettings {
            timeout: Duration::from_secs(10),
            ca_bundle_pem: (!pem.is_empty()).then_some(pem),
        },
    )
    .map_err(|e| e.to_string())
}

/// A member however EDC compacted its key (bare, `edc:`, or the IRI).
fn member<'a>(object: &'a Value, name: &str) -> &'a Value {
    for key in [name.to_owned(), format!("edc:{name}"), format!("{EDC_NAMESPACE}{name}")] {
        if let Some(v) = object.get(&key) {
            return v;
        }
    }
    &Value::Null
}

/// A list of strings, however EDC compacted it (a single value unwrapped).
fn texts(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().filter_map(text).collect(),
        other => text(other).into_iter().collect(),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("@value").or(o.get("@id")).and_then(text),
        Value::Array(items) if items.len() == 1 => text(&items[0]),
        _ => None,
    }
}

fn without_url(e: reqwest::Error) -> String {
    e.without_url().to_string()
}

fn urlencode(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>().replace('+', "%20")
}

/// Checks the registration every period until `shutdown` flips to true.
pub async fn keep_registered(target: Target, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut last_ok = None::<Outcome>;
    loop {
        match target.ensure().await {
            Ok(Outcome::Registered) => {
                info!(connector = target.connector, id = target.id, "data plane: registered with the control plane");
                last_ok = Some(Outcome::Registered);
            }
            Ok(outcome) => {
                if last_ok.as_ref() != Some(&outcome) {
                    info!(
                        connector = target.connector,
                        id = target.id,
                        ?outcome,
                        "data plane: registration is current"
                    );
                } else {
                    debug!(connector = target.connector, ?outcome, "data plane: registration is current");
                }
                last_ok = Some(outcome);
            }
            Err(e) => {
                warn!(connector = target.connector, id = target.id, "data plane: registration failed: {e}");
                last_ok = None;
            }
        }
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(target.period) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        crate::install_crypto_provider();
        Target {
            connector: "default".into(),
            endpoint: "https://cp/control/v1/dataplanes".into(),
            id: "mqtt-dsp-operator-prod".into(),
            url: registered_url(&"https://op:8643/signaling/".parse().unwrap(), "default", &SecretString::from("tok")),
            api_key: None,
            period: Duration::from_secs(30),
            http: reqwest::Client::new(),
            signaling: Signaling::Legacy,
            oauth2: None,
            written: Default::default(),
        }
    }

    #[test]
    fn the_body_and_the_comparison_follow_edcs_shapes() {
        let t = target();
        let body = t.body();
        assert_eq!(body["url"], "https://op:8643/signaling/default/tok");
        assert_eq!(body["allowedTransferTypes"], json!(["Mqtt-PULL"]));
        // EDC answers a GET compacted with the edc: prefix and single values unwrapped.
        let found = json!({"@id": "mqtt-dsp-operator-prod", "edc:url": "https://op:8643/signaling/default/tok",
            "edc:allowedSourceTypes": "Mqtt", "edc:allowedTransferTypes": ["Mqtt-PULL"], "edc:state": "AVAILABLE"});
        assert!(t.matches(&found));
        let mut other = found.clone();
        other["edc:url"] = json!("https://elsewhere/x");
        assert!(!t.matches(&other));
        let debug = format!("{t:?}");
        assert!(!debug.contains("tok\""), "{debug}");
    }
}
