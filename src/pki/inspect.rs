//! Reading certificates: [`inspect`], [`key_matches`], [`signed_by`].

use std::net::IpAddr;

use jiff::Timestamp;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384};
use x509_parser::parse_x509_certificate;

use super::{PkiError, Result, first_pem_block, from_asn1, key_is_for, parse_key, serial_hex};

/// What moat needs to know about a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial number, lower-case hex without separators or leading zero bytes.
    pub serial_hex: String,
    /// Subject distinguished name (e.g. `O=moat, CN=plant-a CA 20260301T000000Z`).
    pub subject_dn: String,
    /// The subject's first common name, if any.
    pub subject_cn: Option<String>,
    /// Issuer distinguished name (same format as `subject_dn`).
    pub issuer_dn: String,
    /// Start of validity.
    pub not_before: Timestamp,
    /// End of validity (the certificate is valid through this second).
    pub not_after: Timestamp,
    /// DNS subject alternative names, as written.
    pub dns_names: Vec<String>,
    /// IP address subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// basicConstraints CA:TRUE.
    pub is_ca: bool,
    /// The public key is ECDSA on P-256 or P-384 (what moat issues and accepts).
    pub key_is_strong: bool,
    /// extendedKeyUsage contains serverAuth.
    pub server_auth: bool,
    /// extendedKeyUsage contains clientAuth.
    pub client_auth: bool,
    /// subjectKeyIdentifier, if present.
    pub subject_key_id: Option<Vec<u8>>,
    /// authorityKeyIdentifier's keyIdentifier, if present.
    pub authority_key_id: Option<Vec<u8>>,
}

/// Parses the first `CERTIFICATE` block of `cert_pem`.
pub fn inspect(cert_pem: &str) -> Result<CertInfo> {
    let der = first_pem_block(cert_pem, "CERTIFICATE")?;
    with_cert(&der, cert_info)?
}

/// Parses DER and hands the certificate to `f`.
pub(super) fn with_cert<T>(der: &[u8], f: impl FnOnce(&X509Certificate<'_>) -> T) -> Result<T> {
    let (rest, cert) =
        parse_x509_certificate(der).map_err(|e| PkiError::Parse { what: "certificate", reason: e.to_string() })?;
    if !rest.is_empty() {
        return Err(PkiError::Parse { what: "certificate", reason: "trailing data after the certificate".into() });
    }
    Ok(f(&cert))
}

/// Extracts [`CertInfo`] from a parsed certificate.
pub(super) fn cert_info(cert: &X509Certificate<'_>) -> Result<CertInfo> {
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    let mut subject_key_id = None;
    let mut authority_key_id = None;
    let (mut server_auth, mut client_auth) = (false, false);
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(dns) => dns_names.push((*dns).to_string()),
                        GeneralName::IPAddress(bytes) => {
                            if let Some(ip) = ip_from_bytes(bytes) {
                                ip_addresses.push(ip);
                            }
                        }
                        _ => {}
                    }
                }
            }
            ParsedExtension::SubjectKeyIdentifier(id) => subject_key_id = Some(id.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                authority_key_id = aki.key_identifier.as_ref().map(|id| id.0.to_vec());
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                server_auth = eku.server_auth || eku.any;
                client_auth = eku.client_auth || eku.any;
            }
            _ => {}
        }
    }
    let subject_cn = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_string);
    Ok(CertInfo {
        serial_hex: serial_hex(cert.raw_serial()),
        subject_dn: cert.subject().to_string(),
        subject_cn,
        issuer_dn: cert.issuer().to_string(),
        not_before: from_asn1(cert.validity().not_before)?,
        not_after: from_asn1(cert.validity().not_after)?,
        dns_names,
        ip_addresses,
        is_ca: cert.is_ca(),
        key_is_strong: key_is_strong(cert),
        server_auth,
        client_auth,
        subject_key_id,
        authority_key_id,
    })
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// ECDSA with a named curve P-256 or P-384.
fn key_is_strong(cert: &X509Certificate<'_>) -> bool {
    let alg = &cert.public_key().algorithm;
    if alg.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return false;
    }
    alg.parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .is_some_and(|curve| curve == OID_EC_P256 || curve == OID_NIST_EC_P384)
}

/// Whether `key_pem` (PKCS#8) is the private key of the certificate `cert_pem`.
///
/// The in-pod agent calls this before installing a server cert/key: a mismatched pair makes every new
/// Mosquitto handshake fail. Any parse failure yields `false`.
pub fn key_matches(cert_pem: &str, key_pem: &str) -> bool {
    let Ok(key) = parse_key(key_pem, "certificate") else {
        return false;
    };
    first_pem_block(cert_pem, "CERTIFICATE")
        .and_then(|der| with_cert(&der, |cert| key_is_for(&key, cert.public_key().raw)))
        .unwrap_or(false)
}

/// Whether `cert_pem` was signed by the CA `ca_cert_pem`: the CA is a CA, its subject is the
/// certificate's issuer, and the signature verifies with the CA's public key. Validity periods are not
/// checked here. Any parse failure yields `false`.
pub fn signed_by(cert_pem: &str, ca_cert_pem: &str) -> bool {
    let (Ok(cert_der), Ok(ca_der)) =
        (first_pem_block(cert_pem, "CERTIFICATE"), first_pem_block(ca_cert_pem, "CERTIFICATE"))
    else {
        return false;
    };
    signed_by_der(&cert_der, &ca_der)
}

/// [`signed_by`] on DER.
pub(super) fn signed_by_der(cert_der: &[u8], ca_der: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, ca))) = (parse_x509_certificate(cert_der), parse_x509_certificate(ca_der)) else {
        return false;
    };
    ca.is_ca()
        && cert.issuer().as_raw() == ca.subject().as_raw()
        && cert.verify_signature(Some(ca.public_key())).is_ok()
}
