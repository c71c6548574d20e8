//! Memory of a PV domain: guest frame numbers (pfn) are the kernel's "physical" addresses, machine
//! frames (mfn) are what page tables hold. The p2m list from `start_info` maps pfn -> mfn, Xen's
//! read-only m2p table maps back. Virtual address = pfn << 12 (the image is linked at its physical
//! address and `VIRT_BASE` is 0).
//!
//! Xen's initial page tables map the bootstrap region only (up to a 4 MiB boundary with at least
//! 512 KiB to spare). [`map_ram`] maps the rest of RAM: page-table frames are taken from the top of
//! memory (never mapped by us, so never writable, as Xen requires of page tables), zeroed by Xen
//! (`MMUEXT_CLEAR_PAGE`) and linked with `mmu_update`; the data PTEs are then written in batches.

use ring_protocol::abi::PAGE_SIZE;
use ring_protocol::abi::pv::{
    MACH2PHYS_VIRT_START, MMU_NORMAL_PT_UPDATE, MMUEXT_CLEAR_PAGE, MmuUpdate, MmuextOp, UVMF_INVLPG,
};
use x86_64::structures::paging::PageTableFlags;

use crate::arch::x86_64::xen::{self as hv, HypercallError};

/// A page-aligned window of `N` pages in the kernel image whose virtual addresses get other frames
/// mapped over them (shared info, grant-table frames). Only ever accessed through raw pointers.
#[repr(C, align(4096))]
pub struct PageWindow<const N: usize>(core::cell::UnsafeCell<[[u8; PAGE_SIZE]; N]>);
// The `align` attribute needs a literal: it must be the page size.
const _: () = assert!(core::mem::align_of::<PageWindow<1>>() == PAGE_SIZE);

// SAFETY: the window's memory is only reached through raw pointers by code that coordinates its use
// (each window has one owner module).
unsafe impl<const N: usize> Sync for PageWindow<N> {}

impl<const N: usize> PageWindow<N> {
    /// A zeroed window (in `.bss`).
    pub const fn new() -> Self {
        Self(core::cell::UnsafeCell::new([[0; PAGE_SIZE]; N]))
    }

    /// Virtual address of its first page.
    pub fn va(&self) -> u64 {
        self.0.get() as u64
    }
}

/// The machine frame of guest frame `pfn` (from the p2m list).
pub fn pfn_to_mfn(pfn: u64) -> u64 {
    let s = super::start().expect("pfn_to_mfn outside Xen PV");
    assert!(
        pfn < s.si.nr_pages,
        "pfn {pfn:#x} beyond nr_pages {:#x}",
        s.si.nr_pages
    );
    let entry = (s.si.mfn_list as *const u64).wrapping_add(pfn as usize);
    // SAFETY: the p2m list (nr_pages u64 entries at mfn_list) is a bootstrap element, mapped for the
    // whole run and never written; `pfn < nr_pages`.
    unsafe { core::ptr::read_volatile(entry) }
}

/// The guest frame of machine frame `mfn` (from Xen's m2p table).
pub fn mfn_to_pfn(mfn: u64) -> u64 {
    let entry = (MACH2PHYS_VIRT_START as *const u64).wrapping_add(mfn as usize);
    // SAFETY: Xen maps the m2p table read-only at MACH2PHYS_VIRT_START in every PV guest; an mfn of
    // ours is inside it.
    unsafe { core::ptr::read_volatile(entry) }
}

/// Virtual address of the page with machine frame `mfn` (it must be mapped).
pub fn mfn_to_virt(mfn: u64) -> u64 {
    mfn_to_pfn(mfn) << 12
}

/// Maps the machine page `mfn` writable at `va` (replacing whatever page was there).
///
/// # Safety
/// Nothing may rely on the old contents of the page at `va`.
pub unsafe fn map_machine_page(va: u64, mfn: u64) -> Result<(), HypercallError> {
    let pte = (mfn << 12) | PTE_PRESENT | PTE_RW | PTE_ACCESSED | PTE_DIRTY;
    // SAFETY: forwarded from the contract.
    unsafe { hv::update_va_mapping(va, pte, UVMF_INVLPG) }.map(|_| ())
}

/// Unmaps the page at `va`.
///
/// # Safety
/// Nothing may use the page at `va` afterwards.
pub unsafe fn unmap_page(va: u64) -> Result<(), HypercallError> {
    // SAFETY: forwarded from the contract.
    unsafe { hv::update_va_mapping(va, 0, UVMF_INVLPG) }.map(|_| ())
}

/// x86 page-table entry bits (the hardware's, from the `x86_64` crate).
const PTE_PRESENT: u64 = PageTableFlags::PRESENT.bits();
const PTE_RW: u64 = PageTableFlags::WRITABLE.bits();
/// Xen sets it on 64-bit PV kernel mappings anyway.
const PTE_USER: u64 = PageTableFlags::USER_ACCESSIBLE.bits();
const PTE_ACCESSED: u64 = PageTableFlags::ACCESSED.bits();
const PTE_DIRTY: u64 = PageTableFlags::DIRTY.bits();
/// Machine address bits of a PTE (bits 12..52).
const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const TABLE_FLAGS: u64 = PTE_PRESENT | PTE_RW | PTE_USER | PTE_ACCESSED | PTE_DIRTY;
const DATA_FLAGS: u64 = PTE_PRESENT | PTE_RW | PTE_ACCESSED | PTE_DIRTY;
const BATCH: usize = 256;

/// A page-table page on the current walk path: its machine frame and whether we created it (then
/// it is not mapped for reading, and every entry not written by us is empty).
#[derive(Debug, Clone, Copy)]
struct Table {
    mfn: u64,
    created: bool,
}

/// What [`map_ram`] did.
#[derive(Debug, Clone, Copy, Default)]
pub struct MapStats {
    /// Pages newly mapped.
    pub mapped: u64,
    /// Pages that were already mapped (the bootstrap region).
    pub already: u64,
    /// Page-table frames created.
    pub tables: u64,
    /// `mmu_update` calls made for data PTEs.
    pub batches: u64,
}

struct Mapper {
    /// Next free page-table frame (pfn), counting up to `pool_end`.
    pool_next: u64,
    pool_end: u64,
    /// Cached walk path per level (index 3 = L3 table under the L4 entry, ..., 1 = L1), with the
    /// virtual address prefix it covers.
    path: [Option<(u64, Table)>; 4],
    batch: [MmuUpdate; BATCH],
    len: usize,
    stats: MapStats,
}

impl Mapper {
    fn flush(&mut self) -> Result<(), HypercallError> {
        if self.len > 0 {
            // SAFETY: the requests only write PTEs for pages that were unmapped (RAM nobody uses).
            unsafe { hv::mmu_update(&self.batch[..self.len]) }?;
            self.len = 0;
            self.stats.batches += 1;
        }
        Ok(())
    }

    fn push(&mut self, req: MmuUpdate) -> Result<(), HypercallError> {
        self.batch[self.len] = req;
        self.len += 1;
        if self.len == BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Reads entry `idx` of `table` (empty if we created the table: we only add entries through the
    /// cached path, which is consulted first).
    fn entry(table: Table, idx: u64) -> u64 {
        if table.created {
            return 0;
        }
        let va = mfn_to_virt(table.mfn);
        let entry = (va as *const u64).wrapping_add(idx as usize);
        // SAFETY: a table we did not create is one of Xen's bootstrap page tables, mapped read-only
        // in the bootstrap region; `idx < 512`.
        unsafe { core::ptr::read_volatile(entry) }
    }

    fn new_table(&mut self, parent: Table, idx: u64) -> Result<Table, HypercallError> {
        assert!(
            self.pool_next < self.pool_end,
            "out of page-table frames ({} used)",
            self.stats.tables
        );
        let mfn = pfn_to_mfn(self.pool_next);
        self.pool_next += 1;
        let op = MmuextOp {
            cmd: MMUEXT_CLEAR_PAGE,
            _pad: 0,
            arg1: mfn,
            arg2: 0,
        };
        // SAFETY: the frame is one of ours that nothing maps or uses (the reserved top of RAM).
        unsafe { hv::mmuext_op(&[op]) }?;
        let link = MmuUpdate {
            ptr: ((parent.mfn << 12) + idx * 8) | MMU_NORMAL_PT_UPDATE,
            val: (mfn << 12) | TABLE_FLAGS,
        };
        // SAFETY: links an empty table into an empty entry: no existing mapping changes.
        unsafe { hv::mmu_update(&[link]) }?;
        self.stats.tables += 1;
        Ok(Table { mfn, created: true })
    }

    fn map(&mut self, root: Table, pfn: u64) -> Result<(), HypercallError> {
        let va = pfn << 12;
        let mut table = root;
        for level in (1..4).rev() {
            // `table` is at level+1; find its child covering `va`.
            let shift = 12 + 9 * level as u64;
            let prefix = va >> shift;
            if let Some((p, t)) = self.path[level]
                && p == prefix
            {
                table = t;
                continue;
            }
            let idx = prefix & 511;
            let e = Self::entry(table, idx);
            let child = if e & PTE_PRESENT != 0 {
                Table {
                    mfn: (e & PTE_ADDR_MASK) >> 12,
                    created: false,
                }
            } else {
                self.new_table(table, idx)?
            };
            self.path[level] = Some((prefix, child));
            table = child;
        }
        let idx = (va >> 12) & 511;
        if Self::entry(table, idx) & PTE_PRESENT != 0 {
            self.stats.already += 1;
            return Ok(());
        }
        self.stats.mapped += 1;
        self.push(MmuUpdate {
            ptr: ((table.mfn << 12) + idx * 8) | MMU_NORMAL_PT_UPDATE,
            val: (pfn_to_mfn(pfn) << 12) | DATA_FLAGS,
        })
    }
}

/// Maps pfns `[start, end)` at their identity virtual addresses, writable, taking page-table frames
/// from pfns `[pool_start, pool_end)`.
pub fn map_ram(start: u64, end: u64, pool_start: u64, pool_end: u64) -> Result<MapStats, HypercallError> {
    let s = super::start().expect("map_ram outside Xen PV");
    let root = Table {
        mfn: pfn_to_mfn(s.si.pt_base >> 12),
        created: false,
    };
    // The mapper is big (a 4 KiB batch); keep it off the stack.
    static MAPPER: spin::Mutex<Option<Mapper>> = spin::Mutex::new(None);
    let mut guard = MAPPER.lock();
    let m = guard.insert(Mapper {
        pool_next: pool_start,
        pool_end,
        path: [None; 4],
        batch: [MmuUpdate::default(); BATCH],
        len: 0,
        stats: MapStats::default(),
    });
    for pfn in start..end {
        m.map(root, pfn)?;
    }
    m.flush()?;
    Ok(m.stats)
}
