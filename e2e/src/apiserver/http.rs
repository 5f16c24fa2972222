//! Requests to state: authentication, discovery, the resource paths
//! (`/api/v1/…`, `/apis/<group>/<version>/[namespaces/<ns>/]<plural>[/<name>[/status]]`),
//! content types, query parameters, and the watch stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::Shared;
use super::apply;
use super::openapi;
use super::resources::{self, ResourceType};
use super::selectors::{FieldSelector, LabelSelector};
use super::status::{self, ApiError};
use super::store::{self, Applied, Change, ChangeType, DeleteOpts, Msg, State, WriteOpts, present};
use super::strategic;
use super::table;

const MAX_BODY: usize = 3 * 1024 * 1024;
/// How often an open watch that asked for bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);
/// A watch without `timeoutSeconds` ends after this (the server's `--min-request-timeout` range).
const DEFAULT_WATCH_TIMEOUT: u64 = 1800;

struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None | Some("" | "false" | "0") => Ok(false),
            Some("true" | "1") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!("invalid value for {key}: {other:?}"))),
        }
    }
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn ok(body: &Value) -> Response {
    json_response(StatusCode::OK, body)
}

pub(crate) async fn handle(AxumState(shared): AxumState<Arc<Shared>>, request: Request) -> Response {
    route(&shared, request).await.unwrap_or_else(IntoResponse::into_response)
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Length and content compared without early exit.
    given.len() == shared.token.len()
        && given.bytes().zip(shared.token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn route(shared: &Arc<Shared>, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    if !authorized(shared, &parts.headers) {
        return Err(ApiError::unauthorized());
    }
    let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|e| ApiError {
        code: 413,
        reason: "RequestEntityTooLarge",
        message: e.to_string(),
        details: None,
    })?;
    let query =
        Query(url::form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes()).into_owned().collect());
    let path = parts.uri.path().to_owned();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let discovery = |body: Option<Value>| -> Result<Response, ApiError> {
        if parts.method != Method::GET {
            return Err(ApiError::method_not_allowed());
        }
        body.map(|b| ok(&b)).ok_or_else(ApiError::no_such_resource)
    };
    let types = shared.state.lock().unwrap().types.clone();
    match segments.as_slice() {
        ["version"] => discovery(Some(resources::version())),
        ["healthz" | "livez" | "readyz"] => Ok("ok".into_response()),
        ["api" | "apis"] if wants_aggregated(&parts.headers) && parts.method == Method::GET => {
            let body = resources::aggregated(&types, segments == ["api"]);
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, resources::AGGREGATED_DISCOVERY)], body.to_string())
                .into_response())
        }
        ["openapi", "v3"] if accepts_json(&parts.headers) => discovery(Some(openapi::root(&types))),
        ["openapi", "v3", rest @ ..] if accepts_json(&parts.headers) => {
            discovery(openapi::group_version(&types, &rest.join("/")))
        }
        ["openapi", "v3", ..] => Err(ApiError::not_acceptable()),
        ["api"] => discovery(Some(resources::core_versions(&host))),
        ["apis"] => discovery(Some(resources::group_list(&types))),
        ["apis", group] => discovery(resources::group(&types, group)),
        ["api", version] => discovery(resources::resource_list(&types, "", version)),
        ["apis", group, version] => discovery(resources::resource_list(&types, group, version)),
        ["api", version, rest @ ..] => resource(shared, &parts.method, &parts.headers, &query, "", version, rest, body),
        ["apis", group, version, rest @ ..] => {
            resource(shared, &parts.method, &parts.headers, &query, group, version, rest, body)
        }
        _ => Err(ApiError::no_such_resource()),
    }
}

/// Whether JSON is among the media types the client accepts (absent `Accept` means anything).
fn accepts_json(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else { return true };
    accept.split(',').any(|media| {
        let media = media.split(';').next().unwrap_or_default().trim();
        matches!(media, "application/json" | "application/*" | "*/*")
    })
}

/// Whether the client prefers aggregated discovery v2 (the first media type it accepts that
/// this server can give).
fn wants_aggregated(headers: &HeaderMap) -> bool {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    for media in accept.split(',') {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        let is_json = params.first().is_some_and(|m| *m == "application/json" || *m == "*/*");
        if !is_json {
            continue;
        }
        let aggregated = params.contains(&"as=APIGroupDiscoveryList");
        if !aggregated {
            return false;
        }
        if params.contains(&"g=apidiscovery.k8s.io") && params.contains(&"v=v2") {
            return true;
        }
    }
    false
}

/// A request on a resource path, after the group and version.
#[allow(clippy::too_many_arguments)]
fn resource(
    shared: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    query: &Query,
    group: &str,
    version: &str,
    rest: &[&str],
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut state = shared.state.lock().unwrap();
    let namespaced_path = rest.len() >= 3
        && rest[0] == "namespaces"
        && state.find_type(group, version, rest[2]).is_some_and(|t| t.namespaced);
    let (namespace, plural, name, sub) = if namespaced_path {
        (Some(rest[1]), rest[2], rest.get(3).copied(), rest.get(4).copied())
    } else {
        (None, rest[0], rest.get(1).copied(), rest.get(2).copied())
    };
    let max_len = if namespaced_path { 5 } else { 3 };
    let rt = state.find_type(group, version, plural).ok_or_else(ApiError::no_such_resource)?;
    if rest.len() > max_len
        || (!rt.namespaced && namespace.is_some())
        || (rt.namespaced && namespace.is_none() && name.is_some())
    {
        return Err(ApiError::no_such_resource());
    }
    let status = match sub {
        None => false,
        Some("status") if rt.status_subresource => true,
        Some(_) => return Err(ApiError::no_such_resource()),
    };
    let options_kind = match *method {
        Method::POST => "CreateOptions",
        Method::PUT => "UpdateOptions",
        Method::PATCH => "PatchOptions",
        Method::DELETE => "DeleteOptions",
        _ => "ListOptions",
    };
    let dry_run = match query.get("dryRun") {
        None => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::invalid_options(
                options_kind,
                "dryRun",
                &format!("Unsupported value: [\"{other}\"]: supported values: \"All\""),
            ));
        }
    };
    let strict = match query.get("fieldValidation") {
        None | Some("" | "Ignore" | "Warn") => false,
        Some("Strict") => true,
        Some(other) => {
            return Err(ApiError::invalid_options(
                options_kind,
                "fieldValidation",
                &format!("Unsupported value: \"{other}\": supported values: \"Ignore\", \"Strict\", \"Warn\""),
            ));
        }
    };
    if query.get("fieldManager").is_some_and(|m| m.len() > 128) {
        return Err(ApiError::invalid_options(
            options_kind,
            "fieldManager",
            "Too long: may not be more than 128 bytes",
        ));
    }
    let manager = match query.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(m) => m.to_owned(),
        // The server's default: the User-Agent up to its first '/'.
        None => headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.split('/').next().unwrap_or_default().to_owned())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "unknown".into()),
    };
    let opts = WriteOpts { dry_run, strict, manager, apply: None };
    let response = match (method.clone(), name) {
        (Method::GET, Some(name)) if table::wanted(headers) => {
            let object = present(&rt, state.get(&rt, namespace, name).ok_or_else(|| not_found(&rt, name))?);
            let metadata = json!({"resourceVersion": object["metadata"]["resourceVersion"]});
            Ok(table_response(&table::table(&rt, &[object], metadata, query.get("includeObject"))?))
        }
        (Method::GET, Some(name)) => {
            let object = state.get(&rt, namespace, name).ok_or_else(|| not_found(&rt, name))?;
            Ok(ok(&present(&rt, object)))
        }
        (Method::GET, None) if query.flag("watch")? => {
            drop(state);
            return watch(shared, rt, namespace, query);
        }
        (Method::GET, None) if table::wanted(headers) => {
            let mut list = list_value(&state, &rt, namespace, query)?;
            let items = list["items"].as_array_mut().map(std::mem::take).unwrap_or_default();
            // Built-in list items come without apiVersion and kind; rows carry whole objects.
            let items: Vec<Value> = items
                .iter()
                .map(|o| {
                    let mut o = present(&rt, o);
                    o["kind"] = json!(rt.kind);
                    o
                })
                .collect();
            Ok(table_response(&table::table(&rt, &items, list["metadata"].take(), query.get("includeObject"))?))
        }
        (Method::GET, None) => Ok(ok(&list_value(&state, &rt, namespace, query)?)),
        (Method::POST, None) if !status => {
            if rt.namespaced && namespace.is_none() {
                return Err(ApiError::method_not_allowed());
            }
            let object = parse_body(headers, &body)?;
            let created = state.create(&rt, namespace, object, &opts)?;
            Ok(json_response(StatusCode::CREATED, &present(&rt, &created)))
        }
        (Method::PUT, Some(name)) => {
            let object = parse_body(headers, &body)?;
            let updated = state.update(&rt, namespace, name, object, status, &opts, true)?;
            Ok(ok(&present(&rt, &updated)))
        }
        (Method::PATCH, Some(name)) => patch(&mut state, &rt, namespace, name, status, headers, query, &body, &opts),
        (Method::DELETE, Some(name)) if !status => {
            let delete_opts = delete_options(query, &body)?;
            let (object, gone) = state.delete(&rt, namespace, name, &delete_opts)?;
            // Custom resources answer with the object; built-ins with a Status once it is gone.
            if gone && !rt.custom && rt.plural != "customresourcedefinitions" {
                let uid = object["metadata"]["uid"].as_str().unwrap_or_default();
                Ok(ok(&status::success(&rt.group, &rt.plural, name, uid)))
            } else {
                Ok(ok(&present(&rt, &object)))
            }
        }
        (Method::DELETE, None) if !status => {
            let delete_opts = delete_options(query, &body)?;
            let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())?;
            let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default(), &rt)?;
            let mut deleted = Vec::new();
            for object in state.select(&rt, namespace, &labels, &fields) {
                let ns = object["metadata"]["namespace"].as_str().map(str::to_owned);
                let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
                let (object, _) = state.delete(&rt, ns.as_deref(), &name, &delete_opts)?;
                deleted.push(present(&rt, &object));
            }
            let rv = state.rv.to_string();
            Ok(ok(&json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(),
                "metadata": {"resourceVersion": rv}, "items": deleted})))
        }
        _ => Err(ApiError::method_not_allowed()),
    }?;
    if *method != Method::GET && !dry_run {
        state.writes += 1;
    }
    if state.gc_pending {
        shared.gc.notify_one();
    }
    Ok(response)
}

fn not_found(rt: &ResourceType, name: &str) -> ApiError {
    ApiError::not_found(status::Target { group: &rt.group, plural: &rt.plural, name })
}

fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// A POST or PUT body: JSON or YAML.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let parsed: Result<Value, String> = match media_type(headers).as_str() {
        "application/json" | "" => serde_json::from_slice(body).map_err(|e| e.to_string()),
        "application/yaml" => serde_yaml::from_slice(body).map_err(|e| e.to_string()),
        other => {
            return Err(ApiError::unsupported_media_type(
                other,
                &["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"],
            ));
        }
    };
    let value =
        parsed.map_err(|e| ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("couldn't get version/kind; json parse error: not an object"));
    }
    Ok(value)
}

fn delete_options(query: &Query, body: &[u8]) -> Result<DeleteOpts, ApiError> {
    let options: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let dry_run = query.get("dryRun") == Some("All")
        || options["dryRun"].as_array().is_some_and(|d| d.iter().any(|v| v == "All"));
    Ok(DeleteOpts {
        dry_run,
        propagation: options["propagationPolicy"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| query.get("propagationPolicy").map(str::to_owned)),
        uid: options["preconditions"]["uid"].as_str().map(str::to_owned),
        resource_version: options["preconditions"]["resourceVersion"].as_str().map(str::to_owned),
    })
}

#[allow(clippy::too_many_arguments)]
fn patch(
    state: &mut State,
    rt: &ResourceType,
    namespace: Option<&str>,
    name: &str,
    status: bool,
    headers: &HeaderMap,
    query: &Query,
    body: &[u8],
    opts: &WriteOpts,
) -> Result<Response, ApiError> {
    let media = media_type(headers);
    let mut accepted =
        vec!["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"];
    if !rt.custom {
        accepted.push("application/strategic-merge-patch+json");
    }
    if !accepted.contains(&media.as_str()) {
        return Err(ApiError::unsupported_media_type(&media, &accepted));
    }
    let force = query.flag("force")?;
    if query.get("force").is_some() && media != "application/apply-patch+yaml" {
        return Err(ApiError::invalid_options(
            "PatchOptions",
            "force",
            "Forbidden: may not be specified for non-apply patch",
        ));
    }
    if media == "application/apply-patch+yaml" {
        if query.get("fieldManager").is_none_or(str::is_empty) {
            return Err(ApiError::invalid_options(
                "PatchOptions",
                "fieldManager",
                "Required value: is required for apply patch",
            ));
        }
        return server_side_apply(state, rt, namespace, name, status, force, body, opts);
    }
    let old = state.get(rt, namespace, name).cloned().ok_or_else(|| not_found(rt, name))?;
    let mut doc = old;
    if media == "application/json-patch+json" {
        let ops: json_patch::Patch =
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        apply_json_patch(&mut doc, &ops).map_err(|e| ApiError::unprocessable(&e))?;
    } else {
        let patch: Value =
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        if !patch.is_object() {
            return Err(ApiError::bad_request("error decoding patch: a merge patch must be a JSON object"));
        }
        if media == "application/strategic-merge-patch+json" {
            strategic::merge(&mut doc, &patch).map_err(ApiError::bad_request)?;
        } else {
            json_patch::merge(&mut doc, &patch);
        }
    }
    let updated = state.update(rt, namespace, name, doc, status, opts, false)?;
    Ok(ok(&present(rt, &updated)))
}

/// RFC 6902 as the real server applies it (evanphx/json-patch): a `test` for `null` succeeds
/// where the member is absent but its parent exists. kube-runtime's finalizer helper relies on
/// that to add the first finalizer (`test /metadata/finalizers == null`, then `add`).
fn apply_json_patch(doc: &mut Value, ops: &json_patch::Patch) -> Result<(), String> {
    for op in &ops.0 {
        if let json_patch::PatchOperation::Test(test) = op
            && test.value.is_null()
            && doc.pointer(test.path.as_str()).is_none()
        {
            let parent = test.path.as_str().rsplit_once('/').map(|(p, _)| p).unwrap_or_default();
            if doc.pointer(parent).is_some() {
                continue;
            }
            return Err(format!("test operation does not apply: is missing path: {}", test.path.as_str()));
        }
        json_patch::patch(doc, std::slice::from_ref(op)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn server_side_apply(
    state: &mut State,
    rt: &ResourceType,
    namespace: Option<&str>,
    name: &str,
    status: bool,
    force: bool,
    body: &[u8],
    opts: &WriteOpts,
) -> Result<Response, ApiError> {
    let manager = opts.manager.clone();
    let applied: Value =
        serde_yaml::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if !applied.is_object() {
        return Err(ApiError::bad_request("error decoding YAML: the applied configuration must be an object"));
    }
    for (field, want) in [("apiVersion", rt.api_version()), ("kind", rt.kind.clone())] {
        match applied.get(field).and_then(Value::as_str) {
            Some(v) if v == want => {}
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "{field} in the applied configuration ({v}) does not match the request ({want})"
                )));
            }
            None => return Err(ApiError::bad_request(format!("{field} must be set"))),
        }
    }
    if applied["metadata"].get("managedFields").is_some() {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    if let Some(n) = applied["metadata"].get("name").and_then(Value::as_str)
        && n != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        )));
    }
    let Some(old) = state.get(rt, namespace, name).cloned() else {
        if status {
            return Err(not_found(rt, name));
        }
        let mut object = applied.clone();
        object["metadata"]["name"] = Value::String(name.to_owned());
        let opts = WriteOpts { apply: Some(Applied { previous: None, applied: applied.clone() }), ..opts.clone() };
        let created = state.create(rt, namespace, object, &opts)?;
        if !opts.dry_run {
            let uid = created["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
            state.applied.insert((uid, manager, false), applied);
        }
        return Ok(json_response(StatusCode::CREATED, &present(rt, &created)));
    };
    let uid = old["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    let key = (uid.clone(), manager.clone(), status);
    // What this request applies: on `/status` only the status; on the object everything but a
    // status the subresource guards.
    let effective = |v: &Value| -> Value {
        if status {
            json!({"status": v.get("status").cloned().unwrap_or(json!({}))})
        } else if rt.status_subresource {
            let mut v = v.clone();
            if let Some(m) = v.as_object_mut() {
                m.remove("status");
            }
            v
        } else {
            v.clone()
        }
    };
    let applied_part = effective(&applied);
    let previous = state.applied.get(&key).map(effective);
    let schema = rt.schema.as_ref();
    let owner =
        apply::Owner { manager: manager.clone(), apply: true, api_version: rt.api_version(), time: store::now() };
    if !force {
        let owners = state.owners.get(&uid).cloned().unwrap_or_default();
        let conflicts: Vec<(String, String)> = apply::conflicts(&owners, &old, &applied_part, schema, &owner)
            .into_iter()
            .map(|(path, o)| (path, o.printed()))
            .collect();
        if !conflicts.is_empty() {
            let target = status::Target { group: &rt.group, plural: &rt.plural, name };
            return Err(ApiError::apply_conflicts(target, &conflicts));
        }
    }
    let mut merged = old;
    apply::merge(&mut merged, &applied_part, previous.as_ref(), schema);
    let opts = WriteOpts { apply: Some(Applied { previous, applied: applied_part }), ..opts.clone() };
    let updated = state.update(rt, namespace, name, merged, status, &opts, false)?;
    if !opts.dry_run {
        state.applied.insert(key, applied);
    }
    Ok(ok(&present(rt, &updated)))
}

/// A list item as the server sends it: custom resources keep `apiVersion` and `kind`; built-in
/// kinds' items in a typed list carry neither.
fn list_item(rt: &ResourceType, object: &Value) -> Value {
    let mut item = present(rt, object);
    if !rt.custom
        && let Some(m) = item.as_object_mut()
    {
        m.remove("apiVersion");
        m.remove("kind");
    }
    item
}

fn table_response(table: &Value) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, table::TABLE_MEDIA)], table.to_string()).into_response()
}

fn list_value(state: &State, rt: &ResourceType, namespace: Option<&str>, query: &Query) -> Result<Value, ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())?;
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default(), rt)?;
    let rv_param = query.get("resourceVersion").filter(|v| !v.is_empty());
    match (query.get("resourceVersionMatch"), rv_param) {
        (Some(_), None) => {
            return Err(invalid_list_options(
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        (Some("Exact"), Some(rv)) => {
            let rv = parse_rv(rv)?;
            if rv < state.history_start {
                return Err(ApiError::expired(format!("too old resource version: {rv} ({})", state.history_start)));
            }
        }
        (Some("NotOlderThan") | None, _) => {}
        (Some(other), _) => {
            return Err(invalid_list_options(
                "resourceVersionMatch",
                &format!("Unsupported value: \"{other}\": supported values: \"Exact\", \"NotOlderThan\", \"\""),
            ));
        }
    }
    let limit: usize = match query.get("limit") {
        None | Some("") => 0,
        Some(l) => l.parse().map_err(|_| ApiError::bad_request(format!("invalid limit: {l}")))?,
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (list_rv, start) = match query.get("continue").filter(|c| !c.is_empty()) {
        None => (state.rv, None),
        Some(token) => {
            let bad = || {
                ApiError::bad_request(
                    "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
                )
            };
            let decoded: Value =
                b64.decode(token).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or_else(bad)?;
            let rv = decoded["rv"].as_u64().ok_or_else(bad)?;
            if rv < state.history_start {
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                ));
            }
            let start = decoded["start"].as_str().ok_or_else(bad)?.to_owned();
            (rv, Some(start))
        }
    };
    let key = |o: &Value| {
        format!(
            "{}/{}",
            o["metadata"]["namespace"].as_str().unwrap_or_default(),
            o["metadata"]["name"].as_str().unwrap_or_default()
        )
    };
    let matching: Vec<Value> = state
        .select(rt, namespace, &labels, &fields)
        .into_iter()
        .filter(|o| start.as_ref().is_none_or(|s| key(o) > *s))
        .collect();
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    let items: Vec<Value> = if limit > 0 && matching.len() > limit {
        let page = &matching[..limit];
        let token = json!({"rv": list_rv, "start": key(&page[limit - 1])});
        metadata["continue"] = json!(b64.encode(token.to_string()));
        metadata["remainingItemCount"] = json!(matching.len() - limit);
        page.iter().map(|o| list_item(rt, o)).collect()
    } else {
        matching.iter().map(|o| list_item(rt, o)).collect()
    };
    Ok(
        json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": metadata, "items": items}),
    )
}

fn invalid_list_options(field: &str, message: &str) -> ApiError {
    ApiError::invalid(
        "ListOptions",
        "meta.k8s.io",
        "",
        &[crate::schema::FieldError { path: field.into(), message: message.into() }],
    )
}

fn parse_rv(rv: &str) -> Result<u64, ApiError> {
    rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))
}

/// What one watch selects.
struct WatchFilter {
    rt: ResourceType,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl WatchFilter {
    fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }

    fn resource(&self) -> (String, String) {
        (self.rt.group.clone(), self.rt.plural.clone())
    }

    /// The event a change is for this watch: a modification moving an object into or out of
    /// the selection is an ADDED or DELETED, as on the real server.
    fn line(&self, change: &Change) -> Option<Bytes> {
        if change.res != self.resource() || self.namespace.as_ref().is_some_and(|ns| *ns != change.namespace) {
            return None;
        }
        let now = self.matches(&change.object);
        let kind = match change.kind {
            ChangeType::Added => now.then_some("ADDED"),
            ChangeType::Deleted => now.then_some("DELETED"),
            ChangeType::Modified => {
                let before = change.old.as_ref().is_some_and(|o| self.matches(o));
                match (before, now) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                }
            }
        }?;
        Some(event_line(kind, &present(&self.rt, &change.object)))
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        event_line(
            "BOOKMARK",
            &json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": metadata}),
        )
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch(shared: &Arc<Shared>, rt: ResourceType, namespace: Option<&str>, query: &Query) -> Result<Response, ApiError> {
    let filter = WatchFilter {
        labels: LabelSelector::parse(query.get("labelSelector").unwrap_or_default())?,
        fields: FieldSelector::parse(query.get("fieldSelector").unwrap_or_default(), &rt)?,
        namespace: namespace.map(str::to_owned),
        rt,
    };
    let bookmarks = query.flag("allowWatchBookmarks")?;
    let send_initial = query.flag("sendInitialEvents")?;
    match (send_initial, query.get("resourceVersionMatch")) {
        (true, Some("NotOlderThan")) if bookmarks => {}
        (true, Some("NotOlderThan")) => {
            return Err(invalid_list_options(
                "allowWatchBookmarks",
                "Required value: allowWatchBookmarks must be set to true when sendInitialEvents is set",
            ));
        }
        (true, _) => {
            return Err(invalid_list_options(
                "resourceVersionMatch",
                "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        (false, Some(_)) => {
            return Err(invalid_list_options(
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ));
        }
        (false, None) => {}
    }
    let timeout = match query.get("timeoutSeconds") {
        None | Some("") => DEFAULT_WATCH_TIMEOUT,
        Some(t) => t.parse().map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {t}")))?,
    };
    let from = match query.get("resourceVersion").filter(|v| !v.is_empty() && *v != "0") {
        None => None,
        Some(rv) => Some(parse_rv(rv)?),
    };
    let mut initial = Vec::new();
    let mut expired = false;
    let receiver = {
        let state = shared.state.lock().unwrap();
        let receiver = state.tx.subscribe();
        match from {
            Some(rv) if !send_initial => {
                if rv < state.history_start {
                    let error = ApiError::expired(format!("too old resource version: {rv} ({})", state.history_start));
                    initial.push(event_line("ERROR", &error.status_body()));
                    expired = true;
                } else {
                    initial.extend(state.history.iter().filter(|c| c.rv > rv).filter_map(|c| filter.line(c)));
                }
            }
            _ => {
                let objects = state.select(&filter.rt, namespace, &filter.labels, &filter.fields);
                initial.extend(objects.iter().map(|o| event_line("ADDED", &present(&filter.rt, o))));
                if send_initial {
                    initial.push(filter.bookmark(state.rv, true));
                }
            }
        }
        receiver
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let shared = shared.clone();
    tokio::spawn(async move {
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if !expired {
            stream_changes(&shared, filter, receiver, tx, bookmarks, Duration::from_secs(timeout)).await;
        }
    });
    let stream =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx)) },
        );
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

/// Live changes until the timeout, the client leaving, or `compact`. A watch that falls too
/// far behind is ended; its client resumes from the last resourceVersion it saw.
async fn stream_changes(
    shared: &Shared,
    filter: WatchFilter,
    mut receiver: broadcast::Receiver<Msg>,
    tx: mpsc::Sender<Bytes>,
    bookmarks: bool,
    timeout: Duration,
) {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut ticks = tokio::time::interval(BOOKMARK_INTERVAL);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            message = receiver.recv() => {
                let change = match message {
                    Ok(Msg::Change(change)) => change,
                    Ok(Msg::Gone(res)) if res != filter.resource() => continue,
                    _ => return,
                };
                if let Some(line) = filter.line(&change)
                    && tx.send(line).await.is_err()
                {
                    return;
                }
            }
            _ = ticks.tick(), if bookmarks => {
                // Everything committed up to the bookmark's resourceVersion is sent before it.
                let (pending, rv) = {
                    let state = shared.state.lock().unwrap();
                    let mut pending = Vec::new();
                    loop {
                        match receiver.try_recv() {
                            Ok(Msg::Change(change)) => pending.push(change),
                            Ok(Msg::Gone(res)) if res != filter.resource() => {}
                            Ok(Msg::Close | Msg::Gone(_)) => return,
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(_) => return,
                        }
                    }
                    (pending, state.rv)
                };
                for change in pending {
                    if let Some(line) = filter.line(&change)
                        && tx.send(line).await.is_err()
                    {
                        return;
                    }
                }
                if tx.send(filter.bookmark(rv, false)).await.is_err() {
                    return;
                }
            }
        }
    }
}
