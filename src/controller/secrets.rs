//! Reading Secrets: one key as text (decoding only that key), a TLS pair, all string data.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

/// One key of a Secret as text (None when absent or not UTF-8): decodes only that key.
pub fn secret_text(s: &Secret, key: &str) -> Option<String> {
    s.data.as_ref()?.get(key).and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// The certificate and private key of a TLS Secret (`tls.crt`, `tls.key`).
pub fn issued_from(s: &Secret) -> Option<crate::pki::Issued> {
    Some(crate::pki::Issued { cert_pem: secret_text(s, "tls.crt")?, key_pem: secret_text(s, "tls.key")? })
}

/// Decoded string data of a Secret.
pub fn secret_strings(s: &Secret) -> BTreeMap<String, String> {
    s.data.iter().flatten().filter_map(|(k, v)| String::from_utf8(v.0.clone()).ok().map(|t| (k.clone(), t))).collect()
}
