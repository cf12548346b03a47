//! Tests that restart the control plane itself: they run alone, after the cluster tests
//! (`make cluster-test`), never in parallel with anything.

#[allow(dead_code)]
#[path = "../cluster/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "../cluster/hygiene.rs"]
mod hygiene;
#[allow(dead_code)]
#[path = "../common/mqtt.rs"]
mod mqtt;

use std::process::Command;
use std::time::Duration;

use harness::*;

fn restart(components: &[&str]) {
    let dir = run_dir();
    for c in components {
        let pid: i32 = std::fs::read_to_string(dir.join(format!("{c}.pid"))).unwrap().trim().parse().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
        // wait for the process to be gone before restarting (its port must be free)
        while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // `up` is idempotent: it starts exactly the stopped components
    let out = Command::new("bash").arg(repo().join("hack/local-cluster.sh")).arg("up").output().unwrap();
    assert!(out.status.success(), "restarting the control plane: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn the_operator_reconnects_after_the_apiserver_and_etcd_restart_mid_reconcile() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "restart").await;
    let mut op = Operator::start(&ns.name, OperatorOpts::default());
    apply_yaml(&client, &ns.name, &std::fs::read_to_string(repo().join("examples/broker-minimal.yaml")).unwrap()).await;
    let users: String = (0..100)
        .map(|i| format!("apiVersion: mqtt.moat.dev/v1alpha1\nkind: MqttUser\nmetadata: {{name: u-{i:03}}}\nspec: {{brokerRef: {{name: plant-a}}}}\n---\n"))
        .collect();
    apply_yaml(&client, &ns.name, &users).await;
    tokio::time::sleep(Duration::from_millis(400)).await; // mid-reconcile (not an assertion)
    restart(&["kube-apiserver", "etcd"]);
    restart(&["kube-apiserver"]);
    let client = admin().await;
    eventually(Duration::from_secs(180), "100 Ready users after the restarts", || async {
        (user_readiness(&client, &ns.name).await.ok()? == (100, 100)).then_some(())
    })
    .await;
    wait_condition::<moat::crd::MqttBroker>(&client, &ns.name, "plant-a", "Ready", "True", Duration::from_secs(60))
        .await;
    assert!(op.alive(), "the operator process had to be restarted");
}
