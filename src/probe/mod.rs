//! Active TLS/MQTT probe of a broker endpoint (used by compliance and `moat probe`).
