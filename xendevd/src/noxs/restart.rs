//! Restart without loss (NoXS v1.1, `xenproto::noxs::reoffer`).
//!
//! Whatever ends xendevd (SIGTERM, SIGKILL, a panic, the OOM killer), the kernel takes
//! its control pages (gntalloc), ring mappings and ports with it; the guests' ports
//! bound to it go back to "unbound for dom0", their grants stay. What survives on
//! purpose: each served domain's [`Record`] in the state directory (written when the
//! domain is served, removed when it is released) and its vifs' taps (persistent, still
//! on their bridges). A new xendevd takes each recorded domain back: it checks that Xen
//! still has it (the same handle, so a domid given to another domain is not taken),
//! serves it again from its record — console (its port bound again, its log appended
//! to), taps taken over, disks opened and booked again, new control pages — and offers
//! the devices again through the guest's start_info page ([`reoffer`]). The guest does
//! the handshake again with the same ring pages, started afresh with what was not
//! answered queued again: a disk's requests in flight are served, not lost.
//!
//! A stopping xendevd therefore leaves its guests as they are; a domain that ended
//! meanwhile is cleaned up by the next one (its taps, its record).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, SystemTime};

use log::{info, warn};
use serde::{Deserialize, Serialize};
use xenhost::evtchn::Port;
use xenproto::noxs::{self, BLOCK_OFFSET, Block, Kind, reoffer};

use super::{Backends, tap::Tap};
use crate::api::NoxsDevice;

/// What a domain needs to be served again: its `noxs_create` (or `noxs_fill`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub domid: u32,
    /// Xen's handle of the domain, in hex: a domid Xen gave to another domain since is
    /// not this one.
    pub handle: String,
    pub name: String,
    pub console_port: u32,
    pub created_ms: u64,
    pub devices: Vec<NoxsDevice>,
    /// Each vbd's image as opened at creation: `(devid, st_dev, st_ino)`, so that a
    /// file put in its place meanwhile is not given to the guest.
    pub images: Vec<(u32, u64, u64)>,
}

impl Record {
    pub fn handle_of(handle: &[u8; 16]) -> String {
        handle.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// The recorded identity of vbd `devid`'s image.
    pub fn image(&self, devid: u32) -> Option<(u64, u64)> {
        self.images
            .iter()
            .find(|(id, _, _)| *id == devid)
            .map(|&(_, dev, ino)| (dev, ino))
    }

    pub fn created(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.created_ms)
    }

    /// The taps its vifs have: `vifD.N`, as `request::check` names them.
    pub fn taps(&self) -> impl Iterator<Item = String> + '_ {
        self.devices.iter().filter_map(|device| match device {
            NoxsDevice::Vif { devid, .. } => Some(format!("vif{}.{devid}", self.domid)),
            NoxsDevice::Sysctl | NoxsDevice::Vbd { .. } => None,
        })
    }
}

/// The directory of records, one file per domain (`DOMID.json`): writing one at 1000
/// guests costs what it costs at one.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// The directory, made (mode 0700) if missing.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, domid: u32) -> PathBuf {
        self.dir.join(format!("{domid}.json"))
    }

    /// Write `record` whole or not at all (a temporary file renamed over it).
    pub fn save(&self, record: &Record) -> io::Result<()> {
        let path = self.path(record.domid);
        let temporary = path.with_extension("json.new");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&temporary)?;
        file.write_all(&serde_json::to_vec(record).map_err(io::Error::other)?)?;
        fs::rename(&temporary, &path)
    }

    pub fn remove(&self, domid: u32) {
        match fs::remove_file(self.path(domid)) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                warn!("cannot remove {}: {err}", self.path(domid).display());
            }
            _ => {}
        }
    }

    /// Every record, in domid order; a file that is no record is named with why.
    pub fn load(&self) -> Vec<Result<Record, String>> {
        let mut found: Vec<(u32, PathBuf)> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let path = entry.path();
                let domid = path
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()?;
                Some((domid, path))
            })
            .collect();
        found.sort();
        found
            .into_iter()
            .map(|(domid, path)| {
                let text = fs::read(&path).map_err(|err| format!("{}: {err}", path.display()))?;
                let record: Record = serde_json::from_slice(&text)
                    .map_err(|err| format!("{}: {err}", path.display()))?;
                if record.domid != domid {
                    return Err(format!(
                        "{}: the record is domain {}'s",
                        path.display(),
                        record.domid
                    ));
                }
                Ok(record)
            })
            .collect()
    }
}

/// Why a domain's devices could not be offered again.
#[derive(Debug, thiserror::Error)]
pub enum ReofferError {
    #[error(
        "its start_info page is not granted at reference {gref} ({source}): a NoXS v1 guest, \
         whose devices cannot reconnect"
    )]
    NoGrant { gref: u32, source: xenhost::Error },
    #[error("its NoXS block: {0}")]
    Block(noxs::NoxsError),
    #[error("its NoXS block is gone (no magic)")]
    NoBlock,
    #[error("it gave no re-offer port (a NoXS v1 guest, whose devices cannot reconnect)")]
    NoPort,
    #[error("binding its re-offer port {port}: {source}")]
    Bind { port: u32, source: xenhost::Error },
}

/// The new control pages, `(kind, devid) → (gref, port)`, written into the guest's
/// block copy `block`: the block with the generation after `block`'s.
pub fn rewritten(block: &Block, offers: &[(Kind, u32, u32, u32)]) -> Block {
    let mut next = block.clone();
    for entry in &mut next.entries {
        if let Some(&(_, _, gref, port)) = offers
            .iter()
            .find(|(kind, devid, _, _)| *kind == entry.kind && *devid == entry.devid)
        {
            entry.ctrl_gref = gref;
            entry.ctrl_port = port;
        }
    }
    next.generation = block.generation.wrapping_add(1);
    next
}

impl Backends {
    /// Take back every domain an xendevd before this one served; clean up after those
    /// that ended meanwhile.
    pub fn take_back_all(&mut self) {
        let Some(state) = &self.state else {
            return;
        };
        for loaded in state.load() {
            match loaded {
                Ok(record) => self.take_back(record),
                Err(why) => warn!("NoXS state: {why}: ignored"),
            }
        }
    }

    fn take_back(&mut self, record: Record) {
        let domid = record.domid;
        let alive = match self.xc.domain_info(domid) {
            Ok(Some(info)) if !info.dying && Record::handle_of(&info.handle) == record.handle => {
                Ok(())
            }
            Ok(Some(info)) if info.dying => Err("it is dying"),
            Ok(Some(_)) => Err("its domid is another domain's now"),
            Ok(None) => Err("it is gone"),
            Err(err) => {
                warn!(
                    "NoXS domain {domid} ({}): listing domains: {err}",
                    record.name
                );
                return;
            }
        };
        if let Err(why) = alive {
            self.forget(&record, why);
            return;
        }
        let started = std::time::Instant::now();
        if let Err(err) = self.serve_again(&record) {
            warn!(
                "NoXS domain {domid} ({}): cannot serve it again: {err}; it runs on without \
                 back ends",
                record.name
            );
            self.forget(&record, "cannot be served again");
            return;
        }
        if let Some(domain) = self.domains.get_mut(&domid) {
            domain.created = record.created();
        }
        match self.reoffer(domid) {
            Ok(generation) => info!(
                "NoXS domain {domid} ({}) taken back in {:.1} ms: devices offered again \
                 (generation {generation})",
                record.name,
                started.elapsed().as_secs_f64() * 1e3
            ),
            Err(err) => warn!(
                "NoXS domain {domid} ({}) taken back (console), but its devices cannot be \
                 offered again: {err}",
                record.name
            ),
        }
    }

    /// A recorded domain this xendevd will not serve (it ended while no xendevd ran, or
    /// cannot be served again): remove its taps and its record.
    fn forget(&self, record: &Record, why: &str) {
        let removed: Vec<String> = record
            .taps()
            .filter(|tap| match Tap::remove_left(tap) {
                Ok(removed) => removed,
                Err(err) => {
                    warn!("cannot remove tap {tap}: {err}");
                    false
                }
            })
            .collect();
        info!(
            "NoXS domain {} ({}) was served by an xendevd before this one and {why}: \
             forgotten; taps removed: {}",
            record.domid,
            record.name,
            if removed.is_empty() {
                "none".to_owned()
            } else {
                removed.join(", ")
            }
        );
        if let Some(state) = &self.state {
            state.remove(record.domid);
        }
    }

    /// Offer domain `domid`'s devices again through its start_info page: their new
    /// control pages into the block, the generation bumped, the guest told. Returns
    /// the new generation.
    pub(super) fn reoffer(&mut self, domid: u32) -> Result<u32, ReofferError> {
        let page = self
            .gnttab
            .map(domid, &[reoffer::BLOCK_GREF], true)
            .map_err(|source| ReofferError::NoGrant {
                gref: reoffer::BLOCK_GREF,
                source,
            })?;
        let base = std::ptr::NonNull::new(page.as_ptr()).expect("a mapped page");
        // SAFETY: the mapping is one page, alive until `page` drops at the end of this
        // function; the guest may write it meanwhile, so only volatile copies touch it.
        let shared = unsafe { xenproto::shared::SharedBytes::new(base, noxs::PAGE_SIZE) };
        let mut copy = vec![0u8; noxs::PAGE_SIZE - BLOCK_OFFSET];
        shared.copy_out(BLOCK_OFFSET, &mut copy);
        let block = Block::decode(&copy)
            .map_err(ReofferError::Block)?
            .ok_or(ReofferError::NoBlock)?;
        let port = Block::reoffer_port(&copy)
            .map_err(ReofferError::Block)?
            .ok_or(ReofferError::NoPort)?;
        let domain = self.domains.get_mut(&domid).expect("served just now");
        let offers: Vec<(Kind, u32, u32, u32)> = domain
            .devices
            .iter()
            .map(|device| {
                let id = device.id();
                (
                    id.kind,
                    id.devid,
                    device.control.gref(),
                    device.control.port(),
                )
            })
            .collect();
        let next = rewritten(&block, &offers);
        next.encode_entries(&mut copy)
            .map_err(ReofferError::Block)?;
        // The entries, a write barrier, then the generation: a guest that sees the new
        // generation sees the new entries.
        shared.copy_in(
            BLOCK_OFFSET + noxs::COUNT,
            &copy[noxs::COUNT..noxs::ENTRIES],
        );
        shared.copy_in(
            BLOCK_OFFSET + noxs::ENTRIES,
            &copy[noxs::ENTRIES..noxs::BLOCK_LEN],
        );
        fence(Ordering::Release);
        shared.write_u32(BLOCK_OFFSET + reoffer::GENERATION, next.generation);
        fence(Ordering::SeqCst);
        let bound: Port = self
            .evtchn
            .bind_interdomain(domid, port)
            .map_err(|source| ReofferError::Bind { port, source })?;
        let _ = bound.notify();
        domain.reoffer = Some(bound);
        Ok(next.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(domid: u32) -> Record {
        Record {
            domid,
            handle: Record::handle_of(&[0xab; 16]),
            name: "daytime".into(),
            console_port: 2,
            created_ms: 1_700_000_000_123,
            devices: vec![
                NoxsDevice::Sysctl,
                NoxsDevice::Vif {
                    devid: 0,
                    mac: "00:16:3e:00:00:01".parse().unwrap(),
                    bridge: "xenbr0".into(),
                    ip: None,
                    prefix_len: None,
                    gateway: None,
                },
                NoxsDevice::Vbd {
                    devid: 0,
                    target: "/tmp/disk.img".into(),
                    readonly: false,
                },
            ],
            images: vec![(0, 0x803, 12)],
        }
    }

    #[test]
    fn records_survive_a_round_trip_and_odd_files_are_named() {
        let dir = std::env::temp_dir().join(format!("xendevd-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let state = StateDir::open(&dir).unwrap();
        state.save(&record(7)).unwrap();
        state.save(&record(12)).unwrap();
        fs::write(dir.join("9.json"), b"{").unwrap();
        fs::write(dir.join("3.json"), serde_json::to_vec(&record(4)).unwrap()).unwrap();
        fs::write(dir.join("notes.txt"), b"not a record").unwrap();
        let loaded = state.load();
        assert_eq!(loaded.len(), 4, "{loaded:?}");
        assert!(loaded[0].as_ref().unwrap_err().contains("domain 4's"));
        assert_eq!(loaded[1].as_ref().unwrap(), &record(7));
        assert!(loaded[2].as_ref().unwrap_err().contains("9.json"));
        assert_eq!(loaded[3].as_ref().unwrap(), &record(12));
        state.remove(7);
        state.remove(7);
        assert_eq!(state.load().len(), 3);
        assert_eq!(record(7).taps().collect::<Vec<_>>(), ["vif7.0"]);
        assert_eq!(
            record(7)
                .created()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
            1_700_000_000_123
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_reoffer_changes_only_the_offered_entries_and_the_generation() {
        let entry = |kind, devid, gref, port| noxs::Entry {
            kind,
            backend: 0,
            devid,
            ctrl_gref: gref,
            ctrl_port: port,
        };
        let block = Block {
            entries: vec![entry(Kind::Sysctl, 0, 8, 5), entry(Kind::Vif, 0, 9, 6)],
            generation: u32::MAX,
        };
        let next = rewritten(&block, &[(Kind::Vif, 0, 30, 40), (Kind::Vbd, 0, 1, 1)]);
        assert_eq!(next.generation, 0);
        assert_eq!(next.entries[0], block.entries[0]);
        assert_eq!(next.entries[1], entry(Kind::Vif, 0, 30, 40));
    }
}
