//! The `MqttTransfer` controller: one consumer's access to one asset, following DSP.
//!
//! - `Started` (and not expired): identity (a per-transfer identity-provider client in `oauth2`
//!   mode, or a broker user with a password generated once in `usrpw` mode) → its secret in the
//!   secret store → broker access to the transfer's topics, read-only → credentials (a token,
//!   renewed at about two thirds of its lifetime, or the password) → the Secret with the full
//!   DataAddress, owned by the transfer → status with everything but the credentials.
//! - `Suspended`: the identity is disabled (Keycloak client disabled, broker user disabled or
//!   removed per broker) and live sessions are closed; the Secret keeps the DataAddress without
//!   credentials. Resuming issues fresh credentials (a new password, a new token).
//! - `Terminated`, `Completed`, `expiresAt` passed: every object of the transfer is removed
//!   from every backend and the Secret is deleted. Final.
//! - The asset gone (or being deleted): the same removal, `Ready=False` reason `AssetNotFound`;
//!   access comes back when the asset does.
//! - Deletion: the same removal, then the finalizer is released.
//!
//! The operator reads only the Secret it writes (by name, never a list or watch of Secrets).
//! Expiry and token renewal are requeued at their time, not polled.

mod grant;
mod revoke;
mod secret;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tracing::{Instrument, debug, warn};

use self::grant::grant;
use self::revoke::{cleanup, revoke, suspend};
pub use self::secret::{SECRET_LABEL, TOKEN_GRANT_ANNOTATION, renew_at, token_grant};
use super::asset::Clients;
use super::{AtStep, Context, Error, FINALIZER, Step, Tracker, is_paused, publish_changes};
use crate::api::{
    AuthMode, BrokerRefs, IdentityRefs, MqttAsset, MqttTransfer, MqttTransferStatus, SecretRefs, TransferPhase,
    TransferState,
};
use crate::backends::BackendError;
use crate::converge::Converge;
use crate::plan::objects;
use crate::plan::transfer::{self as transfer_plan, Access, Cause, TransferPlan};
use crate::status::{self, Status};

/// The transfer's steps, in order.
const STEPS: &[Step] = &[Step::Identity, Step::Secret, Step::Broker, Step::Credentials];

/// Runs the MqttTransfer controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let (transfers, assets): (Api<MqttTransfer>, Api<MqttAsset>) = match &ctx.settings.namespace {
        Some(ns) => (Api::namespaced(ctx.client.clone(), ns), Api::namespaced(ctx.client.clone(), ns)),
        None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
    };
    let controller =
        super::controller_of(transfers, &ctx, |t: &MqttTransfer| serde_json::to_value(&t.status).unwrap_or_default());
    let store = controller.store();
    ctx.watch_cache("MqttTransfer", store.clone(), |t: &MqttTransfer| t.status.as_ref().map(|s| &s.conditions));
    // The assets, cached: a transfer reads its asset from here (no request per reconcile). The
    // cache is updated before the event that triggers the transfers reaches them.
    let (asset_store, asset_writer) = reflector::store();
    let _ = ctx.assets.set(asset_store);
    let asset_events = watcher(assets, watcher::Config::default())
        .default_backoff()
        .modify(|asset: &mut MqttAsset| asset.metadata.managed_fields = None)
        .reflect(asset_writer)
        .touched_objects();
    controller
        // An asset that appears, changes or goes concerns the transfers that name it.
        .watches_stream(asset_events, move |asset: MqttAsset| {
            let (ns, name) = (asset.namespace(), asset.name_any());
            store
                .state()
                .into_iter()
                .filter(|t| t.namespace() == ns && t.spec.asset_ref.name == name)
                .map(|t| ObjectRef::from_obj(&*t))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(transfer = %object, "reconciled"),
                Err(e) => debug!("MqttTransfer controller: {e}"),
            }
        })
        .await;
}

/// The transfer's asset, unless it is gone, from the asset cache once it has synced (an
/// unsynced cache would make every asset look deleted).
async fn asset_of(t: &MqttTransfer, ctx: &Context) -> Result<Option<MqttAsset>, Error> {
    let store = ctx.assets.get().expect("run() sets the asset cache before any reconcile");
    if !super::watch::store_ready(store).await {
        return Err(Error::Finalizer("the asset cache stopped".into()));
    }
    let namespace = t.namespace().unwrap_or_default();
    Ok(store.get(&ObjectRef::new(&t.spec.asset_ref.name).within(&namespace)).map(|a| (*a).clone()))
}

fn key(t: &MqttTransfer) -> String {
    format!("MqttTransfer/{}/{}", t.namespace().unwrap_or_default(), t.name_any())
}

async fn reconcile(transfer: Arc<MqttTransfer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<MqttTransfer> = Api::namespaced(ctx.client.clone(), &transfer.namespace().unwrap_or_default());
    let started = std::time::Instant::now();
    if let Some(requested) = super::reconcile_requested(&transfer.metadata)
        && transfer.status.as_ref().and_then(|s| s.last_handled_reconcile_at.as_ref()) != Some(&requested)
    {
        // Asked for by a user: retry now, not after the backoff that piled up.
        ctx.succeeded(&key(&transfer));
    }
    let span = super::reconcile_span("MqttTransfer", &transfer.metadata);
    let result = finalizer(&api, FINALIZER, transfer.clone(), |event| async {
        match event {
            Event::Apply(t) => apply(&t, &api, &ctx).await,
            Event::Cleanup(t) => cleanup(&t, &api, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(Error::from_finalizer);
    ctx.metrics.observe_reconcile("MqttTransfer", started.elapsed(), result.as_ref().err().map(Error::reason));
    if result.is_ok() {
        ctx.succeeded(&key(&transfer));
    }
    result
}

fn error_policy(transfer: Arc<MqttTransfer>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = match error {
        Error::CleanupPending { retry, .. } => *retry,
        _ => ctx.backoff(&key(&transfer)),
    };
    warn!(transfer = %key(&transfer), reason = error.reason(), retry_in = ?delay, "{error}");
    Action::requeue(delay)
}

fn now() -> i64 {
    Timestamp::now().as_second()
}

fn time(second: i64) -> Option<Time> {
    Timestamp::from_second(second).ok().map(Time)
}

/// Status being computed.
struct Walk {
    status: MqttTransferStatus,
    tracker: Tracker,
}

impl Walk {
    fn new(t: &MqttTransfer) -> Self {
        let mut status = t.status.clone().unwrap_or_default();
        status.observed_generation = t.metadata.generation;
        let tracker = Tracker::new(std::mem::take(&mut status.conditions), t.metadata.generation, STEPS);
        Self { status, tracker }
    }
}

async fn apply(t: &MqttTransfer, api: &Api<MqttTransfer>, ctx: &Context) -> Result<Action, Error> {
    let mut walk = Walk::new(t);
    let (mut access, mut cause) = transfer_plan::access(t, now());
    // Expired is final, like Terminated: moving expiresAt afterwards grants nothing.
    if t.status.as_ref().and_then(|s| s.phase) == Some(TransferPhase::Expired) {
        (access, cause) = (Access::Revoked, Cause::Expired);
    }
    let asset = asset_of(t, ctx).await?.filter(|a| a.metadata.deletion_timestamp.is_none());
    // A pause never extends access: suspension, termination, expiry and the asset's loss are
    // enforced regardless; only granting (and renewing) waits.
    if walk.tracker.paused(is_paused(&t.metadata) && access == Access::Granted && asset.is_some()) {
        // Not reconciled: the generation is not observed.
        walk.status.observed_generation = t.status.as_ref().and_then(|s| s.observed_generation);
        write_status(t, api, ctx, walk).await?;
        let expiry = t.spec.expires_at.as_ref().map(|e| u64::try_from(e.0.as_second() - now()).unwrap_or(0).max(1));
        return Ok(expiry.map_or_else(Action::await_change, |s| Action::requeue(Duration::from_secs(s))));
    }
    if let Some(requested) = super::reconcile_requested(&t.metadata) {
        walk.status.last_handled_reconcile_at = Some(requested);
    }

    let result = match (access, &asset) {
        (Access::Revoked, _) => revoke(t, asset.as_ref(), ctx).await.map(|()| {
            let phase = match cause {
                Cause::Expired => TransferPhase::Expired,
                Cause::State(TransferState::Completed) => TransferPhase::Completed,
                Cause::State(_) => TransferPhase::Terminated,
            };
            revoked_status(&mut walk, phase);
            None
        }),
        (_, None) => revoke(t, None, ctx).await.map(|()| {
            revoked_status(&mut walk, TransferPhase::Failed);
            let e = Error::AssetNotFound { name: t.spec.asset_ref.name.clone() };
            walk.tracker.set(status::READY, Status::False, e.reason(), &e.to_string());
            None
        }),
        (Access::Granted, Some(asset)) => grant(t, asset, ctx, &mut walk).await.map(Some),
        (Access::Suspended, Some(asset)) => suspend(t, asset, ctx, &mut walk).await.map(|()| None),
    };
    // A spec that can no longer be planned (e.g. the asset's topics narrowed below the
    // transfer's) must not leave the old access in place.
    let had_access =
        t.status.as_ref().is_some_and(|s| s.identity.is_some() || s.broker.is_some() || s.secret.is_some());
    let result = match result {
        Err((None, e @ Error::Plan(_))) if had_access => match revoke(t, asset.as_ref(), ctx).await {
            Ok(()) => {
                revoked_status(&mut walk, TransferPhase::Failed);
                Err((None, e))
            }
            Err(revoke_error) => Err(revoke_error),
        },
        other => other,
    };
    if let Err((step, e)) = &result {
        walk.tracker.fail(*step, e);
        if walk.status.phase.is_none() {
            walk.status.phase = Some(TransferPhase::Pending);
        }
    }
    write_status(t, api, ctx, walk).await?;

    // When to look again: token renewal, expiry, resync — whichever comes first.
    let mut delay = ctx.resync_delay();
    let until = |second: i64| Duration::from_secs(u64::try_from(second - now()).unwrap_or(0).max(1));
    if let Ok(Some(renew_at)) = &result {
        delay = delay.min(until(*renew_at));
    }
    if access != Access::Revoked
        && let Some(expires) = &t.spec.expires_at
    {
        delay = delay.min(until(expires.0.as_second()));
    }
    let next = Action::requeue(delay);
    match result {
        Ok(_) if access == Access::Revoked => Ok(Action::await_change()),
        Ok(_) => Ok(next),
        Err((_, e)) if e.is_retryable() => Err(e),
        Err(_) => Ok(next),
    }
}

/// Status of a transfer whose access is removed.
fn revoked_status(walk: &mut Walk, phase: TransferPhase) {
    let s = &mut walk.status;
    s.phase = Some(phase);
    s.identity = None;
    s.secret = None;
    s.broker = None;
    s.data_address = None;
    s.credentials_secret_ref = None;
    s.token_expires_at = None;
    let message = match phase {
        TransferPhase::Expired => "spec.expiresAt has passed: access revoked for good, nothing of the transfer remains",
        TransferPhase::Completed => "completed: access revoked for good, nothing of the transfer remains",
        TransferPhase::Failed => "access revoked while the asset is missing",
        _ => "terminated: access revoked for good, nothing of the transfer remains",
    };
    for step in STEPS {
        walk.tracker.set(step.condition(), Status::True, "Revoked", message);
    }
    if phase != TransferPhase::Failed {
        walk.tracker.set(status::READY, Status::True, &format!("{phase:?}"), message);
    }
}

type StepResult<T> = Result<T, (Option<Step>, Error)>;

fn at(step: Step) -> impl FnOnce(BackendError) -> (Option<Step>, Error) {
    move |source| (Some(step), Error::Backend { step, source })
}

/// The converge step of a transfer with its asset's clients: what status recorded is the
/// starting point.
fn converge<'a>(ctx: &'a Context, t: &MqttTransfer, plan: &'a TransferPlan, clients: &Clients) -> Converge<'a> {
    let recorded = t.status.as_ref().map_or_else(Vec::new, |s| {
        objects::transfer_recorded(s, &plan.identity, |name, sub| clients.broker.session_names(name, sub))
    });
    Converge::new(ctx.reach(), &plan.owner, recorded)
}

/// The names of the transfer's broker sessions (`oauth2`).
fn sessions(t: &MqttTransfer, plan: &TransferPlan, clients: &Clients) -> Vec<String> {
    let sub = t.status.as_ref().and_then(|s| s.broker.as_ref()).and_then(|b| b.user.as_deref());
    match plan.mode {
        AuthMode::Oauth2 => clients.broker.session_names(&plan.identity, sub),
        AuthMode::Usrpw => Vec::new(),
    }
}

/// Resolves the asset's clients and plans the transfer.
fn planned(t: &MqttTransfer, asset: &MqttAsset, ctx: &Context) -> StepResult<(Clients, TransferPlan)> {
    let clients = super::asset::clients_for(ctx, &asset.spec).map_err(|e| (None, e))?;
    let topics = t.spec.topics.clone().unwrap_or_else(|| asset.spec.topics.clone());
    let token = match asset.spec.auth.mode {
        AuthMode::Oauth2 => Some(clients.broker.token_requirements(&topics).at(Step::Broker).map_err(|e| (None, e))?),
        AuthMode::Usrpw => None,
    };
    let plan = transfer_plan::plan(t, asset, &ctx.config, token.as_ref()).map_err(|e| (None, e.into()))?;
    Ok((clients, plan))
}

/// What status records of a plan's objects.
struct Refs {
    identity: Option<IdentityRefs>,
    secret: SecretRefs,
    broker: BrokerRefs,
}

fn refs(plan: &TransferPlan, clients: &super::asset::Clients, user: Option<String>) -> Refs {
    Refs {
        identity: plan.client.as_ref().map(|c| IdentityRefs {
            profile: plan.profiles.identity_provider.clone(),
            client_id: Some(c.client_id.clone()),
        }),
        secret: SecretRefs {
            profile: Some(plan.profiles.secret_store.clone()),
            folder: plan.secret.folder.clone(),
            alias: Some(plan.secret.alias.clone()),
            path: Some(clients.secrets.path(&plan.secret)),
        },
        broker: BrokerRefs {
            profile: Some(plan.profiles.broker.clone()),
            user,
            role: match plan.mode {
                AuthMode::Usrpw => clients.broker.role_of(&plan.identity),
                AuthMode::Oauth2 => None,
            },
        },
    }
}

async fn write_status(t: &MqttTransfer, api: &Api<MqttTransfer>, ctx: &Context, walk: Walk) -> Result<(), Error> {
    let Walk { mut status, tracker } = walk;
    let changes = tracker.finish(&mut status.conditions);
    if t.status.as_ref() != Some(&status) {
        super::patch_status(ctx, api, &t.metadata, t.status.as_ref(), &status).await?;
    }
    publish_changes(ctx, &t.object_ref(&()), changes).await;
    Ok(())
}
