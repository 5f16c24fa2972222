//! Granting access: the transfer's identity (a client, or a broker user with its password), its
//! secret, broker access to its topics, then the credentials in its Secret, then the removal of
//! what an earlier plan made and this one no longer wants, then status.

use kube::Resource;

use super::{Refs, StepResult, Walk, at, converge, planned, refs, secret, sessions, time};
use crate::api::{AuthMode, MqttAsset, MqttTransfer, SecretReference, TransferPhase};
use crate::backends::broker::UserGrant;
use crate::backends::{SecretString, random_password};
use crate::controller::asset::Clients;
use crate::controller::{Context, Step, failed_step, removal_result};
use crate::converge::{Converge, Spec};
use crate::plan::objects::{ExternalRef, Kind};
use crate::plan::transfer::{self as transfer_plan, Credentials, TransferPlan};
use crate::status::{self, Status};

/// Grants access; returns when the token should be renewed (epoch seconds), if there is one.
pub(super) async fn grant(t: &MqttTransfer, asset: &MqttAsset, ctx: &Context, walk: &mut Walk) -> StepResult<i64> {
    let (clients, plan) = planned(t, asset, ctx)?;
    let owner = &plan.owner;
    let resuming = t.status.as_ref().and_then(|s| s.phase) == Some(TransferPhase::Suspended);
    let keeps_password = t
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::api::KEEP_PASSWORD_ON_RESUME_ANNOTATION))
        .is_some_and(|v| v == "true");
    let mut step = converge(ctx, t, &plan, &clients);
    // Each object is recorded before it is first made, when nothing is recorded yet: should a
    // later step fail and the asset then go, the record is what lets revocation find it.
    // Revoking what was never made costs a read.
    let refs = refs(&plan, &clients, None);
    // Status records nothing yet: the transfer was never granted, so its objects are created
    // without reading first (a crash before the first status write is what the creating
    // calls' fallbacks are for: they find the object and repair it).
    let untouched = t.status.as_ref().is_none_or(|s| s.identity.is_none() && s.secret.is_none() && s.broker.is_none());

    // Identity.
    let (secret, fresh) = match (&plan.client, &clients.identity, &plan.profiles.identity_provider) {
        (Some(client), Some(idp), Some(profile)) => {
            if walk.status.identity.is_none() {
                walk.status.identity = refs.identity.clone();
            }
            step.make(profile, Spec::IdentityClient(client)).await.map_err(failed_step)?;
            let secret = idp.client_secret(&client.client_id, owner).await.map_err(at(Step::Identity))?;
            walk.tracker.step_ok(Step::Identity, &format!("client {} is enabled", client.client_id));
            (secret, false)
        }
        _ => {
            // Nothing recorded: nothing stored either, so no read.
            let stored = if untouched {
                None
            } else {
                clients.secrets.read_secret(&plan.secret, owner).await.map_err(at(Step::Identity))?
            };
            walk.tracker.step_ok(Step::Identity, &format!("broker user {} has its password", plan.identity));
            match stored {
                // Resuming after a suspension: fresh credentials, unless the transfer asks to
                // keep its password.
                Some(password) if !resuming || keeps_password => (password, false),
                _ => (random_password(), true),
            }
        }
    };

    // Secret store and broker. A fresh password goes to the broker first: should the walk stop
    // after the store has it (a lost answer, a crash), the next one would read it back as not
    // fresh and never give it to the broker, leaving a Secret the broker refuses. This way the
    // store never holds a password the broker does not accept (as for assets).
    walk.status.secret.get_or_insert_with(|| refs.secret.clone());
    walk.status.broker.get_or_insert_with(|| refs.broker.clone());
    let new = if untouched {
        New::Untouched
    } else if fresh {
        New::Password
    } else {
        New::Nothing
    };
    if fresh {
        broker_step(&mut step, &clients, &plan, &secret, new, walk).await?;
        secret_step(&mut step, &clients, &plan, &secret, untouched, walk).await?;
    } else {
        secret_step(&mut step, &clients, &plan, &secret, untouched, walk).await?;
        broker_step(&mut step, &clients, &plan, &secret, new, walk).await?;
    }
    for name in sessions(t, &plan, &clients) {
        step.want(ExternalRef::new(Kind::Sessions, &plan.profiles.broker, name));
    }

    // Credentials and the Secret.
    let written =
        secret::write_credentials(ctx, t, &plan, clients.identity.as_deref(), &secret, resuming, untouched).await?;
    walk.tracker.step_ok(Step::Credentials, &format!("Secret {} holds the DataAddress", plan.secret_name));
    removal_result(ctx, &t.object_ref(&()), step.finish().await).await?;

    let s = &mut walk.status;
    s.phase = Some(TransferPhase::Active);
    let status = t.status.clone().unwrap_or_default();
    let user = written.broker_user.or_else(|| status.broker.as_ref().and_then(|b| b.user.clone()));
    let Refs { identity, secret, broker } = self::refs(&plan, &clients, user);
    (s.identity, s.secret, s.broker) = (identity, Some(secret), Some(broker));
    s.data_address = Some(transfer_plan::data_address(&plan, None).into_iter().collect());
    s.credentials_secret_ref = Some(SecretReference { name: plan.secret_name.clone() });
    s.token_expires_at = written.expires_at.and_then(time);
    ctx.metrics.set_token_expiry(&owner.namespace, &owner.name, written.expires_at);
    walk.tracker.set(
        status::READY,
        Status::True,
        status::RECONCILED,
        &format!("the consumer may read {} via Secret {}", plan.topics.join(", "), plan.secret_name),
    );

    let lifetime = match &written.credentials {
        Credentials::Token { expires_in, .. } => i64::try_from(*expires_in).unwrap_or(i64::MAX / 4),
        Credentials::Password { .. } => return Ok(i64::MAX),
    };
    Ok(secret::renew_at(written.expires_at.unwrap_or(i64::MAX), lifetime, secret::jitter_seed(t)))
}

/// What is new at the broker.
#[derive(Clone, Copy)]
enum New {
    /// Nothing: the user has its password.
    Nothing,
    /// The password (resuming, or the store had none).
    Password,
    /// Everything: status records nothing of the transfer.
    Untouched,
}

/// Puts the transfer's secret into the secret store.
async fn secret_step(
    step: &mut Converge<'_>,
    clients: &Clients,
    plan: &TransferPlan,
    secret: &SecretString,
    untouched: bool,
    walk: &mut Walk,
) -> StepResult<()> {
    let spec = if untouched { Spec::NewSecret(&plan.secret, secret) } else { Spec::Secret(&plan.secret, secret) };
    step.make(&plan.profiles.secret_store, spec).await.map_err(failed_step)?;
    walk.tracker.step_ok(Step::Secret, &format!("secret at {}", clients.secrets.path(&plan.secret)));
    Ok(())
}

/// Gives the broker user (`usrpw`) its topics and, when fresh, the password; `oauth2` needs
/// nothing at the broker.
async fn broker_step(
    step: &mut Converge<'_>,
    clients: &Clients,
    plan: &TransferPlan,
    secret: &SecretString,
    new: New,
    walk: &mut Walk,
) -> StepResult<()> {
    let broker_system = clients.broker.system();
    if plan.mode == AuthMode::Oauth2 {
        walk.tracker.step_ok(
            Step::Broker,
            &format!("{broker_system} admits the client's tokens for {} topic filter(s), read-only", plan.topics.len()),
        );
        return Ok(());
    }
    let grant = UserGrant {
        username: plan.identity.clone(),
        password: secret.clone(),
        topics: plan.topics.clone(),
        enabled: true,
        owner: plan.owner.clone(),
    };
    let spec = match new {
        New::Nothing => Spec::BrokerUser(&grant),
        New::Password => Spec::BrokerUserWithNewPassword(&grant),
        New::Untouched => Spec::NewBrokerUser(&grant),
    };
    step.make(&plan.profiles.broker, spec).await.map_err(failed_step)?;
    walk.tracker.step_ok(
        Step::Broker,
        &format!("user {} may read {} topic filter(s), nothing else", plan.identity, plan.topics.len()),
    );
    Ok(())
}
