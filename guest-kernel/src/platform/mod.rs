//! The platform layer: which environment the kernel runs in, chosen once by the boot entry.
//!
//! A platform provides the console, the power-off path and the bring-up of its interrupt, timer and
//! bus hardware. Everything above this layer (self-tests, later the drivers' users) asks the
//! platform and does not care how it works.
//!
//! - [`Platform::Pvh`]: PC hardware entered through PVH, i.e. QEMU q35 (`pc`).
//! - [`Platform::XenPv`]: a classic Xen PV domain: console over the Xen console ring,
//!   `SCHEDOP_shutdown` for exit, event channels instead of the IOAPIC, a PV timer (`xen_pv`).

pub mod pc;
pub mod xen_pv;

use core::sync::atomic::{AtomicU8, Ordering};

use crate::boot::BootInfo;

/// The environments the kernel knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Platform {
    /// PC hardware (q35 under QEMU), entered through PVH.
    Pvh = 1,
    /// A Xen PV domain, entered through the classic PV entry.
    XenPv = 2,
}

impl Platform {
    /// The name used in the `PVKIT BOOT platform=` field.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pvh => "pvh",
            Self::XenPv => "xen-pv",
        }
    }
}

/// 0 until an entry selects the platform.
static CURRENT: AtomicU8 = AtomicU8::new(0);

/// Selects the platform and brings up its console. Called first thing by a boot entry.
pub fn select(platform: Platform) {
    // Relaxed: single CPU, and the value is only read by this CPU afterwards.
    CURRENT.store(platform as u8, Ordering::Relaxed);
    match platform {
        Platform::Pvh => pc::early_init(),
        Platform::XenPv => xen_pv::early_init(),
    }
}

/// The platform selected at boot, if any.
pub fn current() -> Option<Platform> {
    match CURRENT.load(Ordering::Relaxed) {
        1 => Some(Platform::Pvh),
        2 => Some(Platform::XenPv),
        _ => None,
    }
}

/// Brings up the platform's memory, interrupts, timers and buses.
pub fn init(info: &'static BootInfo) {
    match info.platform {
        Platform::Pvh => pc::init(info),
        Platform::XenPv => xen_pv::init(info),
    }
}

/// Writes raw bytes to the platform console. Callers serialise (see `console`).
pub fn console_write(bytes: &[u8]) {
    match current() {
        Some(Platform::Pvh) => pc::console_write(bytes),
        Some(Platform::XenPv) => xen_pv::console_write(bytes),
        // No platform yet: nothing to write to. Only reachable if an entry panics before select().
        None => {}
    }
}

/// Ends the run: powers off with `code` (0 = pass, 1 = fail) where the platform can, else halts
/// forever with interrupts off.
pub fn exit(code: u8) -> ! {
    match current() {
        Some(Platform::Pvh) => pc::exit(code),
        Some(Platform::XenPv) => xen_pv::exit(code),
        None => crate::arch::halt_forever(),
    }
}
