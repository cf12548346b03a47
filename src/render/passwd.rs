//! Mosquitto password file: `$7$` PBKDF2-SHA512 lines, fingerprints, sharding.
//!
//! * [`hash_line`] writes one `user:$7$<iterations>$<salt>$<hash>` line with a 12-byte salt
//!   (readable by Mosquitto 2.0 and 2.1).
//! * [`assemble`] builds the whole file from `(username, password)` pairs and the previously
//!   applied state, re-hashing only users whose password [`fingerprint`] or iteration count
//!   changed, so a steady-state reconcile computes zero PBKDF2 hashes.
//! * [`shard`] splits the file over Secrets of at most [`SHARD_MAX_BYTES`], assigning users by a
//!   stable hash of the username; [`assemble_shards`] (used by the in-pod agent) reassembles them
//!   only when every shard of the same generation is present.
//! * [`parse_passwd`] reads a password file with Mosquitto 2.0's rules, and refuses anything
//!   Mosquitto would silently drop or read differently.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256, Sha512};

use crate::validate::{self, WeakPassword, quote};

/// Salt length moat writes: 12 bytes, the only length Mosquitto 2.0 reads (2.1 reads 12 or 64).
pub const SALT_LEN: usize = 12;
/// Length of the PBKDF2-HMAC-SHA512 (and `$6$` SHA-512) hash Mosquitto reads.
pub const HASH_LEN: usize = 64;
/// Largest iteration count: Mosquitto reads it with `atoi` into an `int`.
pub const MAX_ITERATIONS: u32 = i32::MAX as u32;
/// Shortest accepted fingerprint key. The key must not be stored next to the fingerprints.
pub const MIN_FINGERPRINT_KEY_LEN: usize = 32;
/// Most bytes the data of one password shard Secret may hold (half of Kubernetes' 1 MiB
/// `MaxSecretSize`, the margin prometheus-operator uses).
pub const SHARD_MAX_BYTES: usize = 512 * 1024;
/// Data key of a shard Secret holding its part of the password file.
pub const KEY_PASSWD: &str = "passwd";
/// Data key of a shard Secret holding `username:fingerprint` lines for its users.
pub const KEY_FINGERPRINTS: &str = "fingerprints";
/// Data key of a shard Secret holding `"<n> <sha256 hex of all shards' passwd texts>"`.
pub const KEY_MANIFEST: &str = "manifest";
/// Longest username or hash field Mosquitto 2.0 keeps (longer ones are skipped with a warning).
const MOSQUITTO_FIELD_MAX: usize = 65535;

/// Why a password line cannot be written. Never contains a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswdError {
    /// The username fails [`validate::file_username`] (quoted and escaped here).
    #[error("invalid username {username}: {reason}")]
    InvalidUsername {
        /// The offending username, quoted and escaped.
        username: String,
        /// Why it is invalid.
        reason: String,
    },
    /// Mosquitto cannot take the password unchanged.
    #[error("the password of user {username} cannot be used: {reason}")]
    InvalidPassword {
        /// The (valid) username.
        username: String,
        /// Why the password cannot be used.
        reason: WeakPassword,
    },
    /// The iteration count is 0 or larger than [`MAX_ITERATIONS`].
    #[error("hash iterations must be from 1 to {MAX_ITERATIONS}, not {0}")]
    Iterations(u32),
    /// The same username appears twice in the input.
    #[error("user {0} is listed more than once")]
    DuplicateUser(String),
    /// The fingerprint key is shorter than [`MIN_FINGERPRINT_KEY_LEN`].
    #[error("the fingerprint key must be at least {MIN_FINGERPRINT_KEY_LEN} bytes long")]
    FingerprintKey,
}

/// A line of a password or fingerprints file that moat refuses to read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with the line (names the user, never a password).
    pub message: String,
}

/// Why password shards cannot be built or reassembled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// No shard was given.
    #[error("no password file shards")]
    NoShards,
    /// A manifest is not `"<n> <64 lower-case hex digits>"`.
    #[error("shard {index}: malformed manifest")]
    BadManifest {
        /// Position of the shard.
        index: usize,
    },
    /// Shards from different generations (an update is still propagating).
    #[error("shard {index}: its manifest differs from shard 0's (an update is still propagating)")]
    ManifestMismatch {
        /// Position of the shard.
        index: usize,
    },
    /// The manifest announces a different number of shards than were given.
    #[error("the manifest announces {expected} shards but {found} are present")]
    ShardCount {
        /// Count in the manifest.
        expected: usize,
        /// Count given.
        found: usize,
    },
    /// A non-empty shard does not end with a line break (concatenation would merge lines).
    #[error("shard {index}: the password file part does not end with a line break")]
    Unterminated {
        /// Position of the shard.
        index: usize,
    },
    /// The concatenated shards do not hash to the manifest's checksum.
    #[error("the combined password file does not match the manifest's checksum")]
    Checksum,
    /// The combined file is not a valid moat password file.
    #[error("the combined password file is invalid: {0}")]
    Invalid(ParseError),
    /// A shard's `passwd` or `fingerprints` text is not valid.
    #[error("shard {shard} ({key}): {error}")]
    Parse {
        /// Position of the shard.
        shard: usize,
        /// `passwd` or `fingerprints`.
        key: &'static str,
        /// The parse error.
        error: ParseError,
    },
    /// An entry handed to [`shard`] is malformed or names another user.
    #[error("the entry of user {0} is not a valid password line")]
    BadEntry(String),
    /// The same user appears in two entries.
    #[error("user {0} is listed more than once")]
    DuplicateUser(String),
    /// One user's entry alone does not fit into a shard.
    #[error("the entry of user {0} alone exceeds the shard size limit")]
    EntryTooLarge(String),
    /// No shard count up to the search limit fits (not expected with a uniform hash).
    #[error("cannot split the password file into shards of at most {limit} bytes")]
    CannotFit {
        /// The byte limit per shard.
        limit: usize,
    },
}

/// Writes one Mosquitto `$7$` password line (no trailing newline):
/// `username:$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512(password, salt, iterations, 64)>`,
/// standard base64 with padding, as `mosquitto_passwd` does.
///
/// Refuses usernames that fail [`validate::username`] and passwords Mosquitto would read
/// differently ([`validate::mosquitto_password`]: NUL, control characters including `\n`/`\r`,
/// 65536 bytes or more).
pub fn hash_line(
    username: &str,
    password: &str,
    iterations: u32,
    salt: &[u8; SALT_LEN],
) -> Result<String, PasswdError> {
    check_username(username)?;
    check_password(username, password)?;
    check_iterations(iterations)?;
    let mut hash = [0u8; HASH_LEN];
    pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), salt, iterations, &mut hash);
    Ok(format!("{username}:$7${iterations}${}${}", STANDARD.encode(salt), STANDARD.encode(hash)))
}

/// A random password of `len` characters from `A–Z a–z 0–9`, drawn from the operating system's
/// CSPRNG ([`OsRng`]). Uniform: a byte's top 6 bits select one of 64 values and the 2 values
/// beyond the 62-character alphabet are rejected, so there is no modulo bias.
pub fn generate_password(len: usize) -> String {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        OsRng.fill_bytes(&mut buf);
        for b in buf {
            let v = usize::from(b >> 2);
            if v < ALPHABET.len() && out.len() < len {
                out.push(char::from(ALPHABET[v]));
            }
        }
    }
    out
}

/// Base64 of HMAC-SHA256(`key`, `password`): tells whether a password is unchanged (and whether
/// two users share one) without storing anything reversible and without re-hashing PBKDF2.
///
/// HMAC is fast, so the key must stay secret and must not be stored next to the fingerprints
/// (otherwise the fingerprints become a cheap password-guessing oracle).
pub fn fingerprint(key: &[u8], password: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(password.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `password` matches a `$7$` or `$6$` password line (a trailing newline is ignored),
/// computed as the broker does. Like the broker (which takes the password with `strlen`), only
/// the bytes before a NUL count. Malformed lines never match. For tests and tools.
pub fn verify_line(line: &str, password: &str) -> bool {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let Ok(Some(parsed)) = parse_line(line) else {
        return false;
    };
    let password = password.split('\0').next().unwrap_or_default().as_bytes();
    let computed: [u8; HASH_LEN] = match parsed.digest {
        PwDigest::Pbkdf2Sha512 { iterations, ref salt, .. } => {
            let mut out = [0u8; HASH_LEN];
            pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
            out
        }
        PwDigest::Sha512 { ref salt, .. } => {
            let mut h = Sha512::new();
            h.update(password);
            h.update(salt);
            h.finalize().into()
        }
    };
    constant_time_eq(&computed, parsed.digest.hash())
}

/// The previously applied line and fingerprint of one user (from the current shard Secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousEntry {
    /// The user's password line, without newline.
    pub line: String,
    /// The [`fingerprint`] of the password the line was made from.
    pub fingerprint: String,
}

/// One user's line in a rendered password file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The username.
    pub username: String,
    /// The password line, without newline.
    pub line: String,
    /// The [`fingerprint`] of the user's password.
    pub fingerprint: String,
}

/// The result of [`assemble`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembly {
    /// One entry per user, sorted by username.
    pub entries: Vec<Entry>,
    /// How many PBKDF2 hashes were computed (0 when nothing changed).
    pub hashes_computed: usize,
}

impl Assembly {
    /// The whole (unsharded) password file: the lines sorted by username, each ending in `\n`.
    pub fn passwd_text(&self) -> String {
        self.entries.iter().map(|e| format!("{}\n", e.line)).collect()
    }

    /// Groups (of two or more usernames, sorted) whose passwords are identical.
    pub fn shared_passwords(&self) -> Vec<Vec<String>> {
        let mut by_fp: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for e in &self.entries {
            by_fp.entry(e.fingerprint.as_str()).or_default().push(e.username.clone());
        }
        let mut groups: Vec<Vec<String>> = by_fp.into_values().filter(|g| g.len() > 1).collect();
        groups.sort();
        groups
    }
}

/// Builds the password file entries for `users` (`(username, password)` pairs, any order).
///
/// A user's previous line is reused when the password's [`fingerprint`] under `fingerprint_key`
/// equals the previous one and the line is a canonical `$7$` line for that user with exactly
/// `iterations`; otherwise the password is hashed with a fresh random 12-byte salt. The result
/// reports how many hashes were computed. Every username and password is validated before
/// anything is hashed; duplicate usernames are an error.
pub fn assemble(
    users: &[(String, String)],
    previous: &BTreeMap<String, PreviousEntry>,
    iterations: u32,
    fingerprint_key: &[u8],
) -> Result<Assembly, PasswdError> {
    assemble_with(users, previous, iterations, fingerprint_key, |user, password, iterations| {
        let mut salt = [0u8; SALT_LEN];
        OsRng.fill_bytes(&mut salt);
        hash_line(user, password, iterations, &salt)
    })
}

/// [`assemble`] with the hashing step injected (tests count its calls).
fn assemble_with(
    users: &[(String, String)],
    previous: &BTreeMap<String, PreviousEntry>,
    iterations: u32,
    fingerprint_key: &[u8],
    mut hash: impl FnMut(&str, &str, u32) -> Result<String, PasswdError>,
) -> Result<Assembly, PasswdError> {
    check_iterations(iterations)?;
    if fingerprint_key.len() < MIN_FINGERPRINT_KEY_LEN {
        return Err(PasswdError::FingerprintKey);
    }
    let mut sorted: Vec<&(String, String)> = users.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for pair in sorted.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(PasswdError::DuplicateUser(quote(&pair[0].0)));
        }
    }
    for (user, password) in &sorted {
        check_username(user)?;
        check_password(user, password)?;
    }
    let mut entries = Vec::with_capacity(sorted.len());
    let mut hashes_computed = 0;
    for (user, password) in sorted {
        let fp = fingerprint(fingerprint_key, password);
        let reusable = previous.get(user).filter(|prev| {
            constant_time_eq(prev.fingerprint.as_bytes(), fp.as_bytes())
                && canonical_line(&prev.line).is_some_and(|p| p.username == *user && p.iterations() == Some(iterations))
        });
        let line = match reusable {
            Some(prev) => prev.line.clone(),
            None => {
                hashes_computed += 1;
                hash(user, password, iterations)?
            }
        };
        entries.push(Entry { username: user.clone(), line, fingerprint: fp });
    }
    Ok(Assembly { entries, hashes_computed })
}

/// One shard Secret's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// This shard's part of the password file (lines sorted by username, each ending in `\n`).
    pub passwd: String,
    /// `username:fingerprint\n` for this shard's users, sorted.
    pub fingerprints: String,
    /// `"<n> <sha256 hex of all shards' passwd texts concatenated in shard order>"`, the same in
    /// every shard of one generation.
    pub manifest: String,
}

impl Shard {
    /// Bytes this shard adds to its Secret (the sum of its data values, as Kubernetes counts).
    pub fn size_bytes(&self) -> usize {
        self.passwd.len() + self.fingerprints.len() + self.manifest.len()
    }

    /// The Secret data: [`KEY_PASSWD`], [`KEY_FINGERPRINTS`] and [`KEY_MANIFEST`].
    pub fn data(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (KEY_PASSWD.to_string(), self.passwd.clone()),
            (KEY_FINGERPRINTS.to_string(), self.fingerprints.clone()),
            (KEY_MANIFEST.to_string(), self.manifest.clone()),
        ])
    }
}

/// The shard (of `n`) a username belongs to: the first 8 bytes of its SHA-256, big-endian, mod `n`.
/// Independent of the other users, so adding a user changes one shard while `n` stays the same.
pub fn shard_index(username: &str, n: usize) -> usize {
    let digest = Sha256::digest(username.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % n as u64) as usize
}

/// Splits entries over shard Secrets (`<broker>-passwd-<i>` for `i` in `0..n`) so that no shard
/// holds more than [`SHARD_MAX_BYTES`]. `n` is the smallest count, starting from
/// total / (60 % of the limit), for which every shard fits. Users go to [`shard_index`]; lines
/// within a shard are sorted. Every entry is checked to be a canonical moat line for its user.
pub fn shard(entries: &[Entry]) -> Result<Vec<Shard>, ShardError> {
    shard_with_limit(entries, SHARD_MAX_BYTES)
}

fn shard_with_limit(entries: &[Entry], limit: usize) -> Result<Vec<Shard>, ShardError> {
    let mut seen = BTreeSet::new();
    for e in entries {
        let ok = canonical_line(&e.line).is_some_and(|p| p.username == e.username) && valid_fingerprint(&e.fingerprint);
        if !ok {
            return Err(ShardError::BadEntry(quote(&e.username)));
        }
        if !seen.insert(e.username.as_str()) {
            return Err(ShardError::DuplicateUser(quote(&e.username)));
        }
    }
    let entry_bytes = |e: &Entry| e.line.len() + 1 + e.username.len() + 1 + e.fingerprint.len() + 1;
    let manifest_bytes = |n: usize| n.to_string().len() + 1 + 64;
    let total: usize = entries.iter().map(entry_bytes).sum();
    if let Some(e) = entries.iter().find(|e| entry_bytes(e) + manifest_bytes(1) > limit) {
        return Err(ShardError::EntryTooLarge(e.username.clone()));
    }
    let start = (total * 10).div_ceil(limit * 6).max(1);
    for n in start..start + 1024 {
        let mut sizes = vec![0usize; n];
        for e in entries {
            sizes[shard_index(&e.username, n)] += entry_bytes(e);
        }
        if sizes.iter().all(|s| s + manifest_bytes(n) <= limit) {
            return Ok(build_shards(entries, n));
        }
    }
    Err(ShardError::CannotFit { limit })
}

fn build_shards(entries: &[Entry], n: usize) -> Vec<Shard> {
    let mut buckets: Vec<Vec<&Entry>> = vec![Vec::new(); n];
    for e in entries {
        buckets[shard_index(&e.username, n)].push(e);
    }
    let mut parts = Vec::with_capacity(n);
    for mut bucket in buckets {
        bucket.sort_by(|a, b| a.username.cmp(&b.username));
        let passwd: String = bucket.iter().map(|e| format!("{}\n", e.line)).collect();
        let fingerprints: String = bucket.iter().map(|e| format!("{}:{}\n", e.username, e.fingerprint)).collect();
        parts.push((passwd, fingerprints));
    }
    let mut sha = Sha256::new();
    for (passwd, _) in &parts {
        sha.update(passwd.as_bytes());
    }
    let manifest = format!("{n} {}", crate::hex(&sha.finalize()));
    parts.into_iter().map(|(passwd, fingerprints)| Shard { passwd, fingerprints, manifest: manifest.clone() }).collect()
}

/// Reassembles the password file from `(manifest, passwd)` of every shard, **in shard order**
/// (`<broker>-passwd-0`, `-1`, ...). Succeeds only when exactly `n` shards are given, all
/// manifests are identical, the concatenation hashes to the manifest's checksum, and the result
/// is a valid moat password file without duplicate users; so a half-propagated update (some
/// Secrets already new, others still old) is never installed.
pub fn assemble_shards<M: AsRef<str>, P: AsRef<str>>(shards: &[(M, P)]) -> Result<String, ShardError> {
    let Some((first, _)) = shards.first() else {
        return Err(ShardError::NoShards);
    };
    let first = first.as_ref();
    let (n, checksum) = parse_manifest(first).ok_or(ShardError::BadManifest { index: 0 })?;
    for (index, (manifest, passwd)) in shards.iter().enumerate() {
        let manifest = manifest.as_ref();
        if parse_manifest(manifest).is_none() {
            return Err(ShardError::BadManifest { index });
        }
        if manifest != first {
            return Err(ShardError::ManifestMismatch { index });
        }
        let passwd = passwd.as_ref();
        if !passwd.is_empty() && !passwd.ends_with('\n') {
            return Err(ShardError::Unterminated { index });
        }
    }
    if shards.len() != n {
        return Err(ShardError::ShardCount { expected: n, found: shards.len() });
    }
    let text: String = shards.iter().map(|(_, p)| p.as_ref()).collect();
    if crate::hex(&Sha256::digest(text.as_bytes())) != checksum {
        return Err(ShardError::Checksum);
    }
    for (i, line) in lines(&text) {
        if canonical_line(line).is_none() {
            return Err(ShardError::Invalid(ParseError { line: i, message: "not a password line moat writes".into() }));
        }
    }
    parse_passwd(&text).map_err(ShardError::Invalid)?;
    Ok(text)
}

/// The previous state for [`assemble`] from the `(passwd, fingerprints)` texts of the currently
/// applied shard Secrets. Users missing from either text are left out (they will be re-hashed).
pub fn previous_from_shards<P: AsRef<str>, F: AsRef<str>>(
    shards: &[(P, F)],
) -> Result<BTreeMap<String, PreviousEntry>, ShardError> {
    let mut lines_by_user = BTreeMap::new();
    let mut fps = BTreeMap::new();
    for (shard, (passwd, fingerprints)) in shards.iter().enumerate() {
        let parsed =
            parse_passwd(passwd.as_ref()).map_err(|error| ShardError::Parse { shard, key: KEY_PASSWD, error })?;
        for (user, field) in parsed {
            if lines_by_user.insert(user.clone(), format!("{user}:{field}")).is_some() {
                return Err(ShardError::DuplicateUser(quote(&user)));
            }
        }
        let parsed = parse_fingerprints(fingerprints.as_ref()).map_err(|error| ShardError::Parse {
            shard,
            key: KEY_FINGERPRINTS,
            error,
        })?;
        for (user, fp) in parsed {
            if fps.insert(user.clone(), fp).is_some() {
                return Err(ShardError::DuplicateUser(quote(&user)));
            }
        }
    }
    Ok(lines_by_user
        .into_iter()
        .filter_map(|(user, line)| {
            let fingerprint = fps.remove(&user)?;
            Some((user, PreviousEntry { line, fingerprint }))
        })
        .collect())
}

/// Reads a password file with Mosquitto 2.0's rules (`pwfile__parse` and
/// `unpwd__decode_passwords`) and returns `(username, hash field)` in file order.
///
/// Like Mosquitto it skips lines starting with `#` (and blank lines), splits on `:` and trims
/// whitespace (including `\r`) around both fields, and accepts `$7$<iterations>$<salt>$<hash>`
/// and `$6$<salt>$<hash>` with a 12-byte salt and a 64-byte hash. Unlike Mosquitto, which drops or
/// misreads such lines silently, it fails on: a non-blank line without `:`, an empty username
/// (`:x` makes Mosquitto take `x` as the username), an empty hash, a field of 65536 bytes or
/// more, an unknown or malformed hash (including 2.1's 64-byte salts and iteration count 0, which
/// 2.0 drops), a NUL, and duplicate usernames (which entry Mosquitto keeps is undefined). It also
/// refuses non-canonical forms Mosquitto reads leniently and moat never writes: more than one
/// `:` (`a::h`, `a:h:junk`), a hash field without its leading `$`, and iteration counts with
/// trailing junk or leading zeros (`101x`, `0101`), so the agent never installs a file whose
/// meaning depends on those quirks.
pub fn parse_passwd(text: &str) -> Result<Vec<(String, String)>, ParseError> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (line_no, line) in lines(text) {
        let err = |message: String| ParseError { line: line_no, message };
        match parse_line(line) {
            Ok(None) => {}
            Ok(Some(p)) => {
                if !seen.insert(p.username.clone()) {
                    return Err(err(format!("user {} is listed more than once", quote(&p.username))));
                }
                out.push((p.username, p.field));
            }
            Err(message) => return Err(err(message)),
        }
    }
    Ok(out)
}

/// Reads a `fingerprints` text (`username:fingerprint` lines, as [`shard`] writes them):
/// valid usernames, base64 HMAC-SHA256 fingerprints, no duplicates, no other lines.
pub fn parse_fingerprints(text: &str) -> Result<BTreeMap<String, String>, ParseError> {
    let mut out = BTreeMap::new();
    for (line_no, line) in lines(text) {
        let err = |message: String| ParseError { line: line_no, message };
        let Some((user, fp)) = line.split_once(':') else {
            return Err(err("expected username:fingerprint".into()));
        };
        validate::file_username(user).map_err(|m| err(format!("invalid username {}: {m}", quote(user))))?;
        if !valid_fingerprint(fp) {
            return Err(err(format!("the fingerprint of user {user} is not base64 of 32 bytes")));
        }
        if out.insert(user.to_string(), fp.to_string()).is_some() {
            return Err(err(format!("user {user} is listed more than once")));
        }
    }
    Ok(out)
}

/// A decoded password hash field.
enum PwDigest {
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512 { iterations: u32, salt: [u8; SALT_LEN], hash: [u8; HASH_LEN] },
    /// `$6$`: SHA-512(password ‖ salt).
    Sha512 { salt: [u8; SALT_LEN], hash: [u8; HASH_LEN] },
}

impl PwDigest {
    fn hash(&self) -> &[u8; HASH_LEN] {
        match self {
            PwDigest::Pbkdf2Sha512 { hash, .. } | PwDigest::Sha512 { hash, .. } => hash,
        }
    }
}

/// One password line as Mosquitto reads it.
struct ParsedLine {
    username: String,
    /// The trimmed hash field.
    field: String,
    digest: PwDigest,
}

impl ParsedLine {
    fn iterations(&self) -> Option<u32> {
        match self.digest {
            PwDigest::Pbkdf2Sha512 { iterations, .. } => Some(iterations),
            PwDigest::Sha512 { .. } => None,
        }
    }
}

/// Parses one line (without its `\n`). `Ok(None)` for lines Mosquitto skips harmlessly
/// (comments and blank lines); `Err` for lines it would drop or misread.
fn parse_line(line: &str) -> Result<Option<ParsedLine>, String> {
    if line.contains('\0') {
        return Err("contains a NUL byte (Mosquitto would cut the line there)".into());
    }
    if line.starts_with('#') {
        return Ok(None);
    }
    if !line.contains(':') {
        if c_trim(line).is_empty() {
            return Ok(None);
        }
        return Err("has no ':' (Mosquitto would ignore the line)".into());
    }
    let (user, field) = line.split_once(':').expect("checked above");
    if field.contains(':') {
        return Err("has more than one ':' (Mosquitto would ignore everything after the second)".into());
    }
    let (user, field) = (c_trim(user), c_trim(field));
    if user.is_empty() {
        return Err("has an empty username (Mosquitto would read the hash as the username)".into());
    }
    if user.len() > MOSQUITTO_FIELD_MAX {
        return Err("has a username of 65536 bytes or more (Mosquitto would skip it)".into());
    }
    let who = quote(user);
    if field.is_empty() {
        return Err(format!("user {who} has no password hash (Mosquitto would drop the entry)"));
    }
    if field.len() > MOSQUITTO_FIELD_MAX {
        return Err(format!("user {who}: the hash field is 65536 bytes or more (Mosquitto would skip it)"));
    }
    let digest = decode_field(field).map_err(|m| format!("user {who}: {m} (Mosquitto would drop the entry)"))?;
    Ok(Some(ParsedLine { username: user.to_string(), field: field.to_string(), digest }))
}

/// Decodes `$7$<iterations>$<salt>$<hash>` or `$6$<salt>$<hash>`, canonical form only.
fn decode_field(field: &str) -> Result<PwDigest, String> {
    let parts: Vec<&str> = field.split('$').collect();
    match parts.as_slice() {
        ["", "7", iterations, salt, hash] => {
            let iterations = canonical_u32(iterations)
                .filter(|i| (1..=MAX_ITERATIONS).contains(i))
                .ok_or_else(|| "iterations must be a number from 1 to 2147483647".to_string())?;
            Ok(PwDigest::Pbkdf2Sha512 { iterations, salt: decode_salt(salt)?, hash: decode_hash(hash)? })
        }
        ["", "6", salt, hash] => Ok(PwDigest::Sha512 { salt: decode_salt(salt)?, hash: decode_hash(hash)? }),
        ["", "7" | "6", ..] => Err("malformed $7$ or $6$ hash".into()),
        _ => Err("not a $7$ (PBKDF2-SHA512) or $6$ (SHA-512) hash".into()),
    }
}

fn decode_salt(b64: &str) -> Result<[u8; SALT_LEN], String> {
    let bytes = STANDARD.decode(b64).map_err(|_| "the salt is not valid base64".to_string())?;
    bytes.try_into().map_err(|b: Vec<u8>| format!("the salt is {} bytes, Mosquitto 2.0 needs exactly 12", b.len()))
}

fn decode_hash(b64: &str) -> Result<[u8; HASH_LEN], String> {
    let bytes = STANDARD.decode(b64).map_err(|_| "the hash is not valid base64".to_string())?;
    bytes.try_into().map_err(|b: Vec<u8>| format!("the hash is {} bytes, Mosquitto needs exactly 64", b.len()))
}

/// A line exactly as [`hash_line`] writes it: a valid username, `$7$`, no surrounding whitespace.
fn canonical_line(line: &str) -> Option<ParsedLine> {
    let parsed = parse_line(line).ok()??;
    let PwDigest::Pbkdf2Sha512 { iterations, salt, hash } = &parsed.digest else {
        return None;
    };
    let rebuilt = format!("{}:$7${iterations}${}${}", parsed.username, STANDARD.encode(salt), STANDARD.encode(hash));
    (rebuilt == line && validate::file_username(&parsed.username).is_ok()).then_some(parsed)
}

fn valid_fingerprint(fp: &str) -> bool {
    fp.len() == 44 && STANDARD.decode(fp).is_ok_and(|b| b.len() == 32)
}

/// `"<n> <64 lower-case hex>"` with `n` ≥ 1 without leading zeros.
fn parse_manifest(manifest: &str) -> Option<(usize, &str)> {
    let (n, checksum) = manifest.split_once(' ')?;
    let n = canonical_u32(n).filter(|n| *n >= 1)? as usize;
    let hex_ok = checksum.len() == 64 && checksum.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    hex_ok.then_some((n, checksum))
}

/// Decimal digits without sign or leading zeros.
fn canonical_u32(text: &str) -> Option<u32> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let no_leading_zero = text == "0" || !text.starts_with('0');
    if digits_only && no_leading_zero { text.parse().ok() } else { None }
}

/// Lines as C's `fgets` sees them: split on `\n` only; a final empty piece is not a line.
pub(super) fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    let pieces = if text.is_empty() { None } else { Some(body.split('\n')) };
    pieces.into_iter().flatten().enumerate().map(|(i, l)| (i + 1, l))
}

/// Trims C `isspace` characters (space, `\t`, `\n`, `\v`, `\f`, `\r`) from both ends, as
/// Mosquitto's `misc__trimblanks` does.
pub(super) fn c_trim(s: &str) -> &str {
    s.trim_matches(is_c_space)
}

/// C's `isspace` in the "C" locale (bytes 0x80 and above are not spaces).
pub(super) fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

fn check_username(username: &str) -> Result<(), PasswdError> {
    validate::file_username(username)
        .map_err(|reason| PasswdError::InvalidUsername { username: quote(username), reason })
}

fn check_password(username: &str, password: &str) -> Result<(), PasswdError> {
    validate::mosquitto_password(password)
        .map_err(|reason| PasswdError::InvalidPassword { username: username.to_string(), reason })
}

fn check_iterations(iterations: u32) -> Result<(), PasswdError> {
    if (1..=MAX_ITERATIONS).contains(&iterations) { Ok(()) } else { Err(PasswdError::Iterations(iterations)) }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

    /// PBKDF2-HMAC-SHA512 for a 64-byte output (one block), written out from RFC 8018 §5.2 with
    /// the `hmac` crate: U1 = HMAC(P, S ‖ INT(1)), Ui = HMAC(P, Ui-1), T = U1 ^ ... ^ Uc.
    fn independent_pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 64] {
        let prf = |data: &[u8]| -> [u8; 64] {
            let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(password).unwrap();
            mac.update(data);
            mac.finalize().into_bytes().into()
        };
        let mut u = prf(&[salt, &1u32.to_be_bytes()].concat());
        let mut t = u;
        for _ in 1..iterations {
            u = prf(&u);
            t.iter_mut().zip(u.iter()).for_each(|(t, u)| *t ^= u);
        }
        t
    }

    fn fake_entry(username: &str, seed: u64) -> Entry {
        // a structurally valid line without paying for PBKDF2 (sharding never looks at the hash)
        let mut bytes = [0u8; SALT_LEN + HASH_LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) >> 24) as u8;
        }
        let line = format!(
            "{username}:$7$1000${}${}",
            STANDARD.encode(&bytes[..SALT_LEN]),
            STANDARD.encode(&bytes[SALT_LEN..])
        );
        Entry { username: username.into(), line, fingerprint: fingerprint(KEY, &format!("pw-{seed}")) }
    }

    fn users(n: usize) -> Vec<(String, String)> {
        (0..n).map(|i| (format!("user-{i:05}"), format!("password-{i}"))).collect()
    }

    #[test]
    fn hash_line_has_mosquitto_format_and_verifies_independently() {
        let salt = *b"twelve-bytes";
        let line = hash_line("alice", "S3cret:with$colon", 101, &salt).unwrap();
        let (user, field) = line.split_once(':').unwrap();
        assert_eq!(user, "alice");
        let parts: Vec<&str> = field.split('$').collect();
        assert_eq!(parts[..3], ["", "7", "101"]);
        assert_eq!(parts[3], STANDARD.encode(salt));
        assert_eq!(parts[3].len(), 16, "12-byte salt, 16 base64 characters, no padding");
        assert_eq!(parts[4].len(), 88);
        assert!(parts[4].ends_with("=="), "standard base64 keeps its padding");
        assert!(!line.contains('\n'));
        let expected = independent_pbkdf2_sha512(b"S3cret:with$colon", &salt, 101);
        assert_eq!(STANDARD.decode(parts[4]).unwrap(), expected);
        assert!(verify_line(&line, "S3cret:with$colon"));
        assert!(!verify_line(&line, "S3cret:with$colon!"));
    }

    #[test]
    fn lines_written_by_mosquitto_passwd_verify() {
        // written by mosquitto_passwd 2.0.11: `-b` (101 iterations), `-I 1000`, and `-H sha512`
        let alice = "alice:$7$101$nJON7DhsejKa021L$b64ijTMujW9szdxGsuAL2nyug7hBWGPBrj1+8hhsmtBZ+MoaCV+byi3ABo4WrV86yVF9xxK0ULBm5akNZrVQmQ==";
        let bob = "bob:$7$1000$dHvai4yAyFy2lIH8$3E2yxn3qRqt4jqOPbge714qPXxJ3JNf2pchJRmFpQRrEQ4NktuPl/+dvfRlH0ZqovFZ4ffLjp+y2Fwje4ecsHg==";
        let carol = "carol:$6$xeKYSLbJUP5tUOq5$YRj6agdLZY2Q+Fi4MGPb6wJeJsAszN9gJvCDQNMO3FuneP1T3EJmh0+ya6mKi66APtLxZjeTUwaRHHxOBDwlYg==";
        assert!(verify_line(alice, "S3cret:with$colon"));
        assert!(verify_line(bob, "hunter2-Hunter2"));
        assert!(verify_line(carol, "carol-pass"));
        assert!(!verify_line(alice, "S3cret"));
        assert!(!verify_line(carol, "carol-pass "));
        // and our writer reproduces mosquitto_passwd's line from the same salt
        let salt: [u8; 12] = STANDARD.decode("nJON7DhsejKa021L").unwrap().try_into().unwrap();
        assert_eq!(hash_line("alice", "S3cret:with$colon", 101, &salt).unwrap(), alice);
        let text = format!("{alice}\n{bob}\r\n{carol}\n");
        let parsed = parse_passwd(&text).unwrap();
        assert_eq!(parsed.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(), ["alice", "bob", "carol"]);
    }

    #[test]
    fn verify_line_cuts_the_password_at_nul_like_the_broker() {
        let line = hash_line("alice", "secret", 1, &[7; 12]).unwrap();
        assert!(verify_line(&line, "secret\0ignored"));
        assert!(!verify_line("alice:$7$1$bad", "secret"));
        assert!(!verify_line("", "secret"));
    }

    #[test]
    fn hash_line_rejects_usernames_mosquitto_would_misread() {
        for bad in ["al:ice", "alice\n", "ali\nce", "al\0ice", "alice\r", "", " alice", "a b", "#alice"] {
            let err = hash_line(bad, "secret", 1, &[0; 12]).unwrap_err();
            assert!(matches!(err, PasswdError::InvalidUsername { .. }), "{bad:?}: {err:?}");
            assert!(!err.to_string().contains('\n'));
        }
    }

    #[test]
    fn hash_line_rejects_passwords_mosquitto_would_misread() {
        for bad in ["sec\0ret", "secret\n", "sec\rret", "\x1b[31m"] {
            let err = hash_line("alice", bad, 1, &[0; 12]).unwrap_err();
            assert_eq!(
                err,
                PasswdError::InvalidPassword { username: "alice".into(), reason: WeakPassword::ControlCharacter }
            );
            assert!(!err.to_string().contains("sec"), "the message must not contain the password: {err}");
        }
        let long = "x".repeat(65536);
        assert!(matches!(
            hash_line("alice", &long, 1, &[0; 12]),
            Err(PasswdError::InvalidPassword { reason: WeakPassword::TooLong, .. })
        ));
        assert_eq!(hash_line("alice", "secret", 0, &[0; 12]), Err(PasswdError::Iterations(0)));
        assert_eq!(hash_line("alice", "secret", u32::MAX, &[0; 12]), Err(PasswdError::Iterations(u32::MAX)));
    }

    #[test]
    fn generated_passwords_are_alphanumeric_and_cover_the_alphabet() {
        let a = generate_password(32);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, generate_password(32));
        assert_eq!(generate_password(0), "");
        // 62,000 characters: each of the 62 should show up about 1,000 times
        let mut counts = BTreeMap::new();
        for c in generate_password(62_000).chars() {
            *counts.entry(c).or_insert(0u32) += 1;
        }
        assert_eq!(counts.len(), 62);
        assert!(counts.values().all(|n| (800..1200).contains(n)), "{counts:?}");
    }

    #[test]
    fn fingerprint_is_base64_hmac_sha256() {
        // RFC 4231 test case 1
        let fp = fingerprint(&[0x0b; 20], "Hi There");
        let expected = "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7";
        assert_eq!(crate::hex(&STANDARD.decode(&fp).unwrap()), expected);
        assert_eq!(fingerprint(KEY, "a"), fingerprint(KEY, "a"));
        assert_ne!(fingerprint(KEY, "a"), fingerprint(KEY, "b"));
        assert_ne!(fingerprint(KEY, "a"), fingerprint(b"another key, also 32 bytes long!", "a"));
        assert!(valid_fingerprint(&fp));
    }

    /// Assembles with a hasher that counts its calls, to check `hashes_computed` is honest.
    fn counted(
        users: &[(String, String)],
        previous: &BTreeMap<String, PreviousEntry>,
        iterations: u32,
    ) -> (Assembly, usize) {
        let mut calls = 0;
        let assembly = assemble_with(users, previous, iterations, KEY, |u, p, i| {
            calls += 1;
            hash_line(u, p, i, &[calls as u8; SALT_LEN])
        })
        .unwrap();
        assert_eq!(assembly.hashes_computed, calls);
        (assembly, calls)
    }

    fn previous_of(assembly: &Assembly) -> BTreeMap<String, PreviousEntry> {
        let shards = shard(&assembly.entries).unwrap();
        let texts: Vec<(String, String)> = shards.into_iter().map(|s| (s.passwd, s.fingerprints)).collect();
        previous_from_shards(&texts).unwrap()
    }

    #[test]
    fn ten_thousand_unchanged_users_hash_zero_times() {
        let users = users(10_000);
        let (first, calls) = counted(&users, &BTreeMap::new(), 1);
        assert_eq!(calls, 10_000);
        // the previous state goes through the shard Secrets, as in the controller
        let previous = previous_of(&first);
        assert_eq!(previous.len(), 10_000);
        let (second, calls) = counted(&users, &previous, 1);
        assert_eq!(calls, 0, "steady state must not compute any PBKDF2 hash");
        assert_eq!(second.entries, first.entries, "every line is reused as it was");
        // the public entry point agrees
        assert_eq!(assemble(&users, &previous, 1, KEY).unwrap().hashes_computed, 0);
    }

    #[test]
    fn only_changed_passwords_new_users_and_iterations_are_rehashed() {
        let mut users = users(50);
        let (first, _) = counted(&users, &BTreeMap::new(), 2);
        let previous = previous_of(&first);
        users[7].1 = "a new password".into();
        users.push(("zed".into(), "zed's password".into()));
        users.remove(0);
        let (second, calls) = counted(&users, &previous, 2);
        assert_eq!(calls, 2, "one changed password and one new user");
        assert_eq!(second.entries.len(), 50);
        assert!(second.entries.iter().all(|e| e.username != "user-00000"));
        let user7 = second.entries.iter().find(|e| e.username == "user-00007").unwrap();
        assert!(verify_line(&user7.line, "a new password"));
        // a changed iteration count re-hashes everybody
        let (third, calls) = counted(&users, &previous_of(&second), 3);
        assert_eq!(calls, 50);
        assert!(third.entries.iter().all(|e| e.line.contains("$7$3$")));
    }

    #[test]
    fn a_tampered_previous_line_is_not_reused() {
        let users = users(3);
        let (first, _) = counted(&users, &BTreeMap::new(), 1);
        let mut previous = previous_of(&first);
        previous.get_mut("user-00001").unwrap().line = first.entries[2].line.clone(); // another user's line
        previous.get_mut("user-00002").unwrap().line.push(' ');
        let (_, calls) = counted(&users, &previous, 1);
        assert_eq!(calls, 2);
    }

    #[test]
    fn assemble_sorts_validates_and_refuses_duplicates() {
        let users = vec![("bob".to_string(), "pw-b".to_string()), ("alice".to_string(), "pw-a".to_string())];
        let (a, _) = counted(&users, &BTreeMap::new(), 1);
        assert_eq!(a.entries.iter().map(|e| e.username.as_str()).collect::<Vec<_>>(), ["alice", "bob"]);
        assert!(a.passwd_text().starts_with("alice:$7$1$") && a.passwd_text().ends_with("==\n"));

        let dup = vec![("bob".to_string(), "x".to_string()), ("bob".to_string(), "y".to_string())];
        assert_eq!(assemble(&dup, &BTreeMap::new(), 1, KEY), Err(PasswdError::DuplicateUser("\"bob\"".into())));
        let bad = vec![("alice".to_string(), "fine".to_string()), ("mal:lory".to_string(), "x".to_string())];
        let mut calls = 0;
        let err = assemble_with(&bad, &BTreeMap::new(), 1, KEY, |_, _, _| {
            calls += 1;
            Ok(String::new())
        });
        assert!(matches!(err, Err(PasswdError::InvalidUsername { .. })));
        assert_eq!(calls, 0, "validation happens before any hashing");
        assert_eq!(assemble(&users, &BTreeMap::new(), 1, b"short"), Err(PasswdError::FingerprintKey));
    }

    #[test]
    fn shared_passwords_are_detected() {
        let users: Vec<(String, String)> = [("a", "same"), ("b", "other"), ("c", "same")]
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        let (a, _) = counted(&users, &BTreeMap::new(), 1);
        assert_eq!(a.shared_passwords(), vec![vec!["a".to_string(), "c".to_string()]]);
    }

    fn check_shards(entries: &[Entry], shards: &[Shard]) -> Result<(), TestCaseError> {
        let n = shards.len();
        prop_assert!(n >= 1);
        let mut seen = BTreeMap::new();
        for (i, s) in shards.iter().enumerate() {
            prop_assert!(s.size_bytes() <= SHARD_MAX_BYTES, "shard {} holds {} bytes", i, s.size_bytes());
            prop_assert_eq!(&s.manifest, &shards[0].manifest);
            let parsed = parse_passwd(&s.passwd).unwrap();
            let names: Vec<&String> = parsed.iter().map(|(u, _)| u).collect();
            prop_assert!(names.windows(2).all(|w| w[0] < w[1]), "lines within a shard are sorted");
            prop_assert_eq!(parse_fingerprints(&s.fingerprints).unwrap().len(), parsed.len());
            for (user, field) in parsed {
                prop_assert_eq!(shard_index(&user, n), i);
                prop_assert!(seen.insert(user.clone(), format!("{user}:{field}")).is_none(), "duplicate {}", user);
            }
        }
        let expected: BTreeMap<String, String> = entries.iter().map(|e| (e.username.clone(), e.line.clone())).collect();
        prop_assert_eq!(seen, expected, "no user lost, none invented, lines unchanged");
        let pairs: Vec<(&str, &str)> = shards.iter().map(|s| (s.manifest.as_str(), s.passwd.as_str())).collect();
        let whole = assemble_shards(&pairs).unwrap();
        prop_assert_eq!(whole.lines().count(), entries.len());
        Ok(())
    }

    /// Shards `count` users named from `name_len` and `seed`, checks them, then adds one user and
    /// checks that only the shard it lands in changes (unless the shard count changes).
    fn shard_and_add_one(count: usize, name_len: usize, seed: u64) -> Result<(), TestCaseError> {
        let name = |i: usize| {
            let base = format!("u{i}-{seed:x}-");
            format!("{base}{}", "x".repeat(name_len.saturating_sub(base.len())))
        };
        let entries: Vec<Entry> = (0..count).map(|i| fake_entry(&name(i), seed ^ i as u64)).collect();
        let shards = shard(&entries).unwrap();
        check_shards(&entries, &shards)?;

        let mut more = entries.clone();
        more.push(fake_entry(&name(count), !seed));
        let after = shard(&more).unwrap();
        check_shards(&more, &after)?;
        if after.len() == shards.len() {
            let target = shard_index(&name(count), after.len());
            for (i, (old, new)) in shards.iter().zip(&after).enumerate() {
                if i == target {
                    prop_assert_ne!(&old.passwd, &new.passwd);
                } else {
                    prop_assert_eq!(&old.passwd, &new.passwd, "shard {} changed", i);
                    prop_assert_eq!(&old.fingerprints, &new.fingerprints);
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3))]
        #[test]
        fn shards_fit_lose_nothing_and_are_stable(name_len in 1usize..=128, seed in any::<u64>()) {
            for count in [1, 5_000, 20_000] {
                shard_and_add_one(count, name_len, seed)?;
            }
        }
    }

    #[test]
    fn twenty_thousand_long_usernames_need_several_shards() {
        let entries: Vec<Entry> = (0..20_000).map(|i| fake_entry(&format!("{i:0>128}"), i as u64)).collect();
        let shards = shard(&entries).unwrap();
        assert!(shards.len() >= 10, "{} shards", shards.len());
        assert!(shards.iter().all(|s| s.size_bytes() <= SHARD_MAX_BYTES));
        // the shard count starts at total / 60 % of the limit
        let total: usize = shards.iter().map(|s| s.passwd.len() + s.fingerprints.len()).sum();
        assert!(shards.len() >= total.div_ceil(SHARD_MAX_BYTES * 6 / 10));
    }

    #[test]
    fn small_limits_force_many_small_shards() {
        let entries: Vec<Entry> = (0..300).map(|i| fake_entry(&format!("user{i}"), i)).collect();
        let shards = shard_with_limit(&entries, 4096).unwrap();
        assert!(shards.len() >= 15);
        assert!(shards.iter().all(|s| s.size_bytes() <= 4096));
        assert!(matches!(shard_with_limit(&entries, 200), Err(ShardError::EntryTooLarge(_))));
    }

    #[test]
    fn no_users_make_one_empty_shard() {
        let shards = shard(&[]).unwrap();
        assert_eq!(shards.len(), 1);
        assert_eq!(shards[0].passwd, "");
        assert_eq!(shards[0].manifest, format!("1 {}", crate::hex(&Sha256::digest(b""))));
        assert_eq!(assemble_shards(&[(&shards[0].manifest, "")]).unwrap(), "");
    }

    #[test]
    fn shard_refuses_bad_entries() {
        let mut e = fake_entry("alice", 1);
        e.line = e.line.replacen("alice", "bob", 1);
        assert!(matches!(shard(&[e]), Err(ShardError::BadEntry(_))));
        let mut e = fake_entry("alice", 1);
        e.line.push('\n');
        assert!(matches!(shard(&[e]), Err(ShardError::BadEntry(_))));
        let mut e = fake_entry("alice", 1);
        e.fingerprint = "nope".into();
        assert!(matches!(shard(&[e]), Err(ShardError::BadEntry(_))));
        assert!(matches!(shard(&[fake_entry("a", 1), fake_entry("a", 2)]), Err(ShardError::DuplicateUser(_))));
    }

    #[test]
    fn assemble_shards_refuses_incomplete_or_mixed_generations() {
        let entries: Vec<Entry> = (0..300).map(|i| fake_entry(&format!("user{i}"), i)).collect();
        let old = shard_with_limit(&entries, 8192).unwrap();
        assert!(old.len() >= 4);
        let pairs = |s: &[Shard]| s.iter().map(|s| (s.manifest.clone(), s.passwd.clone())).collect::<Vec<_>>();
        let good = pairs(&old);
        let whole = assemble_shards(&good).unwrap();
        assert_eq!(whole, old.iter().map(|s| s.passwd.as_str()).collect::<String>());

        assert_eq!(assemble_shards::<String, String>(&[]), Err(ShardError::NoShards));
        // a missing shard
        assert_eq!(
            assemble_shards(&good[..good.len() - 1]),
            Err(ShardError::ShardCount { expected: good.len(), found: good.len() - 1 })
        );
        // one shard already from the next generation
        let mut more = entries.clone();
        more[5] = fake_entry("user5", 999);
        let new = shard_with_limit(&more, 8192).unwrap();
        assert_eq!(new.len(), old.len());
        let mut mixed = good.clone();
        mixed[1] = pairs(&new)[1].clone();
        assert_eq!(assemble_shards(&mixed), Err(ShardError::ManifestMismatch { index: 1 }));
        // right manifests, wrong content (or order)
        let mut swapped = good.clone();
        swapped.swap(0, 1);
        assert_eq!(assemble_shards(&swapped), Err(ShardError::Checksum));
        let mut tampered = good.clone();
        tampered[2].1.push_str("mallory:$7$1$AAAAAAAAAAAAAAAA$AAAA\n");
        assert_eq!(assemble_shards(&tampered), Err(ShardError::Checksum));
        // malformed manifests
        for bad in ["", "4", "04 abc", "0 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "x y"] {
            let mut m = good.clone();
            m[0].0 = bad.into();
            assert_eq!(assemble_shards(&m), Err(ShardError::BadManifest { index: 0 }), "{bad:?}");
        }
    }

    #[test]
    fn assemble_shards_refuses_content_mosquitto_would_misread_even_with_a_matching_checksum() {
        for passwd in ["# comment\n", "alice\n", "alice:$7$1$AAAA$BBBB\n", "x:y:z\n", "alice:$7$1$AAAAAAAAAAAAAAAA"] {
            let manifest = format!("1 {}", crate::hex(&Sha256::digest(passwd.as_bytes())));
            assert!(assemble_shards(&[(manifest, passwd)]).is_err(), "{passwd:?}");
        }
        let line = fake_entry("alice", 1).line;
        let twice = format!("{line}\n{line}\n");
        let manifest = format!("1 {}", crate::hex(&Sha256::digest(twice.as_bytes())));
        assert!(matches!(assemble_shards(&[(manifest, twice)]), Err(ShardError::Invalid(_))));
    }

    #[test]
    fn parse_passwd_follows_mosquitto_and_refuses_what_it_would_drop() {
        let good = fake_entry("alice", 1).line;
        let field = good.split_once(':').unwrap().1.to_string();
        // skipped harmlessly: comments and blank lines; fields are trimmed like misc__trimblanks
        let text = format!("# comment\n\n   \n{good}\r\n  bob \t: {field} \n");
        let parsed = parse_passwd(&text).unwrap();
        assert_eq!(parsed, vec![("alice".into(), field.clone()), ("bob".into(), field.clone())]);
        assert_eq!(parse_passwd("").unwrap(), vec![]);

        let salt64 = STANDARD.encode([1u8; 64]);
        let hash = STANDARD.encode([2u8; 64]);
        let salt12 = STANDARD.encode([1u8; 12]);
        let cases: Vec<(String, &str)> = vec![
            ("alice".into(), "no ':'"),
            (format!(":{field}"), "empty username"),
            (format!("  :{field}"), "empty username"),
            ("alice:".into(), "no password hash"),
            (format!("alice:{field}:extra"), "more than one ':'"),
            (format!("alice::{field}"), "more than one ':'"),
            (format!("carol:$7$1000${salt64}${hash}"), "salt is 64 bytes"),
            (format!("carol:$7$1000${salt12}${salt12}"), "hash is 12 bytes"),
            (format!("carol:$7$0${salt12}${hash}"), "iterations"),
            (format!("carol:$7$0101${salt12}${hash}"), "iterations"),
            (format!("carol:$7$101x${salt12}${hash}"), "iterations"),
            (format!("carol:$7$2147483648${salt12}${hash}"), "iterations"),
            (format!("carol:$7${salt12}${hash}"), "malformed"),
            (format!("carol:$7$1${salt12}${hash}$"), "malformed"),
            (format!("carol:$8$1${salt12}${hash}"), "not a $7$"),
            ("carol:$argon2id$v=19$m=47104,t=1,p=1$c2FsdA$aGFzaA".into(), "not a $7$"),
            ("carol:plaintext".into(), "not a $7$"),
            (format!("carol:$7$1$!!!!!!!!!!!!!!!!${hash}"), "not valid base64"),
            (format!("al\0ice:{field}"), "NUL"),
            (format!("{good}\n{good}"), "more than once"),
        ];
        for (text, needle) in cases {
            let err = parse_passwd(&text).expect_err(&text);
            assert!(err.message.contains(needle), "{text:?}: {err}");
        }
        assert_eq!(parse_passwd(&format!("# x\n{good}\nbroken\n")).unwrap_err().line, 3);
    }

    #[test]
    fn parse_fingerprints_is_strict() {
        let fp = fingerprint(KEY, "x");
        let map = parse_fingerprints(&format!("alice:{fp}\nbob:{fp}\n")).unwrap();
        assert_eq!(map.len(), 2);
        for bad in [
            format!("alice {fp}\n"),
            format!("alice:{fp}\nalice:{fp}\n"),
            format!("al ice:{fp}\n"),
            "alice:short\n".to_string(),
            format!("\nalice:{fp}\n"),
        ] {
            assert!(parse_fingerprints(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn line_splitting_matches_fgets() {
        let got: Vec<(usize, &str)> = lines("a\nb").collect();
        assert_eq!(got, [(1, "a"), (2, "b")]);
        assert_eq!(lines("a\n").count(), 1);
        assert_eq!(lines("\n").collect::<Vec<_>>(), [(1, "")]);
        assert_eq!(lines("").count(), 0);
        assert_eq!(lines("a\rb\n").collect::<Vec<_>>(), [(1, "a\rb")], "a lone \\r does not end a line");
    }
}
