//! Cutting access off: suspension (identity disabled, sessions closed, the Secret without
//! credentials), revocation (every object of the transfer removed, and its Secret), and deletion
//! (revocation under the cleanup-attempt budget, then the finalizer goes).

use kube::Resource;
use kube::api::Api;
use kube::runtime::controller::Action;

use super::{Refs, StepResult, Walk, at, converge, key, planned, refs, secret, sessions, write_status};
use crate::api::{AuthMode, MqttAsset, MqttTransfer, SecretReference, TransferPhase};
use crate::backends::broker::UserGrant;
use crate::backends::random_password;
use crate::controller::{Context, Error, Step, conclude_deletion, failed_step, removal_result};
use crate::converge::{Converge, Spec};
use crate::plan::objects::{self, ExternalRef, Kind, Section};
use crate::plan::transfer as transfer_plan;
use crate::status::{self, Status};

/// Suspends access: identity disabled, sessions closed, credentials out of the Secret.
pub(super) async fn suspend(t: &MqttTransfer, asset: &MqttAsset, ctx: &Context, walk: &mut Walk) -> StepResult<()> {
    let (clients, plan) = planned(t, asset, ctx)?;
    let owner = &plan.owner;
    let status = t.status.clone().unwrap_or_default();
    let mut step = converge(ctx, t, &plan, &clients);
    match (&plan.client, &clients.identity, &plan.profiles.identity_provider) {
        (Some(client), Some(_), Some(profile)) => {
            let mut disabled = client.clone();
            disabled.enabled = false;
            step.make(profile, Spec::IdentityClient(&disabled)).await.map_err(failed_step)?;
            walk.tracker.step_ok(Step::Identity, &format!("client {} is disabled: no new tokens", client.client_id));
            for name in sessions(t, &plan, &clients) {
                clients.broker.disconnect(&name).await.map_err(at(Step::Broker))?;
                step.want(ExternalRef::new(Kind::Sessions, &plan.profiles.broker, name));
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
            step.make(&plan.profiles.broker, Spec::BrokerUser(&grant)).await.map_err(failed_step)?;
            walk.tracker
                .step_ok(Step::Broker, &format!("user {} cannot connect; its sessions are closed", plan.identity));
        }
    }
    // Kept for resumption.
    step.want(ExternalRef::secret(&plan.profiles.secret_store, &plan.secret));
    walk.tracker.step_ok(Step::Secret, "kept for resumption");

    secret::write_suspended(ctx, t, &plan).await?;
    walk.tracker
        .step_ok(Step::Credentials, &format!("Secret {} holds no credentials while suspended", plan.secret_name));

    // An asset that moved takes its suspended transfers along (their old objects are removed).
    removal_result(ctx, &t.object_ref(&()), step.finish().await).await?;
    let user = status.broker.as_ref().and_then(|b| b.user.clone());
    let Refs { identity, secret, broker } = refs(&plan, &clients, user);
    let s = &mut walk.status;
    (s.identity, s.secret, s.broker) = (identity, Some(secret), Some(broker));
    s.phase = Some(TransferPhase::Suspended);
    s.data_address = Some(transfer_plan::data_address(&plan, None).into_iter().collect());
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

/// Everything a transfer may have anywhere: what status recorded, what the plan names when the
/// asset is known (a renamed profile that reaches the same backend still finds it, and a move
/// that had not finished leaves nothing behind), and a broker user of the transfer's name in
/// each of those brokers whatever the mode (the asset may have switched from `usrpw` to
/// `oauth2` since it was made). Absent objects cost one read.
fn everything(t: &MqttTransfer, asset: Option<&MqttAsset>, ctx: &Context) -> Vec<ExternalRef> {
    let identity = transfer_plan::identity(t);
    let status = t.status.clone().unwrap_or_default();
    let plan = asset.and_then(|a| transfer_plan::plan(t, a, &ctx.config, None).ok());
    // The broker's names for the sessions: the recorded broker's, else the plan's.
    let broker =
        [status.broker.as_ref().and_then(|b| b.profile.as_deref()), plan.as_ref().map(|p| p.profiles.broker.as_str())]
            .into_iter()
            .flatten()
            .find_map(|p| ctx.backends.brokers.get(p));
    let session_names = |name: &str, sub: Option<&str>| match broker {
        Some(b) => b.session_names(name, sub),
        None => vec![name.to_owned()],
    };
    let mut all = objects::transfer_recorded(&status, &identity, session_names);
    if let Some(plan) = &plan {
        let sub = status.broker.as_ref().and_then(|b| b.user.as_deref());
        let sessions = match plan.mode {
            AuthMode::Oauth2 => session_names(&identity, sub),
            AuthMode::Usrpw => Vec::new(),
        };
        objects::transfer_objects(plan, &sessions).into_iter().for_each(|r| objects::add(&mut all, r));
    }
    let brokers: Vec<String> =
        all.iter().filter(|r| r.kind.section() == Section::Brokers).filter_map(|r| r.profile.clone()).collect();
    for profile in brokers {
        objects::add(&mut all, ExternalRef::new(Kind::BrokerUser, profile, &identity));
    }
    all
}

/// Removes every object of the transfer (the converge step with nothing wanted), then its
/// Kubernetes Secret.
pub(super) async fn revoke(t: &MqttTransfer, asset: Option<&MqttAsset>, ctx: &Context) -> StepResult<()> {
    let owner = transfer_plan::owner(t, &ctx.config);
    let removal = Converge::new(ctx.reach(), &owner, everything(t, asset, ctx)).finish().await;
    removal_result(ctx, &t.object_ref(&()), removal).await?;
    secret::delete(ctx, t).await
}

/// Deletion: the converge step with nothing wanted (refusals within the cleanup-attempt
/// budget), then the Secret, then the finalizer goes.
pub(super) async fn cleanup(t: &MqttTransfer, api: &Api<MqttTransfer>, ctx: &Context) -> Result<Action, Error> {
    let asset = super::asset_of(t, ctx).await?;
    let owner = transfer_plan::owner(t, &ctx.config);
    let deletion = ctx.delete(&key(t), &owner, everything(t, asset.as_ref(), ctx), false).await;
    let action = conclude_deletion(ctx, &t.object_ref(&()), &key(t), deletion, |reason, message| {
        Box::pin(async move {
            let mut walk = Walk::new(t);
            walk.tracker.set(status::READY, Status::False, reason, &message);
            write_status(t, api, ctx, walk).await
        })
    })
    .await?;
    secret::delete(ctx, t).await.map_err(|(_, e)| e)?;
    Ok(action)
}
