//! The engine crate stays sans-IO: no I/O or runtime crate among its dependencies, and no clock,
//! socket, file or thread in its source. A change that breaks this fails here, not in review.

use std::path::Path;

/// Crates that do I/O, run tasks or talk gRPC: the drivers' business, in `media-plane`.
const FORBIDDEN_CRATES: &[&str] = &[
    "tokio",
    "mio",
    "socket2",
    "libc",
    "nix",
    "tonic",
    "prost",
    "proto",
    "crossbeam-channel",
    "core_affinity",
    "xdp",
    "ebpf",
    "libbpf-rs",
    "tracing-subscriber",
    "hyper",
];

/// Calls that read the clock or touch the outside world. The virtual-time harness takes one
/// real `Instant` as its epoch (std offers no other way to make one) and is allowed that.
const FORBIDDEN_CALLS: &[&str] =
    &["Instant::now", "SystemTime::now", "UdpSocket", "TcpStream", "TcpListener", "std::fs::", "thread::spawn", "thread::sleep"];

fn dependency_names(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_deps = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps {
            if let Some((name, _)) = line.split_once(['=', '.']) {
                if !name.trim().is_empty() && !name.trim().starts_with('#') {
                    names.push(name.trim().to_owned());
                }
            }
        }
    }
    names
}

#[test]
fn engine_crate_depends_on_no_io_runtime_or_grpc_crate() {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).expect("read Cargo.toml");
    let deps = dependency_names(&manifest);
    assert!(deps.contains(&"thiserror".to_owned()), "manifest not understood: {deps:?}");
    for dep in &deps {
        assert!(!FORBIDDEN_CRATES.contains(&dep.as_str()), "media-engine depends on {dep}, an I/O or runtime crate");
    }
}

#[test]
fn engine_source_reads_no_clock_and_touches_no_socket_file_or_thread() {
    let mut offenders = Vec::new();
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                for call in FORBIDDEN_CALLS {
                    let harness_epoch = *call == "Instant::now" && path.ends_with("harness.rs");
                    if code.contains(call) && !harness_epoch {
                        offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(offenders.is_empty(), "I/O or clock in the sans-IO engine:\n{}", offenders.join("\n"));
}
