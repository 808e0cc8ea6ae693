#!/bin/sh
# mkinitrd.sh KROOT OUT
# A tiny initramfs for the Vouch BLE VM: static BusyBox, the modules needed to
# reach a virtio-9p root (loaded in modules.dep order), and vm/init as /init.
set -eu
KROOT=$1 OUT=$2
SELF=$(cd "$(dirname "$0")" && pwd)
KVER=$(ls "$KROOT/lib/modules")
MODDIR=$KROOT/lib/modules/$KVER
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/bin" "$STAGE/proc" "$STAGE/sys" "$STAGE/dev" "$STAGE/root" "$STAGE/ko"
cp /bin/busybox "$STAGE/bin/busybox"
install -m 755 "$SELF/init" "$STAGE/init"
: > "$STAGE/ko/load-order"
for want in virtio_pci 9pnet_virtio 9p; do
    entry=$(grep -E "/$want\.ko(\.[a-z]+)?:" "$MODDIR/modules.dep")
    # modules.dep lists dependencies so that the last one must be loaded first.
    deps=$(printf '%s\n' ${entry#*:} | tac)
    for path in $deps "${entry%%:*}"; do
        name=$(basename "$path")
        if ! grep -qxF "$name" "$STAGE/ko/load-order"; then
            cp "$MODDIR/$path" "$STAGE/ko/"
            echo "$name" >> "$STAGE/ko/load-order"
        fi
    done
done
( cd "$STAGE" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 ) > "$OUT"
