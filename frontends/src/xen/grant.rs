//! Grant tables, version 1: the guest's side of sharing its pages with another domain.
//!
//! The table is an array of [`GrantEntryV1`] in frames Xen set up (`GNTTABOP_setup_table`, done by
//! the platform, which hands the mapped array to [`GrantTable::new`] together with the function that
//! tells which frame a peer uses for a page of ours: the machine frame from the p2m list for a PV
//! guest, the guest frame for PVH and HVM). Granting fills `frame` and
//! `domid`, then publishes `flags` (`GTF_permit_access`, `GTF_readonly`) with a release store, so
//! Xen never sees a half-written entry. Ending access clears `flags` with a compare-and-exchange
//! that fails if Xen has set `GTF_reading`/`GTF_writing` (the peer has the page mapped or is copying
//! it): that grant is reported as [`ring_protocol::Error::GrantInUse`] and stays granted, so its
//! page is never silently reused while the peer can still reach it.
//!
//! References `0..GNTTAB_NR_RESERVED_ENTRIES` belong to the toolstack (console, XenStore) and are
//! never handed out. Implements [`ShareMemory`], which is all the drivers see of it: they are generic
//! over the sharing mechanism, and host tests put `ring_protocol`'s fake grant table in its place.
//!
//! Drivers never hold a bare grant reference to memory they own: they hand the memory to a
//! [`Granted`], which owns the pages and their grants together. Ending it gives the memory back only
//! once every grant has ended; dropping it while the peer still holds a grant leaves the pages to the
//! peer for good (never freed, never reused) and counts them in [`GrantStats::leaked_pages`]. So no
//! path, error paths included, can free a page a backend can still reach (the XSA-396 class).

use alloc::vec::Vec;
use core::mem::offset_of;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU16, AtomicU32, Ordering};

use ring_protocol::abi::grant_table::{
    GNTTAB_NR_RESERVED_ENTRIES, GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GTF_WRITING, GrantEntryV1,
    GrantRef,
};
use ring_protocol::abi::xen::{DomId, XenPfn};
use ring_protocol::platform::{Access, ShareMemory};
use ring_protocol::ring::IdSlabBox;

use crate::dma::{DmaBuf, PAGE_SIZE};

/// Pointer to the field at byte `offset` of `entry`.
fn field<T>(entry: *mut GrantEntryV1, offset: usize) -> *mut T {
    entry.cast::<u8>().wrapping_add(offset).cast()
}

/// Grant-table figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrantStats {
    /// References usable by us (table size minus the reserved ones).
    pub capacity: usize,
    /// Currently granted.
    pub active: usize,
    /// Grants made so far.
    pub granted: u64,
    /// End-of-access attempts refused because the peer still used the page.
    pub busy_revokes: u64,
    /// Grants given up on while the peer still held them: they stay granted for good (and count in
    /// `active`).
    pub abandoned: u64,
    /// Pages of memory left to a peer for good because it kept a grant on them: never freed, never
    /// reused. Zero with an honest backend.
    pub leaked_pages: u64,
}

struct State {
    /// The references in use: id `i` is grant reference `GNTTAB_NR_RESERVED_ENTRIES + i`.
    refs: IdSlabBox<()>,
    stats: GrantStats,
}

/// Grant references below this belong to the toolstack (the console's and XenStore's pages).
const FIRST_REF: usize = GNTTAB_NR_RESERVED_ENTRIES as usize;

/// Which frame a peer domain uses for the page containing the byte at the address given: the machine
/// frame (p2m) for a PV guest, the guest frame for PVH and HVM.
pub type FrameOf = fn(*const u8) -> XenPfn;

/// A version-1 grant table.
pub struct GrantTable {
    entries: NonNull<GrantEntryV1>,
    len: usize,
    frame_of: FrameOf,
    state: spin::Mutex<State>,
}

// SAFETY: the entries are only accessed atomically (flags) or before publication (frame, domid), under
// the state lock for the bookkeeping; the pointer stays valid (constructor contract).
unsafe impl Send for GrantTable {}
// SAFETY: as above.
unsafe impl Sync for GrantTable {}

impl core::fmt::Debug for GrantTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GrantTable")
            .field("len", &self.len)
            .field("stats", &self.stats())
            .finish()
    }
}

impl GrantTable {
    /// A table over `len` entries at `entries`, granting the frames `frame_of` names.
    ///
    /// # Safety
    /// `entries` must point to `len` grant entries shared with Xen (or a test's stand-in), valid for the
    /// life of the table, and no one else in this address space may grant from them. `frame_of` must
    /// return the frame through which the peer reaches exactly the page given (a wrong frame grants
    /// the peer someone else's memory).
    pub unsafe fn new(entries: NonNull<GrantEntryV1>, len: usize, frame_of: FrameOf) -> Self {
        let refs = IdSlabBox::new(len.saturating_sub(FIRST_REF));
        Self {
            entries,
            len,
            frame_of,
            state: spin::Mutex::new(State {
                stats: GrantStats {
                    capacity: refs.capacity(),
                    ..GrantStats::default()
                },
                refs,
            }),
        }
    }

    /// Current figures.
    pub fn stats(&self) -> GrantStats {
        self.state.lock().stats
    }

    fn flags(&self, gref: GrantRef) -> &AtomicU16 {
        debug_assert!((gref as usize) < self.len);
        let entry = self.entries.as_ptr().wrapping_add(gref as usize);
        // SAFETY: `gref < len`, so the entry is inside the table (constructor contract); `flags` is the
        // first, 2-aligned field and shared with Xen, which updates it atomically.
        unsafe { AtomicU16::from_ptr(field(entry, offset_of!(GrantEntryV1, flags))) }
    }

    /// The current `GTF_*` flags of `gref` (what Xen shows about the peer's use).
    pub fn entry_flags(&self, gref: GrantRef) -> Option<u16> {
        ((gref as usize) < self.len).then(|| self.flags(gref).load(Ordering::Acquire))
    }

    /// Grants `peer` access to `frame` (a machine frame for a PV guest).
    ///
    /// # Errors
    /// [`ring_protocol::Error::GrantTableFull`]; [`ring_protocol::Error::FrameTooLarge`].
    fn grant(&self, peer: DomId, frame: XenPfn, access: Access) -> ring_protocol::Result<GrantRef> {
        let frame32 = u32::try_from(frame).map_err(|_| ring_protocol::Error::FrameTooLarge { frame })?;
        let mut st = self.state.lock();
        let capacity = st.stats.capacity;
        let Ok(id) = st.refs.insert(()) else {
            return Err(ring_protocol::Error::GrantTableFull { capacity });
        };
        let gref = FIRST_REF as GrantRef + id;
        let entry = self.entries.as_ptr().wrapping_add(gref as usize);
        // SAFETY: the entry is inside the table and free (flags 0): Xen ignores domid and frame until
        // flags is published below; the frame field is 4-aligned and the domid 2-aligned.
        unsafe {
            AtomicU16::from_ptr(field(entry, offset_of!(GrantEntryV1, domid))).store(peer, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe {
            AtomicU32::from_ptr(field(entry, offset_of!(GrantEntryV1, frame)))
                .store(frame32, Ordering::Relaxed);
        }
        let ro = if access == Access::ReadOnly {
            GTF_READONLY
        } else {
            0
        };
        // Release: Xen (and the peer through it) sees domid and frame before the entry becomes valid.
        self.flags(gref).store(GTF_PERMIT_ACCESS | ro, Ordering::Release);
        st.stats.active += 1;
        st.stats.granted += 1;
        Ok(gref)
    }

    /// Ends access through `gref` and frees it, unless the peer still uses it.
    ///
    /// # Errors
    /// [`ring_protocol::Error::GrantInUse`] (the grant stays; retry later);
    /// [`ring_protocol::Error::BadGrantRef`] if `gref` is not an active grant of ours.
    pub fn end_access(&self, gref: GrantRef) -> ring_protocol::Result<()> {
        let mut st = self.state.lock();
        let id = u64::from(gref).wrapping_sub(FIRST_REF as u64);
        if !st.refs.contains(id) {
            return Err(ring_protocol::Error::BadGrantRef { gref });
        }
        let flags = self.flags(gref);
        let mut current = flags.load(Ordering::Acquire);
        loop {
            if current & (GTF_READING | GTF_WRITING) != 0 {
                st.stats.busy_revokes += 1;
                return Err(ring_protocol::Error::GrantInUse { gref, flags: current });
            }
            // AcqRel: on success the peer's accesses (which Xen ended before clearing its bits) happen
            // before we reuse the page; failing means Xen changed the flags under us: look again.
            match flags.compare_exchange(current, 0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        st.refs.remove(id).expect("checked in flight above");
        st.stats.active -= 1;
        Ok(())
    }
}

// SAFETY: a grant names the frame `frame_of` gives for the page (constructor contract), with the
// access asked for; `end_access` succeeds only through a compare-and-exchange of the flags to 0 that
// fails while Xen marks the entry reading or writing, after which Xen refuses new mappings and copies
// of it; abandoned references stay active, so they are never handed out or ended again.
unsafe impl ShareMemory for GrantTable {
    type Handle = GrantRef;

    unsafe fn share(
        &self,
        peer: DomId,
        page: NonNull<u8>,
        access: Access,
    ) -> ring_protocol::Result<GrantRef> {
        self.grant(peer, (self.frame_of)(page.as_ptr()), access)
    }

    fn revoke(&self, handle: GrantRef) -> ring_protocol::Result<()> {
        self.end_access(handle)
    }

    fn abandon(&self, still_shared: &[GrantRef], pages: usize) {
        // The references stay active (so never handed out again) and keep pointing at the pages.
        let mut st = self.state.lock();
        st.stats.abandoned += still_shared.len() as u64;
        st.stats.leaked_pages += pages as u64;
    }
}

/// Memory shared with a peer: a [`DmaBuf`] and the grants (one per page holding bytes of it, in page
/// order) that let the peer reach it, owned together.
///
/// - [`revoke`](Self::revoke) ends every grant and gives the buffer back, or, if the peer still holds
///   a grant, gives the handle back so the caller can try again later.
/// - Dropping it ends what it can; if the peer still holds a grant, the pages are abandoned to the
///   peer ([`ShareMemory::abandon`]): never freed, never reused, counted.
///
/// The CPU reaches the memory only through [`as_ptr`](Self::as_ptr) while it is shared (for rings,
/// whose indices are atomics); drivers fill a buffer before sharing it and read it after taking it
/// back. Generic over [`ShareMemory`], so the same handle serves any sharing mechanism (the guest's
/// [`GrantTable`], `ring_protocol`'s fake one in host tests).
#[derive(Debug)]
pub struct Granted<S: ShareMemory> {
    sharer: S,
    /// `None` only once handed back by `revoke`.
    buf: Option<DmaBuf>,
    /// Handles not yet revoked (all of them, in page order, until a revoke partly fails).
    handles: Vec<S::Handle>,
}

/// Why [`Granted::new`] did not share a buffer.
#[derive(Debug)]
pub struct NotGranted {
    /// The buffer, back with the caller; empty if a grant made for it could not be ended (the peer
    /// took hold of it at once), in which case its pages were abandoned as [`Granted`]'s drop does.
    pub buf: DmaBuf,
    /// What the sharing mechanism said.
    pub error: ring_protocol::Error,
}

impl<S: ShareMemory> Granted<S> {
    /// Shares the pages of `buf` (those holding its `len` bytes) with `peer`.
    ///
    /// # Errors
    /// [`NotGranted`] with the sharing error (typically a full grant table); grants made before the
    /// failure are ended first.
    pub fn new(sharer: S, peer: DomId, buf: DmaBuf, access: Access) -> Result<Self, NotGranted> {
        let pages = buf.len().div_ceil(PAGE_SIZE);
        let mut me = Self {
            sharer,
            buf: Some(buf),
            handles: Vec::with_capacity(pages),
        };
        for p in 0..pages {
            let page =
                NonNull::new(me.as_ptr().cast_mut().wrapping_add(p * PAGE_SIZE)).expect("DMA memory at 0");
            // SAFETY: `page` is a page-aligned page of the DmaBuf `me` owns: it stays allocated (and
            // unused by anyone else) until `revoke` hands it back after every grant ended, or for good
            // when the drop abandons it to the peer; `me` reaches the memory only through `as_ptr`,
            // whose users access shared pages atomically.
            match unsafe { me.sharer.share(peer, page, access) } {
                Ok(h) => me.handles.push(h),
                Err(error) => {
                    // A peer can map a grant before being told about it: the rollback may fail too,
                    // and then the pages are the peer's (the drop abandons them).
                    let buf = me.revoke().unwrap_or_else(|held| {
                        drop(held);
                        DmaBuf::empty()
                    });
                    return Err(NotGranted { buf, error });
                }
            }
        }
        Ok(me)
    }

    /// The handles the peer is given, one per page in page order (a reference per ring page or
    /// request segment).
    pub fn refs(&self) -> &[S::Handle] {
        &self.handles
    }

    /// The CPU's address of the first byte. Valid as long as `self`; the peer may write the memory
    /// at any time, so only atomic or volatile accesses are sound while it is shared.
    pub fn as_ptr(&self) -> *const u8 {
        self.buf.as_ref().map_or(core::ptr::null(), DmaBuf::as_ptr)
    }

    /// Ends every grant and gives the buffer back, or gives `self` back (with only the handles the
    /// peer still holds) if the peer still uses a page: try again later, or drop it to abandon the
    /// pages.
    ///
    /// # Errors
    /// `Err(self)` while the peer holds a grant.
    pub fn revoke(mut self) -> Result<DmaBuf, Self> {
        self.end_what_can_end();
        if self.handles.is_empty() {
            Ok(self.buf.take().unwrap_or_else(DmaBuf::empty))
        } else {
            Err(self)
        }
    }

    fn end_what_can_end(&mut self) {
        let sharer = &self.sharer;
        // Anything but success (in use, or a reference the table does not know) keeps the handle:
        // only a grant that certainly ended lets its page go.
        self.handles.retain(|&h| sharer.revoke(h).is_err());
    }
}

impl<S: ShareMemory> Drop for Granted<S> {
    fn drop(&mut self) {
        let Some(buf) = self.buf.take() else { return };
        self.end_what_can_end();
        if self.handles.is_empty() {
            drop(buf);
        } else {
            // The peer can still reach these pages: they must never go back to the allocator.
            self.sharer
                .abandon(&self.handles, buf.capacity().div_ceil(PAGE_SIZE));
            core::mem::forget(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use ring_protocol::abi::grant_table::GTF_TYPE_MASK;
    use zerocopy::FromZeros;

    use super::*;

    fn table(len: usize) -> (GrantTable, &'static [GrantEntryV1]) {
        let mem: &'static mut [GrantEntryV1] =
            alloc::boxed::Box::leak(vec![GrantEntryV1::new_zeroed(); len].into_boxed_slice());
        let p = NonNull::from(&mut mem[0]);
        // SAFETY: the leaked array outlives the table; the test reads it only to check what Xen would
        // see, and sets Xen's bits through atomics like Xen.
        let t = unsafe { GrantTable::new(p, len, frame_of) };
        // SAFETY: same memory, used by the test as "Xen's view".
        let view = unsafe { core::slice::from_raw_parts(p.as_ptr(), len) };
        (t, view)
    }

    #[test]
    fn grant_publishes_frame_domid_and_flags_and_skips_reserved_refs() {
        let (t, xen) = table(16);
        let a = t.grant(0, 0x1234, Access::ReadWrite).unwrap();
        let b = t.grant(3, 0x5678, Access::ReadOnly).unwrap();
        assert_eq!(
            (a, b),
            (GNTTAB_NR_RESERVED_ENTRIES, GNTTAB_NR_RESERVED_ENTRIES + 1)
        );
        assert_eq!(
            (
                xen[a as usize].frame,
                xen[a as usize].domid,
                xen[a as usize].flags
            ),
            (0x1234, 0, GTF_PERMIT_ACCESS)
        );
        assert_eq!(xen[b as usize].flags, GTF_PERMIT_ACCESS | GTF_READONLY);
        assert_eq!(xen[b as usize].domid, 3);
        assert!(
            xen[..8].iter().all(|e| e.flags == 0),
            "reserved entries untouched"
        );
        assert_eq!(t.stats().active, 2);
        let e = t.grant(0, 1 << 32, Access::ReadOnly).unwrap_err();
        assert_eq!(e, ring_protocol::Error::FrameTooLarge { frame: 1 << 32 });
    }

    #[test]
    fn a_grant_the_peer_still_uses_is_not_revoked_or_reused() {
        let (t, _xen) = table(10); // 2 usable refs
        let a = t.grant(0, 10, Access::ReadWrite).unwrap();
        let b = t.grant(0, 11, Access::ReadWrite).unwrap();
        assert_eq!(
            t.grant(0, 12, Access::ReadWrite).unwrap_err(),
            ring_protocol::Error::GrantTableFull { capacity: 2 }
        );
        // Xen marks `a` as mapped writable by the peer.
        t.flags(a).fetch_or(GTF_WRITING | GTF_READING, Ordering::SeqCst);
        let e = t.end_access(a).unwrap_err();
        assert_eq!(
            e,
            ring_protocol::Error::GrantInUse {
                gref: a,
                flags: GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING
            }
        );
        assert_eq!(
            t.entry_flags(a).unwrap() & GTF_TYPE_MASK,
            GTF_PERMIT_ACCESS,
            "still granted"
        );
        // `b` can go; its reference comes back, `a`'s does not.
        t.end_access(b).unwrap();
        assert_eq!(
            t.end_access(b).unwrap_err(),
            ring_protocol::Error::BadGrantRef { gref: b }
        );
        let c = t.grant(0, 13, Access::ReadOnly).unwrap();
        assert_eq!(c, b, "the freed reference is reused");
        assert_eq!(
            t.grant(0, 14, Access::ReadOnly).unwrap_err(),
            ring_protocol::Error::GrantTableFull { capacity: 2 }
        );
        // The peer unmaps: now `a` ends and is reusable.
        t.flags(a)
            .fetch_and(!(GTF_WRITING | GTF_READING), Ordering::SeqCst);
        t.end_access(a).unwrap();
        assert_eq!(t.entry_flags(a), Some(0));
        let s = t.stats();
        assert_eq!((s.active, s.granted, s.busy_revokes), (1, 3, 1));
        assert_eq!(
            t.end_access(99).unwrap_err(),
            ring_protocol::Error::BadGrantRef { gref: 99 }
        );
    }

    use crate::dma::fake::FAKE_DMA;

    /// The page number, cut to what a v1 entry holds (a stand-in frame, distinct per page here).
    fn frame_of(p: *const u8) -> XenPfn {
        (p as u64 >> 12) & 0xffff_ffff
    }

    fn patterned(pages: usize) -> DmaBuf {
        let mut b = DmaBuf::new(crate::dma::fake::dma(), pages * PAGE_SIZE - 100).unwrap();
        for (i, x) in b.as_mut_slice().iter_mut().enumerate() {
            *x = (i * 7 % 251) as u8;
        }
        b
    }

    #[test]
    fn granted_pages_come_back_only_once_every_grant_has_ended() {
        let (t, xen) = table(16);
        let buf = patterned(3);
        let first = buf.as_ptr();
        let g = Granted::new(&t, 0, buf, Access::ReadWrite).unwrap();
        let refs = g.refs().to_vec();
        assert_eq!(refs.len(), 3, "one grant per page holding bytes");
        for (i, &r) in refs.iter().enumerate() {
            assert_eq!(
                u64::from(xen[r as usize].frame),
                frame_of(first.wrapping_add(i * PAGE_SIZE))
            );
        }
        assert_eq!(g.as_ptr(), first);
        // Xen: the peer maps the middle page.
        t.flags(refs[1])
            .fetch_or(GTF_READING | GTF_WRITING, Ordering::SeqCst);
        let g = g.revoke().unwrap_err();
        assert_eq!(g.refs(), &refs[1..2], "only the held grant is left");
        assert_eq!(t.stats().active, 1);
        assert!(FAKE_DMA.is_live(first));
        t.flags(refs[1])
            .fetch_and(!(GTF_READING | GTF_WRITING), Ordering::SeqCst);
        let back = g.revoke().unwrap();
        assert_eq!(back.as_ptr(), first);
        assert!(
            back.as_slice()
                .iter()
                .enumerate()
                .all(|(i, &x)| x == (i * 7 % 251) as u8)
        );
        let s = t.stats();
        assert_eq!((s.active, s.abandoned, s.leaked_pages), (0, 0, 0));
    }

    #[test]
    fn xsa396_granted_dropped_while_the_peer_holds_it_abandons_and_counts_its_pages() {
        let (t, xen) = table(16);
        let buf = patterned(2);
        let first = buf.as_ptr();
        let g = Granted::new(&t, 4, buf, Access::ReadWrite).unwrap();
        let held = g.refs()[0];
        t.flags(held)
            .fetch_or(GTF_READING | GTF_WRITING, Ordering::SeqCst);
        drop(g);
        let s = t.stats();
        assert_eq!(
            (s.active, s.abandoned, s.leaked_pages),
            (1, 1, 2),
            "the held grant stays, both pages of the buffer are leaked"
        );
        assert!(FAKE_DMA.is_live(first) && FAKE_DMA.is_live(first.wrapping_add(PAGE_SIZE)));
        assert_eq!(
            (
                xen[held as usize].flags & GTF_PERMIT_ACCESS,
                xen[held as usize].domid
            ),
            (GTF_PERMIT_ACCESS, 4)
        );
        // The held reference is never handed out again.
        let mut fresh = alloc::vec::Vec::new();
        while let Ok(r) = t.grant(4, 1, Access::ReadOnly) {
            assert_ne!(r, held);
            fresh.push(r);
        }
        assert_eq!(fresh.len(), 16 - 8 - 1);
        // A grant the peer never touched ends on drop and its memory is freed.
        for r in fresh {
            t.end_access(r).unwrap();
        }
        let g = Granted::new(&t, 4, patterned(1), Access::ReadOnly).unwrap();
        drop(g);
        assert_eq!(t.stats().leaked_pages, 2);
        assert_eq!(t.stats().active, 1);
    }

    #[test]
    fn a_buffer_that_cannot_be_granted_whole_comes_back_with_its_partial_grants_ended() {
        let (t, _xen) = table(10); // 2 usable refs
        let buf = patterned(3);
        let first = buf.as_ptr();
        let NotGranted { buf, error } = Granted::new(&t, 0, buf, Access::ReadOnly).unwrap_err();
        assert_eq!(error, ring_protocol::Error::GrantTableFull { capacity: 2 });
        assert_eq!(buf.as_ptr(), first, "the caller gets its buffer back");
        assert_eq!(t.stats().active, 0);
        // An empty buffer needs no grant at all.
        let g = Granted::new(&t, 0, DmaBuf::empty(), Access::ReadOnly).unwrap();
        assert!(g.refs().is_empty());
        assert!(g.revoke().unwrap().is_empty());
    }
}
