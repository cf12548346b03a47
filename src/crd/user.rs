//! `MqttUser`: one MQTT identity (password and/or client certificate) on one broker.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{BrokerRef, CertificateInfo, ComplianceStatus, GoDuration, SecretKeyRef, conditions_schema};

/// Pattern of MQTT usernames: ASCII letters, digits, `.`, `_`, `-`, `@`; starts with a letter or
/// digit; at most 128 characters. This keeps out everything Mosquitto could read differently in its
/// password and ACL files (`:`, whitespace, control characters) and the ACL wildcards `+`, `#`, `/`, `%`.
pub const USERNAME_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$";

/// Desired state of one MQTT user.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "mqtt.moat.dev",
    version = "v1alpha1",
    kind = "MqttUser",
    plural = "mqttusers",
    namespaced,
    status = "MqttUserStatus",
    shortname = "mqu",
    category = "moat",
    doc = "An MQTT user of one moat-managed broker.",
    validation = Rule::new("has(self.spec.username) || self.metadata.name.matches('^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$')").message("metadata.name is not a valid MQTT username; set spec.username"),
    printcolumn = r#"{"name":"Broker","type":"string","jsonPath":".spec.brokerRef.name"}"#,
    printcolumn = r#"{"name":"Username","type":"string","jsonPath":".status.username"}"#,
    printcolumn = r#"{"name":"Auth","type":"string","jsonPath":".status.authentication"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Compliant","type":"string","jsonPath":".status.compliance.summary","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.username) == has(oldSelf.username) && (!has(self.username) || self.username == oldSelf.username)",
        "message": "username is immutable"
    }
]))]
pub struct MqttUserSpec {
    /// The broker this user belongs to (same namespace). Immutable.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "brokerRef is immutable"}]))]
    pub broker_ref: BrokerRef,
    /// MQTT username. Default: `metadata.name`. Immutable. ASCII letters, digits, `.`, `_`, `-` and
    /// `@`, starting with a letter or digit, at most 128 characters: no `:`, whitespace, control
    /// characters, `+`, `#`, `/` or `%`. For certificate authentication it is the certificate CN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), pattern(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$"))]
    pub username: Option<String>,
    /// How the user authenticates. Default: a generated password.
    #[serde(default)]
    pub authentication: UserAuthentication,
}

/// Authentication methods of a user; at least one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.password) || has(self.certificate)", "message": "set authentication.password, authentication.certificate or both"}
]))]
pub struct UserAuthentication {
    /// Password authentication (on listeners with `authentication: Password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<PasswordAuth>,
    /// Client certificate authentication (on listeners with `authentication: Certificate`):
    /// moat issues a certificate with CN = username, renews it, and revokes it when the user is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateAuth>,
}

impl Default for UserAuthentication {
    fn default() -> Self {
        Self { password: Some(PasswordAuth::default()), certificate: None }
    }
}

/// Password settings of a user.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = crate::validate::lifetime::cel(&[crate::validate::lifetime::ROTATE_AFTER_RULE])))]
pub struct PasswordAuth {
    /// Bring your own password from a Secret key. The password must satisfy the broker's
    /// `passwords` policy (else the user is `Ready=False, reason=WeakPassword` and not added to the
    /// broker); changes to the Secret reach the broker. Default: moat generates a password once
    /// and stores it in the Secret named in `status.credentialsSecret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// Maximum password age, at least 1h. A generated password is rotated when it is older; a
    /// brought one is reported non-compliant. Unset: no rotation. To rotate at once, annotate the MqttUser with
    /// `mqtt.moat.dev/rotate-password` set to any new value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_after: Option<GoDuration>,
}

/// Client certificate settings of a user.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = crate::validate::lifetime::cel(&crate::validate::lifetime::LEAF_RULES)))]
pub struct CertificateAuth {
    /// Certificate lifetime; at least 1h. Default: 2160h (90 days).
    #[serde(default = "default_validity")]
    pub validity: GoDuration,
    /// Renew this long before expiry; at least 1m and at most half of `validity`. Default: 360h
    /// (15 days). After a renewal the previous certificate stays valid for a short overlap (so
    /// clients can pick up the new one), then it is revoked.
    #[serde(default = "default_renew_before")]
    pub renew_before: GoDuration,
}

fn default_validity() -> GoDuration {
    GoDuration::new("2160h")
}

fn default_renew_before() -> GoDuration {
    GoDuration::new("360h")
}

impl Default for CertificateAuth {
    fn default() -> Self {
        Self { validity: default_validity(), renew_before: default_renew_before() }
    }
}

/// Observed state of a user.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttUserStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the user's credentials are in effect on the broker) and `Compliant`.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Compliance checks about this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<ComplianceStatus>,
    /// Effective MQTT username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Enabled methods: `Password`, `Certificate` or `Password+Certificate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<String>,
    /// Secret with keys `username` and `password` (and connection hints `host`, `port`, `caSecret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// Secret with keys `tls.crt`, `tls.key` and `ca.crt` (certificate authentication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_secret: Option<String>,
    /// When the password in effect was set (generated, rotated, or first seen in the referenced Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_rotated_at: Option<Time>,
    /// Opaque identifier of the password in effect (a prefix of a keyed hash that reveals nothing
    /// about the password); it changes exactly when the password changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_version: Option<String>,
    /// The client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateInfo>,
}
