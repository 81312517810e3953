//! The toolstacks that create our guests in dom0 (xl, chaos): the script that runs one
//! guest with each, and the one table of the commands that stop a guest ([`Stop::argv`]).
//!
//! That table serves every path: `cargo xtask run` on a Xen dom0 runs the command
//! itself; in the lab xtask sends it over the control line ([`crate::lab::LabControl`])
//! and dom0's init runs only what the table allows ([`control_allow_list`], written to
//! `/lab/control-commands`).

use std::fmt::Write as _;

/// Which toolstack creates a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Toolstack {
    /// xl, through run-guest.sh.
    #[default]
    Xl,
    /// chaos, through run-chaos.sh.
    Chaos,
}

impl Toolstack {
    pub const ALL: [Toolstack; 2] = [Toolstack::Xl, Toolstack::Chaos];

    pub fn name(self) -> &'static str {
        match self {
            Toolstack::Xl => "xl",
            Toolstack::Chaos => "chaos",
        }
    }

    /// The script that runs one guest with it, in the lab and natively: `SCRIPT KERNEL
    /// MEMORY_MIB [ARG…]`, the same environment and exit statuses for both.
    pub fn script(self) -> &'static str {
        match self {
            Toolstack::Xl => include_str!("lab/run-guest.sh"),
            Toolstack::Chaos => include_str!("lab/run-chaos.sh"),
        }
    }

    /// The script's file name, for messages and `sh -c`'s `$0`.
    pub fn script_name(self) -> &'static str {
        match self {
            Toolstack::Xl => "run-guest.sh",
            Toolstack::Chaos => "run-chaos.sh",
        }
    }

    /// Where the script is in the lab's dom0.
    pub fn script_in_lab(self) -> String {
        format!("/lab/{}", self.script_name())
    }

    /// The disk type of its disk specs: xl gets dom0's block devices; chaos gets image
    /// files (natively the host's own; in the lab run-chaos.sh copies dom0's virtio disk
    /// into one first), which xendevd puts loop devices in front of.
    pub fn disk_type(self) -> &'static str {
        match self {
            Toolstack::Xl => "phy",
            Toolstack::Chaos => "file",
        }
    }
}

/// What xtask has dom0 do with a guest once its client is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stop {
    /// Destroy it: the guest ends at once (`GuestExit::Destroyed`).
    #[default]
    Destroy,
    /// Ask it to power off (Xenstore `control/shutdown`, or NoXS's sysctl device): it
    /// ends by itself, normally with `GuestExit::Poweroff`.
    Shutdown,
    /// Ask it to reboot: it ends with `GuestExit::Reboot` (the run scripts destroy a
    /// rebooting guest).
    Reboot,
}

impl Stop {
    pub const ALL: [Stop; 3] = [Stop::Destroy, Stop::Shutdown, Stop::Reboot];

    /// The table: the command that does it with `toolstack`, the domain's name to be
    /// appended. The program is named as on dom0's PATH (natively, chaos is the binary
    /// built for this machine).
    pub fn argv(self, toolstack: Toolstack) -> &'static [&'static str] {
        match (toolstack, self) {
            (Toolstack::Xl, Stop::Destroy) => &["xl", "destroy"],
            // -w: xl returns once the guest has shut down (natively the caller waits).
            (Toolstack::Xl, Stop::Shutdown) => &["xl", "shutdown", "-w"],
            (Toolstack::Xl, Stop::Reboot) => &["xl", "reboot"],
            (Toolstack::Chaos, Stop::Destroy) => &["chaos", "destroy"],
            // At once: run-chaos.sh's chaos watches the guest and destroys it.
            (Toolstack::Chaos, Stop::Shutdown) => &["chaos", "shutdown"],
            (Toolstack::Chaos, Stop::Reboot) => &["chaos", "shutdown", "--reboot"],
        }
    }

    /// The command, for messages: `xl shutdown -w`.
    pub fn command(self, toolstack: Toolstack) -> String {
        self.argv(toolstack).join(" ")
    }

    /// Whether the command failing means something: a destroy that finds the guest
    /// gone (it ended by itself first) is no failure.
    pub fn failure_matters(self) -> bool {
        self != Stop::Destroy
    }
}

/// `/lab/control-commands` in dom0: every command of the table, one a line, after
/// `report` (a failure goes to the job's stderr) or `quiet` (see
/// [`Stop::failure_matters`]). dom0's init runs nothing else from the control line.
pub fn control_allow_list() -> String {
    let mut list = String::new();
    for toolstack in Toolstack::ALL {
        for stop in Stop::ALL {
            let mode = if stop.failure_matters() {
                "report"
            } else {
                "quiet"
            };
            let _ = writeln!(list, "{mode} {}", stop.command(toolstack));
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_has_every_command_once() {
        let list = control_allow_list();
        assert_eq!(list.lines().count(), 6);
        assert!(list.contains("quiet xl destroy\n"), "{list}");
        assert!(list.contains("report chaos shutdown --reboot\n"), "{list}");
        let mut commands: Vec<&str> = list
            .lines()
            .map(|line| line.split_once(' ').expect("mode and command").1)
            .collect();
        commands.sort_unstable();
        commands.dedup();
        assert_eq!(commands.len(), 6);
    }
}
