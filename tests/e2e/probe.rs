//! `moat probe` (the binary) against real Mosquitto brokers: a hardened bundle passes, a
//! weakened copy of the same bundle fails exactly the weakened checks, a closed port is Unknown.

use crate::harness::*;

fn checks(run: &ProbeRun) -> [String; 4] {
    ["legacy TLS refused", "modern TLS", "chain trusted", "anonymous refused"].map(|c| run.check(c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hardened_bundle_passes_every_check() {
    let r = render(MINIMAL, &[8883]);
    // OpenSSL itself would allow TLS 1.0/1.1: only the rendered tls_version refuses them.
    let openssl = permissive_openssl_conf(r.dir.path());
    let _broker = Broker::start(&r.bundle, &[r.port(8883)], &[("OPENSSL_CONF", &openssl)]);
    let run = moat_probe(r.port(8883), Some(&r.bundle.join("tls/ca.crt")));
    assert_eq!(checks(&run), ["PASS", "PASS", "PASS", "PASS"], "{}", run.stdout);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.field("result").as_deref(), Some("PASS"));
    assert_eq!(
        run.field("certificate serial").map(|s| s.to_ascii_lowercase()),
        Some(serial_of(&std::fs::read_to_string(r.bundle.join("tls/tls.crt")).unwrap()))
    );
}

/// Renders the minimal bundle, applies `(from, to)` replacements to its mosquitto.conf, runs it
/// with an OpenSSL that allows TLS 1.0/1.1, and probes it.
fn probe_weakened(replacements: &[(&str, &str)]) -> ProbeRun {
    let r = render(MINIMAL, &[8883]);
    let openssl = permissive_openssl_conf(r.dir.path());
    let path = r.bundle.join("mosquitto.conf");
    let mut conf = std::fs::read_to_string(&path).unwrap();
    for (from, to) in replacements {
        assert!(conf.contains(from), "{from:?} is not in the rendered config");
        conf = conf.replace(from, to);
    }
    std::fs::write(&path, conf).unwrap();
    let _broker = Broker::start(&r.bundle, &[r.port(8883)], &[("OPENSSL_CONF", &openssl)]);
    moat_probe(r.port(8883), Some(&r.bundle.join("tls/ca.crt")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weakened_copy_fails_exactly_legacy_tls_and_anonymous() {
    // `use_username_as_clientid true` refuses clients without a username by itself (see the
    // next test), so anonymous access needs that switched off too.
    let run = probe_weakened(&[
        ("tls_version tlsv1.2", "tls_version tlsv1.1"),
        ("allow_anonymous false", "allow_anonymous true"),
        ("use_username_as_clientid true", "use_username_as_clientid false"),
    ]);
    assert_eq!(checks(&run), ["FAIL", "PASS", "PASS", "FAIL"], "{}", run.stdout);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.field("legacy TLS refused").unwrap().contains("TLS 1.1: ServerHello agreeing to TLS 1.1"),
        "{}",
        run.stdout
    );
    assert!(run.field("anonymous refused").unwrap().contains("anonymous CONNECT accepted"), "{}", run.stdout);
}

/// Defence in depth: with `allow_anonymous true` alone, moat's `use_username_as_clientid true`
/// still refuses a CONNECT without a username (CONNACK "not authorised"), and the probe rightly
/// reports anonymous access as refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_username_as_clientid_alone_still_refuses_anonymous_clients() {
    let run = probe_weakened(&[("allow_anonymous false", "allow_anonymous true")]);
    assert_eq!(checks(&run), ["PASS", "PASS", "PASS", "PASS"], "{}", run.stdout);
    assert!(run.field("anonymous refused").unwrap().contains("CONNACK rc 5"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_unknown() {
    let port = free_offset(&[0]);
    let run = moat_probe(port, None);
    assert_eq!(checks(&run), ["UNKNOWN", "UNKNOWN", "UNKNOWN", "UNKNOWN"], "{}", run.stdout);
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert_eq!(run.field("reachable").as_deref(), Some("no"));
}
