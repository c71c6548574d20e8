//! The platform side of the frontends crate's device drivers: DMA memory, the waiter, interrupt
//! binding, and the openers that find a device on the bus and hand back a driver.
//!
//! - [`KernelDma`]: DMA buffers from the kernel heap (identity-mapped, so bus address == virtual
//!   address on the PC platform; drivers do not rely on that).
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

use pvkit_frontends::dma::{self, DmaAllocator, DmaRegion, PAGE_SIZE};
use pvkit_frontends::wait::{SharedIrqAck, WaitMode, Waiter};

use crate::arch::x86_64::interrupts::{self, Polarity, Trigger};
use crate::arch::x86_64::{apic, cpu, timer};
use crate::drivers::pci::PciDevice;
use crate::platform::pc;

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

/// Registers [`KernelDma`] (idempotent).
pub fn init_dma() {
    // A second registration fails harmlessly: it is this same allocator.
    let _ = dma::set_allocator(&KERNEL_DMA);
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

/// An interrupt input: GSI with its trigger mode and polarity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqLine {
    /// IOAPIC input.
    pub gsi: u32,
    /// Edge (ISA) or level (PCI INTx).
    pub trigger: Trigger,
    /// Polarity.
    pub polarity: Polarity,
}

impl IrqLine {
    /// A PCI function's INTx line (level-triggered), if it has one.
    pub fn pci_intx(dev: &PciDevice) -> Option<Self> {
        Some(Self {
            gsi: pc::pci_intx_gsi(dev)?,
            trigger: Trigger::Level,
            polarity: Polarity::ActiveHigh,
        })
    }

    /// An ISA IRQ (edge-triggered, active high; ISA IRQ n is GSI n on q35 except IRQ 0).
    #[allow(dead_code, reason = "for the emulated ISA devices (IDE IRQ 14, COM2 IRQ 3)")]
    pub fn isa(irq: u8) -> Self {
        let gsi = if irq == 0 { 2 } else { u32::from(irq) };
        Self {
            gsi,
            trigger: Trigger::Edge,
            polarity: Polarity::ActiveHigh,
        }
    }
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
    if let Err(e) = interrupts::route_gsi(line.gsi, vector, line.trigger, line.polarity) {
        drop(IrqBinding { line, vector });
        return Err(alloc::format!("routing GSI {}: {e}", line.gsi));
    }
    // A level-triggered line that was already asserted while its IOAPIC entry was still the masked
    // edge entry of boot time was ignored (an IOAPIC drops edge requests on masked pins), and it will
    // not rise again until the device is acknowledged: acknowledge once now, so the next assertion is
    // seen. Nothing is lost: waiting code polls the device before it sleeps.
    if let Some((_, ack)) =
        cpu::without_interrupts(|| ACKS.lock().iter().find(|(v, _)| *v == vector).cloned())
    {
        ack.ack();
    }
    Ok(IrqBinding { line, vector })
}

impl Drop for IrqBinding {
    fn drop(&mut self) {
        let _ = interrupts::mask_gsi(self.line.gsi);
        interrupts::unregister_handler(self.vector);
        let vector = self.vector;
        cpu::without_interrupts(|| ACKS.lock().retain(|(v, _)| *v != vector));
    }
}
