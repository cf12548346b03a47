//! Lower bounds of certificate lifetimes and password rotation: a `validity: 1ns` or a
//! `rotateAfter: 0s` would make every reconcile re-issue, re-hash, rewrite and reload. The CRDs
//! carry the same bounds as CEL rules (see the `*_RULE` constants), so admission and the
//! operator refuse the same specs.

use std::time::Duration;

use super::FieldError;

/// Bounds of one kind of certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    /// Shortest `validity`.
    pub min_validity: Duration,
    /// Shortest `renewBefore`.
    pub min_renew_before: Duration,
}

/// A broker's CA.
pub const CA: Lifetime =
    Lifetime { min_validity: Duration::from_secs(24 * 3600), min_renew_before: Duration::from_secs(3600) };
/// Server and client certificates.
pub const LEAF: Lifetime =
    Lifetime { min_validity: Duration::from_secs(3600), min_renew_before: Duration::from_secs(60) };
/// Shortest `rotateAfter` of a password.
pub const MIN_ROTATE_AFTER: Duration = Duration::from_secs(3600);

/// CEL rules of a CA policy (`validity`, `renewBefore`), as in [`CA`].
pub const CA_RULES: [(&str, &str); 3] = [
    ("duration(self.validity) >= duration('24h')", "validity must be at least 24h"),
    ("duration(self.renewBefore) >= duration('1h')", "renewBefore must be at least 1h"),
    (
        "duration(self.renewBefore) + duration(self.renewBefore) <= duration(self.validity)",
        "renewBefore must be at most half of validity",
    ),
];
/// CEL rules of a server or client certificate policy, as in [`LEAF`].
pub const LEAF_RULES: [(&str, &str); 3] = [
    ("duration(self.validity) >= duration('1h')", "validity must be at least 1h"),
    ("duration(self.renewBefore) >= duration('1m')", "renewBefore must be at least 1m"),
    (
        "duration(self.renewBefore) + duration(self.renewBefore) <= duration(self.validity)",
        "renewBefore must be at most half of validity",
    ),
];
/// CEL rule of a password's `rotateAfter`, as in [`MIN_ROTATE_AFTER`].
pub const ROTATE_AFTER_RULE: (&str, &str) =
    ("!has(self.rotateAfter) || duration(self.rotateAfter) >= duration('1h')", "rotateAfter must be at least 1h");

/// The CEL rules as `x-kubernetes-validations` entries.
pub fn cel(rules: &[(&str, &str)]) -> serde_json::Value {
    rules.iter().map(|(rule, message)| serde_json::json!({"rule": rule, "message": message})).collect()
}

impl Lifetime {
    /// Checks parsed `validity` and `renewBefore` of the policy at `field` against the bounds;
    /// the messages are those of the CEL rules.
    pub fn check(&self, field: &str, validity: Duration, renew_before: Duration) -> Result<(), FieldError> {
        let rules = if *self == CA { &CA_RULES } else { &LEAF_RULES };
        let fail = |i: usize, sub: &str| Err(FieldError::new(format!("{field}.{sub}"), rules[i].1));
        if validity < self.min_validity {
            return fail(0, "validity");
        }
        if renew_before < self.min_renew_before {
            return fail(1, "renewBefore");
        }
        if renew_before.saturating_mul(2) > validity {
            return fail(2, "renewBefore");
        }
        Ok(())
    }
}

/// Checks a parsed `rotateAfter` at `field`.
pub fn rotate_after(field: &str, d: Duration) -> Result<(), FieldError> {
    if d < MIN_ROTATE_AFTER {
        return Err(FieldError::new(field, ROTATE_AFTER_RULE.1));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(3600);

    #[test]
    fn the_degenerate_lifetimes_of_the_red_team_are_refused() {
        // validity 1ns / renewBefore 0s and rotateAfter 0s made every reconcile re-issue and re-hash
        assert!(LEAF.check("c", Duration::from_nanos(1), Duration::ZERO).is_err());
        assert!(LEAF.check("c", H, Duration::ZERO).is_err());
        assert!(rotate_after("r", Duration::ZERO).is_err());
        assert!(LEAF.check("c", 90 * 24 * H, 15 * 24 * H).is_ok());
        assert!(CA.check("c", 365 * 24 * H, 30 * 24 * H).is_ok());
        assert!(CA.check("c", 12 * H, H).is_err(), "a CA below a day");
        assert!(LEAF.check("c", 2 * H, H + Duration::from_secs(1)).is_err(), "renewal in the first half");
        assert_eq!(LEAF.check("x", H, Duration::from_secs(30)).unwrap_err().field, "x.renewBefore");
    }
}
