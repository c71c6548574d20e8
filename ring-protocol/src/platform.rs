//! What drivers need from the platform they run on: a way to wake their peer ([`Notify`]) and a way to
//! share pages of their memory with it ([`ShareMemory`]).
//!
//! These traits describe what a driver consumes, not everything a provider offers. The guest kernel
//! implements them with event channels and grant tables, the host backends with their own mechanisms,
//! and the test doubles in `fake` (feature `test-utils`) with plain memory: a counting notifier and an
//! in-memory grant table that also plays Xen for the peer, so a test can put a real frontend and a
//! real backend on the two sides of it.

use core::ptr::NonNull;

use crate::Result;
use crate::abi::xen::DomId;

/// Tells the peer of a ring that there is work for it: an event channel send under Xen, a queue
/// notification (kick) under virtio.
///
/// Rings decide *whether* a notification is needed (`push_*_and_check_notify`); this trait only
/// delivers it.
///
/// # Safety
///
/// A safe trait: a notification carries no data, so an implementation that loses or duplicates
/// notifications can make a driver slow or time out, never touch memory it should not.
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

/// Shares pages of our memory with a peer and takes them back: grant tables under Xen; under virtio
/// with an IOMMU, mappings in the device's address space.
///
/// A page is named by the CPU's address of its first byte; the implementation turns that into what
/// the peer is given ([`Handle`](Self::Handle)): a grant reference (whose entry holds the frame the
/// implementation looked up, the machine frame for a Xen PV guest), or a bus address. Memory to
/// share comes from the platform's DMA allocator; the owner keeps it allocated until the sharing has
/// ended (`pvkit_frontends::xen::grant::Granted` owns a buffer and its handles together, so no path
/// can free a page the peer still reaches).
///
/// # Safety
///
/// Drivers free or reuse a page as soon as [`revoke`](Self::revoke) says the sharing ended, so an
/// implementation must:
/// - give the peer access to the page named in [`share`](Self::share) only, with no more than the
///   access asked for;
/// - return `Ok` from `revoke` only once the peer can no longer read or write the page through that
///   handle: no mapping left, no copy in progress, and none can start (a grant table clears the
///   entry with a compare-and-exchange that fails while Xen marks it in use);
/// - never revoke, reuse or hand out again a handle given to [`abandon`](Self::abandon).
///
/// An implementation that breaks these lets a peer read or write memory the guest has reused, which
/// is memory unsafety in the guest (the XSA-396 class).
pub unsafe trait ShareMemory {
    /// What the peer is given to reach the page: a grant reference under Xen, a bus address for a
    /// device.
    type Handle: Copy + Eq + core::fmt::Debug;

    /// Shares the page at `page` with domain `peer` (mechanisms with a single peer ignore it).
    ///
    /// # Errors
    /// [`Error::GrantTableFull`](crate::Error::GrantTableFull) when no free reference is left;
    /// [`Error::FrameTooLarge`](crate::Error::FrameTooLarge) when the page's frame does not fit the
    /// mechanism.
    ///
    /// # Safety
    /// `page` is the first byte of one page ([`XEN_PAGE_SIZE`](crate::abi::xen::XEN_PAGE_SIZE) bytes,
    /// aligned to it) of memory the caller owns. It stays allocated and is not used for anything else
    /// until `revoke` returned `Ok` for the handle, or forever once the handle went to `abandon`.
    /// While it is shared the peer may read it (and, with [`Access::ReadWrite`], write it) at any
    /// time, so the caller touches it only through atomic or volatile accesses, or not at all.
    unsafe fn share(&self, peer: DomId, page: NonNull<u8>, access: Access) -> Result<Self::Handle>;

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

// SAFETY: forwards every call to `S`, which upholds the contract.
unsafe impl<S: ShareMemory + ?Sized> ShareMemory for &S {
    type Handle = S::Handle;

    unsafe fn share(&self, peer: DomId, page: NonNull<u8>, access: Access) -> Result<Self::Handle> {
        // SAFETY: the caller upholds `share`'s contract, which is the same for `S`.
        unsafe { (**self).share(peer, page, access) }
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

    use alloc::collections::BTreeMap;
    use alloc::vec;
    use alloc::vec::Vec;
    use core::ptr::NonNull;
    use core::sync::atomic::{AtomicU64, Ordering};

    use super::{Access, Notify, ShareMemory};
    use crate::abi::grant_table::{
        GNTTAB_NR_RESERVED_ENTRIES, GTF_INVALID, GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GTF_TYPE_MASK,
        GTF_WRITING, GrantEntryV1, GrantRef,
    };
    use crate::abi::xen::{DomId, XEN_PAGE_SIZE};
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

    /// First stand-in frame number (frames are numbered per distinct page, from here).
    pub const FIRST_FRAME: u32 = 0x1000;

    /// An in-memory version-1 grant table over the granting side's real pages, playing both the
    /// granting guest ([`ShareMemory`]) and Xen acting for the peer (`peer_*` methods), so a
    /// frontend and a backend can be tested against each other without a hypervisor.
    ///
    /// Entries are real [`GrantEntryV1`]s with the real flag protocol: granting writes `domid` and
    /// `frame` and then `flags`; while the peer has a grant mapped, the entry carries
    /// [`GTF_READING`] (and [`GTF_WRITING`] for writable mappings), as Xen sets them; revoking an entry
    /// with either flag set fails with [`Error::GrantInUse`] and leaves the grant in place. The frame
    /// in an entry is a stand-in number, one per distinct page ([`frame_of`](Self::frame_of)); the
    /// peer reaches the page itself ([`peer_map`](Self::peer_map), [`peer_read`](Self::peer_read),
    /// [`peer_write`](Self::peer_write)), checked against the entry as Xen checks it.
    ///
    /// References below [`GNTTAB_NR_RESERVED_ENTRIES`] are never handed out. The table is `Sync` (a
    /// spin lock inside): a backend thread may serve the peer side while the frontend grants.
    #[derive(Debug)]
    pub struct FakeGrantTable {
        owner: DomId,
        inner: spin::Mutex<Inner>,
    }

    // SAFETY: the page pointers inside are only dereferenced under the lock, for pages the granting
    // side keeps allocated while they are granted (`share`'s contract); everything else is plain data.
    unsafe impl Send for FakeGrantTable {}
    // SAFETY: as above; all state is behind the lock.
    unsafe impl Sync for FakeGrantTable {}

    /// Counts of a [`FakeGrantTable`].
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct FakeGrantStats {
        /// References handed out and not revoked (abandoned ones included).
        pub active: usize,
        /// Grants made so far.
        pub granted: u64,
        /// Revokes refused because the peer still held the grant.
        pub busy_revokes: u64,
        /// Handles given up through [`ShareMemory::abandon`].
        pub abandoned: usize,
        /// Pages given up with them.
        pub abandoned_pages: usize,
        /// Mappings the peer holds now.
        pub peer_mappings: u64,
    }

    #[derive(Debug)]
    struct Inner {
        entries: Vec<GrantEntryV1>,
        /// Whether each reference is handed out (granted and not yet revoked).
        in_use: Vec<bool>,
        /// Per reference: (read-only mappings, writable mappings) the peer holds.
        maps: Vec<(u32, u32)>,
        /// Per reference: the page granted.
        pages: Vec<Option<NonNull<u8>>>,
        /// Stand-in frame per page address.
        frames: BTreeMap<usize, u32>,
        stats: FakeGrantStats,
    }

    impl FakeGrantTable {
        /// A table with `entries` references in all (including the reserved ones), of a guest whose
        /// domain id does not matter (1).
        pub fn new(entries: usize) -> Self {
            Self::with_owner(entries, 1)
        }

        /// A table of domain `owner` (what a backend names as the granting domain, e.g. in a grant
        /// copy: an adapter refuses other domains as Xen does with `GNTST_bad_domain`).
        pub fn with_owner(entries: usize, owner: DomId) -> Self {
            Self {
                owner,
                inner: spin::Mutex::new(Inner {
                    entries: vec![GrantEntryV1::default(); entries],
                    in_use: vec![false; entries],
                    maps: vec![(0, 0); entries],
                    pages: vec![None; entries],
                    frames: BTreeMap::new(),
                    stats: FakeGrantStats::default(),
                }),
            }
        }

        /// The granting domain.
        pub fn owner(&self) -> DomId {
            self.owner
        }

        /// The raw entry for `gref`, as the hypervisor would see it.
        ///
        /// # Errors
        /// [`Error::BadGrantRef`] if `gref` is beyond the table.
        pub fn entry(&self, gref: GrantRef) -> Result<GrantEntryV1> {
            let inner = self.inner.lock();
            inner.index(gref).map(|i| inner.entries[i])
        }

        /// Number of references currently handed out (abandoned ones included).
        pub fn active(&self) -> usize {
            self.inner.lock().stats.active
        }

        /// (handles, pages) the granting side gave up on while the peer still held them.
        pub fn abandoned(&self) -> (usize, usize) {
            let s = self.inner.lock().stats;
            (s.abandoned, s.abandoned_pages)
        }

        /// All counts.
        pub fn stats(&self) -> FakeGrantStats {
            self.inner.lock().stats
        }

        /// The stand-in frame number of the page at `page`, if it was ever granted.
        pub fn frame_of(&self, page: *const u8) -> Option<u32> {
            self.inner.lock().frames.get(&(page as usize)).copied()
        }

        /// References currently granted to `peer` (in reference order), for a test playing a
        /// backend that looks at what it was given.
        pub fn granted_to(&self, peer: DomId) -> Vec<GrantRef> {
            let inner = self.inner.lock();
            (0..inner.entries.len())
                .filter(|&i| inner.in_use[i] && inner.entries[i].domid == peer)
                .map(|i| i as GrantRef)
                .collect()
        }

        /// The peer `peer` maps grant `gref` (`GNTTABOP_map_grant_ref`): checks the grant, sets
        /// [`GTF_READING`], plus [`GTF_WRITING`] for a writable mapping, until
        /// [`peer_unmap`](Self::peer_unmap), and returns the page. Dereferencing the pointer is the
        /// caller's business: the page stays allocated while the mapping stands (the granting side
        /// cannot revoke a mapped grant), and the granting side may write it concurrently.
        ///
        /// # Errors
        /// [`Error::BadGrantRef`] if `gref` is not an active grant;
        /// [`Error::GrantAccessDenied`] if it is granted to another domain, or read-only and `access`
        /// is [`Access::ReadWrite`].
        pub fn peer_map(&self, peer: DomId, gref: GrantRef, access: Access) -> Result<NonNull<u8>> {
            let mut inner = self.inner.lock();
            let i = inner.check_peer(peer, gref, access)?;
            let writable = access == Access::ReadWrite;
            let (ro, rw) = &mut inner.maps[i];
            if writable {
                *rw += 1;
            } else {
                *ro += 1;
            }
            inner.entries[i].flags |= GTF_READING | if writable { GTF_WRITING } else { 0 };
            inner.stats.peer_mappings += 1;
            Ok(inner.pages[i].expect("an active grant has a page"))
        }

        /// The peer `peer` unmaps one mapping of `gref` made with `access`; the in-use flags clear when
        /// the last mapping of that kind goes.
        ///
        /// # Errors
        /// [`Error::BadGrantRef`] if the peer holds no such mapping.
        pub fn peer_unmap(&self, peer: DomId, gref: GrantRef, access: Access) -> Result<()> {
            let mut inner = self.inner.lock();
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
            inner.stats.peer_mappings -= 1;
            Ok(())
        }

        /// The peer copies out of grant `gref` (`GNTTABOP_copy` with a source grant): `buf.len()`
        /// bytes at `offset`.
        ///
        /// # Errors
        /// As [`peer_map`](Self::peer_map) with [`Access::ReadOnly`], and
        /// [`Error::GrantCopyOutOfPage`] if the range leaves the page.
        pub fn peer_read(&self, peer: DomId, gref: GrantRef, offset: usize, buf: &mut [u8]) -> Result<()> {
            let inner = self.inner.lock();
            let i = inner.check_peer(peer, gref, Access::ReadOnly)?;
            check_range(gref, offset, buf.len())?;
            let page = inner.pages[i].expect("an active grant has a page");
            // SAFETY: the page is granted, so the granting side keeps it allocated (share's contract);
            // the range lies inside it (checked); `buf` is ours and cannot overlap it (the page is not
            // reachable as a Rust reference while granted).
            unsafe {
                core::ptr::copy_nonoverlapping(
                    page.as_ptr().wrapping_add(offset),
                    buf.as_mut_ptr(),
                    buf.len(),
                );
            }
            Ok(())
        }

        /// The peer copies into grant `gref` (`GNTTABOP_copy` with a destination grant).
        ///
        /// # Errors
        /// As [`peer_map`](Self::peer_map) with [`Access::ReadWrite`], and
        /// [`Error::GrantCopyOutOfPage`] if the range leaves the page.
        pub fn peer_write(&self, peer: DomId, gref: GrantRef, offset: usize, data: &[u8]) -> Result<()> {
            let inner = self.inner.lock();
            let i = inner.check_peer(peer, gref, Access::ReadWrite)?;
            check_range(gref, offset, data.len())?;
            let page = inner.pages[i].expect("an active grant has a page");
            // SAFETY: as in `peer_read`; the grant is writable (checked).
            unsafe {
                core::ptr::copy_nonoverlapping(data.as_ptr(), page.as_ptr().wrapping_add(offset), data.len());
            }
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

    // SAFETY: the peer reaches a page only through `peer_*`, which check that its grant is active,
    // for that peer and with that access; `revoke` refuses while a mapping stands (copies happen under
    // the lock, so none is in progress when it succeeds) and clears the entry, after which every
    // `peer_*` call for it fails; abandoned references stay `in_use`, so they are never handed out or
    // revoked again by the table.
    unsafe impl ShareMemory for FakeGrantTable {
        type Handle = GrantRef;

        /// # Panics
        /// If `page` is not page-aligned (a bug in the caller, not peer behaviour).
        unsafe fn share(&self, peer: DomId, page: NonNull<u8>, access: Access) -> Result<GrantRef> {
            assert!(
                (page.as_ptr() as usize).is_multiple_of(XEN_PAGE_SIZE),
                "sharing {page:p}, which is not page-aligned"
            );
            let mut inner = self.inner.lock();
            let capacity = inner.entries.len();
            let first = GNTTAB_NR_RESERVED_ENTRIES as usize;
            let i = (first..capacity)
                .find(|&i| !inner.in_use[i])
                .ok_or(Error::GrantTableFull { capacity })?;
            let gref = GrantRef::try_from(i).map_err(|_| Error::GrantTableFull { capacity })?;
            let next_frame = FIRST_FRAME + inner.frames.len() as u32;
            let frame = *inner.frames.entry(page.as_ptr() as usize).or_insert(next_frame);
            let entry = &mut inner.entries[i];
            entry.domid = peer;
            entry.frame = frame;
            // Flags last: a real guest puts a write barrier here so Xen sees domid and frame first.
            entry.flags = GTF_PERMIT_ACCESS
                | if access == Access::ReadOnly {
                    GTF_READONLY
                } else {
                    0
                };
            inner.in_use[i] = true;
            inner.pages[i] = Some(page);
            inner.stats.active += 1;
            inner.stats.granted += 1;
            Ok(gref)
        }

        fn revoke(&self, gref: GrantRef) -> Result<()> {
            let mut inner = self.inner.lock();
            let i = inner.index(gref)?;
            if !inner.in_use[i] {
                return Err(Error::BadGrantRef { gref });
            }
            // The real guest does a compare-and-swap of `flags` to 0 that fails while Xen has the
            // reading/writing bits set.
            let flags = inner.entries[i].flags;
            if flags & (GTF_READING | GTF_WRITING) != 0 {
                inner.stats.busy_revokes += 1;
                return Err(Error::GrantInUse { gref, flags });
            }
            inner.entries[i] = GrantEntryV1 {
                flags: GTF_INVALID,
                ..Default::default()
            };
            inner.in_use[i] = false;
            inner.pages[i] = None;
            inner.stats.active -= 1;
            Ok(())
        }

        fn abandon(&self, still_shared: &[GrantRef], pages: usize) {
            // The references stay `in_use` (never handed out again) and keep their entries.
            let mut inner = self.inner.lock();
            inner.stats.abandoned += still_shared.len();
            inner.stats.abandoned_pages += pages;
        }
    }

    #[cfg(test)]
    mod tests {
        use alloc::boxed::Box;

        use super::*;

        const PEER: DomId = 0;
        const OTHER: DomId = 7;

        #[repr(C, align(4096))]
        struct Page([u8; XEN_PAGE_SIZE]);

        /// Pages for one test, reached only through their pointers (as a driver's shared pages
        /// are) and freed when the test ends.
        #[derive(Default)]
        struct Pages(core::cell::RefCell<Vec<NonNull<Page>>>);

        impl Pages {
            fn page(&self) -> NonNull<u8> {
                let p = NonNull::from(Box::leak(Box::new(Page([0; XEN_PAGE_SIZE]))));
                self.0.borrow_mut().push(p);
                p.cast()
            }
        }

        impl Drop for Pages {
            fn drop(&mut self) {
                for p in self.0.take() {
                    // SAFETY: each came from Box::leak above and is freed once, after the test's
                    // last use of it.
                    drop(unsafe { Box::from_raw(p.as_ptr()) });
                }
            }
        }

        fn share(gt: &FakeGrantTable, peer: DomId, page: NonNull<u8>, access: Access) -> Result<GrantRef> {
            // SAFETY: the test's pages are leaked (never freed) and only touched through pointers.
            unsafe { gt.share(peer, page, access) }
        }

        fn read_page(page: NonNull<u8>, offset: usize, buf: &mut [u8]) {
            // SAFETY: a leaked page; the range is inside it.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    page.as_ptr().wrapping_add(offset),
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            }
        }

        fn write_page(page: NonNull<u8>, offset: usize, data: &[u8]) {
            // SAFETY: a leaked page; the range is inside it.
            unsafe {
                core::ptr::copy_nonoverlapping(data.as_ptr(), page.as_ptr().wrapping_add(offset), data.len())
            }
        }

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
            let pages = Pages::default();
            let gt = FakeGrantTable::new(16);
            let (a, b) = (pages.page(), pages.page());
            let r = share(&gt, PEER, a, Access::ReadOnly).unwrap();
            assert_eq!(r, GNTTAB_NR_RESERVED_ENTRIES);
            let e = gt.entry(r).unwrap();
            assert_eq!(
                e,
                GrantEntryV1 {
                    flags: GTF_PERMIT_ACCESS | GTF_READONLY,
                    domid: PEER,
                    frame: FIRST_FRAME
                }
            );
            let w = share(&gt, OTHER, b, Access::ReadWrite).unwrap();
            assert_eq!(gt.entry(w).unwrap().flags, GTF_PERMIT_ACCESS);
            assert_eq!(gt.entry(w).unwrap().frame, FIRST_FRAME + 1);
            assert_eq!(gt.frame_of(b.as_ptr()), Some(FIRST_FRAME + 1));
            assert_eq!(gt.active(), 2);
            assert_eq!(gt.granted_to(OTHER), [w]);
            assert_eq!((gt.owner(), FakeGrantTable::with_owner(16, 3).owner()), (1, 3));
            // The same page granted again keeps its frame.
            let again = share(&gt, PEER, a, Access::ReadWrite).unwrap();
            assert_eq!(gt.entry(again).unwrap().frame, FIRST_FRAME);
        }

        #[test]
        fn revoke_while_mapped_fails_and_keeps_the_grant_until_unmapped() {
            let pages = Pages::default();
            let gt = FakeGrantTable::new(16);
            let p = pages.page();
            let r = share(&gt, PEER, p, Access::ReadWrite).unwrap();
            let mapped = gt.peer_map(PEER, r, Access::ReadWrite).unwrap();
            assert_eq!(mapped, p, "the peer reaches the granted page itself");
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
            assert_eq!(
                gt.peer_read(PEER, r, 0, &mut [0; 4]),
                Err(Error::BadGrantRef { gref: r })
            );
            assert_eq!(gt.revoke(r), Err(Error::BadGrantRef { gref: r }));
            let s = gt.stats();
            assert_eq!(
                (s.active, s.granted, s.busy_revokes, s.peer_mappings),
                (0, 1, 2, 0)
            );
        }

        #[test]
        fn peer_access_is_checked_against_domain_and_readonly() {
            let pages = Pages::default();
            let gt = FakeGrantTable::new(16);
            let r = share(&gt, PEER, pages.page(), Access::ReadOnly).unwrap();
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
        fn data_flows_between_granting_side_and_peer_through_the_real_page() {
            let pages = Pages::default();
            let gt = FakeGrantTable::new(16);
            let p = pages.page();
            write_page(p, 100, b"hello peer");
            let r = share(&gt, PEER, p, Access::ReadWrite).unwrap();
            let mut buf = [0u8; 10];
            gt.peer_read(PEER, r, 100, &mut buf).unwrap();
            assert_eq!(&buf, b"hello peer");
            gt.peer_write(PEER, r, 4090, b"tail!!").unwrap();
            let mut back = [0u8; 6];
            read_page(p, 4090, &mut back);
            assert_eq!(&back, b"tail!!");
            assert_eq!(
                gt.peer_write(PEER, r, 4091, b"tail!!"),
                Err(Error::GrantCopyOutOfPage {
                    gref: r,
                    offset: 4091,
                    len: 6
                })
            );
            assert_eq!(
                gt.peer_read(PEER, r, usize::MAX, &mut buf),
                Err(Error::GrantCopyOutOfPage {
                    gref: r,
                    offset: usize::MAX,
                    len: 10
                })
            );
        }

        #[test]
        fn table_fills_up_revoked_refs_are_reused_and_abandoned_ones_never() {
            let pages = Pages::default();
            let gt = FakeGrantTable::new(GNTTAB_NR_RESERVED_ENTRIES as usize + 3);
            let refs: Vec<_> = (0..3)
                .map(|_| share(&gt, PEER, pages.page(), Access::ReadOnly).unwrap())
                .collect();
            assert_eq!(
                share(&gt, PEER, pages.page(), Access::ReadOnly),
                Err(Error::GrantTableFull { capacity: 11 })
            );
            gt.revoke(refs[1]).unwrap();
            let p = pages.page();
            assert_eq!(share(&gt, PEER, p, Access::ReadOnly), Ok(refs[1]));
            assert_eq!(gt.entry(refs[1]).unwrap().frame, gt.frame_of(p.as_ptr()).unwrap());
            // A held grant given up on stays granted and out of circulation.
            gt.peer_map(PEER, refs[0], Access::ReadOnly).unwrap();
            assert!(gt.revoke(refs[0]).is_err());
            gt.abandon(&refs[..1], 1);
            assert_eq!(gt.abandoned(), (1, 1));
            gt.revoke(refs[2]).unwrap();
            assert_eq!(share(&gt, PEER, pages.page(), Access::ReadOnly), Ok(refs[2]));
            assert_eq!(
                share(&gt, PEER, pages.page(), Access::ReadOnly),
                Err(Error::GrantTableFull { capacity: 11 })
            );
            assert_eq!(
                gt.entry(refs[0]).unwrap().flags & GTF_PERMIT_ACCESS,
                GTF_PERMIT_ACCESS
            );
        }

        #[test]
        #[should_panic(expected = "not page-aligned")]
        fn sharing_an_unaligned_address_is_a_caller_bug() {
            let pages = Pages::default();
            let gt = FakeGrantTable::new(16);
            let p = pages.page();
            let _ = share(
                &gt,
                PEER,
                NonNull::new(p.as_ptr().wrapping_add(8)).unwrap(),
                Access::ReadOnly,
            );
        }
    }
}
