//! Compiles `src/bpf/media_steer.bpf.c` with clang (`-target bpf`, through libbpf-cargo) and writes
//! the object's Rust skeleton to `$OUT_DIR/media_steer.skel.rs`, which `src/lib.rs` includes.
//!
//! Headers: the UAPI ones (`<linux/bpf.h>`, …) come from Debian's `linux-libc-dev`; `<asm/types.h>`
//! lives in its multiarch directory, which clang does not search for `-target bpf`, so it is added
//! here. `<bpf/bpf_helpers.h>` comes from the libbpf that libbpf-cargo vendors (matching the libbpf
//! the skeleton is loaded with). `CLANG` overrides the compiler (default: `clang` on `PATH`).

use std::env;
use std::path::{Path, PathBuf};

use libbpf_cargo::SkeletonBuilder;

const SOURCE: &str = "src/bpf/media_steer.bpf.c";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=CLANG");

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var_os("CLANG").unwrap_or_else(|| "clang".into());

    let mut args = vec!["-Wall".to_owned(), "-Werror".to_owned(), "-O2".to_owned(), "-g".to_owned()];
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_owned());
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    if Path::new(&multiarch).is_dir() {
        args.push(format!("-I{multiarch}"));
    }

    if let Err(err) =
        SkeletonBuilder::new().source(SOURCE).clang(&clang).clang_args(&args).build_and_generate(out.join("media_steer.skel.rs"))
    {
        // The chain names clang's own diagnostics; a missing clang or header is the usual cause.
        panic!(
            "building the XDP program {SOURCE} failed (needs clang and linux-libc-dev; \
             `bash scripts/setup.sh` installs them): {err:#}"
        );
    }
}
