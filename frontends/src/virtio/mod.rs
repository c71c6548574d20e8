//! virtio frontends over modern virtio-pci, built on the `virtio-drivers` crate.
//!
//! - [`VirtioHal`] implements the crate's `Hal` on the platform's [`crate::dma`] allocator.
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

use core::ptr::NonNull;

use virtio_drivers::{BufferDirection, Hal, PhysAddr};

use crate::dma::{self, DmaRegion};

/// `virtio-drivers`' `Hal` on the registered [`crate::dma::DmaAllocator`].
///
/// MMIO: BARs are reached at their physical address; the PC platform maps its whole PCI memory
/// window 1:1 (virtio-pci only exists there).
#[derive(Debug)]
pub struct VirtioHal;

// SAFETY: dma_alloc hands out regions from the DmaAllocator, whose contract gives zeroed,
// page-aligned, exclusive memory; share returns the allocator's bus address of the buffer;
// mmio_phys_to_virt returns the identity mapping the platform set up for PCI BARs.
unsafe impl Hal for VirtioHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match dma::allocator().ok().and_then(|a| a.alloc_pages(pages)) {
            Some(r) => (r.bus, r.virt),
            // The crate turns a zero physical address into Error::DmaError.
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        match dma::allocator() {
            Ok(a) => {
                // SAFETY: the crate passes back exactly what dma_alloc returned, once.
                unsafe {
                    a.free_pages(DmaRegion {
                        bus: paddr,
                        virt: vaddr,
                        pages,
                    })
                };
                0
            }
            Err(_) => -1,
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("BAR at physical address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let virt = buffer.as_ptr().cast::<u8>();
        dma::allocator()
            .ok()
            .and_then(|a| a.bus_address(virt))
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
