//! Device drivers. Each keeps its device logic behind a small access trait (config-space access
//! here) so the same driver works over another transport later: the PCI code will also run over
//! ECAM. The 16550 driver lives in `pvkit_frontends::emulated::uart16550` with the other drivers
//! for emulated hardware.

pub mod pci;
