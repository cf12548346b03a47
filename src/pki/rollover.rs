//! CA rollover with trust overlap: a pure state machine over the broker's [`CaSet`].
//!
//! ```text
//!            active in renew window                 now ≥ since + trust delay
//!   Stable ─────────────────────────► Introducing ─────────────────────────► Migrating
//!     ▲        (new CA = pending:        (bundle: active + pending;            (bundle: new active +
//!     │         trusted, not signing)     active still signs)                  retiring; leaves get
//!     │                                                                        IssuerChanged)
//!     └──────────────────────────────────────────────────────────────────────────────┘
//!        retiring expired, or (no live leaf signed by it and now ≥ since + trust delay)
//! ```
//!
//! Mosquitto re-reads the CA bundle on SIGHUP only for listeners with `crlfile` + `require_certificate`,
//! and then needs one CRL per CA in the bundle (`notes/mosquitto.md` §3, §11): [`CaSet::trust_bundle`] and
//! [`CaSet::crls`] always go together. The new CA joins the bundle a full `trust_propagation_delay`
//! before it signs anything, and the old one leaves it only after its leaves are gone *and* the delay has
//! passed again, so every pod and client has the new leaves before the old CA disappears
//! (peers.md pain point 3: trust old **and** new until every leaf is re-issued).
//!
//! If the active CA has already expired (the operator was down), there is nothing to keep trust with:
//! a pending CA is promoted at once, otherwise a fresh CA replaces it ([`CaTransition::EmergencyReplaced`]).
//! Every leaf then fails [`super::leaf_renewal`] with `IssuerChanged`/`Expired` and is re-issued, so the
//! broker heals without manual steps (peers.md pain point 2). Clients must fetch the new `ca.crt`.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use super::crl::{crl_ders, crl_is_current_for, crl_needs_resign, sign_crl};
use super::inspect::CertInfo;
use super::issue::{load_signer, new_ca};
use super::rotation::renewal_time;
use super::{Issued, PkiError, Result, RevokedCert, add, trunc};

/// Secret key of the active CA certificate.
pub const CA_CERT_KEY: &str = "ca.crt";
/// Secret key of the active CA private key.
pub const CA_KEY_KEY: &str = "ca.key";
/// Secret key of the pending (introduced, not yet signing) CA certificate.
pub const PENDING_CA_CERT_KEY: &str = "pending-ca.crt";
/// Secret key of the pending CA private key.
pub const PENDING_CA_KEY_KEY: &str = "pending-ca.key";
/// Secret key of the retiring (still trusted, no longer signing) CA certificate.
pub const RETIRING_CA_CERT_KEY: &str = "retiring-ca.crt";
/// Secret key of the retiring CA private key (kept to sign its CRL).
pub const RETIRING_CA_KEY_KEY: &str = "retiring-ca.key";
/// Secret key of the start of the current phase (RFC 3339).
pub const SINCE_KEY: &str = "since";

/// The CAs of one broker.
///
/// Phases: **Stable** (only `active`), **Introducing** (`pending` set), **Migrating** (`retiring` set);
/// `pending` and `retiring` are never both set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaSet {
    /// The CA that signs every new leaf.
    pub active: Issued,
    /// The next CA: already in the trust bundle, not signing yet.
    pub pending: Option<Issued>,
    /// The previous CA: still in the trust bundle (and its CRL still signed), no longer signing.
    pub retiring: Option<Issued>,
    /// When the current phase began.
    pub since: Timestamp,
}

/// A change [`plan_ca`] made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CaTransition {
    /// There was no CA: a new one was created.
    Created,
    /// The active CA entered its renew window: the next CA was created as `pending` (trusted, not signing).
    Introduced,
    /// The trust propagation delay passed: `pending` became `active`, the old active became `retiring`.
    Activated,
    /// The retiring CA left the trust bundle.
    Retired,
    /// The active CA had expired and a pending CA existed: it was promoted immediately.
    EmergencyActivated,
    /// The active CA had expired and there was no usable successor: a fresh CA replaced it.
    EmergencyReplaced,
}

impl CaTransition {
    /// A stable CamelCase name for Events and conditions.
    pub fn as_str(self) -> &'static str {
        match self {
            CaTransition::Created => "Created",
            CaTransition::Introduced => "Introduced",
            CaTransition::Activated => "Activated",
            CaTransition::Retired => "Retired",
            CaTransition::EmergencyActivated => "EmergencyActivated",
            CaTransition::EmergencyReplaced => "EmergencyReplaced",
        }
    }
}

/// Parsed view of a set, after validation.
struct Infos {
    active: CertInfo,
    pending: Option<CertInfo>,
    retiring: Option<CertInfo>,
}

impl CaSet {
    fn stable(active: Issued, since: Timestamp) -> CaSet {
        CaSet { active, pending: None, retiring: None, since }
    }

    /// Checks the invariants: every CA parses, is a CA, matches its key; pending and retiring not both set.
    fn check(&self) -> Result<Infos> {
        if self.pending.is_some() && self.retiring.is_some() {
            return Err(PkiError::CaSet("pending and retiring CA are both set"));
        }
        let load = |ca: &Issued| load_signer(ca).map(|s| s.info);
        Ok(Infos {
            active: load(&self.active)?,
            pending: self.pending.as_ref().map(load).transpose()?,
            retiring: self.retiring.as_ref().map(load).transpose()?,
        })
    }

    /// "Stable", "Introducing" or "Migrating".
    pub fn phase(&self) -> &'static str {
        match (&self.pending, &self.retiring) {
            (Some(_), _) => "Introducing",
            (None, Some(_)) => "Migrating",
            (None, None) => "Stable",
        }
    }

    /// Every CA that is trusted now, in bundle order: active, pending, retiring.
    pub fn trusted(&self) -> impl Iterator<Item = &Issued> {
        std::iter::once(&self.active).chain(self.pending.as_ref()).chain(self.retiring.as_ref())
    }

    /// The trust bundle (`cafile` of the broker, `ca.crt` of clients): the certificates of every trusted
    /// CA, concatenated PEM, active first.
    pub fn trust_bundle(&self) -> String {
        let mut out = String::new();
        for ca in self.trusted() {
            out.push_str(ca.cert_pem.trim_end());
            out.push('\n');
        }
        out
    }

    /// The CRL file (`crlfile`): one CRL per trusted CA, in bundle order, each listing the entries of
    /// `revoked` it issued (see [`sign_crl`]). Prune the ledger first ([`super::prune_revoked`]).
    pub fn crls(
        &self,
        revoked: &[RevokedCert],
        crl_number: u64,
        now: Timestamp,
        next_update: Timestamp,
    ) -> Result<String> {
        let mut out = String::new();
        for ca in self.trusted() {
            out.push_str(sign_crl(ca, revoked, crl_number, now, next_update)?.trim_end());
            out.push('\n');
        }
        Ok(out)
    }

    /// Whether `crl_pem` must be replaced by a fresh [`CaSet::crls`]: it does not hold exactly one CRL
    /// signed by each trusted CA, a CRL's revoked serials differ from `revoked` (for that CA), or
    /// [`crl_needs_resign`] says it is inside `margin` of its `nextUpdate`. Unchanged inputs answer `false`,
    /// so a steady-state reconcile rewrites nothing.
    pub fn crls_need_resign(&self, crl_pem: &str, revoked: &[RevokedCert], now: Timestamp, margin: Duration) -> bool {
        if crl_needs_resign(crl_pem, now, margin) {
            return true;
        }
        let Ok(ders) = crl_ders(crl_pem) else {
            return true;
        };
        let trusted: Vec<&Issued> = self.trusted().collect();
        ders.len() != trusted.len()
            || !trusted.into_iter().all(|ca| ders.iter().any(|der| crl_is_current_for(der, ca, revoked)))
    }

    /// The Secret data of this set: `ca.crt`, `ca.key`, `pending-ca.{crt,key}` / `retiring-ca.{crt,key}`
    /// when set, and `since` (RFC 3339). Contains private keys: keep it in its own Secret, never mounted
    /// into broker pods.
    pub fn to_secret_data(&self) -> BTreeMap<String, String> {
        let mut data = BTreeMap::new();
        let mut put = |cert: &str, key: &str, ca: &Issued| {
            data.insert(cert.to_string(), ca.cert_pem.clone());
            data.insert(key.to_string(), ca.key_pem.clone());
        };
        put(CA_CERT_KEY, CA_KEY_KEY, &self.active);
        if let Some(p) = &self.pending {
            put(PENDING_CA_CERT_KEY, PENDING_CA_KEY_KEY, p);
        }
        if let Some(r) = &self.retiring {
            put(RETIRING_CA_CERT_KEY, RETIRING_CA_KEY_KEY, r);
        }
        data.insert(SINCE_KEY.to_string(), self.since.to_string());
        data
    }

    /// Reads a set written by [`CaSet::to_secret_data`] and validates it: every certificate parses, is a
    /// CA and matches its key; a certificate never comes without its key; pending and retiring are not
    /// both present; `since` is a timestamp. Unknown keys are ignored.
    pub fn from_secret_data(data: &BTreeMap<String, String>) -> Result<CaSet> {
        let pair = |cert: &str, key: &str| -> Result<Option<Issued>> {
            match (data.get(cert), data.get(key)) {
                (None, None) => Ok(None),
                (Some(c), Some(k)) => Ok(Some(Issued { cert_pem: c.clone(), key_pem: k.clone() })),
                _ => Err(PkiError::SecretData(format!("{cert} and {key} must be present together"))),
            }
        };
        let active = pair(CA_CERT_KEY, CA_KEY_KEY)?
            .ok_or_else(|| PkiError::SecretData(format!("{CA_CERT_KEY} and {CA_KEY_KEY} are missing")))?;
        let since = data
            .get(SINCE_KEY)
            .ok_or_else(|| PkiError::SecretData(format!("{SINCE_KEY} is missing")))?
            .trim()
            .parse::<Timestamp>()
            .map_err(|_| PkiError::SecretData(format!("{SINCE_KEY} is not an RFC 3339 timestamp")))?;
        let set = CaSet {
            active,
            pending: pair(PENDING_CA_CERT_KEY, PENDING_CA_KEY_KEY)?,
            retiring: pair(RETIRING_CA_CERT_KEY, RETIRING_CA_KEY_KEY)?,
            since,
        };
        set.check().map_err(|e| PkiError::SecretData(e.to_string()))?;
        Ok(set)
    }

    /// The next time after `now` at which [`plan_ca`] can change this set by the clock alone, so the
    /// controller can requeue exactly then instead of polling: the active CA's renewal time and expiry,
    /// `since + trust_propagation_delay` while introducing or migrating, and the pending/retiring CA's
    /// expiry. `None` if none lies in the future. (Migrating also advances when the last leaf signed by
    /// the retiring CA is re-issued; that is a change the controller makes and reconciles on.)
    pub fn next_event_time(
        &self,
        ca_renew_before: Duration,
        trust_propagation_delay: Duration,
        now: Timestamp,
    ) -> Result<Option<Timestamp>> {
        let infos = self.check()?;
        let now = trunc(now);
        let mut times = vec![renewal_time(&infos.active, ca_renew_before), infos.active.not_after];
        if infos.pending.is_some() || infos.retiring.is_some() {
            times.push(add(self.since, trust_propagation_delay, "trust propagation delay")?);
        }
        times.extend(infos.pending.iter().chain(infos.retiring.iter()).map(|i| i.not_after));
        Ok(times.into_iter().filter(|&t| t > now).min())
    }
}

/// Plans the broker's CAs for `now`: returns the set to store and the transition made (`None` = nothing
/// changed; store nothing). Pure and idempotent: the same inputs always give the same answer, and a
/// set that needs no transition is returned unchanged however often it is called.
///
/// - no set → a new CA ([`CaTransition::Created`]);
/// - active expired (`now ≥ notAfter`, e.g. the operator was down) → a valid pending CA is promoted
///   ([`CaTransition::EmergencyActivated`]), otherwise a fresh CA replaces everything
///   ([`CaTransition::EmergencyReplaced`]); expired CAs are dropped from trust;
/// - Stable and the active CA inside its renew window ([`renewal_time`] with `ca_renew_before`) → the next
///   CA is created as `pending` ([`CaTransition::Introduced`]);
/// - Introducing and `now ≥ since + trust_propagation_delay` → pending becomes active, active becomes
///   retiring ([`CaTransition::Activated`]); if the pending CA has itself expired it is regenerated
///   instead ([`CaTransition::Introduced`]);
/// - Migrating and the retiring CA expired, or `live_leaves_signed_by_retiring == 0` and
///   `now ≥ since + trust_propagation_delay` → retiring dropped ([`CaTransition::Retired`]). The delay
///   lets the re-issued leaves reach the pods before the old CA leaves the bundle.
///
/// New CAs get `ca_validity` and a unique subject ([`new_ca`] with `ca_common_name`). An invalid set
/// (unparseable CA, key mismatch, pending and retiring both set) is an error, never silently replaced:
/// deleting the CA Secret is the explicit way to start over.
pub fn plan_ca(
    existing: Option<CaSet>,
    ca_validity: Duration,
    ca_renew_before: Duration,
    trust_propagation_delay: Duration,
    live_leaves_signed_by_retiring: usize,
    ca_common_name: &str,
    now: Timestamp,
) -> Result<(CaSet, Option<CaTransition>)> {
    let now = trunc(now);
    let fresh = || new_ca(ca_common_name, ca_validity, now);
    let Some(set) = existing else {
        return Ok((CaSet::stable(fresh()?, now), Some(CaTransition::Created)));
    };
    let infos = set.check()?;
    let expired = |info: &CertInfo| now >= info.not_after;

    if expired(&infos.active) {
        let promote = infos.pending.as_ref().is_some_and(|p| !expired(p));
        return Ok(match set {
            CaSet { pending: Some(pending), .. } if promote => {
                (CaSet::stable(pending, now), Some(CaTransition::EmergencyActivated))
            }
            _ => (CaSet::stable(fresh()?, now), Some(CaTransition::EmergencyReplaced)),
        });
    }
    let delay_passed = now >= add(set.since, trust_propagation_delay, "trust propagation delay")?;
    let pending_expired = infos.pending.as_ref().is_some_and(expired);
    let retiring_done =
        infos.retiring.as_ref().is_some_and(|r| expired(r) || (live_leaves_signed_by_retiring == 0 && delay_passed));
    let renew_due = now >= renewal_time(&infos.active, ca_renew_before);

    Ok(match set {
        set @ CaSet { pending: Some(_), .. } if pending_expired => {
            (CaSet { pending: Some(fresh()?), since: now, ..set }, Some(CaTransition::Introduced))
        }
        CaSet { active, pending: Some(pending), .. } if delay_passed => (
            CaSet { active: pending, pending: None, retiring: Some(active), since: now },
            Some(CaTransition::Activated),
        ),
        set @ CaSet { retiring: Some(_), .. } if retiring_done => {
            (CaSet { retiring: None, since: now, ..set }, Some(CaTransition::Retired))
        }
        set @ CaSet { pending: None, retiring: None, .. } if renew_due => {
            (CaSet { pending: Some(fresh()?), since: now, ..set }, Some(CaTransition::Introduced))
        }
        set => (set, None),
    })
}

/// Starts a rollover now (an administrator's request, e.g. after a suspected key compromise): a
/// Stable set gets its next CA as pending, exactly as when the active CA enters its renew window;
/// the rollover then proceeds as [`plan_ca`] decides. A set already rolling over is left alone.
pub fn introduce_now(
    set: CaSet,
    ca_validity: Duration,
    ca_common_name: &str,
    now: Timestamp,
) -> Result<(CaSet, Option<CaTransition>)> {
    let now = trunc(now);
    Ok(match set {
        set @ CaSet { pending: None, retiring: None, .. } => (
            CaSet { pending: Some(new_ca(ca_common_name, ca_validity, now)?), since: now, ..set },
            Some(CaTransition::Introduced),
        ),
        set => (set, None),
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{
        RenewReason, ServerNames, Want, inspect, issue_client, issue_server, leaf_renewal, parse_crls, signed_by,
    };
    use super::*;

    const CA_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
    const CA_RENEW: Duration = Duration::from_secs(30 * 86_400);
    const DELAY: Duration = Duration::from_secs(5 * 60);

    fn plan(existing: Option<CaSet>, live: usize, now: Timestamp) -> (CaSet, Option<CaTransition>) {
        plan_ca(existing, CA_VALIDITY, CA_RENEW, DELAY, live, "plant-a", now).unwrap()
    }

    fn certs_in(bundle: &str) -> usize {
        bundle.matches("-----BEGIN CERTIFICATE-----").count()
    }

    fn bundle_trusts(set: &CaSet, leaf: &Issued) -> bool {
        set.trusted().any(|ca| signed_by(&leaf.cert_pem, &ca.cert_pem))
    }

    #[test]
    fn a_requested_rollover_introduces_the_next_ca_only_when_stable() {
        let (set, _) = plan(None, 0, t0());
        let (introducing, t) = introduce_now(set.clone(), CA_VALIDITY, "plant-a", t0() + DAY).unwrap();
        assert_eq!((t, introducing.phase()), (Some(CaTransition::Introduced), "Introducing"));
        assert_eq!(introducing.active, set.active, "the old CA still signs until the propagation delay");
        let (again, t) = introduce_now(introducing.clone(), CA_VALIDITY, "plant-a", t0() + DAY).unwrap();
        assert_eq!((t, again), (None, introducing));
    }

    #[test]
    fn created_when_missing_then_stable_and_idempotent() {
        let (set, t) = plan(None, 0, t0());
        assert_eq!(t, Some(CaTransition::Created));
        assert_eq!((set.phase(), set.since), ("Stable", t0()));
        for i in 0..1000u32 {
            let now = t0() + HOUR * 8 * i; // up to ~333 days, before the 335-day renewal time
            let (again, t) = plan(Some(set.clone()), 0, now);
            assert_eq!((t, &again), (None, &set), "call {i}");
        }
    }

    #[test]
    fn rollover_step_by_step() {
        let names = ServerNames { dns: vec!["plant-a.ns.svc".into()], ips: vec![] };
        let server = |set: &CaSet, now| issue_server(&set.active, &names, DAY * 90, now).unwrap();
        let (set, _) = plan(None, 0, t0());
        let ca_a = set.active.clone();

        // Day 335: the active CA enters its renew window -> the next CA is introduced.
        let t1 = t0() + CA_VALIDITY - CA_RENEW;
        let leaf_a = issue_client(&ca_a, "alice", DAY * 90, t1 - DAY).unwrap();
        let (set, t) = plan(Some(set), 0, t1 - MIN);
        assert_eq!((t, set.phase()), (None, "Stable"));
        let (set, t) = plan(Some(set), 0, t1);
        assert_eq!((t, set.phase(), set.since), (Some(CaTransition::Introduced), "Introducing", t1));
        assert_eq!(set.active, ca_a, "the old CA still signs");
        let ca_b = set.pending.clone().unwrap();
        assert_ne!(inspect(&ca_b.cert_pem).unwrap().subject_dn, inspect(&ca_a.cert_pem).unwrap().subject_dn);
        assert_eq!(certs_in(&set.trust_bundle()), 2, "bundle holds both CAs before the new one signs");
        assert!(set.trust_bundle().starts_with(ca_a.cert_pem.trim_end()), "active first");

        // Before the propagation delay nothing is signed by the new CA, however often we ask.
        for i in 0..1000u32 {
            let now = t1 + Duration::from_millis(299) * i; // < 5 min
            let (same, t) = plan(Some(set.clone()), 0, now);
            assert_eq!((t, &same), (None, &set), "call {i}");
            assert!(signed_by(&server(&same, now).cert_pem, &ca_a.cert_pem));
        }

        // After the delay: B signs, A retires; leaves of A must move (IssuerChanged).
        let t2 = t1 + DELAY;
        let (set, t) = plan(Some(set), 1, t2);
        assert_eq!((t, set.phase(), set.since), (Some(CaTransition::Activated), "Migrating", t2));
        assert_eq!((&set.active, set.retiring.as_ref()), (&ca_b, Some(&ca_a)));
        assert_eq!(certs_in(&set.trust_bundle()), 2, "bundle holds both CAs while leaves migrate");
        assert!(bundle_trusts(&set, &leaf_a), "old leaves stay trusted");
        assert_eq!(
            leaf_renewal(Some(&leaf_a), Want::Client("alice"), &set.active, DAY * 90, DAY * 15, t2),
            Some(RenewReason::IssuerChanged)
        );
        let leaf_b = issue_client(&set.active, "alice", DAY * 90, t2).unwrap();
        assert!(signed_by(&leaf_b.cert_pem, &ca_b.cert_pem));
        assert!(bundle_trusts(&set, &leaf_b));

        // The old CA stays while the re-issued leaves may not have reached the pods yet ...
        let (set, t) = plan(Some(set), 0, t2 + DELAY - Duration::from_secs(1));
        assert_eq!((t, set.phase()), (None, "Migrating"));
        // ... and while a live leaf is still signed by it, however long that takes ...
        let (set, t) = plan(Some(set), 1, t2 + DAY * 10);
        assert_eq!((t, set.phase()), (None, "Migrating"));
        // ... then it leaves.
        let (set, t) = plan(Some(set), 0, t2 + DAY * 10);
        assert_eq!((t, set.phase(), set.since), (Some(CaTransition::Retired), "Stable", t2 + DAY * 10));
        assert_eq!(set.active, ca_b);
        assert_eq!(certs_in(&set.trust_bundle()), 1);
        assert!(!bundle_trusts(&set, &leaf_a));
        assert!(bundle_trusts(&set, &leaf_b));
    }

    #[test]
    fn retiring_ca_leaves_when_it_expires_even_with_live_leaves() {
        let (set, _) = plan(None, 0, t0());
        let t1 = t0() + CA_VALIDITY - CA_RENEW;
        let (set, _) = plan(Some(set), 0, t1);
        let (set, t) = plan(Some(set), 3, t1 + DELAY);
        assert_eq!(t, Some(CaTransition::Activated));
        let old_end = t0() + CA_VALIDITY;
        let (set, t) = plan(Some(set), 3, old_end - Duration::from_secs(1));
        assert_eq!((t, set.phase()), (None, "Migrating"));
        let (set, t) = plan(Some(set), 3, old_end);
        assert_eq!((t, set.phase()), (Some(CaTransition::Retired), "Stable"));
    }

    #[test]
    fn expired_active_ca_is_replaced_immediately() {
        let (set, _) = plan(None, 0, t0());
        let old = set.active.clone();
        let late = t0() + CA_VALIDITY + DAY * 3; // the operator was down through the whole window
        let (set, t) = plan(Some(set), 5, late);
        assert_eq!((t, set.phase(), set.since), (Some(CaTransition::EmergencyReplaced), "Stable", late));
        assert_ne!(set.active, old);
        assert_eq!(certs_in(&set.trust_bundle()), 1, "the expired CA is not trusted any more");
        let info = inspect(&set.active.cert_pem).unwrap();
        assert_eq!(info.not_after, late + CA_VALIDITY);
        // Leaves of the dead CA are replaced, and the new ones are issued fine.
        let leaf = issue_client(&old, "alice", DAY * 90, t0()).unwrap();
        assert!(leaf_renewal(Some(&leaf), Want::Client("alice"), &set.active, DAY * 90, DAY * 15, late).is_some());
        assert!(issue_client(&set.active, "alice", DAY * 90, late).is_ok());
        let (again, t) = plan(Some(set.clone()), 0, late + HOUR);
        assert_eq!((t, again), (None, set), "and then it is stable");
    }

    #[test]
    fn expired_active_with_pending_promotes_the_pending_ca() {
        let (set, _) = plan(None, 0, t0());
        let t1 = t0() + CA_VALIDITY - CA_RENEW;
        let (set, _) = plan(Some(set), 0, t1);
        let pending = set.pending.clone().unwrap();
        // Huge propagation delay: the old CA expires before the pending one was activated.
        let (set, t) = plan_ca(Some(set), CA_VALIDITY, CA_RENEW, DAY * 60, 0, "plant-a", t0() + CA_VALIDITY).unwrap();
        assert_eq!(t, Some(CaTransition::EmergencyActivated));
        assert_eq!((set.phase(), set.active), ("Stable", pending));
    }

    #[test]
    fn invalid_sets_are_errors_not_silent_replacements() {
        let (set, _) = plan(None, 0, t0());
        let other = new_ca("x", DAY, t0()).unwrap();
        let both = CaSet { pending: Some(other.clone()), retiring: Some(other.clone()), ..set.clone() };
        assert!(matches!(
            plan_ca(Some(both), CA_VALIDITY, CA_RENEW, DELAY, 0, "plant-a", t0()),
            Err(PkiError::CaSet(_))
        ));
        let swapped = CaSet { active: Issued { cert_pem: set.active.cert_pem.clone(), key_pem: other.key_pem }, ..set };
        assert!(matches!(
            plan_ca(Some(swapped), CA_VALIDITY, CA_RENEW, DELAY, 0, "plant-a", t0()),
            Err(PkiError::KeyMismatch(_))
        ));
    }

    #[test]
    fn secret_data_round_trips_in_every_phase() {
        let (stable, _) = plan(None, 0, t0());
        let t1 = t0() + CA_VALIDITY - CA_RENEW;
        let (introducing, _) = plan(Some(stable.clone()), 0, t1);
        let (migrating, _) = plan(Some(introducing.clone()), 1, t1 + DELAY);
        for set in [stable, introducing, migrating] {
            let data = set.to_secret_data();
            let back = CaSet::from_secret_data(&data).unwrap();
            assert_eq!(back, set, "{}", set.phase());
            let key_body = set.active.key_pem.lines().nth(1).unwrap();
            assert!(!format!("{set:?}").contains(key_body), "Debug never shows keys");
            assert_eq!(data[SINCE_KEY], set.since.to_string());
            assert_eq!(data.len(), 3 + 2 * usize::from(set.phase() != "Stable"));
        }
    }

    #[test]
    fn secret_data_is_validated() {
        let (set, _) = plan(None, 0, t0());
        let t1 = t0() + CA_VALIDITY - CA_RENEW;
        let (introducing, _) = plan(Some(set.clone()), 0, t1);
        let good = introducing.to_secret_data();
        let without = |k: &str| {
            let mut d = good.clone();
            d.remove(k);
            CaSet::from_secret_data(&d)
        };
        let with = |k: &str, v: &str| {
            let mut d = good.clone();
            d.insert(k.into(), v.into());
            CaSet::from_secret_data(&d)
        };
        assert!(matches!(without(CA_KEY_KEY), Err(PkiError::SecretData(_))));
        assert!(matches!(without(PENDING_CA_KEY_KEY), Err(PkiError::SecretData(_))));
        assert!(matches!(without(SINCE_KEY), Err(PkiError::SecretData(_))));
        assert!(matches!(with(SINCE_KEY, "yesterday"), Err(PkiError::SecretData(_))));
        assert!(matches!(with(CA_KEY_KEY, &good[PENDING_CA_KEY_KEY]), Err(PkiError::SecretData(_))));
        let err = with(RETIRING_CA_CERT_KEY, &set.active.cert_pem).unwrap_err();
        assert!(matches!(err, PkiError::SecretData(_)));
        let mut both = good.clone();
        both.insert(RETIRING_CA_CERT_KEY.into(), set.active.cert_pem.clone());
        both.insert(RETIRING_CA_KEY_KEY.into(), set.active.key_pem.clone());
        assert!(CaSet::from_secret_data(&both).is_err(), "pending and retiring together");
        let leaf = issue_client(&set.active, "u", DAY, t0()).unwrap();
        assert!(with(CA_CERT_KEY, &leaf.cert_pem).is_err(), "a leaf is not a CA");
        assert!(with("unrelated", "x").is_ok());
        let msg = with(CA_KEY_KEY, "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n")
            .unwrap_err()
            .to_string();
        assert!(!msg.contains("c2VjcmV0"), "no key material in errors: {msg}");
    }

    #[test]
    fn next_event_time_follows_the_phase() {
        let (set, _) = plan(None, 0, t0());
        let t1 = t0() + CA_VALIDITY - CA_RENEW;
        assert_eq!(set.next_event_time(CA_RENEW, DELAY, t0()).unwrap(), Some(t1));
        let (set, _) = plan(Some(set), 0, t1);
        assert_eq!(set.next_event_time(CA_RENEW, DELAY, t1).unwrap(), Some(t1 + DELAY));
        let (set, _) = plan(Some(set), 1, t1 + DELAY);
        assert_eq!(set.next_event_time(CA_RENEW, DELAY, t1 + DELAY).unwrap(), Some(t1 + DELAY * 2));
        assert_eq!(
            set.next_event_time(CA_RENEW, DELAY, t1 + DELAY * 2).unwrap(),
            Some(t0() + CA_VALIDITY),
            "then the retiring CA's expiry"
        );
    }

    #[test]
    fn one_crl_per_trusted_ca_and_resign_detection() {
        let (set, _) = plan(None, 0, t0());
        let t1 = t0() + CA_VALIDITY - CA_RENEW;
        let alice = issue_client(&set.active, "alice", DAY * 90, t1 - DAY).unwrap();
        let (set, _) = plan(Some(set), 0, t1);
        let (set, _) = plan(Some(set), 1, t1 + DELAY);
        let bob = issue_client(&set.active, "bob", DAY * 90, t1 + DELAY).unwrap();
        let revoked = vec![RevokedCert::from_cert(&alice.cert_pem, t1 + HOUR).unwrap()];
        let now = t1 + HOUR;
        let crls = set.crls(&revoked, 9, now, now + DAY * 7).unwrap();
        let parsed = parse_crls(&crls).unwrap();
        assert_eq!(parsed.len(), 2);
        let dn = |ca: &Issued| inspect(&ca.cert_pem).unwrap().subject_dn;
        assert_eq!(parsed[0].issuer_dn, dn(&set.active));
        assert!(parsed[0].revoked_serials.is_empty(), "alice was issued by the retiring CA");
        assert_eq!(parsed[1].issuer_dn, dn(set.retiring.as_ref().unwrap()));
        assert_eq!(parsed[1].revoked_serials, vec![revoked[0].serial_hex.clone()]);

        let margin = DAY * 2;
        assert!(!set.crls_need_resign(&crls, &revoked, now + DAY, margin), "unchanged inputs: no rewrite");
        assert!(set.crls_need_resign(&crls, &revoked, now + DAY * 5, margin), "inside the margin");
        let more = vec![revoked[0].clone(), RevokedCert::from_cert(&bob.cert_pem, now).unwrap()];
        assert!(set.crls_need_resign(&crls, &more, now + DAY, margin), "ledger changed");
        assert!(set.crls_need_resign(&crls, &[], now + DAY, margin), "entry pruned");
        let (stable, _) = plan(Some(set.clone()), 0, t1 + DELAY * 2);
        assert!(stable.crls_need_resign(&crls, &revoked, now + DAY, margin), "CA set changed");
        let first_only = format!("{}\n", crls.split_inclusive("-----END X509 CRL-----").next().unwrap());
        assert!(set.crls_need_resign(&first_only, &revoked, now + DAY, margin), "a CA without CRL");
        let (swapped, _) =
            (CaSet { active: set.retiring.clone().unwrap(), retiring: Some(set.active.clone()), ..set.clone() }, ());
        assert!(!swapped.crls_need_resign(&crls, &revoked, now + DAY, margin), "CRL order does not matter");
    }

    #[test]
    fn three_years_of_reconciles_keep_every_leaf_trusted() {
        // Reconciles every 4 hours over ~3 years: plan the CAs, then renew leaves as leaf_renewal says.
        // Invariants: at most two CAs trusted; every live leaf valid and chained to a trusted CA;
        // nothing is issued without a reason; the CA rolls over once a year.
        let names = ServerNames { dns: vec!["plant-a.ns.svc".into()], ips: vec![] };
        let (validity, renew) = (DAY * 90, DAY * 15);
        let (mut set, _) = plan(None, 0, t0());
        let mut server = issue_server(&set.active, &names, validity, t0()).unwrap();
        let mut client = issue_client(&set.active, "alice", validity, t0()).unwrap();
        let mut transitions = Vec::new();
        let mut issues = 0;
        for step in 1..(3 * 365 * 6) {
            let now = t0() + HOUR * 4 * step;
            let live = [&server, &client]
                .iter()
                .filter(|l| set.retiring.as_ref().is_some_and(|r| signed_by(&l.cert_pem, &r.cert_pem)))
                .count();
            let (next, t) = plan(Some(set), live, now);
            set = next;
            transitions.extend(t);
            if leaf_renewal(Some(&server), Want::Server(&names), &set.active, validity, renew, now).is_some() {
                server = issue_server(&set.active, &names, validity, now).unwrap();
                issues += 1;
            }
            if leaf_renewal(Some(&client), Want::Client("alice"), &set.active, validity, renew, now).is_some() {
                client = issue_client(&set.active, "alice", validity, now).unwrap();
                issues += 1;
            }
            assert!(set.trusted().count() <= 2);
            for leaf in [&server, &client] {
                let info = inspect(&leaf.cert_pem).unwrap();
                assert!(info.not_before <= now && now <= info.not_after, "leaf valid at {now}");
                assert!(bundle_trusts(&set, leaf), "leaf trusted at {now} ({})", set.phase());
            }
        }
        use CaTransition::*;
        assert_eq!(
            transitions,
            [Introduced, Activated, Retired, Introduced, Activated, Retired, Introduced, Activated, Retired]
        );
        // Per leaf: ~4 renewals a year + one re-issue per CA rollover (+ at most one capped re-issue).
        assert!(issues <= 2 * (3 * 6), "issued {issues} times");
    }
}
