//! The MqttFirewall controller: the firewall's allow NetworkPolicy (owned by the MqttFirewall, so
//! deleting it removes the policy) and status.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::conditions::{self, Cond};
use super::context::{Context, Stores};
use super::{Error, Result};
use crate::compliance::{self, FirewallFacts};
use crate::crd::{CONDITION_READY, MqttFirewall, MqttFirewallStatus};
use crate::model::BrokerModel;
use crate::render::network;

/// Reconciles one MqttFirewall.
pub async fn reconcile(fw: Arc<MqttFirewall>, ctx: Arc<Context>) -> Result<Action> {
    super::observed_reconcile("MqttFirewall", &*fw, &ctx, reconcile_inner(&fw, &ctx)).await
}

async fn reconcile_inner(fw: &MqttFirewall, ctx: &Context) -> Result<Action> {
    let ns = fw.namespace().unwrap_or_default();
    let name = fw.name_any();
    let now = ctx.clock.now();
    let previous = fw.status.clone().unwrap_or_default();
    let broker_name = fw.spec.broker_ref.name.clone();
    let generation = fw.metadata.generation;
    let public: Vec<String> = crate::validate::public_cidrs(&fw.spec).iter().map(|n| n.to_string()).collect();

    let mut invalid = None;
    let mut policies = vec![];
    let mut drifted = false;
    let ready = match Stores::get(&ctx.stores.brokers, &ns, &broker_name) {
        None => Cond::not(
            CONDITION_READY,
            "BrokerNotFound",
            format!("MqttBroker {broker_name} does not exist in namespace {ns}"),
        ),
        Some(broker) => match BrokerModel::new(&broker)
            .and_then(|m| crate::validate::firewall_spec(&fw.spec).map(|_| m))
            .and_then(|m| network::firewall_policy(&m, &name, &fw.spec))
        {
            Err(e) => {
                let c = Cond::not(CONDITION_READY, "InvalidSpec", e.to_string());
                invalid = Some(e);
                c
            }
            Ok(mut policy) => {
                let owner = fw.controller_owner_ref(&()).expect("stored objects have a uid");
                let pname = policy.name_any();
                let observed = Stores::get(&ctx.stores.network_policies, &ns, &pname);
                let ensured =
                    super::apply::ensure(ctx, &mut policy, observed.as_deref(), &owner, !previous.policies.is_empty())
                        .await?;
                if let Some(d) = ensured.drift {
                    drifted = true;
                    ctx.event(fw, EventType::Warning, "DriftRepaired", format!("{d}; restored")).await;
                }
                policies.push(pname.clone());
                Cond::ok(CONDITION_READY, "Applied", format!("NetworkPolicy {pname} allows the listed peers"))
            }
        },
    };
    // Invalid (or orphaned) means closed: an allow policy applied while the firewall was valid
    // must not outlive its validity.
    if policies.is_empty() {
        for stale in ctx.stores.network_policies.state_filter(|p| {
            p.metadata.namespace.as_deref() == Some(ns.as_str())
                && p.labels().get(network::FIREWALL_LABEL) == Some(&name)
                && p.owner_references().iter().any(|o| Some(&o.uid) == fw.metadata.uid.as_ref())
        }) {
            let pname = stale.name_any();
            super::apply::delete_as::<k8s_openapi::api::networking::v1::NetworkPolicy>(ctx, &ns, &pname).await?;
            ctx.event(
                fw,
                EventType::Warning,
                "PolicyWithdrawn",
                format!("NetworkPolicy {pname} deleted: the firewall is not valid"),
            )
            .await;
        }
    }
    let checks = compliance::evaluate_firewall(&FirewallFacts { public_cidrs: public, policy_in_effect: !drifted });
    let summary = compliance::summarize(checks, None);
    let compliant = super::compliant_condition(&summary);
    let status = MqttFirewallStatus {
        observed_generation: generation,
        conditions: conditions::merge(&previous.conditions, vec![ready, compliant], generation, now),
        compliance: Some(summary),
        policy_count: policies.len() as u32,
        policies,
    };
    super::write_status(ctx, fw, &previous, &status).await?;
    if let Some(c) = &status.compliance {
        super::report::write(ctx, fw, &fw.spec.broker_ref.name, c).await;
    }
    match invalid {
        Some(e) => Err(Error::InvalidSpec(e)),
        None => Ok(Action::await_change()),
    }
}
