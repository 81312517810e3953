//! Lab assets: Debian bookworm packages (fetched once with `apt-get download`, no root
//! needed), unpacked with `dpkg -x`, turned into Xen's multiboot image and a dom0
//! initramfs. Everything lives under `target/lab/`; a warm cache needs no network.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};

use super::progress::Progress;
use crate::elf::{self, Elf};
use crate::prereq::{self, Need};
use crate::util::{self, target_dir};

/// Packages the lab needs by name. The kernel comes from `KERNEL_META`'s dependency, and
/// the libraries the programs below link against are found by following `DT_NEEDED`.
const PACKAGES: &[&str] = &[
    "xen-hypervisor-4.17-amd64",
    "xen-utils-4.17",
    "xenstore-utils",
    "libxenmisc4.17",
    "libxenstore4",
    "libxencall1",
    "libxenevtchn1",
    "libxenforeignmemory1",
    "libxengnttab1",
    "libxentoolcore1",
    "libxentoollog1",
    "libxendevicemodel1",
    "libxenhypfs1",
    "libyajl2",
    "busybox-static",
    // redis-cli, the client the kvstore tests talk through, and the libraries it links
    // that a Debian host running xtask may not have installed (`package_of` asks the
    // host's dpkg for the others).
    "redis-tools",
    "libjemalloc2",
    "liblzf1",
];

/// Programs of other packages that go into dom0 (its PATH has `/usr/bin`).
const OTHER_PROGRAMS: &[&str] = &["usr/bin/redis-cli"];

/// The version of every Xen package (`xen-*`, `libxen*`) the lab takes: bookworm's own
/// 4.17.5. Its security update 4.17.7+13-g2445b30a44-0+deb12u1 builds the hypervisor
/// without shadow paging (`# CONFIG_SHADOW_PAGING is not set`), and a PV guest's live
/// migration needs it: libxc's log-dirty mode then fails (`Failed to enable logdirty:
/// 95`, for xl and chaos alike). [`prepare`] checks the hypervisor it unpacked.
const XEN_VERSION: &str = "4.17.5+72-g01140da4e8-1";

/// Whether `name` is one of Xen's packages, taken at [`XEN_VERSION`].
fn is_xen_package(name: &str) -> bool {
    name.starts_with("xen") || name.starts_with("libxen")
}

/// What `apt-get download` is asked for: Xen's packages at [`XEN_VERSION`].
fn apt_spec(name: &str) -> String {
    if is_xen_package(name) {
        format!("{name}={XEN_VERSION}")
    } else {
        name.to_owned()
    }
}

/// A metapackage that depends on the current `linux-image-6.1.0-NN-amd64`.
const KERNEL_META: &str = "linux-image-amd64";

/// Where `xen-utils-4.17` keeps its programs; dom0's PATH starts here.
const XEN_BIN: &str = "usr/lib/xen-4.17/bin";

/// Programs of `XEN_BIN` that go into dom0.
const XEN_TOOLS: &[&str] = &[
    "xl",
    "xenstored",
    "xenconsoled",
    "xenconsole",
    "xen-init-dom0",
    "libxl-save-helper",
    "xenstore-control",
    "xen-diag",
    "lsevtchn",
    "readnotes",
];

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

/// Libraries loaded with `dlopen`, which `DT_NEEDED` does not show: glibc's
/// `pthread_cancel` needs libgcc_s, and xl aborts without it.
const DLOPENED: &[&str] = &["libgcc_s.so.1"];

/// Kernel modules dom0 loads (their dependencies are added): Xen device and backend
/// drivers, networking for guests, the lab NIC, virtio-rng for entropy, virtio-blk
/// for the disks xtask attaches (`--disk`), virtio-console for the relay's channel
/// (`--forward`), and ext4 (for ext2 too) for a file system a test can freeze.
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
];

/// Modules of the Linux PV guest (`/apps/linux`): its front ends, which Debian builds as
/// modules.
const GUEST_MODULES: &[&str] = &["xen-netfront", "xen-blkfront"];

/// `/init` of the Linux PV guest's initramfs.
const LINUX_GUEST_INIT: &str = include_str!("linux-guest-init.sh");

/// Where dom0 has the Linux PV guest: Debian's kernel (the one dom0 runs, which is a
/// PV kernel too) and a busybox initramfs with [`LINUX_GUEST_INIT`].
pub const LINUX_GUEST_DIR: &str = "apps/linux";

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
const LAYOUT_VERSION: u32 = 2;

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

/// A downloaded package.
#[derive(Debug, Clone)]
struct Deb {
    name: String,
    file: PathBuf,
}

impl Deb {
    /// Whether its file is version `version` (`NAME_VERSION_ARCH.deb`).
    fn is_version(&self, version: &str) -> bool {
        self.file
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|file| file.starts_with(&format!("{}_{version}_", self.name)))
    }
}

/// The `.deb` files of every package the lab needs, downloaded into `cache` and unpacked
/// into `root`. The list is kept in `cache/packages.lock`; while it and its files exist,
/// neither apt nor the network is asked anything.
fn packages(cache: &Path, root: &Path) -> Result<Vec<Deb>> {
    let lock_path = cache.join("packages.lock");
    if let Some(debs) = read_lock(cache, &lock_path) {
        let mut missing = unlisted(&debs, PACKAGES);
        missing.extend(
            debs.iter()
                .filter(|deb| is_xen_package(&deb.name) && !deb.is_version(XEN_VERSION))
                .map(|deb| deb.name.as_str()),
        );
        if missing.is_empty() {
            unpack_all(&debs, root)?;
            return Ok(debs);
        }
        eprintln!(
            "lab: {} lacks {} (or not at the lab's version): fetching packages again",
            lock_path.display(),
            missing.join(", ")
        );
    }
    for tool in ["apt-get", "apt-cache", "dpkg"] {
        if util::which(tool).is_none() {
            bail!(
                "`{tool}` is not on PATH: the lab takes Xen, Linux and busybox from Debian \
                 bookworm packages and needs a Debian host (or a filled {})",
                cache.display()
            );
        }
    }
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let mut names: Vec<String> = PACKAGES.iter().map(|&name| name.to_owned()).collect();
    names.push(prereq::with_fresh_apt_lists(kernel_package)?);
    // The packages are unpacked from scratch while the closure is resolved.
    if root.exists() {
        fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    }
    let mut debs: Vec<Deb> = Vec::new();
    loop {
        let new: Vec<String> = names
            .iter()
            .filter(|name| !debs.iter().any(|deb| &deb.name == *name))
            .cloned()
            .collect();
        let fetched = prereq::with_fresh_apt_lists(|| download(cache, &new))?;
        unpack(&fetched, root)?;
        debs.extend(fetched);
        let missing = missing_libraries(root)?;
        if missing.is_empty() {
            break;
        }
        for (soname, user) in missing {
            let package =
                package_of(&soname).with_context(|| format!("{soname} is needed by {user}"))?;
            ensure!(
                !debs.iter().any(|deb| deb.name == package),
                "package {package} was unpacked but {soname} (needed by {user}) is still missing"
            );
            eprintln!("lab: {user} needs {soname}, from package {package}");
            if !names.contains(&package) {
                names.push(package);
            }
        }
    }
    debs.sort_by(|a, b| a.name.cmp(&b.name));
    fs::write(&lock_path, lock_text(&debs))
        .with_context(|| format!("writing {}", lock_path.display()))?;
    mark(root, &lock_text(&debs))?;
    Ok(debs)
}

/// The packages of `wanted` that `debs` (a lock's list) lacks: a lock written before a
/// package was added to `PACKAGES` must not stand.
fn unlisted<'a>(debs: &[Deb], wanted: &[&'a str]) -> Vec<&'a str> {
    wanted
        .iter()
        .copied()
        .filter(|name| !debs.iter().any(|deb| deb.name == *name))
        .collect()
}

fn lock_text(debs: &[Deb]) -> String {
    let mut text = String::from("# package file (cargo xtask lab; delete to fetch again)\n");
    for deb in debs {
        let file = deb.file.file_name().unwrap_or_default().to_string_lossy();
        text.push_str(&format!("{} {file}\n", deb.name));
    }
    text
}

fn read_lock(cache: &Path, lock_path: &Path) -> Option<Vec<Deb>> {
    let text = fs::read_to_string(lock_path).ok()?;
    let mut debs = Vec::new();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let (name, file) = line.split_once(' ')?;
        let file = cache.join(file);
        if !file.is_file() {
            eprintln!(
                "lab: {} is missing from the cache: fetching packages again",
                file.display()
            );
            return None;
        }
        debs.push(Deb {
            name: name.to_owned(),
            file,
        });
    }
    Some(debs)
}

/// `linux-image-6.1.0-NN-amd64`, the package `linux-image-amd64` currently depends on.
fn kernel_package() -> Result<String> {
    let out = output(Command::new("apt-cache").args(["depends", KERNEL_META]))?;
    out.lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .find(|dep| dep.starts_with("linux-image-"))
        .map(str::to_owned)
        .with_context(|| {
            format!("`apt-cache depends {KERNEL_META}` names no linux-image package (run apt-get update?):\n{out}")
        })
}

/// `apt-get download` the packages into `cache` (those not there yet), with a progress
/// display.
fn download(cache: &Path, names: &[String]) -> Result<Vec<Deb>> {
    // apt names the file it would fetch only when that file is absent from the current
    // directory, so ask from an empty one.
    let scratch = cache.join("uris");
    fs::create_dir_all(&scratch)?;
    let specs: Vec<String> = names.iter().map(|name| apt_spec(name)).collect();
    let uris = output(apt_get(&scratch).arg("--print-uris").args(&specs))?;
    // "'http://…/libyajl2_2.1.0-3%2bdeb12u2_amd64.deb' libyajl2_2.1.0-3+deb12u2_amd64.deb 22960 SHA256:…"
    let files: Vec<&str> = uris
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .collect();
    let debs = names
        .iter()
        .map(|name| {
            let prefix = format!("{name}_");
            let file = files
                .iter()
                .find(|file| file.starts_with(&prefix))
                .with_context(|| {
                    format!("`apt-get download --print-uris` does not list {name}:\n{uris}")
                })?;
            Ok(Deb {
                name: name.clone(),
                file: cache.join(file),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let wanted: Vec<&Deb> = debs.iter().filter(|deb| !deb.file.is_file()).collect();
    if wanted.is_empty() {
        return Ok(debs);
    }

    let mut cmd = apt_get(cache);
    cmd.args(wanted.iter().map(|deb| apt_spec(&deb.name)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!("$ {}", util::display(&cmd));
    let mut child = cmd.spawn().context("cannot start apt-get")?;
    let stderr = child.stderr.take().expect("piped");
    let stderr = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let mut progress = Progress::new("downloading", wanted.len() as u64);
    let mut log = String::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        // "Get:3 http://deb.debian.org/debian bookworm/main amd64 libxencall1 amd64 4.17… [33.5 kB]"
        if line.starts_with("Get:") {
            progress.step(line.split_whitespace().nth(4).unwrap_or("?"));
        }
        log.push_str(&line);
        log.push('\n');
    }
    let status = child.wait()?;
    let stderr = stderr.join().unwrap_or_default();
    ensure!(
        status.success(),
        "apt-get download failed ({status}):\n{log}{stderr}"
    );
    progress.finish(&format!(
        "downloaded {} packages into {}",
        wanted.len(),
        cache.display()
    ));
    for deb in &debs {
        ensure!(
            deb.file.is_file(),
            "apt-get download did not leave {}",
            deb.file.display()
        );
    }
    Ok(debs)
}

fn apt_get(dir: &Path) -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.arg("download").current_dir(dir);
    if util::is_root() {
        // As root apt drops to the `_apt` user, which may not write to target/.
        cmd.args(["-o", "APT::Sandbox::User=root"]);
    }
    cmd
}

/// Unpack `debs` into `root` unless it already holds exactly them.
fn unpack_all(debs: &[Deb], root: &Path) -> Result<()> {
    let lock = lock_text(debs);
    if fresh(root, &lock) {
        return Ok(());
    }
    if root.exists() {
        fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    }
    unpack(debs, root)?;
    mark(root, &lock)
}

fn unpack(debs: &[Deb], root: &Path) -> Result<()> {
    fs::create_dir_all(root)?;
    let mut progress = Progress::new("unpacking", debs.len() as u64);
    for deb in debs {
        let out = Command::new("dpkg")
            .arg("-x")
            .arg(&deb.file)
            .arg(root)
            .output()?;
        if !out.status.success() {
            bail!(
                "`dpkg -x {} {}` failed: {}",
                deb.file.display(),
                root.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        progress.step(&deb.name);
    }
    progress.finish(&format!(
        "unpacked {} packages into {}",
        debs.len(),
        root.display()
    ));
    Ok(())
}

/// The programs that go into dom0, relative to the unpacked root.
fn programs() -> Vec<String> {
    let mut programs: Vec<String> = XEN_TOOLS
        .iter()
        .map(|tool| format!("{XEN_BIN}/{tool}"))
        .collect();
    programs.push("usr/bin/xenstore".to_owned());
    programs.extend(OTHER_PROGRAMS.iter().map(|&program| program.to_owned()));
    programs
}

/// Every file the dom0 programs need to be loaded, by file name (soname or loader),
/// each with where it was found in `root`; plus which are missing and who needs them.
fn library_closure(root: &Path) -> Result<(BTreeMap<String, PathBuf>, BTreeMap<String, String>)> {
    let mut found = BTreeMap::new();
    let mut missing = BTreeMap::new();
    let mut queue: Vec<(String, String)> = DLOPENED
        .iter()
        .map(|lib| (lib.to_string(), "xl (dlopen)".to_owned()))
        .collect();
    for program in programs() {
        let path = root.join(&program);
        let data = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let dynamic = Elf::parse(&data)
            .with_context(|| path.display().to_string())?
            .dynamic()?;
        let user = program.rsplit('/').next().unwrap_or(&program).to_owned();
        if let Some(interp) = dynamic.interp {
            queue.push((file_name(&interp).to_owned(), user.clone()));
        }
        queue.extend(dynamic.needed.into_iter().map(|lib| (lib, user.clone())));
    }
    while let Some((name, user)) = queue.pop() {
        if found.contains_key(&name) || missing.contains_key(&name) {
            continue;
        }
        let Some(path) = find_library(root, &name) else {
            missing.insert(name, user);
            continue;
        };
        let data = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let dynamic = Elf::parse(&data)
            .with_context(|| path.display().to_string())?
            .dynamic()?;
        queue.extend(dynamic.needed.into_iter().map(|lib| (lib, name.clone())));
        found.insert(name, path);
    }
    Ok((found, missing))
}

fn missing_libraries(root: &Path) -> Result<BTreeMap<String, String>> {
    Ok(library_closure(root)?.1)
}

/// Where the loader would find `name` in the unpacked tree (symlinks resolved inside it).
fn find_library(root: &Path, name: &str) -> Option<PathBuf> {
    const DIRS: &[&str] = &[
        "lib/x86_64-linux-gnu",
        "usr/lib/x86_64-linux-gnu",
        "lib64",
        "usr/lib64",
        "lib",
        "usr/lib",
    ];
    DIRS.iter()
        .find_map(|dir| resolve_in_root(root, &Path::new(dir).join(name)))
        .filter(|path| path.is_file())
}

/// Follow symlinks of `rel` with `root` as `/`: Debian's absolute links (the loader's
/// `/lib64/…` link) must not point into the host.
fn resolve_in_root(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut path = root.join(rel);
    for _ in 0..40 {
        let meta = fs::symlink_metadata(&path).ok()?;
        if !meta.file_type().is_symlink() {
            return Some(path);
        }
        let target = fs::read_link(&path).ok()?;
        path = match target.strip_prefix("/") {
            Ok(absolute) => root.join(absolute),
            Err(_) => path.parent()?.join(target),
        };
    }
    None
}

/// The Debian package that provides the library `soname` on this host (`dpkg -S`):
/// the lab copies the package, not the host's file.
fn package_of(soname: &str) -> Result<String> {
    let out = Command::new("dpkg")
        .args(["-S", &format!("*/{soname}")])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "libuuid1:amd64: /usr/lib/x86_64-linux-gnu/libuuid.so.1"
    text.lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(_, path)| path.contains("x86_64-linux-gnu/") || path.starts_with("/lib64/"))
        .map(|(package, _)| package.split(':').next().unwrap_or(package).to_owned())
        .next()
        .with_context(|| {
            format!(
                "no installed Debian package provides {soname} (`dpkg -S '*/{soname}'`: {})",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
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

/// The Linux PV guest in dom0's [`LINUX_GUEST_DIR`]: Debian's kernel (the bzImage:
/// libxenguest unpacks it) and an initramfs of busybox, [`GUEST_MODULES`] (named so
/// that a glob loads them in dependency order) and [`LINUX_GUEST_INIT`].
fn build_linux_guest(root: &Path, staging: &Path) -> Result<()> {
    let dir = staging.join(LINUX_GUEST_DIR);
    fs::create_dir_all(&dir)?;
    copy(
        &only_file(&root.join("boot"), "vmlinuz-")?,
        &dir.join("vmlinuz"),
    )?;
    let guest = staging
        .parent()
        .context("the staging directory has a parent")?
        .join("linux-guest");
    if guest.exists() {
        fs::remove_dir_all(&guest)?;
    }
    for sub in ["bin", "lib/modules"] {
        fs::create_dir_all(guest.join(sub))?;
    }
    copy(&root.join("bin/busybox"), &guest.join("bin/busybox"))?;
    for (index, module) in module_order(root, GUEST_MODULES)?.iter().enumerate() {
        let name = format!(
            "{index:02}-{}",
            file_name(module.to_str().unwrap_or_default())
        );
        copy(module, &guest.join("lib/modules").join(name))?;
    }
    write_executable(&guest.join("init"), LINUX_GUEST_INIT)?;
    cpio(&guest, &dir.join("initrd"))
}

/// `.ko` files of `names` and their dependencies, each after what it depends on.
fn module_order(root: &Path, names: &[&str]) -> Result<Vec<PathBuf>> {
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
fn fresh(output: &Path, inputs: &str) -> bool {
    output.exists() && fs::read_to_string(stamp_path(output)).is_ok_and(|stamp| stamp == inputs)
}

/// Record that `output` was made from `inputs`.
fn mark(output: &Path, inputs: &str) -> Result<()> {
    let stamp = stamp_path(output);
    fs::write(&stamp, inputs).with_context(|| format!("writing {}", stamp.display()))
}

fn stamp_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".stamp");
    output.with_file_name(name)
}

fn only_file(dir: &Path, prefix: &str) -> Result<PathBuf> {
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

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
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

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{}`", util::display(cmd)))?;
    ensure!(
        out.status.success(),
        "`{}` failed ({}): {}",
        util::display(cmd),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_without_a_listed_package_is_stale() {
        let deb = |name: &str| Deb {
            name: name.to_owned(),
            file: PathBuf::from(format!("{name}.deb")),
        };
        let old_lock = [deb("busybox-static"), deb("xen-utils-4.17")];
        assert_eq!(
            unlisted(&old_lock, &["busybox-static", "redis-tools"]),
            ["redis-tools"]
        );
        assert!(unlisted(&old_lock, &["xen-utils-4.17"]).is_empty());
        // The lab's own list: every package it names is one the lock must have.
        assert!(PACKAGES.contains(&"redis-tools"));
    }

    #[test]
    fn xen_packages_are_asked_for_at_the_labs_version() {
        assert_eq!(
            apt_spec("xen-hypervisor-4.17-amd64"),
            format!("xen-hypervisor-4.17-amd64={XEN_VERSION}")
        );
        assert_eq!(
            apt_spec("libxenmisc4.17"),
            format!("libxenmisc4.17={XEN_VERSION}")
        );
        assert_eq!(apt_spec("busybox-static"), "busybox-static");
        let deb = |file: &str| Deb {
            name: "libxencall1".to_owned(),
            file: PathBuf::from("cache").join(file),
        };
        assert!(deb("libxencall1_4.17.5+72-g01140da4e8-1_amd64.deb").is_version(XEN_VERSION));
        // The security update without shadow paging makes a lock stale.
        assert!(
            !deb("libxencall1_4.17.7+13-g2445b30a44-0+deb12u1_amd64.deb").is_version(XEN_VERSION)
        );
    }
}
