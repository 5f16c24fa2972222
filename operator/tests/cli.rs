//! The binary as a user runs it: exit codes and messages of `run`, `crdgen` and `version`,
//! against a stand-in API server that answers discovery (HTTPS with the test's own CA).

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use e2e::tls::{TestCa, serve_https};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-dsp-operator");
const TOKEN: &str = "test-token-for-discovery";

fn config_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("config.yaml");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/operator-config.yaml"), &path).unwrap();
    path
}

/// A stand-in for the API server's discovery of our group: with or without our CRDs. Like the
/// real one it refuses requests without the bearer token.
fn discovery(crds_installed: bool) -> Router {
    Router::new()
        .route(
            "/apis/dsp-mqtt.io/v1alpha1",
            get(move |headers: HeaderMap| async move {
                if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {TOKEN}")) {
                    return (StatusCode::UNAUTHORIZED, axum::Json(status(401, "Unauthorized"))).into_response();
                }
                if !crds_installed {
                    return (StatusCode::NOT_FOUND, axum::Json(status(404, "NotFound"))).into_response();
                }
                let resource = |name: &str, kind: &str, short: &str| {
                    json!({"name": name, "singularName": kind.to_lowercase(), "namespaced": true, "kind": kind,
                           "verbs": ["delete","deletecollection","get","list","patch","create","update","watch"],
                           "shortNames": [short], "categories": ["dsp"]})
                };
                axum::Json(json!({
                    "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "dsp-mqtt.io/v1alpha1",
                    "resources": [resource("mqttassets", "MqttAsset", "mqa"), resource("mqtttransfers", "MqttTransfer", "mqt")]
                }))
                .into_response()
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, axum::Json(status(404, "NotFound"))) })
}

fn status(code: u16, reason: &str) -> serde_json::Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": reason, "reason": reason, "code": code})
}

fn kubeconfig(dir: &Path, addr: SocketAddr, ca: &TestCa) -> std::path::PathBuf {
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{addr}\n    certificate-authority: {}\n\
         users:\n- name: test\n  user:\n    token: {TOKEN}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\ncurrent-context: test\n",
        ca_file.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Kills the operator when a test ends, also by a failed assertion: an orphaned operator would
/// keep the test harness's output pipe open.
struct KillOnDrop(std::process::Child);

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
    let ca = TestCa::new();
    let (addr, server) = serve_https(discovery(false), &ca).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig(dir.path(), addr, &ca);
    let mut cmd = operator(Some(&kubeconfig));
    cmd.args(["run", "--listen", &format!("127.0.0.1:{}", free_port()), "--config"]).arg(config_file(dir.path()));
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    server.abort();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("CustomResourceDefinitions of dsp-mqtt.io/v1alpha1 are not installed"), "{stderr}");
    assert!(stderr.contains("missing: mqttassets, mqtttransfers"), "{stderr}");
    assert!(stderr.contains("kubectl apply -f crds/"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_with_the_crds_becomes_ready_and_stops_cleanly_on_sigterm() {
    let ca = TestCa::new();
    let (addr, server) = serve_https(discovery(true), &ca).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig(dir.path(), addr, &ca);
    let port = free_port();
    mqtt_dsp_operator::install_crypto_provider();
    let mut child = operator(Some(&kubeconfig))
        .args(["run", "--listen", &format!("127.0.0.1:{port}"), "--log-format", "json", "--config"])
        .arg(config_file(dir.path()))
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
        assert!(Instant::now() < deadline, "the operator did not become ready in 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(ready.contains("[+] crds"), "{ready}");
    let metrics = http.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("mqtt_dsp_operator_build_info"), "{metrics}");

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
    server.abort();
    assert!(status.success(), "exit {status:?}: {stderr}");
    // JSON logs: every line is an object.
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let parsed: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(parsed.get("level").is_some(), "{line}");
    }
    assert!(stderr.contains("shutting down"), "{stderr}");
}
