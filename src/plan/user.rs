//! User plan: the generated password (created once, rotated only when due or asked for) and the
//! data of the credentials and certificate Secrets (the certificate itself is issued by the broker
//! plan, the only issuer).

use std::collections::BTreeMap;

use jiff::Timestamp;

use super::{Password, after};
use crate::crd::MqttUser;
use crate::crd::broker::ListenerAuthentication;
use crate::model::BrokerModel;
use crate::pki::Issued;

/// Annotation on the credentials Secret: when the password in it was generated.
pub const ROTATED_AT_ANNOTATION: &str = "mqtt.moat.dev/rotated-at";
/// Annotation on the credentials Secret: the last `mqtt.moat.dev/rotate-password` value handled.
pub const ROTATION_HANDLED_ANNOTATION: &str = "mqtt.moat.dev/rotate-password-handled";

/// The generated credentials as stored (credentials Secret).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredCredentials {
    /// The password (key `password`).
    pub password: Option<Password>,
    /// When it was generated.
    pub rotated_at: Option<Timestamp>,
    /// The rotation request already handled.
    pub rotation_handled: Option<String>,
}

/// Why a generated password is (re)generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Regenerate {
    /// There was none.
    Missing,
    /// `rotateAfter` elapsed.
    RotationDue,
    /// The rotate-password annotation changed.
    RotationRequested,
}

impl Regenerate {
    /// Event reason.
    pub fn reason(self) -> &'static str {
        match self {
            Regenerate::Missing => "PasswordGenerated",
            Regenerate::RotationDue => "PasswordRotated",
            Regenerate::RotationRequested => "PasswordRotated",
        }
    }
}

/// The decided credentials of a user with a generated password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedCredentials {
    /// Password to store.
    pub password: Password,
    /// When it was generated.
    pub rotated_at: Timestamp,
    /// Rotation request handled (copied from the annotation).
    pub rotation_handled: Option<String>,
    /// Why it was generated now; `None` = unchanged.
    pub regenerated: Option<Regenerate>,
}

/// Decides the generated password of `user` (which must use a generated password).
pub fn generated_password(
    user: &MqttUser,
    model: &BrokerModel,
    stored: &StoredCredentials,
    rotate_after: Option<std::time::Duration>,
    now: Timestamp,
) -> GeneratedCredentials {
    let request =
        user.metadata.annotations.as_ref().and_then(|a| a.get(crate::names::ROTATE_PASSWORD_ANNOTATION)).cloned();
    let reason = match (&stored.password, stored.rotated_at) {
        (None, _) | (_, None) => Some(Regenerate::Missing),
        (Some(_), _) if request.is_some() && request != stored.rotation_handled => Some(Regenerate::RotationRequested),
        (Some(_), Some(at)) if rotate_after.is_some_and(|max| now >= after(at, max)) => Some(Regenerate::RotationDue),
        _ => None,
    };
    match (reason, &stored.password, stored.rotated_at) {
        (None, Some(p), Some(at)) => GeneratedCredentials {
            password: p.clone(),
            rotated_at: at,
            rotation_handled: stored.rotation_handled.clone(),
            regenerated: None,
        },
        _ => GeneratedCredentials {
            password: Password(crate::render::passwd::generate_password(
                model.spec.passwords.generated_length as usize,
            )),
            rotated_at: now,
            rotation_handled: request.or_else(|| stored.rotation_handled.clone()),
            regenerated: Some(reason.unwrap_or(Regenerate::Missing)),
        },
    }
}

/// When a generated password next rotates by the clock.
pub fn next_rotation(rotated_at: Timestamp, rotate_after: Option<std::time::Duration>) -> Option<Timestamp> {
    rotate_after.map(|d| after(rotated_at, d))
}

/// Data of the credentials Secret: `username`, `password` and connection hints.
pub fn credentials_data(model: &BrokerModel, username: &str, password: &Password) -> BTreeMap<String, String> {
    let mut data =
        BTreeMap::from([("username".to_string(), username.to_string()), ("password".to_string(), password.0.clone())]);
    data.extend(connection_hints(model, ListenerAuthentication::Password));
    data
}

/// Data of the certificate Secret: `tls.crt`, `tls.key`, `ca.crt` (the whole trust bundle) and hints.
pub fn certificate_data(model: &BrokerModel, cert: &Issued, trust_bundle: &str) -> BTreeMap<String, String> {
    let mut data = BTreeMap::from([
        ("tls.crt".to_string(), cert.cert_pem.clone()),
        ("tls.key".to_string(), cert.key_pem.clone()),
        ("ca.crt".to_string(), trust_bundle.to_string()),
    ]);
    data.extend(connection_hints(model, ListenerAuthentication::Certificate));
    data
}

/// `host`, `port` (first listener with that authentication), `caConfigMap` (the public trust
/// bundle), and the servicebinding.io entries `type` (`mqtt`) and `provider` (`moat`): with
/// `username`/`password` or `tls.crt`/`tls.key`/`ca.crt` the Secret is a binding as it is
/// (examples/app-binding.yaml projects the trust bundle beside a password user's Secret).
fn connection_hints(model: &BrokerModel, auth: ListenerAuthentication) -> BTreeMap<String, String> {
    let mut hints = BTreeMap::from([
        ("host".to_string(), format!("{}.{}.svc", model.service_name(), model.namespace)),
        ("caConfigMap".to_string(), crate::names::ca_bundle_configmap(&model.name)),
        ("type".to_string(), "mqtt".to_string()),
        ("provider".to_string(), "moat".to_string()),
    ]);
    if let Some(l) = model.spec.listeners.iter().find(|l| l.authentication == auth) {
        hints.insert("port".into(), l.port.to_string());
    }
    hints
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::minimal_spec;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn user(annotation: Option<&str>) -> MqttUser {
        let mut u: MqttUser = serde_json::from_value(serde_json::json!({
            "apiVersion": "mqtt.moat.dev/v1alpha1", "kind": "MqttUser",
            "metadata": {"name": "sensor-1", "namespace": "iot"},
            "spec": {"brokerRef": {"name": "plant-a"}}
        }))
        .unwrap();
        if let Some(v) = annotation {
            u.metadata.annotations =
                Some(BTreeMap::from([(crate::names::ROTATE_PASSWORD_ANNOTATION.to_string(), v.to_string())]));
        }
        u
    }

    fn model() -> BrokerModel {
        BrokerModel::from_spec("plant-a", "iot", &minimal_spec()).unwrap()
    }

    #[test]
    fn a_password_is_generated_once_and_kept() {
        let now = t("2026-01-01T00:00:00Z");
        let first = generated_password(&user(None), &model(), &StoredCredentials::default(), None, now);
        assert_eq!(first.regenerated, Some(Regenerate::Missing));
        assert_eq!(first.password.0.len(), 32);
        let stored =
            StoredCredentials { password: Some(first.password.clone()), rotated_at: Some(now), rotation_handled: None };
        for day in 1..=1000 {
            let later = after(now, std::time::Duration::from_secs(day * 86_400));
            let again = generated_password(&user(None), &model(), &stored, None, later);
            assert_eq!(again.regenerated, None);
            assert_eq!(again.password, first.password);
        }
    }

    #[test]
    fn rotation_when_due_or_asked_for() {
        let now = t("2026-01-01T00:00:00Z");
        let stored = StoredCredentials {
            password: Some(Password("x".repeat(32))),
            rotated_at: Some(now),
            rotation_handled: None,
        };
        let hour = std::time::Duration::from_secs(3600);
        let before = generated_password(&user(None), &model(), &stored, Some(hour), after(now, hour / 2));
        assert_eq!(before.regenerated, None);
        let due = generated_password(&user(None), &model(), &stored, Some(hour), after(now, hour));
        assert_eq!(due.regenerated, Some(Regenerate::RotationDue));
        assert_ne!(due.password, stored.password.clone().unwrap());
        let asked = generated_password(&user(Some("1")), &model(), &stored, None, now);
        assert_eq!(asked.regenerated, Some(Regenerate::RotationRequested));
        assert_eq!(asked.rotation_handled.as_deref(), Some("1"));
        let handled = StoredCredentials { rotation_handled: Some("1".into()), ..stored };
        assert_eq!(generated_password(&user(Some("1")), &model(), &handled, None, now).regenerated, None);
    }

    #[test]
    fn credentials_carry_connection_hints() {
        let data = credentials_data(&model(), "sensor-1", &Password("p".into()));
        assert_eq!(data["host"], "plant-a.iot.svc");
        assert_eq!(data["port"], "8883");
        assert_eq!(data["caConfigMap"], "plant-a-ca-bundle");
        // servicebinding.io entries
        assert_eq!((data["type"].as_str(), data["provider"].as_str()), ("mqtt", "moat"));
        assert_eq!((data["username"].as_str(), data["password"].as_str()), ("sensor-1", "p"));
    }
}
