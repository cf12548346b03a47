//! `moat agent`: the in-pod helper next to Mosquitto.
//!
//! Kubernetes updates mounted Secrets by swapping a `..data` symlink; Mosquitto never notices. The
//! agent polls the mounted Secrets, waits until an update has settled, **validates** the new set
//! (ACL syntax with the same parser the renderer checks itself with — Mosquitto 2.0 fails *open* on
//! a bad ACL at reload; password shards complete and consistent; server certificate and key
//! matching; CA bundle and CRLs parseable), installs the files into an emptyDir as real files
//! with 0600/0640 modes (Mosquitto 2.1 refuses symlinked password/ACL files and warns about
//! foreign owners), and sends SIGHUP to Mosquitto (shared process namespace). An invalid set is
//! never installed: the previous files stay in force and the reason is logged.
//!
//! It also reads Mosquitto's log (an extra `log_dest file` in its own emptyDir) for what the
//! broker saw of its clients ([`activity`]): counters on `/metrics`, and bursts of refused logins
//! on `/status`, where the operator picks them up for a `SuspiciousActivity` Event.

pub mod activity;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Command-line options of `moat agent`.
#[derive(clap::Args, Clone, Debug)]
pub struct AgentArgs {
    /// Directory with the mounted Secrets (`config/`, `tls/`, `acl/<n>/`, `passwd/<n>/`).
    #[arg(long, default_value = crate::render::SECRETS_DIR)]
    pub source: PathBuf,
    /// Directory Mosquitto reads its files from (an emptyDir).
    #[arg(long, default_value = crate::render::RUN_DIR)]
    pub target: PathBuf,
    /// Install once and exit (init container); fails if the files are invalid.
    #[arg(long)]
    pub once: bool,
    /// How often to look for Secret updates.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// The first update after this long without one is installed at once; an update within this
    /// long of the last install must stay unchanged this long first (coalesces Secret updates
    /// that arrive one after another into one reload).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Signal this PID instead of looking up the `mosquitto` process (tests, non-Kubernetes use).
    #[arg(long)]
    pub mosquitto_pid: Option<i32>,
    /// `uid:gid` to own the installed files (only when the agent runs as root outside Kubernetes;
    /// in a pod the agent and Mosquitto share uid 1883).
    #[arg(long, value_parser = parse_owner)]
    pub owner: Option<(u32, u32)>,
    /// Serve `GET /status` (what is installed, since when) here, for the operator's attestation.
    #[arg(long)]
    pub status_addr: Option<std::net::SocketAddr>,
    /// Serve `GET /metrics` (Prometheus text format: the broker's connections and refused
    /// logins, the agent's reloads) here.
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Mosquitto's log file to follow (its `log_dest file`); rotated by the agent.
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Refused logins within `--failed-login-window` that make a burst suspicious (0: never),
    /// unless `GET /status?failedLogins=N&windowSeconds=S` asks about others (the operator
    /// passes each broker's, so changing them restarts nothing).
    #[arg(long, default_value_t = 20)]
    pub failed_logins: u64,
    /// The window of `--failed-logins`.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub failed_login_window: Duration,
    /// Rotate the log file (rename, SIGHUP) when it grows past this many bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub log_rotate_bytes: u64,
}

/// What the agent reports on `GET /status`: the operator compares `installed` with the files it
/// wrote to attest that the pod runs them, and when.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// [`FileSet::digest`] of the installed files. It covers the server's private key, so
    /// nobody without the Secrets can test a guess of any file against it; the operator only
    /// compares it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed: Option<String>,
    /// When they were installed and Mosquitto reloaded (or, at start, found installed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_at: Option<jiff::Timestamp>,
    /// The mounted files are refused (invalid); the installed ones stay in force.
    #[serde(default)]
    pub refusing: bool,
    /// A burst of refused logins within the window, if there is one now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspicious: Option<activity::Suspicion>,
}

/// What the agent's endpoints serve, shared with its loops.
struct Shared {
    status: AgentStatus,
    monitor: activity::Monitor,
    /// Installs and refusals of updated files.
    installs: u64,
    refusals: u64,
    /// SHA-256 of the installed `mosquitto.conf` (no Secret value: it is rendered from the spec).
    config: Option<String>,
}

type State = std::sync::Arc<std::sync::Mutex<Shared>>;

impl Shared {
    /// The status, with the burst judged by `(threshold, window)` or the agent's defaults.
    fn status(&mut self, judge: Option<(u64, Duration)>) -> AgentStatus {
        let now = jiff::Timestamp::now();
        let suspicious = match judge {
            Some((threshold, window)) => self.monitor.suspicion_over(now, threshold, window),
            None => self.monitor.suspicion(now),
        };
        AgentStatus { suspicious, ..self.status.clone() }
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        self.monitor.exposition(&mut out);
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line("# HELP moat_agent_reloads_total Updated broker files installed (and Mosquitto reloaded) or refused as invalid.".into());
        line("# TYPE moat_agent_reloads_total counter".into());
        line(format!("moat_agent_reloads_total{{result=\"installed\"}} {}", self.installs));
        line(format!("moat_agent_reloads_total{{result=\"refused\"}} {}", self.refusals));
        line("# HELP moat_agent_files_refusing 1 while the mounted files are refused and the previous ones stay in force.".into());
        line("# TYPE moat_agent_files_refusing gauge".into());
        line(format!("moat_agent_files_refusing {}", u8::from(self.status.refusing)));
        line("# HELP moat_agent_files_installed_timestamp_seconds When the files in force were installed.".into());
        line("# TYPE moat_agent_files_installed_timestamp_seconds gauge".into());
        if let Some(t) = self.status.installed_at {
            line(format!("moat_agent_files_installed_timestamp_seconds {}", t.as_second()));
        }
        line(
            "# HELP moat_agent_files_info The files in force: the SHA-256 (first 16 hex digits) of mosquitto.conf."
                .into(),
        );
        line("# TYPE moat_agent_files_info gauge".into());
        if let Some(c) = &self.config {
            line(format!("moat_agent_files_info{{config_sha256=\"{}\"}} 1", &c[..16]));
        }
        out
    }
}

async fn serve(addr: std::net::SocketAddr, what: &'static str, app: axum::Router) {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => {
            // the address bound (port 0 asks for any free one)
            let addr = listener.local_addr().unwrap_or(addr);
            tracing::info!(%addr, "serving {what}");
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the {what} endpoint stopped");
            }
        }
        Err(e) => tracing::error!(%addr, error = %e, "cannot serve {what}"),
    }
}

/// `GET /status`. Its caller is the operator (the probe NetworkPolicy admits only the operator's
/// pods to this port): its address is where moat's own attestation attempts come from.
fn status_app(state: State) -> axum::Router {
    axum::Router::new().route(
        "/status",
        axum::routing::get(
            move |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
                  uri: axum::http::Uri| {
                let state = state.clone();
                async move {
                    let mut s = state.lock().unwrap();
                    s.monitor.own_source(&peer.ip().to_canonical().to_string());
                    let status = s.status(judge(uri.query().unwrap_or_default()));
                    drop(s);
                    let body = serde_json::to_string(&status).unwrap_or_default();
                    ([(axum::http::header::CONTENT_TYPE, "application/json")], body)
                }
            },
        ),
    )
}

/// `failedLogins=N&windowSeconds=S` of a `/status` query, when both are there.
pub fn judge(query: &str) -> Option<(u64, Duration)> {
    let value =
        |key: &str| query.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok());
    Some((value("failedLogins")?, Duration::from_secs(value("windowSeconds")?)))
}

/// The `/status` query that asks about `threshold` refused logins within `window`.
pub fn status_path(threshold: u64, window: Duration) -> String {
    format!("/status?failedLogins={threshold}&windowSeconds={}", window.as_secs())
}

fn metrics_app(state: State) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let state = state.clone();
            async move {
                let body = state.lock().unwrap().metrics();
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
            }
        }),
    )
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::crd::GoDuration::new(s).parse()
}

fn parse_owner(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s.split_once(':').ok_or("expected uid:gid")?;
    Ok((u.parse().map_err(|_| "bad uid")?, g.parse().map_err(|_| "bad gid")?))
}

pub use crate::render::bundle::FileSet;
use crate::render::bundle::{self, BundleError, Mounted, TLS_FILES};

/// Why a set of files was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// A required file is missing.
    #[error("missing {0}")]
    Missing(String),
    /// The ACL file does not parse the way Mosquitto would read it.
    #[error("ACL file refused: {0}")]
    Acl(String),
    /// Password shards are missing, inconsistent or unparseable.
    #[error("password file refused: {0}")]
    Passwd(String),
    /// TLS material is unusable.
    #[error("TLS material refused: {0}")]
    Tls(String),
    /// The configuration is unusable.
    #[error("mosquitto.conf refused: {0}")]
    Config(String),
    /// Reading the mounted files failed.
    #[error("reading {0}: {1}")]
    Io(String, std::io::Error),
}

impl From<BundleError> for Refused {
    fn from(e: BundleError) -> Self {
        match e {
            BundleError::Missing(p) => Refused::Missing(p),
            BundleError::NotText(p) => Refused::Missing(format!("{p} (not UTF-8)")),
            BundleError::Acl(e) => Refused::Acl(e.to_string()),
            BundleError::Passwd(e) => Refused::Passwd(e.to_string()),
        }
    }
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, Refused> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Refused::Io(path.display().to_string(), e)),
    }
}

/// The mounted Secrets under `source` (see [`Mounted`]).
pub fn read_mounted(source: &Path) -> Result<Mounted, Refused> {
    let mut m = Mounted::new();
    let mut take = |rel: String| -> Result<(), Refused> {
        if let Some(b) = read(&source.join(&rel))? {
            m.insert(rel, b);
        }
        Ok(())
    };
    take("config/mosquitto.conf".into())?;
    for f in TLS_FILES {
        take(format!("tls/{f}"))?;
    }
    for dir in ["acl", "passwd"] {
        let entries = match fs::read_dir(source.join(dir)) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Refused::Io(source.join(dir).display().to_string(), e)),
        };
        for slot in entries.filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_str()?.parse::<usize>().ok()) {
            take(format!("{dir}/{slot}/manifest"))?;
            take(format!("{dir}/{slot}/{dir}"))?;
        }
    }
    Ok(m)
}

/// Reads the mounted Secrets and validates them into the set of files to install.
pub fn collect(source: &Path) -> Result<FileSet, Refused> {
    let set = bundle::assemble(&read_mounted(source)?)?;
    let file = |rel: &str| String::from_utf8_lossy(&set.files[rel]).into_owned();
    validate_config(&file("mosquitto.conf"))?;
    crate::render::acl::parse(&file("acl")).map_err(|e| Refused::Acl(e.to_string()))?;
    let (cert, key) = (file("tls/tls.crt"), file("tls/tls.key"));
    if !crate::pki::key_matches(&cert, &key) {
        return Err(Refused::Tls("tls.crt and tls.key do not belong together".into()));
    }
    validate_bundle(&file("tls/ca.crt"), &file("tls/crl.pem"))?;
    Ok(set)
}

fn validate_config(conf: &str) -> Result<(), Refused> {
    for (i, line) in conf.lines().enumerate() {
        if line.contains('\0') || line.contains('\r') {
            return Err(Refused::Config(format!("line {} has a control character", i + 1)));
        }
    }
    let has = |l: &str| conf.lines().any(|x| x.trim() == l);
    if !has("allow_anonymous false") {
        return Err(Refused::Config("allow_anonymous false is missing".into()));
    }
    if !conf.lines().any(|l| l.starts_with("acl_file ")) || !conf.lines().any(|l| l.starts_with("password_file ")) {
        return Err(Refused::Config("acl_file or password_file is missing".into()));
    }
    Ok(())
}

fn validate_bundle(ca: &str, crl: &str) -> Result<(), Refused> {
    let certs = pem_blocks(ca, "CERTIFICATE");
    if certs.is_empty() {
        return Err(Refused::Tls("ca.crt holds no certificate".into()));
    }
    for c in &certs {
        crate::pki::inspect(c).map_err(|e| Refused::Tls(format!("ca.crt: {e}")))?;
    }
    let crls = pem_blocks(crl, "X509 CRL");
    if crls.len() != certs.len() {
        // With crlfile set, OpenSSL refuses clients of any CA that has no CRL in the file.
        return Err(Refused::Tls(format!("{} CA(s) in ca.crt but {} CRL(s) in crl.pem", certs.len(), crls.len())));
    }
    for c in &crls {
        crate::pki::parse_crl(c).map_err(|e| Refused::Tls(format!("crl.pem: {e}")))?;
    }
    Ok(())
}

/// The PEM blocks of one label in a text, each with its armor.
pub fn pem_blocks(text: &str, label: &str) -> Vec<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = vec![];
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let Some(stop) = rest[start..].find(&end) else { break };
        let block_end = start + stop + end.len();
        out.push(format!("{}\n", &rest[start..block_end]));
        rest = &rest[block_end..];
    }
    out
}

/// Writes the files that differ from what `target` holds (write to a temporary file, then rename,
/// so Mosquitto never reads a half-written file); returns the relative paths that changed.
pub fn install(set: &FileSet, target: &Path, owner: Option<(u32, u32)>) -> std::io::Result<Vec<String>> {
    let mut changed = vec![];
    for (rel, content) in &set.files {
        let path = target.join(rel);
        if fs::read(&path).ok().as_deref() == Some(content.as_slice()) {
            continue;
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
            if let Some((u, g)) = owner {
                nix::unistd::chown(parent, Some(u.into()), Some(g.into())).map_err(std::io::Error::from)?;
            }
        }
        let secret = rel.ends_with(".key") || rel == "passwd" || rel == "acl";
        let mode = if secret { 0o600 } else { 0o640 };
        let tmp = path.with_extension("moat-tmp");
        {
            let mut f = fs::File::create(&tmp)?;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
            f.write_all(content)?;
            f.sync_all()?;
        }
        if let Some((u, g)) = owner {
            nix::unistd::chown(&tmp, Some(u.into()), Some(g.into())).map_err(std::io::Error::from)?;
        }
        fs::rename(&tmp, &path)?;
        changed.push(rel.clone());
    }
    Ok(changed)
}

/// PIDs of running `mosquitto` processes visible to the agent (shared process namespace).
pub fn find_mosquitto() -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = fs::read_dir("/proc") else { return vec![] };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| *pid != me)
        .filter(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "mosquitto"))
        .collect()
}

/// Sends SIGHUP to Mosquitto (reload files, reopen its log); `done` is the log message.
fn reload(args: &AgentArgs, done: &str) {
    let pids = match args.mosquitto_pid {
        Some(p) => vec![p],
        None => find_mosquitto(),
    };
    if pids.is_empty() {
        tracing::warn!("no mosquitto process found to reload");
    }
    for pid in pids {
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP) {
            Ok(()) => tracing::info!(pid, "{done}"),
            Err(e) => tracing::error!(pid, error = %e, "could not signal mosquitto"),
        }
    }
}

/// Runs the agent (until the process is stopped, or once with `--once`). Returns the exit code.
pub async fn run(args: AgentArgs) -> i32 {
    if args.once {
        return match collect(&args.source) {
            Ok(set) => match install(&set, &args.target, args.owner) {
                Ok(changed) => {
                    tracing::info!(files = changed.len(), "installed broker files");
                    0
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not install broker files");
                    1
                }
            },
            Err(e) => {
                tracing::error!(reason = %e, "refusing to install broker files");
                1
            }
        };
    }
    let state: State = std::sync::Arc::new(std::sync::Mutex::new(Shared {
        status: AgentStatus::default(),
        monitor: activity::Monitor::new(args.failed_logins, args.failed_login_window),
        installs: 0,
        refusals: 0,
        config: None,
    }));
    if let Some(addr) = args.status_addr {
        tokio::spawn(serve(addr, "/status", status_app(state.clone())));
    }
    if let Some(addr) = args.metrics_addr {
        tokio::spawn(serve(addr, "/metrics", metrics_app(state.clone())));
    }
    if let Some(path) = args.log_file.clone() {
        tokio::spawn(follow(path, args.clone(), state.clone()));
    }
    let mut installed: Option<String> = None;
    let mut refused: Option<String> = None;
    let mut pending: Option<(String, tokio::time::Instant)> = None;
    let mut last_install: Option<tokio::time::Instant> = None;
    loop {
        match collect(&args.source) {
            Ok(set) => {
                if refused.take().is_some() {
                    state.lock().unwrap().status.refusing = false;
                }
                let digest = set.digest();
                if installed.is_none() && is_installed(&set, &args.target) {
                    // at start: the init container installed exactly these files before Mosquitto
                    // started, so they are in force already
                    installed = Some(digest.clone());
                    report(&state, &set, &installed, false);
                } else if installed.as_deref() != Some(&digest) {
                    // the first change after a quiet spell is installed at once (a revocation
                    // takes effect within one interval); changes that follow within `settle`
                    // of an install wait until they stop changing (one reload per burst)
                    let now = tokio::time::Instant::now();
                    let due = match &pending {
                        Some((d, since)) if *d == digest => since.elapsed() >= args.settle,
                        _ => {
                            pending = Some((digest.clone(), now));
                            last_install.is_none_or(|t| t.elapsed() >= args.settle)
                        }
                    };
                    if due {
                        match install(&set, &args.target, args.owner) {
                            Ok(changed) => {
                                tracing::info!(?changed, "installed updated broker files");
                                if !changed.is_empty() {
                                    reload(&args, "sent SIGHUP to mosquitto");
                                }
                                installed = Some(digest);
                                pending = None;
                                last_install = Some(now);
                                report(&state, &set, &installed, true);
                            }
                            Err(e) => tracing::error!(error = %e, "could not install broker files"),
                        }
                    }
                }
            }
            Err(e) => {
                let reason = e.to_string();
                if refused.as_deref() != Some(&reason) {
                    tracing::error!(reason = %reason, "refusing the updated broker files; the previous files stay in force");
                    refused = Some(reason);
                    let mut s = state.lock().unwrap();
                    s.status.refusing = true;
                    s.refusals += 1;
                }
                pending = None;
            }
        }
        tokio::time::sleep(args.interval).await;
    }
}

/// Whether `target` holds exactly `set` already.
fn is_installed(set: &FileSet, target: &Path) -> bool {
    set.files.iter().all(|(rel, content)| fs::read(target.join(rel)).ok().as_deref() == Some(content.as_slice()))
}

fn report(state: &State, set: &FileSet, installed: &Option<String>, counted: bool) {
    use sha2::Digest;
    let mut s = state.lock().unwrap();
    s.status =
        AgentStatus { installed: installed.clone(), installed_at: Some(jiff::Timestamp::now()), ..Default::default() };
    s.config = set.files.get("mosquitto.conf").map(|c| crate::hex(&sha2::Sha256::digest(c)));
    if counted {
        s.installs += 1;
    }
}

/// Follows Mosquitto's log file into the monitor, from its start (Mosquitto may have written
/// before the agent started; a line's own timestamp places it in the window). When the file
/// grows past `--log-rotate-bytes` it is renamed to `<file>.1` and Mosquitto is sent SIGHUP,
/// which reopens its log; the old file is read to its end once the new one exists, so no line
/// is lost, and then deleted.
async fn follow(path: PathBuf, args: AgentArgs, state: State) {
    use std::io::{Read, Seek};
    let rotated = path.with_extension("log.1");
    let mut file: Option<fs::File> = None;
    let mut old: Option<fs::File> = None;
    let mut partial = Vec::new();
    let feed = |f: &mut fs::File, partial: &mut Vec<u8>| {
        let mut buf = Vec::new();
        if let Err(e) = f.read_to_end(&mut buf) {
            tracing::warn!(error = %e, "cannot read the broker's log");
        }
        partial.extend_from_slice(&buf);
        let Some(end) = partial.iter().rposition(|b| *b == b'\n') else { return };
        let complete: Vec<u8> = partial.drain(..=end).collect();
        let now = jiff::Timestamp::now();
        let mut s = state.lock().unwrap();
        for line in String::from_utf8_lossy(&complete).lines() {
            s.monitor.observe(line, now);
        }
    };
    loop {
        if let Some(f) = old.as_mut()
            && path.exists()
        {
            // Mosquitto writes to the new file now: what is left in the old one is final
            feed(f, &mut partial);
            old = None;
            let _ = fs::remove_file(&rotated);
        }
        if old.is_none() && file.is_none() {
            file = fs::File::open(&path).ok();
        }
        if let Some(f) = file.as_mut() {
            feed(f, &mut partial);
            let size = f.stream_position().unwrap_or(0);
            if old.is_none() && size >= args.log_rotate_bytes && fs::rename(&path, &rotated).is_ok() {
                old = file.take();
                reload(&args, "rotated the broker's log; mosquitto reopens it (SIGHUP)");
            }
        } else if let Some(f) = old.as_mut() {
            feed(f, &mut partial);
        }
        tokio::time::sleep(args.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_query_carries_the_brokers_threshold_and_window() {
        let path = status_path(7, Duration::from_secs(90));
        assert_eq!(judge(path.split_once('?').unwrap().1), Some((7, Duration::from_secs(90))));
        assert_eq!(judge(""), None);
        assert_eq!(judge("failedLogins=7"), None);
        assert_eq!(judge("failedLogins=x&windowSeconds=9"), None);
    }

    #[test]
    fn pem_blocks_are_split_with_their_armor() {
        let two = "junk\n-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n";
        let blocks = pem_blocks(two, "CERTIFICATE");
        assert_eq!(blocks.len(), 2);
        assert!(blocks[1].contains("BBB") && blocks[1].starts_with("-----BEGIN"));
        assert!(pem_blocks("nothing", "CERTIFICATE").is_empty());
    }

    #[test]
    fn config_without_anonymous_off_is_refused() {
        assert!(validate_config("allow_anonymous false\nacl_file a\npassword_file p\n").is_ok());
        assert!(validate_config("allow_anonymous true\nacl_file a\npassword_file p\n").is_err());
        assert!(validate_config("allow_anonymous false\npassword_file p\n").is_err());
    }

    #[test]
    fn install_writes_only_changed_files_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let mut set = FileSet::default();
        set.files.insert("passwd".into(), b"a:b\n".to_vec());
        set.files.insert("tls/tls.crt".into(), b"cert".to_vec());
        assert_eq!(install(&set, dir.path(), None).unwrap(), vec!["passwd", "tls/tls.crt"]);
        assert!(install(&set, dir.path(), None).unwrap().is_empty());
        let mode = |p: &str| fs::metadata(dir.path().join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("passwd"), 0o600);
        assert_eq!(mode("tls/tls.crt"), 0o640);
        assert!(!fs::symlink_metadata(dir.path().join("passwd")).unwrap().file_type().is_symlink());
        set.files.insert("passwd".into(), b"a:c\n".to_vec());
        assert_eq!(install(&set, dir.path(), None).unwrap(), vec!["passwd"]);
    }
}
