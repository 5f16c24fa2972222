//! A real Kubernetes control plane for the tests, as envtest starts one: etcd (Debian's
//! `etcd-server`, data on tmpfs), `kube-apiserver` and `kube-controller-manager` (built from the Go
//! module proxy by `e2e/systems/kubernetes/install.sh`) as plain processes on free loopback ports.
//!
//! - The API server serves TLS from [`TestCa::shared`], authenticates client certificates of that
//!   CA and ServiceAccount tokens (its own signing key), and authorizes with **RBAC**.
//! - The controller manager runs the garbage collector and the namespace controller (owned
//!   Secrets are collected, deleted namespaces are emptied); no kubelet or scheduler runs, so
//!   Pods stay Pending.
//! - At start the CRDs of `crds/` and the RBAC of `deploy/rbac.yaml` (ServiceAccount
//!   `mqtt-dsp-operator` in namespace [`OPERATOR_NAMESPACE`]) are applied, so that
//!   [`ControlPlane::operator_client`] is the operator under exactly the rules we ship. Those
//!   grant the MqttTransfers' Secrets in no namespace: [`ControlPlane::serve_namespace`] adds the
//!   RoleBinding an administrator adds per namespace the configuration serves, and
//!   [`ControlPlane::test_namespace`] does so for every namespace it makes
//!   ([`ControlPlane::unserved_namespace`] makes one without it).
//!
//! One control plane runs per test binary ([`shared`]); tests isolate themselves by namespace.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::{SystemError, log_tail, systems_dir};
use crate::brokers::{free_ports, spawn_watched, stop_watched, wait_for_port};
use crate::tls::TestCa;

/// The namespace the operator's ServiceAccount and namespaced RBAC live in (as in
/// `deploy/rbac.yaml`).
pub const OPERATOR_NAMESPACE: &str = "mqtt-dsp-operator";
/// The operator's ServiceAccount.
pub const OPERATOR_SERVICE_ACCOUNT: &str = "mqtt-dsp-operator";
/// The user name the API server sees for the operator's ServiceAccount (audit log, RBAC).
pub const OPERATOR_USER: &str = "system:serviceaccount:mqtt-dsp-operator:mqtt-dsp-operator";
/// Label on every namespace a test makes, so the suite can check none is left behind.
pub const TEST_NAMESPACE_LABEL: &str = "e2e.dsp-mqtt.io/test-namespace";
/// deploy/rbac.yaml's ClusterRole for the MqttTransfers' DataAddress Secrets, which it binds
/// nowhere: a RoleBinding of this name to it in each namespace the operator serves.
pub const TRANSFER_SECRETS_ROLE: &str = "mqtt-dsp-operator-transfer-secrets";

/// The Kubernetes version built by `e2e/systems/kubernetes/install.sh` (from its go.mod).
pub fn version() -> String {
    let go_mod = include_str!("../../systems/kubernetes/go.mod");
    go_mod
        .lines()
        .find_map(|l| l.trim().strip_prefix("k8s.io/kubernetes v"))
        .and_then(|v| v.split_whitespace().next())
        .map(|v| format!("v{v}"))
        .unwrap_or_else(|| "unknown".into())
}

/// The folder with `kube-apiserver` and `kube-controller-manager`.
pub fn binaries_dir() -> PathBuf {
    systems_dir().join(format!("kubernetes-{}", version()))
}

/// A running control plane.
pub struct ControlPlane {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// A kubeconfig of the cluster administrator (group `system:masters`).
    pub admin_kubeconfig: PathBuf,
    /// The API server's audit log (JSON lines, one per completed request).
    pub audit_log: PathBuf,
    ca: TestCa,
    dir: PathBuf,
    children: std::sync::Mutex<Vec<Child>>,
}

static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

/// The control plane of this test binary, started on first use (about 5–10 s).
pub fn shared() -> Result<&'static ControlPlane, SystemError> {
    SHARED
        .get_or_init(|| ControlPlane::start(&TestCa::shared()).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| SystemError::Start { what: "Kubernetes control plane", detail: e.clone(), log: String::new() })
}

/// Whether the binaries are installed (tests that cannot run without them say so).
pub fn installed() -> Result<(), SystemError> {
    for bin in ["kube-apiserver", "kube-controller-manager"] {
        if !binaries_dir().join(bin).is_file() {
            return Err(SystemError::NotInstalled {
                what: "kube-apiserver",
                path: binaries_dir().display().to_string(),
            });
        }
    }
    if which("etcd").is_none() {
        return Err(SystemError::NotInstalled { what: "etcd (Debian's etcd-server)", path: "PATH".into() });
    }
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> SystemError {
    move |source| SystemError::Io { what, source }
}

impl ControlPlane {
    /// Starts etcd, the API server and the controller manager; applies the CRDs and our RBAC.
    pub fn start(ca: &TestCa) -> Result<ControlPlane, SystemError> {
        Self::start_with(ca, true)
    }

    /// As [`ControlPlane::start`], without our CRDs (to show what the operator does then).
    pub fn start_without_crds(ca: &TestCa) -> Result<ControlPlane, SystemError> {
        Self::start_with(ca, false)
    }

    fn start_with(ca: &TestCa, crds: bool) -> Result<ControlPlane, SystemError> {
        installed()?;
        let started = Instant::now();
        // etcd's data on tmpfs: fsync-heavy writes are what make a real API server slow on disk.
        let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir =
            tempfile::Builder::new().prefix("dev-stack-kubernetes-").tempdir_in(base).map_err(io("temp dir"))?.keep();
        let mut plane = ControlPlane {
            url: String::new(),
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            audit_log: dir.join("audit.log"),
            ca: ca.clone(),
            dir: dir.clone(),
            children: std::sync::Mutex::new(Vec::new()),
        };
        // A port chosen free can be taken by a parallel test before the server binds it: retry.
        let mut last = None;
        for _ in 0..3 {
            match plane.start_processes() {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    plane.stop();
                    last = Some(e);
                }
            }
        }
        if let Some(e) = last {
            return Err(e);
        }
        plane.bootstrap(crds)?;
        eprintln!(
            "kubernetes {} control plane at {} ready in {:.1} s (etcd, kube-apiserver, kube-controller-manager{})",
            version(),
            plane.url,
            started.elapsed().as_secs_f64(),
            if crds { ", CRDs and RBAC applied" } else { ", RBAC applied" }
        );
        Ok(plane)
    }

    fn start_processes(&mut self) -> Result<(), SystemError> {
        let dir = self.dir.clone();
        let d = |name: &str| dir.join(name).display().to_string();
        let [etcd_client, etcd_peer, api_port] = free_ports();
        // A failed attempt's watchdog removed the folder: make it again.
        std::fs::create_dir_all(&dir).map_err(io("create the control plane's folder"))?;

        // etcd
        let etcd_data = dir.join(format!("etcd-{etcd_client}"));
        let etcd = spawn_watched(
            "etcd",
            &[
                "--name",
                "e2e",
                "--data-dir",
                &etcd_data.display().to_string(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{etcd_client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{etcd_client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{etcd_peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{etcd_peer}"),
                "--initial-cluster",
                &format!("e2e=http://127.0.0.1:{etcd_peer}"),
                "--unsafe-no-fsync",
                "--quota-backend-bytes",
                "2147483648",
                "--log-level",
                "warn",
            ],
            &[],
            &dir.join("etcd.log"),
            // The whole folder (certificates, keys, logs, etcd's data on tmpfs) goes with etcd:
            // a control plane in a static is never dropped, and the watchdogs outlive the test.
            &format!("rm -rf '{}'", dir.display()),
        )
        .map_err(io("spawn etcd"))?;
        self.children.lock().expect("children").push(etcd);
        if !wait_for_port(etcd_client, Duration::from_secs(20)) {
            return Err(SystemError::Start {
                what: "etcd",
                detail: "no client port within 20 s".into(),
                log: log_tail(&dir.join("etcd.log"), 30),
            });
        }

        // Certificates: the server's, the administrator's (system:masters), the ServiceAccount
        // signing key (ECDSA P-256; the public half in a file of its own, since kube-apiserver
        // does not read a public key out of a PKCS#8 private key).
        let server = self.ca.server_cert(&["kubernetes", "kubernetes.default", "kubernetes.default.svc", "10.0.0.1"]);
        std::fs::write(d("ca.crt"), self.ca.cert_pem()).map_err(io("write ca"))?;
        std::fs::write(d("apiserver.crt"), &server.cert_pem).map_err(io("write cert"))?;
        std::fs::write(d("apiserver.key"), &server.key_pem).map_err(io("write key"))?;
        let sa_key = rcgen::KeyPair::generate().map_err(|e| SystemError::Start {
            what: "ServiceAccount key",
            detail: e.to_string(),
            log: String::new(),
        })?;
        std::fs::write(d("sa.key"), sa_key.serialize_pem()).map_err(io("write sa key"))?;
        std::fs::write(d("sa.pub"), sa_key.public_key_pem()).map_err(io("write sa public key"))?;
        let admin = self.ca.client_cert("e2e-admin", &["system:masters"]);
        self.url = format!("https://127.0.0.1:{api_port}");
        std::fs::write(
            &self.admin_kubeconfig,
            self.kubeconfig_with(
                &format!(
                    "client-certificate-data: {}\n    client-key-data: {}",
                    b64(&admin.cert_pem),
                    b64(&admin.key_pem)
                ),
                "default",
            ),
        )
        .map_err(io("write kubeconfig"))?;

        std::fs::write(
            d("audit-policy.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived, ResponseStarted]\nrules:\n- level: Metadata\n",
        )
        .map_err(io("write audit policy"))?;
        let bin = binaries_dir();
        let apiserver = spawn_watched(
            &bin.join("kube-apiserver").display().to_string(),
            &[
                &format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                &format!("--secure-port={api_port}"),
                &format!("--cert-dir={}", d("certs")),
                &format!("--tls-cert-file={}", d("apiserver.crt")),
                &format!("--tls-private-key-file={}", d("apiserver.key")),
                &format!("--client-ca-file={}", d("ca.crt")),
                "--authorization-mode=RBAC",
                &format!("--service-account-key-file={}", d("sa.pub")),
                &format!("--service-account-signing-key-file={}", d("sa.key")),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--api-audiences=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.0.0.0/24",
                // It refuses to store a loopback address as the `kubernetes` Service's endpoint.
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--profiling=false",
                "--enable-priority-and-fairness=false",
                // Every request's metadata in a JSON log: the real server's own record of who
                // called what (what the benchmark counts per transfer).
                &format!("--audit-policy-file={}", d("audit-policy.yaml")),
                &format!("--audit-log-path={}", self.audit_log.display()),
                "--audit-log-maxbackup=0",
                // Never rotated (the default rotates at 100 MB, which a 10,000-transfer benchmark
                // passes): the counts read the log by line from the start.
                "--audit-log-maxsize=100000",
                "--v=1",
            ],
            &[],
            &dir.join("kube-apiserver.log"),
            "",
        )
        .map_err(io("spawn kube-apiserver"))?;
        self.children.lock().expect("children").push(apiserver);
        self.wait_ready(Duration::from_secs(60))?;

        let controller_manager = spawn_watched(
            &bin.join("kube-controller-manager").display().to_string(),
            &[
                &format!("--kubeconfig={}", self.admin_kubeconfig.display()),
                "--controllers=garbagecollector,namespace",
                "--leader-elect=false",
                "--secure-port=0",
                "--use-service-account-credentials=false",
                "--concurrent-gc-syncs=10",
                "--concurrent-namespace-syncs=5",
                "--v=1",
            ],
            &[],
            &dir.join("kube-controller-manager.log"),
            "",
        )
        .map_err(io("spawn kube-controller-manager"))?;
        self.children.lock().expect("children").push(controller_manager);
        Ok(())
    }

    fn kubeconfig_with(&self, user: &str, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {url}\n    \
             certificate-authority-data: {ca}\nusers:\n- name: user\n  user:\n    {user}\ncontexts:\n\
             - name: e2e\n  context:\n    cluster: e2e\n    user: user\n    namespace: {namespace}\n\
             current-context: e2e\n",
            url = self.url,
            ca = b64(&self.ca.cert_pem()),
        )
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), SystemError> {
        let deadline = Instant::now() + timeout;
        let port: u16 = self.url.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let log = || log_tail(&self.dir.join("kube-apiserver.log"), 40);
        if !wait_for_port(port, timeout) {
            return Err(SystemError::Start { what: "kube-apiserver", detail: "no port".into(), log: log() });
        }
        let path = self.admin_kubeconfig.clone();
        let ready = run_async(move || async move {
            let client = client_from_file(&path).await.map_err(|e| e.to_string())?;
            loop {
                let request = http::Request::get("/readyz").body(Vec::new()).map_err(|e| e.to_string())?;
                match client.request_text(request).await {
                    Ok(text) if text.trim() == "ok" => return Ok(()),
                    Ok(_) | Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                    Ok(text) => return Err(format!("not ready: {text}")),
                    Err(e) => return Err(e.to_string()),
                }
            }
        });
        ready.map_err(|detail| SystemError::Start { what: "kube-apiserver", detail, log: log() })
    }

    /// Applies the CRDs and the operator's RBAC (deploy/rbac.yaml) with the administrator's
    /// client, and waits for the CRDs to be established.
    fn bootstrap(&self, crds: bool) -> Result<(), SystemError> {
        let path = self.admin_kubeconfig.clone();
        run_async(move || async move {
            let client = client_from_file(&path).await.map_err(|e| e.to_string())?;
            let rbac =
                std::fs::read_to_string(crate::repo_dir().join("deploy/rbac.yaml")).map_err(|e| e.to_string())?;
            // A ready API server may still answer 404 for a group it is about to serve (seen
            // about once in fifty starts on 2 busy cores): the applies are idempotent, so retry.
            let deadline = Instant::now() + Duration::from_secs(30);
            let apply = || async {
                apply_namespace(&client, OPERATOR_NAMESPACE, false).await?;
                apply_manifests(&client, &rbac).await?;
                if crds {
                    for entry in std::fs::read_dir(crate::crds_dir()).map_err(|e| e.to_string())? {
                        let path = entry.map_err(|e| e.to_string())?.path();
                        if path.extension().is_some_and(|e| e == "yaml") {
                            let yaml = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
                            apply_manifests(&client, &yaml).await?;
                        }
                    }
                }
                Ok::<(), String>(())
            };
            loop {
                match apply().await {
                    Ok(()) => break,
                    Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                    Err(e) => return Err(e),
                }
            }
            if !crds {
                return Ok(());
            }
            // Applied CRDs take a moment to be established and served by discovery.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let api: Api<mqtt_dsp_operator::api::MqttAsset> = Api::all(client.clone());
                let served = mqtt_dsp_operator::run::check_crds(&client).await.map_err(|e| e.to_string());
                let listed = api.list(&ListParams::default().limit(1)).await.map_err(|e| e.to_string());
                match served.and(listed) {
                    Ok(_) => return Ok(()),
                    Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                    Err(e) => return Err(format!("CRDs not served: {e}")),
                }
            }
        })
        .map_err(|detail| SystemError::Start {
            what: "Kubernetes bootstrap (CRDs, RBAC)",
            detail,
            log: log_tail(&self.dir.join("kube-apiserver.log"), 20),
        })
    }

    /// A client of the cluster administrator (for tests: set-up, inspection, tampering).
    pub async fn admin_client(&self) -> kube::Client {
        client_from_file(&self.admin_kubeconfig).await.expect("the administrator's kubeconfig")
    }

    /// A kubeconfig for the operator's ServiceAccount: a token from the TokenRequest API, valid
    /// for an hour, and its namespace [`OPERATOR_NAMESPACE`] as the context's (as in a Pod); the
    /// operator then has exactly the rights of deploy/rbac.yaml.
    pub async fn operator_kubeconfig(&self) -> String {
        self.service_account_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT).await
    }

    /// A kubeconfig for any ServiceAccount (e.g. the one a Helm release made), its namespace as
    /// the context's; the token is registered as a secret for the log check.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> String {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.admin_client().await, namespace);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() }),
            ..Default::default()
        };
        let token = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("a token for ServiceAccount {namespace}/{name}: {e}"))
            .status
            .and_then(|s| s.token)
            .expect("a token in the TokenRequest's status");
        crate::logs::register_secret(&token);
        self.kubeconfig_with(&format!("token: {token}"), namespace)
    }

    /// Writes [`ControlPlane::operator_kubeconfig`] to `path` (for an operator process).
    pub async fn write_operator_kubeconfig(&self, path: &Path) {
        std::fs::write(path, self.operator_kubeconfig().await).expect("write the operator's kubeconfig");
    }

    /// A client as the operator's ServiceAccount.
    pub async fn operator_client(&self) -> kube::Client {
        let yaml = self.operator_kubeconfig().await;
        client_from_yaml(&yaml).await.expect("the operator's kubeconfig")
    }

    /// Creates a fresh namespace for one test, labelled [`TEST_NAMESPACE_LABEL`], that the
    /// operator serves: it may write MqttTransfer Secrets there ([`ControlPlane::serve_namespace`]).
    pub async fn test_namespace(&self, prefix: &str) -> String {
        let name = self.unserved_namespace(prefix).await;
        self.serve_namespace(&name).await;
        name
    }

    /// Creates a fresh namespace for one test, labelled [`TEST_NAMESPACE_LABEL`], in which the
    /// operator may write no Secret (as deploy/rbac.yaml alone leaves every namespace).
    pub async fn unserved_namespace(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        apply_namespace(&self.admin_client().await, &name, true).await.expect("test namespace");
        name
    }

    /// What an administrator following deploy/rbac.yaml does for each namespace the operator's
    /// configuration serves: a RoleBinding there to the ClusterRole [`TRANSFER_SECRETS_ROLE`]
    /// for the operator's ServiceAccount, so it may get, create, update and delete the
    /// MqttTransfers' Secrets in that namespace (and in no other).
    pub async fn serve_namespace(&self, namespace: &str) {
        let binding = RoleBinding {
            metadata: kube::api::ObjectMeta {
                name: Some(TRANSFER_SECRETS_ROLE.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: TRANSFER_SECRETS_ROLE.into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: OPERATOR_SERVICE_ACCOUNT.into(),
                namespace: Some(OPERATOR_NAMESPACE.into()),
                ..Default::default()
            }]),
        };
        let admin = self.admin_client().await;
        Api::<RoleBinding>::namespaced(admin.clone(), namespace)
            .patch(TRANSFER_SECRETS_ROLE, &PatchParams::apply("e2e").force(), &Patch::Apply(&binding))
            .await
            .unwrap_or_else(|e| panic!("RoleBinding {TRANSFER_SECRETS_ROLE} in namespace {namespace}: {e}"));
        // The authorizer sees a new binding through its informer, a moment later: wait for it
        // (the API server's own answer, a SubjectAccessReview), so the next write is not refused.
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(OPERATOR_USER.into()),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.into()),
                    verb: Some("create".into()),
                    resource: Some("secrets".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = Api::<SubjectAccessReview>::all(admin.clone())
                .create(&PostParams::default(), &review)
                .await
                .unwrap_or_else(|e| panic!("SubjectAccessReview: {e}"));
            if answer.status.is_some_and(|s| s.allowed) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "RoleBinding {TRANSFER_SECRETS_ROLE} in {namespace} not effective in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The test namespaces that still exist (terminating ones included).
    pub async fn test_namespaces(&self) -> Vec<(String, String)> {
        let api: Api<Namespace> = Api::all(self.admin_client().await);
        let list = api.list(&ListParams::default().labels(TEST_NAMESPACE_LABEL)).await.expect("list namespaces");
        list.items
            .into_iter()
            .map(|n| {
                let phase = n.status.and_then(|s| s.phase).unwrap_or_default();
                (n.metadata.name.unwrap_or_default(), phase)
            })
            .collect()
    }

    /// Deletes a namespace and waits until the namespace controller has removed it and its
    /// contents (a finalizer left on a resource keeps it `Terminating`: that fails here).
    pub async fn delete_namespace(&self, name: &str, timeout: Duration) -> Result<(), String> {
        let api: Api<Namespace> = Api::all(self.admin_client().await);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match api.get_opt(name).await {
                Ok(None) => return Ok(()),
                Ok(Some(ns)) if tokio::time::Instant::now() >= deadline => {
                    let conditions = ns.status.and_then(|s| s.conditions).unwrap_or_default();
                    let why: Vec<String> = conditions.iter().filter_map(|c| c.message.clone()).collect();
                    return Err(format!("namespace {name} still there after {timeout:?}: {}", why.join("; ")));
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// The requests the API server completed so far, from its audit log, as a double's request
    /// log shows them (method, path, query, status); only those of `user` when given (e.g.
    /// [`OPERATOR_USER`]).
    pub fn requests(&self, user: Option<&str>) -> Vec<crate::doubles::LoggedRequest> {
        let text = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| user.is_none_or(|u| event["user"]["username"] == u))
            .map(|event| {
                let uri = event["requestURI"].as_str().unwrap_or_default();
                let (path, query) = match uri.split_once('?') {
                    Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
                    None => (uri.to_owned(), None),
                };
                let method = match event["verb"].as_str().unwrap_or_default() {
                    "create" => "POST",
                    "update" => "PUT",
                    "patch" => "PATCH",
                    "delete" | "deletecollection" => "DELETE",
                    _ => "GET",
                };
                let status = event["responseStatus"]["code"].as_u64().unwrap_or(0) as u16;
                crate::doubles::LoggedRequest { method: method.into(), path, query, status }
            })
            .collect()
    }

    /// The API server's log (for failures).
    pub fn log(&self) -> String {
        log_tail(&self.dir.join("kube-apiserver.log"), 200)
    }

    fn stop(&self) {
        let mut children = self.children.lock().expect("children");
        for child in children.iter_mut().rev() {
            stop_watched(child);
        }
        children.clear();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn b64(pem: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(pem.as_bytes())
}

/// A client from a kubeconfig file.
pub async fn client_from_file(path: &Path) -> Result<kube::Client, kube::Error> {
    let yaml = std::fs::read_to_string(path).map_err(|e| kube::Error::Service(Box::new(e)))?;
    client_from_yaml(&yaml).await
}

/// A client from a kubeconfig's text.
pub async fn client_from_yaml(yaml: &str) -> Result<kube::Client, kube::Error> {
    let kubeconfig = Kubeconfig::from_yaml(yaml).map_err(kube::Error::InferKubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(kube::Error::InferKubeconfig)?;
    kube::Client::try_from(config)
}

async fn apply_namespace(client: &kube::Client, name: &str, test: bool) -> Result<(), String> {
    let mut labels = std::collections::BTreeMap::new();
    if test {
        labels.insert(TEST_NAMESPACE_LABEL.to_owned(), "true".to_owned());
    }
    let ns = Namespace {
        metadata: kube::api::ObjectMeta { name: Some(name.into()), labels: Some(labels), ..Default::default() },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&ns))
        .await
        .map(|_| ())
        .map_err(|e| format!("namespace {name}: {e}"))
}

/// Server-side applies every document of a multi-document YAML (any kind the server knows).
pub async fn apply_manifests(client: &kube::Client, yaml: &str) -> Result<(), String> {
    use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
    use serde::Deserialize;
    let discovery = Discovery::new(client.clone()).run().await.map_err(|e| e.to_string())?;
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(document).map_err(|e| e.to_string())?;
        if value.is_null() {
            continue;
        }
        let object: kube::api::DynamicObject = serde_yaml::from_value(value).map_err(|e| e.to_string())?;
        let types = object.types.clone().ok_or("a manifest without apiVersion/kind")?;
        let gvk = kube::api::GroupVersionKind::try_from(&types).map_err(|e| e.to_string())?;
        let (resource, caps): (ApiResource, ApiCapabilities) =
            discovery.resolve_gvk(&gvk).ok_or_else(|| format!("unknown kind {gvk:?}"))?;
        let name = object.metadata.name.clone().ok_or("a manifest without a name")?;
        let api: Api<kube::api::DynamicObject> = match caps.scope {
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                object.metadata.namespace.as_deref().unwrap_or("default"),
                &resource,
            ),
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        api.patch(&name, &PatchParams::apply("e2e").force(), &Patch::Apply(&object))
            .await
            .map_err(|e| format!("{} {name}: {e}", gvk.kind))?;
    }
    Ok(())
}

/// Runs a future to completion on a runtime of its own (the control plane is started from
/// synchronous code and from any test's runtime alike).
fn run_async<T, F>(make: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = T>,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime").block_on(make())
    })
    .join()
    .expect("the start-up thread")
}
