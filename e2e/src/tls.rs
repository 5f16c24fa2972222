//! The dev stack's own certificate authority and an HTTPS server for test doubles.
//!
//! Every double and broker in the dev stack serves TLS with a certificate from one CA generated
//! per run; clients under test trust exactly that CA. No test turns verification off.

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::task::JoinHandle;

/// A certificate authority for one test run. Clones share the same CA.
#[derive(Clone)]
pub struct TestCa {
    issuer: Arc<CertifiedIssuer<'static, KeyPair>>,
}

/// A server certificate and its key, PEM-encoded (the forms brokers' config files want).
pub struct ServerCert {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl TestCa {
    /// A fresh CA (ECDSA P-256).
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
        params.distinguished_name.push(DnType::CommonName, "mqtt-dsp-operator dev-stack CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("key generation");
        Self { issuer: Arc::new(CertifiedIssuer::self_signed(params, key).expect("self-signed CA")) }
    }

    /// The CA of this test process: the real systems started once per test binary (Kubernetes,
    /// Keycloak, EDC) serve certificates from it, so every test of the binary trusts them.
    pub fn shared() -> TestCa {
        static SHARED: std::sync::OnceLock<TestCa> = std::sync::OnceLock::new();
        SHARED.get_or_init(TestCa::new).clone()
    }

    /// A client certificate with this common name and organizations (Kubernetes reads the user
    /// from CN and the groups from O).
    pub fn client_cert(&self, common_name: &str, organizations: &[&str]) -> ServerCert {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
        params.distinguished_name.push(DnType::CommonName, common_name);
        for org in organizations {
            params.distinguished_name.push(DnType::OrganizationName, *org);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// A fresh key and a certificate for it, signed by this CA.
    fn sign(&self, params: CertificateParams) -> ServerCert {
        let key = KeyPair::generate().expect("key generation");
        let cert = params.signed_by(&key, &*self.issuer).expect("signing");
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    /// The CA certificate, PEM-encoded: what clients are told to trust.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `127.0.0.1`, `localhost` and `extra_names`.
    pub fn server_cert(&self, extra_names: &[&str]) -> ServerCert {
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        names.extend(extra_names.iter().map(|n| n.to_string()));
        let mut params = CertificateParams::new(names).expect("valid SANs");
        params.distinguished_name.push(DnType::CommonName, "dev-stack server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A rustls server configuration with a fresh server certificate (HTTP/1.1 and HTTP/2).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let cert = self.server_cert(&[]);
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_no_client_auth()
                .with_single_cert(vec![cert.cert_der], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_der)))
                .expect("server certificate");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `router` over HTTPS on a free loopback port until the returned task is aborted.
pub async fn serve_https(router: axum::Router, ca: &TestCa) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                // A client that gives up during the handshake is not the server's problem.
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper_util::service::TowerToHyperService::new(router);
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok((addr, task))
}
