//! Disk images for the lab cases: fresh sparse files under `target/test-disks/`, and the
//! host's checks of what blkcheck wrote into them.

use std::fs;
use std::hash::Hasher;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};

use crate::disk::SECTOR;
use crate::lab::{self, process};
use crate::util;

/// The 512 bytes apps/blkcheck writes to sector `sector` (its `sector_pattern`, in
/// apps/blkcheck/src/main.rs; the two must agree): 64 little-endian u64 words, word i
/// being `((sector << 16) | i) ^ 0xb10c_c4ec_0000_0000`.
fn blkcheck_sector(sector: u64) -> [u8; 512] {
    let mut bytes = [0u8; 512];
    for (i, word) in bytes.chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&(((sector << 16) | i as u64) ^ 0xb10c_c4ec_0000_0000).to_le_bytes());
    }
    bytes
}

/// The sectors the host reads back after blkcheck: some of each region it writes, and
/// the last one (`last`).
fn blkcheck_host_sectors(last: u64) -> [u64; 7] {
    [0, 1, 7, 8, 2048, 65535, last]
}

/// A fresh sparse image file for one case, under `target/test-disks/`, deleted on drop
/// (and by the Ctrl-C handler).
pub struct TestImage {
    dir: PathBuf,
    pub path: PathBuf,
    /// [`file_hash`] right after it was made.
    hash: u64,
}

impl TestImage {
    /// `mib` MiB, sparse; the first `filled_mib` MiB hold blkcheck's pattern (so the
    /// image is not all zeros).
    pub fn create(name: &str, mib: u64, filled_mib: u64) -> Result<Self> {
        let dir = util::target_dir()
            .join("test-disks")
            .join(format!("{name}-{}", lab::nonce()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        process::register_scratch(&dir);
        // Owned from here on, so an error below still removes the directory.
        let mut image = Self {
            path: dir.join(format!("{name}.img")),
            dir,
            hash: 0,
        };
        let file = fs::File::create(&image.path)
            .with_context(|| format!("creating {}", image.path.display()))?;
        file.set_len(mib << 20)?;
        let mut filled = Vec::with_capacity((filled_mib << 20) as usize);
        for sector in 0..(filled_mib << 20) / SECTOR {
            filled.extend_from_slice(&blkcheck_sector(sector));
        }
        std::io::Write::write_all(&mut &file, &filled)?;
        image.hash = file_hash(&image.path)?;
        Ok(image)
    }

    /// blkcheck's pattern in the sectors [`blkcheck_host_sectors`] names.
    pub fn holds_blkcheck_pattern(&self) -> Result<()> {
        let mut file = fs::File::open(&self.path)?;
        let sectors = file.metadata()?.len() / SECTOR;
        for sector in blkcheck_host_sectors(sectors - 1) {
            let mut got = [0u8; 512];
            file.seek(SeekFrom::Start(sector * SECTOR))?;
            file.read_exact(&mut got)?;
            let expected = blkcheck_sector(sector);
            if let Some(at) = (0..64).find(|&i| got[i * 8..i * 8 + 8] != expected[i * 8..i * 8 + 8])
            {
                let word = |bytes: &[u8]| {
                    u64::from_le_bytes(bytes[at * 8..at * 8 + 8].try_into().expect("8 bytes"))
                };
                bail!(
                    "{}: sector {sector}, word {at} (byte {}) is {:#018x}, expected {:#018x} (blkcheck's pattern)",
                    self.path.display(),
                    sector * SECTOR + at as u64 * 8,
                    word(&got),
                    word(&expected)
                );
            }
        }
        Ok(())
    }

    /// The file is byte for byte what it was when made (by its hash).
    pub fn unchanged(&self) -> Result<()> {
        let now = file_hash(&self.path)?;
        ensure!(
            now == self.hash,
            "{} changed while the guest ran (hash {:#018x} before, {now:#018x} after)",
            self.path.display(),
            self.hash
        );
        Ok(())
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        process::forget_scratch(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A hash of a file's bytes (SipHash of std's `DefaultHasher`, the same in one process).
fn file_hash(path: &Path) -> Result<u64> {
    let mut file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = std::hash::DefaultHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let len = file.read(&mut buf)?;
        if len == 0 {
            break;
        }
        hasher.write(&buf[..len]);
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkcheck_pattern() {
        // Word 0 of sector 1: (1 << 16) ^ 0xb10cc4ec00000000, little-endian.
        let sector = blkcheck_sector(1);
        assert_eq!(
            sector[..8],
            [0x00, 0x00, 0x01, 0x00, 0xec, 0xc4, 0x0c, 0xb1]
        );
        // Word 63 of sector 131071: (131071 << 16 | 63) ^ magic.
        let last = blkcheck_sector(131_071);
        assert_eq!(
            u64::from_le_bytes(last[504..].try_into().unwrap()),
            0xb10c_c4ed_ffff_003f
        );
        assert_ne!(blkcheck_sector(7), blkcheck_sector(8));
    }

    /// The host checks on real files: a written pattern passes, a zero sector or a
    /// changed byte fails with where it is.
    #[test]
    fn image_checks() {
        let image = TestImage::create("unit-image-checks", 64, 0).unwrap();
        let err = image.holds_blkcheck_pattern().unwrap_err().to_string();
        assert!(
            err.contains("sector 0, word 0 (byte 0) is 0x0000000000000000"),
            "{err}"
        );
        image.unchanged().unwrap();
        {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .open(&image.path)
                .unwrap();
            for sector in blkcheck_host_sectors(131_071) {
                file.seek(SeekFrom::Start(sector * SECTOR)).unwrap();
                std::io::Write::write_all(&mut file, &blkcheck_sector(sector)).unwrap();
            }
        }
        image.holds_blkcheck_pattern().unwrap();
        let err = image.unchanged().unwrap_err().to_string();
        assert!(err.contains("changed while the guest ran"), "{err}");
        {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .open(&image.path)
                .unwrap();
            file.seek(SeekFrom::Start(65535 * SECTOR + 100)).unwrap();
            std::io::Write::write_all(&mut file, &[0xff]).unwrap();
        }
        let err = image.holds_blkcheck_pattern().unwrap_err().to_string();
        assert!(
            err.contains("sector 65535, word 12 (byte 33554016)"),
            "{err}"
        );
        let dir = image.dir.clone();
        drop(image);
        assert!(!dir.exists());

        let filled = TestImage::create("unit-image-filled", 2, 1).unwrap();
        let mut first = [0u8; 512];
        fs::File::open(&filled.path)
            .unwrap()
            .read_exact(&mut first)
            .unwrap();
        assert_eq!(first, blkcheck_sector(0));
    }
}
