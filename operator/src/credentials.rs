//! Reading the credentials the configuration refers to: a key of a Kubernetes Secret, an
//! environment variable, or a file. Values come back as [`SecretString`] (redacted in Debug) and
//! are never logged; errors name where the operator looked, never what it found.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use secrecy::SecretString;

use crate::config::CredentialRef;

/// Why a credential could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The environment variable is not set (or not UTF-8).
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    /// The file could not be read.
    #[error("cannot read credential file {path}")]
    File {
        /// The file.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The Secret or its key does not exist, or cannot be read.
    #[error("cannot read key {key} of Secret {namespace}/{name}")]
    Secret {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// Key.
        key: String,
        /// What the API server said (None: the key is absent).
        #[source]
        source: Option<Box<kube::Error>>,
    },
    /// A secretRef was used but the operator has no cluster client (tests, tools).
    #[error("a secretRef credential needs a Kubernetes client")]
    NoClient,
    /// The reference sets none or several sources (the configuration loader refuses this).
    #[error("a credential must set exactly one of secretRef, env or file")]
    Ambiguous,
}

/// Reads a credential. Trailing newlines of files and Secret values are trimmed (files written
/// by `echo` end in one). `namespace` is the operator's own, for Secrets without a namespace.
pub async fn resolve(
    credential: &CredentialRef,
    client: Option<&kube::Client>,
    namespace: &str,
) -> Result<SecretString, CredentialError> {
    match (&credential.secret_ref, &credential.env, &credential.file) {
        (None, Some(var), None) => {
            std::env::var(var).map(SecretString::from).map_err(|_| CredentialError::EnvMissing(var.clone()))
        }
        (None, None, Some(path)) => match tokio::fs::read_to_string(path).await {
            Ok(text) => Ok(SecretString::from(text.trim_end_matches(['\n', '\r']).to_owned())),
            Err(source) => Err(CredentialError::File { path: path.display().to_string(), source }),
        },
        (Some(r), None, None) => {
            let client = client.ok_or(CredentialError::NoClient)?;
            let ns = r.namespace.clone().unwrap_or_else(|| namespace.to_owned());
            let err = |source| CredentialError::Secret {
                namespace: ns.clone(),
                name: r.name.clone(),
                key: r.key.clone(),
                source,
            };
            let secret = Api::<Secret>::namespaced(client.clone(), &ns)
                .get(&r.name)
                .await
                .map_err(|e| err(Some(Box::new(e))))?;
            let bytes = secret.data.and_then(|mut d| d.remove(&r.key)).ok_or_else(|| err(None))?;
            let text = String::from_utf8(bytes.0).map_err(|_| err(None))?;
            Ok(SecretString::from(text.trim_end_matches(['\n', '\r']).to_owned()))
        }
        _ => Err(CredentialError::Ambiguous),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[tokio::test]
    async fn files_and_env_are_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, "s3cr3t\n").unwrap();
        let cred = CredentialRef { secret_ref: None, env: None, file: Some(path) };
        assert_eq!(resolve(&cred, None, "ns").await.unwrap().expose_secret(), "s3cr3t");
        // PATH is set in every test environment.
        let cred = CredentialRef { secret_ref: None, env: Some("PATH".into()), file: None };
        assert!(!resolve(&cred, None, "ns").await.unwrap().expose_secret().is_empty());
    }

    #[tokio::test]
    async fn errors_name_the_source_never_the_value() {
        let cred = CredentialRef { secret_ref: None, env: Some("MQTT_DSP_SURELY_UNSET_VARIABLE".into()), file: None };
        let e = resolve(&cred, None, "ns").await.unwrap_err();
        assert_eq!(e.to_string(), "environment variable MQTT_DSP_SURELY_UNSET_VARIABLE is not set");
        let cred = CredentialRef { secret_ref: None, env: None, file: Some("/nonexistent/pw".into()) };
        assert_eq!(
            resolve(&cred, None, "ns").await.unwrap_err().to_string(),
            "cannot read credential file /nonexistent/pw"
        );
        let debug = format!("{:?}", SecretString::from("hunter2".to_owned()));
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}
