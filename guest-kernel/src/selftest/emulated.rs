//! The device workloads over emulated PC hardware (`devices::emulated`): `<workload>@ide`,
//! `@ahci`, `@e1000`, `@uart`. Each opens its device and hands it to the generic runner in
//! [`super::workloads`]; an absent device fails at once with `device <name> absent`.
//!
//! Device-specific parameters: `ide` takes `pio=16|32` (data-register access width, default 16:
//! `rep insw`, what every ATA device accepts) and `multiple=0|1` (default 1: READ/WRITE MULTIPLE,
//! one data block and interrupt per up to 16 sectors, when the drive offers it; 0: one per sector);
//! `ahci` takes `ncq=0|1` (default 1: native command queuing when HBA and drive offer it; 0 keeps
//! one non-queued command in flight).

use pvkit_frontends::emulated::ide::PioWidth;

use super::workloads;
use super::{Outcome, Params, fail};
use crate::devices::emulated::{self, Opened};

/// Parameters of the IDE block tests.
pub const IDE_PARAMS: &[&str] = &["mode", "seed", "qd", "extents", "ms", "bs", "pio", "multiple"];
/// Parameters of the AHCI block tests.
pub const AHCI_PARAMS: &[&str] = &["mode", "seed", "qd", "extents", "ms", "bs", "ncq"];
/// Parameters of the e1000 test.
pub const E1000_PARAMS: &[&str] = &["mode", "seed", "frames", "window", "ms"];
/// Parameters of the UART console test.
pub const UART_PARAMS: &[&str] = &["mode", "seed", "bytes"];

fn ide(p: &Params<'_>) -> Result<Opened<dyn pvkit_frontends::block::BlockDevice>, Outcome> {
    let width = match p.get("pio") {
        None | Some("16") => PioWidth::Bits16,
        Some("32") => PioWidth::Bits32,
        Some(other) => return Err(fail!("pio={other}: only 16 or 32")),
    };
    let multiple = match p.get("multiple") {
        None | Some("1") => true,
        Some("0") => false,
        Some(other) => return Err(fail!("multiple={other}: only 0 or 1")),
    };
    emulated::open_ide(width, multiple).map_err(|e| fail!("{e}"))
}

fn ahci(p: &Params<'_>) -> Result<Opened<dyn pvkit_frontends::block::BlockDevice>, Outcome> {
    let ncq = match p.get("ncq") {
        None | Some("1") => true,
        Some("0") => false,
        Some(other) => return Err(fail!("ncq={other}: only 0 or 1")),
    };
    emulated::open_ahci(ncq).map_err(|e| fail!("{e}"))
}

macro_rules! block_test {
    ($name:ident, $open:ident, $runner:path) => {
        #[doc = concat!("`", stringify!($runner), "` over the device `", stringify!($open), "` opens.")]
        pub fn $name(p: &Params<'_>) -> Outcome {
            match $open(p) {
                Ok(mut o) => $runner(p, &mut *o.dev, o.line, &o.label),
                Err(outcome) => outcome,
            }
        }
    };
}

block_test!(blk_integrity_ide, ide, workloads::blk_integrity);
block_test!(blk_throughput_ide, ide, workloads::blk_throughput);
block_test!(blk_error_ide, ide, workloads::blk_error);
block_test!(blk_integrity_ahci, ahci, workloads::blk_integrity);
block_test!(blk_throughput_ahci, ahci, workloads::blk_throughput);
block_test!(blk_error_ahci, ahci, workloads::blk_error);

/// `net-echo@e1000`.
pub fn net_echo_e1000(p: &Params<'_>) -> Outcome {
    match emulated::open_e1000() {
        Ok(mut o) => workloads::net_echo(p, &mut *o.dev, o.line, &o.label),
        Err(e) => fail!("{e}"),
    }
}

/// `console-echo@uart` (COM2).
pub fn console_echo_uart(p: &Params<'_>) -> Outcome {
    match emulated::open_uart() {
        Ok(mut o) => workloads::console_echo(p, &mut *o.dev, o.line, &o.label),
        Err(e) => fail!("{e}"),
    }
}
