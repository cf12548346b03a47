//! Shared helpers for the probe's real-broker tests: certificates (rcgen, ECDSA P-256), a free
//! loopback port, a real Mosquitto broker and an `openssl s_server`, both run under a permissive
//! `OPENSSL_CONF` so that only their own configuration keeps old TLS versions out.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// Lets OpenSSL speak TLS 1.0/1.1 with SHA-1 signatures: Debian's defaults would refuse old
/// protocols on their own and make "legacy refused" tests pass regardless of the broker config.
pub const PERMISSIVE_OPENSSL_CONF: &str = "\
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MinProtocol = TLSv1
CipherString = DEFAULT@SECLEVEL=0
";

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// A CA and a server certificate (SANs `localhost` and `127.0.0.1`) with a known serial and notAfter.
pub struct Pki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    /// Serial as upper-case hex, as the probe reports it.
    pub serial_hex: String,
    pub not_after: jiff::Timestamp,
    /// A CRL for the broker's `crlfile` (mTLS brokers only).
    pub crl_pem: Option<String>,
}

impl Pki {
    pub fn new() -> Self {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        let tag: u32 = rand::Rng::r#gen(&mut rand::thread_rng());
        ca_params.distinguished_name.push(DnType::CommonName, format!("moat probe test CA {tag:08x}"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let mut serial = [0u8; 9];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut serial);
        serial[0] = 0x40 | (serial[0] & 0x3f); // positive, no leading zero byte
        let now = jiff::Timestamp::now().as_second();
        let not_after_secs = now + 30 * 86_400;

        let server_key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("server params");
        params.distinguished_name.push(DnType::CommonName, "localhost");
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        params.not_before = time::OffsetDateTime::from_unix_timestamp(now - 3600).expect("notBefore");
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after_secs).expect("notAfter");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let server_cert = params.signed_by(&server_key, &issuer).expect("server certificate");

        Self {
            ca_pem: ca_cert.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            serial_hex: serial.iter().fold(String::new(), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            }),
            not_after: jiff::Timestamp::from_second(not_after_secs).expect("timestamp"),
            crl_pem: None,
        }
    }
}

/// The uid/gid Mosquitto would drop to when started as root, so we start it as that user
/// directly over files it owns. `None` when not running as root.
fn broker_user() -> Option<(nix::unistd::Uid, nix::unistd::Gid)> {
    if !nix::unistd::Uid::effective().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("mosquitto").ok().flatten().expect("user mosquitto exists");
    Some((user.uid, user.gid))
}

/// A temp dir the child process (possibly as user `mosquitto`) can read, with files in it.
struct Workdir {
    dir: tempfile::TempDir,
    owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
}

impl Workdir {
    fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("moat-probe-").tempdir().expect("temp dir");
        let owner = broker_user();
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(dir.path(), Some(uid), Some(gid)).expect("chown temp dir");
        }
        Self { dir, owner }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write test file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        if let Some((uid, gid)) = self.owner {
            nix::unistd::chown(&path, Some(uid), Some(gid)).expect("chown test file");
        }
        path
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

/// Spawn `command` with the permissive OpenSSL config and its output in `server.log`, then wait
/// until `port` accepts connections.
fn spawn_and_wait(work: &Workdir, mut command: Command, port: u16, permissive_openssl: bool) -> Child {
    let program = PathBuf::from(command.get_program());
    assert!(
        program.is_absolute() && program.exists() || which(&program),
        "{} is not installed (hack/ensure-mosquitto.sh installs mosquitto; openssl is needed too)",
        program.display()
    );
    let log = std::fs::File::create(work.path().join("server.log")).expect("log file");
    if permissive_openssl {
        command.env("OPENSSL_CONF", work.write("openssl.cnf", PERMISSIVE_OPENSSL_CONF));
    } else {
        command.env_remove("OPENSSL_CONF");
    }
    command.current_dir(work.path()).stdout(log.try_clone().expect("clone log")).stderr(log);
    if let Some((uid, gid)) = work.owner {
        command.uid(uid.as_raw()).gid(gid.as_raw());
    }
    let mut child = command.spawn().expect("spawn test server");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        if let Some(status) = child.try_wait().expect("poll child") {
            panic!("test server exited ({status}) before listening:\n{}", work.log());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("test server not listening on {port} after 15 s:\n{}", work.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn which(program: &Path) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// How to configure the test broker's single TLS listener.
#[derive(Debug, Clone, Copy)]
pub struct BrokerSpec {
    /// Value of `tls_version`.
    pub tls_version: &'static str,
    pub allow_anonymous: bool,
    /// mTLS: `require_certificate true` + `use_identity_as_username true`.
    pub require_certificate: bool,
    /// Run under [`PERMISSIVE_OPENSSL_CONF`] (normally yes); `false` leaves the system OpenSSL
    /// defaults in force.
    pub permissive_openssl: bool,
    /// `max_packet_size`, when set.
    pub max_packet_size: Option<u32>,
    /// `use_username_as_clientid` on the TLS listener.
    pub use_username_as_clientid: bool,
    /// Lines appended to the ACL file (e.g. a rule for all users).
    pub extra_acl: &'static str,
}

impl BrokerSpec {
    pub const HARDENED: Self = Self {
        tls_version: "tlsv1.2",
        allow_anonymous: false,
        require_certificate: false,
        permissive_openssl: true,
        max_packet_size: Some(4096),
        use_username_as_clientid: true,
        extra_acl: "",
    };
    pub const WEAKENED: Self = Self {
        tls_version: "tlsv1.1",
        allow_anonymous: true,
        require_certificate: false,
        permissive_openssl: true,
        max_packet_size: None,
        use_username_as_clientid: false,
        extra_acl: "",
    };
    pub const MTLS: Self = Self { require_certificate: true, ..Self::HARDENED };
}

/// The canary logins every test broker has (usernames as moat reserves them, in no ACL).
pub const CANARY_ATTACKER: (&str, &str) = ("_moat-canary-1", "canary-one-password-0123456789");
/// See [`CANARY_ATTACKER`].
pub const CANARY_VICTIM: (&str, &str) = ("_moat-canary-2", "canary-two-password-0123456789");

/// A real Mosquitto (`/usr/sbin/mosquitto`) on a loopback port; killed on drop.
pub struct Broker {
    pub port: u16,
    /// A plaintext listener beside the TLS one (what the plaintext attack must tell apart).
    pub plain_port: u16,
    child: Child,
    work: Workdir,
}

/// A Mosquitto `$7$` password-file line (PBKDF2-SHA512, 12-byte salt).
fn password_line(user: &str, password: &str) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    let mut salt = [0u8; 12];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut salt);
    let mut hash = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password.as_bytes(), &salt, 101, &mut hash);
    format!("{user}:$7$101${}${}\n", STANDARD.encode(salt), STANDARD.encode(hash))
}

impl Broker {
    pub fn start(pki: &Pki, spec: BrokerSpec) -> Self {
        let work = Workdir::new();
        let port = free_port();
        let plain_port = free_port();
        let cert = work.write("server.crt", &pki.server_cert_pem);
        let key = work.write("server.key", &pki.server_key_pem);
        let ca = work.write("ca.crt", &pki.ca_pem);
        let logins: String = [("alice", "correct horse"), CANARY_ATTACKER, CANARY_VICTIM]
            .iter()
            .map(|(u, p)| password_line(u, p))
            .collect();
        let passwd = work.write("passwd", &logins);
        let acl = work.write("acl", &format!("user alice\ntopic readwrite test/#\n{}", spec.extra_acl));
        let mut conf = format!(
            "per_listener_settings false\n\
             allow_anonymous {}\n\
             password_file {}\n\
             acl_file {}\n\
             persistence false\n\
             set_tcp_nodelay true\n\
             log_dest stderr\n\
             log_type all\n\
             listener {plain_port} 127.0.0.1\n\
             listener {port} 127.0.0.1\n\
             certfile {}\n\
             keyfile {}\n\
             tls_version {}\n",
            spec.allow_anonymous,
            passwd.display(),
            acl.display(),
            cert.display(),
            key.display(),
            spec.tls_version,
        );
        if let Some(max) = spec.max_packet_size {
            let _ = writeln!(conf, "max_packet_size {max}");
        }
        let _ = writeln!(conf, "use_username_as_clientid {}", spec.use_username_as_clientid);
        if spec.require_certificate {
            let _ = write!(conf, "cafile {}\nrequire_certificate true\nuse_identity_as_username true\n", ca.display());
            if let Some(crl) = &pki.crl_pem {
                let _ = writeln!(conf, "crlfile {}", work.write("crl.pem", crl).display());
            }
        }
        let conf_path = work.write("mosquitto.conf", &conf);
        let mut command = Command::new("/usr/sbin/mosquitto");
        command.arg("-c").arg(&conf_path).stdin(Stdio::null());
        let child = spawn_and_wait(&work, command, port, spec.permissive_openssl);
        Self { port, plain_port, child, work }
    }

    /// The broker's log so far (for assertion messages).
    pub fn log(&self) -> String {
        self.work.log()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl s_server` limited to one protocol version (`-tls1`, `-tls1_1`, `-tls1_2`), optionally
/// demanding a client certificate; killed on drop. Serves one connection at a time.
pub struct SServer {
    pub port: u16,
    child: Child,
    _stdin: Option<ChildStdin>,
    work: Workdir,
}

impl SServer {
    pub fn start(pki: &Pki, version_flag: &str, require_client_cert: bool) -> Self {
        let work = Workdir::new();
        let port = free_port();
        let cert = work.write("server.crt", &pki.server_cert_pem);
        let key = work.write("server.key", &pki.server_key_pem);
        let ca = work.write("ca.crt", &pki.ca_pem);
        let mut command = Command::new("openssl");
        command
            .arg("s_server")
            .arg("-accept")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .arg(version_flag)
            .arg("-quiet")
            .stdin(Stdio::piped());
        if require_client_cert {
            command.arg("-Verify").arg("1").arg("-CAfile").arg(&ca);
        }
        let mut child = spawn_and_wait(&work, command, port, true);
        let stdin = child.stdin.take();
        Self { port, child, _stdin: stdin, work }
    }

    pub fn log(&self) -> String {
        self.work.log()
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
