//! `moat agent`: the in-pod helper that validates, assembles and installs broker files, then SIGHUPs Mosquitto.
