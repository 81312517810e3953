#!/bin/busybox sh
# /init of the Xen lab's dom0 (Debian kernel, busybox, Debian's Xen tools).
# xtask appends a second archive with /lab/env (mode, nonce), /lab/job and /apps.

/bin/busybox --install -s
export PATH=/usr/local/bin:/usr/lib/xen-4.17/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
# containerd (`lab-containerd`) has no overlayfs here: ctr's snapshotter is `native`.
export CONTAINERD_SNAPSHOTTER=native

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
# xenconsoled gives each guest console a pty.
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/xen /run/xenstored /run/lock /var/log/xen/console /var/lib/xen /var/lib/xenstored
exec </dev/console >/dev/console 2>&1

. /lab/env
# Progress lines land in the boot log (with arrival times), useful when a boot is slow.
echo "lab: init started"

# Modules in dependency order (worked out by xtask from their .modinfo). virtio-rng
# feeds the CRNG: without it every `xl create` blocks ~3 s on a random UUID.
while read -r module; do
	insmod "/lib/modules/lab/$module" || echo "lab: insmod $module failed"
done </etc/lab/modules

echo "lab: modules loaded"
# gntalloc allows 1024 grants by default, for all its users together; xendevd shares
# one page per NoXS device (sysctl, each vif and vbd), so ~340 guests with a vif and a
# disk would use them up. Half of dom0's grant table (Xen's default of 64 frames of 512).
echo 16384 >/sys/module/xen_gntalloc/parameters/limit

# Disks from xtask (--disk): QEMU's virtio disks, each with the serial lab-disk-N; linked
# as /dev/lab/disk-N, whatever /dev/vdX the kernel named it. And containerd's disk.
mkdir -p /dev/lab
for serial in /sys/block/vd*/serial; do
	[ -e "$serial" ] || continue
	id=$(cat "$serial")
	dir=${serial%/serial}
	dev=${dir##*/}
	case "$id" in
	lab-disk-*)
		ln -s "../$dev" "/dev/lab/${id#lab-}"
		ro=
		[ "$(cat "$dir/ro")" = 1 ] && ro=", read-only"
		echo "lab: disk ${id#lab-disk-} is /dev/$dev ($(cat "$dir/size") sectors$ro)"
		;;
	lab-containerd)
		# containerd and ctr (/usr/bin/containerd and /usr/bin/ctr link here);
		# `lab-containerd` starts the daemon.
		mount -t ext2 -o ro "/dev/$dev" /usr/lib/lab-containerd ||
			echo "lab: containerd's disk /dev/$dev could not be mounted"
		;;
	esac
done
mount -t xenfs xenfs /proc/xen
if [ "${LAB_NOXS:-0}" = 1 ]; then
	# A NoXS lab (`--noxs`): no Xenstore and no xenconsoled; xendevd is the back end of
	# every device of chaos's NoXS guests, consoles included. xl does not work here.
	echo "lab: NoXS: xenstored and xenconsoled not started"
else
	xenstored --pid-file /run/xenstored.pid
	echo "lab: xenstored started"
	xen-init-dom0 >/run/xen-init-dom0.log 2>&1 || { echo "lab: xen-init-dom0 failed:"; cat /run/xen-init-dom0.log; }
	xenconsoled --pid-file=/run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console
	echo "lab: xenconsoled started"
fi
# Our device daemon, when the lab carries it: vif hotplug and loop devices for chaos's
# Xenstore method, every back end of its NoXS guests.
if [ -x /usr/local/bin/xendevd ]; then
	xendevd --foreground >/var/log/xendevd.log 2>&1 &
	echo "lab: xendevd started"
fi
hostname lab

# The lab network (shared/notes/xen-lab.md): QEMU user networking behind the e1000
# eth0, bridge xenbr0 over it with dom0 at 10.0.2.15; guests' vifs join the bridge
# (/etc/xen/scripts/vif-bridge) and QEMU's DHCP hands them 10.0.2.16 onwards. No STP
# and no forward delay: a port forwards as soon as its link is up.
ip link set lo up
if brctl addbr xenbr0 &&
	echo 0 >/sys/class/net/xenbr0/bridge/forward_delay &&
	ip link set eth0 up &&
	ip link set eth0 master xenbr0 &&
	ip link set xenbr0 up &&
	ip addr add 10.0.2.15/24 dev xenbr0 &&
	ip route add default via 10.0.2.2; then
	echo "lab: network up: xenbr0 over eth0, dom0 at 10.0.2.15/24 via 10.0.2.2"
else
	echo "lab: network set-up failed: guests get no network"
fi
# One of two labs side by side (`lab exec --hosts 2`, lab/hosts.rs): the NIC with
# LAB_SHARED_MAC is on the network the two share, bridged as LAB_SHARED_BRIDGE (xenbr1)
# with dom0 at LAB_SELF; guests with a vif there reach the other host's. The job learns
# which host it is from LAB_HOST, LAB_SELF and LAB_PEER.
if [ -n "${LAB_HOST:-}" ]; then
	shared=
	for dev in /sys/class/net/*; do
		[ "$(cat "$dev/address")" = "$LAB_SHARED_MAC" ] && shared=${dev##*/}
	done
	if [ -n "$shared" ] && brctl addbr "$LAB_SHARED_BRIDGE" &&
		echo 0 >"/sys/class/net/$LAB_SHARED_BRIDGE/bridge/forward_delay" &&
		ip link set "$shared" up &&
		ip link set "$shared" master "$LAB_SHARED_BRIDGE" &&
		ip link set "$LAB_SHARED_BRIDGE" up &&
		ip addr add "$LAB_SELF/24" dev "$LAB_SHARED_BRIDGE"; then
		echo "lab: shared network up: $LAB_SHARED_BRIDGE over $shared, dom0 at $LAB_SELF/24 (host $LAB_HOST; the other at $LAB_PEER)"
	else
		echo "lab: shared network set-up failed (no NIC with MAC $LAB_SHARED_MAC, or the bridge): the hosts cannot reach each other"
	fi
	hostname "lab$LAB_HOST"
	export LAB_HOST LAB_SELF LAB_PEER LAB_SHARED_BRIDGE
fi
# The relay's dom0 end (`--forward`): the host's connections and UDP clients come in
# over a virtio-serial port and go out to the guest over xenbr0.
if [ "${LAB_RELAY:-0}" = 1 ]; then
	labrelay >/run/labrelay.log 2>&1 &
	echo "lab: labrelay started"
fi
cd /

case "$LAB_MODE" in
exec)
	# Keep kernel messages off the console while the job runs (dmesg has them all).
	[ "$LAB_VERBOSE" = 1 ] || dmesg -n 1
	# The job's stderr lines carry a tag so xtask can tell them from stdout through the
	# single serial line. A watchdog stops the tagger if a background process of the
	# job keeps the pipe open.
	mkfifo /run/lab-stderr
	while IFS= read -r line || [ -n "$line" ]; do
		printf '%s%s\n' "$LAB_ERR_TAG" "$line"
	done </run/lab-stderr &
	tagger=$!
	# Commands from xtask come in on the serial line (QEMU's stdin → Xen → dom0's
	# console) as lines `TAG COMMAND… DOMAIN` starting with the boot's control tag, e.g.
	# `TAG xl shutdown -w NAME` once a test's host-side client is done with a guest.
	# Only the commands of /lab/control-commands run: xtask writes it from its one table
	# of stop commands (toolstack.rs), one a line after `quiet` (a destroy: a domain
	# that has ended by itself already is no error) or `report` (a failure is reported
	# on the job's stderr). Each runs in the background, so a guest slow to shut down
	# holds up no other command. No echo, so the commands do not come back out on the
	# serial line.
	stty -echo </dev/console
	allowed() { # COMMAND → quiet or report, if /lab/control-commands has it
		while read -r mode command; do
			[ "$command" = "$1" ] && echo "$mode" && return
		done </lab/control-commands
	}
	act() {
		if ! out=$("$@" 2>&1); then
			printf '%slab: %s failed: %s\n' "$LAB_ERR_TAG" "$*" "$(echo "$out" | tr '\n' ' ')"
		fi
		echo "$* done: $out" >>/run/lab-control.log
	}
	while IFS= read -r line; do
		case "$line" in
		"$LAB_CTL_TAG "*) ;;
		*) continue ;;
		esac
		line=${line#"$LAB_CTL_TAG "}
		command=${line% *}
		domain=${line##* }
		mode=
		case "$domain" in
		"$line" | *[!A-Za-z0-9_.:-]*) ;;
		*) mode=$(allowed "$command") ;;
		esac
		# $command unquoted: an allowed one is plain words.
		case "$mode" in
		quiet) $command "$domain" >>/run/lab-control.log 2>&1 & ;;
		report) act $command "$domain" & ;;
		*) printf '%slab: not an allowed control command: %s\n' "$LAB_ERR_TAG" "$line" ;;
		esac
	done </dev/console &
	control=$!
	echo "$LAB_BEGIN"
	sh /lab/job </dev/null 2>/run/lab-stderr
	status=$?
	kill $control 2>/dev/null
	(sleep 2; kill $tagger 2>/dev/null) &
	wait $tagger
	echo "$LAB_END $status"
	;;
shell)
	echo "lab: dom0 shell; guests are in /apps (OCI images in /oci, lab-containerd starts containerd), xl is on PATH; 'exit' powers the lab off"
	setsid cttyhack sh -l
	;;
*)
	echo "lab: unknown LAB_MODE '$LAB_MODE'"
	;;
esac
sync
poweroff -f
