//! The kinds the server knows (built-ins and those registered by CRDs) and the discovery
//! documents describing them.

use serde_json::{Value, json};

/// One served resource in one version.
#[derive(Clone, Debug)]
pub(crate) struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status_subresource: bool,
    /// The CRD's `openAPIV3Schema` for custom resources.
    pub schema: Option<Value>,
    /// The CRD version's `additionalPrinterColumns` (server-side printing).
    pub printer_columns: Vec<Value>,
    /// A custom resource (registered by a CRD).
    pub custom: bool,
    /// How names are checked.
    pub name_rule: NameRule,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NameRule {
    /// RFC 1123 subdomain (most kinds).
    Subdomain,
    /// RFC 1123 label (namespaces).
    Label,
}

const VERBS: [&str; 8] = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// Whether writes bump `metadata.generation` (custom resources and CRDs: the kinds with a spec
    /// here).
    pub fn has_generation(&self) -> bool {
        self.custom || self.plural == "customresourcedefinitions"
    }

    /// Field selector labels besides `metadata.name` and `metadata.namespace`, with where they
    /// are in the object.
    pub fn extra_field_labels(&self) -> &'static [(&'static str, &'static str)] {
        match (self.group.as_str(), self.plural.as_str()) {
            ("", "secrets") => &[("type", "/type")],
            ("", "namespaces") => &[("status.phase", "/status/phase")],
            ("", "events") => &[
                ("involvedObject.kind", "/involvedObject/kind"),
                ("involvedObject.namespace", "/involvedObject/namespace"),
                ("involvedObject.name", "/involvedObject/name"),
                ("involvedObject.uid", "/involvedObject/uid"),
                ("involvedObject.apiVersion", "/involvedObject/apiVersion"),
                ("involvedObject.resourceVersion", "/involvedObject/resourceVersion"),
                ("involvedObject.fieldPath", "/involvedObject/fieldPath"),
                ("reason", "/reason"),
                ("reportingComponent", "/reportingComponent"),
                ("source", "/source/component"),
                ("type", "/type"),
            ],
            _ => &[],
        }
    }

    fn discovery_entries(&self) -> Vec<Value> {
        let mut main = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": VERBS,
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            main["categories"] = json!(self.categories);
        }
        let mut out = vec![main];
        if self.status_subresource {
            out.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        out
    }
}

fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    short_names: &[&str],
    status: bool,
) -> ResourceType {
    ResourceType {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        kind: kind.into(),
        namespaced,
        short_names: short_names.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        status_subresource: status,
        schema: None,
        printer_columns: Vec::new(),
        custom: false,
        name_rule: if plural == "namespaces" { NameRule::Label } else { NameRule::Subdomain },
    }
}

/// The built-in kinds this server serves.
pub(crate) fn builtins() -> Vec<ResourceType> {
    let mut crds = builtin(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
        true,
    );
    crds.categories = vec!["api-extensions".into()];
    vec![
        builtin("", "v1", "namespaces", "Namespace", false, &["ns"], true),
        builtin("", "v1", "secrets", "Secret", true, &[], false),
        builtin("", "v1", "configmaps", "ConfigMap", true, &["cm"], false),
        builtin("", "v1", "events", "Event", true, &["ev"], false),
        builtin("events.k8s.io", "v1", "events", "Event", true, &["ev"], false),
        builtin("coordination.k8s.io", "v1", "leases", "Lease", true, &[], false),
        crds,
    ]
}

/// The served versions of a stored CRD as resource types.
pub(crate) fn from_crd(crd: &Value) -> Vec<ResourceType> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
    };
    let Some(versions) = spec["versions"].as_array() else { return Vec::new() };
    versions
        .iter()
        .filter(|v| v["served"].as_bool().unwrap_or(false))
        .map(|v| ResourceType {
            group: spec["group"].as_str().unwrap_or_default().into(),
            version: v["name"].as_str().unwrap_or_default().into(),
            plural: names["plural"].as_str().unwrap_or_default().into(),
            singular: names["singular"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| names["kind"].as_str().unwrap_or_default().to_lowercase()),
            kind: names["kind"].as_str().unwrap_or_default().into(),
            namespaced: spec["scope"] == "Namespaced",
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            status_subresource: v["subresources"]["status"].is_object(),
            schema: Some(v["schema"]["openAPIV3Schema"].clone()),
            printer_columns: v["additionalPrinterColumns"].as_array().cloned().unwrap_or_default(),
            custom: true,
            name_rule: NameRule::Subdomain,
        })
        .collect()
}

/// `/api`.
pub(crate) fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// The groups (other than core) and their versions, in registration order.
fn groups(types: &[ResourceType]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for t in types.iter().filter(|t| !t.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, versions)) if !versions.contains(&t.version) => versions.push(t.version.clone()),
            Some(_) => {}
            None => out.push((t.group.clone(), vec![t.version.clone()])),
        }
    }
    out
}

fn group_doc(group: &str, versions: &[String]) -> Value {
    let versions: Vec<Value> =
        versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
    json!({"name": group, "versions": versions, "preferredVersion": versions[0]})
}

/// `/apis`.
pub(crate) fn group_list(types: &[ResourceType]) -> Value {
    let groups: Vec<Value> = groups(types).iter().map(|(g, v)| group_doc(g, v)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`.
pub(crate) fn group(types: &[ResourceType], group: &str) -> Option<Value> {
    let (name, versions) = groups(types).into_iter().find(|(g, _)| g == group)?;
    let mut doc = group_doc(&name, &versions);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// `/api/v1` or `/apis/<group>/<version>`.
pub(crate) fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let matching: Vec<&ResourceType> = types.iter().filter(|t| t.group == group && t.version == version).collect();
    if matching.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    let resources: Vec<Value> = matching.iter().flat_map(|t| t.discovery_entries()).collect();
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
}

/// The media type of aggregated discovery (what `/api` and `/apis` answer when asked for it).
pub(crate) const AGGREGATED_DISCOVERY: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Aggregated discovery (`apidiscovery.k8s.io/v2`) of the core group (`core`) or of all others.
pub(crate) fn aggregated(types: &[ResourceType], core: bool) -> Value {
    let groups = if core { vec![(String::new(), vec!["v1".to_owned()])] } else { groups(types) };
    let items: Vec<Value> = groups
        .iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|version| {
                    let resources: Vec<Value> = types
                        .iter()
                        .filter(|t| t.group == *group && t.version == *version)
                        .map(|t| {
                            let kind = json!({"group": t.group, "version": t.version, "kind": t.kind});
                            let mut r = json!({
                                "resource": t.plural,
                                "responseKind": kind,
                                "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": t.singular,
                                "verbs": VERBS,
                            });
                            if !t.short_names.is_empty() {
                                r["shortNames"] = json!(t.short_names);
                            }
                            if !t.categories.is_empty() {
                                r["categories"] = json!(t.categories);
                            }
                            if t.status_subresource {
                                r["subresources"] = json!([{"subresource": "status", "responseKind": kind,
                                    "verbs": ["get", "patch", "update"]}]);
                            }
                            r
                        })
                        .collect();
                    json!({"version": version, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": group}, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// `/version`.
pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "34",
        "gitVersion": "v1.34.0-mqtt-dsp-apiserver-double",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}
