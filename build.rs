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
    pack_relative_relocations();
    Ok(())
}

/// Links the binaries with packed relative relocations (DT_RELR, glibc 2.36+, GNU ld
/// 2.38+): a position-independent binary of this size carries ~2 MB of them as
/// RELA entries, which the loader reads at every start and which then stay resident.
fn pack_relative_relocations() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
