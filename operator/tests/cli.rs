//! The binary as a user runs it: exit codes and messages of `run`, `crdgen` and `version`,
//! against a real Kubernetes API server (e2e::systems::kubernetes), as the operator's
//! ServiceAccount under the RBAC of deploy/rbac.yaml.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::systems::kubernetes::{self, ControlPlane, OPERATOR_NAMESPACE};
use e2e::tls::TestCa;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use mqtt_dsp_operator::api::MqttAsset;

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-dsp-operator");

/// The example configuration, its refresh endpoint on a free loopback port with a certificate of
/// the shared test CA.
fn config_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("config.yaml");
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/operator-config.yaml"))
            .unwrap();
    let (config, _) = e2e::fixtures::localize_refresh(&example, dir, &e2e::tls::TestCa::shared());
    std::fs::write(&path, config).unwrap();
    path
}

/// Where the binary runs: the shared control plane of this test binary (with our CRDs), or one
/// of its own without them.
enum Plane {
    Shared(&'static ControlPlane),
    Own(ControlPlane),
}

impl std::ops::Deref for Plane {
    type Target = ControlPlane;
    fn deref(&self) -> &ControlPlane {
        match self {
            Plane::Shared(p) => p,
            Plane::Own(p) => p,
        }
    }
}

/// A real control plane, with our CRDs when asked, the Secrets the example configuration points
/// at (in the operator's namespace, where deploy/rbac.yaml lets it read them), and a kubeconfig
/// of the operator's ServiceAccount for the binary.
async fn cluster(dir: &Path, crds: bool) -> (Plane, std::path::PathBuf) {
    mqtt_dsp_operator::install_crypto_provider();
    let plane = tokio::task::spawn_blocking(move || {
        if crds {
            kubernetes::shared().map(Plane::Shared)
        } else {
            ControlPlane::start_without_crds(&TestCa::shared()).map(Plane::Own)
        }
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{e}"));
    let secrets: Api<Secret> = Api::namespaced(plane.admin_client().await, OPERATOR_NAMESPACE);
    for secret in e2e::fixtures::example_config_secrets(OPERATOR_NAMESPACE) {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let apply = kube::api::PatchParams::apply("cli-test").force();
        secrets.patch(&name, &apply, &kube::api::Patch::Apply(&secret)).await.unwrap();
    }
    let path = dir.join("kubeconfig");
    plane.write_operator_kubeconfig(&path).await;
    (plane, path)
}

/// Kills the operator when a test ends, also by a failed assertion: an orphaned operator would
/// keep the test harness's output pipe open.
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    /// Kills the process and returns what it wrote to stderr (for failure messages).
    fn stderr(&mut self) -> String {
        let _ = self.0.kill();
        let mut out = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut out);
        }
        out
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn operator(kubeconfig: Option<&Path>) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("KUBERNETES_SERVICE_HOST").env_remove("KUBERNETES_SERVICE_PORT").env("RUST_LOG", "info");
    cmd.env("KUBECONFIG", kubeconfig.unwrap_or(Path::new("/nonexistent/kubeconfig")));
    cmd
}

#[test]
fn version_prints_the_crate_version() {
    let out = Command::new(BIN).arg("version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("mqtt-dsp-operator {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn crdgen_prints_both_crds() {
    let out = Command::new(BIN).arg("crdgen").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("name: mqttassets.dsp-mqtt.io") && text.contains("name: mqtttransfers.dsp-mqtt.io"));
}

#[test]
fn a_broken_configuration_stops_run_with_every_problem_listed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "brokers:\n  default:\n    type: mosquitto\n    adminUrl: mqtt://mosquitto:1883\n    adminUsername: admin\n    adminPassword: {env: X}\n    publicUrls: {mqtt-wss: 'ws://mosquitto:8080'}\nconnectors:\n  default:\n    managementUrl: https://edc/management\n",
    )
    .unwrap();
    let out = operator(None).args(["run", "--config"]).arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("has 3 problem(s)"), "{stderr}");
    assert!(stderr.contains("brokers.default.adminUrl: scheme must be mqtts or ssl, got mqtt"), "{stderr}");
    assert!(stderr.contains("brokers.default.publicUrls.mqtt-wss: scheme must be wss, got ws"), "{stderr}");
    assert!(stderr.contains("connectors.default: missing field `apiKey`"), "{stderr}");
}

#[test]
fn a_missing_configuration_file_is_named() {
    let out = operator(None).args(["run", "--config", "/nonexistent/config.yaml"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("cannot read configuration file /nonexistent/config.yaml"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_without_the_crds_exits_with_the_install_hint() {
    let dir = tempfile::tempdir().unwrap();
    let (server, kubeconfig) = cluster(dir.path(), false).await;
    let mut cmd = operator(Some(&kubeconfig));
    cmd.args(["run", "--listen", &format!("127.0.0.1:{}", free_port()), "--config"]).arg(config_file(dir.path()));
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    drop(server);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("CustomResourceDefinitions of dsp-mqtt.io/v1alpha1 are not installed"), "{stderr}");
    assert!(stderr.contains("missing: mqttassets, mqtttransfers"), "{stderr}");
    assert!(stderr.contains("kubectl apply -f crds/"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_with_the_crds_becomes_ready_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (server, kubeconfig) = cluster(dir.path(), true).await;
    let port = free_port();
    let (collector, received) = otlp_collector().await;
    let config = config_file(dir.path());
    let refresh_url: String = serde_yaml::from_str::<serde_yaml::Value>(&std::fs::read_to_string(&config).unwrap())
        .unwrap()["refresh"]["publicUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut child = operator(Some(&kubeconfig))
        .args(["run", "--listen", &format!("127.0.0.1:{port}"), "--log-format", "json"])
        .args(["--otlp-endpoint", &format!("http://{collector}")])
        .arg("--config")
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .map(KillOnDrop)
        .unwrap();

    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        if let Ok(r) = http.get(format!("http://127.0.0.1:{port}/readyz")).send().await
            && r.status() == 200
        {
            break r.text().await.unwrap();
        }
        assert!(Instant::now() < deadline, "the operator did not become ready in 20 s:\n{}", child.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(ready.contains("[+] crds"), "{ready}");
    // The example's refresh endpoint is served (TLS, the RFC 6749 error for a wrong grant).
    let ca = reqwest::Certificate::from_pem(e2e::tls::TestCa::shared().cert_pem().as_bytes()).unwrap();
    let tls = reqwest::Client::builder().tls_certs_only([ca]).build().unwrap();
    let answer = tls.post(&refresh_url).form(&[("grant_type", "password")]).send().await.unwrap();
    assert_eq!(answer.status(), 400);
    assert_eq!(answer.json::<serde_json::Value>().await.unwrap()["error"], "unsupported_grant_type");
    let metrics = http.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("mqtt_dsp_operator_build_info"), "{metrics}");

    // The controller reconciles: an asset whose backends cannot be reached (example.com, no
    // network here) gets a Ready=False condition saying so.
    let namespace = server.test_namespace("cli").await;
    let assets: Api<MqttAsset> = Api::namespaced(server.admin_client().await, &namespace);
    let asset: MqttAsset = serde_yaml::from_str(
        "apiVersion: dsp-mqtt.io/v1alpha1\nkind: MqttAsset\nmetadata: {name: probe}\nspec:\n  endpoint: {type: mqtt-tls}\n  topics: [a/#]\n  auth: {mode: usrpw}\n  policy: {access: {participantIds: [BPNL000000000001]}}\n",
    )
    .unwrap();
    assets.create(&Default::default(), &asset).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (status, reason) = loop {
        let a = assets.get("probe").await.unwrap();
        let ready = a.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned());
        if let Some(c) = ready {
            break (c.status, c.reason);
        }
        assert!(Instant::now() < deadline, "the operator did not reconcile the asset in 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, "False");
    assert!(["Unreachable", "Credential", "Timeout"].contains(&reason.as_str()), "{reason}");

    // Readiness says why it is ready; the metrics count resources by Ready status, calls to the
    // backends, and leadership.
    let ready = http.get(format!("http://127.0.0.1:{port}/readyz")).send().await.unwrap().text().await.unwrap();
    assert!(ready.contains("[+] leader-election: leading") && ready.contains("[+] caches"), "{ready}");
    let metrics = http.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap().text().await.unwrap();
    for expected in [
        "mqtt_dsp_operator_leader 1",
        "mqtt_dsp_operator_resources{kind=\"MqttAsset\",ready=\"False\"} 1",
        "mqtt_dsp_operator_resources{kind=\"MqttAsset\",ready=\"True\"} 0",
        "mqtt_dsp_operator_resources{kind=\"MqttTransfer\",ready=\"True\"} 0",
        "mqtt_dsp_operator_reconciles_total{kind=\"MqttAsset\",result=\"",
    ] {
        assert!(metrics.contains(expected), "{expected} missing in:\n{metrics}");
    }
    // The Lease names this process as the holder while it runs.
    let leases: Api<Lease> = Api::namespaced(server.admin_client().await, OPERATOR_NAMESPACE);
    let holder = leases.get("mqtt-dsp-operator").await.unwrap().spec.and_then(|s| s.holder_identity);
    assert!(holder.as_deref().is_some_and(|h| h.starts_with("local_")), "{holder:?}");

    let kill = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let (status, stderr) = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                let mut stderr = String::new();
                child.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
                return (status, stderr);
            }
            if Instant::now() > deadline {
                panic!("the operator did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    // A clean stop hands the Lease back, so a standby takes over at once.
    let holder = leases.get("mqtt-dsp-operator").await.unwrap().spec.and_then(|s| s.holder_identity);
    // The probe provisioned nothing (its backends are unreachable): its finalizer can go by hand.
    let unfinalize = kube::api::Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}}));
    assets.patch("probe", &Default::default(), &unfinalize).await.unwrap();
    server.delete_namespace(&namespace, Duration::from_secs(60)).await.unwrap();
    drop(server);
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert_eq!(holder, None, "the Lease is released on SIGTERM");
    // JSON logs: every line is an object.
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let parsed: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(parsed.get("level").is_some(), "{line}");
    }
    assert!(stderr.contains("shutting down"), "{stderr}");

    // The reconcile spans reached the OTLP collector (flushed at the latest on shutdown), named
    // for the reconcile and carrying the resource's kind and name.
    let bodies = received.lock().unwrap().clone();
    assert!(!bodies.is_empty(), "no OTLP export request arrived");
    let all: Vec<u8> = bodies.concat();
    for needle in [&b"reconcile"[..], b"MqttAsset", b"probe", b"mqtt-dsp-operator"] {
        assert!(
            all.windows(needle.len()).any(|w| w == needle),
            "{} missing in the spans",
            String::from_utf8_lossy(needle)
        );
    }
}

/// A stand-in OpenTelemetry collector: accepts OTLP/HTTP trace exports and keeps the bodies.
async fn otlp_collector() -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    use axum::routing::post;
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                assert_eq!(headers["content-type"], "application/x-protobuf");
                store.lock().unwrap().push(body.to_vec());
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}
