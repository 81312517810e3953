# Lab job for `cargo xtask test`, in a Xenstore lab (so that guests of both device
# methods run): apps/kvstore under chaos, talked to by Debian's redis-cli in dom0. A
# Xenstore-method kvstore on a blank disk answers SET/GET/INCR/DEL/EXISTS/DBSIZE and
# errors word for word as Redis, COMMAND DOCS and HELLO as redis-cli expects, a
# pipelined batch in order (raw bytes compared), 20 clients at once, a 400 KiB binary
# value; a client announcing a 1 GiB value or sending malformed requests gets Redis's
# protocol error and is dropped while a client connected all along keeps being served;
# clients hoarding unfinished requests fill the connections' memory and the next one
# is refused, the guest serving on; INFO's count of connection memory comes back to
# where it started.
# SAVE, destroy, and a NoXS kvstore on the same disk has the values; it changes them,
# saves, and the next one has those. A kvstore without a disk refuses SAVE saying so;
# one on a disk with a damaged snapshot starts empty and says why. Nothing is left
# behind. Reports through lab-checks.sh's helpers.
set -u
GUEST=10.0.2.16
PORT=6379

domains() { xl list | awk 'NR > 2' | wc -l; }
loops() { ls /sys/block/loop*/loop/backing_file 2>/dev/null | wc -l; }

mkdir -p /tmp/kvstore
cd /tmp/kvstore
truncate -s 8M kv.img
d0=$(domains) l0=$(loops)

config() { # NAME METHOD [IMAGE]: a kvstore config in NAME.json
	vbds=""
	[ -n "${3:-}" ] && vbds=", \"vbds\": [{\"target\": \"$3\", \"type\": \"file\", \"vdev\": \"xvda\", \"access\": \"w\"}]"
	cat >"$1.json" <<EOF
{"name": "$1", "kernel": "/apps/kvstore", "cmdline": "ip=$GUEST/24 gw=10.0.2.2",
 "memory": 32, "vcpus": 1, "xen": {"dev_method": "$2"},
 "vifs": [{"ip": "$GUEST", "mac": "00:16:3e:0a:00:10", "bridge": "xenbr0"}]$vbds}
EOF
}
config kv-xs xenstore /tmp/kvstore/kv.img
config kv-noxs noxs /tmp/kvstore/kv.img
config kv-nodisk noxs
cp kv.img bad.img
config kv-bad noxs /tmp/kvstore/bad.img

# up CHECK NAME: create guest NAME and wait until it listens; its console is in
# CHECK.out.
up() {
	chaos create "$2.json" >"$1.id" 2>"$1.err"
	status=$?
	chaos console "$2" >"$1.out" 2>&1 &
	wait_for "kvstore: listening on $GUEST:$PORT" 300 "$1.out"
	check "$1" $((status + $?)) "create status $status $(cat "$1.err"); console: $(head -c 600 "$1.out" | tr '\n' '|')"
}

# reply NAME EXPECTED ARGS…: `redis-cli ARGS` prints EXPECTED.
reply() {
	got=$(
		shift 2
		timeout 10 redis-cli -h $GUEST -p $PORT --no-raw "$@" 2>&1
	)
	[ "$got" = "$2" ]
	check "$1" $? "redis-cli $(
		shift 2
		echo "$*"
	): '$got' (expected '$2')"
}

# raw NAME EXPECTED REQUEST: REQUEST's bytes (printf format) sent on one connection get
# EXPECTED's bytes (printf format) back, and the connection ends (QUIT, or the server
# dropping it).
raw() {
	# shellcheck disable=SC2059
	printf "$3" | timeout 10 nc -w 5 $GUEST $PORT >"$1.got" 2>&1
	# shellcheck disable=SC2059
	printf "$2" >"$1.want"
	cmp -s "$1.got" "$1.want"
	check "$1" $? "got '$(od -An -c "$1.got" | tr -s ' \n' ' ')', expected '$(od -An -c "$1.want" | tr -s ' \n' ' ')'"
}

# --- a Xenstore-method kvstore on a blank disk ------------------------------------------
started=$(cut -d' ' -f1 /proc/uptime)
up xs-up kv-xs
grep -q "kvstore: disk xvda is blank: starting empty" xs-up.out
check blank-disk-said $? "$(grep kvstore: xs-up.out | tr '\n' '|')"

# INFO's count of connection buffers, as a client alone sees it.
buffers() { timeout 10 redis-cli -h $GUEST -p $PORT INFO memory | tr -d '\r' | sed -n 's/^connection_buffers://p'; }
buffers0=$(buffers)
reply ping PONG PING
reply get-missing "(nil)" GET name
reply set OK SET name kvstore
reply get '"kvstore"' GET name
reply set-again OK SET name "a value with spaces"
reply get-again '"a value with spaces"' GET name
reply incr-new "(integer) 1" INCR counter
reply incr "(integer) 2" INCR counter
reply incrby "(integer) 42" INCRBY counter 40
reply incr-not-integer "(error) ERR value is not an integer or out of range" INCR name
reply set-doomed OK SET doomed 1
reply exists "(integer) 3" EXISTS name counter doomed nothing
reply del "(integer) 1" DEL doomed nothing
reply dbsize "(integer) 2" DBSIZE
reply unknown-command "(error) ERR unknown command 'FLY', with args beginning with: 'me' 'there' " FLY me there
reply wrong-arity "(error) ERR wrong number of arguments for 'get' command" GET a b
reply command-docs "(empty array)" COMMAND DOCS
reply hello-3 "(error) NOPROTO unsupported protocol version" HELLO 3

# Pipelined: every request in one go, inline and arrays mixed, replies in order.
raw pipelined '+PONG\r\n+OK\r\n:43\r\n:44\r\n$2\r\n44\r\n:1\r\n$-1\r\n:2\r\n+OK\r\n' \
	'PING\r\nSET piped "two words"\r\n*2\r\n$4\r\nINCR\r\n$7\r\ncounter\r\nINCR counter\r\nGET counter\r\n*2\r\n$3\r\nDEL\r\n$5\r\npiped\r\nGET piped\r\nDBSIZE\r\nQUIT\r\n'
printf 'SET batch1 a\r\nSET batch2 b\r\nINCR batchn\r\nINCR batchn\r\n' >batch.txt
got=$(timeout 20 redis-cli -h $GUEST -p $PORT --pipe <batch.txt 2>&1)
echo "$got" | grep -q "errors: 0, replies: 4"
check redis-cli-pipe $? "$(echo "$got" | tr '\n' '|')"
reply pipe-landed '"2"' GET batchn

# 20 clients at once.
crowd=""
for i in $(seq 20); do
	timeout 20 redis-cli -h $GUEST -p $PORT INCR crowd >/dev/null 2>&1 &
	crowd="$crowd $!"
done
# shellcheck disable=SC2086
wait $crowd
reply crowd-counted '"20"' GET crowd

# A 400 KiB binary value, back byte for byte.
head -c 409600 /dev/urandom >big.bin
got=$(timeout 20 redis-cli -h $GUEST -p $PORT -x SET big <big.bin 2>&1)
timeout 20 redis-cli -h $GUEST -p $PORT --raw GET big >big.got 2>&1
cp big.bin big.want
echo >>big.want
cmp -s big.got big.want
check big-binary-value $? "SET said '$got'; GET gave $(wc -c <big.got) bytes for $(wc -c <big.bin)"
reply big-strlen "(integer) 409600" STRLEN big

# Hostile clients, while a well-behaved one stays connected.
mkfifo held.in
timeout 30 nc $GUEST $PORT <held.in >held.out 2>&1 &
held=$!
exec 3>held.in
printf 'SET held 1\r\n' >&3
raw huge-bulk-refused '-ERR Protocol error: invalid bulk length\r\n' '*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1073741824\r\n'
raw unbalanced-quotes '-ERR Protocol error: unbalanced quotes in request\r\n' 'GET "name\r\n'
raw not-a-bulk "-ERR Protocol error: expected '\$', got ':'\r\n" '*1\r\n:1\r\n'
raw error-then-drop '+PONG\r\n-ERR Protocol error: invalid multibulk length\r\n' 'PING\r\n*x\r\nPING\r\n'
printf 'INCR held\r\nQUIT\r\n' >&3
exec 3>&-
ended $held 100
printf '+OK\r\n:2\r\n+OK\r\n' >held.want
cmp -s held.out held.want
check held-client-served $? "the connected client got '$(od -An -c held.out | tr -s ' \n' ' ')'"
reply serves-after-hostile PONG PING

# Nine clients each leave a 512 KiB request unfinished until told to go: the
# connection buffers' quarter of the heap (about 4 MiB of this 32 MiB guest) holds
# seven; the others are refused with an error (one more than needed to pass the limit,
# so that the last bytes' arrival under a loaded machine does not decide), and the
# guest goes on serving.
rm -f release
hostile=""
for i in $(seq 9); do
	{
		printf '*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$524288\r\n'
		head -c 524000 /dev/zero
		until [ -e release ]; do sleep 0.2; done
	} | timeout 90 nc $GUEST $PORT >"hoard$i.out" 2>&1 &
	hostile="$hostile $!"
done
i=0
until grep -q "buffers of all connections are full" hoard*.out || [ $i -gt 600 ]; do
	i=$((i + 1))
	sleep 0.1
done
refused=$(grep -l "^-ERR kvstore: the buffers of all connections are full (.* KiB): connection dropped" hoard*.out | wc -l)
[ "$refused" -ge 1 ]
check hoarder-refused $? "$refused of 9 clients refused after $i tenths of a second: $(cat hoard*.out | tr '\r\n' '  '); $(timeout 10 redis-cli -h $GUEST -p $PORT INFO clients memory | tr '\r\n' '  ')"
reply serves-while-hoarded PONG PING
touch release
# shellcheck disable=SC2086
wait $hostile
got=$(timeout 20 redis-cli -h $GUEST -p $PORT -x SET big <big.bin 2>&1)
[ "$got" = OK ]
check memory-back-after-hoarders $? "a 400 KiB SET after the hoarders left: '$got'"

# Every connection so far has given its buffers back.
count connection-buffers "$buffers0" "$(buffers)"
reply save OK SAVE
grep -q "kvstore: saved 8 keys" xs-up.out
check save-logged $? "$(grep "kvstore: saved\|SAVE" xs-up.out | tr '\n' '|')"
chaos destroy kv-xs
check destroyed-xs $? ""

# --- a NoXS kvstore on the same disk: the values are back -------------------------------
up noxs-up kv-noxs
grep -q "kvstore: loaded 8 keys" noxs-up.out
check loaded-logged $? "$(grep kvstore: noxs-up.out | tr '\n' '|')"
reply restored-string '"a value with spaces"' GET name
reply restored-counter '"44"' GET counter
reply restored-dbsize "(integer) 8" DBSIZE
timeout 20 redis-cli -h $GUEST -p $PORT --raw GET big >big.got 2>&1
cmp -s big.got big.want
check restored-big-value $? "GET gave $(wc -c <big.got) bytes"
reply noxs-incr "(integer) 45" INCR counter
reply noxs-del "(integer) 2" DEL big crowd
reply noxs-save OK SAVE
chaos destroy kv-noxs
check destroyed-noxs-first $? ""
up noxs-up-again kv-noxs
reply saved-again-counter '"45"' GET counter
reply saved-again-deleted "(integer) 0" EXISTS big crowd
reply saved-again-dbsize "(integer) 6" DBSIZE
chaos destroy kv-noxs
check destroyed-noxs-second $? ""

# --- no disk: SAVE says so --------------------------------------------------------------
up nodisk-up kv-nodisk
reply nodisk-save "(error) ERR no disk to save to: this kvstore was started without a disk (give the guest a vbd)" SAVE
reply nodisk-serves OK SET k v
chaos destroy kv-nodisk
check destroyed-nodisk $? ""

# --- a damaged snapshot: an empty start, saying why -------------------------------------
cp kv.img bad.img
# Byte 88 of the data: inside the value of `name` (batch1, batch2, batchn, counter and
# held come first), so only the checksum can tell.
printf 'X' | dd of=bad.img bs=1 seek=600 conv=notrunc 2>/dev/null
up damaged-up kv-bad
grep -q "kvstore: disk xvda holds no valid snapshot (the data's checksum is 0x[0-9a-f]*, the header says 0x[0-9a-f]*): starting empty" damaged-up.out
check damaged-snapshot-said $? "$(grep kvstore: damaged-up.out | tr '\n' '|')"
reply damaged-starts-empty "(integer) 0" DBSIZE
chaos destroy kv-bad
check destroyed-bad $? ""
ended_at=$(cut -d' ' -f1 /proc/uptime)
measure kvstore-seconds "$(awk "BEGIN { print $ended_at - $started }")" s "from the first create to the last destroy"

sleep 1
count domains "$d0" "$(domains)"
count loop-devices "$l0" "$(loops)"
