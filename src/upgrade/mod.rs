//! Security-patch catalog, maintenance windows and the health-gated rollout state machine.
