//! An inventory of everything the operator can have created in a dev stack's backends and in its
//! Kubernetes namespace: what "uninstall leaves nothing behind" is checked against.
//!
//! Each backend is asked as its own administrator would ask it (the real EDC's Management API,
//! Keycloak's Admin API and OpenBao's KV v2 API, the doubles' state, Mosquitto's saved
//! dynamic-security state, RabbitMQ's management API, the Kubernetes API), not through the
//! operator's clients, so an object the operator forgot is found even when the operator no longer
//! knows its name. What the stack itself brings (Mosquitto's `admin` and `publisher`, RabbitMQ's
//! `admin`, the operator's own Keycloak client) is not counted.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::brokers::rabbitmq;
use crate::stack::DevStack;

/// Prefix of every identity-provider client the operator creates (assets and transfers).
pub const CLIENT_PREFIX: &str = "dsp-mqtt-";
/// Mosquitto clients and roles the dev stack creates itself.
pub const MOSQUITTO_OWN: &[&str] = &["admin", "publisher"];

/// What is there, per backend, as readable names (`"asset e2e-…-line-1"`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Assets, policy definitions and contract definitions in both connectors.
    pub connectors: Vec<String>,
    /// Keycloak clients whose id starts with [`CLIENT_PREFIX`].
    pub identity_provider: Vec<String>,
    /// Every Vault key below the stack's mount (a recursive KV v2 `LIST`).
    pub secret_store: Vec<String>,
    /// Mosquitto clients, roles and groups other than the stack's own.
    pub mosquitto: Vec<String>,
    /// RabbitMQ users other than the admin (empty when the stack has no RabbitMQ).
    pub rabbitmq: Vec<String>,
    /// Secrets in the stack's namespace, except what Kubernetes makes for service accounts.
    pub kubernetes: Vec<String>,
}

impl Inventory {
    /// Takes the inventory now. Panics when a backend cannot be asked (the check would be void).
    pub async fn take(stack: &DevStack) -> Inventory {
        let mut connectors = Vec::new();
        // The stock connector is the real EDC, shared by the binary's stacks: this stack's objects.
        let edc = &stack.edc;
        connectors.extend(edc.assets().await.into_iter().map(|a| format!("default: asset {}", a.id)));
        connectors.extend(edc.policies().await.into_iter().map(|p| format!("default: policy {}", p.id)));
        connectors.extend(
            edc.contract_definitions().await.into_iter().map(|c| format!("default: contract definition {}", c.id)),
        );
        let state = &stack.edc_fx.state;
        connectors.extend(state.assets().into_iter().map(|a| format!("factoryx: asset {}", a.id)));
        connectors.extend(state.policies().into_iter().map(|p| format!("factoryx: policy {}", p.id)));
        connectors.extend(
            state.contract_definitions().into_iter().map(|c| format!("factoryx: contract definition {}", c.id)),
        );
        let identity_provider = stack
            .keycloak
            .clients()
            .await
            .into_iter()
            .filter(|c| c.client_id.starts_with(CLIENT_PREFIX))
            .map(|c| format!("client {}", c.client_id))
            .collect();
        let secret_store = stack.vault.keys().await.into_iter().map(|k| format!("{}/{k}", stack.vault.mount)).collect();
        Inventory {
            connectors,
            identity_provider,
            secret_store,
            mosquitto: mosquitto_objects(&stack.mosquitto.dynsec_state()),
            rabbitmq: rabbitmq_users(stack).await,
            kubernetes: secrets(stack).await,
        }
    }

    /// Every object, prefixed with its backend (`"Vault: secret/edc/…"`), for a failure message.
    pub fn leftovers(&self) -> Vec<String> {
        let sections = [
            ("connector", &self.connectors),
            ("Keycloak", &self.identity_provider),
            ("Vault", &self.secret_store),
            ("Mosquitto", &self.mosquitto),
            ("RabbitMQ", &self.rabbitmq),
            ("Kubernetes", &self.kubernetes),
        ];
        sections.iter().flat_map(|(backend, names)| names.iter().map(move |n| format!("{backend}: {n}"))).collect()
    }

    /// Nothing anywhere.
    pub fn is_empty(&self) -> bool {
        self.leftovers().is_empty()
    }
}

/// The objects of the operator in the stack's backends and namespace (see [`Inventory`]).
pub async fn leftovers(stack: &DevStack) -> Vec<String> {
    Inventory::take(stack).await.leftovers()
}

fn mosquitto_objects(state: &serde_json::Value) -> Vec<String> {
    let mut found = Vec::new();
    for (list, key, what) in [("clients", "username", "client"), ("roles", "rolename", "role")] {
        for item in state[list].as_array().into_iter().flatten() {
            let name = item[key].as_str().unwrap_or("?");
            if !MOSQUITTO_OWN.contains(&name) {
                found.push(format!("{what} {name}"));
            }
        }
    }
    for group in state["groups"].as_array().into_iter().flatten() {
        found.push(format!("group {}", group["groupname"].as_str().unwrap_or("?")));
    }
    found
}

async fn rabbitmq_users(stack: &DevStack) -> Vec<String> {
    let Some(rabbit) = &stack.rabbitmq else { return Vec::new() };
    let users: serde_json::Value = stack
        .http()
        .get(format!("{}/api/users", rabbit.management_url()))
        .basic_auth(rabbitmq::ADMIN_USER, Some(rabbitmq::ADMIN_PASSWORD))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("RabbitMQ lists its users")
        .json()
        .await
        .expect("RabbitMQ's user list is JSON");
    users
        .as_array()
        .expect("RabbitMQ's user list is an array")
        .iter()
        .filter_map(|u| u["name"].as_str())
        .filter(|name| *name != rabbitmq::ADMIN_USER)
        .map(|name| format!("user {name}"))
        .collect()
}

async fn secrets(stack: &DevStack) -> Vec<String> {
    let api: Api<Secret> = stack.api();
    let list = api.list(&ListParams::default()).await.expect("list Secrets in the stack's namespace");
    list.items
        .into_iter()
        // Some distributions still make token and pull Secrets for every service account.
        .filter(|s| {
            let by_kubernetes = matches!(
                s.type_.as_deref(),
                Some(
                    "kubernetes.io/service-account-token"
                        | "kubernetes.io/dockercfg"
                        | "kubernetes.io/dockerconfigjson"
                )
            ) && s.annotations().contains_key("kubernetes.io/service-account.name");
            !by_kubernetes
        })
        .map(|s| format!("Secret {}/{}", stack.namespace, s.name_any()))
        .collect()
}
