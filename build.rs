//! Compiles `proto/logdrain.proto` into Rust with tonic/prost.
//!
//! `protoc` comes from the vendored `protoc-bin-vendored` crate, so no system
//! protobuf compiler is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/logdrain.proto");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    config.bytes([".logdrain.v1.Line.data"]);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/logdrain.proto"],
        &["proto"],
    )?;
    Ok(())
}
