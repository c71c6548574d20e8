//! Boot entries. Each one sets up just enough to run Rust, selects its platform, turns what its
//! loader passed into a [`crate::boot::BootInfo`] and calls [`crate::kernel_main`].
//!
//! - [`pvh`]: the PVH entry (`XEN_ELFNOTE_PHYS32_ENTRY`), 32-bit protected mode without paging. QEMU's
//!   `-kernel` (with qboot or SeaBIOS) and Xen PVH use it. Platform: [`crate::platform::Platform::Pvh`].
//! - [`xen_pv`]: the classic Xen PV entry (`XEN_ELFNOTE_ENTRY` and friends, 64-bit, paging already
//!   on with `VIRT_BASE = 0`, `rsi` = `start_info`). Its notes sit in the same `.note.Xen` section.
//!   Platform: [`crate::platform::Platform::XenPv`].

pub mod pvh;
pub mod xen_pv;
