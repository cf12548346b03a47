//! Audit: whether one is due, and the active probe of every broker pod (each replica is an
//! independent broker, so each is probed on its own IP).

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::Decided;
use super::observe::Observed;
use crate::compliance::{LiveProbe, Observation};
use crate::controller::context::Context;
use crate::crd::broker::{ListenerAuthentication, ListenerProtocol};
use crate::crd::{CheckResult, ComplianceCheck, ComplianceStatus, MqttBroker};
use crate::model::BrokerModel;
use crate::plan::broker::{Cred, Verdict};
use crate::probe::Outcome;
use crate::probe::login::{self, Credentials, LoginTarget};

/// How the revoked canary is named in the evidence.
const CANARY: &str = "moat's revoked canary certificate";

/// Annotation on an MqttBroker that asks for an audit now (any new value).
pub const AUDIT_NOW_ANNOTATION: &str = "mqtt.moat.dev/audit";

/// What this reconcile's audit found.
pub struct Audit {
    /// An audit was due (and was run).
    pub due: bool,
    /// The probe of each pod (None when not run).
    pub probes: Option<Vec<LiveProbe>>,
    /// The previous audit time.
    pub previous: Option<Timestamp>,
}

/// Runs the audit when due: on schedule, on a spec change, when asked by annotation, or when a
/// pod became Ready after the last audit (a replica the probe has not seen serving yet).
pub async fn run(
    ctx: &Context,
    broker: &MqttBroker,
    model: &BrokerModel,
    seen: &Observed,
    decided: &Decided,
    now: Timestamp,
) -> Audit {
    let previous_status = broker.status.clone().unwrap_or_default();
    let previous = previous_status.compliance.as_ref().and_then(|c| c.last_audit_time.as_ref()).map(|t| t.0);
    let asked = broker.annotations().get(AUDIT_NOW_ANNOTATION);
    let due = previous.is_none_or(|t| now >= crate::plan::after(t, model.durations.audit_interval))
        || previous_status.observed_generation != broker.metadata.generation
        || asked.is_some_and(|a| previous_status.audit_request.as_ref() != Some(a))
        || previous.is_some_and(|t| pod_unprobed(&seen.pods, t, &previous_status));
    let probes = if due && ctx.config.active_probe && model.spec.security.active_probe {
        let outsider = ctx.config.outsider.as_ref();
        let (mut probes, mut outside) = tokio::join!(
            probe_pods(model, seen, decided, now),
            super::outside::attempt(&ctx.client, outsider, model, seen, decided)
        );
        for p in &mut probes {
            let outcomes = outside.remove(&p.pod).unwrap_or_default();
            p.outside_refused = match outcomes.is_empty() {
                true => vec![Observation::Unknown("not attempted from outside".into())],
                false => outcomes.iter().map(obs).collect(),
            };
        }
        Some(probes)
    } else {
        None
    };
    Audit { due, probes, previous }
}

/// Whether one of `pods` may not have been seen serving by the audit at `audited`, which led to
/// `status`: the next reconcile audits again.
pub fn pod_unprobed(pods: &[Arc<Pod>], audited: Timestamp, status: &crate::crd::MqttBrokerStatus) -> bool {
    pods.iter().any(|p| ready_since(p).is_some_and(|r| unprobed(r, audited, status)))
}

/// Whether a pod Ready since `ready` may not have been seen serving by the audit at `audited`.
/// Both times have whole seconds: Ready in the audit's own second is ambiguous, and counts only
/// when that audit left a check Unknown (so a passing audit is not repeated).
fn unprobed(ready: Timestamp, audited: Timestamp, previous: &crate::crd::MqttBrokerStatus) -> bool {
    let unknown =
        || previous.compliance.as_ref().is_some_and(|c| c.checks.iter().any(|x| x.result == CheckResult::Unknown));
    ready > audited || (ready == audited && unknown())
}

/// When `pod` last became Ready (None while it is not Ready).
fn ready_since(pod: &Pod) -> Option<Timestamp> {
    let c = pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready" && c.status == "True")?;
    c.last_transition_time.as_ref().map(|t| t.0)
}

/// Probes every pod that has an IP, in parallel.
async fn probe_pods(model: &BrokerModel, seen: &Observed, decided: &Decided, now: Timestamp) -> Vec<LiveProbe> {
    let Some(l) = model.spec.listeners.iter().find(|l| {
        l.tls.enabled && l.protocol == ListenerProtocol::Mqtt && l.authentication == ListenerAuthentication::Password
    }) else {
        return vec![];
    };
    let bundle = decided.plan.trust_bundle();
    let tls_ports: Vec<u16> = model.spec.listeners.iter().filter(|l| l.tls.enabled).map(|l| l.port as u16).collect();
    let cert_ports: Vec<u16> = model
        .spec
        .listeners
        .iter()
        .filter(|l| l.tls.enabled && l.authentication == ListenerAuthentication::Certificate)
        .map(|l| l.port as u16)
        .collect();
    // the foreign certificate claims a real certificate user's name when there is one (the
    // strongest impersonation); the throwaway CA lives only for this audit
    let claimed = decided
        .plan
        .verdicts
        .values()
        .find_map(|o| match &o.verdict {
            Verdict::Holder(h) if h.certificate == Cred::InEffect => Some(h.username.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "moat-attestation".into());
    let foreign = if cert_ports.is_empty() {
        None
    } else {
        crate::pki::new_ca("moat attestation foreign CA", Duration::from_secs(3600), now).ok()
    };
    let timeout = Duration::from_secs(3);
    let max_packet_size = model.spec.limits.max_packet_size;
    // the current canary logins first; a pod may still run the ones this reconcile replaced
    let logins: Vec<&crate::plan::canary::Logins> =
        decided.plan.canary_logins.iter().chain(&decided.plan.canary_logins_replaced).collect();
    let credentials = |pick: fn(&crate::plan::canary::Logins) -> &crate::plan::canary::Login| {
        logins
            .iter()
            .map(|l| {
                let login = pick(l);
                Credentials { username: login.username, password: &login.password.0 }
            })
            .collect::<Vec<_>>()
    };
    let (attacker, victim) = (credentials(|l| &l.attacker), credentials(|l| &l.victim));
    // what the rules for all users let the attacking canary do (they apply to every login); its
    // client id is its username when ids are bound, else random (no topic can carry NUL)
    let client_id = if model.spec.security.use_username_as_client_id { crate::plan::canary::ATTACKER } else { "\0" };
    let granted = |topic: &str, write: bool| {
        crate::render::acl::pattern_grants(
            &decided.plan.all_users_rules,
            crate::plan::canary::ATTACKER,
            client_id,
            topic,
            write,
        )
    };
    let probes = seen.pods.iter().filter_map(|p| {
        let ip = p.status.as_ref()?.pod_ip.clone()?;
        let pod = p.name_any();
        // the pod's stable name is in the server certificate
        let server_name = format!("{pod}.{}.{}.svc", model.headless_service_name(), model.namespace);
        let target = crate::probe::ProbeTarget {
            host: ip,
            port: l.port as u16,
            server_name,
            ca_pem: Some(bundle.clone()),
            timeout,
        };
        // the main probe sends plaintext to its own port; every other TLS port gets the same attempt
        let others: Vec<u16> = tls_ports.iter().copied().filter(|&port| port != target.port).collect();
        // a canary issued by this reconcile is not in the CRL the pods run yet: presenting it now
        // would report an unenforced CRL that is only not reloaded yet
        let canary = decided.plan.canary.as_ref().ok_or("no revoked canary (the broker's CA cannot be read)");
        let canary = canary.and_then(|c| {
            if decided.plan.canary_issued_now {
                Err("the revoked canary was issued just now; the pods load its CRL next")
            } else {
                Ok(c)
            }
        });
        let (cert_ports, foreign, claimed) = (&cert_ports, foreign.as_ref(), claimed.as_str());
        let (attacker, victim, bundle, granted) = (&attacker, &victim, &bundle, &granted);
        Some(async move {
            let plaintext = others.iter().map(|&port| crate::probe::plaintext_refused(&target.host, port, timeout));
            let (host, name) = (&target.host, &target.server_name);
            let impersonation = cert_ports.iter().map(|&port| async move {
                match foreign {
                    Some(ca) => crate::probe::foreign_certificate_refused(host, port, name, ca, claimed, timeout).await,
                    None => Outcome::Unknown("could not make a foreign CA".into()),
                }
            });
            let revoked = cert_ports.iter().map(|&port| async move {
                match canary {
                    Ok(c) => crate::probe::certificate_refused(host, port, name, c, CANARY, timeout).await,
                    Err(why) => Outcome::Unknown(why.into()),
                }
            });
            let oversize = crate::probe::oversize_refused(host, target.port, name, max_packet_size, timeout);
            // the canary's attacks one after another: with client ids bound to usernames, two
            // sessions of the same canary at once would take each other over
            let logged_in = async {
                let t = LoginTarget { host, port: target.port, server_name: name, ca_pem: bundle, timeout };
                if attacker.is_empty() {
                    let none = || Outcome::Unknown("no canary logins (attestation is off)".into());
                    return (none(), none(), none());
                }
                let no_grants = login::no_grants_refused(&t, attacker, granted).await;
                let takeover = login::takeover_refused(&t, attacker, victim).await;
                let oversize = login::oversize_publish_refused(&t, attacker, max_packet_size).await;
                (no_grants, takeover, oversize)
            };
            let (report, oversize, others, foreign, revoked, (no_grants, takeover, oversize_publish)) = tokio::join!(
                crate::probe::probe(&target),
                oversize,
                futures::future::join_all(plaintext),
                futures::future::join_all(impersonation),
                futures::future::join_all(revoked),
                logged_in
            );
            LiveProbe {
                pod,
                reachable: report.reachable,
                legacy_tls_refused: obs(&report.legacy_tls_refused),
                chain_trusted: obs(&report.chain_trusted),
                anonymous_refused: obs(&report.anonymous_refused),
                plaintext_refused: std::iter::once(&report.plaintext_refused).chain(&others).map(obs).collect(),
                foreign_cert_refused: foreign.iter().map(obs).collect(),
                revoked_cert_refused: revoked.iter().map(obs).collect(),
                oversize_refused: vec![obs(&oversize), obs(&oversize_publish)],
                no_grants_refused: obs(&no_grants),
                takeover_refused: obs(&takeover),
                outside_refused: vec![],
            }
        })
    });
    futures::future::join_all(probes).await
}

/// The probe's outcome as compliance evidence (the compliance engine knows no probe types).
fn obs(o: &Outcome) -> Observation {
    match o {
        Outcome::Pass(m) => Observation::Pass(m.clone()),
        Outcome::Fail(m) => Observation::Fail(m.clone()),
        Outcome::Unknown(m) => Observation::Unknown(m.clone()),
    }
}

/// Events for checks that changed between pass and fail.
pub async fn compliance_events(
    ctx: &Context,
    broker: &MqttBroker,
    previous: Option<&ComplianceStatus>,
    now: &ComplianceStatus,
) {
    let Some(prev) = previous else { return };
    for c in &now.checks {
        let Some(p) = prev.checks.iter().find(|p| p.id == c.id) else { continue };
        let (type_, reason) = match (p.result, c.result) {
            (CheckResult::Pass, CheckResult::Fail) => (EventType::Warning, "ComplianceCheckFailed"),
            (CheckResult::Fail, CheckResult::Pass) => (EventType::Normal, "ComplianceCheckPassed"),
            _ => continue,
        };
        ctx.event(broker, type_, reason, format!("{}: {}", c.id, c.message)).await;
    }
}

/// Between audits, checks that only an audit refreshes keep their previous result.
pub fn carry_forward(checks: &mut [ComplianceCheck], previous: Option<&ComplianceStatus>, ids: &[&str]) {
    let Some(prev) = previous else { return };
    for c in checks.iter_mut().filter(|c| ids.contains(&c.id.as_str())) {
        if let Some(p) = prev.checks.iter().find(|p| p.id == c.id) {
            *c = p.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MqttBrokerStatus;

    fn status(result: CheckResult) -> MqttBrokerStatus {
        let check = ComplianceCheck {
            id: "MOAT-TLS-005".into(),
            measure: crate::crd::Measure::Encryption,
            severity: crate::crd::Severity::High,
            passed: result == CheckResult::Pass,
            result,
            message: String::new(),
            remediation: String::new(),
        };
        MqttBrokerStatus {
            compliance: Some(ComplianceStatus { checks: vec![check], ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_ready_after_the_audit_is_probed_and_one_ready_before_is_not() {
        let t = Timestamp::from_second(1_000).unwrap();
        let pass = status(CheckResult::Pass);
        assert!(unprobed(Timestamp::from_second(1_001).unwrap(), t, &pass));
        assert!(!unprobed(Timestamp::from_second(999).unwrap(), t, &pass));
        // the same second: ambiguous, probed again only if the audit could not evaluate a check
        assert!(!unprobed(t, t, &pass));
        assert!(unprobed(t, t, &status(CheckResult::Unknown)));
    }
}
