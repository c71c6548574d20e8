//! The classic Xen PV entry (64-bit).
//!
//! Xen (or the toolstack's domain builder) reads the notes below, loads the image at its link
//! address (`VIRT_BASE` 0, `PADDR_OFFSET` 0: virtual = pseudo-physical), fills the hypercall page and
//! starts `xen_pv_start` in 64-bit mode on its own initial page tables with `rsi` = the virtual
//! address of `start_info`, `rsp` = a bootstrap stack, event upcalls masked. The kernel keeps those
//! page tables; later mappings go through `mmu_update` (see `crate::xen::memory`).
//!
//! The entry switches to the kernel's boot stack, marks the CPU layer as PV, copies `start_info`,
//! brings up the console, converts what it learned into a [`BootInfo`] and calls
//! [`crate::kernel_main`]. The same ELF still boots through PVH: QEMU only looks at the
//! `PHYS32_ENTRY` note, and Xen only uses `ENTRY` for a `type="pv"` domain.

use core::mem::size_of;

use ring_protocol::abi::PAGE_SIZE;
use ring_protocol::abi::elfnote::{
    ELFNOTE_ENTRY, ELFNOTE_FEATURES, ELFNOTE_GUEST_OS, ELFNOTE_HYPERCALL_PAGE, ELFNOTE_LOADER,
    ELFNOTE_PADDR_OFFSET, ELFNOTE_VIRT_BASE, ELFNOTE_XEN_VERSION,
};
use ring_protocol::abi::pv::{SIF_MOD_START_PFN, StartInfo};

use crate::arch::x86_64::xen as hv;
use crate::boot::{BootInfo, CMDLINE_MAX, MemoryKind, MemoryMap, MemoryRegion, kernel_image};
use crate::platform::{self, Platform};
use crate::xen::StartState;

core::arch::global_asm!(
    r#"
    /* One note: name "Xen", type, then the descriptor between local labels 1 and 2. */
    .macro xen_note type
    .balign 4
    .long 4
    .long 2f - 1f
    .long \type
    .asciz "Xen"
    .balign 4
1:
    .endm
    .macro xen_note_end
2:
    .balign 4
    .endm

    .pushsection .note.Xen, "a", @note
    xen_note {guest_os}
    .asciz "pvkit"
    xen_note_end
    xen_note {xen_version}
    .asciz "xen-3.0"
    xen_note_end
    xen_note {loader}
    .asciz "generic"
    xen_note_end
    xen_note {features}
    .asciz "pae_pgdir_above_4gb"
    xen_note_end
    xen_note {virt_base}
    .quad 0
    xen_note_end
    xen_note {paddr_offset}
    .quad 0
    xen_note_end
    xen_note {entry}
    .quad xen_pv_start
    xen_note_end
    xen_note {hypercall_page}
    .quad xen_hypercall_page
    xen_note_end
    .popsection

    .pushsection .text.xen_pv_start, "ax", @progbits
    .global xen_pv_start
    .code64
xen_pv_start:
    cld
    movq %rsi, %rdi                 /* arg 0: start_info (virtual) */
    movq %rsp, %rsi                 /* arg 1: Xen's bootstrap stack pointer */
    movq $__boot_stack_top, %rsp
    xorl %ebp, %ebp
    call {rust_entry}
    ud2
    .popsection
"#,
    guest_os = const ELFNOTE_GUEST_OS,
    xen_version = const ELFNOTE_XEN_VERSION,
    loader = const ELFNOTE_LOADER,
    features = const ELFNOTE_FEATURES,
    virt_base = const ELFNOTE_VIRT_BASE,
    paddr_offset = const ELFNOTE_PADDR_OFFSET,
    entry = const ELFNOTE_ENTRY,
    hypercall_page = const ELFNOTE_HYPERCALL_PAGE,
    rust_entry = sym xen_pv_rust_entry,
    options(att_syntax)
);

/// Page size.
const PAGE: u64 = PAGE_SIZE as u64;
/// Xen guarantees this much mapped padding after the last bootstrap element.
const GUARANTEED_PADDING: u64 = 512 * 1024;
/// The bootstrap mapping ends on this alignment.
const BOOTSTRAP_ALIGN: u64 = 4 << 20;

/// First Rust code on the PV path: 64-bit, Xen's page tables, the kernel's boot stack, upcalls
/// masked.
extern "C" fn xen_pv_rust_entry(start_info_va: u64, xen_stack: u64) -> ! {
    hv::set_active();
    crate::time::mark_boot();
    // SAFETY: Xen passes a mapped, readable start_info page in rsi; every bit pattern is valid for
    // the integer-only StartInfo; the copy is taken before anything could reuse the page.
    let si = unsafe { core::ptr::read_volatile(start_info_va as *const StartInfo) };
    let state = crate::xen::set_start(layout(si, start_info_va, xen_stack));
    crate::xen::console::init();
    platform::select(Platform::XenPv);
    static INFO: spin::Once<BootInfo> = spin::Once::new();
    let info = INFO.call_once(|| boot_info(state));
    crate::kernel_main(info)
}

fn page_up(x: u64) -> u64 {
    x.next_multiple_of(PAGE)
}

/// Finds the end of the bootstrap elements and reserves page-table frames at the top of memory.
fn layout(si: StartInfo, start_info_va: u64, xen_stack: u64) -> StartState {
    let module_end = if si.mod_len == 0 {
        0
    } else if si.flags & SIF_MOD_START_PFN != 0 {
        si.mod_start * PAGE + si.mod_len
    } else {
        si.mod_start + si.mod_len
    };
    let ends = [
        kernel_image().end,
        module_end,
        si.mfn_list + si.nr_pages * 8,
        start_info_va + PAGE,
        si.pt_base + si.nr_pt_frames * PAGE,
        xen_stack,
    ];
    let first_free = page_up(ends.into_iter().max().unwrap_or(0));
    // Page tables for all of RAM: one L1 per 2 MiB, one L2 per 1 GiB, one L3 per 512 GiB.
    let tables = si.nr_pages.div_ceil(512) + si.nr_pages.div_ceil(512 * 512) + 2;
    let table_floor = si.nr_pages.saturating_sub(tables);
    StartState {
        si,
        start_info_va,
        first_free_pfn: first_free / PAGE,
        table_floor_pfn: table_floor,
    }
}

/// The end of Xen's bootstrap mapping at its smallest (what `start_info`'s rules guarantee).
pub fn bootstrap_mapped_end(state: &StartState) -> u64 {
    (state.first_free_pfn * PAGE + GUARANTEED_PADDING).next_multiple_of(BOOTSTRAP_ALIGN)
}

fn boot_info(state: &StartState) -> BootInfo {
    let si = &state.si;
    let ram_end = si.nr_pages * PAGE;
    let first_free = state.first_free_pfn * PAGE;
    let floor = state.table_floor_pfn * PAGE;
    if floor <= bootstrap_mapped_end(state) + BOOTSTRAP_ALIGN {
        panic!(
            "Xen PV domain of {} pages is too small: the bootstrap region ends near {:#x}, the page \
             tables for the rest would start at {floor:#x}",
            si.nr_pages,
            bootstrap_mapped_end(state)
        );
    }
    let image = kernel_image();
    let mut memory = MemoryMap::new();
    for (start, end, kind) in [
        (0, image.start, MemoryKind::Reserved),
        (image.start, image.end, MemoryKind::Ram),
        (image.end, first_free, MemoryKind::Reserved),
        (first_free, floor, MemoryKind::Ram),
        (floor, ram_end, MemoryKind::Reserved),
    ] {
        if end > start {
            memory.push(MemoryRegion {
                start,
                len: end - start,
                kind,
            });
        }
    }
    let (cmdline, cmdline_truncated) = copy_cmdline(&si.cmd_line);
    BootInfo {
        platform: Platform::XenPv,
        cmdline,
        cmdline_truncated,
        memory,
        rsdp: None,
        start_info: state.start_info_va,
    }
}

/// Copies the command line out of `start_info`; returns its UTF-8 prefix and whether it was cut.
fn copy_cmdline(raw: &[u8; 1024]) -> (&'static str, bool) {
    static BUF: spin::Once<([u8; CMDLINE_MAX], usize)> = spin::Once::new();
    let (buf, len) = BUF.call_once(|| {
        let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let keep = len.min(CMDLINE_MAX);
        let mut buf = [0u8; CMDLINE_MAX];
        buf[..keep].copy_from_slice(&raw[..keep]);
        (buf, keep)
    });
    let bytes = &buf[..*len];
    match core::str::from_utf8(bytes) {
        Ok(s) => (s, false),
        Err(e) => (
            core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
            true,
        ),
    }
}

const _: () = assert!(size_of::<StartInfo>() <= PAGE as usize);
