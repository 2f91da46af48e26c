//! Attacks on transport: see docs/security.md.
