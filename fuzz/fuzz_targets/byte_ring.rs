//! The byte rings (`ring_protocol::byte_ring`: console and XenStore pages), both directions, against
//! a hostile peer that moves its index anywhere and rewrites the bytes.
//!
//! Scripted against a model: a reader hands out exactly the bytes between its consumer index and
//! the peer's producer index (never more than the ring holds or the buffer takes), a writer writes
//! only into the free space the peer's consumer index leaves, each publishes its own index only, an
//! impossible peer index halts that ring with `ByteRingOverrun` for good, and nothing outside the
//! ring's data array and own index is written. Then, if asked, the same ends run while a second
//! thread flips the peer's indices and the bytes: no panic, counts bounded, halts sticky.
#![no_main]

use std::mem::offset_of;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use libfuzzer_sys::fuzz_target;
use pvkit_fuzz::{Input, SharedMem, concurrently};
use ring_protocol::Error;
use ring_protocol::abi::console::XenconsInterface;
use ring_protocol::abi::xenstore::XenstoreDomainInterface;
use ring_protocol::byte_ring::{Duplex, console_backend, console_guest, xenstore_daemon, xenstore_guest};

/// Where one ring of a page lives.
#[derive(Clone, Copy, Debug)]
struct Ring {
    data: usize,
    size: u32,
    prod: usize,
    cons: usize,
}

/// The page kind, which end we are, and for that end (tx ring, rx ring).
fn layout(kind: u8) -> (usize, [Ring; 2]) {
    let cons_out = Ring {
        data: offset_of!(XenconsInterface, out),
        size: 2048,
        prod: offset_of!(XenconsInterface, out_prod),
        cons: offset_of!(XenconsInterface, out_cons),
    };
    let cons_in = Ring {
        data: offset_of!(XenconsInterface, in_),
        size: 1024,
        prod: offset_of!(XenconsInterface, in_prod),
        cons: offset_of!(XenconsInterface, in_cons),
    };
    let xs_req = Ring {
        data: offset_of!(XenstoreDomainInterface, req),
        size: 1024,
        prod: offset_of!(XenstoreDomainInterface, req_prod),
        cons: offset_of!(XenstoreDomainInterface, req_cons),
    };
    let xs_rsp = Ring {
        data: offset_of!(XenstoreDomainInterface, rsp),
        size: 1024,
        prod: offset_of!(XenstoreDomainInterface, rsp_prod),
        cons: offset_of!(XenstoreDomainInterface, rsp_cons),
    };
    let (c, x) = (
        size_of::<XenconsInterface>(),
        size_of::<XenstoreDomainInterface>(),
    );
    match kind % 4 {
        0 => (c, [cons_out, cons_in]),
        1 => (c, [cons_in, cons_out]),
        2 => (x, [xs_req, xs_rsp]),
        _ => (x, [xs_rsp, xs_req]),
    }
}

/// # Safety
/// `mem` must outlive the result and be accessed only atomically.
unsafe fn open(kind: u8, mem: &SharedMem) -> ring_protocol::Result<Duplex> {
    // SAFETY: forwarded; the memory is exactly one interface page of the kind, 8-byte aligned.
    unsafe {
        match kind % 4 {
            0 => console_guest(mem.ptr().cast()),
            1 => console_backend(mem.ptr().cast()),
            2 => xenstore_guest(mem.ptr().cast()),
            _ => xenstore_daemon(mem.ptr().cast()),
        }
    }
}

fn overrun(prod: u32, cons: u32, size: u32) -> Option<Error> {
    let used = prod.wrapping_sub(cons);
    (used > size).then_some(Error::ByteRingOverrun {
        prod,
        cons,
        used,
        size,
    })
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let kind = input.u8();
    // Whether the concurrent phase follows the script (which runs to the end of the input).
    let flip = input.u8();
    let (len, [tx, rx]) = layout(kind);
    let shared = Arc::new(SharedMem::new(len));
    let mem: &SharedMem = &shared;
    // Initial indices, possibly inconsistent already.
    for r in [tx, rx] {
        let base = input.u32();
        mem.word(r.prod)
            .store(base.wrapping_add(u32::from(input.u16())), Ordering::Relaxed);
        mem.word(r.cons).store(base, Ordering::Relaxed);
    }
    let idx = |at: usize| mem.word(at).load(Ordering::Relaxed);
    let (tx_prod0, tx_cons0, rx_prod0, rx_cons0) = (idx(tx.prod), idx(tx.cons), idx(rx.prod), idx(rx.cons));
    // SAFETY: `mem` outlives the ends (dropped at the end of this closure, after them) and this
    // harness touches it only atomically.
    let opened = unsafe { open(kind, mem) };
    let expect_open = overrun(tx_prod0, tx_cons0, tx.size).or(overrun(rx_prod0, rx_cons0, rx.size));
    let mut end = match opened {
        Ok(end) => {
            assert_eq!(expect_open, None, "opened over inconsistent indices");
            end
        }
        Err(e) => {
            assert_eq!(Some(e), expect_open, "refused consistent indices");
            return;
        }
    };
    // Model: our private indices, the halts.
    let (mut prod_pvt, mut cons_pvt) = (tx_prod0, rx_cons0);
    let (mut tx_halt, mut rx_halt): (Option<Error>, Option<Error>) = (None, None);
    let mut buf = vec![0u8; 4096];
    let mut ops = 0;
    while !input.is_empty() && ops < 256 {
        ops += 1;
        match input.u8() % 6 {
            0 => {
                // The peer produces into our rx ring (honestly or not) and writes bytes anywhere.
                let bytes = input.chunk(255);
                let at = input.u32();
                for (i, &b) in bytes.iter().enumerate() {
                    let pos = rx.data + (at.wrapping_add(i as u32) & (rx.size - 1)) as usize;
                    mem.byte(pos).store(b, Ordering::Relaxed);
                }
                let p = match input.u8() % 3 {
                    0 => idx(rx.prod).wrapping_add(bytes.len() as u32),
                    1 => cons_pvt.wrapping_add(u32::from(input.u16())),
                    _ => input.u32(),
                };
                mem.word(rx.prod).store(p, Ordering::Release);
            }
            1 => {
                // The peer consumes from our tx ring: moves its consumer index.
                let c = match input.u8() % 3 {
                    0 => idx(tx.cons).wrapping_add(u32::from(input.u8())),
                    1 => prod_pvt.wrapping_sub(u32::from(input.u16())),
                    _ => input.u32(),
                };
                mem.word(tx.cons).store(c, Ordering::Release);
            }
            2 | 3 => {
                let want = usize::from(input.u16()) % (buf.len() + 1);
                let prod = idx(rx.prod);
                let expect: Result<Vec<u8>, Error> = match rx_halt {
                    Some(e) => Err(e),
                    None => match overrun(prod, cons_pvt, rx.size) {
                        Some(e) => Err(e),
                        None => {
                            let n = (prod.wrapping_sub(cons_pvt) as usize).min(want);
                            Ok((0..n)
                                .map(|i| {
                                    let pos = cons_pvt.wrapping_add(i as u32) & (rx.size - 1);
                                    mem.byte(rx.data + pos as usize).load(Ordering::Relaxed)
                                })
                                .collect())
                        }
                    },
                };
                match (end.rx.read(&mut buf[..want]), expect) {
                    (Ok(t), Ok(bytes)) => {
                        assert_eq!(&buf[..t.bytes], &bytes[..], "the bytes between the indices");
                        assert_eq!(t.notify, t.bytes > 0);
                        cons_pvt = cons_pvt.wrapping_add(t.bytes as u32);
                        assert_eq!(idx(rx.cons), cons_pvt, "consumer index published");
                    }
                    (Err(e), Err(x)) => {
                        assert_eq!(e, x);
                        rx_halt = Some(e);
                    }
                    (got, x) => panic!("read: got {got:?}, model {x:?}"),
                }
            }
            _ => {
                let bytes = input.chunk(255).to_vec();
                let cons = idx(tx.cons);
                let before: Vec<u8> = (0..tx.size as usize)
                    .map(|i| mem.byte(tx.data + i).load(Ordering::Relaxed))
                    .collect();
                let expect = match tx_halt {
                    Some(e) => Err(e),
                    None => match overrun(prod_pvt, cons, tx.size) {
                        Some(e) => Err(e),
                        None => Ok((tx.size - prod_pvt.wrapping_sub(cons)).min(bytes.len() as u32)),
                    },
                };
                match (end.tx.write(&bytes), expect) {
                    (Ok(t), Ok(n)) => {
                        assert_eq!(t.bytes as u32, n, "as much as fits");
                        let mut after = before.clone();
                        for (i, &b) in bytes[..t.bytes].iter().enumerate() {
                            after[(prod_pvt.wrapping_add(i as u32) & (tx.size - 1)) as usize] = b;
                        }
                        for (i, &b) in after.iter().enumerate() {
                            assert_eq!(
                                mem.byte(tx.data + i).load(Ordering::Relaxed),
                                b,
                                "free space only"
                            );
                        }
                        prod_pvt = prod_pvt.wrapping_add(n);
                        assert_eq!(idx(tx.prod), prod_pvt, "producer index published");
                    }
                    (Err(e), Err(x)) => {
                        assert_eq!(e, x);
                        tx_halt = Some(e);
                    }
                    (got, x) => panic!("write: got {got:?}, model {x:?}"),
                }
            }
        }
        assert_eq!((end.tx.halted(), end.rx.halted()), (tx_halt, rx_halt));
        mem.check_canaries();
    }
    if flip & 1 == 1 {
        // The peer flips its indices and the bytes concurrently, on a schedule seeded by the input.
        let seed = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }) | 1;
        let peer_mem = shared.clone();
        let peer = move |stop: &std::sync::atomic::AtomicBool| {
            let mem = &*peer_mem;
            let idx = |at: usize| mem.word(at).load(Ordering::Relaxed);
            let mut x = seed;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 20_000 {
                n += 1;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let v = (x >> 20) as u32;
                match x % 4 {
                    0 => mem
                        .word(rx.prod)
                        .store(idx(rx.prod).wrapping_add(v % 64), Ordering::Release),
                    1 => mem
                        .word(tx.cons)
                        .store(idx(tx.cons).wrapping_add(v % 64), Ordering::Release),
                    2 if v & 0x1000 != 0 => mem
                        .word([rx.prod, tx.cons][v as usize & 1])
                        .store(v, Ordering::Release),
                    _ => mem
                        .byte(rx.data + (v % rx.size) as usize)
                        .store(v as u8, Ordering::Relaxed),
                }
            }
        };
        concurrently(peer, || {
            for i in 0..300u32 {
                if i % 2 == 0 {
                    if let Ok(t) = end.rx.read(&mut buf[..(i as usize * 7) % 4096]) {
                        assert!(t.bytes <= rx.size as usize && t.bytes <= (i as usize * 7) % 4096);
                    }
                } else if let Ok(t) = end.tx.write(&buf[..(i as usize * 13) % 4096]) {
                    assert!(t.bytes <= tx.size as usize);
                }
                for (h, r) in [(&mut rx_halt, end.rx.halted()), (&mut tx_halt, end.tx.halted())] {
                    if let Some(e) = *h {
                        assert_eq!(r, Some(e), "a halt is for good");
                    }
                    *h = r;
                }
            }
        });
    }
    mem.check_canaries();
});
