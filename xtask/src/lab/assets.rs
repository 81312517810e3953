//! Lab assets: the Debian packages ([`packages`](super::packages)) turned into Xen's
//! multiboot image, the dom0 kernel and a dom0 initramfs (with the Linux PV guest of
//! [`linux_guest`](super::linux_guest)). Everything lives under `target/lab/`; a warm
//! cache needs no network.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};

use super::linux_guest::{GUEST_MODULES, LINUX_GUEST_INIT, build_linux_guest};
use super::packages::{
    OTHER_PROGRAMS, XEN_BIN, XEN_TOOLS, XEN_VERSION, library_closure, lock_text, packages, programs,
};
use crate::elf::{self, Elf};
use crate::prereq::{self, Need};
use crate::util::{self, target_dir};

/// `xenstore-utils` is one program that acts by the name it is called under.
const XENSTORE_NAMES: &[&str] = &[
    "xenstore-chmod",
    "xenstore-exists",
    "xenstore-list",
    "xenstore-ls",
    "xenstore-read",
    "xenstore-rm",
    "xenstore-watch",
    "xenstore-write",
];

/// Kernel modules dom0 loads (their dependencies are added): Xen device and backend
/// drivers, networking for guests, the lab NIC, virtio-rng for entropy, virtio-blk
/// for the disks xtask attaches (`--disk`), virtio-console for the relay's channel
/// (`--forward`), ext4 (for ext2 too) for a file system a test can freeze, and veth
/// and tc's ingress qdisc, u32 filter and mirred action for a pod's network namespace
/// (its eth0 redirected to a guest's vif, as Kata and urunc do).
const MODULES: &[&str] = &[
    "xen-evtchn",
    "xen-gntdev",
    "xen-gntalloc",
    "xen-privcmd",
    "xenfs",
    "xen-netback",
    "xen-blkback",
    "tun",
    "llc",
    "stp",
    "bridge",
    "loop",
    "e1000",
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio-rng",
    "virtio_blk",
    "virtio_console",
    "ext4",
    "crc32c_generic",
    "veth",
    "sch_ingress",
    "cls_u32",
    "act_mirred",
];

const INIT: &str = include_str!("dom0-init.sh");

/// xl's default vif hotplug script (`/etc/xen/scripts/vif-bridge`): attaches a guest's
/// vif to its bridge.
const VIF_BRIDGE: &str = include_str!("vif-bridge.sh");

/// xl's default disk hotplug script (`/etc/xen/scripts/block`): hands a `phy:` target to
/// xen-blkback.
const BLOCK: &str = include_str!("block.sh");

/// Without `autoballoon="off"` xl would shrink dom0 before each create.
const XL_CONF: &str =
    "# Written by cargo xtask: dom0 has a fixed size in the lab.\nautoballoon=\"off\"\n";

/// Bump when the initramfs layout changes in a way the inputs above do not show.
const LAYOUT_VERSION: u32 = 3;

/// Ready-to-boot lab files.
#[derive(Debug, Clone)]
pub struct Assets {
    /// Xen, gunzipped: QEMU's multiboot loader wants the ELF.
    pub xen: PathBuf,
    /// Debian's dom0 kernel, decompressed: Xen's domain builder takes the ELF as well,
    /// and unpacking xz under TCG costs about 3 s of every boot.
    pub vmlinux: PathBuf,
    /// The dom0 initramfs without the per-boot part (newc cpio, uncompressed).
    pub initramfs: PathBuf,
}

/// `target/lab`: the cache, the unpacked packages, the images and the boot logs.
pub fn lab_dir() -> PathBuf {
    target_dir().join("lab")
}

/// Make sure every asset exists and is current; cheap when nothing changed.
pub fn prepare() -> Result<Assets> {
    prereq::ensure(&[Need::Lab])?;
    let dir = lab_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Parallel runs (e.g. tests) may all get here; one prepares, the others wait.
    let lock_file = fs::File::create(dir.join("prepare.lock"))?;
    lock_file
        .lock()
        .context("locking target/lab/prepare.lock")?;
    let root = dir.join("root");
    let debs = packages(&dir.join("cache"), &root)?;
    let lock = lock_text(&debs);
    let config = root.join("boot/xen-4.17-amd64.config");
    let config_text =
        fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
    ensure!(
        config_text
            .lines()
            .any(|line| line == "CONFIG_SHADOW_PAGING=y"),
        "{} is built without shadow paging, which a PV guest's live migration needs: \
         the lab wants Xen {XEN_VERSION}",
        config.display()
    );

    let xen_gz = root.join("boot/xen-4.17-amd64.gz");
    let xen = dir.join("xen");
    if !fresh(&xen, &lock) {
        let out = fs::File::create(&xen).with_context(|| format!("creating {}", xen.display()))?;
        util::run(Command::new("gzip").arg("-dc").arg(&xen_gz).stdout(out))?;
        mark(&xen, &lock)?;
    }

    let vmlinuz = only_file(&root.join("boot"), "vmlinuz-")?;
    let vmlinux = dir.join("vmlinux");
    if !fresh(&vmlinux, &lock) {
        extract_vmlinux(&vmlinuz, &vmlinux)?;
        mark(&vmlinux, &lock)?;
    }
    let initramfs = dir.join("dom0-base.cpio");
    let inputs = format!(
        "layout {LAYOUT_VERSION}\n{lock}\ntools {XEN_TOOLS:?} {OTHER_PROGRAMS:?}\nmodules {MODULES:?}\n{XL_CONF}\n{INIT}\n{VIF_BRIDGE}\n{BLOCK}\nguest {GUEST_MODULES:?}\n{LINUX_GUEST_INIT}"
    );
    if !fresh(&initramfs, &inputs) {
        build_initramfs(&root, &dir.join("initramfs"), &initramfs)?;
        mark(&initramfs, &inputs)?;
    }
    Ok(Assets {
        xen,
        vmlinux,
        initramfs,
    })
}

/// The ELF kernel inside a bzImage: its payload (offset and length in the setup
/// header, x86 boot protocol 2.08+) is an xz stream.
fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<()> {
    let data = fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    ensure!(
        data.len() > 0x250 && &data[0x202..0x206] == b"HdrS",
        "{} is no bzImage",
        bzimage.display()
    );
    let setup_sects = match data[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let field =
        |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
    let start = (setup_sects + 1) * 512 + field(0x248);
    let payload = data
        .get(start..start + field(0x24c))
        .with_context(|| format!("{}: payload beyond the file", bzimage.display()))?;
    ensure!(
        payload.starts_with(b"\xfd7zXZ\0"),
        "{}: the kernel payload is not xz-compressed (starts {:02x?})",
        bzimage.display(),
        &payload[..payload.len().min(6)]
    );
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("cannot start xz")?;
    // xz reads until the stream ends; the trailing bytes of the payload are padding.
    let write = child.stdin.take().expect("piped").write_all(payload);
    let status = child.wait()?;
    ensure!(
        status.success(),
        "xz could not unpack the kernel in {}",
        bzimage.display()
    );
    write.or_else(|err| {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            Ok(())
        } else {
            Err(err)
        }
    })?;
    ensure!(
        Elf::is_elf(&fs::read(out)?[..4]),
        "{} is not an ELF kernel",
        out.display()
    );
    Ok(())
}

/// Assemble dom0's root in `staging` from the unpacked packages and pack it into `out`.
fn build_initramfs(root: &Path, staging: &Path, out: &Path) -> Result<()> {
    eprintln!("lab: building the dom0 initramfs");
    if staging.exists() {
        fs::remove_dir_all(staging)?;
    }
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc/xen/scripts",
        "etc/lab",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "root",
        "apps",
        "lab",
        "var/log",
        "var/lib",
        "lib/modules/lab",
        "lib/x86_64-linux-gnu",
        "lib64",
        XEN_BIN,
    ] {
        fs::create_dir_all(staging.join(dir))?;
    }
    symlink("../run", &staging.join("var/run"))?;
    symlink("../run/lock", &staging.join("var/lock"))?;

    copy(&root.join("bin/busybox"), &staging.join("bin/busybox"))?;
    for program in programs() {
        copy(&root.join(&program), &staging.join(&program))?;
    }
    // busybox installs its own ip at /sbin/ip, ahead of /bin in PATH; this link (as
    // iproute2's package has it) is there first, and busybox leaves it.
    symlink("../bin/ip", &staging.join("sbin/ip"))?;
    for name in XENSTORE_NAMES {
        symlink("xenstore", &staging.join("usr/bin").join(name))?;
    }

    let (libraries, missing) = library_closure(root)?;
    if let Some((soname, user)) = missing.into_iter().next() {
        bail!(
            "{soname} (needed by {user}) is in no unpacked package; delete target/lab/cache/packages.lock"
        );
    }
    for (name, path) in &libraries {
        // One flat directory the loader searches by default; copies, not links.
        copy(path, &staging.join("lib/x86_64-linux-gnu").join(name))?;
    }
    symlink(
        "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        &staging.join("lib64/ld-linux-x86-64.so.2"),
    )?;

    let modules = module_order(root, MODULES)?;
    let mut list = String::new();
    for module in &modules {
        let name = file_name(module.to_str().unwrap_or_default());
        copy(module, &staging.join("lib/modules/lab").join(name))?;
        list.push_str(name);
        list.push('\n');
    }
    fs::write(staging.join("etc/lab/modules"), list)?;
    fs::write(staging.join("etc/xen/xl.conf"), XL_CONF)?;
    write_executable(&staging.join("etc/xen/scripts/vif-bridge"), VIF_BRIDGE)?;
    write_executable(&staging.join("etc/xen/scripts/block"), BLOCK)?;
    write_executable(&staging.join("init"), INIT)?;
    build_linux_guest(root, staging)?;

    cpio(staging, out)?;
    let size = fs::metadata(out)?.len();
    eprintln!(
        "lab: {} ({} MiB: busybox, {} programs, {} libraries, {} modules)",
        out.display(),
        size >> 20,
        programs().len(),
        libraries.len(),
        modules.len()
    );
    Ok(())
}

/// `.ko` files of `names` and their dependencies, each after what it depends on.
pub(super) fn module_order(root: &Path, names: &[&str]) -> Result<Vec<PathBuf>> {
    let base = only_dir(&root.join("lib/modules"))?;
    let normalize = |name: &str| name.replace('-', "_");
    let mut files = HashMap::new();
    let mut stack = vec![base.join("kernel")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str()?.strip_suffix(".ko"))
            {
                files.insert(normalize(stem), path);
            }
        }
    }
    let builtin: BTreeSet<String> = fs::read_to_string(base.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| Some(normalize(file_name(line).strip_suffix(".ko")?)))
        .collect();

    fn visit(
        name: &str,
        files: &HashMap<String, PathBuf>,
        builtin: &BTreeSet<String>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<()> {
        if builtin.contains(name) || !done.insert(name.to_owned()) {
            return Ok(());
        }
        let path = files.get(name).with_context(|| {
            format!("kernel module {name} is neither built in nor a .ko file of the kernel package")
        })?;
        let data = fs::read(path)?;
        let info = Elf::parse(&data)?
            .section(".modinfo")?
            .with_context(|| format!("{} has no .modinfo section", path.display()))?;
        for deps in elf::modinfo(info, "depends") {
            for dep in deps.split(',').filter(|dep| !dep.is_empty()) {
                visit(&dep.replace('-', "_"), files, builtin, done, order)?;
            }
        }
        order.push(path.clone());
        Ok(())
    }
    let mut done = BTreeSet::new();
    let mut order = Vec::new();
    for module in names {
        visit(&normalize(module), &files, &builtin, &mut done, &mut order)?;
    }
    Ok(order)
}

/// Pack `dir` into a newc cpio archive owned by root, as the kernel wants it.
pub fn cpio(dir: &Path, out: &Path) -> Result<()> {
    let mut paths = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(dir.join(&rel))? {
            let entry = entry?;
            let rel = rel.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                stack.push(rel.clone());
            }
            paths.push(rel);
        }
    }
    paths.sort();
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut child = Command::new("cpio")
        .args(["--create", "--format=newc", "--owner=0:0", "--quiet"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("cannot start cpio")?;
    {
        let mut stdin = child.stdin.take().expect("piped");
        for path in &paths {
            writeln!(stdin, "{}", path.display())?;
        }
    }
    let status = child.wait()?;
    ensure!(
        status.success(),
        "cpio failed packing {} ({status})",
        dir.display()
    );
    Ok(())
}

/// Whether `output` exists and was made from exactly `inputs` (see `mark`).
pub(super) fn fresh(output: &Path, inputs: &str) -> bool {
    output.exists() && fs::read_to_string(stamp_path(output)).is_ok_and(|stamp| stamp == inputs)
}

/// Record that `output` was made from `inputs`.
pub(super) fn mark(output: &Path, inputs: &str) -> Result<()> {
    let stamp = stamp_path(output);
    fs::write(&stamp, inputs).with_context(|| format!("writing {}", stamp.display()))
}

fn stamp_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".stamp");
    output.with_file_name(name)
}

pub(super) fn only_file(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    ensure!(
        found.len() == 1,
        "expected one {prefix}* in {}, found {found:?}",
        dir.display()
    );
    Ok(found.remove(0))
}

fn only_dir(dir: &Path) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.is_dir())
        .collect();
    ensure!(
        found.len() == 1,
        "expected one directory in {}, found {found:?}",
        dir.display()
    );
    Ok(found.remove(0))
}

pub(super) fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

pub(super) fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn symlink(target: &str, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} to {target}", link.display()))
}

pub fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}
