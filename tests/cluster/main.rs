//! Cluster tests against the local control plane (real kube-apiserver, controller-manager,
//! scheduler, kwok fake nodes, and a real kubelet node where broker pods run for real). They
//! fail, never skip, when the control plane is missing.

mod broker;
mod chart;
mod compliance;
mod controlplane;
mod crds;
// Shared helpers: not every suite uses every helper (clippy -D warnings on --all-features).
#[allow(dead_code)]
mod harness;
#[allow(dead_code)]
mod hygiene;
mod monitoring;
#[allow(dead_code)]
#[path = "../common/mqtt.rs"]
mod mqtt;
mod network;
mod pki;
mod plugin;
mod realnode;
mod reliability;
mod security;
mod upgrade;
mod users;
