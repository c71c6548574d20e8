//! Hypervisor detection through CPUID: the "hypervisor present" bit (leaf 1, ECX bit 31) and the
//! vendor signature at leaf 0x4000_0000 (Xen may sit at 0x4000_0100.. when it also offers Viridian,
//! so those bases are scanned for its signature).

use core::fmt;

use crate::arch::cpuid;

/// First hypervisor CPUID leaf.
pub const HV_BASE_LEAF: u32 = 0x4000_0000;
/// Bases scanned for Xen (0x4000_0000, 0x4000_0100, ... 0x4000_0f00).
const XEN_BASES: u32 = 16;

/// Which hypervisor we run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hypervisor {
    /// No hypervisor bit.
    None,
    /// "XenVMMXenVMM" at `base`.
    Xen {
        /// Leaf carrying the signature.
        base: u32,
    },
    /// "KVMKVMKVM\0\0\0".
    Kvm,
    /// QEMU TCG: "TCGTCGTCGTCG".
    Tcg,
    /// Hypervisor bit set, signature unknown (the 12 signature bytes).
    Other([u8; 12]),
}

impl Hypervisor {
    /// The lowercase word used on the command line (`cpuid.expect=`) and in `PVKIT BOOT`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Xen { .. } => "xen",
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
            Self::Other(_) => "other",
        }
    }
}

impl fmt::Display for Hypervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Other(sig) => {
                f.write_str("other:")?;
                for &b in sig {
                    let c = if b.is_ascii_graphic() { char::from(b) } else { '.' };
                    write!(f, "{c}")?;
                }
                Ok(())
            }
            other => f.write_str(other.kind()),
        }
    }
}

/// Everything the detection looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// CPUID.1:ECX bit 31.
    pub hypervisor_bit: bool,
    /// EAX of leaf 0x4000_0000: the highest hypervisor leaf.
    pub max_leaf: u32,
    /// EBX, ECX, EDX of leaf 0x4000_0000.
    pub signature: [u8; 12],
    /// The CPU vendor (leaf 0: EBX, EDX, ECX).
    pub vendor: [u8; 12],
    /// The verdict.
    pub hypervisor: Hypervisor,
}

fn signature_at(leaf: u32) -> (u32, [u8; 12]) {
    let r = cpuid(leaf);
    let mut sig = [0u8; 12];
    sig[0..4].copy_from_slice(&r.ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&r.ecx.to_le_bytes());
    sig[8..12].copy_from_slice(&r.edx.to_le_bytes());
    (r.eax, sig)
}

/// Runs the detection.
pub fn probe() -> Probe {
    let leaf0 = cpuid(0);
    let mut vendor = [0u8; 12];
    vendor[0..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    vendor[8..12].copy_from_slice(&leaf0.ecx.to_le_bytes());
    let hypervisor_bit = cpuid(1).ecx & (1 << 31) != 0;
    let (max_leaf, signature) = signature_at(HV_BASE_LEAF);
    let hypervisor = if !hypervisor_bit {
        Hypervisor::None
    } else if let Some(base) = (0..XEN_BASES)
        .map(|i| HV_BASE_LEAF + i * 0x100)
        .find(|&leaf| signature_at(leaf).1 == *b"XenVMMXenVMM")
    {
        Hypervisor::Xen { base }
    } else {
        match &signature {
            b"KVMKVMKVM\0\0\0" => Hypervisor::Kvm,
            b"TCGTCGTCGTCG" => Hypervisor::Tcg,
            other => Hypervisor::Other(*other),
        }
    };
    Probe {
        hypervisor_bit,
        max_leaf,
        signature,
        vendor,
        hypervisor,
    }
}

/// The hypervisor we run on.
pub fn detect() -> Hypervisor {
    probe().hypervisor
}
