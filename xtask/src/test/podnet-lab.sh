# Lab job for `cargo xtask test`, run in a Xenstore lab and in a NoXS lab (the device
# method follows the lab): a guest's network through a pod's network namespace, as the
# shim sets it up (shim/src/podnet.rs, driven by its example `podnet`). A namespace t0
# holds a veth eth0 (10.9.0.2/24, gateway 10.9.0.1 = its peer in dom0, as CNI's bridge
# or ptp plugin would leave it); `podnet run` gives daytime eth0's MAC and address,
# creates it paused, moves its vif's host end (netback's vif or xendevd's tap) from
# xenbr0 into t0 with tc mirred redirects both ways to eth0, and unpauses it; a client in
# dom0 must get the time from 10.9.0.2. A second redirect into t0 is refused. After
# `chaos destroy` and the redirect's removal nothing may be left: no domain, vif or tap
# in dom0 or t0, no qdisc on eth0, no new warning in xendevd's log. A redirect that
# fails half-way is undone. How long reading eth0 and redirecting take are measured.
set -u
IP=/usr/sbin/ip # iproute2's; busybox's shell would run its own ip and tc applets by name
TC=/usr/sbin/tc
NS=/var/run/netns/t0
POD=10.9.0.2
MAC=02:00:0a:09:00:02

if [ -e /run/xenstored.pid ]; then method=xenstore; else method=noxs; fi
echo "device method: $method"

# xl does not work without xenstored: chaos lists every domain Xen has.
domains() { chaos list | awk 'NR > 1' | wc -l; }
dom0_vifs() { ls /sys/class/net | grep -c '^vif'; }
t0_vifs() { $IP -n t0 -o link show | grep -c ' vif'; }
warnings() { grep -cE ' (WARN|ERROR) ' /var/log/xendevd.log; }
ingress_on_eth0() { $IP netns exec t0 $TC qdisc show dev eth0 | grep -c ingress; }
daytime_answers() {
	answer=$(nc -w 5 $POD 13 </dev/null 2>&1)
	echo "$answer" | grep -Eq '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z'
}

mkdir -p /tmp/podnet
cd /tmp/podnet

# --- the tools: iproute2 and the kernel's veth and tc modules -----------------------
$IP -V | grep -q iproute2 && $TC -V | grep -q iproute2
check iproute2 $? "$($IP -V) / $($TC -V)"
missing=
for module in veth sch_ingress cls_u32 act_mirred; do
	grep -q "^$module " /proc/modules || missing="$missing $module"
done
[ -z "$missing" ]
check tc-modules $? "missing:${missing:- none}"

# --- the pod: namespace t0 with eth0, its peer in dom0 the gateway -------------------
$IP netns add t0 &&
	$IP link add veth-t0 type veth peer name eth0 netns t0 &&
	$IP -n t0 link set eth0 address $MAC &&
	$IP -n t0 addr add $POD/24 dev eth0 &&
	$IP -n t0 link set eth0 up &&
	$IP -n t0 link set lo up &&
	$IP -n t0 route add default via 10.9.0.1 &&
	$IP addr add 10.9.0.1/24 dev veth-t0 &&
	$IP link set veth-t0 up
check pod-namespace $? "$($IP -n t0 -br addr 2>&1 | tr '\n' '|')"
$IP netns add bare
# A process in t0: its /proc/PID/ns/net is the path the shim gets for a Kubernetes
# container (no name under /var/run/netns).
$IP netns exec t0 sleep 600 &
holder=$!
sleep 0.2

podnet show $NS >show.out 2>&1
check_that show-reads-eth0 "$(cat show.out)" \
	grep -qx "eth0 mac $MAC address $POD/24 gateway 10.9.0.1 mtu 1500" show.out
podnet show /proc/$holder/ns/net >show-proc.out 2>&1
check_that show-reads-eth0-by-pid "$(cat show-proc.out)" cmp -s show.out show-proc.out
podnet show /var/run/netns/bare >bare.out 2>&1
check_that show-without-eth0 "$(cat bare.out)" grep -qx "no eth0" bare.out

# --- daytime through the pod's eth0 --------------------------------------------------
domains_before=$(domains)
vifs_before=$(dom0_vifs)
warnings_before=$(warnings)
cat >daytime.json <<EOF
{"name": "pod-daytime", "kernel": "/apps/daytime", "memory": 32, "vcpus": 1,
 "xen": {"dev_method": "$method"},
 "vifs": [{"bridge": "xenbr0"}]}
EOF
mkfifo hold
podnet run /proc/$holder/ns/net daytime.json <hold >run.out 2>run.err &
runner=$!
exec 3>hold
wait_for "^domid " 300 run.out
check podnet-run $? "$(tr '\n' '|' <run.out) $(cat run.err)"
domid=$(sed -n 's/^domid //p' run.out)
wait_for "^took " 50 run.out
measure read-eth0 "$(sed -n 's/^took \([0-9]*\) ms to read eth0.*/\1/p' run.out)" ms "pod_interface: ip -j addr show, ip -j route show in the namespace"
measure redirect "$(sed -n 's/.*, \([0-9]*\) ms to redirect$/\1/p' run.out)" ms "redirect: the vif moved into the namespace, up, two ingress qdiscs and mirred filters (5 ip/tc processes)"
vif=vif$domid.0
[ ! -e /sys/class/net/$vif ] && $IP -n t0 link show $vif >/dev/null 2>&1
check vif-moved-into-the-pod $? "$vif: in t0: $($IP -n t0 -br link show $vif 2>&1); xenbr0's ports: $(ls /sys/class/net/xenbr0/brif | tr '\n' ' ')"
i=0
until daytime_answers; do
	i=$((i + 1))
	[ $i -ge 30 ] && break
	sleep 1
done
daytime_answers
check daytime-answers-at-eth0 $? "'$answer' after $i tries; eth0's redirect: $($IP netns exec t0 $TC -s filter show dev eth0 ingress | grep Sent)"

# One guest per namespace: a second redirect into t0 is refused, its device untouched.
$IP link add spare0 type veth peer name spare1
podnet redirect $NS spare0 </dev/null >busy.out 2>&1
status=$?
[ $status -ne 0 ] && grep -q "one guest per network namespace" busy.out && [ -e /sys/class/net/spare0 ]
check second-redirect-refused $? "status $status: $(cat busy.out)"
$IP link del spare0

# A redirect that fails half-way is undone: eth0's MTU (65535) is more than the vif's
# host end takes (netback's 1500 before its guest connects, a tap's 65521), so bringing
# it up fails after the move; the device must be back on xenbr0 and up in dom0, eth0
# without a qdisc.
$IP netns add t2 &&
	$IP link add veth-t2 type veth peer name eth0 netns t2 &&
	$IP -n t2 link set eth0 mtu 65535 up
sed 's/"pod-daytime"/"pod-paused"/' daytime.json >paused.json
paused=$(chaos create --paused paused.json 2>paused.err)
check paused-created $? "$(cat paused.err)"
podnet redirect /var/run/netns/t2 vif$paused.0 </dev/null >undo.out 2>&1
status=$?
flags=$(cat /sys/class/net/vif$paused.0/flags 2>/dev/null)
bridge=$(readlink /sys/class/net/vif$paused.0/brport/bridge)
[ $status -ne 0 ] && grep -q "mtu 65535 up\` in network namespace /var/run/netns/t2 failed" undo.out &&
	[ "${bridge##*/}" = xenbr0 ] &&
	[ $((flags & 1)) -eq 1 ] && [ "$($IP netns exec t2 $TC qdisc show dev eth0 | grep -c ingress)" -eq 0 ]
check failed-redirect-undone $? "status $status: $(cat undo.out); vif$paused.0 flags $flags, bridge ${bridge##*/}; t2's eth0: $($IP netns exec t2 $TC qdisc show dev eth0 | tr '\n' '|')"
chaos destroy pod-paused

# --- teardown: chaos destroy, then the redirect's removal ----------------------------
chaos destroy pod-daytime 2>destroy.err
check destroy $? "$(cat destroy.err)"
i=0
while { [ "$(t0_vifs)" -ne 0 ] || [ -e /sys/class/net/$vif ]; } && [ $i -lt 50 ]; do
	i=$((i + 1))
	sleep 0.1
done
[ "$(t0_vifs)" -eq 0 ] && [ ! -e /sys/class/net/$vif ]
check vif-gone-with-the-domain $? "after $i tenths of a second; t0: $($IP -n t0 -br link | tr '\n' '|')"
exec 3>&-
ended $runner 100
wait $runner
status=$?
[ $status -eq 0 ] && grep -qx removed run.out
check redirect-removed $? "status $status: $(tr '\n' '|' <run.out) $(cat run.err)"
count ingress-qdiscs-on-eth0 0 "$(ingress_on_eth0)"
count domains "$domains_before" "$(domains)"
count dom0-vifs "$vifs_before" "$(dom0_vifs)"
count xendevd-warnings "$warnings_before" "$(warnings)"
grep -E ' (WARN|ERROR) ' /var/log/xendevd.log | tail -n 5
kill $holder
$IP netns del bare
$IP netns del t0
$IP netns del t2
$IP link del veth-t0 2>/dev/null
$IP link del veth-t2 2>/dev/null
echo "xendevd's log:"
tail -n 15 /var/log/xendevd.log
