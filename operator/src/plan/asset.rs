//! The desired state of an `MqttAsset` in every backend.
//!
//! | backend | `oauth2` mode | `usrpw` mode |
//! |---|---|---|
//! | identity provider | confidential client `clientId` whose tokens carry the broker's audience and topic claims | — |
//! | secret store | the client secret at `<vaultFolder>/<secretAlias>` | the broker password at the same place |
//! | broker | — (the token carries the topic permissions) | user `clientId` with read-only access to the topics |
//! | connector | asset (`dataAddress.type: Mqtt`), access and contract policy, contract definition | same |
//!
//! Names: asset id `spec.assetId` or `<namespace>-<name>`; policies `<assetId>-access-policy` and
//! `<assetId>-contract-policy` (one policy when `policy.contract` is not set); contract definition
//! `<assetId>-contract-definition`; client id `spec.auth.clientId` or `dsp-mqtt-<namespace>-<name>`;
//! secret alias `spec.auth.secretAlias` or `dsp-mqtt-<namespace>-<name>-secret`.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{PlanError, check_mode, check_topic_asterisks, check_topic_bytes, lookup, profile_name, properties};
use crate::api::{AuthMode, MqttAsset, MqttAssetSpec, PolicyRule};
use crate::backends::Owner;
use crate::backends::broker::TokenRequirements;
use crate::backends::connector::{AssetDefinition, ContractDefinition, OfferIds, PolicyDefinition, mqtt_endpoint_type};
use crate::backends::identity::ClientDefinition;
use crate::backends::secrets::SecretLocation;
use crate::config::Config;

/// Kind name used in ownership markers.
pub const KIND: &str = "MqttAsset";

/// The profiles an asset uses, resolved against the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssetProfiles {
    /// Connector profile name.
    pub connector: String,
    /// Identity-provider profile name (`oauth2` mode only).
    pub identity_provider: Option<String>,
    /// Secret-store profile name.
    pub secret_store: String,
    /// Broker profile name.
    pub broker: String,
}

/// How the asset's own identity is provisioned.
#[derive(Clone, Debug, PartialEq)]
pub enum AssetIdentity {
    /// An identity-provider client; its secret goes to the secret store.
    Oauth2 {
        /// The client.
        client: ClientDefinition,
    },
    /// A broker user; a random password is generated once and kept in the secret store.
    Usrpw {
        /// Broker username.
        username: String,
        /// Topic filters it may read.
        topics: Vec<String>,
    },
    /// None of its own: the operator is the connector's data plane and each transfer gets its
    /// own identity, so nothing resolves an asset identity (decision 27).
    PerTransfer,
}

/// Everything an asset should be, backend by backend.
#[derive(Clone, Debug, PartialEq)]
pub struct AssetPlan {
    /// Marker owner of every external object.
    pub owner: Owner,
    /// Profiles used.
    pub profiles: AssetProfiles,
    /// Identity (client or broker user).
    pub identity: AssetIdentity,
    /// Where the identity's secret lives (the alias the connector resolves).
    pub secret: SecretLocation,
    /// The connector asset.
    pub asset: AssetDefinition,
    /// Access policy, and the contract policy when it differs.
    pub policies: Vec<PolicyDefinition>,
    /// The contract definition.
    pub contract_definition: ContractDefinition,
    /// Base URL consumers connect to.
    pub base_url: String,
}

impl AssetPlan {
    /// Ids of the connector objects (for teardown).
    pub fn offer_ids(&self) -> OfferIds {
        OfferIds {
            contract_definition_id: self.contract_definition.id.clone(),
            policy_ids: self.policies.iter().map(|p| p.id.clone()).collect(),
            asset_id: self.asset.id.clone(),
        }
    }

    /// The identity's name: client id or broker username (none in data-plane mode).
    pub fn identity_name(&self) -> Option<&str> {
        match &self.identity {
            AssetIdentity::Oauth2 { client } => Some(&client.client_id),
            AssetIdentity::Usrpw { username, .. } => Some(username),
            AssetIdentity::PerTransfer => None,
        }
    }
}

/// The ownership marker of an asset.
pub fn owner(asset: &MqttAsset, config: &Config) -> Owner {
    Owner {
        installation: config.installation().to_owned(),
        kind: KIND.into(),
        namespace: asset.metadata.namespace.clone().unwrap_or_default(),
        name: asset.metadata.name.clone().unwrap_or_default(),
    }
}

fn namespace_name(asset: &MqttAsset) -> (&str, &str) {
    (asset.metadata.namespace.as_deref().unwrap_or_default(), asset.metadata.name.as_deref().unwrap_or_default())
}

/// The connector asset id (the DSP dataset id).
pub fn asset_id(asset: &MqttAsset) -> String {
    let (namespace, name) = namespace_name(asset);
    asset.spec.asset_id.clone().unwrap_or_else(|| format!("{namespace}-{name}"))
}

/// The asset identity's name (client id / broker username).
pub fn client_id(asset: &MqttAsset) -> String {
    let (namespace, name) = namespace_name(asset);
    let generated = || super::bounded(format!("dsp-mqtt-{namespace}-{name}"), super::MAX_IDENTITY_LEN);
    asset.spec.auth.client_id.clone().unwrap_or_else(generated)
}

/// The secret alias the connector resolves.
pub fn secret_alias(asset: &MqttAsset) -> String {
    let (namespace, name) = namespace_name(asset);
    asset.spec.auth.secret_alias.clone().unwrap_or_else(|| format!("dsp-mqtt-{namespace}-{name}-secret"))
}

/// Resolves the profile names against the configuration and checks the broker can do the mode.
pub fn resolve_profiles(spec: &MqttAssetSpec, config: &Config) -> Result<AssetProfiles, PlanError> {
    let (connector, _) = lookup(&config.connectors, spec.connector.as_ref(), "spec.connector", "connectors")?;
    let (secret_store, _) =
        lookup(&config.secret_stores, spec.secret_store.as_ref(), "spec.secretStore", "secretStores")?;
    let (broker, broker_profile) = lookup(&config.brokers, spec.broker.as_ref(), "spec.broker", "brokers")?;
    let capable = broker_profile.broker_type.capable_modes();
    let offered = broker_profile.effective_auth_modes().into_iter().filter(|m| capable.contains(m)).collect();
    check_mode(&broker, broker_profile.broker_type, offered, spec.auth.mode)?;
    let identity_provider = match spec.auth.mode {
        AuthMode::Oauth2 => Some(
            lookup(
                &config.identity_providers,
                spec.identity_provider.as_ref(),
                "spec.identityProvider",
                "identityProviders",
            )?
            .0,
        ),
        AuthMode::Usrpw => None,
    };
    Ok(AssetProfiles { connector, identity_provider, secret_store, broker })
}

/// Plans an asset. `token` is what the broker needs in consumers' tokens for the asset's topics
/// (`oauth2` mode; ignored otherwise).
pub fn plan(asset: &MqttAsset, config: &Config, token: Option<&TokenRequirements>) -> Result<AssetPlan, PlanError> {
    let spec = &asset.spec;
    let profiles = resolve_profiles(spec, config)?;
    super::allowed::check(asset, &profiles, config)?;
    check_topic_bytes("spec.topics", &spec.topics)?;
    let broker_type = config.brokers[&profiles.broker].broker_type;
    check_topic_asterisks("spec.topics", &spec.topics, &profiles.broker, broker_type)?;
    let private = object(spec.private_properties.as_ref());
    properties::check_reserved("spec.privateProperties", &private, true)?;
    let properties = object(spec.properties.as_ref());
    properties::check_reserved("spec.properties", &properties, false)?;
    if let Some(key) = properties.keys().find(|k| private.contains_key(*k)) {
        return Err(PlanError::PropertyConflict { key: key.clone() });
    }

    let owner = owner(asset, config);
    let id = asset_id(asset);
    let client_id = client_id(asset);
    let connector = &config.connectors[&profiles.connector];
    let broker = &config.brokers[&profiles.broker];
    let endpoint_type = spec.endpoint.endpoint_type;
    let base_url = match &spec.endpoint.url {
        Some(url) => url.clone(),
        None => broker.public_urls.get(&endpoint_type).map(|u| u.to_string()).ok_or_else(|| {
            PlanError::NoEndpointUrl { broker: profiles.broker.clone(), endpoint_type: endpoint_type.as_str() }
        })?,
    };
    let secret = SecretLocation { folder: connector.vault_folder.clone(), alias: secret_alias(asset) };

    let mut data_address = Map::new();
    data_address.insert("type".into(), json!("Mqtt"));
    data_address.insert("baseUrl".into(), json!(base_url));
    data_address.insert(
        "mqttEndpointType".into(),
        json!(mqtt_endpoint_type(connector.endpoint_type_spelling, endpoint_type, spec.auth.mode)),
    );
    if let [topic] = spec.topics.as_slice() {
        data_address.insert("dsp-mqtt:topic".into(), json!(topic));
    }
    // With the operator as this connector's data plane, the connector never builds an EDR from
    // the asset (each transfer gets its own credentials from the data plane): the asset's
    // dataAddress is only the source address, without references to the asset's credentials.
    let source_only = config.data_plane.as_ref().is_some_and(|d| d.registrations.contains_key(&profiles.connector));
    let identity = match spec.auth.mode {
        _ if source_only => AssetIdentity::PerTransfer,
        AuthMode::Oauth2 => {
            let idp = &config.identity_providers[profiles.identity_provider.as_ref().expect("resolved for oauth2")];
            data_address.insert("oauth2:tokenUrl".into(), json!(idp.effective_token_url().to_string()));
            data_address.insert("oauth2:clientId".into(), json!(client_id));
            data_address.insert("oauth2:clientSecretKeyAlias".into(), json!(secret.alias));
            AssetIdentity::Oauth2 {
                client: ClientDefinition {
                    client_id: client_id.clone(),
                    description: format!("MQTT asset {} (managed by mqtt-dsp-operator)", owner.marker()),
                    enabled: true,
                    access_token_lifespan_seconds: None,
                    refresh_tokens_for_client_credentials: false,
                    audience: token.map(|t| t.audience.clone()),
                    claims: token.map(|t| t.claims.clone()).unwrap_or_default(),
                    owner: owner.clone(),
                },
            }
        }
        AuthMode::Usrpw => {
            data_address.insert("username".into(), json!(client_id));
            data_address.insert("passwordAlias".into(), json!(secret.alias));
            AssetIdentity::Usrpw { username: client_id.clone(), topics: spec.topics.clone() }
        }
    };

    let access = PolicyDefinition {
        id: format!("{id}-access-policy"),
        policy: odrl_policy(&spec.policy.access),
        owner: owner.clone(),
    };
    let mut policies = vec![access];
    let contract_policy_id = match &spec.policy.contract {
        Some(rule) if rule != &spec.policy.access => {
            let contract = PolicyDefinition {
                id: format!("{id}-contract-policy"),
                policy: odrl_policy(rule),
                owner: owner.clone(),
            };
            let contract_id = contract.id.clone();
            policies.push(contract);
            contract_id
        }
        _ => policies[0].id.clone(),
    };
    let contract_definition = ContractDefinition {
        id: format!("{id}-contract-definition"),
        access_policy_id: policies[0].id.clone(),
        contract_policy_id,
        asset_id: id.clone(),
        owner: owner.clone(),
    };
    Ok(AssetPlan {
        asset: AssetDefinition { id, properties, private_properties: private, data_address, owner: owner.clone() },
        owner,
        profiles,
        identity,
        secret,
        policies,
        contract_definition,
        base_url,
    })
}

fn object(map: Option<&BTreeMap<String, Value>>) -> Map<String, Value> {
    map.map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
}

/// An ODRL policy from a rule: participant ids become `BusinessPartnerDID` (DIDs) or
/// `BusinessPartnerNumber` (BPNs) `eq` constraints, several joined by `or`; raw ODRL is passed
/// through, with the ODRL context and `@type: Set` added when missing.
pub fn odrl_policy(rule: &PolicyRule) -> Value {
    if let Some(odrl) = &rule.odrl {
        let mut policy: Map<String, Value> = odrl.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        policy.entry("@context").or_insert_with(|| json!("http://www.w3.org/ns/odrl.jsonld"));
        policy.entry("@type").or_insert_with(|| json!("Set"));
        return Value::Object(policy);
    }
    let constraints: Vec<Value> = rule
        .participant_ids
        .iter()
        .flatten()
        .map(|id| {
            let left = if id.starts_with("did:") { "BusinessPartnerDID" } else { "BusinessPartnerNumber" };
            json!({"leftOperand": left, "operator": "eq", "rightOperand": id})
        })
        .collect();
    let constraint = match constraints.len() {
        1 => constraints,
        _ => vec![json!({"or": constraints})],
    };
    json!({
        "@context": "http://www.w3.org/ns/odrl.jsonld",
        "@type": "Set",
        "permission": [{"action": "use", "constraint": constraint}]
    })
}

/// Profile names as they resolve for status (without checking they exist).
pub fn profile_names(spec: &MqttAssetSpec) -> [&str; 4] {
    [
        profile_name(spec.connector.as_ref()),
        profile_name(spec.identity_provider.as_ref()),
        profile_name(spec.secret_store.as_ref()),
        profile_name(spec.broker.as_ref()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{EndpointType, TOPIC_FILTER_MAX_BYTES};
    use crate::backends::identity::HardcodedClaim;

    fn config(extra: &str) -> Config {
        Config::parse(&format!(
            r#"
connectors:
  default:
    managementUrl: https://edc.example.com/management
    apiKey: {{env: EDC_KEY}}
    vaultFolder: edc
  fx:
    managementUrl: https://fx.example.com/management
    apiKey: {{env: EDC_KEY}}
    endpointTypeSpelling: factoryx
identityProviders:
  default:
    type: keycloak
    adminUrl: https://kc.example.com
    realm: dataspace
    clientId: operator
    clientSecret: {{env: KC_SECRET}}
secretStores:
  default:
    type: vault
    url: https://vault.example.com
    auth: {{token: {{env: VAULT_TOKEN}}}}
brokers:
  default:
    type: mosquitto
    adminUrl: mqtts://mosquitto.example.com:8883
    adminUsername: admin
    adminPassword: {{env: MQ}}
    publicUrls: {{mqtt-tls: "mqtts://mqtt.example.com:8883"}}
  rabbit:
    type: rabbitmq
    adminUrl: https://rabbit.example.com:15671
    adminUsername: admin
    adminPassword: {{env: RQ}}
    publicUrls: {{mqtt-tls: "mqtts://rabbit.example.com:8883", mqtt-wss: "wss://rabbit.example.com/ws"}}
{extra}"#
        ))
        .map(|mut c| {
            // The test assets' namespace: no `allowed` block needed (plan::allowed tests those).
            c.operator_namespace = "dataspace".into();
            c
        })
        .unwrap_or_else(|p| panic!("{p:#?}"))
    }

    fn oauth2_on_rabbit() -> MqttAsset {
        let mut asset = MqttAsset::test();
        asset.spec.auth.mode = AuthMode::Oauth2;
        asset.spec.broker = Some("rabbit".into());
        asset
    }

    fn token() -> TokenRequirements {
        TokenRequirements {
            audience: "rabbitmq".into(),
            claims: vec![HardcodedClaim { name: "dsp_mqtt_scopes".into(), value: json!("rabbitmq.read:*/*/x") }],
        }
    }

    #[test]
    fn with_the_operator_as_the_connectors_data_plane_the_asset_is_only_the_source_address() {
        let data_plane = "dataPlane:\n  listen: 0.0.0.0:8643\n  publicUrl: https://op.example.com:8643/signaling\n  \
                          tls: {certificate: {file: /t.crt}, key: {file: /t.key}}\n  token: {env: DP_TOKEN}\n  \
                          registrations:\n    default: {controlUrl: \"https://edc.example.com:9191/control\"}\n";
        for asset in [MqttAsset::test(), oauth2_on_rabbit()] {
            let with = plan(&asset, &config(data_plane), Some(&token())).unwrap();
            let da = &with.asset.data_address;
            assert_eq!(
                da.keys().map(String::as_str).collect::<Vec<_>>(),
                ["baseUrl", "dsp-mqtt:topic", "mqttEndpointType", "type"]
            );
            assert_eq!(with.identity, AssetIdentity::PerTransfer, "no identity of the asset's own");
            let wanted = crate::plan::objects::asset_objects(&with);
            assert!(
                wanted.iter().all(|r| r.kind.section() == crate::plan::objects::Section::Connectors),
                "only the connector's objects: {wanted:?}"
            );
            let without = plan(&asset, &config(""), Some(&token())).unwrap();
            assert!(without.asset.data_address.len() > da.len(), "the connector's own extension needs the references");
            assert_ne!(without.identity, AssetIdentity::PerTransfer);
        }
        // Another connector profile, not registered: unchanged.
        let mut fx = MqttAsset::test();
        fx.spec.connector = Some("fx".into());
        assert!(plan(&fx, &config(data_plane), None).unwrap().asset.data_address.contains_key("passwordAlias"));
    }

    #[test]
    fn usrpw_asset_names_and_data_address() {
        let plan = plan(&MqttAsset::test(), &config(""), None).unwrap();
        assert_eq!(plan.asset.id, "dataspace-line-1");
        assert_eq!(plan.identity_name(), Some("dsp-mqtt-dataspace-line-1"));
        assert_eq!(
            plan.secret,
            SecretLocation { folder: Some("edc".into()), alias: "dsp-mqtt-dataspace-line-1-secret".into() }
        );
        let da = &plan.asset.data_address;
        assert_eq!(da["type"], "Mqtt");
        assert_eq!(da["baseUrl"], "mqtts://mqtt.example.com:8883");
        assert_eq!(da["mqttEndpointType"], "mqtt-tls");
        assert_eq!(da["username"], "dsp-mqtt-dataspace-line-1");
        assert_eq!(da["passwordAlias"], "dsp-mqtt-dataspace-line-1-secret");
        assert_eq!(da["dsp-mqtt:topic"], "factory/line-1/#");
        assert!(!da.keys().any(|k| k.starts_with("oauth2:")), "exactly one auth set: {da:?}");
        assert_eq!(plan.policies.len(), 1, "contract defaults to access: one policy");
        assert_eq!(plan.contract_definition.access_policy_id, plan.contract_definition.contract_policy_id);
        assert_eq!(plan.contract_definition.asset_id, "dataspace-line-1");
    }

    #[test]
    fn oauth2_asset_carries_token_requirements_and_the_factoryx_spelling() {
        let mut asset = oauth2_on_rabbit().endpoint(EndpointType::MqttWss, None);
        asset.spec.connector = Some("fx".into());
        let plan = plan(&asset, &config(""), Some(&token())).unwrap();
        let da = &plan.asset.data_address;
        assert_eq!(da["mqttEndpointType"], "mqtt-wss-oauth2");
        assert_eq!(da["baseUrl"], "wss://rabbit.example.com/ws");
        assert_eq!(da["oauth2:tokenUrl"], "https://kc.example.com/realms/dataspace/protocol/openid-connect/token");
        assert_eq!(da["oauth2:clientId"], "dsp-mqtt-dataspace-line-1");
        assert_eq!(da["oauth2:clientSecretKeyAlias"], "dsp-mqtt-dataspace-line-1-secret");
        assert!(!da.contains_key("username"));
        assert_eq!(plan.secret.folder, None, "the fx connector has no vault folder");
        let AssetIdentity::Oauth2 { client } = &plan.identity else { panic!("oauth2 identity") };
        assert_eq!(client.audience.as_deref(), Some("rabbitmq"));
        assert_eq!(client.claims, token().claims);
    }

    #[test]
    fn several_topics_have_no_single_topic_key() {
        let mut asset = MqttAsset::test();
        asset.spec.topics = vec!["a/#".into(), "b/#".into()];
        let plan = plan(&asset, &config(""), None).unwrap();
        assert!(!plan.asset.data_address.contains_key("dsp-mqtt:topic"));
    }

    #[test]
    fn participants_become_constraints() {
        let one = PolicyRule { participant_ids: Some(vec!["did:web:a.example".into()]), odrl: None };
        let p = odrl_policy(&one);
        assert_eq!(
            p["permission"][0]["constraint"],
            json!([{"leftOperand": "BusinessPartnerDID", "operator": "eq", "rightOperand": "did:web:a.example"}])
        );
        let two = PolicyRule {
            participant_ids: Some(vec!["did:web:a.example".into(), "BPNL000000000001".into()]),
            odrl: None,
        };
        let p = odrl_policy(&two);
        let or = &p["permission"][0]["constraint"][0]["or"];
        assert_eq!(or[1]["leftOperand"], "BusinessPartnerNumber");
        assert_eq!(or.as_array().unwrap().len(), 2);
    }

    #[test]
    fn raw_odrl_is_passed_through_with_defaults() {
        let rule = PolicyRule {
            participant_ids: None,
            odrl: Some(BTreeMap::from([("permission".to_owned(), json!([{"action": "use"}]))])),
        };
        let p = odrl_policy(&rule);
        assert_eq!(p["@type"], "Set");
        assert_eq!(p["permission"], json!([{"action": "use"}]));
    }

    #[test]
    fn a_separate_contract_policy_gets_its_own_id() {
        let mut asset = MqttAsset::test();
        asset.spec.policy.contract =
            Some(PolicyRule { participant_ids: Some(vec!["BPNL000000000002".into()]), odrl: None });
        let plan = plan(&asset, &config(""), None).unwrap();
        assert_eq!(plan.policies.len(), 2);
        assert_eq!(plan.contract_definition.contract_policy_id, "dataspace-line-1-contract-policy");
        assert_eq!(plan.contract_definition.access_policy_id, "dataspace-line-1-access-policy");
    }

    #[test]
    fn unknown_profile_names_the_field_and_the_choices() {
        let mut asset = MqttAsset::test();
        asset.spec.connector = Some("nope".into());
        let e = plan(&asset, &config(""), None).unwrap_err();
        assert_eq!(e.reason(), "UnknownProfile");
        assert_eq!(
            e.to_string(),
            "spec.connector names connectors profile \"nope\", which the operator configuration does not define (defined: default, fx); set spec.connector to one of them or add the profile"
        );
    }

    #[test]
    fn oauth2_on_mosquitto_is_refused() {
        let mut asset = MqttAsset::test();
        asset.spec.auth.mode = AuthMode::Oauth2;
        let e = plan(&asset, &config(""), None).unwrap_err();
        assert_eq!(e.reason(), "AuthModeUnsupported");
        assert!(e.to_string().contains("does not offer auth mode oauth2 (it offers: usrpw)"), "{e}");
    }

    #[test]
    fn a_broker_restricted_by_configuration_refuses_the_other_mode() {
        let cfg = config(
            r#"  strict:
    type: rabbitmq
    adminUrl: https://rabbit.example.com:15671
    adminUsername: admin
    adminPassword: {env: RQ}
    publicUrls: {mqtt-tls: "mqtts://rabbit.example.com:8883"}
    authModes: [oauth2]
"#,
        );
        let mut asset = MqttAsset::test();
        asset.spec.broker = Some("strict".into());
        assert_eq!(plan(&asset, &cfg, None).unwrap_err().reason(), "AuthModeUnsupported");
    }

    #[test]
    fn a_missing_public_url_says_where_to_add_it() {
        let asset = MqttAsset::test().endpoint(EndpointType::MqttWss, None);
        let e = plan(&asset, &config(""), None).unwrap_err();
        assert_eq!(e.reason(), "NoEndpointUrl");
        assert!(e.to_string().contains("brokers.default.publicUrls.mqtt-wss"), "{e}");
        // spec.endpoint.url only picks one of the profile's public URLs (plan::allowed).
        let given = oauth2_on_rabbit().endpoint(EndpointType::MqttWss, Some("wss://rabbit.example.com/ws/"));
        assert_eq!(plan(&given, &config(""), Some(&token())).unwrap().base_url, "wss://rabbit.example.com/ws/");
        let elsewhere = MqttAsset::test().endpoint(EndpointType::MqttWss, Some("wss://edge.example.com/mqtt"));
        assert_eq!(plan(&elsewhere, &config(""), None).unwrap_err().reason(), "NotAllowed");
    }

    #[test]
    fn reserved_and_conflicting_properties_are_refused() {
        let mut asset = MqttAsset::test();
        asset.spec.private_properties = Some(BTreeMap::from([("dsp-mqtt.io/owner".to_owned(), json!("me"))]));
        assert_eq!(plan(&asset, &config(""), None).unwrap_err().reason(), "ReservedProperty");
        // Public properties too, in any spelling (plan::properties has them all).
        asset.spec.private_properties = None;
        asset.spec.properties =
            Some(BTreeMap::from([("https://w3id.org/edc/v0.0.1/ns/dsp-mqtt.io/owner".to_owned(), json!("me"))]));
        let e = plan(&asset, &config(""), None).unwrap_err();
        assert_eq!(e.reason(), "ReservedProperty");
        assert!(e.to_string().starts_with("spec.properties.https://w3id.org/edc/v0.0.1/ns/dsp-mqtt.io/owner: "), "{e}");
        asset.spec.private_properties = Some(BTreeMap::from([("name".to_owned(), json!("x"))]));
        asset.spec.properties = Some(BTreeMap::from([("name".to_owned(), json!("y"))]));
        assert_eq!(plan(&asset, &config(""), None).unwrap_err().reason(), "PropertyConflict");
    }

    #[test]
    fn topic_bytes_not_characters_are_bounded() {
        let mut asset = MqttAsset::test();
        // 40,000 characters, 80,000 bytes: the schema's character bound lets it through.
        asset.spec.topics = vec!["ä".repeat(40_000)];
        let e = plan(&asset, &config(""), None).unwrap_err();
        assert_eq!(e, PlanError::TopicTooLong { field: "spec.topics", index: 0, bytes: 80_000 });
        asset.spec.topics = vec!["a".repeat(TOPIC_FILTER_MAX_BYTES)];
        assert!(plan(&asset, &config(""), None).is_ok());
    }

    #[test]
    fn an_asterisk_in_a_level_is_refused_on_rabbitmq_only() {
        for topic in ["factory/*/temp", "factory/line-*/temp", "*", "a/b*"] {
            let mut asset = MqttAsset::test();
            asset.spec.broker = Some("rabbit".into());
            asset.spec.topics = vec!["factory/line-1/#".into(), topic.into()];
            let e = plan(&asset, &config(""), None).unwrap_err();
            assert_eq!(
                e,
                PlanError::TopicAsteriskUnsupported {
                    field: "spec.topics",
                    index: 1,
                    topic: topic.into(),
                    broker: "rabbit".into()
                }
            );
            assert_eq!(e.reason(), "TopicAsteriskUnsupported");
            assert!(e.to_string().contains("use a `+` level"), "{e}");
            // oauth2 mode too: the token's scopes use the same wildcard.
            asset.spec.auth.mode = AuthMode::Oauth2;
            assert_eq!(plan(&asset, &config(""), Some(&token())).unwrap_err().reason(), "TopicAsteriskUnsupported");
            // Mosquitto takes `*` literally.
            let mut mosquitto = MqttAsset::test();
            mosquitto.spec.topics = vec![topic.into()];
            assert!(plan(&mosquitto, &config(""), None).is_ok(), "{topic} on mosquitto");
        }
        let mut asset = MqttAsset::test();
        asset.spec.broker = Some("rabbit".into());
        asset.spec.topics = vec!["factory/+/temp".into(), "factory/#".into()];
        assert!(plan(&asset, &config(""), None).is_ok(), "MQTT's own wildcards are fine");
    }

    #[test]
    fn plans_are_deterministic() {
        let a = plan(&oauth2_on_rabbit(), &config(""), Some(&token())).unwrap();
        let b = plan(&oauth2_on_rabbit(), &config(""), Some(&token())).unwrap();
        assert_eq!(a, b);
    }
}
