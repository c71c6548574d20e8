//! The frontend (request-producing) side of a shared ring.

use core::fmt;
use core::ptr::NonNull;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::raw::{REQ_EVENT, REQ_PROD, RSP_EVENT, RSP_PROD, RawRing};
use crate::sync::{Ordering, fence};
use crate::{Error, Result};

/// The frontend's view of a shared ring: it produces requests and consumes responses
/// (`struct __name##_front_ring`).
///
/// The shared pages are reached through a pointer; the private indices live here. Every method first
/// checks whether the ring was halted by a misbehaving backend and, if so, returns that error again.
pub struct FrontRing<Req, Rsp> {
    raw: RawRing<Req, Rsp>,
    /// Next slot to fill with a request (not yet visible to the backend).
    req_prod_pvt: u32,
    /// Next response to consume.
    rsp_cons: u32,
    /// The request producer index we last published (ring.h re-reads it from shared memory; keeping
    /// our own copy means a backend scribbling on it cannot confuse us).
    req_pushed: u32,
    /// Validated response producer index from the last read of `rsp_prod`.
    rsp_prod_seen: u32,
    /// Set once the backend misbehaved; returned by every later call.
    halted: Option<Error>,
}

// SAFETY: the ring owns no thread-bound state; the shared memory is accessed only through atomics and
// the constructor's contract keeps it valid wherever the ring is moved.
unsafe impl<Req: Send, Rsp: Send> Send for FrontRing<Req, Rsp> {}

impl<Req, Rsp> FrontRing<Req, Rsp>
where
    Req: FromBytes + IntoBytes + Immutable,
    Rsp: FromBytes + IntoBytes + Immutable,
{
    /// `FRONT_RING_INIT`: a frontend over an already initialised shared ring, starting at index 0.
    ///
    /// # Errors
    /// [`Error::Misaligned`] unless `mem` is 4-byte aligned; [`Error::TooSmall`] if not one slot fits.
    ///
    /// # Safety
    /// `mem` must point to `len` bytes of memory that stay valid for the whole life of the returned ring,
    /// and that nobody in this address space accesses while the ring exists other than through atomic
    /// operations of the sizes the ring uses (the peer ring object does; a peer in another domain is
    /// outside the Rust memory model). No other `FrontRing` may use the same memory.
    pub unsafe fn new(mem: NonNull<u8>, len: usize) -> Result<Self> {
        // SAFETY: forwarded from this function's contract.
        unsafe { Self::attach(mem, len, 0) }
    }

    /// `XEN_FRONT_RING_INIT`: initialises the shared header (`SHARED_RING_INIT`) and returns a frontend
    /// at index 0.
    ///
    /// # Errors
    /// As [`FrontRing::new`].
    ///
    /// # Safety
    /// As [`FrontRing::new`].
    pub unsafe fn init(mem: NonNull<u8>, len: usize) -> Result<Self> {
        // SAFETY: forwarded from this function's contract.
        let ring = unsafe { Self::new(mem, len) }?;
        ring.init_shared();
        Ok(ring)
    }

    /// `FRONT_RING_ATTACH`: a frontend over a ring already in use, with both private indices at `index`
    /// (no requests outstanding).
    ///
    /// # Errors
    /// As [`FrontRing::new`].
    ///
    /// # Safety
    /// As [`FrontRing::new`].
    pub unsafe fn attach(mem: NonNull<u8>, len: usize, index: u32) -> Result<Self> {
        // SAFETY: forwarded from this function's contract.
        let raw = unsafe { RawRing::new(mem, len) }?;
        Ok(Self {
            raw,
            req_prod_pvt: index,
            rsp_cons: index,
            req_pushed: index,
            rsp_prod_seen: index,
            halted: None,
        })
    }

    /// `SHARED_RING_INIT`: resets the shared header (producers 0, events 1, padding zeroed). Only
    /// meaningful before the backend connects, with the private indices at 0.
    pub fn init_shared(&self) {
        self.raw.init_shared();
    }

    /// Number of slots (`RING_SIZE`).
    pub fn size(&self) -> u32 {
        self.raw.size()
    }

    /// Private request producer index (`req_prod_pvt`).
    pub fn req_prod_pvt(&self) -> u32 {
        self.req_prod_pvt
    }

    /// Response consumer index (`rsp_cons`).
    pub fn rsp_cons(&self) -> u32 {
        self.rsp_cons
    }

    /// The error that halted this ring, if any.
    pub fn halted(&self) -> Option<Error> {
        self.halted
    }

    fn check(&self) -> Result<()> {
        match self.halted {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Slots free for new requests (`RING_FREE_REQUESTS`). Computed from private indices only.
    pub fn free_requests(&self) -> u32 {
        self.size() - self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Whether no request can be queued until responses are consumed (`RING_FULL`).
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// Copies `req` whole into the next free slot, advancing `req_prod_pvt`. The backend does not see
    /// it until [`push_requests`](Self::push_requests) or
    /// [`push_requests_and_check_notify`](Self::push_requests_and_check_notify).
    ///
    /// # Errors
    /// [`Error::RingFull`] if every slot holds a request not yet answered and consumed; the halting error
    /// if the ring is halted.
    pub fn write_request(&mut self, req: &Req) -> Result<()> {
        self.check()?;
        if self.is_full() {
            return Err(Error::RingFull { size: self.size() });
        }
        self.raw.write_slot(self.req_prod_pvt, req);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes the queued requests without deciding about a notification (`RING_PUSH_REQUESTS`).
    ///
    /// # Errors
    /// The halting error if the ring is halted.
    pub fn push_requests(&mut self) -> Result<()> {
        self.check()?;
        // Release (xen_wmb): the backend sees the request slots before it sees the new req_prod.
        self.raw
            .header(REQ_PROD)
            .store(self.req_prod_pvt, Ordering::Release);
        self.req_pushed = self.req_prod_pvt;
        Ok(())
    }

    /// Publishes the queued requests and returns whether the backend must be notified
    /// (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`): true iff `req_event` lies in `(old, new]` in wrapping
    /// arithmetic, i.e. the backend asked to be woken by one of the requests just published.
    ///
    /// # Errors
    /// The halting error if the ring is halted.
    pub fn push_requests_and_check_notify(&mut self) -> Result<bool> {
        self.check()?;
        let old = self.req_pushed;
        let new = self.req_prod_pvt;
        // Release (xen_wmb): the backend sees the request slots before it sees the new req_prod.
        self.raw.header(REQ_PROD).store(new, Ordering::Release);
        self.req_pushed = new;
        // SeqCst fence (xen_mb): our req_prod store is ordered before our req_event load; pairs with the
        // fence in the backend's final check, so either it sees our requests or we see its new event.
        fence(Ordering::SeqCst);
        let event = self.raw.header(REQ_EVENT).load(Ordering::Relaxed);
        Ok(new.wrapping_sub(event) < new.wrapping_sub(old))
    }

    /// Reads `rsp_prod` and validates it: the backend cannot have answered more requests than were
    /// published, nor can its index go backwards. On violation the ring is halted.
    fn refresh_responses(&mut self) -> Result<u32> {
        // Acquire (xen_rmb): the response slots written before the backend's Release store of rsp_prod are
        // visible to our slot reads after this load.
        let rsp_prod = self.raw.header(RSP_PROD).load(Ordering::Acquire);
        let ahead = rsp_prod.wrapping_sub(self.rsp_cons);
        let outstanding = self.req_pushed.wrapping_sub(self.rsp_cons);
        if ahead > outstanding {
            let e = Error::ResponseOverrun {
                rsp_prod,
                rsp_cons: self.rsp_cons,
                ahead,
                outstanding,
            };
            self.halted = Some(e);
            return Err(e);
        }
        self.rsp_prod_seen = rsp_prod;
        Ok(ahead)
    }

    /// Number of published, unconsumed responses (`RING_HAS_UNCONSUMED_RESPONSES`), after validating the
    /// backend's producer index.
    ///
    /// # Errors
    /// [`Error::ResponseOverrun`] (and the ring halts) if `rsp_prod` claims more responses than requests
    /// are outstanding; the halting error if the ring is already halted.
    pub fn unconsumed_responses(&mut self) -> Result<u32> {
        self.check()?;
        self.refresh_responses()
    }

    /// Copies the next response out of shared memory and consumes it, or returns `None` if the backend
    /// has published no further response. The shared `rsp_prod` is re-read only when the responses seen
    /// at the last read are used up.
    ///
    /// # Errors
    /// As [`unconsumed_responses`](Self::unconsumed_responses).
    pub fn read_response(&mut self) -> Result<Option<Rsp>> {
        self.check()?;
        if self.rsp_cons == self.rsp_prod_seen && self.refresh_responses()? == 0 {
            return Ok(None);
        }
        let rsp = self.raw.read_slot::<Rsp>(self.rsp_cons);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`: returns true if responses are waiting. Otherwise re-arms
    /// `rsp_event = rsp_cons + 1` so the backend notifies us on its next response, and checks once more
    /// to close the race with a response published meanwhile. When this returns false it is safe to
    /// sleep until notified.
    ///
    /// # Errors
    /// As [`unconsumed_responses`](Self::unconsumed_responses).
    pub fn final_check_for_responses(&mut self) -> Result<bool> {
        self.check()?;
        if self.refresh_responses()? > 0 {
            return Ok(true);
        }
        self.raw
            .header(RSP_EVENT)
            .store(self.rsp_cons.wrapping_add(1), Ordering::Relaxed);
        // SeqCst fence (xen_mb): our rsp_event store is ordered before our re-read of rsp_prod; pairs
        // with the fence in the backend's push-and-check-notify, so either we see its response or it
        // sees our event and notifies.
        fence(Ordering::SeqCst);
        Ok(self.refresh_responses()? > 0)
    }
}

impl<Req, Rsp> fmt::Debug for FrontRing<Req, Rsp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrontRing")
            .field("size", &self.raw.size())
            .field("req_prod_pvt", &self.req_prod_pvt)
            .field("rsp_cons", &self.rsp_cons)
            .field("req_pushed", &self.req_pushed)
            .field("halted", &self.halted)
            .finish_non_exhaustive()
    }
}
