//! The Xen PV console as a [`ConsoleDevice`]: the guest end of a console ring page
//! (`ring_protocol::byte_ring::console_guest`) plus the event channel that notifies the console
//! backend (xenconsoled for the primary console). Output goes into `out`, input comes from `in`;
//! any byte moved in either direction notifies the backend (a writer may wait for room).

use alloc::sync::Arc;

use ring_protocol::byte_ring::Duplex;
use ring_protocol::platform::Notify;

use crate::console::ConsoleDevice;
use crate::counters::{AtomicCounters, Counters};
use crate::wait::{IrqAck, SharedIrqAck};
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
