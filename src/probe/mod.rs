//! Active TLS/MQTT probe of a broker endpoint (used by compliance and `moat probe`).
//!
//! Four checks, each an [`Outcome`] whose message says what was seen:
//! - `legacy_tls_refused`: hand-built TLS 1.0 and TLS 1.1 ClientHellos ([`legacy`]) must both be
//!   refused;
//! - `modern_tls`: a TLS 1.2/1.3 handshake with rustls (ring provider) succeeds ([`modern`]);
//! - `chain_trusted`: a *verifying* handshake against the given CA bundle for the server name;
//! - `anonymous_refused`: an MQTT 3.1.1 CONNECT without username is refused ([`mqtt`]);
//! - `plaintext_refused`: an MQTT CONNECT sent without TLS to the TLS port gets no CONNACK.
//!
//! Anything ambiguous is [`Outcome::Unknown`], never a pass.

pub mod legacy;
pub mod login;
pub mod modern;
pub mod mqtt;
pub mod outsider;

#[cfg(test)]
mod broker_tests;
#[cfg(test)]
mod testutil;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The first bytes of a reply, in hex, for error messages.
fn hex_prefix(buf: &[u8]) -> String {
    buf.iter().take(8).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

use legacy::{Attempt, LegacyVerdict};
use modern::{HandshakeError, Mode, Observed};
use mqtt::ConnackReply;

/// The endpoint to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    pub host: String,
    pub port: u16,
    /// Name the certificate must be valid for; also sent as SNI when it is a DNS name.
    pub server_name: String,
    /// CA bundle (PEM) for `chain_trusted`; without it that check is Unknown.
    pub ca_pem: Option<String>,
    /// Limit for each network step (connect, handshake, reply).
    pub timeout: Duration,
}

/// Result of one check. The message says what was seen. `Unknown` is never a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass(String),
    Fail(String),
    Unknown(String),
}

impl Outcome {
    pub fn is_pass(&self) -> bool {
        matches!(self, Self::Pass(_))
    }

    pub fn message(&self) -> &str {
        match self {
            Self::Pass(m) | Self::Fail(m) | Self::Unknown(m) => m,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Self::Pass(_) => "PASS",
            Self::Fail(_) => "FAIL",
            Self::Unknown(_) => "UNKNOWN",
        }
    }
}

/// `GET path` from `host:port` over plain HTTP/1.0 (small JSON answers of moat's own helpers:
/// the agent's `/status`, the outsider's `/dial`); the body of a 200, else the status line.
pub async fn http_get(host: &str, port: u16, path: &str) -> Result<String, String> {
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
    let mut stream = TcpStream::connect(format!("{host}:{port}")).await.map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream.take(256 * 1024).read_to_end(&mut response).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(head.lines().next().unwrap_or_default().to_string());
    }
    Ok(body.to_string())
}

/// Everything one probe found out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// A TCP connection to the endpoint succeeded (in any of the checks).
    pub reachable: bool,
    /// TLS 1.0 and TLS 1.1 ClientHellos are both refused.
    pub legacy_tls_refused: Outcome,
    /// A TLS 1.2/1.3 handshake succeeds (message names the negotiated version).
    pub modern_tls: Outcome,
    /// `TLSv1.2` or `TLSv1.3`, when the server negotiated one.
    pub negotiated_version: Option<String>,
    /// The served chain verifies against `ca_pem` for `server_name` (Unknown without `ca_pem`).
    pub chain_trusted: Outcome,
    /// Serial of the served end-entity certificate, upper-case hex (as `openssl x509 -serial`).
    pub cert_serial: Option<String>,
    pub cert_not_after: Option<jiff::Timestamp>,
    /// An MQTT 3.1.1 CONNECT without username is refused (CONNACK "bad user name or password" /
    /// "not authorised", or the TLS layer demands a client certificate).
    pub anonymous_refused: Outcome,
    /// An MQTT CONNECT in plaintext to the TLS port gets no CONNACK.
    pub plaintext_refused: Outcome,
}

impl ProbeReport {
    /// The checks, in report order.
    pub fn outcomes(&self) -> [(&'static str, &Outcome); 5] {
        [
            ("legacy TLS refused", &self.legacy_tls_refused),
            ("modern TLS", &self.modern_tls),
            ("chain trusted", &self.chain_trusted),
            ("anonymous refused", &self.anonymous_refused),
            ("plaintext refused", &self.plaintext_refused),
        ]
    }
}

/// Process exit code for a report: 0 when all checks pass, 1 when any fails, otherwise 2
/// (some check is Unknown). A failure outranks an unknown.
pub fn exit_code(report: &ProbeReport) -> i32 {
    let outcomes = report.outcomes();
    if outcomes.iter().any(|(_, o)| matches!(o, Outcome::Fail(_))) {
        1
    } else if outcomes.iter().all(|(_, o)| o.is_pass()) {
        0
    } else {
        2
    }
}

/// TCP connect with a timeout; the error is a human-readable reason.
pub(crate) async fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(err)) => Err(format!("cannot connect to {host}:{port}: {err}")),
        Err(_) => Err(format!("no TCP connection to {host}:{port} within {timeout:?}")),
    }
}

/// Probe one endpoint. Never panics on network conditions; every problem ends up in an outcome.
pub async fn probe(target: &ProbeTarget) -> ProbeReport {
    let host = target.host.as_str();
    let name = target.server_name.as_str();
    let timeout = target.timeout;

    let capture = async {
        let (session, seen) = modern::handshake(host, target.port, name, Mode::Capture, timeout).await;
        match session {
            Ok(mut stream) => {
                let exchange = mqtt_exchange(&mut stream, timeout).await;
                let anonymous = anonymous_outcome(None, &seen, Some(exchange));
                (None, seen, anonymous)
            }
            Err(err) => {
                let anonymous = anonymous_outcome(Some(&err), &seen, None);
                (Some(session_summary(&err, &seen)), seen, anonymous)
            }
        }
    };
    let verify = async {
        let Some(pem) = target.ca_pem.as_deref() else {
            return (None, Outcome::Unknown("no CA bundle given, chain not verified".into()));
        };
        let roots = match modern::roots_from_pem(pem) {
            Ok(roots) => roots,
            Err(reason) => return (None, Outcome::Unknown(reason)),
        };
        let (session, seen) = modern::handshake(host, target.port, name, Mode::Verify(roots), timeout).await;
        let outcome = chain_outcome(session.as_ref().err(), &seen, name);
        let reached = !matches!(session, Err(HandshakeError::Unreachable(_) | HandshakeError::Setup(_)));
        (Some(reached), outcome)
    };
    let legacy_10 = legacy::attempt(host, target.port, name, legacy::TLS1_0, timeout);
    let legacy_11 = legacy::attempt(host, target.port, name, legacy::TLS1_1, timeout);
    let plaintext = plaintext_refused(host, target.port, timeout);
    let ((capture_err, seen, anonymous_refused), (verify_reached, chain_trusted), l10, l11, plaintext_refused) =
        tokio::join!(capture, verify, legacy_10, legacy_11, plaintext);

    let (modern_tls, negotiated_version) = modern_outcome(capture_err.as_ref(), &seen);
    let legacy_tls_refused = legacy_outcome(&l10, &l11, modern_tls.is_pass());
    let reachable = capture_err.as_ref().is_none_or(SessionError::connected)
        || verify_reached == Some(true)
        || !matches!(l10, Attempt::Unreachable(_))
        || !matches!(l11, Attempt::Unreachable(_));
    let details = seen.end_entity.as_deref().map(modern::cert_details);
    let (cert_serial, cert_not_after) = match details {
        Some(Ok((serial, not_after))) => (Some(serial), Some(not_after)),
        _ => (None, None),
    };
    ProbeReport {
        reachable,
        legacy_tls_refused,
        modern_tls,
        negotiated_version,
        chain_trusted,
        cert_serial,
        cert_not_after,
        anonymous_refused,
        plaintext_refused,
    }
}

/// The capture handshake's error, reduced to what the outcomes need (the session itself is
/// consumed by the MQTT exchange).
#[derive(Debug)]
enum SessionError {
    /// No TCP connection.
    Unreachable(String),
    /// The probe could not start a handshake (e.g. an invalid server name); nothing was sent.
    Setup(String),
    TimedOut(String),
    /// The TLS layer failed (a rustls error or the peer hanging up mid-handshake);
    /// `client_cert_demanded` when that was the server insisting on a client certificate.
    Tls {
        reason: String,
        client_cert_demanded: bool,
    },
}

impl SessionError {
    /// Did this attempt get a TCP connection?
    fn connected(&self) -> bool {
        !matches!(self, Self::Unreachable(_) | Self::Setup(_))
    }
}

fn session_summary(err: &HandshakeError, seen: &Observed) -> SessionError {
    match err {
        HandshakeError::Unreachable(reason) => SessionError::Unreachable(reason.clone()),
        HandshakeError::Setup(reason) => SessionError::Setup(reason.clone()),
        HandshakeError::TimedOut(_) => SessionError::TimedOut(err.to_string()),
        HandshakeError::Failed(io) => SessionError::Tls {
            reason: err.to_string(),
            client_cert_demanded: client_cert_demanded(io, seen).is_some(),
        },
    }
}

fn modern_outcome(err: Option<&SessionError>, seen: &Observed) -> (Outcome, Option<String>) {
    let version = seen.version.map(modern::version_label);
    let outcome = match err {
        None => Outcome::Pass(format!(
            "{} handshake completed ({})",
            version.as_deref().unwrap_or("TLS (version unknown)"),
            seen.cipher_suite.as_deref().unwrap_or("cipher suite unknown")
        )),
        // TLS 1.2 with a mandatory client certificate: the server negotiated the version and
        // signed the handshake, then aborted because the probe has no certificate.
        Some(SessionError::Tls { reason, client_cert_demanded: true })
            if matches!(seen.signature_check, Some(Ok(()))) && version.is_some() =>
        {
            Outcome::Pass(format!(
                "{} negotiated and signed by the server, which then required a client certificate ({reason})",
                version.as_deref().unwrap_or_default()
            ))
        }
        Some(SessionError::Tls { reason, .. }) => Outcome::Fail(format!("no TLS 1.2/1.3 handshake: {reason}")),
        Some(SessionError::Unreachable(reason) | SessionError::Setup(reason) | SessionError::TimedOut(reason)) => {
            Outcome::Unknown(reason.clone())
        }
    };
    let negotiated = if outcome.is_pass() { version } else { None };
    (outcome, negotiated)
}

fn chain_outcome(err: Option<&HandshakeError>, seen: &Observed, server_name: &str) -> Outcome {
    match (&seen.cert_check, &seen.signature_check, err) {
        (Some(Err(reason)), _, _) => {
            Outcome::Fail(format!("served chain does not verify against the CA bundle for {server_name}: {reason}"))
        }
        (Some(Ok(())), Some(Err(reason)), _) => {
            Outcome::Fail(format!("chain verifies, but the server's handshake signature does not: {reason}"))
        }
        (Some(Ok(())), Some(Ok(())), None) => {
            Outcome::Pass(format!("served chain verifies against the CA bundle for {server_name}"))
        }
        (Some(Ok(())), Some(Ok(())), Some(err)) => Outcome::Pass(format!(
            "served chain verifies against the CA bundle for {server_name} (the handshake then ended: {err})"
        )),
        (Some(Ok(())), None, err) => Outcome::Unknown(format!(
            "chain verified, but the server never proved possession of its key ({})",
            err.map_or_else(|| "no handshake signature seen".to_owned(), ToString::to_string)
        )),
        (None, _, Some(err)) => Outcome::Unknown(format!("no certificate received: {err}")),
        (None, _, None) => Outcome::Unknown("handshake completed without a certificate check".into()),
    }
}

/// Result of CONNECT → first reply over an established TLS session.
#[derive(Debug)]
enum Exchange {
    Connack(u8),
    /// The TLS layer failed while reading (e.g. an alert after a TLS 1.3 handshake).
    TlsError(std::io::Error),
    Closed,
    NotConnack(String),
    Io(String),
    TimedOut(Duration),
}

async fn mqtt_exchange<S>(stream: &mut S, timeout: Duration) -> Exchange
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let connect = mqtt::encode_connect(&mqtt::random_client_id(), 30);
    let exchange = async {
        if let Err(err) = stream.write_all(&connect).await {
            return classify_io(err);
        }
        if let Err(err) = stream.flush().await {
            return classify_io(err);
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 64];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => return Exchange::Closed,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(err) => return classify_io(err),
            }
            match mqtt::parse_connack(&buf) {
                ConnackReply::NeedMore => {}
                ConnackReply::Connack { return_code, .. } => return Exchange::Connack(return_code),
                ConnackReply::NotConnack(reason) => return Exchange::NotConnack(reason),
            }
        }
    };
    let result = match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Exchange::TimedOut(timeout),
    };
    if matches!(result, Exchange::Connack(0)) {
        // Accepted: leave politely. Failures here change nothing.
        let _ = tokio::time::timeout(timeout, async {
            let _ = stream.write_all(&mqtt::DISCONNECT).await;
            let _ = stream.shutdown().await;
        })
        .await;
    }
    result
}

fn classify_io(err: std::io::Error) -> Exchange {
    if modern::rustls_error(&err).is_some() {
        Exchange::TlsError(err)
    } else if err.kind() == std::io::ErrorKind::UnexpectedEof {
        Exchange::Closed
    } else {
        Exchange::Io(err.to_string())
    }
}

/// Sends an MQTT CONNECT without TLS to `host:port` (a TLS port): any CONNACK means the port
/// speaks plaintext MQTT (Fail); the TLS server hanging up or answering with a TLS alert is a
/// refusal (Pass); no connection or no answer at all is Unknown.
pub async fn plaintext_refused(host: &str, port: u16, timeout: Duration) -> Outcome {
    let mut stream = match connect(host, port, timeout).await {
        Ok(s) => s,
        Err(reason) => return Outcome::Unknown(reason),
    };
    match mqtt_exchange(&mut stream, timeout).await {
        Exchange::Connack(rc) => Outcome::Fail(format!(
            "port {port} answered a plaintext CONNECT with CONNACK rc {rc} ({}): it speaks MQTT without TLS",
            mqtt::return_code_name(rc)
        )),
        // a hang-up, a reset and a TLS alert are the same refusal: one message, so an audit's
        // evidence does not change with how the server's TLS stack happened to close
        Exchange::Closed | Exchange::NotConnack(_) | Exchange::Io(_) => {
            Outcome::Pass(format!("port {port} gave no CONNACK to a plaintext CONNECT"))
        }
        Exchange::TlsError(err) => Outcome::Unknown(format!("unexpected TLS error on a plain socket: {err}")),
        Exchange::TimedOut(t) => {
            Outcome::Unknown(format!("port {port} did not answer a plaintext CONNECT within {t:?}"))
        }
    }
}

/// Opens a TLS session on `port` and sends the start of a CONNECT whose fixed header declares
/// `max_packet_size + 1` bytes: a broker that enforces the limit drops the client at once (Pass);
/// one that keeps waiting for the rest, or answers, does not (Fail). No session is Unknown.
pub async fn oversize_refused(
    host: &str,
    port: u16,
    server_name: &str,
    max_packet_size: u32,
    timeout: Duration,
) -> Outcome {
    let declared = max_packet_size as usize + 1;
    let (session, _) = modern::handshake(host, port, server_name, Mode::Capture, timeout).await;
    let mut stream = match session {
        Ok(stream) => stream,
        Err(err) => return Outcome::Unknown(format!("port {port}: {err}")),
    };
    let mut start = vec![0x10];
    start.extend(mqtt::remaining_length(declared));
    start.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c]);
    let dropped =
        Outcome::Pass(format!("port {port} dropped a CONNECT declaring {declared} bytes (maxPacketSize + 1)"));
    if stream.write_all(&start).await.and(stream.flush().await).is_err() {
        return dropped;
    }
    // a slow broker must not pass for one without the limit: wait twice as long before failing
    let wait = timeout * 2;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(wait, stream.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => dropped,
        Ok(Ok(n)) => Outcome::Fail(format!(
            "port {port} answered a CONNECT declaring {declared} bytes with {}: maxPacketSize is not enforced",
            hex_prefix(&buf[..n])
        )),
        Err(_) => Outcome::Fail(format!(
            "port {port} kept a client that declared a {declared}-byte CONNECT for {wait:?}: maxPacketSize is not enforced"
        )),
    }
}

/// Presents a client certificate for `claimed_user` signed by `foreign_ca` (a CA the broker must
/// not trust, made up by the caller the way an attacker would) on a certificate listener; see
/// [`certificate_refused`].
pub async fn foreign_certificate_refused(
    host: &str,
    port: u16,
    server_name: &str,
    foreign_ca: &crate::pki::Issued,
    claimed_user: &str,
    timeout: Duration,
) -> Outcome {
    match crate::pki::issue_client(foreign_ca, claimed_user, Duration::from_secs(3600), jiff::Timestamp::now()) {
        Ok(cert) => {
            certificate_refused(host, port, server_name, &cert, "a client certificate from a foreign CA", timeout).await
        }
        Err(err) => Outcome::Unknown(format!("could not make the foreign certificate: {err}")),
    }
}

/// Presents `cert` as the client certificate on a certificate listener, then sends CONNECT: a
/// CONNACK "accepted" is a Fail; a TLS alert, a hang-up or a refusing CONNACK is a Pass; no
/// connection or no answer is Unknown. `what` names the certificate in the evidence (one message
/// per result, so audits do not churn the status).
pub async fn certificate_refused(
    host: &str,
    port: u16,
    server_name: &str,
    cert: &crate::pki::Issued,
    what: &str,
    timeout: Duration,
) -> Outcome {
    let (Some(chain), Some(key)) = (pem_certs(&cert.cert_pem), pem_key(&cert.key_pem)) else {
        return Outcome::Unknown(format!("{what} does not parse"));
    };
    let refused = Outcome::Pass(format!("port {port} refused {what}"));
    let (session, _) = modern::handshake(host, port, server_name, Mode::Present(chain, key), timeout).await;
    let mut stream = match session {
        Ok(stream) => stream,
        Err(HandshakeError::Failed(_)) => return refused,
        Err(err) => return Outcome::Unknown(format!("port {port}: {err}")),
    };
    // TLS 1.3: the server judges the client certificate after the client's Finished, so its
    // verdict arrives with the first read
    match mqtt_exchange(&mut stream, timeout).await {
        Exchange::Connack(0) => Outcome::Fail(format!("port {port} accepted {what}")),
        Exchange::TimedOut(t) => Outcome::Unknown(format!("port {port} did not answer within {t:?}")),
        _ => refused,
    }
}

fn pem_certs(pem: &str) -> Option<Vec<rustls_pki_types::CertificateDer<'static>>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>().ok()
}

fn pem_key(pem: &str) -> Option<rustls_pki_types::PrivateKeyDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).ok()
}

/// Is this TLS failure the server insisting on a client certificate?
fn client_cert_demanded(err: &std::io::Error, seen: &Observed) -> Option<String> {
    match modern::rustls_error(err)? {
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
            Some("client certificate required (alert certificate_required)".into())
        }
        rustls::Error::AlertReceived(alert) if seen.client_cert_requested => Some(format!(
            "client certificate required: the server requested one and aborted with alert {alert:?} when none was sent"
        )),
        _ => None,
    }
}

fn anonymous_outcome(handshake: Option<&HandshakeError>, seen: &Observed, exchange: Option<Exchange>) -> Outcome {
    if let Some(err) = handshake {
        if let HandshakeError::Failed(io) = err
            && let Some(message) = client_cert_demanded(io, seen)
        {
            return Outcome::Pass(message);
        }
        return Outcome::Unknown(format!("no TLS session to send CONNECT over: {err}"));
    }
    match exchange {
        Some(Exchange::Connack(0)) => Outcome::Fail("anonymous CONNECT accepted (CONNACK rc 0)".into()),
        Some(Exchange::Connack(rc @ (4 | 5))) => {
            Outcome::Pass(format!("anonymous CONNECT refused (CONNACK rc {rc}, {})", mqtt::return_code_name(rc)))
        }
        Some(Exchange::Connack(rc)) => Outcome::Unknown(format!(
            "CONNACK rc {rc} ({}): refused for a reason other than authentication, so anonymous access is undecided",
            mqtt::return_code_name(rc)
        )),
        Some(Exchange::TlsError(err)) => match client_cert_demanded(&err, seen) {
            Some(message) => Outcome::Pass(message),
            None => Outcome::Unknown(format!("TLS error instead of a CONNACK: {err}")),
        },
        Some(Exchange::Closed) => Outcome::Unknown("connection closed without a CONNACK".into()),
        Some(Exchange::NotConnack(reason)) => Outcome::Unknown(reason),
        Some(Exchange::Io(reason)) => Outcome::Unknown(format!("I/O error instead of a CONNACK: {reason}")),
        Some(Exchange::TimedOut(timeout)) => Outcome::Unknown(format!("no CONNACK within {timeout:?}")),
        None => Outcome::Unknown("no MQTT exchange".into()),
    }
}

fn attempt_text(version: u16, attempt: &Attempt) -> String {
    let what = match attempt {
        Attempt::Unreachable(reason) => reason.as_str(),
        Attempt::Judged(
            LegacyVerdict::Refused(m)
            | LegacyVerdict::ClosedWithoutAlert(m)
            | LegacyVerdict::Accepted(m)
            | LegacyVerdict::Ambiguous(m),
        ) => m.as_str(),
    };
    format!("{}: {what}", legacy::version_name(version))
}

/// Combine the TLS 1.0 and TLS 1.1 attempts. A plain hang-up counts as a refusal only when the
/// same endpoint completed a modern handshake (otherwise it may not speak TLS at all).
fn legacy_outcome(tls10: &Attempt, tls11: &Attempt, modern_ok: bool) -> Outcome {
    let text = format!("{}; {}", attempt_text(legacy::TLS1_0, tls10), attempt_text(legacy::TLS1_1, tls11));
    let judged = |a: &Attempt| match a {
        Attempt::Judged(v) => Some(v.clone()),
        Attempt::Unreachable(_) => None,
    };
    let verdicts = [judged(tls10), judged(tls11)];
    if verdicts.iter().any(|v| matches!(v, Some(LegacyVerdict::Accepted(_)))) {
        return Outcome::Fail(text);
    }
    let refused = |v: &Option<LegacyVerdict>| match v {
        Some(LegacyVerdict::Refused(_)) => true,
        Some(LegacyVerdict::ClosedWithoutAlert(_)) => modern_ok,
        _ => false,
    };
    if verdicts.iter().all(refused) {
        Outcome::Pass(text)
    } else if verdicts.iter().any(|v| matches!(v, Some(LegacyVerdict::ClosedWithoutAlert(_)))) && !modern_ok {
        Outcome::Unknown(format!(
            "{text} (a hang-up counts as a refusal only when the endpoint completes a modern TLS handshake)"
        ))
    } else {
        Outcome::Unknown(text)
    }
}

/// Human-readable multi-line report.
pub fn format_report(report: &ProbeReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<20} {}", "reachable", if report.reachable { "yes" } else { "no" });
    for (name, outcome) in report.outcomes() {
        let _ = writeln!(out, "{name:<20} {:<8} {}", outcome.label(), outcome.message());
    }
    let _ = writeln!(out, "{:<20} {}", "negotiated version", report.negotiated_version.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "{:<20} {}", "certificate serial", report.cert_serial.as_deref().unwrap_or("-"));
    let not_after = report.cert_not_after.map_or_else(|| "-".to_owned(), |t| t.to_string());
    let _ = writeln!(out, "{:<20} {not_after}", "certificate notAfter");
    let verdict = match exit_code(report) {
        0 => "PASS",
        1 => "FAIL",
        _ => "UNKNOWN",
    };
    let _ = writeln!(out, "{:<20} {verdict}", "result");
    out
}

/// `moat probe` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// Broker host name or IP address.
    #[arg(long)]
    pub host: String,
    /// Broker TLS port.
    #[arg(long, default_value_t = 8883)]
    pub port: u16,
    /// Name the server certificate must be valid for (and SNI); defaults to --host.
    #[arg(long)]
    pub server_name: Option<String>,
    /// PEM CA bundle to verify the served chain against; without it `chain trusted` is UNKNOWN.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Limit for each network step, e.g. `5s`, `500ms` or plain seconds.
    #[arg(long, default_value = "5s", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Wait this long before probing (e.g. in a pod just started: NetworkPolicy controllers
    /// admit a new pod's address shortly after it runs).
    #[arg(long, value_parser = parse_timeout)]
    pub wait: Option<Duration>,
}

fn parse_timeout(value: &str) -> Result<Duration, String> {
    let duration = match value.trim().parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let signed: jiff::SignedDuration =
                value.trim().parse().map_err(|err| format!("invalid duration {value:?}: {err}"))?;
            Duration::try_from(signed).map_err(|err| format!("invalid duration {value:?}: {err}"))?
        }
    };
    if duration.is_zero() {
        return Err("the timeout must be positive".into());
    }
    Ok(duration)
}

/// Run `moat probe`: print the report and return the exit code (0 all pass, 1 any fail, 2 any
/// unknown, also 2 when the CA file cannot be read).
pub async fn run(args: ProbeArgs) -> i32 {
    let ca_pem = match &args.ca {
        Some(path) => match tokio::fs::read_to_string(path).await {
            Ok(pem) => Some(pem),
            Err(err) => {
                eprintln!("moat probe: cannot read CA bundle {}: {err}", path.display());
                return 2;
            }
        },
        None => None,
    };
    let target = ProbeTarget {
        server_name: args.server_name.clone().unwrap_or_else(|| args.host.clone()),
        host: args.host,
        port: args.port,
        ca_pem,
        timeout: args.timeout,
    };
    if let Some(wait) = args.wait {
        tokio::time::sleep(wait).await;
    }
    let report = probe(&target).await;
    println!("probe {}:{} (server name {})", target.host, target.port, target.server_name);
    print!("{}", format_report(&report));
    exit_code(&report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Attempt {
        Attempt::Judged(LegacyVerdict::Refused("alert protocol_version".into()))
    }
    fn closed() -> Attempt {
        Attempt::Judged(LegacyVerdict::ClosedWithoutAlert("connection closed without an alert".into()))
    }
    fn accepted() -> Attempt {
        Attempt::Judged(LegacyVerdict::Accepted("ServerHello agreeing to TLS 1.1".into()))
    }
    fn ambiguous() -> Attempt {
        Attempt::Judged(LegacyVerdict::Ambiguous("alert internal_error".into()))
    }
    fn unreachable() -> Attempt {
        Attempt::Unreachable("connection refused".into())
    }

    #[test]
    fn legacy_combination() {
        assert!(legacy_outcome(&refused(), &refused(), false).is_pass());
        assert!(legacy_outcome(&refused(), &closed(), true).is_pass());
        assert!(matches!(legacy_outcome(&refused(), &closed(), false), Outcome::Unknown(_)));
        assert!(
            matches!(legacy_outcome(&refused(), &accepted(), true), Outcome::Fail(m) if m.contains("TLS 1.1: ServerHello"))
        );
        assert!(matches!(legacy_outcome(&accepted(), &unreachable(), true), Outcome::Fail(_)));
        assert!(matches!(legacy_outcome(&ambiguous(), &accepted(), true), Outcome::Fail(_)));
        assert!(matches!(legacy_outcome(&refused(), &ambiguous(), true), Outcome::Unknown(_)));
        assert!(matches!(legacy_outcome(&unreachable(), &refused(), true), Outcome::Unknown(_)));
        assert!(matches!(legacy_outcome(&unreachable(), &unreachable(), false), Outcome::Unknown(_)));
    }

    fn report(outcomes: [Outcome; 4]) -> ProbeReport {
        let [legacy_tls_refused, modern_tls, chain_trusted, anonymous_refused] = outcomes;
        let plaintext_refused = Outcome::Pass("hung up".into());
        ProbeReport {
            reachable: true,
            legacy_tls_refused,
            modern_tls,
            negotiated_version: Some("TLSv1.3".into()),
            chain_trusted,
            cert_serial: Some("0a".into()),
            cert_not_after: Some(jiff::Timestamp::UNIX_EPOCH),
            anonymous_refused,
            plaintext_refused,
        }
    }

    #[test]
    fn exit_codes() {
        let p = || Outcome::Pass("ok".into());
        let f = || Outcome::Fail("bad".into());
        let u = || Outcome::Unknown("?".into());
        assert_eq!(exit_code(&report([p(), p(), p(), p()])), 0);
        assert_eq!(exit_code(&report([p(), p(), u(), p()])), 2);
        assert_eq!(exit_code(&report([p(), f(), p(), p()])), 1);
        assert_eq!(exit_code(&report([u(), f(), p(), u()])), 1);
        let text = format_report(&report([p(), p(), u(), f()]));
        assert!(text.contains("chain trusted        UNKNOWN  ?"), "{text}");
        assert!(text.contains("anonymous refused    FAIL     bad"), "{text}");
        assert!(text.contains("result               FAIL"), "{text}");
    }

    #[test]
    fn anonymous_decisions_without_network() {
        let seen = Observed::default();
        let outcome = |x| anonymous_outcome(None, &seen, Some(x));
        assert!(matches!(outcome(Exchange::Connack(0)), Outcome::Fail(_)));
        assert!(outcome(Exchange::Connack(5)).is_pass());
        assert!(outcome(Exchange::Connack(4)).is_pass());
        for rc in [1, 2, 3, 6] {
            assert!(matches!(outcome(Exchange::Connack(rc)), Outcome::Unknown(_)), "rc {rc}");
        }
        assert!(matches!(outcome(Exchange::Closed), Outcome::Unknown(_)));
        assert!(matches!(outcome(Exchange::TimedOut(Duration::from_secs(1))), Outcome::Unknown(_)));
        let alert = |d| std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::AlertReceived(d));
        let cert_required = alert(rustls::AlertDescription::CertificateRequired);
        assert!(outcome(Exchange::TlsError(cert_required)).is_pass());
        // A handshake_failure alert means "client certificate required" only if one was requested.
        let hf = || alert(rustls::AlertDescription::HandshakeFailure);
        assert!(matches!(outcome(Exchange::TlsError(hf())), Outcome::Unknown(_)));
        let requested = Observed { client_cert_requested: true, ..Observed::default() };
        assert!(anonymous_outcome(Some(&HandshakeError::Failed(hf())), &requested, None).is_pass());
        assert!(matches!(anonymous_outcome(Some(&HandshakeError::Failed(hf())), &seen, None), Outcome::Unknown(_)));
    }

    #[test]
    fn probe_args_parse_with_defaults() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ProbeArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from(["moat", "--host", "broker.example"]).unwrap();
        assert_eq!(cli.args.host, "broker.example");
        assert_eq!(cli.args.port, 8883);
        assert_eq!(cli.args.server_name, None);
        assert_eq!(cli.args.ca, None);
        assert_eq!(cli.args.timeout, Duration::from_secs(5));
        let cli = <Cli as clap::Parser>::try_parse_from([
            "moat",
            "--host",
            "10.0.0.7",
            "--port",
            "18883",
            "--server-name",
            "mqtt.example",
            "--ca",
            "/etc/ca.pem",
            "--timeout",
            "750ms",
        ])
        .unwrap();
        assert_eq!(cli.args.port, 18883);
        assert_eq!(cli.args.server_name.as_deref(), Some("mqtt.example"));
        assert_eq!(cli.args.ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(cli.args.timeout, Duration::from_millis(750));
        assert!(<Cli as clap::Parser>::try_parse_from(["moat"]).is_err(), "--host is required");
    }

    #[test]
    fn timeout_parsing() {
        assert_eq!(parse_timeout("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_timeout("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_timeout("2s").unwrap(), Duration::from_secs(2));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("soon").is_err());
        assert!(parse_timeout("-3s").is_err());
    }
}
