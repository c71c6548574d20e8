//! The backend half of a xenbus device: its two XenStore directories and the state machine.
//!
//! A device of kind `k` (`vbd`, `vif`, `console`) with id `n` of domain `D`, served from dom0:
//! - frontend directory `/local/domain/D/device/k/n`, owned by `D` and readable by dom0: `backend`,
//!   `backend-id`, `state` and the kind's keys; the frontend adds its ring references there;
//! - backend directory `/local/domain/0/backend/k/D/n`, owned by dom0 and readable by `D`:
//!   `frontend`, `frontend-id`, `online`, `state` and the features the backend offers.
//!
//! [`run_device`] creates both, says `InitWait`, and then follows the frontend: once it is
//! `Initialised` or `Connected` the [`Backend`] maps its rings from the frontend keys it names
//! ([`Backend::frontend_reads`]: only those are read, one round trip each, at most
//! [`MAX_FRONTEND_READS`]; a guest's other keys cost nothing), refusing the device with a log line
//! and an `error` node if any of it is bad; a thread serves the rings, and the backend says
//! `Connected`; `Closing`/`Closed` from the frontend stop the rings, and a frontend that starts over
//! (`Initialising`) gets `InitWait` again. When the domain is gone (its home directory removed), the
//! device's directories are removed and [`run_device`] returns.
//!
//! What the guest controls is bounded: the watch on its `state` node is exact (events for nodes a
//! guest creates below it are dropped on arrival), the client's event queue is bounded and merges
//! repeats ([`super::xenstore`]), an event of the frontend's watch costs one read, and the lines a
//! guest can cause (refusals, reconnects, protocol violations) are logged through a per-device
//! [`RateLimit`].

use std::fmt;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ring_protocol::abi::xen::DomId;
use ring_protocol::abi::xenbus::XenbusState;
use vmm_sys_util::eventfd::EventFd;

use super::evtchn::{self, EventChannel};
use super::gntdev::GrantMapping;
use super::xenstore::{Access, NO_TX, Perm, TxId, XenStore};
use super::{Error, Result};
use crate::ratelimit::{RateLimit, limited_error, limited_info};

/// Frontend keys read per connect attempt at most (a 16-page blkif ring needs 19).
pub const MAX_FRONTEND_READS: usize = 32;
/// Rounds of [`Backend::frontend_reads`] per connect attempt at most.
const MAX_READ_ROUNDS: usize = 4;

/// One device's place in XenStore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceId {
    /// The frontend's domain.
    pub domid: DomId,
    /// `vbd`, `vif`, `console`.
    pub kind: &'static str,
    /// The device id (for a vbd, the virtual device number: 51712 is xvda).
    pub devid: u32,
}

impl DeviceId {
    /// The frontend directory.
    pub fn frontend(&self) -> String {
        format!("/local/domain/{}/device/{}/{}", self.domid, self.kind, self.devid)
    }

    /// The backend directory (dom0 serves).
    pub fn backend(&self) -> String {
        format!(
            "/local/domain/0/backend/{}/{}/{}",
            self.kind, self.domid, self.devid
        )
    }

    /// The domain's home directory; it disappears when the domain is destroyed.
    pub fn home(&self) -> String {
        format!("/local/domain/{}", self.domid)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} of domain {}", self.kind, self.devid, self.domid)
    }
}

/// Signalling the frontend: what an [`Engine`] calls once it published responses the frontend
/// asked to be told about. The project's one notify trait (ring-protocol's, also implemented by the
/// guest kernel): [`EventChannel`] implements it here; host tests and fuzz targets use
/// `ring_protocol::platform::fake::CountingNotifier` (feature `test-utils`) or their own.
pub use ring_protocol::platform::Notify;

/// The protocol half of a connected device: what it does with its rings, apart from how they are
/// mapped and signalled (host tests drive engines on local memory).
pub trait Engine: Send + 'static {
    /// Serves whatever the rings hold; `notify` signals the frontend. An error means the frontend
    /// broke the protocol (or the engine cannot go on): the rings stop and the device is closed.
    fn process(&mut self, notify: &dyn Notify) -> Result<()>;
    /// A one-line summary of what was served; `events` is how many events the frontend sent.
    fn summary(&self, events: u64) -> String;
    /// Another descriptor that means "work to do" (the net switch's wakeups, AIO completions), if
    /// any.
    fn extra_fd(&self) -> Option<RawFd> {
        None
    }
}

/// A connected device, as [`Backend::connect`] hands it to its serving thread: the engine, the
/// grant mappings its rings live in and its event channel.
pub struct Connected<E> {
    /// Declared before `_maps`: the engine's rings are dropped before their memory is unmapped.
    engine: E,
    _maps: Vec<GrantMapping>,
    channel: EventChannel,
}

impl<E> fmt::Debug for Connected<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connected")
            .field("mappings", &self._maps.len())
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl<E: Engine> Connected<E> {
    /// Puts the pieces together for the serving thread. `maps` must hold the memory of every ring
    /// `engine` serves: they are unmapped only after the engine is dropped.
    pub fn new(engine: E, maps: Vec<GrantMapping>, channel: EventChannel) -> Self {
        Connected {
            engine,
            _maps: maps,
            channel,
        }
    }

    fn process(&mut self) -> Result<()> {
        self.engine.process(&self.channel)
    }

    fn summary(&self) -> String {
        self.engine.summary(self.channel.events())
    }
}

/// What a device kind provides to [`run_device`].
pub trait Backend: Send + 'static {
    /// The protocol engine a connection of this kind runs.
    type Engine: Engine;
    /// Keys of the frontend directory besides `backend`, `backend-id` and `state`.
    fn frontend_keys(&self, id: &DeviceId) -> Vec<(String, String)>;
    /// Keys of the backend directory besides `frontend`, `frontend-id`, `online` and `state`
    /// (features, sizes).
    fn backend_keys(&self, id: &DeviceId) -> Vec<(String, String)>;
    /// The frontend keys [`connect`](Self::connect) looks at, given the ones read so far: called
    /// with an empty snapshot first, then again with what was read until it names nothing new
    /// (keys that depend on others, like `ring-ref0..N` on `ring-page-order`). Only these are read.
    fn frontend_reads(&self, so_far: &Frontend) -> Vec<String>;
    /// Reads the frontend's ring references and event channel from `front` (a snapshot of the keys
    /// named by [`frontend_reads`](Self::frontend_reads)) and maps the rings. An `Err` refuses the
    /// device with that reason.
    fn connect(&self, id: &DeviceId, front: &Frontend) -> Result<Connected<Self::Engine>>;
}

/// The frontend directory's keys as read at connection time (copied once, then validated).
#[derive(Debug, Default)]
pub struct Frontend {
    keys: Vec<(String, String)>,
}

impl Frontend {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.keys.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A required number: missing ([`Error::MissingKey`]) or malformed ([`Error::NotANumber`])
    /// values are refused, naming the key.
    pub fn number(&self, key: &str) -> Result<u64> {
        let v = self
            .get(key)
            .ok_or_else(|| Error::MissingKey { key: key.into() })?;
        parse_number(v).ok_or_else(|| Error::NotANumber {
            key: key.into(),
            value: v.into(),
        })
    }

    /// A required grant reference (a number that fits 32 bits, else [`Error::NotAGrantRef`]).
    pub fn grant_ref(&self, key: &str) -> Result<u32> {
        let value = self.number(key)?;
        u32::try_from(value).map_err(|_| Error::NotAGrantRef {
            key: key.into(),
            value,
        })
    }

    /// A required event channel port (a number that fits 32 bits, else
    /// [`Error::PortOutOfRange`]).
    pub fn port(&self, key: &str) -> Result<u32> {
        let value = self.number(key)?;
        u32::try_from(value).map_err(|_| Error::PortOutOfRange {
            key: key.into(),
            value,
        })
    }

    /// An optional number (absent is `None`, malformed is refused).
    pub fn opt_number(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.number(key).map(Some),
        }
    }

    /// A snapshot with the given keys (for tests and callers that read XenStore themselves).
    pub fn from_keys(keys: Vec<(String, String)>) -> Self {
        Frontend { keys }
    }

    /// Whether nothing was read (the first [`Backend::frontend_reads`] call).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Decimal, or hexadecimal with `0x` (what `strtoul(.., 0)` frontends may write).
fn parse_number(v: &str) -> Option<u64> {
    let v = v.trim_end_matches('\0').trim();
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

fn perms_frontend(domid: DomId) -> [Perm; 2] {
    [
        Perm {
            domid,
            access: Access::None,
        },
        Perm {
            domid: 0,
            access: Access::Read,
        },
    ]
}

fn perms_backend(domid: DomId) -> [Perm; 2] {
    [
        Perm {
            domid: 0,
            access: Access::None,
        },
        Perm {
            domid,
            access: Access::Read,
        },
    ]
}

fn write_node<S: Read + Write>(
    xs: &mut XenStore<S>,
    tx: TxId,
    path: &str,
    value: &str,
    perms: &[Perm],
) -> Result<()> {
    xs.write(tx, path, value.as_bytes())?;
    xs.set_perms(tx, path, perms)
}

/// Writes both directories of `id` (backend state `InitWait`, frontend state `Initialising`).
pub fn create_device<S: Read + Write, B: Backend>(xs: &mut XenStore<S>, id: &DeviceId, be: &B) -> Result<()> {
    let fe_dir = id.frontend();
    let be_dir = id.backend();
    let fe_perms = perms_frontend(id.domid);
    let be_perms = perms_backend(id.domid);
    let fe_keys = be.frontend_keys(id);
    let be_keys = be.backend_keys(id);
    xs.transaction(8, |xs, tx| {
        let kind_dir = format!("{}/device/{}", id.home(), id.kind);
        xs.mkdir(tx, &kind_dir)?;
        xs.set_perms(tx, &kind_dir, &fe_perms)?;
        xs.mkdir(tx, &fe_dir)?;
        xs.set_perms(tx, &fe_dir, &fe_perms)?;
        write_node(xs, tx, &format!("{fe_dir}/backend"), &be_dir, &fe_perms)?;
        write_node(xs, tx, &format!("{fe_dir}/backend-id"), "0", &fe_perms)?;
        write_node(
            xs,
            tx,
            &format!("{fe_dir}/state"),
            &state_text(XenbusState::Initialising),
            &fe_perms,
        )?;
        for (k, v) in &fe_keys {
            write_node(xs, tx, &format!("{fe_dir}/{k}"), v, &fe_perms)?;
        }
        xs.mkdir(tx, &be_dir)?;
        xs.set_perms(tx, &be_dir, &be_perms)?;
        write_node(xs, tx, &format!("{be_dir}/frontend"), &fe_dir, &be_perms)?;
        write_node(
            xs,
            tx,
            &format!("{be_dir}/frontend-id"),
            &id.domid.to_string(),
            &be_perms,
        )?;
        write_node(xs, tx, &format!("{be_dir}/online"), "1", &be_perms)?;
        for (k, v) in &be_keys {
            write_node(xs, tx, &format!("{be_dir}/{k}"), v, &be_perms)?;
        }
        write_node(
            xs,
            tx,
            &format!("{be_dir}/state"),
            &state_text(XenbusState::InitWait),
            &be_perms,
        )
    })
}

fn state_text(s: XenbusState) -> String {
    (s as u8).to_string()
}

fn set_state<S: Read + Write>(xs: &mut XenStore<S>, id: &DeviceId, s: XenbusState) -> Result<()> {
    xs.write(
        NO_TX,
        &format!("{}/state", id.backend()),
        state_text(s).as_bytes(),
    )
}

/// Reads the frontend keys `be` names (see [`Backend::frontend_reads`]), each once, at most
/// [`MAX_FRONTEND_READS`] of them: the snapshot `connect` validates.
fn read_front<S: Read + Write, B: Backend>(xs: &mut XenStore<S>, id: &DeviceId, be: &B) -> Result<Frontend> {
    let dir = id.frontend();
    let mut front = Frontend::default();
    let mut asked: Vec<String> = Vec::new();
    for _ in 0..MAX_READ_ROUNDS {
        let new: Vec<String> = be
            .frontend_reads(&front)
            .into_iter()
            .filter(|k| !asked.contains(k) && !k.is_empty() && !k.contains('/'))
            .collect();
        if new.is_empty() {
            break;
        }
        for k in new {
            if asked.len() >= MAX_FRONTEND_READS {
                return Ok(front);
            }
            if let Some(v) = xs.read_string(NO_TX, &format!("{dir}/{k}"))? {
                front.keys.push((k.clone(), v));
            }
            asked.push(k);
        }
    }
    Ok(front)
}

fn front_state<S: Read + Write>(xs: &mut XenStore<S>, id: &DeviceId) -> Result<Option<XenbusState>> {
    Ok(xs
        .read_string(NO_TX, &format!("{}/state", id.frontend()))?
        .and_then(|v| parse_number(&v))
        .and_then(XenbusState::from_number))
}

/// A thread serving one connected device's rings.
struct Serving {
    stop: Arc<EventFd>,
    thread: JoinHandle<()>,
}

/// How a serving thread tells the device's control thread that the frontend broke the protocol:
/// the reason, and an eventfd the control thread polls beside its XenStore connection.
struct Halted {
    signal: EventFd,
    why: Mutex<Option<Error>>,
}

impl Serving {
    fn start<E: Engine>(
        id: &DeviceId,
        mut rings: Connected<E>,
        halted: Arc<Halted>,
        log: Arc<RateLimit>,
    ) -> std::io::Result<Serving> {
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let (stop2, name) = (stop.clone(), id.to_string());
        let thread = std::thread::Builder::new()
            .name(format!("{}-{}-{}", id.kind, id.domid, id.devid))
            .spawn(move || {
                if let Err(e) = serve(&mut rings, &stop2) {
                    limited_error!(log, device = %name, "frontend broke the protocol, device halted: {e}");
                    *halted.why.lock().expect("halt reason") = Some(e);
                    let _ = halted.signal.write(1);
                }
                limited_info!(log, device = %name, "disconnected: {}", rings.summary());
            })?;
        Ok(Serving { stop, thread })
    }

    fn stop(self) {
        let _ = self.stop.write(1);
        let _ = self.thread.join();
    }
}

fn serve<E: Engine>(rings: &mut Connected<E>, stop: &EventFd) -> Result<()> {
    rings.process()?;
    loop {
        let mut extra = vec![stop.as_raw_fd()];
        extra.extend(rings.engine.extra_fd());
        let ready = evtchn::wait(&rings.channel, &extra, -1)
            .map_err(|error| Error::EventChannel { what: "poll", error })?;
        if ready.extra & 1 != 0 {
            return Ok(());
        }
        if ready.event {
            rings.channel.ack().map_err(|error| Error::EventChannel {
                what: "reading the event channel",
                error,
            })?;
        }
        if ready.extra & 2 != 0
            && let Some(fd) = rings.engine.extra_fd()
        {
            drain(fd);
        }
        rings.process()?;
    }
}

/// Blocks until `xs_fd` or `halt_fd` is readable; returns whether `halt_fd` is.
fn wait_readable(xs_fd: RawFd, halt_fd: RawFd) -> bool {
    let mut fds = [xs_fd, halt_fd].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        // SAFETY: two valid pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return rc > 0 && fds[1].revents & libc::POLLIN != 0;
        }
    }
}

/// Empties an eventfd.
fn drain(fd: std::os::fd::RawFd) {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a local u64 from a descriptor the rings own.
    unsafe { libc::read(fd, (&raw mut v).cast(), 8) };
}

/// Watch token of the frontend's `state` node.
const FE_TOKEN: &str = "fe";
/// Watch token of `@releaseDomain`.
const RELEASE_TOKEN: &str = "release";

/// Creates `id`'s directories and runs its state machine until the domain is gone (see the module
/// documentation). `ready` is called once the device waits for its frontend.
pub fn run_device<S: Read + Write + AsRawFd, B: Backend>(
    xs: XenStore<S>,
    id: DeviceId,
    be: &B,
    ready: impl FnOnce(),
) -> Result<()> {
    run_device_with(xs, id, be, ready, Arc::new(RateLimit::default()))
}

/// [`run_device`] with the device's log budget given (shared with whatever else logs for it).
pub fn run_device_with<S: Read + Write + AsRawFd, B: Backend>(
    mut xs: XenStore<S>,
    id: DeviceId,
    be: &B,
    ready: impl FnOnce(),
    log: Arc<RateLimit>,
) -> Result<()> {
    create_device(&mut xs, &id, be)?;
    xs.watch_exact(&format!("{}/state", id.frontend()), FE_TOKEN)?;
    xs.watch("@releaseDomain", RELEASE_TOKEN)?;
    tracing::info!(device = %id, backend = %id.backend(), "waiting for the frontend (InitWait)");
    ready();
    let mut state = XenbusState::InitWait;
    let mut serving: Option<Serving> = None;
    let halted = Arc::new(Halted {
        signal: EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?,
        why: Mutex::new(None),
    });
    loop {
        // Wait for XenStore or for the serving thread saying the frontend broke the protocol.
        if !xs.has_queued_events() && wait_readable(xs.stream_fd(), halted.signal.as_raw_fd()) {
            drain(halted.signal.as_raw_fd());
            if let Some(s) = serving.take() {
                s.stop();
            }
            let why = halted.why.lock().expect("halt reason").take();
            let msg = match why {
                Some(why) => format!("frontend broke the ring protocol: {why}"),
                None => "frontend broke the ring protocol".to_owned(),
            };
            xs.write(NO_TX, &format!("{}/error", id.backend()), msg.as_bytes())?;
            set_state(&mut xs, &id, XenbusState::Closing)?;
            state = XenbusState::Closing;
            continue;
        }
        let ev = xs.next_watch_event()?;
        if ev.token == RELEASE_TOKEN {
            // Some domain was released: ours?
            if xs.read(NO_TX, &id.home())?.is_none() {
                tracing::info!(device = %id, "domain gone, removing the device");
                break;
            }
            continue;
        }
        let fe = front_state(&mut xs, &id)?;
        match (state, fe) {
            (XenbusState::InitWait, Some(XenbusState::Initialised | XenbusState::Connected)) => {
                let front = read_front(&mut xs, &id, be)?;
                match be
                    .connect(&id, &front)
                    .and_then(|r| Serving::start(&id, r, halted.clone(), log.clone()).map_err(Error::Thread))
                {
                    Ok(s) => {
                        serving = Some(s);
                        set_state(&mut xs, &id, XenbusState::Connected)?;
                        state = XenbusState::Connected;
                        limited_info!(log, device = %id, "connected");
                    }
                    Err(why) => {
                        limited_error!(log, device = %id, "refused: {why}");
                        xs.write(
                            NO_TX,
                            &format!("{}/error", id.backend()),
                            why.to_string().as_bytes(),
                        )?;
                        set_state(&mut xs, &id, XenbusState::Closing)?;
                        state = XenbusState::Closing;
                    }
                }
            }
            (_, Some(XenbusState::Closing))
                if state != XenbusState::Closing && state != XenbusState::Closed =>
            {
                if let Some(s) = serving.take() {
                    s.stop();
                }
                set_state(&mut xs, &id, XenbusState::Closing)?;
                state = XenbusState::Closing;
            }
            (_, Some(XenbusState::Closed)) if state != XenbusState::Closed => {
                if let Some(s) = serving.take() {
                    s.stop();
                }
                set_state(&mut xs, &id, XenbusState::Closed)?;
                state = XenbusState::Closed;
            }
            (XenbusState::Closed | XenbusState::Closing, Some(XenbusState::Initialising)) => {
                let _ = xs.rm(NO_TX, &format!("{}/error", id.backend()));
                set_state(&mut xs, &id, XenbusState::InitWait)?;
                state = XenbusState::InitWait;
                limited_info!(log, device = %id, "frontend starts over: InitWait");
            }
            _ => {}
        }
    }
    if let Some(s) = serving.take() {
        s.stop();
    }
    let _ = xs.rm(NO_TX, &id.backend());
    Ok(())
}

/// Removes `id`'s backend directory (and the frontend's, if the domain still exists): used when the
/// daemon stops early.
pub fn remove_device<S: Read + Write>(xs: &mut XenStore<S>, id: &DeviceId) {
    let _ = xs.rm(NO_TX, &id.backend());
    let _ = xs.rm(NO_TX, &id.frontend());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_decimal_or_hex_and_nothing_else() {
        assert_eq!(parse_number("8"), Some(8));
        assert_eq!(parse_number("0x10"), Some(16));
        assert_eq!(parse_number(" 12\0"), Some(12));
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number("eight"), None);
        let f = Frontend::from_keys(vec![("ring-ref".into(), "junk".into())]);
        let e = f.number("ring-ref").unwrap_err();
        assert!(
            matches!(&e, Error::NotANumber { key, value } if key == "ring-ref" && value == "junk"),
            "{e}"
        );
        let e = f.number("event-channel").unwrap_err();
        assert!(
            matches!(&e, Error::MissingKey { key } if key == "event-channel"),
            "{e}"
        );
        assert!(e.to_string().contains("missing"), "{e}");
        assert_eq!(f.opt_number("ring-page-order").unwrap(), None);
        let f = Frontend::from_keys(vec![
            ("ring-ref".into(), "4294967296".into()),
            ("port".into(), "0x100000000".into()),
        ]);
        assert!(matches!(
            f.grant_ref("ring-ref"),
            Err(Error::NotAGrantRef {
                value: 4294967296,
                ..
            })
        ));
        assert!(matches!(
            f.port("port"),
            Err(Error::PortOutOfRange {
                value: 4294967296,
                ..
            })
        ));
    }

    #[test]
    fn directories_are_where_linux_and_xl_expect_them() {
        let id = DeviceId {
            domid: 7,
            kind: "vbd",
            devid: 51712,
        };
        assert_eq!(id.frontend(), "/local/domain/7/device/vbd/51712");
        assert_eq!(id.backend(), "/local/domain/0/backend/vbd/7/51712");
        assert_eq!(perms_frontend(7)[0].domid, 7);
        assert_eq!(perms_backend(7)[1].access, Access::Read);
    }

    use std::os::unix::net::UnixStream;
    use std::sync::atomic::Ordering;

    use crate::xen::xenstore::fake::FakeXenstored;

    /// The snapshots a [`Probe`] was given, one per connect attempt.
    type Snapshots = Arc<Mutex<Vec<Vec<(String, String)>>>>;

    /// A backend that reads the keys a ring protocol needs, records what it got and refuses.
    struct Probe {
        got: Snapshots,
    }

    /// The engine a [`Probe`] would run (it never connects).
    struct NoEngine;

    impl Engine for NoEngine {
        fn process(&mut self, _: &dyn Notify) -> Result<()> {
            Ok(())
        }
        fn summary(&self, _: u64) -> String {
            String::new()
        }
    }

    impl Backend for Probe {
        type Engine = NoEngine;
        fn frontend_keys(&self, _: &DeviceId) -> Vec<(String, String)> {
            Vec::new()
        }
        fn backend_keys(&self, _: &DeviceId) -> Vec<(String, String)> {
            vec![("feature-x".into(), "1".into())]
        }
        fn frontend_reads(&self, _: &Frontend) -> Vec<String> {
            vec!["ring-ref".into(), "event-channel".into()]
        }
        fn connect(&self, _: &DeviceId, front: &Frontend) -> Result<Connected<NoEngine>> {
            self.got.lock().unwrap().push(front.keys.clone());
            Err(Error::NoRxCopy)
        }
    }

    fn wait_for(store: &FakeXenstored, path: &str, value: &str) {
        for _ in 0..10_000 {
            if store.get(path).as_deref() == Some(value.as_bytes()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("{path} never became {value:?}");
    }

    /// The guest writes 1000 junk keys into its frontend directory, then `Initialised`: the
    /// backend's connect attempt costs XenStore a handful of round trips, not one per key, and
    /// the backend sees only the keys it reads.
    #[test]
    fn xenstore_connect_reads_only_the_protocol_keys() {
        let store = FakeXenstored::new();
        let mut toolstack = store.connect();
        toolstack.mkdir(NO_TX, "/local/domain/7").unwrap();
        let id = DeviceId {
            domid: 7,
            kind: "vbd",
            devid: 51712,
        };
        let xs = store.connect();
        let stats = xs.stats();
        let got = Arc::new(Mutex::new(Vec::new()));
        let probe = Probe { got: got.clone() };
        let dev = {
            let id = id.clone();
            std::thread::spawn(move || run_device(xs, id, &probe, || {}))
        };
        let (fe, be) = (id.frontend(), id.backend());
        wait_for(&store, &format!("{be}/state"), "2");
        let mut guest: XenStore<UnixStream> = store.connect();
        // As many keys as a directory listing can carry (more and the whole listing fails).
        for i in 0..400 {
            guest.write(NO_TX, &format!("{fe}/j{i}"), b"x").unwrap();
        }
        guest.write(NO_TX, &format!("{fe}/ring-ref"), b"8").unwrap();
        guest.write(NO_TX, &format!("{fe}/event-channel"), b"9").unwrap();
        let before = stats.requests.load(Ordering::Relaxed);
        guest.write(NO_TX, &format!("{fe}/state"), b"3").unwrap();
        wait_for(&store, &format!("{be}/state"), "5");
        let round_trips = stats.requests.load(Ordering::Relaxed) - before;
        eprintln!("round trips for one connect attempt: {round_trips}");
        let keys = got.lock().unwrap()[0].clone();
        assert!(keys.iter().any(|(k, v)| k == "ring-ref" && v == "8"));
        assert!(
            keys.iter().all(|(k, _)| !k.starts_with('j')),
            "junk read: {}",
            keys.len()
        );
        // One read of the frontend's state, one per key named, the error node, the state: 5. (Before
        // the keys were named, one connect attempt here cost 410: a directory listing and a read of
        // every key the guest had written.)
        assert!(round_trips <= 5, "{round_trips} round trips");
        store.release_domain(7);
        dev.join().unwrap().unwrap();
        assert!(store.get(&be).is_none(), "backend directory removed");
    }

    /// A guest that floods the nodes below its `state` (10,000 writes), writes more keys than a
    /// directory listing can carry, and then flips between `Initialising` and `Initialised` 30
    /// times: the flood costs the backend no XenStore request at all, each connect attempt a
    /// bounded number, and the refusals are logged at a bounded rate.
    #[test]
    fn xenstore_watch_flood_below_state_and_a_reconnect_loop_are_bounded() {
        let store = FakeXenstored::new();
        store.connect().mkdir(NO_TX, "/local/domain/7").unwrap();
        let id = DeviceId {
            domid: 7,
            kind: "vif",
            devid: 0,
        };
        let xs = store.connect();
        let stats = xs.stats();
        let log = Arc::new(RateLimit::steady(4, std::time::Duration::from_secs(3600)));
        let got = Arc::new(Mutex::new(Vec::new()));
        let probe = Probe { got: got.clone() };
        let dev = {
            let (id, log) = (id.clone(), log.clone());
            std::thread::spawn(move || run_device_with(xs, id, &probe, || {}, log))
        };
        let (fe, be) = (id.frontend(), id.backend());
        wait_for(&store, &format!("{be}/state"), "2");
        let mut guest = store.connect();
        for i in 0..2000 {
            guest.write(NO_TX, &format!("{fe}/junk-key-{i}"), b"x").unwrap();
        }
        guest.write(NO_TX, &format!("{fe}/ring-ref"), b"8").unwrap();
        guest.write(NO_TX, &format!("{fe}/event-channel"), b"9").unwrap();
        let before = stats.requests.load(Ordering::Relaxed);
        for i in 0..10_000 {
            guest.write(NO_TX, &format!("{fe}/state/{i}"), b"3").unwrap();
        }
        // Let the backend see them all (a sync point: its own next request comes after).
        guest.write(NO_TX, &format!("{fe}/state"), b"1").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let flood = stats.requests.load(Ordering::Relaxed) - before;
        assert!(flood <= 2, "the flood below state cost {flood} requests");
        assert!(stats.events_filtered.load(Ordering::Relaxed) >= 10_000);

        let before = stats.requests.load(Ordering::Relaxed);
        for _ in 0..30 {
            guest.write(NO_TX, &format!("{fe}/state"), b"3").unwrap();
            wait_for(&store, &format!("{be}/state"), "5");
            guest.write(NO_TX, &format!("{fe}/state"), b"1").unwrap();
            wait_for(&store, &format!("{be}/state"), "2");
        }
        let per_cycle = (stats.requests.load(Ordering::Relaxed) - before) as f64 / 30.0;
        eprintln!("XenStore requests per refused connect cycle: {per_cycle}");
        assert!(per_cycle <= 9.0, "{per_cycle} requests per cycle");
        assert_eq!(got.lock().unwrap().len(), 30, "thirty connect attempts");
        assert!(
            got.lock().unwrap().iter().all(|k| k.len() == 2),
            "only the two keys, every time"
        );
        // 30 refusals and 30 restarts: 4 lines passed, the rest counted.
        assert_eq!(log.suppressed_total(), 60 - 4);
        store.release_domain(7);
        dev.join().unwrap().unwrap();
    }
}
