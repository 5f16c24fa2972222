//! What the controllers watch and write: a controller whose own status writes trigger no
//! reconcile (decision 28), and status written as a merge patch of what changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Context, Error};

/// The state the operator's own status writes leave each object in: a watch event showing an
/// object in exactly that state (same generation, annotations, finalizers, deletion, status) is
/// our write coming back and triggers no reconcile (issue 17: it used to cost one more reconcile
/// of reads per change). Recorded before the write, so the event cannot overtake the record.
/// Every other event triggers, status writes by anyone else included.
#[derive(Debug, Default)]
pub(crate) struct OwnWrites(Mutex<HashMap<String, u64>>);

impl OwnWrites {
    /// The object's uid: unique across kinds (an asset and a transfer may share a name) and
    /// across a deletion and a re-creation under one name.
    fn key(meta: &kube::api::ObjectMeta) -> String {
        meta.uid.clone().unwrap_or_default()
    }

    /// The state: what triggers a reconcile in the metadata, and the status.
    fn state(meta: &kube::api::ObjectMeta, status: &serde_json::Value) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        meta.generation.hash(&mut h);
        meta.deletion_timestamp.as_ref().map(|t| t.0.as_millisecond()).hash(&mut h);
        meta.annotations.hash(&mut h);
        meta.finalizers.hash(&mut h);
        status.to_string().hash(&mut h);
        h.finish()
    }

    /// Records that we are about to give the object (as `meta` has it) this status.
    fn writing(&self, meta: &kube::api::ObjectMeta, status: &serde_json::Value) {
        self.0.lock().expect("not poisoned").insert(Self::key(meta), Self::state(meta, status));
    }

    /// Whether the object is in the state our last status write left it in (its status is
    /// only serialized when we wrote one).
    fn is_own(&self, meta: &kube::api::ObjectMeta, status: impl FnOnce() -> serde_json::Value) -> bool {
        let Some(written) = self.0.lock().expect("not poisoned").get(&Self::key(meta)).copied() else {
            return false;
        };
        written == Self::state(meta, &status())
    }

    /// Forgets an object (deleted).
    fn forget(&self, meta: &kube::api::ObjectMeta) {
        self.0.lock().expect("not poisoned").remove(&Self::key(meta));
    }
}

/// A controller of `K` whose reconciles are not triggered by the operator's own status writes
/// ([`OwnWrites`]); its cache still holds every change, which reconciles read. `status` gives an
/// object's status as JSON.
pub(crate) fn controller_of<K>(
    api: kube::Api<K>,
    ctx: &Arc<Context>,
    status: fn(&K) -> serde_json::Value,
) -> kube::runtime::Controller<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default + std::fmt::Debug + Unpin,
{
    use futures::TryStreamExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let (reader, writer) = reflector::store();
    let own = ctx.clone();
    // managedFields are dropped from the cache: nothing reads them, and with 10,000 transfers
    // they were most of the operator's memory (issue 17).
    let trigger = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|object: &mut K| object.meta_mut().managed_fields = None)
        .reflect(writer)
        .touched_objects()
        .try_filter(move |object| {
            let meta = object.meta();
            let gone = meta.deletion_timestamp.is_some() && meta.finalizers.as_ref().is_none_or(Vec::is_empty);
            if gone {
                own.own_writes.forget(meta);
            }
            // A deleted object needs no reconcile (its finalizer is gone); our own write needs none.
            std::future::ready(!gone && !own.own_writes.is_own(meta, || status(object)))
        });
    kube::runtime::Controller::for_stream(trigger, reader).with_config(ctx.controller_config())
}

/// Waits until `store` has its first list. Polled: kube-runtime's readiness signal wakes only
/// the latest of several waiters (a controller's runner, or one of many reconciles after a
/// restart); once ready, the answer is immediate. `false` when the store's writer is gone.
pub(crate) async fn store_ready<K>(store: &kube::runtime::reflector::Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(std::time::Duration::from_millis(50), store.wait_until_ready()).await {
            Ok(result) => return result.is_ok(),
            Err(_) => continue,
        }
    }
}

/// Writes `new` as the status of `name` when it differs from `old`: a JSON merge patch of what
/// changed (removed fields as `null`), so that no conflict retry is needed and nothing else is
/// sent (issue 17: was a full PUT of the object).
pub(crate) async fn patch_status<K, S>(
    ctx: &Context,
    api: &kube::Api<K>,
    meta: &kube::api::ObjectMeta,
    old: Option<&S>,
    new: &S,
) -> Result<(), Error>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    S: serde::Serialize,
{
    // A status type's fields are strings, numbers, lists and maps with string keys: it serializes.
    let json = |s: &S| serde_json::to_value(s).expect("a status serializes to JSON");
    let (old, new) = (old.map(json), json(new));
    let Some(diff) = merge_diff(old.as_ref(), &new) else { return Ok(()) };
    ctx.own_writes.writing(meta, &new);
    let patch = kube::api::Patch::Merge(serde_json::json!({ "status": diff }));
    let name = meta.name.as_deref().unwrap_or_default();
    api.patch_status(name, &kube::api::PatchParams::default(), &patch).await.map_err(Error::Kube)?;
    Ok(())
}

/// The RFC 7386 merge patch that turns `old` into `new` (`None`: they are equal). Objects are
/// diffed key by key, removed keys become `null`; anything else (lists included) is replaced.
fn merge_diff(old: Option<&serde_json::Value>, new: &serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::Value;
    match (old, new) {
        (Some(old), new) if old == new => None,
        (Some(Value::Object(old)), Value::Object(new)) => {
            let mut patch = serde_json::Map::new();
            for key in old.keys().filter(|k| !new.contains_key(*k)) {
                patch.insert(key.clone(), Value::Null);
            }
            for (key, value) in new {
                if let Some(d) = merge_diff(old.get(key), value) {
                    patch.insert(key.clone(), d);
                }
            }
            Some(Value::Object(patch))
        }
        (_, new) => Some(new.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::PAUSED_ANNOTATION;

    #[test]
    fn the_status_patch_holds_what_changed_and_nulls_what_went() {
        use serde_json::json;
        let old = json!({"phase": "Active", "identity": {"profile": "kc", "clientId": "c"}, "conditions": [{"type": "Ready"}], "tokenExpiresAt": "t"});
        let new = json!({"phase": "Suspended", "identity": {"profile": "kc"}, "conditions": [{"type": "Ready"}, {"type": "X"}]});
        assert_eq!(
            merge_diff(Some(&old), &new),
            Some(
                json!({"phase": "Suspended", "identity": {"clientId": null}, "conditions": [{"type": "Ready"}, {"type": "X"}], "tokenExpiresAt": null})
            )
        );
        assert_eq!(merge_diff(Some(&old), &old), None, "no change, no patch");
        assert_eq!(merge_diff(None, &new), Some(new.clone()), "no status yet: all of it");
        // Applying the patch (RFC 7386) gives the new status.
        let mut applied = old.clone();
        json_merge(&mut applied, merge_diff(Some(&old), &new).unwrap());
        assert_eq!(applied, new);
    }

    fn json_merge(target: &mut serde_json::Value, patch: serde_json::Value) {
        match patch {
            serde_json::Value::Object(p) => {
                if !target.is_object() {
                    *target = serde_json::json!({});
                }
                let t = target.as_object_mut().unwrap();
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(&k);
                    } else {
                        json_merge(t.entry(k).or_insert(serde_json::Value::Null), v);
                    }
                }
            }
            other => *target = other,
        }
    }

    #[test]
    fn only_the_state_our_own_status_write_leaves_is_recognised() {
        use serde_json::json;
        let own = OwnWrites::default();
        let meta = kube::api::ObjectMeta {
            name: Some("t".into()),
            namespace: Some("ns".into()),
            uid: Some("uid-1".into()),
            generation: Some(1),
            ..Default::default()
        };
        let ours = json!({"phase": "Active"});
        assert!(!own.is_own(&meta, || ours.clone()), "nothing written yet");
        own.writing(&meta, &ours);
        assert!(own.is_own(&meta, || ours.clone()), "our write coming back (or the same state listed again)");
        assert!(
            !own.is_own(&meta, || json!({"phase": "Active", "tokenExpiresAt": "x"})),
            "someone else's status write"
        );
        let spec_changed = kube::api::ObjectMeta { generation: Some(2), ..meta.clone() };
        assert!(!own.is_own(&spec_changed, || ours.clone()), "a spec change");
        let paused = kube::api::ObjectMeta {
            annotations: Some([(PAUSED_ANNOTATION.to_owned(), "true".to_owned())].into()),
            ..meta.clone()
        };
        assert!(!own.is_own(&paused, || ours.clone()), "an annotation");
        // Another object, even of the same name (another kind, or re-created): another uid.
        let other = kube::api::ObjectMeta { uid: Some("uid-2".into()), ..meta.clone() };
        assert!(!own.is_own(&other, || ours.clone()), "another object");
        own.forget(&meta);
        assert!(!own.is_own(&meta, || ours.clone()), "forgotten once deleted");
    }
}
