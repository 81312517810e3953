# Lab job for `cargo xtask test`: chaos save, restore and migrate (issue 14, point 3) of
# a Linux PV guest that chaos creates (point 7: Debian's kernel and the lab's busybox
# initramfs, /apps/linux, with a vif and a file-backed disk on the Xenstore method; its
# suspend path is Linux's, so this checks chaos's apart from our unikernel's). The guest
# answers on port 13 with its boot id (the same after a restore: its memory came back)
# and what its disk holds now (read-only: a migration to the same host attaches it twice
# for a moment, and an image has one writer or many readers). Then: a save file cut
# short or with a damaged stream, and a name clash, are refused in one line and leave
# nothing behind; `save --keep-running` keeps it answering; `migrate` to a receiver on
# this host moves it; a receiver that is not there, or is killed mid-stream, leaves the
# source running and nothing behind. Reports through lab-checks.sh's helpers; the rest
# is for the log.
set -u
GUEST=10.0.2.20

domains() { xl list | awk 'NR > 2' | wc -l; }
loops() { ls /sys/block/loop*/loop/backing_file 2>/dev/null | wc -l; }
vifs() { ls /sys/class/net | grep -c '^vif'; }
nodes() { xenstore-ls -f | wc -l; }
now() { cut -d' ' -f1 /proc/uptime; }
ms_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%d", (b - a) * 1000 }'; }
# The guest's answer ("linux BOOT_ID UPTIME DISK"), waiting up to $1 half-seconds.
answer() {
	i=0
	until nc -w 3 $GUEST 13 </dev/null >answer.out 2>/dev/null && grep -q '^linux ' answer.out; do
		i=$((i + 1))
		[ $i -gt "$1" ] && return 1
		sleep 0.5
	done
	cat answer.out
}
# The disk's first bytes, written from dom0 into the image under the running guest.
mark() { printf '%s' "$1" | dd of=/tmp/save/linux.img conv=notrunc 2>/dev/null; }

mkdir -p /tmp/save
cd /tmp/save
truncate -s 16M linux.img
mark BEFORE-SAVE
cat >linux.json <<EOF
{"name": "linux", "kernel": "/apps/linux/vmlinuz", "ramdisk": "/apps/linux/initrd",
 "cmdline": "console=hvc0 quiet lab_ip=$GUEST/24 lab_gw=10.0.2.2", "memory": 128, "vcpus": 1,
 "vifs": [{"ip": "$GUEST", "mac": "00:16:3e:0a:00:20", "bridge": "xenbr0"}],
 "vbds": [{"target": "/tmp/save/linux.img", "type": "file", "vdev": "xvda", "access": "r"}]}
EOF
d0=$(domains) l0=$(loops) v0=$(vifs) n0=$(nodes)

domid=$(chaos create linux.json 2>create.err)
check linux-created $? "domain '$domid' $(cat create.err)"
chaos console linux </dev/null >console.out 2>&1 &
before=$(answer 240)
check linux-answers $? "'$before'"
boot_id=$(echo "$before" | cut -d' ' -f2)
echo "$before" | grep -q ' BEFORE-SAVE'
check linux-reads-its-disk $? "'$before'"

# --- save, restore ----------------------------------------------------------------------
started=$(now)
chaos save linux linux.save 2>save.err
status=$?
save_ms=$(ms_since "$started")
check save $status "$(cat save.err)"
measure save-linux-128mib "$save_ms" ms "chaos save of the 128 MiB Linux guest, $(($(stat -c %s linux.save) >> 20)) MiB file"
[ "$(stat -c %a linux.save)" = 600 ]
check save-file-is-private $? "mode $(stat -c %a linux.save): it holds the guest's memory"
[ -z "$(xl list | awk '$1 == "linux"')" ] && [ "$(domains)" = "$d0" ]
check save-destroys-the-guest $? "$(xl list | tr '\n' '|')"
# A file whose stream is damaged past the checks made before anything is created: the
# restore fails inside libxc, and the domain and devices made for it go.
config_len=$(od -An -tu4 -j20 -N4 linux.save | tr -d ' ')
cp linux.save damaged.save
dd if=/dev/zero of=damaged.save bs=1 seek=$((32 + config_len + 16)) count=64 conv=notrunc 2>/dev/null
chaos restore damaged.save >damaged.out 2>damaged.err
status=$?
[ $status -eq 1 ] && [ "$(wc -l <damaged.err)" = 1 ] && grep -q 'xc_domain_restore.*nothing left behind' damaged.err
check damaged-stream-refused $? "status $status: $(cat damaged.err)"
count domains-after-damaged-restore "$d0" "$(domains)"
count loop-devices-after-damaged-restore "$l0" "$(loops)"
count vifs-after-damaged-restore "$v0" "$(vifs)"
count xenstore-nodes-after-damaged-restore "$n0" "$(nodes)"
rm -f damaged.save

mark AFTER-RESTORE
started=$(now)
new=$(chaos restore linux.save 2>restore.err)
status=$?
restore_ms=$(ms_since "$started")
check restore $status "domain '$new' $(cat restore.err)"
measure restore-linux-128mib "$restore_ms" ms "chaos restore, until the domain runs"
case "$new" in '' | *[!0-9]*) false ;; *) [ "$new" != "$domid" ] ;; esac
check restore-prints-the-new-domid $? "'$new' (was $domid)"
[ "$(xenstore-read /local/domain/$new/name 2>&1)" = linux ]
check restore-keeps-the-name $? "$(xenstore-read /local/domain/$new/name 2>&1)"
started=$(now)
after=$(answer 120)
check restored-linux-answers $? "'$after' after $(ms_since "$started") ms"
[ "$(echo "$after" | cut -d' ' -f2)" = "$boot_id" ]
check restored-linux-is-the-same-boot $? "boot id before $boot_id, after '$after'"
echo "$after" | grep -q ' AFTER-RESTORE'
check restored-linux-reads-its-disk $? "'$after'"

# --- a file cut short: one line, nothing made -------------------------------------------
d1=$(domains) l1=$(loops) v1=$(vifs) n1=$(nodes)
size=$(stat -c %s linux.save)
head -c $((size / 2)) linux.save >short.save
chaos restore short.save >short.out 2>short.err
status=$?
[ $status -ne 0 ] && [ "$(wc -l <short.err)" = 1 ] && grep -q 'short.save: cut short' short.err
check short-file-refused $? "status $status: $(cat short.err)"
# The clash of names is refused too, before anything is made.
chaos restore linux.save >clash.out 2>clash.err
status=$?
[ $status -ne 0 ] && [ "$(wc -l <clash.err)" = 1 ] && grep -q 'name.*"linux" exists already' clash.err
check name-clash-refused $? "status $status: $(cat clash.err)"
count domains-after-refusals "$d1" "$(domains)"
count loop-devices-after-refusals "$l1" "$(loops)"
count vifs-after-refusals "$v1" "$(vifs)"
count xenstore-nodes-after-refusals "$n1" "$(nodes)"
answer 10 >/dev/null
check linux-still-answers $? "$(cat answer.out)"

# --- save --keep-running -----------------------------------------------------------------
started=$(now)
chaos save --keep-running linux kept.save 2>kept.err
status=$?
check save-keep-running $status "$(cat kept.err) in $(ms_since "$started") ms"
kept=$(answer 60)
check kept-linux-answers $? "'$kept'"
[ "$(echo "$kept" | cut -d' ' -f2)" = "$boot_id" ] && [ "$(xl domid linux 2>&1)" = "$new" ]
check kept-linux-is-the-same-domain $? "domain $(xl domid linux 2>&1) (restored as $new), '$kept'"

# --- migrate to a receiver on this host ---------------------------------------------------
chaos receive --once >receive.out 2>receive.err &
receiver=$!
wait_for "receiving guests on port 8002" 100 receive.err
started=$(now)
chaos migrate linux 127.0.0.1 2>migrate.err
status=$?
migrate_ms=$(ms_since "$started")
check migrate $status "$(cat migrate.err)"
measure migrate-linux-128mib "$migrate_ms" ms "chaos migrate (live) to a receiver on the same host"
ended $receiver 100
wait $receiver
status=$?
moved=$(cat receive.out)
check receiver-exits-after-one $status "status $status, printed '$moved': $(tr '\n' '|' <receive.err)"
migrated=$(answer 60)
check migrated-linux-answers $? "'$migrated'"
[ "$(echo "$migrated" | cut -d' ' -f2)" = "$boot_id" ] && [ "$(xl domid linux 2>&1)" = "$moved" ] &&
	[ "$(xl list | grep -c linux)" = 1 ]
check migrated-linux-is-the-same-boot-in-one-domain $? "domain $(xl domid linux 2>&1), received '$moved', '$migrated', $(xl list | grep linux | tr '\n' '|')"

# --- no receiver; a receiver killed mid-stream: the source runs on, nothing left -----------
d2=$(domains) l2=$(loops) v2=$(vifs) n2=$(nodes)
chaos migrate linux 127.0.0.1:8009 >gone.out 2>gone.err
status=$?
[ $status -eq 1 ] && [ "$(wc -l <gone.err)" = 1 ] && grep -q 'cannot reach a chaos receiver' gone.err
check no-receiver-refused $? "status $status: $(cat gone.err)"
# The receiver stops itself before it reads the stream: the sender is blocked mid-stream.
CHAOS_PAUSE_AFTER="xenstore: domain and devices" chaos receive --once >killed.out 2>killed.err &
receiver=$!
chaos migrate linux 127.0.0.1 >cut.out 2>cut.err &
sender=$!
i=0
until grep -q '^State:.*T' /proc/$receiver/status 2>/dev/null || [ $i -gt 200 ]; do
	i=$((i + 1))
	sleep 0.1
done
sleep 1
kill -9 $receiver
wait $sender
status=$?
[ $status -eq 1 ] && [ "$(wc -l <cut.err)" = 1 ] && grep -q 'runs on$' cut.err
check killed-receiver-reported $? "status $status: $(cat cut.err)"
chaos destroy --orphans 2>orphans.err
check killed-receivers-domain-removed $? "$(tr '\n' '|' <orphans.err)"
count domains-after-failed-migrations "$d2" "$(domains)"
count loop-devices-after-failed-migrations "$l2" "$(loops)"
count vifs-after-failed-migrations "$v2" "$(vifs)"
count xenstore-nodes-after-failed-migrations "$n2" "$(nodes)"
after_cut=$(answer 20)
[ $? -eq 0 ] && [ "$(xl domid linux 2>&1)" = "$moved" ]
check source-runs-on $? "domain $(xl domid linux 2>&1) (was $moved), '$after_cut'"

chaos destroy linux
count domains "$d0" "$(domains)"
count loop-devices "$l0" "$(loops)"
count vifs "$v0" "$(vifs)"
count xenstore-nodes "$n0" "$(nodes)"
echo "--- the guest's console"
tail -n 40 console.out
exit 0
