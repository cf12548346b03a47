//! The CRDs on the real apiserver: established, examples accepted, invalid examples rejected with
//! their expected message, `kubectl explain` and `kubectl get moat`.

use crate::harness::*;

fn expected_error(text: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix("# expect: ")).map(str::to_string)
}

fn setup_file(text: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix("# setup: ")).map(str::to_string)
}

#[tokio::test]
async fn every_example_is_accepted_by_server_side_dry_run() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "crd-ok").await;
    let mut files: Vec<_> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "examples/ lost files: {files:?}");
    for f in files {
        let out = kubectl(&["-n", &ns.name, "apply", "--server-side", "--dry-run=server", "-f", f.to_str().unwrap()]);
        assert!(out.status.success(), "{} rejected: {}", f.display(), String::from_utf8_lossy(&out.stderr));
    }
}

#[tokio::test]
async fn every_invalid_example_is_rejected_by_the_apiserver_with_its_message() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "crd-bad").await;
    let dir = repo().join("examples/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    assert!(files.len() >= 30, "examples/invalid lost files");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let expect = expected_error(&text).unwrap_or_else(|| panic!("{} has no '# expect:' line", f.display()));
        if let Some(setup) = setup_file(&text) {
            let out = kubectl(&["-n", &ns.name, "apply", "--server-side", "-f", dir.join(setup).to_str().unwrap()]);
            assert!(out.status.success(), "setup for {}: {}", f.display(), String::from_utf8_lossy(&out.stderr));
        }
        // client-side apply, as most users run it (server-side apply words list-map duplicates differently)
        let out = kubectl(&["-n", &ns.name, "apply", "--dry-run=server", "-f", f.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} was accepted", f.display());
        assert!(stderr.contains(&expect), "{}: expected {expect:?} in:\n{stderr}", f.display());
    }
}

#[tokio::test]
async fn kubectl_explain_prints_the_field_docs() {
    setup().await;
    let out = kubectl(&["explain", "mqttbroker.spec.listeners"]);
    // kubectl wraps lines: compare with whitespace collapsed
    let text = String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Mosquitto has no \"optional client certificate\" mode"), "{text}");
    assert!(text.contains("insecurePlaintext"), "{text}");
    let out = kubectl(&["explain", "mqttuser.spec.authentication.password.rotateAfter"]);
    let text = String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(text.contains("mqtt.moat.dev/rotate-password"), "{text}");
}

#[tokio::test]
async fn kubectl_get_moat_lists_all_four_kinds() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "crd-get").await;
    for f in [
        "examples/broker-minimal.yaml",
        "examples/user-password.yaml",
        "examples/acl-pattern.yaml",
        "examples/firewall.yaml",
    ] {
        let out = kubectl(&["-n", &ns.name, "apply", "--server-side", "-f", repo().join(f).to_str().unwrap()]);
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = kubectl(&["-n", &ns.name, "get", "moat"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for kind in [
        "mqttbroker.mqtt.moat.dev/plant-a",
        "mqttuser.mqtt.moat.dev/sensor-17",
        "mqttacl.mqtt.moat.dev/own-devices",
        "mqttfirewall.mqtt.moat.dev/plant-b-clients",
    ] {
        assert!(text.contains(kind), "{kind} missing from kubectl get moat:\n{text}");
    }
    for column in ["COMPLIANT", "CERT-EXPIRY", "VERSION", "AUTH", "RULES", "POLICIES"] {
        assert!(text.contains(column), "{column} column missing:\n{text}");
    }
    for short in ["mqb", "mqu", "mqacl", "mqfw"] {
        assert!(kubectl(&["-n", &ns.name, "get", short]).status.success(), "short name {short}");
    }
}
