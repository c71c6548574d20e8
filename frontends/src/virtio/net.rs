//! virtio-net on the crate's split `VirtQueue` (queue 0 receive, queue 1 transmit), one descriptor
//! per frame: a [`DmaBuf`](crate::dma::DmaBuf) holding `virtio_net_hdr_v1` (12 bytes, all zero: no offloads) and the
//! frame. Frames are copied once each way between the caller's slice and the DMA buffer (counted in
//! `bytes_copied`).
//!
//! Kicks follow [`NotifyMode`](super::transport::NotifyMode): with EVENT_IDX and `exact`, reposting a
//! receive buffer costs no kick while the device still has buffers to fill (QEMU asks to be kicked
//! only for the index after the last one it took), so an echo costs about one kick (the transmit),
//! where `virtio-drivers`' `VirtIONetRaw` kicks for both.

use alloc::sync::Arc;

use bitflags::bitflags;
use ring_protocol::abi::virtio::{
    VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP, VIRTIO_RING_F_EVENT_IDX,
    VirtioNetConfig, VirtioNetHdrV1, feature,
};

use zerocopy::IntoBytes;

use super::VirtioPlatform;
use super::pair::QueuePair;
use super::transport::{VirtioPci, VirtioTransport};
use crate::counters::{AtomicCounters, Counters};
use crate::net::{ETH_HEADER_LEN, NetDevice};
use crate::wait::SharedIrqAck;
use crate::{Error, Result};

const NAME: &str = "virtio-net";
/// Descriptors per queue.
const QUEUE_SIZE: usize = 32;
/// Receive buffers kept posted.
const RX_BUFFERS: usize = 16;
/// Transmit buffers in flight at most.
const TX_BUFFERS: usize = 16;
/// `virtio_net_hdr_v1` (with `num_buffers`), the header every buffer starts with under VERSION_1.
const HDR_LEN: usize = size_of::<VirtioNetHdrV1>();
/// Header + the largest frame (1514 bytes), rounded up.
const BUF_LEN: usize = 2048;
const MTU: usize = 1500;
/// Offsets in the config space.
const CONFIG_MAC: usize = core::mem::offset_of!(VirtioNetConfig, mac);
const CONFIG_STATUS: usize = core::mem::offset_of!(VirtioNetConfig, status);

bitflags! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Features: u64 {
        const MAC = feature(VIRTIO_NET_F_MAC);
        const STATUS = feature(VIRTIO_NET_F_STATUS);
        const RING_EVENT_IDX = feature(VIRTIO_RING_F_EVENT_IDX);
        const VERSION_1 = feature(VIRTIO_F_VERSION_1);
    }
}

const _: () = assert!(HDR_LEN + ETH_HEADER_LEN + MTU <= BUF_LEN);
const _: () = assert!(RX_BUFFERS <= QUEUE_SIZE && TX_BUFFERS <= QUEUE_SIZE);

/// A virtio-net device on the platform `P`.
pub struct VirtioNet<P: VirtioPlatform, T: VirtioTransport = VirtioPci> {
    transport: T,
    queues: QueuePair<P, QUEUE_SIZE>,
    mac: [u8; 6],
    status_feature: bool,
    counters: Arc<AtomicCounters>,
}

impl<P: VirtioPlatform, T: VirtioTransport> core::fmt::Debug for VirtioNet<P, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioNet")
            .field("mac", &self.mac)
            .field("event_idx", &self.queues.event_idx())
            .finish_non_exhaustive()
    }
}

impl<P: VirtioPlatform> VirtioNet<P, VirtioPci> {
    /// Sends both queues' interrupts to MSI-X table entry `entry` (see [`VirtioPci::use_msix`]).
    pub fn use_msix(&mut self, entry: u16) -> bool {
        self.transport.use_msix(2, entry)
    }
}

impl<P: VirtioPlatform, T: VirtioTransport> VirtioNet<P, T> {
    /// Initialises the device and posts the receive buffers.
    pub fn new(mut transport: T) -> Result<Self> {
        let wanted = Features::MAC | Features::STATUS | Features::RING_EVENT_IDX | Features::VERSION_1;
        let features = transport.begin_init(wanted);
        if !features.contains(Features::VERSION_1) {
            return Err(Error::Init {
                device: NAME,
                reason: "device does not offer VIRTIO_F_VERSION_1",
            });
        }
        let mut mac = [0u8; 6];
        if features.contains(Features::MAC) {
            for (i, b) in mac.iter_mut().enumerate() {
                *b = transport.read_config_space::<u8>(CONFIG_MAC + i)?;
            }
        }
        let event_idx = features.contains(Features::RING_EVENT_IDX);
        let mut queues = QueuePair::new(&mut transport, NAME, event_idx)?;
        transport.finish_init();
        queues.fill(&mut transport, RX_BUFFERS, TX_BUFFERS, BUF_LEN)?;
        let counters = transport.counters();
        Ok(Self {
            transport,
            queues,
            mac,
            status_feature: features.contains(Features::STATUS),
            counters,
        })
    }

    /// Whether EVENT_IDX was negotiated.
    pub fn event_idx(&self) -> bool {
        self.queues.event_idx()
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }
}

impl<P: VirtioPlatform, T: VirtioTransport> NetDevice for VirtioNet<P, T> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn link_up(&self) -> bool {
        // Without VIRTIO_NET_F_STATUS the link is always up.
        !self.status_feature
            || self
                .transport
                .read_config_space::<u16>(CONFIG_STATUS)
                .is_ok_and(|s| s & VIRTIO_NET_S_LINK_UP != 0)
    }

    fn mtu(&self) -> usize {
        MTU
    }

    fn transmit(&mut self, frame: &[u8]) -> Result<()> {
        let max = ETH_HEADER_LEN + MTU;
        if frame.len() < ETH_HEADER_LEN || frame.len() > max {
            return Err(Error::BadLength {
                op: "transmit",
                len: frame.len(),
                unit: 1,
                max,
            });
        }
        self.queues.reclaim_tx()?;
        let counters = &self.counters;
        let queued = self
            .queues
            .send(&mut self.transport, HDR_LEN + frame.len(), |bytes| {
                // No offloads: an all-zero header.
                bytes[..HDR_LEN].copy_from_slice(VirtioNetHdrV1::default().as_bytes());
                bytes[HDR_LEN..].copy_from_slice(frame);
                counters.copied(frame.len() as u64);
            })?;
        if !queued {
            return Err(Error::QueueFull {
                device: NAME,
                in_flight: self.queues.tx_buffers(),
            });
        }
        Ok(())
    }

    fn receive(&mut self, out: &mut [u8]) -> Result<Option<usize>> {
        self.queues.reclaim_tx()?;
        let Some((i, used)) = self.queues.take_rx()? else {
            return Ok(None);
        };
        // Copy, then check: the length the device claims must fit the buffer and hold a header.
        let result = if !(HDR_LEN..=BUF_LEN).contains(&used) {
            Err(Error::Protocol {
                device: NAME,
                what: "received length outside the buffer",
                value: used as u64,
            })
        } else if used - HDR_LEN > out.len() {
            Err(Error::BadLength {
                op: "receive",
                len: used - HDR_LEN,
                unit: 1,
                max: out.len(),
            })
        } else {
            let len = used - HDR_LEN;
            out[..len].copy_from_slice(&self.queues.rx_bytes(i)[HDR_LEN..used]);
            self.counters.copied(len as u64);
            Ok(Some(len))
        };
        // Re-post the buffer whatever happened to the frame.
        self.queues.post_rx(&mut self.transport, i)?;
        result
    }

    fn irq_ack(&self) -> Option<SharedIrqAck> {
        Some(self.transport.irq_ack())
    }

    fn counters(&self) -> Counters {
        self.counters.snapshot()
    }
}
