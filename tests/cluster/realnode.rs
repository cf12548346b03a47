//! The broker for real: pods on the real kubelet node (hack/local-node.sh) from images built here
//! (hack/images.sh), clients dialling pod IPs, the operator probing every replica.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, Patch, PatchParams};
use moat::crd::{CheckResult, MqttBroker, MqttUser};

use crate::harness::*;
use crate::mqtt::{Conn, assert_refused, connect, connect_ok};

const T: Duration = Duration::from_secs(180);

/// A broker with a password listener and a certificate listener.
fn two_listeners(replicas: u32, extra: &str) -> String {
    format!(
        "  replicas: {replicas}\n  listeners:\n  - {{name: mqtts, port: 8883}}\n  - {{name: mtls, port: 8884, authentication: Certificate}}\n{extra}"
    )
}

fn users_yaml(broker: &str, names: &[&str], cert: &[&str]) -> String {
    let mut out = String::new();
    for n in names {
        out.push_str(&format!(
            "apiVersion: mqtt.moat.dev/v1alpha1\nkind: MqttUser\nmetadata: {{name: {n}}}\nspec: {{brokerRef: {{name: {broker}}}}}\n---\n"
        ));
    }
    for n in cert {
        out.push_str(&format!(
            "apiVersion: mqtt.moat.dev/v1alpha1\nkind: MqttUser\nmetadata: {{name: {n}}}\nspec: {{brokerRef: {{name: {broker}}}, authentication: {{certificate: {{}}}}}}\n---\n"
        ));
    }
    out
}

async fn password_of(client: &kube::Client, ns: &str, user: &str) -> String {
    secret_key(client, ns, &format!("{user}-mqtt-credentials"), "password").await
}

async fn cert_of(client: &kube::Client, ns: &str, user: &str) -> (String, String) {
    let s = format!("{user}-mqtt-tls");
    (secret_key(client, ns, &s, "tls.crt").await, secret_key(client, ns, &s, "tls.key").await)
}

/// Waits until `conn` logs in (new users reach the pod through the agent within seconds).
async fn until_connects(conn: &Conn, what: &str) -> crate::mqtt::Session {
    let deadline = Instant::now() + T;
    loop {
        match connect(conn).await {
            Ok(s) => return s,
            Err(e) => assert!(Instant::now() < deadline, "{what} never connected: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The broker runs for real: both replicas Running and Ready on the real node with the image built
/// from Debian's 2.0.21 (2.0.11 has catalogued CVEs: MOAT-UPD-001 would rightly fail), password and certificate users connect to every pod IP with the credentials
/// from their Secrets, the operator's probe reaches every replica (MOAT-TLS-005 and MOAT-AUTH-003
/// pass), every check passes (Compliant=True, nothing Unknown), and the broker's log lines reach
/// `kubectl logs` at once.
#[tokio::test]
async fn a_hardened_broker_runs_on_the_real_node_and_every_check_passes() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "real").await;
    let _op = Operator::start(&ns.name, real_node_operator());
    apply_yaml(&client, &ns.name, &real_broker("plant-r", "2.0.21", None, &two_listeners(2, ""))).await;
    apply_yaml(&client, &ns.name, &users_yaml("plant-r", &["sensor-1", "sensor-2"], &["gateway-1"])).await;
    let broker: MqttBroker = wait_condition(&client, &ns.name, "plant-r", "Ready", "True", T).await;
    let pods = live_pods(&client, &ns.name, "plant-r", 2).await;
    let ca = trust_bundle(&client, &ns.name, "plant-r").await;
    wait_condition::<MqttUser>(&client, &ns.name, "gateway-1", "Ready", "True", T).await;
    let (cert, key) = cert_of(&client, &ns.name, "gateway-1").await;
    for pod in &pods {
        for user in ["sensor-1", "sensor-2"] {
            let pw = password_of(&client, &ns.name, user).await;
            let conn = Conn { credentials: Some((user.into(), pw)), ..pod_conn(pod, 8883, &ca) };
            let mut s = until_connects(&conn, &format!("{user} on {}", pod.name)).await;
            assert!(!s.is_closed());
            let _ = s.publish(&format!("devices/{user}/t"), b"x").await;
        }
        let mtls = Conn { client_cert: Some((cert.clone(), key.clone())), ..pod_conn(pod, 8884, &ca) };
        drop(until_connects(&mtls, &format!("gateway-1 on {}", pod.name)).await);
        assert_refused(&pod_conn(pod, 8883, &ca), &format!("anonymous on {}", pod.name)).await;
    }
    assert_eq!(broker.spec.version, "2.0.21");

    // every check passes on the live broker: the probe reached both replicas
    let b: MqttBroker = wait_condition(&client, &ns.name, "plant-r", "Compliant", "True", T).await;
    let c = b.status.as_ref().unwrap().compliance.clone().unwrap();
    assert!(c.checks.iter().all(|x| x.result == CheckResult::Pass), "{:#?}", c.checks);
    for id in moat::compliance::PROBED_CHECKS {
        let check = c.checks.iter().find(|x| x.id == *id).unwrap();
        for pod in &pods {
            assert!(check.message.contains(&pod.name), "{id} did not probe {}: {}", pod.name, check.message);
        }
    }
    // the attacks reached each listener of each pod: plaintext on both TLS ports, a foreign CA's
    // certificate and the revoked canary on the certificate listener, an oversize CONNECT
    let message = |id: &str| c.checks.iter().find(|x| x.id == id).unwrap().message.clone();
    for port in ["8883", "8884"] {
        let plaintext = format!("port {port} gave no CONNACK to a plaintext CONNECT");
        assert_eq!(message("MOAT-TLS-005").matches(&plaintext).count(), 2, "{}", message("MOAT-TLS-005"));
    }
    let foreign = "port 8884 refused a client certificate from a foreign CA";
    assert_eq!(message("MOAT-AUTH-006").matches(foreign).count(), 2, "{}", message("MOAT-AUTH-006"));
    let canary = "port 8884 refused moat's revoked canary certificate";
    assert_eq!(message("MOAT-TLS-008").matches(canary).count(), 2, "{}", message("MOAT-TLS-008"));
    let oversize = "port 8883 dropped a CONNECT declaring 1048577 bytes";
    assert_eq!(message("MOAT-CFG-008").matches(oversize).count(), 2, "{}", message("MOAT-CFG-008"));
    // the canary logins: in no ACL, refused their PUBLISH and sent nothing; a second user with
    // the first one's client id leaves its session up; an oversize PUBLISH after login is dropped
    let no_grants = "port 8883: a login in no ACL was refused its PUBLISH (PUBACK not authorized) and received only what the rules for all users grant on '#' and '$SYS/#'";
    assert_eq!(message("MOAT-ACL-005").matches(no_grants).count(), 2, "{}", message("MOAT-ACL-005"));
    let takeover =
        "port 8883: a second user logging in with the client id of another user's session left that session up";
    assert_eq!(message("MOAT-AUTH-007").matches(takeover).count(), 2, "{}", message("MOAT-AUTH-007"));
    let after_login = "port 8883 dropped a logged-in client's PUBLISH declaring 1048577 bytes";
    assert_eq!(message("MOAT-CFG-008").matches(after_login).count(), 2, "{}", message("MOAT-CFG-008"));
    // the outsider (a namespace no MqttFirewall admits) was blocked by the network at every
    // listener of every pod
    let outside = format!("by the network from {OUTSIDER_NS}/");
    assert_eq!(message("MOAT-FW-004").matches(&outside).count(), 4, "{}", message("MOAT-FW-004"));

    // log lines reach `kubectl logs` at once (log_dest stderr: 2.0.11 block-buffers stdout;
    // with use_username_as_clientid the line names the user, so count sensor-1's lines)
    let logs = || {
        let out = kubectl(&["-n", &ns.name, "logs", &pods[0].name, "-c", "mosquitto"]);
        String::from_utf8_lossy(&out.stdout).matches("u'sensor-1'").count()
    };
    let lines_before = logs();
    let before = Instant::now();
    let pw = password_of(&client, &ns.name, "sensor-1").await;
    let conn = Conn { credentials: Some(("sensor-1".into(), pw)), ..pod_conn(&pods[0], 8883, &ca) };
    drop(connect_ok(&conn, "sensor-1").await);
    let seen = eventually(Duration::from_secs(10), "the connection in kubectl logs", || async {
        (logs() > lines_before).then_some(before.elapsed())
    })
    .await;
    println!("connection line in kubectl logs after {} ms", seen.as_millis());
    assert!(seen < Duration::from_secs(5));

    // client ids no longer bound to usernames (a listener setting: the pods are replaced): the
    // canary's takeover attempt on the new pods fails MOAT-AUTH-007 with the evidence
    let out = kubectl(&[
        "-n",
        &ns.name,
        "patch",
        "mqb",
        "plant-r",
        "--type=merge",
        "-p",
        r#"{"spec":{"security":{"useUsernameAsClientId":false}}}"#,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let failed = eventually(T, "MOAT-AUTH-007 failing on the live broker", || async {
        let b: MqttBroker = get(&client, &ns.name, "plant-r").await?;
        let c = b.status?.compliance?.checks.into_iter().find(|x| x.id == "MOAT-AUTH-007")?;
        (c.result == CheckResult::Fail).then_some(c.message)
    })
    .await;
    println!("MOAT-AUTH-007 with useUsernameAsClientId false: {failed}");
    assert!(failed.contains("ended that session") && failed.contains("can be taken over"), "{failed}");
}

/// A deleted password user: new connections are refused and its live session is ended by the
/// reload within seconds (no pod restart: same container, restartCount 0).
#[tokio::test]
async fn a_deleted_user_is_refused_and_its_live_session_ends_without_a_restart() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "realdel").await;
    let op = Operator::start(&ns.name, real_node_operator());
    apply_yaml(&client, &ns.name, &real_broker("plant-r", "2.0.11", None, "")).await;
    apply_yaml(&client, &ns.name, &users_yaml("plant-r", &["leaver", "stayer"], &[])).await;
    wait_condition::<MqttBroker>(&client, &ns.name, "plant-r", "Ready", "True", T).await;
    wait_condition::<MqttUser>(&client, &ns.name, "leaver", "Ready", "True", T).await;
    let pod = live_pods(&client, &ns.name, "plant-r", 1).await.remove(0);
    let ca = trust_bundle(&client, &ns.name, "plant-r").await;
    let leaver = Conn {
        credentials: Some(("leaver".into(), password_of(&client, &ns.name, "leaver").await)),
        ..pod_conn(&pod, 8883, &ca)
    };
    let mut live = until_connects(&leaver, "leaver").await;
    let stayer = Conn {
        credentials: Some(("stayer".into(), password_of(&client, &ns.name, "stayer").await)),
        ..pod_conn(&pod, 8883, &ca)
    };
    let mut other = until_connects(&stayer, "stayer").await;

    let started = Instant::now();
    Api::<MqttUser>::namespaced(client.clone(), &ns.name).delete("leaver", &Default::default()).await.unwrap();
    let closed = live.wait_closed(T).await;
    let took = started.elapsed();
    assert!(closed.is_some(), "the deleted user's session was never closed");
    println!("kubectl delete mqttuser -> live session closed: {} ms", took.as_millis());
    // the operator nudges the pod so the kubelet refreshes its Secret volumes at once (without
    // that, the kubelet's periodic sync took 60-90 s)
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_refused(&leaver, "the deleted user").await;
    assert!(!other.is_closed(), "another user's session was dropped");
    let _ = other.publish("devices/stayer/t", b"x").await;
    let after = live_pods(&client, &ns.name, "plant-r", 1).await.remove(0);
    assert_eq!(
        (after.container_id.as_str(), after.restarts),
        (pod.container_id.as_str(), 0),
        "the broker was restarted"
    );

    // the operator times the revocation from its pods' agents (attestation), and it is within
    // what the client saw
    let b: MqttBroker = eventually(T, "the revocation timed in status", || async {
        let b: MqttBroker = get(&client, &ns.name, "plant-r").await?;
        let last = b.status.as_ref()?.revocation.as_ref()?.last.as_ref()?;
        (last.what == "password of leaver" && last.seconds.is_some()).then_some(b)
    })
    .await;
    let st = b.status.unwrap();
    let last = st.revocation.unwrap().last.unwrap();
    println!("status.revocation.last: {last:?}");
    assert!(u64::from(last.seconds.unwrap()) <= took.as_secs() + 1, "{last:?} vs {took:?}");
    let files = st.files.unwrap();
    assert_eq!(files.current, "1/1", "{files:?}");
    let checks = st.compliance.unwrap().checks;
    for id in ["MOAT-AUD-003", "MOAT-AUTH-005"] {
        let c = checks.iter().find(|c| c.id == id).unwrap();
        assert_eq!(c.result, CheckResult::Pass, "{c:?}");
    }
    // (the metric is set right after the status write)
    eventually(Duration::from_secs(10), "the revocation metric", || async {
        op.metrics().contains("moat_revocation_seconds{").then_some(())
    })
    .await;
}

/// Certificate rotation on the running container: a renewed server certificate and a CA rollover
/// (requested by annotation) are served without a restart (same container ID, restartCount 0);
/// certificates of the old CA keep working through the overlap; a revoked client certificate is
/// refused at the handshake.
#[tokio::test]
async fn server_renewal_and_ca_rollover_reach_the_running_container() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "realpki").await;
    let _op = Operator::start(&ns.name, real_node_operator());
    let extra = "  tls: {trustPropagationDelay: 15s}\n  security: {revokedSessions: BlockUntilExpiry}\n";
    apply_yaml(&client, &ns.name, &real_broker("plant-r", "2.0.11", None, &two_listeners(1, extra))).await;
    apply_yaml(&client, &ns.name, &users_yaml("plant-r", &["sensor-1"], &["gateway-1", "gateway-2"])).await;
    let b: MqttBroker = wait_condition(&client, &ns.name, "plant-r", "Ready", "True", T).await;
    wait_condition::<MqttUser>(&client, &ns.name, "gateway-2", "Ready", "True", T).await;
    let pod = live_pods(&client, &ns.name, "plant-r", 1).await.remove(0);
    let ca1 = trust_bundle(&client, &ns.name, "plant-r").await;
    let serial0 = b.status.unwrap().certificates.unwrap().server.unwrap().serial.unwrap();
    assert_eq!(served_serial(&pod, 8883, &ca1).await.as_deref(), Some(serial0.as_str()));
    let brokers: Api<MqttBroker> = Api::namespaced(client.clone(), &ns.name);
    let annotate = |k: &'static str, v: &'static str| {
        let brokers = brokers.clone();
        async move {
            let patch = serde_json::json!({"metadata": {"annotations": {k: v}}});
            brokers.patch("plant-r", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        }
    };

    // 1. renew the server certificate: the running broker serves the new one
    annotate("mqtt.moat.dev/renew-server-certificate", "1").await;
    let serial1 = eventually(T, "a new server certificate served", || async {
        let s = served_serial(&pod, 8883, &ca1).await?;
        (s != serial0).then_some(s)
    })
    .await;
    // the pod can serve the new certificate before the reconcile that wrote it has written its
    // status (the audit and the attestation come first): wait for the status to say the same
    eventually(T, "the served serial in status", || async {
        let b: MqttBroker = get(&client, &ns.name, "plant-r").await?;
        (b.status?.certificates?.server?.serial? == serial1).then_some(())
    })
    .await;

    // 2. roll the CA over: introduced (both trusted), activated (new CA signs), old retired
    let (old_cert, old_key) = cert_of(&client, &ns.name, "gateway-1").await;
    annotate("mqtt.moat.dev/rotate-ca", "1").await;
    let ca2 = eventually(T, "a two-CA bundle", || async {
        let bundle = trust_bundle(&client, &ns.name, "plant-r").await;
        (bundle.matches("BEGIN CERTIFICATE").count() == 2).then_some(bundle)
    })
    .await;
    // the old client certificate still connects during the overlap (the broker trusts both CAs)
    let old = Conn { client_cert: Some((old_cert.clone(), old_key.clone())), ..pod_conn(&pod, 8884, &ca2) };
    drop(until_connects(&old, "the old CA's client certificate during the overlap").await);
    // the server certificate is re-issued by the new CA and served, still without a restart
    let serial2 = eventually(T, "a server certificate of the new CA served", || async {
        let s = served_serial(&pod, 8883, &ca2).await?;
        (s != serial1).then_some(s)
    })
    .await;
    let (new_cert, new_key) = eventually(T, "gateway-1 re-issued by the new CA", || async {
        let (c, k) = cert_of(&client, &ns.name, "gateway-1").await;
        (c != old_cert).then_some((c, k))
    })
    .await;
    let new = Conn { client_cert: Some((new_cert, new_key)), ..pod_conn(&pod, 8884, &ca2) };
    drop(until_connects(&new, "the new CA's client certificate").await);
    println!("server serials: {serial0} -> {serial1} -> {serial2}");

    // 3. revoke a client certificate (its user deleted): refused at the handshake
    let (g2c, g2k) = cert_of(&client, &ns.name, "gateway-2").await;
    let g2 = Conn { client_cert: Some((g2c, g2k)), ..pod_conn(&pod, 8884, &ca2) };
    drop(until_connects(&g2, "gateway-2 before its revocation").await);
    Api::<MqttUser>::namespaced(client.clone(), &ns.name).delete("gateway-2", &Default::default()).await.unwrap();
    eventually(T, "gateway-2 refused", || async { connect(&g2).await.is_err().then_some(()) }).await;

    let after = live_pods(&client, &ns.name, "plant-r", 1).await.remove(0);
    assert_eq!(
        (after.container_id.as_str(), after.restarts),
        (pod.container_id.as_str(), 0),
        "the broker was restarted"
    );
}

/// Red team 7: revoking a certificate whose owner lost the identity ends its live session within a
/// bounded time (a coalesced rolling restart), and its username is handed to a new MqttUser only
/// after that: the old session never inherits the new user's rights.
#[tokio::test]
async fn a_revoked_certificates_live_session_ends_before_its_username_is_reused() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "realrev").await;
    let _op = Operator::start(&ns.name, real_node_operator());
    apply_yaml(&client, &ns.name, &real_broker("plant-r", "2.0.11", None, &two_listeners(1, ""))).await;
    apply_yaml(&client, &ns.name, &users_yaml("plant-r", &[], &["alice"])).await;
    wait_condition::<MqttBroker>(&client, &ns.name, "plant-r", "Ready", "True", T).await;
    wait_condition::<MqttUser>(&client, &ns.name, "alice", "Ready", "True", T).await;
    let pod = live_pods(&client, &ns.name, "plant-r", 1).await.remove(0);
    let ca = trust_bundle(&client, &ns.name, "plant-r").await;
    let (c, k) = cert_of(&client, &ns.name, "alice").await;
    let alice = Conn { client_cert: Some((c, k)), ..pod_conn(&pod, 8884, &ca) };
    let mut live = until_connects(&alice, "alice's certificate").await;

    let users: Api<MqttUser> = Api::namespaced(client.clone(), &ns.name);
    let started = Instant::now();
    users.delete("alice", &Default::default()).await.unwrap();
    // a new MqttUser claims the username at once: it must wait for the old session to end
    apply_yaml(&client, &ns.name, "apiVersion: mqtt.moat.dev/v1alpha1\nkind: MqttUser\nmetadata: {name: alice-2}\nspec: {brokerRef: {name: plant-r}, username: alice}\n").await;
    let q = eventually(T, "alice-2 quarantined", || async {
        let u: MqttUser = get(&client, &ns.name, "alice-2").await?;
        let (s, r, m) = condition(&u, "Ready")?;
        (s == "False" && r == "UsernameQuarantined").then_some(m)
    })
    .await;
    assert!(q.contains("restarted"), "{q}");
    let closed = live.wait_closed(T).await;
    let ended = started.elapsed();
    assert!(closed.is_some(), "the revoked session never ended");
    println!("kubectl delete mqttuser -> revoked certificate's live session ended: {} ms", ended.as_millis());
    assert!(ended < Duration::from_secs(150), "took {ended:?}");
    wait_condition::<MqttUser>(&client, &ns.name, "alice-2", "Ready", "True", T).await;
    let handed = started.elapsed();
    println!("... and the username handed to the new MqttUser after {} ms", handed.as_millis());
    // the revoked certificate is refused at the handshake on the restarted pod
    let pod2 = live_pods(&client, &ns.name, "plant-r", 1).await.remove(0);
    let again = Conn { host: pod2.ip.clone(), server_name: Some(pod2.server_name.clone()), ..alice.clone() };
    assert!(connect(&again).await.is_err(), "the revoked certificate logged in again");
    // the broker's status says so too (the user controller can hand the username on from the
    // broker's published plan before the broker's own status write lands: wait for it)
    eventually(T, "status.revocation: sessions ended, no restart pending", || async {
        let b: MqttBroker = get(&client, &ns.name, "plant-r").await?;
        let rev = b.status?.revocation?;
        (!rev.restart_pending && rev.sessions_ended_at.is_some()).then_some(())
    })
    .await;
}

/// Pod name → the tag of its broker container's image (only pods not being deleted).
async fn tags(client: &kube::Client, ns: &str, broker: &str) -> std::collections::BTreeMap<String, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let images = broker_images(&pods, broker).await;
    images.into_iter().filter_map(|(pod, image)| Some((pod, image.rsplit_once(':')?.1.to_string()))).collect()
}

/// Keeps logging in to any pod of the broker until stopped; returns the longest time without a
/// successful login (pod IPs are re-read on every try: pods are replaced during an upgrade).
fn watch_availability(
    client: kube::Client,
    ns: String,
    broker: &'static str,
    user: Conn,
) -> (tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<Duration>) {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client, &ns);
        let mut last_ok = Instant::now();
        let mut worst = Duration::ZERO;
        while !*stopped.borrow() {
            let list =
                pods.list(&kube::api::ListParams::default().labels(&format!("mqtt.moat.dev/broker={broker}"))).await;
            let mut ok = false;
            for p in list.map(|l| l.items).unwrap_or_default() {
                let (Some(ip), Some(name)) = (p.status.and_then(|s| s.pod_ip), p.metadata.name) else { continue };
                let conn =
                    Conn { host: ip, server_name: Some(format!("{name}.{broker}-headless.{ns}.svc")), ..user.clone() };
                if tokio::time::timeout(Duration::from_secs(3), connect(&conn)).await.is_ok_and(|r| r.is_ok()) {
                    ok = true;
                    break;
                }
            }
            if ok {
                last_ok = Instant::now();
            }
            worst = worst.max(last_ok.elapsed());
            let _ = tokio::time::timeout(Duration::from_millis(300), stopped.changed()).await;
        }
        worst
    });
    (stop, task)
}

/// Rolling upgrades across real images, pod by pod behind the health gate: 2.0.11 → 2.0.21
/// (Debian trixie) → 2.1.2 (sid), while a client keeps logging in (one pod of two is always up);
/// an image whose broker cannot start is rolled back and the broker stays available.
#[tokio::test]
async fn rolling_upgrades_across_real_images_and_a_broken_image_rolls_back() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "realupg").await;
    let _op = Operator::start(&ns.name, real_node_operator());
    let upgrade = "  replicas: 2\n  upgrade: {policy: Manual, rolloutTimeout: 60s, readyGracePeriod: 5s}\n";
    apply_yaml(&client, &ns.name, &real_broker("plant-u", "2.0.11", None, upgrade)).await;
    apply_yaml(&client, &ns.name, &users_yaml("plant-u", &["sensor-1"], &[])).await;
    wait_condition::<MqttBroker>(&client, &ns.name, "plant-u", "Ready", "True", T).await;
    wait_condition::<MqttUser>(&client, &ns.name, "sensor-1", "Ready", "True", T).await;
    live_pods(&client, &ns.name, "plant-u", 2).await;
    let ca = trust_bundle(&client, &ns.name, "plant-u").await;
    let user = Conn {
        port: 8883,
        ca: Some(ca),
        credentials: Some(("sensor-1".into(), password_of(&client, &ns.name, "sensor-1").await)),
        ..Default::default()
    };
    let brokers: Api<MqttBroker> = Api::namespaced(client.clone(), &ns.name);
    let (stop, watcher) = watch_availability(client.clone(), ns.name.clone(), "plant-u", user.clone());
    for version in ["2.0.21", "2.1.2"] {
        let started = Instant::now();
        let patch = serde_json::json!({"spec": {"version": version}});
        brokers.patch("plant-u", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        eventually(Duration::from_secs(300), &format!("every pod on {version}"), || async {
            let b: MqttBroker = get(&client, &ns.name, "plant-u").await?;
            let st = b.status?;
            // the upgrade to this version completed (not the previous one: a stale Completed once
            // let the StatefulSet replace the pods without the health gate)
            let up = st.upgrade.as_ref()?;
            let done = st.version?.current.as_deref() == Some(version)
                && up.phase == "Completed"
                && up.to_version.as_deref() == Some(version)
                && condition(&get::<MqttBroker>(&client, &ns.name, "plant-u").await?, "Ready")?.0 == "True";
            let t = tags(&client, &ns.name, "plant-u").await;
            (done && t.len() == 2 && t.values().all(|v| v == version)).then_some(())
        })
        .await;
        live_pods(&client, &ns.name, "plant-u", 2).await;
        println!("upgrade to {version}: {} s", started.elapsed().as_secs());
    }
    let _ = stop.send(true);
    let worst = watcher.await.unwrap();
    println!("longest time without a successful login during the upgrades: {} ms", worst.as_millis());
    assert!(worst < Duration::from_secs(20), "the broker was unavailable for {worst:?}");
    let events = events_for(&client, &ns.name, "plant-u").await;
    // pod by pod: each pod of each upgrade verified on its own before the next was touched
    let verified: std::collections::BTreeSet<&str> =
        events.iter().filter(|(r, _)| r == "PodVerifying").map(|(_, m)| m.as_str()).collect();
    assert_eq!(verified.len(), 4, "not pod by pod: {events:?}");

    // a version whose broker cannot start (libssl missing): rolled back, still serving
    let broken = "  replicas: 2\n  upgrade: {policy: Manual, rolloutTimeout: 30s, readyGracePeriod: 5s}\n";
    apply_yaml(&client, &ns.name, &real_broker("plant-x", "2.0.11", Some("moat.local/mosquitto-broken"), broken)).await;
    apply_yaml(&client, &ns.name, &users_yaml("plant-x", &["sensor-x"], &[])).await;
    wait_condition::<MqttBroker>(&client, &ns.name, "plant-x", "Ready", "True", T).await;
    wait_condition::<MqttUser>(&client, &ns.name, "sensor-x", "Ready", "True", T).await;
    live_pods(&client, &ns.name, "plant-x", 2).await;
    let ca = trust_bundle(&client, &ns.name, "plant-x").await;
    let sx = Conn {
        port: 8883,
        ca: Some(ca),
        credentials: Some(("sensor-x".into(), password_of(&client, &ns.name, "sensor-x").await)),
        ..Default::default()
    };
    let (stop, watcher) = watch_availability(client.clone(), ns.name.clone(), "plant-x", sx);
    let patch = serde_json::json!({"spec": {"version": "2.0.21"}});
    brokers.patch("plant-x", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let failed: MqttBroker = eventually(Duration::from_secs(300), "the broken upgrade rolled back", || async {
        let b: MqttBroker = get(&client, &ns.name, "plant-x").await?;
        (b.status.as_ref()?.upgrade.as_ref()?.phase == "Failed").then_some(b)
    })
    .await;
    let (_, reason, message) = condition(&failed, "Ready").unwrap();
    assert_eq!(reason, "UpgradeFailed", "{message}");
    eventually(T, "every pod back on 2.0.11", || async {
        let t = tags(&client, &ns.name, "plant-x").await;
        (t.len() == 2 && t.values().all(|v| v == "2.0.11")).then_some(())
    })
    .await;
    live_pods(&client, &ns.name, "plant-x", 2).await;
    let _ = stop.send(true);
    let worst = watcher.await.unwrap();
    println!("longest time without a successful login during the failed upgrade: {} ms", worst.as_millis());
    assert!(worst < Duration::from_secs(20), "the broker was unavailable for {worst:?}");
}

/// The operator as users install it: the chart's Deployment from the image built here, running on
/// the real node with the chart's least-privilege RBAC, reconciles a broker whose pods run there too.
#[tokio::test]
async fn the_operator_runs_as_the_charts_deployment_and_reconciles_a_broker() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "realop").await;
    let opns = format!("{}-op", ns.name);
    let image = moat_image();
    let (repo_, tag) = image.rsplit_once(':').unwrap();
    let (release, chart) = (format!("moat-{}", &ns.name[ns.name.len() - 6..]), repo().join("charts/moat"));
    let (image_repo, image_tag, watch) =
        (format!("image.repository={repo_}"), format!("image.tag={tag}"), format!("watchNamespaces={{{}}}", ns.name));
    let mut args = vec!["install", &release, chart.to_str().unwrap(), "--namespace", &opns, "--create-namespace"];
    args.extend(["--skip-crds", "--set", &image_repo, "--set", &image_tag, "--set", "image.pullPolicy=Never"]);
    args.extend(["--set", &watch, "--set", "kubernetesApi.host=10.88.0.1", "--set", "kubernetesApi.port=16443"]);
    args.extend(REAL_NODE_HELM_VALUES);
    args.extend(["--wait", "--timeout", "180s"]);
    let out = helm(&args);
    assert!(out.status.success(), "helm install: {}", String::from_utf8_lossy(&out.stderr));
    let pods: Api<Pod> = Api::namespaced(client.clone(), &opns);
    let op = eventually(T, "the operator pod Ready on the real node", || async {
        let list = pods.list(&kube::api::ListParams::default().labels("app.kubernetes.io/name=moat")).await.ok()?;
        list.items.into_iter().find(|p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("moat-real-0")
                && p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
    })
    .await;
    apply_yaml(&client, &ns.name, &real_broker("plant-o", "2.0.11", None, "")).await;
    apply_yaml(&client, &ns.name, &users_yaml("plant-o", &["sensor-1"], &[])).await;
    wait_condition::<MqttBroker>(&client, &ns.name, "plant-o", "Ready", "True", T).await;
    wait_condition::<MqttUser>(&client, &ns.name, "sensor-1", "Ready", "True", T).await;
    let pod = live_pods(&client, &ns.name, "plant-o", 1).await.remove(0);
    let ca = trust_bundle(&client, &ns.name, "plant-o").await;
    let conn = Conn {
        credentials: Some(("sensor-1".into(), password_of(&client, &ns.name, "sensor-1").await)),
        ..pod_conn(&pod, 8883, &ca)
    };
    drop(until_connects(&conn, "sensor-1 through the in-cluster operator's broker").await);
    // the agent image is the operator's own image (the chart's default)
    let agent_image = get::<Pod>(&client, &ns.name, &pod.name)
        .await
        .unwrap()
        .spec
        .unwrap()
        .containers
        .into_iter()
        .find(|c| c.name == "moat-agent")
        .unwrap()
        .image
        .unwrap();
    assert_eq!(agent_image, image);
    let logs = kubectl(&["-n", &opns, "logs", op.metadata.name.as_deref().unwrap()]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.contains("plant-o"), "the operator pod did not log the broker: {logs}");
    let _ = helm(&["uninstall", &format!("moat-{}", &ns.name[ns.name.len() - 6..]), "--namespace", &opns, "--wait"]);
    let _ = kubectl(&["delete", "namespace", &opns, "--wait=false"]);
}

/// Runs `moat probe` (the moat image) against `ip:port` from a pod in `ns` on the real node and
/// returns whether it reached the listener (a refusal by the network policy is "no").
async fn reachable_from_pod(client: &kube::Client, ns: &str, name: &str, ip: &str, port: u16) -> bool {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "mqtt-client"}},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {"moat.dev/node-type": "real"},
            "tolerations": [{"key": "moat.dev/real-node", "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "probe", "image": moat_image(), "imagePullPolicy": "Never",
                // wait until the policy controller knows the new pod's address
                "args": ["probe", "--host", ip, "--port", port.to_string(), "--timeout", "3s", "--wait", "3s"],
                "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&Default::default(), &pod).await.unwrap();
    eventually(T, &format!("client pod {name} finished"), || async {
        let p = pods.get(name).await.ok()?;
        matches!(p.status?.phase.as_deref(), Some("Succeeded") | Some("Failed")).then_some(())
    })
    .await;
    let logs = pods.logs(name, &Default::default()).await.unwrap();
    let line = logs.lines().find(|l| l.starts_with("reachable")).unwrap_or_else(|| panic!("no report: {logs}"));
    line.ends_with("yes")
}

/// NetworkPolicies enforced for real (kube-router on the real node): a client pod in a namespace
/// that no MqttFirewall admits is refused by the network at the broker's listener; an
/// MqttFirewall admitting that namespace lets the next client pod in. (Traffic from the node
/// itself is always admitted by kube-router, so the test's own clients cannot show this.)
#[tokio::test]
async fn only_namespaces_an_mqtt_firewall_admits_reach_the_broker() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "realnp").await;
    let clients = TestNs::new(&client, "realnpc").await;
    kubectl(&["label", "namespace", &clients.name, "team=edge"]);
    let _op = Operator::start(&ns.name, real_node_operator());
    apply_yaml(&client, &ns.name, &real_broker("plant-n", "2.0.21", None, "")).await;
    wait_condition::<MqttBroker>(&client, &ns.name, "plant-n", "Ready", "True", T).await;
    let pod = live_pods(&client, &ns.name, "plant-n", 1).await.remove(0);
    assert!(!reachable_from_pod(&client, &clients.name, "before", &pod.ip, 8883).await, "default deny let a pod in");

    apply_yaml(
        &client,
        &ns.name,
        "apiVersion: mqtt.moat.dev/v1alpha1\nkind: MqttFirewall\nmetadata: {name: edge}\nspec:\n  brokerRef: {name: plant-n}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: edge}}}]\n    listeners: [mqtts]\n",
    )
    .await;
    let nps: Api<k8s_openapi::api::networking::v1::NetworkPolicy> = Api::namespaced(client.clone(), &ns.name);
    eventually(T, "the firewall's policy", || async { nps.get_opt("plant-n-fw-edge").await.ok().flatten() }).await;
    assert!(
        reachable_from_pod(&client, &clients.name, "after", &pod.ip, 8883).await,
        "the admitted namespace was refused"
    );

    // the operator's own attempt from outside every firewall (MOAT-FW-004): refused while only
    // moat's policies select the pods ...
    let fw004 = audited_check(&client, &ns.name, "plant-n", "MOAT-FW-004", "1").await;
    assert_eq!(fw004.result, CheckResult::Pass, "{}", fw004.message);
    assert!(
        fw004.message.contains(&format!("port 8883: blocked by the network from {OUTSIDER_NS}/")),
        "{}",
        fw004.message
    );

    // ... accepted, with the evidence, once someone adds a policy admitting everything
    let open = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-everything}\nspec:\n  podSelector: {matchLabels: {app.kubernetes.io/instance: plant-n}}\n  policyTypes: [Ingress]\n  ingress: [{}]\n";
    apply_yaml(&client, &ns.name, open).await;
    netpol_enforced(&ns.name, "allow-everything", true);
    let fw004 = audited_check(&client, &ns.name, "plant-n", "MOAT-FW-004", "2").await;
    println!("MOAT-FW-004 with allow-everything: {}", fw004.message);
    assert_eq!(fw004.result, CheckResult::Fail, "{}", fw004.message);
    assert!(fw004.message.contains(&format!("port 8883: a TCP connection from {OUTSIDER_NS}/")), "{}", fw004.message);
    let fw001 = audited_check(&client, &ns.name, "plant-n", "MOAT-FW-001", "2").await;
    assert!(fw001.result == CheckResult::Fail && fw001.message.contains("allow-everything"), "{}", fw001.message);

    // an MqttFirewall admitting every namespace admits the outsider too: its attempt proves
    // nothing, and the check says so instead of passing
    let _ = kubectl(&["-n", &ns.name, "delete", "networkpolicy", "allow-everything"]);
    apply_yaml(
        &client,
        &ns.name,
        "apiVersion: mqtt.moat.dev/v1alpha1\nkind: MqttFirewall\nmetadata: {name: everyone}\nspec:\n  brokerRef: {name: plant-n}\n  ingress:\n  - from: [{namespaceSelector: {}}]\n",
    )
    .await;
    eventually(T, "the firewall's policy", || async { nps.get_opt("plant-n-fw-everyone").await.ok().flatten() }).await;
    netpol_enforced(&ns.name, "plant-n-fw-everyone", true);
    let fw004 = audited_check(&client, &ns.name, "plant-n", "MOAT-FW-004", "3").await;
    assert_eq!(fw004.result, CheckResult::Unknown, "{}", fw004.message);
    assert!(fw004.message.contains("is admitted by plant-n-fw-everyone"), "{}", fw004.message);

    // both gone and lifted by the network: refused again
    let _ = kubectl(&["-n", &ns.name, "delete", "mqttfirewall", "everyone"]);
    eventually(T, "the firewall's policy deleted", || async {
        nps.get_opt("plant-n-fw-everyone").await.ok()?.is_none().then_some(())
    })
    .await;
    netpol_enforced(&ns.name, "allow-everything", false);
    netpol_enforced(&ns.name, "plant-n-fw-everyone", false);
    let fw004 = audited_check(&client, &ns.name, "plant-n", "MOAT-FW-004", "4").await;
    assert_eq!(fw004.result, CheckResult::Pass, "{}", fw004.message);
}

/// Asks for an audit (annotation value `round`) and returns check `id` from it.
async fn audited_check(
    client: &kube::Client,
    ns: &str,
    broker: &str,
    id: &str,
    round: &str,
) -> moat::crd::ComplianceCheck {
    let out = kubectl(&["-n", ns, "annotate", "mqb", broker, &format!("mqtt.moat.dev/audit={round}"), "--overwrite"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually(T, &format!("the audit {round} of {broker}"), || async {
        let b: MqttBroker = get(client, ns, broker).await?;
        let s = b.status?;
        (s.audit_request.as_deref() == Some(round)).then_some(())?;
        s.compliance?.checks.into_iter().find(|c| c.id == id)
    })
    .await
}

/// The pod's run directory (the emptyDir Mosquitto reads) as the agent of the same pod sees it:
/// the `moat` process whose view of `mosquitto.conf` is the same file as Mosquitto's (`mosquitto`).
fn writable_run_dir(mosquitto: i32) -> std::path::PathBuf {
    use std::os::unix::fs::MetadataExt;
    let view = |pid: &str| std::path::PathBuf::from(format!("/proc/{pid}/root{}", moat::render::RUN_DIR));
    let file = |dir: &std::path::Path| std::fs::metadata(dir.join("mosquitto.conf")).ok().map(|m| (m.dev(), m.ino()));
    let target = file(&view(&mosquitto.to_string())).expect("Mosquitto's mosquitto.conf");
    let agent = std::fs::read_dir("/proc").unwrap().filter_map(Result::ok).find_map(|e| {
        let pid = e.file_name().to_str()?.to_string();
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == "moat" && file(&view(&pid)) == Some(target)).then(|| view(&pid))
    });
    agent.expect("the agent beside Mosquitto")
}

/// Drift in the running pod that no configuration check can see: someone edits the files
/// Mosquitto runs (in the pod's emptyDir) to let anonymous clients in and to load a CRL that
/// revokes nothing, and restarts it. moat's Secrets, the agent's report and every configuration
/// check still say "hardened"; the next audit's attacks fail MOAT-AUTH-003 and MOAT-TLS-008 with
/// the evidence, and the broker is no longer Compliant.
#[tokio::test]
async fn a_broker_changed_by_hand_inside_its_pod_fails_the_live_checks_with_evidence() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "realdrift").await;
    let _op = Operator::start(&ns.name, real_node_operator());
    apply_yaml(&client, &ns.name, &real_broker("plant-d", "2.0.21", None, &two_listeners(1, ""))).await;
    wait_condition::<MqttBroker>(&client, &ns.name, "plant-d", "Compliant", "True", T).await;
    let pod = live_pods(&client, &ns.name, "plant-d", 1).await.remove(0);

    // the hand edit: the installed files (read-only for Mosquitto), written through the root of
    // the agent beside it, which mounts the same emptyDir read-write
    let pid = mosquitto_pid(&pod.container_id);
    let run = writable_run_dir(pid);
    let conf = std::fs::read_to_string(run.join("mosquitto.conf")).unwrap();
    // (client ids bound to usernames refuse a CONNECT without a username by themselves, so an
    // open broker needs both switched)
    let open = conf
        .replace("allow_anonymous false\n", "allow_anonymous true\n")
        .replace("use_username_as_clientid true\n", "use_username_as_clientid false\n");
    assert!(open.contains("allow_anonymous true\n") && open.contains("use_username_as_clientid false\n"), "{conf}");
    std::fs::write(run.join("mosquitto.conf"), open).unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns.name);
    let data: std::collections::BTreeMap<String, String> = secrets
        .get("plant-d-ca")
        .await
        .unwrap()
        .data
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
        .collect();
    let ca = moat::pki::CaSet::from_secret_data(&data).unwrap();
    let now = jiff::Timestamp::now();
    let empty = moat::pki::sign_crl(&ca.active, &[], 1 << 40, now, now + jiff::SignedDuration::from_hours(48)).unwrap();
    std::fs::write(run.join("tls/crl.pem"), empty).unwrap();
    // the CRL is re-read at a reload (SIGHUP), but use_username_as_clientid is not: restart the
    // container (the emptyDir and the agent stay; only a new pod would install moat's files again)
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).unwrap();
    eventually(T, "the broker container restarted and Ready", || async {
        let now = live_pods(&client, &ns.name, "plant-d", 1).await.remove(0);
        (now.restarts > pod.restarts).then_some(())
    })
    .await;

    let out = kubectl(&["-n", &ns.name, "annotate", "mqb", "plant-d", "mqtt.moat.dev/audit=drift", "--overwrite"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let b: MqttBroker = eventually(T, "the audit after the hand edit", || async {
        let b: MqttBroker = get(&client, &ns.name, "plant-d").await?;
        (b.status.as_ref()?.audit_request.as_deref() == Some("drift")).then_some(b)
    })
    .await;
    let c = b.status.as_ref().unwrap().compliance.clone().unwrap();
    let check = |id: &str| c.checks.iter().find(|x| x.id == id).unwrap().clone();
    for (id, evidence) in [
        ("MOAT-AUTH-003", "plant-d-0: anonymous CONNECT accepted"),
        ("MOAT-TLS-008", "plant-d-0: port 8884 accepted moat's revoked canary certificate"),
    ] {
        let x = check(id);
        println!("{id} after the hand edit: {}", x.message);
        assert_eq!(x.result, CheckResult::Fail, "{id}: {}", x.message);
        assert!(x.message.contains(evidence), "{id}: {}", x.message);
    }
    // what moat wrote is unchanged, so the configuration checks still pass: only the attack saw it
    for id in ["MOAT-AUTH-001", "MOAT-TLS-006", "MOAT-AUD-003"] {
        assert_eq!(check(id).result, CheckResult::Pass, "{id}: {}", check(id).message);
    }
    let (status, _, message) = condition(&b, "Compliant").unwrap();
    assert_eq!(status, "False", "{message}");
}

/// An issuer chain in a real cert-manager: a self-signed root, a CA `Certificate` from it, and the
/// CA `Issuer` `corporate` that signs with it (what a corporate PKI looks like to cert-manager).
const CORPORATE_PKI: &str = "\
apiVersion: cert-manager.io/v1
kind: Issuer
metadata: {name: bootstrap}
spec: {selfSigned: {}}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: corporate-ca}
spec:
  isCA: true
  commonName: Corporate Test CA
  secretName: corporate-ca
  privateKey: {algorithm: ECDSA, size: 256}
  issuerRef: {name: bootstrap, kind: Issuer}
---
apiVersion: cert-manager.io/v1
kind: Issuer
metadata: {name: corporate}
spec: {ca: {secretName: corporate-ca}}
";

/// `spec.tls.server.issuerRef` with a real cert-manager controller: the broker serves the
/// certificate cert-manager issued (its names, ECDSA P-256), clients verify it with the trust
/// bundle moat publishes (which gains the issuer's CA), every check passes, and a renewal by
/// cert-manager reaches the running broker without a restart. moat's own CA keeps the client
/// side: the TLS Secret's client trust (`ca.crt`) holds moat's CA only.
#[tokio::test]
async fn a_server_certificate_from_cert_manager_is_served_renewed_and_trusted() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "realcm").await;
    let cm = CertManager::start(&ns.name);
    apply_yaml(&client, &ns.name, CORPORATE_PKI).await;
    let op = Operator::start(&ns.name, real_node_operator());
    let issuer = "  tls: {server: {issuerRef: {name: corporate}}}\n";
    apply_yaml(&client, &ns.name, &real_broker("plant-m", "2.0.21", None, issuer)).await;
    wait_condition::<MqttBroker>(&client, &ns.name, "plant-m", "Ready", "True", T).await;
    let pod = live_pods(&client, &ns.name, "plant-m", 1).await.remove(0);

    // what cert-manager issued is what the broker serves, trusted through moat's bundle
    let corporate = eventually(T, "cert-manager's corporate CA", || async {
        let s: Option<Secret> = get(&client, &ns.name, "corporate-ca").await;
        String::from_utf8(s?.data?.get("tls.crt")?.0.clone()).ok()
    })
    .await;
    let issued = eventually(T, "the server certificate cert-manager issued", || async {
        let s: Option<Secret> = get(&client, &ns.name, "plant-m-server-cert").await;
        String::from_utf8(s?.data?.get("tls.crt")?.0.clone()).ok()
    })
    .await;
    let info = moat::pki::inspect(&issued).unwrap();
    assert!(info.issuer_dn.contains("Corporate Test CA"), "{info:?}");
    let serial0 = eventually(T, "cert-manager's certificate served and trusted with moat's bundle", || async {
        let bundle = trust_bundle(&client, &ns.name, "plant-m").await;
        if !bundle.contains(corporate.trim()) {
            return None;
        }
        let b: MqttBroker = get(&client, &ns.name, "plant-m").await?;
        let serial = b.status?.certificates?.server?.serial?;
        (served_serial(&pod, 8883, &bundle).await? == serial).then_some(serial)
    })
    .await;
    let cm_log = || std::fs::read_to_string(&cm.log).unwrap_or_default();
    assert_eq!(
        serial0.trim_start_matches('0').to_lowercase(),
        info.serial_hex.trim_start_matches('0'),
        "the served certificate is cert-manager's\n{}",
        cm_log()
    );
    let client_trust = secret_key(&client, &ns.name, "plant-m-tls", "ca.crt").await;
    assert!(!client_trust.contains(corporate.trim()), "client certificates are still verified with moat's CA only");
    let certificate = kubectl(&["-n", &ns.name, "get", "certificate", "plant-m-server", "-o", "json"]);
    let certificate: serde_json::Value = serde_json::from_slice(&certificate.stdout).unwrap();
    assert_eq!(certificate["spec"]["privateKey"]["algorithm"], "ECDSA");
    assert_eq!(certificate["metadata"]["ownerReferences"][0]["kind"], "MqttBroker");

    // every check passes on the audit after the switch (chain, names, renewal window, key type)
    for id in ["MOAT-TLS-003", "MOAT-TLS-005"] {
        let c = audited_check(&client, &ns.name, "plant-m", id, "after-switch").await;
        assert_eq!(c.result, CheckResult::Pass, "{id}: {}", c.message);
    }
    wait_condition::<MqttBroker>(&client, &ns.name, "plant-m", "Compliant", "True", T).await;

    // cert-manager renews (what `cmctl renew` asks for: the Issuing condition); the running broker
    // serves the new certificate without a restart
    let issuing = serde_json::json!({"status": {"conditions": [{
        "type": "Issuing", "status": "True", "reason": "ManuallyTriggered",
        "message": "renewal requested by the test", "lastTransitionTime": jiff::Timestamp::now().to_string(),
    }]}});
    let out = kubectl(&[
        "-n",
        &ns.name,
        "patch",
        "certificate",
        "plant-m-server",
        "--subresource",
        "status",
        "--type",
        "merge",
        "-p",
        &issuing.to_string(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let serial1 = eventually(T, "the renewed certificate served", || async {
        let bundle = trust_bundle(&client, &ns.name, "plant-m").await;
        let s = served_serial(&pod, 8883, &bundle).await?;
        (s != serial0).then_some(s)
    })
    .await;
    println!("server serials from cert-manager: {serial0} -> {serial1}");
    // moat wrote the Certificate once: cert-manager's renewals need nothing from it
    let applied = "moat_api_writes_total{kind=\"Certificate\",verb=\"apply\"} 1\n";
    assert!(op.metrics().contains(applied), "{}", op.metrics());
    let after = live_pods(&client, &ns.name, "plant-m", 1).await.remove(0);
    assert_eq!(
        (after.container_id.as_str(), after.restarts),
        (pod.container_id.as_str(), 0),
        "the broker was restarted"
    );
}
