//! The QEMU command line of the lab: Xen under TCG as the multiboot kernel, dom0's
//! kernel and initramfs as its modules, dom0's virtio disks, the user network and the
//! relay's virtio-serial channel.

use std::ffi::OsString;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::assets::{Assets, CONTAINERD_DISK_SERIAL};
use super::serial::Serial;
use super::{GUEST_ADDR, NET_ADDR, NET_PREFIX};
use crate::disk::Disk;

/// Dom0 Linux: console on Xen's, quiet boot, our `/init`.
const DOM0_CMDLINE: &str = "console=hvc0 quiet rdinit=/init";

/// QEMU booting Xen with Debian's kernel as dom0 and `initrd`, with `disks` and
/// `memory` (serial not yet chosen).
pub(super) fn lab_qemu(
    assets: &Assets,
    initrd: &Path,
    disks: &[Disk],
    memory: LabMemory,
) -> Result<Command> {
    let mut qemu = qemu(&assets.xen, &lab_xen_cmdline(), memory.mib());
    qemu.args(disk_args(disks)?);
    qemu.args(containerd_disk_args(&assets.containerd_disk)?);
    qemu.arg("-initrd").arg(multiboot_modules(&[
        (&assets.vmlinux, DOM0_CMDLINE),
        (initrd, ""),
    ])?);
    Ok(qemu)
}

/// How many disks a lab boot can have: each is a PCI device on QEMU's one bus (32 slots,
/// a few taken by the chipset, the NIC, the RNG and containerd's disk).
pub const MAX_LAB_DISKS: usize = 24;

/// The serial number of dom0's `index`th virtio disk; dom0's init links the disk with
/// this serial as `/dev/lab/disk-N` (`dom0-init.sh`).
pub(super) fn disk_serial(index: usize) -> String {
    format!("lab-disk-{index}")
}

/// Where the `index`th disk of [`ExecOptions::disks`] is in dom0.
pub fn disk_in_dom0(index: usize) -> String {
    format!("/dev/lab/disk-{index}")
}

/// QEMU's arguments for the disks: each image a virtio disk of dom0 (`-drive` of raw
/// format, `-device virtio-blk-pci` with the serial dom0 finds it by), read-only with
/// `:ro`. `cache=writeback`: QEMU completes a write once it is in the host's page cache
/// (`pwrite`), so every write a guest saw complete is in the file, for any reader on
/// the host, as soon as the run ends, even if QEMU is killed then; a guest's flush
/// still reaches the disk (`fdatasync`). (`cache=none` needs O_DIRECT, which tmpfs
/// refuses; `writethrough` syncs every single write.)
pub(super) fn disk_args(disks: &[Disk]) -> Result<Vec<OsString>> {
    ensure!(
        disks.len() <= MAX_LAB_DISKS,
        "{} disks: a lab boot can have at most {MAX_LAB_DISKS}",
        disks.len()
    );
    let mut args = Vec::new();
    for (index, disk) in disks.iter().enumerate() {
        let (path, _) = disk.check()?;
        let path = path
            .to_str()
            .with_context(|| format!("disk image {}: not a UTF-8 path", path.display()))?;
        // QEMU's option syntax: a comma in a value is written twice.
        let mut drive = format!(
            "file={},if=none,id=disk{index},format=raw,cache=writeback",
            path.replace(',', ",,")
        );
        if disk.read_only {
            drive.push_str(",readonly=on");
        }
        args.push("-drive".into());
        args.push(drive.into());
        args.push("-device".into());
        args.push(
            format!(
                "virtio-blk-pci,drive=disk{index},serial={}",
                disk_serial(index)
            )
            .into(),
        );
    }
    Ok(args)
}

/// containerd's disk ([`Assets::containerd_disk`]), read-only, after the job's disks so
/// that theirs keep the first virtio names; dom0's init finds it by its serial.
fn containerd_disk_args(image: &Path) -> Result<[OsString; 4]> {
    let path = image
        .to_str()
        .with_context(|| format!("{}: not a UTF-8 path", image.display()))?;
    Ok([
        "-drive".into(),
        format!(
            "file={},if=none,id=containerd,format=raw,readonly=on",
            path.replace(',', ",,")
        )
        .into(),
        "-device".into(),
        format!("virtio-blk-pci,drive=containerd,serial={CONTAINERD_DISK_SERIAL}").into(),
    ])
}

/// Xen for the Linux lab: dom0 gets a fixed [`DOM0_MEMORY_MIB`] and one vCPU, the other
/// CPU is for guests (the set-up measured in the notes); whatever else the machine has
/// ([`LabMemory`]) is Xen's for guests. All log levels on: the messages go to the boot
/// log. No `noreboot`: if dom0 dies, Xen resets and `-no-reboot` ends QEMU.
fn lab_xen_cmdline() -> String {
    format!(
        "console=com1 com1=115200,8n1 dom0_mem={DOM0_MEMORY_MIB}M,max:{DOM0_MEMORY_MIB}M \
         dom0_max_vcpus=1 loglvl=all guest_loglvl=all"
    )
}

/// Dom0's memory in the Linux lab, whatever the machine's size.
pub const DOM0_MEMORY_MIB: u32 = 1024;

/// The lab machine's memory (QEMU's `-m`): dom0's [`DOM0_MEMORY_MIB`], Xen's own, and
/// the rest for guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabMemory(u32);

/// What Xen keeps for itself before any guest, with room to spare: 64 MiB measured in
/// a lab of 6144 MiB (its frame table grows with the machine, 8 MiB a GiB).
const XEN_RESERVE_MIB: u32 = 256;

impl LabMemory {
    /// What the lab had before it was a setting: about 1000 MiB for guests.
    pub const DEFAULT: Self = Self(2048);
    /// Dom0, Xen, and room for a few small guests.
    pub const MIN_MIB: u32 = DOM0_MEMORY_MIB + XEN_RESERVE_MIB + 64;

    /// `mib` in all, if dom0 and Xen fit with room for guests and this machine has
    /// that much (`machine_mib`, when known: QEMU takes the pages as the lab touches
    /// them, and Xen touches all of them scrubbing its free memory).
    pub fn new(mib: u32, machine_mib: Option<u64>) -> Result<Self> {
        ensure!(
            mib >= Self::MIN_MIB,
            "{mib} MiB of lab memory leaves nothing for guests: dom0 has {DOM0_MEMORY_MIB} \
             MiB and Xen needs about {XEN_RESERVE_MIB} MiB, so give at least {} MiB",
            Self::MIN_MIB
        );
        if let Some(total) = machine_mib {
            ensure!(
                u64::from(mib) <= total,
                "{mib} MiB of lab memory is more than this machine has ({total} MiB in all, \
                 MemTotal of /proc/meminfo)"
            );
        }
        Ok(Self(mib))
    }

    /// Enough for `guests` guests of `guest_mib` each (plus what Xen spends per
    /// domain, [`XEN_PER_GUEST_KIB`]), dom0 and Xen: no less than the default.
    pub const fn for_guests(guests: u32, guest_mib: u32) -> Self {
        let per_guest_kib = guest_mib as u64 * 1024 + XEN_PER_GUEST_KIB;
        let guests_mib = (guests as u64 * per_guest_kib).div_ceil(1024);
        let mib = (DOM0_MEMORY_MIB + XEN_RESERVE_MIB) as u64 + guests_mib;
        if mib > u32::MAX as u64 {
            Self(u32::MAX)
        } else if mib < Self::DEFAULT.0 as u64 {
            Self::DEFAULT
        } else {
            Self(mib as u32)
        }
    }

    pub const fn mib(self) -> u32 {
        self.0
    }
}

/// What Xen spends on a small PV domain besides its memory (its `struct domain` and
/// vcpu, page tables, grant and event-channel tables): 83 KiB measured for a 4 MiB
/// NoXS guest with a vif (`test/capacity-lab.sh` reports it), rounded up.
const XEN_PER_GUEST_KIB: u64 = 128;

/// This machine's memory in MiB (`MemTotal`), if /proc/meminfo says.
pub fn machine_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// QEMU for Xen under TCG with `memory_mib` of memory: `-cpu qemu64` (dom0 Linux
/// faults early with `-cpu max`, and KVM cannot run this Xen), Xen as the multiboot
/// kernel, virtio-rng for dom0's entropy, an e1000 NIC on user networking. Serial and
/// initrd are added by the caller.
pub(super) fn qemu(xen: &Path, xen_cmdline: &str, memory_mib: u32) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "qemu64", "-smp", "2"])
        .arg("-m")
        .arg(memory_mib.to_string())
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .args(["-device", "virtio-rng-pci"])
        .arg("-netdev")
        .arg(user_netdev())
        .args(["-device", "e1000,netdev=n0"]);
    // For diagnosis: LAB_PCAP=FILE records every frame between dom0's NIC and QEMU's
    // user network (wireshark or tcpdump -r reads it).
    if let Some(pcap) = std::env::var_os("LAB_PCAP") {
        let mut object = OsString::from("filter-dump,id=pcap0,netdev=n0,file=");
        object.push(pcap);
        cmd.arg("-object").arg(object);
    }
    cmd.arg("-kernel").arg(xen).arg("-append").arg(xen_cmdline);
    cmd
}

/// QEMU's user network: the lab's addresses, DHCP from [`GUEST_ADDR`] on (dom0 keeps
/// its static address below it).
pub(super) fn user_netdev() -> String {
    format!("user,id=n0,net={NET_ADDR}/{NET_PREFIX},dhcpstart={GUEST_ADDR}")
}

/// The relay's channel: a virtio-serial port named `lab.relay` in dom0 (where
/// `labrelay` opens it), a listening socket in the abstract namespace `name` on the
/// host (no file to clean up, no path length limit to meet).
pub(super) fn relay_args(name: &str) -> [String; 6] {
    [
        "-device".into(),
        "virtio-serial-pci,id=relay".into(),
        "-chardev".into(),
        format!("socket,id=relaychr,path={name},abstract=on,server=on,wait=off"),
        "-device".into(),
        "virtserialport,bus=relay.0,chardev=relaychr,name=lab.relay".into(),
    ]
}

/// Connect to the relay's channel once QEMU listens on it.
pub(super) fn connect_relay(name: &str, serial: &Serial) -> Result<UnixStream> {
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    let started = Instant::now();
    loop {
        match UnixStream::connect_addr(&addr) {
            Ok(stream) => return Ok(stream),
            Err(err) if started.elapsed() > Duration::from_secs(10) => {
                bail!(
                    "QEMU did not open the relay's channel @{name} within 10 s: {err}\n{}",
                    serial.tail()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// QEMU's `-initrd` for a multiboot kernel: modules separated by commas, each a path
/// and its command line separated by a space (a literal comma is written twice).
pub(super) fn multiboot_modules(modules: &[(&Path, &str)]) -> Result<String> {
    let mut out = String::new();
    for (path, cmdline) in modules {
        let path = path.to_str().context("non-UTF-8 path")?;
        ensure!(
            !path.contains(' '),
            "QEMU cannot load a multiboot module from a path with spaces: {path}"
        );
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&path.replace(',', ",,"));
        if !cmdline.is_empty() {
            out.push(' ');
            out.push_str(&cmdline.replace(',', ",,"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_memory_sizes() {
        assert_eq!(LabMemory::for_guests(1, 32), LabMemory::DEFAULT);
        // 1000 guests of 4 MiB: 1000 × 4.125 MiB beside dom0 and Xen.
        assert_eq!(LabMemory::for_guests(1000, 4).mib(), 1024 + 256 + 4125);
        assert_eq!(
            LabMemory::new(2048, Some(24_000)).unwrap(),
            LabMemory::DEFAULT
        );
        assert_eq!(
            LabMemory::new(1200, None).unwrap_err().to_string(),
            "1200 MiB of lab memory leaves nothing for guests: dom0 has 1024 MiB and Xen \
             needs about 256 MiB, so give at least 1344 MiB"
        );
        assert_eq!(
            LabMemory::new(30_000, Some(24_000))
                .unwrap_err()
                .to_string(),
            "30000 MiB of lab memory is more than this machine has (24000 MiB in all, \
             MemTotal of /proc/meminfo)"
        );
    }
}
