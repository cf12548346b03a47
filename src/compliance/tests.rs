//! Every check has a passing and a failing fixture; remediation and the guide are complete.

use std::collections::BTreeSet;
use std::time::Duration;

use super::*;
use crate::crd::{CheckResult, Measure};
use crate::model::BrokerModel;
use crate::model::tests::minimal_spec;

fn now() -> jiff::Timestamp {
    "2026-06-01T00:00:00Z".parse().unwrap()
}

struct World {
    model: BrokerModel,
    ca: crate::pki::Issued,
    server: crate::pki::Issued,
}

fn world() -> World {
    let model = BrokerModel::from_spec("plant-a", "iot", &minimal_spec()).unwrap();
    let ca = crate::pki::new_ca("moat CA iot/plant-a", Duration::from_secs(365 * 86400), now()).unwrap();
    let names = crate::pki::ServerNames { dns: model.server_dns_names(), ips: vec![] };
    let server = crate::pki::issue_server(&ca, &names, Duration::from_secs(90 * 86400), now()).unwrap();
    World { model, ca, server }
}

fn good_probe(pod: &str) -> LiveProbe {
    LiveProbe {
        pod: pod.into(),
        reachable: true,
        legacy_tls_refused: Observation::Pass("refused".into()),
        chain_trusted: Observation::Pass("trusted".into()),
        anonymous_refused: Observation::Pass("rc 5".into()),
        plaintext_refused: vec![Observation::Pass("hung up".into()), Observation::Pass("hung up".into())],
        foreign_cert_refused: vec![Observation::Pass("refused".into())],
        revoked_cert_refused: vec![Observation::Pass("refused".into())],
        oversize_refused: vec![Observation::Pass("dropped".into()), Observation::Pass("dropped".into())],
        no_grants_refused: Observation::Pass("PUBACK not authorized".into()),
        takeover_refused: Observation::Pass("left that session up".into()),
        outside_refused: vec![
            Observation::Pass("port 8883: refused".into()),
            Observation::Pass("port 8884: refused".into()),
        ],
    }
}

fn rendered_sts(model: &BrokerModel) -> k8s_openapi::api::apps::v1::StatefulSet {
    crate::render::workload::statefulset(
        model,
        &crate::render::workload::WorkloadParams {
            agent_image: "moat".into(),
            version: "2.0.22".into(),
            partition: 0,
            restart_hash: "x".into(),
            passwd_slots: 4,
            acl_slots: 4,
            sessions_epoch: None,
        },
    )
}

fn good<'a>(w: &'a World) -> BrokerFacts<'a> {
    let config =
        crate::render::config::render(&w.model, &crate::render::config::ConfigPaths::in_pod(), &Default::default())
            .text;
    BrokerFacts {
        model: &w.model,
        config: Some(config),
        acl_file: Some(crate::render::acl::render(&Default::default(), &[]).unwrap()),
        pod: Some(pod_hardening(&rendered_sts(&w.model))),
        default_deny_ok: default_deny_ok(Some(&crate::render::network::default_deny(&w.model)), "plant-a"),
        extra_service_ports: extra_service_ports(Some(&crate::render::network::service(&w.model, &[])), &w.model),
        load_balancer: None,
        public_firewalls: vec![],
        server_cert: crate::pki::inspect(&w.server.cert_pem).ok(),
        ca: crate::pki::inspect(&w.ca.cert_pem).ok(),
        ca_rollover_in_progress: false,
        probes: Some(vec![good_probe("plant-a-0")]),
        open_policies: vec![],
        crl_next_update: Some(now() + jiff::SignedDuration::from_hours(24 * 6)),
        acl_warnings: vec![],
        acls_invalid: vec![],
        acls_total: 0,
        weak_password_users: vec![],
        reused_password_users: vec![],
        overdue_password_users: vec![],
        drift: vec![],
        previous_audit: Some(now()),
        running_version: "2.0.22".into(),
        known_cves: vec![],
        upgrade_failed: false,
        upgrade_message: String::new(),
        files: Some(FilesFacts {
            written_at: now() - jiff::SignedDuration::from_secs(30),
            in_effect_at: Some(now() - jiff::SignedDuration::from_secs(28)),
            pods: 1,
            behind: vec![],
            refusing: vec![],
            unreachable: vec![],
        }),
        last_revocation: Some(RevocationFacts {
            what: "password of sensor-1".into(),
            revoked_at: now() - jiff::SignedDuration::from_secs(30),
            in_effect_at: Some(now() - jiff::SignedDuration::from_secs(28)),
        }),
        now: now(),
    }
}

#[test]
fn files_and_revocations_are_judged_against_the_deadline() {
    let w = world();
    let secs = jiff::SignedDuration::from_secs;
    let run = |change: &dyn Fn(&mut BrokerFacts)| {
        let mut f = good(&w);
        change(&mut f);
        let checks = evaluate_broker(&f);
        (result_of(&checks, "MOAT-AUD-003"), result_of(&checks, "MOAT-AUTH-005"))
    };
    assert_eq!(run(&|_| {}), (CheckResult::Pass, CheckResult::Pass));
    // catching up within the 60 s deadline is no failure; past it, a pod behind is
    let behind = |age: i64| {
        move |f: &mut BrokerFacts| {
            let x = f.files.as_mut().unwrap();
            (x.written_at, x.in_effect_at, x.behind) = (now() - secs(age), None, vec!["plant-a-0".into()]);
        }
    };
    assert_eq!(run(&behind(10)).0, CheckResult::Pass);
    assert_eq!(run(&behind(61)).0, CheckResult::Fail);
    // a pod that does not answer past the deadline is not evidence either way
    assert_eq!(
        run(&|f| {
            let x = f.files.as_mut().unwrap();
            (x.written_at, x.in_effect_at, x.unreachable) = (now() - secs(61), None, vec!["plant-a-0".into()]);
        })
        .0,
        CheckResult::Unknown
    );
    // refused files fail at once; no attestation is Unknown
    assert_eq!(run(&|f| f.files.as_mut().unwrap().refusing = vec!["plant-a-0".into()]).0, CheckResult::Fail);
    assert_eq!(run(&|f| f.files = None).0, CheckResult::Unknown);
    // a revocation that took longer than the deadline, or is pending past it, fails
    let revoked = |took: Option<i64>, age: i64| {
        move |f: &mut BrokerFacts| {
            let r = f.last_revocation.as_mut().unwrap();
            r.revoked_at = now() - secs(age);
            r.in_effect_at = took.map(|t| r.revoked_at + secs(t));
        }
    };
    assert_eq!(run(&revoked(Some(61), 100)).1, CheckResult::Fail);
    assert_eq!(run(&revoked(Some(5), 100)).1, CheckResult::Pass);
    assert_eq!(run(&revoked(None, 30)).1, CheckResult::Pass);
    assert_eq!(run(&revoked(None, 61)).1, CheckResult::Fail);
    assert_eq!(run(&|f| f.last_revocation = None).1, CheckResult::Pass);
}

fn result_of(checks: &[crate::crd::ComplianceCheck], id: &str) -> CheckResult {
    checks.iter().find(|c| c.id == id).unwrap_or_else(|| panic!("{id} not evaluated")).result
}

#[test]
fn a_hardened_broker_passes_every_check() {
    let w = world();
    let checks = evaluate_broker(&good(&w));
    let failing: Vec<_> = checks.iter().filter(|c| !c.passed).map(|c| (&c.id, &c.message)).collect();
    assert!(failing.is_empty(), "{failing:?}");
    assert!(checks.iter().all(|c| c.remediation.is_empty()), "passing checks carry no remediation");
}

type Mutation = Box<dyn Fn(&mut BrokerFacts)>;

fn write_all() -> crate::plan::broker::RiskyGrant {
    crate::plan::broker::RiskyGrant::WriteAll { topic: "#".into(), access: crate::crd::AclAccess::Write }
}

fn broad_sys() -> crate::plan::broker::RiskyGrant {
    crate::plan::broker::RiskyGrant::BroadSys { topic: "$SYS/#".into() }
}

/// One failing fixture per broker check.
fn broker_failures(w: &World) -> Vec<(&'static str, Mutation)> {
    let mut weak_sts = rendered_sts(&w.model);
    let c = &mut weak_sts.spec.as_mut().unwrap().template.spec.as_mut().unwrap().containers[0];
    c.security_context.as_mut().unwrap().run_as_non_root = Some(false);
    let weak_user = pod_hardening(&weak_sts);
    let mut rw = rendered_sts(&w.model);
    rw.spec.as_mut().unwrap().template.spec.as_mut().unwrap().containers[0]
        .security_context
        .as_mut()
        .unwrap()
        .read_only_root_filesystem = Some(false);
    let rw = pod_hardening(&rw);
    let mut caps = rendered_sts(&w.model);
    caps.spec.as_mut().unwrap().template.spec.as_mut().unwrap().containers[1]
        .security_context
        .as_mut()
        .unwrap()
        .capabilities = Some(k8s_openapi::api::core::v1::Capabilities {
        add: Some(vec!["NET_ADMIN".into()]),
        drop: Some(vec!["ALL".into()]),
    });
    let caps = pod_hardening(&caps);
    let mut token = rendered_sts(&w.model);
    token.spec.as_mut().unwrap().template.spec.as_mut().unwrap().automount_service_account_token = None;
    let token = pod_hardening(&token);
    let mut nores = rendered_sts(&w.model);
    nores.spec.as_mut().unwrap().template.spec.as_mut().unwrap().containers[0].resources = None;
    let nores = pod_hardening(&nores);
    let expired = crate::pki::inspect(
        &crate::pki::issue_server(
            &w.ca,
            &crate::pki::ServerNames { dns: w.model.server_dns_names(), ips: vec![] },
            Duration::from_secs(3600),
            now() - jiff::SignedDuration::from_hours(48),
        )
        .unwrap()
        .cert_pem,
    )
    .ok();
    let replace = |from: &'static str, to: &'static str| -> Mutation {
        Box::new(move |f: &mut BrokerFacts| f.config = f.config.take().map(|c| c.replace(from, to)))
    };
    vec![
        ("MOAT-AUTH-001", replace("allow_anonymous false", "allow_anonymous true")),
        ("MOAT-AUTH-002", replace("password_file", "#password_file")),
        (
            "MOAT-AUTH-003",
            Box::new(|f| f.probes.as_mut().unwrap()[0].anonymous_refused = Observation::Fail("CONNACK rc 0".into())),
        ),
        (
            "MOAT-AUTH-006",
            Box::new(|f| {
                let mut m = f.model.clone();
                m.spec.listeners[0].authentication = crate::crd::broker::ListenerAuthentication::Certificate;
                f.model = Box::leak(Box::new(m));
                f.probes.as_mut().unwrap()[0].foreign_cert_refused =
                    vec![Observation::Fail("accepted a certificate from a foreign CA".into())];
            }),
        ),
        (
            "MOAT-AUTH-004",
            Box::new(|f| {
                let mut m = f.model.clone();
                m.spec.security.use_username_as_client_id = false;
                f.model = Box::leak(Box::new(m));
            }),
        ),
        (
            "MOAT-TLS-001",
            Box::new(|f| {
                let mut m = f.model.clone();
                m.spec.listeners[0].tls.enabled = false;
                m.spec.listeners[0].insecure_plaintext = true;
                f.model = Box::leak(Box::new(m));
            }),
        ),
        ("MOAT-TLS-002", replace("tls_version tlsv1.2", "tls_version tlsv1.1")),
        ("MOAT-TLS-003", Box::new(move |f| f.server_cert = expired.clone())),
        ("MOAT-TLS-004", Box::new(|f| f.ca = None)),
        (
            "MOAT-TLS-007",
            Box::new(|f| {
                let mut m = f.model.clone();
                m.spec.listeners[0].authentication = crate::crd::broker::ListenerAuthentication::Certificate;
                f.model = Box::leak(Box::new(m));
                f.config = Some(
                    crate::render::config::render(
                        f.model,
                        &crate::render::config::ConfigPaths::in_pod(),
                        &Default::default(),
                    )
                    .text,
                );
                f.crl_next_update = Some(now() + jiff::SignedDuration::from_hours(12));
            }),
        ),
        (
            "MOAT-TLS-005",
            Box::new(|f| {
                f.probes.as_mut().unwrap()[0].legacy_tls_refused = Observation::Fail("TLS 1.1 accepted".into())
            }),
        ),
        (
            "MOAT-TLS-005",
            Box::new(|f| {
                f.probes.as_mut().unwrap()[0].plaintext_refused[1] = Observation::Fail("CONNACK rc 5 on 8883".into())
            }),
        ),
        (
            "MOAT-CFG-008",
            Box::new(|f| {
                f.probes.as_mut().unwrap()[0].oversize_refused[1] = Observation::Fail("kept the client".into())
            }),
        ),
        (
            "MOAT-ACL-005",
            Box::new(|f| f.probes.as_mut().unwrap()[0].no_grants_refused = Observation::Fail("PUBACK success".into())),
        ),
        (
            "MOAT-AUTH-007",
            Box::new(|f| {
                f.probes.as_mut().unwrap()[0].takeover_refused = Observation::Fail("ended that session".into())
            }),
        ),
        (
            "MOAT-TLS-008",
            Box::new(|f| {
                let mut m = f.model.clone();
                m.spec.listeners[0].authentication = crate::crd::broker::ListenerAuthentication::Certificate;
                f.model = Box::leak(Box::new(m));
                f.probes.as_mut().unwrap()[0].revoked_cert_refused =
                    vec![Observation::Fail("accepted moat's revoked canary certificate".into())];
            }),
        ),
        (
            "MOAT-TLS-006",
            Box::new(|f| {
                let mut m = f.model.clone();
                m.spec.listeners[0].authentication = crate::crd::broker::ListenerAuthentication::Certificate;
                f.model = Box::leak(Box::new(m));
            }),
        ),
        ("MOAT-ACL-001", Box::new(|f| f.acl_file = Some("bogus line\n".into()))),
        ("MOAT-ACL-002", Box::new(|f| f.acl_warnings = vec![("a".into(), write_all())])),
        ("MOAT-ACL-003", Box::new(|f| f.acl_warnings = vec![("a".into(), broad_sys())])),
        ("MOAT-ACL-004", Box::new(|f| f.acls_invalid = vec!["bad".into()])),
        ("MOAT-CFG-001", Box::new(move |f| f.pod = Some(weak_user.clone()))),
        ("MOAT-CFG-002", Box::new(move |f| f.pod = Some(rw.clone()))),
        ("MOAT-CFG-003", Box::new(move |f| f.pod = Some(caps.clone()))),
        ("MOAT-CFG-004", Box::new(move |f| f.pod = Some(token.clone()))),
        ("MOAT-CFG-005", replace("max_packet_size", "#max_packet_size")),
        ("MOAT-CFG-006", Box::new(move |f| f.pod = Some(nores.clone()))),
        ("MOAT-CFG-007", Box::new(|f| f.extra_service_ports = vec!["debug".into()])),
        ("MOAT-FW-001", Box::new(|f| f.default_deny_ok = false)),
        ("MOAT-FW-001", Box::new(|f| f.open_policies = vec!["allow-all".into()])),
        ("MOAT-FW-002", Box::new(|f| f.public_firewalls = vec!["open".into()])),
        ("MOAT-FW-003", Box::new(|f| f.load_balancer = Some(vec![]))),
        (
            "MOAT-FW-004",
            Box::new(|f| {
                f.probes.as_mut().unwrap()[0].outside_refused[1] = Observation::Fail("port 8884: connected".into())
            }),
        ),
        ("MOAT-MON-001", replace("connection_messages true", "connection_messages false")),
        (
            "MOAT-MON-002",
            Box::new(|f| {
                f.config =
                    f.config.take().map(|c| c.replace("log_type notice\n", "").replace("log_type information\n", ""))
            }),
        ),
        ("MOAT-PWD-001", Box::new(|f| f.weak_password_users = vec!["u".into()])),
        ("MOAT-PWD-002", Box::new(|f| f.reused_password_users = vec!["a".into(), "b".into()])),
        ("MOAT-PWD-003", Box::new(|f| f.overdue_password_users = vec!["u".into()])),
        ("MOAT-AUD-001", Box::new(|f| f.previous_audit = Some(now() - jiff::SignedDuration::from_hours(5)))),
        ("MOAT-AUD-002", Box::new(|f| f.drift = vec!["StatefulSet plant-a changed".into()])),
        ("MOAT-AUD-003", Box::new(|f| f.files.as_mut().unwrap().refusing = vec!["plant-a-0".into()])),
        (
            "MOAT-AUTH-005",
            Box::new(|f| {
                let r = f.last_revocation.as_mut().unwrap();
                r.in_effect_at = Some(r.revoked_at + jiff::SignedDuration::from_secs(90));
            }),
        ),
        (
            "MOAT-UPD-001",
            Box::new(|f| {
                f.known_cves = vec![crate::crd::broker::KnownCve {
                    id: "CVE-2024-8376".into(),
                    severity: "high".into(),
                    fixed_in: "2.0.19".into(),
                    summary: "s".into(),
                }]
            }),
        ),
        (
            "MOAT-UPD-002",
            Box::new(|f| {
                f.upgrade_failed = true;
                f.upgrade_message = "pod plant-a-2 not Ready".into();
            }),
        ),
    ]
}

#[test]
fn every_broker_check_fails_on_its_fixture_and_only_it() {
    let w = world();
    for (id, mutate) in broker_failures(&w) {
        let mut f = good(&w);
        mutate(&mut f);
        let checks = evaluate_broker(&f);
        assert_eq!(result_of(&checks, id), CheckResult::Fail, "{id}: {:?}", checks.iter().find(|c| c.id == id));
        let c = checks.iter().find(|c| c.id == id).unwrap();
        assert!(c.remediation.contains("docs/security-guide.md#"), "{id} remediation: {}", c.remediation);
        assert!(!c.message.is_empty());
    }
}

#[test]
fn unreachable_probe_is_unknown_never_a_pass() {
    let w = world();
    let mut f = good(&w);
    let mut m = f.model.clone();
    m.spec.listeners[0].authentication = crate::crd::broker::ListenerAuthentication::Certificate;
    f.model = Box::leak(Box::new(m));
    f.probes = None;
    let checks = evaluate_broker(&f);
    // exactly the checks the status carries forward between audits need the probe
    let unknown: BTreeSet<&str> =
        checks.iter().filter(|c| c.result == CheckResult::Unknown).map(|c| c.id.as_str()).collect();
    assert_eq!(unknown, PROBED_CHECKS.iter().copied().collect());
    assert!(checks.iter().filter(|c| PROBED_CHECKS.contains(&c.id.as_str())).all(|c| !c.passed));
    f.probes = Some(vec![]);
    assert_eq!(result_of(&evaluate_broker(&f), "MOAT-AUTH-003"), CheckResult::Unknown);
    // one replica unreachable is not a pass for the broker, one failing replica fails it
    f.probes = Some(vec![good_probe("plant-a-0"), LiveProbe { reachable: false, ..good_probe("plant-a-1") }]);
    assert_eq!(result_of(&evaluate_broker(&f), "MOAT-AUTH-003"), CheckResult::Unknown);
    let mut bad = good_probe("plant-a-2");
    bad.anonymous_refused = Observation::Fail("CONNACK accepted".into());
    f.probes = Some(vec![good_probe("plant-a-0"), bad]);
    let checks = evaluate_broker(&f);
    assert_eq!(result_of(&checks, "MOAT-AUTH-003"), CheckResult::Fail);
    assert!(checks.iter().any(|c| c.id == "MOAT-AUTH-003" && c.message.contains("plant-a-2")));
}

fn good_user() -> UserFacts {
    UserFacts {
        password_auth: true,
        generated: true,
        weak_password: false,
        rotate_after: Some(Duration::from_secs(3600)),
        password_age: Some(Duration::from_secs(60)),
        reused: false,
        certificate_auth: false,
        certificate: None,
        has_usable_listener: true,
        now: now(),
    }
}

#[test]
fn user_checks_pass_and_fail() {
    assert!(evaluate_user(&good_user()).iter().all(|c| c.passed));
    let h = |n: i64| now() + jiff::SignedDuration::from_hours(n);
    type UserMutation = Box<dyn Fn(&mut UserFacts)>;
    let cases: Vec<(&str, UserMutation)> = vec![
        ("MOAT-USR-001", Box::new(|f| f.weak_password = true)),
        ("MOAT-USR-002", Box::new(|f| f.password_age = Some(Duration::from_secs(7200)))),
        ("MOAT-USR-003", Box::new(|f| f.reused = true)),
        (
            "MOAT-USR-004",
            Box::new(move |f| {
                f.certificate_auth = true;
                f.certificate = Some((h(-1), h(-2)));
            }),
        ),
        (
            "MOAT-USR-004",
            Box::new(move |f| {
                f.certificate_auth = true;
                f.certificate = Some((h(24), h(-2)));
            }),
        ),
        ("MOAT-USR-004", Box::new(|f| f.certificate_auth = true)),
        ("MOAT-USR-005", Box::new(|f| f.has_usable_listener = false)),
    ];
    for (id, mutate) in cases {
        let mut f = good_user();
        mutate(&mut f);
        let checks = evaluate_user(&f);
        assert_eq!(result_of(&checks, id), CheckResult::Fail, "{id}");
        // nothing about the password or other users' Secrets appears in a user's checks
        assert!(checks.iter().all(|c| !c.message.contains("short") && !c.message.contains("username")), "{checks:?}");
    }
    let mut cert_ok = good_user();
    cert_ok.certificate_auth = true;
    cert_ok.certificate = Some((h(24 * 30), h(24 * 20)));
    assert_eq!(result_of(&evaluate_user(&cert_ok), "MOAT-USR-004"), CheckResult::Pass);
}

#[test]
fn acl_and_firewall_checks_pass_and_fail() {
    let good_acl = AclFacts { warnings: vec![], pending_users: vec![] };
    assert!(evaluate_acl(&good_acl).iter().all(|c| c.passed));
    let hash = AclFacts { warnings: vec![write_all()], pending_users: vec![] };
    assert_eq!(result_of(&evaluate_acl(&hash), "MOAT-ACL-101"), CheckResult::Fail);
    let sys = AclFacts { warnings: vec![broad_sys()], pending_users: vec![] };
    assert_eq!(result_of(&evaluate_acl(&sys), "MOAT-ACL-102"), CheckResult::Fail);
    let pending = AclFacts { warnings: vec![], pending_users: vec!["ghost".into()] };
    assert_eq!(result_of(&evaluate_acl(&pending), "MOAT-ACL-103"), CheckResult::Fail);

    let good_fw = FirewallFacts { public_cidrs: vec![], policy_in_effect: true };
    assert!(evaluate_firewall(&good_fw).iter().all(|c| c.passed));
    let public = FirewallFacts { public_cidrs: vec!["0.0.0.0/0".into()], policy_in_effect: true };
    assert_eq!(result_of(&evaluate_firewall(&public), "MOAT-FW-101"), CheckResult::Fail);
    let drift = FirewallFacts { public_cidrs: vec![], policy_in_effect: false };
    assert_eq!(result_of(&evaluate_firewall(&drift), "MOAT-FW-102"), CheckResult::Fail);
}

#[test]
fn the_fixtures_cover_the_whole_catalogue() {
    let w = world();
    let mut covered: BTreeSet<&str> = broker_failures(&w).iter().map(|(id, _)| *id).collect();
    covered.extend(["MOAT-USR-001", "MOAT-USR-002", "MOAT-USR-003", "MOAT-USR-004", "MOAT-USR-005"]);
    covered.extend(["MOAT-ACL-101", "MOAT-ACL-102", "MOAT-ACL-103", "MOAT-FW-101", "MOAT-FW-102"]);
    covered.insert("MOAT-AWR-001"); // passes by construction: no check lacks remediation (asserted below)
    let all: BTreeSet<&str> = CATALOGUE.iter().map(|d| d.id).collect();
    assert_eq!(covered, all);
}

#[test]
fn every_check_has_remediation_and_ids_are_unique() {
    let mut ids = BTreeSet::new();
    for d in CATALOGUE {
        assert!(ids.insert(d.id), "duplicate id {}", d.id);
        assert!(d.remediation.len() > 20, "{} has no real remediation", d.id);
        assert!(!d.title.is_empty());
    }
}

#[test]
fn every_measure_has_checks_and_a_guide_section() {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/security-guide.md")).unwrap();
    let anchors: BTreeSet<String> = guide
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase().replace(' ', "-"))
        .collect();
    for m in Measure::ALL {
        assert!(anchors.contains(m.as_str()), "the security guide has no section for {}", m.as_str());
        assert!(CATALOGUE.iter().any(|d| d.measure == m), "no check for measure {}", m.as_str());
        assert!(guide_link(m).ends_with(&format!("#{}", m.as_str())));
    }
    for d in CATALOGUE {
        assert!(guide.contains(d.id), "the guide does not mention {}", d.id);
    }
}

/// MOAT-TLS-006 judges what the applied config enforces, not how many `crlfile` lines it has: a
/// WebSockets listener that takes client certificates fails even with a `crlfile` line (Mosquitto
/// loads no CRL there), and so does a certificate listener whose block lost its `crlfile`.
#[test]
fn revocation_check_reads_what_each_listener_enforces() {
    let w = world();
    let mut spec = minimal_spec();
    spec.listeners.push(crate::crd::broker::Listener {
        name: "mtls".into(),
        port: 8884,
        authentication: crate::crd::broker::ListenerAuthentication::Certificate,
        ..spec.listeners[0].clone()
    });
    let model = BrokerModel::from_spec("plant-a", "iot", &spec).unwrap();
    let mut f = good(&w);
    f.model = &model;
    f.config = Some(
        crate::render::config::render(&model, &crate::render::config::ConfigPaths::in_pod(), &Default::default()).text,
    );
    assert_eq!(result_of(&evaluate_broker(&f), "MOAT-TLS-006"), CheckResult::Pass);

    // the certificate listener is turned into a WebSockets listener in the applied config
    let mut ws = good(&w);
    ws.model = &model;
    ws.config = f.config.as_ref().map(|c| {
        let (head, tail) = c.split_once("listener 8884").unwrap();
        format!("{head}listener 8884{}", tail.replacen("protocol mqtt", "protocol websockets", 1))
    });
    let checks = evaluate_broker(&ws);
    assert_eq!(result_of(&checks, "MOAT-TLS-006"), CheckResult::Fail);
    assert!(checks.iter().any(|c| c.id == "MOAT-TLS-006" && c.message.contains("WebSockets")));

    // the crlfile line moves out of the certificate listener's block (same line count)
    let mut moved = good(&w);
    moved.model = &model;
    moved.config = f.config.as_ref().map(|c| {
        let crl = c.lines().find(|l| l.starts_with("crlfile ")).unwrap().to_string();
        let without = c.replacen(&format!("{crl}\n"), "", 1);
        without.replacen("listener 8883\n", &format!("listener 8883\n{crl}\n"), 1)
    });
    assert_eq!(result_of(&evaluate_broker(&moved), "MOAT-TLS-006"), CheckResult::Fail);
}
