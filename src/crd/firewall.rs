//! `MqttFirewall`: network paths allowed into one broker (every broker starts default-deny).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{BrokerRef, ComplianceStatus, conditions_schema};

/// Desired ingress paths into one broker.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "mqtt.moat.dev",
    version = "v1alpha1",
    kind = "MqttFirewall",
    plural = "mqttfirewalls",
    namespaced,
    status = "MqttFirewallStatus",
    shortname = "mqfw",
    category = "moat",
    doc = "Network paths allowed into one moat-managed broker.",
    printcolumn = r#"{"name":"Broker","type":"string","jsonPath":".spec.brokerRef.name"}"#,
    printcolumn = r#"{"name":"Policies","type":"integer","jsonPath":".status.policyCount"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Compliant","type":"string","jsonPath":".status.compliance.summary","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.allowPublicInternet) && self.allowPublicInternet) || self.ingress.all(i, i.from.all(p, !has(p.cidr) || ((cidr(p.cidr).prefixLength() >= (cidr(p.cidr).ip().family() == 4 ? 16 : 32) || ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10', '127.0.0.0/8', '169.254.0.0/16', 'fc00::/7', 'fe80::/10', '::1/128'].exists(n, cidr(n).ip().family() == cidr(p.cidr).ip().family() && cidr(n).containsCIDR(p.cidr))) && !(cidr(p.cidr).ip().family() == 6 && (cidr(p.cidr).containsCIDR('64:ff9b::/96') || (cidr('64:ff9b::/96').containsCIDR(p.cidr) && cidr(p.cidr).prefixLength() < 112))))))",
        "message": "a CIDR covering the public internet (0.0.0.0/0, ::/0, a public range broader than /16 for IPv4 or /32 for IPv6, or the NAT64 prefix 64:ff9b::/96 broader than /112) requires allowPublicInternet: true"
    }
]))]
pub struct MqttFirewallSpec {
    /// The broker these rules open (same namespace). Immutable.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "brokerRef is immutable"}]))]
    pub broker_ref: BrokerRef,
    /// Allowed ingress paths. Each becomes a NetworkPolicy rule next to the broker's default-deny policy.
    #[schemars(length(min = 1, max = 16))]
    pub ingress: Vec<IngressRule>,
    /// Acknowledge that a CIDR covers the public internet (`0.0.0.0/0`, `::/0`, or a public range
    /// broader than /16 for IPv4 or /32 for IPv6). Without it such CIDRs are rejected; with it
    /// they are allowed and reported as a firewall risk. Default: false.
    #[serde(default)]
    pub allow_public_internet: bool,
}

/// One allowed ingress path.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressRule {
    /// Allowed sources. A peer is either a CIDR (with optional exceptions) or a namespace and/or
    /// pod selector.
    #[schemars(length(min = 1, max = 32))]
    pub from: Vec<Peer>,
    /// Broker listener names this path may reach. Default: every listener.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(min = 1, max = 15)))]
    pub listeners: Vec<String>,
}

/// A source of traffic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.cidr) != (has(self.namespaceSelector) || has(self.podSelector))",
        "message": "a peer sets either cidr or namespaceSelector/podSelector"
    },
    {
        "rule": "!has(self.except) || has(self.cidr)",
        "message": "except is only valid with cidr"
    },
    {
        "rule": "!has(self.cidr) || !has(self.except) || (isCIDR(self.cidr) && self.except.all(e, isCIDR(e) && cidr(e).ip().family() == cidr(self.cidr).ip().family() && cidr(self.cidr).containsCIDR(e) && cidr(e).prefixLength() > cidr(self.cidr).prefixLength()))",
        "message": "every except entry must be a CIDR strictly inside cidr"
    }
]))]
pub struct Peer {
    /// IPv4 or IPv6 CIDR, e.g. `10.20.0.0/16` or `fd00:10::/64`. Host bits are cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 49))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "isCIDR(self)", "message": "cidr must be a valid IPv4 or IPv6 CIDR"}]))]
    pub cidr: Option<String>,
    /// CIDRs inside `cidr` that stay blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), inner(length(min = 2, max = 49)))]
    pub except: Option<Vec<String>>,
    /// Namespaces whose pods may connect (all pods of the broker's namespace if only `podSelector` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Pods that may connect (in the broker's namespace, or in the namespaces of `namespaceSelector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

/// Observed state of a firewall.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttFirewallStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the allow policies are applied) and `Compliant`.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Compliance checks about these rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<ComplianceStatus>,
    /// Names of the NetworkPolicies generated from this firewall.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// Number of generated NetworkPolicies.
    #[serde(default)]
    pub policy_count: u32,
}
