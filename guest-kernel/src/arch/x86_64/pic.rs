//! The legacy 8259 PIC pair: remapped out of the exception range, then fully masked. Interrupts go
//! through the IOAPIC instead.

use super::interrupts::PIC_VECTOR_BASE;
use super::port::outb;

const PIC1_CMD: u16 = 0x20;
const PIC1_DATA: u16 = 0x21;
const PIC2_CMD: u16 = 0xa0;
const PIC2_DATA: u16 = 0xa1;

/// Remaps the PICs to [`PIC_VECTOR_BASE`].. and masks all their lines.
pub fn disable() {
    let writes: [(u16, u8); 10] = [
        (PIC1_CMD, 0x11), // ICW1: edge, cascade, ICW4 follows
        (PIC2_CMD, 0x11),
        (PIC1_DATA, PIC_VECTOR_BASE), // ICW2: vector offsets
        (PIC2_DATA, PIC_VECTOR_BASE + 8),
        (PIC1_DATA, 0x04), // ICW3: slave on IRQ2
        (PIC2_DATA, 0x02), // ICW3: slave identity
        (PIC1_DATA, 0x01), // ICW4: 8086 mode
        (PIC2_DATA, 0x01),
        (PIC1_DATA, 0xff), // OCW1: mask everything
        (PIC2_DATA, 0xff),
    ];
    for (port, value) in writes {
        // SAFETY: ports 0x20/0x21/0xa0/0xa1 are the PICs, which the platform owns; this sequence only
        // reprograms and masks them.
        unsafe { outb(port, value) };
    }
}
