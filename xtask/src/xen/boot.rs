//! Boots the Xen machine in QEMU (TCG): Xen 4.17 through QEMU's multiboot loader, dom0's kernel and
//! initramfs as multiboot modules, everything on one serial line, kept in a log.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::process;
use crate::qemu::QemuConfig;
use crate::workspace::display_command;

/// Xen's command line: serial console, dom0 sized and capped, no reboot on a crash (QEMU then
/// stays up and the timeout reports it), domU `console_io` output shown.
pub const XEN_CMDLINE: &str =
    "console=com1 com1=115200,8n1 dom0_mem=512M,max:512M dom0_max_vcpus=2 noreboot guest_loglvl=all";
/// dom0's command line: console on Xen's console, our init, kernel messages kept quiet.
pub const DOM0_CMDLINE: &str = "console=hvc0 rdinit=/init quiet loglevel=3";

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
    pub fn command(&self) -> Result<Command> {
        for p in [&self.dom0_kernel, &self.dom0_initramfs] {
            // QEMU's multiboot module list is comma-separated (a literal comma is written `,,`).
            if p.to_string_lossy().contains(',') {
                bail!(
                    "{} contains a comma, which QEMU's -initrd list cannot carry",
                    p.display()
                );
            }
        }
        let mut cmd = Command::new(QemuConfig::default_qemu());
        cmd.args([
            "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2",
        ]);
        cmd.args(["-nodefaults", "-nographic", "-no-reboot", "-serial", "stdio"]);
        cmd.arg("-kernel").arg(&self.xen);
        cmd.args(["-append", XEN_CMDLINE]);
        cmd.arg("-initrd").arg(format!(
            "{} {},{}",
            self.dom0_kernel.display(),
            DOM0_CMDLINE.replace(',', ",,"),
            self.dom0_initramfs.display()
        ));
        for (i, d) in self.drives.iter().enumerate() {
            if d.to_string_lossy().contains(',') {
                bail!(
                    "{} contains a comma, which QEMU's -drive option cannot carry",
                    d.display()
                );
            }
            cmd.arg("-drive").arg(format!(
                "file={},format=raw,if=none,id=disk{i},cache=unsafe",
                d.display()
            ));
            cmd.args(["-device", &format!("virtio-blk-pci,drive=disk{i}")]);
        }
        Ok(cmd)
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
    /// QEMU's exit code, or why there is none.
    pub exit: std::result::Result<i32, String>,
    pub milestones: Milestones,
}

/// Boots `m`, writes the command and the serial output to `log`, shows each line through `on_line`.
/// QEMU runs in its own process group, killed on timeout or Ctrl-C.
pub fn boot(m: &Machine, log: &Path, mut on_line: impl FnMut(&str)) -> Result<Boot> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut logf = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = m.command()?;
    writeln!(logf, "# command: {}", display_command(&cmd))?;
    writeln!(logf, "# timeout: {} s", m.timeout.as_secs_f64())?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    process::isolate(&mut cmd);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", cmd.get_program().to_string_lossy()))?;
    let pgid = child.id();
    let (tx, rx) = mpsc::channel::<(bool, String)>();
    for (is_err, pipe) in [
        (
            false,
            Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
        ),
        (true, Box::new(child.stderr.take().expect("piped"))),
    ] {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut r = BufReader::new(pipe);
            let mut buf = Vec::new();
            while matches!(r.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                let line = String::from_utf8_lossy(&buf).replace('\r', "");
                let line = line.trim_end_matches('\n').to_owned();
                buf.clear();
                if tx.send((is_err, line)).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut serial = String::new();
    let mut ms = Milestones::default();
    let mut killed: Option<String> = None;
    let status = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok((is_err, line)) => {
                if is_err {
                    writeln!(logf, "[qemu stderr] {line}")?;
                } else {
                    writeln!(logf, "{line}")?;
                    serial.push_str(&line);
                    serial.push('\n');
                    if ms.xen_banner.is_none() {
                        ms.xen_banner = Some(started.elapsed());
                    }
                    if ms.dom0_ready.is_none() && line.contains("PVKIT-XEN DOM0 READY") {
                        ms.dom0_ready = Some(started.elapsed());
                    }
                }
                on_line(&line);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if let Some(st) = child.try_wait()? {
            // Drain what is still in the pipes.
            while let Ok((_, line)) = rx.recv_timeout(Duration::from_millis(200)) {
                writeln!(logf, "{line}")?;
                serial.push_str(&line);
                serial.push('\n');
                on_line(&line);
            }
            break st;
        }
        if killed.is_none() {
            if process::interrupted() {
                killed = Some("interrupted".to_owned());
            } else if started.elapsed() > m.timeout {
                killed = Some(format!(
                    "the Xen machine did not power off within {} s; QEMU killed",
                    m.timeout.as_secs()
                ));
            }
            if killed.is_some() {
                process::kill_group(pgid);
            }
        }
    };
    let wall = started.elapsed();
    ms.exited = Some(wall);
    if process::group_exists(pgid) {
        process::kill_group(pgid);
    }
    let exit = match (killed, status.code()) {
        (Some(why), _) => Err(why),
        (None, Some(c)) => Ok(c),
        (None, None) => Err(format!("QEMU ended by {status}")),
    };
    writeln!(logf, "# exit: {exit:?}; wall time {:.1} s", wall.as_secs_f64())?;
    Ok(Boot {
        serial,
        exit,
        milestones: ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(dir: &str, drives: &[&str]) -> Machine {
        Machine {
            xen: PathBuf::from("/c/xen-4.17-amd64"),
            dom0_kernel: PathBuf::from(format!("{dir}/vmlinuz")),
            dom0_initramfs: PathBuf::from(format!("{dir}/dom0.cpio")),
            drives: drives.iter().map(PathBuf::from).collect(),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn command_passes_xen_dom0_and_disks_in_order() {
        let cmd = machine("/c", &["/d/a.img", "/d/b.img"]).command().unwrap();
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
        let drives: Vec<&String> = args.iter().filter(|a| a.starts_with("file=")).collect();
        assert_eq!(drives.len(), 2);
        assert!(drives[0].starts_with("file=/d/a.img,") && drives[0].contains("id=disk0"));
        assert!(drives[1].starts_with("file=/d/b.img,") && drives[1].contains("id=disk1"));
        assert!(args.contains(&"virtio-blk-pci,drive=disk1".to_owned()));
    }

    #[test]
    fn commas_in_paths_are_refused() {
        assert!(machine("/c,x", &[]).command().is_err());
        assert!(machine("/c", &["/d,x/a.img"]).command().is_err());
    }
}
