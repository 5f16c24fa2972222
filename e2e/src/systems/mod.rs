//! Launchers for the real systems the tests run against, besides the brokers: the Kubernetes
//! control plane (etcd, kube-apiserver, kube-controller-manager), Keycloak and EDC. Each is a
//! plain process on free 127.0.0.1 ports, TLS from [`TestCa::shared`](crate::tls::TestCa::shared),
//! started at most once per test binary and stopped by a watchdog when the binary ends
//! ([`crate::brokers::spawn_watched`]).
//!
//! The binaries and distributions come from `scripts/install-systems.sh` (Go module proxy, Maven
//! Central, Debian), which puts them under `target/systems/`; [`systems_dir`] finds that folder.
//! docs/dev-stack.md lists versions, start times and memory.

pub mod edc;
pub mod keycloak;
pub mod kubernetes;
pub mod proxy;
pub mod tcp_proxy;
pub mod vault;

use std::path::PathBuf;

/// `target/systems/` of this workspace (or `MQTT_DSP_SYSTEMS_DIR`): where
/// `scripts/install-systems.sh` puts the real systems.
pub fn systems_dir() -> PathBuf {
    match std::env::var_os("MQTT_DSP_SYSTEMS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join("systems"),
    }
}

/// Why a real system could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// The binaries are not installed.
    #[error("{what} is not installed under {path}: run `bash scripts/install-systems.sh`")]
    NotInstalled { what: &'static str, path: String },
    /// Starting or waiting for the process failed.
    #[error("{what} did not start: {detail}\n--- last lines of its log ---\n{log}")]
    Start { what: &'static str, detail: String, log: String },
    /// A local I/O step failed.
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The last `n` lines of a log file (for start failures).
pub fn log_tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A system started at most once per test binary: the first caller starts it, the others wait
/// for that start; a failed start is remembered and every later call gets the same error at once.
pub async fn start_once<T>(
    cell: &'static tokio::sync::OnceCell<Result<T, String>>,
    what: &'static str,
    start: impl std::future::Future<Output = Result<T, SystemError>>,
) -> Result<&'static T, SystemError> {
    let started = cell.get_or_init(|| async { start.await.map_err(|e| e.to_string()) }).await;
    started.as_ref().map_err(|e| SystemError::Start {
        what,
        detail: "the start in this test binary failed".into(),
        log: e.clone(),
    })
}
