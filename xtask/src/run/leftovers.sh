# The lab job's helper after each guest (run/lab.rs puts it in front of the job):
# `leftovers` prints what a guest left behind in dom0 — domains other than dom0, ports
# of xenbr0 other than eth0, back ends in Xenstore, bound loop devices — separated by
# commas, waiting up to ~3 s for them to go (netback removes a vif asynchronously, a
# loop device is cleared once blkback has closed it).
cd /
leftovers() {
	tries=0
	while :; do
		left=$({
			if [ -e /run/xenstored.pid ]; then
				xl list | awk 'NR > 2 { print "domain " $1 }'
			else
				# A NoXS lab: no xl; xendevd must have let go of every domain too.
				chaos list | awk 'NR > 1 && $1 != 0 { print "domain " $2 }'
				xendevd query 2>/dev/null | sed -n 's/.*"domains":\[\(.*\)\].*/\1/p' |
					grep -o '"domid":[0-9]*' | sed 's/^"domid":/xendevd serves domain /'
			fi
			ls /sys/class/net/xenbr0/brif 2>/dev/null | grep -vx eth0 | sed 's/^/bridge port /'
			# Without xenstored, xenstore-list falls back to /dev/xen/xenbus and never returns.
			[ -e /run/xenstored.pid ] &&
				xenstore-list /local/domain/0/backend 2>/dev/null | sed 's|^|Xenstore /local/domain/0/backend/|'
			for file in /sys/block/loop*/loop/backing_file; do
				[ -e "$file" ] && echo "loop device $(echo "$file" | cut -d/ -f4) on $(cat "$file")"
			done
		} | tr '\n' ',')
		if [ -z "$left" ] || [ "$tries" -ge 30 ]; then
			break
		fi
		tries=$((tries + 1))
		sleep 0.1
	done
	echo "$left"
}
