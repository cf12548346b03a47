//! Modern-TLS check: TLS 1.2/1.3 handshakes with tokio-rustls on an explicit ring provider.
//!
//! Two kinds of handshake share one verifier type, [`Recorder`]:
//! - *capture*: accepts any certificate (signatures over the handshake are still checked) and
//!   records what the server presented; used for `modern_tls`, the certificate details and the
//!   anonymous MQTT check;
//! - *verify*: real webpki verification against the given CA bundle for the server name; the only
//!   source of `chain_trusted`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{ClientConfig, DigitallySignedStruct, ProtocolVersion, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The ring provider, always passed explicitly (never a process-default provider).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What one handshake revealed, filled in by the verifier and the client-certificate resolver.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// DER of the end-entity certificate the server presented.
    pub end_entity: Option<Vec<u8>>,
    /// Version implied by the server's handshake signature (TLS 1.2 ServerKeyExchange or TLS 1.3
    /// CertificateVerify), known even when the handshake fails afterwards.
    pub version: Option<ProtocolVersion>,
    /// Result of certificate verification (always `Ok` for a capture handshake).
    pub cert_check: Option<Result<(), String>>,
    /// Result of the server's handshake signature check.
    pub signature_check: Option<Result<(), String>>,
    /// The server sent a CertificateRequest.
    pub client_cert_requested: bool,
    /// Negotiated cipher suite, when the handshake completed.
    pub cipher_suite: Option<String>,
}

type Shared = Arc<Mutex<Observed>>;

fn update(shared: &Shared, f: impl FnOnce(&mut Observed)) {
    let mut guard = shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    f(&mut guard);
}

#[derive(Debug)]
enum Inner {
    AcceptAny,
    Verify(Arc<WebPkiServerVerifier>),
}

/// Server-certificate verifier that records what it saw (see the module docs).
#[derive(Debug)]
struct Recorder {
    inner: Inner,
    algorithms: WebPkiSupportedAlgorithms,
    seen: Shared,
}

impl Recorder {
    fn record_signature(
        &self,
        version: ProtocolVersion,
        result: Result<HandshakeSignatureValid, rustls::Error>,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let outcome = result.as_ref().map(|_| ()).map_err(ToString::to_string);
        update(&self.seen, |o| {
            o.version = Some(version);
            o.signature_check = Some(outcome);
        });
        result
    }
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = match &self.inner {
            Inner::AcceptAny => Ok(ServerCertVerified::assertion()),
            Inner::Verify(verifier) => {
                verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
        };
        let outcome = result.as_ref().map(|_| ()).map_err(ToString::to_string);
        update(&self.seen, |o| {
            o.end_entity = Some(end_entity.as_ref().to_vec());
            o.cert_check = Some(outcome);
        });
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let result = match &self.inner {
            Inner::AcceptAny => rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms),
            Inner::Verify(verifier) => verifier.verify_tls12_signature(message, cert, dss),
        };
        self.record_signature(ProtocolVersion::TLSv1_2, result)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let result = match &self.inner {
            Inner::AcceptAny => rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms),
            Inner::Verify(verifier) => verifier.verify_tls13_signature(message, cert, dss),
        };
        self.record_signature(ProtocolVersion::TLSv1_3, result)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Client-certificate "resolver" that has no certificate but notes that the server asked for one.
#[derive(Debug)]
struct NoClientCert {
    seen: Shared,
}

impl rustls::client::ResolvesClientCert for NoClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        update(&self.seen, |o| o.client_cert_requested = true);
        None
    }

    fn has_certs(&self) -> bool {
        // Keep rustls on the path that consults `resolve`, so a CertificateRequest is noticed.
        true
    }
}

/// Which kind of handshake to run.
pub enum Mode {
    /// Accept any certificate, record it.
    Capture,
    /// Verify against these roots.
    Verify(RootCertStore),
    /// Like `Capture`, and present this client certificate chain with its key (an attack).
    Present(Vec<CertificateDer<'static>>, rustls_pki_types::PrivateKeyDer<'static>),
}

/// Parse a PEM CA bundle into a root store; an error says why it is unusable.
pub fn roots_from_pem(pem: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|err| format!("CA bundle is not valid PEM: {err}"))?;
        roots.add(cert).map_err(|err| format!("CA bundle holds an unusable certificate: {err}"))?;
    }
    if roots.is_empty() {
        return Err("CA bundle holds no certificate".into());
    }
    Ok(roots)
}

/// Why a handshake produced no TLS session.
#[derive(Debug)]
pub enum HandshakeError {
    /// No TCP connection.
    Unreachable(String),
    /// TCP connected, but no completed handshake within the timeout.
    TimedOut(Duration),
    /// The probe could not even build its TLS configuration (bad server name, …).
    Setup(String),
    /// The handshake failed (TLS error, alert, or the peer hung up).
    Failed(std::io::Error),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(reason) => write!(f, "unreachable: {reason}"),
            Self::TimedOut(timeout) => write!(f, "no TLS handshake within {timeout:?}"),
            Self::Setup(reason) => write!(f, "{reason}"),
            Self::Failed(err) => write!(f, "TLS handshake failed: {err}"),
        }
    }
}

/// The rustls error inside an I/O error from tokio-rustls, if any.
pub fn rustls_error(err: &std::io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}

/// One TLS 1.2/1.3 handshake. Returns the session (or why there is none) and what was observed,
/// which is meaningful even when the handshake failed half-way.
pub async fn handshake(
    host: &str,
    port: u16,
    server_name: &str,
    mode: Mode,
    timeout: Duration,
) -> (Result<TlsStream<TcpStream>, HandshakeError>, Observed) {
    let seen: Shared = Arc::default();
    let result = handshake_inner(host, port, server_name, mode, timeout, &seen).await;
    let mut observed = seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
    if let Ok(stream) = &result {
        let connection = stream.get_ref().1;
        observed.version = connection.protocol_version().or(observed.version);
        observed.cipher_suite = connection.negotiated_cipher_suite().map(|suite| format!("{:?}", suite.suite()));
    }
    (result, observed)
}

async fn handshake_inner(
    host: &str,
    port: u16,
    server_name: &str,
    mode: Mode,
    timeout: Duration,
    seen: &Shared,
) -> Result<TlsStream<TcpStream>, HandshakeError> {
    let provider = provider();
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|err| HandshakeError::Setup(format!("invalid server name {server_name:?}: {err}")))?;
    let (inner, client) = match mode {
        Mode::Capture => (Inner::AcceptAny, None),
        Mode::Present(chain, key) => (Inner::AcceptAny, Some((chain, key))),
        Mode::Verify(roots) => (
            Inner::Verify(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|err| HandshakeError::Setup(format!("cannot build a verifier: {err}")))?,
            ),
            None,
        ),
    };
    let verifier = Recorder { inner, algorithms: provider.signature_verification_algorithms, seen: seen.clone() };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| HandshakeError::Setup(format!("TLS configuration: {err}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let config = match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|err| HandshakeError::Setup(format!("client certificate: {err}")))?,
        None => builder.with_client_cert_resolver(Arc::new(NoClientCert { seen: seen.clone() })),
    };
    let tcp = super::connect(host, port, timeout).await.map_err(HandshakeError::Unreachable)?;
    let connector = TlsConnector::from(Arc::new(config));
    match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => Err(HandshakeError::Failed(err)),
        Err(_) => Err(HandshakeError::TimedOut(timeout)),
    }
}

/// `TLSv1.2` / `TLSv1.3` (or the debug form of anything else).
pub fn version_label(version: ProtocolVersion) -> String {
    match version {
        ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        other => format!("{other:?}"),
    }
}

/// Serial (upper-case hex of the integer value, as `openssl x509 -serial` prints it) and notAfter
/// of a DER certificate.
pub fn cert_details(der: &[u8]) -> Result<(String, jiff::Timestamp), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|err| format!("cannot parse the server certificate: {err}"))?;
    let serial = crate::pki::serial_hex(cert.tbs_certificate.raw_serial());
    let not_after = jiff::Timestamp::from_second(cert.validity().not_after.timestamp())
        .map_err(|err| format!("notAfter out of range: {err}"))?;
    Ok((serial, not_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_from_pem_rejects_empty_and_garbage() {
        assert!(roots_from_pem("").unwrap_err().contains("no certificate"));
        assert!(roots_from_pem("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err());
        let ca = rcgen::generate_simple_self_signed(vec!["ca.example".into()]).unwrap();
        assert_eq!(roots_from_pem(&ca.cert.pem()).unwrap().len(), 1);
    }

    #[test]
    fn cert_details_reads_serial_and_not_after() {
        let mut params = rcgen::CertificateParams::new(vec!["broker.example".into()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x00, 0x8a, 0x01, 0xff]));
        params.not_after = time::OffsetDateTime::from_unix_timestamp(2_000_000_000).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (serial, not_after) = cert_details(cert.der()).unwrap();
        assert_eq!(serial, "8a01ff", "the canonical form of status and the ledger");
        assert_eq!(not_after, jiff::Timestamp::from_second(2_000_000_000).unwrap());
        assert!(cert_details(b"not a certificate").is_err());
    }
}
