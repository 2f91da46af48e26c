//! The attack suite: each file drives one class of attack against a real server on
//! 127.0.0.1 from outside (gRPC and HTTP) and asserts what the attacker gets: the
//! status code and message, and that the server is still up and lost nothing.
//! `docs/security.md` has the threat table that points at each test here.

mod support;

mod extraction;
mod identity;
mod ingestion;
mod limits;
mod transport;
mod upstreams;
