//! Broker e2e tests: moat-rendered files run by a real Mosquitto (Debian), hit by real MQTT clients.

mod agent;
mod hardening;
mod harness;
