//! The frontend turned hostile on purpose, to test backends: only with the `hostile-frontend` feature,
//! which the guest kernel enables for its `blk-hostile@xen-blk` scenario. Production users of the
//! crate never compile it.

use ring_protocol::platform::Notify;

use super::{BlkFront, protocol};
use crate::xen::GrantMemory;
use crate::xen::evtchn::{EventChannels, PortNotify};
use crate::{Error, Result};

impl<G: GrantMemory, E: EventChannels> BlkFront<G, E> {
    /// Robustness testing of backends only (feature `hostile-frontend`): behaves like a hostile frontend by publishing a request
    /// producer index more than a ring's worth of slots ahead of the last response (no correct
    /// frontend can), then notifies. A correct backend refuses the ring; this device must not be
    /// used for I/O afterwards. Returns the index published.
    pub fn publish_impossible_requests(&mut self) -> Result<u32> {
        let (Some(mem), Some(port)) = (self.ring_mem.as_ref(), self.port) else {
            return Err(protocol("ring (already disconnected)", 0));
        };
        let bogus = self
            .ring
            .req_prod_pvt()
            .wrapping_add(self.ring.size())
            .wrapping_add(7);
        // SAFETY: the ring's first 4 bytes are the shared `req_prod`, 4-byte aligned at the start of
        // our ring page, which stays allocated in `self`; the ring and the backend only access it
        // atomically.
        let req_prod = unsafe { core::sync::atomic::AtomicU32::from_ptr(mem.as_ptr().cast_mut().cast()) };
        // Release: like a real publication, the (garbage) index is seen after everything before it.
        req_prod.store(bogus, core::sync::atomic::Ordering::Release);
        PortNotify::new(&self.platform.events, port)
            .notify()
            .map_err(Error::Ring)?;
        Ok(bogus)
    }
}
