//! Memory for request data: [`AlignedBuf`] (heap, 4 KiB aligned: `O_DIRECT` bounce buffers) and
//! [`IoBuf`] (page-aligned anonymous mappings of their own: the data of requests the asynchronous
//! executor owns while the kernel may write them).

use std::io;
use std::ptr::NonNull;

/// Alignment of bounce buffers used for `O_DIRECT` when the caller's memory is not aligned.
const DIRECT_ALIGN: usize = 4096;

/// Size of a page of [`IoBuf`] memory.
const PAGE: usize = ring_protocol::abi::PAGE_SIZE;

/// A zeroed, 4 KiB-aligned heap buffer: `O_DIRECT` bounces, and adapters that keep their request
/// data in memory `O_DIRECT` accepts as is.
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

// SAFETY: the buffer is plain heap memory owned by this value.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// At least `len` zeroed bytes (at least 4096), 4096-aligned.
    pub fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len.max(DIRECT_ALIGN), DIRECT_ALIGN)
            .expect("bounce buffer layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, layout }
    }
}

impl AlignedBuf {
    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Whether it is empty (never: at least 4096 bytes).
    pub fn is_empty(&self) -> bool {
        self.layout.size() == 0
    }

    /// The first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// The bytes, read-only.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: as for `as_mut_slice`, shared.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }

    /// The bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live, initialised (zeroed) allocation of `len()` bytes owned by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Page-aligned memory of its own (an anonymous private mapping, never part of the malloc heap)
/// holding one request's data. It has a capacity (whole pages) and a length (the bytes in use).
pub struct IoBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: an anonymous private mapping owned by this value alone; moving it to another thread moves
// the ownership.
unsafe impl Send for IoBuf {}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoBuf")
            .field("cap", &self.cap)
            .field("len", &self.len)
            .finish()
    }
}

impl IoBuf {
    /// At least `cap` zeroed bytes (rounded up to whole pages, at least one); its length is `cap`.
    pub fn new(cap: usize) -> io::Result<IoBuf> {
        let pages = cap.max(1).div_ceil(PAGE);
        let bytes = pages
            .checked_mul(PAGE)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "buffer size overflows"))?;
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(IoBuf {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned null"),
            cap: bytes,
            len: cap,
        })
    }

    /// Bytes it can hold.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes in use.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no byte is in use.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets the bytes in use; refused beyond the capacity.
    pub fn set_len(&mut self, len: usize) -> io::Result<()> {
        if len > self.cap {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{len} bytes do not fit a {}-byte buffer", self.cap),
            ));
        }
        self.len = len;
        Ok(())
    }

    /// The bytes in use.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len <= cap` bytes of the live mapping this value owns; initialised (zero-filled
        // by the kernel, then written only through this value).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes in use, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`, exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once. Nothing else can be using it: the AIO
        // queue only lets a buffer go after its completion was collected.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.cap) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_buffers_are_whole_pages_and_refuse_lengths_beyond_them() {
        let mut b = IoBuf::new(5000).unwrap();
        assert_eq!((b.capacity(), b.len()), (8192, 5000));
        assert_eq!(b.as_slice().as_ptr() as usize % 4096, 0);
        b.set_len(8192).unwrap();
        assert!(b.set_len(8193).is_err());
        assert!(b.as_slice().iter().all(|&x| x == 0));
    }
}
