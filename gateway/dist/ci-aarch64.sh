#!/usr/bin/env bash
# CI for the Raspberry Pi target (aarch64-unknown-linux-gnu), run by .ci/run on a Debian 12
# x86_64 machine, as root:
#
#   1. the cross build (build-aarch64.sh: Debian's rustc-web, vouch-gateway --features ble and
#      vouch-peripheral), timed, with the binary sizes;
#   2. the aarch64 binaries under qemu-user: --version, example-config;
#   3. end to end: the HOST backend (HTTPS, mutual TLS, SQLite in a temp data dir) on loopback,
#      the aarch64 gateway under qemu-aarch64-static (TCP transport on loopback, configured from
#      the packaged example config plus VOUCH_GATEWAY_* overrides), and a host reference
#      peripheral: handshake, telemetry peripheral -> gateway (read from the gateway's local
#      API), a command gateway -> peripheral (sent through the local API's Unix socket),
#      `vouch-gateway status`, the backend's audit entry, clean shutdowns;
#   4. the .deb (build-deb.sh), checked with dpkg-deb -c / -I, its unit with systemd-analyze,
#      its maintainer scripts with sh -n, its binary under qemu;
#      Opt-in: the package installed, reinstalled, removed and purged on this machine;
#   5. its D-Bus policy on a private bus with BlueZ mocked by python-dbusmock: the calls it
#      grants go through, the others are refused, and without it the same user is refused.
#
# Every wait polls with a deadline. The last line is "N passed, M failed"; the exit status is
# non-zero if anything failed.
#
# environment:
#   CARGO_TARGET_DIR          the host target dir CI shares (default /var/cache/vouch-target)
#   VOUCH_AARCH64_TARGET_DIR  the cross build's target dir (default /var/cache/vouch-target-aarch64)
#   VOUCH_CI_HOST_PROFILE     profile of the host backend/peripheral build (default release;
#                             `debug` reuses what `cargo test --workspace` already built)
#   VOUCH_CI_KEEP=1           keep the work directory (logs, data dirs) for inspection
#   VOUCH_CI_DEB_INSTALL=1    also install, reinstall, remove and purge the package on this
#                             machine (throwaway machines only; refuses if vouch-gateway is there)
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DIST=$ROOT/gateway/dist
export CARGO_TERM_COLOR=never NO_COLOR=1 VOUCH_LOG=${VOUCH_LOG:-info}
HOST_TDIR=${CARGO_TARGET_DIR:-/var/cache/vouch-target}
export VOUCH_AARCH64_TARGET_DIR=${VOUCH_AARCH64_TARGET_DIR:-/var/cache/vouch-target-aarch64}
A64=$VOUCH_AARCH64_TARGET_DIR/aarch64-unknown-linux-gnu/release
GW=$A64/vouch-gateway
PERIPH_A64=$A64/vouch-peripheral
HOST_PROFILE=${VOUCH_CI_HOST_PROFILE:-release}
case "$HOST_PROFILE" in
release) HOST_FLAGS=(--release); HOST_OUT=$HOST_TDIR/release ;;
debug)   HOST_FLAGS=();          HOST_OUT=$HOST_TDIR/debug ;;
*) echo "VOUCH_CI_HOST_PROFILE must be release or debug" >&2; exit 2 ;;
esac
PERIPH=$HOST_OUT/vouch-peripheral
# The backend refuses to start when the environment holds a VOUCH_* variable that is not one of
# its settings (this script's own knobs, say): run it without any. `env` execs the backend, so
# the PID of a backgrounded "${BACKEND[@]}" is the backend's.
BACKEND=(env)
for v in $(compgen -e); do case "$v" in VOUCH_*) BACKEND+=(-u "$v") ;; esac; done
BACKEND+=("$HOST_OUT/vouch-backend")
QEMU=qemu-aarch64-static
T_START=$(date +%s)

WORK=$(mktemp -d /tmp/vouch-ci-aarch64.XXXXXX)
chmod 0755 "$WORK"
PIDS=()                       # background processes this script started
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "${VOUCH_CI_KEEP:-}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

PASSED=0 FAILED=0
step() { printf '\n==== %s (%s)\n' "$*" "$(date -u +%T)"; }
ok()   { PASSED=$((PASSED + 1)); echo "ok   $*"; }
bad()  { FAILED=$((FAILED + 1)); echo "FAIL $*"; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else bad "$name"; fi; }
now()  { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# wait_for SECONDS WHAT COMMAND...: poll COMMAND every 0.2 s until it succeeds or the deadline.
wait_for() {
    local limit=$1 what=$2; shift 2
    local deadline=$(( $(date +%s) + limit ))
    until "$@"; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "timed out after ${limit} s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}
# wait_exit PID SECONDS: wait for a background process to end; its status is the return value
# (124 if it did not end in time; then it is killed).
wait_exit() {
    local pid=$1 limit=$2
    if ! wait_for "$limit" "process $pid to exit" eval "! kill -0 $pid 2>/dev/null"; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null
        return 124
    fi
    wait "$pid"
}
has() { grep -q -- "$2" "$1" 2>/dev/null; }
show_log() { echo "---- $1 (last ${2:-40} lines)"; tail -n "${2:-40}" "$1" 2>/dev/null | sed 's/^/    /'; }

summary() {
    local total_s=$(( $(date +%s) - T_START ))
    step "summary"
    echo "cross build (vouch-gateway --features ble + vouch-peripheral, aarch64): ${CROSS_S:-?} s"
    echo "host build (vouch-backend + vouch-peripheral, $HOST_PROFILE): ${HOST_S:-?} s"
    [ -n "${GW_SIZE:-}" ] && echo "aarch64 vouch-gateway: $GW_SIZE bytes ($GW_STRIPPED stripped)"
    [ -n "${PE_SIZE:-}" ] && echo "aarch64 vouch-peripheral: $PE_SIZE bytes ($PE_STRIPPED stripped)"
    [ -n "${DEB_SIZE:-}" ] && echo "package: $DEB_NAME, $DEB_SIZE bytes"
    [ -n "${HANDSHAKE:-}" ] && echo "handshake through the emulated gateway: $HANDSHAKE"
    echo "ci-aarch64 total: ${total_s} s"
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
}

# ----------------------------------------------------------------------------------- packages
step "packages for the emulated run and the package checks"
need=()
for p in qemu-user-static curl jq dpkg-dev systemd dbus-daemon python3-dbusmock python3-gi \
         libglib2.0-bin util-linux; do
    dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${need[@]}"; }; then
        bad "apt-get install ${need[*]}"; summary; exit 1
    fi
fi
echo "all present"

# ----------------------------------------------------------------------------------- 1. builds
step "1. cross build for aarch64 (gateway/dist/build-aarch64.sh)"
t0=$(now)
if "$DIST/build-aarch64.sh" 2>&1 | tee "$WORK/build-aarch64.log"; then
    CROSS_S=$(secs "$t0" "$(now)")
    ok "cross build (${CROSS_S} s)"
else
    CROSS_S=$(secs "$t0" "$(now)")
    bad "cross build"
    summary; exit 1
fi
GW_SIZE=$(stat -c %s "$GW"); PE_SIZE=$(stat -c %s "$PERIPH_A64")
GW_STRIPPED=$(aarch64-linux-gnu-strip -o "$WORK/gw.stripped" "$GW" && stat -c %s "$WORK/gw.stripped")
PE_STRIPPED=$(aarch64-linux-gnu-strip -o "$WORK/pe.stripped" "$PERIPH_A64" && stat -c %s "$WORK/pe.stripped")

step "1b. host build: cargo build ${HOST_FLAGS[*]} --locked -p vouch-backend -p vouch-peripheral"
t0=$(now)
HOST_OK=1
if (cd "$ROOT" && CARGO_TARGET_DIR=$HOST_TDIR cargo build "${HOST_FLAGS[@]}" --locked \
        -p vouch-backend -p vouch-peripheral); then
    HOST_S=$(secs "$t0" "$(now)")
    ok "host build (${HOST_S} s)"
else
    HOST_S=$(secs "$t0" "$(now)")
    bad "host build"; HOST_OK=0
fi

# ----------------------------------------------------------------------------------- 2. qemu
step "2. the aarch64 binaries under qemu-user"
if out=$(timeout 60 "$QEMU" "$GW" --version 2>&1); then
    echo "$out"
    check "vouch-gateway --version under qemu" grep -qE '^vouch-gateway [0-9]' <<<"$out"
else
    bad "vouch-gateway --version under qemu: $out"
fi
if out=$(timeout 60 "$QEMU" "$PERIPH_A64" --version 2>&1); then
    echo "$out"
    check "vouch-peripheral --version under qemu" grep -qE '^vouch-peripheral [0-9]' <<<"$out"
else
    bad "vouch-peripheral --version under qemu: $out"
fi
timeout 60 "$QEMU" "$GW" example-config >"$WORK/gateway.toml" 2>&1
check "example-config under qemu is gateway/dist/gateway.toml (the packaged conffile)" \
    cmp -s "$WORK/gateway.toml" "$DIST/gateway.toml"

# ----------------------------------------------------------------------------------- 3. e2e
e2e() {
    local B=$WORK/backend G=$WORK/gw D=$WORK/device
    mkdir -p "$G"
    # The aarch64 gateway's settings: the packaged example config plus environment overrides,
    # as an installer's `systemctl edit` drop-in would set them. Given to the gateway only.
    local GWENV=(VOUCH_GATEWAY_IDENTITY_KEY="$G/identity.pem"
                 VOUCH_GATEWAY_BACKEND_CA="$B/ca.pem"
                 VOUCH_GATEWAY_BACKEND_CERTIFICATE="$G/client.pem"
                 VOUCH_GATEWAY_TRANSPORT_TCP_LISTEN=127.0.0.1:0
                 VOUCH_GATEWAY_API_SOCKET="$G/api.sock"
                 VOUCH_GATEWAY_STATE_DIR="$G/state")
    local SOCK=$G/api.sock CONF=$WORK/gateway.toml

    # -- the backend (host): data dir, gateway enrollment, device enrollment, policy, anchor
    "${BACKEND[@]}" init --data-dir "$B" >"$WORK/backend-init.log" 2>&1
    check "backend init" test -s "$B/ca.pem" || { show_log "$WORK/backend-init.log"; return 1; }

    # -- gateway identity, made by the aarch64 binary from the config's key path
    env "${GWENV[@]}" timeout 60 "$QEMU" "$GW" init --config "$CONF" >"$WORK/gw-init.log" 2>&1
    local GWKEY
    GWKEY=$(sed -n 's/^public key: \([0-9a-f]\{64\}\)$/\1/p' "$WORK/gw-init.log")
    check "gateway init under qemu (key 0600)" \
        test -n "$GWKEY" -a "$(stat -c %a "$G/identity.pem" 2>/dev/null)" = 600 \
        || { show_log "$WORK/gw-init.log"; return 1; }

    "${BACKEND[@]}" --data-dir "$B" enroll gateway --public-key "$GWKEY" --name ci-pi --site ci \
        --out "$G/client.pem" >"$WORK/enroll-gw.log" 2>&1
    check "backend enroll gateway -> client.pem" grep -q 'BEGIN CERTIFICATE' "$G/client.pem" \
        || { show_log "$WORK/enroll-gw.log"; return 1; }

    "$PERIPH" keygen --dir "$D" --group ci-pi >"$WORK/device.ndjson" 2>"$WORK/keygen.err"
    local PID_HEX
    PID_HEX=$(jq -r .id "$WORK/device.ndjson" 2>/dev/null)
    check "peripheral keygen" grep -qE '^[0-9a-f]{16}$' <<<"$PID_HEX" \
        || { show_log "$WORK/keygen.err"; return 1; }
    "${BACKEND[@]}" --data-dir "$B" import "$WORK/device.ndjson" >"$WORK/import.log" 2>&1
    check "backend import (the device's keygen row)" test $? -eq 0 || show_log "$WORK/import.log"
    "${BACKEND[@]}" --data-dir "$B" associate --peripheral group:ci-pi --gateway "gateway:$GWKEY" \
        --scope telemetry,command,app8 >"$WORK/associate.log" 2>&1
    check "backend associate (telemetry,command,app8)" test $? -eq 0 || show_log "$WORK/associate.log"
    "${BACKEND[@]}" --data-dir "$B" export-anchor --out "$WORK/anchor.json" >"$WORK/anchor.log" 2>&1 \
        && "$PERIPH" provision --dir "$D" --anchor "$WORK/anchor.json" >>"$WORK/anchor.log" 2>&1
    check "export-anchor + peripheral provision" test $? -eq 0 || show_log "$WORK/anchor.log"

    # -- serve
    "${BACKEND[@]}" --data-dir "$B" serve --listen 127.0.0.1:0 >"$WORK/backend.out" 2>"$WORK/backend.log" &
    local BPID=$!; PIDS+=("$BPID")
    if ! wait_for 60 "the backend to listen" has "$WORK/backend.out" '^listening on https://'; then
        bad "backend serve"; show_log "$WORK/backend.log"; return 1
    fi
    local BURL
    BURL=$(sed -n 's/^listening on \(https:\/\/127\.0\.0\.1:[0-9]*\).*/\1/p' "$WORK/backend.out")
    ok "backend serving on $BURL (host, mutual TLS)"
    GWENV+=(VOUCH_GATEWAY_BACKEND_URL="$BURL")

    # -- the aarch64 gateway under qemu
    env "${GWENV[@]}" "$QEMU" "$GW" run --config "$CONF" >"$WORK/gateway.log" 2>&1 &
    local GPID=$!; PIDS+=("$GPID")
    if ! wait_for 90 "the gateway's TCP transport" has "$WORK/gateway.log" 'TCP transport listening'; then
        bad "aarch64 gateway start"; show_log "$WORK/gateway.log"; return 1
    fi
    local GADDR
    GADDR=$(sed -n 's/.*TCP transport listening.*addr=\(127\.0\.0\.1:[0-9]*\).*/\1/p' "$WORK/gateway.log" | head -n1)
    wait_for 30 "the API socket" test -S "$SOCK"
    check "aarch64 gateway running under qemu (TCP $GADDR, API socket)" \
        test -n "$GADDR" -a -S "$SOCK" || { show_log "$WORK/gateway.log"; return 1; }
    check "gateway API socket mode 0660" test "$(stat -c %a "$SOCK")" = 660

    # Application messages (peripheral -> gateway) as the gateway's local API streams them.
    curl -sN -D "$WORK/messages.headers" --unix-socket "$SOCK" http://gw/v1/messages \
        >"$WORK/messages.ndjson" 2>"$WORK/messages.err" &
    local MPID=$!; PIDS+=("$MPID")
    # The gateway subscribes before it answers, so once the headers are in,
    # no message can be missed. (Under qemu the subscription can take longer
    # than the device's first message: a run failed on exactly that.)
    check "gateway API message stream open" \
        wait_for 30 "the message stream" grep -q '^HTTP/1.1 200' "$WORK/messages.headers"

    # -- the host reference peripheral: 3 telemetry messages, one every 4 s
    "$PERIPH" run --dir "$D" --connect "tcp://$GADDR" --count 3 --interval 4 \
        >"$WORK/device.out" 2>"$WORK/device.log" &
    local DPID=$!; PIDS+=("$DPID")
    if wait_for 60 "the handshake" has "$WORK/device.log" 'handshake ok'; then
        HANDSHAKE=$(grep -o 'handshake ok ([^)]*)' "$WORK/device.log" | head -n1)
        ok "handshake: peripheral says '$HANDSHAKE'"
    else
        bad "handshake"; show_log "$WORK/device.log"; show_log "$WORK/gateway.log"; return 1
    fi
    check "gateway log shows the session (peripheral=$PID_HEX)" \
        wait_for 30 "the gateway's session log" has "$WORK/gateway.log" "peripheral=$PID_HEX.*session established\|session established.*peripheral=$PID_HEX"
    check "gateway API lists the session" \
        wait_for 30 "/v1/sessions" eval "curl -sf --unix-socket '$SOCK' http://gw/v1/sessions | grep -q '$PID_HEX'"

    # -- data gateway -> peripheral: a command through the local API
    local code
    code=$(curl -s -o "$WORK/send.body" -w '%{http_code}' --unix-socket "$SOCK" -X POST \
        --data-binary 'led=on' "http://gw/v1/peripherals/$PID_HEX/send")
    check "POST /v1/peripherals/$PID_HEX/send led=on -> 204 (got $code)" test "$code" = 204 \
        || cat "$WORK/send.body"

    # -- `vouch-gateway status` (aarch64, through the socket) while the session is live
    env "${GWENV[@]}" timeout 60 "$QEMU" "$GW" status --config "$CONF" >"$WORK/status.out" 2>&1
    cat "$WORK/status.out"
    check "vouch-gateway status under qemu shows the live session" \
        grep -q "1 live sessions" "$WORK/status.out"
    check "vouch-gateway status names its handshake counters (ok 1)" \
        grep -qE "^handshakes: .*\bok 1\b" "$WORK/status.out"

    # -- the peripheral ends by itself after 3 telemetry messages
    wait_exit "$DPID" 90; local drc=$?
    check "peripheral exits 0 after --count 3 (rc $drc)" test "$drc" -eq 0 \
        || { show_log "$WORK/device.log"; show_log "$WORK/device.out"; }
    cat "$WORK/device.out"
    check "peripheral sent 3 telemetry messages" test "$(grep -c '^sent ' "$WORK/device.out")" -eq 3
    check "peripheral printed 'recv led=on' (gateway -> peripheral)" grep -qx 'recv led=on' "$WORK/device.out"
    check "peripheral obeyed the command (LED switched)" has "$WORK/device.log" 'LED switched'

    # -- data peripheral -> gateway: the 3 telemetry messages byte for byte, and the device's
    #    reply to the command (`ok: led=on`), as the gateway's local API streamed them
    decode_messages() {
        jq -r --arg id "$PID_HEX" 'select(.peripheral == $id) | .data_b64' "$WORK/messages.ndjson" \
            2>/dev/null | while read -r b; do printf '%s\n' "$b" | base64 -d; echo; done \
            >"$WORK/messages.txt"
        sed -n 's/^sent //p' "$WORK/device.out" >"$WORK/telemetry.sent"
        grep -v '^ok: ' "$WORK/messages.txt" >"$WORK/telemetry.got"
        [ -s "$WORK/telemetry.sent" ] && cmp -s "$WORK/telemetry.got" "$WORK/telemetry.sent" \
            && grep -qx 'ok: led=on' "$WORK/messages.txt"
    }
    wait_for 30 "the messages at the gateway" decode_messages
    check "gateway API streamed the 3 telemetry messages (peripheral -> gateway)" \
        cmp -s "$WORK/telemetry.got" "$WORK/telemetry.sent" \
        || { show_log "$WORK/messages.txt" 10; show_log "$WORK/telemetry.sent" 5; }
    check "gateway API streamed the device's reply 'ok: led=on'" grep -qx 'ok: led=on' "$WORK/messages.txt"
    check "gateway log shows the session ended" \
        wait_for 30 "the session's end in the gateway log" has "$WORK/gateway.log" 'session ended'

    # -- clean shutdowns (the /v1/messages client first: the gateway waits up to 10 s for open
    #    API connections to finish)
    kill "$MPID" 2>/dev/null; wait "$MPID" 2>/dev/null
    local t_stop; t_stop=$(now)
    kill -TERM "$GPID"; wait_exit "$GPID" 60; local grc=$?
    check "gateway stops on SIGTERM (rc $grc, $(secs "$t_stop" "$(now)") s)" test "$grc" -eq 0
    check "gateway shut down cleanly (no 'shutdown took longer')" \
        eval "has '$WORK/gateway.log' 'INFO vouch_gateway: stopped' && ! has '$WORK/gateway.log' 'shutdown took longer'"
    check "gateway removed its API socket" test ! -e "$SOCK"
    kill -TERM "$BPID"; wait_exit "$BPID" 60; local brc=$?
    check "backend stops on SIGTERM (rc $brc)" test "$brc" -eq 0

    # -- the backend's side: it vouched for this device to this gateway
    "${BACKEND[@]}" --data-dir "$B" audit query --peripheral "$PID_HEX" --action vouch --json \
        >"$WORK/audit.json" 2>&1
    check "backend audit: vouched for $PID_HEX to the aarch64 gateway" \
        eval "jq -e --arg g '$GWKEY' '.items[] | select(.outcome == \"vouched\" and .gateway == \$g)' '$WORK/audit.json' >/dev/null"

    echo "---- gateway log (aarch64, under qemu)"; sed 's/^/    /' "$WORK/gateway.log"
    echo "---- peripheral log"; sed 's/^/    /' "$WORK/device.log"
}

step "3. end to end: host backend, aarch64 gateway under qemu, host peripheral"
if [ "$HOST_OK" = 1 ]; then
    e2e || bad "end to end run aborted (above)"
else
    bad "end to end: skipped (no host build)"
fi

# ----------------------------------------------------------------------------------- 4. .deb
step "4. the Debian package (gateway/dist/build-deb.sh)"
export VOUCH_DEB_OUT=$WORK/deb
if DEB=$("$DIST/build-deb.sh" | tail -n1) && [ -f "$DEB" ]; then
    DEB_NAME=$(basename "$DEB"); DEB_SIZE=$(stat -c %s "$DEB")
    ok "build-deb.sh -> $DEB_NAME ($DEB_SIZE bytes)"
    dpkg-deb -I "$DEB" | tee "$WORK/deb-info.txt"
    dpkg-deb -c "$DEB" | tee "$WORK/deb-contents.txt"
    mkdir -p "$WORK/debx/DEBIAN"
    dpkg-deb -x "$DEB" "$WORK/debx" && dpkg-deb -e "$DEB" "$WORK/debx/DEBIAN"
    X=$WORK/debx

    check "deb: Package vouch-gateway" grep -qx ' Package: vouch-gateway' "$WORK/deb-info.txt"
    check "deb: Architecture arm64" grep -qx ' Architecture: arm64' "$WORK/deb-info.txt"
    check "deb: Depends on libdbus-1-3, libc6 and adduser" \
        grep -qE '^ Depends: .*libc6 .*libdbus-1-3.*adduser' "$WORK/deb-info.txt"
    for f in ./usr/bin/vouch-gateway ./usr/lib/systemd/system/vouch-gateway.service \
             ./usr/share/dbus-1/system.d/vouch-gateway.conf ./etc/vouch/gateway.toml \
             ./usr/share/doc/vouch-gateway/copyright ./usr/share/doc/vouch-gateway/README-pi.md; do
        check "deb contains $f" grep -qE " $f\$" "$WORK/deb-contents.txt"
    done
    check "deb: /usr/bin/vouch-gateway is root-owned 0755" \
        grep -qE '^-rwxr-xr-x root/root .* \./usr/bin/vouch-gateway$' "$WORK/deb-contents.txt"
    check "deb: /etc/vouch/gateway.toml is a conffile" grep -qx '/etc/vouch/gateway.toml' "$X/DEBIAN/conffiles"
    check "deb: the conffile is the example config" cmp -s "$X/etc/vouch/gateway.toml" "$DIST/gateway.toml"
    for s in postinst prerm postrm; do
        check "deb: maintainer script $s (executable, set -e, sh -n)" \
            eval "test -x '$X/DEBIAN/$s' && grep -qx 'set -e' '$X/DEBIAN/$s' && sh -n '$X/DEBIAN/$s' \
                  && grep -qE '^ +[0-9]+ bytes, +[0-9]+ lines +\\* +$s ' '$WORK/deb-info.txt'"
    done
    check "deb: md5sums verify" eval "(cd '$X' && md5sum --quiet -c DEBIAN/md5sums)"
    check "deb: the packaged binary is aarch64 and runs under qemu" \
        eval "file -b '$X/usr/bin/vouch-gateway' | grep -q 'ARM aarch64' \
              && timeout 60 $QEMU '$X/usr/bin/vouch-gateway' --version | grep -q '^vouch-gateway '"
    check "deb: unit runs vouch-gateway run --config /etc/vouch/gateway.toml as vouch-gateway" \
        eval "grep -qx 'ExecStart=/usr/bin/vouch-gateway run --config /etc/vouch/gateway.toml' '$X/usr/lib/systemd/system/vouch-gateway.service' \
              && grep -qx 'User=vouch-gateway' '$X/usr/lib/systemd/system/vouch-gateway.service'"
    for k in ProtectSystem=strict ProtectHome=yes NoNewPrivileges=yes PrivateTmp=yes \
             StateDirectory=vouch-gateway StateDirectoryMode=0700 RuntimeDirectory=vouch-gateway \
             ConfigurationDirectory=vouch Restart=on-failure; do
        check "deb: unit has $k" grep -qx "$k" "$X/usr/lib/systemd/system/vouch-gateway.service"
    done
    # systemd-analyze checks the ExecStart binary exists: point it at the extracted one.
    sed "s|/usr/bin/vouch-gateway|$X/usr/bin/vouch-gateway|" \
        "$X/usr/lib/systemd/system/vouch-gateway.service" >"$WORK/vouch-gateway.service"
    if v=$(systemd-analyze verify --man=no "$WORK/vouch-gateway.service" 2>&1) && [ -z "$v" ]; then
        ok "systemd-analyze verify: the unit is clean"
    else
        bad "systemd-analyze verify: $v"
    fi
    exposure=$(systemd-analyze security --offline=true "$WORK/vouch-gateway.service" 2>/dev/null \
               | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    check "systemd-analyze security: exposure ${exposure:-?} (<= 2.0)" \
        awk -v e="${exposure:-99}" 'BEGIN { exit !(e <= 2.0) }'
else
    bad "build-deb.sh"
fi

# ----------------------------------------------------------------------------------- 4b. install
# Opt-in (VOUCH_CI_DEB_INSTALL=1), for a throwaway machine: installs the arm64 package on this
# host through multiarch (the arm64 libc and libdbus are there), so the maintainer scripts run
# for real: install, reinstall, dpkg-reconfigure, remove, install again, purge. Without systemd
# as PID 1 the scripts skip starting the unit, as they should.
deb_install() {
    local deb=$1
    if dpkg-query -W vouch-gateway >/dev/null 2>&1 || getent passwd vouch-gateway >/dev/null \
        || getent group vouch >/dev/null || [ -e /etc/vouch ]; then
        bad "package install test: this machine already has vouch-gateway, its user or /etc/vouch"
        return 1
    fi
    dpkg -i "$deb" >"$WORK/dpkg-1.log" 2>&1
    check "dpkg -i: installs" test $? -eq 0 || show_log "$WORK/dpkg-1.log"
    check "postinst: system user vouch-gateway (nologin) in group vouch" \
        eval "getent passwd vouch-gateway | grep -q ':/var/lib/vouch-gateway:/usr/sbin/nologin$' \
              && id -nG vouch-gateway | grep -qw vouch"
    check "postinst: /var/lib/vouch-gateway 0700 vouch-gateway:vouch" \
        test "$(stat -c '%a %U:%G' /var/lib/vouch-gateway)" = "700 vouch-gateway:vouch"
    check "postinst: the unit is enabled" test -L /etc/systemd/system/multi-user.target.wants/vouch-gateway.service
    check "postinst: says it is not configured yet" grep -q 'not configured yet' "$WORK/dpkg-1.log"
    runuser -u vouch-gateway -- "$QEMU" /usr/bin/vouch-gateway init --config /etc/vouch/gateway.toml \
        >"$WORK/pkg-init.log" 2>&1
    check "the service user runs init with the packaged config" \
        test "$(stat -c '%a %U' /var/lib/vouch-gateway/identity.pem 2>/dev/null)" = "600 vouch-gateway"
    echo "# edited" >>/etc/vouch/gateway.toml
    touch /var/lib/vouch-gateway/client.pem                # as root, like a careless installer
    dpkg -i "$deb" >"$WORK/dpkg-2.log" 2>&1 && dpkg-reconfigure vouch-gateway >>"$WORK/dpkg-2.log" 2>&1
    check "reinstall + dpkg-reconfigure: idempotent" test $? -eq 0 || show_log "$WORK/dpkg-2.log"
    check "reinstall: the edited conffile is kept" grep -qx '# edited' /etc/vouch/gateway.toml
    check "postinst: gives root-owned state files to vouch-gateway" \
        test "$(stat -c %U /var/lib/vouch-gateway/client.pem)" = vouch-gateway
    dpkg -r vouch-gateway >"$WORK/dpkg-3.log" 2>&1 && dpkg -i "$deb" >>"$WORK/dpkg-3.log" 2>&1
    local rc=$?
    check "remove keeps the user and the key; install again re-enables" \
        eval "test $rc -eq 0 && test -s /var/lib/vouch-gateway/identity.pem \
              && test -L /etc/systemd/system/multi-user.target.wants/vouch-gateway.service"
    dpkg -P vouch-gateway >"$WORK/dpkg-4.log" 2>&1 && dpkg -P vouch-gateway >>"$WORK/dpkg-4.log" 2>&1
    check "purge (twice): no user, no groups, no state, no unit links, no /etc/vouch" \
        eval "! getent passwd vouch-gateway && ! getent group vouch && ! getent group vouch-gateway \
              && test ! -e /var/lib/vouch-gateway -a ! -e /etc/vouch \
              && test ! -e /etc/systemd/system/multi-user.target.wants/vouch-gateway.service \
              && test ! -e /etc/systemd/system/vouch-gateway.service" || show_log "$WORK/dpkg-4.log"
}
if [ "${VOUCH_CI_DEB_INSTALL:-}" = 1 ] && [ -n "${DEB:-}" ] && [ -f "$DEB" ]; then
    step "4b. the package's maintainer scripts, installed on this machine (VOUCH_CI_DEB_INSTALL=1)"
    deb_install "$DEB" || bad "package install test aborted (above)"
    dpkg-query -W vouch-gateway >/dev/null 2>&1 && dpkg -P vouch-gateway >/dev/null 2>&1
fi

# ----------------------------------------------------------------------------------- 5. D-Bus
# The policy on a private bus that mirrors the system bus's default policy (deny method calls,
# allow replies and signals), BlueZ mocked by python-dbusmock (bluez5 template, run as root as
# bluetoothd is). The policy names the user vouch-gateway; this machine has no such user, so the
# test runs the clients as `nobody` against a copy whose only change is that user name.
dbus_policy() {
    local R=$WORK/dbus
    mkdir -p "$R/policy.d"; chmod 0755 "$R" "$R/policy.d"
    cat >"$R/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$R/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <policy user="root">
    <allow own="org.bluez"/>
    <allow send_destination="org.bluez"/>
    <allow send_destination="org.freedesktop.DBus"/>
  </policy>
  <includedir>$R/policy.d</includedir>
</busconfig>
EOF
    export DBUS_SYSTEM_BUS_ADDRESS=unix:path=$R/bus
    dbus-daemon --config-file="$R/bus.conf" --fork --print-pid >"$R/dbus.pid" 2>"$R/dbus.err" \
        || { bad "private dbus-daemon: $(cat "$R/dbus.err")"; return 1; }
    PIDS+=("$(cat "$R/dbus.pid")")
    /usr/bin/python3 -m dbusmock --system --template bluez5 >"$R/mock.log" 2>&1 &
    PIDS+=("$!")
    if ! wait_for 30 "dbusmock's BlueZ" eval "gdbus call --system -d org.bluez -o /org/bluez \
            -m org.bluez.Mock.AddAdapter hci0 vouch-ci >/dev/null 2>&1"; then
        bad "dbusmock bluez5"; show_log "$R/mock.log"; return 1
    fi
    # One device with one GATT characteristic (the template has none), the Vouch Inbox's UUID.
    local dev=/org/bluez/hci0/dev_AA_BB_CC_DD_EE_01
    local chr=$dev/service0010/char0011
    gdbus call --system -d org.bluez -o /org/bluez -m org.bluez.Mock.AddDevice \
        hci0 AA:BB:CC:DD:EE:01 vouch-dev >/dev/null
    gdbus call --system -d org.bluez -o / -m org.freedesktop.DBus.Mock.AddObject "$chr" \
        org.bluez.GattCharacteristic1 "{'UUID': <'5b3f0002-8e4a-4c6e-9d2a-7f1c0b6e4a10'>}" \
        "[('ReadValue', 'a{sv}', 'ay', 'ret = [1, 1]'), ('WriteValue', 'aya{sv}', '', ''),
          ('StartNotify', '', '', ''), ('StopNotify', '', '', '')]" >/dev/null
    # as_svc OBJECT METHOD ARGS...: call org.bluez as the unprivileged user (output: the answer
    # or the error); allowed = the call went through and succeeded, denied = the bus refused it.
    as_svc() {
        local obj=$1; shift
        setpriv --reuid=nobody --regid=nogroup --clear-groups \
            env DBUS_SYSTEM_BUS_ADDRESS="$DBUS_SYSTEM_BUS_ADDRESS" \
            timeout 20 gdbus call --system -d org.bluez -o "$obj" -m "$@" 2>&1
    }
    allowed() {
        local out
        if out=$(as_svc "$@"); then return 0; fi
        echo "    refused or failed: $out"; return 1
    }
    denied() {
        local out
        out=$(as_svc "$@")
        case "$out" in *org.freedesktop.DBus.Error.AccessDenied*) return 0 ;; esac
        echo "    not refused by the bus: $out"; return 1
    }

    check "D-Bus, without the policy: GetManagedObjects is refused" \
        denied / org.freedesktop.DBus.ObjectManager.GetManagedObjects
    sed 's/user="vouch-gateway"/user="nobody"/' "$DIST/deb/vouch-gateway-dbus.conf" \
        >"$R/policy.d/vouch-gateway.conf"
    gdbus call --system -d org.freedesktop.DBus -o /org/freedesktop/DBus \
        -m org.freedesktop.DBus.ReloadConfig >/dev/null
    check "D-Bus policy: GetManagedObjects lists the adapter" \
        eval "as_svc / org.freedesktop.DBus.ObjectManager.GetManagedObjects | grep -q \"'/org/bluez/hci0'\""
    check "D-Bus policy: Properties.Get Adapter1.Powered" \
        allowed /org/bluez/hci0 org.freedesktop.DBus.Properties.Get org.bluez.Adapter1 Powered
    check "D-Bus policy: Properties.GetAll Device1" \
        allowed "$dev" org.freedesktop.DBus.Properties.GetAll org.bluez.Device1
    check "D-Bus policy: Properties.Set Adapter1.Powered (btleplug powers the adapter on)" \
        allowed /org/bluez/hci0 org.freedesktop.DBus.Properties.Set org.bluez.Adapter1 Powered '<true>'
    check "D-Bus policy: Adapter1.SetDiscoveryFilter" \
        allowed /org/bluez/hci0 org.bluez.Adapter1.SetDiscoveryFilter '@a{sv} {}'
    check "D-Bus policy: Adapter1.StartDiscovery" allowed /org/bluez/hci0 org.bluez.Adapter1.StartDiscovery
    check "D-Bus policy: Adapter1.StopDiscovery" allowed /org/bluez/hci0 org.bluez.Adapter1.StopDiscovery
    check "D-Bus policy: Device1.Connect" allowed "$dev" org.bluez.Device1.Connect
    check "D-Bus policy: GattCharacteristic1.ReadValue" \
        allowed "$chr" org.bluez.GattCharacteristic1.ReadValue '@a{sv} {}'
    check "D-Bus policy: GattCharacteristic1.WriteValue" \
        allowed "$chr" org.bluez.GattCharacteristic1.WriteValue '[byte 1]' '@a{sv} {}'
    check "D-Bus policy: GattCharacteristic1.StartNotify" \
        allowed "$chr" org.bluez.GattCharacteristic1.StartNotify
    check "D-Bus policy: GattCharacteristic1.StopNotify" \
        allowed "$chr" org.bluez.GattCharacteristic1.StopNotify
    check "D-Bus policy: Device1.Disconnect" allowed "$dev" org.bluez.Device1.Disconnect
    check "D-Bus policy refuses Device1.Pair" denied "$dev" org.bluez.Device1.Pair
    check "D-Bus policy refuses Adapter1.RemoveDevice" \
        denied /org/bluez/hci0 org.bluez.Adapter1.RemoveDevice "objectpath '$dev'"
    check "D-Bus policy refuses AgentManager1.RegisterAgent" \
        denied /org/bluez org.bluez.AgentManager1.RegisterAgent "objectpath '/x'" NoInputNoOutput
    check "D-Bus policy refuses LEAdvertisingManager1.RegisterAdvertisement" \
        denied /org/bluez/hci0 org.bluez.LEAdvertisingManager1.RegisterAdvertisement "objectpath '/x'" '@a{sv} {}'
    check "D-Bus policy refuses GattCharacteristic1.AcquireWrite" \
        denied "$chr" org.bluez.GattCharacteristic1.AcquireWrite '@a{sv} {}'
    check "D-Bus policy refuses Introspect" denied / org.freedesktop.DBus.Introspectable.Introspect
    unset DBUS_SYSTEM_BUS_ADDRESS
}
step "5. the D-Bus policy against a mocked BlueZ"
dbus_policy || bad "D-Bus policy checks aborted (above)"

summary
