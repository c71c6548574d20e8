//! `pvkit-xen-backend`: serves one Xen domain's vbds, vifs and secondary consoles from dom0's
//! userspace.
//!
//! ```text
//! xl create -p domu.cfg                 # no disk/vif lines: the devices are ours
//! pvkit-xen-backend --domid 5 --vbd 51712:/dev/loop0 --vif 0:00:16:3e:00:00:10 &
//! # ... wait for the "ready" line on stdout ...
//! xl unpause 5
//! ```
//!
//! For each device it writes the frontend and backend XenStore directories (with the permissions a
//! toolstack would give them), waits in `InitWait` for the frontend, maps its rings and serves them
//! (see `pvkit_backends::xen`). A device whose frontend publishes something unusable is refused with
//! an `ERROR ... refused:` log line; the other devices go on. Vifs are ports of one L2 switch that
//! also holds an echo peer (answers ARP, ping, UDP echo and pvkit's echo frames) at `--echo-ip`.
//! Each vif's switch port is bound to its `--vif` MAC (frames from any other source address are
//! dropped and counted), as is the echo peer's; the MACs must be distinct unicast addresses.
//! A console (`--console 1:/tmp/hvc1.log`, `hvc1` in a Linux guest) appends the guest's output to
//! the log file (at most `--console-log-max` bytes, then rotated to one `.1` file) and, with
//! `--console-input TEXT`, sends TEXT and a newline to the guest once; with
//! `--console 1:/tmp/hvc1.log:echo` it also writes every byte back to the guest.
//! The daemon exits with status 0 once the domain is gone (all directories removed), or on
//! SIGINT/SIGTERM after removing the directories.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;

use anyhow::{Context, Result, bail};
use clap::Parser;
use pvkit_backends::block::{BlockCore, BlockOptions};
use pvkit_backends::console::ConsoleSink;
use pvkit_backends::net::{EchoPeer, Mac, Switch};
use pvkit_backends::tap::TapPort;
use pvkit_backends::xen::blkback::BlkBackend;
use pvkit_backends::xen::console::ConsoleBackend;
use pvkit_backends::xen::gntdev::GntDev;
use pvkit_backends::xen::netback::{NetBackend, format_mac};
use pvkit_backends::xen::xenbus::{DeviceId, remove_device, run_device};
use pvkit_backends::xen::xenstore::{self, XenStore};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Xen blkback/netback/console backends in dom0 userspace for one domain"
)]
struct Cli {
    /// The frontend domain (created paused, unpaused after "ready").
    #[arg(long)]
    domid: u16,
    /// A disk: `DEVID:PATH[:ro]` (DEVID 51712 is xvda). PATH is an image file or block device.
    #[arg(long, value_parser = parse_vbd)]
    vbd: Vec<Vbd>,
    /// A network interface: `DEVID:MAC`.
    #[arg(long, value_parser = parse_vif)]
    vif: Vec<Vif>,
    /// A secondary console: `DEVID:LOGPATH[:echo]` (DEVID 1 to 9; 0 is xenconsoled's). The guest's
    /// output is appended to LOGPATH; with `:echo` it is also written back to the guest (the peer of
    /// the console echo workload).
    #[arg(long, value_parser = parse_console)]
    console: Vec<Console>,
    /// A line sent to the guest (followed by a newline) on every `--console` once it connects.
    #[arg(long)]
    console_input: Option<String>,
    /// Bytes a console's log file holds at most; a full log is renamed to LOGPATH.1 (replacing
    /// it) and started over, so a guest occupies at most twice this on disk per console.
    #[arg(long, default_value_t = 4 * 1024 * 1024, value_name = "BYTES")]
    console_log_max: u64,
    /// IPv4 address of the switch's echo peer.
    #[arg(long, default_value = "10.99.0.1")]
    echo_ip: std::net::Ipv4Addr,
    /// MAC of the switch's echo peer.
    #[arg(long, default_value = "02:70:76:6b:69:74", value_parser = parse_mac)]
    echo_mac: Mac,
    /// No echo peer on the switch (e.g. when `--tap` connects the host's own stack instead).
    #[arg(long)]
    no_echo_peer: bool,
    /// Also attach tap interface NAME to the switch (created if needed; the host brings it up and
    /// addresses it), so the guests reach the host's network stack.
    #[arg(long, value_name = "NAME")]
    tap: Option<String>,
    /// Open images with O_DIRECT.
    #[arg(long)]
    direct: bool,
    /// Sync every write before its response (the vbds have no volatile write cache); otherwise
    /// writes are made durable by the frontend's flushes.
    #[arg(long)]
    writethrough: bool,
    /// Use xenstored's socket at this path instead of /dev/xen/xenbus.
    #[arg(long)]
    xenstore_socket: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct Vbd {
    devid: u32,
    path: PathBuf,
    read_only: bool,
}

#[derive(Debug, Clone)]
struct Vif {
    devid: u32,
    mac: Mac,
}

#[derive(Debug, Clone)]
struct Console {
    devid: u32,
    log: PathBuf,
    echo: bool,
}

/// A device argument that does not parse.
#[derive(Debug, thiserror::Error)]
enum ArgError {
    /// Not of the form the option takes.
    #[error("expected {0}")]
    Form(&'static str),
    /// A device id that is not a number.
    #[error("{what} id {value:?} is not a number")]
    Id { what: &'static str, value: String },
    /// A console id Linux's frontend cannot serve.
    #[error("console id {0} is not 1 to 9 (0 is the start_info console)")]
    ConsoleId(u32),
    /// A path left empty.
    #[error("empty {0} path")]
    EmptyPath(&'static str),
    /// A MAC that is not six hex bytes.
    #[error("MAC {0:?} is not six hex bytes")]
    Mac(String),
}

fn parse_console(s: &str) -> Result<Console, ArgError> {
    let (devid, log) = s.split_once(':').ok_or(ArgError::Form("DEVID:LOGPATH[:echo]"))?;
    let (log, echo) = match log.strip_suffix(":echo") {
        Some(l) => (l, true),
        None => (log, false),
    };
    let devid: u32 = devid.parse().map_err(|_| ArgError::Id {
        what: "console",
        value: devid.into(),
    })?;
    // Linux's frontend reads the id from the last character of the node name and refuses 0.
    if !(1..=9).contains(&devid) {
        return Err(ArgError::ConsoleId(devid));
    }
    if log.is_empty() {
        return Err(ArgError::EmptyPath("log"));
    }
    Ok(Console {
        devid,
        log: log.into(),
        echo,
    })
}

fn parse_vbd(s: &str) -> Result<Vbd, ArgError> {
    let (devid, rest) = s.split_once(':').ok_or(ArgError::Form("DEVID:PATH[:ro]"))?;
    let devid = devid.parse().map_err(|_| ArgError::Id {
        what: "device",
        value: devid.into(),
    })?;
    let (path, read_only) = match rest.strip_suffix(":ro") {
        Some(p) => (p, true),
        None => (rest, false),
    };
    if path.is_empty() {
        return Err(ArgError::EmptyPath("image"));
    }
    Ok(Vbd {
        devid,
        path: path.into(),
        read_only,
    })
}

fn parse_mac(s: &str) -> Result<Mac, ArgError> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(ArgError::Mac(s.into()));
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| ArgError::Mac(s.into()))?;
    }
    Ok(mac)
}

fn parse_vif(s: &str) -> Result<Vif, ArgError> {
    let (devid, mac) = s.split_once(':').ok_or(ArgError::Form("DEVID:MAC"))?;
    Ok(Vif {
        devid: devid.parse().map_err(|_| ArgError::Id {
            what: "device",
            value: devid.into(),
        })?,
        mac: parse_mac(mac)?,
    })
}

/// The switch binds each vif's port to its MAC (and the echo peer's to its own): they must be
/// unicast and distinct.
fn check_macs(cli: &Cli) -> Result<()> {
    let mut macs: Vec<(String, Mac)> = cli
        .vif
        .iter()
        .map(|v| (format!("vif {}", v.devid), v.mac))
        .collect();
    if !cli.vif.is_empty() && !cli.no_echo_peer {
        macs.push(("the echo peer".into(), cli.echo_mac));
    }
    for (i, (who, mac)) in macs.iter().enumerate() {
        if mac[0] & 1 != 0 {
            bail!("{who}: MAC {} is a multicast address", format_mac(mac));
        }
        if let Some((other, _)) = macs[..i].iter().find(|(_, m)| m == mac) {
            bail!("{who} and {other} have the same MAC {}", format_mac(mac));
        }
    }
    Ok(())
}

/// One device to serve, of any kind.
#[derive(Debug)]
enum Device {
    Vbd(BlkBackend),
    Vif(NetBackend),
    Console(ConsoleBackend),
}

impl Device {
    /// Runs the device's state machine (see [`run_device`]) until its domain is gone.
    fn run(
        &self,
        xs: XenStore<xenstore::Connection>,
        id: DeviceId,
        ready: impl FnOnce(),
    ) -> pvkit_backends::xen::Result<()> {
        match self {
            Device::Vbd(be) => run_device(xs, id, be, ready),
            Device::Vif(be) => run_device(xs, id, be, ready),
            Device::Console(be) => run_device(xs, id, be, ready),
        }
    }
}

fn main() {
    pvkit_backends::crash::install("pvkit-xen-backend");
    pvkit_backends::vhost::init_logging();
    if let Err(e) = run() {
        eprintln!("pvkit-xen-backend: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    if cli.vbd.is_empty() && cli.vif.is_empty() && cli.console.is_empty() {
        bail!("nothing to serve: give at least one --vbd, --vif or --console");
    }
    // Everything that can fail on the command line's account fails before XenStore is touched.
    let mut devices: Vec<(DeviceId, Device)> = Vec::new();
    let gnt = GntDev::open().context("the grant device (is xen-gntdev loaded?)")?;
    for v in &cli.vbd {
        let core = BlockCore::open(
            &v.path,
            BlockOptions {
                read_only: v.read_only,
                direct: cli.direct,
                writethrough: cli.writethrough,
            },
        )
        .with_context(|| format!("vbd {}", v.devid))?;
        tracing::info!(devid = v.devid, image = %v.path.display(), sectors = core.capacity(), read_only = v.read_only, "vbd");
        devices.push((
            DeviceId {
                domid: cli.domid,
                kind: "vbd",
                devid: v.devid,
            },
            Device::Vbd(BlkBackend::new(Arc::new(core), gnt.clone())),
        ));
    }
    check_macs(&cli)?;
    let switch = Switch::new();
    let echo = if !cli.vif.is_empty() && !cli.no_echo_peer {
        Some(
            EchoPeer::try_attach(&switch, cli.echo_mac, cli.echo_ip.octets())
                .context("the echo peer's --echo-mac")?,
        )
    } else {
        None
    };
    let tap = match &cli.tap {
        Some(name) => {
            let t = TapPort::attach(&switch, name).with_context(|| format!("tap interface {name}"))?;
            tracing::info!(tap = %name, "tap interface attached to the switch");
            Some(t)
        }
        None => None,
    };
    for v in &cli.vif {
        tracing::info!(devid = v.devid, mac = %format_mac(&v.mac), "vif");
        devices.push((
            DeviceId {
                domid: cli.domid,
                kind: "vif",
                devid: v.devid,
            },
            Device::Vif(NetBackend::new(switch.clone(), gnt.clone(), v.mac)),
        ));
    }
    for c in &cli.console {
        let sink = ConsoleSink::file_capped(&c.log, cli.console_log_max)
            .with_context(|| format!("console {}", c.devid))?;
        tracing::info!(devid = c.devid, log = %c.log.display(), echo = c.echo, "console");
        let input = cli.console_input.as_ref().map(|t| format!("{t}\n").into_bytes());
        devices.push((
            DeviceId {
                domid: cli.domid,
                kind: "console",
                devid: c.devid,
            },
            Device::Console(ConsoleBackend::new(gnt.clone(), sink, input, c.echo)),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (id, _) in &devices {
        if !seen.insert((id.kind, id.devid)) {
            bail!("{} {} given twice", id.kind, id.devid);
        }
    }
    let socket = cli.xenstore_socket.clone();
    // SIGINT/SIGTERM: remove the directories and leave.
    {
        let ids: Vec<DeviceId> = devices.iter().map(|(id, _)| id.clone()).collect();
        let socket = socket.clone();
        let mut signals =
            signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
                .context("installing signal handlers")?;
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "stopping: removing the devices");
                if let Ok(mut xs) = xenstore::open(socket.as_deref()) {
                    for id in &ids {
                        remove_device(&mut xs, id);
                    }
                }
                std::process::exit(0);
            }
        });
    }
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let mut threads = Vec::new();
    let count = devices.len();
    for (id, be) in devices {
        let xs = xenstore::open(socket.as_deref()).context("connecting to XenStore")?;
        let ready = ready_tx.clone();
        let name = id.to_string();
        threads.push(
            std::thread::Builder::new()
                .name(format!("{}-{}", id.kind, id.devid))
                .spawn(move || {
                    let r = be.run(xs, id, move || {
                        let _ = ready.send(());
                    });
                    if let Err(e) = &r {
                        tracing::error!(device = %name, "device setup failed: {e}");
                    }
                    r.is_ok()
                })?,
        );
    }
    drop(ready_tx);
    let ready = ready_rx.iter().take(count).count();
    if ready == count {
        println!(
            "pvkit-xen-backend: ready: {count} devices of domain {} wait for their frontends",
            cli.domid
        );
    }
    let mut ok = ready == count;
    for t in threads {
        ok &= t.join().unwrap_or(false);
    }
    if let Some(t) = &tap {
        let port = switch.port_counts(t.port()).unwrap_or_default();
        tracing::info!(tap = %t.name(), "tap: {:?}, port {port:?}", t.stats());
    }
    tracing::info!("switch: {:?}", switch.stats());
    if let Some(e) = echo {
        let s = e.stats();
        tracing::info!("echo peer: {s:?}");
    }
    if !ok {
        bail!("a device could not be set up (see the log above)");
    }
    tracing::info!("domain {} gone, exiting", cli.domid);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_arguments_parse_or_say_why_not() {
        let v = parse_vbd("51712:/dev/loop0:ro").unwrap();
        assert_eq!((v.devid, v.read_only), (51712, true));
        assert_eq!(v.path, PathBuf::from("/dev/loop0"));
        let e = parse_vbd("xvda:/img").unwrap_err();
        assert_eq!(e.to_string(), "device id \"xvda\" is not a number");
        assert!(parse_vbd("51712:").is_err());
        let n = parse_vif("0:00:16:3e:00:00:10").unwrap();
        assert_eq!(n.mac, [0, 0x16, 0x3e, 0, 0, 0x10]);
        assert!(parse_vif("0:00:16:3e").is_err());
        let c = parse_console("1:/tmp/hvc1.log").unwrap();
        assert_eq!(
            (c.devid, c.log, c.echo),
            (1, PathBuf::from("/tmp/hvc1.log"), false)
        );
        let c = parse_console("2:/tmp/hvc2.log:echo").unwrap();
        assert_eq!(
            (c.devid, c.log, c.echo),
            (2, PathBuf::from("/tmp/hvc2.log"), true)
        );
        assert!(parse_console("1::echo").is_err(), "echo still needs a log path");
        assert!(matches!(
            parse_console("0:/tmp/x.log"),
            Err(ArgError::ConsoleId(0))
        ));
        assert!(
            parse_console("0:/tmp/x.log")
                .unwrap_err()
                .to_string()
                .contains("start_info")
        );
        assert!(parse_console("10:/tmp/x.log").is_err());
        assert!(parse_console("1:").is_err());
        assert!(parse_console("hvc1").is_err());
    }

    #[test]
    fn vif_and_echo_macs_must_be_distinct_unicast_addresses() {
        let cli = |args: &[&str]| Cli::parse_from([&["pvkit-xen-backend", "--domid", "1"], args].concat());
        assert!(
            check_macs(&cli(&[
                "--vif",
                "0:00:16:3e:00:00:10",
                "--vif",
                "1:00:16:3e:00:00:11"
            ]))
            .is_ok()
        );
        let e = check_macs(&cli(&[
            "--vif",
            "0:00:16:3e:00:00:10",
            "--vif",
            "1:00:16:3e:00:00:10",
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("same MAC"), "{e}");
        let e = check_macs(&cli(&["--vif", "0:02:70:76:6b:69:74"])).unwrap_err();
        assert!(e.to_string().contains("echo peer"), "{e}");
        assert!(check_macs(&cli(&["--vif", "0:02:70:76:6b:69:74", "--no-echo-peer"])).is_ok());
        let e = check_macs(&cli(&["--vif", "0:01:00:5e:00:00:01"])).unwrap_err();
        assert!(e.to_string().contains("multicast"), "{e}");
    }
}
