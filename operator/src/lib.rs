//! mqtt-dsp-operator: makes MQTT data streams offerable and transferable in Dataspace Protocol
//! dataspaces (Factory-X ADR 012 "MQTT over DSP").
//!
//! Layout: `api` (CRD types), `config` (operator profiles), `run` (entry point), `server`
//! (health and metrics endpoints), `metrics`, `telemetry`, `crd` (generated CRDs).

pub mod api;
pub mod backends;
pub mod config;
pub mod controller;
pub mod converge;
pub mod crd;
pub mod credentials;
pub mod dataplane;
pub mod listener;
pub mod metrics;
pub mod plan;
pub mod refresh;
pub mod run;
pub mod server;
pub mod status;
pub mod telemetry;

/// Installs ring as the process-wide rustls crypto provider. Every TLS client of the operator
/// (kube, reqwest, rumqttc) uses the process default, and exactly one provider is compiled in:
/// two would make the first TLS connection panic. Idempotent.
pub fn install_crypto_provider() {
    // Fails only when a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
