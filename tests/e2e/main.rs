//! Broker e2e tests: moat-rendered files run by a real Mosquitto (Debian), hit by real MQTT clients.

mod acl;
mod agent;
mod hardening;
mod harness;
mod pki;
mod probe;
mod redteam;
mod users;
