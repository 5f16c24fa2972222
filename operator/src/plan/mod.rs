//! Pure planning: a validated spec plus the operator configuration → the desired state of every
//! backend, with deterministic external names. No I/O here; the controllers walk a plan through
//! the backends. Most of the operator's rules are unit-tested in this module.
//!
//! What one object's schema and CEL rules cannot check (a profile that must exist in the
//! configuration, an auth mode the chosen broker cannot do, MQTT's 65535-*byte* topic bound,
//! reserved keys inside a free-form map) is checked here and reported as a [`PlanError`], whose
//! variant name is the condition and Event reason.

pub mod allowed;
pub mod asset;
pub mod objects;
pub mod properties;
pub mod topics;
pub mod transfer;

use crate::api::{AuthMode, TOPIC_FILTER_MAX_BYTES};
use crate::config::BrokerType;

/// Key prefix reserved for the operator's own markers in the connector's private properties.
pub const RESERVED_PROPERTY_PREFIX: &str = "dsp-mqtt.io/";

/// Why a spec cannot be planned. Each message names the field to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The spec names a profile the operator configuration does not define.
    #[error(
        "{field} names {section} profile \"{name}\", which the operator configuration does not define (defined: {}); set {field} to one of them or add the profile",
        if defined.is_empty() { "none".to_owned() } else { defined.join(", ") }
    )]
    UnknownProfile {
        /// Spec field that names it (`spec.connector`).
        field: &'static str,
        /// Configuration section (`connectors`).
        section: &'static str,
        /// The name given (or `default`).
        name: String,
        /// Profiles that exist in that section.
        defined: Vec<String>,
    },
    /// The broker cannot authenticate consumers in the requested mode.
    #[error(
        "broker profile \"{broker}\" ({broker_type}) does not offer auth mode {mode} (it offers: {}); change spec.auth.mode or choose another broker in spec.broker",
        offered.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
    )]
    AuthModeUnsupported {
        /// Broker profile.
        broker: String,
        /// Its type.
        broker_type: &'static str,
        /// Mode asked for.
        mode: AuthMode,
        /// Modes it offers.
        offered: Vec<AuthMode>,
    },
    /// No URL to give consumers.
    #[error(
        "spec.endpoint.url is not set and broker profile \"{broker}\" has no public URL for {endpoint_type}; add brokers.{broker}.publicUrls.{endpoint_type} to the operator configuration (spec.endpoint.url can only pick one of the profile's publicUrls), or change spec.endpoint.type"
    )]
    NoEndpointUrl {
        /// Broker profile.
        broker: String,
        /// Endpoint type asked for.
        endpoint_type: &'static str,
    },
    /// A property names one of the operator's ownership markers, in any JSON-LD spelling, or the
    /// object's own `@context` moves them (see [`properties`]).
    #[error(
        "{field}.{key}: {detail}; keys under \"{RESERVED_PROPERTY_PREFIX}\" of the connector's vocabulary are reserved for the operator's ownership markers in every JSON-LD spelling (plain, prefixed, full IRI, or through the object's own @context): rename the key or change the object's @context"
    )]
    ReservedProperty {
        /// Spec field (`spec.privateProperties`).
        field: &'static str,
        /// The key (`@context` when the context is the problem).
        key: String,
        /// What it expands to, or what the context does.
        detail: String,
    },
    /// The same key in properties and privateProperties (the connector refuses that).
    #[error(
        "key \"{key}\" is in both spec.properties and spec.privateProperties, which the connector refuses; keep it in one of them"
    )]
    PropertyConflict {
        /// The key.
        key: String,
    },
    /// Transfer topics that the asset's filters do not cover.
    #[error(
        "spec.topics: {} not within the topic filters of MqttAsset \"{asset}\"; a transfer can only narrow the asset's topics (remove them, or widen spec.topics of the asset)",
        topics.join(", ")
    )]
    TopicsOutsideAsset {
        /// The offending filters.
        topics: Vec<String>,
        /// The asset.
        asset: String,
    },
    /// A `*` inside a topic level on a RabbitMQ broker, where it would be a wildcard.
    #[error(
        "{field}[{index}] \"{topic}\" contains `*`; broker profile \"{broker}\" is RabbitMQ, which turns MQTT topics into AMQP routing keys where `*` is a wildcard for a whole level, so the grant would cover other topics too: remove the `*` (use a `+` level to mean any level) or choose a broker profile of another type in spec.broker"
    )]
    TopicAsteriskUnsupported {
        /// Spec field (`spec.topics`).
        field: &'static str,
        /// Index in the list.
        index: usize,
        /// The filter.
        topic: String,
        /// Broker profile.
        broker: String,
    },
    /// The transfer's consumer is not among the participants the asset's policy lists.
    #[error(
        "spec.consumer.participantId \"{participant}\" is not among the participants MqttAsset \"{asset}\" permits in spec.policy.{policy}.participantIds ({}); nothing is provisioned for it: add the participant to the asset's policy, or create an MqttTransfer for a permitted participant (spec.consumer is immutable)",
        allowed.join(", ")
    )]
    ConsumerNotAllowed {
        /// The transfer's consumer.
        participant: String,
        /// The asset.
        asset: String,
        /// Which of the asset's policies (`access`, `contract`).
        policy: &'static str,
        /// The participants it lists.
        allowed: Vec<String>,
    },
    /// A profile's `allowed` block refuses the resource's namespace or what its spec asks for
    /// (see [`allowed`]). The message names the rule and the profile.
    #[error("{detail}; nothing is provisioned for it")]
    NotAllowed {
        /// The rule, the profile and what to change.
        detail: String,
    },
    /// A topic filter longer than MQTT allows.
    #[error(
        "{field}[{index}] is {bytes} bytes long in UTF-8; MQTT allows at most {TOPIC_FILTER_MAX_BYTES}: shorten it"
    )]
    TopicTooLong {
        /// Spec field (`spec.topics`).
        field: &'static str,
        /// Index in the list.
        index: usize,
        /// Its length in bytes.
        bytes: usize,
    },
}

impl PlanError {
    /// The condition/Event reason: the variant name.
    pub fn reason(&self) -> &'static str {
        match self {
            PlanError::UnknownProfile { .. } => "UnknownProfile",
            PlanError::AuthModeUnsupported { .. } => "AuthModeUnsupported",
            PlanError::NoEndpointUrl { .. } => "NoEndpointUrl",
            PlanError::ReservedProperty { .. } => "ReservedProperty",
            PlanError::PropertyConflict { .. } => "PropertyConflict",
            PlanError::TopicTooLong { .. } => "TopicTooLong",
            PlanError::TopicAsteriskUnsupported { .. } => "TopicAsteriskUnsupported",
            PlanError::ConsumerNotAllowed { .. } => "ConsumerNotAllowed",
            PlanError::TopicsOutsideAsset { .. } => "TopicsOutsideAsset",
            PlanError::NotAllowed { .. } => "NotAllowed",
        }
    }
}

/// The longest identity name (client id, broker username) the operator generates: Keycloak keeps
/// a client's service-account user as `service-account-<clientId>` in a 255-character column.
pub const MAX_IDENTITY_LEN: usize = 255 - "service-account-".len();

/// A generated name cut to `max` characters: when longer, its first characters, `-` and 16 hex
/// digits of the SHA-256 of the whole name, so that two long names stay apart and the same input
/// always gives the same name. Generated names are never refused for their length.
pub fn bounded(name: String, max: usize) -> String {
    use sha2::{Digest, Sha256};
    const HASH: usize = 16;
    if name.len() <= max {
        return name;
    }
    let digest = format!("{:x}", Sha256::digest(name.as_bytes()));
    // Generated names are ASCII (namespace and resource names are DNS names).
    let mut keep = max - HASH - 1;
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}-{}", &name[..keep], &digest[..HASH])
}

/// Profile name a spec field resolves to.
pub fn profile_name(chosen: Option<&String>) -> &str {
    chosen.map(String::as_str).unwrap_or("default")
}

/// Looks a profile up, or says which exist.
fn lookup<'a, T>(
    map: &'a std::collections::BTreeMap<String, T>,
    chosen: Option<&String>,
    field: &'static str,
    section: &'static str,
) -> Result<(String, &'a T), PlanError> {
    let name = profile_name(chosen);
    map.get(name).map(|p| (name.to_owned(), p)).ok_or_else(|| PlanError::UnknownProfile {
        field,
        section,
        name: name.to_owned(),
        defined: map.keys().cloned().collect(),
    })
}

/// Checks MQTT's byte bound on every topic filter (the schema can only count characters).
pub fn check_topic_bytes(field: &'static str, topics: &[String]) -> Result<(), PlanError> {
    match topics.iter().enumerate().find(|(_, t)| t.len() > TOPIC_FILTER_MAX_BYTES) {
        Some((index, t)) => Err(PlanError::TopicTooLong { field, index, bytes: t.len() }),
        None => Ok(()),
    }
}

/// Refuses `*` anywhere in a topic filter when the broker is RabbitMQ: its MQTT plugin maps topic
/// levels to AMQP routing-key words, and there `*` (inside a binding key or a token scope's
/// pattern) matches any word, so `a/*/b` would grant `a/x/b` too. Other brokers take `*` literally.
pub fn check_topic_asterisks(
    field: &'static str,
    topics: &[String],
    broker: &str,
    broker_type: BrokerType,
) -> Result<(), PlanError> {
    if broker_type != BrokerType::Rabbitmq {
        return Ok(());
    }
    match topics.iter().enumerate().find(|(_, t)| t.contains('*')) {
        Some((index, t)) => {
            Err(PlanError::TopicAsteriskUnsupported { field, index, topic: t.clone(), broker: broker.to_owned() })
        }
        None => Ok(()),
    }
}

/// Whether a broker profile offers a mode; the error names what it offers.
fn check_mode(broker: &str, broker_type: BrokerType, offered: Vec<AuthMode>, mode: AuthMode) -> Result<(), PlanError> {
    if offered.contains(&mode) {
        Ok(())
    } else {
        Err(PlanError::AuthModeUnsupported {
            broker: broker.to_owned(),
            broker_type: match broker_type {
                BrokerType::Mosquitto => "mosquitto",
                BrokerType::Rabbitmq => "rabbitmq",
                BrokerType::Emqx => "emqx",
            },
            mode,
            offered,
        })
    }
}
