//! The Xen ELF notes of a PV guest image (`xen/include/public/elfnote.h`), checked the
//! way Xen's loader reads them. `cargo xtask test` runs this on every built app.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

use crate::elf::Elf;

/// `XEN_ELFNOTE_*` types and names.
const NOTES: [(u32, &str); 10] = [
    (1, "ENTRY"),
    (2, "HYPERCALL_PAGE"),
    (3, "VIRT_BASE"),
    (4, "PADDR_OFFSET"),
    (5, "XEN_VERSION"),
    (6, "GUEST_OS"),
    (7, "GUEST_VERSION"),
    (8, "LOADER"),
    (9, "PAE_MODE"),
    (10, "FEATURES"),
];

/// Check that `image` carries every note a 64-bit PV guest needs, with sane values.
/// Returns the notes as `NAME=value` strings, for a report.
pub fn check(image: &Path) -> Result<Vec<String>> {
    let data = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let elf = Elf::parse(&data).with_context(|| format!("{}", image.display()))?;
    let notes = elf.notes()?;
    let find = |kind: u32| {
        notes
            .iter()
            .find(|(owner, k, _)| *owner == "Xen" && *k == kind)
            .map(|(_, _, desc)| *desc)
    };
    let text = |kind: u32| -> Result<String> {
        let desc = find(kind).with_context(|| format!("no XEN_ELFNOTE_{}", name(kind)))?;
        let end = desc.iter().position(|&b| b == 0).unwrap_or(desc.len());
        Ok(String::from_utf8_lossy(&desc[..end]).into_owned())
    };
    let address = |kind: u32| -> Result<u64> {
        let desc = find(kind).with_context(|| format!("no XEN_ELFNOTE_{}", name(kind)))?;
        let bytes: [u8; 8] = desc
            .try_into()
            .with_context(|| format!("XEN_ELFNOTE_{} is not 8 bytes", name(kind)))?;
        Ok(u64::from_le_bytes(bytes))
    };

    let mut report = Vec::new();
    for (kind, name) in NOTES {
        let value = match kind {
            1..=4 => format!("{:#x}", address(kind)?),
            _ => text(kind)?,
        };
        report.push(format!("{name}={value}"));
    }
    ensure!(
        address(1)? == elf.entry(),
        "XEN_ELFNOTE_ENTRY differs from the ELF entry point"
    );
    ensure!(
        address(2)? % 4096 == 0,
        "the hypercall page is not page aligned"
    );
    ensure!(
        address(3)? == address(4)?,
        "VIRT_BASE and PADDR_OFFSET differ: the image would load at the wrong place"
    );
    for (kind, expected) in [(5, "xen-3.0"), (8, "generic"), (9, "yes")] {
        let value = text(kind)?;
        if value != expected {
            bail!("XEN_ELFNOTE_{} is {value:?}, not {expected:?}", name(kind));
        }
    }
    Ok(report)
}

fn name(kind: u32) -> &'static str {
    NOTES
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or("?", |(_, n)| n)
}
