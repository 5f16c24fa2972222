//! Per-profile allowlists (`allowed` in each profile of the operator configuration): which
//! namespaces may use a profile, which topics an asset there may offer on a broker, whether it may
//! give raw ODRL or publish an open offer, and that `spec.endpoint.url` is one of the broker's
//! public URLs. Checked before anything is provisioned; a refusal is [`PlanError::NotAllowed`].
//!
//! Defaults are safe: a profile without `allowed` serves only the operator's own namespace
//! ([`Config::operator_namespace`]); a field left out of `allowed` grants what it governs to the
//! operator's own namespace only; a list given is taken as written.

use url::Url;

use super::asset::AssetProfiles;
use super::{PlanError, topics};
use crate::api::MqttAsset;
use crate::config::{ChosenNames, Config, NAMESPACE_PLACEHOLDER};

/// Checks an asset against the `allowed` blocks of the profiles it resolved to.
pub fn check(asset: &MqttAsset, profiles: &AssetProfiles, config: &Config) -> Result<(), PlanError> {
    let namespace = asset.metadata.namespace.as_deref().unwrap_or_default();
    let own = config.operator_namespace.as_str();
    let connector = &config.connectors[&profiles.connector];
    let connector_allowed = connector.allowed.clone().unwrap_or_default();
    let broker = &config.brokers[&profiles.broker];
    let broker_allowed = broker.allowed.clone().unwrap_or_default();

    let mut served: Vec<(&str, &str, bool, Option<&Vec<String>>)> = vec![(
        "connector",
        profiles.connector.as_str(),
        connector.allowed.is_some(),
        connector_allowed.namespaces.as_ref(),
    )];
    if let Some(idp) = &profiles.identity_provider {
        let p = &config.identity_providers[idp];
        served.push((
            "identity provider",
            idp.as_str(),
            p.allowed.is_some(),
            p.allowed.as_ref().and_then(|a| a.namespaces.as_ref()),
        ));
    }
    let store = &config.secret_stores[&profiles.secret_store];
    served.push((
        "secret store",
        profiles.secret_store.as_str(),
        store.allowed.is_some(),
        store.allowed.as_ref().and_then(|a| a.namespaces.as_ref()),
    ));
    served.push(("broker", profiles.broker.as_str(), broker.allowed.is_some(), broker_allowed.namespaces.as_ref()));
    for (kind, profile, has_block, namespaces) in served {
        let serves = match namespaces {
            Some(list) => list.iter().any(|n| n == "*" || n == namespace),
            None => namespace == own,
        };
        if !serves {
            let rule = match (has_block, namespaces) {
                (_, Some(list)) => format!("allowed.namespaces: [{}]", list.join(", ")),
                (false, None) => format!("no allowed block: only the operator's namespace \"{own}\""),
                (true, None) => format!("allowed.namespaces is not set: only the operator's namespace \"{own}\""),
            };
            return Err(not_allowed(format!(
                "{kind} profile \"{profile}\" does not serve namespace \"{namespace}\" ({rule}); choose a profile that serves it, or add the namespace to {}.{profile}.allowed.namespaces in the operator configuration",
                section(kind)
            )));
        }
    }

    // The endpoint consumers are given: only the broker's own public URLs.
    if let Some(given) = &asset.spec.endpoint.url {
        let parsed = Url::parse(given).ok();
        if !broker.public_urls.values().any(|u| parsed.as_ref().is_some_and(|p| same_endpoint(p, u))) {
            return Err(not_allowed(format!(
                "spec.endpoint.url \"{given}\" is not one of broker profile \"{}\"'s publicUrls ({}); remove spec.endpoint.url to use the profile's URL for the endpoint type, or add the URL to brokers.{}.publicUrls",
                profiles.broker,
                broker.public_urls.iter().map(|(t, u)| format!("{}: {u}", t.as_str())).collect::<Vec<_>>().join(", "),
                profiles.broker,
            )));
        }
    }

    // Topics.
    match &broker_allowed.topic_prefixes {
        Some(prefixes) => {
            let prefixes: Vec<String> = prefixes.iter().map(|p| p.replace(NAMESPACE_PLACEHOLDER, namespace)).collect();
            let outside = topics::outside(&asset.spec.topics, &prefixes);
            if let Some(first) = outside.first() {
                let index = asset.spec.topics.iter().position(|t| t == first).unwrap_or_default();
                return Err(not_allowed(format!(
                    "spec.topics[{index}] \"{first}\" is not within the topic prefixes broker profile \"{}\" allows namespace \"{namespace}\" (allowed.topicPrefixes: [{}]); offer topics within them",
                    profiles.broker,
                    prefixes.join(", "),
                )));
            }
        }
        None if namespace != own => {
            return Err(not_allowed(format!(
                "broker profile \"{}\" allows namespace \"{namespace}\" no topics (allowed.topicPrefixes is not set: only the operator's namespace \"{own}\" may offer any topic); add brokers.{}.allowed.topicPrefixes (e.g. \"tenants/{{namespace}}/#\") to the operator configuration",
                profiles.broker, profiles.broker
            )));
        }
        None => {}
    }

    // Names the spec chooses itself.
    let auth = &asset.spec.auth;
    let client_rule = match &profiles.identity_provider {
        Some(idp) => {
            let rule = config.identity_providers[idp].allowed.as_ref().and_then(|a| a.chosen_names);
            ("identity provider", idp.as_str(), rule)
        }
        None => ("broker", profiles.broker.as_str(), broker_allowed.chosen_names),
    };
    let store_rule = store.allowed.as_ref().and_then(|a| a.chosen_names);
    let chosen = [
        (
            "spec.assetId",
            asset.spec.asset_id.as_ref(),
            ("connector", profiles.connector.as_str(), connector_allowed.chosen_names),
        ),
        ("spec.auth.clientId", auth.client_id.as_ref(), client_rule),
        (
            "spec.auth.secretAlias",
            auth.secret_alias.as_ref(),
            ("secret store", profiles.secret_store.as_str(), store_rule),
        ),
    ];
    for (field, name, (kind, profile, rule)) in chosen {
        let Some(name) = name else { continue };
        let effective = rule.unwrap_or(if namespace == own { ChosenNames::Any } else { ChosenNames::Prefixed });
        let written = match rule {
            Some(r) => format!("allowed.chosenNames: {}", chosen_names(r)),
            None => format!("allowed.chosenNames is not set: prefixed outside the operator's namespace \"{own}\""),
        };
        let prefix = format!("{namespace}.");
        match effective {
            ChosenNames::Any => {}
            ChosenNames::Prefixed if name.starts_with(&prefix) && name.len() > prefix.len() => {}
            ChosenNames::Prefixed => {
                return Err(not_allowed(format!(
                    "{field} \"{name}\" does not start with \"{prefix}\", the prefix {kind} profile \"{profile}\" requires of names chosen in namespace \"{namespace}\" ({written}); name it \"{prefix}…\" or remove {field} to use the generated name"
                )));
            }
            ChosenNames::Refused => {
                return Err(not_allowed(format!(
                    "{field}: {kind} profile \"{profile}\" does not let namespace \"{namespace}\" choose names ({written}); remove {field} to use the generated name"
                )));
            }
        }
    }

    // Policies.
    let grant = |flag: Option<bool>| flag.unwrap_or(namespace == own);
    let rule = |name: &str, flag: Option<bool>| match flag {
        Some(v) => format!("allowed.{name}: {v}"),
        None => format!("allowed.{name} is not set: only in the operator's namespace \"{own}\""),
    };
    let policy = &asset.spec.policy;
    let raw = [("access", Some(&policy.access)), ("contract", policy.contract.as_ref())]
        .into_iter()
        .find_map(|(which, rule)| rule.filter(|r| r.odrl.is_some()).map(|_| which));
    if let Some(which) = raw
        && !grant(connector_allowed.raw_odrl)
    {
        return Err(not_allowed(format!(
            "spec.policy.{which}.odrl: connector profile \"{}\" does not allow raw ODRL in namespace \"{namespace}\" ({}); use participantIds instead",
            profiles.connector,
            rule("rawOdrl", connector_allowed.raw_odrl)
        )));
    }
    let open = policy.access.odrl.is_none() && policy.access.participant_ids.as_ref().is_none_or(|p| p.is_empty());
    if open && !grant(connector_allowed.open_offers) {
        return Err(not_allowed(format!(
            "spec.policy.access lists no participantIds, an offer open to every participant, which connector profile \"{}\" does not allow in namespace \"{namespace}\" ({}); list the participants in spec.policy.access.participantIds",
            profiles.connector,
            rule("openOffers", connector_allowed.open_offers)
        )));
    }
    Ok(())
}

fn chosen_names(rule: ChosenNames) -> &'static str {
    match rule {
        ChosenNames::Prefixed => "prefixed",
        ChosenNames::Refused => "refused",
        ChosenNames::Any => "any",
    }
}

fn not_allowed(detail: String) -> PlanError {
    PlanError::NotAllowed { detail }
}

fn section(kind: &str) -> &'static str {
    match kind {
        "connector" => "connectors",
        "identity provider" => "identityProviders",
        "secret store" => "secretStores",
        _ => "brokers",
    }
}

/// One endpoint: scheme, host, port (default written or not), path up to a trailing slash.
fn same_endpoint(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str().map(str::to_ascii_lowercase) == b.host_str().map(str::to_ascii_lowercase)
        && a.port_or_known_default() == b.port_or_known_default()
        && a.path().trim_end_matches('/') == b.path().trim_end_matches('/')
        && a.query() == b.query()
        && a.username() == b.username()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::super::asset::{plan, resolve_profiles};
    use super::*;
    use crate::api::{AuthMode, EndpointType, MqttTransfer, PolicyRule};

    /// Profiles `default` everywhere, plus broker `tenants`; `allowed` blocks as given.
    fn config(connector: &str, broker: &str, tenants: &str) -> Config {
        let block = |b: &str| if b.is_empty() { String::new() } else { format!("\n    allowed: {b}") };
        let mut c = Config::parse(&format!(
            r#"
connectors:
  default:
    managementUrl: https://edc.example.com/management
    apiKey: {{env: K}}{connector}
identityProviders:
  default:
    type: keycloak
    adminUrl: https://kc.example.com
    realm: dataspace
    clientId: operator
    clientSecret: {{env: KC}}
    allowed: {{namespaces: [team-a, dataspace]}}
secretStores:
  default:
    type: vault
    url: https://vault.example.com
    auth: {{token: {{env: VT}}}}
    allowed: {{namespaces: ["*"]}}
brokers:
  default:
    type: mosquitto
    adminUrl: mqtts://mosquitto.example.com:8883
    adminUsername: admin
    adminPassword: {{env: MQ}}
    publicUrls: {{mqtt-tls: "mqtts://mqtt.example.com:8883"}}{broker}
  tenants:
    type: rabbitmq
    adminUrl: https://rabbit.example.com:15671
    adminUsername: admin
    adminPassword: {{env: RQ}}
    publicUrls: {{mqtt-tls: "mqtts://rabbit.example.com:8883", mqtt-wss: "wss://rabbit.example.com/ws"}}{tenants}
"#,
            connector = block(connector),
            broker = block(broker),
            tenants = block(tenants),
        ))
        .unwrap_or_else(|p| panic!("{p:#?}"));
        c.operator_namespace = "mqtt-system".into();
        c
    }

    const OPEN: &str = r#"{namespaces: ["*"], rawOdrl: true, openOffers: true}"#;
    const BROKER_OPEN: &str = r##"{namespaces: ["*"], topicPrefixes: ["#"]}"##;

    fn asset_in(namespace: &str) -> MqttAsset {
        let mut a = MqttAsset::test();
        a.metadata.namespace = Some(namespace.into());
        a
    }

    fn check_asset(asset: &MqttAsset, config: &Config) -> Result<(), PlanError> {
        let profiles = resolve_profiles(&asset.spec, config).expect("profiles resolve");
        check(asset, &profiles, config)
    }

    fn refusal(asset: &MqttAsset, config: &Config) -> String {
        let e = check_asset(asset, config).expect_err("refused");
        assert_eq!(e.reason(), "NotAllowed");
        e.to_string()
    }

    #[test]
    fn without_an_allowed_block_a_profile_serves_only_the_operators_namespace() {
        let cfg = config("", "", "");
        check_asset(&asset_in("mqtt-system"), &cfg).expect("own namespace: today's behaviour");
        let e = refusal(&asset_in("team-b"), &cfg);
        assert!(
            e.starts_with(
                "connector profile \"default\" does not serve namespace \"team-b\" (no allowed block: only the operator's namespace \"mqtt-system\")"
            ),
            "{e}"
        );
        // The whole plan refuses, before anything else is looked at.
        assert_eq!(plan(&asset_in("team-b"), &cfg, None).unwrap_err().reason(), "NotAllowed");
    }

    #[test]
    fn namespaces_by_name_and_star() {
        let cfg = config(OPEN, r##"{namespaces: [team-a], topicPrefixes: ["#"]}"##, "");
        check_asset(&asset_in("team-a"), &cfg).unwrap();
        let e = refusal(&asset_in("team-b"), &cfg);
        assert!(
            e.starts_with(
                "broker profile \"default\" does not serve namespace \"team-b\" (allowed.namespaces: [team-a])"
            ),
            "{e}"
        );
        assert!(e.contains("brokers.default.allowed.namespaces"), "{e}");
        // A list is taken as written: the operator's own namespace is not added.
        assert!(refusal(&asset_in("mqtt-system"), &cfg).contains("(allowed.namespaces: [team-a])"));
        // "*": every namespace.
        let all = config(OPEN, BROKER_OPEN, "");
        for ns in ["team-a", "team-b", "mqtt-system"] {
            check_asset(&asset_in(ns), &all).unwrap();
        }
    }

    #[test]
    fn the_identity_provider_is_checked_in_oauth2_mode_only() {
        let cfg = config(OPEN, "", BROKER_OPEN);
        let mut a = asset_in("team-b");
        a.spec.broker = Some("tenants".into());
        check_asset(&a, &cfg).expect("usrpw: no identity provider involved");
        a.spec.auth.mode = AuthMode::Oauth2;
        let e = refusal(&a, &cfg);
        assert!(e.starts_with("identity provider profile \"default\" does not serve namespace \"team-b\""), "{e}");
        assert!(e.contains("identityProviders.default.allowed.namespaces"), "{e}");
        a.metadata.namespace = Some("team-a".into());
        check_asset(&a, &cfg).unwrap();
    }

    #[test]
    fn names_a_spec_chooses_are_prefixed_with_the_namespace_outside_the_operators_own() {
        let cfg = config(OPEN, BROKER_OPEN, BROKER_OPEN);
        // Another namespace: only `<namespace>.` names (the generated ones are always fine).
        let mut a = asset_in("team-b");
        check_asset(&a, &cfg).expect("generated names");
        a.spec.asset_id = Some("team-a-line-1".into());
        let e = refusal(&a, &cfg);
        assert!(
            e.starts_with(
                "spec.assetId \"team-a-line-1\" does not start with \"team-b.\", the prefix connector profile \"default\" requires of names chosen in namespace \"team-b\" (allowed.chosenNames is not set: prefixed outside the operator's namespace \"mqtt-system\")"
            ),
            "{e}"
        );
        a.spec.asset_id = Some("team-b.line-1".into());
        check_asset(&a, &cfg).unwrap();
        a.spec.asset_id = Some("team-b.".into());
        assert!(refusal(&a, &cfg).contains("spec.assetId"), "the prefix alone is no name");
        a.spec.asset_id = None;
        // usrpw: the client id is the broker username, governed by the broker profile.
        a.spec.auth.client_id = Some("dsp-mqtt-team-a-line-1".into());
        let e = refusal(&a, &cfg);
        assert!(e.starts_with("spec.auth.clientId \"dsp-mqtt-team-a-line-1\""), "{e}");
        assert!(e.contains("broker profile \"default\""), "{e}");
        a.spec.auth.client_id = None;
        a.spec.auth.secret_alias = Some("team-a.stolen".into());
        assert!(refusal(&a, &cfg).contains("secret store profile \"default\""));
        // The operator's own namespace chooses freely by default (single-team installs).
        let mut own = asset_in("mqtt-system");
        own.spec.asset_id = Some("urn:uuid:0b5d".into());
        own.spec.auth.client_id = Some("line-1".into());
        check_asset(&own, &cfg).unwrap();
    }

    #[test]
    fn chosen_names_refused_or_any_as_the_profile_says() {
        let refused = config(r#"{namespaces: ["*"], openOffers: true, chosenNames: refused}"#, BROKER_OPEN, "");
        let mut a = asset_in("mqtt-system");
        a.spec.asset_id = Some("mqtt-system.line-1".into());
        let e = refusal(&a, &refused);
        assert!(e.starts_with("spec.assetId: connector profile \"default\" does not let namespace \"mqtt-system\" choose names (allowed.chosenNames: refused)"), "{e}");
        let any = config(OPEN, r##"{namespaces: ["*"], topicPrefixes: ["#"], chosenNames: any}"##, "");
        let mut b = asset_in("team-b");
        b.spec.auth.client_id = Some("whatever".into());
        check_asset(&b, &any).expect("any name");
        // oauth2: the identity provider's rule governs the client id, not the broker's.
        b.spec.broker = Some("tenants".into());
        b.spec.auth.mode = AuthMode::Oauth2;
        b.metadata.namespace = Some("team-a".into());
        let cfg = config(OPEN, BROKER_OPEN, r##"{namespaces: ["*"], topicPrefixes: ["#"], chosenNames: any}"##);
        let e = refusal(&b, &cfg);
        assert!(e.contains("identity provider profile \"default\""), "{e}");
    }

    #[test]
    fn topic_prefixes_with_the_namespace_substituted() {
        let cfg =
            config(OPEN, r##"{namespaces: ["*"], topicPrefixes: ["tenants/{namespace}/#", "shared/+/status"]}"##, "");
        let mut a = asset_in("team-a");
        a.spec.topics = vec!["tenants/team-a/line-1/#".into(), "tenants/team-a".into(), "shared/x/status".into()];
        check_asset(&a, &cfg).unwrap();
        a.spec.topics = vec!["tenants/team-a/x".into(), "tenants/team-b/x".into()];
        let e = refusal(&a, &cfg);
        assert!(
            e.starts_with(
                "spec.topics[1] \"tenants/team-b/x\" is not within the topic prefixes broker profile \"default\" allows namespace \"team-a\" (allowed.topicPrefixes: [tenants/team-a/#, shared/+/status])"
            ),
            "{e}"
        );
    }

    #[test]
    fn topic_containment_is_wildcard_aware() {
        let cfg = config(OPEN, r##"{namespaces: ["*"], topicPrefixes: ["a/#", "s/+/t"]}"##, "");
        let within = ["a", "a/b", "a/b/+", "a/+/c/#", "a/#", "s/x/t", "s/+/t"];
        let outside = ["#", "+/b", "b/a", "+", "s/x/t/u", "s/#", "s/+/+", "ab/c"];
        for t in within {
            let mut a = asset_in("team-a");
            a.spec.topics = vec![t.into()];
            check_asset(&a, &cfg).unwrap_or_else(|e| panic!("{t}: {e}"));
        }
        for t in outside {
            let mut a = asset_in("team-a");
            a.spec.topics = vec![t.into()];
            assert_eq!(check_asset(&a, &cfg).expect_err(t).reason(), "NotAllowed", "{t}");
        }
    }

    #[test]
    fn without_topic_prefixes_only_the_operators_namespace_offers_topics() {
        let cfg = config(OPEN, r##"{namespaces: ["*"]}"##, "");
        let mut own = asset_in("mqtt-system");
        own.spec.topics = vec!["#".into()];
        check_asset(&own, &cfg).expect("own namespace: any topic");
        let e = refusal(&asset_in("team-a"), &cfg);
        assert!(e.contains("allowed.topicPrefixes is not set"), "{e}");
        assert!(e.contains("brokers.default.allowed.topicPrefixes"), "{e}");
    }

    #[test]
    fn raw_odrl_needs_the_connectors_grant() {
        let odrl = PolicyRule { participant_ids: None, odrl: Some(BTreeMap::from([("permission".into(), json!([]))])) };
        let broker = r##"{namespaces: ["*"], topicPrefixes: ["#"]}"##;
        let mut a = asset_in("team-a");
        a.spec.policy.contract = Some(odrl.clone());
        let e = refusal(&a, &config(r##"{namespaces: ["*"], rawOdrl: false}"##, broker, ""));
        assert!(
            e.starts_with(
                "spec.policy.contract.odrl: connector profile \"default\" does not allow raw ODRL in namespace \"team-a\" (allowed.rawOdrl: false)"
            ),
            "{e}"
        );
        let e = refusal(&a, &config(r##"{namespaces: ["*"]}"##, broker, ""));
        assert!(e.contains("allowed.rawOdrl is not set: only in the operator's namespace \"mqtt-system\""), "{e}");
        check_asset(&a, &config(r##"{namespaces: ["*"], rawOdrl: true}"##, broker, "")).unwrap();
        // Raw ODRL in the access policy is raw ODRL, not an open offer.
        a.spec.policy.access = odrl;
        a.spec.policy.contract = None;
        assert!(refusal(&a, &config(r##"{namespaces: ["*"], openOffers: true}"##, broker, "")).contains("rawOdrl"));
        check_asset(&a, &config(r##"{namespaces: ["*"], rawOdrl: true}"##, broker, "")).unwrap();
    }

    #[test]
    fn open_offers_need_the_connectors_grant() {
        let broker = r##"{namespaces: ["*"], topicPrefixes: ["#"]}"##;
        let mut a = asset_in("team-a");
        check_asset(&a, &config(r##"{namespaces: ["*"]}"##, broker, "")).expect("participants listed: not open");
        a.spec.policy.access = PolicyRule { participant_ids: None, odrl: None };
        let e = refusal(&a, &config(r##"{namespaces: ["*"], openOffers: false}"##, broker, ""));
        assert!(
            e.contains(
                "connector profile \"default\" does not allow in namespace \"team-a\" (allowed.openOffers: false)"
            ),
            "{e}"
        );
        a.spec.policy.access.participant_ids = Some(vec![]);
        assert!(refusal(&a, &config(r##"{namespaces: ["*"]}"##, broker, "")).contains("allowed.openOffers is not set"));
        check_asset(&a, &config(r##"{namespaces: ["*"], openOffers: true}"##, broker, "")).unwrap();
        // The operator's own namespace keeps today's behaviour without the field.
        a.metadata.namespace = Some("mqtt-system".into());
        check_asset(&a, &config(r##"{namespaces: ["*"]}"##, broker, "")).unwrap();
    }

    #[test]
    fn endpoint_url_must_be_one_of_the_brokers_public_urls() {
        let cfg = config(OPEN, BROKER_OPEN, BROKER_OPEN);
        let mut a = asset_in("team-a");
        a.spec.broker = Some("tenants".into());
        for same in
            ["wss://rabbit.example.com/ws", "wss://RABBIT.example.com:443/ws/", "mqtts://rabbit.example.com:8883"]
        {
            let a = a.clone().endpoint(EndpointType::MqttWss, Some(same));
            check_asset(&a, &cfg).unwrap_or_else(|e| panic!("{same}: {e}"));
        }
        for other in [
            "wss://evil.example.com/ws",
            "wss://rabbit.example.com:8443/ws",
            "wss://rabbit.example.com/other",
            "ws://rabbit.example.com/ws",
            "not a url",
        ] {
            let a = a.clone().endpoint(EndpointType::MqttWss, Some(other));
            let e = refusal(&a, &cfg);
            assert!(
                e.starts_with(&format!(
                    "spec.endpoint.url \"{other}\" is not one of broker profile \"tenants\"'s publicUrls (mqtt-wss: wss://rabbit.example.com/ws, mqtt-tls: mqtts://rabbit.example.com:8883)"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn a_transfer_is_refused_with_its_asset() {
        let cfg = config("", "", "");
        let asset = asset_in("team-b");
        let mut t = MqttTransfer::test();
        t.metadata.namespace = Some("team-b".into());
        let e = crate::plan::transfer::plan(&t, &asset, &cfg, None).unwrap_err();
        assert_eq!(e.reason(), "NotAllowed");
        assert!(e.to_string().contains("does not serve namespace \"team-b\""), "{e}");
    }
}
