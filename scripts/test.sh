#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test of the workspace
# (unit, virtual-time engine, integration tests against the real binary, the Python gRPC client).
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP_PYTHON_GRPC=1 source scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# The Python external-client test must run here, not skip.
export REQUIRE_PYTHON_GRPC=1
cargo test --workspace --locked "$@"
