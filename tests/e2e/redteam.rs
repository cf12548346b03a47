//! Red team: attacks against the rendered production bundle (and a small-`maxConnections`
//! broker for the connection flood). Every attack must be refused or dropped, and afterwards a
//! legitimate client must still connect and exchange a message. `--nocapture` shows the table.

use std::time::Duration;

use jiff::Timestamp;
use moat::pki::{self, RevokedCert};

use crate::harness::*;

const FLOOD: &[&str] = &["tests/e2e/fixtures/broker-flood.yaml"];
/// The brought password of `dashboard` (examples/user-byo-password.yaml).
const DASHBOARD: &str = "c0rrect-Horse-battery-staple-Plant-B";
/// `limits.maxPacketSize` of examples/broker-production.yaml (left as it is).
const MAX_PACKET_SIZE: usize = 1_048_576;
const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(200);
const DAY: Duration = Duration::from_secs(86_400);

/// One attack and what became of it.
struct Outcome {
    attack: &'static str,
    refused: bool,
    observed: String,
}

#[derive(Default)]
struct Report(Vec<Outcome>);

impl Report {
    fn record(&mut self, attack: &'static str, refused: bool, observed: impl Into<String>) {
        self.0.push(Outcome { attack, refused, observed: observed.into() });
    }

    /// Records a connection attempt that must not yield a session.
    fn connect_refused(&mut self, attack: &'static str, result: Result<Session, Refusal>) {
        match result {
            Ok(_) => self.record(attack, false, "CONNECTED"),
            Err(Refusal::Refused(code)) => self.record(attack, true, format!("CONNACK {code:?}")),
            Err(Refusal::Transport(why)) => self.record(attack, true, format!("transport: {}", short(&why))),
        }
    }

    fn print_and_assert(&self) {
        let width = self.0.iter().map(|o| o.attack.len()).max().unwrap_or(0);
        println!("\nred team: {} attacks tried, {} refused", self.0.len(), self.0.iter().filter(|o| o.refused).count());
        println!("{:<width$}  {:<8}  observed", "attack", "result");
        for o in &self.0 {
            println!("{:<width$}  {:<8}  {}", o.attack, if o.refused { "REFUSED" } else { "ALLOWED" }, o.observed);
        }
        let allowed: Vec<&str> = self.0.iter().filter(|o| !o.refused).map(|o| o.attack).collect();
        assert!(allowed.is_empty(), "attacks that got through: {allowed:?}");
    }
}

/// The interesting part of a rumqttc error (the TLS alert or the I/O error kind).
fn short(why: &str) -> String {
    if let Some(i) = why.find("AlertReceived(") {
        let rest = &why[i..];
        return rest[..rest.find(')').map_or(rest.len(), |j| j + 1)].to_string();
    }
    if let Some(i) = why.find("kind: ") {
        let rest = &why[i + 6..];
        return rest[..rest.find([',', ' ', '}']).unwrap_or(rest.len())].to_string();
    }
    why.chars().take(80).collect()
}

fn cert_conn(r: &Rendered, cert: &pki::Issued) -> Conn {
    Conn {
        port: r.port(8884),
        ca: Some(r.ca()),
        client_cert: Some((cert.cert_pem.clone(), cert.key_pem.clone())),
        ..Default::default()
    }
}

fn password_conn(r: &Rendered, user: &str, password: &str) -> Conn {
    Conn {
        port: r.port(8883),
        ca: Some(r.ca()),
        credentials: Some((user.to_string(), password.to_string())),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_is_refused_and_legitimate_clients_still_work() {
    let mut report = Report::default();
    production_attacks(&mut report).await;
    flood_attack(&mut report).await;
    report.print_and_assert();
}

async fn production_attacks(report: &mut Report) {
    let r = render(PRODUCTION, &[8883, 8884, 8443]);
    // A certificate of the broker's CA, revoked in the CRL the broker starts with.
    let now = Timestamp::now();
    let ca = r.ca_set("plant-b");
    let revoked = pki::issue_client(&ca.active, "gateway-9", DAY, now).unwrap();
    let crl_path = r.bundle.join("tls/crl.pem");
    let crl = std::fs::read_to_string(&crl_path).unwrap();
    let ledger = [RevokedCert::from_cert(&revoked.cert_pem, now).unwrap()];
    let after_week = now + jiff::SignedDuration::from_hours(24 * 7);
    let new_crl = ca.crls(&ledger, pki::next_crl_number(Some(&crl)), now, after_week).unwrap();
    std::fs::write(&crl_path, new_crl).unwrap();
    // OpenSSL would allow TLS 1.0/1.1 for broker and attacker: only moat's config refuses them.
    let openssl = permissive_openssl_conf(r.dir.path());
    let mut broker =
        Broker::start(&r.bundle, &[r.port(8883), r.port(8884), r.port(8443)], &[("OPENSSL_CONF", &openssl)]);
    let pid = broker.pid();
    let sensor_password = r.client_file("sensor-17", "password");
    let gateway =
        pki::Issued { cert_pem: r.client_file("gateway-1", "tls.crt"), key_pem: r.client_file("gateway-1", "tls.key") };

    // Controls: the attack tools work against this broker (so a refusal below means something).
    drop(connect_ok(&cert_conn(&r, &gateway), "control: gateway-1 over mTLS").await);
    drop(connect_ok(&password_conn(&r, "sensor-17", &sensor_password), "control: sensor-17").await);
    let gateway_files = r.bundle.join("clients/gateway-1");
    assert!(s_client_handshakes(r.port(8883), "-tls1_2", &openssl), "control: openssl s_client TLS 1.2");
    assert!(s_client_handshakes(r.port(8443), "-tls1_2", &openssl), "control: TLS 1.2 on the WebSockets listener");
    assert!(
        s_client_handshakes_as(r.port(8884), "-tls1_3", &openssl, Some(&gateway_files)),
        "control: openssl s_client TLS 1.3 with gateway-1's certificate"
    );

    // Authentication.
    report.connect_refused(
        "anonymous CONNECT (password listener)",
        connect(&Conn { port: r.port(8883), ca: Some(r.ca()), ..Default::default() }).await,
    );
    report.connect_refused(
        "plaintext MQTT to the TLS port",
        connect(&Conn {
            port: r.port(8883),
            credentials: Some(("sensor-17".into(), sensor_password.clone())),
            ..Default::default()
        })
        .await,
    );
    for (attack, port, flag) in [
        ("TLS 1.0 handshake (password listener)", 8883, "-tls1"),
        ("TLS 1.1 handshake (password listener)", 8883, "-tls1_1"),
        ("TLS 1.0 handshake (mTLS listener)", 8884, "-tls1"),
        ("TLS 1.1 handshake (mTLS listener)", 8884, "-tls1_1"),
        ("TLS 1.2 handshake (TLS 1.3-only mTLS listener)", 8884, "-tls1_2"),
        ("TLS 1.0 handshake (WebSockets listener)", 8443, "-tls1"),
        ("TLS 1.1 handshake (WebSockets listener)", 8443, "-tls1_1"),
    ] {
        // With a valid client certificate, so that only the version can make it fail.
        let handshake = s_client_handshakes_as(r.port(port), flag, &openssl, Some(&gateway_files));
        report.record(attack, !handshake, if handshake { "handshake completed" } else { "no handshake" });
    }
    let foreign_ca = pki::new_ca("moat CA default/plant-b", DAY, now).unwrap();
    let foreign = pki::issue_client(&foreign_ca, "gateway-1", DAY, now).unwrap();
    report.connect_refused("client certificate from another CA (same CN)", connect(&cert_conn(&r, &foreign)).await);
    report.connect_refused("revoked client certificate", connect(&cert_conn(&r, &revoked)).await);
    report.connect_refused(
        "mTLS listener without a client certificate",
        connect(&Conn { port: r.port(8884), ..password_conn(&r, "sensor-17", &sensor_password) }).await,
    );
    report.connect_refused(
        "wrong password",
        connect(&password_conn(&r, "sensor-17", "guess-Guess-guess-1234567890")).await,
    );
    report.connect_refused("another user's password", connect(&password_conn(&r, "sensor-17", DASHBOARD)).await);
    report.connect_refused(
        "unknown user",
        connect(&password_conn(&r, "mallory", "Mallory-is-not-a-user-0123456789")).await,
    );

    // Authorization.
    let mut sensor = connect_ok(&password_conn(&r, "sensor-17", &sensor_password), "sensor-17").await;
    let reason = sensor.publish("$SYS/broker/uptime", b"0 seconds").await;
    report.record("publish to $SYS", reason == puback_not_authorized(), format!("PUBACK {reason}"));
    let reason = sensor.publish("plant/b/commands/admin/reboot", b"now").await;
    report.record("publish to a topic without a grant", reason == puback_not_authorized(), format!("PUBACK {reason}"));
    let mut dashboard = connect_ok(&password_conn(&r, "dashboard", DASHBOARD), "dashboard").await;
    dashboard.subscribe_granted("devices/dashboard/#").await;
    let codes = sensor.subscribe("devices/dashboard/#").await;
    assert!(accepted(&dashboard.publish("devices/dashboard/screen", b"private").await));
    assert!(dashboard.expect_message("devices/dashboard/screen", b"private", WAIT).await, "control: dashboard");
    let leaked = sensor.drain(QUIET).await;
    report.record(
        "read another user's %u topic",
        leaked.is_empty(),
        format!("SUBACK {codes:?}, {} message(s) delivered", leaked.len()),
    );

    // Resource limits: a PUBLISH larger than max_packet_size, sent raw (a client library would
    // refuse to send it). Control first: the same raw client gets a PUBACK for a small one.
    let (mut raw, rc) = RawMqtt::connect(r.port(8883), &r.ca(), "sensor-17", &sensor_password).await.unwrap();
    assert_eq!(rc, 0, "control: raw CONNECT");
    raw.publish_qos1("devices/sensor-17/small", 16).await.unwrap();
    let puback = raw.read_packet(WAIT).await.unwrap();
    assert_eq!(puback.map(|p| p[0]), Some(0x40), "control: raw PUBACK");
    // A packet below max_packet_size but above message_size_limit is dropped by the broker
    // (still acknowledged): the connection survives, so a hang-up below is max_packet_size.
    raw.publish_qos1("devices/sensor-17/medium", MAX_PACKET_SIZE / 2).await.unwrap();
    let puback = raw.read_packet(WAIT).await.unwrap();
    assert_eq!(puback.map(|p| p[0]), Some(0x40), "control: a half-limit packet keeps the connection");
    let sent = raw.publish_qos1("devices/sensor-17/big", MAX_PACKET_SIZE + 1024).await;
    let answer = raw.read_packet(WAIT).await;
    let dropped = matches!(answer, Ok(None)) || matches!(&answer, Err(e) if e.kind() != std::io::ErrorKind::TimedOut);
    report.record(
        "PUBLISH larger than max_packet_size",
        dropped,
        format!("write: {}, then {:?}", if sent.is_ok() { "ok" } else { "failed" }, answer.map(|p| p.map(|p| p[0]))),
    );

    // Afterwards legitimate clients still connect and exchange messages, on the same process.
    let mut sensor = connect_ok(&password_conn(&r, "sensor-17", &sensor_password), "sensor-17 afterwards").await;
    sensor.subscribe_granted("devices/sensor-17/#").await;
    assert!(accepted(&sensor.publish("devices/sensor-17/ok", b"fine").await));
    assert!(sensor.expect_message("devices/sensor-17/ok", b"fine", WAIT).await, "sensor-17 afterwards");
    let mut gw = connect_ok(&cert_conn(&r, &gateway), "gateway-1 afterwards").await;
    gw.subscribe_granted("devices/gateway-1/#").await;
    assert!(accepted(&gw.publish("devices/gateway-1/ok", b"fine").await));
    assert!(gw.expect_message("devices/gateway-1/ok", b"fine", WAIT).await, "gateway-1 afterwards");
    assert_eq!(broker.pid(), pid);
    assert!(broker.alive(), "the broker died during the attacks:\n{}", broker.log());
}

async fn flood_attack(report: &mut Report) {
    let r = render(FLOOD, &[8883]);
    let broker = Broker::start(&r.bundle, &[r.port(8883)], &[]);
    let conn = |i: usize| password_conn(&r, &format!("flood-{i}"), &r.client_file(&format!("flood-{i}"), "password"));
    let mut held = vec![];
    for i in 0..5 {
        held.push(connect_ok(&conn(i), "one of the first 5 connections").await);
    }
    let mut refused = 0;
    let mut observed = vec![];
    for i in 5..8 {
        match connect(&conn(i)).await {
            Ok(_) => observed.push(format!("flood-{i} CONNECTED")),
            Err(e) => {
                refused += 1;
                observed.push(match e {
                    Refusal::Refused(code) => format!("CONNACK {code:?}"),
                    Refusal::Transport(why) => short(&why),
                });
            }
        }
    }
    let logged = broker.wait_log(0, "max_connections exceeded", WAIT);
    report.record(
        "connection flood beyond max_connections (5)",
        refused == 3 && logged,
        format!("3 extra connections: {} refused ({}); logged: {logged}", refused, observed.join(", ")),
    );
    // The flood ends; a legitimate client connects and exchanges a message.
    for mut s in held.drain(..) {
        s.client.disconnect().await.unwrap();
        assert!(s.wait_closed(WAIT).await.is_some());
    }
    let mut legit = connect_ok(&conn(7), "flood-7 after the flood").await;
    legit.subscribe_granted("devices/flood-7/#").await;
    assert!(accepted(&legit.publish("devices/flood-7/ok", b"fine").await));
    assert!(legit.expect_message("devices/flood-7/ok", b"fine", WAIT).await);
}

/// Red team 3: a password+certificate user whose brought password is weak is out of the password
/// file, but its certificate still logs in — with its own rules, Deny included: it never reads
/// the topic it was denied through the `allUsers` grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_keeps_its_users_deny_rules_when_the_password_drops_out() {
    let r = render(&["tests/e2e/fixtures/broker-dual.yaml"], &[8883, 8884]);
    assert!(!std::fs::read_to_string(r.bundle.join("passwd")).unwrap().contains("dual:"), "the weak password is out");
    let _broker = Broker::start(&r.bundle, &[r.port(8883), r.port(8884)], &[]);
    let dual = pki::Issued { cert_pem: r.client_file("dual", "tls.crt"), key_pem: r.client_file("dual", "tls.key") };
    assert_refused(&password_conn(&r, "dual", "password"), "the weak password").await;
    let mut reader = connect_ok(&cert_conn(&r, &dual), "dual's certificate").await;
    reader.subscribe_granted("plant/#").await;
    let mut writer = connect_ok(&password_conn(&r, "writer", &r.client_file("writer", "password")), "writer").await;
    for topic in ["plant/secret/key", "plant/a/temp"] {
        let reason = writer.publish(topic, b"x").await;
        assert!(accepted(&reason), "{topic}: {reason}");
    }
    let seen = reader.drain(Duration::from_secs(2)).await;
    let topics: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(topics, vec!["plant/a/temp"], "dual read a topic its own ACL denies");
}
