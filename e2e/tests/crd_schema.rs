//! The committed CRDs in `crds/` against the examples a user copies and the manifests they must
//! refuse. Validation is done the way the API server does it (see `e2e::schema`).

use std::path::{Path, PathBuf};

use e2e::schema::{self, FieldError};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
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

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn check(object: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let kind = object["kind"].as_str().unwrap();
    schema::validate(&committed_schema(kind), object, old)
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

#[test]
fn every_example_manifest_is_accepted() {
    let mut checked = 0;
    for file in yaml_files(&repo().join("examples")) {
        for doc in documents(&file) {
            if doc["apiVersion"] != "dsp-mqtt.io/v1alpha1" {
                continue;
            }
            let errors = check(&doc, None);
            assert!(errors.is_empty(), "{} is refused: {errors:#?}", file.display());
            checked += 1;
        }
    }
    assert!(checked >= 3, "expected at least 3 example resources, found {checked}");
}

#[test]
fn every_bad_manifest_is_refused_for_its_own_reason() {
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
        let (old, new) = match docs.as_slice() {
            [new] => (None, new),
            [old, new] => {
                // The stored object must itself be valid, or the test proves nothing.
                let errors = check(old, None);
                assert!(errors.is_empty(), "{}: the stored object is invalid: {errors:#?}", file.display());
                (Some(old), new)
            }
            _ => panic!("{}: expected one or two documents", file.display()),
        };
        let errors = check(new, old);
        let rendered: Vec<String> = errors.iter().map(ToString::to_string).collect();
        match errors.iter().find(|e| e.to_string().contains(&expect)) {
            None => {
                failures.push(format!("{}: expected an error containing {expect:?}, got {rendered:#?}", file.display()))
            }
            // Refused for its own reason and no other: every error concerns the same field.
            Some(hit) if errors.iter().any(|e| e.path != hit.path) => {
                failures.push(format!("{}: refused for more than the rule it tests: {rendered:#?}", file.display()))
            }
            Some(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
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

#[test]
fn the_bases_of_the_bad_manifests_are_valid() {
    assert_eq!(check(&asset(), None), vec![]);
    assert_eq!(check(&transfer(None), None), vec![]);
}

#[test]
fn dsp_state_changes_that_the_protocol_allows_are_accepted() {
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
        let errors = check(&transfer(to), Some(&transfer(from)));
        assert!(errors.is_empty(), "{from:?} -> {to:?} refused: {errors:#?}");
    }
}

#[test]
fn mutable_asset_fields_can_change() {
    let old = asset();
    let mut new = asset();
    new["spec"]["topics"] = json!(["factory/line-1/#", "factory/line-2/+/temperature"]);
    new["spec"]["endpoint"] = json!({"type": "mqtt-wss", "url": "wss://broker.example.com/mqtt"});
    new["spec"]["policy"]["contract"] = json!({"odrl": {"@type": "Set", "permission": [{"action": "use"}]}});
    new["spec"]["properties"] = json!({"name": "Line 1", "nested": {"free": ["form"]}});
    assert_eq!(check(&new, Some(&old)), vec![]);
}

#[test]
fn topic_filters_follow_mqtt() {
    let valid =
        ["#", "+", "a", "/", "a/b", "/a", "a/", "a//b", "+/+", "a/+/b/#", "sensor/temperature", "ünïcode/levél"];
    let invalid = ["", "a#", "a/#/b", "#/a", "a+", "+a/b", "a/b+/c", "$SYS/#", "$share/g/a", "a\u{0}b", "##"];
    for topic in valid {
        let mut a = asset();
        a["spec"]["topics"] = json!([topic]);
        assert_eq!(check(&a, None), vec![], "{topic:?} should be a valid filter");
    }
    for topic in invalid {
        let mut a = asset();
        a["spec"]["topics"] = json!([topic]);
        let errors = check(&a, None);
        assert!(errors.iter().any(|e| e.path == "spec.topics[0]"), "{topic:?} should be refused, got {errors:#?}");
    }
}

#[test]
fn topic_filters_are_bounded_by_mqtt_length() {
    let mut a = asset();
    a["spec"]["topics"] = json!(["t".repeat(65535)]);
    assert_eq!(check(&a, None), vec![]);
    a["spec"]["topics"] = json!(["t".repeat(65536)]);
    assert!(check(&a, None).iter().any(|e| e.path == "spec.topics[0]"));
}

#[test]
fn crds_are_structural_and_free_form_only_where_intended() {
    let asset = committed_schema("MqttAsset");
    let transfer = committed_schema("MqttTransfer");
    assert_eq!(schema::structural_violations(&asset), Vec::<String>::new());
    assert_eq!(schema::structural_violations(&transfer), Vec::<String>::new());
    assert_eq!(
        schema::free_form_paths(&asset),
        vec![
            "spec.policy.access.odrl",
            "spec.policy.contract.odrl",
            "spec.privateProperties",
            "spec.properties",
            "status.dataAddress"
        ]
    );
    assert_eq!(schema::free_form_paths(&transfer), vec!["status.dataAddress"]);
}

#[test]
fn cel_rules_stay_within_the_api_server_budget() {
    for kind in ["MqttAsset", "MqttTransfer"] {
        let warnings = schema::cel_rule_warnings(&committed_schema(kind));
        assert!(warnings.is_empty(), "{kind}: {warnings:#?}");
    }
}
