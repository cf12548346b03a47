//! Pure renderers: every file and Kubernetes object moat produces, deterministic and testable.

pub mod acl;
pub mod passwd;
