//! `MqttAcl`: topic access for users of one broker (the broker denies everything not granted).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{BrokerRef, ComplianceStatus, conditions_schema};

/// Pattern of an ACL topic filter: `#` alone as the last level, `+` alone in its level, no empty
/// levels, no whitespace or control characters.
pub const TOPIC_FILTER_PATTERN: &str = r"^(#|(\+|[^+#/\x00-\x20\x7f-\x9f]+)(/(\+|[^+#/\x00-\x20\x7f-\x9f]+))*(/#)?)$";

/// Desired topic access of some users of one broker.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "mqtt.moat.dev",
    version = "v1alpha1",
    kind = "MqttAcl",
    plural = "mqttacls",
    namespaced,
    status = "MqttAclStatus",
    shortname = "mqacl",
    category = "moat",
    doc = "Topic access rules for users of one moat-managed broker.",
    printcolumn = r#"{"name":"Broker","type":"string","jsonPath":".spec.brokerRef.name"}"#,
    printcolumn = r#"{"name":"Rules","type":"integer","jsonPath":".status.ruleCount"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Compliant","type":"string","jsonPath":".status.compliance.summary","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.allUsers) && self.allUsers) != (has(self.users) && size(self.users) > 0)",
        "message": "set either users (non-empty) or allUsers: true"
    },
    {
        "rule": "(has(self.allUsers) && self.allUsers) || self.rules.all(r, !r.topic.matches('%[uc]'))",
        "message": "%u and %c are only allowed in rules of an ACL with allUsers: true"
    },
    {
        "rule": "!(has(self.allUsers) && self.allUsers) || self.rules.all(r, !r.topic.matches('[^/]%|%([^uc]|$)|%[uc][^/]'))",
        "message": "in allUsers rules, % may only appear as a whole topic level %u or %c"
    },
    {
        "rule": "(has(self.users) && size(self.users) > 0 ? size(self.users) : 1) * self.rules.map(r, size(r.topic) + 20).sum() <= 65536",
        "message": "the rules times the users listed exceed the 65536 bytes one MqttAcl may add to the broker's ACL file: split it, or use allUsers with %u"
    }
]))]
pub struct MqttAclSpec {
    /// The broker these rules apply to (same namespace). Immutable.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "brokerRef is immutable"}]))]
    pub broker_ref: BrokerRef,
    /// Usernames the rules apply to. Rules for a username with no Ready MqttUser are kept out
    /// of the broker and listed in `status.pendingUsers`. Exclusive with `allUsers`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 128), pattern(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")))]
    pub users: Vec<String>,
    /// Apply the rules to every user (Mosquitto `pattern` lines); topics may then use `%u`
    /// (username) and `%c` (client id) as whole levels. Default: false.
    #[serde(default)]
    pub all_users: bool,
    /// Access rules, evaluated as Mosquitto does: first the rules of ACLs that list the user, then
    /// `allUsers` rules; within that order a matching `Deny` refuses at once and the first
    /// matching grant allows (so an `allUsers` Deny does not override a grant made to the user by
    /// name). Anything not granted is denied.
    #[schemars(length(min = 1, max = 256))]
    pub rules: Vec<AclRule>,
}

/// One topic rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!self.topic.startsWith('$') || (self.topic.startsWith('$SYS/') && (self.access == 'Read' || self.access == 'Deny'))",
        "message": "topics starting with $ are only allowed as $SYS/... with access Read or Deny"
    }
]))]
pub struct AclRule {
    /// MQTT topic filter: levels separated by `/`, `+` matches one level and must be alone in it,
    /// `#` matches the rest and must be alone in the last level. No empty levels, whitespace or
    /// control characters; at most 1024 characters. `$SYS/...` topics only with `Read` (a plain
    /// `#` never matches `$` topics).
    #[schemars(length(min = 1, max = 1024), pattern(TOPIC_FILTER_PATTERN))]
    pub topic: String,
    /// `Read` (receive messages), `Write` (publish), `ReadWrite`, or `Deny` (overrides any grant).
    /// Mosquitto's acl_file does not check SUBSCRIBE itself: a subscription to a topic that may
    /// not be read succeeds but delivers nothing.
    pub access: AclAccess,
}

/// Access granted by a rule.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum AclAccess {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl AclAccess {
    /// Mosquitto's keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            AclAccess::Read => "read",
            AclAccess::Write => "write",
            AclAccess::ReadWrite => "readwrite",
            AclAccess::Deny => "deny",
        }
    }
}

/// Observed state of an ACL.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttAclStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the rules are in the broker's applied ACL) and `Compliant`.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Compliance checks about these rules (risky grants).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<ComplianceStatus>,
    /// Rule lines in effect on the broker (rules x users that are Ready).
    #[serde(default)]
    pub rule_count: u32,
    /// Listed users that have no Ready MqttUser yet; their rules are not in effect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_users: Vec<String>,
    /// Risky grants found (e.g. `#` with write access, broad `$SYS` reads).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}
