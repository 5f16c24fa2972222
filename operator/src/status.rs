//! Conditions: `Ready` plus one per step, with stable reasons.
//!
//! Reasons are the variant names of the error that caused them ([`crate::plan::PlanError`],
//! [`crate::backends::BackendError`]) or one of the constants below. `lastTransitionTime` only
//! moves when a condition's status changes, so a resync that finds everything as it was
//! produces a status equal to the stored one and writes nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Condition type: all steps done.
pub const READY: &str = "Ready";
/// Condition type: identity-provider client (oauth2) or the broker user's password (usrpw).
pub const IDENTITY_READY: &str = "IdentityReady";
/// Condition type: the secret in the secret store.
pub const SECRET_READY: &str = "SecretReady";
/// Condition type: broker user, role and ACLs (or the token's topic claims in oauth2 mode).
pub const BROKER_READY: &str = "BrokerReady";
/// Condition type: connector asset, policies, contract definition.
pub const CONNECTOR_READY: &str = "ConnectorReady";

/// Condition type: the Secret with the consumer's DataAddress (transfers).
pub const CREDENTIALS_READY: &str = "CredentialsReady";

/// Condition type: reconciling is paused by annotation.
pub const PAUSED: &str = "Paused";
/// kstatus' "abnormal-true" condition: True while the operator is still working towards the
/// spec (a retryable failure is being retried). Absent otherwise.
pub const RECONCILING: &str = "Reconciling";
/// kstatus' "abnormal-true" condition: True while the operator cannot progress without a change
/// (a refusal: bad input, a foreign object, a missing asset). Absent otherwise.
pub const STALLED: &str = "Stalled";

/// The `Ready=False` reasons that the operator retries by itself (the controller's
/// `Error::is_retryable`); every other `Ready=False` reason waits for a change.
pub const RETRIED_REASONS: &[&str] =
    &["Unavailable", "Timeout", "Unreachable", "KubernetesApi", "Finalizer", "CleanupPending"];

/// Reason: the step holds what the spec asks for.
pub const RECONCILED: &str = "Reconciled";
/// Reason: an earlier step failed, so this one was not attempted.
pub const BLOCKED: &str = "Blocked";

/// `True`/`False`/`Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Holds.
    True,
    /// Does not hold.
    False,
    /// Not known (not attempted).
    Unknown,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

/// Sets a condition in `conditions`, keeping `lastTransitionTime` unless the status changes.
/// Returns whether anything about it changed.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: Status,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> bool {
    let now = Time(Timestamp::now());
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            let changed = c.status != status.as_str()
                || c.reason != reason
                || c.message != message
                || c.observed_generation != generation;
            if c.status != status.as_str() {
                c.last_transition_time = now;
            }
            c.status = status.as_str().into();
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = generation;
            changed
        }
        None => {
            conditions.push(Condition {
                type_: type_.into(),
                status: status.as_str().into(),
                reason: reason.into(),
                message: message.into(),
                observed_generation: generation,
                last_transition_time: now,
            });
            true
        }
    }
}

/// The condition of this type, if set.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of this type is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Condition messages are bounded by the API (32768 bytes); keep them readable.
pub fn bounded(message: &str) -> String {
    const MAX: usize = 1024;
    if message.len() <= MAX {
        return message.to_owned();
    }
    let mut end = MAX;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_with_the_status() {
        let mut conditions = Vec::new();
        assert!(set(&mut conditions, READY, Status::False, "Unavailable", "down", Some(1)));
        let first = conditions[0].last_transition_time.clone();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(!set(&mut conditions, READY, Status::False, "Unavailable", "down", Some(1)), "same: no change");
        assert!(set(&mut conditions, READY, Status::False, "Timeout", "slow", Some(1)), "reason changed");
        assert_eq!(conditions[0].last_transition_time, first, "status unchanged: time kept");
        assert!(set(&mut conditions, READY, Status::True, RECONCILED, "ok", Some(2)));
        assert_ne!(conditions[0].last_transition_time, first);
        assert!(is_true(&conditions, READY));
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "ä".repeat(2000);
        let cut = bounded(&long);
        assert!(cut.len() <= 1024 + "…".len());
        assert!(cut.ends_with('…'));
    }
}
