//! The QEMU devices xtask can give the guest: the device table (PCI ids, QEMU options, host
//! backends), and QEMU's own `info pci` to check the table against.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

use super::Q35_BUILTIN_PCI;
use crate::console::is_pci_id;
use crate::process;
use crate::workspace::display_command;

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
}
