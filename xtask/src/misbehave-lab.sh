# Lab job for `cargo xtask test`, in a NoXS lab (no xenstored): a guest that attacks
# its back ends (apps/misbehave) next to honest guests. Prints one line per check,
# which the host judges (test.rs, `misbehaving_guest`):
#   CHECK NAME ok|fail DETAIL
# Everything else (consoles, xendevd's log) is for the log.
set -u
GUEST=10.0.2.16

check() { # NAME CONDITION-STATUS DETAIL
	if [ "$2" -eq 0 ]; then echo "CHECK $1 ok $3"; else echo "CHECK $1 fail $3"; fi
}

# Wait up to $2 tenths of a second for a line with $1 in file $3.
wait_for() {
	i=0
	until grep -q "$1" "$3" 2>/dev/null; do
		i=$((i + 1))
		[ $i -gt "$2" ] && return 1
		sleep 0.1
	done
}

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

chaos create daytime.json >daytime.id 2>daytime.err
check daytime-created $? "$(cat daytime.err)"
i=0
until daytime_answers; do
	i=$((i + 1))
	[ $i -gt 60 ] && break
	sleep 1
done
daytime_answers
check daytime-answers-before $? ""

chaos create misbehave.json >misbehave.id 2>misbehave.err
check misbehave-created $? "$(cat misbehave.err)"
chaos console misbehave >misbehave.out 2>&1 &
wait_for "misbehave: done" 1800 misbehave.out
check misbehave-done $? "$(tail -c 400 misbehave.out | tr '\n' '|')"
echo "--- misbehave's console"
cat misbehave.out
echo "---"
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
chaos destroy honest-daytime
check daytime-destroyed $? ""
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
[ "$(xendevd_pid)" = "$pid" ]
check xendevd-alive-after $? ""
echo "--- xendevd's log (tail)"
tail -n 60 /var/log/xendevd.log
