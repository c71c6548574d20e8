//! Self-tests and reports specific to the Xen PV platform.
//!
//! - [`timer`]: the `timer` test on Xen PV: `VIRQ_TIMER` re-armed with `set_timer_op` at `hz` for
//!   `ms` milliseconds of Xen system time, blocking in `SCHEDOP_block` between ticks; the count must
//!   be within `tolerance`% of rate x elapsed time, and Xen's clock must agree with the TSC at the
//!   rate Xen's scale factors give. Disturbed windows (the vCPU did not run for longer than a
//!   period) are measured again, like on PC.
//! - [`hello_info`]: Xen lines of the `hello` report.

use super::{Outcome, Params, fail};
use crate::xen;

/// Prints the Xen-specific `hello` lines.
pub fn hello_info() {
    let Some(s) = xen::start() else { return };
    let (mapped, tables, batches) = crate::platform::xen_pv::memory_stats();
    let (upcalls, dispatched, unhandled) = xen::events::counts();
    kprintln!(
        "PVKIT INFO xen nr_pages={} first_free_pfn={:#x} table_floor_pfn={:#x} pt_base={:#x} nr_pt_frames={} \
         mfn_list={:#x} store_evtchn={} console_evtchn={} flags={:#x} dom0={}",
        s.si.nr_pages,
        s.first_free_pfn,
        s.table_floor_pfn,
        s.si.pt_base,
        s.si.nr_pt_frames,
        s.si.mfn_list,
        s.si.store_evtchn,
        s.si.console_evtchn,
        s.si.flags,
        u8::from(xen::is_initial_domain())
    );
    kprintln!(
        "PVKIT INFO xen mapped_pages={mapped} new_page_tables={tables} mmu_update_batches={batches} \
         upcalls={upcalls} events_dispatched={dispatched} events_unhandled={unhandled} console_dropped={} \
         tsc_hz={} system_time_ns={}",
        xen::console::dropped(),
        xen::time::tsc_hz().unwrap_or(0),
        xen::time::now_ns()
    );
}

fn within(count: u64, expected_milli: u64, tolerance_pct: u64) -> bool {
    (count * 1000).abs_diff(expected_milli) * 100 <= expected_milli * tolerance_pct
}

const MAX_ATTEMPTS: u32 = 3;

/// The `timer` test on Xen PV.
pub fn timer(params: &Params<'_>) -> Outcome {
    let (hz, ms, tol) = match (
        params.u64_in("hz", 100, 10..=10_000),
        params.u64_in("ms", 200, 10..=60_000),
        params.u64_in("tolerance", 10, 1..=100),
    ) {
        (Ok(h), Ok(m), Ok(t)) => (h, m, t),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return fail!("{e}"),
    };
    let Some(tsc_hz) = xen::time::tsc_hz() else {
        return fail!("no Xen time record (shared info not mapped)");
    };
    let period_ns = 1_000_000_000 / hz;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let t0 = xen::time::now_ns();
        let tsc0 = crate::arch::read_tsc();
        if let Err(e) = xen::time::start_periodic(period_ns) {
            return fail!("arming the PV timer: {e}");
        }
        let end = t0 + ms * 1_000_000;
        let (mut last, mut max_gap) = (t0, 0);
        let mut blocks = 0u64;
        loop {
            let now = xen::time::now_ns();
            max_gap = max_gap.max(now - last);
            last = now;
            if now >= end {
                break;
            }
            // The timer's event wakes the block (which returns with upcalls enabled).
            crate::arch::x86_64::cpu::enable_interrupts_and_halt();
            blocks += 1;
        }
        let ticks = xen::time::stop();
        let t1 = xen::time::now_ns();
        let tsc1 = crate::arch::read_tsc();
        let elapsed_us = (t1 - t0) / 1000;
        let tsc_us = crate::time::ticks_to_us(tsc1 - tsc0, tsc_hz);
        let expected_milli = hz * elapsed_us / 1000;
        let summary = alloc::format!(
            "ticks={ticks} expected={} hz={hz} ms={ms} elapsed_us={elapsed_us} tsc_elapsed_us={tsc_us} \
             blocks={blocks} max_gap_us={} attempts={attempt} tolerance_pct={tol} tsc_mhz={} source=virq_timer",
            (expected_milli + 500) / 1000,
            max_gap / 1000,
            tsc_hz / 1_000_000
        );
        if tsc_us.abs_diff(elapsed_us) * 100 > elapsed_us * tol {
            return fail!("Xen system time and the TSC disagree by more than {tol}%: {summary}");
        }
        if within(ticks, expected_milli, tol) {
            return Outcome::Pass(summary);
        }
        if max_gap > 2 * period_ns && attempt < MAX_ATTEMPTS {
            kprintln!("PVKIT INFO timer attempt {attempt} disturbed: measuring again: {summary}");
            continue;
        }
        return fail!("VIRQ_TIMER count off by more than {tol}%: {summary}");
    }
}
