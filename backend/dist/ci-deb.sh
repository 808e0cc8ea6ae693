#!/usr/bin/env bash
# CI checks of the backend's Debian packages (backend/dist/build-deb.sh):
#   1. for each architecture with a binary (amd64 from the host build, arm64 from the cross
#      build gateway/dist/build-aarch64.sh made): the package's fields, contents, modes,
#      conffile, maintainer scripts (sh -n), md5sums, the binary (run natively or under
#      qemu-aarch64), the unit (systemd-analyze verify, and security: exposure <= 2.0);
#   2. with CI=true or VOUCH_CI_DEB_INSTALL=1 (throwaway machines only): the amd64 package
#      installed on this machine, so the maintainer scripts run for real: install, init as the
#      service user, the service started from the packaged unit's command line and answering,
#      reinstall + dpkg-reconfigure (idempotent, the edited conffile kept), remove, install
#      again, purge (the data directory kept), purge with VOUCH_PURGE_DATA=yes.
# The last line is "N passed, M failed"; the exit status is non-zero if anything failed.
#
# environment:
#   CARGO_TARGET_DIR          the host target dir (default /var/cache/vouch-target)
#   VOUCH_BACKEND_PROFILE     profile of the host binary to package (default release)
#   VOUCH_AARCH64_TARGET_DIR  the cross build's target dir (default /var/cache/vouch-target-aarch64)
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DIST=$ROOT/backend/dist
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/vouch-target}
export VOUCH_AARCH64_TARGET_DIR=${VOUCH_AARCH64_TARGET_DIR:-/var/cache/vouch-target-aarch64}
export VOUCH_BACKEND_PROFILE=${VOUCH_BACKEND_PROFILE:-release}
WORK=$(mktemp -d /tmp/vouch-ci-deb.XXXXXX)
chmod 0755 "$WORK"
SERVE_PID=
cleanup() {
    if [ -n "$SERVE_PID" ]; then stop_service; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# runuser forks: the signal goes to the backend itself, as systemd would send it.
stop_service() { pkill -TERM -u vouch-backend -x vouch-backend; wait "$SERVE_PID" 2>/dev/null; SERVE_PID=; }

PASSED=0 FAILED=0
step() { printf '\n==== %s (%s)\n' "$*" "$(date -u +%T)"; }
ok()   { PASSED=$((PASSED + 1)); echo "ok   $*"; }
bad()  { FAILED=$((FAILED + 1)); echo "FAIL $*"; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else bad "$name"; return 1; fi; }
show_log() { sed 's/^/    | /' "$1" | tail -n 40; }
# As the service user with a clean environment, as systemd and `sudo -u` run it (the backend
# refuses a VOUCH_* variable that is not one of its settings, like this script's own).
as_service() { runuser -u vouch-backend -- env -i -C / PATH=/usr/sbin:/usr/bin:/sbin:/bin NO_COLOR=1 "$@"; }

# ------------------------------------------------------------------------------ 1. contents
contents() {
    local arch=$1 deb=$2 X=$WORK/x-$1 run=()
    [ "$arch" = arm64 ] && run=(qemu-aarch64-static)
    dpkg-deb -I "$deb" >"$WORK/info-$arch.txt" && dpkg-deb -c "$deb" >"$WORK/contents-$arch.txt"
    mkdir -p "$X/DEBIAN" && dpkg-deb -x "$deb" "$X" && dpkg-deb -e "$deb" "$X/DEBIAN"
    check "$arch: Package vouch-backend, Architecture $arch" \
        eval "grep -qx ' Package: vouch-backend' '$WORK/info-$arch.txt' \
              && grep -qx ' Architecture: $arch' '$WORK/info-$arch.txt'"
    check "$arch: Depends on libc6 and adduser, not on libsqlite3 (built in)" \
        eval "grep -qE '^ Depends: .*libc6 .*adduser' '$WORK/info-$arch.txt' \
              && ! grep -q libsqlite '$WORK/info-$arch.txt'"
    local f
    for f in ./usr/bin/vouch-backend ./usr/lib/systemd/system/vouch-backend.service \
             ./etc/vouch/backend.toml ./usr/share/doc/vouch-backend/copyright \
             ./usr/share/doc/vouch-backend/README.md ./usr/share/man/man1/vouch-backend.1.gz \
             ./usr/share/bash-completion/completions/vouch-backend; do
        check "$arch: contains $f" grep -qE " $f\$" "$WORK/contents-$arch.txt"
    done
    check "$arch: nothing else is installed" \
        test "$(grep -vc '/$' "$WORK/contents-$arch.txt")" = 7
    check "$arch: the manual page is the binary's (man reads it)" \
        eval "zcat '$X/usr/share/man/man1/vouch-backend.1.gz' | grep -q '^.TH vouch-backend 1' \
              && zcat '$X/usr/share/man/man1/vouch-backend.1.gz' | grep -q 'restore'"
    check "$arch: the bash completion knows the verbs" \
        grep -q 'backup' "$X/usr/share/bash-completion/completions/vouch-backend"
    check "$arch: /usr/bin/vouch-backend is root-owned 0755" \
        grep -qE '^-rwxr-xr-x root/root .* \./usr/bin/vouch-backend$' "$WORK/contents-$arch.txt"
    check "$arch: /etc/vouch/backend.toml is the only conffile" \
        test "$(cat "$X/DEBIAN/conffiles")" = /etc/vouch/backend.toml
    check "$arch: the conffile is the template init writes" cmp -s "$X/etc/vouch/backend.toml" "$DIST/backend.toml"
    local s
    for s in postinst prerm postrm; do
        check "$arch: maintainer script $s (executable, set -e, sh -n)" \
            eval "test -x '$X/DEBIAN/$s' && grep -qx 'set -e' '$X/DEBIAN/$s' && sh -n '$X/DEBIAN/$s'"
    done
    check "$arch: md5sums verify" eval "(cd '$X' && md5sum --quiet -c DEBIAN/md5sums)"
    check "$arch: the packaged binary runs (${run[*]:-native}) and prints its version" \
        eval "${run[*]} '$X/usr/bin/vouch-backend' --version | grep -q '^vouch-backend '"
    local unit=$X/usr/lib/systemd/system/vouch-backend.service k
    check "$arch: unit runs serve on /var/lib/vouch-backend with /etc/vouch/backend.toml as vouch-backend" \
        eval "grep -qx 'ExecStart=/usr/bin/vouch-backend serve --data-dir /var/lib/vouch-backend --config /etc/vouch/backend.toml' '$unit' \
              && grep -qx 'User=vouch-backend' '$unit'"
    for k in StateDirectory=vouch-backend StateDirectoryMode=0700 UMask=0077 NoNewPrivileges=yes \
             ProtectSystem=strict CapabilityBoundingSet= Restart=on-failure; do
        check "$arch: unit has $k" grep -qx "$k" "$unit"
    done
    # systemd-analyze checks the ExecStart binary exists: point it at the extracted one.
    sed "s|/usr/bin/vouch-backend|$X/usr/bin/vouch-backend|" "$unit" >"$WORK/vouch-backend.service"
    local v exposure
    if v=$(systemd-analyze verify --man=no "$WORK/vouch-backend.service" 2>&1) && [ -z "$v" ]; then
        ok "$arch: systemd-analyze verify: the unit is clean"
    else
        bad "$arch: systemd-analyze verify: $v"
    fi
    exposure=$(systemd-analyze security --offline=true "$WORK/vouch-backend.service" 2>/dev/null \
               | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    check "$arch: systemd-analyze security: exposure ${exposure:-?} (<= 2.0)" \
        awk -v e="${exposure:-99}" 'BEGIN { exit !(e <= 2.0) }'
}

# ------------------------------------------------------------------------------ 2. install
install_test() {
    local deb=$1 data=/var/lib/vouch-backend
    if dpkg-query -W vouch-backend >/dev/null 2>&1 || getent passwd vouch-backend >/dev/null \
        || [ -e "$data" ] || [ -e /var/backups/vouch-backend ] || [ -e /etc/vouch/backend.toml ]; then
        bad "install test: this machine already has vouch-backend, its user or its files"
        return 1
    fi
    dpkg -i "$deb" >"$WORK/dpkg-1.log" 2>&1
    check "dpkg -i: installs" test $? -eq 0 || show_log "$WORK/dpkg-1.log"
    check "postinst: system user vouch-backend (nologin, home $data)" \
        eval "getent passwd vouch-backend | grep -q ':$data:/usr/sbin/nologin$'"
    check "postinst: $data 0700 vouch-backend:vouch-backend" \
        test "$(stat -c '%a %U:%G' $data)" = "700 vouch-backend:vouch-backend"
    check "postinst: the unit is enabled" test -L /etc/systemd/system/multi-user.target.wants/vouch-backend.service
    check "postinst: says it is not initialized yet" grep -q 'not initialized yet' "$WORK/dpkg-1.log"
    # What the README tells the installer to do, as the service user.
    as_service vouch-backend init --data-dir $data >"$WORK/init.log" 2>&1
    check "init as the service user: keys 0600, owned by vouch-backend" \
        test "$(stat -c '%a %U' $data/ca-key.pem 2>/dev/null)" = "600 vouch-backend" || show_log "$WORK/init.log"
    local token; token=$(sed -n '/^admin token/{n;p}' "$WORK/init.log")
    # The unit's own command line, as its user (no systemd here): it serves and answers.
    local exec; exec=$(sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/vouch-backend.service)
    sed -i 's|^# listen = "127.0.0.1:8443"|listen = "127.0.0.1:18443"|' /etc/vouch/backend.toml
    as_service $exec >"$WORK/serve.log" 2>&1 &
    SERVE_PID=$!
    local up=1
    for _ in $(seq 1 100); do
        curl -fsS --cacert $data/ca.pem -H "Authorization: Bearer $token" \
            https://localhost:18443/v1/admin/peripherals >"$WORK/list.json" 2>/dev/null && { up=0; break; }
        sleep 0.2
    done
    check "the packaged service serves the admin API with the packaged config" test $up -eq 0 \
        || show_log "$WORK/serve.log"
    as_service vouch-backend --data-dir $data backup \
        --to /var/backups/vouch-backend/b1 >"$WORK/backup.log" 2>&1
    check "backup while it serves, as the service user, into /var/backups/vouch-backend (0700)" \
        eval "test -s /var/backups/vouch-backend/b1/vouch.db \
              && test \"\$(stat -c '%a %U' /var/backups/vouch-backend)\" = '700 vouch-backend'" \
        || show_log "$WORK/backup.log"
    stop_service
    check "SIGTERM: it stops cleanly" grep -q 'stopped' "$WORK/serve.log"

    touch $data/stray-root-file                        # as root, like a careless installer
    dpkg -i "$deb" >"$WORK/dpkg-2.log" 2>&1 && dpkg-reconfigure vouch-backend >>"$WORK/dpkg-2.log" 2>&1
    check "reinstall + dpkg-reconfigure: idempotent" test $? -eq 0 || show_log "$WORK/dpkg-2.log"
    check "reinstall: the edited conffile is kept" grep -qx 'listen = "127.0.0.1:18443"' /etc/vouch/backend.toml
    check "postinst: gives root-owned files in the data directory to vouch-backend" \
        test "$(stat -c %U $data/stray-root-file)" = vouch-backend
    dpkg -r vouch-backend >"$WORK/dpkg-3.log" 2>&1 && dpkg -i "$deb" >>"$WORK/dpkg-3.log" 2>&1
    local rc=$?
    check "remove keeps the user and the data; install again re-enables" \
        eval "test $rc -eq 0 && test -s $data/ca-key.pem \
              && test -L /etc/systemd/system/multi-user.target.wants/vouch-backend.service"
    dpkg -P vouch-backend >"$WORK/dpkg-4.log" 2>&1 && dpkg -P vouch-backend >>"$WORK/dpkg-4.log" 2>&1
    check "purge (twice): no user, no unit links, no conffile; the data and the backups are kept and said so" \
        eval "! getent passwd vouch-backend && test -s $data/ca-key.pem \
              && test -s /var/backups/vouch-backend/b1/vouch.db \
              && test \"\$(stat -c %U:%G $data/ca-key.pem)\" = root:root \
              && grep -q 'kept $data' '$WORK/dpkg-4.log' && test ! -e /etc/vouch/backend.toml \
              && test ! -e /etc/systemd/system/multi-user.target.wants/vouch-backend.service" \
        || show_log "$WORK/dpkg-4.log"
    dpkg -i "$deb" >"$WORK/dpkg-5.log" 2>&1 && VOUCH_PURGE_DATA=yes dpkg -P vouch-backend >>"$WORK/dpkg-5.log" 2>&1
    check "install again over the kept data, then purge with VOUCH_PURGE_DATA=yes: nothing left" \
        eval "test ! -e $data -a ! -e /var/backups/vouch-backend && ! getent passwd vouch-backend \
              && ! getent group vouch-backend" \
        || show_log "$WORK/dpkg-5.log"
}

step "the backend's Debian packages (backend/dist/build-deb.sh)"
export VOUCH_DEB_OUT=$WORK/deb
AMD64=
for arch in amd64 arm64; do
    if [ "$arch" = arm64 ] && [ ! -x "$VOUCH_AARCH64_TARGET_DIR/aarch64-unknown-linux-gnu/release/vouch-backend" ]; then
        bad "arm64: no cross-built vouch-backend (run gateway/dist/build-aarch64.sh first)"
        continue
    fi
    if deb=$("$DIST/build-deb.sh" "$arch" | tail -n1) && [ -f "$deb" ]; then
        ok "build-deb.sh $arch -> $(basename "$deb") ($(stat -c %s "$deb") bytes)"
        contents "$arch" "$deb"
        [ "$arch" = amd64 ] && AMD64=$deb
    else
        bad "build-deb.sh $arch"
    fi
done
if [ -n "$AMD64" ] && { [ "${CI:-}" = true ] || [ "${VOUCH_CI_DEB_INSTALL:-}" = 1 ]; }; then
    step "the amd64 package installed on this machine (maintainer scripts for real)"
    install_test "$AMD64" || bad "install test aborted (above)"
    dpkg-query -W vouch-backend >/dev/null 2>&1 && VOUCH_PURGE_DATA=yes dpkg -P vouch-backend >/dev/null 2>&1
fi

echo
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
