//! Conditions: computed from the current reconcile only, transition time kept while unchanged.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as a reconcile decides it (before transition times are merged in).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    /// Condition type (`Ready`, `Compliant`).
    pub type_: &'static str,
    /// True, False or Unknown.
    pub status: &'static str,
    /// CamelCase reason.
    pub reason: String,
    /// Human message.
    pub message: String,
}

impl Cond {
    /// A condition that holds.
    pub fn ok(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self { type_, status: "True", reason: reason.into(), message: message.into() }
    }
    /// A condition that does not hold.
    pub fn not(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self { type_, status: "False", reason: reason.into(), message: message.into() }
    }
    /// A condition that could not be determined.
    pub fn unknown(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self { type_, status: "Unknown", reason: reason.into(), message: message.into() }
    }
}

/// Ready=False, BrokerNotFound: the `brokerRef` of a user, ACL or firewall names no MqttBroker in
/// its namespace.
pub fn broker_not_found(broker: &str, namespace: &str) -> Cond {
    let message = format!("MqttBroker {broker} does not exist in namespace {namespace}");
    Cond::not(crate::crd::CONDITION_READY, "BrokerNotFound", message)
}

/// Builds the condition list: each condition keeps its previous `lastTransitionTime` when its
/// status did not change, so a reconcile that decides the same thing produces an identical list.
pub fn merge(
    previous: &[Condition],
    decided: Vec<Cond>,
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> Vec<Condition> {
    decided
        .into_iter()
        .map(|c| {
            let last = previous
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == c.status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: c.type_.into(),
                status: c.status.into(),
                reason: c.reason,
                message: c.message,
                last_transition_time: last,
                observed_generation: generation,
            }
        })
        .collect()
}

/// The status of condition `type_`, if present.
pub fn status_of<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions.iter().find(|c| c.type_ == type_).map(|c| c.status.as_str())
}

/// A moat kind with a status holding `Ready`/`Compliant` conditions.
pub trait Reported:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
{
    /// The status type.
    type Status: Default + Clone + PartialEq + serde::Serialize;
    /// The current status (default when none).
    fn current_status(&self) -> Self::Status;
    /// The conditions of a status.
    fn conditions_of(status: &mut Self::Status) -> &mut Vec<Condition>;
}

macro_rules! reported {
    ($($kind:ty => $status:ty),*) => {$(
        impl Reported for $kind {
            type Status = $status;
            fn current_status(&self) -> $status {
                self.status.clone().unwrap_or_default()
            }
            fn conditions_of(status: &mut $status) -> &mut Vec<Condition> {
                &mut status.conditions
            }
        }
    )*};
}

reported!(
    crate::crd::MqttBroker => crate::crd::broker::MqttBrokerStatus,
    crate::crd::MqttUser => crate::crd::MqttUserStatus,
    crate::crd::MqttAcl => crate::crd::MqttAclStatus,
    crate::crd::MqttFirewall => crate::crd::MqttFirewallStatus
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_is_kept_while_the_status_holds() {
        let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: jiff::Timestamp = "2026-01-02T00:00:00Z".parse().unwrap();
        let first = merge(&[], vec![Cond::not("Ready", "Pending", "waiting")], Some(1), t0);
        let same = merge(&first, vec![Cond::not("Ready", "Pending", "still waiting")], Some(1), t1);
        assert_eq!(same[0].last_transition_time, Time(t0));
        let flipped = merge(&same, vec![Cond::ok("Ready", "Ready", "ok")], Some(2), t1);
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert_eq!(flipped[0].observed_generation, Some(2));
        assert_eq!(status_of(&flipped, "Ready"), Some("True"));
    }
}
