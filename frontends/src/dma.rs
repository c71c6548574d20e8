//! Memory a device can reach by DMA.
//!
//! Drivers never assume that a bus address equals the virtual address they use: under Xen PV the two
//! differ. They allocate [`DmaBuf`]s, hand [`DmaBuf::bus_addr`] to the device and touch the bytes
//! through [`DmaBuf::as_slice`] / [`DmaBuf::as_mut_slice`].
//!
//! The platform implements [`DmaAllocator`] and hands it (`&'static dyn DmaAllocator`) to each driver
//! it opens; there is no global allocator. Every [`DmaBuf`] remembers the allocator it came from and
//! gives its pages back to it on drop. Host tests use `fake::FakeDma` (feature `test-utils`), whose
//! bus addresses deliberately differ from the virtual ones.

use core::ptr::NonNull;

use crate::{Error, Result};

/// Size of a DMA page.
pub use ring_protocol::abi::PAGE_SIZE;

/// A run of physically contiguous pages handed out by a [`DmaAllocator`].
#[derive(Debug)]
pub struct DmaRegion {
    /// Address the device uses.
    pub bus: u64,
    /// Address the CPU uses; page-aligned, valid for `pages * PAGE_SIZE` bytes.
    pub virt: NonNull<u8>,
    /// Number of pages.
    pub pages: usize,
}

/// The platform's source of DMA memory (the role of virtio-drivers' `Hal::dma_alloc`, as a value
/// each driver is given).
///
/// # Safety
/// Drivers hand the memory to devices and peers and build slices over it, so implementations
/// guarantee that a region returned by [`alloc_pages`](Self::alloc_pages) is zeroed, page-aligned,
/// physically contiguous, valid for reads and writes of `pages * PAGE_SIZE` bytes, not aliased by any
/// other allocation until it is given back to [`free_pages`](Self::free_pages), and reachable by
/// devices at `bus`; that [`bus_address`](Self::bus_address) returns the address at which a device
/// reaches the byte at `virt`; and that [`virt_address`](Self::virt_address), when it answers, names
/// memory of a region this allocator handed out and has not taken back.
pub unsafe trait DmaAllocator: Sync + core::fmt::Debug {
    /// Allocates `pages` (≥ 1) zeroed, contiguous pages, or `None` if memory is short.
    fn alloc_pages(&self, pages: usize) -> Option<DmaRegion>;

    /// Gives a region back.
    ///
    /// # Safety
    /// `region` came from [`alloc_pages`](Self::alloc_pages) of this allocator, is given back once,
    /// and nothing (CPU or device) uses its memory any more.
    unsafe fn free_pages(&self, region: DmaRegion);

    /// The bus address of the byte at `virt` in ordinary kernel memory (heap, statics, stack), for
    /// drivers that let a device reach memory they did not allocate as [`DmaBuf`]; `None` if the
    /// device cannot reach it. The caller must not assume the next page is contiguous.
    fn bus_address(&self, virt: *const u8) -> Option<u64>;

    /// The CPU's address of a byte this allocator handed out at bus address `bus`, if it can tell
    /// (the default cannot). Drivers use it only to find a structure inside a region they allocated
    /// through a library that reports bus addresses alone.
    fn virt_address(&self, bus: u64) -> Option<NonNull<u8>> {
        let _ = bus;
        None
    }
}

/// An owned, zeroed, physically contiguous, page-aligned buffer of `len` bytes (rounded up to
/// whole pages underneath), from the allocator given to [`DmaBuf::new`], to which it returns on
/// drop. A zero-length buffer ([`DmaBuf::empty`]) owns no memory.
pub struct DmaBuf {
    region: Option<(DmaRegion, &'static dyn DmaAllocator)>,
    len: usize,
}

impl core::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmaBuf")
            .field("region", &self.region.as_ref().map(|(r, _)| r))
            .field("len", &self.len)
            .finish()
    }
}

// SAFETY: a DmaBuf owns its region exclusively (DmaAllocator's contract), like a Box<[u8]>; its
// allocator is `Sync`, so giving the region back from another thread is fine.
unsafe impl Send for DmaBuf {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for DmaBuf {}

impl DmaBuf {
    /// Allocates a zeroed buffer of `len` bytes from `dma`.
    ///
    /// # Errors
    /// [`Error::DmaExhausted`] if the allocator has no memory.
    pub fn new(dma: &'static dyn DmaAllocator, len: usize) -> Result<Self> {
        if len == 0 {
            return Ok(Self::empty());
        }
        let pages = len.div_ceil(PAGE_SIZE);
        let region = dma.alloc_pages(pages).ok_or(Error::DmaExhausted { pages })?;
        debug_assert!(region.pages >= pages);
        Ok(Self {
            region: Some((region, dma)),
            len,
        })
    }

    /// A buffer of no bytes (for requests that carry no data, such as a flush).
    pub const fn empty() -> Self {
        Self { region: None, len: 0 }
    }

    /// The allocator the buffer came from (`None` for an empty buffer).
    pub fn allocator(&self) -> Option<&'static dyn DmaAllocator> {
        self.region.as_ref().map(|&(_, dma)| dma)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes available in the underlying pages (≥ [`len`](Self::len)).
    pub fn capacity(&self) -> usize {
        self.region.as_ref().map_or(0, |(r, _)| r.pages * PAGE_SIZE)
    }

    /// Changes the length within [`capacity`](Self::capacity) (bytes past the old length keep their
    /// contents). Returns `false`, changing nothing, if `len` exceeds the capacity.
    pub fn set_len(&mut self, len: usize) -> bool {
        let ok = len <= self.capacity();
        if ok {
            self.len = len;
        }
        ok
    }

    /// The address a device uses for the first byte (0 for an empty buffer).
    pub fn bus_addr(&self) -> u64 {
        self.region.as_ref().map_or(0, |(r, _)| r.bus)
    }

    /// The CPU's view of the first byte.
    pub fn as_ptr(&self) -> *const u8 {
        self.region
            .as_ref()
            .map_or(NonNull::dangling().as_ptr(), |(r, _)| r.virt.as_ptr())
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.region {
            // SAFETY: the region is valid for pages * PAGE_SIZE ≥ len bytes and owned by self.
            Some((r, _)) => unsafe { core::slice::from_raw_parts(r.virt.as_ptr(), self.len) },
            None => &[],
        }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.region {
            // SAFETY: as in as_slice; `&mut self` makes the access exclusive.
            Some((r, _)) => unsafe { core::slice::from_raw_parts_mut(r.virt.as_ptr(), self.len) },
            None => &mut [],
        }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        if let Some((region, dma)) = self.region.take() {
            // SAFETY: the region came from `dma` and is given back once; the buffer owned it, so
            // nobody else uses it (a driver keeps a request's DmaBuf until the device is done with it,
            // and a page a peer may still reach is leaked with `mem::forget`, never dropped).
            unsafe { dma.free_pages(region) };
        }
    }
}

/// A test allocator on the host heap.
#[cfg(any(test, feature = "test-utils"))]
pub mod fake {
    use core::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Bus addresses are the virtual address plus this, so a driver that hands the device a virtual
    /// address is caught by a fake device that checks.
    pub const BUS_OFFSET: u64 = 0x4000_0000_0000;

    /// Allocates from the global heap; counts live pages and remembers where the live regions are.
    #[derive(Debug, Default)]
    pub struct FakeDma {
        live_pages: AtomicUsize,
        /// First byte -> pages, of every region handed out and not yet freed.
        live: spin::Mutex<alloc::collections::BTreeMap<usize, usize>>,
    }

    impl FakeDma {
        /// A new allocator with nothing allocated.
        pub const fn new() -> Self {
            Self {
                live_pages: AtomicUsize::new(0),
                live: spin::Mutex::new(alloc::collections::BTreeMap::new()),
            }
        }

        /// Pages allocated and not yet freed.
        pub fn live_pages(&self) -> usize {
            self.live_pages.load(Ordering::Relaxed)
        }

        /// Whether the byte at `virt` lies in a region handed out and not yet freed (tests use it to
        /// check that a page a peer still holds was never given back).
        pub fn is_live(&self, virt: *const u8) -> bool {
            let at = virt as usize;
            self.live
                .lock()
                .range(..=at)
                .next_back()
                .is_some_and(|(&start, &pages)| at < start + pages * PAGE_SIZE)
        }
    }

    fn layout(pages: usize) -> core::alloc::Layout {
        core::alloc::Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).expect("page layout")
    }

    // SAFETY: alloc_zeroed with a page-aligned layout gives zeroed, aligned, exclusive memory (host
    // memory is "contiguous" for a fake device); bus addresses are a fixed offset from virtual ones.
    unsafe impl DmaAllocator for FakeDma {
        fn alloc_pages(&self, pages: usize) -> Option<DmaRegion> {
            // SAFETY: the layout has non-zero size (pages ≥ 1 per the trait).
            let p = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout(pages.max(1))) })?;
            self.live_pages.fetch_add(pages, Ordering::Relaxed);
            self.live.lock().insert(p.as_ptr() as usize, pages);
            Some(DmaRegion {
                bus: p.as_ptr() as u64 + BUS_OFFSET,
                virt: p,
                pages,
            })
        }

        unsafe fn free_pages(&self, region: DmaRegion) {
            self.live_pages.fetch_sub(region.pages, Ordering::Relaxed);
            self.live.lock().remove(&(region.virt.as_ptr() as usize));
            // SAFETY: the caller returns a region from alloc_pages, so it was allocated with this
            // layout.
            unsafe { std::alloc::dealloc(region.virt.as_ptr(), layout(region.pages.max(1))) }
        }

        fn bus_address(&self, virt: *const u8) -> Option<u64> {
            Some(virt as u64 + BUS_OFFSET)
        }

        fn virt_address(&self, bus: u64) -> Option<NonNull<u8>> {
            NonNull::new(bus.checked_sub(BUS_OFFSET)? as *mut u8)
        }
    }

    /// One fake for every test (its checks are per address, so tests can share it).
    pub static FAKE_DMA: FakeDma = FakeDma::new();

    /// [`FAKE_DMA`] as the allocator drivers are given.
    pub fn dma() -> &'static dyn DmaAllocator {
        &FAKE_DMA
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_is_zeroed_aligned_writable_and_goes_back_to_its_allocator() {
        let mut b = DmaBuf::new(fake::dma(), 5000).unwrap();
        let first = b.as_ptr();
        assert!(fake::FAKE_DMA.is_live(first));
        assert!(core::ptr::addr_eq(b.allocator().unwrap(), &fake::FAKE_DMA));
        assert_eq!(b.len(), 5000);
        assert_eq!(b.capacity(), 2 * PAGE_SIZE);
        assert_eq!(b.as_ptr() as usize % PAGE_SIZE, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[4999] = 0xab;
        assert_eq!(b.as_slice()[4999], 0xab);
        assert_eq!(b.bus_addr(), b.as_ptr() as u64 + fake::BUS_OFFSET);
        assert!(b.set_len(8192));
        assert!(!b.set_len(8193));
        assert_eq!(b.len(), 8192);
        drop(b);
        assert!(!fake::FAKE_DMA.is_live(first), "freed on drop");
    }

    #[test]
    fn an_allocator_out_of_memory_is_a_typed_error() {
        #[derive(Debug)]
        struct Empty;
        // SAFETY: hands out nothing, so it cannot break the contract.
        unsafe impl DmaAllocator for Empty {
            fn alloc_pages(&self, _: usize) -> Option<DmaRegion> {
                None
            }
            unsafe fn free_pages(&self, _: DmaRegion) {
                unreachable!("nothing was handed out")
            }
            fn bus_address(&self, _: *const u8) -> Option<u64> {
                None
            }
        }
        static EMPTY: Empty = Empty;
        assert_eq!(
            DmaBuf::new(&EMPTY, 3 * PAGE_SIZE).unwrap_err(),
            Error::DmaExhausted { pages: 3 }
        );
        assert!(
            DmaBuf::new(&EMPTY, 0).unwrap().is_empty(),
            "no memory needed for no bytes"
        );
    }

    #[test]
    fn empty_buffer_owns_nothing() {
        let b = DmaBuf::empty();
        assert!(b.is_empty());
        assert_eq!(b.bus_addr(), 0);
        assert!(b.allocator().is_none());
        assert_eq!(b.as_slice(), &[] as &[u8]);
    }
}
