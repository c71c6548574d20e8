//! vhost-user-net: a virtio-net device as one guest port of the net core's switch.
//!
//! Queue 0 receives (switch to guest), queue 1 transmits (guest to switch). Every buffer starts with
//! the 12-byte `virtio_net_hdr_v1` (VERSION_1); no offloads are offered, so the header is all zero
//! except `num_buffers = 1` on receive. Frames for the guest wait in the port's bounded queue until the
//! guest posts receive buffers; a frame larger than the buffer it would land in is dropped and counted.
//!
//! Neither GSO nor an MTU is offered, so a transmitted frame is at most a standard Ethernet frame
//! ([`MAX_FRAME`], VLAN tag included) behind the header. A transmit chain claiming more is dropped and
//! counted ([`NetStats::oversized`]) from its descriptor lengths alone, before a byte is copied or
//! allocated: frames are copied into one fixed buffer of [`MAX_TX_CHAIN`] bytes. A ring the driver
//! broke stops the device: the port leaves the switch until the frontend resets the rings.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ring_protocol::abi::virtio::{Le16, VirtioNetHdrV1};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_queue::QueueOwnedT;
use vm_memory::{Bytes, GuestAddressSpace};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use zerocopy::IntoBytes;

use super::{
    Connection, DaemonBackend, Drive, ExitEvents, ExtraEvent, Health, Memory, QueueFault, ROUNDS_PER_EVENT,
    Vring, drive, features,
};
use crate::net::{ETH_HEADER_LEN, PortId, QueuedPort, Switch};
use crate::ratelimit::RateLimit;

/// Size of the virtio-net header with VERSION_1 (`virtio_net_hdr_v1`).
pub const NET_HDR_LEN: usize = size_of::<VirtioNetHdrV1>();
/// Largest Ethernet frame a guest may transmit: MTU 1500 (no MTU feature is offered, so the driver's
/// is the default), the header, a VLAN tag.
pub const MAX_FRAME: usize = ETH_HEADER_LEN + 1500 + 4;
/// Largest transmit chain: the virtio-net header and one frame.
pub const MAX_TX_CHAIN: usize = NET_HDR_LEN + MAX_FRAME;
/// Largest virtqueue offered.
pub const QUEUE_SIZE: usize = 256;
/// Frames a port holds for a guest without receive buffers.
const PORT_QUEUE: usize = 256;
const RX: usize = 0;
const TX: usize = 1;
/// Event id of the "frames for the guest" eventfd (ids 0..=2 are the two vrings and the exit event).
const RX_READY_EVENT: u16 = 3;
/// Event id of the resume eventfd: written when a handler yields with work left.
const RESUME_EVENT: u16 = 4;

/// Counts for one connection.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Frames taken from the guest's transmit queue and handed to the switch.
    pub tx_frames: AtomicU64,
    /// Frames put in the guest's receive buffers.
    pub rx_frames: AtomicU64,
    /// Frames dropped: bigger than the guest's buffer, malformed chains, oversized transmits.
    pub dropped: AtomicU64,
    /// Transmit chains refused for claiming more than [`MAX_TX_CHAIN`] bytes (also in `dropped`).
    pub oversized: AtomicU64,
}

/// The vhost-user-net backend for one connection (one switch port).
pub struct VhostNet {
    switch: Arc<Switch>,
    /// The switch port; `None` while the device is stopped.
    port: Mutex<Option<PortId>>,
    queue: Arc<QueuedPort>,
    ready: Arc<EventFd>,
    resume: EventFd,
    mem: Memory,
    event_idx: AtomicBool,
    exit: ExitEvents,
    /// A frame popped from the port that found no receive buffer yet.
    held: Mutex<Option<Vec<u8>>>,
    stats: NetStats,
    health: Health,
    log: Arc<RateLimit>,
}

impl std::fmt::Debug for VhostNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostNet")
            .field("port", &self.port)
            .field("stats", &self.stats)
            .field("health", &self.health)
            .finish()
    }
}

/// What [`VhostNet::process_rx`] left.
#[derive(Debug, PartialEq, Eq)]
enum Rx {
    /// No frame waiting.
    Empty,
    /// A frame waits for a receive buffer.
    NeedBuffers,
    /// Frames and buffers are left, but this round's share is used up.
    More,
}

fn daemon_err(what: &str, e: impl std::fmt::Display) -> crate::Error {
    crate::Error::Daemon {
        what: what.to_owned(),
        detail: e.to_string(),
    }
}

impl VhostNet {
    /// Attaches a new port to `switch` for one connection's guest; `log` limits its peer-triggered
    /// warnings.
    pub fn attach(switch: &Arc<Switch>, mem: Memory, log: Arc<RateLimit>) -> crate::Result<Self> {
        let ready =
            Arc::new(EventFd::new(EFD_NONBLOCK).map_err(|e| daemon_err("creating the receive eventfd", e))?);
        let resume = EventFd::new(EFD_NONBLOCK).map_err(|e| daemon_err("creating the resume eventfd", e))?;
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
            port: Mutex::new(Some(port)),
            queue,
            ready,
            resume,
            mem,
            event_idx: AtomicBool::new(false),
            exit: ExitEvents::default(),
            held: Mutex::new(None),
            stats: NetStats::default(),
            health: Health::new(2),
            log,
        })
    }

    /// This connection's counts.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// Which queues are stopped.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The switch port, or `None` while the device is stopped.
    pub fn port(&self) -> Option<PortId> {
        *self.port.lock().expect("port lock")
    }

    /// Frames waiting in the port for the guest.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    fn signal(vring: &Vring) {
        if vring.needs_notification().unwrap_or(true) {
            let _ = vring.signal_used_queue();
        }
    }

    /// Stops the device: queue `q` is broken, the port leaves the switch (frames for this guest stop
    /// piling up, its addresses are forgotten), frames waiting are dropped.
    fn stop(&self, q: usize, fault: &QueueFault) {
        if self.health.stop("vhost-user-net", q, fault, &self.log) {
            if let Some(p) = self.port.lock().expect("port lock").take() {
                let _ = self.switch.remove_port(p);
            }
            self.held.lock().expect("held frame lock").take();
            while self.queue.pop().is_some() {}
        }
    }

    /// The frontend stopped ring `q`: once no queue is stopped any more, the port joins the switch
    /// again.
    fn restart(&self, q: usize) {
        self.health.restart(q);
        if !self.health.any_broken() {
            let mut port = self.port.lock().expect("port lock");
            if port.is_none() {
                *port = Some(self.switch.add_port(self.queue.clone()));
            }
        }
    }

    /// One batch of transmitted frames: every chain available now (at most a ring's worth).
    fn process_tx(&self, vring: &Vring) -> Result<bool, QueueFault> {
        self.health.count_round();
        let mem = self.mem.memory();
        let chains: Vec<_> = {
            let mut state = vring.get_mut();
            match state.get_queue_mut().iter(mem.clone()) {
                Ok(iter) => iter.collect(),
                Err(virtio_queue::Error::QueueNotReady) => return Ok(false),
                Err(e) => return Err(QueueFault::ring("reading the transmit ring")(e)),
            }
        };
        if chains.is_empty() {
            return Ok(false);
        }
        let port = self.port();
        // The only buffer a frame is ever copied into: its size is the bound, whatever the
        // descriptors claim.
        let mut frame = [0u8; MAX_TX_CHAIN];
        for chain in chains {
            let head = chain.head_index();
            let mut len = 0usize;
            let mut ok = true;
            for d in chain {
                if d.is_write_only() {
                    ok = false;
                    break;
                }
                // Checked before touching memory: the claimed length alone decides.
                let Some(end) = len.checked_add(d.len() as usize).filter(|&e| e <= MAX_TX_CHAIN) else {
                    self.stats.oversized.fetch_add(1, Ordering::Relaxed);
                    ok = false;
                    break;
                };
                if mem.read_slice(&mut frame[len..end], d.addr()).is_err() {
                    ok = false;
                    break;
                }
                len = end;
            }
            match port {
                Some(port) if ok && len > NET_HDR_LEN => {
                    self.stats.tx_frames.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = self.switch.send(port, &frame[NET_HDR_LEN..len]) {
                        tracing::debug!("vhost-user-net: frame not switched: {e}");
                    }
                }
                _ => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            vring
                .add_used(head, 0)
                .map_err(QueueFault::ring("adding to the transmit used ring"))?;
        }
        Self::signal(vring);
        Ok(true)
    }

    /// Moves queued frames into receive buffers until one side runs out, at most a ring's worth.
    fn process_rx(&self, vring: &Vring) -> Result<Rx, QueueFault> {
        self.health.count_round();
        let mem = self.mem.memory();
        let mut held = self.held.lock().expect("held frame lock");
        let mut delivered = 0usize;
        let result = loop {
            if delivered == QUEUE_SIZE {
                break if held.is_some() || !self.queue.is_empty() {
                    Rx::More
                } else {
                    Rx::Empty
                };
            }
            let Some(frame) = held.take().or_else(|| self.queue.pop()) else {
                break Rx::Empty;
            };
            let chain = {
                let mut state = vring.get_mut();
                match state.get_queue_mut().iter(mem.clone()) {
                    Ok(mut iter) => iter.next(),
                    Err(virtio_queue::Error::QueueNotReady) => None,
                    Err(e) => return Err(QueueFault::ring("reading the receive ring")(e)),
                }
            };
            let Some(chain) = chain else {
                *held = Some(frame);
                break Rx::NeedBuffers;
            };
            let head = chain.head_index();
            let hdr = VirtioNetHdrV1 {
                num_buffers: Le16::new(1),
                ..Default::default()
            };
            let hdr = hdr.as_bytes();
            let total = NET_HDR_LEN + frame.len();
            let mut written = 0usize;
            for d in chain {
                if !d.is_write_only() || written == total {
                    break;
                }
                let n = (d.len() as usize).min(total - written);
                // The bytes [written, written + n) of header + frame.
                let (h, f) = if written < NET_HDR_LEN {
                    let h_end = (written + n).min(NET_HDR_LEN);
                    (&hdr[written..h_end], &frame[..n - (h_end - written)])
                } else {
                    (
                        &hdr[..0],
                        &frame[written - NET_HDR_LEN..written - NET_HDR_LEN + n],
                    )
                };
                if mem.write_slice(h, d.addr()).is_err() {
                    break;
                }
                let Some(at) = d.addr().0.checked_add(h.len() as u64) else {
                    break;
                };
                if !f.is_empty() && mem.write_slice(f, vm_memory::GuestAddress(at)).is_err() {
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
            // Fits: total <= NET_HDR_LEN + a switch frame, far below u32::MAX.
            vring
                .add_used(head, written as u32)
                .map_err(QueueFault::ring("adding to the receive used ring"))?;
            delivered += 1;
        };
        if delivered > 0 {
            Self::signal(vring);
        }
        Ok(result)
    }

    /// Delivers what can be delivered. Receive buffers only matter while a frame waits for one, so
    /// only then does it ask the driver for a kick (and re-checks, in case buffers came meanwhile).
    fn rx(&self, vring: &Vring) -> Result<Drive, QueueFault> {
        // Whether the re-enable said buffers were there (see `drive`): then the next round must
        // find one.
        let mut pending = false;
        for _ in 0..ROUNDS_PER_EVENT {
            match self.process_rx(vring)? {
                Rx::Empty => return Ok(Drive::Idle),
                Rx::More => pending = false,
                Rx::NeedBuffers if pending && super::active(vring) => return Err(QueueFault::Stalled),
                Rx::NeedBuffers => {
                    if !self.event_idx.load(Ordering::Relaxed)
                        || !super::active(vring)
                        || !vring
                            .enable_notification()
                            .map_err(QueueFault::ring("enabling receive notifications"))?
                    {
                        return Ok(Drive::Idle);
                    }
                    pending = true;
                }
            }
        }
        Ok(Drive::Yield)
    }

    /// Runs one queue's work; a fault stops the device, a yield re-arms the resume event.
    fn run(&self, q: usize, work: Result<Drive, QueueFault>) {
        match work {
            Ok(Drive::Idle) => {}
            Ok(Drive::Yield) => {
                let _ = self.resume.write(1);
            }
            Err(fault) => self.stop(q, &fault),
        }
    }
}

impl Drop for VhostNet {
    fn drop(&mut self) {
        if let Some(p) = self.port.get_mut().ok().and_then(Option::take) {
            let _ = self.switch.remove_port(p);
        }
    }
}

impl DaemonBackend for VhostNet {
    fn exit_events(&self) -> &ExitEvents {
        &self.exit
    }

    fn listeners(&self) -> Vec<ExtraEvent> {
        // Both queues are on worker thread 0.
        vec![
            ExtraEvent {
                thread: 0,
                fd: self.ready.as_raw_fd(),
                id: RX_READY_EVENT,
            },
            ExtraEvent {
                thread: 0,
                fd: self.resume.as_raw_fd(),
                id: RESUME_EVENT,
            },
        ]
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

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        self.restart(queue_index as usize);
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        tracing::trace!(device_event, "vhost-user-net: event");
        // Reset our own level-triggered eventfds first, stopped or not.
        match device_event {
            RX_READY_EVENT => {
                let _ = self.ready.read();
            }
            RESUME_EVENT => {
                let _ = self.resume.read();
            }
            e if usize::from(e) == TX || usize::from(e) == RX => {}
            e => return Err(io::Error::other(format!("unknown device event {e}"))),
        }
        if self.health.any_broken() {
            return Ok(());
        }
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        if matches!(device_event, RESUME_EVENT) || usize::from(device_event) == TX {
            self.run(TX, drive(&vrings[TX], event_idx, |v| self.process_tx(v)));
            if self.health.any_broken() {
                return Ok(());
            }
        }
        // The echo peer answers synchronously: hand its replies over without another wakeup.
        self.run(RX, self.rx(&vrings[RX]));
        Ok(())
    }
}

/// Builds a [`VhostNet`] per connection on one switch.
#[derive(Debug)]
pub struct NetConnections {
    /// The switch every connection's port joins.
    pub switch: Arc<Switch>,
}

impl Connection<VhostNet> for NetConnections {
    fn backend(&mut self, mem: &Memory, log: &Arc<RateLimit>) -> crate::Result<Arc<VhostNet>> {
        Ok(Arc::new(VhostNet::attach(
            &self.switch,
            mem.clone(),
            log.clone(),
        )?))
    }
}
