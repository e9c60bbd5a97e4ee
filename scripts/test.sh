#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test of the workspace
# (unit, virtual-time engine and SIP transactions, integration tests against the real binaries,
# sipp calls and baresip phones through control plane and media plane, a Kamailio edge proxy in
# front of the registrar, the Python gRPC client).
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP_PACKAGING=1 SETUP_PYTHON_GRPC=1 SETUP_PHONES=1 SETUP_SIP_PEERS=1 SETUP_PROMPTS=1 SETUP_RUST_LINT=1 SETUP_BROWSER=1 SETUP_RADIUS=1 SETUP_POSTGRES=1 source scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# Gate: the code is formatted (rustfmt.toml) before anything is built.
cargo fmt --all --check
# The Python external-client test must run here, not skip.
export REQUIRE_PYTHON_GRPC=1
# So must the sipp registration and call tests of the control plane.
export REQUIRE_SIPP=1
# And the baresip phones calling through both planes.
export REQUIRE_BARESIP=1
# And Kamailio as the edge proxy in front of the registrar.
export REQUIRE_KAMAILIO=1
# And the shipped prompts through the player.
export REQUIRE_PROMPTS=1
# And the callback web page in headless Chromium.
export REQUIRE_BROWSER=1
# And RADIUS accounting to FreeRADIUS.
export REQUIRE_RADIUS=1
# And the PostgreSQL store against a real PostgreSQL.
export REQUIRE_POSTGRES=1
# As root (CI), the XDP/AF_XDP relay and NAT tests (network namespaces) must run, not skip.
if [ "$(id -u)" -eq 0 ]; then export REQUIRE_ROOT=1; fi
cargo test --workspace --locked "$@"
# The Debian packages of both planes, from the binaries the tests built: contents, conffiles,
# dpkg -i, users, systemd-analyze verify and security, a start as the service users with the
# units' capabilities, dpkg --purge (root only; required as root).
bash scripts/test-packages.sh
# G.729 (bcg729, GPL) is a cargo feature, off by default: its codec and transcoding tests run
# in a second, small build of the two crates that have it.
cargo test --locked -p media-codecs -p media-engine --features media-engine/g729 --lib "$@"
# Gate: no clippy warning in the workspace and its tests.
cargo clippy --workspace --tests --locked -- -D warnings
# Gate: every fuzz target runs 20 s (libFuzzer with AddressSanitizer) without a finding.
FUZZ_SECONDS=${FUZZ_SECONDS:-20} bash scripts/fuzz.sh
