//! `make bench`, second part: the refresh endpoint's throughput and latency (docs/benchmarks.md).
//!
//! The dev stack (real Kubernetes API server, real Keycloak, real RabbitMQ, …) with N `oauth2`
//! transfers; the endpoint under test is a second refresh server over the stack's configuration
//! and backends, on a current-thread tokio runtime in a thread of its own: one core. C clients
//! (one per transfer) refresh in a loop for S seconds, each with the token its last answer
//! rotated to, over TLS. Reported: refreshes per second, latency p50/p90/p99/max, the server
//! thread's CPU time (so refreshes per CPU-second: what one core sustains when the identity
//! provider is not the limit), and the identity provider's own token rate at the same
//! concurrency (the floor every refresh pays).
//!
//! It is a benchmark, not a test: `make test` never runs it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::stack::{Cluster, DevStack, StackOptions, condition, wait_for};
use e2e::stats::{cpu_of, cpu_seconds, ms, percentile};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use mqtt_dsp_operator::api::{MqttAsset, MqttTransfer};
use mqtt_dsp_operator::controller::Context;
use mqtt_dsp_operator::metrics::Metrics;
use mqtt_dsp_operator::refresh::{consumer_auth::ConsumerVerifier, server, service::Refresher};
use serde_json::{Value, json};

type Failure = Box<dyn std::error::Error + Send + Sync>;

struct Options {
    transfers: usize,
    /// oauth2 transfers created at once for the provisioning measurement (at least `transfers`).
    provision: usize,
    seconds: u64,
    out: Option<PathBuf>,
}

impl Options {
    fn parse() -> Result<Self, Failure> {
        let mut o = Options { transfers: 20, provision: 200, seconds: 20, out: None };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--transfers" => o.transfers = value()?.parse()?,
                "--provision" => o.provision = value()?.parse()?,
                "--seconds" => o.seconds = value()?.parse()?,
                "--out" => o.out = Some(PathBuf::from(value()?)),
                "--help" | "-h" => {
                    println!(
                        "bench-refresh [--transfers N (20)] [--provision P (200)] [--seconds S (20)] [--out FILE]"
                    );
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other}").into()),
            }
        }
        Ok(o)
    }
}

fn main() -> std::process::ExitCode {
    e2e::stats::main_of("bench-refresh", Options::parse, |o| async { run(o).await.map(|()| true) })
}

fn progress(message: &str) {
    eprintln!("[bench-refresh {}] {message}", chrono::Utc::now().format("%H:%M:%S"));
}

/// The endpoint under test, on one thread.
struct Endpoint {
    url: String,
    tid: u32,
    stop: tokio::sync::watch::Sender<bool>,
}

/// Starts a refresh server over the stack's configuration and backends on a current-thread
/// runtime in a thread of its own.
fn start_endpoint(stack: &DevStack) -> Result<Endpoint, Failure> {
    let Cluster::Local(plane) = &stack.cluster else {
        return Err("the benchmark needs the local control plane".into());
    };
    let plane = *plane;
    let config = stack.config.clone();
    let backends = stack.backends.clone();
    let settings = config.refresh.clone().ok_or("the stack configures no refresh endpoint")?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async move {
            let client = plane.operator_client().await;
            let ctx = Arc::new(Context::new(
                client,
                Arc::new(config),
                backends,
                StackOptions::default().settings,
                Arc::new(Metrics::default()),
            ));
            let verifier = ConsumerVerifier::new(&settings.consumer_auth).expect("consumer auth");
            let router = server::router(&settings, Refresher::new(ctx.clone(), verifier), ctx.metrics.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
            let addr = listener.local_addr().expect("bound");
            let tid = std::fs::read_link("/proc/thread-self")
                .ok()
                .and_then(|p| p.file_name()?.to_str()?.parse::<u32>().ok())
                .unwrap_or(0);
            ready_tx.send((addr, tid)).expect("the bench waits");
            let tls = settings.tls.as_ref().map(|t| server::tls_config(t).expect("the stack's certificate"));
            server::serve(listener, router, tls, stop_rx).await;
        });
    });
    let (addr, tid) = ready_rx.recv_timeout(Duration::from_secs(30))?;
    Ok(Endpoint { url: format!("https://{addr}/refresh"), tid, stop })
}

async fn run(options: Options) -> Result<(), Failure> {
    let n = options.transfers.max(1);
    progress("starting the dev stack (Kubernetes, Keycloak, EDC, OpenBao, Mosquitto, RabbitMQ)");
    let stack = DevStack::start(StackOptions {
        rabbitmq: true,
        // The limits are not what is measured here.
        refresh_extra: "  rateLimit: {perTransferPerMinute: 1000000, perAddressPerMinute: 100000000}\n".into(),
        ..Default::default()
    })
    .await;
    let assets: Api<MqttAsset> = stack.api();
    let asset: MqttAsset = serde_json::from_value(json!({
        "apiVersion": "dsp-mqtt.io/v1alpha1", "kind": "MqttAsset", "metadata": {"name": "line-1"},
        "spec": {"endpoint": {"type": "mqtt-tls"}, "topics": ["factory/line-1/#"], "broker": "rabbitmq",
                 "auth": {"mode": "oauth2"}, "policy": {"access": {"participantIds": ["did:web:consumer.example.com"]}}},
    }))?;
    assets.create(&PostParams::default(), &asset).await?;
    wait_for(&assets, "line-1", Duration::from_secs(60), "Ready", |a| {
        a.status.as_ref().and_then(|s| condition(&s.conditions, "Ready")).is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    let provisioned = provision(&stack, options.provision.max(n)).await?;
    let transfers: Api<MqttTransfer> = stack.api();
    let secrets: Api<Secret> = stack.api();
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("t-{i}");
        wait_for(&transfers, &name, Duration::from_secs(120), "Active", |t| {
            t.status.as_ref().and_then(|s| s.phase).map(|p| format!("{p:?}")).as_deref() == Some("Active")
        })
        .await;
        let s = secrets.get(&name).await?;
        let token = s.data.as_ref().and_then(|d| d.get("refreshToken")).ok_or("no refresh token in the Secret")?;
        tokens.push(String::from_utf8(token.0.clone())?);
    }

    let endpoint = start_endpoint(&stack)?;
    let http = stack.http();
    progress(&format!("{n} clients refresh for {} s at {}", options.seconds, endpoint.url));
    // One warm-up refresh each (connections, JIT in Keycloak), not counted.
    for token in tokens.iter_mut() {
        *token = refresh(&http, &endpoint.url, token).await?.1;
    }
    let cpu_before = cpu_seconds(&format!("self/task/{}", endpoint.tid));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(options.seconds);
    let mut tasks = Vec::new();
    for token in tokens {
        let (http, url) = (http.clone(), endpoint.url.clone());
        tasks.push(tokio::spawn(async move {
            let (mut token, mut latencies, mut failures) = (token, Vec::new(), 0u64);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match refresh(&http, &url, &token).await {
                    Ok((_, next)) => {
                        latencies.push(t0.elapsed());
                        token = next;
                    }
                    Err(_) => failures += 1,
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (l, f) = task.await?;
        latencies.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_seconds(&format!("self/task/{}", endpoint.tid)) - cpu_before;
    latencies.sort();
    let done = latencies.len();

    // The floor: the identity provider's own client_credentials grants, same concurrency.
    progress("the identity provider's token rate at the same concurrency (the floor)");
    let idp = stack.backends.identity_providers.get("default").ok_or("no identity provider")?.clone();
    let owner = stack.owner("MqttTransfer", "t-0");
    let client_id = format!("dsp-mqtt-transfer-{}-t-0", stack.namespace);
    let secret = idp.client_secret(&client_id, &owner).await?;
    let floor_deadline = Instant::now() + Duration::from_secs(options.seconds.min(10));
    let floor_started = Instant::now();
    let mut floor_tasks = Vec::new();
    for _ in 0..n {
        let (idp, secret, client_id) = (idp.clone(), secret.clone(), client_id.clone());
        floor_tasks.push(tokio::spawn(async move {
            let mut count = 0u64;
            while Instant::now() < floor_deadline {
                if idp.issue_token(&client_id, &secret).await.is_ok() {
                    count += 1;
                }
            }
            count
        }));
    }
    let mut floor = 0;
    for task in floor_tasks {
        floor += task.await?;
    }
    let floor_rate = floor as f64 / floor_started.elapsed().as_secs_f64();

    // The Kubernetes side alone: the four requests of a refresh (transfer, Secret, asset read;
    // Secret replaced), same concurrency, with the operator's client.
    progress("the Kubernetes requests of a refresh alone, same concurrency");
    let operator = match &stack.cluster {
        Cluster::Local(plane) => plane.operator_client().await,
        Cluster::Kubeconfig => return Err("the benchmark needs the local control plane".into()),
    };
    let kube_deadline = Instant::now() + Duration::from_secs(options.seconds.min(10));
    let kube_started = Instant::now();
    let mut kube_tasks = Vec::new();
    for i in 0..n {
        let (transfers, assets, secrets): (Api<MqttTransfer>, Api<MqttAsset>, Api<Secret>) = (
            Api::namespaced(operator.clone(), &stack.namespace),
            Api::namespaced(operator.clone(), &stack.namespace),
            Api::namespaced(operator.clone(), &stack.namespace),
        );
        kube_tasks.push(tokio::spawn(async move {
            let (name, mut count) = (format!("t-{i}"), 0u64);
            while Instant::now() < kube_deadline {
                let ok = async {
                    transfers.get(&name).await?;
                    let mut secret = secrets.get(&name).await?;
                    assets.get("line-1").await?;
                    secret
                        .metadata
                        .annotations
                        .get_or_insert_with(Default::default)
                        .insert("bench.dsp-mqtt.io/touched".into(), count.to_string());
                    secrets.replace(&name, &PostParams::default(), &secret).await?;
                    Ok::<_, kube::Error>(())
                }
                .await;
                count += u64::from(ok.is_ok());
            }
            count
        }));
    }
    let mut kube_done = 0;
    for task in kube_tasks {
        kube_done += task.await?;
    }
    let kube_rate = kube_done as f64 / kube_started.elapsed().as_secs_f64();
    endpoint.stop.send_replace(true);

    let rate = done as f64 / elapsed.as_secs_f64();
    let report = format!(
        "# Refresh endpoint benchmark\n\n\
         {} ({} transfers, {n} clients each refreshing in a loop with its rotated token, {} s, TLS; \
         endpoint on a current-thread runtime: one core; real Keycloak {} and Kubernetes API server)\n\n\
         | measure | value |\n|---|---|\n\
         | refreshes answered 200 | {done} ({failures} failed) |\n\
         | refreshes per second | {rate:.1} |\n\
         | latency p50 / p90 / p99 / max | {} / {} / {} / {} |\n\
         | endpoint thread CPU | {cpu:.2} s of {:.1} s ({:.0} % of one core) |\n\
         | refreshes per CPU-second of the endpoint | {:.0} |\n\
         | identity provider alone (client_credentials grants per second, same concurrency) | {floor_rate:.1} |\n\
         | Kubernetes alone (a refresh's 3 reads and 1 Secret replace, per second, same concurrency) | {kube_rate:.1} |\n\n{}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        n,
        options.seconds,
        e2e::systems::keycloak::VERSION,
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
        elapsed.as_secs_f64(),
        100.0 * cpu / elapsed.as_secs_f64(),
        done as f64 / cpu.max(0.001),
        provisioned,
    );
    println!("{report}");
    if let Some(out) = &options.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(out, &report)?;
    }
    progress("tearing down");
    stack.teardown().await;
    Ok(())
}

/// The processes whose CPU the provisioning report shows, by the pattern their command line holds.
const PROCESSES: [(&str, &str); 5] = [
    ("Keycloak", "keycloak"),
    ("OpenBao", "bao server"),
    ("RabbitMQ", "beam.smp"),
    ("kube-apiserver", "kube-apiserver"),
    ("etcd", "/etcd"),
];

/// Backend calls the operator made so far, by system (`backend_request_seconds` counts).
fn backend_calls(stack: &DevStack) -> std::collections::BTreeMap<String, f64> {
    let mut calls = std::collections::BTreeMap::new();
    for line in stack.metrics.encode().unwrap_or_default().lines() {
        let Some(rest) = line.strip_prefix("mqtt_dsp_operator_backend_request_seconds_count{") else { continue };
        let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
        let system = labels.split(',').find_map(|l| l.strip_prefix("system=\"")).map(|s| s.trim_end_matches('"'));
        if let (Some(system), Ok(value)) = (system, value.trim().parse::<f64>()) {
            *calls.entry(system.to_owned()).or_default() += value;
        }
    }
    calls
}

/// Issue 17's oauth2 row: `count` transfers created at once (16 creates in flight), timed to
/// the last Active; the operator's backend calls per transfer and each process's CPU seconds
/// name the system that sets the pace. Returns the report's section.
async fn provision(stack: &DevStack, count: usize) -> Result<String, Failure> {
    use futures::{StreamExt, TryStreamExt};
    progress(&format!("creating {count} oauth2 transfers at once"));
    let transfers: Api<MqttTransfer> = stack.api();
    let calls_before = backend_calls(stack);
    let kube_before = kube_requests(stack);
    let cpu_before: Vec<f64> = PROCESSES.iter().map(|(_, p)| cpu_of(p)).collect();
    let self_before = cpu_seconds("self");
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let transfers = transfers.clone();
            async move {
                let t: MqttTransfer = serde_json::from_value(json!({
                    "apiVersion": "dsp-mqtt.io/v1alpha1", "kind": "MqttTransfer", "metadata": {"name": format!("t-{i}")},
                    "spec": {"assetRef": {"name": "line-1"}, "consumer": {"participantId": "did:web:consumer.example.com"}},
                }))?;
                transfers.create(&PostParams::default(), &t).await?;
                Ok::<_, Failure>(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    let deadline = started + Duration::from_secs(600);
    loop {
        let active = transfers
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter(|t| t.status.as_ref().and_then(|s| s.phase).map(|p| format!("{p:?}")).as_deref() == Some("Active"))
            .count();
        if active >= count {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {active} of {count} oauth2 transfers Active after 600 s").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    let calls_after = backend_calls(stack);
    let per = |v: f64| v / count as f64;
    let calls: Vec<String> = calls_after
        .iter()
        .map(|(system, after)| format!("{system} {:.2}", per(after - calls_before.get(system).copied().unwrap_or(0.0))))
        .collect();
    let mut cpu: Vec<(String, f64)> = PROCESSES
        .iter()
        .zip(&cpu_before)
        .map(|((name, pattern), before)| (name.to_string(), cpu_of(pattern) - before))
        .collect();
    cpu.push(("this process (the operator's controllers and the harness)".into(), cpu_seconds("self") - self_before));
    cpu.sort_by(|a, b| b.1.total_cmp(&a.1));
    let cpu: Vec<String> = cpu.iter().map(|(name, s)| format!("{name} {s:.1} s")).collect();
    let kube = kube_requests(stack).saturating_sub(kube_before);
    Ok(format!(
        "## oauth2 provisioning (RabbitMQ, real Keycloak)\n\n\
         | measure | value |\n|---|---|\n\
         | {count} oauth2 transfers created at once (16 creates in flight), first create → last Active | {:.2} s |\n\
         | transfers per second | {:.1} |\n\
         | operator's calls per transfer, by system | kubernetes {:.2}, {} |\n\
         | CPU seconds in the window (of {:.1} available on 2 cores), most first | {} |\n",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        per(kube as f64),
        calls.join(", "),
        2.0 * elapsed.as_secs_f64(),
        cpu.join(", "),
    ))
}

/// The operator's Kubernetes requests so far (its ServiceAccount's, watches aside), from the
/// API server's audit log.
fn kube_requests(stack: &DevStack) -> usize {
    match &stack.cluster {
        Cluster::Local(plane) => plane
            .requests(Some(e2e::systems::kubernetes::OPERATOR_USER))
            .iter()
            .filter(|r| !r.query.as_deref().is_some_and(|q| q.contains("watch=true") || q.contains("watch=1")))
            .count(),
        Cluster::Kubeconfig => 0,
    }
}

/// One refresh: the new access token and refresh token.
async fn refresh(http: &reqwest::Client, url: &str, token: &str) -> Result<(String, String), Failure> {
    let response = http.post(url).form(&[("grant_type", "refresh_token"), ("refresh_token", token)]).send().await?;
    let status = response.status();
    let body: Value = response.json().await?;
    match (body["access_token"].as_str(), body["refresh_token"].as_str()) {
        (Some(access), Some(next)) if status.is_success() => Ok((access.to_owned(), next.to_owned())),
        _ => Err(format!("{status}: {}", body["error"]).into()),
    }
}
