//! Attacks on identity: see docs/security.md.
