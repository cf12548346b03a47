//! Broker reconciliation on the local control plane: hardened owned objects, Ready from the real
//! rollout, zero writes when nothing changed, drift repaired and reported, invalid specs.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams};
use moat::crd::{MqttBroker, MqttUser};

use crate::harness::*;

const T: Duration = Duration::from_secs(90);

fn example(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap()
}

fn owned_by_broker<K: kube::Resource>(obj: &K, broker: &MqttBroker) -> bool {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == broker.metadata.uid.clone().unwrap() && o.controller == Some(true))
}

/// Triggers a reconcile (an annotation change) and waits until the operator logged it.
async fn poke(client: &kube::Client, op: &Operator, ns: &str, name: &str) {
    let before = op.log().matches("reconciled broker").count();
    let api: Api<MqttBroker> = Api::namespaced(client.clone(), ns);
    let patch =
        serde_json::json!({"metadata": {"annotations": {"moat.test/poke": format!("{}", rand::random::<u32>())}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    eventually(T, "a reconcile after the poke", || async {
        (op.log().matches("reconciled broker").count() > before).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_broker_becomes_ready_with_hardened_owned_objects_and_a_no_op_reconcile_writes_nothing() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "broker").await;
    let op = Operator::start(&ns.name, OperatorOpts::default());
    apply_yaml(&client, &ns.name, &example("examples/broker-minimal.yaml")).await;
    apply_yaml(&client, &ns.name, &example("tests/e2e/fixtures/plant-a-users.yaml")).await;
    let broker: MqttBroker = wait_condition(&client, &ns.name, "plant-a", "Ready", "True", T).await;

    // Everything is owned by the broker (garbage-collected with it).
    let sts: StatefulSet = get(&client, &ns.name, "plant-a").await.expect("StatefulSet");
    assert!(owned_by_broker(&sts, &broker));
    for svc in ["plant-a", "plant-a-headless"] {
        assert!(owned_by_broker(&get::<Service>(&client, &ns.name, svc).await.expect(svc), &broker), "{svc}");
    }
    let sa: ServiceAccount = get(&client, &ns.name, "plant-a").await.expect("ServiceAccount");
    assert!(owned_by_broker(&sa, &broker));
    assert_eq!(sa.automount_service_account_token, Some(false));
    for secret in
        ["plant-a-ca", "plant-a-tls", "plant-a-config", "plant-a-acl-0", "plant-a-passwd-0", "plant-a-certs-0"]
    {
        let s: Secret = get(&client, &ns.name, secret).await.unwrap_or_else(|| panic!("{secret}"));
        assert!(owned_by_broker(&s, &broker), "{secret}");
    }
    assert!(owned_by_broker(&get::<NetworkPolicy>(&client, &ns.name, "plant-a-default-deny").await.unwrap(), &broker));

    // The hardened pod, field by field, as stored by the apiserver.
    let pod = sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.share_process_namespace, Some(true));
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(1883));
    assert_eq!(psc.run_as_group, Some(1883));
    assert_eq!(psc.fs_group, Some(1883));
    assert_eq!(psc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    for c in pod.containers.iter().chain(pod.init_containers.iter().flatten()) {
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true), "{}", c.name);
        assert_eq!(sc.run_as_user, Some(1883), "{}", c.name);
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_eq!(sc.privileged, Some(false), "{}", c.name);
        assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(), &vec!["ALL".to_string()], "{}", c.name);
        assert!(sc.capabilities.as_ref().unwrap().add.is_none(), "{}", c.name);
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault", "{}", c.name);
    }
    let mosquitto = &pod.containers[0];
    assert_eq!(mosquitto.image.as_deref(), Some("eclipse-mosquitto:2.0.22"));
    assert!(mosquitto.readiness_probe.as_ref().unwrap().tcp_socket.is_some());
    // The CA key is never mounted into pods.
    let volumes = serde_json::to_string(&pod.volumes).unwrap();
    assert!(!volumes.contains("plant-a-ca\""), "{volumes}");
    // kwok pods are Ready and the broker's Ready reflects the rollout.
    assert_eq!(sts.status.as_ref().unwrap().ready_replicas, Some(1));

    // After convergence, a reconcile with nothing to do writes nothing. Converged means quiet for
    // longer than one reconcile can take: the audit of a kwok pod (no real address) runs into
    // every attack's 3 s timeout, three canary logins one after another, then the 2 s attestation.
    let before = wait_quiet(&ns.name, Duration::from_secs(12), T).await;
    let status = |b: Option<MqttBroker>| serde_json::to_string_pretty(&b.unwrap().status).unwrap();
    let status_before = status(get(&client, &ns.name, "plant-a").await);
    poke(&client, &op, &ns.name, "plant-a").await;
    poke(&client, &op, &ns.name, "plant-a").await;
    let after = operator_writes(&ns.name);
    let written: Vec<&serde_json::Value> = after[before..].iter().map(|w| &w["objectRef"]).collect();
    assert_eq!(
        after.len(),
        before,
        "writes during no-op reconciles: {written:#?}; broker status before:\n{status_before}\nafter:\n{}",
        status(get(&client, &ns.name, "plant-a").await)
    );
}

/// Waits until the broker's status records drift of `object` matching `change` (durable: the
/// record stays after the repair, so this cannot race it).
async fn drift_recorded(client: &kube::Client, ns: &str, object: &str, change: &str) -> moat::crd::broker::DriftRecord {
    let found = tokio::time::timeout(T, async {
        loop {
            let b: Option<MqttBroker> = get(client, ns, "plant-a").await;
            if let Some(d) = b.and_then(|b| {
                b.status?.drift.into_iter().find(|d| d.object == object && d.change.contains(change) && d.repaired)
            }) {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        let b: Option<MqttBroker> = futures::executor::block_on(get(client, ns, "plant-a"));
        panic!("status.drift never recorded {object} ({change}): {:#?}", b.and_then(|b| b.status).map(|s| s.drift))
    })
}

/// Red team 11: every managed object deleted by hand is recreated within seconds (deletions wake
/// the broker controller; they used to wait for the next audit), with a DriftRepaired Event and a
/// durable drift record in status; an edited object is restored and fails MOAT-AUD-002 until the
/// next audit.
#[tokio::test]
async fn every_deleted_or_edited_managed_object_is_repaired_within_seconds() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "drift").await;
    let _op = Operator::start(&ns.name, OperatorOpts::default());
    apply_yaml(&client, &ns.name, &example("examples/broker-minimal.yaml")).await;
    apply_yaml(&client, &ns.name, &example("tests/e2e/fixtures/plant-a-users.yaml")).await;
    wait_condition::<MqttBroker>(&client, &ns.name, "plant-a", "Ready", "True", T).await;
    wait_quiet(&ns.name, Duration::from_secs(2), T).await;

    // Relax the broker container's securityContext by hand.
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    let relax = serde_json::json!([{"op": "replace", "path": "/spec/template/spec/containers/0/securityContext/runAsNonRoot", "value": false}]);
    sts_api
        .patch("plant-a", &PatchParams::default(), &Patch::Json::<()>(serde_json::from_value(relax).unwrap()))
        .await
        .unwrap();
    drift_recorded(&client, &ns.name, "StatefulSet plant-a", "runAsNonRoot").await;
    let sts = sts_api.get("plant-a").await.unwrap();
    assert_eq!(
        sts.spec.unwrap().template.spec.unwrap().containers[0].security_context.clone().unwrap().run_as_non_root,
        Some(true)
    );
    eventually(T, "MOAT-AUD-002 failing with the change", || async {
        let b: MqttBroker = get(&client, &ns.name, "plant-a").await?;
        let c = b.status?.compliance?.checks.into_iter().find(|c| c.id == "MOAT-AUD-002")?;
        (!c.passed && c.message.contains("runAsNonRoot")).then_some(())
    })
    .await;
    assert!(
        events_for(&client, &ns.name, "plant-a")
            .await
            .iter()
            .any(|(r, n)| r == "DriftRepaired" && n.contains("StatefulSet plant-a") && n.contains("runAsNonRoot"))
    );

    // Delete one managed object of each kind and time the repair.
    let mut timings = vec![];
    for (kind, name) in [
        ("NetworkPolicy", "plant-a-default-deny"),
        ("Service", "plant-a"),
        ("Service", "plant-a-headless"),
        ("Secret", "plant-a-config"),
        ("Secret", "plant-a-tls"),
        ("Secret", "plant-a-passwd-0"),
        ("Secret", "plant-a-acl-0"),
        ("Secret", "plant-a-certs-0"),
        ("ConfigMap", "plant-a-ca-bundle"),
        ("ServiceAccount", "plant-a"),
        ("StatefulSet", "plant-a"),
    ] {
        let resource = match kind {
            "NetworkPolicy" => "networkpolicy",
            "Service" => "service",
            "Secret" => "secret",
            "ConfigMap" => "configmap",
            "ServiceAccount" => "serviceaccount",
            _ => "statefulset",
        };
        let uid_before = kubectl(&["-n", &ns.name, "get", resource, name, "-o", "jsonpath={.metadata.uid}"]).stdout;
        let started = std::time::Instant::now();
        let out = kubectl(&["-n", &ns.name, "delete", resource, name, "--wait=true"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        eventually(Duration::from_secs(30), &format!("{kind} {name} recreated"), || async {
            let now = kubectl(&["-n", &ns.name, "get", resource, name, "-o", "jsonpath={.metadata.uid}"]);
            (now.status.success() && !now.stdout.is_empty() && now.stdout != uid_before).then_some(())
        })
        .await;
        let took = started.elapsed();
        drift_recorded(&client, &ns.name, &format!("{kind} {name}"), "deleted").await;
        timings.push((format!("{kind} {name}"), took));
        assert!(took < Duration::from_secs(15), "{kind} {name} took {took:?} to come back");
    }
    println!("\nrepair after a deletion by hand:");
    for (what, took) in &timings {
        println!("  {what:<40} {:>6} ms", took.as_millis());
    }
    eventually(T, "DriftRepaired Events for the deletions", || async {
        events_for(&client, &ns.name, "plant-a")
            .await
            .iter()
            .any(|(r, n)| r == "DriftRepaired" && n.contains("plant-a-default-deny was deleted"))
            .then_some(())
    })
    .await;

    // Edit the config Secret: reverted to what moat rendered.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let original = secrets.get("plant-a-config").await.unwrap().data.unwrap();
    let tamper = serde_json::json!({"stringData": {"mosquitto.conf": "allow_anonymous true\n"}});
    secrets.patch("plant-a-config", &PatchParams::default(), &Patch::Merge(&tamper)).await.unwrap();
    eventually(T, "config Secret restored", || async {
        (secrets.get("plant-a-config").await.ok()?.data? == original).then_some(())
    })
    .await;
    drift_recorded(&client, &ns.name, "Secret plant-a-config", "data").await;
}

/// A broker deleted and applied again under the same name (`kubectl delete -f` then `kubectl
/// apply -f`) comes back: its objects are the new broker's (the old ones garbage-collected, none
/// adopted), and its users, which kept their credentials Secrets, are Ready again in its new
/// password file with the passwords they had.
#[tokio::test]
async fn a_broker_deleted_and_applied_again_comes_back_with_its_users() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "recreate").await;
    let _op = Operator::start(&ns.name, OperatorOpts::default());
    apply_yaml(&client, &ns.name, &example("examples/broker-minimal.yaml")).await;
    apply_yaml(&client, &ns.name, &example("tests/e2e/fixtures/plant-a-users.yaml")).await;
    let first: MqttBroker = wait_condition(&client, &ns.name, "plant-a", "Ready", "True", T).await;
    for user in ["alice", "bob"] {
        wait_condition::<MqttUser>(&client, &ns.name, user, "Ready", "True", T).await;
    }
    let credentials = moat::names::credentials_secret("alice");
    let password = secret_key(&client, &ns.name, &credentials, "password").await;

    let out = kubectl(&["-n", &ns.name, "delete", "mqttbroker", "plant-a", "--wait=true"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for user in ["alice", "bob"] {
        let u: MqttUser = wait_condition(&client, &ns.name, user, "Ready", "False", T).await;
        assert_eq!(condition(&u, "Ready").unwrap().1, "BrokerNotFound", "{user}");
    }

    apply_yaml(&client, &ns.name, &example("examples/broker-minimal.yaml")).await;
    let second: MqttBroker = wait_condition(&client, &ns.name, "plant-a", "Ready", "True", T).await;
    assert_ne!(first.metadata.uid, second.metadata.uid);
    eventually(T, "the StatefulSet and the password shard owned by the new broker", || async {
        let sts: StatefulSet = get(&client, &ns.name, "plant-a").await?;
        let shard: Secret = get(&client, &ns.name, "plant-a-passwd-0").await?;
        (owned_by_broker(&sts, &second) && owned_by_broker(&shard, &second)).then_some(())
    })
    .await;
    for user in ["alice", "bob"] {
        wait_condition::<MqttUser>(&client, &ns.name, user, "Ready", "True", T).await;
    }
    assert!(
        secret_key(&client, &ns.name, &credentials, "password").await == password,
        "alice's password was kept (not regenerated)"
    );
    let shard = secret_key(&client, &ns.name, "plant-a-passwd-0", "passwd").await;
    let line = shard.lines().find(|l| l.starts_with("alice:")).expect("alice in the new file");
    assert!(moat::render::passwd::verify_line(line, &password), "the new file holds alice's password");
}

#[tokio::test]
async fn an_invalid_spec_is_reported_and_nothing_is_applied() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "invalid").await;
    let _op = Operator::start(&ns.name, OperatorOpts::default());
    // Passes the schema (5 cron fields) but can never occur: only the operator can tell.
    let yaml = r#"
apiVersion: mqtt.moat.dev/v1alpha1
kind: MqttBroker
metadata: {name: never}
spec:
  version: "2.0.22"
  upgrade:
    policy: AutoPatch
    maintenanceWindows: [{schedule: "0 0 30 2 *", duration: 1h}]
"#;
    apply_yaml(&client, &ns.name, yaml).await;
    let b: MqttBroker = wait_condition(&client, &ns.name, "never", "Ready", "False", T).await;
    let (_, reason, message) = condition(&b, "Ready").unwrap();
    assert_eq!(reason, "InvalidSpec");
    assert!(message.contains("spec.upgrade.maintenanceWindows"), "{message}");
    assert!(
        get::<StatefulSet>(&client, &ns.name, "never").await.is_none(),
        "nothing may be applied for an invalid spec"
    );
    assert!(get::<Secret>(&client, &ns.name, "never-ca").await.is_none());
}
