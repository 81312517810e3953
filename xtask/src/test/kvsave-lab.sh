# Lab job for `cargo xtask test`: a kvstore guest's values survive chaos save and
# restore, save --keep-running and migrate to a receiver on this host, on both device
# methods (issue 14's acceptance; a Xenstore lab, so that both run). Each guest is made
# by chaos, gets keys and a counter from Debian's redis-cli in dom0, and must answer
# with the same values after each step, then count on (it runs). For NoXS the restored
# guest's devices are new (xendevd serves the new domain and offers them again once it
# runs): the values prove its vif reconnected; it has a read-only disk too (a
# migration to this host opens the image twice for a moment: one writer or many
# readers). A NoXS restore whose disk image is gone fails in one line and leaves
# nothing. A NoXS save file restored a second time
# while its guest runs is refused on the name, one line, nothing made; --paused is
# refused for a NoXS guest. Domains, taps, loop devices, Xenstore nodes and the NoXS
# domains xendevd serves are counted before and after. Save and restore times are
# measurements. Reports through lab-checks.sh's helpers.
set -u
PORT=6379

domains() { xl list | awk 'NR > 2' | wc -l; }
taps() { ls /sys/class/net | grep -c '^vif'; }
loops() { ls /sys/block/loop*/loop/backing_file 2>/dev/null | wc -l; }
nodes() { xenstore-ls -f | wc -l; }
served() { printf '{"op":"list_domains"}\n' | xendevd send | grep -o '"domid":[0-9]*' | sort -u | wc -l; }
held() { echo "$(domains) domains, $(taps) vifs and taps, $(loops) loop devices, $(nodes) Xenstore nodes, $(served) NoXS domains served"; }
now() { cut -d' ' -f1 /proc/uptime; }
ms_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%d", (b - a) * 1000 }'; }
domid_of() { chaos list | awk -v n="$1" '$2 == n { print $1 }'; }

mkdir -p /tmp/kvsave
cd /tmp/kvsave
config() { # NAME METHOD IP MAC [IMAGE]: a kvstore config in NAME.json, IMAGE read-only
	vbds=""
	[ -n "${5:-}" ] && vbds=", \"vbds\": [{\"target\": \"$5\", \"type\": \"file\", \"vdev\": \"xvda\", \"access\": \"r\"}]"
	cat >"$1.json" <<EOF
{"name": "$1", "kernel": "/apps/kvstore", "cmdline": "ip=$3/24 gw=10.0.2.2",
 "memory": 32, "vcpus": 1, "xen": {"dev_method": "$2"},
 "vifs": [{"ip": "$3", "mac": "$4", "bridge": "xenbr0"}]$vbds}
EOF
}
truncate -s 1M blank.img
config kvs-xs xenstore 10.0.2.16 00:16:3e:0a:00:16
config kvs-noxs noxs 10.0.2.17 00:16:3e:0a:00:17 /tmp/kvsave/blank.img

# values IP: what the guest at IP holds, in one line.
values() {
	echo "$(timeout 5 redis-cli -h "$1" -p $PORT --no-raw GET name 2>&1)" \
		"$(timeout 5 redis-cli -h "$1" -p $PORT --no-raw GET counter 2>&1)" \
		"$(timeout 5 redis-cli -h "$1" -p $PORT --no-raw DBSIZE 2>&1)"
}
# has IP EXPECTED TENTHS: the guest's values are EXPECTED within TENTHS tenths of a
# second (a restored guest's vif takes a moment to connect again); its values last
# seen are in got.
has() {
	i=0
	until got=$(values "$1") && [ "$got" = "$2" ]; do
		i=$((i + 1))
		[ $i -gt "$3" ] && return 1
		sleep 0.1
	done
}
incr() { timeout 5 redis-cli -h "$1" -p $PORT --no-raw INCR counter 2>&1; }
# console NAME: follow guest NAME's console (after each restore: a new domain) into
# NAME.out.
console() { chaos console "$1" </dev/null >>"$1.out" 2>&1 & }

d0=$(domains) t0=$(taps) l0=$(loops) n0=$(nodes) s0=$(served)
echo "before: $(held)"
started_job=$(now)

# --- two guests, one per device method, with keys ----------------------------------------
chaos create kvs-xs.json >xs.id 2>xs.err
status=$?
console kvs-xs
wait_for "kvstore: listening on 10.0.2.16:$PORT" 300 kvs-xs.out
check xs-created $((status + $?)) "$(cat xs.err) $(tr '\n' '|' <kvs-xs.out | head -c 400)"
chaos create kvs-noxs.json >noxs.id 2>noxs.err
status=$?
console kvs-noxs
wait_for "kvstore: listening on 10.0.2.17:$PORT" 300 kvs-noxs.out
check noxs-created $((status + $?)) "$(cat noxs.err) $(tr '\n' '|' <kvs-noxs.out | head -c 400)"
for ip in 10.0.2.16 10.0.2.17; do
	timeout 5 redis-cli -h $ip -p $PORT SET name "kept across $ip" >/dev/null 2>&1
	for _ in 1 2 3; do incr $ip >/dev/null; done
done
has 10.0.2.16 '"kept across 10.0.2.16" "3" (integer) 2' 10
check xs-has-keys $? "'$got'"
has 10.0.2.17 '"kept across 10.0.2.17" "3" (integer) 2' 10
check noxs-has-keys $? "'$got'"

# --- save (the guest goes), restore (a new domain with the values) -----------------------
xs_id=$(cat xs.id)
started=$(now)
chaos save kvs-xs xs.save 2>xs-save.err
status=$?
measure save-kvstore-xenstore "$(ms_since "$started")" ms "chaos save of a 32 MiB Xenstore kvstore"
check xs-save $status "$(cat xs-save.err)"
[ -z "$(domid_of kvs-xs)" ] && ! xl list "$xs_id" >/dev/null 2>&1
check xs-save-destroys-the-guest $? "$(chaos list | tr '\n' '|')"
started=$(now)
xs_new=$(chaos restore xs.save 2>xs-restore.err)
status=$?
measure restore-kvstore-xenstore "$(ms_since "$started")" ms "chaos restore, until the domain runs"
check xs-restore $status "domain '$xs_new' (was $xs_id): $(cat xs-restore.err)"
console kvs-xs
started=$(now)
has 10.0.2.16 '"kept across 10.0.2.16" "3" (integer) 2' 100
check xs-restored-values $? "'$got' $(ms_since "$started") ms after the restore returned"
[ "$(incr 10.0.2.16)" = "(integer) 4" ] && [ "$(domid_of kvs-xs)" = "$xs_new" ]
check xs-restored-counts-on $? "domain $(domid_of kvs-xs), restored as '$xs_new'"

noxs_id=$(cat noxs.id)
started=$(now)
chaos save kvs-noxs noxs.save 2>noxs-save.err
status=$?
measure save-kvstore-noxs "$(ms_since "$started")" ms "chaos save of a 32 MiB NoXS kvstore"
check noxs-save $status "$(cat noxs-save.err)"
[ -z "$(domid_of kvs-noxs)" ] && ! xl list "$noxs_id" >/dev/null 2>&1
check noxs-save-destroys-the-guest $? "$(chaos list | tr '\n' '|')"
# xendevd released its devices; the file has no kernel (a restore needs none).
count noxs-served-after-save "$s0" "$(served)"
config_len=$(od -An -tu4 -j20 -N4 noxs.save | tr -d ' ')
dd if=noxs.save bs=1 skip=32 count="$config_len" 2>/dev/null >noxs.config
grep -q '"mac":"00:16:3e:0a:00:17"' noxs.config && grep -q '"target":"/tmp/kvsave/blank.img"' noxs.config &&
	! grep -q '"kernel"' noxs.config
check noxs-save-file-has-the-devices $? "$(cat noxs.config)"
chaos restore --paused noxs.save >paused.out 2>paused.err
status=$?
[ $status -ne 0 ] && [ "$(wc -l <paused.err)" = 1 ] && grep -q 'cannot be restored paused' paused.err &&
	[ -z "$(domid_of kvs-noxs)" ]
check noxs-restore-paused-refused $? "status $status: $(cat paused.err)"
# Its disk's image gone: xendevd cannot serve the restored domain, which goes with
# whatever was made for it (after xc_domain_restore: the domain held the guest's
# memory).
d1=$(domains) t1=$(taps) l1=$(loops) n1=$(nodes) s1=$(served)
mv blank.img away.img
chaos restore noxs.save >noimage.out 2>noimage.err
status=$?
mv away.img blank.img
[ $status -ne 0 ] && [ "$(wc -l <noimage.err)" = 1 ] && grep -q 'blank.img.*nothing left behind' noimage.err
check noxs-restore-without-its-image-refused $? "status $status: $(cat noimage.err)"
count domains-after-failed-restore "$d1" "$(domains)"
count taps-after-failed-restore "$t1" "$(taps)"
count loop-devices-after-failed-restore "$l1" "$(loops)"
count xenstore-nodes-after-failed-restore "$n1" "$(nodes)"
count noxs-served-after-failed-restore "$s1" "$(served)"
started=$(now)
noxs_new=$(chaos restore noxs.save 2>noxs-restore.err)
status=$?
measure restore-kvstore-noxs "$(ms_since "$started")" ms "chaos restore, until the domain runs and its devices are offered again"
check noxs-restore $status "domain '$noxs_new' (was $noxs_id): $(cat noxs-restore.err)"
console kvs-noxs
started=$(now)
has 10.0.2.17 '"kept across 10.0.2.17" "3" (integer) 2' 100
check noxs-restored-values $? "'$got' $(ms_since "$started") ms after the restore returned; $(tail -n 5 kvs-noxs.out | tr '\n' '|')"
[ "$(incr 10.0.2.17)" = "(integer) 4" ] && [ "$(domid_of kvs-noxs)" = "$noxs_new" ]
check noxs-restored-counts-on $? "domain $(domid_of kvs-noxs), restored as '$noxs_new'"

# The same file again while its guest runs: the name is taken; one line, nothing made.
d1=$(domains) t1=$(taps) n1=$(nodes) s1=$(served)
chaos restore noxs.save >clash.out 2>clash.err
status=$?
[ $status -ne 0 ] && [ "$(wc -l <clash.err)" = 1 ] && grep -q 'name.*"kvs-noxs" exists already' clash.err
check noxs-restore-twice-refused $? "status $status: $(cat clash.err)"
count domains-after-clash "$d1" "$(domains)"
count taps-after-clash "$t1" "$(taps)"
count xenstore-nodes-after-clash "$n1" "$(nodes)"
count noxs-served-after-clash "$s1" "$(served)"

# --- save --keep-running: the same domain serves on -------------------------------------
started=$(now)
chaos save --keep-running kvs-xs xs-kept.save 2>xs-kept.err
check xs-save-keep-running $? "$(cat xs-kept.err) in $(ms_since "$started") ms"
has 10.0.2.16 '"kept across 10.0.2.16" "4" (integer) 2' 50
status=$?
[ $status -eq 0 ] && [ "$(incr 10.0.2.16)" = "(integer) 5" ] && [ "$(domid_of kvs-xs)" = "$xs_new" ]
check xs-kept-serves $? "'$got', domain $(domid_of kvs-xs) (was $xs_new)"
started=$(now)
chaos save --keep-running kvs-noxs noxs-kept.save 2>noxs-kept.err
check noxs-save-keep-running $? "$(cat noxs-kept.err) in $(ms_since "$started") ms"
has 10.0.2.17 '"kept across 10.0.2.17" "4" (integer) 2' 50
status=$?
[ $status -eq 0 ] && [ "$(incr 10.0.2.17)" = "(integer) 5" ] && [ "$(domid_of kvs-noxs)" = "$noxs_new" ]
check noxs-kept-serves $? "'$got', domain $(domid_of kvs-noxs) (was $noxs_new); $(tail -n 5 kvs-noxs.out | tr '\n' '|')"

# --- migrate to a receiver on this host --------------------------------------------------
chaos receive --once >xs-receive.out 2>xs-receive.err &
receiver=$!
wait_for "receiving guests on port 8002" 100 xs-receive.err
started=$(now)
chaos migrate kvs-xs 127.0.0.1 2>xs-migrate.err
status=$?
measure migrate-kvstore-xenstore "$(ms_since "$started")" ms "chaos migrate (live) to a receiver on this host"
# A receiver the migration never reached waits on: it goes (and the check fails).
ended $receiver 100 || kill $receiver
wait $receiver
check xs-migrate $((status + $?)) "$(cat xs-migrate.err); receiver: $(tr '\n' '|' <xs-receive.err)"
console kvs-xs
has 10.0.2.16 '"kept across 10.0.2.16" "5" (integer) 2' 100
status=$?
[ $status -eq 0 ] && [ "$(incr 10.0.2.16)" = "(integer) 6" ] && [ "$(domid_of kvs-xs)" = "$(cat xs-receive.out)" ] &&
	[ "$(chaos list | grep -c kvs-xs)" = 1 ]
check xs-migrated-values $? "'$got', domain $(domid_of kvs-xs), received '$(cat xs-receive.out)', $(chaos list | grep kvs-xs | tr '\n' '|')"

chaos receive --once >noxs-receive.out 2>noxs-receive.err &
receiver=$!
wait_for "receiving guests on port 8002" 100 noxs-receive.err
started=$(now)
chaos migrate kvs-noxs 127.0.0.1 2>noxs-migrate.err
status=$?
measure migrate-kvstore-noxs "$(ms_since "$started")" ms "chaos migrate (live) to a receiver on this host"
# A receiver the migration never reached waits on: it goes (and the check fails).
ended $receiver 100 || kill $receiver
wait $receiver
check noxs-migrate $((status + $?)) "$(cat noxs-migrate.err); receiver: $(tr '\n' '|' <noxs-receive.err)"
console kvs-noxs
has 10.0.2.17 '"kept across 10.0.2.17" "5" (integer) 2' 100
status=$?
[ $status -eq 0 ] && [ "$(incr 10.0.2.17)" = "(integer) 6" ] && [ "$(domid_of kvs-noxs)" = "$(cat noxs-receive.out)" ] &&
	[ "$(chaos list | grep -c kvs-noxs)" = 1 ]
check noxs-migrated-values $? "'$got', domain $(domid_of kvs-noxs), received '$(cat noxs-receive.out)', $(chaos list | grep kvs-noxs | tr '\n' '|'); $(tail -n 5 kvs-noxs.out | tr '\n' '|')"

# --- the end: nothing left ---------------------------------------------------------------
chaos destroy kvs-xs
check xs-destroyed $? ""
chaos destroy kvs-noxs
check noxs-destroyed $? ""
measure kvsave-seconds "$(awk "BEGIN { print $(now) - $started_job }")" s "from the first create to the last destroy"
sleep 1
echo "after: $(held)"
count domains "$d0" "$(domains)"
count taps "$t0" "$(taps)"
count loop-devices "$l0" "$(loops)"
count xenstore-nodes "$n0" "$(nodes)"
count noxs-domains-served "$s0" "$(served)"
echo "--- the NoXS guest's console"
tail -n 30 kvs-noxs.out
echo "--- xendevd's log"
tail -n 30 /var/log/xendevd.log
exit 0
