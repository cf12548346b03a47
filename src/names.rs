//! Names and labels of everything moat generates, in one place.

use std::collections::BTreeMap;

/// Field manager of every server-side apply moat makes.
pub const FIELD_MANAGER: &str = "moat";
/// `app.kubernetes.io/managed-by` value on every generated object.
pub const MANAGED_BY: &str = "moat";
/// Label on generated objects naming the MqttBroker they belong to.
pub const BROKER_LABEL: &str = "mqtt.moat.dev/broker";
/// Label a Secret referenced by `MqttUser.spec.authentication.password.secretRef` must carry (set
/// by whoever owns that Secret, never by moat): the operator watches only Secrets with this label.
pub const WATCH_LABEL: &str = "mqtt.moat.dev/watch";
/// Annotation by which a Secret opts in to be a `secretRef` password source: a comma-separated
/// list of the MqttUser names (same namespace) that may use it.
pub const PASSWORD_FOR_ANNOTATION: &str = "mqtt.moat.dev/password-for";

/// Whether the annotations of a Secret let MqttUser `user` use it as its password source.
pub fn password_for(annotations: &BTreeMap<String, String>, user: &str) -> bool {
    annotations.get(PASSWORD_FOR_ANNOTATION).is_some_and(|v| v.split(',').map(str::trim).any(|n| n == user))
}

/// Annotation that asks for a new generated password (any new value).
pub const ROTATE_PASSWORD_ANNOTATION: &str = "mqtt.moat.dev/rotate-password";

/// Secret holding the broker CA (and a rollover predecessor); never mounted into pods.
pub fn ca_secret(broker: &str) -> String {
    format!("{broker}-ca")
}
/// Secret with the server certificate/key, the trust bundle and the CRLs (mounted into the agent).
pub fn tls_secret(broker: &str) -> String {
    format!("{broker}-tls")
}
/// cert-manager `Certificate` of the server certificate (`spec.tls.server.issuerRef`).
pub fn server_certificate(broker: &str) -> String {
    format!("{broker}-server")
}
/// Secret cert-manager issues the server certificate into.
pub fn server_certificate_secret(broker: &str) -> String {
    format!("{broker}-server-cert")
}
/// Secret with mosquitto.conf.
pub fn config_secret(broker: &str) -> String {
    format!("{broker}-config")
}
/// The single ACL Secret of moat versions before the ACL file was sharded (deleted when found).
pub fn legacy_acl_secret(broker: &str) -> String {
    format!("{broker}-acl")
}
/// Part `n` of the ACL file.
pub fn acl_secret(broker: &str, n: usize) -> String {
    format!("{broker}-acl-{n}")
}
/// Shard `n` of the password file.
pub fn passwd_secret(broker: &str, n: usize) -> String {
    format!("{broker}-passwd-{n}")
}
/// Part `n` of the certificate ledger (never mounted).
pub fn ledger_secret(broker: &str, n: usize) -> String {
    format!("{broker}-certs-{n}")
}
/// The shard number of a [`passwd_secret`] name of `broker`.
pub fn passwd_shard_index(broker: &str, secret: &str) -> Option<usize> {
    part_index(broker, "passwd", secret)
}
/// The part number of a sharded Secret `<broker>-<what>-<n>` (`what` = `passwd`, `acl`, `certs`).
pub fn part_index(broker: &str, what: &str, secret: &str) -> Option<usize> {
    let n = secret.strip_prefix(broker)?.strip_prefix('-')?.strip_prefix(what)?.strip_prefix('-')?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && (n == "0" || !n.starts_with('0')))
        .then(|| n.parse().ok())
        .flatten()
}
/// The broker's default-deny NetworkPolicy.
pub fn default_deny_policy(broker: &str) -> String {
    format!("{broker}-default-deny")
}
/// ConfigMap with the broker's public trust bundle (`ca.crt`) for clients.
pub fn ca_bundle_configmap(broker: &str) -> String {
    format!("{broker}-ca-bundle")
}
/// Label on per-user Secrets naming the MqttUser they belong to.
pub const USER_LABEL: &str = "mqtt.moat.dev/user";
/// Secret with a generated user's `username` and `password`.
pub fn credentials_secret(user_object: &str) -> String {
    format!("{user_object}-mqtt-credentials")
}
/// Secret with a certificate user's `tls.crt`, `tls.key` and `ca.crt`.
pub fn certificate_secret(user_object: &str) -> String {
    format!("{user_object}-mqtt-tls")
}

/// Standard labels of objects generated for `broker`; `component` says what the object is.
pub fn labels(broker: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "mosquitto".to_string()),
        ("app.kubernetes.io/instance".to_string(), broker.to_string()),
        ("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string()),
        ("app.kubernetes.io/component".to_string(), component.to_string()),
        (BROKER_LABEL.to_string(), broker.to_string()),
    ])
}

/// Labels that select the broker's pods (a stable subset of [`labels`]).
pub fn selector_labels(broker: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "mosquitto".to_string()),
        ("app.kubernetes.io/instance".to_string(), broker.to_string()),
        (BROKER_LABEL.to_string(), broker.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_shard_index_reads_back_passwd_secret_names_of_that_broker_only() {
        for n in [0, 7, 12] {
            assert_eq!(passwd_shard_index("plant-b", &passwd_secret("plant-b", n)), Some(n));
        }
        assert_eq!(passwd_shard_index("plant", &passwd_secret("plant-b", 1)), None);
        assert_eq!(passwd_shard_index("plant-b", "plant-b-acl"), None);
        assert_eq!(passwd_shard_index("plant-b", "plant-b-passwd-x"), None);
        assert_eq!(passwd_shard_index("plant-b", "plant-b-passwd-01"), None);
        assert_eq!(part_index("plant-b", "acl", &acl_secret("plant-b", 3)), Some(3));
        assert_eq!(part_index("plant-b", "certs", &ledger_secret("plant-b", 0)), Some(0));
        assert_eq!(part_index("plant", "acl", &acl_secret("plant-b", 3)), None);
    }
}
