//! The final GDT (kernel code/data, TSS) and the TSS with a separate stack for double faults.

use ::x86_64::VirtAddr;
use ::x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use ::x86_64::instructions::tables::load_tss;
use ::x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use ::x86_64::structures::tss::TaskStateSegment;

/// IST slot (1-based in the IDT, 0-based in the TSS array) used by the double-fault handler.
pub const DOUBLE_FAULT_IST: u16 = 1;
const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stack([u8; IST_STACK_SIZE]);

/// The double-fault stack. Only the CPU writes it (on #DF); we only take its address.
static mut DOUBLE_FAULT_STACK: Stack = Stack([0; IST_STACK_SIZE]);

static TSS: spin::Once<TaskStateSegment> = spin::Once::new();
static GDT: spin::Once<GlobalDescriptorTable> = spin::Once::new();

/// Builds and loads the GDT and TSS, reloading all segment registers.
pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        let bottom = VirtAddr::from_ptr(&raw const DOUBLE_FAULT_STACK);
        tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST - 1)] = bottom + IST_STACK_SIZE as u64;
        tss
    });
    let mut code = None;
    let mut data = None;
    let mut tss_sel = None;
    let gdt = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        code = Some(gdt.append(Descriptor::kernel_code_segment()));
        data = Some(gdt.append(Descriptor::kernel_data_segment()));
        tss_sel = Some(gdt.append(Descriptor::tss_segment(tss)));
        gdt
    });
    let (Some(code), Some(data), Some(tss_sel)) = (code, data, tss_sel) else {
        panic!("gdt::init called twice");
    };
    gdt.load();
    // SAFETY: `code` selects the 64-bit kernel code descriptor of the GDT just loaded.
    unsafe { CS::set_reg(code) };
    // SAFETY: `data` selects the flat kernel data descriptor of the loaded GDT.
    unsafe { DS::set_reg(data) };
    // SAFETY: as above.
    unsafe { ES::set_reg(data) };
    // SAFETY: as above.
    unsafe { SS::set_reg(data) };
    // SAFETY: `tss_sel` selects a valid, not-yet-busy TSS descriptor of the loaded GDT; the TSS is static.
    unsafe { load_tss(tss_sel) };
}
