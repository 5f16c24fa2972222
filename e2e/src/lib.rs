//! The dev stack of mqtt-dsp-operator: what tests, benchmarks and `make demo` run against when
//! no real cluster and no real connector, identity provider or secret store are at hand.
//!
//! Everything here is a test double and says so. Today: [`schema`], the API server's validation
//! of custom resources against their CRD, and [`tls`], the dev stack's CA and HTTPS server.

pub mod brokers;
pub mod consumer;
pub mod doubles;
pub mod logs;
pub mod schema;
pub mod tls;
