//! MQTT usernames and `MqttUser` specs.

use crate::crd::common::{GoDuration, matches_duration_pattern};
use crate::crd::user::MqttUserSpec;

use super::{FieldError, broker_ref, describe_char};

/// Longest username (characters) `USERNAME_PATTERN` admits.
pub const MAX_USERNAME_CHARS: usize = 128;

/// Checks a username against exactly [`crate::crd::user::USERNAME_PATTERN`]
/// (`^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$`).
///
/// Such a username cannot contain anything Mosquitto reads differently in its password file
/// (`:`, whitespace, line breaks, NUL) or ACL file, nor the ACL wildcards `+`, `#`, `/`, `%`.
pub fn username(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("username must not be empty".into());
    }
    if let Some(c) = name.chars().find(|c| !is_username_char(*c)) {
        let why = match c {
            ':' => " (it separates the username from the hash in Mosquitto's password file)",
            '+' | '#' | '/' | '%' => " (an MQTT wildcard or ACL pattern character)",
            c if c.is_control() || c.is_whitespace() => " (Mosquitto's files are line- and space-separated)",
            _ => "",
        };
        return Err(format!(
            "username must not contain {}{why}; allowed are ASCII letters, digits, '.', '_', '-' and '@'",
            describe_char(c)
        ));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("username must start with an ASCII letter or digit".into());
    }
    if name.len() > MAX_USERNAME_CHARS {
        return Err(format!("username is longer than {MAX_USERNAME_CHARS} characters"));
    }
    Ok(())
}

/// Usernames moat keeps for its own attestation logins (see `plan::canary`): they start with '_',
/// which [`username`] refuses, so no MqttUser can claim them; every other character is allowed, so
/// Mosquitto's files read them like any other.
pub const RESERVED_USERNAMES: [&str; 2] = ["_moat-canary-1", "_moat-canary-2"];

/// A username the password and ACL files may carry: an MqttUser username or a reserved one.
pub fn file_username(name: &str) -> Result<(), String> {
    if RESERVED_USERNAMES.contains(&name) { Ok(()) } else { username(name) }
}

fn is_username_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-')
}

/// Validates an `MqttUser` named `name` and returns its effective MQTT username
/// (`spec.username`, or `metadata.name` when that is unset).
///
/// Mirrors the CRD: the username/metadata.name rule, `authentication` needing a password or a
/// certificate, the `secretRef` name and key patterns, the duration syntax of `rotateAfter`,
/// `validity` and `renewBefore`, and their lower bounds ([`super::lifetime`]).
pub fn user_spec(name: &str, spec: &MqttUserSpec) -> Result<String, FieldError> {
    broker_ref(&spec.broker_ref.name)?;
    let effective = match &spec.username {
        Some(u) => {
            username(u).map_err(|m| FieldError::new("spec.username", m))?;
            u.clone()
        }
        None => {
            username(name).map_err(|m| {
                FieldError::new(
                    "metadata.name",
                    format!("metadata.name is not a valid MQTT username; set spec.username ({m})"),
                )
            })?;
            name.to_string()
        }
    };
    let auth = &spec.authentication;
    if auth.password.is_none() && auth.certificate.is_none() {
        return Err(FieldError::new(
            "spec.authentication",
            "set authentication.password, authentication.certificate or both",
        ));
    }
    if let Some(password) = &auth.password {
        if let Some(secret) = &password.secret_ref {
            secret_name(&secret.name).map_err(|m| FieldError::new("spec.authentication.password.secretRef.name", m))?;
            secret_key(&secret.key).map_err(|m| FieldError::new("spec.authentication.password.secretRef.key", m))?;
        }
        if let Some(rotate) = &password.rotate_after {
            let field = "spec.authentication.password.rotateAfter";
            super::lifetime::rotate_after(field, duration(rotate).map_err(|m| FieldError::new(field, m))?)?;
        }
    }
    if let Some(cert) = &auth.certificate {
        let validity =
            duration(&cert.validity).map_err(|m| FieldError::new("spec.authentication.certificate.validity", m))?;
        let renew = duration(&cert.renew_before)
            .map_err(|m| FieldError::new("spec.authentication.certificate.renewBefore", m))?;
        super::lifetime::LEAF.check("spec.authentication.certificate", validity, renew)?;
    }
    Ok(effective)
}

/// Checks [`crate::crd::common::DURATION_PATTERN`] (`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`,
/// at most 32 characters) and parses the duration the way CEL's `duration()` does.
fn duration(d: &GoDuration) -> Result<std::time::Duration, String> {
    let text = d.0.as_str();
    if text.chars().count() > 32 {
        return Err("duration is longer than 32 characters".into());
    }
    if !matches_duration_pattern(text) {
        return Err(format!(
            "{} is not a duration such as 90s, 15m, 720h or 1h30m (units ns, us, ms, s, m, h)",
            super::quote(text)
        ));
    }
    d.parse()
}

/// `SecretKeyRef.name`: DNS subdomain (`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`), 1 to 253 characters.
fn secret_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err("must be 1 to 253 characters long".into());
    }
    for label in name.split('.') {
        let b = label.as_bytes();
        let ok = !b.is_empty()
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-';
        if !ok {
            return Err(format!(
                "{} is not a valid Secret name (lower-case letters, digits, '-' and '.')",
                super::quote(name)
            ));
        }
    }
    Ok(())
}

/// `SecretKeyRef.key`: `^[-._a-zA-Z0-9]+$`, 1 to 253 characters.
fn secret_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 253 {
        return Err("must be 1 to 253 characters long".into());
    }
    if !key.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_')) {
        return Err(format!("{} is not a valid Secret key (letters, digits, '-', '.' and '_')", super::quote(key)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::common::{BrokerRef, SecretKeyRef};
    use crate::crd::user::{CertificateAuth, PasswordAuth, UserAuthentication};

    fn spec(username: Option<&str>) -> MqttUserSpec {
        MqttUserSpec {
            broker_ref: BrokerRef { name: "prod".into() },
            username: username.map(str::to_string),
            authentication: UserAuthentication::default(),
        }
    }

    #[test]
    fn username_accepts_the_pattern() {
        for ok in ["a", "Z", "0", "alice", "svc.sensor_01@site-3", &"a".repeat(128)] {
            assert_eq!(username(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn username_rejects_hostile_input_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("al:ice", "':'"),
            ("alice\n", "line break"),
            ("alice\r", "line break"),
            ("al\0ice", "NUL"),
            ("al ice", "space"),
            ("al\tice", "tab"),
            ("a+b", "'+'"),
            ("a#b", "'#'"),
            ("a/b", "'/'"),
            ("%u", "'%'"),
            ("élodie", "'é'"),
            (".alice", "start"),
            ("-alice", "start"),
            ("@x", "start"),
        ];
        for (bad, needle) in cases {
            let err = username(bad).expect_err(bad);
            assert!(err.contains(needle), "{bad:?}: {err}");
            assert!(!err.contains('\n'), "message must stay on one line: {err:?}");
        }
        assert!(username(&"a".repeat(129)).unwrap_err().contains("128"));
    }

    #[test]
    fn user_spec_uses_spec_username_or_metadata_name() {
        assert_eq!(user_spec("whatever-name", &spec(Some("alice"))), Ok("alice".into()));
        assert_eq!(user_spec("bob", &spec(None)), Ok("bob".into()));
    }

    #[test]
    fn user_spec_names_the_bad_field() {
        let e = user_spec("ok", &spec(Some("al:ice"))).unwrap_err();
        assert_eq!(e.field, "spec.username");
        // a name that is fine for Kubernetes but not for MQTT needs spec.username
        let e = user_spec("a".repeat(129).as_str(), &spec(None)).unwrap_err();
        assert_eq!(e.field, "metadata.name");
        assert!(e.message.contains("set spec.username"), "{e}");
        let mut s = spec(Some("alice"));
        s.broker_ref.name = "Prod".into();
        assert_eq!(user_spec("x", &s).unwrap_err().field, "spec.brokerRef.name");
    }

    #[test]
    fn user_spec_requires_an_authentication_method() {
        let mut s = spec(Some("alice"));
        s.authentication = UserAuthentication { password: None, certificate: None };
        assert_eq!(user_spec("x", &s).unwrap_err().field, "spec.authentication");
        s.authentication.certificate = Some(CertificateAuth::default());
        assert!(user_spec("x", &s).is_ok());
    }

    #[test]
    fn user_spec_checks_renew_before_within_half_of_validity() {
        let mut s = spec(Some("alice"));
        s.authentication.certificate =
            Some(CertificateAuth { validity: GoDuration::new("24h"), renew_before: GoDuration::new("13h") });
        assert_eq!(user_spec("x", &s).unwrap_err().field, "spec.authentication.certificate.renewBefore");
        s.authentication.certificate =
            Some(CertificateAuth { validity: GoDuration::new("24h"), renew_before: GoDuration::new("1h30m") });
        assert!(user_spec("x", &s).is_ok());
        s.authentication.certificate =
            Some(CertificateAuth { validity: GoDuration::new("1d"), renew_before: GoDuration::new("1h") });
        assert_eq!(user_spec("x", &s).unwrap_err().field, "spec.authentication.certificate.validity");
    }

    #[test]
    fn user_spec_checks_secret_ref_and_rotation() {
        let mut s = spec(Some("alice"));
        s.authentication.password = Some(PasswordAuth {
            secret_ref: Some(SecretKeyRef { name: "My_Secret".into(), key: "password".into() }),
            rotate_after: None,
        });
        assert_eq!(user_spec("x", &s).unwrap_err().field, "spec.authentication.password.secretRef.name");
        s.authentication.password = Some(PasswordAuth {
            secret_ref: Some(SecretKeyRef { name: "creds.v1".into(), key: "pass word".into() }),
            rotate_after: None,
        });
        assert_eq!(user_spec("x", &s).unwrap_err().field, "spec.authentication.password.secretRef.key");
        s.authentication.password = Some(PasswordAuth { secret_ref: None, rotate_after: Some(GoDuration::new("-1h")) });
        assert_eq!(user_spec("x", &s).unwrap_err().field, "spec.authentication.password.rotateAfter");
        s.authentication.password =
            Some(PasswordAuth { secret_ref: None, rotate_after: Some(GoDuration::new("720h")) });
        assert!(user_spec("x", &s).is_ok());
    }

    #[test]
    fn duration_pattern_matches_go_syntax_only() {
        for ok in ["1s", "90s", "1.5h", "1h30m", "10ms", "5us", "5µs", "3ns", "0s", "1m1s"] {
            assert!(matches_duration_pattern(ok), "{ok}");
        }
        for bad in ["", "1", "h", "1d", "1.h", ".5h", "-1h", "+1h", "1h ", " 1h", "1H", "1hm"] {
            assert!(!matches_duration_pattern(bad), "{bad:?}");
        }
    }
}
