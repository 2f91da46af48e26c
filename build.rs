//! Compiles the public protobuf contract with protox (pure Rust: no system protoc needed)
//! and keeps the descriptor set for gRPC server reflection.

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/skyfuse/v1/retrieval.proto",
    "proto/skyfuse/v1/generation.proto",
    "proto/skyfuse/v1/ingestion.proto",
    "proto/skyfuse/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("skyfuse_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
