//! Is a kernel image something Xen's PV builder will load? The checks libxc makes
//! (`elf_xen_note_check`, `tools/libs/guest/xg_dom_elfloader.c`), made up front so a
//! bad kernel is a configuration error, not a half-built domain: an ELF file (32- or
//! 64-bit, little-endian) with Xen's ELF notes (`xen/include/public/elfnote.h`) that
//! say "xen-3.0" and the "generic" loader (or a Linux guest), or the legacy
//! `__xen_guest` section. Compressed images (a Linux bzImage, gzip) are left to libxc,
//! which unpacks them first.
//!
//! Only the headers and the note segments are read, not the whole image.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// `XEN_ELFNOTE_XEN_VERSION`, `XEN_ELFNOTE_GUEST_OS`, `XEN_ELFNOTE_LOADER`.
const XEN_VERSION: u32 = 5;
const GUEST_OS: u32 = 6;
const LOADER: u32 = 8;

/// What kind of kernel image a file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelKind {
    /// An ELF image with Xen PV notes; `notes` are their types.
    XenElf { notes: Vec<u32> },
    /// An ELF image with the pre-3.0 `__xen_guest` section.
    LegacyXenElf,
    /// Compressed (bzImage, gzip, xz, zstd, lz4): libxc unpacks and checks it.
    Compressed(&'static str),
}

/// Check `path`; the error is a sentence about the file (without the path).
pub fn check_kernel(path: &Path) -> Result<KernelKind, String> {
    let mut file = File::open(path).map_err(|err| format!("cannot be read: {err}"))?;
    let mut head = [0u8; 0x210];
    let len = read_up_to(&mut file, &mut head).map_err(|err| format!("cannot be read: {err}"))?;
    let head = &head[..len];
    if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        return Ok(KernelKind::Compressed("a Linux bzImage"));
    }
    for (magic, what) in [
        (&[0x1f, 0x8b][..], "gzip"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0][..], "xz"),
        (&[0x28, 0xb5, 0x2f, 0xfd][..], "zstd"),
        (&[0x04, 0x22, 0x4d, 0x18][..], "lz4"),
    ] {
        if head.starts_with(magic) {
            return Ok(KernelKind::Compressed(what));
        }
    }
    if !head.starts_with(b"\x7fELF") {
        return Err("is not an ELF file (nor a compressed kernel libxc could unpack)".into());
    }
    let elf = Header::parse(head)?;
    let notes = elf.xen_notes(&mut file)?;
    if notes.is_empty() {
        if elf.has_section(&mut file, b"__xen_guest")? {
            return Ok(KernelKind::LegacyXenElf);
        }
        return Err(
            "is an ELF file without Xen's ELF notes (no PT_NOTE or note section with \
             XEN_ELFNOTE_* entries): not a Xen PV kernel"
                .into(),
        );
    }
    let text = |kind: u32| {
        notes.iter().find(|(k, _)| *k == kind).map(|(_, desc)| {
            let end = desc.iter().position(|&b| b == 0).unwrap_or(desc.len());
            String::from_utf8_lossy(&desc[..end]).into_owned()
        })
    };
    let loader = text(LOADER);
    let guest_os = text(GUEST_OS);
    if loader.as_deref() != Some("generic") && guest_os.as_deref() != Some("linux") {
        return Err(format!(
            "has Xen ELF notes, but neither XEN_ELFNOTE_LOADER \"generic\" nor \
             XEN_ELFNOTE_GUEST_OS \"linux\" (loader {loader:?}, guest OS {guest_os:?}): \
             libxc will not load it"
        ));
    }
    match text(XEN_VERSION) {
        Some(version) if version == "xen-3.0" => {}
        other => {
            return Err(format!(
                "has Xen ELF notes, but XEN_ELFNOTE_XEN_VERSION is {other:?}, not \"xen-3.0\": \
                 libxc will not load it"
            ));
        }
    }
    Ok(KernelKind::XenElf {
        notes: notes.iter().map(|(kind, _)| *kind).collect(),
    })
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..])? {
            0 => break,
            n => len += n,
        }
    }
    Ok(len)
}

fn read_at(file: &mut File, offset: u64, len: u64) -> Result<Vec<u8>, String> {
    // A kernel's notes and headers are small; refuse absurd sizes from a broken file.
    if len > 1 << 20 {
        return Err(format!(
            "is a broken ELF file (a {len}-byte header or note table)"
        ));
    }
    let mut buf = vec![0u8; len as usize];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut buf))
        .map_err(|err| format!("is a truncated ELF file ({err} at byte {offset})"))?;
    Ok(buf)
}

/// Sizes of a program header and a section header (`Elf64_Phdr`, `Elf64_Shdr`,
/// `Elf32_Phdr`, `Elf32_Shdr`).
const PHDR64: u64 = 56;
const SHDR64: u64 = 64;
const PHDR32: u64 = 32;
const SHDR32: u64 = 40;

/// The parts of an ELF header the checks need.
#[derive(Debug)]
struct Header {
    is64: bool,
    phoff: u64,
    phentsize: u64,
    phnum: u64,
    shoff: u64,
    shentsize: u64,
    shnum: u64,
    shstrndx: u64,
}

fn u16_at(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn u32_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(
        b[at..at + 4].try_into().expect("4 bytes"),
    ))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A 32- or 64-bit field: (offset in ELF32, offset in ELF64).
fn word(b: &[u8], is64: bool, at32: usize, at64: usize) -> u64 {
    if is64 {
        u64_at(b, at64)
    } else {
        u32_at(b, at32)
    }
}

impl Header {
    fn parse(head: &[u8]) -> Result<Self, String> {
        if head.len() < 52 {
            return Err("is a truncated ELF file".into());
        }
        let is64 = match head[4] {
            1 => false,
            2 => true,
            _ => return Err("is an ELF file of unknown class".into()),
        };
        if head[5] != 1 {
            return Err("is a big-endian ELF file: not an x86 kernel".into());
        }
        if is64 && head.len() < 64 {
            return Err("is a truncated ELF file".into());
        }
        let machine = u16_at(head, 18);
        if machine != 62 && machine != 3 {
            return Err(format!(
                "is an ELF file for machine {machine}, not x86 (62 or 3)"
            ));
        }
        let header = Self {
            is64,
            phoff: word(head, is64, 28, 32),
            phentsize: u16_at(head, if is64 { 54 } else { 42 }),
            phnum: u16_at(head, if is64 { 56 } else { 44 }),
            shoff: word(head, is64, 32, 40),
            shentsize: u16_at(head, if is64 { 58 } else { 46 }),
            shnum: u16_at(head, if is64 { 60 } else { 48 }),
            shstrndx: u16_at(head, if is64 { 62 } else { 50 }),
        };
        // The tables are walked in steps of their entry size and decoded at fixed
        // offsets within an entry: an entry smaller than the ELF structure (0 above
        // all) is a broken header, not something to step through.
        let (class, phdr, shdr) = if is64 {
            ("ELF64", PHDR64, SHDR64)
        } else {
            ("ELF32", PHDR32, SHDR32)
        };
        if header.phnum > 0 && header.phentsize < phdr {
            return Err(format!(
                "is a broken ELF file (e_phentsize {} with e_phnum {}: an {class} program \
                 header is {phdr} bytes)",
                header.phentsize, header.phnum
            ));
        }
        if header.shnum > 0 && header.shentsize < shdr {
            return Err(format!(
                "is a broken ELF file (e_shentsize {} with e_shnum {}: an {class} section \
                 header is {shdr} bytes)",
                header.shentsize, header.shnum
            ));
        }
        Ok(header)
    }

    /// (offset, size) of each PT_NOTE segment, or else of each SHT_NOTE section.
    fn note_areas(&self, file: &mut File) -> Result<Vec<(u64, u64)>, String> {
        let mut areas = Vec::new();
        if self.phnum > 0 {
            let table = read_at(file, self.phoff, self.phentsize * self.phnum)?;
            // Entries are at least a program header's size (checked in `parse`).
            for entry in table.chunks_exact(self.phentsize as usize) {
                if u32_at(entry, 0) == 4 {
                    let (offset, size) = if self.is64 {
                        (u64_at(entry, 8), u64_at(entry, 32))
                    } else {
                        (u32_at(entry, 4), u32_at(entry, 16))
                    };
                    areas.push((offset, size));
                }
            }
        }
        if areas.is_empty() {
            for (kind, offset, size, _) in self.sections(file)? {
                if kind == 7 {
                    areas.push((offset, size));
                }
            }
        }
        Ok(areas)
    }

    /// (type, offset, size, name offset) of every section.
    fn sections(&self, file: &mut File) -> Result<Vec<(u64, u64, u64, u64)>, String> {
        if self.shnum == 0 {
            return Ok(Vec::new());
        }
        let table = read_at(file, self.shoff, self.shentsize * self.shnum)?;
        let mut sections = Vec::new();
        // Entries are at least a section header's size (checked in `parse`).
        for entry in table.chunks_exact(self.shentsize as usize) {
            let (offset, size) = if self.is64 {
                (u64_at(entry, 24), u64_at(entry, 32))
            } else {
                (u32_at(entry, 16), u32_at(entry, 20))
            };
            sections.push((u32_at(entry, 4), offset, size, u32_at(entry, 0)));
        }
        Ok(sections)
    }

    fn has_section(&self, file: &mut File, wanted: &[u8]) -> Result<bool, String> {
        let sections = self.sections(file)?;
        let Some(&(_, str_offset, str_size, _)) = sections.get(self.shstrndx as usize) else {
            return Ok(false);
        };
        let names = read_at(file, str_offset, str_size)?;
        Ok(sections.iter().any(|&(_, _, _, name)| {
            names
                .get(name as usize..)
                .and_then(|rest| rest.split(|&b| b == 0).next())
                == Some(wanted)
        }))
    }

    /// Every note owned by "Xen": (type, descriptor).
    fn xen_notes(&self, file: &mut File) -> Result<Vec<(u32, Vec<u8>)>, String> {
        let mut notes = Vec::new();
        for (offset, size) in self.note_areas(file)? {
            let area = read_at(file, offset, size)?;
            let mut at = 0usize;
            let pad = |n: usize| n.div_ceil(4) * 4;
            while at + 12 <= area.len() {
                let namesz = u32_at(&area, at) as usize;
                let descsz = u32_at(&area, at + 4) as usize;
                let kind = u32_at(&area, at + 8) as u32;
                let name_at = at + 12;
                let desc_at = name_at + pad(namesz);
                let end = desc_at + pad(descsz);
                if desc_at + descsz > area.len() {
                    return Err("is a broken ELF file (a note runs past its segment)".into());
                }
                let name = &area[name_at..name_at + namesz];
                if name.strip_suffix(b"\0").unwrap_or(name) == b"Xen" {
                    notes.push((kind, area[desc_at..desc_at + descsz].to_vec()));
                }
                at = end;
            }
        }
        Ok(notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with one PT_NOTE segment holding `notes` (owner, type, desc).
    fn elf_with_notes(notes: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut area = Vec::new();
        for (owner, kind, desc) in notes {
            let mut name = owner.as_bytes().to_vec();
            name.push(0);
            area.extend_from_slice(&(name.len() as u32).to_le_bytes());
            area.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            area.extend_from_slice(&kind.to_le_bytes());
            area.extend_from_slice(&name);
            area.resize(area.len().div_ceil(4) * 4, 0);
            area.extend_from_slice(desc);
            area.resize(area.len().div_ceil(4) * 4, 0);
        }
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[6] = 1;
        elf[18..20].copy_from_slice(&62u16.to_le_bytes());
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let mut ph = vec![0u8; 56];
        ph[..4].copy_from_slice(&4u32.to_le_bytes());
        ph[8..16].copy_from_slice(&120u64.to_le_bytes());
        ph[32..40].copy_from_slice(&(area.len() as u64).to_le_bytes());
        elf.extend_from_slice(&ph);
        elf.extend_from_slice(&area);
        elf
    }

    fn check_bytes(bytes: &[u8]) -> Result<KernelKind, String> {
        // Tests run side by side: a file of its own for each check.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!("chaos-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("k{n}"));
        std::fs::write(&path, bytes).unwrap();
        let result = check_kernel(&path);
        std::fs::remove_file(&path).unwrap();
        result
    }

    #[test]
    fn pv_notes_pass() {
        let elf = elf_with_notes(&[
            ("GNU", 3, b"build-id"),
            ("Xen", XEN_VERSION, b"xen-3.0\0"),
            ("Xen", LOADER, b"generic\0"),
            ("Xen", 1, &0xffff_ffff_8000_0000u64.to_le_bytes()),
        ]);
        assert_eq!(
            check_bytes(&elf),
            Ok(KernelKind::XenElf {
                notes: vec![XEN_VERSION, LOADER, 1]
            })
        );
    }

    #[test]
    fn bad_kernels_say_why() {
        for (bytes, why) in [
            (b"hello world\n".to_vec(), "is not an ELF file"),
            (
                elf_with_notes(&[("GNU", 3, b"x")]),
                "without Xen's ELF notes",
            ),
            (
                elf_with_notes(&[("Xen", XEN_VERSION, b"xen-3.0\0")]),
                "neither XEN_ELFNOTE_LOADER \"generic\"",
            ),
            (
                elf_with_notes(&[
                    ("Xen", LOADER, b"generic\0"),
                    ("Xen", XEN_VERSION, b"xen-2\0"),
                ]),
                "XEN_ELFNOTE_XEN_VERSION is Some(\"xen-2\")",
            ),
            (b"\x7fELF\x02\x01".to_vec(), "truncated"),
        ] {
            let err = check_bytes(&bytes).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    /// A good Xen PV image, as `elf_with_notes` builds it.
    fn pv_elf() -> Vec<u8> {
        elf_with_notes(&[
            ("Xen", XEN_VERSION, b"xen-3.0\0"),
            ("Xen", LOADER, b"generic\0"),
        ])
    }

    /// `elf` with the 16-bit little-endian field at `at` set to `value`.
    fn with_u16(mut elf: Vec<u8>, at: usize, value: u16) -> Vec<u8> {
        elf[at..at + 2].copy_from_slice(&value.to_le_bytes());
        elf
    }

    #[test]
    fn entry_sizes_too_small_for_their_tables_are_refused() {
        // e_phentsize (54), e_shentsize (58), with one section header announced (60).
        let with_section = with_u16(pv_elf(), 60, 1);
        for (bytes, why) in [
            (
                with_u16(pv_elf(), 54, 0),
                "is a broken ELF file (e_phentsize 0 with e_phnum 1: an ELF64 program \
                 header is 56 bytes)",
            ),
            (
                with_u16(pv_elf(), 54, 55),
                "is a broken ELF file (e_phentsize 55 with e_phnum 1",
            ),
            (
                with_u16(with_section.clone(), 58, 0),
                "is a broken ELF file (e_shentsize 0 with e_shnum 1: an ELF64 section \
                 header is 64 bytes)",
            ),
            (
                with_u16(with_section, 58, 63),
                "is a broken ELF file (e_shentsize 63 with e_shnum 1",
            ),
        ] {
            let err = check_bytes(&bytes).unwrap_err();
            assert!(err.starts_with(why), "{err}");
        }
        // ELF32: e_phentsize at 42, e_phnum at 44.
        let mut elf32 = vec![0u8; 52];
        elf32[..4].copy_from_slice(b"\x7fELF");
        elf32[4] = 1;
        elf32[5] = 1;
        elf32[18..20].copy_from_slice(&3u16.to_le_bytes());
        elf32[28..32].copy_from_slice(&52u32.to_le_bytes());
        let elf32 = with_u16(with_u16(elf32, 44, 1), 42, 0);
        let err = check_bytes(&elf32).unwrap_err();
        assert!(
            err.starts_with(
                "is a broken ELF file (e_phentsize 0 with e_phnum 1: an ELF32 program header \
                 is 32 bytes)"
            ),
            "{err}"
        );
        // Entry sizes larger than the structure are fine (the table is stepped through).
        let padded = with_u16(pv_elf(), 54, 64);
        assert!(check_bytes(&padded).is_ok());
    }

    /// Whatever a header field holds, the check answers (a panic fails the test): every
    /// byte of the ELF header and of the program header, set to extreme values.
    #[test]
    fn no_header_value_makes_the_check_panic() {
        let good = pv_elf();
        for at in 4..64 + 56 {
            for value in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut bytes = good.clone();
                bytes[at] = value;
                let _ = check_bytes(&bytes);
            }
        }
        // Both tables' entry size and count at their extremes, together.
        for (size, num) in [(0u16, 0xffffu16), (0xffff, 0xffff), (1, 1), (0xffff, 1)] {
            let mut bytes = with_u16(with_u16(good.clone(), 54, size), 56, num);
            bytes = with_u16(with_u16(bytes, 58, size), 60, num);
            let _ = check_bytes(&bytes);
        }
    }

    #[test]
    fn compressed_kernels_are_left_to_libxc() {
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(
            check_bytes(&bz),
            Ok(KernelKind::Compressed("a Linux bzImage"))
        );
        assert_eq!(
            check_bytes(&[0x1f, 0x8b, 8, 0]),
            Ok(KernelKind::Compressed("gzip"))
        );
    }

    #[test]
    fn missing_file() {
        let err = check_kernel(Path::new("/nonexistent/kernel")).unwrap_err();
        assert!(err.contains("cannot be read"), "{err}");
    }
}
