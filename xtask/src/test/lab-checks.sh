# Helpers of the lab jobs of `cargo xtask test` (chaos-lab.sh, noxs-lab.sh,
# xendevd-checks.sh); test/jobs.rs puts this file in front of each. A job reports in
# one line protocol, which test/protocol.rs judges:
#   CHECK NAME ok|fail DETAIL         a check (check, check_that)
#   COUNT WHAT BEFORE AFTER           a leak count: a check that passes when BEFORE = AFTER
#   MEASURE NAME VALUE UNIT DETAIL    a measurement, shown under the job's PASS line
# Every other line is for the log. Only these helpers print CHECK and COUNT lines. The
# job's plan is every check its text names: a call of check, check_that or count with a
# literal NAME, or of a function of the job that calls one of them with a name made from
# its own $1 (e.g. `bad syntax …` where bad calls `check "bad-config-$1" …`), each name
# once. A planned check that prints no line fails the job, saying which.

checks_failed=0

check() { # NAME STATUS DETAIL: ok if STATUS is 0
	if [ "$2" -eq 0 ]; then
		echo "CHECK $1 ok $3"
	else
		echo "CHECK $1 fail $3"
		checks_failed=$((checks_failed + 1))
		return 1
	fi
}

check_that() { # NAME DETAIL COMMAND…: ok if COMMAND succeeds
	_check_name=$1 _check_detail=$2
	shift 2
	if "$@"; then
		echo "CHECK $_check_name ok $_check_detail"
	else
		echo "CHECK $_check_name fail $_check_detail"
		checks_failed=$((checks_failed + 1))
		return 1
	fi
}

count() { # WHAT BEFORE AFTER
	echo "COUNT $1 $2 $3"
	[ "$2" = "$3" ] || checks_failed=$((checks_failed + 1))
}

measure() { # NAME VALUE UNIT [DETAIL…]
	echo "MEASURE $*"
}

# Wait up to $2 tenths of a second for a line with $1 in file $3.
wait_for() {
	i=0
	until grep -q "$1" "$3" 2>/dev/null; do
		i=$((i + 1))
		[ $i -gt "$2" ] && return 1
		sleep 0.1
	done
}

# Wait up to $2 tenths of a second for process $1 to end; $i says how many it took.
ended() {
	i=0
	while kill -0 "$1" 2>/dev/null; do
		[ $i -ge "$2" ] && return 1
		i=$((i + 1))
		sleep 0.1
	done
}
