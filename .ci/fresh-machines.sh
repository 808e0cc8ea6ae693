#!/usr/bin/env bash
# The operator's walkthrough on two fresh Debian 12 machines, from the two packages and the
# READMEs' commands (issue 19): a backend host (amd64) and a Raspberry Pi (arm64, emulated),
# each a fresh `debootstrap` root booted with its own systemd by `systemd-nspawn`, so the
# packages' maintainer scripts, users, hardened units and journald run for real.
#
#   backend host: apt install the backend .deb; edit listen; `vb init`; systemctl start;
#                 enroll the gateway from its public key file; associate; import the device;
#                 export the anchor bundle                          (backend/README.md)
#   Pi:           apt install the gateway .deb (pulls bluez from Debian); init as the service
#                 user; install client.pem and the CA; set the backend URL; enable --now;
#                 `vouch-gateway status`                            (gateway/dist/README-pi.md)
#   device:       the reference peripheral on this machine: keygen, provision, run over the
#                 gateway's TCP transport (README.md)
# and checks that the device authenticated (device log, gateway journal, backend audit).
#
# Not part of .ci/run (about 10 minutes, most of it building two Debian roots, the arm64 one
# under qemu-user); run it as root on a Debian 12 host:
#   VOUCH_BACKEND_DEB=… VOUCH_GATEWAY_DEB=… VOUCH_PERIPHERAL=… .ci/fresh-machines.sh
# defaults: target/deb/ (backend/dist/build-deb.sh amd64, gateway/dist/build-deb.sh) and
# target/release/vouch-peripheral. The two containers share this machine's network: ports
# 8443 and 7800 on loopback must be free. Work directory: $VOUCH_FRESH_DIR
# (default /var/tmp/vouch-fresh), removed at the end unless VOUCH_FRESH_KEEP=1.
# The last line is "N passed, M failed"; the exit status is 0 only if nothing failed.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${VOUCH_FRESH_DIR:-/var/tmp/vouch-fresh}
BACKEND_DEB=${VOUCH_BACKEND_DEB:-$ROOT/target/deb/vouch-backend_0.1.0-1_amd64.deb}
GATEWAY_DEB=${VOUCH_GATEWAY_DEB:-$ROOT/target/deb/vouch-gateway_0.1.0-1_arm64.deb}
P=${VOUCH_PERIPHERAL:-$ROOT/target/release/vouch-peripheral}
MIRROR=${VOUCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
passed=0 failed=0

check() {
    local what=$1; shift
    if "$@"; then echo "ok   $what"; passed=$((passed + 1)); else echo "FAIL $what"; failed=$((failed + 1)); fi
}
die() { echo "fresh-machines: $*" >&2; echo "0 passed, 1 failed"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, systemd-nspawn)"
for f in "$BACKEND_DEB" "$GATEWAY_DEB" "$P"; do [ -f "$f" ] || die "$f is missing"; done
if ! command -v debootstrap >/dev/null || ! command -v systemd-nspawn >/dev/null \
    || ! command -v qemu-aarch64-static >/dev/null; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends \
        debootstrap systemd-container qemu-user-static >/dev/null || die "apt-get install failed"
fi
# arm64 executables through qemu-user, for the whole Pi root (flag F: the interpreter is
# opened here, so it need not exist inside the root).
[ -d /proc/sys/fs/binfmt_misc/ ] && [ -e /proc/sys/fs/binfmt_misc/register ] \
    || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "no binfmt_misc"
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register \
        || die "cannot register qemu-aarch64 with binfmt_misc"
fi

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        kill -KILL "$pid" 2>/dev/null
    done
    [ "${VOUCH_FRESH_KEEP:-0}" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT
rm -rf "$W" && mkdir -p "$W"

# machine NAME ARCH: a fresh Debian 12 root, booted; `in_NAME CMD` runs CMD inside it.
machine() {
    local name=$1 arch=$2 dir=$W/$1
    echo "== $name ($arch): debootstrap"
    debootstrap --arch="$arch" --variant=minbase \
        --include=systemd,systemd-sysv,dbus,sudo,ca-certificates,adduser \
        bookworm "$dir" "$MIRROR" >"$W/$name-debootstrap.log" 2>&1 \
        || { tail -20 "$W/$name-debootstrap.log"; die "debootstrap $name failed"; }
    echo "$name" >"$dir/etc/hostname"
    echo "127.0.1.1 $name" >>"$dir/etc/hosts"
    systemd-nspawn --register=no --keep-unit --quiet -b -D "$dir" --machine="$name" \
        --hostname="$name" >"$W/$name-console.log" 2>&1 </dev/null &
    pids+=($!)
    local nspawn=$! leader=""
    for _ in $(seq 120); do
        leader=$(pgrep -P "$nspawn" | head -1)
        if [ -n "$leader" ] && nsenter -t "$leader" -a systemctl is-system-running 2>/dev/null \
            | grep -qE 'running|degraded'; then
            break
        fi
        sleep 1
    done
    [ -n "$leader" ] || die "$name did not boot (see $W/$name-console.log)"
    eval "in_$name() { nsenter -t $leader -a -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 bash -c \"cd /root && \$1\"; }"
    echo "== $name booted"
}

machine backend amd64
machine pi arm64
cp "$BACKEND_DEB" "$W/backend/root/"
cp "$GATEWAY_DEB" "$W/pi/root/"
# The backend's name, as DNS would give it to the Pi.
echo "127.0.0.1 backend.example.net" >>"$W/pi/etc/hosts"

VB='vb() { sudo -u vouch-backend vouch-backend --data-dir /var/lib/vouch-backend --config /etc/vouch/backend.toml "$@"; }'

echo "== backend host: install, init, serve (backend/README.md)"
in_backend "apt install -y ./$(basename "$BACKEND_DEB")" >"$W/backend-apt.log" 2>&1
check "backend: apt install of the package" grep -q "not initialized yet" "$W/backend-apt.log"
in_backend "sed -i 's|^# listen = \"127.0.0.1:8443\"|listen = \"0.0.0.0:8443\"|' /etc/vouch/backend.toml"
in_backend "$VB; vb init --san backend.example.net" >"$W/backend-init.log" 2>&1
check "backend: init as the service user prints the admin token" grep -q '^vouch_' "$W/backend-init.log"
in_backend "systemctl start vouch-backend"
for _ in $(seq 60); do
    in_backend "journalctl -u vouch-backend" 2>/dev/null | grep -q "listening on https://0.0.0.0:8443" && break
    sleep 1
done
in_backend "journalctl -u vouch-backend --no-pager" >"$W/backend-journal.log" 2>&1
check "backend: the service listens" grep -q "listening on https://0.0.0.0:8443" "$W/backend-journal.log"

echo "== Pi: install, init (gateway/dist/README-pi.md)"
in_pi "apt install -y ./$(basename "$GATEWAY_DEB")" >"$W/pi-apt.log" 2>&1
check "pi: apt install of the package (bluez from Debian)" grep -q "not configured yet" "$W/pi-apt.log"
in_pi "sudo -u vouch-gateway vouch-gateway init --config /etc/vouch/gateway.toml" >"$W/pi-init.log" 2>&1
check "pi: init writes the identity and its public key file" \
    test -s "$W/pi/var/lib/vouch-gateway/identity.pub.pem"

echo "== operator: enroll the gateway, allow the meters"
cp "$W/pi/var/lib/vouch-gateway/identity.pub.pem" "$W/backend/root/gw-17.pub.pem"
in_backend "$VB; vb enroll gateway --public-key \"\$(cat gw-17.pub.pem)\" --name gw-17 --site plant-1 > gw-17.pem" \
    >"$W/enroll.log" 2>&1
check "backend: enroll gateway writes the certificate to standard output" \
    grep -q "BEGIN CERTIFICATE" "$W/backend/root/gw-17.pem"
in_backend "$VB; vb associate --peripheral group:meters --gateway site:plant-1 --scope telemetry,command" \
    >"$W/associate.log" 2>&1
check "backend: associate" grep -q "group:meters" "$W/associate.log"
in_backend "sudo cat /var/lib/vouch-backend/ca.pem > ca.pem"
cp "$W/backend/root/gw-17.pem" "$W/backend/root/ca.pem" "$W/pi/root/"

echo "== Pi: certificate, CA, backend URL, start"
in_pi "sudo install -o vouch-gateway -g vouch -m 0644 gw-17.pem /var/lib/vouch-gateway/client.pem &&
       sudo install -o root -g root -m 0644 ca.pem /etc/vouch/backend-ca.pem &&
       sed -i 's|^url = .*|url = \"https://backend.example.net:8443\"|' /etc/vouch/gateway.toml &&
       sudo systemctl enable --now vouch-gateway" >"$W/pi-start.log" 2>&1
for _ in $(seq 90); do
    in_pi "journalctl -u vouch-gateway" 2>/dev/null | grep -q "TCP transport listening" && break
    sleep 1
done
in_pi "journalctl -u vouch-gateway --no-pager" >"$W/pi-journal-1.log" 2>&1
check "pi: the service starts (under its hardened unit, emulated arm64)" \
    grep -q "TCP transport listening" "$W/pi-journal-1.log"
in_pi "vouch-gateway status" >"$W/pi-status-1.log" 2>&1
check "pi: status says the backend is reachable" grep -q "^backend reachable" "$W/pi-status-1.log"

echo "== device: keygen, enroll, provision, run (README.md)"
"$P" keygen --dir "$W/device" --group meters >"$W/backend/root/meter-1.ndjson" 2>/dev/null
in_backend "$VB; vb import - < meter-1.ndjson && vb export-anchor > anchor.json" >"$W/import.log" 2>&1
check "backend: import from standard input" grep -qE '^created: +1$' "$W/import.log"
"$P" provision --dir "$W/device" --anchor "$W/backend/root/anchor.json" >/dev/null 2>&1
timeout 120 "$P" run --dir "$W/device" --connect tcp://127.0.0.1:7800 --count 2 >"$W/device.log" 2>&1
check "device: handshake ok through the packaged gateway and backend" grep -q "handshake ok (full" "$W/device.log"
in_pi "journalctl -u vouch-gateway --no-pager" >"$W/pi-journal-2.log" 2>&1
check "pi: session established" grep -q "session established" "$W/pi-journal-2.log"
in_backend "$VB; vb --json audit query --limit 1000" >"$W/audit.json" 2>&1
check "backend: the vouch is in the audit log" grep -q '"vouch"' "$W/audit.json"
in_backend "$VB; vb audit verify" >"$W/verify.log" 2>&1
check "backend: audit verify" grep -q "intact" "$W/verify.log"
for m in backend:vouch-backend pi:vouch-gateway; do
    "in_${m%%:*}" "systemd-analyze security ${m#*:} --no-pager" >"$W/${m%%:*}-security.log" 2>&1
    check "${m%%:*}: systemd-analyze security ${m#*:} says OK" grep -qE 'Overall exposure level.*OK' "$W/${m%%:*}-security.log"
done
[ "$failed" = 0 ] || for f in "$W"/*.log; do echo "--- $f"; tail -15 "$f"; done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
