//! Builders for test fixtures: `MqttTransfer::test().suspended()` rather than pasted JSON.

use kube::api::ObjectMeta;

use super::*;

impl MqttAsset {
    /// A valid asset `line-1` in namespace `dataspace`: mqtt-tls, usrpw, one topic filter, one
    /// permitted participant.
    pub fn test() -> Self {
        let mut asset = MqttAsset::new(
            "line-1",
            MqttAssetSpec {
                asset_id: None,
                connector: None,
                identity_provider: None,
                secret_store: None,
                broker: None,
                endpoint: Endpoint { endpoint_type: EndpointType::MqttTls, url: None },
                topics: vec!["factory/line-1/#".into()],
                auth: AssetAuth { mode: AuthMode::Usrpw, client_id: None, secret_alias: None },
                properties: None,
                private_properties: None,
                policy: AssetPolicy {
                    access: PolicyRule {
                        participant_ids: Some(vec!["did:web:consumer-a.example.com".into()]),
                        odrl: None,
                    },
                    contract: None,
                },
                deletion_policy: None,
            },
        );
        asset.metadata =
            ObjectMeta { name: Some("line-1".into()), namespace: Some("dataspace".into()), ..Default::default() };
        asset
    }

    /// With this asset id.
    pub fn asset_id(mut self, id: &str) -> Self {
        self.spec.asset_id = Some(id.into());
        self
    }

    /// With this endpoint.
    pub fn endpoint(mut self, endpoint_type: EndpointType, url: Option<&str>) -> Self {
        self.spec.endpoint = Endpoint { endpoint_type, url: url.map(Into::into) };
        self
    }
}

impl MqttTransfer {
    /// A valid transfer of asset `line-1` to `did:web:consumer-a.example.com`, state unset.
    pub fn test() -> Self {
        let mut transfer = MqttTransfer::new(
            "line-1-consumer-a",
            MqttTransferSpec {
                asset_ref: AssetRef { name: "line-1".into() },
                consumer: Consumer { participant_id: "did:web:consumer-a.example.com".into() },
                transfer_process_id: None,
                agreement_id: None,
                state: None,
                topics: None,
                expires_at: None,
                token_lifetime_seconds: None,
                secret_name: None,
            },
        );
        transfer.metadata.namespace = Some("dataspace".into());
        transfer
    }

    /// In this DSP state.
    pub fn state(mut self, state: TransferState) -> Self {
        self.spec.state = Some(state);
        self
    }

    /// Suspended.
    pub fn suspended(self) -> Self {
        self.state(TransferState::Suspended)
    }

    /// Terminated.
    pub fn terminated(self) -> Self {
        self.state(TransferState::Terminated)
    }

    /// For this consumer.
    pub fn consumer(mut self, participant_id: &str) -> Self {
        self.spec.consumer.participant_id = participant_id.into();
        self
    }
}

/// The derived client-side CEL evaluation (`#[kube(cel)]`) on typed objects. The committed CRD
/// YAML is checked against example and bad manifests in `e2e/tests/crd_schema.rs`.
#[cfg(test)]
mod cel_rules {
    use super::*;

    fn messages(result: Result<(), kube::core::cel::ValidationErrors>) -> Vec<String> {
        result.err().map(|e| e.into_vec().into_iter().map(|e| e.message).collect()).unwrap_or_default()
    }

    #[test]
    fn final_transfer_states_cannot_be_left() {
        let old = MqttTransfer::test().terminated();
        let new = MqttTransfer::test().state(TransferState::Started);
        let errors = messages(new.validate_cel_update(&old));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("a Terminated or Completed transfer is final"), "{errors:?}");
        let old = MqttTransfer::test().state(TransferState::Completed);
        assert_eq!(messages(MqttTransfer::test().validate_cel_update(&old)).len(), 1);
    }

    #[test]
    fn suspend_and_resume_are_allowed() {
        let started = MqttTransfer::test().state(TransferState::Started);
        let suspended = MqttTransfer::test().suspended();
        assert!(suspended.validate_cel_update(&started).is_ok());
        assert!(started.validate_cel_update(&suspended).is_ok());
        assert!(MqttTransfer::test().terminated().validate_cel_update(&suspended).is_ok());
    }

    #[test]
    fn a_suspended_transfer_cannot_complete() {
        let errors = messages(
            MqttTransfer::test().state(TransferState::Completed).validate_cel_update(&MqttTransfer::test().suspended()),
        );
        assert!(errors.iter().any(|e| e.starts_with("a Suspended transfer can be resumed")), "{errors:?}");
    }

    #[test]
    fn the_consumer_is_immutable() {
        let old = MqttTransfer::test();
        let new = MqttTransfer::test().consumer("did:web:consumer-b.example.com");
        let errors = messages(new.validate_cel_update(&old));
        assert!(errors.iter().any(|e| e.starts_with("spec.consumer is immutable")), "{errors:?}");
    }

    #[test]
    fn the_asset_id_is_immutable_and_cannot_be_added_later() {
        let errors = messages(MqttAsset::test().asset_id("b").validate_cel_update(&MqttAsset::test().asset_id("a")));
        assert!(errors.iter().any(|e| e == "spec.assetId is immutable"), "{errors:?}");
        let errors = messages(MqttAsset::test().asset_id("a").validate_cel_update(&MqttAsset::test()));
        assert!(errors.iter().any(|e| e.contains("cannot be added or removed")), "{errors:?}");
        assert!(MqttAsset::test().asset_id("a").validate_cel_update(&MqttAsset::test().asset_id("a")).is_ok());
    }

    #[test]
    fn endpoint_urls_must_be_encrypted_and_fit_the_type() {
        assert!(
            MqttAsset::test().endpoint(EndpointType::MqttWss, Some("wss://b.example.com/mqtt")).validate_cel().is_ok()
        );
        assert!(
            MqttAsset::test().endpoint(EndpointType::MqttTls, Some("ssl://b.example.com:8883")).validate_cel().is_ok()
        );
        let plain =
            messages(MqttAsset::test().endpoint(EndpointType::MqttTls, Some("mqtt://b.example.com")).validate_cel());
        assert!(plain.iter().any(|e| e.starts_with("unencrypted mqtt:// and ws://")), "{plain:?}");
        let mismatch =
            messages(MqttAsset::test().endpoint(EndpointType::MqttWss, Some("mqtts://b.example.com")).validate_cel());
        assert!(mismatch.iter().any(|e| e.starts_with("endpoint.url does not fit endpoint.type")), "{mismatch:?}");
    }
}
