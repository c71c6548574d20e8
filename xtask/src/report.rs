//! `cargo xtask bench`: the comparison rows over several rounds, written up in
//! `target/xtask/report/`: `report.md` (what each figure means, the machine, the versions and
//! settings, min/median/max over the rounds, the two backend-vs-backend sections), SVG charts drawn
//! with plotters (exits/op on a log scale, ops/s, latency per path), and the raw figures as CSV and
//! JSON.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use serde::Serialize;

use crate::compare::{self, Series, Spread, spread};
use crate::costs::Measure;
use crate::matrix::{Backend, Class, Dev, Env, Profile, Row, Transport};
use crate::outcome::{CellResult, Verdict};
use crate::qemu::{Accel, QemuConfig};
use crate::qemu_env::Ctx;
use crate::{BenchArgs, Hypervisor, exec, provision, table, workspace};

/// Where the report goes.
pub fn report_dir() -> PathBuf {
    workspace::xtask_dir().join("report")
}

pub fn bench(args: &BenchArgs) -> Result<i32> {
    if !args.no_cargo_bench {
        let mut cmd = workspace::cargo();
        cmd.args(["bench", "-p", "ring-protocol"]).args(&args.args);
        workspace::run_visible(&mut cmd)?;
    }
    provision::ensure_qemu()?;
    let elf = workspace::build_guest()?;
    let rows: Vec<&Row> = crate::run::rows(Hypervisor::All, &args.only)?
        .into_iter()
        .filter(|r| r.compares())
        .collect();
    let rounds = args.rounds.max(1);
    let started = Instant::now();
    let mut all: Vec<Vec<CellResult>> = Vec::new();
    for round in 1..=rounds {
        eprintln!("bench: round {round}/{rounds}: {} paths", rows.len());
        let ctx = Ctx {
            elf: elf.clone(),
            accel: Accel::Tcg,
            profile: Profile::Compare {
                phase_ms: args.phase_ms,
            },
            trace: false,
            verbose: false,
            tag: format!("bench{round}"),
        };
        // Alternate the order, so no path always runs first (on a colder or busier machine).
        let ordered: Vec<&Row> = if round % 2 == 0 {
            rows.iter().rev().copied().collect()
        } else {
            rows.clone()
        };
        let mut results = exec::run(&ordered, &ctx, |_| {});
        results.sort_by_key(|c| rows.iter().position(|r| **r == c.row));
        all.push(results);
    }
    crate::vhost::cleanup();
    let dir = report_dir();
    std::fs::create_dir_all(&dir)?;
    let settings = Settings {
        rounds,
        phase_ms: args.phase_ms,
        seconds: started.elapsed().as_secs_f64(),
    };
    let written = write(&dir, &all, &settings)?;
    let (series, bad) = compare::collect(&all);
    print!("{}", compare::render(&series, &bad, false));
    println!();
    for f in &written {
        println!("report: {}", f.display());
    }
    Ok(if bad.iter().any(|(_, v)| v.is_bad()) { 1 } else { 0 })
}

/// How the report was made.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub rounds: usize,
    pub phase_ms: u64,
    pub seconds: f64,
}

/// One raw record: a path's phase in one round.
#[derive(Debug, Serialize)]
struct Raw<'a> {
    round: usize,
    row: String,
    env: &'a str,
    transport: &'a str,
    backend: &'a str,
    device: &'a str,
    pattern: &'a str,
    qd: u64,
    ops: u64,
    bytes: u64,
    guest_us: u64,
    exits: Option<u64>,
    exits_pio: Option<u64>,
    exits_mmio: Option<u64>,
    exits_irqchip: Option<u64>,
    exits_hlt: Option<u64>,
    hypercalls: Option<u64>,
    hypercalls_by_name: Vec<(String, u64)>,
    notifications: u64,
    interrupts: u64,
    copied_bytes: u64,
    lat_p50_ns: Option<u64>,
    lat_p99_ns: Option<u64>,
}

fn raw(rounds: &[Vec<CellResult>]) -> Vec<Raw<'_>> {
    let mut out = Vec::new();
    for (i, round) in rounds.iter().enumerate() {
        for c in round.iter().filter(|c| c.verdict == Verdict::Pass) {
            for m in &c.costs {
                out.push(Raw {
                    round: i + 1,
                    row: c.row.name(),
                    env: c.row.env.name(),
                    transport: c.row.transport.name(),
                    backend: c.row.backend.name(),
                    device: c.row.device.map_or("-", Dev::name),
                    pattern: &m.pattern,
                    qd: m.qd,
                    ops: m.ops,
                    bytes: m.bytes,
                    guest_us: m.guest_us,
                    exits: m.exits,
                    exits_pio: m.exits_pio,
                    exits_mmio: m.exits_mmio,
                    exits_irqchip: m.exits_irqchip,
                    exits_hlt: m.exits_hlt,
                    hypercalls: m.hypercalls,
                    hypercalls_by_name: m.hc.clone(),
                    notifications: m.notifies,
                    interrupts: m.irqs,
                    copied_bytes: m.copied_bytes,
                    lat_p50_ns: m.lat_p50_ns,
                    lat_p99_ns: m.lat_p99_ns,
                });
            }
        }
    }
    out
}

fn csv(records: &[Raw<'_>]) -> String {
    let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_default();
    let mut s = String::from(
        "round,row,env,transport,backend,device,pattern,qd,ops,bytes,guest_us,exits,exits_pio,exits_mmio,\
         exits_irqchip,exits_hlt,hypercalls,notifications,interrupts,copied_bytes,lat_p50_ns,lat_p99_ns\n",
    );
    for r in records {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.round,
            r.row,
            r.env,
            r.transport,
            r.backend,
            r.device,
            r.pattern,
            r.qd,
            r.ops,
            r.bytes,
            r.guest_us,
            opt(r.exits),
            opt(r.exits_pio),
            opt(r.exits_mmio),
            opt(r.exits_irqchip),
            opt(r.exits_hlt),
            opt(r.hypercalls),
            r.notifications,
            r.interrupts,
            r.copied_bytes,
            opt(r.lat_p50_ns),
            opt(r.lat_p99_ns)
        );
    }
    s
}

/// Writes the report into `dir`; returns the files written.
pub fn write(dir: &Path, rounds: &[Vec<CellResult>], settings: &Settings) -> Result<Vec<PathBuf>> {
    let (series, bad) = compare::collect(rounds);
    let mut written = Vec::new();
    let records = raw(rounds);
    let json = dir.join("raw.json");
    std::fs::write(
        &json,
        serde_json::to_string_pretty(&serde_json::json!({
            "settings": settings,
            "records": records,
        }))?,
    )?;
    written.push(json);
    let csv_path = dir.join("raw.csv");
    std::fs::write(&csv_path, csv(&records))?;
    written.push(csv_path);
    let mut charts = Vec::new();
    for class in [Class::Block, Class::Net, Class::Console] {
        if !series.iter().any(|s| s.class() == class) {
            continue;
        }
        for chart in [Chart::Exits, Chart::OpsPerSec, Chart::Latency] {
            let path = dir.join(format!("{}-{}.svg", class.name(), chart.file()));
            draw(&path, &series, class, chart).with_context(|| format!("drawing {}", path.display()))?;
            charts.push((class, chart, path.clone()));
            written.push(path);
        }
    }
    let md = dir.join("report.md");
    std::fs::write(&md, markdown(&series, &bad, settings, &charts))?;
    written.insert(0, md);
    Ok(written)
}

/// The charts of a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chart {
    Exits,
    OpsPerSec,
    Latency,
}

impl Chart {
    fn file(self) -> &'static str {
        match self {
            Chart::Exits => "exits-per-op",
            Chart::OpsPerSec => "ops-per-s",
            Chart::Latency => "latency",
        }
    }

    fn title(self, class: Class) -> String {
        match self {
            Chart::Exits => format!("{}: exits per op (guest-counted, log scale)", class.name()),
            Chart::OpsPerSec => format!("{}: ops/s by the guest's clock (TCG, log scale)", class.name()),
            Chart::Latency => format!("{}: latency p50 and p99 in us (TCG, log scale)", class.name()),
        }
    }
}

fn transport_color(t: Transport) -> RGBColor {
    match t {
        Transport::Xen => RGBColor(0x1f, 0x77, 0xb4),
        Transport::Virtio => RGBColor(0x2c, 0xa0, 0x2c),
        Transport::Emulated => RGBColor(0xd6, 0x27, 0x28),
        Transport::Platform => RGBColor(0x7f, 0x7f, 0x7f),
    }
}

/// One horizontal bar per (phase, path), grouped by phase, coloured by transport; the value is the
/// median over the rounds, the whisker the min-max range. Latency charts show p50 as the bar and p99
/// as a mark.
fn draw(path: &Path, series: &[Series], class: Class, chart: Chart) -> Result<()> {
    let f: fn(&Measure) -> Option<f64> = match chart {
        Chart::Exits => compare::exits_per_op,
        Chart::OpsPerSec => compare::ops_per_s,
        Chart::Latency => compare::p50_us,
    };
    let mut bars: Vec<(String, Transport, Spread, Option<Spread>)> = Vec::new();
    for (pattern, qd) in compare::phases(series, class) {
        for s in series
            .iter()
            .filter(|s| s.class() == class && s.pattern == pattern && s.qd == qd)
        {
            let Some(v) = spread(&s.values(f)) else { continue };
            let extra = (chart == Chart::Latency)
                .then(|| spread(&s.values(compare::p99_us)))
                .flatten();
            let qd = if qd == 0 {
                String::new()
            } else {
                format!(" qd{qd}")
            };
            bars.push((
                format!("{pattern}{qd}  {}", compare::path_label(&s.row)),
                s.row.transport,
                v,
                extra,
            ));
        }
    }
    let height = 80 + 22 * bars.len().max(1) as u32;
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let values = bars
        .iter()
        .flat_map(|(_, _, s, e)| [s.min, s.max].into_iter().chain(e.map(|e| e.max)))
        .filter(|v| *v > 0.0);
    let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if hi > 0.0 {
        ((lo / 2.0).max(1e-3), hi * 2.0)
    } else {
        (1e-3, 1.0)
    };
    let n = bars.len().max(1);
    let labels: Vec<String> = bars.iter().rev().map(|b| b.0.clone()).collect();
    let mut c = ChartBuilder::on(&root)
        .caption(chart.title(class), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(420)
        .build_cartesian_2d((lo..hi).log_scale(), (0..n).into_segmented())?;
    c.configure_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc(match chart {
            Chart::Exits => "exits / op",
            Chart::OpsPerSec => "ops / s",
            Chart::Latency => "us",
        })
        .draw()?;
    // The first phase on top.
    let bars: Vec<_> = bars.into_iter().rev().collect();
    c.draw_series(bars.iter().enumerate().map(|(i, (_, t, s, _))| {
        let mut r = Rectangle::new(
            [
                (lo, SegmentValue::Exact(i)),
                (s.median.max(lo), SegmentValue::Exact(i + 1)),
            ],
            transport_color(*t).filled(),
        );
        r.set_margin(3, 3, 0, 0);
        r
    }))?;
    // Min-max whiskers over the rounds.
    c.draw_series(
        bars.iter()
            .enumerate()
            .filter(|(_, b)| b.2.max > b.2.min)
            .map(|(i, (_, _, s, _))| {
                PathElement::new(
                    vec![
                        (s.min.max(lo), SegmentValue::CenterOf(i)),
                        (s.max.max(lo), SegmentValue::CenterOf(i)),
                    ],
                    BLACK.stroke_width(1),
                )
            }),
    )?;
    if chart == Chart::Latency {
        c.draw_series(bars.iter().enumerate().filter_map(|(i, (_, _, _, e))| {
            e.map(|e| Circle::new((e.median.max(lo), SegmentValue::CenterOf(i)), 4, BLACK.filled()))
        }))?
        .label("p99 (bar: p50)")
        .legend(|(x, y)| Circle::new((x, y), 4, BLACK.filled()));
    }
    // Which colour is which transport.
    for t in [Transport::Xen, Transport::Virtio, Transport::Emulated] {
        if bars.iter().any(|b| b.1 == t) {
            c.draw_series(std::iter::empty::<Circle<(f64, SegmentValue<usize>), i32>>())?
                .label(t.name())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], transport_color(t).filled())
                });
        }
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn cmd_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The machine and the software, for the report.
fn environment() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or_else(|| "unknown".to_owned(), |kb| format!("{} GiB", kb / (1 << 20)));
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_owned())
            })
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let debs = crate::xen::packages::unpacked_debs(&crate::xen::cache_dir());
    let deb = |prefix: &str| {
        debs.iter()
            .find(|d| d.starts_with(prefix))
            .cloned()
            .unwrap_or_else(|| "not used".to_owned())
    };
    let kvm = match exec::KvmHost::detect() {
        exec::KvmHost::Vt => "KVM with VT available (not used: TCG)".to_owned(),
        exec::KvmHost::KvmPvm => "kvm_pvm (no VT): KVM rows skipped".to_owned(),
        exec::KvmHost::Absent(why) => format!("no KVM ({why})"),
    };
    let qemu = QemuConfig::default_qemu();
    vec![
        ("CPU".into(), format!("{model}, {cpus} logical CPUs")),
        ("memory".into(), mem),
        (
            "host OS".into(),
            format!("{os}, Linux {}", cmd_line("uname", &["-r"])),
        ),
        ("KVM".into(), kvm),
        ("QEMU".into(), cmd_line(&qemu.to_string_lossy(), &["--version"])),
        ("Xen".into(), deb("xen-hypervisor-")),
        ("Linux (dom0, Linux peers)".into(), deb("linux-image-")),
        (
            "pvkit".into(),
            cmd_line(
                "git",
                &[
                    "-C",
                    &workspace::root().to_string_lossy(),
                    "describe",
                    "--always",
                    "--dirty",
                ],
            ),
        ),
        ("rustc".into(), cmd_line("rustc", &["--version"])),
    ]
}

/// The comparison's column `header`.
fn fig(header: &str) -> compare::Figure {
    *compare::FIGURES
        .iter()
        .find(|f| f.header == header)
        .expect("a column of the comparison")
}

fn md_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        header.iter().map(|_| " --- |").collect::<String>()
    );
    for r in rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s
}

/// A backend-vs-backend section: the same device and phases on two backends, ops/s ratio and
/// per-op costs side by side.
fn versus(series: &[Series], env: Env, dev: Dev, base: Backend, ours: Backend) -> Option<String> {
    let pick = |b: Backend| -> Vec<&Series> {
        series
            .iter()
            .filter(|s| s.row.env == env && s.row.device == Some(dev) && s.row.backend == b)
            .collect()
    };
    let (a, b) = (pick(base), pick(ours));
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    for x in &a {
        let Some(y) = b.iter().find(|y| y.pattern == x.pattern && y.qd == x.qd) else {
            continue;
        };
        let (ra, rb) = (
            spread(&x.values(compare::ops_per_s)),
            spread(&y.values(compare::ops_per_s)),
        );
        let ratio = match (ra, rb) {
            (Some(ra), Some(rb)) if ra.median > 0.0 => Some(rb.median / ra.median),
            _ => None,
        };
        if let Some(r) = ratio {
            ratios.push(r);
        }
        rows.push(vec![
            x.pattern.clone(),
            x.qd.to_string(),
            compare::cell(x, &fig("ops/s")),
            compare::cell(y, &fig("ops/s")),
            ratio.map_or("-".to_owned(), |r| format!("{r:.2}x")),
            format!(
                "{} / {}",
                compare::cell(x, &fig("exits/op")),
                compare::cell(y, &fig("exits/op"))
            ),
            format!(
                "{} / {}",
                compare::cell(x, &fig("notif/op")),
                compare::cell(y, &fig("notif/op"))
            ),
            format!(
                "{} / {}",
                compare::cell(x, &fig("irqs/op")),
                compare::cell(y, &fig("irqs/op"))
            ),
        ]);
    }
    let geo = (!ratios.is_empty())
        .then(|| (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp());
    let mut s = md_table(
        &[
            "phase",
            "qd",
            &format!("{} ops/s", base.name()),
            &format!("{} ops/s", ours.name()),
            "ratio",
            "exits/op",
            "notif/op",
            "irqs/op",
        ],
        &rows,
    );
    if let Some(g) = geo {
        let _ = writeln!(
            s,
            "\nGeometric mean of the ops/s ratios: **{g:.2}x** ({} over {}).",
            ours.name(),
            base.name()
        );
    }
    Some(s)
}

fn markdown(
    series: &[Series],
    bad: &[(Row, Verdict)],
    settings: &Settings,
    charts: &[(Class, Chart, PathBuf)],
) -> String {
    let mut md = String::from("# pvkit: the I/O paths compared\n\n");
    let _ = writeln!(
        md,
        "Paravirtualized paths (Xen split drivers, virtio) beside emulated hardware (IDE, AHCI, e1000, 16550), \
         each driven by the same guest workloads of pvkit's kernel, measured in the same units. Made by \
         `cargo xtask bench --rounds {} --phase-ms {}` in {:.0} s.\n",
        settings.rounds, settings.phase_ms, settings.seconds
    );
    md.push_str(
        "## What the figures mean\n\n\
         Every figure is counted by the guest itself, per operation of the workload phase (a block op is one \
         request; a net op one frame sent and its echo received; a console op one byte echoed):\n\n\
         - **exits/op**: guest actions that leave the guest, and their parts: **dev/op**, trapped port I/O and MMIO \
           accesses to device registers (doorbells, ATA and AHCI registers, the PIO data port; counted by the \
           drivers' register accessors); **irqc/op**, interrupt-controller accesses (the local APIC's EOI); \
           **hlt/op**, halts while waiting; **hcalls/op**, hypercalls (Xen PV: every hypercall, by number, including \
           event channel sends, grant table ops, the `SCHEDOP_block` that is PV's halt and the `iret` that ends each \
           event upcall). On QEMU, `cargo xtask test` checks the guest's register-access count against QEMU's own \
           trace of the same phase.\n\
         - **notif/op**: the driver's notifications to its device: virtio kicks, doorbell or command register writes, \
           event channel sends.\n\
         - **irqs/op**: interrupts (or event upcalls) the driver took as its own.\n\
         - **copied B/op**: bytes the guest CPU moved itself (PIO data transfers, bounce buffers); DMA and grant \
           copies done by the backend do not count.\n\
         - **ops/s, p50, p99**: throughput and per-op latency by the guest's clock.\n\n\
         **TCG time is not hardware time.** QEMU runs the guest under TCG (a binary translator) on a 2-core host; \
         Xen itself runs nested inside QEMU TCG. An exit costs what TCG charges for it, not what VT-x charges, and \
         the Xen paths pay for Xen emulated by TCG. Compare paths by their counted costs per operation; read ops/s \
         and latency only side by side within one run, never as hardware numbers.\n\n",
    );
    md.push_str("## Machine, versions and settings\n\n");
    let mut env_rows: Vec<Vec<String>> = environment().into_iter().map(|(k, v)| vec![k, v]).collect();
    env_rows.push(vec![
        "rounds".into(),
        format!(
            "{} (each cell: median, and min-max over the rounds)",
            settings.rounds
        ),
    ]);
    env_rows.push(vec![
        "throughput phase".into(),
        format!("{} ms per phase", settings.phase_ms),
    ]);
    env_rows.push(vec![
        "workloads".into(),
        "block: 4 KiB random reads and writes at queue depth 1 and 32 (capped at the device's depth: IDE 1), \
         64 KiB sequential reads and writes at depth 1; net: echo of 64-byte and 1514-byte frames; console: a \
         byte stream echoed"
            .into(),
    ]);
    env_rows.push(vec![
        "accelerator".into(),
        "TCG (-accel tcg -cpu max); Xen PV domUs in Xen 4.17 on QEMU TCG".into(),
    ]);
    md.push_str(&md_table(&["", ""], &env_rows));
    for class in [Class::Block, Class::Net, Class::Console] {
        let rows = compare::class_lines(series, class, false);
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(md, "\n## {} ({})\n", class.name(), compare::unit(class));
        md.push_str(&md_table(&compare::headers(false), &rows));
        for (c, chart, path) in charts.iter().filter(|(c, _, _)| *c == class) {
            let file = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let _ = writeln!(md, "\n![{}]({file})", chart.title(*c));
        }
    }
    let xen: Vec<&Series> = series.iter().filter(|s| s.row.env.is_xen()).collect();
    if !xen.is_empty() {
        md.push_str("\n## Hypercalls per op on the Xen PV paths\n\n");
        let rows: Vec<Vec<String>> = xen
            .iter()
            .map(|s| {
                vec![
                    s.pattern.clone(),
                    s.qd.to_string(),
                    compare::path_label(&s.row),
                    compare::hypercall_breakdown(s),
                ]
            })
            .collect();
        md.push_str(&md_table(
            &["phase", "qd", "path", "hypercalls per op by name"],
            &rows,
        ));
    }
    md.push_str("\n## pvkit vhost-user-blk vs QEMU's virtio-blk\n\n");
    md.push_str(
        "The same guest driver and workload, the device served by QEMU's built-in virtio-blk or by pvkit's \
         vhost-user-blk daemon (QEMU then only relays the vhost-user protocol; requests go straight from the \
         guest's rings to the daemon).\n\n",
    );
    md.push_str(
        &versus(
            series,
            Env::QemuPvh,
            Dev::VirtioBlk,
            Backend::Qemu,
            Backend::PvkitVhostUser,
        )
        .unwrap_or_else(|| "Not measured in this run.\n".to_owned()),
    );
    md.push_str("\n## pvkit blkback vs Linux's blkback\n\n");
    md.push_str(
        "The same blkfront and workload in Xen PV domUs, the disk (an equal loop-backed image) served by Linux's \
         kernel xen-blkback or by pvkit-xen-backend in dom0 userspace.\n\n",
    );
    md.push_str(
        &versus(series, Env::XenPv, Dev::XenBlk, Backend::Linux, Backend::PvkitXen)
            .unwrap_or_else(|| "Not measured in this run.\n".to_owned()),
    );
    if !bad.is_empty() {
        md.push_str("\n## Paths without figures\n\n");
        for (r, v) in bad {
            let _ = writeln!(
                md,
                "- {} `{}`: {}",
                v.label(),
                r.name(),
                v.reason().unwrap_or_default()
            );
        }
    }
    md.push_str(
        "\n## Raw data\n\n`raw.csv` and `raw.json` hold every phase of every round as the guest reported it \
         (counts, not ratios); the logs of each boot are in `target/xtask/logs/bench<round>-*.log`.\n",
    );
    md.push_str(&format!(
        "\nTotal time: {}.\n",
        table::duration(std::time::Duration::from_secs_f64(settings.seconds))
    ));
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::Fields;
    use crate::matrix::MATRIX;

    fn cell_of(name: &str, perf: &[String]) -> CellResult {
        let row = *MATRIX.iter().find(|r| r.name() == name).unwrap();
        let mut c = CellResult::new(&row, Verdict::Pass);
        c.costs = perf
            .iter()
            .map(|p| Measure::from_perf(&Fields::parse(p)))
            .collect();
        c
    }

    fn perf(dev: &str, pattern: &str, qd: u64, ops: u64, exits: u64) -> String {
        format!(
            "dev={dev} pattern={pattern} qd={qd} ops={ops} guest_us=100000 exits={exits} hypercalls={} \
             notifies={ops} irqs={ops} copied_bytes=0 lat_p50_ns=90000 lat_p99_ns=200000",
            if dev.starts_with("xen") { exits } else { 0 }
        )
    }

    #[test]
    fn the_report_has_its_files_units_sections_and_charts() {
        let dir = std::env::temp_dir().join(format!("pvkit-report-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let round = |k: u64| {
            vec![
                cell_of(
                    "qemu-pvh/qemu/blk-throughput@virtio-blk",
                    &[perf("virtio-blk", "randread4k", 1, 400 * k, 800 * k)],
                ),
                cell_of(
                    "qemu-pvh/pvkit-vhost-user/blk-throughput@virtio-blk",
                    &[perf("virtio-blk", "randread4k", 1, 500 * k, 1000 * k)],
                ),
                cell_of(
                    "qemu-pvh/qemu/blk-throughput@ide",
                    &[perf("ide", "randread4k", 1, 10, 2600)],
                ),
                cell_of(
                    "xen-pv/linux/blk-throughput@xen-blk",
                    &[perf("xen-blk", "randread4k", 1, 100, 250)],
                ),
                cell_of(
                    "xen-pv/pvkit-xen/blk-throughput@xen-blk",
                    &[perf("xen-blk", "randread4k", 1, 80, 260)],
                ),
                cell_of(
                    "qemu-pvh/qemu/net-echo@e1000",
                    &[perf("e1000", "echo64", 0, 100, 900)],
                ),
                CellResult::new(
                    MATRIX
                        .iter()
                        .find(|r| r.name() == "qemu-pvh-kvm/qemu/blk-throughput@virtio-blk")
                        .unwrap(),
                    Verdict::Skip("kvm_pvm".into()),
                ),
            ]
        };
        let settings = Settings {
            rounds: 2,
            phase_ms: 10,
            seconds: 1.0,
        };
        let files = write(&dir, &[round(1), round(2)], &settings).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "report.md",
            "raw.csv",
            "raw.json",
            "block-exits-per-op.svg",
            "block-ops-per-s.svg",
            "block-latency.svg",
            "net-exits-per-op.svg",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
        }
        let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
        assert!(md.contains("TCG time is not hardware time"), "{md}");
        assert!(
            md.contains("| --- | --- |\n") && !md.contains("||"),
            "tables are well-formed"
        );
        assert!(md.contains("## pvkit vhost-user-blk vs QEMU's virtio-blk"));
        assert!(md.contains("1.25x"), "vhost 500 vs qemu 400 ops: {md}");
        assert!(md.contains("## pvkit blkback vs Linux's blkback"));
        assert!(md.contains("0.80x"), "{md}");
        assert!(
            md.contains("SKIP `qemu-pvh-kvm/qemu/blk-throughput@virtio-blk`: kvm_pvm"),
            "{md}"
        );
        assert!(md.contains("![block: exits per op"), "{md}");
        let svg = std::fs::read_to_string(dir.join("block-exits-per-op.svg")).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("<rect"),
            "{}",
            &svg[..svg.len().min(200)]
        );
        assert!(svg.contains("xen-pv xen-blk (linux)"), "labels are in the chart");
        let csv = std::fs::read_to_string(dir.join("raw.csv")).unwrap();
        assert_eq!(csv.lines().count(), 1 + 2 * 6, "{csv}");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("raw.json")).unwrap()).unwrap();
        assert_eq!(json["records"].as_array().unwrap().len(), 12);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
