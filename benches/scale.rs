//! `make bench`: moat's scale benchmark on the local control plane and a real Mosquitto.
//!
//! Writes `bench/results.md` and `bench/results.json`. Every figure is printed with its target;
//! the harness fails (non-zero exit) on errors instead of reporting partial numbers.

#[allow(dead_code)]
#[path = "../tests/cluster/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "../tests/cluster/hygiene.rs"]
mod hygiene;
#[allow(dead_code)]
#[path = "../tests/common/mqtt.rs"]
mod mqtt;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use harness::*;
use kube::api::{Api, Patch, PatchParams, PostParams};
use moat::crd::{MqttBroker, MqttUser};

const LONG: Duration = Duration::from_secs(900);
/// How long a no-op resync of 1,000 users may take before the bench fails.
const RESYNC_TIMEOUT: Duration = Duration::from_secs(120);
/// The operator's reconcile counters (src/metrics.rs: `moat_reconciles_total{kind}`).
const USER_RECONCILES: &str = "moat_reconciles_total{kind=\"MqttUser\"}";
const BROKER_RECONCILES: &str = "moat_reconciles_total{kind=\"MqttBroker\"}";

/// One measured figure.
#[derive(serde::Serialize)]
struct Figure {
    section: &'static str,
    name: String,
    value: f64,
    unit: &'static str,
    target: String,
    met: Option<bool>,
    note: String,
}

struct Report {
    figures: Vec<Figure>,
}

impl Report {
    /// The value of the figure named `name`, if it was measured in this run.
    fn value(&self, name: &str) -> Option<f64> {
        self.figures.iter().find(|f| f.name == name).map(|f| f.value)
    }

    /// One row of the table: each argument is one of its columns.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        section: &'static str,
        name: &str,
        value: f64,
        unit: &'static str,
        target: &str,
        met: Option<bool>,
        note: &str,
    ) {
        let mark = match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        println!("[bench] {section:<12} {name:<58} {value:>12.3} {unit:<8} target {target:<14} {mark} {note}");
        self.figures.push(Figure {
            section,
            name: name.into(),
            value,
            unit,
            target: target.into(),
            met,
            note: note.into(),
        });
    }
}

/// The operator under test: the release binary, as the chart's ServiceAccount.
struct Op {
    child: Child,
    log: std::path::PathBuf,
}

impl Op {
    fn start(ns: &str, log: std::path::PathBuf) -> Op {
        Op::start_with(ns, log, &[])
    }
    fn start_with(ns: &str, log: std::path::PathBuf, extra: &[String]) -> Op {
        let bin = repo().join("target/release/moat");
        let out = std::fs::File::create(&log).unwrap();
        // MOAT_BENCH_WRAP="heaptrack -o /tmp/{log}" runs the operator under a profiler ({log}: the
        // run's log name; the RSS figures are then the wrapper's: for finding where memory goes only)
        let stem = log.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        let wrap: Vec<String> = std::env::var("MOAT_BENCH_WRAP")
            .unwrap_or_default()
            .split_whitespace()
            .map(|w| w.replace("{log}", &stem))
            .collect();
        let mut cmd = match wrap.split_first() {
            Some((w, args)) => {
                let mut c = Command::new(w);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = std::os::unix::process::CommandExt::process_group(&mut cmd, 0)
            .args([
                "run",
                "--watch-namespaces",
                ns,
                "--as",
                OPERATOR_SA,
                "--http-addr",
                "127.0.0.1:0",
                "--operator-namespace",
                OPERATOR_NS,
            ])
            .args(["--lease-name", &format!("moat-{ns}"), "--active-probe=false"])
            .args(extra)
            .env("KUBECONFIG", kubeconfig())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        Op { child, log }
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
    /// CPU time the operator used so far (user + system, seconds; the wrapper's under MOAT_BENCH_WRAP).
    fn cpu(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // the fields after the command name: utime and stime are the 12th and 13th
        let fields: Vec<&str> = stat.rsplit_once(") ").map_or(vec![], |(_, rest)| rest.split(' ').collect());
        let ticks: f64 = fields.get(11..13).map_or(0.0, |t| t.iter().filter_map(|x| x.parse::<f64>().ok()).sum());
        ticks / clock_ticks()
    }
    fn metrics(&self) -> String {
        metrics_from_log(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }
    fn counter(&self, name: &str) -> f64 {
        sum_counter(&self.metrics(), name)
    }
    /// (current RSS, peak RSS) in MiB.
    fn rss(&self) -> (f64, f64) {
        (self.proc_mib("status", "VmRSS:"), self.proc_mib("status", "VmHWM:"))
    }
    /// Anonymous memory (the heap, MiB): RSS less the mapped binary and libraries.
    fn anonymous(&self) -> f64 {
        self.proc_mib("smaps_rollup", "Anonymous:")
    }
    /// A `key: <n> kB` line of `/proc/<pid>/<file>`, in MiB (0 when absent).
    fn proc_mib(&self, file: &str, key: &str) -> f64 {
        let text = std::fs::read_to_string(format!("/proc/{}/{file}", self.pid())).unwrap_or_default();
        let kb = text.lines().find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse::<f64>().ok());
        kb.unwrap_or(0.0) / 1024.0
    }
    /// Signals the operator's whole process group (a wrapper's child too).
    fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
    }
    fn stop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// API calls by the operator in `ns` (audit log): (writes, single-object reads).
fn operator_calls(ns: &str) -> (usize, usize) {
    let mut w = 0;
    let mut r = 0;
    for e in audit_events(ns) {
        if e["impersonatedUser"]["username"] != OPERATOR_SA {
            continue;
        }
        match e["verb"].as_str() {
            Some("create" | "update" | "patch" | "delete") => w += 1,
            Some("get") => r += 1,
            _ => {}
        }
    }
    (w, r)
}

/// Writes per (resource, subresource) by the operator in `ns`.
fn writes_by_resource(ns: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in audit_events(ns) {
        if e["impersonatedUser"]["username"] == OPERATOR_SA
            && matches!(e["verb"].as_str(), Some("create" | "update" | "patch" | "delete"))
        {
            let k = format!(
                "{} {}{}",
                e["verb"].as_str().unwrap(),
                e["objectRef"]["resource"].as_str().unwrap_or(""),
                e["objectRef"]["subresource"].as_str().map(|s| format!("/{s}")).unwrap_or_default()
            );
            *out.entry(k).or_default() += 1;
        }
    }
    out
}

/// `apiserver_request_total` summed for write verbs on moat's resources (cross-check).
async fn apiserver_writes(client: &kube::Client) -> f64 {
    apiserver_metrics(client)
        .await
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| {
            ["verb=\"POST\"", "verb=\"PATCH\"", "verb=\"PUT\"", "verb=\"DELETE\"", "verb=\"APPLY\""]
                .iter()
                .any(|v| l.contains(v))
        })
        .filter(|l| {
            ["resource=\"secrets\"", "resource=\"mqttusers\"", "resource=\"mqttbrokers\"", "resource=\"configmaps\""]
                .iter()
                .any(|r| l.contains(r))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The apiserver's `/metrics` text.
async fn apiserver_metrics(client: &kube::Client) -> String {
    client.request_text(http::Request::get("/metrics").body(Vec::new()).unwrap()).await.unwrap()
}

/// Clock ticks per second (the unit of /proc/<pid>/stat times).
fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().expect("getconf");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("CLK_TCK")
}

/// The apiserver's CPU time so far (seconds, its own `process_cpu_seconds_total`).
async fn apiserver_cpu(client: &kube::Client) -> f64 {
    apiserver_metrics(client)
        .await
        .lines()
        .find_map(|l| l.strip_prefix("process_cpu_seconds_total ")?.trim().parse().ok())
        .expect("the apiserver reports process_cpu_seconds_total")
}

fn user(name: &str, cert: bool) -> MqttUser {
    let auth = if cert { serde_json::json!({"certificate": {}}) } else { serde_json::json!({"password": {}}) };
    serde_json::from_value(serde_json::json!({
        "apiVersion": "mqtt.moat.dev/v1alpha1", "kind": "MqttUser",
        "metadata": {"name": name}, "spec": {"brokerRef": {"name": "bench"}, "authentication": auth},
    }))
    .unwrap()
}

/// Creates users with `concurrency` parallel requests; returns the elapsed time.
async fn create_users(client: &kube::Client, ns: &str, names: Vec<String>, cert: bool, concurrency: usize) -> Duration {
    let api: Api<MqttUser> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    let results: Vec<_> = futures::stream::iter(names)
        .map(|n| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &user(&n, cert)).await }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = start.elapsed();
    let errors = results.iter().filter(|r| r.is_err()).count();
    assert_eq!(errors, 0, "creating users failed: {:?}", results.iter().find(|r| r.is_err()));
    elapsed
}

async fn wait_ready(client: &kube::Client, ns: &str, n: usize, timeout: Duration) -> Duration {
    wait_all_ready::<MqttUser>(client, ns, n, timeout).await
}

/// Waits until `n` objects of kind `K` in `ns` are Ready, from one watch: polling lists of
/// 10,000 objects took a sixth of the apiserver's CPU in the burst it measured (profiled
/// 2026-12-07), while a watch costs it next to nothing (one list, then the events it sends the
/// operator anyway) and sees the last Ready the moment it is written.
async fn wait_all_ready<K>(client: &kube::Client, ns: &str, n: usize, timeout: Duration) -> Duration
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + 'static,
{
    use kube::runtime::{WatchStreamExt, watcher};
    let start = Instant::now();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let mut objects = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff().applied_objects());
    let mut ready = std::collections::HashSet::new();
    // where the time goes: when each tenth of the objects was Ready (printed, not a figure)
    let mut timeline = vec![];
    let wait = async {
        while ready.len() < n {
            let o = objects.next().await.expect("the watch ended").expect("watch error");
            let name = kube::ResourceExt::name_any(&o);
            match condition(&o, "Ready").is_some_and(|c| c.0 == "True") {
                true => ready.insert(name),
                false => ready.remove(&name),
            };
            if ready.len() * 10 >= (timeline.len() + 1) * n {
                timeline.push(format!("{:.1}", start.elapsed().as_secs_f64()));
            }
        }
    };
    let done = tokio::time::timeout(timeout, wait).await;
    println!("[bench] {n} {}: a tenth more Ready at {} s", K::kind(&()), timeline.join(", "));
    if done.is_err() {
        panic!("only {} of {n} {} Ready after {timeout:?}", ready.len(), K::kind(&()));
    }
    start.elapsed()
}

async fn broker(client: &kube::Client, ns: &str) {
    let yaml = r#"
apiVersion: mqtt.moat.dev/v1alpha1
kind: MqttBroker
metadata: {name: bench}
spec:
  version: "2.0.22"
  listeners:
  - {name: mqtts, port: 8883}
  - {name: mtls, port: 8884, authentication: Certificate}
---
apiVersion: mqtt.moat.dev/v1alpha1
kind: MqttAcl
metadata: {name: own}
spec:
  brokerRef: {name: bench}
  allUsers: true
  rules: [{topic: "devices/%u/#", access: ReadWrite}]
"#;
    apply_yaml(client, ns, yaml).await;
}

async fn section_writes_and_convergence(r: &mut Report, client: &kube::Client) {
    // floor: a plain client writing 1,000 MqttUsers with no operator running, twice (the first
    // writes to a freshly started apiserver can take several times as long); the faster counts
    let names: Vec<String> = (0..1000).map(|i| format!("u{i:05}")).collect();
    let mut runs = vec![];
    for _ in 0..2 {
        let floor_ns = TestNs::new(client, "bench-floor").await;
        let cpu = apiserver_cpu(client).await;
        let took = create_users(client, &floor_ns.name, names.clone(), false, 16).await;
        runs.push((took, apiserver_cpu(client).await - cpu));
        drop(floor_ns);
        settle();
    }
    println!("[bench] plain-client floor runs: {:?}", runs.iter().map(|(t, _)| t.as_secs_f64()).collect::<Vec<_>>());
    let (floor, floor_cpu) = runs.into_iter().min_by_key(|(t, _)| *t).unwrap();
    r.add(
        "convergence",
        "plain client: 1,000 MqttUser creates (16 in flight)",
        floor.as_secs_f64(),
        "s",
        "floor",
        None,
        "the physical floor on this apiserver: the faster of two runs",
    );

    let ns = TestNs::new(client, "bench-1k").await;
    let log = std::env::temp_dir().join("moat-bench-1k.log");
    let op = Op::start(&ns.name, log);
    broker(client, &ns.name).await;
    wait_condition::<MqttBroker>(client, &ns.name, "bench", "Ready", "True", LONG).await;
    wait_quiet(&ns.name, Duration::from_secs(2), LONG).await;
    let (w0, _) = operator_calls(&ns.name);
    let api_before = apiserver_writes(client).await;
    let (cpu_before, op_cpu_before) = (apiserver_cpu(client).await, op.cpu());
    let start = Instant::now();
    create_users(client, &ns.name, names.clone(), false, 16).await;
    wait_ready(client, &ns.name, 1000, LONG).await;
    let converge = start.elapsed();
    let (burst_cpu, op_burst_cpu) = (apiserver_cpu(client).await - cpu_before, op.cpu() - op_cpu_before);
    r.add("convergence", "1,000 password users applied at once: all Ready", converge.as_secs_f64(), "s", "", None, "");
    let ratio = converge.as_secs_f64() / floor.as_secs_f64();
    r.add(
        "convergence",
        "  ratio to the plain-client floor",
        ratio,
        "x",
        "",
        None,
        "1,000 creates vs all of moat's work",
    );
    wait_quiet(&ns.name, Duration::from_secs(3), LONG).await;
    let (w1, _) = operator_calls(&ns.name);
    let api_after = apiserver_writes(client).await;
    let per_user = (w1 - w0) as f64 / 1000.0;
    // the target: the apiserver's pace for every write a user takes (its create and moat's own)
    let paced = converge.as_secs_f64() / (floor.as_secs_f64() * (1.0 + per_user));
    r.add(
        "convergence",
        "  ratio to the floor x writes per user",
        paced,
        "x",
        "<= 1.5x",
        Some(paced <= 1.5),
        &format!("floor x {:.2} writes (the create and moat's)", 1.0 + per_user),
    );
    r.add(
        "writes",
        "API writes per created MqttUser (amortised over 1,000)",
        per_user,
        "writes",
        "",
        None,
        "operator writes in the namespace (audit log)",
    );
    r.add(
        "writes",
        "  cross-check: apiserver_request_total delta per user",
        (api_after - api_before - 1000.0) / 1000.0,
        "writes",
        "",
        None,
        "secrets+mqtt* writes minus the 1,000 creates",
    );
    // where the apiserver's time goes: a user's writes are not all as cheap as a create (a status
    // apply through the status subresource costs the apiserver several creates)
    // CPU seconds per 1,000 users = milliseconds per user
    let (per_create, per_user_cpu) = (floor_cpu, burst_cpu);
    r.add(
        "convergence",
        "apiserver CPU per MqttUser create (plain client)",
        per_create,
        "ms",
        "",
        None,
        "process_cpu_seconds_total of the apiserver",
    );
    r.add(
        "convergence",
        "apiserver CPU per user, 1,000-user burst with moat",
        per_user_cpu,
        "ms",
        "",
        None,
        &format!(
            "the create and moat's {per_user:.2} writes and reads: {:.1} creates' worth",
            per_user_cpu / per_create
        ),
    );
    r.add(
        "convergence",
        "operator CPU per user, 1,000-user burst",
        op_burst_cpu,
        "ms",
        "",
        None,
        "user + system time of the moat process",
    );
    let by_resource = writes_by_resource(&ns.name);
    let passwd_writes = by_resource.iter().filter(|(k, _)| k.contains("secrets")).map(|(_, v)| v).sum::<usize>();
    println!("[bench] writes by resource: {by_resource:?}");
    let shard_updates = audit_events(&ns.name)
        .into_iter()
        .filter(|e| e["impersonatedUser"]["username"] == OPERATOR_SA)
        .filter(|e| e["objectRef"]["name"].as_str().is_some_and(|n| n.starts_with("bench-passwd-")))
        .filter(|e| e["verb"] == "patch")
        .count();
    r.add("hashing", "password-file Secret updates during the 1,000-user burst", shard_updates as f64, "updates", "a handful", Some(shard_updates <= 20), &format!("each may trigger one agent reload; the agent coalesces updates within 3 s; {passwd_writes} Secret writes in total"));

    // no-op resync of 1,000 users: poke every user and the broker (an annotation, no spec
    // change: each user and the broker reconcile; a broker change alone no longer requeues its
    // users, and a user's annotations are no news to its broker)
    let before = op.metrics();
    let hashes_before = sum_counter(&before, "moat_password_hashes_total");
    let user_reconciles = sum_counter(&before, USER_RECONCILES);
    let broker_reconciles = sum_counter(&before, BROKER_RECONCILES);
    let (w2, r2) = operator_calls(&ns.name);
    let users: Api<MqttUser> = Api::namespaced(client.clone(), &ns.name);
    let poke = serde_json::json!({"metadata": {"annotations": {"bench/poke": "1"}}});
    let poked: Vec<_> = futures::stream::iter(names.clone())
        .map(|n| {
            let (users, poke) = (users.clone(), poke.clone());
            async move { users.patch(&n, &PatchParams::default(), &Patch::Merge(&poke)).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(poked.iter().all(|p| p.is_ok()), "poking the users failed");
    Api::<MqttBroker>::namespaced(client.clone(), &ns.name)
        .patch("bench", &PatchParams::default(), &Patch::Merge(&poke))
        .await
        .expect("poking the broker");
    // measured once the resync has run: the broker and the 1,000 users reconciled since the poke
    let deadline = Instant::now() + RESYNC_TIMEOUT;
    loop {
        let m = op.metrics();
        let user_delta = sum_counter(&m, USER_RECONCILES) - user_reconciles;
        let broker_delta = sum_counter(&m, BROKER_RECONCILES) - broker_reconciles;
        if user_delta >= 1000.0 && broker_delta >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no resync after poking the users: {user_delta} MqttUser (of 1,000) and {broker_delta} MqttBroker reconciles in {RESYNC_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (w3, r3) = operator_calls(&ns.name);
    r.add("writes", "writes during a no-op resync of 1,000 users", (w3 - w2) as f64, "writes", "0", Some(w3 == w2), "");
    r.add("writes", "uncached reads during that resync", (r3 - r2) as f64, "reads", "0", Some(r3 == r2), "");
    let hashes_after = op.counter("moat_password_hashes_total");
    r.add(
        "hashing",
        "PBKDF2 computations during the resync",
        hashes_after - hashes_before,
        "hashes",
        "0",
        Some(hashes_after == hashes_before),
        "",
    );

    // 100 certificate users
    let start = Instant::now();
    let certs: Vec<String> = (0..100).map(|i| format!("gw{i:03}")).collect();
    create_users(client, &ns.name, certs, true, 16).await;
    wait_ready(client, &ns.name, 1100, LONG).await;
    r.add(
        "convergence",
        "100 certificate users applied at once: all Ready",
        start.elapsed().as_secs_f64(),
        "s",
        "",
        None,
        "issued from the broker CA, P-256",
    );
    drop(op);
}

async fn section_scale(r: &mut Report, client: &kube::Client) {
    let ns = TestNs::new(client, "bench-10k").await;
    let log = std::env::temp_dir().join("moat-bench-10k.log");
    let mut op = Op::start(&ns.name, log.clone());
    broker(client, &ns.name).await;
    wait_condition::<MqttBroker>(client, &ns.name, "bench", "Ready", "True", LONG).await;
    let names: Vec<String> = (0..10_000).map(|i| format!("d{i:05}")).collect();
    let (cpu_before, op_cpu_before) = (apiserver_cpu(client).await, op.cpu());
    let start = Instant::now();
    let created = create_users(client, &ns.name, names, false, 16).await;
    println!("[bench] 10,000 MqttUsers created in {:.1} s; then:", created.as_secs_f64());
    wait_ready(client, &ns.name, 10_000, Duration::from_secs(1800)).await;
    let all_ready = start.elapsed().as_secs_f64();
    let (api_cpu, op_cpu) = (apiserver_cpu(client).await - cpu_before, op.cpu() - op_cpu_before);
    r.add("scale", "10,000 users on one broker: all Ready", all_ready, "s", "", None, "");
    // CPU seconds per 10,000 users / 10 = milliseconds per user (compare with the 1,000-user burst)
    r.add("scale", "apiserver CPU per user, 10,000-user burst", api_cpu / 10.0, "ms", "", None, "");
    r.add("scale", "operator CPU per user, 10,000-user burst", op_cpu / 10.0, "ms", "", None, "");
    // the scaling ratio, against the 1,000-user convergence of the same run
    if let Some(k1) = r.value("1,000 password users applied at once: all Ready") {
        let ratio = all_ready / k1;
        r.add(
            "scale",
            "10,000 users / 1,000 users, all Ready",
            ratio,
            "x",
            "<= 11x",
            Some(ratio <= 11.0),
            "10x the work",
        );
    }
    wait_quiet(&ns.name, Duration::from_secs(5), LONG).await;
    let shards = passwd_shards(client, &ns.name, "bench").await;
    let sizes: Vec<usize> = shards.iter().map(data_bytes).collect();
    let lines: usize =
        shards.iter().map(|s| String::from_utf8_lossy(&s.data.as_ref().unwrap()["passwd"].0).lines().count()).sum();
    let largest = *sizes.iter().max().unwrap() as f64 / 1024.0;
    r.add(
        "scale",
        &format!("password Secrets: {} shards, {lines} lines, largest", shards.len()),
        largest,
        "KiB",
        "<= 512 KiB",
        Some(largest <= 512.0 && lines == 10_000),
        "",
    );
    let size_errors = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("Too long") || l.contains("too large"))
        .count();
    r.add("scale", "size-limit errors", size_errors as f64, "errors", "0", Some(size_errors == 0), "");
    let (rss, peak) = op.rss();
    r.add("scale", "operator peak RSS with 10,000 users", peak, "MiB", "<= 64 MiB", Some(peak <= 64.0), "");
    let anon = op.anonymous();
    r.add("scale", "operator steady-state RSS", rss, "MiB", "", None, &format!("{anon:.0} MiB of it anonymous (heap)"));
    let (hashes, issued) = steady_window(&op).await;
    r.add(
        "hashing",
        "PBKDF2 computations in a 10 s steady-state window",
        hashes,
        "hashes",
        "0",
        Some(hashes == 0.0),
        "",
    );
    r.add("hashing", "certificate issuances in that window", issued, "certs", "0", Some(issued == 0.0), "");

    // restart with 10,000 users: time to steady state, writes
    op.stop();
    let (w0, _) = operator_calls(&ns.name);
    let log2 = std::env::temp_dir().join("moat-bench-10k-restart.log");
    let start = Instant::now();
    let op2 = Op::start(&ns.name, log2);
    // steady state: the operator has reconciled everything (its reconcile counter stops moving)
    let mut last = -1.0;
    let mut stable_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let n = std::panic::catch_unwind(|| op2.counter("moat_reconciles_total")).unwrap_or(0.0);
        if n > 10_000.0 && n == last {
            if stable_since.elapsed() >= Duration::from_secs(2) {
                break;
            }
        } else {
            last = n;
            stable_since = Instant::now();
        }
        assert!(start.elapsed() < LONG, "no steady state after restart");
    }
    let steady = start.elapsed() - Duration::from_secs(2);
    let (w1, _) = operator_calls(&ns.name);
    r.add(
        "scale",
        "time to steady state after a restart with 10,000 users",
        steady.as_secs_f64(),
        "s",
        "<= 30 s",
        Some(steady <= Duration::from_secs(30)),
        "initial lists + a reconcile of every object",
    );
    r.add("scale", "writes during that restart", (w1 - w0) as f64, "writes", "0", Some(w1 == w0), "");
    let (rss, peak) = op2.rss();
    r.add(
        "scale",
        "restarted operator RSS (peak)",
        peak,
        "MiB",
        "<= 64 MiB",
        Some(peak <= 64.0),
        &format!("current {rss:.1} MiB"),
    );
    let _ = op2.counter("moat_reconciles_total");
    drop(op2);
}

/// Bytes of data in a Secret.
fn data_bytes(s: &k8s_openapi::api::core::v1::Secret) -> usize {
    s.data.iter().flatten().map(|(_, v)| v.0.len()).sum()
}

/// PBKDF2 hashes and certificate issuances of `op` in a 10 s steady-state window (measured).
async fn steady_window(op: &Op) -> (f64, f64) {
    let before = op.metrics();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = op.metrics();
    let delta = |m: &str| sum_counter(&after, m) - sum_counter(&before, m);
    (delta("moat_password_hashes_total"), delta("moat_certificates_issued_total"))
}

/// One MqttAcl per user: the user's own topic tree.
fn own_acl(user: &str) -> moat::crd::MqttAcl {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "mqtt.moat.dev/v1alpha1", "kind": "MqttAcl",
        "metadata": {"name": format!("acl-{user}")},
        "spec": {"brokerRef": {"name": "bench"}, "users": [user], "rules": [{"topic": format!("devices/{user}/#"), "access": "ReadWrite"}]},
    }))
    .unwrap()
}

/// 10,000 certificate users, and 10,000 password users each with an MqttAcl of its own, on one
/// broker each: time to all Ready, peak RSS, and the issuances/hashes during the burst and after.
async fn section_scale_kinds(r: &mut Report, client: &kube::Client) {
    for certs in [true, false] {
        let (what, prefix) = if certs {
            ("certificate users", "bench-10k-certs")
        } else {
            ("users with an MqttAcl each", "bench-10k-acls")
        };
        let ns = TestNs::new(client, prefix).await;
        let log = std::env::temp_dir().join(format!("moat-{prefix}.log"));
        let op = Op::start(&ns.name, log.clone());
        broker(client, &ns.name).await;
        wait_condition::<MqttBroker>(client, &ns.name, "bench", "Ready", "True", LONG).await;
        let names: Vec<String> = (0..10_000).map(|i| format!("d{i:05}")).collect();
        let start = Instant::now();
        if certs {
            create_users(client, &ns.name, names, true, 16).await;
        } else {
            let acls: Api<moat::crd::MqttAcl> = Api::namespaced(client.clone(), &ns.name);
            let (_, results) = tokio::join!(
                create_users(client, &ns.name, names.clone(), false, 8),
                futures::stream::iter(names.clone())
                    .map(|n| {
                        let acls = acls.clone();
                        async move { acls.create(&PostParams::default(), &own_acl(&n)).await }
                    })
                    .buffer_unordered(8)
                    .collect::<Vec<_>>()
            );
            assert!(
                results.iter().all(|x| x.is_ok()),
                "creating ACLs failed: {:?}",
                results.iter().find(|x| x.is_err())
            );
        }
        wait_ready(client, &ns.name, 10_000, Duration::from_secs(1800)).await;
        if !certs {
            wait_all_ready::<moat::crd::MqttAcl>(client, &ns.name, 10_000, Duration::from_secs(1800)).await;
        }
        let all_ready = start.elapsed().as_secs_f64();
        let note =
            if certs { "issued from the broker CA, P-256" } else { "20,000 objects: users and their ACLs Ready" };
        r.add("scale", &format!("10,000 {what} on one broker: all Ready"), all_ready, "s", "", None, note);
        wait_quiet(&ns.name, Duration::from_secs(5), LONG).await;
        let (_, peak) = op.rss();
        r.add(
            "scale",
            &format!("operator peak RSS with 10,000 {what}"),
            peak,
            "MiB",
            "<= 64 MiB",
            Some(peak <= 64.0),
            "",
        );
        if certs {
            let issued = op.counter("moat_certificates_issued_total{kind=\"client\"}");
            r.add(
                "pki",
                "certificates issued for 10,000 certificate users",
                issued,
                "certs",
                "10000",
                Some(issued == 10_000.0),
                "one per user: none issued twice",
            );
        } else {
            let parts = broker_secrets(client, &ns.name, "bench", "acl").await;
            let largest = parts.iter().map(data_bytes).max().unwrap_or(0) as f64 / 1024.0;
            r.add(
                "scale",
                &format!("ACL Secrets: {} parts, largest", parts.len()),
                largest,
                "KiB",
                "<= 512 KiB",
                Some(largest <= 512.0),
                "",
            );
        }
        let (hashes, issued) = steady_window(&op).await;
        r.add(
            "hashing",
            &format!("PBKDF2 computations and certificate issuances in a 10 s steady-state window, 10,000 {what}"),
            hashes + issued,
            "ops",
            "0",
            Some(hashes + issued == 0.0),
            &format!("{hashes} hashes, {issued} certificates"),
        );
        drop(op);
        drop(ns);
        settle();
    }
}

fn section_broker(r: &mut Report) {
    // the rendered hardened bundle, with one extra insecurePlaintext listener for the comparison
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("broker.yaml");
    std::fs::write(
        &spec,
        r#"
apiVersion: mqtt.moat.dev/v1alpha1
kind: MqttBroker
metadata: {name: speed}
spec:
  version: "2.0.22"
  limits: {maxConnections: 100000}
  listeners:
  - {name: mqtts, port: 8883}
  - {name: plain, port: 1883, insecurePlaintext: true, tls: {enabled: false}}
---
apiVersion: mqtt.moat.dev/v1alpha1
kind: MqttUser
metadata: {name: bench}
spec: {brokerRef: {name: speed}}
"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let status = Command::new(repo().join("target/release/moat"))
        .args([
            "render",
            "-f",
            spec.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--bind-address",
            "127.0.0.1",
            "--port-offset",
            "30000",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let bundle = out.join("bundle");
    Command::new("chown").args(["-R", "mosquitto:mosquitto"]).arg(&out).status().unwrap();
    Command::new("chmod").args(["755", dir.path().to_str().unwrap()]).status().unwrap();
    let mut broker = Command::new("/usr/sbin/mosquitto")
        .args(["-c", "mosquitto.conf"])
        .current_dir(&bundle)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for port in [38883, 31883] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "broker did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let password = std::fs::read_to_string(bundle.join("clients/bench/password")).unwrap();
    let ca = std::fs::read_to_string(bundle.join("tls/ca.crt")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let measure = |tls: bool| -> f64 {
        rt.block_on(async {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let window = Duration::from_secs(5);
            let start = Instant::now();
            let mut n = 0u32;
            while start.elapsed() < window {
                let mut o =
                    rumqttc::MqttOptions::new(format!("bench-{n}"), "127.0.0.1", if tls { 38883 } else { 31883 });
                o.set_credentials("bench", password.clone());
                if tls {
                    o.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Simple {
                        ca: ca.clone().into_bytes(),
                        alpn: None,
                        client_auth: None,
                    }));
                }
                let (_c, mut el) = rumqttc::AsyncClient::new(o, 10);
                loop {
                    match el.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a))) => {
                            assert_eq!(a.code, rumqttc::ConnectReturnCode::Success);
                            break;
                        }
                        Ok(_) => {}
                        Err(e) => panic!("connect failed: {e:?}"),
                    }
                }
                n += 1;
            }
            n as f64 / start.elapsed().as_secs_f64()
        })
    };
    let plain = measure(false);
    let tls = measure(true);
    let _ = broker.kill();
    let _ = broker.wait();
    r.add(
        "broker",
        "CONNECT rate, plaintext (sequential, 1,000 PBKDF2 iterations)",
        plain,
        "conn/s",
        "",
        None,
        "rendered bundle, real Mosquitto 2.0.11",
    );
    r.add("broker", "CONNECT rate, TLS 1.3 (same bundle, P-256, set_tcp_nodelay)", tls, "conn/s", "", None, "");
    r.add("broker", "  TLS / plaintext", tls / plain, "x", ">= 0.1x", Some(tls / plain >= 0.1), "");
    // connect cost at the configured iterations: one PBKDF2-HMAC-SHA512 at 1,000 iterations
    let start = Instant::now();
    let rounds = 200;
    for i in 0..rounds {
        let _ = moat::render::passwd::hash_line("bench", &format!("password-{i}"), 1000, &[7u8; 12]).unwrap();
    }
    let per = start.elapsed().as_secs_f64() * 1000.0 / rounds as f64;
    r.add(
        "broker",
        "PBKDF2-SHA512 at 1,000 iterations (the broker pays this per CONNECT)",
        per,
        "ms",
        "",
        None,
        "moat's implementation; OpenSSL's is similar (notes: 0.93 ms)",
    );
}

/// p-th percentile (nearest rank) of sorted `xs`.
fn percentile(xs: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * xs.len() as f64).ceil().max(1.0) as usize;
    xs[rank.min(xs.len()) - 1]
}

/// Creates one user and returns the time until its client logs in to the broker pod with the
/// credentials from its Secret: everything a user waits for (operator, Secret, kubelet, agent,
/// reload).
async fn apply_to_connect(
    client: &kube::Client,
    ns: &str,
    pod: &LivePod,
    ca: &str,
    name: &str,
    cert: bool,
) -> Duration {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    let (secret, port) =
        if cert { (format!("{name}-mqtt-tls"), 8884) } else { (format!("{name}-mqtt-credentials"), 8883) };
    let start = Instant::now();
    Api::<MqttUser>::namespaced(client.clone(), ns).create(&PostParams::default(), &user(name, cert)).await.unwrap();
    let mut conn = None;
    loop {
        assert!(start.elapsed() < Duration::from_secs(120), "{name} never connected");
        if conn.is_none()
            && let Some(s) = secrets.get_opt(&secret).await.unwrap()
        {
            let data = s.data.unwrap_or_default();
            let text = |k: &str| data.get(k).map(|v| String::from_utf8(v.0.clone()).unwrap());
            conn = Some(if cert {
                mqtt::Conn {
                    client_cert: Some((text("tls.crt").unwrap(), text("tls.key").unwrap())),
                    ..pod_conn(pod, port, ca)
                }
            } else {
                mqtt::Conn { credentials: Some((name.into(), text("password").unwrap())), ..pod_conn(pod, port, ca) }
            });
        }
        if let Some(c) = &conn
            && mqtt::connect(c).await.is_ok()
        {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Real pods: a broker on the real node (hack/local-node.sh), users created one at a time, each
/// timed from `create` to its client's first successful CONNECT to the pod IP.
async fn section_real_node(r: &mut Report, client: &kube::Client) {
    let ns = TestNs::new(client, "bench-real").await;
    let log = std::env::temp_dir().join("moat-bench-real.log");
    let _op = Op::start_with(&ns.name, log, &["--agent-image".into(), moat_image()]);
    let listeners =
        "  listeners:\n  - {name: mqtts, port: 8883}\n  - {name: mtls, port: 8884, authentication: Certificate}\n";
    apply_yaml(client, &ns.name, &real_broker("bench", "2.0.21", None, listeners)).await;
    wait_condition::<MqttBroker>(client, &ns.name, "bench", "Ready", "True", LONG).await;
    let pod = live_pods(client, &ns.name, "bench", 1).await.remove(0);
    let ca = trust_bundle(client, &ns.name, "bench").await;
    for cert in [false, true] {
        let mut times = vec![];
        for i in 0..20 {
            let name = format!("{}{i:02}", if cert { "c" } else { "p" });
            times.push(apply_to_connect(client, &ns.name, &pod, &ca, &name, cert).await.as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let kind = if cert { "certificate" } else { "password" };
        let what =
            format!("{kind} user: kubectl apply -> first CONNECT to the pod, real node (20 users, one at a time)");
        let note = "operator, Secret, kubelet volume refresh (nudged), agent (3 s settle), reload";
        r.add("real node", &format!("{what}, p50"), percentile(&times, 50.0), "s", "", None, note);
        r.add("real node", &format!("{what}, p95"), percentile(&times, 95.0), "s", "", None, "");
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let cores = cpu.lines().filter(|l| l.starts_with("processor")).count();
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total = mem.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()).unwrap_or(0.0)
        / 1024.0
        / 1024.0;
    format!(
        "{cores} cores ({model}), {total:.0} GiB RAM; control plane (etcd, apiserver, controller-manager, scheduler, kwok), operator and clients share those cores"
    )
}

fn write_results(r: &Report) {
    let dir = repo().join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let mut md = String::from(
        "# moat benchmark results\n\nGenerated by `make bench` (benches/scale.rs); do not edit by hand.\n\n",
    );
    md += &format!(
        "- Date: {}\n- Machine: {}\n- Kubernetes v1.36.3 (local control plane, kwok nodes for scale, the real node moat-real-0 for real pods), Mosquitto 2.0.11 (Debian) on the host, 2.0.21 (Debian trixie image) on the real node, moat release build\n\n",
        jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC"),
        machine()
    );
    md += "| section | figure | value | unit | target | |\n|---|---|---:|---|---|---|\n";
    for f in &r.figures {
        let mark = match f.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "",
        };
        let note = if f.note.is_empty() { String::new() } else { format!(" — {}", f.note) };
        md += &format!(
            "| {} | {}{} | {:.3} | {} | {} | {} |\n",
            f.section,
            f.name.trim(),
            note,
            f.value,
            f.unit,
            f.target,
            mark
        );
    }
    std::fs::write(dir.join("results.md"), md).unwrap();
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&serde_json::json!({"machine": machine(), "figures": r.figures})).unwrap(),
    )
    .unwrap();
}

/// Waits until the test namespaces left by earlier sections (or runs) are gone: deleting 10,000
/// users and their Secrets keeps the apiserver busy for a while, which the next section would
/// measure as its own.
fn settle() {
    let started = Instant::now();
    // (fails harmlessly when there is nothing to wait for)
    let _ = kubectl(&["wait", "--for=delete", "namespace", "-l", "moat-test=true", "--timeout=900s"]);
    println!("[bench] {:.1} s waiting for earlier test namespaces to be deleted", started.elapsed().as_secs_f64());
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut report = Report { figures: vec![] };
    // MOAT_BENCH_ONLY=real,broker runs only those sections (of convergence, scale, kinds, real,
    // broker) while working on one; results.md is then not written
    let only = std::env::var("MOAT_BENCH_ONLY").ok();
    let run = |s: &str| only.as_deref().is_none_or(|o| o.split(',').any(|x| x == s));
    rt.block_on(async {
        setup().await;
        let client = admin().await;
        settle();
        if run("convergence") {
            section_writes_and_convergence(&mut report, &client).await;
            settle();
        }
        if run("scale") {
            section_scale(&mut report, &client).await;
            settle();
        }
        if run("kinds") {
            section_scale_kinds(&mut report, &client).await;
            settle();
        }
        if run("real") {
            section_real_node(&mut report, &client).await;
        }
    });
    drop(rt);
    if run("broker") {
        section_broker(&mut report);
    }
    if only.is_some() {
        println!("[bench] MOAT_BENCH_ONLY={}: bench/results.md not written", only.unwrap_or_default());
        return;
    }
    write_results(&report);
    println!("[bench] wrote bench/results.md and bench/results.json");
}
