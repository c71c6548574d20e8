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
}
