//! The PVH start ABI (`xen/include/public/arch-x86/hvm/start_info.h`): what the loader (Xen, or
//! QEMU's `-kernel`) passes in `ebx` to the entry point of the [`ELFNOTE_PHYS32_ENTRY`] note.
//!
//! [`ELFNOTE_PHYS32_ENTRY`]: super::elfnote::ELFNOTE_PHYS32_ENTRY

use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// [`HvmStartInfo::magic`] ("xEn3" with the 0x80 bit of the "E" set).
#[doc(alias = "XEN_HVM_START_MAGIC_VALUE")]
pub const HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// Memory map entry type: usable RAM (the e820 numbering).
#[doc(alias = "XEN_HVM_MEMMAP_TYPE_RAM")]
pub const HVM_MEMMAP_TYPE_RAM: u32 = 1;
/// Memory map entry type: reserved.
#[doc(alias = "XEN_HVM_MEMMAP_TYPE_RESERVED")]
pub const HVM_MEMMAP_TYPE_RESERVED: u32 = 2;
/// Memory map entry type: ACPI tables, reclaimable.
#[doc(alias = "XEN_HVM_MEMMAP_TYPE_ACPI")]
pub const HVM_MEMMAP_TYPE_ACPI: u32 = 3;
/// Memory map entry type: ACPI non-volatile storage.
#[doc(alias = "XEN_HVM_MEMMAP_TYPE_NVS")]
pub const HVM_MEMMAP_TYPE_NVS: u32 = 4;
/// Memory map entry type: unusable.
#[doc(alias = "XEN_HVM_MEMMAP_TYPE_UNUSABLE")]
pub const HVM_MEMMAP_TYPE_UNUSABLE: u32 = 5;

/// The start-of-day information of a PVH guest.
#[doc(alias = "hvm_start_info")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct HvmStartInfo {
    /// [`HVM_START_MAGIC_VALUE`].
    pub magic: u32,
    /// Structure version; the memory map exists from version 1 on.
    pub version: u32,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Number of modules.
    pub nr_modules: u32,
    /// Physical address of the module list ([`HvmModlistEntry`]s).
    pub modlist_paddr: u64,
    /// Physical address of the NUL-terminated command line (0 = none).
    pub cmdline_paddr: u64,
    /// Physical address of the ACPI RSDP (0 = none).
    pub rsdp_paddr: u64,
    /// Physical address of the memory map ([`HvmMemmapTableEntry`]s; version >= 1).
    pub memmap_paddr: u64,
    /// Entries in the memory map (version >= 1).
    pub memmap_entries: u32,
    /// Must be zero.
    pub reserved: u32,
}
const _: () = assert!(size_of::<HvmStartInfo>() == 56);
const _: () = assert!(offset_of!(HvmStartInfo, cmdline_paddr) == 24);
const _: () = assert!(offset_of!(HvmStartInfo, memmap_paddr) == 40);

/// One module passed to a PVH guest.
#[doc(alias = "hvm_modlist_entry")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct HvmModlistEntry {
    /// Physical address of the module.
    pub paddr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Physical address of its command line (0 = none).
    pub cmdline_paddr: u64,
    /// Must be zero.
    pub reserved: u64,
}
const _: () = assert!(size_of::<HvmModlistEntry>() == 32);

/// One entry of the PVH memory map.
#[doc(alias = "hvm_memmap_table_entry")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct HvmMemmapTableEntry {
    /// Base address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// `HVM_MEMMAP_TYPE_*` (the e820 numbering). Named `type` in C.
    pub type_: u32,
    /// Must be zero.
    pub reserved: u32,
}
const _: () = assert!(size_of::<HvmMemmapTableEntry>() == 24);
