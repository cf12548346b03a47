//! Leaf rotation decisions: whether a server or client certificate must be re-issued, and when to look again.
//!
//! The rule: **never re-issue a certificate that is still valid and matches the policy** (peers.md pain
//! point 1: credentials regenerated on every reconcile). A reconcile with unchanged inputs gets `None`.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::inspect::{CertInfo, inspect, key_matches, signed_by};
use super::issue::{ServerNames, leaf_not_after};
use super::{CLOCK_SKEW, Issued, parse_key, trunc};

/// Why a leaf certificate must be (re-)issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RenewReason {
    /// There is no certificate yet.
    Missing,
    /// The certificate or its key cannot be parsed.
    Unparseable,
    /// The key is not ECDSA P-256/P-384.
    WeakKey,
    /// The key does not belong to the certificate (Mosquitto would fail every handshake).
    KeyMismatch,
    /// The certificate is of the wrong kind for its role: a CA, or without the serverAuth/clientAuth EKU.
    WrongProfile,
    /// The certificate has expired.
    Expired,
    /// The certificate's `notBefore` is in the future (e.g. the clock went backwards).
    NotYetValid,
    /// It is inside its renew window and a certificate issued now would last longer.
    RenewWindow,
    /// The SANs (server) or CN (client) differ from what is wanted.
    NamesChanged,
    /// It was not signed by the current signing CA (e.g. after a CA rollover activated a new CA).
    IssuerChanged,
    /// An administrator asked for a new certificate.
    Requested,
}

impl RenewReason {
    /// A stable CamelCase name for Events, conditions and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RenewReason::Missing => "Missing",
            RenewReason::Unparseable => "Unparseable",
            RenewReason::WeakKey => "WeakKey",
            RenewReason::KeyMismatch => "KeyMismatch",
            RenewReason::Requested => "Requested",
            RenewReason::WrongProfile => "WrongProfile",
            RenewReason::Expired => "Expired",
            RenewReason::NotYetValid => "NotYetValid",
            RenewReason::RenewWindow => "RenewWindow",
            RenewReason::NamesChanged => "NamesChanged",
            RenewReason::IssuerChanged => "IssuerChanged",
        }
    }
}

/// What a leaf certificate must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want<'a> {
    /// A server certificate for exactly these names (compared as sets, after [`ServerNames::normalized`]).
    Server(&'a ServerNames),
    /// A client certificate whose CN is this username.
    Client(&'a str),
}

/// The renew-before actually applied to `info`: `renew_before`, unless it does not leave the
/// certificate any time outside its window (renew_before + [`CLOCK_SKEW`] ≥ lifetime, which admission
/// forbids but a capped leaf can reach), then a third of the lifetime (renew at 2/3, like cert-manager).
fn effective_renew_before(not_before: Timestamp, not_after: Timestamp, renew_before: Duration) -> SignedDuration {
    let lifetime = not_after.duration_since(not_before);
    if lifetime <= SignedDuration::ZERO {
        return SignedDuration::ZERO;
    }
    let skew = SignedDuration::try_from(CLOCK_SKEW).unwrap_or(SignedDuration::ZERO);
    match SignedDuration::try_from(renew_before) {
        Ok(rb) if rb.checked_add(skew).is_some_and(|end| end < lifetime) => rb,
        _ => lifetime / 3,
    }
}

/// When `info` enters its renew window: `notAfter − renew_before` (see [`leaf_renewal`] for the clamp
/// applied when `renew_before` is not shorter than the certificate's lifetime).
pub fn renewal_time(info: &CertInfo, renew_before: Duration) -> Timestamp {
    renewal_time_of(info.not_before, info.not_after, renew_before)
}

/// [`renewal_time`] from a certificate's validity period.
pub fn renewal_time_of(not_before: Timestamp, not_after: Timestamp, renew_before: Duration) -> Timestamp {
    not_after.checked_sub(effective_renew_before(not_before, not_after, renew_before)).unwrap_or(Timestamp::MIN)
}

/// [`leaf_renewal`] for a client certificate moat issued and knows to be unchanged (its Secret
/// holds exactly what was issued, so key, profile, names and signature were checked at issuance):
/// only the clock and the signer decide. Needs no certificate parsing.
pub fn issued_leaf_renewal(
    not_before: Timestamp,
    not_after: Timestamp,
    issuer_dn: &str,
    signer: &CertInfo,
    validity: Duration,
    renew_before: Duration,
    now: Timestamp,
) -> Option<RenewReason> {
    let now = trunc(now);
    if now > not_after {
        return Some(RenewReason::Expired);
    }
    if not_before > now {
        return Some(RenewReason::NotYetValid);
    }
    if issuer_dn != signer.subject_dn {
        return Some(RenewReason::IssuerChanged);
    }
    if now >= renewal_time_of(not_before, not_after, renew_before)
        && leaf_not_after(signer, validity, now).is_ok_and(|candidate| candidate > not_after)
    {
        return Some(RenewReason::RenewWindow);
    }
    None
}

/// Decides whether the leaf `existing` must be (re-)issued by `signer` (the active CA), and why.
///
/// Checks, in order: missing; unparseable certificate; weak key (judged from the certificate);
/// unparseable key; key/cert mismatch; wrong profile (a CA, or no serverAuth/clientAuth EKU for the
/// role); expired (`now > notAfter`); not yet valid; not signed by `signer` (signature verified); names
/// differ from `want`; inside the renew window.
///
/// **Renew window.** The window starts at [`renewal_time`]. If `renew_before` is not shorter than the
/// certificate's lifetime (minus [`CLOCK_SKEW`]) it is clamped to a third of the lifetime, so a fresh
/// certificate is never already due. Inside the window the leaf is re-issued only if a certificate issued
/// now by `signer` would expire *later* than the existing one: a leaf whose `notAfter` was capped by a CA
/// that expires soon is left alone (a re-issue would get the same cap), and the CA rollover replaces it
/// via [`RenewReason::IssuerChanged`] once the next CA is active. So repeated calls with a valid,
/// matching certificate return `None`, and a `Some` answer is followed by `None` once the new
/// certificate is in place.
///
/// Call [`super::plan_ca`] first, so `signer` is never an expired CA.
pub fn leaf_renewal(
    existing: Option<&Issued>,
    want: Want<'_>,
    signer: &Issued,
    validity: Duration,
    renew_before: Duration,
    now: Timestamp,
) -> Option<RenewReason> {
    let Some(existing) = existing else {
        return Some(RenewReason::Missing);
    };
    let Ok(info) = inspect(&existing.cert_pem) else {
        return Some(RenewReason::Unparseable);
    };
    if !info.key_is_strong {
        return Some(RenewReason::WeakKey);
    }
    if parse_key(&existing.key_pem, "certificate").is_err() {
        return Some(RenewReason::Unparseable);
    }
    if !key_matches(&existing.cert_pem, &existing.key_pem) {
        return Some(RenewReason::KeyMismatch);
    }
    let role_ok = match want {
        Want::Server(_) => info.server_auth,
        Want::Client(_) => info.client_auth,
    };
    if info.is_ca || !role_ok {
        return Some(RenewReason::WrongProfile);
    }
    let now = trunc(now);
    if now > info.not_after {
        return Some(RenewReason::Expired);
    }
    if info.not_before > now {
        return Some(RenewReason::NotYetValid);
    }
    if !signed_by(&existing.cert_pem, &signer.cert_pem) {
        return Some(RenewReason::IssuerChanged);
    }
    let names_match = match want {
        Want::Server(names) => {
            let have = ServerNames { dns: info.dns_names.clone(), ips: info.ip_addresses.clone() };
            have.sorted_sets() == names.sorted_sets()
        }
        Want::Client(username) => info.subject_cn.as_deref() == Some(username),
    };
    if !names_match {
        return Some(RenewReason::NamesChanged);
    }
    if now >= renewal_time(&info, renew_before) {
        let extends = inspect(&signer.cert_pem)
            .and_then(|ca| leaf_not_after(&ca, validity, now))
            .is_ok_and(|candidate| candidate > info.not_after);
        if extends {
            return Some(RenewReason::RenewWindow);
        }
    }
    None
}

/// The next time [`leaf_renewal`]'s answer for `info` can change by the clock alone: its renewal time,
/// or (once that has passed, e.g. for a CA-capped leaf) the moment it expires. `None` if both are past.
pub fn leaf_next_event(info: &CertInfo, renew_before: Duration, now: Timestamp) -> Option<Timestamp> {
    let now = trunc(now);
    let expiry = info.not_after.checked_add(SignedDuration::from_secs(1)).ok();
    [Some(renewal_time(info, renew_before)), expiry].into_iter().flatten().filter(|&t| t > now).min()
}

/// How long to wait from `now` until `next` (zero if `next` has passed), for `Action::requeue`.
pub fn requeue_after(next: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(next.duration_since(now)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{issue_client, issue_server, new_ca};
    use super::*;

    const VALIDITY: Duration = Duration::from_secs(90 * 86_400);
    const RENEW: Duration = Duration::from_secs(15 * 86_400);

    fn names() -> ServerNames {
        ServerNames { dns: vec!["plant-a.ns.svc".into(), "plant-a".into()], ips: vec![] }
    }

    fn setup() -> (Issued, Issued) {
        let ca = new_ca("plant-a", DAY * 365, t0()).unwrap();
        let leaf = issue_server(&ca, &names(), VALIDITY, t0()).unwrap();
        (ca, leaf)
    }

    fn decide(leaf: Option<&Issued>, ca: &Issued, now: Timestamp) -> Option<RenewReason> {
        leaf_renewal(leaf, Want::Server(&names()), ca, VALIDITY, RENEW, now)
    }

    #[test]
    fn missing_certificate_is_issued() {
        let (ca, _) = setup();
        assert_eq!(decide(None, &ca, t0()), Some(RenewReason::Missing));
    }

    #[test]
    fn no_renewal_before_the_window() {
        let (ca, leaf) = setup();
        assert_eq!(decide(Some(&leaf), &ca, t0()), None);
        let last_second_before = t0() + VALIDITY - RENEW - Duration::from_secs(1);
        assert_eq!(decide(Some(&leaf), &ca, last_second_before), None);
        let info = inspect(&leaf.cert_pem).unwrap();
        assert_eq!(renewal_time(&info, RENEW), t0() + VALIDITY - RENEW);
    }

    #[test]
    fn renewal_inside_the_window() {
        let (ca, leaf) = setup();
        assert_eq!(decide(Some(&leaf), &ca, t0() + VALIDITY - RENEW), Some(RenewReason::RenewWindow));
        assert_eq!(decide(Some(&leaf), &ca, t0() + VALIDITY - DAY), Some(RenewReason::RenewWindow));
    }

    #[test]
    fn renewal_when_expired() {
        let (ca, leaf) = setup();
        assert_eq!(decide(Some(&leaf), &ca, t0() + VALIDITY), Some(RenewReason::RenewWindow), "valid through notAfter");
        assert_eq!(decide(Some(&leaf), &ca, t0() + VALIDITY + Duration::from_secs(1)), Some(RenewReason::Expired));
    }

    #[test]
    fn not_yet_valid_when_the_clock_went_back() {
        let (ca, leaf) = setup();
        assert_eq!(decide(Some(&leaf), &ca, t0() - HOUR), Some(RenewReason::NotYetValid));
        assert_eq!(decide(Some(&leaf), &ca, t0() - CLOCK_SKEW), None, "skew allowance");
    }

    #[test]
    fn san_change_is_names_changed_but_order_and_case_are_not() {
        let (ca, leaf) = setup();
        let reordered = ServerNames { dns: vec!["PLANT-A".into(), "plant-a.ns.svc.".into()], ips: vec![] };
        assert_eq!(leaf_renewal(Some(&leaf), Want::Server(&reordered), &ca, VALIDITY, RENEW, t0()), None);
        let more = ServerNames {
            dns: vec!["plant-a.ns.svc".into(), "plant-a".into(), "mqtt.example.com".into()],
            ips: vec![],
        };
        assert_eq!(
            leaf_renewal(Some(&leaf), Want::Server(&more), &ca, VALIDITY, RENEW, t0()),
            Some(RenewReason::NamesChanged)
        );
        let ip = ServerNames { ips: vec!["10.0.0.1".parse().unwrap()], ..names() };
        assert_eq!(
            leaf_renewal(Some(&leaf), Want::Server(&ip), &ca, VALIDITY, RENEW, t0()),
            Some(RenewReason::NamesChanged)
        );
    }

    #[test]
    fn client_cn_change_is_names_changed() {
        let (ca, _) = setup();
        let leaf = issue_client(&ca, "alice", VALIDITY, t0()).unwrap();
        assert_eq!(leaf_renewal(Some(&leaf), Want::Client("alice"), &ca, VALIDITY, RENEW, t0()), None);
        assert_eq!(
            leaf_renewal(Some(&leaf), Want::Client("bob"), &ca, VALIDITY, RENEW, t0()),
            Some(RenewReason::NamesChanged)
        );
    }

    #[test]
    fn wrong_profile_is_replaced() {
        let (ca, server) = setup();
        let client = issue_client(&ca, "plant-a.ns.svc", VALIDITY, t0()).unwrap();
        assert_eq!(decide(Some(&client), &ca, t0()), Some(RenewReason::WrongProfile), "client cert in the server slot");
        assert_eq!(
            leaf_renewal(Some(&server), Want::Client("plant-a.ns.svc"), &ca, VALIDITY, RENEW, t0()),
            Some(RenewReason::WrongProfile)
        );
        assert_eq!(decide(Some(&ca), &ca, t0()), Some(RenewReason::WrongProfile), "a CA is not a leaf");
    }

    #[test]
    fn issuer_change_is_detected_by_signature() {
        let (ca, leaf) = setup();
        assert_eq!(decide(Some(&leaf), &ca, t0()), None);
        // Same common name, same time, different key and DN: only a real signature check tells.
        let next = new_ca("plant-a", DAY * 365, t0()).unwrap();
        assert_eq!(decide(Some(&leaf), &next, t0()), Some(RenewReason::IssuerChanged));
    }

    #[test]
    fn unparseable_mismatched_or_weak_material_is_replaced() {
        let (ca, leaf) = setup();
        let other = issue_server(&ca, &names(), VALIDITY, t0()).unwrap();
        let mismatched = Issued { cert_pem: leaf.cert_pem.clone(), key_pem: other.key_pem.clone() };
        assert_eq!(decide(Some(&mismatched), &ca, t0()), Some(RenewReason::KeyMismatch));
        let bad_key = Issued {
            cert_pem: leaf.cert_pem.clone(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
        };
        assert_eq!(decide(Some(&bad_key), &ca, t0()), Some(RenewReason::Unparseable));
        let bad_cert = Issued { cert_pem: "garbage".into(), key_pem: leaf.key_pem.clone() };
        assert_eq!(decide(Some(&bad_cert), &ca, t0()), Some(RenewReason::Unparseable));
        let weak = ed25519_server_leaf(&ca, "plant-a.ns.svc");
        assert!(key_matches(&weak.cert_pem, &weak.key_pem), "the pair itself matches");
        assert_eq!(decide(Some(&weak), &ca, t0()), Some(RenewReason::WeakKey), "Ed25519 is not accepted");
    }

    #[test]
    fn valid_matching_certificate_is_never_reissued_across_1000_reconciles() {
        let (ca, leaf) = setup();
        // 1,000 reconciles, time advancing ~1.75 h each, all before the renew window (75 days).
        let step = (VALIDITY - RENEW - HOUR) / 1000;
        let reissues: Vec<(u32, RenewReason)> =
            (0..1000u32).filter_map(|i| decide(Some(&leaf), &ca, t0() + step * i).map(|r| (i, r))).collect();
        assert_eq!(reissues, vec![]);
    }

    #[test]
    fn renewal_converges_one_issue_per_window() {
        let (ca, mut leaf) = setup();
        let mut issued = 0;
        // 400 days in 6 h steps: the CA (365 d) caps the leaves near its end.
        for i in 0..1600u32 {
            let now = t0() + HOUR * 6 * i;
            if now >= t0() + DAY * 365 {
                break;
            }
            if decide(Some(&leaf), &ca, now).is_some() {
                issued += 1;
                leaf = issue_server(&ca, &names(), VALIDITY, now).unwrap();
                assert_eq!(decide(Some(&leaf), &ca, now), None, "a fresh certificate is never due");
            }
        }
        // Renewals at days 75, 150, 225, 300, then one capped at the CA's end: at most 6.
        assert!((4..=6).contains(&issued), "issued {issued} times");
    }

    #[test]
    fn capped_leaf_is_not_reissued_on_every_call() {
        // The CA expires in 20 days: a 90-day leaf is capped there, so it is inside its 15-day window
        // after 5 days, but a re-issue by this CA would not last longer.
        let ca = new_ca("plant-a", DAY * 20, t0()).unwrap();
        let leaf = issue_server(&ca, &names(), VALIDITY, t0()).unwrap();
        assert_eq!(inspect(&leaf.cert_pem).unwrap().not_after, t0() + DAY * 20);
        for i in 0..1000u32 {
            let now = t0() + DAY * 6 + MIN * 20 * i; // days 6 .. ~19.9
            assert_eq!(decide(Some(&leaf), &ca, now), None, "call {i}");
        }
        // Under the next CA it is replaced.
        let next = new_ca("plant-a", DAY * 365, t0() + DAY * 10).unwrap();
        assert_eq!(decide(Some(&leaf), &next, t0() + DAY * 10), Some(RenewReason::IssuerChanged));
    }

    #[test]
    fn renew_before_longer_than_validity_is_clamped() {
        let ca = new_ca("plant-a", DAY * 365, t0()).unwrap();
        let leaf = issue_client(&ca, "u", DAY, t0()).unwrap();
        let due = |now| leaf_renewal(Some(&leaf), Want::Client("u"), &ca, DAY, DAY * 2, now);
        assert_eq!(due(t0() + HOUR), None, "a fresh certificate is not due");
        assert_eq!(due(t0() + HOUR * 17), Some(RenewReason::RenewWindow), "renewed at 2/3 of its life");
    }

    #[test]
    fn next_event_is_the_renewal_time_then_the_expiry() {
        let (_, leaf) = setup();
        let info = inspect(&leaf.cert_pem).unwrap();
        assert_eq!(leaf_next_event(&info, RENEW, t0()), Some(t0() + VALIDITY - RENEW));
        assert_eq!(
            leaf_next_event(&info, RENEW, t0() + VALIDITY - DAY),
            Some(t0() + VALIDITY + Duration::from_secs(1))
        );
        assert_eq!(leaf_next_event(&info, RENEW, t0() + VALIDITY * 2), None);
        assert_eq!(requeue_after(t0() + HOUR, t0()), HOUR);
        assert_eq!(requeue_after(t0(), t0() + HOUR), Duration::ZERO);
    }
}
