//! `pci`: the devices found at boot, with their assigned BARs.
//!
//! Prints one `PVKIT INFO pci` line per function. Checks that every BAR register reads back the
//! address we assigned, that the command register decodes what the BARs need, and that no two BARs
//! overlap. If QEMU's `edu` device (1234:11e8) is present, reads its identification register and runs
//! its liveness check through BAR 0, proving the BAR decodes and the MMIO mapping works; then makes it
//! interrupt twice through its INTx line (routed by the platform's INTx→GSI map to the IOAPIC and a
//! registered vector): once raised by hand, once when a factorial it computes completes. The handler
//! acknowledges each and records its status bits; the factorial must read back 10! = 3628800. With
//! `pci.expect=vvvv:dddd,...` the multiset of vendor:device ids found must equal the given one.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::{Outcome, Params, fail};
use crate::arch::x86_64::interrupts::{self, Polarity, Trigger};
use crate::platform::pc::{self, PortPciConfig};
use crate::platform::{self, Platform};
use pvkit_frontends::pci::{BarKind, CMD_IO, CMD_MEMORY, ConfigAccess, PciDevice};

const EDU: (u16, u16) = (0x1234, 0x11e8);
const EDU_IDENT: u64 = 0x00;
const EDU_LIVENESS: u64 = 0x04;
const EDU_FACTORIAL: u64 = 0x08;
const EDU_STATUS: u64 = 0x20;
const EDU_STATUS_IRQ_ON_FACTORIAL: u32 = 0x80;
const EDU_IRQ_STATUS: u64 = 0x24;
const EDU_IRQ_RAISE: u64 = 0x60;
const EDU_IRQ_ACK: u64 = 0x64;
/// Interrupt-status bit edu sets when a factorial is done.
const EDU_IRQ_FACTORIAL: u32 = 0x1;
/// Bit we raise by hand.
const EDU_IRQ_MANUAL: u32 = 0x100;
/// Poll budget while waiting for an interrupt (the host's timeout is the real limit).
const MAX_POLLS: u64 = 200_000_000;

/// BAR 0 of the edu device under test, for the interrupt handler.
static EDU_BAR: AtomicU64 = AtomicU64::new(0);
/// Interrupts the handler saw, and the status bits it acknowledged.
static EDU_IRQS: AtomicU32 = AtomicU32::new(0);
static EDU_SEEN: AtomicU32 = AtomicU32::new(0);

fn on_edu(_: u8) {
    // Relaxed everywhere: single CPU; the test reads these after seeing EDU_IRQS change.
    let bar = EDU_BAR.load(Ordering::Relaxed);
    let status = mmio_read32(bar + EDU_IRQ_STATUS);
    if status != 0 {
        // Acknowledge first so the level-triggered line drops before the EOI.
        mmio_write32(bar + EDU_IRQ_ACK, status);
        EDU_SEEN.fetch_or(status, Ordering::Relaxed);
        EDU_IRQS.fetch_add(1, Ordering::Relaxed);
    }
}

fn wait_for_irqs(n: u32) -> bool {
    (0..MAX_POLLS).any(|_| {
        core::hint::spin_loop();
        EDU_IRQS.load(Ordering::Relaxed) >= n
    })
}

/// Drives edu's interrupt through the whole path; returns the GSI used.
fn edu_interrupts(d: &PciDevice, bar: u64) -> Result<u32, String> {
    let gsi = pc::pci_intx_gsi(d).ok_or_else(|| alloc::format!("edu {} has no INTx pin", d.bdf))?;
    EDU_BAR.store(bar, Ordering::Relaxed);
    EDU_IRQS.store(0, Ordering::Relaxed);
    EDU_SEEN.store(0, Ordering::Relaxed);
    let vector = interrupts::alloc_vector(on_edu).map_err(|e| alloc::format!("vector: {e}"))?;
    let result = (|| {
        interrupts::route_gsi(gsi, vector, Trigger::Level, Polarity::ActiveHigh)
            .map_err(|e| alloc::format!("routing GSI {gsi}: {e}"))?;
        mmio_write32(bar + EDU_IRQ_RAISE, EDU_IRQ_MANUAL);
        if !wait_for_irqs(1) {
            return Err(alloc::format!(
                "edu {} raised INTx (GSI {gsi}), no interrupt arrived",
                d.bdf
            ));
        }
        mmio_write32(bar + EDU_STATUS, EDU_STATUS_IRQ_ON_FACTORIAL);
        mmio_write32(bar + EDU_FACTORIAL, 10);
        if !wait_for_irqs(2) {
            return Err(alloc::format!(
                "edu {} factorial done interrupt (GSI {gsi}) never arrived",
                d.bdf
            ));
        }
        let seen = EDU_SEEN.load(Ordering::Relaxed);
        if seen != EDU_IRQ_MANUAL | EDU_IRQ_FACTORIAL {
            return Err(alloc::format!(
                "edu {} interrupt status bits {seen:#x}, expected 0x101",
                d.bdf
            ));
        }
        let fact = mmio_read32(bar + EDU_FACTORIAL);
        if fact != 3_628_800 {
            return Err(alloc::format!(
                "edu {} computed 10! = {fact}, expected 3628800",
                d.bdf
            ));
        }
        Ok(gsi)
    })();
    let _ = interrupts::mask_gsi(gsi);
    interrupts::unregister_handler(vector);
    result
}

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
    // SAFETY: `addr` lies in an assigned memory BAR, which platform init mapped uncached.
    unsafe { crate::arch::x86_64::mmio::read32(addr) }
}

fn mmio_write32(addr: u64, value: u32) {
    // SAFETY: as for mmio_read32; the edu liveness register only stores the value.
    unsafe { crate::arch::x86_64::mmio::write32(addr, value) }
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
        match edu_interrupts(d, bar.addr) {
            Ok(gsi) => kprintln!("PVKIT INFO pci {} edu interrupts ok via GSI {gsi}", d.bdf),
            Err(e) => return fail!("{e}"),
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
