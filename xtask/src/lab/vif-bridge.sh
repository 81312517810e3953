#!/bin/sh
# /etc/xen/scripts/vif-bridge in the lab's dom0: the vif hotplug script xl runs when a
# vif spec names no `script=` (so `vif = ['bridge=xenbr0']` works in any config).
#
# libxl runs it as `vif-bridge online|offline type_if=vif` (udev-style callers say
# add/remove) with, among others, the environment
#   XENBUS_PATH  the backend directory, relative to dom0's home: backend/vif/DOMID/DEVID
#   vif          the backend network device, vifDOMID.DEVID
# (measured in the lab). online: attach the vif to the bridge named in the backend's
# `bridge` node (xenbr0 if there is none), bring it up and write
# `hotplug-status = connected`, which xl waits for and netback needs before it
# connects the frontend. offline: detach it (netback has usually removed it already).
# A failing script (status ≠ 0) fails the `xl create`; the reason goes to xl's stderr.
set -u

action=${1:-}

fail() {
	echo "vif-bridge $action ${vif:-?}: $*" >&2
	if [ -n "${XENBUS_PATH:-}" ]; then
		xenstore-write "$XENBUS_PATH/hotplug-error" "$*" "$XENBUS_PATH/hotplug-status" error 2>/dev/null
	fi
	exit 1
}

[ -n "${vif:-}" ] || fail "no \$vif in the environment (is this script run by xl?)"
[ -n "${XENBUS_PATH:-}" ] || fail "no \$XENBUS_PATH in the environment (is this script run by xl?)"

case "$action" in
online | add)
	bridge=$(xenstore-read "$XENBUS_PATH/bridge" 2>/dev/null) || bridge=
	[ -n "$bridge" ] || bridge=xenbr0
	[ -d "/sys/class/net/$bridge/bridge" ] || fail "dom0 has no bridge named $bridge"
	[ -e "/sys/class/net/$vif" ] || fail "dom0 has no network device $vif"
	ip link set "$vif" master "$bridge" || fail "cannot attach $vif to $bridge"
	ip link set "$vif" up || fail "cannot bring $vif up"
	xenstore-write "$XENBUS_PATH/hotplug-status" connected ||
		fail "cannot write $XENBUS_PATH/hotplug-status"
	;;
offline | remove)
	if [ -e "/sys/class/net/$vif" ]; then
		ip link set "$vif" down 2>/dev/null
		ip link set "$vif" nomaster 2>/dev/null
	fi
	;;
*)
	fail "unknown action '$action' (expected online, offline, add or remove)"
	;;
esac
exit 0
