//! The operator's own HTTP endpoints: `/healthz` (liveness), `/readyz` (readiness) and
//! `/metrics` (Prometheus).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// What readiness depends on. Each check has a name that `/readyz` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// The configuration file loaded without problems.
    pub config_loaded: bool,
    /// The CRDs are installed in the cluster.
    pub crds_installed: bool,
    /// The controllers' caches are synced (set by the controllers).
    pub controllers_started: bool,
}

impl Readiness {
    /// Whether every check passed.
    pub fn is_ready(&self) -> bool {
        self.config_loaded && self.crds_installed && self.controllers_started
    }

    fn report(&self) -> String {
        let line = |name: &str, ok: bool| format!("[{}] {name}\n", if ok { "+" } else { "-" });
        [
            line("config", self.config_loaded),
            line("crds", self.crds_installed),
            line("controllers", self.controllers_started),
        ]
        .concat()
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    readiness: watch::Receiver<Readiness>,
}

/// The router, without binding (tests drive it directly).
pub fn router(metrics: Arc<Metrics>, readiness: watch::Receiver<Readiness>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(AppState { metrics, readiness })
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let readiness = state.readiness.borrow().clone();
    let code = if readiness.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, readiness.report())
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    // The gauge is read from the readiness state at scrape time, so it never depends on whether
    // anyone polled /readyz.
    state.metrics.ready.set(i64::from(state.readiness.borrow().is_ready()));
    match state.metrics.encode() {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Serves the endpoints on `addr` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    readiness: watch::Receiver<Readiness>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, readiness)).with_graceful_shutdown(shutdown).await
}

/// Binds the endpoints' address, with an error that names it.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, crate::run::RunError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| crate::run::RunError::Bind { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get_text(router: Router, path: &str) -> (StatusCode, String) {
        use tower::ServiceExt;
        let response =
            router.oneshot(axum::http::Request::get(path).body(axum::body::Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_follows_every_check_and_names_the_failing_one() {
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = watch::channel(Readiness { config_loaded: true, ..Default::default() });
        let (code, body) = get_text(router(metrics.clone(), rx.clone()), "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("[+] config") && body.contains("[-] crds"), "{body}");

        tx.send_replace(Readiness { config_loaded: true, crds_installed: true, controllers_started: true });
        let (code, _) = get_text(router(metrics.clone(), rx.clone()), "/readyz").await;
        assert_eq!(code, StatusCode::OK);
        let (_, metrics_text) = get_text(router(metrics, rx), "/metrics").await;
        assert!(metrics_text.contains("mqtt_dsp_operator_ready 1"), "{metrics_text}");
        assert!(
            metrics_text
                .contains(&format!("mqtt_dsp_operator_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))),
            "{metrics_text}"
        );
    }

    #[tokio::test]
    async fn healthz_answers_while_not_ready() {
        let (_tx, rx) = watch::channel(Readiness::default());
        let (code, body) = get_text(router(Arc::new(Metrics::default()), rx), "/healthz").await;
        assert_eq!((code, body.as_str()), (StatusCode::OK, "ok\n"));
    }
}
