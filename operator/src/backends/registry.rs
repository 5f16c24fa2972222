//! The client of every configured profile, built once at start-up: credentials and CA bundles
//! read, HTTP clients made, the Mosquitto admin connection opened. Resources then pick a client by
//! profile name.

use std::collections::BTreeMap;
use std::sync::Arc;

use secrecy::ExposeSecret;

use super::broker::Broker;
use super::broker::emqx::{EmqxClient, EmqxSettings};
use super::broker::mosquitto::{MosquittoClient, MosquittoSettings};
use super::broker::rabbitmq::{RabbitmqClient, RabbitmqSettings};
use super::connector::Connector;
use super::connector::edc::{EdcClient, EdcSettings};
use super::identity::IdentityProvider;
use super::identity::keycloak::{KeycloakClient, KeycloakSettings};
use super::secrets::SecretStore;
use super::secrets::vault::{VaultClient, VaultSettings};
use super::{BackendError, SecretString};
use crate::config::{BrokerType, CaBundleRef, Config, CredentialRef};
use crate::credentials;

/// Where credentials that live in Kubernetes Secrets are read, and who this replica is.
pub struct BuildContext<'a> {
    /// The cluster client (None: only `env` and `file` credentials work).
    pub kube: Option<&'a kube::Client>,
    /// The operator's namespace, for `secretRef`s without one.
    pub namespace: &'a str,
    /// This replica's name (the Mosquitto admin connection's client id).
    pub replica: &'a str,
}

/// Every profile's client, by profile name.
#[derive(Default)]
pub struct Backends {
    /// Connectors.
    pub connectors: BTreeMap<String, Arc<dyn Connector>>,
    /// Identity providers.
    pub identity_providers: BTreeMap<String, Arc<dyn IdentityProvider>>,
    /// Secret stores.
    pub secret_stores: BTreeMap<String, Arc<dyn SecretStore>>,
    /// Brokers.
    pub brokers: BTreeMap<String, Arc<dyn Broker>>,
}

/// Profiles whose client could not be built, each with its path and cause.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up {} profile(s):\n{}", problems.len(), problems.iter().map(|(p, e)| format!("  - {p}: {e}")).collect::<Vec<_>>().join("\n"))]
pub struct BuildError {
    /// `(connectors.default, error)` pairs.
    pub problems: Vec<(String, BackendError)>,
}

impl Backends {
    /// Builds the client of every profile; reports every profile that fails, not just the first.
    pub async fn build(config: &Config, ctx: &BuildContext<'_>) -> Result<Self, BuildError> {
        let mut backends = Backends::default();
        let mut problems = Vec::new();
        for (name, profile) in &config.connectors {
            let built = async {
                let key = secret(&profile.api_key, ctx).await?;
                let ca = ca_bundle(profile.ca_bundle.as_ref(), ctx).await?;
                EdcClient::new(EdcSettings::from_profile(profile, key, ca))
            };
            match built.await {
                Ok(c) => drop(backends.connectors.insert(name.clone(), Arc::new(c))),
                Err(e) => problems.push((format!("connectors.{name}"), e)),
            }
        }
        for (name, profile) in &config.identity_providers {
            let built = async {
                let client_secret = secret(&profile.client_secret, ctx).await?;
                let ca = ca_bundle(profile.ca_bundle.as_ref(), ctx).await?;
                KeycloakClient::new(KeycloakSettings::from_profile(profile, client_secret, ca))
            };
            match built.await {
                Ok(c) => drop(backends.identity_providers.insert(name.clone(), Arc::new(c))),
                Err(e) => problems.push((format!("identityProviders.{name}"), e)),
            }
        }
        for (name, profile) in &config.secret_stores {
            let built =
                async { VaultClient::new(VaultSettings::from_profile(profile, ctx.kube, ctx.namespace).await?) };
            match built.await {
                Ok(c) => drop(backends.secret_stores.insert(name.clone(), Arc::new(c))),
                Err(e) => problems.push((format!("secretStores.{name}"), e)),
            }
        }
        for (name, profile) in &config.brokers {
            let built = async {
                let password = secret(&profile.admin_password, ctx).await?;
                let ca = ca_bundle(profile.ca_bundle.as_ref(), ctx).await?;
                let broker: Arc<dyn Broker> = match profile.broker_type {
                    BrokerType::Mosquitto => Arc::new(MosquittoClient::connect(&MosquittoSettings::from_profile(
                        profile,
                        password,
                        ca,
                        format!("mqtt-dsp-operator-{}-{name}", ctx.replica),
                    ))?),
                    BrokerType::Rabbitmq => {
                        Arc::new(RabbitmqClient::new(RabbitmqSettings::from_profile(profile, password, ca))?)
                    }
                    BrokerType::Emqx => {
                        let audience = profile.emqx.clone().unwrap_or_default().jwt_audience;
                        Arc::new(EmqxClient::new(EmqxSettings::from_profile(profile, password, ca), audience)?)
                    }
                };
                Ok::<_, BackendError>(broker)
            };
            match built.await {
                Ok(b) => drop(backends.brokers.insert(name.clone(), b)),
                Err(e) => problems.push((format!("brokers.{name}"), e)),
            }
        }
        if problems.is_empty() { Ok(backends) } else { Err(BuildError { problems }) }
    }
}

async fn secret(credential: &CredentialRef, ctx: &BuildContext<'_>) -> Result<SecretString, BackendError> {
    Ok(credentials::resolve(credential, ctx.kube, ctx.namespace).await?)
}

/// A CA bundle is not a secret, but it is referenced the same ways.
async fn ca_bundle(reference: Option<&CaBundleRef>, ctx: &BuildContext<'_>) -> Result<Option<String>, BackendError> {
    match reference {
        None => Ok(None),
        Some(r) => Ok(Some(secret(r, ctx).await?.expose_secret().to_owned())),
    }
}
