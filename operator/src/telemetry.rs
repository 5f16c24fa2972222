//! Logging and tracing set-up: human-readable text by default, JSON lines for log pipelines, and
//! optionally the spans (one per reconcile, with the resource's kind, namespace and name) exported
//! over OTLP/HTTP (protobuf) to an OpenTelemetry collector.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP endpoint is not a URL.
    #[error("--otlp-endpoint {endpoint:?} is not an http:// or https:// URL")]
    Endpoint {
        /// What was given.
        endpoint: String,
    },
    /// The exporter could not be built.
    #[error("cannot set up the OTLP exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// Keeps the OTLP pipeline alive; dropping it flushes the spans not yet sent.
#[must_use = "dropping the guard stops the span export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: flushing the OTLP spans failed: {e}");
        }
    }
}

/// The OTLP/HTTP traces URL for an endpoint: as given when it already names `/v1/traces`, else
/// with that path appended (the OpenTelemetry convention for a collector's base URL).
pub fn traces_url(endpoint: &str) -> Result<String, TelemetryError> {
    let url = url::Url::parse(endpoint).map_err(|_| TelemetryError::Endpoint { endpoint: endpoint.into() })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(TelemetryError::Endpoint { endpoint: endpoint.into() });
    }
    let base = endpoint.trim_end_matches('/');
    Ok(if base.ends_with("/v1/traces") { base.to_owned() } else { format!("{base}/v1/traces") })
}

/// Installs the global subscriber. The filter comes from `RUST_LOG` (default `info`). With an
/// OTLP endpoint, spans also go there (batched, in the background).
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = match otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(traces_url(endpoint)?)
                .build()
                .map_err(TelemetryError::Exporter)?;
            let resource = opentelemetry_sdk::Resource::builder().with_service_name("mqtt-dsp-operator").build();
            Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
        }
        None => None,
    };
    let otel = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("mqtt-dsp-operator")));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // A second init (tests) is not an error worth failing for.
    let _ = match format {
        LogFormat::Text => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true).with_current_span(true)).try_init(),
    };
    Ok(TelemetryGuard { provider })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_url_appends_the_signal_path_once() {
        assert_eq!(traces_url("http://collector:4318").unwrap(), "http://collector:4318/v1/traces");
        assert_eq!(traces_url("http://collector:4318/").unwrap(), "http://collector:4318/v1/traces");
        assert_eq!(traces_url("https://c.example/v1/traces").unwrap(), "https://c.example/v1/traces");
        assert!(traces_url("collector:4318").is_err());
        assert!(traces_url("grpc://collector:4317").is_err());
    }
}
