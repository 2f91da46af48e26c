//! Attacks on limits: see docs/security.md.
