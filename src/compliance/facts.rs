//! Facts the checks are evaluated over, and pure extraction of facts from observed objects.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Container, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::crd::broker::KnownCve;
use crate::model::BrokerModel;
use crate::pki::CertInfo;

/// Everything the broker checks look at.
pub struct BrokerFacts<'a> {
    /// The validated spec.
    pub model: &'a BrokerModel,
    /// `mosquitto.conf` as applied (from the live config Secret).
    pub config: Option<String>,
    /// ACL file as applied (from the live ACL Secret).
    pub acl_file: Option<String>,
    /// Hardening of the live StatefulSet's pod template.
    pub pod: Option<PodHardening>,
    /// Whether the live default-deny policy selects the broker pods for ingress and egress.
    pub default_deny_ok: bool,
    /// Ports of the live Service that are not broker listeners.
    pub extra_service_ports: Vec<String>,
    /// `Some(source ranges)` when the Service is a LoadBalancer.
    pub load_balancer: Option<Vec<String>>,
    /// Firewalls that acknowledged public-internet ingress.
    pub public_firewalls: Vec<String>,
    /// Live server certificate.
    pub server_cert: Option<CertInfo>,
    /// Live signing CA.
    pub ca: Option<CertInfo>,
    /// A CA rollover is in progress.
    pub ca_rollover_in_progress: bool,
    /// What the active probe saw on each broker pod (None when it was not run).
    pub probes: Option<Vec<LiveProbe>>,
    /// NetworkPolicies not generated for this broker that select its pods and admit ingress.
    pub open_policies: Vec<String>,
    /// nextUpdate of the applied CRL.
    pub crl_next_update: Option<jiff::Timestamp>,
    /// Risky grants across the broker's ACLs.
    pub acl_warnings: Vec<(String, crate::plan::broker::RiskyGrant)>,
    /// ACLs not in effect (invalid).
    pub acls_invalid: Vec<String>,
    /// Number of ACLs.
    pub acls_total: usize,
    /// Users whose brought password fails the policy.
    pub weak_password_users: Vec<String>,
    /// Users sharing a password with another user.
    pub reused_password_users: Vec<String>,
    /// Users whose password is older than rotateAfter.
    pub overdue_password_users: Vec<String>,
    /// Drift found (and repaired) at this audit.
    pub drift: Vec<String>,
    /// The previous audit time.
    pub previous_audit: Option<jiff::Timestamp>,
    /// Running version.
    pub running_version: String,
    /// Known CVEs of the running version.
    pub known_cves: Vec<KnownCve>,
    /// The last upgrade failed.
    pub upgrade_failed: bool,
    /// Message of the last upgrade.
    pub upgrade_message: String,
    /// What the pods' agents attest about the files (None: not attested, e.g. probing is off).
    pub files: Option<FilesFacts>,
    /// The last timed revocation (from status when this operator saw none).
    pub last_revocation: Option<RevocationFacts>,
    /// Evaluation time.
    pub now: jiff::Timestamp,
}

/// The files moat wrote and which pods run them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilesFacts {
    /// When moat wrote them.
    pub written_at: jiff::Timestamp,
    /// Since when every pod runs them.
    pub in_effect_at: Option<jiff::Timestamp>,
    /// Pods asked.
    pub pods: usize,
    /// Pods running older files.
    pub behind: Vec<String>,
    /// Pods whose agent refuses the files.
    pub refusing: Vec<String>,
    /// Pods that did not answer.
    pub unreachable: Vec<String>,
}

/// One revocation and when it reached every pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationFacts {
    /// What was revoked.
    pub what: String,
    /// When moat decided it.
    pub revoked_at: jiff::Timestamp,
    /// When every pod ran the files without it.
    pub in_effect_at: Option<jiff::Timestamp>,
}

/// One observation of the live broker: what was tried and what it answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// The broker behaved as it must.
    Pass(String),
    /// It did not.
    Fail(String),
    /// It could not be told (never a pass).
    Unknown(String),
}

/// What the active probe saw on one broker pod (each replica is an independent broker).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveProbe {
    /// The pod.
    pub pod: String,
    /// A TCP connection reached the pod.
    pub reachable: bool,
    /// TLS 1.0/1.1 handshakes are refused.
    pub legacy_tls_refused: Observation,
    /// The served chain verifies against moat's CA bundle.
    pub chain_trusted: Observation,
    /// An MQTT CONNECT without credentials is refused.
    pub anonymous_refused: Observation,
    /// A plaintext MQTT CONNECT gets no CONNACK, one observation per TLS listener port.
    pub plaintext_refused: Vec<Observation>,
    /// A client certificate from a foreign CA claiming a certificate user's name is refused, one
    /// observation per certificate listener port (none when the broker has no such listener).
    pub foreign_cert_refused: Vec<Observation>,
    /// moat's revoked canary certificate is refused, one observation per certificate listener port.
    pub revoked_cert_refused: Vec<Observation>,
    /// A CONNECT declaring maxPacketSize + 1 bytes gets the client dropped, and so does a
    /// PUBLISH declaring as much after login (in that order).
    pub oversize_refused: Vec<Observation>,
    /// moat's canary login, in no ACL, is refused its PUBLISH and receives nothing on `#`/`$SYS/#`.
    pub no_grants_refused: Observation,
    /// A second user logging in with the client id of another user's session leaves it up.
    pub takeover_refused: Observation,
    /// The network refuses the outsider (a namespace no MqttFirewall admits), one observation per
    /// listener port.
    pub outside_refused: Vec<Observation>,
}

/// Everything the user checks look at.
pub struct UserFacts {
    /// Password authentication is enabled.
    pub password_auth: bool,
    /// The password was generated by moat.
    pub generated: bool,
    /// A brought password fails the broker's policy (no detail: it would depend on the value).
    pub weak_password: bool,
    /// rotateAfter.
    pub rotate_after: Option<Duration>,
    /// Age of the password in effect.
    pub password_age: Option<Duration>,
    /// Another user of the broker has the same password (who is not said here: the user's
    /// status must not reveal anything about other users' Secrets).
    pub reused: bool,
    /// Certificate authentication is enabled.
    pub certificate_auth: bool,
    /// The client certificate moat stands behind: `(notAfter, renewal time)`.
    pub certificate: Option<(jiff::Timestamp, jiff::Timestamp)>,
    /// The broker has a listener for the user's method(s).
    pub has_usable_listener: bool,
    /// Evaluation time.
    pub now: jiff::Timestamp,
}

/// Everything the ACL checks look at.
pub struct AclFacts {
    /// Risky grants.
    pub warnings: Vec<crate::plan::broker::RiskyGrant>,
    /// Users without a Ready MqttUser.
    pub pending_users: Vec<String>,
}

/// Everything the firewall checks look at.
pub struct FirewallFacts {
    /// CIDRs that cover the public internet (allowed by allowPublicInternet).
    pub public_cidrs: Vec<String>,
    /// The live allow policy matches what moat generated.
    pub policy_in_effect: bool,
}

/// Hardening of a pod template, as observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodHardening {
    /// Containers (including init containers) in the template.
    pub containers: usize,
    /// Containers not running as non-root uid/gid 1883, with what they run as.
    pub user_problems: Vec<String>,
    /// Containers with a writable root filesystem or privilege escalation.
    pub fs_problems: Vec<String>,
    /// Containers that keep capabilities or lack seccomp RuntimeDefault, with details.
    pub caps_problems: Vec<String>,
    /// No service account token.
    pub no_token: bool,
    /// Broker container has requests and a memory limit.
    pub resources_set: bool,
}

/// Reads the hardening of a live StatefulSet's pod template.
pub fn pod_hardening(sts: &StatefulSet) -> PodHardening {
    let Some(pod) = sts.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else { return PodHardening::default() };
    let psc = pod.security_context.clone().unwrap_or_default();
    let containers: Vec<&Container> = pod.containers.iter().chain(pod.init_containers.iter().flatten()).collect();
    let mut h = PodHardening {
        containers: containers.len(),
        no_token: pod.automount_service_account_token == Some(false),
        ..Default::default()
    };
    for c in &containers {
        let sc = c.security_context.clone().unwrap_or_default();
        let non_root = sc.run_as_non_root.or(psc.run_as_non_root) == Some(true);
        let uid = sc.run_as_user.or(psc.run_as_user);
        let gid = sc.run_as_group.or(psc.run_as_group);
        if !non_root || uid != Some(1883) || gid != Some(1883) {
            h.user_problems.push(format!("{} (runAsNonRoot {non_root}, uid {uid:?}, gid {gid:?})", c.name));
        }
        if sc.read_only_root_filesystem != Some(true)
            || sc.allow_privilege_escalation != Some(false)
            || sc.privileged == Some(true)
        {
            h.fs_problems.push(c.name.clone());
        }
        let caps = sc.capabilities.clone().unwrap_or_default();
        let dropped_all = caps.drop.iter().flatten().any(|d| d == "ALL");
        let added = caps.add.iter().flatten().count();
        let seccomp = sc.seccomp_profile.as_ref().or(psc.seccomp_profile.as_ref()).map(|p| p.type_.as_str());
        if !dropped_all || added > 0 || seccomp != Some("RuntimeDefault") {
            h.caps_problems.push(format!("{} (drop ALL {dropped_all}, added {added}, seccomp {seccomp:?})", c.name));
        }
    }
    h.resources_set =
        pod.containers.iter().find(|c| c.name == crate::render::workload::BROKER_CONTAINER).is_some_and(|c| {
            c.resources.as_ref().is_some_and(|r| {
                r.requests.as_ref().is_some_and(|q| !q.is_empty())
                    && r.limits.as_ref().is_some_and(|l| l.contains_key("memory"))
            })
        });
    h
}

/// Whether a live default-deny policy selects the broker pods for ingress and egress with no allow rules.
pub fn default_deny_ok(policy: Option<&NetworkPolicy>, broker: &str) -> bool {
    let Some(spec) = policy.and_then(|p| p.spec.as_ref()) else { return false };
    let selects = spec
        .pod_selector
        .as_ref()
        .and_then(|s| s.match_labels.as_ref())
        .is_some_and(|l| crate::names::selector_labels(broker).iter().all(|(k, v)| l.get(k) == Some(v)));
    let types = spec.policy_types.clone().unwrap_or_default();
    selects
        && types.iter().any(|t| t == "Ingress")
        && types.iter().any(|t| t == "Egress")
        && spec.ingress.as_ref().is_none_or(Vec::is_empty)
        && spec.egress.as_ref().is_none_or(Vec::is_empty)
}

/// NetworkPolicies of the namespace, other than `own` (moat's policies for this broker), that
/// select the broker's pods and admit some ingress: NetworkPolicies are additive, so any such
/// policy opens the broker beyond its firewalls. A policy selects the pods when its podSelector's
/// labels and expressions all hold for the pod labels (an empty selector selects every pod).
pub fn open_policies(
    policies: &[&NetworkPolicy],
    own: &[String],
    pod_labels: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    policies
        .iter()
        .filter(|p| !p.metadata.name.as_ref().is_some_and(|n| own.contains(n)))
        .filter(|p| {
            let Some(spec) = p.spec.as_ref() else { return false };
            let ingress_type = spec.policy_types.as_ref().is_none_or(|t| t.iter().any(|t| t == "Ingress"));
            let admits = spec.ingress.as_ref().is_some_and(|r| !r.is_empty());
            ingress_type
                && admits
                && spec
                    .pod_selector
                    .as_ref()
                    .is_none_or(|sel| crate::render::network::selector_matches(sel, pod_labels))
        })
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

/// Ports of a live Service that are not listeners of the broker.
pub fn extra_service_ports(svc: Option<&Service>, model: &BrokerModel) -> Vec<String> {
    svc.and_then(|s| s.spec.as_ref())
        .and_then(|s| s.ports.as_ref())
        .map(|ports| {
            ports
                .iter()
                .filter(|p| !model.spec.listeners.iter().any(|l| l.port == p.port))
                .map(|p| p.name.clone().unwrap_or_else(|| p.port.to_string()))
                .collect()
        })
        .unwrap_or_default()
}
