//! The operator's own HTTP endpoints: `/healthz` (liveness), `/readyz` (readiness) and
//! `/metrics` (Prometheus).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Where this replica stands in leader election.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Leadership {
    /// Leader election is off: this replica runs the controllers.
    #[default]
    Disabled,
    /// Another replica holds the Lease; this one waits to take over.
    Standby,
    /// This replica holds the Lease and runs the controllers.
    Leading,
}

/// What readiness depends on. Each check has a name that `/readyz` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// The configuration file loaded without problems.
    pub config_loaded: bool,
    /// The CRDs are installed in the cluster.
    pub crds_installed: bool,
    /// Leader election state.
    pub leadership: Leadership,
    /// The controllers' caches hold their first full list (set once the controllers run).
    pub caches_synced: bool,
}

impl Readiness {
    /// Whether every check passed: configuration and CRDs, and either standing by or running
    /// controllers whose caches have synced.
    pub fn is_ready(&self) -> bool {
        self.config_loaded && self.crds_installed && (self.leadership == Leadership::Standby || self.caches_synced)
    }

    fn report(&self) -> String {
        let line = |name: &str, ok: bool, note: &str| format!("[{}] {name}{note}\n", if ok { "+" } else { "-" });
        let (leader_ok, leader_note) = match self.leadership {
            Leadership::Disabled => (true, ": leader election off"),
            Leadership::Standby => (true, ": standing by (another replica leads)"),
            Leadership::Leading => (true, ": leading"),
        };
        let standby = self.leadership == Leadership::Standby;
        [
            line("config", self.config_loaded, ""),
            line("crds", self.crds_installed, ""),
            line("leader-election", leader_ok, leader_note),
            line("caches", self.caches_synced || standby, if standby { ": not needed while standing by" } else { "" }),
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

        tx.send_replace(Readiness {
            config_loaded: true,
            crds_installed: true,
            leadership: Leadership::Leading,
            caches_synced: false,
        });
        let (code, body) = get_text(router(metrics.clone(), rx.clone()), "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "a leader whose caches are not synced is not ready");
        assert!(body.contains("[-] caches"), "{body}");

        tx.send_modify(|r| r.leadership = Leadership::Standby);
        let (code, body) = get_text(router(metrics.clone(), rx.clone()), "/readyz").await;
        assert_eq!(code, StatusCode::OK, "a standby is ready: {body}");
        assert!(body.contains("standing by"), "{body}");

        tx.send_modify(|r| {
            r.leadership = Leadership::Leading;
            r.caches_synced = true;
        });
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
