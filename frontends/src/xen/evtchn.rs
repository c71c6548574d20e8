//! The 2-level event-channel pending scan, as a pure function over the shared words so it can be
//! tested on the host; the guest kernel's upcall runs it over the shared-info page.
//!
//! Protocol (xen.h, `struct vcpu_info` / `struct shared_info`): Xen sets a port's bit in
//! `evtchn_pending`, and, if the port is not masked in `evtchn_mask`, the word's bit in the vCPU's
//! `evtchn_pending_sel` and then `evtchn_upcall_pending`. The guest clears `evtchn_upcall_pending`
//! *before* scanning (an event arriving during the scan sets it again), takes the selector with an
//! atomic exchange, and for each selected word handles the pending-and-unmasked bits, clearing each
//! port's pending bit before calling its handler (a new event during the handler re-sets it). It
//! repeats while `evtchn_upcall_pending` was set again. Masked ports stay pending and are not
//! handled; unmasking them (`EVTCHNOP_unmask`) makes Xen re-raise them.

use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Ports in the 2-level ABI on a 64-bit guest.
pub const NR_PORTS: usize = 64 * 64;

/// The shared words the scan reads and writes.
#[derive(Debug, Clone, Copy)]
pub struct PendingWords<'a> {
    /// `vcpu_info.evtchn_upcall_pending`.
    pub upcall_pending: &'a AtomicU8,
    /// `vcpu_info.evtchn_pending_sel`.
    pub pending_sel: &'a AtomicU64,
    /// `shared_info.evtchn_pending` (64 words).
    pub pending: &'a [AtomicU64; 64],
    /// `shared_info.evtchn_mask` (64 words).
    pub mask: &'a [AtomicU64; 64],
}

/// Runs the scan, calling `handle(port)` once per delivered event; returns how many were handled.
pub fn scan(w: PendingWords<'_>, mut handle: impl FnMut(u32)) -> u64 {
    let mut handled = 0;
    loop {
        // SeqCst (with Xen's locked updates): the flag is cleared before the selector is read.
        w.upcall_pending.store(0, Ordering::SeqCst);
        let mut sel = w.pending_sel.swap(0, Ordering::SeqCst);
        while sel != 0 {
            let word = sel.trailing_zeros() as usize;
            sel &= sel - 1;
            let mut bits = w.pending[word].load(Ordering::SeqCst) & !w.mask[word].load(Ordering::SeqCst);
            while bits != 0 {
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                // Clear before handling: an event for the port during the handler is not lost.
                let was = w.pending[word].fetch_and(!(1u64 << bit), Ordering::SeqCst);
                if was & (1u64 << bit) != 0 {
                    handled += 1;
                    handle((word * 64) as u32 + bit);
                }
            }
        }
        if w.upcall_pending.load(Ordering::SeqCst) == 0 {
            return handled;
        }
    }
}

/// What Xen does to raise `port` (for tests and fakes): set pending; if unmasked and newly pending,
/// set the selector bit and the upcall flag. Returns whether an upcall is due.
pub fn raise(w: PendingWords<'_>, port: u32) -> bool {
    let (word, bit) = (port as usize / 64, port % 64);
    let was = w.pending[word].fetch_or(1u64 << bit, Ordering::SeqCst);
    if was & (1u64 << bit) != 0 || w.mask[word].load(Ordering::SeqCst) & (1u64 << bit) != 0 {
        return false;
    }
    w.pending_sel.fetch_or(1u64 << word, Ordering::SeqCst);
    w.upcall_pending.swap(1, Ordering::SeqCst) == 0
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use super::*;

    struct Shared {
        upcall: AtomicU8,
        sel: AtomicU64,
        pending: [AtomicU64; 64],
        mask: [AtomicU64; 64],
    }

    impl Shared {
        fn new() -> Self {
            Self {
                upcall: AtomicU8::new(0),
                sel: AtomicU64::new(0),
                pending: [const { AtomicU64::new(0) }; 64],
                mask: [const { AtomicU64::new(0) }; 64],
            }
        }
        fn words(&self) -> PendingWords<'_> {
            PendingWords {
                upcall_pending: &self.upcall,
                pending_sel: &self.sel,
                pending: &self.pending,
                mask: &self.mask,
            }
        }
    }

    #[test]
    fn every_unmasked_pending_port_is_handled_once_and_cleared() {
        let s = Shared::new();
        for p in [3u32, 64, 65, 4095, 700] {
            raise(s.words(), p);
        }
        assert!(
            !raise(s.words(), 3),
            "a port already pending raises no new upcall"
        );
        let mut got = Vec::new();
        let n = scan(s.words(), |p| got.push(p));
        got.sort_unstable();
        assert_eq!((n, got), (5, alloc::vec![3, 64, 65, 700, 4095]));
        assert!(s.pending.iter().all(|w| w.load(Ordering::SeqCst) == 0));
        assert_eq!(
            (s.sel.load(Ordering::SeqCst), s.upcall.load(Ordering::SeqCst)),
            (0, 0)
        );
    }

    #[test]
    fn masked_ports_stay_pending_and_are_not_handled() {
        let s = Shared::new();
        s.mask[1].store(1 << 2, Ordering::SeqCst); // port 66 masked
        assert!(!raise(s.words(), 66), "a masked port raises no upcall");
        assert!(raise(s.words(), 67));
        // The selector covers word 1 because of 67; 66 must still not be handled.
        let mut got = Vec::new();
        scan(s.words(), |p| got.push(p));
        assert_eq!(got, [67]);
        assert_eq!(
            s.pending[1].load(Ordering::SeqCst),
            1 << 2,
            "66 still pending for when it is unmasked"
        );
    }

    #[test]
    fn an_event_raised_by_a_handler_is_handled_in_the_same_upcall() {
        let s = Shared::new();
        raise(s.words(), 10);
        let mut got = Vec::new();
        let n = scan(s.words(), |p| {
            got.push(p);
            if p == 10 && got.len() == 1 {
                // Xen raises 10 again and 200 while the handler runs.
                raise(s.words(), 10);
                raise(s.words(), 200);
            }
        });
        assert_eq!((n, got), (3, alloc::vec![10, 10, 200]));
        assert_eq!(s.upcall.load(Ordering::SeqCst), 0);
    }
}
