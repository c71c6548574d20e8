//! Access to the shared pages: the 64-byte header and the slots, as an array of 32-bit atomic words.
//!
//! Nothing here trusts the contents of the shared memory: indices read from it are only ever masked
//! into range, and slots are copied word by word with atomic loads, so a peer writing concurrently can
//! tear a copy but can never make it undefined behaviour, an out-of-bounds access or a panic.
//!
//! Header fields are always accessed as 32-bit words. Slots are copied in 64-bit atomic words when the
//! memory is 8-byte aligned and the slot stride is a multiple of 8 (blkif, the benchmark's 64-byte
//! entries), halving the number of accesses; otherwise, and always under loom, in 32-bit words. The
//! choice depends only on the memory and the entry types, so both ends of a ring in one address space
//! access each slot with the same access sizes.

use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use core::ptr::NonNull;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::{RING_HEADER_SIZE, slot_size};
#[cfg(not(loom))]
use crate::sync::AtomicU64;
use crate::sync::{AtomicU32, Ordering};
use crate::{Error, Result};

/// Size of one shared word.
const WORD: usize = 4;

/// Word offsets of the header fields (`struct __name##_sring`).
pub(super) const REQ_PROD: usize = 0;
pub(super) const REQ_EVENT: usize = 1;
pub(super) const RSP_PROD: usize = 2;
pub(super) const RSP_EVENT: usize = 3;
const HEADER_WORDS: usize = RING_HEADER_SIZE / WORD;

/// The shared pages of one ring plus its (immutable) geometry. Private to the ring types.
pub(super) struct RawRing<Req, Rsp> {
    /// First word of the shared memory; provenance covers `words` words.
    base: NonNull<AtomicU32>,
    /// Number of slots, a power of two.
    size: u32,
    /// Slot stride in words.
    slot_words: usize,
    /// Whether slots are copied in 64-bit words (see the module docs). Always false under loom.
    #[cfg_attr(loom, allow(dead_code))]
    wide: bool,
    _types: PhantomData<fn(Req) -> Rsp>,
}

impl<Req, Rsp> RawRing<Req, Rsp> {
    /// Number of slots.
    pub(super) fn size(&self) -> u32 {
        self.size
    }
}

impl<Req, Rsp> RawRing<Req, Rsp>
where
    Req: FromBytes + IntoBytes + Immutable,
    Rsp: FromBytes + IntoBytes + Immutable,
{
    /// Compile-time checks on the entry types.
    const CHECKS: () = {
        assert!(
            slot_size::<Req, Rsp>().is_multiple_of(WORD),
            "ring slot size must be a multiple of 4 bytes"
        );
        assert!(slot_size::<Req, Rsp>() > 0, "ring entries must not be zero-sized");
        assert!(
            align_of::<Req>() <= RING_HEADER_SIZE && align_of::<Rsp>() <= RING_HEADER_SIZE,
            "ring entries must not need more than 64-byte alignment"
        );
    };

    /// # Safety
    ///
    /// `mem` must point to `len` bytes that stay valid, and are accessed by anyone else only through
    /// atomic operations of the sizes described in the module docs (or by a peer outside this address
    /// space), for as long as the returned value or anything built from it exists.
    pub(super) unsafe fn new(mem: NonNull<u8>, len: usize) -> Result<Self> {
        let () = Self::CHECKS;
        let addr = mem.as_ptr().addr();
        if !addr.is_multiple_of(align_of::<AtomicU32>()) {
            return Err(Error::Misaligned {
                addr,
                align: align_of::<AtomicU32>(),
            });
        }
        let size = super::ring_size::<Req, Rsp>(len);
        if size == 0 {
            return Err(Error::TooSmall {
                len,
                needed: RING_HEADER_SIZE + slot_size::<Req, Rsp>(),
            });
        }
        Ok(Self {
            base: mem.cast(),
            size,
            slot_words: slot_size::<Req, Rsp>() / WORD,
            wide: !cfg!(loom) && addr.is_multiple_of(8) && slot_size::<Req, Rsp>().is_multiple_of(8),
            _types: PhantomData,
        })
    }

    /// The shared word at `index`.
    fn word(&self, index: usize) -> &AtomicU32 {
        debug_assert!(index < HEADER_WORDS + self.size as usize * self.slot_words);
        // SAFETY: every caller passes a header word (< HEADER_WORDS) or a word inside a slot whose index
        // was masked by `size - 1`, so `index` is within the `len` bytes checked in `new`.
        let p = unsafe { self.base.add(index) };
        // SAFETY: the word is valid and 4-byte aligned (constructor contract, checked in `new`), and
        // other parties access it only atomically.
        unsafe { p.as_ref() }
    }

    /// A header field (`REQ_PROD`, `REQ_EVENT`, `RSP_PROD` or `RSP_EVENT`).
    pub(super) fn header(&self, field: usize) -> &AtomicU32 {
        debug_assert!(field < 4);
        self.word(field)
    }

    /// `SHARED_RING_INIT`: both producers 0, both events 1, the private and padding bytes zeroed.
    pub(super) fn init_shared(&self) {
        for i in 4..HEADER_WORDS {
            self.word(i).store(0, Ordering::Relaxed);
        }
        self.header(REQ_EVENT).store(1, Ordering::Relaxed);
        self.header(RSP_EVENT).store(1, Ordering::Relaxed);
        self.header(RSP_PROD).store(0, Ordering::Relaxed);
        // Release: whoever later acquires req_prod also sees the rest of the initialised header.
        self.header(REQ_PROD).store(0, Ordering::Release);
    }

    /// First word of the slot for free-running index `idx`.
    fn slot(&self, idx: u32) -> usize {
        HEADER_WORDS + (idx & (self.size - 1)) as usize * self.slot_words
    }

    /// The 64-bit word starting at 32-bit word `index` (which is even: only used for slots when `wide`).
    #[cfg(not(loom))]
    fn dword(&self, index: usize) -> &AtomicU64 {
        debug_assert!(self.wide && index.is_multiple_of(2));
        debug_assert!(index + 2 <= HEADER_WORDS + self.size as usize * self.slot_words);
        // SAFETY: callers pass a word inside a masked slot, with both halves in the slot (as in `word`).
        let p = unsafe { self.base.add(index) };
        // SAFETY: `wide` means the base is 8-byte aligned and the slot stride a multiple of 8, and slot
        // copies use even word indices, so this is an aligned 8-byte atomic inside the valid memory.
        unsafe { p.cast::<AtomicU64>().as_ref() }
    }

    /// Copies the entry at `idx` out of shared memory, once, word by word (`RING_COPY_*`).
    ///
    /// The words are loaded with `Relaxed` atomics: the caller has already acquired the producer index
    /// that covers this slot. A concurrently writing (hostile) peer can only produce a torn snapshot.
    pub(super) fn read_slot<T: FromBytes + IntoBytes>(&self, idx: u32) -> T {
        let mut value = T::new_zeroed();
        let bytes = value.as_mut_bytes();
        let first = self.slot(idx);
        let mut off = 0;
        #[cfg(not(loom))]
        if self.wide {
            for chunk in bytes.chunks_exact_mut(8) {
                chunk.copy_from_slice(
                    &self
                        .dword(first + off / WORD)
                        .load(Ordering::Relaxed)
                        .to_ne_bytes(),
                );
                off += 8;
            }
        }
        while off < bytes.len() {
            // A partial last word still lies inside the slot: the stride is a multiple of 4 and at least
            // `size_of::<T>()`.
            let word = self
                .word(first + off / WORD)
                .load(Ordering::Relaxed)
                .to_ne_bytes();
            let n = (bytes.len() - off).min(WORD);
            bytes[off..off + n].copy_from_slice(&word[..n]);
            off += WORD;
        }
        value
    }

    /// Writes `value` whole into the slot at `idx`, word by word.
    ///
    /// `IntoBytes` guarantees `value` has no padding, so no uninitialised byte reaches the peer. A
    /// partial last word is completed with zero bytes. Publication is the caller's Release store.
    pub(super) fn write_slot<T: IntoBytes + Immutable>(&self, idx: u32, value: &T) {
        let bytes = value.as_bytes();
        let first = self.slot(idx);
        let mut off = 0;
        #[cfg(not(loom))]
        if self.wide {
            for chunk in bytes.chunks_exact(8) {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                self.dword(first + off / WORD)
                    .store(u64::from_ne_bytes(word), Ordering::Relaxed);
                off += 8;
            }
        }
        while off < bytes.len() {
            let mut word = [0u8; WORD];
            let n = (bytes.len() - off).min(WORD);
            word[..n].copy_from_slice(&bytes[off..off + n]);
            self.word(first + off / WORD)
                .store(u32::from_ne_bytes(word), Ordering::Relaxed);
            off += WORD;
        }
    }
}

// Used by size checks in tests.
const _: () = assert!(size_of::<AtomicU32>() == WORD || cfg!(loom));
