//! Mosquitto password file: `$7$` PBKDF2-SHA512 lines, fingerprints, sharding.
