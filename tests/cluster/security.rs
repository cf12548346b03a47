//! Red team round 2 on the local control plane: what an attacker with MqttUser/MqttAcl rights in
//! one namespace (or a careless edit) could do, each refused.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams};
use moat::crd::{MqttAcl, MqttBroker, MqttFirewall, MqttUser};

use crate::harness::*;

const T: Duration = Duration::from_secs(90);

fn file(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap()
}

async fn ready_reason(client: &kube::Client, ns: &str, user: &str, reason: &str) -> String {
    eventually(T, &format!("MqttUser {user} Ready=False {reason}"), || async {
        let u: MqttUser = get(client, ns, user).await?;
        let (status, r, message) = condition(&u, "Ready")?;
        (status == "False" && r == reason).then_some(message)
    })
    .await
}

/// Red team 4: a `secretRef` cannot be used as an oracle on other Secrets of the namespace. moat
/// reads only Secrets that opted in (label and annotation naming the MqttUser), never labels or
/// GETs one on its own, and answers the same for a Secret it may not read and one that does not
/// exist; for an opted-in Secret, a weak password is reported without anything that depends on
/// its value.
#[tokio::test]
async fn a_secret_ref_cannot_probe_other_secrets() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "oracle").await;
    let _op = Operator::start(&ns.name, OperatorOpts::default());
    apply_yaml(&client, &ns.name, &file("examples/broker-minimal.yaml")).await;
    let yaml = r#"
apiVersion: v1
kind: Secret
metadata: {name: app-token}
stringData: {token: "sk-live-0123456789abcdef"}
---
apiVersion: v1
kind: Secret
metadata:
  name: other-users-password
  labels: {mqtt.moat.dev/watch: "true"}
  annotations: {mqtt.moat.dev/password-for: someone-else}
stringData: {password: "sk-live-0123456789abcdef"}
---
apiVersion: v1
kind: Secret
metadata:
  name: weak-but-mine
  labels: {mqtt.moat.dev/watch: "true"}
  annotations: {mqtt.moat.dev/password-for: "mallory-3"}
stringData: {password: "sk-live"}
---
apiVersion: mqtt.moat.dev/v1alpha1
kind: MqttUser
metadata: {name: mallory-1}
spec:
  brokerRef: {name: plant-a}
  username: sk-live
  authentication: {password: {secretRef: {name: app-token, key: token}}}
---
apiVersion: mqtt.moat.dev/v1alpha1
kind: MqttUser
metadata: {name: mallory-2}
spec:
  brokerRef: {name: plant-a}
  username: sk-liv
  authentication: {password: {secretRef: {name: other-users-password}}}
---
apiVersion: mqtt.moat.dev/v1alpha1
kind: MqttUser
metadata: {name: mallory-4}
spec:
  brokerRef: {name: plant-a}
  authentication: {password: {secretRef: {name: no-such-secret}}}
---
apiVersion: mqtt.moat.dev/v1alpha1
kind: MqttUser
metadata: {name: mallory-3}
spec:
  brokerRef: {name: plant-a}
  username: sk-live-x
  authentication: {password: {secretRef: {name: weak-but-mine}}}
"#;
    apply_yaml(&client, &ns.name, yaml).await;
    let m1 = ready_reason(&client, &ns.name, "mallory-1", "PasswordUnavailable").await;
    let m2 = ready_reason(&client, &ns.name, "mallory-2", "PasswordUnavailable").await;
    let m4 = ready_reason(&client, &ns.name, "mallory-4", "PasswordUnavailable").await;
    // the same answer whether the Secret exists, is opted in for someone else, or does not exist
    let shape = |m: &str, user: &str, secret: &str| m.replace(user, "U").replace(secret, "S");
    assert_eq!(shape(&m1, "mallory-1", "app-token"), shape(&m4, "mallory-4", "no-such-secret"), "{m1} / {m4}");
    assert_eq!(shape(&m2, "mallory-2", "other-users-password"), shape(&m4, "mallory-4", "no-such-secret"));
    // an opted-in weak password: reported, never why (the username is in it)
    let m3 = ready_reason(&client, &ns.name, "mallory-3", "WeakPassword").await;
    assert!(!m3.contains("contains") && !m3.contains("short") && !m3.contains("username"), "{m3}");
    let u3: MqttUser = get(&client, &ns.name, "mallory-3").await.unwrap();
    let status = serde_json::to_string(&u3.status).unwrap();
    assert!(!status.contains("contains the username") && !status.contains("shorter"), "{status}");

    // moat never labelled, patched or read the Secrets it may not use
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let token = secrets.get("app-token").await.unwrap();
    assert!(token.metadata.labels.unwrap_or_default().is_empty(), "moat labelled a foreign Secret");
    let touched: Vec<serde_json::Value> = audit_events(&ns.name)
        .into_iter()
        .filter(|e| e["impersonatedUser"]["username"] == OPERATOR_SA || e["user"]["username"] == OPERATOR_SA)
        .filter(|e| e["objectRef"]["resource"] == "secrets" && e["objectRef"]["name"] == "app-token")
        .collect();
    assert!(touched.is_empty(), "the operator touched app-token: {touched:#?}");
}

/// Red team 9: generated names of different objects can collide (broker `b`'s `b-headless`
/// Service is broker `b-headless`'s client Service; user `x`'s `x-mqtt-tls` is broker `x-mqtt`'s
/// TLS Secret). moat never adopts an object another owner controls: the later object reports
/// NameConflict and gets nothing, the earlier keeps working, and no certificate of one ends up in
/// the other's CRL.
#[tokio::test]
async fn generated_names_never_adopt_another_owners_object() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "names").await;
    let _op = Operator::start(&ns.name, OperatorOpts::default());
    let broker = |name: &str| {
        format!(
            "apiVersion: mqtt.moat.dev/v1alpha1\nkind: MqttBroker\nmetadata: {{name: {name}}}\nspec: {{version: \"2.0.22\", listeners: [{{name: mqtts, port: 8883}}, {{name: mtls, port: 8884, authentication: Certificate}}]}}\n"
        )
    };
    apply_yaml(&client, &ns.name, &broker("b")).await;
    let b: MqttBroker = wait_condition(&client, &ns.name, "b", "Ready", "True", T).await;
    apply_yaml(&client, &ns.name, &broker("b-headless")).await;
    let msg = eventually(T, "b-headless NameConflict", || async {
        let x: MqttBroker = get(&client, &ns.name, "b-headless").await?;
        let (s, r, m) = condition(&x, "Ready")?;
        (s == "False" && r == "NameConflict").then_some(m)
    })
    .await;
    assert!(msg.contains("Service b-headless") && msg.contains("MqttBroker b"), "{msg}");
    let svc: Service = get(&client, &ns.name, "b-headless").await.unwrap();
    let owner = svc.metadata.owner_references.unwrap();
    assert_eq!(owner[0].uid, b.metadata.uid.clone().unwrap(), "the Service was taken over");
    wait_condition::<MqttBroker>(&client, &ns.name, "b", "Ready", "True", T).await;

    // a certificate user `x` of broker `x-mqtt` would write `x-mqtt-tls`: the broker's TLS Secret
    apply_yaml(&client, &ns.name, &broker("x-mqtt")).await;
    let xb: MqttBroker = wait_condition(&client, &ns.name, "x-mqtt", "Ready", "True", T).await;
    let server_serial = xb.status.unwrap().certificates.unwrap().server.unwrap().serial.unwrap();
    let user = "apiVersion: mqtt.moat.dev/v1alpha1\nkind: MqttUser\nmetadata: {name: x}\nspec: {brokerRef: {name: x-mqtt}, authentication: {certificate: {}}}\n";
    apply_yaml(&client, &ns.name, user).await;
    let m = ready_reason(&client, &ns.name, "x", "CertificatePending").await;
    assert!(m.contains("x-mqtt-tls") && m.contains("MqttBroker x-mqtt"), "{m}");
    let tls: Secret = get(&client, &ns.name, "x-mqtt-tls").await.unwrap();
    assert_eq!(tls.metadata.owner_references.unwrap()[0].uid, xb.metadata.uid.clone().unwrap());
    // deleting the user must not put the broker's own server serial into its CRL
    Api::<MqttUser>::namespaced(client.clone(), &ns.name).delete("x", &Default::default()).await.unwrap();
    wait_quiet(&ns.name, Duration::from_secs(2), T).await;
    let tls: Secret = get(&client, &ns.name, "x-mqtt-tls").await.unwrap();
    let crl = String::from_utf8(tls.data.unwrap()["crl.pem"].0.clone()).unwrap();
    let revoked: Vec<String> =
        moat::pki::parse_crls(&crl).unwrap().into_iter().flat_map(|c| c.revoked_serials).collect();
    assert!(!revoked.contains(&server_serial), "the broker's own server certificate was revoked");
    wait_condition::<MqttBroker>(&client, &ns.name, "x-mqtt", "Ready", "True", T).await;
}

/// Red team 10 and 12: an MqttFirewall that becomes invalid loses its allow policy (invalid means
/// closed); a NetworkPolicy not made by moat that admits ingress to the broker pods fails
/// MOAT-FW-001 by name; the CRL's nextUpdate is in status.
#[tokio::test]
async fn an_invalid_firewall_is_closed_and_foreign_policies_fail_the_firewall_check() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "fwclosed").await;
    let _op = Operator::start(&ns.name, OperatorOpts::default());
    apply_yaml(&client, &ns.name, &file("examples/broker-production.yaml")).await;
    apply_yaml(&client, &ns.name, &file("examples/firewall.yaml")).await;
    wait_condition::<MqttFirewall>(&client, &ns.name, "plant-b-clients", "Ready", "True", T).await;
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns.name);
    assert!(nps.get_opt("plant-b-fw-plant-b-clients").await.unwrap().is_some());
    let b: MqttBroker = wait_condition(&client, &ns.name, "plant-b", "Ready", "True", T).await;
    let next_update = b.status.as_ref().unwrap().certificates.as_ref().unwrap().crl_next_update.clone();
    assert!(next_update.is_some_and(|t| t.0 > jiff::Timestamp::now()), "no crlNextUpdate in status");

    // the listener the firewall names is renamed: the firewall is invalid, its policy goes
    let brokers: Api<MqttBroker> = Api::namespaced(client.clone(), &ns.name);
    let mut spec = serde_json::to_value(&b.spec).unwrap();
    for l in spec["listeners"].as_array_mut().unwrap() {
        if l["name"] == "mqtts" {
            l["name"] = "mqtts-renamed".into();
        }
    }
    brokers.patch("plant-b", &PatchParams::default(), &Patch::Merge(&serde_json::json!({"spec": spec}))).await.unwrap();
    wait_condition::<MqttFirewall>(&client, &ns.name, "plant-b-clients", "Ready", "False", T).await;
    eventually(T, "the stale allow policy deleted", || async {
        nps.get_opt("plant-b-fw-plant-b-clients").await.ok()?.is_none().then_some(())
    })
    .await;

    // someone adds a policy that opens the broker pods to everything
    let open = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-everything}
spec:
  podSelector: {matchLabels: {app.kubernetes.io/instance: plant-b}}
  policyTypes: [Ingress]
  ingress: [{}]
"#;
    apply_yaml(&client, &ns.name, open).await;
    eventually(T, "MOAT-FW-001 failing on allow-everything", || async {
        let b: MqttBroker = get(&client, &ns.name, "plant-b").await?;
        let c = b.status?.compliance?.checks.into_iter().find(|c| c.id == "MOAT-FW-001")?;
        (!c.passed && c.message.contains("allow-everything")).then_some(())
    })
    .await;
}

/// Red team: taking access away is deleting an object. At once (not at the broker's next audit,
/// an hour later by default): a deleted MqttAcl's grants leave the broker's ACL file; a deleted
/// MqttUser with a brought password (moat made no Secret for it whose deletion would tell)
/// leaves the password file; so does a user whose brought password's Secret stops opting in
/// (and comes back when it opts in again) or is deleted.
#[tokio::test]
async fn deleting_an_acl_a_brought_password_user_or_its_secret_takes_access_away_at_once() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "takeaway").await;
    let _op = Operator::start(&ns.name, OperatorOpts::default());
    apply_yaml(&client, &ns.name, &file("examples/broker-minimal.yaml")).await;
    let acl = r#"
apiVersion: mqtt.moat.dev/v1alpha1
kind: MqttAcl
metadata: {name: dashboard-read}
spec:
  brokerRef: {name: plant-a}
  users: [dashboard]
  rules: [{topic: plant/a/#, access: Read}]
"#;
    let yaml = brought_password_user("dashboard", "dashboard-password", "c0rrect-Horse-battery-staple-Plant-A")
        + &brought_password_user("carol", "carol-password", "an0ther-Horse-battery-staple-Plant-A")
        + acl;
    apply_yaml(&client, &ns.name, &yaml).await;
    wait_condition::<MqttAcl>(&client, &ns.name, "dashboard-read", "Ready", "True", T).await;
    let granted = || async {
        let file = acl_file(&client, &ns.name, "plant-a").await?;
        Some(moat::render::acl::parse(&file).ok()?.users.contains_key("dashboard"))
    };
    let in_passwd = |user: &'static str| {
        let client = client.clone();
        let ns = ns.name.clone();
        async move {
            let shards = passwd_shards(&client, &ns, "plant-a").await;
            let text: String = shards
                .iter()
                .filter_map(|s| s.data.as_ref()?.get("passwd").map(|p| String::from_utf8_lossy(&p.0).into_owned()))
                .collect();
            user_lines(&text).iter().any(|l| l.starts_with(&format!("{user}:")))
        }
    };
    wait_condition::<MqttUser>(&client, &ns.name, "carol", "Ready", "True", T).await;
    eventually(T, "the ACL file grants dashboard", || async { granted().await.filter(|g| *g) }).await;
    assert!(in_passwd("dashboard").await && in_passwd("carol").await, "both users are in the password file");

    // well within the audit interval (1h), and longer than any debounce (at most 20 s); each
    // deletion made once the operator has settled (no reconcile pending that would pick it up)
    const AT_ONCE: Duration = Duration::from_secs(25);
    let settled = Duration::from_secs(3);
    wait_quiet(&ns.name, settled, T).await;
    Api::<MqttAcl>::namespaced(client.clone(), &ns.name).delete("dashboard-read", &Default::default()).await.unwrap();
    eventually(AT_ONCE, "the deleted ACL's grant gone from the ACL file", || async { granted().await.filter(|g| !*g) })
        .await;
    wait_quiet(&ns.name, settled, T).await;
    Api::<MqttUser>::namespaced(client.clone(), &ns.name).delete("dashboard", &Default::default()).await.unwrap();
    eventually(AT_ONCE, "the deleted user gone from the password file", || async {
        (!in_passwd("dashboard").await).then_some(())
    })
    .await;
    // the brought password's Secret no longer opted in (its label taken away: it leaves moat's
    // watch), then opted in again, then deleted: no password, no login (invalid means closed)
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
    let opt_in = |v: Option<&str>| serde_json::json!({"metadata": {"labels": {"mqtt.moat.dev/watch": v}}});
    wait_quiet(&ns.name, settled, T).await;
    secrets.patch("carol-password", &PatchParams::default(), &Patch::Merge(&opt_in(None))).await.unwrap();
    eventually(AT_ONCE, "the user whose password Secret opted out gone from the password file", || async {
        (!in_passwd("carol").await).then_some(())
    })
    .await;
    wait_condition::<MqttUser>(&client, &ns.name, "carol", "Ready", "False", AT_ONCE).await;
    secrets.patch("carol-password", &PatchParams::default(), &Patch::Merge(&opt_in(Some("true")))).await.unwrap();
    wait_condition::<MqttUser>(&client, &ns.name, "carol", "Ready", "True", AT_ONCE).await;
    assert!(in_passwd("carol").await, "carol is back in the password file");
    wait_quiet(&ns.name, settled, T).await;
    secrets.delete("carol-password", &Default::default()).await.unwrap();
    eventually(AT_ONCE, "the user whose password Secret was deleted gone from the password file", || async {
        (!in_passwd("carol").await).then_some(())
    })
    .await;
    wait_condition::<MqttUser>(&client, &ns.name, "carol", "Ready", "False", AT_ONCE).await;
}
