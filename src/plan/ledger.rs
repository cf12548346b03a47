//! The certificate ledger: every client certificate moat issued for a broker, until it expires.
//!
//! moat revokes every certificate it issued and no longer stands behind, so it must know every
//! certificate it issued, independently of the user Secrets it put them in (a Secret can be
//! deleted or edited, a user deleted without its finalizer, a username lost to a conflict). The
//! broker plan records a certificate here *before* the certificate reaches a Secret, and decides
//! from here which serials the CRL lists.
//!
//! A record only moves forward: `Current` → `Retiring` (superseded by a renewal; revoked after a
//! short overlap so clients can pick up the new certificate) → `Revoked`; it is dropped once the
//! certificate has expired (or its CA is no longer trusted). Two views of the ledger (e.g. the
//! cache and what this operator last wrote) are merged by taking each record's furthest state,
//! so a stale read can never un-revoke a certificate.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use crate::pki::crl::{escape, unescape};
use crate::pki::{CLOCK_SKEW, RevokedCert};

/// Where a record stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertState {
    /// The certificate the owner holds now (one per owner).
    Current,
    /// Superseded by a renewal: revoked at `revoke_at`.
    Retiring {
        /// When the overlap ends.
        revoke_at: Timestamp,
    },
    /// In the CRL.
    Revoked {
        /// When it was revoked.
        revoked_at: Timestamp,
        /// The owner no longer holds the certificate's username (deleted, lost a conflict): a live
        /// session of this certificate must be cut off, not just refused at the next handshake.
        identity_lost: bool,
    },
}

impl CertState {
    fn rank(&self) -> u8 {
        match self {
            CertState::Current => 0,
            CertState::Retiring { .. } => 1,
            CertState::Revoked { .. } => 2,
        }
    }
}

/// One certificate moat issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertRecord {
    /// Serial, canonical lower-case hex.
    pub serial_hex: String,
    /// Issuer DN (the CA that signed it).
    pub issuer_dn: String,
    /// notBefore.
    pub not_before: Timestamp,
    /// notAfter.
    pub not_after: Timestamp,
    /// The MQTT username (certificate CN).
    pub username: String,
    /// The MqttUser it was issued to.
    pub owner: String,
    /// That MqttUser's uid (a new object of the same name is another owner).
    pub owner_uid: String,
    /// [`fingerprint`] of the certificate and key as issued ("-" for imported records).
    pub fingerprint: String,
    /// Its state.
    pub state: CertState,
}

impl CertRecord {
    /// The CRL entry of a revoked record.
    pub fn revoked_cert(&self) -> Option<RevokedCert> {
        match self.state {
            CertState::Revoked { revoked_at, .. } => Some(RevokedCert {
                serial_hex: self.serial_hex.clone(),
                issuer_dn: self.issuer_dn.clone(),
                revoked_at,
                not_after: self.not_after,
            }),
            _ => None,
        }
    }

    fn key(&self) -> (String, String) {
        (self.issuer_dn.clone(), self.serial_hex.clone())
    }

    /// The sharding key.
    pub fn block_key(&self) -> String {
        format!("{}/{}", self.serial_hex, crate::hex(&sha2_8(self.issuer_dn.as_bytes())))
    }
}

fn sha2_8(bytes: &[u8]) -> [u8; 8] {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(bytes);
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

/// A short fingerprint of a certificate and its key as moat put them into a Secret: equal
/// fingerprints mean the Secret still holds exactly what moat issued (no parsing needed).
pub fn fingerprint(cert_pem: &str, key_pem: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(cert_pem.as_bytes());
    h.update([0]);
    h.update(key_pem.as_bytes());
    crate::hex(&h.finalize()[..12])
}

/// Every certificate record of one broker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    records: BTreeMap<(String, String), CertRecord>,
}

impl Ledger {
    /// A ledger of these records (the furthest state wins for duplicates).
    pub fn from_records(records: impl IntoIterator<Item = CertRecord>) -> Self {
        let mut l = Ledger::default();
        for r in records {
            l.upsert(r);
        }
        l
    }

    /// Adds a record, or moves an existing one forward (never back).
    pub fn upsert(&mut self, r: CertRecord) {
        match self.records.get(&r.key()) {
            Some(old) if old.state.rank() > r.state.rank() => {}
            Some(old) if old.state.rank() == r.state.rank() && old.state != CertState::Current => {}
            _ => {
                self.records.insert(r.key(), r);
            }
        }
    }

    /// Both views merged: every record, each in its furthest state.
    pub fn merge(&self, other: &Ledger) -> Ledger {
        let mut out = self.clone();
        for r in other.records.values() {
            out.upsert(r.clone());
        }
        out
    }

    /// All records.
    pub fn records(&self) -> impl Iterator<Item = &CertRecord> {
        self.records.values()
    }

    /// The current record of an owner (an MqttUser name and uid: a new object of the same name
    /// is another owner); with several (a lost write), the latest issued.
    pub fn current_of(&self, owner: &str, owner_uid: &str) -> Option<&CertRecord> {
        self.records
            .values()
            .filter(|r| r.owner == owner && r.owner_uid == owner_uid && r.state == CertState::Current)
            .max_by_key(|r| r.not_before)
    }

    /// Moves a record to `state` (forward only).
    pub fn set_state(&mut self, serial_hex: &str, issuer_dn: &str, state: CertState) {
        if let Some(r) = self.records.get(&(issuer_dn.to_string(), serial_hex.to_string())) {
            let mut r = r.clone();
            r.state = state;
            self.upsert(r);
        }
    }

    /// Drops records whose certificate expired (with [`CLOCK_SKEW`] grace) or whose issuer is
    /// no longer trusted (its certificates are refused whatever the CRL says).
    pub fn prune(&mut self, trusted_issuers: &[String], now: Timestamp) {
        let skew = jiff::SignedDuration::try_from(CLOCK_SKEW).unwrap_or_default();
        self.records.retain(|_, r| {
            trusted_issuers.contains(&r.issuer_dn) && r.not_after.checked_add(skew).map_or(true, |t| t >= now)
        });
    }

    /// The CRL entries.
    pub fn revoked(&self) -> Vec<RevokedCert> {
        self.records.values().filter_map(CertRecord::revoked_cert).collect()
    }

    /// Records revoked because their owner lost the identity, by username (latest revocation).
    pub fn lost_identities(&self) -> BTreeMap<String, (Timestamp, Timestamp, String)> {
        let mut out: BTreeMap<String, (Timestamp, Timestamp, String)> = BTreeMap::new();
        for r in self.records.values() {
            if let CertState::Revoked { revoked_at, identity_lost: true } = r.state {
                let e = out.entry(r.username.clone()).or_insert((revoked_at, r.not_after, r.owner_uid.clone()));
                if revoked_at > e.0 {
                    *e = (revoked_at, e.1.max(r.not_after), r.owner_uid.clone());
                } else {
                    e.1 = e.1.max(r.not_after);
                }
            }
        }
        out
    }

    /// The text blocks to store, keyed for [`crate::render::shard::split`].
    pub fn blocks(&self) -> Vec<(String, String)> {
        self.records.values().map(|r| (r.block_key(), encode(r))).collect()
    }

    /// Reads the text of any number of stored parts (in any order, from any generation).
    /// Unreadable lines are skipped and counted.
    pub fn decode(texts: &[&str]) -> (Ledger, usize) {
        let mut bad = 0;
        let mut l = Ledger::default();
        for t in texts {
            for line in t.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
                match decode(line) {
                    Some(r) => l.upsert(r),
                    None => bad += 1,
                }
            }
        }
        (l, bad)
    }
}

/// `v1 state serial issuer notBefore notAfter username owner ownerUid fingerprint stateTime lost`,
/// tab-separated, escaped.
fn encode(r: &CertRecord) -> String {
    let (state, time, lost) = match &r.state {
        CertState::Current => ("current", String::from("-"), "-"),
        CertState::Retiring { revoke_at } => ("retiring", revoke_at.to_string(), "-"),
        CertState::Revoked { revoked_at, identity_lost } => {
            ("revoked", revoked_at.to_string(), if *identity_lost { "lost" } else { "kept" })
        }
    };
    let fields = [
        "v1",
        state,
        &r.serial_hex,
        &escape(&r.issuer_dn),
        &r.not_before.to_string(),
        &r.not_after.to_string(),
        &escape(&r.username),
        &escape(&r.owner),
        &escape(&r.owner_uid),
        &r.fingerprint,
        &time,
        lost,
    ];
    format!("{}\n", fields.join("\t"))
}

fn decode(line: &str) -> Option<CertRecord> {
    let f: Vec<&str> = line.split('\t').collect();
    let [v, state, serial, issuer, nb, na, user, owner, uid, fp, time, lost] = f[..] else { return None };
    if v != "v1" || serial.is_empty() || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let state = match state {
        "current" => CertState::Current,
        "retiring" => CertState::Retiring { revoke_at: time.parse().ok()? },
        "revoked" => CertState::Revoked {
            revoked_at: time.parse().ok()?,
            identity_lost: match lost {
                "lost" => true,
                "kept" => false,
                _ => return None,
            },
        },
        _ => return None,
    };
    Some(CertRecord {
        serial_hex: serial.to_ascii_lowercase(),
        issuer_dn: unescape(issuer)?,
        not_before: nb.parse().ok()?,
        not_after: na.parse().ok()?,
        username: unescape(user)?,
        owner: unescape(owner)?,
        owner_uid: unescape(uid)?,
        fingerprint: fp.to_string(),
        state,
    })
}

/// How long a certificate superseded by a renewal stays valid: mounted Secrets reach pods within
/// about a minute and clients need time to reconnect with the new certificate.
pub const RENEWAL_OVERLAP: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn rec(serial: &str, state: CertState) -> CertRecord {
        CertRecord {
            serial_hex: serial.into(),
            issuer_dn: "CN=moat CA\tx".into(),
            not_before: t("2026-01-01T00:00:00Z"),
            not_after: t("2026-04-01T00:00:00Z"),
            username: "alice".into(),
            owner: "alice".into(),
            owner_uid: "uid-1".into(),
            fingerprint: "abc".into(),
            state,
        }
    }

    #[test]
    fn records_round_trip_through_their_text() {
        let l = Ledger::from_records([
            rec("01", CertState::Current),
            rec("02", CertState::Retiring { revoke_at: t("2026-02-01T00:00:00Z") }),
            rec("03", CertState::Revoked { revoked_at: t("2026-02-02T00:00:00Z"), identity_lost: true }),
        ]);
        let text: String = l.blocks().into_iter().map(|(_, b)| b).collect();
        let (back, bad) = Ledger::decode(&[&text, "garbage\n"]);
        assert_eq!((back, bad), (l, 1));
    }

    #[test]
    fn a_stale_view_never_moves_a_record_back() {
        let revoked = CertState::Revoked { revoked_at: t("2026-02-02T00:00:00Z"), identity_lost: false };
        let stale = Ledger::from_records([rec("01", CertState::Current)]);
        let fresh = Ledger::from_records([rec("01", revoked.clone())]);
        assert_eq!(stale.merge(&fresh), fresh);
        assert_eq!(fresh.merge(&stale), fresh);
        assert_eq!(fresh.merge(&stale).revoked().len(), 1);
    }

    #[test]
    fn expired_and_untrusted_records_are_dropped() {
        let mut l = Ledger::from_records([rec("01", CertState::Current)]);
        l.prune(&["CN=moat CA\tx".into()], t("2026-03-01T00:00:00Z"));
        assert_eq!(l.records().count(), 1);
        l.prune(&["CN=other".into()], t("2026-03-01T00:00:00Z"));
        assert_eq!(l.records().count(), 0);
        let mut l = Ledger::from_records([rec("01", CertState::Current)]);
        l.prune(&["CN=moat CA\tx".into()], t("2026-04-02T00:00:00Z"));
        assert_eq!(l.records().count(), 0);
    }
}
