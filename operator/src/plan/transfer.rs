//! The desired state of an `MqttTransfer`: one consumer's credentials, topic ACL and
//! DataAddress, derived from the transfer, its asset and the configuration.
//!
//! Names: identity (identity-provider client id or broker username)
//! `dsp-mqtt-transfer-<namespace>-<name>`; its secret in the secret store under the asset
//! connector's Vault folder with the alias `<identity>-secret`; the Kubernetes Secret
//! `spec.secretName` or the transfer's name.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{PlanError, check_topic_asterisks, check_topic_bytes, topics};
use crate::api::{AuthMode, MqttAsset, MqttTransfer, TransferState};
use crate::backends::broker::TokenRequirements;
use crate::backends::connector::mqtt_endpoint_type;
use crate::backends::identity::ClientDefinition;
use crate::backends::secrets::SecretLocation;
use crate::backends::{ExposeSecret, Owner, SecretString};
use crate::config::Config;

use super::asset::{self as asset_plan, AssetProfiles};

/// Kind name used in ownership markers.
pub const KIND: &str = "MqttTransfer";

/// `dsp-mqtt` namespace of ADR 012 (trailing slash).
pub const DSP_MQTT_NAMESPACE: &str = "https://w3id.org/dspace/2025/1/mqtt-pull/";
/// EDC's vocabulary.
pub const EDC_NAMESPACE: &str = "https://w3id.org/edc/v0.0.1/ns/";

/// What access the transfer should have now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Credentials enabled, DataAddress complete.
    Granted,
    /// Credentials disabled, sessions cut, no credentials in the Secret; can be resumed.
    Suspended,
    /// Everything revoked and removed for good.
    Revoked,
}

/// Why access is what it is (for phase and conditions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// `spec.state` says so.
    State(TransferState),
    /// `spec.expiresAt` passed.
    Expired,
}

/// The access a transfer's spec asks for at `now` (epoch seconds).
pub fn access(transfer: &MqttTransfer, now: i64) -> (Access, Cause) {
    let state = transfer.spec.state.unwrap_or_default();
    if state.is_final() {
        return (Access::Revoked, Cause::State(state));
    }
    if let Some(expires) = &transfer.spec.expires_at
        && expires.0.as_second() <= now
    {
        return (Access::Revoked, Cause::Expired);
    }
    match state {
        TransferState::Started => (Access::Granted, Cause::State(state)),
        _ => (Access::Suspended, Cause::State(state)),
    }
}

/// Everything a transfer should be.
#[derive(Clone, Debug, PartialEq)]
pub struct TransferPlan {
    /// Marker owner of every external object.
    pub owner: Owner,
    /// The asset's profiles (the transfer uses the same identity provider, store and broker).
    pub profiles: AssetProfiles,
    /// Auth mode (the asset's).
    pub mode: AuthMode,
    /// Client id / broker username.
    pub identity: String,
    /// The identity-provider client (`oauth2`).
    pub client: Option<ClientDefinition>,
    /// Topic filters the consumer may read.
    pub topics: Vec<String>,
    /// Where its secret (client secret or password) is kept.
    pub secret: SecretLocation,
    /// Name of the Kubernetes Secret with the DataAddress.
    pub secret_name: String,
    /// Broker URL consumers connect to.
    pub base_url: String,
    /// `mqttEndpointType` as the asset's connector spells it.
    pub endpoint_type: String,
    /// The operator's refresh endpoint (`oauth2`, when `refresh` is configured).
    pub refresh_endpoint: Option<String>,
    /// Audience of the consumer's tokens (`oauth2`).
    pub audience: Option<String>,
}

/// The transfer's identity name.
pub fn identity(transfer: &MqttTransfer) -> String {
    let namespace = transfer.metadata.namespace.as_deref().unwrap_or_default();
    let name = transfer.metadata.name.as_deref().unwrap_or_default();
    super::bounded(format!("dsp-mqtt-transfer-{namespace}-{name}"), super::MAX_IDENTITY_LEN)
}

/// The ownership marker of a transfer.
pub fn owner(transfer: &MqttTransfer, config: &Config) -> Owner {
    Owner {
        installation: config.installation().to_owned(),
        kind: KIND.into(),
        namespace: transfer.metadata.namespace.clone().unwrap_or_default(),
        name: transfer.metadata.name.clone().unwrap_or_default(),
    }
}

/// Plans a transfer of `asset`. `token` is what the broker needs in tokens for the transfer's
/// topics (`oauth2`).
pub fn plan(
    transfer: &MqttTransfer,
    asset: &MqttAsset,
    config: &Config,
    token: Option<&TokenRequirements>,
) -> Result<TransferPlan, PlanError> {
    let profiles = asset_plan::resolve_profiles(&asset.spec, config)?;
    // The asset's rules hold for its transfers: one it may no longer offer grants nothing.
    super::allowed::check(asset, &profiles, config)?;
    check_consumer(transfer, asset)?;
    let asset_topics = &asset.spec.topics;
    let topics = transfer.spec.topics.clone().unwrap_or_else(|| asset_topics.clone());
    check_topic_bytes("spec.topics", &topics)?;
    let broker_type = config.brokers[&profiles.broker].broker_type;
    // The asset's `+` admits a transfer's `a/x*y/b`: checked here too, not only on the asset.
    check_topic_asterisks("spec.topics", &topics, &profiles.broker, broker_type)?;
    let outside = topics::outside(&topics, asset_topics);
    if !outside.is_empty() {
        return Err(PlanError::TopicsOutsideAsset {
            topics: outside.into_iter().map(str::to_owned).collect(),
            asset: asset.metadata.name.clone().unwrap_or_default(),
        });
    }
    let owner = owner(transfer, config);
    let identity = identity(transfer);
    let connector = &config.connectors[&profiles.connector];
    let broker = &config.brokers[&profiles.broker];
    let endpoint = asset.spec.endpoint.endpoint_type;
    let base_url = match &asset.spec.endpoint.url {
        Some(url) => url.clone(),
        None => broker.public_urls.get(&endpoint).map(|u| u.to_string()).ok_or_else(|| PlanError::NoEndpointUrl {
            broker: profiles.broker.clone(),
            endpoint_type: endpoint.as_str(),
        })?,
    };
    let mode = asset.spec.auth.mode;
    let (client, refresh_endpoint) = match mode {
        AuthMode::Oauth2 => {
            let idp = &config.identity_providers[profiles.identity_provider.as_ref().expect("resolved for oauth2")];
            let lifetime = transfer
                .spec
                .token_lifetime_seconds
                .and_then(|s| u32::try_from(s).ok())
                .unwrap_or(idp.default_token_lifetime_seconds);
            let client = ClientDefinition {
                client_id: identity.clone(),
                description: format!(
                    "MQTT transfer {} of asset {} to {} (managed by mqtt-dsp-operator)",
                    owner.marker(),
                    transfer.spec.asset_ref.name,
                    transfer.spec.consumer.participant_id
                ),
                enabled: true,
                access_token_lifespan_seconds: Some(lifetime),
                // Refresh tokens are the operator's own (see `refresh`): a Keycloak one would be
                // useless to the consumer (the client is confidential) and costs a stored user
                // session per grant.
                refresh_tokens_for_client_credentials: false,
                audience: token.map(|t| t.audience.clone()),
                claims: token.map(|t| t.claims.clone()).unwrap_or_default(),
                owner: owner.clone(),
            };
            (Some(client), config.refresh.as_ref().map(|r| r.public_url.to_string()))
        }
        AuthMode::Usrpw => (None, None),
    };
    Ok(TransferPlan {
        secret: SecretLocation { folder: connector.vault_folder.clone(), alias: format!("{identity}-secret") },
        secret_name: transfer.spec.secret_name.clone().unwrap_or_else(|| owner.name.clone()),
        endpoint_type: mqtt_endpoint_type(connector.endpoint_type_spelling, endpoint, mode),
        audience: token.map(|t| t.audience.clone()),
        owner,
        profiles,
        mode,
        identity,
        client,
        topics,
        base_url,
        refresh_endpoint,
    })
}

/// Where the asset's access policy (and a separate contract policy) lists participants, the
/// transfer's consumer must be one of them: a transfer mirrors a DSP transfer process, which a
/// participant outside the policy could never have reached. Raw ODRL is not interpreted (the
/// connector enforced it at negotiation).
pub fn check_consumer(transfer: &MqttTransfer, asset: &MqttAsset) -> Result<(), PlanError> {
    let participant = &transfer.spec.consumer.participant_id;
    let policies = [("access", Some(&asset.spec.policy.access)), ("contract", asset.spec.policy.contract.as_ref())];
    for (policy, rule) in policies {
        if let Some(allowed) = rule.and_then(|r| r.participant_ids.as_ref())
            && !allowed.contains(participant)
        {
            return Err(PlanError::ConsumerNotAllowed {
                participant: participant.clone(),
                asset: asset.metadata.name.clone().unwrap_or_default(),
                policy,
                allowed: allowed.clone(),
            });
        }
    }
    Ok(())
}

/// Credentials that go into the DataAddress (never into status). Debug never shows them.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// A JWT and how to renew it.
    Token {
        /// The access token (`dsp-mqtt:authorization`).
        access_token: SecretString,
        /// The operator's refresh token for this transfer, when the refresh endpoint is
        /// configured.
        refresh_token: Option<SecretString>,
        /// Seconds the access token lives (`dsp-mqtt:expiresIn`).
        expires_in: u64,
        /// When it expires (Unix seconds; `dsp-mqtt:expiresAt`, RFC 3339).
        expires_at: i64,
    },
    /// A broker username and password.
    Password {
        /// The password.
        password: SecretString,
    },
}

/// Names of the DataAddress properties, ADR 012 spelling.
pub mod keys {
    /// Broker URL.
    pub const BASE_URL: &str = "dsp-mqtt:baseUrl";
    /// The single topic filter.
    pub const TOPIC: &str = "dsp-mqtt:topic";
    /// All topic filters, when there are several (our extension; documented).
    pub const TOPICS: &str = "dsp-mqtt:topics";
    /// JWT for the CONNECT password.
    pub const AUTHORIZATION: &str = "dsp-mqtt:authorization";
    /// Refresh token.
    pub const REFRESH_TOKEN: &str = "dsp-mqtt:refreshToken";
    /// Where to refresh.
    pub const REFRESH_ENDPOINT: &str = "dsp-mqtt:refreshEndpoint";
    /// Seconds the JWT lives, as a string.
    pub const EXPIRES_IN: &str = "dsp-mqtt:expiresIn";
    /// Audience of refreshed tokens.
    pub const REFRESH_AUDIENCE: &str = "dsp-mqtt:refreshAudience";
    /// When the access token expires, RFC 3339 (our extension: `expiresIn` alone is misread
    /// when the DataAddress is read later than it was issued).
    pub const EXPIRES_AT: &str = "dsp-mqtt:expiresAt";
    /// Broker username (`usrpw`; the reference connector's name, and in `oauth2` mode the name to
    /// connect with).
    pub const USERNAME: &str = "dsp-mqtt:username";
    /// Broker username (`usrpw`), under the full ADR text's name
    /// (`https://w3id.org/dspace/2025/1/mqtt-pull/user`); same value as [`USERNAME`].
    pub const USER: &str = "dsp-mqtt:user";
    /// Broker password (`usrpw`).
    pub const PASSWORD: &str = "dsp-mqtt:password";
}

/// Keys whose values are credentials: left out of `status.dataAddress`.
pub const SECRET_KEYS: [&str; 3] = [keys::AUTHORIZATION, keys::REFRESH_TOKEN, keys::PASSWORD];

/// The DataAddress (EDR) of ADR 012 for this plan; without credentials when `credentials` is
/// `None` (what status shows, and what a suspended transfer's Secret keeps).
pub fn data_address(plan: &TransferPlan, credentials: Option<&Credentials>) -> Map<String, Value> {
    let mut da = Map::new();
    da.insert("@context".into(), json!({"dsp-mqtt": DSP_MQTT_NAMESPACE, "@vocab": EDC_NAMESPACE}));
    da.insert("@type".into(), json!("DataAddress"));
    da.insert("flowType".into(), json!("PULL"));
    da.insert(keys::BASE_URL.into(), json!(plan.base_url));
    da.insert("mqttEndpointType".into(), json!(plan.endpoint_type));
    match plan.topics.as_slice() {
        [one] => drop(da.insert(keys::TOPIC.into(), json!(one))),
        many => drop(da.insert(keys::TOPICS.into(), json!(many))),
    }
    // The MQTT username: needed in usrpw mode; in oauth2 mode the name to connect with, so the
    // broker's connection list can tell this transfer's sessions apart (brokers that take the
    // identity from the token ignore it).
    da.insert(keys::USERNAME.into(), json!(plan.identity));
    match plan.mode {
        AuthMode::Oauth2 => {
            if let Some(url) = &plan.refresh_endpoint {
                da.insert(keys::REFRESH_ENDPOINT.into(), json!(url));
                if let Some(audience) = &plan.audience {
                    da.insert(keys::REFRESH_AUDIENCE.into(), json!(audience));
                }
            }
            if let Some(Credentials::Token { access_token, refresh_token, expires_in, expires_at }) = credentials {
                da.insert(keys::AUTHORIZATION.into(), json!(access_token.expose_secret()));
                if let Some(refresh) = refresh_token {
                    da.insert(keys::REFRESH_TOKEN.into(), json!(refresh.expose_secret()));
                }
                da.insert(keys::EXPIRES_IN.into(), json!(expires_in.to_string()));
                if let Ok(at) = k8s_openapi::jiff::Timestamp::from_second(*expires_at) {
                    da.insert(keys::EXPIRES_AT.into(), json!(at.to_string()));
                }
            }
        }
        AuthMode::Usrpw => {
            // ADR 012's own name for it, next to the reference connector's.
            da.insert(keys::USER.into(), json!(plan.identity));
            if let Some(Credentials::Password { password }) = credentials {
                da.insert(keys::PASSWORD.into(), json!(password.expose_secret()));
            }
        }
    }
    da
}

/// The Secret's data: `dataAddress.json` plus one key per property (prefix dropped), so a pod
/// can mount single values (`baseUrl`, `topic`, `authorization`, `username`, `password`, …).
pub fn secret_data(data_address: &Map<String, Value>) -> BTreeMap<String, String> {
    let mut data = BTreeMap::new();
    data.insert("dataAddress.json".to_owned(), serde_json::to_string_pretty(data_address).expect("JSON"));
    for (key, value) in data_address {
        if key.starts_with('@') {
            continue;
        }
        let name = key.strip_prefix("dsp-mqtt:").unwrap_or(key);
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        data.insert(name.to_owned(), text);
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{EndpointType, MqttTransfer, PolicyRule};
    use crate::backends::identity::HardcodedClaim;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn config() -> Config {
        Config::parse(
            r#"
refresh:
  publicUrl: https://mqtt-dsp.example.com/refresh
connectors:
  default:
    managementUrl: https://edc.example.com/management
    apiKey: {env: EDC_KEY}
    vaultFolder: edc
identityProviders:
  default:
    type: keycloak
    adminUrl: https://kc.example.com
    realm: dataspace
    clientId: operator
    clientSecret: {env: KC}
brokers:
  default:
    type: rabbitmq
    adminUrl: https://rabbit.example.com:15671
    adminUsername: admin
    adminPassword: {env: RQ}
    publicUrls: {mqtt-wss: "wss://rabbit.example.com/ws", mqtt-tls: "mqtts://rabbit.example.com:8883"}
secretStores:
  default:
    type: vault
    url: https://vault.example.com
    auth: {token: {env: VT}}
"#,
        )
        .map(|mut c| {
            c.operator_namespace = "dataspace".into();
            c
        })
        .unwrap()
    }

    fn asset(mode: AuthMode) -> MqttAsset {
        let mut a = MqttAsset::test().endpoint(EndpointType::MqttWss, None);
        a.spec.auth.mode = mode;
        a.spec.topics = vec!["factory/line-1/#".into()];
        a
    }

    fn token() -> TokenRequirements {
        TokenRequirements {
            audience: "rabbitmq".into(),
            claims: vec![HardcodedClaim { name: "s".into(), value: json!(["x"]) }],
        }
    }

    #[test]
    fn a_long_identity_is_cut_to_keycloaks_limit_with_a_hash_never_refused() {
        let mut t = transfer();
        t.metadata.namespace = Some("n".repeat(63));
        t.metadata.name = Some("t".repeat(253));
        let long = identity(&t);
        assert_eq!(long.len(), 255 - "service-account-".len(), "{long}");
        assert!(long.starts_with(&format!("dsp-mqtt-transfer-{}-ttt", "n".repeat(63))), "{long}");
        assert_eq!(identity(&t), long, "deterministic");
        t.metadata.name = Some(format!("{}u", "t".repeat(252)));
        let other = identity(&t);
        assert_eq!(other.len(), long.len());
        assert_ne!(other, long, "two long names that share their start stay apart");
        t.metadata.name = Some("t-1".into());
        assert_eq!(identity(&t), format!("dsp-mqtt-transfer-{}-t-1", "n".repeat(63)), "short names are kept whole");
    }

    fn transfer() -> MqttTransfer {
        let mut t = MqttTransfer::test();
        t.metadata.name = Some("line-1-consumer-a".into());
        t
    }

    #[test]
    fn access_follows_state_and_expiry() {
        let now = 1_800_000_000;
        assert_eq!(access(&transfer(), now), (Access::Granted, Cause::State(TransferState::Started)));
        assert_eq!(access(&transfer().suspended(), now).0, Access::Suspended);
        assert_eq!(access(&transfer().state(TransferState::Terminated), now).0, Access::Revoked);
        assert_eq!(access(&transfer().state(TransferState::Completed), now).0, Access::Revoked);
        let mut expiring = transfer();
        expiring.spec.expires_at = Some(Time(k8s_openapi::jiff::Timestamp::from_second(now).unwrap()));
        assert_eq!(access(&expiring, now - 1).0, Access::Granted);
        assert_eq!(access(&expiring, now), (Access::Revoked, Cause::Expired));
        // Expiry also ends a suspended transfer for good.
        let mut expired_suspended = expiring.suspended();
        expired_suspended.spec.expires_at = Some(Time(k8s_openapi::jiff::Timestamp::from_second(now - 5).unwrap()));
        assert_eq!(access(&expired_suspended, now).0, Access::Revoked);
    }

    #[test]
    fn topics_default_to_the_asset_and_must_lie_within_it() {
        let p = plan(&transfer(), &asset(AuthMode::Usrpw), &config(), None).unwrap();
        assert_eq!(p.topics, vec!["factory/line-1/#"]);
        let mut narrow = transfer();
        narrow.spec.topics = Some(vec!["factory/line-1/temperature".into()]);
        assert_eq!(
            plan(&narrow, &asset(AuthMode::Usrpw), &config(), None).unwrap().topics,
            vec!["factory/line-1/temperature"]
        );
        let mut wide = transfer();
        wide.spec.topics = Some(vec!["factory/line-1/temperature".into(), "factory/#".into()]);
        let e = plan(&wide, &asset(AuthMode::Usrpw), &config(), None).unwrap_err();
        assert_eq!(e.reason(), "TopicsOutsideAsset");
        assert!(e.to_string().contains("factory/#") && !e.to_string().contains("temperature"), "{e}");
    }

    #[test]
    fn the_consumer_must_be_among_the_participants_the_asset_lists() {
        let a = asset(AuthMode::Usrpw);
        assert_eq!(
            a.spec.policy.access.participant_ids.as_deref(),
            Some(&["did:web:consumer-a.example.com".into()][..])
        );
        assert!(plan(&transfer(), &a, &config(), None).is_ok(), "consumer-a is listed");
        let stranger = transfer().consumer("did:web:consumer-z.example.com");
        let e = plan(&stranger, &a, &config(), None).unwrap_err();
        assert_eq!(e.reason(), "ConsumerNotAllowed");
        assert_eq!(
            e.to_string(),
            "spec.consumer.participantId \"did:web:consumer-z.example.com\" is not among the participants MqttAsset \"line-1\" \
             permits in spec.policy.access.participantIds (did:web:consumer-a.example.com); nothing is provisioned for it: \
             add the participant to the asset's policy, or create an MqttTransfer for a permitted participant (spec.consumer is immutable)"
        );
        // A separate contract policy that lists participants counts too.
        let mut contract = asset(AuthMode::Oauth2);
        contract.spec.policy.contract =
            Some(PolicyRule { participant_ids: Some(vec!["BPNL000000000002".into()]), odrl: None });
        let e = plan(&transfer(), &contract, &config(), Some(&token())).unwrap_err();
        assert!(matches!(e, PlanError::ConsumerNotAllowed { policy: "contract", .. }), "{e:?}");
        // Raw ODRL is the connector's to enforce: not interpreted here.
        let mut odrl = asset(AuthMode::Usrpw);
        odrl.spec.policy.access = PolicyRule { participant_ids: None, odrl: Some(BTreeMap::new()) };
        assert!(plan(&stranger, &odrl, &config(), None).is_ok());
    }

    #[test]
    fn an_asterisk_within_the_assets_plus_is_refused_on_rabbitmq() {
        let mut a = asset(AuthMode::Usrpw);
        a.spec.topics = vec!["factory/+/temp".into()];
        let mut t = transfer();
        t.spec.topics = Some(vec!["factory/line-*/temp".into()]);
        let e = plan(&t, &a, &config(), None).unwrap_err();
        assert_eq!(e.reason(), "TopicAsteriskUnsupported");
        assert!(e.to_string().starts_with("spec.topics[0] \"factory/line-*/temp\" contains `*`"), "{e}");
        t.spec.topics = Some(vec!["factory/line-1/temp".into()]);
        assert!(plan(&t, &a, &config(), None).is_ok());
    }

    #[test]
    fn oauth2_plan_has_a_client_without_keycloak_refresh_tokens_and_points_at_our_refresh_endpoint() {
        let mut t = transfer();
        t.spec.token_lifetime_seconds = Some(120);
        let p = plan(&t, &asset(AuthMode::Oauth2), &config(), Some(&token())).unwrap();
        let client = p.client.as_ref().unwrap();
        assert_eq!(client.client_id, "dsp-mqtt-transfer-dataspace-line-1-consumer-a");
        assert!(!client.refresh_tokens_for_client_credentials, "the refresh token is the operator's own");
        assert_eq!(client.access_token_lifespan_seconds, Some(120));
        assert_eq!(client.audience.as_deref(), Some("rabbitmq"));
        assert_eq!(
            p.secret,
            SecretLocation { folder: Some("edc".into()), alias: format!("{}-secret", client.client_id) }
        );
        assert_eq!(p.secret_name, "line-1-consumer-a");
        assert_eq!(p.refresh_endpoint.as_deref(), Some("https://mqtt-dsp.example.com/refresh"));
        let mut without = config();
        without.refresh = None;
        let p = plan(&t, &asset(AuthMode::Oauth2), &without, Some(&token())).unwrap();
        assert_eq!(p.refresh_endpoint, None, "no refresh endpoint configured: none in the DataAddress");
        let default_lifetime = plan(&transfer(), &asset(AuthMode::Oauth2), &config(), Some(&token())).unwrap();
        assert_eq!(default_lifetime.client.unwrap().access_token_lifespan_seconds, Some(300));
    }

    /// The ADR 012 EDR sample (specs/factoryx-edc-mqtt/mqtt-edr-dataaddress-sample.json) with
    /// our values: same keys and namespace, `flowType: PULL`, `expiresIn` as a string.
    #[test]
    fn oauth2_data_address_matches_the_adr_shape() {
        let p = plan(&transfer(), &asset(AuthMode::Oauth2), &config(), Some(&token())).unwrap();
        let credentials = Credentials::Token {
            access_token: "eyJ.access".into(),
            refresh_token: Some("v1.abc.def".into()),
            expires_in: 300,
            expires_at: 1_800_000_000,
        };
        let da = Value::Object(data_address(&p, Some(&credentials)));
        let golden = json!({
            "@context": {"dsp-mqtt": "https://w3id.org/dspace/2025/1/mqtt-pull/", "@vocab": "https://w3id.org/edc/v0.0.1/ns/"},
            "@type": "DataAddress",
            "flowType": "PULL",
            "dsp-mqtt:baseUrl": "wss://rabbit.example.com/ws",
            "mqttEndpointType": "mqtt-wss",
            "dsp-mqtt:topic": "factory/line-1/#",
            "dsp-mqtt:authorization": "eyJ.access",
            "dsp-mqtt:refreshToken": "v1.abc.def",
            "dsp-mqtt:refreshEndpoint": "https://mqtt-dsp.example.com/refresh",
            "dsp-mqtt:expiresIn": "300",
            "dsp-mqtt:expiresAt": "2027-01-15T08:00:00Z",
            "dsp-mqtt:refreshAudience": "rabbitmq",
            "dsp-mqtt:username": "dsp-mqtt-transfer-dataspace-line-1-consumer-a",
        });
        assert_eq!(da, golden, "no dsp-mqtt:user in oauth2 mode: the ADR names it for usrpw");
        let sample: Value =
            serde_json::from_str(include_str!("../../testdata/mqtt-edr-dataaddress-sample.json")).unwrap();
        for key in [
            "@type",
            "flowType",
            "dsp-mqtt:authorization",
            "dsp-mqtt:refreshToken",
            "dsp-mqtt:refreshEndpoint",
            "dsp-mqtt:expiresIn",
            "dsp-mqtt:refreshAudience",
        ] {
            assert!(sample.get(key).is_some() && da.get(key).is_some(), "{key} in both");
        }
        assert_eq!(sample["@context"]["dsp-mqtt"], da["@context"]["dsp-mqtt"]);
        assert_eq!(sample["@context"]["@vocab"], da["@context"]["@vocab"]);
        assert_eq!(sample["flowType"], da["flowType"]);
        assert!(sample["dsp-mqtt:expiresIn"].is_string() && da["dsp-mqtt:expiresIn"].is_string());
    }

    #[test]
    fn usrpw_data_address_and_the_secret_free_view() {
        let mut t = transfer();
        t.spec.topics = Some(vec!["factory/line-1/a".into(), "factory/line-1/b".into()]);
        let p = plan(&t, &asset(AuthMode::Usrpw), &config(), None).unwrap();
        let full = data_address(&p, Some(&Credentials::Password { password: SecretString::from("pw-123") }));
        let golden = json!({
            "@context": {"dsp-mqtt": "https://w3id.org/dspace/2025/1/mqtt-pull/", "@vocab": "https://w3id.org/edc/v0.0.1/ns/"},
            "@type": "DataAddress",
            "flowType": "PULL",
            "dsp-mqtt:baseUrl": "wss://rabbit.example.com/ws",
            "mqttEndpointType": "mqtt-wss",
            "dsp-mqtt:topics": ["factory/line-1/a", "factory/line-1/b"],
            "dsp-mqtt:username": "dsp-mqtt-transfer-dataspace-line-1-consumer-a",
            "dsp-mqtt:user": "dsp-mqtt-transfer-dataspace-line-1-consumer-a",
            "dsp-mqtt:password": "pw-123",
        });
        assert_eq!(Value::Object(full.clone()), golden);
        // Expanded, `dsp-mqtt:user` is the ADR's property IRI.
        assert_eq!(
            format!("{DSP_MQTT_NAMESPACE}{}", keys::USER.strip_prefix("dsp-mqtt:").unwrap()),
            "https://w3id.org/dspace/2025/1/mqtt-pull/user"
        );
        let view = data_address(&p, None);
        assert!(SECRET_KEYS.iter().all(|k| !view.contains_key(*k)));
        assert_eq!(view[keys::USERNAME], full[keys::USERNAME]);
        assert_eq!(view[keys::USER], full[keys::USER]);
        let data = secret_data(&full);
        assert_eq!(data["password"], "pw-123");
        assert_eq!(data["user"], data["username"]);
        assert_eq!(data["baseUrl"], "wss://rabbit.example.com/ws");
        assert_eq!(data["topics"], r#"["factory/line-1/a","factory/line-1/b"]"#);
        let parsed: Value = serde_json::from_str(&data["dataAddress.json"]).unwrap();
        assert_eq!(parsed, Value::Object(full));
    }
}
