//! Attacks on ingestion: see docs/security.md.
