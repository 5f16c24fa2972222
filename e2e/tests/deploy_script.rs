//! `make deploy` (deploy/deploy.sh) without a cluster: what can be checked here. With no
//! kube-context it must stop before doing anything and say what to do; `--dry-run` renders,
//! offline, the manifests an install would apply, which must be the very objects
//! `make chart-check` (charts/check_chart.py) validates; NAMESPACE, IMAGE and VALUES must reach
//! them. The install into a cluster itself is not exercised here (there is none).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

/// deploy/deploy.sh with only the given variables of its own set.
fn deploy(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg("deploy/deploy.sh").args(args).current_dir(repo());
    for var in ["NAMESPACE", "IMAGE", "VALUES", "TIMEOUT"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("bash runs deploy/deploy.sh")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The YAML documents of a manifest stream, as JSON values.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn sorted(mut objects: Vec<Value>) -> Vec<Value> {
    objects.sort_by_key(|o| (o["kind"].to_string(), o["metadata"]["name"].to_string()));
    objects
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<_> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

fn python_with_venv() -> bool {
    Command::new("python3").args(["-c", "import venv, ensurepip"]).output().is_ok_and(|o| o.status.success())
}

#[test]
fn without_a_kube_context_it_stops_and_says_what_to_do() {
    let home = tempfile::tempdir().unwrap();
    let kubeconfig = home.path().join("config");
    std::fs::write(&kubeconfig, "").unwrap();
    let out = deploy(&[], &[("HOME", home.path().to_str().unwrap()), ("KUBECONFIG", kubeconfig.to_str().unwrap())]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing rendered or installed: {}", text(&out.stdout));
    let kubectl = Command::new("kubectl").args(["version", "--client"]).output().is_ok_and(|o| o.status.success());
    if kubectl {
        assert!(stderr.contains("make deploy: no current kube-context"), "{stderr}");
        assert!(stderr.contains("kind create cluster") && stderr.contains("kubectl config use-context"), "{stderr}");
    } else {
        eprintln!("kubectl is not installed: checking its own error instead of the no-context one");
        assert!(stderr.contains("make deploy: kubectl is not installed"), "{stderr}");
    }
    assert!(!stderr.contains("installing"), "it stopped before setting up Helm: {stderr}");
}

#[test]
fn dry_run_renders_what_chart_check_validates_with_the_make_variables_applied() {
    if !python_with_venv() {
        eprintln!("skipped: python3 with venv and ensurepip is needed (Debian: apt-get install python3-venv)");
        return;
    }
    // Defaults: exactly the objects check_chart.py renders and validates for its defaults.
    let out = deploy(&["--dry-run"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deployed = sorted(documents(&text(&out.stdout)));
    let checked = Command::new(repo().join("target/chart-venv/bin/python"))
        .current_dir(repo())
        .args([
            "-c",
            "import json, sys; sys.path.insert(0, 'charts'); import check_chart; print(json.dumps(check_chart.render({})))",
        ])
        .output()
        .expect("the chart venv's python");
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    let checked: Vec<Value> = serde_json::from_slice(&checked.stdout).expect("check_chart.render as JSON");
    assert!(deployed.len() > 5, "{deployed:?}");
    assert_eq!(deployed, sorted(checked), "make deploy would apply other objects than make chart-check validates");
    one(&deployed, "Deployment");
    assert!(deployed.iter().any(|o| o["kind"] == "CustomResourceDefinition"));

    // NAMESPACE, IMAGE (a registry with a port) and VALUES (IMAGE wins over its image).
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, "podDisruptionBudget: {enabled: true}\nimage: {repository: other, tag: other}\n").unwrap();
    let image = "registry.example:5000/team/mqtt-dsp-operator:dev";
    let env = [("NAMESPACE", "dataspace-ops"), ("IMAGE", image), ("VALUES", values.to_str().unwrap())];
    let out = deploy(&["--dry-run"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let objects = documents(&text(&out.stdout));
    let container = &one(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], image);
    one(&objects, "PodDisruptionBudget");
    for o in objects.iter().filter(|o| o["metadata"].get("namespace").is_some()) {
        assert_eq!(o["metadata"]["namespace"], "dataspace-ops", "{} {}", o["kind"], o["metadata"]["name"]);
    }

    // Values the chart's schema refuses: a clear message, nothing rendered.
    std::fs::write(&values, "replicaCount: 2\nleaderElection: {enabled: false}\n").unwrap();
    let out = deploy(&["--dry-run"], &[("VALUES", values.to_str().unwrap())]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("values.schema.json refuses") && stderr.contains("replicaCount"), "{stderr}");
    assert!(out.stdout.is_empty());
}
