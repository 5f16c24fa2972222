//! Test doubles of the external systems that cannot run on our machines: each an HTTPS server on
//! 127.0.0.1 with in-memory state tests can inspect, a request log, and fault injection.
//!
//! Doubles are strict like the real systems (wrong credentials → 401/403, unknown route → 404,
//! duplicates → 409, malformed bodies → 400 in the real error shape, the real status codes): a
//! double that accepts what the real system rejects makes every test above it worthless.
//! Each module cites what in `domain.md` it follows.

pub mod edc;
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
    /// Back to normal (the count of requests in flight carries on).
    pub fn reset(&self) {
        let mut s = self.0.lock().unwrap();
        let in_flight = s.in_flight;
        *s = FaultState { in_flight, ..FaultState::default() };
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
    let (latency, fail, stall) = {
        let mut s = mw.faults.0.lock().unwrap();
        let fail = if s.fail_next > 0 {
            s.fail_next -= 1;
            Some(s.fail_status)
        } else {
            None
        };
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        (s.latency, fail, s.stall)
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
    mw.log.push(LoggedRequest { method, path, query, status: response.status().as_u16() });
    response
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
