# Lab job for `cargo xtask test`: our guests suspend and resume under xl (Xenstore
# method). A kvstore guest keeps the values redis-cli set in dom0, and takes new
# writes, after `xl save` + `xl restore` (a new domain: every port, grant and back end
# new), after `xl save -c` (a checkpoint: it resumes in the same domain; restored, the
# checkpoint has the values of then) and after `xl migrate` to this host; a daytime
# guest migrates while a client asks it the time every 5 ms (its downtime measured); a
# blkcheck guest saved and restored in the middle of its rounds verifies every pattern
# (its requests in flight are queued again on the new back end). Nothing is left
# behind. Reports through lab-checks.sh's helpers.
set -u
GUEST=10.0.2.16

domains() { xl list | awk 'NR > 2' | wc -l; }
vifs() { ls /sys/class/net | grep -c '^vif'; }
loops() { ls /sys/block/loop*/loop/backing_file 2>/dev/null | wc -l; }
uptime_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }

# up CHECK NAME CONFIG CONSOLE TEXT: xl creates guest NAME from CONFIG, its console
# goes to CONSOLE, and TEXT shows there within a minute.
up() {
	xl create "$3" >"$3.out" 2>&1
	xl console "$2" >"$4" 2>&1 &
	wait_for "$5" 600 "$4"
	check "$1" $? "$(cat "$3.out") $(tail -n 2 "$4" | tr '\n' '|')"
}

mkdir -p /tmp/suspend
cd /tmp/suspend
d0=$(domains) v0=$(vifs) l0=$(loops)

# --- kvstore: its values across save and restore, checkpoint, migrate ----------------
kv() { timeout 10 redis-cli -h $GUEST -p 6379 "$@" 2>&1; }

# keeps NAME: the values set below are all there, and the guest still takes writes
# (the counter goes one up at each look).
keeps() {
	counter=$((counter + 1))
	got="$(kv GET greeting) $(kv GET binary | od -An -tx1 | tr -d ' \n') $(kv INCR counter) $(kv DBSIZE)"
	want="hello 00ff0a0d0a $counter 3"
	[ "$got" = "$want" ]
	check "$1" $? "got '$got', want '$want'"
}

cat >kvstore.cfg <<EOF
name = "sr-kvstore"
kernel = "/apps/kvstore"
cmdline = "ip=$GUEST/24 gw=10.0.2.2"
memory = 32
vif = ['mac=00:16:3e:0a:00:10,bridge=xenbr0']
EOF
up kvstore-boots sr-kvstore kvstore.cfg console1.out "kvstore: listening on $GUEST:6379"
kv SET greeting hello >/dev/null
printf '\000\377\n\r' | kv -x SET binary >/dev/null
for n in 1 2 3 4 5; do counter=$(kv INCR counter); done
keeps keeps-values-before-save
feature=$(xenstore-read "/local/domain/$(xl domid sr-kvstore)/control/feature-suspend" 2>&1)
check_that advertises-suspend "control/feature-suspend = '$feature'" [ "$feature" = 1 ]

started=$(uptime_ms)
timeout 120 xl save sr-kvstore save.img >save.out 2>&1
check xl-save $? "$(grep -E 'error|xc:|libxl:' save.out | tail -n 3 | tr '\n' '|')"
saved=$(uptime_ms)
check_that saved-domain-is-gone "$(xl list | tr '\n' '|')" [ "$(domains)" -eq "$d0" ]
timeout 120 xl restore save.img >restore.out 2>&1
check xl-restore $? "$(grep -E 'error|xc: error|libxl:' restore.out | tail -n 3 | tr '\n' '|')"
restored=$(uptime_ms)
measure xl-save $((saved - started)) ms "32 MiB kvstore, to a file"
measure xl-restore $((restored - saved)) ms "from that file"
xl console sr-kvstore >console2.out 2>&1 &
keeps keeps-values-after-restore
wait_for "netfront: vif0: connected again after a restore" 100 console2.out
check netfront-reconnects $? "$(grep -E 'suspend|netfront|resume' console2.out | tr '\n' '|')"

timeout 120 xl save -c sr-kvstore checkpoint.img >checkpoint.out 2>&1
check xl-save-checkpoint $? "$(grep -E 'error|xc: error|libxl:' checkpoint.out | tail -n 3 | tr '\n' '|')"
at_checkpoint=$counter
keeps keeps-values-after-checkpoint
wait_for "sysctl: resumed in the same domain" 100 console2.out
check checkpoint-resumes-in-place $? "$(tail -n 3 console2.out | tr '\n' '|')"

# Restored, the checkpoint is the guest as it was then: the counter of then.
xl destroy sr-kvstore >/dev/null 2>&1
timeout 120 xl restore checkpoint.img >checkpoint-restore.out 2>&1
check xl-restore-checkpoint $? "$(grep -E 'error|xc: error|libxl:' checkpoint-restore.out | tail -n 3 | tr '\n' '|')"
counter=$at_checkpoint
keeps keeps-values-of-the-checkpoint

# xl migrates to this host through a pipe: the incoming domain is sr-kvstore--incoming
# until the source is gone.
started=$(uptime_ms)
timeout 180 xl migrate -s "" sr-kvstore "xl migrate-receive" >migrate.out 2>&1
check xl-migrate-localhost $? "$(grep -iE 'error|fail|migration' migrate.out | tail -n 3 | tr '\n' '|')"
measure xl-migrate-localhost $(($(uptime_ms) - started)) ms "live, over a pipe"
check_that one-domain-after-migrate "$(xl list | tr '\n' '|')" [ "$(domains)" -eq $((d0 + 1)) ]
keeps keeps-values-after-migrate
xl destroy sr-kvstore >/dev/null 2>&1

# --- daytime migrated while a client asks it the time every few milliseconds ----------
# A guest busy with clients must still hear the suspend request (the network stack's
# task keeps yielding then; the executor must dispatch events between its rounds).
cat >daytime.cfg <<EOF
name = "sr-daytime"
kernel = "/apps/daytime"
cmdline = "ip=$GUEST/24 gw=10.0.2.2"
memory = 8
vif = ['mac=00:16:3e:0a:00:10,bridge=xenbr0']
EOF
up daytime-boots sr-daytime daytime.cfg daytime.out "daytime: listening on $GUEST:13"
bootbench --label suspend/migrate --runs 1 --warmup 0 downtime --addr $GUEST:13 \
	'xl migrate -s "" sr-daytime "xl migrate-receive"' >downtime.out 2>&1
check migrates-under-load $? "$(grep -iE 'bootbench|error|fail' downtime.out | tail -n 3 | tr '\n' '|')"
measure xl-migrate-downtime "$(awk '/^bootbench-downtime/ { print $4 }' downtime.out)" ms \
	"the longest time without an answer, for a client asking every 5 ms"
xl destroy sr-daytime >/dev/null 2>&1

# --- blkcheck: saved and restored with requests in flight ----------------------------
truncate -s 64M disk.img
dev=$(losetup -f)
losetup "$dev" disk.img
cat >blkcheck.cfg <<EOF
name = "sr-blkcheck"
kernel = "/apps/blkcheck"
cmdline = "rounds=40"
memory = 32
disk = ['phy:$dev,xvda,w']
EOF
up blkcheck-runs sr-blkcheck blkcheck.cfg blk1.out "blkcheck: round 2 of 40 verified"
timeout 120 xl save sr-blkcheck blk.img >blk-save.out 2>&1
check blkcheck-save $? "$(grep -E 'error|xc: error|libxl:' blk-save.out | tail -n 3 | tr '\n' '|')"
timeout 120 xl restore blk.img >blk-restore.out 2>&1
check blkcheck-restore $? "$(grep -E 'error|xc: error|libxl:' blk-restore.out | tail -n 3 | tr '\n' '|')"
xl console sr-blkcheck >blk2.out 2>&1 &
wait_for "blkcheck: ok" 900 blk2.out
check blkcheck-verifies-every-round $? "$(grep -E 'blkcheck|blkfront|resume' blk2.out | tail -n 5 | tr '\n' '|')"
grep -q "blkfront: xvda: connected again after a restore" blk2.out
check blkfront-reconnects $? "$(grep -E 'blkfront' blk2.out | tr '\n' '|')"
requeued=$(sed -n 's/.*blkfront: \([0-9]*\) request(s) in flight queued again.*/\1/p' blk2.out)
measure blkcheck-requests-queued-again "${requeued:-none}" requests "in flight when it suspended"
xl destroy sr-blkcheck >/dev/null 2>&1
losetup -d "$dev"

# netback and blkback let go asynchronously.
i=0
while [ $i -lt 100 ]; do
	[ "$(domains)" -eq "$d0" ] && [ "$(vifs)" -eq "$v0" ] && [ "$(loops)" -eq "$l0" ] && break
	i=$((i + 1))
	sleep 0.1
done
count domains "$d0" "$(domains)"
count vifs "$v0" "$(vifs)"
count loop-devices "$l0" "$(loops)"
exit 0
