//! ELF note types a Xen guest image carries (`xen/include/public/elfnote.h`): notes of name `"Xen"`
//! in a `PT_NOTE` segment tell the domain builder (or QEMU, for PVH) how to load and enter the
//! kernel.

/// Free-form information (ignored).
#[doc(alias = "XEN_ELFNOTE_INFO")]
pub const ELFNOTE_INFO: u32 = 0;
/// PV entry point (virtual address).
#[doc(alias = "XEN_ELFNOTE_ENTRY")]
pub const ELFNOTE_ENTRY: u32 = 1;
/// Virtual address of the page Xen fills with hypercall stubs.
#[doc(alias = "XEN_ELFNOTE_HYPERCALL_PAGE")]
pub const ELFNOTE_HYPERCALL_PAGE: u32 = 2;
/// Virtual base address of the image.
#[doc(alias = "XEN_ELFNOTE_VIRT_BASE")]
pub const ELFNOTE_VIRT_BASE: u32 = 3;
/// Offset between virtual and physical load addresses.
#[doc(alias = "XEN_ELFNOTE_PADDR_OFFSET")]
pub const ELFNOTE_PADDR_OFFSET: u32 = 4;
/// The Xen ABI version the kernel expects ("xen-3.0").
#[doc(alias = "XEN_ELFNOTE_XEN_VERSION")]
pub const ELFNOTE_XEN_VERSION: u32 = 5;
/// The guest OS name.
#[doc(alias = "XEN_ELFNOTE_GUEST_OS")]
pub const ELFNOTE_GUEST_OS: u32 = 6;
/// The guest OS version.
#[doc(alias = "XEN_ELFNOTE_GUEST_VERSION")]
pub const ELFNOTE_GUEST_VERSION: u32 = 7;
/// The loader the image wants ("generic").
#[doc(alias = "XEN_ELFNOTE_LOADER")]
pub const ELFNOTE_LOADER: u32 = 8;
/// PAE mode of a 32-bit kernel.
#[doc(alias = "XEN_ELFNOTE_PAE_MODE")]
pub const ELFNOTE_PAE_MODE: u32 = 9;
/// Features the kernel needs or supports (`XENFEAT_*` names, `|`-separated).
#[doc(alias = "XEN_ELFNOTE_FEATURES")]
pub const ELFNOTE_FEATURES: u32 = 10;
/// Whether the kernel copes with `mod_start` as a frame number.
#[doc(alias = "XEN_ELFNOTE_MOD_START_PFN")]
pub const ELFNOTE_MOD_START_PFN: u32 = 16;
/// Feature bitmap the kernel supports.
#[doc(alias = "XEN_ELFNOTE_SUPPORTED_FEATURES")]
pub const ELFNOTE_SUPPORTED_FEATURES: u32 = 17;
/// PVH entry point: a 32-bit physical address entered in protected mode.
#[doc(alias = "XEN_ELFNOTE_PHYS32_ENTRY")]
pub const ELFNOTE_PHYS32_ENTRY: u32 = 18;
