//! The `dataPlane` section of the operator configuration: where the signaling endpoint listens,
//! its TLS certificate, the token a control plane must present, and the connector profiles whose
//! control planes the operator registers with as their MQTT data plane.
//!
//! ```yaml
//! dataPlane:
//!   listen: 0.0.0.0:8643
//!   publicUrl: https://mqtt-dsp-operator.ops.svc:8643/signaling
//!   tls: {certificate: {file: /tls/tls.crt}, key: {file: /tls/tls.key}}
//!   token: {secretRef: {name: mqtt-dsp-signaling, key: token}}
//!   registrations:
//!     default: {controlUrl: https://edc-controlplane:9191/control}
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::config::{CaBundleRef, ConfigProblem, ConnectorProfile, CredentialRef};

/// The data plane settings (absent: the operator is no data plane).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataPlaneConfig {
    /// Address the signaling endpoint listens on (TLS).
    pub listen: SocketAddr,
    /// The endpoint's URL as control planes reach it (`https`, a path is allowed). The operator
    /// registers `<publicUrl>/<token>` (see [`DataPlaneConfig::token`]).
    pub public_url: Url,
    /// The listener's certificate chain and key (PEM).
    pub tls: ServerTls,
    /// The shared token only the control plane knows. A stock EDC 0.15 sends no credentials to a
    /// data plane (its `ControlClientAuthenticationProvider` is empty unless an extension provides
    /// one), so the token travels as the last path segment of the registered URL; a control
    /// plane that can send headers may present it as `Authorization: Bearer <token>` or
    /// `X-Api-Key` instead. At least 32 characters.
    pub token: CredentialRef,
    /// How long a start waits for the MqttTransfer to become Ready before answering with an
    /// error (the control plane retries; a retry finds the same transfer). Default 20.
    #[serde(default = "default_start_timeout")]
    pub start_timeout_seconds: u64,
    /// Largest request body accepted, in bytes. Default 65536.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Connector profiles (by name) whose control planes use the operator as their data plane:
    /// their assets may be started through signaling, and the operator registers with them.
    pub registrations: BTreeMap<String, Registration>,
}

/// The TLS material of the listener.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTls {
    /// PEM certificate chain, leaf first.
    pub certificate: CredentialRef,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: CredentialRef,
}

/// Which Data Plane Signaling a control plane speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum Signaling {
    /// The legacy signaling of EDC 0.15–0.17 (JSON-LD, control API registration).
    #[default]
    #[serde(rename = "legacy")]
    Legacy,
    /// Data Plane Signaling 1.0, as EDC 0.18 speaks it (plain JSON, management API
    /// registration, OAuth 2.0 client credentials).
    #[serde(rename = "dps-1.0")]
    Dps1,
}

impl Signaling {
    /// The name in configuration and annotations.
    pub fn name(self) -> &'static str {
        match self {
            Signaling::Legacy => "legacy",
            Signaling::Dps1 => "dps-1.0",
        }
    }
}

/// Registration with one connector's control plane.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Registration {
    /// The signaling the control plane speaks: `legacy` (EDC 0.15–0.17, the default) or
    /// `dps-1.0` (EDC 0.18). With `dps-1.0` the operator registers through the connector
    /// profile's Management API (`PUT {managementUrl}/v4/dataplanes`, its API key and CA bundle).
    #[serde(default)]
    pub signaling: Signaling,
    /// The control API base (`web.http.control`), e.g. `https://edc:9191/control`; `legacy` only
    /// (required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_url: Option<Url>,
    /// The data plane id registered. Default: `mqtt-dsp-operator-<installation>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_plane_id: Option<String>,
    /// CA bundle for the control API's TLS certificate. Default: the connector profile's, else
    /// the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundleRef>,
    /// `X-Api-Key` for a control API behind token authentication (stock EDC 0.15 has none);
    /// `legacy` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<CredentialRef>,
    /// How often the registration is checked and repaired, in seconds. Default 30.
    #[serde(default = "default_period")]
    pub check_period_seconds: u64,
}

fn default_start_timeout() -> u64 {
    20
}
fn default_max_body() -> usize {
    64 * 1024
}
fn default_period() -> u64 {
    30
}

impl DataPlaneConfig {
    /// The data plane id registered for connector profile `connector`.
    pub fn data_plane_id(&self, connector: &str, installation: &str) -> String {
        self.registrations
            .get(connector)
            .and_then(|r| r.data_plane_id.clone())
            .unwrap_or_else(|| format!("mqtt-dsp-operator-{installation}"))
    }
}

/// Reads the section (`None` when absent), recording problems with their paths.
pub fn parse_section(value: Option<&serde_yaml::Value>, problems: &mut Vec<ConfigProblem>) -> Option<DataPlaneConfig> {
    let value = value.filter(|v| !v.is_null())?;
    match serde_path_to_error::deserialize::<_, DataPlaneConfig>(value.clone()) {
        Ok(config) => Some(config),
        Err(e) => {
            let inner = e.path().to_string();
            let path = if inner == "." { "dataPlane".to_owned() } else { format!("dataPlane.{inner}") };
            problems.push(ConfigProblem { path, message: e.into_inner().to_string() });
            None
        }
    }
}

/// Checks what serde cannot: URL schemes, limits, and that every registration names a
/// configured connector profile.
pub fn validate(
    config: &DataPlaneConfig,
    connectors: &BTreeMap<String, ConnectorProfile>,
    problems: &mut Vec<ConfigProblem>,
) {
    let mut push = |path: &str, message: String| problems.push(ConfigProblem { path: path.to_owned(), message });
    if config.public_url.scheme() != "https" || config.public_url.host_str().is_none() {
        push("dataPlane.publicUrl", "must be an https URL with a host (control planes send it nothing else)".into());
    }
    if config.public_url.query().is_some() || config.public_url.fragment().is_some() {
        push("dataPlane.publicUrl", "must have no query or fragment (the control plane appends paths)".into());
    }
    if !(1..=300).contains(&config.start_timeout_seconds) {
        push(
            "dataPlane.startTimeoutSeconds",
            format!("must be between 1 and 300, got {}", config.start_timeout_seconds),
        );
    }
    if !(1024..=16 * 1024 * 1024).contains(&config.max_body_bytes) {
        push("dataPlane.maxBodyBytes", format!("must be between 1024 and 16777216, got {}", config.max_body_bytes));
    }
    if config.registrations.is_empty() {
        push("dataPlane.registrations", "name at least one connector profile the operator is the data plane of".into());
    }
    for (name, r) in &config.registrations {
        let at = format!("dataPlane.registrations.{name}");
        if !connectors.contains_key(name) {
            push(&at, format!("no connector profile {name:?} is configured"));
        }
        match (r.signaling, &r.control_url) {
            (Signaling::Legacy, None) => {
                push(&format!("{at}.controlUrl"), "is required with the legacy signaling".into());
            }
            (Signaling::Legacy, Some(url)) if url.scheme() != "https" || url.host_str().is_none() => {
                push(&format!("{at}.controlUrl"), "must be an https URL with a host".into());
            }
            (Signaling::Dps1, Some(_)) => push(
                &format!("{at}.controlUrl"),
                "is for the legacy signaling; dps-1.0 registers through the connector profile's managementUrl".into(),
            ),
            (Signaling::Dps1, None) if r.api_key.is_some() => push(
                &format!("{at}.apiKey"),
                "is for the legacy control API; dps-1.0 uses the connector profile's apiKey".into(),
            ),
            _ => {}
        }
        if !(5..=3600).contains(&r.check_period_seconds) {
            push(
                &format!("{at}.checkPeriodSeconds"),
                format!("must be between 5 and 3600, got {}", r.check_period_seconds),
            );
        }
        if let Some(id) = &r.data_plane_id
            && (id.is_empty() || id.len() > 253 || id.contains('/'))
        {
            push(&format!("{at}.dataPlaneId"), "must be 1 to 253 characters without '/'".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const CONNECTOR: &str =
        "connectors:\n  default:\n    managementUrl: https://edc.example.com/management\n    apiKey: {env: EDC_KEY}\n";

    #[test]
    fn the_section_is_read_with_defaults() {
        let text = format!(
            "{CONNECTOR}dataPlane:\n  listen: 0.0.0.0:8643\n  publicUrl: https://op.example.com:8643/signaling\n  \
             tls: {{certificate: {{file: /tls/tls.crt}}, key: {{file: /tls/tls.key}}}}\n  token: {{env: DP_TOKEN}}\n  \
             registrations:\n    default: {{controlUrl: \"https://edc.example.com:9191/control\"}}\n"
        );
        let config = Config::parse(&text).unwrap();
        let dp = config.data_plane.unwrap();
        assert_eq!(dp.start_timeout_seconds, 20);
        assert_eq!(dp.max_body_bytes, 65536);
        assert_eq!(dp.registrations["default"].check_period_seconds, 30);
        assert_eq!(dp.data_plane_id("default", "prod"), "mqtt-dsp-operator-prod");
        assert!(Config::parse(CONNECTOR).unwrap().data_plane.is_none());
    }

    #[test]
    fn dps_registrations_use_the_connector_profile_and_legacy_ones_need_a_control_url() {
        let section = |registration: &str| {
            format!(
                "{CONNECTOR}dataPlane:\n  listen: 0.0.0.0:8643\n  publicUrl: https://op.example.com\n  \
                 tls: {{certificate: {{file: /c}}, key: {{file: /k}}}}\n  token: {{env: T}}\n  \
                 registrations:\n    default: {registration}\n"
            )
        };
        let config = Config::parse(&section("{signaling: dps-1.0}")).unwrap();
        let r = &config.data_plane.unwrap().registrations["default"];
        assert_eq!(r.signaling, super::Signaling::Dps1);
        assert_eq!(r.control_url, None);
        let paths =
            |text: String| -> Vec<String> { Config::parse(&text).unwrap_err().into_iter().map(|p| p.path).collect() };
        assert_eq!(paths(section("{}")), ["dataPlane.registrations.default.controlUrl"], "legacy without controlUrl");
        assert_eq!(
            paths(section("{signaling: dps-1.0, controlUrl: \"https://edc/control\"}")),
            ["dataPlane.registrations.default.controlUrl"]
        );
        assert_eq!(
            paths(section("{signaling: dps-1.0, apiKey: {env: K}}")),
            ["dataPlane.registrations.default.apiKey"]
        );
        assert!(paths(section("{signaling: dps-2}"))[0].starts_with("dataPlane"), "an unknown signaling");
    }

    #[test]
    fn problems_name_their_path() {
        let text = format!(
            "{CONNECTOR}dataPlane:\n  listen: 0.0.0.0:8643\n  publicUrl: http://op.example.com\n  \
             tls: {{certificate: {{file: /c}}, key: {{file: /k}}}}\n  token: {{env: T}}\n  \
             registrations:\n    other: {{controlUrl: \"https://edc.example.com/control\"}}\n"
        );
        let problems = Config::parse(&text).unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"dataPlane.publicUrl"), "{problems:?}");
        assert!(paths.contains(&"dataPlane.registrations.other"), "{problems:?}");
        let text = format!("{CONNECTOR}dataPlane:\n  listen: nowhere\n");
        let problems = Config::parse(&text).unwrap_err();
        assert!(problems[0].path.starts_with("dataPlane"), "{problems:?}");
    }
}
