//! The Argo CD health checks in `deploy/argocd/`, run as Argo CD runs them: Lua 5.1 with only the
//! base, table and package libraries (Argo CD leaves out string and math unless told otherwise),
//! the live object as the global `obj` (JSON null as nil, lists as sequences), the script's
//! result a table whose `status` must be one of Argo CD's health codes.
//!
//! The objects are the operator's own types with conditions set by `status::set` and reasons and
//! messages from the controllers' real `Error` values, so a renamed field, condition or reason
//! breaks these tests. One test reads objects the controllers wrote on a dev stack. Another checks
//! that the `argocd-cm` snippet in docs/operations.md is exactly the script files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::stack::{DevStack, StackOptions, condition, wait_for};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use mlua::{Lua, LuaOptions, StdLib, Table};
use mqtt_dsp_operator::api::{AuthMode, MqttAsset, MqttAssetStatus, MqttTransfer, MqttTransferStatus, TransferPhase};
use mqtt_dsp_operator::backends::{BackendError, System};
use mqtt_dsp_operator::controller::{Error, Step};
use mqtt_dsp_operator::credentials::CredentialError;
use mqtt_dsp_operator::plan::PlanError;
use mqtt_dsp_operator::status::{self, Status};
use serde_json::{Value, json};

const ASSET_SCRIPT: &str = "deploy/argocd/mqttasset-health.lua";
const TRANSFER_SCRIPT: &str = "deploy/argocd/mqtttransfer-health.lua";
const SCRIPTS: [&str; 2] = [ASSET_SCRIPT, TRANSFER_SCRIPT];
const GENERATION: i64 = 3;
const WITHIN: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What a health check returned.
#[derive(Debug, PartialEq, Eq)]
struct Health {
    status: String,
    message: String,
}

fn health(status: &str, message: &str) -> Health {
    Health { status: status.into(), message: message.into() }
}

/// A JSON value as Argo CD hands it to Lua (`decodeValue` in argo-cd's util/lua): null is nil,
/// lists are sequences, objects are tables, numbers are numbers.
fn to_lua(lua: &Lua, value: &Value) -> mlua::Value {
    match value {
        Value::Null => mlua::Value::Nil,
        Value::Bool(b) => mlua::Value::Boolean(*b),
        Value::Number(n) => mlua::Value::Number(n.as_f64().expect("a finite number")),
        Value::String(s) => mlua::Value::String(lua.create_string(s).unwrap()),
        Value::Array(items) => {
            let table = lua.create_table().unwrap();
            for item in items {
                table.raw_push(to_lua(lua, item)).unwrap();
            }
            mlua::Value::Table(table)
        }
        Value::Object(map) => {
            let table = lua.create_table().unwrap();
            for (k, v) in map {
                table.raw_set(k.as_str(), to_lua(lua, v)).unwrap();
            }
            mlua::Value::Table(table)
        }
    }
}

/// Runs a health check on an object, as Argo CD does.
fn run(script: &str, object: &impl serde::Serialize) -> Health {
    let lua = Lua::new_with(StdLib::TABLE | StdLib::PACKAGE, LuaOptions::default()).expect("a Lua state");
    let object = serde_json::to_value(object).expect("the object as JSON");
    lua.globals().set("obj", to_lua(&lua, &object)).unwrap();
    let result: Table =
        lua.load(read(script)).set_name(script).eval().unwrap_or_else(|e| panic!("{script} failed on {object}: {e}"));
    let status: String = result.get("status").expect("a status");
    let message: Option<String> = result.get("message").expect("a message or nil");
    let codes = ["Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"];
    assert!(codes.contains(&status.as_str()), "{script}: {status} is not an Argo CD health code");
    Health { status, message: message.unwrap_or_default() }
}

// ---------------------------------------------------------------------------------------------
// Objects, from the operator's types

fn asset(status: Option<MqttAssetStatus>) -> MqttAsset {
    let mut a: MqttAsset = serde_json::from_value(json!({
        "apiVersion": "dsp-mqtt.io/v1alpha1",
        "kind": "MqttAsset",
        "metadata": {"name": "line-1", "namespace": "factory", "generation": GENERATION},
        "spec": {
            "endpoint": {"type": "mqtt-tls"},
            "topics": ["factory/line-1/#"],
            "auth": {"mode": "usrpw"},
            "policy": {"access": {"participantIds": ["did:web:consumer-a.example.com"]}},
        },
    }))
    .expect("a valid MqttAsset");
    a.status = status;
    a
}

fn transfer(status: Option<MqttTransferStatus>) -> MqttTransfer {
    let mut t: MqttTransfer = serde_json::from_value(json!({
        "apiVersion": "dsp-mqtt.io/v1alpha1",
        "kind": "MqttTransfer",
        "metadata": {"name": "t-a", "namespace": "factory", "generation": GENERATION},
        "spec": {"assetRef": {"name": "line-1"}, "consumer": {"participantId": "did:web:consumer-a.example.com"}},
    }))
    .expect("a valid MqttTransfer");
    t.status = status;
    t
}

/// Conditions as the controllers set them (`status::set`, observed at `generation`).
fn conditions(set: &[(&str, Status, &str, &str)], generation: i64) -> Vec<Condition> {
    let mut conditions = Vec::new();
    for (type_, s, reason, message) in set {
        status::set(&mut conditions, type_, *s, reason, &status::bounded(message), Some(generation));
    }
    conditions
}

fn asset_status(set: &[(&str, Status, &str, &str)]) -> MqttAssetStatus {
    MqttAssetStatus {
        observed_generation: Some(GENERATION),
        conditions: conditions(set, GENERATION),
        ..Default::default()
    }
}

fn transfer_status(phase: TransferPhase, set: &[(&str, Status, &str, &str)]) -> MqttTransferStatus {
    MqttTransferStatus {
        observed_generation: Some(GENERATION),
        phase: Some(phase),
        conditions: conditions(set, GENERATION),
        ..Default::default()
    }
}

/// One value of every variant of the controllers' `Error`, with every `PlanError` and
/// `BackendError` variant inside. [`listed`] fails to compile when a variant is added: add it
/// here too, and the test below tells whether the health checks treat it right.
fn every_error() -> Vec<Error> {
    let plan = |e: PlanError| Error::Plan(e);
    let backend = |source: BackendError| Error::Backend { step: Step::Connector, source };
    let (system, operation, object) = (System::Connector, "create", "asset factory-line-1".to_owned());
    vec![
        plan(PlanError::UnknownProfile {
            field: "spec.connector",
            section: "connectors",
            name: "nope".into(),
            defined: vec!["default".into()],
        }),
        plan(PlanError::AuthModeUnsupported {
            broker: "default".into(),
            broker_type: "mosquitto",
            mode: AuthMode::Oauth2,
            offered: vec![AuthMode::Usrpw],
        }),
        plan(PlanError::NoEndpointUrl { broker: "default".into(), endpoint_type: "mqtt-wss" }),
        plan(PlanError::ReservedProperty {
            field: "spec.privateProperties",
            key: "dsp-mqtt.io/owner".into(),
            detail: "the key names a marker".into(),
        }),
        plan(PlanError::PropertyConflict { key: "name".into() }),
        plan(PlanError::TopicsOutsideAsset { topics: vec!["factory/line-2/#".into()], asset: "line-1".into() }),
        plan(PlanError::TopicTooLong { field: "spec.topics", index: 0, bytes: 70_000 }),
        plan(PlanError::ConsumerNotAllowed {
            participant: "did:web:consumer-z.example.com".into(),
            asset: "line-1".into(),
            policy: "access",
            allowed: vec!["did:web:consumer-a.example.com".into()],
        }),
        plan(PlanError::TopicAsteriskUnsupported {
            field: "spec.topics",
            index: 0,
            topic: "factory/*/temp".into(),
            broker: "default".into(),
        }),
        plan(PlanError::NotAllowed {
            detail: "broker profile \"default\" does not serve namespace \"team-b\" (allowed.namespaces: [team-a])"
                .into(),
        }),
        backend(BackendError::Unauthorized { system, operation, object: object.clone(), status: 401 }),
        backend(BackendError::Foreign { system, operation, object: object.clone() }),
        backend(BackendError::InUse { system, operation, object: object.clone(), message: "agreement".into() }),
        backend(BackendError::Rejected {
            system,
            operation,
            object: object.clone(),
            status: 400,
            message: "bad".into(),
        }),
        backend(BackendError::Unavailable {
            system,
            operation,
            object: object.clone(),
            status: 503,
            message: "down".into(),
        }),
        backend(BackendError::Timeout { system, operation, object: object.clone(), timeout_seconds: 10 }),
        backend(BackendError::Unreachable {
            system,
            operation,
            object: object.clone(),
            source: Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        }),
        backend(BackendError::Redirected {
            system,
            operation,
            object: object.clone(),
            status: 307,
            from: "https://edc.example.com".into(),
            location: "https://elsewhere.example.com/".into(),
        }),
        backend(BackendError::Protocol { system, operation, object, detail: "no id".into() }),
        backend(BackendError::Unsupported { system, what: "grant JWT topics".into() }),
        backend(BackendError::Credential(CredentialError::NoClient)),
        Error::Kube(kube::Error::LinesCodecMaxLineLengthExceeded),
        Error::Finalizer("object has no name".into()),
        Error::AssetNotFound { name: "line-1".into() },
        Error::SecretNameTaken { name: "t-a".into() },
        Error::CleanupPending { retry: Duration::from_secs(30), attempts: 1 },
    ]
}

/// Compiles only while [`every_error`] can list every variant (no wildcard arms).
#[allow(dead_code)]
fn listed(e: &Error) {
    match e {
        Error::Plan(p) => match p {
            PlanError::UnknownProfile { .. }
            | PlanError::AuthModeUnsupported { .. }
            | PlanError::NoEndpointUrl { .. }
            | PlanError::ReservedProperty { .. }
            | PlanError::PropertyConflict { .. }
            | PlanError::TopicsOutsideAsset { .. }
            | PlanError::TopicTooLong { .. }
            | PlanError::TopicAsteriskUnsupported { .. }
            | PlanError::ConsumerNotAllowed { .. }
            | PlanError::NotAllowed { .. } => {}
        },
        Error::Backend { source, .. } => match source {
            BackendError::Unauthorized { .. }
            | BackendError::Foreign { .. }
            | BackendError::InUse { .. }
            | BackendError::Rejected { .. }
            | BackendError::Unavailable { .. }
            | BackendError::Timeout { .. }
            | BackendError::Unreachable { .. }
            | BackendError::Redirected { .. }
            | BackendError::Protocol { .. }
            | BackendError::Unsupported { .. }
            | BackendError::Credential(_) => {}
        },
        Error::Kube(_)
        | Error::Finalizer(_)
        | Error::AssetNotFound { .. }
        | Error::SecretNameTaken { .. }
        | Error::CleanupPending { .. } => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Every branch

#[test]
fn not_yet_reconciled_is_progressing() {
    let ready = (status::READY, Status::True, status::RECONCILED, "offered as factory-line-1");
    let waiting = |m: &str| health("Progressing", m);
    let generation = format!("waiting for the operator to observe generation {GENERATION}");
    for script in SCRIPTS {
        let asset_health = |s: Option<MqttAssetStatus>| run(script, &asset(s));
        // No status at all (just created, or no operator running).
        assert_eq!(asset_health(None), waiting("waiting for the operator's first status"), "{script}");
        // A status without observedGeneration.
        let unobserved = MqttAssetStatus { observed_generation: None, ..asset_status(&[ready]) };
        assert_eq!(asset_health(Some(unobserved)), waiting(&generation), "{script}");
        // The spec changed after the last reconcile: the Ready=True shown is about the old spec.
        let old = MqttAssetStatus { observed_generation: Some(GENERATION - 1), ..asset_status(&[ready]) };
        assert_eq!(asset_health(Some(old)), waiting(&generation), "{script}");
        // The Ready condition itself is older than the status.
        let stale_ready = MqttAssetStatus { conditions: conditions(&[ready], GENERATION - 1), ..asset_status(&[]) };
        assert_eq!(asset_health(Some(stale_ready)), waiting(&generation), "{script}");
        // Observed, but no Ready condition.
        assert_eq!(asset_health(Some(asset_status(&[]))), waiting("waiting for the Ready condition"), "{script}");
        // Ready=Unknown.
        let unknown = asset_status(&[(status::READY, Status::Unknown, "Resumed", "reconciling again")]);
        assert_eq!(asset_health(Some(unknown)), waiting("reconciling again"), "{script}");
    }
    // The same for transfers, with their own status type.
    let t = transfer(Some(MqttTransferStatus {
        observed_generation: Some(GENERATION - 1),
        ..transfer_status(TransferPhase::Active, &[ready])
    }));
    assert_eq!(run(TRANSFER_SCRIPT, &t), waiting(&generation));
    assert_eq!(run(TRANSFER_SCRIPT, &transfer(None)), waiting("waiting for the operator's first status"));
}

#[test]
fn ready_asset_is_healthy_with_the_ready_message() {
    let steps = [status::IDENTITY_READY, status::SECRET_READY, status::BROKER_READY, status::CONNECTOR_READY];
    let mut set: Vec<_> = steps.iter().map(|s| (*s, Status::True, status::RECONCILED, "in place")).collect();
    set.push((status::READY, Status::True, status::RECONCILED, "offered as factory-line-1 in connector \"default\""));
    let a = asset(Some(asset_status(&set)));
    assert_eq!(run(ASSET_SCRIPT, &a), health("Healthy", "offered as factory-line-1 in connector \"default\""));
}

#[test]
fn paused_is_suspended_even_with_an_unobserved_generation() {
    let paused_message = "annotation dsp-mqtt.io/paused=true: the operator leaves every backend as it is";
    let set = [
        (status::READY, Status::True, status::RECONCILED, "offered"),
        (status::PAUSED, Status::True, "Paused", paused_message),
    ];
    // A paused resource does not observe new generations; pausing must still read as Suspended.
    let a = asset(Some(MqttAssetStatus { observed_generation: Some(GENERATION - 1), ..asset_status(&set) }));
    assert_eq!(run(ASSET_SCRIPT, &a), health("Suspended", paused_message));
    let t = transfer(Some(MqttTransferStatus {
        observed_generation: Some(GENERATION - 1),
        ..transfer_status(TransferPhase::Active, &set)
    }));
    assert_eq!(run(TRANSFER_SCRIPT, &t), health("Suspended", paused_message));
    // A Paused condition that is not True does not suspend.
    let not_paused = [
        (status::READY, Status::True, status::RECONCILED, "offered"),
        (status::PAUSED, Status::False, "Resumed", "resumed"),
    ];
    assert_eq!(run(ASSET_SCRIPT, &asset(Some(asset_status(&not_paused)))), health("Healthy", "offered"));
}

#[test]
fn reasons_the_operator_retries_are_progressing_and_every_refusal_is_degraded() {
    let errors = every_error();
    let mut reasons: Vec<&str> = errors.iter().map(Error::reason).collect();
    reasons.sort_unstable();
    reasons.dedup();
    assert_eq!(reasons.len(), errors.len(), "one error per reason: {reasons:?}");
    let (mut progressing, mut degraded) = (Vec::new(), Vec::new());
    for error in &errors {
        let message = error.to_string();
        let expected = if error.is_retryable() { "Progressing" } else { "Degraded" };
        // As Tracker::fail leaves it: the failed step False, the later ones Blocked, Ready False.
        let set = [
            (status::IDENTITY_READY, Status::True, status::RECONCILED, "in place"),
            (status::SECRET_READY, Status::False, error.reason(), message.as_str()),
            (status::BROKER_READY, Status::Unknown, status::BLOCKED, "waiting for the secret step"),
            (status::READY, Status::False, error.reason(), message.as_str()),
        ];
        let a = asset(Some(asset_status(&set)));
        assert_eq!(run(ASSET_SCRIPT, &a), health(expected, &message), "MqttAsset, reason {}", error.reason());
        for phase in [TransferPhase::Pending, TransferPhase::Active, TransferPhase::Suspended, TransferPhase::Failed] {
            let t = transfer(Some(transfer_status(phase, &set)));
            let got = run(TRANSFER_SCRIPT, &t);
            assert_eq!(got, health(expected, &message), "MqttTransfer {phase:?}, reason {}", error.reason());
        }
        if error.is_retryable() { progressing.push(error.reason()) } else { degraded.push(error.reason()) }
    }
    // What this amounts to today (docs/operations.md lists the same).
    assert_eq!(progressing, ["Unavailable", "Timeout", "Unreachable", "KubernetesApi", "Finalizer", "CleanupPending"]);
    assert_eq!(degraded.len(), 20, "{degraded:?}");
}

#[test]
fn transfer_states_follow_dsp() {
    // What the transfer controller writes in each state (controller/transfer.rs: grant, suspend,
    // revoked_status, the AssetNotFound branch).
    type Set<'a> = (&'a str, Status, &'a str, &'a str);
    fn with<'a>(ready: Set<'a>, step_reason: &'a str) -> Vec<Set<'a>> {
        let steps = [status::IDENTITY_READY, status::SECRET_READY, status::BROKER_READY, status::CREDENTIALS_READY];
        let mut set: Vec<_> = steps.iter().map(|s| (*s, Status::True, step_reason, "done")).collect();
        set.push(ready);
        set
    }
    let cases = [
        (
            TransferPhase::Active,
            (status::READY, Status::True, status::RECONCILED, "the consumer can read 1 topic filter(s)"),
            "Healthy",
        ),
        (
            TransferPhase::Suspended,
            (
                status::READY,
                Status::True,
                "Suspended",
                "suspended: the consumer is cut off until spec.state is Started again",
            ),
            "Suspended",
        ),
        (
            TransferPhase::Terminated,
            (
                status::READY,
                Status::True,
                "Terminated",
                "terminated: access revoked for good, nothing of the transfer remains",
            ),
            "Healthy",
        ),
        (
            TransferPhase::Completed,
            (
                status::READY,
                Status::True,
                "Completed",
                "completed: access revoked for good, nothing of the transfer remains",
            ),
            "Healthy",
        ),
        (
            TransferPhase::Expired,
            (
                status::READY,
                Status::True,
                "Expired",
                "spec.expiresAt has passed: access revoked for good, nothing of the transfer remains",
            ),
            "Healthy",
        ),
    ];
    for (phase, ready, expected) in cases {
        let t = transfer(Some(transfer_status(phase, &with(ready, "Revoked"))));
        assert_eq!(run(TRANSFER_SCRIPT, &t), health(expected, ready.3), "{phase:?}");
    }
    // The asset is gone: access revoked, phase Failed, Ready False AssetNotFound.
    let gone = Error::AssetNotFound { name: "line-1".into() };
    let message = gone.to_string();
    let set = with((status::READY, Status::False, gone.reason(), message.as_str()), "Revoked");
    let t = transfer(Some(transfer_status(TransferPhase::Failed, &set)));
    assert_eq!(run(TRANSFER_SCRIPT, &t), health("Degraded", &message));
    // Suspended, then resuming fails on a retryable error: the phase still says Suspended, Ready does not.
    let down = Error::Backend {
        step: Step::Broker,
        source: BackendError::Timeout {
            system: System::Mosquitto,
            operation: "update",
            object: "user x".into(),
            timeout_seconds: 5,
        },
    };
    let message = down.to_string();
    let set = with((status::READY, Status::False, down.reason(), message.as_str()), status::RECONCILED);
    let t = transfer(Some(transfer_status(TransferPhase::Suspended, &set)));
    assert_eq!(run(TRANSFER_SCRIPT, &t), health("Progressing", &message));
}

#[test]
fn the_scripts_need_nothing_argo_cd_leaves_out() {
    // Argo CD runs custom checks without the string and math libraries: a script that calls
    // them fails there with "attempt to index a nil value". Prove the harness has them out too.
    let lua = Lua::new_with(StdLib::TABLE | StdLib::PACKAGE, LuaOptions::default()).unwrap();
    for library in ["string", "math", "io"] {
        let present: bool = lua.load(format!("return {library} ~= nil")).eval().unwrap();
        assert!(!present, "{library} must not be loaded, as in Argo CD");
    }
}

#[test]
fn the_argocd_cm_snippet_in_the_docs_is_exactly_the_scripts() {
    let docs = read("docs/operations.md");
    let start = docs
        .find("```yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: argocd-cm")
        .expect("docs/operations.md has the argocd-cm snippet (a ```yaml block starting with the ConfigMap)");
    let body = &docs[start + "```yaml\n".len()..];
    // Up to and with the last line's newline (a YAML block scalar keeps one final newline).
    let body = &body[..=body.find("\n```").expect("the end of the snippet")];
    let cm: Value = serde_yaml::from_str(body).expect("the snippet is valid YAML");
    assert_eq!(cm["metadata"]["namespace"], "argocd");
    let data = cm["data"].as_object().expect("data");
    for (kind, script) in [("MqttAsset", ASSET_SCRIPT), ("MqttTransfer", TRANSFER_SCRIPT)] {
        let key = format!("resource.customizations.health.dsp-mqtt.io_{kind}");
        let in_docs = data.get(&key).and_then(Value::as_str).unwrap_or_else(|| panic!("{key} in the snippet"));
        assert!(in_docs == read(script), "docs/operations.md: {key} differs from {script}; paste the file again");
    }
    assert_eq!(data.len(), 2, "only the two health checks");
}

// ---------------------------------------------------------------------------------------------
// Objects the controllers wrote

/// The Ready condition as (status, reason, message).
fn ready_of(conditions: Option<&Vec<Condition>>) -> Option<(String, String, String)> {
    conditions.and_then(|c| condition(c, status::READY))
}

/// A new object for the API: the test object's spec, a name, nothing else.
fn new_asset(name: &str, connector: Option<&str>) -> MqttAsset {
    let mut spec = asset(None).spec;
    spec.connector = connector.map(str::to_owned);
    MqttAsset::new(name, spec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_written_by_the_controllers() {
    let stack = DevStack::start(StackOptions::default()).await;
    let assets: Api<MqttAsset> = stack.api();
    let transfers: Api<MqttTransfer> = stack.api();

    // A good asset: Healthy, with the operator's Ready message.
    assets.create(&PostParams::default(), &new_asset("line-1", None)).await.unwrap();
    let good = wait_for(&assets, "line-1", WITHIN, "Ready", |a| {
        let s = a.status.as_ref();
        s.is_some_and(|s| s.observed_generation == a.metadata.generation)
            && ready_of(s.map(|s| &s.conditions)).is_some_and(|(st, _, _)| st == "True")
    })
    .await;
    let (_, _, message) = ready_of(good.status.as_ref().map(|s| &s.conditions)).unwrap();
    assert!(message.starts_with("offered as "), "{message}");
    assert_eq!(run(ASSET_SCRIPT, &good), health("Healthy", &message));

    // Bad input (a connector profile that does not exist): Degraded, the message says what to fix.
    assets.create(&PostParams::default(), &new_asset("line-2", Some("nope"))).await.unwrap();
    let bad = wait_for(&assets, "line-2", WITHIN, "Ready=False", |a| {
        ready_of(a.status.as_ref().map(|s| &s.conditions)).is_some_and(|(s, _, _)| s == "False")
    })
    .await;
    let (_, reason, message) = ready_of(bad.status.as_ref().map(|s| &s.conditions)).unwrap();
    assert_eq!(reason, "UnknownProfile");
    assert!(message.contains("spec.connector"), "{message}");
    assert_eq!(run(ASSET_SCRIPT, &bad), health("Degraded", &message));

    // A transfer of the good asset: Healthy while Active, Suspended when suspended, Healthy when
    // terminated (final, nothing of it left).
    let spec = transfer(None).spec;
    transfers.create(&PostParams::default(), &MqttTransfer::new("t-a", spec)).await.unwrap();
    let in_phase = |phase: TransferPhase| {
        move |t: &MqttTransfer| {
            t.status.as_ref().is_some_and(|s| s.phase == Some(phase) && s.observed_generation == t.metadata.generation)
        }
    };
    let active = wait_for(&transfers, "t-a", WITHIN, "Active", in_phase(TransferPhase::Active)).await;
    let (_, _, message) = ready_of(active.status.as_ref().map(|s| &s.conditions)).unwrap();
    assert_eq!(run(TRANSFER_SCRIPT, &active), health("Healthy", &message));
    for (state, phase, expected) in
        [("Suspended", TransferPhase::Suspended, "Suspended"), ("Terminated", TransferPhase::Terminated, "Healthy")]
    {
        let patch = Patch::Merge(json!({"spec": {"state": state}}));
        transfers.patch("t-a", &PatchParams::default(), &patch).await.unwrap();
        let t = wait_for(&transfers, "t-a", WITHIN, state, in_phase(phase)).await;
        let (_, _, message) = ready_of(t.status.as_ref().map(|s| &s.conditions)).unwrap();
        assert_eq!(run(TRANSFER_SCRIPT, &t), health(expected, &message), "{state}");
    }

    // Paused by annotation: Suspended, with the operator's message.
    let patch = Patch::Merge(json!({"metadata": {"annotations": {"dsp-mqtt.io/paused": "true"}}}));
    assets.patch("line-1", &PatchParams::default(), &patch).await.unwrap();
    let paused = wait_for(&assets, "line-1", WITHIN, "Paused", |a| {
        a.status.as_ref().and_then(|s| condition(&s.conditions, status::PAUSED)).is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    let got = run(ASSET_SCRIPT, &paused);
    assert_eq!(got.status, "Suspended");
    assert!(got.message.contains("dsp-mqtt.io/paused"), "{}", got.message);
    stack.teardown().await;
}
