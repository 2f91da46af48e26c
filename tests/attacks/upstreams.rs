//! Attacks on upstreams: see docs/security.md.
