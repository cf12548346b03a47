//! Lean caches: what the reflector stores keep of the objects that grow with the users.
//!
//! With 10,000 users the per-user Secrets and the MqttUsers were most of the operator's memory.
//! The stores keep of them only what a reconcile reads, plus a digest of the rest so that the
//! no-op comparison still sees every change:
//!
//! - a per-user Secret (credentials or client certificate) keeps the values moat reads
//!   (`password`, `tls.crt`, `tls.key`) and, under [`DATA_DIGEST_KEY`] (a key no Secret can
//!   have), the SHA-256 of its whole `data`; [`crate::controller::apply::drift`] compares a desired
//!   Secret's data with that digest;
//! - an MqttUser keeps its status but not its compliance checks (recomputed at every reconcile
//!   from the broker's verdict): [`crate::crd::ComplianceStatus::checks_digest`] stands for them.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::crd::{ComplianceStatus, MqttUser, MqttUserStatus};
use crate::names;

/// The key under which a lean Secret keeps the digest of its data (not a valid Secret key, so
/// it never meets a real one).
pub const DATA_DIGEST_KEY: &str = "\0moat-data-sha256";

/// The keys of a per-user Secret a reconcile reads.
const KEPT_KEYS: [&str; 3] = ["password", "tls.crt", "tls.key"];

/// The digest of a Secret's `data` as JSON (keys sorted, values base64, as the API has them).
pub fn data_digest(data: &Value) -> String {
    crate::hex(&Sha256::digest(data.to_string().as_bytes()))
}

/// Makes a per-user Secret (labelled [`names::USER_LABEL`]) lean; other Secrets stay whole.
pub fn secret(s: &mut Secret) {
    let per_user = s.metadata.labels.as_ref().is_some_and(|l| l.contains_key(names::USER_LABEL));
    let Some(data) = s.data.as_mut().filter(|_| per_user) else { return };
    let digest = data_digest(&serde_json::to_value(&*data).unwrap_or_default());
    data.retain(|k, _| KEPT_KEYS.contains(&k.as_str()));
    data.insert(DATA_DIGEST_KEY.into(), ByteString(digest.into_bytes()));
}

/// When `observed` is a lean Secret's data: whether `desired` data is what it was made from.
pub fn lean_data_matches(desired: &Value, observed: &Value) -> Option<bool> {
    use base64::Engine;
    let digest = observed.get(DATA_DIGEST_KEY)?.as_str()?;
    let digest = base64::engine::general_purpose::STANDARD.decode(digest).ok()?;
    Some(digest == data_digest(desired).into_bytes())
}

/// Makes an MqttUser lean: its compliance checks give way to their digest.
pub fn user(u: &mut MqttUser) {
    if let Some(c) = u.status.as_mut().and_then(|s| s.compliance.as_mut()) {
        compliance(c);
    }
}

fn compliance(c: &mut ComplianceStatus) {
    if c.checks_digest.is_none() {
        c.checks_digest = Some(crate::hex(&Sha256::digest(serde_json::to_vec(&c.checks).unwrap_or_default())));
        c.checks = vec![];
    }
}

/// `status` as the lean cache would show it (to compare with a cached status).
pub fn user_status(status: &MqttUserStatus) -> MqttUserStatus {
    let mut s = status.clone();
    if let Some(c) = s.compliance.as_mut() {
        compliance(c);
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    pub(crate) fn user_secret(data: &[(&str, &str)]) -> Secret {
        let mut s = Secret::default();
        s.metadata.labels = Some(BTreeMap::from([(names::USER_LABEL.to_string(), "u".to_string())]));
        s.data = Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect());
        s
    }

    #[test]
    fn a_lean_secret_keeps_what_is_read_and_still_tells_any_change() {
        let whole = user_secret(&[("username", "u"), ("password", "p"), ("host", "h"), ("port", "1883")]);
        let mut lean = whole.clone();
        secret(&mut lean);
        let kept: Vec<&String> = lean.data.as_ref().unwrap().keys().collect();
        assert_eq!(kept, vec![DATA_DIGEST_KEY, "password"]);
        let lean_json = serde_json::to_value(&lean).unwrap();
        let same = serde_json::to_value(&whole).unwrap();
        assert_eq!(lean_data_matches(&same["data"], &lean_json["data"]), Some(true));
        for (k, v) in [("host", "elsewhere"), ("password", "q"), ("extra", "x")] {
            let mut other = whole.clone();
            other.data.as_mut().unwrap().insert(k.into(), ByteString(v.as_bytes().to_vec()));
            let other = serde_json::to_value(&other).unwrap();
            assert_eq!(lean_data_matches(&other["data"], &lean_json["data"]), Some(false), "{k} changed");
        }
        // a whole Secret is compared as before
        assert_eq!(lean_data_matches(&same["data"], &same["data"]), None);
    }

    #[test]
    fn other_secrets_stay_whole() {
        let mut s = user_secret(&[("passwd", "x")]);
        s.metadata.labels = None;
        let before = s.clone();
        secret(&mut s);
        assert_eq!(s, before);
    }

    #[test]
    fn a_lean_user_status_equals_the_lean_form_of_the_same_status_only() {
        let check = |message: &str| -> crate::crd::ComplianceCheck {
            serde_json::from_value(serde_json::json!({"id": "MOAT-PW-001", "measure": "passwords", "severity": "high",
                "passed": true, "result": "Pass", "message": message, "remediation": "r"}))
            .unwrap()
        };
        let status = |message: &str| MqttUserStatus {
            compliance: Some(ComplianceStatus { checks: vec![check(message)], ..Default::default() }),
            ..Default::default()
        };
        let mut u =
            MqttUser::new("u", serde_json::from_value(serde_json::json!({"brokerRef": {"name": "b"}})).unwrap());
        u.status = Some(status("a"));
        user(&mut u);
        let cached = u.status.clone().unwrap();
        assert!(cached.compliance.as_ref().unwrap().checks.is_empty());
        assert_eq!(user_status(&status("a")), cached);
        assert_ne!(user_status(&status("b")), cached);
        // making it lean twice changes nothing
        user(&mut u);
        assert_eq!(u.status.unwrap(), cached);
    }
}
