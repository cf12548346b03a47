//! The MQTT v5 test client shared by the e2e tests (brokers on loopback) and the cluster tests
//! (broker pods on the real node): connect over TLS or mTLS, publish, subscribe, watch the session.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};

/// Installs the ring crypto provider for rustls (once).
pub fn init_tls() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// How to reach a listener.
#[derive(Clone, Default)]
pub struct Conn {
    /// Address (default 127.0.0.1).
    pub host: String,
    /// Port.
    pub port: u16,
    /// The name the server certificate must be valid for, when it is not `host` (a pod IP is not
    /// in moat's server certificate; the pod's stable DNS name is).
    pub server_name: Option<String>,
    /// Trust anchors (PEM) for TLS; `None` = plain TCP.
    pub ca: Option<String>,
    /// Client certificate and key (PEM) for mTLS.
    pub client_cert: Option<(String, String)>,
    /// Username and password.
    pub credentials: Option<(String, String)>,
    /// Client id (default: a random one).
    pub client_id: Option<String>,
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum Refusal {
    /// CONNACK with a failure code.
    Refused(ConnectReturnCode),
    /// The connection failed below MQTT (TLS alert, reset, garbage).
    Transport(String),
}

/// What the event loop task forwards to a [`Session`].
enum Incoming {
    /// A PUBLISH `(topic, payload)`.
    Message(String, Vec<u8>),
    /// A PUBACK reason (`Debug` of [`PubAckReason`]).
    PubAck(String),
    /// A SUBACK's reason codes.
    SubAck(Vec<SubscribeReasonCode>),
}

/// A connected MQTT v5 session.
pub struct Session {
    /// Client handle.
    pub client: AsyncClient,
    rx: tokio::sync::mpsc::UnboundedReceiver<Incoming>,
    /// Messages that arrived while waiting for an acknowledgement.
    backlog: std::collections::VecDeque<(String, Vec<u8>)>,
    /// Set when the connection dropped.
    pub closed: tokio::sync::watch::Receiver<Option<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn options(c: &Conn) -> MqttOptions {
    init_tls();
    let id = c.client_id.clone().unwrap_or_else(|| format!("t-{:08x}", rand::random::<u32>()));
    let host = if c.host.is_empty() { "127.0.0.1" } else { c.host.as_str() };
    let mut o = MqttOptions::new(id, host, c.port);
    o.set_keep_alive(Duration::from_secs(30));
    if let Some((u, p)) = &c.credentials {
        o.set_credentials(u.clone(), p.clone());
    }
    if let Some(ca) = &c.ca {
        let config = match &c.server_name {
            // rumqttc verifies the host string: a pinned name needs its own verifier
            Some(name) => {
                TlsConfiguration::Rustls(std::sync::Arc::new(pinned_config(ca, name, c.client_cert.as_ref())))
            }
            // (moat render --bind-address puts 127.0.0.1 into the server certificate)
            None => TlsConfiguration::Simple {
                ca: ca.clone().into_bytes(),
                alpn: None,
                client_auth: c.client_cert.clone().map(|(cert, key)| (cert.into_bytes(), key.into_bytes())),
            },
        };
        o.set_transport(Transport::tls_with_config(config));
    }
    o
}

/// A rustls client configuration that verifies the server's chain against `ca` for `name`,
/// whatever address was dialled.
fn pinned_config(ca: &str, name: &str, client: Option<&(String, String)>) -> rustls::ClientConfig {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    #[derive(Debug)]
    struct Pinned {
        inner: std::sync::Arc<rustls::client::WebPkiServerVerifier>,
        name: ServerName<'static>,
    }
    impl ServerCertVerifier for Pinned {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            _dialled: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            self.inner.verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    }
    let mut roots = rustls::RootCertStore::empty();
    for der in pem_ders(ca, "CERTIFICATE") {
        roots.add(CertificateDer::from(der)).unwrap();
    }
    let inner = rustls::client::WebPkiServerVerifier::builder(std::sync::Arc::new(roots)).build().unwrap();
    let verifier = Pinned { inner, name: ServerName::try_from(name.to_string()).unwrap() };
    let builder =
        rustls::ClientConfig::builder().dangerous().with_custom_certificate_verifier(std::sync::Arc::new(verifier));
    match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = pem_ders(cert, "CERTIFICATE").into_iter().map(CertificateDer::from).collect();
            let key = PrivateKeyDer::Pkcs8(pem_ders(key, "PRIVATE KEY").remove(0).into());
            builder.with_client_auth_cert(certs, key).unwrap()
        }
    }
}

/// The DER bodies of the PEM blocks labelled `label`.
fn pem_ders(pem: &str, label: &str) -> Vec<Vec<u8>> {
    use base64::Engine;
    let (begin, end) = (format!("-----BEGIN {label}-----"), format!("-----END {label}-----"));
    let mut out = vec![];
    let mut rest = pem;
    while let Some(i) = rest.find(&begin) {
        let body = &rest[i + begin.len()..];
        let Some(j) = body.find(&end) else { break };
        let b64: String = body[..j].chars().filter(|c| !c.is_whitespace()).collect();
        out.push(base64::engine::general_purpose::STANDARD.decode(b64).unwrap());
        rest = &body[j + end.len()..];
    }
    out
}

/// Connects and waits for the CONNACK.
pub async fn connect(c: &Conn) -> Result<Session, Refusal> {
    let (client, mut eventloop) = AsyncClient::new(options(c), 64);
    first_connack(&mut eventloop).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (closed_tx, closed) = tokio::sync::watch::channel(None);
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ =
                        tx.send(Incoming::Message(String::from_utf8_lossy(&p.topic).into_owned(), p.payload.to_vec()));
                }
                Ok(Event::Incoming(Packet::PubAck(a))) => {
                    let _ = tx.send(Incoming::PubAck(format!("{:?}", a.reason)));
                }
                Ok(Event::Incoming(Packet::SubAck(a))) => {
                    let _ = tx.send(Incoming::SubAck(a.return_codes));
                }
                Ok(Event::Incoming(Packet::Disconnect(d))) => {
                    let _ = closed_tx.send(Some(format!("disconnect {:?}", d.reason_code)));
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    // rumqttc reconnects if polled again: stop at the first error
                    let _ = closed_tx.send(Some(e.to_string()));
                    return;
                }
            }
        }
    });
    Ok(Session { client, rx, backlog: Default::default(), closed, task })
}

/// Asserts that the broker refuses the login with CONNACK "not authorised".
pub async fn assert_refused(c: &Conn, what: &str) {
    match connect(c).await {
        Err(Refusal::Refused(code)) => assert_eq!(code, ConnectReturnCode::NotAuthorized, "{what}"),
        Err(other) => panic!("{what}: expected a CONNACK refusal, got {other:?}"),
        Ok(_) => panic!("{what}: the broker accepted the login"),
    }
}

/// Connects and panics with `what` if the broker refuses.
pub async fn connect_ok(c: &Conn, what: &str) -> Session {
    match connect(c).await {
        Ok(s) => s,
        Err(e) => panic!("{what}: connection refused: {e:?}"),
    }
}

async fn first_connack(eventloop: &mut EventLoop) -> Result<(), Refusal> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .map_err(|_| Refusal::Transport("timeout waiting for CONNACK".into()))?;
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                return if ack.code == ConnectReturnCode::Success { Ok(()) } else { Err(Refusal::Refused(ack.code)) };
            }
            Ok(_) => {}
            Err(ConnectionError::ConnectionRefused(code)) => return Err(Refusal::Refused(code)),
            Err(e) => return Err(Refusal::Transport(format!("{e:?}"))),
        }
    }
}

impl Session {
    /// Waits for the next acknowledgement matching `pick`, keeping messages that arrive meanwhile.
    async fn wait_ack<T>(&mut self, what: &str, mut pick: impl FnMut(Incoming) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Incoming::Message(t, p))) => self.backlog.push_back((t, p)),
                Ok(Some(other)) => {
                    if let Some(v) = pick(other) {
                        return v;
                    }
                }
                Ok(None) => panic!("connection closed while waiting for {what}: {:?}", self.closed.borrow().clone()),
                Err(_) => panic!("no {what} within 5 s"),
            }
        }
    }

    /// Subscribes at QoS 1 and returns the SUBACK reason codes once the broker acknowledged it
    /// (Mosquitto handles one client's packets in order, so a publish from another client after
    /// this returns is matched against the subscription).
    pub async fn subscribe(&mut self, filter: &str) -> Vec<SubscribeReasonCode> {
        self.client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        self.wait_ack(&format!("SUBACK for {filter}"), |i| match i {
            Incoming::SubAck(codes) => Some(codes),
            _ => None,
        })
        .await
    }

    /// Subscribes and asserts that the broker granted the subscription.
    pub async fn subscribe_granted(&mut self, filter: &str) {
        let codes = self.subscribe(filter).await;
        assert!(granted(&codes), "SUBACK for {filter}: {codes:?}");
    }

    /// Publishes at QoS 1 and returns the PUBACK reason.
    pub async fn publish(&mut self, topic: &str, payload: &[u8]) -> String {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload.to_vec()).await.unwrap();
        self.wait_ack(&format!("PUBACK for {topic}"), |i| match i {
            Incoming::PubAck(reason) => Some(reason),
            _ => None,
        })
        .await
    }

    /// The next message within `timeout`, if any.
    pub async fn next_message(&mut self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        if let Some(m) = self.backlog.pop_front() {
            return Some(m);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Incoming::Message(t, p))) => return Some((t, p)),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
    }

    /// Waits up to `timeout` for a message on `topic` with `payload` (other messages are skipped).
    pub async fn expect_message(&mut self, topic: &str, payload: &[u8], timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_message(left).await {
                Some((t, p)) if t == topic && p == payload => return true,
                Some(_) => continue,
                None => return false,
            }
        }
    }

    /// Every message received so far and within `timeout` (for asserting that nothing arrived,
    /// after a control subscriber has already received the same publish).
    pub async fn drain(&mut self, timeout: Duration) -> Vec<(String, Vec<u8>)> {
        let mut out = vec![];
        while let Some(m) = self.next_message(timeout).await {
            out.push(m);
        }
        out
    }

    /// Whether the broker closed the connection already.
    pub fn is_closed(&self) -> bool {
        self.closed.borrow().is_some()
    }

    /// Waits up to `timeout` for the connection to be closed by the broker.
    pub async fn wait_closed(&mut self, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(reason) = self.closed.borrow().clone() {
                return Some(reason);
            }
            if tokio::time::timeout_at(deadline, self.closed.changed()).await.is_err() {
                return None;
            }
        }
    }
}

/// Whether every SUBACK reason code grants the subscription.
pub fn granted(codes: &[SubscribeReasonCode]) -> bool {
    !codes.is_empty() && codes.iter().all(|c| matches!(c, SubscribeReasonCode::Success(_)))
}

/// Whether a PUBACK reason means the broker accepted the publish (with or without subscribers).
pub fn accepted(reason: &str) -> bool {
    reason == format!("{:?}", PubAckReason::Success) || reason == format!("{:?}", PubAckReason::NoMatchingSubscribers)
}

/// PUBACK reason of a publish refused by the ACL.
pub fn puback_not_authorized() -> String {
    format!("{:?}", PubAckReason::NotAuthorized)
}
