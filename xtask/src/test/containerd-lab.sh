# Lab job for `cargo xtask test`: containerd in dom0. `lab-containerd` starts it (CRI
# off, native snapshotter) and it answers; every app's OCI archive in /oci imports with
# `ctr image import`; a container of hello's image gets a rootfs holding /apps/hello as
# lightvm/kernel and its lightvm.json; the shim is on PATH for containerd to find; and
# iproute2's ip and tc with the veth, ingress, u32 and mirred modules redirect a veth's
# ingress to another veth (the pod network's plumbing). Reports through lab-checks.sh's
# helpers; containerd's log is printed at the end.
set -u
IMAGE=docker.io/lightvm/hello:latest
# dom0's busybox sh runs its own applets before anything on PATH: iproute2's ip and tc
# (in /usr/sbin, which programs that search PATH find first) by their full paths.
ip() { /usr/sbin/ip "$@"; }
tc() { /usr/sbin/tc "$@"; }
mkdir -p /tmp/containerd-lab
cd /tmp/containerd-lab

# --- containerd
lab-containerd >start.out 2>&1
check containerd-starts $? "$(tr '\n' ' ' <start.out)"
cat start.out
secs=$(sed -n 's/.* answers after \([0-9.]*\) s.*/\1/p' start.out)
measure containerd-start "${secs:-?}" s "lab-containerd until ctr version answers"
ctr version >version.out 2>&1
grep -q "Version: *1\.6\." version.out
check containerd-1.6 $? "$(tr '\n' ' ' <version.out)"
lab-containerd >again.out 2>&1 && grep -q "already answers" again.out
check containerd-start-twice $? "$(tr '\n' ' ' <again.out)"
ctr plugins ls >plugins.out 2>&1
! grep -q "io.containerd.grpc.v1 *cri" plugins.out &&
	grep -Eq "^io\.containerd\.snapshotter\.v1 +native .* ok *$" plugins.out
check cri-off-native-on $? "$(grep -E 'cri|snapshotter' plugins.out | tr -s ' ' | tr '\n' '|')"
shim=$(command -v containerd-shim-lightvm-v1)
[ "$shim" = /usr/local/bin/containerd-shim-lightvm-v1 ] && [ -x "$shim" ]
check shim-on-path $? "${shim:-not on PATH}"

# --- images
start=$(cut -d' ' -f1 /proc/uptime)
ctr image import /oci/hello.tar >import.out 2>&1
check hello-imports $? "$(tr '\n' ' ' <import.out)"
now=$(cut -d' ' -f1 /proc/uptime)
measure hello-import "$(awk "BEGIN { printf \"%.2f\", $now - $start }")" s "ctr image import /oci/hello.tar, unpacked"
ctr image ls >ls.out 2>&1
cat ls.out
grep -q "^$IMAGE " ls.out
check hello-listed $? "$(tr '\n' '|' <ls.out)"
imported=0 archives=0 failed=
for archive in /oci/*.tar; do
	archives=$((archives + 1))
	app=$(basename "$archive" .tar)
	if ctr image import "$archive" >/dev/null 2>&1 && ctr image ls -q | grep -qx "docker.io/lightvm/$app:latest"; then
		imported=$((imported + 1))
	else
		failed="$failed $app"
	fi
done
[ "$archives" -gt 1 ] && [ "$imported" = "$archives" ]
check every-archive-imports $? "$imported of $archives archives in /oci imported and listed${failed:+; failed:$failed}"

# The rootfs a container of the image gets: the snapshot `ctr run` prepares (here by
# `ctr container create`, which starts no task), mounted as the shim is handed it. (ctr
# 1.6.20's `image mount` unpacks for overlayfs whatever the snapshotter: not usable.)
ctr container create "$IMAGE" rootfs-probe >create.out 2>&1
check container-creates $? "$(tr '\n' ' ' <create.out)"
mkdir -p rootfs
mount_cmd=$(ctr snapshots mounts "$(pwd)/rootfs" rootfs-probe 2>&1)
case "$mount_cmd" in
"mount -t bind /var/lib/containerd/io.containerd.snapshotter.v1.native/snapshots/"*" $(pwd)/rootfs -o rbind,rw")
	$mount_cmd >mount.out 2>&1
	;;
*) false ;;
esac
check rootfs-mounts $? "$mount_cmd $(cat mount.out 2>/dev/null)"
cmp rootfs/lightvm/kernel /apps/hello && [ -x rootfs/lightvm/kernel ]
check rootfs-kernel-is-hello $? "$(ls -l rootfs/lightvm 2>&1 | tr '\n' '|')"
json=$(cat rootfs/lightvm/lightvm.json 2>&1)
[ "$json" = '{"memory_mib":32,"vcpus":1,"dev_method":"xenstore"}' ]
check rootfs-defaults $? "$json"
umount rootfs && ctr container rm rootfs-probe >rm.out 2>&1 &&
	! ctr snapshots ls | grep -q "^rootfs-probe " && ! grep -q " $(pwd)/rootfs " /proc/mounts
check rootfs-cleaned-up $? "$(tr '\n' ' ' <rm.out)"

# --- pod network plumbing: a1's ingress redirected out of b0 (Kata's tc model)
ip -V >ipv.out 2>&1 && grep -q iproute2 ipv.out && tc -V 2>&1 | grep -q iproute2
check iproute2 $? "$(tr '\n' ' ' <ipv.out)"
veth_pairs() { # a0-a1 and b0-b1, up, a0 at 10.99.0.1/24
	ip link add a0 type veth peer name a1 && ip link add b0 type veth peer name b1 || return 1
	for dev in a0 a1 b0 b1; do
		ip link set "$dev" up || return 1
	done
	ip addr add 10.99.0.1/24 dev a0
}
veth_pairs >veth.out 2>&1
check veth-pairs $? "$(tr '\n' ' ' <veth.out)"
tc qdisc add dev a1 handle ffff: ingress >tc.out 2>&1 &&
	tc filter add dev a1 parent ffff: protocol all u32 match u8 0 0 \
		action mirred egress redirect dev b0 >>tc.out 2>&1
check tc-mirred-filter $? "$(tr '\n' ' ' <tc.out)"
# ARP requests for 10.99.0.2 leave a0, come in on a1, and the filter sends them out of b0.
ping -c 3 -W 1 10.99.0.2 >/dev/null 2>&1
tc -s filter show dev a1 parent ffff: >filter.out 2>&1
cat filter.out
redirected=$(sed -n 's/.*Sent [0-9]* bytes \([0-9]*\) pkt.*/\1/p' filter.out | head -n 1)
grep -q "mirred (Egress Redirect to device b0)" filter.out && [ "${redirected:-0}" -gt 0 ]
check mirred-redirects $? "${redirected:-no} packets redirected from a1 to b0"
ip link del a0
ip link del b0
