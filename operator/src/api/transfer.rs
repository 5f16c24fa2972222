//! `MqttTransfer`: one consumer's access to one MqttAsset, mirroring one DSP transfer process.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::*;
use super::{BrokerRefs, IdentityRefs, SecretRefs};

/// Annotation on an MqttTransfer: `"true"` keeps a `usrpw` transfer's password across a
/// suspension (resuming re-enables the same one) instead of issuing a fresh one. The data plane
/// sets it on transfers of Data Plane Signaling 1.0 control planes: EDC 0.18's consumer keeps
/// the EDR from the first start across a resume, so a fresh password would lock it out.
pub const KEEP_PASSWORD_ON_RESUME_ANNOTATION: &str = "dsp-mqtt.io/resume-keeps-password";

/// One consumer's access to one MQTT stream, mirroring one DSP transfer process (PULL).
///
/// The operator issues credentials for this transfer only (an identity-provider client in
/// `oauth2` mode, a broker user in `usrpw` mode), grants read access to the transfer's topics,
/// and writes the DataAddress the consumer needs into a Secret owned by this resource.
/// `spec.state` follows DSP: `Started` grants, `Suspended` cuts the consumer off until resumed,
/// `Terminated` and `Completed` revoke for good.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dsp-mqtt.io",
    version = "v1alpha1",
    kind = "MqttTransfer",
    namespaced,
    status = "MqttTransferStatus",
    shortname = "mqt",
    category = "dsp",
    derive = "PartialEq",
    cel,
    doc = "One consumer's access to one MqttAsset, mirroring one DSP transfer process: \
           per-transfer credentials, a read-only topic ACL, and the DataAddress in a Secret.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Where the transfer stands"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Whether the consumer's access is as the spec asks"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", description = "Why it is (not) ready"),
    printcolumn(name = "Asset", type_ = "string", json_path = ".spec.assetRef.name", description = "The MqttAsset transferred"),
    printcolumn(name = "Consumer", type_ = "string", json_path = ".spec.consumer.participantId", description = "Who receives the stream"),
    printcolumn(name = "Expires", type_ = "string", json_path = ".spec.expiresAt", description = "When access ends by itself (a time in the future: kubectl would print a date column as <invalid>)"),
    printcolumn(name = "Token Expires", type_ = "string", json_path = ".status.tokenExpiresAt", priority = 1, description = "When the current token expires"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("!has(oldSelf.spec.state) || !(oldSelf.spec.state in ['Terminated', 'Completed']) || (has(self.spec.state) && self.spec.state == oldSelf.spec.state)")
        .message("a Terminated or Completed transfer is final: spec.state cannot change any more (create a new MqttTransfer to grant access again)")
        .field_path(".spec.state")
        .reason(Reason::FieldValueForbidden),
    validation = Rule::new("!(has(oldSelf.spec.state) && oldSelf.spec.state == 'Suspended' && has(self.spec.state) && self.spec.state == 'Completed')")
        .message("a Suspended transfer can be resumed (Started) or Terminated, not Completed (DSP 2025-1 transfer states)")
        .field_path(".spec.state")
        .reason(Reason::FieldValueForbidden),
    validation = Rule::new("!has(oldSelf.spec.transferProcessId) || (has(self.spec.transferProcessId) && self.spec.transferProcessId == oldSelf.spec.transferProcessId)")
        .message("spec.transferProcessId is immutable once set")
        .field_path(".spec.transferProcessId")
        .reason(Reason::FieldValueForbidden),
    validation = Rule::new("!has(oldSelf.spec.agreementId) || (has(self.spec.agreementId) && self.spec.agreementId == oldSelf.spec.agreementId)")
        .message("spec.agreementId is immutable once set")
        .field_path(".spec.agreementId")
        .reason(Reason::FieldValueForbidden),
    validation = Rule::new("has(self.spec.secretName) == has(oldSelf.spec.secretName) && (!has(self.spec.secretName) || self.spec.secretName == oldSelf.spec.secretName)")
        .message("spec.secretName is immutable")
        .field_path(".spec.secretName")
        .reason(Reason::FieldValueForbidden)
)]
#[serde(rename_all = "camelCase")]
pub struct MqttTransferSpec {
    /// The MqttAsset (in this namespace) whose stream is transferred. Immutable.
    pub asset_ref: AssetRef,

    /// Who receives the stream. Immutable.
    pub consumer: Consumer,

    /// Id of the DSP transfer process this resource mirrors (informational; immutable once set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub transfer_process_id: Option<String>,

    /// Id of the DSP contract agreement the transfer is based on (informational; immutable once set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub agreement_id: Option<String>,

    /// DSP state the provider wants: `Started` grants access, `Suspended` cuts the consumer off
    /// and refuses reconnects until set back to `Started` (with fresh credentials), `Terminated`
    /// and `Completed` revoke access for good and are final. Default: `Started`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<TransferState>,

    /// Topic filters the consumer may read: all or a subset of the asset's (each must lie within
    /// one of the asset's filters). Default: all of the asset's topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 65535), regex(pattern = TOPIC_FILTER_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub topics: Option<Vec<String>>,

    /// When access ends by itself (RFC 3339, e.g. `2026-12-31T23:59:59Z`). The transfer is then
    /// terminated as if `state: Terminated` had been set. Default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// Lifetime of each access token issued to the consumer, in seconds (`oauth2` mode). The
    /// operator renews the token at about two thirds of it. Default: the identity-provider
    /// profile's setting (300 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 86400))]
    pub token_lifetime_seconds: Option<i32>,

    /// Name of the Secret (in this namespace, owned by this resource) that receives the full
    /// DataAddress with credentials. Default: this resource's name. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub secret_name: Option<String>,
}

/// Reference to an MqttAsset in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec.assetRef is immutable: create a new MqttTransfer for another asset").reason(Reason::FieldValueForbidden))]
#[serde(rename_all = "camelCase")]
pub struct AssetRef {
    /// Name of the MqttAsset.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
}

/// The receiving participant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec.consumer is immutable: credentials belong to one consumer").reason(Reason::FieldValueForbidden))]
#[serde(rename_all = "camelCase")]
pub struct Consumer {
    /// Dataspace participant id of the consumer: a DID (`did:web:…`) or a business partner
    /// number (`BPNL…`).
    #[schemars(length(min = 1, max = 512), regex(pattern = PARTICIPANT_ID_PATTERN))]
    pub participant_id: String,
}

// DSP transfer-process states a provider can set. (No doc comment: schemars would put it in
// place of the field's description in `kubectl explain`.)
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum TransferState {
    /// Access granted.
    #[default]
    Started,
    /// Access cut off; can be resumed.
    Suspended,
    /// Access revoked for good (final).
    Terminated,
    /// The transfer ended normally; access revoked (final).
    Completed,
}

impl TransferState {
    /// Whether no other state can follow this one.
    pub fn is_final(self) -> bool {
        matches!(self, TransferState::Terminated | TransferState::Completed)
    }
}

/// Where a transfer stands, at a glance.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum TransferPhase {
    /// Credentials and access are being provisioned.
    Pending,
    /// The consumer has access; the Secret holds a valid DataAddress.
    Active,
    /// Access is cut off until the transfer is resumed.
    Suspended,
    /// Access was revoked for good (`Terminated`).
    Terminated,
    /// The transfer ended normally and access was revoked (`Completed`).
    Completed,
    /// `spec.expiresAt` passed; access was revoked for good.
    Expired,
    /// Access cannot be granted as specified; the Ready condition says why.
    Failed,
}

/// Observed state of an MqttTransfer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttTransferStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The last value of the `dsp-mqtt.io/reconcile-requested-at` annotation that was handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,

    /// Where the transfer stands: Pending, Active, Suspended, Terminated, Completed, Expired, Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TransferPhase>,

    /// `Ready` (True when the consumer's access is exactly as the spec asks: granted when
    /// Started, revoked otherwise) and one condition per backend: `IdentityReady`,
    /// `SecretStoreReady`, `BrokerReady`, `CredentialsSecretReady`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,

    /// The transfer's client in the identity provider (`oauth2` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityRefs>,

    /// Where the transfer's secret is kept in the secret store (never the secret itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretRefs>,

    /// The transfer's objects in the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<BrokerRefs>,

    /// The DataAddress given to the consumer (ADR 012), without credentials: endpoint, topic(s),
    /// refresh endpoint and audience. The full DataAddress is in the Secret named by
    /// `credentialsSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub data_address: Option<BTreeMap<String, Value>>,

    /// The Secret holding the full DataAddress with credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretReference>,

    /// When the access token currently in the Secret expires (`oauth2` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<Time>,
}

/// Reference to a Secret in the resource's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Name of the Secret.
    pub name: String,
}
