//! Xen system time and the PV timer.
//!
//! Time: vCPU 0's `vcpu_time_info` in the shared-info page gives `system_time` (ns since Xen boot)
//! at `tsc_timestamp`; now = system_time + ((tsc - tsc_timestamp) << shift) * mul >> 32 (a negative
//! shift shifts right). Xen brackets each update with increments of `version` (odd while it
//! writes), so a reader copies the record and retries until it saw the same even version before and
//! after.
//!
//! Timer: `VIRQ_TIMER` bound to a port; `set_timer_op(deadline)` arms a one-shot at a system time.
//! [`start_periodic`] re-arms from the handler at fixed steps of the period.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};

use ring_protocol::abi::event_channel::EvtchnPort;

use crate::arch::x86_64::xen::{self as hv, HypercallError};
use ring_protocol::abi::pv::{VcpuInfo, VcpuTimeInfo};
use ring_protocol::abi::xen::VIRQ_TIMER;

/// Shared-info page (0 until [`init`]).
static SHARED: AtomicUsize = AtomicUsize::new(0);
/// The timer's port + 1 (0 = not bound).
static PORT: AtomicU32 = AtomicU32::new(0);
/// Ticks taken since the last [`start_periodic`].
static TICKS: AtomicU64 = AtomicU64::new(0);
/// Period in ns (0 = stopped) and the next deadline.
static PERIOD_NS: AtomicU64 = AtomicU64::new(0);
static NEXT_NS: AtomicU64 = AtomicU64::new(0);

/// Records the shared-info mapping.
///
/// # Safety
/// `va` must be the shared-info page, mapped for the rest of the run.
pub unsafe fn init(va: u64) {
    // Release: pairs with the Acquire in `snapshot`.
    SHARED.store(va as usize, Ordering::Release);
}

/// A consistent copy of vCPU 0's time record.
pub fn snapshot() -> Option<VcpuTimeInfo> {
    let page = SHARED.load(Ordering::Acquire);
    if page == 0 {
        return None;
    }
    let p = (page + core::mem::offset_of!(VcpuInfo, time)) as *const VcpuTimeInfo;
    loop {
        // SAFETY: the record is in the mapped shared page (init contract); `version` is 4-aligned and
        // Xen writes it; only atomic reads of it are made here.
        let version = unsafe { AtomicU32::from_ptr(p.cast::<u32>().cast_mut()) };
        let v1 = version.load(Ordering::Acquire);
        // SAFETY: as above; a torn copy is detected by the version check below.
        let copy = unsafe { core::ptr::read_volatile(p) };
        // Acquire fence: the copy is complete before the version is read again (Xen increments
        // version after writing the fields).
        fence(Ordering::Acquire);
        let v2 = version.load(Ordering::Relaxed);
        if v1 == v2 && v1 & 1 == 0 {
            return Some(copy);
        }
        core::hint::spin_loop();
    }
}

fn scale(delta: u64, t: &VcpuTimeInfo) -> u64 {
    let shifted = if t.tsc_shift >= 0 {
        delta << t.tsc_shift
    } else {
        delta >> -t.tsc_shift
    };
    ((u128::from(shifted) * u128::from(t.tsc_to_system_mul)) >> 32) as u64
}

/// Xen system time in ns (0 before [`init`]).
pub fn now_ns() -> u64 {
    let Some(t) = snapshot() else { return 0 };
    let tsc = crate::arch::read_tsc();
    t.system_time + scale(tsc.wrapping_sub(t.tsc_timestamp), &t)
}

/// The TSC rate Xen's scale factors imply: (10^9 << 32) / mul, shifted back by `tsc_shift`.
pub fn tsc_hz() -> Option<u64> {
    let t = snapshot()?;
    if t.tsc_to_system_mul == 0 {
        return None;
    }
    let base = (1_000_000_000u128 << 32) / u128::from(t.tsc_to_system_mul);
    let hz = if t.tsc_shift >= 0 {
        base >> t.tsc_shift
    } else {
        base << -t.tsc_shift
    };
    Some(hz as u64)
}

fn on_timer(_: EvtchnPort) {
    // Relaxed: statistic read after stop.
    TICKS.fetch_add(1, Ordering::Relaxed);
    let period = PERIOD_NS.load(Ordering::Relaxed);
    if period == 0 {
        return;
    }
    let now = now_ns();
    let mut next = NEXT_NS.load(Ordering::Relaxed) + period;
    if next <= now {
        // Deadlines missed (the vCPU did not run): skip them, they are lost like coalesced
        // interrupts.
        next = now + period - (now - next) % period;
    }
    NEXT_NS.store(next, Ordering::Relaxed);
    let _ = hv::set_timer_op(next);
}

/// Binds `VIRQ_TIMER` (once) and returns its port.
pub fn bind() -> Result<EvtchnPort, HypercallError> {
    if let Some(p) = PORT.load(Ordering::Relaxed).checked_sub(1) {
        return Ok(p);
    }
    let port = super::events::bind_virq(VIRQ_TIMER)?;
    PORT.store(port + 1, Ordering::Relaxed);
    super::events::set_handler(port, on_timer)?;
    Ok(port)
}

/// Starts ticking every `period_ns` (first tick one period from now); resets the tick count.
pub fn start_periodic(period_ns: u64) -> Result<(), HypercallError> {
    bind()?;
    crate::arch::without_interrupts(|| {
        TICKS.store(0, Ordering::Relaxed);
        PERIOD_NS.store(period_ns, Ordering::Relaxed);
        let next = now_ns() + period_ns;
        NEXT_NS.store(next, Ordering::Relaxed);
        hv::set_timer_op(next).map(|_| ())
    })
}

/// Stops the periodic timer; returns the ticks taken since it started.
pub fn stop() -> u64 {
    crate::arch::without_interrupts(|| {
        PERIOD_NS.store(0, Ordering::Relaxed);
        let _ = hv::set_timer_op(0);
        TICKS.load(Ordering::Relaxed)
    })
}

/// Blocks the vCPU until an event arrives or `deadline_ns` (system time) passes, whichever is first.
/// Uses the one-shot timer only if no periodic timer is running. Returns with upcalls enabled.
pub fn block_until(deadline_ns: u64) {
    if PERIOD_NS.load(Ordering::Relaxed) == 0 && bind().is_ok() {
        let _ = hv::set_timer_op(deadline_ns);
    }
    hv::block();
}
