//! Types and schema pieces shared by both kinds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// RE2 pattern for one MQTT topic filter (MQTT 3.1.1 §4.7 / 5.0 §4.7), as offered in a dataspace.
///
/// - levels are separated by `/`; a level may be empty;
/// - `+` is only allowed as a whole level; `#` only as the whole last level;
/// - no NUL character;
/// - the filter must not start with `$` (`$SYS`, `$CONTROL`… are broker-internal and never offered).
///
/// A pattern rather than a CEL rule: the API server charges CEL rules against a cost budget, and
/// splitting every topic on `/` would exceed it at MQTT's own 65535-byte bound; a pattern is free.
/// Non-emptiness is `minLength: 1`. The schema bounds characters; the 65535 *byte* bound of MQTT is
/// checked again in code (`plan`), since UTF-8 characters can be longer than one byte.
pub const TOPIC_FILTER_PATTERN: &str = r"^(#|(\+|[^$/+#\x00][^/+#\x00]*)?(/(\+|[^/+#\x00]*))*(/#)?)$";

/// Longest MQTT topic filter in bytes (MQTT's UTF-8 string length prefix is 16 bits).
pub const TOPIC_FILTER_MAX_BYTES: usize = 65535;

/// Most topic filters one MqttAsset or MqttTransfer may list.
pub const MAX_TOPICS: usize = 64;

/// Pattern of a participant id: a DID (`did:web:…`) or a Catena-X/Factory-X business partner
/// number (`BPNL…`, `BPNS…`, `BPNA…` followed by 12 upper-case letters or digits).
pub const PARTICIPANT_ID_PATTERN: &str =
    r"^(did:[a-z0-9]+:[A-Za-z0-9._:%-]+(/[A-Za-z0-9._:%-]+)*|BPN[LSA][A-Z0-9]{12})$";

/// Pattern of a profile name in the operator configuration (a DNS label).
pub const PROFILE_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Pattern of a Kubernetes object name (DNS-1123 subdomain).
pub const OBJECT_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// How a consumer connects to the broker (ADR 012 `mqttEndpointType`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum EndpointType {
    /// MQTT over WebSocket Secure (`wss://`).
    #[serde(rename = "mqtt-wss")]
    MqttWss,
    /// MQTT over TLS (`mqtts://` or `ssl://`).
    #[serde(rename = "mqtt-tls")]
    MqttTls,
    /// MQTT over TLS with username/password, as the reference connector spells it
    /// (`mqtts://` or `ssl://`; despite the name, unencrypted TCP is refused).
    #[serde(rename = "mqtt-tcp-basic")]
    MqttTcpBasic,
}

impl EndpointType {
    /// The spelling used in the API and by ADR 012.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointType::MqttWss => "mqtt-wss",
            EndpointType::MqttTls => "mqtt-tls",
            EndpointType::MqttTcpBasic => "mqtt-tcp-basic",
        }
    }

    /// URL schemes a consumer may be given for this endpoint type. Plain `mqtt://` and `ws://`
    /// are never among them: ADR 012 rejects unencrypted MQTT.
    pub fn allowed_schemes(self) -> &'static [&'static str] {
        match self {
            EndpointType::MqttWss => &["wss"],
            EndpointType::MqttTls | EndpointType::MqttTcpBasic => &["mqtts", "ssl"],
        }
    }
}

impl std::fmt::Display for EndpointType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How consumers authenticate to the broker (ADR 012 auth modes).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// `mqtt-jwt-oauth2`: a JWT issued by the identity provider, sent as the MQTT CONNECT password.
    Oauth2,
    /// `mqtt-usrpw`: a username and password provisioned in the broker.
    Usrpw,
}

impl AuthMode {
    /// The spelling used in the API and in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Oauth2 => "oauth2",
            AuthMode::Usrpw => "usrpw",
        }
    }
}

impl std::fmt::Display for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Schema of the `conditions` list: a map keyed by `type`, so server-side apply merges per
/// condition instead of replacing the list.
pub(crate) fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}

/// Schema of a free-form JSON object (EDC properties, raw ODRL). The only places where the CRD
/// keeps unknown fields.
pub(crate) fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}
