//! `cargo xtask bench --xen-blk`: our userspace blkback against Linux's kernel blkback, in one Xen
//! boot. Each round runs two domUs of our guest with `blk-throughput@xen-blk` (4 KiB random reads and
//! writes at qd 1 and 32, 64 KiB sequential): one whose disk is a `phy:` loop device served by
//! Linux's blkback, one whose disk is the same kind of loop device served by `pvkit-xen-backend`.
//! Both disks are equal images on equal virtio disks of the Xen machine. Ops/s are summed over the
//! rounds and printed as ratios, with the guest's per-op costs (event channel notifications sent,
//! upcalls taken) and our daemon's own counts.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::report::ScenarioReport;
use super::scenario::{self, Bundle, DomainSpec, HostDisk, Kernel, OurDevices};
use super::{cache_dir, run_harness, show_line};
use crate::vhost::{Phase, accumulate, comparison_table, phases};
use crate::workspace;

const TEST: &str = "blk-throughput@xen-blk";
/// 64 MiB disks: random I/O spreads over more than the guest's memory.
const SECTORS: u64 = 128 * 1024;

fn spec(name: String, ours: bool, ms: u64) -> DomainSpec {
    DomainSpec {
        name,
        kernel: Kernel::Pvkit,
        cmdline: format!("tests={TEST} {TEST}.ms={ms} {TEST}.qd=32 {TEST}.bs=4096"),
        memory_mib: scenario::GUEST_MEMORY_MIB,
        disks: Vec::new(),
        host_disk: Some(HostDisk {
            sectors: SECTORS,
            fill_seed: 0x6265_6e63,
        }),
        vifs: Vec::new(),
        timeout: Duration::from_secs(60 + 6 * ms.div_ceil(1000) * 3),
        pre: None,
        running: None,
        paused: false,
        post: None,
        ours: ours.then(|| OurDevices {
            disk: true,
            ..Default::default()
        }),
    }
}

/// The run's phases of one domU, or why there are none.
fn domain_phases(r: &ScenarioReport) -> Result<Vec<Phase>> {
    if !r.transcript.passed(TEST) {
        bail!("{}: {TEST} did not pass (end {:?}); see the log", r.name, r.end);
    }
    phases(&r.transcript)
}

/// Runs the comparison; prints the table; returns the exit status.
pub fn bench_blk(rounds: usize, ms: u64) -> Result<i32> {
    let names = ["linux blkback", "pvkit blkback"];
    let mut specs = Vec::new();
    for round in 1..=rounds {
        // Alternate which goes first, so neither always runs on a colder machine.
        let order: [bool; 2] = if round % 2 == 1 {
            [false, true]
        } else {
            [true, false]
        };
        for ours in order {
            let who = if ours { "ours" } else { "linux" };
            specs.push(spec(format!("bench-{who}-{round}"), ours, ms));
        }
    }
    let guest = workspace::build_guest()?;
    let bundle = Bundle::new(specs, Some(guest), &cache_dir().join("disks"));
    let log = workspace::log_dir().join("bench-xen-blk.log");
    let h = run_harness(&bundle, &log, None, |l| show_line(l, true))?;
    if let Some(p) = super::boot_problem(&h) {
        bail!("the Xen boot failed: {p} (log {})", log.display());
    }
    let mut totals: [Vec<Phase>; 2] = [Vec::new(), Vec::new()];
    let mut daemon = Vec::new();
    for s in &bundle.specs {
        let r = h
            .report
            .scenario(&s.name)
            .with_context(|| format!("no report of {} in {}", s.name, log.display()))?;
        let i = usize::from(s.ours.is_some());
        accumulate(&mut totals[i], domain_phases(r)?, &s.name)?;
        if s.ours.is_some() {
            daemon.extend(r.notes.iter().filter(|n| n.contains("disconnected:")).map(|n| {
                format!(
                    "{}: {}",
                    s.name,
                    n.split("disconnected:").nth(1).unwrap_or("").trim()
                )
            }));
        }
    }
    let mut out = format!(
        "pvkit blkback (dom0 userspace) vs Linux blkback (dom0 kernel), same Xen boot: guest {TEST}, \
         {ms} ms per phase, {rounds} round(s) each\n"
    );
    out.push_str(&comparison_table(
        [("linux", names[0]), ("pvkit", names[1])],
        &totals[0],
        &totals[1],
        0.8,
    )?);
    for d in &daemon {
        out.push_str(&format!("pvkit blkback counts, {d}\n"));
    }
    out.push_str("(kicks/op: event channel notifications the guest sent; irqs/op: upcalls it took)\n");
    print!("{out}");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, out.as_bytes()))
        .with_context(|| format!("appending to {}", log.display()))?;
    eprintln!("bench: log {}", log.display());
    Ok(0)
}
