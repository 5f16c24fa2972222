//! `mqtt-dsp-operator run`: the operator's entry point.
//!
//! Order of start-up, each step failing with an error that says what to do:
//! configuration → cluster connection → CRDs installed → health/metrics endpoints → controllers
//! → wait for SIGTERM/SIGINT → graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use kube::Client;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::api::{GROUP, VERSION};
use crate::backends::registry::{Backends, BuildContext};
use crate::config::{Config, ConfigError};
use crate::controller::{self, Context};
use crate::metrics::Metrics;
use crate::server::{self, Leadership, Readiness};

/// Settings of `run` (from the command line).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The configuration file.
    pub config: PathBuf,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// Controller tunables.
    pub settings: crate::controller::Settings,
    /// Leader election; `None` runs the controllers at once (one replica only).
    pub leader_election: Option<LeaderElection>,
}

/// Leader election on a `coordination.k8s.io/v1` Lease.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// The Lease's name.
    pub lease_name: String,
    /// The Lease's namespace; default: `POD_NAMESPACE`, else the client's default namespace.
    pub namespace: Option<String>,
    /// How long a leader's claim lasts without renewal (seconds).
    pub duration_seconds: u64,
    /// How long before the claim runs out the leader renews it (seconds, less than the duration).
    pub grace_seconds: u64,
}

impl Default for LeaderElection {
    fn default() -> Self {
        Self { lease_name: "mqtt-dsp-operator".into(), namespace: None, duration_seconds: 15, grace_seconds: 5 }
    }
}

/// Why the operator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No cluster connection could be configured (neither in-cluster nor kubeconfig).
    #[error(
        "cannot connect to a Kubernetes cluster (tried the in-cluster service account and KUBECONFIG / ~/.kube/config)"
    )]
    Connect(#[source] kube::Error),
    /// The cluster did not answer the discovery request.
    #[error("cannot ask the Kubernetes API server which resources it serves")]
    Discovery(#[source] kube::Error),
    /// The CRDs are not installed.
    #[error(
        "the CustomResourceDefinitions of {GROUP}/{VERSION} are not installed in this cluster (missing: {}).\n\
         Install them with `kubectl apply -f crds/` from the operator's repository, \
         with `mqtt-dsp-operator crdgen | kubectl apply -f -`, \
         or with the Helm chart (crds.install=true), then start the operator again.",
        missing.join(", ")
    )]
    CrdsMissing {
        /// Plural names of the missing resources.
        missing: Vec<String>,
    },
    /// A profile's client could not be set up (e.g. its credential cannot be read).
    #[error(transparent)]
    Backends(#[from] crate::backends::registry::BuildError),
    /// An endpoint's address could not be bound.
    #[error(transparent)]
    Bind(#[from] crate::listener::BindError),
    /// The refresh endpoint cannot be set up (its TLS files, the consumers' keys).
    #[error("cannot set up the refresh endpoint: {0}")]
    Refresh(String),
    /// The data plane (Data Plane Signaling endpoint) could not start.
    #[error(transparent)]
    DataPlane(#[from] crate::dataplane::DataPlaneError),
    /// The endpoints' server failed.
    #[error("the health/metrics server failed")]
    Serve(#[source] std::io::Error),
    /// The leader-election Lease cannot be used.
    #[error(
        "cannot use the leader-election Lease {namespace}/{name}: the operator needs get, create and patch on \
         coordination.k8s.io leases in that namespace (see deploy/rbac.yaml), or run it with --leader-election=false"
    )]
    Lease {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// What failed.
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    /// Another replica took the Lease over while this one was leading.
    #[error(
        "lost the leader-election Lease {namespace}/{name} (not renewed in time); exiting so that only the new leader \
         reconciles (a restarted replica stands by)"
    )]
    LeadershipLost {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
}

impl RunError {
    /// Process exit code: 3 for a bad configuration (also unreadable credentials or TLS files of
    /// the refresh endpoint and the data plane), 4 for missing CRDs, 1 otherwise
    /// (2 is clap's usage error).
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Config(_) | RunError::Backends(_) | RunError::Refresh(_) => 3,
            RunError::DataPlane(
                crate::dataplane::DataPlaneError::Credential { .. } | crate::dataplane::DataPlaneError::Invalid(_),
            ) => 3,
            RunError::CrdsMissing { .. } => 4,
            _ => 1,
        }
    }
}

/// The resources the operator needs from the cluster.
pub const REQUIRED_RESOURCES: [&str; 2] = ["mqttassets", "mqtttransfers"];

/// Checks that our CRDs are served. Uses discovery only, which every authenticated client may
/// read, so the operator needs no RBAC on CustomResourceDefinitions.
pub async fn check_crds(client: &Client) -> Result<(), RunError> {
    let served = match client.list_api_group_resources(&format!("{GROUP}/{VERSION}")).await {
        Ok(list) => list.resources.into_iter().map(|r| r.name).collect::<Vec<_>>(),
        Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
        Err(e) => return Err(RunError::Discovery(e)),
    };
    let missing: Vec<String> =
        REQUIRED_RESOURCES.iter().filter(|r| !served.iter().any(|s| s == *r)).map(|r| r.to_string()).collect();
    if missing.is_empty() { Ok(()) } else { Err(RunError::CrdsMissing { missing }) }
}

/// How long a start waits for the API server to answer discovery before it gives up. A replica
/// (re)started during an API-server blip (an upgrade, a load balancer failover, a reset
/// connection) waits it out instead of exiting into a CrashLoopBackOff, whose growing back-off
/// delays recovery far beyond the blip (`make chaos` found restarts exiting with 1 when the
/// API server refused connections for 1–5 s). Shorter than the chart's liveness probe allows
/// (5 s + 3 × 10 s), so a replica that keeps waiting is still restarted.
pub const DISCOVERY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// [`check_crds`], tried again while the API server cannot be reached or answers 5xx/429, for
/// at most `patience`. Missing CRDs and refusals (401, 403) end it at once.
pub async fn check_crds_patiently(client: &Client, patience: std::time::Duration) -> Result<(), RunError> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut pause = std::time::Duration::from_millis(200);
    loop {
        match check_crds(client).await {
            Err(RunError::Discovery(e)) if transient(&e) && tokio::time::Instant::now() + pause < deadline => {
                warn!(error = %e, "the Kubernetes API server did not answer discovery; trying again in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// Whether a discovery failure may pass by itself (no connection, an overloaded server).
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        _ => true,
    }
}

/// Runs the operator until SIGTERM or SIGINT.
pub async fn run(options: RunOptions) -> Result<(), RunError> {
    let mut config = Config::load(&options.config)?;
    info!(
        connectors = config.connectors.len(),
        identity_providers = config.identity_providers.len(),
        secret_stores = config.secret_stores.len(),
        brokers = config.brokers.len(),
        "configuration loaded from {}",
        options.config.display()
    );
    let (readiness_tx, readiness_rx) = watch::channel(Readiness { config_loaded: true, ..Default::default() });

    let client = Client::try_default().await.map_err(RunError::Connect)?;
    check_crds_patiently(&client, DISCOVERY_PATIENCE).await?;
    readiness_tx.send_modify(|r| r.crds_installed = true);
    info!("CRDs of {GROUP}/{VERSION} are installed");

    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| client.default_namespace().to_owned());
    // Profiles without an `allowed` block serve this namespace only.
    config.operator_namespace = namespace.clone();
    info!(installation = config.installation(), "ownership markers name this installation");
    let build = BuildContext { kube: Some(&client), namespace: &namespace, replica: &options.settings.instance };
    let backends = Backends::build(&config, &build).await?;
    info!("a client for every configured profile is set up");

    let metrics = Arc::new(Metrics::default());
    let listener = crate::listener::bind(options.listen).await?;
    info!("serving /healthz, /readyz and /metrics on {}", options.listen);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let server_task = tokio::spawn(server::serve(listener, metrics.clone(), readiness_rx, async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    }));

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let ctx = Arc::new(Context::new(client.clone(), Arc::new(config), Arc::new(backends), options.settings, metrics));
    // The data plane runs on standby replicas too: it only reads assets and writes MqttTransfers,
    // which the leader's controllers then reconcile.
    let watch_namespace = ctx.settings.namespace.clone();
    if let Some(addr) =
        crate::dataplane::start(client.clone(), ctx.config.clone(), &namespace, watch_namespace, stop_tx.subscribe())
            .await?
    {
        info!("serving Data Plane Signaling on {addr}");
    }

    // The refresh endpoint serves on every replica, standbys included: it needs no controller.
    let _refresh = match ctx.config.refresh.clone() {
        Some(settings) => Some(start_refresh(&settings, ctx.clone(), stop_tx.subscribe()).await?),
        None => None,
    };

    // Leader election: stand by until this replica holds the Lease.
    let mut election = None;
    if let Some(le) = &options.leader_election {
        let lease_namespace = le.namespace.clone().unwrap_or_else(|| namespace.clone());
        let identity = format!("{}_{}", ctx.settings.instance, random_suffix());
        let lease_error =
            |source| RunError::Lease { namespace: lease_namespace.clone(), name: le.lease_name.clone(), source };
        let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &le.lease_name)
            .with_namespace(&lease_namespace)
            .with_identity(&identity)
            .with_duration(le.duration_seconds)
            .with_grace(le.grace_seconds)
            .build()
            .await
            .map_err(lease_error)?;
        let (leading, task) = manager.watch().await;
        readiness_tx.send_modify(|r| r.leadership = Leadership::Standby);
        info!(identity, "standing by for the leader-election Lease {lease_namespace}/{}", le.lease_name);
        let mut became = leading.clone();
        tokio::select! {
            _ = &mut shutdown => {
                info!("shutting down while standing by");
                return stop_server(stop_tx, server_task, Some((leading, task))).await;
            }
            _ = became.wait_for(|l| *l) => {}
        }
        info!(identity, "acquired the leader-election Lease {lease_namespace}/{}", le.lease_name);
        election = Some((leading, task, lease_namespace, le.lease_name.clone()));
    }
    readiness_tx.send_modify(|r| {
        if election.is_some() {
            r.leadership = Leadership::Leading;
        }
    });
    ctx.metrics.leader.set(1);

    let mut controllers_stop = stop_tx.subscribe();
    let controllers = tokio::spawn(controller::run(ctx.clone(), async move {
        let _ = controllers_stop.wait_for(|stop| *stop).await;
    }));
    info!("controllers started");
    let synced_ctx = ctx.clone();
    let synced_tx = readiness_tx.clone();
    tokio::spawn(async move {
        synced_ctx.caches_synced().await;
        synced_tx.send_modify(|r| r.caches_synced = true);
        info!("caches synced: ready");
    });

    let lost = async {
        match &election {
            Some((leading, ..)) => {
                let mut leading = leading.clone();
                let _ = leading.wait_for(|l| !*l).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = &mut shutdown => {}
        _ = lost => {
            let (_, _, namespace, name) = election.expect("only an election can be lost");
            // Exit at once: in-flight reconciles must not go on beside the new leader's.
            return Err(RunError::LeadershipLost { namespace, name });
        }
    }
    info!("shutting down");
    let _ = stop_tx.send(true);
    if let Err(e) = controllers.await {
        warn!("controller task ended abnormally: {e}");
    }
    ctx.metrics.leader.set(0);
    stop_server(stop_tx, server_task, election.map(|(leading, task, ..)| (leading, task))).await
}

type Election =
    (watch::Receiver<bool>, tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>);

/// Releases the Lease (so a standby takes over at once, not after it runs out) and stops the
/// endpoints' server.
async fn stop_server(
    stop_tx: watch::Sender<bool>,
    server_task: tokio::task::JoinHandle<std::io::Result<()>>,
    election: Option<Election>,
) -> Result<(), RunError> {
    if let Some((leading, task)) = election {
        // Dropping the last receiver makes the lease task release the Lease and end.
        drop(leading);
        match tokio::time::timeout(std::time::Duration::from_secs(5), task).await {
            Ok(Ok(Ok(_))) => info!("leader-election Lease released"),
            Ok(Ok(Err(e))) => warn!("cannot release the leader-election Lease: {e}"),
            Ok(Err(e)) => warn!("the leader-election task ended abnormally: {e}"),
            Err(_) => warn!("releasing the leader-election Lease took longer than 5 s; it runs out by itself"),
        }
    }
    stop_tx.send_replace(true);
    match server_task.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RunError::Serve(e)),
        Err(e) => {
            warn!("health server task ended abnormally: {e}");
            Ok(())
        }
    }
}

/// Binds and serves the refresh endpoint until `stop`.
async fn start_refresh(
    settings: &crate::config::RefreshSettings,
    ctx: Arc<Context>,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, RunError> {
    use crate::refresh::{consumer_auth::ConsumerVerifier, server, service::Refresher};
    let verifier = ConsumerVerifier::new(&settings.consumer_auth).map_err(RunError::Refresh)?;
    let router = server::router(settings, Refresher::new(ctx.clone(), verifier), ctx.metrics.clone());
    let listener = crate::listener::bind(settings.listen).await?;
    // The certificate is read now, so that a broken one stops the start with a clear error.
    let tls =
        settings.tls.as_ref().map(server::tls_config).transpose().map_err(|e| RunError::Refresh(e.to_string()))?;
    info!(
        "serving the refresh endpoint on {} ({}), public URL {}",
        settings.listen,
        if tls.is_some() { "TLS" } else { "plain HTTP behind a TLS-terminating proxy" },
        settings.public_url
    );
    Ok(tokio::spawn(server::serve(listener, router, tls, stop)))
}

/// Eight random lowercase letters and digits: two replicas with the same pod name (a local run
/// next to a deployed one) still get distinct Lease identities.
fn random_suffix() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..8).map(|_| CHARS[rand::random_range(0..CHARS.len())] as char).collect()
}

/// Resolves on SIGTERM (Kubernetes' stop signal) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!("cannot listen for SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::Json;
    use axum::routing::get;

    use super::*;

    /// A client of an API server at `port` (plain HTTP: only the discovery request matters).
    fn client(port: u16) -> Client {
        let url = format!("http://127.0.0.1:{port}").parse().expect("a URL");
        Client::try_from(kube::Config::new(url)).expect("a client")
    }

    /// Serves the discovery document of our group, with both resources, on `listener`.
    fn serve_discovery(listener: tokio::net::TcpListener) {
        let resource = |name: &str| serde_json::json!({"name": name, "singularName": "", "namespaced": true, "kind": "X", "verbs": ["get"]});
        let list = serde_json::json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/{VERSION}"),
            "resources": [resource("mqttassets"), resource("mqtttransfers")],
        });
        let app =
            axum::Router::new().route(&format!("/apis/{GROUP}/{VERSION}"), get(move || async move { Json(list) }));
        tokio::spawn(async move { axum::serve(listener, app).await });
    }

    #[tokio::test]
    async fn a_start_waits_for_an_api_server_that_comes_back() {
        // Nothing listens on the port for the first 600 ms: connections are refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            serve_discovery(tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap());
        });
        check_crds_patiently(&client(port), Duration::from_secs(10)).await.expect("the CRDs are found once it answers");
    }

    #[tokio::test]
    async fn a_start_gives_up_after_its_patience() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let started = std::time::Instant::now();
        let e = check_crds_patiently(&client(port), Duration::from_millis(700)).await.unwrap_err();
        assert!(matches!(e, RunError::Discovery(_)), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
