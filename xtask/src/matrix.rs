//! The scenario matrix: the one place a scenario is declared.
//!
//! A row is *workload x environment x transport x backend* (plus the device the workload drives and,
//! rarely, a variant). Everything else is derived from the row by the environment's executor
//! (`crate::qemu_env` for QEMU PVH guests, `crate::xen` for Xen PV domUs): what is booted, which
//! devices and daemons are set up, what the guest is told to run (`tests=` and parameters), which
//! host checks run afterwards (`crate::checks`), and which cost record belongs to which cell
//! (`crate::costs`). `cargo xtask test --list` prints the table.
//!
//! Rows are tagged with the commands that run them: every row is a test of `cargo xtask test`; the
//! rows of the comparison (block throughput, net echo, console echo on every path) also make up
//! `cargo xtask run`'s table and `cargo xtask bench`'s report.

use std::fmt;

/// An enum of plain variants, each with its name in the matrix (`name()`, a `const fn`), the list of
/// all of them and the reverse lookup.
macro_rules! named {
    ($(#[$m:meta])* pub enum $E:ident { $($(#[$vm:meta])* $V:ident = $n:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $E { $($(#[$vm])* $V,)* }
        #[allow(dead_code)] // not every enum needs every helper
        impl $E {
            pub const ALL: &'static [$E] = &[$($E::$V,)*];
            pub const fn name(self) -> &'static str {
                match self { $($E::$V => $n,)* }
            }
            pub fn from_name(s: &str) -> Option<$E> {
                Self::ALL.iter().copied().find(|v| v.name() == s)
            }
        }
    };
}

named! {
    /// Where the guest runs.
    pub enum Env {
        /// Our kernel as a PVH guest of QEMU's q35 (`-kernel`, qboot) under TCG (`-cpu max`).
        QemuPvh = "qemu-pvh",
        /// The same under KVM (`-cpu host`): only on a host with VT (vmx or svm); a host whose
        /// `/dev/kvm` is kvm_pvm (a paravirtual KVM without VT) reports these rows skipped.
        QemuPvhKvm = "qemu-pvh-kvm",
        /// A classic paravirtualized domU of real Xen 4.17 (Linux dom0), all in one QEMU TCG machine.
        XenPv = "xen-pv",
        /// A PVH domU of the same Xen (no rows yet: the guest's Xen PVH entry does not exist).
        #[allow(dead_code)]
        XenPvh = "xen-pvh",
        /// An HVM domU of the same Xen with emulated devices from QEMU in dom0 (no rows yet).
        #[allow(dead_code)]
        XenHvm = "xen-hvm",
    }
}

named! {
    /// How the guest's driver talks to its device.
    pub enum Transport {
        /// No I/O device: the platform itself (CPU, memory, timers, interrupts, hypercalls).
        Platform = "platform",
        /// Xen split drivers: shared rings in granted pages, event channels, XenStore.
        Xen = "xen",
        /// virtio over PCI: split virtqueues in guest memory, one doorbell write per kick.
        Virtio = "virtio",
        /// Emulated PC hardware driven through its registers (ATA PIO, AHCI, e1000, 16550).
        Emulated = "emulated",
    }
}

named! {
    /// What serves the device on the host side.
    pub enum Backend {
        /// Nothing (a platform test), or nobody on purpose (a device whose backend never connects).
        None = "none",
        /// QEMU's own device model.
        Qemu = "qemu",
        /// pvkit's vhost-user daemons (`vhost-user-blk`, `vhost-user-net`), QEMU as the frontend's VMM.
        PvkitVhostUser = "pvkit-vhost-user",
        /// Linux's kernel backends in dom0 (xen-blkback on a loop device, xen-netback).
        Linux = "linux",
        /// pvkit's userspace Xen backends in dom0 (`pvkit-xen-backend`: blkback, netback, console).
        PvkitXen = "pvkit-xen",
        /// The Xen toolstack's console daemon, which serves every domain's primary console.
        Xenconsoled = "xenconsoled",
    }
}

named! {
    /// What the guest runs (the first half of its test name, `<workload>@<device>`).
    pub enum Workload {
        /// Boot information; the memory map matches what the guest was given.
        Hello = "hello",
        /// Hypervisor detection through CPUID.
        Cpuid = "cpuid",
        /// Heap stress: allocations of many sizes and alignments, contents verified.
        Heap = "heap",
        /// Timer interrupts at the requested rate, checked against the TSC and the host's clock.
        Timer = "timer",
        /// PCI enumeration finds exactly the functions QEMU was given.
        Pci = "pci",
        /// COM1 in loopback mode, polled and by interrupt.
        Uart = "uart",
        /// Event channel loopback (alloc unbound, bind, send, mask/unmask, close).
        Evtchn = "evtchn",
        /// XenStore: own domid and name, a transaction, a watch dom0 fires.
        Xenstore = "xenstore",
        /// A deliberate page fault is reported with vector and address.
        FaultPagefault = "fault-pagefault",
        /// A deliberate panic is reported with its message.
        FaultPanic = "fault-panic",
        /// A stack overflow is reported as a double fault on the IST stack.
        FaultStack = "fault-stack",
        /// Pattern written, flushed, read back in reverse; the host re-checks every sector.
        BlkIntegrity = "blk-integrity",
        /// 4 KiB random reads and writes at queue depth 1 and 32, 64 KiB sequential: costs per op.
        BlkThroughput = "blk-throughput",
        /// A write the device refuses surfaces its error status; the image is unchanged.
        BlkError = "blk-error",
        /// Honest I/O, then an impossible request index: the backend halts that ring only.
        BlkHostile = "blk-hostile",
        /// The daemon serves a QEMU, a QEMU killed mid-I/O, another QEMU, and a second daemon with
        /// O_DIRECT and a worker pool, on one image; it must not leak across connections.
        BlkReconnect = "blk-reconnect",
        /// Frames echoed by an L2 peer; both sides verify and count; small and MTU-sized frame rates.
        NetEcho = "net-echo",
        /// ARP and ICMP echo requests answered by dom0's kernel or the switch's echo peer.
        NetPing = "net-ping",
        /// Bytes echoed by the console peer; both sides verify and count.
        ConsoleEcho = "console-echo",
        /// A line dom0 types into the console arrives through the ring's input side.
        ConsoleInput = "console-input",
        /// The workloads ask for devices the guest does not have: each fails at once, nothing hangs.
        DeviceAbsent = "device-absent",
        /// A device whose backend never connects: the frontend gives up with a timeout message.
        NoBackend = "no-backend",
        /// The backend refuses bad configuration (a missing image) and a garbage ring reference,
        /// while the same domain's other devices keep working.
        BadInput = "bad-input",
        /// A Debian Linux guest's own drivers against the backend (dd with checksums, ping, console).
        LinuxPeer = "linux-peer",
    }
}

named! {
    /// The device a workload drives (the second half of the guest's test name).
    pub enum Dev {
        VirtioBlk = "virtio-blk",
        Ide = "ide",
        Ahci = "ahci",
        VirtioNet = "virtio-net",
        E1000 = "e1000",
        VirtioConsole = "virtio-console",
        Uart = "uart",
        XenBlk = "xen-blk",
        XenNet = "xen-net",
        XenConsole = "xen-console",
    }
}

/// A variant of a row that otherwise equals another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Variant {
    /// The virtio-drivers crate's own `PciTransport::notify` (3 register accesses per kick), the
    /// "before" of the cached one-write doorbell.
    StockNotify,
    /// The switch's port is a Linux tap interface in dom0 instead of the echo peer.
    Tap,
}

/// Which commands run a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sets {
    /// `cargo xtask test` only.
    Test,
    /// `cargo xtask test` (short), and the comparison of `cargo xtask run` and `cargo xtask bench`.
    Compare,
}

/// One scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub workload: Workload,
    pub env: Env,
    pub transport: Transport,
    pub backend: Backend,
    pub device: Option<Dev>,
    pub variant: Option<Variant>,
    pub sets: Sets,
}

/// The parameters a row's guest gets: short for tests, longer for the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `cargo xtask test`: seconds of QEMU time for the whole matrix.
    Test,
    /// `cargo xtask run` and `bench`: throughput phases of `phase_ms` each.
    Compare { phase_ms: u64 },
}

impl Env {
    /// Whether QEMU runs our kernel directly (the guest's accelerator is QEMU's).
    pub fn is_qemu(self) -> bool {
        matches!(self, Env::QemuPvh | Env::QemuPvhKvm)
    }

    /// Whether the guest is a domU of the Xen harness.
    pub fn is_xen(self) -> bool {
        matches!(self, Env::XenPv | Env::XenPvh | Env::XenHvm)
    }
}

impl Dev {
    /// The transport a driver of this device uses.
    pub const fn transport(self) -> Transport {
        match self {
            Dev::VirtioBlk | Dev::VirtioNet | Dev::VirtioConsole => Transport::Virtio,
            Dev::Ide | Dev::Ahci | Dev::E1000 | Dev::Uart => Transport::Emulated,
            Dev::XenBlk | Dev::XenNet | Dev::XenConsole => Transport::Xen,
        }
    }

    /// The QEMU device of a QEMU PVH guest (None for the Xen devices).
    pub fn qemu(self) -> Option<crate::qemu::Device> {
        use crate::qemu::Device as Q;
        Some(match self {
            Dev::VirtioBlk => Q::VirtioBlk,
            Dev::Ide => Q::Ide,
            Dev::Ahci => Q::Ahci,
            Dev::VirtioNet => Q::VirtioNet,
            Dev::E1000 => Q::E1000,
            Dev::VirtioConsole => Q::VirtioConsole,
            Dev::Uart => Q::Uart,
            Dev::XenBlk | Dev::XenNet | Dev::XenConsole => return None,
        })
    }

    /// What kind of I/O it does.
    pub fn class(self) -> Class {
        match self {
            Dev::VirtioBlk | Dev::Ide | Dev::Ahci | Dev::XenBlk => Class::Block,
            Dev::VirtioNet | Dev::E1000 | Dev::XenNet => Class::Net,
            Dev::VirtioConsole | Dev::Uart | Dev::XenConsole => Class::Console,
        }
    }
}

/// Block, net or console: the three sections of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Block,
    Net,
    Console,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Block => "block",
            Class::Net => "net",
            Class::Console => "console",
        }
    }
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::StockNotify => "stock-notify",
            Variant::Tap => "tap",
        }
    }
}

impl Row {
    /// The guest's name for what it runs: `<workload>@<device>` (or the bare workload), as in its
    /// `tests=` list.
    pub fn test(&self) -> String {
        match self.device {
            Some(d) => format!("{}@{}", self.workload.name(), d.name()),
            None => self.workload.name().to_owned(),
        }
    }

    /// The row's name: `<env>/[<backend>/]<test>[+<variant>]`, unique in the matrix.
    pub fn name(&self) -> String {
        let mut s = self.env.name().to_owned();
        s.push('/');
        if self.backend != Backend::None {
            s.push_str(self.backend.name());
            s.push('/');
        }
        s.push_str(&self.test());
        if let Some(v) = self.variant {
            s.push('+');
            s.push_str(v.name());
        }
        s
    }

    pub fn compares(&self) -> bool {
        self.sets == Sets::Compare
    }

    /// The value of column `col` (for filters and the list).
    pub fn column(&self, col: Column) -> String {
        match col {
            Column::Name => self.name(),
            Column::Workload => self.workload.name().to_owned(),
            Column::Env => self.env.name().to_owned(),
            Column::Transport => self.transport.name().to_owned(),
            Column::Backend => self.backend.name().to_owned(),
            Column::Device => self.device.map_or("-", Dev::name).to_owned(),
            Column::Variant => self.variant.map_or("-", Variant::name).to_owned(),
            Column::Sets => match self.sets {
                Sets::Test => "test",
                Sets::Compare => "test,run,bench",
            }
            .to_owned(),
        }
    }
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

named! {
    /// The columns of the matrix.
    pub enum Column {
        Name = "name",
        Workload = "workload",
        Env = "env",
        Transport = "transport",
        Backend = "backend",
        Device = "device",
        Variant = "variant",
        Sets = "sets",
    }
}

const fn row(
    workload: Workload,
    env: Env,
    transport: Transport,
    backend: Backend,
    device: Option<Dev>,
    sets: Sets,
) -> Row {
    Row {
        workload,
        env,
        transport,
        backend,
        device,
        variant: None,
        sets,
    }
}

const fn variant(r: Row, v: Variant) -> Row {
    Row {
        variant: Some(v),
        ..r
    }
}

use Backend as B;
use Dev as D;
use Env as E;
use Sets::{Compare as C, Test as T};
use Transport as Tr;
use Workload as W;

/// A platform test (no device, no backend).
const fn platform(w: Workload, env: Env) -> Row {
    row(w, env, Tr::Platform, B::None, None, T)
}

/// A device workload.
const fn io(w: Workload, env: Env, backend: Backend, d: Dev, sets: Sets) -> Row {
    row(w, env, d.transport(), backend, Some(d), sets)
}

/// The matrix, in the order `cargo xtask test` runs it (QEMU rows, then the one Xen boot).
pub const MATRIX: &[Row] = &[
    // QEMU PVH: the platform.
    platform(W::Hello, E::QemuPvh),
    platform(W::FaultPagefault, E::QemuPvh),
    platform(W::Heap, E::QemuPvh),
    platform(W::Timer, E::QemuPvh),
    platform(W::Pci, E::QemuPvh),
    platform(W::FaultPanic, E::QemuPvh),
    platform(W::Cpuid, E::QemuPvh),
    platform(W::Uart, E::QemuPvh),
    platform(W::FaultStack, E::QemuPvh),
    // QEMU PVH, QEMU's device models.
    io(W::BlkIntegrity, E::QemuPvh, B::Qemu, D::VirtioBlk, T),
    io(W::BlkIntegrity, E::QemuPvh, B::Qemu, D::Ide, T),
    io(W::BlkIntegrity, E::QemuPvh, B::Qemu, D::Ahci, T),
    io(W::BlkThroughput, E::QemuPvh, B::Qemu, D::VirtioBlk, C),
    variant(
        io(W::BlkThroughput, E::QemuPvh, B::Qemu, D::VirtioBlk, T),
        Variant::StockNotify,
    ),
    io(W::BlkThroughput, E::QemuPvh, B::Qemu, D::Ide, C),
    io(W::BlkThroughput, E::QemuPvh, B::Qemu, D::Ahci, C),
    io(W::BlkError, E::QemuPvh, B::Qemu, D::VirtioBlk, T),
    io(W::BlkError, E::QemuPvh, B::Qemu, D::Ide, T),
    io(W::BlkError, E::QemuPvh, B::Qemu, D::Ahci, T),
    io(W::NetEcho, E::QemuPvh, B::Qemu, D::VirtioNet, C),
    io(W::NetEcho, E::QemuPvh, B::Qemu, D::E1000, C),
    io(W::ConsoleEcho, E::QemuPvh, B::Qemu, D::VirtioConsole, C),
    io(W::ConsoleEcho, E::QemuPvh, B::Qemu, D::Uart, C),
    row(W::DeviceAbsent, E::QemuPvh, Tr::Platform, B::None, None, T),
    // QEMU PVH under KVM (hosts with VT only).
    platform(W::Hello, E::QemuPvhKvm),
    platform(W::Cpuid, E::QemuPvhKvm),
    io(W::BlkIntegrity, E::QemuPvhKvm, B::Qemu, D::VirtioBlk, T),
    io(W::BlkThroughput, E::QemuPvhKvm, B::Qemu, D::VirtioBlk, C),
    io(W::NetEcho, E::QemuPvhKvm, B::Qemu, D::VirtioNet, C),
    // QEMU PVH, pvkit's vhost-user daemons.
    row(
        W::BadInput,
        E::QemuPvh,
        Tr::Virtio,
        B::PvkitVhostUser,
        Some(D::VirtioBlk),
        T,
    ),
    io(W::BlkIntegrity, E::QemuPvh, B::PvkitVhostUser, D::VirtioBlk, T),
    io(W::BlkReconnect, E::QemuPvh, B::PvkitVhostUser, D::VirtioBlk, T),
    io(W::BlkThroughput, E::QemuPvh, B::PvkitVhostUser, D::VirtioBlk, C),
    io(W::BlkError, E::QemuPvh, B::PvkitVhostUser, D::VirtioBlk, T),
    io(W::NetEcho, E::QemuPvh, B::PvkitVhostUser, D::VirtioNet, C),
    row(W::LinuxPeer, E::QemuPvh, Tr::Virtio, B::PvkitVhostUser, None, T),
    // Xen PV: the platform, in one Xen boot with every other Xen row.
    row(W::LinuxPeer, E::XenPv, Tr::Xen, B::Linux, None, T),
    platform(W::Hello, E::XenPv),
    platform(W::Cpuid, E::XenPv),
    platform(W::Heap, E::XenPv),
    platform(W::Timer, E::XenPv),
    platform(W::Evtchn, E::XenPv),
    platform(W::Xenstore, E::XenPv),
    platform(W::FaultPagefault, E::XenPv),
    platform(W::FaultPanic, E::XenPv),
    // Xen PV, Linux's kernel backends and the toolstack's console daemon.
    io(W::BlkIntegrity, E::XenPv, B::Linux, D::XenBlk, T),
    io(W::BlkThroughput, E::XenPv, B::Linux, D::XenBlk, C),
    io(W::NetPing, E::XenPv, B::Linux, D::XenNet, T),
    io(W::NetEcho, E::XenPv, B::Linux, D::XenNet, C),
    io(W::ConsoleInput, E::XenPv, B::Xenconsoled, D::XenConsole, T),
    io(W::DeviceAbsent, E::XenPv, B::None, D::XenBlk, T),
    io(W::NoBackend, E::XenPv, B::None, D::XenBlk, T),
    // Xen PV, pvkit-xen-backend.
    io(W::BlkIntegrity, E::XenPv, B::PvkitXen, D::XenBlk, T),
    io(W::BlkThroughput, E::XenPv, B::PvkitXen, D::XenBlk, C),
    io(W::NetPing, E::XenPv, B::PvkitXen, D::XenNet, T),
    io(W::NetEcho, E::XenPv, B::PvkitXen, D::XenNet, C),
    io(W::ConsoleEcho, E::XenPv, B::PvkitXen, D::XenConsole, C),
    row(W::LinuxPeer, E::XenPv, Tr::Xen, B::PvkitXen, None, T),
    io(W::BadInput, E::XenPv, B::PvkitXen, D::XenBlk, T),
    io(W::BlkHostile, E::XenPv, B::PvkitXen, D::XenBlk, T),
    variant(io(W::NetPing, E::XenPv, B::PvkitXen, D::XenNet, T), Variant::Tap),
];

/// The row called `name` (for tests).
#[cfg(test)]
pub fn named(name: &str) -> Row {
    *MATRIX
        .iter()
        .find(|r| r.name() == name)
        .unwrap_or_else(|| panic!("no row {name}"))
}

/// A filter on the matrix: `column=value[,value...]` terms (values of one column are
/// alternatives, different columns must all match), and row names or `*` patterns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub columns: Vec<(Column, Vec<String>)>,
    pub names: Vec<String>,
}

impl Filter {
    /// Adds a `column=value` term.
    pub fn add_term(&mut self, term: &str) -> Result<(), String> {
        let (col, value) = term
            .split_once('=')
            .ok_or_else(|| format!("`{term}` is not column=value"))?;
        let col = Column::from_name(col.trim()).ok_or_else(|| {
            format!(
                "unknown column `{col}` (columns: {})",
                Column::ALL
                    .iter()
                    .map(|c| c.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let values: Vec<String> = value.split('|').map(|v| v.trim().to_owned()).collect();
        let known: Vec<String> = MATRIX.iter().map(|r| r.column(col)).collect();
        for v in &values {
            if col != Column::Name && !known.iter().any(|k| k.split(',').any(|p| p == v)) {
                return Err(format!(
                    "no row has {}={v} (values: {})",
                    col.name(),
                    dedup(known.iter().flat_map(|k| k.split(',').map(str::to_owned))).join(", ")
                ));
            }
        }
        match self.columns.iter_mut().find(|(c, _)| *c == col) {
            Some((_, vs)) => vs.extend(values),
            None => self.columns.push((col, values)),
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty() && self.names.is_empty()
    }

    pub fn matches(&self, r: &Row) -> bool {
        let columns = self.columns.iter().all(|(col, values)| {
            let have = r.column(*col);
            values
                .iter()
                .any(|v| have.split(',').any(|h| glob(v, h)) || glob(v, &have))
        });
        let names = self.names.is_empty()
            || self
                .names
                .iter()
                .any(|n| glob(n, &r.name()) || glob(n, &r.test()));
        columns && names
    }

    /// The rows it selects among `rows`; a name that selects nothing is an error (a typo must not
    /// turn into an empty, passing run).
    pub fn select<'a>(&self, rows: &'a [Row]) -> Result<Vec<&'a Row>, String> {
        for n in &self.names {
            if !rows.iter().any(|r| glob(n, &r.name()) || glob(n, &r.test())) {
                return Err(format!(
                    "no scenario is named `{n}` (see `cargo xtask test --list`)"
                ));
            }
        }
        Ok(rows.iter().filter(|r| self.matches(r)).collect())
    }
}

fn dedup(it: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = it.collect();
    v.sort();
    v.dedup();
    v
}

/// `*` matches any run of characters; everything else literally.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(p) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else {
            match rest.find(p) {
                Some(at) => rest = &rest[at + p.len()..],
                None => return false,
            }
        }
    }
    true
}

/// The table `cargo xtask test --list` prints.
pub fn list(rows: &[&Row]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            [
                Column::Name,
                Column::Env,
                Column::Transport,
                Column::Backend,
                Column::Workload,
                Column::Device,
                Column::Variant,
                Column::Sets,
            ]
            .iter()
            .map(|c| r.column(*c))
            .collect()
        })
        .collect();
    crate::table::render(
        &[
            "scenario",
            "env",
            "transport",
            "backend",
            "workload",
            "device",
            "variant",
            "run by",
        ],
        &cells,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<String> = MATRIX.iter().map(Row::name).collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate row names");
    }

    #[test]
    fn columns_agree_with_each_other() {
        for r in MATRIX {
            if let Some(d) = r.device {
                assert_eq!(d.transport(), r.transport, "{r}");
                if r.env.is_qemu() {
                    assert!(d.qemu().is_some(), "{r}: a Xen device on QEMU");
                }
            }
            match r.backend {
                Backend::Qemu | Backend::PvkitVhostUser => assert!(r.env.is_qemu(), "{r}"),
                Backend::Linux | Backend::PvkitXen | Backend::Xenconsoled => {
                    assert_eq!(r.env, Env::XenPv, "{r}")
                }
                Backend::None => {}
            }
            if r.compares() {
                assert!(
                    matches!(
                        r.workload,
                        Workload::BlkThroughput | Workload::NetEcho | Workload::ConsoleEcho
                    ),
                    "{r}: only throughput workloads are compared"
                );
            }
        }
    }

    #[test]
    fn the_comparison_covers_every_path() {
        let cmp: Vec<&Row> = MATRIX.iter().filter(|r| r.compares()).collect();
        for (class, want) in [
            (
                Class::Block,
                vec![
                    "xen-pv xen-blk (linux)",
                    "xen-pv xen-blk (pvkit-xen)",
                    "qemu-pvh virtio-blk (qemu)",
                    "qemu-pvh-kvm virtio-blk (qemu)",
                    "qemu-pvh virtio-blk (pvkit-vhost-user)",
                    "qemu-pvh ide (qemu)",
                    "qemu-pvh ahci (qemu)",
                ],
            ),
            (
                Class::Net,
                vec![
                    "xen-pv xen-net (linux)",
                    "xen-pv xen-net (pvkit-xen)",
                    "qemu-pvh virtio-net (qemu)",
                    "qemu-pvh-kvm virtio-net (qemu)",
                    "qemu-pvh virtio-net (pvkit-vhost-user)",
                    "qemu-pvh e1000 (qemu)",
                ],
            ),
            (
                Class::Console,
                vec![
                    "xen-pv xen-console (pvkit-xen)",
                    "qemu-pvh virtio-console (qemu)",
                    "qemu-pvh uart (qemu)",
                ],
            ),
        ] {
            let mut have: Vec<String> = cmp
                .iter()
                .filter(|r| r.device.map(Dev::class) == Some(class))
                .map(|r| crate::compare::path_label(r))
                .collect();
            have.sort();
            let mut want: Vec<String> = want.into_iter().map(str::to_owned).collect();
            want.sort();
            assert_eq!(have, want, "{}", class.name());
        }
    }

    #[test]
    fn filters_by_any_column_and_by_name() {
        let mut f = Filter::default();
        f.add_term("env=xen-pv").unwrap();
        f.add_term("backend=pvkit-xen").unwrap();
        let rows = f.select(MATRIX).unwrap();
        assert!(!rows.is_empty());
        assert!(
            rows.iter()
                .all(|r| r.env == Env::XenPv && r.backend == Backend::PvkitXen)
        );
        let mut f = Filter::default();
        f.add_term("transport=virtio|emulated").unwrap();
        f.add_term("workload=blk-throughput").unwrap();
        let names: Vec<String> = f.select(MATRIX).unwrap().iter().map(|r| r.name()).collect();
        assert!(
            names.contains(&"qemu-pvh/qemu/blk-throughput@ide".to_owned()),
            "{names:?}"
        );
        assert!(names.iter().all(|n| !n.starts_with("xen")), "{names:?}");
        let mut f = Filter::default();
        f.add_term("sets=run").unwrap();
        assert!(f.select(MATRIX).unwrap().iter().all(|r| r.compares()));
        assert!(Filter::default().add_term("env=nowhere").is_err());
        assert!(Filter::default().add_term("colour=red").is_err());
        assert!(Filter::default().add_term("novalue").is_err());
        // By name: exact, by test part, or a pattern; an unknown name is an error.
        let by = |n: &str| {
            Filter {
                names: vec![n.to_owned()],
                ..Default::default()
            }
            .select(MATRIX)
            .map(|v| v.len())
        };
        assert_eq!(by("qemu-pvh/hello"), Ok(1));
        assert_eq!(by("hello"), Ok(3), "qemu-pvh, qemu-pvh-kvm and xen-pv");
        assert_eq!(by("blk-integrity@*"), Ok(7));
        assert!(by("no-such-row").is_err());
    }

    #[test]
    fn glob_matching() {
        assert!(glob("a*c", "abc"));
        assert!(glob("*", ""));
        assert!(glob("xen-pv/*", "xen-pv/linux/blk"));
        assert!(!glob("xen-pv/*", "qemu-pvh/xen-pv"));
        assert!(glob("*@ide", "blk-error@ide"));
        assert!(!glob("abc", "abcd"));
        assert!(glob("a*b*c", "a-b-c"));
        assert!(!glob("a*b*c", "a-c-b"));
    }

    #[test]
    fn list_shows_every_row() {
        let all: Vec<&Row> = MATRIX.iter().collect();
        let text = list(&all);
        assert_eq!(text.lines().count(), MATRIX.len() + 2);
        assert!(text.contains("xen-pv/pvkit-xen/net-ping@xen-net+tap"));
    }
}
