//! QEMU trace logs (`-d trace:... -D FILE`): counts of device register traps, virtio kicks and
//! interrupt deliveries, split per in-guest test and per workload phase.
//!
//! Events read (QEMU 10, log backend, one event per line, optionally prefixed `pid@secs:`):
//! - `memory_region_ops_read|write cpu <n> mr <p> addr <a> value <v> size <s> name '<region>'`: one
//!   access to an emulated register (a trap). `cpu -1` is not a vCPU (the IOAPIC delivering an
//!   interrupt writes region `apic-msi`), counted apart;
//! - `virtio_queue_notify vdev <p> n <q> vq <p>`: QEMU handling a virtqueue kick, whether it came
//!   through an ioeventfd (then it is not in the access events) or a trapped doorbell write;
//! - `virtio_notify vdev <p> vq <p>`: a virtio device asking to interrupt the guest;
//! - `apic_deliver_irq dest <d> dest_mode <m> delivery_mode <m> vector <v> trigger_mode <t>`: an
//!   interrupt (IOAPIC or MSI) delivered to the local APIC (the local APIC timer is not among them).
//!
//! Segments:
//! - phases: the guest writes phase number n (1, 2, ...) to `isa-debugcon` (port 0x402) when a
//!   workload phase starts and 0 when it ends; events in between count for that phase;
//! - tests: the kernel console (COM1, port 0x3f8) is itself in the trace, one byte per write to its
//!   transmit register; the `PVKIT TEST <name> START` line opens a test's segment and its PASS or FAIL
//!   line closes it.

use std::collections::BTreeMap;
use std::io::BufRead;

/// The trace events xtask asks QEMU for.
pub const EVENTS: &[&str] = &[
    "memory_region_ops_read",
    "memory_region_ops_write",
    "virtio_queue_notify",
    "virtio_notify",
    "apic_deliver_irq",
];

/// The I/O port of the `isa-debugcon` that carries phase markers (the guest's contract).
pub const PHASE_PORT: u64 = pvkit_frontends::workload::PHASE_PORT as u64;
/// The kernel console's UART (COM1) transmit register.
const CONSOLE_THR: u64 = 0x3f8;

/// Reads and writes of one register region.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Access {
    pub reads: u64,
    pub writes: u64,
}

impl Access {
    pub fn total(&self) -> u64 {
        self.reads + self.writes
    }
}

/// What happened in one stretch of the trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// vCPU accesses per region key (the region's name; `serial@0x2f8` style for UARTs, which all
    /// share the name `serial`).
    pub guest: BTreeMap<String, Access>,
    /// Accesses not made by a vCPU (`cpu -1`), per region key.
    pub other: BTreeMap<String, Access>,
    /// `virtio_queue_notify`: kicks QEMU handled (ioeventfd or trapped).
    pub queue_notifies: u64,
    /// `virtio_notify`: interrupt requests of virtio devices.
    pub device_notifies: u64,
    /// `apic_deliver_irq`: interrupts delivered, per vector.
    pub irqs: BTreeMap<u32, u64>,
}

impl Counts {
    /// vCPU accesses to regions whose key satisfies `pred`.
    pub fn guest_accesses(&self, pred: impl Fn(&str) -> bool) -> Access {
        let mut a = Access::default();
        for (k, v) in &self.guest {
            if pred(k) {
                a.reads += v.reads;
                a.writes += v.writes;
            }
        }
        a
    }

    /// Interrupts delivered, all vectors.
    pub fn irqs_delivered(&self) -> u64 {
        self.irqs.values().sum()
    }

    fn add(&mut self, ev: &Event) {
        match ev {
            Event::Access { cpu, region, write } => {
                let map = if *cpu < 0 {
                    &mut self.other
                } else {
                    &mut self.guest
                };
                let a = map.entry(region.clone()).or_default();
                if *write {
                    a.writes += 1;
                } else {
                    a.reads += 1;
                }
            }
            Event::QueueNotify => self.queue_notifies += 1,
            Event::DeviceNotify => self.device_notifies += 1,
            Event::Irq { vector } => *self.irqs.entry(*vector).or_default() += 1,
        }
    }
}

/// A parsed trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    /// The whole run.
    pub whole: Counts,
    /// Each in-guest test that started, in order (a test run twice appears twice), without its
    /// phases.
    pub tests: Vec<(String, Counts)>,
    /// Each phase, in order, with its marker number.
    pub phases: Vec<(u8, Counts)>,
    /// Lines read, and lines that were not one of [`EVENTS`] in a form this parser knows.
    pub lines: u64,
    pub unparsed: u64,
    /// A phase or test still open at the end of the trace (a run that died inside it).
    pub unterminated: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Access { cpu: i64, region: String, write: bool },
    QueueNotify,
    DeviceNotify,
    Irq { vector: u32 },
}

/// One parsed access with the facts segmentation needs.
struct Parsed {
    event: Event,
    addr: u64,
    value: u64,
}

/// `key value` pairs after the event name; the region name is quoted and may hold spaces.
fn field<'a>(rest: &'a str, key: &str) -> Option<&'a str> {
    let mut words = rest.split_whitespace();
    while let Some(w) = words.next() {
        if w == key {
            return words.next();
        }
    }
    None
}

fn num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The region key: the name, with the base port added for `serial` (COM1 and COM2 share the name).
fn region_key(name: &str, addr: u64) -> String {
    if name == "serial" {
        format!("serial@{:#x}", addr & !7)
    } else {
        name.to_owned()
    }
}

fn parse_line(line: &str) -> Option<Parsed> {
    // Optional `pid@secs:` prefix (QEMU's log backend with timestamps).
    let line = line.trim();
    let line = match line.split_once(':') {
        Some((pre, rest)) if pre.contains('@') && !pre.contains(' ') => rest,
        _ => line,
    };
    let (name, rest) = line.split_once(' ').unwrap_or((line, ""));
    let none = |event| {
        Some(Parsed {
            event,
            addr: 0,
            value: 0,
        })
    };
    match name {
        "memory_region_ops_read" | "memory_region_ops_write" => {
            let cpu: i64 = field(rest, "cpu")?.parse().ok()?;
            let addr = num(field(rest, "addr")?)?;
            let value = num(field(rest, "value")?)?;
            let (_, quoted) = rest.split_once(" name '")?;
            let region = quoted.strip_suffix('\'')?;
            // A device that raises its interrupt inside the vCPU's own register access (AHCI
            // completing synchronously, a UART, e1000) has the IOAPIC's delivery traced as a write
            // to `apic-msi` at the message address (0xfee00000 + destination) with that vCPU's
            // number. The guest's own local APIC accesses are at register offsets (EOI at 0xb0, never
            // 0): such a write is an interrupt delivery, not a guest access.
            let write = name.ends_with("write");
            let cpu = if write && region == "apic-msi" && addr & 0xfff == 0 {
                -1
            } else {
                cpu
            };
            Some(Parsed {
                event: Event::Access {
                    cpu,
                    region: region_key(region, addr),
                    write,
                },
                addr,
                value,
            })
        }
        "virtio_queue_notify" => none(Event::QueueNotify),
        "virtio_notify" => none(Event::DeviceNotify),
        "apic_deliver_irq" => {
            let vector = field(rest, "vector")?.parse().ok()?;
            none(Event::Irq { vector })
        }
        _ => None,
    }
}

/// Follows the console bytes in the trace to find test boundaries.
#[derive(Default)]
struct ConsoleFollower {
    line: Vec<u8>,
}

enum TestMark {
    Start(String),
    End(String),
}

impl ConsoleFollower {
    fn byte(&mut self, b: u8) -> Option<TestMark> {
        if b != b'\n' {
            if self.line.len() < 512 {
                self.line.push(b);
            }
            return None;
        }
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        let rest = line.trim().strip_prefix("PVKIT TEST ")?;
        let mut w = rest.split_whitespace();
        let name = w.next()?.to_owned();
        match w.next()? {
            "START" => Some(TestMark::Start(name)),
            "PASS" | "FAIL" => Some(TestMark::End(name)),
            _ => None,
        }
    }
}

/// Parses a whole trace.
pub fn parse(r: impl BufRead) -> std::io::Result<Trace> {
    let mut t = Trace::default();
    let mut phase: Option<usize> = None;
    let mut test: Option<usize> = None;
    let mut console = ConsoleFollower::default();
    for line in r.split(b'\n') {
        let line = line?;
        t.lines += 1;
        let line = String::from_utf8_lossy(&line);
        if line.trim().is_empty() {
            continue;
        }
        let Some(p) = parse_line(&line) else {
            t.unparsed += 1;
            continue;
        };
        // A phase marker belongs to neither phase; it is counted in the test and the whole run.
        let mut marker = None;
        let mut console_byte = None;
        if let Event::Access {
            cpu,
            region,
            write: true,
        } = &p.event
            && *cpu >= 0
        {
            if region == "isa-debugcon" && p.addr == PHASE_PORT {
                marker = Some(p.value as u8);
            } else if region == "serial@0x3f8" && p.addr == CONSOLE_THR {
                console_byte = Some(p.value as u8);
            }
        }
        t.whole.add(&p.event);
        match phase {
            Some(i) if marker.is_none() => t.phases[i].1.add(&p.event),
            // A test's own counts leave out its phases, which have figures of their own.
            _ => {
                if let Some(i) = test {
                    t.tests[i].1.add(&p.event);
                }
            }
        }
        match marker {
            Some(0) => phase = None,
            Some(n) => {
                t.phases.push((n, Counts::default()));
                phase = Some(t.phases.len() - 1);
            }
            None => {}
        }
        match console_byte.and_then(|b| console.byte(b)) {
            Some(TestMark::Start(name)) => {
                t.tests.push((name, Counts::default()));
                test = Some(t.tests.len() - 1);
            }
            Some(TestMark::End(name)) if test.is_some_and(|i| t.tests[i].0 == name) => test = None,
            Some(TestMark::End(_)) | None => {}
        }
    }
    if let Some(i) = phase {
        t.unterminated.push(format!("phase {}", t.phases[i].0));
    }
    if let Some(i) = test {
        t.unterminated.push(format!("test {}", t.tests[i].0));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(write: bool, cpu: i64, addr: u64, value: u64, name: &str) -> String {
        format!(
            "memory_region_ops_{} cpu {cpu} mr 0x55d0 addr {addr:#x} value {value:#x} size 1 name '{name}'",
            if write { "write" } else { "read" }
        )
    }

    fn console(text: &str) -> Vec<String> {
        text.bytes()
            .flat_map(|b| {
                [
                    access(false, 0, 0x3fd, 0x60, "serial"),
                    access(true, 0, 0x3f8, b.into(), "serial"),
                ]
            })
            .collect()
    }

    #[test]
    fn counts_split_per_test_and_phase() {
        let mut lines = vec!["ioapic_set_irq vector: 4 level: 0".to_owned()];
        lines.extend(console("PVKIT BOOT x\nPVKIT TEST blk@virtio-blk START\n"));
        lines.push(access(false, 0, 0xc0000000, 1, "virtio-pci-common-virtio-blk"));
        lines.push(access(true, 0, PHASE_PORT, 1, "isa-debugcon"));
        lines.push(access(false, 0, 0xc0001000, 1, "virtio-pci-isr-virtio-blk"));
        lines.push("virtio_queue_notify vdev 0x1 n 0 vq 0x2".into());
        lines.push("virtio_notify vdev 0x1 vq 0x2".into());
        lines.push(access(true, -1, 0xfee00000, 0, "apic-msi"));
        // The IOAPIC's delivery traced with the vCPU's number (a synchronous interrupt inside the
        // guest's access), and the guest's own EOI.
        lines.push(access(true, 0, 0xfee00000, 0x31, "apic-msi"));
        lines.push(access(true, 0, 0xfee000b0, 0, "apic-msi"));
        lines.push(
            "12@1700000000.5:apic_deliver_irq dest 0 dest_mode 0 delivery_mode 0 vector 49 trigger_mode 1"
                .into(),
        );
        lines.push(access(true, 0, PHASE_PORT, 0, "isa-debugcon"));
        lines.push(access(true, 0, PHASE_PORT, 2, "isa-debugcon"));
        lines.push(access(true, 0, 0x2f8, b'x'.into(), "serial"));
        lines.push(access(true, 0, PHASE_PORT, 0, "isa-debugcon"));
        lines.extend(console("PVKIT TEST blk@virtio-blk PASS ops=1\n"));
        lines.push(access(false, 0, 0xc0001000, 1, "virtio-pci-isr-virtio-blk"));
        let t = parse(lines.join("\n").as_bytes()).unwrap();
        assert_eq!(t.unparsed, 1, "the ioapic line is not one of ours");
        assert_eq!(t.unterminated, Vec::<String>::new());
        assert_eq!(t.phases.len(), 2);
        let (n1, p1) = &t.phases[0];
        assert_eq!(*n1, 1);
        assert_eq!(
            p1.guest["virtio-pci-isr-virtio-blk"],
            Access { reads: 1, writes: 0 }
        );
        assert_eq!(
            p1.other["apic-msi"].writes, 2,
            "deliveries, whoever's number they carry"
        );
        assert_eq!(p1.guest["apic-msi"].writes, 1, "the guest's EOI");
        assert_eq!((p1.queue_notifies, p1.device_notifies), (1, 1));
        assert_eq!(p1.irqs_delivered(), 1);
        assert_eq!(p1.irqs[&49], 1);
        assert!(
            !p1.guest.contains_key("isa-debugcon"),
            "markers are outside phases"
        );
        // COM2 and COM1 share QEMU's region name; the key keeps them apart.
        assert_eq!(t.phases[1].1.guest["serial@0x2f8"].writes, 1);
        assert!(!t.phases[1].1.guest.contains_key("serial@0x3f8"));
        // The test segment spans its START and PASS lines, not the access after it.
        assert_eq!(t.tests.len(), 1);
        let (name, c) = &t.tests[0];
        assert_eq!(name, "blk@virtio-blk");
        assert_eq!(c.guest["virtio-pci-common-virtio-blk"].reads, 1);
        assert!(
            !c.guest.contains_key("virtio-pci-isr-virtio-blk"),
            "that read was in phase 1"
        );
        assert_eq!(c.guest["isa-debugcon"].writes, 4);
        assert!(
            !c.guest.contains_key("serial@0x2f8"),
            "phase 2 is not the test's own"
        );
        assert_eq!(c.irqs_delivered(), 0, "nor is phase 1");
        assert_eq!(t.whole.guest["virtio-pci-isr-virtio-blk"].reads, 2);
        assert_eq!(
            t.whole.guest_accesses(|k| k.ends_with("-virtio-blk")),
            Access { reads: 3, writes: 0 }
        );
    }

    #[test]
    fn an_open_phase_or_test_is_reported() {
        let mut lines = console("PVKIT TEST t START\n");
        lines.push(access(true, 0, PHASE_PORT, 3, "isa-debugcon"));
        let t = parse(lines.join("\n").as_bytes()).unwrap();
        assert_eq!(t.unterminated, vec!["phase 3", "test t"]);
    }

    #[test]
    fn malformed_lines_are_counted_not_fatal() {
        let text = "memory_region_ops_read cpu x mr\nvirtio_notify vdev 0x1 vq 0x2\n\ngarbage";
        let t = parse(text.as_bytes()).unwrap();
        assert_eq!(t.unparsed, 2);
        assert_eq!(t.whole.device_notifies, 1);
    }
}
