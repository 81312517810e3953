//! Claims: how a create marks the domain it is making, from before the domain exists
//! until the create is done, so that neither a second create of the same name nor a
//! killed chaos can go unnoticed.
//!
//! A claim is one small file, `RUN_DIR/creating/NAME.claim`, holding the name, the
//! handle (UUID) the domain gets, its device method and the creating process's id, and
//! locked (an open-file-description lock, `F_OFD_SETLK`) by that process for as long as
//! it runs:
//! - *taken before the domain exists*, keyed by something known before the domain id:
//!   the name, with the handle chaos picks before `xc_domain_create`. A chaos killed at
//!   any step from then on leaves the claim behind, and the claim finds its domain
//!   (Xen lists every domain's handle), named or not;
//! - *atomic*: the file is made anonymous (`O_TMPFILE`), written, locked, and only
//!   then linked under its name (`linkat` fails if the name exists). Two creates of one
//!   name cannot both link it, and nobody ever sees a claim half-written;
//! - *alive or orphaned, as the kernel says*: the lock goes with the last descriptor of
//!   its file, however the process ends (SIGKILL and the OOM killer included), and a
//!   pid reused since cannot pass for the creator. A claim nobody locks is an orphan's:
//!   `chaos list` marks its domain, `chaos destroy --orphans` destroys it with its
//!   devices and removes the claim, and a create of the name takes over a claim whose
//!   domain is gone. Looking ([`Claims::list`], `F_OFD_GETLK`) takes no lock, so it
//!   never stands in a creator's or a sweeper's way;
//! - *released when the create is done*: then the name is where [`crate::domain`]
//!   finds names (Xenstore, xendevd), so the claim's work is over.
//!
//! Why not a mark in the domain itself (its handle, rewritten by `xc_domain_sethandle`
//! at the end): Xen knows no process, so it could not tell a live create from a dead
//! one, nor make a name claim atomic; and a Xenstore node would cost the NoXS path a
//! Xenstore round trip. A claim costs a handful of system calls on a tmpfs and none of
//! Xen's (the create's `claim the name` step shows it).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::DevMethod;
use crate::uuid::Uuid;

/// How a claim's file name ends (what precedes it is the domain's name).
pub const SUFFIX: &str = ".claim";

/// What a claim says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The name the domain is to have.
    pub name: String,
    /// The domain's handle (UUID), as [`Uuid`] prints it: how its domain is found.
    pub uuid: String,
    /// How the domain's devices are made: what destroying it takes.
    pub dev_method: DevMethod,
    /// The creating process, for messages (its lock, not its id, says whether it runs).
    pub pid: u32,
}

impl Record {
    /// The handle, if the record holds a valid one.
    pub fn handle(&self) -> Option<Uuid> {
        Uuid::parse(&self.uuid)
    }
}

/// Why a name could not be claimed, or the claims not read.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// A running chaos is creating a domain of this name.
    #[error("a domain named {name:?} is being created by chaos pid {pid} (which holds {})", path.display())]
    Taken {
        name: String,
        pid: u32,
        path: PathBuf,
    },
    /// A chaos that is gone began a domain of this name, and the domain is there.
    #[error(
        "{name:?} is the name of domain {domid}, which chaos pid {pid} began and did not \
         finish (an orphan): `chaos destroy --orphans` removes it"
    )]
    Orphaned { name: String, domid: u32, pid: u32 },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} is not a claim of chaos: {why} (remove it if no chaos runs)", path.display())]
    Unreadable { path: PathBuf, why: String },
}

impl ClaimError {
    fn io(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self::Io { what, path, source }
    }
}

/// The claims in one directory.
#[derive(Debug, Clone)]
pub struct Claims {
    dir: PathBuf,
}

/// A claim this process holds: released (removed) when dropped, unless abandoned.
#[derive(Debug)]
pub struct Claim {
    /// Keeps the lock.
    _file: File,
    /// Where it is linked; `None` once abandoned.
    path: Option<PathBuf>,
}

impl Claim {
    /// Keep the claim but stop holding it: for a create whose clean-up failed, so that
    /// what it left is an orphan, found and retried by `chaos destroy --orphans` (also
    /// while this process, a chaos daemon say, still runs).
    pub fn abandon(mut self) {
        self.path = None;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Removed while still locked: no one else can have replaced it meanwhile.
        if let Some(path) = self.path.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// A claim in the directory, as a look finds it.
#[derive(Debug)]
pub struct Found {
    pub path: PathBuf,
    pub record: Result<Record, ClaimError>,
    /// Its creator still runs.
    pub alive: bool,
}

/// A claim whose creator is gone, locked by this process to deal with its domain.
#[derive(Debug)]
pub struct Dead {
    file: File,
    path: PathBuf,
    pub record: Record,
}

impl Dead {
    /// Remove the claim (its domain and devices are gone).
    pub fn remove(self) -> Result<(), ClaimError> {
        remove_locked(&self.path, &self.file)
    }
}

/// A claim as a sweep finds it.
#[derive(Debug)]
pub enum Swept {
    /// Its creator runs: not to be touched.
    Alive(Found),
    /// Its creator is gone; locked now.
    Dead(Dead),
    /// Unreadable, or gone while looked at (then nothing to do).
    Problem(ClaimError),
}

impl Claims {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Where the claim on `name` is.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{SUFFIX}"))
    }

    /// Claim `record.name` for this process. A claim already there stops it, unless its
    /// creator is gone and `domain_of` (a handle → the domain with it, if any) finds no
    /// domain of it: then the stale claim is replaced.
    pub fn take<E: From<ClaimError>>(
        &self,
        record: &Record,
        mut domain_of: impl FnMut(&Uuid) -> Result<Option<u32>, E>,
    ) -> Result<Claim, E> {
        let file = self.anonymous()?;
        if !lock(&file, &self.dir)? {
            // No one else can have opened an unnamed file.
            return Err(ClaimError::Io {
                what: "cannot lock a new claim in",
                path: self.dir.clone(),
                source: io::Error::from(io::ErrorKind::WouldBlock),
            }
            .into());
        }
        let text = serde_json::to_string(record).expect("a claim serializes");
        (&file)
            .write_all(text.as_bytes())
            .map_err(ClaimError::io("cannot write a claim in", &self.dir))?;
        let path = self.path(&record.name);
        // A claim found stale is replaced; a second stale one in a row means others
        // race for it too: a precise error is better than a loop.
        for _ in 0..3 {
            match link(&file, &path) {
                Ok(()) => {
                    return Ok(Claim {
                        _file: file,
                        path: Some(path),
                    });
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(ClaimError::io("cannot link the claim", &path)(err).into()),
            }
            let Some(existing) = lock_existing(&path)? else {
                continue;
            };
            match existing {
                Swept::Alive(found) => {
                    let pid = found.record.map_or(0, |record| record.pid);
                    return Err(ClaimError::Taken {
                        name: record.name.clone(),
                        pid,
                        path,
                    }
                    .into());
                }
                Swept::Problem(err) => return Err(err.into()),
                Swept::Dead(dead) => {
                    let Some(handle) = dead.record.handle() else {
                        return Err(ClaimError::Unreadable {
                            path,
                            why: format!("{:?} is not a UUID", dead.record.uuid),
                        }
                        .into());
                    };
                    if let Some(domid) = domain_of(&handle)? {
                        return Err(ClaimError::Orphaned {
                            name: record.name.clone(),
                            domid,
                            pid: dead.record.pid,
                        }
                        .into());
                    }
                    dead.remove()?;
                }
            }
        }
        Err(ClaimError::Io {
            what: "cannot claim",
            path,
            source: io::Error::other("others keep claiming the name; try again"),
        }
        .into())
    }

    /// An unnamed file in the directory (made if missing), for a new claim.
    fn anonymous(&self) -> Result<File, ClaimError> {
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_TMPFILE)
                .open(&self.dir)
        };
        match open() {
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&self.dir)
                    .map_err(ClaimError::io("cannot create", &self.dir))?;
                open()
            }
            other => other,
        }
        .map_err(ClaimError::io(
            "cannot make a claim (an O_TMPFILE file) in",
            &self.dir,
        ))
    }

    /// The claim files, by name; no directory, none.
    fn paths(&self) -> Result<Vec<PathBuf>, ClaimError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(ClaimError::io("cannot read", &self.dir)(err)),
        };
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(ClaimError::io("cannot read", &self.dir))?;
            if entry.file_name().as_bytes().ends_with(SUFFIX.as_bytes()) {
                paths.push(entry.path());
            }
        }
        paths.sort();
        Ok(paths)
    }

    /// Every claim, and whether its creator runs, without locking any (`chaos list`).
    pub fn list(&self) -> Result<Vec<Found>, ClaimError> {
        let mut found = Vec::new();
        for path in self.paths()? {
            let mut file = match File::open(&path) {
                Ok(file) => file,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(ClaimError::io("cannot open", &path)(err)),
            };
            let alive = locked_by_another(&file, &path)?;
            let record = read(&mut file, &path);
            found.push(Found {
                path,
                record,
                alive,
            });
        }
        Ok(found)
    }

    /// Every claim, the dead ones locked for this process to deal with (`chaos destroy
    /// --orphans`).
    pub fn sweep(&self) -> Result<Vec<Swept>, ClaimError> {
        let mut swept = Vec::new();
        for path in self.paths()? {
            match lock_existing(&path) {
                Ok(Some(found)) => swept.push(found),
                Ok(None) => {}
                Err(err) => swept.push(Swept::Problem(err)),
            }
        }
        Ok(swept)
    }
}

/// The claim at `path`, locked if its creator is gone; `None` if it went meanwhile.
fn lock_existing(path: &Path) -> Result<Option<Swept>, ClaimError> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(ClaimError::io("cannot open", path)(err)),
    };
    if !lock(&file, path)? {
        let record = read(&mut file, path);
        return Ok(Some(Swept::Alive(Found {
            path: path.to_owned(),
            record,
            alive: true,
        })));
    }
    // Locked; but the name may have been given to a new claim since it was opened (a
    // sweeper or a create removed this one, then a create linked its own).
    if !same_file(&file, path)? {
        return Ok(None);
    }
    Ok(Some(match read(&mut file, path) {
        Ok(record) => Swept::Dead(Dead {
            file,
            path: path.to_owned(),
            record,
        }),
        Err(err) => Swept::Problem(err),
    }))
}

/// Whether `path` still names `file`.
fn same_file(file: &File, path: &Path) -> Result<bool, ClaimError> {
    let held = file
        .metadata()
        .map_err(ClaimError::io("cannot look at", path))?;
    Ok(match fs::metadata(path) {
        Ok(named) => named.dev() == held.dev() && named.ino() == held.ino(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => false,
        Err(err) => return Err(ClaimError::io("cannot look at", path)(err)),
    })
}

/// Remove the claim at `path`, `file` being it, locked by this process.
fn remove_locked(path: &Path, file: &File) -> Result<(), ClaimError> {
    if !same_file(file, path)? {
        return Ok(());
    }
    fs::remove_file(path).map_err(ClaimError::io("cannot remove", path))
}

/// At most this much of a claim is read: a record is far smaller.
const MAX_RECORD: u64 = 4096;

fn read(file: &mut File, path: &Path) -> Result<Record, ClaimError> {
    let unreadable = |why: String| ClaimError::Unreadable {
        path: path.to_owned(),
        why,
    };
    let mut text = String::new();
    file.take(MAX_RECORD)
        .read_to_string(&mut text)
        .map_err(|err| unreadable(err.to_string()))?;
    parse(&text, path).map_err(unreadable)
}

/// A claim's text, checked: a record whose name is the file's.
pub fn parse(text: &str, path: &Path) -> Result<Record, String> {
    let record: Record = serde_json::from_str(text).map_err(|err| err.to_string())?;
    let file_name = path.file_name().map(|name| name.as_bytes()).unwrap_or(b"");
    if file_name != format!("{}{SUFFIX}", record.name).as_bytes() {
        return Err(format!("it claims the name {:?}", record.name));
    }
    if record.handle().is_none() {
        return Err(format!("its uuid {:?} is not a UUID", record.uuid));
    }
    Ok(record)
}

/// The whole-file lock request of a claim's creator (or sweeper).
fn write_lock() -> libc::flock {
    libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        // OFD locks require 0.
        l_pid: 0,
    }
}

/// Lock `file` for this process (its open file description): false if another holds
/// it.
fn lock(file: &File, path: &Path) -> Result<bool, ClaimError> {
    let request = write_lock();
    // SAFETY: fcntl on a descriptor we own, with a valid flock structure that lives
    // for the call.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &raw const request) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN | libc::EACCES) => Ok(false),
        _ => Err(ClaimError::io("cannot lock", path)(err)),
    }
}

/// Whether another open file description holds a lock on `file`, without locking.
fn locked_by_another(file: &File, path: &Path) -> Result<bool, ClaimError> {
    let mut request = write_lock();
    // SAFETY: fcntl on a descriptor we own, with a valid flock structure it may write,
    // which lives for the call.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &raw mut request) } != 0 {
        return Err(ClaimError::io("cannot look at the lock of", path)(
            io::Error::last_os_error(),
        ));
    }
    Ok(request.l_type != libc::F_UNLCK as libc::c_short)
}

/// Give the unnamed `file` the name `path`; fails with `AlreadyExists` if it is taken.
fn link(file: &File, path: &Path) -> io::Result<()> {
    let from = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .expect("no NUL in a number");
    let to = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: two NUL-terminated paths that live for the call.
    let linked = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if linked == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("chaos-claims-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn record(name: &str) -> Record {
        Record {
            name: name.to_owned(),
            uuid: "01234567-89ab-4def-8123-456789abcdef".to_owned(),
            dev_method: DevMethod::Noxs,
            pid: std::process::id(),
        }
    }

    fn no_domain(_: &Uuid) -> Result<Option<u32>, ClaimError> {
        Ok(None)
    }

    /// A claim as a process that died left it: written and linked, locked by no one.
    fn left_by_the_dead(claims: &Claims, record: &Record) {
        fs::create_dir_all(&claims.dir).unwrap();
        fs::write(
            claims.path(&record.name),
            serde_json::to_string(record).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn one_claim_per_name_released_on_drop() {
        let claims = Claims::new(dir("one"));
        let held = claims.take(&record("daytime"), no_domain).unwrap();
        let err = claims
            .take(&record("daytime"), no_domain)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("a domain named \"daytime\" is being created by chaos pid "),
            "{err}"
        );
        // Another name is free; "." and ".." are names like others.
        let other = claims.take(&record(".."), no_domain).unwrap();
        let listed = claims.list().unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|found| found.alive));
        assert_eq!(listed[1].record.as_ref().unwrap().name, "daytime");
        drop(held);
        drop(other);
        assert!(claims.list().unwrap().is_empty());
        claims.take(&record("daytime"), no_domain).unwrap();
        fs::remove_dir_all(&claims.dir).unwrap();
    }

    #[test]
    fn a_dead_claim_is_an_orphan_while_its_domain_is_there() {
        let claims = Claims::new(dir("dead"));
        left_by_the_dead(&claims, &record("noop"));
        let listed = claims.list().unwrap();
        assert!(!listed[0].alive);
        let orphan = |_: &Uuid| Ok::<_, ClaimError>(Some(7));
        let err = claims
            .take(&record("noop"), orphan)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("\"noop\" is the name of domain 7, which chaos pid "),
            "{err}"
        );
        // Its domain gone, the claim is stale: a create takes it over.
        let held = claims.take(&record("noop"), no_domain).unwrap();
        assert!(claims.list().unwrap()[0].alive);
        drop(held);
        fs::remove_dir_all(&claims.dir).unwrap();
    }

    #[test]
    fn sweeps_lock_the_dead_and_leave_the_living() {
        let claims = Claims::new(dir("sweep"));
        left_by_the_dead(&claims, &record("dead"));
        let _alive = claims.take(&record("alive"), no_domain).unwrap();
        fs::write(claims.path("junk"), "{\"name\": \"junk\"}").unwrap();
        let swept = claims.sweep().unwrap();
        assert_eq!(swept.len(), 3);
        let Swept::Alive(alive) = &swept[0] else {
            panic!("{:?}", swept[0])
        };
        assert_eq!(alive.record.as_ref().unwrap().name, "alive");
        let Swept::Dead(dead) = &swept[1] else {
            panic!("{:?}", swept[1])
        };
        assert_eq!(dead.record, record("dead"));
        // Locked by the sweep: a create of its name must wait, so to speak.
        let err = claims
            .take(&record("dead"), no_domain)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is being created by chaos pid"), "{err}");
        let Swept::Problem(problem) = &swept[2] else {
            panic!("{:?}", swept[2])
        };
        assert!(
            problem.to_string().contains("junk.claim is not a claim"),
            "{problem}"
        );
        let mut swept = swept;
        let Swept::Dead(dead) = swept.remove(1) else {
            unreachable!()
        };
        dead.remove().unwrap();
        assert!(!claims.path("dead").exists());
        fs::remove_dir_all(&claims.dir).unwrap();
    }

    #[test]
    fn an_abandoned_claim_stays_as_an_orphan() {
        let claims = Claims::new(dir("abandon"));
        claims.take(&record("leaky"), no_domain).unwrap().abandon();
        let listed = claims.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert!(!listed[0].alive);
        fs::remove_dir_all(&claims.dir).unwrap();
    }

    #[test]
    fn records_must_match_their_file() {
        let path = Path::new("/run/chaos/creating/a.claim");
        let text = serde_json::to_string(&record("b")).unwrap();
        assert_eq!(parse(&text, path).unwrap_err(), "it claims the name \"b\"");
        let text = serde_json::to_string(&record("a")).unwrap();
        assert_eq!(parse(&text, path).unwrap(), record("a"));
        let bad = text.replace("01234567-", "0123456-");
        assert!(parse(&bad, path).unwrap_err().contains("is not a UUID"));
    }
}
