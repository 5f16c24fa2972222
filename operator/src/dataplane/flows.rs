//! One data flow = one MqttTransfer: what start, suspend, terminate and state do in the cluster.
//!
//! The transfer's name is derived from the process id alone (`dsp-<40 hex of SHA-256>`), so a
//! retried start (the control plane retries every answer but 200/204) finds the transfer the
//! first attempt created instead of making a second one, across operator restarts too. The label
//! `dsp-mqtt.io/process-id-hash` finds it again from a suspend or terminate, which carry only the
//! process id; the annotation with the full id guards against a hash prefix collision.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::message::{Refusal, StartMessage};
use crate::api::{AssetRef, Consumer, MqttAsset, MqttTransfer, MqttTransferSpec, TransferPhase, TransferState};
use crate::config::Config;

/// Label: the data plane made this transfer.
pub const MANAGED_LABEL: &str = "dsp-mqtt.io/data-plane";
/// Label: the first 40 hex digits of the SHA-256 of the process id.
pub const PROCESS_HASH_LABEL: &str = "dsp-mqtt.io/process-id-hash";
/// Annotation: the transfer process id.
pub const PROCESS_ID_ANNOTATION: &str = "dsp-mqtt.io/process-id";
/// Annotation: the contract agreement id.
pub const AGREEMENT_ID_ANNOTATION: &str = "dsp-mqtt.io/agreement-id";
/// Annotation: the consumer's participant id.
pub const PARTICIPANT_ID_ANNOTATION: &str = "dsp-mqtt.io/participant-id";
/// Annotation: the dataset (asset) id.
pub const DATASET_ID_ANNOTATION: &str = "dsp-mqtt.io/dataset-id";
/// Annotation: where the control plane wants to hear about the end of the flow.
pub const CALLBACK_ANNOTATION: &str = "dsp-mqtt.io/callback-address";
/// Annotation: the connector profile whose control plane started the flow.
pub const CONNECTOR_ANNOTATION: &str = "dsp-mqtt.io/connector";
/// Annotation: the signaling the flow was started through (`dps-1.0`; absent: legacy).
pub const SIGNALING_ANNOTATION: &str = "dsp-mqtt.io/signaling";

/// The cluster side of the data plane.
#[derive(Clone)]
pub struct Flows {
    /// The operator's client.
    pub client: kube::Client,
    /// The operator configuration (connector profiles, namespaces they serve).
    pub config: std::sync::Arc<Config>,
    /// Namespace the operator watches; all when `None` (as the controllers' setting).
    pub namespace: Option<String>,
    /// How long a start waits for Ready.
    pub start_timeout: Duration,
    /// Longest wait between two reads of a transfer while waiting (a watch wakes it earlier).
    pub poll: Duration,
}

/// The signaling a transfer's flow was started through ([`SIGNALING_ANNOTATION`]).
pub fn signaling_of(t: &MqttTransfer) -> super::config::Signaling {
    let name = t.metadata.annotations.as_ref().and_then(|a| a.get(SIGNALING_ANNOTATION));
    match name.map(String::as_str) {
        Some(n) if n == super::config::Signaling::Dps1.name() => super::config::Signaling::Dps1,
        _ => super::config::Signaling::Legacy,
    }
}

/// `40 hex digits of SHA-256(process id)`.
pub fn process_hash(process_id: &str) -> String {
    let digest = Sha256::digest(process_id.as_bytes());
    digest.iter().take(20).map(|b| format!("{b:02x}")).collect()
}

/// The MqttTransfer's name for a process id.
pub fn transfer_name(process_id: &str) -> String {
    format!("dsp-{}", process_hash(process_id))
}

fn internal(what: &str, e: impl std::fmt::Display) -> Refusal {
    warn!("data plane: {what}: {e}");
    // The Kubernetes error may name objects of other tenants: the control plane gets the what only.
    Refusal { status: 503, reason: format!("{what} failed; the operator's log has the details") }
}

/// The state name of EDC's `DataFlowStates` for a transfer.
pub fn flow_state(transfer: &MqttTransfer) -> &'static str {
    match transfer.status.as_ref().and_then(|s| s.phase) {
        None | Some(TransferPhase::Pending) => "RECEIVED",
        Some(TransferPhase::Active) => "STARTED",
        Some(TransferPhase::Suspended) => "SUSPENDED",
        Some(TransferPhase::Terminated) | Some(TransferPhase::Expired) => "TERMINATED",
        Some(TransferPhase::Completed) => "COMPLETED",
        Some(TransferPhase::Failed) => "FAILED",
    }
}

fn settled_in(transfer: &MqttTransfer, phase: TransferPhase) -> bool {
    transfer.status.as_ref().is_some_and(|s| {
        s.phase == Some(phase)
            && s.observed_generation.is_some()
            && s.observed_generation == transfer.metadata.generation
    })
}

fn ready_message(transfer: &MqttTransfer) -> String {
    transfer
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == crate::status::READY))
        .map(|c| format!("{}: {}", c.reason, c.message))
        .unwrap_or_else(|| "no Ready condition yet".into())
}

impl Flows {
    fn assets(&self) -> Api<MqttAsset> {
        match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    fn transfers_everywhere(&self) -> Api<MqttTransfer> {
        match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    /// The MqttAsset published as `dataset_id` through connector profile `connector`: the asset
    /// must use that profile and the operator must have published it under that id.
    pub async fn find_asset(&self, dataset_id: &str, connector: &str) -> Result<MqttAsset, Refusal> {
        let assets = self.assets().list(&ListParams::default()).await.map_err(|e| internal("listing MqttAssets", e))?;
        assets
            .items
            .into_iter()
            .find(|a| {
                crate::plan::profile_name(a.spec.connector.as_ref()) == connector
                    && crate::plan::asset::asset_id(a) == dataset_id
                    && a.status.as_ref().and_then(|s| s.connector.as_ref()).and_then(|c| c.asset_id.as_deref())
                        == Some(dataset_id)
                    && a.metadata.deletion_timestamp.is_none()
            })
            .ok_or_else(|| Refusal {
                status: 404,
                reason: format!("dataset {dataset_id} is not an MQTT asset this data plane serves"),
            })
    }

    /// The transfer of `process_id`, if any.
    pub async fn find_transfer(&self, process_id: &str) -> Result<Option<MqttTransfer>, Refusal> {
        let selector = format!("{PROCESS_HASH_LABEL}={}", process_hash(process_id));
        let list = self
            .transfers_everywhere()
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| internal("listing MqttTransfers", e))?;
        Ok(list.items.into_iter().find(|t| {
            t.metadata.annotations.as_ref().and_then(|a| a.get(PROCESS_ID_ANNOTATION)).map(String::as_str)
                == Some(process_id)
        }))
    }

    /// Start (or resume: EDC 0.15 resumes by starting the same process again): the transfer
    /// exists and is Started, Ready within the bound; returns the DataAddress from its Secret.
    pub async fn start(&self, message: &StartMessage, connector: &str) -> Result<Map<String, Value>, Refusal> {
        let asset = self.find_asset(&message.dataset_id, connector).await?;
        let namespace = asset.metadata.namespace.clone().unwrap_or_default();
        let asset_name = asset.metadata.name.clone().unwrap_or_default();
        let api: Api<MqttTransfer> = Api::namespaced(self.client.clone(), &namespace);
        let candidate = self.new_transfer(message, &asset_name, connector);
        // The controller would refuse a consumer outside the asset's policy too, but only after
        // the transfer exists: refusing here keeps a bad start from creating anything. (The
        // reason names no other participant.)
        crate::plan::transfer::check_consumer(&candidate, &asset).map_err(|_| Refusal {
            status: 403,
            reason: format!(
                "participant {} is not permitted by dataset {}'s policy",
                message.participant_id, message.dataset_id
            ),
        })?;
        let existing = match self.find_transfer(&message.process_id).await? {
            Some(t) => Some(t),
            None => match api.create(&PostParams::default(), &candidate).await {
                Ok(t) => {
                    info!(
                        namespace,
                        transfer = t.metadata.name.as_deref().unwrap_or_default(),
                        asset = asset_name,
                        "data plane: created an MqttTransfer for a started data flow"
                    );
                    None
                }
                // A concurrent start of the same process made it first.
                Err(kube::Error::Api(e)) if e.code == 409 => api
                    .get(&transfer_name(&message.process_id))
                    .await
                    .map(Some)
                    .map_err(|e| internal("reading the MqttTransfer", e))?,
                Err(kube::Error::Api(e)) if e.code == 422 => {
                    return Err(Refusal::bad_request(format!(
                        "the start does not make a valid MqttTransfer: {}",
                        e.message
                    )));
                }
                Err(e) => return Err(internal("creating the MqttTransfer", e)),
            },
        };
        let name = transfer_name(&message.process_id);
        if let Some(t) = existing {
            let ours =
                t.metadata.namespace.as_deref() == Some(namespace.as_str()) && t.spec.asset_ref.name == asset_name;
            if !ours {
                return Err(Refusal {
                    status: 409,
                    reason: format!("process {} belongs to another dataset", message.process_id),
                });
            }
            if t.spec.consumer.participant_id != message.participant_id
                || t.spec.agreement_id.as_deref() != Some(message.agreement_id.as_str())
            {
                return Err(Refusal {
                    status: 409,
                    reason: format!("process {} was started with another agreement or participant", message.process_id),
                });
            }
            if t.metadata.deletion_timestamp.is_some() {
                return Err(Refusal {
                    status: 409,
                    reason: format!("process {} is being deleted by the provider", message.process_id),
                });
            }
            match t.spec.state.unwrap_or_default() {
                TransferState::Started => {}
                TransferState::Suspended => {
                    self.set_state(&api, &name, TransferState::Started).await?;
                    info!(namespace, transfer = name, "data plane: resumed a suspended data flow");
                }
                s => {
                    return Err(Refusal {
                        status: 409,
                        reason: format!("process {} is {s:?}; a final transfer cannot start again", message.process_id),
                    });
                }
            }
        }
        let ready = self.wait(&api, &name, TransferPhase::Active, self.start_timeout).await?;
        let secret_name = ready
            .status
            .as_ref()
            .and_then(|s| s.credentials_secret_ref.as_ref())
            .map(|r| r.name.clone())
            .unwrap_or_else(|| name.clone());
        let secret = Api::<Secret>::namespaced(self.client.clone(), &namespace)
            .get(&secret_name)
            .await
            .map_err(|e| internal("reading the transfer's Secret", e))?;
        let data_address = secret
            .data
            .as_ref()
            .and_then(|d| d.get("dataAddress.json"))
            .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b.0).ok())
            .ok_or_else(|| Refusal { status: 503, reason: "the transfer's Secret holds no DataAddress yet".into() })?;
        Ok(data_address)
    }

    fn new_transfer(&self, message: &StartMessage, asset: &str, connector: &str) -> MqttTransfer {
        let mut annotations = BTreeMap::from([
            (PROCESS_ID_ANNOTATION.to_owned(), message.process_id.clone()),
            (AGREEMENT_ID_ANNOTATION.to_owned(), message.agreement_id.clone()),
            (PARTICIPANT_ID_ANNOTATION.to_owned(), message.participant_id.clone()),
            (DATASET_ID_ANNOTATION.to_owned(), message.dataset_id.clone()),
            (CONNECTOR_ANNOTATION.to_owned(), connector.to_owned()),
        ]);
        if let Some(callback) = &message.callback_address {
            annotations.insert(CALLBACK_ANNOTATION.to_owned(), callback.clone());
        }
        if message.signaling != super::config::Signaling::Legacy {
            annotations.insert(SIGNALING_ANNOTATION.to_owned(), message.signaling.name().to_owned());
            // EDC 0.18's consumer keeps the first start's EDR across a resume.
            annotations.insert(crate::api::KEEP_PASSWORD_ON_RESUME_ANNOTATION.to_owned(), "true".to_owned());
        }
        let labels = BTreeMap::from([
            (MANAGED_LABEL.to_owned(), "signaling".to_owned()),
            (PROCESS_HASH_LABEL.to_owned(), process_hash(&message.process_id)),
        ]);
        MqttTransfer {
            metadata: ObjectMeta {
                name: Some(transfer_name(&message.process_id)),
                labels: Some(labels),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: MqttTransferSpec {
                asset_ref: AssetRef { name: asset.to_owned() },
                consumer: Consumer { participant_id: message.participant_id.clone() },
                transfer_process_id: Some(message.process_id.clone()),
                agreement_id: Some(message.agreement_id.clone()),
                state: Some(TransferState::Started),
                topics: None,
                expires_at: None,
                token_lifetime_seconds: None,
                secret_name: None,
            },
            status: None,
        }
    }

    /// Sets `spec.state`, marking it as the control plane's wish (so that the end is not
    /// reported back to it, see [`super::callback`]).
    async fn set_state(&self, api: &Api<MqttTransfer>, name: &str, state: TransferState) -> Result<(), Refusal> {
        let patch = json!({
            "metadata": {"annotations": {super::callback::REQUESTED_ANNOTATION: state}},
            "spec": {"state": state},
        });
        api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(drop)
            .map_err(|e| internal("setting the MqttTransfer's state", e))
    }

    /// Waits until the transfer's status shows `phase` for its current generation; a Failed
    /// phase ends the wait at once with the Ready condition's reason.
    async fn wait(
        &self,
        api: &Api<MqttTransfer>,
        name: &str,
        phase: TransferPhase,
        timeout: Duration,
    ) -> Result<MqttTransfer, Refusal> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let t = api.get(name).await.map_err(|e| internal("reading the MqttTransfer", e))?;
            if settled_in(&t, phase) {
                return Ok(t);
            }
            if settled_in(&t, TransferPhase::Failed) {
                return Err(Refusal {
                    status: 422,
                    reason: format!("the transfer cannot be granted ({})", ready_message(&t)),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Refusal {
                    status: 503,
                    reason: format!(
                        "the transfer is not {phase:?} within {} s ({}); retry",
                        timeout.as_secs(),
                        ready_message(&t)
                    ),
                });
            }
            // Woken by a watch as soon as the controller writes the status (polling alone would
            // add half an interval to every start); `poll` bounds the wait if the watch stalls.
            let settled = move |t: Option<&MqttTransfer>| {
                t.is_none_or(|t| settled_in(t, phase) || settled_in(t, TransferPhase::Failed))
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let _ = tokio::time::timeout(
                self.poll.min(left),
                kube::runtime::wait::await_condition(api.clone(), name, settled),
            )
            .await;
        }
    }

    /// Suspend: cut the consumer off (the controller revokes); answers once it has.
    pub async fn suspend(&self, process_id: &str) -> Result<(), Refusal> {
        let t = self
            .find_transfer(process_id)
            .await?
            .ok_or_else(|| Refusal { status: 404, reason: format!("no data flow {process_id}") })?;
        let (api, name) = self.api_of(&t);
        match t.spec.state.unwrap_or_default() {
            TransferState::Suspended => {}
            TransferState::Started => self.set_state(&api, &name, TransferState::Suspended).await?,
            s => return Err(Refusal { status: 409, reason: format!("data flow {process_id} is {s:?}") }),
        }
        self.wait(&api, &name, TransferPhase::Suspended, self.start_timeout).await.map(drop)
    }

    /// Terminate: revoke for good. An unknown process is already terminated (a start the data
    /// plane refused never made a transfer, and the control plane terminates it anyway).
    pub async fn terminate(&self, process_id: &str) -> Result<(), Refusal> {
        self.end(process_id, TransferState::Terminated).await
    }

    /// Resume (Data Plane Signaling 1.0 has a message of its own; the legacy signaling sends
    /// start again): the transfer goes back to Started, and the answer carries its credentials,
    /// as a start's does.
    pub async fn resume(&self, process_id: &str, connector: &str) -> Result<Map<String, Value>, Refusal> {
        let t = self
            .find_transfer(process_id)
            .await?
            .ok_or_else(|| Refusal { status: 404, reason: format!("no data flow {process_id}") })?;
        let signaling = signaling_of(&t);
        let annotations = t.metadata.annotations.clone().unwrap_or_default();
        let message = StartMessage {
            process_id: process_id.to_owned(),
            dataset_id: annotations.get(DATASET_ID_ANNOTATION).cloned().unwrap_or_default(),
            agreement_id: t.spec.agreement_id.clone().unwrap_or_default(),
            participant_id: t.spec.consumer.participant_id.clone(),
            callback_address: annotations.get(CALLBACK_ANNOTATION).cloned(),
            signaling,
        };
        self.start(&message, connector).await
    }

    /// Completed (the control plane says the transfer is done): revoke for good, as Completed.
    pub async fn complete(&self, process_id: &str) -> Result<(), Refusal> {
        self.end(process_id, TransferState::Completed).await
    }

    /// Ends a flow for good as `wanted` (Terminated or Completed) and answers once access is
    /// revoked. An unknown flow (refused at start, or deleted by the provider) is over already:
    /// the control plane ends such processes anyway, and an error would be fatal for them. A
    /// transfer already final stays as it is; a Suspended one cannot become Completed (DSP's
    /// states; the CRD refuses it) and ends Terminated.
    async fn end(&self, process_id: &str, wanted: TransferState) -> Result<(), Refusal> {
        let Some(t) = self.find_transfer(process_id).await? else { return Ok(()) };
        if t.metadata.deletion_timestamp.is_some() {
            // The provider deleted it: the controller's finalizer revokes everything.
            return Ok(());
        }
        let (api, name) = self.api_of(&t);
        let state = t.spec.state.unwrap_or_default();
        let end = match (state, wanted) {
            (s, _) if s.is_final() => s,
            (TransferState::Suspended, TransferState::Completed) => TransferState::Terminated,
            (_, w) => w,
        };
        if !state.is_final() {
            self.set_state(&api, &name, end).await?;
        }
        let phase = match end {
            TransferState::Completed => TransferPhase::Completed,
            _ => TransferPhase::Terminated,
        };
        match self.wait(&api, &name, phase, self.start_timeout).await {
            Ok(_) => Ok(()),
            // Expired is as revoked as Terminated.
            Err(_) if api.get(&name).await.is_ok_and(|t| settled_in(&t, TransferPhase::Expired)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The flow's state, as EDC names it.
    pub async fn state(&self, process_id: &str) -> Result<&'static str, Refusal> {
        let t = self
            .find_transfer(process_id)
            .await?
            .ok_or_else(|| Refusal { status: 404, reason: format!("no data flow {process_id}") })?;
        Ok(flow_state(&t))
    }

    fn api_of(&self, t: &MqttTransfer) -> (Api<MqttTransfer>, String) {
        let ns = t.metadata.namespace.clone().unwrap_or_default();
        (Api::namespaced(self.client.clone(), &ns), t.metadata.name.clone().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deterministic_valid_and_distinct() {
        let a = transfer_name("3f1c2a4e-0000-4000-8000-000000000001");
        assert_eq!(a, transfer_name("3f1c2a4e-0000-4000-8000-000000000001"));
        assert_ne!(a, transfer_name("3f1c2a4e-0000-4000-8000-000000000002"));
        assert_eq!(a.len(), 44);
        let re = regex::Regex::new(crate::api::OBJECT_NAME_PATTERN).unwrap();
        assert!(re.is_match(&a), "{a}");
        // A label value: at most 63 characters.
        assert_eq!(process_hash("x").len(), 40);
    }
}
