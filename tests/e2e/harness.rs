//! Test harness: render bundles with the real `moat` binary, run them with the real Debian
//! Mosquitto on loopback, and talk to them with real MQTT clients.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};

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

/// Installs ring as rustls' process-wide provider (rumqttc's simple TLS config uses it).
pub fn init_tls() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
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
    Rendered { dir, bundle, offset, objects }
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
        // Debian's 2.0.11 block-buffers stdout (line-buffered since 2.0.16): stdbuf makes the
        // rendered `log_dest stdout` visible line by line, as in the official images.
        let mut cmd = Command::new("stdbuf");
        cmd.arg("-oL")
            .arg(mosquitto_bin())
            .arg("-c")
            .arg(conf)
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
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

/// How to reach a listener.
#[derive(Clone, Default)]
pub struct Conn {
    /// Port.
    pub port: u16,
    /// Trust anchors (PEM) for TLS; `None` = plain TCP.
    pub ca: Option<String>,
    /// Client certificate and key (PEM) for mTLS.
    pub client_cert: Option<(String, String)>,
    /// Username and password.
    pub credentials: Option<(String, String)>,
    /// Client id (default: a random one).
    pub client_id: Option<String>,
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum Refusal {
    /// CONNACK with a failure code.
    Refused(ConnectReturnCode),
    /// The connection failed below MQTT (TLS alert, reset, garbage).
    Transport(String),
}

/// A connected MQTT v5 session: messages arrive on `rx`.
pub struct Session {
    /// Client handle.
    pub client: AsyncClient,
    /// Incoming publishes `(topic, payload)`; PUBACK reasons arrive as `("$puback", reason)`.
    pub rx: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    /// Set when the connection dropped.
    pub closed: tokio::sync::watch::Receiver<Option<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn options(c: &Conn) -> MqttOptions {
    init_tls();
    let id = c.client_id.clone().unwrap_or_else(|| format!("t-{:08x}", rand::random::<u32>()));
    let mut o = MqttOptions::new(id, "127.0.0.1", c.port);
    o.set_keep_alive(Duration::from_secs(30));
    if let Some((u, p)) = &c.credentials {
        o.set_credentials(u.clone(), p.clone());
    }
    if let Some(ca) = &c.ca {
        // the server certificate is for the broker's DNS names; rumqttc checks the host string,
        // so connect by IP and accept the name "127.0.0.1" only if the cert has it — instead we
        // pin the first DNS name via a custom verifier-free route: SNI = broker service name.
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca: ca.clone().into_bytes(),
            alpn: None,
            client_auth: c.client_cert.clone().map(|(cert, key)| (cert.into_bytes(), key.into_bytes())),
        }));
    }
    o
}

/// Connects and waits for the CONNACK.
pub async fn connect(c: &Conn) -> Result<Session, Refusal> {
    let (client, mut eventloop) = AsyncClient::new(options(c), 64);
    first_connack(&mut eventloop).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (closed_tx, closed) = tokio::sync::watch::channel(None);
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((String::from_utf8_lossy(&p.topic).into_owned(), p.payload.to_vec()));
                }
                Ok(Event::Incoming(Packet::PubAck(a))) => {
                    let reason = format!("{:?}", a.reason);
                    let _ = tx.send(("$puback".into(), reason.into_bytes()));
                }
                Ok(Event::Incoming(Packet::Disconnect(d))) => {
                    let _ = closed_tx.send(Some(format!("disconnect {:?}", d.reason_code)));
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    // rumqttc reconnects if polled again: stop at the first error
                    let _ = closed_tx.send(Some(e.to_string()));
                    return;
                }
            }
        }
    });
    Ok(Session { client, rx, closed, task })
}

async fn first_connack(eventloop: &mut EventLoop) -> Result<(), Refusal> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .map_err(|_| Refusal::Transport("timeout waiting for CONNACK".into()))?;
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                return if ack.code == ConnectReturnCode::Success { Ok(()) } else { Err(Refusal::Refused(ack.code)) };
            }
            Ok(_) => {}
            Err(ConnectionError::ConnectionRefused(code)) => return Err(Refusal::Refused(code)),
            Err(e) => return Err(Refusal::Transport(format!("{e:?}"))),
        }
    }
}

impl Session {
    /// Subscribes and waits until the broker acknowledged it (SUBACK is handled by the loop; a
    /// short round trip with a ping-free publish to ourselves is not needed: mosquitto processes
    /// packets of one client in order, so a later publish from another client is delivered after).
    pub async fn subscribe(&self, filter: &str) {
        self.client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    /// Publishes at QoS 1 and returns the PUBACK reason.
    pub async fn publish(&mut self, topic: &str, payload: &[u8]) -> String {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload.to_vec()).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((t, reason))) if t == "$puback" => return String::from_utf8(reason).unwrap(),
                Ok(Some(_)) => continue,
                _ => panic!("no PUBACK for {topic}"),
            }
        }
    }

    /// The next message within `timeout`, if any.
    pub async fn next_message(&mut self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((t, _))) if t == "$puback" => continue,
                Ok(Some(m)) => return Some(m),
                _ => return None,
            }
        }
    }

    /// Waits up to `timeout` for the connection to be closed by the broker.
    pub async fn wait_closed(&mut self, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(reason) = self.closed.borrow().clone() {
                return Some(reason);
            }
            if tokio::time::timeout_at(deadline, self.closed.changed()).await.is_err() {
                return None;
            }
        }
    }
}

/// Whether a PUBACK reason means the broker accepted the publish (with or without subscribers).
pub fn accepted(reason: &str) -> bool {
    reason == format!("{:?}", PubAckReason::Success) || reason == format!("{:?}", PubAckReason::NoMatchingSubscribers)
}

/// PUBACK reason of a publish refused by the ACL.
pub fn puback_not_authorized() -> String {
    format!("{:?}", PubAckReason::NotAuthorized)
}

/// A directory updated the way the kubelet updates a Secret volume: files are symlinks into
/// `..data`, which atomically switches to a new timestamped directory on every update.
pub struct SecretVolume {
    dir: PathBuf,
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
    /// `acl/`.
    pub acl: SecretVolume,
    /// `passwd/` (projected: `<n>/passwd`, `<n>/manifest`).
    pub passwd: SecretVolume,
    /// The source directory for `moat agent --source`.
    pub root: PathBuf,
}

impl PodVolumes {
    /// Mounts the rendered Secrets of broker `broker` under `root`, with the in-pod run directory
    /// `/moat/run` in mosquitto.conf replaced by `run_dir` (the only change to the rendered files).
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
        let text = text.replace("/moat/run", run_dir.to_str().unwrap());
        let text = text.replace("\nlistener 8883\n", &format!("\nlistener {} 127.0.0.1\n", r.port(8883)));
        conf.insert("mosquitto.conf".into(), text.into_bytes());
        v.config.write(&conf);
        let tls = r.secret(&format!("{broker}-tls"));
        v.tls.write(&tls);
        let acl = r.secret(&format!("{broker}-acl"));
        v.acl.write(&acl.into_iter().filter(|(k, _)| k == "acl").collect());
        let shard = r.secret(&format!("{broker}-passwd-0"));
        v.passwd.write(&BTreeMap::from([
            ("0/passwd".to_string(), shard["passwd"].clone()),
            ("0/manifest".to_string(), shard["manifest"].clone()),
        ]));
        v
    }
}

/// A running `moat agent`.
pub struct Agent {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Agent {
    /// Runs `moat agent` over `source`, installing into `target`, signalling `pid`.
    pub fn start(source: &Path, target: &Path, pid: u32) -> Agent {
        let (uid, gid) = mosquitto_ids();
        let mut child = Command::new(moat_bin())
            .args(["agent", "--interval", "100ms", "--settle", "300ms"])
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

/// Starts Mosquitto on a config file by absolute path (the agent-installed run directory).
pub fn start_broker_on(conf: &Path, ports: &[u16]) -> Broker {
    let dir = conf.parent().unwrap();
    Broker::start_with(dir, conf.file_name().unwrap().to_str().unwrap(), ports, &[])
}
