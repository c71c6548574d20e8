//! Access to the shared pages: the 64-byte header and the slots, as an array of 32-bit atomic words.
//!
//! Nothing here trusts the contents of the shared memory: indices read from it are only ever masked
//! into range, and slots are copied word by word with atomic loads, so a peer writing concurrently can
//! tear a copy but can never make it undefined behaviour, an out-of-bounds access or a panic.

use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use core::ptr::NonNull;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::{RING_HEADER_SIZE, slot_size};
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
    /// 32-bit atomic operations (or by a peer outside this address space), for as long as the returned
    /// value or anything built from it exists.
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

    /// Copies the entry at `idx` out of shared memory, once, word by word (`RING_COPY_*`).
    ///
    /// The words are loaded with `Relaxed` atomics: the caller has already acquired the producer index
    /// that covers this slot. A concurrently writing (hostile) peer can only produce a torn snapshot.
    pub(super) fn read_slot<T: FromBytes + IntoBytes>(&self, idx: u32) -> T {
        let mut value = T::new_zeroed();
        let mut w = self.slot(idx);
        let mut chunks = value.as_mut_bytes().chunks_exact_mut(WORD);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.word(w).load(Ordering::Relaxed).to_ne_bytes());
            w += 1;
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            // The slot stride is a multiple of 4 and at least size_of::<T>(), so this word is in the slot.
            let bytes = self.word(w).load(Ordering::Relaxed).to_ne_bytes();
            tail.copy_from_slice(&bytes[..tail.len()]);
        }
        value
    }

    /// Writes `value` whole into the slot at `idx`, word by word.
    ///
    /// `IntoBytes` guarantees `value` has no padding, so no uninitialised byte reaches the peer. A
    /// partial last word is completed with zero bytes. Publication is the caller's Release store.
    pub(super) fn write_slot<T: IntoBytes + Immutable>(&self, idx: u32, value: &T) {
        let mut w = self.slot(idx);
        let mut chunks = value.as_bytes().chunks_exact(WORD);
        for chunk in &mut chunks {
            let mut bytes = [0u8; WORD];
            bytes.copy_from_slice(chunk);
            self.word(w).store(u32::from_ne_bytes(bytes), Ordering::Relaxed);
            w += 1;
        }
        let tail = chunks.remainder();
        if !tail.is_empty() {
            let mut bytes = [0u8; WORD];
            bytes[..tail.len()].copy_from_slice(tail);
            self.word(w).store(u32::from_ne_bytes(bytes), Ordering::Relaxed);
        }
    }
}

// Used by size checks in tests.
const _: () = assert!(size_of::<AtomicU32>() == WORD || cfg!(loom));
