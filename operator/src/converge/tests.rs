//! The converge step against fake backends: moves, partial failures, foreign objects, refused
//! deletions with their budget, and `Retain`.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::api::AuthMode;
use crate::backends::broker::{Broker, TokenRequirements};
use crate::backends::connector::Connector;
use crate::backends::identity::{IdentityProvider, TokenSet};
use crate::backends::secrets::SecretStore;

/// One fake backend of every kind: objects by (kind, name) with their owner's marker, a log of
/// the calls, and faults per object name.
#[derive(Default)]
struct Fake {
    objects: Mutex<BTreeMap<(&'static str, String), String>>,
    calls: Mutex<Vec<String>>,
    /// Names whose deletion is refused (in use).
    refused: Mutex<HashSet<String>>,
    /// Names whose every call fails as if the backend were down.
    down: Mutex<HashSet<String>>,
}

impl Fake {
    fn put(&self, kind: &'static str, name: &str, marker: &str) {
        self.objects.lock().unwrap().insert((kind, name.to_owned()), marker.to_owned());
    }

    fn has(&self, kind: &'static str, name: &str) -> bool {
        self.objects.lock().unwrap().contains_key(&(kind, name.to_owned()))
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn check(&self, call: &str, name: &str) -> Result<(), BackendError> {
        self.calls.lock().unwrap().push(format!("{call} {name}"));
        if self.down.lock().unwrap().contains(name) {
            return Err(BackendError::Unavailable {
                system: System::Connector,
                operation: "call",
                object: name.to_owned(),
                status: 503,
                message: "down".into(),
            });
        }
        Ok(())
    }

    fn ensure(&self, kind: &'static str, name: &str, owner: &Owner) -> Result<Outcome, BackendError> {
        self.check(&format!("ensure {kind}"), name)?;
        let mut objects = self.objects.lock().unwrap();
        match objects.get(&(kind, name.to_owned())) {
            Some(marker) if *marker != owner.marker() => {
                Err(BackendError::Foreign { system: System::Connector, operation: "update", object: name.to_owned() })
            }
            Some(_) => Ok(Outcome::Unchanged),
            None => {
                objects.insert((kind, name.to_owned()), owner.marker());
                Ok(Outcome::Created)
            }
        }
    }

    fn delete(&self, kind: &'static str, name: &str, owner: &Owner) -> Result<Outcome, BackendError> {
        self.check(&format!("delete {kind}"), name)?;
        if self.refused.lock().unwrap().contains(name) {
            return Err(BackendError::InUse {
                system: System::Connector,
                operation: "delete",
                object: name.to_owned(),
                message: "referenced by an agreement".into(),
            });
        }
        let mut objects = self.objects.lock().unwrap();
        match objects.get(&(kind, name.to_owned())) {
            None => Ok(Outcome::Absent),
            Some(marker) if *marker != owner.marker() => {
                Err(BackendError::Foreign { system: System::Connector, operation: "delete", object: name.to_owned() })
            }
            Some(_) => {
                objects.remove(&(kind, name.to_owned()));
                Ok(Outcome::Deleted)
            }
        }
    }
}

#[async_trait]
impl Connector for Fake {
    async fn ensure_asset(&self, a: &AssetDefinition) -> Result<Outcome, BackendError> {
        self.ensure("asset", &a.id, &a.owner)
    }
    async fn ensure_policy(&self, p: &PolicyDefinition) -> Result<Outcome, BackendError> {
        self.ensure("policy", &p.id, &p.owner)
    }
    async fn ensure_contract_definition(&self, d: &ContractDefinition) -> Result<Outcome, BackendError> {
        self.ensure("cd", &d.id, &d.owner)
    }
    async fn delete_contract_definition(&self, id: &str, owner: &Owner) -> Result<Outcome, BackendError> {
        self.delete("cd", id, owner)
    }
    async fn delete_policy(&self, id: &str, owner: &Owner) -> Result<Outcome, BackendError> {
        self.delete("policy", id, owner)
    }
    async fn delete_asset(&self, id: &str, owner: &Owner) -> Result<Outcome, BackendError> {
        self.delete("asset", id, owner)
    }
}

#[async_trait]
impl Broker for Fake {
    fn system(&self) -> System {
        System::Mosquitto
    }
    fn supports(&self, _: AuthMode) -> bool {
        true
    }
    async fn ensure_user(&self, g: &UserGrant) -> Result<Outcome, BackendError> {
        self.ensure("user", &g.username, &g.owner)
    }
    async fn set_password(&self, name: &str, _: &SecretString, _: &Owner) -> Result<Outcome, BackendError> {
        self.check("set_password", name).map(|()| Outcome::Updated)
    }
    async fn remove_user(&self, name: &str, owner: &Owner) -> Result<Outcome, BackendError> {
        self.delete("user", name, owner)
    }
    async fn disconnect(&self, name: &str) -> Result<u32, BackendError> {
        self.check("disconnect", name).map(|()| 1)
    }
    fn token_requirements(&self, _: &[String]) -> Result<TokenRequirements, BackendError> {
        unreachable!("not used by the converge step")
    }
}

#[async_trait]
impl SecretStore for Fake {
    async fn ensure_secret(&self, at: &SecretLocation, _: &SecretString, o: &Owner) -> Result<Outcome, BackendError> {
        self.ensure("secret", &at.alias, o)
    }
    async fn read_secret(&self, _: &SecretLocation, _: &Owner) -> Result<Option<SecretString>, BackendError> {
        unreachable!("not used by the converge step")
    }
    async fn delete_secret(&self, at: &SecretLocation, owner: &Owner) -> Result<Outcome, BackendError> {
        self.delete("secret", &at.alias, owner)
    }
    fn path(&self, at: &SecretLocation) -> String {
        format!("kv/{}", at.alias)
    }
}

#[async_trait]
impl IdentityProvider for Fake {
    async fn ensure_client(&self, c: &ClientDefinition) -> Result<Outcome, BackendError> {
        self.ensure("client", &c.client_id, &c.owner)
    }
    async fn client_secret(&self, _: &str, _: &Owner) -> Result<SecretString, BackendError> {
        unreachable!("not used by the converge step")
    }
    async fn delete_client(&self, id: &str, owner: &Owner) -> Result<Outcome, BackendError> {
        self.delete("client", id, owner)
    }
    async fn issue_token(&self, _: &str, _: &SecretString) -> Result<TokenSet, BackendError> {
        unreachable!("not used by the converge step")
    }
    fn token_url(&self) -> String {
        String::new()
    }
}

/// Two backends: `a` is reached through the profiles "a" and "a-alias", `b` through "b".
struct World {
    a: Arc<Fake>,
    b: Arc<Fake>,
    backends: Backends,
    writes: Arc<Mutex<Vec<(System, Outcome)>>>,
    on_write: Box<dyn Fn(System, Outcome) + Send + Sync>,
}

impl World {
    fn new() -> Self {
        let (a, b) = (Arc::new(Fake::default()), Arc::new(Fake::default()));
        let mut backends = Backends::default();
        for (profile, fake) in [("a", &a), ("a-alias", &a), ("b", &b)] {
            backends.connectors.insert(profile.into(), fake.clone() as Arc<dyn Connector>);
            backends.brokers.insert(profile.into(), fake.clone() as Arc<dyn Broker>);
            backends.secret_stores.insert(profile.into(), fake.clone() as Arc<dyn SecretStore>);
            backends.identity_providers.insert(profile.into(), fake.clone() as Arc<dyn IdentityProvider>);
        }
        let writes: Arc<Mutex<Vec<(System, Outcome)>>> = Arc::default();
        let log = writes.clone();
        Self { a, b, backends, writes, on_write: Box::new(move |s, o| log.lock().unwrap().push((s, o))) }
    }

    fn reach(&self) -> Reach<'_> {
        fn same(_: Section, x: &str, y: &str) -> bool {
            let backend = |p: &str| p.trim_end_matches("-alias").to_owned();
            backend(x) == backend(y)
        }
        Reach { backends: &self.backends, same_backend: &same, on_write: &*self.on_write }
    }
}

fn owner() -> Owner {
    Owner { installation: "test".into(), kind: "MqttAsset".into(), namespace: "ns".into(), name: "line-1".into() }
}

fn grant(name: &str) -> UserGrant {
    UserGrant {
        username: name.into(),
        password: SecretString::from("pw"),
        topics: vec!["t/#".into()],
        enabled: true,
        owner: owner(),
    }
}

fn at(alias: &str) -> SecretLocation {
    SecretLocation { folder: None, alias: alias.into() }
}

#[tokio::test]
async fn a_move_between_backends_makes_the_new_objects_then_removes_the_old_ones() {
    let w = World::new();
    let o = owner();
    w.a.put("user", "u", &o.marker());
    w.a.put("secret", "s", &o.marker());
    let recorded = vec![ExternalRef::new(Kind::BrokerUser, "a", "u"), ExternalRef::secret("a", &at("s"))];
    let mut step = Converge::new(w.reach(), &o, recorded);
    let pw = SecretString::from("pw");
    assert_eq!(step.make("b", Spec::Secret(&at("s"), &pw)).await.unwrap(), Outcome::Created);
    assert_eq!(step.make("b", Spec::BrokerUser(&grant("u"))).await.unwrap(), Outcome::Created);
    let removal = step.finish().await;
    assert!(removal.failed.is_none() && removal.refused.is_empty() && removal.foreign.is_empty(), "{removal:?}");
    assert!(!w.a.has("user", "u") && !w.a.has("secret", "s"), "the old backend is left empty");
    assert!(w.b.has("user", "u") && w.b.has("secret", "s"));
    // The user goes before the secret that holds its password: dependants first.
    assert_eq!(w.a.calls(), ["delete user u", "delete secret s"]);
    assert_eq!(w.writes.lock().unwrap().iter().filter(|(_, o)| *o == Outcome::Deleted).count(), 2);
}

#[tokio::test]
async fn another_profile_of_the_same_backend_is_no_move() {
    let w = World::new();
    let o = owner();
    w.a.put("user", "u", &o.marker());
    let mut step = Converge::new(w.reach(), &o, vec![ExternalRef::new(Kind::BrokerUser, "a", "u")]);
    assert_eq!(step.make("a-alias", Spec::BrokerUser(&grant("u"))).await.unwrap(), Outcome::Unchanged);
    let removal = step.finish().await;
    assert!(removal.failed.is_none() && removal.refused.is_empty() && removal.left.is_empty(), "{removal:?}");
    assert!(w.a.has("user", "u"), "the object just made is not deleted as the 'old' one");
    assert_eq!(w.a.calls(), ["ensure user u"]);
}

#[tokio::test]
async fn a_failure_in_the_middle_removes_nothing_and_a_failing_removal_stops_there() {
    let w = World::new();
    let o = owner();
    w.a.put("user", "old", &o.marker());
    w.a.down.lock().unwrap().insert("s".into());
    let client = ClientDefinition {
        client_id: "c".into(),
        description: String::new(),
        enabled: true,
        access_token_lifespan_seconds: None,
        refresh_tokens_for_client_credentials: false,
        audience: None,
        claims: Vec::new(),
        owner: o.clone(),
    };
    let mut step = Converge::new(w.reach(), &o, vec![ExternalRef::new(Kind::BrokerUser, "a", "old")]);
    step.make("a", Spec::IdentityClient(&client)).await.unwrap();
    let pw = SecretString::from("pw");
    let failed = step.make("a", Spec::Secret(&at("s"), &pw)).await.unwrap_err();
    assert_eq!(failed.kind, Kind::Secret);
    assert!(failed.source.is_retryable());
    // The caller stops here: the stale user stays until a walk completes.
    drop(step);
    assert!(w.a.has("user", "old"));

    // In removal, a backend that fails stops the removal: nothing after it is tried.
    w.a.put("policy", "p", &o.marker());
    w.a.put("asset", "x", &o.marker());
    w.a.down.lock().unwrap().insert("x".into());
    let recorded = vec![
        ExternalRef::secret("a", &at("kept")),
        ExternalRef::new(Kind::ConnectorAsset, "a", "x"),
        ExternalRef::new(Kind::Policy, "a", "p"),
    ];
    let removal = Converge::new(w.reach(), &o, recorded).finish().await;
    assert!(!w.a.has("policy", "p"), "the dependant before the failure is removed");
    assert_eq!(removal.failed.as_ref().map(|f| f.kind), Some(Kind::ConnectorAsset));
    assert!(w.a.has("asset", "x"), "the failing one stays");
    assert!(!w.a.calls().iter().any(|c| c.contains("kept")), "{:?}", w.a.calls());
}

#[tokio::test]
async fn a_foreign_object_is_never_deleted_nor_changed() {
    let w = World::new();
    let o = owner();
    w.a.put("user", "theirs", "MqttAsset/other/line-9");
    w.a.put("secret", "s", &o.marker());
    let recorded = vec![ExternalRef::new(Kind::BrokerUser, "a", "theirs"), ExternalRef::secret("a", &at("s"))];
    let removal = Converge::new(w.reach(), &o, recorded).finish().await;
    assert!(w.a.has("user", "theirs"), "not ours: left alone");
    assert_eq!(removal.foreign.len(), 1, "{removal:?}");
    assert!(removal.foreign[0].contains("broker user theirs"), "{:?}", removal.foreign);
    assert!(!w.a.has("secret", "s"), "the rest still goes");
    assert!(removal.failed.is_none() && removal.refused.is_empty());

    let mut step = Converge::new(w.reach(), &o, Vec::new());
    let e = step.make("a", Spec::BrokerUser(&grant("theirs"))).await.unwrap_err();
    assert!(matches!(e.source, BackendError::Foreign { .. }), "{e:?}");
}

#[tokio::test]
async fn a_refused_deletion_is_retried_within_its_budget_then_left_in_place() {
    let w = World::new();
    let o = owner();
    for (kind, name) in [("cd", "cd"), ("policy", "p"), ("asset", "x")] {
        w.a.put(kind, name, &o.marker());
    }
    w.a.refused.lock().unwrap().insert("x".into());
    let recorded = || {
        vec![
            ExternalRef::new(Kind::ConnectorAsset, "a", "x"),
            ExternalRef::new(Kind::Policy, "a", "p"),
            ExternalRef::new(Kind::ContractDefinition, "a", "cd"),
        ]
    };
    let budget = Budget::default();
    let policy = DeletePolicy { retain: false, attempts: 3, retry: Duration::ZERO };
    let first = delete(w.reach(), &o, recorded(), policy, &budget, "k").await;
    let Deletion::Refused(removal, 1) = first else { panic!("{first:?}") };
    assert_eq!(removal.refused.len(), 1);
    assert!(removal.refused[0].what.contains("connector asset x"), "{:?}", removal.refused);
    assert!(!w.a.has("cd", "cd") && !w.a.has("policy", "p"), "what can go, goes at the first attempt");
    assert_eq!(w.a.calls()[..2], ["delete cd cd".to_owned(), "delete policy p".to_owned()], "dependants first");

    // The next attempt waits for the interval…
    let slow = DeletePolicy { retry: Duration::from_secs(3600), ..policy };
    assert!(matches!(delete(w.reach(), &o, recorded(), slow, &budget, "k").await, Deletion::Wait(_)));
    // …then counts on, and gives up at the budget.
    assert!(matches!(delete(w.reach(), &o, recorded(), policy, &budget, "k").await, Deletion::Refused(_, 2)));
    let last = delete(w.reach(), &o, recorded(), policy, &budget, "k").await;
    assert!(matches!(last, Deletion::Abandoned(_, 3)), "{last:?}");
    assert!(w.a.has("asset", "x"), "left in place");
    // A new deletion of the same resource starts a new budget.
    assert!(matches!(delete(w.reach(), &o, recorded(), policy, &budget, "k").await, Deletion::Refused(_, 1)));
}

#[tokio::test]
async fn retain_leaves_everything_and_an_unconfigured_profile_is_noted_not_guessed() {
    let w = World::new();
    let o = owner();
    w.a.put("user", "u", &o.marker());
    let policy = DeletePolicy { retain: true, attempts: 3, retry: Duration::ZERO };
    let recorded =
        vec![ExternalRef::new(Kind::BrokerUser, "a", "u"), ExternalRef::new(Kind::IdentityClient, "gone", "c")];
    let got = delete(w.reach(), &o, recorded.clone(), policy, &Budget::default(), "k").await;
    assert!(matches!(got, Deletion::Retained), "{got:?}");
    assert!(w.a.calls().is_empty() && w.a.has("user", "u"));

    let got = delete(w.reach(), &o, recorded, DeletePolicy { retain: false, ..policy }, &Budget::default(), "k").await;
    let Deletion::Done(removal) = got else { panic!("{got:?}") };
    assert!(!w.a.has("user", "u"));
    assert_eq!(
        removal.left.0.get("identityProviders.gone").map(Vec::as_slice),
        Some(&["identity client c".to_owned()][..])
    );
}

#[tokio::test]
async fn a_user_covers_the_sessions_of_its_name_and_sessions_are_closed_when_unwanted() {
    let w = World::new();
    let o = owner();
    let recorded = vec![ExternalRef::new(Kind::Sessions, "a", "t"), ExternalRef::new(Kind::Sessions, "a", "sa-t")];
    let mut step = Converge::new(w.reach(), &o, recorded);
    step.make("a", Spec::BrokerUser(&grant("t"))).await.unwrap();
    let removal = step.finish().await;
    assert!(removal.failed.is_none() && removal.refused.is_empty(), "{removal:?}");
    assert_eq!(w.a.calls(), ["ensure user t", "disconnect sa-t"]);
    assert!(w.writes.lock().unwrap().iter().all(|(_, o)| *o != Outcome::Unchanged), "closing sessions is no write");
}

#[tokio::test]
async fn a_new_password_is_set_on_a_user_that_already_existed() {
    let w = World::new();
    let o = owner();
    let mut step = Converge::new(w.reach(), &o, Vec::new());
    step.make("a", Spec::BrokerUserWithNewPassword(&grant("new"))).await.unwrap();
    assert_eq!(w.a.calls(), ["ensure user new"], "a user made with it has it already");
    w.a.put("user", "old", &o.marker());
    step.make("a", Spec::BrokerUserWithNewPassword(&grant("old"))).await.unwrap();
    assert_eq!(w.a.calls()[1..], ["ensure user old".to_owned(), "set_password old".to_owned()]);
    step.make("a", Spec::BrokerUser(&grant("old"))).await.unwrap();
    assert_eq!(w.a.calls().len(), 4, "an unchanged password is not set again: {:?}", w.a.calls());
    assert!(w.writes.lock().unwrap().contains(&(System::Mosquitto, Outcome::Updated)), "the password write is counted");
    // A user status recorded nothing of is created; should it exist after all, it gets the
    // password too (brokers without a cheaper creation: the same calls).
    step.make("a", Spec::NewBrokerUser(&grant("fresh"))).await.unwrap();
    assert_eq!(w.a.calls()[4..], ["ensure user fresh".to_owned()]);
    w.a.put("user", "crashed", &o.marker());
    step.make("a", Spec::NewBrokerUser(&grant("crashed"))).await.unwrap();
    assert_eq!(w.a.calls()[5..], ["ensure user crashed".to_owned(), "set_password crashed".to_owned()]);
}
