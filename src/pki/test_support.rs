//! Shared test fixtures: an injected clock and duration shorthands.

use std::time::Duration;

use jiff::Timestamp;

/// One minute.
pub const MIN: Duration = Duration::from_secs(60);
/// One hour.
pub const HOUR: Duration = Duration::from_secs(3600);
/// One day.
pub const DAY: Duration = Duration::from_secs(86_400);

/// The injected "now" of the tests: 2026-03-01T00:00:00Z.
pub fn t0() -> Timestamp {
    "2026-03-01T00:00:00Z".parse().unwrap()
}

/// A server leaf with an Ed25519 key (a key type moat does not accept), signed by `ca`.
pub fn ed25519_server_leaf(ca: &super::Issued, dns: &str) -> super::Issued {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(&ca.key_pem).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![dns.to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, dns);
    params.not_before = time::OffsetDateTime::from_unix_timestamp(t0().as_second() - 60).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(t0().as_second() + 90 * 86_400).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    super::Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
}
