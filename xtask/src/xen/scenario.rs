//! The Xen PV rows of the matrix: what each domU is (kernel, command line, devices), what dom0
//! does around it (calls of the hook library `xtask/xen/dom0-lib.sh`), and what its report must
//! show. Everything here is derived from a [`Row`]; nothing names a scenario on its own.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::report::{End, ScenarioReport};
use crate::checks::{self, GuestEnd, GuestRun};
use crate::console::Record;
use crate::matrix::{Backend, Profile, Row, Variant, Workload};
use crate::qemu_env::workload_params;
use crate::workspace::shell_quote;

/// Memory of one of our domUs (MiB).
pub const GUEST_MEMORY_MIB: u32 = 64;
/// Memory of the harness's Linux domU (MiB): Debian's kernel and a busybox initramfs.
const LINUX_MEMORY_MIB: u32 = 128;

/// Devices of a domain served by our `pvkit-xen-backend` (started in dom0 while the domain is
/// paused) instead of xl's disk/vif lines and Linux's kernel backends.
#[derive(Debug, Clone, Default)]
pub struct OurDevices {
    /// Serve the host disk as xvda (instead of a `phy:` line).
    pub disk: bool,
    /// `DEVID:MAC` of each vif.
    pub vifs: Vec<String>,
    /// Hook calls run once the daemon is ready, before the domain is unpaused.
    pub after_ready: Vec<String>,
    /// Start the daemon while the domain already runs (its devices appear as hotplugged ones)
    /// instead of keeping the domain paused until they are ready. Linux's xenbus copes with both;
    /// Debian's 6.1 PV kernel crashes early (#UD, Xen says) when created with `xl create -p` and
    /// unpaused in this nested setup, so its rows use this.
    pub hotplug: bool,
    /// Attach tap interface [`TAP_NAME`] to the switch instead of the echo peer; dom0 brings it up
    /// as [`DOM0_IP`].
    pub tap: bool,
    /// A secondary console (device/console/N, `hvcN` in Linux).
    pub console: Option<OurConsole>,
    /// Extra daemon arguments (the bad-input row's hostile vbd).
    pub extra_args: Vec<String>,
}

/// A secondary console served by our daemon.
#[derive(Debug, Clone)]
pub struct OurConsole {
    /// The xenbus device id (1 to 9).
    pub devid: u32,
    pub mode: ConsoleMode,
}

/// What our console backend does with a secondary console.
#[derive(Debug, Clone)]
pub enum ConsoleMode {
    /// The guest's output goes to a log file in dom0 (printed as `hvcN:` notes after the run), and
    /// the daemon sends it `input` (plus a newline) once it connects; the guest must write `expect`.
    Log {
        log: String,
        input: String,
        expect: String,
    },
    /// Every byte the guest writes is written back (the console echo workload).
    Echo,
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
/// dom0's hook library, and the domU init of the Linux rows.
pub const DOM0_LIB: &str = include_str!("../../xen/dom0-lib.sh");
pub const DOM0_LIB_PATH: &str = "/pvkit/lib.sh";
pub const LINUX_DOMU_INIT: &str = include_str!("../../xen/linux-domu-init.sh");
/// dom0's vif hotplug script (dom0's end of each vif gets [`DOM0_IP`]).
pub const VIF_SCRIPT: &str = include_str!("../../xen/vif-pvkit.sh");
pub const VIF_SCRIPT_PATH: &str = "/pvkit/vif-pvkit";

/// A disk image the host creates (pre-filled with `crate::disk`'s host pattern) and checks after
/// the run. It is attached to the Xen machine as a virtio disk; dom0 puts a loop device on it and
/// hands that to the domU as a `phy:` disk (so Linux's kernel blkback serves it) or to our daemon,
/// then reports the image's SHA-256 as dom0 sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostDisk {
    pub sectors: u64,
    pub fill_seed: u64,
}

/// Where a domain's [`HostDisk`] shows up (assigned when the bundle is built).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSlot {
    /// The image file on the host.
    pub image: PathBuf,
    /// dom0's device for the virtio disk (`/dev/vda`, ...).
    pub dom0_dev: String,
    /// The loop device on it (`/dev/loop0`, ...).
    pub loop_dev: String,
}

/// The kind of domain xl builds (`type=` in its config): the environment of the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainType {
    /// Classic paravirtualized (`xen-pv`).
    Pv,
    /// PVH: HVM container, PV interfaces, no device model (`xen-pvh`; no rows yet).
    #[allow(dead_code)]
    Pvh,
    /// HVM with QEMU in dom0 as the device model (`xen-hvm`; no rows yet).
    #[allow(dead_code)]
    Hvm,
}

impl DomainType {
    fn xl_name(self) -> &'static str {
        match self {
            DomainType::Pv => "pv",
            DomainType::Pvh => "pvh",
            DomainType::Hvm => "hvm",
        }
    }
}

/// One domU run inside the harness boot.
#[derive(Debug, Clone)]
pub struct DomainSpec {
    pub name: String,
    pub domain_type: DomainType,
    pub kernel: Kernel,
    pub cmdline: String,
    pub memory_mib: u32,
    /// A host-checked disk, given to the domU as `xvda`.
    pub host_disk: Option<HostDisk>,
    /// xl vif specifications.
    pub vifs: Vec<String>,
    /// dom0 destroys the domain after this long.
    pub timeout: Duration,
    /// Hook calls in dom0 before `xl create`.
    pub pre: Vec<String>,
    /// Hook calls once the domain exists (while it is still paused, if `paused`).
    pub running: Vec<String>,
    /// Create the domain paused (`xl create -p`) and unpause it after the `running` hooks.
    pub paused: bool,
    /// Hook calls after the domain is gone (they report with `check key=value`).
    pub post: Vec<String>,
    /// Devices served by our backend daemon (implies `paused` unless they are hotplugged).
    pub ours: Option<OurDevices>,
}

/// A hook call: the function and its arguments, quoted for the shell.
fn call(f: &str, args: &[&str]) -> String {
    let mut s = f.to_owned();
    for a in args {
        s.push(' ');
        s.push_str(&shell_quote(a));
    }
    s
}

impl DomainSpec {
    fn new(name: &str, cmdline: String) -> DomainSpec {
        DomainSpec {
            name: name.to_owned(),
            domain_type: DomainType::Pv,
            kernel: Kernel::Pvkit,
            cmdline,
            memory_mib: GUEST_MEMORY_MIB,
            host_disk: None,
            vifs: Vec::new(),
            timeout: Duration::from_secs(60),
            pre: Vec::new(),
            running: Vec::new(),
            paused: false,
            post: Vec::new(),
            ours: None,
        }
    }

    /// The xl configuration file; `slot` is where the host disk landed, if the spec has one.
    pub fn xl_config(&self, slot: Option<&DiskSlot>) -> String {
        let mut c = String::new();
        let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(c, "name = \"{}\"", q(&self.name));
        let _ = writeln!(c, "type = \"{}\"", self.domain_type.xl_name());
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
        let mut disks = Vec::new();
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

    /// The hook files of the domain: (`pre`, `running`, `post`), with our daemon's start and stop
    /// and the host disk's loop device added around the spec's own calls.
    pub fn hooks(&self, slot: Option<&DiskSlot>) -> [Vec<String>; 3] {
        let mut pre = Vec::new();
        let mut running = Vec::new();
        let mut post = Vec::new();
        if let Some(slot) = slot {
            pre.push(call("disk_attach", &[&slot.loop_dev, &slot.dom0_dev]));
        }
        pre.extend(self.pre.iter().cloned());
        if let Some(ours) = &self.ours {
            // Our daemon starts first (the domain is paused) and must be gone before the disk is
            // detached; what runs once it is ready runs only if it became ready.
            let mut start = call("backend_start", &[BACKEND_PATH]);
            for a in backend_args(ours, slot) {
                start.push(' ');
                start.push_str(&shell_quote(&a));
            }
            if ours.after_ready.is_empty() {
                running.push(start);
            } else {
                running.push(format!("if {start}; then"));
                running.extend(ours.after_ready.iter().map(|c| format!("    {c}")));
                running.push("fi".to_owned());
            }
            post.push("backend_stop".to_owned());
            if let Some(OurConsole {
                devid,
                mode: ConsoleMode::Log { log, .. },
            }) = &ours.console
            {
                post.push(call("console_log_notes", &[&devid.to_string(), log]));
            }
        }
        running.extend(self.running.iter().cloned());
        post.extend(self.post.iter().cloned());
        if let Some(slot) = slot {
            post.push(call("disk_detach", &[&slot.loop_dev, &slot.dom0_dev]));
        }
        [pre, running, post]
    }

    /// Whether dom0 creates the domain paused.
    pub fn created_paused(&self) -> bool {
        self.paused || self.ours.as_ref().is_some_and(|o| !o.hotplug)
    }
}

/// The daemon's arguments for `ours` (the host disk, if served, is `slot`'s loop device).
fn backend_args(ours: &OurDevices, slot: Option<&DiskSlot>) -> Vec<String> {
    let mut a = Vec::new();
    if let Some(slot) = slot.filter(|_| ours.disk) {
        // O_DIRECT on the loop device: requests reach it as they are, like Linux blkback's bios
        // (without it every 4 KiB read pulls the page cache's readahead through loop and virtio).
        a.push("--direct".to_owned());
        a.push("--vbd".to_owned());
        a.push(format!("{XVDA}:{}", slot.loop_dev));
    }
    for v in &ours.vifs {
        a.push("--vif".to_owned());
        a.push(v.clone());
    }
    if ours.tap {
        a.extend([
            "--tap".to_owned(),
            TAP_NAME.to_owned(),
            "--no-echo-peer".to_owned(),
        ]);
    }
    a.extend(ours.extra_args.iter().cloned());
    match &ours.console {
        Some(OurConsole {
            devid,
            mode: ConsoleMode::Log { log, input, .. },
        }) => {
            a.push("--console".to_owned());
            a.push(format!("{devid}:{log}"));
            a.push("--console-input".to_owned());
            a.push(input.clone());
        }
        Some(OurConsole {
            devid,
            mode: ConsoleMode::Echo,
        }) => {
            // The log is required by the option's syntax; in echo mode the daemon writes back
            // what it reads instead of logging it.
            a.push("--console".to_owned());
            a.push(format!("{devid}:/tmp/console{devid}.log:echo"));
        }
        None => {}
    }
    // The switch's echo peer at dom0's address for ARP and ICMP, and at the workloads' peer MAC,
    // so the echo workload's frames reach it.
    a.extend([
        "--echo-ip".to_owned(),
        DOM0_IP.to_owned(),
        "--echo-mac".to_owned(),
        crate::peer::net_echo::mac_text(&pvkit_frontends::workload::net::PEER_MAC),
    ]);
    a
}

/// The tap interface of the tap row in dom0.
pub const TAP_NAME: &str = "pvtap0";

/// The guest tests of the block workloads.
const BLK_TEST: &str = "blk-integrity@xen-blk";
const HOSTILE_TEST: &str = "blk-hostile@xen-blk";
/// Sectors of the integrity disk (16 MiB, as on QEMU) and of the throughput disk (64 MiB: random
/// I/O spreads over more than the guest's memory).
const BLK_SECTORS: u64 = 32 * 1024;
const THROUGHPUT_SECTORS: u64 = 128 * 1024;
const BLK_EXTENTS: u64 = 64;
const BLK_FILL: u64 = 0x5eed_4e11;

/// The block workload's seed: derived from the run's nonce, so an old image cannot pass.
fn blk_seed(nonce: &str) -> u64 {
    nonce.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    }) & 0xffff_ffff
}

/// The backend type of the stub vbd (no dom0 driver watches `backend/pvkit-stub`).
const STUB_BACKEND: &str = "pvkit-stub";
/// The image path the bad-input row gives our daemon (it does not exist).
const MISSING_IMAGE: &str = "/pvkit/no-such.img";
/// The vbd of the bad-input row whose "frontend" (dom0 playing a hostile guest) publishes a
/// garbage ring-ref, the garbage, and the image behind that vbd.
const HOSTILE_VBD: u32 = 51728;
const HOSTILE_RING_REF: u32 = 1_234_567;
const HOSTILE_IMAGE: &str = "/tmp/hostile.img";

/// The console input test and the line it prints once it reads input.
const CONSOLE_TEST: &str = "console-input@xen-console";
const CONSOLE_READY: &str = "PVKIT INFO console-input ready";

/// The ping test, its echo requests and their payload size (a full 1500-byte frame).
const NET_TEST: &str = "net-ping@xen-net";
const NET_PINGS: u64 = 200;
const NET_PING_SIZE: u64 = 1472;
/// The MAC of our guest's vif (Xen's OUI).
const GUEST_MAC: &str = "00:16:3e:00:00:10";
/// dom0's echo peer binary.
pub const ECHO_PATH: &str = "/pvkit/pvkit-echo";

/// Timer parameters: not the guest's defaults, and a low rate, because a vCPU of a TCG machine on
/// a busy host stands still for up to ~170 ms at times (seen with load 7 on 2 cores: three
/// disturbed windows in a row at 50 Hz), and only a stall longer than one period loses ticks.
const TIMER_HZ: u64 = 10;
const TIMER_MS: u64 = 1000;

/// Sectors of the Linux rows' disk, their pings, and the Linux domU's MAC.
const SELFCHECK_DISK_SECTORS: u64 = 2048;
const SELFCHECK_PINGS: u32 = 3;
const LINUX_DOMU_MAC: &str = "00:16:3e:00:00:02";
/// dom0's address on every vif (also in `xtask/xen/vif-pvkit.sh`); the domU side is [`DOMU_IP`]
/// (one /24, domains run in turn).
pub const DOM0_IP: &str = "10.99.0.1";
pub const DOMU_IP: &str = "10.99.0.2";

/// Kernel modules the Linux domU loads (from its initramfs, by path).
pub const LINUX_DOMU_MODULES: &[&str] = &["xen-blkfront", "xen-netfront"];

/// The domain name of a Xen row: its backend and workload (plus variant), e.g.
/// `pvkit-xen-blk-integrity`; platform rows are named after their workload alone (the xenstore
/// test compares its own name with the test's).
pub fn domain_name(row: &Row) -> String {
    let mut n = String::new();
    if row.backend != Backend::None || row.workload == Workload::LinuxPeer {
        n.push_str(row.backend.name());
        n.push('-');
    }
    n.push_str(row.workload.name());
    if let Some(v) = row.variant {
        n.push('-');
        n.push_str(v.name());
    }
    n
}

/// The line dom0 types into a domU's console, the line our console backend sends the Linux domU's
/// hvc1, the value dom0 writes to the key the xenstore test watches.
fn console_input(nonce: &str) -> String {
    format!("pvkit-input-{nonce}")
}
fn hvc1_input(nonce: &str) -> String {
    format!("pvkit-hvc1-input-{nonce}")
}
fn xenstore_value(nonce: &str) -> String {
    format!("from-dom0-{nonce}")
}

/// The ping workload's command line (against dom0's kernel or our switch's echo peer, both at
/// [`DOM0_IP`]).
fn net_ping_words() -> Vec<String> {
    let t = NET_TEST;
    vec![
        format!("{t}.ip={DOMU_IP}"),
        format!("{t}.peer={DOM0_IP}"),
        format!("{t}.count={NET_PINGS}"),
        format!("{t}.size={NET_PING_SIZE}"),
    ]
}

/// The guest tests a row's domU runs.
pub fn guest_tests(row: &Row) -> Vec<String> {
    match row.workload {
        Workload::DeviceAbsent | Workload::NoBackend => vec![BLK_TEST.to_owned()],
        Workload::BadInput => vec![NET_TEST.to_owned()],
        Workload::BlkHostile => vec![HOSTILE_TEST.to_owned(), NET_TEST.to_owned()],
        _ => vec![row.test()],
    }
}

fn ours(disk: bool, vif: bool) -> Option<OurDevices> {
    Some(OurDevices {
        disk,
        vifs: if vif {
            vec![format!("0:{GUEST_MAC}")]
        } else {
            Vec::new()
        },
        ..Default::default()
    })
}

/// The domU of a Xen row; `nonce` is a per-run value the checks look for.
pub fn spec(row: &Row, nonce: &str, profile: Profile) -> DomainSpec {
    let name = domain_name(row);
    let tests = guest_tests(row);
    let mut words = vec![format!("tests={}", tests.join(","))];
    let ours_backend = row.backend == Backend::PvkitXen;
    let mut s = DomainSpec::new(&name, String::new());
    match row.workload {
        Workload::LinuxPeer => {
            s.kernel = Kernel::Linux;
            s.memory_mib = LINUX_MEMORY_MIB;
            s.timeout = Duration::from_secs(180);
            s.host_disk = Some(HostDisk {
                sectors: SELFCHECK_DISK_SECTORS,
                fill_seed: 0x5e1f,
            });
            if ours_backend {
                s.ours = Some(OurDevices {
                    disk: true,
                    vifs: vec![format!("0:{LINUX_DOMU_MAC}")],
                    hotplug: true,
                    console: Some(OurConsole {
                        devid: 1,
                        mode: ConsoleMode::Log {
                            log: format!("/tmp/hvc1-{name}.log"),
                            input: hvc1_input(nonce),
                            expect: format!("PVKIT-SELFCHECK hvc1 nonce={nonce}"),
                        },
                    }),
                    ..Default::default()
                });
            } else {
                s.vifs = vec![format!("mac={LINUX_DOMU_MAC}, script={VIF_SCRIPT_PATH}")];
            }
            s.running.push(call(
                "console_input",
                &["PVKIT-SELFCHECK console-ready", &console_input(nonce)],
            ));
            s.cmdline = format!(
                "console=hvc0 quiet pvkit.nonce={nonce} pvkit.ip={DOMU_IP} pvkit.peer={DOM0_IP} \
                 pvkit.pings={SELFCHECK_PINGS} pvkit.hvc1={}",
                u8::from(ours_backend)
            );
            return s;
        }
        Workload::Hello => words.push(format!("hello.mem_mib={GUEST_MEMORY_MIB}")),
        Workload::Cpuid => words.push("cpuid.expect=xen".to_owned()),
        Workload::Timer => words.push(format!("timer.hz={TIMER_HZ} timer.ms={TIMER_MS}")),
        Workload::Xenstore => {
            // Once the guest has set its watch it writes data/pvkit-ready; dom0 then writes the
            // watched key (in the background: the hook must not stall dom0's wait loop).
            s.running.push(call("xenstore_ping", &[&xenstore_value(nonce)]));
            words.push("xenstore.peer=1".to_owned());
        }
        Workload::BlkIntegrity => {
            s.host_disk = Some(HostDisk {
                sectors: BLK_SECTORS,
                fill_seed: BLK_FILL,
            });
            s.ours = if ours_backend { ours(true, false) } else { None };
            words.push(format!("{BLK_TEST}.seed={}", blk_seed(nonce)));
            words.push(format!("{BLK_TEST}.extents={BLK_EXTENTS}"));
        }
        Workload::BlkThroughput => {
            s.host_disk = Some(HostDisk {
                sectors: THROUGHPUT_SECTORS,
                fill_seed: 0x6265_6e63,
            });
            s.ours = if ours_backend { ours(true, false) } else { None };
            s.timeout = throughput_timeout(profile);
            words.extend(workload_params(row.workload, &row.test(), profile, row.variant));
        }
        Workload::NetEcho => {
            if ours_backend {
                s.ours = ours(false, true);
            } else {
                s.vifs = vec![format!("mac={GUEST_MAC}, script={VIF_SCRIPT_PATH}")];
                s.running.push(call("echo_start", &[ECHO_PATH]));
                s.post.push("echo_stop".to_owned());
            }
            s.timeout = throughput_timeout(profile);
            words.extend(workload_params(row.workload, &row.test(), profile, row.variant));
        }
        Workload::ConsoleEcho => {
            let mut o = ours(false, false).expect("some");
            o.console = Some(OurConsole {
                devid: 1,
                mode: ConsoleMode::Echo,
            });
            s.ours = Some(o);
            words.extend(workload_params(row.workload, &row.test(), profile, row.variant));
        }
        Workload::ConsoleInput => {
            s.running
                .push(call("console_input", &[CONSOLE_READY, &console_input(nonce)]));
            words.push(format!("{CONSOLE_TEST}.expect={}", console_input(nonce)));
        }
        Workload::NetPing => {
            match (ours_backend, row.variant) {
                (false, _) => s.vifs = vec![format!("mac={GUEST_MAC}, script={VIF_SCRIPT_PATH}")],
                (true, Some(Variant::Tap)) => {
                    s.ours = Some(OurDevices {
                        vifs: vec![format!("0:{GUEST_MAC}")],
                        tap: true,
                        after_ready: vec![call("tap_up", &[TAP_NAME, &format!("{DOM0_IP}/24")])],
                        ..Default::default()
                    });
                }
                (true, _) => s.ours = ours(false, true),
            }
            if !ours_backend || row.variant == Some(Variant::Tap) {
                // dom0's own kernel answers: it counts the requests.
                s.pre.push("icmp_mark".to_owned());
                s.post.push("icmp_report".to_owned());
            }
            words.extend(net_ping_words());
        }
        Workload::NoBackend => {
            s.paused = true;
            s.running
                .push(call("stub_vbd", &[STUB_BACKEND, &XVDA.to_string()]));
            words.push(format!("{BLK_TEST}.timeout_ms=3000"));
        }
        Workload::BadInput => {
            s.pre.push(call(
                "missing_image_check",
                &[BACKEND_PATH, &XVDA.to_string(), MISSING_IMAGE, HOSTILE_IMAGE],
            ));
            let mut o = ours(false, true).expect("some");
            o.after_ready = vec![call(
                "hostile_vbd",
                &[&HOSTILE_VBD.to_string(), &HOSTILE_RING_REF.to_string()],
            )];
            o.extra_args = vec!["--vbd".to_owned(), format!("{HOSTILE_VBD}:{HOSTILE_IMAGE}")];
            s.ours = Some(o);
            words.extend(net_ping_words());
        }
        Workload::BlkHostile => {
            s.ours = ours(true, true);
            s.host_disk = Some(HostDisk {
                sectors: BLK_SECTORS,
                fill_seed: BLK_FILL,
            });
            words.extend(net_ping_words());
        }
        Workload::Heap
        | Workload::Evtchn
        | Workload::FaultPagefault
        | Workload::FaultPanic
        | Workload::DeviceAbsent => {}
        w => unreachable!("no Xen PV row runs {}", w.name()),
    }
    s.cmdline = words.join(" ");
    s
}

/// A throughput domU's timeout: its phases plus room for the boot.
fn throughput_timeout(profile: Profile) -> Duration {
    match profile {
        Profile::Test => Duration::from_secs(60),
        Profile::Compare { phase_ms } => Duration::from_secs(60) + Duration::from_millis(phase_ms * 12),
    }
}

/// The guest's end of a domU.
pub fn guest_end(r: &ScenarioReport) -> GuestEnd {
    match &r.end {
        Some(End::Shutdown(why)) if why == "poweroff" => GuestEnd::Pass,
        Some(End::Shutdown(why)) if why == "crash" => GuestEnd::Fail,
        Some(End::Shutdown(why)) => GuestEnd::Crash(format!("the domain shut down with reason {why}")),
        Some(End::Timeout) => {
            GuestEnd::Crash("the domain was still running at its timeout; destroyed".to_owned())
        }
        Some(End::CreateFailed) => GuestEnd::Crash(format!("xl create failed: {}", xl_errors(r))),
        Some(End::Unknown) => {
            GuestEnd::Crash(format!("xl ended without a shutdown reason: {}", xl_errors(r)))
        }
        None => GuestEnd::Crash("the domain never ended (the harness boot was cut short)".to_owned()),
    }
}

/// What is wrong with a row's report (empty: passed). `nonce` is the run's nonce, `disk` the host
/// disk's slot (its image is read after the run).
pub fn check(row: &Row, r: &ScenarioReport, nonce: &str, disk: Option<&DiskSlot>) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(slot) = disk {
        check_image_digest(r, slot, &mut problems);
    }
    let spec = spec(row, nonce, Profile::Test);
    if let Some(ours) = &spec.ours {
        check_backend(row, ours, r, &mut problems);
    }
    let end = guest_end(r);
    let run = GuestRun {
        transcript: &r.transcript,
        end: &end,
        test_times: None,
    };
    let tests = guest_tests(row);
    let test = tests[0].as_str();
    let field = |k: &str| run.pass(test).and_then(|f| f.get(k)).map(str::to_owned);
    match row.workload {
        Workload::LinuxPeer => check_linux(r, nonce, disk, &mut problems),
        Workload::FaultPagefault => {
            checks::failed_as_meant(&run, test, &mut problems);
            checks::pagefault(&r.transcript, &mut problems);
        }
        Workload::FaultPanic => {
            checks::failed_as_meant(&run, test, &mut problems);
            checks::panic(&r.transcript, &mut problems);
        }
        Workload::DeviceAbsent => check_refused(&run, &["absent"], &mut problems),
        Workload::NoBackend => {
            // The message must name the backend that never connected and its state.
            check_refused(&run, &[STUB_BACKEND, "state 2"], &mut problems);
            if r.checks.get("stub_vbd") != Some("written") {
                problems.push("dom0 did not write the stub vbd nodes".to_owned());
            }
        }
        w => {
            let refs: Vec<&str> = tests.iter().map(String::as_str).collect();
            checks::all_passed(&run, &refs, &mut problems);
            match w {
                Workload::Hello => {
                    let platform = r.transcript.boot().and_then(|b| b.get("platform"));
                    if platform != Some("xen-pv") {
                        problems.push(format!("BOOT platform={platform:?}, expected xen-pv"));
                    }
                }
                Workload::Cpuid => checks::cpuid(&run, "xen", &mut problems),
                Workload::Timer => checks::timer(&run, TIMER_HZ, TIMER_MS, &mut problems),
                Workload::Xenstore => {
                    let want = xenstore_value(nonce);
                    if run.pass(test).is_some() && field("value").as_deref() != Some(want.as_str()) {
                        problems.push(format!(
                            "the guest's watch saw value={:?}, dom0 wrote {want}",
                            field("value")
                        ));
                    }
                    let domid = r.domid.map(|d| d.to_string());
                    if run.pass(test).is_some()
                        && (field("domid") != domid || field("name") != Some(spec.name.clone()))
                    {
                        problems.push(format!(
                            "the guest read domid={:?} name={:?} from XenStore; dom0 created domid {domid:?} \
                             named {}",
                            field("domid"),
                            field("name"),
                            spec.name
                        ));
                    }
                    if r.checks.get("ping_written") != Some("1") {
                        problems.push("dom0 never saw data/pvkit-ready, so it wrote no ping".to_owned());
                    }
                }
                Workload::ConsoleInput => {
                    let want = console_input(nonce);
                    if run.pass(test).is_some() && field("line").as_deref() != Some(want.as_str()) {
                        problems.push(format!(
                            "the guest read line={:?}, dom0 typed {want:?}",
                            field("line")
                        ));
                    }
                    if r.checks.get("console_input") != Some("written") {
                        problems
                            .push("dom0 never saw the guest's ready line, so it typed nothing".to_owned());
                    }
                }
                Workload::BlkIntegrity => check_integrity(&run, nonce, disk, &mut problems),
                Workload::NetPing | Workload::BadInput | Workload::BlkHostile => {
                    check_ping(row, &run, r, &mut problems);
                    if w == Workload::BadInput {
                        check_bad_input(r, &mut problems);
                    }
                    if w == Workload::BlkHostile {
                        check_hostile_ring(r, &mut problems);
                    }
                }
                Workload::NetEcho => {
                    check_cost_fields(r, test, &["echo64", "echo1514"], &mut problems);
                    if row.backend == Backend::Linux {
                        check_dom0_echo(&run, r, test, &mut problems);
                    }
                }
                Workload::BlkThroughput => check_cost_fields(
                    r,
                    test,
                    &["randread4k", "randwrite4k", "seqread64k", "seqwrite64k"],
                    &mut problems,
                ),
                Workload::ConsoleEcho => check_cost_fields(r, test, &["stream"], &mut problems),
                _ => {}
            }
        }
    }
    problems
}

/// Every sector the guest wrote holds its pattern in the image, and the guest's byte count matches.
fn check_integrity(run: &GuestRun<'_>, nonce: &str, disk: Option<&DiskSlot>, problems: &mut Vec<String>) {
    let (Some(slot), Some(fields)) = (disk, run.pass(BLK_TEST)) else {
        return;
    };
    let image = crate::disk::DiskImage {
        path: slot.image.clone(),
        sectors: BLK_SECTORS,
        fill_seed: BLK_FILL,
    };
    match image.verify_integrity(blk_seed(nonce), BLK_EXTENTS as usize, true) {
        Ok(c) => {
            let want = 2 * c.sectors_written * crate::disk::SECTOR as u64;
            if fields.get_u64("bytes") != Some(want) {
                problems.push(format!(
                    "guest reports bytes={:?}, the {} extents it writes and reads back are {want} bytes",
                    fields.get("bytes"),
                    c.extents
                ));
            }
        }
        Err(e) => problems.push(format!("image check: {e:#}")),
    }
}

/// The ping test's figures, and dom0's count of the echo requests its kernel answered.
fn check_ping(row: &Row, run: &GuestRun<'_>, r: &ScenarioReport, problems: &mut Vec<String>) {
    if let Some(fields) = run.pass(NET_TEST) {
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
    if row.variant == Some(Variant::Tap) && r.checks.get("tap") != Some("up") {
        problems.push("dom0 could not bring the tap interface up".to_owned());
    }
    let kernel_answers = row.backend == Backend::Linux || row.variant == Some(Variant::Tap);
    match r.checks.get_u64("dom0_icmp_echo_requests") {
        _ if !kernel_answers || row.workload != Workload::NetPing => {}
        Some(n) if n >= NET_PINGS => {}
        other => problems.push(format!(
            "dom0's kernel counted {other:?} ICMP echo requests, the guest sends {NET_PINGS}"
        )),
    }
}

/// dom0's L2 echo peer verified and echoed every frame the guest verified (its own frames and
/// its rate phases).
fn check_dom0_echo(run: &GuestRun<'_>, r: &ScenarioReport, test: &str, problems: &mut Vec<String>) {
    let Some(fields) = run.pass(test) else { return };
    let rate: u64 = r.transcript.perfs().filter_map(|p| p.get_u64("ops")).sum();
    let guest = fields.get_u64("ops").unwrap_or(0) + rate;
    match r.checks.get_u64("echoed") {
        Some(n) if n == guest => {}
        other => problems.push(format!(
            "dom0's echo peer echoed {other:?} frames, the guest verified {guest}"
        )),
    }
}

/// The cost fields every PERF line of `test` and its PASS line must carry under Xen PV: the
/// phases expected, exits that are all hypercalls (an event channel send among them), latency.
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

/// The Linux domU's self-check: console both ways, its disk written and read back through the
/// backend and checked on the host, pings answered; against our backend also hvc1 both ways.
fn check_linux(r: &ScenarioReport, nonce: &str, disk: Option<&DiskSlot>, problems: &mut Vec<String>) {
    match &r.end {
        Some(End::Shutdown(why)) if why == "poweroff" => {}
        _ => problems.push(format!("the Linux domU did not power off: {:?}", guest_end(r))),
    }
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
    let Some(slot) = disk else {
        problems.push("the Linux row has no host disk".to_owned());
        return;
    };
    match sha256_file(&slot.image) {
        Ok(host) => {
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
        Err(e) => problems.push(format!("hashing the disk image: {e:#}")),
    }
    match std::fs::read(&slot.image) {
        Ok(img) => {
            let want = format!("PVKIT-SELFCHECK-DISK nonce={nonce}\n");
            if !img.starts_with(want.as_bytes()) {
                problems.push(format!(
                    "the disk image does not start with {want:?} (the domU's write through \
                     blkfront/blkback/loop did not reach it): {:?}",
                    String::from_utf8_lossy(&img[..img.len().min(48)])
                ));
            }
        }
        Err(e) => problems.push(format!("reading the disk image: {e}")),
    }
}

/// The hostile-ring row: the guest saw its ring refused (state Closing or Closed, an error node)
/// and our daemon logged why.
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

/// The two refusals of the bad-input row.
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
fn check_backend(row: &Row, ours: &OurDevices, r: &ScenarioReport, problems: &mut Vec<String>) {
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
    // The hostile row's vbd is halted on purpose: its summary counts the refusal.
    if ours.disk && row.workload != Workload::BlkHostile {
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
        check_console(c, r, summary(&format!("console {}", c.devid)), problems);
    }
}

/// Our console both ways. Log mode: the guest's line is in dom0's log of it, the guest read the
/// daemon's line, and the daemon's summary counts exactly that input and at least that output.
/// Echo mode: the daemon wrote back what it read, without sink errors.
fn check_console(c: &OurConsole, r: &ScenarioReport, summary: Option<&String>, problems: &mut Vec<String>) {
    let (log_expect, input) = match &c.mode {
        ConsoleMode::Log { expect, input, .. } => (expect, input),
        ConsoleMode::Echo => {
            // Every byte the guest wrote went back.
            match summary {
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
            return;
        }
    };
    let label = format!("hvc{}:", c.devid);
    let logged: Vec<&str> = r
        .notes
        .iter()
        .filter_map(|n| n.strip_prefix(label.as_str()))
        .map(str::trim)
        .collect();
    if !logged.contains(&log_expect.as_str()) {
        problems.push(format!(
            "dom0's log of console {} ({} lines) lacks the guest's `{log_expect}`",
            c.devid,
            logged.len(),
        ));
    }
    let want = format!("PVKIT-SELFCHECK hvc{}-input={input}", c.devid);
    if !r.console.iter().any(|l| l.trim() == want) {
        let said = r
            .console
            .iter()
            .find(|l| l.contains(&format!("hvc{}-input=", c.devid)));
        problems.push(format!(
            "the guest did not read our console's input line: expected `{want}`, it said {said:?}"
        ));
    }
    let (want_in, min_out) = (input.len() as u64 + 1, log_expect.len() as u64 + 1);
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

/// Bad input: the block test must fail with a message containing each of `why`, and the guest
/// shut down with `crash` (its fail), well before the domain's timeout.
fn check_refused(run: &GuestRun<'_>, why: &[&str], problems: &mut Vec<String>) {
    checks::failed_as_meant(run, BLK_TEST, problems);
    match run.transcript.verdict(BLK_TEST) {
        Some(Record::TestFail { reason, .. }) if why.iter().all(|w| reason.contains(w)) => {}
        Some(Record::TestFail { reason, .. }) => {
            problems.push(format!(
                "{BLK_TEST} failed with {reason:?}, expected it to mention {why:?}"
            ));
        }
        Some(_) => {}
        None => problems.push(format!("{BLK_TEST} reported no verdict")),
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

/// The files of a harness run that go into dom0's initramfs besides the base system.
pub struct Bundle {
    pub specs: Vec<DomainSpec>,
    /// Per spec: where its host disk is (the images live in `disk_dir`).
    pub slots: Vec<Option<DiskSlot>>,
    /// Our guest ELF, if a domain boots it.
    pub guest: Option<PathBuf>,
    /// Whether a domain boots Linux (ship the kernel and the domU initramfs).
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

    /// The slot of domain `name`'s host disk.
    pub fn slot(&self, name: &str) -> Option<&DiskSlot> {
        self.specs
            .iter()
            .position(|s| s.name == name)
            .and_then(|i| self.slots[i].as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::PAGEFAULT_ADDRESS;
    use crate::matrix::{Env, MATRIX};
    use crate::xen::report::HarnessReport;

    use crate::matrix::named as row;

    fn xen_rows() -> Vec<Row> {
        MATRIX.iter().filter(|r| r.env == Env::XenPv).copied().collect()
    }

    #[test]
    fn every_xen_row_has_a_spec_with_a_unique_domain_name() {
        let mut names: Vec<String> = xen_rows()
            .iter()
            .map(|r| spec(r, "n", Profile::Test).name)
            .collect();
        for n in &names {
            assert!(
                !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "{n}"
            );
        }
        let before = names.len();
        names.sort();
        names.dedup();
        assert_eq!(before, names.len(), "{names:?}");
        assert_eq!(domain_name(&row("xen-pv/xenstore")), "xenstore");
        assert_eq!(
            domain_name(&row("xen-pv/pvkit-xen/net-ping@xen-net+tap")),
            "pvkit-xen-net-ping-tap"
        );
    }

    #[test]
    fn xl_config_quotes_and_lists() {
        let mut s = spec(&row("xen-pv/hello"), "n", Profile::Test);
        s.cmdline = "tests=hello x=\"q\"".into();
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
        assert!(
            c.contains("disk = [ \"format=raw, vdev=xvda, access=rw, target=/dev/loop3\" ]\n"),
            "{c}"
        );
        assert!(c.contains("vif = [  ]\n"));
        assert!(!c.contains("ramdisk"));
        let l = spec(&row("xen-pv/linux/linux-peer"), "abc", Profile::Test).xl_config(None);
        assert!(l.contains(&format!("ramdisk = \"{LINUX_INITRD_PATH}\"")));
        assert!(l.contains("pvkit.nonce=abc"));
        // Our daemon serves the disk: no xl disk line.
        let ours = spec(&row("xen-pv/pvkit-xen/blk-integrity@xen-blk"), "n", Profile::Test);
        assert!(ours.xl_config(Some(&slot)).contains("disk = [  ]"));
    }

    #[test]
    fn hooks_call_the_library_with_quoted_arguments() {
        let slot = DiskSlot {
            image: PathBuf::from("/i.img"),
            dom0_dev: "/dev/vdb".into(),
            loop_dev: "/dev/loop1".into(),
        };
        let s = spec(&row("xen-pv/pvkit-xen/bad-input@xen-blk"), "n", Profile::Test);
        let [pre, running, post] = s.hooks(Some(&slot));
        assert_eq!(pre[0], "disk_attach /dev/loop1 /dev/vdb");
        assert!(
            pre[1].starts_with("missing_image_check /pvkit/pvkit-xen-backend 51712 "),
            "{pre:?}"
        );
        assert!(
            running[0].starts_with("if backend_start /pvkit/pvkit-xen-backend --vif "),
            "{running:?}"
        );
        assert!(running[0].contains("--vbd 51728:/tmp/hostile.img"), "{running:?}");
        assert_eq!(running[1], "    hostile_vbd 51728 1234567");
        assert_eq!(running[2], "fi");
        assert_eq!(
            post,
            vec![
                "backend_stop".to_owned(),
                "disk_detach /dev/loop1 /dev/vdb".to_owned()
            ]
        );
        // Every function a hook calls exists in the library.
        for r in xen_rows() {
            let s = spec(&r, "n", Profile::Test);
            for line in s.hooks(Some(&slot)).iter().flatten() {
                let word = line
                    .trim()
                    .trim_start_matches("if ")
                    .split_whitespace()
                    .next()
                    .unwrap();
                if word == "fi" {
                    continue;
                }
                assert!(
                    DOM0_LIB.contains(&format!("\n{word}() {{")),
                    "{r}: {word} is not in dom0-lib.sh"
                );
            }
        }
        let linux = spec(&row("xen-pv/pvkit-xen/linux-peer"), "n9", Profile::Test);
        let [_, running, post] = linux.hooks(Some(&slot));
        assert!(
            running[0].contains(
                "--console 1:/tmp/hvc1-pvkit-xen-linux-peer.log --console-input pvkit-hvc1-input-n9"
            ),
            "{running:?}"
        );
        assert!(
            post.iter()
                .any(|p| p == "console_log_notes 1 /tmp/hvc1-pvkit-xen-linux-peer.log"),
            "{post:?}"
        );
        assert!(linux.cmdline.contains("pvkit.hvc1=1"));
        assert!(
            spec(&row("xen-pv/linux/linux-peer"), "n9", Profile::Test)
                .cmdline
                .contains("pvkit.hvc1=0")
        );
        assert!(
            VIF_SCRIPT.contains(&format!("{DOM0_IP}/24")),
            "the vif script's address is DOM0_IP"
        );
    }

    fn report(log: &str) -> HarnessReport {
        HarnessReport::parse(log)
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
    fn linux_peer_needs_nonce_ping_disk_digest_and_poweroff() {
        let dir = std::env::temp_dir().join(format!("pvkit-xen-selfcheck-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("disk.img");
        let mut bytes = b"PVKIT-SELFCHECK-DISK nonce=42\n".to_vec();
        bytes.resize(4096, 0xa5);
        std::fs::write(&image, &bytes).unwrap();
        let digest = sha256_file(&image).unwrap();
        let slot = DiskSlot {
            image: image.clone(),
            dom0_dev: "/dev/vda".into(),
            loop_dev: "/dev/loop0".into(),
        };
        let r = row("xen-pv/linux/linux-peer");
        let name = domain_name(&r);
        let host_digest = digest.clone();
        let log = |reason: &str, digest: &str, ping: &str| {
            let lines = [
                "PVKIT-SELFCHECK pattern=written".to_owned(),
                "PVKIT-SELFCHECK pattern=read-back".to_owned(),
                format!("PVKIT-SELFCHECK disk_sha256={host_digest}"),
                format!("PVKIT-SELFCHECK ping={ping}"),
                "PVKIT-SELFCHECK nonce=42".to_owned(),
                "PVKIT-SELFCHECK input=pvkit-input-42".to_owned(),
            ];
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            scenario_log(
                &name,
                &refs,
                &format!(
                    "PVKIT-XEN SCENARIO {name} CHECK image_sha256={digest}\n\
                     PVKIT-XEN SCENARIO {name} END reason={reason} run_ms=9000\n"
                ),
            )
        };
        let problems = |text: String, nonce: &str| {
            let h = report(&text);
            check(&r, h.scenario(&name).unwrap(), nonce, Some(&slot))
        };
        assert_eq!(
            problems(log("poweroff", &digest, "3/3"), "42"),
            Vec::<String>::new()
        );
        assert!(
            !problems(log("poweroff", &digest, "3/3"), "43").is_empty(),
            "stale nonce"
        );
        assert!(!problems(log("crash", &digest, "3/3"), "42").is_empty());
        assert!(
            !problems(log("poweroff", &digest, "0/3"), "42").is_empty(),
            "no ping answers"
        );
        assert!(
            !problems(log("poweroff", &"0".repeat(64), "3/3"), "42").is_empty(),
            "dom0 digest differs"
        );
        let text = log("poweroff", &digest, "3/3").replace("PVKIT-SELFCHECK pattern=read-back", "");
        assert!(!problems(text, "42").is_empty(), "pattern not read back");
        std::fs::write(&image, vec![0u8; 4096]).unwrap();
        let zero = sha256_file(&image).unwrap();
        assert!(
            !problems(log("poweroff", &zero, "3/3"), "42").is_empty(),
            "nonce not on disk"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn faults_and_refusals_need_a_crash_shutdown_and_their_report() {
        let exc = format!(
            "PVKIT EXCEPTION vector=14 name=\"Page fault\" error=0x0 rip=0x1 cr2={PAGEFAULT_ADDRESS:#x}"
        );
        let pf = row("xen-pv/fault-pagefault");
        let lines = [
            "PVKIT BOOT platform=xen-pv hypervisor=xen",
            "PVKIT TEST fault-pagefault START",
            exc.as_str(),
            "PVKIT TEST fault-pagefault FAIL exception vector=14",
            "PVKIT EXIT 1",
        ];
        let problems = |r: &Row, lines: &[&str], tail: &str| {
            let name = domain_name(r);
            let text = scenario_log(&name, lines, &tail.replace("NAME", &name));
            check(r, report(&text).scenario(&name).unwrap(), "", None)
        };
        let end = |reason: &str| format!("PVKIT-XEN SCENARIO NAME END reason={reason} run_ms=1\n");
        assert_eq!(problems(&pf, &lines, &end("crash")), Vec::<String>::new());
        assert!(!problems(&pf, &lines, &end("poweroff")).is_empty());
        assert!(!problems(&pf, &lines[..4], &end("crash")).is_empty(), "no EXIT 1");

        let stub = row("xen-pv/no-backend@xen-blk");
        let stuck = format!(
            "PVKIT TEST {BLK_TEST} FAIL backend /local/domain/0/backend/pvkit-stub/1/51712 still in state 2 after 10 s"
        );
        let refused = ["PVKIT BOOT platform=xen-pv", stuck.as_str(), "PVKIT EXIT 1"];
        let written = "PVKIT-XEN SCENARIO NAME CHECK stub_vbd=written\n";
        assert_eq!(
            problems(&stub, &refused, &(written.to_owned() + &end("crash"))),
            Vec::<String>::new()
        );
        assert!(!problems(&stub, &refused, &end("crash")).is_empty(), "no stub");
        assert!(
            !problems(&stub, &refused, &(written.to_owned() + &end("timeout"))).is_empty(),
            "hung"
        );
        let absent = row("xen-pv/device-absent@xen-blk");
        let gone = format!("PVKIT TEST {BLK_TEST} FAIL device xen-blk absent");
        let lines = ["PVKIT BOOT platform=xen-pv", gone.as_str(), "PVKIT EXIT 1"];
        assert_eq!(problems(&absent, &lines, &end("crash")), Vec::<String>::new());
        assert!(!problems(&absent, &lines, &end("poweroff")).is_empty());
        assert!(
            !problems(&stub, &lines, &(written.to_owned() + &end("crash"))).is_empty(),
            "absent is not stuck"
        );
    }

    #[test]
    fn xenstore_needs_dom0s_value_domid_and_name() {
        let xs = row("xen-pv/xenstore");
        let problems = |pass_line: String, written: bool| {
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
            let h = report(&scenario_log("xenstore", &lines, &tail));
            check(&xs, h.scenario("xenstore").unwrap(), "n1", None)
        };
        let pass = |domid: u32, name: &str, value: &str| {
            format!("PVKIT TEST xenstore PASS domid={domid} name={name} value={value}")
        };
        assert_eq!(
            problems(pass(4, "xenstore", "from-dom0-n1"), true),
            Vec::<String>::new()
        );
        assert!(
            !problems(pass(4, "xenstore", "from-dom0-n0"), true).is_empty(),
            "stale value"
        );
        assert!(
            !problems(pass(5, "xenstore", "from-dom0-n1"), true).is_empty(),
            "wrong domid"
        );
        assert!(
            !problems(pass(4, "other", "from-dom0-n1"), true).is_empty(),
            "wrong name"
        );
        assert!(
            !problems(pass(4, "xenstore", "from-dom0-n1"), false).is_empty(),
            "dom0 never wrote"
        );
    }

    #[test]
    fn console_input_needs_the_typed_line() {
        let r = row("xen-pv/xenconsoled/console-input@xen-console");
        let name = domain_name(&r);
        let problems = |line: &str, typed: bool| {
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
                tail.push_str(&format!(
                    "PVKIT-XEN SCENARIO {name} CHECK console_input=written\n"
                ));
            }
            tail.push_str(&format!(
                "PVKIT-XEN SCENARIO {name} END reason=poweroff run_ms=1\n"
            ));
            let h = report(&scenario_log(&name, &lines, &tail));
            check(&r, h.scenario(&name).unwrap(), "7", None)
        };
        assert_eq!(problems("pvkit-input-7", true), Vec::<String>::new());
        assert!(!problems("pvkit-input-6", true).is_empty(), "another line");
        assert!(!problems("pvkit-input-7", false).is_empty(), "dom0 typed nothing");
    }

    #[test]
    fn our_backend_must_be_ready_exit_cleanly_and_show_work() {
        let r = row("xen-pv/pvkit-xen/blk-hostile@xen-blk");
        let ours = OurDevices {
            disk: true,
            vifs: vec!["0:00:16:3e:00:00:10".into()],
            ..Default::default()
        };
        let integrity = row("xen-pv/pvkit-xen/blk-integrity@xen-blk");
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
        let problems = |row: &Row, text: String| {
            let h = report(&text);
            let mut p = Vec::new();
            check_backend(row, &ours, h.scenario("s").unwrap(), &mut p);
            p
        };
        assert_eq!(problems(&integrity, log("0", 0, 5)), Vec::<String>::new());
        assert!(!problems(&integrity, log("still-running", 0, 5)).is_empty());
        assert!(
            !problems(&integrity, log("0", 1, 5)).is_empty(),
            "a failed request"
        );
        assert!(!problems(&integrity, log("0", 0, 0)).is_empty(), "no traffic");
        assert_eq!(
            problems(&r, log("0", 1, 5)),
            Vec::<String>::new(),
            "the hostile vbd fails on purpose"
        );
        assert_eq!(count_in("x requests=12 failed=0", "requests"), Some(12));
        assert_eq!(count_in("x requests=12", "failed"), None);
    }

    #[test]
    fn our_console_must_carry_a_line_each_way() {
        let s = spec(&row("xen-pv/pvkit-xen/linux-peer"), "n9", Profile::Test);
        let c = s.ours.unwrap().console.unwrap();
        let ConsoleMode::Log { input, .. } = &c.mode else {
            panic!("log mode")
        };
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
            let h = report(&text);
            let s = h.scenario("s").unwrap();
            let mut p = Vec::new();
            check_console(
                &c,
                s,
                s.notes.iter().find(|n| n.contains("device=console 1 ")),
                &mut p,
            );
            p
        };
        let n = input.len() + 1;
        let good = log("PVKIT-SELFCHECK hvc1 nonce=n9", "pvkit-hvc1-input-n9", n);
        assert_eq!(problems(good.clone()), Vec::<String>::new());
        assert!(!problems(log("PVKIT-SELFCHECK hvc1 nonce=n8", "pvkit-hvc1-input-n9", n)).is_empty());
        assert!(
            !problems(log("PVKIT-SELFCHECK hvc1 nonce=n9", "", n)).is_empty(),
            "guest read nothing"
        );
        assert!(!problems(log("PVKIT-SELFCHECK hvc1 nonce=n9", "pvkit-hvc1-input-n9", n - 1)).is_empty());
        assert!(
            !problems(good.replace("bytes_out=37", "bytes_out=0")).is_empty(),
            "no output counted"
        );
        assert!(!problems(good.replace("device=console 1", "device=console 2")).is_empty());
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
            let h = report(&text);
            let mut p = Vec::new();
            check_bad_input(h.scenario("b").unwrap(), &mut p);
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
            let h = report(&text);
            let mut p = Vec::new();
            check_hostile_ring(h.scenario("h").unwrap(), &mut p);
            p
        };
        let halted = "frontend broke the protocol, device halted";
        assert_eq!(problems(log("5", halted)), Vec::<String>::new());
        assert!(!problems(log("4", halted)).is_empty(), "still connected");
        assert!(!problems(log("5", "connected")).is_empty(), "nothing logged");
    }
}
