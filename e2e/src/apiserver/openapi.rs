//! `/openapi/v3`: the OpenAPI v3 discovery document and one document per group version, in the
//! real server's shape, so that kubectl can ask whether a kind takes `fieldValidation` (it
//! validates through the server then, as against a real cluster; without the documents it
//! refuses to apply) and `kubectl explain` finds the custom resources' schemas.
//!
//! Simplified: paths and operations for every kind served (with the query parameters and patch
//! media types this server takes, `x-kubernetes-action` and `x-kubernetes-group-version-kind`),
//! component schemas only for custom resources (their CRD's `openAPIV3Schema`, metadata not
//! expanded into `ObjectMeta`); no response schemas. `/openapi/v2` is protobuf-first on the real
//! server and is not served (404), which kubectl tolerates when v3 answers.

use std::hash::{DefaultHasher, Hash, Hasher};

use serde_json::{Map, Value, json};

use super::resources::ResourceType;

const PATCH_SCHEMA: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";

/// The path of a group version in the discovery document: `api/v1` or `apis/<group>/<version>`.
fn gv_path(t: &ResourceType) -> String {
    if t.group.is_empty() { format!("api/{}", t.version) } else { format!("apis/{}/{}", t.group, t.version) }
}

/// `/openapi/v3`: every group version with the URL of its document (content hash in the query,
/// which clients use as a cache key).
pub(crate) fn root(types: &[ResourceType]) -> Value {
    let mut paths = Map::new();
    for t in types {
        let path = gv_path(t);
        if paths.contains_key(&path) {
            continue;
        }
        let doc = group_version(types, &path).unwrap_or_default();
        paths.insert(path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", hash(&doc))}));
    }
    json!({"paths": paths})
}

fn hash(doc: &Value) -> String {
    let mut hasher = DefaultHasher::new();
    doc.to_string().hash(&mut hasher);
    format!("{:016X}", hasher.finish())
}

/// The schema name the real server gives a kind: the group reversed (`dsp-mqtt.io` →
/// `io.dsp-mqtt`), then version and kind.
fn schema_name(t: &ResourceType) -> String {
    let reversed: Vec<&str> = t.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), t.version, t.kind)
}

/// The document of one group version (`api/v1`, `apis/dsp-mqtt.io/v1alpha1`), `None` when no
/// kind is served there.
pub(crate) fn group_version(types: &[ResourceType], path: &str) -> Option<Value> {
    let matching: Vec<&ResourceType> = types.iter().filter(|t| gv_path(t) == path).collect();
    if matching.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for t in matching {
        let gvk = json!({"group": t.group, "version": t.version, "kind": t.kind});
        let prefix = format!("/{path}");
        let (collection, item) = if t.namespaced {
            (
                format!("{prefix}/namespaces/{{namespace}}/{}", t.plural),
                format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", t.plural),
            )
        } else {
            (format!("{prefix}/{}", t.plural), format!("{prefix}/{}/{{name}}", t.plural))
        };
        let mut path_params = vec![query_param("pretty")];
        if t.namespaced {
            path_params.push(path_param("namespace", "object name and auth scope, such as for teams and projects"));
        }
        let ops = Operations { t, gvk: &gvk };
        paths.insert(
            collection.clone(),
            json!({
                "get": ops.op("list", "list or watch objects of kind", &["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "resourceVersionMatch", "sendInitialEvents", "timeoutSeconds", "watch", "allowWatchBookmarks"], false),
                "post": ops.op("post", "create", &["dryRun", "fieldManager", "fieldValidation"], true),
                "delete": ops.op("deletecollection", "delete collection of", &["dryRun", "labelSelector", "fieldSelector", "propagationPolicy"], false),
                "parameters": path_params.clone(),
            }),
        );
        let mut item_params = path_params.clone();
        item_params.insert(0, path_param("name", &format!("name of the {}", t.kind)));
        paths.insert(
            item.clone(),
            json!({
                "get": ops.op("get", "read the specified", &[], false),
                "put": ops.op("put", "replace the specified", &["dryRun", "fieldManager", "fieldValidation"], true),
                "patch": ops.patch("partially update the specified"),
                "delete": ops.op("delete", "delete", &["dryRun", "propagationPolicy"], false),
                "parameters": item_params.clone(),
            }),
        );
        if t.status_subresource {
            paths.insert(
                format!("{item}/status"),
                json!({
                    "get": ops.op("get", "read status of the specified", &[], false),
                    "put": ops.op("put", "replace status of the specified", &["dryRun", "fieldManager", "fieldValidation"], true),
                    "patch": ops.patch("partially update status of the specified"),
                    "parameters": item_params,
                }),
            );
        }
        if t.namespaced {
            paths.insert(
                format!("{prefix}/{}", t.plural),
                json!({"get": ops.op("list", "list or watch objects of kind", &["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "watch"], false)}),
            );
        }
        if let Some(schema) = &t.schema {
            let mut schema = schema.clone();
            schema["x-kubernetes-group-version-kind"] = json!([gvk]);
            schemas.insert(schema_name(t), schema);
        }
    }
    schemas.insert(
        PATCH_SCHEMA.into(),
        json!({"description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.",
            "type": "object"}),
    );
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": super::resources::version()["gitVersion"]},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

fn query_param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description,
        "schema": {"type": "string", "uniqueItems": true}})
}

struct Operations<'a> {
    t: &'a ResourceType,
    gvk: &'a Value,
}

impl Operations<'_> {
    fn op(&self, action: &str, what: &str, query: &[&str], body: bool) -> Value {
        let mut op = json!({
            "description": format!("{what} {}", self.t.kind),
            "parameters": query.iter().map(|q| query_param(q)).collect::<Vec<_>>(),
            "responses": {"200": {"description": "OK"}, "401": {"description": "Unauthorized"}},
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": self.gvk,
        });
        if body {
            op["requestBody"] = json!({"content": {"*/*": {"schema": self.body_schema()}}, "required": true});
        }
        op
    }

    /// PATCH with the media types this server takes for the kind (strategic merge patch for
    /// built-ins only, as on the real server).
    fn patch(&self, what: &str) -> Value {
        let mut op = self.op("patch", what, &["dryRun", "fieldManager", "fieldValidation", "force"], false);
        let mut content = Map::new();
        let mut types =
            vec!["application/apply-patch+yaml", "application/json-patch+json", "application/merge-patch+json"];
        if !self.t.custom {
            types.push("application/strategic-merge-patch+json");
        }
        for media in types {
            content.insert(media.into(), json!({"schema": {"$ref": format!("#/components/schemas/{PATCH_SCHEMA}")}}));
        }
        op["requestBody"] = json!({"content": content, "required": true});
        op
    }

    fn body_schema(&self) -> Value {
        if self.t.schema.is_some() {
            json!({"$ref": format!("#/components/schemas/{}", schema_name(self.t))})
        } else {
            json!({"type": "object"})
        }
    }
}
