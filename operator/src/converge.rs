//! One converge step for external objects.
//!
//! The controllers' common idea, once: for the objects a plan wants and the objects status
//! recorded, each under its profile — make or repair the wanted ones, in the plan's order, then
//! remove the recorded ones no longer wanted, dependants first, never touching an object that
//! is not ours. Deletion is the same step with nothing wanted.
//!
//! - "Wanted" is judged per backend, not per profile name: an object recorded under a profile
//!   that reaches the same backend as the plan's (decision 15) is the one just made, and stays.
//! - A failed make ends the step: nothing recorded is removed until a walk completes, so status
//!   keeps its records (decision 15; recording a new object before it is first made is the
//!   transfer controller's, in its status).
//! - Removal goes on past a refusal retrying cannot fix (collected in [`Removal::refused`]),
//!   stops at a retryable failure (the backend is down: the whole step is retried), and leaves
//!   alone what is not ours ([`Removal::foreign`]) and what lives under a profile the
//!   configuration no longer has ([`Removal::left`]).
//! - [`delete`] adds `deletionPolicy` and the cleanup-attempt budget (decision 16).
//!
//! The backend calls themselves (and their idempotence, ownership markers and names) are the
//! backends'; this module only decides which to make, in which order, and what a result means.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::backends::broker::UserGrant;
use crate::backends::connector::{AssetDefinition, ContractDefinition, PolicyDefinition};
use crate::backends::identity::ClientDefinition;
use crate::backends::registry::Backends;
use crate::backends::secrets::SecretLocation;
use crate::backends::{BackendError, Outcome, Owner, SecretString, System};
use crate::plan::objects::{ExternalRef, Kind, Section};

/// Whether two profiles of one section reach the same backend.
pub type SameBackend = dyn Fn(Section, &str, &str) -> bool + Send + Sync;

/// What a converge step reaches: the backends by profile, which profiles share a backend, and
/// where each write is counted.
#[derive(Clone, Copy)]
pub struct Reach<'a> {
    /// A client per profile.
    pub backends: &'a Backends,
    /// Which profiles reach one backend (`Config::same_backend`).
    pub same_backend: &'a SameBackend,
    /// Called with every successful call's outcome (the metrics).
    pub on_write: &'a (dyn Fn(System, Outcome) + Send + Sync),
}

impl Reach<'_> {
    fn same(&self, a: &ExternalRef, b: &ExternalRef) -> bool {
        let kinds = a.kind == b.kind
            // A user of a name covers the sessions of that name: they are its sessions.
            || matches!((a.kind, b.kind), (Kind::Sessions, Kind::BrokerUser) | (Kind::BrokerUser, Kind::Sessions));
        kinds
            && a.name == b.name
            && a.folder == b.folder
            && match (&a.profile, &b.profile) {
                (Some(x), Some(y)) => (self.same_backend)(a.kind.section(), x, y),
                _ => false,
            }
    }
}

/// What to make, with what it must hold.
#[derive(Clone, Copy)]
pub enum Spec<'a> {
    /// A contract definition.
    ContractDefinition(&'a ContractDefinition),
    /// A policy definition.
    Policy(&'a PolicyDefinition),
    /// A connector asset.
    ConnectorAsset(&'a AssetDefinition),
    /// A broker user (enabled or not, per the grant).
    BrokerUser(&'a UserGrant),
    /// A broker user whose password is new (the secret store had none, or access resumes): a
    /// user that already existed gets it too, since brokers do not reveal passwords to compare.
    BrokerUserWithNewPassword(&'a UserGrant),
    /// A broker user that status says was never made (a new transfer): created without reading
    /// first, repaired as [`Spec::BrokerUserWithNewPassword`] should it exist after all.
    NewBrokerUser(&'a UserGrant),
    /// A secret-store entry.
    Secret(&'a SecretLocation, &'a SecretString),
    /// A secret-store entry that status says was never written (a new transfer).
    NewSecret(&'a SecretLocation, &'a SecretString),
    /// An identity-provider client (enabled or not, per the definition).
    IdentityClient(&'a ClientDefinition),
}

impl Spec<'_> {
    fn reference(&self, profile: &str) -> ExternalRef {
        match self {
            Spec::ContractDefinition(d) => ExternalRef::new(Kind::ContractDefinition, profile, &d.id),
            Spec::Policy(p) => ExternalRef::new(Kind::Policy, profile, &p.id),
            Spec::ConnectorAsset(a) => ExternalRef::new(Kind::ConnectorAsset, profile, &a.id),
            Spec::BrokerUser(g) | Spec::BrokerUserWithNewPassword(g) | Spec::NewBrokerUser(g) => {
                ExternalRef::new(Kind::BrokerUser, profile, &g.username)
            }
            Spec::Secret(at, _) | Spec::NewSecret(at, _) => ExternalRef::secret(profile, at),
            Spec::IdentityClient(c) => ExternalRef::new(Kind::IdentityClient, profile, &c.client_id),
        }
    }
}

/// A backend call failed.
#[derive(Debug)]
pub struct Failed {
    /// The object's kind (the controllers' step).
    pub kind: Kind,
    /// What the backend said.
    pub source: BackendError,
}

/// Objects left in place because the profile status recorded them under is no longer
/// configured: per profile (`section.name`), what was there.
#[derive(Debug, Default)]
pub struct LeftInPlace(pub BTreeMap<String, Vec<String>>);

impl LeftInPlace {
    fn note(&mut self, profile: String, object: String) {
        let objects = self.0.entry(profile).or_default();
        if !objects.contains(&object) {
            objects.push(object);
        }
    }

    /// Whether nothing was left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An object whose removal a backend refused.
#[derive(Debug)]
pub struct Refused {
    /// Its kind.
    pub kind: Kind,
    /// How messages name it.
    pub what: String,
    /// What the backend said.
    pub source: BackendError,
}

/// What the removal of unwanted objects did.
#[derive(Debug, Default)]
pub struct Removal {
    /// Not ours: left alone (with what the backend said).
    pub foreign: Vec<String>,
    /// Under a profile the configuration no longer has.
    pub left: LeftInPlace,
    /// Refused in a way retrying soon cannot fix (a connector asset under contract).
    pub refused: Vec<Refused>,
    /// A retryable failure that stopped the removal.
    pub failed: Option<Failed>,
}

/// One converge step: make what is wanted ([`Converge::make`], [`Converge::want`]), then
/// [`Converge::finish`] to remove what was recorded and is no longer wanted.
pub struct Converge<'a> {
    reach: Reach<'a>,
    owner: &'a Owner,
    recorded: Vec<ExternalRef>,
    wanted: Vec<ExternalRef>,
}

impl<'a> Converge<'a> {
    /// A step for the objects of `owner`, `recorded` being what status says exists.
    pub fn new(reach: Reach<'a>, owner: &'a Owner, recorded: Vec<ExternalRef>) -> Self {
        Self { reach, owner, recorded, wanted: Vec::new() }
    }

    /// Marks an object wanted without making it (live sessions; an object kept as it is).
    pub fn want(&mut self, r: ExternalRef) {
        crate::plan::objects::add(&mut self.wanted, r);
    }

    /// Makes or repairs one wanted object under `profile`.
    pub async fn make(&mut self, profile: &str, spec: Spec<'_>) -> Result<Outcome, Failed> {
        let r = spec.reference(profile);
        let kind = r.kind;
        self.want(r);
        let failed = |source| Failed { kind, source };
        let missing = || Failed {
            kind,
            source: BackendError::Rejected {
                system: system_of(kind),
                operation: "ensure",
                object: format!("profile {profile}"),
                status: 0,
                message: format!("{} profile \"{profile}\" is not configured", kind.section().as_str()),
            },
        };
        let b = self.reach.backends;
        let (system, result) = match spec {
            Spec::ContractDefinition(d) => {
                let c = b.connectors.get(profile).ok_or_else(missing)?;
                (System::Connector, c.ensure_contract_definition(d).await)
            }
            Spec::Policy(p) => {
                let c = b.connectors.get(profile).ok_or_else(missing)?;
                (System::Connector, c.ensure_policy(p).await)
            }
            Spec::ConnectorAsset(a) => {
                let c = b.connectors.get(profile).ok_or_else(missing)?;
                (System::Connector, c.ensure_asset(a).await)
            }
            Spec::BrokerUser(g) => {
                let broker = b.brokers.get(profile).ok_or_else(missing)?;
                (broker.system(), broker.ensure_user(g).await)
            }
            Spec::BrokerUserWithNewPassword(g) => {
                let broker = b.brokers.get(profile).ok_or_else(missing)?;
                (broker.system(), broker.ensure_user_with_password(g).await)
            }
            Spec::NewBrokerUser(g) => {
                let broker = b.brokers.get(profile).ok_or_else(missing)?;
                (broker.system(), broker.create_user(g).await)
            }
            Spec::Secret(at, value) => {
                let store = b.secret_stores.get(profile).ok_or_else(missing)?;
                (System::SecretStore, store.ensure_secret(at, value, self.owner).await)
            }
            Spec::NewSecret(at, value) => {
                let store = b.secret_stores.get(profile).ok_or_else(missing)?;
                (System::SecretStore, store.create_secret(at, value, self.owner).await)
            }
            Spec::IdentityClient(c) => {
                let idp = b.identity_providers.get(profile).ok_or_else(missing)?;
                (System::Identity, idp.ensure_client(c).await)
            }
        };
        let outcome = result.map_err(failed)?;
        (self.reach.on_write)(system, outcome);
        Ok(outcome)
    }

    /// Removes what was recorded and is not wanted, dependants first.
    pub async fn finish(self) -> Removal {
        let reach = self.reach;
        let mut unwanted: Vec<ExternalRef> =
            self.recorded.into_iter().filter(|r| !self.wanted.iter().any(|w| reach.same(r, w))).collect();
        unwanted.sort_by_key(|r| r.kind);
        remove(reach, self.owner, unwanted).await
    }
}

fn system_of(kind: Kind) -> System {
    match kind.section() {
        Section::Connectors => System::Connector,
        Section::IdentityProviders => System::Identity,
        Section::SecretStores => System::SecretStore,
        // Which broker is not known without its client; Mosquitto stands for "a broker".
        Section::Brokers => System::Mosquitto,
    }
}

async fn remove(reach: Reach<'_>, owner: &Owner, objects: Vec<ExternalRef>) -> Removal {
    let mut out = Removal::default();
    for r in objects {
        let Some((what, result)) = remove_one(reach, owner, &r).await else {
            let profile = r.profile.as_deref().unwrap_or("<none>");
            tracing::warn!(profile, section = r.kind.section().as_str(), object = %r.describe(), "a profile recorded in status is no longer configured; its object is left in place");
            out.left.note(format!("{}.{profile}", r.kind.section().as_str()), r.describe());
            continue;
        };
        match result {
            Ok((system, outcome)) => {
                if let Some(system) = system {
                    (reach.on_write)(system, outcome);
                }
            }
            Err(e @ BackendError::Foreign { .. }) => {
                tracing::warn!(object = %what, "{e}");
                out.foreign.push(format!("{what}: {e}"));
            }
            Err(e) if e.is_retryable() => {
                out.failed = Some(Failed { kind: r.kind, source: e });
                break;
            }
            Err(e) => {
                out.refused.push(Refused { kind: r.kind, what, source: e });
            }
        }
    }
    out
}

/// One removal: how it is named, and the system to count it under (sessions closed are not
/// writes). `None` when the profile is not configured.
async fn remove_one(
    reach: Reach<'_>,
    owner: &Owner,
    r: &ExternalRef,
) -> Option<(String, Result<(Option<System>, Outcome), BackendError>)> {
    let b = reach.backends;
    let profile = r.profile.as_deref()?;
    let counted = |system| move |o| (Some(system), o);
    Some(match r.kind {
        Kind::ContractDefinition => {
            let c = b.connectors.get(profile)?;
            (r.describe(), c.delete_contract_definition(&r.name, owner).await.map(counted(System::Connector)))
        }
        Kind::Policy => {
            let c = b.connectors.get(profile)?;
            (r.describe(), c.delete_policy(&r.name, owner).await.map(counted(System::Connector)))
        }
        Kind::ConnectorAsset => {
            let c = b.connectors.get(profile)?;
            (r.describe(), c.delete_asset(&r.name, owner).await.map(counted(System::Connector)))
        }
        Kind::BrokerUser => {
            let broker = b.brokers.get(profile)?;
            (r.describe(), broker.remove_user(&r.name, owner).await.map(counted(broker.system())))
        }
        Kind::Sessions => {
            let broker = b.brokers.get(profile)?;
            (r.describe(), broker.disconnect(&r.name).await.map(|_| (None, Outcome::Unchanged)))
        }
        Kind::Secret => {
            let store = b.secret_stores.get(profile)?;
            let at = r.location();
            (
                format!("secret {}", store.path(&at)),
                store.delete_secret(&at, owner).await.map(counted(System::SecretStore)),
            )
        }
        Kind::IdentityClient => {
            let idp = b.identity_providers.get(profile)?;
            (r.describe(), idp.delete_client(&r.name, owner).await.map(counted(System::Identity)))
        }
    })
}

/// Deletion's attempts at what a backend refused, counted in memory per resource (decision 16:
/// writing them to status would trigger the next attempt at once).
#[derive(Debug, Default)]
pub struct Budget {
    attempts: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Budget {
    fn wait(&self, key: &str, retry: Duration) -> Option<Duration> {
        let (_, last) = *self.attempts.lock().expect("not poisoned").get(key)?;
        retry.checked_sub(last.elapsed()).filter(|d| !d.is_zero())
    }

    fn attempt(&self, key: &str) -> u32 {
        let mut attempts = self.attempts.lock().expect("not poisoned");
        let entry = attempts.entry(key.to_owned()).or_insert((0, Instant::now()));
        *entry = (entry.0 + 1, Instant::now());
        entry.0
    }

    /// Forgets `key`'s attempts.
    pub fn forget(&self, key: &str) {
        self.attempts.lock().expect("not poisoned").remove(key);
    }
}

/// How deletion treats what a backend refuses.
#[derive(Clone, Copy, Debug)]
pub struct DeletePolicy {
    /// `deletionPolicy: Retain`: nothing is removed.
    pub retain: bool,
    /// Attempts before refused objects are left in place.
    pub attempts: u32,
    /// Time between attempts.
    pub retry: Duration,
}

/// What a deletion came to.
#[derive(Debug)]
pub enum Deletion {
    /// `Retain`: everything left in place; the resource may go.
    Retained,
    /// Too early for the next attempt at a refused object.
    Wait(Duration),
    /// Everything ours is gone (foreign and unreachable objects aside): the resource may go.
    Done(Removal),
    /// Some objects were refused; `attempts` so far, retried after the policy's interval.
    Refused(Removal, u32),
    /// Refused `attempts` times: left in place; the resource may go.
    Abandoned(Removal, u32),
    /// A backend is down: retried with backoff, without limit (giving up would leak access).
    Failed(Removal),
}

/// Deletion: the converge step with nothing wanted, under the deletion policy and the budget.
pub async fn delete(
    reach: Reach<'_>,
    owner: &Owner,
    recorded: Vec<ExternalRef>,
    policy: DeletePolicy,
    budget: &Budget,
    key: &str,
) -> Deletion {
    if policy.retain {
        budget.forget(key);
        return Deletion::Retained;
    }
    if let Some(wait) = budget.wait(key, policy.retry) {
        return Deletion::Wait(wait);
    }
    let removal = Converge::new(reach, owner, recorded).finish().await;
    if removal.failed.is_some() {
        return Deletion::Failed(removal);
    }
    if removal.refused.is_empty() {
        budget.forget(key);
        return Deletion::Done(removal);
    }
    let attempts = budget.attempt(key);
    if attempts >= policy.attempts {
        budget.forget(key);
        Deletion::Abandoned(removal, attempts)
    } else {
        Deletion::Refused(removal, attempts)
    }
}

#[cfg(test)]
mod tests;
