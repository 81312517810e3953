#!/bin/sh
# run-chaos.sh KERNEL MEMORY_MIB [ARG...]
#
# run-guest.sh with chaos instead of xl: boot one PV guest with `chaos create
# --console`, stream its console to stdout from the first byte, and exit with how it
# ended, in run-guest.sh's statuses: 0 poweroff, 2 crash, 3 reboot, 4
# suspend/watchdog/soft_reset, 6 destroyed from outside (`chaos destroy`), 1 failure
# (reason on stderr), 130/143/129 stopped by SIGINT/SIGTERM/SIGHUP (chaos destroys the
# guest). chaos itself says how the guest ended on stderr ("… shut down: crash (reason
# code 3)") and exits 0/3/4/5/6 for it (5 = crash), 2 for a configuration error.
#
# The guest gets one vif on xenbr0 if dom0 has that bridge (xendevd attaches it).
# Optional environment, as for run-guest.sh:
#   RUN_GUEST_NAME  the domain's name (default xtask-KERNEL-PID-TIME)
#   RUN_GUEST_MAC   the vif's MAC address (default: chaos picks a random one)
#   RUN_GUEST_IP    the vif's IPv4 address, for the back end's records (optional)
#   RUN_GUEST_DISKS disks separated by spaces, each TYPE:SOURCE,VDEV,MODE with TYPE phy
#                   (SOURCE a block device of dom0) or file (SOURCE an image file,
#                   which xendevd puts a loop device in front of), VDEV xvda…xvdz, MODE
#                   w or r. A file SOURCE that is a block device (the lab's disks from
#                   the host are virtio disks of dom0) is copied into an image file
#                   first, which the guest gets as a file-backed disk; after the guest
#                   ends, a w image is copied back to the device and an r image must be
#                   unchanged (status 1 if not).
#   RUN_GUEST_DEV_METHOD  xenstore (default) or noxs: chaos's device method
#   CHAOS           the chaos binary (default: chaos on PATH)
set -u

if [ $# -lt 2 ]; then
	echo "usage: $0 KERNEL MEMORY_MIB [ARG...]" >&2
	exit 1
fi
kernel=$1
memory=$2
shift 2
name=${RUN_GUEST_NAME:-xtask-$(basename "$kernel")-$$-$(date +%s)}
mac=${RUN_GUEST_MAC:-}
ip=${RUN_GUEST_IP:-}
chaos=${CHAOS:-chaos}
dev_method=${RUN_GUEST_DEV_METHOD:-xenstore}
case "$dev_method" in
xenstore | noxs) ;;
*)
	echo "run-chaos: RUN_GUEST_DEV_METHOD '$dev_method' is neither xenstore nor noxs" >&2
	exit 1
	;;
esac
case "$kernel$name$mac$ip$*" in
*\"* | *\\*)
	echo "run-chaos: quotes and backslashes cannot go into a chaos config: $name $kernel $*" >&2
	exit 1
	;;
esac
case "${RUN_GUEST_NAME:-}$mac$ip" in
*[!A-Za-z0-9_.:-]*)
	echo "run-chaos: RUN_GUEST_NAME '$name', RUN_GUEST_MAC '$mac' or RUN_GUEST_IP '$ip' has characters other than A-Z a-z 0-9 _ . : -" >&2
	exit 1
	;;
esac

dir=$(mktemp -d /tmp/run-chaos.XXXXXX) || exit 1
chaos_pid=
# Staged images: "DEVICE IMAGE MODE" per line, copied back or checked after the guest.
: >"$dir/staged"

cleanup() {
	rm -rf "$dir"
}

fail() {
	echo "run-chaos: $*" >&2
	cleanup
	exit 1
}

interrupted() {
	# chaos destroys the guest on SIGTERM and exits 143 (130 for SIGINT).
	if [ -n "$chaos_pid" ]; then
		echo "run-chaos: $1: chaos destroys $name" >&2
		kill -TERM "$chaos_pid" 2>/dev/null
		wait "$chaos_pid"
	fi
	cleanup
	exit "$2"
}
trap 'interrupted SIGINT 130' INT
trap 'interrupted SIGTERM 143' TERM
trap 'interrupted SIGHUP 129' HUP

[ -f "$kernel" ] || fail "no guest image at $kernel"
command -v "$chaos" >/dev/null 2>&1 || fail "no chaos binary ($chaos)"

vifs=
if [ -d /sys/class/net/xenbr0/bridge ]; then
	vifs="{\"bridge\": \"xenbr0\"${mac:+, \"mac\": \"$mac\"}${ip:+, \"ip\": \"$ip\"}}"
else
	echo "run-chaos: dom0 has no bridge xenbr0: the guest gets no network interface" >&2
fi

vbds=
n=0
for spec in ${RUN_GUEST_DISKS:-}; do
	case "$spec" in
	phy:/*,xvd[a-z],w | phy:/*,xvd[a-z],r | file:/*,xvd[a-z],w | file:/*,xvd[a-z],r) ;;
	*) fail "disk spec '$spec' in RUN_GUEST_DISKS is not phy|file:SOURCE,xvdX,w|r" ;;
	esac
	type=${spec%%:*}
	rest=${spec#*:}
	source=${rest%%,*}
	rest=${rest#*,}
	vdev=${rest%%,*}
	mode=${rest#*,}
	case "$source" in
	*[!A-Za-z0-9_./:-]*) fail "disk source '$source' has characters other than A-Z a-z 0-9 _ . / : -" ;;
	esac
	[ -e "$source" ] || fail "disk source $source does not exist (disk spec '$spec')"
	target=$(readlink -f "$source")
	if [ "$type" = file ] && [ -b "$target" ]; then
		image="$dir/disk-$n.img"
		dd if="$target" of="$image" bs=1M 2>/dev/null || fail "cannot copy $target into $image"
		[ "$mode" = r ] && md5sum "$image" | cut -d' ' -f1 >"$image.md5"
		echo "$target $image $mode" >>"$dir/staged"
		target=$image
	fi
	access=$mode
	vbds="$vbds${vbds:+, }{\"target\": \"$target\", \"type\": \"$type\", \"vdev\": \"$vdev\", \"access\": \"$access\"}"
	n=$((n + 1))
done

cat >"$dir/guest.json" <<EOF
{"name": "$name", "kernel": "$kernel", "memory": $memory, "vcpus": 1,
 "cmdline": "$*",
 "vifs": [$vifs],
 "vbds": [$vbds],
 "xen": {"dev_method": "$dev_method"}}
EOF

# chaos in the background, so the traps above run while it works.
"$chaos" create --console "$dir/guest.json" </dev/null &
chaos_pid=$!
wait "$chaos_pid"
status=$?
chaos_pid=

# Staged images: back to their device (w), or unchanged (r).
while read -r device image mode; do
	if [ "$mode" = w ]; then
		dd if="$image" of="$device" bs=1M conv=fsync 2>/dev/null ||
			fail "cannot copy $image back to $device"
	elif [ "$(md5sum "$image" | cut -d' ' -f1)" != "$(cat "$image.md5")" ]; then
		fail "the read-only image $image (from $device) changed while the guest ran"
	fi
done <"$dir/staged"

case $status in
0 | 3 | 4 | 6 | 129 | 130 | 143) ;;
5) status=2 ;;
2)
	echo "run-chaos: chaos refused the configuration:" >&2
	sed 's/^/run-chaos:   /' "$dir/guest.json" >&2
	status=1
	;;
*) status=1 ;;
esac
cleanup
exit "$status"
