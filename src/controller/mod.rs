//! Controllers: the I/O shell around the pure core (dereference, validate, build, apply, status).
