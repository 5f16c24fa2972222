//! What the HTTP clients (EDC, Keycloak, Vault, RabbitMQ, EMQX) share: building a reqwest client
//! that trusts the profile's CA bundle, sending with a timeout, and mapping status codes to
//! [`BackendError`]s.

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
/// given, the system roots otherwise. Uses the process's rustls provider (ring).
pub fn client(system: System, settings: &HttpSettings) -> Result<reqwest::Client, BackendError> {
    let mut builder = reqwest::Client::builder().timeout(settings.timeout).connect_timeout(settings.timeout);
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

/// Sends a request; transport failures and timeouts become errors, every status is returned.
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
    result.map_err(|e| {
        if e.is_timeout() {
            BackendError::Timeout { system, operation, object: object.to_owned(), timeout_seconds: timeout.as_secs() }
        } else {
            BackendError::Unreachable { system, operation, object: object.to_owned(), source: Box::new(e) }
        }
    })
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
}
