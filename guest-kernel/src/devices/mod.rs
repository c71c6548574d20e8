//! The platform side of the frontends crate's device drivers: DMA memory, the waiter, interrupt
//! binding, and the openers that find a device on the bus and hand back a driver. The kernel only
//! implements the drivers' traits and passes the implementations in; no driver reaches a global.
//!
//! - [`KernelDma`]: DMA buffers from the kernel heap (identity-mapped, so bus address == virtual
//!   address on the PC platform; drivers do not rely on that), handed to every driver as [`dma()`].
//! - [`KernelVirtio`]: the kernel as the virtio drivers' platform (that allocator, PCI BARs mapped
//!   1:1 by platform init).
//! - [`KernelWaiter`]: the TSC clock; in interrupt mode `idle` halts (`sti; hlt`, race-free) until an
//!   interrupt, with the local APIC timer ticking at [`WAKE_HZ`] so timeouts are still noticed.
//! - [`bind_irq`]: routes a device's interrupt line to a vector whose handler calls the driver's
//!   [`IrqAck`](pvkit_frontends::wait::IrqAck).

pub mod emulated;
pub mod virtio;

use alloc::string::String;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::ptr::NonNull;

use pvkit_frontends::dma::{DmaAllocator, DmaRegion, PAGE_SIZE};
use pvkit_frontends::virtio::VirtioPlatform;
use pvkit_frontends::wait::{SharedIrqAck, WaitMode, Waiter};

use crate::arch::x86_64::interrupts::{self, Polarity, Trigger};
use crate::arch::x86_64::{apic, cpu, timer};
use crate::platform::pc::{self, PortPciConfig};
use pvkit_frontends::pci::{BarKind, Bdf, ConfigAccess, PciDevice};

/// DMA memory from the kernel heap.
#[derive(Debug)]
pub struct KernelDma;

fn page_layout(pages: usize) -> Layout {
    Layout::from_size_align(pages.max(1) * PAGE_SIZE, PAGE_SIZE).expect("page-aligned layout")
}

// SAFETY: alloc_zeroed with a page-aligned layout returns zeroed, aligned, exclusive heap memory; the
// heap is identity-mapped RAM (virt == phys, see README "Memory layout"), so a device reaches each
// byte at its virtual address and a heap block is physically contiguous.
unsafe impl DmaAllocator for KernelDma {
    fn alloc_pages(&self, pages: usize) -> Option<DmaRegion> {
        // SAFETY: the layout has non-zero size.
        let virt = NonNull::new(unsafe { alloc::alloc::alloc_zeroed(page_layout(pages)) })?;
        Some(DmaRegion {
            bus: virt.as_ptr() as u64,
            virt,
            pages,
        })
    }

    unsafe fn free_pages(&self, region: DmaRegion) {
        // SAFETY: the caller returns a region from alloc_pages, allocated with this layout.
        unsafe { alloc::alloc::dealloc(region.virt.as_ptr(), page_layout(region.pages)) }
    }

    fn bus_address(&self, virt: *const u8) -> Option<u64> {
        // Everything the kernel can address is identity-mapped.
        Some(virt as u64)
    }

    fn virt_address(&self, bus: u64) -> Option<NonNull<u8>> {
        NonNull::new(bus as *mut u8)
    }
}

static KERNEL_DMA: KernelDma = KernelDma;

/// The kernel's DMA allocator, as drivers are given it.
pub fn dma() -> &'static dyn DmaAllocator {
    &KERNEL_DMA
}

/// The kernel as the virtio drivers' platform.
#[derive(Debug)]
pub struct KernelVirtio;

// SAFETY: KERNEL_DMA honours DmaAllocator's contract (see its impl); platform init maps the whole PCI
// memory window 1:1 and uncached (virtio-pci only exists on the PC platform), so a BAR's physical
// address is where the CPU reaches it, for the rest of the run.
unsafe impl VirtioPlatform for KernelVirtio {
    fn dma() -> &'static dyn DmaAllocator {
        &KERNEL_DMA
    }

    unsafe fn mmio_phys_to_virt(paddr: u64, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("BAR at physical address 0")
    }
}

/// Local APIC timer rate while an interrupt-mode waiter exists: the longest a missed deadline can
/// go unnoticed.
pub const WAKE_HZ: u64 = 100;

fn on_wake_tick(_: u8) {}

/// The kernel's [`Waiter`].
#[derive(Debug)]
pub struct KernelWaiter {
    mode: WaitMode,
    tsc_hz: u64,
}

impl KernelWaiter {
    /// A waiter in `mode`. Interrupt mode starts the local APIC timer (a wake-up tick) until drop.
    pub fn new(mode: WaitMode) -> Result<Self, String> {
        let cal = timer::calibration().map_err(|e| alloc::format!("timer calibration: {e}"))?;
        if mode == WaitMode::Interrupt {
            interrupts::register_handler(interrupts::TIMER_VECTOR, on_wake_tick)
                .map_err(|e| alloc::format!("wake-up tick: {e}"))?;
            let initial = (cal.lapic_hz / WAKE_HZ).clamp(1, u64::from(u32::MAX)) as u32;
            apic::timer_start(initial, Some(interrupts::TIMER_VECTOR));
        }
        Ok(Self {
            mode,
            tsc_hz: cal.tsc_hz,
        })
    }
}

impl Drop for KernelWaiter {
    fn drop(&mut self) {
        if self.mode == WaitMode::Interrupt {
            apic::timer_stop();
            interrupts::unregister_handler(interrupts::TIMER_VECTOR);
        }
    }
}

impl Waiter for KernelWaiter {
    fn now_us(&self) -> u64 {
        crate::time::ticks_to_us(crate::arch::read_tsc(), self.tsc_hz)
    }

    fn now_ns(&self) -> u64 {
        crate::time::ticks_to_ns(crate::arch::read_tsc(), self.tsc_hz)
    }

    fn mode(&self) -> WaitMode {
        self.mode
    }

    fn idle(&self, ready: &mut dyn FnMut() -> bool) -> bool {
        match self.mode {
            WaitMode::Poll => {
                let r = ready();
                if !r {
                    core::hint::spin_loop();
                }
                r
            }
            WaitMode::Interrupt => {
                // Check with interrupts off, then `sti; hlt` in one go: an interrupt that arrives after
                // the check is taken at the `hlt` and ends it, so no wake-up is lost.
                cpu::disable_interrupts();
                let r = ready();
                if r {
                    cpu::enable_interrupts();
                } else {
                    cpu::enable_interrupts_and_halt();
                }
                r
            }
        }
    }
}

/// Where a device's interrupt comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqLine {
    /// An IOAPIC input.
    Gsi {
        /// IOAPIC input.
        gsi: u32,
        /// Edge (ISA) or level (PCI INTx).
        trigger: Trigger,
        /// Polarity.
        polarity: Polarity,
    },
    /// An MSI-X table entry of a PCI function: a message written straight to the local APIC.
    Msix {
        /// The function (its MSI-X capability is enabled on bind).
        bdf: Bdf,
        /// Config-space offset of the MSI-X capability.
        cap: u8,
        /// Address of the table entry (inside a mapped BAR).
        entry_addr: u64,
    },
}

/// PCI capability id of MSI-X.
const PCI_CAP_MSIX: u8 = 0x11;
/// Status register bit: the capability list is valid.
const PCI_STATUS_CAP_LIST: u16 = 1 << 4;
/// MSI-X message control bits.
const MSIX_ENABLE: u16 = 1 << 15;
const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// Local APIC message address (fixed delivery, physical destination in bits 19:12).
const MSI_ADDRESS_BASE: u32 = 0xfee0_0000;

impl IrqLine {
    /// A PCI function's INTx line (level-triggered), if it has one.
    pub fn pci_intx(dev: &PciDevice) -> Option<Self> {
        Some(Self::Gsi {
            gsi: pc::pci_intx_gsi(dev)?,
            trigger: Trigger::Level,
            polarity: Polarity::ActiveHigh,
        })
    }

    /// An ISA IRQ (edge-triggered, active high; ISA IRQ n is GSI n on q35 except IRQ 0).
    #[allow(dead_code, reason = "for the emulated ISA devices (IDE IRQ 14, COM2 IRQ 3)")]
    pub fn isa(irq: u8) -> Self {
        let gsi = if irq == 0 { 2 } else { u32::from(irq) };
        Self::Gsi {
            gsi,
            trigger: Trigger::Edge,
            polarity: Polarity::ActiveHigh,
        }
    }

    /// MSI-X table entry `entry` of `dev`, if it has an MSI-X capability with that many entries and
    /// its table lies in an assigned memory BAR.
    pub fn pci_msix(dev: &PciDevice, entry: u16) -> Option<Self> {
        let cfg = PortPciConfig;
        if cfg.read16(dev.bdf, 0x06) & PCI_STATUS_CAP_LIST == 0 {
            return None;
        }
        let mut at = cfg.read32(dev.bdf, 0x34) as u8 & 0xfc;
        // At most 48 capabilities fit in config space: a loop in a hostile list ends here.
        for _ in 0..48 {
            if at < 0x40 {
                return None;
            }
            let header = cfg.read32(dev.bdf, at);
            if header as u8 == PCI_CAP_MSIX {
                let size = ((header >> 16) as u16 & 0x7ff) + 1;
                let table = cfg.read32(dev.bdf, at + 4);
                let bar = dev.bar((table & 7) as u8).filter(|b| b.kind != BarKind::Io)?;
                let offset = u64::from(table & !7) + 16 * u64::from(entry);
                if entry >= size || offset + 16 > bar.size {
                    return None;
                }
                return Some(Self::Msix {
                    bdf: dev.bdf,
                    cap: at,
                    entry_addr: bar.addr + offset,
                });
            }
            at = (header >> 8) as u8 & 0xfc;
        }
        None
    }
}

fn mmio_write32(addr: u64, value: u32) {
    // SAFETY: `addr` is an MSI-X table entry word inside a memory BAR that platform init mapped
    // uncached (checked against the BAR's size in pci_msix); writing it only affects that device.
    unsafe { crate::arch::x86_64::mmio::write32(addr, value) }
}

/// Acks registered per vector. Changed only with interrupts off (single CPU), so the handler never
/// finds the lock taken.
static ACKS: spin::Mutex<Vec<(u8, SharedIrqAck)>> = spin::Mutex::new(Vec::new());

fn on_device_irq(vector: u8) {
    let acks = ACKS.lock();
    for (_, ack) in acks.iter().filter(|(v, _)| *v == vector) {
        ack.ack();
    }
}

/// A routed device interrupt; unrouted on drop.
#[derive(Debug)]
pub struct IrqBinding {
    line: IrqLine,
    vector: u8,
}

/// Routes `line` to a fresh vector whose handler calls `ack`.
pub fn bind_irq(line: IrqLine, ack: SharedIrqAck) -> Result<IrqBinding, String> {
    let vector = interrupts::alloc_vector(on_device_irq).map_err(|e| alloc::format!("vector: {e}"))?;
    cpu::without_interrupts(|| ACKS.lock().push((vector, ack)));
    let (gsi, trigger, polarity) = match line {
        IrqLine::Gsi {
            gsi,
            trigger,
            polarity,
        } => (gsi, trigger, polarity),
        IrqLine::Msix { bdf, cap, entry_addr } => {
            // Table entry: address, upper address, data (the vector: fixed delivery, edge), then
            // vector control 0 (unmasked); then enable MSI-X with the function unmasked.
            mmio_write32(entry_addr, MSI_ADDRESS_BASE | (apic::lapic_id() << 12));
            mmio_write32(entry_addr + 4, 0);
            mmio_write32(entry_addr + 8, u32::from(vector));
            mmio_write32(entry_addr + 12, 0);
            let control = PortPciConfig.read16(bdf, cap + 2);
            PortPciConfig.write16(bdf, cap + 2, (control | MSIX_ENABLE) & !MSIX_FUNCTION_MASK);
            return Ok(IrqBinding { line, vector });
        }
    };
    if let Err(e) = interrupts::route_gsi(gsi, vector, trigger, polarity) {
        drop(IrqBinding { line, vector });
        return Err(alloc::format!("routing GSI {gsi}: {e}"));
    }
    // A level-triggered line that was already asserted while its IOAPIC entry was still the masked
    // edge entry of boot time was ignored (an IOAPIC drops edge requests on masked pins), and it will
    // not rise again until the device is acknowledged: acknowledge once now, so the next assertion is
    // seen. Nothing is lost: waiting code polls the device before it sleeps.
    if trigger == Trigger::Level
        && let Some((_, ack)) =
            cpu::without_interrupts(|| ACKS.lock().iter().find(|(v, _)| *v == vector).cloned())
    {
        ack.ack();
    }
    Ok(IrqBinding { line, vector })
}

impl Drop for IrqBinding {
    fn drop(&mut self) {
        match self.line {
            IrqLine::Gsi { gsi, .. } => {
                let _ = interrupts::mask_gsi(gsi);
            }
            IrqLine::Msix { bdf, cap, entry_addr } => {
                mmio_write32(entry_addr + 12, 1); // mask the entry
                let control = PortPciConfig.read16(bdf, cap + 2);
                PortPciConfig.write16(bdf, cap + 2, control & !MSIX_ENABLE);
            }
        }
        interrupts::unregister_handler(self.vector);
        let vector = self.vector;
        cpu::without_interrupts(|| ACKS.lock().retain(|(v, _)| *v != vector));
    }
}
