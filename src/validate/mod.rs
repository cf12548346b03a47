//! Pure validation of user input that the CRD schema cannot express (or that must also hold
//! for offline rendering): usernames, topic filters, CIDRs, durations, password strength.

/// A validation failure naming the offending field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.rules[2].topic`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}
