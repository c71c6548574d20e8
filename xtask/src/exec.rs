//! Runs a selection of matrix rows: each through its environment's executor, in the matrix's
//! order, with progress per row; the Xen PV rows together in one Xen boot. Rows this host cannot
//! run are reported as SKIP with the reason, never left out.

use std::time::Instant;

use crate::matrix::{Env, Row};
use crate::outcome::{CellResult, Verdict};
use crate::qemu::Accel;
use crate::qemu_env::{self, Ctx};
use crate::{table, xen};

/// What this host's `/dev/kvm` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmHost {
    /// KVM on a CPU with VT (vmx or svm).
    Vt,
    /// kvm_pvm: a paravirtual KVM without VT; guests run in its instruction emulator and their
    /// interrupts get dropped or mis-delivered (seen: blk-integrity@virtio-blk hangs).
    KvmPvm,
    /// No usable KVM, and why.
    Absent(String),
}

impl KvmHost {
    pub fn detect() -> KvmHost {
        if !std::path::Path::new("/dev/kvm").exists() {
            return KvmHost::Absent("/dev/kvm does not exist".to_owned());
        }
        if std::path::Path::new("/sys/module/kvm_pvm").exists() {
            return KvmHost::KvmPvm;
        }
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let vt = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        if vt {
            KvmHost::Vt
        } else {
            KvmHost::Absent("the CPU has no vmx or svm flag".to_owned())
        }
    }

    /// Why KVM rows cannot run here (None: they can).
    pub fn unusable(&self) -> Option<String> {
        match self {
            KvmHost::Vt => None,
            KvmHost::KvmPvm => Some(
                "/dev/kvm is kvm_pvm (no vmx/svm in /proc/cpuinfo, /sys/module/kvm_pvm present): a \
                 paravirtual KVM without VT, whose guests run in an instruction emulator with \
                 mis-delivered interrupts (interrupt-driven workloads hang); KVM rows need VT"
                    .to_owned(),
            ),
            KvmHost::Absent(why) => Some(format!("no KVM on this host: {why}")),
        }
    }
}

/// Why this host cannot run rows of `env` (None: it can).
pub fn unsupported(env: Env) -> Option<String> {
    match env {
        Env::QemuPvh | Env::XenPv => None,
        Env::QemuPvhKvm => KvmHost::detect().unusable(),
        Env::XenPvh | Env::XenHvm => Some(format!(
            "{}: the guest kernel has no entry for it yet",
            env.name()
        )),
    }
}

/// Runs `rows` (in the matrix's order; the Xen PV rows in one boot where the first of them is)
/// and calls `done` for each result as it is known.
pub fn run(rows: &[&Row], ctx: &Ctx, mut done: impl FnMut(&CellResult)) -> Vec<CellResult> {
    let n = rows.len();
    let mut results: Vec<Option<CellResult>> = vec![None; n];
    let mut xen_done = false;
    for (i, row) in rows.iter().enumerate() {
        if results[i].is_some() {
            continue;
        }
        if crate::process::interrupted() {
            break;
        }
        if let Some(why) = unsupported(row.env) {
            let c = CellResult::new(row, Verdict::Skip(why));
            progress(i, n, &c);
            done(&c);
            results[i] = Some(c);
            continue;
        }
        if row.env == Env::XenPv {
            if xen_done {
                continue;
            }
            xen_done = true;
            let idx: Vec<usize> = (0..n).filter(|&j| rows[j].env == Env::XenPv).collect();
            let xrows: Vec<&Row> = idx.iter().map(|&j| rows[j]).collect();
            for (j, c) in idx.into_iter().zip(xen::run_rows(&xrows, ctx)) {
                progress(j, n, &c);
                done(&c);
                results[j] = Some(c);
            }
            continue;
        }
        eprintln!("==> [{}/{n}] {row}", i + 1);
        let accel = if row.env == Env::QemuPvhKvm {
            Accel::Kvm
        } else {
            ctx.accel
        };
        let row_ctx = Ctx { accel, ..ctx.clone() };
        let t0 = Instant::now();
        let mut c = qemu_env::run_row(row, &row_ctx);
        c.time.get_or_insert(t0.elapsed());
        progress(i, n, &c);
        done(&c);
        results[i] = Some(c);
    }
    results.into_iter().flatten().collect()
}

/// One progress line per finished row; a failing row also says how to rerun it.
fn progress(i: usize, n: usize, c: &CellResult) {
    let t = c
        .time
        .map(|d| format!(" ({})", table::duration(d)))
        .unwrap_or_default();
    match c.verdict.reason() {
        None => eprintln!("    [{}/{n}] PASS {}{t}", i + 1, c.row),
        Some(why) => {
            eprintln!("    [{}/{n}] {} {}{t}: {why}", i + 1, c.verdict.label(), c.row);
            if c.verdict.is_bad() {
                eprintln!("        reproduce: {}", c.repro());
                if let Some(l) = &c.log {
                    eprintln!("        log: {}", l.display());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unimplemented_environments_are_skipped_with_a_reason() {
        assert!(unsupported(Env::QemuPvh).is_none());
        assert!(unsupported(Env::XenPv).is_none());
        assert!(unsupported(Env::XenHvm).unwrap().contains("xen-hvm"));
        assert!(KvmHost::KvmPvm.unusable().unwrap().contains("kvm_pvm"));
        assert!(KvmHost::Vt.unusable().is_none());
    }
}
