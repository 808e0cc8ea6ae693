#!/usr/bin/env bash
# Builds the Debian package of the backend: vouch-backend_<version>_<arch>.deb, for amd64
# (from the host build) or arm64 (from gateway/dist/build-aarch64.sh's cross build), with
# plain dpkg-deb, as gateway/dist/build-deb.sh does for the gateway.
#
# usage: backend/dist/build-deb.sh amd64|arm64 [path/to/vouch-backend]
#
# environment:
#   CARGO_TARGET_DIR          amd64: where the host build put the binary (default target)
#   VOUCH_BACKEND_PROFILE     amd64: release (default) or debug
#   VOUCH_AARCH64_TARGET_DIR  arm64: where build-aarch64.sh put it (default
#                             /var/cache/vouch-target-aarch64)
#   VOUCH_DEB_OUT             output directory (default: target/deb in the clone)
#   VOUCH_DEB_REVISION        Debian revision (default 1): the version is <workspace version>-<rev>
#
# Layout of the package:
#   /usr/bin/vouch-backend                           the service and the operator CLI (stripped)
#   /usr/lib/systemd/system/vouch-backend.service    hardened unit
#   /etc/vouch/backend.toml                          every setting, commented out: a conffile
#   /usr/share/doc/vouch-backend/{README.md,copyright}
#   DEBIAN/{control,conffiles,md5sums,postinst,prerm,postrm}
# The last line printed is the path of the .deb.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DIST=$ROOT/backend/dist
ARCH=${1:-}
die() { echo "build-deb: $*" >&2; exit 1; }

case "$ARCH" in
amd64)
    EXE=${2:-${CARGO_TARGET_DIR:-$ROOT/target}/${VOUCH_BACKEND_PROFILE:-release}/vouch-backend}
    STRIP=strip; MULTIARCH=x86_64-linux-gnu; MACHINE='x86-64' ;;
arm64)
    EXE=${2:-${VOUCH_AARCH64_TARGET_DIR:-/var/cache/vouch-target-aarch64}/aarch64-unknown-linux-gnu/release/vouch-backend}
    STRIP=aarch64-linux-gnu-strip; MULTIARCH=aarch64-linux-gnu; MACHINE='ARM aarch64' ;;
*) die "usage: $0 amd64|arm64 [path/to/vouch-backend]" ;;
esac
OUT=${VOUCH_DEB_OUT:-$ROOT/target/deb}

for tool in dpkg-deb "$STRIP" file; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done
[ -x "$EXE" ] || die "$EXE not found: build it first (cargo build --release -p vouch-backend)"
file -b "$EXE" | grep -q "$MACHINE" || die "$EXE is not a $ARCH executable: $(file -b "$EXE")"

upstream=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' "$ROOT/Cargo.toml")
[ -n "$upstream" ] || die "no version in [workspace.package] of Cargo.toml"
VERSION="$upstream-${VOUCH_DEB_REVISION:-1}"
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
PKG=$STAGE/vouch-backend
umask 022

install -d "$PKG/DEBIAN" "$PKG/usr/bin" "$PKG/usr/lib/systemd/system" "$PKG/etc/vouch" \
    "$PKG/usr/share/doc/vouch-backend"
"$STRIP" --strip-all --remove-section=.comment -o "$PKG/usr/bin/vouch-backend" "$EXE"
chmod 0755 "$PKG/usr/bin/vouch-backend"
install -m 0644 "$DIST/deb/vouch-backend.service" "$PKG/usr/lib/systemd/system/vouch-backend.service"
# The settings file `init` also writes into the data directory (the binary embeds it).
install -m 0644 "$DIST/backend.toml" "$PKG/etc/vouch/backend.toml"
# One copyright file for the project's packages.
install -m 0644 "$ROOT/gateway/dist/deb/copyright" "$PKG/usr/share/doc/vouch-backend/copyright"
install -m 0644 "$ROOT/backend/README.md" "$PKG/usr/share/doc/vouch-backend/README.md"
for s in postinst prerm postrm; do
    install -m 0755 "$DIST/deb/$s" "$PKG/DEBIAN/$s"
done
(cd "$PKG" && find etc -type f | sed 's|^|/|' | sort) > "$PKG/DEBIAN/conffiles"

# Depends: what dpkg-shlibdeps computes from the linked libraries' symbols files; a fixed
# list when that is not possible (the backend links only glibc and libgcc: SQLite is built in).
shlibs=
if command -v dpkg-shlibdeps >/dev/null; then
    mkdir -p "$STAGE/src/debian"
    printf 'Source: vouch-backend\n\nPackage: vouch-backend\nArchitecture: %s\n' "$ARCH" \
        > "$STAGE/src/debian/control"
    shlibs=$(cd "$STAGE/src" && DEB_HOST_ARCH=$ARCH DEB_HOST_MULTIARCH=$MULTIARCH \
             dpkg-shlibdeps -O "$PKG/usr/bin/vouch-backend" 2>"$STAGE/shlibdeps.err" \
             | sed -n 's/^shlibs:Depends=//p') || true
    [ -n "$shlibs" ] || { echo "dpkg-shlibdeps did not work:"; cat "$STAGE/shlibdeps.err"; } >&2
fi
if [ -z "$shlibs" ]; then
    echo "build-deb: using the fixed Depends list" >&2
    shlibs="libc6 (>= 2.34), libgcc-s1 (>= 4.2)"
fi

installed_kb=$(du -sk --exclude=DEBIAN "$PKG" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@INSTALLED_SIZE@/$installed_kb/" \
    -e "s/@SHLIBS_DEPENDS@/$shlibs/" "$DIST/deb/control" > "$PKG/DEBIAN/control"
(cd "$PKG" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
    | xargs -0 md5sum) > "$PKG/DEBIAN/md5sums"
find "$PKG" -newermt "@$SOURCE_DATE_EPOCH" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$OUT"
DEB=$OUT/vouch-backend_${VERSION}_$ARCH.deb
dpkg-deb --root-owner-group -Zxz --build "$PKG" "$DEB" >/dev/null
echo "package: $(basename "$DEB"), $(stat -c %s "$DEB") bytes; Depends: $(sed -n 's/^Depends: //p' "$PKG/DEBIAN/control")"
echo "$DEB"
