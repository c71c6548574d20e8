//! What drivers need from the platform they run on: a way to wake their peer ([`Notify`]) and a way to
//! share pages of their memory with it ([`ShareMemory`]).
//!
//! These traits describe what a driver consumes, not everything a provider offers. The guest kernel
//! implements them with event channels and grant tables (or virtio kicks and DMA addresses), the host
//! backends with their own mechanisms, and the test doubles in [`fake`] with plain memory.

use crate::Result;
use crate::abi::xen::{DomId, XenPfn};

/// Tells the peer of a ring that there is work for it: an event channel send under Xen, a queue
/// notification (kick) under virtio.
///
/// Rings decide *whether* a notification is needed (`push_*_and_check_notify`); this trait only
/// delivers it.
pub trait Notify {
    /// Notifies the peer once.
    ///
    /// # Errors
    /// [`Error::NotifyFailed`](crate::Error::NotifyFailed) if the platform refused (for instance a
    /// closed event channel).
    fn notify(&self) -> Result<()>;
}

impl<N: Notify + ?Sized> Notify for &N {
    fn notify(&self) -> Result<()> {
        (**self).notify()
    }
}

/// How much access a peer gets to a shared page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// The peer may only read the page (`GTF_readonly`).
    ReadOnly,
    /// The peer may read and write the page.
    ReadWrite,
}

/// Shares pages of our memory with a peer and takes them back: grant tables under Xen, DMA addresses
/// under virtio.
///
/// A page is named by its guest frame number (its guest-physical address shifted right by
/// [`XEN_PAGE_SHIFT`](crate::abi::xen::XEN_PAGE_SHIFT)).
pub trait ShareMemory {
    /// What the peer is given to reach the page: a grant reference under Xen, a bus address under
    /// virtio.
    type Handle: Copy + Eq + core::fmt::Debug;

    /// Shares page `frame` with domain `peer`.
    ///
    /// # Errors
    /// [`Error::GrantTableFull`](crate::Error::GrantTableFull) when no free reference is left.
    fn share(&self, peer: DomId, frame: XenPfn, access: Access) -> Result<Self::Handle>;

    /// Ends the sharing of `handle`. Once this returns `Ok`, the peer can no longer map or copy the
    /// page, and the caller may reuse it.
    ///
    /// # Errors
    /// [`Error::GrantInUse`](crate::Error::GrantInUse) if the peer still has the page mapped or is
    /// copying it: the page stays shared, must not be reused, and the caller should retry later.
    /// [`Error::BadGrantRef`](crate::Error::BadGrantRef) if `handle` is not currently shared.
    fn revoke(&self, handle: Self::Handle) -> Result<()>;

    /// Records that the owner of `pages` pages gave up on them while the peer still held
    /// `still_shared` (their [`revoke`](Self::revoke) kept failing with
    /// [`Error::GrantInUse`](crate::Error::GrantInUse)): those handles stay shared for good and the
    /// owner never frees or reuses the pages, so the peer can reach nothing else through them. The
    /// implementation keeps the handles out of circulation and counts the loss; it must not revoke or
    /// reuse them.
    fn abandon(&self, still_shared: &[Self::Handle], pages: usize);
}

impl<S: ShareMemory + ?Sized> ShareMemory for &S {
    type Handle = S::Handle;

    fn share(&self, peer: DomId, frame: XenPfn, access: Access) -> Result<Self::Handle> {
        (**self).share(peer, frame, access)
    }

    fn revoke(&self, handle: Self::Handle) -> Result<()> {
        (**self).revoke(handle)
    }

    fn abandon(&self, still_shared: &[Self::Handle], pages: usize) {
        (**self).abandon(still_shared, pages);
    }
}

/// Test doubles for the platform traits: a [`CountingNotifier`](fake::CountingNotifier) and an
/// in-memory [`FakeGrantTable`](fake::FakeGrantTable).
#[cfg(any(test, feature = "test-utils"))]
pub mod fake {
    extern crate alloc;

    use alloc::boxed::Box;
    use alloc::collections::BTreeMap;
    use alloc::vec;
    use alloc::vec::Vec;
    use core::cell::RefCell;
    use core::sync::atomic::{AtomicU64, Ordering};

    use super::{Access, Notify, ShareMemory};
    use crate::abi::grant_table::{
        GNTTAB_NR_RESERVED_ENTRIES, GTF_INVALID, GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GTF_TYPE_MASK,
        GTF_WRITING, GrantEntryV1, GrantRef,
    };
    use crate::abi::xen::{DomId, XEN_PAGE_SIZE, XenPfn};
    use crate::{Error, Result};

    /// A [`Notify`] that counts notifications. It is `Sync`: a peer thread can read the count while
    /// the ring's owner notifies.
    #[derive(Debug, Default)]
    pub struct CountingNotifier {
        count: AtomicU64,
    }

    impl CountingNotifier {
        /// A notifier that has sent nothing.
        pub const fn new() -> Self {
            Self {
                count: AtomicU64::new(0),
            }
        }

        /// Notifications sent so far.
        pub fn count(&self) -> u64 {
            // Relaxed: the count is a statistic; nothing else is published through it.
            self.count.load(Ordering::Relaxed)
        }

        /// Returns the notifications sent since the last call and resets the count.
        pub fn take(&self) -> u64 {
            // Relaxed: as in `count`.
            self.count.swap(0, Ordering::Relaxed)
        }
    }

    impl Notify for CountingNotifier {
        fn notify(&self) -> Result<()> {
            // Relaxed: as in `count`.
            self.count.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    /// An in-memory version-1 grant table, playing both the granting guest ([`ShareMemory`]) and, for
    /// tests, Xen acting for the peer (`peer_*` methods).
    ///
    /// Entries are real [`GrantEntryV1`]s with the real flag protocol: granting writes `domid` and
    /// `frame` and then `flags`; while the peer has a grant mapped, the entry carries
    /// [`GTF_READING`] (and [`GTF_WRITING`] for writable mappings), as Xen sets them; revoking an entry
    /// with either flag set fails with [`Error::GrantInUse`] and leaves the grant in place. Page
    /// contents live in a map from frame number to a 4 KiB buffer, zero until written.
    ///
    /// References below [`GNTTAB_NR_RESERVED_ENTRIES`] are never handed out. The table is not `Sync`;
    /// wrap it in a lock to share it between threads.
    #[derive(Debug)]
    pub struct FakeGrantTable {
        inner: RefCell<Inner>,
    }

    #[derive(Debug)]
    struct Inner {
        entries: Vec<GrantEntryV1>,
        /// Whether each reference is handed out (granted and not yet revoked).
        in_use: Vec<bool>,
        /// Per reference: (read-only mappings, writable mappings) the peer holds.
        maps: Vec<(u32, u32)>,
        pages: BTreeMap<XenPfn, Box<[u8; XEN_PAGE_SIZE]>>,
        /// (handles, pages) given up through [`ShareMemory::abandon`].
        abandoned: (usize, usize),
    }

    impl FakeGrantTable {
        /// A table with `entries` references in all (including the reserved ones).
        pub fn new(entries: usize) -> Self {
            Self {
                inner: RefCell::new(Inner {
                    entries: vec![GrantEntryV1::default(); entries],
                    in_use: vec![false; entries],
                    maps: vec![(0, 0); entries],
                    pages: BTreeMap::new(),
                    abandoned: (0, 0),
                }),
            }
        }

        /// The raw entry for `gref`, as the hypervisor would see it.
        ///
        /// # Errors
        /// [`Error::BadGrantRef`] if `gref` is beyond the table.
        pub fn entry(&self, gref: GrantRef) -> Result<GrantEntryV1> {
            let inner = self.inner.borrow();
            inner.index(gref).map(|i| inner.entries[i])
        }

        /// Number of references currently handed out.
        pub fn active(&self) -> usize {
            self.inner.borrow().in_use.iter().filter(|&&u| u).count()
        }

        /// (handles, pages) the granting side gave up on while the peer still held them.
        pub fn abandoned(&self) -> (usize, usize) {
            self.inner.borrow().abandoned
        }

        /// Writes `data` at `offset` in our own page `frame` (the granting side's direct access).
        ///
        /// # Panics
        /// If `offset + data.len()` exceeds a page: that is a bug in the test, not peer behaviour.
        pub fn write_frame(&self, frame: XenPfn, offset: usize, data: &[u8]) {
            let mut inner = self.inner.borrow_mut();
            let page = inner.page_mut(frame);
            page[offset..offset + data.len()].copy_from_slice(data);
        }

        /// Reads `buf.len()` bytes at `offset` of our own page `frame`.
        ///
        /// # Panics
        /// If `offset + buf.len()` exceeds a page.
        pub fn read_frame(&self, frame: XenPfn, offset: usize, buf: &mut [u8]) {
            let mut inner = self.inner.borrow_mut();
            let page = inner.page_mut(frame);
            buf.copy_from_slice(&page[offset..offset + buf.len()]);
        }

        /// The peer `peer` maps grant `gref` (`GNTTABOP_map_grant_ref`): checks the grant and sets
        /// [`GTF_READING`], plus [`GTF_WRITING`] for a writable mapping, until
        /// [`peer_unmap`](Self::peer_unmap).
        ///
        /// # Errors
        /// [`Error::BadGrantRef`] if `gref` is not an active grant;
        /// [`Error::GrantAccessDenied`] if it is granted to another domain, or read-only and `access`
        /// is [`Access::ReadWrite`].
        pub fn peer_map(&self, peer: DomId, gref: GrantRef, access: Access) -> Result<()> {
            let mut inner = self.inner.borrow_mut();
            let i = inner.check_peer(peer, gref, access)?;
            let writable = access == Access::ReadWrite;
            let (ro, rw) = &mut inner.maps[i];
            if writable {
                *rw += 1;
            } else {
                *ro += 1;
            }
            inner.entries[i].flags |= GTF_READING | if writable { GTF_WRITING } else { 0 };
            Ok(())
        }

        /// The peer `peer` unmaps one mapping of `gref` made with `access`; the in-use flags clear when
        /// the last mapping of that kind goes.
        ///
        /// # Errors
        /// [`Error::BadGrantRef`] if the peer holds no such mapping.
        pub fn peer_unmap(&self, peer: DomId, gref: GrantRef, access: Access) -> Result<()> {
            let mut inner = self.inner.borrow_mut();
            let i = inner.index(gref)?;
            if inner.entries[i].domid != peer {
                return Err(Error::BadGrantRef { gref });
            }
            let (ro, rw) = &mut inner.maps[i];
            let count = if access == Access::ReadWrite { rw } else { ro };
            *count = count.checked_sub(1).ok_or(Error::BadGrantRef { gref })?;
            let (ro, rw) = inner.maps[i];
            if rw == 0 {
                inner.entries[i].flags &= !GTF_WRITING;
            }
            if ro == 0 && rw == 0 {
                inner.entries[i].flags &= !GTF_READING;
            }
            Ok(())
        }

        /// The peer copies out of grant `gref` (`GNTTABOP_copy` with a source grant): `buf.len()`
        /// bytes at `offset`.
        ///
        /// # Errors
        /// As [`peer_map`](Self::peer_map) with [`Access::ReadOnly`], and
        /// [`Error::GrantCopyOutOfPage`] if the range leaves the page.
        pub fn peer_read(&self, peer: DomId, gref: GrantRef, offset: usize, buf: &mut [u8]) -> Result<()> {
            let mut inner = self.inner.borrow_mut();
            let i = inner.check_peer(peer, gref, Access::ReadOnly)?;
            check_range(gref, offset, buf.len())?;
            let frame = XenPfn::from(inner.entries[i].frame);
            let page = inner.page_mut(frame);
            buf.copy_from_slice(&page[offset..offset + buf.len()]);
            Ok(())
        }

        /// The peer copies into grant `gref` (`GNTTABOP_copy` with a destination grant).
        ///
        /// # Errors
        /// As [`peer_map`](Self::peer_map) with [`Access::ReadWrite`], and
        /// [`Error::GrantCopyOutOfPage`] if the range leaves the page.
        pub fn peer_write(&self, peer: DomId, gref: GrantRef, offset: usize, data: &[u8]) -> Result<()> {
            let mut inner = self.inner.borrow_mut();
            let i = inner.check_peer(peer, gref, Access::ReadWrite)?;
            check_range(gref, offset, data.len())?;
            let frame = XenPfn::from(inner.entries[i].frame);
            let page = inner.page_mut(frame);
            page[offset..offset + data.len()].copy_from_slice(data);
            Ok(())
        }
    }

    fn check_range(gref: GrantRef, offset: usize, len: usize) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > XEN_PAGE_SIZE) {
            return Err(Error::GrantCopyOutOfPage { gref, offset, len });
        }
        Ok(())
    }

    impl Inner {
        fn index(&self, gref: GrantRef) -> Result<usize> {
            let i = usize::try_from(gref).map_err(|_| Error::BadGrantRef { gref })?;
            if i >= self.entries.len() {
                return Err(Error::BadGrantRef { gref });
            }
            Ok(i)
        }

        fn page_mut(&mut self, frame: XenPfn) -> &mut [u8; XEN_PAGE_SIZE] {
            self.pages
                .entry(frame)
                .or_insert_with(|| Box::new([0; XEN_PAGE_SIZE]))
        }

        /// What Xen checks before letting `peer` use `gref` with `access`.
        fn check_peer(&self, peer: DomId, gref: GrantRef, access: Access) -> Result<usize> {
            let i = self.index(gref)?;
            let e = self.entries[i];
            if !self.in_use[i] || e.flags & GTF_TYPE_MASK != GTF_PERMIT_ACCESS {
                return Err(Error::BadGrantRef { gref });
            }
            let readonly = e.flags & GTF_READONLY != 0;
            if e.domid != peer || (access == Access::ReadWrite && readonly) {
                return Err(Error::GrantAccessDenied {
                    gref,
                    domid: peer,
                    write: access == Access::ReadWrite,
                });
            }
            Ok(i)
        }
    }

    impl ShareMemory for FakeGrantTable {
        type Handle = GrantRef;

        fn share(&self, peer: DomId, frame: XenPfn, access: Access) -> Result<GrantRef> {
            let mut inner = self.inner.borrow_mut();
            let capacity = inner.entries.len();
            let first = GNTTAB_NR_RESERVED_ENTRIES as usize;
            let i = (first..capacity)
                .find(|&i| !inner.in_use[i])
                .ok_or(Error::GrantTableFull { capacity })?;
            // A v1 entry holds a 32-bit frame number; larger frames cannot be granted this way.
            let frame32 = u32::try_from(frame).map_err(|_| Error::FrameTooLarge { frame })?;
            let gref = GrantRef::try_from(i).map_err(|_| Error::GrantTableFull { capacity })?;
            let entry = &mut inner.entries[i];
            entry.domid = peer;
            entry.frame = frame32;
            // Flags last: a real guest puts a write barrier here so Xen sees domid and frame first.
            entry.flags = GTF_PERMIT_ACCESS
                | if access == Access::ReadOnly {
                    GTF_READONLY
                } else {
                    0
                };
            inner.in_use[i] = true;
            Ok(gref)
        }

        fn revoke(&self, gref: GrantRef) -> Result<()> {
            let mut inner = self.inner.borrow_mut();
            let i = inner.index(gref)?;
            if !inner.in_use[i] {
                return Err(Error::BadGrantRef { gref });
            }
            // The real guest does a compare-and-swap of `flags` to 0 that fails while Xen has the
            // reading/writing bits set.
            let flags = inner.entries[i].flags;
            if flags & (GTF_READING | GTF_WRITING) != 0 {
                return Err(Error::GrantInUse { gref, flags });
            }
            inner.entries[i] = GrantEntryV1 {
                flags: GTF_INVALID,
                ..Default::default()
            };
            inner.in_use[i] = false;
            Ok(())
        }

        fn abandon(&self, still_shared: &[GrantRef], pages: usize) {
            // The references stay `in_use` (never handed out again) and keep their entries.
            let mut inner = self.inner.borrow_mut();
            inner.abandoned.0 += still_shared.len();
            inner.abandoned.1 += pages;
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const PEER: DomId = 0;
        const OTHER: DomId = 7;

        #[test]
        fn counting_notifier_counts_through_references_and_resets() {
            let n = CountingNotifier::new();
            for _ in 0..5 {
                n.notify().unwrap();
            }
            let by_ref: &dyn Notify = &n;
            by_ref.notify().unwrap();
            <&CountingNotifier as Notify>::notify(&&n).unwrap();
            assert_eq!(n.count(), 7);
            assert_eq!(n.take(), 7);
            assert_eq!(n.count(), 0);
        }

        #[test]
        fn share_writes_a_real_v1_entry_and_skips_reserved_refs() {
            let gt = FakeGrantTable::new(16);
            let r = gt.share(PEER, 0x1234, Access::ReadOnly).unwrap();
            assert_eq!(r, GNTTAB_NR_RESERVED_ENTRIES);
            let e = gt.entry(r).unwrap();
            assert_eq!(
                e,
                GrantEntryV1 {
                    flags: GTF_PERMIT_ACCESS | GTF_READONLY,
                    domid: PEER,
                    frame: 0x1234
                }
            );
            let w = gt.share(PEER, 0x1235, Access::ReadWrite).unwrap();
            assert_eq!(gt.entry(w).unwrap().flags, GTF_PERMIT_ACCESS);
            assert_eq!(gt.active(), 2);
        }

        #[test]
        fn revoke_while_mapped_fails_and_keeps_the_grant_until_unmapped() {
            let gt = FakeGrantTable::new(16);
            let r = gt.share(PEER, 42, Access::ReadWrite).unwrap();
            gt.peer_map(PEER, r, Access::ReadWrite).unwrap();
            gt.peer_map(PEER, r, Access::ReadOnly).unwrap();
            let err = gt.revoke(r).unwrap_err();
            assert_eq!(
                err,
                Error::GrantInUse {
                    gref: r,
                    flags: GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING
                }
            );
            // Still granted: the peer can keep using it.
            gt.peer_write(PEER, r, 0, b"still mine").unwrap();

            gt.peer_unmap(PEER, r, Access::ReadWrite).unwrap();
            assert_eq!(gt.entry(r).unwrap().flags, GTF_PERMIT_ACCESS | GTF_READING);
            assert!(matches!(gt.revoke(r), Err(Error::GrantInUse { flags, .. }) if flags & GTF_WRITING == 0));
            gt.peer_unmap(PEER, r, Access::ReadOnly).unwrap();
            gt.revoke(r).unwrap();
            assert_eq!(gt.entry(r).unwrap(), GrantEntryV1::default());
            assert_eq!(
                gt.peer_map(PEER, r, Access::ReadOnly),
                Err(Error::BadGrantRef { gref: r })
            );
            assert_eq!(gt.revoke(r), Err(Error::BadGrantRef { gref: r }));
        }

        #[test]
        fn peer_access_is_checked_against_domain_and_readonly() {
            let gt = FakeGrantTable::new(16);
            let r = gt.share(PEER, 3, Access::ReadOnly).unwrap();
            assert_eq!(
                gt.peer_map(OTHER, r, Access::ReadOnly),
                Err(Error::GrantAccessDenied {
                    gref: r,
                    domid: OTHER,
                    write: false
                })
            );
            assert_eq!(
                gt.peer_write(PEER, r, 0, b"x"),
                Err(Error::GrantAccessDenied {
                    gref: r,
                    domid: PEER,
                    write: true
                })
            );
            assert_eq!(
                gt.peer_map(PEER, 3, Access::ReadOnly),
                Err(Error::BadGrantRef { gref: 3 })
            );
            assert_eq!(
                gt.peer_map(PEER, 999, Access::ReadOnly),
                Err(Error::BadGrantRef { gref: 999 })
            );
            assert_eq!(
                gt.peer_unmap(PEER, r, Access::ReadOnly),
                Err(Error::BadGrantRef { gref: r })
            );
            // A failed map leaves no in-use flag behind.
            gt.revoke(r).unwrap();
        }

        #[test]
        fn data_flows_between_granting_side_and_peer() {
            let gt = FakeGrantTable::new(16);
            gt.write_frame(9, 100, b"hello peer");
            let r = gt.share(PEER, 9, Access::ReadWrite).unwrap();
            let mut buf = [0u8; 10];
            gt.peer_read(PEER, r, 100, &mut buf).unwrap();
            assert_eq!(&buf, b"hello peer");
            gt.peer_write(PEER, r, 4090, b"tail!!").unwrap();
            let mut back = [0u8; 6];
            gt.read_frame(9, 4090, &mut back);
            assert_eq!(&back, b"tail!!");
            assert_eq!(
                gt.peer_write(PEER, r, 4091, b"tail!!"),
                Err(Error::GrantCopyOutOfPage {
                    gref: r,
                    offset: 4091,
                    len: 6
                })
            );
        }

        #[test]
        fn table_fills_up_and_revoked_refs_are_reused() {
            let gt = FakeGrantTable::new(GNTTAB_NR_RESERVED_ENTRIES as usize + 3);
            let refs: Vec<_> = (0..3)
                .map(|f| gt.share(PEER, f, Access::ReadOnly).unwrap())
                .collect();
            assert_eq!(
                gt.share(PEER, 3, Access::ReadOnly),
                Err(Error::GrantTableFull { capacity: 11 })
            );
            gt.revoke(refs[1]).unwrap();
            assert_eq!(gt.share(PEER, 4, Access::ReadOnly), Ok(refs[1]));
            assert_eq!(gt.entry(refs[1]).unwrap().frame, 4);
            assert_eq!(
                gt.share(PEER, 1 << 32, Access::ReadOnly),
                Err(Error::GrantTableFull { capacity: 11 })
            );
            gt.revoke(refs[0]).unwrap();
            assert_eq!(
                gt.share(PEER, 1 << 32, Access::ReadOnly),
                Err(Error::FrameTooLarge { frame: 1 << 32 })
            );
        }
    }
}
