//! The files a broker pod runs with: what moat's agent installs from the mounted Secrets, and
//! what the operator expects it to install. Both go through [`assemble`], so the agent's
//! [`FileSet::digest`] and the operator's agree exactly when the pod runs the current files.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// The server TLS files (keys of the TLS Secret, files in the run directory's `tls/`).
pub const TLS_FILES: [&str; 4] = ["tls.crt", "tls.key", "ca.crt", "crl.pem"];

/// The mounted Secrets as the agent sees them: path under the Secrets directory → content
/// (`config/mosquitto.conf`, `tls/<file>`, `acl/<slot>/{acl,manifest}`,
/// `passwd/<slot>/{passwd,manifest}`).
pub type Mounted = BTreeMap<String, Vec<u8>>;

/// The files to install: path relative to the run directory → content.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FileSet {
    /// Relative target path → content.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl FileSet {
    /// A digest of the whole set (changes when any file changes). It is derived from Secret
    /// values: compare it, never show it.
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

/// Why the mounted Secrets do not make a set of files.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A required file is missing.
    #[error("missing {0}")]
    Missing(String),
    /// A file is not UTF-8 text.
    #[error("{0} is not UTF-8")]
    NotText(String),
    /// The ACL parts do not join into one file.
    #[error("ACL parts: {0}")]
    Acl(#[source] super::shard::SplitError),
    /// The password shards do not assemble into one file.
    #[error("password shards: {0}")]
    Passwd(#[source] super::passwd::ShardError),
}

fn text(m: &Mounted, path: &str) -> Result<String, BundleError> {
    let bytes = m.get(path).ok_or_else(|| BundleError::Missing(path.into()))?;
    String::from_utf8(bytes.clone()).map_err(|_| BundleError::NotText(path.into()))
}

/// `(manifest, text)` of every slot `<dir>/<n>/` holding both files, in slot order (absent
/// slots are optional Secrets that do not exist).
fn parts(m: &Mounted, dir: &str) -> Result<Vec<(String, String)>, BundleError> {
    let mut slots: Vec<usize> =
        m.keys().filter_map(|k| k.strip_prefix(&format!("{dir}/"))?.split_once('/')?.0.parse().ok()).collect();
    slots.sort();
    slots.dedup();
    let mut out = vec![];
    for n in slots {
        let (manifest, body) = (format!("{dir}/{n}/manifest"), format!("{dir}/{n}/{dir}"));
        if m.contains_key(&manifest) && m.contains_key(&body) {
            out.push((text(m, &manifest)?, text(m, &body)?));
        }
    }
    Ok(out)
}

/// The files of a pod from its mounted Secrets: the config, the joined ACL, the assembled
/// password file and the TLS files.
pub fn assemble(m: &Mounted) -> Result<FileSet, BundleError> {
    let mut files = BTreeMap::new();
    files.insert("mosquitto.conf".to_string(), text(m, "config/mosquitto.conf")?.into_bytes());
    let acl = super::shard::join(&parts(m, "acl")?).map_err(BundleError::Acl)?;
    files.insert("acl".to_string(), acl.into_bytes());
    let passwd = super::passwd::assemble_shards(&parts(m, "passwd")?).map_err(BundleError::Passwd)?;
    files.insert("passwd".to_string(), passwd.into_bytes());
    for f in TLS_FILES {
        files.insert(format!("tls/{f}"), text(m, &format!("tls/{f}"))?.into_bytes());
    }
    Ok(FileSet { files })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounted(entries: &[(&str, &str)]) -> Mounted {
        entries.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn parts_are_read_in_slot_order_and_absent_slots_skipped() {
        let m = mounted(&[
            ("acl/10/acl", "j"),
            ("acl/10/manifest", "m"),
            ("acl/2/acl", "i"),
            ("acl/2/manifest", "m"),
            ("acl/3/manifest", "only a manifest"),
        ]);
        assert_eq!(parts(&m, "acl").unwrap(), vec![("m".into(), "i".into()), ("m".into(), "j".into())]);
        assert!(parts(&m, "passwd").unwrap().is_empty());
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = assemble(&mounted(&[])).unwrap_err();
        assert!(matches!(&err, BundleError::Missing(p) if p == "config/mosquitto.conf"), "{err}");
    }

    #[test]
    fn the_digest_changes_with_any_file() {
        let mut a = FileSet::default();
        a.files.insert("passwd".into(), b"u:h\n".to_vec());
        let mut b = a.clone();
        assert_eq!(a.digest(), b.digest());
        b.files.insert("passwd".into(), b"u:i\n".to_vec());
        assert_ne!(a.digest(), b.digest());
    }
}
