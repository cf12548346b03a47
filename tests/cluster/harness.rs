//! Harness of the cluster tests: the local control plane (hack/local-cluster.sh), one namespace
//! per test, the operator as a real `moat run` process acting as the chart's ServiceAccount.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use kube::{Client, Config, Discovery, ResourceExt};
use tokio::sync::OnceCell;

/// Repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The local control plane's run directory (kubeconfig, audit log, pids), as in
/// hack/local-cluster.sh: `LOCAL_CLUSTER_DIR` when set and non-empty, else `<repo>/.local-cluster`.
pub fn run_dir() -> PathBuf {
    std::env::var_os("LOCAL_CLUSTER_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".local-cluster"))
}

/// The admin kubeconfig of the local control plane; a missing cluster fails the test (never skips).
pub fn kubeconfig() -> PathBuf {
    let p = std::env::var("KUBECONFIG").map(PathBuf::from).unwrap_or_else(|_| run_dir().join("kubeconfig"));
    assert!(
        p.exists(),
        "no local control plane: {} is missing. Run `make cluster-up` (or `make test`, which starts it)",
        p.display()
    );
    p
}

/// Directory of the control plane binaries (kubectl, helm); asked from hack/local-cluster.sh once
/// per process, not on every kubectl or helm call.
pub fn bin_dir() -> PathBuf {
    static BIN_DIR: OnceLock<PathBuf> = OnceLock::new();
    BIN_DIR
        .get_or_init(|| {
            let out = Command::new("bash").arg(repo().join("hack/local-cluster.sh")).arg("bin-dir").output().unwrap();
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        })
        .clone()
}

/// An upstream CRD cached by `hack/local-cluster.sh build <which>` (`policyreport`: the
/// wgpolicyk8s.io/v1alpha2 PolicyReport; `openreports`: the openreports.io/v1alpha1 Report).
pub fn upstream_crd(which: &str) -> PathBuf {
    let path = cached_path(&format!("{which}-crd"));
    assert!(path.is_file(), "{} is missing: run `hack/local-cluster.sh build {which}`", path.display());
    path
}

/// promtool, built from the Prometheus module into the cache on first use (`hack/local-cluster.sh
/// build promtool`: cold ≈ 8 min, then cached).
pub fn promtool() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        build_part("promtool");
        cached_path("promtool")
    })
    .clone()
}

/// Builds an upstream part into the cache unless it is there (`hack/local-cluster.sh build <target>`).
fn build_part(target: &str) {
    let script = repo().join("hack/local-cluster.sh");
    let built = Command::new("bash").arg(&script).args(["build", target]).stderr(Stdio::inherit()).output().unwrap();
    assert!(built.status.success(), "hack/local-cluster.sh build {target} failed");
}

/// The cache path `hack/local-cluster.sh <what>` names.
fn cached_path(what: &str) -> PathBuf {
    let out = Command::new("bash").arg(repo().join("hack/local-cluster.sh")).arg(what).output().unwrap();
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// cert-manager's controller (its library's certificate controllers with the CA and self-signed
/// issuers, built into the cache on first use by `hack/local-cluster.sh build cert-manager`: about
/// 90 s on a warm Go module cache) with its CRDs applied, running until dropped. One test uses it.
pub struct CertManager {
    child: Child,
    /// Where its log goes.
    pub log: PathBuf,
}

impl CertManager {
    /// Starts it; ClusterIssuers would read their Secrets from `cluster_resource_namespace`.
    pub fn start(cluster_resource_namespace: &str) -> CertManager {
        build_part("cert-manager");
        let out = kubectl(&["apply", "--server-side", "-f", cached_path("cert-manager-crds").to_str().unwrap()]);
        assert!(out.status.success(), "cert-manager CRDs: {}", String::from_utf8_lossy(&out.stderr));
        let crds = ["certificates", "certificaterequests", "issuers", "clusterissuers"]
            .map(|c| format!("crd/{c}.cert-manager.io"));
        let mut wait = vec!["wait", "--for=condition=Established", "--timeout=60s"];
        wait.extend(crds.iter().map(String::as_str));
        let out = kubectl(&wait);
        assert!(out.status.success(), "cert-manager CRDs: {}", String::from_utf8_lossy(&out.stderr));
        let log = std::env::temp_dir().join(format!("moat-cert-manager-{}.log", std::process::id()));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(cached_path("cert-manager"))
            .arg(format!("--kubeconfig={}", kubeconfig().display()))
            .arg(format!("--cluster-resource-namespace={cluster_resource_namespace}"))
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        CertManager { child, log }
    }
}

impl Drop for CertManager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs kubectl (matching the server minor) with the admin kubeconfig.
pub fn kubectl(args: &[&str]) -> std::process::Output {
    Command::new(bin_dir().join("kubectl")).env("KUBECONFIG", kubeconfig()).args(args).output().unwrap()
}

/// Runs helm with the admin kubeconfig.
pub fn helm(args: &[&str]) -> std::process::Output {
    Command::new(bin_dir().join("helm")).env("KUBECONFIG", kubeconfig()).args(args).output().unwrap()
}

/// An admin client.
pub async fn admin() -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig()).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    Client::try_from(config).unwrap()
}

static SETUP: OnceCell<()> = OnceCell::const_new();

/// Namespace of the operator's ServiceAccount and Leases.
pub const OPERATOR_NS: &str = "moat-system";
/// The chart's ServiceAccount the operator impersonates in tests.
pub const OPERATOR_SA: &str = "system:serviceaccount:moat-system:moat";

/// Installs the CRDs (from `crds/`) and the chart's cluster-mode RBAC once per test run.
pub async fn setup() {
    SETUP
        .get_or_init(|| async {
            let out =
                kubectl(&["apply", "--server-side", "--force-conflicts", "-f", repo().join("crds").to_str().unwrap()]);
            assert!(out.status.success(), "installing CRDs: {}", String::from_utf8_lossy(&out.stderr));
            let out = kubectl(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/mqttbrokers.mqtt.moat.dev",
                "crd/mqttusers.mqtt.moat.dev",
                "crd/mqttacls.mqtt.moat.dev",
                "crd/mqttfirewalls.mqtt.moat.dev",
            ]);
            assert!(out.status.success(), "CRDs not established: {}", String::from_utf8_lossy(&out.stderr));
            let _ = kubectl(&["create", "namespace", OPERATOR_NS]);
            let rendered = helm(&[
                "template",
                "moat",
                repo().join("charts/moat").to_str().unwrap(),
                "--kube-version",
                "1.36.3",
                "--namespace",
                OPERATOR_NS,
                "--show-only",
                "templates/rbac.yaml",
                "--show-only",
                "templates/serviceaccount.yaml",
            ]);
            assert!(rendered.status.success(), "helm template: {}", String::from_utf8_lossy(&rendered.stderr));
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("rbac.yaml");
            std::fs::write(&f, &rendered.stdout).unwrap();
            let out = kubectl(&["apply", "--server-side", "--force-conflicts", "-f", f.to_str().unwrap()]);
            assert!(out.status.success(), "installing chart RBAC: {}", String::from_utf8_lossy(&out.stderr));
        })
        .await;
}

/// A namespace for one test, deleted when dropped.
pub struct TestNs {
    /// Namespace name.
    pub name: String,
}

impl TestNs {
    /// Creates `<prefix>-<random>`.
    pub async fn new(client: &Client, prefix: &str) -> TestNs {
        let name = format!("{prefix}-{:06x}", rand::random::<u32>() & 0xffffff);
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": {"moat-test": "true"}}}))
                .unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
        TestNs { name }
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // what the failed test left behind, for its output (Secrets' values are not shown)
            for args in [
                &["get", "moat,statefulsets,pods,networkpolicies,secrets", "-o", "wide"][..],
                &[
                    "get",
                    "mqttbrokers",
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.name}: {.status.upgrade}{'\\n'}{.status.conditions}{'\\n'}{end}",
                ],
                &["get", "events", "--sort-by", ".lastTimestamp"],
            ] {
                let out = kubectl(&[&["-n", self.name.as_str()][..], args].concat());
                eprintln!(
                    "--- kubectl -n {} {}\n{}{}",
                    self.name,
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `check` every 200 ms for the whole of `window` and fails with `what` as soon as it
/// returns false: a state that must hold throughout, not only at one instant.
pub async fn holds_for<F, Fut>(window: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        assert!(check().await, "{what} (after {:?} of a {window:?} window)", start.elapsed());
        if start.elapsed() >= window {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Applies a YAML stream (server-side, as field manager `test`) into `ns` with discovery.
pub async fn apply_yaml(client: &Client, ns: &str, yaml: &str) -> Vec<DynamicObject> {
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let mut out = vec![];
    let docs: Vec<serde_json::Value> =
        serde_norway::Deserializer::from_str(yaml).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    for value in docs {
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_json::from_value(value.clone()).unwrap();
        let gvk = GroupVersionKind::try_from(obj.types.as_ref().unwrap()).unwrap();
        let (ar, caps): (ApiResource, ApiCapabilities) = discovery.resolve_gvk(&gvk).expect("known kind");
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => Api::namespaced_with(client.clone(), ns, &ar),
            Scope::Cluster => Api::all_with(client.clone(), &ar),
        };
        let applied = api
            .patch(&obj.name_any(), &PatchParams::apply("test").force(), &Patch::Apply(&value))
            .await
            .unwrap_or_else(|e| panic!("applying {}: {e}", obj.name_any()));
        out.push(applied);
    }
    out
}

/// A running operator (`moat run`), scoped to one namespace, as the chart's ServiceAccount.
pub struct Operator {
    child: Child,
    log: Arc<Mutex<String>>,
    namespace: String,
}

/// Options of a test operator.
#[derive(Clone, Default)]
pub struct OperatorOpts {
    /// Extra arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
}

impl Operator {
    /// Starts `moat run` watching `ns` only, with its own Lease.
    pub fn start(ns: &str, opts: OperatorOpts) -> Operator {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_moat"));
        cmd.args([
            "run",
            "--watch-namespaces",
            ns,
            "--http-addr",
            "127.0.0.1:0",
            "--lease-name",
            &format!("moat-{ns}"),
            "--debounce",
            "200ms",
        ]);
        if !opts.args.iter().any(|a| a == "--as") {
            cmd.args(["--as", OPERATOR_SA]);
        }
        if !opts.args.iter().any(|a| a == "--operator-namespace") {
            cmd.args(["--operator-namespace", OPERATOR_NS]);
        }
        cmd.args(&opts.args)
            .env("KUBECONFIG", kubeconfig())
            .env("RUST_LOG", "info,moat=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start moat run");
        let log = Arc::new(Mutex::new(String::new()));
        for pipe in [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    log.lock().unwrap().push_str(&(line + "\n"));
                }
            });
        }
        Operator { child, log, namespace: ns.to_string() }
    }

    /// Everything the operator logged.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The operator's `/metrics` text (its address is read from its log).
    pub fn metrics(&self) -> String {
        metrics_from_log(&self.log())
    }

    /// A counter's value from `/metrics` (sum over all label sets), 0 when absent.
    pub fn counter(&self, name: &str) -> f64 {
        sum_counter(&self.metrics(), name)
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Kills the process at once (SIGKILL, like a crashed pod).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the process gracefully (SIGTERM) and waits.
    pub fn stop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }
}

/// Every operator of the suite is checked when it stops: its log (debug level) carries no key
/// material, hash line or token, and none of the passwords and keys stored in its namespace.
impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            return; // the test already failed; a second panic would abort the whole suite
        }
        let log = self.log();
        crate::hygiene::check_log(&log);
        crate::hygiene::assert_absent(&log, &crate::hygiene::stored_secret_values(&self.namespace), "operator log");
    }
}

/// The `/metrics` text of the operator that wrote `log`: its address is read from the
/// "serving /healthz" line.
pub fn metrics_from_log(log: &str) -> String {
    let line = log.lines().find(|l| l.contains("serving /healthz")).expect("the operator logged its address");
    let addr = line.split("addr=").nth(1).unwrap().split_whitespace().next().unwrap();
    let addr = addr.trim_matches(|c: char| !c.is_ascii_digit() && c != '.' && c != ':');
    http_get(addr, "/metrics")
}

/// A counter's value in a `/metrics` text, summed over all label sets, 0 when absent. `name` may
/// carry a label set to pick one series, e.g. `moat_reconciles_total{kind="MqttUser"}`.
pub fn sum_counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A plain HTTP GET on loopback (the operator's health/metrics endpoint).
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// The control plane's audit events about objects in `namespace` (`objectRef.namespace`), in log
/// order. Panics when the audit log cannot be read: a missing log must fail a "no writes" check,
/// never pass it with nothing measured. Lines that do not mention `namespace` are skipped before
/// JSON parsing (the log holds every test's events); a line not (yet) complete JSON is skipped.
pub fn audit_events(namespace: &str) -> Vec<serde_json::Value> {
    let path = run_dir().join("audit.log");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!("cannot read the control plane's audit log {}: {e} (is the local control plane up?)", path.display())
    });
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|l| l.contains(namespace))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["objectRef"]["namespace"] == namespace)
        .collect()
}

/// Write requests (create/update/patch/delete) made by the operator's identity in `ns`, from the
/// control plane's audit log.
pub fn operator_writes(ns: &str) -> Vec<serde_json::Value> {
    audit_events(ns)
        .into_iter()
        .filter(|e| e["impersonatedUser"]["username"] == OPERATOR_SA || e["user"]["username"] == OPERATOR_SA)
        .filter(|e| matches!(e["verb"].as_str(), Some("create" | "update" | "patch" | "delete" | "deletecollection")))
        .filter(|e| e["objectRef"]["resource"] != "events")
        .collect()
}

/// YAML of an MqttUser `user` of broker plant-a whose password is brought in Secret `secret`
/// (opted in for that user), and of that Secret.
pub fn brought_password_user(user: &str, secret: &str, password: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {secret}\n  labels: {{mqtt.moat.dev/watch: \"true\"}}\n  \
         annotations: {{mqtt.moat.dev/password-for: {user}}}\nstringData: {{password: \"{password}\"}}\n---\n\
         apiVersion: mqtt.moat.dev/v1alpha1\nkind: MqttUser\nmetadata: {{name: {user}}}\nspec:\n  brokerRef: {{name: plant-a}}\n  \
         authentication: {{password: {{secretRef: {{name: {secret}}}}}}}\n---\n"
    )
}

/// The lines of a password file that belong to MqttUsers: moat's two canary logins (in every
/// broker's file while attestation is on) are left out, after checking that they are there.
pub fn user_lines(passwd: &str) -> Vec<&str> {
    assert_eq!(passwd.lines().filter(|l| canary_line(l)).count(), 2, "the two canary logins are in the password file");
    passwd.lines().filter(|l| !canary_line(l)).collect()
}

/// Is this password-file line one of moat's canary logins?
pub fn canary_line(line: &str) -> bool {
    moat::validate::RESERVED_USERNAMES.iter().any(|u| line.starts_with(&format!("{u}:")))
}

/// Reads one object.
pub async fn get<K>(client: &Client, ns: &str, name: &str) -> Option<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns).get_opt(name).await.unwrap()
}

/// The status of condition `type_` of a moat object (via its JSON).
pub fn condition<K: serde::Serialize>(obj: &K, type_: &str) -> Option<(String, String, String)> {
    let v = serde_json::to_value(obj).unwrap();
    v["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_).map(|c| {
        (
            c["status"].as_str().unwrap_or("").into(),
            c["reason"].as_str().unwrap_or("").into(),
            c["message"].as_str().unwrap_or("").into(),
        )
    })
}

/// Waits until `ns/name` of kind K has condition `type_` = `status`; returns the object.
pub async fn wait_condition<K>(client: &Client, ns: &str, name: &str, type_: &str, status: &str, timeout: Duration) -> K
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + serde::Serialize,
{
    let what = format!("{} {ns}/{name} {type_}={status}", K::kind(&()));
    let mut last = None;
    let found = tokio::time::timeout(timeout, async {
        loop {
            if let Some(o) = get::<K>(client, ns, name).await {
                let c = condition(&o, type_);
                if c.as_ref().is_some_and(|c| c.0 == status) {
                    return o;
                }
                last = c;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for {what}; last condition: {last:?}"))
}

/// The MqttUsers of `ns`: (how many, how many with Ready=True), listed in pages of 2,000.
pub async fn user_readiness(client: &Client, ns: &str) -> kube::Result<(usize, usize)> {
    readiness::<moat::crd::MqttUser>(client, ns).await
}

/// (objects, Ready ones) of kind `K` in `ns`, listed in pages.
pub async fn readiness<K>(client: &Client, ns: &str) -> kube::Result<(usize, usize)>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let (mut total, mut ready) = (0, 0);
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(2000);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await?;
        total += page.items.len();
        ready += page.items.iter().filter(|u| condition(*u, "Ready").is_some_and(|c| c.0 == "True")).count();
        match page.metadata.continue_ {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => break,
        }
    }
    Ok((total, ready))
}

/// How many MqttUsers of `ns` are Ready.
pub async fn ready_users(client: &Client, ns: &str) -> usize {
    user_readiness(client, ns).await.unwrap().1
}

/// The password-file shard Secrets of broker `broker` in `ns`, sorted by name.
pub async fn passwd_shards(client: &Client, ns: &str, broker: &str) -> Vec<Secret> {
    broker_secrets(client, ns, broker, "passwd").await
}

/// The Secrets of broker `broker` in `ns` with component label `component`, sorted by name.
pub async fn broker_secrets(client: &Client, ns: &str, broker: &str, component: &str) -> Vec<Secret> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let selector = format!("mqtt.moat.dev/broker={broker},app.kubernetes.io/component={component}");
    let mut found = secrets.list(&ListParams::default().labels(&selector)).await.unwrap().items;
    found.sort_by_key(|s| s.metadata.name.clone());
    found
}

/// The assembled ACL file of a broker (its `<broker>-acl-<n>` parts joined as the agent does);
/// None while the parts do not join (an update in flight).
pub async fn acl_file(client: &Client, ns: &str, broker: &str) -> Option<String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let selector = format!("mqtt.moat.dev/broker={broker},app.kubernetes.io/component=acl");
    let mut parts: Vec<(usize, String, String)> = secrets
        .list(&ListParams::default().labels(&selector))
        .await
        .ok()?
        .items
        .into_iter()
        .filter_map(|s| {
            let i = moat::names::part_index(broker, "acl", s.metadata.name.as_deref()?)?;
            let text = |k: &str| s.data.as_ref()?.get(k).map(|b| String::from_utf8_lossy(&b.0).into_owned());
            Some((i, text("manifest")?, text("acl")?))
        })
        .collect();
    parts.sort();
    let pairs: Vec<(String, String)> = parts.into_iter().map(|(_, m, a)| (m, a)).collect();
    moat::render::shard::join(&pairs).ok()
}

/// Events about `name` in `ns` (events.k8s.io), as (reason, note).
pub async fn events_for(client: &Client, ns: &str, name: &str) -> Vec<(String, String)> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// Waits until the operator has made no write in `ns` for `quiet` (convergence), then returns the
/// number of writes so far.
pub async fn wait_quiet(ns: &str, quiet: Duration, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    let mut count = operator_writes(ns).len();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = operator_writes(ns).len();
        if now != count {
            count = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return count;
        }
        assert!(Instant::now() < deadline, "the operator never went quiet in {ns}");
    }
}

// ------------------------------------------------------------------------------------------------
// The real node (hack/local-node.sh): broker pods run there for real, from images built here.

/// The repository of the broker images built from Debian's packages (hack/images.sh).
pub const BROKER_IMAGES: &str = "moat.local/mosquitto";

/// `spec.pod` that places a broker's pods on the real node (its label and its taint's toleration).
pub const REAL_NODE_POD: &str = r#"{nodeSelector: {moat.dev/node-type: real}, tolerations: [{key: moat.dev/real-node, operator: Equal, value: "true", effect: NoSchedule}]}"#;

/// The moat image of the binary under test (the operator these tests start), built and loaded
/// into the real node on first use: `hack/images.sh build` with `MOAT_BINARY` (the debug build,
/// stripped in the image; the broker and pause images are cached after the first run) and
/// `load`. Its agent runs in every broker pod on the real node.
pub fn moat_image() -> String {
    static REF: OnceLock<String> = OnceLock::new();
    REF.get_or_init(|| {
        let images = |args: &[&str]| {
            let out = Command::new("bash")
                .arg(repo().join("hack/images.sh"))
                .args(args)
                .env("MOAT_BINARY", env!("CARGO_BIN_EXE_moat"))
                .stderr(Stdio::inherit())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "hack/images.sh {args:?} failed (is the real node up? hack/local-node.sh status)"
            );
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        images(&["build", "all"]);
        images(&["load"]);
        images(&["ref", "moat"])
    })
    .clone()
}

/// `kubectl apply --server-side` of the manifests in `yaml`.
pub fn apply_stdin(yaml: &str, extra: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("manifests.yaml");
    std::fs::write(&f, yaml).unwrap();
    let mut args = vec!["apply", "--server-side", "--force-conflicts", "-f", f.to_str().unwrap()];
    args.extend_from_slice(extra);
    kubectl(&args)
}

/// Waits until kube-router (hack/netpol.sh) enforces NetworkPolicy `ns/name` (`present`) or has
/// lifted it: its rules are in (gone from) the host's filter table.
pub fn netpol_enforced(ns: &str, name: &str, present: bool) {
    let want = if present { "present" } else { "absent" };
    let out = Command::new("bash")
        .arg(repo().join("hack/netpol.sh"))
        .args(["wait-policy", ns, name, want])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "hack/netpol.sh wait-policy {ns} {name} {want} failed");
}

/// Helm arguments that place the chart's pods on the real node (its label and taint).
pub const REAL_NODE_HELM_VALUES: [&str; 6] = [
    "--set-string",
    "nodeSelector.moat\\.dev/node-type=real",
    "--set",
    "tolerations[0].key=moat.dev/real-node,tolerations[0].operator=Equal,tolerations[0].effect=NoSchedule",
    "--set-string",
    "tolerations[0].value=true",
];

/// Namespace of the outsider the real-node operators use (no MqttFirewall of any test admits it).
pub const OUTSIDER_NS: &str = "moat-outsider";

/// The chart's outsider (`templates/outsider.yaml`: namespace, Deployment of the moat image under
/// test on the real node, its NetworkPolicy and the operator's RBAC to find it) in
/// [`OUTSIDER_NS`], Ready. Applied once per test process; waits for the rollout.
pub fn outsider() -> &'static str {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let image = moat_image();
        let (repository, tag) = image.rsplit_once(':').unwrap();
        let chart = repo().join("charts/moat");
        let (namespace, image_repo, image_tag) = (
            format!("outsider.namespace={OUTSIDER_NS}"),
            format!("image.repository={repository}"),
            format!("image.tag={tag}"),
        );
        let mut args = vec!["template", "moat", chart.to_str().unwrap(), "--kube-version", "1.36.3"];
        args.extend(["--namespace", OPERATOR_NS, "--show-only", "templates/outsider.yaml", "--set", &namespace]);
        args.extend(["--set", &image_repo, "--set", &image_tag, "--set", "image.pullPolicy=Never"]);
        args.extend(REAL_NODE_HELM_VALUES);
        let rendered = helm(&args);
        assert!(rendered.status.success(), "helm template: {}", String::from_utf8_lossy(&rendered.stderr));
        let out = apply_stdin(&String::from_utf8_lossy(&rendered.stdout), &[]);
        assert!(out.status.success(), "the outsider: {}", String::from_utf8_lossy(&out.stderr));
        let out = kubectl(&["-n", OUTSIDER_NS, "rollout", "status", "deployment/moat-outsider", "--timeout=120s"]);
        assert!(out.status.success(), "the outsider never became Ready: {}", String::from_utf8_lossy(&out.stderr));
    });
    OUTSIDER_NS
}

/// Options of an operator whose broker pods run on the real node (its agent is the moat image),
/// with the outsider.
pub fn real_node_operator() -> OperatorOpts {
    let outsider = outsider().to_string();
    OperatorOpts {
        args: vec!["--agent-image".into(), moat_image(), "--outsider-namespace".into(), outsider],
        ..Default::default()
    }
}

/// A broker on the real node running `version` of [`BROKER_IMAGES`] (or `repository`); `extra`
/// is more YAML under `spec` (indented two spaces).
pub fn real_broker(name: &str, version: &str, repository: Option<&str>, extra: &str) -> String {
    format!(
        "apiVersion: mqtt.moat.dev/v1alpha1\nkind: MqttBroker\nmetadata: {{name: {name}}}\nspec:\n  version: \"{version}\"\n  image: {{repository: {}, pullPolicy: Never}}\n  pod: {REAL_NODE_POD}\n{extra}",
        repository.unwrap_or(BROKER_IMAGES)
    )
}

/// A broker pod on the real node, as a client reaches it.
#[derive(Clone, Debug)]
pub struct LivePod {
    /// Pod name.
    pub name: String,
    /// Pod IP (10.88.x.x).
    pub ip: String,
    /// The stable name in the server certificate.
    pub server_name: String,
    /// Container ID of the broker container.
    pub container_id: String,
    /// Restarts of the broker container.
    pub restarts: i32,
}

/// The broker's pods once every one is Running and Ready on the real node.
pub async fn live_pods(client: &Client, ns: &str, broker: &str, replicas: usize) -> Vec<LivePod> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    eventually(Duration::from_secs(180), &format!("{replicas} ready pod(s) of {broker} on the real node"), || async {
        let lp = ListParams::default().labels(&format!("mqtt.moat.dev/broker={broker}"));
        let list = pods.list(&lp).await.ok()?.items;
        let mut out = vec![];
        for p in list.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
            let spec = p.spec.as_ref()?;
            if spec.node_name.as_deref() != Some("moat-real-0") {
                return None;
            }
            let st = p.status.as_ref()?;
            let ready = st.conditions.as_ref()?.iter().any(|c| c.type_ == "Ready" && c.status == "True");
            let broker_c = st.container_statuses.as_ref()?.iter().find(|c| c.name == "mosquitto")?;
            if !ready {
                return None;
            }
            let name = p.metadata.name.clone()?;
            out.push(LivePod {
                server_name: format!("{name}.{broker}-headless.{ns}.svc"),
                name,
                ip: st.pod_ip.clone()?,
                container_id: broker_c.container_id.clone()?,
                restarts: broker_c.restart_count,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        (out.len() == replicas).then_some(out)
    })
    .await
}

/// The trust bundle clients use (the broker's `<broker>-ca-bundle` ConfigMap).
pub async fn trust_bundle(client: &Client, ns: &str, broker: &str) -> String {
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), ns);
    cms.get(&format!("{broker}-ca-bundle")).await.unwrap().data.unwrap()["ca.crt"].clone()
}

/// One key of a Secret as text.
pub async fn secret_key(client: &Client, ns: &str, secret: &str, key: &str) -> String {
    let s: Secret = Api::namespaced(client.clone(), ns).get(secret).await.unwrap();
    String::from_utf8(s.data.unwrap()[key].0.clone()).unwrap()
}

/// A TLS connection to one pod's listener.
pub fn pod_conn(pod: &LivePod, port: u16, ca: &str) -> crate::mqtt::Conn {
    crate::mqtt::Conn {
        host: pod.ip.clone(),
        port,
        server_name: Some(pod.server_name.clone()),
        ca: Some(ca.to_string()),
        ..Default::default()
    }
}

/// The serial (canonical hex, as moat's status) of the certificate a pod serves on `port`.
pub async fn served_serial(pod: &LivePod, port: u16, ca: &str) -> Option<String> {
    let target = moat::probe::ProbeTarget {
        host: pod.ip.clone(),
        port,
        server_name: pod.server_name.clone(),
        ca_pem: Some(ca.to_string()),
        timeout: Duration::from_secs(3),
    };
    let report = moat::probe::probe(&target).await;
    report.cert_serial
}

/// Pod name → image of its `mosquitto` container, for the broker's pods not being deleted.
pub async fn broker_images(pods: &Api<k8s_openapi::api::core::v1::Pod>, broker: &str) -> BTreeMap<String, String> {
    pods.list(&ListParams::default().labels(&format!("mqtt.moat.dev/broker={broker}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let image = p.spec.as_ref()?.containers.iter().find(|c| c.name == "mosquitto")?.image.clone()?;
            Some((p.metadata.name?, image))
        })
        .collect()
}

/// The process of the broker container `container_id` ("containerd://<id>") on this host: the
/// `mosquitto` process whose cgroup names the container.
pub fn mosquitto_pid(container_id: &str) -> i32 {
    let id = container_id.rsplit('/').next().unwrap();
    let found = std::fs::read_dir("/proc").unwrap().filter_map(Result::ok).find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        let cgroup = std::fs::read_to_string(e.path().join("cgroup")).ok()?;
        (comm.trim() == "mosquitto" && cgroup.contains(id)).then_some(pid)
    });
    found.unwrap_or_else(|| panic!("no mosquitto process of container {id}"))
}
