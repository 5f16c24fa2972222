//! The operator as an EDC data plane for `Mqtt` / `Mqtt-PULL`: a control plane that routes a
//! transfer here gets, for every DSP transfer process, an MqttTransfer of its own, and the
//! consumer gets that transfer's credentials as the EDR.
//!
//! Legacy signaling (EDC 0.15–0.17), below `<publicUrl>/<connector profile>/<token>` (what
//! [`registration`] registers): `POST /start`, `POST /{processId}/suspend`,
//! `POST /{processId}/terminate`, `GET /{processId}/state`, `GET /check`. The token may instead
//! come as `Authorization: Bearer <token>` or `X-Api-Key` (then below
//! `<publicUrl>/<connector profile>`).
//!
//! Data Plane Signaling 1.0 (EDC 0.18), below `<publicUrl>/<connector profile>/dps`: see
//! [`dps`]. Both are always served; the registration says which one a control plane uses.
//!
//! The connector profile in the path limits a control plane to the assets of its own profile.
//!
//! The listener is its own (TLS only, own port): the control plane is its only client, and a
//! NetworkPolicy can admit the connector alone.

pub mod callback;
pub mod config;
pub mod dps;
pub mod flows;
pub mod message;
pub mod registration;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tracing::{debug, info};

pub use config::DataPlaneConfig;
use flows::Flows;
use message::Refusal;

/// The signaling endpoint's state.
pub struct DataPlane {
    /// The cluster side.
    pub flows: Flows,
    /// Connector profiles served (the first path segment).
    pub connectors: Vec<String>,
    /// The shared token.
    pub token: SecretString,
    /// Path prefix of the public URL (stripped when present, so the endpoint works behind a
    /// path-routing ingress and directly).
    pub path_prefix: String,
    /// Largest body accepted.
    pub max_body_bytes: usize,
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was right.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn refusal(r: Refusal) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, r.body())
}

fn header_token(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        return v.as_bytes().strip_prefix(b"Bearer ");
    }
    headers.get("x-api-key").map(|v| v.as_bytes())
}

/// The route a request names, after the connector segment and the authentication.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Start,
    Check,
    End(String, FlowEnd),
    State(String),
    /// Data Plane Signaling 1.0.
    Dps(DpsRoute),
}

/// What a control plane asks of a running flow, in either signaling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlowEnd {
    Suspend,
    Terminate,
    Complete,
}

/// A Data Plane Signaling 1.0 route (below `dps/`).
#[derive(Debug, PartialEq, Eq)]
enum DpsRoute {
    Token,
    Prepare,
    Start,
    End(String, FlowEnd),
    Resume(String),
    Started(String),
    Status(String),
}

fn route(method: &Method, rest: &[String]) -> Option<Route> {
    match (method, rest) {
        (&Method::POST, [s]) if s == "start" => Some(Route::Start),
        (&Method::GET, [s]) if s == "check" => Some(Route::Check),
        (&Method::POST, [id, s]) if s == "suspend" => Some(Route::End(id.clone(), FlowEnd::Suspend)),
        (&Method::POST, [id, s]) if s == "terminate" => Some(Route::End(id.clone(), FlowEnd::Terminate)),
        (&Method::GET, [id, s]) if s == "state" => Some(Route::State(id.clone())),
        _ => None,
    }
}

fn dps_route(method: &Method, rest: &[String]) -> Option<DpsRoute> {
    let [first, rest @ ..] = rest else { return None };
    if first == "token" {
        return (method == Method::POST && rest.is_empty()).then_some(DpsRoute::Token);
    }
    if first != "dataflows" {
        return None;
    }
    match (method, rest) {
        (&Method::POST, [s]) if s == "prepare" => Some(DpsRoute::Prepare),
        (&Method::POST, [s]) if s == "start" => Some(DpsRoute::Start),
        (&Method::POST, [id, s]) => match s.as_str() {
            "suspend" => Some(DpsRoute::End(id.clone(), FlowEnd::Suspend)),
            "resume" => Some(DpsRoute::Resume(id.clone())),
            "terminate" => Some(DpsRoute::End(id.clone(), FlowEnd::Terminate)),
            "started" => Some(DpsRoute::Started(id.clone())),
            "completed" => Some(DpsRoute::End(id.clone(), FlowEnd::Complete)),
            _ => None,
        },
        (&Method::GET, [id, s]) if s == "status" => Some(DpsRoute::Status(id.clone())),
        _ => None,
    }
}

impl DataPlane {
    /// Splits the path into the connector profile and the rest, authenticating the request.
    /// Never logs or echoes the path (it holds the token).
    fn authenticate(&self, uri: &Uri, headers: &HeaderMap) -> Result<(String, Vec<String>), Refusal> {
        let path = uri.path();
        let path = path.strip_prefix(self.path_prefix.as_str()).filter(|p| p.starts_with('/')).unwrap_or(path);
        let mut segments = Vec::new();
        for s in path.split('/').filter(|s| !s.is_empty()) {
            let decoded = percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map_err(|_| Refusal::bad_request("the path is not UTF-8"))?;
            segments.push(decoded.into_owned());
        }
        let not_found = || Refusal { status: 404, reason: "no such endpoint".into() };
        let (connector, rest) = segments.split_first().ok_or_else(not_found)?;
        if !self.connectors.contains(connector) {
            // The same answer as a wrong token would get: the connector names are no secret, but
            // a probe learns nothing either way.
            return Err(Refusal { status: 401, reason: "not authenticated".into() });
        }
        if rest.first().is_some_and(|s| s == "dps") {
            // Data Plane Signaling 1.0 authenticates per route (client credentials at the token
            // endpoint, a bearer JWT elsewhere): see `handle_dps`. ("dps" is no token: a token has
            // at least 32 characters.)
            return Ok((connector.clone(), rest.to_vec()));
        }
        let expected = self.token.expose_secret().as_bytes();
        if let Some((first, after)) = rest.split_first()
            && same_secret(first.as_bytes(), expected)
        {
            return Ok((connector.clone(), after.to_vec()));
        }
        match header_token(headers) {
            Some(given) if same_secret(given, expected) => Ok((connector.clone(), rest.to_vec())),
            _ => Err(Refusal { status: 401, reason: "not authenticated".into() }),
        }
    }
}

async fn handle(
    State(dp): State<Arc<DataPlane>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (connector, rest) = match dp.authenticate(&uri, &headers) {
        Ok(found) => found,
        Err(r) => {
            debug!(%method, status = r.status, "data plane: refused an unauthenticated request");
            return refusal(r);
        }
    };
    let found = match rest.split_first() {
        Some((dps, after)) if dps == "dps" => dps_route(&method, after).map(Route::Dps),
        _ => route(&method, &rest),
    };
    let Some(route) = found else {
        return refusal(Refusal { status: 404, reason: format!("no {method} endpoint here") });
    };
    if let Route::Dps(r) = &route
        && *r != DpsRoute::Token
    {
        let key = dps::derived_key(dp.token.expose_secret(), "access");
        let bearer =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if bearer.is_none_or(|b| dps::verify_access_token(&key, b, &connector).is_err()) {
            debug!(%method, "data plane: refused a Data Plane Signaling request without a valid bearer");
            return dps_refusal(Refusal { status: 401, reason: "not authenticated".into() });
        }
    }
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > dp.max_body_bytes) {
        return refusal(Refusal {
            status: 413,
            reason: format!("the body is larger than {} bytes", dp.max_body_bytes),
        });
    }
    let body = match axum::body::to_bytes(body, dp.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return refusal(Refusal {
                status: 413,
                reason: format!("the body is larger than {} bytes", dp.max_body_bytes),
            });
        }
    };
    match route {
        Route::Dps(r) => handle_dps(&dp, &connector, r, &headers, &body).await,
        Route::Check => json_response(StatusCode::OK, serde_json::json!({})),
        Route::Start => {
            let message = match message::parse_start(&body) {
                Ok(m) => m,
                Err(r) => {
                    info!(connector, reason = r.reason, "data plane: refused a start");
                    return refusal(r);
                }
            };
            let started = std::time::Instant::now();
            match dp.flows.start(&message, &connector).await {
                Ok(data_address) => {
                    info!(
                        connector,
                        process = message.process_id,
                        dataset = message.dataset_id,
                        ms = started.elapsed().as_millis() as u64,
                        "data plane: data flow started"
                    );
                    json_response(StatusCode::OK, message::start_response(message::edr(&data_address)))
                }
                Err(r) => {
                    info!(connector, process = message.process_id, reason = r.reason, "data plane: start failed");
                    refusal(r)
                }
            }
        }
        Route::End(id, end) => match end_flow(&dp, &connector, &id, end).await {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(r) => refusal(r),
        },
        Route::State(id) => match check_path_id(&id) {
            Err(r) => refusal(r),
            Ok(()) => match dp.flows.state(&id).await {
                Ok(state) => json_response(StatusCode::OK, message::state_response(&id, state)),
                Err(r) => refusal(r),
            },
        },
    }
}

/// Suspends or ends flow `id` as the control plane asked, once its id is checked; answers once
/// the controller has revoked access.
async fn end_flow(dp: &DataPlane, connector: &str, id: &str, end: FlowEnd) -> Result<(), Refusal> {
    check_path_id(id)?;
    let done = match end {
        FlowEnd::Suspend => dp.flows.suspend(id).await.map(|()| "suspended"),
        FlowEnd::Terminate => dp.flows.terminate(id).await.map(|()| "terminated"),
        FlowEnd::Complete => dp.flows.complete(id).await.map(|()| "completed"),
    }?;
    info!(connector, process = id, "data plane: data flow {done}");
    Ok(())
}

fn dps_refusal(r: Refusal) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, dps::error_body(&r))
}

/// A Data Plane Signaling 1.0 request, authenticated (but for the token endpoint, which checks
/// the client credentials itself).
async fn handle_dps(dp: &DataPlane, connector: &str, route: DpsRoute, headers: &HeaderMap, body: &[u8]) -> Response {
    let flow_id = |id: &str| check_path_id(id).map(|()| id.to_owned());
    let notification = |id: &str| dps::parse_notification(body).and_then(|()| flow_id(id));
    match route {
        DpsRoute::Token => {
            let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
            match dps::client_credentials(authorization, body) {
                Ok((id, secret))
                    if id == connector && same_secret(secret.as_bytes(), dp.token.expose_secret().as_bytes()) =>
                {
                    let key = dps::derived_key(dp.token.expose_secret(), "access");
                    json_response(StatusCode::OK, dps::token_response(&dps::issue_access_token(&key, connector)))
                }
                Ok(_) => {
                    debug!(connector, "data plane: refused a token request with wrong client credentials");
                    json_response(StatusCode::UNAUTHORIZED, serde_json::json!({"error": "invalid_client"}))
                }
                Err((status, body)) => {
                    json_response(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST), body)
                }
            }
        }
        DpsRoute::Prepare => dps_refusal(Refusal::bad_request(
            "prepare is a consumer data plane's step; this is a provider data plane for Mqtt-PULL",
        )),
        DpsRoute::Start => {
            let message = match dps::parse_start(body) {
                Ok(m) => m,
                Err(r) => {
                    info!(connector, reason = r.reason, "data plane: refused a start (DPS 1.0)");
                    return dps_refusal(r);
                }
            };
            let started = std::time::Instant::now();
            match dp.flows.start(&message, connector).await {
                Ok(address) => {
                    info!(
                        connector,
                        process = message.process_id,
                        dataset = message.dataset_id,
                        ms = started.elapsed().as_millis() as u64,
                        "data plane: data flow started (DPS 1.0)"
                    );
                    let answer = dps::status_message(&message.process_id, "STARTED", Some(dps::data_address(&address)));
                    json_response(StatusCode::OK, answer)
                }
                Err(r) => {
                    info!(connector, process = message.process_id, reason = r.reason, "data plane: start failed");
                    dps_refusal(r)
                }
            }
        }
        DpsRoute::Resume(id) => match notification(&id) {
            Err(r) => dps_refusal(r),
            Ok(id) => match dp.flows.resume(&id, connector).await {
                Ok(address) => {
                    info!(connector, process = id, "data plane: data flow resumed (DPS 1.0)");
                    json_response(
                        StatusCode::OK,
                        dps::status_message(&id, "STARTED", Some(dps::data_address(&address))),
                    )
                }
                Err(r) => dps_refusal(r),
            },
        },
        DpsRoute::End(id, end) => match dps::parse_notification(body) {
            Err(r) => dps_refusal(r),
            Ok(()) => match end_flow(dp, connector, &id, end).await {
                Ok(()) => StatusCode::OK.into_response(),
                Err(r) => dps_refusal(r),
            },
        },
        // The consumer data plane's notification: a provider data plane has nothing to do but
        // to know the flow.
        DpsRoute::Started(id) => match notification(&id) {
            Err(r) => dps_refusal(r),
            Ok(id) => match dp.flows.state(&id).await {
                Ok(_) => StatusCode::OK.into_response(),
                Err(r) => dps_refusal(r),
            },
        },
        DpsRoute::Status(id) => match flow_id(&id) {
            Err(r) => dps_refusal(r),
            Ok(id) => match dp.flows.state(&id).await {
                Ok(state) => json_response(
                    StatusCode::OK,
                    serde_json::json!({"dataFlowId": id, "state": dps::spec_state(state)}),
                ),
                Err(r) => dps_refusal(r),
            },
        },
    }
}

fn check_path_id(id: &str) -> Result<(), Refusal> {
    message::check_id("processId", id, message::MAX_ID_LEN)
}

/// The router (tests drive it directly, or serve it on a test certificate).
pub fn router(dp: Arc<DataPlane>) -> Router {
    Router::new().fallback(handle).with_state(dp)
}

/// A rustls server configuration from PEM certificate chain and key.
pub fn server_tls(cert_pem: &str, key_pem: &str) -> Result<Arc<rustls::ServerConfig>, String> {
    let (certs, key) = crate::listener::pem_chain_and_key(cert_pem.as_bytes(), key_pem.as_bytes())?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key do not fit: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    crate::listener::serve("data plane", listener, router, Some(tls), shutdown).await
}

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    /// A credential (token, certificate, key) could not be read.
    #[error("dataPlane.{what}: {source}")]
    Credential {
        /// Which.
        what: &'static str,
        /// Why.
        #[source]
        source: crate::credentials::CredentialError,
    },
    /// The TLS material is unusable, or the token too short.
    #[error("dataPlane: {0}")]
    Invalid(String),
    /// The listen address could not be bound.
    #[error("dataPlane.listen: cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// Starts the signaling endpoint and the registration loops; they end when `shutdown` flips to
/// true. Returns the bound address.
pub async fn start(
    client: kube::Client,
    config: Arc<crate::config::Config>,
    operator_namespace: &str,
    watch_namespace: Option<String>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<SocketAddr>, DataPlaneError> {
    let Some(dp_config) = config.data_plane.clone() else { return Ok(None) };
    let read = |what: &'static str, c: crate::config::CredentialRef| {
        let client = client.clone();
        let ns = operator_namespace.to_owned();
        async move {
            crate::credentials::resolve(&c, Some(&client), &ns)
                .await
                .map_err(|source| DataPlaneError::Credential { what, source })
        }
    };
    let token = read("token", dp_config.token.clone()).await?;
    if token.expose_secret().len() < 32
        || !token.expose_secret().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(DataPlaneError::Invalid(
            "the token must be at least 32 characters of A-Z, a-z, 0-9, '-' and '_' (it is a URL path segment)".into(),
        ));
    }
    let cert = read("tls.certificate", dp_config.tls.certificate.clone()).await?;
    let key = read("tls.key", dp_config.tls.key.clone()).await?;
    let tls = server_tls(cert.expose_secret(), key.expose_secret()).map_err(DataPlaneError::Invalid)?;
    let listener = tokio::net::TcpListener::bind(dp_config.listen)
        .await
        .map_err(|source| DataPlaneError::Bind { addr: dp_config.listen, source })?;
    let addr = listener.local_addr().unwrap_or(dp_config.listen);
    let dp = Arc::new(DataPlane {
        flows: Flows {
            client: client.clone(),
            config: config.clone(),
            namespace: watch_namespace,
            start_timeout: std::time::Duration::from_secs(dp_config.start_timeout_seconds),
            poll: std::time::Duration::from_secs(1),
        },
        connectors: dp_config.registrations.keys().cloned().collect(),
        token: token.clone(),
        path_prefix: dp_config.public_url.path().trim_end_matches('/').to_owned(),
        max_body_bytes: dp_config.max_body_bytes,
    });
    let mut stop = shutdown.clone();
    tokio::spawn(serve_tls(listener, tls, router(dp.clone()), async move {
        let _ = stop.wait_for(|s| *s).await;
    }));
    info!(%addr, "data plane: serving Data Plane Signaling (legacy and 1.0) over TLS");
    // Callbacks go to the control planes' control APIs: trust what their registrations trust.
    let callback_http = registration::callback_client(&config, &dp_config, &client, operator_namespace)
        .await
        .map_err(DataPlaneError::Invalid)?;
    let mut targets = Vec::new();
    for (connector, registration) in &dp_config.registrations {
        let target = registration::Target::from_config(
            &config,
            &dp_config,
            connector,
            registration,
            &token,
            &client,
            operator_namespace,
        )
        .await
        .map_err(DataPlaneError::Invalid)?;
        targets.push(target);
    }
    // What the end reports need of each registration: its data plane id, and with Data Plane
    // Signaling 1.0 the Management API it registered through.
    let dps_callbacks = callback::DpsCallbacks {
        key: dps::CallbackKey::derive(token.expose_secret()),
        data_plane_ids: targets.iter().map(|t| (t.connector.clone(), t.id.clone())).collect(),
        management: targets.iter().filter_map(|t| Some((t.connector.clone(), t.management()?))).collect(),
    };
    tokio::spawn(callback::report_ends(
        client.clone(),
        dp.flows.namespace.clone(),
        callback_http,
        dps_callbacks,
        shutdown.clone(),
    ));
    for target in targets {
        tokio::spawn(registration::keep_registered(target, shutdown.clone()));
    }
    Ok(Some(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dp() -> DataPlane {
        DataPlane {
            flows: Flows {
                client: kube::Client::try_from(kube::Config::new("https://127.0.0.1:1".parse().unwrap())).unwrap(),
                config: Arc::new(crate::config::Config::default()),
                namespace: None,
                start_timeout: std::time::Duration::from_secs(1),
                poll: std::time::Duration::from_millis(10),
            },
            connectors: vec!["default".into()],
            token: SecretString::from("t0ken-0123456789-0123456789-0123456789"),
            path_prefix: "/signaling".into(),
            max_body_bytes: 1024,
        }
    }

    async fn call(method: Method, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (StatusCode, String) {
        use tower::ServiceExt;
        crate::install_crypto_provider();
        let mut request = axum::http::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = router(Arc::new(dp())).oneshot(request.body(Body::from(body)).unwrap()).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    const TOKEN: &str = "t0ken-0123456789-0123456789-0123456789";

    #[tokio::test]
    async fn check_answers_with_the_token_in_the_path_or_a_header_only() {
        let (s, _) = call(Method::GET, &format!("/signaling/default/{TOKEN}/check"), &[], vec![]).await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = call(Method::GET, &format!("/default/{TOKEN}/check"), &[], vec![]).await;
        assert_eq!(s, StatusCode::OK, "without the ingress prefix too");
        let (s, _) =
            call(Method::GET, "/signaling/default/check", &[("authorization", &format!("Bearer {TOKEN}"))], vec![])
                .await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = call(Method::GET, "/signaling/default/check", &[("x-api-key", TOKEN)], vec![]).await;
        assert_eq!(s, StatusCode::OK);
        for path in ["/signaling/default/check", "/signaling/default/wrong-token/check", "/signaling/other/x/check"] {
            let (s, body) = call(Method::GET, path, &[], vec![]).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
            assert!(!body.contains(TOKEN));
        }
        let (s, _) = call(Method::GET, "/signaling/default/check", &[("x-api-key", "t0ken")], vec![]).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "a prefix of the token");
    }

    #[tokio::test]
    async fn dps_calls_want_a_bearer_from_the_token_endpoint_and_bad_ones_are_refused_before_the_cluster() {
        let form = |id: &str, secret: &str| {
            format!("grant_type=client_credentials&client_id={id}&client_secret={secret}").into_bytes()
        };
        let (s, body) = call(Method::POST, "/signaling/default/dps/token", &[], form("default", TOKEN)).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let token: Value = serde_json::from_str(&body).unwrap();
        let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());
        assert_eq!(token["token_type"], "Bearer");
        for (id, secret) in [("default", "wrong"), ("other", TOKEN)] {
            let (s, body) = call(Method::POST, "/signaling/default/dps/token", &[], form(id, secret)).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{id}");
            assert!(body.contains("invalid_client") && !body.contains(TOKEN), "{body}");
        }
        let start = "/signaling/default/dps/dataflows/start";
        let (s, _) = call(Method::POST, start, &[], b"{}".to_vec()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "no bearer");
        let legacy = format!("Bearer {TOKEN}");
        let (s, _) = call(Method::POST, start, &[("authorization", &legacy)], b"{}".to_vec()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "the shared token itself");
        // The cluster client points nowhere: a refusal that needed it would be a 503.
        let (s, body) = call(Method::POST, start, &[("authorization", &bearer)], b"{not json".to_vec()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].as_str().unwrap().contains("not JSON"));
        let (s, body) =
            call(Method::POST, "/signaling/default/dps/dataflows/prepare", &[("authorization", &bearer)], vec![]).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        let (s, _) =
            call(Method::POST, "/signaling/default/dps/dataflows/a%0Ab/suspend", &[("authorization", &bearer)], vec![])
                .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "a control character in the id");
        let (s, _) =
            call(Method::DELETE, "/signaling/default/dps/dataflows/x/suspend", &[("authorization", &bearer)], vec![])
                .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = call(Method::POST, start, &[("authorization", &bearer)], vec![b' '; 2048]).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn bad_starts_are_refused_before_the_cluster_is_asked() {
        // The cluster client points nowhere: a refusal that needed it would be a 503.
        let start = format!("/default/{TOKEN}/start");
        let (s, body) = call(Method::POST, &start, &[], b"{not json".to_vec()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.contains("not JSON"), "{body}");
        let (s, body) = call(Method::POST, &start, &[], vec![b' '; 2048]).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        let wrong = serde_json::json!({"@type": "DataFlowStartMessage", "processId": "p", "datasetId": "d",
            "agreementId": "a", "participantId": "did:web:c", "flowType": "PUSH", "transferTypeDestination": "HttpData"});
        let (s, body) = call(Method::POST, &start, &[], wrong.to_string().into_bytes()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains("Mqtt-PULL"), "{body}");
        let (s, _) = call(Method::GET, &start, &[], vec![]).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = call(Method::POST, &format!("/default/{TOKEN}/a%0Ab/terminate"), &[], vec![]).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "a control character in the process id");
    }
}
