//! Compiles `proto/media/v1/media.proto` and `proto/control/v1/control.proto` with protoc
//! (Debian's `protobuf-compiler`, or `$PROTOC`) and writes the file descriptor sets used by gRPC
//! server reflection.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("media_v1_descriptor.bin"))
        .compile_protos(&["proto/media/v1/media.proto"], &["proto"])?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("control_v1_descriptor.bin"))
        .compile_protos(&["proto/control/v1/control.proto"], &["proto"])?;
    Ok(())
}
