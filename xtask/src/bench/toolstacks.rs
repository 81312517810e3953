//! The toolstacks the benchmarks compare, one [`Toolstack`] entry each, and the dom0
//! shell both benchmarks' jobs start with ([`PRELUDE`]: the guests' configurations and
//! the helpers that make and remove background guests).
//!
//! A row that needs something running in dom0 first gives it as `setup` and `teardown`
//! snippets: e.g. split instantiation's rows would start `chaos daemon run --pool SPEC`
//! in `setup` and run `chaos daemon stop` in `teardown`; every command of the row is
//! then the same as chaos's (chaos hands its creates to the daemon when one runs).

use std::fmt::Write as _;

use crate::lab;

/// A toolstack and how it creates, in dom0, the guests the benchmarks time.
#[derive(Debug)]
pub struct Toolstack {
    /// The row's name in tables, CSV files and `--toolstack`.
    pub name: &'static str,
    /// Shell run before this toolstack's first guest (e.g. start a daemon).
    pub setup: Option<&'static str>,
    /// Shell run after its last guest is gone (e.g. stop that daemon).
    pub teardown: Option<&'static str>,
    /// Shell run (untimed) after each timed run and after background guests are added,
    /// so that every run starts alike (e.g. the daemon's pools full again).
    pub settle: &'static str,
    /// Create the noop guest (4 MiB, no devices) and return once its domain is gone.
    pub noop: &'static str,
    /// Create the daytime guest (8 MiB, a vif at 10.0.2.16) and return once it runs.
    pub daytime: &'static str,
    /// Destroy the guest named by the next word.
    pub destroy: &'static str,
    /// A [`PRELUDE`] function that makes `$2` paused background guests of 4 MiB without
    /// devices, named `bg$1` or `bg$1-N` (`$1` a batch number).
    pub add_background: &'static str,
    /// A [`PRELUDE`] function printing the names of the background guests it made.
    pub background_names: &'static str,
    /// Its creates print the steps `chaos -v` times on stderr.
    pub prints_steps: bool,
}

impl Toolstack {
    /// Remove the daytime guest, then settle (untimed); for chaos's rows, the guest's
    /// own boot times first (`guest-boot` in [`PRELUDE`]).
    pub fn cleanup(&self) -> String {
        let guest = if self.prints_steps {
            "sh /tmp/bench/guest-boot; "
        } else {
            ""
        };
        format!("{guest}{} bench-daytime; {}", self.destroy, self.settle)
    }
}

pub const XL: Toolstack = Toolstack {
    name: "xl",
    setup: None,
    teardown: None,
    settle: "true",
    noop: "xl create -F /tmp/bench/noop.cfg",
    daytime: "xl create /tmp/bench/daytime.cfg",
    destroy: "xl destroy",
    add_background: "bg_xl",
    background_names: "bg_names_xl",
    prints_steps: false,
};

pub const CHAOS: Toolstack = Toolstack {
    name: "chaos[Xenstore]",
    setup: None,
    teardown: None,
    settle: "true",
    noop: "chaos -v create --wait /tmp/bench/noop.json",
    daytime: "chaos -v create /tmp/bench/daytime.json",
    destroy: "chaos destroy",
    add_background: "bg_chaos xenstore",
    background_names: "bg_names_chaos",
    prints_steps: true,
};

/// chaos with NoXS: no Xenstore on the guest's path (xenstored still runs in this lab,
/// for the rows above, but neither chaos nor the guest talks to it).
pub const CHAOS_NOXS: Toolstack = Toolstack {
    name: "chaos[NoXS]",
    setup: None,
    teardown: None,
    settle: "true",
    noop: "chaos -v create --wait /tmp/bench/noop-noxs.json",
    daytime: "chaos -v create /tmp/bench/daytime-noxs.json",
    destroy: "chaos destroy",
    add_background: "bg_chaos noxs",
    background_names: "bg_names_chaos",
    prints_steps: true,
};

/// Split instantiation: chaos hands its creates to a chaos daemon that keeps shells of
/// the two guests' shapes (noop: 4 MiB; daytime: 8 MiB and a vif on xenbr0), two of each;
/// every run starts with the pools full.
pub const CHAOS_SPLIT: Toolstack = Toolstack {
    name: "chaos[Xenstore+split]",
    setup: Some(
        "chaos daemon run --pool method=xenstore,memory=4,size=2 \
         --pool method=xenstore,memory=8,vifs=1,size=2 >/tmp/bench/daemon.log 2>&1 &\n\
         sh /tmp/bench/daemon-full || exit 1",
    ),
    teardown: Some("chaos daemon stop"),
    settle: "sh /tmp/bench/daemon-full",
    ..CHAOS
};

/// As [`CHAOS_SPLIT`], with NoXS guests.
pub const CHAOS_NOXS_SPLIT: Toolstack = Toolstack {
    name: "chaos[NoXS+split]",
    setup: Some(
        "chaos daemon run --pool method=noxs,memory=4,size=2 \
         --pool method=noxs,memory=8,vifs=1,size=2 >/tmp/bench/daemon.log 2>&1 &\n\
         sh /tmp/bench/daemon-full || exit 1",
    ),
    teardown: Some("chaos daemon stop"),
    settle: "sh /tmp/bench/daemon-full",
    ..CHAOS_NOXS
};

/// containerd through our shim (`ctr run`, Xenstore guests from `/oci`'s images): the
/// path an orchestrator takes, beside chaos's own. Only `bench boot` has this row
/// (background guests are chaos's, and the density bench has no use for it).
pub const CONTAINERD: Toolstack = Toolstack {
    name: "containerd",
    setup: Some(
        "lab-containerd >/dev/null || exit 1\n\
         for app in noop daytime; do ctr image import /oci/$app.tar >/dev/null || exit 1; done",
    ),
    teardown: None,
    settle: "true",
    noop: "ctr run --rm --net-host --runtime io.containerd.lightvm.v1 --memory-limit 4194304 \
           docker.io/lightvm/noop:latest bench-noop",
    daytime: "ctr run -d --net-host --runtime io.containerd.lightvm.v1 --memory-limit 8388608 \
              docker.io/lightvm/daytime:latest bench-daytime ip=10.0.2.16/24 gw=10.0.2.2",
    destroy: "sh /tmp/bench/ctr-destroy",
    add_background: "bg_chaos xenstore",
    background_names: "bg_names_chaos",
    prints_steps: false,
};

/// Every row, in the order of tables and plots (a toolstack's colour is its place).
pub const TOOLSTACKS: [&Toolstack; 5] = [&XL, &CHAOS, &CHAOS_NOXS, &CHAOS_SPLIT, &CHAOS_NOXS_SPLIT];

/// A toolstack's place in [`TOOLSTACKS`] (its colour in plots).
pub fn index_of(name: &str) -> usize {
    TOOLSTACKS
        .iter()
        .position(|t| t.name == name)
        .unwrap_or(TOOLSTACKS.len())
}

/// The names `--toolstack` takes.
pub fn names() -> Vec<&'static str> {
    TOOLSTACKS.iter().map(|t| t.name).collect()
}

/// The shell every benchmark job starts with: the guests' configurations, one per
/// toolstack, and the background guests' helpers.
const PRELUDE: &str = r#"mkdir -p /tmp/bench
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# Let the guest's gratuitous ARP create dom0's neighbour entry (bootbench waits for it
# before connecting; see bootbench's docs).
echo 1 >/proc/sys/net/ipv4/conf/all/arp_accept
echo 1 >/proc/sys/net/ipv4/conf/xenbr0/arp_accept
cat >/tmp/bench/noop.cfg <<EOF
name = "bench-noop"
kernel = "/apps/noop"
memory = 4
vcpus = 1
on_poweroff = "destroy"
on_crash = "destroy"
EOF
cat >/tmp/bench/daytime.cfg <<EOF
name = "bench-daytime"
kernel = "/apps/daytime"
memory = 8
vcpus = 1
vif = ['bridge=xenbr0,mac=MAC']
extra = "ip=10.0.2.16/24 gw=10.0.2.2"
EOF
cat >/tmp/bench/noop.json <<EOF
{"name": "bench-noop", "kernel": "/apps/noop", "cmdline": "", "memory": 4, "vcpus": 1}
EOF
cat >/tmp/bench/daytime.json <<EOF
{"name": "bench-daytime", "kernel": "/apps/daytime", "cmdline": "ip=10.0.2.16/24 gw=10.0.2.2",
 "memory": 8, "vcpus": 1, "vifs": [{"ip": "10.0.2.16", "mac": "MAC", "bridge": "xenbr0"}]}
EOF
cat >/tmp/bench/noop-noxs.json <<EOF
{"name": "bench-noop", "kernel": "/apps/noop", "cmdline": "", "memory": 4, "vcpus": 1,
 "xen": {"dev_method": "noxs"}}
EOF
cat >/tmp/bench/daytime-noxs.json <<EOF
{"name": "bench-daytime", "kernel": "/apps/daytime", "cmdline": "ip=10.0.2.16/24 gw=10.0.2.2",
 "memory": 8, "vcpus": 1, "vifs": [{"ip": "10.0.2.16", "mac": "MAC", "bridge": "xenbr0"}],
 "xen": {"dev_method": "noxs"}}
EOF
# containerd's task $1 killed and removed with its container (a script: bootbench runs
# a cleanup in a shell of its own).
cat >/tmp/bench/ctr-destroy <<'EOF'
ctr task kill -s SIGKILL "$1" 2>/dev/null
i=0
until ctr task ls | grep -q "^$1 .*STOPPED" || [ $i -gt 200 ]; do i=$((i + 1)); sleep 0.05; done
ctr task rm "$1" >/dev/null
ctr container rm "$1"
EOF
# Background guests: the noop app, paused (it would power off at once), 4 MiB, no
# devices. xl keeps its monitor process for each, as it does for every guest it starts.
cat >/tmp/bench/bg.cfg <<EOF
kernel = "/apps/noop"
memory = 4
vcpus = 1
EOF
bg_xl() { # BATCH COUNT
	i=0
	while [ $i -lt "$2" ]; do
		xl create -p /tmp/bench/bg.cfg "name=\"bg$1-$i\"" >/dev/null 2>/tmp/bench/bg.err ||
			{ cat /tmp/bench/bg.err >&2; return 1; }
		i=$((i + 1))
	done
}
bg_chaos() { # METHOD BATCH COUNT
	cat >"/tmp/bench/bg$2.json" <<EOF
{"name": "bg$2", "kernel": "/apps/noop", "memory": 4, "vcpus": 1, "paused": true,
 "xen": {"dev_method": "$1"}}
EOF
	chaos create -n "$3" --paused "/tmp/bench/bg$2.json" >/dev/null
}
# Until the chaos daemon's pools are full (at most 60 s): every pool line of `chaos
# daemon status` (`pool SPEC,size=N: R ready …`) has R = N. A script, not a function:
# bootbench runs its --cleanup with sh -c.
cat >/tmp/bench/daemon-full <<'EOF'
i=0
until chaos daemon status 2>/dev/null | awk '/^pool / { n++; split($2, a, "size=");
	if ($3 + 0 != a[2] + 0) short++ } END { exit !(n > 0 && short == 0) }'; do
	i=$((i + 1))
	[ $i -ge 600 ] && { echo "the chaos daemon's pools did not fill: $(chaos daemon status 2>&1)" >&2; exit 1; }
	sleep 0.1
done
EOF
# The daytime guest's own times, from its console log (xendevd's for NoXS, xenconsoled's
# otherwise; the kernel's line before `main` and daytime's listening line each end in
# "X ms after boot", counted from its first instruction), as `guest: X ms  WHAT` lines
# on stderr. xenconsoled appends to one log per name: it is emptied once read.
cat >/tmp/bench/guest-boot <<'EOF'
i=0
while :; do
	log=$(ls -t /var/log/xendevd/console/bench-daytime-*.log \
		/var/log/xen/console/guest-bench-daytime.log 2>/dev/null | head -n 1)
	[ -n "$log" ] && grep -q "listening on" "$log" && break
	i=$((i + 1))
	[ $i -ge 100 ] && { echo "guest-boot: no listening line in ${log:-a console log}" >&2; exit 0; }
	sleep 0.01
done
awk '/kernel: .*; main [0-9.]+ ms after boot/ { main = $(NF - 3) }
	/daytime: listening on .* ms after boot/ { up = $(NF - 3) }
	END {
		if (main != "") printf "guest: %9.3f ms  first instruction → main\n", main
		if (up != "") printf "guest: %9.3f ms  first instruction → listening\n", up
	}' "$log" >&2
case $log in /var/log/xen/*) : >"$log" ;; esac
EOF
bg_names_xl() { xl list | awk 'NR > 1 && $1 ~ /^bg[0-9]/ { print $1 }'; }
bg_names_chaos() { chaos list | awk 'NR > 1 && $2 ~ /^bg[0-9]/ { print $2 }'; }
"#;

/// [`PRELUDE`] with the lab's guest MAC.
pub fn prelude() -> String {
    PRELUDE.replace("MAC", lab::GUEST_MAC)
}

/// `snippet` as a line of the job, if there is one.
pub fn push_snippet(job: &mut String, snippet: Option<&str>) {
    if let Some(snippet) = snippet {
        let _ = writeln!(job, "{snippet}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_plain() {
        let names = names();
        for (i, name) in names.iter().enumerate() {
            assert!(!names[..i].contains(name), "{name} twice");
            // They go into `bootbench --label T/APP/K` lines and CSV fields.
            assert!(
                !name.contains(['/', ',', ' ', '\'', '"']),
                "{name}: no / , space or quotes"
            );
            assert_eq!(index_of(name), i);
        }
        assert_eq!(XL.cleanup(), "xl destroy bench-daytime; true");
        assert_eq!(
            CHAOS_NOXS_SPLIT.cleanup(),
            "sh /tmp/bench/guest-boot; chaos destroy bench-daytime; sh /tmp/bench/daemon-full"
        );
        assert_eq!(XL.cleanup(), "xl destroy bench-daytime; true");
        assert!(prelude().contains(lab::GUEST_MAC));
    }
}
