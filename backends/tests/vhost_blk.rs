//! vhost-user-blk end to end without QEMU: the test plays the frontend (rust-vmm's vhost-user
//! `Frontend` over the daemon's socket) and the guest driver (a split virtqueue written by hand in a
//! shared memfd), against `pvkit_backends::vhost::serve` running the real backend on a temp image.
//! Checks: data written lands in the image and reads back; flush and the config space; malformed
//! and hostile chains get an error status without stopping the device; a second connection after
//! the first frontend went away is served.

mod common;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use common::{
    F_VERSION, GuestMem, MEM_SIZE, QSIZE, Queue, RawFrontend, Spy, connect_retry, join_within,
    mem_table_payload, nth_backend, region, vring_config, wait_for,
};

use ::vhost::VhostBackend;
use ::vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use ::vhost::vhost_user::{Frontend, VhostUserFrontend};
use pvkit_backends::block::{BlockCore, BlockOptions, BlockQueue};
use pvkit_backends::ratelimit::RateLimit;
use pvkit_backends::vhost::blk::{MAX_DISCARD_SECTORS, VhostBlk};
use pvkit_backends::vhost::{ServeOptions, blk::BlkConnections, serve};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use ring_protocol::abi::virtio::{
    Le32, Le64, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_BLK_S_IOERR as S_IOERR, VIRTIO_BLK_S_OK as S_OK, VIRTIO_BLK_S_UNSUPP as S_UNSUPP,
    VIRTIO_BLK_T_DISCARD as T_DISCARD, VIRTIO_BLK_T_FLUSH as T_FLUSH, VIRTIO_BLK_T_IN as T_IN,
    VIRTIO_BLK_T_OUT as T_OUT, VIRTIO_BLK_T_WRITE_ZEROES as T_WRITE_ZEROES, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VirtioBlkConfig, VirtioBlkDiscardWriteZeroes,
    VirtioBlkOuthdr, feature,
};
use zerocopy::{FromBytes, IntoBytes};

const EVENT_IDX: u64 = feature(VIRTIO_RING_F_EVENT_IDX);
/// The vhost-user feature bit that allows protocol-feature negotiation.
const PROTOCOL_FEATURES: u64 =
    ::vhost::vhost_user::message::VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
const IMAGE_SECTORS: u64 = 2048;

fn header(t: u32, sector: u64) -> [u8; 16] {
    let h = VirtioBlkOuthdr {
        type_: Le32::new(t),
        ioprio: Le32::ZERO,
        sector: Le64::new(sector),
    };
    h.as_bytes().try_into().expect("16 bytes")
}

/// Connects and sets up queue 0; returns the frontend and its kick/call eventfds.
fn connect(sock: &Path, mem: &GuestMem) -> (Frontend, EventFd, EventFd) {
    connect_with(sock, mem, 0)
}

/// Sets up queue 0 of `fe` with its rings at `base`; returns the kick and call eventfds.
fn setup_queue(fe: &mut Frontend, mem: &GuestMem, base: usize) -> (EventFd, EventFd) {
    fe.set_vring_num(0, QSIZE).unwrap();
    fe.set_vring_addr(0, &vring_config(mem, &Queue::new(mem, base)))
        .unwrap();
    fe.set_vring_base(0, 0).unwrap();
    let call = EventFd::new(EFD_NONBLOCK).unwrap();
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    fe.set_vring_call(0, &call).unwrap();
    fe.set_vring_kick(0, &kick).unwrap();
    fe.set_vring_enable(0, true).unwrap();
    (kick, call)
}

/// Like [`connect`], with `extra` feature bits acked too (EVENT_IDX...).
fn connect_with(sock: &Path, mem: &GuestMem, extra: u64) -> (Frontend, EventFd, EventFd) {
    let mut fe = connect_retry(sock, 1);
    fe.set_owner().unwrap();
    let features = fe.get_features().unwrap();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_MQ,
        VIRTIO_BLK_F_DISCARD,
    ] {
        assert_ne!(features & feature(bit), 0, "feature bit {bit} offered");
    }
    assert_ne!(features & PROTOCOL_FEATURES, 0, "protocol features offered");
    let proto = fe.get_protocol_features().unwrap();
    assert!(
        proto.contains(VhostUserProtocolFeatures::CONFIG),
        "CONFIG (QEMU requires it)"
    );
    fe.set_protocol_features(VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ)
        .unwrap();
    // VERSION_1, FLUSH, protocol features; no EVENT_IDX unless asked, so every completion
    // interrupts.
    fe.set_features(feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_BLK_F_FLUSH) | PROTOCOL_FEATURES | extra)
        .unwrap();
    assert_eq!(fe.get_queue_num().unwrap(), 1);
    let (_, cfg) = fe
        .get_config(0, 60, VhostUserConfigFlags::WRITABLE, &[0u8; 60])
        .unwrap();
    let (cfg, _) = VirtioBlkConfig::read_from_prefix(&[&cfg[..], &[0; 12]].concat()).unwrap();
    assert_eq!(cfg.capacity.get(), IMAGE_SECTORS, "capacity in the config space");
    fe.set_mem_table(&[region(mem)]).unwrap();
    let (kick, call) = setup_queue(&mut fe, mem, 0);
    (fe, kick, call)
}

#[test]
fn requests_hostile_chains_and_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![0xeeu8; IMAGE_SECTORS as usize * 512]).unwrap();
    let sock = dir.path().join("blk.sock");
    let core = Arc::new(BlockCore::open(&img, BlockOptions::default()).unwrap());
    let s2 = sock.clone();
    let server = std::thread::spawn(move || {
        serve(
            "vhost-user-blk-test",
            &s2,
            BlkConnections {
                core,
                pool: None,
                queues: 1,
            },
            &ServeOptions {
                max_connections: Some(2),
                ..Default::default()
            },
        )
    });

    let mem = GuestMem::new();
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
    {
        let (fe, kick, _call) = connect(&sock, &mem);
        let mut q = Queue::new(&mem, 0);
        mem.write(0x1000, &header(T_OUT, 2));
        mem.write(0x2000, &pattern);
        let w = q.add(&[(0x1000, 16, false), (0x2000, 1024, false), (0x1800, 1, true)]);
        mem.write(0x1010, &header(T_FLUSH, 0));
        let f = q.add(&[(0x1010, 16, false), (0x1801, 1, true)]);
        q.kick(&kick);
        let used = q.wait_used(2);
        assert!(
            used.contains(&(u32::from(w), 1)) && used.contains(&(u32::from(f), 1)),
            "{used:?}"
        );
        assert_eq!(mem.read(0x1800, 2), vec![S_OK, S_OK]);
        let on_disk = std::fs::read(&img).unwrap();
        assert_eq!(&on_disk[1024..2048], &pattern[..], "the write is in the image");
        assert!(on_disk[..1024].iter().chain(&on_disk[2048..]).all(|&b| b == 0xee));

        // Read back into two scattered buffers; then hostile and malformed chains.
        mem.write(0x1020, &header(T_IN, 2));
        let r = q.add(&[
            (0x1020, 16, false),
            (0x3000, 512, true),
            (0x4000, 512, true),
            (0x1802, 1, true),
        ]);
        mem.write(0x1030, &header(T_IN, IMAGE_SECTORS - 1));
        let past = q.add(&[(0x1030, 16, false), (0x5000, 1024, true), (0x1803, 1, true)]);
        mem.write(0x1040, &header(T_IN, 0));
        let outside = q.add(&[
            (0x1040, 16, false),
            (MEM_SIZE + 0x1000, 512, true),
            (0x1804, 1, true),
        ]);
        mem.write(0x1050, &header(T_OUT, 0));
        let wrong_dir = q.add(&[(0x1050, 16, false), (0x2000, 512, true), (0x1805, 1, true)]);
        mem.write(0x1060, &header(T_IN, 0));
        let no_status = q.add(&[(0x1060, 16, false), (0x6000, 512, false)]);
        mem.write(0x1806, &[0xaa; 5]);
        q.kick(&kick);
        let used = q.wait_used(5);
        let len_of = |h: u16| used.iter().find(|u| u.0 == u32::from(h)).map(|u| u.1);
        assert_eq!(len_of(r), Some(1025), "read: data + status");
        assert_eq!(mem.read(0x3000, 512), &pattern[..512]);
        assert_eq!(mem.read(0x4000, 512), &pattern[512..]);
        assert_eq!(
            len_of(no_status),
            Some(0),
            "no status byte: completed without one"
        );
        assert_eq!(
            mem.read(0x1802, 4),
            vec![S_OK, S_IOERR, S_IOERR, S_IOERR],
            "read ok; past the end, outside guest memory and wrong direction refused"
        );
        assert!(len_of(past).is_some() && len_of(outside).is_some() && len_of(wrong_dir).is_some());
        assert_eq!(
            std::fs::read(&img).unwrap()[..512],
            [0xeeu8; 512],
            "the wrong-direction write did not happen"
        );
        drop(fe);
    }

    // The frontend went away; a new one is served on the same socket.
    let mem2 = GuestMem::new();
    let (fe, kick, _call) = connect(&sock, &mem2);
    let mut q = Queue::new(&mem2, 0);
    mem2.write(0x1000, &header(T_IN, 2));
    q.add(&[(0x1000, 16, false), (0x3000, 1024, true), (0x1800, 1, true)]);
    q.kick(&kick);
    q.wait_used(1);
    assert_eq!(mem2.read(0x1800, 1), vec![S_OK]);
    assert_eq!(
        mem2.read(0x3000, 1024),
        pattern,
        "second connection reads the data back"
    );
    drop(fe);
    server.join().unwrap().unwrap();
}

/// With a worker pool (`--workers`), every request type still goes through the block core: a
/// writethrough core syncs the write before its status, the flush syncs, the discard punches its
/// hole, and the core counts each one.
#[test]
fn pool_requests_go_through_the_core_with_writethrough() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![0xeeu8; IMAGE_SECTORS as usize * 512]).unwrap();
    let sock = dir.path().join("blk.sock");
    let options = BlockOptions {
        writethrough: true,
        ..Default::default()
    };
    let core = Arc::new(BlockCore::open(&img, options).unwrap());
    let pool = Arc::new(BlockQueue::new(core.clone(), 2, 16));
    let (s2, c2) = (sock.clone(), core.clone());
    let server = std::thread::spawn(move || {
        serve(
            "vhost-user-blk-test",
            &s2,
            BlkConnections {
                core: c2,
                pool: Some(pool),
                queues: 1,
            },
            &ServeOptions {
                max_connections: Some(1),
                ..Default::default()
            },
        )
    });
    let mem = GuestMem::new();
    let (fe, kick, _call) = connect_with(&sock, &mem, feature(VIRTIO_BLK_F_DISCARD));
    let mut q = Queue::new(&mem, 0);
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 11 + 5) as u8).collect();
    mem.write(0x1000, &header(T_OUT, 4));
    mem.write(0x2000, &pattern);
    q.add(&[(0x1000, 16, false), (0x2000, 1024, false), (0x1800, 1, true)]);
    q.kick(&kick);
    q.wait_used(1);
    mem.write(0x1010, &header(T_FLUSH, 0));
    q.add(&[(0x1010, 16, false), (0x1801, 1, true)]);
    mem.write(0x1020, &header(T_DISCARD, 0));
    let discard = VirtioBlkDiscardWriteZeroes {
        sector: Le64::new(16),
        num_sectors: Le32::new(8),
        flags: Le32::new(0),
    };
    mem.write(0x6000, discard.as_bytes());
    q.add(&[(0x1020, 16, false), (0x6000, 16, false), (0x1802, 1, true)]);
    mem.write(0x1030, &header(T_IN, 4));
    q.add(&[(0x1030, 16, false), (0x3000, 1024, true), (0x1803, 1, true)]);
    q.kick(&kick);
    q.wait_used(3);
    assert_eq!(mem.read(0x1800, 4), vec![S_OK; 4], "write, flush, discard, read");
    assert_eq!(mem.read(0x3000, 1024), pattern, "read back through the pool");
    let image = std::fs::read(&img).unwrap();
    assert_eq!(&image[4 * 512..6 * 512], &pattern[..]);
    assert!(image[16 * 512..24 * 512].iter().all(|&b| b == 0), "discarded");
    let s = core.stats();
    let counts = [&s.reads, &s.writes, &s.flushes, &s.discards, &s.syncs, &s.errors]
        .map(|c| c.load(Ordering::Relaxed));
    assert_eq!(
        counts,
        [1, 1, 1, 1, 2, 0],
        "reads, writes, flushes, discards, syncs (the writethrough write and the flush), errors"
    );
    drop(fe);
    join_within(server, Duration::from_secs(10), "the daemon").unwrap();
}

/// A daemon on a fresh image (filled with 0xee), serving `connections` connections.
struct Server {
    _dir: tempfile::TempDir,
    img: PathBuf,
    sock: PathBuf,
    core: Arc<BlockCore>,
    seen: Arc<Mutex<Vec<Weak<VhostBlk>>>>,
    thread: Option<std::thread::JoinHandle<pvkit_backends::Result<()>>>,
}

impl Server {
    fn start(connections: usize, log: Arc<RateLimit>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::write(&img, vec![0xeeu8; IMAGE_SECTORS as usize * 512]).unwrap();
        let sock = dir.path().join("blk.sock");
        let core = Arc::new(BlockCore::open(&img, BlockOptions::default()).unwrap());
        let (spy, seen) = Spy::new(BlkConnections {
            core: core.clone(),
            pool: None,
            queues: 1,
        });
        let s2 = sock.clone();
        let options = ServeOptions {
            max_connections: Some(connections),
            log,
            ..Default::default()
        };
        let thread = std::thread::spawn(move || serve("vhost-user-blk-test", &s2, spy, &options));
        Server {
            _dir: dir,
            img,
            sock,
            core,
            seen,
            thread: Some(thread),
        }
    }

    /// The daemon must finish its connections (every daemon dropped, threads joined) in time.
    fn finish(mut self) {
        join_within(self.thread.take().unwrap(), Duration::from_secs(10), "the daemon")
            .expect("serve returned an error");
    }
}

/// A read of one sector into 0x3000 with its status at `status`; returns the head.
fn read_sector(mem: &GuestMem, q: &mut Queue<'_>, hdr: usize, status: usize) -> u16 {
    mem.write(hdr, &header(T_IN, 2));
    q.add(&[(hdr, 16, false), (0x3000, 512, true), (status, 1, true)])
}

/// The CVE-2016-5403 class with EVENT_IDX: the driver publishes an available index more than a ring
/// ahead. The queue stops (one fault, no further rounds however often the driver kicks), the frontend
/// can reset the ring and go on, and after it disconnects the daemon serves a new connection (its
/// worker threads were joined: the old daemon did not hang in drop).
#[test]
fn cve_2016_5403_blk_avail_index_runaway_stops_the_queue() {
    let server = Server::start(2, Arc::new(RateLimit::peer_log()));
    let mem = GuestMem::new();
    {
        let (mut fe, kick, _call) = connect_with(&server.sock, &mem, EVENT_IDX);
        let mut q = Queue::new(&mem, 0);
        read_sector(&mem, &mut q, 0x1000, 0x1800);
        q.kick(&kick);
        q.wait_used(1);
        assert_eq!(mem.read(0x1800, 1), [S_OK]);
        let backend = nth_backend(&server.seen, 0);

        // 17 entries published on a 16-entry ring.
        q.publish_raw(q.avail_idx().wrapping_add(QSIZE + 1), &kick);
        assert!(
            wait_for(Duration::from_secs(5), || backend.health().is_broken(0)),
            "queue stopped"
        );
        let rounds = backend.health().rounds();
        assert!(rounds <= 8, "stopped within a few rounds ({rounds})");
        for _ in 0..200 {
            kick.write(1).unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            backend.health().rounds(),
            rounds,
            "a stopped queue is not looked at again"
        );
        assert_eq!(backend.health().faults(), 1, "stopped (and logged) once");
        assert_eq!(q.used_idx(), 1, "nothing completed from the bogus entries");

        // The frontend resets the ring (GET_VRING_BASE), sets it up anew: served again.
        fe.get_vring_base(0).unwrap();
        assert!(!backend.health().is_broken(0), "reset by the frontend");
        let (kick2, _call2) = setup_queue(&mut fe, &mem, 0xc000);
        let mut q2 = Queue::new(&mem, 0xc000);
        read_sector(&mem, &mut q2, 0x1010, 0x1801);
        q2.kick(&kick2);
        q2.wait_used(1);
        assert_eq!(mem.read(0x1801, 1), [S_OK]);

        // Broken again, then the frontend goes away with the queue stopped.
        q2.publish_raw(q2.avail_idx().wrapping_add(100), &kick2);
        assert!(wait_for(Duration::from_secs(5), || backend.health().is_broken(0)));
        assert_eq!(backend.health().faults(), 2);
        drop(backend);
        drop(fe);
    }
    // A new connection is served, and the old backend is gone (its daemon dropped).
    let mem2 = GuestMem::new();
    let (fe, kick, _call) = connect_with(&server.sock, &mem2, EVENT_IDX);
    let mut q = Queue::new(&mem2, 0);
    read_sector(&mem2, &mut q, 0x1000, 0x1800);
    q.kick(&kick);
    q.wait_used(1);
    assert_eq!(mem2.read(0x1800, 1), [S_OK]);
    assert!(
        server.seen.lock().unwrap()[0].upgrade().is_none(),
        "the first connection's backend was released"
    );
    drop(fe);
    server.finish();
}

/// Discard and write-zeroes within the advertised limits (one segment, at most
/// `max_discard_sectors`): more segments, a descriptor claiming a huge segment list, unknown flags
/// and the unmap flag on a discard are refused with the status the spec names, without a
/// `fallocate`; one accepted request costs one.
#[test]
fn unbounded_discard_limited_to_the_advertised_segments_and_sectors() {
    let server = Server::start(1, Arc::new(RateLimit::peer_log()));
    let mem = GuestMem::new();
    let (mut fe, kick, _call) = connect_with(
        &server.sock,
        &mem,
        feature(VIRTIO_BLK_F_DISCARD) | feature(VIRTIO_BLK_F_WRITE_ZEROES),
    );
    let (_, cfg) = fe
        .get_config(0, 60, VhostUserConfigFlags::WRITABLE, &[0u8; 60])
        .unwrap();
    let u32_at = |o: usize| u32::from_le_bytes(cfg[o..o + 4].try_into().unwrap());
    assert_eq!(
        (u32_at(36), u32_at(40), u32_at(48), u32_at(52)),
        (MAX_DISCARD_SECTORS, 1, MAX_DISCARD_SECTORS, 1),
        "max_discard_sectors, max_discard_seg, max_write_zeroes_sectors, max_write_zeroes_seg"
    );
    let seg = |sector: u64, sectors: u32, flags: u32| {
        VirtioBlkDiscardWriteZeroes {
            sector: Le64::new(sector),
            num_sectors: Le32::new(sectors),
            flags: Le32::new(flags),
        }
        .as_bytes()
        .to_vec()
    };
    let mut q = Queue::new(&mem, 0);
    // (type, segment bytes, descriptor length claimed)
    let cases: Vec<(u32, Vec<u8>, u32, u8)> = vec![
        (T_DISCARD, seg(8, 8, 0), 16, S_OK),
        (T_DISCARD, [seg(16, 8, 0), seg(24, 8, 0)].concat(), 32, S_UNSUPP),
        // A segment list the descriptor claims is 1 GiB long: 67 M segments, none read.
        (T_DISCARD, seg(16, 8, 0), 1 << 30, S_UNSUPP),
        (T_DISCARD, seg(16, MAX_DISCARD_SECTORS + 1, 0), 16, S_IOERR),
        (T_DISCARD, seg(16, 8, 1), 16, S_UNSUPP),
        (T_WRITE_ZEROES, seg(40, 8, 1), 16, S_OK),
        (T_WRITE_ZEROES, seg(48, 8, 2), 16, S_UNSUPP),
        (T_DISCARD, seg(16, 8, 0)[..12].to_vec(), 12, S_IOERR),
        (T_DISCARD, seg(IMAGE_SECTORS - 4, 8, 0), 16, S_IOERR),
    ];
    // Four chains (12 of the 16 descriptors) at a time.
    for (n, batch) in cases.chunks(4).enumerate() {
        for (j, (t, bytes, len, _)) in batch.iter().enumerate() {
            let i = 4 * n + j;
            let (h, d) = (0x1000 + 0x20 * i, 0x6000 + 0x40 * i);
            mem.write(h, &header(*t, 0));
            mem.write(d, bytes);
            q.add(&[(h, 16, false), (d, *len, false), (0x1800 + i, 1, true)]);
        }
        q.kick(&kick);
        q.wait_used(batch.len() as u16);
    }
    let statuses = mem.read(0x1800, cases.len());
    let expected: Vec<u8> = cases.iter().map(|c| c.3).collect();
    assert_eq!(statuses, expected);
    assert_eq!(
        server.core.stats().discards.load(Ordering::Relaxed),
        2,
        "one fallocate per accepted request, none for refused ones"
    );
    let image = std::fs::read(&server.img).unwrap();
    assert!(
        image[8 * 512..16 * 512].iter().all(|&b| b == 0),
        "discarded range reads zero"
    );
    assert!(
        image[40 * 512..48 * 512].iter().all(|&b| b == 0),
        "zeroed range reads zero"
    );
    assert!(
        image[16 * 512..40 * 512].iter().all(|&b| b == 0xee),
        "refused ranges untouched"
    );
    assert!(image[48 * 512..].iter().all(|&b| b == 0xee));
    drop(fe);
    server.finish();
}

/// Chains bounded before they cost anything: an indirect table longer than the queue, more data
/// than one request carries, and descriptor addresses that overflow 64 bits are refused (no
/// panic, no wrap), and the queue goes on.
#[test]
fn guest_sized_request_bounds_blk() {
    let server = Server::start(1, Arc::new(RateLimit::peer_log()));
    let mem = GuestMem::new();
    let (fe, kick, _call) = connect_with(&server.sock, &mem, feature(VIRTIO_RING_F_INDIRECT_DESC));
    let mut q = Queue::new(&mem, 0);
    // 300 descriptors through an indirect table at 0x20000.
    mem.write(0x1000, &header(T_IN, 0));
    let mut bufs = vec![(0x1000, 16, false)];
    bufs.extend((0..298).map(|_| (0x3000, 512, true)));
    bufs.push((0x1800, 1, true));
    mem.write(0x1800, &[0xaa]);
    let long = q.add_indirect(0x20000, &bufs);
    // 64 MiB + 512 bytes of data in two descriptors (each over the same guest buffer).
    mem.write(0x1010, &header(T_IN, 0));
    let big = q.add(&[
        (0x1010, 16, false),
        (0x40000, 32 << 20, true),
        (0x40000, (32 << 20) + 512, true),
        (0x1801, 1, true),
    ]);
    // A status byte at the very top of the address space (its address + length overflows).
    mem.write(0x1020, &header(T_IN, 0));
    let top = q.add_indirect(
        0x24000,
        &[(0x1020, 16, false), (0x3000, 512, true), (usize::MAX, 16, true)],
    );
    // Data whose end overflows.
    mem.write(0x1030, &header(T_IN, 0));
    let wrap = q.add_indirect(
        0x25000,
        &[
            (0x1030, 16, false),
            (usize::MAX - 100, 512, true),
            (0x1802, 1, true),
        ],
    );
    let ok = read_sector(&mem, &mut q, 0x1040, 0x1803);
    q.kick(&kick);
    let used = q.wait_used(5);
    let len_of = |h: u16| used.iter().find(|u| u.0 == u32::from(h)).map(|u| u.1);
    assert_eq!(len_of(long), Some(0), "over-long chain: no status trusted");
    assert_eq!(mem.read(0x1800, 1), [0xaa], "nothing written for it");
    assert_eq!(len_of(big), Some(1));
    assert_eq!(len_of(top), Some(0));
    assert_eq!(len_of(wrap), Some(1));
    assert_eq!(len_of(ok), Some(513));
    assert_eq!(mem.read(0x1801, 3), [S_IOERR, S_IOERR, S_OK]);
    drop(fe);
    server.finish();
}

/// A guest sending bad request after bad request gets a handful of warnings, then silence and a
/// summary: the log limit lets 5 through and counts the rest.
#[test]
fn log_flood_blk_refusals_are_rate_limited() {
    let log = Arc::new(RateLimit::new(5, Duration::from_secs(3600)));
    let server = Server::start(1, log.clone());
    let mem = GuestMem::new();
    let (fe, kick, _call) = connect_with(&server.sock, &mem, 0);
    let mut q = Queue::new(&mem, 0);
    for round in 0..5 {
        for i in 0..8 {
            // A header of 8 bytes: refused.
            let h = 0x1000 + 0x10 * i;
            q.add(&[(h, 8, false), (0x1800 + i, 1, true)]);
        }
        q.kick(&kick);
        q.wait_used(8);
        assert_eq!(mem.read(0x1800, 8), [S_IOERR; 8], "round {round}");
    }
    assert_eq!(log.passed_total(), 5, "five warnings logged");
    assert_eq!(log.suppressed_total(), 35, "the other 35 counted, not logged");
    drop(fe);
    server.finish();
}

/// A hostile VMM, one connection after another: each refused message closes that connection
/// (never the daemon), and a well-behaved frontend is served afterwards. The memory table past the
/// end of its file would have killed the daemon with SIGBUS at the first descriptor read.
#[test]
fn hostile_vmm_blk_connections_refused_and_the_daemon_goes_on() {
    let server = Server::start(6, Arc::new(RateLimit::peer_log()));
    let mem = GuestMem::new();

    // 1: 29 descriptors with GET_FEATURES.
    let raw = RawFrontend::connect(&server.sock);
    let fds: Vec<_> = (0..29).map(|_| mem.fd.as_raw_fd()).collect();
    raw.send(1, F_VERSION, &[], &fds).unwrap();
    assert!(raw.closed(), "too many descriptors: connection closed");

    // 2: protocol features never offered (LOG_SHMFD), then SET_LOG_BASE.
    let raw = RawFrontend::connect(&server.sock);
    raw.send(16, F_VERSION, &(1u64 << 1).to_le_bytes(), &[]).unwrap();
    assert!(raw.closed());

    // 3: a queue size that is not a power of two.
    let raw = RawFrontend::connect(&server.sock);
    raw.send(8, F_VERSION, &[0u8, 0, 0, 0, 100, 0, 0, 0], &[])
        .unwrap();
    assert!(raw.closed());

    // 4: overlapping regions.
    let raw = RawFrontend::connect(&server.sock);
    let p = mem_table_payload(&[
        (0, MEM_SIZE as u64, mem.va(0), 0),
        (0x1000, 0x1000, mem.va(0) + (2 << 20), 0),
    ]);
    raw.send(5, F_VERSION, &p, &[mem.fd.as_raw_fd(), mem.fd.as_raw_fd()])
        .unwrap();
    assert!(raw.closed());

    // 5: a region twice the size of its file, with the rings set up in the part past its end
    // (the real frontend: everything else about it is right).
    let fe = connect_retry(&server.sock, 1);
    fe.set_owner().unwrap();
    fe.get_features().unwrap();
    fe.set_features(feature(VIRTIO_F_VERSION_1) | PROTOCOL_FEATURES)
        .unwrap();
    let mut r = region(&mem);
    r.memory_size *= 2;
    let refused = fe
        .set_mem_table(&[r])
        .and_then(|_| fe.set_vring_num(0, QSIZE))
        .and_then(|_| fe.get_vring_base(0).map(|_| ()));
    assert!(refused.is_err(), "past the end of its file: connection closed");
    drop(fe);

    // 6: an honest frontend is served.
    let (fe, kick, _call) = connect(&server.sock, &mem);
    let mut q = Queue::new(&mem, 0);
    read_sector(&mem, &mut q, 0x1000, 0x1800);
    q.kick(&kick);
    q.wait_used(1);
    assert_eq!(mem.read(0x1800, 1), [S_OK]);
    drop(fe);
    server.finish();
}
