//! `pci`: the devices found at boot, with their assigned BARs.
//!
//! Prints one `PVKIT INFO pci` line per function. Checks that every BAR register reads back the
//! address we assigned, that the command register decodes what the BARs need, and that no two BARs
//! overlap. If QEMU's `edu` device (1234:11e8) is present, reads its identification register and runs
//! its liveness check through BAR 0, proving the BAR decodes and the MMIO mapping works. With
//! `pci.expect=vvvv:dddd,...` the multiset of vendor:device ids found must equal the given one.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use super::{Outcome, Params, fail};
use crate::drivers::pci::{BarKind, CMD_IO, CMD_MEMORY, ConfigAccess, PciDevice};
use crate::platform::pc::{self, PortPciConfig};
use crate::platform::{self, Platform};

const EDU: (u16, u16) = (0x1234, 0x11e8);
const EDU_IDENT: u64 = 0x00;
const EDU_LIVENESS: u64 = 0x04;

fn describe(d: &PciDevice) -> String {
    let mut s = alloc::format!(
        "{} {:04x}:{:04x} class={:#08x} rev={} header={}",
        d.bdf,
        d.vendor_id,
        d.device_id,
        d.class,
        d.revision,
        d.header_type
    );
    for b in &d.bars {
        let _ = write!(s, " bar{}={}:{:#x}+{:#x}", b.index, b.kind.name(), b.addr, b.size);
        if b.prefetchable {
            s.push_str(":pf");
        }
    }
    if d.interrupt_pin != 0 {
        let _ = write!(s, " int=INT{}", char::from(b'A' + d.interrupt_pin - 1));
    }
    if let Some(bus) = d.secondary_bus {
        let _ = write!(s, " secondary_bus={bus}");
    }
    s
}

fn parse_expect(list: &str) -> Result<Vec<(u16, u16)>, String> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|item| {
            let parsed = item.split_once(':').and_then(|(v, d)| {
                let ok = v.len() == 4 && d.len() == 4;
                Some((
                    u16::from_str_radix(v, 16).ok().filter(|_| ok)?,
                    u16::from_str_radix(d, 16).ok()?,
                ))
            });
            parsed.ok_or_else(|| alloc::format!("pci.expect entry '{item}' is not vvvv:dddd (hex)"))
        })
        .collect()
}

fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: `addr` lies in an assigned memory BAR, which platform init mapped uncached; volatile
    // because it is a device register.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn mmio_write32(addr: u64, value: u32) {
    // SAFETY: as for mmio_read32; the edu liveness register only stores the value.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

pub fn run(params: &Params<'_>) -> Outcome {
    if platform::current() != Some(Platform::Pvh) {
        return fail!("no PCI bus on this platform");
    }
    let devices = match pc::pci_devices() {
        Ok(d) => d,
        Err(e) => return fail!("enumeration failed: {e}"),
    };
    for d in devices {
        kprintln!("PVKIT INFO pci {}", describe(d));
    }
    // Assigned resources really are in the hardware, and do not overlap.
    let mut ranges: Vec<(bool, u64, u64, String)> = Vec::new();
    for d in devices {
        let cmd = PortPciConfig.read16(d.bdf, 0x04);
        for b in &d.bars {
            let off = 0x10 + 4 * b.index;
            let lo = PortPciConfig.read32(d.bdf, off);
            let hi = if b.kind == BarKind::Memory64 {
                PortPciConfig.read32(d.bdf, off + 4)
            } else {
                0
            };
            let mask = if b.kind == BarKind::Io {
                0xffff_fffc
            } else {
                0xffff_fff0
            };
            let read = (u64::from(hi) << 32) | u64::from(lo & mask);
            if read != b.addr {
                return fail!("{} BAR{} reads {read:#x}, assigned {:#x}", d.bdf, b.index, b.addr);
            }
            let need = if b.kind == BarKind::Io { CMD_IO } else { CMD_MEMORY };
            if cmd & need == 0 {
                return fail!(
                    "{} has BAR{} but command register {cmd:#06x} does not decode it",
                    d.bdf,
                    b.index
                );
            }
            ranges.push((
                b.kind == BarKind::Io,
                b.addr,
                b.addr + b.size,
                alloc::format!("{} BAR{}", d.bdf, b.index),
            ));
        }
    }
    for (i, a) in ranges.iter().enumerate() {
        if let Some(b) = ranges[i + 1..]
            .iter()
            .find(|b| a.0 == b.0 && a.1 < b.2 && b.1 < a.2)
        {
            return fail!(
                "{} [{:#x}, {:#x}) overlaps {} [{:#x}, {:#x})",
                a.3,
                a.1,
                a.2,
                b.3,
                b.1,
                b.2
            );
        }
    }

    let mut edu_checked = 0;
    for d in devices.iter().filter(|d| (d.vendor_id, d.device_id) == EDU) {
        let Some(bar) = d.bar(0).filter(|b| b.kind != BarKind::Io) else {
            return fail!("edu device {} has no memory BAR 0", d.bdf);
        };
        let ident = mmio_read32(bar.addr + EDU_IDENT);
        if ident & 0xff != 0xed {
            return fail!(
                "edu {} identification register reads {ident:#010x}, expected 0x??????ed",
                d.bdf
            );
        }
        let probe = 0x5a5a_0000 | u32::from(d.bdf.device);
        mmio_write32(bar.addr + EDU_LIVENESS, probe);
        let back = mmio_read32(bar.addr + EDU_LIVENESS);
        if back != !probe {
            return fail!(
                "edu {} liveness check: wrote {probe:#010x}, read {back:#010x}, expected {:#010x}",
                d.bdf,
                !probe
            );
        }
        edu_checked += 1;
    }

    let mut found: Vec<(u16, u16)> = devices.iter().map(|d| (d.vendor_id, d.device_id)).collect();
    found.sort_unstable();
    let fmt_ids = |ids: &[(u16, u16)]| {
        let mut s = String::new();
        for (i, (v, d)) in ids.iter().enumerate() {
            let _ = write!(s, "{}{v:04x}:{d:04x}", if i > 0 { "," } else { "" });
        }
        s
    };
    match params.get("expect") {
        Some(list) => {
            let mut expected = match parse_expect(list) {
                Ok(e) => e,
                Err(e) => return fail!("{e}"),
            };
            expected.sort_unstable();
            if expected != found {
                let mut missing = expected.clone();
                let mut extra = Vec::new();
                for id in &found {
                    match missing.iter().position(|m| m == id) {
                        Some(i) => {
                            missing.remove(i);
                        }
                        None => extra.push(*id),
                    }
                }
                return fail!(
                    "device set differs: missing=[{}] unexpected=[{}] found=[{}]",
                    fmt_ids(&missing),
                    fmt_ids(&extra),
                    fmt_ids(&found)
                );
            }
        }
        None if found.is_empty() => return fail!("no PCI device found"),
        None => {}
    }
    Outcome::Pass(alloc::format!(
        "devices={} bars={} edu_checked={edu_checked} ids={}",
        devices.len(),
        ranges.len(),
        fmt_ids(&found)
    ))
}
