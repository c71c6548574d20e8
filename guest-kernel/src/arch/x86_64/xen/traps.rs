//! PV entry paths: exceptions through the virtual IDT (`set_trap_table`), the event upcall and the
//! failsafe callback (`set_callbacks`).
//!
//! Xen delivers both on the current kernel stack with the hardware frame (ss, rsp, rflags, cs, rip,
//! and the error code where the CPU pushes one) topped by two extra words, rcx and r11 (its own
//! return path used them). The entries pop those back into their registers, after which the stack
//! looks exactly as after a native exception:
//! - exceptions then join the native stubs of `idt` (`pvkit_isr_stubs + vector * 16`), so they are
//!   reported by the same `fatal::exception` with the same `PVKIT EXCEPTION` line;
//! - the upcall saves the registers, calls the event dispatcher, restores them and returns through
//!   the `iret` hypercall, which also restores the event mask from the saved RFLAGS.IF (Xen set the
//!   mask on entry and saved the previous state there), so unmasking and returning are one atomic
//!   step and no event can slip in between.

use super::hypercall::IRET_STUB_OFFSET;
use ring_protocol::abi::pv::{FLAT_KERNEL_CS, TI_MASK_EVENTS, TrapInfo};

/// Exceptions routed through the PV trap table: the architectural ones a kernel can raise.
pub const TRAP_VECTORS: core::ops::Range<u8> = 0..20;

core::arch::global_asm!(
    r#"
    .pushsection .text.xen_entry, "ax", @progbits
    .balign 16
    .global xen_pv_trap_stubs
xen_pv_trap_stubs:
    .set vec, 0
    .rept 20
    .balign 16
    popq %rcx
    popq %r11
    jmp pvkit_isr_stubs + vec * 16
    .set vec, vec + 1
    .endr

    .balign 16
    .global xen_pv_upcall_entry
xen_pv_upcall_entry:
    popq %rcx
    popq %r11
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    cld
    call {upcall}           /* rsp is 16-byte aligned: Xen aligns the frame, 20 qwords below it */
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    pushq $0                /* iret flags: not returning from a syscall */
    jmp xen_hypercall_page + {iret_offset}

    .balign 16
    .global xen_pv_failsafe_entry
xen_pv_failsafe_entry:
    /* Xen could not load the segment registers of a frame it returned to. Nothing of ours
       changes them, so this is a bug: report it (the stack is usable). */
    andq $-16, %rsp
    call {failsafe}
    ud2
    .popsection
"#,
    upcall = sym upcall,
    failsafe = sym failsafe,
    iret_offset = const IRET_STUB_OFFSET,
    options(att_syntax)
);

unsafe extern "C" {
    static xen_pv_trap_stubs: u8;
    static xen_pv_upcall_entry: u8;
    static xen_pv_failsafe_entry: u8;
}

/// The upcall's Rust side: counts the `iret` hypercall the entry returns through, then dispatches.
extern "C" fn upcall() {
    crate::arch::x86_64::exits::hypercall(ring_protocol::abi::xen::HYPERVISOR_IRET);
    crate::xen::events::handle_upcall();
}

extern "C" fn failsafe() -> ! {
    panic!("Xen failsafe callback: a segment register could not be restored on return to the guest")
}

/// Address of the event upcall entry.
pub fn upcall_entry() -> u64 {
    (&raw const xen_pv_upcall_entry) as u64
}

/// Address of the failsafe entry.
pub fn failsafe_entry() -> u64 {
    (&raw const xen_pv_failsafe_entry) as u64
}

/// The virtual IDT: one entry per [`TRAP_VECTORS`] vector (events masked in the handler, only the
/// kernel may raise breakpoints and overflows with `int`), then the terminator.
pub fn trap_table() -> [TrapInfo; TRAP_VECTORS.end as usize + 1] {
    let base = (&raw const xen_pv_trap_stubs) as u64;
    let mut table = [TrapInfo::default(); TRAP_VECTORS.end as usize + 1];
    for v in TRAP_VECTORS {
        table[usize::from(v)] = TrapInfo {
            vector: v,
            flags: TI_MASK_EVENTS,
            cs: FLAT_KERNEL_CS,
            _pad: 0,
            address: base + u64::from(v) * 16,
        };
    }
    table
}
