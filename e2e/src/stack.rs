//! The whole dev stack for controller tests and the demo: a Kubernetes API (the real control
//! plane of [`crate::systems::kubernetes`], or a cluster via `KUBECONFIG`), a real EDC as the
//! `default` connector and a realm of a real Keycloak as the `default` identity provider (each
//! behind a proxy of the stack's own, for the request log and fault injection: [`edc`],
//! [`keycloak`]), a KV v2 mount of a real OpenBao as the `default` secret store (behind a proxy
//! too: [`vault`]), the factoryx-edc double, real Mosquitto and (optionally) real RabbitMQ, an
//! operator configuration pointing at all of them, and the operator's controllers running in this
//! process.
//!
//! Still a double: the `factoryx` connector profiles (the reference connector's MQTT extension is
//! not installable here).
//!
//! The real EDC, Keycloak and OpenBao are shared by every stack of a test binary (started once);
//! stacks stay apart by the realm and the KV v2 mount of their own and by the namespace that every
//! connector id starts with.
//!
//! Cluster choice: when `KUBECONFIG` is set, the stack uses that cluster (the CRDs must be
//! installed: `kubectl apply -f crds/`) with that kubeconfig's rights. Otherwise it uses the
//! control plane this test binary starts (once), where the controllers run as the operator's
//! ServiceAccount under exactly the RBAC of `deploy/rbac.yaml` (with the RoleBinding it asks for
//! in each served namespace, here the stack's), and the test under the administrator's client.
//! Either way each stack has a fresh namespace, and [`DevStack::teardown`] leaves the cluster as
//! it found it: resources deleted while the operator runs (so its finalizer does the cleanup),
//! then the operator stopped, then the namespace removed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use mqtt_dsp_operator::api::{MqttAsset, MqttTransfer};
use mqtt_dsp_operator::backends::registry::{Backends, BuildContext};
use mqtt_dsp_operator::config::Config;
use mqtt_dsp_operator::controller::{self, Context, Settings};
use mqtt_dsp_operator::metrics::Metrics;
use tokio::sync::watch;

pub mod edc;
pub mod keycloak;
pub mod vault;

use crate::brokers::mosquitto::{self, Mosquitto};
use crate::brokers::rabbitmq::{self, OAuthSettings, RabbitMq};
use crate::doubles::edc::{self as edc_double, EdcConfig, EdcDouble, Flavour};
use crate::doubles::keycloak::KeycloakDouble;
use crate::doubles::vault::VaultDouble;
use crate::systems::kubernetes::{self, ControlPlane};
use crate::tls::TestCa;
use edc::StackEdc;
use keycloak::StackKeycloak;
use vault::StackVault;

/// The operator's own client in Keycloak (the double's and each stack's realm).
pub const KEYCLOAK_OPERATOR_SECRET: &str = "dev-stack-keycloak-operator-secret";
/// The operator's own client id in Keycloak.
pub const KEYCLOAK_OPERATOR_CLIENT: &str = "mqtt-dsp-operator";
/// The Vault double's root token (all-doubles stacks; the dev stack's OpenBao has a random one).
pub const VAULT_TOKEN: &str = "dev-stack-vault-root-token";
/// Realm of the Keycloak double; each stack's realm on the real Keycloak is `{REALM}-<random>`.
pub const REALM: &str = "dataspace";
/// Folder the stock connector's Vault extension uses.
pub const VAULT_FOLDER: &str = "edc";
/// Scopes claim RabbitMQ reads.
pub const SCOPES_KEY: &str = "dsp_mqtt_scopes";

/// Where the cluster comes from.
pub enum Cluster {
    /// The real control plane this test binary started ([`crate::systems::kubernetes`]).
    Local(&'static ControlPlane),
    /// A cluster from `KUBECONFIG`.
    Kubeconfig,
}

/// What to start.
#[derive(Clone, Debug)]
pub struct StackOptions {
    /// Start RabbitMQ (with OAuth 2.0 against the stack's Keycloak realm); slower (~5 s).
    pub rabbitmq: bool,
    /// Controller settings (resync, cleanup attempts…).
    pub settings: Settings,
    /// `allowed` blocks (YAML flow mappings) by profile, keyed `connectors.default`,
    /// `brokers.default`…; a profile not named gets the permissive block of
    /// [`operator_config_yaml_for`] (every namespace, every topic, raw ODRL and open offers).
    pub allowed: BTreeMap<String, String>,
    /// Extra keys of the `refresh` section (YAML lines indented by two spaces, e.g.
    /// `  consumerAuth: {mode: bearerJwt, jwksFile: /x}`); the stack always serves the refresh
    /// endpoint over TLS on a loopback port of its own.
    pub refresh_extra: String,
    /// The stack's connector evaluates the participant constraints of its offers, as a
    /// Factory-X connector does (another EDC instance than the default stacks'; see
    /// [`crate::systems::edc::EdcOptions::participant_policies`]).
    pub participant_policies: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            rabbitmq: false,
            settings: Settings {
                resync: Duration::from_secs(300),
                backoff_base: Duration::from_millis(200),
                backoff_max: Duration::from_secs(5),
                cleanup_attempts: 2,
                cleanup_retry: Duration::from_secs(1),
                namespace: None,
                max_concurrent_reconciles: 32,
                instance: "e2e".into(),
            },
            allowed: BTreeMap::new(),
            refresh_extra: String::new(),
            participant_policies: false,
        }
    }
}

/// A running dev stack with the operator's controllers.
pub struct DevStack {
    /// The run's CA.
    pub ca: TestCa,
    /// The cluster.
    pub cluster: Cluster,
    /// The administrator's client (the test's own view: set-up, inspection, tampering).
    pub client: kube::Client,
    /// The client the controllers run with: the operator's ServiceAccount on the local control
    /// plane.
    pub operator_client: kube::Client,
    torn_down: bool,
    /// The namespace this stack's resources live in.
    pub namespace: String,
    /// Connector profile `default`: the real stock EDC (behind the stack's proxy), ADR spelling,
    /// Vault folder `edc`.
    pub edc: StackEdc,
    /// Connector profile `factoryx`: the reference connector, its spelling, no folder.
    pub edc_fx: EdcDouble,
    /// Identity provider profile `default`: the stack's realm of the real Keycloak (behind the
    /// stack's proxy).
    pub keycloak: StackKeycloak,
    /// Secret store profile `default`: a KV v2 mount of its own on the real OpenBao (behind the
    /// stack's proxy), Vault folder `edc` below it for the `default` connector.
    pub vault: StackVault,
    /// Broker profile `default`.
    pub mosquitto: Mosquitto,
    /// Broker profile `rabbitmq` (when started).
    pub rabbitmq: Option<RabbitMq>,
    /// The operator configuration the controllers run with.
    pub config: Config,
    /// The controllers' metrics.
    pub metrics: Arc<Metrics>,
    /// Backends as the operator built them (tests may use them to inspect or tamper).
    pub backends: Arc<Backends>,
    /// The refresh endpoint's public URL (`https://127.0.0.1:<port>/refresh`), served in this
    /// process with a certificate of the stack's CA.
    pub refresh_url: String,
    settings: Settings,
    allowed: BTreeMap<String, String>,
    stop: watch::Sender<bool>,
    controllers: Option<tokio::task::JoinHandle<()>>,
    refresh_stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl DevStack {
    /// Starts everything and the controllers.
    pub async fn start(options: StackOptions) -> DevStack {
        mqtt_dsp_operator::install_crypto_provider();
        crate::logs::init();
        for s in [
            KEYCLOAK_OPERATOR_SECRET,
            VAULT_TOKEN,
            edc_double::API_KEY,
            mosquitto::ADMIN_PASSWORD,
            rabbitmq::ADMIN_PASSWORD,
        ] {
            crate::logs::register_secret(s);
        }
        let ca = TestCa::shared();
        let (cluster, client, operator_client) = match std::env::var_os("KUBECONFIG") {
            Some(path) => {
                eprintln!("dev stack: using the cluster from KUBECONFIG={}", path.to_string_lossy());
                let client = kube::Client::try_default().await.expect("a client from KUBECONFIG");
                mqtt_dsp_operator::run::check_crds(&client)
                    .await
                    .expect("the CRDs must be installed in the KUBECONFIG cluster (kubectl apply -f crds/)");
                (Cluster::Kubeconfig, client.clone(), client)
            }
            None => {
                let plane = tokio::task::spawn_blocking(kubernetes::shared)
                    .await
                    .expect("start-up task")
                    .unwrap_or_else(|e| panic!("{e}"));
                (Cluster::Local(plane), plane.admin_client().await, plane.operator_client().await)
            }
        };
        let namespace = format!("e2e-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let mut labels = std::collections::BTreeMap::new();
        labels.insert(kubernetes::TEST_NAMESPACE_LABEL.to_owned(), "true".to_owned());
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(namespace.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("namespace created");
        // The stack's operator may write MqttTransfer Secrets there, as deploy/rbac.yaml has an
        // administrator grant it per served namespace.
        if let Cluster::Local(plane) = &cluster {
            plane.serve_namespace(&namespace).await;
        }

        // The real systems start once per binary (EDC, Keycloak and OpenBao side by side on
        // first use).
        let (edc, keycloak, vault) = tokio::join!(
            StackEdc::start(&ca, &namespace, options.participant_policies),
            StackKeycloak::start(&ca, REALM, KEYCLOAK_OPERATOR_CLIENT, KEYCLOAK_OPERATOR_SECRET),
            StackVault::start(&ca)
        );
        let edc_fx =
            edc_double::start(&ca, EdcConfig::flavour(Flavour::Factoryx)).await.expect("EDC double (factoryx)");
        let mosquitto = Mosquitto::start(&ca).expect("Mosquitto");
        let rabbitmq = options.rabbitmq.then(|| {
            let oauth = OAuthSettings {
                // Straight to Keycloak, by the name `localhost` (Erlang's hostname check does not
                // match IP SANs); RabbitMQ starts per stack, so it trusts this stack's realm only.
                jwks_url: keycloak.realm.localhost_jwks_url(),
                resource_server_id: "rabbitmq".into(),
                additional_scopes_key: SCOPES_KEY.into(),
            };
            RabbitMq::start(&ca, Some(&oauth)).expect("RabbitMQ")
        });

        let dir = tempfile::tempdir().expect("temp dir");
        let mut targets = config_targets(&edc, &edc_fx, &keycloak, &vault, &mosquitto, rabbitmq.as_ref());
        targets.allowed = options.allowed.clone();
        let refresh_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let refresh_addr = refresh_listener.local_addr().expect("bound");
        let refresh_url = format!("https://{refresh_addr}/refresh");
        let mut yaml = operator_config_yaml_for(dir.path(), &ca, &targets);
        let listen = refresh_addr.to_string();
        yaml.push_str(&refresh_section(dir.path(), &ca, &refresh_url, &listen, &options.refresh_extra));
        let mut config = Config::parse(&yaml).unwrap_or_else(|p| panic!("dev-stack configuration: {p:#?}"));
        // The stack's namespace stands for the operator's own (as for the backends' Secrets).
        config.operator_namespace = namespace.clone();
        let build = BuildContext { kube: Some(&operator_client), namespace: &namespace, replica: "e2e" };
        let backends = Arc::new(Backends::build(&config, &build).await.unwrap_or_else(|e| panic!("{e}")));
        let metrics = Arc::new(Metrics::default());

        let (stop, _) = watch::channel(false);
        let (refresh_stop, _) = watch::channel(false);
        {
            use mqtt_dsp_operator::refresh::{consumer_auth::ConsumerVerifier, server, service::Refresher};
            let settings = config.refresh.clone().expect("the stack configures the refresh endpoint");
            let ctx = Arc::new(Context::new(
                operator_client.clone(),
                Arc::new(config.clone()),
                backends.clone(),
                options.settings.clone(),
                metrics.clone(),
            ));
            let verifier = ConsumerVerifier::new(&settings.consumer_auth).unwrap_or_else(|e| panic!("{e}"));
            let router = server::router(&settings, Refresher::new(ctx, verifier), metrics.clone());
            let stop = refresh_stop.subscribe();
            tokio::spawn(async move {
                let tls = settings.tls.as_ref().map(|t| server::tls_config(t).expect("the stack's certificate"));
                server::serve(refresh_listener, router, tls, stop).await;
            });
        }
        let mut stack = DevStack {
            ca,
            cluster,
            client,
            operator_client,
            torn_down: false,
            namespace,
            edc,
            edc_fx,
            keycloak,
            vault,
            mosquitto,
            rabbitmq,
            config,
            metrics,
            backends,
            refresh_url,
            settings: options.settings.clone(),
            allowed: options.allowed.clone(),
            stop,
            controllers: None,
            refresh_stop,
            _dir: dir,
        };
        stack.settings.namespace = Some(stack.namespace.clone());
        stack.start_controllers(stack.settings.clone());
        stack
    }

    /// A fresh client for the cluster, as a new operator process would have.
    async fn fresh_client(&self) -> kube::Client {
        match &self.cluster {
            Cluster::Local(plane) => plane.operator_client().await,
            Cluster::Kubeconfig => kube::Client::try_default().await.expect("a client from KUBECONFIG"),
        }
    }

    /// (Re)starts the controllers with these settings.
    pub fn start_controllers(&mut self, settings: Settings) {
        self.start_controllers_with(self.operator_client.clone(), settings);
    }

    fn start_controllers_with(&mut self, client: kube::Client, settings: Settings) {
        let ctx = Arc::new(Context::new(
            client,
            Arc::new(self.config.clone()),
            self.backends.clone(),
            settings,
            self.metrics.clone(),
        ));
        self.stop.send_replace(false);
        let mut stop = self.stop.subscribe();
        self.controllers = Some(tokio::spawn(controller::run(ctx, async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
    }

    /// Stops the controllers and starts them again with the same settings: an operator restart
    /// (the backends' clients are kept).
    pub async fn restart_controllers(&mut self) {
        self.stop_controllers().await;
        // A new process has its own connections: reusing the stopped controllers' client would
        // inherit their aborted HTTP/2 connects.
        let client = self.fresh_client().await;
        self.start_controllers_with(client, self.settings.clone());
    }

    /// Stops the controllers (as an operator shutdown would) and waits for them.
    pub async fn stop_controllers(&mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.controllers.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    /// An HTTPS client that trusts exactly this stack's CA (for talking to the doubles and
    /// brokers directly, as a consumer's connector or an operator of the broker would).
    /// The ownership marker the stack's operator writes for the resource `kind`/`name` of the
    /// stack's namespace.
    pub fn owner(&self, kind: &str, name: &str) -> mqtt_dsp_operator::backends::Owner {
        mqtt_dsp_operator::backends::Owner {
            installation: self.config.installation().to_owned(),
            kind: kind.into(),
            namespace: self.namespace.clone(),
            name: name.into(),
        }
    }

    pub fn http(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca.cert_pem().as_bytes()).expect("the CA's PEM");
        reqwest::Client::builder().tls_certs_only([ca]).build().expect("an HTTPS client")
    }

    /// The API of a namespaced kind in this stack's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Resource versions of everything in the stack's namespace that the operator can write
    /// (MqttAssets, MqttTransfers, Secrets, Events): equal before and after means it wrote
    /// nothing to Kubernetes in between.
    pub async fn kubernetes_state(&self) -> std::collections::BTreeMap<String, String> {
        use k8s_openapi::api::core::v1::Secret;
        use k8s_openapi::api::events::v1::Event;
        fn versions<K: kube::Resource>(
            kind: &str,
            items: Vec<K>,
            into: &mut std::collections::BTreeMap<String, String>,
        ) {
            for item in items {
                let meta = item.meta();
                into.insert(
                    format!("{kind}/{}", meta.name.clone().unwrap_or_default()),
                    meta.resource_version.clone().unwrap_or_default(),
                );
            }
        }
        let mut state = std::collections::BTreeMap::new();
        let lp = ListParams::default();
        versions("MqttAsset", self.api::<MqttAsset>().list(&lp).await.expect("list").items, &mut state);
        versions("MqttTransfer", self.api::<MqttTransfer>().list(&lp).await.expect("list").items, &mut state);
        versions("Secret", self.api::<Secret>().list(&lp).await.expect("list").items, &mut state);
        versions("Event", self.api::<Event>().list(&lp).await.expect("list").items, &mut state);
        state
    }

    /// Leaves the cluster as the stack found it: deletes every MqttTransfer, then every MqttAsset,
    /// while the controllers still run (their finalizer removes what they made in the backends),
    /// then stops the controllers and removes the namespace. Panics when a resource or the
    /// namespace does not go within 60 s (after forcing them out, so the cluster is clean anyway).
    pub async fn teardown(mut self) {
        self.torn_down = true;
        if self.controllers.is_none() {
            self.start_controllers(self.settings.clone());
        }
        let mut stuck = Vec::new();
        stuck.extend(delete_all::<MqttTransfer>(&self.api(), Duration::from_secs(60)).await);
        stuck.extend(delete_all::<MqttAsset>(&self.api(), Duration::from_secs(60)).await);
        self.stop_controllers().await;
        if !stuck.is_empty() {
            strip_finalizers(&self.client, &self.namespace).await;
        }
        let removed = match &self.cluster {
            Cluster::Local(plane) => plane.delete_namespace(&self.namespace, Duration::from_secs(60)).await,
            Cluster::Kubeconfig => Api::<Namespace>::all(self.client.clone())
                .delete(&self.namespace, &DeleteParams::default())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        // The realm goes with the stack (realms cost the shared Keycloak memory); the shared EDC
        // keeps what the stack left there, under ids nobody else uses.
        // A shared system under a loaded machine may refuse one call: three tries, each refusal
        // printed, before the teardown fails.
        let mut realm = self.keycloak.delete_realm().await;
        for _ in 0..2 {
            let Err(e) = &realm else { break };
            eprintln!("teardown, retrying: {e}");
            tokio::time::sleep(Duration::from_secs(1)).await;
            realm = self.keycloak.delete_realm().await;
        }
        // So does the KV v2 mount.
        let mut mount = self.vault.delete_mount().await;
        for _ in 0..2 {
            let Err(e) = &mount else { break };
            eprintln!("teardown, retrying: {e}");
            tokio::time::sleep(Duration::from_secs(1)).await;
            mount = self.vault.delete_mount().await;
        }
        assert!(stuck.is_empty(), "still there 60 s after deletion with the operator running: {stuck:?}");
        if let Err(e) = realm {
            panic!("teardown: {e}");
        }
        if let Err(e) = removed {
            panic!("teardown: {e}");
        }
        if let Err(e) = mount {
            panic!("teardown: {e}");
        }
    }
}

/// Deletes every object of a kind in the namespace of `api` and waits until they are gone; names
/// what is still there after `timeout`.
async fn delete_all<K>(api: &Api<K>, timeout: Duration) -> Vec<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let _ = api.delete_collection(&DeleteParams::default(), &ListParams::default()).await;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left: Vec<String> = match api.list(&ListParams::default()).await {
            Ok(list) => list.items.iter().map(|o| o.meta().name.clone().unwrap_or_default()).collect(),
            Err(e) => vec![format!("(list failed: {e})")],
        };
        if left.is_empty() || tokio::time::Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes the operator's finalizer from whatever is left in `namespace` (a stack dropped without
/// teardown, or one whose operator could not clean up), so the namespace can go.
async fn strip_finalizers(client: &kube::Client, namespace: &str) {
    let patch = Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}}));
    let assets: Api<MqttAsset> = Api::namespaced(client.clone(), namespace);
    let transfers: Api<MqttTransfer> = Api::namespaced(client.clone(), namespace);
    for t in transfers.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default() {
        let _ = transfers.patch(&t.metadata.name.unwrap_or_default(), &PatchParams::default(), &patch).await;
    }
    for a in assets.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default() {
        let _ = assets.patch(&a.metadata.name.unwrap_or_default(), &PatchParams::default(), &patch).await;
    }
}

impl Drop for DevStack {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        self.refresh_stop.send_replace(true);
        if let Some(task) = self.controllers.take() {
            task.abort();
        }
        if self.torn_down {
            return;
        }
        // Dropped without teardown (a failed test, most likely): force the namespace out so the
        // cluster stays clean for the binary's other tests. The backends may keep what the
        // operator made; a passing test calls teardown instead.
        if !std::thread::panicking() {
            eprintln!("dev stack {}: dropped without teardown(); forcing the namespace out", self.namespace);
        }
        let Cluster::Local(plane) = &self.cluster else { return };
        let kubeconfig = plane.admin_kubeconfig.clone();
        let namespace = self.namespace.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(async move {
                let Ok(client) = kubernetes::client_from_file(&kubeconfig).await else { return };
                strip_finalizers(&client, &namespace).await;
                let _ = Api::<Namespace>::all(client).delete(&namespace, &DeleteParams::default()).await;
            });
        })
        .join();
    }
}

/// Where one connector profile points.
#[derive(Clone, Debug)]
pub struct ConnectorTarget {
    /// The Management API base (without `/v3`).
    pub management_url: String,
    /// Its `X-Api-Key`.
    pub api_key: String,
}

/// Where the identity provider profile points.
#[derive(Clone, Debug)]
pub struct IdentityTarget {
    /// Keycloak's base URL (the operator's `adminUrl`).
    pub admin_url: String,
    /// The realm.
    pub realm: String,
    /// The operator's own client there.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
}

/// Where the secret store profile points: a Vault KV v2 API, a token and the KV v2 mount (the
/// real OpenBao behind the stack's proxy, or the Vault double).
#[derive(Clone, Debug)]
pub struct SecretStoreTarget {
    /// The Vault API's base URL.
    pub url: String,
    /// Its token.
    pub token: String,
    /// The KV v2 mount (the profile's `kvMount`).
    pub kv_mount: String,
}

/// Everything an operator configuration of the dev stack points at.
pub struct ConfigTargets<'a> {
    /// Profile `default`: stock EDC (ADR spelling, Vault folder `edc`).
    pub connector: ConnectorTarget,
    /// Profiles `factoryx` and `factoryx-misconfigured`: the reference connector.
    pub connector_factoryx: ConnectorTarget,
    /// Profile `default`.
    pub identity: IdentityTarget,
    /// Profile `default`.
    pub secret_store: SecretStoreTarget,
    /// Broker profile `default`.
    pub mosquitto: &'a Mosquitto,
    /// Broker profile `rabbitmq`, when given.
    pub rabbitmq: Option<&'a RabbitMq>,
    /// `allowed` blocks by profile (see [`StackOptions::allowed`]); empty: permissive everywhere.
    pub allowed: BTreeMap<String, String>,
}

fn config_targets<'a>(
    edc: &StackEdc,
    edc_fx: &EdcDouble,
    keycloak: &StackKeycloak,
    vault: &StackVault,
    mosquitto: &'a Mosquitto,
    rabbitmq: Option<&'a RabbitMq>,
) -> ConfigTargets<'a> {
    ConfigTargets {
        connector: ConnectorTarget { management_url: edc.management_url.clone(), api_key: edc.api_key.clone() },
        connector_factoryx: ConnectorTarget {
            management_url: edc_fx.management_url.clone(),
            api_key: edc_double::API_KEY.to_owned(),
        },
        identity: IdentityTarget {
            admin_url: keycloak.server.base_url.clone(),
            realm: keycloak.realm.name.clone(),
            client_id: KEYCLOAK_OPERATOR_CLIENT.to_owned(),
            client_secret: KEYCLOAK_OPERATOR_SECRET.to_owned(),
        },
        secret_store: SecretStoreTarget {
            url: vault.url().to_string(),
            token: vault.token().to_owned(),
            kv_mount: vault.mount.clone(),
        },
        mosquitto,
        rabbitmq,
        allowed: BTreeMap::new(),
    }
}

impl DevStack {
    /// The operator configuration of this stack (what its controllers run with), with its
    /// credentials and the CA bundle written as files into `dir`: for a separate operator process.
    pub fn operator_config_yaml(&self, dir: &std::path::Path) -> String {
        let mut targets = config_targets(
            &self.edc,
            &self.edc_fx,
            &self.keycloak,
            &self.vault,
            &self.mosquitto,
            self.rabbitmq.as_ref(),
        );
        targets.allowed = self.allowed.clone();
        operator_config_yaml_for(dir, &self.ca, &targets)
    }
}

/// The operator configuration for the doubles and brokers (profiles `default`, `factoryx`,
/// `factoryx-misconfigured`, and `rabbitmq` when given), with every credential and the CA bundle
/// written as files into `dir` (which must outlive the configuration's use): an all-doubles stack
/// such as the benchmark's, which hands it to a separate operator process.
#[allow(clippy::too_many_arguments)]
pub fn operator_config_yaml(
    dir: &std::path::Path,
    ca: &TestCa,
    edc: &EdcDouble,
    edc_fx: &EdcDouble,
    keycloak: &KeycloakDouble,
    vault: &VaultDouble,
    mosquitto: &Mosquitto,
    rabbitmq: Option<&RabbitMq>,
) -> String {
    let connector = |edc: &EdcDouble| ConnectorTarget {
        management_url: edc.management_url.clone(),
        api_key: edc.config.api_key.clone(),
    };
    let targets = ConfigTargets {
        connector: connector(edc),
        connector_factoryx: connector(edc_fx),
        identity: IdentityTarget {
            admin_url: keycloak.server.base_url.clone(),
            realm: keycloak.realm(),
            client_id: KEYCLOAK_OPERATOR_CLIENT.to_owned(),
            client_secret: KEYCLOAK_OPERATOR_SECRET.to_owned(),
        },
        secret_store: SecretStoreTarget {
            url: vault.url().to_string(),
            token: VAULT_TOKEN.to_owned(),
            kv_mount: vault.mount.clone(),
        },
        mosquitto,
        rabbitmq,
        allowed: BTreeMap::new(),
    };
    operator_config_yaml_for(dir, ca, &targets)
}

/// The operator configuration for `targets` (profiles `default`, `factoryx`,
/// `factoryx-misconfigured`, and `rabbitmq` when given), with every credential and the CA bundle
/// written as files into `dir` (which must outlive the configuration's use). Every profile gets
/// its `allowed` block from `targets.allowed`, else a permissive one (every namespace, every
/// topic, raw ODRL, open offers): what the suites were written against.
pub fn operator_config_yaml_for(dir: &std::path::Path, ca: &TestCa, targets: &ConfigTargets<'_>) -> String {
    let allowed = |profile: &str, permissive: &str| {
        targets.allowed.get(profile).cloned().unwrap_or_else(|| permissive.to_owned())
    };
    const CONNECTOR: &str = r#"{namespaces: ["*"], rawOdrl: true, openOffers: true}"#;
    const NAMESPACES: &str = r#"{namespaces: ["*"]}"#;
    const BROKER: &str = r##"{namespaces: ["*"], topicPrefixes: ["#"]}"##;
    let file = |name: &str, content: &str| {
        let path = dir.join(name);
        std::fs::write(&path, content).expect("write");
        path.display().to_string()
    };
    let ca_file = file("ca.pem", &ca.cert_pem());
    let mosquitto = targets.mosquitto;
    let mut yaml = format!(
        r#"
connectors:
  default:
    managementUrl: {edc_url}
    apiKey: {{file: {edc_key}}}
    vaultFolder: {VAULT_FOLDER}
    caBundle: {{file: {ca_file}}}
    allowed: {allowed_edc}
  factoryx:
    managementUrl: {edc_fx_url}
    apiKey: {{file: {edc_fx_key}}}
    endpointTypeSpelling: factoryx
    caBundle: {{file: {ca_file}}}
    allowed: {allowed_fx}
  factoryx-misconfigured:
    managementUrl: {edc_fx_url}
    apiKey: {{file: {edc_fx_key}}}
    endpointTypeSpelling: adr
    caBundle: {{file: {ca_file}}}
    allowed: {allowed_fx_mis}
identityProviders:
  default:
    type: keycloak
    adminUrl: {kc_url}
    realm: {kc_realm}
    clientId: {kc_client}
    clientSecret: {{file: {kc_secret}}}
    caBundle: {{file: {ca_file}}}
    allowed: {allowed_kc}
secretStores:
  default:
    type: vault
    url: {vault_url}
    kvMount: {vault_mount}
    auth: {{token: {{file: {vault_token}}}}}
    caBundle: {{file: {ca_file}}}
    allowed: {allowed_vault}
brokers:
  default:
    type: mosquitto
    adminUrl: {mosquitto_url}
    adminUsername: admin
    adminPassword: {{file: {mosquitto_password}}}
    publicUrls: {{mqtt-tls: "{mosquitto_url}", mqtt-wss: "{mosquitto_wss}"}}
    caBundle: {{file: {ca_file}}}
    allowed: {allowed_mosquitto}
"#,
        edc_url = targets.connector.management_url,
        edc_key = file("edc-key", &targets.connector.api_key),
        edc_fx_url = targets.connector_factoryx.management_url,
        edc_fx_key = file("edc-factoryx-key", &targets.connector_factoryx.api_key),
        kc_url = targets.identity.admin_url,
        kc_realm = targets.identity.realm,
        kc_client = targets.identity.client_id,
        kc_secret = file("kc-secret", &targets.identity.client_secret),
        vault_url = targets.secret_store.url,
        vault_token = file("vault-token", &targets.secret_store.token),
        vault_mount = targets.secret_store.kv_mount,
        mosquitto_url = mosquitto.mqtts_url(),
        mosquitto_wss = mosquitto.wss_url(),
        mosquitto_password = file("mosquitto-password", mosquitto::ADMIN_PASSWORD),
        allowed_edc = allowed("connectors.default", CONNECTOR),
        allowed_fx = allowed("connectors.factoryx", CONNECTOR),
        allowed_fx_mis = allowed("connectors.factoryx-misconfigured", CONNECTOR),
        allowed_kc = allowed("identityProviders.default", NAMESPACES),
        allowed_vault = allowed("secretStores.default", NAMESPACES),
        allowed_mosquitto = allowed("brokers.default", BROKER),
    );
    if let Some(rabbit) = targets.rabbitmq {
        yaml.push_str(&format!(
            r#"  rabbitmq:
    type: rabbitmq
    adminUrl: {admin}
    adminUsername: {user}
    adminPassword: {{file: {password}}}
    publicUrls: {{mqtt-tls: "{mqtts}", mqtt-wss: "{wss}"}}
    rabbitmq: {{resourceServerId: rabbitmq, additionalScopesKey: {SCOPES_KEY}}}
    caBundle: {{file: {ca_file}}}
    allowed: {allowed_rabbit}
"#,
            admin = rabbit.management_url(),
            user = rabbitmq::ADMIN_USER,
            password = file("rabbitmq-password", rabbitmq::ADMIN_PASSWORD),
            mqtts = rabbit.mqtts_url(),
            wss = rabbit.wss_url(),
            allowed_rabbit = allowed("brokers.rabbitmq", BROKER),
        ));
    }
    yaml
}

/// The `refresh` section: `public_url` served on `listen` with a certificate of `ca` (written
/// into `dir`), plus `extra` lines.
pub fn refresh_section(dir: &std::path::Path, ca: &TestCa, public_url: &str, listen: &str, extra: &str) -> String {
    let (cert_file, key_file) = crate::fixtures::refresh_tls_files(dir, ca);
    format!(
        "refresh:\n  publicUrl: {public_url}\n  listen: \"{listen}\"\n  tls: {{certFile: {}, keyFile: {}}}\n{extra}",
        cert_file.display(),
        key_file.display()
    )
}

/// Waits until `name` satisfies `pred` (polling every 100 ms); panics with the last state after
/// `timeout`.
pub async fn wait_for<K>(api: &Api<K>, name: &str, timeout: Duration, what: &str, pred: impl Fn(&K) -> bool) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        match api.get_opt(name).await {
            Ok(Some(object)) if pred(&object) => return object,
            Ok(found) => last = found,
            Err(e) => eprintln!("wait_for {name}: {e}"),
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{name}: not {what} within {timeout:?}; last seen: {}", shown(last.as_ref()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An object as a failing wait shows it: JSON without `metadata.managedFields` (which buries the
/// status in CI's truncated output), status first.
fn shown<K: serde::Serialize>(object: Option<&K>) -> String {
    let Some(mut value) = object.and_then(|o| serde_json::to_value(o).ok()) else {
        return "nothing".into();
    };
    if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.remove("managedFields");
    }
    let part = |key: &str| value.get(key).map_or_else(|| "-".into(), |v| v.to_string());
    format!("status: {}\nspec: {}\nmetadata: {}", part("status"), part("spec"), part("metadata"))
}

/// Waits until `name` is gone.
pub async fn wait_gone<K>(api: &Api<K>, name: &str, timeout: Duration)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match api.get_opt(name).await {
            Ok(None) => return,
            Ok(Some(o)) if tokio::time::Instant::now() >= deadline => {
                panic!("{name} still there after {timeout:?}: {}", shown(Some(&o)))
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The Events about `name` once `until` holds for them (an Event follows the status write it
/// reports, so it can land after the status a test waited for); the last ones seen after 5 s.
pub async fn events_about_once(
    stack: &DevStack,
    name: &str,
    until: impl Fn(&[(String, String, String)]) -> bool,
) -> Vec<(String, String, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let events = events_about(stack, name).await;
        if until(&events) || tokio::time::Instant::now() >= deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(type, reason, note)` of the Events about `name` in the stack's namespace, oldest first.
pub async fn events_about(stack: &DevStack, name: &str) -> Vec<(String, String, String)> {
    use k8s_openapi::api::events::v1::Event;
    let api: Api<Event> = stack.api();
    let mut events: Vec<Event> = api
        .list(&Default::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect();
    events.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
    events
        .into_iter()
        .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// The status condition `type_` of an object with conditions, as `(status, reason, message)`.
pub fn condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<(String, String, String)> {
    conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}
