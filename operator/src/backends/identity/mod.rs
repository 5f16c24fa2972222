//! The identity provider: one confidential service-account client per identity, its secret,
//! and tokens issued for it.

pub mod keycloak;

use async_trait::async_trait;
use serde_json::Value;

use super::{BackendError, Outcome, Owner, SecretString};

/// A claim with a fixed value that every token of the client carries (Keycloak's hardcoded-claim
/// mapper). Strings are mapped as `String`, anything else as `JSON`.
#[derive(Clone, Debug, PartialEq)]
pub struct HardcodedClaim {
    /// Claim name, e.g. `scope` or `acl`.
    pub name: String,
    /// Claim value.
    pub value: Value,
}

/// A machine client as the identity provider should hold it.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientDefinition {
    /// The client id (not the provider's internal id).
    pub client_id: String,
    /// Human-readable description.
    pub description: String,
    /// Disabled clients get no tokens (suspend).
    pub enabled: bool,
    /// Access-token lifetime in seconds; None: the realm's default.
    pub access_token_lifespan_seconds: Option<u32>,
    /// Issue refresh tokens on the client_credentials grant.
    pub refresh_tokens_for_client_credentials: bool,
    /// Audience added to access tokens (audience mapper), e.g. the broker's resource server id.
    pub audience: Option<String>,
    /// Fixed claims that carry, e.g., topic permissions for the broker.
    pub claims: Vec<HardcodedClaim>,
    /// The resource it belongs to.
    pub owner: Owner,
}

/// Tokens from one client_credentials grant. Debug never shows the tokens.
#[derive(Clone, Debug)]
pub struct TokenSet {
    /// The access token (a JWT).
    pub access_token: SecretString,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// A refresh token, when the client is configured to get one.
    pub refresh_token: Option<SecretString>,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: Option<u64>,
}

/// What the operator needs from an identity provider.
#[async_trait]
pub trait IdentityProvider: Send + Sync {
    /// Creates the client (with its mappers) or brings it to `client`; no write when it matches.
    async fn ensure_client(&self, client: &ClientDefinition) -> Result<Outcome, BackendError>;
    /// The current secret of a client of `owner`'s (never of anyone else's client).
    async fn client_secret(&self, client_id: &str, owner: &Owner) -> Result<SecretString, BackendError>;
    /// Deletes a client of ours (absent is success).
    async fn delete_client(&self, client_id: &str, owner: &Owner) -> Result<Outcome, BackendError>;
    /// Issues tokens for a client (client_credentials grant at the token endpoint).
    async fn issue_token(&self, client_id: &str, client_secret: &SecretString) -> Result<TokenSet, BackendError>;
    /// The token URL given to the connector and consumers.
    fn token_url(&self) -> String;
}
