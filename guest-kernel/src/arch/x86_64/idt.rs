//! The IDT and the interrupt entry stubs.
//!
//! All 256 vectors enter through one stub each (16 bytes apart, generated below): the stub pushes a
//! zero error code where the CPU pushes none, then the vector number, and jumps to a common path that
//! saves the general registers and calls [`isr_dispatch`] with an [`InterruptFrame`]. Exceptions
//! (vectors 0..32) are fatal and reported through [`crate::fatal::exception`]; device vectors go to
//! the handlers registered in [`super::interrupts`]. The double fault runs on its own IST stack, so a
//! kernel stack overflow is reported too.

use core::mem::size_of;

use ::x86_64::VirtAddr;
use ::x86_64::instructions::segmentation::{CS, Segment};
use ::x86_64::instructions::tables::lidt;
use ::x86_64::structures::DescriptorTablePointer;

use super::gdt::DOUBLE_FAULT_IST;

/// Vectors that push an error code: 8, 10-14, 17, 21, 29, 30.
const ERROR_CODE_VECTORS: u32 = (1 << 8)
    | (1 << 10)
    | (1 << 11)
    | (1 << 12)
    | (1 << 13)
    | (1 << 14)
    | (1 << 17)
    | (1 << 21)
    | (1 << 29)
    | (1 << 30);

/// Distance between two entry stubs.
const STUB_STRIDE: u64 = 16;

core::arch::global_asm!(
    r#"
    .pushsection .text.isr, "ax", @progbits
    .balign 16
    .global pvkit_isr_stubs
pvkit_isr_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if vec < 32
    .if (({err_mask} >> vec) & 1) == 0
    pushq $0
    .endif
    .else
    pushq $0
    .endif
    pushq $vec
    jmp pvkit_isr_common
    .set vec, vec + 1
    .endr

pvkit_isr_common:
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
    movq %rsp, %rdi         /* &mut InterruptFrame; rsp is 16-byte aligned here (22 qwords pushed) */
    cld
    call {dispatch}
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
    addq $16, %rsp          /* vector and error code */
    iretq
    .popsection
"#,
    err_mask = const ERROR_CODE_VECTORS,
    dispatch = sym isr_dispatch,
    options(att_syntax)
);

unsafe extern "C" {
    /// First of the 256 entry stubs (each [`STUB_STRIDE`] bytes), defined in the asm above.
    static pvkit_isr_stubs: u8;
}

/// The stack as the entry path leaves it: saved registers, vector, error code, CPU frame.
#[derive(Debug, Clone)]
#[repr(C)]
pub struct InterruptFrame {
    /// Saved general registers (pushed by the common stub).
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// Vector number (pushed by the per-vector stub).
    pub vector: u64,
    /// Error code (the CPU's, or 0 pushed by the stub).
    pub error_code: u64,
    /// Interrupted instruction pointer (CPU frame from here on).
    pub rip: u64,
    /// Interrupted code segment.
    pub cs: u64,
    /// Interrupted RFLAGS.
    pub rflags: u64,
    /// Interrupted stack pointer.
    pub rsp: u64,
    /// Interrupted stack segment.
    pub ss: u64,
}
const _: () = assert!(size_of::<InterruptFrame>() == 22 * 8);

/// Common Rust entry of every vector.
extern "C" fn isr_dispatch(frame: &mut InterruptFrame) {
    match u8::try_from(frame.vector) {
        Ok(v) if v < 32 => crate::fatal::exception(frame),
        Ok(v) => super::interrupts::dispatch(v),
        Err(_) => crate::fatal::exception(frame),
    }
}

/// Architectural name of exception `vector`.
pub fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "Divide error",
        1 => "Debug",
        2 => "NMI",
        3 => "Breakpoint",
        4 => "Overflow",
        5 => "BOUND range exceeded",
        6 => "Invalid opcode",
        7 => "Device not available",
        8 => "Double fault",
        9 => "Coprocessor segment overrun",
        10 => "Invalid TSS",
        11 => "Segment not present",
        12 => "Stack-segment fault",
        13 => "General protection fault",
        14 => "Page fault",
        16 => "x87 floating-point error",
        17 => "Alignment check",
        18 => "Machine check",
        19 => "SIMD floating-point error",
        20 => "Virtualization exception",
        21 => "Control protection exception",
        28 => "Hypervisor injection exception",
        29 => "VMM communication exception",
        30 => "Security exception",
        15 | 22..=27 | 31 => "Reserved",
        _ => "Interrupt",
    }
}

/// One 64-bit interrupt gate.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}
const _: () = assert!(size_of::<Gate>() == 16);

/// Present, DPL 0, 64-bit interrupt gate (interrupts stay off in handlers).
const INTERRUPT_GATE: u8 = 0x8e;

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static IDT: spin::Once<Idt> = spin::Once::new();

/// Builds and loads the IDT. Needs the final GDT (uses the current CS).
pub fn init() {
    let selector = CS::get_reg().0;
    let base = (&raw const pvkit_isr_stubs) as u64;
    let idt = IDT.call_once(|| {
        let mut gates = [Gate::default(); 256];
        for (vector, gate) in gates.iter_mut().enumerate() {
            let addr = base + vector as u64 * STUB_STRIDE;
            *gate = Gate {
                offset_low: addr as u16,
                selector,
                ist: if vector == 8 { DOUBLE_FAULT_IST as u8 } else { 0 },
                type_attr: INTERRUPT_GATE,
                offset_mid: (addr >> 16) as u16,
                offset_high: (addr >> 32) as u32,
                reserved: 0,
            };
        }
        Idt(gates)
    });
    let ptr = DescriptorTablePointer {
        limit: (size_of::<Idt>() - 1) as u16,
        base: VirtAddr::from_ptr(idt),
    };
    // SAFETY: `ptr` describes a static, fully initialised IDT whose gates point at the entry stubs.
    unsafe { lidt(&ptr) };
}
