#!/usr/bin/env bash
# Builds the Debian package of the gateway for Raspberry Pi OS 64-bit / Debian arm64:
#   vouch-gateway_<version>_arm64.deb
# from the aarch64 binary that build-aarch64.sh made, with plain dpkg-deb (no debian/ source
# package, no debhelper: the package is a binary, a unit, a D-Bus policy, a conffile and three
# maintainer scripts, all in gateway/dist/deb/).
#
# usage: gateway/dist/build-deb.sh [path/to/aarch64/vouch-gateway]
#
# environment:
#   VOUCH_AARCH64_TARGET_DIR  where build-aarch64.sh put the binary (default
#                             /var/cache/vouch-target-aarch64)
#   VOUCH_DEB_OUT             output directory (default: target/deb in the clone)
#   VOUCH_DEB_REVISION        Debian revision (default 1): the version is <workspace version>-<rev>
#
# Layout of the package:
#   /usr/bin/vouch-gateway                           the daemon (stripped)
#   /usr/lib/systemd/system/vouch-gateway.service    hardened unit
#   /usr/share/dbus-1/system.d/vouch-gateway.conf    what the service user may ask of BlueZ
#   /etc/vouch/gateway.toml                          the example configuration, a conffile
#   /usr/share/doc/vouch-gateway/{README-pi.md,copyright}
#   DEBIAN/{control,conffiles,md5sums,postinst,prerm,postrm}
# The last line printed is the path of the .deb.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../../host/dist/deb.sh
. "$ROOT/host/dist/deb.sh"
DIST=$ROOT/gateway/dist
TARGET=aarch64-unknown-linux-gnu
TDIR=${VOUCH_AARCH64_TARGET_DIR:-/var/cache/vouch-target-aarch64}
EXE=${1:-$TDIR/$TARGET/release/vouch-gateway}
OUT=${VOUCH_DEB_OUT:-$ROOT/target/deb}
ARCH=arm64
die() { echo "build-deb: $*" >&2; exit 1; }

for tool in dpkg-deb aarch64-linux-gnu-strip aarch64-linux-gnu-readelf file; do
    command -v "$tool" >/dev/null || die "$tool is missing (run gateway/dist/build-aarch64.sh first)"
done
[ -x "$EXE" ] || die "$EXE not found: run gateway/dist/build-aarch64.sh first"
file -b "$EXE" | grep -q 'ARM aarch64' || die "$EXE is not an aarch64 executable"
aarch64-linux-gnu-readelf -d "$EXE" | grep -q 'libdbus-1.so.3' \
    || die "$EXE has no BLE support (built without --features ble?)"

# Version: the workspace's, plus the Debian revision.
deb_version "$ROOT" || die "cannot tell the version"

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
PKG=$STAGE/vouch-gateway
umask 022

install -d "$PKG/DEBIAN" "$PKG/usr/bin" "$PKG/usr/lib/systemd/system" \
    "$PKG/usr/share/dbus-1/system.d" "$PKG/etc/vouch" "$PKG/usr/share/doc/vouch-gateway"
# Debian ships stripped binaries; the debug info stays in the target dir (release has debug = 1).
aarch64-linux-gnu-strip --strip-all --remove-section=.comment -o "$PKG/usr/bin/vouch-gateway" "$EXE"
chmod 0755 "$PKG/usr/bin/vouch-gateway"
install -m 0644 "$DIST/deb/vouch-gateway.service" "$PKG/usr/lib/systemd/system/vouch-gateway.service"
install -m 0644 "$DIST/deb/vouch-gateway-dbus.conf" "$PKG/usr/share/dbus-1/system.d/vouch-gateway.conf"
# The example configuration is the one the binary embeds (`vouch-gateway example-config`);
# its paths are already the package's (/var/lib/vouch-gateway, /run/vouch-gateway, /etc/vouch).
install -m 0644 "$DIST/gateway.toml" "$PKG/etc/vouch/gateway.toml"
install -m 0644 "$DIST/deb/copyright" "$PKG/usr/share/doc/vouch-gateway/copyright"
install -m 0644 "$DIST/README-pi.md" "$PKG/usr/share/doc/vouch-gateway/README-pi.md"
for s in postinst prerm postrm; do
    install -m 0755 "$DIST/deb/$s" "$PKG/DEBIAN/$s"
done
deb_finish vouch-gateway "$ARCH" aarch64-linux-gnu "libc6 (>= 2.34), libdbus-1-3 (>= 1.9.14), libgcc-s1 (>= 4.2)" "$PKG" "$STAGE" "$DIST/deb/control" "$OUT"
