//! Test harness: render bundles with the real `moat` binary, run them with the real Debian
//! Mosquitto on loopback, and talk to them with real MQTT clients.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "../common/mqtt.rs"]
mod mqtt;
pub use mqtt::*;

/// The minimal example broker (moat's defaults) with the users alice and bob and their ACLs.
pub const MINIMAL: &[&str] = &["examples/broker-minimal.yaml", "tests/e2e/fixtures/plant-a-users.yaml"];
/// The production example broker (plant-b) with the example users, ACLs and firewall.
pub const PRODUCTION: &[&str] = &[
    "examples/broker-production.yaml",
    "examples/user-password.yaml",
    "examples/user-certificate.yaml",
    "examples/user-byo-password.yaml",
    "examples/acl-per-user.yaml",
    "examples/acl-pattern.yaml",
    "examples/firewall.yaml",
];

/// Path of the `moat` binary under test.
pub fn moat_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_moat"))
}

/// Repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path of the Mosquitto broker; the tests fail loudly when it is missing (make test installs it).
pub fn mosquitto_bin() -> PathBuf {
    let p = PathBuf::from("/usr/sbin/mosquitto");
    assert!(p.exists(), "Mosquitto is not installed: run hack/ensure-mosquitto.sh (make test does)");
    p
}

/// An OpenSSL configuration that permits TLS 1.0/1.1 and weak ciphers, so only moat's rendered
/// `tls_version` keeps old protocols out (Debian's default config already refuses them, which
/// would make a "TLS 1.1 is refused" test pass for the wrong reason).
pub fn permissive_openssl_conf(dir: &Path) -> PathBuf {
    let p = dir.join("openssl-permissive.cnf");
    std::fs::write(
        &p,
        "openssl_conf = openssl_init\n[openssl_init]\nssl_conf = ssl_sect\n[ssl_sect]\nsystem_default = system_default_sect\n\
         [system_default_sect]\nMinProtocol = TLSv1\nCipherString = DEFAULT@SECLEVEL=0\n",
    )
    .unwrap();
    p
}

/// Makes a directory tree readable by the `mosquitto` user (the broker drops privileges to it,
/// like the uid 1883 it runs as in a pod).
pub fn give_to_mosquitto(dir: &Path) {
    let status = Command::new("chown").args(["-R", "mosquitto:mosquitto"]).arg(dir).status().unwrap();
    assert!(status.success());
    let mut p = dir.to_path_buf();
    // every parent must be traversable
    while let Some(parent) = p.parent() {
        if parent == Path::new("/") || parent == Path::new("") {
            break;
        }
        let mode = std::fs::metadata(parent).unwrap().permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode | 0o711)).unwrap();
        }
        p = parent.to_path_buf();
    }
}

/// A port offset such that `ports.map(|p| p + offset)` are all free on loopback.
pub fn free_offset(ports: &[u16]) -> u16 {
    for _ in 0..200 {
        let offset: u16 = 20000 + (rand::random::<u16>() % 20000);
        if ports.iter().all(|p| TcpListener::bind(("127.0.0.1", p + offset)).is_ok()) {
            return offset;
        }
    }
    panic!("no free loopback ports");
}

/// Output of `moat render`: Kubernetes objects plus a runnable bundle.
pub struct Rendered {
    /// Temporary directory holding everything.
    pub dir: tempfile::TempDir,
    /// `<dir>/bundle`.
    pub bundle: PathBuf,
    /// Port offset the listeners were rendered with.
    pub offset: u16,
    /// Every rendered Kubernetes object.
    pub objects: Vec<serde_json::Value>,
    /// What `moat render` printed on stderr (warnings).
    pub stderr: String,
}

impl Rendered {
    /// The data of a rendered Secret (decoded).
    pub fn secret(&self, name: &str) -> BTreeMap<String, Vec<u8>> {
        use base64::Engine;
        let s = self
            .objects
            .iter()
            .find(|o| o["kind"] == "Secret" && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no Secret {name} rendered"));
        s["data"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (k.clone(), base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A file of a client's generated credentials (`password`, `tls.crt`, `tls.key`, `ca.crt`).
    pub fn client_file(&self, username: &str, file: &str) -> String {
        std::fs::read_to_string(self.bundle.join("clients").join(username).join(file))
            .unwrap_or_else(|e| panic!("client {username} has no {file}: {e}"))
    }

    /// The trust bundle clients use to verify the broker.
    pub fn ca(&self) -> String {
        std::fs::read_to_string(self.bundle.join("tls/ca.crt")).unwrap()
    }

    /// Port of a listener after the offset.
    pub fn port(&self, base: u16) -> u16 {
        base + self.offset
    }

    /// The data of a rendered Secret as text.
    pub fn secret_text(&self, name: &str) -> BTreeMap<String, String> {
        self.secret(name).into_iter().map(|(k, v)| (k, String::from_utf8(v).unwrap())).collect()
    }

    /// The broker's CA set, as the controller stores it (`<broker>-ca`).
    pub fn ca_set(&self, broker: &str) -> moat::pki::CaSet {
        moat::pki::CaSet::from_secret_data(&self.secret_text(&format!("{broker}-ca"))).unwrap()
    }

    /// Replaces keys of a rendered Secret (as a reconcile would have written them).
    pub fn set_secret(&mut self, name: &str, data: &[(&str, &str)]) {
        use base64::Engine;
        let s = self
            .objects
            .iter_mut()
            .find(|o| o["kind"] == "Secret" && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no Secret {name} rendered"));
        for (k, v) in data {
            s["data"][*k] = base64::engine::general_purpose::STANDARD.encode(v).into();
        }
    }

    /// The names the rendered server certificate is valid for (to re-issue it unchanged).
    pub fn server_names(&self, broker: &str) -> moat::pki::ServerNames {
        let info = moat::pki::inspect(&self.secret_text(&format!("{broker}-tls"))["tls.crt"]).unwrap();
        moat::pki::ServerNames { dns: info.dns_names, ips: info.ip_addresses }
    }
}

/// Runs `moat render` on example files (paths relative to the repo) with listeners on loopback.
pub fn render(files: &[&str], base_ports: &[u16]) -> Rendered {
    let dir = tempfile::tempdir().unwrap();
    let offset = free_offset(base_ports);
    let mut cmd = Command::new(moat_bin());
    cmd.arg("render");
    for f in files {
        cmd.arg("-f").arg(repo().join(f));
    }
    cmd.args(["--out"]).arg(dir.path()).args(["--bind-address", "127.0.0.1", "--port-offset", &offset.to_string()]);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "moat render failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(dir.path().join("objects.yaml")).unwrap();
    let objects = serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect();
    let bundle = dir.path().join("bundle");
    Rendered { dir, bundle, offset, objects, stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

/// A running Mosquitto.
pub struct Broker {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Broker {
    /// Starts Mosquitto with `<dir>/mosquitto.conf` (cwd = dir) and waits until every port accepts.
    pub fn start(dir: &Path, ports: &[u16], env: &[(&str, &Path)]) -> Broker {
        Self::start_with(dir, "mosquitto.conf", ports, env)
    }

    /// Starts Mosquitto with `<dir>/<conf>` (cwd = dir) and waits until every port accepts.
    pub fn start_with(dir: &Path, conf: &str, ports: &[u16], env: &[(&str, &Path)]) -> Broker {
        give_to_mosquitto(dir);
        // (no stdbuf: moat renders `log_dest stderr`, which even 2.0.11 writes unbuffered into a
        // pipe, as into a container's log; the tests that wait for log lines prove it)
        let mut cmd = Command::new(mosquitto_bin());
        cmd.arg("-c").arg(conf).current_dir(dir).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start mosquitto");
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
        let mut broker = Broker { child, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in ports {
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                if let Ok(Some(status)) = broker.child.try_wait() {
                    panic!("mosquitto exited ({status}):\n{}", broker.log());
                }
                assert!(Instant::now() < deadline, "mosquitto did not listen on {port}:\n{}", broker.log());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        broker
    }

    /// Everything the broker logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// PID of the broker process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits until the broker log contains `needle` (after the first `skip` bytes).
    pub fn wait_log(&self, skip: usize, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().get(skip..).is_some_and(|l| l.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }

    /// Sends SIGHUP (what `moat agent` does) and waits for the reload to be logged.
    pub fn reload(&self) {
        let before = self.log().len();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), nix::sys::signal::Signal::SIGHUP)
            .unwrap();
        assert!(self.wait_log(before, "Reloading config", Duration::from_secs(5)), "no reload logged:\n{}", self.log());
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory updated the way the kubelet updates a Secret volume: files are symlinks into
/// `..data`, which atomically switches to a new timestamped directory on every update.
pub struct SecretVolume {
    /// The mount point.
    pub dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    /// An empty volume at `dir`.
    pub fn new(dir: PathBuf) -> SecretVolume {
        std::fs::create_dir_all(&dir).unwrap();
        SecretVolume { dir, generation: 0 }
    }

    /// Replaces the whole content (`relative path → bytes`) atomically.
    pub fn write(&mut self, files: &BTreeMap<String, Vec<u8>>) {
        self.generation += 1;
        let stamp = format!("..2026_01_01_00_00_{:02}.{}", self.generation % 60, self.generation);
        let target = self.dir.join(&stamp);
        for (rel, content) in files {
            let p = target.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
        }
        let old = std::fs::read_link(self.dir.join("..data")).ok();
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        // top-level entries are symlinks into ..data (first path component only)
        let tops: std::collections::BTreeSet<String> =
            files.keys().map(|k| k.split('/').next().unwrap().to_string()).collect();
        for entry in std::fs::read_dir(&self.dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !name.starts_with("..") && !tops.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        for top in tops {
            let link = self.dir.join(&top);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{top}"), &link).unwrap();
            }
        }
        if let Some(old) = old {
            let _ = std::fs::remove_dir_all(self.dir.join(old));
        }
    }
}

/// The pod layout the agent reads: one Secret volume per mounted Secret of a rendered broker.
pub struct PodVolumes {
    /// `config/`.
    pub config: SecretVolume,
    /// `tls/`.
    pub tls: SecretVolume,
    /// `acl/` (projected: `<n>/acl`, `<n>/manifest`).
    pub acl: SecretVolume,
    /// `passwd/` (projected: `<n>/passwd`, `<n>/manifest`).
    pub passwd: SecretVolume,
    /// The source directory for `moat agent --source`.
    pub root: PathBuf,
}

/// The directory Mosquitto logs into next to the run directory `run_dir` (the pod's `/moat/log`).
pub fn log_dir(run_dir: &Path) -> PathBuf {
    run_dir.with_file_name("log")
}

impl PodVolumes {
    /// Mounts the rendered Secrets of broker `broker` under `root`, with the in-pod run directory
    /// `/moat/run` in mosquitto.conf replaced by `run_dir`, the log directory `/moat/log` by its
    /// sibling `log/` ([`log_dir`]), and every listener bound to loopback at the rendered port
    /// offset (the only changes to the rendered files).
    pub fn from_rendered(r: &Rendered, broker: &str, root: &Path, run_dir: &Path) -> PodVolumes {
        let mut v = PodVolumes {
            config: SecretVolume::new(root.join("config")),
            tls: SecretVolume::new(root.join("tls")),
            acl: SecretVolume::new(root.join("acl")),
            passwd: SecretVolume::new(root.join("passwd")),
            root: root.to_path_buf(),
        };
        let mut conf = r.secret(&format!("{broker}-config"));
        let text = String::from_utf8(conf["mosquitto.conf"].clone()).unwrap();
        let text = text
            .replace("/moat/run", run_dir.to_str().unwrap())
            .replace("/moat/log", log_dir(run_dir).to_str().unwrap());
        let text = localize_config(&text, r.offset);
        conf.insert("mosquitto.conf".into(), text.into_bytes());
        v.config.write(&conf);
        let tls = r.secret(&format!("{broker}-tls"));
        v.tls.write(&tls);
        let mut parts = BTreeMap::new();
        for i in 0.. {
            let name = format!("{broker}-acl-{i}");
            if !r.objects.iter().any(|o| o["kind"] == "Secret" && o["metadata"]["name"] == name.as_str()) {
                break;
            }
            let part = r.secret(&name);
            parts.insert(format!("{i}/acl"), part["acl"].clone());
            parts.insert(format!("{i}/manifest"), part["manifest"].clone());
        }
        assert!(!parts.is_empty(), "no ACL part rendered for {broker}");
        v.acl.write(&parts);
        let mut shards = BTreeMap::new();
        for i in 0.. {
            let name = format!("{broker}-passwd-{i}");
            if !r.objects.iter().any(|o| o["kind"] == "Secret" && o["metadata"]["name"] == name.as_str()) {
                break;
            }
            let shard = r.secret(&name);
            shards.insert(format!("{i}/passwd"), shard["passwd"].clone());
            shards.insert(format!("{i}/manifest"), shard["manifest"].clone());
        }
        assert!(!shards.is_empty(), "no password shard rendered for {broker}");
        v.passwd.write(&shards);
        v
    }

    /// Replaces the ACL with `text` as one part (the way the operator would shard a small file).
    pub fn write_acl(&mut self, text: &str) {
        self.acl.write(&acl_part(text));
    }

    /// The TLS Secret volume's current content with some files replaced, written as one update.
    pub fn update_tls(&mut self, changes: &[(&str, &str)]) {
        let mut files = read_volume(&self.tls.dir);
        for (k, v) in changes {
            files.insert(k.to_string(), v.as_bytes().to_vec());
        }
        self.tls.write(&files);
    }
}

/// The projected ACL volume content of one part holding `text` (with its manifest).
pub fn acl_part(text: &str) -> BTreeMap<String, Vec<u8>> {
    use sha2::Digest;
    let manifest = format!("1 {}", moat_hex(&sha2::Sha256::digest(text.as_bytes())));
    BTreeMap::from([("0/acl".to_string(), text.as_bytes().to_vec()), ("0/manifest".to_string(), manifest.into_bytes())])
}

fn moat_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The files of a Secret volume (its top-level symlinks, followed).
pub fn read_volume(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("..") {
            files.insert(name, std::fs::read(entry.path()).unwrap());
        }
    }
    files
}

/// A pod's `mosquitto.conf` made runnable on the test host: every `listener <port>` line becomes
/// `listener <port + offset> 127.0.0.1` (what `moat render --bind-address --port-offset` does
/// for the bundle).
pub fn localize_config(conf: &str, offset: u16) -> String {
    let mut out = String::with_capacity(conf.len());
    for line in conf.lines() {
        let port = line.strip_prefix("listener ").and_then(|p| p.trim().parse::<u16>().ok());
        match port {
            Some(p) => out.push_str(&format!("listener {} 127.0.0.1", p + offset)),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// A broker pod on the test host: the rendered Secrets mounted as kubelet-style volumes, the
/// agent's init run, Mosquitto started on the installed files and `moat agent` watching the
/// volumes (every change reaches the broker through the agent and SIGHUP).
pub struct Pod {
    /// The rendered broker.
    pub r: Rendered,
    /// The mounted Secrets.
    pub volumes: PodVolumes,
    /// The run directory (emptyDir) the agent installs into.
    pub run: PathBuf,
    /// The broker.
    pub broker: Broker,
    /// The agent.
    pub agent: Agent,
    reloads: usize,
}

impl Pod {
    /// Starts broker `broker` of `r`, waiting until each of `base_ports` (+ offset) listens.
    pub fn start(r: Rendered, broker: &str, base_ports: &[u16], env: &[(&str, &Path)]) -> Pod {
        let run = r.dir.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        let volumes = PodVolumes::from_rendered(&r, broker, &r.dir.path().join("secrets"), &run);
        let (ok, log) = agent_once(&volumes.root, &run);
        assert!(ok, "agent --once failed: {log}");
        let ports: Vec<u16> = base_ports.iter().map(|p| r.port(*p)).collect();
        std::fs::create_dir_all(log_dir(&run)).unwrap();
        give_to_mosquitto(&log_dir(&run));
        let broker = Broker::start_with(&run, "mosquitto.conf", &ports, env);
        let agent = Agent::start(&volumes.root, &run, broker.pid());
        Pod { r, volumes, run, broker, agent, reloads: 0 }
    }

    /// Waits until the agent has signalled one more reload and the broker logged it.
    pub fn wait_reload(&mut self) {
        self.reloads += 1;
        let n = self.reloads;
        assert!(
            self.agent.wait_for("sent SIGHUP", n, Duration::from_secs(15)),
            "the agent did not reload (#{n}):\n{}",
            self.agent.log()
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.broker.log().matches("Reloading config").count() < n {
            assert!(Instant::now() < deadline, "the broker did not log reload #{n}:\n{}", self.broker.log());
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until the agent refused an update whose reason contains `reason` (no reload happens).
    pub fn wait_refused(&self, reason: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.agent.log().lines().any(|l| l.contains("refusing the updated broker files") && l.contains(reason)) {
            assert!(Instant::now() < deadline, "the agent did not refuse ({reason}):\n{}", self.agent.log());
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// How many SIGHUPs the agent sent so far.
    pub fn sighups(&self) -> usize {
        self.agent.log().matches("sent SIGHUP").count()
    }

    /// TLS connection settings for listener `base` with the rendered trust bundle.
    pub fn tls(&self, base: u16) -> Conn {
        Conn { port: self.r.port(base), ca: Some(self.r.ca()), ..Default::default() }
    }
}

/// A running `moat agent`.
pub struct Agent {
    child: Child,
    log: Arc<Mutex<String>>,
}

/// The address the tests ask the agents' `/status` from: the caller of `/status` is the
/// operator, so it must not be the tests' MQTT clients' (127.0.0.1), whose refusals would count
/// as moat's own.
pub const STATUS_CALLER: &str = "127.0.0.3";

impl Agent {
    /// Runs `moat agent` over `source`, installing into `target`, signalling `pid`, following
    /// the broker's log in [`log_dir`] of `target` (5 refused logins a minute are suspicious).
    pub fn start(source: &Path, target: &Path, pid: u32) -> Agent {
        Agent::start_with(source, target, pid, &[])
    }

    /// [`Agent::start`] with more arguments.
    pub fn start_with(source: &Path, target: &Path, pid: u32, extra: &[&str]) -> Agent {
        let (uid, gid) = mosquitto_ids();
        let mut child = Command::new(moat_bin())
            .args(["agent", "--interval", "100ms", "--settle", "300ms", "--failed-logins", "5"])
            // any free ports: the agent logs the ones it bound
            .args(["--status-addr=127.0.0.1:0", "--metrics-addr=127.0.0.1:0"])
            .arg("--log-file")
            .arg(log_dir(target).join("mosquitto.log"))
            .args(extra)
            .arg("--source")
            .arg(source)
            .arg("--target")
            .arg(target)
            .arg("--mosquitto-pid")
            .arg(pid.to_string())
            .arg("--owner")
            .arg(format!("{uid}:{gid}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                l.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Agent { child, log }
    }

    /// The port the agent serves `path` (`/status` or `/metrics`) on, from its log.
    fn port(&self, path: &str) -> u16 {
        let needle = format!("serving {path} addr=127.0.0.1:");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            let port = log.lines().find_map(|l| l.split_once(&needle)?.1.split_whitespace().next()?.parse().ok());
            if let Some(port) = port {
                return port;
            }
            assert!(Instant::now() < deadline, "the agent does not serve {path}:\n{log}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `GET path` from the agent's status (`/status`) or metrics (`/metrics`) endpoint.
    pub async fn get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let port = self.port(path.split('?').next().unwrap_or(path));
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((STATUS_CALLER.parse::<std::net::Ipv4Addr>().unwrap(), 0).into()).unwrap();
        let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: agent\r\n\r\n").as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("GET {path}: {answer}"));
        assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
        body.to_string()
    }

    /// The agent's log.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log has `n` occurrences of `needle`.
    pub fn wait_for(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().matches(needle).count() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// uid and gid of the `mosquitto` user.
pub fn mosquitto_ids() -> (u32, u32) {
    let user = nix::unistd::User::from_name("mosquitto").unwrap().expect("user mosquitto (Debian package)");
    (user.uid.as_raw(), user.gid.as_raw())
}

/// Runs `moat agent --once`; returns (exit success, stderr).
pub fn agent_once(source: &Path, target: &Path) -> (bool, String) {
    let (uid, gid) = mosquitto_ids();
    let out = Command::new(moat_bin())
        .args(["agent", "--once"])
        .arg("--source")
        .arg(source)
        .arg("--target")
        .arg(target)
        .arg("--owner")
        .arg(format!("{uid}:{gid}"))
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// What `moat probe` printed and returned.
pub struct ProbeRun {
    /// Exit code.
    pub code: i32,
    /// The report.
    pub stdout: String,
}

impl ProbeRun {
    /// The value of a report line (`certificate serial`, `result`, ...).
    pub fn field(&self, name: &str) -> Option<String> {
        self.stdout.lines().find_map(|l| l.strip_prefix(name).map(|rest| rest.trim().to_string()))
    }

    /// The label (`PASS`, `FAIL`, `UNKNOWN`) of one of the four checks.
    pub fn check(&self, name: &str) -> String {
        let value = self.field(name).unwrap_or_else(|| panic!("no {name:?} in the probe report:\n{}", self.stdout));
        value.split_whitespace().next().unwrap_or_default().to_string()
    }
}

/// Runs the `moat probe` binary against `127.0.0.1:<port>` (server name 127.0.0.1, the bind
/// address in the rendered server certificate).
pub fn moat_probe(port: u16, ca: Option<&Path>) -> ProbeRun {
    let mut cmd = Command::new(moat_bin());
    cmd.args(["probe", "--host", "127.0.0.1", "--port", &port.to_string(), "--timeout", "3s"]);
    if let Some(ca) = ca {
        cmd.arg("--ca").arg(ca);
    }
    let out = cmd.output().unwrap();
    ProbeRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    }
}

/// Serial (lower-case hex) of the certificate a TLS listener serves now, seen by a new handshake.
pub fn served_serial(port: u16) -> String {
    let run = moat_probe(port, None);
    run.field("certificate serial")
        .filter(|s| s != "-")
        .unwrap_or_else(|| panic!("the probe saw no certificate on {port}:\n{}", run.stdout))
        .to_ascii_lowercase()
}

/// Serial of a PEM certificate as [`served_serial`] prints it.
pub fn serial_of(cert_pem: &str) -> String {
    moat::pki::inspect(cert_pem).unwrap().serial_hex
}

/// Password shard files (`<i>/passwd`, `<i>/manifest`) for `users`, built the way the broker
/// controller builds them: same fingerprint key, the rendered lines reused where the password is
/// unchanged, new lines hashed with `iterations`.
pub fn shard_files(
    r: &Rendered,
    broker: &str,
    users: &[(String, String)],
    iterations: u32,
) -> BTreeMap<String, Vec<u8>> {
    use base64::Engine;
    let ca = r.secret(&format!("{broker}-ca"));
    let key = base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8(ca["fingerprint.key"].clone()).unwrap().trim())
        .unwrap();
    let shard = r.secret(&format!("{broker}-passwd-0"));
    let previous = moat::render::passwd::previous_from_shards(&[(
        String::from_utf8(shard["passwd"].clone()).unwrap(),
        String::from_utf8(shard["fingerprints"].clone()).unwrap(),
    )])
    .unwrap();
    let assembly = moat::render::passwd::assemble(users, &previous, iterations, &key).unwrap();
    let shards = moat::render::passwd::shard(&assembly.entries).unwrap();
    let mut files = BTreeMap::new();
    for (i, s) in shards.iter().enumerate() {
        files.insert(format!("{i}/passwd"), s.passwd.clone().into_bytes());
        files.insert(format!("{i}/manifest"), s.manifest.clone().into_bytes());
    }
    files
}

/// `openssl s_client` forcing one TLS version (`-tls1`, `-tls1_1`, ...) with the given OpenSSL
/// config; returns whether a handshake completed.
pub fn s_client_handshakes(port: u16, version_flag: &str, openssl_conf: &Path) -> bool {
    s_client_handshakes_as(port, version_flag, openssl_conf, None)
}

/// [`s_client_handshakes`] presenting a client certificate (`<dir>/tls.crt`, `<dir>/tls.key`):
/// against an mTLS listener, a version check without one would fail for the missing
/// certificate instead (TLS 1.2 checks it inside the handshake), whatever the version.
pub fn s_client_handshakes_as(port: u16, version_flag: &str, openssl_conf: &Path, client: Option<&Path>) -> bool {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}"), version_flag, "-brief"]);
    if let Some(dir) = client {
        cmd.arg("-cert").arg(dir.join("tls.crt")).arg("-key").arg(dir.join("tls.key"));
    }
    let out = cmd.env("OPENSSL_CONF", openssl_conf).stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    text.contains("CONNECTION ESTABLISHED") || text.contains("Protocol version: TLSv")
}

/// A hand-driven MQTT 3.1.1 client over TLS, for packets a well-behaved client library will not
/// send (e.g. larger than the broker's advertised maximum).
pub struct RawMqtt {
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
}

fn mqtt_string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

impl RawMqtt {
    /// TLS to `127.0.0.1:port` verified with `ca_pem`, then CONNECT with credentials; returns the
    /// CONNACK return code.
    pub async fn connect(port: u16, ca_pem: &str, user: &str, password: &str) -> std::io::Result<(RawMqtt, u8)> {
        use rustls_pki_types::pem::PemObject;
        use tokio::io::AsyncWriteExt;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name = rustls_pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
        let mut raw = RawMqtt { stream };
        let mut body = mqtt_string("MQTT");
        body.extend_from_slice(&[4, 0xC2, 0, 30]); // level 4; username, password, clean session; keepalive 30
        body.extend(mqtt_string(user)); // client id
        body.extend(mqtt_string(user));
        body.extend(mqtt_string(password));
        let mut packet = vec![0x10];
        packet.extend(moat::probe::mqtt::remaining_length(body.len()));
        packet.extend(body);
        raw.stream.write_all(&packet).await?;
        match raw.read_packet(Duration::from_secs(5)).await? {
            Some(p) if p.len() == 4 && p[0] == 0x20 => {
                let rc = p[3];
                Ok((raw, rc))
            }
            other => Err(std::io::Error::other(format!("no CONNACK: {other:?}"))),
        }
    }

    /// Sends a QoS 1 PUBLISH header announcing `payload_len` bytes of payload, then streams that
    /// many bytes (stopping at the first write error: the broker may hang up early).
    pub async fn publish_qos1(&mut self, topic: &str, payload_len: usize) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut header = vec![0x32];
        let variable = [mqtt_string(topic), vec![0, 1]].concat(); // packet id 1
        header.extend(moat::probe::mqtt::remaining_length(variable.len() + payload_len));
        header.extend(variable);
        self.stream.write_all(&header).await?;
        let chunk = vec![b'x'; 64 * 1024];
        let mut left = payload_len;
        while left > 0 {
            let n = left.min(chunk.len());
            self.stream.write_all(&chunk[..n]).await?;
            left -= n;
        }
        self.stream.flush().await
    }

    /// The next whole packet; `Ok(None)` when the broker closed the connection.
    pub async fn read_packet(&mut self, timeout: Duration) -> std::io::Result<Option<Vec<u8>>> {
        use tokio::io::AsyncReadExt;
        let read = async {
            let mut first = [0u8; 1];
            if self.stream.read(&mut first).await? == 0 {
                return Ok(None);
            }
            let mut packet = vec![first[0]];
            let (mut len, mut shift) = (0usize, 0);
            loop {
                let mut b = [0u8; 1];
                if self.stream.read(&mut b).await? == 0 {
                    return Ok(None);
                }
                packet.push(b[0]);
                len |= ((b[0] & 0x7f) as usize) << shift;
                shift += 7;
                if b[0] & 0x80 == 0 {
                    break;
                }
            }
            let mut body = vec![0u8; len];
            self.stream.read_exact(&mut body).await?;
            packet.extend(body);
            Ok(Some(packet))
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no packet"))?
    }
}
