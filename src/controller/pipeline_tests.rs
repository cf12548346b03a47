//! The controller tier without a cluster: each controller's whole pipeline (observe → model →
//! plan → apply → status) run against [`super::fake::FakeCluster`], asserting on the writes it
//! planned and made, and that a reconcile with nothing to do writes nothing.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use super::fake::{Call, FakeCluster};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::{Config, acl, broker, firewall, user};
use crate::crd::{MqttAcl, MqttBroker, MqttFirewall, MqttUser};

const NS: &str = "iot";
const BROKER: &str = "plant-a";

fn cluster() -> FakeCluster {
    // no active probe: the attestation would dial the pods, which this tier has none of
    FakeCluster::new(Config { active_probe: false, ..Config::default() })
}

fn new_broker(fc: &FakeCluster) {
    new_broker_with(fc, json!({"version": "2.0.22"}));
}

/// Creates a `K` named `name` in the test namespace with `spec`.
fn new_object<K>(fc: &FakeCluster, name: &str, spec: serde_json::Value)
where
    K: kube::Resource<DynamicType = ()> + serde::Serialize + serde::de::DeserializeOwned,
{
    let obj: K = serde_json::from_value(json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()),
        "metadata": {"name": name, "namespace": NS}, "spec": spec}))
    .unwrap();
    fc.create(&obj);
}

fn new_broker_with(fc: &FakeCluster, spec: serde_json::Value) {
    new_object::<MqttBroker>(fc, BROKER, spec);
}

fn new_user(fc: &FakeCluster, name: &str) {
    new_user_with(fc, name, json!({"brokerRef": {"name": BROKER}}));
}

fn new_user_with(fc: &FakeCluster, name: &str, spec: serde_json::Value) {
    new_object::<MqttUser>(fc, name, spec);
}

fn cached_broker(fc: &FakeCluster) -> Arc<MqttBroker> {
    fc.ctx.stores.brokers.get(&ObjectRef::new(BROKER).within(NS)).expect("broker in the cache")
}

fn cached_user(fc: &FakeCluster, name: &str) -> Arc<MqttUser> {
    fc.ctx.stores.users.get(&ObjectRef::new(name).within(NS)).expect("user in the cache")
}

async fn reconcile_broker(fc: &FakeCluster) -> Vec<Call> {
    broker::reconcile(cached_broker(fc), fc.ctx.clone()).await.expect("broker reconcile");
    fc.take_writes()
}

async fn reconcile_user(fc: &FakeCluster, name: &str) -> Vec<Call> {
    user::reconcile(cached_user(fc, name), fc.ctx.clone()).await.expect("user reconcile");
    fc.take_writes()
}

fn call(verb: &'static str, resource: &str, name: &str) -> Call {
    Call { verb, resource: resource.into(), name: name.into() }
}

fn ready(u: &MqttUser) -> Option<(String, String)> {
    let c = u.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone()))
}

/// A broker reconciled until it has nothing to do.
async fn settled_broker(fc: &FakeCluster) {
    new_broker(fc);
    settle(fc).await;
}

/// A settled broker and one password user, reconciled until the user is Ready.
async fn ready_user(fc: &FakeCluster, name: &str) {
    settled_broker(fc).await;
    new_user(fc, name);
    reconcile_user(fc, name).await;
    reconcile_broker(fc).await;
    reconcile_user(fc, name).await;
}

async fn settle(fc: &FakeCluster) {
    reconcile_broker(fc).await;
    reconcile_broker(fc).await;
    assert_eq!(reconcile_broker(fc).await, vec![], "a settled broker writes nothing");
}

#[tokio::test]
async fn a_new_broker_writes_its_objects_secrets_first_then_its_status_and_then_nothing() {
    let fc = cluster();
    new_broker(&fc);
    let first = reconcile_broker(&fc).await;
    let resources: Vec<&str> = first.iter().map(|c| c.resource.as_str()).collect();
    // secrets (ledger, CA, TLS, password shard, ACL, config) before anything that uses them
    let last_secret = resources.iter().rposition(|r| *r == "secrets").unwrap();
    assert!(resources[..=last_secret].iter().all(|r| *r == "secrets"), "{resources:?}");
    for kind in ["configmaps", "serviceaccounts", "services", "networkpolicies", "statefulsets"] {
        assert!(first.iter().any(|c| c.resource == kind && c.verb == "create"), "{kind} created: {first:?}");
    }
    assert!(!resources.contains(&"poddisruptionbudgets"), "no PDB for one replica");
    // then the status, and the first audit's compliance reports
    let n = first.len();
    assert_eq!(
        first[n - 3..],
        [
            call("status", "mqttbrokers", BROKER),
            call("apply", "reports", "moat-plant-a"),
            call("apply", "policyreports", "moat-plant-a")
        ]
    );
    assert!(first[..n - 3].iter().all(|c| c.verb == "create"), "only creates: {first:?}");
    let ready = |b: &MqttBroker| {
        b.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready")).map(|c| c.status.clone())
    };
    assert!(ready(&cached_broker(&fc)).is_some());

    // the second reconcile sees its own objects: at most a status update, then quiet
    let second = reconcile_broker(&fc).await;
    assert!(second.iter().all(|c| c == &call("status", "mqttbrokers", BROKER)), "{second:?}");
    assert_eq!(reconcile_broker(&fc).await, vec![]);
    assert_eq!(reconcile_broker(&fc).await, vec![]);
}

#[tokio::test]
async fn a_new_user_costs_one_secret_and_one_status_write_then_nothing() {
    let fc = cluster();
    settled_broker(&fc).await;
    new_user(&fc, "sensor-1");

    // the user controller creates the generated password; its status waits for the verdict
    assert_eq!(reconcile_user(&fc, "sensor-1").await, vec![call("create", "secrets", &creds("sensor-1"))]);
    assert_eq!(cached_user(&fc, "sensor-1").status, None);

    // the broker hashes it into its password shard and publishes the user's verdict
    let writes = reconcile_broker(&fc).await;
    assert!(writes.contains(&call("apply", "secrets", &crate::names::passwd_secret(BROKER, 0))), "{writes:?}");
    let woken = fc.woken_users();
    assert_eq!(woken, vec!["sensor-1".to_string()]);

    assert_eq!(reconcile_user(&fc, "sensor-1").await, vec![call("status", "mqttusers", "sensor-1")]);
    let u = cached_user(&fc, "sensor-1");
    assert_eq!(ready(&u), Some(("True".into(), "Ready".into())));
    // the cache keeps the status lean; the API has every compliance check
    assert!(u.status.as_ref().unwrap().compliance.as_ref().unwrap().checks.is_empty());
    let stored: MqttUser = fc.get(NS, "sensor-1").unwrap();
    assert!(!stored.status.unwrap().compliance.unwrap().checks.is_empty());

    assert_eq!(reconcile_user(&fc, "sensor-1").await, vec![]);
    assert_eq!(reconcile_broker(&fc).await, vec![]);
    assert_eq!(reconcile_user(&fc, "sensor-1").await, vec![]);
}

#[tokio::test]
async fn a_status_written_from_a_cache_behind_the_api_is_made_against_the_live_status() {
    let fc = cluster();
    ready_user(&fc, "sensor-1").await;
    let behind = cached_user(&fc, "sensor-1");
    let previous = behind.status.clone().unwrap();
    // the API has a status the reconcile's view does not show yet
    fc.edit::<MqttUser>(NS, "sensor-1", |v| {
        v["status"]["username"] = json!("written-since");
        v["status"]["certificateSecret"] = json!("written-since");
    });
    fc.take_calls();
    let next = crate::crd::MqttUserStatus { observed_generation: Some(7), ..previous.clone() };
    super::write_status(&fc.ctx, &*behind, &previous, &next).await.unwrap();

    // a patch against the stale view is refused; the live status is read and patched instead
    let verbs: Vec<&str> = fc.take_calls().iter().map(|c| c.verb).collect();
    assert_eq!(verbs, ["status", "get", "status"]);
    let stored: MqttUser = fc.get(NS, "sensor-1").unwrap();
    assert_eq!(serde_json::to_value(stored.status).unwrap(), serde_json::to_value(&next).unwrap());
}

#[tokio::test]
async fn a_credentials_secret_changed_by_hand_is_restored_with_its_password() {
    let fc = cluster();
    ready_user(&fc, "sensor-1").await;
    let before: Secret = fc.get(NS, &creds("sensor-1")).unwrap();
    fc.woken_users();

    // the cache holds only the password and a digest of the rest: the change is still seen
    fc.edit::<Secret>(NS, &creds("sensor-1"), |s| {
        s["data"]["host"] = json!(base64_of("attacker.example.com"));
    });
    let cached = fc.ctx.stores.secrets.get(&ObjectRef::new(&creds("sensor-1")).within(NS)).unwrap();
    let kept: Vec<&String> = cached.data.as_ref().unwrap().keys().collect();
    assert_eq!(kept, vec![super::lean::DATA_DIGEST_KEY, "password"]);
    // restored; the broker has this very password in effect (its verdict names the password by
    // a digest, not by the Secret's resourceVersion), so the user stays Ready: no status write
    let writes = reconcile_user(&fc, "sensor-1").await;
    assert_eq!(writes, vec![call("apply", "secrets", &creds("sensor-1"))]);
    assert_eq!(ready(&cached_user(&fc, "sensor-1")), Some(("True".into(), "Ready".into())));
    let after: Secret = fc.get(NS, &creds("sensor-1")).unwrap();
    assert_eq!(after.data, before.data, "host restored, password kept");
    // the password did not change: the broker re-hashes nothing, writes nothing, wakes no one
    assert_eq!(reconcile_broker(&fc).await, vec![]);
    assert_eq!(fc.woken_users(), Vec::<String>::new());
    assert_eq!(reconcile_user(&fc, "sensor-1").await, vec![]);
}

#[tokio::test]
async fn the_younger_of_two_users_claiming_one_username_gets_no_credential() {
    let fc = cluster();
    settled_broker(&fc).await;
    new_user(&fc, "first");
    new_user_with(&fc, "second", json!({"brokerRef": {"name": BROKER}, "username": "first"}));
    reconcile_user(&fc, "first").await;
    reconcile_user(&fc, "second").await;
    reconcile_broker(&fc).await;
    reconcile_user(&fc, "first").await;
    reconcile_user(&fc, "second").await;
    assert_eq!(ready(&cached_user(&fc, "first")), Some(("True".into(), "Ready".into())));
    assert_eq!(ready(&cached_user(&fc, "second")), Some(("False".into(), "UsernameConflict".into())));
    let passwd = fc.get::<Secret>(NS, &crate::names::passwd_secret(BROKER, 0)).unwrap();
    let text = String::from_utf8(passwd.data.unwrap()["passwd"].0.clone()).unwrap();
    assert_eq!(text.lines().filter(|l| l.starts_with("first:")).count(), 1);
    assert_eq!(cached_user(&fc, "second").name_any(), "second");
}

#[tokio::test]
async fn a_certificate_user_is_issued_one_certificate_and_then_nothing_is_written() {
    let fc = cluster();
    new_broker_with(
        &fc,
        json!({"version": "2.0.22", "listeners": [
            {"name": "mqtts", "port": 8883, "authentication": "Password"},
            {"name": "mqtts-mtls", "port": 8884, "authentication": "Certificate"}]}),
    );
    settle(&fc).await;
    new_user_with(
        &fc,
        "gateway-1",
        json!({"brokerRef": {"name": BROKER}, "authentication": {"certificate": {"validity": "2160h", "renewBefore": "360h"}}}),
    );
    // nothing to generate: the broker is the only issuer
    assert_eq!(reconcile_user(&fc, "gateway-1").await, vec![]);
    let writes = reconcile_broker(&fc).await;
    let cert_secret = crate::names::certificate_secret("gateway-1");
    // recorded in the ledger before it reaches the user's Secret
    let ledger = writes.iter().position(|c| c.name == crate::names::ledger_secret(BROKER, 0)).expect("ledger written");
    let secret = writes.iter().position(|c| c == &call("create", "secrets", &cert_secret)).expect("Secret created");
    assert!(ledger < secret, "{writes:?}");
    let issued = || {
        let labels = crate::metrics::KindLabels { kind: "client".into() };
        fc.ctx.metrics.certificates_issued.get_or_create(&labels).get()
    };
    assert_eq!(issued(), 1);
    assert_eq!(reconcile_user(&fc, "gateway-1").await, vec![call("status", "mqttusers", "gateway-1")]);
    let u = cached_user(&fc, "gateway-1");
    assert_eq!(ready(&u), Some(("True".into(), "Ready".into())));
    assert!(u.status.as_ref().unwrap().certificate.is_some());
    // the cached Secret keeps the pair, not the trust bundle; the broker sees it unchanged
    let cached = fc.ctx.stores.secrets.get(&ObjectRef::new(&cert_secret).within(NS)).unwrap();
    let kept: Vec<&String> = cached.data.as_ref().unwrap().keys().collect();
    assert_eq!(kept, vec![super::lean::DATA_DIGEST_KEY, "tls.crt", "tls.key"]);
    assert_eq!(reconcile_broker(&fc).await, vec![]);
    assert_eq!(reconcile_user(&fc, "gateway-1").await, vec![]);
    assert_eq!(issued(), 1, "never issued twice");
}

#[tokio::test]
async fn an_acl_reaches_the_broker_files_and_its_status_once() {
    let fc = cluster();
    settled_broker(&fc).await;
    new_user(&fc, "sensor-17");
    new_object::<MqttAcl>(
        &fc,
        "sensor-17-telemetry",
        json!({"brokerRef": {"name": BROKER}, "users": ["sensor-17"],
            "rules": [{"topic": "plant/b/sensors/sensor-17/telemetry", "access": "Write"}]}),
    );
    reconcile_user(&fc, "sensor-17").await;
    let writes = reconcile_broker(&fc).await;
    assert!(writes.contains(&call("apply", "secrets", &format!("{BROKER}-acl-0"))), "{writes:?}");
    let cached_acl = || fc.ctx.stores.acls.get(&ObjectRef::new("sensor-17-telemetry").within(NS)).unwrap();
    acl::reconcile(cached_acl(), fc.ctx.clone()).await.unwrap();
    let report = "moat-mqttacl-sensor-17-telemetry";
    assert_eq!(
        fc.take_writes(),
        vec![
            call("status", "mqttacls", "sensor-17-telemetry"),
            call("apply", "reports", report),
            call("apply", "policyreports", report)
        ]
    );
    let acl_ready = cached_acl().status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").cloned();
    assert_eq!(acl_ready.map(|c| c.status), Some("True".to_string()));
    acl::reconcile(cached_acl(), fc.ctx.clone()).await.unwrap();
    assert_eq!(fc.take_writes(), vec![]);
    let text = fc.get::<Secret>(NS, &format!("{BROKER}-acl-0")).unwrap().data.unwrap()["acl"].0.clone();
    assert!(String::from_utf8(text).unwrap().contains("topic write plant/b/sensors/sensor-17/telemetry"));
}

#[tokio::test]
async fn a_firewall_policy_widened_by_hand_is_restored() {
    let fc = cluster();
    settled_broker(&fc).await;
    new_object::<MqttFirewall>(
        &fc,
        "clients",
        json!({"brokerRef": {"name": BROKER},
            "ingress": [{"from": [{"cidr": "10.20.0.0/16"}], "listeners": ["mqtts"]}]}),
    );
    let cached_fw = || fc.ctx.stores.firewalls.get(&ObjectRef::new("clients").within(NS)).unwrap();
    firewall::reconcile(cached_fw(), fc.ctx.clone()).await.unwrap();
    let writes = fc.take_writes();
    assert_eq!(writes.iter().filter(|c| c.resource == "networkpolicies").count(), 1, "{writes:?}");
    let policy = writes.iter().find(|c| c.resource == "networkpolicies").unwrap().name.clone();
    assert!(writes.contains(&call("status", "mqttfirewalls", "clients")));
    firewall::reconcile(cached_fw(), fc.ctx.clone()).await.unwrap();
    assert_eq!(fc.take_writes(), vec![]);

    // someone opens it to the world: the next reconcile puts moat's rule back
    fc.edit::<NetworkPolicy>(NS, &policy, |p| {
        p["spec"]["ingress"][0]["from"] = json!([{"ipBlock": {"cidr": "0.0.0.0/0"}}]);
    });
    firewall::reconcile(cached_fw(), fc.ctx.clone()).await.unwrap();
    let writes = fc.take_writes();
    assert_eq!(writes.first(), Some(&call("apply", "networkpolicies", &policy)), "{writes:?}");
    let restored: NetworkPolicy = fc.get(NS, &policy).unwrap();
    let from = serde_json::to_value(&restored.spec.unwrap().ingress.unwrap()[0].from).unwrap();
    assert_eq!(from, json!([{"ipBlock": {"cidr": "10.20.0.0/16"}}]));
}

#[tokio::test]
async fn report_apis_that_are_not_installed_cost_one_read_each_and_no_write() {
    let fc = cluster();
    fc.uninstall("reports");
    fc.uninstall("policyreports");
    new_broker(&fc);
    broker::reconcile(cached_broker(&fc), fc.ctx.clone()).await.unwrap();
    let reports: Vec<Call> = fc.take_calls().into_iter().filter(|c| c.resource.ends_with("reports")).collect();
    assert_eq!(reports, vec![call("get", "reports", "moat-plant-a"), call("get", "policyreports", "moat-plant-a")]);
    // remembered: the next report of the same broker asks nothing
    let b = cached_broker(&fc);
    let compliance = b.status.as_ref().unwrap().compliance.clone().unwrap();
    super::report::write(&fc.ctx, &*b, BROKER, &compliance).await;
    assert_eq!(fc.take_calls(), vec![]);
}

fn creds(user: &str) -> String {
    crate::names::credentials_secret(user)
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
