//! Booting machines in QEMU: the device table (`device`), the machine and its command line
//! (`machine`), and the one runner every QEMU process goes through (`runner`).

mod device;
mod machine;
mod runner;

pub use device::*;
pub use machine::*;
pub use runner::*;

/// The QEMU binary xtask uses unless `PVKIT_QEMU` names another.
pub const QEMU: &str = "qemu-system-x86_64";
/// The qboot firmware, which boots a PVH `-kernel` much faster than SeaBIOS.
pub const QBOOT: &str = "/usr/share/qemu/qboot.rom";
/// Guest RAM.
pub const MEMORY_MIB: u32 = 128;

/// PCI functions a q35 machine has even with `-nodefaults` (checked with QEMU 10's `info pci`): host
/// bridge, ICH9 LPC/ISA bridge, ICH9 AHCI, ICH9 SMBus.
pub const Q35_BUILTIN_PCI: &[&str] = &["8086:29c0", "8086:2918", "8086:2922", "8086:2930"];
