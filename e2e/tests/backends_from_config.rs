//! From an operator configuration file to working clients: every profile type is built by
//! `Backends::build` from YAML (credentials and CA bundles from files), and each client then does real work against the dev stack — the EDC, Keycloak,
//! Vault and EMQX doubles and a real Mosquitto. Also: a profile whose credential cannot be read
//! is reported with its path and without any secret.

use e2e::brokers::mosquitto::{ADMIN_PASSWORD, Mosquitto};
use e2e::doubles::edc::{self, EdcConfig, Flavour};
use e2e::doubles::emqx::EmqxDouble;
use e2e::doubles::{keycloak, vault};
use e2e::fixtures::{grant, owner};
use e2e::tls::TestCa;
use mqtt_dsp_operator::backends::registry::{Backends, BuildContext};
use mqtt_dsp_operator::backends::secrets::SecretLocation;
use mqtt_dsp_operator::backends::{Outcome, SecretString};
use mqtt_dsp_operator::config::Config;
use serde_json::json;

const KC_SECRET: &str = "operator-secret-for-the-config-test";
const VAULT_TOKEN: &str = "vault-root-token-for-the-config-test";
const EMQX_SECRET: &str = "emqx-api-secret-for-the-config-test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_profile_type_is_built_from_the_configuration_and_works() {
    mqtt_dsp_operator::install_crypto_provider();
    e2e::logs::init();
    for s in [KC_SECRET, VAULT_TOKEN, EMQX_SECRET, edc::API_KEY, ADMIN_PASSWORD] {
        e2e::logs::register_secret(s);
    }
    let ca = TestCa::new();
    let edc = edc::start(&ca, EdcConfig::flavour(Flavour::Stock)).await.unwrap();
    let kc = keycloak::start(&ca, "dataspace", "mqtt-dsp-operator", KC_SECRET).await.unwrap();
    let vault = vault::start(&ca, VAULT_TOKEN).await.unwrap();
    let emqx = EmqxDouble::new("emqx-api-key", EMQX_SECRET);
    let emqx_server = emqx.start(&ca).await.unwrap();
    let mosquitto = Mosquitto::start(&ca).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, content: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    };
    let ca_file = file("ca.pem", &ca.cert_pem());
    let config = format!(
        r#"
connectors:
  default:
    managementUrl: {edc_url}
    apiKey: {{file: {edc_key}}}
    caBundle: {{file: {ca_file}}}
identityProviders:
  default:
    type: keycloak
    adminUrl: {kc_url}
    realm: dataspace
    clientId: mqtt-dsp-operator
    clientSecret: {{file: {kc_secret}}}
    caBundle: {{file: {ca_file}}}
secretStores:
  default:
    type: vault
    url: {vault_url}
    auth: {{token: {{file: {vault_token}}}}}
    caBundle: {{file: {ca_file}}}
brokers:
  default:
    type: mosquitto
    adminUrl: {mosquitto_url}
    adminUsername: admin
    adminPassword: {{file: {mosquitto_password}}}
    publicUrls: {{mqtt-tls: "{mosquitto_url}"}}
    caBundle: {{file: {ca_file}}}
  emqx:
    type: emqx
    adminUrl: {emqx_url}
    adminUsername: emqx-api-key
    adminPassword: {{file: {emqx_secret}}}
    publicUrls: {{mqtt-tls: "mqtts://127.0.0.1:8883"}}
    caBundle: {{file: {ca_file}}}
"#,
        edc_url = edc.management_url,
        edc_key = file("edc-key", edc::API_KEY),
        kc_url = kc.server.base_url,
        kc_secret = file("kc-secret", &format!("{KC_SECRET}\n")),
        vault_url = vault.url(),
        vault_token = file("vault-token", VAULT_TOKEN),
        mosquitto_url = mosquitto.mqtts_url(),
        mosquitto_password = file("mosquitto-password", ADMIN_PASSWORD),
        emqx_url = emqx_server.base_url,
        emqx_secret = file("emqx-secret", EMQX_SECRET),
    );
    let config = Config::parse(&config).unwrap_or_else(|p| panic!("{p:#?}"));
    let ctx = BuildContext { kube: None, namespace: "mqtt-dsp-operator", replica: "test" };
    let backends = Backends::build(&config, &ctx).await.unwrap_or_else(|e| panic!("{e}"));

    let policy = mqtt_dsp_operator::backends::connector::PolicyDefinition {
        id: "config-test-policy".into(),
        policy: json!({"@context": "http://www.w3.org/ns/odrl.jsonld", "@type": "Set", "permission": [{"action": "use"}]}),
        owner: owner("config-test"),
    };
    assert_eq!(backends.connectors["default"].ensure_policy(&policy).await.unwrap(), Outcome::Created);

    let client = mqtt_dsp_operator::backends::identity::ClientDefinition {
        client_id: "dsp-mqtt-config-test".into(),
        description: "config test".into(),
        enabled: true,
        access_token_lifespan_seconds: None,
        refresh_tokens_for_client_credentials: false,
        audience: None,
        claims: Vec::new(),
        owner: owner("config-test"),
    };
    assert_eq!(backends.identity_providers["default"].ensure_client(&client).await.unwrap(), Outcome::Created);

    let at = SecretLocation { folder: Some("edc".into()), alias: "config-test".into() };
    let value = SecretString::from("a-value-for-the-config-test".to_owned());
    e2e::logs::register_secret("a-value-for-the-config-test");
    assert_eq!(
        backends.secret_stores["default"].ensure_secret(&at, &value, &owner("config-test")).await.unwrap(),
        Outcome::Created
    );

    for broker in ["default", "emqx"] {
        let outcome = backends.brokers[broker].ensure_user(&grant("config-test", &["a/#"], true)).await;
        assert_eq!(outcome.unwrap_or_else(|e| panic!("{broker}: {e}")), Outcome::Created, "{broker}");
    }
    assert_eq!(kc.server.log.matching(|r| r.path.ends_with("/token")).len(), 1, "one admin login");
}

#[tokio::test]
async fn a_profile_whose_credential_cannot_be_read_is_named() {
    mqtt_dsp_operator::install_crypto_provider();
    let config = Config::parse(
        r#"
connectors:
  default:
    managementUrl: https://edc.example.com/management
    apiKey: {file: /nonexistent/edc-key}
brokers:
  default:
    type: rabbitmq
    adminUrl: https://rabbit.example.com:15671
    adminUsername: admin
    adminPassword: {env: MQTT_DSP_SURELY_UNSET_VARIABLE}
    publicUrls: {mqtt-tls: "mqtts://rabbit.example.com:8883"}
"#,
    )
    .unwrap();
    let ctx = BuildContext { kube: None, namespace: "ns", replica: "test" };
    let e = Backends::build(&config, &ctx).await.err().expect("unreadable credentials must fail");
    let text = e.to_string();
    assert!(text.contains("connectors.default: cannot read credential file /nonexistent/edc-key"), "{text}");
    assert!(text.contains("brokers.default: environment variable MQTT_DSP_SURELY_UNSET_VARIABLE is not set"), "{text}");
}
