//! The kernel's XenStore connection: the client from `pvkit_frontends::xen::xenstore` over the ring
//! page and event channel named in `start_info`, plus the [`XenWaiter`] every Xen frontend waits with
//! (Xen system time as the clock; idling blocks the vCPU until an event or a 10 ms timeout).
//! Notifications go through the frontends' `PortNotify` on the kernel's event channels.

use core::ptr::NonNull;

use pvkit_frontends::wait::{WaitMode, Waiter};
use pvkit_frontends::xen::evtchn::PortNotify;
use pvkit_frontends::xen::xenstore::XenStore;
use ring_protocol::abi::event_channel::EvtchnPort;
use ring_protocol::abi::xenstore::XenstoreDomainInterface;
use ring_protocol::byte_ring::xenstore_guest;

use super::devices::KernelEvents;
use crate::arch::x86_64::cpu;

/// Longest single sleep of [`XenWaiter::idle`].
const IDLE_SLICE_NS: u64 = 10_000_000;

/// Notifies the peer of one of the kernel's event channels.
pub type EvtchnNotify = PortNotify<KernelEvents>;

/// Clock and idle for Xen frontends.
#[derive(Debug, Clone, Copy)]
pub struct XenWaiter {
    /// `Interrupt`: block until an event; `Poll`: spin.
    pub mode: WaitMode,
}

impl Waiter for XenWaiter {
    fn now_us(&self) -> u64 {
        super::time::now_ns() / 1000
    }

    fn now_ns(&self) -> u64 {
        super::time::now_ns()
    }

    fn mode(&self) -> WaitMode {
        self.mode
    }

    fn idle(&self, ready: &mut dyn FnMut() -> bool) -> bool {
        if self.mode == WaitMode::Poll {
            core::hint::spin_loop();
            return ready();
        }
        // Evaluate with upcalls masked; SCHEDOP_block then unmasks and sleeps atomically, so an event
        // that came after `ready` looked returns at once.
        cpu::disable_interrupts();
        if ready() {
            cpu::enable_interrupts();
            return true;
        }
        super::time::block_until(super::time::now_ns() + IDLE_SLICE_NS);
        ready()
    }
}

/// The client type the kernel uses.
pub type Client = XenStore<EvtchnNotify>;

static CLIENT: spin::Mutex<Option<Client>> = spin::Mutex::new(None);

fn wake(_: EvtchnPort) {}

/// Runs `f` with the XenStore client, connecting on first use.
pub fn with<T>(f: impl FnOnce(&mut Client) -> T) -> Result<T, alloc::string::String> {
    let mut guard = CLIENT.lock();
    if guard.is_none() {
        let s = super::start().ok_or("not a Xen PV domain")?;
        if super::is_initial_domain() {
            return Err("dom0 has no XenStore ring at boot".into());
        }
        let va = super::memory::mfn_to_virt(s.si.store_mfn);
        let page = NonNull::new(va as *mut XenstoreDomainInterface).ok_or("XenStore page at 0")?;
        // SAFETY: the XenStore page is a bootstrap element, mapped writable for the whole run and
        // shared only with xenstored; this is its only guest end (created once, under CLIENT's lock).
        let ring = unsafe { xenstore_guest(page) }.map_err(|e| alloc::format!("XenStore ring: {e}"))?;
        let port = s.si.store_evtchn;
        super::events::set_handler(port, wake)
            .map_err(|e| alloc::format!("XenStore event channel {port}: {e}"))?;
        *guard = Some(XenStore::new(ring, PortNotify::new(KernelEvents, port)));
    }
    Ok(f(guard.as_mut().expect("connected above")))
}
