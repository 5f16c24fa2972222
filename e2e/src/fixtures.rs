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

/// A loopback certificate of `ca` (`127.0.0.1`, `localhost`) and its key, written into `dir` as
/// `refresh.crt` and `refresh.key`: the files a refresh listener serves TLS with here.
pub fn refresh_tls_files(dir: &std::path::Path, ca: &crate::tls::TestCa) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = ca.server_cert(&["127.0.0.1", "localhost"]);
    let (cert_file, key_file) = (dir.join("refresh.crt"), dir.join("refresh.key"));
    std::fs::write(&cert_file, &cert.cert_pem).expect("write");
    std::fs::write(&key_file, &cert.key_pem).expect("write");
    (cert_file, key_file)
}

/// An operator configuration (YAML) with its `refresh` section, if any, made to run here: the
/// listener on a free loopback port, TLS with a certificate of `ca` written into `dir` (the
/// example's and the chart's point at a mounted Secret). Returns the configuration and the
/// endpoint's public URL.
pub fn localize_refresh(yaml: &str, dir: &std::path::Path, ca: &crate::tls::TestCa) -> (String, Option<String>) {
    let mut config: serde_yaml::Value = serde_yaml::from_str(yaml).expect("the configuration is YAML");
    let Some(refresh) = config.get_mut("refresh").and_then(serde_yaml::Value::as_mapping_mut) else {
        return (yaml.to_owned(), None);
    };
    let port = crate::brokers::free_port();
    let (cert_file, key_file) = refresh_tls_files(dir, ca);
    let url = format!("https://127.0.0.1:{port}/refresh");
    let set = |refresh: &mut serde_yaml::Mapping, key: &str, value: serde_yaml::Value| {
        refresh.insert(serde_yaml::Value::from(key), value);
    };
    set(refresh, "publicUrl", url.clone().into());
    set(refresh, "listen", format!("127.0.0.1:{port}").into());
    let mut tls = serde_yaml::Mapping::new();
    tls.insert("certFile".into(), cert_file.display().to_string().into());
    tls.insert("keyFile".into(), key_file.display().to_string().into());
    set(refresh, "tls", tls.into());
    (serde_yaml::to_string(&config).expect("YAML"), Some(url))
}
