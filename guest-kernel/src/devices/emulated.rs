//! Platform glue for the drivers of emulated PC hardware in `pvkit_frontends::emulated`: finds each
//! device the way a PC operating system would (PCI class or ids, or the fixed ISA ports), hands its
//! driver port or MMIO access, and says which interrupt line it raises.
//!
//! | name | device | found at | interrupt |
//! | --- | --- | --- | --- |
//! | `ide` | ATA disk on the primary IDE channel, PIO | a PCI IDE controller (class 01:01; compatibility mode: ports 0x1f0/0x3f6, native mode: BAR 0/1), or the legacy ports without one | ISA IRQ 14 (edge), or the controller's INTx in native mode |
//! | `ahci` | ATA disk on an AHCI HBA, DMA | PCI class 01:06:01 (q35's ICH9 at 00:1f.2), BAR 5 | INTx (level) |
//! | `e1000` | Intel 82540EM | PCI 8086:100e, BAR 0 | INTx (level) |
//! | `uart` | 16550 as a console | COM2, ports 0x2f8..0x300 | ISA IRQ 3 (edge) |

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;

use pvkit_frontends::block::BlockDevice;
use pvkit_frontends::console::ConsoleDevice;
use pvkit_frontends::emulated::ahci::AhciDisk;
use pvkit_frontends::emulated::e1000::E1000;
use pvkit_frontends::emulated::ide::{IdeChannel, IdeDisk, PioWidth};
use pvkit_frontends::emulated::io::{Mmio, VolatileMmio};
use pvkit_frontends::emulated::uart16550::UartConsole;
use pvkit_frontends::net::NetDevice;
use pvkit_frontends::{Error, Result};

use super::IrqLine;
use crate::platform::pc::{self, PcPorts};
use crate::platform::{self, Platform};
use pvkit_frontends::pci::{BarKind, PciDevice};

/// COM2: the UART offered as a console device (COM1 is the kernel's own console).
pub const COM2_BASE: u16 = 0x2f8;
/// COM2's ISA IRQ.
const COM2_IRQ: u8 = 3;
/// The primary IDE channel's ISA IRQ in compatibility mode.
const IDE_PRIMARY_IRQ: u8 = 14;
/// PCI class code (class, subclass) of IDE controllers; prog-if bit 0 = primary channel native.
const CLASS_IDE: u32 = 0x0101;
const PROGIF_PRIMARY_NATIVE: u32 = 0x01;
/// PCI class code of AHCI 1.0 SATA controllers.
const CLASS_AHCI: u32 = 0x01_0601;
/// The 82540EM as QEMU's `e1000` presents it.
const E1000_ID: (u16, u16) = (0x8086, 0x100e);

/// A device opened by this module, with its interrupt line and a description for reports.
pub struct Opened<D: ?Sized> {
    /// The driver.
    pub dev: Box<D>,
    /// Where its interrupt arrives.
    pub line: Option<IrqLine>,
    /// Where the device was found and what it is (`pci=00:1f.2 ncq=1 qd=32 ...`).
    pub label: String,
}

impl<D: ?Sized> core::fmt::Debug for Opened<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Opened")
            .field("line", &self.line)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// A PCI memory BAR's registers, mapped uncached by platform init (identity mapping): the
/// drivers' [`VolatileMmio`] window, each access counted as a device exit
/// (`arch::x86_64::exits`).
#[derive(Debug, Clone)]
pub struct MmioWindow(VolatileMmio);

impl MmioWindow {
    /// The registers at `base..base + len`.
    ///
    /// # Safety
    /// The range is one device's register window, 4-byte aligned and mapped uncached, and the
    /// driver given this window is the only one driving that device.
    pub unsafe fn new(base: u64, len: usize) -> Self {
        let base = core::ptr::NonNull::new(base as *mut u8).expect("BAR at address 0");
        // SAFETY: forwarded from the caller: one device's window, mapped for the run, used only
        // through this value.
        Self(unsafe { VolatileMmio::new(base, len) })
    }
}

impl Mmio for MmioWindow {
    fn read32(&self, offset: usize) -> u32 {
        crate::arch::x86_64::exits::mmio(1);
        self.0.read32(offset)
    }

    fn write32(&self, offset: usize, value: u32) {
        crate::arch::x86_64::exits::mmio(1);
        self.0.write32(offset, value);
    }
}

fn pci_devices() -> Result<&'static [PciDevice]> {
    if platform::current() != Some(Platform::Pvh) {
        return Err(Error::Init {
            device: "pci",
            reason: "no PCI bus on this platform",
        });
    }
    pc::pci_devices().as_deref().map_err(|_| Error::Init {
        device: "pci",
        reason: "PCI enumeration failed at boot",
    })
}

fn memory_bar(dev: &PciDevice, index: u8, device: &'static str) -> Result<MmioWindow> {
    let bar = dev
        .bar(index)
        .filter(|b| b.kind != BarKind::Io)
        .ok_or(Error::Init {
            device,
            reason: "the expected memory BAR is missing",
        })?;
    // SAFETY: platform init assigned this BAR and mapped the PCI window uncached; the driver being
    // opened is the only user of the device (each open takes the device for itself).
    Ok(unsafe { MmioWindow::new(bar.addr, bar.size as usize) })
}

fn io_bar(dev: &PciDevice, index: u8) -> Option<u16> {
    dev.bar(index)
        .filter(|b| b.kind == BarKind::Io)
        .and_then(|b| u16::try_from(b.addr).ok())
}

/// Opens the ATA disk on the primary IDE channel, moving data `width` bits at a time, in blocks of
/// several sectors (READ/WRITE MULTIPLE) if `multiple` and the drive allows it.
pub fn open_ide(width: PioWidth, multiple: bool) -> Result<Opened<dyn BlockDevice>> {
    let controller = pci_devices()?.iter().find(|d| d.class >> 8 == CLASS_IDE);
    let (channel, line) = match controller {
        Some(d) if d.class & PROGIF_PRIMARY_NATIVE != 0 => {
            let (Some(cmd), Some(ctrl)) = (io_bar(d, 0), io_bar(d, 1)) else {
                return Err(Error::Init {
                    device: "ide",
                    reason: "native-mode IDE controller without I/O BARs 0 and 1",
                });
            };
            let channel = IdeChannel {
                command_base: cmd,
                control_base: ctrl + 2,
                drive: 0,
            };
            (channel, IrqLine::pci_intx(d))
        }
        // Compatibility mode, or no PCI controller at all (an ISA IDE): the legacy ports.
        _ => (IdeChannel::PRIMARY_MASTER, Some(IrqLine::isa(IDE_PRIMARY_IRQ))),
    };
    // SAFETY: the primary IDE channel's ports belong to this driver alone.
    let mut disk = IdeDisk::probe(unsafe { PcPorts::new() }, channel, super::dma())?;
    disk.set_pio_width(width);
    disk.set_multiple(multiple);
    let block = if multiple {
        disk.multiple_block().unwrap_or(1)
    } else {
        1
    };
    let id = disk.identify();
    let label = format!(
        "ports={:#x}/{:#x} pio={} sectors_per_block={block} sectors={} lba48={} model=\"{}\"",
        channel.command_base,
        channel.control_base,
        if width == PioWidth::Bits32 { 32 } else { 16 },
        id.sectors,
        u8::from(id.lba48),
        id.model.as_str()
    );
    Ok(Opened {
        dev: Box::new(disk),
        line,
        label,
    })
}

/// Opens the first ATA disk on the AHCI controller; `allow_ncq` false keeps it to one non-queued
/// command at a time.
pub fn open_ahci(allow_ncq: bool) -> Result<Opened<dyn BlockDevice>> {
    let absent = Error::Absent { device: "ahci" };
    let d = pci_devices()?
        .iter()
        .find(|d| d.class == CLASS_AHCI)
        .ok_or(absent)?;
    let disk = AhciDisk::probe(memory_bar(d, 5, "ahci")?, super::dma(), allow_ncq)?;
    let label = format!(
        "pci={} sectors={} ncq={} qd={} model=\"{}\"",
        d.bdf,
        disk.identify().sectors,
        u8::from(disk.uses_ncq()),
        disk.info().max_in_flight,
        disk.identify().model.as_str()
    );
    Ok(Opened {
        dev: Box::new(disk),
        line: IrqLine::pci_intx(d),
        label,
    })
}

/// Opens the first 82540EM.
pub fn open_e1000() -> Result<Opened<dyn NetDevice>> {
    let d = pci_devices()?
        .iter()
        .find(|d| (d.vendor_id, d.device_id) == E1000_ID)
        .ok_or(Error::Absent { device: "e1000" })?;
    let nic = E1000::new(memory_bar(d, 0, "e1000")?, super::dma())?;
    let m = nic.mac();
    let label = format!(
        "pci={} mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} link={}",
        d.bdf,
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5],
        if nic.link_up() { "up" } else { "down" }
    );
    Ok(Opened {
        dev: Box::new(nic),
        line: IrqLine::pci_intx(d),
        label,
    })
}

/// Opens COM2 as a console device.
pub fn open_uart() -> Result<Opened<dyn ConsoleDevice>> {
    if platform::current() != Some(Platform::Pvh) {
        return Err(Error::Absent { device: "uart" });
    }
    // SAFETY: COM2's ports belong to this driver alone (the kernel console is COM1).
    let uart = UartConsole::new(unsafe { PcPorts::new() }, COM2_BASE)?;
    Ok(Opened {
        dev: Box::new(uart),
        line: Some(IrqLine::isa(COM2_IRQ)),
        label: format!("ports={COM2_BASE:#x}"),
    })
}
