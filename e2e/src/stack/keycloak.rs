//! The dev stack's `default` identity provider: the real Keycloak of this test binary
//! ([`crate::systems::keycloak`], shared by every stack of the binary) with a realm of the
//! stack's own, behind a proxy of the stack's own ([`crate::systems::proxy`]) for the request log
//! and fault switches.
//!
//! Tests inspect the realm as its administrator would: the master realm's admin through the Admin
//! API, straight to Keycloak (never through the proxy). Clients come back as the double's
//! [`StoredClient`], filled from the client representation, its secret and its service-account
//! user; logins are Keycloak's own `CLIENT_LOGIN` events of the realm.

use reqwest::Method;
use serde_json::{Value, json};

use crate::doubles::DoubleServer;
use crate::doubles::keycloak::{StoredClient, StoredMapper};
use crate::systems::keycloak::{Keycloak, Realm};
use crate::systems::proxy;
use crate::tls::TestCa;

/// The stack's `default` identity provider: a realm of the real Keycloak behind the stack's proxy.
pub struct StackKeycloak {
    /// The proxy the operator talks to: its request log and fault switches (`base_url` is what
    /// the operator's `adminUrl` names).
    pub server: DoubleServer,
    /// The stack's realm (its URLs are Keycloak's own, not the proxy's).
    pub realm: Realm,
    keycloak: &'static Keycloak,
}

impl StackKeycloak {
    /// The binary's shared Keycloak (started on first use), a new realm (named `{prefix}-…`)
    /// holding the operator's client, and a proxy in front of Keycloak.
    pub async fn start(ca: &TestCa, prefix: &str, operator_client_id: &str, operator_secret: &str) -> StackKeycloak {
        let keycloak = Keycloak::shared().await.unwrap_or_else(|e| panic!("{e}"));
        let realm =
            keycloak.create_realm(prefix, operator_client_id, operator_secret).await.unwrap_or_else(|e| panic!("{e}"));
        let server = proxy::start(&keycloak.base_url(), ca).await.expect("the Keycloak proxy");
        StackKeycloak { server, realm, keycloak }
    }

    /// The realm's name.
    pub fn realm_name(&self) -> &str {
        &self.realm.name
    }

    /// The token endpoint through the proxy: what the operator hands out (`oauth2:tokenUrl`,
    /// a transfer's `refreshEndpoint`).
    pub fn token_url(&self) -> String {
        format!("{}/realms/{}/protocol/openid-connect/token", self.server.base_url, self.realm.name)
    }

    /// The JWKS endpoint through the proxy.
    pub fn jwks_url(&self) -> String {
        format!("{}/realms/{}/protocol/openid-connect/certs", self.server.base_url, self.realm.name)
    }

    /// An Admin API call on the stack's realm as the master realm's admin (`path` below
    /// `/admin/realms/{realm}/`, empty for the realm itself).
    pub async fn admin(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let path = if path.is_empty() { self.realm.name.clone() } else { format!("{}/{path}", self.realm.name) };
        self.keycloak.admin(method, &path, body).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// The client with this `clientId`, as Keycloak holds it.
    pub async fn client(&self, client_id: &str) -> Option<StoredClient> {
        let query = url::form_urlencoded::byte_serialize(client_id.as_bytes()).collect::<String>();
        let (status, list) = self.admin(Method::GET, &format!("clients?clientId={query}"), None).await;
        assert_eq!(status, 200, "{list}");
        // `clientId=` is a search; the exact match is ours.
        let representation = list.as_array()?.iter().find(|c| c["clientId"] == client_id)?.clone();
        Some(self.stored(&representation).await)
    }

    /// Every client of the realm (Keycloak's own included).
    pub async fn clients(&self) -> Vec<StoredClient> {
        let (status, list) = self.admin(Method::GET, "clients?max=10000", None).await;
        assert_eq!(status, 200, "{list}");
        let mut clients = Vec::new();
        for representation in list.as_array().into_iter().flatten() {
            clients.push(self.stored(representation).await);
        }
        clients
    }

    /// Successful `client_credentials` grants of `client_id` so far (Keycloak's `CLIENT_LOGIN`
    /// events of the realm).
    pub async fn logins(&self, client_id: &str) -> u64 {
        let query = url::form_urlencoded::byte_serialize(client_id.as_bytes()).collect::<String>();
        let (status, events) =
            self.admin(Method::GET, &format!("events?type=CLIENT_LOGIN&client={query}&max=100000"), None).await;
        assert_eq!(status, 200, "{events}");
        events.as_array().map_or(0, |e| e.len() as u64)
    }

    /// Changes a client behind the operator's back, as an administrator would (the client's
    /// fields through `PUT clients/{id}`, mappers one by one); panics when it does not exist.
    pub async fn edit_client(&self, client_id: &str, edit: impl FnOnce(&mut StoredClient)) {
        let before = self.client(client_id).await.unwrap_or_else(|| panic!("client {client_id} to edit"));
        let mut after = before.clone();
        edit(&mut after);
        let id = &before.id;
        let body = client_update(&before, &after);
        let (status, answer) = self.admin(Method::PUT, &format!("clients/{id}"), Some(&body)).await;
        assert_eq!(status, 204, "{answer}");
        let mapper_body = |m: &StoredMapper, with_id: bool| {
            let mut rep = json!({"name": m.name, "protocol": m.protocol, "protocolMapper": m.protocol_mapper,
                                 "config": m.config});
            if with_id {
                rep["id"] = Value::from(m.id.clone());
            }
            rep
        };
        for old in &before.protocol_mappers {
            let path = format!("clients/{id}/protocol-mappers/models/{}", old.id);
            match after.protocol_mappers.iter().find(|m| m.id == old.id) {
                None => {
                    let (status, answer) = self.admin(Method::DELETE, &path, None).await;
                    assert_eq!(status, 204, "{answer}");
                }
                Some(new) if new != old => {
                    let (status, answer) = self.admin(Method::PUT, &path, Some(&mapper_body(new, true))).await;
                    assert_eq!(status, 204, "{answer}");
                }
                Some(_) => {}
            }
        }
        for new in after.protocol_mappers.iter().filter(|m| !before.protocol_mappers.iter().any(|o| o.id == m.id)) {
            let path = format!("clients/{id}/protocol-mappers/models");
            let (status, answer) = self.admin(Method::POST, &path, Some(&mapper_body(new, false))).await;
            assert_eq!(status, 201, "{answer}");
        }
    }

    /// Removes the realm (at teardown: realms cost Keycloak memory).
    pub async fn delete_realm(&self) -> Result<(), String> {
        match self.admin(Method::DELETE, "", None).await {
            (204, _) => Ok(()),
            (status, body) => Err(format!("deleting realm {}: {status} {body}", self.realm.name)),
        }
    }

    /// A client representation with its secret and service-account user, as the double stores it.
    async fn stored(&self, representation: &Value) -> StoredClient {
        let id = representation["id"].as_str().unwrap_or_default();
        let secret = match self.admin(Method::GET, &format!("clients/{id}/client-secret"), None).await {
            (200, secret) => secret["value"].as_str().unwrap_or_default().to_owned(),
            _ => String::new(),
        };
        // Keycloak made it: the test registers it for the log leak check.
        crate::logs::register_secret(&secret);
        let user = match self.admin(Method::GET, &format!("clients/{id}/service-account-user"), None).await {
            (200, user) => user["id"].as_str().unwrap_or_default().to_owned(),
            _ => String::new(),
        };
        StoredClient::from_representation(representation, secret, user)
    }
}

/// The body of a `PUT /clients/{id}` that turns `before` into `after` as Keycloak holds it (an
/// attribute dropped in `after` is sent empty: Keycloak keeps attributes a PUT leaves out).
pub fn client_update(before: &StoredClient, after: &StoredClient) -> Value {
    let mut attributes: serde_json::Map<String, Value> =
        before.attributes.keys().map(|k| (k.clone(), Value::from(""))).collect();
    attributes.extend(after.attributes.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))));
    json!({
        "clientId": after.client_id,
        "description": after.description,
        "enabled": after.enabled,
        "publicClient": after.public_client,
        "serviceAccountsEnabled": after.service_accounts_enabled,
        "standardFlowEnabled": after.standard_flow_enabled,
        "implicitFlowEnabled": after.implicit_flow_enabled,
        "directAccessGrantsEnabled": after.direct_access_grants_enabled,
        "clientAuthenticatorType": after.client_authenticator_type,
        "attributes": attributes,
    })
}
