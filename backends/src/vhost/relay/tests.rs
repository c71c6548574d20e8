//! The relay's tests: the gate's refusals, the framing, the early-enable quirk.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vhost::vhost_user::message::FrontendReq;

use super::*;

const SET_FEATURES: u32 = FrontendReq::SET_FEATURES as u32;
const SET_VRING_ENABLE: u32 = FrontendReq::SET_VRING_ENABLE as u32;
/// REPLY_ACK | CONFIG | MQ, as vhost-user-blk offers.
const OFFERED: u64 = (1 << 3) | (1 << 9) | (1 << 0);

fn policy() -> Policy {
    Policy {
        protocol_features: OFFERED,
        queues: 2,
        max_queue_size: 256,
        allow_unsealed_memory: false,
        max_memory: DEFAULT_MAX_MEMORY,
    }
}

fn msg(req: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&req.to_le_bytes());
    m.extend_from_slice(&(FLAG_VERSION | flags).to_le_bytes());
    m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    m.extend_from_slice(payload);
    m
}

fn vring_state(index: u32, num: u32) -> Vec<u8> {
    [index.to_le_bytes(), num.to_le_bytes()].concat()
}

/// Reads one message (header + payload) and its descriptors.
fn recv_msg(s: &UnixStream) -> (Vec<u8>, Vec<OwnedFd>) {
    let mut fds = Vec::new();
    let mut hdr = [0u8; HDR_LEN];
    assert!(recv_exact(s, &mut hdr, &mut fds).unwrap(), "message expected");
    let mut m = hdr.to_vec();
    m.resize(HDR_LEN + u32_at(&hdr, 8) as usize, 0);
    if m.len() > HDR_LEN {
        recv_exact(s, &mut m[HDR_LEN..], &mut fds).unwrap();
    }
    (m, fds)
}

/// A memfd of `len` bytes, sealed against shrinking if `sealed`.
fn memfd(len: u64, sealed: bool) -> OwnedFd {
    // SAFETY: memfd_create with a valid NUL-terminated name.
    let raw = unsafe { libc::memfd_create(c"relay-test".as_ptr(), libc::MFD_ALLOW_SEALING) };
    assert!(raw >= 0);
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: plain system call on our descriptor.
    assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) }, 0);
    if sealed {
        // SAFETY: plain system call on our descriptor.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
        assert_eq!(r, 0);
    }
    fd
}

fn eventfd() -> OwnedFd {
    // SAFETY: plain system call; the result is checked and then owned.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(raw >= 0);
    // SAFETY: a fresh descriptor we own.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

fn check(gate: &mut Gate, req: FrontendReq, payload: &[u8], fds: &[OwnedFd]) -> Result<(), Refused> {
    gate.check(req as u32, FLAG_VERSION, payload, fds).map(|_| ())
}

const MIB: u64 = 1 << 20;

#[test]
fn early_vring_enable_is_answered_and_replayed_after_set_features() {
    let (qemu, front) = UnixStream::pair().unwrap();
    let (back, daemon) = UnixStream::pair().unwrap();
    let relay = std::thread::spawn(move || relay(front, back, policy()));
    daemon.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    qemu.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    // GET_FEATURES passes through and its reply comes back.
    (&qemu).write_all(&msg(1, 0, &[])).unwrap();
    let (m, _) = recv_msg(&daemon);
    assert_eq!(m, msg(1, 0, &[]));
    let reply = msg(1, FLAG_REPLY, &(1u64 << 30).to_le_bytes());
    (&daemon).write_all(&reply).unwrap();
    let mut got = vec![0u8; reply.len()];
    (&qemu).read_exact(&mut got).unwrap();
    assert_eq!(got, reply);

    // Early SET_VRING_ENABLE (ring 1 on, ring 0 on then off): acked by the relay, not forwarded.
    for (ring, on) in [(1, 1), (0, 1), (0, 0)] {
        (&qemu)
            .write_all(&msg(SET_VRING_ENABLE, FLAG_NEED_REPLY, &vring_state(ring, on)))
            .unwrap();
        let mut ack = vec![0u8; HDR_LEN + 8];
        (&qemu).read_exact(&mut ack).unwrap();
        assert_eq!(ack, msg(SET_VRING_ENABLE, FLAG_REPLY, &0u64.to_le_bytes()));
    }

    // SET_FEATURES goes through, then the last state of each ring, without NEED_REPLY.
    let features = msg(SET_FEATURES, 0, &(1u64 << 30 | 1 << 32).to_le_bytes());
    (&qemu).write_all(&features).unwrap();
    assert_eq!(recv_msg(&daemon).0, features);
    assert_eq!(recv_msg(&daemon).0, msg(SET_VRING_ENABLE, 0, &vring_state(1, 1)));
    assert_eq!(recv_msg(&daemon).0, msg(SET_VRING_ENABLE, 0, &vring_state(0, 0)));

    // SET_MEM_TABLE with a sealed memfd carries its descriptor across.
    let file = memfd(2 * MIB, true);
    let table = msg(5, 0, &mem_table_payload(&[(0, 2 * MIB, 0x7000_0000_0000, 0)]));
    send_with_fds(&qemu, &table, &[file.as_fd().try_clone_to_owned().unwrap()]).unwrap();
    let (m, fds) = recv_msg(&daemon);
    assert_eq!(m, table);
    assert_eq!(fds.len(), 1);
    let passed = File::from(fds.into_iter().next().unwrap());
    assert_eq!(
        passed.metadata().unwrap().ino(),
        File::from(file).metadata().unwrap().ino()
    );

    // A kick eventfd goes through too.
    let kick = msg(12, 0, &0u64.to_le_bytes());
    send_with_fds(&qemu, &kick, &[eventfd()]).unwrap();
    let (m, fds) = recv_msg(&daemon);
    assert_eq!((m, fds.len()), (kick, 1));

    // Later SET_VRING_ENABLE passes through untouched.
    let late = msg(SET_VRING_ENABLE, FLAG_NEED_REPLY, &vring_state(0, 1));
    (&qemu).write_all(&late).unwrap();
    assert_eq!(recv_msg(&daemon).0, late);

    // A payload larger than the protocol allows ends the relay with a refusal.
    (&qemu)
        .write_all(&msg(5, 0, &vec![0u8; MAX_PAYLOAD + 1]))
        .unwrap();
    assert!(matches!(
        relay.join().unwrap(),
        Err(RelayError::Refused(Refused::Oversized { .. }))
    ));
}

/// `n` duplicates of a pipe's write end; the read end sees EOF once every one is closed.
fn pipe_dups(n: usize) -> (File, Vec<OwnedFd>) {
    let mut p = [0 as RawFd; 2];
    // SAFETY: pipe2 fills the two-element array.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: a fresh descriptor we own.
    let r = unsafe { File::from_raw_fd(p[0]) };
    // SAFETY: as above.
    let w = unsafe { OwnedFd::from_raw_fd(p[1]) };
    let dups = (0..n).map(|_| w.try_clone().unwrap()).collect();
    (r, dups)
}

/// Whether every write end of the pipe is closed (read returns EOF within 5 s).
fn all_closed(mut r: File) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let _ = tx.send(matches!(r.read(&mut b), Ok(0)));
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap_or(false)
}

/// Sends `buf` with any number of descriptors (the test plays a VMM not bound by MAX_FDS).
fn send_many(sock: &UnixStream, buf: &[u8], fds: &[OwnedFd]) {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    wire::send_any_fds(sock, buf, &raw).expect("sendmsg");
}

#[test]
fn hostile_vmm_too_many_fds() {
    // 29 descriptors with one message (more than the old 128-byte control buffer held), then
    // 8 + 8 over the header and the payload of one message: refused, every descriptor closed,
    // nothing forwarded.
    for split in [false, true] {
        let (qemu, front) = UnixStream::pair().unwrap();
        let (back, daemon) = UnixStream::pair().unwrap();
        let relay = std::thread::spawn(move || relay(front, back, policy()));
        let (pipe, fds) = pipe_dups(if split { 16 } else { 29 });
        let table = msg(5, 0, &mem_table_payload(&[(0, MIB, 0x1000_0000, 0)]));
        if split {
            send_many(&qemu, &table[..HDR_LEN], &fds[..8]);
            send_many(&qemu, &table[HDR_LEN..], &fds[8..]);
        } else {
            send_many(&qemu, &table, &fds);
        }
        drop(fds);
        let r = relay.join().unwrap();
        if split {
            assert!(
                matches!(r, Err(RelayError::Refused(Refused::TooManyFds { fds: 16 }))),
                "{r:?}"
            );
        } else {
            assert!(
                matches!(r, Err(RelayError::Refused(Refused::FdsTruncated))),
                "{r:?}"
            );
        }
        assert!(all_closed(pipe), "every received descriptor closed");
        let mut b = [0u8; 1];
        assert_eq!((&daemon).read(&mut b).unwrap(), 0, "nothing reached the daemon");
    }
}

#[test]
fn hostile_vmm_too_many_fds_never_reach_the_send_buffer() {
    // The send side refuses more than MAX_FDS by itself: its control buffer is sized for them.
    let (a, b) = UnixStream::pair().unwrap();
    let (pipe, fds) = pipe_dups(29);
    let r = send_with_fds(&a, &msg(5, 0, &[0u8; 8]), &fds);
    assert!(
        matches!(r, Err(RelayError::Refused(Refused::TooManyFds { fds: 29 }))),
        "{r:?}"
    );
    let (pipe8, fds8) = pipe_dups(MAX_FDS);
    send_with_fds(&a, &msg(5, 0, &[0u8; 8]), &fds8).unwrap();
    let (m, got) = recv_msg(&b);
    assert_eq!((m.len(), got.len()), (HDR_LEN + 8, MAX_FDS));
    drop((fds, fds8, got));
    assert!(all_closed(pipe) && all_closed(pipe8));
}

#[test]
fn hostile_vmm_fds_on_messages_that_take_none() {
    let mut gate = Gate::new(policy());
    let r = check(&mut gate, FrontendReq::GET_FEATURES, &[], &[eventfd()]);
    assert!(matches!(r, Err(Refused::FdCount { expected: 0, .. })), "{r:?}");
    let r = check(
        &mut gate,
        FrontendReq::SET_VRING_NUM,
        &vring_state(0, 8),
        &[eventfd()],
    );
    assert!(matches!(r, Err(Refused::FdCount { .. })), "{r:?}");
}

#[test]
fn hostile_vmm_overlapping_regions() {
    let mut gate = Gate::new(policy());
    let fds = || vec![memfd(2 * MIB, true), memfd(2 * MIB, true)];
    // Guest addresses overlap (second starts inside the first).
    let p = mem_table_payload(&[(0, 2 * MIB, 0x1000_0000, 0), (MIB, 2 * MIB, 0x2000_0000, 0)]);
    let r = check(&mut gate, FrontendReq::SET_MEM_TABLE, &p, &fds());
    assert!(matches!(r, Err(Refused::Region { index: 1, .. })), "{r:?}");
    // VMM addresses overlap.
    let p = mem_table_payload(&[(0, 2 * MIB, 0x1000_0000, 0), (4 * MIB, 2 * MIB, 0x1010_0000, 0)]);
    let r = check(&mut gate, FrontendReq::SET_MEM_TABLE, &p, &fds());
    assert!(matches!(r, Err(Refused::Region { index: 1, .. })), "{r:?}");
    // Disjoint: accepted.
    let p = mem_table_payload(&[(0, 2 * MIB, 0x1000_0000, 0), (4 * MIB, 2 * MIB, 0x2000_0000, 0)]);
    check(&mut gate, FrontendReq::SET_MEM_TABLE, &p, &fds()).unwrap();
}

#[test]
fn hostile_vmm_region_past_end_of_file() {
    let mut gate = Gate::new(policy());
    // 4 MiB claimed of a 2 MiB file; and a 1 MiB region at offset 1.5 MiB of it.
    for (size, off) in [(4 * MIB, 0), (MIB, 3 * MIB / 2)] {
        let p = mem_table_payload(&[(0, size, 0x1000_0000, off)]);
        let r = check(&mut gate, FrontendReq::SET_MEM_TABLE, &p, &[memfd(2 * MIB, true)]);
        assert!(
            matches!(
                r,
                Err(Refused::Region {
                    why: "reaches past the end of its file",
                    ..
                })
            ),
            "{r:?}"
        );
    }
    // Addresses that wrap, and an empty region.
    for (gpa, size, uva, off) in [
        (u64::MAX - 10, MIB, 0, 0),
        (0, MIB, u64::MAX, 0),
        (0, MIB, 0, u64::MAX),
        (0, 0, 0, 0),
    ] {
        let p = mem_table_payload(&[(gpa, size, uva, off)]);
        let r = check(&mut gate, FrontendReq::SET_MEM_TABLE, &p, &[memfd(2 * MIB, true)]);
        assert!(matches!(r, Err(Refused::Region { .. })), "{r:?}");
    }
    // A pipe is not memory.
    let (_r, mut w) = pipe_dups(1);
    let p = mem_table_payload(&[(0, MIB, 0x1000_0000, 0)]);
    let r = check(&mut gate, FrontendReq::SET_MEM_TABLE, &p, &[w.pop().unwrap()]);
    assert!(matches!(r, Err(Refused::Region { .. })), "{r:?}");
}

#[test]
fn hostile_vmm_unsealed_memory() {
    let p = mem_table_payload(&[(0, MIB, 0x1000_0000, 0)]);
    let mut gate = Gate::new(policy());
    let r = check(&mut gate, FrontendReq::SET_MEM_TABLE, &p, &[memfd(MIB, false)]);
    assert!(matches!(r, Err(Refused::Region { .. })), "{r:?}");
    let mut lenient = Gate::new(Policy {
        allow_unsealed_memory: true,
        ..policy()
    });
    check(&mut lenient, FrontendReq::SET_MEM_TABLE, &p, &[memfd(MIB, false)]).unwrap();
}

#[test]
fn hostile_vmm_too_many_regions_or_too_much_memory() {
    let mut gate = Gate::new(policy());
    let regions: Vec<_> = (0..9u64)
        .map(|i| (i * MIB, MIB, 0x1000_0000 + i * MIB, 0))
        .collect();
    let fds: Vec<_> = (0..9).map(|_| memfd(MIB, true)).collect();
    let r = check(
        &mut gate,
        FrontendReq::SET_MEM_TABLE,
        &mem_table_payload(&regions),
        &fds,
    );
    assert!(matches!(r, Err(Refused::Value { .. })), "{r:?}");
    // Fewer descriptors than regions.
    let r = check(
        &mut gate,
        FrontendReq::SET_MEM_TABLE,
        &mem_table_payload(&regions[..2]),
        &fds[..1],
    );
    assert!(matches!(r, Err(Refused::FdCount { .. })), "{r:?}");
    let mut small = Gate::new(Policy {
        max_memory: MIB,
        ..policy()
    });
    let r = check(
        &mut small,
        FrontendReq::SET_MEM_TABLE,
        &mem_table_payload(&regions[..2]),
        &fds[..2],
    );
    assert!(matches!(r, Err(Refused::Region { index: 1, .. })), "{r:?}");
}

#[test]
fn hostile_vmm_queue_size_and_ring_base() {
    let mut gate = Gate::new(policy());
    for num in [0, 100, 512, 3] {
        let r = check(&mut gate, FrontendReq::SET_VRING_NUM, &vring_state(0, num), &[]);
        assert!(matches!(r, Err(Refused::Value { .. })), "size {num}: {r:?}");
    }
    check(&mut gate, FrontendReq::SET_VRING_NUM, &vring_state(0, 128), &[]).unwrap();
    let r = check(
        &mut gate,
        FrontendReq::SET_VRING_BASE,
        &vring_state(0, 0x1_0000),
        &[],
    );
    assert!(matches!(r, Err(Refused::Value { .. })), "{r:?}");
    check(
        &mut gate,
        FrontendReq::SET_VRING_BASE,
        &vring_state(0, 0xffff),
        &[],
    )
    .unwrap();
}

#[test]
fn hostile_vmm_ring_index_beyond_queues() {
    let mut gate = Gate::new(policy());
    for req in [
        FrontendReq::SET_VRING_NUM,
        FrontendReq::SET_VRING_BASE,
        FrontendReq::GET_VRING_BASE,
        FrontendReq::SET_VRING_ENABLE,
    ] {
        let r = check(&mut gate, req, &vring_state(2, 1), &[]);
        assert!(
            matches!(r, Err(Refused::RingIndex { index: 2, .. })),
            "{req:?}: {r:?}"
        );
    }
    let r = check(
        &mut gate,
        FrontendReq::SET_VRING_KICK,
        &5u64.to_le_bytes(),
        &[eventfd()],
    );
    assert!(matches!(r, Err(Refused::RingIndex { .. })), "{r:?}");
    let r = check(&mut gate, FrontendReq::SET_VRING_ENABLE, &vring_state(0, 2), &[]);
    assert!(matches!(r, Err(Refused::Value { .. })), "{r:?}");
}

#[test]
fn hostile_vmm_ring_outside_memory() {
    let mut gate = Gate::new(policy());
    let addr = |desc: u64, avail: u64, used: u64| {
        let mut p = Vec::new();
        p.extend_from_slice(&0u32.to_le_bytes()); // index
        p.extend_from_slice(&0u32.to_le_bytes()); // flags
        for v in [desc, used, avail, 0] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        p
    };
    let base = 0x1000_0000u64;
    // No memory table yet.
    let r = check(
        &mut gate,
        FrontendReq::SET_VRING_ADDR,
        &addr(base, base + 0x1000, base + 0x2000),
        &[],
    );
    assert!(matches!(r, Err(Refused::RingAddress { .. })), "{r:?}");
    let p = mem_table_payload(&[(0, MIB, base, 0)]);
    check(&mut gate, FrontendReq::SET_MEM_TABLE, &p, &[memfd(MIB, true)]).unwrap();
    check(&mut gate, FrontendReq::SET_VRING_NUM, &vring_state(0, 256), &[]).unwrap();
    check(
        &mut gate,
        FrontendReq::SET_VRING_ADDR,
        &addr(base, base + 0x1000, base + 0x2000),
        &[],
    )
    .unwrap();
    for (d, a, u) in [
        // The used ring (6 + 8 * 256 bytes) runs past the region's end.
        (base, base + 0x1000, base + MIB - 0x100),
        // Outside any region.
        (base + 2 * MIB, base + 0x1000, base + 0x2000),
        // Misaligned descriptor table.
        (base + 8, base + 0x1000, base + 0x2000),
        // Wraps.
        (u64::MAX - 15, base + 0x1000, base + 0x2000),
    ] {
        let r = check(&mut gate, FrontendReq::SET_VRING_ADDR, &addr(d, a, u), &[]);
        assert!(matches!(r, Err(Refused::RingAddress { .. })), "{r:?}");
    }
    // The LOG flag (dirty logging is never offered).
    let mut p = addr(base, base + 0x1000, base + 0x2000);
    p[4] = 1;
    let r = check(&mut gate, FrontendReq::SET_VRING_ADDR, &p, &[]);
    assert!(matches!(r, Err(Refused::Value { .. })), "{r:?}");
}

#[test]
fn hostile_vmm_unoffered_protocol_features_and_unserved_requests() {
    let mut gate = Gate::new(policy());
    // LOG_SHMFD (1) and INFLIGHT_SHMFD (12) were never offered.
    for acked in [OFFERED | 1 << 1, OFFERED | 1 << 12, u64::MAX] {
        let r = check(
            &mut gate,
            FrontendReq::SET_PROTOCOL_FEATURES,
            &acked.to_le_bytes(),
            &[],
        );
        assert!(matches!(r, Err(Refused::ProtocolFeatures { .. })), "{r:?}");
    }
    check(
        &mut gate,
        FrontendReq::SET_PROTOCOL_FEATURES,
        &OFFERED.to_le_bytes(),
        &[],
    )
    .unwrap();
    // An absurd SET_LOG_BASE (mmap size 2^63), the INFLIGHT messages, ADD_MEM_REG, and the
    // requests the library serves without any feature check.
    let log = [(1u64 << 63).to_le_bytes(), 0u64.to_le_bytes()].concat();
    for (req, payload, fds) in [
        (FrontendReq::SET_LOG_BASE, log.clone(), 1),
        (FrontendReq::SET_LOG_FD, Vec::new(), 1),
        (FrontendReq::GET_INFLIGHT_FD, vec![0u8; 16], 0),
        (FrontendReq::SET_INFLIGHT_FD, vec![0u8; 16], 1),
        (FrontendReq::ADD_MEM_REG, vec![0u8; 40], 1),
        (FrontendReq::GPU_SET_SOCKET, Vec::new(), 1),
        (FrontendReq::SET_DEVICE_STATE_FD, vec![0u8; 8], 1),
        (FrontendReq::SET_BACKEND_REQ_FD, Vec::new(), 1),
        (FrontendReq::POSTCOPY_ADVISE, Vec::new(), 0),
    ] {
        let fds: Vec<_> = (0..fds).map(|_| memfd(MIB, true)).collect();
        let r = check(&mut gate, req, &payload, &fds);
        assert!(matches!(r, Err(Refused::Request { .. })), "{req:?}: {r:?}");
    }
    let r = gate.check(9999, FLAG_VERSION, &[], &[]);
    assert!(matches!(r, Err(Refused::Request { req: 9999 })), "{r:?}");
}

#[test]
fn hostile_vmm_bad_header_flags() {
    let mut gate = Gate::new(policy());
    for flags in [0, 2, FLAG_VERSION | FLAG_REPLY, FLAG_VERSION | 0x100] {
        let r = gate.check(1, flags, &[], &[]);
        assert!(matches!(r, Err(Refused::Flags { .. })), "{flags:#x}: {r:?}");
    }
    gate.check(1, FLAG_VERSION | FLAG_NEED_REPLY, &[], &[]).unwrap();
}

#[test]
fn hostile_vmm_kick_fd_not_an_eventfd() {
    let mut gate = Gate::new(policy());
    for req in [
        FrontendReq::SET_VRING_KICK,
        FrontendReq::SET_VRING_CALL,
        FrontendReq::SET_VRING_ERR,
    ] {
        let (_r, mut w) = pipe_dups(1);
        let r = check(&mut gate, req, &0u64.to_le_bytes(), &[w.pop().unwrap()]);
        assert!(matches!(r, Err(Refused::NotEventfd { .. })), "{req:?}: {r:?}");
        // Bit 8 (no descriptor) with a descriptor, and no descriptor without bit 8.
        let r = check(&mut gate, req, &0x100u64.to_le_bytes(), &[eventfd()]);
        assert!(matches!(r, Err(Refused::FdCount { .. })), "{r:?}");
        let r = check(&mut gate, req, &0u64.to_le_bytes(), &[]);
        assert!(matches!(r, Err(Refused::FdCount { .. })), "{r:?}");
        check(&mut gate, req, &0x100u64.to_le_bytes(), &[]).unwrap();
        // An eventfd is accepted and made non-blocking.
        let e = eventfd();
        check(&mut gate, req, &1u64.to_le_bytes(), std::slice::from_ref(&e)).unwrap();
        // SAFETY: plain system call on our descriptor.
        let fl = unsafe { libc::fcntl(e.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(fl & libc::O_NONBLOCK, 0);
    }
}
