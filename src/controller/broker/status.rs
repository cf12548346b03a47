//! Status: a pure function from what was observed, decided, applied and audited to the broker's
//! status (conditions, compliance, certificates, drift, revocation), plus its metrics.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::Decided;
use super::apply::Applied;
use super::attest::{Memo, PodFiles};
use super::audit::{self, AUDIT_NOW_ANNOTATION, Audit};
use super::observe::Observed;
use crate::compliance::{self, BrokerFacts};
use crate::controller::conditions::{self, Cond};
use crate::controller::context::Context;
use crate::controller::secrets::secret_text;
use crate::crd::broker::{
    CertificatesStatus, DriftRecord, Endpoint, FilesStatus, ListenerAuthentication, ListenerProtocol, MqttBrokerStatus,
    RevocationRecord, RevocationStatus, ServiceType, VersionStatus,
};
use crate::crd::{CONDITION_READY, CertificateInfo, ComplianceStatus, MemberCounts, MqttBroker};
use crate::metrics::{BrokerLabels, CertLabels, MeasureLabels};
use crate::model::BrokerModel;
use crate::names;
use crate::plan::broker::{BrokerPlan, Verdict};
use crate::upgrade::{self, Catalog, MosquittoVersion, RolloutState};

/// Drift records kept in status.
const DRIFT_KEPT: usize = 10;

/// Everything the status is computed from.
pub struct Inputs<'a> {
    /// The broker.
    pub broker: &'a MqttBroker,
    /// Its model.
    pub model: &'a BrokerModel,
    /// The snapshot.
    pub seen: &'a Observed,
    /// The plan step's result.
    pub decided: &'a Decided,
    /// The apply step's result.
    pub applied: &'a Applied,
    /// The audit.
    pub audit: &'a Audit,
    /// The status before this reconcile.
    pub previous: &'a MqttBrokerStatus,
    /// The drift records this operator last wrote for the broker (the cached status may lag).
    pub last_drift: &'a [DriftRecord],
    /// What the pods' agents attest about the files (None: not asked).
    pub files: Option<&'a Memo>,
    /// Now.
    pub now: Timestamp,
}

/// The computed status.
pub struct Output {
    /// The whole status.
    pub status: MqttBrokerStatus,
    /// Its compliance block.
    pub compliance: ComplianceStatus,
    /// The audit time now in effect.
    pub audit_time: Option<Timestamp>,
}

/// The broker's status.
pub fn broker(i: &Inputs) -> Output {
    let (model, plan, step, previous, now) = (i.model, &i.decided.plan, &i.decided.step, i.previous, i.now);
    let audit_time = if i.audit.due { Some(now) } else { i.audit.previous };

    // drift: durable records, newest first
    let mut drift: Vec<DriftRecord> = i
        .applied
        .drift
        .iter()
        .map(|d| DriftRecord {
            detected_at: Time(now),
            object: format!("{} {}", d.kind, d.name),
            change: d.change.clone(),
            repaired: true,
        })
        .collect();
    for d in i.last_drift.iter().chain(&previous.drift) {
        if !drift.contains(d) {
            drift.push(d.clone());
        }
    }
    drift.sort_by_key(|d| std::cmp::Reverse(d.detected_at.0));
    drift.truncate(DRIFT_KEPT);

    let last_revocation = last_revocation(i.files, previous);
    let facts = facts(i, &drift, audit_time, last_revocation.as_ref());
    let mut checks = compliance::evaluate_broker(&facts);
    if !i.audit.due {
        audit::carry_forward(&mut checks, previous.compliance.as_ref(), compliance::PROBED_CHECKS);
    }
    let compliance_status = compliance::summarize(checks, audit_time);

    let ready = match (rollout_ready(i), &step.state) {
        // the spec asks for a version that failed its health gate: the broker serves the old one
        (_, Some(st)) if st.phase == upgrade::Phase::Failed => {
            Cond::not(CONDITION_READY, "UpgradeFailed", format!("still serving {}: {}", st.from_version, st.message))
        }
        (Ok(()), _) => Cond::ok(
            CONDITION_READY,
            "Ready",
            format!("{} replica(s) ready on Mosquitto {}", model.spec.replicas, step.template_version),
        ),
        (Err(why), _) => Cond::not(CONDITION_READY, "Progressing", why),
    };
    let compliant = crate::controller::compliant_condition(&compliance_status);
    let in_effect = plan.verdicts.values().filter(|o| o.verdict.in_effect().is_some()).count() as u32;
    let restart_pending =
        plan.sessions_epoch.is_some() && (plan.sessions_epoch != sessions_epoch_of(i.seen) || !rolled_out(i.seen));
    let status = MqttBrokerStatus {
        observed_generation: i.broker.metadata.generation,
        conditions: conditions::merge(&previous.conditions, vec![ready, compliant], i.broker.metadata.generation, now),
        compliance: Some(compliance_status.clone()),
        version: Some(VersionStatus {
            current: Some(i.decided.running.clone()),
            target: Some(i.decided.desired.clone()),
            known_cves: known_cves_of(i),
        }),
        certificates: Some(certificates(plan, model)),
        endpoints: endpoints(model),
        users: Some(MemberCounts { total: i.seen.users.len() as u32, ready: in_effect }),
        acls: Some(MemberCounts {
            total: i.seen.acls.len() as u32,
            ready: plan.acls.iter().filter(|a| a.invalid.is_none()).count() as u32,
        }),
        firewalls: Some(MemberCounts { total: i.seen.firewalls.len() as u32, ready: i.seen.firewalls.len() as u32 }),
        upgrade: step.state.as_ref().map(RolloutState::to_status),
        drift,
        files: i.files.map(files_status),
        revocation: (!plan.blocked_identities.is_empty() || plan.sessions_epoch.is_some() || last_revocation.is_some())
            .then(|| RevocationStatus {
                blocked_identities: plan.blocked_identities.len() as u32,
                sessions_ended_at: plan.sessions_epoch.filter(|_| !restart_pending).map(Time),
                restart_pending,
                last: last_revocation.clone(),
            }),
        audit_request: i.broker.annotations().get(AUDIT_NOW_ANNOTATION).cloned(),
    };
    Output { status, compliance: compliance_status, audit_time }
}

fn sessions_epoch_of(seen: &Observed) -> Option<Timestamp> {
    seen.statefulset
        .as_ref()?
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(crate::render::workload::SESSIONS_EPOCH_ANNOTATION)?
        .parse()
        .ok()
}

fn rolled_out(seen: &Observed) -> bool {
    seen.statefulset.as_ref().is_some_and(|sts| {
        let st = sts.status.clone().unwrap_or_default();
        st.observed_generation >= sts.metadata.generation && st.current_revision == st.update_revision
    })
}

fn known_cves_of(i: &Inputs) -> Vec<crate::crd::broker::KnownCve> {
    known_cves(&i.decided.catalog, &i.decided.running)
}

/// Known CVEs of a version in the catalog.
pub fn known_cves(catalog: &Catalog, version: &str) -> Vec<crate::crd::broker::KnownCve> {
    version
        .parse::<MosquittoVersion>()
        .map(|v| catalog.known_cves(&v).into_iter().map(|c| c.to_known_cve()).collect())
        .unwrap_or_default()
}

/// The facts of the compliance checks: what is applied and live (observed objects where they
/// exist; what was just applied otherwise).
/// The last timed revocation: the one the files in `memo` carry, else the one in status.
fn last_revocation(memo: Option<&Memo>, previous: &MqttBrokerStatus) -> Option<RevocationRecord> {
    let from_status = || previous.revocation.as_ref().and_then(|r| r.last.clone());
    let Some(m) = memo.filter(|m| !m.revocations.is_empty()) else { return from_status() };
    let what = match m.revocations.len() {
        1 => m.revocations[0].to_string(),
        n => format!("{} and {} more", m.revocations[0], n - 1),
    };
    Some(RevocationRecord {
        what,
        revoked_at: Time(m.since),
        in_effect_at: m.in_effect_at.map(Time),
        seconds: m.in_effect_at.map(|t| t.duration_since(m.since).as_secs().max(0) as u32),
    })
}

fn files_status(m: &Memo) -> FilesStatus {
    let current = m.pods.iter().filter(|(_, f)| matches!(f, PodFiles::Current(_))).count();
    let pending = m
        .pods
        .iter()
        .filter_map(|(pod, f)| match f {
            PodFiles::Current(_) => None,
            PodFiles::Behind => Some(format!("{pod}: runs older files")),
            PodFiles::Refusing => {
                Some(format!("{pod}: its agent refuses the files (kubectl logs {pod} -c moat-agent)"))
            }
            PodFiles::Unreachable(why) => Some(format!("{pod}: no answer ({why})")),
        })
        .collect();
    FilesStatus {
        current: format!("{current}/{}", m.pods.len()),
        written_at: Some(Time(m.since)),
        in_effect_at: m.in_effect_at.map(Time),
        pending,
    }
}

fn files_facts(m: &Memo) -> compliance::FilesFacts {
    let pods_in = |want: fn(&PodFiles) -> bool| -> Vec<String> {
        m.pods.iter().filter(|(_, f)| want(f)).map(|(p, _)| p.clone()).collect()
    };
    compliance::FilesFacts {
        written_at: m.since,
        in_effect_at: m.in_effect_at,
        pods: m.pods.len(),
        behind: pods_in(|f| *f == PodFiles::Behind),
        refusing: pods_in(|f| *f == PodFiles::Refusing),
        unreachable: pods_in(|f| matches!(f, PodFiles::Unreachable(_))),
    }
}

fn facts<'a>(
    i: &Inputs<'a>,
    drift: &[DriftRecord],
    audit_time: Option<Timestamp>,
    last_revocation: Option<&RevocationRecord>,
) -> BrokerFacts<'a> {
    let (model, plan, seen) = (i.model, &i.decided.plan, i.seen);
    let observed = |secret: String, key: &str| seen.secrets.get(&secret).and_then(|s| secret_text(s, key));
    let config =
        observed(names::config_secret(&model.name), "mosquitto.conf").unwrap_or_else(|| plan.config.text.clone());
    // the applied parts joined (None when they do not join: MOAT-ACL-001 fails)
    let parts = sorted_parts(&model.name, seen);
    let acl_file = if parts.is_empty() { Some(plan.acl_text()) } else { crate::render::shard::join(&parts).ok() };
    let sts = seen.statefulset.as_deref().unwrap_or(&i.decided.objects.statefulset);
    let deny_name = names::default_deny_policy(&model.name);
    let deny = seen.network_policy(&deny_name);
    let deny_ok =
        compliance::default_deny_ok(Some(deny.as_deref().unwrap_or(&i.decided.objects.default_deny)), &model.name);
    let own: Vec<String> = seen
        .network_policies
        .iter()
        .filter(|p| {
            p.labels().get(names::BROKER_LABEL) == Some(&model.name)
                && p.labels().get("app.kubernetes.io/managed-by").map(String::as_str) == Some(names::MANAGED_BY)
        })
        .map(|p| p.name_any())
        .collect();
    let policies: Vec<&k8s_openapi::api::networking::v1::NetworkPolicy> =
        seen.network_policies.iter().map(|p| &**p).collect();
    let mut pod_labels = model.spec.pod.labels.clone();
    pod_labels.extend(model.labels("broker"));
    let open = compliance::open_policies(&policies, &own, &pod_labels);
    let svc = seen.service.as_deref().unwrap_or(&i.decided.objects.service);
    let lb = (model.spec.service.type_ == ServiceType::LoadBalancer)
        .then(|| svc.spec.as_ref().and_then(|s| s.load_balancer_source_ranges.clone()).unwrap_or_default());
    let public_firewalls = seen
        .firewalls
        .iter()
        .filter(|f| f.spec.allow_public_internet && !crate::validate::public_cidrs(&f.spec).is_empty())
        .map(|f| f.name_any())
        .collect();
    let mut weak = vec![];
    let mut overdue = vec![];
    for u in &seen.users {
        let name = u.name_any();
        if let Some(Verdict::Holder(h)) = plan.verdicts.get(&name).map(|o| &o.verdict)
            && h.password == crate::plan::broker::Cred::Weak
        {
            weak.push(name.clone());
        }
        let rotate_after =
            u.spec.authentication.password.as_ref().and_then(|p| p.rotate_after.as_ref()).and_then(|d| d.parse().ok());
        let rotated = u.status.as_ref().and_then(|s| s.password_rotated_at.as_ref()).map(|t| t.0);
        if let (Some(max), Some(at)) = (rotate_after, rotated)
            && i.now >= crate::plan::after(at, max)
        {
            overdue.push(name);
        }
    }
    let acl_warnings =
        plan.acls.iter().flat_map(|a| a.warnings.iter().map(move |w| (a.name.clone(), w.clone()))).collect();
    let acls_invalid = plan.acls.iter().filter(|a| a.invalid.is_some()).map(|a| a.name.clone()).collect();
    let step = &i.decided.step;
    BrokerFacts {
        model,
        config: Some(config),
        acl_file,
        pod: Some(compliance::pod_hardening(sts)),
        default_deny_ok: deny_ok,
        extra_service_ports: compliance::extra_service_ports(Some(svc), model),
        load_balancer: lb,
        public_firewalls,
        server_cert: plan.server_info.clone(),
        ca: plan.ca_info.clone(),
        ca_rollover_in_progress: plan.ca.pending.is_some() || plan.ca.retiring.is_some(),
        probes: i.audit.probes.clone(),
        open_policies: open,
        crl_next_update: plan.crl_next_update,
        acl_warnings,
        acls_invalid,
        acls_total: seen.acls.len(),
        weak_password_users: weak,
        reused_password_users: plan.shared_passwords.iter().flatten().cloned().collect(),
        overdue_password_users: overdue,
        // drift stays reported until the next audit after it
        drift: drift
            .iter()
            .filter(|d| audit_time.is_none_or(|t| d.detected_at.0 >= t))
            .map(|d| format!("{}: {}", d.object, d.change))
            .collect(),
        previous_audit: i.audit.previous,
        running_version: i.decided.running.clone(),
        known_cves: known_cves_of(i),
        upgrade_failed: step.state.as_ref().is_some_and(|s| s.phase == upgrade::Phase::Failed),
        upgrade_message: step.state.as_ref().map(|s| s.message.clone()).unwrap_or_default(),
        files: i.files.map(files_facts),
        last_revocation: last_revocation.map(|r| compliance::RevocationFacts {
            what: r.what.clone(),
            revoked_at: r.revoked_at.0,
            in_effect_at: r.in_effect_at.as_ref().map(|t| t.0),
        }),
        now: i.now,
    }
}

/// The broker's applied ACL parts, `(manifest, acl)` in part order.
fn sorted_parts(broker: &str, seen: &Observed) -> Vec<(String, String)> {
    let mut parts: Vec<(usize, String, String)> = seen
        .secrets
        .iter()
        .filter_map(|(n, s)| {
            let i = names::part_index(broker, "acl", n)?;
            Some((i, secret_text(s, "manifest").unwrap_or_default(), secret_text(s, "acl").unwrap_or_default()))
        })
        .collect();
    parts.sort();
    parts.into_iter().map(|(_, m, a)| (m, a)).collect()
}

fn rollout_ready(i: &Inputs) -> Result<(), String> {
    let (model, step) = (i.model, &i.decided.step);
    let Some(sts) = &i.seen.statefulset else { return Err("StatefulSet being created".into()) };
    let st = sts.status.clone().unwrap_or_default();
    if st.observed_generation < sts.metadata.generation {
        return Err("StatefulSet change not yet observed".into());
    }
    let ready = st.ready_replicas.unwrap_or(0);
    if ready < model.spec.replicas {
        return Err(format!("{ready}/{} pods ready", model.spec.replicas));
    }
    if i.seen.template_version().as_deref() != Some(step.template_version.as_str()) {
        return Err("StatefulSet update pending".into());
    }
    if let Some(s) = step.state.as_ref().filter(|s| {
        matches!(s.phase, upgrade::Phase::RollingOut | upgrade::Phase::Verifying | upgrade::Phase::RollingBack)
    }) {
        return Err(format!("upgrade in progress: {}", s.message));
    }
    if st.current_revision.is_some()
        && st.update_revision.is_some()
        && st.current_revision != st.update_revision
        && step.partition == 0
    {
        return Err("rolling update in progress".into());
    }
    Ok(())
}

fn certificates(plan: &BrokerPlan, model: &BrokerModel) -> CertificatesStatus {
    let info = |cert: &Option<crate::pki::CertInfo>, renew| {
        cert.as_ref().map(|i| CertificateInfo {
            serial: Some(i.serial_hex.clone()),
            not_after: Some(Time(i.not_after)),
            renewal_time: Some(Time(crate::pki::renewal_time(i, renew))),
        })
    };
    CertificatesStatus {
        ca: info(&plan.ca_info, model.durations.ca_renew_before),
        server: info(&plan.server_info, model.durations.server_renew_before),
        ca_rollover: Some(plan.ca.phase().to_string()),
        trusted_cas: plan.ca.trusted().count() as u32,
        revoked: plan.ledger.revoked().len() as u32,
        crl_next_update: plan.crl_next_update.map(Time),
    }
}

fn endpoints(model: &BrokerModel) -> Vec<Endpoint> {
    model
        .spec
        .listeners
        .iter()
        .map(|l| Endpoint {
            listener: l.name.clone(),
            host: format!("{}.{}.svc", model.service_name(), model.namespace),
            port: l.port,
            scheme: match (l.protocol, l.tls.enabled) {
                (ListenerProtocol::Mqtt, true) => "mqtts",
                (ListenerProtocol::Mqtt, false) => "mqtt",
                (ListenerProtocol::WebSockets, true) => "wss",
                (ListenerProtocol::WebSockets, false) => "ws",
            }
            .into(),
            authentication: match l.authentication {
                ListenerAuthentication::Password => "Password",
                ListenerAuthentication::Certificate => "Certificate",
            }
            .into(),
        })
        .collect()
}

/// The broker's metrics after a reconcile.
pub fn metrics(ctx: &Context, model: &BrokerModel, decided: &Decided, status: &MqttBrokerStatus) {
    let compliance = status.compliance.as_ref().expect("a computed status has compliance");
    let (ns, name) = (&model.namespace, &model.name);
    let plan = &decided.plan;
    let bl = BrokerLabels { namespace: ns.clone(), broker: name.clone() };
    if let Some(t) = &compliance.last_audit_time {
        ctx.metrics.last_audit.get_or_create(&bl).set(t.0.as_second());
    }
    ctx.metrics.known_cves.get_or_create(&bl).set(known_cves(&decided.catalog, &decided.running).len() as i64);
    for (m, n) in compliance::failing_by_measure(&compliance.checks) {
        ctx.metrics
            .failing_checks
            .get_or_create(&MeasureLabels { namespace: ns.clone(), broker: name.clone(), measure: m.as_str().into() })
            .set(n as i64);
    }
    for (role, info) in [("ca", &plan.ca_info), ("server", &plan.server_info)] {
        if let Some(info) = info {
            ctx.metrics
                .cert_expiry
                .get_or_create(&CertLabels {
                    namespace: ns.clone(),
                    broker: name.clone(),
                    role: role.into(),
                    name: name.clone(),
                })
                .set(info.not_after.as_second());
        }
    }
    if let Some(t) = plan.crl_next_update {
        ctx.metrics.crl_next_update.get_or_create(&bl).set(t.as_second());
    }
    if let Some(s) = status.revocation.as_ref().and_then(|r| r.last.as_ref()).and_then(|l| l.seconds) {
        ctx.metrics.revocation_seconds.get_or_create(&bl).set(s.into());
    }
    if let Some(f) = &status.files {
        let current = f.current.split('/').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        ctx.metrics.pods_current.get_or_create(&bl).set(current);
    }
    if plan.hashes_computed > 0 {
        ctx.metrics.password_hashes.inc_by(plan.hashes_computed as u64);
    }
}
