//! The MqttAcl controller: status of one ACL from the outcome the broker controller published
//! (in effect, users pending, invalid or too large) and its risky-grant warnings.

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::conditions::{self, Cond};
use super::context::{Context, Published, Stores};
use super::{Error, Result};
use crate::compliance::{self, AclFacts};
use crate::crd::{CONDITION_READY, MqttAcl, MqttAclStatus};

/// Reconciles one MqttAcl.
pub async fn reconcile(acl: Arc<MqttAcl>, ctx: Arc<Context>) -> Result<Action> {
    super::observed_reconcile("MqttAcl", &*acl, &ctx, run(&acl, &ctx)).await
}

async fn run(acl: &MqttAcl, ctx: &Context) -> Result<Action> {
    let ns = acl.namespace().unwrap_or_default();
    let name = acl.name_any();
    let now = ctx.clock.now();
    let previous = acl.status.clone().unwrap_or_default();
    let broker = acl.spec.broker_ref.name.clone();
    let generation = acl.metadata.generation;
    let warnings = crate::plan::broker::risky_grants(&acl.spec.rules);

    // the admission-equivalent checks need no broker; the size bound and users do
    let own_check = crate::validate::acl_spec(&acl.spec).err();
    let (ready, invalid, rule_count, pending) = match (&own_check, Stores::get(&ctx.stores.brokers, &ns, &broker)) {
        (Some(e), _) => (Cond::not(CONDITION_READY, "InvalidSpec", e.to_string()), Some(e.clone()), 0, vec![]),
        (None, None) => (
            Cond::not(
                CONDITION_READY,
                "BrokerNotFound",
                format!("MqttBroker {broker} does not exist in namespace {ns}"),
            ),
            None,
            0,
            vec![],
        ),
        (None, Some(_)) => match ctx.board.get(&ns, &broker).as_deref() {
            None => return Ok(Action::await_change()), // the broker's first outcomes will wake us
            Some(Published::BrokerInvalid(e)) => (
                Cond::not(CONDITION_READY, "BrokerInvalid", format!("MqttBroker {broker} is invalid: {e}")),
                None,
                0,
                vec![],
            ),
            Some(Published::Applied { acls, .. }) => match acls.get(&name) {
                Some(o) if Some(o.generation) != generation => (
                    Cond::not(CONDITION_READY, "WaitingForBroker", "not yet in the broker's applied ACL file"),
                    None,
                    0,
                    vec![],
                ),
                None => (
                    Cond::not(CONDITION_READY, "WaitingForBroker", "not yet in the broker's applied ACL file"),
                    None,
                    0,
                    vec![],
                ),
                Some(o) => match &o.invalid {
                    // invalid means closed: the users it lists are denied everything meanwhile
                    Some(e) => (
                        Cond::not(
                            CONDITION_READY,
                            "InvalidSpec",
                            format!("{e}; the users it lists are denied every topic until it is fixed"),
                        ),
                        Some(e.clone()),
                        0,
                        vec![],
                    ),
                    None if !o.pending_users.is_empty() => (
                        Cond::not(
                            CONDITION_READY,
                            "UsersNotReady",
                            format!(
                                "rules for {} are kept out until those users are Ready",
                                o.pending_users.join(", ")
                            ),
                        ),
                        None,
                        o.rule_lines,
                        o.pending_users.clone(),
                    ),
                    None => (
                        Cond::ok(
                            CONDITION_READY,
                            "Applied",
                            format!("{} rule line(s) in effect on {broker}", o.rule_lines),
                        ),
                        None,
                        o.rule_lines,
                        vec![],
                    ),
                },
            },
        },
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
        warnings: warnings.iter().map(ToString::to_string).collect(),
    };
    super::write_status(ctx, acl, &previous, &status).await?;
    if let Some(c) = &status.compliance {
        super::report::write(ctx, acl, &acl.spec.broker_ref.name, c).await;
    }
    match invalid {
        Some(e) => Err(Error::InvalidSpec(e)),
        None => Ok(Action::await_change()),
    }
}
