#!/usr/bin/env bash
# Runs every fuzz target of vouch-proto for a fixed time each (the CI fuzz step).
#
#   proto/fuzz/run.sh [SECONDS]        # SECONDS per target, default 20
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`); set
# FUZZ_TOOLCHAIN to use another nightly than `nightly`. Starts from the
# committed seeds in fuzz/corpus/<target>/ but writes what it finds to a
# temporary directory, so the committed corpus stays as it is. A crashing
# input is kept in fuzz/artifacts/<target>/ and the log tail is printed.
# Prints one line per target; exits 1 if any target crashed or failed to run.
set -uo pipefail

secs="${1:-20}"
case "$secs" in
'' | *[!0-9]*)
	echo "usage: $0 [seconds per target]" >&2
	exit 2
	;;
esac
toolchain="+${FUZZ_TOOLCHAIN:-nightly}"

cd "$(dirname "$0")/.." || exit 1 # proto/: cargo fuzz finds fuzz/ from here

if ! cargo "$toolchain" fuzz build >/dev/null; then
	echo "fuzz build failed" >&2
	exit 1
fi
mapfile -t targets < <(cargo "$toolchain" fuzz list)
if [ "${#targets[@]}" -eq 0 ]; then
	echo "no fuzz targets found" >&2
	exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

failed=0
for t in "${targets[@]}"; do
	mkdir -p "$work/corpus/$t"
	log="$work/$t.log"
	start=$(date +%s)
	cargo "$toolchain" fuzz run "$t" "$work/corpus/$t" "fuzz/corpus/$t" -- \
		-max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$log" 2>&1
	rc=$?
	took=$(($(date +%s) - start))
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
	cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
	if [ "$rc" -eq 0 ]; then
		printf 'ok     %-22s %3ss  %9s runs  %s\n' "$t" "$took" "${runs:-?}" "${cov:-}"
	else
		artifact=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -n 1 | sed 's/Test unit written to //')
		printf 'FAILED %-22s %3ss  exit %s  %s\n' "$t" "$took" "$rc" "${artifact:-no artifact}"
		# The panic message, then libFuzzer's summary and cargo-fuzz's
		# reproduction hints (the full log holds the stack trace).
		grep -A 2 'panicked at' "$log" | head -n 12 | sed 's/^/    /'
		sed -n '/^SUMMARY:/,$p' "$log" | head -n 40 | sed 's/^/    /'
		cp "$log" "fuzz/artifacts/$t.log" 2>/dev/null &&
			echo "    full log: fuzz/artifacts/$t.log"
		failed=1
	fi
done
exit "$failed"
