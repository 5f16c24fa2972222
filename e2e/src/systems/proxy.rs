//! An HTTPS reverse proxy in front of a real system, so that tests keep what they had with a
//! double: the request log (`server.log`: "no mutating request reached Keycloak" stays a fact
//! about the wire, not about the system's own records) and fault injection (`server.faults`: the
//! proxy answers a 5xx, stalls or delays without forwarding). The operator is configured with the
//! proxy's URL; tests inspect the system directly through its admin API.
//!
//! It is built on [`crate::doubles::start`], so the log and the faults are the doubles' own. Every
//! request is forwarded as it came (method, path, query, headers, body) to the upstream, with a
//! client that trusts the run's CA and follows no redirect; the answer comes back as the upstream
//! gave it. Two rewrites, as any reverse proxy makes them: `Host` names the upstream (Keycloak
//! builds its URLs and token issuers from it), and a `Location` pointing at the upstream points at
//! the proxy instead (Keycloak's 201 names the new client by URL), so a client that follows it
//! stays behind the proxy.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::doubles::DoubleServer;
use crate::tls::TestCa;

/// Bodies the systems behind the proxy exchange with the operator are small.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), and the ones the
/// HTTP client sets itself.
const NOT_FORWARDED: &[header::HeaderName] = &[
    header::HOST,
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

struct Upstream {
    /// `https://127.0.0.1:PORT`, no trailing slash.
    base_url: String,
    http: reqwest::Client,
}

/// Starts a proxy for `upstream` (`https://host:port`, no path) on a free 127.0.0.1 port, its
/// certificate and its trust in the upstream both from `ca`.
pub async fn start(upstream: &str, ca: &TestCa) -> std::io::Result<DoubleServer> {
    let certificate = reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).map_err(std::io::Error::other)?;
    let http = reqwest::Client::builder()
        .tls_certs_only([certificate])
        .redirect(reqwest::redirect::Policy::none())
        // Longer than any client under test waits: their own timeouts must decide.
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(std::io::Error::other)?;
    let upstream = Arc::new(Upstream { base_url: upstream.trim_end_matches('/').to_owned(), http });
    crate::doubles::start(Router::new().fallback(forward).with_state(upstream), ca).await
}

async fn forward(State(upstream): State<Arc<Upstream>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let proxy_base = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(|h| format!("https://{h}"));
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("proxy: reading the request body: {e}")).into_response(),
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if !NOT_FORWARDED.contains(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let answer = upstream
        .http
        .request(parts.method.clone(), format!("{}{path_and_query}", upstream.base_url))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            return (StatusCode::BAD_GATEWAY, format!("proxy: {} {path_and_query}: {e}", parts.method)).into_response();
        }
    };
    let status = answer.status();
    let mut headers = HeaderMap::new();
    for (name, value) in answer.headers() {
        if NOT_FORWARDED.contains(name) {
            continue;
        }
        let value = match (name == header::LOCATION, &proxy_base, value.to_str()) {
            (true, Some(proxy_base), Ok(location)) if location.starts_with(&upstream.base_url) => {
                HeaderValue::from_str(&location.replacen(&upstream.base_url, proxy_base, 1))
                    .unwrap_or_else(|_| value.clone())
            }
            _ => value.clone(),
        };
        headers.append(name.clone(), value);
    }
    let body = match answer.bytes().await {
        Ok(body) => body,
        Err(e) => return (StatusCode::BAD_GATEWAY, format!("proxy: reading the answer: {e}")).into_response(),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
