//! mqtt-dsp-operator: makes MQTT data streams offerable and transferable in Dataspace Protocol
//! dataspaces (Factory-X ADR 012 "MQTT over DSP").

pub mod api;
pub mod crd;
pub mod config;
