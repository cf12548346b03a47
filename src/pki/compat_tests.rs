//! Compatibility with the real consumers of moat's PKI material:
//!
//! - the `openssl` 3.0 binary on this machine (the same library Mosquitto uses): `verify` with the CA
//!   bundle and CRLs, `pkey`, `crl`, `x509`. Verification runs `-attime` at the injected clock, so the
//!   tests never depend on the machine's date.
//! - rustls/webpki (the stack of `moat probe` and of rumqttc test clients): an in-memory mutual-TLS
//!   handshake with the bundle and the CRL file, at the injected time.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use super::test_support::*;
use super::*;

const CA_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
const CA_RENEW: Duration = Duration::from_secs(30 * 86_400);
const DELAY: Duration = Duration::from_secs(300);

/// Runs `openssl` in `dir`; returns success and the combined output.
fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl binary must be installed for the compatibility tests");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// `openssl verify` of `leaf` against `bundle` (and `crls`, with `-crl_check_all`) at time `at`.
fn verify(dir: &Path, bundle: &str, leaf: &Issued, purpose: &str, crls: Option<&str>, at: Timestamp) -> (bool, String) {
    write(dir, "bundle.pem", bundle);
    write(dir, "leaf.pem", &leaf.cert_pem);
    let at = at.as_second().to_string();
    let mut args = vec!["verify", "-attime", &at, "-purpose", purpose, "-CAfile", "bundle.pem"];
    if let Some(crls) = crls {
        write(dir, "crls.pem", crls);
        args.extend(["-crl_check_all", "-CRLfile", "crls.pem"]);
    }
    args.push("leaf.pem");
    let (ok, out) = openssl(dir, &args);
    (ok && out.contains("leaf.pem: OK"), out)
}

/// A broker's CA set in the Migrating phase (old CA `retiring`, new CA `active`), at time `now`.
fn migrating() -> (CaSet, Timestamp) {
    let (set, _) = plan_ca(None, CA_VALIDITY, CA_RENEW, DELAY, 0, "plant-a", t0()).unwrap();
    let t1 = t0() + CA_VALIDITY - CA_RENEW;
    let (set, _) = plan_ca(Some(set), CA_VALIDITY, CA_RENEW, DELAY, 0, "plant-a", t1).unwrap();
    let (set, t) = plan_ca(Some(set), CA_VALIDITY, CA_RENEW, DELAY, 1, "plant-a", t1 + DELAY).unwrap();
    assert_eq!(t, Some(CaTransition::Activated));
    (set, t1 + DELAY)
}

fn server_names() -> ServerNames {
    ServerNames { dns: vec!["plant-a.ns.svc".into(), "localhost".into()], ips: vec!["127.0.0.1".parse().unwrap()] }
}

/// A CA with a server certificate and a client certificate for `sensor-17`, all issued at `t0`.
fn ca_server_client() -> (Issued, Issued, Issued) {
    let ca = new_ca("plant-a", CA_VALIDITY, t0()).unwrap();
    let server = issue_server(&ca, &server_names(), DAY * 90, t0()).unwrap();
    let client = issue_client(&ca, "sensor-17", DAY * 90, t0()).unwrap();
    (ca, server, client)
}

#[test]
fn openssl_verifies_server_and_client_certs_with_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, server, client) = ca_server_client();
    let at = t0() + HOUR;
    let (ok, out) = verify(dir.path(), &ca.cert_pem, &server, "sslserver", None, at);
    assert!(ok, "{out}");
    let (ok, out) = verify(dir.path(), &ca.cert_pem, &client, "sslclient", None, at);
    assert!(ok, "{out}");
    // Controls: the tests can fail.
    let (ok, _) = verify(dir.path(), &ca.cert_pem, &client, "sslserver", None, at);
    assert!(!ok, "a client certificate is not a server certificate");
    let (ok, out) = verify(dir.path(), &ca.cert_pem, &server, "sslserver", None, t0() + DAY * 91);
    assert!(!ok && out.contains("expired"), "{out}");
    let stranger = new_ca("plant-a", CA_VALIDITY, t0()).unwrap();
    let (ok, _) = verify(dir.path(), &stranger.cert_pem, &server, "sslserver", None, at);
    assert!(!ok, "another CA with the same common name is not trusted");
}

#[test]
fn openssl_accepts_a_128_character_username_as_cn() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("plant-a", CA_VALIDITY, t0()).unwrap();
    let user = format!("a{}", "b".repeat(127));
    let client = issue_client(&ca, &user, DAY, t0()).unwrap();
    let (ok, out) = verify(dir.path(), &ca.cert_pem, &client, "sslclient", None, t0() + HOUR);
    assert!(ok, "{out}");
    write(dir.path(), "client.pem", &client.cert_pem);
    let (ok, out) = openssl(dir.path(), &["x509", "-in", "client.pem", "-noout", "-subject", "-nameopt", "RFC2253"]);
    assert!(ok && out.trim() == format!("subject=CN={user}"), "{out}");
}

#[test]
fn openssl_sees_the_intended_extensions() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, server, _) = ca_server_client();
    write(dir.path(), "ca.pem", &ca.cert_pem);
    write(dir.path(), "server.pem", &server.cert_pem);
    let (ok, text) = openssl(dir.path(), &["x509", "-in", "ca.pem", "-noout", "-text"]);
    assert!(ok, "{text}");
    for want in ["CA:TRUE, pathlen:0", "Certificate Sign, CRL Sign", "prime256v1", "ecdsa-with-SHA256"] {
        assert!(text.contains(want), "CA lacks {want:?}:\n{text}");
    }
    let (ok, text) = openssl(dir.path(), &["x509", "-in", "server.pem", "-noout", "-text"]);
    assert!(ok, "{text}");
    for want in [
        "CA:FALSE",
        "Digital Signature",
        "TLS Web Server Authentication",
        "DNS:plant-a.ns.svc, DNS:localhost, IP Address:127.0.0.1",
        "X509v3 Authority Key Identifier",
    ] {
        assert!(text.contains(want), "server certificate lacks {want:?}:\n{text}");
    }
}

#[test]
fn openssl_loads_every_key_and_agrees_which_key_matches() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, server, client) = ca_server_client();
    for (name, pair) in [("ca", &ca), ("server", &server), ("client", &client)] {
        let (key, cert) = (format!("{name}.key"), format!("{name}.crt"));
        write(dir.path(), &key, &pair.key_pem);
        write(dir.path(), &cert, &pair.cert_pem);
        let (ok, out) = openssl(dir.path(), &["pkey", "-in", &key, "-noout"]);
        assert!(ok, "openssl cannot load the {name} key: {out}");
        let (ok, key_pub) = openssl(dir.path(), &["pkey", "-in", &key, "-pubout"]);
        assert!(ok);
        let (ok, cert_pub) = openssl(dir.path(), &["x509", "-in", &cert, "-noout", "-pubkey"]);
        assert!(ok);
        assert_eq!(key_pub, cert_pub, "{name}: openssl sees a matching pair");
        assert!(key_matches(&pair.cert_pem, &pair.key_pem));
    }
    assert!(!key_matches(&server.cert_pem, &client.key_pem));
}

#[test]
fn openssl_verifies_old_and_new_leaves_while_the_bundle_holds_both_cas() {
    let dir = tempfile::tempdir().unwrap();
    let (set, now) = migrating();
    let old_ca = set.retiring.clone().unwrap();
    let old_leaf = issue_client(&old_ca, "alice", DAY * 90, now - DAY).unwrap();
    let new_leaf = issue_client(&set.active, "alice", DAY * 90, now).unwrap();
    let new_server = issue_server(&set.active, &server_names(), DAY * 90, now).unwrap();
    let bundle = set.trust_bundle();
    let crls = set.crls(&[], 1, now, now + DAY * 7).unwrap();
    for (leaf, purpose) in [(&old_leaf, "sslclient"), (&new_leaf, "sslclient"), (&new_server, "sslserver")] {
        let (ok, out) = verify(dir.path(), &bundle, leaf, purpose, Some(&crls), now + MIN);
        assert!(ok, "{out}");
    }
    // After the old CA retires, its leaves are refused (which is why it waits for them to migrate).
    let (stable, t) = plan_ca(Some(set), CA_VALIDITY, CA_RENEW, DELAY, 0, "plant-a", now + DELAY).unwrap();
    assert_eq!(t, Some(CaTransition::Retired));
    let (ok, _) = verify(dir.path(), &stable.trust_bundle(), &old_leaf, "sslclient", None, now + DELAY);
    assert!(!ok);
    let (ok, out) = verify(dir.path(), &stable.trust_bundle(), &new_leaf, "sslclient", None, now + DELAY);
    assert!(ok, "{out}");
}

#[test]
fn openssl_crl_lists_the_revoked_serial_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("plant-a", CA_VALIDITY, t0()).unwrap();
    let alice = issue_client(&ca, "alice", DAY * 90, t0()).unwrap();
    let entry = RevokedCert::from_cert(&alice.cert_pem, t0() + HOUR).unwrap();
    let crl = sign_crl(&ca, std::slice::from_ref(&entry), 12, t0() + HOUR, t0() + DAY * 7).unwrap();
    write(dir.path(), "crl.pem", &crl);
    write(dir.path(), "ca.pem", &ca.cert_pem);
    let (ok, text) = openssl(dir.path(), &["crl", "-in", "crl.pem", "-noout", "-text"]);
    assert!(ok, "{text}");
    assert!(text.contains(&format!("Serial Number: {}", entry.serial_hex.to_uppercase())), "{text}");
    let number = text.lines().skip_while(|l| !l.contains("X509v3 CRL Number")).nth(1).map(str::trim);
    assert_eq!(number, Some("12"), "{text}");
    assert!(text.contains("Next Update: Mar  8 00:00:00 2026 GMT"), "{text}");
    assert!(text.contains("Last Update: Mar  1 00:55:00 2026 GMT"), "thisUpdate back-dated by the skew: {text}");
    let (ok, text) = openssl(dir.path(), &["crl", "-in", "crl.pem", "-CAfile", "ca.pem", "-noout"]);
    assert!(ok && text.contains("verify OK"), "{text}");
}

#[test]
fn openssl_crl_check_rejects_the_revoked_client_and_accepts_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (set, now) = migrating();
    let old_ca = set.retiring.clone().unwrap();
    let revoked_old = issue_client(&old_ca, "mallory", DAY * 90, now - DAY).unwrap();
    let kept_old = issue_client(&old_ca, "alice", DAY * 90, now - DAY).unwrap();
    let revoked_new = issue_client(&set.active, "trudy", DAY * 90, now).unwrap();
    let kept_new = issue_client(&set.active, "bob", DAY * 90, now).unwrap();
    let ledger = [
        RevokedCert::from_cert(&revoked_old.cert_pem, now).unwrap(),
        RevokedCert::from_cert(&revoked_new.cert_pem, now).unwrap(),
    ];
    // The ledger goes through its text form, as it would through a Secret.
    let ledger = decode_revoked(&encode_revoked(&ledger)).unwrap();
    let crls = set.crls(&ledger, 1, now, now + DAY * 7).unwrap();
    let bundle = set.trust_bundle();
    let at = now + MIN;
    for leaf in [&revoked_old, &revoked_new] {
        let (ok, out) = verify(dir.path(), &bundle, leaf, "sslclient", Some(&crls), at);
        assert!(!ok && out.contains("certificate revoked"), "{out}");
    }
    for leaf in [&kept_old, &kept_new] {
        let (ok, out) = verify(dir.path(), &bundle, leaf, "sslclient", Some(&crls), at);
        assert!(ok, "{out}");
    }
    // Plain -crl_check (leaf only, as Mosquitto does) agrees.
    write(dir.path(), "crls.pem", &crls);
    write(dir.path(), "leaf.pem", &revoked_new.cert_pem);
    let at_s = at.as_second().to_string();
    let args = ["verify", "-attime", &at_s, "-crl_check", "-CRLfile", "crls.pem", "-CAfile", "bundle.pem", "leaf.pem"];
    let (ok, out) = openssl(dir.path(), &args);
    assert!(!ok && out.contains("certificate revoked"), "{out}");

    // notes/mosquitto.md §11: every CA in the bundle needs its CRL. Without the retiring CA's CRL,
    // its (non-revoked) leaves are refused.
    let active_only = sign_crl(&set.active, &ledger, 1, now, now + DAY * 7).unwrap();
    let (ok, out) = verify(dir.path(), &bundle, &kept_old, "sslclient", Some(&active_only), at);
    assert!(!ok && out.contains("unable to get certificate CRL"), "{out}");
    assert!(set.crls_need_resign(&active_only, &ledger, now, DAY));

    // An expired CRL rejects everyone: crl_needs_resign must fire before that.
    let (ok, out) = verify(dir.path(), &bundle, &kept_new, "sslclient", Some(&crls), now + DAY * 8);
    assert!(!ok && out.contains("CRL has expired"), "{out}");
    assert!(crl_needs_resign(&crls, now + DAY * 5, DAY * 2));
}

#[test]
fn openssl_made_keys_are_judged_by_type() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("plant-a", CA_VALIDITY, t0()).unwrap();
    let (ok, out) = openssl(
        dir.path(),
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:1024",
            "-nodes",
            "-keyout",
            "rsa.key",
            "-out",
            "rsa.crt",
            "-subj",
            "/CN=plant-a.ns.svc",
            "-days",
            "1",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = openssl(
        dir.path(),
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-nodes",
            "-keyout",
            "p384.key",
            "-out",
            "p384.crt",
            "-subj",
            "/CN=x",
            "-days",
            "1",
        ],
    );
    assert!(ok, "{out}");
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let rsa = Issued { cert_pem: read("rsa.crt"), key_pem: read("rsa.key") };
    assert!(!inspect(&rsa.cert_pem).unwrap().key_is_strong);
    let names = ServerNames { dns: vec!["plant-a.ns.svc".into()], ips: vec![] };
    assert_eq!(
        leaf_renewal(Some(&rsa), Want::Server(&names), &ca, DAY * 90, DAY * 15, t0()),
        Some(RenewReason::WeakKey)
    );
    let p384 = inspect(&read("p384.crt")).unwrap();
    assert!(p384.key_is_strong && p384.is_ca, "openssl req -x509 makes a CA by default");
    assert!(key_matches(&read("p384.crt"), &read("p384.key")));
}

// ---------------------------------------------------------------- rustls / webpki

/// A rustls clock stopped at the injected time.
#[derive(Debug)]
struct FixedTime(Timestamp);

impl rustls::time_provider::TimeProvider for FixedTime {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        Some(rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(self.0.as_second().try_into().ok()?)))
    }
}

fn certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    super::pem_blocks(pem, "CERTIFICATE").unwrap().into_iter().map(Into::into).collect()
}

fn key(pem: &str) -> rustls::pki_types::PrivateKeyDer<'static> {
    rustls::pki_types::PrivateKeyDer::Pkcs8(super::first_pem_block(pem, "PRIVATE KEY").unwrap().into())
}

fn roots(bundle: &str) -> Arc<rustls::RootCertStore> {
    let mut store = rustls::RootCertStore::empty();
    for cert in certs(bundle) {
        store.add(cert).unwrap();
    }
    Arc::new(store)
}

/// Moves every pending TLS record from `from` to `to` and lets `to` process it.
fn send(from: &mut rustls::Connection, to: &mut rustls::Connection) -> Result<(), rustls::Error> {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
        to.process_new_packets()?;
    }
    Ok(())
}

/// An in-memory TLS 1.3 handshake: the broker serves `server` and requires a client certificate
/// chained to `server_bundle` and not revoked by `crls`; the client trusts `client_bundle`, checks the
/// name `host`, and presents `client`.
fn handshake(
    server: &Issued,
    server_bundle: &str,
    crls: &str,
    client: &Issued,
    client_bundle: &str,
    host: &str,
    now: Timestamp,
) -> Result<(), rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let time = Arc::new(FixedTime(now));
    let crls: Vec<rustls::pki_types::CertificateRevocationListDer<'static>> =
        super::crl::crl_ders(crls).unwrap().into_iter().map(Into::into).collect();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(server_bundle), provider.clone())
        .with_crls(crls)
        .build()
        .unwrap();
    let server_config = rustls::ServerConfig::builder_with_details(provider.clone(), time.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&server.cert_pem), key(&server.key_pem))?;
    let client_config = rustls::ClientConfig::builder_with_details(provider, time)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(client_bundle))
        .with_client_auth_cert(certs(&client.cert_pem), key(&client.key_pem))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let mut c = rustls::Connection::Client(rustls::ClientConnection::new(Arc::new(client_config), name)?);
    let mut s = rustls::Connection::Server(rustls::ServerConnection::new(Arc::new(server_config))?);
    for _ in 0..8 {
        send(&mut c, &mut s)?;
        send(&mut s, &mut c)?;
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn rustls_mutual_tls_works_across_a_rollover_and_honours_the_crls() {
    let (set, now) = migrating();
    let old_ca = set.retiring.clone().unwrap();
    let server = issue_server(&set.active, &server_names(), DAY * 90, now).unwrap();
    let old_client = issue_client(&old_ca, "alice", DAY * 90, now - DAY).unwrap();
    let new_client = issue_client(&set.active, "bob", DAY * 90, now).unwrap();
    let revoked = issue_client(&set.active, "mallory", DAY * 90, now).unwrap();
    let ledger = [RevokedCert::from_cert(&revoked.cert_pem, now).unwrap()];
    let bundle = set.trust_bundle();
    let crls = set.crls(&ledger, 1, now, now + DAY * 7).unwrap();
    let at = now + MIN;

    for host in ["plant-a.ns.svc", "localhost", "127.0.0.1"] {
        handshake(&server, &bundle, &crls, &new_client, &bundle, host, at).unwrap();
    }
    handshake(&server, &bundle, &crls, &old_client, &bundle, "plant-a.ns.svc", at)
        .expect("a client of the retiring CA is accepted during the migration");
    let err = handshake(&server, &bundle, &crls, &revoked, &bundle, "plant-a.ns.svc", at).unwrap_err();
    assert!(matches!(err, rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)), "{err:?}");
    let err = handshake(&server, &bundle, &crls, &new_client, &bundle, "other.ns.svc", at).unwrap_err();
    assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "wrong host name: {err:?}");
    // A client that only trusts the old CA cannot verify a server of the new CA: the reason the new CA
    // must be in every bundle before it signs.
    let err = handshake(&server, &bundle, &crls, &new_client, &old_ca.cert_pem, "plant-a.ns.svc", at).unwrap_err();
    assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err:?}");
}
