//! The secret store the connector resolves aliases from.

pub mod vault;

use async_trait::async_trait;

use super::{BackendError, Outcome, Owner, SecretString};

/// Where a secret lives: `<mount>/data/<folder>/<alias>` in Vault terms. The connector finds it
/// by `alias` (and its configured folder).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SecretLocation {
    /// Folder the connector prefixes aliases with (`edc.vault.hashicorp.folder`), if any.
    pub folder: Option<String>,
    /// The alias.
    pub alias: String,
}

/// What the operator needs from a secret store.
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// Writes `value` at `at` unless it is already there; refuses to overwrite a secret the
    /// operator did not create ([`BackendError::Foreign`]).
    async fn ensure_secret(
        &self,
        at: &SecretLocation,
        value: &SecretString,
        owner: &Owner,
    ) -> Result<Outcome, BackendError>;
    /// Writes `value` at `at` where status says nothing was ever written (a new transfer), in
    /// the fewest calls the store allows without risking a foreign key; a key that exists after
    /// all is treated as by [`SecretStore::ensure_secret`]. Stores whose creation is not cheaper
    /// than that keep this default.
    async fn create_secret(
        &self,
        at: &SecretLocation,
        value: &SecretString,
        owner: &Owner,
    ) -> Result<Outcome, BackendError> {
        self.ensure_secret(at, value, owner).await
    }
    /// Reads a secret of ours; None when absent. A foreign secret is an error, not a value.
    async fn read_secret(&self, at: &SecretLocation, owner: &Owner) -> Result<Option<SecretString>, BackendError>;
    /// Deletes a secret of ours with all its versions (absent is success).
    async fn delete_secret(&self, at: &SecretLocation, owner: &Owner) -> Result<Outcome, BackendError>;
    /// The path shown in status (e.g. `secret/data/edc/<alias>`); not a secret.
    fn path(&self, at: &SecretLocation) -> String;
}
