//! The lab tests that are one shell job in dom0 each (`*.sh` here, after the helpers of
//! `lab-checks.sh`), judged by [`protocol::judge`] against the checks the job's text
//! plans ([`protocol::plan`]).

use std::time::Duration;

use anyhow::{Result, bail};

use super::protocol::{self, Verdict};
use crate::build::GuestImage;
use crate::lab::{self, LabMemory};

/// A lab test that is one shell job in dom0.
#[derive(Debug)]
pub struct JobTest {
    /// What `--filter` matches; the PASS or FAIL line names it.
    pub name: &'static str,
    /// The job, without the helpers: see [`JobTest::job`].
    pub script: &'static str,
    pub timeout_secs: u64,
    /// In a lab without Xenstore.
    pub noxs: bool,
    /// The checks whose detail goes into the PASS line.
    pub summarize: &'static [&'static str],
    /// The lab machine's memory, sized for the job's guests.
    pub memory: LabMemory,
    /// How many labs run the job side by side (`lab exec --hosts`): 2 gives two hosts on
    /// a shared network, the job told which it runs on ([`lab::hosts`]).
    pub hosts: u8,
}

/// The helpers every job starts with.
const LAB_CHECKS: &str = include_str!("lab-checks.sh");

/// The capacity job's guests (`GUESTS=` in `capacity-lab.sh`), 4 MiB each.
const CAPACITY_GUESTS: u32 = 1000;

pub const JOB_TESTS: [JobTest; 18] = [
    // chaos's commands on real Xen (`chaos-lab.sh`): create, list (and xl list),
    // console, shutdown -w, destroy of daytime with its vif; a destroy while `create
    // --console` watches, each of the two ending well; fifteen malformed
    // configurations, each refused with status 2 and one line naming the field,
    // leaving no domain; and 100 create/destroy cycles of a paused guest with a vif and
    // a file-backed disk that must leave no domain, loop device, vif or Xenstore node
    // behind.
    JobTest {
        name: "chaos commands, malformed configs, create/destroy cycles",
        script: include_str!("chaos-lab.sh"),
        timeout_secs: 900,
        noxs: false,
        summarize: &["cycles-succeed"],
        memory: LabMemory::DEFAULT,
        hosts: 1,
    },
    // Our guests suspend and resume under xl (`suspend-lab.sh`): a daytime guest
    // answers after `xl save` + `xl restore`, `xl save -c` and `xl migrate` to this
    // host; a blkcheck guest saved and restored in the middle of its rounds verifies
    // every pattern; nothing is left behind.
    JobTest {
        name: "suspend: xl save, restore, checkpoint and migrate of our guests",
        script: include_str!("suspend-lab.sh"),
        timeout_secs: 900,
        noxs: false,
        summarize: &[],
        memory: LabMemory::DEFAULT,
        hosts: 1,
    },
    // xendevd as dom0 runs it (`xendevd-checks.sh`): malformed, partial and stalled
    // requests among concurrent clients; loop devices attached, refused, shared
    // read-only, detached and released, one under a blkcheck guest; vifs whose back
    // end says `toolstack = chaos` put on their bridge (a daytime guest answers through
    // one), one on a missing bridge failing with `hotplug-error`, one without the
    // marker left alone; SIGTERM, daemonizing, a restart that takes back loop devices
    // and vifs; and the time from `online` uevent to `hotplug-status = connected`, next
    // to xl's script's.
    JobTest {
        name: "xendevd in dom0: malformed requests, loop devices, chaos vifs",
        script: include_str!("xendevd-checks.sh"),
        timeout_secs: 400,
        noxs: false,
        summarize: &[],
        memory: LabMemory::DEFAULT,
        hosts: 1,
    },
    // In a NoXS lab (`noxs-lab.sh`): chaos's list, console, shutdown -w and destroy of
    // a NoXS daytime, create/destroy cycles that leak nothing; and `apps/misbehave`
    // attacking its vbd, vif and sysctl back ends while the honest daytime serves and
    // a blkcheck runs: xendevd must survive, the honest guests keep working, and
    // destroying the attacker releases everything.
    JobTest {
        name: "chaos NoXS: commands without Xenstore, cycles, a guest attacking its back ends",
        script: include_str!("noxs-lab.sh"),
        timeout_secs: 600,
        noxs: true,
        summarize: &["misbehave-attacks-reported", "cycles-succeed"],
        memory: LabMemory::DEFAULT,
        hosts: 1,
    },
    // Fair service in a NoXS lab (`fair-lab.sh`): daytime's reply times (p50/p99) alone
    // and next to a guest hogging its disk; a guest whose disk hangs (a frozen file
    // system) stalls alone: daytime and the API answer, SIGTERM stops xendevd.
    JobTest {
        name: "xendevd fair service: a disk hog and a hung disk next to daytime",
        script: include_str!("fair-lab.sh"),
        timeout_secs: 400,
        noxs: true,
        summarize: &[],
        memory: LabMemory::DEFAULT,
        hosts: 1,
    },
    // xendevd and dom0's singletons and signals (`xendevd-faults-lab.sh`), in a NoXS lab:
    // a xenstored started after xendevd keeps running (VIRQ_DOM_EXC is left to it);
    // SIGHUP neither stops nor disturbs xendevd; a NoXS domain destroyed behind chaos's
    // back is released by xendevd's own check; a console follower and a power waiter
    // SIGKILLed while served cost xendevd no CPU afterwards; console logs are written
    // through no planted link; a guest flapping its sysctl for 60 s (`misbehave
    // flap=60`) grows xendevd's log by a bounded amount.
    JobTest {
        name: "xendevd faults: a later xenstored, SIGHUP, a domain destroyed behind its back, vanished clients, flapping",
        script: include_str!("xendevd-faults-lab.sh"),
        timeout_secs: 300,
        noxs: true,
        summarize: &[],
        memory: LabMemory::DEFAULT,
        hosts: 1,
    },
    // xendevd restarted without loss (`restart-lab.sh`, NoXS v1.1), in a NoXS lab: after
    // SIGTERM and after SIGKILL, a NoXS daytime answers again, with its name, console
    // and power control; a disk hog's writes in flight during the kill complete and the
    // image holds whole chunks; a vif reconnects; a domain destroyed while no xendevd
    // ran is cleaned up (tap, record) by the next one.
    JobTest {
        name: "xendevd restart: guests keep their devices across SIGTERM and SIGKILL",
        script: include_str!("restart-lab.sh"),
        timeout_secs: 600,
        noxs: true,
        summarize: &[
            "daytime-answers-after-sigterm",
            "daytime-answers-after-sigkill",
        ],
        memory: LabMemory::DEFAULT,
        hosts: 1,
    },
    // What a killed create leaves (`orphans-lab.sh`), in a NoXS lab that starts
    // xenstored half-way: chaos SIGKILLed right after each step of a NoXS and of a
    // Xenstore create (a vif and a disk each), the orphan marked by `chaos list` and
    // removed by `chaos destroy --orphans`, domains, taps/vifs, loop devices, Xenstore
    // nodes, served domains and claims back where they were; a stopped create left
    // alone; a daemon killed while making a shell; two creates of one name at once, ten
    // times, exactly one winning.
    JobTest {
        name: "chaos orphans: a create killed after each step, then destroy --orphans",
        script: include_str!("orphans-lab.sh"),
        timeout_secs: 900,
        noxs: true,
        summarize: &["one-create-per-name"],
        memory: LabMemory::DEFAULT,
        hosts: 1,
    },
    // The two-way console of a NoXS guest (`console-lab.sh`), in a NoXS lab: lines piped
    // into `chaos console` reach `hello echo`, whose `bye` powers it off; 1 MiB sent to a
    // guest that does not read yet is held back (xendevd's memory and CPU flat, its API
    // answering, chaos's stdin read no further than the sockets hold), then delivered
    // whole and in order once the guest reads.
    JobTest {
        name: "chaos console of a NoXS guest: input reaches it, 1 MiB held back until it reads",
        script: include_str!("console-lab.sh"),
        timeout_secs: 300,
        noxs: true,
        summarize: &["input-held-back", "input-xendevd-memory-bounded"],
        memory: LabMemory::DEFAULT,
        hosts: 1,
    },
    // One book of disk images across both device methods (`disks-lab.sh`), in a
    // Xenstore lab so that both run: a second writer of an image refused whichever way
    // each came (NoXS/NoXS, loop device/NoXS, NoXS/loop device), with a message naming
    // the image and its holder and nothing left behind; readers shared; the loop device
    // of a domain destroyed by `xl destroy` detached by xendevd's own check, and that of
    // one destroyed while xendevd was down detached when it starts.
    JobTest {
        name: "disks: one writer per image across loop devices and NoXS vbds, loop devices of dead domains detached",
        script: include_str!("disks-lab.sh"),
        timeout_secs: 300,
        noxs: false,
        summarize: &[],
        memory: LabMemory::DEFAULT,
        hosts: 1,
    },
    // apps/kvstore and redis-cli (`kvstore-lab.sh`), in a Xenstore lab so that both
    // device methods run: a Xenstore-method kvstore answers SET/GET/INCR/DEL/EXISTS/
    // DBSIZE, Redis's errors word for word, a pipelined batch in order, 20 clients at
    // once and a 400 KiB binary value; a 1 GiB bulk and malformed requests get protocol
    // errors while a connected client keeps being served; clients hoarding unfinished
    // 512 KiB requests fill the connections' memory, the next is refused, the guest
    // serves on and has the memory back once they leave; after SAVE and destroy, a
    // NoXS kvstore on the same disk has every value, and its own SAVE persists too; SAVE
    // without a disk and a damaged snapshot are named; nothing is left behind.
    JobTest {
        name: "kvstore: redis-cli talks to it, SAVE survives destroy, on both device methods",
        script: include_str!("kvstore-lab.sh"),
        timeout_secs: 300,
        noxs: false,
        summarize: &[],
        memory: LabMemory::DEFAULT,
        hosts: 1,
    },
    // The chaos daemon (`daemon-lab.sh`): a daytime with 2 vifs, 16 MiB and a disk from
    // a shell gets exactly those; a pool of 2 emptied by 3 creates builds the third in
    // full; create --wait through it; shells never listed; SIGKILL, then its restart or
    // `chaos destroy --orphans`, leaves no shell; create without a daemon as before.
    JobTest {
        name: "chaos daemon: guests from shells, fallback, kill -9 and restart leave nothing",
        script: include_str!("daemon-lab.sh"),
        timeout_secs: 600,
        noxs: true,
        summarize: &["guest-sees-its-shape"],
        memory: LabMemory::DEFAULT,
        hosts: 1,
    },
    // chaos save, restore and migrate (`save-lab.sh`) of a Linux PV guest chaos creates
    // (Debian's kernel and the lab's busybox initramfs, a vif and a file-backed disk,
    // Xenstore method): it answers, is saved (and destroyed), restored under its name as
    // a new domain that answers with the same boot id and reads what its disk holds now;
    // a save file cut short and a name clash are refused in one line, leaving no domain,
    // loop device, vif or Xenstore node; `save --keep-running` keeps it answering; it
    // migrates live to a receiver on the same host and answers there; a receiver that is
    // not there, or is killed mid-stream, leaves the source running and nothing behind.
    // The save, restore and migrate times are measurements.
    JobTest {
        name: "chaos save/restore/migrate of a Linux PV guest, a file cut short, a receiver killed",
        script: include_str!("save-lab.sh"),
        timeout_secs: 400,
        noxs: false,
        summarize: &["save", "restore", "migrate"],
        memory: LabMemory::DEFAULT,
        hosts: 1,
    },
    // chaos migrate between two lab hosts (`migrate-hosts-lab.sh`, two labs side by
    // side on a shared network): a kvstore guest (Xenstore method) with values a
    // redis-cli on host 1 set migrates live to a receiver on host 2; the same client
    // at the same address finds them and writes more, host 2 runs the guest, host 1 has
    // nothing of it left, and host 2 none once it is destroyed. The migrate time and
    // the client's longest wait are measurements.
    JobTest {
        name: "chaos migrate between two lab hosts: a kvstore keeps its values and its clients",
        script: include_str!("migrate-hosts-lab.sh"),
        timeout_secs: 600,
        noxs: false,
        summarize: &[],
        memory: LabMemory::DEFAULT,
        hosts: 2,
    },
    // A kvstore's values survive chaos save and restore, save --keep-running and
    // migrate (`kvsave-lab.sh`), on both device methods, in a Xenstore lab: redis-cli
    // sets a key and a counter in a Xenstore and a NoXS kvstore that chaos creates;
    // each answers with them after each step and counts on; the NoXS guest's devices
    // (a vif and a read-only disk) are new ones xendevd offers it again after a
    // restore and a migration; a NoXS restore whose disk image is gone fails and
    // leaves nothing, its save file restored again while its guest runs is refused on
    // the name, --paused is refused for NoXS; nothing is left (domains, taps, loop
    // devices, Xenstore nodes, NoXS domains served). Save, restore and migrate times
    // are measurements.
    JobTest {
        name: "kvsave: a kvstore's values survive chaos save/restore/keep-running/migrate, both methods",
        script: include_str!("kvsave-lab.sh"),
        timeout_secs: 400,
        noxs: false,
        summarize: &[],
        memory: LabMemory::DEFAULT,
        hosts: 1,
    },
    // Capacity, in a NoXS lab sized for it (`capacity-lab.sh`): 1000 paused NoXS
    // guests with a vif each created (batches of 100) and destroyed (one command
    // each), every count of what they held in dom0 back where it started; per-guest
    // costs and create/destroy times as measurements; gntalloc's and xendevd's
    // open-files limits, lowered on purpose, named with their knobs, nothing left.
    JobTest {
        name: "capacity: 1000 NoXS guests with a vif each created and destroyed, limits named",
        script: include_str!("capacity-lab.sh"),
        timeout_secs: 1500,
        noxs: true,
        summarize: &[],
        memory: LabMemory::for_guests(CAPACITY_GUESTS, 4),
        hosts: 1,
    },
    // containerd in dom0 and our shim (`containerd-lab.sh`, then `shim-lab.sh`: issue
    // 15's acceptance). `lab-containerd` starts Debian's containerd 1.6 (CRI off, native
    // snapshotter); every app's archive in /oci (`cargo xtask package`) imports; hello's
    // container rootfs holds /apps/hello as lightvm/kernel and its lightvm.json; tc
    // redirects between veths with mirred. Then through the shim: `ctr run --rm` of hello
    // prints its greeting and arguments and exits 0, containerd's events in order; a
    // detached daytime is RUNNING, answers, and after kill and rm leaves nothing; a
    // Xenstore and a NoXS daytime in network namespaces answer at eth0's address; bad
    // input fails in ctr with the shim's message and leaves nothing; the time from `ctr
    // run` to daytime's first answer beside `chaos create`'s.
    JobTest {
        name: "shim: containerd runs app images as Xen guests (ctr run, kill, rm, netns, bad input)",
        script: concat!(
            include_str!("containerd-lab.sh"),
            include_str!("shim-lab.sh")
        ),
        timeout_secs: 600,
        noxs: false,
        summarize: &["every-archive-imports", "hello-greets", "netns-answers"],
        memory: LabMemory::DEFAULT,
        hosts: 1,
    },
    // A guest's network through a pod's network namespace, as the shim sets it up
    // (`podnet-lab.sh`, driving the shim's example `podnet`), in a NoXS lab (the shim's
    // job above covers both methods through containerd, this one the redirect itself): a
    // daytime takes a namespace's veth eth0 (MAC, 10.9.0.2/24, gateway), its vif's host
    // end moves from xenbr0 into the namespace with tc mirred redirects both ways, and a
    // client in dom0 gets the time from eth0's address; a second redirect into the
    // namespace is refused; after destroy and the redirect's removal no domain, vif,
    // tap, qdisc on eth0 or xendevd warning is left.
    JobTest {
        name: "podnet (NoXS): daytime answers at a pod namespace's eth0, nothing left",
        script: include_str!("podnet-lab.sh"),
        timeout_secs: 300,
        noxs: true,
        summarize: &[],
        memory: LabMemory::DEFAULT,
        hosts: 1,
    },
];

impl JobTest {
    /// What runs in dom0: the helpers, then the script.
    pub fn job(&self) -> String {
        format!("{LAB_CHECKS}{}", self.script)
    }

    pub fn run(&self, images: &[GuestImage]) -> Result<()> {
        let job = self.job();
        let plan = protocol::plan(&job)?;
        let options = lab::ExecOptions {
            timeout: Duration::from_secs(self.timeout_secs),
            verbose: false,
            forwards: Vec::new(),
            disks: Vec::new(),
            control: None,
            noxs: self.noxs,
            memory: self.memory,
            pair: None,
        };
        let (verdict, output) = if self.hosts > 1 {
            let (ends, outputs) = lab_job_hosts(&job, images, &options)?;
            let output: Vec<String> = (1..)
                .zip(&outputs)
                .flat_map(|(host, lines)| {
                    lines.iter().map(move |line| format!("host{host}| {line}"))
                })
                .collect();
            let outputs: Vec<&[String]> = outputs.iter().map(Vec::as_slice).collect();
            let verdict =
                protocol::judge_hosts(&plan, self.summarize, &outputs).and_then(|verdict| {
                    for (host, end) in (1..).zip(ends) {
                        match end {
                            Ok(lab::ExecEnd::Exited(0)) => {}
                            Ok(other) => bail!("host {host}: the job ended with {other:?}"),
                            Err(err) => bail!("host {host}: {err:#}"),
                        }
                    }
                    Ok(verdict)
                });
            (verdict, output)
        } else {
            let (end, output) = lab_job(&job, images, &options)?;
            let verdict =
                protocol::judge(&plan, self.summarize, &output).and_then(|verdict| match end {
                    lab::ExecEnd::Exited(0) => Ok(verdict),
                    other => bail!("the job ended with {other:?}"),
                });
            (verdict, output)
        };
        match verdict {
            Ok(Verdict { summary, notes }) => {
                eprintln!("PASS {} ({summary})", self.name);
                for note in notes {
                    eprintln!("     {note}");
                }
                Ok(())
            }
            // The output first, so that the reason ends the log (CI may show only
            // its end).
            Err(err) => {
                eprintln!("{}: job output:\n  {}", self.name, output.join("\n  "));
                bail!("FAIL {}: {err:#}", self.name)
            }
        }
    }
}

/// Run `job` in a fresh lab as `options` say; how it ended and every line it printed.
fn lab_job(
    job: &str,
    images: &[GuestImage],
    options: &lab::ExecOptions,
) -> Result<(lab::ExecEnd, Vec<String>)> {
    let mut output = Vec::new();
    let end = lab::exec(job, images, options, &mut |line| {
        if let lab::Line::Stdout(text) | lab::Line::Stderr(text) = line {
            output.push(text.to_owned());
        }
    })?;
    Ok((end, output))
}

/// Run `job` on two hosts side by side ([`lab::hosts::exec_hosts`]); how each ended and
/// every line each printed, host 1's first.
fn lab_job_hosts(
    job: &str,
    images: &[GuestImage],
    options: &lab::ExecOptions,
) -> Result<(lab::hosts::HostEnds, [Vec<String>; 2])> {
    let mut outputs = [Vec::new(), Vec::new()];
    let ends = lab::hosts::exec_hosts(job, images, options, &mut |host, line| {
        if let lab::Line::Stdout(text) | lab::Line::Stderr(text) = line {
            outputs[usize::from(host - 1)].push(text.to_owned());
        }
    })?;
    Ok((ends, outputs))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The capacity job's lab is sized for the guests its script makes.
    #[test]
    fn the_capacity_lab_fits_its_guests() {
        let script = include_str!("capacity-lab.sh");
        assert!(
            script.contains(&format!("\nGUESTS={CAPACITY_GUESTS}\n")),
            "capacity-lab.sh must make CAPACITY_GUESTS guests"
        );
        assert!(script.contains(r#""memory": 4,"#));
    }
}
