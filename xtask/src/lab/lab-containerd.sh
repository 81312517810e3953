#!/bin/sh
# lab-containerd: start containerd in the lab's dom0 and wait until it answers; the one
# command a job (or `cargo xtask lab shell`) runs before `ctr`. containerd runs in the
# background with the CRI plugin off (no Kubernetes here), its root and state on tmpfs,
# and its log in /var/log/containerd.log. Its snapshotter is `native` (copies, no
# overlayfs module in dom0): dom0's init exports CONTAINERD_SNAPSHOTTER=native, which
# ctr reads (but not its `image mount`, which unpacks for overlayfs whatever it is told:
# `ctr container create` and `ctr snapshots mounts` show a rootfs instead). Runtimes are
# found on PATH: `--runtime io.containerd.lightvm.v1` runs
# /usr/local/bin/containerd-shim-lightvm-v1.
# Exit status 0 once `ctr version` answers (at once if containerd already runs), 1 if
# containerd is missing, exits, or does not answer within LAB_CONTAINERD_TIMEOUT
# seconds (default 120).
set -u
config=/etc/containerd/config.toml
log=/var/log/containerd.log
timeout=${LAB_CONTAINERD_TIMEOUT:-120}

if ctr version >/dev/null 2>&1; then
	echo "lab-containerd: containerd already answers"
	exit 0
fi
if [ ! -x /usr/bin/containerd ]; then
	echo "lab-containerd: /usr/bin/containerd is missing: containerd's disk (serial lab-containerd) is not mounted at /usr/lib/lab-containerd" >&2
	exit 1
fi
mounted() { grep -q " $1 " /proc/mounts; }
mkdir -p /etc/containerd /var/lib/containerd /run/containerd /sys/fs/cgroup
# The initramfs root is no place for snapshots: a tmpfs of their own.
mounted /var/lib/containerd || mount -t tmpfs -o mode=0711 tmpfs /var/lib/containerd || exit 1
# cgroup v2, as on any systemd host (containerd and shims look for it).
mounted /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup ||
	echo "lab-containerd: no cgroup2 at /sys/fs/cgroup" >&2
cat >$config <<EOF
# Written by lab-containerd.
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
# CRI off; the snapshotters that cannot work here off, so they leave no errors.
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.overlayfs",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "/run/containerd/containerd.sock"
EOF
start=$(cut -d' ' -f1 /proc/uptime)
containerd --config $config >>$log 2>&1 &
pid=$!
tries=0
until ctr version >/dev/null 2>&1; do
	if ! kill -0 $pid 2>/dev/null; then
		echo "lab-containerd: containerd exited; the end of $log:" >&2
		tail -n 20 $log >&2
		exit 1
	fi
	tries=$((tries + 1))
	if [ $tries -gt $((timeout * 5)) ]; then
		echo "lab-containerd: containerd (pid $pid) does not answer after ${timeout} s; the end of $log:" >&2
		tail -n 20 $log >&2
		exit 1
	fi
	sleep 0.2
done
now=$(cut -d' ' -f1 /proc/uptime)
echo "lab-containerd: containerd (pid $pid) answers after $(awk "BEGIN { printf \"%.2f\", $now - $start }") s; log in $log"
