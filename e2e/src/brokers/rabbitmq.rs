//! Real RabbitMQ 3.10 (Debian's package) with the MQTT, Web MQTT, management and OAuth 2.0
//! plugins: an `mqtts` listener, a `wss` listener and the management API over HTTPS, all on
//! loopback with certificates from the run's CA. Usernames and passwords come from the internal
//! database; JWTs are checked against an HTTPS JWKS (the Keycloak double's) when one is given.
//!
//! Startup takes 10–30 s, so one broker serves a whole test binary.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use super::mosquitto::LaunchError;
use super::{free_ports, spawn_watched, stop_watched, wait_for_port};
use crate::tls::TestCa;

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// Admin user of the management API.
pub const ADMIN_USER: &str = "admin";
/// Its password.
pub const ADMIN_PASSWORD: &str = "dev-stack-rabbitmq-admin-password";

/// OAuth 2.0 settings of the broker.
#[derive(Clone, Debug)]
pub struct OAuthSettings {
    /// HTTPS URL of the identity provider's JWKS.
    pub jwks_url: String,
    /// `auth_oauth2.resource_server_id`: the audience tokens must carry, the prefix of scopes.
    pub resource_server_id: String,
    /// `auth_oauth2.additional_scopes_key`: a claim whose values count as scopes.
    pub additional_scopes_key: String,
}

/// A running RabbitMQ.
pub struct RabbitMq {
    /// MQTT over TLS.
    pub mqtts_port: u16,
    /// MQTT over WebSocket Secure (path `/ws`).
    pub wss_port: u16,
    /// Management API over HTTPS.
    pub management_port: u16,
    /// The CA (PEM) that signed the listeners' certificate.
    pub ca_pem: String,
    /// Working directory.
    pub dir: PathBuf,
    epmd_port: u16,
    child: Child,
    _tmp: tempfile::TempDir,
}

impl RabbitMq {
    /// Whether RabbitMQ and its plugins are installed here.
    pub fn installed() -> Result<(), LaunchError> {
        if !std::path::Path::new(SERVER).exists() {
            return Err(LaunchError::NotInstalled(format!("{SERVER} is missing")));
        }
        Ok(())
    }

    /// Starts RabbitMQ with certificates from `ca` and, when given, OAuth 2.0.
    pub fn start(ca: &TestCa, oauth: Option<&OAuthSettings>) -> Result<Self, LaunchError> {
        // The node takes 10–30 s to bind the ports chosen for it; meanwhile a parallel test can
        // bind one of them. Try again with fresh ports before giving up.
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once(ca, oauth) {
                Ok(broker) => return Ok(broker),
                Err(LaunchError::Failed(e)) => {
                    eprintln!("RabbitMQ launch failed, trying again with other ports: {}", first_line(&e));
                    last = Some(LaunchError::Failed(e));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("three attempts"))
    }

    fn start_once(ca: &TestCa, oauth: Option<&OAuthSettings>) -> Result<Self, LaunchError> {
        Self::installed()?;
        let tmp = tempfile::Builder::new().prefix("dev-stack-rabbitmq-").tempdir()?;
        let dir = tmp.path().to_owned();
        let cert = ca.server_cert(&[]);
        std::fs::write(dir.join("server.crt"), &cert.cert_pem)?;
        std::fs::write(dir.join("server.key"), &cert.key_pem)?;
        std::fs::write(dir.join("ca.crt"), ca.cert_pem())?;
        let (mqtts_port, wss_port, ws_port, management_port, dist_port, epmd_port) = free_ports::<6>().into();
        let d = dir.display();
        let mut config = format!(
            "# dev-stack RabbitMQ (generated)\n\
             listeners.tcp = none\n\
             loopback_users = none\n\
             default_user = {ADMIN_USER}\ndefault_pass = {ADMIN_PASSWORD}\n\
             mqtt.listeners.tcp = none\n\
             mqtt.listeners.ssl.default = 127.0.0.1:{mqtts_port}\n\
             mqtt.allow_anonymous = false\n\
             ssl_options.cacertfile = {d}/ca.crt\nssl_options.certfile = {d}/server.crt\nssl_options.keyfile = {d}/server.key\n\
             ssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n\
             web_mqtt.tcp.ip = 127.0.0.1\nweb_mqtt.tcp.port = {ws_port}\n\
             web_mqtt.ssl.ip = 127.0.0.1\nweb_mqtt.ssl.port = {wss_port}\n\
             web_mqtt.ssl.certfile = {d}/server.crt\nweb_mqtt.ssl.keyfile = {d}/server.key\nweb_mqtt.ssl.cacertfile = {d}/ca.crt\n\
             management.ssl.ip = 127.0.0.1\nmanagement.ssl.port = {management_port}\n\
             management.ssl.certfile = {d}/server.crt\nmanagement.ssl.keyfile = {d}/server.key\nmanagement.ssl.cacertfile = {d}/ca.crt\n\
             # Connections appear in the management API's list after this interval (default 5 s).\n\
             collect_statistics_interval = 500\n"
        );
        match oauth {
            Some(o) => config.push_str(&format!(
                "auth_backends.1 = rabbit_auth_backend_oauth2\nauth_backends.2 = internal\n\
                 auth_oauth2.resource_server_id = {}\nauth_oauth2.additional_scopes_key = {}\n\
                 auth_oauth2.jwks_url = {}\nauth_oauth2.https.cacertfile = {d}/ca.crt\n\
                 auth_oauth2.https.peer_verification = verify_peer\n",
                o.resource_server_id, o.additional_scopes_key, o.jwks_url
            )),
            None => config.push_str("auth_backends.1 = internal\n"),
        }
        std::fs::write(dir.join("rabbitmq.conf"), config)?;
        std::fs::write(
            dir.join("enabled_plugins"),
            "[rabbitmq_mqtt,rabbitmq_web_mqtt,rabbitmq_management,rabbitmq_auth_backend_oauth2].\n",
        )?;
        let node = format!("rabbit-devstack-{mqtts_port}@localhost");
        let env = |k: &'static str, v: String| (k, v);
        let envs = [
            env("HOME", d.to_string()),
            env("RABBITMQ_NODENAME", node.clone()),
            env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
            env("RABBITMQ_DIST_PORT", dist_port.to_string()),
            // Distribution and epmd on loopback only.
            env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}".into()),
            env("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
            env("ERL_EPMD_PORT", epmd_port.to_string()),
            env("RABBITMQ_MNESIA_BASE", format!("{d}/mnesia")),
            env("RABBITMQ_LOG_BASE", format!("{d}/log")),
            env("RABBITMQ_CONFIG_FILE", format!("{d}/rabbitmq.conf")),
            env("RABBITMQ_ENABLED_PLUGINS_FILE", format!("{d}/enabled_plugins")),
            env("RABBITMQ_PLUGINS_EXPAND_DIR", format!("{d}/plugins-expand")),
            env("RABBITMQ_PID_FILE", format!("{d}/rabbitmq.pid")),
            env("RABBITMQ_LOGS", "-".into()),
        ];
        // The watchdog's child is the rabbitmq-server script, which runs the Erlang VM in the
        // background: a VM still booting can outlive the script's SIGKILL, so the VM named in the
        // pid file is killed too (only if it is still this node), then the epmd it started.
        let cleanup = format!(
            "p=$(cat {d}/rabbitmq.pid 2>/dev/null) && grep -q {node} /proc/$p/cmdline 2>/dev/null && kill -9 $p; \
             ERL_EPMD_PORT={epmd_port} epmd -kill >/dev/null 2>&1"
        );
        let child = spawn_watched(SERVER, &[], &envs, &dir.join("rabbitmq.log"), &cleanup)?;
        let up = wait_for_port(management_port, Duration::from_secs(90))
            && wait_for_port(mqtts_port, Duration::from_secs(10))
            && wait_for_port(wss_port, Duration::from_secs(10));
        let broker =
            Self { mqtts_port, wss_port, management_port, ca_pem: ca.cert_pem(), dir, epmd_port, child, _tmp: tmp };
        if !up {
            let log = broker.log();
            drop(broker);
            return Err(LaunchError::Failed(format!("listeners did not open within 90 s; log:\n{log}")));
        }
        // Something answering on a port is not proof that this node does: the node must say,
        // through its own management API, that it is `node` and listens on all three ports.
        let expected = [mqtts_port, wss_port, management_port];
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let seen = match overview(management_port, &broker.ca_pem) {
                Ok(o) if listens_on(&o, &node, &expected) => return Ok(broker),
                Ok(o) => format!("node {} listening on {:?}", o["node"], listener_ports(&o, &node)),
                Err(e) => e,
            };
            if std::time::Instant::now() >= deadline {
                let log = broker.log();
                drop(broker);
                return Err(LaunchError::Failed(format!(
                    "the management API on port {management_port} did not confirm node {node} on ports {expected:?} \
                     within 30 s (last: {seen}); log:\n{log}"
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `mqtts://127.0.0.1:<port>`.
    pub fn mqtts_url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.mqtts_port)
    }

    /// `wss://127.0.0.1:<port>/ws` (RabbitMQ's Web MQTT path).
    pub fn wss_url(&self) -> String {
        format!("wss://127.0.0.1:{}/ws", self.wss_port)
    }

    /// `https://127.0.0.1:<port>`: the management API.
    pub fn management_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.management_port)
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("rabbitmq.log")).unwrap_or_default()
    }
}

/// `GET /api/overview` as the admin, over TLS trusting only the run's CA. Blocking, like the rest
/// of the launcher; HTTP/1.0 so that the body is neither chunked nor kept alive.
fn overview(port: u16, ca_pem: &str) -> Result<serde_json::Value, String> {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{ADMIN_USER}:{ADMIN_PASSWORD}"));
    let header = format!("Authorization: Basic {auth}");
    let (status, body) = super::https_get(port, "/api/overview", &header, ca_pem, Duration::from_secs(5))?;
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("overview is not JSON: {e}"))
}

/// The ports `node` lists in an overview.
fn listener_ports(overview: &serde_json::Value, node: &str) -> Vec<u64> {
    let listeners = overview["listeners"].as_array().map(Vec::as_slice).unwrap_or_default();
    listeners.iter().filter(|l| l["node"] == node).filter_map(|l| l["port"].as_u64()).collect()
}

fn listens_on(overview: &serde_json::Value, node: &str, ports: &[u16]) -> bool {
    let listed = listener_ports(overview, node);
    overview["node"] == node && ports.iter().all(|p| listed.contains(&u64::from(*p)))
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        stop_watched(&mut self.child);
        // epmd outlives the node; stop the one this broker started.
        let _ = std::process::Command::new("epmd")
            .arg("-kill")
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_node_itself_listening_on_every_port_confirms_a_launch() {
        let overview = serde_json::json!({
            "node": "rabbit-devstack-1@localhost",
            "listeners": [
                {"node": "rabbit-devstack-1@localhost", "protocol": "mqtt/ssl", "port": 1},
                {"node": "rabbit-devstack-1@localhost", "protocol": "http/web-mqtt/ssl", "port": 2},
                {"node": "rabbit-devstack-1@localhost", "protocol": "https", "port": 3},
                {"node": "rabbit-other@localhost", "protocol": "https", "port": 4},
            ]
        });
        assert!(listens_on(&overview, "rabbit-devstack-1@localhost", &[1, 2, 3]));
        assert!(!listens_on(&overview, "rabbit-devstack-1@localhost", &[1, 2, 3, 4]), "port 4 is another node's");
        assert!(!listens_on(&overview, "rabbit-devstack-9@localhost", &[1, 2, 3]), "another node answered");
        assert!(!listens_on(&serde_json::json!({}), "rabbit-devstack-1@localhost", &[1]));
    }
}
