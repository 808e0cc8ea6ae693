#!/usr/bin/env bash
# Instructions the peripheral executes per full handshake and per resumption,
# counted exactly by callgrind (issue 8): a deterministic figure where wall
# time on a shared machine is noisy. The host build (release, x86_64 or
# whatever this machine is, vouch-proto with its default `fast` feature) is
# not the Cortex-M figure: that is peripheral/firmware/run.sh.
#
#   simulator/bench/callgrind.sh
#
# The example `callgrind_peripheral` records the gateway's and the backend's
# answers first, then replays only the peripheral with the same fixed
# secrets inside `vouch_peripheral_full` / `vouch_peripheral_resume`; the
# count covers those functions and everything they call, nothing else.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v valgrind >/dev/null; then
    echo "valgrind is not installed (apt-get install valgrind)" >&2
    exit 1
fi
cargo build --release -q -p vouch-simulator --example callgrind_peripheral
bin="${CARGO_TARGET_DIR:-$PWD/target}/release/examples/callgrind_peripheral"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

count() {
    local mode=$1
    valgrind --tool=callgrind --callgrind-out-file="$out/$mode.out" \
        --toggle-collect="*vouch_peripheral_$mode*" "$bin" "$mode" >"$out/$mode.log" 2>&1 || {
        cat "$out/$mode.log" >&2
        exit 1
    }
    awk '/^(summary|totals):/ { print $2; exit }' "$out/$mode.out"
}

group() { sed -e ':a' -e 's/\B[0-9]\{3\}\>/,&/' -e 'ta' <<<"$1"; }
full=$(count full)
resume=$(count resume)
echo "peripheral full handshake: $(group "$full") instructions"
echo "peripheral resumption:     $(group "$resume") instructions"
echo "($(uname -m), release build, $(valgrind --version))"
