//! The edges: the gRPC adapter (proto <-> domain conversion, one error mapping, the
//! server) and the OpenAI-compatible HTTP facade ([`openai`]). Nothing below this
//! module sees tonic, axum or generated types.

mod admin;
mod browser_guard;
mod connection;
mod convert;
mod documents;
mod event_stream;
mod facade_threads;
mod generation;
mod http_answer;
mod http_documents;
mod http_search;
mod in_process;
mod ingestion;
pub mod openai;
mod openai_wire;
pub mod openapi;
pub mod redact;
mod retrieval;
mod server;
mod telemetry;
mod tls;
#[cfg(test)]
mod transport_tests;

pub use http_search::filter_from_json;
pub use in_process::serve_in_process;
pub use server::{Listeners, serve};

/// Generated types and clients for `skyfuse.v1`.
// Generated code: the streamed `Answer` event carries the final summary inline, which is
// what prost emits for a oneof; boxing it would leak into every client.
#[expect(clippy::large_enum_variant)]
pub mod proto {
    tonic::include_proto!("skyfuse.v1");

    /// Descriptor set for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/skyfuse_descriptor.bin"));
}
