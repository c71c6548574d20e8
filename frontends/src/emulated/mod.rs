//! Drivers for QEMU's emulated legacy hardware, driven exactly as on a real PC (no hypervisor
//! awareness): an ATA disk on an IDE channel by PIO ([`ide`]), an ATA disk on an AHCI controller by
//! DMA ([`ahci`]), the Intel 82540EM gigabit NIC ([`e1000`]) and the 16550 UART ([`uart16550`],
//! also the kernel's own console). Register access goes through [`io::PortIo`] and [`io::Mmio`],
//! which the guest kernel implements.

pub mod ahci;
pub mod ata;
pub mod e1000;
pub mod ide;
pub mod io;
pub mod uart16550;
