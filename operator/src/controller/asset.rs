//! The `MqttAsset` controller.
//!
//! Apply: resolve profiles → plan → identity (identity-provider client, or the broker user's
//! password read from / generated into the secret store) → secret store → broker → connector
//! (asset, policies, contract definition) → remove objects a previous spec created and this one
//! no longer wants → status. Each step sets its own condition; `Ready` is `True` only when all
//! are. The first failing step stops the walk; later steps are `Unknown` / `Blocked`.
//!
//! Every make and remove goes through one converge step (`crate::converge`): the plan's objects
//! are made in order, then the objects status recorded that the plan no longer wants are removed.
//!
//! Cleanup is the same step with nothing wanted, for both the names recorded in status and the
//! names the current spec plans (`deletionPolicy: Retain` keeps everything; refusals are retried
//! within the cleanup-attempt budget, decision 16).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event, finalizer};
use kube::{Resource, ResourceExt};
use tracing::{Instrument, debug, warn};

use super::{
    AtStep, Context, Error, FINALIZER, Step, Tracker, conclude_deletion, failed_step, is_paused, publish_changes,
    removal_result,
};
use crate::api::{
    AuthMode, BrokerRefs, ConnectorRefs, DeletionPolicy, IdentityRefs, MqttAsset, MqttAssetStatus, SecretRefs,
};
use crate::backends::broker::{Broker, UserGrant};
use crate::backends::identity::IdentityProvider;
use crate::backends::secrets::SecretStore;
use crate::backends::{SecretString, random_password};
use crate::converge::{Converge, Spec};
use crate::plan::PlanError;
use crate::plan::asset::{self as asset_plan, AssetIdentity, AssetPlan};
use crate::plan::objects;
use crate::status::{self, RECONCILED, Status};

/// Runs the MqttAsset controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let api: Api<MqttAsset> = match &ctx.settings.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let controller =
        super::controller_of(api, &ctx, |a: &MqttAsset| serde_json::to_value(&a.status).unwrap_or_default());
    ctx.watch_cache("MqttAsset", controller.store(), |a: &MqttAsset| a.status.as_ref().map(|s| &s.conditions));
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(asset = %object, "reconciled"),
                Err(e) => debug!("MqttAsset controller: {e}"),
            }
        })
        .await;
}

fn key(asset: &MqttAsset) -> String {
    format!("MqttAsset/{}/{}", asset.namespace().unwrap_or_default(), asset.name_any())
}

async fn reconcile(asset: Arc<MqttAsset>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<MqttAsset> = Api::namespaced(ctx.client.clone(), &asset.namespace().unwrap_or_default());
    let started = std::time::Instant::now();
    if let Some(requested) = super::reconcile_requested(&asset.metadata)
        && asset.status.as_ref().and_then(|s| s.last_handled_reconcile_at.as_ref()) != Some(&requested)
    {
        // Asked for by a user: retry now, not after the backoff that piled up.
        ctx.succeeded(&key(&asset));
    }
    let span = super::reconcile_span("MqttAsset", &asset.metadata);
    let result = finalizer(&api, FINALIZER, asset.clone(), |event| async {
        match event {
            Event::Apply(asset) => apply(&asset, &api, &ctx).await,
            Event::Cleanup(asset) => cleanup(&asset, &api, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(Error::from_finalizer);
    ctx.metrics.observe_reconcile("MqttAsset", started.elapsed(), result.as_ref().err().map(Error::reason));
    if result.is_ok() {
        ctx.succeeded(&key(&asset));
    }
    result
}

fn error_policy(asset: Arc<MqttAsset>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = match error {
        Error::CleanupPending { retry, .. } => *retry,
        _ => ctx.backoff(&key(&asset)),
    };
    warn!(asset = %key(&asset), reason = error.reason(), retry_in = ?delay, "{error}");
    Action::requeue(delay)
}

/// The backends an asset's profiles point at.
pub(crate) struct Clients {
    pub(crate) identity: Option<Arc<dyn IdentityProvider>>,
    pub(crate) secrets: Arc<dyn SecretStore>,
    pub(crate) broker: Arc<dyn Broker>,
}

/// Resolves an asset spec's profiles and their clients.
pub(crate) fn clients_for(ctx: &Context, spec: &crate::api::MqttAssetSpec) -> Result<Clients, Error> {
    let profiles = asset_plan::resolve_profiles(spec, &ctx.config)?;
    Ok(clients(ctx, &profiles)?)
}

fn missing(field: &'static str, section: &'static str, name: &str, defined: Vec<String>) -> PlanError {
    PlanError::UnknownProfile { field, section, name: name.to_owned(), defined }
}

fn keys<T: ?Sized>(map: &BTreeMap<String, Arc<T>>) -> Vec<String> {
    map.keys().cloned().collect()
}

fn clients(ctx: &Context, profiles: &asset_plan::AssetProfiles) -> Result<Clients, PlanError> {
    let b = &ctx.backends;
    // The connector's client is the converge step's; a missing profile is a plan error here.
    b.connectors
        .get(&profiles.connector)
        .ok_or_else(|| missing("spec.connector", "connectors", &profiles.connector, keys(&b.connectors)))?;
    let secrets =
        b.secret_stores.get(&profiles.secret_store).cloned().ok_or_else(|| {
            missing("spec.secretStore", "secretStores", &profiles.secret_store, keys(&b.secret_stores))
        })?;
    let broker = b
        .brokers
        .get(&profiles.broker)
        .cloned()
        .ok_or_else(|| missing("spec.broker", "brokers", &profiles.broker, keys(&b.brokers)))?;
    let identity =
        match &profiles.identity_provider {
            Some(name) => Some(b.identity_providers.get(name).cloned().ok_or_else(|| {
                missing("spec.identityProvider", "identityProviders", name, keys(&b.identity_providers))
            })?),
            None => None,
        };
    Ok(Clients { identity, secrets, broker })
}

/// What the walk through the steps produced.
struct Walk {
    status: MqttAssetStatus,
    tracker: Tracker,
}

/// The asset's steps, in order.
const STEPS: &[Step] = &[Step::Identity, Step::Secret, Step::Broker, Step::Connector];

impl Walk {
    fn new(asset: &MqttAsset) -> Self {
        let mut status = asset.status.clone().unwrap_or_default();
        status.observed_generation = asset.metadata.generation;
        let tracker = Tracker::new(std::mem::take(&mut status.conditions), asset.metadata.generation, STEPS);
        Self { status, tracker }
    }

    fn set(&mut self, type_: &str, s: Status, reason: &str, message: &str) {
        self.tracker.set(type_, s, reason, message);
    }

    fn step_ok(&mut self, step: Step, message: &str) {
        self.tracker.step_ok(step, message);
    }

    fn fail(&mut self, failed: Option<Step>, error: &Error) {
        self.tracker.fail(failed, error);
    }
}

async fn apply(asset: &MqttAsset, api: &Api<MqttAsset>, ctx: &Context) -> Result<Action, Error> {
    let mut walk = Walk::new(asset);
    if walk.tracker.paused(is_paused(&asset.metadata)) {
        // Not reconciled: the generation is not observed.
        walk.status.observed_generation = asset.status.as_ref().and_then(|s| s.observed_generation);
        write_status(asset, api, ctx, walk).await?;
        return Ok(Action::await_change());
    }
    if let Some(requested) = super::reconcile_requested(&asset.metadata) {
        walk.status.last_handled_reconcile_at = Some(requested);
    }
    let result = provision(asset, ctx, &mut walk).await;
    if let Err((step, error)) = &result {
        walk.fail(*step, error);
    }
    write_status(asset, api, ctx, walk).await?;
    match result {
        Ok(()) => Ok(ctx.resync()),
        Err((_, e)) if e.is_retryable() => Err(e),
        // Retrying will not help: wait for a spec change (which triggers a reconcile) or resync.
        Err(_) => Ok(ctx.resync()),
    }
}

/// The steps; on failure, which step failed (None: before any).
async fn provision(asset: &MqttAsset, ctx: &Context, walk: &mut Walk) -> Result<(), (Option<Step>, Error)> {
    let profiles = asset_plan::resolve_profiles(&asset.spec, &ctx.config).map_err(|e| (None, e.into()))?;
    let clients = clients(ctx, &profiles).map_err(|e| (None, e.into()))?;
    let token = match asset.spec.auth.mode {
        AuthMode::Oauth2 => {
            Some(clients.broker.token_requirements(&asset.spec.topics).at(Step::Broker).map_err(|e| (None, e))?)
        }
        AuthMode::Usrpw => None,
    };
    let plan = asset_plan::plan(asset, &ctx.config, token.as_ref()).map_err(|e| (None, e.into()))?;
    let owner = &plan.owner;
    let recorded = asset.status.as_ref().map(objects::asset_recorded).unwrap_or_default();
    let mut step = Converge::new(ctx.reach(), owner, recorded);

    // Identity.
    let (secret, fresh_password) = match (&plan.identity, &clients.identity, &profiles.identity_provider) {
        (AssetIdentity::Oauth2 { client }, Some(idp), Some(profile)) => {
            step.make(profile, Spec::IdentityClient(client)).await.map_err(failed_step)?;
            let secret = idp
                .client_secret(&client.client_id, owner)
                .await
                .at(Step::Identity)
                .map_err(|e| (Some(Step::Identity), e))?;
            walk.step_ok(Step::Identity, &format!("client {} is in place", client.client_id));
            (secret, false)
        }
        (AssetIdentity::Usrpw { username, .. }, _, _) => {
            let stored = clients
                .secrets
                .read_secret(&plan.secret, owner)
                .await
                .at(Step::Identity)
                .map_err(|e| (Some(Step::Identity), e))?;
            walk.step_ok(Step::Identity, &format!("broker user {username} has its password"));
            match stored {
                Some(password) => (password, false),
                None => (random_password(), true),
            }
        }
        (AssetIdentity::PerTransfer, _, _) => {
            // The operator is this connector's data plane: each transfer gets its own identity,
            // and what an earlier mode made for the asset goes with the converge step's removal.
            let none = format!(
                "none of the asset's own: the operator is connector \"{}\"'s data plane, each transfer gets its own identity",
                plan.profiles.connector
            );
            for s in [Step::Identity, Step::Secret, Step::Broker] {
                walk.step_ok(s, &none);
            }
            return offer(ctx, asset, &clients, &plan, step, walk).await;
        }
        (AssetIdentity::Oauth2 { .. }, _, _) => unreachable!("resolve_profiles gives oauth2 an identity provider"),
    };

    // Secret store and broker. A fresh password (the store had none) goes to the broker first:
    // if that fails, the store still has none and the next attempt starts over, so the store
    // never holds a password the broker does not accept.
    if fresh_password {
        broker_step(&mut step, &clients, &plan, &secret, true, walk).await?;
        secret_step(&mut step, &clients, &plan, &secret, walk).await?;
    } else {
        secret_step(&mut step, &clients, &plan, &secret, walk).await?;
        broker_step(&mut step, &clients, &plan, &secret, false, walk).await?;
    }

    offer(ctx, asset, &clients, &plan, step, walk).await
}

/// The connector's objects, the removal of what is no longer wanted, and status.
async fn offer(
    ctx: &Context,
    asset: &MqttAsset,
    clients: &Clients,
    plan: &AssetPlan,
    mut step: Converge<'_>,
    walk: &mut Walk,
) -> Result<(), (Option<Step>, Error)> {
    let connector = &plan.profiles.connector;
    step.make(connector, Spec::ConnectorAsset(&plan.asset)).await.map_err(failed_step)?;
    for policy in &plan.policies {
        step.make(connector, Spec::Policy(policy)).await.map_err(failed_step)?;
    }
    step.make(connector, Spec::ContractDefinition(&plan.contract_definition)).await.map_err(failed_step)?;
    walk.step_ok(
        Step::Connector,
        &format!("asset {} is offered under contract definition {}", plan.asset.id, plan.contract_definition.id),
    );

    // What a previous spec created and this one no longer wants, dependants first.
    removal_result(ctx, &asset.object_ref(&()), step.finish().await).await?;

    let status = &mut walk.status;
    status.connector = Some(connector_refs(plan));
    status.identity = identity_refs(plan);
    status.secret = (plan.identity != AssetIdentity::PerTransfer).then(|| SecretRefs {
        profile: Some(plan.profiles.secret_store.clone()),
        folder: plan.secret.folder.clone(),
        alias: Some(plan.secret.alias.clone()),
        path: Some(clients.secrets.path(&plan.secret)),
    });
    status.broker = Some(broker_refs(plan, clients.broker.as_ref()));
    status.data_address = Some(plan.asset.data_address.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    walk.set(
        status::READY,
        Status::True,
        RECONCILED,
        &format!("offered as {} in connector \"{}\"", plan.asset.id, plan.profiles.connector),
    );
    Ok(())
}

fn connector_refs(plan: &AssetPlan) -> ConnectorRefs {
    ConnectorRefs {
        profile: Some(plan.profiles.connector.clone()),
        asset_id: Some(plan.asset.id.clone()),
        access_policy_id: Some(plan.contract_definition.access_policy_id.clone()),
        contract_policy_id: Some(plan.contract_definition.contract_policy_id.clone()),
        contract_definition_id: Some(plan.contract_definition.id.clone()),
    }
}

fn identity_refs(plan: &AssetPlan) -> Option<IdentityRefs> {
    match &plan.identity {
        AssetIdentity::Oauth2 { client } => Some(IdentityRefs {
            profile: plan.profiles.identity_provider.clone(),
            client_id: Some(client.client_id.clone()),
        }),
        AssetIdentity::Usrpw { .. } | AssetIdentity::PerTransfer => None,
    }
}

fn broker_refs(plan: &AssetPlan, broker: &dyn Broker) -> BrokerRefs {
    let profile = Some(plan.profiles.broker.clone());
    match &plan.identity {
        AssetIdentity::Usrpw { username, .. } => {
            BrokerRefs { profile, user: Some(username.clone()), role: broker.role_of(username) }
        }
        AssetIdentity::Oauth2 { .. } | AssetIdentity::PerTransfer => BrokerRefs { profile, user: None, role: None },
    }
}

/// Puts the identity's secret into the secret store.
async fn secret_step(
    step: &mut Converge<'_>,
    clients: &Clients,
    plan: &AssetPlan,
    secret: &SecretString,
    walk: &mut Walk,
) -> Result<(), (Option<Step>, Error)> {
    step.make(&plan.profiles.secret_store, Spec::Secret(&plan.secret, secret)).await.map_err(failed_step)?;
    walk.step_ok(Step::Secret, &format!("secret at {}", clients.secrets.path(&plan.secret)));
    Ok(())
}

/// Puts the broker user (usrpw) in place; with a fresh password, an existing user gets it too.
async fn broker_step(
    step: &mut Converge<'_>,
    clients: &Clients,
    plan: &AssetPlan,
    secret: &SecretString,
    fresh_password: bool,
    walk: &mut Walk,
) -> Result<(), (Option<Step>, Error)> {
    let broker_system = clients.broker.system();
    let owner = &plan.owner;
    match &plan.identity {
        AssetIdentity::Usrpw { username, topics } => {
            let grant = UserGrant {
                username: username.clone(),
                password: secret.clone(),
                topics: topics.clone(),
                enabled: true,
                owner: owner.clone(),
            };
            // A fresh password (the secret store had lost it) goes to an existing user too, so
            // that what the connector resolves works.
            let spec = if fresh_password { Spec::BrokerUserWithNewPassword(&grant) } else { Spec::BrokerUser(&grant) };
            step.make(&plan.profiles.broker, spec).await.map_err(failed_step)?;
            walk.step_ok(Step::Broker, &format!("user {username} may read {} topic filter(s)", topics.len()));
        }
        AssetIdentity::PerTransfer => {}
        AssetIdentity::Oauth2 { .. } => walk.step_ok(
            Step::Broker,
            &format!("{broker_system} accepts the identity provider's tokens; they carry the topic permissions"),
        ),
    }
    Ok(())
}

/// Writes status when it differs from what is stored, then publishes an Event per changed
/// condition.
async fn write_status(asset: &MqttAsset, api: &Api<MqttAsset>, ctx: &Context, walk: Walk) -> Result<(), Error> {
    let Walk { mut status, tracker } = walk;
    let changes = tracker.finish(&mut status.conditions);
    if asset.status.as_ref() != Some(&status) {
        super::patch_status(ctx, api, &asset.metadata, asset.status.as_ref(), &status).await?;
    }
    publish_changes(ctx, &asset.object_ref(&()), changes).await;
    Ok(())
}

/// Deletion: the converge step with nothing wanted, over what status recorded and what the
/// spec plans now (when it can be planned).
async fn cleanup(asset: &MqttAsset, api: &Api<MqttAsset>, ctx: &Context) -> Result<Action, Error> {
    let owner = asset_plan::owner(asset, &ctx.config);
    let mut recorded = asset.status.as_ref().map(objects::asset_recorded).unwrap_or_default();
    if let Some(plan) = asset_plan::resolve_profiles(&asset.spec, &ctx.config)
        .ok()
        .and_then(|_| asset_plan::plan(asset, &ctx.config, None).ok())
    {
        objects::asset_objects(&plan).into_iter().for_each(|r| objects::add(&mut recorded, r));
    }
    let retain = asset.spec.deletion_policy.unwrap_or_default() == DeletionPolicy::Retain;
    let deletion = ctx.delete(&key(asset), &owner, recorded, retain).await;
    conclude_deletion(ctx, &asset.object_ref(&()), &key(asset), deletion, |reason, message| {
        Box::pin(async move {
            let mut walk = Walk::new(asset);
            walk.set(status::READY, Status::False, reason, &message);
            write_status(asset, api, ctx, walk).await
        })
    })
    .await
}
