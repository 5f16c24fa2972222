//! Prometheus metrics of the operator, served on `/metrics`.
//!
//! One registry for the process. Later layers (controllers, backends) register their families
//! here; this module only holds what exists from start-up on.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `mqtt_dsp_operator_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// Crate version.
    pub version: String,
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    /// Always 1, labelled with the version: lets dashboards tell which build runs.
    pub build_info: Family<BuildLabels, Gauge>,
    /// 1 while the operator is ready (configuration loaded, CRDs installed), else 0.
    pub ready: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mqtt_dsp_operator");
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register("build_info", "Build information (always 1)", build_info.clone());
        build_info.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        let ready = Gauge::default();
        registry.register("ready", "1 while the operator is ready to reconcile", ready.clone());
        Self { registry, build_info, ready }
    }
}

impl Metrics {
    /// The registry, for layers that add their own families.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
