//! What the operator's public listeners (the refresh endpoint, the data plane's signaling
//! endpoint) share: a certificate chain and key from PEM, and serving an axum router over TLS
//! (or plain HTTP behind a TLS-terminating proxy) with bounded handshakes and header reads, each
//! request carrying its client's address ([`Peer`]).
//!
//! Hand-written because `axum::serve` has no TLS; this is the accept loop of hyper-util's own
//! examples with tokio-rustls in front (the same stack as the rest of the operator's TLS).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Extension;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{debug, warn};

/// An address that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// What the OS said.
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr`, with an error that names it.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, BindError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| BindError { addr, source })
}

/// The client's address (the TCP peer), set per connection.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// How long a TLS handshake, or a request's headers, may take.
const SLOW_CLIENT: Duration = Duration::from_secs(10);

/// A certificate chain and its private key from PEM (the key: PKCS#8, PKCS#1 or SEC1).
pub fn pem_chain_and_key(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("the certificate file holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("the key is not a PEM private key: {e}"))?;
    Ok((certs, key))
}

/// Serves `router` on `listener` until `shutdown` resolves: TLS with `tls`, plain HTTP without.
/// `name` goes into the log lines.
pub async fn serve(
    name: &'static str,
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    warn!("{name}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone().layer(Extension(Peer(peer))));
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            // A client that sends its headers slowly does not hold a connection open for long.
            builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(SLOW_CLIENT);
            let Some(acceptor) = acceptor else {
                let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(tcp), service).await;
                return;
            };
            match tokio::time::timeout(SLOW_CLIENT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service).await;
                }
                Ok(Err(e)) => debug!(%peer, "{name}: TLS handshake failed: {e}"),
                Err(_) => debug!(%peer, "{name}: TLS handshake took longer than {SLOW_CLIENT:?}"),
            }
        });
    }
}
