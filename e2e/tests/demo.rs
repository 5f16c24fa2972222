//! `make demo` end to end: the demo binary (`e2e/src/bin/demo.rs`) runs the operator binary as
//! its own process against the dev stack (a real Kubernetes control plane; real Keycloak, EDC and
//! OpenBao by default, their doubles with `--doubles`), applies `examples/` (with kubectl when it
//! is installed, else through kube-rs), and must print the message its consumer received through
//! each issued DataAddress, exit 0, never show a secret it handled — not in its output, not in
//! the operator's log — and leave nothing behind: the example namespace deleted, no process it
//! started still running once it has exited.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One demo at a time: each starts a control plane, RabbitMQ, Mosquitto, an operator (and JVMs).
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
    /// Processes the demo started that were still running after it exited (none may be).
    left_running: Vec<String>,
}

fn run_demo(extra: &[&str]) -> Run {
    let operator = operator();
    let dir = tempfile::tempdir().unwrap();
    let tracing_log = dir.path().join("demo-tracing.log");
    let demo = Command::new(DEMO)
        .args(["--operator", &operator.display().to_string()])
        .args(["--log-dir", &dir.path().display().to_string()])
        .args(extra)
        .env("MQTT_DSP_TEST_LOG", &tracing_log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the demo runs");
    let demo_pid = demo.id();
    let output = demo.wait_with_output().expect("the demo's output");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let stdout = text(&output.stdout);
    let operator_pid = stdout
        .lines()
        .find_map(|l| l.split_once("mqtt-dsp-operator run --config")?.1.split_once("(pid ")?.1.split([',', ')']).next())
        .and_then(|pid| pid.trim().parse().ok());
    let mut secrets_file = tracing_log.into_os_string();
    secrets_file.push(".secrets");
    let secrets: std::collections::BTreeSet<String> = std::fs::read_to_string(&secrets_file)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    Run {
        left_running: left_running(demo_pid, operator_pid),
        stdout,
        stderr: text(&output.stderr),
        operator_log: std::fs::read_to_string(dir.path().join("operator.log")).unwrap_or_default(),
        output,
        secrets: secrets.into_iter().collect(),
    }
}

/// What still runs of what the demo with this PID started: its operator, and every launcher's
/// watchdog (a shell whose script watches the demo's PID with `kill -0 PID`; it ends only once
/// its system has stopped). Waits up to 5 s for them to go.
fn left_running(demo_pid: u32, operator_pid: Option<u32>) -> Vec<String> {
    let watchdog = format!("kill -0 {demo_pid} 2>/dev/null");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut left = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.rsplit_once(')').is_none_or(|(_, rest)| rest.trim_start().starts_with('Z')) {
                continue;
            }
            let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
                .replace('\0', " ");
            let operator = Some(pid) == operator_pid && cmdline.contains("mqtt-dsp-operator");
            if operator || cmdline.contains(&watchdog) {
                left.push(format!("pid {pid}: {}", cmdline.chars().take(300).collect::<String>()));
            }
        }
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Exit 0, a received message per transfer of `examples/`, masked credentials, no secret shown,
/// the example namespace deleted, nothing left running.
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
    // A JWT's first four characters (`eyJh` from the real Keycloak, `eyJ0` from the double), then
    // only its length.
    let authorization = out.lines().find(|l| l.contains("\"dsp-mqtt:authorization\": \"eyJ")).unwrap_or_default();
    assert!(
        authorization.contains("… (") && authorization.contains("characters, masked)"),
        "the JWT is shown masked:\n{out}"
    );
    assert!(out.contains("\"dsp-mqtt:refreshToken\": \""), "{out}");
    assert!(out.contains("\"dsp-mqtt:password\": \""), "{out}");
    let masked_in_secrets =
        out.lines().filter(|l| l.trim_start().starts_with('"') && l.contains("characters, masked)")).count();
    assert_eq!(masked_in_secrets, 3, "JWT, refresh token and password masked:\n{out}");
    assert!(out.contains("backends: nothing left of the transfers"), "{out}");
    assert!(out.contains("operator stopped (SIGTERM, exit code 0)"), "{out}");
    assert!(out.contains("namespace \"dataspace\" deleted") || out.contains("namespace/dataspace deleted"), "{out}");
    assert!(out.contains("dev stack stopped in parallel: "), "{out}");
    assert!(out.contains("Demo passed"), "{out}");
    // The timings: each part's start, and the total.
    assert!(out.contains("Timings: dev stack "), "{out}");
    assert!(out.contains("Demo passed; total wall time "), "{out}");
    assert!(run.left_running.is_empty(), "still running after the demo exited: {:#?}", run.left_running);
}

/// The second part (real systems only): the consumer's own connector, the operator as the
/// provider connector's data plane, a live message through the EDR, termination cuts it off.
fn assert_dataspace_part(out: &str) {
    for expected in [
        "data plane mqtt-dsp-operator-demo AVAILABLE for source Mqtt, transfer Mqtt-PULL",
        "identity: none of the asset's own",
        "distributions [\"Mqtt-PULL\"]",
        "consumer: contract negotiation FINALIZED",
        "made by the data plane for did:web:consumer.example.com",
        "consumer: reconnecting with the EDR is refused",
    ] {
        assert!(out.contains(expected), "{expected:?} missing:\n{out}");
    }
    let edr = out.lines().find(|l| l.contains("EDR (from the consumer's")).unwrap_or_default();
    assert!(edr.contains("characters, masked)") && edr.contains("username dsp-mqtt-transfer-"), "{edr}");
    let received = out.lines().find(|l| l.contains("consumer: received on factory/line-7/")).unwrap_or_default();
    assert!(received.contains("\"transfer\":\"dsp-"), "a live message through the EDR: {out}");
}

/// The versions of the real systems, from their launchers.
fn assert_real_systems(out: &str) {
    let k8s = format!("kube-apiserver + kube-controller-manager {}", e2e::systems::kubernetes::version());
    assert!(out.contains(&k8s), "{out}");
    let keycloak = format!("Keycloak {} (real), realm dataspace-", e2e::systems::keycloak::VERSION);
    assert!(out.contains(&keycloak), "{out}");
    let edc = format!("EDC {} control plane \"provider\" (real", e2e::systems::edc::configured_version());
    assert!(out.contains(&edc), "{out}");
    let openbao = format!("OpenBao {} (real, Vault-compatible), KV v2 at secret", e2e::systems::vault::VERSION);
    assert!(out.contains(&openbao), "{out}");
}

#[test]
fn the_demo_delivers_a_live_message_through_each_issued_data_address_and_shows_no_secret() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let run = run_demo(&[]);
    assert_demo_passed(&run);
    assert_real_systems(&run.stdout);
    assert_dataspace_part(&run.stdout);
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

/// The doubles mode, and (where kubectl is installed; else the other test ran it) the kube-rs
/// fallback: both in one run, since each is cheap beside the real mode.
#[test]
fn with_doubles_and_without_kubectl_the_demo_passes_the_same_way() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let run = run_demo(&["--doubles", "--without-kubectl"]);
    assert_demo_passed(&run);
    let out = &run.stdout;
    assert!(out.contains("Keycloak        https://") && out.contains("double, realm dataspace"), "{out}");
    assert!(out.contains("double, Factoryx flavour"), "{out}");
    assert!(!out.contains("(real), realm"), "{out}");
    assert!(!out.contains("The dataspace:"), "no dataspace part with the doubles: {out}");
    assert!(out.contains("Vault           https://") && !out.contains("OpenBao"), "the Vault double:\n{out}");
    let k8s = format!("kube-apiserver + kube-controller-manager {}", e2e::systems::kubernetes::version());
    assert!(out.contains(&k8s), "Kubernetes is the real control plane in every mode:\n{out}");
    assert!(out.contains("server-side apply through kube-rs instead"), "{out}");
    assert!(!out.contains("$ kubectl"), "{out}");
}
