//! External objects as data: one typed reference per object an asset or a transfer owns in a
//! backend. A plan names the references it wants ([`asset_objects`], [`transfer_objects`]);
//! status records the ones that exist ([`asset_recorded`], [`transfer_recorded`]). The converge
//! step (`crate::converge`) makes the first set and removes what the second has beyond it.

use crate::api::{MqttAssetStatus, MqttTransferStatus};
use crate::backends::secrets::SecretLocation;

use super::asset::{AssetIdentity, AssetPlan};
use super::transfer::TransferPlan;

/// The configuration section a profile belongs to: which backend an object lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Section {
    /// `connectors`.
    Connectors,
    /// `identityProviders`.
    IdentityProviders,
    /// `secretStores`.
    SecretStores,
    /// `brokers`.
    Brokers,
}

impl Section {
    /// Its name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Connectors => "connectors",
            Section::IdentityProviders => "identityProviders",
            Section::SecretStores => "secretStores",
            Section::Brokers => "brokers",
        }
    }
}

/// What kind of object. The order is the removal order: dependants first (a contract
/// definition names its policies and asset), then what grants access (broker user, sessions,
/// identity client) before the secret store entry holding its password or client secret, so
/// that a failing secret store never delays cutting a consumer off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A connector contract definition.
    ContractDefinition,
    /// A connector policy definition.
    Policy,
    /// A connector asset.
    ConnectorAsset,
    /// A broker user (and, where the broker grants through roles, its role).
    BrokerUser,
    /// The live broker sessions of a name the operator issued tokens for (`oauth2`): nothing to
    /// make; removing them closes them.
    Sessions,
    /// An identity-provider client.
    IdentityClient,
    /// An entry in the secret store.
    Secret,
}

impl Kind {
    /// The section of the profile it lives under.
    pub fn section(self) -> Section {
        match self {
            Kind::ContractDefinition | Kind::Policy | Kind::ConnectorAsset => Section::Connectors,
            Kind::BrokerUser | Kind::Sessions => Section::Brokers,
            Kind::Secret => Section::SecretStores,
            Kind::IdentityClient => Section::IdentityProviders,
        }
    }
}

/// One external object: where (profile), what (kind) and its name. Never a secret value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExternalRef {
    /// Kind.
    pub kind: Kind,
    /// The profile it is reached through (`None`: status from before profiles were recorded).
    pub profile: Option<String>,
    /// Its id, username, client id, or (secrets) alias.
    pub name: String,
    /// The secret store folder (secrets only).
    pub folder: Option<String>,
}

impl ExternalRef {
    /// A reference of `kind` named `name` under `profile`.
    pub fn new(kind: Kind, profile: impl Into<String>, name: impl Into<String>) -> Self {
        Self { kind, profile: Some(profile.into()), name: name.into(), folder: None }
    }

    /// A secret-store entry.
    pub fn secret(profile: impl Into<String>, at: &SecretLocation) -> Self {
        Self { kind: Kind::Secret, profile: Some(profile.into()), name: at.alias.clone(), folder: at.folder.clone() }
    }

    /// The secret-store location (for [`Kind::Secret`]).
    pub fn location(&self) -> SecretLocation {
        SecretLocation { folder: self.folder.clone(), alias: self.name.clone() }
    }

    /// How Events and messages name it.
    pub fn describe(&self) -> String {
        match self.kind {
            Kind::ContractDefinition => format!("contract definition {}", self.name),
            Kind::Policy => format!("policy definition {}", self.name),
            Kind::ConnectorAsset => format!("connector asset {}", self.name),
            Kind::BrokerUser => format!("broker user {}", self.name),
            Kind::Sessions => format!("broker sessions of {}", self.name),
            Kind::IdentityClient => format!("identity client {}", self.name),
            Kind::Secret => match &self.folder {
                Some(folder) => format!("secret alias {} in folder {folder}", self.name),
                None => format!("secret alias {}", self.name),
            },
        }
    }
}

/// Appends `r` unless an identical reference is there.
pub fn add(list: &mut Vec<ExternalRef>, r: ExternalRef) {
    if !list.contains(&r) {
        list.push(r);
    }
}

/// The objects an asset plan wants, in the order they are made.
pub fn asset_objects(plan: &AssetPlan) -> Vec<ExternalRef> {
    let p = &plan.profiles;
    let mut out = Vec::new();
    match &plan.identity {
        AssetIdentity::Oauth2 { client } => {
            if let Some(idp) = &p.identity_provider {
                out.push(ExternalRef::new(Kind::IdentityClient, idp, &client.client_id));
            }
        }
        AssetIdentity::Usrpw { username, .. } => out.push(ExternalRef::new(Kind::BrokerUser, &p.broker, username)),
        AssetIdentity::PerTransfer => {}
    }
    if plan.identity != AssetIdentity::PerTransfer {
        out.push(ExternalRef::secret(&p.secret_store, &plan.secret));
    }
    out.push(ExternalRef::new(Kind::ConnectorAsset, &p.connector, &plan.asset.id));
    for policy in &plan.policies {
        add(&mut out, ExternalRef::new(Kind::Policy, &p.connector, &policy.id));
    }
    out.push(ExternalRef::new(Kind::ContractDefinition, &p.connector, &plan.contract_definition.id));
    out
}

/// The objects an asset's status records.
pub fn asset_recorded(status: &MqttAssetStatus) -> Vec<ExternalRef> {
    let mut out = Vec::new();
    let at = |kind, profile: &Option<String>, name: &Option<String>| {
        name.as_ref().map(|name| ExternalRef { kind, profile: profile.clone(), name: name.clone(), folder: None })
    };
    if let Some(c) = &status.connector {
        // A partial record (no contract definition or asset id) is from an old operator that
        // wrote them together; it names nothing to remove on its own.
        if c.contract_definition_id.is_some() && c.asset_id.is_some() {
            let ids = [
                at(Kind::ContractDefinition, &c.profile, &c.contract_definition_id),
                at(Kind::Policy, &c.profile, &c.access_policy_id),
                at(Kind::Policy, &c.profile, &c.contract_policy_id),
                at(Kind::ConnectorAsset, &c.profile, &c.asset_id),
            ];
            ids.into_iter().flatten().for_each(|r| add(&mut out, r));
        }
    }
    if let Some(b) = &status.broker {
        out.extend(at(Kind::BrokerUser, &b.profile, &b.user));
    }
    if let Some(s) = &status.secret
        && let Some(alias) = &s.alias
    {
        out.push(ExternalRef {
            kind: Kind::Secret,
            profile: s.profile.clone(),
            name: alias.clone(),
            folder: s.folder.clone(),
        });
    }
    if let Some(i) = &status.identity {
        out.extend(at(Kind::IdentityClient, &i.profile, &i.client_id));
    }
    out
}

/// The objects a granted (or suspended) transfer plan wants: its client (`oauth2`) or broker
/// user (`usrpw`), its secret, and in `oauth2` the sessions of the names its tokens carry
/// (`sessions`: the broker's names for them).
pub fn transfer_objects(plan: &TransferPlan, sessions: &[String]) -> Vec<ExternalRef> {
    let p = &plan.profiles;
    let mut out = Vec::new();
    if let (Some(client), Some(idp)) = (&plan.client, &p.identity_provider) {
        out.push(ExternalRef::new(Kind::IdentityClient, idp, &client.client_id));
    }
    out.push(ExternalRef::secret(&p.secret_store, &plan.secret));
    match plan.mode {
        crate::api::AuthMode::Usrpw => out.push(ExternalRef::new(Kind::BrokerUser, &p.broker, &plan.identity)),
        crate::api::AuthMode::Oauth2 => {
            for name in sessions {
                add(&mut out, ExternalRef::new(Kind::Sessions, &p.broker, name));
            }
        }
    }
    out
}

/// The objects a transfer's status records. `identity` is the transfer's identity name
/// ([`super::transfer::identity`]); `sessions` turns it and the recorded token subject into
/// the broker's session names.
pub fn transfer_recorded(
    status: &MqttTransferStatus,
    identity: &str,
    sessions: impl Fn(&str, Option<&str>) -> Vec<String>,
) -> Vec<ExternalRef> {
    let mut out = Vec::new();
    if let Some(i) = &status.identity
        && let (Some(profile), Some(client)) = (&i.profile, &i.client_id)
    {
        out.push(ExternalRef::new(Kind::IdentityClient, profile, client));
    }
    if let Some(s) = &status.secret
        && let (Some(profile), Some(alias)) = (&s.profile, &s.alias)
    {
        out.push(ExternalRef::secret(profile, &SecretLocation { folder: s.folder.clone(), alias: alias.clone() }));
    }
    if let Some(b) = &status.broker
        && let Some(profile) = &b.profile
    {
        if status.identity.is_none() {
            // `usrpw`: the user is named after the transfer (status.broker.user is that name).
            out.push(ExternalRef::new(Kind::BrokerUser, profile, identity));
        } else {
            // `oauth2`: status.broker.user is the tokens' subject.
            for name in sessions(identity, b.user.as_deref()) {
                add(&mut out, ExternalRef::new(Kind::Sessions, profile, name));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BrokerRefs, ConnectorRefs, IdentityRefs, SecretRefs};

    #[test]
    fn the_removal_order_puts_dependants_first() {
        let mut kinds = [Kind::IdentityClient, Kind::Secret, Kind::BrokerUser, Kind::ConnectorAsset, Kind::Policy];
        kinds.sort();
        assert_eq!(kinds, [Kind::Policy, Kind::ConnectorAsset, Kind::BrokerUser, Kind::IdentityClient, Kind::Secret]);
        assert!(Kind::ContractDefinition < Kind::Policy);
    }

    #[test]
    fn asset_status_names_each_recorded_object_once() {
        let status = MqttAssetStatus {
            connector: Some(ConnectorRefs {
                profile: Some("edc".into()),
                asset_id: Some("a".into()),
                access_policy_id: Some("p".into()),
                contract_policy_id: Some("p".into()),
                contract_definition_id: Some("cd".into()),
            }),
            broker: Some(BrokerRefs { profile: Some("mq".into()), user: Some("u".into()), role: Some("u".into()) }),
            secret: Some(SecretRefs {
                profile: Some("vault".into()),
                folder: Some("f".into()),
                alias: Some("s".into()),
                path: Some("kv/f/s".into()),
            }),
            identity: Some(IdentityRefs { profile: Some("kc".into()), client_id: Some("c".into()) }),
            ..Default::default()
        };
        let got: Vec<(Kind, String)> = asset_recorded(&status).into_iter().map(|r| (r.kind, r.name)).collect();
        assert_eq!(
            got,
            [
                (Kind::ContractDefinition, "cd".to_owned()),
                (Kind::Policy, "p".into()),
                (Kind::ConnectorAsset, "a".into()),
                (Kind::BrokerUser, "u".into()),
                (Kind::Secret, "s".into()),
                (Kind::IdentityClient, "c".into()),
            ]
        );
        assert!(asset_recorded(&MqttAssetStatus::default()).is_empty());
    }

    #[test]
    fn a_transfer_records_its_user_in_usrpw_and_its_sessions_in_oauth2() {
        let sessions = |identity: &str, sub: Option<&str>| {
            let mut v = vec![identity.to_owned()];
            v.extend(sub.map(str::to_owned));
            v
        };
        let broker = Some(BrokerRefs { profile: Some("mq".into()), user: Some("sa-1".into()), role: None });
        let usrpw = MqttTransferStatus { broker: broker.clone(), ..Default::default() };
        let got: Vec<(Kind, String)> =
            transfer_recorded(&usrpw, "t", sessions).into_iter().map(|r| (r.kind, r.name)).collect();
        assert_eq!(got, [(Kind::BrokerUser, "t".to_owned())]);
        let oauth2 = MqttTransferStatus {
            broker,
            identity: Some(IdentityRefs { profile: Some("kc".into()), client_id: Some("t".into()) }),
            ..Default::default()
        };
        let got: Vec<(Kind, String)> =
            transfer_recorded(&oauth2, "t", sessions).into_iter().map(|r| (r.kind, r.name)).collect();
        assert_eq!(
            got,
            [(Kind::IdentityClient, "t".to_owned()), (Kind::Sessions, "t".into()), (Kind::Sessions, "sa-1".into())]
        );
    }
}
