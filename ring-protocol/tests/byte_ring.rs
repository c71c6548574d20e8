//! Console and XenStore byte rings: both ends of both pages, wrap-around, a two-thread byte stream with
//! a checksum, and hostile indices.

mod common;

use std::mem::offset_of;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::thread;

use common::mix;
use ring_protocol::Error;
use ring_protocol::abi::console::XenconsInterface;
use ring_protocol::abi::xenstore::XenstoreDomainInterface;
use ring_protocol::byte_ring::{Duplex, console_backend, console_guest, xenstore_daemon, xenstore_guest};
use zerocopy::FromZeros;

/// An interface page on the heap, reached only through one raw pointer (so a test can poke its fields
/// atomically while ring ends hold pointers into it).
struct Page<T> {
    ptr: NonNull<T>,
}

// SAFETY: the page is plain memory accessed only through atomics once shared.
unsafe impl<T> Send for Page<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Page<T> {}

impl<T: FromZeros> Page<T> {
    fn new() -> Self {
        let b: Box<T> = Box::new(T::new_zeroed());
        Self {
            ptr: NonNull::from(Box::leak(b)),
        }
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        assert!(off + 4 <= size_of::<T>() && off.is_multiple_of(4));
        // SAFETY: in bounds and aligned (asserted), the page lives as long as `self`, and is accessed
        // only atomically.
        unsafe { AtomicU32::from_ptr(self.ptr.cast::<u8>().as_ptr().wrapping_add(off).cast()) }
    }

    fn byte(&self, off: usize) -> &AtomicU8 {
        assert!(off < size_of::<T>());
        // SAFETY: in bounds (asserted), the page lives as long as `self`, accessed only atomically.
        unsafe { AtomicU8::from_ptr(self.ptr.cast::<u8>().as_ptr().wrapping_add(off)) }
    }
}

impl<T> Drop for Page<T> {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `Box::leak` and is freed once, here.
        drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
    }
}

const OUT_PROD: usize = offset_of!(XenconsInterface, out_prod);
const OUT_CONS: usize = offset_of!(XenconsInterface, out_cons);
const IN_PROD: usize = offset_of!(XenconsInterface, in_prod);
const IN_CONS: usize = offset_of!(XenconsInterface, in_cons);

fn console_pair(page: &Page<XenconsInterface>) -> (Duplex, Duplex) {
    // SAFETY: the page outlives both ends in every test and is accessed only atomically.
    let guest = unsafe { console_guest(page.ptr).unwrap() };
    // SAFETY: as above.
    let backend = unsafe { console_backend(page.ptr).unwrap() };
    (guest, backend)
}

#[test]
fn console_output_and_input_reach_the_other_end_at_the_c_offsets() {
    let page = Page::<XenconsInterface>::new();
    let (mut guest, mut backend) = console_pair(&page);
    assert_eq!((guest.tx.size(), guest.rx.size()), (2048, 1024));
    assert_eq!(guest.tx.write(b"boot ok\n").unwrap().bytes, 8);
    assert_eq!(page.word(OUT_PROD).load(Ordering::SeqCst), 8);
    let out = offset_of!(XenconsInterface, out);
    let seen: Vec<u8> = (0..8)
        .map(|i| page.byte(out + i).load(Ordering::SeqCst))
        .collect();
    assert_eq!(seen, b"boot ok\n");
    let mut buf = [0u8; 64];
    let t = backend.rx.read(&mut buf).unwrap();
    assert_eq!((&buf[..t.bytes], t.notify), (&b"boot ok\n"[..], true));
    assert_eq!(page.word(OUT_CONS).load(Ordering::SeqCst), 8);

    assert_eq!(backend.tx.write(b"ls\r").unwrap().bytes, 3);
    assert_eq!(
        page.byte(offset_of!(XenconsInterface, in_))
            .load(Ordering::SeqCst),
        b'l'
    );
    let t = guest.rx.read(&mut buf).unwrap();
    assert_eq!(&buf[..t.bytes], b"ls\r");
    // Nothing more: no notification.
    let t = guest.rx.read(&mut buf).unwrap();
    assert_eq!((t.bytes, t.notify), (0, false));
    assert_eq!(
        guest.tx.write(b"").unwrap(),
        ring_protocol::byte_ring::Transfer {
            bytes: 0,
            notify: false
        }
    );
}

#[test]
fn writer_stops_at_full_and_indices_wrap_u32_max() {
    let page = Page::<XenconsInterface>::new();
    let start = u32::MAX - 100;
    page.word(IN_PROD).store(start, Ordering::SeqCst);
    page.word(IN_CONS).store(start, Ordering::SeqCst);
    let (mut guest, mut backend) = console_pair(&page);
    let data: Vec<u8> = (0..3000u32).map(|i| mix(u64::from(i)) as u8).collect();
    // The in ring holds 1024 bytes.
    assert_eq!(backend.tx.write(&data).unwrap().bytes, 1024);
    assert_eq!(backend.tx.free_space(), Ok(0));
    assert_eq!(backend.tx.write(&data[1024..]).unwrap().bytes, 0);
    let mut got = Vec::new();
    let mut buf = [0u8; 300];
    let mut offset = 1024;
    while got.len() < data.len() {
        let t = guest.rx.read(&mut buf).unwrap();
        got.extend_from_slice(&buf[..t.bytes]);
        offset += backend.tx.write(&data[offset.min(data.len())..]).unwrap().bytes;
    }
    assert_eq!(got, data);
    assert!(page.word(IN_PROD).load(Ordering::SeqCst) < start, "index wrapped");
}

#[test]
fn xenstore_request_and_reply() {
    let page = Page::<XenstoreDomainInterface>::new();
    // SAFETY: the page outlives both ends and is accessed only atomically.
    let mut guest = unsafe { xenstore_guest(page.ptr).unwrap() };
    // SAFETY: as above.
    let mut daemon = unsafe { xenstore_daemon(page.ptr).unwrap() };
    let msg = b"\x01\0\0\0\x07\0\0\0\0\0\0\0\x0a\0\0\0domid\0\0\0\0\0";
    assert_eq!(guest.tx.write(msg).unwrap().bytes, msg.len());
    assert_eq!(
        page.word(offset_of!(XenstoreDomainInterface, req_prod))
            .load(Ordering::SeqCst),
        msg.len() as u32
    );
    let mut buf = [0u8; 1024];
    let t = daemon.rx.read(&mut buf).unwrap();
    assert_eq!(&buf[..t.bytes], msg);
    daemon.tx.write(b"7\0").unwrap();
    let t = guest.rx.read(&mut buf).unwrap();
    assert_eq!(&buf[..t.bytes], b"7\0");
}

#[test]
fn reader_halts_on_producer_claiming_more_than_the_ring() {
    let page = Page::<XenconsInterface>::new();
    let (mut guest, _backend) = console_pair(&page);
    page.word(IN_PROD).store(1025, Ordering::SeqCst);
    let e = Error::ByteRingOverrun {
        prod: 1025,
        cons: 0,
        used: 1025,
        size: 1024,
    };
    let mut buf = [0u8; 8];
    assert_eq!(guest.rx.read(&mut buf), Err(e));
    page.word(IN_PROD).store(0, Ordering::SeqCst);
    assert_eq!(guest.rx.available(), Err(e));
    assert_eq!(guest.rx.read(&mut buf), Err(e));
    assert_eq!(guest.rx.halted(), Some(e));
    // The other direction is unaffected.
    assert_eq!(guest.tx.write(b"still here").unwrap().bytes, 10);
}

#[test]
fn writer_halts_on_consumer_running_ahead_and_ignores_a_forged_producer() {
    let page = Page::<XenconsInterface>::new();
    let (mut guest, _backend) = console_pair(&page);
    guest.tx.write(b"abc").unwrap();
    // The peer rewrites our producer index: we keep our own.
    page.word(OUT_PROD).store(9999, Ordering::SeqCst);
    guest.tx.write(b"de").unwrap();
    assert_eq!(page.word(OUT_PROD).load(Ordering::SeqCst), 5);
    // The peer claims to have consumed bytes we never wrote.
    page.word(OUT_CONS).store(6, Ordering::SeqCst);
    let e = Error::ByteRingOverrun {
        prod: 5,
        cons: 6,
        used: u32::MAX,
        size: 2048,
    };
    assert_eq!(guest.tx.write(b"f"), Err(e));
    assert_eq!(guest.tx.free_space(), Err(e));
    assert!(e.to_string().contains("2048"), "{e}");
}

#[test]
fn attaching_to_inconsistent_indices_fails() {
    let page = Page::<XenstoreDomainInterface>::new();
    page.word(offset_of!(XenstoreDomainInterface, rsp_prod))
        .store(5000, Ordering::SeqCst);
    // SAFETY: the page outlives the attempt.
    let err = unsafe { xenstore_guest(page.ptr) }.unwrap_err();
    assert_eq!(
        err,
        Error::ByteRingOverrun {
            prod: 5000,
            cons: 0,
            used: 5000,
            size: 1024
        }
    );
}

#[test]
fn two_thread_byte_stream_with_checksum() {
    let total: usize = if cfg!(miri) { 5_000 } else { 2_000_000 };
    let page = Arc::new(Page::<XenstoreDomainInterface>::new());
    // SAFETY: the page is kept alive by the Arc until both threads are joined; access is atomic.
    let guest = unsafe { xenstore_guest(page.ptr).unwrap() };
    // SAFETY: as above.
    let daemon = unsafe { xenstore_daemon(page.ptr).unwrap() };
    let byte = |i: usize| (mix(i as u64 / 8) >> (i % 8 * 8)) as u8;
    let writer = {
        let page = Arc::clone(&page);
        let mut tx = guest.tx;
        thread::spawn(move || {
            let _keep = page;
            let mut chunk = [0u8; 700];
            let mut sent = 0;
            while sent < total {
                let n = chunk.len().min(total - sent);
                for (k, b) in chunk[..n].iter_mut().enumerate() {
                    *b = byte(sent + k);
                }
                let w = tx.write(&chunk[..n]).unwrap().bytes;
                sent += w;
                if w == 0 {
                    thread::yield_now();
                }
            }
        })
    };
    let mut rx = daemon.rx;
    let mut buf = [0u8; 333];
    let (mut received, mut sum, mut expect) = (0usize, 0u64, 0u64);
    while received < total {
        let n = rx.read(&mut buf).unwrap().bytes;
        for (k, &b) in buf[..n].iter().enumerate() {
            sum = sum.wrapping_mul(31).wrapping_add(u64::from(b));
            expect = expect
                .wrapping_mul(31)
                .wrapping_add(u64::from(byte(received + k)));
        }
        received += n;
        if n == 0 {
            thread::yield_now();
        }
    }
    writer.join().unwrap();
    assert_eq!(received, total);
    assert_eq!(sum, expect);
}

#[test]
fn data_rewritten_while_read_yields_bytes_without_fault() {
    let page = Arc::new(Page::<XenconsInterface>::new());
    let (mut guest, _backend) = console_pair(&page);
    let stop = Arc::new(AtomicBool::new(false));
    let scribbler = {
        let (page, stop) = (Arc::clone(&page), Arc::clone(&stop));
        thread::spawn(move || {
            let base = offset_of!(XenconsInterface, in_);
            let mut v = 0u8;
            while !stop.load(Ordering::Relaxed) {
                for i in 0..1024 {
                    page.byte(base + i).store(v, Ordering::Relaxed);
                }
                v = v.wrapping_add(1);
                // Also keep publishing: a well-formed but racing producer.
                page.word(IN_PROD).fetch_add(0, Ordering::Release);
                if cfg!(miri) {
                    thread::yield_now();
                }
            }
        })
    };
    let rounds = if cfg!(miri) { 20 } else { 20_000 };
    let mut buf = [0u8; 1024];
    let mut total = 0usize;
    for i in 0..rounds {
        // Honest index movement by the "backend": 100 bytes per round, never more than the ring.
        let cons = page.word(IN_CONS).load(Ordering::SeqCst);
        page.word(IN_PROD)
            .store(cons.wrapping_add(100 + i % 900), Ordering::Release);
        total += guest.rx.read(&mut buf).unwrap().bytes;
    }
    stop.store(true, Ordering::Relaxed);
    scribbler.join().unwrap();
    assert_eq!(total, (0..rounds).map(|i| 100 + i % 900).sum::<u32>() as usize);
}
