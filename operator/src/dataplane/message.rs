//! The legacy Data Plane Signaling messages (EDC 0.15–0.17) as the control plane sends them, and
//! the answers it expects. Pure functions: no I/O, so every rule here is unit- and property-tested.
//!
//! EDC compacts its messages with the EDC vocabulary as `@vocab` (keys bare: `processId`), but a
//! control plane with other namespaces registered in its scope may send `edc:processId` or the full
//! IRI; all three spellings are read. Values may come as `{"@value": …}`.

use serde_json::{Map, Value, json};

/// The EDC vocabulary.
pub const EDC_NAMESPACE: &str = "https://w3id.org/edc/v0.0.1/ns/";
/// The only transfer type this data plane serves (`<destination type>-<flow type>`).
pub const TRANSFER_TYPE: &str = "Mqtt-PULL";
/// The asset `dataAddress.type` (source type) this data plane serves.
pub const SOURCE_TYPE: &str = "Mqtt";
/// Longest id (process, dataset, agreement) accepted: the MqttTransfer's fields allow 253.
pub const MAX_ID_LEN: usize = 253;
/// Longest participant id accepted (the MqttTransfer's `consumer.participantId` allows 512).
pub const MAX_PARTICIPANT_LEN: usize = 512;

/// A refusal: HTTP status and a reason the control plane logs (never a secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// Why.
    pub reason: String,
}

impl Refusal {
    /// 400 with `reason`.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self { status: 400, reason: reason.into() }
    }
    /// EDC's error body: an array of `{message, type}`.
    pub fn body(&self) -> Value {
        let kind = match self.status {
            400 | 413 | 415 | 422 => "BadRequest",
            401 | 403 => "NotAuthorized",
            404 => "ObjectNotFound",
            409 => "ObjectConflict",
            _ => "InternalError",
        };
        json!([{"message": self.reason, "type": kind}])
    }
}

/// What a start asks for (the fields this data plane uses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartMessage {
    /// The transfer process id (the provider's).
    pub process_id: String,
    /// The asset id.
    pub dataset_id: String,
    /// The contract agreement.
    pub agreement_id: String,
    /// The consumer's participant id.
    pub participant_id: String,
    /// Where to report the end of the flow (`{callbackAddress}/transferprocess/{id}/…`).
    pub callback_address: Option<String>,
    /// The signaling the start came through (and the end is reported back through).
    pub signaling: super::config::Signaling,
}

/// The key without the EDC vocabulary's prefix or namespace (`edc:processId`, the IRI, or bare).
fn local_name(key: &str) -> Option<&str> {
    if let Some(rest) = key.strip_prefix(EDC_NAMESPACE) {
        return Some(rest);
    }
    if let Some(rest) = key.strip_prefix("edc:") {
        return Some(rest);
    }
    // Any other prefix or IRI is another vocabulary's term: not ours.
    (!key.contains(':')).then_some(key)
}

/// The object's EDC-vocabulary members by local name (JSON-LD keywords kept as they are).
pub fn edc_members(object: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in object {
        if key.starts_with('@') {
            out.insert(key.clone(), value.clone());
        } else if let Some(name) = local_name(key) {
            out.insert(name.to_owned(), value.clone());
        }
    }
    out
}

/// A string value: plain, `{"@value": "…"}`, or a one-element array of either.
fn string_value(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("@value").and_then(string_value),
        Value::Array(items) if items.len() == 1 => string_value(&items[0]),
        _ => None,
    }
}

fn type_is(members: &Map<String, Value>, wanted: &str) -> bool {
    let matches = |v: &Value| string_value(v).and_then(local_name) == Some(wanted);
    match members.get("@type") {
        Some(Value::Array(items)) => items.iter().any(matches),
        Some(v) => matches(v),
        None => false,
    }
}

fn required<'a>(members: &'a Map<String, Value>, name: &str, max: usize) -> Result<&'a str, Refusal> {
    let value = members.get(name).ok_or_else(|| Refusal::bad_request(format!("{name} is missing")))?;
    let text = string_value(value).ok_or_else(|| Refusal::bad_request(format!("{name} must be a string")))?;
    check_id(name, text, max)?;
    Ok(text)
}

/// An id goes into labels' hash, annotations, a spec field and log lines: non-empty, bounded,
/// no control characters.
pub fn check_id(name: &str, text: &str, max: usize) -> Result<(), Refusal> {
    if text.trim().is_empty() {
        return Err(Refusal::bad_request(format!("{name} is empty")));
    }
    if text.len() > max {
        return Err(Refusal::bad_request(format!("{name} is longer than {max} bytes")));
    }
    if text.chars().any(char::is_control) {
        return Err(Refusal::bad_request(format!("{name} contains control characters")));
    }
    Ok(())
}

/// Parses and validates a `DataFlowStartMessage`. Refuses anything but a PULL of destination
/// type `Mqtt` (transfer type `Mqtt-PULL`), and messages without dataset, agreement or
/// participant.
pub fn parse_start(body: &[u8]) -> Result<StartMessage, Refusal> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| Refusal::bad_request(format!("the body is not JSON: {e}")))?;
    let object = value.as_object().ok_or_else(|| Refusal::bad_request("the body must be a JSON object"))?;
    let members = edc_members(object);
    if !type_is(&members, "DataFlowStartMessage") {
        return Err(Refusal::bad_request("@type must be DataFlowStartMessage"));
    }
    let process_id = required(&members, "processId", MAX_ID_LEN)?;
    let dataset_id = required(&members, "datasetId", MAX_ID_LEN)?;
    let agreement_id = required(&members, "agreementId", MAX_ID_LEN)?;
    let participant_id = required(&members, "participantId", MAX_PARTICIPANT_LEN)?;
    let flow_type = members.get("flowType").and_then(string_value).unwrap_or_default();
    let destination = members.get("transferTypeDestination").and_then(string_value).unwrap_or_default();
    if flow_type != "PULL" || destination != SOURCE_TYPE {
        return Err(Refusal::bad_request(format!(
            "transfer type {destination}-{flow_type} is not served here; this data plane serves {TRANSFER_TYPE} only"
        )));
    }
    if members.contains_key("transferTypeResponseChannel") {
        return Err(Refusal::bad_request("a response channel is not supported by the MQTT data plane"));
    }
    if let Some(source) = members.get("sourceDataAddress").and_then(Value::as_object)
        && let Some(kind) = source_type(source)
        && kind != SOURCE_TYPE
    {
        return Err(Refusal::bad_request(format!("source type {kind} is not served here (only {SOURCE_TYPE})")));
    }
    let callback_address = match members.get("callbackAddress") {
        None => None,
        Some(v) => {
            let text = string_value(v).ok_or_else(|| Refusal::bad_request("callbackAddress must be a string"))?;
            let url =
                url::Url::parse(text).map_err(|_| Refusal::bad_request("callbackAddress must be an absolute URL"))?;
            if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
                return Err(Refusal::bad_request("callbackAddress must be an http(s) URL with a host"));
            }
            Some(text.to_owned())
        }
    };
    Ok(StartMessage {
        process_id: process_id.to_owned(),
        dataset_id: dataset_id.to_owned(),
        agreement_id: agreement_id.to_owned(),
        participant_id: participant_id.to_owned(),
        callback_address,
        signaling: super::config::Signaling::Legacy,
    })
}

/// The DSP 0.8 namespace EDC 0.15's signaling client reads DataAddresses in (`dspace:`).
pub const DSPACE_NAMESPACE: &str = "https://w3id.org/dspace/v0.8/";

/// The source DataAddress's type: EDC 0.15 sends DataAddresses in the DSP 0.8 form
/// (`dspace:endpointType`, `dspace:endpointProperties`); an EDC-shaped one has `type`.
fn source_type(source: &Map<String, Value>) -> Option<&str> {
    let dspace = ["dspace:endpointType".to_owned(), format!("{DSPACE_NAMESPACE}endpointType")];
    let edc = ["type".to_owned(), "edc:type".to_owned(), format!("{EDC_NAMESPACE}type")];
    dspace.iter().chain(edc.iter()).find_map(|k| source.get(k)).and_then(string_value)
}

/// A DataAddress key as an IRI: `dsp-mqtt:x` in the ADR 012 namespace, a bare key in EDC's.
fn property_name(key: &str) -> String {
    match key.strip_prefix("dsp-mqtt:") {
        Some(local) => format!("{}{local}", crate::plan::transfer::DSP_MQTT_NAMESPACE),
        None if key.contains(':') => key.to_owned(),
        None => format!("{EDC_NAMESPACE}{key}"),
    }
}

/// A JSON value as an endpoint property's string: a string as it is, anything else (a list of
/// topics) its JSON text.
fn string_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The transfer DataAddress's members as endpoint properties, in either signaling: named by
/// their IRI ([`property_name`]), valued by a string ([`string_of`]); JSON-LD keywords and `type`
/// (the endpoint type) left out.
pub(super) fn endpoint_properties(data_address: &Map<String, Value>) -> impl Iterator<Item = (String, String)> + '_ {
    data_address
        .iter()
        .filter(|(key, _)| !key.starts_with('@') && *key != "type")
        .map(|(key, value)| (property_name(key), string_of(value)))
}

/// The EDR the control plane passes on to the consumer: the transfer's DataAddress (as in its
/// Secret), in the DSP 0.8 form EDC 0.15's signaling client reads (it parses a start answer's
/// `dataAddress` with its DSP transformer and fails on an EDC-shaped one: no
/// `dspace:endpointType`). `endpointType` is `Mqtt`, every property an `EndpointProperty` named
/// by its IRI, with an `endpoint` (the broker URL) added. Values that are not strings (a list of
/// topics) become their JSON text: EDC turns each property into a string again on its way to
/// the consumer and fails on a list.
pub fn edr(data_address: &Map<String, Value>) -> Value {
    let mut properties: Vec<Value> = endpoint_properties(data_address)
        .map(|(name, value)| json!({"@type": "dspace:EndpointProperty", "dspace:name": name, "dspace:value": value}))
        .collect();
    if let Some(base) = data_address.get("dsp-mqtt:baseUrl")
        && !data_address.contains_key("endpoint")
    {
        properties.push(json!({"@type": "dspace:EndpointProperty",
            "dspace:name": format!("{EDC_NAMESPACE}endpoint"), "dspace:value": string_of(base)}));
    }
    json!({
        "@type": "dspace:DataAddress",
        "dspace:endpointType": SOURCE_TYPE,
        "dspace:endpointProperties": properties,
    })
}

/// The EDR's properties by name (the reverse of [`edr`], for tests and diagnostics).
pub fn edr_properties(edr: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for p in edr["dspace:endpointProperties"].as_array().into_iter().flatten() {
        if let (Some(name), Some(value)) = (p["dspace:name"].as_str(), p.get("dspace:value")) {
            out.insert(name.to_owned(), value.clone());
        }
    }
    out
}

/// The answer to a start: a `DataFlowResponseMessage` carrying the EDR.
pub fn start_response(edr: Value) -> Value {
    json!({
        "@context": {"@vocab": EDC_NAMESPACE, "dspace": DSPACE_NAMESPACE},
        "@type": "DataFlowResponseMessage",
        "provisioning": false,
        "dataAddress": edr,
    })
}

/// The answer to `GET /{id}/state`.
pub fn state_response(process_id: &str, state: &str) -> Value {
    json!({
        "@context": {"@vocab": EDC_NAMESPACE},
        "@type": "DataFlowState",
        "processId": process_id,
        "state": state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> Value {
        json!({
            "@context": {"@vocab": EDC_NAMESPACE, "edc": EDC_NAMESPACE},
            "@type": "DataFlowStartMessage",
            "transferTypeDestination": "Mqtt",
            "flowType": "PULL",
            "agreementId": "agreement-1",
            "processId": "3f1c2a4e-0000-4000-8000-000000000001",
            "datasetId": "ns-line-1",
            "properties": {},
            "callbackAddress": "https://cp.example/control",
            "sourceDataAddress": {"@type": "DataAddress", "type": "Mqtt", "mqttEndpointType": "mqtt-tls"},
            "participantId": "did:web:consumer.example",
        })
    }

    fn parse(v: &Value) -> Result<StartMessage, Refusal> {
        parse_start(serde_json::to_vec(v).unwrap().as_slice())
    }

    #[test]
    fn edcs_start_message_is_read() {
        let m = parse(&start()).unwrap();
        assert_eq!(m.process_id, "3f1c2a4e-0000-4000-8000-000000000001");
        assert_eq!(m.dataset_id, "ns-line-1");
        assert_eq!(m.agreement_id, "agreement-1");
        assert_eq!(m.participant_id, "did:web:consumer.example");
        assert_eq!(m.callback_address.as_deref(), Some("https://cp.example/control"));
    }

    #[test]
    fn prefixed_and_expanded_keys_and_value_objects_are_read() {
        let mut v = start();
        let o = v.as_object_mut().unwrap();
        let id = o.remove("processId").unwrap();
        o.insert("edc:processId".into(), id);
        let ds = o.remove("datasetId").unwrap();
        o.insert(format!("{EDC_NAMESPACE}datasetId"), json!([{"@value": ds}]));
        o.insert("@type".into(), json!(format!("{EDC_NAMESPACE}DataFlowStartMessage")));
        let m = parse(&v).unwrap();
        assert_eq!(m.dataset_id, "ns-line-1");
        assert_eq!(m.process_id, "3f1c2a4e-0000-4000-8000-000000000001");
    }

    #[test]
    fn other_transfer_types_are_refused_with_a_reason() {
        for (dest, flow) in [("HttpData", "PULL"), ("Mqtt", "PUSH"), ("mqtt", "PULL")] {
            let mut v = start();
            v["transferTypeDestination"] = json!(dest);
            v["flowType"] = json!(flow);
            let r = parse(&v).unwrap_err();
            assert_eq!(r.status, 400);
            assert!(r.reason.contains("Mqtt-PULL"), "{}", r.reason);
        }
        let mut v = start();
        v["transferTypeResponseChannel"] = json!("Mqtt");
        assert!(parse(&v).is_err());
        let mut v = start();
        v["sourceDataAddress"]["type"] = json!("HttpData");
        assert!(parse(&v).unwrap_err().reason.contains("HttpData"));
    }

    #[test]
    fn missing_or_malformed_fields_are_refused() {
        for field in ["processId", "datasetId", "agreementId", "participantId"] {
            let mut v = start();
            v.as_object_mut().unwrap().remove(field);
            assert_eq!(parse(&v).unwrap_err().reason, format!("{field} is missing"));
            v[field] = json!(" ");
            assert_eq!(parse(&v).unwrap_err().reason, format!("{field} is empty"));
            v[field] = json!(42);
            assert_eq!(parse(&v).unwrap_err().reason, format!("{field} must be a string"));
            v[field] = json!("a\nb");
            assert!(parse(&v).is_err());
        }
        let mut v = start();
        v["processId"] = json!("x".repeat(254));
        assert!(parse(&v).unwrap_err().reason.contains("longer"));
        let mut v = start();
        v["@type"] = json!("DataFlowSuspendMessage");
        assert!(parse(&v).is_err());
        let mut v = start();
        v["callbackAddress"] = json!("not a url");
        assert!(parse(&v).is_err());
        assert!(parse_start(b"{").unwrap_err().reason.starts_with("the body is not JSON"));
        assert!(parse_start(b"[]").is_err());
        // Another vocabulary's processId is not EDC's.
        let mut v = start();
        let id = v.as_object_mut().unwrap().remove("processId").unwrap();
        v["https://example.org/processId"] = id;
        assert!(parse(&v).is_err());
    }

    #[test]
    fn the_edr_is_a_dsp_data_address_with_iri_names_and_string_values() {
        let da = json!({
            "@context": {"dsp-mqtt": crate::plan::transfer::DSP_MQTT_NAMESPACE, "@vocab": EDC_NAMESPACE},
            "@type": "DataAddress",
            "mqttEndpointType": "mqtt-tls",
            "dsp-mqtt:baseUrl": "mqtts://broker:8883",
            "dsp-mqtt:topics": ["a/#", "b/#"],
            "dsp-mqtt:password": "pw",
        });
        let edr = edr(da.as_object().unwrap());
        assert_eq!(edr["dspace:endpointType"], "Mqtt");
        let props = edr_properties(&edr);
        let mqtt = crate::plan::transfer::DSP_MQTT_NAMESPACE;
        assert_eq!(props[&format!("{EDC_NAMESPACE}endpoint")], "mqtts://broker:8883");
        assert_eq!(props[&format!("{mqtt}baseUrl")], "mqtts://broker:8883");
        assert_eq!(props[&format!("{mqtt}topics")], r#"["a/#","b/#"]"#);
        assert_eq!(props[&format!("{mqtt}password")], "pw");
        assert_eq!(props[&format!("{EDC_NAMESPACE}mqttEndpointType")], "mqtt-tls");
        assert_eq!(props.len(), 5, "no JSON-LD keyword becomes a property: {props:?}");
        let response = start_response(edr);
        assert_eq!(response["@type"], "DataFlowResponseMessage");
        assert_eq!(response["@context"]["dspace"], DSPACE_NAMESPACE);
    }

    #[test]
    fn the_source_type_is_read_in_the_dsp_form_edc_sends() {
        let mut v = start();
        v["sourceDataAddress"] = json!({"@type": "dspace:DataAddress", "dspace:endpointType": "HttpData",
            "dspace:endpointProperties": []});
        assert!(parse(&v).unwrap_err().reason.contains("HttpData"));
        v["sourceDataAddress"]["dspace:endpointType"] = json!("Mqtt");
        assert!(parse(&v).is_ok());
    }

    #[test]
    fn refusals_have_edcs_error_shape() {
        let body = Refusal { status: 404, reason: "unknown dataset x".into() }.body();
        assert_eq!(body, json!([{"message": "unknown dataset x", "type": "ObjectNotFound"}]));
    }
}

/// Property tests: the parser is total (never panics, any input gets an answer), accepts exactly
/// the well-formed starts, and every accepted id satisfies what the cluster side relies on.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    use super::*;

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ".{0,40}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,12}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
            ]
        })
    }

    fn id() -> impl Strategy<Value = String> {
        // Mostly plausible ids, sometimes anything (control characters, empty, huge).
        prop_oneof![
            8 => "[A-Za-z0-9:._/-]{1,60}",
            1 => ".{0,300}",
            1 => Just(String::new()),
        ]
    }

    fn message(fields: [(String, Value); 6]) -> Value {
        let mut m = Map::new();
        m.insert("@type".into(), json!("DataFlowStartMessage"));
        for (k, v) in fields {
            m.insert(k, v);
        }
        Value::Object(m)
    }

    fn valid(s: &str, max: usize) -> bool {
        !s.trim().is_empty() && s.len() <= max && !s.chars().any(char::is_control)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn any_bytes_get_an_answer(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Err(r) = parse_start(&bytes) {
                prop_assert_eq!(r.status, 400);
                prop_assert!(!r.reason.is_empty());
            }
        }

        #[test]
        fn any_json_gets_an_answer(v in any_json()) {
            let _ = parse_start(v.to_string().as_bytes());
        }

        #[test]
        fn exactly_the_well_formed_starts_are_accepted(
            process in id(), dataset in id(), agreement in id(), participant in id(),
            flow in prop_oneof![Just("PULL".to_owned()), Just("PUSH".to_owned()), "[A-Z]{0,5}"],
            dest in prop_oneof![Just("Mqtt".to_owned()), Just("HttpData".to_owned()), ".{0,8}"],
            prefixed in any::<bool>(),
        ) {
            let key = |k: &str| if prefixed { format!("edc:{k}") } else { k.to_owned() };
            let v = message([
                (key("processId"), json!(process)),
                (key("datasetId"), json!(dataset)),
                (key("agreementId"), json!(agreement)),
                (key("participantId"), json!(participant)),
                (key("flowType"), json!(flow)),
                (key("transferTypeDestination"), json!(dest)),
            ]);
            let well_formed = valid(&process, MAX_ID_LEN) && valid(&dataset, MAX_ID_LEN)
                && valid(&agreement, MAX_ID_LEN) && valid(&participant, MAX_PARTICIPANT_LEN)
                && flow == "PULL" && dest == "Mqtt";
            match parse_start(v.to_string().as_bytes()) {
                Ok(m) => {
                    prop_assert!(well_formed, "accepted {v}");
                    prop_assert_eq!(m.process_id, process);
                    prop_assert_eq!(m.dataset_id, dataset);
                    prop_assert_eq!(m.agreement_id, agreement);
                    prop_assert_eq!(m.participant_id, participant);
                }
                Err(r) => {
                    prop_assert!(!well_formed, "refused a well-formed start: {}", r.reason);
                    prop_assert_eq!(r.status, 400);
                }
            }
        }

        #[test]
        fn a_field_of_any_shape_is_read_or_refused(field in 0usize..4, value in any_json()) {
            let names = ["processId", "datasetId", "agreementId", "participantId"];
            let mut v = json!({"@type": "DataFlowStartMessage", "processId": "p", "datasetId": "d",
                "agreementId": "a", "participantId": "did:web:c", "flowType": "PULL",
                "transferTypeDestination": "Mqtt"});
            v[names[field]] = value.clone();
            if let Ok(m) = parse_start(v.to_string().as_bytes()) {
                let read = [m.process_id, m.dataset_id, m.agreement_id, m.participant_id];
                prop_assert!(valid(&read[field], MAX_PARTICIPANT_LEN));
            }
        }

        #[test]
        fn every_edr_property_is_a_named_string(
            entries in prop::collection::btree_map(
                prop_oneof!["(@|dsp-mqtt:)?[a-zA-Z]{1,10}", Just("dsp-mqtt:baseUrl".to_owned()), Just("endpoint".to_owned())],
                any_json(),
                0..8,
            )
        ) {
            let da: Map<String, Value> = entries.into_iter().collect();
            let edr = edr(&da);
            prop_assert_eq!(&edr["dspace:endpointType"], "Mqtt");
            for p in edr["dspace:endpointProperties"].as_array().unwrap() {
                let name = p["dspace:name"].as_str().unwrap();
                prop_assert!(name.starts_with("https://"), "{}", name);
                prop_assert!(p["dspace:value"].is_string());
            }
            let keywords = da.keys().filter(|k| k.starts_with('@') || k.as_str() == "type").count();
            let endpoint_added = usize::from(da.contains_key("dsp-mqtt:baseUrl") && !da.contains_key("endpoint"));
            prop_assert_eq!(edr_properties(&edr).len(), da.len() - keywords + endpoint_added);
        }
    }
}
