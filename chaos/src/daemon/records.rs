//! The records of the daemon's shells: one small JSON file per shell in
//! `RUN_DIR/shells/`, named by its domain id, written as soon as the domain exists and
//! removed once it is destroyed or has become a guest. They make shells recognisable
//! to the other commands (`chaos list` leaves them out) and let a daemon that was
//! killed have its shells destroyed later: at its next start, or by `chaos destroy
//! --orphans`. A record keeps the domain's handle, so a domain id Xen has given to
//! another domain since is never taken for the shell.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::DevMethod;

/// What destroying a shell takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub domid: u32,
    /// The domain's handle (UUID), as `chaos::uuid::Uuid` prints it.
    pub uuid: String,
    pub dev_method: DevMethod,
}

/// Why the records could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot write the shell record {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot remove the shell record {}: {source}", path.display())]
    Remove { path: PathBuf, source: io::Error },
    #[error("cannot read the shell records in {}: {source}", dir.display())]
    List { dir: PathBuf, source: io::Error },
    #[error("the shell record {} is not one: {why}", path.display())]
    Unreadable { path: PathBuf, why: String },
}

/// The records in one directory.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, domid: u32) -> PathBuf {
        self.dir.join(domid.to_string())
    }

    /// Record a shell (replacing an older record of its domain id). Written whole or
    /// not at all: a temporary file renamed into place.
    pub fn write(&self, record: &Record) -> Result<(), RecordError> {
        let path = self.path(record.domid);
        let failed = |source| RecordError::Write {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&self.dir).map_err(failed)?;
        let partial = self.dir.join(format!(".{}.new", record.domid));
        let text = serde_json::to_string(record).expect("a record serializes");
        fs::write(&partial, text).map_err(failed)?;
        fs::rename(&partial, &path).map_err(failed)
    }

    /// Forget shell `domid`; one not recorded is no error.
    pub fn remove(&self, domid: u32) -> Result<(), RecordError> {
        let path = self.path(domid);
        match fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                Err(RecordError::Remove { path, source: err })
            }
            _ => Ok(()),
        }
    }

    /// Every record, by domain id; a file that is not a record is an error of its own,
    /// the others still listed.
    pub fn list(&self) -> Result<Vec<Result<Record, RecordError>>, RecordError> {
        let mut records = Vec::new();
        for domid in self.domids()? {
            let path = self.path(domid);
            records.push(read(&path, domid));
        }
        Ok(records)
    }

    /// The domain ids recorded (no file read but the directory): what `chaos list`
    /// leaves out. No directory: none.
    pub fn domids(&self) -> Result<BTreeSet<u32>, RecordError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(source) => {
                return Err(RecordError::List {
                    dir: self.dir.clone(),
                    source,
                });
            }
        };
        let mut domids = BTreeSet::new();
        for entry in entries {
            let entry = entry.map_err(|source| RecordError::List {
                dir: self.dir.clone(),
                source,
            })?;
            if let Some(domid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                domids.insert(domid);
            }
        }
        Ok(domids)
    }
}

fn read(path: &Path, domid: u32) -> Result<Record, RecordError> {
    let unreadable = |why: String| RecordError::Unreadable {
        path: path.to_owned(),
        why,
    };
    let text = fs::read_to_string(path).map_err(|err| unreadable(err.to_string()))?;
    let record: Record = serde_json::from_str(&text).map_err(|err| unreadable(err.to_string()))?;
    if record.domid != domid {
        return Err(unreadable(format!(
            "it is named {domid} but records domain {}",
            record.domid
        )));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_and_go() {
        let dir = std::env::temp_dir().join(format!("chaos-records-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let records = Records::new(&dir);
        assert!(
            records.domids().unwrap().is_empty(),
            "no directory, no records"
        );
        let shell = |domid| Record {
            domid,
            uuid: format!("{domid:08}-0000-4000-8000-000000000000"),
            dev_method: DevMethod::Noxs,
        };
        records.write(&shell(7)).unwrap();
        records.write(&shell(12)).unwrap();
        records.write(&shell(7)).unwrap();
        assert_eq!(records.domids().unwrap(), BTreeSet::from([7, 12]));
        fs::write(dir.join("9"), "{\"domid\": 9}").unwrap();
        fs::write(dir.join("13"), serde_json::to_string(&shell(14)).unwrap()).unwrap();
        let listed = records.list().unwrap();
        assert_eq!(listed.len(), 4);
        assert_eq!(listed[0].as_ref().unwrap(), &shell(7));
        let err = listed[1].as_ref().unwrap_err().to_string();
        assert!(err.contains("/9 is not one: missing field"), "{err}");
        assert_eq!(listed[2].as_ref().unwrap(), &shell(12));
        let err = listed[3].as_ref().unwrap_err().to_string();
        assert!(
            err.ends_with("it is named 13 but records domain 14"),
            "{err}"
        );
        records.remove(7).unwrap();
        records.remove(7).unwrap();
        assert_eq!(records.domids().unwrap(), BTreeSet::from([9, 12, 13]));
        fs::remove_dir_all(&dir).unwrap();
    }
}
