//! `control-plane`: the SIP server (registrar with digest auth, B2BUA) that anchors every call's
//! media in a media plane through the `media.v1` gRPC API.
//!
//! Not built yet: this binary only says so and exits non-zero, so nothing mistakes it for a
//! working SIP server. The design it will follow is in ARCHITECTURE.md ("Control plane").
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    eprintln!("control-plane: the SIP control plane is not implemented in this release");
    std::process::ExitCode::from(2)
}
