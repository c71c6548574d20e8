//! The comparison: the cost records of the comparison rows, side by side in the same units, one
//! table per class (block, net, console) with one line per path and measured phase.
//!
//! Units (per operation = divided by the phase's ops; a block op is a request, a net op an echoed
//! frame, a console op a byte echoed):
//! - exits/op: every guest action that left the guest, counted by the guest, and its parts:
//!   dev/op (trapped port I/O and MMIO accesses to device registers: doorbells, ATA and AHCI
//!   registers, the PIO data port), irqc/op (interrupt-controller accesses: EOIs), hlt/op (halts
//!   while waiting) and hcalls/op (hypercalls, Xen PV; there the halt is `SCHEDOP_block` and the
//!   return from an interrupt the `iret` hypercall);
//! - notif/op: the driver's notifications (virtio kicks, doorbells, command writes, event
//!   channel sends);
//! - irqs/op: interrupts or event upcalls the driver took;
//! - copied B/op: bytes the guest CPU copied;
//! - ops/s and latency percentiles by the guest's clock (under TCG: emulated time, not hardware).

use std::collections::BTreeMap;

use crate::costs::Measure;
use crate::matrix::{Class, Row};
use crate::outcome::{CellResult, Verdict};
use crate::table;

/// One path's measurements of one phase over the rounds.
#[derive(Debug, Clone)]
pub struct Series {
    pub row: Row,
    pub pattern: String,
    pub qd: u64,
    pub rounds: Vec<Measure>,
}

impl Series {
    pub fn class(&self) -> Class {
        self.row.device.map_or(Class::Block, |d| d.class())
    }

    /// `f` of each round.
    pub fn values(&self, f: impl Fn(&Measure) -> Option<f64>) -> Vec<f64> {
        self.rounds.iter().filter_map(f).collect()
    }
}

/// Min, median and max.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

pub fn spread(values: &[f64]) -> Option<Spread> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    Some(Spread {
        min: v[0],
        median,
        max: v[v.len() - 1],
    })
}

/// The figures of a phase, per op.
pub fn exits_per_op(m: &Measure) -> Option<f64> {
    m.exits.map(|e| m.per_op(e))
}
pub fn dev_per_op(m: &Measure) -> Option<f64> {
    Some(m.per_op(m.exits_pio? + m.exits_mmio?))
}
pub fn irqchip_per_op(m: &Measure) -> Option<f64> {
    m.exits_irqchip.map(|e| m.per_op(e))
}
pub fn hlt_per_op(m: &Measure) -> Option<f64> {
    m.exits_hlt.map(|e| m.per_op(e))
}
pub fn hypercalls_per_op(m: &Measure) -> Option<f64> {
    m.hypercalls.map(|e| m.per_op(e))
}
pub fn notifies_per_op(m: &Measure) -> Option<f64> {
    Some(m.per_op(m.notifies))
}
pub fn irqs_per_op(m: &Measure) -> Option<f64> {
    Some(m.per_op(m.irqs))
}
pub fn copies_per_op(m: &Measure) -> Option<f64> {
    Some(m.per_op(m.copied_bytes))
}
pub fn ops_per_s(m: &Measure) -> Option<f64> {
    Some(m.ops_per_sec())
}
pub fn p50_us(m: &Measure) -> Option<f64> {
    m.lat_p50_ns.map(|n| n as f64 / 1e3)
}
pub fn p99_us(m: &Measure) -> Option<f64> {
    m.lat_p99_ns.map(|n| n as f64 / 1e3)
}
pub fn host_exits_per_op(m: &Measure) -> Option<f64> {
    m.host_exits.map(|e| m.per_op(e))
}

/// Groups the rounds' results into series (path x phase, in the order the phases ran) and the
/// rows that did not pass in some round.
pub fn collect(rounds: &[Vec<CellResult>]) -> (Vec<Series>, Vec<(Row, Verdict)>) {
    let mut series: Vec<Series> = Vec::new();
    let mut bad: Vec<(Row, Verdict)> = Vec::new();
    for round in rounds {
        for c in round.iter().filter(|c| c.row.compares()) {
            if c.verdict != Verdict::Pass {
                if !bad.iter().any(|(r, _)| *r == c.row) {
                    bad.push((c.row, c.verdict.clone()));
                }
                continue;
            }
            for m in &c.costs {
                match series
                    .iter_mut()
                    .find(|s| s.row == c.row && s.pattern == m.pattern && s.qd == m.qd)
                {
                    Some(s) => s.rounds.push(m.clone()),
                    None => series.push(Series {
                        row: c.row,
                        pattern: m.pattern.clone(),
                        qd: m.qd,
                        rounds: vec![m.clone()],
                    }),
                }
            }
        }
    }
    (series, bad)
}

/// The phases of a class in the order they ran on the first path that ran them.
pub fn phases(series: &[Series], class: Class) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for s in series.iter().filter(|s| s.class() == class) {
        let k = (s.pattern.clone(), s.qd);
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

/// A path's label in the tables and charts.
pub fn path_label(r: &Row) -> String {
    format!(
        "{} {} ({})",
        r.env.name(),
        r.device.map_or("-", |d| d.name()),
        r.backend.name()
    )
}

/// One column of the comparison: its header, the figure, and its digits (`None`: by size).
#[derive(Clone, Copy)]
pub struct Figure {
    pub header: &'static str,
    pub get: fn(&Measure) -> Option<f64>,
    pub digits: Option<usize>,
}

/// The columns every path gets, in the terminal table and in the report.
pub const FIGURES: &[Figure] = &[
    Figure {
        header: "exits/op",
        get: exits_per_op,
        digits: None,
    },
    Figure {
        header: "dev/op",
        get: dev_per_op,
        digits: None,
    },
    Figure {
        header: "irqc/op",
        get: irqchip_per_op,
        digits: None,
    },
    Figure {
        header: "hlt/op",
        get: hlt_per_op,
        digits: None,
    },
    Figure {
        header: "hcalls/op",
        get: hypercalls_per_op,
        digits: None,
    },
    Figure {
        header: "notif/op",
        get: notifies_per_op,
        digits: None,
    },
    Figure {
        header: "irqs/op",
        get: irqs_per_op,
        digits: None,
    },
    Figure {
        header: "copied B/op",
        get: copies_per_op,
        digits: None,
    },
    Figure {
        header: "ops/s",
        get: ops_per_s,
        digits: Some(0),
    },
    Figure {
        header: "p50 us",
        get: p50_us,
        digits: Some(1),
    },
    Figure {
        header: "p99 us",
        get: p99_us,
        digits: Some(1),
    },
];

/// QEMU's view of the exits (traced runs only).
pub const HOST_EXITS: Figure = Figure {
    header: "QEMU exits/op",
    get: host_exits_per_op,
    digits: None,
};

/// The columns that say which path and phase a line is.
pub const KEY_HEADERS: [&str; 4] = ["phase", "qd", "transport", "path (env device (backend))"];

/// Digits for a per-op figure: small ones need more.
fn digits(median: f64) -> usize {
    match median.abs() {
        x if x < 1.0 => 3,
        x if x < 100.0 => 2,
        _ => 0,
    }
}

/// A figure of a series: the median, and with several rounds `[min-max]`.
pub fn cell(s: &Series, f: &Figure) -> String {
    match spread(&s.values(f.get)) {
        None => "-".to_owned(),
        Some(v) => {
            let d = f.digits.unwrap_or_else(|| digits(v.median));
            if s.rounds.len() > 1 {
                format!("{:.*} [{:.*}-{:.*}]", d, v.median, d, v.min, d, v.max)
            } else {
                format!("{:.*}", d, v.median)
            }
        }
    }
}

/// One line of a class's table: the key columns, then every figure (and QEMU's when `traced`).
pub fn line(s: &Series, traced: bool) -> Vec<String> {
    let mut l = vec![
        s.pattern.clone(),
        if s.qd == 0 {
            "-".to_owned()
        } else {
            s.qd.to_string()
        },
        s.row.transport.name().to_owned(),
        path_label(&s.row),
    ];
    l.extend(FIGURES.iter().map(|f| cell(s, f)));
    if traced {
        l.push(cell(s, &HOST_EXITS));
    }
    l
}

/// The headers of [`line()`].
pub fn headers(traced: bool) -> Vec<&'static str> {
    let mut h: Vec<&str> = KEY_HEADERS.to_vec();
    h.extend(FIGURES.iter().map(|f| f.header));
    if traced {
        h.push(HOST_EXITS.header);
    }
    h
}

/// A class's lines: its phases in the order they ran, every path of each phase.
pub fn class_lines(series: &[Series], class: Class, traced: bool) -> Vec<Vec<String>> {
    phases(series, class)
        .into_iter()
        .flat_map(|(pattern, qd)| {
            series
                .iter()
                .filter(move |s| s.class() == class && s.pattern == pattern && s.qd == qd)
                .map(|s| line(s, traced))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The comparison tables. With several rounds each cell is `median [min-max]`.
pub fn render(series: &[Series], bad: &[(Row, Verdict)], traced: bool) -> String {
    let mut out = String::new();
    for class in [Class::Block, Class::Net, Class::Console] {
        let cells = class_lines(series, class, traced);
        let class_bad: Vec<&(Row, Verdict)> = bad
            .iter()
            .filter(|(r, _)| r.device.map(|d| d.class()) == Some(class))
            .collect();
        if cells.is_empty() && class_bad.is_empty() {
            continue;
        }
        out.push_str(&format!("\n{} ({})\n", class.name(), unit(class)));
        out.push_str(&table::render(&headers(traced), &cells));
        for (r, v) in class_bad {
            out.push_str(&format!(
                "  {} {}: {}\n",
                v.label(),
                path_label(r),
                v.reason().unwrap_or_default()
            ));
        }
    }
    out
}

/// What one operation is in a class.
pub fn unit(class: Class) -> &'static str {
    match class {
        Class::Block => "op = one request",
        Class::Net => "op = one frame echoed",
        Class::Console => "op = one byte echoed",
    }
}

/// Hypercalls by name per op, for the Xen paths (`name=x.xx ...`).
pub fn hypercall_breakdown(s: &Series) -> String {
    let mut by: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for m in &s.rounds {
        for (n, c) in &m.hc {
            let e = by.entry(n.clone()).or_default();
            e.0 += c;
            e.1 += m.ops;
        }
    }
    by.iter()
        .map(|(n, (c, ops))| format!("{n}={:.2}", *c as f64 / (*ops).max(1) as f64))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::Fields;

    use crate::matrix::named as row;

    fn cell(name: &str, perf: &[&str]) -> CellResult {
        let mut c = CellResult::new(&row(name), Verdict::Pass);
        c.costs = perf
            .iter()
            .map(|p| Measure::from_perf(&Fields::parse(p)))
            .collect();
        c
    }

    #[test]
    fn spreads() {
        assert_eq!(spread(&[]), None);
        assert_eq!(
            spread(&[3.0, 1.0, 2.0]),
            Some(Spread {
                min: 1.0,
                median: 2.0,
                max: 3.0
            })
        );
        assert_eq!(spread(&[4.0, 1.0]).unwrap().median, 2.5);
    }

    #[test]
    fn one_line_per_path_and_phase_in_the_same_units() {
        let xen = "dev=xen-blk pattern=randread4k qd=1 ops=100 guest_us=100000 exits=250 hypercalls=250 \
                   hc=event_channel_op:100,sched_op:50,iret:100 notifies=100 irqs=100 copied_bytes=0 \
                   lat_p50_ns=900000 lat_p99_ns=2000000";
        let virtio = "dev=virtio-blk pattern=randread4k qd=1 ops=400 guest_us=100000 exits=800 notifies=400 \
                      irqs=400 copied_bytes=0";
        let ide = "dev=ide pattern=randread4k qd=1 ops=10 guest_us=100000 exits=2600 notifies=10 irqs=10 \
                   copied_bytes=40960";
        let rounds = vec![
            vec![
                cell("xen-pv/linux/blk-throughput@xen-blk", &[xen]),
                cell("qemu-pvh/qemu/blk-throughput@virtio-blk", &[virtio]),
                cell("qemu-pvh/qemu/blk-throughput@ide", &[ide]),
                CellResult::new(
                    &row("qemu-pvh-kvm/qemu/blk-throughput@virtio-blk"),
                    Verdict::Skip("no VT".into()),
                ),
            ],
            vec![cell(
                "qemu-pvh/qemu/blk-throughput@ide",
                &[&ide.replace("ops=10 ", "ops=20 ")],
            )],
        ];
        let (series, bad) = collect(&rounds);
        assert_eq!(series.len(), 3);
        assert_eq!(bad.len(), 1);
        let ide_s = series
            .iter()
            .find(|s| s.row.device == Some(crate::matrix::Dev::Ide))
            .unwrap();
        assert_eq!(ide_s.rounds.len(), 2);
        let text = render(&series, &bad, false);
        assert!(text.contains("block (op = one request)"), "{text}");
        assert!(text.contains("xen-pv xen-blk (linux)"), "{text}");
        assert!(text.contains("2.50"), "xen exits/op: {text}");
        assert!(
            text.contains("SKIP qemu-pvh-kvm virtio-blk (qemu): no VT"),
            "{text}"
        );
        // IDE over two rounds: exits/op 260 and 130, median 195.
        assert!(text.contains("195 [130-260]"), "{text}");
        let xen_s = series
            .iter()
            .find(|s| s.row.device == Some(crate::matrix::Dev::XenBlk))
            .unwrap();
        assert_eq!(
            hypercall_breakdown(xen_s),
            "event_channel_op=1.00 iret=1.00 sched_op=0.50"
        );
    }
}
