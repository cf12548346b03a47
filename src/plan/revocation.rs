//! Which credentials a new plan takes away (pure): the revocations whose arrival on the broker
//! pods moat measures against `spec.security.revocationDeadline`.

use std::collections::{BTreeMap, BTreeSet};

use super::broker::{Cred, UserOutcome, Verdict};
use super::ledger::Ledger;

/// One credential taken away.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Revocation {
    /// The password in effect for this username is no longer accepted (user deleted, lost its
    /// username, or its password changed).
    Password(String),
    /// This certificate serial was revoked (it enters the CRL).
    Certificate(String),
}

impl std::fmt::Display for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Revocation::Password(u) => write!(f, "password of {u}"),
            Revocation::Certificate(s) => write!(f, "certificate {s}"),
        }
    }
}

/// Password in effect per username: (username, password version).
fn passwords(verdicts: &BTreeMap<String, UserOutcome>) -> BTreeSet<(String, Option<String>)> {
    verdicts
        .values()
        .filter_map(|o| match &o.verdict {
            Verdict::Holder(h) if h.password == Cred::InEffect => {
                Some((h.username.clone(), h.password_version.clone()))
            }
            _ => None,
        })
        .collect()
}

/// What `after` takes away from `before` (nothing when `before` is unknown, e.g. right after the
/// operator started: then no revocation can be timed).
pub fn revocations(
    before: Option<(&BTreeMap<String, UserOutcome>, &Ledger)>,
    after: (&BTreeMap<String, UserOutcome>, &Ledger),
) -> Vec<Revocation> {
    let Some((users_before, ledger_before)) = before else { return vec![] };
    let still = passwords(after.0);
    let mut out: Vec<Revocation> = passwords(users_before)
        .into_iter()
        .filter(|p| !still.contains(p))
        .map(|(username, _)| Revocation::Password(username))
        .collect();
    let revoked_before: BTreeSet<String> = ledger_before.revoked().into_iter().map(|r| r.serial_hex).collect();
    out.extend(
        after
            .1
            .revoked()
            .into_iter()
            .filter(|r| !revoked_before.contains(&r.serial_hex))
            .map(|r| Revocation::Certificate(r.serial_hex)),
    );
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::broker::Holder;

    fn holder(username: &str, version: &str) -> UserOutcome {
        UserOutcome {
            uid: format!("uid-{username}"),
            generation: Some(1),
            verdict: Verdict::Holder(Holder {
                username: username.into(),
                password: Cred::InEffect,
                certificate: Cred::NotUsed,
                password_version: Some(version.into()),
                password_digest: None,
                reused: false,
                cert: None,
            }),
        }
    }

    #[test]
    fn a_deleted_user_and_a_changed_password_are_revocations_a_new_user_is_not() {
        let ledger = Ledger::default();
        let before = BTreeMap::from([("a".to_string(), holder("a", "v1")), ("b".to_string(), holder("b", "v1"))]);
        let after = BTreeMap::from([("b".to_string(), holder("b", "v2")), ("c".to_string(), holder("c", "v1"))]);
        assert_eq!(
            revocations(Some((&before, &ledger)), (&after, &ledger)),
            vec![Revocation::Password("a".into()), Revocation::Password("b".into())]
        );
        assert!(revocations(Some((&after, &ledger)), (&after, &ledger)).is_empty());
        assert!(revocations(None, (&after, &ledger)).is_empty(), "nothing is known before the first plan");
    }
}
