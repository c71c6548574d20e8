//! A Linux tap interface as a port of the net core's switch: frames the host kernel sends out of
//! the interface enter the switch, frames the switch delivers to the port go to the kernel. This
//! connects guests on the switch to the host's own network stack (which then answers ARP and ping
//! like any peer). Needs `/dev/net/tun` and the right to create interfaces (root).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::net::{PortId, PortPolicy, PortSink, Switch};
use crate::{Error, Result};

/// `TUNSETIFF` (`_IOW('T', 202, int)`).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `IFF_TAP`: Ethernet frames.
const IFF_TAP: libc::c_short = 0x0002;
/// `IFF_NO_PI`: no packet information header before each frame.
const IFF_NO_PI: libc::c_short = 0x1000;
/// Largest frame read from the interface (the switch refuses anything beyond its MTU, counted in
/// its `bad_length`).
const MAX_FRAME: usize = 65_536;
/// Addresses learned on the tap's port at most (the host, and whatever it bridges or routes for):
/// the tap is a learning port, but it cannot claim an address a guest port is bound to.
pub const TAP_LEARNED: usize = 256;

/// `struct ifreq` with the flags member of its union (40 bytes on x86_64).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const _: () = assert!(size_of::<IfReq>() == 40);

/// Frames moved each way.
#[derive(Debug, Default)]
pub struct TapStats {
    /// Frames from the kernel into the switch.
    pub from_host: AtomicU64,
    /// Frames from the switch to the kernel.
    pub to_host: AtomicU64,
    /// Frames the kernel refused (interface down, ...).
    pub write_errors: AtomicU64,
}

/// A tap interface attached to a switch.
#[derive(Debug)]
pub struct TapPort {
    file: File,
    name: String,
    port: std::sync::OnceLock<PortId>,
    stats: TapStats,
}

fn tap_err(what: String, error: io::Error) -> Error {
    Error::Daemon {
        what,
        detail: error.to_string(),
    }
}

impl TapPort {
    /// Creates (or opens) tap interface `name`, attaches it to `switch` and starts the thread that
    /// forwards the kernel's frames into the switch. The interface still has to be brought up and
    /// given addresses by the host (`ip link set NAME up`).
    pub fn attach(switch: &Arc<Switch>, name: &str) -> Result<Arc<TapPort>> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(tap_err(
                format!("tap interface name {name:?}"),
                io::Error::new(io::ErrorKind::InvalidInput, "1 to 15 bytes"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|e| tap_err("opening /dev/net/tun".into(), e))?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads (and may update the name in) a valid `ifreq` that lives across the
        // call.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            return Err(tap_err(
                format!("creating tap interface {name} (TUNSETIFF)"),
                io::Error::last_os_error(),
            ));
        }
        let tap = Arc::new(TapPort {
            file,
            name: name.to_owned(),
            port: std::sync::OnceLock::new(),
            stats: TapStats::default(),
        });
        let port = switch
            .add_port_with(tap.clone(), PortPolicy::Learning { max: TAP_LEARNED })
            .expect("a learning port binds nothing");
        tap.port.set(port).expect("port set once");
        let (reader, sw) = (tap.clone(), Arc::downgrade(switch));
        std::thread::Builder::new()
            .name(format!("tap-{name}"))
            .spawn(move || {
                let mut buf = vec![0u8; MAX_FRAME];
                loop {
                    let n = match (&reader.file).read(&mut buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::warn!(tap = %reader.name, "reading the tap interface failed: {e}");
                            return;
                        }
                    };
                    let Some(switch) = sw.upgrade() else { return };
                    reader.stats.from_host.fetch_add(1, Ordering::Relaxed);
                    // Runts are counted and dropped by the switch.
                    let _ = switch.send(port, &buf[..n]);
                }
            })
            .map_err(|e| tap_err(format!("starting the reader of {name}"), e))?;
        Ok(tap)
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its port on the switch.
    pub fn port(&self) -> PortId {
        *self.port.get().expect("attached")
    }

    /// What it moved.
    pub fn stats(&self) -> &TapStats {
        &self.stats
    }
}

impl PortSink for TapPort {
    fn deliver(&self, frame: &[u8]) {
        // A tap takes a frame whole or not at all.
        match (&self.file).write(frame) {
            Ok(n) if n == frame.len() => {
                self.stats.to_host.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) | Err(_) => {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
