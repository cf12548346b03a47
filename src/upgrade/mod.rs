//! Security-patch catalog, maintenance windows and the health-gated rollout state machine.
//!
//! Pure: nothing here touches the network or reads the clock (the current time is always a
//! parameter), and there is no mutable global state (the built-in catalog is parsed once into
//! an immutable value).
//!
//! - [`catalog`]: upstream Mosquitto releases and the vulnerabilities each fixes
//!   (`catalog/mosquitto.yaml`, compiled in, overridable at run time); known CVEs of a version
//!   and the AutoPatch target.
//! - [`window`]: cron-based maintenance windows in IANA time zones.
//! - [`machine`]: the one-pod-at-a-time StatefulSet rollout with health gating and rollback.

pub mod catalog;
pub mod machine;
pub mod version;
pub mod window;

pub use catalog::{Catalog, CatalogError, Cve, CveSeverity};
pub use machine::{Applied, Phase, PodView, RolloutInput, RolloutState, RolloutStep, Transition, latest_state, step};
pub use version::{MosquittoVersion, VersionError};
pub use window::{Window, current_close, is_open, next_open, parse_windows};
