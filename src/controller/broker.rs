//! The MqttBroker controller: aggregates the broker's users, ACLs and firewalls into its Secrets,
//! workload and policies, runs audits and upgrades, and reports status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodSpec, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::apply::{self, Applier};
use super::conditions::{self, Cond};
use super::context::{Context, Stores};
use super::index::{issued_from, secret_strings, secret_text};
use super::{Error, Result};
use crate::build::broker::{self as bb, Existing, PasswordLookup, UserView, Verdict};
use crate::build::{Password, objects};
use crate::compliance::{self, BrokerFacts};
use crate::crd::broker::{
    CertificatesStatus, Endpoint, ListenerAuthentication, ListenerProtocol, MqttBrokerStatus, UpgradePolicy,
    VersionStatus,
};
use crate::crd::{CONDITION_COMPLIANT, CONDITION_READY, CertificateInfo, CheckResult, MemberCounts, MqttBroker};
use crate::metrics::{BrokerLabels, CertLabels, MeasureLabels};
use crate::model::BrokerModel;
use crate::names;
use crate::render::config::{ConfigPaths, ListenerOverrides};
use crate::render::{network, workload};
use crate::upgrade::{self, Catalog, MosquittoVersion, PodView, RolloutInput, RolloutState};

/// Reconciles one MqttBroker.
pub async fn reconcile(broker: Arc<MqttBroker>, ctx: Arc<Context>) -> Result<Action> {
    super::observed_reconcile("MqttBroker", &*broker, &ctx, reconcile_inner(&broker, &ctx)).await
}

async fn reconcile_inner(broker: &MqttBroker, ctx: &Context) -> Result<Action> {
    let ns = broker.namespace().unwrap_or_default();
    let name = broker.name_any();
    let now = ctx.clock.now();
    let previous = broker.status.clone().unwrap_or_default();

    // --- validate
    let (model, windows) = match BrokerModel::new(broker).and_then(|m| {
        let windows = upgrade::parse_windows(&m.spec.upgrade.maintenance_windows)
            .map_err(|message| crate::validate::FieldError::new("spec.upgrade.maintenanceWindows", message))?;
        Ok((m, windows))
    }) {
        Ok(valid) => valid,
        Err(e) => {
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
            super::write_status(ctx, broker, &previous, &status).await?;
            return Err(Error::InvalidSpec(e));
        }
    };
    let owner = broker.controller_owner_ref(&()).expect("stored objects have a uid");

    // --- dereference (stores only)
    let s = &ctx.stores;
    let users = s.users_of(&ns, &name);
    let acls = s.acls_of(&ns, &name);
    let firewalls = s.firewalls_of(&ns, &name);
    // Secrets labelled for this broker: its own (controlled by it) and its users' (each read only
    // when that user controls it: a colliding name never hands one object another's material).
    let labelled: BTreeMap<String, Arc<Secret>> =
        s.secrets_of(&ns, &name).into_iter().map(|x| (x.name_any(), x)).collect();
    let secrets: BTreeMap<String, Arc<Secret>> =
        labelled.iter().filter(|(_, x)| apply::owned_by(&***x, &owner)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let existing = existing_material(&name, &secrets)?;
    let views: Vec<UserView> = users.iter().map(|u| user_view(s, &labelled, u)).collect();
    let acl_refs: Vec<&crate::crd::MqttAcl> = acls.iter().map(|a| &**a).collect();

    // --- build (pure)
    let paths = ConfigPaths::in_pod();
    let overrides = ListenerOverrides::default();
    let plan = bb::plan(bb::PlanInput {
        model: &model,
        users: &views,
        acls: &acl_refs,
        existing,
        paths: &paths,
        overrides: &overrides,
        extra_ips: &[],
        now,
    })
    .map_err(|e| Error::Pki(e.to_string()))?;
    if plan.hashes_computed > 0 {
        ctx.metrics.password_hashes.inc_by(plan.hashes_computed as u64);
    }

    // Upgrade state machine over the live StatefulSet and pods.
    let sts_observed = Stores::get(&s.statefulsets, &ns, &name);
    let catalog = catalog(ctx).await;
    let running = sts_observed.as_deref().and_then(template_version).unwrap_or_else(|| model.spec.version.clone());
    let (desired, explicit) = desired_version(&model, &catalog);
    let pods = pod_views(s, &ns, &name);
    let state = previous.upgrade.as_ref().and_then(RolloutState::from_status);
    let step = upgrade::step(&RolloutInput {
        name: &name,
        replicas: model.spec.replicas,
        pods: &pods,
        desired: &desired,
        running: if sts_observed.is_some() { &running } else { &desired },
        state: state.as_ref(),
        may_start: explicit || upgrade::is_open(&windows, now),
        rollout_timeout: model.durations.rollout_timeout,
        ready_grace: model.durations.ready_grace,
        now,
    });

    // --- desired objects
    let mut secrets_desired = objects::broker_secrets(&model, &plan, Some(&owner));
    let ca_bundle = objects::ca_bundle(&model, &plan, Some(&owner));
    let params = workload::WorkloadParams {
        agent_image: ctx.config.agent_image.clone(),
        version: step.template_version.clone(),
        partition: step.partition,
        restart_hash: plan.config.restart_hash.clone(),
        passwd_slots: workload::passwd_slots(plan.shards.len()),
    };
    let mut sts = workload::statefulset(&model, &params);
    let mut sa = workload::service_account(&model);
    let pdb = workload::pod_disruption_budget(&model);
    let ranges = network::load_balancer_source_ranges(firewalls.iter().map(|f| &f.spec));
    let mut svc = network::service(&model, &ranges);
    let mut headless = network::headless_service(&model);
    let mut deny = network::default_deny(&model);
    let probe_np = model.spec.security.active_probe.then(|| network::probe_policy(&model, &ctx.config.operator));

    // --- apply (Secrets before the StatefulSet that mounts them). Once moat has applied a broker
    // (its certificates are in status), a missing managed object was deleted by someone: drift.
    let mut ap = Applier::new(ctx, &owner, previous.certificates.is_some());
    for secret in secrets_desired.iter_mut() {
        let observed = secrets.get(&secret.name_any()).cloned();
        ap.apply(secret, observed.as_deref()).await?;
    }
    let mut ca_bundle = ca_bundle;
    ap.apply(&mut ca_bundle, Stores::get(&s.config_maps, &ns, &names::ca_bundle_configmap(&name)).as_deref()).await?;
    ap.apply(&mut sa, Stores::get(&s.service_accounts, &ns, &name).as_deref()).await?;
    let observed_svc = Stores::get(&s.services, &ns, &name);
    ap.apply(&mut svc, observed_svc.as_deref()).await?;
    ap.apply(&mut headless, Stores::get(&s.services, &ns, &model.headless_service_name()).as_deref()).await?;
    let observed_deny = Stores::get(&s.network_policies, &ns, &names::default_deny_policy(&name));
    ap.apply(&mut deny, observed_deny.as_deref()).await?;
    let probe_name = network::probe_policy_name(&name);
    ap.apply_or_delete(probe_np, Stores::get(&s.network_policies, &ns, &probe_name), &ns, &probe_name).await?;
    ap.apply(&mut sts, sts_observed.as_deref()).await?;
    ap.apply_or_delete(pdb, Stores::get(&s.pdbs, &ns, &name), &ns, &name).await?;
    // Password shards beyond the current count are obsolete.
    for sname in secrets.keys() {
        if names::passwd_shard_index(&name, sname).is_some_and(|i| i >= plan.shards.len()) {
            apply::delete_as::<Secret>(ctx, &ns, sname).await?;
            ap.changed += 1;
        }
    }
    let Applier { drift, changed, .. } = ap;
    for ordinal in &step.delete_pods {
        let pod = format!("{name}-{ordinal}");
        tracing::info!(broker = %name, %pod, "deleting a pod stuck on the wrong version");
        apply::delete_as::<Pod>(ctx, &ns, &pod).await?;
    }

    // --- events
    if let Some(t) = plan.ca_transition {
        ctx.event(
            broker,
            EventType::Normal,
            &format!("CA{}", t.as_str()),
            format!("CA {}; trust bundle holds {} CA(s)", t.as_str().to_lowercase(), plan.ca.trusted().count()),
        )
        .await;
    }
    if let Some(r) = plan.server_renewal {
        let reason =
            if r == crate::pki::RenewReason::Missing { "ServerCertificateIssued" } else { "ServerCertificateRenewed" };
        ctx.metrics.certificates_issued.get_or_create(&crate::metrics::KindLabels { kind: "server".into() }).inc();
        ctx.event(broker, EventType::Normal, reason, format!("server certificate issued ({})", r.as_str())).await;
    }
    for user in &plan.newly_revoked {
        ctx.event(
            broker,
            EventType::Normal,
            "CertificateRevoked",
            format!("client certificate of MqttUser {user} revoked (CRL)"),
        )
        .await;
    }
    for d in &drift {
        ctx.event(broker, EventType::Warning, "DriftRepaired", format!("{d}; restored")).await;
    }
    if let Some(t) = &step.transition {
        let warn = matches!(t.reason, upgrade::machine::REASON_ROLLING_BACK | upgrade::machine::REASON_FAILED);
        ctx.event(broker, if warn { EventType::Warning } else { EventType::Normal }, t.reason, t.message.clone()).await;
    }

    // --- audit and compliance
    let interval = model.durations.audit_interval;
    let last_audit = previous.compliance.as_ref().and_then(|c| c.last_audit_time.as_ref()).map(|t| t.0);
    let audit_due = last_audit.is_none_or(|t| now >= crate::build::after(t, interval))
        || previous.observed_generation != broker.metadata.generation;
    let probe = if audit_due && ctx.config.active_probe && model.spec.security.active_probe {
        run_probe(&model, &plan).await
    } else {
        None
    };
    let known = known_cves(&catalog, &running);
    let facts = broker_facts(
        &model,
        &plan,
        &secrets,
        sts_observed.as_deref(),
        observed_deny.as_deref(),
        observed_svc.as_deref(),
        &firewalls,
        &acls,
        &views,
        &running,
        known.clone(),
        &step,
        probe.clone(),
        drift.clone(),
        last_audit,
        now,
    );
    let mut checks = compliance::evaluate_broker(&facts);
    if !audit_due {
        carry_forward(
            &mut checks,
            previous.compliance.as_ref(),
            &["MOAT-AUD-002", "MOAT-AUTH-003", "MOAT-TLS-005"],
            &drift,
        );
    }
    let audit_time = if audit_due { Some(now) } else { last_audit };
    compliance_events(ctx, broker, previous.compliance.as_ref(), &checks).await;
    let compliance_status = compliance::summarize(checks, audit_time);

    // --- status
    let ready = rollout_ready(sts_observed.as_deref(), &model, &step);
    let ready_cond = match (&ready, &step.state) {
        // the spec asks for a version that failed its health gate: the broker serves the old one
        (_, Some(st)) if st.phase == upgrade::Phase::Failed => {
            Cond::not(CONDITION_READY, "UpgradeFailed", format!("still serving {}: {}", st.from_version, st.message))
        }
        (Ok(()), _) => Cond::ok(
            CONDITION_READY,
            "Ready",
            format!("{} replica(s) ready on Mosquitto {}", model.spec.replicas, step.template_version),
        ),
        (Err(why), _) => Cond::not(CONDITION_READY, "Progressing", why.clone()),
    };
    let compliant_cond = super::compliant_condition(&compliance_status);
    let user_ready = plan.verdicts.values().filter(|v| matches!(v, Verdict::InEffect { .. })).count() as u32;
    let status = MqttBrokerStatus {
        observed_generation: broker.metadata.generation,
        conditions: conditions::merge(
            &previous.conditions,
            vec![ready_cond, compliant_cond],
            broker.metadata.generation,
            now,
        ),
        compliance: Some(compliance_status.clone()),
        version: Some(VersionStatus {
            current: Some(running.clone()),
            target: Some(desired.clone()),
            known_cves: known.clone(),
        }),
        certificates: Some(certificates_status(&plan, &model)),
        endpoints: endpoints(&model),
        users: Some(MemberCounts { total: users.len() as u32, ready: user_ready }),
        acls: Some(MemberCounts {
            total: acls.len() as u32,
            ready: plan.acls.iter().filter(|a| a.invalid.is_none()).count() as u32,
        }),
        firewalls: Some(MemberCounts { total: firewalls.len() as u32, ready: firewalls.len() as u32 }),
        upgrade: step.state.as_ref().map(RolloutState::to_status),
    };
    super::write_status(ctx, broker, &previous, &status).await?;
    if audit_due {
        super::report::write(ctx, broker, &compliance_status).await;
    }

    // --- metrics
    let bl = BrokerLabels { namespace: ns.clone(), broker: name.clone() };
    if let Some(t) = audit_time {
        ctx.metrics.last_audit.get_or_create(&bl).set(t.as_second());
    }
    ctx.metrics.known_cves.get_or_create(&bl).set(known.len() as i64);
    for (m, n) in compliance::failing_by_measure(&compliance_status.checks) {
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
    if changed > 0 {
        tracing::info!(broker = %name, namespace = %ns, changed, "applied broker objects");
    }
    tracing::debug!(broker = %name, namespace = %ns, "reconciled broker");

    // --- requeue: next certificate/CRL event, next audit, upgrade timers
    let mut next = vec![crate::build::after(audit_time.unwrap_or(now), interval)];
    next.extend(plan.next_event);
    if step.state.as_ref().is_some_and(|s| !matches!(s.phase, upgrade::Phase::Completed | upgrade::Phase::Failed)) {
        next.push(crate::build::after(now, Duration::from_secs(5)));
    }
    if !windows.is_empty() && desired != running && !explicit {
        next.extend(upgrade::next_open(&windows, now));
    }
    let wake = next.into_iter().filter(|t| *t > now).min().unwrap_or(crate::build::after(now, interval));
    Ok(Action::requeue(crate::pki::requeue_after(wake, now).max(Duration::from_secs(1))))
}

fn existing_material(broker: &str, secrets: &BTreeMap<String, Arc<Secret>>) -> Result<Existing> {
    let mut ex = Existing::default();
    if let Some(s) = secrets.get(&names::ca_secret(broker)) {
        let data = secret_strings(s);
        ex.ca = Some(
            crate::pki::CaSet::from_secret_data(&data)
                .map_err(|e| Error::Pki(format!("{}: {e}", names::ca_secret(broker))))?,
        );
        let (key, revoked) = bb::ca_secret_extras(&data).map_err(|e| Error::Pki(e.to_string()))?;
        ex.fingerprint_key = key;
        ex.revoked = revoked;
        ex.revoked_users = bb::revoked_users(&data);
    }
    if let Some(s) = secrets.get(&names::tls_secret(broker)) {
        ex.server = issued_from(s);
        ex.crl_pem = secret_text(s, "crl.pem");
    }
    let mut shards: Vec<(usize, String, String)> = vec![];
    for (n, s) in secrets {
        if let Some(i) = names::passwd_shard_index(broker, n) {
            shards.push((
                i,
                secret_text(s, "passwd").unwrap_or_default(),
                secret_text(s, "fingerprints").unwrap_or_default(),
            ));
        }
    }
    shards.sort();
    let pairs: Vec<(String, String)> = shards.into_iter().map(|(_, p, f)| (p, f)).collect();
    // A corrupt shard only costs re-hashing: start from what can be read.
    ex.passwd = crate::render::passwd::previous_from_shards(&pairs).unwrap_or_default();
    Ok(ex)
}

/// How the broker sees one user: its password (from its credentials Secret, or the referenced
/// Secret) and its client certificate (from its certificate Secret).
pub fn user_view<'a>(s: &Stores, secrets: &BTreeMap<String, Arc<Secret>>, u: &'a crate::crd::MqttUser) -> UserView<'a> {
    let ns = u.namespace().unwrap_or_default();
    let object = u.name_any();
    // only Secrets this user controls: a colliding name (another user's or a broker's Secret)
    // must never hand this user someone else's password or certificate
    let own = |name: String| {
        secrets.get(&name).filter(|x| {
            apply::controller_uid(&***x).is_some() && apply::controller_uid(&***x) == u.metadata.uid.as_deref()
        })
    };
    let password = match &u.spec.authentication.password {
        None => PasswordLookup::NotUsed,
        Some(p) => match &p.secret_ref {
            None => match own(names::credentials_secret(&object)).and_then(|x| secret_text(x, "password")) {
                Some(pw) => PasswordLookup::Found { password: Password(pw), generated: true },
                None => PasswordLookup::Missing("credentials not generated yet".into()),
            },
            Some(r) => match byo_secret(s, &ns, &object, &r.name) {
                None => PasswordLookup::Missing(byo_unavailable(&object, &r.name)),
                Some(sec) => match secret_text(&sec, &r.key) {
                    Some(pw) => PasswordLookup::Found { password: Password(pw), generated: false },
                    None => PasswordLookup::Missing(format!("Secret {} has no key {}", r.name, r.key)),
                },
            },
        },
    };
    let certificate = own(names::certificate_secret(&object)).and_then(|x| issued_from(x));
    UserView { user: u, password, certificate }
}

/// The Secret a `secretRef` of MqttUser `user` names, only if that Secret opted in for this user:
/// labelled [`names::WATCH_LABEL`]`=true` (so it is in the watched cache; moat never reads or
/// labels a Secret on its own) and annotated [`names::PASSWORD_FOR_ANNOTATION`] with the user's
/// name. Any other Secret of the namespace is invisible, whether it exists or not: a `secretRef`
/// cannot be used to learn anything about Secrets its author may not read.
pub fn byo_secret(s: &Stores, ns: &str, user: &str, secret: &str) -> Option<Arc<Secret>> {
    Stores::get(&s.watched_secrets, ns, secret).filter(|x| names::password_for(x.annotations(), user))
}

/// The one message for a `secretRef` Secret that cannot be used (missing or not opted in alike).
pub fn byo_unavailable(user: &str, secret: &str) -> String {
    format!(
        "Secret {secret} is not available to MqttUser {user}: it must exist, carry the label {}=true and the \
         annotation {}: {user}",
        names::WATCH_LABEL,
        names::PASSWORD_FOR_ANNOTATION
    )
}

fn template_version(sts: &StatefulSet) -> Option<String> {
    image_tag(broker_image(sts.spec.as_ref()?.template.spec.as_ref()?)?)
}

/// The image of the broker container of a pod spec.
fn broker_image(pod: &PodSpec) -> Option<&str> {
    pod.containers.iter().find(|c| c.name == workload::BROKER_CONTAINER)?.image.as_deref()
}

/// The tag of an image reference (the Mosquitto version for the broker image).
fn image_tag(image: &str) -> Option<String> {
    image.rsplit_once(':').map(|(_, v)| v.to_string())
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

fn known_cves(catalog: &Catalog, version: &str) -> Vec<crate::crd::broker::KnownCve> {
    version
        .parse::<MosquittoVersion>()
        .map(|v| catalog.known_cves(&v).into_iter().map(|c| c.to_known_cve()).collect())
        .unwrap_or_default()
}

/// The built-in catalog, extended by the operator's ConfigMap when configured (a broken override
/// is reported and ignored).
async fn catalog(ctx: &Context) -> Catalog {
    let builtin = Catalog::builtin().clone();
    let Some(name) = &ctx.config.catalog_configmap else { return builtin };
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.config.operator.namespace);
    match api.get_opt(name).await {
        Ok(Some(cm)) => match cm.data.as_ref().and_then(|d| d.get("catalog.yaml")) {
            Some(yaml) => match builtin.merge_yaml(yaml) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(configmap = %name, error = %e, "catalog override refused; the built-in catalog stays in force");
                    builtin
                }
            },
            None => builtin,
        },
        _ => builtin,
    }
}

fn pod_views(s: &Stores, ns: &str, broker: &str) -> Vec<PodView> {
    super::context::labelled_of(&s.pods, ns, broker)
        .into_iter()
        .filter_map(|p| {
            let ordinal = p.name_any().rsplit('-').next()?.parse().ok()?;
            let version = image_tag(broker_image(p.spec.as_ref()?)?);
            let ready_cond = p.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready").cloned();
            let ready =
                p.metadata.deletion_timestamp.is_none() && ready_cond.as_ref().is_some_and(|c| c.status == "True");
            Some(PodView {
                ordinal,
                version,
                ready,
                ready_since: ready_cond.and_then(|c| c.last_transition_time).map(|t| t.0),
            })
        })
        .collect()
}

fn rollout_ready(
    sts: Option<&StatefulSet>,
    model: &BrokerModel,
    step: &upgrade::RolloutStep,
) -> std::result::Result<(), String> {
    let Some(sts) = sts else { return Err("StatefulSet being created".into()) };
    let st = sts.status.clone().unwrap_or_default();
    if st.observed_generation < sts.metadata.generation {
        return Err("StatefulSet change not yet observed".into());
    }
    let ready = st.ready_replicas.unwrap_or(0);
    if ready < model.spec.replicas {
        return Err(format!("{ready}/{} pods ready", model.spec.replicas));
    }
    if template_version(sts).as_deref() != Some(step.template_version.as_str()) {
        return Err("StatefulSet update pending".into());
    }
    if step.state.as_ref().is_some_and(|s| {
        matches!(s.phase, upgrade::Phase::RollingOut | upgrade::Phase::Verifying | upgrade::Phase::RollingBack)
    }) {
        return Err(format!(
            "upgrade in progress: {}",
            step.state.as_ref().map(|s| s.message.clone()).unwrap_or_default()
        ));
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

fn certificates_status(plan: &bb::BrokerPlan, model: &BrokerModel) -> CertificatesStatus {
    let info = |cert: &Option<crate::pki::CertInfo>, renew| {
        cert.as_ref().map(|i| CertificateInfo {
            serial: Some(i.serial_hex.clone()),
            not_after: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(i.not_after)),
            renewal_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(crate::pki::renewal_time(
                i, renew,
            ))),
        })
    };
    CertificatesStatus {
        ca: info(&plan.ca_info, model.durations.ca_renew_before),
        server: info(&plan.server_info, model.durations.server_renew_before),
        ca_rollover: Some(plan.ca.phase().to_string()),
        trusted_cas: plan.ca.trusted().count() as u32,
        revoked: plan.revoked.len() as u32,
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

async fn run_probe(model: &BrokerModel, plan: &bb::BrokerPlan) -> Option<crate::probe::ProbeReport> {
    let l = model.spec.listeners.iter().find(|l| {
        l.tls.enabled && l.protocol == ListenerProtocol::Mqtt && l.authentication == ListenerAuthentication::Password
    })?;
    let host = format!("{}.{}.svc", model.service_name(), model.namespace);
    let target = crate::probe::ProbeTarget {
        host: host.clone(),
        port: l.port as u16,
        server_name: host,
        ca_pem: Some(plan.ca.trust_bundle()),
        timeout: Duration::from_secs(3),
    };
    Some(crate::probe::probe(&target).await)
}

#[allow(clippy::too_many_arguments)]
fn broker_facts<'a>(
    model: &'a BrokerModel,
    plan: &bb::BrokerPlan,
    secrets: &BTreeMap<String, Arc<Secret>>,
    sts: Option<&StatefulSet>,
    deny: Option<&NetworkPolicy>,
    svc: Option<&Service>,
    firewalls: &[Arc<crate::crd::MqttFirewall>],
    acls: &[Arc<crate::crd::MqttAcl>],
    views: &[UserView],
    running: &str,
    known_cves: Vec<crate::crd::broker::KnownCve>,
    step: &upgrade::RolloutStep,
    probe: Option<crate::probe::ProbeReport>,
    drift: Vec<String>,
    previous_audit: Option<Timestamp>,
    now: Timestamp,
) -> BrokerFacts<'a> {
    // Observed objects when they exist; what was just applied otherwise (it is live now).
    let observed_text = |secret: String, key: &str, fallback: &str| {
        secrets.get(&secret).and_then(|s| secret_text(s, key)).unwrap_or_else(|| fallback.to_string())
    };
    let config = observed_text(names::config_secret(&model.name), "mosquitto.conf", &plan.config.text);
    let acl_file = observed_text(names::acl_secret(&model.name), "acl", &plan.acl_text);
    let rendered_sts;
    let sts = match sts {
        Some(s) => s,
        None => {
            rendered_sts = workload::statefulset(
                model,
                &workload::WorkloadParams {
                    agent_image: String::new(),
                    version: model.spec.version.clone(),
                    partition: 0,
                    restart_hash: String::new(),
                    passwd_slots: 4,
                },
            );
            &rendered_sts
        }
    };
    let rendered_deny = network::default_deny(model);
    let deny_ok = compliance::default_deny_ok(Some(deny.unwrap_or(&rendered_deny)), &model.name);
    let rendered_svc;
    let svc = match svc {
        Some(s) => s,
        None => {
            rendered_svc = network::service(model, &[]);
            &rendered_svc
        }
    };
    let lb = (model.spec.service.type_ == crate::crd::broker::ServiceType::LoadBalancer)
        .then(|| svc.spec.as_ref().and_then(|s| s.load_balancer_source_ranges.clone()).unwrap_or_default());
    let public_firewalls = firewalls
        .iter()
        .filter(|f| f.spec.allow_public_internet && !crate::validate::public_cidrs(&f.spec).is_empty())
        .map(|f| f.name_any())
        .collect();
    let mut weak = vec![];
    let mut overdue = vec![];
    for v in views {
        let name = v.user.name_any();
        if let Some(Verdict::WeakPassword(_)) = plan.verdicts.get(&name) {
            weak.push(name.clone());
        }
        let rotate_after = v
            .user
            .spec
            .authentication
            .password
            .as_ref()
            .and_then(|p| p.rotate_after.as_ref())
            .and_then(|d| d.parse().ok());
        let rotated = v.user.status.as_ref().and_then(|s| s.password_rotated_at.as_ref()).map(|t| t.0);
        if let (Some(max), Some(at)) = (rotate_after, rotated)
            && now >= crate::build::after(at, max)
        {
            overdue.push(name);
        }
    }
    let acl_warnings =
        plan.acls.iter().flat_map(|a| a.warnings.iter().map(move |w| format!("{}: {w}", a.name))).collect();
    let acls_invalid = plan.acls.iter().filter(|a| a.invalid.is_some()).map(|a| a.name.clone()).collect();
    BrokerFacts {
        model,
        config: Some(config),
        acl_file: Some(acl_file),
        pod: Some(compliance::pod_hardening(sts)),
        default_deny_ok: deny_ok,
        extra_service_ports: compliance::extra_service_ports(Some(svc), model),
        load_balancer: lb,
        public_firewalls,
        server_cert: plan.server_info.clone(),
        ca: plan.ca_info.clone(),
        ca_rollover_in_progress: plan.ca.pending.is_some() || plan.ca.retiring.is_some(),
        probe,
        acl_warnings,
        acls_invalid,
        acls_total: acls.len(),
        weak_password_users: weak,
        reused_password_users: plan.shared_passwords.iter().flatten().cloned().collect(),
        overdue_password_users: overdue,
        drift,
        previous_audit,
        running_version: running.to_string(),
        known_cves,
        upgrade_failed: step.state.as_ref().is_some_and(|s| s.phase == upgrade::Phase::Failed),
        upgrade_message: step.state.as_ref().map(|s| s.message.clone()).unwrap_or_default(),
        now,
    }
}

/// Between audits, checks that only an audit refreshes keep their previous result (drift found at
/// the last audit stays reported until the next one; probe results are only taken at audits).
fn carry_forward(
    checks: &mut [crate::crd::ComplianceCheck],
    previous: Option<&crate::crd::ComplianceStatus>,
    ids: &[&str],
    drift_now: &[String],
) {
    let Some(prev) = previous else { return };
    for c in checks.iter_mut().filter(|c| ids.contains(&c.id.as_str())) {
        if c.id == "MOAT-AUD-002" && !drift_now.is_empty() {
            continue;
        }
        if let Some(p) = prev.checks.iter().find(|p| p.id == c.id) {
            *c = p.clone();
        }
    }
}

async fn compliance_events(
    ctx: &Context,
    broker: &MqttBroker,
    previous: Option<&crate::crd::ComplianceStatus>,
    checks: &[crate::crd::ComplianceCheck],
) {
    let Some(prev) = previous else { return };
    for c in checks {
        let Some(p) = prev.checks.iter().find(|p| p.id == c.id) else { continue };
        match (p.result, c.result) {
            (CheckResult::Pass, CheckResult::Fail) => {
                ctx.event(broker, EventType::Warning, "ComplianceCheckFailed", format!("{}: {}", c.id, c.message)).await
            }
            (CheckResult::Fail, CheckResult::Pass) => {
                ctx.event(broker, EventType::Normal, "ComplianceCheckPassed", format!("{}: {}", c.id, c.message)).await
            }
            _ => {}
        }
    }
}
