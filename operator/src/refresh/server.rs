//! Serves the refresh endpoint: `POST <publicUrl path>` and `POST <publicUrl path>/token`, on a
//! listener of its own (TLS when configured), with per-address rate limits and a bounded body.
//! Answers are RFC 6749 §5.1 token responses or §5.2 errors, always `Cache-Control: no-store`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use secrecy::ExposeSecret;
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::service::Refresher;
use super::{MAX_BODY_BYTES, OAuthError, parse_request};
use crate::config::{ListenerTls, RefreshSettings};
use crate::listener::Peer;
use crate::metrics::Metrics;

struct Endpoint {
    refresher: Refresher,
    metrics: Arc<Metrics>,
    per_address: DefaultKeyedRateLimiter<IpAddr>,
    per_transfer: DefaultKeyedRateLimiter<(String, String)>,
    paths: [String; 2],
}

/// The endpoint's router (tests drive it directly; [`serve`] adds the peer address).
pub fn router(settings: &RefreshSettings, refresher: Refresher, metrics: Arc<Metrics>) -> Router {
    let per_minute = |n: u32| Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
    let base = settings.public_url.path().trim_end_matches('/').to_owned();
    let endpoint = Arc::new(Endpoint {
        refresher,
        metrics,
        per_address: RateLimiter::keyed(per_minute(settings.rate_limit.per_address_per_minute)),
        per_transfer: RateLimiter::keyed(per_minute(settings.rate_limit.per_transfer_per_minute)),
        paths: [if base.is_empty() { "/".to_owned() } else { base.clone() }, format!("{base}/token")],
    });
    // Forget idle keys now and then, so the limiters' memory follows the active clients only.
    let weak = Arc::downgrade(&endpoint);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(endpoint) = weak.upgrade() else { break };
            endpoint.per_address.retain_recent();
            endpoint.per_transfer.retain_recent();
        }
    });
    Router::new().fallback(handle).with_state(endpoint)
}

async fn handle(State(endpoint): State<Arc<Endpoint>>, peer: Option<Extension<Peer>>, request: Request) -> Response {
    let started = Instant::now();
    let path = request.uri().path();
    if !endpoint.paths.iter().any(|p| p == path) {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    if request.method() != Method::POST {
        let mut response = error_response(&OAuthError::invalid_request("use POST"));
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let outcome = answer(&endpoint, peer.map(|Extension(Peer(addr))| addr.ip()), request).await;
    let result = match &outcome {
        Ok(_) => "ok",
        Err(e) => e.reason(),
    };
    endpoint.metrics.observe_refresh(result, started.elapsed());
    match outcome {
        Ok(response) => response,
        Err(e) => {
            debug!(result, status = e.status, "refresh refused: {}", e.description);
            error_response(&e)
        }
    }
}

async fn answer(endpoint: &Endpoint, ip: Option<IpAddr>, request: Request) -> Result<Response, OAuthError> {
    if let Some(ip) = ip {
        limit(&endpoint.per_address, &ip)?;
    }
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| OAuthError::too_large())?;
    let header = |name: header::HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let refresh = parse_request(parts.uri.query(), header(header::CONTENT_TYPE), &body)?;
    // Per transfer, counted once the token matched: a stranger who knows a transfer's name cannot
    // use up its consumer's budget.
    let gate = |transfer: &(String, String)| limit(&endpoint.per_transfer, transfer);
    let issued = endpoint.refresher.refresh(&refresh, header(header::AUTHORIZATION), gate).await?;
    let body = json!({
        "access_token": issued.access_token.expose_secret(),
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "refresh_token": issued.refresh_token.expose_secret(),
    });
    Ok(([(header::CACHE_CONTROL, "no-store"), (header::PRAGMA, "no-cache")], axum::Json(body)).into_response())
}

fn limit<K: std::hash::Hash + Eq + Clone>(limiter: &DefaultKeyedRateLimiter<K>, key: &K) -> Result<(), OAuthError> {
    limiter.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        OAuthError::too_many_requests(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
    })
}

/// The RFC 6749 §5.2 error body, with `WWW-Authenticate` on 401 and `Retry-After` on 429.
pub fn error_response(e: &OAuthError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = (
        status,
        [(header::CACHE_CONTROL, "no-store"), (header::PRAGMA, "no-cache")],
        axum::Json(json!({"error": e.code, "error_description": e.description})),
    )
        .into_response();
    let headers = response.headers_mut();
    if e.status == 401 {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(seconds) = e.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// The listener's TLS configuration: the configured certificate, read again when its files
/// change. Fails when the files cannot be read now (a start-up error, not a served one).
pub fn tls_config(tls: &ListenerTls) -> std::io::Result<Arc<rustls::ServerConfig>> {
    let resolver = Arc::new(ReloadingCert::load(tls)?);
    let watcher = Arc::downgrade(&resolver);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tick.tick().await;
            let Some(resolver) = watcher.upgrade() else { break };
            resolver.reload_if_changed();
        }
    });
    let mut config = rustls::ServerConfig::builder().with_no_client_auth().with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` on `listener` until `stop` turns true: TLS with `tls` (see [`tls_config`]) or
/// plain HTTP behind a TLS-terminating proxy.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: watch::Receiver<bool>,
) {
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    crate::listener::serve("refresh endpoint", listener, router, tls, stopped).await
}

/// The listener's certificate, read again when its files change (cert-manager renews the
/// mounted Secret in place).
#[derive(Debug)]
struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>)>,
}

impl ReloadingCert {
    fn load(tls: &ListenerTls) -> std::io::Result<Self> {
        let key = read_certified_key(&tls.cert_file, &tls.key_file)?;
        let stamp = stamp(&tls.cert_file, &tls.key_file);
        Ok(Self {
            cert_file: tls.cert_file.clone(),
            key_file: tls.key_file.clone(),
            current: RwLock::new((Arc::new(key), stamp)),
        })
    }

    fn reload_if_changed(&self) {
        let now = stamp(&self.cert_file, &self.key_file);
        if now.is_none() || self.current.read().expect("not poisoned").1 == now {
            return;
        }
        match read_certified_key(&self.cert_file, &self.key_file) {
            Ok(key) => {
                *self.current.write().expect("not poisoned") = (Arc::new(key), now);
                info!("refresh endpoint: serving the renewed certificate from {}", self.cert_file.display());
            }
            // Half-written files during a renewal: the next tick reads them whole.
            Err(e) => warn!("refresh endpoint: keeping the current certificate: {e}"),
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("not poisoned").0.clone())
    }
}

/// The later of the two files' modification times.
fn stamp(cert: &std::path::Path, key: &std::path::Path) -> Option<SystemTime> {
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some(modified(cert)?.max(modified(key)?))
}

fn read_certified_key(cert: &std::path::Path, key: &std::path::Path) -> std::io::Result<CertifiedKey> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    };
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let (certs, key_der) = crate::listener::pem_chain_and_key(&cert_pem, &key_pem)
        .map_err(|e| invalid(format!("{} / {}: {e}", cert.display(), key.display())))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| invalid(format!("{}: unsupported private key: {e}", key.display())))?;
    Ok(CertifiedKey::new(certs, signing))
}

#[cfg(test)]
mod tests {
    //! The request shapes refused before the cluster is asked (the rest: e2e/tests/refresh.rs).
    use super::*;
    use tower::ServiceExt;

    fn endpoint(per_address: u32) -> Router {
        crate::install_crypto_provider();
        let yaml = format!(
            "publicUrl: https://mqtt-dsp.example.com/refresh\nrateLimit: {{perAddressPerMinute: {per_address}}}"
        );
        let settings: RefreshSettings = serde_yaml::from_str(&yaml).unwrap();
        // A client of a cluster that is never reached: every request here is refused first.
        let kube = kube::Client::try_from(kube::Config::new("https://127.0.0.1:9".parse().unwrap())).unwrap();
        let config = Arc::new(crate::config::Config { refresh: Some(settings.clone()), ..Default::default() });
        let ctx = Arc::new(crate::controller::Context::new(
            kube,
            config,
            Arc::default(),
            crate::controller::Settings::default(),
            Arc::new(Metrics::default()),
        ));
        let metrics = ctx.metrics.clone();
        router(&settings, Refresher::new(ctx, None), metrics).layer(Extension(Peer(([10, 0, 0, 1], 40000).into())))
    }

    async fn send(router: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(axum::body::Body::from(body.to_owned()))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn only_post_on_the_public_path_and_its_token_suffix() {
        let router = endpoint(100);
        let (status, headers, _) = send(&router, "GET", "/refresh", "").await;
        assert_eq!(
            (status, headers.get(header::ALLOW).unwrap().to_str().unwrap()),
            (StatusCode::METHOD_NOT_ALLOWED, "POST")
        );
        assert_eq!(send(&router, "POST", "/elsewhere", "").await.0, StatusCode::NOT_FOUND);
        for path in ["/refresh", "/refresh/token"] {
            let (status, headers, body) = send(&router, "POST", path, "grant_type=password").await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
            assert_eq!(headers.get(header::CACHE_CONTROL).unwrap(), "no-store");
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["error"], "unsupported_grant_type");
        }
    }

    #[tokio::test]
    async fn an_oversized_body_is_refused_unread() {
        let router = endpoint(100);
        let body = format!("grant_type=refresh_token&refresh_token={}", "a".repeat(MAX_BODY_BYTES));
        let (status, _, text) = send(&router, "POST", "/refresh", &body).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(text.contains("\"invalid_request\"") && !text.contains("aaaa"), "{text}");
    }

    #[tokio::test]
    async fn a_client_address_over_its_limit_gets_429_with_retry_after() {
        let router = endpoint(2);
        for _ in 0..2 {
            assert_eq!(send(&router, "POST", "/refresh", "grant_type=x").await.0, StatusCode::BAD_REQUEST);
        }
        let (status, headers, body) = send(&router, "POST", "/refresh", "grant_type=x").await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = headers.get(header::RETRY_AFTER).unwrap().to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert!(body.contains("slow_down"), "{body}");
    }
}
