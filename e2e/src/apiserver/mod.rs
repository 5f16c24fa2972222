//! A test double of the Kubernetes API server, for running the operator and its e2e suite on
//! machines where no real API server can run. The same suite also runs against a real cluster,
//! so this server follows the real one where a client can tell the difference, and refuses what
//! the real one refuses.
//!
//! It serves HTTPS with a certificate from the run's CA (`crate::tls::TestCa`), requires a bearer
//! token (401 `Status` otherwise), logs requests and injects faults like every double
//! ([`crate::doubles::start`]). It knows core/v1 Namespaces, Secrets, ConfigMaps and Events,
//! events.k8s.io/v1 Events, coordination.k8s.io/v1 Leases, apiextensions.k8s.io/v1
//! CustomResourceDefinitions, and every kind a stored CRD defines (served from the moment the
//! CRD is created, gone when it is deleted).
//!
//! What it follows:
//! - discovery (`/api`, `/api/v1`, `/apis`, `/apis/<group>[/<version>]`, `/version`) with verbs,
//!   short names, categories and `/status` subresources, and aggregated discovery
//!   (`apidiscovery.k8s.io/v2`) when a client asks for it; OpenAPI v3 (`/openapi/v3` and a
//!   document per group version: operations with their query parameters and patch types, the
//!   custom resources' schemas; see `apiserver/openapi.rs`), which kubectl reads before it applies;
//! - server-side printing: `get` and `list` answer a `meta.k8s.io/v1` `Table` when asked (what
//!   `kubectl get` shows), with the CRDs' `additionalPrinterColumns` (`apiserver/table.rs`);
//! - get, list (`limit`/`continue`, `resourceVersionMatch`), create (`generateName`, `uid`,
//!   `creationTimestamp`, `generation`), update, delete (`propagationPolicy`, preconditions),
//!   deletecollection, `dryRun=All`, `fieldValidation` (unknown fields of custom resources are
//!   dropped, or a 400 with `Strict`);
//! - PATCH as JSON Patch (with `test`), merge patch, server-side apply (`fieldManager` required,
//!   field ownership per manager shown as `managedFields`, 409 conflicts unless `force`; see
//!   `apiserver/apply.rs` for how it is simplified), strategic merge patch for built-ins only
//!   (the list strategies of the kinds served, see `apiserver/strategic.rs`) and 415 for custom
//!   resources and unknown media types;
//! - the status subresource: writes to `/status` change only `.status`, writes to the object
//!   keep the stored `.status`; `metadata.generation` moves on changes outside metadata and
//!   status and when deletion starts;
//! - one global resourceVersion counter; a stale `resourceVersion` is a 409 with the real
//!   message; a write that changes nothing keeps the resourceVersion and sends no watch event;
//! - watches (`watch=true|1`, label and field selectors, `allowWatchBookmarks` with a bookmark
//!   every second, `timeoutSeconds`, `sendInitialEvents` with its end-of-initial-events bookmark)
//!   with a history window: a resourceVersion that is too old gets the real form, an HTTP 200
//!   stream with one `ERROR` event carrying a 410 `Expired` `Status`;
//! - finalizers and `deletionTimestamp` (no new finalizers during deletion, 422), removal with
//!   the last finalizer; garbage collection of dependents by owner uid (background, foreground,
//!   orphan), namespace deletion removing its contents, CRD deletion removing its instances;
//! - validation: names (RFC 1123), labels, finalizers, owner references (one controller), Secret
//!   data and type, immutable Secrets and ConfigMaps, Lease durations, events.k8s.io Event fields,
//!   CRDs (name, one storage version, structural schemas), and custom resources against their
//!   CRD's schema with CEL ([`crate::schema::validate`]) on every write, whole object, status
//!   writes too: 422 `Invalid` naming each field; 404 for a missing namespace, 403 for a
//!   terminating one and for deleting `default`, `kube-system` or `kube-public`; a create that
//!   carries a `resourceVersion` fails as in the real storage layer (500).
//!
//! What it leaves out: authorization (RBAC: every valid token may do everything), admission
//! webhooks, `managedFields` sent in updates (ignored), conversion webhooks, protobuf (so
//! kubectl's typed commands such as `kubectl create namespace` get a 415; `kubectl apply` works),
//! OpenAPI v2, Tables on watches,
//! `resourceVersion` snapshots (a list always shows the current state, a `continue` page too),
//! graceful deletion periods (deletion is immediate but for finalizers), validation ratcheting
//! (an update must make the whole object valid, even fields it does not touch), CEL cost limits,
//! field validation of built-in kinds beyond the checks above, and kinds not listed. Events are
//! one resource seen through core/v1 and events.k8s.io/v1 as on the real server (fields renamed
//! between them), though stored twice, so their `managedFields` name each API's own fields.
//!
//! Fault injection meets kube's client, which retries 429, 503 and 504 by itself (up to 15
//! times): a test that wants a request to fail injects another status or more failures.

mod apply;
mod http;
mod openapi;
mod resources;
mod selectors;
mod status;
mod store;
mod strategic;
mod table;
mod validation;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;

use crate::doubles::{self, DoubleServer, Faults, RequestLog};
use crate::tls::TestCa;
use store::State;

/// State shared by the request handlers, the watch streams and the garbage collector.
pub(crate) struct Shared {
    state: Mutex<State>,
    token: String,
    gc: Notify,
}

/// A running API server double. Stops when dropped.
pub struct ApiServer {
    /// `https://127.0.0.1:<port>`.
    pub base_url: String,
    /// Requests received.
    pub log: RequestLog,
    /// Fault injection.
    pub faults: Faults,
    ca_pem: String,
    shared: Arc<Shared>,
    gc_task: JoinHandle<()>,
    _server: DoubleServer,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.gc_task.abort();
    }
}

/// Why [`ApiServer::apply_crds`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyCrdsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// A file is not YAML.
    #[error("parsing {path}: {source}")]
    Parse { path: PathBuf, source: serde_yaml::Error },
    /// The server refused a CRD.
    #[error("applying {name}: {source}")]
    Apply { name: String, source: kube::Error },
}

/// How long the garbage collector waits after a removal before it looks (it is a controller on
/// the real server, never synchronous with the request).
const GC_DELAY: Duration = Duration::from_millis(20);

impl ApiServer {
    /// Starts a server on a free loopback port; namespaces `default`, `kube-system`,
    /// `kube-public` and `kube-node-lease` exist.
    pub async fn start(ca: &TestCa) -> std::io::Result<ApiServer> {
        let (tx, _) = broadcast::channel(4096);
        let token = format!("apiserver-double-{}", uuid::Uuid::new_v4().simple());
        crate::logs::register_secret(&token);
        let shared = Arc::new(Shared { state: Mutex::new(State::new(tx)), token, gc: Notify::new() });
        let router = axum::Router::new().fallback(http::handle).with_state(shared.clone());
        let server = doubles::start(router, ca).await?;
        let gc_shared = shared.clone();
        let gc_task = tokio::spawn(async move {
            loop {
                gc_shared.gc.notified().await;
                tokio::time::sleep(GC_DELAY).await;
                let mut state = gc_shared.state.lock().unwrap();
                state.collect_all_garbage();
                state.gc_pending = false;
            }
        });
        Ok(ApiServer {
            base_url: server.base_url.clone(),
            log: server.log.clone(),
            faults: server.faults.clone(),
            ca_pem: ca.cert_pem(),
            shared,
            gc_task,
            _server: server,
        })
    }

    /// The bearer token clients authenticate with.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// A client that trusts the run's CA and authenticates with the token; default namespace
    /// `default`.
    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.base_url.parse().expect("the server's own URL parses"));
        config.root_cert = Some(vec![pem_to_der(&self.ca_pem)]);
        config.auth_info.token = Some(self.shared.token.clone().into());
        config.default_namespace = "default".into();
        kube::Client::try_from(config).expect("a client from a complete configuration")
    }

    /// A kubeconfig (CA data, server, token; context namespace `default`) for a separate process
    /// such as the operator binary or kubectl.
    pub fn kubeconfig_yaml(&self) -> String {
        let ca_data = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "apiserver-double", "cluster": {
                "server": self.base_url, "certificate-authority-data": ca_data}}],
            "users": [{"name": "e2e", "user": {"token": self.shared.token}}],
            "contexts": [{"name": "apiserver-double", "context": {
                "cluster": "apiserver-double", "user": "e2e", "namespace": "default"}}],
            "current-context": "apiserver-double",
        });
        serde_yaml::to_string(&config).expect("JSON values serialize as YAML")
    }

    /// Applies (server-side, through [`Self::client`]) every CRD in the `*.yaml` files of
    /// `crds_dir`; returns their names. They are established at once.
    pub async fn apply_crds(&self, crds_dir: &Path) -> Result<Vec<String>, ApplyCrdsError> {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        use kube::api::{Api, Patch, PatchParams};
        let mut files: Vec<PathBuf> = std::fs::read_dir(crds_dir)
            .map_err(|source| ApplyCrdsError::Read { path: crds_dir.to_owned(), source })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        let api: Api<CustomResourceDefinition> = Api::all(self.client());
        let mut names = Vec::new();
        for path in files {
            let text =
                std::fs::read_to_string(&path).map_err(|source| ApplyCrdsError::Read { path: path.clone(), source })?;
            for document in serde_yaml::Deserializer::from_str(&text) {
                let doc: Value = serde::Deserialize::deserialize(document)
                    .map_err(|source| ApplyCrdsError::Parse { path: path.clone(), source })?;
                if doc["kind"] != "CustomResourceDefinition" {
                    continue;
                }
                let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_owned();
                api.patch(&name, &PatchParams::apply("e2e-apply-crds").force(), &Patch::Apply(&doc))
                    .await
                    .map_err(|source| ApplyCrdsError::Apply { name: name.clone(), source })?;
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Forgets the watch history, as an etcd compaction followed by an API server restart
    /// would: every resourceVersion issued so far becomes too old to watch from (410 Expired),
    /// and every open watch ends, so watchers must list again.
    pub fn compact(&self) {
        self.shared.state.lock().unwrap().compact();
    }

    /// The stored object, as a GET would return it (`api_version` like `dsp-mqtt.io/v1alpha1`
    /// or `v1`; `namespace` `None` for cluster-scoped kinds).
    pub fn object(&self, api_version: &str, plural: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let state = self.shared.state.lock().unwrap();
        let rt = state.find_type(group, version, plural)?;
        state.get(&rt, namespace, name).map(|o| store::present(&rt, o))
    }

    /// Successful mutating requests so far (create, update, patch, delete, including those
    /// that changed nothing; dry runs excluded). The garbage collector's writes are not counted.
    pub fn write_count(&self) -> u64 {
        self.shared.state.lock().unwrap().writes
    }

    /// The current global resourceVersion: unchanged across requests that changed nothing.
    pub fn resource_version(&self) -> u64 {
        self.shared.state.lock().unwrap().rv
    }
}

/// The DER of the first certificate in `pem`.
fn pem_to_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body.trim()).expect("the CA's own PEM is base64")
}
