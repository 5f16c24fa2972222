//! Real Keycloak (the Quarkus distribution from Maven Central, `e2e/systems/keycloak/install.sh`),
//! started once per test binary with [`Keycloak::shared`].
//!
//! How it runs:
//! - `kc.sh start --optimized` (the install ran `kc.sh build` once), HTTPS only on a free
//!   127.0.0.1 port with a certificate from [`TestCa::shared`] (SANs `localhost` and `127.0.0.1`),
//!   the management interface (health) on a second free port, also HTTPS; a local cache (no
//!   cluster discovery); `--hostname-strict=false`, so URLs and token issuers follow the host a
//!   request used (`127.0.0.1` or `localhost`).
//! - The database is H2 on disk in a temporary directory, copied from the template the install
//!   made (schema, master realm and bootstrap admin already there: that saves about 15 s of every
//!   start). Keycloak makes its bootstrap admin only together with the master realm, so the
//!   admin's password is the installation's (`template/admin-password`), registered as a secret.
//! - Heap capped at 256 MiB (`JAVA_OPTS_APPEND`); docs/dev-stack.md has start time and RSS.
//!
//! Tests get a realm of their own with [`Keycloak::create_realm`]: realms isolate clients,
//! sessions and event logs, and one takes well under a second to create. Each realm holds the
//! operator's confidential service-account client with realm-management `manage-clients` and
//! nothing else (that role alone allows every Admin API call the operator makes: Keycloak lets
//! `manage-clients` list and view clients, and `keycloak_contract` proves it), admin events with
//! representations (the real server's record of the operator's writes) and `CLIENT_LOGIN` events
//! (its record of logins).
//!
//! The process-wide state is plain data (ports, paths, the child process): tests of one binary
//! run on different tokio runtimes, so HTTP clients are built per call.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::{SystemError, log_tail, systems_dir};
use crate::brokers::{free_ports, spawn_watched, wait_for_port};
use crate::tls::TestCa;

/// The Keycloak release `install.sh` installs.
pub const VERSION: &str = "26.5.6";

/// The bootstrap admin of the master realm.
pub const ADMIN_USER: &str = "admin";

const WHAT: &str = "Keycloak";
/// Slow machines (a Go build beside us) have needed 35 s; the usual start is 15 s.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// A running Keycloak, shared by all tests of a test binary.
pub struct Keycloak {
    /// Port of the HTTPS listener on 127.0.0.1.
    pub https_port: u16,
    /// Port of the management interface (health), HTTPS.
    pub management_port: u16,
    /// The CA (PEM) that signed Keycloak's certificate.
    pub ca_pem: String,
    /// Working directory: database, certificate, log.
    pub dir: PathBuf,
    admin_password: String,
    admin_token: Mutex<Option<(String, Instant)>>,
    log: PathBuf,
    _child: Mutex<Child>,
}

/// A realm made for a test by [`Keycloak::create_realm`].
#[derive(Clone, Debug)]
pub struct Realm {
    /// The realm's name (unique per call).
    pub name: String,
    /// `https://127.0.0.1:PORT`.
    pub base_url: String,
    /// `https://localhost:PORT`: for clients that check the certificate by DNS name only
    /// (RabbitMQ's Erlang HTTP client).
    pub localhost_base_url: String,
    /// The operator's client id.
    pub operator_client_id: String,
}

impl Realm {
    /// `{base}/realms/{realm}`: the `iss` of tokens fetched through [`Realm::base_url`].
    pub fn issuer(&self) -> String {
        format!("{}/realms/{}", self.base_url, self.name)
    }
    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/protocol/openid-connect/token", self.issuer())
    }
    /// The JWKS endpoint.
    pub fn jwks_url(&self) -> String {
        format!("{}/protocol/openid-connect/certs", self.issuer())
    }
    /// The JWKS endpoint by the name `localhost`.
    pub fn localhost_jwks_url(&self) -> String {
        format!("{}/realms/{}/protocol/openid-connect/certs", self.localhost_base_url, self.name)
    }
    /// The OIDC discovery document.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer())
    }
    /// `{base}/admin/realms/{realm}`: the realm's Admin API.
    pub fn admin_url(&self) -> String {
        format!("{}/admin/realms/{}", self.base_url, self.name)
    }
}

static SHARED: OnceCell<Result<Keycloak, String>> = OnceCell::const_new();

impl Keycloak {
    /// The Keycloak of this test binary, started on first use. A failed start is remembered:
    /// every later call gets the same error at once.
    pub async fn shared() -> Result<&'static Keycloak, SystemError> {
        super::start_once(&SHARED, WHAT, Self::start()).await
    }

    /// Where `install.sh` put the distribution.
    pub fn home() -> PathBuf {
        systems_dir().join(format!("keycloak-{VERSION}"))
    }

    /// Whether `install.sh` has run (the distribution, its build and the template database).
    pub fn installed() -> Result<PathBuf, SystemError> {
        let home = Self::home();
        for file in [".mqtt-dsp-installed", "template/keycloakdb.mv.db", "template/admin-password"] {
            if !home.join(file).is_file() {
                return Err(SystemError::NotInstalled { what: WHAT, path: home.display().to_string() });
            }
        }
        Ok(home)
    }

    async fn start() -> Result<Keycloak, SystemError> {
        mqtt_dsp_operator::install_crypto_provider();
        crate::logs::init();
        let home = Self::installed()?;
        let io = |what: &'static str| move |source| SystemError::Io { what, source };
        let admin_password =
            std::fs::read_to_string(home.join("template/admin-password")).map_err(io("reading the admin password"))?;
        crate::logs::register_secret(&admin_password);
        // A free port can be taken by a parallel test between choosing and binding it: try
        // again with fresh ports before giving up.
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once(&home, &admin_password).await {
                Ok(kc) => return Ok(kc),
                Err(e @ SystemError::Start { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("three attempts"))
    }

    async fn start_once(home: &Path, admin_password: &str) -> Result<Keycloak, SystemError> {
        let io = |what: &'static str| move |source| SystemError::Io { what, source };
        let started = Instant::now();
        let ca = TestCa::shared();
        let cert = ca.server_cert(&[]);
        // Kept after the test binary ends: the watchdog removes it once Keycloak has stopped.
        let dir =
            tempfile::Builder::new().prefix("keycloak-").tempdir().map_err(io("creating Keycloak's directory"))?.keep();
        std::fs::create_dir_all(dir.join("h2")).map_err(io("creating Keycloak's database directory"))?;
        std::fs::copy(home.join("template/keycloakdb.mv.db"), dir.join("h2/keycloakdb.mv.db"))
            .map_err(io("copying the template database"))?;
        std::fs::write(dir.join("tls.crt"), &cert.cert_pem).map_err(io("writing Keycloak's certificate"))?;
        std::fs::write(dir.join("tls.key"), &cert.key_pem).map_err(io("writing Keycloak's key"))?;

        let [https_port, management_port] = free_ports::<2>();
        let d = dir.display();
        let kc_sh = home.join("bin/kc.sh");
        let options = [
            "start".to_owned(),
            "--optimized".to_owned(),
            "--cache=local".to_owned(),
            "--http-enabled=false".to_owned(),
            "--http-host=127.0.0.1".to_owned(),
            format!("--https-port={https_port}"),
            format!("--http-management-port={management_port}"),
            format!("--https-certificate-file={d}/tls.crt"),
            format!("--https-certificate-key-file={d}/tls.key"),
            "--hostname-strict=false".to_owned(),
            format!("--db-url=jdbc:h2:file:{d}/h2/keycloakdb;NON_KEYWORDS=VALUE"),
        ];
        // kc.sh runs java as its child and forwards TERM to it; Keycloak writes scratch files
        // (vertx-cache, uploads) into its working directory, hence the `cd`.
        let command = format!(
            "cd {} && exec {} {}",
            quote(&d.to_string()),
            quote(&kc_sh.display().to_string()),
            options.iter().map(|o| quote(o)).collect::<Vec<_>>().join(" ")
        );
        let java_opts = format!(
            "-Xms64m -Xmx256m -Djava.io.tmpdir={d} -Dquarkus.transaction-manager.object-store.directory={d}/tx"
        );
        // After the watchdog's TERM (and KILL of kc.sh after 10 s), a java still running in
        // the directory is killed by its working directory, which names only this instance.
        let cleanup = format!(
            "for p in /proc/[0-9]*; do [ \"$(readlink $p/cwd)\" = {dir} ] && kill -9 ${{p#/proc/}} 2>/dev/null; done; rm -rf {dir}",
            dir = quote(&d.to_string())
        );
        let log = dir.join("keycloak.log");
        let child = spawn_watched("sh", &["-c", &command], &[("JAVA_OPTS_APPEND", java_opts)], &log, &cleanup)
            .map_err(io("spawning kc.sh"))?;
        let mut kc = Keycloak {
            https_port,
            management_port,
            ca_pem: ca.cert_pem(),
            dir,
            admin_password: admin_password.to_owned(),
            admin_token: Mutex::new(None),
            log,
            _child: Mutex::new(child),
        };
        match kc.wait_ready(started).await {
            Ok(()) => {
                tracing::info!(
                    https_port,
                    management_port,
                    seconds = started.elapsed().as_secs_f32(),
                    "Keycloak {VERSION} is ready"
                );
                Ok(kc)
            }
            Err(detail) => {
                let log = log_tail(&kc.log, 40);
                if let Ok(child) = kc._child.get_mut() {
                    crate::brokers::stop_watched(child);
                }
                Err(SystemError::Start { what: WHAT, detail, log })
            }
        }
    }

    /// Waits for `/health/ready` to say UP over TLS from our CA (so it is this instance, not
    /// another process that got the port).
    async fn wait_ready(&mut self, started: Instant) -> Result<(), String> {
        let http = self.http().map_err(|e| e.to_string())?;
        let url = format!("https://127.0.0.1:{}/health/ready", self.management_port);
        let port = self.management_port;
        tokio::task::spawn_blocking(move || wait_for_port(port, START_TIMEOUT)).await.map_err(|e| e.to_string())?;
        while started.elapsed() < START_TIMEOUT {
            if let Ok(Some(status)) = self._child.get_mut().map_err(|e| e.to_string())?.try_wait() {
                return Err(format!("kc.sh exited with {status}"));
            }
            if let Ok(response) = http.get(&url).send().await
                && response.status().is_success()
                && let Ok(body) = response.json::<Value>().await
                && body["status"] == "UP"
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(format!("not ready within {} s", START_TIMEOUT.as_secs()))
    }

    /// `https://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.https_port)
    }

    /// `https://localhost:PORT` (the certificate names both).
    pub fn localhost_base_url(&self) -> String {
        format!("https://localhost:{}", self.https_port)
    }

    /// Keycloak's own log (its console output).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An HTTP client that trusts exactly the run's CA.
    pub fn http(&self) -> Result<reqwest::Client, reqwest::Error> {
        let cert = reqwest::Certificate::from_pem(self.ca_pem.as_bytes())?;
        reqwest::Client::builder().tls_certs_only([cert]).timeout(Duration::from_secs(30)).build()
    }

    /// A master-realm admin token (the bootstrap admin's, through `admin-cli`), cached until
    /// shortly before it expires.
    pub async fn admin_token(&self) -> Result<String, AdminError> {
        if let Some((token, until)) = self.admin_token.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let response = self
            .http()
            .map_err(|e| admin_error("HTTP client", e))?
            .post(format!("{}/realms/master/protocol/openid-connect/token", self.base_url()))
            .form(&[
                ("grant_type", "password"),
                ("client_id", "admin-cli"),
                ("username", ADMIN_USER),
                ("password", self.admin_password.as_str()),
            ])
            .send()
            .await
            .map_err(|e| admin_error("admin login", e))?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| admin_error("admin login", e))?;
        let (Some(token), true) = (body["access_token"].as_str(), status.is_success()) else {
            return Err(admin_error("admin login", format!("{status}: {}", body["error"])));
        };
        crate::logs::register_secret(token);
        let lifetime = body["expires_in"].as_u64().unwrap_or(60);
        let until = Instant::now() + Duration::from_secs(lifetime.saturating_sub(10).max(1));
        *self.admin_token.lock().unwrap_or_else(|e| e.into_inner()) = Some((token.to_owned(), until));
        Ok(token.to_owned())
    }

    /// An Admin API request as the master realm's admin: `path` under `/admin/realms/` (e.g.
    /// `my-realm/clients`; empty for `/admin/realms` itself), with a JSON body or none; the status and the JSON answer
    /// (`Value::Null` when there is none).
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), AdminError> {
        let token = self.admin_token().await?;
        let http = self.http().map_err(|e| admin_error("HTTP client", e))?;
        let url = match path {
            "" => format!("{}/admin/realms", self.base_url()),
            path => format!("{}/admin/realms/{path}", self.base_url()),
        };
        let mut request = http.request(method, url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| admin_error("Admin API", e))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| admin_error("Admin API", e))?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// Creates a realm named `{prefix}-{random}` holding the operator's confidential client
    /// (`operator_client_id`, `operator_secret`) whose service account has realm-management
    /// `manage-clients` only; admin events (with representations) and `CLIENT_LOGIN` events on.
    pub async fn create_realm(
        &self,
        prefix: &str,
        operator_client_id: &str,
        operator_secret: &str,
    ) -> Result<Realm, AdminError> {
        crate::logs::register_secret(operator_secret);
        let name = format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let representation = json!({
            "realm": name,
            // The internal id is the name, so that admin events (`authDetails.realmId`) say
            // which realm a caller logged in to.
            "id": name,
            "enabled": true,
            "adminEventsEnabled": true,
            "adminEventsDetailsEnabled": true,
            "eventsEnabled": true,
            "enabledEventTypes": ["CLIENT_LOGIN"],
            "clients": [{
                "clientId": operator_client_id,
                "description": "mqtt-dsp-operator's own client (tests)",
                "enabled": true,
                "protocol": "openid-connect",
                "publicClient": false,
                "serviceAccountsEnabled": true,
                "standardFlowEnabled": false,
                "directAccessGrantsEnabled": false,
                "clientAuthenticatorType": "client-secret",
                "secret": operator_secret,
            }],
            "users": [{
                "username": format!("service-account-{}", operator_client_id.to_lowercase()),
                "enabled": true,
                "serviceAccountClientId": operator_client_id,
                "clientRoles": {"realm-management": ["manage-clients"]},
            }],
        });
        let (status, body) = self.admin(reqwest::Method::POST, "", Some(&representation)).await?;
        if status != 201 {
            return Err(admin_error("creating a realm", format!("{status}: {body}")));
        }
        Ok(Realm {
            name,
            base_url: self.base_url(),
            localhost_base_url: self.localhost_base_url(),
            operator_client_id: operator_client_id.to_owned(),
        })
    }
}

/// A failed Admin API step of the test helpers (not of the code under test).
#[derive(Debug, thiserror::Error)]
#[error("Keycloak Admin API, {what}: {detail}")]
pub struct AdminError {
    what: String,
    detail: String,
}

fn admin_error(what: &str, e: impl std::fmt::Display) -> AdminError {
    AdminError { what: what.to_owned(), detail: e.to_string() }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
