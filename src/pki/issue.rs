//! Issuing: the broker CA ([`new_ca`]), server ([`issue_server`]) and client ([`issue_client`]) certificates.

use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};

use super::inspect::{CertInfo, cert_info, with_cert};
use super::{
    CLOCK_SKEW, Issued, PkiError, Result, add, first_pem_block, key_is_for, parse_key, random_bytes, random_serial,
    sub_saturating, to_offset, trunc,
};

/// Longest common name written into a certificate (RFC 5280 `ub-common-name`) for CAs.
const CA_CN_MAX: usize = 64;

/// DN attribute `serialNumber` (2.5.4.5), used to make every CA subject unique.
const OID_DN_SERIAL_NUMBER: &[u64] = &[2, 5, 4, 5];

/// Names a server certificate is valid for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerNames {
    /// DNS names (Service names, pod names, extra names from the spec). The first one becomes the CN.
    pub dns: Vec<String>,
    /// IP addresses.
    pub ips: Vec<IpAddr>,
}

impl ServerNames {
    /// The canonical form used for issuing and comparing: DNS names lower-cased, without a trailing
    /// dot, duplicates removed (first occurrence kept, so the CN stays the first name); IPs deduplicated.
    pub fn normalized(&self) -> ServerNames {
        let mut dns: Vec<String> = Vec::with_capacity(self.dns.len());
        for name in &self.dns {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if !dns.contains(&name) {
                dns.push(name);
            }
        }
        let mut ips: Vec<IpAddr> = Vec::with_capacity(self.ips.len());
        for ip in &self.ips {
            if !ips.contains(ip) {
                ips.push(*ip);
            }
        }
        ServerNames { dns, ips }
    }

    /// The names as sorted sets, for order-insensitive comparison with a certificate.
    pub(super) fn sorted_sets(&self) -> (Vec<String>, Vec<IpAddr>) {
        let n = self.normalized();
        let (mut dns, mut ips) = (n.dns, n.ips);
        dns.sort();
        ips.sort();
        (dns, ips)
    }
}

/// A CA certificate and key loaded for signing.
pub(super) struct Signer {
    /// rcgen's issuer (subject DN, key identifier = the CA's subjectKeyIdentifier, key).
    pub issuer: Issuer<'static, KeyPair>,
    /// The CA certificate.
    pub info: CertInfo,
}

/// Loads `ca` for signing: the certificate must parse, be a CA, and match its key.
pub(super) fn load_signer(ca: &Issued) -> Result<Signer> {
    let der = first_pem_block(&ca.cert_pem, "CERTIFICATE")?;
    let key = parse_key(&ca.key_pem, "CA")?;
    let (info, matches) =
        with_cert(&der, |cert| cert_info(cert).map(|info| (info, key_is_for(&key, cert.public_key().raw))))??;
    if !info.is_ca {
        return Err(PkiError::NotCa(info.subject_dn));
    }
    if !matches {
        return Err(PkiError::KeyMismatch("CA"));
    }
    let issuer = Issuer::from_ca_cert_der(&der.into(), key)?;
    Ok(Signer { issuer, info })
}

fn check_text(what: &str, text: &str) -> Result<()> {
    if text.trim().is_empty() {
        return Err(PkiError::InvalidName(format!("{what} must not be empty or blank")));
    }
    if text.chars().any(char::is_control) {
        return Err(PkiError::InvalidName(format!("{what} {text:?} contains control characters")));
    }
    Ok(())
}

fn nonzero(validity: Duration) -> Result<()> {
    if validity.is_zero() {
        return Err(PkiError::InvalidTime("validity must be positive".into()));
    }
    Ok(())
}

fn new_key() -> Result<KeyPair> {
    Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)
}

/// Creates a self-signed broker CA: ECDSA P-256, CA:TRUE with pathlen 0, keyUsage keyCertSign + cRLSign,
/// valid from `now − CLOCK_SKEW` for `validity`.
///
/// Every CA generation gets a **unique subject DN**: `O=moat, CN=<common_name> <YYYYMMDDTHHMMSSZ>,
/// serialNumber=<16 random hex digits>`. OpenSSL selects CRLs by issuer name, and during a rollover two
/// CAs of the same broker are trusted at once, so they must never share a name. `common_name` is cut
/// (at a character boundary) so the CN stays within 64 characters.
pub fn new_ca(common_name: &str, validity: Duration, now: Timestamp) -> Result<Issued> {
    check_text("CA common name", common_name)?;
    nonzero(validity)?;
    let now = trunc(now);
    let stamp = now.strftime("%Y%m%dT%H%M%SZ").to_string();
    let budget = CA_CN_MAX - stamp.len() - 1;
    let name: String = common_name
        .chars()
        .scan(0, |len, c| {
            *len += c.len_utf8();
            (*len <= budget).then_some(c)
        })
        .collect();
    let unique: [u8; 8] = random_bytes();

    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "moat");
    dn.push(DnType::CommonName, format!("{} {stamp}", name.trim_end()));
    dn.push(
        DnType::CustomDnType(OID_DN_SERIAL_NUMBER.to_vec()),
        DnValue::PrintableString(crate::hex(&unique).try_into()?),
    );

    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.serial_number = Some(random_serial());
    params.not_before = to_offset(sub_saturating(now, CLOCK_SKEW))?;
    params.not_after = to_offset(add(now, validity, "CA validity")?)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.key_identifier_method = KeyIdMethod::Sha256;

    let key = new_key()?;
    let cert = params.self_signed(&key)?;
    Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// `notAfter` of a leaf issued now: `now + validity`, capped at the signing CA's `notAfter`.
pub(super) fn leaf_not_after(signer: &CertInfo, validity: Duration, now: Timestamp) -> Result<Timestamp> {
    Ok(add(trunc(now), validity, "certificate validity")?.min(signer.not_after))
}

fn issue_leaf(
    ca: &Issued,
    cn: &str,
    sans: Vec<SanType>,
    eku: ExtendedKeyUsagePurpose,
    validity: Duration,
    now: Timestamp,
) -> Result<Issued> {
    nonzero(validity)?;
    let signer = load_signer(ca)?;
    let now = trunc(now);
    if signer.info.not_after <= now {
        return Err(PkiError::SignerExpired { subject: signer.info.subject_dn, not_after: signer.info.not_after });
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);

    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.serial_number = Some(random_serial());
    params.not_before = to_offset(sub_saturating(now, CLOCK_SKEW))?;
    params.not_after = to_offset(leaf_not_after(&signer.info, validity, now)?)?;
    // ExplicitNoCa writes basicConstraints CA:FALSE and a subjectKeyIdentifier.
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::Sha256;

    let key = new_key()?;
    let cert = params.signed_by(&key, &signer.issuer)?;
    Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Checks one DNS name: LDH labels of 1–63 characters, at most 253 in all; a leading `*` label
/// (wildcard) is allowed when at least two labels follow (Mosquitto refuses `*.com`).
fn check_dns_name(name: &str) -> Result<()> {
    let bad = |why: &str| Err(PkiError::InvalidName(format!("DNS name {name:?}: {why}")));
    if name.is_empty() || name.len() > 253 {
        return bad("must be 1-253 characters");
    }
    let labels: Vec<&str> = name.split('.').collect();
    for (i, label) in labels.iter().enumerate() {
        if i == 0 && *label == "*" {
            if labels.len() < 3 {
                return bad("a wildcard needs at least two more labels");
            }
            continue;
        }
        if label.is_empty() || label.len() > 63 {
            return bad("labels must be 1-63 characters");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return bad("labels may hold only letters, digits and inner '-'");
        }
    }
    Ok(())
}

/// Issues a server certificate signed by `ca`: EKU serverAuth, keyUsage digitalSignature, the
/// (normalized) names as SANs, CN = first DNS name (or first IP if there is none).
///
/// Valid from `now − CLOCK_SKEW` until `now + validity`, capped at the CA's `notAfter`.
pub fn issue_server(ca: &Issued, names: &ServerNames, validity: Duration, now: Timestamp) -> Result<Issued> {
    let names = names.normalized();
    for name in &names.dns {
        check_dns_name(name)?;
    }
    let cn = match (names.dns.first(), names.ips.first()) {
        (Some(dns), _) => dns.clone(),
        (None, Some(ip)) => ip.to_string(),
        (None, None) => return Err(PkiError::InvalidName("a server certificate needs at least one name".into())),
    };
    let mut sans = Vec::with_capacity(names.dns.len() + names.ips.len());
    for dns in names.dns {
        sans.push(SanType::DnsName(dns.try_into()?));
    }
    sans.extend(names.ips.into_iter().map(SanType::IpAddress));
    issue_leaf(ca, &cn, sans, ExtendedKeyUsagePurpose::ServerAuth, validity, now)
}

/// Issues a client certificate signed by `ca` for MQTT user `username`: CN = username (Mosquitto's
/// `use_identity_as_username`), EKU clientAuth, keyUsage digitalSignature, no SANs.
///
/// Rejects empty usernames and usernames with control characters (NUL included: Mosquitto refuses such
/// certificate identities). Validity as for [`issue_server`].
pub fn issue_client(ca: &Issued, username: &str, validity: Duration, now: Timestamp) -> Result<Issued> {
    check_text("username", username)?;
    issue_leaf(ca, username, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth, validity, now)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{inspect, key_matches, signed_by};
    use super::*;

    #[test]
    fn ca_has_ca_constraints_unique_subject_and_backdated_start() {
        let a = new_ca("plant-a", DAY * 365, t0()).unwrap();
        let b = new_ca("plant-a", DAY * 365, t0()).unwrap();
        let (ia, ib) = (inspect(&a.cert_pem).unwrap(), inspect(&b.cert_pem).unwrap());
        assert!(ia.is_ca && ia.key_is_strong);
        assert_eq!(ia.subject_dn, ia.issuer_dn, "self-signed");
        assert!(ia.subject_cn.as_deref().unwrap().starts_with("plant-a 20260301T000000Z"));
        assert_ne!(ia.subject_dn, ib.subject_dn, "two CA generations never share a subject DN");
        assert_eq!(ia.not_before, t0() - CLOCK_SKEW);
        assert_eq!(ia.not_after, t0() + DAY * 365);
        assert_eq!(ia.serial_hex.len(), 32, "16-byte serial");
        assert!(ia.subject_key_id.is_some());
        assert!(key_matches(&a.cert_pem, &a.key_pem));
        assert!(a.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
    }

    #[test]
    fn long_ca_common_name_is_cut_to_64_characters() {
        let ca = new_ca(&"ü".repeat(80), DAY, t0()).unwrap();
        let cn = inspect(&ca.cert_pem).unwrap().subject_cn.unwrap();
        assert!(cn.len() <= 64, "{} bytes", cn.len());
        assert!(cn.ends_with(" 20260301T000000Z"));
    }

    #[test]
    fn server_cert_has_names_eku_and_chains_to_ca() {
        let ca = new_ca("plant-a", DAY * 365, t0()).unwrap();
        let names = ServerNames {
            dns: vec!["Plant-A.ns.svc.".into(), "plant-a.ns.svc".into(), "plant-a-0.plant-a.ns.svc".into()],
            ips: vec!["10.0.0.7".parse().unwrap(), "::1".parse().unwrap()],
        };
        let leaf = issue_server(&ca, &names, DAY * 90, t0()).unwrap();
        let info = inspect(&leaf.cert_pem).unwrap();
        assert_eq!(info.subject_cn.as_deref(), Some("plant-a.ns.svc"));
        assert_eq!(info.dns_names, vec!["plant-a.ns.svc", "plant-a-0.plant-a.ns.svc"]);
        assert_eq!(info.ip_addresses, names.ips);
        assert!(info.server_auth && !info.client_auth && !info.is_ca && info.key_is_strong);
        assert_eq!(info.not_after, t0() + DAY * 90);
        assert_eq!(info.not_before, t0() - CLOCK_SKEW);
        assert_eq!(info.authority_key_id, inspect(&ca.cert_pem).unwrap().subject_key_id);
        assert!(signed_by(&leaf.cert_pem, &ca.cert_pem));
        assert!(key_matches(&leaf.cert_pem, &leaf.key_pem));
    }

    #[test]
    fn client_cert_cn_is_username_and_rejects_control_characters() {
        let ca = new_ca("plant-a", DAY * 365, t0()).unwrap();
        let leaf = issue_client(&ca, "sensor-17", DAY * 90, t0()).unwrap();
        let info = inspect(&leaf.cert_pem).unwrap();
        assert_eq!(info.subject_cn.as_deref(), Some("sensor-17"));
        assert!(info.client_auth && !info.server_auth);
        assert!(info.dns_names.is_empty());
        for bad in ["", " ", "a\0b", "a\nb", "tab\there", "del\u{7f}"] {
            assert!(matches!(issue_client(&ca, bad, DAY, t0()), Err(PkiError::InvalidName(_))), "{bad:?}");
        }
    }

    #[test]
    fn leaf_not_after_is_capped_at_ca_not_after() {
        let ca = new_ca("plant-a", DAY * 10, t0()).unwrap();
        let leaf = issue_client(&ca, "u", DAY * 90, t0() + DAY * 5).unwrap();
        assert_eq!(inspect(&leaf.cert_pem).unwrap().not_after, t0() + DAY * 10);
    }

    #[test]
    fn expired_or_invalid_signer_is_refused() {
        let ca = new_ca("plant-a", DAY, t0()).unwrap();
        assert!(matches!(issue_client(&ca, "u", DAY, t0() + DAY), Err(PkiError::SignerExpired { .. })));
        let leaf = issue_client(&ca, "u", DAY, t0()).unwrap();
        assert!(matches!(issue_client(&leaf, "u", DAY, t0()), Err(PkiError::NotCa(_))), "a leaf cannot sign");
        let other = new_ca("other", DAY, t0()).unwrap();
        let mixed = Issued { cert_pem: ca.cert_pem.clone(), key_pem: other.key_pem.clone() };
        assert!(matches!(issue_client(&mixed, "u", DAY, t0()), Err(PkiError::KeyMismatch("CA"))));
        let garbage = Issued { cert_pem: ca.cert_pem.clone(), key_pem: "not a key".into() };
        let err = issue_client(&garbage, "u", DAY, t0()).unwrap_err();
        assert!(matches!(err, PkiError::InvalidKey("CA")));
        assert!(!err.to_string().contains("not a key"), "errors never echo key input");
        assert!(matches!(issue_client(&ca, "u", Duration::ZERO, t0()), Err(PkiError::InvalidTime(_))));
    }

    #[test]
    fn server_names_are_validated() {
        let ca = new_ca("plant-a", DAY, t0()).unwrap();
        let bad = |dns: &str| issue_server(&ca, &ServerNames { dns: vec![dns.into()], ips: vec![] }, DAY, t0());
        for name in ["-a.b", "a..b", "a b", "ü.de", "*.com", &"a".repeat(64)] {
            assert!(matches!(bad(name), Err(PkiError::InvalidName(_))), "{name:?}");
        }
        assert!(bad("*.plant-a.svc").is_ok());
        assert!(issue_server(&ca, &ServerNames::default(), DAY, t0()).is_err());
        let ip_only = ServerNames { dns: vec![], ips: vec!["192.0.2.1".parse().unwrap()] };
        let leaf = issue_server(&ca, &ip_only, DAY, t0()).unwrap();
        assert_eq!(inspect(&leaf.cert_pem).unwrap().subject_cn.as_deref(), Some("192.0.2.1"));
    }

    #[test]
    fn signed_by_checks_the_signature_not_just_the_issuer_name() {
        let ca = new_ca("plant-a", DAY, t0()).unwrap();
        // An impostor with the CA's exact subject DN but another key.
        let impostor = Issuer::from_ca_cert_pem(&ca.cert_pem, new_key().unwrap()).unwrap();
        let mut params = CertificateParams::new(vec!["plant-a.ns.svc".to_string()]).unwrap();
        params.not_before = to_offset(t0()).unwrap();
        params.not_after = to_offset(t0() + DAY).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = new_key().unwrap();
        let forged =
            Issued { cert_pem: params.signed_by(&key, &impostor).unwrap().pem(), key_pem: key.serialize_pem() };
        assert_eq!(inspect(&forged.cert_pem).unwrap().issuer_dn, inspect(&ca.cert_pem).unwrap().subject_dn);
        assert!(!signed_by(&forged.cert_pem, &ca.cert_pem));
        let names = ServerNames { dns: vec!["plant-a.ns.svc".into()], ips: vec![] };
        assert_eq!(
            super::super::leaf_renewal(Some(&forged), super::super::Want::Server(&names), &ca, DAY, HOUR, t0()),
            Some(super::super::RenewReason::IssuerChanged)
        );
        let genuine = issue_server(&ca, &names, DAY, t0()).unwrap();
        assert!(signed_by(&genuine.cert_pem, &ca.cert_pem));
        assert!(!signed_by(&genuine.cert_pem, &genuine.cert_pem), "a leaf is not a CA");
        assert!(!signed_by("garbage", &ca.cert_pem));
    }

    #[test]
    fn serials_are_random_and_positive() {
        let ca = new_ca("plant-a", DAY, t0()).unwrap();
        let serials: std::collections::HashSet<String> = (0..50)
            .map(|_| inspect(&issue_client(&ca, "u", DAY, t0()).unwrap().cert_pem).unwrap().serial_hex)
            .collect();
        assert_eq!(serials.len(), 50);
        for s in &serials {
            assert_eq!(s.len(), 32);
            assert!(matches!(&s[..1], "4" | "5" | "6" | "7"), "top bit clear, no leading zero byte: {s}");
        }
    }

    #[test]
    fn debug_output_hides_the_key() {
        let ca = new_ca("plant-a", DAY, t0()).unwrap();
        let text = format!("{ca:?}");
        let body: String = ca.key_pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!text.contains(&body[..40]));
        assert!(text.contains("[redacted]"));
    }
}
