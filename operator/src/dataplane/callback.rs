//! The other direction: a data flow the provider ends (its MqttTransfer terminated, expired,
//! completed, or deleted) is reported to the control plane that started it, through the legacy
//! signaling callback `{callbackAddress}/transferprocess/{processId}/complete` or `/fail`
//! (`{"errorMessage": …}`), so that the transfer process, and over DSP the consumer's, leaves
//! STARTED.
//!
//! A flow started through Data Plane Signaling 1.0 that completed is reported to
//! `{callbackAddress}/transfers/{processId}/dataflow/completed`. An end with a reason
//! (terminated, expired, deleted) goes to `…/errored` with it, the spec's word for it; EDC 0.18
//! only logs that and leaves the process STARTED (and `completed` would tell the consumer the
//! transfer completed, and is refused for a suspended one), so the operator then terminates the
//! provider's process through the connector profile's Management API
//! (`POST {managementUrl}/v3/transferprocesses/{processId}/terminate` with the reason), and EDC
//! tells the consumer over DSP. Callbacks carry a bearer JWT naming the data plane
//! ([`super::dps::callback_token`]).
//!
//! Ends the control plane asked for itself (suspend, terminate) are not reported back: the
//! handlers mark them with [`REQUESTED_ANNOTATION`]. A report is recorded in
//! [`REPORTED_ANNOTATION`], so each end is reported once (across restarts too).

use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use secrecy::ExposeSecret;
use serde_json::json;
use tracing::{info, warn};

use super::flows::{CALLBACK_ANNOTATION, CONNECTOR_ANNOTATION, MANAGED_LABEL, PROCESS_ID_ANNOTATION};
use crate::api::{MqttTransfer, TransferPhase};

/// Annotation: the control plane asked for the current state (its value: the state).
pub const REQUESTED_ANNOTATION: &str = "dsp-mqtt.io/state-requested-by-control-plane";
/// Annotation: the end reported to the control plane (`complete` or `fail`).
pub const REPORTED_ANNOTATION: &str = "dsp-mqtt.io/reported-to-control-plane";

/// What to report for a transfer, if anything: (`complete`|`fail`, reason).
pub fn report_for(t: &MqttTransfer) -> Option<(&'static str, String)> {
    let annotations = t.metadata.annotations.as_ref()?;
    annotations.get(CALLBACK_ANNOTATION)?;
    if annotations.contains_key(REPORTED_ANNOTATION) {
        return None;
    }
    let requested = annotations.get(REQUESTED_ANNOTATION).map(String::as_str);
    if t.metadata.deletion_timestamp.is_some() {
        // Deleted after the control plane terminated it: nothing new to tell.
        return (requested != Some("Terminated")).then(|| ("fail", "the provider deleted the transfer".to_owned()));
    }
    let status = t.status.as_ref()?;
    if status.observed_generation != t.metadata.generation {
        return None;
    }
    match status.phase? {
        TransferPhase::Completed if requested != Some("Completed") => Some(("complete", String::new())),
        TransferPhase::Terminated if requested != Some("Terminated") => {
            Some(("fail", "the provider terminated the transfer".to_owned()))
        }
        TransferPhase::Expired => Some(("fail", "the transfer expired (spec.expiresAt)".to_owned())),
        _ => None,
    }
}

/// What Data Plane Signaling 1.0 callbacks are signed with and say who sends them.
#[derive(Clone)]
pub struct DpsCallbacks {
    /// The key the callback JWTs are signed with.
    pub key: super::dps::CallbackKey,
    /// The data plane id registered per connector profile (the JWT's `sub`).
    pub data_plane_ids: std::collections::BTreeMap<String, String>,
    /// Per connector profile: its Management API base URL and `X-Api-Key`, to terminate a
    /// process the provider ended.
    pub management: std::collections::BTreeMap<String, (String, secrecy::SecretString)>,
}

/// Watches the data plane's transfers and reports provider-side ends until `shutdown`.
pub async fn report_ends(
    client: kube::Client,
    namespace: Option<String>,
    http: reqwest::Client,
    dps: DpsCallbacks,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let api: Api<MqttTransfer> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let config = watcher::Config::default().labels(&format!("{MANAGED_LABEL}=signaling"));
    let mut stream = watcher::watcher(api, config).boxed();
    loop {
        let event = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            e = stream.next() => e,
        };
        let t = match event {
            Some(Ok(Event::Apply(t))) | Some(Ok(Event::InitApply(t))) => t,
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                warn!("data plane: watching transfers for ends to report: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            None => return,
        };
        if let Some((kind, reason)) = report_for(&t) {
            report(&client, &http, &dps, &t, kind, &reason).await;
        }
    }
}

async fn send(request: reqwest::RequestBuilder) -> Result<(), String> {
    match request.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        // The control plane no longer knows the process, or it is already in a final state.
        Ok(r) if matches!(r.status().as_u16(), 404 | 409) => Ok(()),
        Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
        Err(e) => Err(e.without_url().to_string()),
    }
}

async fn report(
    client: &kube::Client,
    http: &reqwest::Client,
    dps: &DpsCallbacks,
    t: &MqttTransfer,
    kind: &str,
    reason: &str,
) {
    let annotations = t.metadata.annotations.clone().unwrap_or_default();
    let (Some(callback), Some(process)) =
        (annotations.get(CALLBACK_ANNOTATION), annotations.get(PROCESS_ID_ANNOTATION))
    else {
        return;
    };
    let encoded: String =
        url::form_urlencoded::byte_serialize(process.as_bytes()).collect::<String>().replace('+', "%20");
    let base = callback.trim_end_matches('/');
    let outcome = if super::flows::signaling_of(t) == super::config::Signaling::Dps1 {
        let connector = annotations.get(CONNECTOR_ANNOTATION).cloned().unwrap_or_default();
        let Some(id) = dps.data_plane_ids.get(&connector) else {
            warn!(process, connector, "data plane: no Data Plane Signaling 1.0 registration to report an end as");
            return;
        };
        let post = |step: &str, body: serde_json::Value| {
            http.post(format!("{base}/transfers/{encoded}/dataflow/{step}"))
                .bearer_auth(super::dps::callback_token(&dps.key, id))
                .json(&body)
        };
        if kind == "fail" {
            let Some((management, key)) = dps.management.get(&connector) else {
                warn!(process, connector, "data plane: no Management API to terminate the process through");
                return;
            };
            let errored = json!({"messageId": super::dps::message_id(), "dataFlowId": process,
                "state": "TERMINATED", "error": reason});
            let terminate = json!({"@context": {"@vocab": super::message::EDC_NAMESPACE},
                "@type": "TerminateTransfer", "reason": reason});
            match send(post("errored", errored)).await {
                Ok(()) => {
                    let url = format!("{}/v3/transferprocesses/{encoded}/terminate", management.trim_end_matches('/'));
                    send(http.post(url).header("X-Api-Key", key.expose_secret()).json(&terminate)).await
                }
                Err(e) => Err(e),
            }
        } else {
            send(post(
                "completed",
                json!({"messageId": super::dps::message_id(), "dataFlowId": process, "state": "COMPLETED"}),
            ))
            .await
        }
    } else {
        let request = http.post(format!("{base}/transferprocess/{encoded}/{kind}"));
        let request = if kind == "fail" { request.json(&json!({"errorMessage": reason})) } else { request };
        send(request).await
    };
    let name = t.metadata.name.clone().unwrap_or_default();
    match outcome {
        Ok(()) => {
            info!(process, transfer = name, kind, "data plane: reported the end of a data flow to the control plane");
            let ns = t.metadata.namespace.clone().unwrap_or_default();
            let patch = json!({"metadata": {"annotations": {REPORTED_ANNOTATION: kind}}});
            if let Err(e) = Api::<MqttTransfer>::namespaced(client.clone(), &ns)
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                // Gone meanwhile (deleted): nothing to record it on.
                if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
                    warn!(transfer = name, "data plane: cannot record the report: {e}");
                }
            }
        }
        // The next change of the transfer (or the watcher's relist) tries again.
        Err(e) => warn!(process, transfer = name, "data plane: reporting the end of a data flow failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn transfer(phase: TransferPhase, requested: Option<&str>) -> MqttTransfer {
        let mut t: MqttTransfer = serde_json::from_value(json!({
            "apiVersion": "dsp-mqtt.io/v1alpha1", "kind": "MqttTransfer",
            "metadata": {"name": "dsp-x", "namespace": "ns", "generation": 2, "annotations": {
                CALLBACK_ANNOTATION: "https://cp/control", PROCESS_ID_ANNOTATION: "p-1"}},
            "spec": {"assetRef": {"name": "a"}, "consumer": {"participantId": "did:web:c"}},
            "status": {"observedGeneration": 2, "phase": phase},
        }))
        .unwrap();
        if let Some(r) = requested {
            t.metadata.annotations.as_mut().unwrap().insert(REQUESTED_ANNOTATION.into(), r.into());
        }
        t
    }

    #[test]
    fn provider_side_ends_are_reported_once_and_control_plane_ones_never() {
        assert_eq!(report_for(&transfer(TransferPhase::Active, None)), None);
        assert_eq!(report_for(&transfer(TransferPhase::Suspended, Some("Suspended"))), None);
        assert_eq!(report_for(&transfer(TransferPhase::Terminated, Some("Terminated"))), None);
        assert_eq!(report_for(&transfer(TransferPhase::Terminated, None)).unwrap().0, "fail");
        assert_eq!(report_for(&transfer(TransferPhase::Expired, None)).unwrap().0, "fail");
        assert_eq!(report_for(&transfer(TransferPhase::Completed, None)).unwrap().0, "complete");
        let mut deleted = transfer(TransferPhase::Active, None);
        deleted.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        assert_eq!(report_for(&deleted).unwrap().1, "the provider deleted the transfer");
        let mut reported = transfer(TransferPhase::Terminated, None);
        reported.metadata.annotations.as_mut().unwrap().insert(REPORTED_ANNOTATION.into(), "fail".into());
        assert_eq!(report_for(&reported), None);
        let mut stale = transfer(TransferPhase::Terminated, None);
        stale.metadata.generation = Some(3);
        assert_eq!(report_for(&stale), None, "a status of an older generation says nothing yet");
    }
}
