//! EMQX 5 through its REST API (`/api/v5`, domain.md §6): usrpw consumers are users of the
//! built-in password database with per-user rules in the built-in authorization database;
//! oauth2 consumers carry their permissions in the JWT's `acl` claim.
//!
//! # The rules a consumer gets
//!
//! EMQX checks a client's rules from the built-in database in order and the first match decides
//! (`emqx_authz_mnesia`: clientid rules, then username rules, then the `all` rules). When nothing
//! matches, the next authorization source is asked and finally `authorization.no_match`, which
//! defaults to **allow**. So a read-only user's rule list ends in explicit denies, or whatever the
//! other sources allow would leak through:
//!
//! 1. `deny all eq <marker>`: the ownership marker (below); denies one literal topic nobody uses;
//! 2. `deny publish #`: never publish, whatever follows;
//! 3. `allow subscribe <filter>` for each topic filter, in the order given, each filter ending
//!    in `+` preceded by a deny of its literal `#` widening ([`widening_denies`] says why);
//! 4. `deny all #` and `deny all $SYS/#`: everything else. `#` does not match topics starting
//!    with `$` (MQTT §4.7.2), hence the second deny.
//!
//! A suspended user keeps rules 1 and 4 only.
//!
//! # Ownership
//!
//! EMQX users carry nothing but `user_id`, a password hash and `is_superuser`: there is no
//! description to put the marker in. The marker therefore lives in the user's rule record, as
//! rule 1 above, whose topic spells `dsp-mqtt.io/managed-by=mqtt-dsp-operator` and the owning
//! resource. A user is ours exactly when its rule record carries that rule. The rule record is
//! written before the user is created and deleted after the user is gone, so a crash in between
//! never leaves a user of ours without the marker; a user without a rule record, or with one
//! lacking the marker, is foreign and never touched.
//!
//! # Suspend and resume
//!
//! The built-in database has no "disabled" flag, and deny-all rules alone would still let the
//! user connect. Suspending therefore (1) replaces the password with a random one, so new
//! connections fail, (2) replaces the rules by the deny-all set, which also records the state,
//! and (3) kicks every live client of the username (`DELETE /clients/{clientid}`), which also
//! drops their cached authorization decisions. Resuming writes the grant's password back and
//! then the read-only rules. The user is always written before the rules: the rules are what the
//! next reconcile reads to decide whether the password still has to change, so a crash between
//! the two steps is repaired by the retry.
//!
//! # Tokens (oauth2 mode)
//!
//! EMQX's JWT authenticator reads permissions from a claim (`acl_claim_name`, default `acl`).
//! EMQX 5.5+ reads a list of `{permission, action, topic}` rules checked in order, passing on to
//! the authorization sources when none matches, so the list ends in the same explicit denies.
//! Older 5.x releases only read `{"pub": [...], "sub": [...], "all": [...]}`, allow lists that
//! deny anything unlisted ([`AclClaimFormat::Legacy`]).

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use url::Url;

use super::{Broker, TokenRequirements, UserGrant};
use crate::api::AuthMode;
use crate::backends::http::{self, HttpSettings};
use crate::backends::identity::HardcodedClaim;
use crate::backends::random_password;
use crate::backends::{
    BackendError, ExposeSecret, OWNER_KEY, OWNER_RESOURCE_KEY, Outcome, Owner, SecretString, System,
};
use crate::config::BrokerProfile;

const SYSTEM: System = System::Emqx;

/// Id of the built-in password database authenticator, the default place for usrpw users.
pub const BUILT_IN_AUTHENTICATOR: &str = "password_based:built_in_database";

/// Default name of the JWT claim EMQX reads permissions from (`acl_claim_name`).
pub const DEFAULT_ACL_CLAIM_NAME: &str = "acl";

/// Page size when listing a username's clients.
const CLIENTS_PAGE_LIMIT: u32 = 100;
/// Upper bound on pages read, so a misbehaving server cannot keep the operator looping.
const CLIENTS_MAX_PAGES: u32 = 100;

/// Which form of the JWT permission claim the EMQX JWT authenticator understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AclClaimFormat {
    /// EMQX 5.5+: `[{"permission", "action", "topic"}, …]`, checked in order; the list ends in
    /// explicit denies because an unmatched action passes on to the authorization sources.
    #[default]
    Rules,
    /// EMQX before 5.5: `{"sub": [topic filters]}`, an allow list; anything unlisted is denied.
    Legacy,
}

/// How to reach one EMQX cluster.
#[derive(Clone, Debug)]
pub struct EmqxSettings {
    /// The REST API: `https://host:18083` or `https://host:18083/api/v5` (both accepted).
    pub api_url: Url,
    /// API key (basic-auth user name).
    pub api_key: String,
    /// API secret (basic-auth password).
    pub api_secret: SecretString,
    /// Timeout and CA bundle.
    pub http: HttpSettings,
    /// Authenticator that holds usrpw users. Default: [`BUILT_IN_AUTHENTICATOR`].
    pub authenticator_id: String,
    /// Form of the JWT permission claim. Default: [`AclClaimFormat::Rules`] (EMQX 5.5+).
    pub acl_claim_format: AclClaimFormat,
    /// Name of the JWT permission claim (the authenticator's `acl_claim_name`). Default: `acl`.
    pub acl_claim_name: String,
}

impl EmqxSettings {
    /// Settings with the defaults for everything but the connection.
    pub fn new(api_url: Url, api_key: impl Into<String>, api_secret: SecretString, http: HttpSettings) -> Self {
        Self {
            api_url,
            api_key: api_key.into(),
            api_secret,
            http,
            authenticator_id: BUILT_IN_AUTHENTICATOR.to_owned(),
            acl_claim_format: AclClaimFormat::default(),
            acl_claim_name: DEFAULT_ACL_CLAIM_NAME.to_owned(),
        }
    }

    /// Settings from a broker profile, its API secret and CA bundle already resolved.
    pub fn from_profile(profile: &BrokerProfile, api_secret: SecretString, ca_bundle_pem: Option<String>) -> Self {
        Self::new(
            profile.admin_url.clone(),
            profile.admin_username.clone(),
            api_secret,
            HttpSettings { timeout: Duration::from_secs(profile.timeout_seconds), ca_bundle_pem },
        )
    }
}

/// An EMQX 5 cluster as the operator's [`Broker`].
#[derive(Debug)]
pub struct EmqxClient {
    http: reqwest::Client,
    /// Ends in `/api/v5`.
    api: Url,
    api_key: String,
    api_secret: SecretString,
    timeout: Duration,
    authenticator_id: String,
    acl_claim_format: AclClaimFormat,
    acl_claim_name: String,
    token_audience: String,
}

/// One authorization rule as written to EMQX.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
struct Rule {
    permission: &'static str,
    action: &'static str,
    topic: String,
}

impl Rule {
    fn new(permission: &'static str, action: &'static str, topic: impl Into<String>) -> Self {
        Self { permission, action, topic: topic.into() }
    }
}

/// A rule as EMQX answers it, reduced to what decides a match: EMQX adds `qos` and `retain`
/// (defaults `[0,1,2]` and `all`) and may spell actions `pub`/`sub`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NormalRule {
    permission: String,
    action: String,
    topic: String,
    qos: Vec<u64>,
    retain: String,
}

impl NormalRule {
    fn from_value(rule: &Value) -> Option<Self> {
        let permission = rule.get("permission")?.as_str()?.to_owned();
        let action = match rule.get("action")?.as_str()? {
            "pub" => "publish",
            "sub" => "subscribe",
            other => other,
        }
        .to_owned();
        let topic = match rule.get("topic")? {
            Value::String(t) => t.clone(),
            Value::Array(ts) if ts.len() == 1 => ts[0].as_str()?.to_owned(),
            _ => return None,
        };
        let mut qos = match rule.get("qos") {
            None | Some(Value::Null) => vec![0, 1, 2],
            Some(Value::Number(n)) => vec![n.as_u64()?],
            Some(Value::Array(qs)) => qs.iter().map(Value::as_u64).collect::<Option<Vec<_>>>()?,
            Some(Value::String(s)) => s.split(',').map(|q| q.trim().parse().ok()).collect::<Option<Vec<_>>>()?,
            Some(_) => return None,
        };
        qos.sort_unstable();
        qos.dedup();
        let retain = match rule.get("retain") {
            None | Some(Value::Null) => "all".to_owned(),
            Some(Value::Bool(b)) => b.to_string(),
            Some(Value::String(s)) if s == "all" || s == "true" || s == "false" => s.clone(),
            Some(Value::String(s)) if s == "1" => "true".to_owned(),
            Some(Value::String(s)) if s == "0" => "false".to_owned(),
            Some(_) => return None,
        };
        Some(Self { permission, action, topic, qos, retain })
    }

    fn from_rule(rule: &Rule) -> Self {
        Self {
            permission: rule.permission.to_owned(),
            action: rule.action.to_owned(),
            topic: rule.topic.clone(),
            qos: vec![0, 1, 2],
            retain: "all".to_owned(),
        }
    }
}

/// A user's rule record (`GET …/rules/users/{username}`).
#[derive(Debug, Deserialize)]
struct RuleRecord {
    #[serde(default)]
    rules: Vec<Value>,
}

impl RuleRecord {
    /// The installation (managed-by value) and owner named by our marker rule; None when the
    /// record carries no marker.
    fn owner_marker(&self) -> Option<(String, String)> {
        let prefix = format!("eq ${OWNER_KEY}=");
        let separator = format!("/{OWNER_RESOURCE_KEY}=");
        self.rules.iter().filter_map(NormalRule::from_value).find_map(|r| {
            let (managed_by, owner) = r.topic.strip_prefix(&prefix)?.split_once(&separator)?;
            (r.permission == "deny" && r.action == "all").then(|| (managed_by.to_owned(), owner.to_owned()))
        })
    }

    fn equals(&self, rules: &[Rule]) -> bool {
        self.rules.len() == rules.len()
            && self
                .rules
                .iter()
                .zip(rules)
                .all(|(have, want)| NormalRule::from_value(have).is_some_and(|h| h == NormalRule::from_rule(want)))
    }
}

/// A user of the password database (`GET …/users/{user_id}`).
#[derive(Debug, Deserialize)]
struct AuthnUser {
    #[serde(default)]
    is_superuser: bool,
}

/// EMQX's error body.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    code: String,
    #[serde(default)]
    message: String,
}

/// One page of `GET /clients`.
#[derive(Debug, Deserialize)]
struct ClientPage {
    data: Vec<ClientInfo>,
    #[serde(default)]
    meta: PageMeta,
}

#[derive(Debug, Deserialize)]
struct ClientInfo {
    clientid: String,
}

#[derive(Debug, Default, Deserialize)]
struct PageMeta {
    #[serde(default)]
    hasnext: bool,
}

/// `eq $dsp-mqtt.io/managed-by=mqtt-dsp-operator/<installation>/dsp-mqtt.io/owner=<owner>`: the
/// marker topic. `eq` makes EMQX compare it literally; the leading `$` keeps wildcard filters of
/// other clients from ever matching it, so the deny it carries affects nobody.
fn marker_rule(owner: &Owner) -> Rule {
    Rule::new("deny", "all", format!("eq ${OWNER_KEY}={}/{OWNER_RESOURCE_KEY}={}", owner.managed_by(), owner.marker()))
}

/// Rules 2–4 of the module doc: read-only on `topics`.
fn read_only_rules(topics: &[String]) -> Vec<Rule> {
    let mut rules = vec![Rule::new("deny", "publish", "#")];
    rules.extend(widening_denies(topics));
    rules.extend(topics.iter().map(|t| Rule::new("allow", "subscribe", t.clone())));
    rules.extend(deny_all_rules());
    rules
}

/// EMQX matches a subscription against a rule level by level and lets a rule's `+` take a `#`
/// of the subscription (`emqx_topic:match/2`), so `allow subscribe a/+` also admits a
/// subscription to `a/#`, which receives `a/b/c`. For every filter ending in `+`, the literal
/// widened filter is denied first, unless another granted filter legitimately covers it. Only the
/// literal is caught: for `+/x/+`, `+/x/#` is denied but `foo/x/#` is not (EMQX rules cannot say
/// "any first level, then a literal `#`").
fn widening_denies(topics: &[String]) -> Vec<Rule> {
    topics
        .iter()
        .filter_map(|t| {
            let widened = match t.strip_suffix('+') {
                Some(prefix) if prefix.is_empty() || prefix.ends_with('/') => format!("{prefix}#"),
                _ => return None,
            };
            (!topics.iter().any(|g| mqtt_covers(g, &widened)))
                .then(|| Rule::new("deny", "subscribe", format!("eq {widened}")))
        })
        .collect()
}

/// Whether every topic a subscription to `sub` receives is also matched by `filter`, in MQTT's
/// own terms (a `#` or `+` in `sub` is only covered by a wildcard at least as wide).
fn mqtt_covers(filter: &str, sub: &str) -> bool {
    let mut filters = filter.split('/');
    let mut subs = sub.split('/');
    loop {
        match (filters.next(), subs.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(s)) if s != "#" => {}
            (Some(f), Some(s)) if f == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn deny_all_rules() -> [Rule; 2] {
    [Rule::new("deny", "all", "#"), Rule::new("deny", "all", "$SYS/#")]
}

/// The complete rule record of a user of ours.
fn user_rules(owner: &Owner, topics: &[String], enabled: bool) -> Vec<Rule> {
    let mut rules = vec![marker_rule(owner)];
    if enabled {
        rules.extend(read_only_rules(topics));
    } else {
        rules.extend(deny_all_rules());
    }
    rules
}

/// Topic filters EMQX would read differently from MQTT: a leading `eq ` is its exact-match
/// prefix, and `${…}` is a placeholder it renders (`${username}`, `${clientid}`). Neither can be
/// escaped, so such a filter cannot be granted faithfully.
fn check_topics(topics: &[String]) -> Result<(), BackendError> {
    match topics.iter().find(|t| t.starts_with("eq ") || t.contains("${")) {
        Some(t) => Err(BackendError::Unsupported {
            system: SYSTEM,
            what: format!(
                "grant the topic filter {t:?}: EMQX reads a leading \"eq \" and \"${{…}}\" in rule topics as syntax \
                 of its own; choose a filter without them"
            ),
        }),
        None => Ok(()),
    }
}

/// Whether creating something found it already there.
enum Created {
    Yes,
    AlreadyExists,
}

impl EmqxClient {
    /// A client for one EMQX cluster. `token_audience` is the `aud` the cluster's JWT
    /// authenticator checks (from the broker profile); it goes into [`Broker::token_requirements`].
    pub fn new(settings: EmqxSettings, token_audience: impl Into<String>) -> Result<Self, BackendError> {
        let mut api = settings.api_url.clone();
        {
            let mut segments = api.path_segments_mut().map_err(|()| BackendError::Protocol {
                system: SYSTEM,
                operation: "configure",
                object: "API URL".into(),
                detail: format!("{} cannot be a base URL", settings.api_url),
            })?;
            segments.pop_if_empty();
        }
        if !api.path().ends_with("/api/v5")
            && let Ok(mut segments) = api.path_segments_mut()
        {
            segments.extend(["api", "v5"]);
        }
        Ok(Self {
            http: http::client(SYSTEM, &settings.http)?,
            api,
            api_key: settings.api_key,
            api_secret: settings.api_secret,
            timeout: settings.http.timeout,
            authenticator_id: settings.authenticator_id,
            acl_claim_format: settings.acl_claim_format,
            acl_claim_name: settings.acl_claim_name,
            token_audience: token_audience.into(),
        })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.api.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.extend(segments);
        }
        url
    }

    fn user_url(&self, username: &str) -> Url {
        self.url(&["authentication", &self.authenticator_id, "users", username])
    }

    fn rules_url(&self, username: &str) -> Url {
        self.url(&["authorization", "sources", "built_in_database", "rules", "users", username])
    }

    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        operation: &'static str,
        object: &str,
    ) -> Result<Response, BackendError> {
        let mut request =
            self.http.request(method, url).basic_auth(&self.api_key, Some(self.api_secret.expose_secret()));
        if let Some(body) = body {
            request = request.json(body);
        }
        http::send(SYSTEM, operation, object, self.timeout, request).await
    }

    /// The error for an unexpected answer, with EMQX's `code: message` when it sent one.
    async fn failure(response: Response, operation: &'static str, object: &str) -> BackendError {
        let status = response.status();
        let text = http::error_text(response).await;
        let message = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) if e.message.is_empty() => e.code,
            Ok(e) => format!("{}: {}", e.code, e.message),
            Err(_) => text,
        };
        http::status_error(SYSTEM, operation, object, status, message)
    }

    async fn json<T: serde::de::DeserializeOwned>(
        response: Response,
        operation: &'static str,
        object: &str,
    ) -> Result<T, BackendError> {
        let bytes = response.bytes().await.map_err(|e| BackendError::Protocol {
            system: SYSTEM,
            operation,
            object: object.to_owned(),
            detail: format!("cannot read the body: {e}"),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| BackendError::Protocol {
            system: SYSTEM,
            operation,
            object: object.to_owned(),
            detail: format!("unexpected body: {e}"),
        })
    }

    async fn get_rules(&self, username: &str) -> Result<Option<RuleRecord>, BackendError> {
        const OP: &str = "read rules of";
        let object = format!("user {username}");
        let response = self.call(Method::GET, self.rules_url(username), None, OP, &object).await?;
        match response.status() {
            StatusCode::OK => Ok(Some(Self::json(response, OP, &object).await?)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(Self::failure(response, OP, &object).await),
        }
    }

    async fn create_rules(&self, username: &str, rules: &[Rule]) -> Result<Created, BackendError> {
        const OP: &str = "create rules of";
        let object = format!("user {username}");
        let body = json!([{ "username": username, "rules": rules }]);
        let url = self.url(&["authorization", "sources", "built_in_database", "rules", "users"]);
        let response = self.call(Method::POST, url, Some(&body), OP, &object).await?;
        match response.status() {
            s if s.is_success() => Ok(Created::Yes),
            StatusCode::CONFLICT => Ok(Created::AlreadyExists),
            _ => Err(Self::failure(response, OP, &object).await),
        }
    }

    async fn put_rules(&self, username: &str, rules: &[Rule]) -> Result<(), BackendError> {
        const OP: &str = "update rules of";
        let object = format!("user {username}");
        let body = json!({ "username": username, "rules": rules });
        let response = self.call(Method::PUT, self.rules_url(username), Some(&body), OP, &object).await?;
        if response.status().is_success() { Ok(()) } else { Err(Self::failure(response, OP, &object).await) }
    }

    /// Deletes the rule record; false when it was not there.
    async fn delete_rules(&self, username: &str) -> Result<bool, BackendError> {
        const OP: &str = "delete rules of";
        let object = format!("user {username}");
        let response = self.call(Method::DELETE, self.rules_url(username), None, OP, &object).await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(Self::failure(response, OP, &object).await),
        }
    }

    async fn get_user(&self, username: &str) -> Result<Option<AuthnUser>, BackendError> {
        const OP: &str = "read";
        let object = format!("user {username}");
        let response = self.call(Method::GET, self.user_url(username), None, OP, &object).await?;
        match response.status() {
            StatusCode::OK => Ok(Some(Self::json(response, OP, &object).await?)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(Self::failure(response, OP, &object).await),
        }
    }

    async fn create_user(&self, username: &str, password: &SecretString) -> Result<Created, BackendError> {
        const OP: &str = "create";
        let object = format!("user {username}");
        let body = json!({ "user_id": username, "password": password.expose_secret(), "is_superuser": false });
        let url = self.url(&["authentication", &self.authenticator_id, "users"]);
        let response = self.call(Method::POST, url, Some(&body), OP, &object).await?;
        match response.status() {
            s if s.is_success() => Ok(Created::Yes),
            StatusCode::CONFLICT => Ok(Created::AlreadyExists),
            _ => Err(Self::failure(response, OP, &object).await),
        }
    }

    /// Sets the password and clears `is_superuser` (a superuser bypasses every rule). EMQX
    /// requires the password on every update, so the two always travel together.
    async fn put_user(&self, username: &str, password: &SecretString) -> Result<(), BackendError> {
        const OP: &str = "update";
        let object = format!("user {username}");
        let body = json!({ "password": password.expose_secret(), "is_superuser": false });
        let response = self.call(Method::PUT, self.user_url(username), Some(&body), OP, &object).await?;
        if response.status().is_success() { Ok(()) } else { Err(Self::failure(response, OP, &object).await) }
    }

    /// Deletes the user; false when it was not there.
    async fn delete_user(&self, username: &str) -> Result<bool, BackendError> {
        const OP: &str = "delete";
        let object = format!("user {username}");
        let response = self.call(Method::DELETE, self.user_url(username), None, OP, &object).await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(Self::failure(response, OP, &object).await),
        }
    }

    /// Kicks every client (connected, or a session kept for it) of `username`; how many went.
    async fn kick_all(&self, username: &str) -> Result<u32, BackendError> {
        let object = format!("clients of {username}");
        let mut clientids = Vec::new();
        for page in 1..=CLIENTS_MAX_PAGES {
            const OP: &str = "list";
            let mut url = self.url(&["clients"]);
            url.query_pairs_mut()
                .append_pair("username", username)
                .append_pair("page", &page.to_string())
                .append_pair("limit", &CLIENTS_PAGE_LIMIT.to_string());
            let response = self.call(Method::GET, url, None, OP, &object).await?;
            if response.status() != StatusCode::OK {
                return Err(Self::failure(response, OP, &object).await);
            }
            let page: ClientPage = Self::json(response, OP, &object).await?;
            clientids.extend(page.data.into_iter().map(|c| c.clientid));
            if !page.meta.hasnext {
                break;
            }
        }
        let mut kicked = 0;
        for clientid in clientids {
            const OP: &str = "disconnect";
            let object = format!("client {clientid} of {username}");
            let response = self.call(Method::DELETE, self.url(&["clients", &clientid]), None, OP, &object).await?;
            match response.status() {
                s if s.is_success() => kicked += 1,
                // Gone on its own between listing and kicking: what we wanted.
                StatusCode::NOT_FOUND => {}
                _ => return Err(Self::failure(response, OP, &object).await),
            }
        }
        Ok(kicked)
    }

    /// Ours and `owner`'s, or [`BackendError::Foreign`].
    fn check_owner(
        record: &RuleRecord,
        username: &str,
        owner: &Owner,
        operation: &'static str,
    ) -> Result<(), BackendError> {
        match record.owner_marker() {
            Some((managed_by, marker)) if owner.is_managed_by(&managed_by) && marker == owner.marker() => Ok(()),
            Some((managed_by, marker)) => Err(BackendError::Foreign {
                system: SYSTEM,
                operation,
                object: format!(
                    "user {username} (managed by {managed_by} for {marker}, not by {} for {})",
                    owner.managed_by(),
                    owner.marker()
                ),
            }),
            None => Err(BackendError::Foreign { system: SYSTEM, operation, object: format!("user {username}") }),
        }
    }

    fn is_suspended(record: &RuleRecord, owner: &Owner) -> bool {
        record.equals(&user_rules(owner, &[], false))
    }
}

#[async_trait]
impl Broker for EmqxClient {
    fn system(&self) -> System {
        SYSTEM
    }

    fn supports(&self, mode: AuthMode) -> bool {
        matches!(mode, AuthMode::Usrpw | AuthMode::Oauth2)
    }

    async fn ensure_user(&self, grant: &UserGrant) -> Result<Outcome, BackendError> {
        check_topics(&grant.topics)?;
        let username = grant.username.as_str();
        let desired = user_rules(&grant.owner, &grant.topics, grant.enabled);
        // A suspended user's password is one nobody knows (see the module doc).
        let password = || if grant.enabled { grant.password.clone() } else { random_password() };

        let mut outcome = Outcome::Unchanged;
        let mut record = self.get_rules(username).await?;
        let user = self.get_user(username).await?;

        if record.is_none() {
            if user.is_some() {
                return Err(BackendError::Foreign {
                    system: SYSTEM,
                    operation: "manage",
                    object: format!("user {username}"),
                });
            }
            // The rules first: they carry the marker, so that the user never exists without it.
            match self.create_rules(username, &desired).await? {
                Created::Yes => {
                    match self.create_user(username, &password()).await? {
                        Created::Yes => {}
                        Created::AlreadyExists => {
                            // Someone else created the user since we looked: not ours, and our
                            // rules must not stay attached to it.
                            self.delete_rules(username).await?;
                            return Err(BackendError::Foreign {
                                system: SYSTEM,
                                operation: "create",
                                object: format!("user {username}"),
                            });
                        }
                    }
                    if !grant.enabled {
                        self.kick_all(username).await?;
                    }
                    return Ok(Outcome::Created);
                }
                // Created concurrently: read it and carry on as if it had been there.
                Created::AlreadyExists => record = self.get_rules(username).await?,
            }
        }
        let Some(record) = record else {
            return Err(BackendError::Protocol {
                system: SYSTEM,
                operation: "read rules of",
                object: format!("user {username}"),
                detail: "the rules answered 409 on create and 404 on read".into(),
            });
        };
        Self::check_owner(&record, username, &grant.owner, "update")?;

        let rules_differ = !record.equals(&desired);
        let state_changes = Self::is_suspended(&record, &grant.owner) == grant.enabled;
        // The user before the rules: the rules record the state that decides the password.
        match user {
            None => {
                // A crash between rules and user; the user's password is the grant's (or none).
                if let Created::Yes = self.create_user(username, &password()).await? {
                    outcome = Outcome::Created;
                }
            }
            Some(user) if user.is_superuser || state_changes => {
                self.put_user(username, &password()).await?;
                outcome = Outcome::Updated;
            }
            Some(_) => {}
        }
        if rules_differ {
            self.put_rules(username, &desired).await?;
            if outcome == Outcome::Unchanged {
                outcome = Outcome::Updated;
            }
        }
        if !grant.enabled && self.kick_all(username).await? > 0 && outcome == Outcome::Unchanged {
            outcome = Outcome::Updated;
        }
        Ok(outcome)
    }

    async fn set_password(
        &self,
        username: &str,
        password: &SecretString,
        owner: &Owner,
    ) -> Result<Outcome, BackendError> {
        let Some(record) = self.get_rules(username).await? else {
            return match self.get_user(username).await? {
                Some(_) => Err(BackendError::Foreign {
                    system: SYSTEM,
                    operation: "set the password of",
                    object: format!("user {username}"),
                }),
                None => Err(BackendError::Rejected {
                    system: SYSTEM,
                    operation: "set the password of",
                    object: format!("user {username}"),
                    status: 404,
                    message: "no such user".into(),
                }),
            };
        };
        Self::check_owner(&record, username, owner, "set the password of")?;
        if Self::is_suspended(&record, owner) {
            // A suspended user must not be able to connect; resuming sets the grant's password.
            return Ok(Outcome::Unchanged);
        }
        self.put_user(username, password).await?;
        Ok(Outcome::Updated)
    }

    async fn remove_user(&self, username: &str, owner: &Owner) -> Result<Outcome, BackendError> {
        let record = self.get_rules(username).await?;
        let Some(record) = record else {
            return match self.get_user(username).await? {
                Some(_) => Err(BackendError::Foreign {
                    system: SYSTEM,
                    operation: "delete",
                    object: format!("user {username}"),
                }),
                None => Ok(Outcome::Absent),
            };
        };
        Self::check_owner(&record, username, owner, "delete")?;
        // User, sessions, rules: no new connections first, and the rules (with the marker) last,
        // so that live clients never fall through to other sources and a retry still knows the
        // leftovers are ours.
        self.delete_user(username).await?;
        self.kick_all(username).await?;
        self.delete_rules(username).await?;
        Ok(Outcome::Deleted)
    }

    async fn disconnect(&self, identity: &str) -> Result<u32, BackendError> {
        self.kick_all(identity).await
    }

    fn token_requirements(&self, topics: &[String]) -> Result<TokenRequirements, BackendError> {
        check_topics(topics)?;
        let value = match self.acl_claim_format {
            AclClaimFormat::Rules => {
                serde_json::to_value(read_only_rules(topics)).map_err(|e| BackendError::Protocol {
                    system: SYSTEM,
                    operation: "render",
                    object: "acl claim".into(),
                    detail: e.to_string(),
                })?
            }
            AclClaimFormat::Legacy => json!({ "sub": topics }),
        };
        Ok(TokenRequirements {
            audience: self.token_audience.clone(),
            claims: vec![HardcodedClaim { name: self.acl_claim_name.clone(), value }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner { installation: "test".into(), kind: "MqttTransfer".into(), namespace: "ns".into(), name: "t1".into() }
    }

    #[test]
    fn marker_round_trips_through_the_answer_shape() {
        let rules = user_rules(&owner(), &["a/#".into()], true);
        // EMQX answers every rule with qos and retain filled in.
        let answered: Vec<Value> = rules
            .iter()
            .map(|r| json!({"permission": r.permission, "action": r.action, "topic": r.topic, "qos": [2, 1, 0], "retain": "all"}))
            .collect();
        let record = RuleRecord { rules: answered };
        assert_eq!(record.owner_marker(), Some(("mqtt-dsp-operator/test".to_owned(), "MqttTransfer/ns/t1".to_owned())));
        assert!(record.equals(&rules));
        assert!(!record.equals(&user_rules(&owner(), &["b/#".into()], true)));
    }

    #[test]
    fn a_narrower_qos_is_a_difference() {
        let rules = user_rules(&owner(), &["a".into()], false);
        let mut answered: Vec<Value> =
            rules.iter().map(|r| json!({"permission": r.permission, "action": r.action, "topic": r.topic})).collect();
        answered[1]["qos"] = json!([0]);
        assert!(!RuleRecord { rules: answered }.equals(&rules));
    }

    #[test]
    fn read_only_rules_deny_publish_before_any_allow_and_end_in_deny_all() {
        let rules = read_only_rules(&["a/+".into(), "b".into()]);
        let topics: Vec<_> = rules.iter().map(|r| (r.permission, r.action, r.topic.as_str())).collect();
        assert_eq!(
            topics,
            vec![
                ("deny", "publish", "#"),
                ("deny", "subscribe", "eq a/#"),
                ("allow", "subscribe", "a/+"),
                ("allow", "subscribe", "b"),
                ("deny", "all", "#"),
                ("deny", "all", "$SYS/#"),
            ]
        );
    }

    #[test]
    fn a_trailing_plus_cannot_be_widened_to_a_hash() {
        let denies = |topics: &[&str]| {
            widening_denies(&topics.iter().map(|t| t.to_string()).collect::<Vec<_>>())
                .into_iter()
                .map(|r| r.topic)
                .collect::<Vec<_>>()
        };
        assert_eq!(denies(&["a/b/+"]), vec!["eq a/b/#"]);
        assert_eq!(denies(&["+"]), vec!["eq #"]);
        assert_eq!(denies(&["a/+", "a/#"]), Vec::<String>::new(), "a/# is granted in its own right");
        assert_eq!(denies(&["a/b", "a/+b", "a/#"]), Vec::<String>::new());
        assert!(mqtt_covers("a/#", "a/+/c"));
        assert!(!mqtt_covers("a/+", "a/#"));
        assert!(mqtt_covers("a/+", "a/+"));
        assert!(!mqtt_covers("a/b", "a/+"));
    }

    #[test]
    fn topics_emqx_would_misread_are_refused() {
        assert!(check_topics(&["eq a/b".into()]).is_err());
        assert!(check_topics(&["a/${username}".into()]).is_err());
        assert!(check_topics(&["a/$b".into(), "equal/x".into()]).is_ok());
    }
}
