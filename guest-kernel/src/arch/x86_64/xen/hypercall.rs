//! The hypercall leaf: the hypercall page and one `call` into it.
//!
//! Xen fills the page named by the `XEN_ELFNOTE_HYPERCALL_PAGE` note (see `boot::xen_pv`) with one
//! 32-byte stub per hypercall number (`mov $nr, %eax; syscall; ret`, and a special one for `iret`).
//! Arguments go in rdi, rsi, rdx, r10, r8 (the 64-bit PV ABI); the result comes back in rax; the
//! stub's `syscall` clobbers rcx and r11, and a debug hypervisor may clobber the argument registers.
//! Under PVH the page stays zero and nothing calls it. Every call is counted by number in
//! `arch::x86_64::exits` (the upcall's return through the `iret` stub is counted in `traps`).

use ring_protocol::abi::xen::HYPERVISOR_IRET;

core::arch::global_asm!(
    r#"
    .pushsection .text.xen_hypercall_page, "ax", @progbits
    .balign 4096
    .global xen_hypercall_page
xen_hypercall_page:
    .skip 4096
    .popsection
"#,
    options(att_syntax)
);

unsafe extern "C" {
    /// The hypercall page (4 KiB, page-aligned, in `.text`), filled by Xen at domain build.
    static xen_hypercall_page: u8;
}

/// Size of one stub in the hypercall page.
const STUB_SIZE: u64 = 32;

/// Virtual address of the hypercall page (what the ELF note announces).
pub fn page_address() -> u64 {
    (&raw const xen_hypercall_page) as u64
}

/// Offset of the `iret` stub, for the asm entry paths that return through it.
pub const IRET_STUB_OFFSET: u64 = HYPERVISOR_IRET as u64 * STUB_SIZE;

/// Issues hypercall `nr` with up to five arguments and returns Xen's result (negative = `-errno`).
///
/// # Safety
/// Only on a Xen PV domain whose hypercall page Xen has filled. The arguments must be what hypercall
/// `nr` expects: every pointer valid for the reads and writes the hypercall does, for its duration,
/// and the operation must not break memory the kernel relies on (e.g. unmapping live pages).
#[inline]
pub unsafe fn hypercall5(nr: u32, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    crate::arch::x86_64::exits::hypercall(nr);
    let target = page_address() + u64::from(nr) * STUB_SIZE;
    let ret: i64;
    // SAFETY: the caller guarantees a filled hypercall page and valid arguments. The stub preserves
    // every register except rax, rcx, r11 (and, on debug builds of Xen, the argument registers),
    // which are all declared clobbered; it uses the stack only for the return address (the kernel
    // target has no red zone).
    unsafe {
        core::arch::asm!(
            "call *{target}",
            target = in(reg) target,
            inlateout("rax") u64::from(nr) => ret,
            inlateout("rdi") a1 => _,
            inlateout("rsi") a2 => _,
            inlateout("rdx") a3 => _,
            inlateout("r10") a4 => _,
            inlateout("r8") a5 => _,
            lateout("rcx") _,
            lateout("r11") _,
            options(att_syntax)
        );
    }
    ret
}
