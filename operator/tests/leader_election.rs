//! Two operator processes, one Lease: the standby takes over when the leader is killed in the
//! middle of reconciling, and the end state is exactly what one operator would have made:
//! every asset Ready, each external object once, every credential working, and after deletion
//! nothing left behind.
//!
//! The operators run as real processes (the binary, as in a Deployment with two replicas)
//! against the dev stack: the real Kubernetes control plane (or the `KUBECONFIG` cluster), the real
//! EDC (the stack's objects in it), the Keycloak realm, the Vault double and real Mosquitto.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::consumer::Consumer;
use e2e::fixtures::consumer_options;
use e2e::stack::{Cluster, DevStack, StackOptions, VAULT_FOLDER, condition, wait_gone};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use mqtt_dsp_operator::api::MqttAsset;
use serde_json::json;

const OPERATOR: &str = env!("CARGO_BIN_EXE_mqtt-dsp-operator");
const ASSETS: usize = 60;
const PAUSED: &str = mqtt_dsp_operator::controller::PAUSED_ANNOTATION;
const LEASE: &str = "mqtt-dsp-operator";
/// Short, so that the test does not wait long for the dead leader's claim to run out.
const LEASE_SECONDS: u64 = 3;

/// An operator process; killed (SIGKILL) when dropped.
struct Operator {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Operator {
    async fn start(stack: &DevStack, dir: &std::path::Path, config: &std::path::Path, name: &str) -> Operator {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(OPERATOR);
        cmd.args(["run", "--config"])
            .arg(config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--watch-namespace", &stack.namespace, "--lease-namespace", &lease_namespace(stack)])
            .args(["--lease-duration-seconds", &LEASE_SECONDS.to_string(), "--lease-grace-seconds", "1"])
            .env("POD_NAME", name)
            .env("POD_NAMESPACE", lease_namespace(stack))
            .env("RUST_LOG", "info")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        // On the local control plane each replica runs as the operator's ServiceAccount, with
        // exactly the RBAC of deploy/rbac.yaml (the Lease rules included).
        if let Cluster::Local(plane) = &stack.cluster {
            let kubeconfig = dir.join(format!("{name}.kubeconfig"));
            plane.write_operator_kubeconfig(&kubeconfig).await;
            cmd.env("KUBECONFIG", kubeconfig);
        }
        Operator { child: cmd.spawn().expect("the operator binary starts"), port, log }
    }

    async fn readyz(&self) -> Option<(u16, String)> {
        let r = reqwest::get(format!("http://127.0.0.1:{}/readyz", self.port)).await.ok()?;
        Some((r.status().as_u16(), r.text().await.ok()?))
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port)).await.unwrap().text().await.unwrap()
    }

    /// Waits until `/readyz` is 200 and says `what`.
    async fn wait_ready(&self, what: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((200, body)) = self.readyz().await
                && body.contains(what)
            {
                return;
            }
            assert!(Instant::now() < deadline, "operator not ready ({what}) within {timeout:?}:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

fn asset(i: usize) -> MqttAsset {
    serde_json::from_value(json!({
        "apiVersion": "dsp-mqtt.io/v1alpha1",
        "kind": "MqttAsset",
        "metadata": {"name": format!("line-{i}"), "annotations": {PAUSED: "true"}},
        "spec": {
            "endpoint": {"type": "mqtt-tls"},
            "topics": [format!("factory/line-{i}/#")],
            "auth": {"mode": "usrpw"},
            "policy": {"access": {"participantIds": ["did:web:consumer-a.example.com"]}},
        },
    }))
    .unwrap()
}

fn ready(a: &MqttAsset) -> bool {
    a.status.as_ref().is_some_and(|s| {
        s.observed_generation == a.metadata.generation
            && condition(&s.conditions, "Ready").is_some_and(|(st, _, _)| st == "True")
    })
}

async fn ready_count(api: &Api<MqttAsset>) -> usize {
    api.list(&ListParams::default()).await.unwrap().items.iter().filter(|a| ready(a)).count()
}

/// Where the replicas hold their Lease: the operator's own namespace on the local control plane
/// (where deploy/rbac.yaml grants the Lease), the stack's namespace on a `KUBECONFIG` cluster.
fn lease_namespace(stack: &DevStack) -> String {
    match stack.cluster {
        Cluster::Local(_) => e2e::systems::kubernetes::OPERATOR_NAMESPACE.to_owned(),
        Cluster::Kubeconfig => stack.namespace.clone(),
    }
}

async fn lease(stack: &DevStack) -> k8s_openapi::api::coordination::v1::LeaseSpec {
    let leases: Api<Lease> = Api::namespaced(stack.client.clone(), &lease_namespace(stack));
    leases.get(LEASE).await.unwrap().spec.expect("the Lease has a spec")
}

/// Our objects in every backend the usrpw assets use, by name.
async fn inventory(stack: &DevStack) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ns = &stack.namespace;
    for a in stack.edc.assets().await {
        found.insert(format!("edc asset {}", a.id));
    }
    for p in stack.edc.policies().await {
        found.insert(format!("edc policy {}", p.id));
    }
    for c in stack.edc.contract_definitions().await {
        found.insert(format!("edc contract definition {}", c.id));
    }
    let dynsec = stack.mosquitto.dynsec_state();
    for (list, key) in [("clients", "username"), ("roles", "rolename")] {
        for item in dynsec[list].as_array().into_iter().flatten() {
            let name = item[key].as_str().unwrap_or_default();
            if name.starts_with("dsp-mqtt-") {
                found.insert(format!("mosquitto {list} {name}"));
            }
        }
    }
    for i in 0..ASSETS {
        let key = format!("{VAULT_FOLDER}/dsp-mqtt-{ns}-line-{i}-secret");
        if stack.vault.secret(&key).await.is_some_and(|s| s.content().is_some()) {
            found.insert(format!("vault {key}"));
        }
    }
    found
}

fn expected(stack: &DevStack) -> BTreeSet<String> {
    let ns = &stack.namespace;
    let mut want = BTreeSet::new();
    for i in 0..ASSETS {
        let id = format!("{ns}-line-{i}");
        want.insert(format!("edc asset {id}"));
        // Without a contract policy in the spec, the access policy serves as both.
        want.insert(format!("edc policy {id}-access-policy"));
        want.insert(format!("edc contract definition {id}-contract-definition"));
        want.insert(format!("mosquitto clients dsp-mqtt-{ns}-line-{i}"));
        want.insert(format!("mosquitto roles dsp-mqtt-{ns}-line-{i}"));
        want.insert(format!("vault {VAULT_FOLDER}/dsp-mqtt-{ns}-line-{i}-secret"));
    }
    want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_reconcile_hands_over_without_duplicates_or_orphans() {
    let mut stack = DevStack::start(StackOptions::default()).await;
    // The controllers run in the two operator processes, not in the test.
    stack.stop_controllers().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let yaml = stack.operator_config_yaml(dir.path());
    std::fs::write(&config, yaml).unwrap();

    // Replica a leads; replica b stands by, ready (so a rollout can go on) but idle.
    let mut a = Operator::start(&stack, dir.path(), &config, "replica-a").await;
    a.wait_ready("leading", Duration::from_secs(30)).await;
    let b = Operator::start(&stack, dir.path(), &config, "replica-b").await;
    b.wait_ready("standing by", Duration::from_secs(30)).await;
    let held = lease(&stack).await.holder_identity;
    assert!(held.is_some_and(|h| h.starts_with("replica-a_")), "a holds the Lease");
    assert!(b.metrics().await.contains("mqtt_dsp_operator_leader 0"), "b does not run the controllers");

    // A burst of assets, created paused and then released all at once, so that a starts on all
    // of them together; a is killed (SIGKILL: no clean-up, no Lease release) in the middle.
    let api: Api<MqttAsset> = stack.api();
    for i in 0..ASSETS {
        api.create(&PostParams::default(), &asset(i)).await.unwrap();
    }
    let mut release = tokio::task::JoinSet::new();
    for i in 0..ASSETS {
        let api = api.clone();
        let unpause = json!({"metadata": {"annotations": {PAUSED: null}}});
        release.spawn(
            async move { api.patch(&format!("line-{i}"), &PatchParams::default(), &Patch::Merge(unpause)).await },
        );
    }
    while let Some(done) = release.join_next().await {
        done.unwrap().unwrap();
    }
    // Kill a as soon as the first passwords are in the secret store: those assets are between
    // the secret-store and the broker step (the worst moment: a password only one side knows),
    // the rest have not got that far.
    let deadline = Instant::now() + Duration::from_secs(60);
    // One KV v2 LIST per look: a key is listed once it exists (as `secret(key).is_some()`).
    async fn secrets(stack: &DevStack) -> usize {
        let keys = stack.vault.keys().await;
        (0..ASSETS)
            .filter(|i| keys.contains(&format!("{VAULT_FOLDER}/dsp-mqtt-{}-line-{i}-secret", stack.namespace)))
            .count()
    }
    while secrets(&stack).await < 1 {
        assert!(Instant::now() < deadline, "a reconciled nothing in 60 s:\n{}", a.log_text());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    a.kill();
    let killed = Instant::now();
    // a's claim as it left it: a renews with `grace` to spare, so the claim can run out anywhere
    // from duration − grace to duration after the kill; what b must respect is renewTime + duration.
    let claimed = lease(&stack).await;
    assert!(claimed.holder_identity.as_deref().is_some_and(|h| h.starts_with("replica-a_")), "a held the Lease");
    let a_renewed = claimed.renew_time.expect("a's renewTime").0;
    let at_kill = ready_count(&api).await;
    eprintln!(
        "killed the leader with {} of {ASSETS} passwords stored and {at_kill} assets Ready",
        secrets(&stack).await
    );
    assert!(at_kill < ASSETS, "the leader was killed after it had finished; the test proves nothing then");
    assert!(!b.metrics().await.contains("mqtt_dsp_operator_reconciles_total{"), "b reconciled nothing while a led");

    // b takes over once a's claim runs out, and finishes the work.
    b.wait_ready("leading", Duration::from_secs(LEASE_SECONDS * 4 + 10)).await;
    let takeover = killed.elapsed();
    eprintln!("b leads {takeover:?} after the kill (Lease duration {LEASE_SECONDS} s)");
    let taken = lease(&stack).await;
    assert!(taken.holder_identity.as_deref().is_some_and(|h| h.starts_with("replica-b_")), "b holds the Lease");
    let b_acquired = taken.acquire_time.expect("b's acquireTime").0;
    let waited = b_acquired.as_microsecond() - a_renewed.as_microsecond();
    eprintln!("b acquired the Lease {waited} µs after a's last renewal");
    assert!(
        waited >= i64::try_from(LEASE_SECONDS * 1_000_000).unwrap(),
        "b must wait for a's claim (renewTime + {LEASE_SECONDS} s) to run out; it took over {waited} µs after a's last renewal"
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    while ready_count(&api).await < ASSETS {
        assert!(Instant::now() < deadline, "b did not finish within 90 s:\n{}", b.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("all {ASSETS} assets Ready {:?} after the kill", killed.elapsed());

    // Nothing duplicated: each object exactly once, nothing else of ours.
    let (found, want) = (inventory(&stack).await, expected(&stack));
    let extra: Vec<_> = found.difference(&want).collect();
    let missing: Vec<_> = want.difference(&found).collect();
    assert!(extra.is_empty() && missing.is_empty(), "extra: {extra:?}\nmissing: {missing:?}");
    let edc_assets = stack.edc.assets().await;
    assert_eq!(edc_assets.len(), ASSETS, "one connector asset per MqttAsset");
    // Every asset's credential works: what Vault holds is what the broker checks (a takeover
    // between writing the password and setting it on the broker would break this).
    for i in 0..ASSETS {
        let user = format!("dsp-mqtt-{}-line-{i}", stack.namespace);
        let key = format!("{VAULT_FOLDER}/{user}-secret");
        let password = stack.vault.secret(&key).await.and_then(|s| s.content().map(str::to_owned)).unwrap();
        e2e::logs::register_secret(&password);
        let options = consumer_options(stack.mosquitto.mqtts_url(), &stack.ca.cert_pem(), &user, &password);
        let mut consumer = Consumer::connect(&options).await.unwrap_or_else(|e| panic!("{user}: {e:?}"));
        assert!(consumer.subscribe(&format!("factory/line-{i}/x")).await, "{user} reads its topic");
    }

    // Deleting everything under the new leader leaves nothing behind.
    api.delete_collection(&DeleteParams::default(), &ListParams::default()).await.unwrap();
    for i in 0..ASSETS {
        wait_gone(&api, &format!("line-{i}"), Duration::from_secs(60)).await;
    }
    let left: Vec<_> = inventory(&stack).await.into_iter().collect();
    assert!(left.is_empty(), "orphans: {left:?}");
    drop(b);
    stack.teardown().await;
}
