//! The pure *plan* step: from a validated broker, its users and ACLs, the existing material and
//! the clock, decide every file and credential the broker needs and what becomes of each user
//! and ACL. Shared by the controllers and by the offline `moat render`, so both produce exactly
//! the same artifacts.
//!
//! Nothing here reads the clock, the network or the cluster. Randomness (new keys, salts,
//! generated passwords) is drawn only when something is missing or due — never for material that
//! is still valid.

pub mod broker;
pub mod canary;
pub mod files;
pub mod ledger;
pub mod objects;
pub mod revocation;
pub mod user;

use std::fmt;

/// A password, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([redacted])")
    }
}

impl Password {
    /// The password's [`PasswordDigest`].
    pub fn digest(&self) -> PasswordDigest {
        use sha2::Digest as _;
        PasswordDigest(sha2::Sha256::digest(self.0.as_bytes()).into())
    }
}

/// SHA-256 of a password: tells whether two reads are the same password (the user controller
/// asks whether the broker has in effect the password it sees, however its Secret was rewritten).
/// Held in memory only, never printed: unsalted, it would let a weak password be guessed.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordDigest([u8; 32]);

impl fmt::Debug for PasswordDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordDigest([redacted])")
    }
}

/// Failures of the plan step (corrupt stored material or an internal invariant).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Certificate material.
    #[error("certificates: {0}")]
    Pki(#[from] crate::pki::PkiError),
    /// Password file.
    #[error("password file: {0}")]
    Passwd(#[from] crate::render::passwd::PasswdError),
    /// Password shards.
    #[error("password shards: {0}")]
    Shard(#[from] crate::render::passwd::ShardError),
    /// ACL file.
    #[error("ACL file: {0}")]
    Acl(#[from] crate::render::acl::AclRenderError),
    /// Splitting a file over Secrets.
    #[error("sharding: {0}")]
    Split(#[from] crate::render::shard::SplitError),
    /// Stored state that cannot be read.
    #[error("{0}")]
    Corrupt(String),
}

impl PlanError {
    /// Stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            PlanError::Pki(_) => "plan_pki",
            PlanError::Passwd(_) | PlanError::Shard(_) => "plan_passwd",
            PlanError::Acl(_) => "plan_acl",
            PlanError::Split(_) => "plan_shard",
            PlanError::Corrupt(_) => "plan_corrupt",
        }
    }
}

/// Adds a std duration to a timestamp, saturating.
pub fn after(t: jiff::Timestamp, d: std::time::Duration) -> jiff::Timestamp {
    jiff::SignedDuration::try_from(d).ok().and_then(|d| t.checked_add(d).ok()).unwrap_or(jiff::Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::Password;

    #[test]
    fn a_password_and_its_digest_are_never_printed_and_the_digest_tells_passwords_apart() {
        let (a, b) = (Password("S3cret-one".into()), Password("S3cret-two".into()));
        assert_eq!(a.digest(), Password("S3cret-one".into()).digest());
        assert_ne!(a.digest(), b.digest());
        let printed = format!("{a:?} {:?}", a.digest());
        assert!(!printed.contains("S3cret") && printed.matches("redacted").count() == 2, "{printed}");
    }
}
