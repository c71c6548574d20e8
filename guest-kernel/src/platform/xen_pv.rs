//! The Xen PV platform: a classic PV domU (or dom0) entered through `boot::xen_pv`.
//!
//! Console: the PV console ring (`crate::xen::console`). Exit: `SCHEDOP_shutdown` with reason
//! `poweroff` for exit code 0 (pass) and `crash` for anything else (fail); the harness maps the
//! domain's shutdown reason to the run's result. Exceptions: the virtual IDT (`set_trap_table`)
//! leads into the same reporting path as on PC. Interrupts: event channels, dispatched by the upcall
//! registered with `set_callbacks`. Memory: Xen's bootstrap mapping plus the rest of RAM mapped at
//! init (`crate::xen::memory::map_ram`).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::x86_64::boot::xen_pv::bootstrap_mapped_end;
use crate::arch::x86_64::xen::{self as hv, traps};
use crate::boot::BootInfo;
use crate::xen::{self, events, memory};
use ring_protocol::abi::pv::{SHUTDOWN_CRASH, SHUTDOWN_POWEROFF, VCPUOP_STOP_PERIODIC_TIMER};

/// The page the shared-info frame is mapped over (its own frame is given up).
static SHARED_INFO_SLOT: memory::PageWindow<1> = memory::PageWindow::new();

/// What init did with memory, for the `hello` report.
static MAPPED_PAGES: AtomicU64 = AtomicU64::new(0);
static TABLE_FRAMES: AtomicU64 = AtomicU64::new(0);
static MAP_BATCHES: AtomicU64 = AtomicU64::new(0);

/// Nothing to do: the PV entry brought the console up before selecting the platform.
pub fn early_init() {}

/// Writes to the PV console.
pub fn console_write(bytes: &[u8]) {
    xen::console::write(bytes);
}

/// Virtual address of the shared-info page.
pub fn shared_info_va() -> u64 {
    SHARED_INFO_SLOT.va()
}

/// Figures of the memory bring-up: (pages mapped, page-table frames created, mmu_update batches).
pub fn memory_stats() -> (u64, u64, u64) {
    (
        MAPPED_PAGES.load(Ordering::Relaxed),
        TABLE_FRAMES.load(Ordering::Relaxed),
        MAP_BATCHES.load(Ordering::Relaxed),
    )
}

/// Trap table, shared info, callbacks, memory, heap, events.
pub fn init(info: &'static BootInfo) {
    let state = xen::start().expect("Xen PV platform without start state");
    let traps = traps::trap_table();
    // SAFETY: every entry points at a stub of `traps`, written for Xen's PV exception frame.
    unsafe { hv::set_trap_table(&traps) }.unwrap_or_else(|e| panic!("{e}"));

    let va = shared_info_va();
    // SAFETY: the slot is a kernel page nothing else uses; from here on it is the shared-info page.
    unsafe { memory::map_machine_page(va, state.si.shared_info >> 12) }
        .unwrap_or_else(|e| panic!("mapping shared_info at {va:#x}: {e}"));
    // SAFETY: `va` now maps the shared-info page for the rest of the run.
    unsafe { hv::set_vcpu_info(va as *mut u8) };
    // SAFETY: as above.
    unsafe { events::init(va) };
    // SAFETY: as above.
    unsafe { xen::time::init(va) };
    // SAFETY: both are entry points of `traps` written for Xen's callback frames.
    unsafe { hv::set_callbacks(traps::upcall_entry(), traps::failsafe_entry()) }
        .unwrap_or_else(|e| panic!("{e}"));
    // Some Xen versions start a 100 Hz periodic timer on vCPU 0; the kernel's timer is one-shot.
    let _ = hv::vcpu_op_noarg(VCPUOP_STOP_PERIODIC_TIMER.into(), 0);

    let start = state.first_free_pfn;
    let floor = state.table_floor_pfn;
    let _ = bootstrap_mapped_end(state);
    let stats = memory::map_ram(start, floor, floor, state.si.nr_pages)
        .unwrap_or_else(|e| panic!("mapping RAM pfns {start:#x}..{floor:#x}: {e}"));
    MAPPED_PAGES.store(stats.mapped, Ordering::Relaxed);
    TABLE_FRAMES.store(stats.tables, Ordering::Relaxed);
    MAP_BATCHES.store(stats.batches, Ordering::Relaxed);
    crate::heap::init(info);

    // The boot stack's guard page is mapped by Xen's bootstrap tables: take it away.
    // SAFETY: nothing lives in the guard page.
    unsafe { memory::unmap_page(crate::boot::stack_guard_page()) }
        .unwrap_or_else(|e| panic!("unmapping the stack guard page: {e}"));
    crate::arch::x86_64::cpu::enable_interrupts();
}

/// Flushes the console and shuts the domain down: `poweroff` for 0, `crash` otherwise.
pub fn exit(code: u8) -> ! {
    xen::console::flush();
    let reason = if code == 0 {
        SHUTDOWN_POWEROFF
    } else {
        SHUTDOWN_CRASH
    };
    let err = hv::shutdown(reason);
    // Still here: Xen refused. Say so where we can and stop.
    crate::console::print_unlocked(format_args!("PVKIT PANIC at xen exit: {err}\n"));
    crate::arch::halt_forever()
}
