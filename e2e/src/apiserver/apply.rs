//! Server-side apply, simplified: the applied configuration is merged into the stored object
//! (maps key by key; lists by their `x-kubernetes-list-type`: `set` and `map` item by item,
//! others replaced whole), and what the same field manager applied last time but leaves out
//! now is removed.
//!
//! The real server tracks ownership of every field across all managers (`managedFields`),
//! refuses to change another manager's field without `force` (409), and only removes a field
//! when no other manager owns it. Here only each manager's last applied configuration is kept
//! (not shown as `managedFields`), `force` changes nothing, and there are no apply conflicts.

use serde_json::{Value, json};

/// List types of the object metadata fields a controller applies.
fn metadata_schema() -> Value {
    json!({"properties": {
        "finalizers": {"x-kubernetes-list-type": "set"},
        "ownerReferences": {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["uid"]},
    }})
}

fn child_schema(schema: Option<&Value>, key: &str, root: bool) -> Option<Value> {
    if root && key == "metadata" {
        return Some(metadata_schema());
    }
    let schema = schema?;
    schema
        .get("properties")
        .and_then(|p| p.get(key))
        .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()))
        .cloned()
}

/// Merges `applied` into `target`; `previous` is what the same manager applied last time,
/// `schema` the structural schema of this node (for list types).
pub(crate) fn merge(target: &mut Value, applied: &Value, previous: Option<&Value>, schema: Option<&Value>) {
    merge_node(target, applied, previous, schema, true);
}

fn merge_node(target: &mut Value, applied: &Value, previous: Option<&Value>, schema: Option<&Value>, root: bool) {
    match (target.as_object_mut(), applied.as_object()) {
        (Some(t), Some(a)) => {
            for (key, value) in a {
                let child = child_schema(schema, key, root);
                let prev = previous.and_then(|p| p.get(key));
                match t.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        merge_node(existing, value, prev, child.as_ref(), false)
                    }
                    Some(existing) if existing.is_array() && value.is_array() => {
                        merge_list(existing, value, prev, child.as_ref())
                    }
                    _ => {
                        t.insert(key.clone(), value.clone());
                    }
                }
            }
            if let Some(p) = previous.and_then(Value::as_object) {
                for key in p.keys().filter(|k| !a.contains_key(*k)) {
                    t.remove(key);
                }
            }
        }
        _ => *target = applied.clone(),
    }
}

fn merge_list(target: &mut Value, applied: &Value, previous: Option<&Value>, schema: Option<&Value>) {
    let list_type = schema.and_then(|s| s.get("x-kubernetes-list-type")).and_then(Value::as_str);
    let (Some(t), Some(a)) = (target.as_array_mut(), applied.as_array()) else { return };
    let prev: Vec<Value> = previous.and_then(Value::as_array).cloned().unwrap_or_default();
    match list_type {
        Some("set") => {
            t.retain(|item| !prev.contains(item) || a.contains(item));
            for item in a {
                if !t.contains(item) {
                    t.push(item.clone());
                }
            }
        }
        Some("map") => {
            let keys: Vec<String> = schema
                .and_then(|s| s.get("x-kubernetes-list-map-keys"))
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(|k| k.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            let key_of = |item: &Value| -> Vec<Value> { keys.iter().map(|k| item[k].clone()).collect() };
            let applied_keys: Vec<Vec<Value>> = a.iter().map(key_of).collect();
            t.retain(|item| {
                let k = key_of(item);
                applied_keys.contains(&k) || !prev.iter().any(|p| key_of(p) == k)
            });
            let item_schema = schema.and_then(|s| s.get("items"));
            for item in a {
                let k = key_of(item);
                let prev_item = prev.iter().find(|p| key_of(p) == k);
                match t.iter_mut().find(|existing| key_of(existing) == k) {
                    Some(existing) => merge_node(existing, item, prev_item, item_schema, false),
                    None => t.push(item.clone()),
                }
            }
        }
        _ => *target = applied.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_a_manager_stops_applying_are_removed_and_others_kept() {
        let mut target = json!({"spec": {"a": 1, "b": 2, "c": 3}});
        merge(&mut target, &json!({"spec": {"a": 5}}), Some(&json!({"spec": {"a": 1, "b": 2}})), None);
        assert_eq!(target, json!({"spec": {"a": 5, "c": 3}}));
    }

    #[test]
    fn map_lists_merge_by_key() {
        let schema = json!({"properties": {"status": {"properties": {"conditions": {
            "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
            "items": {"properties": {}}}}}}});
        let mut target = json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "B"}]}});
        merge(&mut target, &json!({"status": {"conditions": [{"type": "A", "status": "True"}]}}), None, Some(&schema));
        assert_eq!(target, json!({"status": {"conditions": [{"type": "A", "status": "True"}, {"type": "B"}]}}));
    }

    #[test]
    fn finalizers_are_a_set() {
        let mut target = json!({"metadata": {"finalizers": ["x", "mine"]}});
        merge(
            &mut target,
            &json!({"metadata": {"finalizers": []}}),
            Some(&json!({"metadata": {"finalizers": ["mine"]}})),
            None,
        );
        assert_eq!(target, json!({"metadata": {"finalizers": ["x"]}}));
    }
}
