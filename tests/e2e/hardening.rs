//! The rendered configuration of the example brokers really hardens a real Mosquitto.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;

use crate::harness::*;

fn tls(r: &Rendered, port: u16) -> Conn {
    Conn { port: r.port(port), ca: Some(r.ca()), ..Default::default() }
}

fn password_of(r: &Rendered, user: &str) -> (String, String) {
    (user.to_string(), r.client_file(user, "password"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimal_broker_is_tls_only_authenticated_and_logs_connections() {
    let r = render(MINIMAL, &[8883]);
    let conf = permissive_openssl_conf(r.dir.path());
    let broker = Broker::start(&r.bundle, &[r.port(8883)], &[("OPENSSL_CONF", &conf)]);

    // TLS with the generated CA and generated credentials works.
    let alice = connect(&Conn { credentials: Some(password_of(&r, "alice")), ..tls(&r, 8883) }).await;
    assert!(alice.is_ok(), "alice over TLS: {:?}", alice.err());

    // Anonymous is refused.
    match connect(&tls(&r, 8883)).await {
        Err(Refusal::Refused(code)) => assert_eq!(code, ConnectReturnCode::NotAuthorized),
        other => panic!("anonymous connect was not refused: {:?}", other.err()),
    }
    // Wrong password and unknown user are refused.
    let wrong =
        connect(&Conn { credentials: Some(("alice".into(), "not-her-password".into())), ..tls(&r, 8883) }).await;
    assert!(matches!(wrong, Err(Refusal::Refused(_))), "wrong password: {:?}", wrong.err());
    let unknown =
        connect(&Conn { credentials: Some(("mallory".into(), "whatever-password".into())), ..tls(&r, 8883) }).await;
    assert!(matches!(unknown, Err(Refusal::Refused(_))), "unknown user: {:?}", unknown.err());

    // Plain TCP to the TLS port fails (no MQTT session without TLS).
    let plain = connect(&Conn {
        port: r.port(8883),
        ca: None,
        credentials: Some(password_of(&r, "alice")),
        ..Default::default()
    })
    .await;
    assert!(matches!(plain, Err(Refusal::Transport(_))), "plaintext to the TLS port: {:?}", plain.err());

    // TLS 1.1 is refused by the rendered tls_version, even with an OpenSSL that allows it.
    assert!(!s_client_handshakes(r.port(8883), "-tls1_1", &conf), "TLS 1.1 handshake succeeded");
    assert!(s_client_handshakes(r.port(8883), "-tls1_2", &conf), "TLS 1.2 handshake failed");

    // The broker's own log shows connection logging.
    assert!(broker.wait_log(0, "New client connected from 127.0.0.1", Duration::from_secs(5)), "{}", broker.log());
    assert!(broker.log().contains("u'alice'"), "{}", broker.log());
    drop(alice);
}

/// The TLS 1.1 assertion above can fail: with tls_version tlsv1.1 the same harness handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_1_check_can_fail_when_the_config_allows_it() {
    let r = render(MINIMAL, &[8883]);
    let conf = permissive_openssl_conf(r.dir.path());
    let path = r.bundle.join("mosquitto.conf");
    let weakened = std::fs::read_to_string(&path).unwrap().replace("tls_version tlsv1.2", "tls_version tlsv1.1");
    std::fs::write(&path, weakened).unwrap();
    let _broker = Broker::start(&r.bundle, &[r.port(8883)], &[("OPENSSL_CONF", &conf)]);
    assert!(s_client_handshakes(r.port(8883), "-tls1_1", &conf), "the negative control must handshake TLS 1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_broker_serves_password_mtls_and_websocket_listeners() {
    let r = render(PRODUCTION, &[8883, 8884, 8443]);
    let conf = permissive_openssl_conf(r.dir.path());
    let broker = Broker::start(&r.bundle, &[r.port(8883), r.port(8884), r.port(8443)], &[("OPENSSL_CONF", &conf)]);

    let sensor = connect(&Conn { credentials: Some(password_of(&r, "sensor-17")), ..tls(&r, 8883) }).await;
    assert!(sensor.is_ok(), "sensor-17: {:?}", sensor.err());
    // The brought password works too (it satisfies the production policy).
    let byo = connect(&Conn {
        credentials: Some(("dashboard".into(), "c0rrect-Horse-battery-staple-Plant-B".into())),
        ..tls(&r, 8883)
    })
    .await;
    assert!(byo.is_ok(), "dashboard: {:?}", byo.err());

    // mTLS: the certificate user connects with its client certificate and no password.
    let cert = (r.client_file("gateway-1", "tls.crt"), r.client_file("gateway-1", "tls.key"));
    let gw = connect(&Conn { client_cert: Some(cert), ..tls(&r, 8884) }).await;
    assert!(gw.is_ok(), "gateway-1 over mTLS: {:?}", gw.err());
    // Without a certificate the mTLS listener refuses (TLS layer).
    let none = connect(&Conn { credentials: Some(password_of(&r, "sensor-17")), ..tls(&r, 8884) }).await;
    assert!(none.is_err(), "mTLS listener accepted a client without a certificate");
    // TLS 1.2 is below the mTLS listener's minimum (1.3). The client presents a valid
    // certificate: without one a TLS 1.2 handshake fails on the missing certificate whatever the
    // version setting, and the check could not fail.
    let gw_files = r.bundle.join("clients/gateway-1");
    assert!(
        s_client_handshakes_as(r.port(8884), "-tls1_3", &conf, Some(&gw_files)),
        "control: TLS 1.3 with a client certificate"
    );
    assert!(
        !s_client_handshakes_as(r.port(8884), "-tls1_2", &conf, Some(&gw_files)),
        "TLS 1.2 accepted on a 1.3-only listener"
    );
    assert!(broker.log().contains("u'gateway-1'"), "{}", broker.log());
}

/// Mosquitto 2.0 never applies `tls_version` to WebSockets listeners (libwebsockets only gets
/// the cipher lists), so moat enforces their minimum version with the rendered `ciphers` line.
/// With an OpenSSL that allows everything, only that line keeps old versions out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_listeners_enforce_their_minimum_tls_version() {
    let r = render(&["tests/e2e/fixtures/broker-websockets.yaml"], &[8883, 8443, 8444]);
    let conf = permissive_openssl_conf(r.dir.path());
    let (mqtts, wss12, wss13) = (r.port(8883), r.port(8443), r.port(8444));
    {
        let _broker = Broker::start(&r.bundle, &[mqtts, wss12, wss13], &[("OPENSSL_CONF", &conf)]);
        for flag in ["-tls1", "-tls1_1"] {
            assert!(
                !s_client_handshakes(wss12, flag, &conf),
                "{flag} accepted on a minVersion 1.2 WebSockets listener"
            );
        }
        assert!(
            s_client_handshakes(wss12, "-tls1_2", &conf),
            "TLS 1.2 refused on a minVersion 1.2 WebSockets listener"
        );
        assert!(s_client_handshakes(wss12, "-tls1_3", &conf));
        for flag in ["-tls1", "-tls1_1", "-tls1_2"] {
            assert!(
                !s_client_handshakes(wss13, flag, &conf),
                "{flag} accepted on a minVersion 1.3 WebSockets listener"
            );
        }
        assert!(
            s_client_handshakes(wss13, "-tls1_3", &conf),
            "TLS 1.3 refused on a minVersion 1.3 WebSockets listener"
        );
    }
    // Negative control: without moat's cipher lines (tls_version alone) the same broker takes
    // TLS 1.1 on the first listener and TLS 1.2 on the second.
    let path = r.bundle.join("mosquitto.conf");
    let text = std::fs::read_to_string(&path).unwrap();
    let stripped: String = text.lines().filter(|l| !l.starts_with("ciphers ")).map(|l| format!("{l}\n")).collect();
    assert_eq!(text.lines().count() - stripped.lines().count(), 2, "expected one ciphers line per listener");
    std::fs::write(&path, stripped).unwrap();
    let _broker = Broker::start(&r.bundle, &[mqtts, wss12, wss13], &[("OPENSSL_CONF", &conf)]);
    assert!(s_client_handshakes(wss12, "-tls1_1", &conf), "the negative control must handshake TLS 1.1");
    assert!(s_client_handshakes(wss13, "-tls1_2", &conf), "the negative control must handshake TLS 1.2");
}
