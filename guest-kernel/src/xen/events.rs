//! Event channels (2-level ABI): binding, sending, masking, and the upcall that dispatches pending
//! ports to per-port handlers.
//!
//! The upcall follows xen.h's protocol: clear `evtchn_upcall_pending` first, then atomically take
//! the selector word (`evtchn_pending_sel`), and for each selected word take the pending bits that
//! are not masked, clearing each port's pending bit before calling its handler; repeat while Xen
//! set `evtchn_upcall_pending` again. Upcalls are masked by Xen for the whole handler (the entry path
//! in `arch::x86_64::xen::traps` restores the mask through the `iret` hypercall).

use core::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

use pvkit_frontends::xen::evtchn::{PendingWords, scan};
use ring_protocol::abi::event_channel::{
    EVTCHNOP_ALLOC_UNBOUND, EVTCHNOP_BIND_INTERDOMAIN, EVTCHNOP_BIND_VIRQ, EVTCHNOP_CLOSE, EVTCHNOP_SEND,
    EVTCHNOP_UNMASK, EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindVirq, EvtchnClose, EvtchnPort,
    EvtchnSend, EvtchnUnmask,
};
use ring_protocol::abi::xen::DomId;

use core::mem::offset_of;

use ring_protocol::abi::event_channel::EVTCHN_2L_NR_CHANNELS as NR_EVENT_CHANNELS;
use ring_protocol::abi::pv::{SharedInfo, VcpuInfo};

/// Offsets in the shared-info page (vCPU 0's `vcpu_info` is at its start).
const EVTCHN_PENDING: usize = offset_of!(SharedInfo, evtchn_pending);
const EVTCHN_MASK: usize = offset_of!(SharedInfo, evtchn_mask);
const PENDING_SEL: usize = offset_of!(VcpuInfo, evtchn_pending_sel);
const UPCALL_PENDING: usize = offset_of!(VcpuInfo, evtchn_upcall_pending);
use crate::arch::x86_64::xen::{self as hv, HypercallError};

/// A port handler, called from the upcall with upcalls masked.
pub type Handler = fn(EvtchnPort);

/// Handler per port (a `Handler` as usize, 0 = none).
static HANDLERS: [AtomicUsize; NR_EVENT_CHANNELS] = [const { AtomicUsize::new(0) }; NR_EVENT_CHANNELS];
/// Upcalls taken, and events dispatched / found without a handler.
static UPCALLS: AtomicU64 = AtomicU64::new(0);
static DISPATCHED: AtomicU64 = AtomicU64::new(0);
static UNHANDLED: AtomicU64 = AtomicU64::new(0);

/// The shared-info page, mapped by `platform::xen_pv` (0 before).
static SHARED: AtomicUsize = AtomicUsize::new(0);

/// Counters: (upcalls, events dispatched, events without handler).
pub fn counts() -> (u64, u64, u64) {
    // Relaxed: statistics.
    (
        UPCALLS.load(Ordering::Relaxed),
        DISPATCHED.load(Ordering::Relaxed),
        UNHANDLED.load(Ordering::Relaxed),
    )
}

/// Records the shared-info mapping and masks every port (handlers unmask what they bind).
///
/// # Safety
/// `va` must be the shared-info page, mapped for the rest of the run.
pub unsafe fn init(va: u64) {
    // Release: pairs with the Acquire in `word`.
    SHARED.store(va as usize, Ordering::Release);
    for w in 0..64 {
        word(EVTCHN_MASK, w).store(u64::MAX, Ordering::SeqCst);
    }
}

fn word(base: usize, index: usize) -> &'static AtomicU64 {
    // Acquire: pairs with the Release in `init`.
    let page = SHARED.load(Ordering::Acquire);
    assert!(page != 0 && index < 64, "event channel bitmap used before init");
    // SAFETY: the shared-info page is mapped for the run (init contract); the bitmaps are 64 aligned
    // u64 words at `base`, shared with Xen, which updates them with locked operations.
    unsafe { AtomicU64::from_ptr((page + base + index * 8) as *mut u64) }
}

fn vcpu_byte(offset: usize) -> &'static AtomicU8 {
    let page = SHARED.load(Ordering::Acquire);
    // SAFETY: as in `word`; vcpu_info 0 sits at the start of the page.
    unsafe { AtomicU8::from_ptr((page + offset) as *mut u8) }
}

/// Installs `handler` for `port` and unmasks the port.
pub fn set_handler(port: EvtchnPort, handler: Handler) -> Result<(), HypercallError> {
    let slot = HANDLERS
        .get(port as usize)
        .expect("event channel port out of range");
    // Release: the handler's setup (done before) is visible to the upcall that loads it.
    slot.store(handler as usize, Ordering::Release);
    unmask(port)
}

/// Removes the handler of `port` and masks it.
pub fn clear_handler(port: EvtchnPort) {
    mask(port);
    if let Some(slot) = HANDLERS.get(port as usize) {
        slot.store(0, Ordering::Release);
    }
}

/// Masks `port`.
pub fn mask(port: EvtchnPort) {
    let p = port as usize;
    // SeqCst: a locked OR, as Xen's own bit operations on the bitmap.
    word(EVTCHN_MASK, p / 64).fetch_or(1 << (p % 64), Ordering::SeqCst);
}

/// Unmasks `port`; Xen re-raises an event that arrived while it was masked.
pub fn unmask(port: EvtchnPort) -> Result<(), HypercallError> {
    let mut arg = EvtchnUnmask { port };
    // SAFETY: EVTCHNOP_unmask reads one evtchn_unmask.
    unsafe { hv::event_channel_op(EVTCHNOP_UNMASK, &mut arg) }.map(|_| ())
}

/// Whether `port` has an undelivered event (masked ports included).
pub fn is_pending(port: EvtchnPort) -> bool {
    let p = port as usize;
    word(EVTCHN_PENDING, p / 64).load(Ordering::SeqCst) & (1 << (p % 64)) != 0
}

/// Clears `port`'s pending bit; returns whether it was set. (For polled ports.)
pub fn take_pending(port: EvtchnPort) -> bool {
    let p = port as usize;
    let bit = 1u64 << (p % 64);
    word(EVTCHN_PENDING, p / 64).fetch_and(!bit, Ordering::SeqCst) & bit != 0
}

/// Signals the remote end of `port`.
pub fn send(port: EvtchnPort) -> Result<(), HypercallError> {
    let mut arg = EvtchnSend { port };
    // SAFETY: EVTCHNOP_send reads one evtchn_send.
    unsafe { hv::event_channel_op(EVTCHNOP_SEND, &mut arg) }.map(|_| ())
}

/// Binds virtual IRQ `virq` of vCPU 0 to a new port.
pub fn bind_virq(virq: u32) -> Result<EvtchnPort, HypercallError> {
    let mut arg = EvtchnBindVirq {
        virq,
        vcpu: 0,
        port: 0,
    };
    // SAFETY: EVTCHNOP_bind_virq reads and writes one evtchn_bind_virq.
    unsafe { hv::event_channel_op(EVTCHNOP_BIND_VIRQ, &mut arg) }?;
    Ok(arg.port)
}

/// Allocates a port `remote` may bind to.
pub fn alloc_unbound(remote: DomId) -> Result<EvtchnPort, HypercallError> {
    let mut arg = EvtchnAllocUnbound {
        dom: hv::DOMID_SELF,
        remote_dom: remote,
        port: 0,
    };
    // SAFETY: EVTCHNOP_alloc_unbound reads and writes one evtchn_alloc_unbound.
    unsafe { hv::event_channel_op(EVTCHNOP_ALLOC_UNBOUND, &mut arg) }?;
    Ok(arg.port)
}

/// Binds to port `remote_port` that domain `remote` allocated for us.
pub fn bind_interdomain(remote: DomId, remote_port: EvtchnPort) -> Result<EvtchnPort, HypercallError> {
    let mut arg = EvtchnBindInterdomain {
        remote_dom: remote,
        _pad: [0; 2],
        remote_port,
        local_port: 0,
    };
    // SAFETY: EVTCHNOP_bind_interdomain reads and writes one evtchn_bind_interdomain.
    unsafe { hv::event_channel_op(EVTCHNOP_BIND_INTERDOMAIN, &mut arg) }?;
    Ok(arg.local_port)
}

/// Closes `port`.
pub fn close(port: EvtchnPort) -> Result<(), HypercallError> {
    clear_handler(port);
    let mut arg = EvtchnClose { port };
    // SAFETY: EVTCHNOP_close reads one evtchn_close.
    unsafe { hv::event_channel_op(EVTCHNOP_CLOSE, &mut arg) }.map(|_| ())
}

/// The upcall: called by the entry stub with upcalls masked. The scan itself is
/// `pvkit_frontends::xen::evtchn::scan` (host-tested), run over the shared-info page.
pub extern "C" fn handle_upcall() {
    // Relaxed: statistic.
    UPCALLS.fetch_add(1, Ordering::Relaxed);
    let page = SHARED.load(Ordering::Acquire);
    if page == 0 {
        return;
    }
    let words = |base: usize| -> &'static [AtomicU64; 64] {
        // SAFETY: the shared-info page is mapped for the run (init contract); at `base` it holds 64
        // 8-aligned u64 words, shared with Xen, which updates them with locked operations; AtomicU64
        // has the layout of u64.
        unsafe { &*((page + base) as *const [AtomicU64; 64]) }
    };
    let sel = (page + PENDING_SEL) as *mut u64;
    // SAFETY: vcpu_info 0's selector word (8-aligned) in the mapped page, updated by Xen atomically.
    let pending_sel = unsafe { AtomicU64::from_ptr(sel) };
    let w = PendingWords {
        upcall_pending: vcpu_byte(UPCALL_PENDING),
        pending_sel,
        pending: words(EVTCHN_PENDING),
        mask: words(EVTCHN_MASK),
    };
    scan(w, dispatch);
}

fn dispatch(port: EvtchnPort) {
    // Acquire: pairs with the Release in `set_handler`.
    let h = HANDLERS[port as usize].load(Ordering::Acquire);
    if h == 0 {
        UNHANDLED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    DISPATCHED.fetch_add(1, Ordering::Relaxed);
    // SAFETY: only `set_handler` stores non-zero values, and it stores a `Handler`.
    let f: Handler = unsafe { core::mem::transmute::<usize, Handler>(h) };
    f(port);
}
