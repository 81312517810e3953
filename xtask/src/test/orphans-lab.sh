# Lab job for `cargo xtask test`, in a NoXS lab (xenstored started half-way): what a
# chaos killed while creating leaves. For each step of a create, chaos SIGKILLs itself
# right after it (CHAOS_STOP_AFTER, a test hook); `chaos list` must mark the orphan
# domain (from xc_domain_create on), `chaos destroy --orphans` must remove it or its
# claim, and the domains, taps/vifs, loop devices, Xenstore nodes, domains xendevd
# serves and claims must be back where they were. First for a NoXS guest with a vif and
# a disk, then, with xenstored and a restarted xendevd, for a Xenstore guest with the
# same devices. Also: a create stopped (not killed) is left alone and finishes; an
# orphan keeps its name; a stale claim is taken over; a chaos daemon killed while it
# makes a shell leaves an orphan too; two creates of one name started together, ten
# times: exactly one succeeds each time.
set -u
mkdir -p /tmp/orphans
cd /tmp/orphans
truncate -s 16M disk.img

cat >noxs.json <<EOF
{"name": "orphan-noxs", "kernel": "/apps/noop", "memory": 8, "vcpus": 1,
 "xen": {"dev_method": "noxs"},
 "vifs": [{"bridge": "xenbr0"}],
 "vbds": [{"target": "/tmp/orphans/disk.img", "type": "file", "vdev": "xvda", "access": "w"}]}
EOF
cat >xenstore.json <<EOF
{"name": "orphan-xs", "kernel": "/apps/noop", "memory": 8, "vcpus": 1,
 "vifs": [{"bridge": "xenbr0"}],
 "vbds": [{"target": "/tmp/orphans/disk.img", "type": "file", "vdev": "xvda", "access": "w"}]}
EOF
cat >same.json <<EOF
{"name": "same-name", "kernel": "/apps/noop", "memory": 4, "vcpus": 1,
 "xen": {"dev_method": "noxs"}}
EOF

# xl does not work without xenstored: chaos lists every domain Xen has.
domains() { chaos list | awk 'NR > 1' | wc -l; }
taps() { ls /sys/class/net | grep -c '^vif'; }
loops() { ls /sys/block/loop*/loop/backing_file 2>/dev/null | wc -l; }
nodes() { echo -; }
served() { printf '{"op":"list_domains"}\n' | xendevd send | grep -o '"domid":[0-9]*' | wc -l; }
claims() { ls /run/chaos/creating 2>/dev/null | wc -l; }
state() { echo "dom$(domains),tap$(taps),loop$(loops),node$(nodes),served$(served),claim$(claims)"; }

# SLUG CONFIG LEAVES STEP: SIGKILL a create of CONFIG right after STEP; LEAVES is what
# must be there then: "domain" (an orphan, listed as such, destroyed by the sweep),
# "claim" (no domain yet: the sweep removes the claim) or "nothing". Sets $before.
orphan_at() {
	before=$(state)
	name=$(sed -n 's/.*"name": "\([^"]*\)".*/\1/p' "$2")
	d0=$(domains)
	problems=
	CHAOS_STOP_AFTER="$4" chaos create "$2" >create.out 2>&1
	status=$?
	[ $status -eq 137 ] || problems="$problems status $status, not 137 (SIGKILL);"
	grep -q "test hook: signal 9 to myself after \"$4\"" create.out || problems="$problems no hook line;"
	chaos list >list.out 2>&1
	orphans=$(grep -c "orphan: chaos pid [0-9]* died creating \"$name\"" list.out)
	d1=$(domains)
	chaos destroy --orphans >sweep.out 2>&1 || problems="$problems destroy --orphans failed;"
	case $3 in
	domain)
		[ "$orphans" -eq 1 ] && [ "$d1" -eq $((d0 + 1)) ] || problems="$problems not listed as the one orphan;"
		grep -q "destroyed orphan domain [0-9]*, \"$name\"" sweep.out || problems="$problems no orphan domain destroyed;"
		;;
	claim)
		[ "$orphans" -eq 0 ] && [ "$d1" -eq "$d0" ] || problems="$problems a domain is listed;"
		grep -q "removed the claim on \"$name\"" sweep.out || problems="$problems the claim not removed;"
		;;
	*)
		[ "$orphans" -eq 0 ] && [ "$d1" -eq "$d0" ] || problems="$problems a domain is listed;"
		! grep -q "\"$name\"" sweep.out || problems="$problems the sweep found something;"
		;;
	esac
	[ -z "$problems" ]
	check "orphan-$1" $? "after \"$4\":${problems:- killed, listed, swept}; list: $(tr '\n' '|' <list.out) sweep: $(tr '\n' '|' <sweep.out)"
}

# Destroy what a check that failed left, so that the next starts clean: every domain
# but dom0, every claim (nothing, when all went well).
clean() {
	for id in $(chaos list | awk 'NR > 1 && $1 != 0 { print $1 }'); do
		chaos destroy "$id" >/dev/null 2>&1
	done
	rm -f /run/chaos/creating/*.claim
}

# SLUG: everything back where it was before orphan_at SLUG (the kernel removes a
# Xenstore guest's vif a moment after its back end goes: up to 5 s).
unchanged() {
	i=0
	while [ "$(state)" != "$before" ] && [ $i -lt 50 ]; do
		i=$((i + 1))
		sleep 0.1
	done
	count "left-$1" "$before" "$(state)"
	clean
}

# --- NoXS: each step of a create ------------------------------------------------------
[ ! -e /run/xenstored.pid ] && ! pidof xenstored >/dev/null
check no-xenstored $? "$(pidof xenstored)"
domid=$(chaos create -p noxs.json 2>create.err) && chaos destroy "$domid"
check noxs-creates $? "$(cat create.err)"

orphan_at noxs-claim noxs.json claim "claim the name"
unchanged noxs-claim
orphan_at noxs-check-name noxs.json claim "check name"
unchanged noxs-check-name
orphan_at noxs-physinfo noxs.json claim "xc_physinfo"
unchanged noxs-physinfo
orphan_at noxs-domain noxs.json domain "xc_domain_create"
unchanged noxs-domain
orphan_at noxs-limits noxs.json domain "xc: vcpus, memory, tsc, cpuid"
unchanged noxs-limits
orphan_at noxs-ports noxs.json domain "xc_evtchn_alloc_unbound"
unchanged noxs-ports
orphan_at noxs-build noxs.json domain "xc_dom: PV build"
unchanged noxs-build
orphan_at noxs-backends noxs.json domain "xendevd noxs_create"
unchanged noxs-backends
orphan_at noxs-block noxs.json domain "start_info: NoXS block"
unchanged noxs-block
orphan_at noxs-unpause noxs.json domain "xc_domain_unpause"
unchanged noxs-unpause

# An orphan keeps its name until swept; a claim without a domain is taken over.
CHAOS_STOP_AFTER="xendevd noxs_create" chaos create noxs.json >/dev/null 2>&1
chaos create -p noxs.json >held.out 2>&1
status=$?
[ $status -eq 2 ] && grep -q "\"orphan-noxs\" is the name of domain [0-9]*, which chaos pid [0-9]* began and did not finish" held.out
check orphan-keeps-its-name $? "status $status: $(cat held.out)"
clean
CHAOS_STOP_AFTER="check name" chaos create noxs.json >/dev/null 2>&1
before=$(state)
domid=$(chaos create -p noxs.json 2>takeover.err) && [ "$(claims)" -eq 0 ] && chaos destroy "$domid"
check stale-claim-taken-over $? "claims before: $before; $(cat takeover.err)"
clean

# A create stopped (SIGSTOP) right after xendevd made its back ends: its chaos runs, so
# it is no orphan: listed as being created, left alone by the sweep, its name taken;
# resumed, it finishes.
before=$(state)
CHAOS_PAUSE_AFTER="xendevd noxs_create" chaos create -p noxs.json >paused.out 2>paused.err &
creator=$!
i=0
until grep -q '^State:.*T' /proc/$creator/status 2>/dev/null || [ $i -gt 300 ]; do
	i=$((i + 1))
	sleep 0.1
done
chaos list >list.out 2>&1
cat list.out
grep -q "being created as \"orphan-noxs\" by chaos pid $creator" list.out
check live-create-listed $? "creator $creator: $(tr '\n' '|' <list.out)"
chaos destroy --orphans >sweep.out 2>&1 &&
	grep -q "\"orphan-noxs\" is being created by chaos pid $creator, which runs: left alone" sweep.out &&
	[ "$(served)" -eq 1 ] && grep -q "being created as" list.out
check live-create-left-alone $? "$(tr '\n' '|' <sweep.out) served $(served)"
chaos create -p noxs.json >taken.out 2>&1
status=$?
[ $status -eq 2 ] && grep -q "name: a domain named \"orphan-noxs\" is being created by chaos pid $creator" taken.out
check live-create-holds-its-name $? "status $status: $(cat taken.out)"
kill -CONT $creator
wait $creator
status=$?
domid=$(head -n 1 paused.out)
[ $status -eq 0 ] && [ "$(claims)" -eq 0 ] && chaos destroy "$domid"
check live-create-finishes $? "status $status, domain ${domid:-none}: $(tr '\n' '|' <paused.err)"
unchanged live-create

# --- Two creates of one name at once, ten times: exactly one succeeds -----------------
before=$(state)
rounds=0 raced=0 problems=
while [ $rounds -lt 10 ]; do
	rounds=$((rounds + 1))
	chaos create -p same.json >a.out 2>a.err &
	a=$!
	chaos create -p same.json >b.out 2>b.err &
	b=$!
	wait $a
	sa=$?
	wait $b
	sb=$?
	if [ $sa -eq 0 ] && [ $sb -ne 0 ]; then
		loser=b.err status=$sb
	elif [ $sb -eq 0 ] && [ $sa -ne 0 ]; then
		loser=a.err status=$sa
	else
		problems="$problems round $rounds: statuses $sa and $sb ($(cat a.err b.err | tr '\n' ' '));"
		loser=
	fi
	if [ -n "$loser" ]; then
		if [ "$status" -ne 2 ] || ! grep -Eq 'name: (a domain named "same-name" (is being created by chaos pid|exists already))' "$loser"; then
			problems="$problems round $rounds: the loser said (status $status) $(cat "$loser");"
		fi
		grep -q "is being created by chaos pid" "$loser" && raced=$((raced + 1))
	fi
	for id in $(cat a.out b.out); do chaos destroy "$id"; done
done
[ -z "$problems" ]
check one-create-per-name $? "$rounds rounds, $raced of them lost to a create under way:${problems:- one won each}"
unchanged concurrent

# The claim's cost: its steps' medians over 5 creates (chaos -v).
for i in 1 2 3 4 5; do
	id=$(chaos -v create -p noxs.json 2>>trace.out) && chaos destroy "$id"
done
median() { awk "/ ms  $1/ { print \$2 }" trace.out | sort -n | sed -n 3p; }
measure claim-ms "$(median 'claim the name$')" ms "to claim, $(median 'release the claim$') ms to release (medians of 5 NoXS creates of $(median 'created orphan-noxs ') ms from process start; QEMU TCG)"

# A chaos daemon killed right after it made a shell's domain, before the shell's
# record: the claim it took for the shell makes it an orphan too.
before=$(state)
CHAOS_STOP_AFTER="xc_domain_create" chaos daemon run --pool method=noxs,memory=4,size=1 >daemon.out 2>&1 &
daemon=$!
ended $daemon 300 || kill -9 $daemon
wait $daemon
status=$?
chaos list >list.out 2>&1
chaos destroy --orphans >sweep.out 2>&1
[ $status -eq 137 ] && grep -q 'orphan: chaos pid [0-9]* died creating "chaos-shell-' list.out &&
	grep -q 'destroyed orphan domain [0-9]*, "chaos-shell-' sweep.out
check daemon-shell-orphan $? "status $status: $(tr '\n' '|' <daemon.out) list: $(tr '\n' '|' <list.out) sweep: $(tr '\n' '|' <sweep.out)"
rm -f /run/chaos/daemon.sock
unchanged daemon-shell

# --- Xenstore: each step of a create ------------------------------------------------
# xenstored now, and xendevd again (its vif hotplug is on only if xenstored ran when it
# started).
xenstored --pid-file /run/xenstored.pid
xen-init-dom0 >/dev/null 2>&1
kill "$(pidof xendevd)"
i=0
while pidof xendevd >/dev/null && [ $i -lt 50 ]; do i=$((i + 1)); sleep 0.1; done
xendevd --foreground >>/var/log/xendevd.log 2>&1 &
i=0
until xendevd query >/dev/null 2>&1 || [ $i -gt 50 ]; do i=$((i + 1)); sleep 0.1; done
domains() { xl list | awk 'NR > 1' | wc -l; }
nodes() { xenstore-ls -f | wc -l; }
domid=$(chaos create -p xenstore.json 2>create.err) && chaos destroy "$domid"
check xenstore-creates $? "$(cat create.err) $(tail -n 3 /var/log/xendevd.log | tr '\n' '|')"

orphan_at xs-open xenstore.json nothing "open Xenstore"
unchanged xs-open
orphan_at xs-claim xenstore.json claim "claim the name"
unchanged xs-claim
orphan_at xs-check-name xenstore.json claim "check name"
unchanged xs-check-name
orphan_at xs-physinfo xenstore.json claim "xc_physinfo"
unchanged xs-physinfo
orphan_at xs-domain xenstore.json domain "xc_domain_create"
unchanged xs-domain
orphan_at xs-limits xenstore.json domain "xc: vcpus, memory, tsc, cpuid"
unchanged xs-limits
orphan_at xs-ports xenstore.json domain "xc_evtchn_alloc_unbound"
unchanged xs-ports
orphan_at xs-loop xenstore.json domain "xendevd attach /tmp/orphans/disk.img"
unchanged xs-loop
orphan_at xs-nodes xenstore.json domain "xenstore: domain and devices"
unchanged xs-nodes
orphan_at xs-build xenstore.json domain "xc_dom: PV build"
unchanged xs-build
orphan_at xs-rings xenstore.json domain "xenstore: rings, console"
unchanged xs-rings
orphan_at xs-introduce xenstore.json domain "xs_introduce_domain"
unchanged xs-introduce
orphan_at xs-devices xenstore.json domain "devices ready"
unchanged xs-devices
orphan_at xs-unpause xenstore.json domain "xc_domain_unpause"
unchanged xs-unpause
