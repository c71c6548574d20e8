//! Xen PV support at the architecture level: the hypercall leaf ([`hypercall`]), the exception and
//! event-upcall entry paths ([`traps`]) and typed hypercall wrappers (here). The ABI they speak
//! (`start_info`, `vcpu_info`, hypercall numbers and commands) is `ring_protocol::abi::{xen, pv}`. Also the PV replacements for privileged instructions a 64-bit PV kernel (which runs in
//! ring 3) cannot execute: the "interrupt flag" is the vCPU's `evtchn_upcall_mask`, halting is
//! `SCHEDOP_block`, and CPUID goes through Xen's forced-emulation prefix so Xen's policy (with its
//! signature) is what the kernel sees.

pub mod hypercall;
pub mod traps;

use core::mem::offset_of;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, Ordering};

use self::hypercall::hypercall5;
use super::cpu::CpuidResult;
use ring_protocol::abi::pv::{
    ArchVcpuInfo, CONSOLEIO_WRITE, MmuUpdate, MmuextOp, SCHEDOP_BLOCK, SCHEDOP_SHUTDOWN, SCHEDOP_YIELD,
    SchedShutdown, TrapInfo, VcpuInfo, XENVER_VERSION,
};
pub use ring_protocol::abi::xen::DOMID_SELF;
use ring_protocol::abi::xen::{
    HYPERVISOR_CONSOLE_IO, HYPERVISOR_EVENT_CHANNEL_OP, HYPERVISOR_GRANT_TABLE_OP, HYPERVISOR_MEMORY_OP,
    HYPERVISOR_MMU_UPDATE, HYPERVISOR_MMUEXT_OP, HYPERVISOR_SCHED_OP, HYPERVISOR_SET_CALLBACKS,
    HYPERVISOR_SET_TIMER_OP, HYPERVISOR_SET_TRAP_TABLE, HYPERVISOR_UPDATE_VA_MAPPING, HYPERVISOR_VCPU_OP,
    HYPERVISOR_XEN_VERSION,
};

/// Set once by the PV entry, before anything else runs.
static PV: AtomicBool = AtomicBool::new(false);
/// vCPU 0's `vcpu_info` (in the shared-info page), once mapped.
static VCPU0: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());

/// Whether the kernel runs as a Xen PV guest.
#[inline]
pub fn active() -> bool {
    // Relaxed: written once by the boot entry before any reader runs, on the only CPU.
    PV.load(Ordering::Relaxed)
}

/// Marks the kernel as a PV guest. Called first thing by the PV entry.
pub fn set_active() {
    // Relaxed: see `active`.
    PV.store(true, Ordering::Relaxed);
}

/// Records where vCPU 0's `vcpu_info` is mapped (the start of the shared-info page).
///
/// # Safety
/// `vcpu_info` must point to the mapped shared-info page, mapped for the rest of the run.
pub unsafe fn set_vcpu_info(vcpu_info: *mut u8) {
    // Release: the mapping (made before) is visible to whoever loads the pointer.
    VCPU0.store(vcpu_info, Ordering::Release);
}

fn vcpu_byte(offset: usize) -> Option<&'static AtomicU8> {
    // Acquire: pairs with the Release in `set_vcpu_info`.
    let base = VCPU0.load(Ordering::Acquire);
    if base.is_null() {
        return None;
    }
    let byte = base.wrapping_add(offset);
    // SAFETY: `set_vcpu_info`'s contract: the page stays mapped; offsets used are inside vcpu_info
    // 0 and the byte is shared with Xen, so it is only accessed atomically.
    Some(unsafe { AtomicU8::from_ptr(byte) })
}

/// Masks event upcalls; returns whether they were masked before. (Xen starts a vCPU masked; before
/// the shared-info page is mapped there is nothing to unmask, so this reports "masked".)
pub fn mask_events() -> bool {
    match vcpu_byte(offset_of!(VcpuInfo, evtchn_upcall_mask)) {
        // Relaxed: the mask is only read by Xen on this vCPU's own CPU (xen.h), no ordering needed
        // beyond program order, which a compiler fence keeps.
        Some(mask) => {
            let was = mask.swap(1, Ordering::Relaxed) != 0;
            core::sync::atomic::compiler_fence(Ordering::SeqCst);
            was
        }
        None => true,
    }
}

/// Unmasks event upcalls and, if an event arrived while masked, has Xen deliver it now.
pub fn unmask_events() {
    let (Some(mask), Some(pending)) = (
        vcpu_byte(offset_of!(VcpuInfo, evtchn_upcall_mask)),
        vcpu_byte(offset_of!(VcpuInfo, evtchn_upcall_pending)),
    ) else {
        return;
    };
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    // Relaxed: see `mask_events`.
    mask.store(0, Ordering::Relaxed);
    // SeqCst fence: the unmask is globally visible before we look at pending, so an event set by
    // Xen on another CPU in between is either seen here or delivered by Xen after the unmask.
    core::sync::atomic::fence(Ordering::SeqCst);
    if pending.load(Ordering::Relaxed) != 0 {
        // Any hypercall returns through Xen's event check, which delivers the upcall.
        let _ = xen_version(u64::from(XENVER_VERSION));
    }
}

/// Runs `f` with event upcalls masked, restoring the previous state afterwards.
pub fn without_events<T>(f: impl FnOnce() -> T) -> T {
    let was_masked = mask_events();
    let r = f();
    if !was_masked {
        unmask_events();
    }
    r
}

/// Blocks the vCPU until an event is pending. Xen unmasks upcalls atomically with blocking, so on
/// return upcalls are enabled (like `sti; hlt`).
pub fn block() {
    // SAFETY: SCHEDOP_block takes no argument and only deschedules this vCPU.
    unsafe { hypercall5(HYPERVISOR_SCHED_OP, SCHEDOP_BLOCK.into(), 0, 0, 0, 0) };
}

/// Gives up the CPU for a moment.
pub fn yield_cpu() {
    // SAFETY: SCHEDOP_yield takes no argument.
    unsafe { hypercall5(HYPERVISOR_SCHED_OP, SCHEDOP_YIELD.into(), 0, 0, 0, 0) };
}

/// CPUID through Xen's forced-emulation prefix (`ud2; .ascii "xen"; cpuid`): Xen traps it and
/// answers from the domain's CPUID policy, including its own leaves at 0x4000_0000.
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    let (eax, rbx, ecx, edx): (u32, u64, u32, u32);
    // SAFETY: on a PV guest Xen emulates the prefixed CPUID (the #UD never reaches the guest); it
    // only writes the four result registers. rbx is reserved by LLVM, so it is saved around it.
    unsafe {
        core::arch::asm!(
            "mov {tmp:r}, rbx",
            "ud2",
            ".ascii \"xen\"",
            "cpuid",
            "xchg {tmp:r}, rbx",
            tmp = out(reg) rbx,
            inlateout("eax") leaf => eax,
            inlateout("ecx") subleaf => ecx,
            lateout("edx") edx,
            options(nostack, preserves_flags)
        );
    }
    CpuidResult {
        eax,
        ebx: rbx as u32,
        ecx,
        edx,
    }
}

/// A failed hypercall: its name and Xen's (negative) return value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HypercallError {
    /// Which hypercall.
    pub op: &'static str,
    /// Xen's return value (`-errno`).
    pub rc: i64,
}

impl core::fmt::Display for HypercallError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "hypercall {} failed with {}", self.op, self.rc)
    }
}

fn check(op: &'static str, rc: i64) -> Result<i64, HypercallError> {
    if rc < 0 {
        Err(HypercallError { op, rc })
    } else {
        Ok(rc)
    }
}

/// Writes to the hypervisor console (dom0 only on release builds of Xen).
pub fn console_io_write(bytes: &[u8]) -> Result<i64, HypercallError> {
    // SAFETY: Xen reads `bytes.len()` bytes from `bytes`.
    let rc = unsafe {
        hypercall5(
            HYPERVISOR_CONSOLE_IO,
            CONSOLEIO_WRITE.into(),
            bytes.len() as u64,
            bytes.as_ptr() as u64,
            0,
            0,
        )
    };
    check("console_io", rc)
}

/// Shuts the domain down with `reason` (`SHUTDOWN_*`). Returns only if Xen refused.
pub fn shutdown(reason: u32) -> HypercallError {
    let arg = SchedShutdown { reason };
    // SAFETY: Xen reads one `sched_shutdown` from `arg`.
    let rc = unsafe {
        hypercall5(
            HYPERVISOR_SCHED_OP,
            SCHEDOP_SHUTDOWN.into(),
            (&raw const arg) as u64,
            0,
            0,
            0,
        )
    };
    HypercallError {
        op: "sched_op(shutdown)",
        rc,
    }
}

/// `xen_version(cmd, NULL)`.
pub fn xen_version(cmd: u64) -> i64 {
    // SAFETY: the commands used with a null argument (XENVER_version) write nothing.
    unsafe { hypercall5(HYPERVISOR_XEN_VERSION, cmd, 0, 0, 0, 0) }
}

/// `event_channel_op(cmd, arg)`.
///
/// # Safety
/// `arg` must be the structure `cmd` expects, valid for Xen to read and write.
pub unsafe fn event_channel_op<T>(cmd: u32, arg: &mut T) -> Result<i64, HypercallError> {
    // SAFETY: forwarded from the contract.
    let rc = unsafe {
        hypercall5(
            HYPERVISOR_EVENT_CHANNEL_OP,
            u64::from(cmd),
            (arg as *mut T) as u64,
            0,
            0,
            0,
        )
    };
    check("event_channel_op", rc)
}

/// `grant_table_op(cmd, args, count)`.
///
/// # Safety
/// `args` must point to `count` structures of the kind `cmd` expects, valid for Xen to read and
/// write, and any frames they name must be the caller's to hand out.
pub unsafe fn grant_table_op<T>(cmd: u32, args: *mut T, count: u32) -> Result<i64, HypercallError> {
    // SAFETY: forwarded from the contract.
    let rc = unsafe {
        hypercall5(
            HYPERVISOR_GRANT_TABLE_OP,
            u64::from(cmd),
            args as u64,
            u64::from(count),
            0,
            0,
        )
    };
    check("grant_table_op", rc)
}

/// `memory_op(cmd, arg)`.
///
/// # Safety
/// As [`event_channel_op`], and the operation must not take away memory the kernel uses.
#[allow(
    dead_code,
    reason = "used by the Xen frontends glue (XenStore, grants, blkfront)"
)]
pub unsafe fn memory_op<T>(cmd: u64, arg: &mut T) -> Result<i64, HypercallError> {
    // SAFETY: forwarded from the contract.
    let rc = unsafe { hypercall5(HYPERVISOR_MEMORY_OP, cmd, (arg as *mut T) as u64, 0, 0, 0) };
    check("memory_op", rc)
}

/// Registers the event upcall and failsafe callbacks (no syscall callback: no user mode).
///
/// # Safety
/// Both addresses must be entry points that follow Xen's PV callback frame conventions.
pub unsafe fn set_callbacks(event: u64, failsafe: u64) -> Result<i64, HypercallError> {
    // SAFETY: forwarded from the contract.
    let rc = unsafe { hypercall5(HYPERVISOR_SET_CALLBACKS, event, failsafe, 0, 0, 0) };
    check("set_callbacks", rc)
}

/// Installs the virtual IDT. `table` must end with an entry whose `address` is 0.
///
/// # Safety
/// Every handler address must be an entry point following Xen's PV exception frame conventions.
pub unsafe fn set_trap_table(table: &[TrapInfo]) -> Result<i64, HypercallError> {
    assert!(
        table.last().is_some_and(|t| t.address == 0),
        "trap table not terminated"
    );
    // SAFETY: forwarded from the contract; Xen reads entries up to the terminator.
    let rc = unsafe { hypercall5(HYPERVISOR_SET_TRAP_TABLE, table.as_ptr() as u64, 0, 0, 0, 0) };
    check("set_trap_table", rc)
}

/// Arms the one-shot timer for Xen system time `deadline_ns` (0 = cancel). `VIRQ_TIMER` fires then.
pub fn set_timer_op(deadline_ns: u64) -> Result<i64, HypercallError> {
    // SAFETY: only arms this vCPU's timer.
    let rc = unsafe { hypercall5(HYPERVISOR_SET_TIMER_OP, deadline_ns, 0, 0, 0, 0) };
    check("set_timer_op", rc)
}

/// `vcpu_op(cmd, vcpu, NULL)` for commands without an argument structure.
pub fn vcpu_op_noarg(cmd: u64, vcpu: u64) -> Result<i64, HypercallError> {
    // SAFETY: callers pass commands that take no argument (e.g. stop_periodic_timer).
    let rc = unsafe { hypercall5(HYPERVISOR_VCPU_OP, cmd, vcpu, 0, 0, 0) };
    check("vcpu_op", rc)
}

/// Applies page-table writes.
///
/// # Safety
/// The writes must keep every mapping the kernel relies on intact (Xen checks only that they are
/// safe for Xen and other domains, not for us).
pub unsafe fn mmu_update(reqs: &[MmuUpdate]) -> Result<i64, HypercallError> {
    let mut done: u32 = 0;
    // SAFETY: forwarded from the contract; Xen reads `reqs.len()` requests and writes `done`.
    let rc = unsafe {
        hypercall5(
            HYPERVISOR_MMU_UPDATE,
            reqs.as_ptr() as u64,
            reqs.len() as u64,
            (&raw mut done) as u64,
            u64::from(DOMID_SELF),
            0,
        )
    };
    check("mmu_update", rc)
}

/// Extended MMU operations.
///
/// # Safety
/// As [`mmu_update`].
pub unsafe fn mmuext_op(ops: &[MmuextOp]) -> Result<i64, HypercallError> {
    let mut done: u32 = 0;
    // SAFETY: forwarded from the contract.
    let rc = unsafe {
        hypercall5(
            HYPERVISOR_MMUEXT_OP,
            ops.as_ptr() as u64,
            ops.len() as u64,
            (&raw mut done) as u64,
            u64::from(DOMID_SELF),
            0,
        )
    };
    check("mmuext_op", rc)
}

/// Sets the PTE that maps `va` to `pte` in the current page tables.
///
/// # Safety
/// As [`mmu_update`]: the old mapping of `va` must not be needed any more.
pub unsafe fn update_va_mapping(va: u64, pte: u64, flags: u64) -> Result<i64, HypercallError> {
    // SAFETY: forwarded from the contract.
    let rc = unsafe { hypercall5(HYPERVISOR_UPDATE_VA_MAPPING, va, pte, flags, 0, 0) };
    check("update_va_mapping", rc)
}

/// The faulting address of the last page fault, as Xen saved it in vcpu_info.
pub fn saved_cr2() -> u64 {
    // Acquire: pairs with the Release in `set_vcpu_info`.
    let base = VCPU0.load(Ordering::Acquire);
    if base.is_null() {
        return 0;
    }
    let cr2 = base
        .wrapping_add(offset_of!(VcpuInfo, arch) + offset_of!(ArchVcpuInfo, cr2))
        .cast::<u64>();
    // SAFETY: the page is mapped (set_vcpu_info contract); `arch.cr2` is 8-aligned and only
    // written by Xen on this vCPU before it delivers #PF to us.
    unsafe { core::ptr::read_volatile(cr2) }
}
