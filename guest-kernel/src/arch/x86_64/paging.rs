//! The kernel's final page tables, built with the `x86_64` crate.
//!
//! Identity mapping (virtual == physical) of: every RAM, ACPI and NVS range of the memory map
//! (write-back, 2 MiB pages where alignment allows), minus page 0 (so null dereferences fault) and the
//! boot stack's guard page; the local APIC and IOAPIC pages, uncached. Device memory (PCI BARs) is
//! added later with [`map_mmio`], uncached. Nothing else is mapped, so e.g. 0xdead_0000_0000 faults.
//!
//! Page-table frames come from a static pool inside the kernel image, so building the tables needs
//! neither the heap nor any knowledge of free RAM.

use core::sync::atomic::{AtomicUsize, Ordering};

use ::x86_64::registers::control::{Cr3, Cr3Flags};
use ::x86_64::structures::paging::mapper::{MapToError, Translate};
use ::x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageSize, PageTable, PageTableFlags, PhysFrame, Size2MiB,
    Size4KiB,
};
use ::x86_64::{PhysAddr, VirtAddr};

use super::apic::{IOAPIC_BASE, LAPIC_DEFAULT_BASE};
use crate::boot::{MemoryKind, MemoryMap, stack_guard_page};
use crate::error::{Error, Result};

const PAGE: u64 = Size4KiB::SIZE;
const HUGE: u64 = Size2MiB::SIZE;
/// Page-table frames available (each maps 1 GiB at the PD level with 2 MiB pages, or 2 MiB at the PT
/// level); 128 frames cover far more than the VMs we run.
const POOL_FRAMES: usize = 128;

#[repr(C, align(4096))]
struct Pool([[u8; PAGE as usize]; POOL_FRAMES]);

/// Page-table frames. Zeroed with `.bss` at entry; each frame is handed out once by [`PoolFrames`]
/// and from then on only reached through the page-table code.
static mut POOL: Pool = Pool([[0; PAGE as usize]; POOL_FRAMES]);
static POOL_NEXT: AtomicUsize = AtomicUsize::new(0);

/// Hands out the frames of [`POOL`], each once.
struct PoolFrames;

// SAFETY: every frame returned is 4 KiB aligned, inside the kernel image (identity-mapped by the boot
// and the final tables) and returned only once (the counter only grows).
unsafe impl FrameAllocator<Size4KiB> for PoolFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        // Relaxed: page-table updates are serialised by MAPPER's lock.
        let index = POOL_NEXT.fetch_add(1, Ordering::Relaxed);
        if index >= POOL_FRAMES {
            return None;
        }
        let addr = (&raw mut POOL) as u64 + index as u64 * PAGE;
        Some(PhysFrame::containing_address(PhysAddr::new(addr)))
    }
}

static MAPPER: spin::Mutex<Option<OffsetPageTable<'static>>> = spin::Mutex::new(None);

/// Flags of ordinary memory.
const RAM_FLAGS: PageTableFlags = PageTableFlags::PRESENT.union(PageTableFlags::WRITABLE);
/// Flags of device memory: uncached.
const MMIO_FLAGS: PageTableFlags = RAM_FLAGS
    .union(PageTableFlags::NO_CACHE)
    .union(PageTableFlags::WRITE_THROUGH);

/// Builds the final page tables from the memory map and switches CR3 to them.
pub fn init(memory: &MemoryMap) -> Result<()> {
    let mut frames = PoolFrames;
    let pml4_frame = frames
        .allocate_frame()
        .ok_or(Error::OutOfPageTableFrames(POOL_FRAMES))?;
    let pml4_ptr = pml4_frame.start_address().as_u64() as *mut PageTable;
    // SAFETY: the frame is a fresh, zeroed, 4 KiB aligned pool frame that nothing else references; the
    // reference lives as long as the kernel (inside MAPPER).
    let pml4: &'static mut PageTable = unsafe { &mut *pml4_ptr };
    // SAFETY: physical memory is identity-mapped (offset 0) for every frame the mapper touches: pool
    // frames lie in the kernel image, mapped by the boot tables now and by these tables later.
    let mut mapper = unsafe { OffsetPageTable::new(pml4, VirtAddr::new(0)) };

    let skip = [0, stack_guard_page()];
    for region in memory.regions() {
        if matches!(region.kind, MemoryKind::Ram | MemoryKind::Acpi | MemoryKind::Nvs) {
            map_range(&mut mapper, region.start, region.end(), RAM_FLAGS, &skip)?;
        }
    }
    map_range(
        &mut mapper,
        LAPIC_DEFAULT_BASE,
        LAPIC_DEFAULT_BASE + PAGE,
        MMIO_FLAGS,
        &[],
    )?;
    map_range(&mut mapper, IOAPIC_BASE, IOAPIC_BASE + PAGE, MMIO_FLAGS, &[])?;

    // SAFETY: the new tables identity-map the whole kernel image (it is RAM in the memory map), its
    // stack and data, so execution continues seamlessly after the switch.
    unsafe { Cr3::write(pml4_frame, Cr3Flags::empty()) };
    *MAPPER.lock() = Some(mapper);
    Ok(())
}

/// Identity-maps `[phys, phys + len)` uncached, for device registers.
pub fn map_mmio(phys: u64, len: u64) -> Result<()> {
    let mut guard = MAPPER.lock();
    let mapper = guard.as_mut().expect("map_mmio before paging::init");
    map_range(mapper, phys, phys.saturating_add(len), MMIO_FLAGS, &[])
}

/// Page-table frames used so far (of the pool's 128).
pub fn frames_used() -> usize {
    POOL_NEXT.load(Ordering::Relaxed).min(POOL_FRAMES)
}

fn map_range(
    mapper: &mut OffsetPageTable<'static>,
    start: u64,
    end: u64,
    flags: PageTableFlags,
    skip: &[u64],
) -> Result<()> {
    let mut addr = start & !(PAGE - 1);
    let end = end.saturating_add(PAGE - 1) & !(PAGE - 1);
    while addr < end {
        if skip.contains(&addr) {
            addr += PAGE;
            continue;
        }
        let huge_ok = addr.is_multiple_of(HUGE)
            && addr + HUGE <= end
            && !skip.iter().any(|&s| (addr..addr + HUGE).contains(&s));
        if huge_ok && map_2m(mapper, addr, flags)? {
            addr += HUGE;
        } else {
            map_4k(mapper, addr, flags)?;
            addr += PAGE;
        }
    }
    Ok(())
}

/// Maps one 2 MiB page; `Ok(false)` if the slot already holds a page table (caller maps 4 KiB pages).
fn map_2m(mapper: &mut OffsetPageTable<'static>, addr: u64, flags: PageTableFlags) -> Result<bool> {
    let page = Page::<Size2MiB>::containing_address(VirtAddr::new(addr));
    let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(addr));
    // SAFETY: identity mapping of memory the memory map or a device owns; it aliases nothing else.
    match unsafe { mapper.map_to(page, frame, flags, &mut PoolFrames) } {
        Ok(flush) => {
            flush.flush();
            Ok(true)
        }
        Err(MapToError::PageAlreadyMapped(existing)) if existing == frame => Ok(true),
        Err(MapToError::PageAlreadyMapped(_)) => Ok(false),
        Err(MapToError::ParentEntryHugePage) => check_identity(mapper, addr).map(|()| true),
        Err(MapToError::FrameAllocationFailed) => Err(Error::OutOfPageTableFrames(POOL_FRAMES)),
    }
}

fn map_4k(mapper: &mut OffsetPageTable<'static>, addr: u64, flags: PageTableFlags) -> Result<()> {
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(addr));
    let frame = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(addr));
    // SAFETY: as in map_2m.
    match unsafe { mapper.map_to(page, frame, flags, &mut PoolFrames) } {
        Ok(flush) => {
            flush.flush();
            Ok(())
        }
        Err(MapToError::PageAlreadyMapped(existing)) if existing == frame => Ok(()),
        Err(MapToError::PageAlreadyMapped(existing)) => Err(Error::MappingConflict {
            virt: addr,
            existing: existing.start_address().as_u64(),
            wanted: addr,
        }),
        Err(MapToError::ParentEntryHugePage) => check_identity(mapper, addr),
        Err(MapToError::FrameAllocationFailed) => Err(Error::OutOfPageTableFrames(POOL_FRAMES)),
    }
}

/// An address already covered by a larger page: fine if that page maps it to itself.
fn check_identity(mapper: &OffsetPageTable<'static>, addr: u64) -> Result<()> {
    match mapper.translate_addr(VirtAddr::new(addr)) {
        Some(phys) if phys.as_u64() == addr => Ok(()),
        Some(phys) => Err(Error::MappingConflict {
            virt: addr,
            existing: phys.as_u64(),
            wanted: addr,
        }),
        None => Err(Error::MapFailed(addr)),
    }
}
