//! Virtual disk names (`xvda`, `xvdb3`, `hda`, `sdb`, `d0p1`) and the device numbers
//! Xenstore uses for them, as libxl computes them (`libxl__device_disk_dev_number` in
//! `tools/libs/light/libxl_device.c`, Xen 4.17).

use std::fmt;

/// A virtual disk: its name as configured and its Xen device number (the frontend's
/// directory under `device/vbd/` and its `virtual-device`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vdev {
    name: String,
    number: u32,
}

impl Vdev {
    /// Parse a disk name; the error says what the name should look like.
    pub fn parse(name: &str) -> Result<Self, String> {
        number(name)
            .map(|number| Self {
                name: name.to_owned(),
                number,
            })
            .ok_or_else(|| {
                format!(
                    "{name:?} is not a virtual disk name (xvda…xvdz, xvdaa…, with an optional \
                     partition number like xvda1; also hda…hdd, sda…sdp, d0p0)"
                )
            })
    }

    /// The name as configured (`xvda`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device number (`51712` for `xvda`).
    pub fn number(&self) -> u32 {
        self.number
    }
}

impl fmt::Display for Vdev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// `PREFIX` + letters (base-26 "bijective" numbering: a=0, z=25, aa=26) + an optional
/// partition without leading zeros, both bounded.
fn letters_and_partition(
    name: &str,
    prefix: &str,
    max_disk: u32,
    max_partition: u32,
) -> Option<(u32, u32)> {
    let rest = name.strip_prefix(prefix)?;
    let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
    if letters == 0 {
        return None;
    }
    let mut disk: i64 = -1;
    for c in rest[..letters].bytes() {
        disk = (disk + 1) * 26 + i64::from(c - b'a');
        if disk > i64::from(max_disk) {
            return None;
        }
    }
    let partition = &rest[letters..];
    let partition = if partition.is_empty() {
        0
    } else {
        if partition.starts_with('0') || !partition.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let value: u32 = partition.parse().ok()?;
        if value > max_partition {
            return None;
        }
        value
    };
    Some((u32::try_from(disk).ok()?, partition))
}

/// The number libxl gives a disk name, or `None` if libxl would refuse it. (libxl also
/// takes a bare number; chaos does not: a name says what the guest will see.)
fn number(name: &str) -> Option<u32> {
    let xvd = |disk: u32, partition: u32| {
        if disk <= 15 && partition <= 15 {
            (202 << 8) | (disk << 4) | partition
        } else {
            (1 << 28) | (disk << 8) | partition
        }
    };
    if let Some(rest) = name.strip_prefix('d')
        && let Some((disk, partition)) = rest.split_once('p')
    {
        let plain = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        if plain(disk) && plain(partition) {
            let disk: u32 = disk.parse().ok()?;
            let partition: u32 = partition.parse().ok()?;
            return (disk < (1 << 20) && partition < 256).then(|| xvd(disk, partition));
        }
        return None;
    }
    if let Some((disk, partition)) = letters_and_partition(name, "xvd", (1 << 20) - 1, 255) {
        return Some(xvd(disk, partition));
    }
    if let Some((disk, partition)) = letters_and_partition(name, "hd", 3, 63) {
        let major = if disk < 2 { 3 } else { 22 };
        return Some((major << 8) | ((disk & 1) << 6) | partition);
    }
    if let Some((disk, partition)) = letters_and_partition(name, "sd", 15, 15) {
        return Some((8 << 8) | (disk << 4) | partition);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_libxl() {
        for (name, number) in [
            ("xvda", 51712),
            ("xvdb", 51728),
            ("xvda1", 51713),
            ("xvdp15", 51967),
            // Past 16 disks or 15 partitions: the extended numbering.
            ("xvdq", (1 << 28) | (16 << 8)),
            ("xvda16", (1 << 28) | 16),
            ("xvdaa", (1 << 28) | (26 << 8)),
            ("d0p0", 51712),
            ("d1p2", 51730),
            ("hda", 768),
            ("hdb", 832),
            ("hdc", 5632),
            ("sda", 2048),
            ("sdb1", 2065),
        ] {
            assert_eq!(Vdev::parse(name).unwrap().number(), number, "{name}");
        }
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in [
            "",
            "xvd",
            "xvd1",
            "xvda0",
            "xvda01",
            "xvdA",
            "xvda1x",
            "vda",
            "hde",
            "sdq",
            "d0",
            "dxp1",
            "d0p256",
            "xvda256",
            "51712",
            "/dev/xvda",
        ] {
            let err = Vdev::parse(bad).unwrap_err();
            assert!(err.contains("is not a virtual disk name"), "{bad}: {err}");
        }
    }
}
