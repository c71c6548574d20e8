//! A driver's own cost counts.
//!
//! Every driver counts what it did that costs something in a virtual machine, so a workload can print
//! per-operation costs next to what the host measured:
//! - `notifications`: register writes (or hypercalls) whose purpose is to tell the device there is
//!   work: a virtio queue kick, an ATA command register write, an e1000 tail write, an event channel
//!   send;
//! - `interrupts`: interrupts acknowledged as this device's;
//! - `bytes_copied`: bytes the guest CPU moved between device and memory (PIO `rep insw`, copies
//!   through bounce buffers), as opposed to bytes the device moved by DMA.
//!
//! Beside them, [`Exits`]: the kernel-wide count of every guest action that leaves the guest (port
//! I/O, MMIO to device registers, hypercalls by number, halts), kept by the platform in one
//! [`AtomicExits`]; drivers that touch registers without a counting platform accessor report them
//! through a [`TrapCounter`].

use core::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a driver's counts. Counts only grow; [`Counters::since`] gives a phase's share.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Device notifications sent (kicks, doorbells).
    pub notifications: u64,
    /// Interrupts acknowledged as this device's.
    pub interrupts: u64,
    /// Bytes copied by the guest CPU.
    pub bytes_copied: u64,
}

impl Counters {
    /// The counts accumulated from `earlier` to `self`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            notifications: self.notifications.saturating_sub(earlier.notifications),
            interrupts: self.interrupts.saturating_sub(earlier.interrupts),
            bytes_copied: self.bytes_copied.saturating_sub(earlier.bytes_copied),
        }
    }
}

/// [`Counters`] that can be bumped through a shared reference, e.g. from an interrupt handler.
#[derive(Debug, Default)]
pub struct AtomicCounters {
    notifications: AtomicU64,
    interrupts: AtomicU64,
    bytes_copied: AtomicU64,
}

// Relaxed everywhere: the counts are statistics read on the same CPU; nothing else is ordered by them.
impl AtomicCounters {
    /// All zero.
    pub const fn new() -> Self {
        Self {
            notifications: AtomicU64::new(0),
            interrupts: AtomicU64::new(0),
            bytes_copied: AtomicU64::new(0),
        }
    }

    /// Counts `n` notifications.
    pub fn notified(&self, n: u64) {
        self.notifications.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one interrupt.
    pub fn interrupted(&self) {
        self.interrupts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` bytes copied by the CPU.
    pub fn copied(&self, n: u64) {
        self.bytes_copied.fetch_add(n, Ordering::Relaxed);
    }

    /// The current counts.
    pub fn snapshot(&self) -> Counters {
        Counters {
            notifications: self.notifications.load(Ordering::Relaxed),
            interrupts: self.interrupts.load(Ordering::Relaxed),
            bytes_copied: self.bytes_copied.load(Ordering::Relaxed),
        }
    }
}

/// Hypercall slots of [`Exits`]: numbers 0..=62 each have their own, 63 holds 63 and above.
pub const HYPERCALL_SLOTS: usize = 64;

/// Kernel-wide counts of guest actions that leave the guest (a VM exit, or a hypercall), by kind.
///
/// Counted by the platform where each action happens, not by drivers: every port I/O instruction
/// (a `rep ins/outs` counts once per element moved, as QEMU dispatches it), every access to a device
/// register page (MMIO), every hypercall by number, every halt that waits for an interrupt. A
/// snapshot; [`Exits::since`] gives a stretch's share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exits {
    /// Port I/O instructions (string instructions: per element).
    pub pio: u64,
    /// Device register accesses through memory (MMIO).
    pub mmio: u64,
    /// MMIO accesses to the interrupt controllers (local APIC: EOI, timer; IOAPIC): the cost of
    /// taking interrupts, kept apart from the devices' registers.
    pub irqchip: u64,
    /// Halts waiting for an interrupt (`sti; hlt`).
    pub hlt: u64,
    /// Hypercalls by number (see [`HYPERCALL_SLOTS`]).
    pub hypercalls: [u64; HYPERCALL_SLOTS],
}

impl Default for Exits {
    fn default() -> Self {
        Self {
            pio: 0,
            mmio: 0,
            irqchip: 0,
            hlt: 0,
            hypercalls: [0; HYPERCALL_SLOTS],
        }
    }
}

impl Exits {
    /// The counts accumulated from `earlier` to `self`.
    pub fn since(&self, earlier: &Exits) -> Exits {
        let mut hypercalls = [0; HYPERCALL_SLOTS];
        for (d, (a, b)) in hypercalls
            .iter_mut()
            .zip(self.hypercalls.iter().zip(&earlier.hypercalls))
        {
            *d = a.saturating_sub(*b);
        }
        Exits {
            pio: self.pio.saturating_sub(earlier.pio),
            mmio: self.mmio.saturating_sub(earlier.mmio),
            irqchip: self.irqchip.saturating_sub(earlier.irqchip),
            hlt: self.hlt.saturating_sub(earlier.hlt),
            hypercalls,
        }
    }

    /// All hypercalls.
    pub fn hypercalls_total(&self) -> u64 {
        self.hypercalls.iter().sum()
    }

    /// Everything: port I/O + MMIO (devices and interrupt controllers) + hypercalls + halts.
    pub fn total(&self) -> u64 {
        self.pio + self.mmio + self.irqchip + self.hypercalls_total() + self.hlt
    }

    /// The `key=value` fields of a report line: `exits= exits_pio= exits_mmio= exits_irqchip=
    /// hypercalls= exits_hlt=`
    /// and, if there were hypercalls, `hc=<name>:<n>,...` sorted by name; `name(nr)` names hypercall
    /// `nr` (`None`: shown as `hc<nr>`).
    pub fn fields<'a>(&'a self, name: &'a dyn Fn(usize) -> Option<&'static str>) -> ExitFields<'a> {
        ExitFields { exits: self, name }
    }
}

/// [`Exits::fields`]' display.
pub struct ExitFields<'a> {
    exits: &'a Exits,
    name: &'a dyn Fn(usize) -> Option<&'static str>,
}

impl core::fmt::Debug for ExitFields<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ExitFields")
            .field("exits", self.exits)
            .finish_non_exhaustive()
    }
}

impl core::fmt::Display for ExitFields<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let e = self.exits;
        write!(
            f,
            "exits={} exits_pio={} exits_mmio={} exits_irqchip={} hypercalls={} exits_hlt={}",
            e.total(),
            e.pio,
            e.mmio,
            e.irqchip,
            e.hypercalls_total(),
            e.hlt
        )?;
        let mut named: alloc::vec::Vec<(alloc::string::String, u64)> = e
            .hypercalls
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(nr, n)| {
                let label = match (self.name)(nr) {
                    Some(s) => alloc::string::String::from(s),
                    None => alloc::format!("hc{nr}"),
                };
                (label, *n)
            })
            .collect();
        named.sort();
        for (i, (label, n)) in named.iter().enumerate() {
            write!(f, "{}{label}:{n}", if i == 0 { " hc=" } else { "," })?;
        }
        Ok(())
    }
}

/// [`Exits`] that can be bumped through a shared reference (the kernel keeps one, kernel-wide).
#[derive(Debug)]
pub struct AtomicExits {
    pio: AtomicU64,
    mmio: AtomicU64,
    irqchip: AtomicU64,
    hlt: AtomicU64,
    hypercalls: [AtomicU64; HYPERCALL_SLOTS],
}

impl Default for AtomicExits {
    fn default() -> Self {
        Self::new()
    }
}

// Relaxed everywhere, as for `AtomicCounters`: statistics read on the same CPU.
impl AtomicExits {
    /// All zero.
    pub const fn new() -> Self {
        Self {
            pio: AtomicU64::new(0),
            mmio: AtomicU64::new(0),
            irqchip: AtomicU64::new(0),
            hlt: AtomicU64::new(0),
            hypercalls: [const { AtomicU64::new(0) }; HYPERCALL_SLOTS],
        }
    }

    /// Counts `n` port I/O exits.
    pub fn pio(&self, n: u64) {
        self.pio.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` MMIO exits.
    pub fn mmio(&self, n: u64) {
        self.mmio.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` MMIO exits to an interrupt controller.
    pub fn irqchip(&self, n: u64) {
        self.irqchip.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one halt.
    pub fn hlt(&self) {
        self.hlt.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts hypercall `nr` (63 and above share the last slot).
    pub fn hypercall(&self, nr: u32) {
        let slot = (nr as usize).min(HYPERCALL_SLOTS - 1);
        self.hypercalls[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// The current counts.
    pub fn snapshot(&self) -> Exits {
        let mut hypercalls = [0; HYPERCALL_SLOTS];
        for (d, a) in hypercalls.iter_mut().zip(&self.hypercalls) {
            *d = a.load(Ordering::Relaxed);
        }
        Exits {
            pio: self.pio.load(Ordering::Relaxed),
            mmio: self.mmio.load(Ordering::Relaxed),
            irqchip: self.irqchip.load(Ordering::Relaxed),
            hlt: self.hlt.load(Ordering::Relaxed),
            hypercalls,
        }
    }
}

/// Where a driver reports the device register accesses it makes itself, when they do not go
/// through a platform accessor that counts them already (the virtio-pci transport maps its BAR and
/// accesses it directly, partly inside the `virtio-drivers` crate). The kernel implements it with
/// its kernel-wide [`AtomicExits`].
pub trait TrapCounter: Sync {
    /// `accesses` MMIO register accesses were made.
    fn mmio(&self, accesses: u64);
}

impl TrapCounter for AtomicExits {
    fn mmio(&self, accesses: u64) {
        AtomicExits::mmio(self, accesses);
    }
}

/// A [`TrapCounter`] that counts nothing (tests, or a platform that counts elsewhere).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTraps;

impl TrapCounter for NoTraps {
    fn mmio(&self, _: u64) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_subtracts_each_field() {
        let c = AtomicCounters::new();
        c.notified(3);
        c.interrupted();
        let before = c.snapshot();
        c.notified(2);
        c.copied(512);
        c.interrupted();
        c.interrupted();
        let d = c.snapshot().since(&before);
        assert_eq!(
            d,
            Counters {
                notifications: 2,
                interrupts: 2,
                bytes_copied: 512
            }
        );
        // A counter that went backwards (a reset device) saturates instead of wrapping.
        assert_eq!(before.since(&c.snapshot()).notifications, 0);
    }

    #[test]
    fn exits_count_by_kind_and_hypercall_number() {
        let e = AtomicExits::new();
        e.pio(3);
        e.hypercall(29);
        let before = e.snapshot();
        e.pio(256);
        TrapCounter::mmio(&e, 2);
        e.irqchip(3);
        e.hlt();
        for _ in 0..5 {
            e.hypercall(32);
        }
        e.hypercall(20);
        e.hypercall(29);
        e.hypercall(1000); // beyond the table: the last slot
        let d = e.snapshot().since(&before);
        assert_eq!((d.pio, d.mmio, d.irqchip, d.hlt), (256, 2, 3, 1));
        assert_eq!(d.hypercalls[32], 5);
        assert_eq!(
            d.hypercalls[29], 1,
            "the one before the snapshot is not in the stretch"
        );
        assert_eq!(d.hypercalls[HYPERCALL_SLOTS - 1], 1);
        assert_eq!(d.hypercalls_total(), 8);
        assert_eq!(d.total(), 256 + 2 + 3 + 1 + 8);
        let name = |nr: usize| match nr {
            20 => Some("grant_table_op"),
            29 => Some("sched_op"),
            32 => Some("event_channel_op"),
            _ => None,
        };
        assert_eq!(
            alloc::format!("{}", d.fields(&name)),
            "exits=270 exits_pio=256 exits_mmio=2 exits_irqchip=3 hypercalls=8 exits_hlt=1 \
             hc=event_channel_op:5,grant_table_op:1,hc63:1,sched_op:1"
        );
        // No hypercalls: no `hc=` field at all.
        let quiet = Exits {
            mmio: 4,
            ..Exits::default()
        };
        assert_eq!(
            alloc::format!("{}", quiet.fields(&name)),
            "exits=4 exits_pio=0 exits_mmio=4 exits_irqchip=0 hypercalls=0 exits_hlt=0"
        );
    }
}
