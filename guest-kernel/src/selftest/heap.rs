//! `heap`: allocator stress with verified contents.
//!
//! `heap.rounds` (default 3000) random steps over 64 slots: an empty slot gets a new allocation (sizes
//! from 1 byte to 1 MiB, alignments 1 to 4096), a full one is verified and freed. Every allocation
//! is checked for alignment and for overlap with the live ones, and filled with a pattern derived
//! from its allocation index, which is verified before it is freed. Then one block of half the free
//! heap is allocated and every page of it written and read back (this proves the heap really is
//! as large as the memory map says, and mapped). At the end the heap's used-byte count must be back
//! where it started. `heap.seed` (default 1) changes the random sequence.

use core::alloc::Layout;

use super::{Outcome, Params, fail};

const SLOTS: usize = 64;

#[derive(Clone, Copy)]
struct Block {
    ptr: *mut u8,
    layout: Layout,
    index: u64,
}

/// xorshift64*: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The pattern word `word` of allocation `index`.
fn pattern(index: u64, word: u64) -> u64 {
    let x = (index.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ word.wrapping_mul(0xbf58_476d_1ce4_e5b9))
        .rotate_left(29);
    x ^ (x >> 31)
}

/// Byte `i` of allocation `index`'s pattern.
fn pattern_byte(index: u64, i: usize) -> u8 {
    pattern(index, (i / 8) as u64).to_le_bytes()[i % 8]
}

impl Block {
    /// The allocation's bytes.
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live allocation of `layout.size()` bytes that only this Block refers to
        // (slots are exclusive, overlap is checked at allocation); the borrow of `self` keeps it unique.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

fn fill(b: &mut Block) {
    let (index, size) = (b.index, b.layout.size());
    let mut words = b.bytes().chunks_exact_mut(8);
    for (w, chunk) in (&mut words).enumerate() {
        chunk.copy_from_slice(&pattern(index, w as u64).to_le_bytes());
    }
    let tail = words.into_remainder();
    let base = size - tail.len();
    for (k, byte) in tail.iter_mut().enumerate() {
        *byte = pattern_byte(index, base + k);
    }
}

/// Checks the pattern; returns the first bad offset with expected and found byte.
fn verify(b: &mut Block) -> Result<(), (usize, u8, u8)> {
    let index = b.index;
    let bytes = b.bytes();
    let words = bytes.chunks_exact(8);
    let base = bytes.len() - words.remainder().len();
    let bad_word = words
        .enumerate()
        .position(|(w, chunk)| chunk != pattern(index, w as u64).to_le_bytes());
    // The first bad byte lies in the first bad word, or else in the tail.
    let from = bad_word.map_or(base, |w| w * 8);
    match bytes[from..]
        .iter()
        .enumerate()
        .find(|&(k, &got)| got != pattern_byte(index, from + k))
    {
        Some((k, &got)) => Err((from + k, pattern_byte(index, from + k), got)),
        None => Ok(()),
    }
}

fn free(b: Block) {
    // SAFETY: `b` was allocated with exactly this layout and is freed once (its slot is emptied).
    unsafe { alloc::alloc::dealloc(b.ptr, b.layout) };
}

pub fn run(params: &Params<'_>) -> Outcome {
    let rounds = match params.u64_in("rounds", 3000, 1..=10_000_000) {
        Ok(r) => r,
        Err(e) => return fail!("{e}"),
    };
    let seed = match params.u64_in("seed", 1, 0..=u64::MAX) {
        Ok(s) => s,
        Err(e) => return fail!("{e}"),
    };
    let before = crate::heap::stats();
    let mut rng = Rng(seed ^ 0x853c_49e6_748f_ea9b);
    let mut slots: [Option<Block>; SLOTS] = [None; SLOTS];
    let (mut allocs, mut frees, mut checked, mut largest) = (0u64, 0u64, 0u64, 0usize);

    for round in 0..rounds {
        let slot = rng.below(SLOTS as u64) as usize;
        if let Some(mut b) = slots[slot].take() {
            if let Err((off, want, got)) = verify(&mut b) {
                free(b);
                return fail!(
                    "allocation #{} ({} bytes): byte {off} is {got:#04x}, expected {want:#04x}",
                    b.index,
                    b.layout.size()
                );
            }
            checked += b.layout.size() as u64;
            free(b);
            frees += 1;
            continue;
        }
        let size = match rng.below(100) {
            0..70 => 1 + rng.below(256),
            70..97 => 257 + rng.below(64 * 1024 - 256),
            _ => 64 * 1024 + rng.below(1024 * 1024 - 64 * 1024 + 1),
        } as usize;
        let align = 1usize << rng.below(13);
        let Ok(layout) = Layout::from_size_align(size, align) else {
            return fail!("bad layout size={size} align={align}");
        };
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { alloc::alloc::alloc(layout) };
        if ptr.is_null() {
            return fail!(
                "round {round}: allocation of {size} bytes (align {align}) failed, {} bytes free",
                crate::heap::stats().free
            );
        }
        if !(ptr as usize).is_multiple_of(align) {
            return fail!("allocation of {size} bytes at {ptr:p} is not {align}-aligned");
        }
        let (start, end) = (ptr as usize, ptr as usize + size);
        if let Some(other) = slots.iter().flatten().find(|o| {
            let (os, oe) = (o.ptr as usize, o.ptr as usize + o.layout.size());
            start < oe && os < end
        }) {
            return fail!(
                "allocation {start:#x}+{size} overlaps live allocation #{} at {:p}+{}",
                other.index,
                other.ptr,
                other.layout.size()
            );
        }
        let mut b = Block {
            ptr,
            layout,
            index: allocs,
        };
        fill(&mut b);
        slots[slot] = Some(b);
        allocs += 1;
        largest = largest.max(size);
    }
    for mut b in slots.iter_mut().filter_map(Option::take) {
        if let Err((off, want, got)) = verify(&mut b) {
            free(b);
            return fail!(
                "allocation #{} ({} bytes): byte {off} is {got:#04x}, expected {want:#04x}",
                b.index,
                b.layout.size()
            );
        }
        checked += b.layout.size() as u64;
        free(b);
        frees += 1;
    }

    // One big block: half of what is free, every page touched.
    let big = (crate::heap::stats().free / 2) as usize & !4095;
    let Ok(layout) = Layout::from_size_align(big, 4096) else {
        return fail!("bad layout for the large block ({big} bytes)");
    };
    let ptr = if big > 0 {
        // SAFETY: the layout has a non-zero size.
        unsafe { alloc::alloc::alloc(layout) }
    } else {
        core::ptr::null_mut()
    };
    if ptr.is_null() {
        return fail!("large allocation of {big} bytes (half the free heap) failed");
    }
    let mut block = Block {
        ptr,
        layout,
        index: u64::MAX,
    };
    let pages = big / 4096;
    for (p, page) in block.bytes().chunks_exact_mut(4096).enumerate() {
        page[..8].copy_from_slice(&pattern(u64::MAX, p as u64).to_le_bytes());
    }
    let bad = block
        .bytes()
        .chunks_exact(4096)
        .enumerate()
        .position(|(p, page)| page[..8] != pattern(u64::MAX, p as u64).to_le_bytes());
    free(block);
    if let Some(p) = bad {
        return fail!("large block page {p} of {pages} did not read back");
    }
    checked += pages as u64 * 8;

    let after = crate::heap::stats();
    if after.used != before.used {
        return fail!(
            "heap used {} bytes before the test and {} after: leak or accounting error",
            before.used,
            after.used
        );
    }
    Outcome::Pass(alloc::format!(
        "allocations={allocs} frees={frees} bytes_checked={checked} largest={largest} large_block_mib={} heap_mib={}",
        big >> 20,
        after.size >> 20
    ))
}
