# What the two package builds (backend/dist/build-deb.sh, gateway/dist/build-deb.sh) share:
# sourced, not run. Both lay out a package root and then call these.
#
#   deb_version ROOT               → VERSION (the workspace's version, "-" the Debian revision
#                                    VOUCH_DEB_REVISION, default 1) and an exported
#                                    SOURCE_DATE_EPOCH (the last commit's time: reproducible)
#   deb_finish NAME ARCH MULTIARCH FALLBACK_DEPENDS PKG STAGE CONTROL OUT
#                                  → conffiles (everything under /etc), Depends from
#                                    dpkg-shlibdeps (FALLBACK_DEPENDS when it cannot run),
#                                    control from the CONTROL template, md5sums, timestamps,
#                                    the .deb in OUT; prints a summary, then the path last.

deb_version() {
    local upstream
    upstream=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' "$1/Cargo.toml")
    [ -n "$upstream" ] || { echo "no version in [workspace.package] of $1/Cargo.toml" >&2; return 1; }
    VERSION="$upstream-${VOUCH_DEB_REVISION:-1}"
    SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$1" log -1 --format=%ct 2>/dev/null || date +%s)}
    export SOURCE_DATE_EPOCH
}

deb_finish() {
    local name=$1 arch=$2 multiarch=$3 fallback=$4 pkg=$5 stage=$6 control=$7 out=$8
    # Everything under /etc is a conffile: dpkg never overwrites an edited one.
    (cd "$pkg" && find etc -type f | sed 's|^|/|' | sort) > "$pkg/DEBIAN/conffiles"
    # Depends on the shared libraries the binary links, as dpkg-shlibdeps computes them from
    # the libraries' symbols files (for arm64, installed through multiarch by
    # build-aarch64.sh); the fixed list when that is not possible.
    local shlibs=
    if command -v dpkg-shlibdeps >/dev/null; then
        mkdir -p "$stage/src/debian"
        printf 'Source: %s\n\nPackage: %s\nArchitecture: %s\n' "$name" "$name" "$arch" \
            > "$stage/src/debian/control"
        shlibs=$(cd "$stage/src" && DEB_HOST_ARCH=$arch DEB_HOST_MULTIARCH=$multiarch \
                 dpkg-shlibdeps -O "$pkg/usr/bin/$name" 2>"$stage/shlibdeps.err" \
                 | sed -n 's/^shlibs:Depends=//p') || true
        [ -n "$shlibs" ] || { echo "dpkg-shlibdeps did not work:"; cat "$stage/shlibdeps.err"; } >&2
    fi
    if [ -z "$shlibs" ]; then
        echo "build-deb: using the fixed Depends list" >&2
        shlibs=$fallback
    fi
    local installed_kb
    installed_kb=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
    sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$arch/" -e "s/@INSTALLED_SIZE@/$installed_kb/" \
        -e "s/@SHLIBS_DEPENDS@/$shlibs/" "$control" > "$pkg/DEBIAN/control"
    (cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
        | xargs -0 md5sum) > "$pkg/DEBIAN/md5sums"
    find "$pkg" -newermt "@$SOURCE_DATE_EPOCH" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    mkdir -p "$out"
    local deb=$out/${name}_${VERSION}_$arch.deb
    dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
    echo "package: $(basename "$deb"), $(stat -c %s "$deb") bytes; Depends: $(sed -n 's/^Depends: //p' "$pkg/DEBIAN/control")"
    echo "$deb"
}
