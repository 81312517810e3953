# Lab job for `cargo xtask test`, in a NoXS lab (no xenstored at first): xendevd and
# dom0's singletons and signals. A xenstored started after xendevd can bind
# VIRQ_DOM_EXC and keeps running (xendevd left it alone); SIGHUP leaves xendevd running
# and serving; xendevd still finds by itself that a NoXS domain it serves was destroyed
# behind chaos's back, and releases it.
# Clients that vanish (a console follower, a power waiter) cost it nothing afterwards;
# console logs go through no planted link; a guest flapping its sysctl does not fill
# its log.
set -u
cd /tmp
pid=$(pidof xendevd)
cat >faults.json <<JSON
{"name": "faults-noop", "kernel": "/apps/noop", "memory": 4, "vcpus": 1,
 "xen": {"dev_method": "noxs"}}
JSON
served() { printf '{"op":"list_domains"}\n' | xendevd send | grep -o '"domid":[0-9]*' | sort -u | wc -l; }

xenstored --pid-file /run/xenstored.pid
sleep 2
xs=$(cat /run/xenstored.pid 2>/dev/null)
[ -n "$xs" ] && kill -0 "$xs" 2>/dev/null
check xenstored-after-xendevd-runs $? "xenstored ${xs:-wrote no pid}: $(pidof xenstored || echo not running)"

kill -HUP "$pid"
sleep 0.5
[ "$(pidof xendevd)" = "$pid" ]
check sighup-survived $? "xendevd was $pid, now $(pidof xendevd || echo gone): $(tail -n 3 /var/log/xendevd.log)"
grep -q "SIGHUP: nothing to reload" /var/log/xendevd.log
check sighup-logged $? "$(tail -n 3 /var/log/xendevd.log)"
chaos create --wait faults.json >wait.out 2>&1
check serves-after-sighup $? "$(cat wait.out)"

domid=$(chaos create --paused faults.json)
[ "$(served)" -eq 1 ]
check served-while-paused $? "domain ${domid:-none}, xendevd serves $(served)"
timeout 20 xl destroy "$domid" >destroy.out 2>&1
check destroyed-behind-its-back $? "$(cat destroy.out)"
i=0
while [ "$(served)" -ne 0 ] && [ $i -lt 50 ]; do i=$((i + 1)); sleep 0.1; done
[ "$(served)" -eq 0 ]
check released-by-its-check $? "xendevd serves $(served) after $i tenths of a second: $(tail -n 3 /var/log/xendevd.log)"

# Clients that vanish cost xendevd nothing afterwards: a console follower and a power
# waiter, each SIGKILLed while xendevd serves it, then xendevd's CPU time over 10 s.
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
idle_cost() { # NAME: check that xendevd used at most 0.3 s of CPU in the next 10 s
	before=$(ticks)
	sleep 10
	spent=$(($(ticks) - before))
	measure "$1-cpu" "$spent" ticks "xendevd's CPU time in the 10 s after"
	[ "$spent" -le 30 ]
	check "$1" $? "xendevd used $spent ticks (1/100 s) in 10 s"
}
# Console logs are written through no planted link, mode 0640.
echo precious >/tmp/precious
for d in $(seq 1 40); do ln -sf /tmp/precious "/var/log/xendevd/console/faults-noop-$d.log"; done
domid=$(chaos create --paused faults.json)
log=/var/log/xendevd/console/faults-noop-$domid.log
[ -f "$log" ] && [ ! -L "$log" ] && [ "$(stat -c %a "$log")" = 640 ] && [ "$(cat /tmp/precious)" = precious ]
check console-log-safe $? "domain $domid: $(ls -l "$log"); /tmp/precious: $(cat /tmp/precious)"
chaos console "$domid" >follow.out 2>&1 &
follower=$!
sleep 1
kill -KILL "$follower"
idle_cost vanished-console-follower
# A paused guest never connects its sysctl: the request waits for its timeout.
printf '{"op":"power","domid":%s,"action":"poweroff","timeout_ms":60000}\n' "$domid" |
	xendevd send --timeout 120 >power.out 2>&1 &
waiter=$!
sleep 1
kill -KILL "$waiter"
idle_cost vanished-power-waiter
chaos destroy "$domid" >destroy.out 2>&1
check destroy-after-vanished-clients $? "$(cat destroy.out)"

# A guest that connects and closes its sysctl for 60 s, as fast as xendevd follows:
# xendevd's log grows by a bounded amount, whatever the number of rounds.
cat >flap.json <<JSON
{"name": "flapper", "kernel": "/apps/misbehave", "cmdline": "flap=60", "memory": 8,
 "vcpus": 1, "xen": {"dev_method": "noxs"}}
JSON
logged=$(wc -c </var/log/xendevd.log)
chaos create --console flap.json >flap.out 2>&1
rounds=$(tr -d '\r' <flap.out | sed -n 's/^misbehave: flapped \([0-9]*\) times$/\1/p')
grown=$(($(wc -c </var/log/xendevd.log) - logged))
measure flapping-rounds "${rounds:-0}" rounds "in 60 s"
measure flapping-log-growth "$grown" bytes "xendevd's log, over those 60 s"
[ "${rounds:-0}" -ge 100 ]
check flapped $? "${rounds:-no} rounds: $(tail -c 300 flap.out | tr '\n' '|')"
[ "$grown" -le 16384 ]
check flapping-log-bounded $? "the log grew by $grown bytes: $(tail -n 3 /var/log/xendevd.log)"
