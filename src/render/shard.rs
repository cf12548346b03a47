//! Splitting a generated text over several Secrets (a Secret holds at most 1 MiB) and joining it
//! back, for files made of independent keyed blocks: the ACL file (one block per user, one for the
//! patterns) and the certificate ledger (one block per record).
//!
//! A block goes to part [`super::passwd::shard_index`]`(key, n)`, so adding a block changes one
//! part while the count stays the same; blocks within a part are sorted by key. Every part carries
//! the same manifest `"<n> <sha256 hex of all parts concatenated in order>"`, so a reader (the
//! agent) can refuse a half-propagated update (some Secrets new, some old).

use sha2::{Digest, Sha256};

use super::passwd::shard_index;

/// Bytes one part may hold (half of a Secret: room for the other keys and for growth).
pub const PART_MAX_BYTES: usize = 512 * 1024;

/// One part: its text and the manifest shared by all parts of one split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// The blocks of this part, sorted by key, concatenated.
    pub text: String,
    /// `"<n> <sha256 hex of all parts' texts concatenated in part order>"`.
    pub manifest: String,
}

/// Why a split or a join failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// One block alone is larger than a part may be.
    #[error("the block of {key} alone is {bytes} bytes, more than a part may hold ({limit})")]
    BlockTooLarge {
        /// Key of the block (a username, an ACL name, a serial).
        key: String,
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// No part count fits (not expected with a uniform hash).
    #[error("cannot split {bytes} bytes into parts of at most {limit} bytes")]
    CannotFit {
        /// Total size.
        bytes: usize,
        /// The limit per part.
        limit: usize,
    },
    /// No part was given to join.
    #[error("no parts")]
    NoParts,
    /// A manifest is malformed or differs from the first part's (an update is propagating).
    #[error("part {0}: its manifest is malformed or differs from part 0's (an update is still propagating)")]
    Manifest(usize),
    /// The manifest announces another number of parts.
    #[error("the manifest announces {expected} parts but {found} are present")]
    Count {
        /// Announced.
        expected: usize,
        /// Present.
        found: usize,
    },
    /// The joined text does not hash to the manifest's checksum.
    #[error("the joined parts do not match the manifest's checksum")]
    Checksum,
}

/// Splits keyed blocks into the fewest parts (starting from total / 60 % of `limit`) of which
/// none exceeds `limit` bytes (manifest included). Keys must be unique; an empty input gives one
/// empty part.
pub fn split(blocks: &[(String, String)], limit: usize) -> Result<Vec<Part>, SplitError> {
    let manifest_bytes = |n: usize| n.to_string().len() + 1 + 64;
    if let Some((key, text)) = blocks.iter().find(|(_, t)| t.len() + manifest_bytes(1) > limit) {
        return Err(SplitError::BlockTooLarge { key: key.clone(), bytes: text.len(), limit });
    }
    let total: usize = blocks.iter().map(|(_, t)| t.len()).sum();
    let start = (total * 10).div_ceil(limit * 6).max(1);
    for n in start..start + 1024 {
        let mut sizes = vec![0usize; n];
        for (k, t) in blocks {
            sizes[shard_index(k, n)] += t.len();
        }
        if sizes.iter().all(|s| s + manifest_bytes(n) <= limit) {
            return Ok(build(blocks, n));
        }
    }
    Err(SplitError::CannotFit { bytes: total, limit })
}

fn build(blocks: &[(String, String)], n: usize) -> Vec<Part> {
    let mut buckets: Vec<Vec<&(String, String)>> = vec![Vec::new(); n];
    for b in blocks {
        buckets[shard_index(&b.0, n)].push(b);
    }
    let texts: Vec<String> = buckets
        .into_iter()
        .map(|mut bucket| {
            bucket.sort_by(|a, b| a.0.cmp(&b.0));
            bucket.iter().map(|(_, t)| t.as_str()).collect()
        })
        .collect();
    let mut sha = Sha256::new();
    for t in &texts {
        sha.update(t.as_bytes());
    }
    let manifest = format!("{n} {}", crate::hex(&sha.finalize()));
    texts.into_iter().map(|text| Part { text, manifest: manifest.clone() }).collect()
}

fn parse_manifest(m: &str) -> Option<(usize, &str)> {
    let (n, sum) = m.trim().split_once(' ')?;
    let n: usize = n.parse().ok().filter(|n| *n > 0)?;
    (sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some((n, sum))
}

/// Joins `(manifest, text)` of every part, in part order. Succeeds only when exactly `n` parts
/// are given, all manifests are equal and well-formed, and the concatenation matches the checksum.
pub fn join<M: AsRef<str>, T: AsRef<str>>(parts: &[(M, T)]) -> Result<String, SplitError> {
    let Some((first, _)) = parts.first() else { return Err(SplitError::NoParts) };
    let first = first.as_ref();
    let (n, sum) = parse_manifest(first).ok_or(SplitError::Manifest(0))?;
    for (i, (m, _)) in parts.iter().enumerate() {
        if m.as_ref() != first {
            return Err(SplitError::Manifest(i));
        }
    }
    if parts.len() != n {
        return Err(SplitError::Count { expected: n, found: parts.len() });
    }
    let text: String = parts.iter().map(|(_, t)| t.as_ref()).collect();
    if crate::hex(&Sha256::digest(text.as_bytes())) != sum {
        return Err(SplitError::Checksum);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(n: usize, size: usize) -> Vec<(String, String)> {
        (0..n).map(|i| (format!("user-{i}"), format!("{}\n", "x".repeat(size)))).collect()
    }

    #[test]
    fn parts_respect_the_limit_and_join_back_to_every_block() {
        let input = blocks(5000, 300);
        let parts = split(&input, 64 * 1024).unwrap();
        assert!(parts.len() > 20);
        assert!(parts.iter().all(|p| p.text.len() + p.manifest.len() <= 64 * 1024));
        let pairs: Vec<(&str, &str)> = parts.iter().map(|p| (p.manifest.as_str(), p.text.as_str())).collect();
        let joined = join(&pairs).unwrap();
        assert_eq!(joined.len(), input.iter().map(|(_, t)| t.len()).sum::<usize>());
    }

    #[test]
    fn a_half_propagated_update_is_refused() {
        let old = split(&blocks(200, 100), 8 * 1024).unwrap();
        let mut more = blocks(200, 100);
        more[3].1 = "changed\n".into();
        let new = split(&more, 8 * 1024).unwrap();
        assert_eq!(old.len(), new.len());
        let mut mixed: Vec<(&str, &str)> = new.iter().map(|p| (p.manifest.as_str(), p.text.as_str())).collect();
        let stale = old.iter().zip(&new).position(|(o, n)| o.text != n.text).unwrap();
        mixed[stale] = (new[stale].manifest.as_str(), old[stale].text.as_str());
        assert_eq!(join(&mixed), Err(SplitError::Checksum));
        mixed[stale] = (old[stale].manifest.as_str(), old[stale].text.as_str());
        assert!(matches!(join(&mixed), Err(SplitError::Manifest(_))));
        assert!(matches!(join(&mixed[..1]), Err(SplitError::Manifest(_) | SplitError::Count { .. })));
    }

    #[test]
    fn a_block_larger_than_a_part_is_named() {
        let err = split(&[("big".into(), "y".repeat(2000))], 1024).unwrap_err();
        assert!(matches!(err, SplitError::BlockTooLarge { ref key, .. } if key == "big"));
        assert_eq!(split(&[], 1024).unwrap().len(), 1);
    }
}
