//! What the API server checks before storing an object, for the kinds served here: names,
//! Secrets' data, events.k8s.io Events' required fields, CRD names, and custom resources against
//! their CRD schema (pruning of unknown fields, then [`crate::schema::validate`]).

use base64::Engine;
use serde_json::{Map, Value};

use super::resources::{NameRule, ResourceType};
use crate::schema::FieldError;

const SUBDOMAIN_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
'-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation \
is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MESSAGE: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation \
is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

pub(crate) fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(crate) fn is_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label)
}

fn invalid(path: &str, value: &str, why: &str) -> FieldError {
    FieldError { path: path.into(), message: format!("Invalid value: \"{value}\": {why}") }
}

/// `metadata.name` (and a namespace's own name) by the kind's rule.
pub(crate) fn name_errors(rt: &ResourceType, name: &str) -> Vec<FieldError> {
    match rt.name_rule {
        NameRule::Subdomain if !is_subdomain(name) => {
            let why = if name.len() > 253 { "must be no more than 253 characters" } else { SUBDOMAIN_MESSAGE };
            vec![invalid("metadata.name", name, why)]
        }
        NameRule::Label if !is_label(name) => {
            let why = if name.len() > 63 { "must be no more than 63 characters" } else { LABEL_MESSAGE };
            vec![invalid("metadata.name", name, why)]
        }
        _ => Vec::new(),
    }
}

/// A qualified name (`[prefix/]name`): label keys, finalizers.
pub(crate) fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = key.rsplit_once('/').map_or((None, key), |(p, n)| (Some(p), n));
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    name_ok && prefix.is_none_or(is_subdomain)
}

const QUALIFIED_NAME_MESSAGE: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must \
start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation \
is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

/// Labels, finalizers and owner references, as the server checks every object's metadata.
pub(crate) fn metadata_errors(object: &Value) -> Vec<FieldError> {
    let mut out = Vec::new();
    let meta = &object["metadata"];
    if let Some(labels) = meta["labels"].as_object() {
        for (key, value) in labels {
            let value = value.as_str().unwrap_or_default();
            if !is_qualified_name(key) {
                out.push(invalid("metadata.labels", key, QUALIFIED_NAME_MESSAGE));
            }
            let value_ok = value.is_empty()
                || (value.len() <= 63
                    && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                    && value.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && value.ends_with(|c: char| c.is_ascii_alphanumeric()));
            if !value_ok {
                out.push(invalid(
                    "metadata.labels",
                    value,
                    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', \
                     and must start and end with an alphanumeric character",
                ));
            }
        }
    }
    if let Some(finalizers) = meta["finalizers"].as_array() {
        for (i, f) in finalizers.iter().enumerate() {
            let f = f.as_str().unwrap_or_default();
            if !is_qualified_name(f) {
                out.push(invalid(&format!("metadata.finalizers[{i}]"), f, QUALIFIED_NAME_MESSAGE));
            }
        }
    }
    if let Some(refs) = meta["ownerReferences"].as_array() {
        for r in refs {
            for (field, what) in [("apiVersion", "version"), ("kind", "kind"), ("name", "name"), ("uid", "uid")] {
                let v = r[field].as_str().unwrap_or_default();
                if v.is_empty() {
                    out.push(invalid(
                        &format!("metadata.ownerReferences.{field}"),
                        v,
                        &format!("{what} must not be empty"),
                    ));
                }
            }
        }
        let controllers: Vec<String> = refs
            .iter()
            .filter(|r| r["controller"] == true)
            .map(|r| format!("{}/{}", r["kind"].as_str().unwrap_or_default(), r["name"].as_str().unwrap_or_default()))
            .collect();
        if controllers.len() > 1 {
            out.push(FieldError {
                path: "metadata.ownerReferences".into(),
                message: format!(
                    "Invalid value: {}: Only one reference can have Controller set to true. Found \"true\" in references for {}",
                    Value::Array(refs.clone()),
                    controllers.join(" and ")
                ),
            });
        }
    }
    out
}

/// A Secret as stored: `stringData` folded into `data` (base64, winning over `data`), `type`
/// defaulted to `Opaque`. Undecodable `data` is the server's 400 (it cannot even decode the body).
pub(crate) fn normalize_secret(secret: &mut Value) -> Result<(), String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(data) = secret.get("data").and_then(Value::as_object) {
        for (key, value) in data {
            let text = value.as_str().ok_or_else(|| format!("data[{key}]: expected a base64 string"))?;
            b64.decode(text).map_err(|e| format!("illegal base64 data in data[{key}]: {e}"))?;
        }
    }
    if let Some(Value::Object(string_data)) = secret.as_object_mut().and_then(|s| s.remove("stringData")) {
        let data = secret["data"].as_object().cloned().unwrap_or_default();
        let mut data = data;
        for (key, value) in string_data {
            data.insert(key, Value::String(b64.encode(value.as_str().unwrap_or_default())));
        }
        secret["data"] = Value::Object(data);
    }
    if secret.get("type").is_none_or(Value::is_null) {
        secret["type"] = Value::String("Opaque".into());
    }
    Ok(())
}

/// Secret and ConfigMap keys.
pub(crate) fn data_key_errors(object: &Value, fields: &[&str]) -> Vec<FieldError> {
    let mut out = Vec::new();
    for field in fields {
        if let Some(map) = object.get(*field).and_then(Value::as_object) {
            for key in map.keys() {
                let ok = !key.is_empty()
                    && key.len() <= 253
                    && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                if !ok {
                    out.push(invalid(field, key, "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
                }
            }
        }
    }
    out
}

/// A Secret or ConfigMap marked `immutable: true` keeps its data and the mark.
pub(crate) fn immutable_data_errors(object: &Value, old: &Value, fields: &[&str]) -> Vec<FieldError> {
    let mut out = Vec::new();
    if old["immutable"] != true {
        return out;
    }
    for field in fields {
        if object.get(*field) != old.get(*field) {
            out.push(FieldError {
                path: (*field).into(),
                message: "Forbidden: field is immutable when `immutable` is set".into(),
            });
        }
    }
    if object["immutable"] != true {
        out.push(FieldError {
            path: "immutable".into(),
            message: "Forbidden: field is immutable when `immutable` is set".into(),
        });
    }
    out
}

/// A Lease's durations and transitions are not negative (duration: positive).
pub(crate) fn lease_errors(lease: &Value) -> Vec<FieldError> {
    let mut out = Vec::new();
    let spec = &lease["spec"];
    if let Some(d) = spec["leaseDurationSeconds"].as_i64().filter(|d| *d <= 0) {
        out.push(FieldError {
            path: "spec.leaseDurationSeconds".into(),
            message: format!("Invalid value: {d}: must be greater than 0"),
        });
    }
    if let Some(t) = spec["leaseTransitions"].as_i64().filter(|t| *t < 0) {
        out.push(FieldError {
            path: "spec.leaseTransitions".into(),
            message: format!("Invalid value: {t}: must be greater than or equal to 0"),
        });
    }
    out
}

/// events.k8s.io/v1 Event on create: the fields the server requires.
pub(crate) fn event_errors(event: &Value) -> Vec<FieldError> {
    let mut out = Vec::new();
    let required = |field: &str| event.get(field).and_then(Value::as_str).is_none_or(str::is_empty);
    for field in ["eventTime", "reportingController", "reportingInstance", "action", "reason"] {
        if required(field) {
            out.push(FieldError { path: field.into(), message: "Required value".into() });
        }
    }
    for field in ["reportingInstance", "action", "reason"] {
        if event.get(field).and_then(Value::as_str).is_some_and(|s| s.len() > 128) {
            out.push(FieldError { path: field.into(), message: "Too long: may not be more than 128 bytes".into() });
        }
    }
    if event.get("note").and_then(Value::as_str).is_some_and(|s| s.len() > 1024) {
        out.push(FieldError { path: "note".into(), message: "Too long: may not be more than 1024 bytes".into() });
    }
    match event.get("type").and_then(Value::as_str) {
        Some("Normal" | "Warning") => {}
        other => out.push(FieldError {
            path: "type".into(),
            message: format!(
                "Unsupported value: \"{}\": supported values: \"Normal\", \"Warning\"",
                other.unwrap_or_default()
            ),
        }),
    }
    out
}

/// Fields an Event has under another name in events.k8s.io/v1 than in core/v1.
const EVENT_FIELDS_RENAMED: [(&str, &str); 7] = [
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

/// An Event converted from core/v1 to events.k8s.io/v1 (`to_events_api`) or back.
pub(crate) fn convert_event(event: &Value, to_events_api: bool) -> Value {
    let mut out = event.as_object().cloned().unwrap_or_default();
    for (core, events_api) in EVENT_FIELDS_RENAMED {
        let (from, to) = if to_events_api { (core, events_api) } else { (events_api, core) };
        if let Some(value) = out.remove(from) {
            out.insert(to.to_owned(), value);
        }
    }
    let api_version = if to_events_api { "events.k8s.io/v1" } else { "v1" };
    out.insert("apiVersion".into(), Value::String(api_version.into()));
    out.insert("kind".into(), Value::String("Event".into()));
    Value::Object(out)
}

/// A CRD's name is `<plural>.<group>`.
pub(crate) fn crd_errors(crd: &Value) -> Vec<FieldError> {
    let spec = &crd["spec"];
    let expected = format!(
        "{}.{}",
        spec["names"]["plural"].as_str().unwrap_or_default(),
        spec["group"].as_str().unwrap_or_default()
    );
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    let mut out = Vec::new();
    if name != expected {
        out.push(invalid("metadata.name", name, "must be spec.names.plural+\".\"+spec.group"));
    }
    if spec["versions"].as_array().is_none_or(|v| v.is_empty()) {
        out.push(FieldError { path: "spec.versions".into(), message: "Required value".into() });
    }
    if let Some(versions) = spec["versions"].as_array() {
        let storage = versions.iter().filter(|v| v["storage"] == true).count();
        if storage != 1 {
            out.push(FieldError {
                path: "spec.versions".into(),
                message: format!(
                    "Invalid value: {}: must have exactly one version marked as storage version",
                    Value::Array(versions.clone())
                ),
            });
        }
        for (i, version) in versions.iter().enumerate() {
            let Some(schema) = version["schema"].get("openAPIV3Schema") else {
                out.push(FieldError {
                    path: format!("spec.versions[{i}].schema.openAPIV3Schema"),
                    message: "Required value: schemas are required".into(),
                });
                continue;
            };
            // The structural-schema rules; anyOf/oneOf/allOf are allowed by the server in
            // restricted forms, so only the flat violations are refused here.
            for violation in crate::schema::structural_violations(schema) {
                if violation.contains("uses anyOf")
                    || violation.contains("uses oneOf")
                    || violation.contains("uses allOf")
                {
                    continue;
                }
                out.push(FieldError {
                    path: format!("spec.versions[{i}].schema.openAPIV3Schema"),
                    message: format!("Invalid value: structural schema violation: {violation}"),
                });
            }
        }
    }
    if !matches!(spec["scope"].as_str(), Some("Namespaced" | "Cluster")) {
        out.push(FieldError {
            path: "spec.scope".into(),
            message: format!(
                "Unsupported value: \"{}\": supported values: \"Cluster\", \"Namespaced\"",
                spec["scope"].as_str().unwrap_or_default()
            ),
        });
    }
    out
}

/// Drops the fields `schema` does not declare (the server's pruning of structural schemas) and
/// returns their paths, as strict field validation reports them (`.spec.foo`).
pub(crate) fn prune(schema: &Value, value: &mut Value, path: &str, root: bool, pruned: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let child_path = format!("{path}.{key}");
                match props.and_then(|p| p.get(&key)).or(additional) {
                    Some(child_schema) => {
                        if let Some(child) = map.get_mut(&key) {
                            prune(child_schema, child, &child_path, false, pruned);
                        }
                    }
                    None => {
                        map.remove(&key);
                        pruned.push(child_path);
                    }
                }
            }
        }
        Value::Array(items) => {
            let item_schema = schema.get("items").cloned().unwrap_or(Value::Null);
            for (i, item) in items.iter_mut().enumerate() {
                prune(&item_schema, item, &format!("{path}[{i}]"), false, pruned);
            }
        }
        _ => {}
    }
}

/// The object without `metadata` and `status`: what a change of bumps `metadata.generation`.
pub(crate) fn generation_relevant(object: &Value) -> Map<String, Value> {
    let mut out = object.as_object().cloned().unwrap_or_default();
    out.remove("metadata");
    out.remove("status");
    out.remove("apiVersion");
    out.remove("kind");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_string_data_is_folded_into_data() {
        let mut s = json!({"stringData": {"a": "hi"}, "data": {"a": "eA==", "b": "eQ=="}});
        normalize_secret(&mut s).unwrap();
        assert_eq!(s, json!({"data": {"a": "aGk=", "b": "eQ=="}, "type": "Opaque"}));
        assert!(normalize_secret(&mut json!({"data": {"a": "!!"}})).is_err());
    }

    #[test]
    fn names() {
        assert!(is_subdomain("a.b-c"));
        assert!(!is_subdomain("Bad_Name"));
        assert!(!is_label("a.b"));
    }
}
