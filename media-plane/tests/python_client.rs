//! The media plane as a generic gRPC server: a Python client (grpcio), written only from the
//! `.proto` file and server reflection, drives the real binary (`tests/python/external_client.py`).
//!
//! Skipped, with a message, when Python lacks `grpc`, `grpc_tools` or `grpc_reflection`
//! (`pip install grpcio grpcio-tools grpcio-reflection`), unless `REQUIRE_PYTHON_GRPC=1`, which
//! turns the skip into a failure (for CI machines that install them).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SLOT_PYTHON: u16 = 20;
/// Stub generation takes about a second; the whole script normally well under five.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

fn python_has_grpc() -> Result<(), String> {
    let out = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools, grpc_reflection"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        // The last line of the traceback says which module is missing.
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(stderr.lines().last().unwrap_or("import failed").trim().to_string())
    }
}

#[tokio::test]
async fn python_grpc_client_relays_rtp_and_sees_the_service_over_reflection() {
    if let Err(why) = python_has_grpc() {
        let required = std::env::var("REQUIRE_PYTHON_GRPC").is_ok_and(|v| v == "1");
        assert!(!required, "REQUIRE_PYTHON_GRPC=1 but Python gRPC is unavailable: {why}");
        eprintln!(
            "SKIPPED python_grpc_client_relays_rtp_and_sees_the_service_over_reflection: \
             python3 cannot import grpc, grpc_tools and grpc_reflection ({why}); \
             install them with `pip install grpcio grpcio-tools grpcio-reflection`, \
             or set REQUIRE_PYTHON_GRPC=1 to make this a failure"
        );
        return;
    }
    let (mut mp, _client) = MediaPlane::start(SLOT_PYTHON).await;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("tests/python/external_client.py");
    let out_path = temp_path("python.out");
    let out = std::fs::File::create(&out_path).expect("create the script's output file");
    let err = out.try_clone().expect("clone file handle");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(mp.grpc.to_string())
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn python3");
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for python3") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    match status {
        Some(s) if s.success() => eprintln!("{}", output.trim()),
        Some(s) => panic!("{} failed ({s}):\n{output}", script.display()),
        None => panic!("{} still running after {SCRIPT_TIMEOUT:?}, killed:\n{output}", script.display()),
    }
    mp.assert_running();
}
