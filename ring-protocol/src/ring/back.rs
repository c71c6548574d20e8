//! The backend (request-consuming) side of a shared ring.

use core::fmt;
use core::ptr::NonNull;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::raw::{REQ_EVENT, REQ_PROD, RSP_EVENT, RSP_PROD, RawRing};
use crate::sync::{Ordering, fence};
use crate::{Error, Result};

/// The backend's view of a shared ring: it consumes requests and produces responses
/// (`struct __name##_back_ring`).
///
/// Every method first checks whether the ring was halted by a misbehaving frontend and, if so, returns
/// that error again.
pub struct BackRing<Req, Rsp> {
    raw: RawRing<Req, Rsp>,
    /// Next slot to fill with a response (not yet visible to the frontend).
    rsp_prod_pvt: u32,
    /// Next request to consume.
    req_cons: u32,
    /// The response producer index we last published.
    rsp_pushed: u32,
    /// Validated request producer index from the last read of `req_prod`.
    req_prod_seen: u32,
    /// Set once the frontend misbehaved; returned by every later call.
    halted: Option<Error>,
}

// SAFETY: the ring owns no thread-bound state; the shared memory is accessed only through atomics and
// the constructor's contract keeps it valid wherever the ring is moved.
unsafe impl<Req: Send, Rsp: Send> Send for BackRing<Req, Rsp> {}

impl<Req, Rsp> BackRing<Req, Rsp>
where
    Req: FromBytes + IntoBytes + Immutable,
    Rsp: FromBytes + IntoBytes + Immutable,
{
    /// `BACK_RING_INIT`: a backend over a shared ring the frontend initialised, starting at index 0.
    ///
    /// # Errors
    /// [`Error::Misaligned`] unless `mem` is 4-byte aligned; [`Error::TooSmall`] if not one slot fits.
    ///
    /// # Safety
    /// `mem` must point to `len` bytes of memory that stay valid for the whole life of the returned ring,
    /// and that nobody in this address space accesses while the ring exists other than through atomic
    /// operations of the sizes the ring uses (the peer ring object does; a peer in another domain is
    /// outside the Rust memory model). No other `BackRing` may use the same memory.
    pub unsafe fn new(mem: NonNull<u8>, len: usize) -> Result<Self> {
        // SAFETY: forwarded from this function's contract.
        unsafe { Self::attach(mem, len, 0) }
    }

    /// `BACK_RING_ATTACH`: a backend over a ring already in use, with both private indices at `index`
    /// (every request before `index` answered).
    ///
    /// # Errors
    /// As [`BackRing::new`].
    ///
    /// # Safety
    /// As [`BackRing::new`].
    pub unsafe fn attach(mem: NonNull<u8>, len: usize, index: u32) -> Result<Self> {
        // SAFETY: forwarded from this function's contract.
        let raw = unsafe { RawRing::new(mem, len) }?;
        Ok(Self {
            raw,
            rsp_prod_pvt: index,
            req_cons: index,
            rsp_pushed: index,
            req_prod_seen: index,
            halted: None,
        })
    }

    /// `SHARED_RING_INIT`: resets the shared header (producers 0, events 1, padding zeroed). Normally the
    /// frontend does this; offered for backends that own the ring memory.
    pub fn init_shared(&self) {
        self.raw.init_shared();
    }

    /// Number of slots (`RING_SIZE`).
    pub fn size(&self) -> u32 {
        self.raw.size()
    }

    /// Private response producer index (`rsp_prod_pvt`).
    pub fn rsp_prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt
    }

    /// Request consumer index (`req_cons`).
    pub fn req_cons(&self) -> u32 {
        self.req_cons
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

    /// Requests read but not yet answered with [`write_response`](Self::write_response).
    pub fn unanswered_requests(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// Reads `req_prod` and validates it against `RING_REQUEST_PROD_OVERFLOW`: requests pending plus
    /// requests read but unanswered cannot exceed the ring size, and the index cannot go backwards. On
    /// violation the ring is halted.
    fn refresh_requests(&mut self) -> Result<u32> {
        // Acquire (xen_rmb): the request slots written before the frontend's Release store of req_prod
        // are visible to our slot reads after this load.
        let req_prod = self.raw.header(REQ_PROD).load(Ordering::Acquire);
        let ahead = req_prod.wrapping_sub(self.req_cons);
        let room = self.size() - self.unanswered_requests();
        if ahead > room {
            let e = Error::RequestOverrun {
                req_prod,
                req_cons: self.req_cons,
                ahead,
                room,
                size: self.size(),
            };
            self.halted = Some(e);
            return Err(e);
        }
        self.req_prod_seen = req_prod;
        Ok(ahead)
    }

    /// Number of published, unconsumed requests (`RING_HAS_UNCONSUMED_REQUESTS`), after validating the
    /// frontend's producer index.
    ///
    /// # Errors
    /// [`Error::RequestOverrun`] (and the ring halts) if `req_prod` claims more requests than the ring
    /// can hold; the halting error if the ring is already halted.
    pub fn unconsumed_requests(&mut self) -> Result<u32> {
        self.check()?;
        self.refresh_requests()
    }

    /// Copies the next request out of shared memory and consumes it, or returns `None` if the frontend
    /// has published no further request. The shared `req_prod` is re-read only when the requests seen at
    /// the last read are used up.
    ///
    /// # Errors
    /// As [`unconsumed_requests`](Self::unconsumed_requests).
    pub fn read_request(&mut self) -> Result<Option<Req>> {
        self.check()?;
        if self.req_cons == self.req_prod_seen && self.refresh_requests()? == 0 {
            return Ok(None);
        }
        let req = self.raw.read_slot::<Req>(self.req_cons);
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// Copies `rsp` whole into the next response slot, advancing `rsp_prod_pvt`. The frontend does not
    /// see it until [`push_responses`](Self::push_responses) or
    /// [`push_responses_and_check_notify`](Self::push_responses_and_check_notify).
    ///
    /// # Errors
    /// [`Error::NoRequestToAnswer`] if every request read has already been answered (a response slot is
    /// only ours once its request was read); the halting error if the ring is halted.
    pub fn write_response(&mut self, rsp: &Rsp) -> Result<()> {
        self.check()?;
        if self.unanswered_requests() == 0 {
            return Err(Error::NoRequestToAnswer {
                rsp_prod_pvt: self.rsp_prod_pvt,
                req_cons: self.req_cons,
            });
        }
        self.raw.write_slot(self.rsp_prod_pvt, rsp);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes the queued responses without deciding about a notification (`RING_PUSH_RESPONSES`).
    ///
    /// # Errors
    /// The halting error if the ring is halted.
    pub fn push_responses(&mut self) -> Result<()> {
        self.check()?;
        // Release (xen_wmb): the frontend sees the response slots (and our reads of those slots'
        // requests are done) before it sees the new rsp_prod.
        self.raw
            .header(RSP_PROD)
            .store(self.rsp_prod_pvt, Ordering::Release);
        self.rsp_pushed = self.rsp_prod_pvt;
        Ok(())
    }

    /// Publishes the queued responses and returns whether the frontend must be notified
    /// (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`): true iff `rsp_event` lies in `(old, new]` in wrapping
    /// arithmetic.
    ///
    /// # Errors
    /// The halting error if the ring is halted.
    pub fn push_responses_and_check_notify(&mut self) -> Result<bool> {
        self.check()?;
        let old = self.rsp_pushed;
        let new = self.rsp_prod_pvt;
        // Release (xen_wmb): the frontend sees the response slots before it sees the new rsp_prod.
        self.raw.header(RSP_PROD).store(new, Ordering::Release);
        self.rsp_pushed = new;
        // SeqCst fence (xen_mb): our rsp_prod store is ordered before our rsp_event load; pairs with the
        // fence in the frontend's final check, so either it sees our responses or we see its new event.
        fence(Ordering::SeqCst);
        let event = self.raw.header(RSP_EVENT).load(Ordering::Relaxed);
        Ok(new.wrapping_sub(event) < new.wrapping_sub(old))
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: returns true if requests are waiting. Otherwise re-arms
    /// `req_event = req_cons + 1` so the frontend notifies us on its next request, and checks once more
    /// to close the race with a request published meanwhile. When this returns false it is safe to sleep
    /// until notified.
    ///
    /// # Errors
    /// As [`unconsumed_requests`](Self::unconsumed_requests).
    pub fn final_check_for_requests(&mut self) -> Result<bool> {
        self.check()?;
        if self.refresh_requests()? > 0 {
            return Ok(true);
        }
        self.raw
            .header(REQ_EVENT)
            .store(self.req_cons.wrapping_add(1), Ordering::Relaxed);
        // SeqCst fence (xen_mb): our req_event store is ordered before our re-read of req_prod; pairs
        // with the fence in the frontend's push-and-check-notify, so either we see its request or it sees
        // our event and notifies.
        fence(Ordering::SeqCst);
        Ok(self.refresh_requests()? > 0)
    }
}

impl<Req, Rsp> fmt::Debug for BackRing<Req, Rsp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackRing")
            .field("size", &self.raw.size())
            .field("rsp_prod_pvt", &self.rsp_prod_pvt)
            .field("req_cons", &self.req_cons)
            .field("rsp_pushed", &self.rsp_pushed)
            .field("halted", &self.halted)
            .finish_non_exhaustive()
    }
}
