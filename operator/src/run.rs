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
use crate::server::{self, Readiness};

/// Settings of `run` (from the command line).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The configuration file.
    pub config: PathBuf,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// Controller tunables.
    pub settings: crate::controller::Settings,
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
    /// The endpoints' address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The endpoints' server failed.
    #[error("the health/metrics server failed")]
    Serve(#[source] std::io::Error),
}

impl RunError {
    /// Process exit code: 3 for a bad configuration, 4 for missing CRDs, 1 otherwise
    /// (2 is clap's usage error).
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Config(_) | RunError::Backends(_) => 3,
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

/// Runs the operator until SIGTERM or SIGINT.
pub async fn run(options: RunOptions) -> Result<(), RunError> {
    let config = Config::load(&options.config)?;
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
    check_crds(&client).await?;
    readiness_tx.send_modify(|r| r.crds_installed = true);
    info!("CRDs of {GROUP}/{VERSION} are installed");

    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| client.default_namespace().to_owned());
    let build = BuildContext { kube: Some(&client), namespace: &namespace, replica: &options.settings.instance };
    let backends = Backends::build(&config, &build).await?;
    info!("a client for every configured profile is set up");

    let metrics = Arc::new(Metrics::default());
    let listener = server::bind(options.listen).await?;
    info!("serving /healthz, /readyz and /metrics on {}", options.listen);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let server_task = tokio::spawn(server::serve(listener, metrics.clone(), readiness_rx, async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    }));

    let ctx = Arc::new(Context::new(client, Arc::new(config), Arc::new(backends), options.settings, metrics));
    let mut controllers_stop = stop_tx.subscribe();
    let controllers = tokio::spawn(controller::run(ctx, async move {
        let _ = controllers_stop.wait_for(|stop| *stop).await;
    }));
    readiness_tx.send_modify(|r| r.controllers_started = true);
    info!("controllers started");

    shutdown_signal().await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    if let Err(e) = controllers.await {
        warn!("controller task ended abnormally: {e}");
    }
    match server_task.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RunError::Serve(e)),
        Err(e) => {
            warn!("health server task ended abnormally: {e}");
            Ok(())
        }
    }
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
