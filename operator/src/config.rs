//! Operator configuration: one YAML file naming the profiles that resources pick by name
//! (`spec.connector`, `spec.identityProvider`, `spec.secretStore`, `spec.broker`; `default` when
//! unset).
//!
//! Credentials are never inlined: every secret value is a [`CredentialRef`] to a Kubernetes
//! Secret key, a file (a mounted Secret) or an environment variable. Loading reports every
//! problem it finds, each with its path (`brokers.default.publicUrls.mqtt-wss: …`), so a user fixes
//! the file in one go instead of one error per restart.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::api::{AuthMode, EndpointType};

/// The whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// Dataspace connectors (EDC Management API).
    pub connectors: BTreeMap<String, ConnectorProfile>,
    /// Identity providers (Keycloak).
    pub identity_providers: BTreeMap<String, IdentityProviderProfile>,
    /// Secret stores (Vault KV v2).
    pub secret_stores: BTreeMap<String, SecretStoreProfile>,
    /// MQTT brokers.
    pub brokers: BTreeMap<String, BrokerProfile>,
    /// The namespace the operator runs in (`POD_NAMESPACE`, else the client's default
    /// namespace). Not read from the file: the operator sets it at start. A profile without an
    /// `allowed` block serves only this namespace (see [`Allowed`]).
    #[serde(skip)]
    pub operator_namespace: String,
    /// This installation's name, written into every ownership marker so that two installations
    /// sharing a backend (staging and production on one realm, connector, Vault or broker) never
    /// adopt, change or delete each other's objects. From the file's top-level `installation`;
    /// absent: the operator's namespace (set at start, like [`Config::operator_namespace`]). The
    /// chart sets `<release namespace>.<release name>`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub installation: String,
    /// The operator's own refresh endpoint (top-level `refresh`). Absent: `oauth2` transfers
    /// carry no refresh token (the operator renews the token in the Secret itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshSettings>,
    /// The operator as the connectors' MQTT data plane (Data Plane Signaling); absent: it is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_plane: Option<crate::dataplane::DataPlaneConfig>,
}

/// The refresh endpoint a consumer sends its refresh token to (ADR 012's `refreshEndpoint`),
/// served by the operator on a listener of its own.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefreshSettings {
    /// What goes into `dsp-mqtt:refreshEndpoint`: the URL consumers reach (an Ingress, a
    /// LoadBalancer Service, …). `https` only. The endpoint answers on this URL's path and on the
    /// same path with `/token` appended (the Tractus-X client appends it).
    pub public_url: Url,
    /// Address the listener binds. Default `0.0.0.0:8443`.
    #[serde(default = "default_refresh_listen")]
    pub listen: std::net::SocketAddr,
    /// Certificate and key (PEM files) the listener serves TLS with. Absent: plain HTTP, for a
    /// listener behind a TLS-terminating Ingress or mesh (the public URL is `https` either way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// How a refresh request authenticates beyond the refresh token.
    #[serde(default)]
    pub consumer_auth: ConsumerAuth,
    /// Rate limits.
    #[serde(default)]
    pub rate_limit: RefreshRateLimit,
}

/// A listener's certificate and key, read from files (a mounted `kubernetes.io/tls` Secret).
/// Read again when the files change, so a renewed certificate is served without a restart.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificate chain, PEM.
    pub cert_file: PathBuf,
    /// Private key, PEM.
    pub key_file: PathBuf,
}

/// What a refresh request must carry besides the refresh token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsumerAuth {
    /// `refreshToken` (default, ADR 012: the refresh token alone) or `bearerJwt` (the Tractus-X
    /// refresh profile: also `Authorization: Bearer <JWT>` signed by the consumer, verified
    /// against [`ConsumerAuth::jwks_url`] or [`ConsumerAuth::jwks_file`], `iss` = `sub` = the
    /// transfer's consumer participant id).
    #[serde(default)]
    pub mode: ConsumerAuthMode,
    /// Where the consumers' public keys are (a JWKS document over `https`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<Url>,
    /// Or a JWKS file (a mounted ConfigMap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// PEM CA bundle to trust (only) for [`ConsumerAuth::jwks_url`]; default: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_ca_file: Option<PathBuf>,
    /// Accepted `aud` values of the bearer JWT (this provider's id or DID). Empty: `aud` is not
    /// checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
}

/// See [`ConsumerAuth::mode`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ConsumerAuthMode {
    /// The refresh token alone (ADR 012).
    #[default]
    RefreshToken,
    /// The refresh token and a bearer JWT signed by the consumer (Tractus-X).
    BearerJwt,
}

/// Requests per minute before `429 Too Many Requests` (with `Retry-After`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefreshRateLimit {
    /// Per transfer (a refresh token's transfer). Default 30.
    #[serde(default = "default_per_transfer")]
    pub per_transfer_per_minute: u32,
    /// Per client address (the TCP peer: behind an Ingress, the Ingress). Default 600.
    #[serde(default = "default_per_address")]
    pub per_address_per_minute: u32,
}

impl Default for RefreshRateLimit {
    fn default() -> Self {
        Self { per_transfer_per_minute: default_per_transfer(), per_address_per_minute: default_per_address() }
    }
}

fn default_refresh_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([0, 0, 0, 0], 8443))
}
fn default_per_transfer() -> u32 {
    30
}
fn default_per_address() -> u32 {
    600
}

/// Which namespaces may use a profile (identity providers, secret stores). Absent: only the
/// operator's own namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Allowed {
    /// Namespace names, `"*"` for all. Absent: the operator's own namespace only. A list given
    /// is taken as written (the operator's namespace is not added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    /// Whether an asset in a namespace the profile serves may choose the external name this profile
    /// governs (connector: `spec.assetId`; identity provider, or broker in `usrpw` mode:
    /// `spec.auth.clientId`; secret store: `spec.auth.secretAlias`). Absent: any name in the
    /// operator's own namespace, `prefixed` in every other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen_names: Option<ChosenNames>,
}

/// Whether a resource may choose an external name itself (`spec.assetId`, `spec.auth.clientId`,
/// `spec.auth.secretAlias`) instead of the generated one, which always starts with its namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ChosenNames {
    /// Only names that start with `<namespace>.`, so one namespace can never take a name that
    /// another namespace's resource would get or choose.
    Prefixed,
    /// None: the spec field is refused; names are generated.
    Refused,
    /// Any name: for a profile that one trusted team uses.
    Any,
}

/// Which namespaces may use a connector profile, and what their assets may publish.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectorAllowed {
    /// As [`Allowed::namespaces`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    /// Whether an asset may give raw ODRL (`spec.policy.access.odrl`, `spec.policy.contract.odrl`).
    /// Absent: only in the operator's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_odrl: Option<bool>,
    /// Whether an asset may publish an access policy without participant constraints (an offer
    /// every participant sees). Absent: only in the operator's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_offers: Option<bool>,
    /// As [`Allowed::chosen_names`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen_names: Option<ChosenNames>,
}

/// Which namespaces may use a broker profile, and which topics their assets may offer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BrokerAllowed {
    /// As [`Allowed::namespaces`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    /// Topic-filter prefixes an asset may offer, `{namespace}` replaced by the asset's namespace
    /// (`tenants/{namespace}/#`); every filter of `spec.topics` must lie within one of them (MQTT
    /// matching: `a/#` contains `a/b/+`, not `#`). Absent: any topic in the operator's own
    /// namespace, none in any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_prefixes: Option<Vec<String>>,
    /// As [`Allowed::chosen_names`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen_names: Option<ChosenNames>,
}

/// The placeholder in [`BrokerAllowed::topic_prefixes`].
pub const NAMESPACE_PLACEHOLDER: &str = "{namespace}";

/// Where a credential comes from. Exactly one field is set.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialRef {
    /// A key of a Kubernetes Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// An environment variable of the operator process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// A file, e.g. a mounted Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// A key of a Kubernetes Secret.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key in the Secret's data.
    pub key: String,
    /// Namespace of the Secret. Default: the operator's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A CA bundle (PEM) to trust in addition to nothing else: when set, only these CAs are trusted
/// for that profile's connections. Not a secret, but read the same ways.
pub type CaBundleRef = CredentialRef;

/// Which spelling of `mqttEndpointType` the connector accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EndpointTypeSpelling {
    /// ADR 012: `mqtt-wss`, `mqtt-tls`, `mqtt-tcp-basic`.
    #[default]
    Adr,
    /// The Factory-X reference connector (factoryx-edc): `mqtt-{wss|tcp}-{basic|oauth2}`.
    Factoryx,
}

/// EDC Management API version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConnectorApiVersion {
    /// `/v3` (EDC 0.15.x; deprecated from EDC 0.17).
    #[default]
    V3,
}

/// A dataspace connector (Eclipse EDC Management API).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectorProfile {
    /// Base URL of the Management API, without the version (e.g. `https://edc/management`).
    pub management_url: Url,
    /// The `X-Api-Key` value.
    pub api_key: CredentialRef,
    /// API version. Default: `v3`.
    #[serde(default)]
    pub api_version: ConnectorApiVersion,
    /// Spelling of `mqttEndpointType` written into assets. Default: `adr`.
    #[serde(default)]
    pub endpoint_type_spelling: EndpointTypeSpelling,
    /// Folder the connector's Vault extension prefixes aliases with (`edc.vault.hashicorp.folder`).
    /// Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_folder: Option<String>,
    /// CA bundle for the Management API's TLS certificate. Default: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundleRef>,
    /// Request timeout in seconds. Default: 10.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Which namespaces may use this profile (and what they may do with it). Absent: only the
    /// operator's own namespace, with everything it could do before this block existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<ConnectorAllowed>,
}

/// Kind of identity provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityProviderType {
    /// Keycloak 17+ (no `/auth` prefix).
    Keycloak,
}

/// An identity provider that issues consumers' JWTs.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityProviderProfile {
    /// Kind of identity provider.
    #[serde(rename = "type")]
    pub provider_type: IdentityProviderType,
    /// Base URL the operator uses for the Admin API and its own login (e.g. `https://keycloak`).
    pub admin_url: Url,
    /// Realm in which clients are created.
    pub realm: String,
    /// The operator's own confidential client (service account with `manage-clients`).
    pub client_id: String,
    /// Its client secret.
    pub client_secret: CredentialRef,
    /// Token URL given to consumers and the connector (`oauth2:tokenUrl`). Default:
    /// `<adminUrl>/realms/<realm>/protocol/openid-connect/token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<Url>,
    /// Access-token lifetime in seconds for consumers' tokens when a transfer does not set one.
    /// Default: 300.
    #[serde(default = "default_token_lifetime")]
    pub default_token_lifetime_seconds: u32,
    /// CA bundle for the identity provider's TLS certificate. Default: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundleRef>,
    /// Request timeout in seconds. Default: 10.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Which namespaces may use this profile (and what they may do with it). Absent: only the
    /// operator's own namespace, with everything it could do before this block existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Allowed>,
}

impl IdentityProviderProfile {
    /// The token URL consumers and the connector use.
    pub fn effective_token_url(&self) -> Url {
        self.token_url.clone().unwrap_or_else(|| keycloak_token_url(&self.admin_url, &self.realm))
    }
}

fn keycloak_token_url(base: &Url, realm: &str) -> Url {
    let mut url = base.clone();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty().extend(["realms", realm, "protocol", "openid-connect", "token"]);
    }
    url
}

/// Kind of secret store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretStoreType {
    /// HashiCorp Vault (or OpenBao) KV version 2.
    Vault,
}

/// A secret store the connector resolves aliases from.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretStoreProfile {
    /// Kind of secret store.
    #[serde(rename = "type")]
    pub store_type: SecretStoreType,
    /// Vault address (e.g. `https://vault:8200`).
    pub url: Url,
    /// Mount of the KV v2 engine. Default: `secret` (EDC's `/v1/secret`).
    #[serde(default = "default_kv_mount")]
    pub kv_mount: String,
    /// How the operator authenticates.
    pub auth: VaultAuth,
    /// CA bundle for Vault's TLS certificate. Default: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundleRef>,
    /// Request timeout in seconds. Default: 10.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Which namespaces may use this profile (and what they may do with it). Absent: only the
    /// operator's own namespace, with everything it could do before this block existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Allowed>,
}

/// How the operator authenticates to Vault. Exactly one field is set.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VaultAuth {
    /// A Vault token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<CredentialRef>,
    /// Vault's Kubernetes auth method with the operator's service account token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<VaultKubernetesAuth>,
}

/// Vault Kubernetes auth.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VaultKubernetesAuth {
    /// Vault role to log in as.
    pub role: String,
    /// Mount of the auth method. Default: `kubernetes`.
    #[serde(default = "default_k8s_auth_mount")]
    pub mount: String,
    /// Service account token file. Default: the projected token of the pod.
    #[serde(default = "default_sa_token_path")]
    pub service_account_token_path: PathBuf,
}

/// Kind of MQTT broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerType {
    /// Eclipse Mosquitto 2 with the dynamic-security plugin (usrpw only).
    Mosquitto,
    /// RabbitMQ 3.10+ with the MQTT, Web MQTT, management and OAuth 2.0 plugins.
    Rabbitmq,
    /// EMQX 5.
    Emqx,
}

impl BrokerType {
    /// The auth modes this kind of broker can do.
    pub fn capable_modes(self) -> &'static [AuthMode] {
        match self {
            // Mosquitto cannot check a JWT in the CONNECT password without a third-party plugin.
            BrokerType::Mosquitto => &[AuthMode::Usrpw],
            BrokerType::Rabbitmq | BrokerType::Emqx => &[AuthMode::Usrpw, AuthMode::Oauth2],
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            BrokerType::Mosquitto => "mosquitto",
            BrokerType::Rabbitmq => "rabbitmq",
            BrokerType::Emqx => "emqx",
        }
    }

    /// Admin URL schemes: Mosquitto is administered over MQTT (TLS), the others over HTTPS.
    fn admin_schemes(self) -> &'static [&'static str] {
        match self {
            BrokerType::Mosquitto => &["mqtts", "ssl"],
            BrokerType::Rabbitmq | BrokerType::Emqx => &["https"],
        }
    }
}

/// An MQTT broker.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BrokerProfile {
    /// Kind of broker.
    #[serde(rename = "type")]
    pub broker_type: BrokerType,
    /// Admin endpoint: `mqtts://host:port` for Mosquitto (dynamic security over MQTT),
    /// the management API's `https://…` for RabbitMQ and EMQX.
    pub admin_url: Url,
    /// Admin user name (EMQX: the API key).
    pub admin_username: String,
    /// Admin password (EMQX: the API secret).
    pub admin_password: CredentialRef,
    /// URLs consumers connect to, per endpoint type: `mqtt-wss` → `wss://…`, `mqtt-tls` and
    /// `mqtt-tcp-basic` → `mqtts://…` or `ssl://…`.
    pub public_urls: BTreeMap<EndpointType, Url>,
    /// Auth modes offered on this broker. Default: all the broker can do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_modes: Option<Vec<AuthMode>>,
    /// RabbitMQ settings (only for `type: rabbitmq`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq: Option<RabbitmqSettings>,
    /// EMQX settings (only for `type: emqx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emqx: Option<EmqxSettings>,
    /// CA bundle for the admin endpoint's TLS certificate. Default: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundleRef>,
    /// Request timeout in seconds. Default: 10.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Which namespaces may use this profile (and what they may do with it). Absent: only the
    /// operator's own namespace, with everything it could do before this block existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<BrokerAllowed>,
}

impl BrokerProfile {
    /// The auth modes offered on this broker.
    pub fn effective_auth_modes(&self) -> Vec<AuthMode> {
        self.auth_modes.clone().unwrap_or_else(|| self.broker_type.capable_modes().to_vec())
    }
}

/// RabbitMQ-specific settings.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RabbitmqSettings {
    /// Virtual host the MQTT plugin uses. Default: `/`.
    #[serde(default = "default_vhost")]
    pub vhost: String,
    /// Exchange MQTT topics map to. Default: `amq.topic`.
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// `auth_oauth2.resource_server_id`: the audience of consumers' tokens and the prefix of
    /// their scopes. Default: `rabbitmq`.
    #[serde(default = "default_resource_server_id")]
    pub resource_server_id: String,
    /// `auth_oauth2.additional_scopes_key`: the token claim that carries consumers' scopes (the
    /// broker must be configured with the same key). Default: `dsp_mqtt_scopes`.
    #[serde(default = "default_additional_scopes_key")]
    pub additional_scopes_key: String,
}

impl Default for RabbitmqSettings {
    fn default() -> Self {
        Self {
            vhost: default_vhost(),
            exchange: default_exchange(),
            resource_server_id: default_resource_server_id(),
            additional_scopes_key: default_additional_scopes_key(),
        }
    }
}

/// EMQX-specific settings.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmqxSettings {
    /// Audience consumers' JWTs carry, as the broker's JWT authenticator verifies it.
    /// Default: `emqx`.
    #[serde(default = "default_emqx_audience")]
    pub jwt_audience: String,
}

impl Default for EmqxSettings {
    fn default() -> Self {
        Self { jwt_audience: default_emqx_audience() }
    }
}

fn default_emqx_audience() -> String {
    "emqx".into()
}

fn default_timeout() -> u64 {
    10
}
fn default_token_lifetime() -> u32 {
    300
}
fn default_kv_mount() -> String {
    "secret".into()
}
fn default_k8s_auth_mount() -> String {
    "kubernetes".into()
}
fn default_sa_token_path() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
}
fn default_vhost() -> String {
    "/".into()
}
fn default_exchange() -> String {
    "amq.topic".into()
}
fn default_resource_server_id() -> String {
    "rabbitmq".into()
}
fn default_additional_scopes_key() -> String {
    "dsp_mqtt_scopes".into()
}

/// One problem in the configuration, with the path where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted path, e.g. `brokers.default.publicUrls.mqtt-wss`.
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but has problems; every one is listed.
    #[error("configuration {origin} has {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// Where the configuration came from.
        origin: String,
        /// Every problem found.
        problems: Vec<ConfigProblem>,
    },
}

/// Whether two profiles of a section reach the same backend, so that an object of one name made
/// through either is the same object. A resource moved between two such profiles keeps its
/// objects: removing the "old" one would remove the one just made.
impl Config {
    /// Same connector: the same Management API.
    pub fn same_connector(&self, a: &str, b: &str) -> bool {
        same(&self.connectors, a, b, |x, y| same_url(&x.management_url, &y.management_url))
    }

    /// Same identity provider: the same admin API and realm.
    pub fn same_identity_provider(&self, a: &str, b: &str) -> bool {
        same(&self.identity_providers, a, b, |x, y| {
            x.provider_type == y.provider_type && same_url(&x.admin_url, &y.admin_url) && x.realm == y.realm
        })
    }

    /// Same secret store: the same server and KV mount.
    pub fn same_secret_store(&self, a: &str, b: &str) -> bool {
        same(&self.secret_stores, a, b, |x, y| {
            x.store_type == y.store_type && same_url(&x.url, &y.url) && x.kv_mount == y.kv_mount
        })
    }

    /// Whether two profiles of `section` reach the same backend (the converge step's notion
    /// of "the same object").
    pub fn same_backend(&self, section: crate::plan::objects::Section, a: &str, b: &str) -> bool {
        use crate::plan::objects::Section;
        match section {
            Section::Connectors => self.same_connector(a, b),
            Section::IdentityProviders => self.same_identity_provider(a, b),
            Section::SecretStores => self.same_secret_store(a, b),
            Section::Brokers => self.same_broker(a, b),
        }
    }

    /// Same broker: the same admin API and, for RabbitMQ, the same vhost and exchange; the
    /// public URLs may differ. A RabbitMQ user is one per broker but holds permissions per vhost
    /// and topic permissions per exchange: between two of them the old user is removed as if the
    /// broker were another, so that no access to the old ones lingers, and the reconcile that the
    /// status write triggers makes the user again.
    pub fn same_broker(&self, a: &str, b: &str) -> bool {
        let scope = |p: &BrokerProfile| p.rabbitmq.as_ref().map(|r| (r.vhost.clone(), r.exchange.clone()));
        same(&self.brokers, a, b, |x, y| {
            x.broker_type == y.broker_type && same_url(&x.admin_url, &y.admin_url) && scope(x) == scope(y)
        })
    }
}

/// Two URLs of one endpoint as written: scheme, host and port (a default port written or not),
/// and path up to a trailing slash. Host names are compared as text: a short and a fully
/// qualified name of one service, or a name and its address, count as two backends.
fn same_url(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
        && a.path().trim_end_matches('/') == b.path().trim_end_matches('/')
}

/// The same profile name, or two configured profiles that `target` says reach one backend.
fn same<P>(profiles: &BTreeMap<String, P>, a: &str, b: &str, target: impl Fn(&P, &P) -> bool) -> bool {
    a == b || matches!((profiles.get(a), profiles.get(b)), (Some(x), Some(y)) if target(x, y))
}

impl Config {
    /// The installation named in every ownership marker: `installation` from the file, else the
    /// operator's namespace (`default` before that is known, as in unit tests).
    pub fn installation(&self) -> &str {
        match (self.installation.as_str(), self.operator_namespace.as_str()) {
            ("", "") => "default",
            ("", namespace) => namespace,
            (name, _) => name,
        }
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text).map_err(|problems| ConfigError::Invalid { origin: path.display().to_string(), problems })
    }

    /// Parses and validates configuration text, collecting every problem.
    pub fn parse(text: &str) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let root: serde_yaml::Value = match serde_yaml::from_str(text) {
            Ok(serde_yaml::Value::Null) => serde_yaml::Value::Mapping(Default::default()),
            Ok(v) => v,
            Err(e) => {
                return Err(vec![ConfigProblem { path: String::new(), message: format!("not valid YAML: {e}") }]);
            }
        };
        let Some(root) = root.as_mapping() else {
            return Err(vec![ConfigProblem {
                path: String::new(),
                message: "expected a mapping with connectors, identityProviders, secretStores, brokers".into(),
            }]);
        };
        const SECTIONS: [&str; 7] =
            ["installation", "connectors", "identityProviders", "secretStores", "brokers", "refresh", "dataPlane"];
        for key in root.keys() {
            let name = key.as_str().unwrap_or("<non-string key>");
            if !SECTIONS.contains(&name) {
                problems.push(ConfigProblem {
                    path: name.into(),
                    message: format!("unknown section; expected one of {}", SECTIONS.join(", ")),
                });
            }
        }
        let installation = match root.get("installation") {
            None | Some(serde_yaml::Value::Null) => String::new(),
            Some(serde_yaml::Value::String(name)) => match check_installation(name) {
                Ok(()) => name.clone(),
                Err(message) => {
                    problems.push(ConfigProblem { path: "installation".into(), message });
                    String::new()
                }
            },
            Some(_) => {
                problems.push(ConfigProblem { path: "installation".into(), message: "expected a string".into() });
                String::new()
            }
        };
        let mut config = Config {
            connectors: section(root, "connectors", &mut problems),
            identity_providers: section(root, "identityProviders", &mut problems),
            secret_stores: section(root, "secretStores", &mut problems),
            brokers: section(root, "brokers", &mut problems),
            operator_namespace: String::new(),
            installation,
            refresh: refresh_section(root, &mut problems),
            data_plane: crate::dataplane::config::parse_section(root.get("dataPlane"), &mut problems),
        };
        config.validate(&mut problems);
        if let Some(dp) = &config.data_plane {
            crate::dataplane::config::validate(dp, &config.connectors, &mut problems);
        }
        if config.connectors.is_empty() && config.brokers.is_empty() && problems.is_empty() {
            problems.push(ConfigProblem {
                path: String::new(),
                message: "no connector and no broker profile: nothing could be reconciled".into(),
            });
        }
        if problems.is_empty() {
            // Normalise so that callers never see an unset default.
            for broker in config.brokers.values_mut() {
                if broker.broker_type == BrokerType::Rabbitmq && broker.rabbitmq.is_none() {
                    broker.rabbitmq = Some(RabbitmqSettings::default());
                }
                if broker.broker_type == BrokerType::Emqx && broker.emqx.is_none() {
                    broker.emqx = Some(EmqxSettings::default());
                }
            }
            Ok(config)
        } else {
            Err(problems)
        }
    }

    fn validate(&self, problems: &mut Vec<ConfigProblem>) {
        let mut push = |path: String, message: String| problems.push(ConfigProblem { path, message });
        for (name, p) in &self.connectors {
            let at = format!("connectors.{name}");
            check_url(&mut push, &format!("{at}.managementUrl"), &p.management_url, &["https"]);
            check_credential(&mut push, &format!("{at}.apiKey"), &p.api_key);
            if let Some(ca) = &p.ca_bundle {
                check_credential(&mut push, &format!("{at}.caBundle"), ca);
            }
            check_timeout(&mut push, &at, p.timeout_seconds);
            if let Some(a) = &p.allowed {
                check_namespaces(&mut push, &at, a.namespaces.as_deref());
            }
        }
        for (name, p) in &self.identity_providers {
            let at = format!("identityProviders.{name}");
            check_url(&mut push, &format!("{at}.adminUrl"), &p.admin_url, &["https"]);
            if let Some(u) = &p.token_url {
                check_url(&mut push, &format!("{at}.tokenUrl"), u, &["https"]);
            }
            if p.realm.trim().is_empty() || p.realm.contains('/') {
                push(format!("{at}.realm"), "must be a realm name (non-empty, no '/')".into());
            }
            if p.client_id.trim().is_empty() {
                push(format!("{at}.clientId"), "must name the operator's own client".into());
            }
            check_credential(&mut push, &format!("{at}.clientSecret"), &p.client_secret);
            if !(60..=86400).contains(&p.default_token_lifetime_seconds) {
                push(
                    format!("{at}.defaultTokenLifetimeSeconds"),
                    format!("must be between 60 and 86400, got {}", p.default_token_lifetime_seconds),
                );
            }
            if let Some(ca) = &p.ca_bundle {
                check_credential(&mut push, &format!("{at}.caBundle"), ca);
            }
            check_timeout(&mut push, &at, p.timeout_seconds);
            if let Some(a) = &p.allowed {
                check_namespaces(&mut push, &at, a.namespaces.as_deref());
            }
        }
        for (name, p) in &self.secret_stores {
            let at = format!("secretStores.{name}");
            check_url(&mut push, &format!("{at}.url"), &p.url, &["https"]);
            if p.kv_mount.trim_matches('/').is_empty() {
                push(format!("{at}.kvMount"), "must name the KV v2 mount (e.g. secret)".into());
            }
            match (&p.auth.token, &p.auth.kubernetes) {
                (Some(token), None) => check_credential(&mut push, &format!("{at}.auth.token"), token),
                (None, Some(k8s)) => {
                    if k8s.role.trim().is_empty() {
                        push(format!("{at}.auth.kubernetes.role"), "must name the Vault role".into());
                    }
                }
                _ => push(format!("{at}.auth"), "set exactly one of token or kubernetes".into()),
            }
            if let Some(ca) = &p.ca_bundle {
                check_credential(&mut push, &format!("{at}.caBundle"), ca);
            }
            check_timeout(&mut push, &at, p.timeout_seconds);
            if let Some(a) = &p.allowed {
                check_namespaces(&mut push, &at, a.namespaces.as_deref());
            }
        }
        for (name, p) in &self.brokers {
            let at = format!("brokers.{name}");
            check_url(&mut push, &format!("{at}.adminUrl"), &p.admin_url, p.broker_type.admin_schemes());
            if p.admin_username.trim().is_empty() {
                push(format!("{at}.adminUsername"), "must not be empty".into());
            }
            check_credential(&mut push, &format!("{at}.adminPassword"), &p.admin_password);
            if p.public_urls.is_empty() {
                push(
                    format!("{at}.publicUrls"),
                    "name at least one URL consumers connect to (mqtt-wss, mqtt-tls or mqtt-tcp-basic)".into(),
                );
            }
            for (endpoint, url) in &p.public_urls {
                check_url(&mut push, &format!("{at}.publicUrls.{endpoint}"), url, endpoint.allowed_schemes());
            }
            if let Some(modes) = &p.auth_modes {
                if modes.is_empty() {
                    push(
                        format!("{at}.authModes"),
                        "must list at least one mode (usrpw, oauth2), or be left out".into(),
                    );
                }
                for (i, mode) in modes.iter().enumerate() {
                    if !p.broker_type.capable_modes().contains(mode) {
                        push(
                            format!("{at}.authModes[{i}]"),
                            format!(
                                "{} cannot do {mode}; it supports {}",
                                p.broker_type.as_str(),
                                p.broker_type.capable_modes().iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
                            ),
                        );
                    }
                }
            }
            if p.rabbitmq.is_some() && p.broker_type != BrokerType::Rabbitmq {
                push(
                    format!("{at}.rabbitmq"),
                    format!("only allowed with type: rabbitmq (this broker is {})", p.broker_type.as_str()),
                );
            }
            if p.emqx.is_some() && p.broker_type != BrokerType::Emqx {
                push(
                    format!("{at}.emqx"),
                    format!("only allowed with type: emqx (this broker is {})", p.broker_type.as_str()),
                );
            }
            if let Some(ca) = &p.ca_bundle {
                check_credential(&mut push, &format!("{at}.caBundle"), ca);
            }
            check_timeout(&mut push, &at, p.timeout_seconds);
            if let Some(a) = &p.allowed {
                check_namespaces(&mut push, &at, a.namespaces.as_deref());
                for (i, prefix) in a.topic_prefixes.iter().flatten().enumerate() {
                    if let Err(why) = check_topic_prefix(prefix) {
                        push(format!("{at}.allowed.topicPrefixes[{i}]"), why);
                    }
                }
            }
        }
    }
}

/// The `refresh` section, checked.
fn refresh_section(root: &serde_yaml::Mapping, problems: &mut Vec<ConfigProblem>) -> Option<RefreshSettings> {
    let value = root.get("refresh").filter(|v| !v.is_null())?;
    let settings: RefreshSettings = match serde_path_to_error::deserialize(value.clone()) {
        Ok(s) => s,
        Err(e) => {
            let inner = e.path().to_string();
            let path = if inner == "." { "refresh".to_owned() } else { format!("refresh.{inner}") };
            problems.push(ConfigProblem { path, message: e.into_inner().to_string() });
            return None;
        }
    };
    let mut push = |path: String, message: String| problems.push(ConfigProblem { path, message });
    check_url(&mut push, "refresh.publicUrl", &settings.public_url, &["https"]);
    if settings.public_url.query().is_some() || settings.public_url.fragment().is_some() {
        push("refresh.publicUrl".into(), "must not have a query or fragment".into());
    }
    let auth = &settings.consumer_auth;
    match (auth.mode, &auth.jwks_url, &auth.jwks_file) {
        (ConsumerAuthMode::BearerJwt, Some(url), None) => {
            check_url(&mut push, "refresh.consumerAuth.jwksUrl", url, &["https"])
        }
        (ConsumerAuthMode::BearerJwt, None, Some(_)) => {}
        (ConsumerAuthMode::BearerJwt, _, _) => push(
            "refresh.consumerAuth".into(),
            "mode bearerJwt needs exactly one of jwksUrl or jwksFile (the consumers' public keys)".into(),
        ),
        (ConsumerAuthMode::RefreshToken, None, None) => {}
        (ConsumerAuthMode::RefreshToken, _, _) => push(
            "refresh.consumerAuth".into(),
            "jwksUrl and jwksFile are only read in mode bearerJwt; set mode: bearerJwt or remove them".into(),
        ),
    }
    let limits = &settings.rate_limit;
    for (name, value) in [
        ("perTransferPerMinute", limits.per_transfer_per_minute),
        ("perAddressPerMinute", limits.per_address_per_minute),
    ] {
        if value == 0 {
            push(format!("refresh.rateLimit.{name}"), "must be at least 1".into());
        }
    }
    Some(settings)
}

/// Deserialises every profile of one section on its own, so that one broken profile does not
/// hide the problems of the others.
/// An installation name goes into every ownership marker: in Mosquitto's space-separated text
/// name, RabbitMQ's comma-separated tags and an EMQX ACL topic, so it is held to a DNS-like
/// alphabet (lower-case letters, digits, `.` and `-`) that none of them treats specially.
pub fn check_installation(name: &str) -> Result<(), String> {
    let valid_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let valid_ends = name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if name.len() > 127 || !valid_chars || !valid_ends {
        return Err(format!(
            "{name:?} is not an installation name: 1 to 127 lower-case letters, digits, '.' and '-', \
             starting and ending with a letter or digit (e.g. `prod.mqtt-dsp-operator`)"
        ));
    }
    Ok(())
}

fn section<T: DeserializeOwned>(
    root: &serde_yaml::Mapping,
    key: &str,
    problems: &mut Vec<ConfigProblem>,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    let Some(value) = root.get(key) else { return out };
    let Some(profiles) = value.as_mapping() else {
        if !value.is_null() {
            problems.push(ConfigProblem {
                path: key.into(),
                message: "expected a mapping of profile names to profiles".into(),
            });
        }
        return out;
    };
    for (name, profile) in profiles {
        let Some(name) = name.as_str() else {
            problems.push(ConfigProblem { path: key.into(), message: "profile names must be strings".into() });
            continue;
        };
        let at = format!("{key}.{name}");
        if !is_dns_label(name) {
            problems.push(ConfigProblem {
                path: at.clone(),
                message: "profile names must be DNS labels (lower-case letters, digits, '-'; at most 63)".into(),
            });
        }
        match serde_path_to_error::deserialize::<_, T>(profile.clone()) {
            Ok(p) => {
                out.insert(name.to_owned(), p);
            }
            Err(e) => {
                let inner = e.path().to_string();
                let path = if inner == "." { at } else { format!("{at}.{inner}") };
                problems.push(ConfigProblem { path, message: e.into_inner().to_string() });
            }
        }
    }
    out
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn check_url(push: &mut impl FnMut(String, String), path: &str, url: &Url, schemes: &[&str]) {
    if !schemes.contains(&url.scheme()) {
        let hint = match url.scheme() {
            "http" | "mqtt" | "ws" | "tcp" => " (unencrypted connections are refused)",
            _ => "",
        };
        push(path.into(), format!("scheme must be {}, got {}{hint}", schemes.join(" or "), url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        push(path.into(), "must name a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Never echo the URL: it holds a credential.
        push(path.into(), "must not contain a user name or password (use the profile's credential fields)".into());
    }
}

fn check_credential(push: &mut impl FnMut(String, String), path: &str, cred: &CredentialRef) {
    let set = [cred.secret_ref.is_some(), cred.env.is_some(), cred.file.is_some()].iter().filter(|b| **b).count();
    if set != 1 {
        push(path.into(), "set exactly one of secretRef, env or file (credentials are never written inline)".into());
    }
    if let Some(r) = &cred.secret_ref
        && (r.name.is_empty() || r.key.is_empty())
    {
        push(format!("{path}.secretRef"), "name and key must not be empty".into());
    }
    if let Some(env) = &cred.env
        && env.is_empty()
    {
        push(format!("{path}.env"), "must name an environment variable".into());
    }
}

fn check_namespaces(push: &mut impl FnMut(String, String), at: &str, namespaces: Option<&[String]>) {
    for (i, ns) in namespaces.into_iter().flatten().enumerate() {
        let label = !ns.is_empty()
            && ns.len() <= 63
            && ns.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !ns.starts_with('-')
            && !ns.ends_with('-');
        if ns != "*" && !label {
            push(
                format!("{at}.allowed.namespaces[{i}]"),
                format!("\"{ns}\" is neither a namespace name (a DNS label) nor \"*\" (all namespaces)"),
            );
        }
    }
}

/// A topic-filter prefix: a valid MQTT topic filter once `{namespace}` is replaced.
fn check_topic_prefix(prefix: &str) -> Result<(), String> {
    let filter = prefix.replace(NAMESPACE_PLACEHOLDER, "ns");
    if filter.is_empty() {
        return Err("must not be empty (\"#\" allows every topic)".into());
    }
    if filter.contains(['{', '}']) {
        return Err(format!("\"{prefix}\": the only placeholder is {NAMESPACE_PLACEHOLDER}"));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let wildcard_inside = level.len() > 1 && level.contains(['+', '#']);
        let hash_not_last = *level == "#" && i + 1 != levels.len();
        if wildcard_inside || hash_not_last {
            return Err(format!(
                "\"{prefix}\" is not an MQTT topic filter: + and # must be whole levels, # only the last"
            ));
        }
    }
    Ok(())
}

fn check_timeout(push: &mut impl FnMut(String, String), at: &str, seconds: u64) {
    if !(1..=300).contains(&seconds) {
        push(format!("{at}.timeoutSeconds"), format!("must be between 1 and 300, got {seconds}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/operator-config.yaml");

    #[test]
    fn the_example_configuration_loads() {
        let config = Config::parse(EXAMPLE).expect("examples/operator-config.yaml is valid");
        assert!(config.connectors.contains_key("default"));
        assert!(config.identity_providers.contains_key("default"));
        assert!(config.secret_stores.contains_key("default"));
        assert!(config.brokers.contains_key("default"));
        let idp = &config.identity_providers["default"];
        assert_eq!(
            idp.effective_token_url().as_str(),
            "https://keycloak.example.com/realms/dataspace/protocol/openid-connect/token"
        );
    }

    #[test]
    fn the_refresh_section_is_checked_and_every_problem_named() {
        let config = Config::parse(EXAMPLE).unwrap();
        let refresh = config.refresh.expect("the example serves the refresh endpoint");
        assert_eq!(refresh.public_url.as_str(), "https://mqtt-dsp.example.com/refresh");
        assert_eq!(refresh.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(refresh.consumer_auth.mode, ConsumerAuthMode::RefreshToken);
        assert_eq!(refresh.rate_limit, RefreshRateLimit::default());

        // The example without its refresh section (it precedes `connectors:`), and another one.
        let rest = EXAMPLE.split_once("\nconnectors:").map(|(_, r)| format!("connectors:{r}")).unwrap();
        let with = |section: &str| match Config::parse(&format!("{section}\n{rest}")) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
        };
        assert!(with("refresh: {publicUrl: 'https://x.example.com/r'}").is_empty());
        let p = with("refresh: {publicUrl: 'http://x.example.com/r'}");
        assert!(p.iter().any(|p| p.starts_with("refresh.publicUrl: scheme must be https")), "{p:?}");
        let p = with("refresh: {publicUrl: 'https://x.example.com/r?a=b', consumerAuth: {mode: bearerJwt}}");
        assert!(p.iter().any(|p| p.contains("must not have a query")), "{p:?}");
        assert!(p.iter().any(|p| p.contains("needs exactly one of jwksUrl or jwksFile")), "{p:?}");
        let p = with("refresh: {publicUrl: 'https://x.example.com/r', consumerAuth: {jwksFile: /k.json}}");
        assert!(p.iter().any(|p| p.contains("only read in mode bearerJwt")), "{p:?}");
        let p = with("refresh: {publicUrl: 'https://x.example.com/r', rateLimit: {perTransferPerMinute: 0}}");
        assert!(p.iter().any(|p| p.starts_with("refresh.rateLimit.perTransferPerMinute: must be at least 1")), "{p:?}");
        let p = with("refresh: {publicUrl: 'https://x.example.com/r', listen: nowhere}");
        assert!(p.iter().any(|p| p.starts_with("refresh.listen")), "{p:?}");
        let p = with("refresh: {publicUrl: 'https://x.example.com/r', tsl: {}}");
        assert!(p.iter().any(|p| p.contains("unknown field `tsl`")), "{p:?}");
        let bearer = "refresh: {publicUrl: 'https://x.example.com/r', \
                      consumerAuth: {mode: bearerJwt, jwksUrl: 'https://k.example.com/jwks'}}";
        assert!(with(bearer).is_empty());
    }

    #[test]
    fn profiles_reaching_one_backend_are_the_same_target() {
        let mut config = Config::parse(EXAMPLE).unwrap();
        // Another name for the same RabbitMQ, published under another URL: the same broker.
        let mut public = config.brokers["default"].clone();
        public.public_urls.insert(EndpointType::MqttTls, "mqtts://public.example.com:8883".parse().unwrap());
        config.brokers.insert("public".into(), public.clone());
        assert!(config.same_broker("default", "public") && config.same_broker("public", "default"));
        // Another vhost, another admin API or another type is another broker.
        let mut other_vhost = public.clone();
        other_vhost.rabbitmq.as_mut().unwrap().vhost = "line-2".into();
        config.brokers.insert("other-vhost".into(), other_vhost);
        assert!(!config.same_broker("default", "other-vhost"));
        let mut other_exchange = public.clone();
        other_exchange.rabbitmq.as_mut().unwrap().exchange = "line-2.topic".into();
        config.brokers.insert("other-exchange".into(), other_exchange);
        assert!(!config.same_broker("default", "other-exchange"));
        let mut other_admin = public.clone();
        other_admin.admin_url = "https://rabbitmq-2.example.com:15671".parse().unwrap();
        config.brokers.insert("other-admin".into(), other_admin);
        assert!(!config.same_broker("default", "other-admin"));
        assert!(!config.same_broker("default", "mosquitto"));
        // The same URL written with a trailing slash, or with the scheme's default port, is the
        // same; a short host name for the same service is not (names are compared as text).
        let mut slash = public.clone();
        slash.admin_url = "https://rabbitmq.example.com:15671/".parse().unwrap();
        config.brokers.insert("slash".into(), slash);
        assert!(config.same_broker("default", "slash"));
        let mut short = public.clone();
        short.admin_url = "https://rabbitmq:15671".parse().unwrap();
        config.brokers.insert("short".into(), short);
        assert!(!config.same_broker("default", "short"));
        // A name the configuration does not have is only itself.
        assert!(config.same_broker("gone", "gone") && !config.same_broker("default", "gone"));

        let mut realm = config.identity_providers["default"].clone();
        config.identity_providers.insert("alias".into(), realm.clone());
        realm.realm = "other".into();
        config.identity_providers.insert("other-realm".into(), realm);
        assert!(config.same_identity_provider("default", "alias"));
        assert!(!config.same_identity_provider("default", "other-realm"));

        let mut mount = config.secret_stores["default"].clone();
        config.secret_stores.insert("alias".into(), mount.clone());
        mount.kv_mount = "kv".into();
        config.secret_stores.insert("other-mount".into(), mount);
        assert!(config.same_secret_store("default", "alias"));
        assert!(!config.same_secret_store("default", "other-mount"));

        let mut connector = config.connectors["default"].clone();
        config.connectors.insert("alias".into(), connector.clone());
        connector.management_url = "https://other.example.com/management".parse().unwrap();
        config.connectors.insert("other".into(), connector);
        assert!(config.same_connector("default", "alias"));
        assert!(!config.same_connector("default", "other"));
        let mut port = config.connectors["default"].clone();
        port.management_url = "https://connector.example.com:443/management/".parse().unwrap();
        config.connectors.insert("port".into(), port);
        assert!(config.same_connector("default", "port"), "default port and trailing slash written out");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = r#"
connectors:
  default:
    managementUrl: http://edc.example.com/management
    apiKey: {secretRef: {name: edc, key: key}, env: EDC_KEY}
brokers:
  default:
    type: mosquitto
    adminUrl: mqtts://mosquitto:8883
    adminUsername: admin
    adminPassword: {env: MOSQ_ADMIN}
    authModes: [oauth2]
    publicUrls:
      mqtt-wss: ws://mosquitto:8080
  Bad_Name:
    type: kafka
secretStores:
  default:
    type: vault
    url: https://vault:8200
    auth: {}
    colour: blue
extra: 1
"#;
        let problems = Config::parse(text).unwrap_err();
        let rendered: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let has = |prefix: &str| rendered.iter().any(|p| p.starts_with(prefix));
        assert!(has("connectors.default.managementUrl: scheme must be https, got http"), "{rendered:#?}");
        assert!(has("connectors.default.apiKey: set exactly one of"), "{rendered:#?}");
        assert!(has("brokers.default.authModes[0]: mosquitto cannot do oauth2"), "{rendered:#?}");
        assert!(has("brokers.default.publicUrls.mqtt-wss: scheme must be wss, got ws"), "{rendered:#?}");
        assert!(has("brokers.Bad_Name: profile names must be DNS labels"), "{rendered:#?}");
        assert!(has("brokers.Bad_Name.type: unknown variant `kafka`"), "{rendered:#?}");
        assert!(has("secretStores.default.colour: unknown field `colour`"), "{rendered:#?}");
        assert!(has("extra: unknown section"), "{rendered:#?}");
        assert_eq!(rendered.len(), 8, "{rendered:#?}");
    }

    #[test]
    fn unencrypted_admin_endpoints_are_refused() {
        let text = r#"
brokers:
  default:
    type: rabbitmq
    adminUrl: http://rabbit:15672
    adminUsername: admin
    adminPassword: {file: /etc/rabbit/password}
    publicUrls: {mqtt-tls: "mqtt://rabbit:1883"}
"#;
        let rendered: Vec<String> = Config::parse(text).unwrap_err().iter().map(ToString::to_string).collect();
        assert_eq!(
            rendered,
            vec![
                "brokers.default.adminUrl: scheme must be https, got http (unencrypted connections are refused)",
                "brokers.default.publicUrls.mqtt-tls: scheme must be mqtts or ssl, got mqtt (unencrypted connections are refused)",
            ]
        );
    }

    #[test]
    fn credentials_in_urls_are_refused_without_echoing_them() {
        let text = r#"
connectors:
  default:
    managementUrl: https://admin:hunter2@edc.example.com/management
    apiKey: {env: EDC_KEY}
"#;
        let rendered: Vec<String> = Config::parse(text).unwrap_err().iter().map(ToString::to_string).collect();
        assert_eq!(rendered.len(), 1, "{rendered:?}");
        assert!(rendered[0].starts_with("connectors.default.managementUrl: must not contain a user name or password"));
        assert!(!rendered[0].contains("hunter2"));
    }

    #[test]
    fn rabbitmq_settings_default_when_left_out() {
        let text = r#"
brokers:
  default:
    type: rabbitmq
    adminUrl: https://rabbit:15671
    adminUsername: admin
    adminPassword: {file: /etc/rabbit/password}
    publicUrls: {mqtt-tls: "mqtts://rabbit:8883"}
"#;
        let config = Config::parse(text).unwrap();
        let broker = &config.brokers["default"];
        assert_eq!(broker.rabbitmq, Some(RabbitmqSettings::default()));
        assert_eq!(broker.effective_auth_modes(), vec![AuthMode::Usrpw, AuthMode::Oauth2]);
    }

    #[test]
    fn allowed_blocks_parse_and_default_to_absent() {
        let config = Config::parse(EXAMPLE).unwrap();
        let connector = config.connectors["default"].allowed.clone().expect("the example has one");
        assert_eq!(connector.namespaces, Some(vec!["*".to_owned()]));
        assert_eq!((connector.raw_odrl, connector.open_offers), (Some(true), Some(true)));
        assert_eq!(config.brokers["default"].allowed.as_ref().unwrap().topic_prefixes, Some(vec!["#".to_owned()]));
        assert!(config.identity_providers["default"].allowed.is_some());
        assert!(config.secret_stores["default"].allowed.is_some());
        // Absent: None, which plan::allowed reads as "the operator's own namespace only".
        let text = r##"
connectors:
  default:
    managementUrl: https://edc/management
    apiKey: {env: K}
    allowed: {namespaces: [team-a]}
brokers:
  default:
    type: mosquitto
    adminUrl: mqtts://mosquitto:8883
    adminUsername: admin
    adminPassword: {env: P}
    publicUrls: {mqtt-tls: "mqtts://mosquitto:8883"}
    allowed: {namespaces: [team-a, "*"], topicPrefixes: ["tenants/{namespace}/#", "#"]}
  bare:
    type: mosquitto
    adminUrl: mqtts://mosquitto:8883
    adminUsername: admin
    adminPassword: {env: P}
    publicUrls: {mqtt-tls: "mqtts://mosquitto:8883"}
"##;
        let config = Config::parse(text).unwrap_or_else(|p| panic!("{p:#?}"));
        let connector = config.connectors["default"].allowed.clone().unwrap();
        assert_eq!((connector.raw_odrl, connector.open_offers), (None, None));
        assert_eq!(config.brokers["bare"].allowed, None);
        assert_eq!(config.operator_namespace, "", "not read from the file: the operator sets it");
    }

    #[test]
    fn the_installation_is_read_checked_and_defaults_to_the_operators_namespace() {
        const BROKER: &str = "brokers:\n  default:\n    type: mosquitto\n    adminUrl: mqtts://m:8883\n    adminUsername: a\n    adminPassword: {env: P}\n    publicUrls: {mqtt-tls: \"mqtts://m:8883\"}\n";
        let mut config = Config::parse(BROKER).unwrap();
        assert_eq!(config.installation(), "default", "nothing known yet");
        config.operator_namespace = "mqtt-system".into();
        assert_eq!(config.installation(), "mqtt-system");
        let config = Config::parse(&format!("installation: prod.mqtt-dsp-operator\n{BROKER}")).unwrap();
        assert_eq!(config.installation(), "prod.mqtt-dsp-operator");
        for bad in ["Prod", "a b", "a,b", "a/b", "-a", "a#", "\"\""] {
            let problems = Config::parse(&format!("installation: {bad}\n{BROKER}")).unwrap_err();
            assert_eq!(problems[0].path, "installation", "{bad}: {problems:?}");
        }
    }

    #[test]
    fn allowed_blocks_are_validated_with_their_paths() {
        let text = r##"
connectors:
  default:
    managementUrl: https://edc/management
    apiKey: {env: K}
    allowed: {namespaces: [Team_A, ""], topicPrefixes: ["#"]}
secretStores:
  default:
    type: vault
    url: https://vault
    auth: {token: {env: T}}
    allowed: {namespaces: ["*"], rawOdrl: true}
brokers:
  default:
    type: mosquitto
    adminUrl: mqtts://mosquitto:8883
    adminUsername: admin
    adminPassword: {env: P}
    publicUrls: {mqtt-tls: "mqtts://mosquitto:8883"}
    allowed: {namespaces: [-x], topicPrefixes: ["", "a/#/b", "a/b#", "{tenant}/#", "ok/{namespace}/+/#"]}
"##;
        let problems = Config::parse(text).unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                // Fields of another kind of profile are unknown fields.
                "connectors.default.allowed.topicPrefixes",
                "secretStores.default.allowed.rawOdrl",
                "brokers.default.allowed.namespaces[0]",
                "brokers.default.allowed.topicPrefixes[0]",
                "brokers.default.allowed.topicPrefixes[1]",
                "brokers.default.allowed.topicPrefixes[2]",
                "brokers.default.allowed.topicPrefixes[3]",
            ],
            "{problems:#?}"
        );
        let text = text.replace(", topicPrefixes: [\"#\"]}", "}").replace(", rawOdrl: true}", "}");
        let problems = Config::parse(&text).unwrap_err();
        let rendered: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            rendered[0].starts_with("connectors.default.allowed.namespaces[0]: \"Team_A\" is neither"),
            "{rendered:#?}"
        );
        assert!(rendered[1].starts_with("connectors.default.allowed.namespaces[1]: "), "{rendered:#?}");
    }

    #[test]
    fn an_empty_file_is_refused_with_a_reason() {
        let problems = Config::parse("").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("nothing could be reconciled"));
    }
}
