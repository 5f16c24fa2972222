//! What the HTTP clients (EDC, Keycloak, Vault, RabbitMQ, EMQX) share: building a reqwest client
//! that trusts the profile's CA bundle and follows no redirects, sending with a timeout, and
//! mapping status codes to [`BackendError`]s.
//!
//! Redirects are never followed: every request carries an admin credential (`X-Api-Key`,
//! `X-Vault-Token`, a bearer token, basic auth), and a redirect would carry it to wherever the
//! `Location` points (reqwest drops `Authorization` on a cross-origin redirect, but not the
//! other headers). A 3xx answer is an error ([`BackendError::Redirected`]) that names where it
//! pointed, so the profile's URL can be set to the final address.

use std::time::Duration;

use reqwest::{RequestBuilder, Response, StatusCode};

use super::{BackendError, System};

/// Connection settings of one profile.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// Per-request timeout.
    pub timeout: Duration,
    /// PEM CA bundle that replaces the system roots, when set.
    pub ca_bundle_pem: Option<String>,
}

impl Default for HttpSettings {
    /// The configuration's defaults: 10 s, the system roots. (A derived default would be a zero
    /// timeout, which fails every request.)
    fn default() -> Self {
        Self { timeout: Duration::from_secs(10), ca_bundle_pem: None }
    }
}

/// A reqwest client for one profile: TLS verification on, the profile's CA bundle (only) when
/// given, the system roots otherwise, no redirects followed. Uses the process's rustls provider
/// (ring).
pub fn client(system: System, settings: &HttpSettings) -> Result<reqwest::Client, BackendError> {
    let mut builder = reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = &settings.ca_bundle_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| BackendError::Protocol {
            system,
            operation: "load",
            object: "CA bundle".into(),
            detail: format!("not a PEM certificate bundle: {e}"),
        })?;
        builder = builder.tls_certs_only(certs);
    }
    builder.build().map_err(|e| BackendError::Unreachable {
        system,
        operation: "build",
        object: "HTTP client".into(),
        source: Box::new(e),
    })
}

/// Sends a request; transport failures, timeouts and redirects (3xx) become errors, every other
/// status is returned.
pub async fn send(
    system: System,
    operation: &'static str,
    object: &str,
    timeout: Duration,
    request: RequestBuilder,
) -> Result<Response, BackendError> {
    let started = std::time::Instant::now();
    let result = request.send().await;
    let outcome = match &result {
        Ok(response) => response.status().as_str().to_owned(),
        Err(e) if e.is_timeout() => "timeout".to_owned(),
        Err(_) => "unreachable".to_owned(),
    };
    crate::metrics::observe_backend_call(system.as_str(), operation, &outcome, started.elapsed());
    let response = result.map_err(|e| {
        if e.is_timeout() {
            BackendError::Timeout { system, operation, object: object.to_owned(), timeout_seconds: timeout.as_secs() }
        } else {
            BackendError::Unreachable { system, operation, object: object.to_owned(), source: Box::new(e) }
        }
    })?;
    if response.status().is_redirection() {
        return Err(redirected(system, operation, object, &response));
    }
    Ok(response)
}

/// The error for a 3xx answer: where it pointed (origin and path only: a query could hold
/// anything), resolved against the request's URL.
fn redirected(system: System, operation: &'static str, object: &str, response: &Response) -> BackendError {
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .and_then(|l| response.url().join(l).ok())
        .map(|mut url| {
            url.set_query(None);
            url.set_fragment(None);
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        })
        .unwrap_or_else(|| "no usable Location".to_owned());
    BackendError::Redirected {
        system,
        operation,
        object: object.to_owned(),
        status: response.status().as_u16(),
        from: response.url().origin().ascii_serialization(),
        location,
    }
}

/// Maps a non-success status to an error. `message` is the system's own error text (already
/// extracted from its error body; never a secret).
pub fn status_error(
    system: System,
    operation: &'static str,
    object: &str,
    status: StatusCode,
    message: String,
) -> BackendError {
    let object = object.to_owned();
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            BackendError::Unauthorized { system, operation, object, status: status.as_u16() }
        }
        // "Too many requests" and "request timeout" say: later. They are not refusals.
        StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => {
            BackendError::Unavailable { system, operation, object, status: status.as_u16(), message }
        }
        s if s.is_client_error() => BackendError::Rejected { system, operation, object, status: s.as_u16(), message },
        s => BackendError::Unavailable { system, operation, object, status: s.as_u16(), message },
    }
}

/// The body of an error answer, bounded so that a huge HTML page does not end up in a condition.
pub async fn error_text(response: Response) -> String {
    const MAX: usize = 512;
    let text = response.text().await.unwrap_or_default();
    let text = text.trim();
    if text.len() <= MAX {
        text.to_owned()
    } else {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…", &text[..cut])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_answers_are_retried_and_refusals_are_not() {
        let err = |code: u16| {
            status_error(System::Connector, "create", "asset a", StatusCode::from_u16(code).unwrap(), String::new())
        };
        for code in [429, 408, 500, 502, 503, 504] {
            assert!(err(code).is_retryable(), "{code} is worth a retry");
        }
        for code in [400, 404, 409, 422] {
            assert!(!err(code).is_retryable(), "{code} is a refusal");
            assert_eq!(err(code).reason(), "Rejected");
        }
        assert_eq!(err(401).reason(), "Unauthorized");
        assert_eq!(err(429).reason(), "Unavailable");
    }

    /// A server on another port that records every request's credential headers.
    async fn recording_server() -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use std::sync::{Arc, Mutex};
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = seen.clone();
        let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
            let record = record.clone();
            async move {
                for name in ["x-api-key", "x-vault-token", "authorization"] {
                    if let Some(value) = headers.get(name) {
                        record.lock().unwrap().push(format!("{name}: {}", value.to_str().unwrap_or("?")));
                    }
                }
                "{}"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (addr, seen)
    }

    /// A server that answers every request with `status` to `location`.
    async fn redirecting_server(status: u16, location: String) -> std::net::SocketAddr {
        let app = axum::Router::new().fallback(move || {
            let location = location.clone();
            async move {
                (axum::http::StatusCode::from_u16(status).unwrap(), [(axum::http::header::LOCATION, location)], "moved")
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    #[tokio::test]
    async fn redirects_are_not_followed_and_carry_no_credential_elsewhere() {
        crate::install_crypto_provider();
        let (elsewhere, seen) = recording_server().await;
        let settings = HttpSettings::default();
        let client = client(System::SecretStore, &settings).unwrap();
        // The recording server itself sees headers (so silence below means something).
        let direct = client.get(format!("http://{elsewhere}/v1/secret/data/x")).header("X-Vault-Token", "direct");
        send(System::SecretStore, "read", "secret x", settings.timeout, direct).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), vec!["x-vault-token: direct"]);
        seen.lock().unwrap().clear();

        for status in [301, 302, 303, 307, 308] {
            let target = format!("http://{elsewhere}/stolen?token=abc#frag");
            let redirecting = redirecting_server(status, target).await;
            let requests = [
                client.post(format!("http://{redirecting}/management/v3/assets")).header("X-Api-Key", "edc-key"),
                client.get(format!("http://{redirecting}/v1/secret/data/x")).header("X-Vault-Token", "vault-token"),
                client.get(format!("http://{redirecting}/admin/realms/r/clients")).bearer_auth("admin-jwt"),
                client.get(format!("http://{redirecting}/api/users/u")).basic_auth("admin", Some("broker-pw")),
            ];
            for request in requests {
                let e = send(System::Connector, "create", "asset a", settings.timeout, request).await.unwrap_err();
                assert_eq!(e.reason(), "Redirected");
                assert!(!e.is_retryable(), "a redirect needs a configuration change");
                let text = e.to_string();
                assert!(text.contains(&format!("with a redirect ({status}) from http://{redirecting} to")), "{text}");
                assert!(text.contains(&format!("http://{elsewhere}/stolen")), "{text}");
                assert!(!text.contains("token=abc"), "the query is not repeated: {text}");
                assert!(text.contains("set the profile's URL"), "{text}");
            }
        }
        assert!(
            seen.lock().unwrap().is_empty(),
            "a credential went to the redirect target: {:?}",
            seen.lock().unwrap()
        );
    }
}
