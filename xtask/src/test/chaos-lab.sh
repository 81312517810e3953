# Lab job for `cargo xtask test`: chaos's commands on real Xen — create, list, console,
# shutdown -w, destroy of daytime with its vif; console input through xenconsoled (lines
# piped into `chaos console` reach `hello echo`); a destroy while `create --console`
# watches; malformed configurations, each refused with status 2 and one line naming the
# field; create/destroy cycles that leak nothing. Reports through lab-checks.sh's
# helpers; everything else (command output) is for the log.
set -u
CYCLES=${CYCLES:-100}
GUEST=10.0.2.16

domains() { xl list | awk 'NR > 2' | wc -l; }
loops() { ls /sys/block/loop*/loop/backing_file 2>/dev/null | wc -l; }
vifs() { ls /sys/class/net | grep -c '^vif'; }
nodes() { xenstore-ls -f | wc -l; }

mkdir -p /tmp/chaos
cd /tmp/chaos

# --- create, list, console, shutdown -w, destroy: daytime with its vif ---------------
cat >daytime.json <<EOF
{"name": "chaos-daytime", "kernel": "/apps/daytime", "cmdline": "ip=$GUEST/24 gw=10.0.2.2",
 "memory": 32, "vcpus": 1,
 "vifs": [{"ip": "$GUEST", "mac": "00:16:3e:0a:00:10", "bridge": "xenbr0"}]}
EOF
domid=$(chaos create daytime.json 2>create.err)
status=$?
check create $status "status $status, printed domid '$domid' $(cat create.err)"
case "$domid" in '' | *[!0-9]*) false ;; *) true ;; esac
check create-prints-domid $? "'$domid'"

chaos list >list.out 2>&1
cat list.out
line=$(grep " chaos-daytime " list.out)
echo "$line" | grep -Eq "^ +$domid +chaos-daytime +32 +1 +[-rb]{2}-{4} +0:00:[0-9]{2}$"
check list-shows-it $? "'$line'"
xl list >xl-list.out 2>&1
cat xl-list.out
grep -Eq "^chaos-daytime +$domid +32 +1 " xl-list.out
check xl-list-shows-it $? "$(grep chaos-daytime xl-list.out)"

chaos console chaos-daytime >console.out 2>console.err &
console=$!
wait_for "daytime: listening on $GUEST:13" 300 console.out
check console-streams $? "$(head -c 300 console.out | tr '\n' '|')"

answer=$(nc -w 10 $GUEST 13 </dev/null 2>&1)
echo "$answer" | grep -Eq '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z'
check daytime-answers $? "'$answer'"

chaos shutdown -w chaos-daytime >shutdown.out 2>&1
status=$?
check shutdown-w $status "status $status: $(cat shutdown.out)"
grep -q "chaos-daytime (domain $domid) shut down: poweroff (reason code 0)" shutdown.out
check shutdown-reports-reason $? "$(cat shutdown.out)"
# The console ends by itself once the guest is gone.
ended $console 50
check console-ends-with-the-guest $? "after $i tenths of a second"
wait $console
check console-status $? "$(cat console.err)"
grep -q "daytime: stopped" console.out
check console-has-last-words $? "$(tail -n 2 console.out | tr '\n' '|')"
chaos list | grep -q chaos-daytime
[ $? -ne 0 ]
check gone-after-shutdown $? "$(chaos list | tr '\n' '|')"

domid=$(chaos create daytime.json)
check create-again $? "$domid"
chaos destroy chaos-daytime
check destroy $? ""
chaos list | grep -q chaos-daytime
[ $? -ne 0 ]
check gone-after-destroy $? ""
chaos destroy chaos-daytime 2>destroy.err
status=$?
[ $status -eq 1 ] && grep -q 'no domain named "chaos-daytime"' destroy.err
check destroy-unknown-fails $? "status $status: $(cat destroy.err)"

# --- console input through xenconsoled: lines piped into `chaos console` -------------
cat >echo.json <<EOF
{"name": "chaos-echo", "kernel": "/apps/hello", "cmdline": "echo", "memory": 16, "vcpus": 1}
EOF
chaos create echo.json >/dev/null 2>echo.err
check echo-created $? "$(cat echo.err)"
(sleep 1; echo alpha; sleep 0.5; echo bye) | chaos console chaos-echo >echo.out 2>&1 &
console=$!
ended $console 300
check console-input-ends-with-the-guest $? "after $i tenths of a second"
tr -d '\r' <echo.out | grep -qx "hello: you said alpha"
check console-input-reaches-the-guest $? "$(tail -c 200 echo.out | tr '\r\n' ' |')"
chaos list | grep -Eq "^ +[0-9]+ +chaos-echo +16 +1 +---s-- "
check console-input-bye-powers-off $? "$(chaos list | grep chaos-echo)"
chaos destroy chaos-echo

# --- one guest, two chaos tearing it down: `create --console` watching, `destroy` ----
# Both remove the domain's Xenstore nodes at once; each must succeed.
failed=0
for n in 1 2 3 4 5; do
	# Emptied here, not by the redirection below: that happens in the child, maybe
	# after wait_for has read the last round's line.
	: >race.out
	chaos create --console daytime.json >race.out 2>race.err &
	creator=$!
	wait_for "daytime: listening" 300 race.out
	chaos destroy chaos-daytime 2>>race.err
	destroyed=$?
	wait $creator
	created=$?
	if [ $created -ne 6 ] || [ $destroyed -ne 0 ]; then
		failed=$((failed + 1))
		echo "round $n: create --console $created (6 wanted), destroy $destroyed: $(tr '\n' '|' <race.err)"
	fi
done
# Both ended; so must the domain (at most 10 s for the back ends to let go of it).
i=0
while [ "$(domains)" -ne 0 ] && [ $i -lt 100 ]; do
	i=$((i + 1))
	sleep 0.1
done
[ "$(domains)" -eq 0 ] || failed=$((failed + 1))
check destroy-while-watched "$failed" "$failed of 5 rounds failed; domains left: $(domains) after $i tenths of a second"

# --- malformed configurations: status 2, one line naming the field, no domain --------
truncate -s 8M disk.img
printf 'not a kernel\n' >notakernel
# hello with e_phentsize (bytes 54-55 of the ELF64 header) and e_shentsize (58-59) 0.
cp /apps/hello phent0 && printf '\000\000' | dd of=phent0 bs=1 seek=54 conv=notrunc 2>/dev/null
cp /apps/hello shent0 && printf '\000\000' | dd of=shent0 bs=1 seek=58 conv=notrunc 2>/dev/null
# dup: a domain of that name exists (paused noop).
echo '{"name": "dup", "kernel": "/apps/noop", "memory": 4, "vcpus": 1, "paused": true}' >dup.json
chaos create dup.json >/dev/null
check dup-exists $? ""
before=$(domains)
bad() { # NAME JSON STDERR: chaos refuses the config with status 2 and one line on stderr, `chaos: bad-NAME.json: STDERR…`
	printf '%s\n' "$2" >"bad-$1.json"
	chaos create "bad-$1.json" >bad.out 2>bad.err
	status=$?
	lines=$(wc -l <bad.err)
	expected="chaos: bad-$1.json: $3"
	case "$status $lines $(cat bad.err)" in
	"2 1 $expected"*) true ;;
	*) false ;;
	esac
	check "bad-config-$1" $? "status $status, $lines line(s) on stderr: $(tr '\n' '|' <bad.err) (expected status 2 and one line starting '$expected')"
}
base='"kernel": "/apps/hello", "memory": 8, "vcpus": 1'
disk='"target": "/tmp/chaos/disk.img", "type": "file"'
bad syntax '{"name": "x", "kernel": "/apps/hello",' \
	'not valid JSON: EOF while parsing a value (line 2, column 0)'
bad unknown-key "{\"name\": \"x\", $base, \"memroy\": 8}" \
	'memroy: unknown key'
bad mac "{\"name\": \"x\", $base, \"vifs\": [{\"mac\": \"00:16:3e:zz:00:01\"}]}" \
	'vifs[0].mac: "00:16:3e:zz:00:01" is not a MAC address'
bad ip "{\"name\": \"x\", $base, \"vifs\": [{\"ip\": \"10.0.2.300\"}]}" \
	'vifs[0].ip: "10.0.2.300" is not an IPv4 address'
bad missing-kernel '{"name": "x", "kernel": "/apps/nonexistent", "memory": 8, "vcpus": 1}' \
	'kernel: /apps/nonexistent: no such file'
bad non-elf-kernel '{"name": "x", "kernel": "/tmp/chaos/notakernel", "memory": 8, "vcpus": 1}' \
	'kernel: /tmp/chaos/notakernel is not an ELF file'
bad kernel-phentsize-0 '{"name": "x", "kernel": "/tmp/chaos/phent0", "memory": 8, "vcpus": 1}' \
	'kernel: /tmp/chaos/phent0 is a broken ELF file (e_phentsize 0 with e_phnum '
bad kernel-shentsize-0 '{"name": "x", "kernel": "/tmp/chaos/shent0", "memory": 8, "vcpus": 1}' \
	'kernel: /tmp/chaos/shent0 is a broken ELF file (e_shentsize 0 with e_shnum '
bad memory '{"name": "x", "kernel": "/apps/hello", "memory": 3, "vcpus": 1}' \
	'memory: 3 MiB is too little'
bad too-much-memory '{"name": "x", "kernel": "/apps/hello", "memory": 900000, "vcpus": 1}' \
	'memory: 900000 MiB asked, but Xen has '
bad duplicate-name "{\"name\": \"dup\", $base}" \
	'name: a domain named "dup" exists already'
bad vdev-clash "{\"name\": \"x\", $base, \"vbds\": [{$disk, \"vdev\": \"xvda\"}, {$disk, \"vdev\": \"d0p0\"}]}" \
	"vbds[1].vdev: d0p0 is the same disk as vbds[0]'s xvda"
bad vdev-name "{\"name\": \"x\", $base, \"vbds\": [{$disk, \"vdev\": \"xvd1\"}]}" \
	'vbds[0].vdev: "xvd1" is not a virtual disk name'
bad vcpus '{"name": "x", "kernel": "/apps/hello", "memory": 8, "vcpus": 0}' \
	'vcpus: 0: a domain needs at least one vCPU'
bad dev-method "{\"name\": \"x\", $base, \"xen\": {\"dev_method\": \"carrier-pigeon\"}}" \
	'xen.dev_method: "carrier-pigeon" is not a device method ("xenstore" or "noxs")'
bad no-bridge "{\"name\": \"x\", $base, \"vifs\": [{\"bridge\": \"nobr0\"}]}" \
	'vifs[0].bridge: dom0 has no bridge named nobr0'
bad phy-not-a-device "{\"name\": \"x\", $base, \"vbds\": [{\"target\": \"/tmp/chaos/disk.img\", \"type\": \"phy\", \"vdev\": \"xvda\"}]}" \
	'vbds[0].target: /tmp/chaos/disk.img is not a block device'
after=$(domains)
count domains-after-bad-configs "$before" "$after"
chaos destroy dup
check dup-destroyed $? ""

# --- create/destroy cycles: nothing leaks ---------------------------------------------
truncate -s 16M cycle.img
cat >cycle.json <<EOF
{"name": "cycle", "kernel": "/apps/noop", "memory": 4, "vcpus": 1, "paused": true,
 "vifs": [{"bridge": "xenbr0"}],
 "vbds": [{"target": "/tmp/chaos/cycle.img", "type": "file", "vdev": "xvda", "access": "w"}]}
EOF
# Settle: whatever the checks above started is gone (netback, loop autoclear).
sleep 2
d0=$(domains) l0=$(loops) v0=$(vifs) n0=$(nodes)
started=$(date +%s)
failed=0
n=0
while [ $n -lt "$CYCLES" ]; do
	if ! chaos create cycle.json >/dev/null 2>cycle.err; then
		failed=$((failed + 1))
		echo "cycle $n: create failed: $(cat cycle.err)"
	fi
	if ! chaos destroy cycle 2>cycle.err; then
		failed=$((failed + 1))
		echo "cycle $n: destroy failed: $(cat cycle.err)"
	fi
	n=$((n + 1))
done
took=$(($(date +%s) - started))
check cycles-succeed "$failed" "$failed failed commands in $CYCLES cycles; $took s in all"
# netback and blkback let go asynchronously: give them up to 10 s.
i=0
while [ $i -lt 100 ]; do
	[ "$(domains)" -eq "$d0" ] && [ "$(loops)" -eq "$l0" ] && [ "$(vifs)" -eq "$v0" ] && [ "$(nodes)" -eq "$n0" ] && break
	i=$((i + 1))
	sleep 0.1
done
count domains "$d0" "$(domains)"
count loop-devices "$l0" "$(loops)"
count vifs "$v0" "$(vifs)"
count xenstore-nodes "$n0" "$(nodes)"
# For the log, shown if a check failed.
echo "--- /var/log/xendevd.log"
cat /var/log/xendevd.log
exit 0
