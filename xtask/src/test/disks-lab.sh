# Lab job for `cargo xtask test`, in a Xenstore lab (so that guests of both device
# methods run side by side): xendevd keeps one book of disk images across the loop
# devices of Xenstore guests' file disks and the images of NoXS vbds. A second writer
# of an image is refused whichever way each came (NoXS after NoXS, a loop device after
# a NoXS vbd, a NoXS vbd after a loop device), `chaos create` failing with a message
# that names the image and the domain holding it and leaving nothing behind; readers
# share, a writer next to them is refused; destroying the holder frees the image. A
# domain destroyed behind chaos's back (`xl destroy`) loses its loop device to
# xendevd's own check, and one destroyed while xendevd was down loses it when xendevd
# starts.
set -u
LOG=/var/log/xendevd.log
IMAGE=/tmp/disks/shared.img

domains() { xl list | awk 'NR > 2' | wc -l; }
loops() { ls /sys/block/loop*/loop/backing_file 2>/dev/null | wc -l; }
vifs() { ls /sys/class/net | grep -c '^vif'; }
served() { printf '{"op":"list_domains"}\n' | xendevd send | grep -o '"domid":[0-9]*' | sort -u | wc -l; }
held() { echo "$(domains) domains, $(vifs) vifs and taps, $(loops) loop devices, $(served) NoXS domains served"; }
# Wait up to $1 tenths of a second for `held` to say $2 (netback lets go asynchronously).
settle() {
	i=0
	while [ "$(held)" != "$2" ] && [ $i -lt "$1" ]; do
		i=$((i + 1))
		sleep 0.1
	done
}

mkdir -p /tmp/disks
cd /tmp/disks
truncate -s 16M "$IMAGE" restart.img
guest() { # NAME METHOD ACCESS [IMAGE]: a paused noop with a vif and the shared image
	cat >"$1.json" <<EOF
{"name": "$1", "kernel": "/apps/noop", "memory": 4, "vcpus": 1, "paused": true,
 "xen": {"dev_method": "$2"}, "vifs": [{"bridge": "xenbr0"}],
 "vbds": [{"target": "${4:-$IMAGE}", "type": "file", "vdev": "xvda", "access": "$3"}]}
EOF
}
guest noxs-w noxs w
guest noxs-w2 noxs w
guest noxs-r1 noxs r
guest noxs-r2 noxs r
guest xs-w xenstore w
guest xs-r xenstore r
# Its own image, whatever the checks before left on the shared one.
guest xs-restart xenstore w /tmp/disks/restart.img

# created NAME CONFIG: `chaos create CONFIG` succeeds; the domain ID is in $created.
created() {
	created=$(chaos create "$2.json" 2>created.err)
	check "$1" $? "domain '$created': $(tr '\n' '|' <created.err)"
}
# refused NAME CONFIG FRAGMENT [FRAGMENT]: `chaos create CONFIG` fails, its message
# holding each FRAGMENT, and leaves nothing behind.
refused() {
	before=$(held)
	chaos create "$2.json" >refused.out 2>refused.err
	status=$?
	said=0
	grep -qF "$3" refused.err || said=1
	[ -z "${4:-}" ] || grep -qF "$4" refused.err || said=1
	settle 50 "$before"
	[ $status -ne 0 ] && [ $said -eq 0 ] && [ "$(held)" = "$before" ]
	check "$1" $? "status $status, stderr '$(tr '\n' '|' <refused.err)' (expected non-zero, and '$3' ${4:+and '$4'}); held before: $before; after: $(held)"
	# Accepted after all (a failed check): out of the way of the next checks.
	if [ $status -eq 0 ]; then chaos destroy "$(cat refused.out)"; fi
}
in_use() { echo "$IMAGE is in use already as vbd 0 of NoXS domain $1 ($2)"; }
attached() { echo "for domain $1 ($2): an image is shared only when every user has it read-only"; }

sleep 1
start=$(held) d0=$(domains) v0=$(vifs) l0=$(loops) s0=$(served)

# --- NoXS writer first ------------------------------------------------------------------
created noxs-writer noxs-w
w=$created
refused second-noxs-writer noxs-w2 "$(in_use "$w" read-write)"
refused noxs-reader-next-to-writer noxs-r1 "$(in_use "$w" read-write)"
refused loop-writer-after-noxs-writer xs-w "xendevd cannot attach $IMAGE" "$(in_use "$w" read-write)"
chaos destroy "$w"
check noxs-writer-destroyed $? ""

# --- loop writer first: the NoXS writer's book entry went with its domain --------------
l1=$(loops)
created loop-writer-after-release xs-w
x=$created
refused noxs-writer-after-loop-writer noxs-w "$IMAGE is attached already as /dev/loop" "$(attached "$x" read-write)"
refused noxs-reader-next-to-loop-writer noxs-r1 "$(attached "$x" read-write)"

# --- xl destroy behind chaos's back: xendevd detaches the loop device itself ------------
[ "$(loops)" -eq $((l1 + 1)) ]
check loop-attached $? "$(loops) loop devices, $l1 before domain $x"
timeout 20 xl destroy "$x" >destroy.out 2>&1
check xl-destroy $? "$(cat destroy.out)"
i=0
while [ "$(loops)" -ne "$l1" ] && [ $i -lt 50 ]; do
	i=$((i + 1))
	sleep 0.1
done
[ "$(loops)" -eq "$l1" ] && grep -q "domain $x has loop devices and it is" $LOG
check loop-detached-after-xl-destroy $? "$(loops) loop devices after $i tenths of a second ($l1 before domain $x); log: $(grep "domain $x\|loop" $LOG | tail -n 3 | tr '\n' '|')"
created noxs-writer-after-xl-destroy noxs-w
chaos destroy "$created"

# --- readers share, of either kind; a writer of either kind is refused next to them -----
created first-noxs-reader noxs-r1
r1=$created
created second-noxs-reader noxs-r2
r2=$created
created loop-reader-next-to-noxs-readers xs-r
r3=$created
refused noxs-writer-next-to-readers noxs-w "(read-only): an image is shared only when every user has it read-only"
refused loop-writer-next-to-readers xs-w "(read-only): an image is shared only when every user has it read-only"
for domid in $r1 $r2 $r3; do chaos destroy "$domid" || echo "destroy $domid failed"; done

# --- at start: the loop device of a domain destroyed while no xendevd ran --------------
l1=$(loops)
created loop-writer-before-restart xs-restart
y=$created
pid=$(pidof xendevd)
kill -TERM "$pid"
ended "$pid" 50
check xendevd-stopped $? "xendevd $pid, SIGTERMed, waited for $i tenths of a second"
timeout 20 xl destroy "$y" >destroy.out 2>&1
check xl-destroy-while-down $? "$(cat destroy.out)"
# blkback lets go of the loop device; it stays bound (nobody detached it).
sleep 1
[ "$(loops)" -eq $((l1 + 1)) ]
check loop-left-while-down $? "$(loops) loop devices, $l1 before domain $y"
xendevd --foreground >>$LOG 2>&1 &
i=0
while [ "$(loops)" -ne "$l1" ] && [ $i -lt 50 ]; do
	i=$((i + 1))
	sleep 0.1
done
[ "$(loops)" -eq "$l1" ] && grep -q "domain $y has loop devices and it is gone (at start)" $LOG
check loop-detached-at-start $? "$(loops) loop devices after $i tenths of a second ($l1 before domain $y); log: $(grep "domain $y\|loop" $LOG | tail -n 3 | tr '\n' '|')"
xendevd query >/dev/null
check restarted-xendevd-answers $? ""

settle 100 "$start"
count domains "$d0" "$(domains)"
count vifs-and-taps "$v0" "$(vifs)"
count loop-devices "$l0" "$(loops)"
count noxs-domains-served "$s0" "$(served)"
echo "--- $LOG"
tail -n 40 $LOG
