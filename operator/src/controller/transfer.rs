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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tracing::{Instrument, debug, info, warn};

use super::{
    AtStep, Context, Error, FINALIZER, LeftInPlace, Step, Tracker, is_paused, profile_client, publish_changes,
    publish_left_in_place, secret_object,
};
use crate::api::{
    AuthMode, BrokerRefs, IdentityRefs, MqttAsset, MqttTransfer, MqttTransferStatus, SecretReference, SecretRefs,
    TransferPhase, TransferState,
};
use crate::backends::broker::UserGrant;
use crate::backends::identity::ClientDefinition;
use crate::backends::secrets::SecretLocation;
use crate::backends::{BackendError, ExposeSecret, Outcome, SecretString, System, random_password};
use crate::plan::transfer::{self as transfer_plan, Access, Cause, Credentials, TransferPlan};
use crate::refresh;
use crate::status::{self, Status};

/// The transfer's steps, in order.
const STEPS: &[Step] = &[Step::Identity, Step::Secret, Step::Broker, Step::Credentials];

/// Label on the Secrets the operator writes.
pub const SECRET_LABEL: &str = "dsp-mqtt.io/transfer";

/// Annotation on a Secret holding a token: a digest of what the token was issued to carry
/// (audience, claims, lifetime), so that a token is kept only while it still grants what the
/// transfer asks for. Not secret: it is a hash of the client's non-secret definition.
pub const TOKEN_GRANT_ANNOTATION: &str = "dsp-mqtt.io/token-grant";

/// Runs the MqttTransfer controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let (transfers, assets): (Api<MqttTransfer>, Api<MqttAsset>) = match &ctx.settings.namespace {
        Some(ns) => (Api::namespaced(ctx.client.clone(), ns), Api::namespaced(ctx.client.clone(), ns)),
        None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
    };
    let controller = Controller::new(transfers, watcher::Config::default()).with_config(ctx.controller_config());
    let store = controller.store();
    ctx.watch_cache("MqttTransfer", store.clone(), |t: &MqttTransfer| t.status.as_ref().map(|s| &s.conditions));
    controller
        // An asset that appears, changes or goes concerns the transfers that name it.
        .watches(assets, watcher::Config::default(), move |asset: MqttAsset| {
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
            Event::Cleanup(t) => cleanup(&t, &ctx).await,
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
    let assets: Api<MqttAsset> = Api::namespaced(ctx.client.clone(), &t.namespace().unwrap_or_default());
    let asset = assets.get_opt(&t.spec.asset_ref.name).await.map_err(Error::Kube)?;
    let asset = asset.filter(|a| a.metadata.deletion_timestamp.is_none());
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

/// Grants access; returns when the token should be renewed (epoch seconds), if there is one.
async fn grant(t: &MqttTransfer, asset: &MqttAsset, ctx: &Context, walk: &mut Walk) -> StepResult<i64> {
    let clients = super::asset::clients_for(ctx, &asset.spec).map_err(|e| (None, e))?;
    let topics = t.spec.topics.clone().unwrap_or_else(|| asset.spec.topics.clone());
    let token = match asset.spec.auth.mode {
        AuthMode::Oauth2 => Some(clients.broker.token_requirements(&topics).at(Step::Broker).map_err(|e| (None, e))?),
        AuthMode::Usrpw => None,
    };
    let plan = transfer_plan::plan(t, asset, &ctx.config, token.as_ref()).map_err(|e| (None, e.into()))?;
    let owner = &plan.owner;
    let broker_system = clients.broker.system();
    let resuming = t.status.as_ref().and_then(|s| s.phase) == Some(TransferPhase::Suspended);
    // Each object is recorded before it is first made, when nothing is recorded yet: should a
    // later step fail and the asset then go, the record is what lets revocation find it.
    // Revoking what was never made costs a read.
    let refs = refs(&plan, &clients, None);

    // Identity.
    let (secret, fresh) = match (&plan.client, &clients.identity) {
        (Some(client), Some(idp)) => {
            if walk.status.identity.is_none() {
                walk.status.identity = refs.identity.clone();
            }
            count(ctx, System::Identity, idp.ensure_client(client).await.map_err(at(Step::Identity))?);
            let secret = idp.client_secret(&client.client_id, owner).await.map_err(at(Step::Identity))?;
            walk.tracker.step_ok(Step::Identity, &format!("client {} is enabled", client.client_id));
            (secret, false)
        }
        _ => {
            let stored = clients.secrets.read_secret(&plan.secret, owner).await.map_err(at(Step::Identity))?;
            walk.tracker.step_ok(Step::Identity, &format!("broker user {} has its password", plan.identity));
            match stored {
                // Resuming after a suspension: fresh credentials.
                Some(password) if !resuming => (password, false),
                _ => (random_password(), true),
            }
        }
    };

    // Secret store.
    walk.status.secret.get_or_insert_with(|| refs.secret.clone());
    count(
        ctx,
        System::SecretStore,
        clients.secrets.ensure_secret(&plan.secret, &secret, owner).await.map_err(at(Step::Secret))?,
    );
    walk.tracker.step_ok(Step::Secret, &format!("secret at {}", clients.secrets.path(&plan.secret)));

    // Broker.
    walk.status.broker.get_or_insert_with(|| refs.broker.clone());
    if plan.mode == AuthMode::Usrpw {
        let grant = UserGrant {
            username: plan.identity.clone(),
            password: secret.clone(),
            topics: plan.topics.clone(),
            enabled: true,
            owner: owner.clone(),
        };
        let outcome = clients.broker.ensure_user(&grant).await.map_err(at(Step::Broker))?;
        count(ctx, broker_system, outcome);
        if fresh && outcome != Outcome::Created {
            count(
                ctx,
                broker_system,
                clients.broker.set_password(&plan.identity, &secret, owner).await.map_err(at(Step::Broker))?,
            );
        }
        walk.tracker.step_ok(
            Step::Broker,
            &format!("user {} may read {} topic filter(s), nothing else", plan.identity, plan.topics.len()),
        );
    } else {
        walk.tracker.step_ok(
            Step::Broker,
            &format!("{broker_system} admits the client's tokens for {} topic filter(s), read-only", plan.topics.len()),
        );
    }

    // Credentials and the Secret.
    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &owner.namespace);
    let existing =
        secrets_api.get_opt(&plan.secret_name).await.map_err(|e| (Some(Step::Credentials), Error::Kube(e)))?;
    if let Some(existing) = &existing {
        check_ours(existing, t).map_err(|e| (Some(Step::Credentials), e))?;
    }
    let status = t.status.clone().unwrap_or_default();
    let grant = plan.client.as_ref().map(token_grant);
    let (mut credentials, expires_at, broker_user) = match plan.mode {
        AuthMode::Usrpw => (Credentials::Password { password: secret.clone() }, None, Some(plan.identity.clone())),
        AuthMode::Oauth2 => {
            let lifetime = i64::from(plan.client.as_ref().and_then(|c| c.access_token_lifespan_seconds).unwrap_or(300));
            let reusable = (!resuming)
                .then(|| reusable_token(existing.as_ref(), &status, lifetime, grant.as_deref(), jitter_seed(t)))
                .flatten();
            match reusable {
                Some(reused) => reused,
                None => {
                    let idp = clients.identity.as_ref().expect("oauth2 has an identity provider");
                    let tokens = idp.issue_token(&plan.identity, &secret).await.map_err(at(Step::Credentials))?;
                    let sub = jwt_subject(&tokens.access_token);
                    let expires_at = now() + i64::try_from(tokens.expires_in).unwrap_or(i64::MAX / 2);
                    (
                        Credentials::Token {
                            access_token: tokens.access_token,
                            refresh_token: None,
                            expires_in: tokens.expires_in,
                            expires_at,
                        },
                        Some(expires_at),
                        sub,
                    )
                }
            }
        }
    };
    // The operator's refresh token: kept while the Secret's rotation state stands (the consumer
    // may have rotated it through the endpoint since), made afresh with fresh credentials.
    let rotation = refresh_rotation(&plan, existing.as_ref(), resuming);
    if let (Credentials::Token { refresh_token, .. }, RotationWrite::Keep(token) | RotationWrite::Set(token, _)) =
        (&mut credentials, &rotation)
    {
        *refresh_token = Some(token.clone());
    }
    let full = transfer_plan::data_address(&plan, Some(&credentials));
    let grant = match plan.mode {
        AuthMode::Oauth2 => grant.as_deref(),
        AuthMode::Usrpw => None,
    };
    let data = transfer_plan::secret_data(&full);
    write_secret(&secrets_api, t, &plan.secret_name, &data, grant, &rotation, existing.as_ref())
        .await
        .map_err(|e| (Some(Step::Credentials), e))?;
    walk.tracker.step_ok(Step::Credentials, &format!("Secret {} holds the DataAddress", plan.secret_name));
    remove_stale(t, &plan, ctx).await?;

    let s = &mut walk.status;
    s.phase = Some(TransferPhase::Active);
    let user = broker_user.or_else(|| status.broker.as_ref().and_then(|b| b.user.clone()));
    let Refs { identity, secret, broker } = self::refs(&plan, &clients, user);
    (s.identity, s.secret, s.broker) = (identity, Some(secret), Some(broker));
    s.data_address = Some(transfer_plan::data_address(&plan, None).into_iter().collect());
    s.credentials_secret_ref = Some(SecretReference { name: plan.secret_name.clone() });
    s.token_expires_at = expires_at.and_then(time);
    ctx.metrics.set_token_expiry(&owner.namespace, &owner.name, expires_at);
    walk.tracker.set(
        status::READY,
        Status::True,
        status::RECONCILED,
        &format!("the consumer may read {} via Secret {}", plan.topics.join(", "), plan.secret_name),
    );

    let lifetime = match &credentials {
        Credentials::Token { expires_in, .. } => i64::try_from(*expires_in).unwrap_or(i64::MAX / 4),
        Credentials::Password { .. } => return Ok(i64::MAX),
    };
    Ok(renew_at(expires_at.unwrap_or(i64::MAX), lifetime, jitter_seed(t)))
}

/// When a token that expires at `expires_at` and lived `lifetime` seconds is renewed: at about
/// two thirds of its life, shifted by up to ±5 % of the lifetime (stable per transfer, so that
/// transfers created together do not renew together and a reconcile agrees with the last one).
pub fn renew_at(expires_at: i64, lifetime: i64, seed: u64) -> i64 {
    let jitter = ((seed % 1001) as f64 / 1000.0 - 0.5) * 0.1 * lifetime as f64;
    expires_at.saturating_sub(lifetime / 3).saturating_add(jitter as i64)
}

fn jitter_seed(t: &MqttTransfer) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.metadata.uid.hash(&mut h);
    h.finish()
}

/// What a token of `client` carries, as a digest: audience, claims (the topic permissions) and
/// lifetime. A change of any of them makes the token in the Secret stale.
pub fn token_grant(client: &ClientDefinition) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(client.audience.as_deref().unwrap_or_default().as_bytes());
    field(client.access_token_lifespan_seconds.map(|s| s.to_string()).unwrap_or_default().as_bytes());
    for claim in &client.claims {
        field(claim.name.as_bytes());
        field(claim.value.to_string().as_bytes());
    }
    format!("sha256:{:x}", h.finalize())
}

/// The token in the Secret when it is still worth keeping (an operator restart or resync must
/// not re-issue what is valid): issued for the same grant, with the same lifetime, not yet due
/// for renewal.
fn reusable_token(
    existing: Option<&Secret>,
    status: &MqttTransferStatus,
    lifetime: i64,
    grant: Option<&str>,
    seed: u64,
) -> Option<(Credentials, Option<i64>, Option<String>)> {
    let existing = existing?;
    let issued_for = existing.metadata.annotations.as_ref().and_then(|a| a.get(TOKEN_GRANT_ANNOTATION));
    if issued_for.map(String::as_str) != grant {
        return None;
    }
    let data = existing.data.as_ref()?;
    let text = |k: &str| data.get(k).and_then(|v| String::from_utf8(v.0.clone()).ok());
    let access_token = text("authorization")?;
    let expires_at = status.token_expires_at.as_ref()?.0.as_second();
    let expires_in: u64 = text("expiresIn")?.parse().ok()?;
    if i64::try_from(expires_in).ok()? != lifetime || now() >= renew_at(expires_at, lifetime, seed) {
        return None;
    }
    let sub = status.broker.as_ref().and_then(|b| b.user.clone());
    Some((
        Credentials::Token {
            access_token: SecretString::from(access_token),
            refresh_token: None,
            expires_in,
            expires_at,
        },
        Some(expires_at),
        sub,
    ))
}

/// What happens to the refresh-token rotation state on the transfer's Secret.
enum RotationWrite {
    /// The Secret's refresh token and digests stay (the token is the Secret's copy).
    Keep(SecretString),
    /// A new refresh token: its digest replaces every earlier one.
    Set(SecretString, String),
    /// No refresh token (no endpoint configured, `usrpw`, or access cut off).
    Remove,
}

/// The refresh token of an `oauth2` transfer when the refresh endpoint is configured: the one
/// in the Secret while its rotation state is there (the consumer may have rotated to a newer
/// one through the endpoint: only digests are stored, and a fresh token would lock it out),
/// else a new one; resuming after a suspension always makes a new one.
fn refresh_rotation(plan: &TransferPlan, existing: Option<&Secret>, resuming: bool) -> RotationWrite {
    if plan.mode != AuthMode::Oauth2 || plan.refresh_endpoint.is_none() {
        return RotationWrite::Remove;
    }
    let kept = existing.filter(|_| !resuming).and_then(|s| {
        let state = s.metadata.annotations.as_ref()?.get(refresh::ROTATION_ANNOTATION)?;
        refresh::Rotation::parse(state)?;
        let token = String::from_utf8(s.data.as_ref()?.get("refreshToken")?.0.clone()).ok()?;
        refresh::locate(&SecretString::from(token.clone()))?;
        Some(SecretString::from(token))
    });
    match kept {
        Some(token) => RotationWrite::Keep(token),
        None => {
            let (token, digest) = refresh::mint(&plan.owner.namespace, &plan.owner.name);
            RotationWrite::Set(token, refresh::Rotation::new(digest).render())
        }
    }
}

/// The `sub` of a JWT (no verification: it is the identity provider's token we just received,
/// read only to know the name the broker sees).
fn jwt_subject(token: &SecretString) -> Option<String> {
    let payload = token.expose_secret().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("sub")?.as_str().map(str::to_owned)
}

/// Suspends access: identity disabled, sessions closed, credentials out of the Secret.
async fn suspend(t: &MqttTransfer, asset: &MqttAsset, ctx: &Context, walk: &mut Walk) -> StepResult<()> {
    let clients = super::asset::clients_for(ctx, &asset.spec).map_err(|e| (None, e))?;
    let topics = t.spec.topics.clone().unwrap_or_else(|| asset.spec.topics.clone());
    let token = match asset.spec.auth.mode {
        AuthMode::Oauth2 => Some(clients.broker.token_requirements(&topics).at(Step::Broker).map_err(|e| (None, e))?),
        AuthMode::Usrpw => None,
    };
    let plan = transfer_plan::plan(t, asset, &ctx.config, token.as_ref()).map_err(|e| (None, e.into()))?;
    let owner = &plan.owner;
    let broker_system = clients.broker.system();
    let status = t.status.clone().unwrap_or_default();
    match (&plan.client, &clients.identity) {
        (Some(client), Some(idp)) => {
            let mut disabled = client.clone();
            disabled.enabled = false;
            count(ctx, System::Identity, idp.ensure_client(&disabled).await.map_err(at(Step::Identity))?);
            walk.tracker.step_ok(Step::Identity, &format!("client {} is disabled: no new tokens", client.client_id));
            for user in session_users(&plan.identity, &status) {
                clients.broker.disconnect(&user).await.map_err(at(Step::Broker))?;
            }
            walk.tracker.step_ok(Step::Broker, "live sessions closed");
        }
        _ => {
            let password = match clients.secrets.read_secret(&plan.secret, owner).await.map_err(at(Step::Identity))? {
                Some(p) => p,
                None => random_password(),
            };
            walk.tracker.step_ok(Step::Identity, &format!("broker user {} is suspended", plan.identity));
            let grant = UserGrant {
                username: plan.identity.clone(),
                password,
                topics: plan.topics.clone(),
                enabled: false,
                owner: owner.clone(),
            };
            count(ctx, broker_system, clients.broker.ensure_user(&grant).await.map_err(at(Step::Broker))?);
            walk.tracker
                .step_ok(Step::Broker, &format!("user {} cannot connect; its sessions are closed", plan.identity));
        }
    }
    walk.tracker.step_ok(Step::Secret, "kept for resumption");

    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &owner.namespace);
    let existing =
        secrets_api.get_opt(&plan.secret_name).await.map_err(|e| (Some(Step::Credentials), Error::Kube(e)))?;
    if let Some(existing) = &existing {
        check_ours(existing, t).map_err(|e| (Some(Step::Credentials), e))?;
    }
    let without = transfer_plan::data_address(&plan, None);
    let data = transfer_plan::secret_data(&without);
    write_secret(&secrets_api, t, &plan.secret_name, &data, None, &RotationWrite::Remove, existing.as_ref())
        .await
        .map_err(|e| (Some(Step::Credentials), e))?;
    walk.tracker
        .step_ok(Step::Credentials, &format!("Secret {} holds no credentials while suspended", plan.secret_name));

    // An asset that moved takes its suspended transfers along (their old objects are disabled).
    remove_stale(t, &plan, ctx).await?;
    let user = status.broker.as_ref().and_then(|b| b.user.clone());
    let Refs { identity, secret, broker } = refs(&plan, &clients, user);
    let s = &mut walk.status;
    (s.identity, s.secret, s.broker) = (identity, Some(secret), Some(broker));
    s.phase = Some(TransferPhase::Suspended);
    s.data_address = Some(without.into_iter().collect());
    s.credentials_secret_ref = Some(SecretReference { name: plan.secret_name.clone() });
    s.token_expires_at = None;
    ctx.metrics.set_token_expiry(&owner.namespace, &owner.name, None);
    walk.tracker.set(
        status::READY,
        Status::True,
        "Suspended",
        "suspended: the consumer is cut off until spec.state is Started again",
    );
    Ok(())
}

/// Removes every object of the transfer: broker user (or its sessions), identity client,
/// secret, and the Kubernetes Secret. Names come from status and, when the asset is known, from
/// the plan.
async fn revoke(t: &MqttTransfer, asset: Option<&MqttAsset>, ctx: &Context) -> StepResult<()> {
    let mut left = LeftInPlace::default();
    let result = revoke_objects(t, asset, ctx, &mut left).await;
    // Named even when a later step fails: an Event does not depend on the retry.
    publish_left_in_place(ctx, &t.object_ref(&()), &left).await;
    result
}

async fn revoke_objects(
    t: &MqttTransfer,
    asset: Option<&MqttAsset>,
    ctx: &Context,
    left: &mut LeftInPlace,
) -> StepResult<()> {
    let status = t.status.clone().unwrap_or_default();
    let owner = transfer_plan::owner(t, &ctx.config);
    let plan: Option<TransferPlan> = asset.and_then(|a| transfer_plan::plan(t, a, &ctx.config, None).ok());
    let mode = plan.as_ref().map(|p| p.mode).or(if status.identity.is_some() { Some(AuthMode::Oauth2) } else { None });

    // Each object is looked for under the profile status recorded and, when the plan names
    // another, under the plan's too: a renamed profile that reaches the same backend still finds
    // it, and a move that had not finished leaves nothing behind (absent objects cost one read).

    // Broker: remove the user (usrpw) — which also closes its sessions — or close the sessions
    // of the token's subject (oauth2). Whatever the mode now, a broker user of this transfer's
    // name goes (the asset may have switched from usrpw to oauth2 since it was made).
    let identity = transfer_plan::identity(t);
    let mut brokers = Vec::new();
    add_once(&mut brokers, status.broker.as_ref().and_then(|b| b.profile.clone()));
    add_once(&mut brokers, plan.as_ref().map(|p| p.profiles.broker.clone()));
    for profile in &brokers {
        let what = format!("broker user {identity}");
        let Some(broker) = profile_client(&ctx.backends.brokers, Some(profile), "brokers", &what, left) else {
            continue;
        };
        let outcome = tolerate_foreign(broker.remove_user(&identity, &owner).await).map_err(at(Step::Broker))?;
        count(ctx, broker.system(), outcome);
        if mode == Some(AuthMode::Oauth2) {
            for user in session_users(&identity, &status) {
                tolerate_foreign(broker.disconnect(&user).await.map(|_| Outcome::Unchanged))
                    .map_err(at(Step::Broker))?;
            }
        }
    }

    // Identity-provider client.
    let mut clients = Vec::new();
    add_once(&mut clients, status.identity.as_ref().and_then(|i| Some((i.profile.clone()?, i.client_id.clone()?))));
    add_once(
        &mut clients,
        plan.as_ref().and_then(|p| Some((p.profiles.identity_provider.clone()?, p.client.as_ref()?.client_id.clone()))),
    );
    for (profile, client_id) in &clients {
        let what = format!("identity client {client_id}");
        if let Some(idp) =
            profile_client(&ctx.backends.identity_providers, Some(profile), "identityProviders", &what, left)
        {
            let outcome = tolerate_foreign(idp.delete_client(client_id, &owner).await).map_err(at(Step::Identity))?;
            count(ctx, System::Identity, outcome);
        }
    }

    // Secret store.
    let mut stored = Vec::new();
    add_once(
        &mut stored,
        status.secret.as_ref().and_then(|s| {
            let at = SecretLocation { folder: s.folder.clone(), alias: s.alias.clone()? };
            Some((s.profile.clone()?, secret_object(s.path.as_deref(), &at), at))
        }),
    );
    if let Some(p) = &plan
        && !stored.iter().any(|(profile, _, at)| *profile == p.profiles.secret_store && *at == p.secret)
    {
        stored.push((p.profiles.secret_store.clone(), secret_object(None, &p.secret), p.secret.clone()));
    }
    for (profile, what, at_location) in &stored {
        if let Some(store) = profile_client(&ctx.backends.secret_stores, Some(profile), "secretStores", what, left) {
            let outcome = tolerate_foreign(store.delete_secret(at_location, &owner).await).map_err(at(Step::Secret))?;
            count(ctx, System::SecretStore, outcome);
        }
    }

    // The Kubernetes Secret (only ours).
    let name = status
        .credentials_secret_ref
        .as_ref()
        .map(|r| r.name.clone())
        .unwrap_or_else(|| t.spec.secret_name.clone().unwrap_or_else(|| t.name_any()));
    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &owner.namespace);
    let existing = match secrets_api.get_opt(&name).await {
        // Not allowed to read Secrets here: a namespace the configuration does not serve (the
        // chart grants Secret access only where it does), so the operator never wrote one. A
        // Secret from when it was served has the transfer as owner and goes with it.
        Err(kube::Error::Api(s)) if s.code == 403 => {
            debug!(namespace = %owner.namespace, "no Secret access in this namespace: no DataAddress Secret of ours there");
            None
        }
        other => other.map_err(|e| (Some(Step::Credentials), Error::Kube(e)))?,
    };
    if let Some(existing) = existing
        && check_ours(&existing, t).is_ok()
    {
        match secrets_api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err((Some(Step::Credentials), Error::Kube(e))),
        }
    }
    ctx.metrics.set_token_expiry(&owner.namespace, &owner.name, None);
    Ok(())
}

/// Adds an entry unless it is absent or already there.
fn add_once<T: PartialEq>(list: &mut Vec<T>, entry: Option<T>) {
    if let Some(entry) = entry
        && !list.contains(&entry)
    {
        list.push(entry);
    }
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
            role: (clients.broker.system() == System::Mosquitto && plan.mode == AuthMode::Usrpw)
                .then(|| plan.identity.clone()),
        },
    }
}

/// The objects an earlier grant recorded that the plan no longer names (the asset moved to
/// another broker, identity provider, secret store or folder, or changed mode), removed once the
/// new ones are in place and before status forgets them (decision 15). Another profile that
/// reaches the same backend is no move: the object of the same name is the one just made. A
/// profile that is no longer configured is skipped with a `ProfileRemoved` Warning Event: its
/// objects stay.
async fn remove_stale(t: &MqttTransfer, plan: &TransferPlan, ctx: &Context) -> StepResult<()> {
    let mut left = LeftInPlace::default();
    let result = remove_stale_objects(t, plan, ctx, &mut left).await;
    // Named even when a later step fails: an Event does not depend on the retry.
    publish_left_in_place(ctx, &t.object_ref(&()), &left).await;
    result
}

async fn remove_stale_objects(
    t: &MqttTransfer,
    plan: &TransferPlan,
    ctx: &Context,
    left: &mut LeftInPlace,
) -> StepResult<()> {
    let Some(old) = t.status.as_ref() else { return Ok(()) };
    let owner = &plan.owner;

    // Broker: the user in the broker it moved from, or in this one when `usrpw` became `oauth2`.
    if let Some(old_profile) = old.broker.as_ref().and_then(|b| b.profile.as_deref()) {
        let moved = !ctx.config.same_broker(old_profile, &plan.profiles.broker);
        let was_usrpw = old.identity.is_none();
        if (moved || (was_usrpw && plan.mode == AuthMode::Oauth2))
            && let Some(broker) = profile_client(
                &ctx.backends.brokers,
                Some(old_profile),
                "brokers",
                &format!("broker user {}", plan.identity),
                left,
            )
        {
            let outcome =
                tolerate_foreign(broker.remove_user(&plan.identity, owner).await).map_err(at(Step::Broker))?;
            count(ctx, broker.system(), outcome);
            if moved && !was_usrpw {
                for user in session_users(&plan.identity, old) {
                    tolerate_foreign(broker.disconnect(&user).await.map(|_| Outcome::Unchanged))
                        .map_err(at(Step::Broker))?;
                }
            }
        }
    }

    // Identity-provider client: another provider, or none now (`oauth2` became `usrpw`).
    if let Some(old_identity) = old.identity.as_ref()
        && let (Some(old_profile), Some(old_client)) =
            (old_identity.profile.as_deref(), old_identity.client_id.as_deref())
    {
        let kept = plan.client.as_ref().is_some_and(|c| {
            c.client_id == old_client
                && plan
                    .profiles
                    .identity_provider
                    .as_deref()
                    .is_some_and(|p| ctx.config.same_identity_provider(old_profile, p))
        });
        if !kept
            && let Some(idp) = profile_client(
                &ctx.backends.identity_providers,
                Some(old_profile),
                "identityProviders",
                &format!("identity client {old_client}"),
                left,
            )
        {
            let outcome = tolerate_foreign(idp.delete_client(old_client, owner).await).map_err(at(Step::Identity))?;
            count(ctx, System::Identity, outcome);
        }
    }

    // Secret store: another store, folder or alias.
    if let Some(old_secret) = old.secret.as_ref()
        && let (Some(old_profile), Some(alias)) = (old_secret.profile.as_deref(), old_secret.alias.as_deref())
    {
        let location = SecretLocation { folder: old_secret.folder.clone(), alias: alias.to_owned() };
        if (location != plan.secret || !ctx.config.same_secret_store(old_profile, &plan.profiles.secret_store))
            && let Some(store) = profile_client(
                &ctx.backends.secret_stores,
                Some(old_profile),
                "secretStores",
                &secret_object(old_secret.path.as_deref(), &location),
                left,
            )
        {
            let outcome = tolerate_foreign(store.delete_secret(&location, owner).await).map_err(at(Step::Secret))?;
            count(ctx, System::SecretStore, outcome);
        }
    }
    Ok(())
}

/// The names a transfer's `oauth2` sessions may carry at the broker: the MQTT username the
/// DataAddress gives (RabbitMQ lists connections under it) and the token's subject (brokers that
/// take the identity from the token).
fn session_users(identity: &str, status: &MqttTransferStatus) -> Vec<String> {
    let mut users = vec![identity.to_owned()];
    if let Some(sub) = status.broker.as_ref().and_then(|b| b.user.clone())
        && sub != identity
    {
        users.push(sub);
    }
    users
}

/// An object that turns out not to be ours is left alone.
fn tolerate_foreign(result: Result<Outcome, BackendError>) -> Result<Outcome, BackendError> {
    match result {
        Err(BackendError::Foreign { .. }) => Ok(Outcome::Unchanged),
        other => other,
    }
}

fn count(ctx: &Context, system: System, outcome: Outcome) {
    ctx.metrics.count_backend_write(system.as_str(), outcome);
}

/// Whether the Secret is this transfer's (a controller owner reference with its uid).
fn check_ours(secret: &Secret, t: &MqttTransfer) -> Result<(), Error> {
    let uid = t.metadata.uid.as_deref().unwrap_or_default();
    let ours = secret.metadata.owner_references.iter().flatten().any(|r| r.uid == uid && r.controller == Some(true));
    if ours { Ok(()) } else { Err(Error::SecretNameTaken { name: secret.name_any() }) }
}

/// Creates or updates the Secret when its content differs.
async fn write_secret(
    api: &Api<Secret>,
    t: &MqttTransfer,
    name: &str,
    data: &BTreeMap<String, String>,
    grant: Option<&str>,
    rotation: &RotationWrite,
    existing: Option<&Secret>,
) -> Result<Outcome, Error> {
    let data: BTreeMap<String, ByteString> =
        data.iter().map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec()))).collect();
    let labels = BTreeMap::from([
        ("app.kubernetes.io/managed-by".to_owned(), "mqtt-dsp-operator".to_owned()),
        (SECRET_LABEL.to_owned(), t.name_any()),
    ]);
    // Others' annotations stay; ours says which grant the token was issued for.
    let mut annotations = existing.and_then(|e| e.metadata.annotations.clone()).unwrap_or_default();
    match grant {
        Some(grant) => annotations.insert(TOKEN_GRANT_ANNOTATION.to_owned(), grant.to_owned()),
        None => annotations.remove(TOKEN_GRANT_ANNOTATION),
    };
    match rotation {
        RotationWrite::Keep(_) => {}
        RotationWrite::Set(_, state) => {
            drop(annotations.insert(refresh::ROTATION_ANNOTATION.to_owned(), state.clone()))
        }
        RotationWrite::Remove => drop(annotations.remove(refresh::ROTATION_ANNOTATION)),
    }
    let annotations = (!annotations.is_empty()).then_some(annotations);
    match existing {
        Some(existing)
            if existing.data.as_ref() == Some(&data)
                && existing.metadata.labels.as_ref() == Some(&labels)
                && existing.metadata.annotations.as_ref().filter(|a| !a.is_empty()) == annotations.as_ref() =>
        {
            Ok(Outcome::Unchanged)
        }
        Some(existing) => {
            let mut updated = existing.clone();
            updated.data = Some(data);
            updated.string_data = None;
            updated.metadata.labels = Some(labels);
            updated.metadata.annotations = annotations;
            api.replace(name, &PostParams::default(), &updated).await.map_err(Error::Kube)?;
            Ok(Outcome::Updated)
        }
        None => {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    labels: Some(labels),
                    annotations,
                    owner_references: t.controller_owner_ref(&()).map(|r| vec![r]),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(data),
                ..Default::default()
            };
            api.create(&PostParams::default(), &secret).await.map_err(Error::Kube)?;
            Ok(Outcome::Created)
        }
    }
}

async fn write_status(t: &MqttTransfer, api: &Api<MqttTransfer>, ctx: &Context, walk: Walk) -> Result<(), Error> {
    let Walk { mut status, tracker } = walk;
    let changes = tracker.finish(&mut status.conditions);
    if t.status.as_ref() != Some(&status) {
        let mut updated = t.clone();
        updated.status = Some(status);
        api.replace_status(&t.name_any(), &PostParams::default(), &updated).await.map_err(Error::Kube)?;
    }
    publish_changes(ctx, &t.object_ref(&()), changes).await;
    Ok(())
}

/// Deletion: revoke everything, then let the finalizer go.
async fn cleanup(t: &MqttTransfer, ctx: &Context) -> Result<Action, Error> {
    if let Some(wait) = ctx.cleanup_wait(&key(t)) {
        return Err(Error::CleanupPending { retry: wait, attempts: 0 });
    }
    let assets: Api<MqttAsset> = Api::namespaced(ctx.client.clone(), &t.namespace().unwrap_or_default());
    let asset = assets.get_opt(&t.spec.asset_ref.name).await.map_err(Error::Kube)?;
    match revoke(t, asset.as_ref(), ctx).await {
        Ok(()) => {
            ctx.forget_cleanup(&key(t));
            info!(transfer = %key(t), "access revoked, objects removed");
            Ok(Action::await_change())
        }
        Err((_, e)) if e.is_retryable() => Err(e),
        Err((_, e)) => {
            // A refusal is tried `cleanup_attempts` times, `cleanup_retry` apart (as for assets),
            // then given up: retrying for ever would keep the resource for ever.
            let attempts = ctx.cleanup_attempt(&key(t));
            if attempts < ctx.settings.cleanup_attempts {
                warn!(transfer = %key(t), attempts, "deletion refused, trying again: {e}");
                return Err(Error::CleanupPending { retry: ctx.settings.cleanup_retry, attempts });
            }
            ctx.forget_cleanup(&key(t));
            ctx.publish(
                &t.object_ref(&()),
                KubeEvent {
                    type_: EventType::Warning,
                    reason: "CleanupAbandoned".into(),
                    note: Some(status::bounded(&format!("{e}; check the backend for what is left"))),
                    action: "Delete".into(),
                    secondary: None,
                },
            )
            .await;
            Ok(Action::await_change())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_grant_changes_with_what_the_token_carries_and_only_then() {
        use crate::backends::Owner;
        use crate::backends::identity::HardcodedClaim;
        let client = ClientDefinition {
            client_id: "c".into(),
            description: "d".into(),
            enabled: true,
            access_token_lifespan_seconds: Some(120),
            refresh_tokens_for_client_credentials: true,
            audience: Some("rabbitmq".into()),
            claims: vec![HardcodedClaim { name: "extra_scope".into(), value: serde_json::json!(["rabbitmq.read:a"]) }],
            owner: Owner {
                installation: "test".into(),
                kind: "MqttTransfer".into(),
                namespace: "ns".into(),
                name: "t".into(),
            },
        };
        let grant = token_grant(&client);
        assert!(grant.starts_with("sha256:") && grant.len() == 7 + 64, "{grant}");
        let mut same = client.clone();
        same.description = "another description".into();
        same.enabled = false;
        assert_eq!(token_grant(&same), grant, "what the token does not carry does not count");
        let changes: [fn(&mut ClientDefinition); 4] = [
            |c| c.claims[0].value = serde_json::json!(["rabbitmq.read:a", "rabbitmq.read:b"]),
            |c| c.audience = Some("other".into()),
            |c| c.access_token_lifespan_seconds = Some(60),
            |c| c.claims[0].name = "scope".into(),
        ];
        for change in changes {
            let mut changed = client.clone();
            change(&mut changed);
            assert_ne!(token_grant(&changed), grant, "{changed:?}");
        }
    }

    #[test]
    fn renewal_is_at_two_thirds_with_bounded_jitter() {
        let (expires, lifetime) = (10_000, 300);
        for seed in [0, 500, 1000, 12345, u64::MAX] {
            let at = renew_at(expires, lifetime, seed);
            // Two thirds of the way: 100 s before expiry, ±15 s.
            assert!((expires - 115..=expires - 85).contains(&at), "{at}");
        }
        assert_eq!(renew_at(expires, lifetime, 7), renew_at(expires, lifetime, 7), "stable per transfer");
    }

    #[test]
    fn jwt_subject_reads_the_payload() {
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"service-account-1","exp":1}"#);
        let token = SecretString::from(format!("eyJhbGciOiJSUzI1NiJ9.{payload}.sig"));
        assert_eq!(jwt_subject(&token).as_deref(), Some("service-account-1"));
        assert_eq!(jwt_subject(&SecretString::from("not-a-jwt")), None);
    }
}
