//! Zeroed, page-aligned memory for rings living in one address space (tests, benchmarks, backends that
//! own their ring memory).

use core::fmt;
use core::ptr::NonNull;

#[cfg(not(loom))]
use super::XEN_PAGE_SIZE;

/// A zeroed, 4096-byte-aligned heap allocation to place a ring in (`alloc` feature).
///
/// Under `--cfg loom` the memory is an array of loom atomics instead, so rings built on it are
/// model-checked.
pub struct SharedPages {
    #[cfg(not(loom))]
    ptr: NonNull<u8>,
    #[cfg(loom)]
    words: alloc::boxed::Box<[crate::sync::AtomicU32]>,
    len: usize,
}

// SAFETY: `SharedPages` is plain memory; all access to its contents goes through the ring types, which
// use atomics only, so sharing the allocation between threads is sound.
unsafe impl Send for SharedPages {}
// SAFETY: as above: `&SharedPages` only yields a pointer; reads and writes through it are atomic.
unsafe impl Sync for SharedPages {}

impl SharedPages {
    /// Allocates `len` zeroed bytes aligned to 4096, `len` rounded up to a multiple of 4.
    ///
    /// # Panics
    /// If `len` is 0 or the allocation fails.
    #[cfg(not(loom))]
    pub fn new(len: usize) -> Self {
        let len = len.next_multiple_of(4);
        let layout = alloc::alloc::Layout::from_size_align(len, XEN_PAGE_SIZE).expect("ring memory layout");
        assert!(len > 0, "SharedPages::new(0)");
        // SAFETY: the layout has a non-zero size (asserted above).
        let raw = unsafe { alloc::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::alloc::handle_alloc_error(layout));
        Self { ptr, len }
    }

    /// Allocates `len` bytes (rounded up to a multiple of 4) as zeroed loom atomic words.
    ///
    /// # Panics
    /// If `len` is 0.
    #[cfg(loom)]
    pub fn new(len: usize) -> Self {
        let len = len.next_multiple_of(4);
        assert!(len > 0, "SharedPages::new(0)");
        let words = (0..len / 4).map(|_| crate::sync::AtomicU32::new(0)).collect();
        Self { words, len }
    }

    /// Start of the memory, to pass to a ring constructor together with [`len`](Self::len).
    pub fn as_ptr(&self) -> NonNull<u8> {
        #[cfg(not(loom))]
        {
            self.ptr
        }
        #[cfg(loom)]
        {
            NonNull::from(&*self.words).cast()
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: the length is at least 4.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(not(loom))]
impl Drop for SharedPages {
    fn drop(&mut self) {
        let layout =
            alloc::alloc::Layout::from_size_align(self.len, XEN_PAGE_SIZE).expect("ring memory layout");
        // SAFETY: `ptr` came from `alloc_zeroed` with this same layout and is freed only here.
        unsafe { alloc::alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

impl fmt::Debug for SharedPages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedPages")
            .field("ptr", &self.as_ptr())
            .field("len", &self.len)
            .finish()
    }
}
