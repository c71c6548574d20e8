//! vhost-user-net: a virtio-net device as one guest port of the net core's switch.
//!
//! Queue 0 receives (switch to guest), queue 1 transmits (guest to switch). Every buffer starts with
//! the 12-byte `virtio_net_hdr_v1` (VERSION_1); no offloads are offered, so the header is all zero
//! except `num_buffers = 1` on receive. Frames for the guest wait in the port's bounded queue until the
//! guest posts receive buffers; a frame larger than the buffer it would land in is dropped and counted.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringT};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddressSpace};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{Connection, DaemonBackend, ExitEvents, Memory, Vring, features};
use crate::net::{PortId, QueuedPort, Switch};

/// Size of the virtio-net header with VERSION_1.
pub const NET_HDR_LEN: usize = 12;
/// Largest virtqueue offered.
pub const QUEUE_SIZE: usize = 256;
/// Frames a port holds for a guest without receive buffers.
const PORT_QUEUE: usize = 256;
const RX: usize = 0;
const TX: usize = 1;
/// Event id of the "frames for the guest" eventfd (ids 0..=2 are the two vrings and the exit event).
const RX_READY_EVENT: u16 = 3;

/// Counts for one connection.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Frames taken from the guest's transmit queue.
    pub tx_frames: AtomicU64,
    /// Frames put in the guest's receive buffers.
    pub rx_frames: AtomicU64,
    /// Frames dropped: bigger than the guest's buffer, or malformed chains.
    pub dropped: AtomicU64,
}

/// The vhost-user-net backend for one connection (one switch port).
pub struct VhostNet {
    switch: Arc<Switch>,
    port: PortId,
    queue: Arc<QueuedPort>,
    ready: Arc<EventFd>,
    mem: Memory,
    event_idx: AtomicBool,
    exit: ExitEvents,
    /// A frame popped from the port that found no receive buffer yet.
    held: Mutex<Option<Vec<u8>>>,
    stats: NetStats,
}

impl std::fmt::Debug for VhostNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostNet")
            .field("port", &self.port)
            .field("stats", &self.stats)
            .finish()
    }
}

impl VhostNet {
    /// Attaches a new port to `switch` for one connection's guest.
    pub fn attach(switch: &Arc<Switch>, mem: Memory) -> crate::Result<Self> {
        let ready = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(|e| crate::Error::Daemon {
            what: "creating the receive eventfd".into(),
            detail: e.to_string(),
        })?);
        let r2 = ready.clone();
        let queue = QueuedPort::new(
            PORT_QUEUE,
            Box::new(move || {
                let _ = r2.write(1);
            }),
        );
        let port = switch.add_port(queue.clone());
        Ok(VhostNet {
            switch: switch.clone(),
            port,
            queue,
            ready,
            mem,
            event_idx: AtomicBool::new(false),
            exit: ExitEvents::default(),
            held: Mutex::new(None),
            stats: NetStats::default(),
        })
    }

    /// This connection's counts.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    fn signal(vring: &Vring) {
        if vring.needs_notification().unwrap_or(true) {
            let _ = vring.signal_used_queue();
        }
    }

    fn process_tx(&self, vring: &Vring) -> io::Result<()> {
        let mem = self.mem.memory();
        loop {
            let chains: Vec<_> = {
                let mut state = vring.get_mut();
                let Ok(iter) = state.get_queue_mut().iter(mem.clone()) else {
                    return Ok(());
                };
                iter.collect()
            };
            if chains.is_empty() {
                return Ok(());
            }
            for chain in chains {
                let head = chain.head_index();
                let mut frame = Vec::with_capacity(1536);
                let mut ok = true;
                for d in chain {
                    if d.is_write_only() {
                        ok = false;
                        break;
                    }
                    let start = frame.len();
                    frame.resize(start + d.len() as usize, 0);
                    if mem.read_slice(&mut frame[start..], d.addr()).is_err() {
                        ok = false;
                        break;
                    }
                }
                if ok && frame.len() > NET_HDR_LEN {
                    self.stats.tx_frames.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = self.switch.send(self.port, &frame[NET_HDR_LEN..]) {
                        tracing::debug!("vhost-user-net: frame not switched: {e}");
                    }
                } else {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                vring
                    .add_used(head, 0)
                    .map_err(|e| io::Error::other(format!("tx add_used: {e}")))?;
            }
            Self::signal(vring);
        }
    }

    /// Moves queued frames into receive buffers until one side runs out. `Ok(true)` when a frame is
    /// left waiting for a buffer.
    fn process_rx(&self, vring: &Vring) -> io::Result<bool> {
        let mem = self.mem.memory();
        let mut held = self.held.lock().expect("held frame lock");
        let mut delivered = false;
        while let Some(frame) = held.take().or_else(|| self.queue.pop()) {
            let chain = {
                let mut state = vring.get_mut();
                state.get_queue_mut().pop_descriptor_chain(mem.clone())
            };
            let Some(chain) = chain else {
                *held = Some(frame);
                if delivered {
                    Self::signal(vring);
                }
                return Ok(true);
            };
            let head = chain.head_index();
            let mut hdr = [0u8; NET_HDR_LEN];
            hdr[10] = 1; // num_buffers
            let mut src = hdr.iter().chain(frame.iter()).copied();
            let total = NET_HDR_LEN + frame.len();
            let mut written = 0usize;
            let mut buf = Vec::new();
            for d in chain {
                if !d.is_write_only() || written == total {
                    break;
                }
                let n = (d.len() as usize).min(total - written);
                buf.clear();
                buf.extend(src.by_ref().take(n));
                if mem.write_slice(&buf, d.addr()).is_err() {
                    break;
                }
                written += n;
            }
            if written == total {
                self.stats.rx_frames.fetch_add(1, Ordering::Relaxed);
            } else {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                written = 0;
            }
            vring
                .add_used(head, written as u32)
                .map_err(|e| io::Error::other(format!("rx add_used: {e}")))?;
            delivered = true;
        }
        if delivered {
            Self::signal(vring);
        }
        Ok(false)
    }

    /// Delivers what can be delivered. Receive buffers only matter while a frame waits for one, so
    /// only then does it ask the driver for a kick (and re-checks, in case buffers came meanwhile).
    fn rx(&self, vring: &Vring) -> io::Result<()> {
        loop {
            if !self.process_rx(vring)? {
                return Ok(());
            }
            if !self.event_idx.load(Ordering::Relaxed)
                || !vring.enable_notification().map_err(io::Error::other)?
            {
                return Ok(());
            }
        }
    }

    fn with_event_idx(&self, vring: &Vring, f: impl Fn(&Vring) -> io::Result<()>) -> io::Result<()> {
        if self.event_idx.load(Ordering::Relaxed) {
            loop {
                vring.disable_notification().map_err(io::Error::other)?;
                f(vring)?;
                if !vring.enable_notification().map_err(io::Error::other)? {
                    return Ok(());
                }
            }
        }
        f(vring)
    }
}

impl Drop for VhostNet {
    fn drop(&mut self) {
        let _ = self.switch.remove_port(self.port);
    }
}

impl DaemonBackend for VhostNet {
    fn exit_events(&self) -> &ExitEvents {
        &self.exit
    }
}

impl VhostUserBackend for VhostNet {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        2
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        // QEMU (>= 7.2) cannot start vhost-user-net without VHOST_USER_F_PROTOCOL_FEATURES.
        features::VERSION_1 | features::INDIRECT_DESC | features::EVENT_IDX | features::PROTOCOL_FEATURES
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn update_memory(&self, _mem: Memory) -> io::Result<()> {
        // `self.mem` is the same GuestMemoryAtomic the handler updates.
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.exit.create()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        tracing::trace!(device_event, "vhost-user-net: event");
        match device_event {
            e if e as usize == TX => {
                self.with_event_idx(&vrings[TX], |v| self.process_tx(v))?;
                // The echo peer answers synchronously: hand its replies over without another wakeup.
                self.rx(&vrings[RX])
            }
            e if e as usize == RX => self.rx(&vrings[RX]),
            RX_READY_EVENT => {
                let _ = self.ready.read();
                self.rx(&vrings[RX])
            }
            e => Err(io::Error::other(format!("unknown device event {e}"))),
        }
    }
}

/// Builds a [`VhostNet`] per connection on one switch.
#[derive(Debug)]
pub struct NetConnections {
    /// The switch every connection's port joins.
    pub switch: Arc<Switch>,
}

impl Connection<VhostNet> for NetConnections {
    fn relayed(&self) -> bool {
        true
    }

    fn backend(&mut self, mem: &Memory) -> crate::Result<Arc<VhostNet>> {
        Ok(Arc::new(VhostNet::attach(&self.switch, mem.clone())?))
    }

    fn started(
        &mut self,
        daemon: &VhostUserDaemon<Arc<VhostNet>>,
        backend: &Arc<VhostNet>,
    ) -> crate::Result<()> {
        let handlers = daemon.get_epoll_handlers();
        let h = handlers.first().ok_or_else(|| crate::Error::Daemon {
            what: "registering the receive eventfd".into(),
            detail: "no vring worker".into(),
        })?;
        h.register_listener(backend.ready.as_raw_fd(), EventSet::IN, u64::from(RX_READY_EVENT))
            .map_err(|e| crate::Error::Daemon {
                what: "registering the receive eventfd".into(),
                detail: e.to_string(),
            })
    }
}
