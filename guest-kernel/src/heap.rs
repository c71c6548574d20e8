//! The kernel heap: `linked_list_allocator` over the largest RAM range above the kernel image, behind
//! a `spin` lock taken with interrupts off (so an interrupt handler that allocates cannot deadlock
//! against the code it interrupted).

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{NonNull, null_mut};

use linked_list_allocator::Heap;

use crate::boot::{BootInfo, MemoryKind, kernel_image};

struct KernelHeap(spin::Mutex<Heap>);

// SAFETY: allocation and deallocation are delegated to linked_list_allocator's Heap, which upholds
// the GlobalAlloc contract for the memory it was given; the lock serialises all access.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        crate::arch::without_interrupts(|| {
            self.0
                .lock()
                .allocate_first_fit(layout)
                .map_or(null_mut(), NonNull::as_ptr)
        })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(ptr) = NonNull::new(ptr) else { return };
        crate::arch::without_interrupts(|| {
            // SAFETY: GlobalAlloc's contract: `ptr` came from `alloc` with this `layout`.
            unsafe { self.0.lock().deallocate(ptr, layout) }
        });
    }
}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap(spin::Mutex::new(Heap::empty()));

/// Heap figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapStats {
    /// First byte of the heap.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// Bytes handed out.
    pub used: u64,
    /// Bytes free.
    pub free: u64,
}

/// Picks the largest RAM range above the kernel image and gives it to the allocator.
pub fn init(info: &BootInfo) {
    let floor = kernel_image().end.next_multiple_of(4096);
    let best = info
        .memory
        .regions()
        .iter()
        .filter(|r| r.kind == MemoryKind::Ram)
        .map(|r| (r.start.max(floor).next_multiple_of(4096), r.end() & !4095))
        .filter(|(s, e)| s < e)
        .max_by_key(|(s, e)| e - s);
    let Some((start, end)) = best else {
        panic!("no RAM above the kernel image (ends at {floor:#x}) for the heap");
    };
    crate::arch::without_interrupts(|| {
        let mut heap = HEAP.0.lock();
        // SAFETY: [start, end) is RAM from the memory map, above the kernel image, identity-mapped by
        // paging::init, and used by nothing else (loader structures sit below the kernel and were
        // copied out); init is called once, before any allocation.
        unsafe { heap.init(start as *mut u8, (end - start) as usize) };
    });
}

/// Current heap figures.
pub fn stats() -> HeapStats {
    crate::arch::without_interrupts(|| {
        let heap = HEAP.0.lock();
        HeapStats {
            start: heap.bottom() as u64,
            size: heap.size() as u64,
            used: heap.used() as u64,
            free: heap.free() as u64,
        }
    })
}
