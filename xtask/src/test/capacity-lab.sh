# Lab job for `cargo xtask test`, in a NoXS lab sized for it (test/jobs.rs): 1000
# paused NoXS guests (noop, 4 MiB, a vif each) created by chaos in batches of 100 and
# destroyed one `chaos destroy` each. Afterwards dom0's taps and bridge ports, xendevd's
# descriptors, grants (the control pages it shares, the console rings it maps) and
# event channels, and Xen's free memory are back where they started. What a guest costs
# (xendevd's descriptors, grants, event channels and memory, dom0's and Xen's memory),
# what xendevd's memory comes back to, and how long a create and a destroy take as
# guests accumulate are MEASURE lines. Last, each limit a set-up can run into is lowered
# on purpose and must be named with its knob, leaving nothing behind: gntalloc's
# grants, then xendevd's open files.
set -u
GUESTS=1000
BATCH=100
cd /tmp
pid=$(pidof xendevd)

now() { cut -d' ' -f1 /proc/uptime; }
per_guest() { # FROM TO N [SCALE]: (TO - FROM) * SCALE / N, one decimal
	awk -v a="$1" -v b="$2" -v n="$3" -v s="${4:-1}" 'BEGIN { printf "%.1f", (b - a) * s / n }'
}
field() { awk -v key="$2" '$1 == key { print $2 }' "$1"; } # FILE KEY
xendevd_fds() { ls /proc/$pid/fd | wc -l; }
shared_grants() { grep -c /dev/xen/gntalloc /proc/$pid/maps; }
mapped_grants() { grep -c /dev/xen/gntdev /proc/$pid/maps; }
event_channels() { grep -c "evtchn:xendevd" /proc/interrupts; }
taps() { ls /sys/class/net | grep -c '^vif'; }
bridge_ports() { ls /sys/class/net/xenbr0/brif | wc -l; }
domains() { chaos list | awk 'NR > 1' | wc -l; }
rss_kib() { field /proc/$pid/status VmRSS:; }
# Its heap and other private memory: the part that grows with guests (VmRSS also counts
# the pages of its code that a first guest brings in, which stay).
anon_kib() { field /proc/$pid/status RssAnon:; }
available_kib() { field /proc/meminfo MemAvailable:; }
cpu_ms() { awk '{ print ($14 + $15) * 10 }' /proc/$pid/stat; }
served() { printf '{"op":"list_domains"}\n' | xendevd send | grep -o '"domid"' | wc -l; }
# Xen's free memory, as chaos's refusal of a guest larger than it states it.
xen_free_mib() { chaos create huge.json 2>&1 | sed -n 's/.*Xen has \([0-9]*\) MiB free.*/\1/p'; }
# Everything a guest holds in dom0, in one line.
holdings() {
	echo "fds $(xendevd_fds) shared $(shared_grants) mapped $(mapped_grants)" \
		"evtchn $(event_channels) taps $(taps) ports $(bridge_ports) domains $(domains)"
}
guest() { # NAME
	cat >"$1.json" <<EOF
{"name": "$1", "kernel": "/apps/noop", "memory": 4, "vcpus": 1, "paused": true,
 "xen": {"dev_method": "noxs"}, "vifs": [{"bridge": "xenbr0"}]}
EOF
}
cat >huge.json <<EOF
{"name": "huge", "kernel": "/apps/noop", "memory": 1000000, "vcpus": 1,
 "xen": {"dev_method": "noxs"}}
EOF
started=$(now)

[ ! -e /run/xenstored.pid ] && ! pidof xenstored xenconsoled >/dev/null
check no-xenstored $? "$(pidof xenstored xenconsoled)"
soft=$(awk '/^Max open files/ { print $4 }' /proc/$pid/limits)
hard=$(awk '/^Max open files/ { print $5 }' /proc/$pid/limits)
[ "$soft" = "$hard" ] && grep -q "open files: raised RLIMIT_NOFILE" /var/log/xendevd.log
check open-files-raised $? "soft $soft, hard $hard; $(grep -m1 'open files' /var/log/xendevd.log)"
limit=$(cat /sys/module/xen_gntalloc/parameters/limit)
[ "$limit" -ge $((3 * GUESTS)) ] && grep -q "gntalloc allows $limit grants" /var/log/xendevd.log
check gntalloc-limit-raised $? "limit $limit"

# One guest made and gone first: what xendevd sets up on first use is not a guest's.
guest warmup
chaos create warmup.json >/dev/null && chaos destroy warmup
fds0=$(xendevd_fds) shared0=$(shared_grants) mapped0=$(mapped_grants)
evtchn0=$(event_channels) taps0=$(taps) ports0=$(bridge_ports) domains0=$(domains)
rss0=$(rss_kib) anon0=$(anon_kib) avail0=$(available_kib) xen0=$(xen_free_mib) cpu0=$(cpu_ms)
echo "before: $(holdings) rss ${rss0} KiB, dom0 available ${avail0} KiB, Xen free ${xen0} MiB"

# Create: batches of BATCH paused guests (cap0-0 … cap9-99), each batch timed.
failed=0
create_ms=""
b=0
while [ $((b * BATCH)) -lt $GUESTS ]; do
	guest "cap$b"
	t=$(now)
	chaos create -n $BATCH --paused "cap$b.json" >/dev/null 2>>create.err || failed=$((failed + 1))
	create_ms="$create_ms $(per_guest "$t" "$(now)" $BATCH 1000)"
	b=$((b + 1))
done
cpu1=$(cpu_ms)
n=$(served)
[ $failed -eq 0 ] && [ "$n" -eq $GUESTS ] && [ "$(domains)" -eq $((domains0 + GUESTS)) ]
check all-created $? "$failed failed batches, xendevd serves $n, $(head -c 300 create.err)"
t=$(now)
chaos list >list.out
list_ms=$(per_guest "$t" "$(now)" 1 1000)
[ "$(grep -c ' cap[0-9]*-[0-9]* ' list.out)" -eq $GUESTS ]
check list-shows-all $? "$(grep -c ' cap' list.out) guests listed"

fds1=$(xendevd_fds) shared1=$(shared_grants) mapped1=$(mapped_grants)
evtchn1=$(event_channels) taps1=$(taps) rss1=$(rss_kib) anon1=$(anon_kib) avail1=$(available_kib)
xen1=$(xen_free_mib)
echo "with $GUESTS: $(holdings) rss ${rss1} KiB, dom0 available ${avail1} KiB, Xen free ${xen1} MiB"
[ "$((taps1 - taps0))" -eq $GUESTS ]
check a-tap-each $? "$((taps1 - taps0)) taps for $GUESTS guests"

# Destroy: one command per guest, newest batch first, each batch timed.
failed=0
destroy_ms=""
while [ $b -gt 0 ]; do
	b=$((b - 1))
	t=$(now)
	n=0
	while [ $n -lt $BATCH ]; do
		chaos destroy "cap$b-$n" 2>>destroy.err || failed=$((failed + 1))
		n=$((n + 1))
	done
	destroy_ms="$destroy_ms $(per_guest "$t" "$(now)" $BATCH 1000)"
done
cpu2=$(cpu_ms)
[ $failed -eq 0 ]
check all-destroyed $? "$failed failed, $(head -c 300 destroy.err)"

count xendevd-fds "$fds0" "$(xendevd_fds)"
count shared-grants "$shared0" "$(shared_grants)"
count mapped-grants "$mapped0" "$(mapped_grants)"
count event-channels "$evtchn0" "$(event_channels)"
count taps "$taps0" "$(taps)"
count bridge-ports "$ports0" "$(bridge_ports)"
count domains "$domains0" "$(domains)"
served_after=$(served)
[ "$served_after" -eq 0 ]
check nothing-served $? "xendevd still serves $served_after"
# Xen scrubs freed pages before it counts them free again.
i=0
until [ "$(xen_free_mib)" -ge "$xen0" ] || [ $i -ge 30 ]; do
	i=$((i + 1))
	sleep 1
done
check xen-memory-back $? "Xen free $(xen_free_mib) MiB, $xen0 before"
# What of xendevd's private memory comes back (it trims its heap once it serves no
# domain). Reported, not judged: one round of 1000 guests leaves about 720 of 1556 KiB
# (whether that is the high-water capacity of its buffers or a leak that a second round
# would double is not yet measured).
anon2=$(anon_kib)
measure xendevd-memory-after "$anon2" KiB "RssAnon ($anon0 before, $anon1 with $GUESTS guests; VmRSS $rss0, $rss1, $(rss_kib))"
measure xendevd-per-guest "$(per_guest "$fds0" "$fds1" $GUESTS)" fds \
	"$(per_guest "$shared0" "$shared1" $GUESTS) grants shared (control pages)," \
	"$(per_guest "$mapped0" "$mapped1" $GUESTS) mapped (console rings)," \
	"$(per_guest "$evtchn0" "$evtchn1" $GUESTS) event channels," \
	"$(per_guest "$rss0" "$rss1" $GUESTS) KiB of RSS ($(per_guest "$anon0" "$anon1" $GUESTS) anonymous)"
measure dom0-memory-per-guest "$(per_guest "$avail1" "$avail0" $GUESTS)" KiB \
	"(MemAvailable; the tap, the bridge port and xendevd's share)"
measure xen-memory-per-guest "$(per_guest "$xen1" "$xen0" $GUESTS 1024)" KiB "(4096 KiB asked)"
measure create-ms "${create_ms# }" "ms per guest" "(chaos create -n $BATCH, by hundreds of guests running)"
measure destroy-ms "${destroy_ms# }" "ms per guest" "(one chaos destroy each, from $GUESTS guests down)"
measure xendevd-cpu "$(per_guest "$cpu0" "$cpu1" $GUESTS)" "ms per create" \
	"$(per_guest "$cpu1" "$cpu2" $GUESTS) ms per destroy"
measure list-ms "$list_ms" ms "(chaos list of $GUESTS guests)"

# gntalloc's limit, lowered to what xendevd holds plus one: a guest's sysctl takes
# the last grant, its vif finds none.
before=$(holdings)
echo $(($(shared_grants) + 1)) >/sys/module/xen_gntalloc/parameters/limit
guest grants
chaos create grants.json >grants.out 2>&1
status=$?
echo "$limit" >/sys/module/xen_gntalloc/parameters/limit
[ $status -ne 0 ] && grep -q "gntalloc's limit of $((shared0 + 1)) grants is reached" grants.out &&
	grep -q "/sys/module/xen_gntalloc/parameters/limit" grants.out
check gntalloc-limit-named $? "status $status: $(cat grants.out)"
[ "$(holdings)" = "$before" ]
check gntalloc-limit-leaves-nothing $? "before: $before; after: $(holdings)"

# xendevd's open files: a xendevd started with a low hard limit serves guests until
# it runs out, and says which limit and how to raise it.
kill "$pid"
ended "$pid" 100
(
	ulimit -n 64
	ulimit -Hn 64
	exec xendevd --foreground >/var/log/xendevd-limited.log 2>&1
) &
pid=$!
wait_for "NoXS back ends ready" 100 /var/log/xendevd-limited.log
before=$(holdings)
made=0
until [ $made -ge 60 ]; do
	guest "files$made"
	chaos create "files$made.json" >files.out 2>&1 || break
	made=$((made + 1))
done
grep -q "RLIMIT_NOFILE" files.out && grep -q "ulimit -Hn" files.out
check open-files-limit-named $? "after $made guests: $(cat files.out)"
failed=0
n=0
while [ $n -lt $made ]; do
	chaos destroy "files$n" 2>>files.err || failed=$((failed + 1))
	n=$((n + 1))
done
[ $failed -eq 0 ] && [ "$(holdings)" = "$before" ]
check open-files-limit-leaves-nothing $? "before: $before; after: $(holdings); $(cat files.err)"
kill "$pid"
ended "$pid" 100
xendevd --foreground >>/var/log/xendevd.log 2>&1 &

measure job-seconds "$(per_guest "$started" "$(now)" 1)" s "(in the lab, TCG)"
echo "--- xendevd's log (tail)"
tail -n 20 /var/log/xendevd.log
