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

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

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
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub interval: Duration,
    /// An update must stay unchanged this long before it is installed (coalesces Secret updates
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
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::crd::GoDuration::new(s).parse()
}

fn parse_owner(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s.split_once(':').ok_or("expected uid:gid")?;
    Ok((u.parse().map_err(|_| "bad uid")?, g.parse().map_err(|_| "bad gid")?))
}

/// The files the broker needs, read from the mounted Secrets.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FileSet {
    /// Relative target path → content.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl FileSet {
    /// A digest of the whole set (changes when any file changes).
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (k, v) in &self.files {
            h.update(k.as_bytes());
            h.update([0]);
            h.update((v.len() as u64).to_be_bytes());
            h.update(v);
        }
        crate::hex(&h.finalize())
    }
}

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

fn read(path: &Path) -> Result<Option<Vec<u8>>, Refused> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Refused::Io(path.display().to_string(), e)),
    }
}

fn text(bytes: &[u8], what: &str) -> Result<String, Refused> {
    String::from_utf8(bytes.to_vec()).map_err(|_| Refused::Missing(format!("{what} (not UTF-8)")))
}

/// Reads the mounted Secrets and validates them into the set of files to install.
pub fn collect(source: &Path) -> Result<FileSet, Refused> {
    let mut files = BTreeMap::new();
    let need = |rel: &str| -> Result<Vec<u8>, Refused> {
        read(&source.join(rel))?.ok_or_else(|| Refused::Missing(rel.into()))
    };

    let conf = text(&need("config/mosquitto.conf")?, "mosquitto.conf")?;
    validate_config(&conf)?;
    files.insert("mosquitto.conf".to_string(), conf.into_bytes());

    let acl = assemble_acl(&source.join("acl"))?;
    crate::render::acl::parse(&acl).map_err(|e| Refused::Acl(e.to_string()))?;
    files.insert("acl".to_string(), acl.into_bytes());

    let passwd = assemble_passwd(&source.join("passwd"))?;
    files.insert("passwd".to_string(), passwd.into_bytes());

    let cert = text(&need("tls/tls.crt")?, "tls.crt")?;
    let key = text(&need("tls/tls.key")?, "tls.key")?;
    if !crate::pki::key_matches(&cert, &key) {
        return Err(Refused::Tls("tls.crt and tls.key do not belong together".into()));
    }
    let ca = text(&need("tls/ca.crt")?, "ca.crt")?;
    let crl = text(&need("tls/crl.pem")?, "crl.pem")?;
    validate_bundle(&ca, &crl)?;
    files.insert("tls/tls.crt".to_string(), cert.into_bytes());
    files.insert("tls/tls.key".to_string(), key.into_bytes());
    files.insert("tls/ca.crt".to_string(), ca.into_bytes());
    files.insert("tls/crl.pem".to_string(), crl.into_bytes());
    Ok(FileSet { files })
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

/// `(manifest, text)` of every present slot `<dir>/<n>/` (a projected volume of optional Secrets),
/// in slot order.
fn read_parts(dir: &Path, key: &str) -> Result<Vec<(String, String)>, Refused> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Refused::Missing(format!("{key}/"))),
        Err(e) => return Err(Refused::Io(dir.display().to_string(), e)),
    };
    let mut slots: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<usize>().ok()).map(|n| (n, e.path())))
        .collect();
    slots.sort();
    let mut parts = vec![];
    for (_, path) in slots {
        if let (Some(m), Some(t)) = (read(&path.join("manifest"))?, read(&path.join(key))?) {
            parts.push((text(&m, "manifest")?, text(&t, key)?));
        }
    }
    Ok(parts)
}

fn assemble_passwd(dir: &Path) -> Result<String, Refused> {
    // (assemble_shards also parses the assembled file as Mosquitto would)
    crate::render::passwd::assemble_shards(&read_parts(dir, "passwd")?).map_err(|e| Refused::Passwd(e.to_string()))
}

fn assemble_acl(dir: &Path) -> Result<String, Refused> {
    crate::render::shard::join(&read_parts(dir, "acl")?).map_err(|e| Refused::Acl(e.to_string()))
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

fn reload(args: &AgentArgs) {
    let pids = match args.mosquitto_pid {
        Some(p) => vec![p],
        None => find_mosquitto(),
    };
    if pids.is_empty() {
        tracing::warn!("no mosquitto process found to reload");
    }
    for pid in pids {
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP) {
            Ok(()) => tracing::info!(pid, "sent SIGHUP to mosquitto"),
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
    let mut installed: Option<String> = None;
    let mut refused: Option<String> = None;
    let mut pending: Option<(String, tokio::time::Instant)> = None;
    loop {
        match collect(&args.source) {
            Ok(set) => {
                let digest = set.digest();
                if installed.as_deref() != Some(&digest) {
                    match &pending {
                        Some((d, since)) if *d == digest && since.elapsed() >= args.settle => {
                            match install(&set, &args.target, args.owner) {
                                Ok(changed) => {
                                    tracing::info!(?changed, "installed updated broker files");
                                    if !changed.is_empty() {
                                        reload(&args);
                                    }
                                    installed = Some(digest);
                                    refused = None;
                                    pending = None;
                                }
                                Err(e) => tracing::error!(error = %e, "could not install broker files"),
                            }
                        }
                        Some((d, _)) if *d == digest => {}
                        _ => pending = Some((digest, tokio::time::Instant::now())),
                    }
                }
            }
            Err(e) => {
                let reason = e.to_string();
                if refused.as_deref() != Some(&reason) {
                    tracing::error!(reason = %reason, "refusing the updated broker files; the previous files stay in force");
                    refused = Some(reason);
                }
                pending = None;
            }
        }
        tokio::time::sleep(args.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
