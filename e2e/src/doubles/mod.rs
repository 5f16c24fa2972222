//! Test doubles of the external systems that cannot run on our machines: each an HTTPS server on
//! 127.0.0.1 with in-memory state tests can inspect, a request log, and fault injection.
//!
//! Doubles are strict like the real systems (wrong credentials → 401/403, unknown route → 404,
//! duplicates → 409, malformed bodies → 400 in the real error shape, the real status codes): a
//! double that accepts what the real system rejects makes every test above it worthless.
//! Each module cites what in `domain.md` it follows.

pub mod edc;
pub mod edc_dps;
pub mod emqx;
pub mod keycloak;
pub mod vault;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::task::JoinHandle;

use crate::tls::{TestCa, serve_https};

/// One request as the double saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    /// HTTP method.
    pub method: String,
    /// Path, without the query.
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// Status the double answered.
    pub status: u16,
}

impl LoggedRequest {
    /// Whether the request could change state (any method but GET and HEAD).
    pub fn is_mutating(&self) -> bool {
        !matches!(self.method.as_str(), "GET" | "HEAD")
    }
}

/// The requests a double received, in order.
#[derive(Clone, Debug, Default)]
pub struct RequestLog(Arc<Mutex<Vec<LoggedRequest>>>);

impl RequestLog {
    /// Every request so far.
    pub fn all(&self) -> Vec<LoggedRequest> {
        self.0.lock().unwrap().clone()
    }
    /// Forgets every request so far (to look at what one step did).
    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
    /// Requests matching a predicate.
    pub fn matching(&self, f: impl Fn(&LoggedRequest) -> bool) -> Vec<LoggedRequest> {
        self.all().into_iter().filter(|r| f(r)).collect()
    }
    fn push(&self, r: LoggedRequest) {
        self.0.lock().unwrap().push(r);
    }
}

/// Faults a test injects into a double.
#[derive(Clone, Debug, Default)]
pub struct Faults(Arc<Mutex<FaultState>>);

#[derive(Debug, Default)]
struct FaultState {
    latency: Duration,
    fail_next: u32,
    fail_status: u16,
    stall: bool,
    fail_after_apply: u32,
    fail_after_apply_status: u16,
    drop_after_apply: u32,
    answers_lost: u32,
    in_flight: u32,
    max_in_flight: u32,
}

impl Faults {
    /// Delay every answer by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.0.lock().unwrap().latency = latency;
    }
    /// Answer the next `count` requests with `status` (e.g. 503) and an empty body.
    pub fn fail_next(&self, count: u32, status: u16) {
        let mut s = self.0.lock().unwrap();
        s.fail_next = count;
        s.fail_status = status;
    }
    /// Never answer (until reset): clients must time out.
    pub fn stall(&self, stall: bool) {
        self.0.lock().unwrap().stall = stall;
    }
    /// Lets the next `count` mutating requests (any method but GET and HEAD) take effect, then
    /// answers each with `status` (e.g. 500) and an empty body instead of the handler's answer:
    /// the write happened, the client is told it failed (a proxy or the backend failing after
    /// its commit).
    pub fn fail_after_apply(&self, count: u32, status: u16) {
        let mut s = self.0.lock().unwrap();
        s.fail_after_apply = count;
        s.fail_after_apply_status = status;
    }
    /// Lets the next `count` mutating requests take effect, then loses the answer: the status
    /// line and headers go out, the body is cut off by a reset of the stream (HTTP/2) or of the
    /// connection (HTTP/1.1). A client that reads the answer sees a transport error after the
    /// write was applied. (A 204 has no body to cut: it is turned into a 200 with one.)
    pub fn drop_after_apply(&self, count: u32) {
        self.0.lock().unwrap().drop_after_apply = count;
    }
    /// Back to normal (the counts of requests in flight and of answers lost carry on).
    pub fn reset(&self) {
        let mut s = self.0.lock().unwrap();
        let (in_flight, answers_lost) = (s.in_flight, s.answers_lost);
        *s = FaultState { in_flight, answers_lost, ..FaultState::default() };
    }
    /// How many writes took effect and then lost their answer ([`Faults::fail_after_apply`],
    /// [`Faults::drop_after_apply`]) so far.
    pub fn answers_lost(&self) -> u32 {
        self.0.lock().unwrap().answers_lost
    }
    /// The most requests the double has been answering at once (since the start or
    /// [`Faults::reset`]).
    pub fn max_in_flight(&self) -> u32 {
        self.0.lock().unwrap().max_in_flight
    }
}

#[derive(Clone)]
struct Middleware {
    log: RequestLog,
    faults: Faults,
}

async fn apply_faults_and_log(State(mw): State<Middleware>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let mutating = !matches!(method.as_str(), "GET" | "HEAD");
    let (latency, fail, stall, after_apply) = {
        let mut s = mw.faults.0.lock().unwrap();
        let fail = if s.fail_next > 0 {
            s.fail_next -= 1;
            Some(s.fail_status)
        } else {
            None
        };
        // A request answered with a fault before the handler never takes effect: only the
        // ones that reach the handler can lose their answer after it.
        let after_apply = if fail.is_some() || !mutating {
            None
        } else if s.fail_after_apply > 0 {
            s.fail_after_apply -= 1;
            s.answers_lost += 1;
            Some(AfterApply::Fail(s.fail_after_apply_status))
        } else if s.drop_after_apply > 0 {
            s.drop_after_apply -= 1;
            s.answers_lost += 1;
            Some(AfterApply::Drop)
        } else {
            None
        };
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        (s.latency, fail, s.stall, after_apply)
    };
    // Counts the request out however it ends (a client that gives up drops this future).
    let _in_flight = InFlight(mw.faults.clone());
    if stall {
        std::future::pending::<()>().await;
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let response = match fail {
        Some(status) => {
            (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), Body::empty()).into_response()
        }
        None => next.run(request).await,
    };
    // The log records what the handler did (the write happened), not what the client got.
    mw.log.push(LoggedRequest { method, path, query, status: response.status().as_u16() });
    match after_apply {
        None => response,
        Some(AfterApply::Fail(status)) => {
            (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), Body::empty()).into_response()
        }
        Some(AfterApply::Drop) => {
            let (mut parts, _) = response.into_parts();
            if matches!(parts.status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) {
                parts.status = StatusCode::OK;
            }
            parts.headers.remove(axum::http::header::CONTENT_LENGTH);
            let cut = futures::stream::once(async {
                Err::<axum::body::Bytes, _>(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "fault injection: answer lost after the write was applied",
                ))
            });
            Response::from_parts(parts, Body::from_stream(cut))
        }
    }
}

/// What happens to an answer after the handler ran.
enum AfterApply {
    Fail(u16),
    Drop,
}

struct InFlight(Faults);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.0.lock().unwrap();
        s.in_flight = s.in_flight.saturating_sub(1);
    }
}

/// A running double: where it listens, its log and its fault switches. Stops when dropped.
pub struct DoubleServer {
    /// Listening address.
    pub addr: SocketAddr,
    /// `https://127.0.0.1:<port>`.
    pub base_url: String,
    /// Requests received.
    pub log: RequestLog,
    /// Fault injection.
    pub faults: Faults,
    task: JoinHandle<()>,
}

impl Drop for DoubleServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves a double's router over HTTPS (certificate from `ca`) with logging and faults.
pub async fn start(router: Router, ca: &TestCa) -> std::io::Result<DoubleServer> {
    let log = RequestLog::default();
    let faults = Faults::default();
    let router = router.layer(axum::middleware::from_fn_with_state(
        Middleware { log: log.clone(), faults: faults.clone() },
        apply_faults_and_log,
    ));
    let (addr, task) = serve_https(router, ca).await?;
    Ok(DoubleServer { addr, base_url: format!("https://{addr}"), log, faults, task })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use axum::routing::post;

    use super::*;

    /// A double whose only route counts the writes it applied.
    async fn counter() -> (DoubleServer, Arc<AtomicU32>, reqwest::Client) {
        mqtt_dsp_operator::install_crypto_provider();
        let ca = TestCa::shared();
        let applied = Arc::new(AtomicU32::new(0));
        let count = applied.clone();
        let router = Router::new().route(
            "/count",
            post(move || {
                let count = count.clone();
                async move { count.fetch_add(1, Ordering::SeqCst).to_string() }
            })
            .get(|| async { "read" }),
        );
        let server = start(router, &ca).await.unwrap();
        let certificate = reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap();
        let http = reqwest::Client::builder().tls_certs_only([certificate]).build().unwrap();
        (server, applied, http)
    }

    #[tokio::test]
    async fn fail_after_apply_applies_the_write_and_answers_the_failure() {
        let (server, applied, http) = counter().await;
        let url = format!("{}/count", server.base_url);
        server.faults.fail_after_apply(1, 503);
        // Reads pass untouched and do not use the fault up.
        assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
        assert_eq!(http.post(&url).send().await.unwrap().status(), 503);
        assert_eq!(applied.load(Ordering::SeqCst), 1, "the write took effect");
        assert_eq!(http.post(&url).send().await.unwrap().status(), 200);
        assert_eq!(applied.load(Ordering::SeqCst), 2);
        assert_eq!(server.faults.answers_lost(), 1);
        // The log says what the handler did.
        assert_eq!(server.log.all().iter().map(|r| r.status).collect::<Vec<_>>(), [200, 200, 200]);
    }

    #[tokio::test]
    async fn drop_after_apply_applies_the_write_and_loses_the_answer() {
        let (server, applied, http) = counter().await;
        let url = format!("{}/count", server.base_url);
        server.faults.drop_after_apply(1);
        let lost = match http.post(&url).send().await {
            Ok(answer) => answer.text().await.is_err(),
            Err(_) => true,
        };
        assert!(lost, "the client must not get the answer");
        assert_eq!(applied.load(Ordering::SeqCst), 1, "the write took effect");
        assert_eq!(http.post(&url).send().await.unwrap().text().await.unwrap(), "1");
    }

    #[tokio::test]
    async fn a_request_failed_before_the_handler_does_not_use_up_an_after_apply_fault() {
        let (server, applied, http) = counter().await;
        let url = format!("{}/count", server.base_url);
        server.faults.fail_next(1, 500);
        server.faults.fail_after_apply(1, 502);
        assert_eq!(http.post(&url).send().await.unwrap().status(), 500);
        assert_eq!(applied.load(Ordering::SeqCst), 0);
        assert_eq!(http.post(&url).send().await.unwrap().status(), 502);
        assert_eq!(applied.load(Ordering::SeqCst), 1);
    }
}
