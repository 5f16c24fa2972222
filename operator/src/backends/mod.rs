//! The four external systems, one module each: a trait saying what the operator needs from the
//! system, and the real client beside it.
//!
//! - [`connector`]: the dataspace connector (Eclipse EDC Management API v3);
//! - [`identity`]: the identity provider (Keycloak Admin API);
//! - [`secrets`]: the secret store the connector resolves aliases from (Vault KV v2);
//! - [`broker`]: the MQTT broker's users and ACLs (Mosquitto, RabbitMQ, EMQX).
//!
//! Rules every implementation keeps (the controllers rely on them):
//! - every operation is idempotent: "ensure X is like this" finds, creates, on a conflict reads,
//!   compares, and writes only when something differs — a second identical call makes no write;
//! - every object the operator creates carries the [ownership marker](OWNER_KEY), and an object
//!   without it is never overwritten or deleted ([`BackendError::Foreign`]);
//! - errors say which system, which operation, which object and what the system answered, and
//!   never contain a secret value (secrets travel as [`SecretString`]).
//!
//! Backends know nothing of CRDs: they take plain desired-state values.

pub mod broker;
pub mod connector;
pub mod http;
pub mod identity;
pub mod registry;
pub mod secrets;

pub use secrecy::{ExposeSecret, SecretString};

/// A fresh random password: 256 bits from the OS-seeded CSPRNG, base64url without padding
/// (43 characters, safe in every broker's username/password syntax).
pub fn random_password() -> SecretString {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    SecretString::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Key of the ownership marker (EDC private property, Keycloak client attribute, Vault
/// `custom_metadata`; brokers carry it in the object's text description). Its value is
/// [`Owner::managed_by`]: `mqtt-dsp-operator/<installation>`.
pub const OWNER_KEY: &str = "dsp-mqtt.io/managed-by";
/// The ownership marker's value before it named the installation. An object that carries it (and
/// the right [`OWNER_RESOURCE_KEY`]) is adopted by the first installation that writes it, which
/// rewrites the marker into its own form.
pub const OWNER_VALUE: &str = "mqtt-dsp-operator";
/// Key of the marker naming the resource an object belongs to (`MqttAsset/<ns>/<name>`).
pub const OWNER_RESOURCE_KEY: &str = "dsp-mqtt.io/owner";

/// The resource an external object belongs to, and the installation that manages it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The operator installation ([`crate::config::Config::installation`]).
    pub installation: String,
    /// `MqttAsset` or `MqttTransfer`.
    pub kind: String,
    /// Namespace of the resource.
    pub namespace: String,
    /// Name of the resource.
    pub name: String,
}

impl Owner {
    /// The owner marker's value: `<kind>/<namespace>/<name>`.
    pub fn marker(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }

    /// The value of [`OWNER_KEY`] this installation writes: `mqtt-dsp-operator/<installation>`.
    pub fn managed_by(&self) -> String {
        format!("{OWNER_VALUE}/{}", self.installation)
    }

    /// Whether a value of [`OWNER_KEY`] is this installation's: its own form, or the form without
    /// an installation (adopted; the next write rewrites it). Another installation's is not.
    pub fn is_managed_by(&self, value: &str) -> bool {
        value == OWNER_VALUE || value == self.managed_by()
    }
}

/// The external systems, as named in errors, conditions and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum System {
    /// Eclipse EDC Management API.
    Connector,
    /// Keycloak.
    Identity,
    /// Vault.
    SecretStore,
    /// Mosquitto dynamic security.
    Mosquitto,
    /// RabbitMQ management API.
    Rabbitmq,
    /// EMQX REST API.
    Emqx,
}

impl System {
    /// A short, stable name (metrics label, log field).
    pub fn as_str(self) -> &'static str {
        match self {
            System::Connector => "connector",
            System::Identity => "identity",
            System::SecretStore => "secret-store",
            System::Mosquitto => "mosquitto",
            System::Rabbitmq => "rabbitmq",
            System::Emqx => "emqx",
        }
    }
}

impl std::fmt::Display for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            System::Connector => "the connector (EDC)",
            System::Identity => "the identity provider (Keycloak)",
            System::SecretStore => "the secret store (Vault)",
            System::Mosquitto => "Mosquitto",
            System::Rabbitmq => "RabbitMQ",
            System::Emqx => "EMQX",
        })
    }
}

/// What an idempotent call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do: the object already was as desired (no write was made).
    Unchanged,
    /// The object did not exist and was created.
    Created,
    /// The object existed and differed; it was updated.
    Updated,
    /// The object existed and was deleted.
    Deleted,
    /// The object to delete did not exist (a 404 on delete is success).
    Absent,
}

impl Outcome {
    /// Whether the call wrote anything.
    pub fn wrote(self) -> bool {
        matches!(self, Outcome::Created | Outcome::Updated | Outcome::Deleted)
    }
}

/// An error from an external system. Variant names are stable: they become condition reasons
/// and Event reasons.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The system refused the operator's credentials (401/403).
    #[error(
        "{system} refused the operator's credentials ({status}) on {operation} {object}: check the profile's credential"
    )]
    Unauthorized {
        /// Which system.
        system: System,
        /// What the operator tried, a verb (`create`).
        operation: &'static str,
        /// Which object, kind and name (`asset line-1`).
        object: String,
        /// HTTP status (or 0 for non-HTTP systems).
        status: u16,
    },
    /// The object exists but was not created by the operator; it is left untouched.
    #[error(
        "{system}: {object} exists but does not carry this resource's ownership marker; refusing to {operation} it (created by someone else, for another resource or by another operator installation: rename the resource or remove the other object)"
    )]
    Foreign {
        /// Which system.
        system: System,
        /// What the operator would have done.
        operation: &'static str,
        /// Which object.
        object: String,
    },
    /// The object cannot be deleted while something references it (EDC: a contract agreement
    /// references the asset). Not retryable by waiting.
    #[error("{system} refuses to {operation} {object}: it is still referenced ({message})")]
    InUse {
        /// Which system.
        system: System,
        /// What the operator tried.
        operation: &'static str,
        /// Which object.
        object: String,
        /// What the system said.
        message: String,
    },
    /// The system rejected the request as invalid (400/422, or a broker command error). Not
    /// retryable without a change to the resource or the configuration.
    #[error("{system} rejected {operation} {object} ({status}): {message}")]
    Rejected {
        /// Which system.
        system: System,
        /// What the operator tried.
        operation: &'static str,
        /// Which object.
        object: String,
        /// HTTP status (0 for non-HTTP systems).
        status: u16,
        /// What the system said.
        message: String,
    },
    /// The system failed (5xx or another unexpected status). Retryable.
    #[error("{system} failed on {operation} {object} ({status}): {message}")]
    Unavailable {
        /// Which system.
        system: System,
        /// What the operator tried.
        operation: &'static str,
        /// Which object.
        object: String,
        /// HTTP status.
        status: u16,
        /// What the system said.
        message: String,
    },
    /// No answer in time. Retryable.
    #[error("{system} did not answer {operation} {object} within {timeout_seconds} s")]
    Timeout {
        /// Which system.
        system: System,
        /// What the operator tried.
        operation: &'static str,
        /// Which object.
        object: String,
        /// The timeout.
        timeout_seconds: u64,
    },
    /// The system could not be reached (connection, TLS). Retryable.
    #[error("cannot reach {system} for {operation} {object}")]
    Unreachable {
        /// Which system.
        system: System,
        /// What the operator tried.
        operation: &'static str,
        /// Which object.
        object: String,
        /// The transport error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The system answered with a redirect (3xx). The operator follows none: the request carries
    /// its admin credential, which must not go wherever a `Location` points. Not retryable: the
    /// profile's URL has to change.
    #[error(
        "{system} answered {operation} {object} with a redirect ({status}) from {from} to {location}; the operator follows no redirects (they would carry its credentials elsewhere): set the profile's URL to the address that answers directly"
    )]
    Redirected {
        /// Which system.
        system: System,
        /// What the operator tried.
        operation: &'static str,
        /// Which object.
        object: String,
        /// HTTP status (301, 302, 303, 307, 308).
        status: u16,
        /// Origin the request went to.
        from: String,
        /// Where the answer pointed (without query or user info).
        location: String,
    },
    /// The system answered something the operator does not understand.
    #[error("{system} answered {operation} {object} unexpectedly: {detail}")]
    Protocol {
        /// Which system.
        system: System,
        /// What the operator tried.
        operation: &'static str,
        /// Which object.
        object: String,
        /// What was unexpected (never a secret).
        detail: String,
    },
    /// The system cannot do what is asked (e.g. JWT auth on Mosquitto).
    #[error("{system} cannot {what}")]
    Unsupported {
        /// Which system.
        system: System,
        /// What it cannot do, and what to do instead.
        what: String,
    },
    /// A credential of the profile could not be read.
    #[error(transparent)]
    Credential(#[from] crate::credentials::CredentialError),
}

impl BackendError {
    /// Whether retrying the same call later can succeed without a change by a user.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            BackendError::Unavailable { .. } | BackendError::Timeout { .. } | BackendError::Unreachable { .. }
        )
    }

    /// The variant name: the condition and Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            BackendError::Unauthorized { .. } => "Unauthorized",
            BackendError::Foreign { .. } => "Foreign",
            BackendError::InUse { .. } => "InUse",
            BackendError::Rejected { .. } => "Rejected",
            BackendError::Unavailable { .. } => "Unavailable",
            BackendError::Timeout { .. } => "Timeout",
            BackendError::Unreachable { .. } => "Unreachable",
            BackendError::Redirected { .. } => "Redirected",
            BackendError::Protocol { .. } => "Protocol",
            BackendError::Unsupported { .. } => "Unsupported",
            BackendError::Credential(_) => "Credential",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_installation_manages_its_own_marker_and_adopts_the_old_one_only() {
        let owner = Owner {
            installation: "prod.mqtt-dsp-operator".into(),
            kind: "MqttAsset".into(),
            namespace: "factory".into(),
            name: "line-1".into(),
        };
        assert_eq!(owner.managed_by(), "mqtt-dsp-operator/prod.mqtt-dsp-operator");
        assert!(owner.is_managed_by("mqtt-dsp-operator/prod.mqtt-dsp-operator"));
        assert!(owner.is_managed_by(OWNER_VALUE), "written before markers named the installation");
        for other in ["mqtt-dsp-operator/staging.mqtt-dsp-operator", "mqtt-dsp-operator/prod", "mqtt-dsp-operator/", ""]
        {
            assert!(!owner.is_managed_by(other), "{other:?}");
        }
    }
}
