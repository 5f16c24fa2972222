//! The dev stack of mqtt-dsp-operator: what tests, benchmarks and `make demo` run against when
//! no real cluster and no real connector, identity provider or secret store are at hand.
//!
//! - [`apiserver`]: a test double of the Kubernetes API server (discovery, CRUD, patches, watches,
//!   finalizers, garbage collection, CRD validation) for the operator and the e2e suite;
//! - [`doubles`]: test doubles of Keycloak, Vault, EDC and EMQX (HTTPS, strict, inspectable,
//!   with fault injection);
//! - [`brokers`]: launchers for real Mosquitto and RabbitMQ;
//! - [`consumer`]: a test MQTT client;
//! - [`stack`]: all of it together with an operator configuration and the controllers running;
//! - [`inventory`]: every object the operator can have left in the stack's backends;
//! - [`schema`]: the API server's validation of custom resources against their CRD;
//! - [`tls`]: the run's CA and an HTTPS server;
//! - [`logs`]: capture of the run's tracing output for the secret leak check.
//!
//! Everything here is a test double or test tooling and says so; docs/dev-stack.md describes it.

pub mod apiserver;
pub mod brokers;
pub mod consumer;
pub mod doubles;
pub mod fixtures;
pub mod inventory;
pub mod logs;
pub mod schema;
pub mod stack;
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
