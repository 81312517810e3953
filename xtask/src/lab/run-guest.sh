#!/bin/sh
# run-guest.sh KERNEL MEMORY_MIB [ARG...]
#
# Boot one PV guest with xl, stream its console to stdout from the first byte, and exit
# with how it ended: 0 poweroff, 2 crash, 3 reboot, 4 suspend/watchdog/soft_reset,
# 6 destroyed from outside (`xl destroy`), 1 failure (reason on stderr), 130/143/129
# stopped by SIGINT/SIGTERM/SIGHUP (the guest is destroyed). `cargo xtask run` uses it
# in the lab's dom0 and natively on a Xen dom0; tests may call it in the lab as
# /lab/run-guest.sh.
#
# The guest gets one vif on the bridge xenbr0 if dom0 has that bridge (the lab always
# does), set up by xl's default hotplug script. Optional environment:
#   RUN_GUEST_NAME  the domain's name (default xtask-KERNEL-PID-TIME), e.g. to destroy it
#   RUN_GUEST_MAC   the vif's MAC address (default: xl picks a random one)
#   RUN_GUEST_DISKS the guest's disks, xl disk specs separated by spaces, each
#                   phy:DEVICE,VDEV,MODE with DEVICE a block device of dom0 (a link to
#                   one is resolved), VDEV xvda…xvdz, MODE w or r; e.g.
#                   "phy:/dev/vda,xvda,w phy:/dev/loop3,xvdb,r"
#
# `xl create -c` would do, but its console child sleeps 1 s before attaching and xl waits
# for it before unpausing. Instead: create paused under `xl create -F` (which stays to
# log the shutdown reason and destroy the domain), attach xenconsole, wait until it
# reports it is connected, unpause.
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
case "$kernel$name$mac$*" in
*\"* | *\\*)
	echo "run-guest: quotes and backslashes cannot go into an xl config: $name $kernel $*" >&2
	exit 1
	;;
esac
case "${RUN_GUEST_NAME:-}$mac" in
*[!A-Za-z0-9_.:-]*)
	echo "run-guest: RUN_GUEST_NAME '$name' or RUN_GUEST_MAC '$mac' has characters other than A-Z a-z 0-9 _ . : -" >&2
	exit 1
	;;
esac

# Check each disk spec and resolve its device: the config names /dev/vdX itself.
disks=
for spec in ${RUN_GUEST_DISKS:-}; do
	case "$spec" in
	phy:/*,xvd[a-z],w | phy:/*,xvd[a-z],r) ;;
	*)
		echo "run-guest: disk spec '$spec' in RUN_GUEST_DISKS is not phy:DEVICE,xvdX,w|r" >&2
		exit 1
		;;
	esac
	rest=${spec#phy:}
	device=${rest%%,*}
	rest=${rest#*,}
	case "$device" in
	*[!A-Za-z0-9_./:-]*)
		echo "run-guest: disk device '$device' has characters other than A-Z a-z 0-9 _ . / : -" >&2
		exit 1
		;;
	esac
	if [ ! -e "$device" ]; then
		echo "run-guest: disk device $device does not exist (disk spec '$spec')" >&2
		exit 1
	fi
	resolved=$(readlink -f "$device")
	if [ ! -b "$resolved" ]; then
		echo "run-guest: disk device $device is not a block device (disk spec '$spec')" >&2
		exit 1
	fi
	disks="$disks${disks:+, }'phy:$resolved,$rest'"
done

xenconsole=
for bin in /usr/lib/xen-*/bin /usr/lib/xen/bin /usr/libexec/xen/bin; do
	[ -x "$bin/xenconsole" ] && xenconsole=$bin/xenconsole
done

dir=$(mktemp -d /tmp/run-guest.XXXXXX) || exit 1
xl_pid=
console_pid=

cleanup() {
	if [ -n "$xl_pid" ]; then
		xl destroy "$name" >/dev/null 2>&1
		kill "$xl_pid" 2>/dev/null
	fi
	[ -n "$console_pid" ] && kill "$console_pid" 2>/dev/null
	rm -rf "$dir"
}

fail() {
	echo "run-guest: $*" >&2
	if [ -s "$dir/xl.log" ]; then
		sed 's/^/run-guest: xl: /' "$dir/xl.log" >&2
	fi
	cleanup
	exit 1
}

interrupted() {
	echo "run-guest: $1: destroying $name" >&2
	cleanup
	exit "$2"
}
# Exit like a shell killed by the signal; `cargo xtask run` reads 143 as its timeout.
trap 'interrupted SIGINT 130' INT
trap 'interrupted SIGTERM 143' TERM
trap 'interrupted SIGHUP 129' HUP

[ -n "$xenconsole" ] || fail "xenconsole not found under /usr/lib/xen-*/bin, /usr/lib/xen/bin or /usr/libexec/xen/bin"
[ -f "$kernel" ] || fail "no guest image at $kernel"

vif=
if [ -d /sys/class/net/xenbr0/bridge ]; then
	vif="vif = ['bridge=xenbr0${mac:+,mac=$mac}']"
else
	echo "run-guest: dom0 has no bridge xenbr0: the guest gets no network interface" >&2
fi

disk=
[ -n "$disks" ] && disk="disk = [$disks]"

cat >"$dir/guest.cfg" <<EOF
name = "$name"
kernel = "$kernel"
memory = $memory
vcpus = 1
extra = "$*"
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "destroy"
$vif
$disk
EOF

# A stdin that never delivers and never ends: older xenconsoles stop at EOF on stdin
# (4.17's ignores a stdin that is not a terminal, as measured in the lab).
mkfifo "$dir/stdin" "$dir/ready" || fail "mkfifo failed"
exec 3<>"$dir/stdin"

xl create -p -F "$dir/guest.cfg" <&3 >"$dir/xl.log" 2>&1 &
xl_pid=$!
# xl -F logs "Waiting for domain NAME (domid N) to die [pid P]" once the domain exists.
while :; do
	domid=$(sed -n 's/.*(domid \([0-9][0-9]*\)) to die.*/\1/p' "$dir/xl.log")
	[ -n "$domid" ] && break
	if ! kill -0 "$xl_pid" 2>/dev/null; then
		wait "$xl_pid"
		fail "xl create failed (status $?)"
	fi
	sleep 0.02
done

"$xenconsole" --type pv --start-notify-fd 4 "$domid" <&3 4>"$dir/ready" &
console_pid=$!
# xenconsole writes one byte to fd 4 once it has the guest's console open.
[ "$(head -c 1 "$dir/ready" | wc -c)" -eq 1 ] || fail "xenconsole could not attach to domain $domid"
xl unpause "$domid" || fail "xl unpause $domid failed"

wait "$xl_pid"
xl_status=$?
xl_pid=
# xenconsole ends once xenconsoled drops the console of the destroyed domain.
wait "$console_pid"
console_pid=

# "Domain 1 has shut down, reason code 0 0x0" (xl_vmcontrol.c); codes from sched.h.
reason=$(sed -n 's/.*has shut down, reason code \([0-9][0-9]*\).*/\1/p' "$dir/xl.log" | tail -n 1)
case "$reason" in
0) status=0 ;;
1) status=3 ;;
3) status=2 ;;
2 | 4 | 5)
	status=4
	echo "run-guest: $name shut down with reason code $reason (2 suspend, 4 watchdog, 5 soft_reset)" >&2
	;;
*)
	# "Domain 1 has been destroyed." (xl_vmcontrol.c): someone ran `xl destroy`.
	if grep -q "has been destroyed" "$dir/xl.log"; then
		status=6
	else
		fail "xl reported no shutdown reason for $name (xl status $xl_status)"
	fi
	;;
esac
cleanup
exit "$status"
