//! Compliance engine: a catalogue of checks, one or more per security measure, evaluated over the
//! validated spec **and the applied/observed objects** (what is really in the cluster), each with
//! a stable id, a severity, a message and remediation text linking to the security guide.
//!
//! Pure: the controllers gather [`BrokerFacts`] / [`UserFacts`] / [`AclFacts`] /
//! [`FirewallFacts`] from their stores (and the active probe) and call the `evaluate_*` functions.

mod catalogue;
pub mod facts;
pub mod reports;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

pub use catalogue::{CATALOGUE, CheckDef, def};
pub use facts::*;

use crate::crd::{CheckResult, ComplianceCheck, ComplianceStatus, Measure};
use crate::plan::broker::RiskyGrant;

/// Link to the guide section of a measure.
pub fn guide_link(measure: Measure) -> String {
    format!("https://github.com/moat-dev/moat/blob/main/docs/security-guide.md#{}", measure.as_str())
}

/// One evaluated check (before it is turned into the status form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Check id from the catalogue.
    pub id: &'static str,
    /// Result.
    pub result: CheckResult,
    /// What was found.
    pub message: String,
}

impl Finding {
    fn pass(id: &'static str, message: impl Into<String>) -> Self {
        Self { id, result: CheckResult::Pass, message: message.into() }
    }
    fn fail(id: &'static str, message: impl Into<String>) -> Self {
        Self { id, result: CheckResult::Fail, message: message.into() }
    }
    fn unknown(id: &'static str, message: impl Into<String>) -> Self {
        Self { id, result: CheckResult::Unknown, message: message.into() }
    }
    fn check(id: &'static str, ok: bool, pass: impl Into<String>, fail: impl Into<String>) -> Self {
        if ok { Self::pass(id, pass) } else { Self::fail(id, fail) }
    }
}

/// Whole seconds from `a` to `b` (never negative).
fn seconds(a: jiff::Timestamp, b: jiff::Timestamp) -> i64 {
    b.duration_since(a).as_secs().max(0)
}

/// MOAT-AUD-003: every pod runs the files moat wrote (a pod still catching up within the
/// deadline is not a failure; refusing files is, at once).
fn files_finding(f: &BrokerFacts) -> Finding {
    const ID: &str = "MOAT-AUD-003";
    let deadline = f.model.durations.revocation_deadline.as_secs() as i64;
    let Some(x) = &f.files else {
        return Finding::unknown(
            ID,
            "not attested: the operator does not ask the pods' agents (spec.security.activeProbe is off) or has no answer yet",
        );
    };
    if !x.refusing.is_empty() {
        return Finding::fail(
            ID,
            format!("pods refuse the files moat wrote (their previous files stay in force): {}", x.refusing.join(", ")),
        );
    }
    let written = x.written_at;
    if let Some(t) = x.in_effect_at {
        return Finding::pass(ID, format!("every pod ({}) runs the files written at {written}, since {t}", x.pods));
    }
    if x.pods == 0 {
        return Finding::unknown(ID, "no broker pod to ask");
    }
    let late = seconds(written, f.now) > deadline;
    match (late, x.unreachable.is_empty()) {
        (false, _) => {
            Finding::pass(ID, format!("the files written at {written} are reaching the pods (deadline {}s)", deadline))
        }
        (true, true) => Finding::fail(
            ID,
            format!("pods still run older files more than {deadline}s after {written}: {}", x.behind.join(", ")),
        ),
        (true, false) => Finding::unknown(ID, format!("pods did not answer: {}", x.unreachable.join(", "))),
    }
}

/// MOAT-AUTH-005: the last revocation reached every pod within the deadline.
fn revocation_deadline_finding(f: &BrokerFacts) -> Finding {
    const ID: &str = "MOAT-AUTH-005";
    let deadline = f.model.durations.revocation_deadline.as_secs() as i64;
    let Some(r) = &f.last_revocation else {
        return Finding::pass(ID, "no revocation to time since moat started managing this broker's files");
    };
    match r.in_effect_at {
        Some(t) => {
            let took = seconds(r.revoked_at, t);
            Finding::check(
                ID,
                took <= deadline,
                format!("the last revocation ({}) reached every pod in {took}s (deadline {deadline}s)", r.what),
                format!("the last revocation ({}) took {took}s to reach every pod (deadline {deadline}s)", r.what),
            )
        }
        None if seconds(r.revoked_at, f.now) <= deadline => Finding::pass(
            ID,
            format!("the revocation of {} at {} is reaching the pods (deadline {deadline}s)", r.what, r.revoked_at),
        ),
        None => Finding::fail(
            ID,
            format!("the revocation of {} at {} has not reached every pod after {deadline}s", r.what, r.revoked_at),
        ),
    }
}

/// Turns findings into status checks (sorted by id) with measure, severity and remediation.
pub fn to_checks(findings: Vec<Finding>) -> Vec<ComplianceCheck> {
    let mut checks: Vec<ComplianceCheck> = findings
        .into_iter()
        .map(|f| {
            let d = def(f.id);
            ComplianceCheck {
                id: f.id.to_string(),
                measure: d.measure,
                severity: d.severity,
                passed: f.result == CheckResult::Pass,
                result: f.result,
                message: f.message,
                remediation: if f.result == CheckResult::Pass {
                    String::new()
                } else {
                    format!("{} See {}", d.remediation, guide_link(d.measure))
                },
            }
        })
        .collect();
    checks.sort_by(|a, b| a.id.cmp(&b.id));
    checks
}

/// The compliance block of a status.
pub fn summarize(mut checks: Vec<ComplianceCheck>, last_audit: Option<jiff::Timestamp>) -> ComplianceStatus {
    checks.sort_by(|a, b| a.id.cmp(&b.id));
    let total = checks.len() as u32;
    let passed = checks.iter().filter(|c| c.passed).count() as u32;
    let unknown = checks.iter().filter(|c| c.result == CheckResult::Unknown).count();
    ComplianceStatus {
        passed,
        total,
        // what `kubectl get` shows: unknowns are said, never counted as passed
        summary: if unknown == 0 {
            format!("{passed}/{total}")
        } else {
            format!("{passed}/{total} ({unknown} unknown)")
        },
        last_audit_time: last_audit.map(Time),
        checks,
        checks_digest: None,
    }
}

/// Failing checks per measure (for the metrics gauge).
pub fn failing_by_measure(checks: &[ComplianceCheck]) -> BTreeMap<Measure, u32> {
    let mut out: BTreeMap<Measure, u32> = Measure::ALL.iter().map(|m| (*m, 0)).collect();
    for c in checks.iter().filter(|c| !c.passed) {
        *out.entry(c.measure).or_default() += 1;
    }
    out
}

/// Evaluates every broker-level check.
pub fn evaluate_broker(f: &BrokerFacts) -> Vec<ComplianceCheck> {
    let mut out = vec![];
    let conf = f.config.as_deref();
    let conf_has = |line: &str| conf.is_some_and(|c| c.lines().any(|l| l.trim() == line));
    let conf_lines = |prefix: &str| -> Vec<String> {
        conf.map(|c| c.lines().filter(|l| l.starts_with(prefix)).map(str::to_string).collect()).unwrap_or_default()
    };

    // --- authentication
    out.push(match conf {
        None => Finding::fail("MOAT-AUTH-001", "no applied mosquitto.conf found"),
        Some(_) if conf_has("allow_anonymous true") => {
            Finding::fail("MOAT-AUTH-001", "allow_anonymous true is configured")
        }
        Some(_) => Finding::check(
            "MOAT-AUTH-001",
            conf_has("allow_anonymous false"),
            "anonymous access is disabled",
            "allow_anonymous false is missing",
        ),
    });
    let listeners_authenticated = conf.is_some()
        && conf_has("per_listener_settings false")
        && !conf_lines("password_file ").is_empty()
        && f.model
            .spec
            .listeners
            .iter()
            .all(|l| l.authentication == crate::crd::broker::ListenerAuthentication::Password || l.tls.enabled);
    out.push(Finding::check(
        "MOAT-AUTH-002",
        listeners_authenticated,
        format!("all {} listener(s) require a password or a client certificate", f.model.spec.listeners.len()),
        "a listener does not require authentication",
    ));
    out.push(live_finding("MOAT-AUTH-003", f.probes.as_deref(), |p| vec![&p.anonymous_refused]));
    out.push(Finding::check(
        "MOAT-AUTH-004",
        f.model.spec.security.use_username_as_client_id,
        "client ids are bound to usernames (no session takeover across users)",
        "use_username_as_clientid is off: one user can take over another user's session by reusing its client id",
    ));
    out.push(if f.model.has_certificate_listener() {
        live_finding("MOAT-AUTH-006", f.probes.as_deref(), |p| p.foreign_cert_refused.iter().collect())
    } else {
        Finding::pass("MOAT-AUTH-006", "no certificate listener")
    });
    out.push(live_finding("MOAT-AUTH-007", f.probes.as_deref(), |p| vec![&p.takeover_refused]));

    // --- encryption
    let plaintext: Vec<&str> =
        f.model.spec.listeners.iter().filter(|l| !l.tls.enabled).map(|l| l.name.as_str()).collect();
    out.push(Finding::check(
        "MOAT-TLS-001",
        plaintext.is_empty(),
        "every listener uses TLS",
        format!("plaintext listener(s): {}", plaintext.join(", ")),
    ));
    let tls_versions = conf_lines("tls_version ");
    let weak_tls = tls_versions.iter().any(|l| !matches!(l.trim(), "tls_version tlsv1.2" | "tls_version tlsv1.3"));
    let tls_listeners = f.model.spec.listeners.iter().filter(|l| l.tls.enabled).count();
    out.push(Finding::check(
        "MOAT-TLS-002",
        conf.is_some() && !weak_tls && tls_versions.len() == tls_listeners,
        "every TLS listener requires TLS 1.2 or newer",
        "a TLS listener accepts versions older than TLS 1.2 (or sets no tls_version)",
    ));
    out.push(cert_finding(
        "MOAT-TLS-003",
        "server certificate",
        f.server_cert.as_ref(),
        f.model.durations.server_renew_before,
        f.now,
        Some(&f.model.server_dns_names()),
    ));
    out.push(match (&f.ca, f.ca_rollover_in_progress) {
        (Some(ca), true) if ca.not_after > f.now => Finding::pass(
            "MOAT-TLS-004",
            "CA rollover in progress: the next CA is trusted and takes over before expiry",
        ),
        (ca, _) => {
            cert_finding("MOAT-TLS-004", "CA certificate", ca.as_ref(), f.model.durations.ca_renew_before, f.now, None)
        }
    });
    out.push(live_finding("MOAT-TLS-005", f.probes.as_deref(), |p| {
        let mut o = vec![&p.legacy_tls_refused, &p.chain_trusted];
        o.extend(&p.plaintext_refused);
        o
    }));
    out.push(revocation_finding(conf, f.model));
    out.push(if f.model.has_certificate_listener() {
        live_finding("MOAT-TLS-008", f.probes.as_deref(), |p| p.revoked_cert_refused.iter().collect())
    } else {
        Finding::pass("MOAT-TLS-008", "no certificate listener")
    });
    out.push(crl_finding(f.crl_next_update, f.model.has_certificate_listener(), f.now));

    // --- acl
    out.push(match (&conf, &f.acl_file) {
        (Some(c), Some(acl)) if c.lines().any(|l| l.starts_with("acl_file ")) => match crate::render::acl::parse(acl) {
            Ok(_) => Finding::pass("MOAT-ACL-001", "ACL file configured and valid: anything not granted is denied"),
            Err(e) => Finding::fail("MOAT-ACL-001", format!("applied ACL file does not parse: {e}")),
        },
        (Some(_), None) => Finding::fail("MOAT-ACL-001", "no applied ACL file"),
        _ => Finding::fail("MOAT-ACL-001", "mosquitto.conf sets no acl_file (Mosquitto would allow everything)"),
    });
    let (hash_write, sys) = split_grants(f.acl_warnings.iter().map(|(acl, g)| (Some(acl.as_str()), g)));
    out.push(Finding::check("MOAT-ACL-002", hash_write.is_empty(), "no rule grants write access to '#'", hash_write));
    out.push(Finding::check("MOAT-ACL-003", sys.is_empty(), "$SYS is not granted broadly", sys));
    out.push(Finding::check(
        "MOAT-ACL-004",
        f.acls_invalid.is_empty(),
        format!("{} ACL(s) in effect", f.acls_total),
        format!("ACL(s) not in effect: {}", f.acls_invalid.join(", ")),
    ));
    out.push(live_finding("MOAT-ACL-005", f.probes.as_deref(), |p| vec![&p.no_grants_refused]));

    // --- configuration
    match &f.pod {
        None => {
            for id in ["MOAT-CFG-001", "MOAT-CFG-002", "MOAT-CFG-003", "MOAT-CFG-004"] {
                out.push(Finding::fail(id, "no broker StatefulSet found"));
            }
        }
        Some(p) => {
            // each passes when the template has containers and none of them has that problem
            for (id, problems, pass, fail) in [
                (
                    "MOAT-CFG-001",
                    &p.user_problems,
                    "containers run as non-root uid/gid 1883",
                    "not all containers run as non-root uid 1883",
                ),
                (
                    "MOAT-CFG-002",
                    &p.fs_problems,
                    "read-only root filesystem, no privilege escalation",
                    "writable root filesystem or privilege escalation",
                ),
                (
                    "MOAT-CFG-003",
                    &p.caps_problems,
                    "all capabilities dropped, seccomp RuntimeDefault",
                    "capabilities or seccomp relaxed",
                ),
            ] {
                let ok = p.containers > 0 && problems.is_empty();
                out.push(Finding::check(id, ok, pass, format!("{fail}: {}", problems.join("; "))));
            }
            out.push(Finding::check(
                "MOAT-CFG-004",
                p.no_token,
                "no service account token is mounted",
                "a service account token is mounted into the broker pods",
            ));
        }
    }
    let limits =
        ["max_packet_size ", "message_size_limit ", "max_connections ", "max_queued_messages ", "max_keepalive "];
    let missing: Vec<&str> = limits.iter().filter(|p| conf_lines(p).is_empty()).map(|p| p.trim()).collect();
    out.push(Finding::check(
        "MOAT-CFG-005",
        conf.is_some() && missing.is_empty(),
        "protocol limits are set",
        format!("protocol limits missing: {}", missing.join(", ")),
    ));
    out.push(live_finding("MOAT-CFG-008", f.probes.as_deref(), |p| p.oversize_refused.iter().collect()));
    out.push(Finding::check(
        "MOAT-CFG-006",
        f.pod.as_ref().is_some_and(|p| p.resources_set),
        "CPU/memory requests and a memory limit are set",
        "the broker container has no resource requests or memory limit",
    ));
    out.push(Finding::check(
        "MOAT-CFG-007",
        f.extra_service_ports.is_empty(),
        "the Service exposes only the broker's listeners",
        format!("the Service exposes extra port(s): {}", f.extra_service_ports.join(", ")),
    ));

    // --- firewall
    out.push(match (f.default_deny_ok, f.open_policies.is_empty()) {
        (false, _) => Finding::fail("MOAT-FW-001", "the default-deny NetworkPolicy is missing or does not select the broker pods"),
        (true, false) => Finding::fail(
            "MOAT-FW-001",
            format!(
                "NetworkPolicies not made by moat admit ingress to the broker pods (policies add up, so they open the broker): {}",
                f.open_policies.join(", ")
            ),
        ),
        (true, true) => Finding::pass(
            "MOAT-FW-001",
            "a default-deny NetworkPolicy isolates the broker pods and no other policy admits ingress to them",
        ),
    });
    out.push(Finding::check(
        "MOAT-FW-002",
        f.public_firewalls.is_empty(),
        "no firewall opens the broker to the public internet",
        format!("public internet ingress acknowledged by: {}", f.public_firewalls.join(", ")),
    ));
    out.push(match &f.load_balancer {
        None => Finding::pass("MOAT-FW-003", "no LoadBalancer Service"),
        Some(ranges) if ranges.is_empty() => Finding::fail(
            "MOAT-FW-003",
            "the LoadBalancer Service has no loadBalancerSourceRanges (no MqttFirewall CIDRs)",
        ),
        Some(ranges) => Finding::pass("MOAT-FW-003", format!("LoadBalancer limited to {}", ranges.join(", "))),
    });
    out.push(live_finding("MOAT-FW-004", f.probes.as_deref(), |p| p.outside_refused.iter().collect()));

    // --- monitoring
    out.push(Finding::check(
        "MOAT-MON-001",
        conf_has("connection_messages true") && (conf_has("log_dest stderr") || conf_has("log_dest stdout")),
        "connections are logged (kubectl logs)",
        "connection logging is off (connection_messages false, or no log_dest stderr/stdout)",
    ));
    out.push(Finding::check(
        "MOAT-MON-002",
        conf_has("log_type notice") || conf_has("log_type information"),
        "authentication failures are logged (log_type notice)",
        "log types exclude notice: refused logins are not logged",
    ));

    // --- passwords
    out.push(Finding::check(
        "MOAT-PWD-001",
        f.weak_password_users.is_empty(),
        "every password in effect is generated or satisfies the policy",
        format!(
            "users with a password that fails the policy (not added to the broker): {}",
            f.weak_password_users.join(", ")
        ),
    ));
    out.push(Finding::check(
        "MOAT-PWD-002",
        f.reused_password_users.is_empty(),
        "no password is shared by two users",
        format!("users sharing a password: {}", f.reused_password_users.join(", ")),
    ));
    out.push(Finding::check(
        "MOAT-PWD-003",
        f.overdue_password_users.is_empty(),
        "every password is within its rotateAfter",
        format!("passwords older than rotateAfter: {}", f.overdue_password_users.join(", ")),
    ));

    // --- audit
    out.push(match f.previous_audit {
        Some(prev)
            if f.now.duration_since(prev).as_secs_f64() > 2.0 * f.model.durations.audit_interval.as_secs_f64() =>
        {
            Finding::fail("MOAT-AUD-001", format!("the previous audit ({prev}) was more than two intervals ago"))
        }
        _ => Finding::pass("MOAT-AUD-001", format!("audited every {}", f.model.spec.audit.interval)),
    });
    out.push(Finding::check(
        "MOAT-AUD-002",
        f.drift.is_empty(),
        "managed objects match what moat applied",
        format!("changed outside moat and repaired: {}", f.drift.join("; ")),
    ));
    out.push(files_finding(f));
    out.push(revocation_deadline_finding(f));

    // --- updates
    out.push(if f.known_cves.is_empty() {
        Finding::pass("MOAT-UPD-001", format!("no known CVEs for Mosquitto {}", f.running_version))
    } else {
        Finding::fail(
            "MOAT-UPD-001",
            format!(
                "Mosquitto {} has known CVEs: {}",
                f.running_version,
                f.known_cves.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )
    });
    out.push(Finding::check(
        "MOAT-UPD-002",
        !f.upgrade_failed,
        "no failed or stuck upgrade",
        format!("the last upgrade failed: {}", f.upgrade_message),
    ));

    // --- awareness: checked over everything above
    let defs_ok = out.iter().all(|x| !def(x.id).remediation.is_empty());
    out.push(Finding::check(
        "MOAT-AWR-001",
        defs_ok,
        "every failed check carries remediation text and a link to the security guide",
        "a check has no remediation text",
    ));
    to_checks(out)
}

/// Risky grants (each with the ACL that makes it, if known) as the messages of the write-to-`#`
/// and the broad-`$SYS` checks.
fn split_grants<'a>(grants: impl Iterator<Item = (Option<&'a str>, &'a RiskyGrant)>) -> (String, String) {
    let (mut hash, mut sys) = (vec![], vec![]);
    for (acl, g) in grants {
        let text = match acl {
            Some(a) => format!("{a}: {g}"),
            None => g.to_string(),
        };
        match g {
            RiskyGrant::WriteAll { .. } => hash.push(text),
            RiskyGrant::BroadSys { .. } => sys.push(text),
        }
    }
    (hash.join("; "), sys.join("; "))
}

/// A live check over every broker pod: failing on any pod fails (naming it), passing needs every
/// pod to pass; no pod probed, an unreachable pod or an ambiguous answer is Unknown, never a pass.
/// The checks only an audit's active probe evaluates (between audits they keep their result).
pub const PROBED_CHECKS: &[&str] = &[
    "MOAT-AUTH-003",
    "MOAT-AUTH-006",
    "MOAT-AUTH-007",
    "MOAT-TLS-005",
    "MOAT-TLS-008",
    "MOAT-ACL-005",
    "MOAT-CFG-008",
    "MOAT-FW-004",
];

fn live_finding(
    id: &'static str,
    probes: Option<&[LiveProbe]>,
    pick: impl Fn(&LiveProbe) -> Vec<&Observation>,
) -> Finding {
    let Some(probes) = probes else {
        return Finding::unknown(id, "active probe not run at this audit (disabled, or no audit yet)");
    };
    if probes.is_empty() {
        return Finding::unknown(id, "no broker pod to probe (none running with an IP)");
    }
    let mut fails = vec![];
    let mut unknown = vec![];
    let mut passes = vec![];
    for p in probes {
        if !p.reachable {
            unknown.push(format!("{}: not reachable from the operator", p.pod));
            continue;
        }
        for o in pick(p) {
            match o {
                Observation::Pass(m) => passes.push(format!("{}: {m}", p.pod)),
                Observation::Fail(m) => fails.push(format!("{}: {m}", p.pod)),
                Observation::Unknown(m) => unknown.push(format!("{}: {m}", p.pod)),
            }
        }
    }
    if !fails.is_empty() {
        Finding::fail(id, fails.join("; "))
    } else if !unknown.is_empty() {
        Finding::unknown(id, unknown.join("; "))
    } else {
        Finding::pass(id, format!("{} pod(s): {}", probes.len(), passes.join("; ")))
    }
}

/// MOAT-TLS-007: the CRL is not about to expire (OpenSSL refuses every client certificate once it
/// has; moat re-signs it two days before its nextUpdate, so less than a day left means moat failed).
fn crl_finding(next_update: Option<jiff::Timestamp>, needed: bool, now: jiff::Timestamp) -> Finding {
    let day = jiff::SignedDuration::from_hours(24);
    match next_update {
        _ if !needed => Finding::pass("MOAT-TLS-007", "no certificate listener: no CRL in use"),
        None => Finding::fail("MOAT-TLS-007", "the applied CRL has no nextUpdate or cannot be read"),
        Some(t) if t <= now => {
            Finding::fail("MOAT-TLS-007", format!("the CRL expired at {t}: every client certificate is refused"))
        }
        Some(t) if now.checked_add(day).is_ok_and(|soon| t <= soon) => Finding::fail(
            "MOAT-TLS-007",
            format!("the CRL expires at {t} and was not re-signed (it should have been two days before)"),
        ),
        Some(t) => Finding::pass("MOAT-TLS-007", format!("the CRL is current until {t}")),
    }
}

fn cert_finding(
    id: &'static str,
    what: &str,
    info: Option<&crate::pki::CertInfo>,
    renew_before: std::time::Duration,
    now: jiff::Timestamp,
    names: Option<&[String]>,
) -> Finding {
    let Some(c) = info else { return Finding::fail(id, format!("no {what} issued yet")) };
    if c.not_after <= now {
        return Finding::fail(id, format!("{what} expired at {}", c.not_after));
    }
    if !c.key_is_strong {
        return Finding::fail(id, format!("{what} uses a weak or unsupported key"));
    }
    if let Some(names) = names {
        let missing: Vec<&String> = names.iter().filter(|n| !c.dns_names.contains(n)).collect();
        if !missing.is_empty() {
            return Finding::fail(
                id,
                format!("{what} does not cover {}", missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")),
            );
        }
    }
    let renew_at = crate::pki::renewal_time(c, renew_before);
    if now >= renew_at {
        return Finding::fail(
            id,
            format!("{what} expires at {} and is overdue for renewal (due {renew_at})", c.not_after),
        );
    }
    Finding::pass(id, format!("{what} valid until {}, renewal at {renew_at}", c.not_after))
}

/// One `listener` block of an applied `mosquitto.conf`: its port and its option lines.
struct ListenerBlock<'a> {
    port: &'a str,
    lines: Vec<&'a str>,
}

/// The listener blocks of a config, in order (options before the first `listener` are global).
fn listener_blocks(conf: &str) -> Vec<ListenerBlock<'_>> {
    let mut out: Vec<ListenerBlock> = vec![];
    for line in conf.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("listener ") {
            out.push(ListenerBlock { port: rest.split_whitespace().next().unwrap_or(""), lines: vec![] });
        } else if let Some(b) = out.last_mut()
            && !line.is_empty()
            && !line.starts_with('#')
        {
            b.lines.push(line);
        }
    }
    out
}

/// MOAT-TLS-006 from what the applied config enforces: every listener that accepts client
/// certificates as identities must be an MQTT listener (Mosquitto loads no CRL on WebSockets
/// listeners) with a `crlfile`, and every certificate listener of the spec must be such a block.
fn revocation_finding(conf: Option<&str>, model: &crate::model::BrokerModel) -> Finding {
    let Some(conf) = conf else { return Finding::fail("MOAT-TLS-006", "no applied mosquitto.conf found") };
    let blocks = listener_blocks(conf);
    let has = |b: &ListenerBlock, l: &str| b.lines.contains(&l);
    let mut problems = vec![];
    let mut enforced = 0;
    for b in blocks.iter().filter(|b| has(b, "require_certificate true") || has(b, "use_identity_as_username true")) {
        let websockets = has(b, "protocol websockets");
        let crl = b.lines.iter().any(|l| l.starts_with("crlfile "));
        match (websockets, crl) {
            (true, _) => problems.push(format!(
                "listener on port {} takes client certificates over WebSockets, where Mosquitto checks no CRL",
                b.port
            )),
            (false, false) => {
                problems.push(format!("listener on port {} takes client certificates without a crlfile", b.port))
            }
            (false, true) => enforced += 1,
        }
    }
    let wanted: Vec<&str> = model
        .spec
        .listeners
        .iter()
        .filter(|l| l.authentication == crate::crd::broker::ListenerAuthentication::Certificate)
        .map(|l| l.name.as_str())
        .collect();
    if problems.is_empty() && enforced < wanted.len() {
        problems
            .push(format!("{} certificate listener(s) in the spec but {enforced} in the applied config", wanted.len()));
    }
    match (problems.is_empty(), wanted.is_empty()) {
        (false, _) => Finding::fail("MOAT-TLS-006", problems.join("; ")),
        (true, true) => Finding::pass("MOAT-TLS-006", "no certificate listeners"),
        (true, false) => Finding::pass(
            "MOAT-TLS-006",
            format!("certificate listener(s) {} are MQTT listeners that load the CRL", wanted.join(", ")),
        ),
    }
}

/// Evaluates the checks about one user.
pub fn evaluate_user(f: &UserFacts) -> Vec<ComplianceCheck> {
    let mut out = vec![];
    if f.password_auth {
        out.push(match (f.weak_password, f.generated) {
            (true, _) => {
                Finding::fail("MOAT-USR-001", "the brought password does not meet the broker's password policy")
            }
            (false, true) => Finding::pass("MOAT-USR-001", "password generated by moat"),
            (false, false) => Finding::pass("MOAT-USR-001", "brought password satisfies the broker's policy"),
        });
        out.push(match (f.rotate_after, f.password_age) {
            (Some(max), Some(age)) if age > max => Finding::fail(
                "MOAT-USR-002",
                format!("password is {}h old, rotateAfter is {}h", age.as_secs() / 3600, max.as_secs() / 3600),
            ),
            (Some(_), _) => Finding::pass("MOAT-USR-002", "password is within rotateAfter"),
            (None, _) => Finding::pass("MOAT-USR-002", "no rotation required (rotateAfter unset)"),
        });
        out.push(Finding::check(
            "MOAT-USR-003",
            !f.reused,
            "password not used by any other user of the broker",
            "another user of the broker has the same password",
        ));
    }
    if f.certificate_auth {
        out.push(match f.certificate {
            None => Finding::fail("MOAT-USR-004", "no client certificate is in effect"),
            Some((not_after, _)) if not_after <= f.now => {
                Finding::fail("MOAT-USR-004", format!("the client certificate expired at {not_after}"))
            }
            Some((_, renew_at)) if f.now > after_grace(renew_at) => Finding::fail(
                "MOAT-USR-004",
                format!("the client certificate is overdue for renewal (since {renew_at})"),
            ),
            Some((not_after, _)) => {
                Finding::pass("MOAT-USR-004", format!("client certificate valid until {not_after}"))
            }
        });
    }
    out.push(Finding::check(
        "MOAT-USR-005",
        f.has_usable_listener,
        "the broker has a listener for this user's authentication method",
        "no listener of the broker accepts this user's authentication method",
    ));
    to_checks(out)
}

/// A renewal is overdue once it is an hour late (moat renews at the renewal time itself).
fn after_grace(t: jiff::Timestamp) -> jiff::Timestamp {
    t.checked_add(jiff::SignedDuration::from_hours(1)).unwrap_or(t)
}

/// Evaluates the checks about one ACL.
pub fn evaluate_acl(f: &AclFacts) -> Vec<ComplianceCheck> {
    let (hash, sys) = split_grants(f.warnings.iter().map(|g| (None, g)));
    to_checks(vec![
        Finding::check("MOAT-ACL-101", hash.is_empty(), "no write access to '#'", hash),
        Finding::check("MOAT-ACL-102", sys.is_empty(), "no broad $SYS access", sys),
        Finding::check(
            "MOAT-ACL-103",
            f.pending_users.is_empty(),
            "every listed user exists and is Ready",
            format!("users without a Ready MqttUser (their rules are not in effect): {}", f.pending_users.join(", ")),
        ),
    ])
}

/// Evaluates the checks about one firewall.
pub fn evaluate_firewall(f: &FirewallFacts) -> Vec<ComplianceCheck> {
    to_checks(vec![
        Finding::check(
            "MOAT-FW-101",
            f.public_cidrs.is_empty(),
            "no peer covers the public internet",
            format!("public internet allowed (allowPublicInternet): {}", f.public_cidrs.join(", ")),
        ),
        Finding::check(
            "MOAT-FW-102",
            f.policy_in_effect,
            "the allow NetworkPolicy is applied as generated",
            "the generated NetworkPolicy is missing or was changed outside moat",
        ),
    ])
}

#[cfg(test)]
mod tests;
