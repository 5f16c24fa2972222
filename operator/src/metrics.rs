//! Prometheus metrics of the operator, served on `/metrics`.
//!
//! One registry for the process. Later layers (controllers, backends) register their families
//! here; this module only holds what exists from start-up on.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::backends::Outcome;

/// Labels of the reconcile metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `MqttAsset` or `MqttTransfer`.
    pub kind: String,
    /// `ok` or the error reason.
    pub result: String,
}

/// Labels of the reconcile duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `MqttAsset` or `MqttTransfer`.
    pub kind: String,
}

/// Labels of per-transfer metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransferLabels {
    /// Namespace.
    pub namespace: String,
    /// MqttTransfer name.
    pub name: String,
}

/// Labels of `mqtt_dsp_operator_backend_writes`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// `connector`, `identity`, `secret-store`, `mosquitto`, `rabbitmq`, `emqx`.
    pub system: String,
    /// `created`, `updated`, `deleted`.
    pub operation: String,
}

/// Labels of `mqtt_dsp_operator_backend_request_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendCallLabels {
    /// `connector`, `identity`, `secret-store`, `mosquitto`, `rabbitmq`, `emqx`.
    pub system: String,
    /// The client's operation name (`get asset`, `create client`, …: a fixed set per system).
    pub operation: String,
    /// The HTTP status code (`200`, `404`, …), `ok`/`error` for Mosquitto's answers, or
    /// `timeout`/`unreachable` when no answer came.
    pub outcome: String,
}

/// Labels of `mqtt_dsp_operator_refreshes`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefreshLabels {
    /// `ok`, or the RFC 6749 error code of the refusal (`invalid_request`, `invalid_grant`,
    /// `unsupported_grant_type`, `invalid_client`, `slow_down` for 429,
    /// `temporarily_unavailable`).
    pub result: String,
}

/// Labels of `mqtt_dsp_operator_resources`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    /// `MqttAsset` or `MqttTransfer`.
    pub kind: String,
    /// The `Ready` condition's status: `True`, `False` or `Unknown` (also: no condition yet).
    pub ready: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Backend calls, shared by every client in the process (the clients are built before, and
/// independently of, the registry; a process has one set of backends).
static BACKEND_CALLS: LazyLock<HistogramFamily<BackendCallLabels>> = LazyLock::new(|| {
    Family::new_with_constructor((|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))) as fn() -> Histogram)
});

/// Records one call to an external system (every HTTP request and every Mosquitto command).
pub fn observe_backend_call(system: &str, operation: &str, outcome: &str, took: std::time::Duration) {
    let labels = BackendCallLabels { system: system.into(), operation: operation.into(), outcome: outcome.into() };
    BACKEND_CALLS.get_or_create(&labels).observe(took.as_secs_f64());
}

/// Something that refreshes gauges from live state just before a scrape.
type Collector = Box<dyn Fn(&Metrics) + Send + Sync>;

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
    /// Reconciles by kind and result.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// Reconcile duration by kind.
    pub reconcile_seconds: Family<KindLabels, Histogram>,
    /// Writes made to external systems (creates, updates, deletes).
    pub backend_writes: Family<WriteLabels, Counter>,
    /// When each active transfer's current token expires (Unix seconds).
    pub token_expiry: Family<TransferLabels, Gauge>,
    /// Resources by kind and `Ready` status (refreshed from the controllers' caches at scrape).
    pub resources: Family<ReadyLabels, Gauge>,
    /// 1 while this replica holds the leader Lease (or leader election is off and it runs the
    /// controllers), 0 while it stands by.
    pub leader: Gauge,
    /// Requests to the refresh endpoint by result.
    pub refreshes: Family<RefreshLabels, Counter>,
    /// Time to answer a refresh request (successful or not).
    pub refresh_seconds: Histogram,
    collectors: Mutex<HashMap<&'static str, Collector>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mqtt_dsp_operator");
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register("build_info", "Build information (always 1)", build_info.clone());
        build_info.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        let ready = Gauge::default();
        registry.register("ready", "1 while the operator is ready to reconcile", ready.clone());
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register("reconciles", "Reconciles by kind and result (ok or the error reason)", reconciles.clone());
        let reconcile_seconds = Family::<KindLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.001, 2.0, 16))) as fn() -> Histogram,
        );
        registry.register("reconcile_seconds", "Reconcile duration", reconcile_seconds.clone());
        let backend_writes = Family::<WriteLabels, Counter>::default();
        registry.register("backend_writes", "Writes made to external systems", backend_writes.clone());
        let token_expiry = Family::<TransferLabels, Gauge>::default();
        registry.register(
            "transfer_token_expiry_seconds",
            "When each active MqttTransfer's current access token expires (Unix time)",
            token_expiry.clone(),
        );
        registry.register(
            "backend_request_seconds",
            "Calls to external systems by system, operation and outcome (HTTP status, or timeout/unreachable)",
            BACKEND_CALLS.clone(),
        );
        let resources = Family::<ReadyLabels, Gauge>::default();
        registry.register("resources", "Resources by kind and Ready condition status", resources.clone());
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica runs the controllers (holds the leader Lease)",
            leader.clone(),
        );
        let refreshes = Family::<RefreshLabels, Counter>::default();
        registry.register(
            "refreshes",
            "Requests to the refresh endpoint by result (ok or the RFC 6749 error code)",
            refreshes.clone(),
        );
        let refresh_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register("refresh_seconds", "Time to answer a refresh request", refresh_seconds.clone());
        Self {
            registry,
            build_info,
            ready,
            reconciles,
            reconcile_seconds,
            backend_writes,
            token_expiry,
            resources,
            leader,
            refreshes,
            refresh_seconds,
            collectors: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Records one answered refresh request.
    pub fn observe_refresh(&self, result: &str, took: std::time::Duration) {
        self.refreshes.get_or_create(&RefreshLabels { result: result.into() }).inc();
        self.refresh_seconds.observe(took.as_secs_f64());
    }

    /// Records one reconcile.
    pub fn observe_reconcile(&self, kind: &str, took: std::time::Duration, error: Option<&str>) {
        let labels = ReconcileLabels { kind: kind.into(), result: error.unwrap_or("ok").into() };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_seconds.get_or_create(&KindLabels { kind: kind.into() }).observe(took.as_secs_f64());
    }

    /// Sets (or, with `None`, removes) a transfer's token expiry.
    pub fn set_token_expiry(&self, namespace: &str, name: &str, expires_at: Option<i64>) {
        let labels = TransferLabels { namespace: namespace.into(), name: name.into() };
        match expires_at {
            Some(at) => drop(self.token_expiry.get_or_create(&labels).set(at)),
            None => drop(self.token_expiry.remove(&labels)),
        }
    }

    /// Records a write to an external system.
    pub fn count_backend_write(&self, system: &str, outcome: Outcome) {
        let operation = match outcome {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Deleted => "deleted",
            Outcome::Unchanged | Outcome::Absent => return,
        };
        self.backend_writes.get_or_create(&WriteLabels { system: system.into(), operation: operation.into() }).inc();
    }

    /// Writes of one kind (`created`, `updated`, `deleted`) made to one external system so far.
    pub fn backend_writes(&self, system: &str, operation: &str) -> u64 {
        self.backend_writes.get_or_create(&WriteLabels { system: system.into(), operation: operation.into() }).get()
    }

    /// Total writes made to external systems so far.
    pub fn backend_write_total(&self) -> u64 {
        let mut total = 0;
        for system in ["connector", "identity", "secret-store", "mosquitto", "rabbitmq", "emqx"] {
            for operation in ["created", "updated", "deleted"] {
                total += self.backend_writes(system, operation);
            }
        }
        total
    }

    /// The registry, for layers that add their own families.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Sets the function, by name, that refreshes gauges from live state before every scrape
    /// (a restarted controller replaces its predecessor's).
    pub fn set_collector(&self, name: &'static str, collector: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.collectors.lock().expect("not poisoned").insert(name, Box::new(collector));
    }

    /// Sets the per-kind `Ready` counts (every status of the kind is written, zeros included).
    pub fn set_ready_counts(&self, kind: &str, ready: usize, not_ready: usize, unknown: usize) {
        for (status, n) in [("True", ready), ("False", not_ready), ("Unknown", unknown)] {
            let labels = ReadyLabels { kind: kind.into(), ready: status.into() };
            self.resources.get_or_create(&labels).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        for collect in self.collectors.lock().expect("not poisoned").values() {
            collect(self);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconcile_is_counted_by_result_and_timed_by_kind_alone() {
        let metrics = Metrics::default();
        metrics.observe_reconcile("MqttAsset", std::time::Duration::from_millis(3), None);
        metrics.observe_reconcile("MqttAsset", std::time::Duration::from_millis(5), Some("Unavailable"));
        let text = metrics.encode().unwrap();
        assert!(text.contains(r#"mqtt_dsp_operator_reconciles_total{kind="MqttAsset",result="ok"} 1"#), "{text}");
        assert!(text.contains(r#"mqtt_dsp_operator_reconciles_total{kind="MqttAsset",result="Unavailable"} 1"#));
        // One series per kind, with both reconciles in it; no empty label.
        assert!(text.contains(r#"mqtt_dsp_operator_reconcile_seconds_count{kind="MqttAsset"} 2"#), "{text}");
        assert!(!text.contains(r#"result="""#), "{text}");
    }
}
