//! `MqttAsset`: a provider's offer of an MQTT data stream in the dataspace.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::*;

/// An MQTT data stream offered in a Dataspace Protocol dataspace (Factory-X ADR 012).
///
/// The operator registers it in the connector as an asset with `dataAddress.type: Mqtt` (the
/// catalog then shows a Distribution with format `Mqtt-PULL`), with access and contract policies
/// and a contract definition; it creates the identity the connector uses for the asset (an
/// identity-provider client in `oauth2` mode, a broker user in `usrpw` mode), stores that
/// identity's secret in the secret store under the alias the connector resolves, and grants it
/// read access to the asset's topics in the broker.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dsp-mqtt.io",
    version = "v1alpha1",
    kind = "MqttAsset",
    namespaced,
    status = "MqttAssetStatus",
    shortname = "mqa",
    category = "dsp",
    derive = "PartialEq",
    cel,
    doc = "An MQTT data stream offered in a Dataspace Protocol dataspace (Factory-X ADR 012): \
           reconciled into a connector asset with policies and a contract definition, an identity \
           for the connector, its secret in the secret store, and broker access to the topics.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Whether every backend holds what the spec asks for"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", description = "Why it is (not) ready"),
    printcolumn(name = "Asset ID", type_ = "string", json_path = ".status.connector.assetId", description = "Asset id in the connector"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".spec.endpoint.type", description = "How consumers connect"),
    printcolumn(name = "Auth", type_ = "string", json_path = ".spec.auth.mode", description = "How consumers authenticate"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("has(self.spec.assetId) == has(oldSelf.spec.assetId)")
        .message("spec.assetId is immutable: it cannot be added or removed after creation (the connector asset id would change)")
        .reason(Reason::FieldValueForbidden),
    validation = Rule::new("!(self.spec.endpoint.type == 'mqtt-tcp-basic' && self.spec.auth.mode == 'oauth2')")
        .message("spec.endpoint.type mqtt-tcp-basic means username/password and cannot be combined with spec.auth.mode oauth2: use mqtt-tls or mqtt-wss with oauth2, or auth.mode usrpw with mqtt-tcp-basic")
        .field_path(".spec.auth.mode")
)]
#[serde(rename_all = "camelCase")]
pub struct MqttAssetSpec {
    /// Id of the asset in the connector (the DSP dataset id). Default: `<namespace>-<name>`.
    /// Immutable: consumers' contract agreements refer to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.assetId is immutable").reason(Reason::FieldValueForbidden))]
    pub asset_id: Option<String>,

    /// Connector profile (from the operator configuration) to register the asset in. Default: `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = PROFILE_NAME_PATTERN))]
    pub connector: Option<String>,

    /// Identity-provider profile that issues consumers' tokens (`oauth2` mode). Default: `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = PROFILE_NAME_PATTERN))]
    pub identity_provider: Option<String>,

    /// Secret-store profile that keeps client secrets and passwords. Default: `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = PROFILE_NAME_PATTERN))]
    pub secret_store: Option<String>,

    /// Broker profile that carries the stream. Default: `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = PROFILE_NAME_PATTERN))]
    pub broker: Option<String>,

    /// Where and how consumers connect.
    pub endpoint: Endpoint,

    /// MQTT topic filters the offer covers (one or more; `+` and `#` wildcards allowed as whole
    /// levels; never starting with `$`). Consumers get read-only access to these or a subset.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 65535), regex(pattern = TOPIC_FILTER_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub topics: Vec<String>,

    /// How consumers authenticate to the broker.
    pub auth: AssetAuth,

    /// Public properties of the connector asset (shown in the catalog), e.g. `name`,
    /// `description`, `contenttype`. Keys without a prefix are in the EDC namespace. The operator
    /// adds its own keys to `privateProperties`, never here; keys naming `dsp-mqtt.io/…` in the
    /// EDC namespace, in any JSON-LD spelling, are refused as there (reason `ReservedProperty`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub properties: Option<BTreeMap<String, Value>>,

    /// Private properties of the connector asset (not shown in the catalog). Keys naming
    /// `dsp-mqtt.io/…` in the EDC namespace are reserved for the operator's ownership marker, in
    /// every JSON-LD spelling: plain, `edc:dsp-mqtt.io/…`, the full IRI, or through a prefix,
    /// term or `@vocab` of this object's own `@context`, which must be inline and leave the
    /// operator's keys in place (refused with reason `ReservedProperty`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub private_properties: Option<BTreeMap<String, Value>>,

    /// Who may see the offer and who may sign a contract for it.
    pub policy: AssetPolicy,

    /// What happens to the external objects (connector asset, policies, contract definition,
    /// identity client, secrets, broker role and user) when this resource is deleted: `Delete`
    /// removes them, `Retain` leaves them in place. Default: `Delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

/// Where and how consumers connect.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    cel,
    validation = Rule::new("!has(self.url) || (self.type == 'mqtt-wss' ? self.url.startsWith('wss://') : (self.url.startsWith('mqtts://') || self.url.startsWith('ssl://')))")
        .message("endpoint.url does not fit endpoint.type: mqtt-wss needs a wss:// URL, mqtt-tls and mqtt-tcp-basic need mqtts:// or ssl://")
        .field_path(".url")
)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Transport and auth family, as ADR 012's `mqttEndpointType`: `mqtt-wss` (MQTT over
    /// WebSocket Secure), `mqtt-tls` (MQTT over TLS) or `mqtt-tcp-basic` (the reference
    /// connector's name for MQTT over TLS with username/password: only with `auth.mode: usrpw`).
    #[serde(rename = "type")]
    pub endpoint_type: EndpointType,

    /// Broker URL given to consumers. Default: the broker profile's public URL for this type.
    /// Must be encrypted: `wss://` for `mqtt-wss`, `mqtts://` or `ssl://` otherwise; plain
    /// `mqtt://` and `ws://` are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s]+([/?#]\S*)?$"))]
    #[x_kube(validation = Rule::new("!self.startsWith('mqtt://') && !self.startsWith('ws://')")
        .message("unencrypted mqtt:// and ws:// URLs are refused (ADR 012): use mqtts:// or wss://"))]
    pub url: Option<String>,
}

/// How consumers authenticate, and overrides for the names of the asset's own identity.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AssetAuth {
    /// `oauth2`: a JWT from the identity provider in the MQTT CONNECT password
    /// (ADR 012 `mqtt-jwt-oauth2`); `usrpw`: a username and password in the broker
    /// (`mqtt-usrpw`). Mosquitto supports `usrpw` only.
    pub mode: AuthMode,

    /// The asset's own identity: in `oauth2` mode the identity-provider client id the connector
    /// uses (`oauth2:clientId`), in `usrpw` mode the broker username (`username`).
    /// Default: `dsp-mqtt-<namespace>-<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._@-]*$"))]
    pub client_id: Option<String>,

    /// Alias under which that identity's secret (client secret or password) is stored in the
    /// secret store, as the connector resolves it (`oauth2:clientSecretKeyAlias` or
    /// `passwordAlias`). Default: `dsp-mqtt-<namespace>-<name>-secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"))]
    pub secret_alias: Option<String>,
}

/// Access and contract policy of the offer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AssetPolicy {
    /// Who may see the offer in the catalog (the connector's access policy).
    pub access: PolicyRule,
    /// Who may sign a contract for the offer (the connector's contract policy).
    /// Default: the same as `access`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<PolicyRule>,
}

/// One policy: either a list of permitted participants, or raw ODRL.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.participantIds) != has(self.odrl)")
        .message("set exactly one of participantIds or odrl")
)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// Participants permitted: DIDs (`did:web:…`) or business partner numbers (`BPNL…`).
    /// The operator turns them into ODRL constraints on `BusinessPartnerDID` or
    /// `BusinessPartnerNumber` (one participant: a single constraint; several: an `or`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 512), regex(pattern = PARTICIPANT_ID_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub participant_ids: Option<Vec<String>>,

    /// Raw ODRL policy (the `policy` object of an EDC policy definition), passed to the
    /// connector as written. An escape hatch: the operator does not interpret it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub odrl: Option<BTreeMap<String, Value>>,
}

// What happens to external objects when the resource is deleted. (No doc comment: schemars
// would put it in place of the field's description in `kubectl explain`.)
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum DeletionPolicy {
    /// Remove every external object the operator created for the resource.
    #[default]
    Delete,
    /// Leave every external object in place; only release the resource.
    Retain,
}

/// Observed state of an MqttAsset.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttAssetStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The last value of the `dsp-mqtt.io/reconcile-requested-at` annotation that was handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,

    /// `Ready` (True when every backend holds what the spec asks for) and one condition per
    /// backend: `ConnectorReady`, `IdentityReady`, `SecretStoreReady`, `BrokerReady`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,

    /// Where to find the asset in the connector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector: Option<ConnectorRefs>,

    /// The asset's identity in the identity provider (`oauth2` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityRefs>,

    /// Where the identity's secret is kept (never the secret itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretRefs>,

    /// The asset's objects in the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<BrokerRefs>,

    /// The asset's dataAddress as registered in the connector (aliases, never secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub data_address: Option<BTreeMap<String, Value>>,
}

/// Ids of the connector objects.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorRefs {
    /// Connector profile used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Asset id (the DSP dataset id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_id: Option<String>,
    /// Policy definition id of the access policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_policy_id: Option<String>,
    /// Policy definition id of the contract policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract_policy_id: Option<String>,
    /// Contract definition id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract_definition_id: Option<String>,
}

/// Where to find an identity in the identity provider.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityRefs {
    /// Identity-provider profile used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Client id (not the provider's internal id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// Where a secret is kept in the secret store.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRefs {
    /// Secret-store profile used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Folder the alias lives in (the connector's Vault folder), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
    /// Alias the connector resolves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Path of the secret in the store (e.g. `secret/data/edc/<alias>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Names of the broker objects.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerRefs {
    /// Broker profile used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Broker user (`usrpw` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Broker role or ACL set granting the topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}
