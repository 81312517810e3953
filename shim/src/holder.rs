//! The task's process: a guest is no process of dom0, but containerd wants a pid for a
//! task, and what it does with it is reach the task's network namespace
//! (`/proc/PID/ns/net`: `ctr run --cni` puts the network there between create and
//! start; Kubernetes gives a pod's containers the sandbox task's). So a task with a
//! network namespace gets a small process that sits in it: this binary run as
//! `containerd-shim-lightvm-v1 hold PPID`, made in a new namespace or put into the
//! spec's. It ends when the shim kills it at delete, or when the shim is gone.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sched::CloneFlags;

/// The first argument that makes this binary a holder.
pub const HOLD: &str = "hold";

/// A running holder.
#[derive(Debug)]
pub struct Holder {
    child: Child,
}

impl Holder {
    /// A holder in a new network namespace (`join` None) or in the one at `join`.
    pub fn spawn(join: Option<&Path>) -> io::Result<Self> {
        let join = match join {
            Some(path) => Some(std::fs::File::open(path).map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!("network namespace {}: {err}", path.display()),
                )
            })?),
            None => None,
        };
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args([HOLD, &std::process::id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec the closure only calls setns/unshare, which are
        // async-signal-safe system calls, on a descriptor opened before the fork.
        unsafe {
            command.pre_exec(move || {
                match &join {
                    Some(netns) => nix::sched::setns(netns, CloneFlags::CLONE_NEWNET)?,
                    None => nix::sched::unshare(CloneFlags::CLONE_NEWNET)?,
                }
                Ok(())
            });
        }
        Ok(Self {
            child: command.spawn()?,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its network namespace, as containerd and CNI name it.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid()))
    }

    /// End it and reap it.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The holder's life: wait until the shim that made it (`parent`) is gone.
pub fn hold(parent: &str) -> ! {
    let parent: u32 = parent.parse().unwrap_or(0);
    while std::os::unix::process::parent_id() == parent {
        std::thread::sleep(Duration::from_secs(1));
    }
    std::process::exit(0)
}

/// The device and inode of a namespace file: the identity of the namespace.
fn namespace_id(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path)?;
    Ok((metadata.dev(), metadata.ino()))
}

/// Where the shims record which network namespace has a guest.
const CLAIMS_DIR: &str = "/run/containerd-shim-lightvm/netns";

/// A task's hold on a network namespace: one guest per namespace (its eth0 is
/// redirected to one vif). A lock file per namespace (named by its device and inode),
/// locked while the task lives, removed at its end; the lock goes with the shim if it
/// dies.
#[derive(Debug)]
pub struct NetnsClaim {
    file: std::fs::File,
    path: PathBuf,
}

impl Drop for NetnsClaim {
    fn drop(&mut self) {
        // Removed while locked: a shim that opened it meanwhile sees it is gone.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

impl NetnsClaim {
    /// Claim the namespace at `path` for task `id`.
    pub fn take(path: &Path, id: &str) -> Result<Self, String> {
        let (dev, ino) = namespace_id(path)
            .map_err(|err| format!("network namespace {}: {err}", path.display()))?;
        std::fs::create_dir_all(CLAIMS_DIR).map_err(|err| format!("{CLAIMS_DIR}: {err}"))?;
        let lock = Path::new(CLAIMS_DIR).join(format!("{dev}-{ino}"));
        loop {
            let file = Self::lock(&lock, path, id)?;
            // Locked the file that is there now, not one a former holder removed.
            let same = |meta: &std::fs::Metadata| {
                use std::os::unix::fs::MetadataExt;
                (meta.dev(), meta.ino())
            };
            if let (Ok(held), Ok(there)) = (file.metadata(), std::fs::metadata(&lock))
                && same(&held) == same(&there)
            {
                return Ok(Self { file, path: lock });
            }
        }
    }

    fn lock(lock: &Path, path: &Path, id: &str) -> Result<std::fs::File, String> {
        let mut file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(lock)
            .map_err(|err| format!("{}: {err}", lock.display()))?;
        if let Err(err) = file.try_lock() {
            let mut owner = String::new();
            let _ = io::Read::read_to_string(&mut file, &mut owner);
            return Err(match err {
                std::fs::TryLockError::WouldBlock => format!(
                    "network namespace {} has a lightvm guest already (task {}): one guest per \
                     network namespace",
                    path.display(),
                    owner.trim()
                ),
                std::fs::TryLockError::Error(err) => format!("{}: {err}", lock.display()),
            });
        }
        file.set_len(0)
            .and_then(|()| io::Write::write_all(&mut file, id.as_bytes()))
            .map_err(|err| format!("{}: {err}", lock.display()))?;
        Ok(file)
    }
}
