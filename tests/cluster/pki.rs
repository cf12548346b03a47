//! Certificates on the local control plane: owned Secrets, the CA key stays in `<broker>-ca`,
//! renewal when the clock moves forward, revocation of deleted certificate users.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use moat::crd::{MqttBroker, MqttUser};

use crate::harness::*;

const T: Duration = Duration::from_secs(90);

fn text(s: &Secret, key: &str) -> String {
    String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

fn example(f: &str) -> String {
    std::fs::read_to_string(repo().join(f)).unwrap()
}

async fn apply_examples(client: &kube::Client, ns: &str) {
    for f in ["examples/broker-production.yaml", "examples/user-certificate.yaml", "examples/user-password.yaml"] {
        apply_yaml(client, ns, &example(f)).await;
    }
}

#[tokio::test]
async fn certificates_are_owned_renewed_when_due_and_revoked_on_deletion() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "pki").await;
    let mut op = Operator::start(&ns.name, OperatorOpts::default());
    apply_examples(&client, &ns.name).await;
    let broker: MqttBroker = wait_condition(&client, &ns.name, "plant-b", "Ready", "True", T).await;
    let user: MqttUser = wait_condition(&client, &ns.name, "gateway-1", "Ready", "True", T).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);

    // owned: CA and server Secrets by the broker, the client certificate by the user
    let uid = |o: &Option<String>| o.clone().unwrap();
    for (secret, owner) in [
        ("plant-b-ca", uid(&broker.metadata.uid)),
        ("plant-b-tls", uid(&broker.metadata.uid)),
        ("gateway-1-mqtt-tls", uid(&user.metadata.uid)),
    ] {
        let s = secrets.get(secret).await.unwrap();
        assert!(s.metadata.owner_references.unwrap().iter().any(|o| o.uid == owner), "{secret} not owned");
    }
    let client_secret = secrets.get("gateway-1-mqtt-tls").await.unwrap();
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(client_secret.data.as_ref().unwrap().contains_key(key), "{key}");
    }

    // the CA private key never leaves <broker>-ca
    let ca_key = text(&secrets.get("plant-b-ca").await.unwrap(), "ca.key");
    let key_body: String = ca_key.lines().filter(|l| !l.starts_with("-----")).collect();
    for s in secrets.list(&Default::default()).await.unwrap().items {
        if s.metadata.name.as_deref() == Some("plant-b-ca") {
            continue;
        }
        let all: String =
            s.data.iter().flatten().map(|(_, v)| String::from_utf8_lossy(&v.0).replace('\n', "")).collect();
        assert!(!all.contains(&key_body), "the CA key appears in Secret {:?}", s.metadata.name);
    }
    let status_json = serde_json::to_string(&broker.status).unwrap() + &serde_json::to_string(&user.status).unwrap();
    assert!(!status_json.contains("PRIVATE KEY"));

    // move the operator's clock into the renewal window of server and client certificates
    // (both 2160h with renewBefore 360h), not the CA's (8760h / 720h)
    let server_serial =
        broker.status.as_ref().unwrap().certificates.as_ref().unwrap().server.as_ref().unwrap().serial.clone();
    let client_serial = user.status.as_ref().unwrap().certificate.as_ref().unwrap().serial.clone();
    let server_pem = text(&secrets.get("plant-b-tls").await.unwrap(), "tls.crt");
    op.stop();
    let op = Operator::start(
        &ns.name,
        OperatorOpts { args: vec!["--unsafe-clock-offset".into(), "1900h".into()], ..Default::default() },
    );
    let renewed: MqttBroker = eventually(T, "a renewed server certificate", || async {
        let b: MqttBroker = get(&client, &ns.name, "plant-b").await?;
        let s = b.status.as_ref()?.certificates.as_ref()?.server.as_ref()?.serial.clone();
        (s != server_serial).then_some(b)
    })
    .await;
    let certs = renewed.status.as_ref().unwrap().certificates.as_ref().unwrap();
    assert!(
        certs.server.as_ref().unwrap().not_after.as_ref().unwrap().0
            > broker
                .status
                .as_ref()
                .unwrap()
                .certificates
                .as_ref()
                .unwrap()
                .server
                .as_ref()
                .unwrap()
                .not_after
                .as_ref()
                .unwrap()
                .0
    );
    assert_ne!(
        text(&secrets.get("plant-b-tls").await.unwrap(), "tls.crt"),
        server_pem,
        "the server Secret was not renewed"
    );
    assert_eq!(certs.ca_rollover.as_deref(), Some("Stable"), "the CA is not due yet");
    eventually(T, "a renewed client certificate", || async {
        let u: MqttUser = get(&client, &ns.name, "gateway-1").await?;
        (u.status.as_ref()?.certificate.as_ref()?.serial != client_serial).then_some(())
    })
    .await;
    eventually(T, "renewal Events", || async {
        let b = events_for(&client, &ns.name, "plant-b").await;
        let u = events_for(&client, &ns.name, "gateway-1").await;
        (b.iter().any(|(r, _)| r == "ServerCertificateRenewed") && u.iter().any(|(r, _)| r == "CertificateRenewed"))
            .then_some(())
    })
    .await;

    // deleting the certificate user revokes its certificate (CRL) from the ledger: no finalizer,
    // so stripping one could never keep a certificate valid
    let serial = eventually(T, "the current client serial", || async {
        get::<MqttUser>(&client, &ns.name, "gateway-1").await?.status?.certificate?.serial
    })
    .await;
    let users: Api<MqttUser> = Api::namespaced(client.clone(), &ns.name);
    users.delete("gateway-1", &Default::default()).await.unwrap();
    eventually(T, "the user gone", || async {
        users.get_opt("gateway-1").await.ok().flatten().is_none().then_some(())
    })
    .await;
    eventually(T, "the serial in the CRL", || async {
        let crl = text(&secrets.get("plant-b-tls").await.ok()?, "crl.pem");
        moat::pki::parse_crls(&crl).ok()?.iter().any(|c| c.revoked_serials.contains(&serial)).then_some(())
    })
    .await;
    // the Event is recorded after the CRL is written: wait for it as for any other state
    eventually(T, "a CertificateRevoked Event naming the user", || async {
        let b = events_for(&client, &ns.name, "plant-b").await;
        b.iter().any(|(r, n)| r == "CertificateRevoked" && n.contains("gateway-1")).then_some(())
    })
    .await;
    drop(op);
}

/// Status writes are merge patches of what changed: a field moat no longer sets must still leave
/// the live status (server-side apply removed it by ownership; a merge patch needs its `null`).
#[tokio::test]
async fn a_user_that_drops_certificate_authentication_loses_the_certificate_fields_of_its_status() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "pki-drop").await;
    let _op = Operator::start(&ns.name, OperatorOpts::default());
    apply_yaml(&client, &ns.name, &example("examples/broker-production.yaml")).await;
    let both = example("examples/user-certificate.yaml")
        .replace("  authentication:\n", "  authentication:\n    password: {}\n");
    apply_yaml(&client, &ns.name, &both).await;
    let user: MqttUser = wait_condition(&client, &ns.name, "gateway-1", "Ready", "True", T).await;
    let status = user.status.unwrap();
    assert!(status.certificate.is_some() && status.certificate_secret.is_some(), "{status:?}");

    let users: Api<MqttUser> = Api::namespaced(client.clone(), &ns.name);
    let drop = serde_json::json!({"spec": {"authentication": {"certificate": null}}});
    users.patch("gateway-1", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&drop)).await.unwrap();
    let status = eventually(T, "the certificate fields gone from the live status", || async {
        let u = users.get("gateway-1").await.ok()?;
        let ready = condition(&u, "Ready").is_some_and(|c| c.0 == "True");
        let s = u.status?;
        (ready && s.observed_generation == u.metadata.generation && s.certificate.is_none()).then_some(s)
    })
    .await;
    assert_eq!(status.certificate_secret, None, "{status:?}");
    assert_eq!(status.authentication.as_deref(), Some("Password"), "{status:?}");
}
