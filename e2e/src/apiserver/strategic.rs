//! Strategic merge patch for the built-in kinds served here. It differs from a JSON merge patch
//! in its directives (`$patch: replace|delete`, `$deleteFromPrimitiveList/<field>`,
//! `$setElementOrder/<field>`, `$retainKeys`) and in the lists whose Go types carry a patch
//! strategy; among the kinds served here those are `metadata.finalizers` (merged as a set) and
//! `metadata.ownerReferences` (merged by `uid`). Every other list is replaced, as their types
//! declare no strategy. Custom resources have no Go types, so the real server refuses this patch
//! type for them (415) and so does this one.

use serde_json::{Map, Value};

/// Applies `patch` to `target`.
pub(crate) fn merge(target: &mut Value, patch: &Value) -> Result<(), String> {
    merge_at(target, patch, &[])
}

fn merge_key(path: &[&str]) -> Option<&'static str> {
    match path {
        ["metadata", "ownerReferences"] => Some("uid"),
        _ => None,
    }
}

fn is_set(path: &[&str]) -> bool {
    matches!(path, ["metadata", "finalizers"])
}

fn merge_at(target: &mut Value, patch: &Value, path: &[&str]) -> Result<(), String> {
    let Some(patch) = patch.as_object() else { return Err("a strategic merge patch must be an object".into()) };
    match patch.get("$patch").and_then(Value::as_str) {
        None => {}
        Some("replace") => {
            let mut replaced = patch.clone();
            replaced.remove("$patch");
            *target = Value::Object(replaced);
            return Ok(());
        }
        Some(other) => return Err(format!("Unknown patch type: {other}")),
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(t) = target.as_object_mut() else { return Ok(()) };
    for (key, value) in patch {
        if key == "$patch" || key == "$retainKeys" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = value.as_array().cloned().unwrap_or_default();
            if let Some(list) = t.get_mut(field).and_then(Value::as_array_mut) {
                list.retain(|item| !remove.contains(item));
            }
            continue;
        }
        if key.starts_with('$') {
            return Err(format!("unknown directive {key}"));
        }
        let mut child_path = path.to_vec();
        child_path.push(key.as_str());
        if value.is_null() || value.get("$patch").and_then(Value::as_str) == Some("delete") {
            t.remove(key);
            continue;
        }
        match (t.get_mut(key), value) {
            (Some(existing), Value::Object(_)) if existing.is_object() => merge_at(existing, value, &child_path)?,
            (Some(Value::Array(existing)), Value::Array(items)) if is_set(&child_path) => {
                for item in items {
                    if !existing.contains(item) {
                        existing.push(item.clone());
                    }
                }
            }
            (Some(Value::Array(existing)), Value::Array(items)) if merge_key(&child_path).is_some() => {
                let k = merge_key(&child_path).unwrap_or_default();
                for item in items {
                    let position = existing.iter().position(|e| e.get(k).is_some() && e.get(k) == item.get(k));
                    let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                    match (position, delete) {
                        (Some(i), true) => {
                            existing.remove(i);
                        }
                        (Some(i), false) => merge_at(&mut existing[i], item, &child_path)?,
                        (None, true) => {}
                        (None, false) => existing.push(item.clone()),
                    }
                }
            }
            _ => {
                t.insert(key.clone(), strip_directives(value));
            }
        }
    }
    Ok(())
}

fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), strip_directives(v))).collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finalizers_merge_as_a_set_and_directives_apply() {
        let mut object = json!({"metadata": {"finalizers": ["a"], "labels": {"x": "1", "y": "2"}}, "data": {"k": "v"}});
        let patch =
            json!({"metadata": {"finalizers": ["b"], "labels": {"x": null}}, "data": {"$patch": "replace", "n": "m"}});
        merge(&mut object, &patch).unwrap();
        assert_eq!(object, json!({"metadata": {"finalizers": ["a", "b"], "labels": {"y": "2"}}, "data": {"n": "m"}}));
        merge(&mut object, &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}})).unwrap();
        assert_eq!(object["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn owner_references_merge_by_uid() {
        let mut object =
            json!({"metadata": {"ownerReferences": [{"uid": "1", "name": "a"}, {"uid": "2", "name": "b"}]}});
        let patch =
            json!({"metadata": {"ownerReferences": [{"uid": "1", "$patch": "delete"}, {"uid": "3", "name": "c"}]}});
        merge(&mut object, &patch).unwrap();
        assert_eq!(
            object["metadata"]["ownerReferences"],
            json!([{"uid": "2", "name": "b"}, {"uid": "3", "name": "c"}])
        );
    }
}
