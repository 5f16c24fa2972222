//! The real control plane the suites run on (e2e::systems::kubernetes): what the operator relies
//! on from it and what the RBAC of deploy/rbac.yaml refuses. If one of these fails, the controller
//! suites' results mean less.

use std::time::Duration;

use e2e::systems::kubernetes::{self, ControlPlane, OPERATOR_NAMESPACE, OPERATOR_USER};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use mqtt_dsp_operator::api::MqttAsset;

async fn plane() -> &'static ControlPlane {
    mqtt_dsp_operator::install_crypto_provider();
    e2e::logs::init();
    tokio::task::spawn_blocking(kubernetes::shared).await.unwrap().unwrap_or_else(|e| panic!("{e}"))
}

fn forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(ref s)) if s.code == 403)
}

fn secret(name: &str) -> Secret {
    Secret {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        string_data: Some([("k".to_owned(), "v".to_owned())].into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_api_server_is_the_release_we_built() {
    let plane = plane().await;
    let version = plane.admin_client().await.apiserver_version().await.unwrap();
    assert_eq!(version.git_version, kubernetes::version());
}

#[tokio::test]
async fn the_operator_account_gets_what_deploy_rbac_grants_and_nothing_else() {
    let plane = plane().await;
    let namespace = plane.test_namespace("rbac").await;
    let operator = plane.operator_client().await;

    // Granted: its resources cluster-wide, Secrets by name in a namespace it serves (the test
    // namespace has the RoleBinding deploy/rbac.yaml asks for), its own Lease.
    let assets: Api<MqttAsset> = Api::all(operator.clone());
    assets.list(&ListParams::default()).await.expect("list MqttAssets");
    let secrets: Api<Secret> = Api::namespaced(operator.clone(), &namespace);
    secrets.create(&PostParams::default(), &secret("granted")).await.expect("create a Secret");
    secrets.get("granted").await.expect("get a Secret by name");

    // Refused: listing or watching Secrets, other kinds, other Leases, deleting users' resources.
    assert!(forbidden(secrets.list(&ListParams::default()).await), "list Secrets");
    let config_maps: Api<ConfigMap> = Api::namespaced(operator.clone(), &namespace);
    assert!(forbidden(config_maps.list(&ListParams::default()).await), "list ConfigMaps");
    let leases: Api<Lease> = Api::namespaced(operator.clone(), OPERATOR_NAMESPACE);
    assert!(forbidden(leases.get("someone-elses-lease").await), "get another Lease");
    let team_leases: Api<Lease> = Api::namespaced(operator.clone(), &namespace);
    assert!(forbidden(team_leases.get("mqtt-dsp-operator").await), "a Lease outside its namespace");
    let namespaced_assets: Api<MqttAsset> = Api::namespaced(operator, &namespace);
    assert!(forbidden(namespaced_assets.delete("x", &DeleteParams::default()).await), "delete an MqttAsset");

    plane.delete_namespace(&namespace, Duration::from_secs(60)).await.unwrap();
}

#[tokio::test]
async fn deleting_a_namespace_removes_it_and_its_contents() {
    // The namespace controller (kube-controller-manager) is what teardown relies on.
    let plane = plane().await;
    let namespace = plane.test_namespace("ns").await;
    let admin = plane.admin_client().await;
    let maps: Api<ConfigMap> = Api::namespaced(admin, &namespace);
    let map = ConfigMap { metadata: ObjectMeta { name: Some("c".into()), ..Default::default() }, ..Default::default() };
    maps.create(&PostParams::default(), &map).await.unwrap();
    plane.delete_namespace(&namespace, Duration::from_secs(60)).await.unwrap();
    assert!(!plane.test_namespaces().await.iter().any(|(n, _)| n == &namespace));
}

#[tokio::test]
async fn an_owned_object_is_collected_with_its_owner() {
    // The garbage collector: a transfer's Secret is owned by the transfer and goes with it.
    let plane = plane().await;
    let namespace = plane.test_namespace("gc").await;
    let admin = plane.admin_client().await;
    let maps: Api<ConfigMap> = Api::namespaced(admin.clone(), &namespace);
    let owner = maps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta { name: Some("owner".into()), ..Default::default() },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let reference = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner.metadata.uid.clone().unwrap(),
        ..Default::default()
    };
    let owned = ConfigMap {
        metadata: ObjectMeta {
            name: Some("owned".into()),
            owner_references: Some(vec![reference]),
            ..Default::default()
        },
        ..Default::default()
    };
    maps.create(&PostParams::default(), &owned).await.unwrap();
    maps.delete("owner", &DeleteParams::default()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while maps.get_opt("owned").await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the owned object outlived its owner by 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    plane.delete_namespace(&namespace, Duration::from_secs(60)).await.unwrap();
}

#[tokio::test]
async fn the_operator_writes_secrets_only_in_the_namespaces_it_serves() {
    // A tenant's MqttTransfer gets its Secret in the tenant's namespace. deploy/rbac.yaml binds
    // those writes nowhere; each namespace the configuration serves gets a RoleBinding. So a
    // tenant in a namespace not served cannot make the operator write a Secret there, whatever
    // the operator were told (a configuration serving "*" by mistake, a bug).
    let plane = plane().await;
    let served = plane.test_namespace("served").await;
    let unserved = plane.unserved_namespace("unserved").await;
    let admin = plane.admin_client().await;
    let operator = plane.operator_client().await;

    let theirs: Api<Secret> = Api::namespaced(operator.clone(), &unserved);
    assert!(forbidden(theirs.create(&PostParams::default(), &secret("dataaddress")).await), "create there");
    Api::<Secret>::namespaced(admin.clone(), &unserved)
        .create(&PostParams::default(), &secret("tenant"))
        .await
        .unwrap();
    assert!(forbidden(theirs.get("tenant").await), "get a Secret there");
    let overwrite = Patch::Merge(serde_json::json!({"stringData": {"k": "overwritten"}}));
    assert!(forbidden(theirs.patch("tenant", &PatchParams::default(), &overwrite).await), "patch it");
    assert!(forbidden(theirs.replace("tenant", &PostParams::default(), &secret("tenant")).await), "update it");
    assert!(forbidden(theirs.delete("tenant", &DeleteParams::default()).await), "delete it");

    // Not in its own namespace either (no RoleBinding there: a configuration whose profiles all
    // list their namespaces serves none of its own), where it reads only the credentials the
    // configuration names (the credentials Role's resourceNames).
    let own: Api<Secret> = Api::namespaced(operator.clone(), OPERATOR_NAMESPACE);
    assert!(forbidden(own.create(&PostParams::default(), &secret("dataaddress")).await), "create in its namespace");
    assert!(forbidden(own.get("someone-elses-secret").await), "get a Secret it was not pointed at");
    let named = own.get("edc-management-api").await;
    assert!(!forbidden(named), "a credential the configuration names is readable (found or not)");

    // Nor cluster-wide: the API server's own answer for the operator's account, no namespace.
    for verb in ["get", "create", "update", "delete"] {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(OPERATOR_USER.into()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    resource: Some("secrets".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let review =
            Api::<SubjectAccessReview>::all(admin.clone()).create(&PostParams::default(), &review).await.unwrap();
        assert!(!review.status.unwrap().allowed, "{verb} Secrets in every namespace");
    }

    // The RoleBinding is what makes a namespace served: bound, the same write goes through.
    plane.serve_namespace(&unserved).await;
    theirs.create(&PostParams::default(), &secret("dataaddress")).await.expect("create once served");
    Api::<Secret>::namespaced(operator, &served).create(&PostParams::default(), &secret("dataaddress")).await.unwrap();

    for namespace in [served, unserved] {
        plane.delete_namespace(&namespace, Duration::from_secs(60)).await.unwrap();
    }
}
