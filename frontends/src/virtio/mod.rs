//! virtio frontends over modern virtio-pci, built on the `virtio-drivers` crate.
//!
//! - [`VirtioPlatform`] is what a kernel implements for these drivers: its DMA allocator and how
//!   device registers are mapped. [`VirtioHal`] turns it into the crate's `Hal` (which the crate calls
//!   without an instance, hence a type-level trait).
//! - [`transport::VirtioPci`] wraps the crate's `PciTransport` and removes the cost of its `notify()`
//!   (three register accesses per kick) when asked to ([`transport::NotifyMode::Cached`]).
//! - [`blk::VirtioBlk`], [`net::VirtioNet`] and [`console::VirtioConsole`] implement this crate's
//!   device traits. All three sit on the crate's split `VirtQueue` and its PCI transport, not on its
//!   device drivers: its block driver has a fixed 16-entry queue (too small for 32 requests in
//!   flight), its console driver blocks without a timeout, and all of them decide kicks with
//!   `VirtQueue::should_notify`, which is not wrap-safe (see [`transport::NotifyMode::Exact`]).
//!
//! EVENT_IDX (`VIRTIO_F_RING_EVENT_IDX`) is negotiated by all three when the device offers it.

pub mod blk;
pub mod console;
#[cfg(any(test, feature = "test-utils"))]
pub mod fake;
pub mod net;
mod pair;
pub mod transport;

use core::marker::PhantomData;
use core::ptr::NonNull;

use virtio_drivers::{BufferDirection, Hal, PhysAddr};

use crate::dma::{DmaAllocator, DmaRegion};

/// What the virtio drivers take from the platform. Type-level (no instance), because
/// `virtio-drivers` calls its `Hal` that way; a kernel implements it on a unit type.
///
/// # Safety
///
/// The crate puts its queues in memory from [`dma`](Self::dma) and lets the device write them, and
/// accesses device registers where [`mmio_phys_to_virt`](Self::mmio_phys_to_virt) says they are. So
/// `dma` must return an allocator that honours [`DmaAllocator`]'s contract (the same one every
/// time), and `mmio_phys_to_virt` must return a mapping, valid for the rest of the program, of the
/// `size` bytes of device memory at physical address `paddr`, mapped so that volatile accesses reach
/// the device (uncached).
pub unsafe trait VirtioPlatform: 'static {
    /// The DMA allocator for queues and buffers.
    fn dma() -> &'static dyn DmaAllocator;

    /// The CPU's address of the device memory at `paddr` (a BAR or a capability inside one).
    ///
    /// # Safety
    /// `paddr..paddr + size` is device memory of a device the caller drives (the crate passes
    /// capability regions of the function it was given).
    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8>;
}

/// `virtio-drivers`' `Hal` on a [`VirtioPlatform`].
pub struct VirtioHal<P>(PhantomData<P>);

impl<P> core::fmt::Debug for VirtioHal<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("VirtioHal")
    }
}

// SAFETY: dma_alloc hands out regions from the platform's DmaAllocator, whose contract gives zeroed,
// page-aligned, exclusive memory a device reaches at the bus address returned; dma_dealloc gives back
// exactly what dma_alloc returned; share returns the allocator's bus address of the buffer (or
// panics); mmio_phys_to_virt is the platform's mapping (VirtioPlatform's contract).
unsafe impl<P: VirtioPlatform> Hal for VirtioHal<P> {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match P::dma().alloc_pages(pages) {
            Some(r) => (r.bus, r.virt),
            // The crate turns a zero physical address into Error::DmaError.
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: the crate passes back exactly what dma_alloc returned, once.
        unsafe {
            P::dma().free_pages(DmaRegion {
                bus: paddr,
                virt: vaddr,
                pages,
            })
        };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        // SAFETY: forwarded: the crate maps a region of the device it drives.
        unsafe { P::mmio_phys_to_virt(paddr, size) }
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let virt = buffer.as_ptr().cast::<u8>();
        P::dma()
            .bus_address(virt)
            .unwrap_or_else(|| panic!("buffer at {virt:p} is not reachable by DMA"))
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {
        // Buffers are shared in place; nothing to copy back.
    }
}

impl From<virtio_drivers::Error> for crate::Error {
    fn from(e: virtio_drivers::Error) -> Self {
        crate::Error::Virtio(e)
    }
}
