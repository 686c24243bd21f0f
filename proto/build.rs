//! Compiles `skiff/v1/*.proto` with protox (pure Rust: no `protoc` on the machine) and
//! generates prost messages, tonic clients and servers,
//! and serde impls in proto3's JSON mapping (pbjson).

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "skiff/v1/objects.proto",
    "skiff/v1/store.proto",
    "skiff/v1/cluster.proto",
    "skiff/v1/dispatcher.proto",
    "skiff/v1/raft.proto",
    "skiff/v1/agent.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    for proto in PROTOS {
        // compile_fds does not emit these itself.
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let fds = protox::compile(PROTOS, [&root])?;
    // Canonical proto3 JSON (enum names, camelCase) for `skiffctl --output json` and
    // `inspect`: pbjson generates serde impls from the same descriptors.
    let descriptors = prost::Message::encode_to_vec(&fds);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .build(&[".skiff.v1"])?;
    Ok(())
}
