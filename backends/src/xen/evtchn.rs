//! Interdomain event channels through dom0's `/dev/xen/evtchn`.
//!
//! Each [`EventChannel`] owns its own open of the device with exactly one bound port, so a device's
//! thread can `poll` that descriptor alone. The device's protocol: `read` returns the (4-byte) numbers
//! of ports that fired, each of which stays masked until its number is written back; an ioctl sends a
//! notification; closing the descriptor unbinds.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use ring_protocol::abi::xen::DomId;

use super::sys::{EvtchnBindInterdomain, EvtchnPortArg, IOCTL_EVTCHN_BIND_INTERDOMAIN, IOCTL_EVTCHN_NOTIFY};

/// The event channel device node.
pub const EVTCHN_PATH: &str = "/dev/xen/evtchn";

/// One interdomain channel bound in this process.
#[derive(Debug)]
pub struct EventChannel {
    file: File,
    local_port: u32,
    remote: (DomId, u32),
    notifies: AtomicU64,
    events: AtomicU64,
}

impl EventChannel {
    /// Binds our end of `remote_domain`'s unbound port `remote_port` (which it allocated for dom0).
    pub fn bind_interdomain(remote_domain: DomId, remote_port: u32) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(EVTCHN_PATH)?;
        let mut arg = EvtchnBindInterdomain {
            remote_domain: u32::from(remote_domain),
            remote_port,
        };
        // SAFETY: a valid argument struct that lives across the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), IOCTL_EVTCHN_BIND_INTERDOMAIN, &mut arg) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EventChannel {
            file,
            local_port: rc as u32,
            remote: (remote_domain, remote_port),
            notifies: AtomicU64::new(0),
            events: AtomicU64::new(0),
        })
    }

    /// Our local port number.
    pub fn local_port(&self) -> u32 {
        self.local_port
    }

    /// The remote domain and port.
    pub fn remote(&self) -> (DomId, u32) {
        self.remote
    }

    /// Notifications sent so far.
    pub fn notifies(&self) -> u64 {
        self.notifies.load(Ordering::Relaxed)
    }

    /// Events received (and acknowledged) so far.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Sends an event to the other end.
    pub fn notify(&self) -> io::Result<()> {
        let mut arg = EvtchnPortArg {
            port: self.local_port,
        };
        // SAFETY: a valid argument struct that lives across the call.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), IOCTL_EVTCHN_NOTIFY, &mut arg) } < 0 {
            return Err(io::Error::last_os_error());
        }
        self.notifies.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Takes pending events without blocking and unmasks the port again; returns whether one was
    /// pending. Call after `poll` said the descriptor is readable, then look at the ring.
    pub fn ack(&self) -> io::Result<bool> {
        let mut buf = [0u8; 64];
        let n = match (&self.file).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        };
        let fired = buf[..n]
            .chunks_exact(4)
            .any(|c| u32::from_ne_bytes(c.try_into().expect("4 bytes")) == self.local_port);
        if n > 0 {
            self.events.fetch_add(1, Ordering::Relaxed);
            (&self.file).write_all(&self.local_port.to_ne_bytes())?;
        }
        Ok(fired)
    }
}

/// The ring protocol's notification, through this channel: a failed send is reported as
/// [`NotifyFailed`](ring_protocol::Error::NotifyFailed) with the negative errno.
impl ring_protocol::platform::Notify for EventChannel {
    fn notify(&self) -> ring_protocol::Result<()> {
        EventChannel::notify(self).map_err(|e| ring_protocol::Error::NotifyFailed {
            status: -e.raw_os_error().unwrap_or(libc::EIO),
        })
    }
}

impl AsRawFd for EventChannel {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

use std::os::unix::fs::OpenOptionsExt;

/// What woke [`wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    /// The event channel's descriptor is readable.
    pub event: bool,
    /// Which of the extra descriptors are readable (bit i for `extra[i]`).
    pub extra: u32,
}

/// Blocks until the channel or one of `extra` (at most 31) is readable, or `timeout_ms` passed
/// (negative: no timeout).
pub fn wait(ch: &EventChannel, extra: &[RawFd], timeout_ms: i32) -> io::Result<Ready> {
    let mut fds: Vec<libc::pollfd> = std::iter::once(ch.as_raw_fd())
        .chain(extra.iter().copied())
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let ready = |p: &libc::pollfd| p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0;
        let mut extra_bits = 0u32;
        for (i, p) in fds[1..].iter().enumerate() {
            if ready(p) {
                extra_bits |= 1 << i;
            }
        }
        return Ok(Ready {
            event: ready(&fds[0]),
            extra: extra_bits,
        });
    }
}
