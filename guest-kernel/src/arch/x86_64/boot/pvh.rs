//! The PVH entry.
//!
//! The loader (QEMU's `-kernel` via qboot/SeaBIOS, or Xen) finds our 32-bit entry point in the ELF
//! note `XEN_ELFNOTE_PHYS32_ENTRY` and jumps there in 32-bit protected mode: flat segments, paging
//! off, interrupts off, no stack, `ebx` = physical address of `struct hvm_start_info`.
//!
//! The trampoline below checks the start-info magic, zeroes `.bss`, identity-maps the first 1 GiB
//! with 2 MiB pages, enables PAE, long mode and paging, loads a minimal 64-bit GDT, switches to the
//! boot stack and calls [`pvh_rust_entry`]. The final page tables, GDT and IDT are built later in Rust.

use core::mem::size_of;

use ring_protocol::abi::elfnote::ELFNOTE_PHYS32_ENTRY;
use ring_protocol::abi::pvh::{HVM_START_MAGIC_VALUE, HvmMemmapTableEntry, HvmStartInfo};
use zerocopy::FromBytes;

use crate::boot::{BootInfo, CMDLINE_MAX, MemoryKind, MemoryMap, MemoryRegion};
use crate::platform::{self, Platform};

/// Memory the boot page tables identity-map (1 GiB); loader structures must lie below it.
pub const BOOT_MAPPED: u64 = 1 << 30;

core::arch::global_asm!(
    r#"
    /* The PVH entry note: name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY, 32-bit entry address. */
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long {note_type}
    .asciz "Xen"
    .balign 4
    .long pvh_start32
    .balign 4
    .popsection

    .pushsection .bss.boot_page_tables, "aw", @nobits
    .balign 4096
boot_pml4: .skip 4096
boot_pdpt: .skip 4096
boot_pd:   .skip 4096
    .popsection

    .pushsection .rodata.boot_gdt, "a", @progbits
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf92000000ffff    /* 0x10: flat data */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt
bad_magic_msg:
    .ascii "PVKIT PANIC at pvh entry: hvm_start_info magic is not 0x336ec578\n"
bad_magic_end:
    .popsection

    .pushsection .text.boot32, "ax", @progbits
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    cmpl ${magic}, (%ebx)
    jne 9f
    movl %ebx, %esi                 /* start_info survives in esi (rep stos uses eax/ecx/edi) */

    movl $__bss_start, %edi         /* zero .bss: boot page tables, stacks, statics */
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $2, %ecx
    xorl %eax, %eax
    rep stosl

    movl $boot_pdpt + 0x3, boot_pml4    /* PML4[0] -> PDPT, present + writable */
    movl $boot_pd + 0x3, boot_pdpt      /* PDPT[0] -> PD */
    xorl %ecx, %ecx
1:  movl %ecx, %eax                     /* PD[i] -> i * 2 MiB, present + writable + 2 MiB page */
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, boot_pd(,%ecx,8)
    incl %ecx
    cmpl $512, %ecx
    jne 1b

    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax                 /* CR4.PAE */
    movl %eax, %cr4
    movl $0xc0000080, %ecx          /* IA32_EFER */
    rdmsr
    orl $0x100, %eax                /* EFER.LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax           /* CR0.PG | CR0.WP | CR0.PE */
    movl %eax, %cr0
    lgdt boot_gdt_ptr
    ljmp $0x08, $2f

9:  /* Not a PVH start: say so on COM1, exit through isa-debug-exit (if present), halt. */
    movl $bad_magic_msg, %esi
    movw $0x3f8, %dx
8:  lodsb
    outb %al, %dx
    cmpl $bad_magic_end, %esi
    jne 8b
    movl $1, %eax
    movw $0xf4, %dx
    outl %eax, %dx
7:  hlt
    jmp 7b

    .code64
2:  movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movq $__boot_stack_top, %rsp
    movl %esi, %edi                 /* arg 0: start_info physical address (zero-extended) */
    xorl %ebp, %ebp
    call {rust_entry}
3:  cli
    hlt
    jmp 3b
    .popsection
"#,
    magic = const HVM_START_MAGIC_VALUE,
    note_type = const ELFNOTE_PHYS32_ENTRY,
    rust_entry = sym pvh_rust_entry,
    options(att_syntax)
);

/// First Rust code on the PVH path: 64-bit mode, boot page tables (first 1 GiB identity-mapped),
/// boot stack, interrupts off.
extern "C" fn pvh_rust_entry(start_info_paddr: u64) -> ! {
    crate::time::mark_boot();
    platform::select(Platform::Pvh);
    static INFO: spin::Once<BootInfo> = spin::Once::new();
    let info = INFO.call_once(|| read_start_info(start_info_paddr));
    crate::kernel_main(info)
}

/// Reads `len` bytes of physical memory below [`BOOT_MAPPED`], or reports where it is not reachable.
fn phys_slice(paddr: u64, len: u64, what: &str) -> &'static [u8] {
    let end = paddr.checked_add(len);
    if paddr == 0 || end.is_none_or(|e| e > BOOT_MAPPED) {
        panic!("PVH {what} at {paddr:#x} (+{len:#x}) lies outside the boot mapping (1 GiB)");
    }
    // SAFETY: the range is non-null, below 1 GiB and thus identity-mapped by the boot page tables;
    // the loader's structures are not written by anyone while we run, and `.bss` zeroing does not
    // touch them (QEMU and Xen place them outside the kernel image).
    unsafe { core::slice::from_raw_parts(paddr as *const u8, len as usize) }
}

fn read_start_info(paddr: u64) -> BootInfo {
    let raw = phys_slice(paddr, size_of::<HvmStartInfo>() as u64, "start_info");
    let si = HvmStartInfo::read_from_bytes(raw).expect("phys_slice returned the size asked for");

    let mut memory = MemoryMap::new();
    if si.version >= 1 && si.memmap_entries > 0 {
        let len = u64::from(si.memmap_entries) * size_of::<HvmMemmapTableEntry>() as u64;
        let bytes = phys_slice(si.memmap_paddr, len, "memory map");
        for chunk in bytes.chunks_exact(size_of::<HvmMemmapTableEntry>()) {
            let e = HvmMemmapTableEntry::read_from_bytes(chunk).expect("a whole entry");
            memory.push(MemoryRegion {
                start: e.addr,
                len: e.size,
                kind: MemoryKind::from_e820(e.type_),
            });
        }
    } else {
        panic!(
            "PVH start_info version {} with {} memory-map entries: no memory map to size RAM from",
            si.version, si.memmap_entries
        );
    }

    let (cmdline, cmdline_truncated) = copy_cmdline(si.cmdline_paddr);
    BootInfo {
        platform: Platform::Pvh,
        cmdline,
        cmdline_truncated,
        memory,
        rsdp: (si.rsdp_paddr != 0).then_some(si.rsdp_paddr),
        start_info: paddr,
    }
}

/// Copies the NUL-terminated command line into kernel memory (the loader's copy may later be
/// reused as heap). Returns the valid UTF-8 prefix and whether anything was cut.
fn copy_cmdline(paddr: u64) -> (&'static str, bool) {
    static BUF: spin::Once<([u8; CMDLINE_MAX], usize, bool)> = spin::Once::new();
    let (buf, len, cut) = BUF.call_once(|| {
        let mut buf = [0u8; CMDLINE_MAX];
        if paddr == 0 {
            return (buf, 0, false);
        }
        let avail = (BOOT_MAPPED.saturating_sub(paddr)).min(CMDLINE_MAX as u64 + 1);
        let src = phys_slice(paddr, avail, "command line");
        let len = src.iter().position(|&b| b == 0).unwrap_or(src.len());
        let keep = len.min(CMDLINE_MAX);
        buf[..keep].copy_from_slice(&src[..keep]);
        (buf, keep, len > CMDLINE_MAX)
    });
    let bytes = &buf[..*len];
    match core::str::from_utf8(bytes) {
        Ok(s) => (s, *cut),
        Err(e) => {
            // Not UTF-8: keep the valid prefix and report the line as cut.
            let s = core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or("");
            (s, true)
        }
    }
}
