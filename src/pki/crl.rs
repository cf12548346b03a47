//! Revocation: signing and reading CRLs, and the revocation ledger the controller keeps.
//!
//! With `crlfile` set, Mosquitto (OpenSSL) needs a CRL for every CA in the bundle and rejects every
//! client once a CRL is past its `nextUpdate`: re-sign well before that ([`crl_needs_resign`]).

use std::cmp::Ordering;
use std::time::Duration;

use jiff::Timestamp;
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use x509_parser::certificate::X509Certificate;
use x509_parser::parse_x509_crl;
use x509_parser::revocation_list::CertificateRevocationList;

use super::inspect::{inspect, with_cert};
use super::issue::load_signer;
use super::{
    CLOCK_SKEW, Issued, PkiError, Result, add, first_pem_block, from_asn1, parse_serial_hex, pem_blocks, serial_hex,
    sub_saturating, to_offset, trunc,
};

/// PEM label of CRLs.
const CRL_LABEL: &str = "X509 CRL";

/// One revoked certificate in the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RevokedCert {
    /// Serial of the revoked certificate, canonical lower-case hex (see [`super::CertInfo::serial_hex`]).
    pub serial_hex: String,
    /// Issuer DN of the revoked certificate: only the CRL of that CA lists it.
    pub issuer_dn: String,
    /// When it was revoked.
    pub revoked_at: Timestamp,
    /// `notAfter` of the revoked certificate, so the entry can be pruned once it has expired.
    pub not_after: Timestamp,
}

impl RevokedCert {
    /// The ledger entry that revokes `cert_pem` as of `revoked_at`.
    pub fn from_cert(cert_pem: &str, revoked_at: Timestamp) -> Result<RevokedCert> {
        let info = inspect(cert_pem)?;
        Ok(RevokedCert {
            serial_hex: info.serial_hex,
            issuer_dn: info.issuer_dn,
            revoked_at: trunc(revoked_at),
            not_after: info.not_after,
        })
    }
}

/// What a CRL says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlInfo {
    /// Issuer DN (same format as [`super::CertInfo::subject_dn`]).
    pub issuer_dn: String,
    /// thisUpdate.
    pub this_update: Timestamp,
    /// nextUpdate (always set by moat; OpenSSL rejects clients once it has passed).
    pub next_update: Option<Timestamp>,
    /// cRLNumber, if present and at most 64 bits.
    pub number: Option<u64>,
    /// Serials of the revoked certificates, canonical hex, sorted.
    pub revoked_serials: Vec<String>,
}

/// The entries of `revoked` issued by `issuer_dn`, canonical, sorted by serial, one per serial
/// (the earliest revocation wins).
fn entries_for<'a>(revoked: &'a [RevokedCert], issuer_dn: &str) -> Result<Vec<(String, Vec<u8>, &'a RevokedCert)>> {
    let mut out: Vec<(String, Vec<u8>, &RevokedCert)> = Vec::new();
    for entry in revoked.iter().filter(|r| r.issuer_dn == issuer_dn) {
        let (hex, bytes) = parse_serial_hex(&entry.serial_hex)
            .ok_or_else(|| PkiError::InvalidName(format!("revoked serial {:?} is not hex", entry.serial_hex)))?;
        out.push((hex, bytes, entry));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0).then(a.2.revoked_at.cmp(&b.2.revoked_at)));
    out.dedup_by(|later, first| later.0 == first.0);
    Ok(out)
}

/// Signs a CRL for `ca` (PEM `X509 CRL`) listing the entries of `revoked` whose `issuer_dn` is this CA's
/// subject; other entries are ignored, so one ledger serves every CA of a rollover.
///
/// `thisUpdate` is `now − CLOCK_SKEW` (a pod whose clock lags must not see a "not yet valid" CRL);
/// `nextUpdate` must be after `now`. The authorityKeyIdentifier is the CA's subjectKeyIdentifier, and
/// entries are sorted by serial, so the same inputs give the same CRL content.
pub fn sign_crl(
    ca: &Issued,
    revoked: &[RevokedCert],
    crl_number: u64,
    now: Timestamp,
    next_update: Timestamp,
) -> Result<String> {
    let signer = load_signer(ca)?;
    let now = trunc(now);
    let next_update = trunc(next_update);
    if next_update <= now {
        return Err(PkiError::InvalidTime(format!("CRL nextUpdate {next_update} is not after now {now}")));
    }
    let revoked_certs = entries_for(revoked, &signer.info.subject_dn)?
        .into_iter()
        .map(|(_, bytes, entry)| {
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: to_offset(entry.revoked_at)?,
                reason_code: None,
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let params = CertificateRevocationListParams {
        this_update: to_offset(sub_saturating(now, CLOCK_SKEW))?,
        next_update: to_offset(next_update)?,
        crl_number: SerialNumber::from_slice(&crl_number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: match signer.info.subject_key_id {
            Some(ski) => KeyIdMethod::PreSpecified(ski),
            None => KeyIdMethod::Sha256,
        },
    };
    Ok(params.signed_by(&signer.issuer)?.pem()?)
}

/// The serials a CRL lists, canonical and sorted.
fn revoked_serials(crl: &CertificateRevocationList<'_>) -> Vec<String> {
    let mut serials: Vec<String> = crl.iter_revoked_certificates().map(|r| serial_hex(r.raw_serial())).collect();
    serials.sort();
    serials
}

fn crl_info(crl: &CertificateRevocationList<'_>) -> Result<CrlInfo> {
    let revoked_serials = revoked_serials(crl);
    let number = crl.crl_number().and_then(|n| {
        let bytes = n.to_bytes_be();
        (bytes.len() <= 8).then(|| bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    });
    Ok(CrlInfo {
        issuer_dn: crl.issuer().to_string(),
        this_update: from_asn1(crl.last_update())?,
        next_update: crl.next_update().map(from_asn1).transpose()?,
        number,
        revoked_serials,
    })
}

/// Parses one DER CRL and hands it to `f`.
pub(super) fn with_crl<T>(der: &[u8], f: impl FnOnce(&CertificateRevocationList<'_>) -> T) -> Result<T> {
    let (rest, crl) = parse_x509_crl(der).map_err(|e| PkiError::Parse { what: "CRL", reason: e.to_string() })?;
    if !rest.is_empty() {
        return Err(PkiError::Parse { what: "CRL", reason: "trailing data after the CRL".into() });
    }
    Ok(f(&crl))
}

/// Whether the DER CRL `der` is signed by `ca` (issuer name and signature) and lists exactly the
/// entries of `revoked` that `ca` issued.
pub(super) fn crl_is_current_for(der: &[u8], ca: &Issued, revoked: &[RevokedCert]) -> bool {
    let Ok(ca_der) = first_pem_block(&ca.cert_pem, "CERTIFICATE") else {
        return false;
    };
    let check = |cert: &X509Certificate<'_>, crl: &CertificateRevocationList<'_>| {
        if crl.issuer().as_raw() != cert.subject().as_raw() || crl.verify_signature(cert.public_key()).is_err() {
            return false;
        }
        let Ok(want) = entries_for(revoked, &cert.subject().to_string()) else {
            return false;
        };
        revoked_serials(crl).iter().eq(want.iter().map(|(hex, _, _)| hex))
    };
    with_cert(&ca_der, |cert| with_crl(der, |crl| check(cert, crl)).unwrap_or(false)).unwrap_or(false)
}

/// Parses the first CRL of `pem`.
pub fn parse_crl(pem: &str) -> Result<CrlInfo> {
    parse_crls(pem)?.into_iter().next().ok_or(PkiError::MissingPem(CRL_LABEL))
}

/// Parses every CRL of a concatenated CRL file (as written by [`super::CaSet::crls`]).
pub fn parse_crls(pem: &str) -> Result<Vec<CrlInfo>> {
    crl_ders(pem)?.iter().map(|der| with_crl(der, crl_info)?).collect()
}

/// The DER of every CRL block in `pem`.
pub(super) fn crl_ders(pem: &str) -> Result<Vec<Vec<u8>>> {
    pem_blocks(pem, CRL_LABEL)
}

/// When the CRL file `crl_pem` must be re-signed: the earliest `nextUpdate − margin` among its CRLs.
/// `None` if it holds no parseable CRL with a `nextUpdate` (then it must be re-signed now).
pub fn crl_resign_time(crl_pem: &str, margin: Duration) -> Option<Timestamp> {
    let crls = parse_crls(crl_pem).ok()?;
    if crls.is_empty() {
        return None;
    }
    let mut earliest: Option<Timestamp> = None;
    for crl in crls {
        let at = sub_saturating(crl.next_update?, margin);
        earliest = Some(earliest.map_or(at, |e| e.min(at)));
    }
    earliest
}

/// Whether the CRL file must be re-signed now: it is empty or unparseable, a CRL lacks `nextUpdate`, or
/// `now` has reached some CRL's `nextUpdate − margin`. An expired CRL makes OpenSSL reject every client.
pub fn crl_needs_resign(crl_pem: &str, now: Timestamp, margin: Duration) -> bool {
    crl_resign_time(crl_pem, margin).is_none_or(|at| trunc(now) >= at)
}

/// The cRLNumber to use for the next CRL after `existing` (the highest number found + 1, or 1).
pub fn next_crl_number(existing: Option<&str>) -> u64 {
    existing
        .and_then(|pem| parse_crls(pem).ok())
        .and_then(|crls| crls.iter().filter_map(|c| c.number).max())
        .map_or(1, |n| n.saturating_add(1))
}

/// Drops the entries whose certificate has expired (with [`CLOCK_SKEW`] grace): an expired certificate
/// is refused anyway, so its CRL entry is no longer needed. Order is kept.
pub fn prune_revoked(list: &[RevokedCert], now: Timestamp) -> Vec<RevokedCert> {
    let now = trunc(now);
    list.iter().filter(|r| add(r.not_after, CLOCK_SKEW, "grace").map_or(true, |until| until >= now)).cloned().collect()
}

const LEDGER_HEADER: &str = "# moat revoked certificates v1: serial<TAB>revokedAt<TAB>notAfter<TAB>issuerDN";

/// Escapes `\\`, tab, newline and carriage return, for one field of a tab-separated line.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// Reverses [`escape`] (None for an unknown escape).
pub(crate) fn unescape(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            '\\' => '\\',
            't' => '\t',
            'n' => '\n',
            'r' => '\r',
            _ => return None,
        });
    }
    Some(out)
}

fn ledger_order(a: &RevokedCert, b: &RevokedCert) -> Ordering {
    (&a.issuer_dn, &a.serial_hex, a.revoked_at, a.not_after).cmp(&(
        &b.issuer_dn,
        &b.serial_hex,
        b.revoked_at,
        b.not_after,
    ))
}

/// Serializes the revocation ledger as stable text (for a Secret or ConfigMap): a header line, then one
/// line per entry `serial<TAB>revokedAt<TAB>notAfter<TAB>issuerDN` (RFC 3339 UTC times; `\`, tab, CR and
/// LF in the DN escaped as `\\ \t \r \n`), sorted by issuer then serial, exact duplicates removed. The
/// same ledger always encodes to the same text, so an unchanged ledger never causes a write.
pub fn encode_revoked(list: &[RevokedCert]) -> String {
    let mut sorted: Vec<&RevokedCert> = list.iter().collect();
    sorted.sort_by(|a, b| ledger_order(a, b));
    sorted.dedup();
    let mut out = String::with_capacity(LEDGER_HEADER.len() + 1 + sorted.len() * 128);
    out.push_str(LEDGER_HEADER);
    out.push('\n');
    for r in sorted {
        out.push_str(&format!("{}\t{}\t{}\t{}\n", r.serial_hex, r.revoked_at, r.not_after, escape(&r.issuer_dn)));
    }
    out
}

/// Parses text written by [`encode_revoked`]. Blank lines and lines starting with `#` are skipped;
/// serials are normalized to canonical hex.
pub fn decode_revoked(text: &str) -> Result<Vec<RevokedCert>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason: &str| PkiError::Ledger { line: i + 1, reason: reason.into() };
        let fields: Vec<&str> = line.splitn(4, '\t').collect();
        let [serial, revoked_at, not_after, issuer] = fields[..] else {
            return Err(err("expected 4 tab-separated fields"));
        };
        let (serial_hex, _) = parse_serial_hex(serial).ok_or_else(|| err("serial is not hex"))?;
        let time = |text: &str, what: &str| {
            text.parse::<Timestamp>().map_err(|_| err(&format!("{what} is not an RFC 3339 timestamp")))
        };
        out.push(RevokedCert {
            serial_hex,
            revoked_at: time(revoked_at, "revokedAt")?,
            not_after: time(not_after, "notAfter")?,
            issuer_dn: unescape(issuer).ok_or_else(|| err("bad escape in issuer DN"))?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{issue_client, new_ca};
    use super::*;

    fn revoked(ca: &Issued, user: &str, at: Timestamp) -> (Issued, RevokedCert) {
        let leaf = issue_client(ca, user, DAY * 30, t0()).unwrap();
        let entry = RevokedCert::from_cert(&leaf.cert_pem, at).unwrap();
        (leaf, entry)
    }

    #[test]
    fn crl_lists_only_this_cas_revoked_serials() {
        let ca = new_ca("plant-a", DAY * 365, t0()).unwrap();
        let other = new_ca("plant-b", DAY * 365, t0()).unwrap();
        let (_, mine) = revoked(&ca, "alice", t0() + HOUR);
        let (_, theirs) = revoked(&other, "bob", t0() + HOUR);
        let pem = sign_crl(&ca, &[mine.clone(), theirs], 7, t0() + HOUR, t0() + DAY * 7).unwrap();
        assert!(pem.starts_with("-----BEGIN X509 CRL-----"));
        let info = parse_crl(&pem).unwrap();
        assert_eq!(info.issuer_dn, inspect(&ca.cert_pem).unwrap().subject_dn);
        assert_eq!(info.revoked_serials, vec![mine.serial_hex]);
        assert_eq!(info.number, Some(7));
        assert_eq!(info.this_update, t0() + HOUR - CLOCK_SKEW);
        assert_eq!(info.next_update, Some(t0() + DAY * 7));
    }

    #[test]
    fn crl_signature_verifies_with_the_ca_key() {
        let ca = new_ca("plant-a", DAY * 365, t0()).unwrap();
        let other = new_ca("plant-a", DAY * 365, t0()).unwrap();
        let pem = sign_crl(&ca, &[], 1, t0(), t0() + DAY).unwrap();
        let der = crl_ders(&pem).unwrap().remove(0);
        let ca_der = super::super::first_pem_block(&ca.cert_pem, "CERTIFICATE").unwrap();
        let other_der = super::super::first_pem_block(&other.cert_pem, "CERTIFICATE").unwrap();
        let verify = |ca: &[u8]| {
            super::super::inspect::with_cert(ca, |c| {
                with_crl(&der, |crl| crl.verify_signature(c.public_key()).is_ok()).unwrap()
            })
            .unwrap()
        };
        assert!(verify(&ca_der));
        assert!(!verify(&other_der));
    }

    #[test]
    fn crl_times_are_checked() {
        let ca = new_ca("plant-a", DAY, t0()).unwrap();
        assert!(matches!(sign_crl(&ca, &[], 1, t0(), t0()), Err(PkiError::InvalidTime(_))));
        assert!(sign_crl(&ca, &[], 0, t0(), t0() + HOUR).is_ok(), "crl number 0 encodes");
    }

    #[test]
    fn resign_needed_inside_margin_or_when_expired_or_garbage() {
        let ca = new_ca("plant-a", DAY * 365, t0()).unwrap();
        let pem = sign_crl(&ca, &[], 1, t0(), t0() + DAY * 7).unwrap();
        let margin = DAY * 2;
        assert!(!crl_needs_resign(&pem, t0(), margin));
        assert!(!crl_needs_resign(&pem, t0() + DAY * 5 - Duration::from_secs(1), margin));
        assert!(crl_needs_resign(&pem, t0() + DAY * 5, margin), "inside the margin");
        assert!(crl_needs_resign(&pem, t0() + DAY * 8, margin), "expired");
        assert!(crl_needs_resign("", t0(), margin));
        assert!(crl_needs_resign("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", t0(), margin));
        assert_eq!(crl_resign_time(&pem, margin), Some(t0() + DAY * 5));
        let two = format!("{pem}{}", sign_crl(&ca, &[], 1, t0(), t0() + DAY * 3).unwrap());
        assert_eq!(crl_resign_time(&two, margin), Some(t0() + DAY), "earliest CRL of the file counts");
    }

    #[test]
    fn next_crl_number_increments_the_highest() {
        let ca = new_ca("plant-a", DAY * 365, t0()).unwrap();
        assert_eq!(next_crl_number(None), 1);
        assert_eq!(next_crl_number(Some("garbage")), 1);
        let pem = format!(
            "{}{}",
            sign_crl(&ca, &[], 41, t0(), t0() + DAY).unwrap(),
            sign_crl(&ca, &[], 3, t0(), t0() + DAY).unwrap()
        );
        assert_eq!(next_crl_number(Some(&pem)), 42);
        assert_eq!(parse_crls(&pem).unwrap().len(), 2);
    }

    #[test]
    fn ledger_round_trips_and_is_stable() {
        let ca = new_ca("plant-a", DAY * 365, t0()).unwrap();
        let (_, a) = revoked(&ca, "alice", t0() + HOUR);
        let (_, b) = revoked(&ca, "bob", t0() + HOUR * 2);
        let odd = RevokedCert {
            serial_hex: "0a".into(),
            issuer_dn: "CN=tab\there, O=back\\slash\nnewline".into(),
            revoked_at: t0(),
            not_after: t0() + DAY,
        };
        let list = vec![b.clone(), odd.clone(), a.clone(), a.clone()];
        let text = encode_revoked(&list);
        assert_eq!(text.lines().count(), 4, "header + 3 distinct entries:\n{text}");
        let back = decode_revoked(&text).unwrap();
        let mut want = vec![a, b, odd];
        want.sort_by(ledger_order);
        assert_eq!(back, want);
        assert_eq!(encode_revoked(&back), text, "encoding is canonical");
        let mut reversed = list.clone();
        reversed.reverse();
        assert_eq!(encode_revoked(&reversed), text, "input order does not matter");
        assert_eq!(decode_revoked("").unwrap(), vec![]);
    }

    #[test]
    fn ledger_rejects_malformed_lines() {
        let ok = "0a\t2026-03-01T00:00:00Z\t2026-04-01T00:00:00Z\tCN=x";
        assert_eq!(decode_revoked(ok).unwrap()[0].serial_hex, "0a");
        for (bad, line) in [
            ("0a\t2026-03-01T00:00:00Z\tCN=x", 1),
            ("\n\nzz\t2026-03-01T00:00:00Z\t2026-04-01T00:00:00Z\tCN=x", 3),
            ("0a\tyesterday\t2026-04-01T00:00:00Z\tCN=x", 1),
            ("0a\t2026-03-01T00:00:00Z\t2026-04-01T00:00:00Z\tCN=\\x", 1),
        ] {
            match decode_revoked(bad) {
                Err(PkiError::Ledger { line: l, .. }) => assert_eq!(l, line, "{bad:?}"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn prune_drops_only_expired_certificates() {
        let keep =
            RevokedCert { serial_hex: "01".into(), issuer_dn: "CN=a".into(), revoked_at: t0(), not_after: t0() + DAY };
        let drop = RevokedCert { not_after: t0() - DAY, serial_hex: "02".into(), ..keep.clone() };
        let grace = RevokedCert { not_after: t0() - MIN, serial_hex: "03".into(), ..keep.clone() };
        let pruned = prune_revoked(&[keep.clone(), drop, grace.clone()], t0());
        assert_eq!(pruned, vec![keep, grace], "entries within the clock-skew grace stay");
    }

    #[test]
    fn serial_forms_are_normalized() {
        let ca = new_ca("plant-a", DAY * 365, t0()).unwrap();
        let (_, mut entry) = revoked(&ca, "alice", t0());
        let canonical = entry.serial_hex.clone();
        entry.serial_hex = format!("00:{}", canonical.to_uppercase());
        let pem = sign_crl(&ca, &[entry], 1, t0(), t0() + DAY).unwrap();
        assert_eq!(parse_crl(&pem).unwrap().revoked_serials, vec![canonical]);
    }
}
