#!/bin/sh
# /etc/xen/scripts/block in the lab's dom0: the disk hotplug script xl runs when a disk
# spec names no `script=`, here for `phy:` targets (block devices such as the lab's
# virtio disks /dev/vdX), e.g. disk = ['phy:/dev/vda,xvda,w'].
#
# What xl passes (measured in the lab with 4.17): `block add` once the backend directory
# exists, `block remove` after the domain is gone; in the environment
#   XENBUS_PATH       the backend directory, relative: backend/vbd/DOMID/DEVID
#   XENBUS_TYPE       vbd
#   XENBUS_BASE_PATH  backend
# The backend directory holds `params` (the target, e.g. /dev/vda), `type` (phy), `mode`
# (w or r), `state`, … . xen-blkback has already reached InitWait (state 2) when `add`
# runs; it opens the device only once `physical-device` (MAJOR:MINOR in hex, as Xen's own
# script writes it) appears, and only then connects the frontend. Without it xl create
# still succeeds, and the guest waits for its disk forever. xl itself checks only this
# script's exit status; on failure it prints `hotplug-error` ("libxl: error: … script:
# MESSAGE") and fails the create.
#
# add: check the target, write physical-device, physical-device-path and
# `hotplug-status = connected`. remove: delete what add wrote, if the backend directory
# is still there (xl removes it right after). A failure writes `hotplug-error` and
# `hotplug-status = error` and exits 1.
set -u

action=${1:-}

fail() {
	echo "block $action ${XENBUS_PATH:-?}: $*" >&2
	if [ -n "${XENBUS_PATH:-}" ]; then
		xenstore-write "$XENBUS_PATH/hotplug-error" "$*" "$XENBUS_PATH/hotplug-status" error 2>/dev/null
	fi
	exit 1
}

[ -n "${XENBUS_PATH:-}" ] || fail "no \$XENBUS_PATH in the environment (is this script run by xl?)"

case "$action" in
add)
	# One xenstore-ls for every key (each xenstore-* call costs ~55 ms in the lab); its
	# lines are `KEY = "VALUE"`, the children of a key indented below it.
	keys=$(xenstore-ls "$XENBUS_PATH" 2>/dev/null) || fail "cannot read $XENBUS_PATH"
	type= target= mode= numbers=
	while IFS= read -r line; do
		value=${line#* = \"}
		value=${value%\"}
		case "$line" in
		"type = "*) type=$value ;;
		"params = "*) target=$value ;;
		"mode = "*) mode=$value ;;
		"physical-device = "*) numbers=$value ;;
		esac
	done <<EOF
$keys
EOF
	# Xen's script: with some hotplug set-ups it runs twice; the second time is a no-op.
	[ -z "$numbers" ] || exit 0
	[ "$type" = phy ] || fail "disk type '$type' for '$target': this script attaches only phy: targets (block devices)"
	case "$target" in
	"") fail "no params (the disk's target) under $XENBUS_PATH" ;;
	/*) dev=$target ;;
	*) dev=/dev/$target ;;
	esac
	[ -e "$dev" ] || fail "$dev does not exist"
	dev=$(readlink -f "$dev") || fail "cannot resolve $target"
	[ -b "$dev" ] || fail "$dev is not a block device"
	name=${dev##*/}
	# blkback would connect a read-only device as writable, and every write of the guest
	# would fail with an I/O error: refuse it here.
	case "$mode" in
	w*)
		ro=0
		read -r ro <"/sys/class/block/$name/ro"
		[ "$ro" = 0 ] || fail "$dev is read-only: it cannot be a read-write disk (use mode r)"
		;;
	r*) ;;
	*) fail "unknown mode '$mode' for $dev (expected w or r)" ;;
	esac
	numbers=$(stat -L -c %t:%T "$dev") || fail "cannot stat $dev"
	xenstore-write "$XENBUS_PATH/physical-device" "$numbers" \
		"$XENBUS_PATH/physical-device-path" "$dev" \
		"$XENBUS_PATH/hotplug-status" connected ||
		fail "cannot write physical-device for $dev under $XENBUS_PATH"
	;;
remove)
	# One call; xenstored removes a missing node of an existing directory without
	# complaint, and if xl has removed the directory already there is nothing to do.
	xenstore-rm "$XENBUS_PATH/physical-device" "$XENBUS_PATH/physical-device-path" \
		"$XENBUS_PATH/hotplug-status" "$XENBUS_PATH/hotplug-error" 2>/dev/null
	:
	;;
*)
	fail "unknown action '$action' (expected add or remove)"
	;;
esac
exit 0
