//! The `mqtt-dsp-operator` binary: `run`, `crdgen`, `version`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mqtt_dsp_operator::{crd, run, telemetry};

/// Kubernetes operator that offers and transfers MQTT streams in Dataspace Protocol dataspaces
/// (Factory-X ADR 012 "MQTT over DSP").
#[derive(Parser, Debug)]
#[command(name = "mqtt-dsp-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator against the cluster (in-cluster service account, or KUBECONFIG).
    Run {
        /// Operator configuration file (profiles of connectors, identity providers, secret stores, brokers).
        #[arg(long, env = "MQTT_DSP_OPERATOR_CONFIG", default_value = "/etc/mqtt-dsp-operator/config.yaml")]
        config: PathBuf,
        /// Address for /healthz, /readyz and /metrics.
        #[arg(long, env = "MQTT_DSP_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// Log format.
        #[arg(long, env = "MQTT_DSP_OPERATOR_LOG_FORMAT", value_enum, default_value = "text")]
        log_format: telemetry::LogFormat,
        /// Seconds between reconciles of a healthy resource (drift repair), with ±10 % jitter.
        #[arg(long, env = "MQTT_DSP_OPERATOR_RESYNC_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
        resync_seconds: u64,
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "MQTT_DSP_OPERATOR_WATCH_NAMESPACE")]
        watch_namespace: Option<String>,
        /// Attempts at deleting an external object a backend refuses to delete before it is left in place.
        #[arg(long, env = "MQTT_DSP_OPERATOR_CLEANUP_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        cleanup_attempts: u32,
        /// Seconds between such attempts.
        #[arg(long, env = "MQTT_DSP_OPERATOR_CLEANUP_RETRY_SECONDS", default_value_t = 30)]
        cleanup_retry_seconds: u64,
        /// Most reconciles of one kind running at once (0: no bound).
        #[arg(long, env = "MQTT_DSP_OPERATOR_MAX_CONCURRENT_RECONCILES", default_value_t = 32)]
        max_concurrent_reconciles: u16,
        /// Run the controllers only while holding a Lease, so that several replicas never
        /// reconcile at once (`false`: run them at once; only for a single replica).
        #[arg(long, env = "MQTT_DSP_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
        leader_election: bool,
        /// Name of the leader-election Lease.
        #[arg(long, env = "MQTT_DSP_OPERATOR_LEASE_NAME", default_value = "mqtt-dsp-operator")]
        lease_name: String,
        /// Namespace of the Lease (default: POD_NAMESPACE, else the kubeconfig's namespace).
        #[arg(long, env = "MQTT_DSP_OPERATOR_LEASE_NAMESPACE")]
        lease_namespace: Option<String>,
        /// Seconds a leader's claim lasts without renewal: how long a standby waits after the
        /// leader dies before it takes over.
        #[arg(long, env = "MQTT_DSP_OPERATOR_LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..))]
        lease_duration_seconds: u64,
        /// Seconds before the claim runs out that the leader renews it (less than the duration).
        #[arg(long, env = "MQTT_DSP_OPERATOR_LEASE_GRACE_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        lease_grace_seconds: u64,
        /// OpenTelemetry collector to export the reconcile spans to over OTLP/HTTP, e.g.
        /// `http://otel-collector:4318` (off when unset).
        #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
        otlp_endpoint: Option<String>,
    },
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD into a directory.
    Crdgen {
        /// Directory to write `<plural>.<group>.yaml` files into (e.g. `crds/`). Default: stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the Markdown field reference (docs/crd-reference.md) instead of the CRDs.
        #[arg(long, conflicts_with = "out")]
        reference: bool,
    },
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    mqtt_dsp_operator::install_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("mqtt-dsp-operator {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Crdgen { reference: true, .. } => {
            print!("{}", crd::reference_markdown());
            ExitCode::SUCCESS
        }
        Command::Crdgen { out, .. } => match crdgen(out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config,
            listen,
            log_format,
            resync_seconds,
            watch_namespace,
            cleanup_attempts,
            cleanup_retry_seconds,
            max_concurrent_reconciles,
            leader_election,
            lease_name,
            lease_namespace,
            lease_duration_seconds,
            lease_grace_seconds,
            otlp_endpoint,
        } => {
            if lease_grace_seconds >= lease_duration_seconds {
                eprintln!(
                    "error: --lease-grace-seconds ({lease_grace_seconds}) must be less than --lease-duration-seconds ({lease_duration_seconds})"
                );
                return ExitCode::from(2);
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let settings = mqtt_dsp_operator::controller::Settings {
                resync: std::time::Duration::from_secs(resync_seconds),
                namespace: watch_namespace,
                cleanup_attempts,
                cleanup_retry: std::time::Duration::from_secs(cleanup_retry_seconds),
                max_concurrent_reconciles,
                ..Default::default()
            };
            let leader_election = leader_election.then_some(run::LeaderElection {
                lease_name,
                namespace: lease_namespace,
                duration_seconds: lease_duration_seconds,
                grace_seconds: lease_grace_seconds,
            });
            let options = run::RunOptions { config, listen, settings, leader_election };
            let result = runtime.block_on(async {
                // Inside the runtime: the OTLP exporter's batch processor may need it.
                let _telemetry = match telemetry::init(log_format, otlp_endpoint.as_deref()) {
                    Ok(guard) => guard,
                    Err(e) => return Err(Box::<dyn std::error::Error>::from(e)),
                };
                run::run(options).await.map_err(Box::<dyn std::error::Error>::from)
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{}", error_chain(e.as_ref()));
                    eprintln!("error: {}", error_chain(e.as_ref()));
                    let code = e.downcast_ref::<run::RunError>().map_or(3, run::RunError::exit_code);
                    ExitCode::from(u8::try_from(code).unwrap_or(1))
                }
            }
        }
    }
}

fn crdgen(out: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    match out {
        None => {
            for (_, c) in crd::all() {
                print!("---\n{}", crd::to_yaml(&c)?);
            }
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for (file, c) in crd::all() {
                std::fs::write(dir.join(file), crd::to_yaml(&c)?)?;
            }
        }
    }
    Ok(())
}

/// The error and its sources on one line each, so a user sees the root cause.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(&format!("\n  caused by: {s}"));
        source = s.source();
    }
    out
}
