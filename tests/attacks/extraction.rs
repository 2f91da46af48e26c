//! Attacks on extraction: see docs/security.md.
