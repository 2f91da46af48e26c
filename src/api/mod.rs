//! The gRPC adapter: proto <-> domain conversion, one error mapping, the server.
//! Nothing below this module sees tonic or generated types.

mod admin;
mod convert;
mod generation;
mod ingestion;
mod retrieval;
mod server;

pub use server::{ServeOptions, serve};

/// Generated types and clients for `skyfuse.v1`.
pub mod proto {
    tonic::include_proto!("skyfuse.v1");

    /// Descriptor set for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/skyfuse_descriptor.bin"));
}
