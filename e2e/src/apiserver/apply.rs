//! Server-side apply, simplified: the applied configuration is merged into the stored object
//! (maps key by key; lists by their `x-kubernetes-list-type`: `set` and `map` item by item,
//! others replaced whole), and what the same field manager applied last time but leaves out
//! now is removed.
//!
//! Field ownership is tracked per object like the real server's `managedFields`, at the
//! granularity of leaf fields (scalars, atomic lists, items of `map` lists; `set` list items are
//! never in conflict): a create, update or patch makes its manager (`fieldManager`, else the
//! User-Agent's product) the owner of the fields it set or changed, an apply the owner of the
//! fields it applied. An apply without `force` that changes the value of a field another manager
//! owns is a 409 Conflict naming the manager and field, as on the real server; with `force` it
//! takes the field over.
//!
//! Ownership is shown as `metadata.managedFields` (`FieldsV1`), and an applied configuration
//! that carries `managedFields` is refused, as on the real server. Left out: `managedFields`
//! sent in an update are ignored (the real server takes them as the new ownership), entries do
//! not name their subresource, a field two managers applied with the same value has one owner
//! (the last), and a field the manager stops applying is removed even if another manager applied
//! the same value.

use std::collections::BTreeMap;

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

/// One step of a field path: a map key, or the item of a `map` list with these key values
/// (canonical JSON of the key object).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Segment {
    Key(String),
    Item(String),
    /// An item of a `set` list (its JSON).
    Value(String),
}

/// A leaf field, e.g. `.status.conditions[type="Ready"].status`.
pub(crate) type FieldPath = Vec<Segment>;

/// A field manager as the real server tells them apart: by name and by operation (the same name
/// applying and updating are two managers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Owner {
    pub manager: String,
    pub apply: bool,
    pub api_version: String,
    pub time: String,
}

impl Owner {
    fn same_manager(&self, other: &Owner) -> bool {
        self.manager == other.manager && self.apply == other.apply
    }

    /// How conflict messages name it: `"kubectl"` for an applier, `"kubectl" using v1 at <time>`
    /// for an updater.
    pub fn printed(&self) -> String {
        if self.apply {
            format!("\"{}\"", self.manager)
        } else {
            format!("\"{}\" using {} at {}", self.manager, self.api_version, self.time)
        }
    }
}

/// Which manager owns which leaf field of one object.
pub(crate) type Owners = BTreeMap<FieldPath, Owner>;

/// `.spec.topics`, `.status.conditions[type="Ready"].status`: the real server's spelling.
pub(crate) fn display(path: &FieldPath) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Segment::Item(key) => {
                let key: Value = serde_json::from_str(key).unwrap_or(Value::Null);
                let parts: Vec<String> =
                    key.as_object().map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect()).unwrap_or_default();
                out.push_str(&format!("[{}]", parts.join(",")));
            }
            Segment::Value(v) => out.push_str(&format!("[={v}]")),
        }
    }
    out
}

/// The metadata fields that have owners (others are the server's or identify the object).
const OWNED_METADATA: [&str; 4] = ["labels", "annotations", "finalizers", "ownerReferences"];

/// The leaf fields of `value` with their values; `schema` gives list types.
pub(crate) fn leaves(value: &Value, schema: Option<&Value>) -> BTreeMap<FieldPath, Value> {
    let mut out = BTreeMap::new();
    walk_leaves(value, schema, true, &mut Vec::new(), &mut out);
    out
}

fn walk_leaves(
    value: &Value,
    schema: Option<&Value>,
    root: bool,
    path: &mut FieldPath,
    out: &mut BTreeMap<FieldPath, Value>,
) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            let in_metadata = path.len() == 1 && path[0] == Segment::Key("metadata".into());
            for (key, child) in map {
                if (root && matches!(key.as_str(), "apiVersion" | "kind"))
                    || (in_metadata && !OWNED_METADATA.contains(&key.as_str()))
                {
                    continue;
                }
                let child_schema = child_schema(schema, key, root);
                path.push(Segment::Key(key.clone()));
                walk_leaves(child, child_schema.as_ref(), false, path, out);
                path.pop();
            }
        }
        Value::Array(items) => match schema.and_then(|s| s.get("x-kubernetes-list-type")).and_then(Value::as_str) {
            Some("set") => {
                for item in items {
                    path.push(Segment::Value(item.to_string()));
                    out.insert(path.clone(), item.clone());
                    path.pop();
                }
            }
            Some("map") => {
                let keys = map_keys(schema);
                let item_schema = schema.and_then(|s| s.get("items"));
                for item in items {
                    let key: serde_json::Map<String, Value> =
                        keys.iter().map(|k| (k.clone(), item[k].clone())).collect();
                    path.push(Segment::Item(Value::Object(key).to_string()));
                    walk_leaves(item, item_schema, false, path, out);
                    path.pop();
                }
            }
            _ => {
                out.insert(path.clone(), value.clone());
            }
        },
        _ => {
            out.insert(path.clone(), value.clone());
        }
    }
}

fn map_keys(schema: Option<&Value>) -> Vec<String> {
    schema
        .and_then(|s| s.get("x-kubernetes-list-map-keys"))
        .and_then(Value::as_array)
        .map(|k| k.iter().filter_map(|k| k.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Records `manager` as the owner of every leaf field that `before` → `after` set or changed,
/// and forgets owners of fields that are gone.
pub(crate) fn take_changed(
    owners: &mut Owners,
    before: Option<&Value>,
    after: &Value,
    schema: Option<&Value>,
    manager: &Owner,
) {
    let old = before.map(|b| leaves(b, schema)).unwrap_or_default();
    let new = leaves(after, schema);
    owners.retain(|path, _| new.contains_key(path));
    for (path, value) in new {
        if old.get(&path) != Some(&value) {
            owners.insert(path, manager.clone());
        }
    }
}

/// The fields `applied` would change that other managers own: (path, owner).
pub(crate) fn conflicts(
    owners: &Owners,
    current: &Value,
    applied: &Value,
    schema: Option<&Value>,
    manager: &Owner,
) -> Vec<(String, Owner)> {
    let current = leaves(current, schema);
    leaves(applied, schema)
        .into_iter()
        .filter_map(|(path, value)| {
            // A field that is not there has no owner, whatever was recorded before.
            let existing = current.get(&path)?;
            let owner = owners.get(&path).filter(|o| !o.same_manager(manager))?;
            (*existing != value).then(|| (display(&path), owner.clone()))
        })
        .collect()
}

/// After an apply: `manager` owns what it applied (and no longer what it left out).
pub(crate) fn take_applied(
    owners: &mut Owners,
    previous: Option<&Value>,
    applied: &Value,
    schema: Option<&Value>,
    manager: &Owner,
) {
    let applied = leaves(applied, schema);
    if let Some(previous) = previous {
        for path in leaves(previous, schema).into_keys() {
            if !applied.contains_key(&path) && owners.get(&path).is_some_and(|o| o.same_manager(manager)) {
                owners.remove(&path);
            }
        }
    }
    for path in applied.into_keys() {
        // An unchanged owner keeps its entry (and time): re-applying the same is no change.
        if !owners.get(&path).is_some_and(|o| o.same_manager(manager)) {
            owners.insert(path, manager.clone());
        }
    }
}

/// `metadata.managedFields` as the real server shows it: one entry per manager, its fields as a
/// `FieldsV1` tree (`f:<field>`, `k:<key JSON>` for map-list items, `v:<value JSON>` for set
/// items).
pub(crate) fn managed_fields(owners: &Owners) -> Value {
    let mut managers: Vec<(Owner, Vec<&FieldPath>)> = Vec::new();
    for (path, owner) in owners {
        match managers.iter_mut().find(|(o, _)| o.same_manager(owner)) {
            Some((o, paths)) => {
                if owner.time > o.time {
                    o.time = owner.time.clone();
                }
                paths.push(path);
            }
            None => managers.push((owner.clone(), vec![path])),
        }
    }
    managers.sort_by(|(a, _), (b, _)| (&a.time, &a.manager).cmp(&(&b.time, &b.manager)));
    let entries: Vec<Value> = managers
        .into_iter()
        .map(|(owner, paths)| {
            let mut tree = serde_json::Map::new();
            for path in paths {
                let mut node = &mut tree;
                for segment in path {
                    let key = match segment {
                        Segment::Key(k) => format!("f:{k}"),
                        Segment::Item(k) => format!("k:{k}"),
                        Segment::Value(v) => format!("v:{v}"),
                    };
                    node = node
                        .entry(key)
                        .or_insert_with(|| json!({}))
                        .as_object_mut()
                        .expect("field trees hold only objects");
                }
            }
            json!({
                "manager": owner.manager,
                "operation": if owner.apply { "Apply" } else { "Update" },
                "apiVersion": owner.api_version,
                "time": owner.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": tree,
            })
        })
        .collect();
    Value::Array(entries)
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

    fn owner(manager: &str, apply: bool) -> Owner {
        Owner { manager: manager.into(), apply, api_version: "v1".into(), time: "2026-01-01T00:00:00Z".into() }
    }

    #[test]
    fn another_managers_changed_field_conflicts() {
        let mut owners = Owners::new();
        let before = json!({"spec": {"a": 1}});
        let after = json!({"spec": {"a": 2, "b": 1}});
        take_changed(&mut owners, Some(&before), &after, None, &owner("kubectl", false));
        assert_eq!(display(&owners.keys().next().unwrap().clone()), ".spec.a");
        let found = conflicts(&owners, &after, &json!({"spec": {"a": 3, "b": 1}}), None, &owner("op", true));
        assert_eq!(found, vec![(".spec.a".to_owned(), owner("kubectl", false))]);
        let same_value = conflicts(&owners, &after, &json!({"spec": {"a": 2}}), None, &owner("op", true));
        assert!(same_value.is_empty());
        let same_name = conflicts(&owners, &after, &json!({"spec": {"a": 3}}), None, &owner("kubectl", true));
        assert_eq!(same_name.len(), 1, "applying and updating under one name are two managers");
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
