//! Boots the Xen machine through the one QEMU runner (`qemu::run`): Xen 4.17 through QEMU's
//! multiboot loader, dom0's kernel and initramfs as modules, everything on one serial line, kept in
//! the log with the exact command line.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::qemu::{self, Boot as QemuBoot, Outcome, QemuConfig, Seen};

/// Xen's command line: serial console, dom0 sized and capped, no reboot on a crash (QEMU then
/// stays up and the timeout reports it), domU `console_io` output shown, and eager FPU switching.
///
/// `spec-ctrl=eager-fpu`: QEMU's TCG presents an AMD CPU, on which Xen switches PV vCPUs' FPU
/// state lazily (CR0.TS, restored on the first use) with XSAVE/XRSTOR of part of the state. Under
/// this emulation that loses user processes' SSE and AVX registers across context switches (dom0's
/// platform watcher measured 111 to 134 changed register sets in about 1,500 checks per boot,
/// with or without XSAVEOPT, XSAVEC and XSAVES; none with eager switching, none on a CPU without
/// XSAVE). glibc keeps pointers and data in those registers, so programs corrupted memory at
/// random: malloc's aborts in our daemon and segfaults of busybox in dom0 and the Linux domU.
pub const XEN_CMDLINE: &str = "console=com1 com1=115200,8n1 dom0_mem=512M,max:512M dom0_max_vcpus=2 \
     noreboot guest_loglvl=all spec-ctrl=eager-fpu";
/// dom0's command line: console on Xen's console, our init, kernel messages kept quiet.
pub const DOM0_CMDLINE: &str = "console=hvc0 rdinit=/init quiet loglevel=3";
/// Memory and vCPUs of the Xen machine.
const MACHINE_MIB: u32 = 2048;
const MACHINE_CPUS: u32 = 2;

/// What to boot.
pub struct Machine {
    /// The gunzipped hypervisor ELF.
    pub xen: PathBuf,
    pub dom0_kernel: PathBuf,
    pub dom0_initramfs: PathBuf,
    /// Disk images given to dom0 as virtio disks (`/dev/vda`, `/dev/vdb`, ... in this order).
    pub drives: Vec<PathBuf>,
    pub timeout: Duration,
}

impl Machine {
    /// The QEMU run of the machine.
    pub fn config(&self) -> QemuConfig {
        let mut cfg = QemuConfig::pvh(Path::new("/"), String::new(), Vec::new(), self.timeout);
        cfg.boot = QemuBoot::Xen {
            xen: self.xen.clone(),
            xen_cmdline: XEN_CMDLINE.to_owned(),
            dom0_kernel: self.dom0_kernel.clone(),
            dom0_cmdline: DOM0_CMDLINE.to_owned(),
            initramfs: self.dom0_initramfs.clone(),
            drives: self.drives.clone(),
        };
        cfg.memory_mib = MACHINE_MIB;
        cfg.cpus = MACHINE_CPUS;
        cfg
    }
}

/// Host-clock milestones of a boot (from QEMU's launch).
#[derive(Debug, Default, Clone)]
pub struct Milestones {
    /// Xen's first line.
    pub xen_banner: Option<Duration>,
    /// dom0's toolstack is up (`PVKIT-XEN DOM0 READY`).
    pub dom0_ready: Option<Duration>,
    /// QEMU exited.
    pub exited: Option<Duration>,
}

/// How the boot ended.
pub struct Boot {
    /// The serial log (also in the log file).
    pub serial: String,
    /// QEMU's exit code if it exited by itself (dom0's `poweroff -f` gives 0).
    pub exit_code: Option<i32>,
    /// The runner's account of the end (a timeout, a signal, ...).
    pub outcome: Outcome,
    pub milestones: Milestones,
}

/// Boots `m`, writes the command and the serial output to `log`, shows each line through `on_line`.
pub fn boot(m: &Machine, log: &Path, mut on_line: impl FnMut(&str)) -> Result<Boot> {
    let serial = RefCell::new(String::new());
    let started = Instant::now();
    let mut ms = Milestones::default();
    let r = qemu::run(&m.config(), log, |seen| {
        let Seen::Console(line, _) = seen else { return };
        let mut s = serial.borrow_mut();
        s.push_str(line);
        s.push('\n');
        if ms.xen_banner.is_none() {
            ms.xen_banner = Some(started.elapsed());
        }
        if ms.dom0_ready.is_none() && line.contains("PVKIT-XEN DOM0 READY") {
            ms.dom0_ready = Some(started.elapsed());
        }
        on_line(line);
    })?;
    ms.exited = Some(r.wall);
    Ok(Boot {
        serial: serial.into_inner(),
        exit_code: r.exit_code,
        outcome: r.outcome,
        milestones: ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::display_command;

    #[test]
    fn command_passes_xen_dom0_and_disks_in_order() {
        let m = Machine {
            xen: PathBuf::from("/c/xen-4.17-amd64"),
            dom0_kernel: PathBuf::from("/c/vmlinuz"),
            dom0_initramfs: PathBuf::from("/c/dom0.cpio"),
            drives: vec!["/d/a.img".into(), "/d/b.img".into()],
            timeout: Duration::from_secs(1),
        };
        let cmd = m.config().command().unwrap();
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let after = |flag: &str| {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1].clone()
        };
        assert_eq!(after("-kernel"), "/c/xen-4.17-amd64");
        assert_eq!(after("-append"), XEN_CMDLINE);
        // Module list: "<kernel> <args>,<initramfs>", a comma inside the args doubled.
        assert_eq!(
            after("-initrd"),
            format!("/c/vmlinuz {},/c/dom0.cpio", DOM0_CMDLINE.replace(',', ",,"))
        );
        assert_eq!(after("-accel"), "tcg");
        assert_eq!(after("-m"), "2048M");
        let shown = display_command(&cmd);
        assert!(
            shown.contains("id=disk0") && shown.contains("virtio-blk-pci,drive=disk1"),
            "{shown}"
        );
    }
}
