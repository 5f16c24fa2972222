//! The Kubernetes API test server (`e2e::apiserver`) through kube-rs, the way the operator and
//! the e2e suite use it: every behaviour the suite relies on, checked against what the real API
//! server does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::apiserver::ApiServer;
use e2e::tls::TestCa;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ObjectReference, Secret};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, Patch, PatchParams,
    PostParams, WatchEvent, WatchParams,
};
use kube::core::Status;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use mqtt_dsp_operator::api::{
    AssetAuth, AssetPolicy, AssetRef, AuthMode, Consumer, Endpoint, EndpointType, MqttAsset, MqttAssetSpec,
    MqttTransfer, MqttTransferSpec, PolicyRule,
};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

struct Env {
    _ca: TestCa,
    server: ApiServer,
    client: Client,
}

/// A server with our CRDs applied and the namespace `dataspace`.
async fn env() -> Env {
    e2e::logs::init();
    mqtt_dsp_operator::install_crypto_provider();
    let ca = TestCa::new();
    let server = ApiServer::start(&ca).await.unwrap();
    let client = server.client();
    let names = server.apply_crds(&repo().join("crds")).await.unwrap();
    assert_eq!(names, ["mqttassets.dsp-mqtt.io", "mqtttransfers.dsp-mqtt.io"]);
    let ns = Namespace {
        metadata: ObjectMeta { name: Some("dataspace".into()), ..Default::default() },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
    Env { _ca: ca, server, client }
}

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A valid asset in namespace `dataspace` (mqtt-tls, usrpw, one topic filter, one permitted
/// participant), like the operator's `MqttAsset::test()` fixture, which is compiled only for
/// the operator's own unit tests.
fn asset(name: &str) -> MqttAsset {
    let mut asset = MqttAsset::new(
        name,
        MqttAssetSpec {
            asset_id: None,
            connector: None,
            identity_provider: None,
            secret_store: None,
            broker: None,
            endpoint: Endpoint { endpoint_type: EndpointType::MqttTls, url: None },
            topics: vec![format!("factory/{name}/#")],
            auth: AssetAuth { mode: AuthMode::Usrpw, client_id: None, secret_alias: None },
            properties: None,
            private_properties: None,
            policy: AssetPolicy {
                access: PolicyRule { participant_ids: Some(vec!["did:web:consumer-a.example.com".into()]), odrl: None },
                contract: None,
            },
            deletion_policy: None,
        },
    );
    asset.metadata.namespace = Some("dataspace".into());
    asset
}

/// A transfer of `asset_name` to `did:web:consumer-a.example.com` in namespace `dataspace`.
fn transfer(name: &str, asset_name: &str) -> MqttTransfer {
    let mut transfer = MqttTransfer::new(
        name,
        MqttTransferSpec {
            asset_ref: AssetRef { name: asset_name.into() },
            consumer: Consumer { participant_id: "did:web:consumer-a.example.com".into() },
            transfer_process_id: None,
            agreement_id: None,
            state: None,
            topics: None,
            expires_at: None,
            token_lifetime_seconds: None,
            secret_name: None,
        },
    );
    transfer.metadata.namespace = Some("dataspace".into());
    transfer
}

fn assets(client: &Client) -> Api<MqttAsset> {
    Api::namespaced(client.clone(), "dataspace")
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn discovery_shows_builtins_and_crds_while_they_exist() {
    e2e::logs::init();
    mqtt_dsp_operator::install_crypto_provider();
    let ca = TestCa::new();
    let server = ApiServer::start(&ca).await.unwrap();
    let client = server.client();
    let gvk = GroupVersionKind::gvk("dsp-mqtt.io", "v1alpha1", "MqttAsset");
    assert!(kube::discovery::pinned_kind(&client, &gvk).await.is_err(), "not served before the CRD exists");

    server.apply_crds(&repo().join("crds")).await.unwrap();
    let (resource, caps) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
    assert_eq!(resource.plural, "mqttassets");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(caps.subresources.iter().any(|(r, _)| r.plural == "mqttassets/status" || r.plural == "status"));

    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let group = discovery.get("dsp-mqtt.io").expect("our group is discovered");
    let kinds: Vec<String> = group.recommended_resources().into_iter().map(|(r, _)| r.kind).collect();
    assert!(kinds.contains(&"MqttAsset".to_owned()) && kinds.contains(&"MqttTransfer".to_owned()), "{kinds:?}");
    for (group, kind) in [("", "Secret"), ("coordination.k8s.io", "Lease"), ("events.k8s.io", "Event")] {
        assert!(discovery.get(group).is_some_and(|g| g.recommended_kind(kind).is_some()), "{group}/{kind}");
    }
    let raw: Value = serde_json::from_str(
        &client
            .request_text(axum::http::Request::get("/apis/dsp-mqtt.io/v1alpha1").body(vec![]).unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    let assets = raw["resources"].as_array().unwrap().iter().find(|r| r["name"] == "mqttassets").unwrap();
    assert_eq!(assets["shortNames"], json!(["mqa"]));
    assert_eq!(assets["categories"], json!(["dsp"]));
    assert!(assets["verbs"].as_array().unwrap().contains(&json!("watch")));
    assert_eq!(client.apiserver_version().await.unwrap().major, "1");
    let aggregated = kube::Discovery::new(client.clone()).run_aggregated().await.unwrap();
    let (ar, caps) = aggregated.get("dsp-mqtt.io").unwrap().recommended_kind("MqttTransfer").unwrap();
    assert_eq!((ar.plural.as_str(), caps.scope), ("mqtttransfers", kube::discovery::Scope::Namespaced));
    assert!(aggregated.get("").is_some_and(|core| core.recommended_kind("Secret").is_some()));

    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    let crd = crds.get("mqttassets.dsp-mqtt.io").await.unwrap();
    let mut crd_before_delete = crd.clone();
    crd_before_delete.status = None;
    let established = crd.status.unwrap().conditions.unwrap().into_iter().find(|c| c.type_ == "Established").unwrap();
    assert_eq!(established.status, "True");
    // A CRD whose schema is not structural is refused.
    let mut untyped: Value = serde_json::to_value(&crd_before_delete).unwrap();
    untyped["metadata"] = json!({"name": "widgets.example.com"});
    untyped["spec"]["group"] = json!("example.com");
    untyped["spec"]["names"] = json!({"plural": "widgets", "singular": "widget", "kind": "Widget"});
    untyped["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        .as_object_mut()
        .unwrap()
        .remove("type");
    let untyped: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        serde_json::from_value(untyped).unwrap();
    let err = api_error(crds.create(&PostParams::default(), &untyped).await);
    assert!(err.code == 422 && err.message.contains("structural schema violation"), "{err:?}");

    let mut open_watch =
        Api::<MqttAsset>::all(client.clone()).watch(&WatchParams::default(), "0").await.unwrap().boxed();
    crds.delete("mqttassets.dsp-mqtt.io", &DeleteParams::default()).await.unwrap();
    let ended =
        tokio::time::timeout(Duration::from_secs(5), async { while open_watch.try_next().await.unwrap().is_some() {} })
            .await;
    assert!(ended.is_ok(), "watches of a resource end with its CRD");
    eventually("the CRD is gone from discovery", || async {
        kube::discovery::pinned_kind(&client, &gvk).await.is_err()
    })
    .await;
    assert!(
        kube::discovery::pinned_kind(&client, &GroupVersionKind::gvk("dsp-mqtt.io", "v1alpha1", "MqttTransfer"))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn create_get_list_update_delete() {
    let Env { server, client, .. } = env().await;
    let api = assets(&client);
    let created = api.create(&PostParams::default(), &asset("line-1")).await.unwrap();
    assert!(created.uid().is_some() && created.creation_timestamp().is_some());
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(api.get("line-1").await.unwrap().spec.topics, ["factory/line-1/#"]);
    assert_eq!(api_error(api.create(&PostParams::default(), &asset("line-1")).await).code, 409);

    let mut changed = created.clone();
    changed.spec.topics = vec!["factory/line-2/#".into()];
    let updated = api.replace("line-1", &PostParams::default(), &changed).await.unwrap();
    assert_eq!(updated.metadata.generation, Some(2));
    assert_ne!(updated.resource_version(), created.resource_version());

    for i in 2..=4 {
        let a = asset(&format!("line-{i}"));
        api.create(&PostParams::default(), &a).await.unwrap();
    }
    let first = api.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(first.items.len(), 3);
    let token = first.metadata.continue_.clone().expect("a continue token");
    let rest = api.list(&ListParams::default().limit(3).continue_token(&token)).await.unwrap();
    let names: Vec<String> = first.items.iter().chain(&rest.items).map(|a| a.name_any()).collect();
    assert_eq!(names, ["line-1", "line-2", "line-3", "line-4"]);
    assert!(rest.metadata.continue_.is_none_or(|c| c.is_empty()));
    assert!(!first.metadata.resource_version.unwrap_or_default().is_empty());

    let writes = server.write_count();
    let rv = server.resource_version();
    let dry = PostParams { dry_run: true, ..Default::default() };
    let planned = api.create(&dry, &asset("line-9")).await.unwrap();
    assert_eq!(planned.name_any(), "line-9");
    assert!(server.object("dsp-mqtt.io/v1alpha1", "mqttassets", Some("dataspace"), "line-9").is_none());
    assert_eq!((server.write_count(), server.resource_version()), (writes, rv), "a dry run writes nothing");

    let gone = api.delete("line-1", &DeleteParams::default()).await.unwrap();
    assert!(gone.is_left(), "a custom resource's DELETE answers with the object");
    assert_eq!(api_error(api.get("line-1").await).code, 404);
    assert!(server.object("dsp-mqtt.io/v1alpha1", "mqttassets", Some("dataspace"), "line-1").is_none());

    // Built-ins: generateName, 404 for a namespace that does not exist, Status on delete.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "dataspace");
    let cm = ConfigMap {
        metadata: ObjectMeta { generate_name: Some("cfg-".into()), ..Default::default() },
        data: Some([("k".to_owned(), "v".to_owned())].into()),
        ..Default::default()
    };
    let made = cms.create(&PostParams::default(), &cm).await.unwrap();
    assert!(made.name_any().starts_with("cfg-") && made.name_any().len() == 9, "{}", made.name_any());
    assert!(made.metadata.generation.is_none());
    let missing: Api<ConfigMap> = Api::namespaced(client.clone(), "nowhere");
    let err = api_error(missing.create(&PostParams::default(), &cm).await);
    assert_eq!(
        (err.code, err.reason.as_str(), err.message.as_str()),
        (404, "NotFound", "namespaces \"nowhere\" not found")
    );
    assert!(cms.delete(&made.name_any(), &DeleteParams::default()).await.unwrap().is_right());
}

#[tokio::test]
async fn secrets_store_string_data_as_data_and_default_their_type() {
    let Env { client, server: _server, .. } = env().await;
    let secrets: Api<Secret> = Api::namespaced(client, "dataspace");
    let secret = Secret {
        metadata: ObjectMeta { name: Some("creds".into()), ..Default::default() },
        string_data: Some([("password".to_owned(), "s3cret".to_owned())].into()),
        ..Default::default()
    };
    let stored = secrets.create(&PostParams::default(), &secret).await.unwrap();
    assert!(stored.string_data.is_none());
    assert_eq!(stored.data.unwrap()["password"].0, b"s3cret");
    assert_eq!(stored.type_.as_deref(), Some("Opaque"));

    let frozen =
        secrets.patch("creds", &PatchParams::default(), &Patch::Merge(json!({"immutable": true}))).await.unwrap();
    assert_eq!(frozen.immutable, Some(true));
    let change = json!({"stringData": {"password": "other"}});
    let err = api_error(secrets.patch("creds", &PatchParams::default(), &Patch::Merge(&change)).await);
    assert_eq!(err.code, 422);
    assert!(err.message.contains("data: Forbidden: field is immutable when `immutable` is set"), "{}", err.message);
}

#[tokio::test]
async fn names_and_schema_violations_are_422_with_the_field() {
    let Env { client, server: _server, .. } = env().await;
    let text = std::fs::read_to_string(repo().join("e2e/manifests/invalid/asset-topic-empty.yaml")).unwrap();
    let manifest: DynamicObject = serde_yaml::from_str(&text).unwrap();
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("dsp-mqtt.io", "v1alpha1", "MqttAsset"), "mqttassets");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "dataspace", &ar);
    let err = api_error(api.create(&PostParams::default(), &manifest).await);
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(err.message.starts_with("MqttAsset.dsp-mqtt.io \"bad\" is invalid: spec.topics[0]"), "{}", err.message);

    // The whole object is validated on a status write too: an invalid spec cannot sneak in, and
    // an invalid status is refused.
    let created = assets(&client).create(&PostParams::default(), &asset("line-1")).await.unwrap();
    let bad_status = json!({"status": {"conditions": [{"type": "Ready"}]}});
    let err =
        api_error(assets(&client).patch_status("line-1", &PatchParams::default(), &Patch::Merge(&bad_status)).await);
    assert_eq!(err.code, 422, "{}", err.message);
    assert!(err.message.contains("status.conditions[0]"), "{}", err.message);
    assert_eq!(created.metadata.generation, Some(1));

    // Metadata is checked on every kind: one controller at most, finalizers are qualified names.
    let owner_ref = created.controller_owner_ref(&()).unwrap();
    let mut two_controllers = asset("line-2");
    let second = OwnerReference { uid: "another-uid".into(), name: "line-9".into(), ..owner_ref.clone() };
    two_controllers.metadata.owner_references = Some(vec![owner_ref, second]);
    let err = api_error(assets(&client).create(&PostParams::default(), &two_controllers).await);
    assert!(err.code == 422 && err.message.contains("Only one reference can have Controller set to true"), "{err:?}");
    let mut bad_finalizer = asset("line-3");
    bad_finalizer.metadata.finalizers = Some(vec!["not a name".into()]);
    let err = api_error(assets(&client).create(&PostParams::default(), &bad_finalizer).await);
    assert!(err.code == 422 && err.message.contains("metadata.finalizers[0]"), "{err:?}");
    // A fetched object cannot be created again as it is: it carries a resourceVersion.
    let mut again = assets(&client).get("line-1").await.unwrap();
    again.metadata.name = Some("line-4".into());
    again.metadata.uid = None;
    let err = api_error(assets(&client).create(&PostParams::default(), &again).await);
    assert_eq!(
        (err.code, err.message.as_str()),
        (500, "Internal error occurred: resourceVersion should not be set on objects to be created")
    );

    let mut bad_name = asset("line-1");
    bad_name.metadata.name = Some("Bad_Name".into());
    let err = api_error(assets(&client).create(&PostParams::default(), &bad_name).await);
    assert_eq!(err.code, 422);
    assert!(err.message.contains("metadata.name: Invalid value: \"Bad_Name\""), "{}", err.message);
}

#[tokio::test]
async fn every_patch_type_and_the_ones_refused() {
    let Env { server, client, .. } = env().await;
    let api = assets(&client);
    api.create(&PostParams::default(), &asset("line-1")).await.unwrap();

    let merged = api
        .patch("line-1", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"tier": "a"}}})))
        .await
        .unwrap();
    assert_eq!(merged.labels()["tier"], "a");
    assert_eq!(merged.metadata.generation, Some(1), "metadata changes do not bump generation");

    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/topics/0", "value": "factory/line-1/#"},
        {"op": "add", "path": "/spec/topics/-", "value": "factory/line-9/#"},
    ]))
    .unwrap();
    let patched = api.patch("line-1", &PatchParams::default(), &Patch::Json::<()>(ops)).await.unwrap();
    assert_eq!(patched.spec.topics.len(), 2);
    assert_eq!(patched.metadata.generation, Some(2));
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/spec/topics/0", "value": "other"}])).unwrap();
    assert_eq!(api_error(api.patch("line-1", &PatchParams::default(), &Patch::Json::<()>(failing)).await).code, 422);

    // Server-side apply: create if absent, fields the manager stops applying are removed.
    let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"},
        "data": {"a": "1", "b": "2"}});
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "dataspace");
    let cm = cms.patch("applied", &PatchParams::apply("tester"), &Patch::Apply(&applied)).await.unwrap();
    assert_eq!(cm.data.unwrap().len(), 2);
    let other_writer = PatchParams { field_manager: Some("other-writer".into()), ..Default::default() };
    cms.patch("applied", &other_writer, &Patch::Merge(json!({"data": {"a": "changed", "c": "3"}}))).await.unwrap();
    let reapplied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"},
        "data": {"a": "1"}});
    let err = api_error(cms.patch("applied", &PatchParams::apply("tester"), &Patch::Apply(&reapplied)).await);
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert!(
        err.message.starts_with("Apply failed with 1 conflict: conflict with \"other-writer\" using v1 at ")
            && err.message.ends_with(": .data.a"),
        "{}",
        err.message
    );
    let cm = cms.patch("applied", &PatchParams::apply("tester").force(), &Patch::Apply(&reapplied)).await.unwrap();
    let data = cm.data.unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["a", "c"], "b dropped by its manager, c kept (another writer's)");
    assert_eq!(data["a"], "1", "force takes the field over");
    let managed: Vec<(String, String, Value)> = cm
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m.manager.unwrap(), m.operation.unwrap(), serde_json::to_value(m.fields_v1.unwrap()).unwrap()))
        .collect();
    let tester = managed.iter().find(|(m, _, _)| m == "tester").expect("the applier has an entry");
    assert_eq!((tester.1.as_str(), &tester.2), ("Apply", &json!({"f:data": {"f:a": {}}})));
    let other = managed.iter().find(|(m, _, _)| m == "other-writer").expect("the updater has an entry");
    assert_eq!((other.1.as_str(), &other.2), ("Update", &json!({"f:data": {"f:c": {}}})));
    // What a GET returns cannot be applied back as it is.
    let fetched = cms.get("applied").await.unwrap();
    let err = api_error(cms.patch("applied", &PatchParams::apply("tester"), &Patch::Apply(&fetched)).await);
    assert_eq!((err.code, err.message.as_str()), (400, "metadata.managedFields must be nil"));
    let raw = client
        .request_text(
            axum::http::Request::patch("/api/v1/namespaces/dataspace/configmaps/applied")
                .header("content-type", "application/apply-patch+yaml")
                .body(serde_json::to_vec(&reapplied).unwrap())
                .unwrap(),
        )
        .await;
    let err = api_error(raw);
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"), "apply without fieldManager");
    assert_eq!(
        err.message,
        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
    );

    // Strategic merge patch: built-ins only; an unknown media type is 415.
    cms.patch("applied", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": ["e2e/a"]}})))
        .await
        .unwrap();
    let smp = json!({"data": {"d": "4"}, "metadata": {"finalizers": ["e2e/b"]}});
    let smp = cms.patch("applied", &PatchParams::default(), &Patch::Strategic(smp)).await.unwrap();
    assert_eq!(smp.data.unwrap()["d"], "4");
    assert_eq!(smp.metadata.finalizers.unwrap(), ["e2e/a", "e2e/b"], "finalizers merge as a set");
    let err = api_error(api.patch("line-1", &PatchParams::default(), &Patch::Strategic(json!({"spec": {}}))).await);
    assert_eq!((err.code, err.reason.as_str()), (415, "UnsupportedMediaType"));
    let raw = client
        .request_text(
            axum::http::Request::patch("/apis/dsp-mqtt.io/v1alpha1/namespaces/dataspace/mqttassets/line-1")
                .header("content-type", "text/plain")
                .body(b"{}".to_vec())
                .unwrap(),
        )
        .await;
    assert_eq!(api_error(raw).code, 415);
    assert!(server.write_count() >= 6);
}

#[tokio::test]
async fn status_is_written_only_through_its_subresource() {
    let Env { client, server: _server, .. } = env().await;
    let api = assets(&client);
    let mut asset = asset("line-1");
    asset.status = Some(Default::default());
    asset.status.as_mut().unwrap().observed_generation = Some(7);
    let created = api.create(&PostParams::default(), &asset).await.unwrap();
    assert!(created.status.is_none(), "status is dropped on create");

    let status = json!({"status": {"observedGeneration": 1}});
    let via_main = api.patch("line-1", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    assert!(via_main.status.is_none(), "the main resource ignores status");

    let both = json!({"spec": {"topics": ["changed/#"]}, "metadata": {"labels": {"x": "y"}},
        "status": {"observedGeneration": 1}});
    let via_status = api.patch_status("line-1", &PatchParams::default(), &Patch::Merge(&both)).await.unwrap();
    assert_eq!(via_status.status.unwrap().observed_generation, Some(1));
    assert_eq!(via_status.spec.topics, ["factory/line-1/#"], "status ignores spec");
    assert!(via_status.metadata.labels.is_none(), "status ignores metadata");
    assert_eq!(via_status.metadata.generation, Some(1), "status changes do not bump generation");

    let apply = json!({"apiVersion": "dsp-mqtt.io/v1alpha1", "kind": "MqttAsset",
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled", "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    let applied = api.patch_status("line-1", &PatchParams::apply("op").force(), &Patch::Apply(&apply)).await.unwrap();
    let s = applied.status.unwrap();
    assert_eq!((s.conditions.len(), s.observed_generation), (1, Some(1)), "apply merges into status");
}

#[tokio::test]
async fn stale_writes_conflict_and_no_op_writes_keep_the_resource_version() {
    let Env { server, client, .. } = env().await;
    let api = assets(&client);
    let created = api.create(&PostParams::default(), &asset("line-1")).await.unwrap();
    api.patch("line-1", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})))
        .await
        .unwrap();
    let err = api_error(api.replace("line-1", &PostParams::default(), &created).await);
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        err.message,
        "Operation cannot be fulfilled on mqttassets.dsp-mqtt.io \"line-1\": the object has been modified; \
         please apply your changes to the latest version and try again"
    );
    let mut unconditional = created.clone();
    unconditional.metadata.resource_version = None;
    assert_eq!(api_error(api.replace("line-1", &PostParams::default(), &unconditional).await).code, 422);

    let current = api.get("line-1").await.unwrap();
    let rv = server.resource_version();
    let same = api
        .patch("line-1", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})))
        .await
        .unwrap();
    assert_eq!(same.resource_version(), current.resource_version());
    let replaced = api.replace("line-1", &PostParams::default(), &current).await.unwrap();
    assert_eq!(replaced.resource_version(), current.resource_version());
    assert_eq!(server.resource_version(), rv, "no write happened");
}

type Events = futures::stream::BoxStream<'static, Result<watcher::Event<MqttAsset>, watcher::Error>>;

async fn next(events: &mut Events) -> watcher::Event<MqttAsset> {
    tokio::time::timeout(Duration::from_secs(5), events.try_next()).await.expect("an event in time").unwrap().unwrap()
}

#[tokio::test]
async fn watcher_sees_changes_bookmarks_and_recovers_from_expired_history() {
    let Env { server, client, .. } = env().await;
    let api = assets(&client);
    let mut events: Events = watcher(api.clone(), watcher::Config::default()).boxed();
    assert!(matches!(next(&mut events).await, watcher::Event::Init));
    assert!(matches!(next(&mut events).await, watcher::Event::InitDone));
    api.create(&PostParams::default(), &asset("line-1")).await.unwrap();
    match next(&mut events).await {
        watcher::Event::Apply(a) => assert_eq!(a.name_any(), "line-1"),
        other => panic!("{other:?}"),
    }

    // A raw watch gets bookmarks carrying the current resourceVersion.
    let rv = api.get("line-1").await.unwrap().resource_version().unwrap();
    let mut raw = api.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
    let event = tokio::time::timeout(Duration::from_secs(3), raw.try_next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(event, WatchEvent::Bookmark(ref b) if b.metadata.resource_version == rv), "{event:?}");

    // After compaction an old resourceVersion is 410 Expired, as an ERROR event.
    server.compact();
    let mut old = api.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
    match old.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
    // The watcher lists again and then sees new changes.
    let mut seen_relist = false;
    let t = asset("line-2");
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.next()).await.expect("watcher recovers") {
            Some(Ok(watcher::Event::InitDone)) => {
                seen_relist = true;
                api.create(&PostParams::default(), &t).await.unwrap();
            }
            Some(Ok(watcher::Event::Apply(a))) if a.name_any() == "line-2" => break,
            Some(_) => {}
            None => panic!("watcher ended"),
        }
    }
    assert!(seen_relist);
}

#[tokio::test]
async fn streaming_list_watcher_gets_initial_events() {
    let Env { client, server: _server, .. } = env().await;
    let api = assets(&client);
    api.create(&PostParams::default(), &asset("line-1")).await.unwrap();
    let config = watcher::Config::default().streaming_lists();
    let mut events = watcher(api.clone(), config).boxed();
    let mut initial = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.try_next()).await.unwrap().unwrap().unwrap() {
            watcher::Event::InitApply(a) => initial.push(a.name_any()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(initial, ["line-1"]);
    // Without sendInitialEvents' companions the server refuses it, as the real one does.
    let raw = client
        .request_text(
            axum::http::Request::get(
                "/apis/dsp-mqtt.io/v1alpha1/namespaces/dataspace/mqttassets?watch=true&sendInitialEvents=true",
            )
            .body(vec![])
            .unwrap(),
        )
        .await;
    assert_eq!(api_error(raw).code, 422);
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let Env { client, server: _server, .. } = env().await;
    let api = assets(&client);
    let mut asset = asset("line-1");
    asset.metadata.finalizers = Some(vec!["dsp-mqtt.io/cleanup".into()]);
    api.create(&PostParams::default(), &asset).await.unwrap();
    let mut events = api.watch(&WatchParams::default(), "0").await.unwrap().boxed();
    assert!(matches!(events.try_next().await.unwrap(), Some(WatchEvent::Added(_))));

    let deleting = api.delete("line-1", &DeleteParams::default()).await.unwrap().left().unwrap();
    assert!(deleting.metadata.deletion_timestamp.is_some());
    assert_eq!(deleting.metadata.deletion_grace_period_seconds, Some(0));
    assert_eq!(deleting.metadata.generation, Some(2), "generation moves when deletion starts");
    assert!(matches!(events.try_next().await.unwrap(), Some(WatchEvent::Modified(_))));

    let add = json!({"metadata": {"finalizers": ["dsp-mqtt.io/cleanup", "other/x"]}});
    let err = api_error(api.patch("line-1", &PatchParams::default(), &Patch::Merge(&add)).await);
    assert_eq!(err.code, 422);
    assert!(err.message.contains("no new finalizers can be added"), "{}", err.message);

    // kube-runtime's finalizer helper removes with a guarded JSON Patch.
    let remove: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": "dsp-mqtt.io/cleanup"},
        {"op": "remove", "path": "/metadata/finalizers/0"},
    ]))
    .unwrap();
    api.patch("line-1", &PatchParams::default(), &Patch::Json::<()>(remove)).await.unwrap();
    assert!(matches!(events.try_next().await.unwrap(), Some(WatchEvent::Deleted(_))));
    assert_eq!(api_error(api.get("line-1").await).code, 404);
}

#[tokio::test]
async fn kube_runtimes_finalizer_helper_adds_and_removes_its_finalizer() {
    use std::sync::Arc;

    use kube::runtime::controller::Action;
    use kube::runtime::finalizer::{Event, finalizer};

    let Env { client, server: _server, .. } = env().await;
    let api = assets(&client);
    api.create(&PostParams::default(), &asset("line-1")).await.unwrap();
    let name = "dsp-mqtt.io/cleanup";
    let run = |object: MqttAsset| {
        let api = api.clone();
        async move {
            finalizer(&api, name, Arc::new(object), |event| async move {
                Ok::<_, kube::Error>(match event {
                    Event::Apply(_) => Action::await_change(),
                    Event::Cleanup(_) => Action::await_change(),
                })
            })
            .await
        }
    };
    run(api.get("line-1").await.unwrap()).await.unwrap();
    assert_eq!(api.get("line-1").await.unwrap().metadata.finalizers.unwrap(), [name], "the first finalizer is added");
    api.delete("line-1", &DeleteParams::default()).await.unwrap();
    run(api.get("line-1").await.unwrap()).await.unwrap();
    assert!(api.get_opt("line-1").await.unwrap().is_none(), "cleanup removed the finalizer and the object is gone");
}

#[tokio::test]
async fn dependents_are_collected_with_their_owner() {
    let Env { client, server: _server, .. } = env().await;
    let owner = assets(&client).create(&PostParams::default(), &asset("line-1")).await.unwrap();
    let transfers: Api<MqttTransfer> = Api::namespaced(client.clone(), "dataspace");
    let mut transfer = transfer("line-1-consumer-a", "line-1");
    transfer.metadata.owner_references = Some(vec![owner.controller_owner_ref(&()).unwrap()]);
    transfer.metadata.finalizers = Some(vec!["dsp-mqtt.io/cleanup".into()]);
    transfers.create(&PostParams::default(), &transfer).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "dataspace");
    for name in ["owned", "orphaned"] {
        let s = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                owner_references: Some(vec![owner.controller_owner_ref(&()).unwrap()]),
                ..Default::default()
            },
            ..Default::default()
        };
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    // An orphaning delete of a second owner only drops the reference.
    let other = assets(&client).create(&PostParams::default(), &asset("line-2")).await.unwrap();
    secrets
        .patch(
            "orphaned",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"ownerReferences": [other.controller_owner_ref(&()).unwrap()]}})),
        )
        .await
        .unwrap();
    assets(&client).delete("line-2", &DeleteParams::orphan()).await.unwrap();

    assets(&client).delete("line-1", &DeleteParams::background()).await.unwrap();
    eventually("the owned secret is collected", || async { secrets.get_opt("owned").await.unwrap().is_none() }).await;
    eventually("the transfer is being deleted", || async {
        transfers.get("line-1-consumer-a").await.unwrap().metadata.deletion_timestamp.is_some()
    })
    .await;
    let orphan = secrets.get("orphaned").await.unwrap();
    assert!(orphan.metadata.owner_references.is_none_or(|r| r.is_empty()), "the orphan keeps no reference");
    eventually("line-2 is gone", || async { assets(&client).get_opt("line-2").await.unwrap().is_none() }).await;
}

#[tokio::test]
async fn label_and_field_selectors() {
    let Env { client, server: _server, .. } = env().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "dataspace");
    for (name, tier) in [("a", Some("web")), ("b", Some("db")), ("c", None)] {
        let mut labels = std::collections::BTreeMap::new();
        if let Some(t) = tier {
            labels.insert("tier".to_owned(), t.to_owned());
        }
        let cm = ConfigMap {
            metadata: ObjectMeta { name: Some(name.into()), labels: Some(labels), ..Default::default() },
            ..Default::default()
        };
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let names = |selector: &'static str, fields: &'static str| {
        let cms = cms.clone();
        async move {
            let lp = ListParams::default().labels(selector).fields(fields);
            cms.list(&lp).await.map(|l| l.items.iter().map(|c| c.name_any()).collect::<Vec<_>>())
        }
    };
    assert_eq!(names("tier=web", "").await.unwrap(), ["a"]);
    assert_eq!(names("tier==db", "").await.unwrap(), ["b"]);
    assert_eq!(names("tier!=web", "").await.unwrap(), ["b", "c"]);
    assert_eq!(names("tier in (web,db)", "").await.unwrap(), ["a", "b"]);
    assert_eq!(names("tier notin (web)", "").await.unwrap(), ["b", "c"]);
    assert_eq!(names("tier", "").await.unwrap(), ["a", "b"]);
    assert_eq!(names("!tier", "").await.unwrap(), ["c"]);
    assert_eq!(names("", "metadata.name=b").await.unwrap(), ["b"]);
    assert_eq!(names("", "metadata.name!=b,metadata.namespace=dataspace").await.unwrap(), ["a", "c"]);
    let err = api_error(names("", "data.k=v").await);
    assert_eq!((err.code, err.reason.as_str()), (400, "BadRequest"));

    // A watch with a selector sees objects enter and leave the selection as ADDED and DELETED.
    let mut web = cms.watch(&WatchParams::default().labels("tier=web"), "0").await.unwrap().boxed();
    assert!(matches!(web.try_next().await.unwrap(), Some(WatchEvent::Added(ref c)) if c.name_any() == "a"));
    let relabel = |tier: &str| Patch::Merge(json!({"metadata": {"labels": {"tier": tier}}}));
    cms.patch("b", &PatchParams::default(), &relabel("web")).await.unwrap();
    assert!(matches!(web.try_next().await.unwrap(), Some(WatchEvent::Added(ref c)) if c.name_any() == "b"));
    cms.patch("b", &PatchParams::default(), &relabel("db")).await.unwrap();
    assert!(matches!(web.try_next().await.unwrap(), Some(WatchEvent::Deleted(ref c)) if c.name_any() == "b"));
    cms.patch("c", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "v"}}))).await.unwrap();

    cms.delete_collection(&DeleteParams::default(), &ListParams::default().labels("tier")).await.unwrap();
    assert_eq!(names("", "").await.unwrap(), ["c"], "deletecollection removes exactly the selected");
}

#[tokio::test]
async fn requests_are_logged_and_faults_reach_the_client() {
    let Env { server, client, .. } = env().await;
    let api = assets(&client);
    let mut stream = api.watch(&WatchParams::default(), "0").await.unwrap().boxed();
    api.create(&PostParams::default(), &asset("line-1")).await.unwrap();
    assert!(matches!(stream.try_next().await.unwrap(), Some(WatchEvent::Added(_))), "streams pass the middleware");
    let watches = server.log.matching(|r| r.query.as_deref().is_some_and(|q| q.contains("watch=true")));
    assert_eq!(watches.len(), 1);
    assert_eq!(watches[0].path, "/apis/dsp-mqtt.io/v1alpha1/namespaces/dataspace/mqttassets");

    server.faults.fail_next(1, 500);
    assert!(api.get("line-1").await.is_err());
    // kube's client retries 429/503/504 by itself: one 503 is invisible to its caller.
    server.faults.fail_next(1, 503);
    assert_eq!(api.get("line-1").await.unwrap().name_any(), "line-1");
}

#[tokio::test]
async fn requests_without_the_token_are_unauthorized() {
    let Env { _ca, server, .. } = env().await;
    let cert = reqwest::Certificate::from_pem(_ca.cert_pem().as_bytes()).unwrap();
    let http = reqwest::Client::builder().tls_certs_only([cert]).build().unwrap();
    let response = http.get(format!("{}/api/v1/namespaces", server.base_url)).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (body["kind"].as_str(), body["reason"].as_str(), body["code"].as_u64()),
        (Some("Status"), Some("Unauthorized"), Some(401))
    );
    let wrong = http.get(format!("{}/version", server.base_url)).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let right = http.get(format!("{}/version", server.base_url)).bearer_auth(server.token()).send().await.unwrap();
    assert_eq!(right.status(), 200);
}

#[tokio::test]
async fn kubeconfig_serves_a_separate_client() {
    let Env { server, .. } = env().await;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig_yaml()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    let client = Client::try_from(config).unwrap();
    let names: Vec<String> = Api::<Namespace>::all(client)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    assert!(names.contains(&"dataspace".to_owned()) && names.contains(&"kube-system".to_owned()), "{names:?}");
    assert!(!e2e::logs::captured().contains(server.token()), "the bearer token stays out of the logs");
}

#[tokio::test]
async fn event_recorder_publishes_and_leases_work() {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let Env { client, server: _server, .. } = env().await;
    let asset = assets(&client).create(&PostParams::default(), &asset("line-1")).await.unwrap();
    let reporter = Reporter { controller: "mqtt-dsp-operator".into(), instance: Some("test".into()) };
    let recorder = Recorder::new(client.clone(), reporter);
    let reference: ObjectReference = asset.object_ref(&());
    let event = Event {
        type_: EventType::Normal,
        reason: "Reconciled".into(),
        note: Some("all backends hold the spec".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), "dataspace");
    let list = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1, "a repeat is a series on the same Event");
    let stored = &list.items[0];
    assert_eq!(stored.reason.as_deref(), Some("Reconciled"));
    assert_eq!(stored.series.as_ref().map(|s| s.count), Some(2));
    assert_eq!(stored.regarding.as_ref().and_then(|r| r.name.as_deref()), Some("line-1"));

    // The same Event through the core/v1 API, as `kubectl get events` shows it.
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "dataspace");
    let seen = core.list(&ListParams::default().fields("involvedObject.name=line-1")).await.unwrap();
    assert_eq!(seen.items.len(), 1);
    assert_eq!(seen.items[0].message.as_deref(), Some("all backends hold the spec"));
    assert_eq!(seen.items[0].reporting_component.as_deref(), Some("mqtt-dsp-operator"));

    let invalid =
        K8sEvent { metadata: ObjectMeta { name: Some("bad".into()), ..Default::default() }, ..Default::default() };
    assert_eq!(api_error(events.create(&PostParams::default(), &invalid).await).code, 422);

    let leases: Api<Lease> = Api::namespaced(client, "dataspace");
    let lease = Lease {
        metadata: ObjectMeta { name: Some("mqtt-dsp-operator".into()), ..Default::default() },
        spec: Some(LeaseSpec {
            holder_identity: Some("pod-a".into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }),
    };
    let mut never = lease.clone();
    never.spec.as_mut().unwrap().lease_duration_seconds = Some(0);
    assert_eq!(api_error(leases.create(&PostParams::default(), &never).await).code, 422);
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut taken = created.clone();
    taken.spec.as_mut().unwrap().holder_identity = Some("pod-b".into());
    leases.replace("mqtt-dsp-operator", &PostParams::default(), &taken).await.unwrap();
    assert_eq!(api_error(leases.replace("mqtt-dsp-operator", &PostParams::default(), &created).await).code, 409);
}

#[tokio::test]
async fn deleting_a_namespace_removes_its_contents_then_itself() {
    let Env { client, server: _server, .. } = env().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns =
        Namespace { metadata: ObjectMeta { name: Some("doomed".into()), ..Default::default() }, ..Default::default() };
    namespaces.create(&PostParams::default(), &ns).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    for (name, finalizers) in [("plain", None), ("held", Some(vec!["e2e/hold".to_owned()]))] {
        let cm = ConfigMap {
            metadata: ObjectMeta { name: Some(name.into()), finalizers, ..Default::default() },
            ..Default::default()
        };
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    assert_eq!(api_error(namespaces.delete("default", &DeleteParams::default()).await).code, 403);
    let terminating = namespaces.delete("doomed", &DeleteParams::default()).await.unwrap().left().unwrap();
    assert_eq!(terminating.status.and_then(|s| s.phase).as_deref(), Some("Terminating"));
    let late =
        ConfigMap { metadata: ObjectMeta { name: Some("late".into()), ..Default::default() }, ..Default::default() };
    assert_eq!(api_error(cms.create(&PostParams::default(), &late).await).code, 403);

    eventually("the plain config map is gone", || async { cms.get_opt("plain").await.unwrap().is_none() }).await;
    assert!(cms.get("held").await.unwrap().metadata.deletion_timestamp.is_some());
    assert!(namespaces.get_opt("doomed").await.unwrap().is_some(), "the namespace waits for its contents");
    cms.patch("held", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    eventually("the namespace is gone", || async { namespaces.get_opt("doomed").await.unwrap().is_none() }).await;
}

#[tokio::test]
async fn a_controller_settles_and_its_no_change_resyncs_write_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use kube::runtime::controller::{Action, Controller};

    struct Ctx {
        api: Api<MqttAsset>,
        reconciles: AtomicU32,
    }
    async fn reconcile(asset: Arc<MqttAsset>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
        ctx.reconciles.fetch_add(1, Ordering::SeqCst);
        let status = json!({"apiVersion": "dsp-mqtt.io/v1alpha1", "kind": "MqttAsset", "status": {
            "observedGeneration": asset.metadata.generation,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled", "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
        let params = PatchParams::apply("e2e-test-controller").force();
        ctx.api.patch_status(&asset.name_any(), &params, &Patch::Apply(&status)).await?;
        Ok(Action::requeue(Duration::from_millis(100)))
    }
    fn error_policy(_: Arc<MqttAsset>, _: &kube::Error, _: Arc<Ctx>) -> Action {
        Action::requeue(Duration::from_millis(100))
    }

    let Env { server, client, .. } = env().await;
    let api = assets(&client);
    let ctx = Arc::new(Ctx { api: api.clone(), reconciles: AtomicU32::new(0) });
    let controller = tokio::spawn(
        Controller::new(api.clone(), watcher::Config::default())
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|_| async {}),
    );
    api.create(&PostParams::default(), &asset("line-1")).await.unwrap();
    let observed = |generation: i64| {
        let api = api.clone();
        move || {
            let api = api.clone();
            async move { api.get("line-1").await.unwrap().status.is_some_and(|s| s.observed_generation == Some(generation)) }
        }
    };
    eventually("the controller reports generation 1", observed(1)).await;

    let rv = server.resource_version();
    let before = ctx.reconciles.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(ctx.reconciles.load(Ordering::SeqCst) >= before + 2, "the controller resynced");
    assert_eq!(server.resource_version(), rv, "resyncs that change nothing write nothing");

    api.patch("line-1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"topics": ["factory/x/#"]}})))
        .await
        .unwrap();
    eventually("the controller reports generation 2", observed(2)).await;
    controller.abort();
}

/// A GET of `path` with `accept` as the `Accept` header, parsed as JSON.
async fn get_json(client: &Client, path: &str, accept: &str) -> Result<Value, kube::Error> {
    let request = axum::http::Request::get(path).header("Accept", accept).body(vec![]).unwrap();
    Ok(serde_json::from_str(&client.request_text(request).await?).unwrap())
}

#[tokio::test]
async fn openapi_v3_tells_kubectl_which_kinds_take_field_validation() {
    let env = env().await;
    // What kubectl's validation reads: the group versions, then one document per group version
    // whose PATCH operations name their kind and take `fieldValidation`.
    let root = get_json(&env.client, "/openapi/v3", "application/json").await.unwrap();
    let url = |gv: &str| root["paths"][gv]["serverRelativeURL"].as_str().map(str::to_owned);
    for gv in ["api/v1", "apis/coordination.k8s.io/v1", "apis/apiextensions.k8s.io/v1"] {
        assert!(url(gv).is_some(), "{gv} missing from {root}");
    }
    let ours = url("apis/dsp-mqtt.io/v1alpha1").expect("the CRDs' group version");
    assert!(ours.starts_with("/openapi/v3/apis/dsp-mqtt.io/v1alpha1?hash="), "{ours}");
    let doc = get_json(&env.client, &ours, "application/json").await.unwrap();
    assert_eq!(doc["openapi"], "3.0.0");
    let item = &doc["paths"]["/apis/dsp-mqtt.io/v1alpha1/namespaces/{namespace}/mqttassets/{name}"];
    let patch = &item["patch"];
    assert_eq!(
        patch["x-kubernetes-group-version-kind"],
        json!({"group": "dsp-mqtt.io", "version": "v1alpha1", "kind": "MqttAsset"})
    );
    let params: Vec<&str> = patch["parameters"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(params.contains(&"fieldValidation") && params.contains(&"fieldManager"), "{params:?}");
    // Custom resources take no strategic merge patch (415 here too); built-ins do.
    let media: Vec<&String> = patch["requestBody"]["content"].as_object().unwrap().keys().collect();
    assert!(media.iter().any(|m| *m == "application/apply-patch+yaml"), "{media:?}");
    assert!(!media.iter().any(|m| *m == "application/strategic-merge-patch+json"), "{media:?}");
    assert!(
        doc["paths"]["/apis/dsp-mqtt.io/v1alpha1/namespaces/{namespace}/mqttassets/{name}/status"]["patch"].is_object()
    );
    let core = get_json(&env.client, &url("api/v1").unwrap(), "application/json").await.unwrap();
    let ns_patch = &core["paths"]["/api/v1/namespaces/{name}"]["patch"];
    assert!(ns_patch["requestBody"]["content"]["application/strategic-merge-patch+json"].is_object(), "{ns_patch}");
    // `kubectl explain` reads the kinds' schemas.
    let schema = &doc["components"]["schemas"]["io.dsp-mqtt.v1alpha1.MqttAsset"];
    assert!(schema["properties"]["spec"]["properties"]["topics"].is_object(), "{schema}");
    assert_eq!(schema["x-kubernetes-group-version-kind"][0]["kind"], "MqttAsset");

    // Unknown group versions and v2 (protobuf-first on the real server) are 404; protobuf-only
    // clients are told no acceptable type exists.
    for path in ["/openapi/v3/apis/example.com/v1", "/openapi/v2"] {
        let err = api_error(get_json(&env.client, path, "application/json").await);
        assert_eq!(err.code, 404, "{path}");
    }
    let err =
        api_error(get_json(&env.client, &ours, "application/com.github.proto-openapi.spec.v3@v1.0+protobuf").await);
    assert_eq!(err.code, 406);

    // The documents follow the CRDs.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(env.client.clone());
    crds.delete("mqttassets.dsp-mqtt.io", &DeleteParams::default()).await.unwrap();
    let client = env.client.clone();
    let gv_url = url("apis/dsp-mqtt.io/v1alpha1").unwrap();
    eventually("the deleted CRD's schema is gone from its group version's document", || {
        let (client, gv_url) = (client.clone(), gv_url.clone());
        async move {
            let doc = get_json(&client, &gv_url, "application/json").await.unwrap();
            doc["components"]["schemas"]["io.dsp-mqtt.v1alpha1.MqttAsset"].is_null()
                && doc["components"]["schemas"]["io.dsp-mqtt.v1alpha1.MqttTransfer"].is_object()
        }
    })
    .await;
    let root_after = get_json(&env.client, "/openapi/v3", "application/json").await.unwrap();
    assert_ne!(
        root_after["paths"]["apis/dsp-mqtt.io/v1alpha1"], root["paths"]["apis/dsp-mqtt.io/v1alpha1"],
        "new hash"
    );
}

const TABLE: &str =
    "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

#[tokio::test]
async fn kubectl_get_tables_show_the_crds_printer_columns() {
    let env = env().await;
    assets(&env.client).create(&PostParams::default(), &asset("line-1")).await.unwrap();
    let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled",
        "message": "all set", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    assets(&env.client).patch_status("line-1", &PatchParams::default(), &Patch::Merge(&ready)).await.unwrap();
    let transfers: Api<MqttTransfer> = Api::namespaced(env.client.clone(), "dataspace");
    let mut t = transfer("t-1", "line-1");
    t.spec.expires_at = Some(serde_json::from_value(json!("2099-01-01T00:00:00Z")).unwrap());
    transfers.create(&PostParams::default(), &t).await.unwrap();

    let table =
        get_json(&env.client, "/apis/dsp-mqtt.io/v1alpha1/namespaces/dataspace/mqttassets", TABLE).await.unwrap();
    assert_eq!((table["kind"].as_str(), table["apiVersion"].as_str()), (Some("Table"), Some("meta.k8s.io/v1")));
    let columns: Vec<&str> =
        table["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(columns, ["Name", "Ready", "Reason", "Asset ID", "Endpoint", "Auth", "Age"]);
    let row = &table["rows"][0];
    let cells = row["cells"].as_array().unwrap();
    assert_eq!(
        cells[..6],
        [json!("line-1"), json!("True"), json!("Reconciled"), Value::Null, json!("mqtt-tls"), json!("usrpw")]
    );
    let age = cells[6].as_str().unwrap();
    assert!(age.ends_with('s') && age.len() <= 3, "age {age}");
    assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(row["object"]["metadata"]["name"], "line-1");
    assert!(row["object"].get("spec").is_none());
    // Expiry is a string column: the real server prints a future time in a date column as
    // "<invalid>" (HumanDuration of a negative age), so the CRD shows the timestamp itself.
    let table =
        get_json(&env.client, "/apis/dsp-mqtt.io/v1alpha1/mqtttransfers?includeObject=Object", TABLE).await.unwrap();
    let expires = table["columnDefinitions"].as_array().unwrap().iter().position(|c| c["name"] == "Expires").unwrap();
    assert_eq!(table["rows"][0]["cells"][expires], "2099-01-01T00:00:00Z");
    assert_eq!(table["rows"][0]["object"]["spec"]["assetRef"]["name"], "line-1");
    // One object, a built-in kind, and the plain list for clients that do not ask for a table.
    let one = get_json(
        &env.client,
        "/apis/dsp-mqtt.io/v1alpha1/namespaces/dataspace/mqttassets/line-1?includeObject=None",
        TABLE,
    )
    .await
    .unwrap();
    assert_eq!(one["rows"].as_array().unwrap().len(), 1);
    assert!(one["rows"][0].get("object").is_none());
    let namespaces = get_json(&env.client, "/api/v1/namespaces", TABLE).await.unwrap();
    let columns: Vec<&str> =
        namespaces["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(columns, ["Name", "Status", "Age"]);
    assert!(
        namespaces["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["cells"] == json!(["dataspace", "Active", r["cells"][2]]))
    );
    let list = get_json(&env.client, "/apis/dsp-mqtt.io/v1alpha1/namespaces/dataspace/mqttassets", "application/json")
        .await
        .unwrap();
    assert_eq!(list["kind"], "MqttAssetList");
    let err = api_error(get_json(&env.client, "/api/v1/namespaces?includeObject=All", TABLE).await);
    assert_eq!(err.code, 400);
}
