//! The Helm chart on a real API server, with a real `helm` (built from the Go module proxy by
//! `scripts/install-systems.sh helm`): install, the operator running under the RBAC the chart
//! rendered (with the very arguments of the chart's Deployment), upgrade, uninstall. No kubelet
//! runs, so the Deployment's Pods stay Pending: the test asserts the objects, and runs the operator
//! binary itself as the chart's ServiceAccount.
//!
//! The control plane of this binary starts without our CRDs: the chart installs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e::systems::kubernetes::{self, ControlPlane};
use e2e::tls::TestCa;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use mqtt_dsp_operator::api::MqttAsset;

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-dsp-operator");
const RELEASE: &str = "dataspace";
const RELEASE_NAMESPACE: &str = "chart-test";
const TEAM_NAMESPACE: &str = "team-a";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `helm` that scripts/install-systems.sh built (its version from e2e/systems/helm/go.mod).
fn helm_binary() -> PathBuf {
    let go_mod = std::fs::read_to_string(repo().join("e2e/systems/helm/go.mod")).expect("helm's go.mod");
    let version = go_mod
        .lines()
        .find_map(|l| l.trim().strip_prefix("helm.sh/helm/v4 "))
        .and_then(|v| v.split_whitespace().next())
        .expect("helm.sh/helm/v4 in go.mod")
        .to_owned();
    let path = e2e::systems::systems_dir().join(format!("helm-{version}")).join("helm");
    assert!(path.is_file(), "{} is missing: run `bash scripts/install-systems.sh helm`", path.display());
    path
}

fn helm(plane: &ControlPlane, args: &[&str]) -> Output {
    let out = Command::new(helm_binary())
        .args(args)
        .args(["--kubeconfig", &plane.admin_kubeconfig.display().to_string()])
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("e2e-helm-cache"))
        .env("HELM_CONFIG_HOME", std::env::temp_dir().join("e2e-helm-config"))
        .env("HELM_DATA_HOME", std::env::temp_dir().join("e2e-helm-data"))
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ready_reason(asset: &MqttAsset) -> Option<String> {
    let conditions = &asset.status.as_ref()?.conditions;
    conditions.iter().find(|c| c.type_ == "Ready").map(|c| format!("{}/{}", c.status, c.reason))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chart_installs_runs_upgrades_and_uninstalls_on_a_real_api_server() {
    mqtt_dsp_operator::install_crypto_provider();
    e2e::logs::init();
    let plane = tokio::task::spawn_blocking(|| ControlPlane::start_without_crds(&TestCa::shared()))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let admin = plane.admin_client().await;
    let chart = repo().join("charts/mqtt-dsp-operator").display().to_string();

    // Install: CRDs (kept on uninstall by default), RBAC, ConfigMap, Deployment, Service.
    helm(&plane, &["install", RELEASE, &chart, "--namespace", RELEASE_NAMESPACE, "--create-namespace"]);
    let status = helm(&plane, &["status", RELEASE, "--namespace", RELEASE_NAMESPACE, "-o", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["info"]["status"], "deployed");
    assert_eq!(status["version"], 1);
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for name in ["mqttassets.dsp-mqtt.io", "mqtttransfers.dsp-mqtt.io"] {
        let crd = crds.get(name).await.unwrap();
        let established = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        assert!(established.iter().any(|c| c.type_ == "Established" && c.status == "True"), "{name} not established");
    }
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), RELEASE_NAMESPACE);
    let deployment = deployments.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(deployment.len(), 1, "one Deployment");
    let deployment = &deployment[0];
    let pod = deployment.spec.template.spec.as_ref().unwrap();
    let account = pod.service_account_name.clone().expect("the Deployment names its ServiceAccount");
    let args = pod.containers[0].args.clone().unwrap_or_default();
    assert!(args.iter().any(|a| a == "--resync-seconds=300"), "{args:?}");

    // The operator binary, as the chart's ServiceAccount, with the chart's arguments (its
    // configuration file and listen address replaced by local ones): it reconciles under exactly
    // the RBAC the chart rendered.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, plane.service_account_kubeconfig(RELEASE_NAMESPACE, &account).await).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::copy(repo().join("examples/operator-config.yaml"), &config).unwrap();
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), RELEASE_NAMESPACE);
    for secret in e2e::fixtures::example_config_secrets(RELEASE_NAMESPACE) {
        secrets.create(&PostParams::default(), &secret).await.unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut run_args: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with("--config=") && !a.starts_with("--listen=") && !a.starts_with("--log-format="))
        .cloned()
        .collect();
    run_args.push(format!("--config={}", config.display()));
    run_args.push(format!("--listen=127.0.0.1:{port}"));
    let log = dir.path().join("operator.log");
    let operator = KillOnDrop(
        Command::new(BIN)
            .args(&run_args)
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAMESPACE", RELEASE_NAMESPACE)
            .env("POD_NAME", "chart-test-0")
            .env("RUST_LOG", "info")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let team = Namespace {
        metadata: ObjectMeta { name: Some(TEAM_NAMESPACE.into()), ..Default::default() },
        ..Default::default()
    };
    Api::<Namespace>::all(admin.clone()).create(&PostParams::default(), &team).await.unwrap();
    let assets: Api<MqttAsset> = Api::namespaced(admin.clone(), TEAM_NAMESPACE);
    let asset: MqttAsset = serde_yaml::from_str(
        "apiVersion: dsp-mqtt.io/v1alpha1\nkind: MqttAsset\nmetadata: {name: line-1}\nspec:\n  endpoint: {type: mqtt-tls}\n  topics: [factory/line-1/#]\n  auth: {mode: usrpw}\n  policy: {access: {participantIds: [BPNL000000000001]}}\n",
    )
    .unwrap();
    assets.create(&PostParams::default(), &asset).await.unwrap();
    // Its backends (example.com) cannot be reached here: Ready=False says so, which takes a
    // watch, a finalizer patch, a status write and an Event, all under the chart's rules.
    let deadline = Instant::now() + Duration::from_secs(30);
    let reconciled = loop {
        let a = assets.get("line-1").await.unwrap();
        if let Some(reason) = ready_reason(&a) {
            break (a, reason);
        }
        assert!(
            Instant::now() < deadline,
            "not reconciled in 30 s under the chart's RBAC; operator log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(reconciled.1.starts_with("False/"), "{}", reconciled.1);
    assert!(reconciled.0.metadata.finalizers.unwrap_or_default().iter().any(|f| f == "dsp-mqtt.io/cleanup"));
    let operator_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!operator_log.contains("forbidden"), "a request was refused by the chart's RBAC:\n{operator_log}");

    // What the chart does not grant is refused: the operator never lists Secrets nor deletes
    // the users' resources.
    let as_operator = kubernetes::client_from_file(&kubeconfig).await.unwrap();
    let refused = Api::<Secret>::namespaced(as_operator.clone(), RELEASE_NAMESPACE).list(&ListParams::default()).await;
    assert!(matches!(refused, Err(kube::Error::Api(ref s)) if s.code == 403), "list secrets: {refused:?}");
    let refused = Api::<MqttAsset>::namespaced(as_operator.clone(), TEAM_NAMESPACE)
        .delete("line-1", &DeleteParams::default())
        .await;
    assert!(matches!(refused, Err(kube::Error::Api(ref s)) if s.code == 403), "delete an asset: {refused:?}");
    drop(operator);

    // Upgrade with a changed value: a new revision, the Deployment follows.
    helm(
        &plane,
        &["upgrade", RELEASE, &chart, "--namespace", RELEASE_NAMESPACE, "--set", "operator.resyncSeconds=120"],
    );
    let status = helm(&plane, &["status", RELEASE, "--namespace", RELEASE_NAMESPACE, "-o", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!((status["info"]["status"].as_str(), status["version"].as_u64()), (Some("deployed"), Some(2)));
    let deployment = deployments.list(&ListParams::default()).await.unwrap().items.remove(0);
    let args = deployment.spec.template.spec.unwrap().containers[0].args.clone().unwrap_or_default();
    assert!(args.iter().any(|a| a == "--resync-seconds=120"), "{args:?}");

    // Uninstall: the chart's objects go; the CRDs (crds.keep) and the users' resources stay.
    let before = assets.get("line-1").await.unwrap().metadata.resource_version;
    let cluster_roles: Api<ClusterRole> = Api::all(admin.clone());
    let ours = ListParams::default().labels(&format!("app.kubernetes.io/instance={RELEASE}"));
    assert!(!cluster_roles.list(&ours).await.unwrap().items.is_empty(), "the chart made a ClusterRole");
    helm(&plane, &["uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE]);
    assert!(deployments.list(&ListParams::default()).await.unwrap().items.is_empty(), "Deployment removed");
    assert!(cluster_roles.list(&ours).await.unwrap().items.is_empty(), "ClusterRoles removed");
    for name in ["mqttassets.dsp-mqtt.io", "mqtttransfers.dsp-mqtt.io"] {
        assert!(crds.get_opt(name).await.unwrap().is_some(), "{name} kept on uninstall");
    }
    assert_eq!(assets.get("line-1").await.unwrap().metadata.resource_version, before, "the user's asset untouched");

    // Leave the cluster as it was: the asset provisioned nothing (its backends are unreachable),
    // so its finalizer goes by hand; then the namespaces and the kept CRDs.
    let unfinalize = Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}}));
    assets.patch("line-1", &PatchParams::default(), &unfinalize).await.unwrap();
    for namespace in [TEAM_NAMESPACE, RELEASE_NAMESPACE] {
        plane.delete_namespace(namespace, Duration::from_secs(60)).await.unwrap();
    }
    for name in ["mqttassets.dsp-mqtt.io", "mqtttransfers.dsp-mqtt.io"] {
        crds.delete(name, &DeleteParams::default()).await.unwrap();
    }
}
