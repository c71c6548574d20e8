//! Cost per operation: the guest's own counts (PERF lines, workload PASS lines) joined with QEMU's
//! trace counts of the same stretch (a phase between markers, or a whole test).
//!
//! Definitions (per operation = divided by the workload's `ops`):
//! - traps: vCPU accesses to the device's own register regions in the trace, plus virtio kicks that
//!   QEMU handled through an ioeventfd (they leave the vCPU too, but are not access events): the
//!   `virtio_queue_notify` count minus the doorbell writes that were traced;
//! - notifies: the driver's own count of notifications (kicks, doorbell or command writes);
//! - irqs: interrupts QEMU delivered to the local APIC (`apic_deliver_irq`), the guest's own count
//!   of interrupts it took as the device's is kept beside it;
//! - copies: bytes the guest CPU copied (PIO data transfers, bounce buffers);
//! - ops/s: by the guest's clock.

use std::fmt::Write as _;

use crate::console::Fields;
use crate::qemu::Device;
use crate::trace::Counts;

/// Where a cost was measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Between phase markers `n` and 0.
    Phase(u8),
    /// A whole test, from its START line to its verdict (device probe included).
    Test(String),
}

/// One cost record.
#[derive(Debug, Clone, PartialEq)]
pub struct Cost {
    pub scope: Scope,
    pub dev: String,
    pub pattern: String,
    pub qd: u64,
    pub mode: String,
    pub ops: u64,
    pub bytes: u64,
    pub guest_us: u64,
    pub guest_notifies: u64,
    pub guest_irqs: u64,
    pub copied_bytes: u64,
    /// The guest's own counts of its port I/O and MMIO register accesses in the stretch (all
    /// devices and interrupt controllers), when it reports them.
    pub guest_exits_pio: Option<u64>,
    pub guest_exits_mmio: Option<u64>,
    pub guest_exits_irqchip: Option<u64>,
    /// Trapped accesses to the device's regions.
    pub device_traps: u64,
    /// Kicks QEMU saw (`virtio_queue_notify`), and those of them that went through an ioeventfd.
    pub host_kicks: u64,
    pub ioeventfd_kicks: u64,
    /// Interrupts delivered to the local APIC.
    pub irqs_delivered: u64,
    /// vCPU accesses to the interrupt controllers (IOAPIC, local APIC: EOIs, masking).
    pub irqchip_traps: u64,
    /// All vCPU accesses in the stretch, any region.
    pub all_traps: u64,
    /// Per-region vCPU accesses: (key, reads, writes).
    pub regions: Vec<(String, u64, u64)>,
}

/// Whether trace region `key` is one of `dev`'s registers (QEMU 10's region names).
pub fn device_region(dev: &str, key: &str) -> bool {
    match dev {
        "virtio-blk" => key.starts_with("virtio-pci-") && key.ends_with("-virtio-blk"),
        "virtio-net" => key.starts_with("virtio-pci-") && key.ends_with("-virtio-net"),
        "virtio-console" => key.starts_with("virtio-pci-") && key.ends_with("-virtio-serial"),
        "ide" => key == "ide" || key.contains("bmdma"),
        "ahci" => key.starts_with("ahci"),
        "e1000" => key.starts_with("e1000"),
        "uart" => key == "serial@0x2f8",
        _ => false,
    }
}

fn is_irqchip(key: &str) -> bool {
    key == "ioapic" || key == "apic-msi" || key == "pic" || key == "elcr"
}

impl Cost {
    /// Joins the guest's figures `f` (a PERF record or a workload's PASS fields) with the trace
    /// counts `c` of the same stretch. `dev` and `pattern` come from the record when it has them.
    pub fn new(scope: Scope, dev: &str, pattern: &str, f: &Fields, c: &Counts) -> Cost {
        let num = |k: &str| f.get_u64(k).unwrap_or(0);
        let device_traps = c.guest_accesses(|k| device_region(dev, k)).total();
        let traced_doorbells = c
            .guest_accesses(|k| device_region(dev, k) && k.starts_with("virtio-pci-notify"))
            .writes;
        let ioeventfd_kicks = if dev.starts_with("virtio") {
            c.queue_notifies.saturating_sub(traced_doorbells)
        } else {
            0
        };
        Cost {
            scope,
            dev: f.get("dev").unwrap_or(dev).to_owned(),
            pattern: f.get("pattern").unwrap_or(pattern).to_owned(),
            qd: num("qd"),
            mode: f.get("mode").unwrap_or("?").to_owned(),
            ops: num("ops"),
            bytes: num("bytes"),
            guest_us: num("guest_us"),
            guest_notifies: num("notifies"),
            guest_irqs: num("irqs"),
            copied_bytes: num("copied_bytes"),
            guest_exits_pio: f.get_u64("exits_pio"),
            guest_exits_mmio: f.get_u64("exits_mmio"),
            guest_exits_irqchip: f.get_u64("exits_irqchip"),
            device_traps,
            host_kicks: c.queue_notifies,
            ioeventfd_kicks,
            irqs_delivered: c.irqs_delivered(),
            irqchip_traps: c.guest_accesses(is_irqchip).total(),
            all_traps: c.guest_accesses(|_| true).total(),
            regions: c
                .guest
                .iter()
                .map(|(k, a)| (k.clone(), a.reads, a.writes))
                .collect(),
        }
    }

    fn per_op(&self, n: u64) -> f64 {
        if self.ops == 0 {
            0.0
        } else {
            n as f64 / self.ops as f64
        }
    }

    /// The queue depth, `-` for workloads that do not report one (echo tests).
    pub fn qd_text(&self) -> String {
        if self.qd == 0 {
            "-".to_owned()
        } else {
            self.qd.to_string()
        }
    }

    /// Traps per operation: device register accesses plus ioeventfd kicks.
    pub fn traps_per_op(&self) -> f64 {
        self.per_op(self.device_traps + self.ioeventfd_kicks)
    }
    pub fn notifies_per_op(&self) -> f64 {
        self.per_op(self.guest_notifies)
    }
    pub fn irqs_per_op(&self) -> f64 {
        self.per_op(self.irqs_delivered)
    }
    pub fn copies_per_op(&self) -> f64 {
        self.per_op(self.copied_bytes)
    }
    pub fn ops_per_sec(&self) -> f64 {
        if self.guest_us == 0 {
            0.0
        } else {
            self.ops as f64 * 1e6 / self.guest_us as f64
        }
    }

    /// The per-scenario cost line: `dev pattern qd ops bytes traps/op notifies/op irqs/op copies/op
    /// ops/s`.
    pub fn line(&self) -> String {
        format!(
            "{:<14} {:<14} qd={:<3} ops={:<7} bytes={:<10} traps/op={:<8.2} notifies/op={:<6.3} irqs/op={:<6.3} \
             copies/op={:<7.0} ops/s={:.0}{}",
            self.dev,
            self.pattern,
            self.qd_text(),
            self.ops,
            self.bytes,
            self.traps_per_op(),
            self.notifies_per_op(),
            self.irqs_per_op(),
            self.copies_per_op(),
            self.ops_per_sec(),
            match &self.scope {
                Scope::Phase(_) => "",
                Scope::Test(_) => " (whole test, probe included)",
            }
        )
    }

    /// The raw counts as one `key=value` line (for reports).
    pub fn raw(&self) -> String {
        let mut s = format!(
            "scope={} dev={} pattern={} qd={} mode={} ops={} bytes={} guest_us={} guest_notifies={} \
             guest_irqs={} copied_bytes={} device_traps={} host_kicks={} ioeventfd_kicks={} \
             irqs_delivered={} irqchip_traps={} all_traps={}",
            match &self.scope {
                Scope::Phase(n) => format!("phase:{n}"),
                Scope::Test(t) => format!("test:{t}"),
            },
            self.dev,
            self.pattern,
            self.qd,
            self.mode,
            self.ops,
            self.bytes,
            self.guest_us,
            self.guest_notifies,
            self.guest_irqs,
            self.copied_bytes,
            self.device_traps,
            self.host_kicks,
            self.ioeventfd_kicks,
            self.irqs_delivered,
            self.irqchip_traps,
            self.all_traps
        );
        for (k, r, w) in &self.regions {
            let _ = write!(s, " region.{k}={r}/{w}");
        }
        s
    }

    /// What is inconsistent between the guest's counts and QEMU's.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let what = format!("{} {} qd={}", self.dev, self.pattern, self.qd);
        if self.ops == 0 {
            p.push(format!("{what}: no operations"));
        }
        // Every kick the driver counted reaches QEMU. Only checked one request at a time: an
        // ioeventfd is a counter, and kicks that follow each other before QEMU reads it come out
        // as one `virtio_queue_notify` (seen with the stock notify at queue depth 32).
        if self.dev.starts_with("virtio")
            && matches!(self.scope, Scope::Phase(_))
            && self.qd == 1
            && self.host_kicks < self.guest_notifies
        {
            p.push(format!(
                "{what}: the guest counted {} kicks, QEMU handled {}",
                self.guest_notifies, self.host_kicks
            ));
        }
        // An interrupt the driver took as its own was delivered by the interrupt controller.
        if self.mode == "irq" && self.irqs_delivered < self.guest_irqs {
            p.push(format!(
                "{what}: the guest counted {} interrupts, QEMU delivered {}",
                self.guest_irqs, self.irqs_delivered
            ));
        }
        p
    }
}

/// The same cost units on every path, as the guest counted them for one measured phase (a `PVKIT
/// PERF` line), with what the host saw of the same phase where it can see it.
///
/// - exits: every guest action that leaves the guest (trapped port I/O and MMIO register accesses,
///   hypercalls, halts), counted kernel-wide by the guest's accessors;
/// - notifications: the driver's kicks, doorbells, command writes or event-channel sends;
/// - interrupts: interrupts (or event upcalls) the driver took as its own;
/// - copies: bytes the guest CPU copied (PIO data, bounce buffers, grant copies done by the guest);
/// - ops/s and latency percentiles by the guest's clock.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measure {
    pub dev: String,
    pub pattern: String,
    pub qd: u64,
    pub mode: String,
    pub ops: u64,
    pub bytes: u64,
    pub guest_us: u64,
    /// Kernel-wide exits in the phase (None: the guest did not report them).
    pub exits: Option<u64>,
    pub exits_pio: Option<u64>,
    pub exits_mmio: Option<u64>,
    /// Interrupt-controller register accesses (EOI, IOAPIC), counted apart from the devices'.
    pub exits_irqchip: Option<u64>,
    pub exits_hlt: Option<u64>,
    pub hypercalls: Option<u64>,
    /// Hypercalls by name (`event_channel_op`, `grant_table_op`, ...).
    pub hc: Vec<(String, u64)>,
    pub notifies: u64,
    pub irqs: u64,
    pub copied_bytes: u64,
    pub lat_p50_ns: Option<u64>,
    pub lat_p99_ns: Option<u64>,
    /// QEMU's trace of the same phase: vCPU register accesses plus ioeventfd kicks, all regions.
    pub host_exits: Option<u64>,
}

impl Measure {
    /// From a `PVKIT PERF` line's fields.
    pub fn from_perf(f: &Fields) -> Measure {
        let num = |k: &str| f.get_u64(k).unwrap_or(0);
        let hc = f
            .get("hc")
            .map(|v| {
                v.split(',')
                    .filter_map(|p| {
                        let (n, c) = p.split_once(':')?;
                        Some((n.to_owned(), crate::console::parse_u64(c)?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Measure {
            dev: f.get("dev").unwrap_or("?").to_owned(),
            pattern: f.get("pattern").unwrap_or("?").to_owned(),
            qd: num("qd"),
            mode: f.get("mode").unwrap_or("?").to_owned(),
            ops: num("ops"),
            bytes: num("bytes"),
            guest_us: num("guest_us"),
            exits: f.get_u64("exits"),
            exits_pio: f.get_u64("exits_pio"),
            exits_mmio: f.get_u64("exits_mmio"),
            exits_irqchip: f.get_u64("exits_irqchip"),
            exits_hlt: f.get_u64("exits_hlt"),
            hypercalls: f.get_u64("hypercalls"),
            hc,
            notifies: num("notifies"),
            irqs: num("irqs"),
            copied_bytes: num("copied_bytes"),
            lat_p50_ns: f.get_u64("lat_p50_ns"),
            lat_p99_ns: f.get_u64("lat_p99_ns"),
            host_exits: None,
        }
    }

    pub fn per_op(&self, n: u64) -> f64 {
        if self.ops == 0 {
            0.0
        } else {
            n as f64 / self.ops as f64
        }
    }

    pub fn ops_per_sec(&self) -> f64 {
        if self.guest_us == 0 {
            0.0
        } else {
            self.ops as f64 * 1e6 / self.guest_us as f64
        }
    }
}

/// A device's name in the guest's test names (`blk-integrity@<name>`).
pub fn device_of_test(test: &str) -> Option<Device> {
    let (_, dev) = test.split_once('@')?;
    Device::io_devices().find(|d| d.name() == dev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Access;

    fn counts(regions: &[(&str, u64, u64)], kicks: u64, irqs: u64) -> Counts {
        let mut c = Counts::default();
        for (k, r, w) in regions {
            c.guest.insert(
                (*k).to_owned(),
                Access {
                    reads: *r,
                    writes: *w,
                },
            );
        }
        c.queue_notifies = kicks;
        c.irqs.insert(49, irqs);
        c
    }

    #[test]
    fn virtio_kicks_through_ioeventfd_count_as_traps() {
        let f = Fields::parse(
            "dev=virtio-blk pattern=randread4k qd=1 mode=irq ops=100 bytes=409600 guest_us=10000 \
             notifies=100 irqs=100 copied_bytes=0 notify=exact",
        );
        let c = counts(
            &[
                ("virtio-pci-isr-virtio-blk", 100, 0),
                ("apic-msi", 0, 100),
                ("ioapic", 0, 0),
                ("pit", 5, 0),
            ],
            100,
            100,
        );
        let cost = Cost::new(Scope::Phase(1), "virtio-blk", "?", &f, &c);
        assert_eq!(cost.device_traps, 100);
        assert_eq!(cost.ioeventfd_kicks, 100);
        assert_eq!(cost.traps_per_op(), 2.0);
        assert_eq!(cost.irqs_per_op(), 1.0);
        assert_eq!(cost.irqchip_traps, 100);
        assert_eq!(cost.all_traps, 205);
        assert_eq!(cost.ops_per_sec(), 10_000.0);
        assert!(cost.problems().is_empty(), "{:?}", cost.problems());
        assert!(cost.line().contains("traps/op=2.00"), "{}", cost.line());
        assert!(cost.raw().contains("region.virtio-pci-isr-virtio-blk=100/0"));

        // With ioeventfd off the doorbell writes are in the trace: not counted twice.
        let off = counts(
            &[
                ("virtio-pci-isr-virtio-blk", 100, 0),
                ("virtio-pci-notify-virtio-blk", 0, 100),
            ],
            100,
            100,
        );
        let cost = Cost::new(Scope::Phase(1), "virtio-blk", "?", &f, &off);
        assert_eq!((cost.device_traps, cost.ioeventfd_kicks), (200, 0));
        assert_eq!(cost.traps_per_op(), 2.0);

        // Kicks the guest counted but QEMU never saw, interrupts never delivered.
        let lost = counts(&[], 60, 40);
        let p = Cost::new(Scope::Phase(1), "virtio-blk", "?", &f, &lost).problems();
        assert_eq!(p.len(), 2, "{p:?}");
        // At depth 32 an ioeventfd may merge kicks: fewer seen by QEMU is no problem there.
        let deep = Fields::parse(&f.to_string().replace("qd=1", "qd=32"));
        let p = Cost::new(Scope::Phase(3), "virtio-blk", "?", &deep, &counts(&[], 60, 100)).problems();
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn emulated_devices_count_their_own_regions_only() {
        let f =
            Fields::parse("ops=10 bytes=40960 guest_us=2000 notifies=10 irqs=12 copied_bytes=40960 mode=irq");
        let c = counts(
            &[
                ("ide", 20_600, 100),
                ("serial@0x3f8", 50, 50),
                ("serial@0x2f8", 7, 7),
            ],
            0,
            12,
        );
        let cost = Cost::new(
            Scope::Test("blk-integrity@ide".into()),
            "ide",
            "blk-integrity",
            &f,
            &c,
        );
        assert_eq!(cost.dev, "ide");
        assert_eq!(cost.pattern, "blk-integrity");
        assert_eq!(cost.traps_per_op(), 2070.0);
        assert_eq!(cost.copies_per_op(), 4096.0);
        assert_eq!(cost.ops_per_sec(), 5000.0);
        assert!(cost.line().contains("whole test"));
        assert!(device_region("uart", "serial@0x2f8") && !device_region("uart", "serial@0x3f8"));
        assert!(device_region("virtio-console", "virtio-pci-isr-virtio-serial"));
        assert!(!device_region("virtio-blk", "virtio-pci-isr-virtio-net"));
    }

    #[test]
    fn test_names_map_to_devices() {
        assert_eq!(
            device_of_test("blk-integrity@virtio-blk"),
            Some(Device::VirtioBlk)
        );
        assert_eq!(device_of_test("console-echo@uart"), Some(Device::Uart));
        assert_eq!(device_of_test("net-echo@xen-net"), None);
        assert_eq!(device_of_test("hello"), None);
    }
}
