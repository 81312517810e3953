# Lab job for `cargo xtask test`, in a NoXS lab: the two-way console of a NoXS guest
# (xendevd its back end, no xenconsoled). Lines piped into `chaos console` reach the
# guest (`hello echo` answers each and powers off on `bye`). A guest that does not read
# yet is sent 1 MiB: xendevd holds back (its memory and CPU stay flat, it keeps
# answering), the rest waits in the client, and once the guest reads, every line comes
# through, in order. Reports through lab-checks.sh's helpers.
set -u
mkdir -p /tmp/console
cd /tmp/console
pid=$(pidof xendevd)
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$pid/status"; }
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
state() { chaos list | awk -v name="$1" '$2 == name {print $5}'; }

# --- lines piped into `chaos console` reach the guest ---------------------------------
cat >echo.json <<EOF
{"name": "echo", "kernel": "/apps/hello", "cmdline": "echo", "memory": 16, "vcpus": 1,
 "xen": {"dev_method": "noxs"}}
EOF
chaos create echo.json >/dev/null 2>echo.err
check echo-created $? "$(cat echo.err)"
(sleep 1; echo alpha; sleep 0.5; echo bye) | chaos console echo >echo.out 2>echo-console.err &
console=$!
ended $console 300
check input-console-ends-with-the-guest $? "after $i tenths of a second: $(tail -c 200 echo.out | tr '\r\n' ' |')"
tr -d '\r' <echo.out >echo.lines
grep -qx "hello: you said alpha" echo.lines
check input-reaches-the-guest $? "$(tail -n 3 echo.lines | tr '\n' '|') $(cat echo-console.err)"
# `bye` ended it: a poweroff (s), not a crash (c).
[ "$(state echo)" = "---s--" ] && grep -qx "hello: you said bye" echo.lines
check input-bye-powers-off $? "state '$(state echo)'"
chaos destroy echo

# --- 1 MiB for a guest that does not read yet: held back, then all delivered ----------
# 8192 lines of 128 bytes, then bye; hello sleeps 8 s before it reads.
awk 'BEGIN { for (i = 1; i <= 8192; i++) printf "line-%05d-%0116d\n", i, 0; print "bye" }' >big.txt
cat >slow.json <<EOF
{"name": "slow-echo", "kernel": "/apps/hello", "cmdline": "sleep=8000 echo", "memory": 16,
 "vcpus": 1, "xen": {"dev_method": "noxs"}}
EOF
domid=$(chaos create slow.json 2>slow.err)
check slow-created $? "$(cat slow.err)"
wait_for "main" 100 "/var/log/xendevd/console/slow-echo-$domid.log"
rss_before=$(rss)
ticks_before=$(ticks)
chaos console slow-echo <big.txt >slow.out 2>slow-console.err &
console=$!
sleep 4
sent=$(awk '/^pos:/ {print $2}' "/proc/$console/fdinfo/0")
grown=$(($(rss) - rss_before))
spent=$(($(ticks) - ticks_before))
measure input-held-back "$sent" bytes "of big.txt read by chaos while the guest did not read"
# xendevd takes 4 KiB beyond the guest's 1 KiB ring; the sockets hold the rest.
[ "$sent" -le 524288 ]
check input-held-back $? "chaos read $sent bytes of 1 MiB from its stdin"
measure input-xendevd-rss-growth "$grown" KiB "xendevd's VmRSS while 1 MiB waited"
[ "$grown" -le 256 ]
check input-xendevd-memory-bounded $? "VmRSS $rss_before KiB, then $((rss_before + grown)) KiB"
[ "$spent" -le 40 ]
check input-xendevd-idle-while-held $? "xendevd used $spent ticks (1/100 s) in 4 s"
start=$(cut -d' ' -f1 /proc/uptime)
timeout 10 chaos list >list.out 2>&1
status=$?
took=$(awk -v a="$start" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN {print int((b - a) * 1000)}')
[ $status -eq 0 ] && [ "$took" -le 2000 ] && grep -q " slow-echo " list.out
check input-xendevd-serves-meanwhile $? "chaos list: status $status in $took ms"
ended $console 900
check input-held-console-ends $? "after $i tenths of a second: $(tail -c 200 slow.out | tr '\r\n' ' |')"
tr -d '\r' <slow.out >slow.lines
# (No awk on the numbers: busybox's reads 00010 as octal.)
grep -o "^hello: you said line-[0-9]*" slow.lines | cut -d- -f2 | sed 's/^0*//' >said
seq 8192 | cmp -s - said
check input-nothing-lost $? "$(wc -l <said) of 8192 lines echoed, last $(tail -n 1 said)"
[ "$(state slow-echo)" = "---s--" ] && grep -qx "hello: you said bye" slow.lines
check input-held-bye-powers-off $? "state '$(state slow-echo)'"
chaos destroy slow-echo
[ "$(pidof xendevd)" = "$pid" ]
check input-xendevd-alive $? "pid $pid, now '$(pidof xendevd)'"
echo "--- xendevd's log (tail)"
tail -n 20 /var/log/xendevd.log
