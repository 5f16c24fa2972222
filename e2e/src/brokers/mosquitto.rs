//! Real Mosquitto 2 with the dynamic-security plugin, an `mqtts` listener and a `wss` listener.
//!
//! Two users exist from the start: `admin` (the operator's admin identity, allowed only on
//! `$CONTROL/dynamic-security/#`, as `mosquitto_ctrl dynsec init` makes it) and `publisher`
//! (a test identity that may publish anywhere, to feed consumers). Everything else is created
//! through the operator's client.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use serde_json::{Value, json};

use super::{free_ports, spawn_watched, stop_watched, wait_for_port};
use crate::tls::TestCa;

/// Where the dynamic-security plugin lives in Debian's package.
pub const DYNSEC_PLUGIN: &str = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so";

/// Password of the `admin` user.
pub const ADMIN_PASSWORD: &str = "dev-stack-admin-password";
/// Password of the `publisher` user.
pub const PUBLISHER_PASSWORD: &str = "dev-stack-publisher-password";

/// A running Mosquitto.
pub struct Mosquitto {
    /// Port of the MQTT-over-TLS listener.
    pub mqtts_port: u16,
    /// Port of the MQTT-over-WebSocket-Secure listener.
    pub wss_port: u16,
    /// The CA (PEM) that signed the listeners' certificate.
    pub ca_pem: String,
    /// Working directory (config, dynamic-security state, log).
    pub dir: PathBuf,
    child: Child,
    _tmp: tempfile::TempDir,
}

/// What [`Mosquitto::kill_and_restart`] did.
#[derive(Clone, Copy, Debug)]
pub struct Restart {
    /// From the kill until the listeners accepted connections again.
    pub gone: Duration,
    /// The kill left the persisted state unreadable (it hit a save).
    pub state_lost: bool,
    /// The state read just before the kill was put back.
    pub restored: bool,
}

/// Why Mosquitto could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The binary or the plugin is missing.
    #[error("Mosquitto is not installed ({0}); install it with `apt-get install mosquitto` (.ci/run does)")]
    NotInstalled(String),
    /// A step failed.
    #[error("starting Mosquitto failed: {0}")]
    Failed(String),
    /// I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Mosquitto {
    /// Whether Mosquitto and its plugin are installed here.
    pub fn installed() -> Result<(), LaunchError> {
        for path in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto_ctrl", DYNSEC_PLUGIN] {
            if !Path::new(path).exists() {
                return Err(LaunchError::NotInstalled(format!("{path} is missing")));
            }
        }
        Ok(())
    }

    /// Starts a Mosquitto with certificates from `ca`.
    pub fn start(ca: &TestCa) -> Result<Self, LaunchError> {
        // A free port can be taken by a parallel test between choosing and binding it: try
        // again with fresh ports before giving up.
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once(ca) {
                Ok(m) => return Ok(m),
                Err(LaunchError::Failed(e)) => last = Some(LaunchError::Failed(e)),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("three attempts"))
    }

    fn start_once(ca: &TestCa) -> Result<Self, LaunchError> {
        Self::installed()?;
        let tmp = tempfile::Builder::new().prefix("dev-stack-mosquitto-").tempdir()?;
        let dir = tmp.path().to_owned();
        let cert = ca.server_cert(&[]);
        std::fs::write(dir.join("server.crt"), &cert.cert_pem)?;
        std::fs::write(dir.join("server.key"), &cert.key_pem)?;
        std::fs::write(dir.join("ca.crt"), ca.cert_pem())?;
        write_dynsec_state(&dir)?;
        let [mqtts_port, wss_port] = free_ports();
        let d = dir.display();
        let config = format!(
            "# dev-stack Mosquitto (generated)\n\
             per_listener_settings false\n\
             allow_anonymous false\n\
             persistence false\n\
             user root\n\
             log_dest stderr\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             connection_messages true\n\
             plugin {DYNSEC_PLUGIN}\n\
             plugin_opt_config_file {d}/dynamic-security.json\n\
             listener {mqtts_port} 127.0.0.1\n\
             certfile {d}/server.crt\nkeyfile {d}/server.key\n\
             listener {wss_port} 127.0.0.1\n\
             protocol websockets\n\
             # Mosquitto 2.0.11 binds websockets listeners to IPv6 only without this.\n\
             socket_domain ipv4\n\
             certfile {d}/server.crt\nkeyfile {d}/server.key\n"
        );
        std::fs::write(dir.join("mosquitto.conf"), config)?;
        let conf = dir.join("mosquitto.conf");
        let mut child = spawn_watched(
            "/usr/sbin/mosquitto",
            &["-c", &conf.to_string_lossy()],
            &[],
            &dir.join("mosquitto.log"),
            "",
        )?;
        let up = wait_for_port(mqtts_port, Duration::from_secs(10)) && wait_for_port(wss_port, Duration::from_secs(5));
        if !up {
            stop_watched(&mut child);
            let log = std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default();
            return Err(LaunchError::Failed(format!("listeners did not open within 10 s; log:\n{log}")));
        }
        Ok(Self { mqtts_port, wss_port, ca_pem: ca.cert_pem(), dir, child, _tmp: tmp })
    }

    /// Kills the broker with SIGKILL (no chance to save anything) and starts it again on the same
    /// ports from what it had persisted: the dynamic-security state file.
    ///
    /// Mosquitto 2.0.11 rewrites that file in place after every change, so a kill during a save
    /// leaves it truncated, and a broker started from a truncated (even empty) file comes up
    /// without any client, the admin included: nobody can log in or repair it. That is the
    /// broker's own data loss, not the operator's; to go on testing the operator, the state read
    /// just before the kill is put back then (like restoring a backup) and the restart says so.
    pub fn kill_and_restart(&mut self) -> Result<Restart, LaunchError> {
        let started = std::time::Instant::now();
        let file = self.dir.join("dynamic-security.json");
        // Read between two saves (a read can catch one half written; with hundreds of clients
        // a save takes long enough for that to be likely).
        let before = self.try_dynsec_state().map(|state| state.to_string());
        if let Some(pid) = self.broker_pid() {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        let intact = std::fs::read_to_string(&file).is_ok_and(|t| serde_json::from_str::<Value>(&t).is_ok());
        let restored = match (&before, intact) {
            (Some(before), false) => {
                std::fs::write(&file, before)?;
                true
            }
            _ => false,
        };
        // The watchdog notices its child is gone within a second and exits.
        stop_watched(&mut self.child);
        let conf = self.dir.join("mosquitto.conf");
        let restarts = std::fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("mosquitto.log"))
            .count();
        let log = self.dir.join(format!("mosquitto.log.{restarts}"));
        for _ in 0..50 {
            let mut child = spawn_watched("/usr/sbin/mosquitto", &["-c", &conf.to_string_lossy()], &[], &log, "")?;
            if wait_for_port(self.mqtts_port, Duration::from_secs(2))
                && wait_for_port(self.wss_port, Duration::from_secs(2))
            {
                self.child = child;
                return Ok(Restart { gone: started.elapsed(), state_lost: !intact, restored });
            }
            // The old sockets may still be held for a moment: try again.
            stop_watched(&mut child);
        }
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        Err(LaunchError::Failed(format!("Mosquitto did not come back on its ports; log:\n{log}")))
    }

    /// The PID of the broker process itself (not of its watchdog): the one whose command line
    /// names this broker's configuration.
    pub fn broker_pid(&self) -> Option<u32> {
        let conf = self.dir.join("mosquitto.conf").to_string_lossy().into_owned();
        std::fs::read_dir("/proc").ok()?.filter_map(Result::ok).find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline);
            (cmdline.starts_with("/usr/sbin/mosquitto\0") && cmdline.contains(&conf)).then_some(pid)
        })
    }

    /// [`Mosquitto::dynsec_state`], or `None` while the file does not parse (half written, or
    /// truncated by a kill).
    pub fn try_dynsec_state(&self) -> Option<serde_json::Value> {
        for _ in 0..25 {
            if let Some(state) = std::fs::read_to_string(self.dir.join("dynamic-security.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
            {
                return Some(state);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }

    /// The dynamic-security state as the plugin saved it (it saves after every change).
    pub fn dynsec_state(&self) -> serde_json::Value {
        // Mosquitto rewrites the file in place: a read can catch it half written.
        let mut last_error = None;
        for _ in 0..50 {
            let text = std::fs::read_to_string(self.dir.join("dynamic-security.json")).expect("dynamic-security.json");
            match serde_json::from_str(&text) {
                Ok(state) => return state,
                Err(e) => last_error = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("dynamic-security.json stays unreadable: {last_error:?}")
    }

    /// A client (user) of the dynamic-security state.
    pub fn dynsec_client(&self, username: &str) -> Option<serde_json::Value> {
        let state = self.dynsec_state();
        state["clients"].as_array()?.iter().find(|c| c["username"] == username).cloned()
    }

    /// A role of the dynamic-security state.
    pub fn dynsec_role(&self, rolename: &str) -> Option<serde_json::Value> {
        let state = self.dynsec_state();
        state["roles"].as_array()?.iter().find(|r| r["rolename"] == rolename).cloned()
    }

    /// When the dynamic-security state was last saved: it changes with every write command.
    pub fn dynsec_saved_at(&self) -> std::time::SystemTime {
        std::fs::metadata(self.dir.join("dynamic-security.json")).and_then(|m| m.modified()).expect("mtime")
    }

    /// `mqtts://127.0.0.1:<port>`.
    pub fn mqtts_url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.mqtts_port)
    }

    /// `wss://127.0.0.1:<port>` (Mosquitto serves MQTT on any path).
    pub fn wss_url(&self) -> String {
        format!("wss://127.0.0.1:{}/mqtt", self.wss_port)
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        stop_watched(&mut self.child);
    }
}

/// Writes the initial dynamic-security state: `admin` from `mosquitto_ctrl dynsec init`, plus a
/// `publisher` client (its password hash made the same way) with a role that may publish anywhere.
fn write_dynsec_state(dir: &Path) -> Result<(), LaunchError> {
    let init = |file: &Path, user: &str, password: &str| -> Result<Value, LaunchError> {
        let out = std::process::Command::new("/usr/bin/mosquitto_ctrl")
            .args(["dynsec", "init"])
            .arg(file)
            .args([user, password])
            .output()?;
        if !out.status.success() {
            return Err(LaunchError::Failed(format!(
                "mosquitto_ctrl dynsec init: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let text = std::fs::read_to_string(file)?;
        serde_json::from_str(&text).map_err(|e| LaunchError::Failed(format!("dynsec state: {e}")))
    };
    let mut state = init(&dir.join("dynamic-security.json"), "admin", ADMIN_PASSWORD)?;
    let publisher = init(&dir.join("publisher.json"), "publisher", PUBLISHER_PASSWORD)?;
    std::fs::remove_file(dir.join("publisher.json"))?;
    let mut client = publisher["clients"][0].clone();
    client["roles"] = json!([{"rolename": "publisher"}]);
    client["textName"] = json!("dev-stack test publisher");
    state["clients"]
        .as_array_mut()
        .ok_or_else(|| LaunchError::Failed("dynsec state has no clients".into()))?
        .push(client);
    state["roles"].as_array_mut().ok_or_else(|| LaunchError::Failed("dynsec state has no roles".into()))?.push(json!({
        "rolename": "publisher",
        "acls": [{"acltype": "publishClientSend", "topic": "#", "allow": true}]
    }));
    std::fs::write(dir.join("dynamic-security.json"), serde_json::to_string_pretty(&state).unwrap_or_default())?;
    Ok(())
}
