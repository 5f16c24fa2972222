//! The `dsp-mqtt.io/v1alpha1` API: `MqttAsset` (a provider's offer of an MQTT stream) and
//! `MqttTransfer` (one consumer's access to it, mirroring one DSP transfer process).
//!
//! Only types live here. Field doc comments are user documentation: they are what
//! `kubectl explain mqttasset.spec` prints. Validation that one object suffices for is in the
//! schema (patterns, enums, bounds) and in CEL rules; everything else is checked by the
//! controllers. Defaults that would make GitOps tools show drift are applied in code, never in
//! the schema.

mod asset;
mod common;
#[cfg(test)]
mod fixtures;
mod transfer;

pub use asset::*;
pub use common::*;
pub use transfer::*;

/// API group of both kinds.
pub const GROUP: &str = "dsp-mqtt.io";
/// API version of both kinds.
pub const VERSION: &str = "v1alpha1";
