#!/usr/bin/env bash
# The README's "shortest path" (backend, gateway, peripheral as separate
# processes on one machine), run verbatim except for waits and a short
# telemetry interval, so the README cannot drift from the binaries.
# Uses the binaries under $CARGO_TARGET_DIR/${PROFILE:-debug}.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-target}/${PROFILE:-debug}"
B=$BIN/vouch-backend; G=$BIN/vouch-gateway; P=$BIN/vouch-peripheral
W=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
fail() { echo "quickstart FAILED: $*"; echo "--- backend log"; tail -20 "$W/b.log" || true; echo "--- gateway log"; tail -20 "$W/g.log" || true; echo "0 passed, 1 failed"; exit 1; }
wait_for() { # what, command...
    local what=$1; shift
    for _ in $(seq 1 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    fail "timed out waiting for $what"
}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BP=$(port); GP=$(port)

$B --data-dir "$W/vb" init > "$W/init.txt"
$B --data-dir "$W/vb" serve --listen "127.0.0.1:$BP" > "$W/b.log" 2>&1 & pids+=($!)
wait_for "the backend" grep -q "listening on" "$W/b.log"
$G init --key "$W/vg/identity.pem" > "$W/g-init.txt"
KEY=$(awk '/^public key:/ {print $3}' "$W/g-init.txt")
$B --data-dir "$W/vb" enroll gateway --public-key "$KEY" --site lab --out "$W/vg/client.pem"
cp "$W/vb/ca.pem" "$W/vg/ca.pem"
$G example-config | sed -e "s|/var/lib/vouch-gateway|$W/vg|; s|/etc/vouch/backend-ca.pem|$W/vg/ca.pem|" \
   -e "s|https://backend.example.net:8443|https://127.0.0.1:$BP|; s|/run/vouch-gateway|$W/vg|; s|127.0.0.1:7800|127.0.0.1:$GP|" > "$W/vg/gateway.toml"
$G run --config "$W/vg/gateway.toml" > "$W/g.log" 2>&1 & pids+=($!)
wait_for "the gateway" grep -q "TCP transport listening" "$W/g.log"
$P keygen --dir "$W/vp" --group meters > "$W/row.ndjson"
$B --data-dir "$W/vb" import "$W/row.ndjson"
$B --data-dir "$W/vb" associate --peripheral group:meters --gateway site:lab --scope telemetry,command,app8 > /dev/null
$B --data-dir "$W/vb" export-anchor --out "$W/anchor.json"
$P provision --dir "$W/vp" --anchor "$W/anchor.json"
timeout 60 $P run --dir "$W/vp" --connect "tcp://127.0.0.1:$GP" --count 3 --interval 1 > "$W/p.out" 2> "$W/p.log" \
    || fail "the peripheral did not send its telemetry: $(tail -5 "$W/p.log")"
[ "$(grep -c '^sent ' "$W/p.out")" = 3 ] || fail "expected 3 telemetry lines"
grep -q "handshake ok (full" "$W/p.log" || fail "no full handshake in the peripheral's log"
grep -q "session established" "$W/g.log" || fail "no session in the gateway's log"
$G status --config "$W/vg/gateway.toml" > "$W/status.txt"
grep -qE '^handshakes: .*\bok 1\b' "$W/status.txt" || fail "gateway status does not count the handshake"
grep -q '^client certificate valid until ' "$W/status.txt" || fail "gateway status does not show the certificate's expiry"
grep -q 'client certificate valid' "$W/g.log" || fail "the gateway did not check its certificate at start"
$B --data-dir "$W/vb" list gateway --json | python3 -c 'import json,sys; assert json.load(sys.stdin)["items"][0]["certificate_expires_ms"] > 0' \
    || fail "the gateway list does not show the certificate's expiry"
echo "quickstart: backend, gateway and peripheral authenticated and exchanged telemetry"
echo "1 passed, 0 failed"
