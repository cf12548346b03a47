//! The MqttBroker controller: aggregates the broker's users, ACLs and firewalls into its Secrets,
//! workload and policies, issues and revokes client certificates, runs audits and upgrades, and
//! reports status. A reconcile is the list of its steps:
//!
//! observe (the caches, once) → model (validate the spec) → plan (pure: every decision and the
//! desired objects) → apply (write what differs, in a safe order) → publish (the users' and
//! ACLs' outcomes, waking only those that changed) → audit (the active probe, when due) →
//! status (pure) → write status, events, metrics.

mod apply;
pub mod attest;
mod audit;
pub mod observe;
mod outside;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::conditions::{self, Cond};
use super::context::{Context, Published};
use super::{Error, Result};
use crate::crd::broker::UpgradePolicy;
use crate::crd::{CONDITION_COMPLIANT, CONDITION_READY, MqttBroker};
use crate::model::BrokerModel;
use crate::plan::broker::{self as bp, BrokerPlan, PlanInput};
use crate::plan::objects::{self, BrokerObjects, ObjectInputs};
use crate::render::config::{ConfigPaths, ListenerOverrides};
use crate::upgrade::{self, Catalog, MosquittoVersion, RolloutInput, RolloutState, RolloutStep};
use observe::Observed;

/// Annotation on an MqttBroker that starts a CA rollover now (any new value; e.g. after a
/// suspected key compromise). The rollover keeps trust overlap like a scheduled one.
pub const ROTATE_CA_ANNOTATION: &str = "mqtt.moat.dev/rotate-ca";
/// Annotation on an MqttBroker that re-issues the server certificate now (any new value).
pub const RENEW_SERVER_ANNOTATION: &str = "mqtt.moat.dev/renew-server-certificate";

/// Reconciles one MqttBroker.
pub async fn reconcile(broker: Arc<MqttBroker>, ctx: Arc<Context>) -> Result<Action> {
    super::observed_reconcile("MqttBroker", &*broker, &ctx, run(&broker, &ctx)).await
}

async fn run(broker: &MqttBroker, ctx: &Context) -> Result<Action> {
    let now = ctx.clock.now();
    let started = std::time::Instant::now();
    let owner = broker.controller_owner_ref(&()).expect("stored objects have a uid");
    let seen = Observed::read(&ctx.stores, broker, &owner);
    let (model, windows) = match model(broker) {
        Ok(m) => m,
        Err(e) => return invalid(ctx, broker, e, now).await,
    };
    let catalog = ctx.catalog();
    let key = (model.namespace.clone(), model.name.clone());
    let last_ledger = ctx.ledgers.lock().unwrap().get(&key).cloned();
    let stored_rollout = broker.status.as_ref().and_then(|s| s.upgrade.as_ref()).and_then(RolloutState::from_status);
    let rollout = upgrade::latest_state(stored_rollout, ctx.rollouts.lock().unwrap().get(&key).cloned());
    let decided = decide(ctx, &model, &windows, &seen, last_ledger.as_ref(), rollout, catalog, now)?;
    let applied = apply::apply(ctx, broker, &model, &owner, &seen, &decided).await?;
    // what grows with the broker's users (not its audits): see `super::broker_max_wait`
    ctx.broker_took.lock().unwrap().insert(key.clone(), started.elapsed());
    ctx.rollouts.lock().unwrap().insert(key.clone(), (now, decided.step.state.clone()));
    let revocations = revocations(ctx, &key, last_ledger.as_ref(), &decided.plan);
    ctx.ledgers.lock().unwrap().insert(key.clone(), decided.plan.ledger.clone());
    publish(ctx, broker, &decided.plan);
    events(ctx, broker, &seen, &decided, &applied).await;
    let audit = audit::run(ctx, broker, &model, &seen, &decided, now).await;
    let previous = broker.status.clone().unwrap_or_default();
    let files = files(ctx, &key, &model, &seen, &decided, revocations, audit.due, &previous, now).await;
    let last_drift = ctx.drift.lock().unwrap().get(&key).cloned().unwrap_or_default();
    let status = status::broker(&status::Inputs {
        broker,
        model: &model,
        seen: &seen,
        decided: &decided,
        applied: &applied,
        audit: &audit,
        previous: &previous,
        last_drift: &last_drift,
        files: files.as_ref(),
        now,
    });
    audit::compliance_events(ctx, broker, previous.compliance.as_ref(), &status.compliance).await;
    super::write_status(ctx, broker, &previous, &status.status).await?;
    ctx.drift.lock().unwrap().insert(key, status.status.drift.clone());
    if audit.due {
        super::report::write(ctx, broker, &model.name, &status.compliance).await;
    }
    status::metrics(ctx, &model, &decided, &status.status);
    if applied.changed > 0 {
        tracing::info!(broker = %model.name, namespace = %model.namespace, changed = applied.changed, "applied broker objects");
    }
    tracing::debug!(broker = %model.name, namespace = %model.namespace, "reconciled broker");
    Ok(match files.as_ref().is_some_and(|f| f.following(now)) {
        true => Action::requeue(attest::RECHECK),
        false => super::wake_at(ctx, next_wake(&model, &windows, &seen, &decided, &status, now)),
    })
}

/// The credentials this plan takes away, compared with what this operator last published and
/// recorded for the broker (none right after a start: nothing to compare with).
fn revocations(
    ctx: &Context,
    key: &(String, String),
    last_ledger: Option<&crate::plan::ledger::Ledger>,
    plan: &BrokerPlan,
) -> Vec<crate::plan::revocation::Revocation> {
    let published = ctx.board.get(&key.0, &key.1);
    let before = match (published.as_deref(), last_ledger) {
        (Some(Published::Applied { users, .. }), Some(ledger)) => Some((&**users, ledger)),
        _ => None,
    };
    crate::plan::revocation::revocations(before, (&*plan.verdicts, &plan.ledger))
}

/// The attestation step: which pods run the files this plan wrote (asked while they catch up and
/// at audits; only when the operator may reach the pods).
#[allow(clippy::too_many_arguments)]
async fn files(
    ctx: &Context,
    key: &(String, String),
    model: &BrokerModel,
    seen: &Observed,
    decided: &Decided,
    revocations: Vec<crate::plan::revocation::Revocation>,
    audit_due: bool,
    previous: &crate::crd::broker::MqttBrokerStatus,
    now: Timestamp,
) -> Option<attest::Memo> {
    if !(ctx.config.active_probe && model.spec.security.active_probe) {
        return None;
    }
    let expected = match crate::render::bundle::assemble(&decided.objects.mounted(&model.name)) {
        Ok(set) => set.digest(),
        Err(e) => {
            tracing::error!(broker = %model.name, error = %e, "cannot compute the broker's files");
            return None;
        }
    };
    let last = ctx.files.lock().unwrap().get(key).cloned();
    // after a start, the files the pods run keep the time they were written
    let since = match &last {
        None => previous.files.as_ref().and_then(|f| f.written_at.as_ref()).map_or(now, |t| t.0),
        Some(_) => now,
    };
    let mut memo = attest::Memo::next(last.as_ref(), expected, revocations, since);
    if memo.should_attest(audit_due, now) {
        let pods = attest::attest(seen, &memo.expected).await;
        memo.record(pods);
    }
    ctx.files.lock().unwrap().insert(key.clone(), memo.clone());
    Some(memo)
}

/// The model step: the validated broker and its parsed maintenance windows.
fn model(broker: &MqttBroker) -> std::result::Result<(BrokerModel, Vec<upgrade::Window>), crate::validate::FieldError> {
    let m = BrokerModel::new(broker)?;
    let windows = upgrade::parse_windows(&m.spec.upgrade.maintenance_windows)
        .map_err(|message| crate::validate::FieldError::new("spec.upgrade.maintenanceWindows", message))?;
    Ok((m, windows))
}

/// An invalid spec: reported, published to the users and ACLs, nothing applied.
async fn invalid(ctx: &Context, broker: &MqttBroker, e: crate::validate::FieldError, now: Timestamp) -> Result<Action> {
    let previous = broker.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = broker.metadata.generation;
    status.conditions = conditions::merge(
        &previous.conditions,
        vec![
            Cond::not(CONDITION_READY, "InvalidSpec", e.to_string()),
            Cond::unknown(CONDITION_COMPLIANT, "InvalidSpec", "the spec is invalid"),
        ],
        broker.metadata.generation,
        now,
    );
    ctx.board.publish(
        &broker.namespace().unwrap_or_default(),
        &broker.name_any(),
        Published::BrokerInvalid(e.to_string()),
    );
    super::write_status(ctx, broker, &previous, &status).await?;
    Err(Error::InvalidSpec(e))
}

/// Everything the plan step decided.
pub struct Decided {
    /// Files, credentials, verdicts.
    pub plan: BrokerPlan,
    /// The upgrade state machine's step.
    pub step: RolloutStep,
    /// The objects to apply.
    pub objects: BrokerObjects,
    /// The version the pods run now.
    pub running: String,
    /// The version moat moves to.
    pub desired: String,
    /// The user asked for `desired` explicitly (not AutoPatch).
    pub explicit: bool,
    /// The security-patch catalog in force.
    pub catalog: Arc<Catalog>,
}

/// The plan step (pure over the snapshot, the clock and the catalog).
#[allow(clippy::too_many_arguments)]
fn decide(
    ctx: &Context,
    model: &BrokerModel,
    windows: &[upgrade::Window],
    seen: &Observed,
    last_ledger: Option<&crate::plan::ledger::Ledger>,
    rollout: Option<RolloutState>,
    catalog: Arc<Catalog>,
    now: Timestamp,
) -> Result<Decided> {
    let existing = seen.existing(&model.name, last_ledger).map_err(|e| Error::Observe(Box::new(e)))?;
    let conflicts: std::collections::HashMap<(String, String), String> = {
        let mut known = ctx.name_conflicts.lock().unwrap();
        known.retain(|_, (_, at)| at.elapsed() < super::context::NAME_CONFLICT_RETRY);
        known.iter().map(|(k, (holder, _))| (k.clone(), holder.clone())).collect()
    };
    let views = seen.user_views(&ctx.stores, &conflicts);
    let annotation = |a: &str| seen.broker_annotations.get(a).cloned();
    let requests =
        bp::Requests { rotate_ca: annotation(ROTATE_CA_ANNOTATION), renew_server: annotation(RENEW_SERVER_ANNOTATION) };
    let acls: Vec<&crate::crd::MqttAcl> = seen.acls.iter().map(|a| &**a).collect();
    let plan = bp::plan(PlanInput {
        model,
        users: &views,
        acls: &acls,
        existing,
        paths: &ConfigPaths::in_pod(),
        overrides: &ListenerOverrides::default(),
        extra_ips: &[],
        requests: &requests,
        attestation: ctx.config.active_probe && model.spec.security.active_probe,
        now,
    })
    .map_err(|e| Error::Plan(Box::new(e)))?;

    let running = seen.template_version().unwrap_or_else(|| model.spec.version.clone());
    let (desired, explicit) = desired_version(model, &catalog);
    let pods = seen.pod_views();
    let step = upgrade::step(&RolloutInput {
        name: &model.name,
        replicas: model.spec.replicas,
        pods: &pods,
        desired: &desired,
        running: if seen.statefulset.is_some() { &running } else { &desired },
        state: rollout.as_ref(),
        may_start: explicit || upgrade::is_open(windows, now),
        rollout_timeout: model.durations.rollout_timeout,
        ready_grace: model.durations.ready_grace,
        now,
    });
    let firewalls: Vec<&crate::crd::MqttFirewallSpec> = seen
        .firewalls
        .iter()
        .filter(|f| {
            crate::validate::firewall_spec(&f.spec).is_ok()
                && crate::render::network::firewall_policy(model, &f.name_any(), &f.spec).is_ok()
        })
        .map(|f| &f.spec)
        .collect();
    let objects = objects::broker_objects(
        model,
        &plan,
        &ObjectInputs {
            agent_image: &ctx.config.agent_image,
            version: &step.template_version,
            partition: step.partition,
            firewalls: &firewalls,
            operator: &ctx.config.operator,
            metrics_namespaces: &ctx.config.agent_metrics_namespaces,
        },
    )
    .map_err(|e| Error::Plan(Box::new(e)))?;
    Ok(Decided { plan, step, objects, running, desired, explicit, catalog })
}

/// Publishes the users' verdicts and the ACLs' outcomes (wakes only those that changed).
fn publish(ctx: &Context, broker: &MqttBroker, plan: &BrokerPlan) {
    let acls = plan.acls.iter().map(|a| (a.name.clone(), a.clone())).collect();
    ctx.board.publish(
        &broker.namespace().unwrap_or_default(),
        &broker.name_any(),
        Published::Applied { users: plan.verdicts.clone(), acls },
    );
}

/// Events of what this reconcile did.
async fn events(ctx: &Context, broker: &MqttBroker, seen: &Observed, decided: &Decided, applied: &apply::Applied) {
    let plan = &decided.plan;
    if let Some(t) = plan.ca_transition {
        let note = format!("CA {}; trust bundle holds {} CA(s)", t.as_str().to_lowercase(), plan.ca.trusted().count());
        ctx.event(broker, EventType::Normal, &format!("CA{}", t.as_str()), note).await;
    }
    if let Some(r) = plan.server_renewal {
        let reason =
            if r == crate::pki::RenewReason::Missing { "ServerCertificateIssued" } else { "ServerCertificateRenewed" };
        ctx.metrics.certificates_issued.get_or_create(&crate::metrics::KindLabels { kind: "server".into() }).inc();
        ctx.event(broker, EventType::Normal, reason, format!("server certificate issued ({})", r.as_str())).await;
    }
    let issued: Vec<(&String, crate::pki::RenewReason)> =
        plan.client_certs.iter().filter_map(|(user, cert)| Some((user, cert.renewal?))).collect();
    // by name, and only when certificates were issued: a burst of 10,000 new certificate users
    // would otherwise scan every user per user
    let users = if issued.is_empty() { Default::default() } else { seen.users_by_name() };
    for (user, r) in issued {
        ctx.metrics.certificates_issued.get_or_create(&crate::metrics::KindLabels { kind: "client".into() }).inc();
        let Some(u) = users.get(user.as_str()) else { continue };
        // a new user's first certificate is not news (one Event per user would double the writes
        // of a bulk apply); renewals and re-issues are
        if r == crate::pki::RenewReason::Missing && u.status.as_ref().is_none_or(|s| s.certificate.is_none()) {
            continue;
        }
        let reason = if r == crate::pki::RenewReason::Missing { "CertificateIssued" } else { "CertificateRenewed" };
        ctx.event(*u, EventType::Normal, reason, format!("client certificate issued ({})", r.as_str())).await;
    }
    for (user, serial, why) in &plan.newly_revoked {
        let note = format!("client certificate {serial} of MqttUser {user} revoked: {why}");
        ctx.event(broker, EventType::Normal, "CertificateRevoked", note).await;
    }
    for d in &applied.drift {
        ctx.event(broker, EventType::Warning, "DriftRepaired", format!("{d}; restored")).await;
    }
    if let Some(t) = &decided.step.transition {
        let warn = matches!(t.reason, upgrade::machine::REASON_ROLLING_BACK | upgrade::machine::REASON_FAILED);
        ctx.event(broker, if warn { EventType::Warning } else { EventType::Normal }, t.reason, t.message.clone()).await;
    }
}

/// When to look again: the next certificate/CRL/revocation event, the next audit, upgrade timers.
fn next_wake(
    model: &BrokerModel,
    windows: &[upgrade::Window],
    seen: &Observed,
    decided: &Decided,
    status: &status::Output,
    now: Timestamp,
) -> Timestamp {
    let interval = model.durations.audit_interval;
    let mut next = vec![crate::plan::after(status.audit_time.unwrap_or(now), interval)];
    // a pod became Ready within the second of this audit, which left a check Unknown: the audit
    // is due again, and nothing else may come to wake the broker for it
    if status.audit_time.is_some_and(|t| audit::pod_unprobed(&seen.pods, t, &status.status)) {
        next.push(crate::plan::after(now, Duration::from_secs(1)));
    }
    next.extend(decided.plan.next_event);
    if decided
        .step
        .state
        .as_ref()
        .is_some_and(|s| !matches!(s.phase, upgrade::Phase::Completed | upgrade::Phase::Failed))
    {
        next.push(crate::plan::after(now, Duration::from_secs(5)));
    }
    if decided.plan.sessions_epoch.is_some() && status.status.revocation.as_ref().is_some_and(|r| r.restart_pending) {
        next.push(crate::plan::after(now, Duration::from_secs(5)));
    }
    if !windows.is_empty() && decided.desired != decided.running && !decided.explicit {
        next.extend(upgrade::next_open(windows, now));
    }
    next.into_iter().filter(|t| *t > now).min().unwrap_or(crate::plan::after(now, interval))
}

/// The version the broker should run, and whether the user asked for it explicitly.
fn desired_version(model: &BrokerModel, catalog: &Catalog) -> (String, bool) {
    let spec = model.spec.version.clone();
    if model.spec.upgrade.policy == UpgradePolicy::AutoPatch
        && let Ok(v) = spec.parse::<MosquittoVersion>()
        && let Some(target) = catalog.patch_target(&v)
    {
        return (target.to_string(), false);
    }
    (spec, true)
}
