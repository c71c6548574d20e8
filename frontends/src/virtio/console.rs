//! virtio-console, port 0 only (no `VIRTIO_CONSOLE_F_MULTIPORT`), on the crate's `VirtQueue`.
//!
//! Receive: [`RX_BUFFERS`] page buffers stay posted on queue 0; a filled one is drained by
//! [`ConsoleDevice::read`] and posted again. Transmit: [`ConsoleDevice::write`] copies up to a page
//! into a free buffer and queues it on queue 1 without waiting; buffers are reclaimed on later calls.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};

use bitflags::bitflags;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport;

use super::VirtioHal;
use super::transport::{VirtioPci, need_event};
use crate::console::ConsoleDevice;
use crate::counters::{AtomicCounters, Counters};
use crate::dma::{DmaBuf, PAGE_SIZE};
use crate::wait::SharedIrqAck;
use crate::{Error, Result};

const NAME: &str = "virtio-console";
const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
const QUEUE_SIZE: usize = 8;
/// Receive buffers kept posted.
pub const RX_BUFFERS: usize = 4;
/// Transmit buffers in flight at most.
pub const TX_BUFFERS: usize = 4;

bitflags! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Features: u64 {
        const RING_EVENT_IDX = 1 << 29;
        const VERSION_1 = 1 << 32;
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
pub struct VirtioConsole {
    transport: VirtioPci,
    rxq: VirtQueue<VirtioHal, QUEUE_SIZE>,
    txq: VirtQueue<VirtioHal, QUEUE_SIZE>,
    /// Receive buffers with the token they are posted under (`None` while being drained).
    rx: Vec<(Option<u16>, DmaBuf)>,
    pending: Option<Pending>,
    /// Transmit buffers with the token they are in flight under.
    tx: Vec<(Option<u16>, DmaBuf)>,
    /// Our copies of the queues' avail indices (rx, tx).
    avail_idx: [u16; 2],
    event_idx: bool,
    counters: Arc<AtomicCounters>,
}

impl core::fmt::Debug for VirtioConsole {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioConsole")
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl VirtioConsole {
    /// Initialises the device and posts the receive buffers.
    pub fn new(mut transport: VirtioPci) -> Result<Self> {
        let features = transport.begin_init(Features::RING_EVENT_IDX | Features::VERSION_1);
        let event_idx = features.contains(Features::RING_EVENT_IDX);
        let rxq = VirtQueue::new(&mut transport, RX_QUEUE, false, event_idx)?;
        let txq = VirtQueue::new(&mut transport, TX_QUEUE, false, event_idx)?;
        transport.finish_init();
        let counters = transport.counters();
        let mut me = Self {
            transport,
            rxq,
            txq,
            rx: Vec::new(),
            pending: None,
            tx: Vec::new(),
            avail_idx: [0; 2],
            event_idx,
            counters,
        };
        for _ in 0..TX_BUFFERS {
            me.tx.push((None, DmaBuf::new(PAGE_SIZE)?));
        }
        for i in 0..RX_BUFFERS {
            me.rx.push((None, DmaBuf::new(PAGE_SIZE)?));
            me.post_rx(i)?;
        }
        Ok(me)
    }

    /// Sends both queues' interrupts to MSI-X table entry `entry` (see [`VirtioPci::use_msix`]).
    pub fn use_msix(&mut self, entry: u16) -> bool {
        self.transport.use_msix(2, entry)
    }

    fn kick(&mut self, queue: u16) {
        // SeqCst fence: the new avail index must be visible to the device before we read its
        // avail_event (store→load order), or a device going idle now would miss the kick.
        fence(Ordering::SeqCst);
        let idx = &mut self.avail_idx[usize::from(queue)];
        let old = *idx;
        *idx = old.wrapping_add(1);
        let new = *idx;
        let q = if queue == RX_QUEUE { &self.rxq } else { &self.txq };
        let kick = match self.transport.avail_event(queue).filter(|_| self.event_idx) {
            Some(event) => need_event(event, new, old),
            None => q.should_notify(),
        };
        if kick {
            self.transport.notify(queue);
        }
    }

    fn post_rx(&mut self, i: usize) -> Result<()> {
        let buf = &mut self.rx[i].1;
        assert!(buf.set_len(PAGE_SIZE));
        // SAFETY: the buffer stays untouched in `rx` until pop_used with this token.
        let token = unsafe { self.rxq.add(&[], &mut [buf.as_mut_slice()]) }?;
        self.rx[i].0 = Some(token);
        self.kick(RX_QUEUE);
        Ok(())
    }

    fn reclaim_tx(&mut self) -> Result<()> {
        while let Some(token) = self.txq.peek_used() {
            let Some(entry) = self.tx.iter_mut().find(|(t, _)| *t == Some(token)) else {
                return Err(Error::Protocol {
                    device: NAME,
                    what: "transmit completion for unknown descriptor",
                    value: token.into(),
                });
            };
            // SAFETY: the same buffer slice that was added under this token.
            unsafe { self.txq.pop_used(token, &[entry.1.as_slice()], &mut []) }?;
            entry.0 = None;
        }
        Ok(())
    }
}

impl ConsoleDevice for VirtioConsole {
    fn name(&self) -> &'static str {
        NAME
    }

    fn write(&mut self, data: &[u8]) -> Result<usize> {
        self.reclaim_tx()?;
        if data.is_empty() {
            return Ok(0);
        }
        let Some(i) = self.tx.iter().position(|(t, _)| t.is_none()) else {
            return Ok(0);
        };
        let n = data.len().min(PAGE_SIZE);
        let buf = &mut self.tx[i].1;
        assert!(buf.set_len(n));
        buf.as_mut_slice().copy_from_slice(&data[..n]);
        self.counters.copied(n as u64);
        // SAFETY: the buffer stays untouched in `tx` until pop_used with this token.
        let token = unsafe { self.txq.add(&[self.tx[i].1.as_slice()], &mut []) }?;
        self.tx[i].0 = Some(token);
        self.kick(TX_QUEUE);
        Ok(n)
    }

    fn read(&mut self, out: &mut [u8]) -> Result<usize> {
        self.reclaim_tx()?;
        if self.pending.is_none() {
            let Some(token) = self.rxq.peek_used() else {
                return Ok(0);
            };
            let Some(index) = self.rx.iter().position(|(t, _)| *t == Some(token)) else {
                return Err(Error::Protocol {
                    device: NAME,
                    what: "receive completion for unknown descriptor",
                    value: token.into(),
                });
            };
            let buf = &mut self.rx[index].1;
            // SAFETY: the same buffer that was added under this token.
            let len = unsafe { self.rxq.pop_used(token, &[], &mut [buf.as_mut_slice()]) }? as usize;
            self.rx[index].0 = None;
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
        out[..n].copy_from_slice(&self.rx[p.index].1.as_slice()[p.cursor..p.cursor + n]);
        p.cursor += n;
        self.counters.copied(n as u64);
        if p.cursor == p.len {
            let index = p.index;
            self.pending = None;
            self.post_rx(index)?;
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
