# Lab job for `cargo xtask test`, in a NoXS lab: xendevd restarts without loss (NoXS
# v1.1, `xendevd/src/noxs/restart.rs`). A NoXS daytime and a disk hog (blkcheck hog=S,
# 16 flushed 1 MiB writes in flight at any time) run while xendevd is stopped by
# SIGTERM, then killed by SIGKILL, and started again each time. After each restart:
# daytime answers a client in dom0 again, its name, console (output and input) and power
# control are back (its vif and sysctl reconnected), and the hog's writes in flight
# complete (no failed write; the image holds whole chunks of the right task). A domain
# destroyed while no xendevd runs is cleaned up by the next one (its tap and record); a
# disk image replaced meanwhile is refused.
set -u
GUEST=10.0.2.16
cd /tmp

daytime_answers() {
	nc -w 5 $GUEST 13 </dev/null 2>/dev/null |
		grep -Eq '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z'
}
# Tenths of a second until daytime answers, at most 300.
answers_within() {
	i=0
	until daytime_answers || [ $i -ge 300 ]; do
		i=$((i + 1))
		sleep 0.1
	done
	echo $i
}
start_xendevd() {
	xendevd --foreground >>/var/log/xendevd.log 2>&1 &
	i=0
	until xendevd query >/dev/null 2>&1 || [ $i -gt 100 ]; do
		i=$((i + 1))
		sleep 0.1
	done
}
stop_xendevd() { # SIGNAL
	pid=$(pidof xendevd)
	kill -"$1" "$pid"
	i=0
	while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do
		i=$((i + 1))
		sleep 0.1
	done
	! kill -0 "$pid" 2>/dev/null
}
# What xendevd said of its take-backs, when daytime did not answer after $1 tenths.
taken_back() {
	[ "$1" -lt 300 ] || echo ": $(grep -E 'taken back|offered|cannot' /var/log/xendevd.log | tail -n 3 | tr '\n' '|')"
}
names() { chaos list 2>&1 | awk 'NR > 1 { print $2 }' | sort | tr '\n' ' '; }

truncate -s 32M hog.img
cat >daytime.json <<JSON
{"name": "rs-daytime", "kernel": "/apps/daytime", "cmdline": "ip=$GUEST/24 gw=10.0.2.2",
 "memory": 32, "vcpus": 1, "xen": {"dev_method": "noxs"},
 "vifs": [{"ip": "$GUEST", "mac": "00:16:3e:0a:00:20", "bridge": "xenbr0"}]}
JSON
cat >hog.json <<JSON
{"name": "rs-hog", "kernel": "/apps/blkcheck", "cmdline": "hog=40", "memory": 64, "vcpus": 1,
 "xen": {"dev_method": "noxs"},
 "vbds": [{"target": "/tmp/hog.img", "type": "file", "vdev": "xvda", "access": "w"}]}
JSON
cat >hello.json <<JSON
{"name": "rs-hello", "kernel": "/apps/hello", "cmdline": "echo", "memory": 16, "vcpus": 1,
 "xen": {"dev_method": "noxs"},
 "vifs": [{"mac": "00:16:3e:0a:00:21", "bridge": "xenbr0"}]}
JSON

chaos create daytime.json >daytime.id 2>daytime.err
check daytime-created $? "$(cat daytime.err)"
domid=$(cat daytime.id)
i=$(answers_within)
[ "$i" -lt 300 ]
check daytime-answers-first $? "after $i tenths of a second"
before=$(names)

# --- SIGTERM: a stopped xendevd leaves its guests as they are ------------------------
stop_xendevd TERM
check sigterm-stops $? "$(tail -n 3 /var/log/xendevd.log | tr '\n' '|')"
[ -e "/run/xendevd/noxs/$domid.json" ] && [ -e "/sys/class/net/vif$domid.0" ]
check sigterm-leaves-record-and-tap $? "$(ls /run/xendevd/noxs /sys/class/net | tr '\n' ' ')"
! daytime_answers
check no-answer-while-stopped $? "daytime answered with no back end running"
start_xendevd
i=$(answers_within)
measure sigterm-restart-to-answer $((i * 100)) ms "from xendevd's start to daytime's answer"
[ "$i" -lt 300 ]
check daytime-answers-after-sigterm $? "after $i tenths of a second$(taken_back "$i")"
[ "$(names)" = "$before" ]
check names-after-sigterm $? "chaos list: $(names), before: $before"
daylog=/var/log/xendevd/console/rs-daytime-$domid.log
grep -q "netfront: vif0 reconnected (generation 1)" "$daylog" && grep -q "rings started afresh" "$daylog"
check daytime-vif-reconnected $? "$(grep -E 'noxs|netfront|sysctl' "$daylog" | tail -n 4 | tr '\r\n' ' |')"

# --- SIGKILL with disk writes in flight ------------------------------------------------
chaos create hog.json >hog.id 2>hog.err
check hog-created $? "$(cat hog.err)"
chaos console rs-hog >hog.out 2>&1 &
wait_for "kernel:" 100 hog.out
sleep 5
stop_xendevd KILL
check sigkill-kills $? "xendevd still there"
sleep 2
start_xendevd
i=$(answers_within)
measure sigkill-restart-to-answer $((i * 100)) ms "from xendevd's start to daytime's answer"
[ "$i" -lt 300 ]
check daytime-answers-after-sigkill $? "after $i tenths of a second$(taken_back "$i")"
# The console follower of before the kill is gone with that xendevd: follow again.
chaos console rs-hog >hog2.out 2>&1 &
wait_for "blkcheck: hog wrote" 900 hog2.out
grep -q "blkcheck: hog wrote" hog2.out && ! grep -q "FAIL" hog2.out
check hog-writes-in-flight-complete $? "$(tail -c 400 hog2.out | tr '\n' '|')"
grep -q "reconnected" hog2.out
check hog-disk-reconnected $? "$(grep -i -E 'noxs|blkfront' hog2.out | tail -n 4 | tr '\n' '|')"
# Each 1 MiB chunk p of the image is task p % 16's (all bytes p % 16) or never written.
for t in $(seq 0 15); do
	head -c 1048576 /dev/zero | tr '\000' "\\$(printf '%03o' "$t")" >"chunk$t"
done
head -c 1048576 /dev/zero >chunk-zero
bad=""
for p in $(seq 0 31); do
	dd if=hog.img bs=1048576 skip="$p" count=1 2>/dev/null >chunk.now
	cmp -s chunk.now "chunk$((p % 16))" || cmp -s chunk.now chunk-zero || bad="$bad $p"
done
[ -z "$bad" ]
check hog-image-whole $? "chunks not whole:${bad:-none}"

# Console input and power control came back too.
chaos create hello.json >hello.id 2>hello.err
check hello-created $? "$(cat hello.err)"
hello=$(cat hello.id)
sleep 3
stop_xendevd KILL
start_xendevd
i=0
until grep -q "reconnected" "/var/log/xendevd/console/rs-hello-$hello.log" 2>/dev/null || [ $i -gt 100 ]; do
	i=$((i + 1))
	sleep 0.1
done
(sleep 1; echo again; sleep 0.5; echo bye) | timeout 60 chaos console rs-hello >hello.out 2>&1
tr -d '\r' <hello.out | grep -qx "hello: you said again"
check console-input-after-sigkill $? "$(tail -c 300 hello.out | tr '\r\n' ' |')"
timeout 60 chaos shutdown -w rs-daytime >shutdown.out 2>&1
check power-control-after-sigkill $? "$(cat shutdown.out)"
chaos destroy rs-daytime >/dev/null 2>&1
[ ! -e "/sys/class/net/vif$domid.0" ] && [ ! -e "/run/xendevd/noxs/$domid.json" ]
check shutdown-leaves-nothing $? "$(ls /run/xendevd/noxs /sys/class/net | tr '\n' ' ')"

# --- A domain destroyed while no xendevd runs ------------------------------------------
stop_xendevd TERM
chaos destroy "$hello" >destroy.out 2>&1
check destroyed-while-stopped $? "$(cat destroy.out)"
start_xendevd
sleep 1
[ ! -e "/sys/class/net/vif$hello.0" ] && [ ! -e "/run/xendevd/noxs/$hello.json" ]
check ended-while-stopped-cleaned $? "$(ls /run/xendevd/noxs /sys/class/net | tr '\n' ' '): $(grep "forgotten" /var/log/xendevd.log | tail -n 1)"
chaos destroy rs-hog >/dev/null 2>&1

# A disk image replaced while no xendevd runs is not given to the guest again.
truncate -s 16M swap.img
sed 's/rs-hog/rs-swap/; s/hog=40/hog=120/; s|/tmp/hog.img|/tmp/swap.img|' hog.json >swap.json
chaos create swap.json >swap.id 2>swap.err
check swap-created $? "$(cat swap.err)"
stop_xendevd TERM
cp swap.img swap.new && mv swap.new swap.img
start_xendevd
grep -q "swap.img is another file now" /var/log/xendevd.log
check replaced-image-refused $? "$(grep "rs-swap" /var/log/xendevd.log | tail -n 1)"
chaos destroy "$(cat swap.id)" >/dev/null 2>&1
[ -z "$(ls /run/xendevd/noxs)" ] && ! ls /sys/class/net | grep -q '^vif'
check nothing-left $? "$(ls /run/xendevd/noxs /sys/class/net | tr '\n' ' ')"
