//! A test MQTT client (rumqttc, MQTT 3.1.1) that connects over `mqtts://` or `wss://` with a
//! username and password (or a JWT as the password), verifying the broker against a given CA.
//! It never reconnects by itself, so tests can observe being cut off.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    /// `mqtts://host:port`, `ssl://host:port` or `wss://host:port/path`.
    pub url: String,
    /// MQTT username (ignored by brokers that take the identity from a JWT).
    pub username: String,
    /// MQTT password (or JWT).
    pub password: String,
    /// CA that signed the broker's certificate (PEM).
    pub ca_pem: String,
    /// MQTT client id.
    pub client_id: String,
}

/// What happened on the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsumerEvent {
    /// A message arrived.
    Message {
        /// Its topic.
        topic: String,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// The broker answered a SUBSCRIBE: granted per filter.
    SubAck(Vec<bool>),
    /// The connection ended (the reason as text).
    Disconnected(String),
}

/// Why a connection attempt failed.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// The broker refused the CONNECT (bad credentials, not authorized).
    Refused(String),
    /// Anything else (TLS, I/O, timeout).
    Failed(String),
}

/// A connected test consumer.
pub struct Consumer {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<ConsumerEvent>,
    task: JoinHandle<()>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Consumer {
    /// Connects and waits for the CONNACK (at most 5 s).
    pub async fn connect(options: &ConsumerOptions) -> Result<Self, ConnectError> {
        let url = url::Url::parse(&options.url).map_err(|e| ConnectError::Failed(format!("bad URL: {e}")))?;
        let host = url.host_str().unwrap_or("127.0.0.1").to_owned();
        let port = url.port().unwrap_or(8883);
        let tls = TlsConfiguration::Rustls(client_config(&options.ca_pem));
        let mut mqtt = match url.scheme() {
            "wss" => {
                let mut o = MqttOptions::new(options.client_id.clone(), options.url.clone(), port);
                o.set_transport(Transport::wss_with_config(tls));
                o
            }
            "mqtts" | "ssl" => {
                let mut o = MqttOptions::new(options.client_id.clone(), host, port);
                o.set_transport(Transport::tls_with_config(tls));
                o
            }
            other => return Err(ConnectError::Failed(format!("unsupported scheme {other}"))),
        };
        mqtt.set_credentials(options.username.clone(), options.password.clone());
        mqtt.set_keep_alive(Duration::from_secs(5));
        mqtt.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(mqtt, 32);
        let first = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => {
                        return Ok(());
                    }
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        return Err(ConnectError::Refused(format!("{:?}", ack.code)));
                    }
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                        return Err(ConnectError::Refused(format!("{code:?}")));
                    }
                    Err(e) => return Err(ConnectError::Failed(e.to_string())),
                }
            }
        })
        .await
        .map_err(|_| ConnectError::Failed("no CONNACK within 5 s".into()))?;
        first?;
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let event = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        ConsumerEvent::Message { topic: p.topic.clone(), payload: p.payload.to_vec() }
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => ConsumerEvent::SubAck(
                        ack.return_codes.iter().map(|c| !matches!(c, SubscribeReasonCode::Failure)).collect(),
                    ),
                    Ok(Event::Incoming(Packet::Disconnect)) => ConsumerEvent::Disconnected("DISCONNECT".into()),
                    Ok(_) => continue,
                    Err(e) => ConsumerEvent::Disconnected(e.to_string()),
                };
                let end = matches!(event, ConsumerEvent::Disconnected(_));
                if tx.send(event).is_err() || end {
                    return;
                }
            }
        });
        Ok(Self { client, events, task })
    }

    /// Subscribes to one filter (QoS 1) and says whether the broker granted it. A broker that
    /// closes the connection on a denied SUBSCRIBE (RabbitMQ 3.10) counts as denied.
    pub async fn subscribe(&mut self, filter: &str) -> bool {
        if self.client.subscribe(filter, QoS::AtLeastOnce).await.is_err() {
            return false;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            match event {
                ConsumerEvent::SubAck(granted) => return granted.first().copied().unwrap_or(false),
                ConsumerEvent::Disconnected(_) => return false,
                ConsumerEvent::Message { .. } => continue,
            }
        }
        false
    }

    /// Publishes (QoS 1) — for tests that check a read-only consumer cannot.
    pub async fn publish(&self, topic: &str, payload: &[u8]) -> bool {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload.to_vec()).await.is_ok()
    }

    /// The next message within `timeout`, skipping other events; None on timeout or disconnect.
    pub async fn next_message(&mut self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + timeout;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            match event {
                ConsumerEvent::Message { topic, payload } => return Some((topic, payload)),
                ConsumerEvent::Disconnected(_) => return None,
                ConsumerEvent::SubAck(_) => continue,
            }
        }
        None
    }

    /// Waits until the broker ends the connection; returns how long it took, None on timeout.
    pub async fn wait_disconnected(&mut self, timeout: Duration) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        let deadline = start + timeout;
        while let Ok(event) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            match event {
                Some(ConsumerEvent::Disconnected(_)) | None => return Some(start.elapsed()),
                Some(_) => continue,
            }
        }
        None
    }
}

/// A TLS client configuration trusting exactly `ca_pem` (ring provider).
pub fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()).flatten() {
        let _ = roots.add(cert);
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// What a consumer program takes from the transfer's Secret, and nothing else: the broker URL,
/// the topic filter(s), and the credentials (a JWT as the CONNECT password, or a username and
/// password), all read from the Secret's `dataAddress.json`.
#[derive(Clone, Debug)]
pub struct FromSecret {
    /// How to connect.
    pub options: ConsumerOptions,
    /// `dsp-mqtt:topic`, or every entry of `dsp-mqtt:topics`.
    pub topics: Vec<String>,
}

impl FromSecret {
    /// Reads a Secret written by the operator. `ca_pem` is the broker's CA (not part of the
    /// DataAddress). `None` when the Secret holds no credentials (a suspended transfer).
    pub fn read(secret: &k8s_openapi::api::core::v1::Secret, ca_pem: &str) -> Option<FromSecret> {
        let data = secret.data.as_ref()?;
        let da: serde_json::Value = serde_json::from_slice(&data.get("dataAddress.json")?.0).ok()?;
        let text = |k: &str| da.get(k).and_then(serde_json::Value::as_str).map(str::to_owned);
        let url = text("dsp-mqtt:baseUrl")?;
        let username = text("dsp-mqtt:username").unwrap_or_else(|| "jwt".to_owned());
        let password = match text("dsp-mqtt:authorization") {
            Some(jwt) => jwt,
            None => text("dsp-mqtt:password")?,
        };
        crate::logs::register_secret(&password);
        let topics = match text("dsp-mqtt:topic") {
            Some(t) => vec![t],
            None => {
                da.get("dsp-mqtt:topics")?.as_array()?.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect()
            }
        };
        Some(FromSecret {
            options: ConsumerOptions {
                url,
                username: username.clone(),
                password,
                ca_pem: ca_pem.to_owned(),
                client_id: format!("consumer-{}", uuid::Uuid::new_v4().simple()),
            },
            topics,
        })
    }
}
