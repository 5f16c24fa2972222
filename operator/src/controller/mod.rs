//! The controllers: thin reconcile/cleanup functions that walk a plan through the backends and
//! write what they found into status. Backend details live in `backends/`, the rules in `plan/`.
//!
//! Common behaviour:
//! - a finalizer (`dsp-mqtt.io/cleanup`) guards every resource so that deletion can clean up;
//! - retryable backend errors (unavailable, timeout, unreachable) and Kubernetes API errors are
//!   retried with exponential backoff and jitter; other errors are reported and wait for a spec
//!   change or the next resync;
//! - a successful reconcile is repeated every `resync` (with jitter): that repairs whatever was
//!   changed or deleted behind our back, and writes nothing when nothing was;
//! - status is written only when it differs from what is stored; an Event is published on every
//!   condition change and every error, its reason being the error variant;
//! - at most `max_concurrent_reconciles` (default 32) reconciles of one kind run at once.

pub mod asset;
mod conditions;
mod removal;
pub mod transfer;
mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Event as KubeEvent, Recorder, Reporter};
use tracing::warn;

use crate::backends::registry::Backends;
use crate::backends::{BackendError, Outcome, Owner, System};
use crate::config::Config;
use crate::converge::{self, DeletePolicy, Deletion, Reach};
use crate::metrics::Metrics;
use crate::plan::PlanError;
use crate::plan::objects::ExternalRef;
use crate::status;

pub(crate) use conditions::{Tracker, publish_changes};
pub(crate) use removal::{conclude_deletion, failed_step, removal_result};
pub(crate) use watch::{OwnWrites, controller_of, patch_status};

/// The finalizer our controllers put on resources.
pub const FINALIZER: &str = "dsp-mqtt.io/cleanup";

/// Annotation that pauses reconciling one resource (`"true"`); deletion still cleans up.
pub const PAUSED_ANNOTATION: &str = "dsp-mqtt.io/paused";

/// Annotation that asks for a reconcile now: set it to any new value (a timestamp, say). The
/// operator reconciles, forgets the resource's backoff, and records the value in
/// `status.lastHandledReconcileAt` once handled (the convention Flux uses).
pub const RECONCILE_REQUESTED_ANNOTATION: &str = "dsp-mqtt.io/reconcile-requested-at";

/// The value of the reconcile-request annotation, when set.
pub fn reconcile_requested(meta: &kube::api::ObjectMeta) -> Option<String> {
    meta.annotations.as_ref().and_then(|a| a.get(RECONCILE_REQUESTED_ANNOTATION)).cloned()
}

/// Whether a resource is paused by annotation.
pub fn is_paused(meta: &kube::api::ObjectMeta) -> bool {
    meta.annotations.as_ref().and_then(|a| a.get(PAUSED_ANNOTATION)).is_some_and(|v| v == "true")
}

/// Name the operator reports Events under.
pub const REPORTER: &str = "mqtt-dsp-operator";

/// Tunables of the controllers.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often a healthy resource is reconciled again (drift repair). Default 5 min.
    pub resync: Duration,
    /// First retry delay after a retryable error. Default 1 s.
    pub backoff_base: Duration,
    /// Longest retry delay. Default 5 min.
    pub backoff_max: Duration,
    /// Attempts at deleting an external object that a backend refuses to delete (e.g. a connector
    /// asset still referenced by a contract agreement) before it is left in place and the
    /// finalizer released. Default 3.
    pub cleanup_attempts: u32,
    /// Delay between such attempts. Default 30 s.
    pub cleanup_retry: Duration,
    /// Namespace to watch; all when `None`.
    pub namespace: Option<String>,
    /// Most reconciles of one kind running at once (0: no bound). Default 32. The bound keeps
    /// the memory of a restart, which reconciles every resource at once, flat; the backends
    /// (a single-threaded broker above all) set the pace long before it does.
    pub max_concurrent_reconciles: u16,
    /// The replica's name (Event reporting instance).
    pub instance: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(300),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            cleanup_attempts: 3,
            cleanup_retry: Duration::from_secs(30),
            namespace: None,
            max_concurrent_reconciles: 32,
            instance: std::env::var("POD_NAME").unwrap_or_else(|_| "local".into()),
        }
    }
}

/// What every reconcile gets.
pub struct Context {
    /// The cluster.
    pub client: Client,
    /// Operator configuration.
    pub config: Arc<Config>,
    /// A client per configured profile.
    pub backends: Arc<Backends>,
    /// Tunables.
    pub settings: Settings,
    /// Event publisher.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    failures: Mutex<HashMap<String, u32>>,
    /// Deletion's attempts at refused objects.
    budget: converge::Budget,
    same_backend: Box<converge::SameBackend>,
    on_write: Box<dyn Fn(System, Outcome) + Send + Sync>,
    /// The transfer controller's cache of assets (set when it starts): transfers read their
    /// asset here instead of asking the API server each time.
    pub(crate) assets: std::sync::OnceLock<kube::runtime::reflector::Store<crate::api::MqttAsset>>,
    /// The state our own status writes leave each object in.
    own_writes: OwnWrites,
    /// How many kinds' caches have synced (the readiness check waits for all of them).
    synced: tokio::sync::watch::Sender<usize>,
}

impl Context {
    /// A context for the controllers.
    pub fn new(
        client: Client,
        config: Arc<Config>,
        backends: Arc<Backends>,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = Reporter { controller: REPORTER.into(), instance: Some(settings.instance.clone()) };
        let same = config.clone();
        let counted = metrics.clone();
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            backends,
            settings,
            metrics,
            failures: Mutex::default(),
            budget: converge::Budget::default(),
            same_backend: Box::new(move |section, a, b| same.same_backend(section, a, b)),
            on_write: Box::new(move |system, outcome| counted.count_backend_write(system.as_str(), outcome)),
            assets: std::sync::OnceLock::new(),
            own_writes: OwnWrites::default(),
            synced: tokio::sync::watch::channel(0).0,
        }
    }

    /// Resolves once the caches of every controller (`KINDS`) have synced.
    pub async fn caches_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|n| *n >= KINDS.len()).await;
    }

    /// Watches a controller's cache: marks it synced once its first list is in, and feeds the
    /// `mqtt_dsp_operator_resources` gauge from it at every scrape.
    pub(crate) fn watch_cache<K>(
        self: &Arc<Self>,
        kind: &'static str,
        store: kube::runtime::reflector::Store<K>,
        conditions: fn(&K) -> Option<&Vec<Condition>>,
    ) where
        K: kube::Resource + Clone + Send + Sync + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Default + Send + Sync,
    {
        let ctx = self.clone();
        let ready_store = store.clone();
        tokio::spawn(async move {
            if !watch::store_ready(&ready_store).await {
                return;
            }
            ctx.synced.send_modify(|n| *n += 1);
            tracing::info!(kind, "cache synced");
        });
        self.metrics.set_collector(kind, move |metrics| {
            let (mut ready, mut not_ready, mut unknown) = (0, 0, 0);
            for object in store.state() {
                let status = conditions(&object)
                    .and_then(|cs| cs.iter().find(|c| c.type_ == status::READY))
                    .map(|c| c.status.as_str());
                match status {
                    Some("True") => ready += 1,
                    Some("False") => not_ready += 1,
                    _ => unknown += 1,
                }
            }
            metrics.set_ready_counts(kind, ready, not_ready, unknown);
        });
    }

    /// Delay before retrying `key` after its n-th consecutive failure: base·2ⁿ⁻¹, capped, ±20 %.
    fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().expect("not poisoned");
        let n = failures.entry(key.to_owned()).or_default();
        *n = n.saturating_add(1);
        let exp = self.settings.backoff_base.saturating_mul(2u32.saturating_pow(n.saturating_sub(1).min(20)));
        jitter(exp.min(self.settings.backoff_max), 0.2)
    }

    /// What the converge step reaches.
    pub(crate) fn reach(&self) -> Reach<'_> {
        Reach { backends: &self.backends, same_backend: &*self.same_backend, on_write: &*self.on_write }
    }

    /// Deletes `recorded` for `owner` under `policy`'s retention and the attempt budget.
    pub(crate) async fn delete(&self, key: &str, owner: &Owner, recorded: Vec<ExternalRef>, retain: bool) -> Deletion {
        let policy =
            DeletePolicy { retain, attempts: self.settings.cleanup_attempts, retry: self.settings.cleanup_retry };
        converge::delete(self.reach(), owner, recorded, policy, &self.budget, key).await
    }

    /// Forgets `key`'s failures after a success.
    fn succeeded(&self, key: &str) {
        self.failures.lock().expect("not poisoned").remove(key);
    }

    /// The requeue after a success: the resync interval with ±10 % jitter, so that resources
    /// created together do not resync together.
    fn resync(&self) -> Action {
        Action::requeue(self.resync_delay())
    }

    /// The controllers' runtime settings: at most `max_concurrent_reconciles` at once.
    fn controller_config(&self) -> controller::Config {
        controller::Config::default().concurrency(self.settings.max_concurrent_reconciles)
    }

    /// The resync interval with its jitter.
    fn resync_delay(&self) -> Duration {
        jitter(self.settings.resync, 0.1)
    }

    /// Publishes an Event; failures to publish are logged, never fatal.
    async fn publish(&self, reference: &ObjectReference, event: KubeEvent) {
        if let Err(e) = self.recorder.publish(&event, reference).await {
            warn!(reason = %event.reason, "cannot publish Event: {e}");
        }
    }
}

/// `d` ± `fraction`·`d`, uniformly.
fn jitter(d: Duration, fraction: f64) -> Duration {
    let factor = 1.0 + fraction * (2.0 * rand::random::<f64>() - 1.0);
    d.mul_f64(factor.max(0.0))
}

/// A reconcile step, named in conditions and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Identity-provider client / broker user password.
    Identity,
    /// Secret store.
    Secret,
    /// Broker.
    Broker,
    /// Connector.
    Connector,
    /// The Kubernetes Secret with the DataAddress (transfers).
    Credentials,
}

impl Step {
    /// Its condition type.
    pub fn condition(self) -> &'static str {
        match self {
            Step::Identity => crate::status::IDENTITY_READY,
            Step::Secret => crate::status::SECRET_READY,
            Step::Broker => crate::status::BROKER_READY,
            Step::Connector => crate::status::CONNECTOR_READY,
            Step::Credentials => crate::status::CREDENTIALS_READY,
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Identity => "identity",
            Step::Secret => "secret",
            Step::Broker => "broker",
            Step::Connector => "connector",
            Step::Credentials => "credentials",
        })
    }
}

/// Why a reconcile failed. The variant (or the wrapped error's variant) is the reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot be planned.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A backend refused or failed.
    #[error("{step}: {source}")]
    Backend {
        /// Which step.
        step: Step,
        /// What the backend said.
        #[source]
        source: BackendError,
    },
    /// The Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    /// The finalizer helper could not work with the object.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// The transfer's asset does not exist (or is being deleted).
    #[error(
        "MqttAsset \"{name}\" does not exist in this namespace (or is being deleted): access is revoked until it exists; check spec.assetRef.name"
    )]
    AssetNotFound {
        /// spec.assetRef.name.
        name: String,
    },
    /// The Secret name is taken by a Secret this transfer does not own.
    #[error(
        "Secret \"{name}\" exists and is not owned by this MqttTransfer; the operator leaves it alone: delete it or set spec.secretName to another name"
    )]
    SecretNameTaken {
        /// The Secret.
        name: String,
    },
    /// Deletion: a backend refused to delete something; tried again after `retry`.
    #[error("a backend refused deletion ({attempts} attempt(s) this round); trying again in {retry:?}")]
    CleanupPending {
        /// When to try again.
        retry: Duration,
        /// Attempts so far.
        attempts: u32,
    },
}

impl Error {
    /// Stable reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Plan(e) => e.reason(),
            Error::Backend { source, .. } => source.reason(),
            Error::Kube(_) => "KubernetesApi",
            Error::Finalizer(_) => "Finalizer",
            Error::CleanupPending { .. } => "CleanupPending",
            Error::AssetNotFound { .. } => "AssetNotFound",
            Error::SecretNameTaken { .. } => "SecretNameTaken",
        }
    }

    /// Whether retrying soon may help (otherwise: wait for a change or the resync).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Plan(_) | Error::AssetNotFound { .. } | Error::SecretNameTaken { .. } => false,
            Error::Backend { source, .. } => source.is_retryable(),
            Error::Kube(_) | Error::Finalizer(_) | Error::CleanupPending { .. } => true,
        }
    }

    fn from_finalizer(e: kube::runtime::finalizer::Error<Error>) -> Self {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(e) | F::CleanupFailed(e) => e,
            F::AddFinalizer(e) | F::RemoveFinalizer(e) => Error::Kube(e),
            F::UnnamedObject => Error::Finalizer("object has no name".into()),
            F::InvalidFinalizer => Error::Finalizer("invalid finalizer name".into()),
        }
    }
}

/// Attaches the step to a backend error.
pub(crate) trait AtStep<T> {
    fn at(self, step: Step) -> Result<T, Error>;
}

impl<T> AtStep<T> for Result<T, BackendError> {
    fn at(self, step: Step) -> Result<T, Error> {
        self.map_err(|source| Error::Backend { step, source })
    }
}

/// The kinds the operator reconciles.
pub const KINDS: [&str; 2] = ["MqttAsset", "MqttTransfer"];

/// The tracing span of one reconcile: every log line inside carries the resource's key.
pub(crate) fn reconcile_span(kind: &'static str, meta: &kube::api::ObjectMeta) -> tracing::Span {
    tracing::info_span!(
        "reconcile",
        kind,
        namespace = meta.namespace.as_deref().unwrap_or_default(),
        name = meta.name.as_deref().unwrap_or_default(),
        generation = meta.generation.unwrap_or_default(),
    )
}

/// Runs the controllers until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let (stop, _) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let assets = asset::run(ctx.clone(), stopped(stop.subscribe()));
    let transfers = transfer::run(ctx, stopped(stop.subscribe()));
    let trigger = async {
        shutdown.await;
        stop.send_replace(true);
    };
    tokio::join!(assets, transfers, trigger);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retried_reasons_are_exactly_the_retryable_errors() {
        use crate::backends::{BackendError, System};
        let backend = |source| Error::Backend { step: Step::Connector, source };
        let (sys, op, object) = (System::Connector, "create", || "x".to_owned());
        let errors = [
            backend(BackendError::Unavailable {
                system: sys,
                operation: op,
                object: object(),
                status: 503,
                message: String::new(),
            }),
            backend(BackendError::Timeout { system: sys, operation: op, object: object(), timeout_seconds: 1 }),
            backend(BackendError::Unreachable { system: sys, operation: op, object: object(), source: "x".into() }),
            backend(BackendError::Rejected {
                system: sys,
                operation: op,
                object: object(),
                status: 400,
                message: String::new(),
            }),
            backend(BackendError::Unauthorized { system: sys, operation: op, object: object(), status: 401 }),
            backend(BackendError::Foreign { system: sys, operation: op, object: object() }),
            Error::Kube(kube::Error::LinesCodecMaxLineLengthExceeded),
            Error::Finalizer("x".into()),
            Error::CleanupPending { retry: Duration::from_secs(1), attempts: 1 },
            Error::AssetNotFound { name: "a".into() },
            Error::SecretNameTaken { name: "s".into() },
        ];
        for e in &errors {
            assert_eq!(status::RETRIED_REASONS.contains(&e.reason()), e.is_retryable(), "{}", e.reason());
        }
    }

    #[test]
    fn jitter_stays_within_bounds() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_secs(100), 0.2);
            assert!(d >= Duration::from_secs(80) && d <= Duration::from_secs(120), "{d:?}");
        }
    }
}
