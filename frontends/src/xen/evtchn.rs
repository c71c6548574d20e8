//! Event channels: the [`EventChannels`] trait the Xen frontends take from the platform, the
//! [`PortNotify`] that turns one port into a ring's [`Notify`], and the 2-level pending scan, as a
//! pure function over the shared words so it can be tested on the host (the guest kernel's upcall
//! runs it over the shared-info page).
//!
//! # The scan
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

use ring_protocol::abi::event_channel::EvtchnPort;
use ring_protocol::abi::xen::DomId;
use ring_protocol::platform::Notify;

use crate::wait::SharedIrqAck;
use crate::{Error, Result};

/// Event channels as a Xen frontend uses them: one port per device, allocated for the backend's
/// domain, notified when the frontend publishes requests, bound to the driver's [`IrqAck`] so the
/// platform's upcall reaches it, closed at disconnect.
///
/// The guest kernel implements it with `EVTCHNOP_*` hypercalls and its upcall's per-port dispatch;
/// host tests use `fake::FakeEventChannels` (feature `test-utils`).
///
/// # Safety
///
/// A safe trait: an event carries no data (the rings' indices do), so an implementation that drops,
/// duplicates or misroutes events makes a driver slow or time out, never touch memory it should not.
/// [`bind`](Self::bind)'s hook runs in interrupt context; the platform must call it only from there
/// or with interrupts masked, as [`IrqAck`] expects.
///
/// [`IrqAck`]: crate::wait::IrqAck
pub trait EventChannels {
    /// Allocates a port that domain `remote` may bind (`EVTCHNOP_alloc_unbound`).
    ///
    /// # Errors
    /// The platform's failure ([`Error::Hypercall`] from the guest kernel).
    fn alloc_unbound(&self, remote: DomId) -> Result<EvtchnPort>;

    /// Signals the remote end of `port` (`EVTCHNOP_send`).
    ///
    /// # Errors
    /// As [`alloc_unbound`](Self::alloc_unbound); a closed port.
    fn notify(&self, port: EvtchnPort) -> Result<()>;

    /// Routes events on `port` to `ack` and unmasks the port.
    ///
    /// # Errors
    /// As [`alloc_unbound`](Self::alloc_unbound).
    fn bind(&self, port: EvtchnPort, ack: SharedIrqAck) -> Result<()>;

    /// Unbinds and closes `port` (`EVTCHNOP_close`); its hook is never called again.
    fn close(&self, port: EvtchnPort);
}

impl<E: EventChannels + ?Sized> EventChannels for &E {
    fn alloc_unbound(&self, remote: DomId) -> Result<EvtchnPort> {
        (**self).alloc_unbound(remote)
    }

    fn notify(&self, port: EvtchnPort) -> Result<()> {
        (**self).notify(port)
    }

    fn bind(&self, port: EvtchnPort, ack: SharedIrqAck) -> Result<()> {
        (**self).bind(port, ack)
    }

    fn close(&self, port: EvtchnPort) {
        (**self).close(port);
    }
}

/// One port of an [`EventChannels`] as a ring's [`Notify`].
#[derive(Debug, Clone)]
pub struct PortNotify<E> {
    events: E,
    port: EvtchnPort,
}

impl<E: EventChannels> PortNotify<E> {
    /// Notifies `port` through `events`.
    pub fn new(events: E, port: EvtchnPort) -> Self {
        Self { events, port }
    }

    /// The port.
    pub fn port(&self) -> EvtchnPort {
        self.port
    }
}

impl<E: EventChannels> Notify for PortNotify<E> {
    fn notify(&self) -> ring_protocol::Result<()> {
        self.events
            .notify(self.port)
            .map_err(|e| ring_protocol::Error::NotifyFailed {
                status: match e {
                    Error::Hypercall { rc, .. } => i32::try_from(rc).unwrap_or(i32::MIN),
                    _ => -1,
                },
            })
    }
}

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

/// Test doubles: event channels in memory, with the peer's side (`raise`, `take_notifies`).
#[cfg(any(test, feature = "test-utils"))]
pub mod fake {
    use alloc::collections::BTreeMap;
    use alloc::vec::Vec;

    use super::*;

    /// First port handed out.
    pub const FIRST_PORT: EvtchnPort = 17;

    #[derive(Default)]
    struct Port {
        remote: DomId,
        notifies: u64,
        raised: u64,
        ack: Option<SharedIrqAck>,
        closed: bool,
    }

    /// Event channels in memory. The frontend side is [`EventChannels`]; a test playing the peer (or
    /// a real backend engine under test) reads the frontend's notifications with
    /// [`take_notifies`](Self::take_notifies) and sends events with [`raise`](Self::raise), which
    /// calls the hook the frontend bound, as the platform's upcall would. `Sync`: the peer may run on
    /// another thread.
    #[derive(Default)]
    pub struct FakeEventChannels {
        ports: spin::Mutex<BTreeMap<EvtchnPort, Port>>,
    }

    impl core::fmt::Debug for FakeEventChannels {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("FakeEventChannels")
                .field("ports", &self.ports.lock().keys().collect::<Vec<_>>())
                .finish()
        }
    }

    impl FakeEventChannels {
        /// No ports yet.
        pub fn new() -> Self {
            Self::default()
        }

        /// Every port allocated so far, closed ones included.
        pub fn ports(&self) -> Vec<EvtchnPort> {
            self.ports.lock().keys().copied().collect()
        }

        /// The domain `port` was allocated for.
        pub fn remote(&self, port: EvtchnPort) -> Option<DomId> {
            self.ports.lock().get(&port).map(|p| p.remote)
        }

        /// Notifications the frontend sent on `port` since the last call (the peer's view).
        pub fn take_notifies(&self, port: EvtchnPort) -> u64 {
            self.ports
                .lock()
                .get_mut(&port)
                .map_or(0, |p| core::mem::take(&mut p.notifies))
        }

        /// Whether `port` has a hook bound (and is open).
        pub fn is_bound(&self, port: EvtchnPort) -> bool {
            self.ports.lock().get(&port).is_some_and(|p| p.ack.is_some())
        }

        /// Whether `port` was closed.
        pub fn is_closed(&self, port: EvtchnPort) -> bool {
            self.ports.lock().get(&port).is_some_and(|p| p.closed)
        }

        /// Ports closed so far.
        pub fn closed(&self) -> usize {
            self.ports.lock().values().filter(|p| p.closed).count()
        }

        /// Events raised on `port` so far (delivered or not).
        pub fn raised(&self, port: EvtchnPort) -> u64 {
            self.ports.lock().get(&port).map_or(0, |p| p.raised)
        }

        /// The peer signals `port`: the bound hook runs (outside the lock). Returns whether a hook
        /// was bound to receive it.
        pub fn raise(&self, port: EvtchnPort) -> bool {
            let ack = {
                let mut ports = self.ports.lock();
                let Some(p) = ports.get_mut(&port) else {
                    return false;
                };
                p.raised += 1;
                p.ack.clone()
            };
            ack.is_some_and(|a| {
                a.ack();
                true
            })
        }

        /// Raises every bound port (a peer answering on all its devices at once).
        pub fn raise_all(&self) {
            let acks: Vec<SharedIrqAck> = self
                .ports
                .lock()
                .values_mut()
                .filter_map(|p| {
                    p.raised += u64::from(p.ack.is_some());
                    p.ack.clone()
                })
                .collect();
            for a in acks {
                a.ack();
            }
        }
    }

    fn closed_port(port: EvtchnPort) -> Error {
        Error::Hypercall {
            op: "evtchn (fake): closed or unknown port",
            rc: -i64::from(port),
        }
    }

    impl EventChannels for FakeEventChannels {
        fn alloc_unbound(&self, remote: DomId) -> Result<EvtchnPort> {
            let mut ports = self.ports.lock();
            let port = ports.keys().next_back().map_or(FIRST_PORT, |&p| p + 1);
            ports.insert(
                port,
                Port {
                    remote,
                    ..Port::default()
                },
            );
            Ok(port)
        }

        fn notify(&self, port: EvtchnPort) -> Result<()> {
            match self.ports.lock().get_mut(&port) {
                Some(p) if !p.closed => {
                    p.notifies += 1;
                    Ok(())
                }
                _ => Err(closed_port(port)),
            }
        }

        fn bind(&self, port: EvtchnPort, ack: SharedIrqAck) -> Result<()> {
            match self.ports.lock().get_mut(&port) {
                Some(p) if !p.closed => {
                    p.ack = Some(ack);
                    Ok(())
                }
                _ => Err(closed_port(port)),
            }
        }

        fn close(&self, port: EvtchnPort) {
            if let Some(p) = self.ports.lock().get_mut(&port) {
                p.closed = true;
                p.ack = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use alloc::sync::Arc;
    use alloc::vec::Vec;
    use core::sync::atomic::AtomicU32;

    use super::fake::{FIRST_PORT, FakeEventChannels};
    use super::*;
    use crate::wait::IrqAck;

    #[derive(Default)]
    struct Count(AtomicU32);
    impl IrqAck for Count {
        fn ack(&self) -> bool {
            self.0.fetch_add(1, Ordering::Relaxed);
            true
        }
    }

    #[test]
    fn fake_event_channels_deliver_both_ways_and_stop_at_close() {
        let ev = FakeEventChannels::new();
        let a = ev.alloc_unbound(0).unwrap();
        let b = EventChannels::alloc_unbound(&&ev, 5).unwrap();
        assert_eq!((a, b, ev.remote(b)), (FIRST_PORT, FIRST_PORT + 1, Some(5)));
        let n = PortNotify::new(&ev, a);
        n.notify().unwrap();
        n.notify().unwrap();
        assert_eq!(
            (ev.take_notifies(a), ev.take_notifies(a), ev.take_notifies(b)),
            (2, 0, 0)
        );
        assert!(!ev.raise(a), "nothing bound yet");
        let hook = Arc::new(Count::default());
        ev.bind(a, hook.clone()).unwrap();
        assert!(ev.raise(a) && ev.is_bound(a));
        ev.raise_all();
        assert_eq!(hook.0.load(Ordering::Relaxed), 2);
        ev.close(a);
        assert!(!ev.raise(a) && ev.is_closed(a) && ev.closed() == 1);
        assert_eq!(
            hook.0.load(Ordering::Relaxed),
            2,
            "a closed port's hook is never called"
        );
        assert_eq!(
            n.notify(),
            Err(ring_protocol::Error::NotifyFailed {
                status: -(FIRST_PORT as i32)
            })
        );
        assert!(ev.bind(a, hook).is_err());
        assert_eq!(
            ev.raised(a),
            4,
            "before the bind, after it, to all, after the close"
        );
    }

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
