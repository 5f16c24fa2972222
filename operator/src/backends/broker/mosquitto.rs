//! Mosquitto 2 through its dynamic-security plugin: JSON commands published to
//! `$CONTROL/dynamic-security/v1`, answers on `.../v1/response` matched by `correlationData`
//! (domain.md §6).
//!
//! Hand-written on top of rumqttc because no maintained crate speaks the dynamic-security
//! protocol; it is a small request/response layer over one long-lived MQTT connection.
//!
//! Each identity is a dynsec client plus a role of the same name. The role grants
//! `subscribePattern` and `publishClientReceive` on each topic filter and denies
//! `publishClientSend` on `#`, so access is read-only whatever the broker's default ACL access.
//! Ownership is marked in the `textdescription` of the client and the role. Suspending is
//! `disableClient`, which also closes live sessions. Mosquitto cannot check JWTs, so oauth2 mode
//! is refused.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::{Value, json};
use tokio::sync::{Mutex, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};
use url::Url;

use super::{Broker, TokenRequirements, UserGrant};
use crate::api::AuthMode;
use crate::backends::{
    BackendError, ExposeSecret, OWNER_KEY, OWNER_RESOURCE_KEY, OWNER_VALUE, Outcome, Owner, SecretString, System,
};
use crate::config::BrokerProfile;

const CONTROL_TOPIC: &str = "$CONTROL/dynamic-security/v1";
const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";
const SYSTEM: System = System::Mosquitto;

/// How to reach Mosquitto's dynamic-security admin.
#[derive(Clone, Debug)]
pub struct MosquittoSettings {
    /// `mqtts://host:port` or `ssl://host:port`.
    pub admin_url: Url,
    /// Admin username (a dynsec client with rights on `$CONTROL/dynamic-security/#`).
    pub username: String,
    /// Its password.
    pub password: SecretString,
    /// PEM CA bundle replacing the system roots, when set.
    pub ca_bundle_pem: Option<String>,
    /// How long to wait for a connection or an answer.
    pub timeout: Duration,
    /// MQTT client id of the admin connection (unique per operator replica).
    pub client_id: String,
}

impl MosquittoSettings {
    /// Settings for a `type: mosquitto` broker profile, with its admin password and CA bundle
    /// already read. `client_id` must be unique per operator replica (e.g. the pod name).
    pub fn from_profile(
        profile: &BrokerProfile,
        password: SecretString,
        ca_bundle_pem: Option<String>,
        client_id: String,
    ) -> Self {
        Self {
            admin_url: profile.admin_url.clone(),
            username: profile.admin_username.clone(),
            password,
            ca_bundle_pem,
            timeout: Duration::from_secs(profile.timeout_seconds),
            client_id,
        }
    }
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// State of the admin connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// Not (yet) connected and subscribed.
    Down,
    /// Subscribed to the response topic: commands can be sent.
    Ready,
    /// The broker refused the admin credentials.
    Refused,
}

/// A dynamic-security admin connection. Reconnects by itself; commands sent while it is down
/// time out with a retryable error.
pub struct MosquittoClient {
    client: AsyncClient,
    pending: Pending,
    ready: watch::Receiver<Link>,
    timeout: Duration,
    next_id: AtomicU64,
    task: JoinHandle<()>,
}

impl Drop for MosquittoClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one dynsec command answered.
enum Answer {
    Ok(Value),
    NotFound,
    Exists,
    Error(String),
}

impl MosquittoClient {
    /// Opens the admin connection (TLS verified against the CA bundle or the system roots).
    pub fn connect(settings: &MosquittoSettings) -> Result<Self, BackendError> {
        let object = settings.admin_url.to_string();
        let protocol = |detail: String| BackendError::Protocol {
            system: SYSTEM,
            operation: "connect",
            object: object.clone(),
            detail,
        };
        if !matches!(settings.admin_url.scheme(), "mqtts" | "ssl") {
            return Err(protocol(format!(
                "admin URL scheme must be mqtts or ssl, got {}",
                settings.admin_url.scheme()
            )));
        }
        let host = settings.admin_url.host_str().ok_or_else(|| protocol("admin URL has no host".into()))?;
        let port = settings.admin_url.port().unwrap_or(8883);
        let mut options = MqttOptions::new(settings.client_id.clone(), host, port);
        options.set_credentials(settings.username.clone(), settings.password.expose_secret().to_owned());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(true);
        options.set_max_packet_size(4 << 20, 4 << 20);
        let tls = tls_config(settings.ca_bundle_pem.as_deref()).map_err(protocol)?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        let (client, eventloop) = AsyncClient::new(options, 64);
        let pending: Pending = Arc::default();
        let (ready_tx, ready) = watch::channel(Link::Down);
        let task = tokio::spawn(drive(eventloop, client.clone(), pending.clone(), ready_tx));
        Ok(Self { client, pending, ready, timeout: settings.timeout, next_id: AtomicU64::new(1), task })
    }

    /// Sends one command and waits for its answer; records the call's latency and outcome.
    async fn command(&self, operation: &'static str, object: &str, command: Value) -> Result<Answer, BackendError> {
        let mut answers = self.commands(operation, object, vec![command]).await?;
        Ok(answers.pop().expect("one answer per command"))
    }

    /// Sends commands in one control message (the plugin runs them in order) and waits for all
    /// their answers; records each command's latency and outcome.
    async fn commands(
        &self,
        operation: &'static str,
        object: &str,
        commands: Vec<Value>,
    ) -> Result<Vec<Answer>, BackendError> {
        let started = std::time::Instant::now();
        let count = commands.len();
        let result = self.exchange(operation, object, commands).await;
        let outcomes: Vec<&str> = match &result {
            Ok(answers) => answers
                .iter()
                .map(|a| match a {
                    Answer::Ok(_) => "ok",
                    Answer::NotFound => "not found",
                    Answer::Exists => "exists",
                    Answer::Error(_) => "error",
                })
                .collect(),
            Err(BackendError::Timeout { .. }) => vec!["timeout"; count],
            Err(BackendError::Unauthorized { .. }) => vec!["unauthorized"; count],
            Err(_) => vec!["unreachable"; count],
        };
        for outcome in outcomes {
            crate::metrics::observe_backend_call(SYSTEM.as_str(), operation, outcome, started.elapsed());
        }
        result
    }

    /// Publishes commands in one message on the control topic and waits for their answers.
    async fn exchange(
        &self,
        operation: &'static str,
        object: &str,
        mut commands: Vec<Value>,
    ) -> Result<Vec<Answer>, BackendError> {
        let timeout_err = || BackendError::Timeout {
            system: SYSTEM,
            operation,
            object: object.to_owned(),
            timeout_seconds: self.timeout.as_secs(),
        };
        let mut ready = self.ready.clone();
        let link = tokio::time::timeout(self.timeout, ready.wait_for(|r| *r != Link::Down))
            .await
            .map_err(|_| timeout_err())?
            .map_err(|_| BackendError::Unreachable {
                system: SYSTEM,
                operation,
                object: object.to_owned(),
                source: "the admin connection task ended".into(),
            })
            .map(|l| *l)?;
        if link == Link::Refused {
            return Err(BackendError::Unauthorized { system: SYSTEM, operation, object: object.to_owned(), status: 0 });
        }
        let mut ids = Vec::with_capacity(commands.len());
        let mut receivers = Vec::with_capacity(commands.len());
        {
            let mut pending = self.pending.lock().await;
            for command in &mut commands {
                let id = format!("dsp-mqtt-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
                command["correlationData"] = Value::String(id.clone());
                let (tx, rx) = oneshot::channel();
                pending.insert(id.clone(), tx);
                ids.push(id);
                receivers.push(rx);
            }
        }
        let forget = || async {
            let mut pending = self.pending.lock().await;
            for id in &ids {
                pending.remove(id);
            }
        };
        let payload = json!({ "commands": commands }).to_string();
        if let Err(e) = self.client.publish(CONTROL_TOPIC, QoS::AtLeastOnce, false, payload).await {
            forget().await;
            return Err(BackendError::Unreachable {
                system: SYSTEM,
                operation,
                object: object.to_owned(),
                source: Box::new(e),
            });
        }
        let answers = match tokio::time::timeout(self.timeout, futures::future::join_all(receivers)).await {
            Ok(answers) if answers.iter().all(Result::is_ok) => answers.into_iter().flatten(),
            _ => {
                forget().await;
                return Err(timeout_err());
            }
        };
        Ok(answers
            .map(|answer| match answer.get("error").and_then(Value::as_str) {
                None => Answer::Ok(answer.get("data").cloned().unwrap_or(Value::Null)),
                Some(e) if e.ends_with("not found") => Answer::NotFound,
                Some(e) if e.ends_with("already exists") => Answer::Exists,
                Some(e) => Answer::Error(e.to_owned()),
            })
            .collect())
    }

    /// Sends a command that must succeed.
    async fn must(&self, operation: &'static str, object: &str, command: Value) -> Result<Value, BackendError> {
        match self.command(operation, object, command).await? {
            Answer::Ok(v) => Ok(v),
            Answer::NotFound => Err(rejected(operation, object, "not found")),
            Answer::Exists => Err(rejected(operation, object, "already exists")),
            Answer::Error(e) => Err(rejected(operation, object, &e)),
        }
    }

    /// Reads a client or role (`getClient` / `getRole`); None when absent.
    async fn get(&self, command: &str, key: &str, name: &str) -> Result<Option<Value>, BackendError> {
        let (object, field) =
            if key == "username" { (format!("client {name}"), "client") } else { (format!("role {name}"), "role") };
        match self.command("get", &object, json!({"command": command, key: name})).await? {
            Answer::Ok(data) => Ok(Some(data.get(field).cloned().unwrap_or(Value::Null))),
            Answer::NotFound => Ok(None),
            Answer::Exists => Err(rejected("get", &object, "already exists")),
            Answer::Error(e) => Err(rejected("get", &object, &e)),
        }
    }

    async fn get_client(&self, username: &str) -> Result<Option<Value>, BackendError> {
        self.get("getClient", "username", username).await
    }

    async fn get_role(&self, rolename: &str) -> Result<Option<Value>, BackendError> {
        self.get("getRole", "rolename", rolename).await
    }

    /// Creates the role or brings its ACLs to `desired`; returns whether it wrote.
    async fn ensure_role(&self, rolename: &str, desired: &BTreeSet<Acl>, owner: &Owner) -> Result<bool, BackendError> {
        self.ensure_role_once(rolename, desired, owner, true).await
    }

    async fn ensure_role_once(
        &self,
        rolename: &str,
        desired: &BTreeSet<Acl>,
        owner: &Owner,
        retry: bool,
    ) -> Result<bool, BackendError> {
        let object = format!("role {rolename}");
        let Some(role) = self.get_role(rolename).await? else {
            let acls: Vec<Value> = desired.iter().map(Acl::to_json).collect();
            let create = json!({"command": "createRole", "rolename": rolename, "textname": "mqtt-dsp-operator grant",
                                "textdescription": marker(owner), "acls": acls});
            return match self.command("create", &object, create).await? {
                Answer::Ok(_) => Ok(true),
                // Created meanwhile (another replica, a retried call): compare it once more; a
                // broker that keeps answering "not found" and "already exists" is an error.
                Answer::Exists if retry => Box::pin(self.ensure_role_once(rolename, desired, owner, false)).await,
                Answer::Exists => Err(rejected("create", &object, "already exists, yet not found when read")),
                Answer::NotFound => Err(rejected("create", &object, "not found")),
                Answer::Error(e) => Err(rejected("create", &object, &e)),
            };
        };
        if !is_ours(&role, Some(owner)) {
            return Err(BackendError::Foreign { system: SYSTEM, operation: "update", object });
        }
        let current: BTreeSet<Acl> =
            role.get("acls").and_then(Value::as_array).into_iter().flatten().filter_map(Acl::from_json).collect();
        let mut wrote = false;
        if role.get("textdescription").and_then(Value::as_str) != Some(marker(owner).as_str()) {
            // Adopted from the marker without an installation: rewritten into this one's.
            let modify = json!({"command": "modifyRole", "rolename": rolename, "textdescription": marker(owner)});
            self.must("update", &object, modify).await?;
            wrote = true;
        }
        for acl in current.difference(desired) {
            let remove =
                json!({"command": "removeRoleACL", "rolename": rolename, "acltype": acl.acltype, "topic": acl.topic});
            self.must("update", &object, remove).await?;
            wrote = true;
        }
        for acl in desired.difference(&current) {
            let mut add = acl.to_json();
            add["command"] = json!("addRoleACL");
            add["rolename"] = json!(rolename);
            self.must("update", &object, add).await?;
            wrote = true;
        }
        Ok(wrote)
    }

    async fn set_enabled(&self, username: &str, enabled: bool) -> Result<(), BackendError> {
        let (command, operation) = if enabled { ("enableClient", "enable") } else { ("disableClient", "disable") };
        self.must(operation, &format!("client {username}"), json!({"command": command, "username": username}))
            .await
            .map(|_| ())
    }

    /// `ensure_user`, retrying once when the client appears between our read and our create.
    async fn ensure_user_once(&self, grant: &UserGrant, retry: bool) -> Result<Outcome, BackendError> {
        let username = &grant.username;

        let object = format!("client {username}");
        let desired = desired_acls(&grant.topics).map_err(|e| rejected("grant", &object, &e))?;
        let existing = self.get_client(username).await?;
        if let Some(client) = &existing
            && !is_ours(client, Some(&grant.owner))
        {
            return Err(BackendError::Foreign { system: SYSTEM, operation: "update", object });
        }
        let role_wrote = self.ensure_role(username, &desired, &grant.owner).await?;
        let Some(client) = existing else {
            let create = json!({"command": "createClient", "username": username, "password": grant.password.expose_secret(),
                                "textname": "mqtt-dsp-operator identity", "textdescription": marker(&grant.owner),
                                "roles": [{"rolename": username}]});
            match self.command("create", &object, create).await? {
                Answer::Ok(_) => {}
                Answer::Exists if retry => return Box::pin(self.ensure_user_once(grant, false)).await,
                Answer::Exists => return Err(rejected("create", &object, "already exists, yet not found when read")),
                Answer::NotFound => return Err(rejected("create", &object, "not found")),
                Answer::Error(e) => return Err(rejected("create", &object, &e)),
            }
            if !grant.enabled {
                self.set_enabled(username, false).await?;
            }
            return Ok(Outcome::Created);
        };
        let mut wrote = role_wrote;
        if client.get("textdescription").and_then(Value::as_str) != Some(marker(&grant.owner).as_str()) {
            // Adopted from the marker without an installation: rewritten into this one's.
            let modify =
                json!({"command": "modifyClient", "username": username, "textdescription": marker(&grant.owner)});
            self.must("update", &object, modify).await?;
            wrote = true;
        }
        let has_role = client
            .get("roles")
            .and_then(Value::as_array)
            .is_some_and(|roles| roles.iter().any(|r| r.get("rolename").and_then(Value::as_str) == Some(username)));
        if !has_role {
            let add = json!({"command": "addClientRole", "username": username, "rolename": username});
            self.must("update", &object, add).await?;
            wrote = true;
        }
        let disabled = client.get("disabled").and_then(Value::as_bool).unwrap_or(false);
        if disabled == grant.enabled {
            self.set_enabled(username, grant.enabled).await?;
            wrote = true;
        }
        Ok(if wrote { Outcome::Updated } else { Outcome::Unchanged })
    }

    async fn owned_client(
        &self,
        username: &str,
        owner: Option<&Owner>,
        operation: &'static str,
    ) -> Result<Option<Value>, BackendError> {
        match self.get_client(username).await? {
            None => Ok(None),
            Some(c) if is_ours(&c, owner) => Ok(Some(c)),
            Some(_) => Err(BackendError::Foreign { system: SYSTEM, operation, object: format!("client {username}") }),
        }
    }
}

#[async_trait]
impl Broker for MosquittoClient {
    fn system(&self) -> System {
        SYSTEM
    }

    fn role_of(&self, username: &str) -> Option<String> {
        // ensure_user grants through a role of the user's name.
        Some(username.to_owned())
    }

    fn supports(&self, mode: AuthMode) -> bool {
        mode == AuthMode::Usrpw
    }

    async fn ensure_user(&self, grant: &UserGrant) -> Result<Outcome, BackendError> {
        self.ensure_user_once(grant, true).await
    }

    /// The role with its ACLs and the client with its role and password, as two commands in one
    /// control message and without reading first: what a new identity needs. (Each command still
    /// makes the plugin save its whole file; two saves per identity is the minimum with a role per
    /// identity.) Should either exist already, the general path compares and repairs both.
    async fn create_user(&self, grant: &UserGrant) -> Result<Outcome, BackendError> {
        let username = &grant.username;
        let object = format!("client {username}");
        let desired = desired_acls(&grant.topics).map_err(|e| rejected("grant", &object, &e))?;
        let acls: Vec<Value> = desired.iter().map(Acl::to_json).collect();
        let role = json!({"command": "createRole", "rolename": username, "textname": "mqtt-dsp-operator grant",
                          "textdescription": marker(&grant.owner), "acls": acls});
        let client = json!({"command": "createClient", "username": username, "password": grant.password.expose_secret(),
                            "textname": "mqtt-dsp-operator identity", "textdescription": marker(&grant.owner),
                            "roles": [{"rolename": username}]});
        let answers = self.commands("create", &object, vec![role, client]).await?;
        let [role, client] =
            <[Answer; 2]>::try_from(answers).map_err(|_| rejected("create", &object, "answers missing"))?;
        for answer in [&role, &client] {
            match answer {
                Answer::Ok(_) | Answer::Exists => {}
                Answer::NotFound => return Err(rejected("create", &object, "not found")),
                Answer::Error(e) => return Err(rejected("create", &object, e)),
            }
        }
        if matches!(role, Answer::Exists) || matches!(client, Answer::Exists) {
            // Made before (a lost answer, a crash before status was written): a role or client
            // of another owner is refused here, other ACLs are repaired, and the client is
            // given this password.
            self.ensure_user_with_password(grant).await?;
            return Ok(Outcome::Updated);
        }
        if !grant.enabled {
            self.set_enabled(username, false).await?;
        }
        Ok(Outcome::Created)
    }

    async fn set_password(
        &self,
        username: &str,
        password: &SecretString,
        owner: &Owner,
    ) -> Result<Outcome, BackendError> {
        let object = format!("client {username}");
        if self.owned_client(username, Some(owner), "set the password of").await?.is_none() {
            return Err(rejected("set the password of", &object, "not found"));
        }
        let set = json!({"command": "setClientPassword", "username": username, "password": password.expose_secret()});
        self.must("set the password of", &object, set).await?;
        Ok(Outcome::Updated)
    }

    async fn remove_user(&self, username: &str, owner: &Owner) -> Result<Outcome, BackendError> {
        let mut outcome = Outcome::Absent;
        if self.owned_client(username, Some(owner), "delete").await?.is_some() {
            // deleteClient also closes the client's live sessions.
            self.must(
                "delete",
                &format!("client {username}"),
                json!({"command": "deleteClient", "username": username}),
            )
            .await?;
            outcome = Outcome::Deleted;
        }
        match self.get_role(username).await? {
            Some(role) if is_ours(&role, Some(owner)) => {
                self.must(
                    "delete",
                    &format!("role {username}"),
                    json!({"command": "deleteRole", "rolename": username}),
                )
                .await?;
                outcome = Outcome::Deleted;
            }
            Some(_) => {
                return Err(BackendError::Foreign {
                    system: SYSTEM,
                    operation: "delete",
                    object: format!("role {username}"),
                });
            }
            None => {}
        }
        Ok(outcome)
    }

    async fn disconnect(&self, identity: &str) -> Result<u32, BackendError> {
        // Dynamic security has no "kick": disabling a client closes its sessions; a client that
        // was enabled is enabled again right after.
        // Closing sessions takes nothing away for good, so any client of ours qualifies.
        let Some(client) = self.owned_client(identity, None, "disconnect").await? else { return Ok(0) };
        if client.get("disabled").and_then(Value::as_bool).unwrap_or(false) {
            return Ok(0);
        }
        self.set_enabled(identity, false).await?;
        self.set_enabled(identity, true).await?;
        Ok(1)
    }

    fn token_requirements(&self, _topics: &[String]) -> Result<TokenRequirements, BackendError> {
        Err(BackendError::Unsupported {
            system: SYSTEM,
            what: "check a JWT in the MQTT CONNECT password (it needs a third-party plugin): use auth.mode usrpw, \
                   or a RabbitMQ or EMQX broker profile"
                .into(),
        })
    }
}

/// One ACL entry of a role.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Acl {
    acltype: String,
    topic: String,
    allow: bool,
}

impl Acl {
    fn to_json(&self) -> Value {
        json!({"acltype": self.acltype, "topic": self.topic, "allow": self.allow, "priority": 0})
    }

    fn from_json(v: &Value) -> Option<Self> {
        Some(Self {
            acltype: v.get("acltype")?.as_str()?.to_owned(),
            topic: v.get("topic")?.as_str()?.to_owned(),
            allow: v.get("allow").and_then(Value::as_bool).unwrap_or(false),
        })
    }
}

/// Read-only access to `topics`: subscribe and receive allowed, publishing denied everywhere.
/// `%` is refused: in `subscribePattern` ACLs Mosquitto substitutes `%c` and `%u`.
fn desired_acls(topics: &[String]) -> Result<BTreeSet<Acl>, String> {
    let mut acls = BTreeSet::new();
    for topic in topics {
        if topic.contains('%') {
            return Err(format!("topic filter {topic:?} contains '%', which Mosquitto ACLs treat as a substitution"));
        }
        for acltype in ["subscribePattern", "publishClientReceive"] {
            acls.insert(Acl { acltype: acltype.into(), topic: topic.clone(), allow: true });
        }
    }
    acls.insert(Acl { acltype: "publishClientSend".into(), topic: "#".into(), allow: false });
    Ok(acls)
}

fn marker(owner: &Owner) -> String {
    format!("{OWNER_KEY}={} {OWNER_RESOURCE_KEY}={}", owner.managed_by(), owner.marker())
}

/// Whether the object carries our marker and, when `owner` is given, this installation's and
/// that resource's marker: the client of another MqttTransfer or installation is as foreign as a
/// hand-made one. Without `owner` (closing the sessions of a client), any operator's marker.
fn is_ours(object: &Value, owner: Option<&Owner>) -> bool {
    let Some(description) = object.get("textdescription").and_then(Value::as_str) else { return false };
    let managed_by = description.split_whitespace().find_map(|w| w.strip_prefix(&format!("{OWNER_KEY}=")));
    let has = |word: String| description.split_whitespace().any(|w| w == word);
    match (managed_by, owner) {
        (None, _) => false,
        (Some(m), None) => m == OWNER_VALUE || m.starts_with(&format!("{OWNER_VALUE}/")),
        (Some(m), Some(o)) => o.is_managed_by(m) && has(format!("{OWNER_RESOURCE_KEY}={}", o.marker())),
    }
}

fn rejected(operation: &'static str, object: &str, message: &str) -> BackendError {
    BackendError::Rejected {
        system: SYSTEM,
        operation,
        object: object.to_owned(),
        status: 0,
        message: message.to_owned(),
    }
}

fn tls_config(ca_bundle_pem: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_bundle_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| format!("CA bundle is not PEM: {e}"))?;
                roots.add(cert).map_err(|e| format!("CA bundle holds an unusable certificate: {e}"))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err("no CA certificate to verify the broker with".into());
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Drives the MQTT connection: (re)subscribes to the response topic after every connect, routes
/// answers to their waiting callers, and reconnects after errors with a pause.
async fn drive(mut eventloop: EventLoop, client: AsyncClient, pending: Pending, ready: watch::Sender<Link>) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Err(e) = client.try_subscribe(RESPONSE_TOPIC, QoS::AtLeastOnce) {
                    warn!("mosquitto admin: cannot subscribe to the response topic: {e}");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                let _ = ready.send(Link::Ready);
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == RESPONSE_TOPIC => {
                let Ok(body) = serde_json::from_slice::<Value>(&p.payload) else { continue };
                let mut waiting = pending.lock().await;
                for response in body.get("responses").and_then(Value::as_array).into_iter().flatten() {
                    if let Some(id) = response.get("correlationData").and_then(Value::as_str)
                        && let Some(tx) = waiting.remove(id)
                    {
                        let _ = tx.send(response.clone());
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                let refused = matches!(
                    e,
                    rumqttc::ConnectionError::ConnectionRefused(
                        rumqttc::ConnectReturnCode::BadUserNamePassword | rumqttc::ConnectReturnCode::NotAuthorized
                    )
                );
                let _ = ready.send(if refused { Link::Refused } else { Link::Down });
                // The error names the connection problem (refused, TLS, I/O), never credentials.
                debug!("mosquitto admin connection: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_acls_deny_publishing() {
        let acls = desired_acls(&["a/+/b".into(), "c/#".into()]).unwrap();
        assert!(acls.contains(&Acl { acltype: "publishClientSend".into(), topic: "#".into(), allow: false }));
        assert!(acls.contains(&Acl { acltype: "subscribePattern".into(), topic: "a/+/b".into(), allow: true }));
        assert!(acls.contains(&Acl { acltype: "publishClientReceive".into(), topic: "c/#".into(), allow: true }));
        assert_eq!(acls.len(), 5);
        assert!(acls.iter().all(|a| a.acltype != "publishClientSend" || !a.allow));
    }

    #[test]
    fn percent_signs_are_refused() {
        assert!(desired_acls(&["a/%u".into()]).is_err());
    }

    #[test]
    fn ownership_is_read_from_the_description() {
        let owner = Owner {
            installation: "test".into(),
            kind: "MqttTransfer".into(),
            namespace: "ns".into(),
            name: "t".into(),
        };
        let other = Owner { name: "u".into(), ..owner.clone() };
        assert!(is_ours(&json!({"textdescription": marker(&owner)}), Some(&owner)));
        let staging = Owner { installation: "staging".into(), ..owner.clone() };
        assert!(!is_ours(&json!({"textdescription": marker(&staging)}), Some(&owner)), "another installation's");
        let legacy = "dsp-mqtt.io/managed-by=mqtt-dsp-operator dsp-mqtt.io/owner=MqttTransfer/ns/t";
        assert!(is_ours(&json!({"textdescription": legacy}), Some(&owner)), "the form without an installation");
        assert!(is_ours(&json!({"textdescription": marker(&owner)}), None));
        assert!(!is_ours(&json!({"textdescription": marker(&owner)}), Some(&other)));
        assert!(!is_ours(&json!({"textdescription": "someone else's"}), None));
        assert!(!is_ours(&json!({}), None));
    }
}
