//! `hello`: prints what the kernel knows about the machine. With `hello.mem_mib=<n>` it also checks
//! that the memory map's RAM matches the `-m` size the host gave (allowing for the holes firmware
//! reserves: at most 2 MiB plus 1/64 of the size less, never more).

use super::{Outcome, Params, fail};
use crate::boot::{self, MIB, MemoryKind};

pub fn run(params: &Params<'_>) -> Outcome {
    let info = boot::info();
    let ram = info.memory.ram_bytes();
    let mem_mib = ram.div_ceil(MIB);
    let image = boot::kernel_image();
    let heap = crate::heap::stats();
    kprintln!(
        "PVKIT INFO hello platform={} start_info={:#x} rsdp={:#x} cmdline=\"{}\"",
        info.platform.name(),
        info.start_info,
        info.rsdp.unwrap_or(0),
        info.cmdline
    );
    for r in info.memory.regions() {
        let kind = match r.kind {
            MemoryKind::Ram => "ram",
            MemoryKind::Reserved => "reserved",
            MemoryKind::Acpi => "acpi",
            MemoryKind::Nvs => "nvs",
            MemoryKind::Unusable => "unusable",
            MemoryKind::Other(_) => "other",
        };
        kprintln!("PVKIT INFO memmap {:#012x}-{:#012x} {kind}", r.start, r.end());
    }
    kprintln!(
        "PVKIT INFO kernel image={:#x}-{:#x} stack_top={:#x} guard={:#x} page_table_frames={}",
        image.start,
        image.end,
        boot::boot_stack_top(),
        boot::stack_guard_page(),
        crate::arch::x86_64::paging::frames_used()
    );
    kprintln!(
        "PVKIT INFO heap start={:#x} size_kib={} used={} free={}",
        heap.start,
        heap.size / 1024,
        heap.used,
        heap.free
    );
    kprintln!(
        "PVKIT INFO boot tsc_ticks_since_entry={}",
        crate::time::Instant::now().ticks_since(crate::time::boot_instant())
    );
    kprintln!(
        "PVKIT INFO apic lapic_id={} ioapic_pins={} unhandled_irqs={}",
        crate::arch::x86_64::apic::lapic_id(),
        crate::arch::x86_64::apic::ioapic_pins(),
        crate::arch::x86_64::interrupts::unhandled_count()
    );
    super::xen::hello_info();
    if info.memory.dropped() > 0 {
        return fail!(
            "memory map has {} entries more than the {} kept",
            info.memory.dropped(),
            boot::MAX_REGIONS
        );
    }
    if heap.size == 0 {
        return fail!("heap is empty");
    }
    let expected = match params.u64_in("mem_mib", 0, 1..=1 << 20) {
        Ok(e) => e,
        Err(e) => return fail!("{e}"),
    };
    if expected != 0 {
        let slack = 2 + expected / 64;
        if mem_mib > expected || mem_mib + slack < expected {
            return fail!(
                "memory map holds {mem_mib} MiB of RAM, expected {expected} MiB (-{slack} allowed)"
            );
        }
    }
    Outcome::Pass(alloc::format!(
        "mem_mib={mem_mib} heap_mib={} regions={}",
        heap.size / MIB,
        info.memory.regions().len()
    ))
}
