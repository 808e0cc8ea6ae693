#!/bin/sh
# PID 1 after switch_root: kernel filesystems, module autoloading from the
# extracted Debian kernel, loopback, the environment the host wrote to
# $LAB/guest.env; runs $VM_SCRIPT, stores its exit status in $LAB/out/guest-rc
# and powers the VM off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# request_module() runs this helper: point modprobe at the extracted kernel tree
cat > /run/vouch-modprobe <<MP
#!/bin/sh
exec /usr/sbin/modprobe -d $LAB/kroot "\$@"
MP
chmod 755 /run/vouch-modprobe
echo /run/vouch-modprobe > /proc/sys/kernel/modprobe
busybox ifconfig lo 127.0.0.1 up
if [ -f "$LAB/guest.env" ]; then set -a; . "$LAB/guest.env"; set +a; fi
mkdir -p "$LAB/out"
echo "vm: userspace at $(cut -d' ' -f1 /proc/uptime)s on $(uname -r)"
sh "$VM_SCRIPT"
rc=$?
echo "$rc" > "$LAB/out/guest-rc"
sync
echo "vm: $VM_SCRIPT exited $rc at $(cut -d' ' -f1 /proc/uptime)s"
echo o > /proc/sysrq-trigger
sleep 30
