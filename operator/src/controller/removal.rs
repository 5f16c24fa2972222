//! What the converge step's removals mean for a resource: Events for what was left alone, a
//! failed step for a walk, and for deletion the finalizer kept or released.

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use tracing::{info, warn};

use super::{Context, Error, Step};
use crate::converge::{self, Deletion, Removal};
use crate::plan::objects::{Kind, Section};
use crate::status;

/// The step an object's kind belongs to.
pub(crate) fn step_of(kind: Kind) -> Step {
    match kind.section() {
        Section::Connectors => Step::Connector,
        Section::IdentityProviders => Step::Identity,
        Section::SecretStores => Step::Secret,
        Section::Brokers => Step::Broker,
    }
}

impl From<converge::Failed> for Error {
    fn from(f: converge::Failed) -> Self {
        Error::Backend { step: step_of(f.kind), source: f.source }
    }
}

/// A failed converge call as a failed step.
pub(crate) fn failed_step(f: converge::Failed) -> (Option<Step>, Error) {
    (Some(step_of(f.kind)), f.into())
}

/// Publishes what a removal left alone: one `ProfileRemoved` Warning naming the profiles the
/// configuration no longer has and their objects (status forgets them once the resource moves
/// on or goes, so this Event is the only record: restoring the profile later removes nothing),
/// and a `Foreign` Warning per object that is not ours.
pub(crate) async fn publish_removal(ctx: &Context, reference: &ObjectReference, removal: &Removal) {
    if !removal.left.is_empty() {
        let listed: Vec<String> =
            removal.left.0.iter().map(|(profile, objects)| format!("{profile} ({})", objects.join(", "))).collect();
        let note = format!(
            "the configuration no longer has {}: these objects are left in place; unless a profile still \
             configured reaches the same backend (the operator then handles them through it), remove them by hand",
            listed.join("; ")
        );
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: "ProfileRemoved".into(),
            note: Some(status::bounded(&note)),
            action: "Reconcile".into(),
            secondary: None,
        };
        ctx.publish(reference, event).await;
    }
    for f in &removal.foreign {
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: "Foreign".into(),
            note: Some(status::bounded(&format!("left in place, not ours: {f}"))),
            action: "Reconcile".into(),
            secondary: None,
        };
        ctx.publish(reference, event).await;
    }
}

/// A removal within a walk (objects a previous spec made and this one no longer wants): a
/// failure or refusal fails the walk at that object's step, so status keeps the records.
pub(crate) async fn removal_result(
    ctx: &Context,
    reference: &ObjectReference,
    removal: Removal,
) -> Result<(), (Option<Step>, Error)> {
    publish_removal(ctx, reference, &removal).await;
    if let Some(f) = removal.failed {
        return Err(failed_step(f));
    }
    match removal.refused.into_iter().next() {
        Some(r) => Err(failed_step(converge::Failed { kind: r.kind, source: r.source })),
        None => Ok(()),
    }
}

/// What deletion does with the converge step's verdict: Events, and the finalizer kept (an
/// error) or released (`Ok`). `refused` writes the refusal into status.
pub(crate) async fn conclude_deletion<'a>(
    ctx: &Context,
    reference: &ObjectReference,
    key: &str,
    deletion: Deletion,
    refused: impl FnOnce(&'static str, String) -> BoxFuture<'a, Result<(), Error>>,
) -> Result<Action, Error> {
    let summary = |removal: &Removal| {
        removal.refused.iter().map(|r| format!("{}: {}", r.what, r.source)).collect::<Vec<_>>().join("; ")
    };
    match deletion {
        Deletion::Retained => {
            info!(resource = key, "deletionPolicy Retain: leaving every external object in place");
            let note = "deletionPolicy is Retain: connector, identity, secret and broker objects are left in place";
            let event = KubeEvent {
                type_: EventType::Normal,
                reason: "Retained".into(),
                note: Some(note.into()),
                action: "Delete".into(),
                secondary: None,
            };
            ctx.publish(reference, event).await;
            Ok(Action::await_change())
        }
        Deletion::Wait(retry) => Err(Error::CleanupPending { retry, attempts: 0 }),
        Deletion::Failed(removal) => {
            publish_removal(ctx, reference, &removal).await;
            Err(removal.failed.expect("a failed deletion has its failure").into())
        }
        Deletion::Done(removal) => {
            publish_removal(ctx, reference, &removal).await;
            info!(resource = key, "external objects removed");
            Ok(Action::await_change())
        }
        Deletion::Refused(removal, attempts) => {
            publish_removal(ctx, reference, &removal).await;
            let summary = summary(&removal);
            let reason = removal.refused[0].source.reason();
            let message = format!(
                "deletion refused: {summary}; tried {} times, {:?} apart, then these objects are left in place",
                ctx.settings.cleanup_attempts, ctx.settings.cleanup_retry
            );
            refused(reason, message).await?;
            let event = KubeEvent {
                type_: EventType::Warning,
                reason: reason.into(),
                note: Some(status::bounded(&format!("deletion attempt {attempts}: {summary}"))),
                action: "Delete".into(),
                secondary: None,
            };
            ctx.publish(reference, event).await;
            // The finalizer helper releases the finalizer on Ok: keep it with an error whose
            // retry delay is the cleanup interval (not the exponential backoff).
            Err(Error::CleanupPending { retry: ctx.settings.cleanup_retry, attempts })
        }
        Deletion::Abandoned(removal, attempts) => {
            publish_removal(ctx, reference, &removal).await;
            let summary = summary(&removal);
            warn!(resource = key, attempts, "giving up on cleanup of refused objects: {summary}");
            let event = KubeEvent {
                type_: EventType::Warning,
                reason: "CleanupAbandoned".into(),
                note: Some(status::bounded(&format!(
                    "left in place after {attempts} attempt(s), remove by hand if needed: {summary}"
                ))),
                action: "Delete".into(),
                secondary: None,
            };
            ctx.publish(reference, event).await;
            Ok(Action::await_change())
        }
    }
}
