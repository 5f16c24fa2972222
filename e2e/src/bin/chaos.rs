//! `make chaos`: fault survival, measured (docs/reliability.md).
//!
//! The operator runs as its own process (the release binary) under its ServiceAccount with the
//! shipped RBAC, against a real Kubernetes control plane (reached through a TCP proxy that can
//! cut its connections), the EDC, Vault and Keycloak doubles, a real Mosquitto (`usrpw` assets)
//! and a real RabbitMQ (`oauth2` assets, tokens from the Keycloak double). N transfers are created
//! and churned (suspend, resume, terminate, delete, re-create, asset changes) while a seeded fault
//! schedule runs: SIGKILLs of the operator (restarted at once), lost answers at the doubles (the
//! write applied, then a 5xx or a cut connection), plain 5xx, latency and stalls, Mosquitto killed
//! and restarted from its persisted state, Vault keys deleted behind the operator's back, and the
//! API server's connections reset or refused. Then: time to converge after the last fault,
//! every Started transfer's Secret tried on the broker, duplicates and orphans per system, and
//! the same after deleting everything. Results in `target/chaos/results.md`.
//!
//! It is a benchmark-like run, not a test: `make test` never runs it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::brokers::mosquitto::Mosquitto;
use e2e::brokers::rabbitmq::{self, OAuthSettings, RabbitMq};
use e2e::consumer::{Consumer, FromSecret};
use e2e::doubles::edc::{self, EdcConfig, Flavour};
use e2e::doubles::{Faults, keycloak, vault};
use e2e::stack::{KEYCLOAK_OPERATOR_SECRET, REALM, SCOPES_KEY, VAULT_TOKEN, operator_config_yaml};
use e2e::systems::kubernetes::{self, ControlPlane, OPERATOR_USER};
use e2e::systems::tcp_proxy::TcpProxy;
use e2e::tls::TestCa;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use mqtt_dsp_operator::api::{MqttAsset, MqttTransfer};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

const NAMESPACE: &str = "chaos";
const CONSUMER: &str = "did:web:consumer-a.example.com";
/// Prefix of the transfers' identities (broker users, Vault keys): `dsp-mqtt-transfer-<ns>-<name>`.
const TRANSFER_IDENTITY: &str = "dsp-mqtt-transfer-chaos-";

type Failure = Box<dyn std::error::Error + Send + Sync>;

struct Options {
    transfers: usize,
    assets: usize,
    seed: u64,
    duration: Duration,
    resync_seconds: u64,
    /// Every fourth asset an `oauth2` one on a real RabbitMQ, so that Keycloak is in the run.
    rabbitmq: bool,
    operator: PathBuf,
    out: PathBuf,
}

impl Options {
    fn parse() -> Result<Self, Failure> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut o = Options {
            transfers: 500,
            assets: 8,
            seed: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
            duration: Duration::from_secs(180),
            resync_seconds: 20,
            rabbitmq: true,
            operator: root.join("target/release/mqtt-dsp-operator"),
            out: root.join("target/chaos/results.md"),
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--transfers" => o.transfers = value()?.parse()?,
                "--assets" => o.assets = value()?.parse::<usize>()?.max(1),
                "--seed" => o.seed = value()?.parse()?,
                "--duration" => o.duration = Duration::from_secs(value()?.parse()?),
                "--resync-seconds" => o.resync_seconds = value()?.parse()?,
                "--no-rabbitmq" => o.rabbitmq = false,
                "--operator" => o.operator = value()?.into(),
                "--out" => o.out = value()?.into(),
                "--help" | "-h" => {
                    println!(
                        "chaos [--transfers 500] [--assets 8] [--seed N (default: the clock)] [--duration 180 (seconds)] \
                         [--resync-seconds 20] [--no-rabbitmq] [--operator target/release/mqtt-dsp-operator] [--out target/chaos/results.md]"
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
    e2e::stats::main_of("chaos", Options::parse, run)
}

fn progress(message: &str) {
    eprintln!("[chaos {}] {message}", chrono::Utc::now().format("%H:%M:%S"));
}

// --- the stack ------------------------------------------------------------------------------

struct Stack {
    ca: TestCa,
    plane: &'static ControlPlane,
    client: kube::Client,
    edc: edc::EdcDouble,
    edc_fx: edc::EdcDouble,
    keycloak: keycloak::KeycloakDouble,
    vault: vault::VaultDouble,
    mosquitto: Mutex<Mosquitto>,
    rabbitmq: Option<RabbitMq>,
    /// The operator's way to the API server.
    kube_proxy: TcpProxy,
    dir: tempfile::TempDir,
}

async fn start_stack(with_rabbitmq: bool) -> Result<Stack, Failure> {
    let ca = TestCa::shared();
    let plane = tokio::task::spawn_blocking(kubernetes::shared).await??;
    let client = plane.admin_client().await;
    let edc = edc::start(&ca, EdcConfig::flavour(Flavour::Stock)).await?;
    let edc_fx = edc::start(&ca, EdcConfig::flavour(Flavour::Factoryx)).await?;
    let keycloak = keycloak::start(&ca, REALM, "mqtt-dsp-operator", KEYCLOAK_OPERATOR_SECRET).await?;
    let vault = vault::start(&ca, VAULT_TOKEN).await?;
    let mosquitto = Mosquitto::start(&ca)?;
    let rabbitmq = if with_rabbitmq {
        let oauth = OAuthSettings {
            // By the name `localhost`: Erlang's hostname check does not match IP SANs.
            jwks_url: keycloak.jwks_url().replace("127.0.0.1", "localhost"),
            resource_server_id: "rabbitmq".into(),
            additional_scopes_key: SCOPES_KEY.into(),
        };
        let ca = ca.clone();
        Some(tokio::task::spawn_blocking(move || RabbitMq::start(&ca, Some(&oauth))).await??)
    } else {
        None
    };
    let dir = tempfile::Builder::new().prefix("chaos-").tempdir()?;
    let config_yaml =
        operator_config_yaml(dir.path(), &ca, &edc, &edc_fx, &keycloak, &vault, &mosquitto, rabbitmq.as_ref());
    std::fs::write(dir.path().join("config.yaml"), &config_yaml)?;
    let upstream = plane.url.trim_start_matches("https://").to_owned();
    let kube_proxy = TcpProxy::start(&upstream).await?;
    // The same kubeconfig, pointed at the proxy (same address, so the certificate still fits).
    let kubeconfig =
        plane.operator_kubeconfig().await.replace(&plane.url, &format!("https://127.0.0.1:{}", kube_proxy.port));
    std::fs::write(dir.path().join("kubeconfig"), kubeconfig)?;
    Ok(Stack {
        ca,
        plane,
        client,
        edc,
        edc_fx,
        keycloak,
        vault,
        mosquitto: Mutex::new(mosquitto),
        rabbitmq,
        kube_proxy,
        dir,
    })
}

/// The operator binary, restarted at once whenever it is killed.
struct Operator {
    binary: PathBuf,
    config: PathBuf,
    kubeconfig: PathBuf,
    log: PathBuf,
    resync_seconds: u64,
    child: Option<Child>,
    starts: u32,
}

impl Operator {
    fn start(&mut self) -> Result<(), Failure> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.binary)
            .args(["run", "--config"])
            .arg(&self.config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--resync-seconds", &self.resync_seconds.to_string()])
            // A SIGKILLed leader's Lease blocks its successor until it runs out: short, so that a
            // restart takes over within seconds, as a Pod restarted on the same node would wait.
            .args(["--lease-duration-seconds", "3", "--lease-grace-seconds", "1"])
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e} (build it with `cargo build --release`)", self.binary.display()))?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// SIGKILL, no grace: whatever it was writing stays half done.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it died by itself (a crash, not one of our kills).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    fn stop(&mut self) {
        // SIGTERM, then SIGKILL after 15 s: what stops every watched process of the dev stack.
        if let Some(mut child) = self.child.take() {
            e2e::brokers::stop_watched(&mut child);
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}

// --- the resources --------------------------------------------------------------------------

fn asset_name(i: usize) -> String {
    format!("line-{i}")
}

/// Whether asset `i` is an `oauth2` one on RabbitMQ (a Keycloak client per transfer) rather than a
/// `usrpw` one on Mosquitto (a broker user per transfer).
fn is_oauth2(i: usize, rabbitmq: bool) -> bool {
    rabbitmq && i % 4 == 3
}

fn asset(i: usize, generation: u32, rabbitmq: bool) -> Result<MqttAsset, Failure> {
    let connector = if i.is_multiple_of(2) { "default" } else { "factoryx" };
    let (broker, mode) = if is_oauth2(i, rabbitmq) { ("rabbitmq", "oauth2") } else { ("default", "usrpw") };
    Ok(serde_json::from_value(json!({
        "apiVersion": "dsp-mqtt.io/v1alpha1", "kind": "MqttAsset", "metadata": {"name": asset_name(i)},
        "spec": {
            "connector": connector,
            "broker": broker,
            "endpoint": {"type": "mqtt-tls"},
            "topics": [format!("factory/line-{i}/#")],
            "auth": {"mode": mode},
            "properties": {"name": format!("Line {i} telemetry, revision {generation}")},
            "policy": {"access": {"participantIds": [CONSUMER]}},
        },
    }))?)
}

fn transfer(name: &str, asset: usize) -> Result<MqttTransfer, Failure> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "dsp-mqtt.io/v1alpha1", "kind": "MqttTransfer", "metadata": {"name": name},
        "spec": {
            "assetRef": {"name": asset_name(asset)},
            "consumer": {"participantId": CONSUMER},
            "topics": [format!("factory/line-{asset}/{name}/#")],
        },
    }))?)
}

/// What the harness last asked of a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Intended {
    Started,
    Suspended,
    Terminated,
    Deleted,
}

impl Intended {
    fn phase(self) -> Option<&'static str> {
        match self {
            Intended::Started => Some("Active"),
            Intended::Suspended => Some("Suspended"),
            Intended::Terminated => Some("Terminated"),
            Intended::Deleted => None,
        }
    }
    /// Whether the transfer may hold external objects (a suspended one keeps a disabled user).
    fn may_hold_objects(self) -> bool {
        matches!(self, Intended::Started | Intended::Suspended)
    }
}

#[derive(Default)]
struct World {
    /// Transfer name → (asset index, intended state).
    transfers: BTreeMap<String, (usize, Intended)>,
    next_transfer: usize,
    asset_generations: Vec<u32>,
    rabbitmq: bool,
}

fn transfer_name(i: usize) -> String {
    format!("t-{i:04}")
}

/// Where a transfer's password is in Vault: below the connector's `vaultFolder` (`edc` for the
/// `default` connector; the `factoryx` one has none), as the even and odd assets use them.
fn vault_key(name: &str, asset: usize) -> String {
    let folder = if asset.is_multiple_of(2) { "edc/" } else { "" };
    format!("{folder}{TRANSFER_IDENTITY}{name}-secret")
}

// --- the fault schedule ---------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Double {
    Vault,
    Edc,
    EdcFactoryx,
    Keycloak,
}

#[derive(Clone, Debug)]
enum Fault {
    KillOperator,
    /// The next `count` writes applied, then answered `status`.
    FailAfterApply {
        double: Double,
        count: u32,
        status: u16,
    },
    /// The next `count` writes applied, then their answer cut off.
    DropAfterApply {
        double: Double,
        count: u32,
    },
    /// The next `count` requests answered `status` without reaching the handler.
    FailBefore {
        double: Double,
        count: u32,
        status: u16,
    },
    Latency {
        double: Double,
        millis: u64,
        seconds: u64,
    },
    Stall {
        double: Double,
        seconds: u64,
    },
    RestartMosquitto,
    /// A Started transfer's Vault key deleted behind the operator's back (picked at run time).
    DeleteVaultKey,
    ResetWatches,
    RefuseApiServer {
        seconds: u64,
    },
}

impl Fault {
    /// How long the fault lasts after it starts.
    fn lasts(&self) -> Duration {
        match self {
            Fault::Latency { seconds, .. } | Fault::Stall { seconds, .. } | Fault::RefuseApiServer { seconds } => {
                Duration::from_secs(*seconds)
            }
            _ => Duration::ZERO,
        }
    }
    fn describe(&self) -> String {
        match self {
            Fault::KillOperator => "SIGKILL operator, restart at once".into(),
            Fault::FailAfterApply { double, count, status } => {
                format!("{double:?}: next {count} writes applied, then answered {status}")
            }
            Fault::DropAfterApply { double, count } => {
                format!("{double:?}: next {count} writes applied, then the answer cut off")
            }
            Fault::FailBefore { double, count, status } => {
                format!("{double:?}: next {count} requests answered {status}")
            }
            Fault::Latency { double, millis, seconds } => format!("{double:?}: +{millis} ms latency for {seconds} s"),
            Fault::Stall { double, seconds } => format!("{double:?}: stalled for {seconds} s"),
            Fault::RestartMosquitto => "SIGKILL Mosquitto, restart from its persisted state".into(),
            Fault::DeleteVaultKey => "delete a Started transfer's Vault key behind the operator's back".into(),
            Fault::ResetWatches => "reset every operator connection to the API server".into(),
            Fault::RefuseApiServer { seconds } => format!("API server connections reset/refused for {seconds} s"),
        }
    }
}

/// The schedule from `seed`: (offset from the start, fault). Every fault ends within `duration`.
fn schedule(seed: u64, duration: Duration, keycloak: bool) -> Vec<(Duration, Fault)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let end = duration.as_secs_f64();
    let mut faults = Vec::new();
    // SIGKILLs: every 3–10 s.
    let mut at = rng.random_range(2.0..6.0);
    while at < end - 5.0 {
        faults.push((at, Fault::KillOperator));
        at += rng.random_range(3.0..10.0);
    }
    // Two broker restarts, in the first and the second half.
    faults.push((rng.random_range(0.1..0.45) * end, Fault::RestartMosquitto));
    faults.push((rng.random_range(0.55..0.85) * end, Fault::RestartMosquitto));
    // Everything else: one every 1–4 s.
    let mut doubles = vec![Double::Vault, Double::Vault, Double::Edc, Double::EdcFactoryx];
    if keycloak {
        doubles.push(Double::Keycloak);
    }
    let mut at = rng.random_range(1.0..3.0);
    while at < end - 5.0 {
        let double = doubles[rng.random_range(0..doubles.len())];
        let fault = match rng.random_range(0..100) {
            0..25 => Fault::FailAfterApply {
                double,
                count: rng.random_range(1..6),
                status: [500, 502, 503][rng.random_range(0..3)],
            },
            25..45 => Fault::DropAfterApply { double, count: rng.random_range(1..6) },
            45..55 => Fault::FailBefore { double, count: rng.random_range(1..10), status: 503 },
            55..63 => Fault::Latency { double, millis: rng.random_range(100..1500), seconds: rng.random_range(2..8) },
            63..70 => Fault::Stall { double, seconds: rng.random_range(2..13) },
            // Drift is repaired by the periodic resync: not in the last part of the run.
            70..80 if at < end * 0.8 => Fault::DeleteVaultKey,
            70..90 => Fault::ResetWatches,
            _ => Fault::RefuseApiServer { seconds: rng.random_range(1..6) },
        };
        // A lasting fault ends within the run.
        let lasts = fault.lasts().as_secs_f64();
        if at + lasts < end {
            faults.push((at, fault));
        }
        at += rng.random_range(1.0..4.0);
    }
    faults.sort_by(|a, b| a.0.total_cmp(&b.0));
    faults.into_iter().map(|(at, f)| (Duration::from_secs_f64(at), f)).collect()
}

// --- inventory: what the backends hold ------------------------------------------------------

/// One external object: system, kind, name, and its ownership marker (`MqttTransfer/ns/name`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Object {
    system: &'static str,
    kind: &'static str,
    name: String,
    owner: Option<String>,
}

fn owner_in(text: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|part| part.strip_prefix("dsp-mqtt.io/owner="))
        .map(str::to_owned)
        .or_else(|| (text.starts_with("MqttTransfer/") || text.starts_with("MqttAsset/")).then(|| text.to_owned()))
}

/// The owner marker among an EDC object's private properties (whatever the key's expansion).
fn owner_in_properties(properties: &serde_json::Map<String, Value>) -> Option<String> {
    properties.iter().find_map(|(k, v)| {
        if !k.ends_with("owner") {
            return None;
        }
        match v {
            Value::String(s) => owner_in(s),
            Value::Array(items) => items.iter().find_map(|i| i.as_str().or(i["@value"].as_str()).and_then(owner_in)),
            Value::Object(o) => o.get("@value").and_then(Value::as_str).and_then(owner_in),
            _ => None,
        }
    })
}

/// Everything the operator may have made, per system; `None` while Mosquitto's state file is
/// being rewritten.
fn inventory(stack: &Stack) -> Option<Vec<Object>> {
    let mut objects = Vec::new();
    let state = stack.mosquitto.lock().unwrap_or_else(|p| p.into_inner()).try_dynsec_state()?;
    for (list, key, kind) in
        [("clients", "username", "client"), ("roles", "rolename", "role"), ("groups", "groupname", "group")]
    {
        for item in state[list].as_array().into_iter().flatten() {
            let name = item[key].as_str().unwrap_or("?").to_owned();
            if e2e::inventory::MOSQUITTO_OWN.contains(&name.as_str()) {
                continue;
            }
            let owner = item["textdescription"].as_str().and_then(owner_in);
            objects.push(Object { system: "Mosquitto", kind, name, owner });
        }
    }
    for client in stack.keycloak.clients() {
        if client.client_id.starts_with(e2e::inventory::CLIENT_PREFIX) {
            let owner = client.attributes.iter().filter(|(k, _)| k.ends_with("owner")).find_map(|(_, v)| owner_in(v));
            objects.push(Object { system: "Keycloak", kind: "client", name: client.client_id, owner });
        }
    }
    if let Some(rabbit) = &stack.rabbitmq {
        let credentials = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{}:{}", rabbitmq::ADMIN_USER, rabbitmq::ADMIN_PASSWORD),
        );
        let users = e2e::brokers::https_get(
            rabbit.management_port,
            "/api/users",
            &format!("Authorization: Basic {credentials}"),
            &stack.ca.cert_pem(),
            Duration::from_secs(10),
        );
        let users: Value = users.ok().and_then(|(_, body)| serde_json::from_str(&body).ok()).unwrap_or_default();
        for user in users.as_array().into_iter().flatten() {
            let name = user["name"].as_str().unwrap_or("?");
            if name != rabbitmq::ADMIN_USER {
                objects.push(Object { system: "RabbitMQ", kind: "user", name: name.to_owned(), owner: None });
            }
        }
    }
    for key in stack.vault.keys() {
        let owner = stack.vault.secret(&key).and_then(|s| s.custom_metadata.get("dsp-mqtt.io/owner").cloned());
        objects.push(Object { system: "Vault", kind: "key", name: key, owner });
    }
    for (system, double) in [("EDC", &stack.edc), ("EDC factoryx", &stack.edc_fx)] {
        for a in double.state.assets() {
            let owner = owner_in_properties(&a.private_properties);
            objects.push(Object { system, kind: "asset", name: a.id, owner });
        }
        for p in double.state.policies() {
            let owner = owner_in_properties(&p.private_properties);
            objects.push(Object { system, kind: "policy", name: p.id, owner });
        }
        for c in double.state.contract_definitions() {
            let owner = owner_in_properties(&c.private_properties);
            objects.push(Object { system, kind: "contract definition", name: c.id, owner });
        }
    }
    Some(objects)
}

/// [`inventory`], waiting (up to 10 s) for Mosquitto's state file to parse.
async fn inventory_now(stack: &Stack) -> Result<Vec<Object>, Failure> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(objects) = inventory(stack) {
            return Ok(objects);
        }
        if Instant::now() > deadline {
            return Err("Mosquitto's dynamic-security.json does not parse for 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Objects of one owner beyond what one resource makes: more than one of a kind (policies: more
/// than two, an access and a contract policy).
fn duplicates(objects: &[Object]) -> Vec<String> {
    let mut groups: BTreeMap<(&str, &str, &str), Vec<&str>> = BTreeMap::new();
    for o in objects {
        if let Some(owner) = &o.owner {
            groups.entry((o.system, o.kind, owner)).or_default().push(&o.name);
        }
    }
    groups
        .into_iter()
        .filter(|((_, kind, _), names)| names.len() > if *kind == "policy" { 2 } else { 1 })
        .map(|((system, kind, owner), names)| {
            format!("{system}: {} {kind}s of {owner}: {}", names.len(), names.join(", "))
        })
        .collect()
}

/// Objects whose owner should hold none: a deleted or terminated transfer, a deleted asset, no
/// marker at all.
fn orphans<'a>(objects: &'a [Object], world: &World, assets_exist: bool) -> Vec<&'a Object> {
    objects
        .iter()
        .filter(|o| match o.owner.as_deref() {
            None => true,
            Some(owner) => {
                if let Some(name) = owner.strip_prefix(&format!("MqttTransfer/{NAMESPACE}/")) {
                    !world.transfers.get(name).is_some_and(|(_, i)| i.may_hold_objects())
                } else if owner.starts_with(&format!("MqttAsset/{NAMESPACE}/")) {
                    !assets_exist
                } else {
                    true
                }
            }
        })
        .collect()
}

fn by_system(objects: &[&Object]) -> BTreeMap<&'static str, Vec<String>> {
    let mut m: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for o in objects {
        m.entry(o.system).or_default().push(format!("{} {}", o.kind, o.name));
    }
    m
}

// --- convergence ----------------------------------------------------------------------------

/// What is not yet as intended (empty: converged).
async fn not_converged(stack: &Stack, world: &World) -> Result<Vec<String>, Failure> {
    let mut problems = Vec::new();
    let api: Api<MqttTransfer> = Api::namespaced(stack.client.clone(), NAMESPACE);
    let listed = api.list(&ListParams::default()).await?;
    let mut seen = BTreeSet::new();
    for t in listed.items {
        let name = t.metadata.name.clone().unwrap_or_default();
        seen.insert(name.clone());
        let Some((_, intended)) = world.transfers.get(&name) else {
            problems.push(format!("{name}: exists, not known to the harness"));
            continue;
        };
        let Some(want) = intended.phase() else {
            problems.push(format!("{name}: deleted, still there"));
            continue;
        };
        let status = t.status.as_ref();
        let phase = status.and_then(|s| s.phase).map(|p| format!("{p:?}")).unwrap_or_else(|| "none".into());
        let observed = status.and_then(|s| s.observed_generation) == t.metadata.generation;
        let ready = status.is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if phase != want || !observed || (*intended == Intended::Started && !ready) {
            problems.push(format!("{name}: phase {phase}, want {want} (observed generation current: {observed})"));
        }
    }
    for (name, (_, intended)) in &world.transfers {
        if intended.phase().is_some() && !seen.contains(name) {
            problems.push(format!("{name}: missing"));
        }
    }
    let Some(objects) = inventory(stack) else {
        problems.push("Mosquitto's state file does not parse".into());
        return Ok(problems);
    };
    for d in duplicates(&objects) {
        problems.push(format!("duplicate: {d}"));
    }
    for o in orphans(&objects, world, true) {
        problems.push(format!("orphan: {} {} {}", o.system, o.kind, o.name));
    }
    // A Started transfer has its broker user and its Vault key.
    let names: BTreeSet<(&str, &str)> = objects.iter().map(|o| (o.system, o.name.as_str())).collect();
    for (name, (asset, intended)) in &world.transfers {
        if *intended == Intended::Started {
            let identity = format!("{TRANSFER_IDENTITY}{name}");
            let (system, what) =
                if is_oauth2(*asset, world.rabbitmq) { ("Keycloak", "client") } else { ("Mosquitto", "broker user") };
            if !names.contains(&(system, identity.as_str())) {
                problems.push(format!("{name}: no {what}"));
            }
            if !names.contains(&("Vault", vault_key(name, *asset).as_str())) {
                problems.push(format!("{name}: no Vault key"));
            }
        }
    }
    Ok(problems)
}

// --- the run --------------------------------------------------------------------------------

#[derive(Default)]
struct Counters {
    kills: AtomicU64,
    crashes: AtomicU64,
    mosquitto_restarts: AtomicU64,
    mosquitto_state_lost: AtomicU64,
    vault_keys_deleted: AtomicU64,
    watch_resets: AtomicU64,
    refusals: AtomicU64,
    lost_answers: AtomicU64,
    failures_before: AtomicU64,
    slow_or_stalled: AtomicU64,
    churn: Mutex<BTreeMap<&'static str, u64>>,
    max_duplicates: Mutex<Vec<String>>,
    checks: AtomicU64,
}

fn faults_of(stack: &Stack, double: Double) -> &Faults {
    match double {
        Double::Vault => &stack.vault.server.faults,
        Double::Edc => &stack.edc.server.faults,
        Double::EdcFactoryx => &stack.edc_fx.server.faults,
        Double::Keycloak => &stack.keycloak.server.faults,
    }
}

async fn run(options: Options) -> Result<bool, Failure> {
    let wall = Instant::now();
    let out_dir = options.out.parent().map(Path::to_owned).unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&out_dir)?;
    let log = out_dir.join("operator.log");
    let _ = std::fs::remove_file(&log);
    let plan = schedule(options.seed, options.duration, options.rabbitmq);
    progress(&format!(
        "seed {}: {} faults over {} s ({} SIGKILLs of the operator)",
        options.seed,
        plan.len(),
        options.duration.as_secs(),
        plan.iter().filter(|(_, f)| matches!(f, Fault::KillOperator)).count()
    ));
    progress("starting the API server, the doubles, Mosquitto and RabbitMQ");
    let stack = Arc::new(start_stack(options.rabbitmq).await?);
    let ns =
        Namespace { metadata: ObjectMeta { name: Some(NAMESPACE.into()), ..Default::default() }, ..Default::default() };
    Api::<Namespace>::all(stack.client.clone()).create(&PostParams::default(), &ns).await?;
    stack.plane.serve_namespace(NAMESPACE).await;
    let operator = Arc::new(Mutex::new(Operator {
        binary: options.operator.clone(),
        config: stack.dir.path().join("config.yaml"),
        kubeconfig: stack.dir.path().join("kubeconfig"),
        log: log.clone(),
        resync_seconds: options.resync_seconds,
        child: None,
        starts: 0,
    }));
    operator.lock().unwrap().start()?;

    // Assets first, Ready before the transfers come.
    let assets: Api<MqttAsset> = Api::namespaced(stack.client.clone(), NAMESPACE);
    let transfers: Api<MqttTransfer> = Api::namespaced(stack.client.clone(), NAMESPACE);
    for i in 0..options.assets {
        assets.create(&PostParams::default(), &asset(i, 0, options.rabbitmq)?).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = assets
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|a| {
                a.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        if ready == options.assets {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {ready} of {} MqttAssets Ready within 60 s; see {}",
                options.assets,
                log.display()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let world = Arc::new(Mutex::new(World {
        asset_generations: vec![0; options.assets],
        rabbitmq: options.rabbitmq,
        ..Default::default()
    }));
    progress(&format!("creating {} MqttTransfers", options.transfers));
    let names: Vec<(String, usize)> = (0..options.transfers).map(|i| (transfer_name(i), i % options.assets)).collect();
    {
        let mut w = world.lock().unwrap();
        w.next_transfer = options.transfers;
        for (name, a) in &names {
            w.transfers.insert(name.clone(), (*a, Intended::Started));
        }
    }
    let created: Vec<Result<(), Failure>> = futures::stream::iter(names)
        .map(|(name, a)| {
            let transfers = transfers.clone();
            async move {
                transfers.create(&PostParams::default(), &transfer(&name, a)?).await?;
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    created.into_iter().collect::<Result<Vec<()>, Failure>>()?;

    // Chaos: the fault schedule, the churn and a duplicate check every few seconds, at once.
    progress("faults and churn");
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let churn = tokio::spawn(churn(stack.clone(), world.clone(), counters.clone(), stop.clone(), options.seed));
    let checker = tokio::spawn(check_duplicates(stack.clone(), counters.clone(), stop.clone()));
    let mut fault_log = Vec::new();
    let mut last_fault_end = started;
    let mut rng = StdRng::seed_from_u64(options.seed ^ 0x5eed);
    for (at, fault) in &plan {
        tokio::time::sleep_until((started + *at).into()).await;
        let exited = operator.lock().unwrap().exited();
        if let Some(status) = exited {
            counters.crashes.fetch_add(1, Ordering::Relaxed);
            progress(&format!("the operator exited by itself ({status}); restarting it"));
            operator.lock().unwrap().start()?;
        }
        let detail = apply(&stack, &operator, &world, &counters, fault, &mut rng).await?;
        let line = format!("{:>7.2} s  {}{detail}", at.as_secs_f64(), fault.describe());
        progress(&line);
        fault_log.push(line);
        last_fault_end = last_fault_end.max(Instant::now() + fault.lasts());
    }
    tokio::time::sleep_until((started + options.duration).into()).await;
    stop.store(true, Ordering::Relaxed);
    churn.await??;
    checker.await?;
    tokio::time::sleep_until(last_fault_end.into()).await;
    for double in [Double::Vault, Double::Edc, Double::EdcFactoryx, Double::Keycloak] {
        faults_of(&stack, double).reset();
    }
    let exited = operator.lock().unwrap().exited();
    if exited.is_some() {
        counters.crashes.fetch_add(1, Ordering::Relaxed);
        operator.lock().unwrap().start()?;
    }
    // Measured from the last fault (its end, for a lasting one); the churn goes on until the end
    // of the run, which is reported too.
    let last_fault = last_fault_end;
    let churn_ended = started + options.duration;

    progress("waiting for convergence");
    let converge_limit = Duration::from_secs(300);
    let mut converged_after = None;
    let mut remaining = Vec::new();
    while last_fault.elapsed() < converge_limit {
        let w = world_snapshot(&world);
        remaining = not_converged(&stack, &w).await?;
        if remaining.is_empty() {
            converged_after = Some(last_fault.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    match converged_after {
        Some(t) => progress(&format!(
            "converged {:.1} s after the last fault, {:.1} s after the last churn",
            t.as_secs_f64(),
            t.saturating_sub(churn_ended.saturating_duration_since(last_fault)).as_secs_f64()
        )),
        None => progress(&format!("NOT converged after {} s: {} problems", converge_limit.as_secs(), remaining.len())),
    }
    let world_end = world_snapshot(&world);
    let objects = inventory_now(&stack).await?;
    let orphans_converged: Vec<Object> = orphans(&objects, &world_end, true).into_iter().cloned().collect();
    let duplicates_converged = duplicates(&objects);

    progress("trying every Started transfer's Secret on the broker");
    let (secret_ok, secret_failed, suspended_with_credentials, secrets_seen) = try_secrets(&stack, &world_end).await?;

    // A watch resumed from a resourceVersion the API server no longer has is answered 410 Gone.
    // Only an HTTP 410 shows in the audit log; one sent as an ERROR event inside a watch stream
    // does not (kube's watcher relists without logging it above debug).
    let kube_410 = stack.plane.requests(Some(OPERATOR_USER)).iter().filter(|r| r.status == 410).count();

    progress("deleting everything");
    let deleted_at = Instant::now();
    for name in world_end.transfers.iter().filter(|(_, (_, i))| *i != Intended::Deleted).map(|(n, _)| n) {
        let _ = transfers.delete(name, &DeleteParams::default()).await;
    }
    for i in 0..options.assets {
        let _ = assets.delete(&asset_name(i), &DeleteParams::default()).await;
    }
    let mut empty_after = None;
    let mut left: Vec<Object> = Vec::new();
    let mut left_resources = 0;
    while deleted_at.elapsed() < Duration::from_secs(180) {
        left_resources = transfers.list(&ListParams::default()).await?.items.len()
            + assets.list(&ListParams::default()).await?.items.len();
        left = inventory_now(&stack).await?;
        if left_resources == 0 && left.is_empty() {
            empty_after = Some(deleted_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let secrets_left = Api::<Secret>::namespaced(stack.client.clone(), NAMESPACE)
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|s| s.type_.as_deref() != Some("kubernetes.io/service-account-token"))
        .count();
    operator.lock().unwrap().stop();

    // Every secret the run handled, for e2e/check-log-secrets.sh.
    let secrets_file = PathBuf::from(format!("{}.secrets", log.display()));
    let mut all_secrets: BTreeSet<String> = secrets_seen;
    all_secrets.extend(stack.keycloak.clients().into_iter().map(|c| c.secret).filter(|s| !s.is_empty()));
    for (_, data) in stack.vault.live_data() {
        for v in data.as_object().into_iter().flat_map(|m| m.values()) {
            if let Some(s) = v.as_str() {
                all_secrets.insert(s.to_owned());
            }
        }
    }
    all_secrets.extend(
        [
            VAULT_TOKEN,
            KEYCLOAK_OPERATOR_SECRET,
            e2e::brokers::mosquitto::ADMIN_PASSWORD,
            rabbitmq::ADMIN_PASSWORD,
            edc::API_KEY,
        ]
        .map(String::from),
    );
    std::fs::write(&secrets_file, all_secrets.iter().map(|s| format!("{s}\n")).collect::<String>())?;
    let leak_check = Command::new(e2e::repo_dir().join("e2e/check-log-secrets.sh")).arg(&log).output()?;
    let leak_text = String::from_utf8_lossy(&leak_check.stderr).trim().to_owned()
        + String::from_utf8_lossy(&leak_check.stdout).trim();
    let _ = std::fs::remove_file(&secrets_file);

    let operator = operator.lock().unwrap();
    let result = Results {
        options: &options,
        plan: &plan,
        fault_log: &fault_log,
        counters: &counters,
        starts: operator.starts,
        converged_after,
        churn_after_fault: churn_ended.saturating_duration_since(last_fault),
        remaining: &remaining,
        world: &world_end,
        orphans_converged: &orphans_converged,
        duplicates_converged: &duplicates_converged,
        secret_ok,
        secret_failed: &secret_failed,
        suspended_with_credentials: &suspended_with_credentials,
        empty_after,
        left: &left,
        left_resources,
        secrets_left,
        kube_410,
        proxy_resets: stack.kube_proxy.resets(),
        leak_ok: leak_check.status.success(),
        answers_lost: [Double::Vault, Double::Edc, Double::EdcFactoryx, Double::Keycloak]
            .into_iter()
            .map(|d| (d, faults_of(&stack, d).answers_lost()))
            .collect(),
        leak_text: &leak_text,
        wall: wall.elapsed(),
    };
    let (report, met) = result.report();
    println!("{report}");
    std::fs::write(&options.out, &report)?;
    progress(&format!("results written to {}; the operator's log is {}", options.out.display(), log.display()));
    Ok(met)
}

fn world_snapshot(world: &Mutex<World>) -> World {
    let w = world.lock().unwrap();
    World {
        transfers: w.transfers.clone(),
        next_transfer: w.next_transfer,
        asset_generations: w.asset_generations.clone(),
        rabbitmq: w.rabbitmq,
    }
}

async fn apply(
    stack: &Arc<Stack>,
    operator: &Mutex<Operator>,
    world: &Mutex<World>,
    counters: &Counters,
    fault: &Fault,
    rng: &mut StdRng,
) -> Result<String, Failure> {
    let mut detail = String::new();
    match fault {
        Fault::KillOperator => {
            let mut o = operator.lock().unwrap();
            o.kill();
            o.start()?;
            counters.kills.fetch_add(1, Ordering::Relaxed);
        }
        Fault::FailAfterApply { double, count, status } => {
            faults_of(stack, *double).fail_after_apply(*count, *status);
            counters.lost_answers.fetch_add(u64::from(*count), Ordering::Relaxed);
        }
        Fault::DropAfterApply { double, count } => {
            faults_of(stack, *double).drop_after_apply(*count);
            counters.lost_answers.fetch_add(u64::from(*count), Ordering::Relaxed);
        }
        Fault::FailBefore { double, count, status } => {
            faults_of(stack, *double).fail_next(*count, *status);
            counters.failures_before.fetch_add(u64::from(*count), Ordering::Relaxed);
        }
        Fault::Latency { double, millis, seconds } => {
            let faults = faults_of(stack, *double).clone();
            faults.set_latency(Duration::from_millis(*millis));
            let seconds = *seconds;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(seconds)).await;
                faults.set_latency(Duration::ZERO);
            });
            counters.slow_or_stalled.fetch_add(1, Ordering::Relaxed);
        }
        Fault::Stall { double, seconds } => {
            let faults = faults_of(stack, *double).clone();
            faults.stall(true);
            let seconds = *seconds;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(seconds)).await;
                faults.stall(false);
            });
            counters.slow_or_stalled.fetch_add(1, Ordering::Relaxed);
        }
        Fault::RestartMosquitto => {
            let stack = stack.clone();
            let restart =
                tokio::task::spawn_blocking(move || stack.mosquitto.lock().unwrap().kill_and_restart()).await??;
            detail = format!(" (back after {:.2} s)", restart.gone.as_secs_f64());
            if restart.state_lost {
                detail.push_str(if restart.restored {
                    "; the kill hit a save and left dynamic-security.json unreadable: the state read just before it was put back"
                } else {
                    "; the kill left dynamic-security.json unreadable and nothing could be put back"
                });
                counters.mosquitto_state_lost.fetch_add(1, Ordering::Relaxed);
            }
            counters.mosquitto_restarts.fetch_add(1, Ordering::Relaxed);
        }
        Fault::DeleteVaultKey => {
            let started: Vec<(String, usize)> = world
                .lock()
                .unwrap()
                .transfers
                .iter()
                .filter(|(_, (_, i))| *i == Intended::Started)
                .map(|(n, (a, _))| (n.clone(), *a))
                .collect();
            if !started.is_empty() {
                let (name, asset) = &started[rng.random_range(0..started.len())];
                let deleted = stack.vault.destroy(&vault_key(name, *asset));
                detail = format!(" ({name}{})", if deleted { "" } else { ": had no key yet" });
                counters.vault_keys_deleted.fetch_add(u64::from(deleted), Ordering::Relaxed);
            }
        }
        Fault::ResetWatches => {
            stack.kube_proxy.reset_all();
            counters.watch_resets.fetch_add(1, Ordering::Relaxed);
        }
        Fault::RefuseApiServer { seconds } => {
            stack.kube_proxy.refuse_for(Duration::from_secs(*seconds));
            counters.refusals.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(detail)
}

/// Suspends, resumes, terminates, deletes and creates transfers and changes assets, a few times a
/// second, until told to stop.
async fn churn(
    stack: Arc<Stack>,
    world: Arc<Mutex<World>>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> Result<(), Failure> {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1));
    let transfers: Api<MqttTransfer> = Api::namespaced(stack.client.clone(), NAMESPACE);
    let assets: Api<MqttAsset> = Api::namespaced(stack.client.clone(), NAMESPACE);
    let params = PatchParams::default();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..250))).await;
        let action = rng.random_range(0..100);
        let (pick, asset_count) = {
            let w = world.lock().unwrap();
            let alive: Vec<(String, Intended)> = w
                .transfers
                .iter()
                .filter(|(_, (_, i))| *i != Intended::Deleted)
                .map(|(n, (_, i))| (n.clone(), *i))
                .collect();
            let pick = (!alive.is_empty()).then(|| alive[rng.random_range(0..alive.len())].clone());
            (pick, w.asset_generations.len())
        };
        let set_state = |name: &str, state: &'static str, intended: Intended| {
            let (transfers, params, world, name) = (transfers.clone(), params.clone(), world.clone(), name.to_owned());
            let patch = Patch::Merge(json!({"spec": {"state": state}}));
            async move {
                // The API server has it before the operator can see it: recorded first, undone
                // when the request fails.
                let before =
                    world.lock().unwrap().transfers.get_mut(&name).map(|t| std::mem::replace(&mut t.1, intended));
                if let Err(e) = transfers.patch(&name, &params, &patch).await {
                    progress(&format!("churn: {name} → {state}: {e}"));
                    if let (Some(before), Some(t)) = (before, world.lock().unwrap().transfers.get_mut(&name)) {
                        t.1 = before;
                    }
                }
            }
        };
        let what: &'static str = match (action, pick) {
            (0..35, Some((name, Intended::Started))) => {
                set_state(&name, "Suspended", Intended::Suspended).await;
                "suspend"
            }
            (0..70, Some((name, Intended::Suspended))) => {
                set_state(&name, "Started", Intended::Started).await;
                "resume"
            }
            (70..80, Some((name, Intended::Started | Intended::Suspended))) => {
                set_state(&name, "Terminated", Intended::Terminated).await;
                "terminate"
            }
            (80..88, Some((name, _))) => {
                // Marked deleted before the request: the operator may act on it at once.
                world.lock().unwrap().transfers.get_mut(&name).expect("known").1 = Intended::Deleted;
                if let Err(e) = transfers.delete(&name, &DeleteParams::default()).await {
                    progress(&format!("churn: delete {name}: {e}"));
                }
                "delete"
            }
            (88..96, _) => {
                let (name, a) = {
                    let mut w = world.lock().unwrap();
                    let name = transfer_name(w.next_transfer);
                    w.next_transfer += 1;
                    let a = rng.random_range(0..asset_count);
                    w.transfers.insert(name.clone(), (a, Intended::Started));
                    (name, a)
                };
                if let Err(e) = transfers.create(&PostParams::default(), &transfer(&name, a)?).await {
                    progress(&format!("churn: create {name}: {e}"));
                    world.lock().unwrap().transfers.remove(&name);
                }
                "create"
            }
            (96.., _) => {
                let i = rng.random_range(0..asset_count);
                let generation = {
                    let mut w = world.lock().unwrap();
                    w.asset_generations[i] += 1;
                    w.asset_generations[i]
                };
                let name =
                    json!({"spec": {"properties": {"name": format!("Line {i} telemetry, revision {generation}")}}});
                if let Err(e) = assets.patch(&asset_name(i), &params, &Patch::Merge(name)).await {
                    progress(&format!("churn: change asset {i}: {e}"));
                }
                "asset change"
            }
            _ => continue,
        };
        *counters.churn.lock().unwrap().entry(what).or_default() += 1;
    }
    Ok(())
}

/// Takes an inventory every 2 s and keeps the largest set of duplicates seen.
async fn check_duplicates(stack: Arc<Stack>, counters: Arc<Counters>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let inner = stack.clone();
        if let Ok(Some(found)) = tokio::task::spawn_blocking(move || inventory(&inner).map(|o| duplicates(&o))).await {
            let mut max = counters.max_duplicates.lock().unwrap();
            if found.len() > max.len() {
                *max = found;
            }
        }
        counters.checks.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

type SecretCheck = (usize, Vec<String>, Vec<String>, BTreeSet<String>);

/// Connects with every Started transfer's Secret and subscribes to its topic; a Suspended one's
/// Secret must hold no credentials.
async fn try_secrets(stack: &Stack, world: &World) -> Result<SecretCheck, Failure> {
    let secrets: Api<Secret> = Api::namespaced(stack.client.clone(), NAMESPACE);
    let ca_pem = stack.ca.cert_pem();
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let started: Vec<String> =
        world.transfers.iter().filter(|(_, (_, i))| *i == Intended::Started).map(|(n, _)| n.clone()).collect();
    let outcomes: Vec<(String, Result<(), String>)> = futures::stream::iter(started)
        .map(|name| {
            let (secrets, ca_pem, seen) = (secrets.clone(), ca_pem.clone(), seen.clone());
            async move {
                let outcome = async {
                    let secret = secrets.get(&name).await.map_err(|e| format!("no Secret: {e}"))?;
                    let from = FromSecret::read(&secret, &ca_pem).ok_or("the Secret holds no credentials")?;
                    seen.lock().unwrap().insert(from.options.password.clone());
                    let topic = from.topics.first().cloned().ok_or("the Secret names no topic")?;
                    let mut consumer = tokio::time::timeout(Duration::from_secs(10), Consumer::connect(&from.options))
                        .await
                        .map_err(|_| "connect timed out".to_owned())?
                        .map_err(|e| format!("connect refused: {e:?}"))?;
                    if !consumer.subscribe(&topic).await {
                        return Err(format!("subscription to {topic} refused"));
                    }
                    Ok(())
                }
                .await;
                (name, outcome)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let ok = outcomes.iter().filter(|(_, o)| o.is_ok()).count();
    let failed = outcomes.into_iter().filter_map(|(n, o)| o.err().map(|e| format!("{n}: {e}"))).collect();
    let mut suspended_with_credentials = Vec::new();
    for (name, _) in world.transfers.iter().filter(|(_, (_, i))| *i == Intended::Suspended) {
        if let Ok(secret) = secrets.get(name).await
            && let Some(from) = FromSecret::read(&secret, &ca_pem)
        {
            seen.lock().unwrap().insert(from.options.password.clone());
            suspended_with_credentials.push(name.clone());
        }
    }
    let seen = seen.lock().unwrap().clone();
    Ok((ok, failed, suspended_with_credentials, seen))
}

// --- the report -----------------------------------------------------------------------------

struct Results<'a> {
    options: &'a Options,
    plan: &'a [(Duration, Fault)],
    fault_log: &'a [String],
    counters: &'a Counters,
    starts: u32,
    converged_after: Option<Duration>,
    /// Time from the last fault to the end of the churn.
    churn_after_fault: Duration,
    remaining: &'a [String],
    world: &'a World,
    orphans_converged: &'a [Object],
    duplicates_converged: &'a [String],
    secret_ok: usize,
    secret_failed: &'a [String],
    suspended_with_credentials: &'a [String],
    empty_after: Option<Duration>,
    left: &'a [Object],
    left_resources: usize,
    secrets_left: usize,
    kube_410: usize,
    proxy_resets: u64,
    leak_ok: bool,
    leak_text: &'a str,
    /// Writes that took effect and lost their answer, per double.
    answers_lost: Vec<(Double, u32)>,
    wall: Duration,
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**MISSED**" }
}

fn listed(names: &[String]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    let shown: Vec<&str> = names.iter().take(20).map(String::as_str).collect();
    let more = if names.len() > 20 { format!(" … and {} more", names.len() - 20) } else { String::new() };
    format!("{}{more}", shown.join("; "))
}

impl Results<'_> {
    fn report(&self) -> (String, bool) {
        let c = self.counters;
        let kills = c.kills.load(Ordering::Relaxed);
        let mut intended: BTreeMap<Intended, usize> = BTreeMap::new();
        for (_, i) in self.world.transfers.values() {
            *intended.entry(*i).or_default() += 1;
        }
        let started = intended.get(&Intended::Started).copied().unwrap_or(0);
        let alive = self.world.transfers.values().filter(|(_, i)| *i != Intended::Deleted).count();
        let off: BTreeSet<&str> =
            self.remaining.iter().filter(|r| r.starts_with("t-")).filter_map(|r| r.split(':').next()).collect();
        let in_state = alive.saturating_sub(off.len());
        let max_duplicates = c.max_duplicates.lock().unwrap().clone();
        let orphans_after: Vec<&Object> = self.left.iter().collect();
        let converge_ok = self.converged_after.is_some_and(|t| t <= Duration::from_secs(30));
        let secrets_ok = self.secret_failed.is_empty() && self.secret_ok == started;
        let checks = [
            kills >= 20,
            orphans_after.is_empty() && self.left_resources == 0,
            max_duplicates.is_empty() && self.duplicates_converged.is_empty(),
            secrets_ok,
            converge_ok,
            self.leak_ok,
        ];
        let mut out = String::new();
        out.push_str(&format!(
            "## Chaos run: seed {}, {} transfers, {} s of faults ({})\n\n",
            self.options.seed,
            self.options.transfers,
            self.options.duration.as_secs(),
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
        ));
        out.push_str("| measure | value | target | |\n|---|---:|---:|---|\n");
        out.push_str(&format!("| operator SIGKILLs (restarted at once) | {kills} | ≥ 20 | {} |\n", verdict(checks[0])));
        out.push_str(&format!(
            "| transfers in their intended state at convergence | {in_state} of {alive} ({} Started, {} Suspended, {} Terminated; {} deleted) | all | {} |\n",
            started,
            intended.get(&Intended::Suspended).copied().unwrap_or(0),
            intended.get(&Intended::Terminated).copied().unwrap_or(0),
            intended.get(&Intended::Deleted).copied().unwrap_or(0),
            verdict(in_state == alive && self.converged_after.is_some())
        ));
        out.push_str(&format!(
            "| Started transfers whose Secret works on the broker (connect + subscribe, every one) | {} of {started} ({:.1} %) | 100 % | {} |\n",
            self.secret_ok,
            100.0 * self.secret_ok as f64 / started.max(1) as f64,
            verdict(secrets_ok)
        ));
        out.push_str(&format!(
            "| duplicate external objects, at any of {} checks and at convergence | {} | 0 | {} |\n",
            c.checks.load(Ordering::Relaxed),
            max_duplicates.len() + self.duplicates_converged.len(),
            verdict(checks[2])
        ));
        out.push_str(&format!(
            "| orphans at convergence (objects of deleted or terminated resources) | {} | 0 | {} |\n",
            self.orphans_converged.len(),
            verdict(self.orphans_converged.is_empty())
        ));
        out.push_str(&format!(
            "| time to converge after the last fault (the churn went on {:.1} s longer) | {} | ≤ 30 s | {} |\n",
            self.churn_after_fault.as_secs_f64(),
            self.converged_after.map_or("not within 300 s".into(), |t| format!("{:.1} s", t.as_secs_f64())),
            verdict(converge_ok)
        ));
        out.push_str(&format!(
            "| after deleting everything: time until no resource and no external object is left | {} | | |\n",
            self.empty_after.map_or("not within 180 s".into(), |t| format!("{:.1} s", t.as_secs_f64()))
        ));
        out.push_str(&format!(
            "| orphans after deleting everything (every system) | {} (resources left: {}, Secrets left: {}) | 0 | {} |\n",
            orphans_after.len(),
            self.left_resources,
            self.secrets_left,
            verdict(checks[1])
        ));
        out.push_str(&format!(
            "| secrets in the operator's log (e2e/check-log-secrets.sh) | {} | 0 | {} |\n",
            self.leak_text.replace('|', "/"),
            verdict(self.leak_ok)
        ));
        out.push_str("\nPer system:\n\n| system | duplicates (any check) | orphans at convergence | orphans after deleting everything |\n|---|---|---|---|\n");
        let conv = by_system(&self.orphans_converged.iter().collect::<Vec<_>>());
        let after = by_system(&orphans_after);
        for system in ["Mosquitto", "RabbitMQ", "Keycloak", "Vault", "EDC", "EDC factoryx"] {
            let dup: Vec<String> = max_duplicates
                .iter()
                .chain(self.duplicates_converged)
                .filter(|d| d.split(':').next() == Some(system))
                .cloned()
                .collect();
            out.push_str(&format!(
                "| {system} | {} | {} | {} |\n",
                listed(&dup),
                listed(conv.get(system).map_or(&[][..], Vec::as_slice)),
                listed(after.get(system).map_or(&[][..], Vec::as_slice))
            ));
        }
        if !self.secret_failed.is_empty() {
            out.push_str(&format!("\nSecrets that did not work: {}\n", listed(self.secret_failed)));
        }
        if !self.suspended_with_credentials.is_empty() {
            out.push_str(&format!(
                "\nSuspended transfers whose Secret still holds credentials: {}\n",
                listed(self.suspended_with_credentials)
            ));
        }
        if self.converged_after.is_none() {
            out.push_str(&format!("\nNot converged: {}\n", listed(self.remaining)));
        }
        let churn = c.churn.lock().unwrap();
        let lost = format!(
            "{} ({})",
            self.answers_lost.iter().map(|(_, n)| n).sum::<u32>(),
            self.answers_lost.iter().map(|(d, n)| format!("{d:?} {n}")).collect::<Vec<_>>().join(", ")
        );
        out.push_str(&format!(
            "\nFaults: {kills} operator SIGKILLs ({} operator starts in all, {} exits on its own), {} Mosquitto SIGKILL + restarts ({} of them hit a save and lost the state file), \
             {} Vault keys deleted behind the operator's back, {} resets of every API-server connection and {} periods of refused connections \
             ({} connections reset in all; HTTP 410 Gone answers to the operator in the audit log: {}), {} lost answers \
             scheduled (a write applied, then 5xx or cut off) and {} took place, {} requests failed before the handler, {} latency or stall periods. \
             Churn: {}. Resync period {} s. Whole run {:.0} s.\n",
            self.starts,
            c.crashes.load(Ordering::Relaxed),
            c.mosquitto_restarts.load(Ordering::Relaxed),
            c.mosquitto_state_lost.load(Ordering::Relaxed),
            c.vault_keys_deleted.load(Ordering::Relaxed),
            c.watch_resets.load(Ordering::Relaxed),
            c.refusals.load(Ordering::Relaxed),
            self.proxy_resets,
            self.kube_410,
            c.lost_answers.load(Ordering::Relaxed),
            lost,
            c.failures_before.load(Ordering::Relaxed),
            c.slow_or_stalled.load(Ordering::Relaxed),
            churn.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", "),
            self.options.resync_seconds,
            self.wall.as_secs_f64()
        ));
        let _ = self.plan;
        out.push_str("\nThe fault schedule as applied:\n\n```\n");
        for line in self.fault_log {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("```\n");
        let met = checks.iter().all(|c| *c) && in_state == alive && self.orphans_converged.is_empty();
        (out, met)
    }
}
