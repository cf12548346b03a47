//! The probe against real servers: Debian's Mosquitto 2.0.11 and `openssl s_server`, both under a
//! permissive OpenSSL config so that only their own configuration refuses old TLS versions.

use std::time::Duration;

use super::testutil::{Broker, BrokerSpec, CANARY_ATTACKER, CANARY_VICTIM, Pki, SServer, free_port};
use super::*;

const TIMEOUT: Duration = Duration::from_secs(5);

fn target(port: u16, ca_pem: Option<&str>) -> ProbeTarget {
    ProbeTarget {
        host: "127.0.0.1".into(),
        port,
        server_name: "localhost".into(),
        ca_pem: ca_pem.map(str::to_owned),
        timeout: TIMEOUT,
    }
}

fn show(report: &ProbeReport, log: &str) -> String {
    let text = format!("{}\n--- server log ---\n{log}", format_report(report));
    eprintln!("{text}");
    text
}

#[tokio::test]
async fn a_hardened_broker_passes_every_check() {
    let pki = Pki::new();
    let broker = Broker::start(&pki, BrokerSpec::HARDENED);
    let report = probe(&target(broker.port, Some(&pki.ca_pem))).await;
    let ctx = show(&report, &broker.log());

    assert!(report.reachable, "{ctx}");
    assert!(report.legacy_tls_refused.is_pass(), "{ctx}");
    assert_eq!(
        report.legacy_tls_refused.message(),
        "TLS 1.0: alert protocol_version; TLS 1.1: alert protocol_version",
        "{ctx}"
    );
    assert!(report.modern_tls.is_pass(), "{ctx}");
    assert_eq!(report.negotiated_version.as_deref(), Some("TLSv1.3"), "{ctx}");
    assert!(report.chain_trusted.is_pass(), "{ctx}");
    assert!(report.anonymous_refused.is_pass(), "{ctx}");
    assert!(report.anonymous_refused.message().contains("CONNACK rc 5"), "{ctx}");
    assert!(report.plaintext_refused.is_pass(), "{ctx}");
    assert_eq!(report.cert_serial.as_deref(), Some(pki.serial_hex.as_str()), "{ctx}");
    assert_eq!(report.cert_not_after, Some(pki.not_after), "{ctx}");
    assert_eq!(exit_code(&report), 0, "{ctx}");

    // the same broker's plaintext listener answers a plaintext CONNECT: that is what is caught
    let plain = plaintext_refused("127.0.0.1", broker.plain_port, TIMEOUT).await;
    assert!(matches!(&plain, Outcome::Fail(m) if m.contains("without TLS")), "{plain:?}");

    // Without a CA bundle the chain is Unknown, and so is the overall result.
    let report = probe(&target(broker.port, None)).await;
    assert!(matches!(report.chain_trusted, Outcome::Unknown(_)), "{}", show(&report, &broker.log()));
    assert!(report.legacy_tls_refused.is_pass() && report.modern_tls.is_pass() && report.anonymous_refused.is_pass());
    assert_eq!(report.cert_serial.as_deref(), Some(pki.serial_hex.as_str()));
    assert_eq!(exit_code(&report), 2);

    // An IP address as the server name: no SNI is sent, the IP SAN must match.
    let mut by_ip = target(broker.port, Some(&pki.ca_pem));
    by_ip.server_name = "127.0.0.1".into();
    let report = probe(&by_ip).await;
    let ctx = show(&report, &broker.log());
    for (name, outcome) in report.outcomes() {
        assert!(outcome.is_pass(), "{name}: {ctx}");
    }
}

#[tokio::test]
async fn b_weakened_broker_fails_exactly_legacy_and_anonymous() {
    let pki = Pki::new();
    let broker = Broker::start(&pki, BrokerSpec::WEAKENED);
    let report = probe(&target(broker.port, Some(&pki.ca_pem))).await;
    let ctx = show(&report, &broker.log());

    assert!(matches!(report.legacy_tls_refused, Outcome::Fail(_)), "{ctx}");
    // tls_version tlsv1.1 keeps TLS 1.0 out but lets TLS 1.1 in.
    assert!(report.legacy_tls_refused.message().contains("TLS 1.0: alert protocol_version"), "{ctx}");
    assert!(report.legacy_tls_refused.message().contains("TLS 1.1: ServerHello agreeing to TLS 1.1"), "{ctx}");
    assert!(matches!(report.anonymous_refused, Outcome::Fail(_)), "{ctx}");
    assert!(report.anonymous_refused.message().contains("CONNACK rc 0"), "{ctx}");
    assert!(report.modern_tls.is_pass(), "{ctx}");
    assert!(report.chain_trusted.is_pass(), "{ctx}");
    assert_eq!(report.cert_serial.as_deref(), Some(pki.serial_hex.as_str()), "{ctx}");
    assert_eq!(exit_code(&report), 1, "{ctx}");
}

#[tokio::test]
async fn c_wrong_ca_or_wrong_name_fails_chain_trust() {
    let pki = Pki::new();
    let other = Pki::new();
    let broker = Broker::start(&pki, BrokerSpec::HARDENED);

    let report = probe(&target(broker.port, Some(&other.ca_pem))).await;
    let ctx = show(&report, &broker.log());
    assert!(matches!(report.chain_trusted, Outcome::Fail(_)), "{ctx}");
    assert!(report.chain_trusted.message().contains("UnknownIssuer"), "{ctx}");
    // The other checks do not depend on trust.
    assert!(report.legacy_tls_refused.is_pass(), "{ctx}");
    assert!(report.modern_tls.is_pass(), "{ctx}");
    assert!(report.anonymous_refused.is_pass(), "{ctx}");
    assert_eq!(report.cert_serial.as_deref(), Some(pki.serial_hex.as_str()), "{ctx}");
    assert_eq!(exit_code(&report), 1);

    let mut wrong_name = target(broker.port, Some(&pki.ca_pem));
    wrong_name.server_name = "not-the-broker.example".into();
    let report = probe(&wrong_name).await;
    let ctx = show(&report, &broker.log());
    assert!(matches!(report.chain_trusted, Outcome::Fail(_)), "{ctx}");
    assert!(report.chain_trusted.message().contains("not valid for name"), "{ctx}");
}

#[tokio::test]
async fn d_closed_port_is_unknown_never_pass() {
    let port = free_port();
    let pki = Pki::new();
    let report = probe(&target(port, Some(&pki.ca_pem))).await;
    let ctx = format_report(&report);
    assert!(!report.reachable, "{ctx}");
    // An unusable server name must not make a dead endpoint look reachable.
    let mut bad_name = target(port, None);
    bad_name.server_name = "not a name".into();
    let bad = probe(&bad_name).await;
    assert!(!bad.reachable, "{}", format_report(&bad));
    assert!(bad.outcomes().iter().all(|(_, o)| matches!(o, Outcome::Unknown(_))), "{}", format_report(&bad));
    for (name, outcome) in report.outcomes() {
        assert!(matches!(outcome, Outcome::Unknown(_)), "{name}: {ctx}");
    }
    assert_eq!(report.negotiated_version, None);
    assert_eq!(report.cert_serial, None);
    assert_eq!(exit_code(&report), 2);
}

#[tokio::test]
async fn e_mtls_listener_refuses_anonymous_at_the_tls_layer() {
    let pki = Pki::new();
    let broker = Broker::start(&pki, BrokerSpec::MTLS);
    let report = probe(&target(broker.port, Some(&pki.ca_pem))).await;
    let ctx = show(&report, &broker.log());
    assert!(report.anonymous_refused.is_pass(), "{ctx}");
    assert!(report.anonymous_refused.message().contains("client certificate required"), "{ctx}");
    assert!(report.modern_tls.is_pass(), "{ctx}");
    assert!(report.chain_trusted.is_pass(), "{ctx}");
    assert!(report.legacy_tls_refused.is_pass(), "{ctx}");
    assert_eq!(exit_code(&report), 0, "{ctx}");
}

/// Debian's own OpenSSL defaults turn a TLS 1.1 handshake on a `tls_version tlsv1.1` listener into
/// alert internal_error: that is not an explicit version refusal, so it must not be credited.
#[tokio::test]
async fn ambiguous_alert_from_system_openssl_is_not_a_pass() {
    let pki = Pki::new();
    let spec = BrokerSpec { permissive_openssl: false, ..BrokerSpec::WEAKENED };
    let broker = Broker::start(&pki, spec);
    let report = probe(&target(broker.port, Some(&pki.ca_pem))).await;
    let ctx = show(&report, &broker.log());
    assert!(!report.legacy_tls_refused.is_pass(), "{ctx}");
    assert!(report.legacy_tls_refused.message().contains("TLS 1.0: alert protocol_version"), "{ctx}");
    assert!(matches!(report.anonymous_refused, Outcome::Fail(_)), "{ctx}");
    assert_ne!(exit_code(&report), 0);
}

/// The hand-built hellos are good enough for a real TLS 1.0 / TLS 1.1 server to accept: a refusal
/// seen from a hardened broker is therefore about the version, not a malformed hello.
#[tokio::test]
async fn legacy_hellos_are_accepted_by_real_legacy_servers() {
    let pki = Pki::new();
    for (flag, version) in [("-tls1", legacy::TLS1_0), ("-tls1_1", legacy::TLS1_1)] {
        let server = SServer::start(&pki, flag, false);
        let attempt = legacy::attempt("127.0.0.1", server.port, "localhost", version, TIMEOUT).await;
        assert!(
            matches!(attempt, Attempt::Judged(LegacyVerdict::Accepted(_))),
            "{flag}: {attempt:?}\n{}",
            server.log()
        );
    }
    let server = SServer::start(&pki, "-tls1_2", false);
    for version in [legacy::TLS1_0, legacy::TLS1_1] {
        let attempt = legacy::attempt("127.0.0.1", server.port, "localhost", version, TIMEOUT).await;
        assert_eq!(
            attempt,
            Attempt::Judged(LegacyVerdict::Refused("alert protocol_version".into())),
            "{}",
            server.log()
        );
    }
}

/// TLS 1.2 with a mandatory client certificate: the handshake itself fails, after the server
/// asked for a certificate and signed the handshake.
#[tokio::test]
async fn tls12_client_certificate_demand_is_recognised() {
    let pki = Pki::new();
    let server = SServer::start(&pki, "-tls1_2", true);
    let (session, seen) = modern::handshake("127.0.0.1", server.port, "localhost", Mode::Capture, TIMEOUT).await;
    let err = session.expect_err("handshake without a client certificate must fail");
    assert!(seen.client_cert_requested, "{err}\n{}", server.log());
    assert_eq!(seen.version, Some(rustls::ProtocolVersion::TLSv1_2));
    let anonymous = anonymous_outcome(Some(&err), &seen, None);
    assert!(anonymous.is_pass(), "{anonymous:?}");
    let (modern_tls, version) = modern_outcome(Some(&session_summary(&err, &seen)), &seen);
    assert!(modern_tls.is_pass(), "{modern_tls:?}");
    assert_eq!(version.as_deref(), Some("TLSv1.2"));
}

/// A TLS-1.0-only server: no modern handshake is possible.
#[tokio::test]
async fn legacy_only_server_fails_modern_tls() {
    let pki = Pki::new();
    let server = SServer::start(&pki, "-tls1", false);
    let (session, seen) = modern::handshake("127.0.0.1", server.port, "localhost", Mode::Capture, TIMEOUT).await;
    let err = session.expect_err("rustls cannot talk to a TLS 1.0 server");
    let (modern_tls, version) = modern_outcome(Some(&session_summary(&err, &seen)), &seen);
    assert!(matches!(modern_tls, Outcome::Fail(_)), "{modern_tls:?}");
    assert_eq!(version, None);
}

/// `run` (what `moat probe` calls) reads the CA file and maps the report to the exit code.
#[tokio::test]
async fn run_returns_exit_codes() {
    let pki = Pki::new();
    let broker = Broker::start(&pki, BrokerSpec::HARDENED);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let args = |ca: Option<std::path::PathBuf>| ProbeArgs {
        host: "127.0.0.1".into(),
        port: broker.port,
        server_name: Some("localhost".into()),
        ca,
        timeout: TIMEOUT,
        wait: None,
    };
    assert_eq!(run(args(Some(ca))).await, 0, "{}", broker.log());
    assert_eq!(run(args(None)).await, 2, "no CA: chain trust unknown");
    assert_eq!(run(args(Some(dir.path().join("missing.pem")))).await, 2, "unreadable CA file");
    let weak = Broker::start(&pki, BrokerSpec::WEAKENED);
    assert_eq!(run(ProbeArgs { port: weak.port, ..args(None) }).await, 1, "fail outranks unknown");
}

/// The foreign-CA attack tells a broker that refuses an untrusted CA's certificate (Pass) from
/// one that trusts it (Fail): the same broker trusts `trusted` and not `foreign`.
#[tokio::test]
async fn a_certificate_from_a_ca_the_broker_does_not_trust_is_refused() {
    let now = jiff::Timestamp::now();
    let trusted = crate::pki::new_ca("trusted client CA", Duration::from_secs(3600), now).unwrap();
    let foreign = crate::pki::new_ca("foreign CA", Duration::from_secs(3600), now).unwrap();
    let mut pki = Pki::new();
    pki.ca_pem = format!("{}{}", pki.ca_pem, trusted.cert_pem);
    let broker = Broker::start(&pki, BrokerSpec::MTLS);
    let attempt = |ca| foreign_certificate_refused("127.0.0.1", broker.port, "localhost", ca, "alice", TIMEOUT);
    let refused = attempt(&foreign).await;
    assert!(matches!(&refused, Outcome::Pass(m) if m.contains("refused")), "{refused:?}\n{}", broker.log());
    let accepted = attempt(&trusted).await;
    assert!(matches!(&accepted, Outcome::Fail(m) if m.contains("accepted")), "{accepted:?}\n{}", broker.log());
    let closed = foreign_certificate_refused("127.0.0.1", free_port(), "localhost", &foreign, "alice", TIMEOUT).await;
    assert!(matches!(closed, Outcome::Unknown(_)), "{closed:?}");
}

/// The revoked-canary attack: a certificate of a trusted CA listed in the broker's CRL is refused
/// where the CRL is enforced (Pass) and accepted where it is not (Fail), while an unrevoked
/// certificate of the same CA gets in.
#[tokio::test]
async fn a_revoked_certificate_is_refused_only_where_the_crl_is_enforced() {
    let now = jiff::Timestamp::now();
    let hour = Duration::from_secs(3600);
    let ca = crate::pki::new_ca("client CA", hour, now).unwrap();
    let canary = crate::pki::issue_client(&ca, "moat-revoked-canary", hour, now).unwrap();
    let good = crate::pki::issue_client(&ca, "alice", hour, now).unwrap();
    let revoked = [crate::pki::RevokedCert::from_cert(&canary.cert_pem, now).unwrap()];
    let crl = crate::pki::sign_crl(&ca, &revoked, 1, now, now + jiff::SignedDuration::from_hours(1)).unwrap();
    let mut pki = Pki::new();
    pki.ca_pem = format!("{}{}", pki.ca_pem, ca.cert_pem);
    let unenforced = Broker::start(&pki, BrokerSpec::MTLS);
    pki.crl_pem = Some(crl);
    let enforced = Broker::start(&pki, BrokerSpec::MTLS);
    let attempt = |port, cert| certificate_refused("127.0.0.1", port, "localhost", cert, "the canary", TIMEOUT);
    let r = attempt(enforced.port, &canary).await;
    assert!(matches!(&r, Outcome::Pass(_)), "{r:?}\n{}", enforced.log());
    let r = attempt(enforced.port, &good).await;
    assert!(matches!(&r, Outcome::Fail(_)), "an unrevoked certificate must get in: {r:?}\n{}", enforced.log());
    let r = attempt(unenforced.port, &canary).await;
    assert!(matches!(&r, Outcome::Fail(m) if m.contains("accepted the canary")), "{r:?}\n{}", unenforced.log());
}

/// The oversize attack: a broker with `max_packet_size 4096` drops a client whose CONNECT
/// declares 4097 bytes at once; one without the limit keeps waiting for the rest (Fail).
#[tokio::test]
async fn a_packet_over_max_packet_size_is_dropped_only_where_the_limit_is_set() {
    let pki = Pki::new();
    let limited = Broker::start(&pki, BrokerSpec::HARDENED);
    let unlimited = Broker::start(&pki, BrokerSpec { max_packet_size: None, ..BrokerSpec::HARDENED });
    let short = Duration::from_secs(1);
    let r = oversize_refused("127.0.0.1", limited.port, "localhost", 4096, TIMEOUT).await;
    assert!(matches!(&r, Outcome::Pass(m) if m.contains("4097")), "{r:?}\n{}", limited.log());
    assert!(limited.log().contains("oversize packet"), "{}", limited.log());
    let r = oversize_refused("127.0.0.1", unlimited.port, "localhost", 4096, short).await;
    assert!(matches!(&r, Outcome::Fail(m) if m.contains("not enforced")), "{r:?}\n{}", unlimited.log());
}

fn login_target<'a>(broker: &Broker, pki: &'a Pki, timeout: Duration) -> login::LoginTarget<'a> {
    login::LoginTarget { host: "127.0.0.1", port: broker.port, server_name: "localhost", ca_pem: &pki.ca_pem, timeout }
}

/// No rule for all users grants anything.
fn nothing(_: &str, _: bool) -> bool {
    false
}

fn creds((username, password): (&'static str, &'static str)) -> login::Credentials<'static> {
    login::Credentials { username, password }
}

/// The canary in no ACL: refused its PUBLISH and sent nothing on `#` / `$SYS/#` by a default-deny
/// broker; a rule for all users that grants reading `$SYS` (retained `$SYS` topics arrive at once)
/// or writing everything makes it Fail. A wrong password is Unknown, never a pass.
#[tokio::test]
async fn a_login_in_no_acl_can_neither_publish_nor_read() {
    let pki = Pki::new();
    let hardened = Broker::start(&pki, BrokerSpec::HARDENED);
    let t = login_target(&hardened, &pki, TIMEOUT);
    let r = login::no_grants_refused(&t, &[creds(CANARY_ATTACKER)], &nothing).await;
    assert_eq!(
        r,
        Outcome::Pass(format!(
            "port {}: a login in no ACL was refused its PUBLISH (PUBACK not authorized) and received only what the rules for all users grant on '#' and '$SYS/#'",
            hardened.port
        )),
        "{}",
        hardened.log()
    );
    // a stale login first: the next one is tried (a pod still on the previous canary logins)
    let stale = login::Credentials { username: CANARY_ATTACKER.0, password: "an-older-canary-password-000000" };
    let r = login::no_grants_refused(&t, &[stale, creds(CANARY_ATTACKER)], &nothing).await;
    assert!(r.is_pass(), "{r:?}");
    let r = login::no_grants_refused(&t, &[stale], &nothing).await;
    assert!(matches!(&r, Outcome::Unknown(m) if m.contains("refused the canary login")), "{r:?}");

    let reads_sys = Broker::start(&pki, BrokerSpec { extra_acl: "pattern read $SYS/#\n", ..BrokerSpec::HARDENED });
    let sys_target = login_target(&reads_sys, &pki, TIMEOUT);
    let r = login::no_grants_refused(&sys_target, &[creds(CANARY_ATTACKER)], &nothing).await;
    assert!(matches!(&r, Outcome::Fail(m) if m.contains("received messages")), "{r:?}\n{}", reads_sys.log());
    // the same broker passes when moat's own ACL grants every user reading $SYS (then it is policy,
    // reported by MOAT-ACL-003, not a broker that ignores its ACL)
    let sys_granted = |topic: &str, write: bool| !write && topic.starts_with("$SYS/");
    let r = login::no_grants_refused(&sys_target, &[creds(CANARY_ATTACKER)], &sys_granted).await;
    assert!(matches!(&r, Outcome::Pass(m) if m.contains("refused its PUBLISH")), "{r:?}\n{}", reads_sys.log());
    // a PUBLISH the rules grant is not sent (it would reach real subscribers)
    let all = |_: &str, _: bool| true;
    let published = || reads_sys.log().matches("moat/attestation").count();
    let before = published();
    let r = login::no_grants_refused(&sys_target, &[creds(CANARY_ATTACKER)], &all).await;
    assert!(matches!(&r, Outcome::Pass(m) if m.contains("so none was sent")), "{r:?}");
    assert_eq!(published(), before, "{}", reads_sys.log());
    let writes_all = Broker::start(&pki, BrokerSpec { extra_acl: "pattern write #\n", ..BrokerSpec::HARDENED });
    let r =
        login::no_grants_refused(&login_target(&writes_all, &pki, TIMEOUT), &[creds(CANARY_ATTACKER)], &nothing).await;
    assert!(matches!(&r, Outcome::Fail(m) if m.contains("(PUBACK ")), "{r:?}\n{}", writes_all.log());
}

/// Client-id takeover: with `use_username_as_clientid true` the victim's session survives a
/// second user's CONNECT with its client id; without it the broker ends the session (Fail).
#[tokio::test]
async fn a_session_is_taken_over_only_where_client_ids_are_not_bound_to_usernames() {
    let pki = Pki::new();
    let (attacker, victim) = ([creds(CANARY_ATTACKER)], [creds(CANARY_VICTIM)]);
    let bound = Broker::start(&pki, BrokerSpec::HARDENED);
    let r = login::takeover_refused(&login_target(&bound, &pki, TIMEOUT), &attacker, &victim).await;
    assert!(matches!(&r, Outcome::Pass(m) if m.contains("left that session up")), "{r:?}\n{}", bound.log());
    let unbound = Broker::start(&pki, BrokerSpec { use_username_as_clientid: false, ..BrokerSpec::HARDENED });
    let r = login::takeover_refused(&login_target(&unbound, &pki, TIMEOUT), &attacker, &victim).await;
    assert!(matches!(&r, Outcome::Fail(m) if m.contains("can be taken over")), "{r:?}\n{}", unbound.log());
}

/// The oversize attack after login: a PUBLISH declaring maxPacketSize + 1 bytes is dropped where
/// the limit is set and waited for where it is not.
#[tokio::test]
async fn an_oversize_publish_after_login_is_dropped_only_where_the_limit_is_set() {
    let pki = Pki::new();
    let limited = Broker::start(&pki, BrokerSpec::HARDENED);
    let r =
        login::oversize_publish_refused(&login_target(&limited, &pki, TIMEOUT), &[creds(CANARY_ATTACKER)], 4096).await;
    assert!(matches!(&r, Outcome::Pass(m) if m.contains("4097")), "{r:?}\n{}", limited.log());
    let unlimited = Broker::start(&pki, BrokerSpec { max_packet_size: None, ..BrokerSpec::HARDENED });
    let short = Duration::from_secs(1);
    let r =
        login::oversize_publish_refused(&login_target(&unlimited, &pki, short), &[creds(CANARY_ATTACKER)], 4096).await;
    assert!(matches!(&r, Outcome::Fail(m) if m.contains("not enforced")), "{r:?}\n{}", unlimited.log());
}
