//! `make demo` end to end: the demo binary (`e2e/src/bin/demo.rs`) runs the operator binary as
//! its own process against the dev stack, applies `examples/` (with kubectl when it is installed,
//! else through kube-rs), and must print the message its consumer received through each issued
//! DataAddress, exit 0, and never show a secret it handled — not in its output, not in the
//! operator's log.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// One demo at a time: each starts RabbitMQ, Mosquitto and an operator.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const DEMO: &str = env!("CARGO_BIN_EXE_demo");

/// The operator binary beside the demo, built by this test: `cargo test -p e2e` alone builds
/// only this package's binaries. With this test target selected, features resolve as in
/// `cargo test` (dev-dependencies included), so after `cargo test --workspace` this build has
/// nothing to do, and it shares its artifacts with `make demo`.
fn operator() -> PathBuf {
    let profile_dir = Path::new(DEMO).parent().unwrap();
    let mut cargo = Command::new(env!("CARGO"));
    cargo.args(["build", "--locked", "-p", "mqtt-dsp-operator", "-p", "e2e", "--bin", "mqtt-dsp-operator"]);
    cargo.args(["--test", "demo"]);
    // Without the variables cargo sets for this test: build scripts that watch them (ring's
    // watches CARGO_MANIFEST_DIR) would otherwise rebuild, and then again in the next plain build.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let set_for_tests = key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_EXE_")
            || matches!(
                key.as_str(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
            );
        if set_for_tests {
            cargo.env_remove(&key);
        }
    }
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cargo.arg("--release");
    }
    let status = cargo.current_dir(env!("CARGO_MANIFEST_DIR")).status().expect("cargo runs");
    assert!(status.success(), "building the operator failed");
    profile_dir.join("mqtt-dsp-operator")
}

fn kubectl_installed() -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("kubectl").is_file()))
}

struct Run {
    output: Output,
    stdout: String,
    stderr: String,
    operator_log: String,
    /// What the demo registered as secrets (`e2e::logs::register_secret`).
    secrets: Vec<String>,
}

fn run_demo(extra: &[&str]) -> Run {
    let operator = operator();
    let dir = tempfile::tempdir().unwrap();
    let tracing_log = dir.path().join("demo-tracing.log");
    let output = Command::new(DEMO)
        .args(["--operator", &operator.display().to_string()])
        .args(["--log-dir", &dir.path().display().to_string()])
        .args(extra)
        .env("MQTT_DSP_TEST_LOG", &tracing_log)
        .output()
        .expect("the demo runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut secrets_file = tracing_log.into_os_string();
    secrets_file.push(".secrets");
    let secrets: std::collections::BTreeSet<String> = std::fs::read_to_string(&secrets_file)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    Run {
        stdout: text(&output.stdout),
        stderr: text(&output.stderr),
        operator_log: std::fs::read_to_string(dir.path().join("operator.log")).unwrap_or_default(),
        output,
        secrets: secrets.into_iter().collect(),
    }
}

/// Exit 0, a received message per transfer of `examples/`, masked credentials, no secret shown.
fn assert_demo_passed(run: &Run) {
    // The output holds no secret (checked below before anything is printed in full).
    let leaked: Vec<usize> = run
        .secrets
        .iter()
        .enumerate()
        .filter(|(_, s)| run.stdout.contains(s.as_str()) || run.stderr.contains(s.as_str()))
        .map(|(i, _)| i)
        .collect();
    assert!(leaked.is_empty(), "{} of {} secrets appear in the demo's output", leaked.len(), run.secrets.len());
    let logged = run.secrets.iter().filter(|s| run.operator_log.contains(s.as_str())).count();
    assert_eq!(logged, 0, "{logged} secrets appear in the operator's log");
    assert!(
        run.output.status.success(),
        "the demo failed ({}):\n{}\n{}\n--- operator log ---\n{}",
        run.output.status,
        run.stdout,
        run.stderr,
        run.operator_log
    );
    // The check above means something: the issued JWT, refresh token and password were handled.
    assert!(run.secrets.len() >= 10, "only {} secrets registered", run.secrets.len());
    assert!(run.secrets.iter().any(|s| s.starts_with("eyJ")), "no issued JWT among the registered secrets");

    let out = &run.stdout;
    for (transfer, topic) in [
        ("line-1-telemetry-consumer-a", "factory/line-1/telemetry/temperature"),
        ("press-events-consumer-a", "plant/press/demo/events"),
    ] {
        let received = format!("consumer: received on {topic}: {{");
        let line =
            out.lines().find(|l| l.contains(&received)).unwrap_or_else(|| panic!("no message on {topic}:\n{out}"));
        assert!(line.contains(&format!("\"transfer\":\"{transfer}\"")), "{line}");
    }
    assert!(out.contains("\"dsp-mqtt:authorization\": \"eyJ0… ("), "the JWT is shown masked:\n{out}");
    assert!(out.contains("\"dsp-mqtt:refreshToken\": \""), "{out}");
    assert!(out.contains("\"dsp-mqtt:password\": \""), "{out}");
    assert_eq!(out.matches("characters, masked)").count(), 3, "JWT, refresh token and password masked:\n{out}");
    assert!(out.contains("backends: nothing left of the transfers"), "{out}");
    assert!(out.contains("operator stopped (SIGTERM, exit code 0)"), "{out}");
    assert!(out.contains("Demo passed"), "{out}");
}

#[test]
fn the_demo_delivers_a_live_message_through_each_issued_data_address_and_shows_no_secret() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let run = run_demo(&[]);
    assert_demo_passed(&run);
    if kubectl_installed() {
        assert!(run.stdout.contains("$ kubectl apply -f examples/namespace.yaml"), "{}", run.stdout);
        assert!(run.stdout.contains("$ kubectl wait --for=condition=Ready"), "{}", run.stdout);
        // Server-side printing: the CRDs' columns, not just NAME and AGE.
        let header = run.stdout.lines().find(|l| l.contains("NAME") && l.contains("PHASE")).unwrap_or_default();
        assert!(header.contains("READY") && header.contains("CONSUMER"), "kubectl get table: {header:?}");
    } else {
        eprintln!("kubectl is not installed: the demo used its kube-rs fallback (checked here instead)");
        assert!(run.stdout.contains("kubectl not found on PATH"), "{}", run.stdout);
    }
}

#[test]
fn without_kubectl_the_demo_applies_the_same_yaml_through_kube_rs() {
    if !kubectl_installed() {
        eprintln!("skipped: kubectl is not installed, so the other test already ran the kube-rs fallback");
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let run = run_demo(&["--without-kubectl"]);
    assert_demo_passed(&run);
    assert!(run.stdout.contains("server-side apply through kube-rs instead"), "{}", run.stdout);
    assert!(!run.stdout.contains("$ kubectl"), "{}", run.stdout);
}
