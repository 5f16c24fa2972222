//! The dataspace connector: the asset, its policies and its contract definition.

pub mod edc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::{BackendError, Outcome, Owner};
use crate::api::{AuthMode, EndpointType};
use crate::config::EndpointTypeSpelling;

/// An asset as the connector should hold it.
#[derive(Clone, Debug, PartialEq)]
pub struct AssetDefinition {
    /// Asset id (the DSP dataset id).
    pub id: String,
    /// Public properties, compacted against the EDC vocabulary (`name`, `description`, …).
    pub properties: Map<String, Value>,
    /// Private properties from the user; the client adds the ownership markers.
    pub private_properties: Map<String, Value>,
    /// The dataAddress: `type: Mqtt`, `baseUrl`, `mqttEndpointType`, `oauth2:tokenUrl`,
    /// `oauth2:clientId`, `oauth2:clientSecretKeyAlias` (or `username`, `passwordAlias`), …
    /// Keys are written as given: with only `@vocab` in the request context, `oauth2:tokenUrl`
    /// stays a plain key (domain.md §2, the JSON-LD trap).
    pub data_address: Map<String, Value>,
    /// The resource it belongs to.
    pub owner: Owner,
}

/// A policy definition.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyDefinition {
    /// Policy definition id.
    pub id: String,
    /// The ODRL policy object (`{"@context": "http://www.w3.org/ns/odrl.jsonld", "@type": "Set", "permission": […]}`).
    pub policy: Value,
    /// The resource it belongs to.
    pub owner: Owner,
}

/// A contract definition offering one asset.
#[derive(Clone, Debug, PartialEq)]
pub struct ContractDefinition {
    /// Contract definition id.
    pub id: String,
    /// Access policy id.
    pub access_policy_id: String,
    /// Contract policy id.
    pub contract_policy_id: String,
    /// The one asset it selects (`https://w3id.org/edc/v0.0.1/ns/id = <asset id>`).
    pub asset_id: String,
    /// The resource it belongs to.
    pub owner: Owner,
}

/// The ids of everything that makes up one offer, for teardown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferIds {
    /// Contract definition id.
    pub contract_definition_id: String,
    /// Policy definition ids (access, contract; may be the same).
    pub policy_ids: Vec<String>,
    /// Asset id.
    pub asset_id: String,
}

/// What the operator needs from a dataspace connector.
#[async_trait]
pub trait Connector: Send + Sync {
    /// Creates the asset or brings it to `asset`; no write when it already matches.
    async fn ensure_asset(&self, asset: &AssetDefinition) -> Result<Outcome, BackendError>;
    /// Creates the policy definition or brings it to `policy`.
    async fn ensure_policy(&self, policy: &PolicyDefinition) -> Result<Outcome, BackendError>;
    /// Creates the contract definition or brings it to `definition`.
    async fn ensure_contract_definition(&self, definition: &ContractDefinition) -> Result<Outcome, BackendError>;
    /// Deletes a contract definition of ours (absent is success).
    async fn delete_contract_definition(&self, id: &str, owner: &Owner) -> Result<Outcome, BackendError>;
    /// Deletes a policy definition of ours (absent is success).
    async fn delete_policy(&self, id: &str, owner: &Owner) -> Result<Outcome, BackendError>;
    /// Deletes an asset of ours (absent is success). [`BackendError::InUse`] when a contract
    /// agreement references it: agreements are never deleted, so waiting does not help.
    async fn delete_asset(&self, id: &str, owner: &Owner) -> Result<Outcome, BackendError>;

    /// Removes an offer in the only order the connector accepts: contract definition, then
    /// policies, then asset. Stops at the first error, leaving the rest for a retry.
    async fn teardown(&self, ids: &OfferIds, owner: &Owner) -> Result<(), BackendError> {
        self.delete_contract_definition(&ids.contract_definition_id, owner).await?;
        let mut seen = Vec::new();
        for id in &ids.policy_ids {
            if !seen.contains(id) {
                self.delete_policy(id, owner).await?;
                seen.push(id.clone());
            }
        }
        self.delete_asset(&ids.asset_id, owner).await?;
        Ok(())
    }
}

/// The `mqttEndpointType` value written into the connector for this endpoint and auth mode.
///
/// ADR 012 spells the transport only (`mqtt-wss`, `mqtt-tls`, `mqtt-tcp-basic`); the factoryx-edc
/// reference connector accepts only `mqtt-{wss|tcp}-{basic|oauth2}` and answers 400 otherwise.
pub fn mqtt_endpoint_type(spelling: EndpointTypeSpelling, endpoint: EndpointType, mode: AuthMode) -> String {
    match spelling {
        EndpointTypeSpelling::Adr => endpoint.as_str().to_owned(),
        EndpointTypeSpelling::Factoryx => {
            let transport = match endpoint {
                EndpointType::MqttWss => "wss",
                EndpointType::MqttTls | EndpointType::MqttTcpBasic => "tcp",
            };
            let auth = match mode {
                AuthMode::Oauth2 => "oauth2",
                AuthMode::Usrpw => "basic",
            };
            format!("mqtt-{transport}-{auth}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_type_spellings() {
        use AuthMode::*;
        use EndpointType::*;
        use EndpointTypeSpelling::*;
        assert_eq!(mqtt_endpoint_type(Adr, MqttWss, Oauth2), "mqtt-wss");
        assert_eq!(mqtt_endpoint_type(Adr, MqttTls, Usrpw), "mqtt-tls");
        assert_eq!(mqtt_endpoint_type(Factoryx, MqttWss, Oauth2), "mqtt-wss-oauth2");
        assert_eq!(mqtt_endpoint_type(Factoryx, MqttTls, Usrpw), "mqtt-tcp-basic");
        assert_eq!(mqtt_endpoint_type(Factoryx, MqttTcpBasic, Usrpw), "mqtt-tcp-basic");
    }
}
