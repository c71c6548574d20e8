//! Booting the guest in QEMU: the device matrix, the command line, and a runner that streams the
//! console, enforces timeouts and always kills and reaps QEMU.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

use crate::console::{Record, Transcript, is_pci_id};
use crate::process;
use crate::workspace::display_command;

/// The QEMU binary xtask uses unless `PVKIT_QEMU` names another.
pub const QEMU: &str = "qemu-system-x86_64";
/// The qboot firmware, which boots a PVH `-kernel` much faster than SeaBIOS.
pub const QBOOT: &str = "/usr/share/qemu/qboot.rom";
/// Guest RAM.
pub const MEMORY_MIB: u32 = 128;

/// PCI functions a q35 machine has even with `-nodefaults` (checked with QEMU 10's `info pci`): host
/// bridge, ICH9 LPC/ISA bridge, ICH9 AHCI, ICH9 SMBus.
pub const Q35_BUILTIN_PCI: &[&str] = &["8086:29c0", "8086:2918", "8086:2922", "8086:2930"];

/// Devices xtask can give the guest (`--devices`), each with the PCI id it shows up as.
///
/// The first three are bare PCI functions for the enumeration tests. The others are the I/O device
/// matrix of the workloads (`<workload>@<device>` tests, guest-kernel/README.md): each is attached to
/// a host backend given in [`IoAttach`] (a disk image, a TCP port of an xtask peer), or to an inert one
/// (an empty null disk, an unconnected hub port, a null chardev) when none is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Device {
    /// QEMU's educational PCI device (1234:11e8).
    Edu,
    /// virtio entropy source, transitional virtio-pci (1af4:1005).
    VirtioRng,
    /// QEMU's PCI test device (1b36:0005).
    PciTestdev,
    /// virtio block device (transitional virtio-blk-pci, 1af4:1001) on a raw image.
    VirtioBlk,
    /// virtio network device (1af4:1000) on a `-netdev stream` to the xtask echo peer.
    VirtioNet,
    /// virtio-serial (1af4:1003) with one console port on a socket chardev to the xtask echo peer.
    VirtioConsole,
    /// An ATA disk on a PIIX3 IDE controller (8086:7010, compatibility mode, primary channel).
    Ide,
    /// An ATA disk on q35's built-in ICH9 AHCI controller (port 0; adds no PCI function).
    Ahci,
    /// Intel 82540EM (`e1000`, 8086:100e) on a `-netdev stream` to the xtask echo peer.
    E1000,
    /// A 16550 UART on COM2 (0x2f8, IRQ 3) on a socket chardev to the xtask echo peer.
    Uart,
}

/// What a device needs on the host side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Nothing (a self-contained PCI function).
    None,
    /// A disk image.
    Disk,
    /// A network peer.
    Net,
    /// A byte-stream peer.
    Console,
}

/// A disk image attached to a block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskAttach {
    pub path: PathBuf,
    /// The guest's writes must fail: `readonly=on` for virtio-blk (the device then reports an
    /// error status); for IDE and AHCI, whose `ide-hd` refuses a read-only drive, a `blkdebug` layer
    /// fails every write with EIO and `werror=report` hands that to the guest.
    pub fail_writes: bool,
}

/// The host backends of the I/O devices of one run; a device without an entry gets an inert one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoAttach {
    pub disks: BTreeMap<Device, DiskAttach>,
    /// TCP port on 127.0.0.1 where an xtask peer listens (QEMU connects as the client).
    pub ports: BTreeMap<Device, u16>,
    /// Unix socket of a vhost-user daemon serving the device (virtio-blk, virtio-net); QEMU is the
    /// vhost-user frontend, guest RAM is then a shared memfd.
    pub vhost: BTreeMap<Device, VhostAttach>,
}

/// A device served by a vhost-user daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostAttach {
    pub socket: PathBuf,
    /// Request queues (vhost-user-blk's `num-queues`; QEMU asks the daemon how many it offers).
    pub queues: u32,
}

/// Size of the null disk behind a block device without an image.
const INERT_DISK_BYTES: u64 = 16 << 20;

impl Device {
    /// The I/O devices (everything but the bare PCI functions).
    pub fn io_devices() -> impl Iterator<Item = Device> {
        Device::value_variants()
            .iter()
            .copied()
            .filter(|d| d.backend() != Backend::None)
    }

    /// The name the guest uses for it in `<workload>@<device>` test names (clap's name).
    pub fn name(self) -> String {
        self.to_possible_value()
            .expect("no skipped variants")
            .get_name()
            .to_owned()
    }

    pub fn backend(self) -> Backend {
        match self {
            Device::Edu | Device::VirtioRng | Device::PciTestdev => Backend::None,
            Device::VirtioBlk | Device::Ide | Device::Ahci => Backend::Disk,
            Device::VirtioNet | Device::E1000 => Backend::Net,
            Device::VirtioConsole | Device::Uart => Backend::Console,
        }
    }

    /// QEMU's id for the device's backend (drive, netdev or chardev); one of each kind per run.
    fn backend_id(self) -> &'static str {
        match self {
            Device::VirtioBlk => "vblk",
            Device::Ide => "ide0",
            Device::Ahci => "ahci0",
            Device::VirtioNet => "vnet",
            Device::E1000 => "e1k",
            Device::VirtioConsole => "vcon",
            Device::Uart => "com2",
            Device::Edu | Device::VirtioRng | Device::PciTestdev => "",
        }
    }

    /// Arguments that add the device, with its backend from `io`, to QEMU's command line.
    pub fn qemu_args(self, io: &IoAttach) -> Vec<String> {
        let id = self.backend_id();
        if let Some(v) = io.vhost.get(&self) {
            let chardev = format!("socket,id={id},path={}", v.socket.display());
            return match self {
                Device::VirtioBlk => vec![
                    "-chardev".into(),
                    chardev,
                    "-device".into(),
                    format!("vhost-user-blk-pci,chardev={id},num-queues={}", v.queues.max(1)),
                ],
                Device::VirtioNet => vec![
                    "-chardev".into(),
                    chardev,
                    "-netdev".into(),
                    format!("vhost-user,id={id}n,chardev={id}"),
                    "-device".into(),
                    format!("virtio-net-pci,netdev={id}n,romfile="),
                ],
                other => unreachable!("no vhost-user daemon serves {other:?}"),
            };
        }
        let mut a: Vec<String> = Vec::new();
        let mut push = |s: String| a.push(s);
        match self.backend() {
            Backend::None => {}
            Backend::Disk => match io.disks.get(&self) {
                None => {
                    push("-blockdev".into());
                    push(format!(
                        "driver=null-co,node-name={id},size={INERT_DISK_BYTES},read-zeroes=on"
                    ));
                }
                Some(d) if d.fail_writes && self != Device::VirtioBlk => {
                    push("-blockdev".into());
                    push(format!(
                        "driver=blkdebug,node-name={id},image.driver=file,image.filename={},\
                         inject-error.0.event=pwritev,inject-error.0.errno=5",
                        d.path.display()
                    ));
                }
                Some(d) => {
                    push("-drive".into());
                    push(format!(
                        "file={},format=raw,if=none,id={id},cache=unsafe{}",
                        d.path.display(),
                        if d.fail_writes { ",readonly=on" } else { "" }
                    ));
                }
            },
            Backend::Net => {
                push("-netdev".into());
                push(match io.ports.get(&self) {
                    Some(p) => {
                        format!("stream,id={id},server=off,addr.type=inet,addr.host=127.0.0.1,addr.port={p}")
                    }
                    None => format!("hubport,id={id},hubid={}", self as u8),
                });
            }
            Backend::Console => {
                push("-chardev".into());
                push(match io.ports.get(&self) {
                    Some(p) => format!("socket,id={id},host=127.0.0.1,port={p}"),
                    None => format!("null,id={id}"),
                });
            }
        }
        let werror = if io.disks.get(&self).is_some_and(|d| d.fail_writes) {
            ",werror=report"
        } else {
            ""
        };
        let devices: Vec<String> = match self {
            Device::Edu => vec!["edu".into()],
            Device::VirtioRng => vec!["virtio-rng-pci".into()],
            Device::PciTestdev => vec!["pci-testdev".into()],
            Device::VirtioBlk => vec![format!("virtio-blk-pci,drive={id}")],
            Device::Ide => vec![
                "piix3-ide,id=pide".into(),
                format!("ide-hd,drive={id},bus=pide.0{werror}"),
            ],
            Device::Ahci => vec![format!("ide-hd,drive={id},bus=ide.0{werror}")],
            Device::VirtioNet => vec![format!("virtio-net-pci,netdev={id}")],
            Device::E1000 => vec![format!("e1000,netdev={id}")],
            Device::VirtioConsole => vec!["virtio-serial-pci".into(), format!("virtconsole,chardev={id}")],
            Device::Uart => vec![format!("isa-serial,chardev={id},iobase=0x2f8,irq=3")],
        };
        for d in devices {
            a.push("-device".into());
            a.push(d);
        }
        a
    }

    /// The `vendor:device` ids of the PCI functions the device adds.
    pub fn pci_ids(self) -> &'static [&'static str] {
        match self {
            Device::Edu => &["1234:11e8"],
            // On q35's root bus a virtio-pci device keeps its legacy interface: transitional id.
            Device::VirtioRng => &["1af4:1005"],
            Device::PciTestdev => &["1b36:0005"],
            Device::VirtioBlk => &["1af4:1001"],
            Device::VirtioNet => &["1af4:1000"],
            Device::VirtioConsole => &["1af4:1003"],
            Device::Ide => &["8086:7010"],
            Device::E1000 => &["8086:100e"],
            // q35's own AHCI (8086:2922) is always there; COM2 is an ISA device.
            Device::Ahci | Device::Uart => &[],
        }
    }
}

/// The PCI ids the guest must find with `devices` attached: q35's own functions plus one entry per
/// function of each device (a multiset, sorted).
pub fn expected_pci(devices: &[Device]) -> Vec<String> {
    let mut ids: Vec<String> = Q35_BUILTIN_PCI.iter().map(|s| (*s).to_owned()).collect();
    ids.extend(
        devices
            .iter()
            .flat_map(|d| d.pci_ids().iter().map(|s| (*s).to_owned())),
    );
    ids.sort();
    ids
}

/// How the guest CPU is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    /// QEMU's TCG emulator with `-cpu max` (default: correct and predictable on this machine kind).
    Tcg,
    /// KVM with `-cpu host` (minus arch-capabilities, which kvm_pvm rejects). On this machine kind /dev/kvm is kvm_pvm, a paravirtual KVM without VT:
    /// the guest runs in a slow instruction emulator and interrupts get dropped or mis-delivered.
    Kvm,
}

/// What a QEMU machine boots.
#[derive(Debug, Clone)]
pub enum Boot {
    /// Our kernel as a PVH guest (`-kernel`, qboot firmware, `isa-debug-exit` for its verdict).
    Pvh { kernel: PathBuf, append: String },
    /// A Linux kernel with an initramfs (qboot; the console on the first serial port).
    Linux {
        kernel: PathBuf,
        initrd: PathBuf,
        append: String,
    },
    /// Xen through QEMU's multiboot loader (the gunzipped ELF, SeaBIOS), dom0's kernel and
    /// initramfs as modules (the first word of each is its name, a comma in arguments is `,,`),
    /// and virtio disks for dom0 in this order (`/dev/vda`, ...).
    Xen {
        xen: PathBuf,
        xen_cmdline: String,
        dom0_kernel: PathBuf,
        dom0_cmdline: String,
        initramfs: PathBuf,
        drives: Vec<PathBuf>,
    },
}

/// Everything that defines one QEMU run.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub qemu: PathBuf,
    pub boot: Boot,
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    pub devices: Vec<Device>,
    /// Kill QEMU if it has not exited after this long.
    pub timeout: Duration,
    /// Kill QEMU if the guest printed no console line within this long.
    pub first_output_timeout: Duration,
    /// Host backends of the I/O devices among `devices` (inert ones for those not listed).
    pub io: IoAttach,
    /// Write a trace of device register accesses, virtio kicks and interrupt deliveries here (see
    /// [`crate::trace`]); also adds the `isa-debugcon` on port 0x402 that records phase markers.
    pub trace: Option<PathBuf>,
}

impl QemuConfig {
    /// The QEMU binary: `$PVKIT_QEMU` or `qemu-system-x86_64` from `PATH`.
    pub fn default_qemu() -> PathBuf {
        std::env::var_os("PVKIT_QEMU").map_or_else(|| PathBuf::from(QEMU), PathBuf::from)
    }

    /// Our kernel as a PVH guest with the defaults of every scenario (TCG, [`MEMORY_MIB`], one vCPU,
    /// 10 s to the first console line).
    pub fn pvh(kernel: &Path, append: String, devices: Vec<Device>, timeout: Duration) -> QemuConfig {
        QemuConfig {
            qemu: QemuConfig::default_qemu(),
            boot: Boot::Pvh {
                kernel: kernel.to_owned(),
                append,
            },
            accel: Accel::Tcg,
            memory_mib: MEMORY_MIB,
            cpus: 1,
            devices,
            timeout,
            first_output_timeout: Duration::from_secs(10),
            io: IoAttach::default(),
            trace: None,
        }
    }

    /// Files that must exist before QEMU starts.
    fn inputs(&self) -> Vec<(&'static str, &Path)> {
        match &self.boot {
            Boot::Pvh { kernel, .. } => vec![("guest kernel", kernel), ("qboot firmware", Path::new(QBOOT))],
            Boot::Linux { kernel, initrd, .. } => vec![
                ("Linux kernel", kernel),
                ("Linux initramfs", initrd),
                ("qboot firmware", Path::new(QBOOT)),
            ],
            Boot::Xen {
                xen,
                dom0_kernel,
                initramfs,
                ..
            } => vec![
                ("Xen", xen),
                ("dom0 kernel", dom0_kernel),
                ("dom0 initramfs", initramfs),
            ],
        }
    }

    pub fn command(&self) -> Result<Command> {
        let mut cmd = Command::new(&self.qemu);
        if self.io.vhost.is_empty() {
            cmd.args(["-machine", "q35"]);
        } else {
            // vhost-user daemons map guest RAM: it must be a shared memfd.
            cmd.args(["-machine", "q35,memory-backend=mem", "-object"]);
            cmd.arg(format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                self.memory_mib
            ));
        }
        match self.accel {
            Accel::Tcg => cmd.args(["-accel", "tcg", "-cpu", "max"]),
            // kvm_pvm refuses QEMU's write of IA32_ARCH_CAPABILITIES (MSR 0x10a) that plain `-cpu host`
            // makes, and QEMU aborts; without that feature the guest boots.
            Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host,-arch-capabilities"]),
        };
        cmd.args([
            "-m",
            &format!("{}M", self.memory_mib),
            "-smp",
            &self.cpus.to_string(),
        ]);
        cmd.args(["-nodefaults", "-nographic", "-no-reboot", "-serial", "stdio"]);
        match &self.boot {
            Boot::Pvh { kernel, append } => {
                cmd.args(["-bios", QBOOT]);
                cmd.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
                cmd.arg("-kernel").arg(kernel);
                cmd.args(["-append", append]);
            }
            Boot::Linux {
                kernel,
                initrd,
                append,
            } => {
                cmd.args(["-bios", QBOOT]);
                cmd.arg("-kernel").arg(kernel);
                cmd.arg("-initrd").arg(initrd);
                cmd.args(["-append", append]);
            }
            Boot::Xen {
                xen,
                xen_cmdline,
                dom0_kernel,
                dom0_cmdline,
                initramfs,
                drives,
            } => {
                for p in [dom0_kernel, initramfs].into_iter().chain(drives) {
                    // QEMU's multiboot module list and -drive are comma-separated (a literal comma is
                    // written `,,`; file names with one are refused rather than escaped).
                    if p.to_string_lossy().contains(',') {
                        bail!(
                            "{} contains a comma, which QEMU's -initrd/-drive options cannot carry",
                            p.display()
                        );
                    }
                }
                cmd.arg("-kernel").arg(xen);
                cmd.args(["-append", xen_cmdline]);
                cmd.arg("-initrd").arg(format!(
                    "{} {},{}",
                    dom0_kernel.display(),
                    dom0_cmdline.replace(',', ",,"),
                    initramfs.display()
                ));
                for (i, d) in drives.iter().enumerate() {
                    cmd.arg("-drive").arg(format!(
                        "file={},format=raw,if=none,id=disk{i},cache=unsafe",
                        d.display()
                    ));
                    cmd.args(["-device", &format!("virtio-blk-pci,drive=disk{i}")]);
                }
            }
        }
        for d in &self.devices {
            cmd.args(d.qemu_args(&self.io));
        }
        if let Some(trace) = &self.trace {
            let mut events = String::new();
            for e in crate::trace::EVENTS {
                if !events.is_empty() {
                    events.push(',');
                }
                events.push_str("trace:");
                events.push_str(e);
            }
            cmd.args(["-d", &events]).arg("-D").arg(trace);
            cmd.args(["-chardev", "null,id=phases"]);
            cmd.args([
                "-device",
                &format!(
                    "isa-debugcon,iobase={:#x},chardev=phases",
                    crate::trace::PHASE_PORT
                ),
            ]);
        }
        Ok(cmd)
    }
}

/// Finds `program` the way `execvp` would; a path with a `/` is taken as is.
pub fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// How a QEMU run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// isa-debug-exit with 0: QEMU status 1.
    Pass,
    /// isa-debug-exit with 1: QEMU status 3.
    Fail,
    /// Any other exit (triple fault with -no-reboot gives 0, QEMU errors, signals).
    Crash(String),
    /// The guest printed nothing within the first-output timeout.
    Silent(Duration),
    /// The guest did not exit within the timeout.
    Timeout(Duration),
    /// QEMU could not be started.
    LaunchFailed(String),
    /// xtask got Ctrl-C / SIGTERM.
    Interrupted,
}

impl Outcome {
    /// Maps QEMU's exit status: `(value << 1) | 1` for isa-debug-exit, so 1 = pass and 3 = fail.
    pub fn from_exit(code: Option<i32>, signal: Option<i32>) -> Outcome {
        match (code, signal) {
            (Some(1), _) => Outcome::Pass,
            (Some(3), _) => Outcome::Fail,
            (Some(0), _) => Outcome::Crash(
                "QEMU exited with 0: the guest reset (triple fault?) or powered off \
                                            without isa-debug-exit"
                    .to_owned(),
            ),
            (Some(c), _) => Outcome::Crash(format!(
                "QEMU exited with status {c} (not an isa-debug-exit code)"
            )),
            (None, Some(s)) => Outcome::Crash(format!("QEMU killed by signal {s}")),
            (None, None) => Outcome::Crash("QEMU ended with an unknown status".to_owned()),
        }
    }

    fn from_status(status: ExitStatus) -> Outcome {
        use std::os::unix::process::ExitStatusExt;
        Outcome::from_exit(status.code(), status.signal())
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Pass => f.write_str("guest exited with pass (QEMU status 1)"),
            Outcome::Fail => f.write_str("guest exited with fail (QEMU status 3)"),
            Outcome::Crash(why) => write!(f, "crash: {why}"),
            Outcome::Silent(d) => write!(
                f,
                "guest printed nothing within {} s; QEMU killed",
                d.as_secs_f64()
            ),
            Outcome::Timeout(d) => write!(f, "guest did not exit within {} s; QEMU killed", d.as_secs_f64()),
            Outcome::LaunchFailed(why) => write!(f, "QEMU could not be started: {why}"),
            Outcome::Interrupted => f.write_str("interrupted by signal; QEMU killed"),
        }
    }
}

/// The result of one QEMU run.
#[derive(Debug)]
pub struct RunResult {
    pub outcome: Outcome,
    pub transcript: Transcript,
    /// From just before spawning QEMU to the moment its exit was reaped.
    pub wall: Duration,
    pub log: PathBuf,
    pub command: String,
    /// QEMU's own stderr lines (errors about options, devices, the kernel image).
    pub stderr: Vec<String>,
    /// Host-observed time from each test's START to its verdict.
    pub test_times: BTreeMap<String, Duration>,
    /// QEMU's pid, which is also its process group id (None if it never started).
    pub pgid: Option<u32>,
    /// QEMU's exit code, if it exited by itself (a Xen or Linux machine powers off with 0).
    pub exit_code: Option<i32>,
}

enum Event {
    Stdout(String),
    Stderr(String),
    StdoutClosed,
    StderrClosed,
    Exited(std::io::Result<ExitStatus>, Instant),
}

/// What a line of console output turned out to be, for live display.
pub enum Seen<'a> {
    Console(&'a str, Option<&'a Record>),
    Stderr(&'a str),
}

/// Boots QEMU with `cfg`, writes the command line and the whole console to `log`, calls `on_line` for
/// every line as it arrives, and returns once QEMU has exited and been reaped. QEMU runs in its own
/// process group, which is killed on timeout, silence and Ctrl-C.
pub fn run(cfg: &QemuConfig, log: &Path, mut on_line: impl FnMut(Seen<'_>)) -> Result<RunResult> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating log directory {}", dir.display()))?;
    }
    let mut logf = File::create(log).with_context(|| format!("creating log file {}", log.display()))?;
    let mut cmd = cfg.command()?;
    let command = display_command(&cmd);
    writeln!(logf, "# command: {command}")?;
    writeln!(
        logf,
        "# timeout: {} s, first-output timeout: {} s",
        cfg.timeout.as_secs_f64(),
        cfg.first_output_timeout.as_secs_f64()
    )?;

    let mut result = RunResult {
        outcome: Outcome::Interrupted,
        transcript: Transcript::default(),
        wall: Duration::ZERO,
        log: log.to_owned(),
        command,
        stderr: Vec::new(),
        test_times: BTreeMap::new(),
        pgid: None,
        exit_code: None,
    };

    let finish = |mut logf: File, result: RunResult| -> Result<RunResult> {
        writeln!(logf, "# outcome: {}", result.outcome)?;
        writeln!(
            logf,
            "# wall time (launch to exit): {:.1} ms",
            result.wall.as_secs_f64() * 1e3
        )?;
        Ok(result)
    };

    if find_program(&cfg.qemu).is_none() {
        result.outcome = Outcome::LaunchFailed(format!(
            "{} not found (PATH or PVKIT_QEMU); `cargo xtask provision` installs it on Debian 12",
            cfg.qemu.display()
        ));
        return finish(logf, result);
    }
    for (what, path) in cfg.inputs() {
        if !path.is_file() {
            result.outcome = Outcome::LaunchFailed(format!("{what} {} does not exist", path.display()));
            return finish(logf, result);
        }
    }

    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    process::isolate(&mut cmd);
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            result.outcome = Outcome::LaunchFailed(format!("{}: {e}", cfg.qemu.display()));
            return finish(logf, result);
        }
    };
    let pgid = child.id();
    result.pgid = Some(pgid);
    let (tx, rx) = mpsc::channel::<Event>();
    let stdout = child.stdout.take().expect("stdout was piped");
    let stderr = child.stderr.take().expect("stderr was piped");
    let tx_out = tx.clone();
    thread::spawn(move || {
        read_lines(stdout, |l| tx_out.send(Event::Stdout(l)).is_ok());
        let _ = tx_out.send(Event::StdoutClosed);
    });
    let tx_err = tx.clone();
    thread::spawn(move || {
        read_lines(stderr, |l| tx_err.send(Event::Stderr(l)).is_ok());
        let _ = tx_err.send(Event::StderrClosed);
    });
    thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send(Event::Exited(status, Instant::now()));
    });

    let tick = Duration::from_millis(50);
    let mut killed: Option<Outcome> = None;
    let mut killed_at: Option<Instant> = None;
    let mut exited: Option<(std::io::Result<ExitStatus>, Instant)> = None;
    let mut stdout_closed = false;
    let mut stderr_closed = false;
    let mut exit_seen_at: Option<Instant> = None;
    let mut started_tests: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        // Done once QEMU is reaped and its output fully read (or the pipe is held open by a stray
        // grandchild for more than a moment).
        if let Some(at) = exit_seen_at
            && ((stdout_closed && stderr_closed) || at.elapsed() > Duration::from_millis(500))
        {
            break;
        }
        match rx.recv_timeout(tick) {
            Ok(Event::Stdout(line)) => {
                writeln!(logf, "{line}")?;
                let rec = result.transcript.push_line(&line).cloned();
                match &rec {
                    Some(Record::TestStart { name }) => {
                        started_tests.insert(name.clone(), Instant::now());
                    }
                    Some(Record::TestPass { name, .. } | Record::TestFail { name, .. }) => {
                        if let Some(t0) = started_tests.get(name) {
                            result.test_times.insert(name.clone(), t0.elapsed());
                        }
                    }
                    _ => {}
                }
                on_line(Seen::Console(&line, rec.as_ref()));
            }
            Ok(Event::Stderr(line)) => {
                writeln!(logf, "[qemu stderr] {line}")?;
                on_line(Seen::Stderr(&line));
                result.stderr.push(line);
            }
            Ok(Event::StdoutClosed) => stdout_closed = true,
            Ok(Event::StderrClosed) => stderr_closed = true,
            Ok(Event::Exited(status, at)) => {
                exited = Some((status, at));
                exit_seen_at = Some(Instant::now());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if exited.is_none() && killed.is_none() {
            let elapsed = started.elapsed();
            let reason = if process::interrupted() {
                Some(Outcome::Interrupted)
            } else if result.transcript.lines == 0 && elapsed >= cfg.first_output_timeout {
                Some(Outcome::Silent(cfg.first_output_timeout))
            } else if elapsed >= cfg.timeout {
                Some(Outcome::Timeout(cfg.timeout))
            } else {
                None
            };
            if let Some(reason) = reason {
                process::kill_group(pgid);
                killed = Some(reason);
                killed_at = Some(Instant::now());
            }
        }
        if exited.is_none()
            && let Some(at) = killed_at
            && at.elapsed() > Duration::from_secs(10)
        {
            writeln!(logf, "# QEMU (pid {pgid}) did not die within 10 s of SIGKILL")?;
            bail!(
                "QEMU (pid {pgid}) did not die within 10 s of SIGKILL; log: {}",
                log.display()
            );
        }
    }
    // Anything QEMU started in its group (it starts nothing today) goes too.
    if process::group_exists(pgid) {
        process::kill_group(pgid);
    }

    let (status, exited_at) = exited.expect("loop ends only after the exit event");
    result.wall = exited_at.duration_since(started);
    if killed.is_none() {
        result.exit_code = status.as_ref().ok().and_then(ExitStatus::code);
    }
    result.outcome = match (killed, status) {
        (Some(reason), _) => reason,
        // QEMU itself exits with 1 on its own startup errors (bad kernel image, unknown option), which
        // looks like the guest's pass code: without a single console line it cannot be the guest.
        (None, Ok(status)) if result.transcript.lines == 0 && status.code() == Some(1) => {
            Outcome::Crash(format!(
                "QEMU exited with status 1 before the guest printed anything (a QEMU error, not a guest pass){}",
                result
                    .stderr
                    .first()
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default()
            ))
        }
        (None, Ok(status)) => Outcome::from_status(status),
        (None, Err(e)) => Outcome::Crash(format!("waiting for QEMU failed: {e}")),
    };
    finish(logf, result)
}

/// Reads `r` line by line (lossy UTF-8, `\r` stripped) until EOF or until `sink` returns false.
fn read_lines(r: impl Read, mut sink: impl FnMut(String) -> bool) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']).replace('\r', "");
                if !sink(line) {
                    return;
                }
            }
        }
    }
}

/// Asks QEMU itself which PCI functions a q35 machine with `devices` has (`info pci` on the monitor of a
/// machine that never starts its CPU). Used to check the device table against the real QEMU.
pub fn info_pci(qemu: &Path, devices: &[Device], log: &mut impl Write) -> Result<Vec<String>> {
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-machine",
        "q35",
        "-accel",
        "tcg",
        "-nodefaults",
        "-display",
        "none",
        "-S",
        "-monitor",
        "stdio",
    ]);
    for d in devices {
        cmd.args(d.qemu_args(&IoAttach::default()));
    }
    writeln!(log, "# info pci via: {}", display_command(&cmd))?;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    process::isolate(&mut cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", qemu.display()))?;
    let pgid = child.id();
    let mut stdin = child.stdin.take().expect("stdin was piped");
    stdin.write_all(b"info pci\nquit\n")?;
    drop(stdin);
    let mut stdout = child.stdout.take().expect("stdout was piped");
    let mut stderr = child.stderr.take().expect("stderr was piped");
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() > deadline || process::interrupted() {
            process::kill_group(pgid);
            child.wait()?;
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let text = reader.join().unwrap_or_default();
    // The monitor echoes what it reads with terminal escapes; keep only its answer.
    for l in text.lines().filter(|l| !l.contains('\x1b')) {
        writeln!(log, "# | {l}")?;
    }
    match status {
        None => bail!("QEMU's monitor did not answer `info pci` within 20 s"),
        Some(st) if !st.success() => bail!("QEMU for `info pci` exited with {st}"),
        Some(_) => {}
    }
    let mut ids: Vec<String> = parse_info_pci(&text);
    ids.sort();
    Ok(ids)
}

/// Extracts `vvvv:dddd` from the `PCI device vvvv:dddd` lines of `info pci`.
pub fn parse_info_pci(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_once("PCI device ").map(|(_, rest)| rest.trim()))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter(|w| is_pci_id(w))
        .map(str::to_lowercase)
        .collect()
}

/// The `pci.expect=` token for `devices`.
pub fn pci_expect_arg(devices: &[Device]) -> String {
    format!("pci.expect={}", expected_pci(devices).join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn exit_status_mapping() {
        assert_eq!(Outcome::from_exit(Some(1), None), Outcome::Pass);
        assert_eq!(Outcome::from_exit(Some(3), None), Outcome::Fail);
        assert!(matches!(Outcome::from_exit(Some(0), None), Outcome::Crash(m) if m.contains("triple fault")));
        assert!(matches!(Outcome::from_exit(Some(2), None), Outcome::Crash(m) if m.contains("status 2")));
        assert!(matches!(Outcome::from_exit(Some(5), None), Outcome::Crash(_)));
        assert!(matches!(Outcome::from_exit(None, Some(9)), Outcome::Crash(m) if m.contains("signal 9")));
    }

    #[test]
    fn expected_pci_is_a_multiset_from_the_device_list() {
        assert_eq!(
            expected_pci(&[]),
            vec!["8086:2918", "8086:2922", "8086:2930", "8086:29c0"]
        );
        let two_edu = expected_pci(&[Device::Edu, Device::VirtioRng, Device::Edu]);
        assert_eq!(two_edu.iter().filter(|i| *i == "1234:11e8").count(), 2);
        assert_eq!(two_edu.len(), 7);
        assert!(pci_expect_arg(&[Device::PciTestdev]).starts_with("pci.expect="));
        assert!(pci_expect_arg(&[Device::PciTestdev]).contains("1b36:0005"));
    }

    #[test]
    fn info_pci_parsing() {
        let text = "  Bus  0, device   0, function 0:\n    Host bridge: PCI device 8086:29c0\n      PCI subsystem \
                    1af4:1100\n  Bus  0, device   1, function 0:\n    Class 0255: PCI device 1234:11E8\n";
        assert_eq!(parse_info_pci(text), vec!["8086:29c0", "1234:11e8"]);
    }

    #[test]
    fn command_line_has_defaults_devices_and_append() {
        let mut cfg = QemuConfig::pvh(
            Path::new("/k"),
            "tests=hello".into(),
            vec![Device::Edu],
            Duration::from_secs(1),
        );
        cfg.qemu = QEMU.into();
        let shown = display_command(&cfg.command().unwrap());
        for want in [
            "-machine q35",
            "-accel tcg -cpu max",
            QBOOT,
            "-nodefaults",
            "-no-reboot",
            "-kernel /k",
        ] {
            assert!(shown.contains(want), "{want:?} missing from {shown}");
        }
        assert!(shown.contains("isa-debug-exit,iobase=0xf4,iosize=0x04"));
        assert!(shown.ends_with("-append tests=hello -device edu"), "{shown}");
        let kvm = QemuConfig {
            accel: Accel::Kvm,
            ..cfg.clone()
        };
        assert!(display_command(&kvm.command().unwrap()).contains("-accel kvm -cpu host,-arch-capabilities"));
        // A vhost-user device: shared guest RAM and the daemon's socket instead of a drive.
        let mut vhost = QemuConfig {
            devices: vec![Device::VirtioBlk, Device::VirtioNet],
            ..cfg.clone()
        };
        for (d, sock) in [(Device::VirtioBlk, "/s/blk"), (Device::VirtioNet, "/s/net")] {
            vhost.io.vhost.insert(
                d,
                VhostAttach {
                    socket: sock.into(),
                    queues: 1,
                },
            );
        }
        let shown = display_command(&vhost.command().unwrap());
        for want in [
            "-machine q35,memory-backend=mem -object memory-backend-memfd,id=mem,size=128M,share=on",
            "-chardev socket,id=vblk,path=/s/blk -device vhost-user-blk-pci,chardev=vblk,num-queues=1",
            "-netdev vhost-user,id=vnetn,chardev=vnet -device virtio-net-pci,netdev=vnetn,romfile=",
        ] {
            assert!(shown.contains(want), "{want:?} missing from {shown}");
        }
        assert!(!shown.contains("-drive"), "{shown}");
    }

    #[test]
    fn xen_machine_command() {
        let cfg = QemuConfig {
            boot: Boot::Xen {
                xen: "/x/xen".into(),
                xen_cmdline: "console=com1".into(),
                dom0_kernel: "/x/vmlinuz".into(),
                dom0_cmdline: "console=hvc0 a,b".into(),
                initramfs: "/x/initrd".into(),
                drives: vec!["/d/a.img".into(), "/d/b.img".into()],
            },
            memory_mib: 2048,
            cpus: 2,
            devices: vec![],
            ..QemuConfig::pvh(Path::new("/k"), String::new(), vec![], Duration::from_secs(1))
        };
        let shown = display_command(&cfg.command().unwrap());
        assert!(shown.contains("-m 2048M -smp 2"), "{shown}");
        assert!(shown.contains("-kernel /x/xen -append console=com1"), "{shown}");
        assert!(
            shown.contains("-initrd '/x/vmlinuz console=hvc0 a,,b,/x/initrd'"),
            "{shown}"
        );
        assert!(
            shown.ends_with(
                "-drive file=/d/a.img,format=raw,if=none,id=disk0,cache=unsafe -device virtio-blk-pci,drive=disk0 \
                 -drive file=/d/b.img,format=raw,if=none,id=disk1,cache=unsafe -device virtio-blk-pci,drive=disk1"
            ),
            "{shown}"
        );
        assert!(
            !shown.contains("qboot") && !shown.contains("isa-debug-exit"),
            "{shown}"
        );
        let comma = QemuConfig {
            boot: Boot::Xen {
                xen: "/x/xen".into(),
                xen_cmdline: String::new(),
                dom0_kernel: "/x/vm,linuz".into(),
                dom0_cmdline: String::new(),
                initramfs: "/x/initrd".into(),
                drives: vec![],
            },
            ..cfg
        };
        assert!(comma.command().is_err());
    }

    /// A stand-in for QEMU: a shell script that ignores its arguments.
    fn fake_qemu(dir: &Path, name: &str, body: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn fake_run(name: &str, body: &str, timeout_ms: u64, silent_ms: u64) -> RunResult {
        let dir = std::env::temp_dir().join(format!("pvkit-xtask-test-{}", std::process::id()));
        let qemu = fake_qemu(&dir, name, body);
        // Any existing file will do as the "kernel": the fake ignores it.
        let mut cfg = QemuConfig::pvh(
            &std::env::current_exe().unwrap(),
            String::new(),
            vec![],
            Duration::from_millis(timeout_ms),
        );
        cfg.qemu = qemu;
        cfg.first_output_timeout = Duration::from_millis(silent_ms);
        let r = run(&cfg, &dir.join(format!("{name}.log")), |_| {}).unwrap();
        // Whatever happened, nothing of QEMU's process group is left.
        assert!(
            !process::group_exists(r.pgid.expect("fake QEMU started")),
            "{name}: process group survived"
        );
        r
    }

    // These need qboot's path to exist for the pre-launch check; it is installed with QEMU.
    fn have_qboot() -> bool {
        assert!(
            Path::new(QBOOT).is_file(),
            "{QBOOT} missing: install qemu-system-x86 (cargo xtask provision)"
        );
        true
    }

    #[test]
    fn runner_maps_exit_codes_and_parses_console() {
        have_qboot();
        let r = fake_run(
            "pass",
            "echo 'PVKIT BOOT platform=pvh'; echo 'PVKIT TEST hello START'; echo 'PVKIT TEST hello PASS'; \
             printf 'PVKIT SUMMARY passed=1 failed=0\\r\\n'; exit 1",
            10_000,
            5_000,
        );
        assert_eq!(r.outcome, Outcome::Pass);
        assert!(r.transcript.passed("hello"));
        assert_eq!(r.transcript.summary(), Some((1, 0)));
        assert!(r.test_times.contains_key("hello"));
        let log = std::fs::read_to_string(&r.log).unwrap();
        assert!(log.starts_with("# command: "), "{log}");
        assert!(log.contains("PVKIT TEST hello PASS"));
        assert_eq!(
            fake_run("fail", "echo x; exit 3", 10_000, 5_000).outcome,
            Outcome::Fail
        );
        // QEMU's own startup errors also exit with 1, but the guest never printed anything.
        let qemu_error = fake_run("qemu-error", "echo 'qemu: bad kernel' >&2; exit 1", 10_000, 5_000);
        assert!(
            matches!(&qemu_error.outcome, Outcome::Crash(m) if m.contains("bad kernel")),
            "{:?}",
            qemu_error.outcome
        );
        assert_eq!(qemu_error.stderr, vec!["qemu: bad kernel"]);
        assert!(matches!(
            fake_run("crash", "echo x; exit 0", 10_000, 5_000).outcome,
            Outcome::Crash(_)
        ));
        assert!(
            matches!(fake_run("killed", "echo x; kill -9 $$", 10_000, 5_000).outcome, Outcome::Crash(m) if m.contains("signal 9"))
        );
    }

    #[test]
    fn silent_and_hanging_guests_are_killed_and_reaped() {
        have_qboot();
        let t0 = Instant::now();
        let silent = fake_run("silent", "exec sleep 30", 20_000, 300);
        assert_eq!(silent.outcome, Outcome::Silent(Duration::from_millis(300)));
        let hang = fake_run("hang", "echo 'PVKIT BOOT'; exec sleep 30", 600, 300);
        assert_eq!(hang.outcome, Outcome::Timeout(Duration::from_millis(600)));
        assert!(hang.transcript.boot().is_some());
        // Both were killed, not waited out.
        assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
        let log = std::fs::read_to_string(&hang.log).unwrap();
        assert!(log.contains("# outcome: guest did not exit"), "{log}");
    }

    #[test]
    fn missing_qemu_is_a_launch_failure() {
        let mut cfg = QemuConfig::pvh(
            Path::new("/nonexistent/kernel"),
            String::new(),
            vec![],
            Duration::from_secs(1),
        );
        cfg.qemu = "/nonexistent/qemu-system-x86_64".into();
        let dir = std::env::temp_dir().join(format!("pvkit-xtask-test-{}", std::process::id()));
        let r = run(&cfg, &dir.join("missing.log"), |_| {}).unwrap();
        assert!(
            matches!(&r.outcome, Outcome::LaunchFailed(m) if m.contains("not found")),
            "{:?}",
            r.outcome
        );
    }
}
