//! PCI enumeration and resource assignment, for kernels that find their devices on PCI.
//!
//! [`enumerate`] walks every bus reachable from bus 0 (numbering bridges' secondary buses itself),
//! records each function's ids, class and interrupt pin, sizes its BARs and assigns them from a
//! memory window and an I/O port window ([`Windows`]; firmware such as qboot assigns nothing),
//! programs bridge windows to cover what lies behind them, then enables memory/I/O decoding and bus
//! mastering. 64-bit BARs are placed in the 32-bit window too, so every BAR is reachable below
//! 4 GiB.
//!
//! Config-space access goes through [`ConfigAccess`] (ports 0xcf8/0xcfc on a PC, or ECAM), which
//! the kernel implements; everything else is pure logic, tested on the host against a simulated
//! bus.
//!
//! Interrupts: each function's INTx pin is followed up through the standard swizzle at every bridge
//! to the root bus ([`PciDevice::intx_root`]); which interrupt input a root-bus slot and pin reach
//! is the platform's business (the PC's is fixed by its chipset).

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

/// What enumeration can fail at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A BAR does not fit in the window left for its kind.
    #[error("PCI {bdf} BAR{bar}: {size:#x} bytes of {kind} space do not fit (window ends at {end:#x})")]
    WindowFull {
        /// The function.
        bdf: Bdf,
        /// BAR index.
        bar: u8,
        /// BAR size in bytes.
        size: u64,
        /// "memory" or "I/O".
        kind: &'static str,
        /// End of the window.
        end: u64,
    },
    /// More buses than the 8-bit bus number allows.
    #[error("PCI bus numbers exhausted behind bridge {0}")]
    BusesExhausted(Bdf),
}

/// The module's result type.
pub type Result<T> = core::result::Result<T, Error>;

/// Bus, device, function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// Bus 0..=255.
    pub bus: u8,
    /// Device 0..32.
    pub device: u8,
    /// Function 0..8.
    pub function: u8,
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// Access to configuration space. Offsets are byte offsets, naturally aligned for the width.
pub trait ConfigAccess {
    /// Reads the 32-bit register at `offset` (multiple of 4).
    fn read32(&self, bdf: Bdf, offset: u8) -> u32;
    /// Writes the 32-bit register at `offset` (multiple of 4).
    fn write32(&self, bdf: Bdf, offset: u8, value: u32);
    /// Reads the 16-bit register at `offset` (multiple of 2).
    fn read16(&self, bdf: Bdf, offset: u8) -> u16;
    /// Writes the 16-bit register at `offset` (multiple of 2).
    fn write16(&self, bdf: Bdf, offset: u8, value: u16);
}

// Configuration-space offsets and bits.
const VENDOR_ID: u8 = 0x00;
const COMMAND: u8 = 0x04;
const CLASS_REV: u8 = 0x08;
const HEADER_TYPE_DW: u8 = 0x0c;
const BAR0: u8 = 0x10;
const BRIDGE_BUSES: u8 = 0x18;
const BRIDGE_IO_BASE_LIMIT: u8 = 0x1c;
const BRIDGE_MEM_BASE: u8 = 0x20;
const BRIDGE_MEM_LIMIT: u8 = 0x22;
const BRIDGE_PREF_BASE_LIMIT: u8 = 0x24;
const BRIDGE_PREF_BASE_UPPER: u8 = 0x28;
const BRIDGE_PREF_LIMIT_UPPER: u8 = 0x2c;
const BRIDGE_IO_UPPER: u8 = 0x30;
const INTERRUPT_DW: u8 = 0x3c;

/// Command register: I/O space decoding.
pub const CMD_IO: u16 = 1 << 0;
/// Command register: memory space decoding.
pub const CMD_MEMORY: u16 = 1 << 1;
/// Command register: bus mastering (DMA).
pub const CMD_BUS_MASTER: u16 = 1 << 2;

const HEADER_MULTIFUNCTION: u8 = 0x80;
const HEADER_ENDPOINT: u8 = 0x00;
const HEADER_BRIDGE: u8 = 0x01;

/// Start of the PC's PCI memory window we allocate from (q35 puts ECAM at 0xb000_0000..0xc000_0000
/// and keeps low RAM below 0xb000_0000).
pub const MEM_WINDOW_START: u64 = 0xc000_0000;
/// End of that window: the IOAPIC / local APIC / firmware area starts here.
pub const MEM_WINDOW_END: u64 = 0xfec0_0000;
/// I/O ports we allocate from (above the ISA and chipset ranges).
pub const IO_WINDOW: Range<u64> = 0xc000..0x1_0000;
/// Smallest memory allocation: a page, so BARs never share a page.
const MEM_MIN_ALIGN: u64 = 0x1000;
/// Bridge memory windows have 1 MiB granularity, I/O windows 4 KiB.
const BRIDGE_MEM_ALIGN: u64 = 0x10_0000;
const BRIDGE_IO_ALIGN: u64 = 0x1000;

/// Kind of a BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory BAR.
    Memory32,
    /// 64-bit memory BAR (uses two BAR slots).
    Memory64,
    /// I/O port BAR.
    Io,
}

impl BarKind {
    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory32 => "mem32",
            Self::Memory64 => "mem64",
            Self::Io => "io",
        }
    }
}

/// An assigned BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// BAR index (0..6; a 64-bit BAR also occupies `index + 1`).
    pub index: u8,
    /// Kind.
    pub kind: BarKind,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// Assigned address (bus address == physical address on the PC).
    pub addr: u64,
    /// Size in bytes (a power of two).
    pub size: u64,
}

/// One PCI function as found and configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDevice {
    /// Where it is.
    pub bdf: Bdf,
    /// Vendor id.
    pub vendor_id: u16,
    /// Device id.
    pub device_id: u16,
    /// Class code: class << 16 | subclass << 8 | prog-if.
    pub class: u32,
    /// Revision id.
    pub revision: u8,
    /// Header type (without the multifunction bit).
    pub header_type: u8,
    /// Assigned BARs.
    pub bars: Vec<Bar>,
    /// Interrupt pin (0 = none, 1..=4 = INTA..INTD).
    pub interrupt_pin: u8,
    /// Interrupt line register as left by firmware.
    pub interrupt_line: u8,
    /// For bridges: the secondary bus number we gave it.
    pub secondary_bus: Option<u8>,
    /// Where its INTx pin arrives on the root bus after the standard swizzle at every bridge on the
    /// way up: `(root-bus device number, pin 0..=3 for INTA..INTD)`. `None` without an interrupt pin.
    /// Which interrupt input that is, is the platform's business (`platform::pc::pci_intx_gsi`).
    pub intx_root: Option<(u8, u8)>,
}

impl PciDevice {
    /// The BAR with `index`, if assigned.
    pub fn bar(&self, index: u8) -> Option<&Bar> {
        self.bars.iter().find(|b| b.index == index)
    }
}

/// The address windows BARs are allocated from.
#[derive(Debug, Clone)]
pub struct Windows {
    mem: Range<u64>,
    mem_next: u64,
    io: Range<u64>,
    io_next: u64,
}

impl Windows {
    /// Windows `mem` and `io`.
    pub fn new(mem: Range<u64>, io: Range<u64>) -> Self {
        Self {
            mem_next: mem.start,
            mem,
            io_next: io.start,
            io,
        }
    }

    /// The PC windows: memory from [`MEM_WINDOW_START`] (or from `top_low_ram`, rounded up to a
    /// bridge window's granularity, if that is higher) to [`MEM_WINDOW_END`]; I/O ports
    /// [`IO_WINDOW`]. `top_low_ram` is the end of the highest RAM, ACPI or NVS region that starts
    /// below [`MEM_WINDOW_END`] (0 if none).
    pub fn pc(top_low_ram: u64) -> Self {
        let start = MEM_WINDOW_START.max(top_low_ram.next_multiple_of(BRIDGE_MEM_ALIGN));
        Self::new(start..MEM_WINDOW_END.max(start), IO_WINDOW)
    }

    /// Memory handed out so far.
    pub fn mem_used(&self) -> Option<Range<u64>> {
        (self.mem_next > self.mem.start).then_some(self.mem.start..self.mem_next)
    }

    fn alloc_mem(&mut self, size: u64) -> Option<u64> {
        let addr = self.mem_next.checked_next_multiple_of(size.max(MEM_MIN_ALIGN))?;
        let end = addr.checked_add(size)?;
        (end <= self.mem.end).then(|| {
            self.mem_next = end;
            addr
        })
    }

    fn alloc_io(&mut self, size: u64) -> Option<u64> {
        let addr = self.io_next.checked_next_multiple_of(size.max(4))?;
        let end = addr.checked_add(size)?;
        (end <= self.io.end).then(|| {
            self.io_next = end;
            addr
        })
    }

    fn align(&mut self) {
        self.mem_next = self.mem_next.next_multiple_of(BRIDGE_MEM_ALIGN).min(self.mem.end);
        self.io_next = self.io_next.next_multiple_of(BRIDGE_IO_ALIGN).min(self.io.end);
    }
}

/// Enumerates all buses reachable from bus 0, assigning BARs and bus numbers.
pub fn enumerate(cfg: &impl ConfigAccess, windows: &mut Windows) -> Result<Vec<PciDevice>> {
    let mut walker = Walker {
        cfg,
        windows,
        next_bus: 1,
        found: Vec::new(),
    };
    walker.scan_bus(0, IntxRoute::ROOT)?;
    Ok(walker.found)
}

/// How INTx pins of a bus reach the root bus. A device at `device` with pin `p` (0-based) on this
/// bus arrives at root slot `slot` with pin `(p + device + rotation) % 4`; the root bus itself maps
/// each device to its own slot.
#[derive(Debug, Clone, Copy)]
struct IntxRoute {
    /// `None` on the root bus, else the root-bus slot of the bridge chain.
    slot: Option<u8>,
    /// Sum of the device numbers of the bridges below the root bridge.
    rotation: u8,
}

impl IntxRoute {
    const ROOT: Self = Self {
        slot: None,
        rotation: 0,
    };

    /// Root slot and pin for INTx `pin` (1..=4) of `device` on this bus.
    fn resolve(self, device: u8, pin: u8) -> Option<(u8, u8)> {
        let p = pin.checked_sub(1).filter(|p| *p < 4)?;
        Some(match self.slot {
            None => (device, p),
            Some(slot) => (slot, (p + device + self.rotation) % 4),
        })
    }

    /// The route of the bus behind a bridge at `device` on this bus.
    fn behind(self, device: u8) -> Self {
        match self.slot {
            None => Self {
                slot: Some(device),
                rotation: 0,
            },
            Some(slot) => Self {
                slot: Some(slot),
                rotation: (self.rotation + device) % 4,
            },
        }
    }
}

struct Walker<'a, C> {
    cfg: &'a C,
    windows: &'a mut Windows,
    next_bus: u16,
    found: Vec<PciDevice>,
}

impl<C: ConfigAccess> Walker<'_, C> {
    fn scan_bus(&mut self, bus: u8, route: IntxRoute) -> Result<()> {
        let mut present = Vec::new();
        for device in 0..32 {
            let f0 = Bdf {
                bus,
                device,
                function: 0,
            };
            if self.cfg.read16(f0, VENDOR_ID) == 0xffff {
                continue;
            }
            let header = (self.cfg.read32(f0, HEADER_TYPE_DW) >> 16) as u8;
            let functions = if header & HEADER_MULTIFUNCTION != 0 { 8 } else { 1 };
            for function in 0..functions {
                let bdf = Bdf {
                    bus,
                    device,
                    function,
                };
                if self.cfg.read16(bdf, VENDOR_ID) != 0xffff {
                    present.push(bdf);
                }
            }
        }
        // Close every bridge on this bus before numbering any: a bus range left by firmware on a
        // bridge we have not reached yet could otherwise claim the bus number we give another one.
        for &bdf in &present {
            let header = (self.cfg.read32(bdf, HEADER_TYPE_DW) >> 16) as u8 & !HEADER_MULTIFUNCTION;
            if header == HEADER_BRIDGE {
                let latency = self.cfg.read32(bdf, BRIDGE_BUSES) & 0xff00_0000;
                self.cfg.write32(bdf, BRIDGE_BUSES, latency);
            }
        }
        for bdf in present {
            self.function(bdf, route)?;
        }
        Ok(())
    }

    fn function(&mut self, bdf: Bdf, route: IntxRoute) -> Result<()> {
        let id = self.cfg.read32(bdf, VENDOR_ID);
        let class_rev = self.cfg.read32(bdf, CLASS_REV);
        let header_type = (self.cfg.read32(bdf, HEADER_TYPE_DW) >> 16) as u8 & !HEADER_MULTIFUNCTION;
        let intr = self.cfg.read32(bdf, INTERRUPT_DW);
        let mut dev = PciDevice {
            bdf,
            vendor_id: id as u16,
            device_id: (id >> 16) as u16,
            class: class_rev >> 8,
            revision: class_rev as u8,
            header_type,
            bars: Vec::new(),
            interrupt_pin: (intr >> 8) as u8,
            interrupt_line: intr as u8,
            secondary_bus: None,
            intx_root: route.resolve(bdf.device, (intr >> 8) as u8),
        };
        let bar_slots = match header_type {
            HEADER_ENDPOINT => 6,
            HEADER_BRIDGE => 2,
            _ => 0, // CardBus: not supported, listed without resources
        };
        let command = self.cfg.read16(bdf, COMMAND);
        self.cfg.write16(bdf, COMMAND, command & !(CMD_IO | CMD_MEMORY));
        dev.bars = self.assign_bars(bdf, bar_slots)?;
        let index = self.found.len();
        self.found.push(dev);
        let mut enable = CMD_BUS_MASTER;
        if header_type == HEADER_BRIDGE {
            let secondary = self.bridge(bdf, route.behind(bdf.device))?;
            self.found[index].secondary_bus = Some(secondary);
            enable |= CMD_IO | CMD_MEMORY;
        }
        for bar in &self.found[index].bars {
            enable |= if bar.kind == BarKind::Io {
                CMD_IO
            } else {
                CMD_MEMORY
            };
        }
        self.cfg.write16(bdf, COMMAND, command | enable);
        Ok(())
    }

    fn assign_bars(&mut self, bdf: Bdf, slots: u8) -> Result<Vec<Bar>> {
        let mut bars = Vec::new();
        let mut index = 0;
        while index < slots {
            let off = BAR0 + 4 * index;
            let orig = self.cfg.read32(bdf, off);
            self.cfg.write32(bdf, off, 0xffff_ffff);
            let probe = self.cfg.read32(bdf, off);
            if probe == 0 {
                self.cfg.write32(bdf, off, orig);
                index += 1;
                continue;
            }
            let bar = if orig & 1 == 1 {
                let size = u64::from((!((probe & 0xffff_fffc) | 0xffff_0000)).wrapping_add(1));
                let addr = self.windows.alloc_io(size).ok_or(Error::WindowFull {
                    bdf,
                    bar: index,
                    size,
                    kind: "I/O",
                    end: self.windows.io.end,
                })?;
                self.cfg.write32(bdf, off, addr as u32);
                Bar {
                    index,
                    kind: BarKind::Io,
                    prefetchable: false,
                    addr,
                    size,
                }
            } else {
                let is64 = (orig >> 1) & 3 == 2;
                let prefetchable = orig & 8 != 0;
                let mask = if is64 {
                    self.cfg.write32(bdf, off + 4, 0xffff_ffff);
                    let hi = self.cfg.read32(bdf, off + 4);
                    (u64::from(hi) << 32) | u64::from(probe & 0xffff_fff0)
                } else {
                    0xffff_ffff_0000_0000 | u64::from(probe & 0xffff_fff0)
                };
                let size = (!mask).wrapping_add(1);
                let addr = self.windows.alloc_mem(size).ok_or(Error::WindowFull {
                    bdf,
                    bar: index,
                    size,
                    kind: "memory",
                    end: self.windows.mem.end,
                })?;
                self.cfg.write32(bdf, off, addr as u32);
                if is64 {
                    self.cfg.write32(bdf, off + 4, (addr >> 32) as u32);
                }
                let kind = if is64 {
                    BarKind::Memory64
                } else {
                    BarKind::Memory32
                };
                Bar {
                    index,
                    kind,
                    prefetchable,
                    addr,
                    size,
                }
            };
            bars.push(bar);
            index += if bar.kind == BarKind::Memory64 { 2 } else { 1 };
        }
        Ok(bars)
    }

    /// Numbers the bridge's secondary bus, scans it and opens windows covering what was assigned
    /// behind it. Returns the secondary bus number.
    fn bridge(&mut self, bdf: Bdf, route: IntxRoute) -> Result<u8> {
        let secondary = u8::try_from(self.next_bus).map_err(|_| Error::BusesExhausted(bdf))?;
        self.next_bus += 1;
        let latency = self.cfg.read32(bdf, BRIDGE_BUSES) & 0xff00_0000;
        let buses = |sub: u8| latency | u32::from(sub) << 16 | u32::from(secondary) << 8 | u32::from(bdf.bus);
        self.cfg.write32(bdf, BRIDGE_BUSES, buses(0xff));

        self.windows.align();
        let (mem_start, io_start) = (self.windows.mem_next, self.windows.io_next);
        self.scan_bus(secondary, route)?;
        self.windows.align();
        let (mem_end, io_end) = (self.windows.mem_next, self.windows.io_next);

        let subordinate = u8::try_from(self.next_bus - 1).map_err(|_| Error::BusesExhausted(bdf))?;
        self.cfg.write32(bdf, BRIDGE_BUSES, buses(subordinate));

        // I/O window (base > limit disables it).
        let (io_base, io_limit) = if io_end > io_start {
            (io_start, io_end - 1)
        } else {
            (0xf000, 0)
        };
        let io_lo = ((io_base >> 8) & 0xf0) as u32 | ((((io_limit >> 8) & 0xf0) as u32) << 8);
        let old = self.cfg.read32(bdf, BRIDGE_IO_BASE_LIMIT) & 0xffff_0000; // keep secondary status
        self.cfg.write32(bdf, BRIDGE_IO_BASE_LIMIT, old | io_lo);
        self.cfg.write32(
            bdf,
            BRIDGE_IO_UPPER,
            ((io_limit >> 16) as u32) << 16 | (io_base >> 16) as u32,
        );
        // Memory window.
        let (mem_base, mem_limit) = if mem_end > mem_start {
            (mem_start, mem_end - 1)
        } else {
            (0xfff0_0000, 0)
        };
        self.cfg
            .write16(bdf, BRIDGE_MEM_BASE, ((mem_base >> 16) & 0xfff0) as u16);
        self.cfg
            .write16(bdf, BRIDGE_MEM_LIMIT, ((mem_limit >> 16) & 0xfff0) as u16);
        // Prefetchable window unused (everything went into the memory window): disabled.
        self.cfg.write32(bdf, BRIDGE_PREF_BASE_LIMIT, 0x0000_fff0);
        self.cfg.write32(bdf, BRIDGE_PREF_BASE_UPPER, 0);
        self.cfg.write32(bdf, BRIDGE_PREF_LIMIT_UPPER, 0);
        Ok(secondary)
    }
}

#[cfg(test)]
mod tests;
