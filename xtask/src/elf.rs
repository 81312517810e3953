//! Just enough ELF64 reading to assemble the dom0 initramfs without host tools and to
//! check guest images: the shared libraries a program needs (`DT_NEEDED`), its loader
//! (`PT_INTERP`), a kernel module's `.modinfo` section, the entry point and notes. `ldd` would run the host's loader against
//! Debian's libraries and binutils may be absent; reading the headers needs neither.

use anyhow::{Context, Result, bail, ensure};

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const PT_NOTE: u32 = 4;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;

/// What the dynamic loader needs to start a program or library.
#[derive(Debug, Default)]
pub struct Dynamic {
    /// `DT_NEEDED` sonames, in file order.
    pub needed: Vec<String>,
    /// The `PT_INTERP` path, for executables.
    pub interp: Option<String>,
}

/// An ELF64 little-endian file held in memory.
#[derive(Debug)]
pub struct Elf<'a> {
    data: &'a [u8],
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

impl<'a> Elf<'a> {
    /// Whether `data` starts like an ELF file at all (scripts do not).
    pub fn is_elf(data: &[u8]) -> bool {
        data.starts_with(b"\x7fELF")
    }

    pub fn parse(data: &'a [u8]) -> Result<Self> {
        ensure!(Self::is_elf(data), "not an ELF file");
        ensure!(data.len() >= 64, "truncated ELF header");
        ensure!(
            data[4] == 2 && data[5] == 1,
            "not a 64-bit little-endian ELF file"
        );
        Ok(Self { data })
    }

    pub fn dynamic(&self) -> Result<Dynamic> {
        let segments = self.segments()?;
        let mut out = Dynamic::default();
        if let Some(interp) = segments.iter().find(|s| s.kind == PT_INTERP) {
            let bytes = self.slice(interp.offset, interp.filesz)?;
            out.interp = Some(cstr(bytes, 0)?.to_owned());
        }
        let Some(dynamic) = segments.iter().find(|s| s.kind == PT_DYNAMIC) else {
            return Ok(out); // statically linked
        };
        let table = self.slice(dynamic.offset, dynamic.filesz)?;
        let mut needed_offsets = Vec::new();
        let mut strtab_vaddr = None;
        for entry in table.chunks_exact(16) {
            let tag = le64(entry, 0);
            let val = le64(entry, 8);
            match tag {
                DT_NULL => break,
                DT_NEEDED => needed_offsets.push(val),
                DT_STRTAB => strtab_vaddr = Some(val),
                _ => {}
            }
        }
        if needed_offsets.is_empty() {
            return Ok(out);
        }
        let strtab_vaddr = strtab_vaddr.context("dynamic section without DT_STRTAB")?;
        // DT_STRTAB is an address; the loadable segment containing it maps it to a file offset.
        let load = segments
            .iter()
            .find(|s| s.kind == PT_LOAD && (s.vaddr..s.vaddr + s.filesz).contains(&strtab_vaddr))
            .context("DT_STRTAB lies outside every PT_LOAD segment")?;
        let strtab = usize::try_from(strtab_vaddr - load.vaddr + load.offset)?;
        for offset in needed_offsets {
            out.needed
                .push(cstr(self.data, strtab + usize::try_from(offset)?)?.to_owned());
        }
        Ok(out)
    }

    /// The entry point (`e_entry`).
    pub fn entry(&self) -> u64 {
        le64(self.data, 0x18)
    }

    /// The notes in the `PT_NOTE` segments: (owner, type, descriptor).
    pub fn notes(&self) -> Result<Vec<(&'a str, u32, &'a [u8])>> {
        let mut notes = Vec::new();
        for segment in self.segments()?.iter().filter(|s| s.kind == PT_NOTE) {
            let mut rest = self.slice(segment.offset, segment.filesz)?;
            while rest.len() >= 12 {
                let namesz = le32(rest, 0) as usize;
                let descsz = le32(rest, 4) as usize;
                let kind = le32(rest, 8);
                let name_end = 12 + namesz.next_multiple_of(4);
                let desc_end = name_end + descsz.next_multiple_of(4);
                ensure!(desc_end <= rest.len(), "note overruns its segment");
                let name = cstr(&rest[12..12 + namesz], 0)?;
                notes.push((name, kind, &rest[name_end..name_end + descsz]));
                rest = &rest[desc_end..];
            }
        }
        Ok(notes)
    }

    /// The contents of the section called `name`, if there is one.
    pub fn section(&self, name: &str) -> Result<Option<&'a [u8]>> {
        let shoff = le64(self.data, 0x28);
        let shentsize = u64::from(le16(self.data, 0x3a));
        let shnum = u64::from(le16(self.data, 0x3c));
        let shstrndx = u64::from(le16(self.data, 0x3e));
        ensure!(
            shentsize >= 64 || shnum == 0,
            "odd section header size {shentsize}"
        );
        let header = |index: u64| self.slice(shoff + index * shentsize, 64);
        let names = header(shstrndx)?;
        let names_offset = usize::try_from(le64(names, 24))?;
        for index in 0..shnum {
            let sh = header(index)?;
            let sh_name = usize::try_from(le32(sh, 0))?;
            if cstr(self.data, names_offset + sh_name)? == name {
                return Ok(Some(self.slice(le64(sh, 24), le64(sh, 32))?));
            }
        }
        Ok(None)
    }

    fn segments(&self) -> Result<Vec<Segment>> {
        let phoff = le64(self.data, 0x20);
        let phentsize = u64::from(le16(self.data, 0x36));
        let phnum = u64::from(le16(self.data, 0x38));
        ensure!(
            phentsize >= 56 || phnum == 0,
            "odd program header size {phentsize}"
        );
        (0..phnum)
            .map(|index| {
                let ph = self.slice(phoff + index * phentsize, 56)?;
                Ok(Segment {
                    kind: le32(ph, 0),
                    offset: le64(ph, 8),
                    vaddr: le64(ph, 16),
                    filesz: le64(ph, 32),
                })
            })
            .collect()
    }

    fn slice(&self, offset: u64, len: u64) -> Result<&'a [u8]> {
        let start = usize::try_from(offset)?;
        let end = start
            .checked_add(usize::try_from(len)?)
            .context("ELF range overflows")?;
        self.data
            .get(start..end)
            .with_context(|| format!("ELF range {start:#x}..{end:#x} beyond the file"))
    }
}

/// `key=value` strings of a kernel module's `.modinfo` section for `key`.
pub fn modinfo<'a>(modinfo: &'a [u8], key: &str) -> impl Iterator<Item = &'a str> {
    modinfo
        .split(|&b| b == 0)
        .filter_map(|field| std::str::from_utf8(field).ok())
        .filter_map(move |field| field.strip_prefix(key)?.strip_prefix('='))
}

fn cstr(data: &[u8], offset: usize) -> Result<&str> {
    let tail = data
        .get(offset..)
        .context("string offset beyond the file")?;
    let Some(len) = tail.iter().position(|&b| b == 0) else {
        bail!("unterminated string at {offset:#x}");
    };
    std::str::from_utf8(&tail[..len]).context("string is not UTF-8")
}

fn le16(data: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(data[at..at + 2].try_into().expect("2 bytes"))
}

fn le32(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(data: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running test binary is a dynamically linked ELF: it needs libc and names
    /// the system loader.
    #[test]
    fn reads_own_executable() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let dynamic = Elf::parse(&exe).unwrap().dynamic().unwrap();
        assert!(
            dynamic.needed.iter().any(|lib| lib.starts_with("libc.so")),
            "{dynamic:?}"
        );
        assert!(dynamic.interp.unwrap().contains("ld-linux"));
    }

    #[test]
    fn modinfo_fields() {
        let section = b"license=GPL\0depends=a,b\0name=x\0";
        assert_eq!(modinfo(section, "depends").collect::<Vec<_>>(), ["a,b"]);
        assert_eq!(modinfo(section, "name").collect::<Vec<_>>(), ["x"]);
    }
}
