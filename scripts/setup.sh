#!/usr/bin/env bash
# Installs what building and testing need on Debian 12: protoc (gRPC code generation), a C toolchain,
# clang and libelf for the XDP program, ip/ethtool/ping for its netns tests,
# sipp for the SIP tests, baresip for the phone tests (SETUP_PHONES=1), Kamailio as an edge proxy
# (SETUP_SIP_PEERS=1), Chromium for the web page test (SETUP_BROWSER=1), FreeRADIUS for accounting (SETUP_RADIUS=1), PostgreSQL (SETUP_POSTGRES=1), Python gRPC packages for the external-client test, Rust (rustup) if cargo is missing,
# rustfmt and clippy for the test command's gates (SETUP_RUST_LINT=1), and cargo-deb, adduser and
# systemd-analyze for the Debian packages (SETUP_PACKAGING=1, scripts/package.sh and test-packages.sh).
set -euo pipefail

need_apt=()
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
command -v cc >/dev/null || need_apt+=(build-essential)
# The fuzz targets' libFuzzer (libfuzzer-sys) is C++.
command -v c++ >/dev/null || need_apt+=(g++)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
# ebpf/: clang compiles the XDP program (-target bpf) against the kernel's UAPI headers; libbpf-sys
# builds its vendored libbpf with make and links libelf and zlib. (<bpf/bpf_helpers.h> comes with
# the vendored libbpf, so libbpf-dev is not needed.)
command -v clang >/dev/null || need_apt+=(clang)
command -v make >/dev/null || need_apt+=(make)
[ -e /usr/include/linux/bpf.h ] || need_apt+=(linux-libc-dev)
[ -e /usr/include/libelf.h ] || need_apt+=(libelf-dev)
[ -e /usr/include/zlib.h ] || need_apt+=(zlib1g-dev)
# media-codecs links the system's libopus (the Opus codec).
[ -e /usr/include/opus/opus.h ] || need_apt+=(libopus-dev)
# media-engine's SRTP is libsrtp2 (with its OpenSSL-backed AES-GCM); bindgen reads its headers.
[ -e /usr/include/srtp2/srtp.h ] || need_apt+=(libsrtp2-dev)
[ -e /usr/include/openssl/ssl.h ] || need_apt+=(libssl-dev)
# G.729 (the g729 cargo feature, tested by scripts/test.sh) links Debian's bcg729.
[ -e /usr/include/bcg729/encoder.h ] || need_apt+=(libbcg729-dev)
# XDP tests (root): scripts/netns.sh needs ip and ethtool; the tests run ping and setpriv.
command -v ip >/dev/null || need_apt+=(iproute2)
command -v ethtool >/dev/null || need_apt+=(ethtool)
command -v ping >/dev/null || need_apt+=(iputils-ping)
command -v setpriv >/dev/null || need_apt+=(util-linux)
# The NAT test of the control plane (root) masquerades in a namespace with nftables.
command -v nft >/dev/null || need_apt+=(nftables)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
command -v curl >/dev/null || need_apt+=(curl ca-certificates)
# The SIP-over-TLS tests make their certificates with openssl.
command -v openssl >/dev/null || need_apt+=(openssl)
# control-plane integration tests drive the SIP server with sipp (Debian's sip-tester, built with
# RTP streaming).
command -v sipp >/dev/null || need_apt+=(sip-tester)
# The phone tests (control-plane/tests/phones.rs) call through both planes with baresip; its core
# package has the modules they use (g711, ausine, aubridge, sndfile, ctrl_tcp) without a desktop.
if [ "${SETUP_PHONES:-0}" = 1 ]; then
  command -v baresip >/dev/null || need_apt+=(baresip-core)
fi
# The edge-proxy test (control-plane/tests/sip.rs) puts Kamailio in front of the registrar
# (SETUP_SIP_PEERS=1).
if [ "${SETUP_SIP_PEERS:-0}" = 1 ]; then
  command -v kamailio >/dev/null || need_apt+=(kamailio)
fi
# The PostgreSQL store is tested against a PostgreSQL the test starts (SETUP_POSTGRES=1).
if [ "${SETUP_POSTGRES:-0}" = 1 ]; then
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
fi
# RADIUS accounting is tested against FreeRADIUS (SETUP_RADIUS=1).
if [ "${SETUP_RADIUS:-0}" = 1 ]; then
  command -v freeradius >/dev/null || need_apt+=(freeradius)
fi
# The callback web page is tested in headless Chromium (SETUP_BROWSER=1).
if [ "${SETUP_BROWSER:-0}" = 1 ]; then
  command -v chromium >/dev/null || need_apt+=(chromium)
fi
# The Debian packages (scripts/package.sh, scripts/test-packages.sh): cargo-deb computes Depends
# with dpkg-shlibdeps (dpkg-dev), the packages' postinst creates users with adduser, and the
# test checks the units with systemd-analyze (package systemd; no running systemd needed).
if [ "${SETUP_PACKAGING:-0}" = 1 ]; then
  command -v dpkg-shlibdeps >/dev/null || need_apt+=(dpkg-dev)
  [ -x /usr/sbin/adduser ] || need_apt+=(adduser)
  command -v systemd-analyze >/dev/null || need_apt+=(systemd)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The player's prompts and music on hold (prompts/), rendered with espeak-ng and sox.
if [ "${SETUP_PROMPTS:-0}" = 1 ] && [ ! -e prompts/music-on-hold.wav ]; then
  bash scripts/make-prompts.sh prompts
fi

if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: installing Rust with rustup"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

if [ "${SETUP_RUST_LINT:-0}" = 1 ] && command -v rustup >/dev/null; then
  # The test command's gates: rustfmt and clippy (a minimal rustup profile has neither).
  rustup component add rustfmt clippy >/dev/null 2>&1 || echo "setup: rustup could not add rustfmt and clippy"
fi

if [ "${SETUP_PYTHON_GRPC:-0}" = 1 ]; then
  if ! python3 -c 'import grpc, grpc_tools, grpc_reflection' 2>/dev/null; then
    echo "setup: pip install grpcio grpcio-tools grpcio-reflection"
    python3 -m pip install -q grpcio grpcio-tools grpcio-reflection 2>/dev/null \
      || python3 -m pip install -q --break-system-packages grpcio grpcio-tools grpcio-reflection
  fi
fi

if [ "${SETUP_PACKAGING:-0}" = 1 ] && ! cargo deb --version >/dev/null 2>&1; then
  # cargo-deb 3.8.0 (Rust 1.85 or later; about 100 s of CPU to install). Pinned: scripts/package.sh
  # --no-build packages the dev-profile test binaries, which cargo-deb says a later version may
  # refuse.
  echo "setup: cargo install cargo-deb"
  cargo install --locked --quiet cargo-deb --version 3.8.0
fi
