//! Secret hygiene: operator logs must never carry key material, password hashes or tokens.

/// Panics when `log` contains a private key, a certificate request for one, a password hash
/// line, or a bearer token.
pub fn check_log(log: &str) {
    for needle in ["PRIVATE KEY-----", "$7$", "Bearer ", "Authorization:"] {
        assert!(!log.contains(needle), "operator log contains {needle:?}");
    }
}

/// Panics when any of `secrets` (generated passwords, keys) appears in `text`.
pub fn assert_absent(text: &str, secrets: &[String], what: &str) {
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        assert!(!text.contains(s.as_str()), "{what} contains a secret value");
    }
}
