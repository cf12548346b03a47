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

/// The generated passwords and private keys stored in the Secrets of `ns` (read with kubectl):
/// each whole value and, for PEM, every base64 line of its body. Panics when kubectl fails, except
/// when the namespace is already gone (this runs when an operator stops): it holds no Secrets.
pub fn stored_secret_values(ns: &str) -> Vec<String> {
    use base64::Engine;
    let out = crate::harness::kubectl(&["-n", ns, "get", "secrets", "-o", "json"]);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains(&format!("namespaces \"{ns}\" not found")) {
            return vec![];
        }
        panic!("kubectl -n {ns} get secrets failed ({}): {stderr}", out.status);
    }
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("kubectl -n {ns} get secrets -o json printed no JSON list: {e}"));
    let mut values = vec![];
    for item in list["items"].as_array().into_iter().flatten() {
        for key in ["password", "tls.key", "ca.key", "fingerprint.key"] {
            let Some(encoded) = item["data"][key].as_str() else { continue };
            let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap_or_default();
            let text = String::from_utf8_lossy(&decoded).into_owned();
            values.extend(text.lines().filter(|l| !l.starts_with("-----") && l.len() >= 16).map(String::from));
            values.push(text);
        }
    }
    values
}
