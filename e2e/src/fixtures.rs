//! Builders shared by the real-broker tests: the owner of a test grant, a read-only grant with a
//! predictable password (registered for the secret leak check), and consumer options.

use mqtt_dsp_operator::backends::broker::UserGrant;
use mqtt_dsp_operator::backends::{Owner, SecretString};

use crate::consumer::ConsumerOptions;

/// The MqttTransfer `dataspace/<name>` as an owner.
pub fn owner(name: &str) -> Owner {
    Owner { installation: "test".into(), kind: "MqttTransfer".into(), namespace: "dataspace".into(), name: name.into() }
}

/// The password [`grant`] gives `username`.
pub fn password_of(username: &str) -> String {
    format!("{username}-password-0123456789")
}

/// A grant of read access to `topics` for `username`, owned by the transfer of the same name.
pub fn grant(username: &str, topics: &[&str], enabled: bool) -> UserGrant {
    crate::logs::register_secret(&password_of(username));
    UserGrant {
        username: username.into(),
        password: SecretString::from(password_of(username)),
        topics: topics.iter().map(|t| t.to_string()).collect(),
        enabled,
        owner: owner(username),
    }
}

/// Options for a consumer with a unique client id.
pub fn consumer_options(url: String, ca_pem: &str, username: &str, password: &str) -> ConsumerOptions {
    ConsumerOptions {
        url,
        username: username.into(),
        password: password.into(),
        ca_pem: ca_pem.to_owned(),
        client_id: format!("{username}-{}", uuid::Uuid::new_v4().simple()),
    }
}

/// The Secrets `examples/operator-config.yaml` points at (`secretRef`s), with test values, for
/// a test that runs the operator binary with that configuration in `namespace`.
pub fn example_config_secrets(namespace: &str) -> Vec<k8s_openapi::api::core::v1::Secret> {
    [
        ("edc-management-api", "api-key"),
        ("keycloak-operator-client", "client-secret"),
        ("rabbitmq-admin", "password"),
        ("mosquitto-admin", "password"),
    ]
    .into_iter()
    .map(|(name, key)| k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        string_data: Some([(key.to_owned(), format!("{name}-test-value"))].into()),
        ..Default::default()
    })
    .collect()
}
