//! The transfer's Kubernetes Secret: the full DataAddress with its credentials (a password, or a
//! token reused while it is worth keeping and the operator's refresh token), written only when it
//! differs, only when it is ours, and deleted with the transfer's access.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::{Resource, ResourceExt};
use tracing::debug;

use super::{Step, StepResult, now};
use crate::api::{AuthMode, MqttTransfer, MqttTransferStatus};
use crate::backends::identity::{ClientDefinition, IdentityProvider};
use crate::backends::{ExposeSecret, Outcome, SecretString};
use crate::controller::{Context, Error};
use crate::plan::transfer::{self as transfer_plan, Credentials, TransferPlan};
use crate::refresh;

/// Label on the Secrets the operator writes.
pub const SECRET_LABEL: &str = "dsp-mqtt.io/transfer";

/// Annotation on a Secret holding a token: a digest of what the token was issued to carry
/// (audience, claims, lifetime), so that a token is kept only while it still grants what the
/// transfer asks for. Not secret: it is a hash of the client's non-secret definition.
pub const TOKEN_GRANT_ANNOTATION: &str = "dsp-mqtt.io/token-grant";

/// What the credentials step wrote: the credentials in the Secret, when a token expires, and
/// the name the broker knows the consumer by.
pub(super) struct Written {
    pub(super) credentials: Credentials,
    pub(super) expires_at: Option<i64>,
    pub(super) broker_user: Option<String>,
}

/// Writes the Secret with the full DataAddress: the password, or a token (the one in the Secret
/// while it is worth keeping, else a new one from `idp`) with the operator's refresh token.
pub(super) async fn write_credentials(
    ctx: &Context,
    t: &MqttTransfer,
    plan: &TransferPlan,
    idp: Option<&dyn IdentityProvider>,
    secret: &SecretString,
    resuming: bool,
    untouched: bool,
) -> StepResult<Written> {
    let failed = |e| (Some(Step::Credentials), e);
    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &plan.owner.namespace);
    // A transfer that status records nothing of has no Secret of ours yet: created without a
    // read, and read after all should the create find one (a crash before the status write).
    let existing = if untouched {
        None
    } else {
        secrets_api.get_opt(&plan.secret_name).await.map_err(|e| failed(Error::Kube(e)))?
    };
    if let Some(existing) = &existing {
        check_ours(existing, t).map_err(failed)?;
    }
    let status = t.status.clone().unwrap_or_default();
    let grant = plan.client.as_ref().map(token_grant);
    let (mut credentials, expires_at, broker_user) = match plan.mode {
        AuthMode::Usrpw => (Credentials::Password { password: secret.clone() }, None, Some(plan.identity.clone())),
        AuthMode::Oauth2 => {
            let lifetime = i64::from(plan.client.as_ref().and_then(|c| c.access_token_lifespan_seconds).unwrap_or(300));
            let reusable = (!resuming)
                .then(|| reusable_token(existing.as_ref(), &status, lifetime, grant.as_deref(), jitter_seed(t)))
                .flatten();
            match reusable {
                Some(reused) => reused,
                None => {
                    let idp = idp.expect("oauth2 has an identity provider");
                    let tokens = idp
                        .issue_token(&plan.identity, secret)
                        .await
                        .map_err(|source| failed(Error::Backend { step: Step::Credentials, source }))?;
                    let sub = jwt_subject(&tokens.access_token);
                    let expires_at = now() + i64::try_from(tokens.expires_in).unwrap_or(i64::MAX / 2);
                    let token = Credentials::Token {
                        access_token: tokens.access_token,
                        refresh_token: None,
                        expires_in: tokens.expires_in,
                        expires_at,
                    };
                    (token, Some(expires_at), sub)
                }
            }
        }
    };
    // The operator's refresh token: kept while the Secret's rotation state stands (the consumer
    // may have rotated it through the endpoint since), made afresh with fresh credentials.
    let rotation = refresh_rotation(plan, existing.as_ref(), resuming);
    if let (Credentials::Token { refresh_token, .. }, RotationWrite::Keep(token) | RotationWrite::Set(token, _)) =
        (&mut credentials, &rotation)
    {
        *refresh_token = Some(token.clone());
    }
    let full = transfer_plan::data_address(plan, Some(&credentials));
    let grant = match plan.mode {
        AuthMode::Oauth2 => grant.as_deref(),
        AuthMode::Usrpw => None,
    };
    let data = transfer_plan::secret_data(&full);
    match write_secret(&secrets_api, t, &plan.secret_name, &data, grant, &rotation, existing.as_ref()).await {
        Ok(_) => Ok(Written { credentials, expires_at, broker_user }),
        Err(Error::Kube(kube::Error::Api(e))) if untouched && e.code == 409 => {
            Box::pin(write_credentials(ctx, t, plan, idp, secret, resuming, false)).await
        }
        Err(e) => Err(failed(e)),
    }
}

/// Writes the Secret of a suspended transfer: the DataAddress without credentials.
pub(super) async fn write_suspended(ctx: &Context, t: &MqttTransfer, plan: &TransferPlan) -> StepResult<()> {
    let failed = |e| (Some(Step::Credentials), e);
    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &plan.owner.namespace);
    let existing = secrets_api.get_opt(&plan.secret_name).await.map_err(|e| failed(Error::Kube(e)))?;
    if let Some(existing) = &existing {
        check_ours(existing, t).map_err(failed)?;
    }
    let data = transfer_plan::secret_data(&transfer_plan::data_address(plan, None));
    write_secret(&secrets_api, t, &plan.secret_name, &data, None, &RotationWrite::Remove, existing.as_ref())
        .await
        .map_err(failed)?;
    Ok(())
}

/// Deletes the transfer's Secret, if it is ours.
pub(super) async fn delete(ctx: &Context, t: &MqttTransfer) -> StepResult<()> {
    let status = t.status.clone().unwrap_or_default();
    let namespace = t.namespace().unwrap_or_default();
    let name = status
        .credentials_secret_ref
        .as_ref()
        .map(|r| r.name.clone())
        .unwrap_or_else(|| t.spec.secret_name.clone().unwrap_or_else(|| t.name_any()));
    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = match secrets_api.get_opt(&name).await {
        // Not allowed to read Secrets here: a namespace the configuration does not serve (the
        // chart grants Secret access only where it does), so the operator never wrote one. A
        // Secret from when it was served has the transfer as owner and goes with it.
        Err(kube::Error::Api(s)) if s.code == 403 => {
            debug!(%namespace, "no Secret access in this namespace: no DataAddress Secret of ours there");
            None
        }
        other => other.map_err(|e| (Some(Step::Credentials), Error::Kube(e)))?,
    };
    if let Some(existing) = existing
        && check_ours(&existing, t).is_ok()
    {
        match secrets_api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err((Some(Step::Credentials), Error::Kube(e))),
        }
    }
    ctx.metrics.set_token_expiry(&namespace, &t.name_any(), None);
    Ok(())
}

/// When a token that expires at `expires_at` and lived `lifetime` seconds is renewed: at about
/// two thirds of its life, shifted by up to ±5 % of the lifetime (stable per transfer, so that
/// transfers created together do not renew together and a reconcile agrees with the last one).
pub fn renew_at(expires_at: i64, lifetime: i64, seed: u64) -> i64 {
    let jitter = ((seed % 1001) as f64 / 1000.0 - 0.5) * 0.1 * lifetime as f64;
    expires_at.saturating_sub(lifetime / 3).saturating_add(jitter as i64)
}

pub(super) fn jitter_seed(t: &MqttTransfer) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.metadata.uid.hash(&mut h);
    h.finish()
}

/// What a token of `client` carries, as a digest: audience, claims (the topic permissions) and
/// lifetime. A change of any of them makes the token in the Secret stale.
pub fn token_grant(client: &ClientDefinition) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(client.audience.as_deref().unwrap_or_default().as_bytes());
    field(client.access_token_lifespan_seconds.map(|s| s.to_string()).unwrap_or_default().as_bytes());
    for claim in &client.claims {
        field(claim.name.as_bytes());
        field(claim.value.to_string().as_bytes());
    }
    format!("sha256:{:x}", h.finalize())
}

/// The token in the Secret when it is still worth keeping (an operator restart or resync must
/// not re-issue what is valid): issued for the same grant, with the same lifetime, not yet due
/// for renewal.
fn reusable_token(
    existing: Option<&Secret>,
    status: &MqttTransferStatus,
    lifetime: i64,
    grant: Option<&str>,
    seed: u64,
) -> Option<(Credentials, Option<i64>, Option<String>)> {
    let not = |why: &str| {
        debug!(why, "the token in the Secret is not kept");
        None
    };
    let Some(existing) = existing else { return not("no Secret") };
    let issued_for = existing.metadata.annotations.as_ref().and_then(|a| a.get(TOKEN_GRANT_ANNOTATION));
    if issued_for.map(String::as_str) != grant {
        return not("issued for another grant");
    }
    let data = existing.data.as_ref()?;
    let text = |k: &str| data.get(k).and_then(|v| String::from_utf8(v.0.clone()).ok());
    let Some(access_token) = text("authorization") else { return not("no token in the Secret") };
    let Some(expires_at) = status.token_expires_at.as_ref().map(|t| t.0.as_second()) else {
        return not("status records no expiry");
    };
    let expires_in: u64 = text("expiresIn")?.parse().ok()?;
    // Keycloak answers `expires_in` as the token's `exp` minus its clock at the answer, one
    // second short when a second boundary falls in between: a few seconds off is the same
    // lifetime (a changed lifetime also changes the grant above).
    if i64::try_from(expires_in).ok()?.abs_diff(lifetime) > LIFETIME_SLACK_SECONDS {
        return not("issued with another lifetime");
    }
    if now() >= renew_at(expires_at, lifetime, seed) {
        return not("due for renewal");
    }
    let sub = status.broker.as_ref().and_then(|b| b.user.clone());
    Some((
        Credentials::Token {
            access_token: SecretString::from(access_token),
            refresh_token: None,
            expires_in,
            expires_at,
        },
        Some(expires_at),
        sub,
    ))
}

/// How far a token's `expires_in` may be from the lifetime asked for and still count as it.
const LIFETIME_SLACK_SECONDS: u64 = 5;

/// What happens to the refresh-token rotation state on the transfer's Secret.
enum RotationWrite {
    /// The Secret's refresh token and digests stay (the token is the Secret's copy).
    Keep(SecretString),
    /// A new refresh token: its digest replaces every earlier one.
    Set(SecretString, String),
    /// No refresh token (no endpoint configured, `usrpw`, or access cut off).
    Remove,
}

/// The refresh token of an `oauth2` transfer when the refresh endpoint is configured: the one
/// in the Secret while its rotation state is there (the consumer may have rotated to a newer
/// one through the endpoint: only digests are stored, and a fresh token would lock it out),
/// else a new one; resuming after a suspension always makes a new one.
fn refresh_rotation(plan: &TransferPlan, existing: Option<&Secret>, resuming: bool) -> RotationWrite {
    if plan.mode != AuthMode::Oauth2 || plan.refresh_endpoint.is_none() {
        return RotationWrite::Remove;
    }
    let kept = existing.filter(|_| !resuming).and_then(|s| {
        let state = s.metadata.annotations.as_ref()?.get(refresh::ROTATION_ANNOTATION)?;
        refresh::Rotation::parse(state)?;
        let token = String::from_utf8(s.data.as_ref()?.get("refreshToken")?.0.clone()).ok()?;
        refresh::locate(&SecretString::from(token.clone()))?;
        Some(SecretString::from(token))
    });
    match kept {
        Some(token) => RotationWrite::Keep(token),
        None => {
            let (token, digest) = refresh::mint(&plan.owner.namespace, &plan.owner.name);
            RotationWrite::Set(token, refresh::Rotation::new(digest).render())
        }
    }
}

/// The `sub` of a JWT (no verification: it is the identity provider's token we just received,
/// read only to know the name the broker sees).
fn jwt_subject(token: &SecretString) -> Option<String> {
    let payload = token.expose_secret().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("sub")?.as_str().map(str::to_owned)
}

/// Whether the Secret is this transfer's (a controller owner reference with its uid).
fn check_ours(secret: &Secret, t: &MqttTransfer) -> Result<(), Error> {
    let uid = t.metadata.uid.as_deref().unwrap_or_default();
    let ours = secret.metadata.owner_references.iter().flatten().any(|r| r.uid == uid && r.controller == Some(true));
    if ours { Ok(()) } else { Err(Error::SecretNameTaken { name: secret.name_any() }) }
}

/// Creates or updates the Secret when its content differs.
async fn write_secret(
    api: &Api<Secret>,
    t: &MqttTransfer,
    name: &str,
    data: &BTreeMap<String, String>,
    grant: Option<&str>,
    rotation: &RotationWrite,
    existing: Option<&Secret>,
) -> Result<Outcome, Error> {
    let data: BTreeMap<String, ByteString> =
        data.iter().map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec()))).collect();
    let labels = BTreeMap::from([
        ("app.kubernetes.io/managed-by".to_owned(), "mqtt-dsp-operator".to_owned()),
        (SECRET_LABEL.to_owned(), t.name_any()),
    ]);
    // Others' annotations stay; ours says which grant the token was issued for.
    let mut annotations = existing.and_then(|e| e.metadata.annotations.clone()).unwrap_or_default();
    match grant {
        Some(grant) => annotations.insert(TOKEN_GRANT_ANNOTATION.to_owned(), grant.to_owned()),
        None => annotations.remove(TOKEN_GRANT_ANNOTATION),
    };
    match rotation {
        RotationWrite::Keep(_) => {}
        RotationWrite::Set(_, state) => {
            drop(annotations.insert(refresh::ROTATION_ANNOTATION.to_owned(), state.clone()))
        }
        RotationWrite::Remove => drop(annotations.remove(refresh::ROTATION_ANNOTATION)),
    }
    let annotations = (!annotations.is_empty()).then_some(annotations);
    match existing {
        Some(existing)
            if existing.data.as_ref() == Some(&data)
                && existing.metadata.labels.as_ref() == Some(&labels)
                && existing.metadata.annotations.as_ref().filter(|a| !a.is_empty()) == annotations.as_ref() =>
        {
            Ok(Outcome::Unchanged)
        }
        Some(existing) => {
            let mut updated = existing.clone();
            updated.data = Some(data);
            updated.string_data = None;
            updated.metadata.labels = Some(labels);
            updated.metadata.annotations = annotations;
            api.replace(name, &PostParams::default(), &updated).await.map_err(Error::Kube)?;
            Ok(Outcome::Updated)
        }
        None => {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    labels: Some(labels),
                    annotations,
                    owner_references: t.controller_owner_ref(&()).map(|r| vec![r]),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(data),
                ..Default::default()
            };
            api.create(&PostParams::default(), &secret).await.map_err(Error::Kube)?;
            Ok(Outcome::Created)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_grant_changes_with_what_the_token_carries_and_only_then() {
        use crate::backends::Owner;
        use crate::backends::identity::HardcodedClaim;
        let client = ClientDefinition {
            client_id: "c".into(),
            description: "d".into(),
            enabled: true,
            access_token_lifespan_seconds: Some(120),
            refresh_tokens_for_client_credentials: true,
            audience: Some("rabbitmq".into()),
            claims: vec![HardcodedClaim { name: "extra_scope".into(), value: serde_json::json!(["rabbitmq.read:a"]) }],
            owner: Owner {
                installation: "test".into(),
                kind: "MqttTransfer".into(),
                namespace: "ns".into(),
                name: "t".into(),
            },
        };
        let grant = token_grant(&client);
        assert!(grant.starts_with("sha256:") && grant.len() == 7 + 64, "{grant}");
        let mut same = client.clone();
        same.description = "another description".into();
        same.enabled = false;
        assert_eq!(token_grant(&same), grant, "what the token does not carry does not count");
        let changes: [fn(&mut ClientDefinition); 4] = [
            |c| c.claims[0].value = serde_json::json!(["rabbitmq.read:a", "rabbitmq.read:b"]),
            |c| c.audience = Some("other".into()),
            |c| c.access_token_lifespan_seconds = Some(60),
            |c| c.claims[0].name = "scope".into(),
        ];
        for change in changes {
            let mut changed = client.clone();
            change(&mut changed);
            assert_ne!(token_grant(&changed), grant, "{changed:?}");
        }
    }

    #[test]
    fn a_token_a_second_short_of_its_lifetime_is_kept_and_another_lifetime_is_not() {
        let secret = |expires_in: u64| Secret {
            metadata: ObjectMeta {
                annotations: Some([(TOKEN_GRANT_ANNOTATION.to_owned(), "sha256:g".to_owned())].into()),
                ..Default::default()
            },
            data: Some(
                [
                    ("authorization".to_owned(), ByteString(b"eyJ.x.y".to_vec())),
                    ("expiresIn".to_owned(), ByteString(expires_in.to_string().into_bytes())),
                ]
                .into(),
            ),
            ..Default::default()
        };
        let status = MqttTransferStatus {
            token_expires_at: k8s_openapi::jiff::Timestamp::from_second(now() + 299)
                .ok()
                .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
            ..Default::default()
        };
        let keep = |s: &Secret, grant| reusable_token(Some(s), &status, 300, Some(grant), 7).is_some();
        assert!(keep(&secret(300), "sha256:g"));
        assert!(keep(&secret(299), "sha256:g"), "Keycloak's expires_in one second short (a restart must not re-issue)");
        assert!(!keep(&secret(120), "sha256:g"), "another lifetime");
        assert!(!keep(&secret(300), "sha256:other"), "another grant");
    }

    #[test]
    fn renewal_is_at_two_thirds_with_bounded_jitter() {
        let (expires, lifetime) = (10_000, 300);
        for seed in [0, 500, 1000, 12345, u64::MAX] {
            let at = renew_at(expires, lifetime, seed);
            // Two thirds of the way: 100 s before expiry, ±15 s.
            assert!((expires - 115..=expires - 85).contains(&at), "{at}");
        }
        assert_eq!(renew_at(expires, lifetime, 7), renew_at(expires, lifetime, 7), "stable per transfer");
    }

    #[test]
    fn jwt_subject_reads_the_payload() {
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"service-account-1","exp":1}"#);
        let token = SecretString::from(format!("eyJhbGciOiJSUzI1NiJ9.{payload}.sig"));
        assert_eq!(jwt_subject(&token).as_deref(), Some("service-account-1"));
        assert_eq!(jwt_subject(&SecretString::from("not-a-jwt")), None);
    }
}
