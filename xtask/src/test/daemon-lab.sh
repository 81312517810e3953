# Lab job for `cargo xtask test`, in a NoXS lab: the chaos daemon (split
# instantiation). A daytime with 2 vifs, 16 MiB and a disk made from a shell gets
# exactly those (its kernel's boot line and its own answers from inside, xendevd's
# records and the taps from dom0); a pool of 2 emptied by one request for 3 guests
# builds the third in full; `create --wait` through the daemon; shells never show in
# `chaos list`; a daemon killed with SIGKILL leaves shells that its next start sweeps,
# and so does `chaos destroy --orphans`; `create` without a daemon works as before.
# Afterwards everything in dom0 and Xen is back where it started. Times of creates from
# shells and in full are MEASURE lines, not checks.
set -u
GUEST=10.0.2.16
mkdir -p /tmp/daemon
cd /tmp/daemon
xendevd_pid=$(pidof xendevd)
truncate -s 8M disk.img

now() { cut -d' ' -f1 /proc/uptime; }
ms_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }
daytime_answers() {
	nc -w 10 $GUEST 13 </dev/null 2>&1 |
		grep -Eq '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z'
}
# Every domain xendevd serves or holds as a shell.
served() { xendevd query | grep -o '"domid":[0-9]*' | sort -u | wc -l; }
shell_records() { ls /run/chaos/shells 2>/dev/null | grep -c '^[0-9]*$'; }
listed() { chaos list | awk 'NR > 1' | wc -l; }
xen_free_mib() { chaos create --no-daemon huge.json 2>&1 | sed -n 's/.*Xen has \([0-9]*\) MiB free.*/\1/p'; }
holdings() {
	echo "fds $(ls /proc/$xendevd_pid/fd | wc -l) taps $(ls /sys/class/net | grep -c '^vif')" \
		"served $(served) records $(shell_records) listed $(listed)"
}
ready_shells() {
	chaos daemon status 2>/dev/null | sed -n 's/^pool .*: \([0-9]*\) ready.*/\1/p' |
		awk '{ n += $1 } END { print n + 0 }'
}
wait_ready() { # N TENTHS: until the daemon's pools have N shells ready
	i=0
	until [ "$(ready_shells)" = "$1" ]; do
		i=$((i + 1))
		[ $i -gt "$2" ] && return 1
		sleep 0.1
	done
}
start_daemon() { # LOG POOL…
	log=$1
	shift
	args=""
	for pool in "$@"; do args="$args --pool $pool"; done
	# shellcheck disable=SC2086
	chaos daemon run $args >"$log" 2>&1 &
	daemon_pid=$!
	wait_for "listening on" 100 "$log"
}

cat >huge.json <<EOF
{"name": "huge", "kernel": "/apps/noop", "memory": 1000000, "vcpus": 1,
 "xen": {"dev_method": "noxs"}}
EOF
cat >daytime.json <<EOF
{"name": "daemon-daytime", "kernel": "/apps/daytime", "cmdline": "ip=$GUEST/24 gw=10.0.2.2",
 "memory": 16, "vcpus": 1, "xen": {"dev_method": "noxs"},
 "vifs": [{"ip": "$GUEST", "mac": "00:16:3e:0a:00:10", "bridge": "xenbr0"},
          {"mac": "00:16:3e:0a:00:11", "bridge": "xenbr0"}],
 "vbds": [{"target": "/tmp/daemon/disk.img", "type": "file", "vdev": "xvda", "access": "w"}]}
EOF
cat >noop.json <<EOF
{"name": "daemon-noop", "kernel": "/apps/noop", "memory": 4, "vcpus": 1,
 "xen": {"dev_method": "noxs"}}
EOF
SHAPED=method=noxs,memory=16,vifs=2,bridge=xenbr0,vbds=1,size=1
NOOPS=method=noxs,memory=4,size=2

before=$(holdings)
xen0=$(xen_free_mib)
echo "before: $before, Xen free $xen0 MiB"

# Without a daemon: as before.
chaos create --wait noop.json >nodaemon.out 2>&1
check create-without-daemon $? "$(cat nodaemon.out)"

start_daemon daemon.log "$SHAPED" "$NOOPS"
check daemon-listens $? "$(cat daemon.log)"
wait_ready 3 300
check pools-filled $? "$(chaos daemon status 2>&1)"
[ "$(shell_records)" -eq 3 ] && [ "$(listed)" -eq 1 ]
check shells-not-listed $? "$(shell_records) shell records; chaos list: $(chaos list | tr '\n' '|')"

# The daytime from a shell: exactly what it asked for.
chaos -v create daytime.json >daytime.id 2>daytime.out
status=$?
grep -q "daemon-daytime (domain [0-9]*) came from a shell" daytime.out
check daytime-from-shell $((status | $?)) "status $status: $(tr '\n' '|' <daytime.out)"
domid=$(cat daytime.id)
i=0
until daytime_answers || [ $i -ge 60 ]; do i=$((i + 1)); sleep 0.5; done
daytime_answers
check daytime-answers $? "after $i tries"
console=/var/log/xendevd/console/daemon-daytime-$domid.log
grep -q "kernel: 16384 KiB of memory; devices: sysctl 0, vif 0, vif 1, vbd 0" "$console"
check guest-sees-its-shape $? "$(head -n 5 "$console" | tr '\n' '|')"
grep -q "netfront: vif0 up, mac 00:16:3e:0a:00:10" "$console"
check guest-sees-its-mac $? "$(grep netfront "$console")"
chaos list | grep -Eq "^ *$domid +daemon-daytime +16 "
check listed-with-16-mib $? "$(chaos list | tr '\n' '|')"
missing=""
served_as=$(grep -F "NoXS domain $domid (daemon-daytime): " /var/log/xendevd.log)
for device in "vif 0 (00:16:3e:0a:00:10, vif$domid.0 on xenbr0)" \
	"vif 1 (00:16:3e:0a:00:11, vif$domid.1 on xenbr0)" "vbd 0 (/tmp/daemon/disk.img)"; do
	echo "$served_as" | grep -qF "$device" || missing="$missing [$device]"
done
check dom0-serves-its-devices ${#missing} "missing:${missing:-none}; $served_as"
[ -e /sys/class/net/xenbr0/brif/vif$domid.0 ] && [ -e /sys/class/net/xenbr0/brif/vif$domid.1 ]
check taps-on-the-bridge $? "$(ls /sys/class/net/xenbr0/brif | tr '\n' ' ')"
chaos shutdown -w daemon-daytime >shutdown.out 2>&1
check daytime-shuts-down $? "$(cat shutdown.out)"

# --wait through the daemon: create → gone, the ending reported.
wait_ready 3 300
chaos create --wait noop.json >wait.out 2>&1
status=$?
grep -q "shut down: poweroff" wait.out
check wait-through-daemon $((status | $?)) "status $status: $(cat wait.out)"

# A pool of 2 emptied by one request for 3: the third is built in full.
wait_ready 3 300
chaos -v create -n 3 --paused noop.json >three.out 2>&1
status=$?
shells=$(grep -c "came from a shell" three.out)
full=$(grep -c "was built in full" three.out)
[ $status -eq 0 ] && [ "$shells" -eq 2 ] && [ "$full" -eq 1 ] &&
	grep -q "daemon-noop-2 (domain [0-9]*) was built in full" three.out
check third-built-in-full $? "status $status, $shells from shells, $full in full: $(grep -E 'shell|full' three.out | tr '\n' '|')"
failed=0
for n in 0 1 2; do chaos destroy daemon-noop-$n || failed=$((failed + 1)); done
check three-destroyed $failed ""

# Times (not checks): noop create → gone from a shell, and in this process.
split="" full_ms=""
for run in 1 2 3 4 5; do
	wait_ready 3 300
	t=$(now)
	chaos create --wait noop.json >/dev/null 2>&1
	split="$split $(ms_since "$t")"
	t=$(now)
	chaos create --wait --no-daemon noop.json >/dev/null 2>&1
	full_ms="$full_ms $(ms_since "$t")"
done
measure noop-ms-from-shell "${split# }" ms "(chaos create --wait, create → gone)"
measure noop-ms-in-process "${full_ms# }" ms "(chaos create --wait --no-daemon)"
measure daemon-rss "$(awk '/^VmRSS/ { print $2 }' /proc/$daemon_pid/status)" KiB "(3 shells ready)"

# SIGKILL: the shells stay (and stay out of the list); the next daemon sweeps them.
wait_ready 3 300
kill -9 $daemon_pid
ended $daemon_pid 50
[ "$(shell_records)" -eq 3 ] && [ "$(listed)" -eq 1 ]
check killed-daemon-left-hidden-shells $? "$(shell_records) records; $(chaos list | tr '\n' '|')"
start_daemon restart.log
grep -q "destroyed 3 shell(s) a daemon before left" restart.log && [ "$(served)" -eq 0 ]
check restart-sweeps $? "$(cat restart.log); xendevd serves $(served)"
chaos daemon stop >stop.out 2>&1
check daemon-stops $? "$(cat stop.out)"

# SIGKILL again; this time `chaos destroy --orphans` sweeps.
start_daemon again.log "$NOOPS"
wait_ready 2 300
kill -9 $daemon_pid
ended $daemon_pid 50
chaos destroy --orphans >orphans.out 2>&1 &&
	grep -q "destroyed 2 shell(s)" orphans.out && [ "$(shell_records)" -eq 0 ]
check destroy-orphans $? "$(cat orphans.out); $(shell_records) records"

# `chaos daemon stop` destroys its shells.
start_daemon last.log "$NOOPS"
wait_ready 2 300
chaos daemon stop >stop.out 2>&1 && grep -q "destroyed 2 shell(s)" stop.out
check stop-destroys-shells $? "$(cat stop.out)"

after=$(holdings)
[ "$after" = "$before" ]
check nothing-left $? "before: $before; after: $after"
i=0
until [ "$(xen_free_mib)" -ge "$xen0" ] || [ $i -ge 30 ]; do i=$((i + 1)); sleep 1; done
check xen-memory-back $? "Xen free $(xen_free_mib) MiB, $xen0 before"
echo "--- the daemon's log"
cat daemon.log
