//! The MqttAcl controller: validation, risky-grant warnings and status (Ready once the rules are in
//! the broker's applied ACL Secret).

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::conditions::{self, Cond};
use super::context::{Context, Stores};
use super::index::applied;
use super::{Error, Result};
use crate::compliance::{self, AclFacts};
use crate::crd::{CONDITION_READY, MqttAcl, MqttAclStatus};

/// Reconciles one MqttAcl.
pub async fn reconcile(acl: Arc<MqttAcl>, ctx: Arc<Context>) -> Result<Action> {
    super::observed_reconcile("MqttAcl", &*acl, &ctx, reconcile_inner(&acl, &ctx)).await
}

async fn reconcile_inner(acl: &MqttAcl, ctx: &Context) -> Result<Action> {
    let ns = acl.namespace().unwrap_or_default();
    let name = acl.name_any();
    let now = ctx.clock.now();
    let previous = acl.status.clone().unwrap_or_default();
    let broker = acl.spec.broker_ref.name.clone();
    let generation = acl.metadata.generation;
    let warnings = crate::build::broker::risky_grants(&acl.spec.rules);

    let (ready, invalid, rule_count, pending) = if Stores::get(&ctx.stores.brokers, &ns, &broker).is_none() {
        (
            Cond::not(
                CONDITION_READY,
                "BrokerNotFound",
                format!("MqttBroker {broker} does not exist in namespace {ns}"),
            ),
            None,
            0,
            vec![],
        )
    } else if let Err(e) = crate::validate::acl_spec(&acl.spec) {
        (Cond::not(CONDITION_READY, "InvalidSpec", e.to_string()), Some(e), 0, vec![])
    } else {
        // listed users without a Ready MqttUser are kept out of the broker
        let ready_users: Vec<String> = ctx
            .stores
            .users_of(&ns, &broker)
            .iter()
            .filter(|u| {
                u.status.as_ref().is_some_and(|s| conditions::status_of(&s.conditions, CONDITION_READY) == Some("True"))
            })
            .filter_map(|u| u.status.as_ref().and_then(|s| s.username.clone()))
            .collect();
        let pending: Vec<String> = acl.spec.users.iter().filter(|u| !ready_users.contains(u)).cloned().collect();
        let index = applied(ctx, &ns, &broker);
        match index.acls.get(&name) {
            Some((g, _)) if Some(*g) == generation && !pending.is_empty() => (
                Cond::not(
                    CONDITION_READY,
                    "UsersNotReady",
                    format!("rules for {} are kept out until those users are Ready", pending.join(", ")),
                ),
                None,
                index.acls[&name].1,
                pending,
            ),
            Some((g, lines)) if Some(*g) == generation => (
                Cond::ok(CONDITION_READY, "Applied", format!("{lines} rule line(s) in effect on {broker}")),
                None,
                *lines,
                pending,
            ),
            _ => (
                Cond::not(CONDITION_READY, "WaitingForBroker", "not yet in the broker's applied ACL file".to_string()),
                None,
                0,
                pending,
            ),
        }
    };
    let checks = compliance::evaluate_acl(&AclFacts { warnings: warnings.clone(), pending_users: pending.clone() });
    let summary = compliance::summarize(checks, None);
    let compliant = super::compliant_condition(&summary);
    let status = MqttAclStatus {
        observed_generation: generation,
        conditions: conditions::merge(&previous.conditions, vec![ready, compliant], generation, now),
        compliance: Some(summary),
        rule_count,
        pending_users: pending,
        warnings,
    };
    super::write_status(ctx, acl, &previous, &status).await?;
    match invalid {
        Some(e) => Err(Error::InvalidSpec(e)),
        None => Ok(Action::await_change()),
    }
}
