//! Helpers shared by the integration tests: ring memory and entry types.
#![allow(dead_code)]

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Zeroed, 8-byte-aligned ring memory made of atomics, so a test can play a (hostile) peer on the header
/// and slots without data races. Header words are accessed as `u32` (like the rings do); slots of
/// rings whose stride is a multiple of 8 are copied by the rings in `u64`s, so a test writing such slots
/// concurrently uses [`Mem::dword`].
pub struct Mem {
    dwords: Box<[AtomicU64]>,
    len: usize,
}

impl Mem {
    pub fn new(len: usize) -> Self {
        assert!(len.is_multiple_of(4));
        Self {
            dwords: (0..len.div_ceil(8)).map(|_| AtomicU64::new(0)).collect(),
            len,
        }
    }

    pub fn ptr(&self) -> NonNull<u8> {
        NonNull::from(&*self.dwords).cast()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// 32-bit word `i` of the memory (header: 0 req_prod, 1 req_event, 2 rsp_prod, 3 rsp_event).
    pub fn word(&self, i: usize) -> &AtomicU32 {
        assert!(i < self.len / 4);
        let p = self.ptr().as_ptr().cast::<u32>().wrapping_add(i);
        // SAFETY: `p` is in bounds (asserted) and 4-byte aligned, lives as long as `self`, and is only
        // accessed atomically; tests never access it concurrently with a different access size.
        unsafe { AtomicU32::from_ptr(p) }
    }

    /// 64-bit word `i` (bytes `8 * i ..`).
    pub fn dword(&self, i: usize) -> &AtomicU64 {
        &self.dwords[i]
    }

    pub fn set(&self, i: usize, v: u32) {
        self.word(i).store(v, Ordering::SeqCst);
    }

    pub fn get(&self, i: usize) -> u32 {
        self.word(i).load(Ordering::SeqCst)
    }
}

pub const REQ_PROD: usize = 0;
pub const REQ_EVENT: usize = 1;
pub const RSP_PROD: usize = 2;
pub const RSP_EVENT: usize = 3;

/// A 64-byte request: an id, a sequence number and a payload with a checksum.
#[derive(FromBytes, IntoBytes, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Req64 {
    pub id: u64,
    pub seq: u64,
    pub payload: [u64; 5],
    pub sum: u64,
}

/// A 64-byte response: echoes id and seq, carries a payload derived from the request's.
#[derive(FromBytes, IntoBytes, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Rsp64 {
    pub id: u64,
    pub seq: u64,
    pub payload: [u64; 5],
    pub sum: u64,
}

pub fn mix(x: u64) -> u64 {
    // splitmix64 finaliser: cheap, well-spread payload words.
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn checksum(seq: u64, payload: &[u64; 5]) -> u64 {
    payload
        .iter()
        .fold(seq.rotate_left(17), |acc, &w| acc.rotate_left(5) ^ w)
}

impl Req64 {
    pub fn new(id: u64, seq: u64) -> Self {
        let payload = std::array::from_fn(|i| mix(seq * 8 + i as u64));
        Self {
            id,
            seq,
            payload,
            sum: checksum(seq, &payload),
        }
    }

    pub fn valid(&self) -> bool {
        self.sum == checksum(self.seq, &self.payload)
    }
}

impl Rsp64 {
    /// The response an echoing backend gives to `req`.
    pub fn answer(req: &Req64) -> Self {
        let payload = req.payload.map(|w| !w);
        Self {
            id: req.id,
            seq: req.seq,
            payload,
            sum: checksum(req.seq ^ 1, &payload),
        }
    }

    pub fn valid_for(&self, seq: u64) -> bool {
        let expect = std::array::from_fn(|i| !mix(seq * 8 + i as u64));
        self.seq == seq && self.payload == expect && self.sum == checksum(seq ^ 1, &self.payload)
    }
}

/// Small entries, for tiny rings in property tests.
#[derive(FromBytes, IntoBytes, Immutable, Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Small {
    pub a: u32,
    pub b: u32,
}
