//! `cpuid`: hypervisor detection. Passes if what CPUID says is consistent (a hypervisor bit with a
//! readable vendor signature and a hypervisor leaf range, or no bit and then no claim) and, with
//! `cpuid.expect=<none|xen|kvm|tcg|other>`, if the detected kind is the expected one.

use super::{Outcome, Params, fail};
use crate::hypervisor::{self, HV_BASE_LEAF, Hypervisor};

fn printable(sig: &[u8; 12]) -> alloc::string::String {
    sig.iter()
        .map(|&b| if b.is_ascii_graphic() { char::from(b) } else { '.' })
        .collect()
}

pub fn run(params: &Params<'_>) -> Outcome {
    let p = hypervisor::probe();
    kprintln!(
        "PVKIT INFO cpuid vendor=\"{}\" hypervisor_bit={} max_hv_leaf={:#x} signature=\"{}\" hypervisor={}",
        printable(&p.vendor),
        u8::from(p.hypervisor_bit),
        p.max_leaf,
        printable(&p.signature),
        p.hypervisor
    );
    if !p.vendor.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return fail!("CPU vendor string {:?} is not printable ASCII", p.vendor);
    }
    match p.hypervisor {
        Hypervisor::None if p.hypervisor_bit => return fail!("hypervisor bit set but nothing detected"),
        Hypervisor::None => {}
        // KVM documents EAX = 0 as "0x4000_0001".
        Hypervisor::Kvm if p.max_leaf == 0 => {}
        Hypervisor::Xen { base } if base != HV_BASE_LEAF => {}
        _ if p.max_leaf < HV_BASE_LEAF || p.max_leaf > HV_BASE_LEAF + 0xff => {
            return fail!(
                "hypervisor {} reports max leaf {:#x}, outside 0x40000000..=0x400000ff",
                p.hypervisor,
                p.max_leaf
            );
        }
        Hypervisor::Other(sig) if !sig.iter().all(|b| b.is_ascii_graphic() || *b == 0 || *b == b' ') => {
            return fail!("hypervisor bit set but signature {sig:02x?} is not a vendor string");
        }
        _ => {}
    }
    if let Some(expect) = params.get("expect") {
        if !["none", "xen", "kvm", "tcg", "other"].contains(&expect) {
            return fail!("cpuid.expect='{expect}' is not one of none, xen, kvm, tcg, other");
        }
        if p.hypervisor.kind() != expect {
            return fail!("detected hypervisor {}, expected {expect}", p.hypervisor);
        }
    }
    Outcome::Pass(alloc::format!(
        "hypervisor={} hypervisor_bit={} max_hv_leaf={:#x}",
        p.hypervisor,
        u8::from(p.hypervisor_bit),
        p.max_leaf
    ))
}
