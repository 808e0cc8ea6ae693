#!/usr/bin/env bash
# Cross-builds the Raspberry Pi binaries (aarch64-unknown-linux-gnu: Raspberry Pi OS 64-bit,
# Debian arm64) on a Debian 12 (bookworm) x86_64 host:
#
#   vouch-gateway     with --features ble (btleplug central: BlueZ over D-Bus, libdbus-1-3)
#   vouch-peripheral  the reference device (TCP transport)
#   vouch-backend     the backend, for its arm64 .deb (backend/dist/build-deb.sh arm64)
#
# The toolchain is Debian's own rustc-web/cargo-web, with the arm64 standard library from
# multiarch (libstd-rust-web-dev:arm64), aarch64-linux-gnu-gcc as the linker and C compiler
# (ring, aws-lc and friends) and libdbus-1-dev:arm64 found through aarch64-linux-gnu-pkg-config.
# rustup is not used and not touched: the host build (rustup, ~/.cargo/bin first in PATH,
# CARGO_TARGET_DIR) keeps its toolchain and its target directory.
#
# usage: gateway/dist/build-aarch64.sh            (run as root, or with packages already there)
#
# environment:
#   VOUCH_AARCH64_TARGET_DIR  target directory, outside the clone so repeated CI runs stay warm
#                             (default /var/cache/vouch-target-aarch64)
#   VOUCH_RUSTC_WEB_VERSION   Debian version of rustc-web to use (default: the one installed if
#                             amd64 std, arm64 std and rustc-web agree; otherwise the newest one
#                             the archive publishes for both amd64 and arm64)
#   VOUCH_NO_APT=1            never call apt-get; fail if a package is missing
#
# Prints the toolchain, the build time, the glibc the binaries need, and their sizes; the last
# line is "aarch64 build: OK in N s". Exit status non-zero on any failure.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=aarch64-unknown-linux-gnu
TDIR=${VOUCH_AARCH64_TARGET_DIR:-/var/cache/vouch-target-aarch64}
# Raspberry Pi OS bookworm has glibc 2.36: nothing newer may be referenced.
MAX_GLIBC=2.36
say() { printf '\n-- [%s] %s\n' "$(date -u +%T)" "$*"; }
die() { echo "build-aarch64: $*" >&2; exit 1; }

# ------------------------------------------------------------------------------ packages
# Everything but the Rust packages, whose versions must agree (below).
PKGS=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu pkg-config
      libdbus-1-dev libdbus-1-dev:arm64 file)

installed_version() {   # the installed version of a package, or nothing
    { dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null || true; } \
        | awk '$1 == "ii" { print $2 }'
}
apt_updated=
apt_update() {
    [ -n "$apt_updated" ] && return 0
    [ "${VOUCH_NO_APT:-}" = 1 ] && die "packages missing and VOUCH_NO_APT=1"
    say "apt-get update"
    apt-get update -q
    apt_updated=1
}

say "packages: arm64 multiarch, Debian's rustc-web with the arm64 std, cross gcc, libdbus-1 for arm64"
export DEBIAN_FRONTEND=noninteractive
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    [ "${VOUCH_NO_APT:-}" = 1 ] && die "arm64 is not a dpkg architecture and VOUCH_NO_APT=1"
    dpkg --add-architecture arm64
    apt_updated=          # the arm64 indexes are not there yet
    apt_update
fi

# The Rust version. libstd-rust-web-dev is Multi-Arch: same, so its amd64 and arm64 copies must
# be the very same version, and rustc-web/cargo-web must match them.
V=${VOUCH_RUSTC_WEB_VERSION:-}
if [ -z "$V" ]; then
    a=$(installed_version libstd-rust-web-dev:amd64)
    b=$(installed_version libstd-rust-web-dev:arm64)
    r=$(installed_version rustc-web)
    c=$(installed_version cargo-web)
    if [ -n "$a" ] && [ "$a" = "$b" ] && [ "$a" = "$r" ] && [ "$a" = "$c" ]; then
        V=$a
    else
        apt_update
        # The newest version published for both architectures (a security upload can reach the
        # mirror for amd64 before its arm64 build does).
        madison() { apt-cache madison "$1" | awk '{ print $3 }' | sort -u; }
        V=$(comm -12 <(madison libstd-rust-web-dev:amd64) <(madison libstd-rust-web-dev:arm64) \
            | sort -V | tail -n1)
        [ -n "$V" ] || die "no libstd-rust-web-dev version is published for both amd64 and arm64"
    fi
fi
PKGS+=("rustc-web=$V" "cargo-web=$V" "libstd-rust-web-dev:amd64=$V" "libstd-rust-web-dev:arm64=$V")

missing=()
for p in "${PKGS[@]}"; do
    name=${p%%=*}
    want=${p#*=}; [ "$want" = "$p" ] && want=
    have=$(installed_version "$name")
    if [ -z "$have" ] || { [ -n "$want" ] && [ "$have" != "$want" ]; }; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "to install: ${missing[*]}"
    apt_update
    # --allow-downgrades: a pinned VOUCH_RUSTC_WEB_VERSION may be older than what is installed.
    apt-get install -y -q --no-install-recommends --allow-downgrades "${missing[@]}"
else
    echo "all present (rustc-web $V)"
fi

# ------------------------------------------------------------------------------ toolchain
# Debian's toolchain by absolute path. The rustup proxies in ~/.cargo/bin come first in PATH and
# their rustc has no aarch64 std, so RUSTC must be set for /usr/bin/cargo (it is also what cargo
# hands to build scripts). Nothing of the host build's environment may leak in.
unset CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR CARGO_BUILD_TARGET RUSTFLAGS CARGO_ENCODED_RUSTFLAGS \
      RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER RUSTUP_TOOLCHAIN RUSTDOCFLAGS
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
CARGO=/usr/bin/cargo
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64-static
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export PKG_CONFIG_aarch64_unknown_linux_gnu=aarch64-linux-gnu-pkg-config
export PKG_CONFIG_ALLOW_CROSS=1
export CARGO_TERM_COLOR=never

rustc_v=$("$RUSTC" -V)
echo "$rustc_v"; "$CARGO" -V
"$RUSTC" --print sysroot >/dev/null
[ -d "$("$RUSTC" --print sysroot)/lib/rustlib/$TARGET/lib" ] \
    || die "Debian's rustc has no $TARGET std (libstd-rust-web-dev:arm64 missing?)"

# The workspace's declared minimum Rust (every manifest that declares one) must be satisfied by
# this toolchain: CI builds with exactly this rustc, so the MSRV is a promise we test.
have_rust=$(echo "$rustc_v" | awk '{ print $2 }' | sed 's/-.*//')
need_rust=$(grep -hE '^rust-version *= *"' "$ROOT"/Cargo.toml "$ROOT"/*/Cargo.toml \
            | sed -E 's/.*"([0-9.]+)".*/\1/' | sort -V | tail -n1)
[ -n "$need_rust" ] || die "no rust-version declared in the workspace"
if [ "$(printf '%s\n' "$need_rust" "$have_rust" | sort -V | head -n1)" != "$need_rust" ]; then
    die "the workspace declares rust-version $need_rust but Debian's rustc is $have_rust"
fi
echo "rust-version: the workspace declares $need_rust; Debian's rustc is $have_rust: satisfied"

# ------------------------------------------------------------------------------ build
say "cargo build --release --locked --target $TARGET (target dir $TDIR)"
mkdir -p "$TDIR"
cd "$ROOT"
t0=$(date +%s)
"$CARGO" build --release --locked --target "$TARGET" --target-dir "$TDIR" \
    -p vouch-gateway -p vouch-backend --features vouch-gateway/ble \
    --bin vouch-gateway --bin vouch-backend
# The peripheral on its own: built together with the backend, Cargo would unify vouch-proto's
# features and link the backend's aws-lc provider into it; a device has only the dalek one.
"$CARGO" build --release --locked --target "$TARGET" --target-dir "$TDIR" \
    -p vouch-peripheral --bin vouch-peripheral
t1=$(date +%s)
build_s=$((t1 - t0))
echo "cross build: ${build_s} s"

# ------------------------------------------------------------------------------ checks
OUT="$TDIR/$TARGET/release"
for bin in vouch-gateway vouch-peripheral vouch-backend; do
    exe="$OUT/$bin"
    [ -x "$exe" ] || die "$exe was not built"
    file -b "$exe" | grep -q 'ARM aarch64' || die "$exe is not an aarch64 executable: $(file -b "$exe")"
    glibc=$(aarch64-linux-gnu-objdump -T "$exe" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' \
            | sort -Vu | tail -n1)
    if [ "$(printf '%s\n' "$glibc" "$MAX_GLIBC" | sort -V | tail -n1)" != "$MAX_GLIBC" ]; then
        die "$bin needs glibc $glibc; Raspberry Pi OS bookworm has $MAX_GLIBC"
    fi
    needed=$(aarch64-linux-gnu-readelf -d "$exe" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' \
             | tr '\n' ' ')
    size=$(stat -c %s "$exe")
    tmp=$(mktemp); aarch64-linux-gnu-strip -o "$tmp" "$exe"; stripped=$(stat -c %s "$tmp"); rm -f "$tmp"
    printf 'binary %-16s %9d bytes (%s MB), stripped %9d bytes (%s MB); glibc >= %s; needs %s\n' \
        "$bin" "$size" "$(awk "BEGIN { printf \"%.1f\", $size / 1e6 }")" \
        "$stripped" "$(awk "BEGIN { printf \"%.1f\", $stripped / 1e6 }")" "$glibc" "$needed"
done
if aarch64-linux-gnu-nm "$OUT/vouch-peripheral" 2>/dev/null | grep -qi 'aws_lc'; then
    die "vouch-peripheral links aws-lc: the device must have the dalek provider only"
fi
if ! aarch64-linux-gnu-readelf -d "$OUT/vouch-gateway" | grep -q 'libdbus-1.so.3'; then
    die "vouch-gateway does not link libdbus-1: was it built without --features ble?"
fi
echo "binaries: $OUT/vouch-gateway $OUT/vouch-peripheral $OUT/vouch-backend"
echo "aarch64 build: OK in ${build_s} s"
