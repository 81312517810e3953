# Helpers of the lab jobs that report checks (chaos-lab.sh, noxs-lab.sh); test.rs puts
# this in front of each job.

check() { # NAME CONDITION-STATUS DETAIL
	if [ "$2" -eq 0 ]; then echo "CHECK $1 ok $3"; else echo "CHECK $1 fail $3"; fi
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
