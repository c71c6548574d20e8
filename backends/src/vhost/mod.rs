//! vhost-user adapters over the cores, on rust-vmm's `vhost-user-backend`.
//!
//! - [`blk`]: virtio-blk over [`crate::block::BlockCore`];
//! - [`net`]: virtio-net as a guest port of a [`crate::net::Switch`];
//! - [`relay`]: every frontend message passes through it: it refuses what the protocol or these
//!   devices do not allow before the library sees it (the frontend, a VMM, may be hostile), and it
//!   absorbs one QEMU ordering quirk;
//! - [`serve`]: the accept loop the daemons run: one [`VhostUserDaemon`] per connection, so that a
//!   QEMU that quits (or is killed) and starts again finds the socket waiting.
//!
//! A daemon's worker threads only end when their exit event fires, and `VhostUserDaemon`'s drop joins
//! them; a backend without an exit event makes that drop hang. Both backends here hand out a fresh
//! exit event per worker ([`ExitEvents`]), so each finished connection's daemon is dropped and its
//! threads joined before the next accept (no threads or mappings accumulate across reconnects).
//! For the same reason no event handler may loop for as long as a peer likes: `drive` processes at
//! most [`ROUNDS_PER_EVENT`] batches per event and then yields through a resume eventfd, and a queue
//! the driver broke is stopped ([`Health`]) instead of being asked again.

pub mod blk;
pub mod net;
pub mod relay;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::event::{EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier};

use crate::ratelimit::RateLimit;
use crate::warn_limited;

/// Guest memory as the daemons see it (no dirty-page tracking).
pub type Memory = GuestMemoryAtomic<GuestMemoryMmap<()>>;
/// A vring of that memory.
pub type Vring = VringRwLock<Memory>;

/// virtio feature bits shared by both devices.
pub(crate) mod features {
    use ring_protocol::abi::virtio::{
        VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, feature,
    };

    /// VIRTIO_F_VERSION_1.
    pub const VERSION_1: u64 = feature(VIRTIO_F_VERSION_1);
    /// VIRTIO_RING_F_INDIRECT_DESC.
    pub const INDIRECT_DESC: u64 = feature(VIRTIO_RING_F_INDIRECT_DESC);
    /// VIRTIO_RING_F_EVENT_IDX.
    pub const EVENT_IDX: u64 = feature(VIRTIO_RING_F_EVENT_IDX);
    /// The vhost-user bit saying protocol features may be negotiated.
    pub const PROTOCOL_FEATURES: u64 =
        vhost::vhost_user::message::VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
}

/// Exit events handed to one daemon's worker threads.
///
/// `vhost-user-backend` 0.24 registers the consumer half with `into_raw_fd()` and never closes it, so
/// every connection would leak one eventfd per worker. The backend records the descriptors here and
/// [`serve`] closes them once that connection's daemon (and with it the worker threads and their epoll
/// instances) has been dropped.
#[derive(Debug, Default)]
pub struct ExitEvents {
    handed_out: Mutex<Vec<RawFd>>,
}

impl ExitEvents {
    /// A fresh exit event for one worker thread.
    pub fn create(&self) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()?;
        self.handed_out
            .lock()
            .expect("exit events lock")
            .push(consumer.as_raw_fd());
        Some((consumer, notifier))
    }

    /// Closes the consumers handed out so far.
    ///
    /// # Safety
    ///
    /// The daemon the events were handed to must be gone (its worker threads joined), so that nothing
    /// uses these descriptors any more; they have not been closed by anyone else (the library leaks
    /// them), so the numbers still name those eventfds.
    unsafe fn close_all(&self) {
        for fd in self.handed_out.lock().expect("exit events lock").drain(..) {
            // SAFETY: per this function's contract the descriptor is open, ours, and unused.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
}

/// Why a queue was stopped: the driver (or the VMM) left it in a state the device cannot go on from.
#[derive(Debug, thiserror::Error)]
pub enum QueueFault {
    /// virtio-queue refused an access: an available index more than a ring ahead (the CVE-2016-5403
    /// class), a ring outside guest memory, a used-ring write that failed.
    #[error("{op}: {error}")]
    Ring {
        /// What the device was doing.
        op: &'static str,
        /// What virtio-queue said.
        error: virtio_queue::Error,
    },
    /// The available index says there is more, yet nothing could be taken from the ring (its
    /// entries are outside guest memory: a queue size or memory table changed under the ring).
    /// Asking again would never end.
    #[error("the available index runs ahead of entries the device can read")]
    Stalled,
}

impl QueueFault {
    pub(crate) fn ring(op: &'static str) -> impl FnOnce(virtio_queue::Error) -> QueueFault {
        move |error| QueueFault::Ring { op, error }
    }
}

/// Per-queue "stopped" latches of one device.
///
/// A queue the driver broke is stopped: logged once, never processed again until the frontend stops
/// the ring (`GET_VRING_BASE`, which is how a vhost-user frontend resets a device) or the connection
/// ends. This is the device side of virtio's DEVICE_NEEDS_RESET: vhost-user gives the backend no way
/// to set that status bit (the frontend owns the status; `vhost-user-backend` 0.24 keeps the error
/// eventfd private), so the device only stops.
#[derive(Debug)]
pub struct Health {
    broken: Vec<AtomicBool>,
    faults: AtomicU64,
    rounds: AtomicU64,
}

impl Health {
    /// All of `queues` healthy.
    pub fn new(queues: usize) -> Self {
        Health {
            broken: (0..queues).map(|_| AtomicBool::new(false)).collect(),
            faults: AtomicU64::new(0),
            rounds: AtomicU64::new(0),
        }
    }

    /// Batches processed so far, all queues together (one per look at a ring): a broken or hostile
    /// ring must not make this grow without the driver doing anything.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    pub(crate) fn count_round(&self) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether queue `q` is stopped (an unknown queue counts as stopped).
    pub fn is_broken(&self, q: usize) -> bool {
        self.broken.get(q).is_none_or(|b| b.load(Ordering::Acquire))
    }

    /// Whether any queue is stopped.
    pub fn any_broken(&self) -> bool {
        self.broken.iter().any(|b| b.load(Ordering::Acquire))
    }

    /// Times a queue was stopped so far.
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    /// Stops queue `q`; `true` the first time (the caller then does what stopping means for its
    /// device). Logged once per stop, through `log`.
    pub(crate) fn stop(&self, name: &str, q: usize, fault: &QueueFault, log: &RateLimit) -> bool {
        let Some(b) = self.broken.get(q) else {
            return false;
        };
        if b.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.faults.fetch_add(1, Ordering::Relaxed);
        warn_limited!(
            log,
            "{name}: queue {q} stopped until the frontend resets it: {fault}"
        );
        true
    }

    /// Queue `q` starts again (the frontend stopped the ring).
    pub(crate) fn restart(&self, q: usize) {
        if let Some(b) = self.broken.get(q) {
            b.store(false, Ordering::Release);
        }
    }
}

/// Batches one event may process before its handler yields to the worker's other events (the exit
/// event among them). A batch is at most one ring's worth of chains.
pub const ROUNDS_PER_EVENT: usize = 4;

/// What [`drive`] left.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Drive {
    /// Nothing more to do until the driver notifies.
    Idle,
    /// Work is left: the caller re-arms its resume event and returns.
    Yield,
}

/// Whether the frontend has started `vring` and enabled it. Notification settings live in the
/// rings, so they are only touched on an active ring (a ring not set up yet would have them written
/// at its default address, guest address 0).
pub(crate) fn active(vring: &Vring) -> bool {
    use virtio_queue::QueueT;
    let state = vring.get_ref();
    state.get_queue().ready() && state.is_enabled()
}

/// Processes `vring` with `round` (one batch per call; `Ok(true)` if it did anything) until the
/// driver has nothing more, at most [`ROUNDS_PER_EVENT`] times. With EVENT_IDX, notifications are
/// disabled while processing and re-enabled after each round (the re-enable publishes avail_event;
/// a chain added before it would otherwise be missed, hence the re-check).
pub(crate) fn drive(
    vring: &Vring,
    event_idx: bool,
    mut round: impl FnMut(&Vring) -> Result<bool, QueueFault>,
) -> Result<Drive, QueueFault> {
    if !active(vring) {
        return Ok(Drive::Idle);
    }
    // Whether the re-enable said more was there: an honest driver published those entries before
    // the index (release), so the next round takes at least one.
    let mut pending = false;
    for _ in 0..ROUNDS_PER_EVENT {
        if event_idx {
            vring
                .disable_notification()
                .map_err(QueueFault::ring("disabling notifications"))?;
            if !round(vring)? && pending {
                // Unless the frontend stopped the ring meanwhile (GET_VRING_BASE).
                return if active(vring) {
                    Err(QueueFault::Stalled)
                } else {
                    Ok(Drive::Idle)
                };
            }
            if !vring
                .enable_notification()
                .map_err(QueueFault::ring("enabling notifications"))?
            {
                return Ok(Drive::Idle);
            }
            pending = true;
        } else if !round(vring)? {
            return Ok(Drive::Idle);
        }
    }
    Ok(Drive::Yield)
}

/// An extra event source a backend wants on one of its worker threads.
#[derive(Debug, Clone, Copy)]
pub struct ExtraEvent {
    /// Index of the worker thread.
    pub thread: usize,
    /// The descriptor (readable = event).
    pub fd: RawFd,
    /// The event id passed to `handle_event` (greater than the number of queues).
    pub id: u16,
}

/// A backend the accept loop can serve.
pub trait DaemonBackend: VhostUserBackend<Bitmap = (), Vring = Vring> + 'static {
    /// The exit events it handed to its worker threads.
    fn exit_events(&self) -> &ExitEvents;
    /// Extra event sources to register with the worker threads before the frontend connects.
    fn listeners(&self) -> Vec<ExtraEvent> {
        Vec::new()
    }
}

/// What one connection's daemon is built from: called once per accepted connection with that
/// connection's guest memory, it returns the backend.
pub trait Connection<B: DaemonBackend> {
    /// A backend for a new connection; `log` limits the peer-triggered warnings of this socket.
    fn backend(&mut self, mem: &Memory, log: &Arc<RateLimit>) -> crate::Result<Arc<B>>;
}

/// How [`serve`] runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Serve this many connections, then return (tests); `None`: forever.
    pub max_connections: Option<usize>,
    /// Accept guest memory whose file could shrink under the daemon (no `F_SEAL_SHRINK`). The
    /// daemon would die of SIGBUS if the VMM shrank it; only for `memory-backend-file` setups with a
    /// trusted VMM.
    pub allow_unsealed_memory: bool,
    /// Most guest memory one connection may map.
    pub max_memory: u64,
    /// Limits the peer-triggered warnings of this socket's connections (all of them together).
    pub log: Arc<RateLimit>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: None,
            allow_unsealed_memory: false,
            max_memory: relay::DEFAULT_MAX_MEMORY,
            log: Arc::new(RateLimit::peer_log()),
        }
    }
}

fn daemon_err(what: &str, e: impl std::fmt::Display) -> crate::Error {
    crate::Error::Daemon {
        what: what.to_owned(),
        detail: e.to_string(),
    }
}

/// Listens on `socket` (replacing a stale socket file) and serves connections one after another,
/// forever, or until `options.max_connections` have been served (tests). Each connection gets a
/// fresh backend and daemon, and its messages pass through [`relay`]; when the peer disconnects (or
/// the relay refuses one of its messages), the daemon is dropped (its threads joined) and the next
/// connection is accepted. Only failing to listen is an error: whatever goes wrong with one
/// connection is logged and the loop goes on.
pub fn serve<B, C>(name: &str, socket: &Path, mut conn: C, options: &ServeOptions) -> crate::Result<()>
where
    B: DaemonBackend,
    C: Connection<B>,
{
    let _ = std::fs::remove_file(socket);
    let public = std::os::unix::net::UnixListener::bind(socket)
        .map_err(|e| daemon_err(&format!("listening on {}", socket.display()), e))?;
    // In the temp directory: a Unix socket path must fit in 108 bytes, whatever `socket` is.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let inner = std::env::temp_dir().join(format!("pvkit-vu-relay-{}-{n}.sock", std::process::id()));
    tracing::info!(socket = %socket.display(), "{name}: listening");
    let mut served = 0usize;
    while options.max_connections.is_none_or(|m| served < m) {
        match serve_one(name, &public, &inner, &mut conn, options, served + 1) {
            Ok(()) => served += 1,
            Err(e) => {
                // A local failure (descriptors or memory exhausted, ...): not the peer's doing to
                // end the daemon for; wait a little so that a persistent one does not spin.
                warn_limited!(options.log, "{name}: connection setup failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let _ = std::fs::remove_file(&inner);
    Ok(())
}

/// Accepts and serves one connection to its end.
fn serve_one<B, C>(
    name: &str,
    public: &std::os::unix::net::UnixListener,
    inner: &Path,
    conn: &mut C,
    options: &ServeOptions,
    number: usize,
) -> crate::Result<()>
where
    B: DaemonBackend,
    C: Connection<B>,
{
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let backend = conn.backend(&mem, &options.log)?;
    let policy = relay::Policy {
        // The library adds REPLY_ACK to whatever the backend offers.
        protocol_features: (backend.protocol_features()
            | vhost::vhost_user::message::VhostUserProtocolFeatures::REPLY_ACK)
            .bits(),
        queues: u32::try_from(backend.num_queues()).unwrap_or(u32::MAX),
        max_queue_size: u32::try_from(backend.max_queue_size()).unwrap_or(u32::MAX),
        allow_unsealed_memory: options.allow_unsealed_memory,
        max_memory: options.max_memory,
    };
    let result = (|| {
        let mut daemon = VhostUserDaemon::new(name.to_owned(), backend.clone(), mem)
            .map_err(|e| daemon_err("creating the daemon", e))?;
        let handlers = daemon.get_epoll_handlers();
        for l in backend.listeners() {
            let h = handlers
                .get(l.thread)
                .ok_or_else(|| daemon_err("registering an event", format!("no worker {}", l.thread)))?;
            h.register_listener(l.fd, vmm_sys_util::epoll::EventSet::IN, u64::from(l.id))
                .map_err(|e| daemon_err("registering an event", e))?;
        }
        let (front, _) = public
            .accept()
            .map_err(|e| daemon_err("accepting a connection", e))?;
        let mut l = Listener::new(inner, true)
            .map_err(|e| daemon_err(&format!("listening on {}", inner.display()), e))?;
        let back = std::os::unix::net::UnixStream::connect(inner)
            .map_err(|e| daemon_err("connecting the relay", e))?;
        daemon
            .start(&mut l)
            .map_err(|e| daemon_err("accepting the relay", e))?;
        drop(l);
        let relay = std::thread::Builder::new()
            .name("vhost-user relay".into())
            .spawn(move || relay::relay(front, back, policy))
            .map_err(|e| daemon_err("starting the relay", e))?;
        tracing::info!(connection = number, "{name}: frontend connected");
        match daemon.wait() {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => tracing::info!(connection = number, "{name}: frontend disconnected"),
            Err(e) => warn_limited!(options.log, "{name}: connection {number} ended: {e}"),
        }
        match relay.join() {
            Ok(Ok(())) => {}
            Ok(Err(relay::RelayError::Refused(r))) => warn_limited!(
                options.log,
                "{name}: connection {number}: refused a frontend message and closed the connection: {r}"
            ),
            Ok(Err(e)) => tracing::debug!("{name}: relay ended: {e}"),
            Err(_) => tracing::warn!("{name}: relay thread panicked"),
        }
        drop(daemon);
        Ok(())
    })();
    // SAFETY: the daemon is dropped (or was never created): its handler joined the worker threads,
    // which were the only users of the exit events.
    unsafe { backend.exit_events().close_all() };
    drop(backend);
    let suppressed = options.log.take_suppressed();
    if suppressed > 0 {
        tracing::warn!(
            connection = number,
            suppressed,
            "{name}: similar messages suppressed"
        );
    }
    tracing::debug!(connection = number, "{name}: connection state released");
    result
}

/// Logs to stderr; `RUST_LOG` filters (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// On SIGINT or SIGTERM: runs `cleanup` (sync the image, ...), removes `socket`, logs, and exits the
/// process with status 0. The daemons' threads hold no state that needs more than that.
pub fn on_shutdown_signal(socket: &Path, cleanup: impl FnOnce() + Send + 'static) -> crate::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| daemon_err("installing signal handlers", e))?;
    let socket = socket.to_owned();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "shutting down");
                cleanup();
                let _ = std::fs::remove_file(&socket);
                std::process::exit(0);
            }
        })
        .map_err(|e| daemon_err("starting the signal thread", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueOwnedT;
    use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};

    const MEM: u64 = 0x10000;

    /// A ready, enabled 256-entry vring with EVENT_IDX whose available ring starts 64 bytes before
    /// the end of guest memory: its index and first entries are readable, the rest is not.
    fn ring_at_the_edge() -> (Memory, Vring) {
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap(),
        );
        let vring = Vring::new(mem.clone(), 256).unwrap();
        vring.set_queue_size(256);
        vring.set_queue_info(0x0, MEM - 64, 0x4000).unwrap();
        vring.set_queue_event_idx(true);
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        (mem, vring)
    }

    /// One round as the devices do it: take every available chain.
    fn take_all(mem: &Memory, vring: &Vring) -> Result<bool, QueueFault> {
        let m = mem.memory();
        let mut state = vring.get_mut();
        let chains: Vec<_> = state
            .get_queue_mut()
            .iter(m.clone())
            .map_err(QueueFault::ring("reading the available ring"))?
            .collect();
        Ok(!chains.is_empty())
    }

    #[test]
    fn cve_2016_5403_index_beyond_the_ring_is_a_fault_not_a_loop() {
        let (mem, vring) = ring_at_the_edge();
        // 300 entries published on a 256-entry ring.
        mem.memory().write_obj(300u16, GuestAddress(MEM - 62)).unwrap();
        let mut rounds = 0;
        let r = drive(&vring, true, |v| {
            rounds += 1;
            take_all(&mem, v)
        });
        assert!(
            matches!(
                r,
                Err(QueueFault::Ring {
                    error: virtio_queue::Error::InvalidAvailRingIndex,
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!(rounds, 1);
    }

    #[test]
    fn cve_2016_5403_entries_outside_memory_stall_is_a_fault_not_a_loop() {
        let (mem, vring) = ring_at_the_edge();
        // 100 entries published; only the first 30 (4 + 2 * 30 = 64 bytes) lie in guest memory.
        mem.memory().write_obj(100u16, GuestAddress(MEM - 62)).unwrap();
        let mut rounds = 0;
        let r = drive(&vring, true, |v| {
            rounds += 1;
            take_all(&mem, v)
        });
        assert!(matches!(r, Err(QueueFault::Stalled)), "{r:?}");
        assert_eq!(
            rounds, 2,
            "one round with the readable entries, one that took nothing"
        );
        assert_eq!(vring.queue_next_avail(), 30);
    }

    #[test]
    fn drive_yields_after_its_share_of_rounds() {
        let (mem, vring) = ring_at_the_edge();
        // A driver that always has more: every round takes something, then the index moves on.
        let mut rounds = 0u16;
        let r = drive(&vring, true, |_| {
            rounds += 1;
            let next = vring_next_avail_plus(&vring, 1);
            mem.memory().write_obj(next, GuestAddress(MEM - 62)).unwrap();
            Ok(true)
        });
        assert_eq!(r.unwrap(), Drive::Yield);
        assert_eq!(usize::from(rounds), ROUNDS_PER_EVENT);
        // Without EVENT_IDX: rounds until one takes nothing, at most the same share.
        let mut left = 2;
        let r = drive(&vring, false, |_| {
            left -= 1;
            Ok(left > 0)
        });
        assert_eq!(r.unwrap(), Drive::Idle);
        assert!(drive(&vring, false, |_| Ok(true)).unwrap() == Drive::Yield);
    }

    fn vring_next_avail_plus(vring: &Vring, n: u16) -> u16 {
        vring.queue_next_avail().wrapping_add(n)
    }
}
