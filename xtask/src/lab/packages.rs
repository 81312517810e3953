//! The Debian bookworm packages the lab takes and at what version: a list by name, Xen's
//! packages pinned, the kernel through its metapackage, and the libraries the dom0
//! programs link against. They are fetched once with `apt-get download` (no root needed)
//! into `target/lab/cache`, recorded in its `packages.lock`, and unpacked with `dpkg -x`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};

use super::assets::{file_name, fresh, mark};
use super::progress::Progress;
use crate::elf::Elf;
use crate::prereq;
use crate::util;

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
    // iproute2's ip and tc (busybox's lack network namespaces, `-j` and tc filters): a
    // pod's network namespace, its eth0 and the tc redirects to a guest's vif.
    "iproute2",
];

/// Programs of other packages that go into dom0 (its PATH has `/usr/bin`).
pub(super) const OTHER_PROGRAMS: &[&str] = &["usr/bin/redis-cli", "bin/ip", "sbin/tc"];

/// The version of every Xen package (`xen-*`, `libxen*`) the lab takes: bookworm's own
/// 4.17.5. Its security update 4.17.7+13-g2445b30a44-0+deb12u1 builds the hypervisor
/// without shadow paging (`# CONFIG_SHADOW_PAGING is not set`), and a PV guest's live
/// migration needs it: libxc's log-dirty mode then fails (`Failed to enable logdirty:
/// 95`, for xl and chaos alike). [`prepare`](super::assets::prepare) checks the hypervisor it unpacked.
pub(super) const XEN_VERSION: &str = "4.17.5+72-g01140da4e8-1";

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
pub(super) const XEN_BIN: &str = "usr/lib/xen-4.17/bin";

/// Programs of `XEN_BIN` that go into dom0.
pub(super) const XEN_TOOLS: &[&str] = &[
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

/// Libraries loaded with `dlopen`, which `DT_NEEDED` does not show: glibc's
/// `pthread_cancel` needs libgcc_s, and xl aborts without it.
const DLOPENED: &[&str] = &["libgcc_s.so.1"];

/// A downloaded package.
#[derive(Debug, Clone)]
pub(super) struct Deb {
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
pub(super) fn packages(cache: &Path, root: &Path) -> Result<Vec<Deb>> {
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

pub(super) fn lock_text(debs: &[Deb]) -> String {
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
pub(super) fn programs() -> Vec<String> {
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
pub(super) fn library_closure(
    root: &Path,
) -> Result<(BTreeMap<String, PathBuf>, BTreeMap<String, String>)> {
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
