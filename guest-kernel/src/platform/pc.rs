//! The PC platform (QEMU q35, qboot or SeaBIOS, entered through PVH).
//!
//! Console: 16550 on COM1 (0x3f8, 115200 8N1). Exit: QEMU's `isa-debug-exit` at port 0xf4.
//! Interrupts: legacy PIC masked; local APIC + IOAPIC (0xfec00000). Buses: PCI through ports
//! 0xcf8/0xcfc with BARs assigned by us (qboot assigns none).

use alloc::vec::Vec;

use crate::arch::x86_64::{apic, gdt, idt, paging, pic, port};
use crate::boot::{BootInfo, MemoryKind, MemoryMap};
use crate::error::Result;
use pvkit_frontends::emulated::io::PortIo;
use pvkit_frontends::emulated::uart16550::{PortUart, Uart16550};
use pvkit_frontends::pci::{self, Bdf, ConfigAccess, PciDevice};

/// COM1's I/O base.
pub const COM1_BASE: u16 = 0x3f8;
/// QEMU `isa-debug-exit` port (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Baud rate of the console.
pub const CONSOLE_BAUD: u32 = 115_200;

/// Port I/O for the drivers in `pvkit_frontends::emulated` (each gets this with its device's ports).
#[derive(Debug, Clone, Copy)]
pub struct PcPorts {
    _private: (),
}

impl PcPorts {
    /// Port access for one driver.
    ///
    /// # Safety
    /// The driver this is given owns the device behind the ports it addresses (it only touches its
    /// own device's registers), and nothing else drives that device at the same time.
    pub const unsafe fn new() -> Self {
        Self { _private: () }
    }
}

impl PortIo for PcPorts {
    fn read8(&self, port: u16) -> u8 {
        // SAFETY: `new`'s contract: the driver owns the device behind `port`.
        unsafe { port::inb(port) }
    }

    fn write8(&self, port: u16, value: u8) {
        // SAFETY: as for read8.
        unsafe { port::outb(port, value) }
    }

    fn read16(&self, port: u16) -> u16 {
        // SAFETY: as for read8.
        unsafe { port::inw(port) }
    }

    fn write16(&self, port: u16, value: u16) {
        // SAFETY: as for read8.
        unsafe { port::outw(port, value) }
    }

    fn read32(&self, port: u16) -> u32 {
        // SAFETY: as for read8.
        unsafe { port::inl(port) }
    }

    fn write32(&self, port: u16, value: u32) {
        // SAFETY: as for read8.
        unsafe { port::outl(port, value) }
    }

    fn read16_rep(&self, port: u16, buf: &mut [u8]) {
        // SAFETY: as for read8; the words land in `buf`.
        unsafe { port::insw(port, buf) }
    }

    fn write16_rep(&self, port: u16, buf: &[u8]) {
        // SAFETY: as for read8.
        unsafe { port::outsw(port, buf) }
    }

    fn read32_rep(&self, port: u16, buf: &mut [u8]) {
        // SAFETY: as for read8; the dwords land in `buf`.
        unsafe { port::insl(port, buf) }
    }

    fn write32_rep(&self, port: u16, buf: &[u8]) {
        // SAFETY: as for read8.
        unsafe { port::outsl(port, buf) }
    }
}

/// The console UART's register access.
pub type ConsoleUart = Uart16550<PortUart<PcPorts>>;

/// PCI configuration mechanism #1: address to 0xcf8, data through 0xcfc..0xcff.
#[derive(Debug, Clone, Copy)]
pub struct PortPciConfig;

const PCI_ADDRESS: u16 = 0xcf8;
const PCI_DATA: u16 = 0xcfc;
/// The address/data pair must not be interleaved.
static PCI_LOCK: spin::Mutex<()> = spin::Mutex::new(());

impl PortPciConfig {
    fn select(bdf: Bdf, offset: u8) {
        let addr = 0x8000_0000
            | u32::from(bdf.bus) << 16
            | u32::from(bdf.device & 0x1f) << 11
            | u32::from(bdf.function & 0x7) << 8
            | u32::from(offset & 0xfc);
        // SAFETY: 0xcf8 is the PCI host bridge's config address register, owned by the platform;
        // writing it only selects a register (callers hold PCI_LOCK).
        unsafe { port::outl(PCI_ADDRESS, addr) };
    }

    fn locked<T>(f: impl FnOnce() -> T) -> T {
        crate::arch::without_interrupts(|| {
            let _guard = PCI_LOCK.lock();
            f()
        })
    }
}

impl ConfigAccess for PortPciConfig {
    fn read32(&self, bdf: Bdf, offset: u8) -> u32 {
        Self::locked(|| {
            Self::select(bdf, offset);
            // SAFETY: config data port; reads the register just selected.
            unsafe { port::inl(PCI_DATA) }
        })
    }

    fn write32(&self, bdf: Bdf, offset: u8, value: u32) {
        Self::locked(|| {
            Self::select(bdf, offset);
            // SAFETY: config data port; writes the register just selected (the caller decides what
            // the device should see).
            unsafe { port::outl(PCI_DATA, value) }
        });
    }

    fn read16(&self, bdf: Bdf, offset: u8) -> u16 {
        Self::locked(|| {
            Self::select(bdf, offset);
            // SAFETY: as in read32, 16-bit half selected by offset bit 1.
            unsafe { port::inw(PCI_DATA + u16::from(offset & 2)) }
        })
    }

    fn write16(&self, bdf: Bdf, offset: u8, value: u16) {
        Self::locked(|| {
            Self::select(bdf, offset);
            // SAFETY: as in write32, 16-bit half selected by offset bit 1.
            unsafe { port::outw(PCI_DATA + u16::from(offset & 2), value) }
        });
    }
}

// SAFETY: COM1 belongs to the console alone.
static COM1: ConsoleUart = Uart16550::new(PortUart::new(unsafe { PcPorts::new() }, COM1_BASE));

/// PCI enumeration result, kept for whoever needs the devices (the `pci` self-test, later drivers).
static PCI: spin::Once<Result<Vec<PciDevice>>> = spin::Once::new();

/// Console first: everything after it can report.
pub fn early_init() {
    COM1.init(CONSOLE_BAUD);
}

/// The console UART (COM1), for tests that exercise the driver itself.
pub fn console_uart() -> &'static ConsoleUart {
    &COM1
}

/// Writes bytes to COM1.
pub fn console_write(bytes: &[u8]) {
    COM1.write_bytes(bytes);
}

/// Brings up CPU tables, memory, interrupt controllers and PCI.
pub fn init(info: &'static BootInfo) {
    gdt::init();
    idt::init();
    paging::init(&info.memory).unwrap_or_else(|e| panic!("page tables: {e}"));
    crate::heap::init(info);
    pic::disable();
    apic::init().unwrap_or_else(|e| panic!("APIC: {e}"));
    crate::arch::x86_64::cpu::enable_interrupts();
    PCI.call_once(|| {
        let mut window = pci::Windows::pc(top_low_ram(&info.memory));
        let found = pci::enumerate(&PortPciConfig, &mut window)?;
        if let Some(range) = window.mem_used() {
            paging::map_mmio(range.start, range.end - range.start)?;
        }
        Ok(found)
    });
}

/// The end of the highest RAM, ACPI or NVS region starting below the PCI memory window's end: PCI
/// memory is allocated above it.
fn top_low_ram(map: &MemoryMap) -> u64 {
    map.regions()
        .iter()
        .filter(|r| matches!(r.kind, MemoryKind::Ram | MemoryKind::Acpi | MemoryKind::Nvs))
        .filter(|r| r.start < pci::MEM_WINDOW_END)
        .map(|r| r.end())
        .max()
        .unwrap_or(0)
}

/// The PCI devices found (and configured) at boot, or why enumeration failed.
pub fn pci_devices() -> &'static Result<Vec<PciDevice>> {
    PCI.get().expect("pci_devices() called before platform init")
}

/// The IOAPIC input a PCI function's INTx arrives on, on QEMU's q35: root-bus slot `s` with pin `p`
/// (after bridge swizzling) goes to PIRQ E..H as `(s + p) % 4` (QEMU's ICH9 default routing, which
/// its ACPI `_PRT` describes), except the chipset's own slots 25..=31 (AHCI and SMBus at 31, ...),
/// whose D25IR..D31IR registers default to INTA..INTD -> PIRQ A..D. PIRQ A..H are IOAPIC inputs
/// 16..23. Level-triggered; QEMU's tables call them active-high.
pub fn pci_intx_gsi(dev: &PciDevice) -> Option<u32> {
    let (slot, pin) = dev.intx_root?;
    if (ICH9_FIRST_IR_SLOT..=31).contains(&slot) {
        return Some(PIRQ_A_GSI + u32::from(pin) % 4);
    }
    Some(PIRQ_E_GSI + (u32::from(slot) + u32::from(pin)) % 4)
}

/// GSI of ICH9's PIRQ A.
const PIRQ_A_GSI: u32 = 16;
/// GSI of ICH9's PIRQ E.
const PIRQ_E_GSI: u32 = 20;
/// The lowest root-bus slot with an ICH9 interrupt-route register (D25IR).
const ICH9_FIRST_IR_SLOT: u8 = 25;

/// Powers off through `isa-debug-exit` (QEMU exits with `(code << 1) | 1`). If that device is
/// absent the write is ignored and the CPU halts for good.
pub fn exit(code: u8) -> ! {
    // SAFETY: port 0xf4 is QEMU's isa-debug-exit (or nothing); writing it ends the VM or is ignored.
    unsafe { port::outl(DEBUG_EXIT_PORT, u32::from(code)) };
    crate::arch::halt_forever()
}
