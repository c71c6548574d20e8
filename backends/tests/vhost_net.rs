//! vhost-user-net end to end without QEMU: two "guests" (rust-vmm's vhost-user `Frontend` plus
//! hand-written rx/tx virtqueues in memfds) on two sockets of one switch with the echo peer, through
//! the daemon's relay. Checks: the echo peer answers a guest's pvkit echo frame with the addresses
//! swapped; a broadcast from one guest reaches the other; after learning, unicast goes only to its
//! port; a frame larger than the posted receive buffer is dropped and counted, not truncated.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ::vhost::VhostBackend;
use ::vhost::vhost_user::Frontend;
use common::{
    GuestMem, QSIZE, Queue, Spy, connect_retry, join_within, nth_backend, peak_rss_kib, region, vring_config,
    wait_for,
};
use pvkit_backends::net::PortSink;
use pvkit_backends::net::{EchoPeer, Switch};
use pvkit_backends::vhost::net::{NetConnections, VhostNet};
use pvkit_backends::vhost::{ServeOptions, serve};
use ring_protocol::abi::pvkit_echo::{ETHERTYPE, PEER_MAC};
use ring_protocol::abi::virtio::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, feature};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const HDR: usize = 12;
const PEER: [u8; 6] = PEER_MAC;
const RX_BASE: usize = 0x0;
const TX_BASE: usize = 0x1000;
/// Receive buffers: 16 of 2 KiB from 0x10000.
const RX_BUF: usize = 0x10000;
const RX_LEN: u32 = 2048;

struct Guest<'a> {
    _fe: Frontend,
    rx: Queue<'a>,
    tx: Queue<'a>,
    kicks: [EventFd; 2],
    next_tx_buf: usize,
}

fn attach<'a>(sock: &Path, mem: &'a GuestMem) -> Guest<'a> {
    attach_with(sock, mem, 0)
}

/// Like [`attach`], with `extra` feature bits acked too (EVENT_IDX...).
fn attach_with<'a>(sock: &Path, mem: &'a GuestMem, extra: u64) -> Guest<'a> {
    let fe = connect_retry(sock, 2);
    fe.set_owner().unwrap();
    let features = fe.get_features().unwrap();
    assert_ne!(
        features & PROTOCOL_FEATURES,
        0,
        "protocol features offered (QEMU needs them)"
    );
    // VERSION_1 only unless asked: no EVENT_IDX, so every used buffer is signalled.
    fe.set_features(feature(VIRTIO_F_VERSION_1) | extra).unwrap();
    fe.set_mem_table(&[region(mem)]).unwrap();
    let mut rx = Queue::new(mem, RX_BASE);
    let tx = Queue::new(mem, TX_BASE);
    let kicks = [
        EventFd::new(EFD_NONBLOCK).unwrap(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
    ];
    for (i, q) in [&rx, &tx].into_iter().enumerate() {
        fe.set_vring_num(i, QSIZE).unwrap();
        fe.set_vring_addr(i, &vring_config(mem, q)).unwrap();
        fe.set_vring_base(i, 0).unwrap();
        fe.set_vring_call(i, &EventFd::new(EFD_NONBLOCK).unwrap())
            .unwrap();
        fe.set_vring_kick(i, &kicks[i]).unwrap();
    }
    for i in 0..8 {
        rx.add(&[(RX_BUF + i * RX_LEN as usize, RX_LEN, true)]);
    }
    // One tiny buffer to check that oversized frames are dropped, not truncated.
    rx.add(&[(RX_BUF + 8 * RX_LEN as usize, 64, true)]);
    rx.kick(&kicks[0]);
    Guest {
        _fe: fe,
        rx,
        tx,
        kicks,
        next_tx_buf: 0x20000,
    }
}

impl Guest<'_> {
    fn send(&mut self, mem: &GuestMem, frame: &[u8]) {
        let mut b = vec![0u8; HDR];
        b.extend_from_slice(frame);
        mem.write(self.next_tx_buf, &b);
        self.tx.add(&[(self.next_tx_buf, b.len() as u32, false)]);
        self.next_tx_buf += 0x1000;
        self.tx.kick(&self.kicks[1]);
        self.tx.wait_used(1);
    }

    /// The next received frame (header stripped) and the buffer it landed in.
    fn recv(&mut self, mem: &GuestMem) -> (u32, Vec<u8>) {
        let (id, len) = self.rx.wait_used(1)[0];
        let addr = RX_BUF + id as usize * RX_LEN as usize;
        if len == 0 {
            return (id, Vec::new());
        }
        let data = mem.read(addr, len as usize);
        assert_eq!(
            &data[..HDR],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            "header: num_buffers = 1"
        );
        (id, data[HDR..].to_vec())
    }
}

fn frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, body: &[u8]) -> Vec<u8> {
    [&dst[..], &src[..], &ethertype.to_be_bytes(), body].concat()
}

#[test]
fn echo_broadcast_learning_and_oversized_frames() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::new();
    let peer = EchoPeer::attach(&switch, PEER, [10, 0, 2, 1]);
    let socks = [dir.path().join("a.sock"), dir.path().join("b.sock")];
    let servers: Vec<_> = socks
        .iter()
        .map(|s| {
            let (s, switch) = (s.clone(), switch.clone());
            std::thread::spawn(move || {
                let options = ServeOptions {
                    max_connections: Some(1),
                    ..Default::default()
                };
                serve("vhost-user-net-test", &s, NetConnections { switch }, &options)
            })
        })
        .collect();
    let (mem_a, mem_b) = (GuestMem::new(), GuestMem::new());
    let mut a = attach(&socks[0], &mem_a);
    let mut b = attach(&socks[1], &mem_b);
    let mac_a = [2, 0, 0, 0, 0, 0xa];
    let mac_b = [2, 0, 0, 0, 0, 0xb];

    // Echo: A -> peer -> A, addresses swapped, payload intact. The flood of A's first frame (the
    // peer is not learned yet) also reaches B.
    let body: Vec<u8> = (0..1000u32).map(|i| (i * 13) as u8).collect();
    a.send(&mem_a, &frame(PEER, mac_a, ETHERTYPE, &body));
    let (_, echoed) = a.recv(&mem_a);
    assert_eq!(echoed, frame(mac_a, PEER, ETHERTYPE, &body));
    let (_, flooded) = b.recv(&mem_b);
    assert_eq!(
        flooded,
        frame(PEER, mac_a, ETHERTYPE, &body),
        "unknown destination flooded"
    );
    assert_eq!(peer.stats().echoed.load(std::sync::atomic::Ordering::Relaxed), 1);

    // Broadcast from B reaches A (and the peer, which ignores it).
    let bc = frame([0xff; 6], mac_b, 0x88b6, b"hello all");
    b.send(&mem_b, &bc);
    assert_eq!(a.recv(&mem_a).1, bc);

    // A and B are learned: unicast B -> A is delivered to A only; A -> B to B only.
    let to_a = frame(mac_a, mac_b, 0x88b6, b"to a");
    b.send(&mem_b, &to_a);
    assert_eq!(a.recv(&mem_a).1, to_a);
    let to_b = frame(mac_b, mac_a, 0x88b6, b"to b");
    a.send(&mem_a, &to_b);
    assert_eq!(b.recv(&mem_b).1, to_b);
    let (pa, pb) = (switch.lookup(&mac_a), switch.lookup(&mac_b));
    assert!(
        pa.is_some() && pb.is_some() && pa != pb,
        "both guests learned on their own ports"
    );

    // B has used 2 of its eight 2 KiB buffers: fill the other 6, then an oversized frame meets the
    // 64-byte buffer: completed with length 0 (dropped), never truncated.
    for i in 0..6u8 {
        a.send(&mem_a, &frame(mac_b, mac_a, 0x88b6, &[i; 100]));
        assert_eq!(b.recv(&mem_b).1, frame(mac_b, mac_a, 0x88b6, &[i; 100]));
    }
    a.send(&mem_a, &frame(mac_b, mac_a, 0x88b6, &[0x55; 200]));
    let (id, data) = b.recv(&mem_b);
    assert_eq!((id, data.len()), (8, 0), "frame larger than the buffer dropped");

    drop(a);
    drop(b);
    for s in servers {
        s.join().unwrap().unwrap();
    }
}

const EVENT_IDX: u64 = feature(VIRTIO_RING_F_EVENT_IDX);
/// The vhost-user feature bit that allows protocol-feature negotiation.
const PROTOCOL_FEATURES: u64 =
    ::vhost::vhost_user::message::VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

type Seen = Arc<std::sync::Mutex<Vec<std::sync::Weak<VhostNet>>>>;

/// Serves `connections` connections on `sock` of `switch`, remembering the backends.
fn serve_spied(
    switch: &Arc<Switch>,
    sock: &Path,
    connections: usize,
) -> (std::thread::JoinHandle<pvkit_backends::Result<()>>, Seen) {
    let (spy, seen) = Spy::new(NetConnections {
        switch: switch.clone(),
    });
    let sock = sock.to_owned();
    let t = std::thread::spawn(move || {
        let options = ServeOptions {
            max_connections: Some(connections),
            ..Default::default()
        };
        serve("vhost-user-net-test", &sock, spy, &options)
    });
    (t, seen)
}

/// A guest claims a 1 GiB transmit descriptor, then a chain of four (4 GiB): both are refused from
/// the lengths alone, nothing is allocated for them (the daemon's peak memory does not move), they
/// are counted, and the next frame is switched as usual.
#[test]
fn guest_sized_allocation_net_tx_1gib_descriptor_refused_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::new();
    let peer = EchoPeer::attach(&switch, PEER, [10, 0, 2, 1]);
    let sock = dir.path().join("a.sock");
    let (server, seen) = serve_spied(&switch, &sock, 1);
    let mem = GuestMem::new();
    let mut a = attach(&sock, &mem);
    let backend = nth_backend(&seen, 0);

    let before = peak_rss_kib();
    mem.write(0x20000, &[0u8; HDR]);
    a.tx.add(&[(0x20000, 1 << 30, false)]);
    a.tx.kick(&a.kicks[1]);
    a.tx.wait_used(1);
    a.tx.add(&[(0x20000, 1 << 30, false); 4]);
    a.tx.kick(&a.kicks[1]);
    a.tx.wait_used(1);
    let grown_mib = (peak_rss_kib() - before) / 1024;
    assert!(grown_mib < 64, "peak memory grew by {grown_mib} MiB");
    assert_eq!(
        backend.stats().oversized.load(Ordering::Relaxed),
        2,
        "both refused as oversized"
    );
    assert_eq!(backend.stats().tx_frames.load(Ordering::Relaxed), 0);

    // A frame of the largest size allowed (1518 bytes) still goes through, and the next one too.
    let body = vec![0x5au8; pvkit_backends::vhost::net::MAX_FRAME - 14];
    a.next_tx_buf = 0x30000;
    a.send(&mem, &frame(PEER, MAC_A, ETHERTYPE, &body));
    assert_eq!(a.recv(&mem).1, frame(MAC_A, PEER, ETHERTYPE, &body));
    let one_more = vec![0x5au8; pvkit_backends::vhost::net::MAX_FRAME - 13];
    a.send(&mem, &frame(PEER, MAC_A, ETHERTYPE, &one_more));
    assert_eq!(
        backend.stats().oversized.load(Ordering::Relaxed),
        3,
        "one byte over: refused"
    );
    a.send(&mem, &frame(PEER, MAC_A, ETHERTYPE, b"still here"));
    assert_eq!(a.recv(&mem).1, frame(MAC_A, PEER, ETHERTYPE, b"still here"));
    assert_eq!(peer.stats().echoed.load(Ordering::Relaxed), 2);
    drop(backend);
    drop(a);
    join_within(server, Duration::from_secs(10), "the daemon").unwrap();
}

/// Counts frames delivered to a test port.
#[derive(Default)]
struct Counter(std::sync::atomic::AtomicU64);

impl PortSink for Counter {
    fn deliver(&self, _frame: &[u8]) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The CVE-2016-5403 class with EVENT_IDX on vhost-user-net: guest A publishes a transmit index more
/// than a ring ahead. A's device stops (no more rounds however often it kicks), its port leaves the
/// switch at once (B's broadcasts are no longer queued for it), B is unaffected, and once A's
/// frontend goes away its daemon is dropped (port gone for good) and a new connection on the same
/// socket is served.
#[test]
fn cve_2016_5403_net_avail_index_runaway_stops_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::new();
    let _peer = EchoPeer::attach(&switch, PEER, [10, 0, 2, 1]);
    let socks = [dir.path().join("a.sock"), dir.path().join("b.sock")];
    let (server_a, seen_a) = serve_spied(&switch, &socks[0], 2);
    let (server_b, _seen_b) = serve_spied(&switch, &socks[1], 1);
    let (mem_a, mem_b) = (GuestMem::new(), GuestMem::new());
    let mut b = attach_with(&socks[1], &mem_b, EVENT_IDX);
    {
        let mut a = attach_with(&socks[0], &mem_a, EVENT_IDX);
        let backend = nth_backend(&seen_a, 0);
        a.send(&mem_a, &frame(PEER, MAC_A, ETHERTYPE, b"hello"));
        assert_eq!(a.recv(&mem_a).1, frame(MAC_A, PEER, ETHERTYPE, b"hello"));
        let _ = b.recv(&mem_b); // the flood of A's first frame
        assert!(backend.port().is_some());

        a.tx.publish_raw(a.tx.avail_idx().wrapping_add(QSIZE + 1), &a.kicks[1]);
        assert!(
            wait_for(Duration::from_secs(5), || backend.health().is_broken(1)),
            "transmit queue stopped"
        );
        assert_eq!(backend.port(), None, "port left the switch");
        let rounds = backend.health().rounds();
        for _ in 0..200 {
            a.kicks[1].write(1).unwrap();
            a.kicks[0].write(1).unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            backend.health().rounds(),
            rounds,
            "a stopped device is not looked at again"
        );
        assert_eq!(backend.health().faults(), 1);

        // B's broadcast reaches the peer's side and a test port, but nothing is queued for A.
        let counter = Arc::new(Counter::default());
        let test_port = switch.add_port(counter.clone());
        b.send(&mem_b, &frame([0xff; 6], MAC_B, 0x88b6, b"all"));
        assert_eq!(counter.0.load(Ordering::Relaxed), 1);
        assert_eq!(backend.queued(), 0, "nothing queued for the stopped device");
        switch.remove_port(test_port).unwrap();
        // B still talks to the peer.
        b.send(&mem_b, &frame(PEER, MAC_B, ETHERTYPE, b"b"));
        assert_eq!(b.recv(&mem_b).1, frame(MAC_B, PEER, ETHERTYPE, b"b"));
        drop(backend);
        drop(a);
    }
    // A's socket serves a new connection; the old backend was dropped.
    let mem_a2 = GuestMem::new();
    let mut a2 = attach_with(&socks[0], &mem_a2, EVENT_IDX);
    a2.send(&mem_a2, &frame(PEER, MAC_A, ETHERTYPE, b"again"));
    assert_eq!(a2.recv(&mem_a2).1, frame(MAC_A, PEER, ETHERTYPE, b"again"));
    assert!(
        seen_a.lock().unwrap()[0].upgrade().is_none(),
        "first backend released"
    );
    drop(a2);
    drop(b);
    join_within(server_a, Duration::from_secs(10), "daemon A").unwrap();
    join_within(server_b, Duration::from_secs(10), "daemon B").unwrap();
}
