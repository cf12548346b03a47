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
                    .map(|(k, v)| (k.clone(), base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap()))
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
        give_to_mosquitto(dir);
        let mut cmd = Command::new(mosquitto_bin());
        cmd.arg("-c").arg("mosquitto.conf").current_dir(dir).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start mosquitto");
        let log = Arc::new(Mutex::new(String::new()));
        for pipe in [child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>), child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>)].into_iter().flatten() {
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
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), nix::sys::signal::Signal::SIGHUP).unwrap();
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

/// PUBACK reason of an accepted publish.
pub fn puback_success() -> String {
    format!("{:?}", PubAckReason::Success)
}

/// PUBACK reason of a publish refused by the ACL.
pub fn puback_not_authorized() -> String {
    format!("{:?}", PubAckReason::NotAuthorized)
}
