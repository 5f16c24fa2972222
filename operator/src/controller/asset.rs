//! The `MqttAsset` controller.
//!
//! Apply: resolve profiles → plan → identity (identity-provider client, or the broker user's
//! password read from / generated into the secret store) → secret store → broker → connector
//! (asset, policies, contract definition) → remove objects a previous spec created and this one
//! no longer wants → status. Each step sets its own condition; `Ready` is `True` only when all
//! are. The first failing step stops the walk; later steps are `Unknown` / `Blocked`.
//!
//! Cleanup (`deletionPolicy: Delete`): connector (contract definition, policies, asset) →
//! broker user → secret → identity client, for both the names recorded in status and the names
//! the current spec plans. Objects not carrying our marker are left alone (an Event says so).
//! A refusal that retrying cannot fix (an asset still referenced by a contract agreement) is
//! retried `cleanup_attempts` times, `cleanup_retry` apart, then the object is left in place, an
//! Event names it, and the finalizer is released. `Retain` releases the finalizer at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tracing::{Instrument, debug, info, warn};

use super::{
    AtStep, Context, Error, FINALIZER, LeftInPlace, Step, Tracker, is_paused, profile_client, publish_changes,
    publish_left_in_place, secret_object,
};
use crate::api::{
    AuthMode, BrokerRefs, ConnectorRefs, DeletionPolicy, IdentityRefs, MqttAsset, MqttAssetStatus, SecretRefs,
};
use crate::backends::broker::{Broker, UserGrant};
use crate::backends::connector::{Connector, OfferIds};
use crate::backends::identity::IdentityProvider;
use crate::backends::secrets::{SecretLocation, SecretStore};
use crate::backends::{BackendError, Outcome, SecretString, System, random_password};
use crate::plan::PlanError;
use crate::plan::asset::{self as asset_plan, AssetIdentity, AssetPlan};
use crate::status::{self, RECONCILED, Status};

/// Runs the MqttAsset controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let api: Api<MqttAsset> = match &ctx.settings.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let controller = Controller::new(api, watcher::Config::default()).with_config(ctx.controller_config());
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
    pub(crate) connector: Arc<dyn Connector>,
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
    let connector = b
        .connectors
        .get(&profiles.connector)
        .cloned()
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
    Ok(Clients { connector, identity, secrets, broker })
}

/// Counts a backend write for the metrics.
fn count(ctx: &Context, system: System, outcome: Outcome) {
    ctx.metrics.count_backend_write(system.as_str(), outcome);
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
    let broker_system = clients.broker.system();

    // Identity.
    let (secret, fresh_password) = match (&plan.identity, &clients.identity) {
        (AssetIdentity::Oauth2 { client }, Some(idp)) => {
            let outcome = idp.ensure_client(client).await.at(Step::Identity).map_err(|e| (Some(Step::Identity), e))?;
            count(ctx, System::Identity, outcome);
            let secret = idp
                .client_secret(&client.client_id, owner)
                .await
                .at(Step::Identity)
                .map_err(|e| (Some(Step::Identity), e))?;
            walk.step_ok(Step::Identity, &format!("client {} is in place", client.client_id));
            (secret, false)
        }
        (AssetIdentity::Usrpw { username, .. }, _) => {
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
        (AssetIdentity::Oauth2 { .. }, None) => unreachable!("resolve_profiles gives oauth2 an identity provider"),
    };

    // Secret store and broker. A fresh password (the store had none) goes to the broker first:
    // if that fails, the store still has none and the next attempt starts over, so the store
    // never holds a password the broker does not accept.
    if fresh_password {
        broker_step(ctx, &clients, &plan, &secret, true, walk).await?;
        secret_step(ctx, &clients, &plan, &secret, walk).await?;
    } else {
        secret_step(ctx, &clients, &plan, &secret, walk).await?;
        broker_step(ctx, &clients, &plan, &secret, false, walk).await?;
    }

    // Connector.
    let connector = async {
        let mut outcomes = vec![clients.connector.ensure_asset(&plan.asset).await?];
        for policy in &plan.policies {
            outcomes.push(clients.connector.ensure_policy(policy).await?);
        }
        outcomes.push(clients.connector.ensure_contract_definition(&plan.contract_definition).await?);
        Ok::<_, BackendError>(outcomes)
    };
    for outcome in connector.await.at(Step::Connector).map_err(|e| (Some(Step::Connector), e))? {
        count(ctx, System::Connector, outcome);
    }
    walk.step_ok(
        Step::Connector,
        &format!("asset {} is offered under contract definition {}", plan.asset.id, plan.contract_definition.id),
    );

    // What a previous spec created and this one no longer wants, newest dependants first.
    remove_stale(asset, &plan, &clients, ctx).await?;

    let status = &mut walk.status;
    status.connector = Some(connector_refs(&plan));
    status.identity = identity_refs(&plan);
    status.secret = Some(SecretRefs {
        profile: Some(plan.profiles.secret_store.clone()),
        folder: plan.secret.folder.clone(),
        alias: Some(plan.secret.alias.clone()),
        path: Some(clients.secrets.path(&plan.secret)),
    });
    status.broker = Some(broker_refs(&plan, broker_system));
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
        AssetIdentity::Usrpw { .. } => None,
    }
}

fn broker_refs(plan: &AssetPlan, system: System) -> BrokerRefs {
    match &plan.identity {
        AssetIdentity::Usrpw { username, .. } => BrokerRefs {
            profile: Some(plan.profiles.broker.clone()),
            user: Some(username.clone()),
            // Mosquitto grants through a role of the same name; the others attach ACLs to the user.
            role: (system == System::Mosquitto).then(|| username.clone()),
        },
        AssetIdentity::Oauth2 { .. } => {
            BrokerRefs { profile: Some(plan.profiles.broker.clone()), user: None, role: None }
        }
    }
}

fn step_of(system: System) -> Step {
    match system {
        System::Connector => Step::Connector,
        System::Identity => Step::Identity,
        System::SecretStore => Step::Secret,
        System::Mosquitto | System::Rabbitmq | System::Emqx => Step::Broker,
    }
}

fn offer_ids(refs: &ConnectorRefs) -> Option<OfferIds> {
    let mut policy_ids: Vec<String> =
        [&refs.access_policy_id, &refs.contract_policy_id].into_iter().flatten().cloned().collect();
    policy_ids.dedup();
    Some(OfferIds {
        contract_definition_id: refs.contract_definition_id.clone()?,
        policy_ids,
        asset_id: refs.asset_id.clone()?,
    })
}

/// Deletes what the recorded status names and the plan no longer does. Another profile that
/// reaches the same backend is no move: the object of the same name is the one just made.
async fn remove_stale(
    asset: &MqttAsset,
    plan: &AssetPlan,
    clients: &Clients,
    ctx: &Context,
) -> Result<(), (Option<Step>, Error)> {
    let reference = asset.object_ref(&());
    let mut left = LeftInPlace::default();
    let result = remove_stale_objects(asset, plan, clients, ctx, &reference, &mut left).await;
    // Named even when a later step fails: an Event does not depend on the retry.
    publish_left_in_place(ctx, &reference, &left).await;
    result
}

async fn remove_stale_objects(
    asset: &MqttAsset,
    plan: &AssetPlan,
    clients: &Clients,
    ctx: &Context,
    reference: &ObjectReference,
    left: &mut LeftInPlace,
) -> Result<(), (Option<Step>, Error)> {
    let Some(old) = asset.status.clone() else { return Ok(()) };
    let owner = &plan.owner;

    if let Some(old_refs) = old.connector.as_ref()
        && let Some(old_ids) = offer_ids(old_refs)
    {
        // The same connector under another profile name counts as the same.
        let same_profile =
            old_refs.profile.as_deref().is_some_and(|p| ctx.config.same_connector(p, &plan.profiles.connector));
        let new_ids = plan.offer_ids();
        let connector = if same_profile {
            Some(clients.connector.clone())
        } else {
            profile_client(
                &ctx.backends.connectors,
                old_refs.profile.as_deref(),
                "connectors",
                &offer_object(&old_ids),
                left,
            )
        };
        if let Some(connector) = connector {
            let result = async {
                if !same_profile || old_ids.contract_definition_id != new_ids.contract_definition_id {
                    count(
                        ctx,
                        System::Connector,
                        connector.delete_contract_definition(&old_ids.contract_definition_id, owner).await?,
                    );
                }
                for id in old_ids.policy_ids.iter().filter(|id| !same_profile || !new_ids.policy_ids.contains(id)) {
                    count(ctx, System::Connector, connector.delete_policy(id, owner).await?);
                }
                if !same_profile || old_ids.asset_id != new_ids.asset_id {
                    count(ctx, System::Connector, connector.delete_asset(&old_ids.asset_id, owner).await?);
                }
                Ok(())
            };
            stale_result(reference, result.await, Step::Connector)?;
        }
    }

    if let Some(old_refs) = old.broker.as_ref()
        && let Some(user) = old_refs.user.as_deref()
    {
        let new = broker_refs(plan, clients.broker.system());
        let same_broker = old_refs.profile.as_deref().is_some_and(|p| ctx.config.same_broker(p, &plan.profiles.broker));
        if (new.user.as_deref() != Some(user) || !same_broker)
            && let Some(broker) = profile_client(
                &ctx.backends.brokers,
                old_refs.profile.as_deref(),
                "brokers",
                &format!("broker user {user}"),
                left,
            )
        {
            let result = broker.remove_user(user, owner).await.map(|o| count(ctx, broker.system(), o));
            stale_result(reference, result, Step::Broker)?;
        }
    }

    if let Some(old_refs) = old.secret.as_ref()
        && let Some(alias) = old_refs.alias.clone()
    {
        let old_at = SecretLocation { folder: old_refs.folder.clone(), alias };
        let same_store =
            old_refs.profile.as_deref().is_some_and(|p| ctx.config.same_secret_store(p, &plan.profiles.secret_store));
        if (old_at != plan.secret || !same_store)
            && let Some(store) = profile_client(
                &ctx.backends.secret_stores,
                old_refs.profile.as_deref(),
                "secretStores",
                &secret_object(old_refs.path.as_deref(), &old_at),
                left,
            )
        {
            let result = store.delete_secret(&old_at, owner).await.map(|o| count(ctx, System::SecretStore, o));
            stale_result(reference, result, Step::Secret)?;
        }
    }

    if let Some(old_refs) = old.identity.as_ref()
        && let Some(client_id) = old_refs.client_id.as_deref()
        && !identity_refs(plan).is_some_and(|new| {
            new.client_id.as_deref() == Some(client_id)
                && matches!((old_refs.profile.as_deref(), new.profile.as_deref()),
                    (Some(a), Some(b)) if ctx.config.same_identity_provider(a, b))
        })
        && let Some(idp) = profile_client(
            &ctx.backends.identity_providers,
            old_refs.profile.as_deref(),
            "identityProviders",
            &format!("identity client {client_id}"),
            left,
        )
    {
        let result = idp.delete_client(client_id, owner).await.map(|o| count(ctx, System::Identity, o));
        stale_result(reference, result, Step::Identity)?;
    }
    Ok(())
}

/// How an Event names an offer in the connector.
fn offer_object(ids: &OfferIds) -> String {
    format!(
        "connector asset {}, policy definitions {}, contract definition {}",
        ids.asset_id,
        ids.policy_ids.join(" "),
        ids.contract_definition_id
    )
}

/// A stale object that turns out not to be ours is left alone; other failures stop the walk.
fn stale_result(
    reference: &ObjectReference,
    result: Result<(), BackendError>,
    step: Step,
) -> Result<(), (Option<Step>, Error)> {
    match result {
        Ok(()) => Ok(()),
        Err(e @ BackendError::Foreign { .. }) => {
            warn!(object = ?reference.name, "{e}");
            Ok(())
        }
        Err(source) => Err((Some(step), Error::Backend { step, source })),
    }
}

/// Puts the identity's secret into the secret store.
async fn secret_step(
    ctx: &Context,
    clients: &Clients,
    plan: &AssetPlan,
    secret: &SecretString,
    walk: &mut Walk,
) -> Result<(), (Option<Step>, Error)> {
    let outcome = clients
        .secrets
        .ensure_secret(&plan.secret, secret, &plan.owner)
        .await
        .at(Step::Secret)
        .map_err(|e| (Some(Step::Secret), e))?;
    count(ctx, System::SecretStore, outcome);
    walk.step_ok(Step::Secret, &format!("secret at {}", clients.secrets.path(&plan.secret)));
    Ok(())
}

/// Puts the broker user (usrpw) in place; with a fresh password, an existing user gets it too.
async fn broker_step(
    ctx: &Context,
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
            let outcome =
                clients.broker.ensure_user(&grant).await.at(Step::Broker).map_err(|e| (Some(Step::Broker), e))?;
            count(ctx, broker_system, outcome);
            if fresh_password && outcome != Outcome::Created {
                // The secret store had lost the password of an existing user: the user gets the
                // new one, so that what the connector resolves works.
                let outcome = clients
                    .broker
                    .set_password(username, secret, owner)
                    .await
                    .at(Step::Broker)
                    .map_err(|e| (Some(Step::Broker), e))?;
                count(ctx, broker_system, outcome);
            }
            walk.step_ok(Step::Broker, &format!("user {username} may read {} topic filter(s)", topics.len()));
        }
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
        let mut updated = asset.clone();
        updated.status = Some(status);
        api.replace_status(&asset.name_any(), &PostParams::default(), &updated).await.map_err(Error::Kube)?;
    }
    publish_changes(ctx, &asset.object_ref(&()), changes).await;
    Ok(())
}

/// Deletion.
async fn cleanup(asset: &MqttAsset, api: &Api<MqttAsset>, ctx: &Context) -> Result<Action, Error> {
    let reference = asset.object_ref(&());
    if asset.spec.deletion_policy.unwrap_or_default() == DeletionPolicy::Retain {
        info!(asset = %key(asset), "deletionPolicy Retain: leaving every external object in place");
        ctx.publish(
            &reference,
            KubeEvent {
                type_: EventType::Normal,
                reason: "Retained".into(),
                note: Some(
                    "deletionPolicy is Retain: connector, identity, secret and broker objects are left in place".into(),
                ),
                action: "Delete".into(),
                secondary: None,
            },
        )
        .await;
        return Ok(Action::await_change());
    }

    if let Some(wait) = ctx.cleanup_wait(&key(asset)) {
        return Err(Error::CleanupPending { retry: wait, attempts: 0 });
    }
    let owner = asset_plan::owner(asset, &ctx.config);
    let old = asset.status.clone().unwrap_or_default();
    // What the spec plans now (when it can be planned) and what status recorded.
    let plan = asset_plan::resolve_profiles(&asset.spec, &ctx.config)
        .ok()
        .and_then(|_| asset_plan::plan(asset, &ctx.config, None).ok());

    let mut refused: Vec<(String, BackendError)> = Vec::new();
    let mut foreign: Vec<String> = Vec::new();
    // Left where a profile recorded in status is gone. A retried walk names them again: status
    // keeps its records until the finalizer goes.
    let mut left = LeftInPlace::default();
    let mut handle = |system: System, what: String, result: Result<Outcome, BackendError>| -> Result<(), Error> {
        match result {
            Ok(outcome) => {
                count(ctx, system, outcome);
                Ok(())
            }
            Err(e @ BackendError::Foreign { .. }) => {
                foreign.push(format!("{what}: {e}"));
                Ok(())
            }
            Err(e) if e.is_retryable() => Err(Error::Backend { step: step_of(system), source: e }),
            Err(e) => {
                refused.push((what, e));
                Ok(())
            }
        }
    };

    // Connector: contract definitions first, then policies, then assets.
    let mut offers: Vec<(Option<String>, OfferIds)> = Vec::new();
    if let Some(refs) = &old.connector
        && let Some(ids) = offer_ids(refs)
    {
        offers.push((refs.profile.clone(), ids));
    }
    if let Some(plan) = &plan {
        let entry = (Some(plan.profiles.connector.clone()), plan.offer_ids());
        if !offers.contains(&entry) {
            offers.push(entry);
        }
    }
    for (profile, ids) in &offers {
        let Some(connector) =
            profile_client(&ctx.backends.connectors, profile.as_deref(), "connectors", &offer_object(ids), &mut left)
        else {
            continue;
        };
        let cd = connector.delete_contract_definition(&ids.contract_definition_id, &owner).await;
        handle(System::Connector, format!("contract definition {}", ids.contract_definition_id), cd)?;
        for id in &ids.policy_ids {
            let r = connector.delete_policy(id, &owner).await;
            handle(System::Connector, format!("policy definition {id}"), r)?;
        }
        let r = connector.delete_asset(&ids.asset_id, &owner).await;
        handle(System::Connector, format!("asset {}", ids.asset_id), r)?;
    }

    // Broker users.
    let mut users: Vec<(Option<String>, String)> = Vec::new();
    if let Some(BrokerRefs { profile, user: Some(user), .. }) = &old.broker {
        users.push((profile.clone(), user.clone()));
    }
    if let Some(plan) = &plan
        && let AssetIdentity::Usrpw { username, .. } = &plan.identity
    {
        let entry = (Some(plan.profiles.broker.clone()), username.clone());
        if !users.contains(&entry) {
            users.push(entry);
        }
    }
    for (profile, user) in &users {
        let what = format!("broker user {user}");
        let Some(broker) = profile_client(&ctx.backends.brokers, profile.as_deref(), "brokers", &what, &mut left)
        else {
            continue;
        };
        let r = broker.remove_user(user, &owner).await;
        handle(broker.system(), format!("broker user {user}"), r)?;
    }

    // Secrets.
    let mut secrets: Vec<(Option<String>, SecretLocation, Option<String>)> = Vec::new();
    if let Some(SecretRefs { profile, folder, alias: Some(alias), path }) = &old.secret {
        secrets.push((profile.clone(), SecretLocation { folder: folder.clone(), alias: alias.clone() }, path.clone()));
    }
    if let Some(plan) = &plan {
        let profile = Some(plan.profiles.secret_store.clone());
        if !secrets.iter().any(|(p, at, _)| *p == profile && *at == plan.secret) {
            secrets.push((profile, plan.secret.clone(), None));
        }
    }
    for (profile, at, path) in &secrets {
        let what = secret_object(path.as_deref(), at);
        let Some(store) =
            profile_client(&ctx.backends.secret_stores, profile.as_deref(), "secretStores", &what, &mut left)
        else {
            continue;
        };
        let r = store.delete_secret(at, &owner).await;
        handle(System::SecretStore, format!("secret {}", store.path(at)), r)?;
    }

    // Identity clients.
    let mut identities: Vec<(Option<String>, String)> = Vec::new();
    if let Some(IdentityRefs { profile, client_id: Some(id) }) = &old.identity {
        identities.push((profile.clone(), id.clone()));
    }
    if let Some(plan) = &plan
        && let AssetIdentity::Oauth2 { client } = &plan.identity
    {
        let entry = (plan.profiles.identity_provider.clone(), client.client_id.clone());
        if !identities.contains(&entry) {
            identities.push(entry);
        }
    }
    for (profile, id) in &identities {
        let what = format!("identity client {id}");
        let Some(idp) =
            profile_client(&ctx.backends.identity_providers, profile.as_deref(), "identityProviders", &what, &mut left)
        else {
            continue;
        };
        let r = idp.delete_client(id, &owner).await;
        handle(System::Identity, format!("identity client {id}"), r)?;
    }

    publish_left_in_place(ctx, &reference, &left).await;
    for f in &foreign {
        ctx.publish(
            &reference,
            KubeEvent {
                type_: EventType::Warning,
                reason: "Foreign".into(),
                note: Some(status::bounded(&format!("left in place, not ours: {f}"))),
                action: "Delete".into(),
                secondary: None,
            },
        )
        .await;
    }
    if refused.is_empty() {
        info!(asset = %key(asset), "external objects removed");
        return Ok(Action::await_change());
    }

    // Attempts are counted in memory: writing them to status would trigger the next attempt at
    // once instead of after `cleanup_retry` (a restart starts the count again; still bounded).
    let attempts = ctx.cleanup_attempt(&key(asset));
    let summary = refused.iter().map(|(what, e)| format!("{what}: {e}")).collect::<Vec<_>>().join("; ");
    let reason = refused[0].1.reason();
    if attempts >= ctx.settings.cleanup_attempts {
        warn!(asset = %key(asset), attempts, "giving up on cleanup of refused objects: {summary}");
        ctx.forget_cleanup(&key(asset));
        ctx.publish(
            &reference,
            KubeEvent {
                type_: EventType::Warning,
                reason: "CleanupAbandoned".into(),
                note: Some(status::bounded(&format!(
                    "left in place after {attempts} attempt(s), remove by hand if needed: {summary}"
                ))),
                action: "Delete".into(),
                secondary: None,
            },
        )
        .await;
        return Ok(Action::await_change());
    }
    let mut walk = Walk::new(asset);
    walk.set(
        status::READY,
        Status::False,
        reason,
        &format!(
            "deletion refused: {summary}; tried {} times, {:?} apart, then these objects are left in place",
            ctx.settings.cleanup_attempts, ctx.settings.cleanup_retry
        ),
    );
    write_status(asset, api, ctx, walk).await?;
    ctx.publish(
        &reference,
        KubeEvent {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(status::bounded(&format!("deletion attempt {attempts}: {summary}"))),
            action: "Delete".into(),
            secondary: None,
        },
    )
    .await;
    // The finalizer helper releases the finalizer on Ok: keep it with an error whose retry
    // delay is the cleanup interval (not the exponential backoff).
    Err(Error::CleanupPending { retry: ctx.settings.cleanup_retry, attempts })
}
