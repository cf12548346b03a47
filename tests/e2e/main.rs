//! Broker e2e tests: moat-rendered files run by a real Mosquitto, hit by real MQTT clients.
