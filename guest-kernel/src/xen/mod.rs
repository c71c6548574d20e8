//! The Xen PV guest services above the hypercall layer: what `start_info` said ([`StartState`]),
//! memory (p2m/m2p and new mappings, [`memory`]), event channels ([`events`]), Xen system time and
//! the PV timer ([`time`]), the PV console ([`console`]) and the XenStore connection ([`store`]). The platform module
//! `platform::xen_pv` wires them up at boot.

pub mod console;
pub mod devices;
pub mod events;
pub mod memory;
pub mod store;
pub mod time;

use ring_protocol::abi::pv::{SIF_INITDOMAIN, StartInfo};

/// What the PV entry learned, kept for the rest of the run.
#[derive(Debug, Clone, Copy)]
pub struct StartState {
    /// A copy of `start_info` (the page itself may be reused).
    pub si: StartInfo,
    /// Virtual address of the original `start_info` page.
    pub start_info_va: u64,
    /// First pfn after every bootstrap element Xen placed (image, modules, p2m list, start_info,
    /// XenStore and console pages, page tables, boot stack).
    pub first_free_pfn: u64,
    /// First pfn of the frames reserved at the top of memory for new page tables.
    pub table_floor_pfn: u64,
}

static START: spin::Once<StartState> = spin::Once::new();

/// Records the start state. Called once by the PV entry.
pub fn set_start(state: StartState) -> &'static StartState {
    START.call_once(|| state)
}

/// The start state (only on Xen PV).
pub fn start() -> Option<&'static StartState> {
    START.get()
}

/// Whether this domain is dom0 (then the console is Xen's own, through `console_io`).
pub fn is_initial_domain() -> bool {
    start().is_some_and(|s| s.si.flags & SIF_INITDOMAIN != 0)
}
