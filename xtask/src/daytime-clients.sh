# Lab job for `cargo xtask test`: CLIENTS TCP clients in dom0 connect to daytime at the
# same moment; each must get one RFC 3339 line. The clients run in dom0, not on the
# host: QEMU's port forwarding accepts with a backlog of 1 (`ss -ltn` shows it), so
# host clients beyond a handful wait in the host kernel's SYN retransmission back-off.
set -u
CLIENTS=${CLIENTS:-100}
GUEST=10.0.2.16
RUN_GUEST_NAME=daytime-clients sh /lab/run-guest.sh /apps/daytime 32 ip=$GUEST/24 gw=10.0.2.2 >/tmp/console 2>&1 &
guest=$!

i=0
until grep -q "daytime: listening" /tmp/console; do
	i=$((i + 1))
	if [ $i -gt 600 ] || ! kill -0 $guest 2>/dev/null; then
		echo "daytime did not start listening:"
		cat /tmp/console
		exit 1
	fi
	sleep 0.1
done

# Every client blocks on the FIFO; closing the writer end releases them all at once.
mkfifo /tmp/go
n=1
while [ $n -le $CLIENTS ]; do
	(cat /tmp/go >/dev/null; nc -w 20 $GUEST 13 </dev/null >/tmp/answer.$n 2>&1; echo $? >/tmp/status.$n) &
	n=$((n + 1))
done
sleep 1
: >/tmp/go

i=0
until [ "$(ls /tmp/status.* 2>/dev/null | wc -l)" -ge $CLIENTS ]; do
	i=$((i + 1))
	[ $i -gt 300 ] && break
	sleep 0.1
done

good=0
n=1
while [ $n -le $CLIENTS ]; do
	if grep -qE '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z' /tmp/answer.$n 2>/dev/null; then
		good=$((good + 1))
	else
		echo "client $n: status $(cat /tmp/status.$n 2>/dev/null || echo none): $(head -c 200 /tmp/answer.$n 2>/dev/null)"
	fi
	n=$((n + 1))
done
echo "daytime clients: $good of $CLIENTS got a line"
kill $guest
wait $guest
[ $good -eq $CLIENTS ]
