//! RabbitMQ 3.10+ with the MQTT, Web MQTT, management and OAuth 2.0 plugins (domain.md §6).
//!
//! usrpw mode goes through the management HTTP API: a user (tagged with the ownership marker),
//! vhost permissions that let it own its MQTT subscription queues and read `amq.topic` but never
//! write to it, and topic permissions on `amq.topic` whose `read` pattern admits exactly the
//! subscriptions that lie within the granted MQTT filters (RabbitMQ checks the subscription's
//! AMQP binding key: MQTT `/` becomes `.`, `+` becomes `*`). Suspending deletes the user, which
//! closes its connections at once; resuming creates it again (with fresh credentials).
//!
//! oauth2 mode needs nothing in the broker: the token carries scopes in the claim named by
//! `auth_oauth2.additional_scopes_key`, with the broker's `resource_server_id` as audience
//! ([`Broker::token_requirements`]); suspending closes the connections of the token's subject
//! while the identity provider stops issuing tokens.

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use url::Url;

use super::{Broker, TokenRequirements, UserGrant};
use crate::api::AuthMode;
use crate::backends::http::{self, HttpSettings};
use crate::backends::identity::HardcodedClaim;
use crate::backends::{BackendError, ExposeSecret, OWNER_RESOURCE_KEY, Outcome, Owner, SecretString, System};
use crate::config::BrokerProfile;

const SYSTEM: System = System::Rabbitmq;

/// How to reach RabbitMQ's management API and how its MQTT and OAuth 2.0 plugins are set up.
#[derive(Clone, Debug)]
pub struct RabbitmqSettings {
    /// Management API base URL (`https://host:15671`).
    pub management_url: Url,
    /// Admin user (tag `administrator`).
    pub username: String,
    /// Its password.
    pub password: SecretString,
    /// Virtual host of the MQTT plugin.
    pub vhost: String,
    /// Exchange MQTT topics map to (`amq.topic`).
    pub exchange: String,
    /// `auth_oauth2.resource_server_id`.
    pub resource_server_id: String,
    /// `auth_oauth2.additional_scopes_key`: the token claim that carries the scopes.
    pub additional_scopes_key: String,
    /// Timeout and CA bundle.
    pub http: HttpSettings,
}

impl RabbitmqSettings {
    /// Settings for a `type: rabbitmq` broker profile, with its admin password and CA bundle
    /// already read.
    pub fn from_profile(profile: &BrokerProfile, password: SecretString, ca_bundle_pem: Option<String>) -> Self {
        let rabbit = profile.rabbitmq.clone().unwrap_or_default();
        Self {
            management_url: profile.admin_url.clone(),
            username: profile.admin_username.clone(),
            password,
            vhost: rabbit.vhost,
            exchange: rabbit.exchange,
            resource_server_id: rabbit.resource_server_id,
            additional_scopes_key: rabbit.additional_scopes_key,
            http: HttpSettings { timeout: std::time::Duration::from_secs(profile.timeout_seconds), ca_bundle_pem },
        }
    }
}

/// The management API client.
pub struct RabbitmqClient {
    http: reqwest::Client,
    settings: RabbitmqSettings,
}

/// Vhost permissions of a consumer: its own MQTT subscription queues, reading `amq.topic`;
/// writing (publishing) to `amq.topic` is not granted.
fn consumer_permissions() -> Value {
    json!({
        "configure": "^mqtt-subscription-.*$",
        "write": "^mqtt-subscription-.*$",
        "read": "^(mqtt-subscription-.*|amq\\.topic)$"
    })
}

impl RabbitmqClient {
    /// A client for one broker profile.
    pub fn new(settings: RabbitmqSettings) -> Result<Self, BackendError> {
        Ok(Self { http: http::client(SYSTEM, &settings.http)?, settings })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.settings.management_url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("api").extend(segments);
        }
        url
    }

    /// One management API call; 404 is returned as None, other failures as errors.
    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&Value>,
        operation: &'static str,
        object: &str,
    ) -> Result<Option<Value>, BackendError> {
        let method_name = method.to_string();
        let mut request = self
            .http
            .request(method, self.url(segments))
            .basic_auth(&self.settings.username, Some(self.settings.password.expose_secret()));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = http::send(SYSTEM, operation, object, self.settings.http.timeout, request).await?;
        match response.status() {
            // Absent on a read or a delete; a 404 on a write means a wrong URL or vhost.
            StatusCode::NOT_FOUND if matches!(method_name.as_str(), "GET" | "DELETE") => Ok(None),
            s if s.is_success() => {
                let text = response.text().await.unwrap_or_default();
                Ok(Some(if text.trim().is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str(&text).unwrap_or(Value::Null)
                }))
            }
            s => {
                let body = http::error_text(response).await;
                // The management API answers {"error": ..., "reason": ...}.
                let message = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or(body);
                Err(http::status_error(SYSTEM, operation, object, s, message))
            }
        }
    }

    async fn owned_user(
        &self,
        username: &str,
        owner: &Owner,
        operation: &'static str,
    ) -> Result<Option<Value>, BackendError> {
        let object = format!("user {username}");
        let Some(user) = self.call(Method::GET, &["users", username], None, operation, &object).await? else {
            return Ok(None);
        };
        if is_ours(&user, owner) {
            Ok(Some(user))
        } else {
            Err(BackendError::Foreign { system: SYSTEM, operation, object })
        }
    }

    /// Brings vhost and topic permissions to what is given; returns whether it wrote.
    async fn ensure_permissions(
        &self,
        username: &str,
        vhost_permissions: &Value,
        topics: &Value,
    ) -> Result<bool, BackendError> {
        let object = format!("permissions of {username}");
        let vhost = self.settings.vhost.as_str();
        let mut wrote = false;
        let current = self.call(Method::GET, &["permissions", vhost, username], None, "read", &object).await?;
        if !current.is_some_and(|have| same_fields(vhost_permissions, &have, &["configure", "write", "read"])) {
            self.call(Method::PUT, &["permissions", vhost, username], Some(vhost_permissions), "grant", &object)
                .await?;
            wrote = true;
        }
        let object = format!("topic permissions of {username}");
        let current = self.call(Method::GET, &["topic-permissions", vhost, username], None, "read", &object).await?;
        let matches = current
            .as_ref()
            .and_then(Value::as_array)
            .is_some_and(|list| list.len() == 1 && same_fields(topics, &list[0], &["exchange", "write", "read"]));
        if !matches {
            self.call(Method::PUT, &["topic-permissions", vhost, username], Some(topics), "grant", &object).await?;
            wrote = true;
        }
        Ok(wrote)
    }
}

#[async_trait]
impl Broker for RabbitmqClient {
    fn system(&self) -> System {
        SYSTEM
    }

    fn supports(&self, _mode: AuthMode) -> bool {
        true
    }

    async fn ensure_user(&self, grant: &UserGrant) -> Result<Outcome, BackendError> {
        let username = grant.username.as_str();
        let object = format!("user {username}");
        let existing = self.owned_user(username, &grant.owner, "update").await?;
        if !grant.enabled {
            // Suspended: the user is removed. RabbitMQ closes a deleted user's connections at
            // once, whereas the connection list that `disconnect` reads lags by the statistics
            // interval (5 s by default). Resuming creates the user again with the grant's
            // (fresh) password.
            return match existing {
                Some(_) => {
                    self.call(Method::DELETE, &["users", username], None, "suspend", &object).await?;
                    self.disconnect(username).await?;
                    Ok(Outcome::Updated)
                }
                None => Ok(Outcome::Unchanged),
            };
        }
        let created = match existing {
            Some(user) if !tag_list(&user).contains(&grant.owner.managed_by()) => {
                // Adopted from the marker without an installation: the tags are rewritten into
                // this installation's, keeping the password (its hash, as RabbitMQ answered it).
                let mut body = json!({"tags": tags(&grant.owner)});
                for field in ["password_hash", "hashing_algorithm"] {
                    body[field] = user.get(field).cloned().unwrap_or(Value::Null);
                }
                self.call(Method::PUT, &["users", username], Some(&body), "update", &object).await?;
                false
            }
            Some(_) => false,
            None => {
                // The user is created once with its password; a resync never rewrites it (the
                // API does not reveal passwords, and rewriting one would be a write every time).
                let body = json!({"password": grant.password.expose_secret(), "tags": tags(&grant.owner)});
                self.call(Method::PUT, &["users", username], Some(&body), "create", &object).await?;
                true
            }
        };
        let topics = topic_permissions(&self.settings.exchange, &grant.topics);
        let wrote = self.ensure_permissions(username, &consumer_permissions(), &topics).await?;
        Ok(match (created, wrote) {
            (true, _) => Outcome::Created,
            (false, true) => Outcome::Updated,
            (false, false) => Outcome::Unchanged,
        })
    }

    async fn set_password(
        &self,
        username: &str,
        password: &SecretString,
        owner: &Owner,
    ) -> Result<Outcome, BackendError> {
        let object = format!("user {username}");
        if self.owned_user(username, owner, "set the password of").await?.is_none() {
            return Err(BackendError::Rejected {
                system: SYSTEM,
                operation: "set the password of",
                object,
                status: 404,
                message: "no such user".into(),
            });
        }
        let body = json!({"password": password.expose_secret(), "tags": tags(owner)});
        self.call(Method::PUT, &["users", username], Some(&body), "set the password of", &object).await?;
        Ok(Outcome::Updated)
    }

    async fn remove_user(&self, username: &str, owner: &Owner) -> Result<Outcome, BackendError> {
        if self.owned_user(username, owner, "delete").await?.is_none() {
            return Ok(Outcome::Absent);
        }
        // Deleting a user removes its permissions; its connections are closed explicitly.
        self.call(Method::DELETE, &["users", username], None, "delete", &format!("user {username}")).await?;
        self.disconnect(username).await?;
        Ok(Outcome::Deleted)
    }

    async fn disconnect(&self, identity: &str) -> Result<u32, BackendError> {
        let object = format!("connections of {identity}");
        let connections = self.call(Method::GET, &["connections"], None, "list", &object).await?.unwrap_or(Value::Null);
        let mut closed = 0;
        for connection in connections.as_array().into_iter().flatten() {
            if connection.get("user").and_then(Value::as_str) != Some(identity) {
                continue;
            }
            let Some(name) = connection.get("name").and_then(Value::as_str) else { continue };
            // A connection that is already gone (404) counts as closed.
            self.call(Method::DELETE, &["connections", name], None, "close", &object).await?;
            closed += 1;
        }
        Ok(closed)
    }

    fn token_requirements(&self, topics: &[String]) -> Result<TokenRequirements, BackendError> {
        let rs = &self.settings.resource_server_id;
        let vhost = scope_vhost(&self.settings.vhost);
        let mut scopes: Vec<String> = ["configure", "write", "read"]
            .iter()
            .map(|permission| format!("{rs}.{permission}:{vhost}/mqtt-subscription-*"))
            .collect();
        for pattern in topics.iter().flat_map(|t| scope_patterns(t)) {
            scopes.push(format!("{rs}.read:{vhost}/{}/{pattern}", self.settings.exchange));
        }
        Ok(TokenRequirements {
            audience: rs.clone(),
            claims: vec![HardcodedClaim { name: self.settings.additional_scopes_key.clone(), value: json!(scopes) }],
        })
    }
}

/// The user's tags: our marker and the owning resource's.
fn tags(owner: &Owner) -> String {
    format!("{},{OWNER_RESOURCE_KEY}={}", owner.managed_by(), owner.marker())
}

/// Whether the user carries our marker and the owning resource's (the user of another
/// MqttTransfer is as foreign as a hand-made one).
fn is_ours(user: &Value, owner: &Owner) -> bool {
    let tags = tag_list(user);
    let resource = format!("{OWNER_RESOURCE_KEY}={}", owner.marker());
    tags.iter().any(|t| owner.is_managed_by(t)) && tags.contains(&resource)
}

/// A user's tags: 3.10 answers them as a comma-separated string, later versions as a list.
fn tag_list(user: &Value) -> Vec<String> {
    match user.get("tags") {
        Some(Value::String(s)) => s.split(',').map(|t| t.trim().to_owned()).collect(),
        Some(Value::Array(list)) => list.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

fn same_fields(want: &Value, have: &Value, fields: &[&str]) -> bool {
    fields.iter().all(|f| want.get(*f) == have.get(*f))
}

/// Topic permissions on `exchange`: never write, read exactly what lies within `topics`.
fn topic_permissions(exchange: &str, topics: &[String]) -> Value {
    let read = format!("^(?:{})$", topics.iter().map(|t| binding_key_regex(t)).collect::<Vec<_>>().join("|"));
    json!({"exchange": exchange, "write": "^$", "read": read})
}

/// A regex over AMQP binding keys that admits every MQTT subscription within `filter`:
/// a literal level only itself, `+` any single level (a literal or `*`, never `#`), a trailing
/// `#` the parent itself and anything below it.
fn binding_key_regex(filter: &str) -> String {
    let levels: Vec<&str> = filter.split('/').collect();
    let mut out = String::new();
    for (i, level) in levels.iter().enumerate() {
        let first = i == 0;
        match *level {
            "#" if first => return ".*".into(),
            "#" => {
                out.push_str("(?:\\..*)?");
                return out;
            }
            "+" => {
                if !first {
                    out.push_str("\\.");
                }
                out.push_str("[^.#]+");
            }
            literal => {
                if !first {
                    out.push_str("\\.");
                }
                out.push_str(&escape_level(literal));
            }
        }
    }
    out
}

/// A literal MQTT level as it appears in a binding key, escaped for a regex. The MQTT plugin
/// turns `.` inside a level into `/`; `{` and `}` are escaped as hex so that RabbitMQ's variable
/// expansion (`{username}`) never applies to them.
fn escape_level(level: &str) -> String {
    let mut out = String::new();
    for c in level.chars() {
        match c {
            '.' => out.push('/'),
            '{' => out.push_str("\\x7b"),
            '}' => out.push_str("\\x7d"),
            c if "\\^$|?*+()[]".contains(c) => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// Scope routing-key patterns (RabbitMQ wildcard `*` matches any text) for one MQTT filter. A
/// wildcard cannot stop at a level boundary, so `+` is wider in a scope than in a topic
/// permission (documented limitation).
fn scope_patterns(filter: &str) -> Vec<String> {
    let key: Vec<String> = filter
        .split('/')
        .map(|level| match level {
            "+" | "#" => "*".to_owned(),
            literal => literal.replace('.', "/"),
        })
        .collect();
    match filter.strip_suffix("/#") {
        // `a/#` also matches `a` itself.
        Some(parent) => vec![scope_patterns(parent).remove(0), key.join(".")],
        None => vec![key.join(".")],
    }
}

/// The vhost as written in a scope: the default vhost `/` is URL-encoded.
fn scope_vhost(vhost: &str) -> String {
    vhost.replace('/', "%2F")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The patterns use only syntax that the regex crate shares with RabbitMQ's PCRE (`\x7b`
    /// included), so the regex crate stands in for the broker here; the real broker is tested
    /// in e2e/tests/rabbitmq_broker.rs.
    fn admits(filter: &str, binding_key: &str) -> bool {
        let pattern = format!("^(?:{})$", binding_key_regex(filter));
        regex::Regex::new(&pattern).unwrap().is_match(binding_key)
    }

    #[test]
    fn topic_permissions_admit_exactly_the_subscriptions_within_the_filter() {
        assert!(admits("factory/line-1/#", "factory.line-1"));
        assert!(admits("factory/line-1/#", "factory.line-1.temp"));
        assert!(admits("factory/line-1/#", "factory.line-1.*.x"));
        assert!(admits("factory/line-1/#", "factory.line-1.#"));
        assert!(!admits("factory/line-1/#", "factory.line-2.temp"));
        assert!(!admits("factory/line-1/#", "factory.#"));
        assert!(admits("a/+/b", "a.x.b"));
        assert!(admits("a/+/b", "a.*.b"));
        assert!(!admits("a/+/b", "a.#.b"));
        assert!(!admits("a/+/b", "a.x.y.b"));
        assert!(!admits("a/+/b", "a.x.c"));
        assert!(admits("#", "anything.at.all"));
        assert!(admits("sensor/temperature", "sensor.temperature"));
        assert!(!admits("sensor/temperature", "sensor.*"));
        assert!(admits("v1.0/x", "v1/0.x"));
        // RabbitMQ expands `{username}` in permission patterns; a literal brace must not become one.
        assert!(admits("a{username}", "a{username}"));
        assert!(!binding_key_regex("a{username}").contains("{username}"));
    }

    #[test]
    fn consumers_may_never_publish() {
        let p = topic_permissions("amq.topic", &["a/#".into()]);
        assert_eq!(p["write"], "^$");
        assert!(!consumer_permissions()["write"].as_str().unwrap().contains("amq"));
    }

    #[test]
    fn scopes_for_oauth2() {
        assert_eq!(scope_patterns("a/+/b"), vec!["a.*.b"]);
        assert_eq!(scope_patterns("a/#"), vec!["a", "a.*"]);
        assert_eq!(scope_patterns("#"), vec!["*"]);
        assert_eq!(scope_vhost("/"), "%2F");
    }

    #[test]
    fn ownership_from_tags_in_both_spellings() {
        let owner = Owner {
            installation: "test".into(),
            kind: "MqttTransfer".into(),
            namespace: "ns".into(),
            name: "t".into(),
        };
        let other = Owner { name: "u".into(), ..owner.clone() };
        assert!(is_ours(&json!({"tags": tags(&owner)}), &owner));
        assert!(is_ours(
            &json!({"tags": ["management", "mqtt-dsp-operator", "dsp-mqtt.io/owner=MqttTransfer/ns/t"]}),
            &owner
        ));
        assert!(!is_ours(&json!({"tags": tags(&owner)}), &other));
        assert_eq!(tags(&owner), "mqtt-dsp-operator/test,dsp-mqtt.io/owner=MqttTransfer/ns/t");
        // Another installation's user of the same resource is not ours; the form without an
        // installation (above, as a list) is adopted.
        let staging = Owner { installation: "staging".into(), ..owner.clone() };
        assert!(!is_ours(&json!({"tags": tags(&staging)}), &owner));
        assert!(!is_ours(&json!({"tags": "mqtt-dsp-operator"}), &owner));
        assert!(!is_ours(&json!({"tags": "administrator"}), &owner));
        assert!(!is_ours(&json!({}), &owner));
    }
}
