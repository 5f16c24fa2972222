//! `make demo`: the operator end to end on one machine, the way a user would drive it.
//!
//! 1. starts the dev stack, its parts in parallel: a real Kubernetes control plane (etcd,
//!    kube-apiserver, kube-controller-manager with RBAC, `e2e::systems::kubernetes`), real
//!    Keycloak (a realm made for the demo) and a real EDC control plane per connector profile
//!    (`e2e::systems`), a real OpenBao (Vault-compatible), real Mosquitto and real RabbitMQ
//!    (OAuth 2.0 against that Keycloak); with `--doubles`, the Keycloak, EDC and Vault doubles
//!    instead (a faster start);
//! 2. installs `crds/` with `kubectl` as the cluster's administrator (waiting until they are
//!    Established) and starts the operator binary as its own process, as the operator's
//!    ServiceAccount under exactly the RBAC of `deploy/rbac.yaml`, with
//!    `examples/operator-config.yaml` pointed at that stack (its log goes to a file);
//! 3. applies the manifests in `examples/` with `kubectl` as the administrator (without kubectl:
//!    the same YAML by server-side apply through kube-rs, and it says so), binding the operator's
//!    Secret writes in the examples' namespace as deploy/rbac.yaml asks, and waits for Ready;
//! 4. for every MqttTransfer: reads its Secret, prints the DataAddress with the secrets masked,
//!    connects a consumer with nothing but what the Secret holds, publishes a message as the
//!    provider and prints what the consumer received;
//! 5. deletes the resources, waits until they are gone, checks that the backends hold nothing
//!    the operator created (but what `deletionPolicy: Retain` keeps), deletes the example
//!    namespace, stops everything.
//!
//! It prints what it runs (with versions) and how long each part took. Exit code 0 only if every
//! step worked. Everything here is test tooling (docs/dev-stack.md).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use e2e::brokers::mosquitto::{self, Mosquitto};
use e2e::brokers::rabbitmq::{self, OAuthSettings, RabbitMq};
use e2e::consumer::{Consumer, FromSecret};
use e2e::doubles::edc::{self, EdcConfig, EdcDouble, Flavour};
use e2e::doubles::keycloak::{self, KeycloakDouble};
use e2e::doubles::vault::{self, VaultDouble};
use e2e::fixtures::consumer_options;
use e2e::systems::edc::{Edc, EdcOptions};
use e2e::systems::keycloak::{Keycloak, Realm};
use e2e::systems::kubernetes::{self, ControlPlane};
use e2e::systems::vault::Vault;
use e2e::tls::TestCa;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::Scope;
use serde_json::{Value, json};

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// How long resources get to become Ready, and to go away.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Field manager of the kube-rs fallback.
const FIELD_MANAGER: &str = "mqtt-dsp-demo";

// --- output ---------------------------------------------------------------------------------

/// Everything printed, kept for the final check that no secret was shown.
static TRANSCRIPT: Mutex<String> = Mutex::new(String::new());

fn say(text: &str) {
    println!("{text}");
    let mut t = TRANSCRIPT.lock().unwrap_or_else(|e| e.into_inner());
    t.push_str(text);
    t.push('\n');
}

/// Steps so far, and how many there are (three, one per transfer, and the clean-up).
static STEPS: Mutex<(usize, usize)> = Mutex::new((0, 0));

fn step(title: &str) {
    let (n, total) = {
        let mut s = STEPS.lock().unwrap_or_else(|e| e.into_inner());
        s.0 += 1;
        *s
    };
    say("");
    say(&format!("== {n}/{total}  {title}"));
}

fn indent(text: &str) {
    for line in text.lines() {
        say(&format!("   {line}"));
    }
}

/// Secrets this run handled (credentials of the stack, issued tokens and passwords): none may
/// appear in the output or in the operator's log. Also registered for the test suite's leak
/// check (`e2e::logs`, active when `MQTT_DSP_TEST_LOG` is set).
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn secret(value: &str) {
    e2e::logs::register_secret(value);
    if value.len() >= 8 {
        SECRETS.lock().unwrap_or_else(|e| e.into_inner()).push(value.to_owned());
    }
}

/// Seconds, as the timings are printed.
fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Phases of the run and how long each took, for the summary at the end.
static PHASES: Mutex<Vec<(&'static str, Duration)>> = Mutex::new(Vec::new());

/// Records how long a phase took since `since`, and returns now (the next phase's start).
fn phase(name: &'static str, since: Instant) -> Instant {
    PHASES.lock().unwrap_or_else(|e| e.into_inner()).push((name, since.elapsed()));
    Instant::now()
}

// --- options --------------------------------------------------------------------------------

enum KubectlChoice {
    /// Look for `kubectl` on PATH.
    Auto,
    /// This binary.
    Path(PathBuf),
    /// Use kube-rs even if kubectl is there.
    Without,
}

/// Which Keycloak, EDC and Vault the demo runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// The real ones (`e2e::systems`): the default.
    Real,
    /// The test doubles (`e2e::doubles`): `--doubles`, a faster start.
    Doubles,
}

struct Options {
    repo: PathBuf,
    operator: PathBuf,
    kubectl: KubectlChoice,
    log_dir: PathBuf,
    mode: Mode,
}

impl Options {
    fn parse() -> Result<Self, Failure> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let exe_dir = std::env::current_exe()?.parent().map(Path::to_owned).unwrap_or_default();
        let mut o = Options {
            operator: exe_dir.join("mqtt-dsp-operator"),
            log_dir: exe_dir.join("..").join("demo"),
            repo,
            kubectl: KubectlChoice::Auto,
            mode: Mode::Real,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--operator" => o.operator = value()?.into(),
                "--repo" => o.repo = value()?.into(),
                "--kubectl" => o.kubectl = KubectlChoice::Path(value()?.into()),
                "--without-kubectl" => o.kubectl = KubectlChoice::Without,
                "--log-dir" => o.log_dir = value()?.into(),
                "--doubles" => o.mode = Mode::Doubles,
                "--help" | "-h" => {
                    println!(
                        "demo [--operator target/debug/mqtt-dsp-operator] [--kubectl PATH | --without-kubectl] \
                         [--doubles] [--repo DIR] [--log-dir target/demo]\n\n\
                         Runs the operator against the dev stack, applies examples/ with kubectl, and shows a \
                         consumer receiving a live message through the issued DataAddress. `make demo` builds \
                         and runs it.\n\n\
                         The dev stack: a real Kubernetes control plane (RBAC on; the operator runs as its \
                         ServiceAccount), real Keycloak, a real EDC control plane and a real OpenBao \
                         (Vault-compatible), real Mosquitto and RabbitMQ. `bash scripts/install-systems.sh` \
                         installs Kubernetes, Keycloak and EDC under target/systems/, `bash \
                         e2e/systems/vault/install.sh` OpenBao.\n\n\
                         With the real systems a second part shows the dataspace path: a consumer's own EDC \
                         connector negotiates with a provider connector whose MQTT data plane the operator is, \
                         and receives its own credentials in the EDR.\n\n\
                         --doubles  the Keycloak, EDC and Vault test doubles instead of the real ones (a faster \
                         start; no dataspace part: it needs two real connectors)"
                    );
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other} (see --help)").into()),
            }
        }
        Ok(o)
    }
}

fn main() -> ExitCode {
    mqtt_dsp_operator::install_crypto_provider();
    let options = match Options::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let started = Instant::now();
    let outcome = runtime.block_on(async {
        tokio::select! {
            result = run(&options) => result,
            _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
        }
    });
    // Whatever is still running stops with the runtime (the stack's drop) or, at the latest,
    // with this process (the launchers' watchdogs).
    drop(runtime);
    let total = started.elapsed();
    match outcome {
        Ok(()) => {
            say("");
            let phases = PHASES.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let parts: Vec<String> = phases.iter().map(|(name, took)| format!("{name} {}", secs(*took))).collect();
            say(&format!("Timings: {}", parts.join(", ")));
            say(&format!("Demo passed; total wall time {}.", secs(total)));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\ndemo failed after {}: {e}", secs(total));
            ExitCode::FAILURE
        }
    }
}

// --- the run --------------------------------------------------------------------------------

async fn run(options: &Options) -> Result<(), Failure> {
    let manifests = Manifests::load(&options.repo.join("examples"))?;
    let config_example: Value =
        serde_yaml::from_str(&std::fs::read_to_string(options.repo.join("examples/operator-config.yaml"))?)?;
    let dataspace_steps = usize::from(options.mode == Mode::Real);
    STEPS.lock().unwrap_or_else(|e| e.into_inner()).1 = 4 + dataspace_steps + manifests.transfers().count();

    let mut since = Instant::now();
    step(match options.mode {
        Mode::Real => {
            "Dev stack: real Kubernetes, Keycloak, EDC and OpenBao (Vault), real Mosquitto and RabbitMQ (in parallel)"
        }
        Mode::Doubles => {
            "Dev stack (--doubles): real Kubernetes, the EDC/Keycloak/Vault doubles, real Mosquitto and RabbitMQ (in parallel)"
        }
    });
    let stack = Stack::start(&config_example, options.mode).await?;
    stack.describe();
    since = phase("dev stack", since);

    let kube = Kube::new(options, &stack).await?;
    step("Install the CRDs and start the operator as its own process");
    kube.apply(&[options.repo.join("crds")], true).await?;
    kube.wait_established(&options.repo.join("crds")).await?;
    std::fs::create_dir_all(&options.log_dir)?;
    let log = options.log_dir.join("operator.log");
    let config_file = stack.dir.path().join("operator-config.yaml");
    std::fs::write(&config_file, serde_yaml::to_string(&stack.operator_config(&config_example)?)?)?;
    indent("configuration: examples/operator-config.yaml with the dev stack's URLs, its CA as caBundle and");
    indent("               every credential from a file (instead of Secrets and Vault's Kubernetes auth)");
    let operator_kubeconfig = stack.operator_kubeconfig().await?;
    indent(&format!(
        "kubeconfig:    ServiceAccount {}/{} (a TokenRequest token; the rights of deploy/rbac.yaml, nothing more)",
        kubernetes::OPERATOR_NAMESPACE,
        kubernetes::OPERATOR_SERVICE_ACCOUNT
    ));
    let operator_started = Instant::now();
    let mut operator = OperatorProcess::start(&options.operator, &config_file, &operator_kubeconfig, &log).await?;
    indent(&format!(
        "$ mqtt-dsp-operator run --config operator-config.yaml   (pid {}, ready in {})",
        operator.pid(),
        secs(operator_started.elapsed())
    ));
    indent(&format!("operator log: {}", display(&log)));
    since = phase("CRDs and operator", since);

    step("Apply the examples and wait for Ready");
    let before = Snapshot::take(&stack).await?;
    let files = manifests.files();
    // deploy/rbac.yaml lets the operator write MqttTransfer Secrets in no namespace: as it says,
    // the administrator binds that ClusterRole in each namespace the configuration serves.
    let namespaces: Vec<&Doc> = manifests.docs.iter().filter(|d| d.kind == "Namespace").collect();
    let mut namespace_files: Vec<PathBuf> = namespaces.iter().map(|d| d.file.clone()).collect();
    namespace_files.dedup();
    kube.apply(&namespace_files, false).await?;
    for doc in &namespaces {
        stack.kubernetes.serve_namespace(&doc.name).await;
        indent(&format!(
            "rolebinding/{} in namespace {} to the ClusterRole of that name (deploy/rbac.yaml: Secret writes only where bound)",
            kubernetes::TRANSFER_SECRETS_ROLE,
            doc.name
        ));
    }
    kube.apply(&files, false).await?;
    kube.wait_ready(&manifests).await?;
    kube.show(&manifests).await?;
    let ready = Snapshot::take(&stack).await?;
    let records = Records::read(&kube.client, &manifests).await?;
    indent(&format!("created by the operator: {}", ready.minus(&before).summary()));
    since = phase("examples Ready", since);

    let client = kube.client.clone();
    for transfer in manifests.transfers() {
        step(&format!("Transfer {}: the DataAddress and a live message", transfer.name));
        consume(&client, &stack, transfer).await?;
    }
    since = phase("live messages", since);

    if let Some(dataspace) = &stack.dataspace {
        step(
            "The dataspace: a consumer's own connector gets its own credentials, the operator being the provider's data plane",
        );
        let namespace = namespaces.first().map(|d| d.name.clone()).ok_or("the examples create no namespace")?;
        dataspace_path(&kube, &stack, dataspace, &namespace).await?;
        since = phase("dataspace", since);
    }

    step("Clean up: delete the resources, check the backends, stop everything");
    let mut deletion: Vec<PathBuf> = manifests.transfers().map(|d| d.file.clone()).collect();
    deletion.extend(manifests.assets().map(|d| d.file.clone()));
    deletion.dedup();
    kube.delete(&deletion, &manifests).await?;
    let after = Snapshot::take(&stack).await?;
    check_clean(&stack, &before, &after, &records).await?;
    kube.delete_namespaces(&manifests, &stack.kubernetes).await?;
    let code = operator.stop();
    match code {
        Some(0) => indent("operator stopped (SIGTERM, exit code 0)"),
        other => return Err(format!("the operator ended with {other:?} after SIGTERM; see {}", display(&log)).into()),
    }
    let stopping = Instant::now();
    let stopped = stack.stop();
    indent(&format!("dev stack {stopped}; all down after {}", secs(stopping.elapsed())));
    phase("clean-up", since);
    check_no_secret_shown(&log)?;
    Ok(())
}

fn display(path: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    let clean = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    clean.strip_prefix(&cwd).map(|p| p.display().to_string()).unwrap_or_else(|_| clean.display().to_string())
}

// --- the manifests --------------------------------------------------------------------------

/// One Kubernetes object from `examples/`.
#[derive(Clone, Debug)]
struct Doc {
    file: PathBuf,
    value: Value,
    kind: String,
    name: String,
    namespace: Option<String>,
}

struct Manifests {
    docs: Vec<Doc>,
}

impl Manifests {
    /// The Namespaces, MqttAssets and MqttTransfers in `dir`'s YAML files (other files, such as
    /// the operator configuration, are not Kubernetes objects and are skipped).
    fn load(dir: &Path) -> Result<Self, Failure> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        let mut docs = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file)?;
            for document in serde_yaml::Deserializer::from_str(&text) {
                let value: Value =
                    serde::Deserialize::deserialize(document).map_err(|e| format!("{}: {e}", file.display()))?;
                let kind = value["kind"].as_str().unwrap_or_default().to_owned();
                if !matches!(kind.as_str(), "Namespace" | "MqttAsset" | "MqttTransfer") {
                    continue;
                }
                docs.push(Doc {
                    file: file.clone(),
                    name: value["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                    namespace: value["metadata"]["namespace"].as_str().map(str::to_owned),
                    kind,
                    value,
                });
            }
        }
        let order = |d: &Doc| ["Namespace", "MqttAsset", "MqttTransfer"].iter().position(|k| *k == d.kind);
        docs.sort_by_key(|d| (order(d), d.file.clone()));
        if !docs.iter().any(|d| d.kind == "MqttTransfer") {
            return Err(format!("no MqttTransfer in {}", dir.display()).into());
        }
        Ok(Self { docs })
    }

    /// The files, in apply order (namespaces, assets, transfers).
    fn files(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for d in &self.docs {
            if !out.contains(&d.file) {
                out.push(d.file.clone());
            }
        }
        out
    }

    fn assets(&self) -> impl Iterator<Item = &Doc> {
        self.docs.iter().filter(|d| d.kind == "MqttAsset")
    }

    fn transfers(&self) -> impl Iterator<Item = &Doc> {
        self.docs.iter().filter(|d| d.kind == "MqttTransfer")
    }

    /// The MqttAssets and MqttTransfers (what becomes Ready).
    fn resources(&self) -> impl Iterator<Item = &Doc> {
        self.docs.iter().filter(|d| d.kind != "Namespace")
    }

    /// The MqttAssets and MqttTransfers in `files`, in the order of the files.
    fn resources_in<'a>(&'a self, files: &'a [PathBuf]) -> impl Iterator<Item = &'a Doc> {
        files.iter().flat_map(move |f| self.resources().filter(move |d| d.file == *f))
    }
}

// --- the stack ------------------------------------------------------------------------------

/// A connector profile's EDC: a real control plane, or the double.
enum Connector {
    Real(Edc),
    Double(EdcDouble),
}

impl Connector {
    fn management_url(&self) -> &str {
        match self {
            Connector::Real(edc) => &edc.management_url,
            Connector::Double(edc) => &edc.management_url,
        }
    }

    fn api_key(&self) -> &str {
        match self {
            Connector::Real(edc) => &edc.api_key,
            Connector::Double(_) => edc::API_KEY,
        }
    }

    fn describe(&self) -> String {
        match self {
            Connector::Real(edc) => {
                format!("EDC {} control plane \"{}\" (real, Management API v3)", edc.version, edc.name)
            }
            Connector::Double(edc) => format!("double, {:?} flavour", edc.config.flavour),
        }
    }

    /// Its assets, policy definitions and contract definitions, as a snapshot names them.
    async fn objects(&self, http: &reqwest::Client) -> Result<BTreeSet<String>, Failure> {
        let mut out = BTreeSet::new();
        match self {
            Connector::Double(edc) => {
                out.extend(edc.state.assets().into_iter().map(|a| format!("asset {}", a.id)));
                out.extend(edc.state.policies().into_iter().map(|p| format!("policy {}", p.id)));
                out.extend(
                    edc.state.contract_definitions().into_iter().map(|c| format!("contract definition {}", c.id)),
                );
            }
            Connector::Real(edc) => {
                // The Management API's query endpoints, as the connector's administrator would list.
                let query = json!({
                    "@context": {"@vocab": edc::EDC_NAMESPACE},
                    "@type": "QuerySpec",
                    "offset": 0,
                    "limit": 10_000,
                });
                for (path, what) in [
                    ("assets", "asset"),
                    ("policydefinitions", "policy"),
                    ("contractdefinitions", "contract definition"),
                ] {
                    let listed: Value = http
                        .post(format!("{}/v3/{path}/request", edc.management_url))
                        .header("X-Api-Key", &edc.api_key)
                        .json(&query)
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    let ids = listed.as_array().ok_or_else(|| format!("EDC {path}/request: not a list"))?;
                    out.extend(ids.iter().filter_map(|o| o["@id"].as_str()).map(|id| format!("{what} {id}")));
                }
            }
        }
        Ok(out)
    }
}

/// The identity provider profile's Keycloak: the real one with a realm made for this run, or
/// the double.
enum Identity {
    Real { keycloak: &'static Keycloak, realm: Realm, client_secret: String },
    Double(KeycloakDouble),
}

impl Identity {
    fn base_url(&self) -> String {
        match self {
            Identity::Real { realm, .. } => realm.base_url.clone(),
            Identity::Double(kc) => kc.server.base_url.clone(),
        }
    }

    fn realm(&self) -> String {
        match self {
            Identity::Real { realm, .. } => realm.name.clone(),
            Identity::Double(kc) => kc.realm(),
        }
    }

    fn client_secret(&self) -> &str {
        match self {
            Identity::Real { client_secret, .. } => client_secret,
            Identity::Double(_) => KEYCLOAK_SECRET,
        }
    }

    /// The JWKS URL by the name `localhost`: Erlang's hostname check (RabbitMQ) does not match
    /// IP SANs.
    fn localhost_jwks_url(&self) -> String {
        match self {
            Identity::Real { realm, .. } => realm.localhost_jwks_url(),
            Identity::Double(kc) => kc.jwks_url().replace("127.0.0.1", "localhost"),
        }
    }

    fn describe(&self) -> String {
        match self {
            Identity::Real { realm, .. } => {
                format!("Keycloak {} (real), realm {} made for this run", e2e::systems::keycloak::VERSION, realm.name)
            }
            Identity::Double(kc) => format!("double, realm {}", kc.realm()),
        }
    }

    /// The realm's clients, as a snapshot names them.
    async fn clients(&self) -> Result<BTreeSet<String>, Failure> {
        match self {
            Identity::Double(kc) => Ok(kc.clients().into_iter().map(|c| format!("client {}", c.client_id)).collect()),
            Identity::Real { keycloak, realm, .. } => {
                let path = format!("{}/clients?first=0&max=10000", realm.name);
                let (status, listed) = keycloak.admin(reqwest::Method::GET, &path, None).await?;
                let clients = listed.as_array().filter(|_| status == 200).ok_or_else(|| {
                    format!("Keycloak: listing the clients of realm {} answered {status}", realm.name)
                })?;
                Ok(clients.iter().filter_map(|c| c["clientId"].as_str()).map(|id| format!("client {id}")).collect())
            }
        }
    }
}

impl Drop for Identity {
    fn drop(&mut self) {
        if let Identity::Real { .. } = self {
            stop_keycloak();
        }
    }
}

/// Stops the real Keycloak this process started. `Keycloak::shared` keeps one instance until the
/// process ends (its watchdog then stops it) and has no stop of its own, so the demo sends TERM
/// to that watchdog, its own child, by PID: the watchdog stops kc.sh (KILL after 10 s), removes
/// Keycloak's directory and exits. Returns whether there was one to stop.
fn stop_keycloak() -> bool {
    stop_watchdogs_of(&Keycloak::home().join("bin/kc.sh").display().to_string())
}

/// Sends TERM to this process's children (launcher watchdogs) whose command line names `program`
/// and waits for them to end (up to 20 s each). Returns whether there was one to stop.
fn stop_watchdogs_of(program: &str) -> bool {
    let me = std::process::id().to_string();
    let mut stopped = false;
    for pid in child_processes() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(program) {
            continue;
        }
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && process_state(pid).is_some_and(|(state, ppid)| state != 'Z' && ppid == me) {
            std::thread::sleep(Duration::from_millis(100));
        }
        stopped = true;
    }
    stopped
}

/// The PIDs of this process's children (from /proc).
fn child_processes() -> Vec<u32> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| process_state(*pid).is_some_and(|(state, ppid)| state != 'Z' && ppid == me))
        .collect()
}

/// State and parent PID of a process (`/proc/PID/stat`), if it exists.
fn process_state(pid: u32) -> Option<(char, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.to_owned()))
}

/// The secret store profile's backend: a real OpenBao (Vault-compatible, `e2e::systems::vault`)
/// with its root token and the KV v2 mount `secret` (what the example's `kvMount` names and
/// EDC's default), or the Vault double (`--doubles`).
enum SecretStore {
    Real(&'static Vault),
    Double(VaultDouble),
}

impl SecretStore {
    async fn start(ca: &TestCa, mode: Mode) -> Result<Self, Failure> {
        match mode {
            Mode::Real => {
                let vault = Vault::shared().await?;
                secret(vault.root_token());
                Ok(SecretStore::Real(vault))
            }
            Mode::Doubles => Ok(SecretStore::Double(vault::start(ca, VAULT_TOKEN).await?)),
        }
    }

    fn url(&self) -> String {
        match self {
            SecretStore::Real(v) => v.url().to_string(),
            SecretStore::Double(v) => v.url().to_string(),
        }
    }

    fn mount(&self) -> String {
        match self {
            SecretStore::Real(_) => e2e::systems::vault::DEFAULT_MOUNT.to_owned(),
            SecretStore::Double(v) => v.mount.clone(),
        }
    }

    fn token(&self) -> &str {
        match self {
            SecretStore::Real(v) => v.root_token(),
            SecretStore::Double(_) => VAULT_TOKEN,
        }
    }

    fn describe(&self) -> String {
        match self {
            SecretStore::Real(_) => {
                format!("OpenBao {} (real, Vault-compatible), KV v2 at {}", e2e::systems::vault::VERSION, self.mount())
            }
            SecretStore::Double(_) => "double".to_owned(),
        }
    }

    /// Whether the KV v2 key (below the mount) holds data (its latest version is live).
    async fn holds(&self, key: &str) -> Result<bool, Failure> {
        match self {
            SecretStore::Real(v) => {
                let path = format!("{}/data/{key}", self.mount());
                match v.api(reqwest::Method::GET, &path, None).await? {
                    (200, body) => Ok(body["data"]["data"].is_object()),
                    (404, _) => Ok(false),
                    (status, body) => Err(format!("OpenBao: reading {path} answered {status}: {body}").into()),
                }
            }
            SecretStore::Double(v) => Ok(v.secret(key).is_some_and(|s| s.data.is_some())),
        }
    }
}

impl Drop for SecretStore {
    /// `Vault::shared` keeps one OpenBao until the process ends and has no stop of its own: as
    /// with Keycloak, TERM to its watchdog (which stops `bao` and removes its directory).
    fn drop(&mut self) {
        if let SecretStore::Real(_) = self {
            stop_watchdogs_of(&Vault::home().join("bin/bao").display().to_string());
        }
    }
}

struct Stack {
    ca: TestCa,
    mode: Mode,
    /// Dropped before the other parts: the control plane (`kubernetes`) goes last.
    rabbitmq: Option<RabbitMq>,
    mosquitto: Option<Mosquitto>,
    /// One EDC per connector profile.
    edcs: Vec<(String, Connector)>,
    /// The dataspace part's connectors (real EDCs only).
    dataspace: Option<Dataspace>,
    identity: Option<Identity>,
    vault: SecretStore,
    kubernetes: ControlPlane,
    /// How long each part took to start (they start in parallel).
    start_times: Vec<(&'static str, Duration)>,
    dir: tempfile::TempDir,
}

/// The dataspace part's provider connector profile (added to the example configuration).
const DATASPACE_PROFILE: &str = "dataspace";
/// The id the operator registers as a data plane under.
const DATA_PLANE_ID: &str = "mqtt-dsp-operator-demo";
/// The consumer's participant id in the dataspace part.
const CONSUMER_ID: &str = "did:web:consumer.example.com";

/// The dataspace part: a provider connector whose MQTT data plane the operator is, and a
/// consumer's connector (real EDCs; the doubles cannot negotiate).
struct Dataspace {
    provider: Edc,
    consumer: Edc,
    /// What the provider's control plane presents to the data plane (in the registered URL).
    token: String,
}

/// The Vault double's root token.
const VAULT_TOKEN: &str = "demo-vault-double-root-token";
/// The operator's client secret in the Keycloak double (the real Keycloak gets a random one).
const KEYCLOAK_SECRET: &str = "demo-keycloak-double-operator-secret";
/// The JWT claim RabbitMQ reads scopes from: the operator's default for `additionalScopesKey`.
const SCOPES_KEY: &str = "dsp_mqtt_scopes";

/// Runs a blocking launcher on tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Failure> + Send + 'static) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f).await?
}

impl Stack {
    /// Starts, in parallel, the pieces the example configuration's profiles name: the Kubernetes
    /// control plane (CRDs and deploy/rbac.yaml applied), an EDC per connector (real, or a
    /// double of the flavour `endpointTypeSpelling` names), Keycloak with the realm and client of
    /// the `default` identity provider (real: a fresh realm; double: the example's realm), the
    /// OpenBao (or the Vault double), Mosquitto, and RabbitMQ with the OAuth 2.0 settings of the first RabbitMQ
    /// profile (once Keycloak's realm exists: it needs the JWKS URL).
    async fn start(example: &Value, mode: Mode) -> Result<Stack, Failure> {
        Mosquitto::installed().map_err(hint)?;
        RabbitMq::installed().map_err(hint)?;
        kubernetes::installed()?;
        if mode == Mode::Real {
            let or_doubles = |e: e2e::systems::SystemError| -> Failure {
                format!("{e}\n  (or run with --doubles: the Keycloak, EDC and Vault doubles instead)").into()
            };
            Keycloak::installed().map_err(or_doubles)?;
            e2e::systems::edc::installed(&e2e::systems::edc::configured_version()).map_err(or_doubles)?;
            Vault::installed().map_err(or_doubles)?;
        }
        for s in [VAULT_TOKEN, mosquitto::ADMIN_PASSWORD, mosquitto::PUBLISHER_PASSWORD, rabbitmq::ADMIN_PASSWORD] {
            secret(s);
        }
        // The real systems serve certificates of this process's shared CA; the doubles and
        // brokers use it too, so one caBundle covers the whole stack.
        let ca = TestCa::shared();

        let kubernetes = {
            let ca = ca.clone();
            async move {
                let t = Instant::now();
                // Without our CRDs: the demo installs them as a user would (deploy/rbac.yaml is
                // applied, so the operator's ServiceAccount exists with its rights).
                let plane = blocking(move || Ok(ControlPlane::start_without_crds(&ca)?)).await?;
                Ok::<_, Failure>((plane, t.elapsed()))
            }
        };

        let connector_profiles: Vec<(String, Flavour)> = profiles(example, "connectors")?
            .into_iter()
            .map(|(profile, c)| {
                let flavour = if c["endpointTypeSpelling"] == "factoryx" { Flavour::Factoryx } else { Flavour::Stock };
                (profile, flavour)
            })
            .collect();
        let connectors = {
            let ca = ca.clone();
            async move {
                let t = Instant::now();
                let mut dataspace = None;
                let edcs: Vec<(String, Connector)> = match mode {
                    Mode::Real => {
                        // The default profile is the provider's connector.
                        let names: Vec<String> = connector_profiles
                            .iter()
                            .map(|(p, _)| if p == "default" { "provider".to_owned() } else { p.clone() })
                            .collect();
                        let mut options: Vec<EdcOptions> = names.iter().map(|n| EdcOptions::named(n)).collect();
                        // The dataspace part: a provider connector of its own, and a consumer's.
                        options.push(EdcOptions::named(DATASPACE_PROFILE));
                        let mut consumer = EdcOptions::named("consumer");
                        consumer.participant_id = CONSUMER_ID.into();
                        options.push(consumer);
                        let mut started = blocking(move || Ok(Edc::start_all(&ca, &options)?)).await?;
                        let (consumer, provider) = (started.pop(), started.pop());
                        let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
                        dataspace =
                            provider.zip(consumer).map(|(provider, consumer)| Dataspace { provider, consumer, token });
                        connector_profiles
                            .into_iter()
                            .map(|(p, _)| p)
                            .zip(started.into_iter().map(Connector::Real))
                            .collect()
                    }
                    Mode::Doubles => {
                        let mut edcs = Vec::new();
                        for (profile, flavour) in connector_profiles {
                            edcs.push((
                                profile,
                                Connector::Double(edc::start(&ca, EdcConfig::flavour(flavour)).await?),
                            ));
                        }
                        edcs
                    }
                };
                Ok::<_, Failure>((edcs, dataspace, t.elapsed()))
            }
        };

        let idp = &example["identityProviders"]["default"];
        let realm = idp["realm"].as_str().ok_or("identityProviders.default.realm is missing")?.to_owned();
        let client_id = idp["clientId"].as_str().ok_or("identityProviders.default.clientId is missing")?.to_owned();
        let rabbit_profile = profiles(example, "brokers")?
            .into_iter()
            .find(|(_, b)| b["type"] == "rabbitmq")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let text = |k: &str, default: &str| rabbit_profile["rabbitmq"][k].as_str().unwrap_or(default).to_owned();
        let resource_server_id = text("resourceServerId", "rabbitmq");
        let additional_scopes_key = text("additionalScopesKey", SCOPES_KEY);
        let identity_then_rabbitmq = {
            let ca = ca.clone();
            async move {
                let t = Instant::now();
                let identity = match mode {
                    Mode::Real => {
                        let keycloak = Keycloak::shared().await?;
                        let client_secret = format!("demo-{}", uuid::Uuid::new_v4().simple());
                        secret(&client_secret);
                        let realm = keycloak.create_realm(&realm, &client_id, &client_secret).await?;
                        Identity::Real { keycloak, realm, client_secret }
                    }
                    Mode::Doubles => {
                        secret(KEYCLOAK_SECRET);
                        Identity::Double(keycloak::start(&ca, &realm, &client_id, KEYCLOAK_SECRET).await?)
                    }
                };
                let identity_took = t.elapsed();
                let t = Instant::now();
                let oauth = OAuthSettings {
                    jwks_url: identity.localhost_jwks_url(),
                    resource_server_id,
                    additional_scopes_key,
                };
                let rabbitmq = blocking(move || RabbitMq::start(&ca, Some(&oauth)).map_err(hint)).await?;
                Ok::<_, Failure>((identity, identity_took, rabbitmq, t.elapsed()))
            }
        };

        let mosquitto = {
            let ca = ca.clone();
            async move {
                let t = Instant::now();
                let mosquitto = blocking(move || Mosquitto::start(&ca).map_err(hint)).await?;
                Ok::<_, Failure>((mosquitto, t.elapsed()))
            }
        };

        let vault = async {
            let t = Instant::now();
            let vault = SecretStore::start(&ca, mode).await?;
            Ok::<_, Failure>((vault, t.elapsed()))
        };

        let (
            (kubernetes, kubernetes_took),
            (edcs, dataspace, edcs_took),
            (identity, identity_took, rabbitmq, rabbitmq_took),
            (mosquitto, mosquitto_took),
            (vault, vault_took),
        ) = tokio::try_join!(kubernetes, connectors, identity_then_rabbitmq, mosquitto, vault)?;
        for (_, edc) in &edcs {
            secret(edc.api_key());
        }
        if let Some(d) = &dataspace {
            for s in [&d.provider.api_key, &d.consumer.api_key, &d.token] {
                secret(s);
            }
        }
        let dir = tempfile::Builder::new().prefix("mqtt-dsp-demo-").tempdir()?;
        Ok(Stack {
            ca,
            mode,
            rabbitmq: Some(rabbitmq),
            mosquitto: Some(mosquitto),
            edcs,
            dataspace,
            identity: Some(identity),
            vault,
            kubernetes,
            start_times: vec![
                ("Kubernetes", kubernetes_took),
                ("EDC", edcs_took),
                ("Keycloak", identity_took),
                ("RabbitMQ", rabbitmq_took),
                ("Mosquitto", mosquitto_took),
                ("Vault", vault_took),
            ],
            dir,
        })
    }

    fn identity(&self) -> &Identity {
        self.identity.as_ref().expect("the identity provider runs until the stack stops")
    }

    fn mosquitto(&self) -> &Mosquitto {
        self.mosquitto.as_ref().expect("Mosquitto runs until the stack stops")
    }

    fn rabbitmq(&self) -> &RabbitMq {
        self.rabbitmq.as_ref().expect("RabbitMQ runs until the stack stops")
    }

    fn took(&self, part: &str) -> String {
        let took = self.start_times.iter().find(|(p, _)| *p == part).map(|(_, d)| *d).unwrap_or_default();
        secs(took)
    }

    /// What runs, with versions, and how long each part took to start.
    fn describe(&self) {
        let k8s = kubernetes::version();
        let etcd = package_version("etcd-server").map(|v| format!(", etcd {v}")).unwrap_or_default();
        indent(&format!(
            "Kubernetes      {}  kube-apiserver + kube-controller-manager {k8s}{etcd}, RBAC (real; {})",
            self.kubernetes.url,
            self.took("Kubernetes")
        ));
        for (profile, edc) in &self.edcs {
            indent(&format!("EDC ({profile})   {}  {} ({})", edc.management_url(), edc.describe(), self.took("EDC")));
        }
        if let Some(d) = &self.dataspace {
            for (role, edc) in [("provider", &d.provider), ("consumer", &d.consumer)] {
                indent(&format!(
                    "EDC ({role})  {}  real EDC {}, participant {} (the dataspace part)",
                    edc.management_url, edc.version, edc.participant_id
                ));
            }
        }
        indent(&format!(
            "Keycloak        {}  {} ({})",
            self.identity().base_url(),
            self.identity().describe(),
            self.took("Keycloak")
        ));
        indent(&format!("Vault           {}  {} ({})", self.vault.url(), self.vault.describe(), self.took("Vault")));
        let version = |package: &str| package_version(package).map(|v| format!("{v}, ")).unwrap_or_default();
        indent(&format!(
            "Mosquitto       {}  {}  ({}real; {})",
            self.mosquitto().mqtts_url(),
            self.mosquitto().wss_url(),
            version("mosquitto"),
            self.took("Mosquitto")
        ));
        indent(&format!(
            "RabbitMQ        {}  {}  ({}real, OAuth 2.0 against that Keycloak; {} once Keycloak was up)",
            self.rabbitmq().mqtts_url(),
            self.rabbitmq().wss_url(),
            version("rabbitmq-server"),
            self.took("RabbitMQ")
        ));
        if self.mode == Mode::Real {
            indent("(--doubles: the Keycloak, EDC and Vault doubles instead, a faster start)");
        }
    }

    /// A kubeconfig file for the operator's ServiceAccount (its token registered as a secret).
    async fn operator_kubeconfig(&self) -> Result<PathBuf, Failure> {
        let path = self.dir.path().join("operator.kubeconfig");
        self.kubernetes.write_operator_kubeconfig(&path).await;
        let text = std::fs::read_to_string(&path)?;
        for line in text.lines() {
            if let Some(token) = line.trim().strip_prefix("token: ") {
                secret(token);
            }
        }
        Ok(path)
    }

    /// The example configuration with every profile pointed at this stack.
    fn operator_config(&self, example: &Value) -> Result<Value, Failure> {
        let file = |name: &str, content: &str| -> Result<Value, Failure> {
            let path = self.dir.path().join(name);
            std::fs::write(&path, content)?;
            Ok(json!({"file": path.display().to_string()}))
        };
        let ca = file("ca.pem", &self.ca.cert_pem())?;
        let mut config = example.clone();
        for (profile, edc) in &self.edcs {
            let c = &mut config["connectors"][profile];
            c["managementUrl"] = json!(edc.management_url());
            c["apiKey"] = file(&format!("edc-api-key-{profile}"), edc.api_key())?;
            c["caBundle"] = ca.clone();
        }
        for (profile, _) in profiles(example, "identityProviders")? {
            let p = &mut config["identityProviders"][&profile];
            p["adminUrl"] = json!(self.identity().base_url());
            p["realm"] = json!(self.identity().realm());
            p["clientSecret"] = file("keycloak-client-secret", self.identity().client_secret())?;
            p["caBundle"] = ca.clone();
        }
        for (profile, _) in profiles(example, "secretStores")? {
            let p = &mut config["secretStores"][&profile];
            p["url"] = json!(self.vault.url());
            p["kvMount"] = json!(self.vault.mount());
            p["auth"] = json!({"token": file("vault-token", self.vault.token())?});
            p["caBundle"] = ca.clone();
        }
        for (profile, b) in profiles(example, "brokers")? {
            let p = &mut config["brokers"][&profile];
            match b["type"].as_str() {
                Some("mosquitto") => {
                    let m = self.mosquitto();
                    p["adminUrl"] = json!(m.mqtts_url());
                    p["adminUsername"] = json!("admin");
                    p["adminPassword"] = file("mosquitto-admin-password", mosquitto::ADMIN_PASSWORD)?;
                    p["publicUrls"] = json!({"mqtt-tls": m.mqtts_url(), "mqtt-wss": m.wss_url()});
                }
                Some("rabbitmq") => {
                    let r = self.rabbitmq();
                    p["adminUrl"] = json!(r.management_url());
                    p["adminUsername"] = json!(rabbitmq::ADMIN_USER);
                    p["adminPassword"] = file("rabbitmq-admin-password", rabbitmq::ADMIN_PASSWORD)?;
                    p["publicUrls"] = json!({"mqtt-tls": r.mqtts_url(), "mqtt-wss": r.wss_url()});
                }
                other => return Err(format!("brokers.{profile}: the demo has no {other:?} broker").into()),
            }
            p["caBundle"] = ca.clone();
        }
        if let Some(d) = &self.dataspace {
            // The dataspace part: a connector profile like the default one for the provider's
            // connector, and the operator as its data plane (TLS with a certificate of the CA).
            let mut profile = config["connectors"]["default"].clone();
            profile["managementUrl"] = json!(d.provider.management_url);
            profile["apiKey"] = file("edc-api-key-dataspace", &d.provider.api_key)?;
            profile["caBundle"] = ca.clone();
            config["connectors"][DATASPACE_PROFILE] = profile;
            let port = e2e::brokers::free_port();
            let cert = self.ca.server_cert(&["127.0.0.1", "localhost"]);
            config["dataPlane"] = json!({
                "listen": format!("127.0.0.1:{port}"),
                "publicUrl": format!("https://127.0.0.1:{port}"),
                "tls": {"certificate": file("dataplane.crt", &cert.cert_pem)?, "key": file("dataplane.key", &cert.key_pem)?},
                "token": file("dataplane-token", &d.token)?,
                "registrations": {DATASPACE_PROFILE: {
                    "controlUrl": d.provider.control_url,
                    "dataPlaneId": DATA_PLANE_ID,
                    "caBundle": ca.clone(),
                    "checkPeriodSeconds": 5,
                }},
            });
        }
        // The refresh endpoint on a loopback port of its own, with a certificate of the stack's CA.
        let (config, _) = e2e::fixtures::localize_refresh(&serde_yaml::to_string(&config)?, self.dir.path(), &self.ca);
        Ok(serde_yaml::from_str(&config)?)
    }

    /// The provider's publisher on the broker behind `url` (the DataAddress' `baseUrl`).
    fn publisher_for(&self, url: &str) -> Result<e2e::consumer::ConsumerOptions, Failure> {
        let ca = self.ca.cert_pem();
        let (m, r) = (self.mosquitto(), self.rabbitmq());
        if [m.mqtts_url(), m.wss_url()].contains(&url.to_owned()) {
            Ok(consumer_options(m.mqtts_url(), &ca, "publisher", mosquitto::PUBLISHER_PASSWORD))
        } else if [r.mqtts_url(), r.wss_url()].contains(&url.to_owned()) {
            Ok(consumer_options(r.mqtts_url(), &ca, rabbitmq::ADMIN_USER, rabbitmq::ADMIN_PASSWORD))
        } else {
            Err(format!("the DataAddress names {url}, which is none of the dev stack's brokers").into())
        }
    }

    fn http(&self) -> Result<reqwest::Client, Failure> {
        let ca = reqwest::Certificate::from_pem(self.ca.cert_pem().as_bytes())?;
        Ok(reqwest::Client::builder().tls_certs_only([ca]).timeout(Duration::from_secs(30)).build()?)
    }

    /// Stops every part, in parallel (each waits for its processes to end: the JVMs and
    /// RabbitMQ take seconds), and says what was stopped and how long each took.
    fn stop(self) -> String {
        let Stack { mode, rabbitmq, mosquitto, edcs, dataspace, identity, vault, kubernetes, .. } = self;
        let stopped: Vec<(&'static str, Duration)> = std::thread::scope(|scope| {
            let handles = [
                ("RabbitMQ", scope.spawn(move || timed_drop(rabbitmq))),
                ("Mosquitto", scope.spawn(move || timed_drop(mosquitto))),
                (
                    if mode == Mode::Real { "EDC" } else { "EDC double" },
                    scope.spawn(move || timed_drop((edcs, dataspace))),
                ),
                (
                    if mode == Mode::Real { "Keycloak" } else { "Keycloak double" },
                    scope.spawn(move || timed_drop(identity)),
                ),
                (if mode == Mode::Real { "OpenBao" } else { "Vault double" }, scope.spawn(move || timed_drop(vault))),
                ("Kubernetes", scope.spawn(move || timed_drop(kubernetes))),
            ];
            handles.map(|(name, h)| (name, h.join().unwrap_or_default())).into_iter().collect()
        });
        let parts: Vec<String> = stopped.iter().map(|(name, took)| format!("{name} {}", secs(*took))).collect();
        format!("stopped in parallel: {}", parts.join(", "))
    }
}

/// Drops `value` (stopping what it runs) and says how long that took.
fn timed_drop<T>(value: T) -> Duration {
    let t = Instant::now();
    drop(value);
    t.elapsed()
}

/// A Debian package's version, if dpkg knows it.
fn package_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query").args(["-W", "-f=${Version}", package]).output().ok()?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // Debian's revision (`-1.2+deb12u2`) says nothing about the upstream release.
    let upstream = version.split_once('-').map(|(v, _)| v.to_owned()).unwrap_or(version);
    (out.status.success() && !upstream.is_empty()).then_some(upstream)
}

fn hint(e: mosquitto::LaunchError) -> Failure {
    format!("{e}\n  `bash scripts/install-deps.sh` installs Mosquitto and RabbitMQ (`make demo` runs it)").into()
}

/// `(name, profile)` of a profile section of the configuration.
fn profiles(config: &Value, section: &str) -> Result<Vec<(String, Value)>, Failure> {
    let map = config[section].as_object().ok_or_else(|| format!("the configuration has no {section}"))?;
    Ok(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

// --- the operator ---------------------------------------------------------------------------

/// The operator binary as a child process; stopped (SIGTERM, then kill) when dropped.
struct OperatorProcess {
    child: Child,
}

impl OperatorProcess {
    async fn start(binary: &Path, config: &Path, kubeconfig: &Path, log: &Path) -> Result<Self, Failure> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let out = std::fs::File::create(log)?;
        let child = Command::new(binary)
            .args(["run", "--config"])
            .arg(config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("starting {}: {e} (build it: cargo build -p mqtt-dsp-operator)", binary.display()))?;
        let mut process = OperatorProcess { child };
        let ready = format!("http://127.0.0.1:{port}/readyz");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if reqwest::get(&ready).await.is_ok_and(|r| r.status().is_success()) {
                return Ok(process);
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                return Err(format!("the operator exited ({status}); see {}", display(log)).into());
            }
            if Instant::now() > deadline {
                return Err(format!("the operator was not ready within 60 s; see {}", display(log)).into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then the exit code (killed after 15 s: `None`).
    fn stop(&mut self) -> Option<i32> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status.code();
        }
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

// --- kubectl, or kube-rs without it -----------------------------------------------------------

struct Kube {
    kubectl: Option<PathBuf>,
    kubeconfig: PathBuf,
    cache_dir: PathBuf,
    client: kube::Client,
    repo: PathBuf,
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(program)).find(|p| p.is_file())
}

impl Kube {
    async fn new(options: &Options, stack: &Stack) -> Result<Self, Failure> {
        // The cluster administrator's kubeconfig (client certificate, group system:masters): the
        // demo acts as the person who installs the CRDs and applies the examples.
        let kubeconfig = stack.kubernetes.admin_kubeconfig.clone();
        if let Ok(text) = std::fs::read_to_string(&kubeconfig) {
            for line in text.lines() {
                if let Some(key) = line.trim().strip_prefix("client-key-data: ") {
                    secret(key);
                }
            }
        }
        let kubectl = match &options.kubectl {
            KubectlChoice::Path(p) => Some(p.clone()),
            KubectlChoice::Auto => on_path("kubectl"),
            KubectlChoice::Without => None,
        };
        match &kubectl {
            Some(path) => {
                let version = Command::new(path).args(["version", "--client"]).output()?;
                let first = String::from_utf8_lossy(&version.stdout).lines().next().unwrap_or_default().to_owned();
                indent(&format!("kubectl         {} ({first})", path.display()));
            }
            None if matches!(options.kubectl, KubectlChoice::Without) => {
                indent("kubectl         not used (--without-kubectl): server-side apply through kube-rs instead")
            }
            None => indent(
                "kubectl         not found on PATH: the demo applies the same YAML by server-side apply through kube-rs instead",
            ),
        }
        Ok(Kube {
            kubectl,
            kubeconfig,
            cache_dir: stack.dir.path().join("kube-cache"),
            client: stack.kubernetes.admin_client().await,
            repo: options.repo.clone(),
        })
    }

    fn relative(&self, path: &Path) -> String {
        let repo = self.repo.canonicalize().unwrap_or_else(|_| self.repo.clone());
        let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
        path.strip_prefix(&repo).map(|p| p.display().to_string()).unwrap_or_else(|_| path.display().to_string())
    }

    /// Runs kubectl with the demo's kubeconfig, printing the command line and its output.
    async fn kubectl(&self, kubectl: &Path, args: &[String]) -> Result<(), Failure> {
        indent(&format!("$ kubectl {}", args.join(" ")));
        let output = tokio::process::Command::new(kubectl)
            .args(args)
            .current_dir(&self.repo)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", &self.cache_dir)
            .stdin(Stdio::null())
            .output()
            .await?;
        indent(&String::from_utf8_lossy(&output.stdout));
        indent(&String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            return Err(format!(
                "kubectl {} failed ({}); to apply through kube-rs instead: --without-kubectl (make demo DEMO_ARGS=--without-kubectl)",
                args.join(" "),
                output.status
            )
            .into());
        }
        Ok(())
    }

    fn file_args(&self, files: &[PathBuf]) -> Vec<String> {
        files.iter().flat_map(|f| ["-f".to_owned(), self.relative(f)]).collect()
    }

    /// `kubectl apply -f …` (`--server-side` for the CRDs, too large for the last-applied
    /// annotation), or server-side apply of every document through kube-rs.
    async fn apply(&self, files: &[PathBuf], server_side: bool) -> Result<(), Failure> {
        if let Some(kubectl) = &self.kubectl {
            let mut args = vec!["apply".to_owned()];
            if server_side {
                args.push("--server-side".into());
            }
            args.extend(self.file_args(files));
            return self.kubectl(kubectl, &args).await;
        }
        indent(&format!(
            "server-side apply (kube-rs, field manager {FIELD_MANAGER}): {}",
            self.file_args(files).join(" ")
        ));
        for file in files {
            let paths: Vec<PathBuf> = if file.is_dir() {
                let mut v: Vec<PathBuf> = std::fs::read_dir(file)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                    .collect();
                v.sort();
                v
            } else {
                vec![file.clone()]
            };
            for path in paths {
                let text = std::fs::read_to_string(&path)?;
                for document in serde_yaml::Deserializer::from_str(&text) {
                    let value: Value = serde::Deserialize::deserialize(document)?;
                    if value.is_null() {
                        continue;
                    }
                    let (api, name) = self.dynamic(&value).await?;
                    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&value)).await?;
                    indent(&format!("{}/{name} applied", value["kind"].as_str().unwrap_or_default().to_lowercase()));
                }
            }
        }
        Ok(())
    }

    /// `kubectl wait --for=condition=Established -f crds`, or the same by polling; then until
    /// the API server serves the kinds (what the operator checks when it starts).
    async fn wait_established(&self, crds: &Path) -> Result<(), Failure> {
        if let Some(kubectl) = &self.kubectl {
            let mut args = vec!["wait".to_owned(), "--for=condition=Established".into()];
            args.push(format!("--timeout={}s", READY_TIMEOUT.as_secs()));
            args.extend(self.file_args(&[crds.to_owned()]));
            self.kubectl(kubectl, &args).await?;
        } else {
            indent("waiting for condition Established (polling through kube-rs)");
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match mqtt_dsp_operator::run::check_crds(&self.client).await {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => return Err(format!("the CRDs are not served: {e}").into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        if self.kubectl.is_none() {
            indent("customresourcedefinitions established and served");
        }
        Ok(())
    }

    /// The API of an object's kind (found by discovery) and its name.
    async fn dynamic(&self, value: &Value) -> Result<(Api<DynamicObject>, String), Failure> {
        let api_version = value["apiVersion"].as_str().ok_or("a document without apiVersion")?;
        let kind = value["kind"].as_str().ok_or("a document without kind")?;
        let name = value["metadata"]["name"].as_str().ok_or("a document without metadata.name")?.to_owned();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, caps): (ApiResource, _) = kube::discovery::pinned_kind(&self.client, &gvk).await?;
        let api = match (caps.scope, value["metadata"]["namespace"].as_str()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &resource),
            (Scope::Namespaced, None) => Api::default_namespaced_with(self.client.clone(), &resource),
            (Scope::Cluster, _) => Api::all_with(self.client.clone(), &resource),
        };
        Ok((api, name))
    }

    /// `kubectl wait --for=condition=Ready`, or the same by polling.
    async fn wait_ready(&self, manifests: &Manifests) -> Result<(), Failure> {
        let files: Vec<PathBuf> = {
            let mut f: Vec<PathBuf> = manifests.resources().map(|d| d.file.clone()).collect();
            f.dedup();
            f
        };
        if let Some(kubectl) = &self.kubectl {
            let mut args = vec!["wait".to_owned(), "--for=condition=Ready".into()];
            args.push(format!("--timeout={}s", READY_TIMEOUT.as_secs()));
            args.extend(self.file_args(&files));
            return self.kubectl(kubectl, &args).await;
        }
        indent("waiting for condition Ready (polling through kube-rs)");
        for doc in manifests.resources() {
            let (api, name) = self.dynamic(&doc.value).await?;
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                let object = api.get_opt(&name).await?;
                let ready = object.as_ref().and_then(|o| ready_condition(&o.data));
                if ready.as_ref().is_some_and(|(status, _)| status == "True") {
                    indent(&format!("{}/{name} condition met", doc.kind.to_lowercase()));
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("{}/{name} not Ready within {READY_TIMEOUT:?}: {ready:?}", doc.kind).into());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// `kubectl get mqa,mqt`, or a summary of the same columns.
    async fn show(&self, manifests: &Manifests) -> Result<(), Failure> {
        let namespaces: BTreeSet<String> = manifests.resources().filter_map(|d| d.namespace.clone()).collect();
        if let Some(kubectl) = &self.kubectl {
            let mut args = vec!["get".to_owned(), "mqttassets,mqtttransfers".into()];
            match namespaces.iter().next() {
                Some(ns) if namespaces.len() == 1 => args.extend(["-n".to_owned(), ns.clone()]),
                _ => args.push("-A".into()),
            }
            return self.kubectl(kubectl, &args).await;
        }
        for doc in manifests.resources() {
            let (api, name) = self.dynamic(&doc.value).await?;
            let object = api.get(&name).await?;
            let (status, reason) = ready_condition(&object.data).unwrap_or_default();
            let phase = object.data["status"]["phase"].as_str().unwrap_or("-").to_owned();
            indent(&format!("{}/{name}: Ready={status} ({reason}), phase {phase}", doc.kind.to_lowercase()));
        }
        Ok(())
    }

    /// `kubectl delete -f … --wait`, or deletes and waits through kube-rs.
    async fn delete(&self, files: &[PathBuf], manifests: &Manifests) -> Result<(), Failure> {
        if let Some(kubectl) = &self.kubectl {
            let mut args = vec!["delete".to_owned(), "--wait=true".into()];
            args.push(format!("--timeout={}s", READY_TIMEOUT.as_secs()));
            args.extend(self.file_args(files));
            self.kubectl(kubectl, &args).await?;
        } else {
            indent(&format!("deleting through kube-rs: {}", self.file_args(files).join(" ")));
            for doc in manifests.resources_in(files) {
                let (api, name) = self.dynamic(&doc.value).await?;
                api.delete(&name, &DeleteParams::default()).await?;
            }
        }
        // Gone, whichever way they were deleted (finalizers run the operator's cleanup).
        for doc in manifests.resources_in(files) {
            let (api, name) = self.dynamic(&doc.value).await?;
            let deadline = Instant::now() + READY_TIMEOUT;
            while api.get_opt(&name).await?.is_some() {
                if Instant::now() > deadline {
                    return Err(format!("{}/{name} still there after {READY_TIMEOUT:?}", doc.kind).into());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if self.kubectl.is_none() {
                indent(&format!("{}/{name} deleted", doc.kind.to_lowercase()));
            }
        }
        Ok(())
    }

    /// Deletes the namespaces the examples made (`kubectl delete -f examples/namespace.yaml`,
    /// or through kube-rs) and waits until the namespace controller has removed them: nothing
    /// of the demo stays in the cluster, and no finalizer holds anything up.
    async fn delete_namespaces(&self, manifests: &Manifests, plane: &ControlPlane) -> Result<(), Failure> {
        let namespaces: Vec<&Doc> = manifests.docs.iter().filter(|d| d.kind == "Namespace").collect();
        let mut files: Vec<PathBuf> = namespaces.iter().map(|d| d.file.clone()).collect();
        files.dedup();
        if files.is_empty() {
            return Ok(());
        }
        let api: Api<Namespace> = Api::all(self.client.clone());
        if let Some(kubectl) = &self.kubectl {
            let mut args = vec!["delete".to_owned(), "--wait=true".into()];
            args.push(format!("--timeout={}s", READY_TIMEOUT.as_secs()));
            args.extend(self.file_args(&files));
            self.kubectl(kubectl, &args).await?;
        }
        for doc in namespaces {
            if self.kubectl.is_none() {
                plane.delete_namespace(&doc.name, READY_TIMEOUT).await?;
                indent(&format!("namespace/{} deleted", doc.name));
            }
            if api.get_opt(&doc.name).await?.is_some() {
                return Err(format!("namespace {} is still there after its deletion", doc.name).into());
            }
        }
        Ok(())
    }
}

fn ready_condition(object: &Value) -> Option<(String, String)> {
    let conditions = object["status"]["conditions"].as_array()?;
    let ready = conditions.iter().find(|c| c["type"] == "Ready")?;
    Some((ready["status"].as_str()?.to_owned(), ready["reason"].as_str().unwrap_or_default().to_owned()))
}

// --- the consumer ---------------------------------------------------------------------------

/// Keys of a DataAddress whose values are credentials.
const SECRET_KEYS: [&str; 5] = ["authorization", "password", "refreshToken", "clientSecret", "token"];

fn is_secret_key(key: &str) -> bool {
    let bare = key.rsplit(':').next().unwrap_or(key);
    SECRET_KEYS.iter().any(|s| s.eq_ignore_ascii_case(bare))
}

/// The first four characters and the length: enough to see that something is there.
fn mask(value: &str) -> String {
    let head: String = value.chars().take(4).collect();
    format!("{head}… ({} characters, masked)", value.chars().count())
}

/// A topic inside `filter` for the provider to publish on (`+` and `#` levels filled in).
fn topic_in(filter: &str) -> String {
    filter
        .split('/')
        .map(|level| if level == "+" || level == "#" { "demo" } else { level })
        .collect::<Vec<_>>()
        .join("/")
}

async fn consume(client: &kube::Client, stack: &Stack, transfer: &Doc) -> Result<(), Failure> {
    let namespace = transfer.namespace.clone().unwrap_or_else(|| "default".into());
    let transfers: Api<DynamicObject> = {
        let gvk = GroupVersionKind::gvk("dsp-mqtt.io", "v1alpha1", "MqttTransfer");
        let (resource, _) = kube::discovery::pinned_kind(client, &gvk).await?;
        Api::namespaced_with(client.clone(), &namespace, &resource)
    };
    let object = transfers.get(&transfer.name).await?;
    let secret_name = object.data["status"]["credentialsSecretRef"]["name"]
        .as_str()
        .or(object.data["spec"]["secretName"].as_str())
        .unwrap_or(&transfer.name)
        .to_owned();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let stored = secrets.get(&secret_name).await?;
    let raw = stored
        .data
        .as_ref()
        .and_then(|d| d.get("dataAddress.json"))
        .ok_or_else(|| format!("Secret {namespace}/{secret_name} has no dataAddress.json"))?;
    let address: Value = serde_json::from_slice(&raw.0)?;
    let mut shown = address.clone();
    if let Some(map) = shown.as_object_mut() {
        for (key, value) in map.iter_mut() {
            if let Some(text) = value.as_str().filter(|_| is_secret_key(key)) {
                secret(text);
                *value = Value::String(mask(text));
            }
        }
    }
    indent(&format!("Secret {namespace}/{secret_name}, key dataAddress.json (credentials masked):"));
    indent(&serde_json::to_string_pretty(&shown)?);

    let from = FromSecret::read(&stored, &stack.ca.cert_pem())
        .ok_or_else(|| format!("Secret {namespace}/{secret_name} holds no credentials"))?;
    secret(&from.options.password);
    let filter = from.topics.first().cloned().ok_or("the DataAddress names no topic")?;
    indent(&format!(
        "consumer: connects to {} as {} with the {} from the Secret (TLS verified with the dev stack's CA)",
        from.options.url,
        from.options.username,
        if address.get("dsp-mqtt:authorization").is_some() { "JWT" } else { "password" }
    ));
    live_message(stack, &from.options, &filter, &transfer.name).await?;
    let text = |key: &str| address.get(key).and_then(Value::as_str);
    if let (Some(endpoint), Some(refresh_token)) = (text("dsp-mqtt:refreshEndpoint"), text("dsp-mqtt:refreshToken")) {
        refresh_and_reconnect(stack, &from, &filter, endpoint, refresh_token).await?;
    }
    Ok(())
}

/// The dataspace path (issue 15): the consumer never sees the operator. Its own connector finds
/// the offer in the provider's catalog, negotiates, and starts a `Mqtt-PULL` transfer; the
/// provider's control plane signals the operator (its registered data plane), which makes an
/// MqttTransfer with credentials of the consumer's own; the EDR reaches the consumer's connector
/// over DSP. Terminating through the consumer's connector cuts the live session off.
async fn dataspace_path(kube: &Kube, stack: &Stack, d: &Dataspace, namespace: &str) -> Result<(), Failure> {
    use e2e::dataspace::{ConsumerConnector, End, Events, as_list, find, text_of};
    use mqtt_dsp_operator::api::{MqttAsset, MqttTransfer, TransferPhase};
    use mqtt_dsp_operator::dataplane::flows;

    indent(&format!(
        "operator config: connectors.{DATASPACE_PROFILE} (the provider's connector) and dataPlane.registrations.{DATASPACE_PROFILE}"
    ));
    let http = stack.http()?;
    let registration = format!("{}/v1/dataplanes/{DATA_PLANE_ID}", d.provider.control_url);
    e2e::dataspace::poll("the operator AVAILABLE as the provider's data plane", Duration::from_secs(90), || {
        let (http, url) = (http.clone(), registration.clone());
        async move {
            let found: Value =
                http.get(&url).send().await.map_err(|e| e.to_string())?.json().await.map_err(|e| e.to_string())?;
            match text_of(find(&found, "state")) {
                Some(state) if state == "AVAILABLE" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await?;
    indent(&format!(
        "provider's control plane: data plane {DATA_PLANE_ID} AVAILABLE for source Mqtt, transfer Mqtt-PULL \
         (the operator registered itself; the URL carries its token)"
    ));

    // The provider's offer: no identity of its own in this mode.
    let name = "line-7";
    let filter = "factory/line-7/#";
    let manifest = format!(
        "apiVersion: dsp-mqtt.io/v1alpha1\nkind: MqttAsset\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
         spec:\n  connector: {DATASPACE_PROFILE}\n  broker: mosquitto\n  endpoint: {{type: mqtt-tls}}\n  topics: [\"{filter}\"]\n\
         \x20 auth: {{mode: usrpw}}\n  properties: {{name: Line 7 telemetry}}\n\
         \x20 policy: {{access: {{participantIds: [\"{CONSUMER_ID}\"]}}}}\n\
         \x20 # The connector keeps an asset its agreements reference: the offer stays when the resource goes.\n\
         \x20 deletionPolicy: Retain\n"
    );
    let file = stack.dir.path().join("dataspace-asset.yaml");
    std::fs::write(&file, &manifest)?;
    kube.apply(std::slice::from_ref(&file), false).await?;
    let assets: Api<MqttAsset> = Api::namespaced(kube.client.clone(), namespace);
    let asset = e2e::dataspace::poll("the asset Ready", READY_TIMEOUT, || {
        let assets = assets.clone();
        async move {
            let a = assets.get(name).await.map_err(|e| e.to_string())?;
            let status = a.status.clone().unwrap_or_default();
            let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
            if ready && status.observed_generation == a.metadata.generation {
                Ok(a)
            } else {
                Err(format!("{:?}", status.conditions))
            }
        }
    })
    .await?;
    let status = asset.status.unwrap_or_default();
    let asset_id = status.connector.and_then(|c| c.asset_id).ok_or("the asset's status has no asset id")?;
    let identity = status.conditions.iter().find(|c| c.type_ == "IdentityReady").map(|c| c.message.clone());
    indent(&format!("mqttasset/{name} Ready: offered as {asset_id}; identity: {}", identity.unwrap_or_default()));

    // The consumer, through its own connector only.
    let consumer = ConsumerConnector { edc: &d.consumer, ca: &stack.ca };
    let dataset = consumer
        .dataset(&d.provider, &asset_id)
        .await?
        .ok_or_else(|| format!("{asset_id} is not in the consumer's catalog"))?;
    let formats: Vec<String> =
        as_list(find(&dataset, "distribution")).iter().filter_map(|x| text_of(find(x, "format"))).collect();
    if !formats.iter().any(|f| f == "Mqtt-PULL") {
        return Err(format!("no Mqtt-PULL distribution for {asset_id}: {formats:?}").into());
    }
    indent(&format!("consumer: catalog request over DSP: dataset {asset_id}, distributions {formats:?}"));
    let agreement = consumer.negotiate(&d.provider, &asset_id, &dataset).await?;
    indent(&format!("consumer: contract negotiation FINALIZED, agreement {agreement}"));
    let events = Events::default();
    let (callback, callback_task) = events.serve(&stack.ca).await?;
    let started = Instant::now();
    let process = consumer.request_transfer(&d.provider, &agreement, &asset_id, Some(&callback)).await?;
    consumer.wait_state(&process, "STARTED", e2e::dataspace::WITHIN).await?;
    let event = events.wait_for_key("password", Duration::from_secs(30)).await?;
    indent(&format!(
        "consumer: transfer {process} (Mqtt-PULL) STARTED, EDR received {} after the request",
        secs(started.elapsed())
    ));
    let value = |key: &str| text_of(find(&event, key)).ok_or_else(|| format!("no {key} in the EDR"));
    let (base_url, username, password) = (value("baseUrl")?, value("username")?, value("password")?);
    secret(&password);
    indent(&format!(
        "EDR (from the consumer's transfer.process.started event): baseUrl {base_url}, username {username}, \
         password {}, topic {}",
        mask(&password),
        value("topic").unwrap_or_default()
    ));

    let transfers: Api<MqttTransfer> = Api::namespaced(kube.client.clone(), namespace);
    let made = transfers
        .list(&kube::api::ListParams::default().labels(&format!("{}=signaling", flows::MANAGED_LABEL)))
        .await?;
    let mqt = made.items.first().ok_or("the data plane made no MqttTransfer")?;
    let mqt_name = mqt.metadata.name.clone().unwrap_or_default();
    indent(&format!(
        "provider: mqtttransfer/{mqt_name} made by the data plane for {} (process {}), its own broker user {username}",
        mqt.spec.consumer.participant_id,
        mqt.spec.transfer_process_id.clone().unwrap_or_default()
    ));

    let options = consumer_options(base_url, &stack.ca.cert_pem(), &username, &password);
    let mut client = live_message(stack, &options, filter, &mqt_name).await?;

    consumer.end(&process, End::Terminate, "the demo is over").await?;
    let ended = Instant::now();
    let closed =
        client.wait_disconnected(Duration::from_secs(10)).await.ok_or("the session was not closed within 10 s")?;
    indent(&format!(
        "consumer: terminated the transfer through its connector; its live MQTT session closed {} later",
        secs(ended.elapsed().min(closed))
    ));
    e2e::dataspace::poll("the MqttTransfer Terminated", READY_TIMEOUT, || {
        let (transfers, mqt_name) = (transfers.clone(), mqt_name.clone());
        async move {
            let t = transfers.get(&mqt_name).await.map_err(|e| e.to_string())?;
            let phase = t.status.and_then(|s| s.phase);
            if phase == Some(TransferPhase::Terminated) { Ok(()) } else { Err(format!("{phase:?}")) }
        }
    })
    .await?;
    match Consumer::connect(&options).await {
        Err(e2e::consumer::ConnectError::Refused(_)) => indent("consumer: reconnecting with the EDR is refused"),
        Err(e) => return Err(format!("reconnecting failed otherwise than refused: {e:?}").into()),
        Ok(_) => return Err("the terminated transfer's credentials still connect".into()),
    }
    callback_task.abort();

    // The resources go; the connector keeps the offer (Retain) its agreement references.
    transfers.delete(&mqt_name, &DeleteParams::default()).await?;
    assets.delete(name, &DeleteParams::default()).await?;
    e2e::dataspace::poll("the dataspace resources gone", READY_TIMEOUT, || {
        let (transfers, assets, mqt_name) = (transfers.clone(), assets.clone(), mqt_name.clone());
        async move {
            let left = (
                transfers.get_opt(&mqt_name).await.map_err(|e| e.to_string())?,
                assets.get_opt(name).await.map_err(|e| e.to_string())?,
            );
            if left.0.is_none() && left.1.is_none() { Ok(()) } else { Err("still there".into()) }
        }
    })
    .await?;
    indent(&format!(
        "mqtttransfer/{mqt_name} and mqttasset/{name} deleted; the provider's connector keeps {asset_id} (deletionPolicy Retain)"
    ));
    Ok(())
}

/// The consumer connects with `options` and subscribes to `filter`; the provider publishes one
/// message on a topic inside it; the consumer must receive exactly that. Returns the consumer,
/// still connected.
async fn live_message(
    stack: &Stack,
    options: &e2e::consumer::ConsumerOptions,
    filter: &str,
    label: &str,
) -> Result<Consumer, Failure> {
    let mut consumer =
        Consumer::connect(options).await.map_err(|e| format!("the consumer could not connect: {e:?}"))?;
    if !consumer.subscribe(filter).await {
        return Err(format!("the broker refused the subscription to {filter}").into());
    }
    indent(&format!("consumer: subscribed to {filter}"));

    let topic = topic_in(filter);
    let payload = json!({
        "transfer": label,
        "value": 21.5,
        "unit": "Cel",
        "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
    .to_string();
    let publisher_options = stack.publisher_for(&options.url)?;
    let publisher = Consumer::connect(&publisher_options)
        .await
        .map_err(|e| format!("the provider's publisher could not connect: {e:?}"))?;
    if !publisher.publish(&topic, payload.as_bytes()).await {
        return Err("the provider could not publish".into());
    }
    indent(&format!("provider: published on {topic} as {}", publisher_options.username));
    let (got_topic, got) = consumer
        .next_message(Duration::from_secs(10))
        .await
        .ok_or_else(|| format!("the consumer received nothing on {filter} within 10 s"))?;
    let text = String::from_utf8_lossy(&got).into_owned();
    indent(&format!("consumer: received on {got_topic}: {text}"));
    if text != payload {
        return Err("the consumer received something other than what the provider sent".into());
    }
    Ok(consumer)
}

/// ADR 012's refresh: only the refresh token to the DataAddress' `refreshEndpoint`, a new JWT
/// back, and the broker takes it.
async fn refresh_and_reconnect(
    stack: &Stack,
    from: &FromSecret,
    filter: &str,
    endpoint: &str,
    refresh_token: &str,
) -> Result<(), Failure> {
    let ca = reqwest::Certificate::from_pem(stack.ca.cert_pem().as_bytes())?;
    let http = reqwest::Client::builder().tls_certs_only([ca]).build()?;
    let response =
        http.post(endpoint).form(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token)]).send().await?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    let (Some(jwt), Some(next)) = (answer["access_token"].as_str(), answer["refresh_token"].as_str()) else {
        return Err(format!("the refresh endpoint answered {status}: {answer}").into());
    };
    secret(jwt);
    secret(next);
    indent(&format!(
        "consumer: POST {endpoint} with grant_type=refresh_token and its refresh token only: {status}, a new JWT \
         for {} s and the next refresh token",
        answer["expires_in"]
    ));
    let mut again =
        Consumer::connect(&e2e::consumer::ConsumerOptions { password: jwt.to_owned(), ..from.options.clone() })
            .await
            .map_err(|e| format!("the refreshed JWT was refused: {e:?}"))?;
    if !again.subscribe(filter).await {
        return Err(format!("the refreshed JWT may not subscribe to {filter}").into());
    }
    indent(&format!("consumer: reconnected with the refreshed JWT and subscribed to {filter}"));
    Ok(())
}

// --- the backends before and after ------------------------------------------------------------

/// What each backend holds, by name.
#[derive(Clone, Debug, Default)]
struct Snapshot {
    edc: BTreeSet<String>,
    keycloak: BTreeSet<String>,
    mosquitto: BTreeSet<String>,
    rabbitmq: BTreeSet<String>,
}

impl Snapshot {
    async fn take(stack: &Stack) -> Result<Self, Failure> {
        let mut s = Snapshot::default();
        let http = stack.http()?;
        for (_, edc) in &stack.edcs {
            s.edc.extend(edc.objects(&http).await?);
        }
        s.keycloak = stack.identity().clients().await?;
        let dynsec = stack.mosquitto().dynsec_state();
        let names = |list: &str, key: &str| -> Vec<String> {
            dynsec[list].as_array().into_iter().flatten().filter_map(|v| v[key].as_str().map(str::to_owned)).collect()
        };
        s.mosquitto.extend(names("clients", "username").into_iter().map(|u| format!("user {u}")));
        s.mosquitto.extend(names("roles", "rolename").into_iter().map(|r| format!("role {r}")));
        let users: Value = http
            .get(format!("{}/api/users", stack.rabbitmq().management_url()))
            .basic_auth(rabbitmq::ADMIN_USER, Some(rabbitmq::ADMIN_PASSWORD))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        s.rabbitmq = users
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u["name"].as_str().map(|n| format!("user {n}")))
            .collect();
        Ok(s)
    }

    fn minus(&self, other: &Snapshot) -> Snapshot {
        let d = |a: &BTreeSet<String>, b: &BTreeSet<String>| a.difference(b).cloned().collect();
        Snapshot {
            edc: d(&self.edc, &other.edc),
            keycloak: d(&self.keycloak, &other.keycloak),
            mosquitto: d(&self.mosquitto, &other.mosquitto),
            rabbitmq: d(&self.rabbitmq, &other.rabbitmq),
        }
    }

    fn all(&self) -> impl Iterator<Item = (&'static str, &String)> {
        self.edc
            .iter()
            .map(|x| ("EDC", x))
            .chain(self.keycloak.iter().map(|x| ("Keycloak", x)))
            .chain(self.mosquitto.iter().map(|x| ("Mosquitto", x)))
            .chain(self.rabbitmq.iter().map(|x| ("RabbitMQ", x)))
    }

    fn summary(&self) -> String {
        let count = |s: &BTreeSet<String>, what: &str| s.iter().filter(|x| x.starts_with(what)).count();
        format!(
            "EDC {} assets, {} policies, {} contract definitions; Keycloak {} clients; Mosquitto {} users; RabbitMQ {} users",
            count(&self.edc, "asset "),
            count(&self.edc, "policy "),
            count(&self.edc, "contract definition "),
            self.keycloak.len(),
            count(&self.mosquitto, "user "),
            self.rabbitmq.len()
        )
    }
}

/// What the resources' status recorded about the external objects, read while they were Ready.
struct Records {
    /// Vault keys (below the mount) of every resource.
    vault_keys: Vec<(String, bool)>,
    /// Names of the external objects of resources with `deletionPolicy: Retain`, as a snapshot
    /// would spell them.
    retained: BTreeSet<String>,
    retained_assets: Vec<String>,
}

impl Records {
    async fn read(client: &kube::Client, manifests: &Manifests) -> Result<Self, Failure> {
        let mut records = Records { vault_keys: Vec::new(), retained: BTreeSet::new(), retained_assets: Vec::new() };
        for doc in manifests.resources() {
            let gvk = GroupVersionKind::gvk("dsp-mqtt.io", "v1alpha1", &doc.kind);
            let (resource, _) = kube::discovery::pinned_kind(client, &gvk).await?;
            let ns = doc.namespace.clone().unwrap_or_else(|| "default".into());
            let object = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &resource).get(&doc.name).await?;
            let status = &object.data["status"];
            let retain = object.data["spec"]["deletionPolicy"] == "Retain";
            if let Some(path) = status["secret"]["path"].as_str() {
                // `<mount>/data/<key>`
                let key = path.split_once("/data/").map(|(_, k)| k).unwrap_or(path).to_owned();
                records.vault_keys.push((key, retain));
            }
            if retain {
                records.retained_assets.push(format!("{ns}/{}", doc.name));
                let text = |v: &Value| v.as_str().map(str::to_owned);
                let c = &status["connector"];
                let names = [
                    text(&c["assetId"]).map(|x| format!("asset {x}")),
                    text(&c["accessPolicyId"]).map(|x| format!("policy {x}")),
                    text(&c["contractPolicyId"]).map(|x| format!("policy {x}")),
                    text(&c["contractDefinitionId"]).map(|x| format!("contract definition {x}")),
                    text(&status["identity"]["clientId"]).map(|x| format!("client {x}")),
                    text(&status["broker"]["user"]).map(|x| format!("user {x}")),
                    text(&status["broker"]["role"]).map(|x| format!("role {x}")),
                ];
                records.retained.extend(names.into_iter().flatten());
            }
        }
        Ok(records)
    }
}

async fn check_clean(stack: &Stack, before: &Snapshot, after: &Snapshot, records: &Records) -> Result<(), Failure> {
    let left = after.minus(before);
    let unexpected: Vec<String> =
        left.all().filter(|(_, x)| !records.retained.contains(*x)).map(|(b, x)| format!("{b}: {x}")).collect();
    if !unexpected.is_empty() {
        return Err(format!("left behind after deletion: {}", unexpected.join(", ")).into());
    }
    let missing: Vec<&String> = records.retained.iter().filter(|x| !left.all().any(|(_, y)| y == *x)).collect();
    if !missing.is_empty() {
        return Err(format!("deletionPolicy: Retain, yet these are gone: {missing:?}").into());
    }
    for (key, retained) in &records.vault_keys {
        let present = stack.vault.holds(key).await?;
        if present != *retained {
            return Err(format!("Vault key {key}: present {present}, expected {retained}").into());
        }
    }
    indent(&format!(
        "backends: nothing left of the transfers and the deleted assets (EDC, Keycloak, Vault, Mosquitto, RabbitMQ; {} Vault keys checked)",
        records.vault_keys.len()
    ));
    if !records.retained_assets.is_empty() {
        let kept: Vec<&str> = records.retained.iter().map(String::as_str).collect();
        indent(&format!(
            "kept as `deletionPolicy: Retain` asks ({}): {} and its Vault secret",
            records.retained_assets.join(", "),
            kept.join(", ")
        ));
    }
    Ok(())
}

/// No secret this run handled appears in what it printed or in the operator's log.
fn check_no_secret_shown(log: &Path) -> Result<(), Failure> {
    let transcript = TRANSCRIPT.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let log_text = std::fs::read_to_string(log).unwrap_or_default();
    let secrets = SECRETS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let shown = secrets.iter().filter(|s| transcript.contains(s.as_str())).count();
    let logged = secrets.iter().filter(|s| log_text.contains(s.as_str())).count();
    if shown + logged > 0 {
        return Err(format!("{shown} secrets appear in the demo's output and {logged} in the operator log").into());
    }
    say(&format!(
        "   none of the {} secrets this run handled appears above or in the operator log ({} lines)",
        secrets.len(),
        log_text.lines().count()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_keeps_four_characters() {
        assert_eq!(mask("eyJhbGciOiJSUzI1NiJ9.payload.sig"), "eyJh… (32 characters, masked)");
        assert!(is_secret_key("dsp-mqtt:authorization") && is_secret_key("dsp-mqtt:refreshToken"));
        assert!(is_secret_key("dsp-mqtt:password") && !is_secret_key("dsp-mqtt:username"));
        assert_eq!(topic_in("plant/press/+/events"), "plant/press/demo/events");
    }
}
