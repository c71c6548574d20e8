//! A domU of the Xen harness and dom0's part around it: the xl config, the hooks (calls of the
//! library `xtask/xen/dom0-lib.sh`), our daemon's devices and arguments, the host disks of one boot.
//! `scenario.rs` builds a [`DomainSpec`] from a matrix row; `checks.rs` reads its report.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::workspace::shell_quote;

pub const GUEST_MEMORY_MIB: u32 = 64;
/// Memory of the harness's Linux domU (MiB): Debian's kernel and a busybox initramfs.
pub(super) const LINUX_MEMORY_MIB: u32 = 128;

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
pub(super) const XVDA: u32 = 51712;

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
pub(super) fn call(f: &str, args: &[&str]) -> String {
    let mut s = f.to_owned();
    for a in args {
        s.push(' ');
        s.push_str(&shell_quote(a));
    }
    s
}

impl DomainSpec {
    pub(super) fn new(name: &str, cmdline: String) -> DomainSpec {
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
pub(super) fn backend_args(ours: &OurDevices, slot: Option<&DiskSlot>) -> Vec<String> {
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

/// The tap interface of the tap row in dom0.
pub const TAP_NAME: &str = "pvtap0";

/// dom0's address on every vif (also in `xtask/xen/vif-pvkit.sh`); the domU side is [`DOMU_IP`]
/// (one /24, domains run in turn).
pub const DOM0_IP: &str = "10.99.0.1";
pub const DOMU_IP: &str = "10.99.0.2";
