//! Device drivers. Each keeps its device logic behind a small access trait (register or config-space
//! access) so the same driver works over port I/O today and over another transport later: the
//! 16550 driver is the one the emulated-UART console device will use, the PCI code will also run over
//! ECAM.

pub mod pci;
pub mod uart16550;
