//! vhost-user adapters over the cores, on rust-vmm's `vhost-user-backend`.
//!
//! - [`blk`]: virtio-blk over [`crate::block::BlockCore`];
//! - [`net`]: virtio-net as a guest port of a [`crate::net::Switch`];
//! - [`serve`]: the accept loop the daemons run: one [`VhostUserDaemon`] per connection, so that a
//!   QEMU that quits (or is killed) and starts again finds the socket waiting.
//!
//! A daemon's worker threads only end when their exit event fires, and `VhostUserDaemon`'s drop joins
//! them; a backend without an exit event makes that drop hang. Both backends here hand out a fresh
//! exit event per worker ([`ExitEvents`]), so each finished connection's daemon is dropped and its
//! threads joined before the next accept (no threads or mappings accumulate across reconnects).

pub mod blk;
pub mod net;
pub mod relay;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::event::{EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier};

/// Guest memory as the daemons see it (no dirty-page tracking).
pub type Memory = GuestMemoryAtomic<GuestMemoryMmap<()>>;
/// A vring of that memory.
pub type Vring = VringRwLock<Memory>;

/// virtio feature bits shared by both devices.
pub(crate) mod features {
    /// VIRTIO_F_VERSION_1.
    pub const VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    /// VIRTIO_RING_F_INDIRECT_DESC.
    pub const INDIRECT_DESC: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
    /// VIRTIO_RING_F_EVENT_IDX.
    pub const EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
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

/// A backend the accept loop can serve.
pub trait DaemonBackend: VhostUserBackend<Bitmap = (), Vring = Vring> + 'static {
    /// The exit events it handed to its worker threads.
    fn exit_events(&self) -> &ExitEvents;
}

/// What one connection's daemon is built from: called once per accepted connection with that
/// connection's guest memory, it returns the backend and a hook run after the daemon exists (to
/// register extra event sources with its worker threads).
pub trait Connection<B: DaemonBackend> {
    /// A backend for a new connection.
    fn backend(&mut self, mem: &Memory) -> crate::Result<Arc<B>>;
    /// Whether QEMU's messages go through [`relay`] (vhost-user-net needs it).
    fn relayed(&self) -> bool {
        false
    }
    /// Called with the daemon before it starts accepting.
    fn started(&mut self, _daemon: &VhostUserDaemon<Arc<B>>, _backend: &Arc<B>) -> crate::Result<()> {
        Ok(())
    }
}

fn daemon_err(what: &str, e: impl std::fmt::Display) -> crate::Error {
    crate::Error::Daemon {
        what: what.to_owned(),
        detail: e.to_string(),
    }
}

/// Listens on `socket` (replacing a stale socket file) and serves connections one after another,
/// forever, or until `max_connections` have been served (tests). Each connection gets a fresh
/// backend and daemon; when the peer disconnects, the daemon is dropped (its threads joined) and the
/// next connection is accepted.
pub fn serve<B, C>(
    name: &str,
    socket: &Path,
    mut conn: C,
    max_connections: Option<usize>,
) -> crate::Result<()>
where
    B: DaemonBackend,
    C: Connection<B>,
{
    enum Accept {
        Direct(Listener),
        Relayed {
            public: std::os::unix::net::UnixListener,
            inner: std::path::PathBuf,
        },
    }
    let listen_err = |e: &dyn std::fmt::Display| daemon_err(&format!("listening on {}", socket.display()), e);
    let mut accept = if conn.relayed() {
        let _ = std::fs::remove_file(socket);
        let public = std::os::unix::net::UnixListener::bind(socket).map_err(|e| listen_err(&e))?;
        // In the temp directory: a Unix socket path must fit in 108 bytes, whatever `socket` is.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let inner = std::env::temp_dir().join(format!("pvkit-vu-relay-{}-{n}.sock", std::process::id()));
        Accept::Relayed { public, inner }
    } else {
        Accept::Direct(Listener::new(socket, true).map_err(|e| listen_err(&e))?)
    };
    tracing::info!(socket = %socket.display(), "{name}: listening");
    let mut served = 0usize;
    while max_connections.is_none_or(|m| served < m) {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let backend = conn.backend(&mem)?;
        let mut daemon = VhostUserDaemon::new(name.to_owned(), backend.clone(), mem)
            .map_err(|e| daemon_err("creating the daemon", e))?;
        conn.started(&daemon, &backend)?;
        let relay = match &mut accept {
            Accept::Direct(listener) => {
                daemon
                    .start(listener)
                    .map_err(|e| daemon_err("accepting a connection", e))?;
                None
            }
            Accept::Relayed { public, inner } => {
                let (front, _) = public
                    .accept()
                    .map_err(|e| daemon_err("accepting a connection", e))?;
                let mut l = Listener::new(&*inner, true)
                    .map_err(|e| daemon_err(&format!("listening on {}", inner.display()), e))?;
                let back = std::os::unix::net::UnixStream::connect(&*inner)
                    .map_err(|e| daemon_err("connecting the relay", e))?;
                daemon
                    .start(&mut l)
                    .map_err(|e| daemon_err("accepting the relay", e))?;
                drop(l);
                let t = std::thread::Builder::new()
                    .name("vhost-user relay".into())
                    .spawn(move || relay::relay(front, back))
                    .map_err(|e| daemon_err("starting the relay", e))?;
                Some(t)
            }
        };
        served += 1;
        tracing::info!(connection = served, "{name}: frontend connected");
        match daemon.wait() {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => tracing::info!(connection = served, "{name}: frontend disconnected"),
            Err(e) => tracing::warn!(connection = served, "{name}: connection ended: {e}"),
        }
        if let Some(t) = relay {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("{name}: relay ended: {e}"),
                Err(_) => tracing::warn!("{name}: relay thread panicked"),
            }
        }
        drop(daemon);
        // SAFETY: the daemon is dropped: its handler joined the worker threads, which were the only
        // users of the exit events.
        unsafe { backend.exit_events().close_all() };
        drop(backend);
        tracing::debug!(connection = served, "{name}: connection state released");
    }
    Ok(())
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
