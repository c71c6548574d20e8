//! Enumeration over a simulated bus: functions with BARs that decode only their size's bits,
//! bridges that forward config cycles to the bus range they were programmed with.

use core::cell::RefCell;
use std::vec;
use std::vec::Vec;

use super::*;

/// A BAR as the hardware implements it: its size and its read-only flag bits.
#[derive(Debug, Clone, Copy)]
enum SimBar {
    Mem32 { size: u32 },
    Mem64 { size: u64, prefetchable: bool },
    Io { size: u32 },
}

#[derive(Debug)]
struct SimFn {
    /// Where it sits: parent bridge (index into `SimBus::fns`, `None` on the root bus), device and
    /// function number.
    parent: Option<usize>,
    device: u8,
    function: u8,
    regs: [u32; 64],
    /// Per BAR slot: the writable address bits and the read-only flag bits (0, 0 when absent).
    bar_mask: [(u32, u32); 6],
}

#[derive(Debug, Default)]
struct SimBus {
    fns: RefCell<Vec<SimFn>>,
}

const BRIDGE_CLASS: u32 = 0x0006_0400;

impl SimBus {
    /// Adds a function; returns its index.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &self,
        parent: Option<usize>,
        device: u8,
        function: u8,
        id: u32,
        header: u8,
        pin: u8,
        bars: &[SimBar],
    ) -> usize {
        let mut regs = [0u32; 64];
        regs[0] = id;
        regs[2] = if header & 0x7f == HEADER_BRIDGE {
            BRIDGE_CLASS << 8
        } else {
            0x0100_0001
        };
        regs[3] = u32::from(header) << 16;
        regs[15] = u32::from(pin) << 8 | 0x0b;
        let mut bar_mask = [(0u32, 0u32); 6];
        let mut slot = 0;
        for bar in bars {
            match *bar {
                SimBar::Mem32 { size } => {
                    bar_mask[slot] = (!(size - 1) & 0xffff_fff0, 0);
                    slot += 1;
                }
                SimBar::Mem64 { size, prefetchable } => {
                    let mask = !(size - 1);
                    let flags = 0b100 | if prefetchable { 8 } else { 0 };
                    bar_mask[slot] = (mask as u32 & 0xffff_fff0, flags);
                    bar_mask[slot + 1] = ((mask >> 32) as u32, 0);
                    slot += 2;
                }
                SimBar::Io { size } => {
                    bar_mask[slot] = (!(size - 1) & 0xffff_fffc, 1);
                    slot += 1;
                }
            }
        }
        for (i, (_, flags)) in bar_mask.iter().enumerate() {
            regs[4 + i] = *flags;
        }
        let mut fns = self.fns.borrow_mut();
        fns.push(SimFn {
            parent,
            device,
            function,
            regs,
            bar_mask,
        });
        fns.len() - 1
    }

    fn endpoint(&self, parent: Option<usize>, device: u8, pin: u8, bars: &[SimBar]) -> usize {
        self.add(parent, device, 0, 0x1234_1af4, 0, pin, bars)
    }

    fn bridge(&self, parent: Option<usize>, device: u8, pin: u8) -> usize {
        self.add(parent, device, 0, 0x0001_1b36, HEADER_BRIDGE, pin, &[])
    }

    /// The bus number a bridge forwards to (its secondary bus register), 0 if none.
    fn secondary(&self, bridge: usize) -> u8 {
        (self.fns.borrow()[bridge].regs[6] >> 8) as u8
    }

    fn reg(&self, f: usize, offset: u8) -> u32 {
        self.fns.borrow()[f].regs[usize::from(offset / 4)]
    }

    /// The function a config cycle to `bdf` reaches: on bus 0 the root bus, elsewhere behind the
    /// one bridge programmed with that secondary bus (two would both claim the cycle: a bug).
    fn find(&self, bdf: Bdf) -> Option<usize> {
        let fns = self.fns.borrow();
        let parent = if bdf.bus == 0 {
            None
        } else {
            let claim: Vec<usize> = (0..fns.len())
                .filter(|&i| fns[i].regs[3] >> 16 & 0x7f == u32::from(HEADER_BRIDGE))
                .filter(|&i| (fns[i].regs[6] >> 8) as u8 == bdf.bus)
                .collect();
            assert!(claim.len() <= 1, "bus {} claimed by bridges {claim:?}", bdf.bus);
            Some(*claim.first()?)
        };
        (0..fns.len()).find(|&i| {
            fns[i].parent == parent && fns[i].device == bdf.device && fns[i].function == bdf.function
        })
    }
}

impl ConfigAccess for SimBus {
    fn read32(&self, bdf: Bdf, offset: u8) -> u32 {
        assert_eq!(offset % 4, 0);
        self.find(bdf).map_or(0xffff_ffff, |f| self.reg(f, offset))
    }

    fn write32(&self, bdf: Bdf, offset: u8, value: u32) {
        assert_eq!(offset % 4, 0);
        let Some(f) = self.find(bdf) else { return };
        let mut fns = self.fns.borrow_mut();
        let func = &mut fns[f];
        let is_bridge = func.regs[3] >> 16 & 0x7f == u32::from(HEADER_BRIDGE);
        let i = usize::from(offset / 4);
        match offset {
            VENDOR_ID | CLASS_REV | HEADER_TYPE_DW => {}
            0x10..=0x27 if !is_bridge || offset < 0x18 => {
                let (mask, flags) = func.bar_mask[usize::from((offset - BAR0) / 4)];
                func.regs[i] = value & mask | flags;
            }
            _ => func.regs[i] = value,
        }
    }

    fn read16(&self, bdf: Bdf, offset: u8) -> u16 {
        (self.read32(bdf, offset & !3) >> ((offset & 2) * 8)) as u16
    }

    fn write16(&self, bdf: Bdf, offset: u8, value: u16) {
        let Some(f) = self.find(bdf) else { return };
        let shift = (offset & 2) * 8;
        let old = self.reg(f, offset & !3) & !(0xffff << shift);
        self.write32(bdf, offset & !3, old | u32::from(value) << shift);
    }
}

fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
    Bdf {
        bus,
        device,
        function,
    }
}

fn windows() -> Windows {
    Windows::new(0xc000_0000..0xd000_0000, 0xc000..0x1_0000)
}

/// Every BAR naturally aligned, inside its window, and no two overlapping.
fn assert_bars_sane(found: &[PciDevice], w: &Windows) {
    let mut taken: Vec<(BarKind, u64, u64)> = Vec::new();
    for d in found {
        for b in &d.bars {
            assert!(
                b.size.is_power_of_two(),
                "{} BAR{} size {:#x}",
                d.bdf,
                b.index,
                b.size
            );
            assert_eq!(
                b.addr % b.size,
                0,
                "{} BAR{} at {:#x} is not aligned to its size",
                d.bdf,
                b.index,
                b.addr
            );
            let win = if b.kind == BarKind::Io { &w.io } else { &w.mem };
            assert!(
                win.start <= b.addr && b.addr + b.size <= win.end,
                "{} BAR{} outside its window",
                d.bdf,
                b.index
            );
            let io = b.kind == BarKind::Io;
            for &(k, start, end) in &taken {
                if (k == BarKind::Io) == io {
                    assert!(
                        b.addr + b.size <= start || end <= b.addr,
                        "{} BAR{} overlaps another",
                        d.bdf,
                        b.index
                    );
                }
            }
            taken.push((b.kind, b.addr, b.addr + b.size));
        }
    }
}

#[test]
fn root_bus_functions_get_aligned_disjoint_bars_and_decoding_enabled() {
    let bus = SimBus::default();
    let a = bus.endpoint(
        None,
        1,
        1,
        &[
            SimBar::Mem32 { size: 0x1000 },
            SimBar::Io { size: 0x20 },
            SimBar::Mem64 {
                size: 0x4000,
                prefetchable: true,
            },
        ],
    );
    // A multi-function device with functions 0 and 2 (1 absent).
    let f0 = bus.add(
        None,
        3,
        0,
        0x1000_8086,
        HEADER_MULTIFUNCTION,
        0,
        &[SimBar::Mem32 { size: 0x10_0000 }],
    );
    let f2 = bus.add(None, 3, 2, 0x1001_8086, 0, 2, &[SimBar::Io { size: 0x100 }]);
    let mut w = windows();
    let found = enumerate(&bus, &mut w).expect("fits");
    let at: Vec<Bdf> = found.iter().map(|d| d.bdf).collect();
    assert_eq!(at, vec![bdf(0, 1, 0), bdf(0, 3, 0), bdf(0, 3, 2)]);
    assert_bars_sane(&found, &windows());

    let d = &found[0];
    assert_eq!((d.vendor_id, d.device_id, d.interrupt_pin), (0x1af4, 0x1234, 1));
    let kinds: Vec<(u8, BarKind, bool)> = d.bars.iter().map(|b| (b.index, b.kind, b.prefetchable)).collect();
    assert_eq!(
        kinds,
        vec![
            (0, BarKind::Memory32, false),
            (1, BarKind::Io, false),
            (2, BarKind::Memory64, true),
        ]
    );
    assert_eq!(
        d.bars.iter().map(|b| b.size).collect::<Vec<_>>(),
        vec![0x1000, 0x20, 0x4000]
    );
    // What the device decodes is what was reported.
    assert_eq!(u64::from(bus.reg(a, BAR0) & !0xf), d.bars[0].addr);
    assert_eq!(u64::from(bus.reg(a, BAR0 + 4) & !3), d.bars[1].addr);
    let hi = u64::from(bus.reg(a, BAR0 + 12));
    assert_eq!(hi << 32 | u64::from(bus.reg(a, BAR0 + 8) & !0xf), d.bars[2].addr);
    assert!(d.bars[2].addr < 1 << 32, "64-bit BARs stay below 4 GiB");
    let cmd = |f| bus.reg(f, COMMAND) as u16;
    assert_eq!(
        cmd(a) & (CMD_IO | CMD_MEMORY | CMD_BUS_MASTER),
        CMD_IO | CMD_MEMORY | CMD_BUS_MASTER
    );
    assert_eq!(
        cmd(f0) & (CMD_IO | CMD_MEMORY),
        CMD_MEMORY,
        "memory BAR only: I/O decoding stays off"
    );
    assert_eq!(cmd(f2) & (CMD_IO | CMD_MEMORY), CMD_IO);
    assert_eq!(found[2].intx_root, Some((3, 1)), "root bus: own slot, INTB");
    assert_eq!(found[1].intx_root, None, "no pin");
}

/// The conventional swizzle, one bridge at a time: a pin (0-based) of `device` arrives at its bridge
/// as `(pin + device) % 4`.
fn swizzle(path: &[u8], pin: u8) -> (u8, u8) {
    let (root_slot, below) = path.split_first().expect("a path");
    let p = below.iter().rev().fold(pin - 1, |p, dev| (p + dev) % 4);
    (*root_slot, p)
}

#[test]
fn bridges_get_bus_numbers_and_windows_covering_what_is_behind_them() {
    let bus = SimBus::default();
    let top = bus.bridge(None, 2, 0);
    let leaf = bus.endpoint(
        Some(top),
        0,
        1,
        &[SimBar::Mem32 { size: 0x2000 }, SimBar::Io { size: 0x40 }],
    );
    let inner = bus.bridge(Some(top), 1, 0);
    let deep = bus.endpoint(Some(inner), 3, 2, &[SimBar::Mem32 { size: 0x20_0000 }]);
    let after = bus.endpoint(None, 4, 1, &[SimBar::Mem32 { size: 0x1000 }]);
    let mut w = windows();
    let found = enumerate(&bus, &mut w).expect("fits");
    assert_bars_sane(&found, &windows());
    let at: Vec<Bdf> = found.iter().map(|d| d.bdf).collect();
    assert_eq!(
        at,
        vec![
            bdf(0, 2, 0),
            bdf(1, 0, 0),
            bdf(1, 1, 0),
            bdf(2, 3, 0),
            bdf(0, 4, 0)
        ]
    );
    assert_eq!(
        (found[0].secondary_bus, found[2].secondary_bus),
        (Some(1), Some(2))
    );
    assert_eq!((bus.secondary(top), bus.secondary(inner)), (1, 2));
    // Primary, secondary, subordinate: the top bridge spans buses 1..=2, the inner one bus 2.
    assert_eq!(bus.reg(top, BRIDGE_BUSES) & 0xff_ffff, 2 << 16 | 1 << 8);
    assert_eq!(bus.reg(inner, BRIDGE_BUSES) & 0xff_ffff, 2 << 16 | 2 << 8 | 1);

    // The top bridge's memory window covers both BARs behind it and not the root-bus device's.
    let base = u64::from(bus.reg(top, BRIDGE_MEM_BASE) as u16 & 0xfff0) << 16;
    let limit = u64::from((bus.reg(top, BRIDGE_MEM_BASE) >> 16) as u16 & 0xfff0) << 16 | 0xf_ffff;
    for d in &found[1..4] {
        for b in d.bars.iter().filter(|b| b.kind != BarKind::Io) {
            assert!(
                base <= b.addr && b.addr + b.size - 1 <= limit,
                "{} BAR{} outside the bridge window",
                d.bdf,
                b.index
            );
        }
    }
    let outside = &found[4].bars[0];
    assert!(outside.addr > limit || outside.addr + outside.size <= base);
    // Its I/O window covers the leaf's I/O BAR.
    let io = bus.reg(top, BRIDGE_IO_BASE_LIMIT);
    let (io_base, io_limit) = (u64::from(io & 0xf0) << 8, u64::from(io >> 8 & 0xf0) << 8 | 0xfff);
    let leaf_io = found[1]
        .bars
        .iter()
        .find(|b| b.kind == BarKind::Io)
        .expect("I/O BAR");
    assert!(io_base <= leaf_io.addr && leaf_io.addr + leaf_io.size - 1 <= io_limit);
    // Bridges forward memory and I/O.
    assert_eq!(
        bus.reg(top, COMMAND) as u16 & (CMD_IO | CMD_MEMORY),
        CMD_IO | CMD_MEMORY
    );
    assert_eq!(
        bus.reg(leaf, COMMAND) as u16 & (CMD_IO | CMD_MEMORY),
        CMD_IO | CMD_MEMORY
    );
    assert_eq!(bus.reg(deep, COMMAND) as u16 & CMD_BUS_MASTER, CMD_BUS_MASTER);
    let _ = after;

    // Interrupts follow the swizzle up to the root bus.
    assert_eq!(found[1].intx_root, Some(swizzle(&[2, 0], 1)));
    assert_eq!(found[3].intx_root, Some(swizzle(&[2, 1, 3], 2)));
    assert_eq!(
        found[3].intx_root,
        Some((2, 1)),
        "INTB of 02:03 arrives as INTB of root slot 2"
    );
}

#[test]
fn stale_bus_numbers_left_by_firmware_do_not_capture_another_bridges_bus() {
    let bus = SimBus::default();
    let first = bus.bridge(None, 2, 0);
    let second = bus.bridge(None, 5, 0);
    bus.endpoint(Some(first), 0, 0, &[SimBar::Mem32 { size: 0x1000 }]);
    bus.endpoint(Some(second), 0, 0, &[SimBar::Mem32 { size: 0x1000 }]);
    // Firmware left the second bridge forwarding bus 1, the number the first one gets.
    bus.fns.borrow_mut()[second].regs[6] = 1 << 16 | 1 << 8;
    let found = enumerate(&bus, &mut windows()).expect("fits");
    let at: Vec<Bdf> = found.iter().map(|d| d.bdf).collect();
    assert_eq!(at, vec![bdf(0, 2, 0), bdf(1, 0, 0), bdf(0, 5, 0), bdf(2, 0, 0)]);
    assert_bars_sane(&found, &windows());
}

#[test]
fn a_bar_that_does_not_fit_its_window_is_reported_with_its_place() {
    let bus = SimBus::default();
    bus.endpoint(None, 1, 0, &[SimBar::Mem32 { size: 0x1000 }]);
    bus.endpoint(
        None,
        2,
        0,
        &[SimBar::Mem32 { size: 0x1000 }, SimBar::Mem32 { size: 0x10_0000 }],
    );
    let mut w = Windows::new(0xc000_0000..0xc008_0000, 0xc000..0x1_0000);
    let err = enumerate(&bus, &mut w).expect_err("1 MiB does not fit in 512 KiB");
    assert_eq!(
        err,
        Error::WindowFull {
            bdf: bdf(0, 2, 0),
            bar: 1,
            size: 0x10_0000,
            kind: "memory",
            end: 0xc008_0000,
        }
    );
    let mut io = Windows::new(0xc000_0000..0xd000_0000, 0xc000..0xc010);
    bus.endpoint(None, 3, 0, &[SimBar::Io { size: 0x100 }]);
    let err = enumerate(&bus, &mut io).expect_err("256 ports do not fit in 16");
    assert!(
        matches!(
            err,
            Error::WindowFull {
                kind: "I/O",
                bar: 0,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn no_device_is_an_empty_list_not_an_error() {
    let found = enumerate(&SimBus::default(), &mut windows()).expect("an empty bus");
    assert!(found.is_empty());
}

#[test]
fn pc_windows_start_above_low_ram_on_a_bridge_boundary() {
    let w = Windows::pc(0x7fe0_0000);
    assert_eq!((w.mem.start, w.mem.end), (MEM_WINDOW_START, MEM_WINDOW_END));
    let w = Windows::pc(0xd012_3456);
    assert_eq!(w.mem.start, 0xd020_0000);
    assert_eq!(w.io, IO_WINDOW);
    let w = Windows::pc(0xff00_0000);
    assert!(
        w.mem.is_empty(),
        "no room left: every memory BAR is refused, nothing overlaps RAM"
    );
}
