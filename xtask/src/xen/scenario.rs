//! The Xen scenarios: what each domU is (kernel, command line, devices), what dom0 does around it,
//! and what its report must show.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;

use super::report::{End, ScenarioReport};
use crate::console::Record;
use crate::scenario::{PAGEFAULT_ADDRESS, PANIC_MESSAGE};

/// Memory of one of our domUs (MiB).
pub const GUEST_MEMORY_MIB: u32 = 64;
/// Memory of the harness's Linux domU (MiB): Debian's kernel and a busybox initramfs.
const LINUX_MEMORY_MIB: u32 = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XenScenario {
    /// Harness self-check: a Linux PV domU (Debian's kernel, busybox initramfs) echoes a nonce from its
    /// command line on its console and powers off. Proves xl create, console collection and reporting.
    LinuxSelfcheck,
    /// Our guest as a PV domU running `hello` (boot info from start_info; RAM as configured).
    Hello,
    /// `cpuid` must detect Xen.
    Cpuid,
    /// The heap stress test on PV memory (RAM mapped through mmu_update).
    Heap,
    /// The PV timer (VIRQ_TIMER + set_timer_op) ticks at the requested rate.
    Timer,
    /// XenStore: own domid and name, a transaction, and a watch that fires when dom0 writes the key.
    Xenstore,
    /// A page fault on the PV trap table: reported, and the domain shuts down with `crash`.
    FaultPagefault,
    /// A panic: reported, and the domain shuts down with `crash`.
    FaultPanic,
    /// blkfront against Linux blkback on a loop-backed `phy:` disk: the integrity workload, then the
    /// host checks every sector of the image (and dom0's digest of it).
    Blk,
    /// netfront against Linux netback: the guest pings dom0's end of its vif (ARP, then ICMP echo
    /// requests with patterned payloads that dom0's own kernel answers); dom0 counts the requests.
    Net,
    /// The PV console both ways: output arrives (every scenario relies on it), and a line dom0 types
    /// into the domain's console pty reaches the guest through the ring's input side.
    Console,
    /// Bad input: the workload asks for a disk the domain does not have: reported absent, test fails.
    BlkMissing,
    /// Bad input: a vbd whose backend never connects (dom0 writes the XenStore nodes itself, nobody
    /// serves them): the frontend gives up with a timeout message, the test fails, nothing hangs.
    BlkNoBackend,
    /// `blk` against our userspace blkback (`pvkit-xen-backend` in dom0) instead of Linux's: the
    /// integrity workload, the host checks every sector, the daemon's counts show it served.
    OursBlk,
    /// `net` against our userspace netback: the guest pings the echo peer on our switch.
    OursNet,
    /// The Linux PV domU (xen-blkfront, xen-netfront, hvc_xen) against our blkback, netback and
    /// console backend: dd and checksums over the disk, ping of the echo peer, a line each way
    /// through hvc1.
    LinuxOurs,
    /// Bad input to our backends: a missing image is refused at startup; a vbd whose frontend
    /// publishes a garbage ring-ref is refused with a clear log line while the same domain's vif
    /// serves the ping test and the daemon keeps running.
    OursBadInput,
    /// A hostile frontend on a live ring: our guest does honest I/O on its vbd, then publishes an
    /// impossible request index; our blkback halts that ring (error node, state Closing) while the
    /// same domain's vif then passes the ping test and the daemon keeps running.
    OursHostileRing,
    /// `net` against our netback with a tap port on our switch instead of the echo peer: the guest's
    /// pings reach dom0's own kernel through netback, the switch and the tap interface.
    OursNetTap,
    /// The generic net echo workload (`net-echo@xen-net`: verified echoes, then 64- and 1514-byte
    /// packet-rate phases) through netfront and Linux netback to dom0's echo peer on the vif.
    NetEcho,
    /// The same against our netback, the echo peer on our switch answering.
    OursNetEcho,
    /// `blk-throughput@xen-blk` against Linux blkback (short phases): PERF lines with the exit and
    /// hypercall counts.
    BlkThroughput,
    /// The generic console echo workload (`console-echo@xen-console`) over a secondary PV console
    /// served by our daemon in echo mode.
    ConsoleEcho,
}

/// Devices of a domain served by our `pvkit-xen-backend` (started in dom0 while the domain is
/// paused) instead of xl's disk/vif lines and Linux's kernel backends.
#[derive(Debug, Clone, Default)]
pub struct OurDevices {
    /// Serve the host disk as xvda (instead of a `phy:` line).
    pub disk: bool,
    /// `DEVID:MAC` of each vif.
    pub vifs: Vec<String>,
    /// Shell run once the daemon is ready, before the domain is unpaused.
    pub after_ready: Option<String>,
    /// Start the daemon while the domain already runs (its devices appear as hotplugged ones)
    /// instead of keeping the domain paused until they are ready. Linux's xenbus copes with both;
    /// Debian's 6.1 PV kernel crashes early (#UD, Xen says) when created with `xl create -p` and
    /// unpaused in this nested setup, so its scenario uses this.
    pub hotplug: bool,
    /// Attach tap interface [`TAP_NAME`] to the switch instead of the echo peer; dom0 brings it up
    /// as [`DOM0_IP`].
    pub tap: bool,
    /// A secondary console (device/console/N, `hvcN` in Linux).
    pub console: Option<OurConsole>,
}

/// A secondary console served by our daemon: its output goes to a log file in dom0, and the
/// daemon sends it one line once it connects.
#[derive(Debug, Clone)]
pub struct OurConsole {
    /// The xenbus device id (1 to 9).
    pub devid: u32,
    /// The log file in dom0 (printed as `hvcN:` notes after the run).
    pub log: String,
    /// The line the daemon sends (with a newline).
    pub input: String,
    /// A line the guest must write into it.
    pub expect: String,
    /// Echo every byte back (`--console DEVID:LOG:echo`); `input` and `expect` are then unused.
    pub echo: bool,
}

/// Where dom0 finds our backend daemon.
pub const BACKEND_PATH: &str = "/pvkit/pvkit-xen-backend";
/// xvda's virtual device number.
const XVDA: u32 = 51712;

/// Which kernel a domU boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kernel {
    /// Our guest ELF (shipped in dom0's initramfs as /pvkit/guest).
    Pvkit,
    /// Debian's kernel with the harness's busybox initramfs (/pvkit/linux/{vmlinuz,initrd}).
    Linux,
}

/// Paths of the domU kernels inside dom0.
pub const GUEST_PATH: &str = "/pvkit/guest";
pub const LINUX_KERNEL_PATH: &str = "/pvkit/linux/vmlinuz";
pub const LINUX_INITRD_PATH: &str = "/pvkit/linux/initrd";

/// A disk image the host creates (pre-filled with `crate::disk`'s host pattern) and checks after
/// the run. It is attached to the Xen machine as a virtio disk; dom0 puts a loop device on it and
/// hands that to the domU as a `phy:` disk (so Linux's kernel blkback serves it), then reports the
/// image's SHA-256 as dom0 sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostDisk {
    pub sectors: u64,
    pub fill_seed: u64,
}

/// Where a scenario's [`HostDisk`] shows up (assigned when the bundle is built).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSlot {
    /// The image file on the host.
    pub image: PathBuf,
    /// dom0's device for the virtio disk (`/dev/vda`, ...).
    pub dom0_dev: String,
    /// The loop device on it (`/dev/loop0`, ...).
    pub loop_dev: String,
}

/// One domU run inside the harness boot.
#[derive(Debug, Clone)]
pub struct DomainSpec {
    pub name: String,
    pub kernel: Kernel,
    pub cmdline: String,
    pub memory_mib: u32,
    /// xl disk specifications (`format=raw, vdev=xvda, access=rw, target=/dev/loop0`).
    pub disks: Vec<String>,
    /// A host-checked disk, given to the domU as `xvda` (in addition to `disks`).
    pub host_disk: Option<HostDisk>,
    /// xl vif specifications.
    pub vifs: Vec<String>,
    /// dom0 destroys the domain after this long.
    pub timeout: Duration,
    /// Shell run in dom0 before `xl create` (set up images and loop devices).
    pub pre: Option<String>,
    /// Shell run in dom0 once the domain exists (while it is still paused, if `paused`).
    pub running: Option<String>,
    /// Create the domain paused (`xl create -p`) and unpause it after the `running` hook.
    pub paused: bool,
    /// Shell run in dom0 after the domain is gone (reports with `check key=value`).
    pub post: Option<String>,
    /// Devices served by our backend daemon (implies `paused` unless they are hotplugged).
    pub ours: Option<OurDevices>,
}

impl DomainSpec {
    /// The xl configuration file; `slot` is where the host disk landed, if the spec has one.
    pub fn xl_config(&self, slot: Option<&DiskSlot>) -> String {
        let mut c = String::new();
        let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(c, "name = \"{}\"", q(&self.name));
        c.push_str("type = \"pv\"\n");
        match self.kernel {
            Kernel::Pvkit => {
                let _ = writeln!(c, "kernel = \"{GUEST_PATH}\"");
            }
            Kernel::Linux => {
                let _ = writeln!(c, "kernel = \"{LINUX_KERNEL_PATH}\"");
                let _ = writeln!(c, "ramdisk = \"{LINUX_INITRD_PATH}\"");
            }
        }
        let _ = writeln!(c, "extra = \"{}\"", q(&self.cmdline));
        let _ = writeln!(c, "memory = {}", self.memory_mib);
        c.push_str("vcpus = 1\n");
        // Keep a shut-down domain until dom0 has drained its console; dom0 destroys it then.
        c.push_str("on_poweroff = \"preserve\"\non_reboot = \"preserve\"\non_crash = \"preserve\"\n");
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("\"{}\"", q(s)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut disks = self.disks.clone();
        if let Some(slot) = slot.filter(|_| !self.ours.as_ref().is_some_and(|o| o.disk)) {
            disks.push(format!(
                "format=raw, vdev=xvda, access=rw, target={}",
                slot.loop_dev
            ));
        }
        let _ = writeln!(c, "disk = [ {} ]", list(&disks));
        let _ = writeln!(c, "vif = [ {} ]", list(&self.vifs));
        c
    }
}

impl XenScenario {
    /// The scenarios `cargo xtask test` runs: those that pass reliably (the others can be run with
    /// `cargo xtask xen --scenario`).
    pub fn in_test_suite() -> &'static [XenScenario] {
        &[
            XenScenario::LinuxSelfcheck,
            XenScenario::Hello,
            XenScenario::Cpuid,
            XenScenario::Heap,
            XenScenario::Timer,
            XenScenario::Xenstore,
            XenScenario::FaultPagefault,
            XenScenario::FaultPanic,
            XenScenario::Blk,
            XenScenario::Net,
            XenScenario::Console,
            XenScenario::BlkMissing,
            XenScenario::BlkNoBackend,
            XenScenario::OursBlk,
            XenScenario::OursNet,
            XenScenario::LinuxOurs,
            XenScenario::OursBadInput,
            XenScenario::OursHostileRing,
            XenScenario::OursNetTap,
        ]
    }

    pub fn name(self) -> &'static str {
        match self {
            XenScenario::LinuxSelfcheck => "linux-selfcheck",
            XenScenario::Hello => "hello",
            XenScenario::Cpuid => "cpuid",
            XenScenario::Heap => "heap",
            XenScenario::Timer => "timer",
            XenScenario::Xenstore => "xenstore",
            XenScenario::FaultPagefault => "fault-pagefault",
            XenScenario::FaultPanic => "fault-panic",
            XenScenario::Blk => "blk",
            XenScenario::Net => "net",
            XenScenario::Console => "console",
            XenScenario::BlkMissing => "blk-missing",
            XenScenario::BlkNoBackend => "blk-no-backend",
            XenScenario::OursBlk => "ours-blk",
            XenScenario::OursNet => "ours-net",
            XenScenario::LinuxOurs => "linux-ours",
            XenScenario::OursBadInput => "ours-bad-input",
            XenScenario::OursHostileRing => "ours-hostile-ring",
            XenScenario::OursNetTap => "ours-net-tap",
            XenScenario::NetEcho => "net-echo",
            XenScenario::OursNetEcho => "ours-net-echo",
            XenScenario::BlkThroughput => "blk-throughput",
            XenScenario::ConsoleEcho => "console-echo",
        }
    }

    /// The domU of this scenario; `nonce` is a per-run value the Linux self-check must echo.
    pub fn spec(self, nonce: &str) -> DomainSpec {
        let base = |name: &str, cmdline: String| DomainSpec {
            name: name.to_owned(),
            kernel: Kernel::Pvkit,
            cmdline,
            memory_mib: GUEST_MEMORY_MIB,
            disks: Vec::new(),
            host_disk: None,
            vifs: Vec::new(),
            timeout: Duration::from_secs(60),
            pre: None,
            running: None,
            paused: false,
            post: None,
            ours: None,
        };
        let ours = |disk: bool, vifs: Vec<String>| {
            Some(OurDevices {
                disk,
                vifs,
                ..Default::default()
            })
        };
        match self {
            XenScenario::LinuxSelfcheck | XenScenario::LinuxOurs => DomainSpec {
                kernel: Kernel::Linux,
                memory_mib: LINUX_MEMORY_MIB,
                timeout: Duration::from_secs(180),
                host_disk: Some(HostDisk {
                    sectors: SELFCHECK_DISK_SECTORS,
                    fill_seed: 0x5e1f,
                }),
                vifs: if self == XenScenario::LinuxOurs {
                    Vec::new()
                } else {
                    vec![format!("mac={LINUX_DOMU_MAC}, script={VIF_SCRIPT_PATH}")]
                },
                ours: if self == XenScenario::LinuxOurs {
                    Some(OurDevices {
                        disk: true,
                        vifs: vec![format!("0:{LINUX_DOMU_MAC}")],
                        after_ready: None,
                        hotplug: true,
                        tap: false,
                        console: Some(OurConsole {
                            devid: 1,
                            log: format!("/tmp/hvc1-{}.log", self.name()),
                            input: hvc1_input(nonce),
                            expect: format!("PVKIT-SELFCHECK hvc1 nonce={nonce}"),
                            echo: false,
                        }),
                    })
                } else {
                    None
                },
                running: Some(console_input_hook(
                    self.name(),
                    "PVKIT-SELFCHECK console-ready",
                    &console_input(nonce),
                )),
                ..base(
                    self.name(),
                    format!(
                        "console=hvc0 quiet pvkit.nonce={nonce} pvkit.ip={DOMU_IP} pvkit.peer={DOM0_IP} \
                         pvkit.pings={SELFCHECK_PINGS} pvkit.hvc1={}",
                        u8::from(self == XenScenario::LinuxOurs)
                    ),
                )
            },
            XenScenario::Hello => base(
                self.name(),
                format!("tests=hello hello.mem_mib={GUEST_MEMORY_MIB}"),
            ),
            XenScenario::Cpuid => base(self.name(), "tests=cpuid cpuid.expect=xen".to_owned()),
            XenScenario::Heap => base(self.name(), "tests=heap".to_owned()),
            XenScenario::Timer => base(
                self.name(),
                format!("tests=timer timer.hz={TIMER_HZ} timer.ms={TIMER_MS}"),
            ),
            XenScenario::Xenstore => DomainSpec {
                // Once the guest has set its watch it writes data/pvkit-ready; dom0 then writes
                // the watched key (in the background: the hook must not stall dom0's wait loop).
                running: Some(format!(
                    "(for _ in $(seq 300); do\n\
                     \x20   if xenstore-read /local/domain/$domid/data/pvkit-ready >/dev/null 2>&1; then\n\
                     \x20       xenstore-write /local/domain/$domid/data/pvkit-ping {value} && check ping_written=1\n\
                     \x20       break\n\
                     \x20   fi\n\
                     \x20   sleep 0.1\n\
                     done) &\n",
                    value = xenstore_value(nonce)
                )),
                ..base(self.name(), "tests=xenstore xenstore.peer=1".to_owned())
            },
            XenScenario::FaultPagefault | XenScenario::FaultPanic => {
                base(self.name(), format!("tests={}", self.name()))
            }
            XenScenario::Blk | XenScenario::OursBlk => DomainSpec {
                ours: if self == XenScenario::OursBlk {
                    ours(true, Vec::new())
                } else {
                    None
                },
                host_disk: Some(HostDisk {
                    sectors: BLK_SECTORS,
                    fill_seed: 0x5eed_4e11,
                }),
                ..base(
                    self.name(),
                    format!(
                        "tests={BLK_TEST} {BLK_TEST}.seed={} {BLK_TEST}.extents={BLK_EXTENTS}",
                        blk_seed(nonce)
                    ),
                )
            },
            XenScenario::BlkMissing => base(self.name(), format!("tests={BLK_TEST}")),
            XenScenario::Console => DomainSpec {
                running: Some(console_input_hook(
                    self.name(),
                    CONSOLE_READY,
                    &console_input(nonce),
                )),
                ..base(
                    self.name(),
                    format!(
                        "tests={CONSOLE_TEST} {CONSOLE_TEST}.expect={}",
                        console_input(nonce)
                    ),
                )
            },
            XenScenario::Net => DomainSpec {
                vifs: vec![format!("mac={GUEST_MAC}, script={VIF_SCRIPT_PATH}")],
                pre: Some(format!("{ICMP_IN_ECHOS}echos0=$(icmp_in_echos)\n")),
                post: Some("check dom0_icmp_echo_requests=$(($(icmp_in_echos) - echos0))\n".to_owned()),
                ..base(self.name(), net_cmdline())
            },
            XenScenario::BlkNoBackend => DomainSpec {
                paused: true,
                running: Some(stub_vbd_script()),
                ..base(
                    self.name(),
                    format!("tests={BLK_TEST} {BLK_TEST}.timeout_ms=3000"),
                )
            },
            XenScenario::OursHostileRing => DomainSpec {
                ours: ours(true, vec![format!("0:{GUEST_MAC}")]),
                host_disk: Some(HostDisk {
                    sectors: BLK_SECTORS,
                    fill_seed: 0x5eed_4e11,
                }),
                ..base(
                    self.name(),
                    format!(
                        "tests={HOSTILE_TEST},{}",
                        net_cmdline().trim_start_matches("tests=")
                    ),
                )
            },
            XenScenario::OursNetTap => DomainSpec {
                ours: Some(OurDevices {
                    vifs: vec![format!("0:{GUEST_MAC}")],
                    tap: true,
                    after_ready: Some(format!(
                        "ip link set {TAP_NAME} up && ip addr add {DOM0_IP}/24 dev {TAP_NAME} && check tap=up\n"
                    )),
                    ..Default::default()
                }),
                pre: Some(format!("{ICMP_IN_ECHOS}echos0=$(icmp_in_echos)\n")),
                post: Some("check dom0_icmp_echo_requests=$(($(icmp_in_echos) - echos0))\n".to_owned()),
                ..base(self.name(), net_cmdline())
            },
            XenScenario::OursNet => DomainSpec {
                ours: ours(false, vec![format!("0:{GUEST_MAC}")]),
                ..base(self.name(), net_cmdline())
            },
            XenScenario::NetEcho => DomainSpec {
                vifs: vec![format!("mac={GUEST_MAC}, script={VIF_SCRIPT_PATH}")],
                running: Some(echo_start()),
                post: Some(echo_stop()),
                ..base(self.name(), net_echo_cmdline())
            },
            XenScenario::OursNetEcho => DomainSpec {
                ours: ours(false, vec![format!("0:{GUEST_MAC}")]),
                ..base(self.name(), net_echo_cmdline())
            },
            XenScenario::BlkThroughput => DomainSpec {
                host_disk: Some(HostDisk {
                    sectors: BLK_SECTORS,
                    fill_seed: 0x5eed_4e11,
                }),
                ..base(
                    self.name(),
                    format!("tests={BLK_THROUGHPUT_TEST} {BLK_THROUGHPUT_TEST}.ms={COST_PHASE_MS}"),
                )
            },
            XenScenario::ConsoleEcho => DomainSpec {
                ours: Some(OurDevices {
                    console: Some(OurConsole {
                        devid: 1,
                        log: format!("/tmp/hvc1-{}.log", self.name()),
                        input: String::new(),
                        expect: String::new(),
                        echo: true,
                    }),
                    ..Default::default()
                }),
                ..base(
                    self.name(),
                    format!(
                        "tests={CONSOLE_ECHO_TEST} {CONSOLE_ECHO_TEST}.seed=7 \
                         {CONSOLE_ECHO_TEST}.bytes={CONSOLE_ECHO_BYTES}"
                    ),
                )
            },
            XenScenario::OursBadInput => DomainSpec {
                pre: Some(missing_image_check()),
                ours: Some(OurDevices {
                    disk: false,
                    vifs: vec![format!("0:{GUEST_MAC}")],
                    after_ready: Some(hostile_vbd_script()),
                    hotplug: false,
                    tap: false,
                    console: None,
                }),
                ..base(self.name(), net_cmdline())
            },
        }
    }

    /// What is wrong with this scenario's report (empty: passed). `nonce` is the run's nonce,
    /// `disk` the host disk's slot (its image is read after the run).
    pub fn check(self, r: &ScenarioReport, nonce: &str, disk: Option<&DiskSlot>) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(slot) = disk {
            check_image_digest(r, slot, &mut problems);
        }
        if let Some(ours) = self.spec(nonce).ours {
            check_backend(&ours, r, &mut problems);
        }
        if self == XenScenario::OursBadInput {
            check_bad_input(r, &mut problems);
        }
        match self {
            XenScenario::LinuxSelfcheck | XenScenario::LinuxOurs => {
                expect_end(r, "poweroff", &mut problems);
                let has = |want: &str| r.console.iter().any(|l| l.trim() == want);
                for want in [
                    format!("PVKIT-SELFCHECK nonce={nonce}"),
                    format!("PVKIT-SELFCHECK ping={SELFCHECK_PINGS}/{SELFCHECK_PINGS}"),
                    format!("PVKIT-SELFCHECK input={}", console_input(nonce)),
                    "PVKIT-SELFCHECK pattern=written".to_owned(),
                    "PVKIT-SELFCHECK pattern=read-back".to_owned(),
                ] {
                    if !has(&want) {
                        problems.push(format!(
                            "the Linux domU's console ({} lines) lacks `{want}`",
                            r.console.len()
                        ));
                    }
                }
                match disk.map(|d| sha256_file(&d.image)) {
                    Some(Ok(host)) => {
                        let said = r
                            .console
                            .iter()
                            .find_map(|l| l.trim().strip_prefix("PVKIT-SELFCHECK disk_sha256="));
                        if said != Some(host.as_str()) {
                            problems.push(format!(
                                "the domU read the whole disk with SHA-256 {said:?}; the image on the host \
                                 afterwards has {host}"
                            ));
                        }
                    }
                    Some(Err(e)) => problems.push(format!("hashing the disk image: {e:#}")),
                    None => {}
                }
                match disk.map(|d| std::fs::read(&d.image)) {
                    Some(Ok(img)) => {
                        let want = format!("PVKIT-SELFCHECK-DISK nonce={nonce}\n");
                        if !img.starts_with(want.as_bytes()) {
                            problems.push(format!(
                                "the disk image does not start with {want:?} (the domU's write through \
                                 blkfront/blkback/loop did not reach it): {:?}",
                                String::from_utf8_lossy(&img[..img.len().min(48)])
                            ));
                        }
                    }
                    Some(Err(e)) => problems.push(format!("reading the disk image: {e}")),
                    None => problems.push("the self-check has no host disk".to_owned()),
                }
            }
            XenScenario::FaultPagefault | XenScenario::FaultPanic => check_fault(self, r, &mut problems),
            XenScenario::BlkMissing => check_refused(r, &["absent"], &mut problems),
            XenScenario::Console => {
                check_guest(r, &[CONSOLE_TEST], &mut problems);
                let want = console_input(nonce);
                if let Some(Record::TestPass { fields, .. }) = r.transcript.verdict(CONSOLE_TEST)
                    && fields.get("line") != Some(want.as_str())
                {
                    problems.push(format!(
                        "the guest read line={:?}, dom0 typed {want:?}",
                        fields.get("line")
                    ));
                }
                if r.checks.get("console_input") != Some("written") {
                    problems.push("dom0 never saw the guest's ready line, so it typed nothing".to_owned());
                }
            }
            XenScenario::Net
            | XenScenario::OursNet
            | XenScenario::OursBadInput
            | XenScenario::OursHostileRing
            | XenScenario::OursNetTap => {
                if self == XenScenario::OursHostileRing {
                    check_guest(r, &[HOSTILE_TEST, NET_TEST], &mut problems);
                    check_hostile_ring(r, &mut problems);
                } else {
                    check_guest(r, &[NET_TEST], &mut problems);
                }
                if let Some(Record::TestPass { fields, .. }) = r.transcript.verdict(NET_TEST) {
                    let want = [
                        ("replies", NET_PINGS.to_string()),
                        ("size", NET_PING_SIZE.to_string()),
                        ("mac", GUEST_MAC.to_owned()),
                    ];
                    for (k, v) in want {
                        if fields.get(k) != Some(v.as_str()) {
                            problems.push(format!(
                                "{NET_TEST} PASS has {k}={:?}, expected {v}",
                                fields.get(k)
                            ));
                        }
                    }
                }
                if self == XenScenario::OursNetTap && r.checks.get("tap") != Some("up") {
                    problems.push("dom0 could not bring the tap interface up".to_owned());
                }
                match r.checks.get_u64("dom0_icmp_echo_requests") {
                    _ if self != XenScenario::Net && self != XenScenario::OursNetTap => {}
                    Some(n) if n >= NET_PINGS => {}
                    other => problems.push(format!(
                        "dom0's kernel counted {other:?} ICMP echo requests, the guest sends {NET_PINGS}"
                    )),
                }
            }
            XenScenario::NetEcho | XenScenario::OursNetEcho => {
                check_guest(r, &[NET_ECHO_TEST], &mut problems);
                check_cost_fields(r, NET_ECHO_TEST, &["echo64", "echo1514"], &mut problems);
                if self == XenScenario::NetEcho {
                    // dom0's echo peer echoed every frame the guest verified.
                    let guest = r
                        .transcript
                        .verdict(NET_ECHO_TEST)
                        .and_then(|v| match v {
                            Record::TestPass { fields, .. } => fields.get_u64("ops"),
                            _ => None,
                        })
                        .unwrap_or(0)
                        + r.transcript.perfs().filter_map(|p| p.get_u64("ops")).sum::<u64>();
                    match r.checks.get_u64("echoed") {
                        Some(n) if n == guest => {}
                        other => problems.push(format!(
                            "dom0's echo peer echoed {other:?} frames, the guest verified {guest}"
                        )),
                    }
                }
            }
            XenScenario::BlkThroughput => {
                check_guest(r, &[BLK_THROUGHPUT_TEST], &mut problems);
                check_cost_fields(
                    r,
                    BLK_THROUGHPUT_TEST,
                    &["randread4k", "randwrite4k", "seqread64k", "seqwrite64k"],
                    &mut problems,
                );
            }
            XenScenario::ConsoleEcho => {
                check_guest(r, &[CONSOLE_ECHO_TEST], &mut problems);
                check_cost_fields(r, CONSOLE_ECHO_TEST, &["stream"], &mut problems);
            }
            XenScenario::BlkNoBackend => {
                // The message must name the backend that never connected and its state.
                check_refused(r, &[STUB_BACKEND, "state 2"], &mut problems);
                if r.checks.get("stub_vbd") != Some("written") {
                    problems.push("dom0 did not write the stub vbd nodes".to_owned());
                }
            }
            XenScenario::Blk | XenScenario::OursBlk => {
                check_guest(r, &[BLK_TEST], &mut problems);
                if let (Some(slot), Some(Record::TestPass { fields, .. })) =
                    (disk, r.transcript.verdict(BLK_TEST))
                {
                    let image = crate::disk::DiskImage {
                        path: slot.image.clone(),
                        sectors: BLK_SECTORS,
                        fill_seed: 0x5eed_4e11,
                    };
                    match image.verify_integrity(blk_seed(nonce), BLK_EXTENTS as usize, true) {
                        Ok(c) => {
                            let want = 2 * c.sectors_written * crate::disk::SECTOR as u64;
                            if fields.get_u64("bytes") != Some(want) {
                                problems.push(format!(
                                    "guest reports bytes={:?}, the {} extents it writes and reads back are {want} \
                                     bytes",
                                    fields.get("bytes"),
                                    c.extents
                                ));
                            }
                        }
                        Err(e) => problems.push(format!("image check: {e:#}")),
                    }
                }
            }
            other => {
                let test = other.name();
                check_guest(r, &[test], &mut problems);
                let field = |k: &str| match r.transcript.verdict(test) {
                    Some(Record::TestPass { fields, .. }) => fields.get(k).map(str::to_owned),
                    _ => None,
                };
                match other {
                    XenScenario::Hello => {
                        let platform = r.transcript.boot().and_then(|b| b.get("platform"));
                        if platform != Some("xen-pv") {
                            problems.push(format!("BOOT platform={platform:?}, expected xen-pv"));
                        }
                    }
                    XenScenario::Cpuid if field("hypervisor").as_deref() != Some("xen") => {
                        problems.push(format!("cpuid detected {:?}, expected xen", field("hypervisor")));
                    }
                    XenScenario::Timer => {
                        let (hz, ms) = (field("hz"), field("ms"));
                        if (hz.as_deref(), ms.as_deref())
                            != (
                                Some(TIMER_HZ.to_string().as_str()),
                                Some(TIMER_MS.to_string().as_str()),
                            )
                            && r.transcript.passed(test)
                        {
                            problems.push(format!(
                                "guest used hz={hz:?} ms={ms:?}, xtask asked for {TIMER_HZ} and {TIMER_MS}"
                            ));
                        }
                    }
                    XenScenario::Xenstore => {
                        let want = xenstore_value(nonce);
                        if r.transcript.passed(test) && field("value").as_deref() != Some(want.as_str()) {
                            problems.push(format!(
                                "the guest's watch saw value={:?}, dom0 wrote {want}",
                                field("value")
                            ));
                        }
                        let domid = r.domid.map(|d| d.to_string());
                        if r.transcript.passed(test)
                            && (field("domid") != domid || field("name").as_deref() != Some(test))
                        {
                            problems.push(format!(
                                "the guest read domid={:?} name={:?} from XenStore; dom0 created domid {domid:?} \
                                 named {test}",
                                field("domid"),
                                field("name")
                            ));
                        }
                        if r.checks.get("ping_written") != Some("1") {
                            problems.push("dom0 never saw data/pvkit-ready, so it wrote no ping".to_owned());
                        }
                    }
                    _ => {}
                }
            }
        }
        problems
    }
}

/// The cost scenarios' tests and parameters.
const NET_ECHO_TEST: &str = "net-echo@xen-net";
const BLK_THROUGHPUT_TEST: &str = "blk-throughput@xen-blk";
const CONSOLE_ECHO_TEST: &str = "console-echo@xen-console";
const COST_PHASE_MS: u64 = 100;
const CONSOLE_ECHO_BYTES: u64 = 8192;

fn net_echo_cmdline() -> String {
    format!(
        "tests={NET_ECHO_TEST} {NET_ECHO_TEST}.seed=7 {NET_ECHO_TEST}.frames=200 \
         {NET_ECHO_TEST}.ms={COST_PHASE_MS}"
    )
}

/// The cost fields every PERF line of `test` and its PASS line must carry under Xen PV: the
/// patterns expected, exits with hypercalls by name (an event channel send at least), latency.
fn check_cost_fields(r: &ScenarioReport, test: &str, patterns: &[&str], problems: &mut Vec<String>) {
    let perfs: Vec<_> = r.transcript.perfs().collect();
    for want in patterns {
        if !perfs.iter().any(|p| p.get("pattern") == Some(want)) {
            problems.push(format!("{test}: no PERF line with pattern={want}"));
        }
    }
    let pass = match r.transcript.verdict(test) {
        Some(Record::TestPass { fields, .. }) => Some(fields),
        _ => None,
    };
    for f in perfs.into_iter().chain(pass) {
        let what = format!("{test} {}", f.get("pattern").unwrap_or("PASS"));
        let n = |k: &str| f.get_u64(k);
        match (
            n("exits"),
            n("hypercalls"),
            n("exits_pio"),
            n("exits_mmio"),
            n("exits_hlt"),
        ) {
            (Some(e), Some(h), Some(0), Some(0), Some(0)) if h > 0 && e == h => {}
            other => problems.push(format!(
                "{what}: exits/hypercalls/pio/mmio/hlt = {other:?}, expected only hypercalls (> 0) on Xen PV"
            )),
        }
        if !f.get("hc").is_some_and(|hc| hc.contains("event_channel_op:")) {
            problems.push(format!("{what}: hc={:?} names no event_channel_op", f.get("hc")));
        }
        if f.get("pattern").is_some() && n("lat_p50_ns").is_none_or(|l| l == 0) {
            problems.push(format!(
                "{what}: no latency (lat_p50_ns={:?})",
                f.get("lat_p50_ns")
            ));
        }
    }
}

/// The block workload's test name under Xen, and its parameters (the image size is the QEMU
/// scenarios' 16 MiB).
const BLK_TEST: &str = "blk-integrity@xen-blk";
const BLK_SECTORS: u64 = 32 * 1024;
const BLK_EXTENTS: u64 = 64;

/// The block workload's seed: derived from the run's nonce, so an old image cannot pass.
fn blk_seed(nonce: &str) -> u64 {
    nonce.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    }) & 0xffff_ffff
}

/// The `xenstore-write`s of a vbd that no backend serves: the frontend directory (owned by the
/// domU, readable by dom0) points at a backend directory under a type no dom0 driver watches, whose
/// state stays InitWait (2). Runs while the domain is paused.
fn stub_vbd_script() -> String {
    format!(
        "fe=/local/domain/$domid/device/vbd/51712\n\
     be=/local/domain/0/backend/{STUB_BACKEND}/$domid/51712\n\
     xenstore-write $be/frontend $fe $be/frontend-id $domid $be/state 2 $be/sectors 2048 \\\n\
     \x20   $be/sector-size 512 $be/info 0 &&\n\
     xenstore-chmod -r $be n0 r$domid &&\n\
     xenstore-write $fe/backend $be $fe/backend-id 0 $fe/state 1 $fe/virtual-device 51712 \\\n\
     \x20   $fe/device-type disk &&\n\
     xenstore-chmod -r $fe n$domid r0 &&\n\
     check stub_vbd=written\n"
    )
}

/// The ping workload's command line (against dom0's kernel or our switch's echo peer, both at
/// [`DOM0_IP`]).
fn net_cmdline() -> String {
    format!(
        "tests={NET_TEST} {NET_TEST}.ip={DOMU_IP} {NET_TEST}.peer={DOM0_IP} \
         {NET_TEST}.count={NET_PINGS} {NET_TEST}.size={NET_PING_SIZE}"
    )
}

/// The image path the bad-input scenario gives our daemon (it does not exist).
const MISSING_IMAGE: &str = "/pvkit/no-such.img";
/// The vbd of the bad-input scenario whose "frontend" (dom0 playing a hostile guest) publishes a
/// garbage ring-ref.
const HOSTILE_VBD: u32 = 51728;
/// The garbage it publishes: a grant reference the domain never issued.
const HOSTILE_RING_REF: u32 = 1_234_567;
/// The image behind the hostile vbd (created by the scenario's `pre`).
const HOSTILE_IMAGE: &str = "/tmp/hostile.img";

/// dom0 shell (`pre`): the daemon must refuse an image that does not exist, at startup, with a
/// message naming it; also creates the hostile vbd's image.
fn missing_image_check() -> String {
    format!(
        "out=$({BACKEND_PATH} --domid 0 --vbd {XVDA}:{MISSING_IMAGE} 2>&1)\n\
         check missing_image_exit=$?\n\
         echo \"$out\" | sed \"s/^/PVKIT-XEN SCENARIO $name NOTE missing-image: /\"\n\
         dd if=/dev/zero of={HOSTILE_IMAGE} bs=512 count=2048 2>/dev/null\n"
    )
}

/// dom0 shell run once our daemon is ready: plays a hostile frontend for vbd [`HOSTILE_VBD`]
/// (publishes a garbage ring-ref and says `Initialised`), then waits for the backend's verdict.
fn hostile_vbd_script() -> String {
    format!(
        "fe=/local/domain/$domid/device/vbd/{HOSTILE_VBD}\n\
         be=/local/domain/0/backend/vbd/$domid/{HOSTILE_VBD}\n\
         xenstore-write $fe/ring-ref {HOSTILE_RING_REF} $fe/event-channel 4242 $fe/protocol x86_64-abi &&\n\
         \x20   xenstore-write $fe/state 3\n\
         for _ in $(seq 100); do [ \"$(xenstore-read $be/state)\" = 5 ] && break; sleep 0.1; done\n\
         check hostile_state=$(xenstore-read $be/state)\n\
         xenstore-read $be/error | sed \"s/^/PVKIT-XEN SCENARIO $name NOTE hostile-error: /\"\n"
    )
}

/// The daemon's arguments for `ours` (the host disk, if served, is `loop_dev`).
fn backend_args(ours: &OurDevices, slot: Option<&DiskSlot>, bad_input: bool) -> String {
    let mut a = String::new();
    if let Some(slot) = slot.filter(|_| ours.disk) {
        // O_DIRECT on the loop device: requests reach it as they are, like Linux blkback's bios
        // (without it every 4 KiB read pulls the page cache's readahead through loop and virtio).
        let _ = write!(a, " --direct --vbd {XVDA}:{}", slot.loop_dev);
    }
    for v in &ours.vifs {
        let _ = write!(a, " --vif {v}");
    }
    if ours.tap {
        let _ = write!(a, " --tap {TAP_NAME} --no-echo-peer");
    }
    if bad_input {
        let _ = write!(a, " --vbd {HOSTILE_VBD}:{HOSTILE_IMAGE}");
    }
    if let Some(c) = &ours.console {
        // The input is a nonce-derived word: no shell quoting needed beyond the quotes.
        let _ = write!(a, " --console {}:{}", c.devid, c.log);
        if c.echo {
            a.push_str(":echo");
        } else {
            let _ = write!(a, " --console-input '{}'", c.input);
        }
    }
    // The echo peer at the workloads' peer address (`pvkit_frontends::workload::net::PEER_MAC`),
    // so `net-echo@xen-net` frames reach it; ARP finds it at DOM0_IP either way.
    let _ = write!(a, " --echo-ip {DOM0_IP} --echo-mac {WORKLOAD_PEER_MAC}");
    a
}

/// Where the guest's net echo workload sends its frames.
const WORKLOAD_PEER_MAC: &str = "02:00:00:00:00:01";

/// dom0 shell (`running`, the domain still paused): starts our daemon for the domain, waits for its
/// ready line, runs `after_ready`.
pub fn backend_running(spec: &DomainSpec, slot: Option<&DiskSlot>) -> Option<String> {
    let ours = spec.ours.as_ref()?;
    let bad_input = spec.name == XenScenario::OursBadInput.name();
    Some(format!(
        "blog=/tmp/backend-{name}.log\n\
         {BACKEND_PATH} --domid $domid{args} >$blog 2>&1 &\n\
         backend_pid=$!\n\
         for _ in $(seq 100); do\n\
         \x20   grep -q ' ready: ' $blog && break\n\
         \x20   kill -0 $backend_pid 2>/dev/null || break\n\
         \x20   sleep 0.1\n\
         done\n\
         if grep -q ' ready: ' $blog; then\n\
         \x20   check backend=ready\n\
         {after}\
         else\n\
         \x20   check backend=not-ready\n\
         fi\n",
        name = spec.name,
        args = backend_args(ours, slot, bad_input),
        after = ours.after_ready.clone().unwrap_or_default(),
    ))
}

/// dom0 shell (`post`, before the disk is detached): the daemon must leave by itself once the
/// domain is gone; its log goes into the report as `backend:` notes.
pub fn backend_post(spec: &DomainSpec) -> Option<String> {
    let ours = spec.ours.as_ref()?;
    let mut post = String::from(
        "for _ in $(seq 50); do kill -0 $backend_pid 2>/dev/null || break; sleep 0.1; done\n\
         if kill -0 $backend_pid 2>/dev/null; then\n\
         \x20   check backend_exit=still-running\n\
         \x20   kill $backend_pid; wait $backend_pid\n\
         else\n\
         \x20   wait $backend_pid\n\
         \x20   check backend_exit=$?\n\
         fi\n\
         sed \"s/^/PVKIT-XEN SCENARIO $name NOTE backend: /\" $blog\n",
    );
    if let Some(c) = ours.console.as_ref().filter(|c| !c.echo) {
        // The guest's tty turns each newline into CR LF. (An echo console's log is the workload's
        // random bytes: not shown.)
        let _ = writeln!(
            post,
            "tr -d '\\r' <{log} | sed \"s/^/PVKIT-XEN SCENARIO $name NOTE hvc{devid}: /\"",
            log = c.log,
            devid = c.devid
        );
    }
    Some(post)
}

/// The tap interface of the tap scenario in dom0.
pub const TAP_NAME: &str = "pvtap0";

/// The guest test that turns its vbd's frontend hostile.
const HOSTILE_TEST: &str = "blk-hostile@xen-blk";

/// The hostile-ring scenario: the guest saw its ring refused (state Closing or Closed, an error
/// node) and our daemon logged why.
fn check_hostile_ring(r: &ScenarioReport, problems: &mut Vec<String>) {
    if let Some(Record::TestPass { fields, .. }) = r.transcript.verdict(HOSTILE_TEST)
        && (!matches!(fields.get("backend_state"), Some("5" | "6"))
            || fields.get("backend_error") != Some("1"))
    {
        problems.push(format!(
            "{HOSTILE_TEST} saw backend_state={:?} backend_error={:?}, expected 5 or 6 and 1",
            fields.get("backend_state"),
            fields.get("backend_error")
        ));
    }
    let device = format!("device=vbd {XVDA} of domain");
    let halted = r.notes.iter().any(|n| {
        n.starts_with("backend:")
            && n.contains("ERROR")
            && n.contains(&device)
            && n.contains("device halted")
            && n.contains("ring halted")
    });
    if !halted {
        problems.push(format!(
            "our daemon's log has no ERROR line saying vbd {XVDA}'s ring was halted"
        ));
    }
}

/// The two refusals of the bad-input scenario.
fn check_bad_input(r: &ScenarioReport, problems: &mut Vec<String>) {
    if r.checks.get("missing_image_exit") != Some("1") {
        problems.push(format!(
            "the daemon given a missing image exited with {:?}, expected 1",
            r.checks.get("missing_image_exit")
        ));
    }
    let want = format!("cannot open image {MISSING_IMAGE}");
    if !r
        .notes
        .iter()
        .any(|n| n.starts_with("missing-image:") && n.contains(&want))
    {
        problems.push(format!("the daemon given a missing image did not say `{want}`"));
    }
    if r.checks.get("hostile_state") != Some("5") {
        problems.push(format!(
            "the vbd with a garbage ring-ref is in state {:?}, expected 5 (Closing: refused)",
            r.checks.get("hostile_state")
        ));
    }
    let device = format!("device=vbd {HOSTILE_VBD} of domain");
    let refused = r.notes.iter().any(|n| {
        n.starts_with("backend:")
            && n.contains("ERROR")
            && n.contains(&device)
            && n.contains("refused:")
            && n.contains(&HOSTILE_RING_REF.to_string())
    });
    if !refused {
        problems.push(format!(
            "the daemon's log has no ERROR line refusing vbd {HOSTILE_VBD} and naming ring-ref {HOSTILE_RING_REF}"
        ));
    }
}

/// The number after `key=` in `line`.
fn count_in(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// What our daemon must have shown: ready before the domain ran, exit 0 after it was gone, and for
/// each device it served a disconnect summary with work done and nothing failed.
fn check_backend(ours: &OurDevices, r: &ScenarioReport, problems: &mut Vec<String>) {
    if r.checks.get("backend") != Some("ready") {
        problems.push(format!(
            "our backend daemon never said ready (backend={:?})",
            r.checks.get("backend")
        ));
    }
    if r.checks.get("backend_exit") != Some("0") {
        problems.push(format!(
            "our backend daemon did not exit with 0 once the domain was gone (backend_exit={:?})",
            r.checks.get("backend_exit")
        ));
    }
    let summary = |dev: &str| {
        r.notes.iter().find(|n| {
            n.starts_with("backend:")
                && n.contains(&format!("device={dev} of domain"))
                && n.contains("disconnected:")
        })
    };
    if ours.disk {
        match summary(&format!("vbd {XVDA}")) {
            Some(n) if count_in(n, "requests").is_some_and(|c| c > 0) && count_in(n, "failed") == Some(0) => {
            }
            other => problems.push(format!(
                "our blkback's summary of vbd {XVDA} shows no clean work: {other:?}"
            )),
        }
    }
    for v in &ours.vifs {
        let devid = v.split(':').next().unwrap_or_default();
        match summary(&format!("vif {devid}")) {
            Some(n)
                if count_in(n, "tx_packets").is_some_and(|c| c > 0)
                    && count_in(n, "rx_packets").is_some_and(|c| c > 0)
                    && count_in(n, "tx_errors") == Some(0) => {}
            other => problems.push(format!(
                "our netback's summary of vif {devid} shows no clean traffic: {other:?}"
            )),
        }
    }
    if let Some(c) = &ours.console {
        let s = summary(&format!("console {}", c.devid));
        if c.echo {
            // Every byte the guest wrote went back.
            match s {
                Some(n)
                    if count_in(n, "echoed").is_some_and(|e| e > 0)
                        && count_in(n, "echoed") == count_in(n, "bytes_out")
                        && count_in(n, "sink_errors") == Some(0) => {}
                other => problems.push(format!(
                    "our console backend's summary of console {} should show echoed = bytes_out > 0 \
                     without sink errors: {other:?}",
                    c.devid
                )),
            }
        } else {
            check_console(c, r, s, problems);
        }
    }
}

/// Our console both ways: the guest's line is in dom0's log of it, the guest read the daemon's
/// line, and the daemon's summary counts exactly that input and at least that output.
fn check_console(c: &OurConsole, r: &ScenarioReport, summary: Option<&String>, problems: &mut Vec<String>) {
    let label = format!("hvc{}:", c.devid);
    let logged: Vec<&str> = r
        .notes
        .iter()
        .filter_map(|n| n.strip_prefix(label.as_str()))
        .map(str::trim)
        .collect();
    if !logged.contains(&c.expect.as_str()) {
        problems.push(format!(
            "dom0's log of console {} ({} lines) lacks the guest's `{}`",
            c.devid,
            logged.len(),
            c.expect
        ));
    }
    let want = format!("PVKIT-SELFCHECK hvc{}-input={}", c.devid, c.input);
    if !r.console.iter().any(|l| l.trim() == want) {
        let said = r
            .console
            .iter()
            .find(|l| l.contains(&format!("hvc{}-input=", c.devid)));
        problems.push(format!(
            "the guest did not read our console's input line: expected `{want}`, it said {said:?}"
        ));
    }
    let (want_in, min_out) = (c.input.len() as u64 + 1, c.expect.len() as u64 + 1);
    match summary {
        Some(n)
            if count_in(n, "bytes_in") == Some(want_in)
                && count_in(n, "bytes_out").is_some_and(|b| b >= min_out)
                && count_in(n, "sink_errors") == Some(0) => {}
        other => problems.push(format!(
            "our console backend's summary of console {} should show bytes_in={want_in} and \
             bytes_out>={min_out} without sink errors: {other:?}",
            c.devid
        )),
    }
}

/// The backend type of the stub vbd (no dom0 driver watches `backend/pvkit-stub`).
const STUB_BACKEND: &str = "pvkit-stub";

/// Bad input: the block test must fail with a message containing each of `why` and the guest shut
/// down with `crash`, well before the scenario's timeout.
fn check_refused(r: &ScenarioReport, why: &[&str], problems: &mut Vec<String>) {
    expect_end(r, "crash", problems);
    if r.transcript.boot().is_none() {
        problems.push("no `PVKIT BOOT` line on the domU console".to_owned());
    }
    match r.transcript.verdict(BLK_TEST) {
        Some(Record::TestFail { reason, .. }) if why.iter().all(|w| reason.contains(w)) => {}
        Some(Record::TestFail { reason, .. }) => {
            problems.push(format!(
                "{BLK_TEST} failed with {reason:?}, expected it to mention {why:?}"
            ));
        }
        Some(_) => problems.push(format!("{BLK_TEST} passed although it must fail ({why:?})")),
        None => problems.push(format!("{BLK_TEST} reported no verdict")),
    }
    if r.transcript.exit_record() != Some(1) {
        problems.push(format!(
            "expected `PVKIT EXIT 1`, got {:?}",
            r.transcript.exit_record()
        ));
    }
}

/// The console input test and the line it prints once it reads input.
const CONSOLE_TEST: &str = "console-input@xen-console";
const CONSOLE_READY: &str = "PVKIT INFO console-input ready";

/// The net test under Xen, its echo requests and their payload size (a full 1500-byte frame).
const NET_TEST: &str = "net-ping@xen-net";
const NET_PINGS: u64 = 200;
const NET_PING_SIZE: u64 = 1472;
/// dom0 shell: `icmp_in_echos` prints the kernel's count of ICMP echo requests received
/// (`Icmp: InEchos` in /proc/net/snmp).
const ICMP_IN_ECHOS: &str = "icmp_in_echos() {\n\
    \x20   awk '/^Icmp:/ { if (!c) { for (i = 1; i <= NF; i++) if ($i == \"InEchos\") c = i } else print $c }' \
    /proc/net/snmp\n\
    }\n";
/// The MAC of our guest's vif (Xen's OUI).
const GUEST_MAC: &str = "00:16:3e:00:00:10";
/// dom0's echo peer binary.
pub const ECHO_PATH: &str = "/pvkit/pvkit-echo";

/// dom0 shell (`running` hook): once the domU's vif exists in dom0, run the echo peer on it in the
/// background.
fn echo_start() -> String {
    format!(
        "rm -f /tmp/echo.stop /tmp/echo.out\n\
         (for _ in $(seq 300); do [ -e /sys/class/net/vif$domid.0 ] && break; sleep 0.1; done\n\
         \x20exec {ECHO_PATH} vif$domid.0 /tmp/echo.stop >/tmp/echo.out 2>&1) &\n\
         echo_pid=$!\n"
    )
}

/// dom0 shell (`post` hook): stop the echo peer and report its counts.
fn echo_stop() -> String {
    "touch /tmp/echo.stop\n\
     wait $echo_pid\n\
     check $(cat /tmp/echo.out)\n"
        .to_owned()
}

/// Timer scenario parameters: not the guest's defaults, and a low rate, because a vCPU of a TCG
/// machine on a busy host stands still for up to ~170 ms at times (seen with load 7 on 2 cores:
/// three disturbed windows in a row at 50 Hz), and only a stall longer than one period loses ticks.
const TIMER_HZ: u64 = 10;
const TIMER_MS: u64 = 1000;

/// The value dom0 writes to the key the guest watches.
fn xenstore_value(nonce: &str) -> String {
    format!("from-dom0-{nonce}")
}

/// A deliberate fault: `crash` shutdown, `PVKIT EXIT 1`, and the right report.
fn check_fault(s: XenScenario, r: &ScenarioReport, problems: &mut Vec<String>) {
    let t = &r.transcript;
    expect_end(r, "crash", problems);
    if t.boot().is_none() {
        problems.push("no `PVKIT BOOT` line on the domU console".to_owned());
    }
    let test = s.name();
    if t.passed(test) {
        problems.push(format!("test {test} claims PASS although it must fail"));
    }
    if t.exit_record() != Some(1) {
        problems.push(format!("expected `PVKIT EXIT 1`, got {:?}", t.exit_record()));
    }
    match s {
        XenScenario::FaultPagefault => {
            let pf = t.exceptions().find(|e| e.get_u64("vector") == Some(14));
            match pf.map(|e| e.get_u64("cr2")) {
                Some(Some(cr2)) if cr2 == PAGEFAULT_ADDRESS => {}
                Some(cr2) => problems.push(format!(
                    "page fault reported at cr2={cr2:x?}, expected {PAGEFAULT_ADDRESS:#x}"
                )),
                None => problems.push("no `PVKIT EXCEPTION vector=14` line".to_owned()),
            }
        }
        _ => {
            if !t.panics().any(|(_, m)| m.contains(PANIC_MESSAGE)) {
                problems.push(format!("no `PVKIT PANIC` with message {PANIC_MESSAGE:?}"));
            }
        }
    }
}

/// dom0's SHA-256 of the image (after the domU and the loop device are gone) must equal the host's.
fn check_image_digest(r: &ScenarioReport, slot: &DiskSlot, problems: &mut Vec<String>) {
    let Some(dom0) = r.checks.get("image_sha256") else {
        problems.push("dom0 reported no image_sha256".to_owned());
        return;
    };
    match sha256_file(&slot.image) {
        Ok(host) if host == dom0 => {}
        Ok(host) => problems.push(format!(
            "dom0 read image_sha256={dom0} from {}, the host file {} has {host}",
            slot.dom0_dev,
            slot.image.display()
        )),
        Err(e) => problems.push(format!("{e:#}")),
    }
}

/// The SHA-256 of a file, from the host's `sha256sum` (coreutils).
pub fn sha256_file(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .context("running sha256sum")?;
    anyhow::ensure!(out.status.success(), "sha256sum {} failed", path.display());
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.split_whitespace().next().unwrap_or_default().to_owned())
}

/// The guest's tests for `cargo xtask run --hypervisor xen` when none are given: the Xen PV
/// self-tests, XenStore and the block workload (the guest's own default list has `pci`, which a PV
/// domain lacks).
pub fn run_default_cmdline() -> String {
    format!(
        "tests=hello,cpuid,heap,timer,xenstore,{BLK_TEST},{NET_TEST} cpuid.expect=xen \
         timer.hz={TIMER_HZ} timer.ms={TIMER_MS} {NET_TEST}.ip={DOMU_IP} {NET_TEST}.peer={DOM0_IP}"
    )
}

/// The domU of `cargo xtask run --hypervisor xen`: our guest with `cmdline`, a host disk as xvda
/// and a vif, so the device workloads have their devices: served by Linux's kernel backends (vif
/// with dom0's echo peer), or with `ours` by `pvkit-xen-backend` (the switch's echo peer).
pub fn run_spec(cmdline: String, timeout: Duration, ours: bool) -> DomainSpec {
    if ours {
        return DomainSpec {
            vifs: Vec::new(),
            running: None,
            post: None,
            ours: Some(OurDevices {
                disk: true,
                vifs: vec![format!("0:{GUEST_MAC}")],
                ..Default::default()
            }),
            ..run_spec(cmdline, timeout, false)
        };
    }
    DomainSpec {
        name: "run".to_owned(),
        kernel: Kernel::Pvkit,
        cmdline,
        memory_mib: GUEST_MEMORY_MIB,
        disks: Vec::new(),
        host_disk: Some(HostDisk {
            sectors: BLK_SECTORS,
            fill_seed: 0x5eed_4e11,
        }),
        vifs: vec![format!("mac={GUEST_MAC}, script={VIF_SCRIPT_PATH}")],
        timeout,
        pre: None,
        running: Some(echo_start()),
        paused: false,
        post: Some(echo_stop()),
        ours: None,
    }
}

/// Expects the domU to have shut down with `reason`.
fn expect_end(r: &ScenarioReport, reason: &str, problems: &mut Vec<String>) {
    match &r.end {
        Some(End::Shutdown(why)) if why == reason => {}
        Some(End::Shutdown(why)) => {
            problems.push(format!("domU shut down with reason {why}, expected {reason}"))
        }
        Some(End::Timeout) => problems.push("domU still running at the timeout; destroyed".to_owned()),
        Some(End::CreateFailed) => problems.push(format!("xl create failed: {}", xl_errors(r))),
        Some(End::Unknown) => problems.push(format!("xl ended without a shutdown reason: {}", xl_errors(r))),
        None => problems.push("the scenario never ended (the harness boot was cut short)".to_owned()),
    }
}

/// The first few error lines xl printed (all of them are in the log).
fn xl_errors(r: &ScenarioReport) -> String {
    let errors: Vec<&str> = r
        .notes
        .iter()
        .filter(|n| n.contains("error"))
        .map(|n| n.strip_prefix("xl: ").unwrap_or(n))
        .take(3)
        .collect();
    if errors.is_empty() {
        "xl printed no error (see the log)".to_owned()
    } else {
        errors.join(" / ")
    }
}

/// The checks of a run of our guest that must pass every test in `tests`: PASS verdicts, summary,
/// `PVKIT EXIT 0` and a poweroff shutdown (the guest's pass).
pub fn check_guest(r: &ScenarioReport, tests: &[&str], problems: &mut Vec<String>) {
    let t = &r.transcript;
    expect_end(r, "poweroff", problems);
    if r.end == Some(End::CreateFailed) {
        return; // There is no console to check.
    }
    if t.boot().is_none() {
        problems.push("no `PVKIT BOOT` line on the domU console".to_owned());
    }
    for e in t.errors() {
        problems.push(format!("guest reported: {e}"));
    }
    for test in tests {
        match t.verdict(test) {
            None => problems.push(format!("test {test} reported no verdict")),
            Some(Record::TestFail { reason, .. }) => problems.push(format!("test {test} FAIL: {reason}")),
            Some(_) => {}
        }
    }
    for (name, reason) in t.failures().filter(|(n, _)| !tests.contains(n)) {
        problems.push(format!("test {name} FAIL: {reason}"));
    }
    for (loc, msg) in t.panics() {
        problems.push(format!("guest panicked at {loc}: {msg}"));
    }
    for e in t.exceptions() {
        problems.push(format!("guest exception: {e}"));
    }
    match t.summary() {
        Some((_, 0)) => {}
        Some((p, f)) => problems.push(format!("summary says passed={p} failed={f}")),
        None => problems.push("no `PVKIT SUMMARY` line".to_owned()),
    }
    match t.exit_record() {
        Some(0) => {}
        Some(c) => problems.push(format!("guest printed `PVKIT EXIT {c}`, expected 0")),
        None => problems.push("no `PVKIT EXIT` line".to_owned()),
    }
}

/// The files of a harness run that go into dom0's initramfs besides the base system.
pub struct Bundle {
    pub specs: Vec<DomainSpec>,
    /// Per spec: where its host disk is (the images live in `disk_dir`).
    pub slots: Vec<Option<DiskSlot>>,
    /// Our guest ELF, if a scenario boots it.
    pub guest: Option<PathBuf>,
    /// Whether a scenario boots Linux (ship the kernel and the domU initramfs).
    pub linux: bool,
}

impl Bundle {
    /// Assigns each host disk, in order, the next virtio disk of dom0 and the next loop device.
    pub fn new(specs: Vec<DomainSpec>, guest: Option<PathBuf>, disk_dir: &std::path::Path) -> Self {
        let linux = specs.iter().any(|s| s.kernel == Kernel::Linux);
        let mut n = 0u8;
        let slots = specs
            .iter()
            .map(|s| {
                s.host_disk?;
                let slot = DiskSlot {
                    image: disk_dir.join(format!("{}.img", s.name)),
                    dom0_dev: format!("/dev/vd{}", char::from(b'a' + n)),
                    loop_dev: format!("/dev/loop{n}"),
                };
                n += 1;
                Some(slot)
            })
            .collect();
        Bundle {
            specs,
            slots,
            guest,
            linux,
        }
    }

    /// The slot of scenario `name`'s host disk.
    pub fn slot(&self, name: &str) -> Option<&DiskSlot> {
        self.specs
            .iter()
            .position(|s| s.name == name)
            .and_then(|i| self.slots[i].as_ref())
    }
}

/// dom0 shell run before `xl create` for a host disk: the loop device over the virtio disk.
pub fn disk_pre(slot: &DiskSlot) -> String {
    format!(
        "losetup {loop_dev} {dev} || note \"losetup {loop_dev} {dev} failed\"\n",
        loop_dev = slot.loop_dev,
        dev = slot.dom0_dev
    )
}

/// dom0 shell run after the domain is gone: detach, flush, report the image's digest.
pub fn disk_post(slot: &DiskSlot) -> String {
    format!(
        "losetup -d {loop_dev} || note \"losetup -d {loop_dev} failed\"\n\
         sync\n\
         check image_sha256=$(sha256sum {dev} | cut -d' ' -f1)\n",
        loop_dev = slot.loop_dev,
        dev = slot.dom0_dev
    )
}

/// The line dom0 types into a domU's console.
fn console_input(nonce: &str) -> String {
    format!("pvkit-input-{nonce}")
}

/// The line our console backend sends to the Linux domU's hvc1.
fn hvc1_input(nonce: &str) -> String {
    format!("pvkit-hvc1-input-{nonce}")
}

/// dom0 shell (a `running` hook, in the background) that waits until the domU's console log shows
/// `ready`, then writes `text` and a newline to the domU's console through the pty xenconsoled
/// made for it (its path is in XenStore); reports `console_input=written`.
pub fn console_input_hook(name: &str, ready: &str, text: &str) -> String {
    format!(
        "(log=/var/log/xen/console/guest-{name}.log\n\
         for _ in $(seq 600); do\n\
         \x20   if grep -q '{ready}' \"$log\" 2>/dev/null; then\n\
         \x20       tty=$(xenstore-read /local/domain/$domid/console/tty) &&\n\
         \x20           printf '%s\\n' '{text}' >\"$tty\" &&\n\
         \x20           check console_input=written\n\
         \x20       break\n\
         \x20   fi\n\
         \x20   sleep 0.1\n\
         done) &\n"
    )
}

/// Sectors of the self-check's disk.
const SELFCHECK_DISK_SECTORS: u64 = 2048;
/// ICMP echo requests the self-check sends to dom0.
const SELFCHECK_PINGS: u32 = 3;
/// The MAC of the Linux domU's vif (Xen's OUI 00:16:3e).
const LINUX_DOMU_MAC: &str = "00:16:3e:00:00:02";
/// dom0's vif hotplug script (see [`VIF_SCRIPT`]).
pub const VIF_SCRIPT_PATH: &str = "/pvkit/vif-pvkit";
/// dom0's address on every vif; the domU side is [`DOMU_IP`] (one /24, scenarios run in turn).
pub const DOM0_IP: &str = "10.99.0.1";
pub const DOMU_IP: &str = "10.99.0.2";

/// dom0's vif hotplug script: instead of a bridge, dom0's end of the vif gets [`DOM0_IP`]/24, so
/// dom0's own kernel answers the domU's ARP and ICMP echo requests. libxl runs it with `online` /
/// `offline` and `$vif`, `$XENBUS_PATH` in the environment, and waits for `hotplug-status`.
pub fn vif_script() -> String {
    format!(
        "#!/bin/sh
# pvkit dom0 vif hotplug script (xtask/src/xen/scenario.rs)
case $1 in
online | add)
    ip link set dev \"$vif\" up &&
        ip addr add {DOM0_IP}/24 dev \"$vif\" &&
        xenstore-write \"$XENBUS_PATH/hotplug-status\" connected ||
        xenstore-write \"$XENBUS_PATH/hotplug-status\" error
    ;;
offline | remove)
    ip link set dev \"$vif\" down 2>/dev/null
    ;;
esac
exit 0
"
    )
}

/// Kernel modules the Linux domU loads (from its initramfs, by path).
pub const LINUX_DOMU_MODULES: &[&str] = &["xen-blkfront", "xen-netfront"];

/// The init of the harness's Linux domU: write the nonce to the start of its disk, ping dom0 over
/// its vif, a line each way through hvc1 if asked (`pvkit.hvc1=1`), echo the nonce; everything it
/// needs comes from the command line (`pvkit.*=`).
pub const LINUX_DOMU_INIT: &str = r#"#!/bin/sh
mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for w in $(cat /proc/cmdline); do
    case $w in pvkit.*=*) k=${w%%=*}; eval "${k#pvkit.}=\${w#*=}" ;; esac
done
for ko in /modules/*.ko; do insmod "$ko"; done
for _ in $(seq 300); do [ -b /dev/xvda ] && [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
[ -b /dev/xvda ] || echo "PVKIT-SELFCHECK error=no-xvda"
[ -e /sys/class/net/eth0 ] || echo "PVKIT-SELFCHECK error=no-eth0"
printf 'PVKIT-SELFCHECK-DISK nonce=%s
' "$nonce" | dd of=/dev/xvda bs=512 conv=sync,fsync 2>/dev/null &&
    echo "PVKIT-SELFCHECK disk=written"
sync
mkdir -p /tmp
dd if=/dev/urandom of=/tmp/pattern bs=65536 count=4 2>/dev/null
dd if=/tmp/pattern of=/dev/xvda bs=65536 seek=8 conv=fsync 2>/dev/null &&
    echo "PVKIT-SELFCHECK pattern=written"
echo 3 >/proc/sys/vm/drop_caches
want=$(sha256sum </tmp/pattern | cut -d' ' -f1)
got=$(dd if=/dev/xvda bs=65536 skip=8 count=4 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$got" = "$want" ] && echo "PVKIT-SELFCHECK pattern=read-back"
echo "PVKIT-SELFCHECK disk_sha256=$(sha256sum </dev/xvda | cut -d' ' -f1)"
ip link set dev eth0 up || echo "PVKIT-SELFCHECK error=ip-link-status-$?"
ip addr add "$ip/24" dev eth0 || echo "PVKIT-SELFCHECK error=ip-addr-status-$?"
# Busybox's ping has been seen to die of SIGSEGV right after a reply arrived (with Linux's netback
# and with ours); such a crash of the client is retried, and the kernel's line about it printed.
for attempt in 1 2 3; do
    ping -c "$pings" -W 5 "$peer" >/tmp/ping.out 2>&1
    status=$?
    echo "PVKIT-SELFCHECK ping-status=$status"
    sed 's/^/PVKIT-SELFCHECK ping-output: /' /tmp/ping.out
    [ "$status" -lt 128 ] && break
    echo "PVKIT-SELFCHECK ping-crashed attempt=$attempt"
    dmesg | grep -i segfault | tail -n 1 | sed 's/^/PVKIT-SELFCHECK dmesg: /'
done
got=$(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /tmp/ping.out)
echo "PVKIT-SELFCHECK ping=${got:-0}/$pings"
# With pvkit.hvc1=1 our daemon serves device/console/1, which hvc_xen makes hvc1 (every /dev/hvcN
# node exists anyway, so wait for the xenbus device's driver). One open for the write and the read:
# input the tty took in while open is dropped at its last close.
if [ "${hvc1:-0}" = 1 ]; then
    for _ in $(seq 50); do [ -e /sys/bus/xen/devices/console-1/driver ] && break; sleep 0.1; done
    if [ -e /sys/bus/xen/devices/console-1/driver ]; then
        (
            exec 3<>/dev/hvc1
            stty -echo <&3 2>/dev/null
            echo "PVKIT-SELFCHECK hvc1 nonce=$nonce" >&3
            read -r -t 10 line <&3
            echo "PVKIT-SELFCHECK hvc1-input=$(echo "$line" | tr -d '
')"
        )
    else
        echo "PVKIT-SELFCHECK error=no-hvc1"
    fi
fi
echo "PVKIT-SELFCHECK console-ready"
read -r -t 30 line
echo "PVKIT-SELFCHECK input=$(echo "$line" | tr -d '\r')"
echo "PVKIT-SELFCHECK nonce=$nonce"
poweroff -f
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::report::HarnessReport;

    #[test]
    fn xl_config_quotes_and_lists() {
        let mut s = XenScenario::Hello.spec("n");
        s.cmdline = "tests=hello x=\"q\"".into();
        s.disks = vec!["format=raw, vdev=xvda, access=rw, target=/dev/loop0".into()];
        let slot = DiskSlot {
            image: PathBuf::from("/i.img"),
            dom0_dev: "/dev/vda".into(),
            loop_dev: "/dev/loop3".into(),
        };
        let c = s.xl_config(Some(&slot));
        assert!(c.contains("name = \"hello\"\n"), "{c}");
        assert!(c.contains("type = \"pv\"\n"));
        assert!(c.contains(&format!("kernel = \"{GUEST_PATH}\"\n")));
        assert!(c.contains("extra = \"tests=hello x=\\\"q\\\"\"\n"));
        assert!(c.contains(
            "disk = [ \"format=raw, vdev=xvda, access=rw, target=/dev/loop0\", \
             \"format=raw, vdev=xvda, access=rw, target=/dev/loop3\" ]\n"
        ));
        assert!(c.contains("vif = [  ]\n"));
        assert!(!c.contains("ramdisk"));
        let l = XenScenario::LinuxSelfcheck.spec("abc").xl_config(None);
        assert!(l.contains(&format!("ramdisk = \"{LINUX_INITRD_PATH}\"")));
        assert!(l.contains("pvkit.nonce=abc"));
    }

    fn report(log: &str) -> HarnessReport {
        HarnessReport::parse(log)
    }

    #[test]
    fn selfcheck_needs_nonce_ping_disk_digest_and_poweroff() {
        let dir = std::env::temp_dir().join(format!("pvkit-xen-selfcheck-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("disk.img");
        let mut bytes = b"PVKIT-SELFCHECK-DISK nonce=42\n".to_vec();
        bytes.resize(4096, 0xa5);
        std::fs::write(&image, &bytes).unwrap();
        let digest = sha256_file(&image).unwrap();
        assert_eq!(digest.len(), 64);
        let slot = DiskSlot {
            image: image.clone(),
            dom0_dev: "/dev/vda".into(),
            loop_dev: "/dev/loop0".into(),
        };
        let host_digest = digest.clone();
        let log = |reason: &str, digest: &str, ping: &str| {
            format!(
                "PVKIT-XEN SCENARIO linux-selfcheck BEGIN\n\
                 PVKIT-XEN CONSOLE linux-selfcheck | PVKIT-SELFCHECK pattern=written\n\
                 PVKIT-XEN CONSOLE linux-selfcheck | PVKIT-SELFCHECK pattern=read-back\n\
                 PVKIT-XEN CONSOLE linux-selfcheck | PVKIT-SELFCHECK disk_sha256={host_digest}\n\
                 PVKIT-XEN CONSOLE linux-selfcheck | PVKIT-SELFCHECK ping={ping}\n\
                 PVKIT-XEN CONSOLE linux-selfcheck | PVKIT-SELFCHECK nonce=42\n\
                 PVKIT-XEN CONSOLE linux-selfcheck | PVKIT-SELFCHECK input=pvkit-input-42\n\
                 PVKIT-XEN SCENARIO linux-selfcheck CHECK image_sha256={digest}\n\
                 PVKIT-XEN SCENARIO linux-selfcheck END reason={reason} run_ms=9000\n"
            )
        };
        let check = |text: String, nonce: &str| {
            let r = report(&text);
            XenScenario::LinuxSelfcheck.check(r.scenario("linux-selfcheck").unwrap(), nonce, Some(&slot))
        };
        assert_eq!(check(log("poweroff", &digest, "3/3"), "42"), Vec::<String>::new());
        assert!(
            !check(log("poweroff", &digest, "3/3"), "43").is_empty(),
            "stale nonce"
        );
        assert!(!check(log("crash", &digest, "3/3"), "42").is_empty());
        assert!(!check(log("timeout", &digest, "3/3"), "42").is_empty());
        assert!(
            !check(log("poweroff", &digest, "0/3"), "42").is_empty(),
            "no ping answers"
        );
        assert!(
            !check(log("poweroff", &"0".repeat(64), "3/3"), "42").is_empty(),
            "dom0 digest differs"
        );
        let without = |text: String, line: &str| text.replace(line, "");
        assert!(
            !check(
                without(log("poweroff", &digest, "3/3"), "pattern=read-back"),
                "42"
            )
            .is_empty(),
            "pattern not read back"
        );
        std::fs::write(&image, vec![0u8; 4096]).unwrap();
        let zero_digest = sha256_file(&image).unwrap();
        assert!(
            !check(log("poweroff", &zero_digest, "3/3"), "42").is_empty(),
            "nonce not on disk"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn guest_check_needs_pass_summary_exit_and_poweroff() {
        let lines = [
            "PVKIT BOOT platform=xen-pv hypervisor=xen mem_mib=64 cmdline=\"tests=hello\"",
            "PVKIT TEST hello START",
            "PVKIT TEST hello PASS",
            "PVKIT SUMMARY passed=1 failed=0",
            "PVKIT EXIT 0",
        ];
        let log = |lines: &[&str], reason: &str| {
            let mut s = String::from("PVKIT-XEN SCENARIO hello BEGIN\n");
            for l in lines {
                s.push_str(&format!("PVKIT-XEN CONSOLE hello | {l}\n"));
            }
            s.push_str(&format!(
                "PVKIT-XEN SCENARIO hello END reason={reason} run_ms=1\n"
            ));
            s
        };
        let check = |text: String| {
            let r = report(&text);
            XenScenario::Hello.check(r.scenario("hello").unwrap(), "", None)
        };
        assert_eq!(check(log(&lines, "poweroff")), Vec::<String>::new());
        assert!(!check(log(&lines, "crash")).is_empty());
        assert!(!check(log(&lines[..4], "poweroff")).is_empty(), "no EXIT");
        assert!(!check(log(&lines[1..], "poweroff")).is_empty(), "no BOOT");
        let failed = [
            lines[0],
            lines[1],
            "PVKIT TEST hello FAIL x",
            "PVKIT SUMMARY passed=0 failed=1",
        ];
        assert!(!check(log(&failed, "poweroff")).is_empty());
    }

    fn scenario_log(name: &str, lines: &[&str], tail: &str) -> String {
        let mut s = format!("PVKIT-XEN SCENARIO {name} CREATED domid=4 create_ms=10\n");
        for l in lines {
            s.push_str(&format!("PVKIT-XEN CONSOLE {name} | {l}\n"));
        }
        s.push_str(tail);
        s
    }

    #[test]
    fn pagefault_needs_crash_exit_1_and_the_address() {
        let exc = format!(
            "PVKIT EXCEPTION vector=14 name=\"Page fault\" error=0x0 rip=0x1 cr2={PAGEFAULT_ADDRESS:#x}"
        );
        let lines = [
            "PVKIT BOOT platform=xen-pv hypervisor=xen",
            "PVKIT TEST fault-pagefault START",
            exc.as_str(),
            "PVKIT TEST fault-pagefault FAIL exception vector=14",
            "PVKIT EXIT 1",
        ];
        let check = |lines: &[&str], reason: &str| {
            let text = scenario_log(
                "fault-pagefault",
                lines,
                &format!("PVKIT-XEN SCENARIO fault-pagefault END reason={reason} run_ms=1\n"),
            );
            let r = report(&text);
            XenScenario::FaultPagefault.check(r.scenario("fault-pagefault").unwrap(), "", None)
        };
        assert_eq!(check(&lines, "crash"), Vec::<String>::new());
        assert!(!check(&lines, "poweroff").is_empty());
        let wrong = exc.replace(&format!("{PAGEFAULT_ADDRESS:#x}"), "0x1000");
        assert!(!check(&[lines[0], lines[1], &wrong, lines[3], lines[4]], "crash").is_empty());
        assert!(!check(&lines[..4], "crash").is_empty(), "no EXIT 1");
    }

    #[test]
    fn xenstore_needs_dom0s_value_domid_and_name() {
        let pass = |domid: u32, name: &str, value: &str| {
            format!("PVKIT TEST xenstore PASS domid={domid} name={name} value={value}")
        };
        let check = |pass_line: String, written: bool| {
            let lines = [
                "PVKIT BOOT platform=xen-pv hypervisor=xen",
                "PVKIT TEST xenstore START",
                pass_line.as_str(),
                "PVKIT SUMMARY passed=1 failed=0",
                "PVKIT EXIT 0",
            ];
            let mut tail = String::new();
            if written {
                tail.push_str("PVKIT-XEN SCENARIO xenstore CHECK ping_written=1\n");
            }
            tail.push_str("PVKIT-XEN SCENARIO xenstore END reason=poweroff run_ms=1\n");
            let r = report(&scenario_log("xenstore", &lines, &tail));
            XenScenario::Xenstore.check(r.scenario("xenstore").unwrap(), "n1", None)
        };
        assert_eq!(
            check(pass(4, "xenstore", "from-dom0-n1"), true),
            Vec::<String>::new()
        );
        assert!(
            !check(pass(4, "xenstore", "from-dom0-n0"), true).is_empty(),
            "stale value"
        );
        assert!(
            !check(pass(5, "xenstore", "from-dom0-n1"), true).is_empty(),
            "wrong domid"
        );
        assert!(
            !check(pass(4, "other", "from-dom0-n1"), true).is_empty(),
            "wrong name"
        );
        assert!(
            !check(pass(4, "xenstore", "from-dom0-n1"), false).is_empty(),
            "dom0 never wrote"
        );
    }

    #[test]
    fn bad_input_needs_the_named_failure_and_a_crash() {
        let check = |s: XenScenario, reason: &str, end: &str, stub: bool| {
            let fail = format!("PVKIT TEST {BLK_TEST} FAIL {reason}");
            let lines = ["PVKIT BOOT platform=xen-pv", fail.as_str(), "PVKIT EXIT 1"];
            let mut tail = String::new();
            if stub {
                tail.push_str(&format!(
                    "PVKIT-XEN SCENARIO {} CHECK stub_vbd=written\n",
                    s.name()
                ));
            }
            tail.push_str(&format!(
                "PVKIT-XEN SCENARIO {} END reason={end} run_ms=1\n",
                s.name()
            ));
            let r = report(&scenario_log(s.name(), &lines, &tail));
            s.check(r.scenario(s.name()).unwrap(), "", None)
        };
        let stuck = "backend /local/domain/0/backend/pvkit-stub/1/51712 still in state 2 after 10 s";
        assert_eq!(
            check(XenScenario::BlkNoBackend, stuck, "crash", true),
            Vec::<String>::new()
        );
        assert!(
            !check(XenScenario::BlkNoBackend, stuck, "crash", false).is_empty(),
            "no stub"
        );
        assert!(
            !check(XenScenario::BlkNoBackend, stuck, "timeout", true).is_empty(),
            "hung"
        );
        assert!(!check(XenScenario::BlkNoBackend, "device xen-blk absent", "crash", true).is_empty());
        assert_eq!(
            check(XenScenario::BlkMissing, "device xen-blk absent", "crash", false),
            Vec::<String>::new()
        );
        assert!(
            !check(
                XenScenario::BlkMissing,
                "device xen-blk absent",
                "poweroff",
                false
            )
            .is_empty()
        );
    }

    #[test]
    fn console_needs_the_typed_line() {
        let check = |line: &str, typed: bool| {
            let pass = format!("PVKIT TEST {CONSOLE_TEST} PASS bytes=25 line=\"{line}\"");
            let lines = [
                "PVKIT BOOT platform=xen-pv",
                CONSOLE_READY,
                pass.as_str(),
                "PVKIT SUMMARY passed=1 failed=0",
                "PVKIT EXIT 0",
            ];
            let mut tail = String::new();
            if typed {
                tail.push_str("PVKIT-XEN SCENARIO console CHECK console_input=written\n");
            }
            tail.push_str("PVKIT-XEN SCENARIO console END reason=poweroff run_ms=1\n");
            let r = report(&scenario_log("console", &lines, &tail));
            XenScenario::Console.check(r.scenario("console").unwrap(), "7", None)
        };
        assert_eq!(check("pvkit-input-7", true), Vec::<String>::new());
        assert!(!check("pvkit-input-6", true).is_empty(), "another line");
        assert!(!check("pvkit-input-7", false).is_empty(), "dom0 typed nothing");
    }

    #[test]
    fn names_are_unique_domain_and_file_names() {
        let all = XenScenario::value_variants();
        let mut names: Vec<&str> = all.iter().map(|s| s.name()).collect();
        for n in &names {
            assert!(
                !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "{n}"
            );
            assert_eq!(
                XenScenario::from_str(n, false).ok().map(|s| s.name()),
                Some(*n),
                "clap name = name()"
            );
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert!(XenScenario::in_test_suite().iter().all(|s| all.contains(s)));
    }

    #[test]
    fn our_backend_must_be_ready_exit_cleanly_and_show_work() {
        let ours = OurDevices {
            disk: true,
            vifs: vec!["0:00:16:3e:00:00:10".into()],
            ..Default::default()
        };
        let log = |exit: &str, vbd_failed: u32, tx: u32| {
            format!(
                "PVKIT-XEN SCENARIO s BEGIN\n\
                 PVKIT-XEN SCENARIO s CHECK backend=ready\n\
                 PVKIT-XEN SCENARIO s CHECK backend_exit={exit}\n\
                 PVKIT-XEN SCENARIO s NOTE backend: INFO x: disconnected: requests=9 reads=4 failed={vbd_failed} \
                 events=3 device=vbd 51712 of domain 4\n\
                 PVKIT-XEN SCENARIO s NOTE backend: INFO x: disconnected: tx_packets={tx} tx_bytes=1 tx_errors=0 \
                 rx_packets=2 device=vif 0 of domain 4\n\
                 PVKIT-XEN SCENARIO s END reason=poweroff run_ms=9\n"
            )
        };
        let problems = |text: String| {
            let r = report(&text);
            let mut p = Vec::new();
            check_backend(&ours, r.scenario("s").unwrap(), &mut p);
            p
        };
        assert_eq!(problems(log("0", 0, 5)), Vec::<String>::new());
        assert!(!problems(log("still-running", 0, 5)).is_empty());
        assert!(!problems(log("0", 1, 5)).is_empty(), "a failed request");
        assert!(!problems(log("0", 0, 0)).is_empty(), "no traffic");
        assert_eq!(count_in("x requests=12 failed=0", "requests"), Some(12));
        assert_eq!(count_in("x requests=12", "failed"), None);
    }

    #[test]
    fn our_console_must_carry_a_line_each_way() {
        let spec = XenScenario::LinuxOurs.spec("n9");
        let ours = spec.ours.clone().unwrap();
        let c = ours.console.clone().unwrap();
        assert_eq!(
            (c.log.as_str(), c.input.as_str()),
            ("/tmp/hvc1-linux-ours.log", "pvkit-hvc1-input-n9")
        );
        let args = backend_args(&ours, None, false);
        assert!(
            args.contains(" --console 1:/tmp/hvc1-linux-ours.log --console-input 'pvkit-hvc1-input-n9'"),
            "{args}"
        );
        assert!(spec.cmdline.contains("pvkit.hvc1=1"));
        assert!(
            XenScenario::LinuxSelfcheck
                .spec("n9")
                .cmdline
                .contains("pvkit.hvc1=0")
        );
        assert!(backend_post(&spec).unwrap().contains("NOTE hvc1: "));
        let log = |logged: &str, read: &str, bytes_in: usize| {
            format!(
                "PVKIT-XEN SCENARIO s BEGIN\n\
                 PVKIT-XEN CONSOLE s | PVKIT-SELFCHECK hvc1-input={read}\r\n\
                 PVKIT-XEN SCENARIO s NOTE hvc1: {logged}\n\
                 PVKIT-XEN SCENARIO s NOTE backend: INFO x: disconnected: bytes_out=37 bytes_in={bytes_in} \
                 input_left=0 batches=1 sink_errors=0 lost_out=0 events=2 notifies=2 device=console 1 of domain 4\n\
                 PVKIT-XEN SCENARIO s END reason=poweroff run_ms=9\n"
            )
        };
        let problems = |text: String| {
            let r = report(&text);
            let s = r.scenario("s").unwrap();
            let mut p = Vec::new();
            check_console(
                &c,
                s,
                s.notes.iter().find(|n| n.contains("device=console 1 ")),
                &mut p,
            );
            p
        };
        let n = c.input.len() + 1;
        let good = log("PVKIT-SELFCHECK hvc1 nonce=n9", "pvkit-hvc1-input-n9", n);
        assert_eq!(problems(good.clone()), Vec::<String>::new());
        assert!(
            !problems(log("PVKIT-SELFCHECK hvc1 nonce=n8", "pvkit-hvc1-input-n9", n)).is_empty(),
            "stale output line"
        );
        assert!(
            !problems(log("PVKIT-SELFCHECK hvc1 nonce=n9", "", n)).is_empty(),
            "guest read nothing"
        );
        assert!(
            !problems(log("PVKIT-SELFCHECK hvc1 nonce=n9", "pvkit-hvc1-input-n9", n - 1)).is_empty(),
            "input cut short"
        );
        assert!(
            !problems(good.replace("bytes_out=37", "bytes_out=0")).is_empty(),
            "no output counted"
        );
        assert!(
            !problems(good.replace("device=console 1", "device=console 2")).is_empty(),
            "no summary of this console"
        );
    }

    #[test]
    fn bad_input_needs_both_refusals() {
        let log = |exit: &str, state: &str, refused: &str| {
            format!(
                "PVKIT-XEN SCENARIO b BEGIN\n\
                 PVKIT-XEN SCENARIO b CHECK missing_image_exit={exit}\n\
                 PVKIT-XEN SCENARIO b NOTE missing-image: pvkit-xen-backend: error: vbd 51712: cannot open image \
                 {MISSING_IMAGE}: No such file or directory\n\
                 PVKIT-XEN SCENARIO b CHECK hostile_state={state}\n\
                 PVKIT-XEN SCENARIO b NOTE backend: ERROR x: {refused}: cannot map the ring (ring-ref \
                 [{HOSTILE_RING_REF}]): Invalid argument device=vbd {HOSTILE_VBD} of domain 3\n\
                 PVKIT-XEN SCENARIO b END reason=poweroff run_ms=9\n"
            )
        };
        let problems = |text: String| {
            let r = report(&text);
            let mut p = Vec::new();
            check_bad_input(r.scenario("b").unwrap(), &mut p);
            p
        };
        assert_eq!(problems(log("1", "5", "refused")), Vec::<String>::new());
        assert!(!problems(log("0", "5", "refused")).is_empty());
        assert!(!problems(log("1", "4", "refused")).is_empty());
        assert!(!problems(log("1", "5", "connected")).is_empty());
    }

    #[test]
    fn hostile_ring_needs_the_refusal_seen_by_the_guest_and_logged_by_the_daemon() {
        let log = |state: &str, logged: &str| {
            format!(
                "PVKIT-XEN SCENARIO h BEGIN\n\
                 PVKIT-XEN CONSOLE h | PVKIT TEST {HOSTILE_TEST} PASS honest_bytes=8 published_req_prod=184 \
                 backend_state={state} backend_error=1\n\
                 PVKIT-XEN SCENARIO h NOTE backend: ERROR x: {logged}: ring halted: index past \
                 device=vbd {XVDA} of domain 3\n\
                 PVKIT-XEN SCENARIO h END reason=poweroff run_ms=9\n"
            )
        };
        let problems = |text: String| {
            let r = report(&text);
            let mut p = Vec::new();
            check_hostile_ring(r.scenario("h").unwrap(), &mut p);
            p
        };
        let halted = "frontend broke the protocol, device halted";
        assert_eq!(problems(log("5", halted)), Vec::<String>::new());
        assert!(!problems(log("4", halted)).is_empty(), "still connected");
        assert!(!problems(log("5", "connected")).is_empty(), "nothing logged");
    }
}
