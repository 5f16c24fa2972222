//! Checks a refresh request against the cluster and issues the new tokens.
//!
//! Order: locate the transfer → (bearer JWT) → the transfer may get tokens → its Secret's digests
//! know the token → rotate (a compare-and-swap on the Secret's resourceVersion, so two refreshes
//! racing with the same token cannot both rotate from one state) → a new access token from the
//! identity provider with the transfer's client. Rotating before issuing means a failed issue
//! leaves the presented token valid: the consumer just retries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use secrecy::{ExposeSecret, SecretString};
use tracing::warn;

use super::consumer_auth::ConsumerVerifier;
use super::{OAuthError, ROTATION_ANNOTATION, RefreshRequest, Rotation, digest, locate, mint};
use crate::api::{AuthMode, MqttAsset, MqttTransfer, TransferPhase, TransferState};
use crate::backends::BackendError;
use crate::controller::Context;
use crate::plan::transfer as transfer_plan;

/// What a successful refresh hands out.
#[derive(Debug)]
pub struct Issued {
    /// The new JWT.
    pub access_token: SecretString,
    /// Its lifetime in seconds.
    pub expires_in: u64,
    /// The next refresh token.
    pub refresh_token: SecretString,
}

/// One wording for every token that is not (or no longer) valid, whether the transfer exists or
/// not: the answer must not tell a guesser which transfers exist.
const UNKNOWN: &str = "the refresh token is unknown, retired or revoked";

/// Compare-and-swap attempts on the Secret before giving up (each loses only to another refresh
/// or a controller write in the same moment).
const ATTEMPTS: usize = 4;

/// How long a transfer client's secret is reused before it is read from the identity provider
/// again (each read costs two admin calls; a rejected secret is read again at once).
const CLIENT_SECRET_TTL: Duration = Duration::from_secs(300);

/// The refresh logic, shared by every request.
pub struct Refresher {
    ctx: Arc<Context>,
    verifier: Option<ConsumerVerifier>,
    client_secrets: Mutex<HashMap<String, (Instant, SecretString)>>,
}

impl Refresher {
    /// A refresher over the operator's cluster client, configuration and backends.
    pub fn new(ctx: Arc<Context>, verifier: Option<ConsumerVerifier>) -> Self {
        Self { ctx, verifier, client_secrets: Mutex::default() }
    }

    /// Handles one well-formed request; `authorization` is the request's `Authorization` header;
    /// `gate` (the per-transfer rate limit) runs once the token matched, before anything changes.
    pub async fn refresh(
        &self,
        request: &RefreshRequest,
        authorization: Option<&str>,
        gate: impl Fn(&(String, String)) -> Result<(), OAuthError>,
    ) -> Result<Issued, OAuthError> {
        let (namespace, name) = locate(&request.refresh_token).ok_or_else(|| OAuthError::invalid_grant(UNKNOWN))?;
        let presented = digest(request.refresh_token.expose_secret());
        let client = &self.ctx.client;
        let transfers: Api<MqttTransfer> = Api::namespaced(client.clone(), &namespace);
        let t = transfers
            .get_opt(&name)
            .await
            .map_err(|e| backend("read the transfer", e))?
            .ok_or_else(|| OAuthError::invalid_grant(UNKNOWN))?;
        if let Some(verifier) = &self.verifier {
            verifier.verify(authorization, &t.spec.consumer.participant_id).await?;
        }
        let secret_name = t
            .status
            .as_ref()
            .and_then(|s| s.credentials_secret_ref.as_ref())
            .map(|r| r.name.clone())
            .ok_or_else(|| OAuthError::invalid_grant(UNKNOWN))?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let uid = t.metadata.uid.clone().unwrap_or_default();

        let mut rotated = None;
        let mut asset = None;
        for _ in 0..ATTEMPTS {
            let secret = secrets
                .get_opt(&secret_name)
                .await
                .map_err(|e| backend("read the transfer's Secret", e))?
                .ok_or_else(|| OAuthError::invalid_grant(UNKNOWN))?;
            let ours = secret.metadata.owner_references.iter().flatten().any(|r| r.uid == uid);
            let rotation = secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ROTATION_ANNOTATION))
                .and_then(|v| Rotation::parse(v))
                .filter(|_| ours)
                .ok_or_else(|| OAuthError::invalid_grant(UNKNOWN))?;
            let matched = rotation.check(&presented).ok_or_else(|| OAuthError::invalid_grant(UNKNOWN))?;
            // Only a holder of a valid token learns why its transfer gets no tokens.
            if asset.is_none() {
                gate(&(namespace.clone(), name.clone()))?;
                asset = Some(self.active(&t).await?);
            }
            let (token, new_digest) = mint(&namespace, &name);
            let next = rotation.rotate(matched, new_digest);
            // A replace carries the read's resourceVersion: the API server refuses it (409) when
            // anything wrote the Secret since. (`update`, which the Secret RBAC grants already.)
            let mut updated = secret;
            updated
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(ROTATION_ANNOTATION.into(), next.render());
            match secrets.replace(&secret_name, &PostParams::default(), &updated).await {
                Ok(_) => {
                    rotated = Some(token);
                    break;
                }
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(e) => return Err(backend("rotate the refresh token", e)),
            }
        }
        let refresh_token = rotated.ok_or_else(|| OAuthError::unavailable("too many refreshes at once; retry"))?;

        let asset = asset.expect("set before the first rotation");
        let (access_token, expires_in) = self.issue(&t, &asset).await?;
        Ok(Issued { access_token, expires_in, refresh_token })
    }

    /// The transfer's asset, when the transfer may get tokens now.
    async fn active(&self, t: &MqttTransfer) -> Result<MqttAsset, OAuthError> {
        may_get_tokens(t)?;
        let namespace = t.metadata.namespace.as_deref().unwrap_or_default();
        let asset = Api::<MqttAsset>::namespaced(self.ctx.client.clone(), namespace)
            .get_opt(&t.spec.asset_ref.name)
            .await
            .map_err(|e| backend("read the asset", e))?
            .filter(|a| a.metadata.deletion_timestamp.is_none())
            .ok_or_else(|| OAuthError::invalid_grant("the transfer's asset is gone: it gets no new tokens"))?;
        if asset.spec.auth.mode != AuthMode::Oauth2 {
            return Err(OAuthError::invalid_grant(UNKNOWN));
        }
        Ok(asset)
    }

    /// A new access token for the transfer's current grant, with its own client.
    async fn issue(&self, t: &MqttTransfer, asset: &MqttAsset) -> Result<(SecretString, u64), OAuthError> {
        let ctx = &self.ctx;
        let refuse = |what: &str| {
            warn!(transfer = %t.metadata.name.as_deref().unwrap_or_default(), "refresh: {what}");
            OAuthError::unavailable("the transfer's credentials cannot be issued now; retry later")
        };
        let clients = crate::controller::asset::clients_for(ctx, &asset.spec).map_err(|e| refuse(&e.to_string()))?;
        let topics = t.spec.topics.clone().unwrap_or_else(|| asset.spec.topics.clone());
        let requirements = clients.broker.token_requirements(&topics).map_err(|e| refuse(&e.to_string()))?;
        let plan =
            transfer_plan::plan(t, asset, &ctx.config, Some(&requirements)).map_err(|e| refuse(&e.to_string()))?;
        let (Some(client), Some(idp)) = (&plan.client, &clients.identity) else {
            return Err(refuse("no identity-provider client in the plan"));
        };
        let cached = {
            let cache = self.client_secrets.lock().expect("not poisoned");
            cache.get(&client.client_id).filter(|(at, _)| at.elapsed() < CLIENT_SECRET_TTL).map(|(_, s)| s.clone())
        };
        let fetch = || async {
            let secret = idp.client_secret(&client.client_id, &plan.owner).await.map_err(|e| refuse(&e.to_string()))?;
            let mut cache = self.client_secrets.lock().expect("not poisoned");
            // Bounded: entries of transfers gone or idle for a TTL go first.
            if cache.len() >= 10_000 {
                cache.retain(|_, (at, _)| at.elapsed() < CLIENT_SECRET_TTL);
            }
            cache.insert(client.client_id.clone(), (Instant::now(), secret.clone()));
            Ok::<_, OAuthError>(secret)
        };
        let (secret, was_cached) = match cached {
            Some(secret) => (secret, true),
            None => (fetch().await?, false),
        };
        let tokens = match idp.issue_token(&client.client_id, &secret).await {
            Ok(tokens) => tokens,
            // A cached secret the identity provider no longer takes (regenerated): read it again.
            Err(BackendError::Rejected { .. }) if was_cached => {
                let secret = fetch().await?;
                idp.issue_token(&client.client_id, &secret).await.map_err(|e| refuse(&e.to_string()))?
            }
            Err(e) => return Err(refuse(&e.to_string())),
        };
        Ok((tokens.access_token, tokens.expires_in))
    }
}

/// Whether the transfer is one that may get tokens now: Active, wanted Started, not being
/// deleted, not past `spec.expiresAt` (the controller may not have noticed yet).
fn may_get_tokens(t: &MqttTransfer) -> Result<(), OAuthError> {
    let phase = t.status.as_ref().and_then(|s| s.phase);
    let wanted = t.spec.state.unwrap_or_default();
    let expired = t.spec.expires_at.as_ref().is_some_and(|at| at.0 <= k8s_openapi::jiff::Timestamp::now());
    let why = if t.metadata.deletion_timestamp.is_some() {
        Some("is being deleted".to_owned())
    } else if expired {
        Some("has expired".to_owned())
    } else if wanted != TransferState::Started {
        Some(format!("is {wanted:?}"))
    } else if phase != Some(TransferPhase::Active) {
        Some(format!("is {}", phase.map(|p| format!("{p:?}")).unwrap_or_else(|| "not yet active".into())))
    } else {
        None
    };
    match why {
        Some(why) => Err(OAuthError::invalid_grant(format!("the transfer {why}: it gets no new tokens"))),
        None => Ok(()),
    }
}

fn backend(what: &str, e: kube::Error) -> OAuthError {
    warn!("refresh: cannot {what}: {e}");
    OAuthError::unavailable(format!("cannot {what} now; retry later"))
}
