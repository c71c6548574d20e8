//! virtio-console, port 0 only (no `VIRTIO_CONSOLE_F_MULTIPORT`), on the crate's `VirtQueue`.
//!
//! Receive: [`RX_BUFFERS`] page buffers stay posted on queue 0; a filled one is drained by
//! [`ConsoleDevice::read`] and posted again. Transmit: [`ConsoleDevice::write`] copies up to a page
//! into a free buffer and queues it on queue 1 without waiting; buffers are reclaimed on later calls.

use alloc::sync::Arc;

use bitflags::bitflags;
use ring_protocol::abi::virtio::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, feature};
use virtio_drivers::transport::Transport;

use super::VirtioPlatform;
use super::pair::QueuePair;
use super::transport::VirtioPci;
use crate::console::ConsoleDevice;
use crate::counters::{AtomicCounters, Counters};
use crate::dma::PAGE_SIZE;
use crate::wait::SharedIrqAck;
use crate::{Error, Result};

const NAME: &str = "virtio-console";
const QUEUE_SIZE: usize = 8;
/// Receive buffers kept posted.
pub const RX_BUFFERS: usize = 4;
/// Transmit buffers in flight at most.
pub const TX_BUFFERS: usize = 4;

bitflags! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Features: u64 {
        const RING_EVENT_IDX = feature(VIRTIO_RING_F_EVENT_IDX);
        const VERSION_1 = feature(VIRTIO_F_VERSION_1);
    }
}

/// A filled receive buffer being drained.
#[derive(Debug)]
struct Pending {
    index: usize,
    len: usize,
    cursor: usize,
}

/// A virtio-console device (port 0).
pub struct VirtioConsole<P: VirtioPlatform> {
    transport: VirtioPci,
    queues: QueuePair<P, QUEUE_SIZE>,
    /// The filled receive buffer being drained (not posted meanwhile).
    pending: Option<Pending>,
    counters: Arc<AtomicCounters>,
}

impl<P: VirtioPlatform> core::fmt::Debug for VirtioConsole<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioConsole")
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl<P: VirtioPlatform> VirtioConsole<P> {
    /// Initialises the device and posts the receive buffers.
    pub fn new(mut transport: VirtioPci) -> Result<Self> {
        let features = transport.begin_init(Features::RING_EVENT_IDX | Features::VERSION_1);
        let event_idx = features.contains(Features::RING_EVENT_IDX);
        let mut queues = QueuePair::new(&mut transport, NAME, event_idx)?;
        transport.finish_init();
        queues.fill(&mut transport, RX_BUFFERS, TX_BUFFERS, PAGE_SIZE)?;
        let counters = transport.counters();
        Ok(Self {
            transport,
            queues,
            pending: None,
            counters,
        })
    }

    /// Sends both queues' interrupts to MSI-X table entry `entry` (see [`VirtioPci::use_msix`]).
    pub fn use_msix(&mut self, entry: u16) -> bool {
        self.transport.use_msix(2, entry)
    }
}

impl<P: VirtioPlatform> ConsoleDevice for VirtioConsole<P> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn write(&mut self, data: &[u8]) -> Result<usize> {
        self.queues.reclaim_tx()?;
        if data.is_empty() {
            return Ok(0);
        }
        let n = data.len().min(PAGE_SIZE);
        let counters = &self.counters;
        let queued = self.queues.send(&mut self.transport, n, |bytes| {
            bytes.copy_from_slice(&data[..n]);
            counters.copied(n as u64);
        })?;
        Ok(if queued { n } else { 0 })
    }

    fn read(&mut self, out: &mut [u8]) -> Result<usize> {
        self.queues.reclaim_tx()?;
        if self.pending.is_none() {
            let Some((index, len)) = self.queues.take_rx()? else {
                return Ok(0);
            };
            if len > PAGE_SIZE {
                return Err(Error::Protocol {
                    device: NAME,
                    what: "received length past the buffer",
                    value: len as u64,
                });
            }
            self.pending = Some(Pending {
                index,
                len,
                cursor: 0,
            });
        }
        let p = self.pending.as_mut().expect("set above");
        let n = out.len().min(p.len - p.cursor);
        out[..n].copy_from_slice(&self.queues.rx_bytes(p.index)[p.cursor..p.cursor + n]);
        p.cursor += n;
        self.counters.copied(n as u64);
        if p.cursor == p.len {
            let index = p.index;
            self.pending = None;
            self.queues.post_rx(&mut self.transport, index)?;
        }
        Ok(n)
    }

    fn irq_ack(&self) -> Option<SharedIrqAck> {
        Some(self.transport.irq())
    }

    fn counters(&self) -> Counters {
        self.counters.snapshot()
    }
}
