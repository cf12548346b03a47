//! Which files each broker pod runs (pure): the memo of the files moat wrote, the pods'
//! answers, and when the files (and the revocations they carry) were in effect on every pod.
//! The controller asks the pods' agents; this decides what the answers mean.

use std::time::Duration;

use jiff::Timestamp;

use super::revocation::Revocation;

/// While a pod is behind, how often to look again.
pub const RECHECK: Duration = Duration::from_secs(1);
/// How long after a write to keep looking every [`RECHECK`] (afterwards: at audits).
pub const FOLLOW_FOR: Duration = Duration::from_secs(300);

/// What one pod runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodFiles {
    /// The current files, installed at this time.
    Current(Timestamp),
    /// Older files (the kubelet or the agent has not caught up yet).
    Behind,
    /// The agent refuses the mounted files (invalid); older files stay in force.
    Refusing,
    /// No answer (the reason, for the status).
    Unreachable(String),
}

/// What the operator remembers about a broker's files between reconciles (a new operator starts
/// without: it attests again and cannot time revocations it did not see).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Memo {
    /// Digest of the files moat wrote last (compared, never shown).
    pub expected: String,
    /// When moat first planned them.
    pub since: Timestamp,
    /// The revocations they carry, with when they were planned.
    pub revocations: Vec<Revocation>,
    /// Every pod runs them, since this time (None: not attested yet).
    pub in_effect_at: Option<Timestamp>,
    /// The last answer of each pod.
    pub pods: Vec<(String, PodFiles)>,
}

impl Memo {
    /// The memo for newly planned files: a change of files starts over; revocations of files
    /// that never reached every pod carry over (they are still pending).
    pub fn next(previous: Option<&Memo>, expected: String, revocations: Vec<Revocation>, now: Timestamp) -> Memo {
        match previous {
            Some(p) if p.expected == expected => {
                let mut p = p.clone();
                p.revocations.extend(revocations);
                p
            }
            Some(p) if p.in_effect_at.is_none() && !p.revocations.is_empty() => Memo {
                expected,
                since: p.since,
                revocations: [p.revocations.clone(), revocations].concat(),
                in_effect_at: None,
                pods: vec![],
            },
            _ => Memo { expected, since: now, revocations, in_effect_at: None, pods: vec![] },
        }
    }

    /// Whether to keep asking every [`RECHECK`]: the files are not in effect, some pod was not
    /// asked yet or is catching up, and they were written less than [`FOLLOW_FOR`] ago. (Pods that
    /// do not answer are asked again when they become Ready: that makes an audit due.)
    pub fn following(&self, now: Timestamp) -> bool {
        self.in_effect_at.is_none()
            && (self.pods.is_empty() || self.pods.iter().any(|(_, f)| *f == PodFiles::Behind))
            && now.duration_since(self.since).as_secs() < FOLLOW_FOR.as_secs() as i64
    }

    /// Whether to ask the pods now: while [`Memo::following`], or when an audit is due.
    pub fn should_attest(&self, audit_due: bool, now: Timestamp) -> bool {
        audit_due || self.following(now)
    }

    /// Records the pods' answers; every pod current (and at least one) puts the files in effect
    /// at the latest install time.
    pub fn record(&mut self, pods: Vec<(String, PodFiles)>) {
        let times: Vec<Timestamp> =
            pods.iter().filter_map(|(_, f)| if let PodFiles::Current(t) = f { Some(*t) } else { None }).collect();
        if !pods.is_empty() && times.len() == pods.len() {
            // a pod that installed the files before moat planned them (e.g. at start) counts from then
            self.in_effect_at = times.into_iter().max().map(|t| t.max(self.since));
        } else if self.in_effect_at.is_some() && pods.iter().any(|(_, f)| !matches!(f, PodFiles::Current(_))) {
            // an audit found a pod behind again (e.g. a pod replaced by an older template)
            self.in_effect_at = None;
        }
        self.pods = pods;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn files_are_in_effect_when_every_pod_runs_them_from_the_latest_install() {
        let mut m = Memo::next(None, "d1".into(), vec![Revocation::Password("a".into())], t(100));
        assert!(m.should_attest(false, t(101)));
        m.record(vec![("p-0".into(), PodFiles::Current(t(103))), ("p-1".into(), PodFiles::Behind)]);
        assert_eq!(m.in_effect_at, None);
        m.record(vec![("p-0".into(), PodFiles::Current(t(103))), ("p-1".into(), PodFiles::Current(t(106)))]);
        assert_eq!(m.in_effect_at, Some(t(106)));
        assert!(!m.should_attest(false, t(107)), "attested files are checked again only at audits");
        assert!(m.should_attest(true, t(107)));
        // an audit that finds a pod behind takes the files out of effect again
        m.record(vec![("p-0".into(), PodFiles::Current(t(103))), ("p-1".into(), PodFiles::Unreachable("x".into()))]);
        assert_eq!(m.in_effect_at, None);
    }

    #[test]
    fn pending_revocations_survive_newer_files_and_following_stops_after_a_while() {
        let m = Memo::next(None, "d1".into(), vec![Revocation::Password("a".into())], t(100));
        let n = Memo::next(Some(&m), "d2".into(), vec![], t(102));
        assert_eq!((n.since, n.revocations.len()), (t(100), 1), "the revocation is still pending since t=100");
        let mut done = n.clone();
        done.record(vec![("p-0".into(), PodFiles::Current(t(104)))]);
        let fresh = Memo::next(Some(&done), "d3".into(), vec![], t(110));
        assert_eq!((fresh.since, fresh.revocations.len()), (t(110), 0));
        assert!(!fresh.should_attest(false, t(110 + FOLLOW_FOR.as_secs() as i64)));
        assert_eq!(Memo::next(Some(&done), "d2".into(), vec![], t(120)), done, "the same files change nothing");
    }
}
