//! The Xen PV console as a [`ConsoleDevice`]: the guest end of a console ring page
//! (`ring_protocol::byte_ring::console_guest`) plus the event channel that notifies the console
//! backend (xenconsoled for the primary console). Output goes into `out`, input comes from `in`;
//! any byte moved in either direction notifies the backend (a writer may wait for room).
//!
//! - [`XenConsole`]: a console over a ring page and a notification, as the kernel's primary console
//!   (the page and event channel named in `start_info`) uses it;
//! - [`SecondaryConsole`]: a xenbus device of kind `console` (`device/console/<n>`, n >= 1; the
//!   backend is not xenconsoled but whoever serves that device, e.g. pvkit's daemon): the frontend
//!   allocates and grants the page (`struct xencons_interface`), allocates an event channel for the
//!   backend, publishes `ring-ref` and `port` and says `Initialised`, then `Connected` once the
//!   backend is.

use alloc::format;
use alloc::sync::Arc;
use core::ptr::NonNull;

use ring_protocol::abi::console::XenconsInterface;
use ring_protocol::abi::event_channel::EvtchnPort;
use ring_protocol::byte_ring::{Duplex, console_guest};
use ring_protocol::platform::{Access, Notify};

use super::evtchn::{EventChannels, PortNotify};
use super::grant::Granted;
use super::xenbus::{self, XenbusDevice, XenbusState};
use super::xenstore::{NO_TX, XenStore};
use super::{GrantMemory, XenPlatform};
use crate::console::ConsoleDevice;
use crate::counters::{AtomicCounters, Counters};
use crate::dma::{DmaBuf, PAGE_SIZE};
use crate::wait::{IrqAck, SharedIrqAck, Waiter};
use crate::{Error, Result};

#[derive(Debug, Default)]
struct Irq {
    counters: AtomicCounters,
}

impl IrqAck for Irq {
    fn ack(&self) -> bool {
        self.counters.interrupted();
        true
    }
}

/// A console ring and its notification. Creating one does not allocate (the kernel's primary
/// console is set up before its heap); the interrupt hook is allocated on first [`irq_ack`].
///
/// [`irq_ack`]: ConsoleDevice::irq_ack
pub struct XenConsole<N: Notify> {
    ring: Duplex,
    notify: N,
    counters: AtomicCounters,
    irq: spin::Once<Arc<Irq>>,
}

impl<N: Notify> core::fmt::Debug for XenConsole<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XenConsole").field("ring", &self.ring).finish()
    }
}

impl<N: Notify> XenConsole<N> {
    /// A console over `ring` (from `console_guest`), notifying through `notify`.
    pub fn new(ring: Duplex, notify: N) -> Self {
        Self {
            ring,
            notify,
            counters: AtomicCounters::default(),
            irq: spin::Once::new(),
        }
    }

    fn kick(&self) -> Result<()> {
        self.counters.notified(1);
        self.notify.notify().map_err(Error::Ring)
    }

    /// Whether the backend has consumed every byte written.
    pub fn drained(&mut self) -> Result<bool> {
        let free = self.ring.tx.free_space().map_err(Error::Ring)?;
        Ok(free == self.ring.tx.size())
    }

    /// Notifies the backend (e.g. while waiting for it to drain).
    pub fn poke(&self) -> Result<()> {
        self.kick()
    }
}

impl<N: Notify> ConsoleDevice for XenConsole<N> {
    fn name(&self) -> &'static str {
        "xen-console"
    }

    fn write(&mut self, data: &[u8]) -> Result<usize> {
        let t = self.ring.tx.write(data).map_err(Error::Ring)?;
        if t.notify {
            self.kick()?;
        }
        Ok(t.bytes)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let t = self.ring.rx.read(buf).map_err(Error::Ring)?;
        if t.notify {
            self.kick()?;
        }
        self.counters.copied(t.bytes as u64);
        Ok(t.bytes)
    }

    fn irq_ack(&self) -> Option<SharedIrqAck> {
        Some(self.irq.call_once(|| Arc::new(Irq::default())).clone())
    }

    fn counters(&self) -> Counters {
        let mut c = self.counters.snapshot();
        c.interrupts = self.irq.get().map_or(0, |i| i.counters.snapshot().interrupts);
        c
    }
}

/// XenStore keys of the console device.
mod keys {
    pub const RING_REF: &str = "ring-ref";
    pub const PORT: &str = "port";
}

/// A secondary PV console (`device/console/<n>`) over the platform `XenPlatform<G, E>`: see the
/// module documentation.
pub struct SecondaryConsole<G: GrantMemory, E: EventChannels + Clone> {
    dev: XenbusDevice,
    /// Declared before `page`: the ring's pointers go before its memory.
    con: XenConsole<PortNotify<E>>,
    /// The shared page and its grant.
    page: Option<Granted<G>>,
    events: E,
    port: EvtchnPort,
}

impl<G: GrantMemory, E: EventChannels + Clone> core::fmt::Debug for SecondaryConsole<G, E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SecondaryConsole")
            .field("dev", &self.dev)
            .field("grant", &self.page.as_ref().map(Granted::refs))
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl<G: GrantMemory, E: EventChannels + Clone> SecondaryConsole<G, E> {
    /// Connects to `dev`'s backend over `platform` (every handshake step waits at most `timeout_us`).
    ///
    /// # Errors
    /// A XenStore failure, [`Error::XenbusTimeout`], grant or event channel failures; the page's grant
    /// is ended (or the page abandoned to the backend, if it keeps it) and the event channel closed.
    pub fn connect<N: Notify>(
        xs: &mut XenStore<N>,
        w: &dyn Waiter,
        platform: XenPlatform<G, E>,
        dev: XenbusDevice,
        timeout_us: u64,
    ) -> Result<Self> {
        xenbus::set_state(xs, w, NO_TX, &dev, XenbusState::Initialising)?;
        xenbus::wait_backend(
            xs,
            w,
            &dev,
            "InitWait (ready for the frontend's details)",
            |s| matches!(s, XenbusState::InitWait | XenbusState::Connected),
            timeout_us,
        )?;
        let buf = DmaBuf::new(platform.dma, PAGE_SIZE)?;
        let intf = NonNull::new(buf.as_ptr().cast_mut().cast::<XenconsInterface>()).expect("DMA page");
        // SAFETY: a zeroed, page-aligned DmaBuf (larger than `XenconsInterface`) that moves into the
        // `Granted` kept in `self` (its memory does not move) as long as the ring, shared only with
        // the backend through its grant; this is its only guest end.
        let ring = unsafe { console_guest(intf) }.map_err(Error::Ring)?;
        let page = Granted::new(platform.grants.clone(), dev.backend_id, buf, Access::ReadWrite)
            .map_err(|e| Error::Ring(e.error))?;
        let port = platform.events.alloc_unbound(dev.backend_id)?;
        let events = platform.events.clone();
        let con = XenConsole::new(ring, PortNotify::new(platform.events, port));
        let gref = page.refs()[0];
        let mut me = Self {
            dev,
            con,
            page: Some(page),
            events,
            port,
        };
        let d = &me.dev;
        let handshake = (|| {
            xs.transaction(w, |xs, t| {
                xs.write(w, t, &d.fe(keys::RING_REF), format!("{gref}").as_bytes())?;
                xs.write(w, t, &d.fe(keys::PORT), format!("{port}").as_bytes())?;
                xenbus::set_state(xs, w, t, d, XenbusState::Initialised)
            })?;
            xenbus::wait_backend(xs, w, d, "Connected", |s| s == XenbusState::Connected, timeout_us)?;
            xenbus::set_state(xs, w, NO_TX, d, XenbusState::Connected)?;
            let ack = me.con.irq_ack().expect("a Xen console has an interrupt hook");
            me.events.bind(port, ack)
        })();
        match handshake {
            Ok(()) => Ok(me),
            Err(e) => {
                me.release();
                Err(e)
            }
        }
    }

    /// Closes the event channel and ends the page's grant; a page the backend still maps is
    /// abandoned to it (never freed or reused, counted by the grant mechanism). Returns whether it
    /// had to be kept.
    fn release(&mut self) -> bool {
        self.events.close(self.port);
        match self.page.take().map(Granted::revoke) {
            Some(Err(held)) => {
                drop(held);
                true
            }
            _ => false,
        }
    }

    /// The xenbus device.
    pub fn device(&self) -> &XenbusDevice {
        &self.dev
    }

    /// Closes the device (frontend `Closing`, backend closes, frontend `Closed`), then closes the
    /// event channel and ends the page's grant; a page the backend still maps is abandoned to it,
    /// never reused. Returns the backend state seen and whether the page had to be kept.
    ///
    /// # Errors
    /// The handshake's failure ([`Error::XenbusTimeout`] if the backend does not close); the
    /// resources are released either way.
    pub fn disconnect<N: Notify>(
        mut self,
        xs: &mut XenStore<N>,
        w: &dyn Waiter,
        timeout_us: u64,
    ) -> Result<(XenbusState, bool)> {
        let closed = xenbus::close(xs, w, &self.dev, timeout_us);
        let kept = self.release();
        Ok((closed?, kept))
    }
}

impl<G: GrantMemory, E: EventChannels + Clone> Drop for SecondaryConsole<G, E> {
    /// Without [`disconnect`](Self::disconnect): closes the event channel; the page's grant ends, or
    /// the page is abandoned to the backend if it still holds it.
    fn drop(&mut self) {
        if self.page.is_some() {
            self.release();
        }
    }
}

impl<G: GrantMemory, E: EventChannels + Clone> ConsoleDevice for SecondaryConsole<G, E> {
    fn name(&self) -> &'static str {
        "xen-console"
    }

    fn write(&mut self, data: &[u8]) -> Result<usize> {
        self.con.write(data)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.con.read(buf)
    }

    fn irq_ack(&self) -> Option<SharedIrqAck> {
        self.con.irq_ack()
    }

    fn counters(&self) -> Counters {
        self.con.counters()
    }
}

#[cfg(test)]
mod secondary_tests;

#[cfg(test)]
mod tests {
    use alloc::boxed::Box;
    use alloc::vec::Vec;
    use core::cell::Cell;
    use core::ptr::NonNull;

    use ring_protocol::abi::console::XenconsInterface;
    use ring_protocol::byte_ring::{console_backend, console_guest};
    use zerocopy::FromZeros;

    use super::*;

    struct Kicks<'a>(&'a Cell<u64>);
    impl Notify for Kicks<'_> {
        fn notify(&self) -> ring_protocol::Result<()> {
            self.0.set(self.0.get() + 1);
            Ok(())
        }
    }

    #[test]
    fn output_reaches_the_backend_intact_and_input_reaches_the_guest() {
        let page: &'static mut XenconsInterface = Box::leak(Box::new(XenconsInterface::new_zeroed()));
        let p = NonNull::from(page);
        // SAFETY: leaked page, one guest end and one backend end.
        let guest = unsafe { console_guest(p) }.unwrap();
        // SAFETY: as above.
        let mut backend = unsafe { console_backend(p) }.unwrap();
        let kicks = Cell::new(0);
        let mut con = XenConsole::new(guest, Kicks(&kicks));
        // 5000 bytes through a 2048-byte ring: the writer takes what fits; the backend drains.
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 256) as u8).collect();
        let mut sent = 0;
        let mut got = Vec::new();
        let mut buf = [0u8; 700];
        while got.len() < data.len() {
            sent += con.write(&data[sent..]).unwrap();
            assert!(sent <= data.len());
            let n = backend.rx.read(&mut buf).unwrap().bytes;
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, data);
        assert!(con.drained().unwrap());
        // Input typed at the console.
        backend.tx.write(b"typed by dom0\n").unwrap();
        let mut inbuf = [0u8; 64];
        let n = con.read(&mut inbuf).unwrap();
        assert_eq!(&inbuf[..n], b"typed by dom0\n");
        assert_eq!(con.read(&mut inbuf).unwrap(), 0);
        let c = con.counters();
        assert_eq!(c.notifications, kicks.get());
        assert!(
            kicks.get() >= 4,
            "writes and reads notify the backend ({})",
            kicks.get()
        );
        assert_eq!(c.bytes_copied, 14);
    }

    #[test]
    fn hostile_backend_console_indices_past_the_ring_halt_it_with_a_typed_error() {
        let page: &'static mut XenconsInterface = Box::leak(Box::new(XenconsInterface::new_zeroed()));
        let p = NonNull::from(page);
        // SAFETY: leaked page, one guest end; the test plays the backend through raw writes.
        let guest = unsafe { console_guest(p) }.unwrap();
        let kicks = Cell::new(0);
        let mut con = XenConsole::new(guest, Kicks(&kicks));
        assert_eq!(con.write(b"hello").unwrap(), 5);
        // The backend claims to have consumed 5000 bytes of output and produced 70000 of input.
        let index = |offset: usize| p.as_ptr().cast::<u8>().wrapping_add(offset).cast::<u32>();
        let out_cons = index(core::mem::offset_of!(XenconsInterface, out_cons));
        let in_prod = index(core::mem::offset_of!(XenconsInterface, in_prod));
        // SAFETY: an aligned index field of the leaked page, written as the backend would.
        unsafe { out_cons.write_volatile(5000) };
        // SAFETY: as above.
        unsafe { in_prod.write_volatile(70000) };
        let e = con.write(b"more").unwrap_err();
        assert!(
            matches!(e, Error::Ring(ring_protocol::Error::ByteRingOverrun { .. })),
            "{e:?}"
        );
        let mut buf = [0u8; 64];
        let e = con.read(&mut buf).unwrap_err();
        assert!(
            matches!(e, Error::Ring(ring_protocol::Error::ByteRingOverrun { .. })),
            "{e:?}"
        );
        assert!(con.write(b"x").is_err(), "halted for good");
    }
}
