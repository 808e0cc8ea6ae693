#!/bin/sh
# Runs inside the VM (POSIX sh). Brings up btvirt (one controller for the gateway,
# one per peripheral), D-Bus and bluetoothd, enrolls everything like
# .ci/quickstart.sh, then runs the scenarios in $SCENARIOS. Each scenario appends
# "PASS name" or "FAIL name: why" to $LAB/out/results. Exit status: failures.
OUT=$LAB/out
W=/run/vouch                      # tmpfs: backend SQLite, gateway and device state
B=$BIN/vouch-backend G=$BIN/vouch-gateway P=$BIN/vouch-peripheral
GW_HCI=hci0                       # peripheral i uses hci$i
NPERIPH=3                         # s1: p1; s2: p2 + p3 (fresh devices, see scenario 3)
NCTRL=$((NPERIPH + 1))
SOCK=$W/gw/api.sock
RESULTS=$OUT/results
: > "$RESULTS"
PIDS=""
now() { cut -d' ' -f1 /proc/uptime; }
log() { echo "vm[$(now)s]: $*"; }

# wait_for SECONDS CMD... : poll CMD every 0.25 s until it succeeds or time is up
wait_for() {
    secs=$1; shift
    end=$(( $(date +%s) + secs ))
    while ! "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -ge "$end" ] && return 1
        sleep 0.25
    done
}
has() { grep -q -- "$2" "$1"; }
# stop PID [SECONDS]: SIGTERM, then SIGKILL if it is still there after SECONDS
stop() {
    kill "$1" 2>/dev/null || return 0
    wait_for "${2:-10}" sh -c "! kill -0 $1" || kill -9 "$1" 2>/dev/null
    wait "$1" 2>/dev/null
}
setup_fail() { log "SETUP FAILED: $*"; echo "FAIL setup: $*" >> "$RESULTS"; cleanup; exit 1; }
cleanup() { for p in $PIDS; do kill "$p" 2>/dev/null; done; sleep 0.5; }

# ---- Bluetooth: kernel, emulated controllers, D-Bus, bluetoothd -------------
# btvirt's controllers use AF_ALG; loading it lazily makes the first HCI command
# time out, so preload.
/run/vouch-modprobe -a hci_vhci af_alg algif_hash algif_skcipher ecb cmac || setup_fail "modprobe"
mkdir -p /run/dbus
dbus-daemon --system --fork || setup_fail "dbus-daemon"
controllers_ready() { # all NCTRL controllers finished kernel setup (visible on mgmt)
    n=$( (sleep 2) | timeout 6 btmgmt info 2>/dev/null | grep -c '^hci[0-9]*:')
    [ "$n" = "$NCTRL" ]
}
# Under TCG the kernel's first HCI_Reset can time out (-110) before btvirt's main
# loop runs; that controller never comes up. Detect it and restart btvirt.
BTVIRT=
for attempt in 1 2 3 4 5; do
    btvirt -L -l$NCTRL > "$OUT/btvirt.log" 2>&1 &
    BTVIRT=$!
    if wait_for 30 controllers_ready; then break; fi
    log "controllers not all up (attempt $attempt); restarting btvirt"
    stop $BTVIRT 5; BTVIRT=; sleep 1
done
[ -n "$BTVIRT" ] || setup_fail "btvirt controllers never became ready"
PIDS="$PIDS $BTVIRT"
/usr/libexec/bluetooth/bluetoothd -n -d > "$OUT/bluetoothd.log" 2>&1 &
PIDS="$PIDS $!"
adapters_on_dbus() {
    [ "$(busctl --system --no-pager tree org.bluez 2>/dev/null | grep -c '/org/bluez/hci[0-9]*$')" = "$NCTRL" ]
}
wait_for 60 adapters_on_dbus || setup_fail "bluetoothd did not publish $NCTRL adapters"
log "$NCTRL controllers and bluetoothd up"

# ---- Backend, gateway, devices (as .ci/quickstart.sh) ------------------------
mkdir -p $W/gw
exec 3>&2 2>>"$OUT/setup.log"   # setup chatter (progress bars, hints) to a log
$B --data-dir $W/backend init > $W/backend-init.txt || setup_fail "backend init"
$B --data-dir $W/backend serve --listen 127.0.0.1:8443 > "$OUT/backend.log" 2>&1 &
PIDS="$PIDS $!"
wait_for 60 has "$OUT/backend.log" "listening on" || setup_fail "backend did not listen"
$G init --key $W/gw/identity.pem > $W/gw-init.txt || setup_fail "gateway init"
KEY=$(awk '/^public key:/ {print $3}' $W/gw-init.txt)
$B --data-dir $W/backend enroll gateway --public-key "$KEY" --site lab --out $W/gw/client.pem \
    > /dev/null || setup_fail "enroll gateway"
cp $W/backend/ca.pem $W/gw/ca.pem
# the example configuration, with BLE on $GW_HCI instead of TCP
$G example-config | sed \
    -e "s|/var/lib/vouch-gateway|$W/gw|; s|/etc/vouch/backend-ca.pem|$W/gw/ca.pem|" \
    -e "s|https://backend.example.net:8443|https://127.0.0.1:8443|; s|/run/vouch-gateway|$W/gw|" \
    -e '/^\[transport\.tcp\]/,/^att_mtu/d' \
    -e 's|^# \[transport\.ble\]|[transport.ble]|' \
    -e "s|^# adapter = .*|adapter = \"$GW_HCI\"|" \
    -e 's|^# max_links = 8|max_links = 8|' > $W/gw/gateway.toml
cp $W/gw/gateway.toml "$OUT/gateway.toml"
grep -q "^adapter = \"$GW_HCI\"" $W/gw/gateway.toml || setup_fail "could not write [transport.ble] into gateway.toml"

for i in $(seq 1 $NPERIPH); do
    $P keygen --dir $W/p$i --group meters > $W/p$i.row || setup_fail "keygen p$i"
    $B --data-dir $W/backend import $W/p$i.row > /dev/null || setup_fail "import p$i"
    eval "ID$i=$(sed -n 's/.*"id":"\([^"]*\)".*/\1/p' $W/p$i.row)"
done
$B --data-dir $W/backend associate --peripheral group:meters --gateway site:lab \
    --scope telemetry,command,app8 > /dev/null || setup_fail "associate"
$B --data-dir $W/backend export-anchor --out $W/anchor.json || setup_fail "export-anchor"
for i in $(seq 1 $NPERIPH); do
    $P provision --dir $W/p$i --anchor $W/anchor.json > /dev/null || setup_fail "provision p$i"
done
exec 2>&3 3>&-

RUST_LOG=${RUST_LOG:-info} $G run --config $W/gw/gateway.toml > "$OUT/gateway.log" 2>&1 &
GW=$!; PIDS="$PIDS $GW"
wait_for 60 has "$OUT/gateway.log" "BLE central scanning" || setup_fail "gateway BLE central did not start"
wait_for 30 test -S $SOCK || setup_fail "no gateway API socket"
# every authenticated message, one JSON object per line
curl -sN --unix-socket $SOCK http://gw/v1/messages > "$OUT/messages.ndjson" 2> "$OUT/messages-curl.log" &
PIDS="$PIDS $!"
log "backend and gateway up; devices ${ID1} ${ID2} ${ID3}"

# ---- helpers for scenarios --------------------------------------------------
# start_periph N TAG: run device N on hci$N; its logs are $OUT/TAG-pN.{log,out}
start_periph() {
    VOUCH_LOG=info $P run --dir $W/p$1 --connect ble:hci$1 --interval 2 \
        > "$OUT/$2-p$1.out" 2> "$OUT/$2-p$1.log" &
    eval "PP$1=$!"
    PIDS="$PIDS $!"
}
send_cmd() { # send_cmd ID BODY -> HTTP status on stdout
    curl -s -o /dev/null -w '%{http_code}' --max-time 20 --unix-socket $SOCK \
        -X POST --data-binary "$2" "http://gw/v1/peripherals/$1/send"
}
# telemetry: a message from device $1 whose data (base64) decodes to a {"seq":...} line
telemetry_from() {
    grep "\"$1\"" "$OUT/messages.ndjson" | sed -n 's/.*"data_b64":"\([^"]*\)".*/\1/p' |
        while read -r b; do echo "$b" | base64 -d 2>/dev/null; echo; done | grep -q '"seq"'
}
FAILS=""
expect() { # expect WHAT SECONDS CMD... : records the first failure of a scenario
    what=$1 secs=$2; shift 2
    [ -n "$FAILS" ] && return 1
    if wait_for "$secs" "$@"; then log "ok: $what"; return 0; fi
    FAILS="$what"; log "FAILED: $what"; return 1
}
verdict() {
    if [ -z "$FAILS" ]; then echo "PASS $1" >> "$RESULTS"; else echo "FAIL $1: $FAILS" >> "$RESULTS"; fi
    FAILS=""
}
latency() { sed -n 's/.*handshake ok (\([a-z]*\), \([0-9]*\) ms).*/\1 \2 ms/p' "$1" | head -1; }

# ---- scenario 1: one device authenticates and exchanges data both ways -------
scenario_1() {
    name="1 one peripheral: handshake, telemetry up, command down"
    log "scenario $name"
    t0=$(now)
    start_periph 1 s1
    expect "peripheral handshake ok" 120 has "$OUT/s1-p1.log" "handshake ok" &&
    expect "gateway session established" 30 has "$OUT/gateway.log" "session established" &&
    expect "telemetry from $ID1 at the gateway API" 60 telemetry_from "$ID1" &&
    expect "command accepted by the gateway (204)" 30 sh -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' --max-time 20 --unix-socket $SOCK -X POST --data-binary led=on http://gw/v1/peripherals/$ID1/send)\" = 204 ]" &&
    expect "command received by the peripheral" 30 has "$OUT/s1-p1.out" "recv led=on"
    log "scenario 1: handshake $(latency "$OUT/s1-p1.log") (peripheral's measure), started at ${t0}s"
    stop $PP1 15
    verdict "$name"
}

# ---- scenario 2: two devices at once on one gateway -------------------------
scenario_2() {
    name="2 two peripherals at once on one gateway"
    log "scenario $name"
    start_periph 2 s2
    start_periph 3 s2
    expect "p2 handshake ok" 120 has "$OUT/s2-p2.log" "handshake ok" &&
    expect "p3 handshake ok" 120 has "$OUT/s2-p3.log" "handshake ok" &&
    expect "two live sessions at the gateway" 30 sh -c "curl -s --max-time 10 --unix-socket $SOCK http://gw/v1/sessions | grep -q $ID2 && curl -s --max-time 10 --unix-socket $SOCK http://gw/v1/sessions | grep -q $ID3" &&
    expect "telemetry from p2" 60 telemetry_from "$ID2" &&
    expect "telemetry from p3" 60 telemetry_from "$ID3" &&
    expect "command to p2 (204)" 30 sh -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' --max-time 20 --unix-socket $SOCK -X POST --data-binary led=off http://gw/v1/peripherals/$ID2/send)\" = 204 ]" &&
    expect "command to p3 (204)" 30 sh -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' --max-time 20 --unix-socket $SOCK -X POST --data-binary led=on http://gw/v1/peripherals/$ID3/send)\" = 204 ]" &&
    expect "p2 received its command" 30 has "$OUT/s2-p2.out" "recv led=off" &&
    expect "p3 received its command" 30 has "$OUT/s2-p3.out" "recv led=on" &&
    expect "p2 did not get p3's command" 1 sh -c "! grep -q 'recv led=on' '$OUT/s2-p2.out'"
    log "scenario 2: p2 $(latency "$OUT/s2-p2.log"), p3 $(latency "$OUT/s2-p3.log")"
    stop $PP2 15; stop $PP3 15
    verdict "$name"
}

# ---- scenario 3 (opt-in, known to fail): a device restarts and resumes -------
# p1 (from scenario 1) starts again on the same controller and address. Today the
# gateway never reconnects: see tests/ble-vm/NOTES.md.
scenario_3() {
    name="3 peripheral restarts and resumes"
    log "scenario $name"
    start_periph 1 s3
    expect "p1 handshake ok (resumed) after restart" 90 has "$OUT/s3-p1.log" "handshake ok (resumed" &&
    expect "telemetry after resumption" 60 sh -c "[ \$(grep -c '^sent' '$OUT/s3-p1.out') -ge 1 ]"
    stop $PP1 15
    verdict "$name"
}

for s in $SCENARIOS; do "scenario_$s"; done
stop $GW 15
cleanup
cat "$RESULTS"
exit "$(grep -c '^FAIL' "$RESULTS")"
