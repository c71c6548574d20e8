//! Openers for the virtio-pci devices: find the function on the PCI bus, build the transport (with
//! the notify mode asked for) and initialise the driver.

use alloc::format;
use alloc::string::String;

use pvkit_frontends::Error;
use pvkit_frontends::virtio::blk::VirtioBlk;
use pvkit_frontends::virtio::console::VirtioConsole;
use pvkit_frontends::virtio::net::VirtioNet;
use pvkit_frontends::virtio::transport::{NotifyMode, VirtioPci};
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};

use super::{IrqLine, KernelVirtio};
use crate::platform::pc::{self, PortPciConfig};
use pvkit_frontends::pci::{Bdf, ConfigAccess, PciDevice};

/// virtio's PCI vendor id.
const VIRTIO_VENDOR: u16 = 0x1af4;

/// `virtio-drivers`' config-space access over the platform's port mechanism.
#[derive(Debug, Clone, Copy)]
pub struct PortCam;

fn bdf(df: DeviceFunction) -> Bdf {
    Bdf {
        bus: df.bus,
        device: df.device,
        function: df.function,
    }
}

impl ConfigurationAccess for PortCam {
    fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
        PortPciConfig.read32(bdf(df), offset)
    }

    fn write_word(&mut self, df: DeviceFunction, offset: u8, data: u32) {
        PortPciConfig.write32(bdf(df), offset, data)
    }

    unsafe fn unsafe_clone(&self) -> Self {
        Self
    }
}

/// The kinds of virtio device we drive: (name, transitional id, modern id).
const BLK: (&str, u16, u16) = ("virtio-blk", 0x1001, 0x1042);
const NET: (&str, u16, u16) = ("virtio-net", 0x1000, 0x1041);
const CONSOLE: (&str, u16, u16) = ("virtio-console", 0x1003, 0x1043);

/// The `index`-th function of `kind` in bus order.
fn find(kind: (&'static str, u16, u16), index: usize) -> Result<&'static PciDevice, Error> {
    let devices = pc::pci_devices()
        .as_ref()
        .map_err(|_| Error::Absent { device: kind.0 })?;
    devices
        .iter()
        .filter(|d| d.vendor_id == VIRTIO_VENDOR && (d.device_id == kind.1 || d.device_id == kind.2))
        .nth(index)
        .ok_or(Error::Absent { device: kind.0 })
}

fn transport(
    kind: (&'static str, u16, u16),
    index: usize,
    mode: NotifyMode,
) -> Result<(VirtioPci, &'static PciDevice), Error> {
    let d = find(kind, index)?;
    let df = DeviceFunction {
        bus: d.bdf.bus,
        device: d.bdf.device,
        function: d.bdf.function,
    };
    let traps = &crate::arch::x86_64::exits::EXITS;
    Ok((
        VirtioPci::new::<KernelVirtio, _>(PortCam, df, mode, kind.0, traps)?,
        d,
    ))
}

/// Parses the `notify=` parameter (default exact).
pub fn notify_mode(value: Option<&str>) -> Result<NotifyMode, String> {
    match value {
        None => Ok(NotifyMode::Exact),
        Some(v) => NotifyMode::parse(v).ok_or_else(|| format!("notify='{v}' is not stock, cached or exact")),
    }
}

/// Which interrupt a virtio device should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqKind {
    /// INTx through the IOAPIC; the handler reads the ISR.
    Intx,
    /// MSI-X table entry 0 for all queues; no ISR read.
    Msix,
}

impl IrqKind {
    /// Parses the `irq=` parameter (default msix).
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value {
            None | Some("msix") => Ok(Self::Msix),
            Some("intx") => Ok(Self::Intx),
            Some(v) => Err(format!("irq='{v}' is not intx or msix")),
        }
    }
}

/// The interrupt line for `d`: MSI-X entry 0 if asked for and `route` (the driver pointing its
/// queues at entry 0) succeeds, else INTx. Returns the line and its name for the label.
fn line_for(d: &PciDevice, kind: IrqKind, route: impl FnOnce() -> bool) -> (Option<IrqLine>, &'static str) {
    if kind == IrqKind::Msix
        && let Some(line) = IrqLine::pci_msix(d, 0)
        && route()
    {
        return (Some(line), "msix");
    }
    (IrqLine::pci_intx(d), "intx")
}

/// A virtio device opened for a workload, with its interrupt line and a description for reports.
#[derive(Debug)]
pub struct Opened<D> {
    /// The driver.
    pub dev: D,
    /// Its INTx line.
    pub line: Option<IrqLine>,
    /// `notify=<mode> event_idx=<0|1> pci=<bdf>`.
    pub label: String,
}

/// Opens the `index`-th virtio-blk device (0 = first in bus order).
pub fn open_blk(
    index: usize,
    mode: NotifyMode,
    irq: IrqKind,
) -> Result<Opened<VirtioBlk<KernelVirtio>>, Error> {
    let (t, d) = transport(BLK, index, mode)?;
    let mut dev = VirtioBlk::new(t)?;
    let (line, irq_name) = line_for(d, irq, || dev.use_msix(0));
    let label = format!(
        "notify={} event_idx={} irq={irq_name} pci={}",
        mode.name(),
        u8::from(dev.event_idx()),
        d.bdf
    );
    Ok(Opened { dev, line, label })
}

/// Opens the `index`-th virtio-net device.
pub fn open_net(
    index: usize,
    mode: NotifyMode,
    irq: IrqKind,
) -> Result<Opened<VirtioNet<KernelVirtio>>, Error> {
    let (t, d) = transport(NET, index, mode)?;
    let mut dev = VirtioNet::new(t)?;
    let (line, irq_name) = line_for(d, irq, || dev.use_msix(0));
    let label = format!(
        "notify={} event_idx={} irq={irq_name} pci={}",
        mode.name(),
        u8::from(dev.event_idx()),
        d.bdf
    );
    Ok(Opened { dev, line, label })
}

/// Opens the `index`-th virtio-console device (port 0).
pub fn open_console(
    index: usize,
    mode: NotifyMode,
    irq: IrqKind,
) -> Result<Opened<VirtioConsole<KernelVirtio>>, Error> {
    let (t, d) = transport(CONSOLE, index, mode)?;
    let mut dev = VirtioConsole::new(t)?;
    let (line, irq_name) = line_for(d, irq, || dev.use_msix(0));
    let label = format!("notify={} irq={irq_name} pci={}", mode.name(), d.bdf);
    Ok(Opened { dev, line, label })
}
