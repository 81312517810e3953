# Lab job for `cargo xtask test`, in a NoXS lab (no xenstored, no xenconsoled): chaos's
# commands on NoXS guests (list, console, shutdown -w, destroy, create/destroy cycles
# that leak nothing), and a guest that attacks its back ends (apps/misbehave) next to
# honest guests: xendevd must survive and answer every attack, the honest guests keep
# working, and destroying the attacker releases everything. Reports through
# lab-checks.sh's helpers; everything else (consoles, xendevd's log) is for the log.
set -u
GUEST=10.0.2.16

daytime_answers() {
	nc -w 10 $GUEST 13 </dev/null 2>&1 |
		grep -Eq '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z'
}

xendevd_pid() { pidof xendevd; }
served() {
	xendevd query | sed -n 's/.*"domains":\[\(.*\)\].*/\1/p' | grep -o '"domid":[0-9]*' | sort -u | wc -l
}

mkdir -p /tmp/misbehave
cd /tmp/misbehave
pid=$(xendevd_pid)
truncate -s 16M victim.img
truncate -s 64M blkcheck.img

cat >daytime.json <<EOF
{"name": "honest-daytime", "kernel": "/apps/daytime", "cmdline": "ip=$GUEST/24 gw=10.0.2.2",
 "memory": 32, "vcpus": 1, "xen": {"dev_method": "noxs"},
 "vifs": [{"ip": "$GUEST", "mac": "00:16:3e:0a:00:10", "bridge": "xenbr0"}]}
EOF
cat >misbehave.json <<EOF
{"name": "misbehave", "kernel": "/apps/misbehave", "memory": 16, "vcpus": 1,
 "xen": {"dev_method": "noxs"},
 "vifs": [{"mac": "00:16:3e:0a:00:66", "bridge": "xenbr0"}],
 "vbds": [{"target": "/tmp/misbehave/victim.img", "type": "file", "vdev": "xvda", "access": "w"}]}
EOF
cat >blkcheck.json <<EOF
{"name": "honest-blkcheck", "kernel": "/apps/blkcheck", "memory": 32, "vcpus": 1,
 "xen": {"dev_method": "noxs"},
 "vbds": [{"target": "/tmp/misbehave/blkcheck.img", "type": "file", "vdev": "xvda", "access": "w"}]}
EOF

[ ! -e /run/xenstored.pid ] && ! pidof xenstored xenconsoled >/dev/null
check no-xenstored $? "$(pidof xenstored xenconsoled)"

domid=$(chaos create daytime.json 2>daytime.err)
check daytime-created $? "$(cat daytime.err)"
chaos console honest-daytime >daytime.out 2>daytime-console.err &
console=$!
wait_for "daytime: listening on $GUEST:13" 600 daytime.out
check console-streams $? "$(head -c 300 daytime.out | tr '\n' '|') $(cat daytime-console.err)"
daytime_answers
check daytime-answers-before $? ""
chaos list >list.out 2>&1
cat list.out
line=$(grep " honest-daytime " list.out)
echo "$line" | grep -Eq "^ +$domid +honest-daytime +32 +1 +[-rb]{2}-{4} +[0-9]+:[0-9]{2}:[0-9]{2}$"
check list-shows-it $? "'$line'"

chaos create misbehave.json >misbehave.id 2>misbehave.err
check misbehave-created $? "$(cat misbehave.err)"
chaos console misbehave >misbehave.out 2>&1 &
wait_for "misbehave: done" 1800 misbehave.out
check misbehave-done $? "$(tail -c 400 misbehave.out | tr '\n' '|')"
echo "--- misbehave's console"
cat misbehave.out
echo "---"
# Every attack of the app reports a line (13 on the vbd, 9 on the vif).
tr -d '\r' <misbehave.out >misbehave.lines
attacks=$(grep -cE '^misbehave: (vbd|vif): ' misbehave.lines)
[ "$attacks" -ge 22 ]
check misbehave-attacks-reported $? "$attacks attack lines"
# The honest read and the bad requests on the vbd, and the bad packets on the vif, must
# each be answered with an error: silence is a stuck back end. (A chain of fragments
# without its end waits for the rest, by the protocol: the next packet's slots end it,
# and their answers come with the next attack.)
answered() { # DEVICE
	silent=$(grep "^misbehave: $1: " misbehave.lines | grep -v "chain that never ends" |
		grep -E ': (no answer|statuses \[\])$' | tr '\n' '|')
	[ -z "$silent" ]
	check "misbehave-$1-attacks-answered" $? "unanswered: ${silent:-none}"
}
answered vbd
answered vif
grep -q "misbehave: vbd: connected" misbehave.out
check misbehave-vbd-connected $? ""
grep -q "misbehave: vif: connected" misbehave.out
check misbehave-vif-connected $? ""

[ "$(xendevd_pid)" = "$pid" ]
check xendevd-alive $? "pid $pid, now '$(xendevd_pid)'"
daytime_answers
check daytime-answers-during $? ""

chaos create --console blkcheck.json >blkcheck.out 2>&1
status=$?
grep -q "^blkcheck: ok" blkcheck.out
check blkcheck-passes-during $(( status | $? )) "status $status, $(tail -c 300 blkcheck.out | tr '\n' '|')"

chaos destroy misbehave
check misbehave-destroyed $? ""
daytime_answers
check daytime-answers-after $? ""
chaos shutdown -w honest-daytime >shutdown.out 2>&1
status=$?
check shutdown-w $status "status $status: $(cat shutdown.out)"
grep -q "honest-daytime (domain $domid) shut down: poweroff (reason code 0)" shutdown.out
check shutdown-reports-reason $? "$(cat shutdown.out)"
ended $console 100
check console-ends-with-the-guest $? "after $i tenths of a second"
grep -q "daytime: stopped" daytime.out
check console-has-last-words $? "$(tail -n 2 daytime.out | tr '\n' '|')"

# Create/destroy cycles of a paused NoXS guest with a vif and a disk: nothing may stay.
cat >cycle.json <<EOF
{"name": "cycle", "kernel": "/apps/daytime", "memory": 8, "vcpus": 1, "paused": true,
 "xen": {"dev_method": "noxs"},
 "vifs": [{"mac": "00:16:3e:0a:00:77", "bridge": "xenbr0"}],
 "vbds": [{"target": "/tmp/misbehave/victim.img", "type": "file", "vdev": "xvda", "access": "r"}]}
EOF
failed=0
started=$(date +%s)
for n in $(seq 1 ${CYCLES:-20}); do
	chaos create cycle.json >/dev/null 2>>cycle.err || failed=$((failed + 1))
	chaos destroy cycle 2>>cycle.err || failed=$((failed + 1))
done
errors=$(head -c 300 cycle.err)
[ $failed -eq 0 ]
check cycles-succeed $? "$failed failed commands in ${CYCLES:-20} cycles, $(($(date +%s) - started)) s${errors:+: $errors}"
sleep 1
n=$(served)
[ "$n" -eq 0 ]
check nothing-served-after $? "xendevd still serves $n domains: $(xendevd query)"
left=$(chaos list | awk 'NR > 1 && $1 != 0' | wc -l)
[ "$left" -eq 0 ]
check no-domains-after $? "$(chaos list)"
taps=$(ls /sys/class/net/xenbr0/brif | grep -vxc eth0)
[ "$taps" -eq 0 ]
check no-taps-after $? "$(ls /sys/class/net/xenbr0/brif | tr '\n' ' ')"
loops=$(ls /sys/block/loop*/loop/backing_file 2>/dev/null | wc -l)
[ "$loops" -eq 0 ]
check no-loop-devices-after $? "$loops"
[ "$(xendevd_pid)" = "$pid" ]
check xendevd-alive-after $? ""
echo "--- xendevd's log (tail)"
tail -n 60 /var/log/xendevd.log
