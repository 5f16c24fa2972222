//! Server-side printing: a `get` or `list` whose `Accept` asks for
//! `application/json;as=Table;v=v1;g=meta.k8s.io` (what `kubectl get` sends) is answered with a
//! `meta.k8s.io/v1` `Table`, as the real server does.
//!
//! Custom resources get their CRD version's `additionalPrinterColumns` (or `Age` when it has
//! none) after `Name`, evaluated like the real server: the first result of the column's JSONPath,
//! `date` columns as an age, a missing value as an empty cell. JSONPath is limited to what CRDs
//! use in practice: `.field` steps, `[n]` and `[?(@.field=="value")]` filters. Built-ins get
//! their real columns for Namespaces (`Status`), Secrets (`Type`, `Data`) and ConfigMaps
//! (`Data`), `Name` and `Created At` (the server's default) otherwise. Rows carry the object's
//! metadata as a `PartialObjectMetadata` (`includeObject=Metadata`, the default), the whole object
//! (`Object`) or nothing (`None`). Watches are not converted.

use axum::http::{HeaderMap, header};
use serde_json::{Value, json};

use super::resources::ResourceType;
use super::status::ApiError;

/// The Table media type the response carries.
pub(crate) const TABLE_MEDIA: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// Whether the client's first acceptable media type is a `meta.k8s.io` Table (v1 or v1beta1).
pub(crate) fn wanted(headers: &HeaderMap) -> bool {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    for media in accept.split(',') {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        if !params.first().is_some_and(|m| *m == "application/json" || *m == "*/*") {
            continue;
        }
        if !params.contains(&"as=Table") {
            return false;
        }
        if params.contains(&"g=meta.k8s.io") && (params.contains(&"v=v1") || params.contains(&"v=v1beta1")) {
            return true;
        }
    }
    false
}

struct Column {
    name: String,
    kind: String,
    format: String,
    description: String,
    priority: i64,
    /// JSONPath for custom columns; built-in cells are computed by name.
    path: Option<String>,
}

fn column(name: &str, kind: &str, format: &str, description: &str, path: Option<&str>) -> Column {
    Column {
        name: name.into(),
        kind: kind.into(),
        format: format.into(),
        description: description.into(),
        priority: 0,
        path: path.map(str::to_owned),
    }
}

const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const CREATED_DESCRIPTION: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

fn columns(rt: &ResourceType) -> Vec<Column> {
    let mut out = vec![column("Name", "string", "name", NAME_DESCRIPTION, None)];
    if rt.custom {
        if rt.printer_columns.is_empty() {
            out.push(column("Age", "date", "", CREATED_DESCRIPTION, Some(".metadata.creationTimestamp")));
        }
        for c in &rt.printer_columns {
            let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            out.push(Column {
                name: text("name"),
                kind: text("type"),
                format: text("format"),
                description: c["description"].as_str().map(str::to_owned).unwrap_or_else(|| {
                    "Custom resource definition column (in JSONPath format): ".to_owned() + &text("jsonPath")
                }),
                priority: c["priority"].as_i64().unwrap_or(0),
                path: Some(text("jsonPath")),
            });
        }
        return out;
    }
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "namespaces") => {
            out.push(column("Status", "string", "", "The status of the namespace", None));
            out.push(column("Age", "string", "", CREATED_DESCRIPTION, None));
        }
        ("", "secrets") => {
            out.push(column("Type", "string", "", "The type of the secret", None));
            out.push(column("Data", "string", "", "The number of entries in the secret", None));
            out.push(column("Age", "string", "", CREATED_DESCRIPTION, None));
        }
        ("", "configmaps") => {
            out.push(column("Data", "string", "", "The number of entries in the configmap", None));
            out.push(column("Age", "string", "", CREATED_DESCRIPTION, None));
        }
        _ => out.push(column("Created At", "date", "", CREATED_DESCRIPTION, None)),
    }
    out
}

fn cell(rt: &ResourceType, c: &Column, object: &Value) -> Value {
    let age = || object["metadata"]["creationTimestamp"].as_str().map(age).map(Value::String).unwrap_or(Value::Null);
    if c.name == "Name" && c.format == "name" {
        return object["metadata"]["name"].clone();
    }
    if let Some(path) = &c.path {
        return match first_result(object, path) {
            None | Some(Value::Null) => Value::Null,
            Some(value) => typed(&c.kind, value),
        };
    }
    let entries = |k: &str| json!(object[k].as_object().map_or(0, |m| m.len()));
    match (rt.plural.as_str(), c.name.as_str()) {
        ("namespaces", "Status") => object["status"]["phase"].clone(),
        ("secrets", "Type") => object["type"].clone(),
        ("secrets", "Data") => entries("data"),
        ("configmaps", "Data") => {
            json!(
                object["data"].as_object().map_or(0, |m| m.len())
                    + object["binaryData"].as_object().map_or(0, |m| m.len())
            )
        }
        (_, "Age") => age(),
        (_, "Created At") => object["metadata"]["creationTimestamp"].clone(),
        _ => Value::Null,
    }
}

/// A custom column's value as the real server prints it: strings as text, dates as an age,
/// numbers and booleans as themselves.
fn typed(kind: &str, value: &Value) -> Value {
    match (kind, value) {
        ("date", Value::String(s)) => Value::String(age(s)),
        ("string", Value::String(s)) => Value::String(s.clone()),
        ("string", other) => Value::String(other.to_string()),
        ("integer" | "number", Value::Number(_)) | ("boolean", Value::Bool(_)) => value.clone(),
        _ => Value::Null,
    }
}

/// The first value `path` selects (`.a.b`, `[0]`, `[?(@.type=="Ready")]`); `None` when nothing
/// matches or the expression is beyond that subset.
fn first_result<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = vec![object];
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}').trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let field = &after[..end];
            current = current.into_iter().filter_map(|v| v.get(field)).collect();
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix("[?(@.") {
            let end = after.find(")]")?;
            let (field, wanted) = after[..end].split_once("==")?;
            let wanted = wanted.trim().trim_matches('"').trim_matches('\'');
            let field = field.trim();
            current = current
                .into_iter()
                .flat_map(|v| v.as_array().into_iter().flatten())
                .filter(|item| item.get(field).and_then(Value::as_str) == Some(wanted))
                .collect();
            rest = &after[end + 2..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            let index: usize = after[..end].trim().parse().ok()?;
            current = current.into_iter().filter_map(|v| v.get(index)).collect();
            rest = &after[end + 1..];
        } else {
            return None;
        }
    }
    current.into_iter().next()
}

/// `creationTimestamp` to an age the way kubectl and the server print it (`45s`, `3m12s`, `5h`,
/// `2d3h`…).
fn age(timestamp: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(timestamp) else { return "<invalid>".into() };
    let seconds = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds();
    human_duration(seconds)
}

/// k8s.io/apimachinery's `duration.HumanDuration`.
fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    let (minutes, hours) = (s / 60, s / 3600);
    if s < 120 {
        format!("{s}s")
    } else if minutes < 10 {
        if s % 60 == 0 { format!("{minutes}m") } else { format!("{minutes}m{}s", s % 60) }
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        if minutes % 60 == 0 { format!("{hours}h") } else { format!("{hours}h{}m", minutes % 60) }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        if hours % 24 == 0 { format!("{}d", hours / 24) } else { format!("{}d{}h", hours / 24, hours % 24) }
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else if hours < 24 * 365 * 8 {
        let days = hours / 24 % 365;
        if days == 0 { format!("{}y", hours / 24 / 365) } else { format!("{}y{days}d", hours / 24 / 365) }
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

/// The Table for `objects` (as presented by a GET), with the list's metadata.
pub(crate) fn table(
    rt: &ResourceType,
    objects: &[Value],
    metadata: Value,
    include_object: Option<&str>,
) -> Result<Value, ApiError> {
    let include = match include_object {
        None | Some("" | "Metadata") => "Metadata",
        Some("Object") => "Object",
        Some("None") => "None",
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "includeObject: Unsupported value: \"{other}\": supported values: \"Metadata\", \"None\", \"Object\""
            )));
        }
    };
    let columns = columns(rt);
    let definitions: Vec<Value> = columns
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.kind, "format": c.format, "description": c.description,
                "priority": c.priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let cells: Vec<Value> = columns.iter().map(|c| cell(rt, c, o)).collect();
            let mut row = json!({"cells": cells});
            match include {
                "Metadata" => {
                    row["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                        "metadata": o["metadata"]});
                }
                "Object" => row["object"] = o.clone(),
                _ => {}
            }
            row
        })
        .collect();
    Ok(json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata,
        "columnDefinitions": definitions, "rows": rows}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonpath_subset() {
        let o = json!({"status": {"conditions": [{"type": "Synced", "status": "False"},
            {"type": "Ready", "status": "True"}]}, "spec": {"topics": ["a", "b"]}});
        assert_eq!(first_result(&o, r#".status.conditions[?(@.type=="Ready")].status"#), Some(&json!("True")));
        assert_eq!(first_result(&o, ".spec.topics[1]"), Some(&json!("b")));
        assert_eq!(first_result(&o, ".spec.missing"), None);
        assert_eq!(first_result(&o, ".spec.topics[*]"), None);
    }

    #[test]
    fn human_durations_like_apimachinery() {
        for (s, want) in
            [(5, "5s"), (119, "119s"), (150, "2m30s"), (600, "10m"), (3 * 3600 + 60, "3h1m"), (50 * 3600, "2d2h")]
        {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }
}
