//! What one QEMU machine is: the accelerator, what it boots (our kernel as a PVH guest, a Linux
//! kernel, Xen with dom0), its memory, vCPUs and devices, and the command line that follows.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::ValueEnum;

use super::{Device, IoAttach, MEMORY_MIB, QBOOT, QEMU};

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
    pub(super) fn inputs(&self) -> Vec<(&'static str, &Path)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::VhostAttach;
    use crate::workspace::display_command;

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
}
