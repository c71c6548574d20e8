//! Just enough ELF64 (little-endian) reading for the dom0 image: the shared libraries a program or
//! library needs (`DT_NEEDED` entries of its dynamic section) and a kernel module's `.modinfo` strings
//! (its `depends=` list). Field offsets are those of the System V gABI's `Elf64_Ehdr`, `Elf64_Shdr`
//! and `Elf64_Dyn`.

use anyhow::{Context, Result, bail, ensure};

const SHT_DYNAMIC: u32 = 6;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;

struct Section {
    name: u32,
    kind: u32,
    offset: usize,
    size: usize,
    link: u32,
}

/// A parsed ELF64 file (borrowing its bytes).
pub struct Elf<'a> {
    data: &'a [u8],
    sections: Vec<Section>,
    shstrndx: usize,
}

fn u16_at(d: &[u8], at: usize) -> Result<u16> {
    let b = d.get(at..at + 2).context("ELF truncated")?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(d: &[u8], at: usize) -> Result<u32> {
    let b = d.get(at..at + 4).context("ELF truncated")?;
    Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
}

fn u64_at(d: &[u8], at: usize) -> Result<u64> {
    let b = d.get(at..at + 8).context("ELF truncated")?;
    Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

fn usize_at(d: &[u8], at: usize) -> Result<usize> {
    usize::try_from(u64_at(d, at)?).context("ELF offset does not fit usize")
}

impl<'a> Elf<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        ensure!(data.len() >= 64 && &data[..4] == b"\x7fELF", "not an ELF file");
        ensure!(data[4] == 2, "not a 64-bit ELF (EI_CLASS={})", data[4]);
        ensure!(data[5] == 1, "not a little-endian ELF (EI_DATA={})", data[5]);
        let shoff = usize_at(data, 0x28)?;
        let shentsize = usize::from(u16_at(data, 0x3a)?);
        let shnum = usize::from(u16_at(data, 0x3c)?);
        let shstrndx = usize::from(u16_at(data, 0x3e)?);
        ensure!(
            shnum == 0 || shentsize >= 64,
            "section header entries of {shentsize} bytes, expected 64"
        );
        let mut sections = Vec::with_capacity(shnum);
        for i in 0..shnum {
            let at = shoff + i * shentsize;
            sections.push(Section {
                name: u32_at(data, at)?,
                kind: u32_at(data, at + 4)?,
                offset: usize_at(data, at + 0x18)?,
                size: usize_at(data, at + 0x20)?,
                link: u32_at(data, at + 0x28)?,
            });
        }
        Ok(Elf {
            data,
            sections,
            shstrndx,
        })
    }

    fn bytes(&self, s: &Section) -> Result<&'a [u8]> {
        self.data
            .get(s.offset..s.offset + s.size)
            .with_context(|| format!("section at {:#x}+{:#x} lies outside the file", s.offset, s.size))
    }

    /// The NUL-terminated string at `at` in string table section `table`.
    fn string(&self, table: usize, at: usize) -> Result<&'a str> {
        let s = self
            .sections
            .get(table)
            .with_context(|| format!("string table section {table} does not exist"))?;
        let b = self
            .bytes(s)?
            .get(at..)
            .context("string offset outside its table")?;
        let end = b.iter().position(|&c| c == 0).context("unterminated string")?;
        std::str::from_utf8(&b[..end]).context("string is not UTF-8")
    }

    /// The contents of the section called `name`, if there is one.
    pub fn section(&self, name: &str) -> Result<Option<&'a [u8]>> {
        for s in &self.sections {
            if self.string(self.shstrndx, s.name as usize)? == name {
                return self.bytes(s).map(Some);
            }
        }
        Ok(None)
    }

    /// The sonames in the dynamic section's `DT_NEEDED` entries, in order (empty for a static file).
    pub fn needed(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for s in self.sections.iter().filter(|s| s.kind == SHT_DYNAMIC) {
            let dynamic = self.bytes(s)?;
            for entry in dynamic.chunks_exact(16) {
                let tag = u64_at(entry, 0)?;
                let val = usize_at(entry, 8)?;
                match tag {
                    DT_NULL => break,
                    DT_NEEDED => out.push(self.string(s.link as usize, val)?.to_owned()),
                    _ => {}
                }
            }
        }
        Ok(out)
    }
}

/// The `depends=` list of a kernel module (`.modinfo` holds NUL-separated `key=value` strings).
pub fn module_depends(ko: &[u8]) -> Result<Vec<String>> {
    let elf = Elf::parse(ko)?;
    let Some(info) = elf.section(".modinfo")? else {
        bail!("kernel module has no .modinfo section");
    };
    Ok(info
        .split(|&b| b == 0)
        .filter_map(|kv| kv.strip_prefix(b"depends="))
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_needs_libc() {
        // The test binary is a dynamically linked glibc program: it must list libc.so.6.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let needed = Elf::parse(&exe).unwrap().needed().unwrap();
        assert!(needed.iter().any(|n| n == "libc.so.6"), "{needed:?}");
        assert!(Elf::parse(&exe).unwrap().section(".text").unwrap().is_some());
        assert!(Elf::parse(&exe).unwrap().section(".no-such").unwrap().is_none());
    }

    #[test]
    fn rejects_what_is_not_a_64_bit_le_elf() {
        assert!(Elf::parse(b"#!/bin/sh\n").is_err());
        let mut elf32 = vec![0u8; 64];
        elf32[..4].copy_from_slice(b"\x7fELF");
        elf32[4] = 1;
        elf32[5] = 1;
        assert!(Elf::parse(&elf32).is_err());
        // A header claiming section headers beyond the end is an error, not a panic.
        let mut bad = vec![0u8; 64];
        bad[..6].copy_from_slice(b"\x7fELF\x02\x01");
        bad[0x28..0x30].copy_from_slice(&4096u64.to_le_bytes());
        bad[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        bad[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        assert!(Elf::parse(&bad).is_err());
    }

    /// A minimal relocatable ELF with `.shstrtab` and a `.modinfo` section, as a module has.
    fn module_with_modinfo(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.shstrtab\0.modinfo\0";
        let mut f = vec![0u8; 64];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let shstr_off = f.len();
        f.extend_from_slice(shstrtab);
        let modinfo_off = f.len();
        f.extend_from_slice(modinfo);
        while !f.len().is_multiple_of(8) {
            f.push(0);
        }
        let shoff = f.len();
        let mut sh = |name: u32, kind: u32, off: usize, size: usize| {
            let mut e = vec![0u8; 64];
            e[0..4].copy_from_slice(&name.to_le_bytes());
            e[4..8].copy_from_slice(&kind.to_le_bytes());
            e[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            e[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            f.extend_from_slice(&e);
        };
        sh(0, 0, 0, 0);
        sh(1, 3, shstr_off, shstrtab.len());
        sh(11, 1, modinfo_off, modinfo.len());
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        f
    }

    #[test]
    fn module_depends_lists() {
        let ko = module_with_modinfo(b"license=GPL\0depends=xen-privcmd,loop\0name=xenfs\0");
        assert_eq!(module_depends(&ko).unwrap(), ["xen-privcmd", "loop"]);
        let none = module_with_modinfo(b"license=GPL\0depends=\0name=loop\0");
        assert!(module_depends(&none).unwrap().is_empty());
    }
}
