//! Pure PKI on rcgen: per-broker CA, server and client certificates, CRLs, rotation decisions.
