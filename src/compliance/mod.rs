//! Compliance engine: the catalogue of checks per security measure.
