# Lab job for `cargo xtask test`: xendevd in dom0 (the lab's init starts it, logging to
# /var/log/xendevd.log), checked through its own client the way chaos uses its API, and
# for vifs through Xenstore and the kernel, with back ends written the way chaos writes
# them. Reports through lab-checks.sh's helpers, with `measure` lines for the time from
# a vif's online uevent to its hotplug-status; prints xendevd's logs and exits 1 if a
# check failed.
set -u
LOG=/var/log/xendevd.log
# Milliseconds since boot (10 ms resolution).
ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
# The value of "KEY":VALUE in a JSON line (strings unquoted).
field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p" | head -n 1; }
answers() { xendevd query >/dev/null 2>&1; }
finish() {
	if [ "$checks_failed" -gt 0 ]; then
		echo "--- $LOG"
		cat $LOG
		[ -s /tmp/xendevd2.log ] && echo "--- /tmp/xendevd2.log" && cat /tmp/xendevd2.log
		exit 1
	fi
	exit 0
}

i=0
until answers || [ $i -gt 50 ]; do
	i=$((i + 1))
	sleep 0.1
done
check_that answers-at-start "xendevd answers on its socket (after $i tenths of a second)" answers || finish

### (a) Malformed requests: each gets one error line naming the problem, and xendevd
### goes on. /tmp/request goes to xendevd as it is (`xendevd send`). (No pipeline into
### a check: the count of failed checks would stay in the pipeline's subshell.)
expect_error() { # NAME FRAGMENT: one answer line, an error containing FRAGMENT
	answer=$(xendevd send --timeout 10 </tmp/request 2>&1)
	case "$answer" in
	*"
"*) why="more than one answer line: $answer" ;;
	'{"error":"'*"$2"*) why= ;;
	*) why="answer '$answer', expected an error containing '$2'" ;;
	esac
	answers || why="${why:-$answer}; xendevd no longer answers"
	[ -z "$why" ]
	check "error-$1" $? "${why:-$answer}"
}
printf 'garbage\n' >/tmp/request
expect_error not-json "not JSON: expected value at line 1 column 1"
printf '{}\n' >/tmp/request
expect_error no-op 'missing field `op`'
printf '{"op":"format_disk"}\n' >/tmp/request
expect_error unknown-op 'unknown variant `format_disk`'
printf '{"op":"attach_disk","path":"/x"}\n' >/tmp/request
expect_error missing-fields 'missing field `readonly`'
printf '{"op":"release_domain","domid":-1}\n' >/tmp/request
expect_error negative-domid 'invalid value: integer `-1`, expected u32'
printf '{"op":"query","x":1}\n' >/tmp/request
expect_error extra-field 'unknown field `x`: query takes no fields'
printf '[1,2]\n' >/tmp/request
expect_error array 'an array, not a JSON object'
printf '\377\376\n' >/tmp/request
expect_error not-utf8 "not UTF-8 text"
printf '\n' >/tmp/request
expect_error empty-line "an empty line"
printf '{"op":"query"}' >/tmp/request
expect_error no-newline "ended in the middle of a request (14 bytes without a newline)"
head -c 70000 /dev/zero | tr '\000' x >/tmp/request
expect_error long-line "request line longer than 65536 bytes: closing the connection"
# Several requests on one connection: each answered, in order.
replies=$(printf 'garbage\n{"op":"query"}\n{"op":"detach_disk","device":"/dev/loop9"}\n' | xendevd send)
set -- $(echo "$replies" | cut -c 1-9)
[ "$*" = '{"error": {"state": {"error":' ]
check three-requests-in-order $? "three requests on one connection, three answers in order: $(echo "$replies" | tr '\n' '|')"

# Five clients send half a request and stall; meanwhile twenty clients query at once.
rm -f /tmp/stalled.* /tmp/query.*
for n in 1 2 3 4 5; do
	printf '{"op":' | xendevd send --hold 8 >/tmp/stalled.$n 2>&1 &
done
sleep 0.5
t0=$(ms)
for n in $(seq 1 20); do
	(xendevd query >/tmp/query.$n 2>&1; echo $? >/tmp/query.$n.status) &
done
i=0
until [ "$(ls /tmp/query.*.status 2>/dev/null | wc -l)" -ge 20 ] || [ $i -gt 100 ]; do
	i=$((i + 1))
	sleep 0.05
done
t1=$(ms)
answered=$(grep -l '^{"state":' /tmp/query.[0-9] /tmp/query.[0-9][0-9] 2>/dev/null | wc -l)
# The stalled clients must still be waiting (xendevd answers them after 5 s): the
# queries were served while they were connected, not after.
still_stalled=0
for n in 1 2 3 4 5; do
	[ -s /tmp/stalled.$n ] || still_stalled=$((still_stalled + 1))
done
[ "$answered" -eq 20 ] && [ $still_stalled -eq 5 ]
check queries-while-stalled $? "20 clients at once while 5 clients stalled mid-request: $answered answered within $((t1 - t0)) ms, $still_stalled still stalled"
wait
stalled_ok=0
for n in 1 2 3 4 5; do
	grep -q '^{"error":"request incomplete after 5 s (6 bytes without a newline): closing the connection"}$' /tmp/stalled.$n && stalled_ok=$((stalled_ok + 1))
done
[ $stalled_ok -eq 5 ]
check stalled-clients-timed-out $? "$stalled_ok of 5 stalled clients got the timeout error; one got: $(cat /tmp/stalled.1)"
pid=$(pidof xendevd)
check_that alive-after-requests "xendevd ($pid) still runs and answers" sh -c "kill -0 $pid && xendevd query >/dev/null"

### (b) Loop devices for file-backed disks.
mkdir -p /tmp/disks
truncate -s 16M /tmp/disks/a.img
truncate -s 8M /tmp/disks/b.img
truncate -s 1000 /tmp/disks/odd.img
: >/tmp/disks/empty.img
# xendevd attaches disks for domains that exist (and detaches those of domains that
# end): three paused noops hold them, H1 < H2 < H3.
for n in 1 2 3; do
	printf 'name = "disk-holder-%s"\nkernel = "/apps/noop"\nmemory = 8\n' $n >/tmp/holder$n.cfg
	xl create -p /tmp/holder$n.cfg >/tmp/holder$n.out 2>&1 || cat /tmp/holder$n.out
done
H1=$(xl domid disk-holder-1) H2=$(xl domid disk-holder-2) H3=$(xl domid disk-holder-3)
check_that disk-holders "three paused domains hold the disks: $H1, $H2, $H3" [ -n "$H1" -a -n "$H2" -a -n "$H3" ]
expect_refusal() {
	fragment=$2
	answer=$(shift 2 && xendevd "$@" 2>/dev/null)
	status=$?
	case "$status:$answer" in
	1:'{"error":"'*"$fragment"*) true ;;
	*) false ;;
	esac
	check "refuse-$1" $? "status $status, answer '$answer' (expected an error containing '$fragment')"
}
expect_refusal no-such-domain "domain 7000 does not exist" attach /tmp/disks/a.img --domid 7000

a=$(xendevd attach /tmp/disks/a.img --domid "$H1")
dev_a=$(echo "$a" | field device)
n_a=${dev_a#/dev/loop}
check_that attach-rw "attach a.img for domain $H1 read-write: $a" [ -b "$dev_a" ]
check_that backing-file "/sys/block/loop$n_a/loop/backing_file is /tmp/disks/a.img" \
	[ "$(cat /sys/block/loop$n_a/loop/backing_file 2>&1)" = /tmp/disks/a.img ]
check_that loop-writable "loop$n_a is writable (ro = 0)" [ "$(cat /sys/block/loop$n_a/ro)" = 0 ]
numbers=$(stat -c '%t:%T' "$dev_a")
check_that major-minor "the answer's major:minor ($(echo "$a" | field major):$(echo "$a" | field minor)) are $dev_a's ($numbers, hex)" \
	[ "$(printf '%x:%x' "$(echo "$a" | field major)" "$(echo "$a" | field minor)")" = "$numbers" ]
b=$(xendevd attach /tmp/disks/b.img --domid "$H1" --readonly)
dev_b=$(echo "$b" | field device)
check_that attach-ro "attach b.img for domain $H1 read-only: /sys/block/${dev_b#/dev/}/ro = 1" \
	[ "$(cat /sys/block/${dev_b#/dev/}/ro 2>&1)" = 1 ]
b8=$(xendevd attach /tmp/disks/b.img --domid "$H2" --readonly)
dev_b8=$(echo "$b8" | field device)
check_that shared-ro "b.img shared read-only with domain $H2: $dev_b8" [ -b "$dev_b8" ]

# expect_refusal NAME FRAGMENT ARGS…: `xendevd ARGS` must fail with FRAGMENT (above).
expect_refusal second-writer "/tmp/disks/a.img is attached already as $dev_a for domain $H1 (read-write)" \
	attach /tmp/disks/a.img --domid "$H2"
expect_refusal writer-while-read "is attached already as $dev_b for domain $H1 (read-only)" \
	attach /tmp/disks/b.img --domid "$H3"
expect_refusal missing-file "/tmp/disks/none.img does not exist" attach /tmp/disks/none.img --domid "$H1"
expect_refusal directory "/tmp/disks is a directory, not a regular file" attach /tmp/disks --domid "$H1"
expect_refusal device-node "/dev/null is a character device, not a regular file" attach /dev/null --domid "$H1"
expect_refusal odd-size "/tmp/disks/odd.img has 1000 bytes, not a whole number of 512-byte sectors" attach /tmp/disks/odd.img --domid "$H1"
expect_refusal empty-file "/tmp/disks/empty.img is empty" attach /tmp/disks/empty.img --domid "$H1"
expect_refusal relative-path 'path \"disks/a.img\" is not absolute' attach disks/a.img --domid "$H1"
expect_refusal reserved-domid "domain ID 32752 is not a domain's" attach /tmp/disks/a.img --domid 32752
expect_refusal foreign-device "/dev/loop200 was not attached by xendevd (it holds $dev_a, $dev_b, $dev_b8)" \
	detach /dev/loop200

state=$(xendevd query)
count=$(echo "$state" | grep -o '"device"' | wc -l)
check_that query-lists-disks "query lists the 3 disks: $state" [ "$count" -eq 3 ]
check_that detach "detach $dev_a: done" [ "$(xendevd detach "$dev_a")" = '"done"' ]
check_that detached-unbound "$dev_a is unbound (no /sys/block/loop$n_a/loop)" [ ! -e /sys/block/loop$n_a/loop ]
expect_refusal detach-twice "$dev_a was not attached by xendevd" detach "$dev_a"
check_that release "release domain $H1: done" [ "$(xendevd release "$H1")" = '"done"' ]
check_that released-unbound "domain $H1's $dev_b is unbound" [ ! -e /sys/block/${dev_b#/dev/}/loop ]
check_that other-domain-still-bound "domain $H2's $dev_b8 is still bound" [ -e /sys/block/${dev_b8#/dev/}/loop ]
check_that release-without-disks "release of a domain without disks: done" [ "$(xendevd release 99)" = '"done"' ]
xendevd release "$H2" >/dev/null
check_that query-empty "query: no disks left" [ "$(xendevd query)" = '{"state":{"disks":[],"vifs":[]}}' ]
for n in 1 2 3; do xl destroy disk-holder-$n; done

# A guest uses a loop device xendevd attached: blkcheck writes its pattern through
# blkfront → blkback → loop → the image file. (The guest's domain ID is not known before
# run-guest.sh creates the domain: the device is dom0's, which chaos would not do.)
truncate -s 64M /tmp/disks/guest.img
g=$(xendevd attach /tmp/disks/guest.img --domid 0)
dev_g=$(echo "$g" | field device)
RUN_GUEST_NAME=blk-on-loop RUN_GUEST_DISKS="phy:$dev_g,xvda,w" sh /lab/run-guest.sh /apps/blkcheck 32 >/tmp/blkcheck.out 2>&1
status=$?
[ $status -eq 0 ] && grep -q "^blkcheck: ok" /tmp/blkcheck.out
check blkcheck-on-loop $? "blkcheck on $dev_g (status $status): $(grep '^blkcheck: ok' /tmp/blkcheck.out || tail -n 5 /tmp/blkcheck.out)"
check_that detach-after-guest "detach $dev_g after the guest: done" [ "$(xendevd detach "$dev_g")" = '"done"' ]
word=$(od -A n -t x8 -j $((2048 * 512)) -N 8 /tmp/disks/guest.img | tr -d ' ')
check_that pattern-in-image "the image file holds blkcheck's pattern at sector 2048 ($word)" [ "$word" = b10cc4ec08000000 ]
rm -f /tmp/disks/guest.img

### (c) vifs the chaos way: a paused domain without xl vifs, its vif's front and back
### end written by hand as chaos writes them, `toolstack = chaos` in the same
### transaction (xenstore-write with several nodes is one transaction).
new_domain() { # NAME APP [EXTRA] → domid
	cat >/tmp/$1.cfg <<EOF
name = "$1"
kernel = "/apps/$2"
memory = 32
extra = "${3:-}"
on_poweroff = "destroy"
on_crash = "destroy"
vif = []
EOF
	xl create -p /tmp/$1.cfg >/tmp/$1.xl 2>&1 || {
		cat /tmp/$1.xl
		return 1
	}
	xl domid "$1"
}
# add_vif DOMID DEVID BRIDGE TOOLSTACK MAC
add_vif() {
	f=/local/domain/$1/device/vif/$2
	b=/local/domain/0/backend/vif/$1/$2
	xenstore-write $f/backend $b $f/backend-id 0 $f/state 1 $f/handle $2 $f/mac $5
	xenstore-chmod -r $f n$1 r0
	if [ -n "$4" ]; then
		xenstore-write $b/frontend $f $b/frontend-id $1 $b/online 1 $b/state 1 $b/script xendevd \
			$b/mac $5 $b/bridge $3 $b/handle $2 $b/type vif $b/toolstack $4
	else
		xenstore-write $b/frontend $f $b/frontend-id $1 $b/online 1 $b/state 1 $b/script xendevd \
			$b/mac $5 $b/bridge $3 $b/handle $2 $b/type vif
	fi
	xenstore-chmod -r $b n0 r$1
}
# hotplug_status DOMID DEVID: wait (5 s at most) for hotplug-status; print it.
hotplug_status() {
	i=0
	while [ $i -lt 50 ]; do
		s=$(xenstore-read /local/domain/0/backend/vif/$1/$2/hotplug-status 2>/dev/null) && break
		i=$((i + 1))
		sleep 0.1
	done
	echo "${s:-none}"
}

D=$(new_domain vif-daytime daytime "ip=10.0.2.16/24 gw=10.0.2.2")
add_vif "$D" 0 xenbr0 chaos 00:16:3e:0a:00:10
status=$(hotplug_status "$D" 0)
check_that vif-connected "vif$D.0 (chaos): hotplug-status = $status" [ "$status" = connected ]
master=$(readlink /sys/class/net/vif$D.0/master)
check_that vif-on-bridge "vif$D.0 is a port of xenbr0 (master → $master)" [ "${master##*/}" = xenbr0 ]
flags=$(cat /sys/class/net/vif$D.0/flags)
check_that vif-up "vif$D.0 is up (flags $flags)" [ $((flags & 1)) -eq 1 ]
check_that query-lists-vif "query lists vif$D.0" sh -c "xendevd query | grep -q '\"vifs\":\[{\"name\":\"vif$D.0\",\"bridge\":\"xenbr0\",\"domid\":$D}\]'"
xl unpause "$D"
i=0
until answer=$(nc -w 2 10.0.2.16 13 </dev/null 2>/dev/null) && [ -n "$answer" ]; do
	i=$((i + 1))
	[ $i -gt 20 ] && break
	sleep 0.5
done
case "$answer" in
20[0-9][0-9]-*) true ;;
*) false ;;
esac
check daytime-behind-vif $? "daytime behind vif$D.0 answers from 10.0.2.16: '$answer'"

# A hung xenstored stalls vif hotplug only: with xenstored stopped, an online uevent
# for vif$D.0 sends the hotplug thread into a Xenstore read that waits, and the
# daemon's loop (its API) answers meanwhile.
kill -STOP "$(pidof xenstored)"
echo online >"/sys/bus/xen-backend/devices/vif-$D-0/uevent"
sleep 1
timeout 5 xendevd query >/dev/null
status=$?
kill -CONT "$(pidof xenstored)"
check api-answers-while-xenstored-hangs $status "xendevd query with xenstored stopped and a vif online to handle: status $status (124 or 143: timed out)"
i=0
until grep -q "vif$D.0 (domain $D) on xenbr0 already" $LOG || [ $i -gt 50 ]; do
	i=$((i + 1))
	sleep 0.1
done
check_that hotplug-resumes-with-xenstored "the hotplug thread handled that online once xenstored went on: $(grep "vif$D.0" $LOG | tail -n 1 | cut -c 14-)" \
	grep -q "vif$D.0 (domain $D) on xenbr0 already" $LOG

E=$(new_domain vif-nobridge hello)
add_vif "$E" 0 nosuchbr chaos 00:16:3e:0a:00:11
status=$(hotplug_status "$E" 0)
hp_error=$(xenstore-read /local/domain/0/backend/vif/$E/0/hotplug-error 2>&1)
check_that vif-missing-bridge "vif$E.0 (chaos) on a missing bridge: hotplug-status = $status, hotplug-error = $hp_error" \
	[ "$status:$hp_error" = "error:dom0 has no bridge named nosuchbr" ]
check_that query-skips-failed-vif "query does not list vif$E.0" sh -c "! xendevd query | grep -q vif$E.0"

X=$(new_domain vif-xl hello)
add_vif "$X" 0 xenbr0 "" 00:16:3e:0a:00:12
sleep 1
status=$(xenstore-read /local/domain/0/backend/vif/$X/0/hotplug-status 2>/dev/null)
check_that unmarked-vif-left-alone "vif$X.0 without the marker is left alone: no hotplug-status, on no bridge" \
	[ -e /sys/class/net/vif$X.0 -a ! -e /sys/class/net/vif$X.0/master -a -z "$status" ]
check_that query-skips-unmarked-vif "query does not list vif$X.0" sh -c "! xendevd query | grep -q vif$X.0"
# xl's own script on that vif, for the comparison below (5 runs, 10 ms clock).
t0=$(ms)
for n in 1 2 3 4 5; do
	XENBUS_PATH=backend/vif/$X/0 vif=vif$X.0 /etc/xen/scripts/vif-bridge online
done
t1=$(ms)
xl_script=$(((t1 - t0) / 5))
check_that xl-script-by-hand "xl's vif-bridge script connected vif$X.0 by hand" [ "$(xenstore-read /local/domain/0/backend/vif/$X/0/hotplug-status)" = connected ]

# Disks left attached over a restart: xendevd leaves them, says so and records them;
# the next xendevd takes back those still bound as they were.
k=$(xendevd attach /tmp/disks/b.img --domid "$D" --readonly)
dev_k=$(echo "$k" | field device)
gone=$(xendevd attach /tmp/disks/a.img --domid "$D" | field device)

# SIGTERM: the socket goes, the loop device stays (logged), the vif stays on its bridge.
pid=$(pidof xendevd)
kill -TERM "$pid"
i=0
while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do
	i=$((i + 1))
	sleep 0.1
done
check_that sigterm-ends "xendevd ended on SIGTERM" sh -c "! kill -0 $pid 2>/dev/null"
check_that sigterm-removes-socket "xendevd removed its socket" [ ! -e /run/xendevd.sock ]
check_that logs-loops-left "xendevd logged the loop devices it left: $(grep 'leaving' $LOG | head -n 1 | cut -c 14-)" \
	grep -q "leaving 2 loop device(s) attached for their domains: $dev_k ← /tmp/disks/b.img (domain $D, read-only); $gone ← /tmp/disks/a.img (domain $D, read-write) (recorded in /run/xendevd.disks.json" $LOG
check_that loops-stay-bound "$dev_k and $gone stay bound" [ -e /sys/block/${dev_k#/dev/}/loop -a -e /sys/block/${gone#/dev/}/loop ]
# While no xendevd runs, someone detaches one of them.
losetup -d "$gone"
# Daemonized: returns at once, the socket answers, the daemon's parent is init, its
# log goes to syslog (busybox syslogd, for this check).
syslogd -n -O /tmp/messages &
syslogd=$!
t0=$(ms)
xendevd
status=$?
t1=$(ms)
check_that daemonize-returns "xendevd (daemonizing) returned $status within $((t1 - t0)) ms" [ $status -eq 0 ]
pid=$(pidof xendevd)
ppid=$(awk '{ print $4 }' /proc/$pid/stat)
check_that daemon-under-init "the daemon ($pid) runs under init (parent $ppid) and answers" sh -c "[ $ppid -eq 1 ] && xendevd query >/dev/null"
state=$(xendevd query)
check_that restart-takes-back "after the restart, query lists $dev_k (taken back, not $gone) and vif$D.0 (adopted from Xenstore): $state" \
	[ "$state" = "{\"state\":{\"disks\":[$(echo "$k" | sed 's/^{"disk":\(.*\)}$/\1/')],\"vifs\":[{\"name\":\"vif$D.0\",\"bridge\":\"xenbr0\",\"domid\":$D}]}}" ]
check_that restarted-detaches "the restarted xendevd detaches $dev_k" [ "$(xendevd release "$D")" = '"done"' -a ! -e /sys/block/${dev_k#/dev/}/loop ]
kill -TERM "$pid"
# It removes its socket, then exits: wait for both (the socket alone can go first).
i=0
while { [ -e /run/xendevd.sock ] || kill -0 "$pid" 2>/dev/null; } && [ $i -lt 50 ]; do
	i=$((i + 1))
	sleep 0.1
done
check_that daemon-sigterm "the daemon ended on SIGTERM and removed its socket" sh -c "! kill -0 $pid 2>/dev/null && [ ! -e /run/xendevd.sock ]"
check_that logs-to-syslog "the daemon logged to syslog: $(grep "xendevd\[$pid\]: took back" /tmp/messages | head -n 1)" \
	grep -q "xendevd\[$pid\]: .*SIGTERM: shutting down" /tmp/messages
kill $syslogd
xendevd --foreground >/tmp/xendevd2.log 2>&1 &
i=0
until xendevd query >/dev/null 2>&1 || [ $i -gt 50 ]; do
	i=$((i + 1))
	sleep 0.1
done

# offline: the domain goes, its vif leaves the bridge and the list.
xl destroy "$D"
i=0
while xendevd query | grep -q "vif$D.0" && [ $i -lt 50 ]; do
	i=$((i + 1))
	sleep 0.1
done
check_that vif-offline-leaves-query "vif$D.0 left query's list after the domain was destroyed" sh -c "! xendevd query | grep -q vif$D.0"
check_that logs-vif-offline "xendevd logged vif$D.0 offline" grep -q "vif$D.0 (domain $D) offline" /tmp/xendevd2.log
xenstore-rm /local/domain/0/backend/vif/$D

### Measurement: uevent → hotplug-status = connected, one vif and eight at once.
M=$(new_domain vif-burst hello)
add_vif "$M" 0 xenbr0 chaos 00:16:3e:0a:01:00
hotplug_status "$M" 0 >/dev/null
nodes=
for n in 1 2 3 4 5 6 7 8; do
	f=/local/domain/$M/device/vif/$n
	b=/local/domain/0/backend/vif/$M/$n
	nodes="$nodes $f/backend $b $f/backend-id 0 $f/state 1 $f/handle $n $f/mac 00:16:3e:0a:01:0$n"
	nodes="$nodes $b/frontend $f $b/frontend-id $M $b/online 1 $b/state 1 $b/script xendevd $b/mac 00:16:3e:0a:01:0$n $b/bridge xenbr0 $b/handle $n $b/type vif $b/toolstack chaos"
done
xenstore-write $nodes
connected=0
for n in 1 2 3 4 5 6 7 8; do
	[ "$(hotplug_status "$M" $n)" = connected ] && connected=$((connected + 1))
done
check_that eight-vifs-connected "8 vifs written in one transaction: $connected connected" [ $connected -eq 8 ]
# "[ 12.345] INFO  vif5.1 (domain 5) on xenbr0 and up, …/hotplug-status = connected:
# 22.7 ms after its online uevent #798 (Xenstore reads 12.5 ms, …)"
grep -h "after its online uevent" $LOG /tmp/xendevd2.log |
	sed -n 's/^\[ *[0-9.]*\] INFO  \(vif[0-9.]*\) .* = connected: \([0-9.]*\) ms \(.*\)$/\1 \2 \3/p' |
	while read -r vif took detail; do
		measure "xendevd-$vif-connected" "$took" ms "$detail"
	done
span=$(grep "vif$M\.[1-8] (domain $M)" /tmp/xendevd2.log |
	sed -n 's/^\[ *\([0-9.]*\)\] .*: \([0-9.]*\) ms after its online uevent.*/\1 \2/p' |
	awk '{ r = $1 * 1000 - $2; d = $1 * 1000; busy += $2; if (NR == 1 || r < first) first = r; if (d > last) last = d }
		END { printf "%.1f %.1f", last - first, busy }')
measure xendevd-8-vifs-of-one-transaction ${span% *} ms \
	"from the first online uevent received to the last hotplug-status written, xendevd busy ${span#* } ms of it"
measure xl-vif-bridge-script "$xl_script" ms "per run (mean of 5, on vif$X.0)"
for dom in vif-burst vif-xl vif-nobridge; do xl destroy $dom 2>/dev/null; done
xenstore-rm /local/domain/0/backend/vif 2>/dev/null
finish
