//! moat: a Kubernetes operator for hardened Eclipse Mosquitto brokers.
//!
//! The crate is split into a pure core (`crd`, `validate`, `render`, `pki`, `compliance`,
//! `upgrade`) that never touches the network or the clock, and thin I/O shells (`controller`,
//! `agent`, `probe`) around it.
#![forbid(unsafe_code)]

pub mod agent;
#[cfg(test)]
mod architecture;
pub mod cmd;
pub mod compliance;
pub mod controller;
pub mod crd;
#[cfg(test)]
mod fuzz;
pub mod metrics;
pub mod model;
pub mod names;
pub mod pki;
pub mod plan;
pub mod probe;
pub mod render;
pub mod telemetry;
pub mod upgrade;
pub mod validate;

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// SHA-256 (hex, 16 chars) of a value's JSON: a short, stable fingerprint (not a secret's hash:
/// never used on secret values).
pub(crate) fn digest_of<T: serde::Serialize>(value: &T) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(value).unwrap_or_default();
    hex(&Sha256::digest(&json)[..8])
}
