# Lab job for `cargo xtask test`, on two lab hosts side by side (`JobTest::hosts` 2,
# lab/hosts.rs): chaos migrates a kvstore guest (Xenstore method) from host 1 to host
# 2 while a client on host 1 talks to it (issue 14, point 6). The guest's vif is on
# xenbr1, the network the two hosts share, so it keeps its address 10.0.3.20 on either
# host. Host 2 runs `chaos receive --once` and says it is ready by listening on
# READY_PORT; host 1 creates the guest, sets values with redis-cli, migrates it to host
# 2 and checks that the same client reaches it at the same address: the values are
# there, new writes work, and host 1 has nothing of it left. Then it tells host 2 on
# DONE_PORT, and host 2, which saw the guest arrive and run, destroys it and checks it
# too has nothing left. A poller on host 1 measures how long the guest did not answer.
# Reports through lab-checks.sh's helpers, each host its own checks.
set -u
GUEST=10.0.3.20
PORT=6379
READY_PORT=9001
DONE_PORT=9002

domains() { xl list | awk 'NR > 2' | wc -l; }
vifs() { ls /sys/class/net | grep -c '^vif'; }
nodes() { xenstore-ls -f | wc -l; }
now() { cut -d' ' -f1 /proc/uptime; }
ms_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%d", (b - a) * 1000 }'; }
kv() { timeout 10 redis-cli -h $GUEST -p $PORT --raw "$@" 2>&1; }

mkdir -p /tmp/migrate
cd /tmp/migrate
d0=$(domains) v0=$(vifs) n0=$(nodes)

on_host1() {
	cat >kv.json <<EOF
{"name": "kv-move", "kernel": "/apps/kvstore", "cmdline": "ip=$GUEST/24",
 "memory": 32, "vcpus": 1, "xen": {"dev_method": "xenstore"},
 "vifs": [{"ip": "$GUEST", "mac": "00:16:3e:0a:03:20", "bridge": "$LAB_SHARED_BRIDGE"}]}
EOF
	chaos create kv.json >create.out 2>create.err
	status=$?
	chaos console kv-move >console.out 2>&1 &
	wait_for "kvstore: listening on $GUEST:$PORT" 300 console.out
	check kvstore-up-on-host1 $((status + $?)) "create status $status $(cat create.err); console: $(tail -n 3 console.out | tr '\n' '|')"
	kv SET greeting "hello from host 1" >/dev/null &&
		kv SET counter 41 >/dev/null &&
		[ "$(kv INCR counter)" = 42 ] && [ "$(kv DBSIZE)" = 2 ]
	check values-set-on-host1 $? "GET greeting: '$(kv GET greeting)', counter '$(kv GET counter)', DBSIZE '$(kv DBSIZE)'"

	# Host 2 listens on READY_PORT once its receiver is up.
	i=0
	until nc -w 2 "$LAB_PEER" $READY_PORT </dev/null >/dev/null 2>&1; do
		i=$((i + 1))
		[ $i -gt 300 ] && break
		sleep 0.5
	done
	check host2-ready $(($i > 300)) "after $i tries of $LAB_PEER:$READY_PORT"

	# A client polling the guest all along: the longest time between two answers is
	# what the migration cost it.
	(
		while [ ! -e poll.stop ]; do
			timeout 5 redis-cli -h $GUEST -p $PORT PING 2>/dev/null | grep -q PONG && now
			sleep 0.1
		done
	) >answers.out &
	poller=$!
	sleep 2
	started=$(now)
	chaos migrate kv-move "$LAB_PEER" >migrate.out 2>migrate.err
	status=$?
	migrate_ms=$(ms_since "$started")
	migrated_at=$(now)
	check migrate-to-host2 $status "$(tr '\n' '|' <migrate.err)"
	measure migrate-kvstore-32mib "$migrate_ms" ms "chaos migrate (live) to the other host, over the shared network"

	# The same client, the same address: the values are there, and new writes land.
	i=0
	until [ "$(kv GET greeting)" = "hello from host 1" ]; do
		i=$((i + 1))
		[ $i -gt 60 ] && break
		sleep 0.5
	done
	got=$(kv GET greeting)
	[ "$got" = "hello from host 1" ] && [ "$(kv GET counter)" = 42 ]
	check values-survive-on-host2 $? "after $i retries: greeting '$got', counter '$(kv GET counter)'"
	[ "$(kv INCR counter)" = 43 ] && [ "$(kv SET after-move yes)" = OK ] &&
		[ "$(kv GET after-move)" = yes ] && [ "$(kv DBSIZE)" = 3 ]
	check writes-after-migration $? "counter '$(kv GET counter)', after-move '$(kv GET after-move)', DBSIZE '$(kv DBSIZE)'"
	sleep 1
	touch poll.stop
	wait $poller
	gap=$(awk 'NR > 1 && $1 - last > max { max = $1 - last } { last = $1 } END { printf "%d", max * 1000 }' answers.out)
	awk -v t="$migrated_at" '$1 > t { found = 1 } END { exit !found }' answers.out
	check poller-reaches-it-after-migration $? "$(wc -l <answers.out) answers to PING in all, the last at $(tail -n 1 answers.out) s, migrated at $migrated_at s"
	measure client-gap "$gap" ms "the longest time between two answers to a client on host 1 polling every 0.1 s"

	[ -z "$(xl list | awk '$1 == "kv-move"')" ]
	check host1-no-longer-has-it $? "$(xl list | tr '\n' '|')"

	i=0
	until echo done | nc -w 2 "$LAB_PEER" $DONE_PORT >/dev/null 2>&1; do
		i=$((i + 1))
		[ $i -gt 20 ] && break
		sleep 0.5
	done
	check host2-told-done $(($i > 20)) "after $i tries of $LAB_PEER:$DONE_PORT"
	echo "--- the guest's console on host 1"
	tail -n 10 console.out
}

on_host2() {
	chaos receive --once >receive.out 2>receive.err &
	receiver=$!
	wait_for "receiving guests on port 8002" 300 receive.err
	check receiver-up-on-host2 $? "$(tr '\n' '|' <receive.err)"
	timeout 300 nc -l -p $READY_PORT </dev/null >/dev/null 2>&1
	ended $receiver 3000
	wait $receiver
	status=$?
	domid=$(cat receive.out)
	check receiver-got-one-guest $status "status $status, printed '$domid': $(tr '\n' '|' <receive.err)"
	state=$(xl list | awk '$1 == "kv-move" { print $2, $5 }')
	[ "${state%% *}" = "$domid" ] && case "${state#* }" in *r* | *b*) true ;; *) false ;; esac
	check guest-runs-on-host2 $? "domain $domid: xl list says '$state'"
	chaos console kv-move >console.out 2>&1 &
	[ "$(kv GET greeting)" = "hello from host 1" ]
	check host2-reaches-it-too $? "GET greeting: '$(kv GET greeting)'"

	timeout 400 nc -l -p $DONE_PORT </dev/null >done.out 2>&1
	grep -q done done.out
	check host1-done $? "'$(cat done.out)'"
	[ "$(kv GET after-move)" = yes ]
	check host2-sees-host1s-writes $? "after-move '$(kv GET after-move)'"
	chaos destroy kv-move
}

case "${LAB_HOST:-}" in
1) on_host1 ;;
2) on_host2 ;;
*)
	echo "LAB_HOST is '${LAB_HOST:-}': this job runs on two hosts (JobTest::hosts)" >&2
	exit 1
	;;
esac
# Each host's own leftovers: host 1's once the guest left it, host 2's once destroyed.
count domains "$d0" "$(domains)"
count vifs "$v0" "$(vifs)"
count xenstore-nodes "$n0" "$(nodes)"
exit 0
