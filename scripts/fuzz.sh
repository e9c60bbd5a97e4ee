#!/usr/bin/env bash
# Bounded fuzz runs of every fuzz target (cargo-fuzz, libFuzzer with AddressSanitizer): each
# target runs FUZZ_SECONDS (default 20) from its corpus, if any, and fails the script on a crash,
# a panic or a sanitizer report (the reproducer is left in <crate>/fuzz/artifacts/). Called by
# scripts/test.sh; alone: `bash scripts/fuzz.sh`, or `FUZZ_SECONDS=600 bash scripts/fuzz.sh ng_request`.
#
# Stable Rust with RUSTC_BOOTSTRAP=1 stands in for nightly (cargo-fuzz needs -Zsanitizer). The
# fuzz builds share one target directory, target/fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$PWD/target/fuzz"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --version 0.13.2 >/dev/null
fi
only=("$@")
ran=0
for crate in ng-protocol media-engine control-plane; do
  # A crate whose targets cannot be listed fails the run (not a silent skip).
  targets=$(cd "$crate" && cargo fuzz list)
  [ -n "$targets" ] || { echo "fuzz: $crate has no fuzz targets" >&2; exit 1; }
  for target in $targets; do
    if [ ${#only[@]} -gt 0 ] && [[ ! " ${only[*]} " == *" $target "* ]]; then continue; fi
    echo "fuzz: $crate/$target for ${FUZZ_SECONDS}s" >&2
    # A fixed seed (the same run twice explores the same way); -rss_limit_mb bounds memory;
    # -max_len keeps inputs near datagram size. The last 40 lines show a finding's report.
    (cd "$crate" && cargo fuzz run -O --debug-assertions "$target" -- -seed=1 \
      -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 2>&1 | tail -n 40) || {
      echo "fuzz: $crate/$target FAILED (reproducer in $crate/fuzz/artifacts/$target/)" >&2
      exit 1
    }
    ran=$((ran + 1))
  done
done
[ "$ran" -gt 0 ] || { echo "fuzz: no target named ${only[*]}" >&2; exit 1; }
echo "fuzz: $ran targets ran ${FUZZ_SECONDS}s each without a finding" >&2
