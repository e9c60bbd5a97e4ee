#!/usr/bin/env bash
# Builds the Debian packages of both planes into target/debian/ with cargo-deb (metadata:
# [package.metadata.deb] in media-plane/Cargo.toml and control-plane/Cargo.toml; units, configs
# and maintainer scripts: packaging/):
#   media-plane_VERSION-1_ARCH.deb    /usr/bin/media-plane, media-plane.service, the prompts,
#                                     /etc/media-plane/media-plane.toml
#   control-plane_VERSION-1_ARCH.deb  /usr/bin/control-plane, control-plane.service,
#                                     /etc/control-plane/control-plane.toml
#
#   bash scripts/package.sh               release build (as an operator ships it), then package
#   bash scripts/package.sh --no-build    package the binaries already in target/debug (the test
#                                         build; stripped), without compiling anything
#   OUT=dir bash scripts/package.sh       write the .deb files to dir instead of target/debian
#
# Needs cargo-deb (`SETUP_PACKAGING=1 source scripts/setup.sh` installs it). Progress goes to
# stderr; the paths of the two .deb files are printed on stdout, one a line.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

build=1
case "${1:-}" in
  "") ;;
  --no-build) build=0 ;;
  -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
  *) echo "package: unknown argument $1 (--no-build or nothing)" >&2; exit 2 ;;
esac
out=${OUT:-target/debian}
mkdir -p "$out"

if ! cargo deb --version >/dev/null 2>&1; then
  echo "package: cargo-deb is missing: SETUP_PACKAGING=1 source scripts/setup.sh (or cargo install cargo-deb --locked)" >&2
  exit 1
fi

args=()
if [ "$build" = 1 ]; then
  # One release build of both binaries (cargo-deb would otherwise build each package's crate
  # on its own), then packaging only.
  echo "package: cargo build --release -p media-plane -p control-plane" >&2
  cargo build --release --locked -p media-plane -p control-plane --bins >&2
  args+=(--no-build)
else
  for bin in media-plane control-plane; do
    [ -x "target/debug/$bin" ] || { echo "package: target/debug/$bin is missing (build it first, e.g. cargo test or cargo build -p $bin)" >&2; exit 1; }
  done
  # The dev-profile binaries as they are: cargo-deb maps its target/release/ asset paths to
  # target/debug/ under --profile dev (it warns that dev packages are for testing only). They
  # are stripped (--strip) so that the packages stay small (their debug info is ~90% of their
  # size) and compressed fast. -q: without the warning about the dev profile.
  args+=(--no-build --profile dev --strip --fast -q)
fi

debs=()
for pkg in media-plane control-plane; do
  echo "package: cargo deb -p $pkg ${args[*]}" >&2
  # cargo-deb prints the path of the .deb it wrote as its last line of stdout, warnings on stderr.
  deb=$(cargo deb -p "$pkg" "${args[@]}" -o "$out" | tail -n 1)
  [ -f "$deb" ] || { echo "package: cargo deb -p $pkg wrote no package (got: $deb)" >&2; exit 1; }
  echo "package: $deb ($(du -h "$deb" | cut -f1))" >&2
  debs+=("$deb")
  # cargo-deb leaves its stripped copies of the binaries in target/CRATE/.
  rm -f "target/$pkg/"*.stripped-*.tmp
  rmdir "target/$pkg" 2>/dev/null || true
done
printf '%s\n' "${debs[@]}"
