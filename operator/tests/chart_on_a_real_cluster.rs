//! The Helm chart on a real API server, with a real `helm` (built from the Go module proxy by
//! `scripts/install-systems.sh helm`): install, the operator running under the RBAC the chart
//! rendered (with the very arguments and configuration of the chart's Deployment), what that RBAC
//! refuses (Secret writes outside the namespaces the configuration serves, Secrets the
//! configuration does not name), upgrades the chart refuses (a configuration serving every
//! namespace without `rbac.clusterWideSecrets`, a Lease rename while the Deployment runs) and the
//! documented ways through, uninstall. No kubelet runs, so the Deployment's Pods stay Pending:
//! the test asserts the objects, and runs the operator binary itself as the chart's ServiceAccount.
//!
//! The control plane of this binary starts without our CRDs: the chart installs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e::systems::kubernetes::{self, ControlPlane};
use e2e::tls::TestCa;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use mqtt_dsp_operator::api::MqttAsset;

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-dsp-operator");
const RELEASE: &str = "dataspace";
const RELEASE_NAMESPACE: &str = "chart-test";
const TEAM_NAMESPACE: &str = "team-a";
/// A namespace no profile serves.
const OTHER_TEAM_NAMESPACE: &str = "team-b";

/// Every profile of the chart's default configuration serves team-a only (merged into the
/// chart's `config`), so the release namespace serves no MqttTransfers.
const TENANT_VALUES: &str = r##"
config:
  connectors: {default: {allowed: {namespaces: [team-a]}}}
  identityProviders: {default: {allowed: {namespaces: [team-a]}}}
  secretStores: {default: {allowed: {namespaces: [team-a]}}}
  brokers:
    default: {allowed: {namespaces: [team-a], topicPrefixes: ["factory/#"]}}
    mosquitto: {allowed: {namespaces: [team-a], topicPrefixes: ["factory/#"]}}
"##;

/// Every profile serves every namespace, as before `allowed` existed.
const EVERY_NAMESPACE_VALUES: &str = r##"
config:
  connectors: {default: {allowed: {namespaces: ["*"]}}}
  secretStores: {default: {allowed: {namespaces: ["*"]}}}
  brokers:
    default: {allowed: {namespaces: ["*"], topicPrefixes: ["#"]}}
    mosquitto: {allowed: {namespaces: ["*"], topicPrefixes: ["#"]}}
"##;

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

fn run_helm(plane: &ControlPlane, args: &[&str]) -> Output {
    Command::new(helm_binary())
        .args(args)
        .args(["--kubeconfig", &plane.admin_kubeconfig.display().to_string()])
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("e2e-helm-cache"))
        .env("HELM_CONFIG_HOME", std::env::temp_dir().join("e2e-helm-config"))
        .env("HELM_DATA_HOME", std::env::temp_dir().join("e2e-helm-data"))
        .output()
        .expect("helm runs")
}

/// Runs helm; it must fail. Gives what it said on stderr.
fn helm_refuses(plane: &ControlPlane, args: &[&str]) -> String {
    let out = run_helm(plane, args);
    assert!(!out.status.success(), "helm {args:?} succeeded:\n{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The release's revision and status.
fn revision(plane: &ControlPlane) -> (u64, String) {
    let status = helm(plane, &["status", RELEASE, "--namespace", RELEASE_NAMESPACE, "-o", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    (status["version"].as_u64().unwrap_or(0), status["info"]["status"].as_str().unwrap_or_default().to_owned())
}

fn forbidden<T: std::fmt::Debug>(result: &Result<T, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(s)) if s.code == 403)
}

fn secret(name: &str) -> Secret {
    Secret {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        string_data: Some([("k".to_owned(), "v".to_owned())].into()),
        ..Default::default()
    }
}

fn helm(plane: &ControlPlane, args: &[&str]) -> Output {
    let out = run_helm(plane, args);
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
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.yaml");
    std::fs::write(&tenants, TENANT_VALUES).unwrap();
    let tenants = tenants.display().to_string();

    // The tenants' namespaces exist first: the chart binds the Secret writes in team-a.
    for name in [TEAM_NAMESPACE, OTHER_TEAM_NAMESPACE] {
        let namespace =
            Namespace { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, ..Default::default() };
        Api::<Namespace>::all(admin.clone()).create(&PostParams::default(), &namespace).await.unwrap();
    }

    // Install: CRDs (kept on uninstall by default), RBAC, ConfigMap, Deployment, Service.
    helm(&plane, &["install", RELEASE, &chart, "--namespace", RELEASE_NAMESPACE, "--create-namespace", "-f", &tenants]);
    assert_eq!(revision(&plane), (1, "deployed".to_owned()));
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
    let fullname = deployment.metadata.name.clone().unwrap();
    let pod = deployment.spec.template.spec.as_ref().unwrap();
    let account = pod.service_account_name.clone().expect("the Deployment names its ServiceAccount");
    let args = pod.containers[0].args.clone().unwrap_or_default();
    assert!(args.iter().any(|a| a == "--resync-seconds=300"), "{args:?}");

    // The RBAC it made: Secret writes bound in team-a alone (by a RoleBinding, nothing
    // cluster-wide), the credentials by name, nothing aggregated into the built-in roles.
    let transfer_secrets = format!("{fullname}-transfer-secrets");
    let ours = ListParams::default().labels(&format!("app.kubernetes.io/instance={RELEASE}"));
    let bound_in = |bindings: Vec<RoleBinding>| -> Vec<String> {
        bindings
            .into_iter()
            .filter(|b| b.metadata.name.as_deref() == Some(transfer_secrets.as_str()))
            .filter_map(|b| b.metadata.namespace)
            .collect()
    };
    let role_bindings: Api<RoleBinding> = Api::all(admin.clone());
    assert_eq!(bound_in(role_bindings.list(&ours).await.unwrap().items), [TEAM_NAMESPACE]);
    let cluster_bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
    assert!(
        cluster_bindings.list(&ours).await.unwrap().items.iter().all(|b| b.role_ref.name != transfer_secrets),
        "Secret writes bound cluster-wide"
    );
    let cluster_roles: Api<ClusterRole> = Api::all(admin.clone());
    let aggregated: Vec<_> = cluster_roles
        .list(&ours)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|r| {
            r.metadata.labels.iter().flatten().any(|(k, _)| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
        })
        .filter_map(|r| r.metadata.name)
        .collect();
    assert!(aggregated.is_empty(), "aggregated into the built-in roles by default: {aggregated:?}");

    // The operator binary, as the chart's ServiceAccount, with the chart's arguments and the
    // configuration its ConfigMap holds (the file and listen address replaced by local ones):
    // it reconciles under exactly the RBAC the chart rendered.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, plane.service_account_kubeconfig(RELEASE_NAMESPACE, &account).await).unwrap();
    let config = dir.path().join("config.yaml");
    let config_map = Api::<ConfigMap>::namespaced(admin.clone(), RELEASE_NAMESPACE)
        .get(&format!("{fullname}-config"))
        .await
        .unwrap();
    let (rendered, _) = e2e::fixtures::localize_refresh(
        &config_map.data.unwrap()["config.yaml"],
        dir.path(),
        &e2e::tls::TestCa::shared(),
    );
    std::fs::write(&config, rendered).unwrap();
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
    let assets: Api<MqttAsset> = Api::namespaced(admin.clone(), TEAM_NAMESPACE);
    let asset: MqttAsset = serde_yaml::from_str(
        "apiVersion: dsp-mqtt.io/v1alpha1\nkind: MqttAsset\nmetadata: {name: line-1}\nspec:\n  endpoint: {type: mqtt-tls}\n  topics: [factory/line-1/#]\n  auth: {mode: usrpw}\n  policy: {access: {participantIds: [BPNL000000000001]}}\n",
    )
    .unwrap();
    assets.create(&PostParams::default(), &asset).await.unwrap();
    // Its profiles serve team-a, its backends (example.com) cannot be reached here: Ready=False
    // says so, which takes a watch, a finalizer patch, a status write and an Event, all under
    // the chart's rules.
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
    assert!(reconciled.1.starts_with("False/") && reconciled.1 != "False/NotAllowed", "{}", reconciled.1);
    assert!(reconciled.0.metadata.finalizers.unwrap_or_default().iter().any(|f| f == "dsp-mqtt.io/cleanup"));
    let operator_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!operator_log.contains("forbidden"), "a request was refused by the chart's RBAC:\n{operator_log}");

    // What the chart does not grant is refused: the operator never lists Secrets nor deletes
    // the users' resources.
    let as_operator = kubernetes::client_from_file(&kubeconfig).await.unwrap();
    let refused = Api::<Secret>::namespaced(as_operator.clone(), RELEASE_NAMESPACE).list(&ListParams::default()).await;
    assert!(forbidden(&refused), "list secrets: {refused:?}");
    let refused = Api::<MqttAsset>::namespaced(as_operator.clone(), TEAM_NAMESPACE)
        .delete("line-1", &DeleteParams::default())
        .await;
    assert!(forbidden(&refused), "delete an asset: {refused:?}");
    // Secrets: written in the namespace the configuration serves, nowhere else — not in another
    // tenant's namespace, not in its own (no profile serves it here), not cluster-wide.
    let served = Api::<Secret>::namespaced(as_operator.clone(), TEAM_NAMESPACE);
    served.create(&PostParams::default(), &secret("probe")).await.expect("a Secret in the served namespace");
    served.delete("probe", &DeleteParams::default()).await.expect("delete it again");
    for namespace in [OTHER_TEAM_NAMESPACE, RELEASE_NAMESPACE] {
        let refused = Api::<Secret>::namespaced(as_operator.clone(), namespace)
            .create(&PostParams::default(), &secret("probe"))
            .await;
        assert!(forbidden(&refused), "a Secret written in {namespace}, which no profile serves: {refused:?}");
    }
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{RELEASE_NAMESPACE}:{account}")),
            resource_attributes: Some(ResourceAttributes {
                verb: Some("create".into()),
                resource: Some("secrets".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let review = Api::<SubjectAccessReview>::all(admin.clone()).create(&PostParams::default(), &review).await.unwrap();
    assert!(!review.status.unwrap().allowed, "the operator may create Secrets cluster-wide");
    // Credentials: the Secrets the configuration's secretRefs name, no other of its namespace.
    let own = Api::<Secret>::namespaced(as_operator.clone(), RELEASE_NAMESPACE);
    own.get("edc-management-api").await.expect("a credential the configuration names");
    secrets.create(&PostParams::default(), &secret("not-a-credential")).await.unwrap();
    assert!(forbidden(&own.get("not-a-credential").await), "read a Secret the configuration does not name");
    drop(operator);

    // Upgrades the chart refuses leave the release as it was. A configuration serving every
    // namespace needs rbac.clusterWideSecrets:
    let every = dir.path().join("every-namespace.yaml");
    std::fs::write(&every, EVERY_NAMESPACE_VALUES).unwrap();
    let upgrade = ["upgrade", RELEASE, &chart, "--namespace", RELEASE_NAMESPACE];
    let said = helm_refuses(&plane, &[&upgrade[..], &["-f", &every.display().to_string()]].concat());
    assert!(said.contains("config serves every namespace") && said.contains("rbac.clusterWideSecrets"), "{said}");
    // A Lease rename while the Deployment runs (old and new pods would both lead):
    let rename = ["-f", &tenants, "--set", "operator.resyncSeconds=120", "--set", "leaderElection.leaseName=renamed"];
    let said = helm_refuses(&plane, &[&upgrade[..], &rename[..]].concat());
    assert!(
        said.contains(&format!("leaderElection.leaseName changes from \"{fullname}\" to \"renamed\""))
            && said.contains("--replicas=0")
            && said.contains("leaderElection.allowLeaseRename=true"),
        "{said}"
    );
    assert_eq!(revision(&plane), (1, "deployed".to_owned()), "a refused upgrade made a revision");

    // The rename's two-step: scaled to zero first (as `kubectl scale` does), the upgrade goes
    // through, and the chart scales the Deployment back. The new revision follows the values.
    let zero = Patch::Merge(serde_json::json!({"spec": {"replicas": 0}}));
    deployments.patch_scale(&fullname, &PatchParams::default(), &zero).await.unwrap();
    helm(&plane, &[&upgrade[..], &rename[..]].concat());
    assert_eq!(revision(&plane), (2, "deployed".to_owned()));
    let deployment = deployments.get(&fullname).await.unwrap().spec;
    assert_eq!(deployment.replicas, Some(1), "the upgrade scales the Deployment back");
    let args = deployment.template.spec.unwrap().containers[0].args.clone().unwrap_or_default();
    assert!(
        args.iter().any(|a| a == "--resync-seconds=120") && args.iter().any(|a| a == "--lease-name=renamed"),
        "{args:?}"
    );
    let lease_role = Api::<Role>::namespaced(admin.clone(), RELEASE_NAMESPACE)
        .get(&format!("{fullname}-leader-election"))
        .await
        .unwrap();
    assert!(
        lease_role.rules.unwrap().iter().any(|r| r.resource_names == Some(vec!["renamed".to_owned()])),
        "the Lease Role follows the rename"
    );
    // Back in one step with leaderElection.allowLeaseRename: a Recreate rollout (no old pod
    // left when a new one starts); without it, rolling updates again.
    let back = ["-f", &tenants, "--set", "operator.resyncSeconds=120"];
    helm(&plane, &[&upgrade[..], &back[..], &["--set", "leaderElection.allowLeaseRename=true"]].concat());
    let strategy = |d: Deployment| d.spec.strategy.and_then(|s| s.type_).unwrap_or_default();
    assert_eq!(strategy(deployments.get(&fullname).await.unwrap()), "Recreate");
    helm(&plane, &[&upgrade[..], &back[..]].concat());
    assert_eq!(strategy(deployments.get(&fullname).await.unwrap()), "RollingUpdate");
    assert_eq!(revision(&plane), (4, "deployed".to_owned()));

    // Uninstall: the chart's objects go, the RoleBinding in team-a too; the CRDs (crds.keep) and
    // the users' resources stay.
    let before = assets.get("line-1").await.unwrap().metadata.resource_version;
    assert!(!cluster_roles.list(&ours).await.unwrap().items.is_empty(), "the chart made a ClusterRole");
    helm(&plane, &["uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE]);
    assert!(deployments.list(&ListParams::default()).await.unwrap().items.is_empty(), "Deployment removed");
    assert!(cluster_roles.list(&ours).await.unwrap().items.is_empty(), "ClusterRoles removed");
    assert!(role_bindings.list(&ours).await.unwrap().items.is_empty(), "RoleBindings removed");
    for name in ["mqttassets.dsp-mqtt.io", "mqtttransfers.dsp-mqtt.io"] {
        assert!(crds.get_opt(name).await.unwrap().is_some(), "{name} kept on uninstall");
    }
    assert_eq!(assets.get("line-1").await.unwrap().metadata.resource_version, before, "the user's asset untouched");

    // Leave the cluster as it was: the asset provisioned nothing (its backends are unreachable),
    // so its finalizer goes by hand; then the namespaces and the kept CRDs.
    let unfinalize = Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}}));
    assets.patch("line-1", &PatchParams::default(), &unfinalize).await.unwrap();
    for namespace in [TEAM_NAMESPACE, OTHER_TEAM_NAMESPACE, RELEASE_NAMESPACE] {
        plane.delete_namespace(namespace, Duration::from_secs(60)).await.unwrap();
    }
    for name in ["mqttassets.dsp-mqtt.io", "mqtttransfers.dsp-mqtt.io"] {
        crds.delete(name, &DeleteParams::default()).await.unwrap();
    }
}
