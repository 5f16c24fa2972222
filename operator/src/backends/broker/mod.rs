//! The MQTT broker: identities with read-only access to topic filters, suspended, resumed and
//! removed.

pub mod emqx;
pub mod mosquitto;
pub mod rabbitmq;

use async_trait::async_trait;

use super::identity::HardcodedClaim;
use super::{BackendError, Outcome, Owner, SecretString, System};
use crate::api::AuthMode;

/// A broker user (usrpw mode) as the broker should hold it.
#[derive(Clone, Debug)]
pub struct UserGrant {
    /// Username (deterministic, from the resource).
    pub username: String,
    /// Password, set when the user is created. Brokers do not reveal passwords, so a resync
    /// cannot compare it; [`Broker::set_password`] rotates it explicitly.
    pub password: SecretString,
    /// Topic filters the user may subscribe to and receive from (never publish to).
    pub topics: Vec<String>,
    /// A disabled user cannot connect; disabling closes its live sessions.
    pub enabled: bool,
    /// The resource it belongs to.
    pub owner: Owner,
}

/// What a token must carry for the broker to grant read access (oauth2 mode).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRequirements {
    /// Audience the broker checks (`aud`).
    pub audience: String,
    /// Claims that carry the topic permissions.
    pub claims: Vec<HardcodedClaim>,
}

/// What the operator needs from an MQTT broker.
#[async_trait]
pub trait Broker: Send + Sync {
    /// Which broker this is.
    fn system(&self) -> System;
    /// Whether the broker can authenticate consumers in this mode.
    fn supports(&self, mode: AuthMode) -> bool;
    /// Creates the user with exactly `topics` readable, or brings it there; no write when it
    /// matches. Disabling closes the user's live sessions.
    async fn ensure_user(&self, grant: &UserGrant) -> Result<Outcome, BackendError>;
    /// [`Broker::ensure_user`] with a password that is new (the secret store had none, or access
    /// resumes): a user that already existed gets it too, since brokers do not reveal passwords
    /// to compare.
    async fn ensure_user_with_password(&self, grant: &UserGrant) -> Result<Outcome, BackendError> {
        let outcome = self.ensure_user(grant).await?;
        if outcome == Outcome::Created {
            return Ok(outcome);
        }
        self.set_password(&grant.username, &grant.password, &grant.owner).await
    }
    /// Creates a user that status says was never made (a new transfer), with the grant's
    /// password, in the fewest calls the broker allows: no read before the write. A user that
    /// exists after all (an answer lost, a crash before status was written) is treated as by
    /// [`Broker::ensure_user_with_password`]. Brokers whose creation is not cheaper than that
    /// keep this default.
    async fn create_user(&self, grant: &UserGrant) -> Result<Outcome, BackendError> {
        self.ensure_user_with_password(grant).await
    }
    /// Sets a new password for a user of ours.
    async fn set_password(
        &self,
        username: &str,
        password: &SecretString,
        owner: &Owner,
    ) -> Result<Outcome, BackendError>;
    /// Removes a user of ours and what grants it access (absent is success); live sessions end.
    async fn remove_user(&self, username: &str, owner: &Owner) -> Result<Outcome, BackendError>;
    /// Closes every live session of an identity (a usrpw user, or an oauth2 token's subject).
    async fn disconnect(&self, identity: &str) -> Result<u32, BackendError>;
    /// The role through which the broker grants a user its topics, when it has roles
    /// (Mosquitto's dynamic security: a role of the user's name); recorded in status.
    fn role_of(&self, _username: &str) -> Option<String> {
        None
    }
    /// The names a transfer's `oauth2` sessions may carry at this broker: the MQTT username the
    /// DataAddress gives (RabbitMQ lists connections under it) and the token's subject (brokers
    /// that take the identity from the token).
    fn session_names(&self, username: &str, subject: Option<&str>) -> Vec<String> {
        let mut names = vec![username.to_owned()];
        names.extend(subject.filter(|s| *s != username).map(str::to_owned));
        names
    }
    /// oauth2 mode: what a token must carry to read `topics`.
    /// [`BackendError::Unsupported`] for brokers that cannot check JWTs (Mosquitto).
    fn token_requirements(&self, topics: &[String]) -> Result<TokenRequirements, BackendError>;
}
