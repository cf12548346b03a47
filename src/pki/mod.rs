//! Pure PKI on rcgen: per-broker CA, server and client certificates, CRLs, rotation decisions.
//!
//! Everything here is a pure function of its inputs: no network, no file system, no global state,
//! and **no clock** — the current time is always a `now: jiff::Timestamp` parameter, so rotation and
//! rollover can be tested step by step with an injected clock.
//!
//! Key material: ECDSA P-256 keys only (PKCS#8 PEM, which OpenSSL 3.0 and so Mosquitto load;
//! Ed25519 PKCS#8 v2 is refused by OpenSSL 3.0). Certificates carry random, positive 16-byte serials.
//! Private keys never appear in `Debug` output or error messages.
//!
//! The pieces:
//! - issuing: [`new_ca`], [`issue_server`], [`issue_client`] (leaf `notAfter` capped at the CA's);
//! - reading: [`inspect`] → [`CertInfo`], [`key_matches`], [`signed_by`];
//! - CRLs: [`sign_crl`], [`parse_crl`], [`crl_needs_resign`] and the revocation ledger
//!   ([`RevokedCert`], [`encode_revoked`], [`decode_revoked`], [`prune_revoked`]);
//! - rotation: [`leaf_renewal`] decides whether a leaf certificate must be re-issued, and why;
//! - rollover: [`plan_ca`] moves a [`CaSet`] through Stable → Introducing → Migrating → Stable so a
//!   new CA is trusted everywhere before it signs anything, and the old one is trusted until nothing
//!   it signed is still in use (`notes/mosquitto.md` §11: bundle + one CRL per CA, no restart).
//!
//! Times in certificates have one-second precision; every computation here truncates `now` to the
//! second first, so comparisons between a certificate and the clock are exact.

pub(crate) mod crl;
mod inspect;
mod issue;
mod rollover;
mod rotation;

#[cfg(test)]
mod compat_tests;
#[cfg(test)]
mod test_support;

use std::fmt;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rand::RngCore;
use rcgen::{KeyPair, PublicKeyData};
use x509_parser::pem::Pem;

pub use crl::{
    CrlInfo, RevokedCert, crl_needs_resign, crl_resign_time, decode_revoked, encode_revoked, next_crl_number,
    parse_crl, parse_crls, prune_revoked, sign_crl,
};
pub use inspect::{CertInfo, inspect, key_matches, signed_by};
pub use issue::{ServerNames, issue_client, issue_server, new_ca};
pub use rollover::{
    CA_CERT_KEY, CA_KEY_KEY, CaSet, CaTransition, PENDING_CA_CERT_KEY, PENDING_CA_KEY_KEY, RETIRING_CA_CERT_KEY,
    RETIRING_CA_KEY_KEY, SINCE_KEY, introduce_now, plan_ca,
};
pub use rotation::{
    RenewReason, Want, issued_leaf_renewal, leaf_next_event, leaf_renewal, renewal_time, renewal_time_of, requeue_after,
};

/// Tolerated clock difference between the operator and the broker pods / clients.
///
/// New certificates and CRLs are back-dated by this much (`notBefore` / `thisUpdate` = now − 5 min), so a
/// pod whose clock is a little behind does not see them as "not yet valid"; revocation entries are kept
/// this long past the revoked certificate's expiry.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Length of certificate serial numbers, in bytes.
pub const SERIAL_LEN: usize = 16;

/// Errors of the PKI module. Messages never contain private key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The input holds no PEM block with the expected label.
    #[error("no PEM block labelled {0:?} found")]
    MissingPem(&'static str),
    /// A certificate, CRL or PEM block could not be decoded.
    #[error("cannot parse {what}: {reason}")]
    Parse {
        /// What was being parsed (`certificate`, `CRL`, ...).
        what: &'static str,
        /// Why it failed (never contains key material).
        reason: String,
    },
    /// A private key is not a PKCS#8 ECDSA key that can be used (or is not PEM at all).
    #[error("private key of the {0} is not a usable PKCS#8 ECDSA key")]
    InvalidKey(&'static str),
    /// A private key does not belong to its certificate.
    #[error("private key does not belong to the {0} certificate")]
    KeyMismatch(&'static str),
    /// A certificate used for signing is not a CA certificate.
    #[error("certificate {0:?} is not a CA (basicConstraints CA:TRUE missing)")]
    NotCa(String),
    /// The signing CA has expired (or expires now): nothing it signs would be valid.
    #[error("signing CA {subject:?} expired at {not_after}")]
    SignerExpired {
        /// Subject DN of the CA.
        subject: String,
        /// The CA's notAfter.
        not_after: Timestamp,
    },
    /// A common name, username or subject alternative name is not acceptable.
    #[error("invalid name: {0}")]
    InvalidName(String),
    /// A validity period or time is out of range or inconsistent.
    #[error("invalid time: {0}")]
    InvalidTime(String),
    /// rcgen failed to build or sign a certificate or CRL.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A line of the revocation ledger text is malformed.
    #[error("invalid revocation ledger line {line}: {reason}")]
    Ledger {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The data of a CA Secret is incomplete or inconsistent.
    #[error("invalid CA Secret data: {0}")]
    SecretData(String),
    /// A [`CaSet`] violates its invariants (e.g. pending and retiring both set).
    #[error("inconsistent CA set: {0}")]
    CaSet(&'static str),
}

/// Result alias of the PKI module.
pub type Result<T, E = PkiError> = std::result::Result<T, E>;

/// A certificate with its private key, both PEM (`CERTIFICATE` and PKCS#8 `PRIVATE KEY`).
///
/// The `Debug` output never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM. Secret.
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem).field("key_pem", &"[redacted]").finish()
    }
}

/// `now` truncated to whole seconds (certificate times have second precision).
fn trunc(ts: Timestamp) -> Timestamp {
    // as_second() truncates towards zero; every timestamp in range stays in range.
    Timestamp::from_second(ts.as_second()).unwrap_or(ts)
}

/// Converts a std duration into a signed one, failing for absurd values.
fn signed(d: Duration, what: &str) -> Result<SignedDuration> {
    SignedDuration::try_from(d).map_err(|_| PkiError::InvalidTime(format!("{what} {d:?} is too large")))
}

/// `ts + d`, failing if the result leaves the representable range.
fn add(ts: Timestamp, d: Duration, what: &str) -> Result<Timestamp> {
    ts.checked_add(signed(d, what)?)
        .map_err(|_| PkiError::InvalidTime(format!("{what} {d:?} ends beyond the year 9999")))
}

/// `ts − d`, saturating at the minimum timestamp.
fn sub_saturating(ts: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d).ok().and_then(|d| ts.checked_sub(d).ok()).unwrap_or(Timestamp::MIN)
}

/// Converts a jiff timestamp into the `time` type rcgen wants (second precision).
fn to_offset(ts: Timestamp) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(ts.as_second())
        .map_err(|_| PkiError::InvalidTime(format!("{ts} cannot be encoded in a certificate")))
}

/// Converts an ASN.1 time from a parsed certificate or CRL into a jiff timestamp.
fn from_asn1(t: x509_parser::time::ASN1Time) -> Result<Timestamp> {
    Timestamp::from_second(t.timestamp())
        .map_err(|_| PkiError::Parse { what: "time", reason: format!("{} is out of range", t.timestamp()) })
}

/// `N` bytes from the operating system's CSPRNG.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// A fresh random serial: 16 bytes, positive, and always exactly 16 bytes long when DER-encoded.
fn random_serial() -> rcgen::SerialNumber {
    let mut bytes: [u8; SERIAL_LEN] = random_bytes();
    // Top bit clear (positive), next bit set (no leading zero byte): 126 random bits.
    bytes[0] = (bytes[0] & 0x3f) | 0x40;
    rcgen::SerialNumber::from_slice(&bytes)
}

/// `raw` without leading zero bytes (at least one byte kept).
fn strip_zeros(raw: &[u8]) -> &[u8] {
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len().saturating_sub(1));
    &raw[start..]
}

/// Canonical serial text: lower-case hex of the integer's big-endian bytes, without leading zero
/// bytes (DER adds a `00` before positive serials with the top bit set; the value is the same).
pub fn serial_hex(raw: &[u8]) -> String {
    crate::hex(strip_zeros(raw))
}

/// Parses serial hex (any case, optional `:` separators) into canonical text and minimal bytes.
fn parse_serial_hex(text: &str) -> Option<(String, Vec<u8>)> {
    let digits: String = text.chars().filter(|&c| c != ':').collect::<String>().to_ascii_lowercase();
    if digits.is_empty() || digits.len() > 42 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let padded = if digits.len() % 2 == 1 { format!("0{digits}") } else { digits };
    let bytes: Vec<u8> = (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16))
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    let value = strip_zeros(&bytes).to_vec();
    Some((crate::hex(&value), value))
}

/// All PEM blocks of `text` with the given label, decoded to DER.
fn pem_blocks(text: &str, label: &'static str) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for block in Pem::iter_from_buffer(text.as_bytes()) {
        let block: Pem = block.map_err(|e| PkiError::Parse { what: "PEM", reason: e.to_string() })?;
        if block.label == label {
            out.push(block.contents);
        }
    }
    Ok(out)
}

/// The first PEM block of `text` with the given label, decoded to DER.
fn first_pem_block(text: &str, label: &'static str) -> Result<Vec<u8>> {
    pem_blocks(text, label)?.into_iter().next().ok_or(PkiError::MissingPem(label))
}

/// Parses a PKCS#8 private key PEM. The error says only *which* key failed, never why in detail
/// (parser messages could echo input).
fn parse_key(key_pem: &str, what: &'static str) -> Result<KeyPair> {
    KeyPair::from_pem(key_pem).map_err(|_| PkiError::InvalidKey(what))
}

/// Whether `key`'s public half is the SubjectPublicKeyInfo `spki_der` of a certificate.
fn key_is_for(key: &KeyPair, spki_der: &[u8]) -> bool {
    key.subject_public_key_info() == spki_der
}
