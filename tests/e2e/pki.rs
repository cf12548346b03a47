//! PKI against a real Mosquitto behind `moat agent`: mTLS identities, foreign and revoked client
//! certificates, server certificate rotation, CA rollover with trust overlap, and a mismatched
//! server cert/key pair. Every TLS change goes through a kubelet-style Secret volume, the agent and
//! SIGHUP — the broker is never restarted.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use moat::pki::{self, CaSet, CaTransition, Issued, RevokedCert};

use crate::harness::*;

/// The production example broker with its users and the pattern ACL (not harness::PRODUCTION:
/// no per-user ACL, no firewall).
const PKI_PRODUCTION: &[&str] = &[
    "examples/broker-production.yaml",
    "examples/user-certificate.yaml",
    "examples/user-password.yaml",
    "examples/user-byo-password.yaml",
    "examples/acl-pattern.yaml",
];
/// The brought password of `dashboard` (examples/user-byo-password.yaml).
const DASHBOARD: (&str, &str) = ("dashboard", "c0rrect-Horse-battery-staple-Plant-B");
const ROLLOVER: &[&str] = &["tests/e2e/fixtures/broker-rollover.yaml"];
const DAY: Duration = Duration::from_secs(86_400);
const WAIT: Duration = Duration::from_secs(5);
/// The CRL lifetime moat uses (`plan::broker::CRL_VALIDITY`).
const CRL_VALIDITY: Duration = moat::plan::broker::CRL_VALIDITY;

fn production_pod() -> Pod {
    Pod::start(render(PKI_PRODUCTION, &[8883, 8884, 8443]), "plant-b", &[8883, 8884, 8443], &[])
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    t + SignedDuration::try_from(d).unwrap()
}

/// Connection settings for the mTLS listener with a client certificate and the given trust anchors.
fn mtls(pod: &Pod, cert: &Issued, ca: String) -> Conn {
    Conn { client_cert: Some((cert.cert_pem.clone(), cert.key_pem.clone())), ca: Some(ca), ..pod.tls(8884) }
}

/// A rendered client certificate.
fn rendered_cert(pod: &Pod, user: &str) -> Issued {
    Issued { cert_pem: pod.r.client_file(user, "tls.crt"), key_pem: pod.r.client_file(user, "tls.key") }
}

/// A live session publishes to its own `devices/<user>/…` topic and receives it back.
async fn round_trip(s: &mut Session, user: &str, payload: &[u8]) {
    let topic = format!("devices/{user}/rt");
    let reason = s.publish(&topic, payload).await;
    assert!(accepted(&reason), "{user}: publish to {topic} refused: {reason}");
    assert!(s.expect_message(&topic, payload, WAIT).await, "{user}: did not receive its own message on {topic}");
}

/// The CRL file for `set` with `revoked` (pruned), numbered after `previous`.
fn crls(set: &CaSet, revoked: &[RevokedCert], previous: &str, now: Timestamp) -> String {
    let revoked = pki::prune_revoked(revoked, now);
    set.crls(&revoked, pki::next_crl_number(Some(previous)), now, plus(now, CRL_VALIDITY)).unwrap()
}

fn assert_transport_refusal(result: Result<Session, Refusal>, what: &str) -> String {
    match result {
        Err(Refusal::Transport(why)) => why,
        Err(other) => panic!("{what}: expected a TLS refusal, got {other:?}"),
        Ok(_) => panic!("{what}: the broker accepted the connection"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_users_connect_and_foreign_or_revoked_certificates_are_refused() {
    let mut pod = production_pod();
    let pid = pod.broker.pid();
    let ca = pod.r.ca_set("plant-b");
    let now = Timestamp::now();

    // The certificate user connects with its rendered certificate: CN = username, no password.
    let gw1 = rendered_cert(&pod, "gateway-1");
    let mut gw1_session = connect_ok(&mtls(&pod, &gw1, pod.r.ca()), "gateway-1 over mTLS").await;
    assert!(
        pod.broker.wait_log(0, "u'gateway-1'", WAIT),
        "the broker log does not show the certificate's username:\n{}",
        pod.broker.log()
    );
    gw1_session.subscribe_granted("devices/gateway-1/#").await;
    round_trip(&mut gw1_session, "gateway-1", b"hello").await;

    // A certificate for the same username from another CA (even one with the same name) is refused.
    let foreign_ca = pki::new_ca("moat CA default/plant-b", DAY, now).unwrap();
    let foreign = pki::issue_client(&foreign_ca, "gateway-1", DAY, now).unwrap();
    let why = assert_transport_refusal(connect(&mtls(&pod, &foreign, pod.r.ca())).await, "certificate from another CA");
    assert!(why.contains("AlertReceived(UnknownCA)"), "{why}");

    // Two more certificates from the broker's CA: both connect before the revocation.
    let gw2 = pki::issue_client(&ca.active, "gateway-2", DAY, now).unwrap();
    let gw3 = pki::issue_client(&ca.active, "gateway-3", DAY, now).unwrap();
    let mut gw2_live = connect_ok(&mtls(&pod, &gw2, pod.r.ca()), "gateway-2 before revocation").await;
    gw2_live.subscribe_granted("devices/gateway-2/#").await;
    drop(connect_ok(&mtls(&pod, &gw3, pod.r.ca()), "gateway-3 before revocation").await);

    // Revoke gateway-2: its serial goes into the ledger, the CRL is re-signed and delivered.
    let tls = pod.r.secret_text("plant-b-tls");
    // (a freshly rendered broker has revoked nothing)
    let ledger = vec![RevokedCert::from_cert(&gw2.cert_pem, now).unwrap()];
    let crl = crls(&ca, &ledger, &tls["crl.pem"], now);
    assert_eq!(pki::parse_crl(&crl).unwrap().revoked_serials, vec![serial_of(&gw2.cert_pem)]);
    pod.volumes.update_tls(&[("crl.pem", &crl)]);
    pod.wait_reload();

    let why = assert_transport_refusal(connect(&mtls(&pod, &gw2, pod.r.ca())).await, "revoked gateway-2");
    assert!(why.contains("AlertReceived(CertificateRevoked)"), "{why}");
    drop(connect_ok(&mtls(&pod, &gw3, pod.r.ca()), "gateway-3 after gateway-2 was revoked").await);
    // Mosquitto 2.0 checks the CRL only during the handshake: the reload does not re-verify live
    // TLS sessions, so the session opened before the revocation still works at this point.
    round_trip(&mut gw2_live, "gateway-2", b"revoked but still connected").await;
    // ($SYS/broker/uptime is readable by all users, retained, and republished every sys_interval.)
    gw2_live.subscribe_granted("$SYS/broker/uptime").await;
    assert!(gw2_live.next_message(WAIT).await.is_some(), "no retained $SYS/broker/uptime before the deny block");

    // moat therefore also keeps the revoked identity in the ACL with every topic denied until its
    // certificate expires (`plan::broker::deny_all_rules`); delivered like any ACL change.
    let parsed = moat::render::acl::parse(&std::fs::read_to_string(pod.run.join("acl")).unwrap()).unwrap();
    let mut users = parsed.users.clone();
    users.insert("gateway-2".into(), moat::plan::broker::deny_all_rules());
    let acl = moat::render::acl::render(&users, &parsed.patterns).unwrap();
    pod.volumes.write_acl(&acl);
    pod.wait_reload();

    // The live session stays connected but can neither publish nor read: not its live
    // subscriptions, not the retained message of a new one (acl_file grants every SUBSCRIBE and
    // filters delivery), for longer than sys_interval (10 s), when an uptime update is due.
    assert!(!gw2_live.is_closed(), "the revoked session was dropped by the reload");
    let reason = gw2_live.publish("devices/gateway-2/rt", b"after the deny block").await;
    assert_eq!(reason, puback_not_authorized(), "the revoked session could still publish");
    gw2_live.subscribe_granted("$SYS/#").await;
    let seen = gw2_live.drain(Duration::from_secs(12)).await;
    assert!(seen.is_empty(), "the revoked session still reads: {:?}", seen.iter().map(|m| &m.0).collect::<Vec<_>>());
    // Everybody else is unaffected.
    gw1_session.subscribe_granted("devices/gateway-1/#").await;
    round_trip(&mut gw1_session, "gateway-1", b"still here").await;
    assert_eq!(pod.broker.pid(), pid);
    assert!(pod.broker.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_rotation_via_the_agent_keeps_connections_and_the_process() {
    let mut pod = production_pod();
    let pid = pod.broker.pid();
    let ca = pod.r.ca_set("plant-b");
    let old = pod.r.secret_text("plant-b-tls")["tls.crt"].clone();
    assert_eq!(served_serial(pod.r.port(8883)), serial_of(&old));
    assert_eq!(served_serial(pod.r.port(8884)), serial_of(&old));

    // Live sessions on both listeners.
    let sensor = ("sensor-17".to_string(), pod.r.client_file("sensor-17", "password"));
    let mut password_session = connect_ok(&Conn { credentials: Some(sensor), ..pod.tls(8883) }, "sensor-17").await;
    password_session.subscribe_granted("devices/sensor-17/#").await;
    let gw1 = rendered_cert(&pod, "gateway-1");
    let mut cert_session = connect_ok(&mtls(&pod, &gw1, pod.r.ca()), "gateway-1").await;
    cert_session.subscribe_granted("devices/gateway-1/#").await;

    // A new server certificate from the same CA for the same names, delivered through the agent.
    let new = pki::issue_server(&ca.active, &pod.r.server_names("plant-b"), 90 * DAY, Timestamp::now()).unwrap();
    assert_ne!(serial_of(&new.cert_pem), serial_of(&old));
    pod.volumes.update_tls(&[("tls.crt", &new.cert_pem), ("tls.key", &new.key_pem)]);
    pod.wait_reload();

    // Existing connections were not dropped: they still publish and receive.
    round_trip(&mut password_session, "sensor-17", b"after rotation").await;
    round_trip(&mut cert_session, "gateway-1", b"after rotation").await;
    assert!(!password_session.is_closed() && !cert_session.is_closed(), "a live session was dropped by the reload");

    // New handshakes see the new certificate on both listeners, and it verifies.
    assert_eq!(served_serial(pod.r.port(8883)), serial_of(&new.cert_pem), "password listener");
    assert_eq!(served_serial(pod.r.port(8884)), serial_of(&new.cert_pem), "mTLS listener");
    let dashboard = (DASHBOARD.0.to_string(), DASHBOARD.1.to_string());
    drop(connect_ok(&Conn { credentials: Some(dashboard), ..pod.tls(8883) }, "dashboard after rotation").await);
    let gw2 = pki::issue_client(&ca.active, "gateway-2", DAY, Timestamp::now()).unwrap();
    drop(connect_ok(&mtls(&pod, &gw2, pod.r.ca()), "gateway-2 after rotation").await);
    assert_eq!(pod.broker.pid(), pid, "the broker was restarted");
    assert!(pod.broker.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_a_mismatched_server_pair_and_the_previous_pair_keeps_serving() {
    let mut pod = production_pod();
    let ca = pod.r.ca_set("plant-b");
    let old = pod.r.secret_text("plant-b-tls")["tls.crt"].clone();
    let new = pki::issue_server(&ca.active, &pod.r.server_names("plant-b"), 90 * DAY, Timestamp::now()).unwrap();

    // Old certificate with the new key: the agent refuses the update and never signals.
    pod.volumes.update_tls(&[("tls.key", &new.key_pem)]);
    pod.wait_refused("tls.crt and tls.key do not belong together");
    assert_eq!(pod.sighups(), 0, "the agent reloaded a mismatched pair:\n{}", pod.agent.log());
    assert_ne!(std::fs::read_to_string(pod.run.join("tls/tls.key")).unwrap(), new.key_pem, "the new key was installed");

    // The previous pair keeps serving: new handshakes on both listeners still succeed.
    assert_eq!(served_serial(pod.r.port(8883)), serial_of(&old));
    let dashboard = (DASHBOARD.0.to_string(), DASHBOARD.1.to_string());
    drop(connect_ok(&Conn { credentials: Some(dashboard), ..pod.tls(8883) }, "dashboard with the old pair").await);
    drop(connect_ok(&mtls(&pod, &rendered_cert(&pod, "gateway-1"), pod.r.ca()), "gateway-1 with the old pair").await);

    // Once the matching certificate follows, the pair is installed and served.
    pod.volumes.update_tls(&[("tls.crt", &new.cert_pem), ("tls.key", &new.key_pem)]);
    pod.wait_reload();
    assert_eq!(served_serial(pod.r.port(8883)), serial_of(&new.cert_pem));
}

/// Why the agent checks the pair: the same mismatched pair given to Mosquitto directly (no agent)
/// breaks every new handshake on the mTLS listener after the reload (its TLS context is rebuilt
/// from the files; the password listener happens to keep its previous pair because OpenSSL
/// refuses the key, but nothing guarantees that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_agent_a_mismatched_pair_breaks_new_mtls_handshakes() {
    let Pod { r, run, broker, agent, .. } = production_pod();
    drop(agent);
    let ca = r.ca_set("plant-b");
    let new = pki::issue_server(&ca.active, &r.server_names("plant-b"), 90 * DAY, Timestamp::now()).unwrap();
    let gw1 =
        Issued { cert_pem: r.client_file("gateway-1", "tls.crt"), key_pem: r.client_file("gateway-1", "tls.key") };
    let conn = Conn {
        port: r.port(8884),
        ca: Some(r.ca()),
        client_cert: Some((gw1.cert_pem, gw1.key_pem)),
        ..Default::default()
    };
    drop(connect_ok(&conn, "gateway-1 before").await);
    std::fs::write(run.join("tls/tls.key"), &new.key_pem).unwrap();
    broker.reload();
    assert!(broker.wait_log(0, "key values mismatch", WAIT), "{}", broker.log());
    let after = connect(&conn).await;
    assert!(after.is_err(), "the mTLS listener still completed a handshake with a mismatched pair");
}

/// The rendered plant-r with a 10-minute CA in place of the rendered one: admission and moat's
/// validation refuse lifetimes that short (they would churn in a cluster), but the PKI itself
/// takes them, and only a CA that enters its renew window within the 5-minute back-dating of
/// what moat signs lets a rollover run against a real broker on the real clock. The CA, the
/// server certificate, the CRL and gateway-old's certificate are re-issued from it.
fn short_lived(mut r: Rendered) -> Rendered {
    let now = Timestamp::now();
    let (set, _) = pki::plan_ca(None, R_CA_VALIDITY, R_CA_RENEW, R_DELAY, 0, "moat CA default/plant-r", now).unwrap();
    let server = pki::issue_server(&set.active, &r.server_names("plant-r"), R_LEAF_VALIDITY, now).unwrap();
    let crl = set.crls(&[], 1, now, plus(now, CRL_VALIDITY)).unwrap();
    let gw = pki::issue_client(&set.active, "gateway-old", R_LEAF_VALIDITY, now).unwrap();
    let ca_data = set.to_secret_data();
    let ca_pairs: Vec<(&str, &str)> = ca_data.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    r.set_secret("plant-r-ca", &ca_pairs);
    let bundle = set.trust_bundle();
    r.set_secret(
        "plant-r-tls",
        &[("tls.crt", &server.cert_pem), ("tls.key", &server.key_pem), ("ca.crt", &bundle), ("crl.pem", &crl)],
    );
    for (file, text) in [
        ("tls/ca.crt", &bundle),
        ("tls/tls.crt", &server.cert_pem),
        ("tls/tls.key", &server.key_pem),
        ("tls/crl.pem", &crl),
    ] {
        std::fs::write(r.bundle.join(file), text).unwrap();
    }
    let client = r.bundle.join("clients/gateway-old");
    std::fs::write(client.join("tls.crt"), &gw.cert_pem).unwrap();
    std::fs::write(client.join("tls.key"), &gw.key_pem).unwrap();
    std::fs::write(client.join("ca.crt"), &bundle).unwrap();
    r
}

/// Lifetimes of the rollover test (shorter than admission allows: see [`short_lived`]).
const R_CA_VALIDITY: Duration = Duration::from_secs(10 * 60);
const R_CA_RENEW: Duration = Duration::from_secs(9 * 60);
const R_DELAY: Duration = Duration::from_secs(60);
const R_LEAF_VALIDITY: Duration = Duration::from_secs(10 * 60);
const R_LEAF_RENEW: Duration = Duration::from_secs(5 * 60);

fn plan_ca(set: &CaSet, live_on_retiring: usize, now: Timestamp) -> (CaSet, Option<CaTransition>) {
    pki::plan_ca(
        Some(set.clone()),
        R_CA_VALIDITY,
        R_CA_RENEW,
        R_DELAY,
        live_on_retiring,
        "moat CA default/plant-r",
        now,
    )
    .unwrap()
}

/// CA rollover step by step with an injected clock (`plan_ca` at `since + 1m`, `+2m`, `+3m`; the
/// fixture's CA is short-lived so these instants stay inside the 5-minute back-dating of what moat
/// signs, and the real broker and clients accept everything). The broker is never restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_rollover_with_trust_overlap_needs_no_restart() {
    let mut pod = Pod::start(short_lived(render(ROLLOVER, &[8883, 8884])), "plant-r", &[8883, 8884], &[]);
    let pid = pod.broker.pid();
    let stable = pod.r.ca_set("plant-r");
    let ca_a = stable.active.clone();
    let t0 = stable.since;
    let names = pod.r.server_names("plant-r");
    let tls0 = pod.r.secret_text("plant-r-tls");
    let ledger: Vec<RevokedCert> = vec![];
    let old_ca_file = pod.r.ca();
    assert_eq!(old_ca_file.matches("BEGIN CERTIFICATE").count(), 1);
    let sensor = ("sensor-1".to_string(), pod.r.client_file("sensor-1", "password"));
    let port = pod.r.port(8883);
    let password =
        |ca: &str| Conn { port, credentials: Some(sensor.clone()), ca: Some(ca.to_string()), ..Default::default() };
    let gw_old = rendered_cert(&pod, "gateway-old");
    assert!(pki::signed_by(&gw_old.cert_pem, &ca_a.cert_pem));

    // Before the renew window the clock changes nothing.
    assert_eq!(plan_ca(&stable, 0, plus(t0, Duration::from_secs(30))).1, None);

    // 1. Introduce: the next CA joins the bundle (one CRL per CA) but signs nothing yet.
    let t1 = plus(t0, Duration::from_secs(60));
    let (introducing, step) = plan_ca(&stable, 0, t1);
    assert_eq!((step, introducing.phase()), (Some(CaTransition::Introduced), "Introducing"));
    assert_eq!(introducing.active, ca_a, "the old CA still signs");
    let ca_b = introducing.pending.clone().unwrap();
    let bundle = introducing.trust_bundle();
    let crl1 = crls(&introducing, &ledger, &tls0["crl.pem"], t1);
    assert_eq!(pki::parse_crls(&crl1).unwrap().len(), 2, "one CRL per trusted CA");
    pod.volumes.update_tls(&[("ca.crt", &bundle), ("crl.pem", &crl1)]);
    pod.wait_reload();
    // Clients holding the old CA file and clients holding the new bundle both connect.
    drop(connect_ok(&password(&old_ca_file), "password client with the old CA file").await);
    drop(connect_ok(&mtls(&pod, &gw_old, old_ca_file.clone()), "old-CA certificate with the old CA file").await);
    drop(connect_ok(&password(&bundle), "password client with the new bundle").await);
    drop(connect_ok(&mtls(&pod, &gw_old, bundle.clone()), "old-CA certificate with the new bundle").await);
    // The broker already trusts the new CA (the reload rebuilt the mTLS context), so leaves it
    // signs after activation are accepted from the first second.
    let early = pki::issue_client(&ca_b, "gateway-early", R_LEAF_VALIDITY, t1).unwrap();
    drop(connect_ok(&mtls(&pod, &early, bundle.clone()), "a certificate of the introduced CA").await);
    assert_eq!(pod.broker.pid(), pid);

    // 2. Activate after the propagation delay: the new CA signs; server and client certificates
    // are re-issued (IssuerChanged); the bundle holds both CAs, the CRL file one CRL per CA.
    assert_eq!(plan_ca(&introducing, 0, plus(t1, R_DELAY - Duration::from_secs(1))).1, None);
    let t2 = plus(t1, R_DELAY);
    let (migrating, step) = plan_ca(&introducing, 1, t2);
    assert_eq!((step, migrating.phase()), (Some(CaTransition::Activated), "Migrating"));
    assert_eq!((&migrating.active, migrating.retiring.as_ref()), (&ca_b, Some(&ca_a)));
    let server0 = Issued { cert_pem: tls0["tls.crt"].clone(), key_pem: tls0["tls.key"].clone() };
    assert_eq!(
        pki::leaf_renewal(
            Some(&server0),
            pki::Want::Server(&names),
            &migrating.active,
            R_LEAF_VALIDITY,
            R_LEAF_RENEW,
            t2
        ),
        Some(pki::RenewReason::IssuerChanged)
    );
    let server = pki::issue_server(&migrating.active, &names, R_LEAF_VALIDITY, t2).unwrap();
    assert_eq!(
        pki::leaf_renewal(
            Some(&gw_old),
            pki::Want::Client("gateway-old"),
            &migrating.active,
            R_LEAF_VALIDITY,
            R_LEAF_RENEW,
            t2
        ),
        Some(pki::RenewReason::IssuerChanged)
    );
    let reissued = pki::issue_client(&migrating.active, "gateway-old", R_LEAF_VALIDITY, t2).unwrap();
    let gw_new = pki::issue_client(&migrating.active, "gateway-new", R_LEAF_VALIDITY, t2).unwrap();
    let bundle = migrating.trust_bundle();
    let crl2 = crls(&migrating, &ledger, &crl1, t2);
    assert_eq!(pki::parse_crls(&crl2).unwrap().len(), 2, "one CRL per trusted CA");
    pod.volumes.update_tls(&[
        ("tls.crt", &server.cert_pem),
        ("tls.key", &server.key_pem),
        ("ca.crt", &bundle),
        ("crl.pem", &crl2),
    ]);
    pod.wait_reload();
    assert_eq!(served_serial(pod.r.port(8883)), serial_of(&server.cert_pem), "the new CA's server certificate");
    drop(connect_ok(&password(&bundle), "password client with the bundle").await);
    drop(connect_ok(&mtls(&pod, &gw_old, bundle.clone()), "client certificate of the old CA").await);
    drop(connect_ok(&mtls(&pod, &gw_new, bundle.clone()), "client certificate of the new CA").await);
    drop(connect_ok(&mtls(&pod, &reissued, bundle.clone()), "re-issued client certificate").await);
    // A client that never fetched the bundle cannot verify the new server certificate: this is
    // why the new CA had to be published a full propagation delay before it signed anything.
    assert!(connect(&password(&old_ca_file)).await.is_err(), "the old CA file verified the new server certificate");
    assert_eq!(pod.broker.pid(), pid);

    // 3. Retire: while a live leaf is signed by the old CA it stays; once none is, it leaves.
    let live = [&server, &reissued, &gw_new].iter().filter(|c| pki::signed_by(&c.cert_pem, &ca_a.cert_pem)).count();
    assert_eq!(live, 0, "every leaf in use was re-issued by the new CA");
    let t3 = plus(t2, R_DELAY);
    assert_eq!(plan_ca(&migrating, 1, t3).1, None, "a live leaf of the old CA keeps it trusted");
    let (retired, step) = plan_ca(&migrating, live, t3);
    assert_eq!((step, retired.phase()), (Some(CaTransition::Retired), "Stable"));
    let bundle = retired.trust_bundle();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 1);
    let crl3 = crls(&retired, &ledger, &crl2, t3);
    pod.volumes.update_tls(&[("ca.crt", &bundle), ("crl.pem", &crl3)]);
    pod.wait_reload();
    let why = assert_transport_refusal(
        connect(&mtls(&pod, &gw_old, bundle.clone())).await,
        "client certificate of the retired CA",
    );
    assert!(why.contains("AlertReceived(UnknownCA)"), "{why}");
    drop(connect_ok(&mtls(&pod, &gw_new, bundle.clone()), "client certificate of the new CA after retirement").await);
    drop(connect_ok(&mtls(&pod, &reissued, bundle.clone()), "re-issued certificate after retirement").await);
    drop(connect_ok(&password(&bundle), "password client after retirement").await);
    assert_eq!(pod.broker.pid(), pid, "the broker was restarted during the rollover");
    assert!(pod.broker.alive());
}
