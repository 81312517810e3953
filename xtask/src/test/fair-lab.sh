# Lab job for `cargo xtask test`, in a NoXS lab: one guest cannot take xendevd's service
# away from the others. A disk hog (blkcheck hog=S: 1 MiB writes, each flushed, 16
# at a time) next to a daytime: daytime's replies stay prompt (p50/p99 measured before
# and during, in this run). A hung disk (its file system frozen with fsfreeze): only
# its guest stalls; daytime answers, the API answers, and SIGTERM still stops xendevd.
set -u
GUEST=10.0.2.16
cd /tmp
truncate -s 256M hog.img

cat >daytime.json <<JSON
{"name": "fair-daytime", "kernel": "/apps/daytime", "cmdline": "ip=$GUEST/24 gw=10.0.2.2",
 "memory": 32, "vcpus": 1, "xen": {"dev_method": "noxs"},
 "vifs": [{"ip": "$GUEST", "mac": "00:16:3e:0a:00:10", "bridge": "xenbr0"}]}
JSON
cat >hog.json <<JSON
{"name": "hog", "kernel": "/apps/blkcheck", "cmdline": "hog=30", "memory": 64, "vcpus": 1,
 "xen": {"dev_method": "noxs"},
 "vbds": [{"target": "/tmp/hog.img", "type": "file", "vdev": "xvda", "access": "w"}]}
JSON

# p50 and p99 of RUNS daytime replies, 20 ms apart, as "P50 P99 MAX FAILED".
replies() { # LABEL RUNS
	bootbench --label "$1" --runs "$2" --warmup 5 reply --addr "$GUEST:13" --interval-ms 20 |
		sed -n "s/^bootbench-percentiles $1 //p"
}

chaos create daytime.json >daytime.id 2>daytime.err
check daytime-created $? "$(cat daytime.err)"
i=0
until nc -w 2 $GUEST 13 </dev/null 2>/dev/null | grep -q T; do
	i=$((i + 1))
	[ $i -gt 100 ] && break
	sleep 0.1
done
read -r idle_p50 idle_p99 idle_max idle_failed <<EOF
$(replies idle 150)
EOF
measure daytime-idle-p50 "$idle_p50" ms "alone"
measure daytime-idle-p99 "$idle_p99" ms "alone (max $idle_max ms, $idle_failed without reply)"

chaos create hog.json >hog.id 2>hog.err
check hog-created $? "$(cat hog.err)"
chaos console hog >hog.out 2>&1 &
wait_for "kernel:" 100 hog.out
sleep 2
read -r hog_p50 hog_p99 hog_max hog_failed <<EOF
$(replies hogged 150)
EOF
measure daytime-hogged-p50 "$hog_p50" ms "next to the disk hog"
measure daytime-hogged-p99 "$hog_p99" ms "next to the disk hog (max $hog_max ms, $hog_failed without reply)"
wait_for "blkcheck: hog wrote" 600 hog.out
check hog-ran $? "$(tail -c 300 hog.out | tr '\n' '|')"
measure hog-written "$(sed -n 's/.*hog wrote \([0-9]*\) MiB.*/\1/p' hog.out | tr -d '\r')" MiB "in 30 s"
# Prompt: the hog may cost daytime a few milliseconds, not its turn: at most twice
# this run's own idle figures and 5 ms (the lab is emulated and shared).
awk -v i50="$idle_p50" -v i99="$idle_p99" -v h50="$hog_p50" -v h99="$hog_p99" -v failed="$hog_failed" \
	'BEGIN { exit !(failed == 0 && h50 <= 2 * i50 + 5 && h99 <= 2 * i99 + 5) }'
check daytime-prompt-next-to-hog $? "p50/p99 ${hog_p50}/${hog_p99} ms next to the hog, ${idle_p50}/${idle_p99} ms alone; $hog_failed without reply"

# A hung disk: the image lives on a file system that is then frozen.
truncate -s 64M hung.fs && mke2fs -q -F hung.fs >mkfs.out 2>&1 &&
	mkdir -p /mnt/hung && mount -t ext4 -o loop hung.fs /mnt/hung >>mkfs.out 2>&1
check hung-fs-mounted $? "$(cat mkfs.out)"
truncate -s 32M /mnt/hung/disk.img
cat >hung.json <<JSON
{"name": "hung", "kernel": "/apps/blkcheck", "cmdline": "hog=60", "memory": 64, "vcpus": 1,
 "xen": {"dev_method": "noxs"},
 "vbds": [{"target": "/mnt/hung/disk.img", "type": "file", "vdev": "xvda", "access": "w"}]}
JSON
fsfreeze --freeze /mnt/hung
timeout 20 chaos create hung.json >hung.id 2>hung.err
check hung-created $? "$(cat hung.err)"
sleep 3
# Its first write waits on the frozen file system: a thread of xendevd is stuck in it.
pid=$(pidof xendevd)
stuck=$(grep -l '^[0-9]* ([^)]*) D' /proc/"$pid"/task/*/stat 2>/dev/null | wc -l)
[ "$stuck" -ge 1 ]
check hung-disk-hangs $? "$stuck thread(s) of xendevd waiting on the disk: $(cat /proc/"$pid"/task/*/stat | cut -d' ' -f1-3 | tr '\n' '|')"
read -r hung_p50 hung_p99 hung_max hung_failed <<EOF
$(replies hung 30)
EOF
measure daytime-hung-disk-p99 "$hung_p99" ms "next to the hung disk (max $hung_max ms, $hung_failed without reply)"
[ "$hung_failed" -eq 0 ]
check daytime-answers-next-to-hung-disk $? "$hung_failed of 30 without reply"
timeout 5 chaos list >list.out 2>&1
check api-answers-next-to-hung-disk $? "$(cat list.out)"
# SIGTERM: xendevd shuts down (its socket goes) while the hung disk's worker still
# waits, unkillably, for the file system; the process ends once that write returns.
kill -TERM "$pid"
i=0
until [ ! -e /run/xendevd.sock ] || [ $i -ge 100 ]; do i=$((i + 1)); sleep 0.1; done
[ ! -e /run/xendevd.sock ]
check sigterm-stops-with-hung-disk $? "after $i tenths of a second: $(tail -n 2 /var/log/xendevd.log)"
fsfreeze --unfreeze /mnt/hung
ended "$pid" 100
check xendevd-ends-after-thaw $? "xendevd $pid still there after $i tenths of a second"

