//! Conditions of one reconcile: the stored ones kept, the changes recorded for their Events,
//! and kstatus' `Reconciling` / `Stalled` derived from `Ready`.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::events::{Event as KubeEvent, EventType};

use super::{Context, Error, PAUSED_ANNOTATION, Step};
use crate::status::{self, Status};

/// One condition change, for its Event.
pub(crate) struct Change {
    type_: String,
    status: Status,
    reason: String,
    message: String,
}

/// Conditions being computed for one reconcile: keeps the stored ones, records what changed.
pub(crate) struct Tracker {
    conditions: Vec<Condition>,
    /// The stored conditions: changes are judged against them, not against what an earlier
    /// step of the same reconcile set (a step set True then False in one pass is no flip).
    original: Vec<Condition>,
    changed: Vec<Change>,
    generation: Option<i64>,
    steps: &'static [Step],
}

impl Tracker {
    /// Starts from the stored conditions of an object at `generation` with these steps.
    pub(crate) fn new(conditions: Vec<Condition>, generation: Option<i64>, steps: &'static [Step]) -> Self {
        Self { original: conditions.clone(), conditions, changed: Vec::new(), generation, steps }
    }

    /// Sets one condition.
    pub(crate) fn set(&mut self, type_: &str, s: Status, reason: &str, message: &str) {
        let message = status::bounded(message);
        status::set(&mut self.conditions, type_, s, reason, &message, self.generation);
        // The transition time moves only when the status differs from the stored one.
        if let Some(stored) = self.original.iter().find(|c| c.type_ == type_)
            && let Some(c) = self.conditions.iter_mut().find(|c| c.type_ == type_)
            && stored.status == c.status
        {
            c.last_transition_time = stored.last_transition_time.clone();
        }
    }

    /// A step holds.
    pub(crate) fn step_ok(&mut self, step: Step, message: &str) {
        self.set(step.condition(), Status::True, status::RECONCILED, message);
    }

    /// Records a failure at `failed` (or before any step), blocks the steps after it and sets
    /// `Ready=False` with the error's reason.
    pub(crate) fn fail(&mut self, failed: Option<Step>, error: &Error) {
        let message = error.to_string();
        let after: Vec<Step> = match failed {
            Some(step) => {
                self.set(step.condition(), Status::False, error.reason(), &message);
                self.steps.iter().skip_while(|s| **s != step).skip(1).copied().collect()
            }
            None => self.steps.to_vec(),
        };
        let blocked = match failed {
            Some(f) => format!("waiting for the {f} step"),
            None => "waiting for a valid spec".to_owned(),
        };
        for step in after {
            self.set(step.condition(), Status::Unknown, status::BLOCKED, &blocked);
        }
        self.set(status::READY, Status::False, error.reason(), &message);
    }

    /// Marks the resource paused (or not): a `Paused` condition while the annotation is set,
    /// none otherwise. Returns whether it is paused.
    pub(crate) fn paused(&mut self, paused: bool) -> bool {
        if paused {
            self.set(
                status::PAUSED,
                Status::True,
                "Paused",
                &format!("annotation {PAUSED_ANNOTATION}=true: the operator leaves every backend as it is; remove the annotation to resume"),
            );
        } else if let Some(i) = self.conditions.iter().position(|c| c.type_ == status::PAUSED) {
            let removed = self.conditions.remove(i);
            self.original.retain(|c| c.type_ != status::PAUSED);
            self.changed.push(Change {
                type_: status::READY.into(),
                status: Status::Unknown,
                reason: "Resumed".into(),
                message: format!(
                    "annotation {PAUSED_ANNOTATION} removed: reconciling again (was: {})",
                    removed.message
                ),
            });
        }
        paused
    }

    /// Derives kstatus' `Reconciling` / `Stalled` from `Ready`: a retried failure is
    /// `Reconciling`, any other `Ready=False` is `Stalled`, and neither is there otherwise — so
    /// that Flux, `kstatus` and `kubectl wait` tell "still working" from "stuck".
    fn kstatus(&mut self) {
        let ready = self.conditions.iter().find(|c| c.type_ == status::READY).cloned();
        let (set, clear) = match &ready {
            Some(r) if r.status == "False" && status::RETRIED_REASONS.contains(&r.reason.as_str()) => {
                (Some(status::RECONCILING), status::STALLED)
            }
            Some(r) if r.status == "False" => (Some(status::STALLED), status::RECONCILING),
            _ => (None, status::STALLED),
        };
        self.conditions.retain(|c| c.type_ != clear && (set.is_some() || c.type_ != status::RECONCILING));
        if let (Some(type_), Some(r)) = (set, ready) {
            self.set(type_, Status::True, &r.reason, &r.message);
        }
    }

    /// Hands the conditions over and returns the changes.
    pub(crate) fn finish(mut self, into: &mut Vec<Condition>) -> Vec<Change> {
        self.kstatus();
        let mut changed = self.changed;
        for c in &self.conditions {
            let same = self
                .original
                .iter()
                .any(|o| o.type_ == c.type_ && o.status == c.status && o.reason == c.reason && o.message == c.message);
            if !same {
                let status = match c.status.as_str() {
                    "True" => Status::True,
                    "False" => Status::False,
                    _ => Status::Unknown,
                };
                changed.push(Change {
                    type_: c.type_.clone(),
                    status,
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                });
            }
        }
        *into = self.conditions;
        changed
    }
}

/// An Event for every change of `Ready` and every condition that turned `False`.
pub(crate) async fn publish_changes(ctx: &Context, reference: &ObjectReference, changes: Vec<Change>) {
    for c in changes {
        let mirrors_ready = c.type_ == status::RECONCILING || c.type_ == status::STALLED;
        if mirrors_ready || (c.type_ != status::READY && c.type_ != status::PAUSED && c.status != Status::False) {
            continue;
        }
        let type_ = if c.status == Status::False { EventType::Warning } else { EventType::Normal };
        let note = Some(format!("{}: {}", c.type_, c.message));
        ctx.publish(
            reference,
            KubeEvent { type_, reason: c.reason, note, action: "Reconcile".into(), secondary: None },
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlanError;

    fn types(t: &Tracker) -> Vec<(String, String, String)> {
        t.conditions.iter().map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone())).collect()
    }

    #[test]
    fn kstatus_conditions_follow_ready() {
        let refusal = Error::Plan(PlanError::NoEndpointUrl { endpoint_type: "mqtt-tls", broker: "default".into() });
        let mut t = Tracker::new(Vec::new(), Some(1), &[Step::Broker]);
        t.fail(Some(Step::Broker), &refusal);
        t.kstatus();
        let got = types(&t);
        assert!(got.contains(&("Stalled".into(), "True".into(), refusal.reason().into())), "{got:?}");
        assert!(!got.iter().any(|c| c.0 == "Reconciling"), "{got:?}");

        let retried = Error::Kube(kube::Error::LinesCodecMaxLineLengthExceeded);
        assert!(retried.is_retryable());
        t.fail(Some(Step::Broker), &retried);
        t.kstatus();
        let got = types(&t);
        assert!(got.contains(&("Reconciling".into(), "True".into(), "KubernetesApi".into())), "{got:?}");
        assert!(!got.iter().any(|c| c.0 == "Stalled"), "{got:?}");

        t.step_ok(Step::Broker, "ok");
        t.set(status::READY, Status::True, status::RECONCILED, "ok");
        t.kstatus();
        assert!(!types(&t).iter().any(|c| c.0 == "Stalled" || c.0 == "Reconciling"), "{:?}", types(&t));
    }
}
