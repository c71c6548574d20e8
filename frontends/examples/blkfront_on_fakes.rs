//! How another kernel plugs pvkit's Xen block frontend in: implement the platform traits, open
//! `BlkFront` over them, write a sector and read it back.
//!
//! A kernel implements three small traits and hands them to the driver:
//! - [`DmaAllocator`]: page-aligned, zeroed memory (here: the host heap, as a kernel's page
//!   allocator would hand it out);
//! - [`EventChannels`]: `EVTCHNOP_alloc_unbound`/`send`/`close` and routing a port to the driver's
//!   interrupt hook (here: in memory, the backend below plays the other end);
//! - [`Waiter`]: a clock and an idle loop (here: a counter, and idling runs the other side).
//!
//! Grants come from a [`ShareMemory`]. In a kernel that is
//! `pvkit_frontends::xen::grant::GrantTable::new(entries, len, frame_of)` over the frames
//! `GNTTABOP_setup_table` returned, with `frame_of` your pfn -> mfn lookup; here it is
//! `ring_protocol`'s fake grant table, which also plays Xen for the backend. XenStore is
//! `XenStore::new(ring, notify)` over the XenStore ring page; here the page is served by the crate's
//! fake XenStore daemon, and a tiny blkback (below) answers over the fake grant table.
//!
//! Run it with `cargo run -p pvkit-frontends --example blkfront_on_fakes`; `cargo test --examples`
//! runs it too.

use std::alloc::Layout;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ptr::NonNull;

use pvkit_frontends::block::{self, BlockDevice};
use pvkit_frontends::dma::{DmaAllocator, DmaRegion, PAGE_SIZE};
use pvkit_frontends::wait::{SharedIrqAck, WaitMode, Waiter};
use pvkit_frontends::xen::XenPlatform;
use pvkit_frontends::xen::blkfront::{BlkFront, BlkOptions};
use pvkit_frontends::xen::evtchn::EventChannels;
use pvkit_frontends::xen::xenbus;
use pvkit_frontends::xen::xenstore::XenStore;
use pvkit_frontends::xen::xenstore::fake::FakeXenStore;
use ring_protocol::abi::blkif::{BLKIF_OP_READ, BLKIF_OP_WRITE, BlkifRequest, BlkifResponse};
use ring_protocol::abi::event_channel::EvtchnPort;
use ring_protocol::abi::xen::DomId;
use ring_protocol::platform::fake::FakeGrantTable;
use ring_protocol::platform::{Access, Notify};
use ring_protocol::ring::BackRing;

// ---- 1. The traits a kernel implements ----------------------------------------------------------

/// DMA memory: page-aligned, zeroed blocks of the heap. A kernel whose bus addresses differ from
/// its virtual ones (an IOMMU, a PV guest) returns the device's address in `bus`.
#[derive(Debug)]
struct HeapDma;

fn layout(pages: usize) -> Layout {
    Layout::from_size_align(pages.max(1) * PAGE_SIZE, PAGE_SIZE).expect("page layout")
}

// SAFETY: alloc_zeroed with a page-aligned layout gives zeroed, aligned memory no one else owns; a
// heap block is contiguous; the "device" (the backend below) reaches it at its virtual address.
unsafe impl DmaAllocator for HeapDma {
    fn alloc_pages(&self, pages: usize) -> Option<DmaRegion> {
        // SAFETY: the layout has a non-zero size.
        let virt = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout(pages)) })?;
        Some(DmaRegion {
            bus: virt.as_ptr() as u64,
            virt,
            pages,
        })
    }

    unsafe fn free_pages(&self, region: DmaRegion) {
        // SAFETY: the region came from alloc_pages with this layout (the caller's contract).
        unsafe { std::alloc::dealloc(region.virt.as_ptr(), layout(region.pages)) }
    }

    fn bus_address(&self, virt: *const u8) -> Option<u64> {
        Some(virt as u64)
    }
}

static DMA: HeapDma = HeapDma;

/// Event channels. A kernel makes hypercalls here and calls the bound hook from its upcall; this
/// one remembers the hook and counts notifications for the backend.
#[derive(Default)]
struct Events {
    next: Cell<EvtchnPort>,
    /// Notifications sent to the backend.
    notified: Cell<u64>,
    hook: RefCell<Option<SharedIrqAck>>,
}

impl EventChannels for Events {
    fn alloc_unbound(&self, _remote: DomId) -> pvkit_frontends::Result<EvtchnPort> {
        self.next.set(self.next.get() + 1);
        Ok(self.next.get())
    }

    fn notify(&self, _port: EvtchnPort) -> pvkit_frontends::Result<()> {
        self.notified.set(self.notified.get() + 1);
        Ok(())
    }

    fn bind(&self, _port: EvtchnPort, ack: SharedIrqAck) -> pvkit_frontends::Result<()> {
        *self.hook.borrow_mut() = Some(ack);
        Ok(())
    }

    fn close(&self, _port: EvtchnPort) {
        self.hook.borrow_mut().take();
    }
}

/// The XenStore ring's notification (an event channel send in a kernel; the fake daemon is polled).
struct XsNotify;

impl Notify for XsNotify {
    fn notify(&self) -> ring_protocol::Result<()> {
        Ok(())
    }
}

/// Clock and idle. A kernel reads its timer and halts until an interrupt; here idling lets the
/// other side (XenStore daemon and backend) run.
struct World<'a> {
    now_us: Cell<u64>,
    daemon: RefCell<FakeXenStore>,
    backend: RefCell<Backend<'a>>,
}

impl Waiter for World<'_> {
    fn now_us(&self) -> u64 {
        self.now_us.set(self.now_us.get() + 10);
        self.now_us.get()
    }

    fn mode(&self) -> WaitMode {
        WaitMode::Poll
    }

    fn idle(&self, ready: &mut dyn FnMut() -> bool) -> bool {
        if ready() {
            return true;
        }
        self.daemon.borrow_mut().step();
        self.backend.borrow_mut().run(&mut self.daemon.borrow_mut());
        self.daemon.borrow_mut().step();
        ready()
    }
}

// ---- 2. The other end: a tiny blkback over the fake grant table --------------------------------

const BACKEND_DOM: DomId = 0;
const FE: &str = "/local/domain/1/device/vbd/51712";
const BE: &str = "/local/domain/0/backend/vbd/1/51712";

struct Backend<'a> {
    grants: &'a FakeGrantTable,
    events: &'a Events,
    ring: Option<BackRing<BlkifRequest, BlkifResponse>>,
    ring_ref: u32,
    /// Sector -> contents.
    disk: BTreeMap<u64, [u8; 512]>,
}

impl Backend<'_> {
    fn node(d: &FakeXenStore, path: &str) -> Option<u32> {
        d.tree
            .get(path)
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
    }

    fn run(&mut self, d: &mut FakeXenStore) {
        let fe_state = Self::node(d, &format!("{FE}/state"));
        if matches!(fe_state, Some(5 | 6)) {
            // The frontend closes: let go of the ring, then say Closed.
            if self.ring.take().is_some() {
                self.grants
                    .peer_unmap(BACKEND_DOM, self.ring_ref, Access::ReadWrite)
                    .expect("mapped");
                d.external_write(&format!("{BE}/state"), b"6");
            }
            return;
        }
        if self.ring.is_none() {
            // The frontend said Initialised: map its ring (Xen checks the grant) and connect.
            if fe_state == Some(3) {
                let gref = Self::node(d, &format!("{FE}/ring-ref")).expect("ring-ref published");
                let page = self
                    .grants
                    .peer_map(BACKEND_DOM, gref, Access::ReadWrite)
                    .expect("the ring is granted to us");
                // SAFETY: the mapped ring page stays granted (so allocated) while this example runs;
                // both ends access it atomically.
                self.ring = Some(unsafe { BackRing::attach(page, PAGE_SIZE, 0) }.expect("ring"));
                self.ring_ref = gref;
                d.external_write(&format!("{BE}/state"), b"4");
            }
            return;
        }
        let ring = self.ring.as_mut().expect("mapped");
        let mut answered = false;
        // Serve what is there; re-arm `req_event` and look again, so the frontend notifies us for
        // its next request (ring.h's RING_FINAL_CHECK_FOR_REQUESTS).
        while let Some(req) = match ring.read_request().expect("an honest frontend") {
            Some(r) => Some(r),
            None if ring.final_check_for_requests().expect("ring") => ring.read_request().expect("ring"),
            None => None,
        } {
            let seg = req.seg[0];
            let mut sector = [0u8; 512];
            if req.operation == BLKIF_OP_WRITE {
                self.grants
                    .peer_read(BACKEND_DOM, seg.gref, 0, &mut sector)
                    .expect("data grant");
                self.disk.insert(req.sector_number, sector);
            } else if req.operation == BLKIF_OP_READ {
                sector = self.disk.get(&req.sector_number).copied().unwrap_or([0; 512]);
                self.grants
                    .peer_write(BACKEND_DOM, seg.gref, 0, &sector)
                    .expect("data grant, writable for a read");
            }
            let rsp = BlkifResponse {
                id: req.id,
                operation: req.operation,
                status: 0,
                ..BlkifResponse::default()
            };
            ring.write_response(&rsp).expect("room for the response");
            answered = true;
        }
        if answered && ring.push_responses_and_check_notify().expect("ring") {
            // Our event to the frontend: its interrupt hook runs, as from the kernel's upcall.
            if let Some(hook) = self.events.hook.borrow().as_ref() {
                hook.ack();
            }
        }
    }
}

// ---- 3. Opening the driver and using it --------------------------------------------------------

fn main() -> Result<(), pvkit_frontends::Error> {
    let grants = FakeGrantTable::new(64);
    let events = Events::default();
    // What the toolstack and the backend publish before the guest looks.
    let (mut daemon, ring) = FakeXenStore::new(1);
    daemon.external_write("device/vbd/51712/backend", BE.as_bytes());
    daemon.external_write("device/vbd/51712/backend-id", b"0");
    for (k, v) in [
        ("state", "2"),
        ("sectors", "2048"),
        ("sector-size", "512"),
        ("info", "0"),
    ] {
        daemon.external_write(&format!("{BE}/{k}"), v.as_bytes());
    }
    let world = World {
        now_us: Cell::new(0),
        daemon: RefCell::new(daemon),
        backend: RefCell::new(Backend {
            grants: &grants,
            events: &events,
            ring: None,
            ring_ref: 0,
            disk: BTreeMap::new(),
        }),
    };

    let mut xs = XenStore::new(ring, XsNotify);
    let dev = xenbus::enumerate(&mut xs, &world, "vbd")?.remove(0);
    let platform = XenPlatform {
        grants: &grants,
        events: &events,
        dma: &DMA,
    };
    let mut blk = BlkFront::connect(&mut xs, &world, platform, dev, BlkOptions::default())?;
    let info = blk.info();
    println!(
        "connected: {} sectors of {} bytes, ring of {} slots",
        info.capacity_sectors,
        info.sector_size,
        blk.features().ring_slots
    );

    let data: Vec<u8> = (0..512u32).map(|i| (i * 7 % 251) as u8).collect();
    block::write(&mut blk, &world, 42, &data)?;
    let back = block::read(&mut blk, &world, 42, 512)?;
    assert_eq!(
        back.as_slice(),
        &data[..],
        "sector 42 reads back what was written"
    );
    assert_eq!(
        world.backend.borrow().disk[&42][..],
        data[..],
        "and it is on the backend's disk"
    );
    println!(
        "sector 42 written and read back ({} bytes); {} notifications to the backend",
        back.len(),
        events.notified.get()
    );
    assert_eq!(
        events.notified.get(),
        2,
        "one notification per request: the backend re-arms"
    );

    let seen = blk.disconnect(&mut xs, &world, 1_000_000)?;
    assert_eq!(grants.active(), 0, "every grant ended");
    assert!(events.hook.borrow().is_none(), "the event channel was closed");
    println!("disconnected (backend state {}); no grant left", seen as u8);
    Ok(())
}

/// `cargo test --examples` runs the example as a test.
#[test]
fn example_runs() {
    main().expect("blkfront over the fakes");
}
