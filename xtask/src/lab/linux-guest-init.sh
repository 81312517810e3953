#!/bin/busybox sh
# /init of the lab's Linux PV guest (/apps/linux/initrd, Debian's kernel at
# /apps/linux/vmlinuz): loads netfront and blkfront, gives eth0 the address of the
# command line's lab_ip=ADDR/PREFIX (lab_gw=GATEWAY for a default route) and answers
# every TCP connection on port 13 with one line:
#   linux BOOT_ID UPTIME DISK
# BOOT_ID is the kernel's random boot id (the same after a restore: memory came back),
# DISK the first 16 bytes of /dev/xvda read past the page cache (what the disk holds
# now, through whatever back end the guest has now), or "-" without a disk.
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mdev -s
# The kernel found no /dev/console in the archive: the console (hvc0) from here on.
exec </dev/console >/dev/console 2>&1
for module in /lib/modules/*.ko; do
	insmod "$module" || echo "linux-guest: insmod $module failed"
done

arg() {
	for word in $(cat /proc/cmdline); do
		case $word in "$1"=*) echo "${word#*=}" ;; esac
	done
}
ip link set lo up
i=0
until [ -e /sys/class/net/eth0 ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i + 1)); done
ip link set eth0 up
address=$(arg lab_ip)
[ -n "$address" ] && ip addr add "$address" dev eth0
gateway=$(arg lab_gw)
[ -n "$gateway" ] && ip route add default via "$gateway"

cat >/bin/answer <<'EOF'
#!/bin/sh
disk=-
[ -b /dev/xvda ] && disk=$(dd if=/dev/xvda bs=4096 count=1 iflag=direct 2>/dev/null | head -c 16 | tr -c 'A-Za-z0-9_-' '.')
echo "linux $(cat /proc/sys/kernel/random/boot_id) $(cut -d' ' -f1 /proc/uptime) $disk"
EOF
chmod +x /bin/answer
echo "linux-guest: eth0 $(ip -4 addr show eth0 | sed -n 's/.*inet \([^ ]*\).*/\1/p'), disk $([ -b /dev/xvda ] && echo /dev/xvda || echo none)"
nc -ll -p 13 -e /bin/answer &
echo "linux-guest: answering on port 13"
# Stay PID 1; nothing else to do.
while :; do sleep 3600; done
