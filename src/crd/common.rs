//! Types shared by the four custom resources: broker reference, conditions, compliance, durations.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// API group of moat's custom resources.
pub const GROUP: &str = "mqtt.moat.dev";
/// API version of moat's custom resources.
pub const VERSION: &str = "v1alpha1";

/// Condition type: the object is fully reconciled and in effect on its broker.
pub const CONDITION_READY: &str = "Ready";
/// Condition type: every compliance check of the object passes.
pub const CONDITION_COMPLIANT: &str = "Compliant";

/// Reference to the MqttBroker (in the same namespace) this object belongs to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerRef {
    /// Name of the MqttBroker in the same namespace. Immutable.
    #[schemars(length(min = 1, max = 52), pattern(r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
}

/// A reference to one key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret (same namespace).
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Key inside the Secret. Default: `password`.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_password_key() -> String {
    "password".into()
}

/// A duration in Go/Kubernetes syntax (`90s`, `15m`, `720h`, `1h30m`).
///
/// Kept as the user wrote it so status and `kubectl get -o yaml` show the same text; parsed with
/// [`GoDuration::parse`] (exactly the grammar of Go's `time.ParseDuration`, which CEL's `duration()`
/// also uses, so admission and the operator agree).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(transparent)]
pub struct GoDuration(pub String);

/// Pattern every [`GoDuration`] must match (positive, with units).
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

impl GoDuration {
    /// Builds a duration from its text form (not validated until [`GoDuration::parse`]).
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// Parses the text into a non-negative std duration. Only the syntax of [`DURATION_PATTERN`]
    /// is accepted (no empty string, sign or bare number), the same as admission.
    pub fn parse(&self) -> Result<std::time::Duration, String> {
        if self.0.len() > 32 || !matches_duration_pattern(&self.0) {
            return Err(format!("invalid duration {:?}: expected e.g. 90s, 15m, 720h or 1h30m", self.0));
        }
        let d = kube::core::Duration::from_str(&self.0).map_err(|e| format!("invalid duration {:?}: {e}", self.0))?;
        if d.is_negative() {
            return Err(format!("duration {:?} must not be negative", self.0));
        }
        Ok(d.into())
    }
}

/// Whether `text` matches [`DURATION_PATTERN`]: one or more `<digits>[.<digits>]<unit>`.
pub(crate) fn matches_duration_pattern(text: &str) -> bool {
    const UNITS: [&str; 7] = ["ns", "us", "µs", "ms", "s", "m", "h"];
    let mut rest = text;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        if let Some(frac) = rest.strip_prefix('.') {
            let n = frac.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 {
                return false;
            }
            rest = &frac[n..];
        }
        // longest unit first ("ms" before "m")
        match UNITS.iter().filter(|u| rest.starts_with(**u)).max_by_key(|u| u.len()) {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 32,
            "pattern": DURATION_PATTERN,
        })
    }
}

/// One of the ten security measures every compliance check belongs to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Measure {
    Authentication,
    Encryption,
    Acl,
    Configuration,
    Firewall,
    Monitoring,
    Passwords,
    Audit,
    Updates,
    Awareness,
}

impl Measure {
    /// All measures in guide order.
    pub const ALL: [Measure; 10] = [
        Measure::Authentication,
        Measure::Encryption,
        Measure::Acl,
        Measure::Configuration,
        Measure::Firewall,
        Measure::Monitoring,
        Measure::Passwords,
        Measure::Audit,
        Measure::Updates,
        Measure::Awareness,
    ];

    /// Lower-case name as serialized (`authentication`, `encryption`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Measure::Authentication => "authentication",
            Measure::Encryption => "encryption",
            Measure::Acl => "acl",
            Measure::Configuration => "configuration",
            Measure::Firewall => "firewall",
            Measure::Monitoring => "monitoring",
            Measure::Passwords => "passwords",
            Measure::Audit => "audit",
            Measure::Updates => "updates",
            Measure::Awareness => "awareness",
        }
    }
}

/// Severity of a failed compliance check.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
    Info,
}

impl Severity {
    /// Lower-case name as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Info => "info",
        }
    }
}

/// Outcome of one compliance check.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum CheckResult {
    Pass,
    Fail,
    Unknown,
}

/// The result of one compliance check on this object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComplianceCheck {
    /// Stable identifier of the check, e.g. `MOAT-TLS-002`.
    pub id: String,
    /// Security measure the check belongs to: authentication, encryption, acl, configuration,
    /// firewall, monitoring, passwords, audit, updates or awareness.
    pub measure: Measure,
    /// Severity when the check fails: critical, high, medium, low or info.
    pub severity: Severity,
    /// True only when the check positively passed (an `Unknown` result is never a pass).
    pub passed: bool,
    /// Pass, Fail, or Unknown (the evidence could not be gathered; `message` says why).
    pub result: CheckResult,
    /// What was found, in one sentence.
    pub message: String,
    /// How to fix a failure, with a link to the matching section of moat's security guide.
    pub remediation: String,
}

/// Compliance summary of an object against moat's security measures.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComplianceStatus {
    /// Number of checks that passed.
    pub passed: u32,
    /// Number of checks evaluated.
    pub total: u32,
    /// `passed/total`, e.g. `17/18` (shown by `kubectl get`).
    pub summary: String,
    /// When the object was last audited against the live cluster (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_audit_time: Option<Time>,
    /// Every check with its result, message and remediation, sorted by id.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub checks: Vec<ComplianceCheck>,
    /// In the operator's cache only (never serialized): the digest of `checks`, which the lean
    /// cache of MqttUsers keeps instead of them (see `controller::lean`).
    #[serde(skip)]
    #[schemars(skip)]
    pub checks_digest: Option<String>,
}

/// Schema attribute helper: conditions are a list-map keyed by `type`.
pub(crate) fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = <Vec<Condition>>::json_schema(generator);
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}

/// Counts of child objects of a broker.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberCounts {
    /// Objects that reference the broker.
    pub total: u32,
    /// Of those, objects in effect on the broker.
    pub ready: u32,
}

/// Expiry information of one certificate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateInfo {
    /// Serial number (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// End of validity (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// When moat renews the certificate (RFC 3339): `notAfter - renewBefore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_the_admission_pattern() {
        for ok in ["90s", "15m", "720h", "1h30m", "1.5h", "100ms", "2µs"] {
            assert!(GoDuration::new(ok).parse().is_ok(), "{ok}");
        }
        for bad in ["", "0", "h", "-5m", "+5m", "5", "5x", "1h ", " 1h", "1.h", "1d"] {
            assert!(GoDuration::new(bad).parse().is_err(), "{bad:?}");
        }
        assert_eq!(GoDuration::new("1h30m").parse().unwrap(), std::time::Duration::from_secs(5400));
    }
}
