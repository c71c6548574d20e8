//! pvkit guest kernel.
//!
//! One ELF, entered either through PVH (`XEN_ELFNOTE_PHYS32_ENTRY`, what QEMU's `-kernel` boots) or
//! through the classic Xen PV entry. Each entry builds a [`boot::BootInfo`], picks the
//! [`platform::Platform`] it belongs to and calls [`kernel_main`]. From there on the kernel is the same:
//! it brings the platform up, parses the command line and runs the named self-tests, reporting
//! `PVKIT ...` lines on the console (the contract is in `guest-kernel/README.md`).
//!
//! Layering: `arch` is the only place with `asm!`; device logic lives in `pvkit_frontends` behind
//! small register and config-space traits (PCI enumeration included), host-tested; `platform` ties a boot environment to its devices; `devices` and `xen`
//! implement the traits of `pvkit_frontends::platform` (DMA memory, event channels, grant frames,
//! the waiters, the virtio platform) and hand them to the drivers; `selftest` is the test runner
//! (its command line, parameters and result lines are `pvkit_frontends::runner`, host-tested);
//! `fatal` is the one way a run ends badly (exceptions and panics both land there).
#![no_std]
#![no_main]

extern crate alloc;

#[macro_use]
mod console;

mod arch;
mod boot;
mod devices;
mod error;
mod fatal;
mod heap;
mod hypervisor;
mod platform;
mod selftest;
mod time;
mod xen;

use crate::boot::BootInfo;

/// The platform-independent part of boot. Called once by an entry (`arch::x86_64::boot::*`) after it
/// has filled in [`BootInfo`] and selected the platform (so the console already works).
pub fn kernel_main(info: &'static BootInfo) -> ! {
    boot::set_info(info);
    // The leading empty line keeps firmware text that lacks a line end (SeaBIOS prints "Booting from
    // ROM..") off the BOOT record. BOOT comes before platform bring-up, so a failure there is seen
    // as a failure of a kernel that did start.
    kprintln!();
    kprintln!(
        "PVKIT BOOT platform={} hypervisor={} mem_mib={} cmdline=\"{}\"",
        info.platform.name(),
        hypervisor::detect(),
        info.memory.ram_bytes().div_ceil(boot::MIB),
        info.cmdline
    );
    platform::init(info);
    let code = selftest::run_from_cmdline(info);
    platform::exit(code)
}
