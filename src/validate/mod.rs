//! Pure validation of user input that the CRD schema cannot express (or that must also hold
//! for offline rendering): usernames, topic filters, CIDRs, durations, password strength.
//!
//! The apiserver enforces the CRDs' OpenAPI patterns and CEL rules (`x-kubernetes-validations`)
//! at admission. The functions here mirror those rules exactly, so that `moat render` (offline)
//! and the controller reject the same inputs the apiserver does, and so that nothing that slipped
//! past admission (an older CRD, a direct etcd write, a bug) can reach a rendered file.
//!
//! Every function is pure: no I/O, no clock, no global state. Error messages name the field and
//! the rule; they quote hostile input only in escaped, truncated form, and never contain a password.

mod acl;
pub mod lifetime;
mod network;
mod password;
mod topic;
mod user;

use std::fmt::Write as _;

pub use acl::acl_spec;
pub use network::{cidr, covers_public_internet, firewall_spec, public_cidrs};
pub use password::{
    MAX_PASSWORD_BYTES, WeakPassword, character_classes, entropy_bits, is_common_password, mosquitto_password,
    password_strength,
};
pub use topic::{MAX_TOPIC_CHARS, topic_filter};
pub use user::{MAX_USERNAME_CHARS, RESERVED_USERNAMES, file_username, user_spec, username};

/// A validation failure that names the offending field, e.g. `spec.rules[2].topic: ...`.
///
/// Used as the message of `Ready=False, reason=InvalidSpec`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Path of the field in the object, in the CRD's camelCase spelling (`spec.ingress[0].from[1].cidr`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// Quotes untrusted text for an error message: escaped (no raw line breaks or control
/// characters) and cut after 64 characters, so a hostile value cannot forge log lines or
/// blow up a status message.
pub fn quote(text: &str) -> String {
    const MAX: usize = 64;
    let mut out = String::from("\"");
    for (i, c) in text.chars().enumerate() {
        if i == MAX {
            out.push_str("\"...");
            return out;
        }
        let _ = write!(out, "{}", c.escape_debug());
    }
    out.push('"');
    out
}

/// Describes a character for an error message (`'a'`, `U+000A (line feed)`).
fn describe_char(c: char) -> String {
    match c {
        '\0' => "a NUL character".into(),
        '\n' | '\r' => "a line break".into(),
        '\t' => "a tab".into(),
        ' ' => "a space".into(),
        c if c.is_control() || c.is_whitespace() => format!("the character U+{:04X}", c as u32),
        c => format!("'{c}'"),
    }
}

/// Checks the Kubernetes object name pattern of `brokerRef.name` (`^[a-z]([-a-z0-9]*[a-z0-9])?$`,
/// 1 to 52 characters), as the CRD schema does.
fn broker_ref_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > 52 {
        return Err("must be 1 to 52 characters long".into());
    }
    let bytes = name.as_bytes();
    let ok_inner = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    if !bytes[0].is_ascii_lowercase() {
        return Err("must start with a lower-case letter".into());
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii() && ok_inner(*c as u8))) {
        return Err(format!("must consist of lower-case letters, digits and '-', found {}", describe_char(c)));
    }
    if bytes[bytes.len() - 1] == b'-' {
        return Err("must end with a lower-case letter or digit".into());
    }
    Ok(())
}

/// Checks `spec.brokerRef.name`.
fn broker_ref(name: &str) -> Result<(), FieldError> {
    broker_ref_name(name).map_err(|m| FieldError::new("spec.brokerRef.name", m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_error_display_names_the_field() {
        let e = FieldError::new("spec.rules[2].topic", "'#' must be the last level");
        assert_eq!(e.to_string(), "spec.rules[2].topic: '#' must be the last level");
    }

    #[test]
    fn quote_escapes_line_breaks_and_truncates() {
        assert_eq!(quote("a\nb"), "\"a\\nb\"");
        assert_eq!(quote("\0"), "\"\\0\"");
        let long = "x".repeat(200);
        let q = quote(&long);
        assert!(q.len() < 80 && q.ends_with("\"..."), "{q}");
    }

    #[test]
    fn broker_ref_name_follows_the_schema_pattern() {
        for ok in ["a", "prod", "my-broker-1", &"a".repeat(52)] {
            assert!(broker_ref_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1abc", "-a", "a-", "A", "a_b", "a.b", "a\n", &"a".repeat(53)] {
            assert!(broker_ref_name(bad).is_err(), "{bad:?}");
        }
    }
}
