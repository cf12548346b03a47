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

/// Reconciles one MqttAcl: observe (its broker, the broker's published outcome) → decide (pure)
/// → status (pure) → write status and report.
async fn run(acl: &MqttAcl, ctx: &Context) -> Result<Action> {
    let now = ctx.clock.now();
    let previous = acl.status.clone().unwrap_or_default();
    let seen = observe(ctx, acl);
    let Some(decided) = decide(acl, &seen) else {
        return Ok(Action::await_change()); // the broker's first outcomes will wake us
    };
    let status = status(acl, &previous, &decided, now);
    super::write_status(ctx, acl, &previous, &status).await?;
    if let Some(c) = &status.compliance {
        super::report::write(ctx, acl, &acl.spec.broker_ref.name, c).await;
    }
    match decided.invalid {
        Some(e) => Err(Error::InvalidSpec(e)),
        None => Ok(Action::await_change()),
    }
}

/// What a reconcile reads: whether the broker exists, and what it published (from the board).
struct Observed {
    broker_exists: bool,
    published: Option<Arc<Published>>,
}

fn observe(ctx: &Context, acl: &MqttAcl) -> Observed {
    let ns = acl.namespace().unwrap_or_default();
    let broker = &acl.spec.broker_ref.name;
    Observed {
        broker_exists: Stores::get(&ctx.stores.brokers, &ns, broker).is_some(),
        published: ctx.board.get(&ns, broker),
    }
}

/// Where the ACL stands.
struct Decided {
    ready: Cond,
    /// Why the ACL is not in effect at all (an error: not retried until the spec changes).
    invalid: Option<crate::validate::FieldError>,
    rule_count: u32,
    pending_users: Vec<String>,
}

impl Decided {
    fn blocked(ready: Cond, invalid: Option<crate::validate::FieldError>) -> Self {
        Self { ready, invalid, rule_count: 0, pending_users: vec![] }
    }

    fn not_ready(reason: &str, message: impl Into<String>, invalid: Option<crate::validate::FieldError>) -> Self {
        Self::blocked(Cond::not(CONDITION_READY, reason, message), invalid)
    }
}

/// The ACL's standing from its own checks and the broker's outcome (pure); None while the broker
/// has published nothing yet.
fn decide(acl: &MqttAcl, seen: &Observed) -> Option<Decided> {
    let (ns, name, broker) = (acl.namespace().unwrap_or_default(), acl.name_any(), &acl.spec.broker_ref.name);
    // the admission-equivalent checks need no broker; the size bound and users do
    if let Err(e) = crate::validate::acl_spec(&acl.spec) {
        return Some(Decided::not_ready("InvalidSpec", e.to_string(), Some(e)));
    }
    if !seen.broker_exists {
        return Some(Decided::blocked(conditions::broker_not_found(broker, &ns), None));
    }
    let acls = match seen.published.as_deref()? {
        Published::BrokerInvalid(e) => {
            return Some(Decided::not_ready("BrokerInvalid", format!("MqttBroker {broker} is invalid: {e}"), None));
        }
        Published::Applied { acls, .. } => acls,
    };
    let waiting = || Decided::not_ready("WaitingForBroker", "not yet in the broker's applied ACL file", None);
    let Some(o) = acls.get(&name).filter(|o| Some(o.generation) == acl.metadata.generation) else {
        return Some(waiting());
    };
    Some(match &o.invalid {
        // invalid means closed: the users it lists are denied everything meanwhile
        Some(e) => Decided::not_ready(
            "InvalidSpec",
            format!("{e}; the users it lists are denied every topic until it is fixed"),
            Some(e.clone()),
        ),
        None if !o.pending_users.is_empty() => Decided {
            ready: Cond::not(
                CONDITION_READY,
                "UsersNotReady",
                format!("rules for {} are kept out until those users are Ready", o.pending_users.join(", ")),
            ),
            invalid: None,
            rule_count: o.rule_lines,
            pending_users: o.pending_users.clone(),
        },
        None => Decided {
            ready: Cond::ok(CONDITION_READY, "Applied", format!("{} rule line(s) in effect on {broker}", o.rule_lines)),
            invalid: None,
            rule_count: o.rule_lines,
            pending_users: vec![],
        },
    })
}

/// The ACL's status (pure): its standing, the compliance checks and the risky-grant warnings.
fn status(acl: &MqttAcl, previous: &MqttAclStatus, decided: &Decided, now: jiff::Timestamp) -> MqttAclStatus {
    let generation = acl.metadata.generation;
    let warnings = crate::plan::broker::risky_grants(&acl.spec.rules);
    let checks = compliance::evaluate_acl(&AclFacts {
        warnings: warnings.clone(),
        pending_users: decided.pending_users.clone(),
    });
    let summary = compliance::summarize(checks, None);
    let compliant = super::compliant_condition(&summary);
    MqttAclStatus {
        observed_generation: generation,
        conditions: conditions::merge(&previous.conditions, vec![decided.ready.clone(), compliant], generation, now),
        compliance: Some(summary),
        rule_count: decided.rule_count,
        pending_users: decided.pending_users.clone(),
        warnings: warnings.iter().map(ToString::to_string).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::plan::broker::AclOutcome;

    fn acl(spec: serde_json::Value) -> MqttAcl {
        let mut a = MqttAcl::new("own", serde_json::from_value(spec).unwrap());
        a.metadata.namespace = Some("ns".into());
        a.metadata.generation = Some(2);
        a
    }

    fn valid() -> MqttAcl {
        acl(serde_json::json!({"brokerRef": {"name": "b"}, "allUsers": true,
            "rules": [{"topic": "devices/%u/#", "access": "ReadWrite"}]}))
    }

    fn applied(outcome: AclOutcome) -> Observed {
        let acls = BTreeMap::from([(outcome.name.clone(), outcome)]);
        Observed {
            broker_exists: true,
            published: Some(Arc::new(Published::Applied { users: Default::default(), acls })),
        }
    }

    fn outcome(generation: i64, pending: &[&str]) -> AclOutcome {
        AclOutcome {
            name: "own".into(),
            generation,
            rule_lines: 3,
            pending_users: pending.iter().map(|u| u.to_string()).collect(),
            warnings: vec![],
            invalid: None,
        }
    }

    #[test]
    fn an_invalid_acl_is_reported_before_its_broker_is_looked_for() {
        let both = acl(serde_json::json!({"brokerRef": {"name": "b"}, "allUsers": true, "users": ["u"],
            "rules": [{"topic": "a", "access": "Read"}]}));
        let d = decide(&both, &Observed { broker_exists: false, published: None }).unwrap();
        assert_eq!((d.ready.reason.as_str(), d.invalid.is_some()), ("InvalidSpec", true));
    }

    #[test]
    fn an_acl_waits_silently_for_its_brokers_first_outcomes_then_for_its_own_generation() {
        assert!(decide(&valid(), &Observed { broker_exists: true, published: None }).is_none());
        let missing = decide(&valid(), &Observed { broker_exists: false, published: None }).unwrap();
        assert_eq!(missing.ready.reason, "BrokerNotFound");
        let older = decide(&valid(), &applied(outcome(1, &[]))).unwrap();
        assert_eq!((older.ready.reason.as_str(), older.rule_count), ("WaitingForBroker", 0));
    }

    #[test]
    fn an_acl_in_effect_says_how_many_rules_and_which_users_are_kept_out() {
        let d = decide(&valid(), &applied(outcome(2, &[]))).unwrap();
        assert_eq!((d.ready.reason.as_str(), d.rule_count, d.invalid.is_none()), ("Applied", 3, true));
        let d = decide(&valid(), &applied(outcome(2, &["late"]))).unwrap();
        assert_eq!((d.ready.reason.as_str(), d.pending_users.clone()), ("UsersNotReady", vec!["late".to_string()]));
        let s = status(&valid(), &MqttAclStatus::default(), &d, jiff::Timestamp::UNIX_EPOCH);
        let failing: Vec<&str> =
            s.compliance.as_ref().unwrap().checks.iter().filter(|c| !c.passed).map(|c| c.id.as_str()).collect();
        assert_eq!((s.rule_count, failing), (3, vec!["MOAT-ACL-103"]));
    }
}
