//! The canary logins (pure): two password identities in no ACL that an audit logs in as, to show
//! that an identity without grants can neither publish nor read, and that one user cannot take
//! over another user's session by its client id.
//!
//! Their usernames start with `_`, which the MqttUser username rule forbids (the first character
//! must be alphanumeric), so no MqttUser can ever claim them; no ACL names them (per-user rules go
//! only to usernames an MqttUser holds). The passwords are random, live only in the CA Secret
//! (beside the CA key, which is worth strictly more) and in the password file as PBKDF2 hashes,
//! and are rotated daily. They are not rotated at every audit: that would write two Secrets and
//! reload every pod at each audit, where an audit with nothing changed must write nothing.

use std::time::Duration;

use jiff::Timestamp;

use super::{Password, PlanError, after};
use crate::render::passwd::generate_password;

/// The identity an audit logs in as to publish, subscribe and take over a session.
pub const ATTACKER: &str = crate::validate::RESERVED_USERNAMES[0];
/// The identity whose session [`ATTACKER`] tries to take over.
pub const VICTIM: &str = crate::validate::RESERVED_USERNAMES[1];
/// Key in the CA Secret holding the logins (see [`Logins::encode`]).
pub const KEY_LOGINS: &str = "canary.logins";
/// How long a pair of canary passwords lives.
pub const ROTATION: Duration = Duration::from_secs(24 * 3600);
/// Length of a canary password (62-character alphabet: about 190 bits).
const PASSWORD_LEN: usize = 32;

/// One canary login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    pub username: &'static str,
    pub password: Password,
}

/// The canary logins and when they were made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logins {
    pub issued: Timestamp,
    pub attacker: Login,
    pub victim: Login,
}

impl Logins {
    fn generate(now: Timestamp) -> Logins {
        let login = |username| Login { username, password: Password(generate_password(PASSWORD_LEN)) };
        Logins { issued: now, attacker: login(ATTACKER), victim: login(VICTIM) }
    }

    /// `(username, password)` pairs for the password file.
    pub fn password_entries(&self) -> [(String, String); 2] {
        [&self.attacker, &self.victim].map(|l| (l.username.to_owned(), l.password.0.clone()))
    }

    /// The stored form: `issued <RFC 3339>` and one `<username> <password>` line per login.
    pub fn encode(&self) -> String {
        format!(
            "issued {}\n{} {}\n{} {}\n",
            self.issued, self.attacker.username, self.attacker.password.0, self.victim.username, self.victim.password.0
        )
    }

    /// Parses [`Logins::encode`]'s form. The error never contains a password.
    pub fn decode(text: &str) -> Result<Logins, PlanError> {
        let corrupt = |why: &str| PlanError::Corrupt(format!("{KEY_LOGINS}: {why}"));
        let mut lines = text.lines();
        let issued = lines
            .next()
            .and_then(|l| l.strip_prefix("issued "))
            .and_then(|t| t.parse::<Timestamp>().ok())
            .ok_or_else(|| corrupt("the first line is not `issued <time>`"))?;
        let mut login = |username: &'static str| {
            let line = lines.next().ok_or_else(|| corrupt("a login is missing"))?;
            match line.split_once(' ') {
                Some((u, p)) if u == username && crate::validate::mosquitto_password(p).is_ok() => {
                    Ok(Login { username, password: Password(p.to_owned()) })
                }
                _ => Err(corrupt(&format!("the line for {username} does not parse"))),
            }
        };
        let attacker = login(ATTACKER)?;
        let victim = login(VICTIM)?;
        Ok(Logins { issued, attacker, victim })
    }
}

/// What [`plan`] decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Planned {
    /// The logins in the password file (None when attestation is off).
    pub current: Option<Logins>,
    /// The logins this plan replaced: the pods run them until they load the new password file.
    pub replaced: Option<Logins>,
    /// When the current logins are rotated.
    pub next_event: Option<Timestamp>,
}

/// Keeps the stored logins while they are young, makes new ones when they are missing or due,
/// and drops them when attestation is off. Rotation falls half an audit interval after the day
/// is over, so that it does not coincide with the audits that run on the interval from the
/// reconcile that made them.
pub fn plan(existing: Option<Logins>, enabled: bool, audit_interval: Duration, now: Timestamp) -> Planned {
    if !enabled {
        return Planned::default();
    }
    let due = |l: &Logins| after(l.issued, ROTATION + audit_interval / 2);
    let (current, replaced) = match existing {
        Some(l) if due(&l) > now => (l, None),
        previous => (Logins::generate(now), previous),
    };
    Planned { next_event: Some(due(&current)), current: Some(current), replaced }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn logins_round_trip_and_never_show_a_password_in_an_error() {
        let l = Logins::generate(t(0));
        assert_ne!(l.attacker.password, l.victim.password);
        assert_eq!(Logins::decode(&l.encode()).unwrap(), l);
        let damaged = l.encode().replace(ATTACKER, "someone");
        let err = Logins::decode(&damaged).unwrap_err().to_string();
        assert!(err.contains(ATTACKER) && !err.contains(&l.victim.password.0), "{err}");
        assert!(Logins::decode("").is_err());
        assert!(!format!("{l:?}").contains(&l.attacker.password.0), "Debug redacts the passwords");
    }

    #[test]
    fn no_mqtt_user_can_hold_a_canary_username() {
        for u in [ATTACKER, VICTIM] {
            assert!(crate::validate::username(u).is_err(), "{u} must be reserved");
        }
    }

    #[test]
    fn logins_are_kept_while_young_rotated_when_due_and_dropped_when_attestation_is_off() {
        let first = plan(None, true, HOUR, t(0));
        let made = first.current.clone().unwrap();
        assert_eq!(first.replaced, None);
        let rotation = t(24 * 3600 + 1800);
        assert_eq!(first.next_event, Some(rotation), "half an interval after the day");

        let kept = plan(first.current.clone(), true, HOUR, t(23 * 3600));
        assert_eq!((kept.current.as_ref(), kept.replaced.as_ref()), (Some(&made), None));

        let rotated = plan(first.current.clone(), true, HOUR, rotation);
        assert_ne!(rotated.current.as_ref().unwrap().attacker.password, made.attacker.password);
        assert_eq!(rotated.replaced, Some(made));
        assert_eq!(plan(first.current, false, HOUR, t(60)), Planned::default());
    }
}
