# Lab job for `cargo xtask test`: containerd runs our app images through the shim
# (containerd-shim-lightvm-v1, runtime io.containerd.lightvm.v1), issue 15's
# acceptance. Debian's containerd and ctr in dom0, the images `cargo xtask package`
# wrote at /oci/APP.tar. hello through `ctr run --rm` prints its greeting and arguments
# and exits 0, with containerd's events in order; a detached daytime on dom0's bridge
# is RUNNING, answers, and after kill and rm leaves nothing; a daytime in a network
# namespace with a veth pair answers at eth0's address; bad input (no kernel in the
# image, a kernel that is no Xen PV kernel, too little memory, a second guest in one
# namespace) fails in ctr with the shim's message and leaves nothing. The time from
# `ctr run` to daytime's first answer, and from `chaos create` alone, are
# measurements. Reports through lab-checks.sh's helpers.
set -u
RUNTIME=io.containerd.lightvm.v1
# dom0's busybox sh runs its own applets before anything on PATH: iproute2's by path.
ip() { /usr/sbin/ip "$@"; }
tc() { /usr/sbin/tc "$@"; }
mkdir -p /tmp/shim-lab
cd /tmp/shim-lab

domains() { xl list | awk 'NR > 2' | wc -l; }
vifs() { ls /sys/class/net | grep -c '^vif'; }
mounts() { grep -c 'io.containerd.runtime.v2.task' /proc/mounts; }
# The shims and their holders (busybox has no pgrep).
shims() { grep -l '[c]ontainerd-shim-lightvm' /proc/[0-9]*/cmdline 2>/dev/null | wc -l; }
# What a task may leave: domains/vifs/task mounts/shim processes, one word for count.
held() { echo "$(domains)/$(vifs)/$(mounts)/$(shims)"; }
now() { cut -d' ' -f1 /proc/uptime; }
ms_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%d", (b - a) * 1000 }'; }
# answers IP TENTHS: daytime at IP answers within TENTHS tenths of a second; its answer
# is in $answer.
answers() {
	i=0
	until answer=$(nc -w 1 "$1" 13 </dev/null 2>/dev/null) && [ -n "$answer" ]; do
		i=$((i + 1))
		[ $i -gt "$2" ] && return 1
		sleep 0.1
	done
}
# status ID: the task's status in `ctr task ls`.
status() { ctr task ls | awk -v id="$1" '$1 == id { print $3 }'; }
# stopped ID: wait up to 15 s for the task to be STOPPED.
stopped() {
	i=0
	until [ "$(status "$1")" = STOPPED ]; do
		i=$((i + 1))
		[ $i -gt 150 ] && return 1
		sleep 0.1
	done
}

lab-containerd || { echo "containerd did not start"; exit 1; }
for app in hello daytime; do
	ctr image import /oci/$app.tar >/dev/null
done
before=$(held)

# 1. hello through `ctr run --rm`, with containerd's events watched.
ctr events >events.log 2>&1 &
events=$!
sleep 0.5
out=$(timeout 120 ctr run --rm --runtime $RUNTIME docker.io/lightvm/hello:latest t1 alpha beta 2>&1)
rc=$?
echo "$out" | sed 's/^/t1| /'
check_that hello-greets "ctr run prints hello's greeting" \
	grep -q "Hello from a Rust unikernel on Xen!" <<EOF
$out
EOF
check_that hello-args "the guest got the task's arguments" grep -q "^args: alpha beta" <<EOF
$out
EOF
check hello-exits-0 $rc "ctr run exited with $rc"
sleep 1
kill $events
# One line per event (time, namespace, topic, the event as JSON); t1's, in order.
order=$(grep '"t1"' events.log | grep -oE '/tasks/(create|start|exit|delete)' | tr '\n' ' ')
check_that events-in-order "events: $order" [ "$order" = "/tasks/create /tasks/start /tasks/exit /tasks/delete " ]
count hello-leaves-nothing "$before" "$(held)"

# 2. A detached daytime on dom0's bridge: RUNNING, answers, killed, removed.
ctr run -d --net-host --runtime $RUNTIME docker.io/lightvm/daytime:latest d1 \
	ip=10.0.2.20/24 gw=10.0.2.2
check_that daytime-running "ctr task ls says $(status d1)" [ "$(status d1)" = RUNNING ]
answers 10.0.2.20 300
check daytime-answers $? "nc 10.0.2.20 13: ${answer:-nothing}"
ctr task kill d1
stopped d1
check daytime-killed $? "after ctr task kill: $(status d1)"
rm=$(ctr task rm d1 2>&1)
echo "$rm" | grep -q "exit code 143"
check daytime-exit-143 $? "SIGTERM: 128+15; ctr task rm says: $rm"
ctr container rm d1
sleep 0.5
count daytime-leaves-nothing "$before" "$(held)"

# 3. A daytime in a network namespace: eth0 of a veth pair, its peer in dom0.
# pod NAME NET: namespace NAME with eth0 at NET.2/24 (what CNI's bridge plugin would
# make), its peer veth-NAME at NET.1 in dom0, the default route through it.
pod() {
	ip netns add "$1"
	ip link add "veth-$1" type veth peer name eth0 netns "$1"
	ip -n "$1" link set lo up
	ip -n "$1" addr add "$2.2/24" dev eth0
	ip -n "$1" link set eth0 up
	ip -n "$1" route add default via "$2.1"
	ip addr add "$2.1/24" dev "veth-$1"
	ip link set "veth-$1" up
}
pod t0 10.9.0
ctr run -d --with-ns network:/var/run/netns/t0 --runtime $RUNTIME \
	docker.io/lightvm/daytime:latest d2
answers 10.9.0.2 300
check netns-answers $? "nc 10.9.0.2 13 from dom0: ${answer:-nothing}"
ip -n t0 link show | grep -o 'vif[0-9.]*' | head -1 | sed 's/^/in t0: /'

# 4. Bad input: ctr fails with the shim's message, nothing is left.
# bad NAME EXPECTED "CTR-RUN-ARGS": `ctr run` of task NAME fails saying EXPECTED (the
# shim's message, through containerd) and leaves nothing (domains/vifs/mounts/shims).
bad() {
	got=$(timeout 60 ctr run --rm --runtime $RUNTIME $3 2>&1)
	rc=$?
	echo "$got" | sed "s/^/$1| /"
	ctr container rm "$1" >/dev/null 2>&1
	sleep 0.5
	[ $rc -ne 0 ] && echo "$got" | grep -qF "$2" && [ "$(held)" = "$now_held" ]
	check "bad-$1" $? "exit $rc, wanted: $2; holds $(held), had $now_held"
}
now_held=$(held)
mkdir -p /tmp/nokernel /tmp/notxen/lightvm
cp /bin/busybox /tmp/notxen/lightvm/kernel
bad nokernel "the image has no /lightvm/kernel" "--rootfs /tmp/nokernel nokernel /lightvm/kernel"
bad notxen "/lightvm/kernel in the image is not a Xen PV kernel" \
	"--rootfs /tmp/notxen notxen /lightvm/kernel"
bad smallmem "linux.resources.memory.limit: 2097152 bytes is under a guest's minimum of 4 MiB" \
	"--memory-limit 2097152 docker.io/lightvm/hello:latest smallmem"
bad secondguest "has a lightvm guest already (task d2): one guest per network namespace" \
	"--with-ns network:/var/run/netns/t0 docker.io/lightvm/daytime:latest secondguest"

ctr task kill -s SIGKILL d2
stopped d2
rm=$(ctr task rm d2 2>&1)
echo "$rm" | grep -q "exit code 137"
check netns-exit-137 $? "SIGKILL: 128+9; ctr task rm says: $rm"
ctr container rm d2
sleep 0.5
left=$(ip -n t0 link show | grep -c vif)
qdiscs=$(tc -n t0 qdisc show dev eth0 | grep -c ingress)
check_that netns-left-clean "in t0 after rm: $left vifs, $qdiscs ingress qdiscs on eth0" \
	[ "$left$qdiscs" = 00 ]
count netns-leaves-nothing "$before" "$(held)"

# A NoXS daytime (the annotation) in another namespace: its tap is what moves.
pod t1 10.9.1
ctr run -d --with-ns network:/var/run/netns/t1 --annotation lightvm.io/dev-method=noxs \
	--runtime $RUNTIME docker.io/lightvm/daytime:latest d4
answers 10.9.1.2 300
check netns-noxs-answers $? "nc 10.9.1.2 13 from dom0: ${answer:-nothing}"
ctr task kill -s SIGKILL d4
stopped d4
ctr task rm d4 >/dev/null
ctr container rm d4
sleep 0.5
left=$(ip -n t1 link show | grep -c vif)
check_that netns-noxs-left-clean "in t1 after rm: $left vifs" [ "$left" = 0 ]
count netns-noxs-leaves-nothing "$before" "$(held)"

# A pod as Kubernetes' CRI makes it: a sandbox task (no guest: the shim holds the
# pod's namespace), then the app's guest in the namespace of the sandbox's pid.
pod t2 10.9.2
ctr run -d --with-ns network:/var/run/netns/t2 --runtime $RUNTIME \
	--annotation io.kubernetes.cri.container-type=sandbox \
	docker.io/lightvm/hello:latest sandbox1
sandbox=$(ctr task ls | awk '$1 == "sandbox1" { print $2 }')
same=$(stat -L -c %i "/proc/${sandbox:-0}/ns/net" 2>&1) netns=$(stat -L -c %i /var/run/netns/t2)
check_that sandbox-holds-the-pod "sandbox1 is $(status sandbox1), its pid ${sandbox:-none} in netns $same, the pod's is $netns" \
	[ "$(status sandbox1)/$same" = "RUNNING/$netns" ]
ctr run -d --with-ns "network:/proc/$sandbox/ns/net" --runtime $RUNTIME \
	--annotation io.kubernetes.cri.container-type=container \
	docker.io/lightvm/daytime:latest app1
answers 10.9.2.2 300
check pod-app-answers $? "nc 10.9.2.2 13 from dom0: ${answer:-nothing}"
for task in app1 sandbox1; do
	ctr task kill -s SIGKILL $task
	stopped $task
	ctr task rm $task >/dev/null
	ctr container rm $task
done
sleep 0.5
count pod-leaves-nothing "$before" "$(held)"

# 5. From `ctr run` to daytime's first answer, against `chaos create` alone.
start=$(now)
ctr run -d --net-host --runtime $RUNTIME docker.io/lightvm/daytime:latest d3 \
	ip=10.0.2.21/24 gw=10.0.2.2
answers 10.0.2.21 300
measure ctr-run-to-answer "$(ms_since "$start")" ms "ctr run -d, daytime on xenbr0"
ctr task kill -s SIGKILL d3
stopped d3
ctr task rm d3 >/dev/null
ctr container rm d3
cat >timing.json <<EOF
{"name": "timing", "kernel": "/apps/daytime", "cmdline": "ip=10.0.2.22/24 gw=10.0.2.2",
 "memory": 32, "vcpus": 1, "vifs": [{"bridge": "xenbr0"}]}
EOF
start=$(now)
chaos create timing.json >/dev/null
answers 10.0.2.22 300
measure chaos-create-to-answer "$(ms_since "$start")" ms "chaos create, the same guest"
chaos destroy timing
sleep 0.5
count timing-leaves-nothing "$before" "$(held)"

# The shim's own lines in containerd's log, for the record.
grep -E 'msg="task |level=(warn|error)' /var/log/containerd.log | sed 's/^/containerd| /'
