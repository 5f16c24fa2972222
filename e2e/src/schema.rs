//! Validation of custom resources against a CRD's `openAPIV3Schema`, the way the Kubernetes API
//! server does it for what our CRDs use:
//!
//! - strict field validation (what `kubectl apply` asks for): fields the schema does not declare
//!   are refused, except under `x-kubernetes-preserve-unknown-fields`;
//! - OpenAPI keywords: `type`, `enum`, `required`, `pattern`, `minLength`/`maxLength`,
//!   `minItems`/`maxItems`, `minimum`/`maximum`, `format: date-time` (via the `jsonschema` crate);
//! - `x-kubernetes-list-type: set` (no duplicates);
//! - CEL `x-kubernetes-validations`, creation and transition rules (via kube's client-side CEL
//!   evaluator, `kube::core::cel`).
//!
//! It is a test double of the API server's validation, used by the schema tests and by the
//! Kubernetes API test server. It does not estimate CEL cost the way the server does (see
//! [`cel_rule_warnings`] for the static estimate) and it knows nothing of other formats than
//! `date-time`.

use serde_json::Value;

/// One refused field, in the API server's spelling (`spec.topics[0]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.endpoint.url`; empty for the object itself.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// Validates `object` (a whole custom resource) against `schema` (its version's
/// `openAPIV3Schema`); `old` is the stored object on an update, for transition rules.
pub fn validate(schema: &Value, object: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    structural_checks(schema, object, "", true, &mut errors);
    errors.extend(openapi_checks(schema, object));
    errors.extend(cel_checks(schema, object, old));
    errors
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() { child.to_owned() } else { format!("{parent}.{child}") }
}

/// Unknown fields and `x-kubernetes-list-type: set`.
fn structural_checks(schema: &Value, value: &Value, path: &str, root: bool, errors: &mut Vec<FieldError>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, child) in map {
                // apiVersion, kind and metadata are validated by the server itself, not the CRD schema.
                if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let child_path = join(path, key);
                match (props.and_then(|p| p.get(key)), additional) {
                    (Some(s), _) | (None, Some(s)) => structural_checks(s, child, &child_path, false, errors),
                    (None, None) => {
                        errors.push(FieldError { path: path.to_owned(), message: format!("unknown field \"{key}\"") })
                    }
                }
            }
        }
        Value::Array(items) => {
            let item_schema = schema.get("items").cloned().unwrap_or(Value::Null);
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{path}[{i}]");
                structural_checks(&item_schema, item, &item_path, false, errors);
                if schema.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("set")
                    && items[..i].contains(item)
                {
                    errors.push(FieldError { path: item_path, message: format!("Duplicate value: {item}") });
                }
            }
        }
        _ => {}
    }
}

/// The OpenAPI keywords, through a JSON Schema validator. OpenAPI v3.0 schemas are close to JSON
/// Schema draft 4; the `x-kubernetes-*` and `nullable` keywords are ignored by it (handled above).
fn openapi_checks(schema: &Value, object: &Value) -> Vec<FieldError> {
    let validator = match jsonschema::draft4::options().should_validate_formats(true).build(schema) {
        Ok(v) => v,
        Err(e) => {
            return vec![FieldError { path: String::new(), message: format!("the CRD schema itself is invalid: {e}") }];
        }
    };
    validator
        .iter_errors(object)
        .map(|e| {
            let path = pointer_to_path(e.instance_path().as_str());
            match e.kind() {
                // The API server names the missing field itself: `spec.topics: Required value`.
                jsonschema::error::ValidationErrorKind::Required { property } => FieldError {
                    path: join(&path, property.as_str().unwrap_or_default()),
                    message: "Required value".into(),
                },
                _ => FieldError { path, message: e.to_string() },
            }
        })
        .collect()
}

/// `/spec/topics/0` → `spec.topics[0]`.
pub fn pointer_to_path(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.parse::<usize>().is_ok() {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    out
}

fn cel_checks(schema: &Value, object: &Value, old: Option<&Value>) -> Vec<FieldError> {
    match kube::core::cel::Validator::new().validate(schema, object, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| FieldError { path: e.field_path.trim_start_matches('.').to_owned(), message: e.message })
            .collect(),
    }
}

/// Static warnings for every CEL rule in `schema`: a rule that references a variable CRD rules
/// cannot see, a cost estimate over the API server's per-rule budget, or a list or string
/// without bounds. The server refuses a CRD whose rules exceed the budget.
pub fn cel_rule_warnings(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk_rules(schema, "", &mut out);
    out
}

fn walk_rules(node: &Value, path: &str, out: &mut Vec<String>) {
    use kube::core::cel::{ScopeContext, analyze_rule, compile_schema};
    if let Some(rules) = node.get("x-kubernetes-validations").and_then(Value::as_array) {
        let compiled = compile_schema(node);
        for rule in rules.iter().filter_map(|r| r.get("rule").and_then(Value::as_str)) {
            for warning in analyze_rule(rule, &compiled, ScopeContext::CrdValidation) {
                out.push(format!("{path}: {rule}: {}", warning.message));
            }
        }
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (key, child) in props {
            walk_rules(child, &join(path, key), out);
        }
    }
    if let Some(items) = node.get("items") {
        walk_rules(items, &format!("{path}[*]"), out);
    }
}

/// Paths in `schema` whose values keep unknown fields (`x-kubernetes-preserve-unknown-fields`).
pub fn free_form_paths(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk_free_form(schema, "", &mut out);
    out
}

fn walk_free_form(node: &Value, path: &str, out: &mut Vec<String>) {
    if node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        out.push(path.to_owned());
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (key, child) in props {
            walk_free_form(child, &join(path, key), out);
        }
    }
    if let Some(items) = node.get("items") {
        walk_free_form(items, &format!("{path}[*]"), out);
    }
}

/// Violations of the API server's structural-schema rules that our CRDs could run into: every
/// node has a `type` (or keeps unknown fields), `properties` and `additionalProperties` are not
/// combined, and no node uses `$ref`, `additionalItems` or `uniqueItems`.
pub fn structural_violations(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk_structural(schema, "", &mut out);
    out
}

fn walk_structural(node: &Value, path: &str, out: &mut Vec<String>) {
    let preserve = node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let int_or_string = node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if node.get("type").is_none() && !preserve && !int_or_string {
        out.push(format!("{path}: no type"));
    }
    if node.get("properties").is_some() && node.get("additionalProperties").is_some() {
        out.push(format!("{path}: properties and additionalProperties together"));
    }
    for forbidden in ["$ref", "additionalItems", "uniqueItems", "anyOf", "oneOf", "allOf"] {
        if node.get(forbidden).is_some() {
            out.push(format!("{path}: uses {forbidden}"));
        }
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (key, child) in props {
            walk_structural(child, &join(path, key), out);
        }
    }
    if let Some(items) = node.get("items") {
        walk_structural(items, &format!("{path}[*]"), out);
    }
    if let Some(additional) = node.get("additionalProperties").filter(|a| a.is_object()) {
        walk_structural(additional, &format!("{path}{{*}}"), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_become_api_server_paths() {
        assert_eq!(pointer_to_path("/spec/topics/0"), "spec.topics[0]");
        assert_eq!(pointer_to_path("/spec/endpoint/url"), "spec.endpoint.url");
        assert_eq!(pointer_to_path(""), "");
    }

    #[test]
    fn an_unbounded_cel_rule_is_flagged() {
        let unbounded = serde_json::json!({
            "type": "object",
            "properties": {"names": {"type": "array", "items": {"type": "string"},
                "x-kubernetes-validations": [{"rule": "self.all(n, n.split('/').size() < 4)"}]}}
        });
        assert!(!cel_rule_warnings(&unbounded).is_empty());
        let bounded = serde_json::json!({
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 64,
                "x-kubernetes-validations": [{"rule": "self.startsWith('a')"}]}}
        });
        assert_eq!(cel_rule_warnings(&bounded), Vec::<String>::new());
    }
}
