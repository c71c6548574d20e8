//! Our frontends against our backends, with no hypervisor: the real blkfront, netfront and
//! secondary console of `pvkit-frontends` talk to the real blkback, netback and console engines of
//! `pvkit-backends` over one fake grant table and fake event channels.
//!
//! What is real: the drivers, their rings, the engines (blkback over the block core and its AIO
//! executor on an image file; netback on the net core's switch with its echo peer; the console
//! engine echoing into a log file), the workloads
//! the guest kernel runs, and the grant checks (`ring_protocol`'s fake grant table checks every
//! access as Xen does: issued to the backend's domain, writable where written, ended only once
//! unmapped). What plays a part: the fake XenStore daemon (the frontends' XenStore client is real),
//! and a few lines below that play the toolstack and the backend's xenbus state machine (they map
//! the rings the frontend published and hand them to the engine, as `xen::xenbus` does with
//! `/dev/xen/gntdev`). Both sides run on one thread: the frontend's waiter, when the driver
//! idles, lets XenStore and the backend take a step.

use std::cell::RefCell;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pvkit_backends::block::{BlockCore, BlockOptions};
use pvkit_backends::console::ConsoleSink;
use pvkit_backends::net::{EchoPeer, Switch};
use pvkit_backends::ratelimit::RateLimit;
use pvkit_backends::xen::blkback::{self, BlkEngine};
use pvkit_backends::xen::console::Pump;
use pvkit_backends::xen::gntdev::GrantCopy;
use pvkit_backends::xen::netback::NetEngine;
use pvkit_backends::xen::xenbus::Engine;
use pvkit_frontends::block::{self, BlockDevice};
use pvkit_frontends::console::ConsoleDevice;
use pvkit_frontends::net::NetDevice;
use pvkit_frontends::wait::{WaitMode, Waiter};
use pvkit_frontends::workload::blk::{IntegrityParams, fill_sector, integrity};
use pvkit_frontends::workload::console::echo as console_echo;
use pvkit_frontends::workload::net::echo;
use pvkit_frontends::workload::net::ping::{PingParams, ping};
use pvkit_frontends::workload::{Recorder, Rng};
use pvkit_frontends::xen::XenPlatform;
use pvkit_frontends::xen::blkfront::{BlkFront, BlkOptions};
use pvkit_frontends::xen::console::SecondaryConsole;
use pvkit_frontends::xen::evtchn::fake::FakeEventChannels;
use pvkit_frontends::xen::netfront::NetFront;
use pvkit_frontends::xen::xenbus::{self, XenbusDevice};
use pvkit_frontends::xen::xenstore::XenStore;
use pvkit_frontends::xen::xenstore::fake::FakeXenStore;
use ring_protocol::abi::PAGE_SIZE;
use ring_protocol::abi::console::XenconsInterface;
use ring_protocol::abi::event_channel::EvtchnPort;
use ring_protocol::abi::xen::DomId;
use ring_protocol::byte_ring::console_backend;
use ring_protocol::platform::fake::FakeGrantTable;
use ring_protocol::platform::{Access, Notify};
use ring_protocol::ring::BackRing;

/// The guest's domain (the grant table's owner) and the backend's.
const GUEST: DomId = 1;
const BACKEND: DomId = 0;
/// Handshake and I/O timeout for the drivers.
const TIMEOUT_US: u64 = 20_000_000;

/// The shared grant table: the frontend grants through it, the engines copy through it.
fn grant_table() -> (&'static FakeGrantTable, Arc<dyn GrantCopy>) {
    let table = Arc::new(FakeGrantTable::with_owner(1024, GUEST));
    let copier: Arc<dyn GrantCopy> = table.clone();
    let leaked: &'static Arc<FakeGrantTable> = Box::leak(Box::new(table));
    (leaked, copier)
}

fn event_channels() -> &'static FakeEventChannels {
    Box::leak(Box::new(FakeEventChannels::new()))
}

/// The XenStore ring's notification: the fake daemon is stepped by the waiter instead.
struct XsPolled;

impl Notify for XsPolled {
    fn notify(&self) -> ring_protocol::Result<()> {
        Ok(())
    }
}

/// The backend's event channel to the frontend: an event raises the frontend's port, whose hook
/// runs as from the guest's upcall.
struct RaisePort {
    events: &'static FakeEventChannels,
    port: EvtchnPort,
}

impl Notify for RaisePort {
    fn notify(&self) -> ring_protocol::Result<()> {
        self.events.raise(self.port);
        Ok(())
    }
}

/// What the waiter lets run while the driver idles.
trait Peer {
    fn step(&mut self, xs: &mut FakeXenStore);
}

/// The guest's clock and idle loop. Idling steps the XenStore daemon and the backend.
struct World<P> {
    t0: Instant,
    daemon: RefCell<FakeXenStore>,
    peer: RefCell<P>,
}

impl<P: Peer> Waiter for World<P> {
    fn now_us(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }

    fn mode(&self) -> WaitMode {
        WaitMode::Poll
    }

    fn idle(&self, ready: &mut dyn FnMut() -> bool) -> bool {
        if ready() {
            return true;
        }
        let mut d = self.daemon.borrow_mut();
        d.step();
        self.peer.borrow_mut().step(&mut d);
        d.step();
        drop(d);
        ready()
    }
}

fn node(d: &FakeXenStore, path: &str) -> Option<String> {
    d.tree
        .get(path)
        .map(|v| String::from_utf8(v.clone()).expect("XenStore values here are text"))
}

fn number(d: &FakeXenStore, path: &str) -> Option<u32> {
    node(d, path).map(|v| v.parse().unwrap_or_else(|_| panic!("{path} = {v:?}")))
}

/// One backend device's part of the xenbus handshake: the backend's directory, the frontend's
/// state, the rings mapped from the backend's domain and handed to the engine.
struct Xenbus {
    fe: String,
    be: String,
    table: &'static FakeGrantTable,
    events: &'static FakeEventChannels,
    /// Grants mapped for the rings while connected.
    mapped: Vec<u32>,
    /// The frontend's event channel while connected.
    port: Option<EvtchnPort>,
    /// Notifications the frontend sent.
    kicks: u64,
}

impl Xenbus {
    /// The toolstack's part: both directories linked, the backend's keys, state `InitWait`.
    fn new(
        d: &mut FakeXenStore,
        (kind, devid): (&str, u32),
        keys: &[(&str, String)],
        table: &'static FakeGrantTable,
        events: &'static FakeEventChannels,
    ) -> Self {
        let fe = format!("/local/domain/{GUEST}/device/{kind}/{devid}");
        let be = format!("/local/domain/{BACKEND}/backend/{kind}/{GUEST}/{devid}");
        d.external_write(&format!("device/{kind}/{devid}/backend"), be.as_bytes());
        d.external_write(
            &format!("device/{kind}/{devid}/backend-id"),
            BACKEND.to_string().as_bytes(),
        );
        for (k, v) in keys {
            d.external_write(&format!("{be}/{k}"), v.as_bytes());
        }
        d.external_write(&format!("{be}/state"), b"2");
        Self {
            fe,
            be,
            table,
            events,
            mapped: Vec::new(),
            port: None,
            kicks: 0,
        }
    }

    fn fe_state(&self, d: &FakeXenStore) -> Option<u32> {
        number(d, &format!("{}/state", self.fe))
    }

    fn set_state(&self, d: &mut FakeXenStore, state: &[u8]) {
        d.external_write(&format!("{}/state", self.be), state);
    }

    /// Maps `refs` (contiguous pages of the frontend, as a multi-page ring is) for the backend.
    fn map(&mut self, refs: &[u32]) -> (NonNull<u8>, usize) {
        let pages: Vec<NonNull<u8>> = refs
            .iter()
            .map(|&r| {
                self.table
                    .peer_map(BACKEND, r, Access::ReadWrite)
                    .unwrap_or_else(|e| panic!("ring grant {r} refused: {e}"))
            })
            .collect();
        self.mapped.extend_from_slice(refs);
        for (i, p) in pages.iter().enumerate() {
            assert_eq!(
                p.as_ptr() as usize,
                pages[0].as_ptr() as usize + i * PAGE_SIZE,
                "ring pages are one contiguous block"
            );
        }
        (pages[0], refs.len() * PAGE_SIZE)
    }

    /// The frontend closes: the engine is gone, the rings are unmapped, state `Closed`.
    fn close(&mut self, d: &mut FakeXenStore) {
        for r in self.mapped.drain(..) {
            self.table
                .peer_unmap(BACKEND, r, Access::ReadWrite)
                .expect("unmap a mapped ring grant");
        }
        self.port = None;
        if node(d, &format!("{}/state", self.be)).as_deref() != Some("6") {
            self.set_state(d, b"6");
        }
    }

    fn notifier(&self) -> RaisePort {
        RaisePort {
            events: self.events,
            port: self.port.expect("connected"),
        }
    }

    fn take_kicks(&mut self) {
        if let Some(p) = self.port {
            self.kicks += self.events.take_notifies(p);
        }
    }
}

/// Builds a device's engine from the rings the frontend published (mapping them through the bus).
type Attach<E> = Box<dyn FnMut(&mut Xenbus, &FakeXenStore) -> E>;

/// A backend device: the xenbus handshake around an engine that `attach` builds from the rings the
/// frontend published, once the frontend reaches state `connect_on`.
struct Device<E> {
    bus: Xenbus,
    connect_on: u32,
    /// The frontend key naming its event channel.
    port_key: &'static str,
    attach: Attach<E>,
    engine: Option<E>,
}

impl<E: Engine> Peer for Device<E> {
    fn step(&mut self, d: &mut FakeXenStore) {
        match self.bus.fe_state(d) {
            Some(5 | 6) => {
                // The engine (and its rings) goes before the ring pages are unmapped.
                self.engine = None;
                self.bus.close(d);
                return;
            }
            Some(s) if s == self.connect_on && self.engine.is_none() => {
                let key = format!("{}/{}", self.bus.fe, self.port_key);
                let port = number(d, &key).unwrap_or_else(|| panic!("{key} published"));
                self.engine = Some((self.attach)(&mut self.bus, d));
                self.bus.port = Some(port);
                self.bus.set_state(d, b"4");
            }
            _ => {}
        }
        if let Some(engine) = self.engine.as_mut() {
            self.bus.take_kicks();
            engine
                .process(&self.bus.notifier())
                .expect("an honest frontend never halts its backend");
        }
    }
}

/// What a guest's one device looks like to the toolstack: its kind and id, the backend's keys,
/// keys the toolstack writes into the frontend's directory, the frontend state the backend connects
/// at, and the frontend key naming its event channel.
struct Spec<'a> {
    kind: &'static str,
    devid: u32,
    backend_keys: &'a [(&'a str, String)],
    frontend_keys: &'a [(&'a str, &'a str)],
    connect_on: u32,
    port_key: &'static str,
}

/// A guest with one device served by an engine of type `E`, and the frontend's XenStore client.
struct Guest<E> {
    world: World<Device<E>>,
    xs: XenStore<XsPolled>,
    table: &'static FakeGrantTable,
    events: &'static FakeEventChannels,
    kind: &'static str,
}

impl<E: Engine> Guest<E> {
    /// The toolstack's part for `spec`; `attach` makes the engine's builder from the grant copier.
    fn new(spec: &Spec<'_>, attach: impl FnOnce(Arc<dyn GrantCopy>) -> Attach<E>) -> Self {
        let (table, gnt) = grant_table();
        let events = event_channels();
        let (mut daemon, ring) = FakeXenStore::new(GUEST);
        let bus = Xenbus::new(
            &mut daemon,
            (spec.kind, spec.devid),
            spec.backend_keys,
            table,
            events,
        );
        for (k, v) in spec.frontend_keys {
            daemon.external_write(&format!("device/{}/{}/{k}", spec.kind, spec.devid), v.as_bytes());
        }
        let world = World {
            t0: Instant::now(),
            daemon: RefCell::new(daemon),
            peer: RefCell::new(Device {
                bus,
                connect_on: spec.connect_on,
                port_key: spec.port_key,
                attach: attach(gnt),
                engine: None,
            }),
        };
        Guest {
            world,
            xs: XenStore::new(ring, XsPolled),
            table,
            events,
            kind: spec.kind,
        }
    }

    /// The device, as the frontend finds it, and the platform to open it with.
    fn device(
        &mut self,
    ) -> (
        XenbusDevice,
        XenPlatform<&'static FakeGrantTable, &'static FakeEventChannels>,
    ) {
        let dev = xenbus::enumerate(&mut self.xs, &self.world, self.kind)
            .expect("enumerate")
            .remove(0);
        let platform = XenPlatform {
            grants: self.table,
            events: self.events,
            dma: pvkit_frontends::dma::fake::dma(),
        };
        (dev, platform)
    }
}

// ---- block --------------------------------------------------------------------------------------

/// blkback's engine on `core`, over the ring the frontend published (one page or `2^order`).
fn attach_vbd(
    core: Arc<BlockCore>,
    gnt: Arc<dyn GrantCopy>,
) -> impl FnMut(&mut Xenbus, &FakeXenStore) -> BlkEngine {
    move |bus, d| {
        let fe = bus.fe.clone();
        assert_eq!(node(d, &format!("{fe}/protocol")).as_deref(), Some("x86_64-abi"));
        let refs: Vec<u32> = match number(d, &format!("{fe}/ring-page-order")) {
            None | Some(0) => vec![number(d, &format!("{fe}/ring-ref")).expect("ring-ref")],
            Some(order) => (0..1u32 << order)
                .map(|i| number(d, &format!("{fe}/ring-ref{i}")).expect("ring-refN"))
                .collect(),
        };
        let (mem, len) = bus.map(&refs);
        // SAFETY: the ring pages stay mapped (granted, so allocated by the frontend) until `close`,
        // which runs only after the engine holding this ring was dropped; both ends touch the ring
        // with atomics.
        let ring = unsafe { BackRing::new(mem, len) }.expect("a ring fits the pages");
        BlkEngine::new(ring, GUEST, core.clone(), gnt.clone()).expect("AIO context")
    }
}

/// A guest with one vbd on a fresh image of `sectors` sectors.
struct VbdGuest {
    guest: Guest<BlkEngine>,
    core: Arc<BlockCore>,
    img: tempfile::NamedTempFile,
}

fn vbd(sectors: u64, opts: BlockOptions) -> VbdGuest {
    let img = tempfile::NamedTempFile::new().expect("temporary image");
    img.as_file().set_len(sectors * 512).expect("image size");
    let core = Arc::new(BlockCore::open(img.path(), opts).expect("open the image"));
    let keys = [
        ("sectors", core.capacity().to_string()),
        ("sector-size", "512".into()),
        ("physical-sector-size", "512".into()),
        ("info", "0".into()),
        ("mode", "w".into()),
        ("feature-flush-cache", "1".into()),
        ("feature-discard", "1".into()),
        ("max-ring-page-order", blkback::MAX_RING_PAGE_ORDER.to_string()),
        (
            "feature-max-indirect-segments",
            blkback::MAX_INDIRECT_SEGMENTS.to_string(),
        ),
    ];
    let spec = Spec {
        kind: "vbd",
        devid: 51712,
        backend_keys: &keys,
        frontend_keys: &[],
        connect_on: 3,
        port_key: "event-channel",
    };
    let guest = Guest::new(&spec, |gnt| Box::new(attach_vbd(core.clone(), gnt)));
    VbdGuest { guest, core, img }
}

impl VbdGuest {
    fn connect(&mut self) -> BlkFront<&'static FakeGrantTable, &'static FakeEventChannels> {
        let (dev, platform) = self.guest.device();
        let opts = BlkOptions {
            timeout_us: TIMEOUT_US,
            ..BlkOptions::default()
        };
        let g = &mut self.guest;
        BlkFront::connect(&mut g.xs, &g.world, platform, dev, opts).expect("connect to blkback")
    }
}

#[test]
fn blkfront_over_pvkit_blkback_writes_what_reads_back_and_lands_in_the_image() {
    let sectors = 8192; // 4 MiB
    let mut g = vbd(sectors, BlockOptions::default());
    let mut blk = g.connect();
    let (world, xs, img) = (&g.guest.world, &mut g.guest.xs, &g.img);
    let info = blk.info();
    assert_eq!(info.capacity_sectors, sectors, "the capacity blkback published");
    assert_eq!(info.sector_size, 512);
    assert!(blk.features().ring_slots > 32, "a multi-page ring was negotiated");

    // One write of each size the guest's workloads use, each read back, each on the host's image.
    let mut at = 0u64;
    for len in [512usize, 4096, 65536, 1 << 20] {
        let mut data = vec![0u8; len];
        for (i, s) in data.chunks_mut(512).enumerate() {
            fill_sector(0x5eed, at + i as u64, s);
        }
        block::write(&mut blk, world, at, &data).unwrap_or_else(|e| panic!("write {len} at {at}: {e}"));
        let back = block::read(&mut blk, world, at, len).unwrap_or_else(|e| panic!("read {len}: {e}"));
        assert!(
            back.as_slice() == &data[..],
            "{len} bytes at sector {at} read back"
        );
        let mut on_disk = vec![0u8; len];
        img.as_file()
            .read_exact_at(&mut on_disk, at * 512)
            .expect("read the image");
        assert!(
            on_disk == data,
            "{len} bytes at sector {at} are in the image file"
        );
        at += (len / 512) as u64 + 7;
    }
    block::flush(&mut blk, world).expect("flush");

    // The guest's integrity workload at queue depth 16: every sector's CRC checked.
    let report = integrity(
        &mut blk,
        world,
        &IntegrityParams {
            qd: 16,
            nonce: 7,
            ..IntegrityParams::default()
        },
    )
    .expect("integrity workload over blkback");
    assert!(report.ops > 100, "{} requests", report.ops);

    // The core saw every request the frontend made: nothing bypassed it.
    let s = g.core.stats();
    use std::sync::atomic::Ordering::Relaxed;
    assert!(s.writes.load(Relaxed) >= 4 && s.reads.load(Relaxed) >= 4);
    assert!(s.flushes.load(Relaxed) >= 2, "our flush and the workload's");
    assert_eq!(s.errors.load(Relaxed), 0);
    assert!(blk.counters().notifications > 0 && blk.counters().interrupts > 0);
    let kicks = world.peer.borrow().bus.kicks;
    assert_eq!(
        kicks,
        blk.counters().notifications,
        "every notification the frontend counted arrived"
    );

    // Closing: the backend unmaps, every grant ends, the event channel closes.
    blk.disconnect(xs, world, TIMEOUT_US).expect("disconnect");
    assert_eq!(g.guest.table.active(), 0, "every grant ended once blkback let go");
    assert_eq!(g.guest.events.closed(), 1, "the event channel was closed");
}

#[test]
fn blkfront_over_a_writethrough_blkback_gets_every_write_synced() {
    let mut g = vbd(
        2048,
        BlockOptions {
            writethrough: true,
            ..BlockOptions::default()
        },
    );
    let mut blk = g.connect();
    let world = &g.guest.world;
    for i in 0..10u64 {
        block::write(&mut blk, world, i * 8, &[i as u8; 4096]).expect("write");
    }
    let s = g.core.stats();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(s.writes.load(Relaxed), 10);
    assert!(
        s.syncs.load(Relaxed) >= 10,
        "writethrough: each of blkback's writes was synced before its response ({} syncs)",
        s.syncs.load(Relaxed)
    );
    blk.disconnect(&mut g.guest.xs, world, TIMEOUT_US)
        .expect("disconnect");
    assert_eq!(g.guest.table.active(), 0);
}

// ---- net ----------------------------------------------------------------------------------------

const GUEST_MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x00, 0x00, 0x01];
/// The address the echo workload sends to.
const PEER_MAC: [u8; 6] = ring_protocol::abi::pvkit_echo::PEER_MAC;
const GUEST_IP: [u8; 4] = [10, 0, 2, 15];
const PEER_IP: [u8; 4] = [10, 0, 2, 2];

/// netback's engine on `switch`, bound to the vif's MAC, over the two rings the frontend published.
fn attach_vif(
    switch: Arc<Switch>,
    gnt: Arc<dyn GrantCopy>,
) -> impl FnMut(&mut Xenbus, &FakeXenStore) -> NetEngine {
    move |bus, d| {
        let fe = bus.fe.clone();
        assert_eq!(number(d, &format!("{fe}/request-rx-copy")), Some(1));
        let tx_ref = number(d, &format!("{fe}/tx-ring-ref")).expect("tx-ring-ref");
        let rx_ref = number(d, &format!("{fe}/rx-ring-ref")).expect("rx-ring-ref");
        let (tx_mem, tx_len) = bus.map(&[tx_ref]);
        let (rx_mem, rx_len) = bus.map(&[rx_ref]);
        // SAFETY: as for the vbd: mapped until `close`, after the engine is dropped.
        let tx = unsafe { BackRing::new(tx_mem, tx_len) }.expect("tx ring");
        // SAFETY: as above.
        let rx = unsafe { BackRing::new(rx_mem, rx_len) }.expect("rx ring");
        NetEngine::new(tx, rx, GUEST, switch.clone(), GUEST_MAC, gnt.clone())
            .expect("a port bound to the vif's MAC")
    }
}

#[test]
fn netfront_over_pvkit_netback_echoes_frames_and_pings_the_echo_peer() {
    let switch = Switch::new();
    let peer = EchoPeer::attach(&switch, PEER_MAC, PEER_IP);
    let spec = Spec {
        kind: "vif",
        devid: 0,
        backend_keys: &[("feature-rx-copy", "1".into()), ("feature-rx-notify", "1".into())],
        frontend_keys: &[("mac", "00:16:3e:00:00:01")],
        connect_on: 4,
        port_key: "event-channel",
    };
    let mut g = Guest::new(&spec, |gnt| Box::new(attach_vif(switch.clone(), gnt)));
    let (dev, platform) = g.device();
    let (world, xs, table) = (&g.world, &mut g.xs, g.table);
    let mut net = NetFront::connect(xs, world, platform, dev, TIMEOUT_US).expect("connect to netback");
    assert!(net.link_up());
    assert_eq!(net.mtu(), 1500);

    // The guest's echo workload: small, MTU-sized and random frames, 8 in flight, each checked.
    let report = echo(&mut net, world, 200, 8, 0x5eed).unwrap_or_else(|e| {
        panic!(
            "echo workload over netback: {e}; echo peer {:?}, switch {:?}, drops {:?}",
            peer.stats(),
            switch.stats(),
            net.drops()
        )
    });
    assert_eq!(report.ops, 200);
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(
        peer.stats().echoed.load(Relaxed),
        200,
        "the echo peer answered every frame"
    );

    // ARP then ICMP through the same path.
    let p = ping(
        &mut net,
        world,
        &PingParams {
            ip: GUEST_IP,
            peer: PEER_IP,
            count: 5,
            size: 56,
            timeout_us: TIMEOUT_US,
        },
    )
    .expect("ping the echo peer");
    assert_eq!((p.peer_mac, p.replies), (PEER_MAC, 5));
    assert_eq!(peer.stats().icmp.load(Relaxed), 5);

    // Nothing was dropped or refused on either side.
    assert_eq!(net.drops(), Default::default(), "netfront dropped nothing");
    let port = world.peer.borrow().engine.as_ref().expect("connected").port();
    let counts = switch.port_counts(port).expect("the vif's port");
    assert_eq!(counts.spoofed, 0, "every frame came from the vif's own MAC");
    assert!(counts.frames_in >= 205, "frames from the guest: {counts:?}");

    net.disconnect(xs, world, TIMEOUT_US).expect("disconnect");
    assert_eq!(table.active(), 0, "every grant ended once netback let go");
    assert!(
        switch.port_counts(port).is_none(),
        "the vif's port left the switch with its engine"
    );
}

// ---- console ------------------------------------------------------------------------------------

/// The console engine in echo mode over the page the frontend published, its output into `log`.
fn attach_console(log: std::path::PathBuf) -> impl FnMut(&mut Xenbus, &FakeXenStore) -> Pump {
    move |bus, d| {
        let gref = number(d, &format!("{}/ring-ref", bus.fe)).expect("ring-ref");
        let (mem, _) = bus.map(&[gref]);
        // SAFETY: the page stays mapped until `close`, after the engine is dropped; it holds a
        // console interface (a page is larger), touched by both ends through the byte rings'
        // atomics.
        let ring = unsafe { console_backend(mem.cast::<XenconsInterface>()) }.expect("console page");
        let sink = ConsoleSink::file(&log).expect("console log");
        Pump::new(
            ring,
            Arc::new(Mutex::new(sink)),
            Vec::new(),
            true,
            Arc::new(RateLimit::default()),
        )
    }
}

#[test]
fn secondary_console_over_pvkit_console_backend_echoes_every_byte_and_logs_it() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let log = dir.path().join("console1.log");
    let spec = Spec {
        kind: "console",
        devid: 1,
        backend_keys: &[("type", "ioemu".into())],
        frontend_keys: &[],
        connect_on: 3,
        port_key: "port",
    };
    // The console page is mapped, not copied: no grant copier.
    let mut g = Guest::new(&spec, |_| Box::new(attach_console(log.clone())));
    let (dev, platform) = g.device();
    let (world, xs, table) = (&g.world, &mut g.xs, g.table);
    let mut con = SecondaryConsole::connect(xs, world, platform, dev, TIMEOUT_US).expect("connect");

    // The guest's console workload: 8 KiB (eight times the input ring) sent and every byte of its
    // echo checked.
    let (bytes, seed) = (8192, 0x5eed);
    let report = console_echo(&mut con, world, bytes, seed, &mut Recorder::default()).expect("echo");
    assert_eq!(
        (report.ops, report.bytes),
        (bytes as u64, 2 * bytes as u64),
        "every byte echoed (bytes count both ways)"
    );
    assert!(con.counters().notifications > 0 && con.counters().interrupts > 0);

    con.disconnect(xs, world, TIMEOUT_US).expect("disconnect");
    assert_eq!(
        table.active(),
        0,
        "the page's grant ended once the backend let go"
    );
    // What the guest wrote is in the backend's log, byte for byte.
    let mut rng = Rng::new(seed);
    let sent: Vec<u8> = (0..bytes).map(|_| rng.next_u64() as u8).collect();
    assert!(
        std::fs::read(&log).expect("the log") == sent,
        "the log holds the guest's output"
    );
}
