//! The server's state: every object as JSON, one global resourceVersion counter, the watch
//! history, and the writes (create, update, delete) with the rules the real server applies to
//! them. The HTTP layer (`http.rs`) turns requests into these calls; the garbage collector
//! (`collect_garbage`) runs after removals, in a task of its own like the real controller.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::apply::{self, Owner, Owners};
use super::resources::{self, ResourceType};
use super::selectors::{FieldSelector, LabelSelector};
use super::status::{ApiError, Target};
use super::validation;
use crate::schema::FieldError;

/// (namespace or "", name).
pub(crate) type ObjKey = (String, String);
/// (group, plural).
pub(crate) type ResKey = (String, String);

/// How many changes a watch can be resumed across before its resourceVersion expires.
const HISTORY_WINDOW: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One committed change, as watches see it.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub rv: u64,
    pub res: ResKey,
    pub namespace: String,
    pub kind: ChangeType,
    pub object: Value,
    /// The object before a modification (for selector transitions).
    pub old: Option<Value>,
}

#[derive(Clone, Debug)]
pub(crate) enum Msg {
    Change(Arc<Change>),
    /// Every open watch ends (after `compact`).
    Close,
    /// Watches of this resource end: its CRD is gone.
    Gone(ResKey),
}

/// Options of a write request.
#[derive(Clone, Debug, Default)]
pub(crate) struct WriteOpts {
    pub dry_run: bool,
    /// `fieldValidation=Strict`: unknown fields are a 400 instead of being dropped.
    pub strict: bool,
    /// Who writes (`fieldManager`, else the User-Agent's product): owner of what it changes.
    pub manager: String,
    /// For a server-side apply: what is applied and what the manager applied before; the
    /// manager then owns exactly the applied fields.
    pub apply: Option<Applied>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Applied {
    pub previous: Option<Value>,
    pub applied: Value,
}

/// Options of a DELETE.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeleteOpts {
    pub dry_run: bool,
    pub propagation: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

pub(crate) struct State {
    pub rv: u64,
    /// A watch from a resourceVersion below this gets 410 Expired.
    pub history_start: u64,
    pub history: VecDeque<Arc<Change>>,
    builtins: Vec<ResourceType>,
    pub types: Vec<ResourceType>,
    pub objects: BTreeMap<ResKey, BTreeMap<ObjKey, Value>>,
    /// Last configuration each field manager applied, by (uid, manager, status subresource).
    pub applied: HashMap<(String, String, bool), Value>,
    /// Field owners by object uid.
    pub owners: HashMap<String, Owners>,
    pub writes: u64,
    pub tx: broadcast::Sender<Msg>,
    /// Set when a removal may have left garbage (dependents, finalizer work).
    pub gc_pending: bool,
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object["metadata"].get(field).and_then(Value::as_str)
}

fn finalizers(object: &Value) -> Vec<String> {
    object["metadata"]["finalizers"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn is_deleting(object: &Value) -> bool {
    object["metadata"].get("deletionTimestamp").is_some_and(|t| !t.is_null())
}

fn target<'a>(rt: &'a ResourceType, name: &'a str) -> Target<'a> {
    Target { group: &rt.group, plural: &rt.plural, name }
}

fn res_key(rt: &ResourceType) -> ResKey {
    (rt.group.clone(), rt.plural.clone())
}

/// The object as served in `rt`'s version (stored objects keep the version they were written in;
/// versions of one CRD are converted with strategy `None`, i.e. only `apiVersion` changes).
pub(crate) fn present(rt: &ResourceType, object: &Value) -> Value {
    let mut out = object.clone();
    out["apiVersion"] = Value::String(rt.api_version());
    out
}

impl State {
    pub fn new(tx: broadcast::Sender<Msg>) -> Self {
        let builtins = resources::builtins();
        let mut state = State {
            rv: 1,
            history_start: 1,
            history: VecDeque::new(),
            types: builtins.clone(),
            builtins,
            objects: BTreeMap::new(),
            applied: HashMap::new(),
            owners: HashMap::new(),
            writes: 0,
            tx,
            gc_pending: false,
        };
        let ns_type = state.type_of("", "namespaces").expect("namespaces are built in");
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            state.create(&ns_type, None, object, &WriteOpts::default()).expect("built-in namespaces are valid");
        }
        state
    }

    pub fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types.iter().find(|t| t.group == group && t.version == version && t.plural == plural).cloned()
    }

    pub fn type_of(&self, group: &str, plural: &str) -> Option<ResourceType> {
        self.types.iter().find(|t| t.group == group && t.plural == plural).cloned()
    }

    pub fn get(&self, rt: &ResourceType, namespace: Option<&str>, name: &str) -> Option<&Value> {
        self.objects.get(&res_key(rt))?.get(&(namespace.unwrap_or_default().to_owned(), name.to_owned()))
    }

    fn namespace_object(&self, name: &str) -> Option<&Value> {
        self.objects.get(&(String::new(), "namespaces".to_owned()))?.get(&(String::new(), name.to_owned()))
    }

    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push_back(change.clone());
        while self.history.len() > HISTORY_WINDOW {
            if let Some(dropped) = self.history.pop_front() {
                self.history_start = dropped.rv + 1;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(Msg::Change(change));
    }

    /// Stores `object` (new or replacing `old`) with the next resourceVersion.
    fn commit_put(&mut self, rt: &ResourceType, mut object: Value, old: Option<Value>) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        let namespace = meta_str(&object, "namespace").unwrap_or_default().to_owned();
        let name = meta_str(&object, "name").unwrap_or_default().to_owned();
        self.objects.entry(res_key(rt)).or_default().insert((namespace.clone(), name), object.clone());
        let kind = if old.is_some() { ChangeType::Modified } else { ChangeType::Added };
        self.record(Change {
            rv: self.rv,
            res: res_key(rt),
            namespace: namespace.clone(),
            kind,
            object: object.clone(),
            old,
        });
        if let Some((mirror_rt, mirror)) = self.event_mirror(rt, &object) {
            let key = (namespace.clone(), meta_str(&object, "name").unwrap_or_default().to_owned());
            let store = self.objects.entry(res_key(&mirror_rt)).or_default();
            let old = store.insert(key, mirror.clone());
            let kind = if old.is_some() { ChangeType::Modified } else { ChangeType::Added };
            self.record(Change { rv: self.rv, res: res_key(&mirror_rt), namespace, kind, object: mirror, old });
        }
        if rt.plural == "customresourcedefinitions" {
            self.refresh_types();
        }
        object
    }

    /// The same Event in the other Events API: the real server stores one resource and serves
    /// it as core/v1 and as events.k8s.io/v1, so every write to one shows in the other.
    fn event_mirror(&self, rt: &ResourceType, object: &Value) -> Option<(ResourceType, Value)> {
        let to_events_api = match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "events") => true,
            ("events.k8s.io", "events") => false,
            _ => return None,
        };
        let other = self.type_of(if to_events_api { "events.k8s.io" } else { "" }, "events")?;
        Some((other, validation::convert_event(object, to_events_api)))
    }

    /// Removes the object, recording its last state with the deletion's resourceVersion.
    fn commit_remove(&mut self, rt: &ResourceType, mut object: Value) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        let namespace = meta_str(&object, "namespace").unwrap_or_default().to_owned();
        let name = meta_str(&object, "name").unwrap_or_default().to_owned();
        if let Some(objects) = self.objects.get_mut(&res_key(rt)) {
            objects.remove(&(namespace.clone(), name.clone()));
        }
        if let Some((mirror_rt, mirror)) = self.event_mirror(rt, &object) {
            if let Some(objects) = self.objects.get_mut(&res_key(&mirror_rt)) {
                objects.remove(&(namespace.clone(), name));
            }
            let (rv, res, ns) = (self.rv, res_key(&mirror_rt), namespace.clone());
            self.record(Change { rv, res, namespace: ns, kind: ChangeType::Deleted, object: mirror, old: None });
        }
        if let Some(uid) = meta_str(&object, "uid") {
            self.applied.retain(|(u, _, _), _| u != uid);
            self.owners.remove(uid);
        }
        self.record(Change {
            rv: self.rv,
            res: res_key(rt),
            namespace,
            kind: ChangeType::Deleted,
            object: object.clone(),
            old: None,
        });
        if rt.plural == "customresourcedefinitions" {
            self.refresh_types();
            let group = object["spec"]["group"].as_str().unwrap_or_default().to_owned();
            let plural = object["spec"]["names"]["plural"].as_str().unwrap_or_default().to_owned();
            let _ = self.tx.send(Msg::Gone((group, plural)));
        }
        self.gc_pending = true;
        object
    }

    fn refresh_types(&mut self) {
        let crds: Vec<Value> = self
            .objects
            .get(&("apiextensions.k8s.io".to_owned(), "customresourcedefinitions".to_owned()))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let mut types = self.builtins.clone();
        for crd in &crds {
            types.extend(resources::from_crd(crd));
        }
        self.types = types;
    }

    /// Expires every resourceVersion issued so far (like an etcd compaction followed by an API
    /// server restart) and ends every open watch.
    pub fn compact(&mut self) {
        self.rv += 1;
        self.history.clear();
        self.history_start = self.rv;
        let _ = self.tx.send(Msg::Close);
    }

    fn check_type_meta(rt: &ResourceType, object: &Value) -> Result<(), ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request("the body of the request is not a JSON object"));
        }
        match object.get("apiVersion").and_then(Value::as_str) {
            Some(v) if v == rt.api_version() => {}
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({})",
                    rt.api_version()
                )));
            }
            None if rt.custom => {
                return Err(ApiError::bad_request(format!("Object 'apiVersion' is missing in '{object}'")));
            }
            None => {}
        }
        match object.get("kind").and_then(Value::as_str) {
            Some(k) if k == rt.kind => Ok(()),
            Some(k) => Err(ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: the kind in the data ({k}) does not match",
                rt.kind, rt.version, rt.kind
            ))),
            None if rt.custom => Err(ApiError::bad_request(format!("Object 'Kind' is missing in '{object}'"))),
            None => Ok(()),
        }
    }

    /// Kind-specific normalisation and validation of an object about to be stored.
    fn admit(
        &self,
        rt: &ResourceType,
        object: &mut Value,
        old: Option<&Value>,
        opts: &WriteOpts,
    ) -> Result<(), ApiError> {
        let name = meta_str(object, "name").unwrap_or_default().to_owned();
        let mut errors: Vec<FieldError> = Vec::new();
        if old.is_none() {
            errors.extend(validation::name_errors(rt, &name));
        }
        errors.extend(validation::metadata_errors(object));
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "secrets") => {
                validation::normalize_secret(object).map_err(ApiError::bad_request)?;
                errors.extend(validation::data_key_errors(object, &["data"]));
                if let Some(old) = old {
                    errors.extend(validation::immutable_data_errors(object, old, &["data"]));
                    if object["type"] != old["type"] {
                        errors.push(FieldError {
                            path: "type".into(),
                            message: format!("Invalid value: {}: field is immutable", object["type"]),
                        });
                    }
                }
            }
            ("", "configmaps") => {
                errors.extend(validation::data_key_errors(object, &["data", "binaryData"]));
                if let Some(old) = old {
                    errors.extend(validation::immutable_data_errors(object, old, &["data", "binaryData"]));
                }
            }
            ("coordination.k8s.io", "leases") => errors.extend(validation::lease_errors(object)),
            ("events.k8s.io", "events") => errors.extend(validation::event_errors(object)),
            ("apiextensions.k8s.io", "customresourcedefinitions") => errors.extend(validation::crd_errors(object)),
            _ => {}
        }
        if let Some(schema) = &rt.schema {
            let mut pruned = Vec::new();
            validation::prune(schema, object, "", true, &mut pruned);
            if opts.strict && !pruned.is_empty() {
                let list: Vec<String> = pruned.iter().map(|p| format!("unknown field \"{}\"", &p[1..])).collect();
                return Err(ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                    rt.kind,
                    rt.version,
                    rt.kind,
                    list.join(", ")
                )));
            }
            errors.extend(crate::schema::validate(schema, object, old));
        }
        if errors.is_empty() { Ok(()) } else { Err(ApiError::invalid(&rt.kind, &rt.group, &name, &errors)) }
    }

    pub fn create(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        mut object: Value,
        opts: &WriteOpts,
    ) -> Result<Value, ApiError> {
        Self::check_type_meta(rt, &object)?;
        object["apiVersion"] = Value::String(rt.api_version());
        object["kind"] = Value::String(rt.kind.clone());
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        let meta = &mut object["metadata"];
        if rt.namespaced {
            let ns = namespace.unwrap_or_default();
            match meta.get("namespace").and_then(Value::as_str) {
                Some(given) if !given.is_empty() && given != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => meta["namespace"] = Value::String(ns.to_owned()),
            }
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        let name = match (meta.get("name").and_then(Value::as_str), meta.get("generateName").and_then(Value::as_str)) {
            (Some(n), _) if !n.is_empty() => n.to_owned(),
            (_, Some(prefix)) if !prefix.is_empty() => format!("{prefix}{}", random_suffix()),
            _ => {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &rt.group,
                    "",
                    &[FieldError {
                        path: "metadata.name".into(),
                        message: "Required value: name or generateName is required".into(),
                    }],
                ));
            }
        };
        meta["name"] = Value::String(name.clone());
        let resource_version_given = meta.get("resourceVersion").and_then(Value::as_str).is_some_and(|v| !v.is_empty());
        if let Some(m) = meta.as_object_mut() {
            for field in
                ["deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion", "managedFields", "selfLink"]
            {
                m.remove(field);
            }
        }
        meta["uid"] = Value::String(uuid::Uuid::new_v4().to_string());
        meta["creationTimestamp"] = Value::String(now());
        if rt.has_generation() {
            meta["generation"] = json!(1);
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("generation");
        }
        if rt.namespaced {
            let ns = namespace.unwrap_or_default();
            match self.namespace_object(ns) {
                None => {
                    return Err(ApiError::not_found(Target { group: "", plural: "namespaces", name: ns }));
                }
                Some(n) if is_deleting(n) => {
                    let resource =
                        if rt.group.is_empty() { rt.plural.clone() } else { format!("{}.{}", rt.plural, rt.group) };
                    return Err(ApiError::forbidden(format!(
                        "{resource} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated"
                    )));
                }
                Some(_) => {}
            }
        }
        if rt.custom
            && let Some(crd) = self.crd_of(rt)
            && is_deleting(&crd)
        {
            return Err(ApiError {
                code: 405,
                reason: "MethodNotAllowed",
                message: "create not allowed while custom resource definition is terminating".into(),
                details: None,
            });
        }
        if rt.status_subresource
            && let Some(m) = object.as_object_mut()
        {
            m.remove("status");
        }
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "namespaces") => {
                object["spec"] = json!({"finalizers": ["kubernetes"]});
                object["status"] = json!({"phase": "Active"});
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                // Set at once here; the real server's controllers do it within moments.
                let spec = &object["spec"];
                let stored: Vec<Value> = spec["versions"]
                    .as_array()
                    .map(|vs| vs.iter().filter(|v| v["storage"] == true).map(|v| v["name"].clone()).collect())
                    .unwrap_or_default();
                let t = now();
                object["status"] = json!({
                    "acceptedNames": spec["names"],
                    "storedVersions": stored,
                    "conditions": [
                        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                         "message": "no conflicts found", "lastTransitionTime": t},
                        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                         "message": "the initial names have been accepted", "lastTransitionTime": t},
                    ],
                });
            }
            _ => {}
        }
        self.admit(rt, &mut object, None, opts)?;
        // The storage layer's checks, after validation as on the real server.
        if resource_version_given {
            return Err(ApiError::internal("resourceVersion should not be set on objects to be created"));
        }
        if self.get(rt, namespace.filter(|_| rt.namespaced), &name).is_some() {
            return Err(ApiError::already_exists(target(rt, &name)));
        }
        let owners = self.ownership(rt, None, &object, opts);
        object["metadata"]["managedFields"] = apply::managed_fields(&owners);
        if opts.dry_run {
            return Ok(object);
        }
        let stored = self.commit_put(rt, object, None);
        self.owners.insert(meta_str(&stored, "uid").unwrap_or_default().to_owned(), owners);
        Ok(stored)
    }

    fn crd_of(&self, rt: &ResourceType) -> Option<Value> {
        let crds = self.type_of("apiextensions.k8s.io", "customresourcedefinitions")?;
        self.get(&crds, None, &format!("{}.{}", rt.plural, rt.group)).cloned()
    }

    /// PUT (and the last step of every PATCH): `candidate` replaces the stored object, or only its
    /// status when `status` (the `/status` subresource).
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        candidate: Value,
        status: bool,
        opts: &WriteOpts,
        require_resource_version: bool,
    ) -> Result<Value, ApiError> {
        let old = self.get(rt, namespace, name).cloned().ok_or_else(|| ApiError::not_found(target(rt, name)))?;
        Self::check_type_meta(rt, &candidate)?;
        let given = &candidate["metadata"];
        if let Some(n) = given.get("name").and_then(Value::as_str)
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        if rt.namespaced
            && let Some(ns) = given.get("namespace").and_then(Value::as_str)
            && !ns.is_empty()
            && Some(ns) != namespace
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let old_uid = meta_str(&old, "uid").unwrap_or_default();
        if let Some(uid) = given.get("uid").and_then(Value::as_str)
            && !uid.is_empty()
            && uid != old_uid
        {
            return Err(ApiError::conflict(
                target(rt, name),
                &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {old_uid}"),
            ));
        }
        let old_rv = meta_str(&old, "resourceVersion").unwrap_or_default().to_owned();
        match given.get("resourceVersion").and_then(Value::as_str).filter(|rv| !rv.is_empty()) {
            Some(rv) if rv != old_rv => return Err(ApiError::stale(target(rt, name))),
            None if require_resource_version && rt.custom => {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &rt.group,
                    name,
                    &[FieldError {
                        path: "metadata.resourceVersion".into(),
                        message: "Invalid value: 0x0: must be specified for an update".into(),
                    }],
                ));
            }
            _ => {}
        }
        let mut new = if status {
            let mut new = old.clone();
            match candidate.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            new
        } else {
            let mut new = candidate;
            if !new["metadata"].is_object() {
                new["metadata"] = json!({});
            }
            for field in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old["metadata"].get(field) {
                    Some(v) => new["metadata"][field] = v.clone(),
                    None => {
                        if let Some(m) = new["metadata"].as_object_mut() {
                            m.remove(field);
                        }
                    }
                }
            }
            if let Some(m) = new["metadata"].as_object_mut() {
                m.remove("selfLink");
            }
            if rt.status_subresource {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            new
        };
        new["apiVersion"] = old["apiVersion"].clone();
        new["kind"] = Value::String(rt.kind.clone());
        new["metadata"]["resourceVersion"] = Value::String(old_rv);
        if is_deleting(&old) {
            let before = finalizers(&old);
            let added: Vec<String> = finalizers(&new).into_iter().filter(|f| !before.contains(f)).collect();
            if !added.is_empty() {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &rt.group,
                    name,
                    &[FieldError {
                        path: "metadata.finalizers".into(),
                        message: format!(
                            "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                            added.iter().map(|f| format!("\"{f}\"")).collect::<Vec<_>>().join(", ")
                        ),
                    }],
                ));
            }
        }
        self.admit(rt, &mut new, Some(&old), opts)?;
        if rt.has_generation() && validation::generation_relevant(&new) != validation::generation_relevant(&old) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            new["metadata"]["generation"] = json!(generation);
        }
        let owners = self.ownership(rt, Some(&old), &new, opts);
        new["metadata"]["managedFields"] = apply::managed_fields(&owners);
        if new == old || opts.dry_run {
            // A write that changes nothing is not a write: same resourceVersion, no watch event.
            return Ok(new);
        }
        if is_deleting(&new) && finalizers(&new).is_empty() {
            return Ok(self.commit_remove(rt, new));
        }
        let stored = self.commit_put(rt, new, Some(old));
        self.owners.insert(meta_str(&stored, "uid").unwrap_or_default().to_owned(), owners);
        Ok(stored)
    }

    /// The field owners after this write: an updater owns what it changed, an applier what it
    /// applied.
    fn ownership(&self, rt: &ResourceType, old: Option<&Value>, new: &Value, opts: &WriteOpts) -> Owners {
        let uid = old.and_then(|o| meta_str(o, "uid")).unwrap_or_default();
        let mut owners = self.owners.get(uid).cloned().unwrap_or_default();
        let owner = Owner {
            manager: opts.manager.clone(),
            apply: opts.apply.is_some(),
            api_version: rt.api_version(),
            time: now(),
        };
        let schema = rt.schema.as_ref();
        match &opts.apply {
            None => apply::take_changed(&mut owners, old, new, schema, &owner),
            Some(applied) => {
                apply::take_applied(&mut owners, applied.previous.as_ref(), &applied.applied, schema, &owner);
                // Fields not in the object (gone, or applied where the server ignores them) have
                // no owner.
                let present = apply::leaves(new, schema);
                owners.retain(|path, _| present.contains_key(path));
            }
        }
        owners
    }

    /// DELETE: removes the object, or (with finalizers, or for kinds whose deletion is a
    /// process) marks it with `deletionTimestamp`. Returns the object and whether it is gone.
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<(Value, bool), ApiError> {
        let old = self.get(rt, namespace, name).cloned().ok_or_else(|| ApiError::not_found(target(rt, name)))?;
        let uid = meta_str(&old, "uid").unwrap_or_default();
        if let Some(want) = &opts.uid
            && want != uid
        {
            return Err(ApiError::conflict(
                target(rt, name),
                &format!("Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"),
            ));
        }
        let rv = meta_str(&old, "resourceVersion").unwrap_or_default();
        if let Some(want) = &opts.resource_version
            && want != rv
        {
            return Err(ApiError::conflict(
                target(rt, name),
                &format!("Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in meta: {rv}"),
            ));
        }
        let extra_finalizer = match opts.propagation.as_deref() {
            None | Some("Background") => None,
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            Some(other) => {
                return Err(ApiError::invalid(
                    "DeleteOptions",
                    "meta.k8s.io",
                    "",
                    &[FieldError {
                        path: "propagationPolicy".into(),
                        message: format!(
                            "Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                        ),
                    }],
                ));
            }
        };
        if is_deleting(&old) {
            return Ok((old, false));
        }
        let mut fins = finalizers(&old);
        if let Some(f) = extra_finalizer
            && !fins.iter().any(|x| x == f)
        {
            fins.push(f.to_owned());
        }
        if rt.plural == "customresourcedefinitions" {
            fins.push("customresourcecleanup.apiextensions.k8s.io".into());
        }
        let is_namespace = rt.group.is_empty() && rt.plural == "namespaces";
        if is_namespace && matches!(name, "default" | "kube-system" | "kube-public") {
            return Err(ApiError::forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        if fins.is_empty() && !is_namespace {
            if opts.dry_run {
                return Ok((old, true));
            }
            return Ok((self.commit_remove(rt, old), true));
        }
        let mut new = old.clone();
        new["metadata"]["deletionTimestamp"] = Value::String(now());
        new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        if !fins.is_empty() {
            new["metadata"]["finalizers"] = json!(fins);
        }
        if let Some(g) = old["metadata"]["generation"].as_i64().filter(|g| *g > 0) {
            new["metadata"]["generation"] = json!(g + 1);
        }
        if is_namespace {
            new["status"]["phase"] = json!("Terminating");
        }
        if opts.dry_run {
            return Ok((new, false));
        }
        let stored = self.commit_put(rt, new, Some(old));
        self.gc_pending = true;
        Ok((stored, false))
    }

    /// Objects of one resource, filtered, sorted by (namespace, name).
    pub fn select(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Vec<Value> {
        self.objects
            .get(&res_key(rt))
            .map(|m| {
                m.iter()
                    .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
                    .filter(|(_, o)| labels.matches(o) && fields.matches(o))
                    .map(|(_, o)| o.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn all_objects(&self) -> Vec<(ResKey, Value)> {
        self.objects.iter().flat_map(|(rk, m)| m.values().map(move |o| (rk.clone(), o.clone()))).collect()
    }

    fn remove_finalizer(&mut self, rt: &ResourceType, object: &Value, finalizer: &str) {
        let mut new = object.clone();
        let rest: Vec<String> = finalizers(object).into_iter().filter(|f| f != finalizer).collect();
        new["metadata"]["finalizers"] = json!(rest);
        if rest.is_empty() {
            if let Some(m) = new["metadata"].as_object_mut() {
                m.remove("finalizers");
            }
            if is_deleting(&new) {
                self.commit_remove(rt, new);
                return;
            }
        }
        self.commit_put(rt, new, Some(object.clone()));
    }

    /// One pass of what the garbage collector, the namespace controller and the CRD finalizer
    /// do; returns whether it changed anything (the caller repeats until it does not).
    pub fn collect_garbage(&mut self) -> bool {
        let all = self.all_objects();
        let uids: HashSet<String> = all.iter().filter_map(|(_, o)| meta_str(o, "uid").map(str::to_owned)).collect();
        let dependents_of = |uid: &str| -> Vec<(ResKey, Value)> {
            all.iter()
                .filter(|(_, o)| {
                    o["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(uid)))
                })
                .cloned()
                .collect()
        };
        let background = DeleteOpts::default();
        for (rk, object) in &all {
            let Some(rt) = self.type_of(&rk.0, &rk.1) else { continue };
            let ns = meta_str(object, "namespace").map(str::to_owned);
            let name = meta_str(object, "name").unwrap_or_default().to_owned();
            let uid = meta_str(object, "uid").unwrap_or_default().to_owned();
            if is_deleting(object) {
                let fins = finalizers(object);
                if fins.iter().any(|f| f == "orphan") {
                    for (drk, dependent) in dependents_of(&uid) {
                        let Some(drt) = self.type_of(&drk.0, &drk.1) else { continue };
                        let mut new = dependent.clone();
                        if let Some(refs) = new["metadata"]["ownerReferences"].as_array_mut() {
                            refs.retain(|r| r["uid"].as_str() != Some(uid.as_str()));
                        }
                        self.commit_put(&drt, new, Some(dependent));
                    }
                    self.remove_finalizer(&rt, object, "orphan");
                    return true;
                }
                if fins.iter().any(|f| f == "foregroundDeletion") {
                    let dependents = dependents_of(&uid);
                    if dependents.is_empty() {
                        self.remove_finalizer(&rt, object, "foregroundDeletion");
                        return true;
                    }
                    let mut changed = false;
                    for (drk, dependent) in dependents.iter().filter(|(_, d)| !is_deleting(d)) {
                        changed |= self.delete_dependent(drk, dependent, &background);
                    }
                    if changed {
                        return true;
                    }
                }
                if rt.plural == "customresourcedefinitions"
                    && fins.iter().any(|f| f == "customresourcecleanup.apiextensions.k8s.io")
                {
                    let group = object["spec"]["group"].as_str().unwrap_or_default().to_owned();
                    let plural = object["spec"]["names"]["plural"].as_str().unwrap_or_default().to_owned();
                    let instances: Vec<Value> = self
                        .objects
                        .get(&(group.clone(), plural.clone()))
                        .map(|m| m.values().cloned().collect())
                        .unwrap_or_default();
                    if instances.is_empty() {
                        self.remove_finalizer(&rt, object, "customresourcecleanup.apiextensions.k8s.io");
                        return true;
                    }
                    let mut changed = false;
                    for instance in instances.iter().filter(|i| !is_deleting(i)) {
                        changed |= self.delete_dependent(&(group.clone(), plural.clone()), instance, &background);
                    }
                    if changed {
                        return true;
                    }
                }
                if rt.group.is_empty() && rt.plural == "namespaces" {
                    let contents: Vec<(ResKey, Value)> =
                        all.iter().filter(|(_, o)| meta_str(o, "namespace") == Some(name.as_str())).cloned().collect();
                    if contents.is_empty() {
                        if fins.is_empty() {
                            self.commit_remove(&rt, object.clone());
                            return true;
                        }
                    } else {
                        let mut changed = false;
                        for (crk, content) in contents.iter().filter(|(_, o)| !is_deleting(o)) {
                            changed |= self.delete_dependent(crk, content, &background);
                        }
                        if changed {
                            return true;
                        }
                    }
                }
                continue;
            }
            let Some(refs) = object["metadata"]["ownerReferences"].as_array().filter(|r| !r.is_empty()) else {
                continue;
            };
            let alive: Vec<Value> =
                refs.iter().filter(|r| r["uid"].as_str().is_some_and(|u| uids.contains(u))).cloned().collect();
            if alive.is_empty() {
                let _ = self.delete(&rt, ns.as_deref(), &name, &background);
                return true;
            }
            if alive.len() < refs.len() {
                let mut new = object.clone();
                new["metadata"]["ownerReferences"] = json!(alive);
                self.commit_put(&rt, new, Some(object.clone()));
                return true;
            }
        }
        false
    }

    fn delete_dependent(&mut self, rk: &ResKey, object: &Value, opts: &DeleteOpts) -> bool {
        let Some(rt) = self.type_of(&rk.0, &rk.1) else { return false };
        let ns = meta_str(object, "namespace").map(str::to_owned);
        let name = meta_str(object, "name").unwrap_or_default().to_owned();
        self.delete(&rt, ns.as_deref(), &name, opts).is_ok()
    }

    /// Runs the collector until nothing is left to do.
    pub fn collect_all_garbage(&mut self) {
        self.gc_pending = false;
        // Bounded: every pass commits a change, and a cycle of owners cannot grow the store.
        for _ in 0..10_000 {
            if !self.collect_garbage() {
                break;
            }
        }
    }
}

/// `generateName`'s suffix: five characters from the server's alphabet (no vowels, no
/// look-alikes).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect()
}
