//! What an entry learns about the machine, in platform-neutral form, plus the kernel image's own
//! layout (from `linker.ld`).

use core::ops::Range;

use crate::platform::Platform;

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// Memory-map entries kept; more are counted in [`MemoryMap::dropped`].
pub const MAX_REGIONS: usize = 64;
/// Command-line bytes kept; a longer command line is cut (and reported by the entry).
pub const CMDLINE_MAX: usize = 1024;

/// The type of a memory-map entry (e820 / `XEN_HVM_MEMMAP_TYPE_*` numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    /// Usable RAM (type 1).
    Ram,
    /// Reserved (type 2).
    Reserved,
    /// ACPI tables, reclaimable (type 3).
    Acpi,
    /// ACPI non-volatile storage (type 4).
    Nvs,
    /// Unusable (type 5).
    Unusable,
    /// Any other type number.
    Other(u32),
}

impl MemoryKind {
    /// Decodes an e820-style type number.
    pub fn from_e820(ty: u32) -> Self {
        match ty {
            1 => Self::Ram,
            2 => Self::Reserved,
            3 => Self::Acpi,
            4 => Self::Nvs,
            5 => Self::Unusable,
            other => Self::Other(other),
        }
    }
}

/// A physical memory range with its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Type.
    pub kind: MemoryKind,
}

impl MemoryRegion {
    const EMPTY: Self = Self {
        start: 0,
        len: 0,
        kind: MemoryKind::Reserved,
    };

    /// One past the last byte (saturating).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// The firmware's memory map, as given (not sorted or merged).
#[derive(Debug, Clone)]
pub struct MemoryMap {
    regions: [MemoryRegion; MAX_REGIONS],
    len: usize,
    dropped: usize,
}

impl MemoryMap {
    /// An empty map.
    pub const fn new() -> Self {
        Self {
            regions: [MemoryRegion::EMPTY; MAX_REGIONS],
            len: 0,
            dropped: 0,
        }
    }

    /// Appends a region; beyond [`MAX_REGIONS`] it is only counted.
    pub fn push(&mut self, region: MemoryRegion) {
        match self.regions.get_mut(self.len) {
            Some(slot) => {
                *slot = region;
                self.len += 1;
            }
            None => self.dropped += 1,
        }
    }

    /// The regions kept.
    pub fn regions(&self) -> &[MemoryRegion] {
        &self.regions[..self.len]
    }

    /// Entries that did not fit.
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    /// Total bytes of usable RAM.
    pub fn ram_bytes(&self) -> u64 {
        self.regions()
            .iter()
            .filter(|r| r.kind == MemoryKind::Ram)
            .map(|r| r.len)
            .sum()
    }
}

/// Everything an entry hands to [`crate::kernel_main`].
#[derive(Debug)]
pub struct BootInfo {
    /// The platform this entry belongs to.
    pub platform: Platform,
    /// The command line (valid UTF-8 prefix of what the loader gave, at most [`CMDLINE_MAX`] bytes).
    pub cmdline: &'static str,
    /// True if the loader's command line was longer than [`CMDLINE_MAX`] or not UTF-8.
    pub cmdline_truncated: bool,
    /// Physical memory map.
    pub memory: MemoryMap,
    /// Physical address of the ACPI RSDP, if the loader gave one.
    pub rsdp: Option<u64>,
    /// Physical address of the loader's start-of-day structure (PVH `hvm_start_info`).
    pub start_info: u64,
}

unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
    static __stack_guard: u8;
    static __boot_stack_top: u8;
}

/// Physical (= virtual) range of the loaded kernel image, `.bss` and boot stack included.
pub fn kernel_image() -> Range<u64> {
    (&raw const __kernel_start) as u64..(&raw const __kernel_end) as u64
}

/// The 4 KiB page below the boot stack, left unmapped so a stack overflow faults.
pub fn stack_guard_page() -> u64 {
    (&raw const __stack_guard) as u64
}

/// Top of the boot stack (it grows down to [`stack_guard_page`] + 4 KiB).
pub fn boot_stack_top() -> u64 {
    (&raw const __boot_stack_top) as u64
}

static INFO: spin::Once<&'static BootInfo> = spin::Once::new();

/// Records the boot information for later readers ([`info`]). Called once by `kernel_main`.
pub fn set_info(info: &'static BootInfo) {
    INFO.call_once(|| info);
}

/// The boot information.
pub fn info() -> &'static BootInfo {
    INFO.get().expect("boot::info() before kernel_main")
}
