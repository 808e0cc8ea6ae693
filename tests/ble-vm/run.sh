#!/usr/bin/env bash
# Vouch over the real BlueZ stack, without Bluetooth hardware (issue 9).
#
# A stock Debian kernel boots in QEMU (TCG); BlueZ's btvirt gives it emulated LE
# controllers sharing one virtual radio; real bluetoothd and D-Bus run on top.
# Inside the VM: vouch-backend (SQLite on tmpfs), vouch-gateway with
# [transport.ble] on hci0, reference vouch-peripheral(s) with --connect ble:hciN.
# btvirt is built from Debian's bluez source with one fix (btdev-conn-handles.patch:
# without it a second simultaneous link from one central carries no data).
# Seven scenarios (scenarios.sh, NOTES.md). Prints "N passed, M failed"; exits
# non-zero on any failure. Needs root and apt.
#
# Environment:
#   LAB            scratch directory (default /tmp/vouch-ble-vm); kernel cached here
#   BIN            directory with the three binaries (default: build them, release)
#   SCENARIOS      which scenarios to run (default "1 2 3 4 5 6 7", in that order)
#   PROFILE        cargo profile for the binaries (default release; CI uses debug,
#                  whose dependencies the test build has already compiled)
#   VM_TIMEOUT     seconds for the whole VM run (default 900)
#   BTVIRT_DEBUG   non-empty: btvirt logs every HCI packet to out/btvirt.log
#   QEMU_ACCEL / QEMU_CPU   e.g. "-accel kvm" / host on a host with plain KVM
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export LAB=${LAB:-/tmp/vouch-ble-vm}
START=$(date +%s)
say() { echo "[ble-vm +$(( $(date +%s) - START ))s] $*"; }
mkdir -p "$LAB/out"

say "Debian packages"
pkgs="qemu-system-x86 bluez bluez-test-tools busybox-static kmod libdbus-1-dev pkg-config curl \
      autoconf automake libtool libglib2.0-dev xz-utils patch"
missing=$(for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

say "kernel"
if [ ! -d "$LAB/kroot/boot" ]; then
    kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    rm -rf "$LAB/kpkg" "$LAB/kroot.part"
    mkdir -p "$LAB/kpkg"
    ( cd "$LAB/kpkg" && apt-get download -q "$kpkg" 2>&1 | grep -v 'unsandboxed' || true )
    dpkg-deb -x "$LAB"/kpkg/*.deb "$LAB/kroot.part"
    depmod -b "$LAB/kroot.part" "$(ls "$LAB/kroot.part/lib/modules")"
    mv "$LAB/kroot.part" "$LAB/kroot"
    rm -rf "$LAB/kpkg"
fi
KVER=$(ls "$LAB/kroot/lib/modules")

# btvirt with one fix (btdev-conn-handles.patch): Debian's own cannot carry
# data on a second simultaneous link from one central. Built from Debian's
# source of the installed version, once per version and patch.
BLUEZ_VER=$(dpkg-query -W -f '${Version}' bluez-test-tools | sed 's/-.*//')
PATCH_SUM=$(sha256sum "$HERE/btdev-conn-handles.patch" | cut -c1-12)
BTVIRT="$LAB/btvirt-$BLUEZ_VER-$PATCH_SUM"
if [ ! -x "$BTVIRT" ]; then
    say "btvirt $BLUEZ_VER with the connection-handle fix"
    rm -rf "$LAB/bluez-src" && mkdir -p "$LAB/bluez-src"
    curl -sSfL "http://deb.debian.org/debian/pool/main/b/bluez/bluez_$BLUEZ_VER.orig.tar.xz" |
        tar xJ -C "$LAB/bluez-src" --strip-components=1
    (
        cd "$LAB/bluez-src"
        patch -s -p1 < "$HERE/btdev-conn-handles.patch"
        ./bootstrap > build.log 2>&1
        ./configure --enable-testing --disable-manpages --disable-udev --disable-cups --disable-obex \
            --disable-client --disable-monitor --disable-systemd --disable-tools --disable-datafiles \
            >> build.log 2>&1
        hdrs=$(printf 'h:\n\t@echo $(local_headers)\n' | make -s -f Makefile -f - h)
        make -j"$(nproc)" $hdrs emulator/btvirt >> build.log 2>&1
    ) || { tail -20 "$LAB/bluez-src/build.log"; echo "btvirt build failed"; exit 1; }
    cp "$LAB/bluez-src/emulator/btvirt" "$BTVIRT.part" && mv "$BTVIRT.part" "$BTVIRT"
    rm -rf "$LAB/bluez-src"
fi
"$HERE/vm/mkinitrd.sh" "$LAB/kroot" "$LAB/initrd.gz"

if [ -z "${BIN:-}" ]; then
    PROFILE=${PROFILE:-release}
    say "cargo build (profile $PROFILE, BLE features)"
    case $PROFILE in debug|dev) cprof=dev dir=debug ;; *) cprof=$PROFILE dir=$PROFILE ;; esac
    ( cd "$ROOT" && cargo build --profile "$cprof" -p vouch-backend -p vouch-gateway -p vouch-peripheral \
        --features vouch-gateway/ble,vouch-peripheral/ble )
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$dir
fi
BIN=$(readlink -f "$BIN")

# The VM sees the host's / read-only but mounts its own tmpfs on /tmp, /run,
# /var/tmp and /root, so a clone or a target directory there would be
# invisible: the guest scripts and the binaries go into $LAB, which the VM
# mounts (hard links when on the same file system).
mkdir -p "$LAB/guest"
cp "$HERE/vm/guest-init.sh" "$HERE/scenarios.sh" "$LAB/guest/"
for b in vouch-backend vouch-gateway vouch-peripheral; do
    [ -x "$BIN/$b" ] || { echo "missing $BIN/$b"; exit 1; }
    rm -f "$LAB/guest/$b"
    ln "$BIN/$b" "$LAB/guest/$b" 2>/dev/null || cp "$BIN/$b" "$LAB/guest/$b"
done
BIN=$LAB/guest

say "boot the VM (kernel $KVER)"
rm -f "$LAB/out/"*
cat > "$LAB/guest.env" <<ENV
BIN=$BIN
BTVIRT=$BTVIRT
BTVIRT_DEBUG='${BTVIRT_DEBUG:-}'
SCENARIOS='${SCENARIOS:-1 2 3 4 5 6 7}'
ENV
set +e
timeout "${VM_TIMEOUT:-900}" qemu-system-x86_64 ${QEMU_ACCEL:--accel tcg,thread=multi} -cpu "${QEMU_CPU:-max}" \
    -smp 2 -m 1024 -nodefaults -no-reboot -display none -monitor none -serial stdio \
    -kernel "$LAB/kroot/boot/vmlinuz-$KVER" -initrd "$LAB/initrd.gz" \
    -append "console=ttyS0 quiet panic=-1 LAB=$LAB VM_INIT=$LAB/guest/guest-init.sh VM_SCRIPT=$LAB/guest/scenarios.sh" \
    -fsdev local,id=hostfs,path=/,readonly=on,security_model=none,multidevs=remap \
    -device virtio-9p-pci,fsdev=hostfs,mount_tag=hostfs \
    -fsdev local,id=lab,path="$LAB",security_model=none,multidevs=remap \
    -device virtio-9p-pci,fsdev=lab,mount_tag=lab \
    < /dev/null 2>&1 | tee "$LAB/console.log"
set -e
rc=$(cat "$LAB/out/guest-rc" 2>/dev/null || echo none)
passed=$(grep -c '^PASS' "$LAB/out/results" 2>/dev/null || true)
failed=$(grep -c '^FAIL' "$LAB/out/results" 2>/dev/null || true)
passed=${passed:-0} failed=${failed:-0}
if [ "$rc" != 0 ] && [ "${failed:=0}" = 0 ]; then
    failed=1   # the VM or its setup failed before a scenario could report
    echo "VM run failed before the scenarios finished (guest rc: $rc)"
fi
if [ "$failed" != 0 ]; then
    for f in "$LAB"/out/*.log; do [ -f "$f" ] && { echo "--- $f (tail)"; tail -25 "$f"; }; done
fi
say "done; logs in $LAB/out"
[ -f "$LAB/out/results" ] && cat "$LAB/out/results"
[ -s "$LAB/out/measures" ] && sed 's/^/measured: /' "$LAB/out/measures"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
