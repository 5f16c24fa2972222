//! EMQX 5 REST API double (`/api/v5`): the built-in password database's users, the built-in
//! authorization database's per-user rules, and live clients.
//!
//! Follows domain.md §6 and EMQX's own sources (`emqx_authn_api`, `emqx_authz_api_mnesia`,
//! `emqx_authz_mnesia`, `emqx_authz_rule_raw`, `emqx_mgmt_api_clients`, `emqx_dashboard`):
//! - API key and secret as HTTP basic auth: no `Authorization` header → 401
//!   `AUTHORIZATION_HEADER_ERROR`, a wrong pair → 401 `BAD_API_KEY_OR_SECRET`; errors are
//!   `{"code": …, "message": …}`;
//! - `POST /authentication/password_based:built_in_database/users` `{user_id, password,
//!   is_superuser?}` → 201 `{user_id, is_superuser}`, 409 `ALREADY_EXISTS`; `GET|PUT|DELETE
//!   …/users/{user_id}` → 200 / 200 / 204, 404 `NOT_FOUND` ("User not found"); PUT requires the
//!   password and resets `is_superuser` to false unless given; another authenticator id → 404;
//! - `POST /authorization/sources/built_in_database/rules/users` with an array of `{username,
//!   rules}` → 204, 409 `ALREADY_EXISTS` when any username already has a record (nothing is
//!   written then); `GET …/rules/users/{username}` → 200 `{username, rules}` with each rule
//!   answered as EMQX formats it (`qos` and `retain` filled in with their defaults `[0,1,2]` and
//!   `all`), 404 `NOT_FOUND`; `PUT` → 204; `DELETE` → 204 or 404. Rules need `permission`
//!   (`allow`|`deny`), `action` (`publish`|`subscribe`|`all`) and `topic`;
//! - `GET /clients?username=&page=&limit=` → `{data: [...], meta: {page, limit, count, hasnext}}`;
//!   `DELETE /clients/{clientid}` → 204, 404 `CLIENTID_NOT_FOUND`. Deleting a user does not end
//!   its sessions, as in EMQX: only a kick does;
//! - rule evaluation ([`EmqxDouble::authorize`]) as `emqx_authz_mnesia` does it: the user's rules
//!   in order, first match wins, `eq ` means literal, `#`/`+` never match a leading `$` level,
//!   and a rule's `+` takes a subscription's `#` too (EMQX's looseness, kept on purpose).
//!
//! Left out: other authenticators and authorization sources, clientid and `all` rule records,
//! pagination of the user and rule lists, password hashing (the double keeps passwords to answer
//! [`EmqxDouble::can_connect`]), API key roles (403 `UNAUTHORIZED_ROLE`), clusters and nodes.
//! Stricter than EMQX: unknown body fields are refused with 400 (EMQX ignores some), and a PUT
//! whose body names another username than the path gets 400 (EMQX fails on it with 500).
//! UNVERIFIED: the body of EMQX's 404 for an unknown path (here `NOT_FOUND`, "Request Path Not
//! Found").

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, middleware};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{DoubleServer, start};
use crate::tls::TestCa;

/// The authenticator the double serves.
pub const AUTHENTICATOR_ID: &str = "password_based:built_in_database";

/// A user of the password database, as the double holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoubleUser {
    /// `user_id`.
    pub user_id: String,
    /// Kept in clear so that tests can check who could connect (EMQX stores a hash).
    pub password: String,
    /// A superuser passes every authorization check.
    pub is_superuser: bool,
}

/// One stored rule (normalised as EMQX stores it: one topic, explicit qos and retain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoubleRule {
    /// `allow` or `deny`.
    pub permission: String,
    /// `publish`, `subscribe` or `all`.
    pub action: String,
    /// Topic filter, `eq ` prefix included when given.
    pub topic: String,
    /// QoS levels the rule applies to.
    pub qos: Vec<u8>,
    /// `all`, `true` or `false`.
    pub retain: String,
}

impl DoubleRule {
    fn to_json(&self) -> Value {
        let retain = match self.retain.as_str() {
            "true" => json!(true),
            "false" => json!(false),
            _ => json!("all"),
        };
        json!({
            "permission": self.permission,
            "action": self.action,
            "topic": self.topic,
            "qos": self.qos,
            "retain": retain,
        })
    }
}

/// What a client may do, as [`EmqxDouble::authorize`] decides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A rule allowed it.
    Allow,
    /// A rule denied it.
    Deny,
    /// No rule of the user matched: EMQX would ask the next source, then `no_match`.
    NoMatch,
}

#[derive(Debug, Default)]
struct EmqxState {
    users: BTreeMap<String, DoubleUser>,
    rules: BTreeMap<String, Vec<DoubleRule>>,
    /// clientid → username.
    clients: BTreeMap<String, String>,
    kicked: Vec<String>,
}

/// The EMQX double: its state, shared with the server it runs in.
#[derive(Clone)]
pub struct EmqxDouble {
    state: Arc<Mutex<EmqxState>>,
    api_key: Arc<str>,
    api_secret: Arc<str>,
}

impl EmqxDouble {
    /// A double accepting one API key and secret.
    pub fn new(api_key: &str, api_secret: &str) -> Self {
        Self { state: Arc::default(), api_key: api_key.into(), api_secret: api_secret.into() }
    }

    /// Serves the double over HTTPS with a certificate from `ca`.
    pub async fn start(&self, ca: &TestCa) -> std::io::Result<DoubleServer> {
        start(self.router(), ca).await
    }

    /// The API routes (with authentication, without logging and faults).
    pub fn router(&self) -> Router {
        let api = Router::new()
            .route("/api/v5/authentication/{authenticator}/users", post(create_user))
            .route(
                "/api/v5/authentication/{authenticator}/users/{user_id}",
                get(get_user).put(put_user).delete(delete_user),
            )
            .route("/api/v5/authorization/sources/built_in_database/rules/users", post(create_rules))
            .route(
                "/api/v5/authorization/sources/built_in_database/rules/users/{username}",
                get(get_rules).put(put_rules).delete(delete_rules),
            )
            .route("/api/v5/clients", get(list_clients))
            .route("/api/v5/clients/{clientid}", delete(kick_client))
            // route_layer: an unknown path is a 404 whatever the credentials.
            .route_layer(middleware::from_fn_with_state(self.clone(), authenticate));
        api.fallback(|| async { error(StatusCode::NOT_FOUND, "NOT_FOUND", "Request Path Not Found").into_response() })
            .with_state(self.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EmqxState> {
        self.state.lock().unwrap()
    }

    /// Test hook: a client with this id is now connected as `username` (a reconnect with the
    /// same id takes the session over, as in MQTT).
    pub fn connect_client(&self, clientid: &str, username: &str) {
        self.lock().clients.insert(clientid.to_owned(), username.to_owned());
    }

    /// Client ids currently connected as `username`.
    pub fn connected_clients(&self, username: &str) -> Vec<String> {
        self.lock().clients.iter().filter(|(_, u)| *u == username).map(|(c, _)| c.clone()).collect()
    }

    /// Every connected client id.
    pub fn all_clients(&self) -> Vec<String> {
        self.lock().clients.keys().cloned().collect()
    }

    /// Client ids kicked through the API, in order.
    pub fn kicked(&self) -> Vec<String> {
        self.lock().kicked.clone()
    }

    /// A user, if present.
    pub fn user(&self, user_id: &str) -> Option<DoubleUser> {
        self.lock().users.get(user_id).cloned()
    }

    /// A username's rule record, if present, as the API would answer its rules.
    pub fn rules(&self, username: &str) -> Option<Vec<DoubleRule>> {
        self.lock().rules.get(username).cloned()
    }

    /// Test hook: a user created behind the operator's back (a foreign user).
    pub fn insert_user(&self, user_id: &str, password: &str, is_superuser: bool) {
        let user = DoubleUser { user_id: user_id.to_owned(), password: password.to_owned(), is_superuser };
        self.lock().users.insert(user_id.to_owned(), user);
    }

    /// Test hook: replaces a username's rule record with raw rules (as an administrator would
    /// POST them). Panics on a rule the API would refuse.
    pub fn insert_rules(&self, username: &str, rules: Vec<Value>) {
        let rules = rules.iter().map(|r| parse_rule(r).unwrap()).collect();
        self.lock().rules.insert(username.to_owned(), rules);
    }

    /// Test hook: turns the superuser flag of a user on or off.
    pub fn set_superuser(&self, user_id: &str, is_superuser: bool) {
        if let Some(user) = self.lock().users.get_mut(user_id) {
            user.is_superuser = is_superuser;
        }
    }

    /// Whether a CONNECT with this username and password would pass the password database.
    pub fn can_connect(&self, username: &str, password: &str) -> bool {
        self.lock().users.get(username).is_some_and(|u| u.password == password)
    }

    /// What the built-in authorization database decides for `username` doing `action`
    /// (`publish` or `subscribe`) on `topic` (a topic name, or a filter for subscribe). A
    /// superuser is always allowed.
    pub fn authorize(&self, username: &str, action: &str, topic: &str) -> Decision {
        let state = self.lock();
        if state.users.get(username).is_some_and(|u| u.is_superuser) {
            return Decision::Allow;
        }
        let Some(rules) = state.rules.get(username) else { return Decision::NoMatch };
        for rule in rules {
            if rule.action != "all" && rule.action != action {
                continue;
            }
            let matched = match rule.topic.strip_prefix("eq ") {
                Some(literal) => literal == topic,
                None => topic_matches(topic, &rule.topic),
            };
            if matched {
                return if rule.permission == "allow" { Decision::Allow } else { Decision::Deny };
            }
        }
        Decision::NoMatch
    }
}

/// `emqx_topic:match/2`: does `name` (a topic, or a subscription's filter) fall under `filter`?
/// `+` in the filter takes any one level, `#` the rest; a name starting with `$` is never
/// matched by a filter starting with a wildcard.
pub fn topic_matches(name: &str, filter: &str) -> bool {
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut names = name.split('/');
    let mut filters = filter.split('/');
    loop {
        match (names.next(), filters.next()) {
            (_, Some("#")) => return true,
            (Some(_), Some("+")) => {}
            (Some(n), Some(f)) if n == f => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// An error answer in EMQX's shape.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "code": self.code, "message": self.message }))).into_response()
    }
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError { status, code, message: message.into() }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    error(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
}

type Answer = Result<Response, ApiError>;

async fn authenticate(State(double): State<EmqxDouble>, headers: HeaderMap, request: Request, next: Next) -> Response {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return error(StatusCode::UNAUTHORIZED, "AUTHORIZATION_HEADER_ERROR", "Support authorization: basic/bearer ")
            .into_response();
    };
    let pair = value
        .strip_prefix("Basic ")
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok());
    let expected = format!("{}:{}", double.api_key, double.api_secret);
    if pair.as_deref() != Some(expected.as_str()) {
        return error(StatusCode::UNAUTHORIZED, "BAD_API_KEY_OR_SECRET", "Check api_key/api_secret").into_response();
    }
    next.run(request).await
}

/// Parses a JSON body into `T`, or answers 400 the way EMQX's schema check does.
fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("bad request body: {e}")))
}

fn check_authenticator(authenticator: &str) -> Result<(), ApiError> {
    if authenticator == AUTHENTICATOR_ID {
        Ok(())
    } else {
        Err(error(StatusCode::NOT_FOUND, "NOT_FOUND", format!("Authenticator '{authenticator}' does not exist")))
    }
}

fn user_json(user: &DoubleUser) -> Value {
    json!({ "user_id": user.user_id, "is_superuser": user.is_superuser })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    user_id: String,
    password: String,
    #[serde(default)]
    is_superuser: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateUser {
    password: String,
    #[serde(default)]
    is_superuser: bool,
}

async fn create_user(State(double): State<EmqxDouble>, Path(authenticator): Path<String>, body: Bytes) -> Answer {
    check_authenticator(&authenticator)?;
    let request: CreateUser = parse_body(&body)?;
    if request.user_id.is_empty() || request.password.is_empty() {
        return Err(bad_request("user_id and password must not be empty"));
    }
    let mut state = double.lock();
    if state.users.contains_key(&request.user_id) {
        return Err(error(StatusCode::CONFLICT, "ALREADY_EXISTS", "User already exists"));
    }
    crate::logs::register_secret(&request.password);
    let user = DoubleUser { user_id: request.user_id, password: request.password, is_superuser: request.is_superuser };
    let answer = user_json(&user);
    state.users.insert(user.user_id.clone(), user);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

fn user_not_found() -> ApiError {
    error(StatusCode::NOT_FOUND, "NOT_FOUND", "User not found")
}

async fn get_user(State(double): State<EmqxDouble>, Path((authenticator, user_id)): Path<(String, String)>) -> Answer {
    check_authenticator(&authenticator)?;
    match double.lock().users.get(&user_id) {
        Some(user) => Ok(Json(user_json(user)).into_response()),
        None => Err(user_not_found()),
    }
}

async fn put_user(
    State(double): State<EmqxDouble>,
    Path((authenticator, user_id)): Path<(String, String)>,
    body: Bytes,
) -> Answer {
    check_authenticator(&authenticator)?;
    let request: UpdateUser = parse_body(&body)?;
    if request.password.is_empty() {
        return Err(bad_request("password must not be empty"));
    }
    match double.lock().users.get_mut(&user_id) {
        Some(user) => {
            user.password = request.password;
            user.is_superuser = request.is_superuser;
            Ok(Json(user_json(user)).into_response())
        }
        None => Err(user_not_found()),
    }
}

async fn delete_user(
    State(double): State<EmqxDouble>,
    Path((authenticator, user_id)): Path<(String, String)>,
) -> Answer {
    check_authenticator(&authenticator)?;
    match double.lock().users.remove(&user_id) {
        Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        None => Err(user_not_found()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesForUsername {
    username: String,
    rules: Vec<Value>,
}

/// `emqx_authz_rule_raw:parse_rule/1` restricted to what the API schema admits.
fn parse_rule(raw: &Value) -> Result<DoubleRule, String> {
    let object = raw.as_object().ok_or("a rule must be an object")?;
    if let Some(key) = object.keys().find(|k| !["permission", "action", "topic", "qos", "retain"].contains(&k.as_str()))
    {
        return Err(format!("unknown field {key} in rule"));
    }
    let permission = match object.get("permission").and_then(Value::as_str) {
        Some(p @ ("allow" | "deny")) => p.to_owned(),
        other => return Err(format!("invalid permission {other:?}")),
    };
    let action = match object.get("action").and_then(Value::as_str) {
        Some(a @ ("publish" | "subscribe" | "all")) => a.to_owned(),
        other => return Err(format!("invalid action {other:?}")),
    };
    let topic = match object.get("topic").and_then(Value::as_str) {
        Some(t) if !t.is_empty() => t.to_owned(),
        _ => return Err("topic is required".into()),
    };
    let qos = match object.get("qos") {
        None | Some(Value::Null) => vec![0, 1, 2],
        Some(Value::Array(levels)) => levels
            .iter()
            .map(|q| q.as_u64().filter(|q| *q <= 2).map(|q| q as u8).ok_or(format!("invalid qos {q}")))
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => return Err(format!("invalid qos {other}")),
    };
    let retain = match object.get("retain") {
        None | Some(Value::Null) => "all".to_owned(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::String(s)) if s == "all" => "all".to_owned(),
        Some(other) => return Err(format!("invalid retain {other}")),
    };
    Ok(DoubleRule { permission, action, topic, qos, retain })
}

fn parse_rules(raw: &[Value]) -> Result<Vec<DoubleRule>, ApiError> {
    raw.iter().map(parse_rule).collect::<Result<Vec<_>, _>>().map_err(bad_request)
}

fn rules_json(username: &str, rules: &[DoubleRule]) -> Value {
    json!({ "username": username, "rules": rules.iter().map(DoubleRule::to_json).collect::<Vec<_>>() })
}

async fn create_rules(State(double): State<EmqxDouble>, body: Bytes) -> Answer {
    let request: Vec<RulesForUsername> = parse_body(&body)?;
    let mut parsed = Vec::with_capacity(request.len());
    for entry in &request {
        if entry.username.is_empty() {
            return Err(bad_request("username must not be empty"));
        }
        parsed.push((entry.username.clone(), parse_rules(&entry.rules)?));
    }
    let mut state = double.lock();
    let existing: Vec<&str> =
        parsed.iter().filter(|(u, _)| state.rules.contains_key(u)).map(|(u, _)| u.as_str()).collect();
    if !existing.is_empty() {
        let message = format!("Users '{}' already exist", existing.join(","));
        return Err(error(StatusCode::CONFLICT, "ALREADY_EXISTS", message));
    }
    state.rules.extend(parsed);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_rules(State(double): State<EmqxDouble>, Path(username): Path<String>) -> Answer {
    match double.lock().rules.get(&username) {
        Some(rules) => Ok(Json(rules_json(&username, rules)).into_response()),
        None => Err(error(StatusCode::NOT_FOUND, "NOT_FOUND", "Not Found")),
    }
}

async fn put_rules(State(double): State<EmqxDouble>, Path(username): Path<String>, body: Bytes) -> Answer {
    let request: RulesForUsername = parse_body(&body)?;
    if request.username != username {
        return Err(bad_request("Bad username or bad rule schema"));
    }
    let rules = parse_rules(&request.rules)?;
    // PUT stores whether or not a record existed, as EMQX's store_rules does.
    double.lock().rules.insert(username, rules);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_rules(State(double): State<EmqxDouble>, Path(username): Path<String>) -> Answer {
    match double.lock().rules.remove(&username) {
        Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        None => Err(error(StatusCode::NOT_FOUND, "NOT_FOUND", "Username Not Found")),
    }
}

async fn list_clients(State(double): State<EmqxDouble>, Query(query): Query<HashMap<String, String>>) -> Answer {
    let number = |key: &str, default: usize, max: usize| match query.get(key) {
        None => Ok(default),
        Some(v) => v.parse::<usize>().ok().filter(|n| (1..=max).contains(n)).ok_or(()),
    };
    let (Ok(page), Ok(limit)) = (number("page", 1, usize::MAX), number("limit", 100, 10_000)) else {
        return Err(error(StatusCode::BAD_REQUEST, "INVALID_PARAMETER", "page_limit_invalid"));
    };
    let state = double.lock();
    let matching: Vec<(&String, &String)> =
        state.clients.iter().filter(|(_, u)| query.get("username").is_none_or(|want| *u == want)).collect();
    let data: Vec<Value> = matching
        .iter()
        .skip((page - 1) * limit)
        .take(limit)
        .map(|(clientid, username)| {
            json!({
                "clientid": clientid,
                "username": username,
                "connected": true,
                "node": "emqx@127.0.0.1",
                "proto_name": "MQTT",
                "proto_ver": 5,
                "ip_address": "127.0.0.1",
                "clean_start": true,
            })
        })
        .collect();
    let hasnext = page * limit < matching.len();
    let meta = json!({ "page": page, "limit": limit, "count": matching.len(), "hasnext": hasnext });
    Ok(Json(json!({ "data": data, "meta": meta })).into_response())
}

async fn kick_client(State(double): State<EmqxDouble>, Path(clientid): Path<String>) -> Answer {
    let mut state = double.lock();
    match state.clients.remove(&clientid) {
        Some(_) => {
            state.kicked.push(clientid);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        None => Err(error(StatusCode::NOT_FOUND, "CLIENTID_NOT_FOUND", "Client ID not found")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_matching_follows_emqx() {
        assert!(topic_matches("a/b", "a/+"));
        assert!(topic_matches("a/b/c", "a/#"));
        assert!(topic_matches("a", "a/#"));
        assert!(!topic_matches("b/c", "a/#"));
        assert!(!topic_matches("$SYS/x", "#"));
        assert!(topic_matches("$SYS/x", "$SYS/#"));
        // A subscription filter is matched level by level: `+` in the rule takes `+` or `#`.
        assert!(topic_matches("a/+", "a/+"));
        assert!(!topic_matches("#", "a/#"));
        assert!(topic_matches("a/#", "a/+"), "as loose as emqx_topic:match/2");
    }
}
