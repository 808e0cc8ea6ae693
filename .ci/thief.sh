#!/usr/bin/env bash
# A stolen backend key, end to end over real processes (SPEC.md §2.3, §7.7,
# §11.15; issue 15, item 1): the operator's key 1 is stolen; the thief runs
# its own backend (holding key 1 and a committed key 2 of its own) and a
# rogue gateway. Before the rotation reaches the device the thief can run a
# session with it (key 1 is still its anchor) but cannot get its own key
# adopted; once the operator's Rotate reached the device, the thief can
# neither complete a handshake with it nor change its anchors.
# Every party is a separate process (vouch-backend, vouch-gateway,
# vouch-peripheral) on loopback, as in .ci/quickstart.sh.
# Uses the binaries under $CARGO_TARGET_DIR/${PROFILE:-debug}.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-target}/${PROFILE:-debug}"
B=$BIN/vouch-backend; G=$BIN/vouch-gateway; P=$BIN/vouch-peripheral
W=$(mktemp -d)
pids=()
DEV=
cleanup() { kill "${pids[@]}" $DEV 2>/dev/null || true; [ -n "${THIEF_KEEP:-}" ] || rm -rf "$W"; }
trap cleanup EXIT
passed=0; failed=0
logs() {
    for f in cli b tb g tg; do echo "--- $f.log"; tail -20 "$W/$f.log" 2>/dev/null || true; done
    for f in "$W"/d*.log; do echo "--- device $(basename "$f")"; tail -15 "$f"; tail -5 "${f%.log}.out"; done
}
# A step the rest depends on: stop at once.
fail() { echo "thief FAILED: $*"; logs; echo "$passed passed, $((failed + 1)) failed"; exit 1; }
# A claim: counted, the run goes on.
check() { # description, command...
    local what=$1; shift
    if "$@" >/dev/null 2>&1; then passed=$((passed + 1)); echo "ok    $what"
    else failed=$((failed + 1)); echo "FAIL  $what"; fi
}
wait_until() { # seconds, command...: 0 once the command succeeds, 1 at the deadline
    local n=$(($1 * 10)); shift
    for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}
wait_for() { wait_until 20 "${@:2}" || fail "timed out waiting for $1"; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
count() { grep -c "$1" "$2" 2>/dev/null || true; }
# Audit entries of a backend (one JSON document, its items): action outcome reason detail, one a line.
audit() { # data dir, action
    $B --data-dir "$W/$1" audit query --action "$2" --limit 1000 --json |
        python3 -c 'import json, sys
for e in json.load(sys.stdin)["items"]:
    print(e["action"], e["outcome"], e["reason"] or "-", e["detail"])'
}
# A number from a gateway's status (`vouch-gateway status --json`), by path.
gw_status() { # gateway dir, dotted path
    $G status --config "$W/$1/gateway.toml" --json |
        python3 -c 'import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."): v = v[k]
print(v)' "$2"
}
kid_of() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["anchor"]["kid"])' "$1"; }
# The device: runs against the gateway on port $1 until dev_stop; stdout
# $W/$2.out, log $W/$2.log.
dev_start() {
    $P run --dir "$W/vp" --connect "tcp://127.0.0.1:$1" --interval 0.5 --handshake-timeout 5 \
        --backoff-initial 0.2 --backoff-max 1 > "$W/$2.out" 2> "$W/$2.log" & DEV=$!
}
dev_stop() { kill -TERM "$DEV" 2>/dev/null || true; wait "$DEV" 2>/dev/null || true; DEV=; }
# A gateway: identity in $1, enrolled at site lab with backend data dir $2 on
# port $3, TCP on port $4; anchor updates fetched every second.
gateway() {
    $G init --key "$W/$1/identity.pem" > "$W/$1-init.txt"
    $B --data-dir "$W/$2" enroll gateway --public-key "$(awk '/^public key:/ {print $3}' "$W/$1-init.txt")" \
        --site lab --out "$W/$1/client.pem" > /dev/null 2>> "$W/cli.log"
    cp "$W/$2/ca.pem" "$W/$1/ca.pem"
    $G example-config | sed -e "s|/var/lib/vouch-gateway|$W/$1|; s|/etc/vouch/backend-ca.pem|$W/$1/ca.pem|" \
        -e "s|https://backend.example.net:8443|https://127.0.0.1:$3|; s|/run/vouch-gateway|$W/$1|; s|127.0.0.1:7800|127.0.0.1:$4|" \
        -e "s|^anchor_updates_interval_s = .*|anchor_updates_interval_s = 1|" > "$W/$1/gateway.toml"
    grep -q '^anchor_updates_interval_s = 1$' "$W/$1/gateway.toml" || fail "could not set anchor_updates_interval_s"
}
BP=$(port); GP=$(port); TP=$(port); RP=$(port)

echo "== 1. the operator: backend, gateway at site lab, a device provisioned with key 1 and its commitment"
$B --data-dir "$W/vb" init > /dev/null
$B --data-dir "$W/vb" serve --listen "127.0.0.1:$BP" > "$W/b.log" 2>&1 & pids+=($!)
wait_for "the backend" grep -q "listening on" "$W/b.log"
gateway vg vb "$BP" "$GP"
$G run --config "$W/vg/gateway.toml" > "$W/g.log" 2>&1 & pids+=($!)
wait_for "the gateway" grep -q "TCP transport listening" "$W/g.log"
$P keygen --dir "$W/vp" --group meters > "$W/row.ndjson" 2>> "$W/cli.log"
$B --data-dir "$W/vb" import "$W/row.ndjson" > /dev/null
$B --data-dir "$W/vb" associate --peripheral group:meters --gateway site:lab --scope telemetry > /dev/null
$B --data-dir "$W/vb" export-anchor --out "$W/anchor.json"
$P provision --dir "$W/vp" --anchor "$W/anchor.json" >> "$W/cli.log" 2>&1
dev_start "$GP" d1-genuine
wait_for "the device's first telemetry through the genuine gateway" grep -q '^sent ' "$W/d1-genuine.out"
dev_stop
check "the device ran a full handshake with the genuine gateway" grep -q "handshake ok (full" "$W/d1-genuine.log"
check "the operator's backend vouched for it with key 1 (audit: vouch vouched kid=1)" \
    grep -q '^vouch vouched - .*kid=1$' <(audit vb vouch)

echo "== 2. the thief steals key 1 and runs its own backend and a rogue gateway"
$B --data-dir "$W/tb" init > /dev/null
cp "$W/vb/signing-1.pem" "$W/vb/sealing-1.pem" "$W/tb/"
rm "$W/tb/signing-2.pem" "$W/tb/sealing-2.pem"
$B --data-dir "$W/tb" serve --listen "127.0.0.1:$TP" > "$W/tb.log" 2>&1 & pids+=($!)
wait_for "the thief's backend" grep -q "listening on" "$W/tb.log"
$B --data-dir "$W/tb" keys list > "$W/tb-keys.txt"
$B --data-dir "$W/vb" keys list > "$W/vb-keys.txt"
key_row() { awk -v k="$1" '$1 == k {print $(NF-1), $NF}' "$2"; }
check "the thief's ring holds the stolen key 1" test "$(key_row 1 "$W/tb-keys.txt")" = "$(key_row 1 "$W/vb-keys.txt")"
check "the thief's committed key 2 is its own, not the operator's" \
    test "$(key_row 2 "$W/tb-keys.txt")" != "$(key_row 2 "$W/vb-keys.txt")" -a -n "$(key_row 2 "$W/tb-keys.txt")"
gateway tg tb "$TP" "$RP"
$G run --config "$W/tg/gateway.toml" > "$W/tg.log" 2>&1 & pids+=($!)
wait_for "the rogue gateway" grep -q "TCP transport listening" "$W/tg.log"
# The device's id and public key are public (`show`, or its import row).
$P show --dir "$W/vp" > "$W/show.txt"
$B --data-dir "$W/tb" enroll peripheral --id "$(awk '$1 == "id" {print $2}' "$W/show.txt")" \
    --public-key "$(awk '$1 == "public" {print $3}' "$W/show.txt")" --group meters > /dev/null
$B --data-dir "$W/tb" associate --peripheral group:meters --gateway site:lab --scope telemetry,command,app8,app9 > /dev/null

echo "== 3. before the rotation reaches the device: the rogue runs a session, but its own key is not adopted"
cp "$W/vp/anchors.json" "$W/anchors-0.json"
dev_start "$RP" d2-rogue
wait_for "the device's telemetry through the rogue gateway" grep -q '^sent ' "$W/d2-rogue.out"
dev_stop
check "the device completed a handshake with the rogue gateway (the stolen key is still its anchor)" \
    grep -q "session established" "$W/tg.log"
check "the thief's backend vouched with the stolen key 1" grep -q '^vouch vouched - .*kid=1$' <(audit tb vouch)
$B --data-dir "$W/tb" keys rotate > "$W/tb-rotate.txt"
wait_for "the rogue gateway to fetch the thief's Rotate" grep -q "trust-anchor updates fetched" "$W/tg.log"
dev_start "$RP" d3-rogue
wait_until 20 grep -q "anchor update refused" "$W/d3-rogue.log" || true
dev_stop
check "the rogue gateway sent the thief's Rotate (to its own key 2) to the device" test "$(gw_status tg anchor_updates.sent)" -ge 1
# One error covers a wrong commitment and a bad signature (proto's
# AnchorSet::apply); a stale serial would be logged at debug, not here.
check "the device refused it: its log says the update was refused" grep -q "anchor update refused; anchors unchanged serial=1 " "$W/d3-rogue.log"
check "the device reported no anchor change" test "$(count '^anchors-updated' "$W/d3-rogue.out")" = 0
check "the device's anchors.json is unchanged (key 1, the operator's commitment)" cmp "$W/anchors-0.json" "$W/vp/anchors.json"

# The refused update took no serial: the operator's Rotate, serial 1 as well, still applies.
echo "== 4. the operator rotates; the device meets the genuine gateway and applies the Rotate"
$B --data-dir "$W/vb" keys rotate > "$W/vb-rotate.txt"
wait_for "the genuine gateway to fetch the operator's Rotate" grep -q "trust-anchor updates fetched" "$W/g.log"
dev_start "$GP" d4-genuine
wait_until 20 grep -q '^anchors-updated' "$W/d4-genuine.out" || true
dev_stop
check "the device applied the operator's Rotate (anchors-updated serial=1 primary=2)" \
    grep -qx "anchors-updated serial=1 primary=2" "$W/d4-genuine.out"
check "its anchors.json now holds key 2" test "$(kid_of "$W/vp/anchors.json")" = 2
cp "$W/vp/anchors.json" "$W/anchors-1.json"
dev_start "$GP" d5-genuine
wait_for "the device's telemetry through the genuine gateway, on key 2" grep -q '^sent ' "$W/d5-genuine.out"
dev_stop
check "its next full handshake was vouched by key 2 (audit: vouch vouched kid=2)" grep -q '^vouch vouched - .*kid=2$' <(audit vb vouch)

echo "== 5. after it: the thief, holding key 1, can neither run a session with the device nor change its anchors"
ok_before=$(( $(gw_status tg handshakes.ok) + $(gw_status tg handshakes.resumed) ))
sessions=$(count "session established" "$W/tg.log")
audit tb vouch > "$W/tb-vouch-before.txt"
failures_at_least() { [ "$(count "handshake failed peer=.* resuming=false" "$1")" -ge "$2" ]; }
dev_start "$RP" d6-rogue
wait_until 20 failures_at_least "$W/d6-rogue.log" 3 || true
dev_stop
audit tb vouch > "$W/tb-vouch.txt"
# The Hello names key id 2, which the thief's backend also has: its own key
# 2, which it rotated to in step 3. Opened with that key, the sealed identity
# decrypts to a random id, refused as unknown_peripheral (a thief that had
# not rotated would refuse it as unknown_backend_key); either way it learns
# neither who the device is nor anything to vouch with.
new_refusals() { diff "$W/tb-vouch-before.txt" "$W/tb-vouch.txt" | sed -n 's/^> //p'; }
check "the device's full handshakes with the rogue gateway failed" failures_at_least "$W/d6-rogue.log" 3
check "the thief's backend could not open its Hellos sealed to the operator's key 2 (audit: denied, unknown peripheral or key)" \
    bash -c '[ -n "$1" ] && ! grep -vqE "^vouch denied (unknown_peripheral|unknown_backend_key) " <<< "$1"' _ "$(new_refusals)"
check "the rogue gateway established no session (its handshakes ok/resumed did not grow)" \
    test "$(( $(gw_status tg handshakes.ok) + $(gw_status tg handshakes.resumed) ))" = "$ok_before" -a "$(count "session established" "$W/tg.log")" = "$sessions"
check "the device sent nothing through the rogue gateway" test "$(count '^sent ' "$W/d6-rogue.out")" = 0
check "the device's anchors.json is unchanged (key 2)" cmp "$W/anchors-1.json" "$W/vp/anchors.json"
echo "the thief's backend on the device's hellos after the rotation: $(new_refusals | awk '{print $2, $3}' | sort | uniq -c | xargs)"

echo "$passed passed, $failed failed"
if [ "$failed" -gt 0 ]; then logs; exit 1; fi
