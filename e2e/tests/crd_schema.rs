//! The committed CRDs in `crds/` against the examples a user copies and the manifests they must
//! refuse, on a real kube-apiserver (e2e::systems::kubernetes): a create is a server-side dry run,
//! an update stores the old object and replaces it with the new one as a dry run. Writes ask for
//! strict field validation, as `kubectl apply` does.
//!
//! That the CRDs are structural and their CEL rules within the server's cost budget is the
//! server's own check: it refuses a CRD that is not. The control plane applies `crds/` when it
//! starts; `the_committed_crds_are_accepted_by_a_real_api_server` checks they are established and
//! served as committed.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use e2e::systems::kubernetes;
use futures::FutureExt;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use mqtt_dsp_operator::api::{MqttAsset, MqttTransfer};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// One refused field, as the API server reports it in a 422's `details.causes[]`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FieldError {
    /// Path of the field, e.g. `spec.topics[0]`; empty for the object itself.
    path: String,
    /// What is wrong, e.g. `Invalid value: "string": ...`.
    message: String,
}

impl FieldError {
    /// The note the server adds when schema errors kept it from evaluating the CEL rules: not a
    /// refusal of its own.
    fn is_skipped_rules_note(&self) -> bool {
        self.path.is_empty()
            && self.message.contains("some validation rules were not checked because the object was invalid")
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// A test's own namespace on the shared control plane, with the administrator's client.
struct Namespace {
    client: kube::Client,
    name: String,
    /// Objects get unique names, so that every update starts from an object of its own.
    created: AtomicUsize,
}

/// Runs `test` in a fresh namespace and deletes the namespace afterwards, also when the test
/// fails, and waits until it is gone: nothing is left behind.
async fn in_namespace<F>(test: impl FnOnce(Arc<Namespace>) -> F)
where
    F: Future<Output = ()>,
{
    mqtt_dsp_operator::install_crypto_provider();
    let plane = tokio::task::spawn_blocking(kubernetes::shared).await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    let name = plane.test_namespace("crd-schema").await;
    let namespace = Arc::new(Namespace { client: plane.admin_client().await, name, created: AtomicUsize::new(0) });
    let outcome = AssertUnwindSafe(test(namespace.clone())).catch_unwind().await;
    let deleted = plane.delete_namespace(&namespace.name, Duration::from_secs(60)).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    deleted.unwrap();
}

impl Namespace {
    fn api(&self, kind: &str) -> Api<DynamicObject> {
        let resource = match kind {
            "MqttAsset" => ApiResource::erase::<MqttAsset>(&()),
            "MqttTransfer" => ApiResource::erase::<MqttTransfer>(&()),
            other => panic!("no CRD for kind {other}"),
        };
        Api::namespaced_with(self.client.clone(), &self.name, &resource)
    }

    /// What the API server says to creating `object`, or to updating `old` to it: the refused
    /// fields, none if it is accepted. Only `old` is stored; the create or update is a dry run.
    async fn check(&self, object: &Value, old: Option<&Value>) -> Vec<FieldError> {
        let kind = object["kind"].as_str().unwrap();
        let api = self.api(kind);
        let n = self.created.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{n}", object["metadata"]["name"].as_str().unwrap_or("object"));
        let mut new = object.clone();
        new["metadata"]["name"] = json!(name);
        new["metadata"]["namespace"] = json!(self.name);
        let request = kube::core::Request::new(api.resource_url());
        let dry_run = PostParams { dry_run: true, ..Default::default() };
        let Some(old) = old else {
            let post = request.create(&dry_run, serde_json::to_vec(&new).unwrap()).unwrap();
            return self.send(post).await.err().unwrap_or_default();
        };
        let mut old = old.clone();
        old["metadata"] = new["metadata"].clone();
        let post = request.create(&PostParams::default(), serde_json::to_vec(&old).unwrap()).unwrap();
        let stored = self.send(post).await.unwrap_or_else(|errors| {
            // The stored object must itself be valid, or the test proves nothing.
            panic!("{kind} {name}: the stored object is refused: {errors:#?}")
        });
        new["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"].clone();
        let put = request.replace(&name, &dry_run, serde_json::to_vec(&new).unwrap()).unwrap();
        self.send(put).await.err().unwrap_or_default()
    }

    /// Sends a write with strict field validation; a refusal becomes its field errors.
    async fn send(&self, mut request: http::Request<Vec<u8>>) -> Result<Value, Vec<FieldError>> {
        // Without it (the server's default, `Warn`) an unknown field is pruned with a warning and
        // the write succeeds; kubectl asks for `Strict`.
        let uri = format!("{}&fieldValidation=Strict", request.uri());
        *request.uri_mut() = uri.parse().unwrap();
        match self.client.request::<Value>(request).await {
            Ok(object) => Ok(object),
            // 422 Invalid: one cause per refused field. 400 BadRequest: the strict decoding error
            // of an unknown field, with no causes (`... strict decoding error: unknown field
            // "spec.endpoint.tls"`).
            Err(kube::Error::Api(status)) if status.code == 422 || status.code == 400 => {
                let causes = status.details.as_ref().map(|d| d.causes.clone()).unwrap_or_default();
                if causes.is_empty() {
                    return Err(vec![FieldError { path: String::new(), message: status.message.clone() }]);
                }
                Err(causes
                    .into_iter()
                    // The object itself (a rule on the root) is the field `<nil>`.
                    .map(|c| FieldError {
                        path: if c.field == "<nil>" { String::new() } else { c.field },
                        message: c.message,
                    })
                    .collect())
            }
            Err(e) => panic!("the API server failed: {e}"),
        }
    }
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn every_example_manifest_is_accepted() {
    in_namespace(|ns| async move {
        let mut checked = 0;
        for file in yaml_files(&repo().join("examples")) {
            for doc in documents(&file) {
                if doc["apiVersion"] != "dsp-mqtt.io/v1alpha1" {
                    continue;
                }
                let errors = ns.check(&doc, None).await;
                assert!(errors.is_empty(), "{} is refused: {errors:#?}", file.display());
                checked += 1;
            }
        }
        assert!(checked >= 3, "expected at least 3 example resources, found {checked}");
    })
    .await;
}

#[tokio::test]
async fn every_bad_manifest_is_refused_for_its_own_reason() {
    in_namespace(|ns| async move {
        let dir = repo().join("e2e/manifests/invalid");
        let files = yaml_files(&dir);
        assert!(files.len() >= 30, "expected one bad manifest per rule, found {}", files.len());
        let mut failures = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let expect = text
                .lines()
                .find_map(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{} has no '# expect:' line", file.display()))
                .to_owned();
            let docs = documents(&file);
            let errors = match docs.as_slice() {
                [new] => ns.check(new, None).await,
                [old, new] => ns.check(new, Some(old)).await,
                _ => panic!("{}: expected one or two documents", file.display()),
            };
            let rendered: Vec<String> = errors.iter().map(ToString::to_string).collect();
            let errors: Vec<&FieldError> = errors.iter().filter(|e| !e.is_skipped_rules_note()).collect();
            match errors.iter().find(|e| e.to_string().contains(&expect)) {
                None => failures
                    .push(format!("{}: expected an error containing {expect:?}, got {rendered:#?}", file.display())),
                // Refused for its own reason and no other: every error concerns the same field.
                Some(hit) if errors.iter().any(|e| e.path != hit.path) => {
                    failures.push(format!("{}: refused for more than the rule it tests: {rendered:#?}", file.display()))
                }
                Some(_) => {}
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    })
    .await;
}

fn asset() -> Value {
    json!({
        "apiVersion": "dsp-mqtt.io/v1alpha1", "kind": "MqttAsset",
        "metadata": {"name": "a", "namespace": "ns"},
        "spec": {
            "endpoint": {"type": "mqtt-tls"},
            "topics": ["factory/line-1/#"],
            "auth": {"mode": "usrpw"},
            "policy": {"access": {"participantIds": ["did:web:consumer-a.example.com"]}}
        }
    })
}

fn transfer(state: Option<&str>) -> Value {
    let mut t = json!({
        "apiVersion": "dsp-mqtt.io/v1alpha1", "kind": "MqttTransfer",
        "metadata": {"name": "t", "namespace": "ns"},
        "spec": {"assetRef": {"name": "a"}, "consumer": {"participantId": "BPNL000000000001"}}
    });
    if let Some(s) = state {
        t["spec"]["state"] = json!(s);
    }
    t
}

#[tokio::test]
async fn the_bases_of_the_bad_manifests_are_valid() {
    in_namespace(|ns| async move {
        assert_eq!(ns.check(&asset(), None).await, vec![]);
        assert_eq!(ns.check(&transfer(None), None).await, vec![]);
    })
    .await;
}

#[tokio::test]
async fn dsp_state_changes_that_the_protocol_allows_are_accepted() {
    in_namespace(|ns| async move {
        let allowed = [
            (None, Some("Suspended")),
            (Some("Started"), Some("Suspended")),
            (Some("Suspended"), Some("Started")),
            (Some("Suspended"), None),
            (Some("Suspended"), Some("Terminated")),
            (Some("Started"), Some("Terminated")),
            (Some("Started"), Some("Completed")),
            (Some("Terminated"), Some("Terminated")),
        ];
        for (from, to) in allowed {
            let errors = ns.check(&transfer(to), Some(&transfer(from))).await;
            assert!(errors.is_empty(), "{from:?} -> {to:?} refused: {errors:#?}");
        }
    })
    .await;
}

#[tokio::test]
async fn mutable_asset_fields_can_change() {
    in_namespace(|ns| async move {
        let old = asset();
        let mut new = asset();
        new["spec"]["topics"] = json!(["factory/line-1/#", "factory/line-2/+/temperature"]);
        new["spec"]["endpoint"] = json!({"type": "mqtt-wss", "url": "wss://broker.example.com/mqtt"});
        new["spec"]["policy"]["contract"] = json!({"odrl": {"@type": "Set", "permission": [{"action": "use"}]}});
        new["spec"]["properties"] = json!({"name": "Line 1", "nested": {"free": ["form"]}});
        assert_eq!(ns.check(&new, Some(&old)).await, vec![]);
    })
    .await;
}

#[tokio::test]
async fn topic_filters_follow_mqtt() {
    in_namespace(|ns| async move {
        let valid =
            ["#", "+", "a", "/", "a/b", "/a", "a/", "a//b", "+/+", "a/+/b/#", "sensor/temperature", "ünïcode/levél"];
        let invalid = ["", "a#", "a/#/b", "#/a", "a+", "+a/b", "a/b+/c", "$SYS/#", "$share/g/a", "a\u{0}b", "##"];
        for topic in valid {
            let mut a = asset();
            a["spec"]["topics"] = json!([topic]);
            assert_eq!(ns.check(&a, None).await, vec![], "{topic:?} should be a valid filter");
        }
        for topic in invalid {
            let mut a = asset();
            a["spec"]["topics"] = json!([topic]);
            let errors = ns.check(&a, None).await;
            assert!(errors.iter().any(|e| e.path == "spec.topics[0]"), "{topic:?} should be refused, got {errors:#?}");
        }
    })
    .await;
}

#[tokio::test]
async fn topic_filters_are_bounded_by_mqtt_length() {
    in_namespace(|ns| async move {
        let mut a = asset();
        a["spec"]["topics"] = json!(["t".repeat(65535)]);
        assert_eq!(ns.check(&a, None).await, vec![]);
        a["spec"]["topics"] = json!(["t".repeat(65536)]);
        let errors = ns.check(&a, None).await;
        assert!(errors.iter().any(|e| e.path == "spec.topics[0]"), "got {errors:#?}");
    })
    .await;
}

/// The openAPIV3Schema of a committed CRD, by kind.
fn committed_schema(kind: &str) -> Value {
    let file = match kind {
        "MqttAsset" => "mqttassets.dsp-mqtt.io.yaml",
        "MqttTransfer" => "mqtttransfers.dsp-mqtt.io.yaml",
        other => panic!("no CRD for kind {other}"),
    };
    let text = std::fs::read_to_string(repo().join("crds").join(file)).unwrap();
    let crd: Value = serde_yaml::from_str(&text).unwrap();
    let versions = crd["spec"]["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1, "one served version, v1alpha1");
    versions[0]["schema"]["openAPIV3Schema"].clone()
}

/// Paths in `schema` whose values keep unknown fields (`x-kubernetes-preserve-unknown-fields`).
fn free_form_paths(schema: &Value) -> Vec<String> {
    fn walk(node: &Value, path: &str, out: &mut Vec<String>) {
        let join = |child: &str| if path.is_empty() { child.to_owned() } else { format!("{path}.{child}") };
        if node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
            out.push(path.to_owned());
        }
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (key, child) in props {
                walk(child, &join(key), out);
            }
        }
        if let Some(items) = node.get("items") {
            walk(items, &format!("{path}[*]"), out);
        }
    }
    let mut out = Vec::new();
    walk(schema, "", &mut out);
    out
}

/// Structural schemas and CEL rules within the cost budget are the server's to judge: it refuses
/// a CRD whose schema is not structural or whose rules exceed the budget. The control plane
/// applies `crds/` at start; here they are established, and what is served is what we commit.
#[tokio::test]
async fn the_committed_crds_are_accepted_by_a_real_api_server() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    mqtt_dsp_operator::install_crypto_provider();
    let plane = tokio::task::spawn_blocking(kubernetes::shared).await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    let crds: Api<CustomResourceDefinition> = Api::all(plane.admin_client().await);
    for (kind, name) in [("MqttAsset", "mqttassets.dsp-mqtt.io"), ("MqttTransfer", "mqtttransfers.dsp-mqtt.io")] {
        let crd = crds.get(name).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let conditions = crd.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        let status = |t: &str| conditions.iter().find(|c| c.type_ == t).map(|c| c.status.clone());
        assert_eq!(status("Established").as_deref(), Some("True"), "{name}: {conditions:#?}");
        assert_eq!(status("NonStructuralSchema"), None, "{name}: {conditions:#?}");
        let served = serde_json::to_value(&crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema).unwrap();
        assert_eq!(served, committed_schema(kind), "{name}: the served schema is not the committed one");
    }
}

#[test]
fn crds_are_free_form_only_where_intended() {
    assert_eq!(
        free_form_paths(&committed_schema("MqttAsset")),
        vec![
            "spec.policy.access.odrl",
            "spec.policy.contract.odrl",
            "spec.privateProperties",
            "spec.properties",
            "status.dataAddress"
        ]
    );
    assert_eq!(free_form_paths(&committed_schema("MqttTransfer")), vec!["status.dataAddress"]);
}
