//! Grant tables, version 1: the guest's side of sharing its pages with another domain.
//!
//! The table is an array of [`GrantEntryV1`] in frames Xen set up (`GNTTABOP_setup_table`, done by
//! the platform, which hands the mapped array to [`GrantTable::new`]). Granting fills `frame` and
//! `domid`, then publishes `flags` (`GTF_permit_access`, `GTF_readonly`) with a release store, so
//! Xen never sees a half-written entry. Ending access clears `flags` with a compare-and-exchange
//! that fails if Xen has set `GTF_reading`/`GTF_writing` (the peer has the page mapped or is copying
//! it): that grant is reported as [`ring_protocol::Error::GrantInUse`] and stays granted, so its
//! page is never silently reused while the peer can still reach it.
//!
//! References `0..GNTTAB_NR_RESERVED_ENTRIES` belong to the toolstack (console, XenStore) and are
//! never handed out. Implements [`ShareMemory`], so rings and drivers use it like any other way of
//! sharing memory.

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
}

struct State {
    free: Vec<GrantRef>,
    active: Vec<bool>,
    stats: GrantStats,
}

/// A version-1 grant table.
pub struct GrantTable {
    entries: NonNull<GrantEntryV1>,
    len: usize,
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
    /// A table over `len` entries at `entries`.
    ///
    /// # Safety
    /// `entries` must point to `len` grant entries shared with Xen (or a test's stand-in), valid for the
    /// life of the table, and no one else in this address space may grant from them.
    pub unsafe fn new(entries: NonNull<GrantEntryV1>, len: usize) -> Self {
        let first = GNTTAB_NR_RESERVED_ENTRIES as usize;
        // Hand out low references first (pop from the end).
        let free: Vec<GrantRef> = (first..len).rev().map(|r| r as GrantRef).collect();
        Self {
            entries,
            len,
            state: spin::Mutex::new(State {
                stats: GrantStats {
                    capacity: free.len(),
                    ..GrantStats::default()
                },
                free,
                active: alloc::vec![false; len],
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
    pub fn grant(&self, peer: DomId, frame: XenPfn, access: Access) -> ring_protocol::Result<GrantRef> {
        let frame32 = u32::try_from(frame).map_err(|_| ring_protocol::Error::FrameTooLarge { frame })?;
        let mut st = self.state.lock();
        let capacity = st.stats.capacity;
        let gref = st
            .free
            .pop()
            .ok_or(ring_protocol::Error::GrantTableFull { capacity })?;
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
        st.active[gref as usize] = true;
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
        if (gref as usize) >= self.len || !st.active[gref as usize] {
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
        st.active[gref as usize] = false;
        st.stats.active -= 1;
        st.free.push(gref);
        Ok(())
    }
}

impl ShareMemory for GrantTable {
    type Handle = GrantRef;

    fn share(&self, peer: DomId, frame: XenPfn, access: Access) -> ring_protocol::Result<GrantRef> {
        self.grant(peer, frame, access)
    }

    fn revoke(&self, handle: GrantRef) -> ring_protocol::Result<()> {
        self.end_access(handle)
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
        let t = unsafe { GrantTable::new(p, len) };
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
}
