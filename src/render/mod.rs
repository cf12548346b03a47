//! Pure renderers: every file and Kubernetes object moat produces, deterministic and testable.

pub mod acl;
pub mod bundle;
pub mod config;
pub mod network;
pub mod passwd;
pub mod shard;
pub mod workload;

/// Directory in the broker pod where `moat agent` installs the files Mosquitto reads (emptyDir).
pub const RUN_DIR: &str = "/moat/run";
/// Directory in the broker pod where the Secret volumes are mounted (read by the agent only).
pub const SECRETS_DIR: &str = "/moat/secrets";
/// Mosquitto's log directory in a pod (an emptyDir shared with `moat agent`).
pub const LOG_DIR: &str = "/moat/log";
/// Mosquitto's log file in a pod.
pub const LOG_FILE: &str = "/moat/log/mosquitto.log";
/// Persistence directory in a pod.
pub const DATA_DIR: &str = "/mosquitto/data";
