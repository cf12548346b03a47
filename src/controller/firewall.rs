//! The MqttFirewall controller: the firewall's allow NetworkPolicy (owned by the MqttFirewall, so
//! deleting it removes the policy) and status.

use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::conditions::{self, Cond};
use super::context::{Context, Stores};
use super::{Error, Result};
use crate::compliance::{self, FirewallFacts};
use crate::crd::{CONDITION_READY, MqttBroker, MqttFirewall, MqttFirewallStatus};
use crate::model::BrokerModel;
use crate::render::network;

/// Reconciles one MqttFirewall.
pub async fn reconcile(fw: Arc<MqttFirewall>, ctx: Arc<Context>) -> Result<Action> {
    super::observed_reconcile("MqttFirewall", &*fw, &ctx, run(&fw, &ctx)).await
}

/// Reconciles one MqttFirewall: observe (its broker) → plan (the allow NetworkPolicy, pure) →
/// apply (ensure it, or withdraw what an invalid firewall left) → status (pure) → write status
/// and report.
async fn run(fw: &MqttFirewall, ctx: &Context) -> Result<Action> {
    let now = ctx.clock.now();
    let previous = fw.status.clone().unwrap_or_default();
    let broker = Stores::get(&ctx.stores.brokers, &fw.namespace().unwrap_or_default(), &fw.spec.broker_ref.name);
    let planned = plan(fw, broker.as_deref());
    let applied = apply(ctx, fw, planned, !previous.policies.is_empty()).await?;
    let status = status(fw, &previous, &applied, now);
    super::write_status(ctx, fw, &previous, &status).await?;
    if let Some(c) = &status.compliance {
        super::report::write(ctx, fw, &fw.spec.broker_ref.name, c).await;
    }
    match applied {
        Applied::Blocked(Blocked::InvalidSpec(e)) => Err(Error::InvalidSpec(e)),
        _ => Ok(Action::await_change()),
    }
}

/// Why a firewall has no allow policy.
enum Blocked {
    BrokerMissing,
    InvalidSpec(crate::validate::FieldError),
}

/// The firewall's allow NetworkPolicy, rendered for its broker (pure).
fn plan(fw: &MqttFirewall, broker: Option<&MqttBroker>) -> std::result::Result<NetworkPolicy, Blocked> {
    let broker = broker.ok_or(Blocked::BrokerMissing)?;
    BrokerModel::new(broker)
        .and_then(|m| crate::validate::firewall_spec(&fw.spec).map(|_| m))
        .and_then(|m| network::firewall_policy(&m, &fw.name_any(), &fw.spec))
        .map_err(Blocked::InvalidSpec)
}

/// What the apply step left in effect.
enum Applied {
    /// The allow policy (by name), and whether it had to be restored.
    Policy {
        name: String,
        drifted: bool,
    },
    Blocked(Blocked),
}

/// Ensures the allow policy; without one, deletes any policy this firewall still owns: invalid
/// (or orphaned) means closed, an allow policy applied while the firewall was valid must not
/// outlive its validity.
async fn apply(
    ctx: &Context,
    fw: &MqttFirewall,
    planned: std::result::Result<NetworkPolicy, Blocked>,
    applied_before: bool,
) -> Result<Applied> {
    let ns = fw.namespace().unwrap_or_default();
    let mut policy = match planned {
        Ok(policy) => policy,
        Err(blocked) => {
            withdraw(ctx, fw, &ns).await?;
            return Ok(Applied::Blocked(blocked));
        }
    };
    let owner = fw.controller_owner_ref(&()).expect("stored objects have a uid");
    let name = policy.name_any();
    let observed = Stores::get(&ctx.stores.network_policies, &ns, &name);
    let ensured = super::apply::ensure(ctx, &mut policy, observed.as_deref(), &owner, applied_before).await?;
    if let Some(d) = &ensured.drift {
        ctx.event(fw, EventType::Warning, "DriftRepaired", format!("{d}; restored")).await;
    }
    Ok(Applied::Policy { name, drifted: ensured.drift.is_some() })
}

/// Deletes the NetworkPolicies this firewall owns.
async fn withdraw(ctx: &Context, fw: &MqttFirewall, ns: &str) -> Result<()> {
    let name = fw.name_any();
    let owned = ctx.stores.network_policies.state_filter(|p| {
        p.metadata.namespace.as_deref() == Some(ns)
            && p.labels().get(network::FIREWALL_LABEL) == Some(&name)
            && p.owner_references().iter().any(|o| Some(&o.uid) == fw.metadata.uid.as_ref())
    });
    for stale in owned {
        let pname = stale.name_any();
        super::apply::delete_as::<NetworkPolicy>(ctx, ns, &pname).await?;
        let note = format!("NetworkPolicy {pname} deleted: the firewall is not valid");
        ctx.event(fw, EventType::Warning, "PolicyWithdrawn", note).await;
    }
    Ok(())
}

/// The firewall's status (pure): Ready, the compliance checks and the policies in effect.
fn status(
    fw: &MqttFirewall,
    previous: &MqttFirewallStatus,
    applied: &Applied,
    now: jiff::Timestamp,
) -> MqttFirewallStatus {
    let generation = fw.metadata.generation;
    let (ready, policies, drifted) = match applied {
        Applied::Policy { name, drifted } => (
            Cond::ok(CONDITION_READY, "Applied", format!("NetworkPolicy {name} allows the listed peers")),
            vec![name.clone()],
            *drifted,
        ),
        Applied::Blocked(Blocked::BrokerMissing) => {
            let ready = conditions::broker_not_found(&fw.spec.broker_ref.name, &fw.namespace().unwrap_or_default());
            (ready, vec![], false)
        }
        Applied::Blocked(Blocked::InvalidSpec(e)) => {
            (Cond::not(CONDITION_READY, "InvalidSpec", e.to_string()), vec![], false)
        }
    };
    let public = crate::validate::public_cidrs(&fw.spec).iter().map(|n| n.to_string()).collect();
    let checks = compliance::evaluate_firewall(&FirewallFacts { public_cidrs: public, policy_in_effect: !drifted });
    let summary = compliance::summarize(checks, None);
    let compliant = super::compliant_condition(&summary);
    MqttFirewallStatus {
        observed_generation: generation,
        conditions: conditions::merge(&previous.conditions, vec![ready, compliant], generation, now),
        compliance: Some(summary),
        policy_count: policies.len() as u32,
        policies,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firewall(public: bool) -> MqttFirewall {
        let cidr = if public { "0.0.0.0/0" } else { "10.0.0.0/8" };
        let mut f = MqttFirewall::new(
            "fw",
            serde_json::from_value(serde_json::json!({"brokerRef": {"name": "b"}, "allowPublicInternet": public,
                "ingress": [{"from": [{"cidr": cidr}]}]}))
            .unwrap(),
        );
        f.metadata.namespace = Some("ns".into());
        f.metadata.generation = Some(1);
        f
    }

    fn failing(s: &MqttFirewallStatus) -> Vec<&str> {
        s.compliance.as_ref().unwrap().checks.iter().filter(|c| !c.passed).map(|c| c.id.as_str()).collect()
    }

    #[test]
    fn a_firewall_without_its_broker_plans_no_policy_and_says_so() {
        let fw = firewall(false);
        let blocked = plan(&fw, None).err().unwrap();
        assert!(matches!(blocked, Blocked::BrokerMissing));
        let s = status(&fw, &MqttFirewallStatus::default(), &Applied::Blocked(blocked), jiff::Timestamp::UNIX_EPOCH);
        let ready = s.conditions.iter().find(|c| c.type_ == CONDITION_READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str(), s.policy_count), ("False", "BrokerNotFound", 0));
    }

    #[test]
    fn a_restored_policy_and_a_public_peer_fail_their_checks() {
        let applied = Applied::Policy { name: "b-allow-fw".into(), drifted: true };
        let s = status(&firewall(true), &MqttFirewallStatus::default(), &applied, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(
            (s.policies.clone(), failing(&s)),
            (vec!["b-allow-fw".to_string()], vec!["MOAT-FW-101", "MOAT-FW-102"])
        );
        let applied = Applied::Policy { name: "b-allow-fw".into(), drifted: false };
        let s = status(&firewall(false), &MqttFirewallStatus::default(), &applied, jiff::Timestamp::UNIX_EPOCH);
        assert!(failing(&s).is_empty());
    }
}
