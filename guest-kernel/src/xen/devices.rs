//! Glue between the Xen frontends of `pvkit_frontends::xen` and this kernel, which only implements
//! their traits: the grant table (`GNTTABOP_setup_table`, its frames mapped into a static window,
//! pages named by their machine frame), [`KernelEvents`] as the
//! [`EventChannels`] (hypercalls, per-port interrupt hooks), and the openers that hand the drivers
//! their [`XenPlatform`].

use alloc::vec::Vec;
use core::ptr::NonNull;

use pvkit_frontends::wait::SharedIrqAck;
use pvkit_frontends::xen::XenPlatform;
use pvkit_frontends::xen::blkfront::{BlkFront, BlkOptions};
use pvkit_frontends::xen::evtchn::EventChannels;
use pvkit_frontends::xen::grant::GrantTable;
use pvkit_frontends::xen::netfront::NetFront;
use pvkit_frontends::xen::xenbus;
use pvkit_frontends::{Error, Result};
use ring_protocol::abi::PAGE_SIZE;
use ring_protocol::abi::event_channel::EvtchnPort;
use ring_protocol::abi::grant_table::{GNTST_OKAY, GNTTABOP_SETUP_TABLE, GnttabSetupTable, GrantEntryV1};
use ring_protocol::abi::xen::{DomId, XenPfn};

use super::store::XenWaiter;
use crate::arch::x86_64::xen as hv;

/// Grant-table frames set up (512 entries each).
pub const GRANT_FRAMES: usize = 4;

/// Virtual window the grant-table frames are mapped over.
static GRANT_WINDOW: super::memory::PageWindow<GRANT_FRAMES> = super::memory::PageWindow::new();

static GRANTS: spin::Once<core::result::Result<GrantTable, alloc::string::String>> = spin::Once::new();

fn setup_grants() -> core::result::Result<GrantTable, alloc::string::String> {
    let mut frames = [0u64; GRANT_FRAMES];
    let mut arg = GnttabSetupTable {
        dom: hv::DOMID_SELF,
        nr_frames: GRANT_FRAMES as u32,
        frame_list: frames.as_mut_ptr() as u64,
        ..GnttabSetupTable::default()
    };
    // SAFETY: one gnttab_setup_table whose frame list has room for nr_frames entries.
    unsafe { hv::grant_table_op(GNTTABOP_SETUP_TABLE, &raw mut arg, 1) }
        .map_err(|e| alloc::format!("{e}"))?;
    if arg.status != GNTST_OKAY {
        return Err(alloc::format!("GNTTABOP_setup_table status {}", arg.status));
    }
    let base = GRANT_WINDOW.va();
    for (i, &mfn) in frames.iter().enumerate() {
        // SAFETY: the window is ours and unused; from here on its pages are the grant table.
        unsafe { super::memory::map_machine_page(base + (i * PAGE_SIZE) as u64, mfn) }
            .map_err(|e| alloc::format!("mapping grant frame {i} (mfn {mfn:#x}): {e}"))?;
    }
    let entries = NonNull::new(base as *mut GrantEntryV1).expect("static window");
    // SAFETY: the window now maps GRANT_FRAMES grant-table frames shared with Xen, for the rest of
    // the run; this is the only table built over them (Once). `frame_of` gives the machine frame of
    // a page (the p2m entry of its pfn), which is what a peer maps in a PV domain.
    Ok(unsafe {
        GrantTable::new(
            entries,
            GRANT_FRAMES * PAGE_SIZE / core::mem::size_of::<GrantEntryV1>(),
            frame_of,
        )
    })
}

/// The machine frame of the page holding `virt` (virtual = pseudo-physical in this kernel).
fn frame_of(virt: *const u8) -> XenPfn {
    super::memory::pfn_to_mfn(virt as u64 >> 12)
}

/// The grant table (set up on first use).
pub fn grants() -> core::result::Result<&'static GrantTable, alloc::string::String> {
    GRANTS.call_once(setup_grants).as_ref().map_err(Clone::clone)
}

/// The grant table's figures as `key=value` fields for a report: grants still active, grants
/// abandoned to a backend that kept them, and pages leaked because of that (0 with honest
/// backends).
pub fn grant_report() -> alloc::string::String {
    let s = GRANTS
        .get()
        .and_then(|g| g.as_ref().ok())
        .map(|g| g.stats())
        .unwrap_or_default();
    alloc::format!(
        "grants_active={} grants_abandoned={} grant_leaked_pages={}",
        s.active,
        s.abandoned,
        s.leaked_pages
    )
}

/// Interrupt hooks per event-channel port.
static ACKS: spin::Mutex<Vec<(EvtchnPort, SharedIrqAck)>> = spin::Mutex::new(Vec::new());

fn on_device_event(port: EvtchnPort) {
    // The lock is only taken with upcalls masked (here: in the upcall; in `bind`: below).
    let acks = ACKS.lock();
    for (p, ack) in acks.iter() {
        if *p == port {
            ack.ack();
        }
    }
}

/// The kernel's event channels, as the Xen frontends take them.
#[derive(Debug, Clone, Copy)]
pub struct KernelEvents;

fn hc(e: hv::HypercallError) -> Error {
    Error::Hypercall { op: e.op, rc: e.rc }
}

impl EventChannels for KernelEvents {
    fn alloc_unbound(&self, remote: DomId) -> Result<EvtchnPort> {
        super::events::alloc_unbound(remote).map_err(hc)
    }

    fn notify(&self, port: EvtchnPort) -> Result<()> {
        super::events::send(port).map_err(hc)
    }

    fn close(&self, port: EvtchnPort) {
        crate::arch::without_interrupts(|| ACKS.lock().retain(|(p, _)| *p != port));
        let _ = super::events::close(port);
    }

    fn bind(&self, port: EvtchnPort, ack: SharedIrqAck) -> Result<()> {
        crate::arch::without_interrupts(|| ACKS.lock().push((port, ack)));
        super::events::set_handler(port, on_device_event).map_err(hc)
    }
}

/// The platform the kernel's Xen frontends run on.
pub type Platform = XenPlatform<&'static GrantTable, KernelEvents>;
/// The kernel's block frontend.
pub type Blk = BlkFront<&'static GrantTable, KernelEvents>;
/// The kernel's network frontend.
pub type Net = NetFront<&'static GrantTable, KernelEvents>;

/// The grant table (set up on first use), the event channels and the DMA memory, for a frontend.
pub fn platform() -> core::result::Result<Platform, alloc::string::String> {
    Ok(XenPlatform {
        grants: grants()?,
        events: KernelEvents,
        dma: crate::devices::dma(),
    })
}

/// Opens the `index`-th vbd of this domain.
pub fn open_blk(index: usize, opts: BlkOptions) -> core::result::Result<Blk, alloc::string::String> {
    let platform = platform()?;
    let w = XenWaiter {
        mode: pvkit_frontends::wait::WaitMode::Interrupt,
    };
    super::store::with(|xs| {
        let devs = xenbus::enumerate(xs, &w, "vbd").map_err(|e| alloc::format!("{e}"))?;
        let Some(dev) = devs.into_iter().nth(index) else {
            return Err(alloc::format!(
                "device xen-blk absent (no vbd {index} in XenStore device/vbd)"
            ));
        };
        BlkFront::connect(xs, &w, platform, dev, opts)
            .map_err(|e| alloc::format!("{e} (after the failed connect: {})", grant_report()))
    })?
}

/// Opens the `index`-th vif of this domain.
pub fn open_net(index: usize, timeout_us: u64) -> core::result::Result<Net, alloc::string::String> {
    let platform = platform()?;
    let w = XenWaiter {
        mode: pvkit_frontends::wait::WaitMode::Interrupt,
    };
    super::store::with(|xs| {
        let devs = xenbus::enumerate(xs, &w, "vif").map_err(|e| alloc::format!("{e}"))?;
        let Some(dev) = devs.into_iter().nth(index) else {
            return Err(alloc::format!(
                "device xen-net absent (no vif {index} in XenStore device/vif)"
            ));
        };
        NetFront::connect(xs, &w, platform, dev, timeout_us)
            .map_err(|e| alloc::format!("{e} (after the failed connect: {})", grant_report()))
    })?
}
