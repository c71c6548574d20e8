//! Byte rings: the console (`xencons_interface`) and XenStore (`xenstore_domain_interface`) pages.
//!
//! Each page holds two one-way byte rings, each with a free-running `u32` producer and consumer index;
//! a byte's position is `index & (size - 1)`. A [`ByteWriter`] produces into one ring and a
//! [`ByteReader`] consumes from one; [`console_guest`], [`console_backend`], [`xenstore_guest`] and
//! [`xenstore_daemon`] hand out the right pair for each end of each page.
//!
//! Hardening: each side keeps its own index privately and only ever *writes* it to shared memory, so a
//! peer scribbling on it changes nothing. The peer's index is read once per call and checked: if
//! `prod - cons` exceeds the ring size, the ring halts with [`Error::ByteRingOverrun`] and every later
//! call returns that error. Bytes are copied with atomic byte accesses, so a peer writing concurrently
//! can at worst make us read garbage bytes, never undefined behaviour.
//!
//! Notifications: these protocols have no event indices; a writer notifies the peer after writing any
//! byte (so the reader wakes), and a reader after consuming any byte (so a writer waiting for space
//! wakes). [`Transfer::notify`] says exactly that.
//!
//! Memory ordering: a writer's `Release` store of its producer index pairs with the reader's `Acquire`
//! load of it (bytes before index); a reader's `Release` store of its consumer index pairs with the
//! writer's `Acquire` load (reads of old bytes finish before the space is reused). This module uses
//! `core` atomics directly and is not loom-modelled; the pattern is the one loom checks for the shared
//! ring.
//!
//! ```
//! use core::ptr::NonNull;
//! use ring_protocol::abi::console::XenconsInterface;
//! use ring_protocol::byte_ring::{console_backend, console_guest};
//! use zerocopy::FromZeros;
//!
//! let mut page = XenconsInterface::new_zeroed();
//! let intf = NonNull::from(&mut page);
//! // SAFETY: `page` outlives both ends and is accessed only through them.
//! let (mut guest, mut backend) = unsafe { (console_guest(intf).unwrap(), console_backend(intf).unwrap()) };
//! let sent = guest.tx.write(b"hello\n").unwrap();
//! assert_eq!((sent.bytes, sent.notify), (6, true));
//! let mut buf = [0u8; 16];
//! let got = backend.rx.read(&mut buf).unwrap();
//! assert_eq!(&buf[..got.bytes], b"hello\n");
//! ```

use core::fmt;
use core::mem::offset_of;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use crate::abi::console::{XENCONS_IN_SIZE, XENCONS_OUT_SIZE, XenconsInterface};
use crate::abi::xenstore::{XENSTORE_RING_SIZE, XenstoreDomainInterface};
use crate::{Error, Result};

/// What one [`ByteWriter::write`] or [`ByteReader::read`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes written or read.
    pub bytes: usize,
    /// Whether the peer should be notified (any byte moved).
    pub notify: bool,
}

impl Transfer {
    fn of(bytes: usize) -> Self {
        Self {
            bytes,
            notify: bytes > 0,
        }
    }
}

/// One end of a byte-ring page: the ring it writes and the ring it reads.
#[derive(Debug)]
pub struct Duplex {
    /// The ring this end produces into.
    pub tx: ByteWriter,
    /// The ring this end consumes from.
    pub rx: ByteReader,
}

/// Pointers to one ring in shared memory.
struct Shared {
    data: NonNull<AtomicU8>,
    size: u32,
    prod: NonNull<AtomicU32>,
    cons: NonNull<AtomicU32>,
}

impl Shared {
    /// # Safety
    /// `data` must point to `size` bytes, `prod` and `cons` to 4-byte-aligned `u32`s, all valid for the
    /// life of the result and accessed by others in this address space only atomically.
    unsafe fn new(data: NonNull<u8>, size: u32, prod: NonNull<u32>, cons: NonNull<u32>) -> Result<Self> {
        assert!(
            size.is_power_of_two(),
            "byte ring size {size} is not a power of two"
        );
        for p in [prod, cons] {
            let addr = p.as_ptr().addr();
            if !addr.is_multiple_of(4) {
                return Err(Error::Misaligned { addr, align: 4 });
            }
        }
        Ok(Self {
            data: data.cast(),
            size,
            prod: prod.cast(),
            cons: cons.cast(),
        })
    }

    fn prod(&self) -> &AtomicU32 {
        // SAFETY: valid, aligned and only atomically accessed (constructor contract).
        unsafe { self.prod.as_ref() }
    }

    fn cons(&self) -> &AtomicU32 {
        // SAFETY: valid, aligned and only atomically accessed (constructor contract).
        unsafe { self.cons.as_ref() }
    }

    fn byte(&self, index: u32) -> &AtomicU8 {
        let i = (index & (self.size - 1)) as usize;
        // SAFETY: `i < size` and `data` points to `size` bytes (constructor contract).
        let p = unsafe { self.data.add(i) };
        // SAFETY: the byte is valid and accessed by others only atomically (constructor contract).
        unsafe { p.as_ref() }
    }

    /// Checks `prod - cons <= size`.
    fn used(&self, prod: u32, cons: u32) -> Result<u32> {
        let used = prod.wrapping_sub(cons);
        if used > self.size {
            return Err(Error::ByteRingOverrun {
                prod,
                cons,
                used,
                size: self.size,
            });
        }
        Ok(used)
    }
}

/// Produces bytes into a byte ring; keeps the producer index privately.
pub struct ByteWriter {
    ring: Shared,
    prod_pvt: u32,
    halted: Option<Error>,
}

// SAFETY: the writer holds no thread-bound state; shared memory is touched only through atomics.
unsafe impl Send for ByteWriter {}

impl ByteWriter {
    /// A writer for the ring of `size` bytes at `data`, with producer index `prod` (ours) and consumer
    /// index `cons` (the peer's). Starts from the producer index currently in shared memory.
    ///
    /// # Errors
    /// [`Error::Misaligned`] if an index is not 4-byte aligned; [`Error::ByteRingOverrun`] if the current
    /// indices are already inconsistent.
    ///
    /// # Panics
    /// If `size` is not a power of two.
    ///
    /// # Safety
    /// `data` must point to `size` bytes and `prod`/`cons` to `u32`s, all valid for the life of the
    /// writer and accessed by others in this address space only through atomics (or by a peer outside
    /// it). No other writer may use the same ring.
    pub unsafe fn from_raw(
        data: NonNull<u8>,
        size: u32,
        prod: NonNull<u32>,
        cons: NonNull<u32>,
    ) -> Result<Self> {
        // SAFETY: forwarded from this function's contract.
        let ring = unsafe { Shared::new(data, size, prod, cons) }?;
        let prod_pvt = ring.prod().load(Ordering::Relaxed);
        // Acquire: the reader's reads of bytes before its consumer index are done.
        let cons = ring.cons().load(Ordering::Acquire);
        ring.used(prod_pvt, cons)?;
        Ok(Self {
            ring,
            prod_pvt,
            halted: None,
        })
    }

    /// Ring size in bytes.
    pub fn size(&self) -> u32 {
        self.ring.size
    }

    /// The error that halted this ring, if any.
    pub fn halted(&self) -> Option<Error> {
        self.halted
    }

    fn used(&mut self) -> Result<u32> {
        if let Some(e) = self.halted {
            return Err(e);
        }
        // Acquire: pairs with the reader's Release store of cons; its reads of the freed bytes are done
        // before we overwrite them.
        let cons = self.ring.cons().load(Ordering::Acquire);
        self.ring
            .used(self.prod_pvt, cons)
            .inspect_err(|e| self.halted = Some(*e))
    }

    /// Bytes that can be written now.
    ///
    /// # Errors
    /// [`Error::ByteRingOverrun`] (and the ring halts) if the peer's consumer index is inconsistent.
    pub fn free_space(&mut self) -> Result<u32> {
        Ok(self.size() - self.used()?)
    }

    /// Writes as much of `bytes` as fits and publishes it.
    ///
    /// # Errors
    /// As [`free_space`](Self::free_space).
    pub fn write(&mut self, bytes: &[u8]) -> Result<Transfer> {
        let free = self.free_space()? as usize;
        let n = free.min(bytes.len());
        for (i, &b) in bytes[..n].iter().enumerate() {
            self.ring
                .byte(self.prod_pvt.wrapping_add(i as u32))
                .store(b, Ordering::Relaxed);
        }
        self.prod_pvt = self.prod_pvt.wrapping_add(n as u32);
        // Release: the reader sees the bytes before it sees the new producer index.
        self.ring.prod().store(self.prod_pvt, Ordering::Release);
        Ok(Transfer::of(n))
    }
}

impl fmt::Debug for ByteWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteWriter")
            .field("size", &self.ring.size)
            .field("prod_pvt", &self.prod_pvt)
            .field("halted", &self.halted)
            .finish()
    }
}

/// Consumes bytes from a byte ring; keeps the consumer index privately.
pub struct ByteReader {
    ring: Shared,
    cons_pvt: u32,
    halted: Option<Error>,
}

// SAFETY: the reader holds no thread-bound state; shared memory is touched only through atomics.
unsafe impl Send for ByteReader {}

impl ByteReader {
    /// A reader for the ring of `size` bytes at `data`, with producer index `prod` (the peer's) and
    /// consumer index `cons` (ours). Starts from the consumer index currently in shared memory.
    ///
    /// # Errors
    /// As [`ByteWriter::from_raw`].
    ///
    /// # Panics
    /// If `size` is not a power of two.
    ///
    /// # Safety
    /// As [`ByteWriter::from_raw`], with "reader" for "writer".
    pub unsafe fn from_raw(
        data: NonNull<u8>,
        size: u32,
        prod: NonNull<u32>,
        cons: NonNull<u32>,
    ) -> Result<Self> {
        // SAFETY: forwarded from this function's contract.
        let ring = unsafe { Shared::new(data, size, prod, cons) }?;
        let cons_pvt = ring.cons().load(Ordering::Relaxed);
        // Acquire: bytes written before the producer index are visible.
        let prod = ring.prod().load(Ordering::Acquire);
        ring.used(prod, cons_pvt)?;
        Ok(Self {
            ring,
            cons_pvt,
            halted: None,
        })
    }

    /// Ring size in bytes.
    pub fn size(&self) -> u32 {
        self.ring.size
    }

    /// The error that halted this ring, if any.
    pub fn halted(&self) -> Option<Error> {
        self.halted
    }

    /// Bytes waiting to be read.
    ///
    /// # Errors
    /// [`Error::ByteRingOverrun`] (and the ring halts) if the peer's producer index claims more than the
    /// ring holds or went backwards.
    pub fn available(&mut self) -> Result<u32> {
        if let Some(e) = self.halted {
            return Err(e);
        }
        // Acquire: pairs with the writer's Release store of prod; the bytes it covers are visible.
        let prod = self.ring.prod().load(Ordering::Acquire);
        self.ring
            .used(prod, self.cons_pvt)
            .inspect_err(|e| self.halted = Some(*e))
    }

    /// Copies up to `buf.len()` waiting bytes into `buf` and frees their space.
    ///
    /// # Errors
    /// As [`available`](Self::available).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<Transfer> {
        let n = (self.available()? as usize).min(buf.len());
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = self
                .ring
                .byte(self.cons_pvt.wrapping_add(i as u32))
                .load(Ordering::Relaxed);
        }
        self.cons_pvt = self.cons_pvt.wrapping_add(n as u32);
        // Release: our reads of the consumed bytes happen before the writer may reuse their space.
        self.ring.cons().store(self.cons_pvt, Ordering::Release);
        Ok(Transfer::of(n))
    }
}

impl fmt::Debug for ByteReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteReader")
            .field("size", &self.ring.size)
            .field("cons_pvt", &self.cons_pvt)
            .field("halted", &self.halted)
            .finish()
    }
}

/// Pointer to the field at byte offset `off` of `base`, keeping `base`'s provenance.
fn field<S, T>(base: NonNull<S>, off: usize) -> NonNull<T> {
    base.cast::<u8>()
        .map_addr(|a| a.checked_add(off).expect("field address overflows"))
        .cast()
}

/// A ring's data array and index pair inside an interface page.
struct Layout {
    data: usize,
    size: usize,
    prod: usize,
    cons: usize,
}

const CONS_OUT: Layout = Layout {
    data: offset_of!(XenconsInterface, out),
    size: XENCONS_OUT_SIZE,
    prod: offset_of!(XenconsInterface, out_prod),
    cons: offset_of!(XenconsInterface, out_cons),
};
const CONS_IN: Layout = Layout {
    data: offset_of!(XenconsInterface, in_),
    size: XENCONS_IN_SIZE,
    prod: offset_of!(XenconsInterface, in_prod),
    cons: offset_of!(XenconsInterface, in_cons),
};
const XS_REQ: Layout = Layout {
    data: offset_of!(XenstoreDomainInterface, req),
    size: XENSTORE_RING_SIZE,
    prod: offset_of!(XenstoreDomainInterface, req_prod),
    cons: offset_of!(XenstoreDomainInterface, req_cons),
};
const XS_RSP: Layout = Layout {
    data: offset_of!(XenstoreDomainInterface, rsp),
    size: XENSTORE_RING_SIZE,
    prod: offset_of!(XenstoreDomainInterface, rsp_prod),
    cons: offset_of!(XenstoreDomainInterface, rsp_cons),
};

/// # Safety
/// `base` must be valid for the interface type the layout belongs to, as in [`ByteWriter::from_raw`].
unsafe fn writer<S>(base: NonNull<S>, l: &Layout) -> Result<ByteWriter> {
    // SAFETY: the layout's offsets come from `offset_of!` on `S`, so every field is inside `*base`, which
    // is valid per this function's contract.
    unsafe {
        ByteWriter::from_raw(
            field(base, l.data),
            l.size as u32,
            field(base, l.prod),
            field(base, l.cons),
        )
    }
}

/// # Safety
/// As [`writer`].
unsafe fn reader<S>(base: NonNull<S>, l: &Layout) -> Result<ByteReader> {
    // SAFETY: as in `writer`.
    unsafe {
        ByteReader::from_raw(
            field(base, l.data),
            l.size as u32,
            field(base, l.prod),
            field(base, l.cons),
        )
    }
}

/// The guest's end of a console page: `tx` writes `out`, `rx` reads `in`.
///
/// # Errors
/// [`Error::ByteRingOverrun`] if the page's indices are already inconsistent; [`Error::Misaligned`].
///
/// # Safety
/// `intf` must stay valid for the life of the returned rings and be accessed by others in this address
/// space only through atomics (or by a peer outside it); no other guest end may exist for it.
pub unsafe fn console_guest(intf: NonNull<XenconsInterface>) -> Result<Duplex> {
    // SAFETY: forwarded from this function's contract.
    let tx = unsafe { writer(intf, &CONS_OUT) }?;
    // SAFETY: forwarded from this function's contract.
    let rx = unsafe { reader(intf, &CONS_IN) }?;
    Ok(Duplex { tx, rx })
}

/// The backend's end of a console page: `tx` writes `in`, `rx` reads `out`.
///
/// # Errors
/// As [`console_guest`].
///
/// # Safety
/// As [`console_guest`], for the backend end.
pub unsafe fn console_backend(intf: NonNull<XenconsInterface>) -> Result<Duplex> {
    // SAFETY: forwarded from this function's contract.
    let tx = unsafe { writer(intf, &CONS_IN) }?;
    // SAFETY: forwarded from this function's contract.
    let rx = unsafe { reader(intf, &CONS_OUT) }?;
    Ok(Duplex { tx, rx })
}

/// The guest's end of a XenStore page: `tx` writes requests (`req`), `rx` reads replies (`rsp`).
///
/// # Errors
/// As [`console_guest`].
///
/// # Safety
/// As [`console_guest`], for a XenStore page.
pub unsafe fn xenstore_guest(intf: NonNull<XenstoreDomainInterface>) -> Result<Duplex> {
    // SAFETY: forwarded from this function's contract.
    let tx = unsafe { writer(intf, &XS_REQ) }?;
    // SAFETY: forwarded from this function's contract.
    let rx = unsafe { reader(intf, &XS_RSP) }?;
    Ok(Duplex { tx, rx })
}

/// The XenStore daemon's end of a XenStore page: `tx` writes replies (`rsp`), `rx` reads requests
/// (`req`).
///
/// # Errors
/// As [`console_guest`].
///
/// # Safety
/// As [`console_guest`], for the daemon end of a XenStore page.
pub unsafe fn xenstore_daemon(intf: NonNull<XenstoreDomainInterface>) -> Result<Duplex> {
    // SAFETY: forwarded from this function's contract.
    let tx = unsafe { writer(intf, &XS_RSP) }?;
    // SAFETY: forwarded from this function's contract.
    let rx = unsafe { reader(intf, &XS_REQ) }?;
    Ok(Duplex { tx, rx })
}
