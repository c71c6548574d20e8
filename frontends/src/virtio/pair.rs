//! A receive queue and a transmit queue with their DMA buffers: the part virtio-net and
//! virtio-console share.
//!
//! Queue 0 receives, queue 1 transmits. Every buffer is one descriptor; a buffer is tracked by the
//! token (descriptor head) it is posted under, in an [`IdSlab`] per queue, so a completion naming
//! any other token is refused as a protocol error (the device cannot make us touch a buffer it was
//! not given). Kicks follow EVENT_IDX with the
//! spec's wrap-safe test when the device publishes `avail_event`.

use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};

use ring_protocol::ring::IdSlab;
use virtio_drivers::queue::VirtQueue;

use super::transport::{VirtioTransport, need_event};
use super::{VirtioHal, VirtioPlatform};
use crate::dma::DmaBuf;
use crate::{Error, Result};

pub(super) const RX_QUEUE: u16 = 0;
pub(super) const TX_QUEUE: u16 = 1;

/// The two queues of a net or console device and the buffers posted on them.
pub(super) struct QueuePair<P: VirtioPlatform, const SIZE: usize> {
    device: &'static str,
    rxq: VirtQueue<VirtioHal<P>, SIZE>,
    txq: VirtQueue<VirtioHal<P>, SIZE>,
    /// Receive buffers.
    rx: Vec<DmaBuf>,
    /// Token each posted receive buffer is under → its index in `rx`.
    rx_tokens: IdSlab<usize, SIZE>,
    /// Transmit buffers.
    tx: Vec<DmaBuf>,
    /// Token each transmit in flight is under → its buffer's index in `tx`.
    tx_tokens: IdSlab<usize, SIZE>,
    /// Indices of the transmit buffers not in flight.
    tx_free: Vec<usize>,
    /// Our copies of the queues' avail indices (rx, tx); the crate's are private.
    avail_idx: [u16; 2],
    event_idx: bool,
    /// Bytes of each receive buffer offered to the device.
    rx_len: usize,
}

impl<P: VirtioPlatform, const SIZE: usize> QueuePair<P, SIZE> {
    /// Sets up both queues. Call between the transport's `begin_init` and `finish_init`, then
    /// [`fill`](Self::fill) once the device is live.
    pub(super) fn new<T: VirtioTransport>(
        transport: &mut T,
        device: &'static str,
        event_idx: bool,
    ) -> Result<Self> {
        let rxq = VirtQueue::new(transport, RX_QUEUE, false, event_idx)?;
        let txq = VirtQueue::new(transport, TX_QUEUE, false, event_idx)?;
        Ok(Self {
            device,
            rxq,
            txq,
            rx: Vec::new(),
            rx_tokens: IdSlab::new(),
            tx: Vec::new(),
            tx_tokens: IdSlab::new(),
            tx_free: Vec::new(),
            avail_idx: [0; 2],
            event_idx,
            rx_len: 0,
        })
    }

    /// Allocates `tx` transmit buffers and `rx` receive buffers of `len` bytes and posts the latter.
    pub(super) fn fill<T: VirtioTransport>(
        &mut self,
        transport: &mut T,
        rx: usize,
        tx: usize,
        len: usize,
    ) -> Result<()> {
        self.rx_len = len;
        for i in 0..tx {
            self.tx.push(DmaBuf::new(P::dma(), len)?);
            self.tx_free.push(i);
        }
        for i in 0..rx {
            self.rx.push(DmaBuf::new(P::dma(), len)?);
            self.post_rx(transport, i)?;
        }
        Ok(())
    }

    /// Whether EVENT_IDX was negotiated.
    pub(super) fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Transmit buffers in all.
    pub(super) fn tx_buffers(&self) -> usize {
        self.tx.len()
    }

    /// Kicks `queue` if the device asked to hear about the buffer just added.
    fn kick<T: VirtioTransport>(&mut self, transport: &mut T, queue: u16) {
        // SeqCst fence: the new avail index must be visible to the device before we read its
        // avail_event (store→load order), or a device going idle now would miss the kick.
        fence(Ordering::SeqCst);
        let idx = &mut self.avail_idx[usize::from(queue)];
        let old = *idx;
        *idx = old.wrapping_add(1);
        let new = *idx;
        let q = if queue == RX_QUEUE { &self.rxq } else { &self.txq };
        let kick = match transport.avail_event(queue).filter(|_| self.event_idx) {
            Some(event) => need_event(event, new, old),
            None => q.should_notify(),
        };
        if kick {
            transport.notify(queue);
        }
    }

    /// Posts receive buffer `i` (the length given to [`fill`](Self::fill)) again.
    pub(super) fn post_rx<T: VirtioTransport>(&mut self, transport: &mut T, i: usize) -> Result<()> {
        let buf = &mut self.rx[i];
        assert!(buf.set_len(self.rx_len));
        // SAFETY: the buffer stays untouched in `rx` until pop_used with this token.
        let token = unsafe { self.rxq.add(&[], &mut [buf.as_mut_slice()]) }?;
        self.claim(RX_QUEUE, token, i)?;
        self.kick(transport, RX_QUEUE);
        Ok(())
    }

    /// Records buffer `i` under `token` on `queue`. A head the queue library hands out while it is
    /// still in flight means its bookkeeping is broken: a protocol error, the device is unusable.
    fn claim(&mut self, queue: u16, token: u16, i: usize) -> Result<()> {
        let tokens = if queue == RX_QUEUE {
            &mut self.rx_tokens
        } else {
            &mut self.tx_tokens
        };
        tokens
            .insert_at(u64::from(token), i)
            .map_err(|_| Error::Protocol {
                device: self.device,
                what: "queue reused a descriptor head in flight",
                value: token.into(),
            })
    }

    /// Takes the next filled receive buffer off the queue: its index and the length the device
    /// claims, which the caller must check against the buffer before trusting it. The buffer stays
    /// with the driver until [`post_rx`](Self::post_rx).
    pub(super) fn take_rx(&mut self) -> Result<Option<(usize, usize)>> {
        let Some(token) = self.rxq.peek_used() else {
            return Ok(None);
        };
        let Ok(i) = self.rx_tokens.remove(u64::from(token)) else {
            return Err(Error::Protocol {
                device: self.device,
                what: "receive completion for unknown descriptor",
                value: token.into(),
            });
        };
        let buf = &mut self.rx[i];
        // SAFETY: the same buffer that was added under this token.
        let used = unsafe { self.rxq.pop_used(token, &[], &mut [buf.as_mut_slice()]) }? as usize;
        Ok(Some((i, used)))
    }

    /// Receive buffer `i`'s bytes.
    pub(super) fn rx_bytes(&self, i: usize) -> &[u8] {
        self.rx[i].as_slice()
    }

    /// Reclaims the transmit buffers the device is done with.
    pub(super) fn reclaim_tx(&mut self) -> Result<()> {
        while let Some(token) = self.txq.peek_used() {
            let Ok(i) = self.tx_tokens.remove(u64::from(token)) else {
                return Err(Error::Protocol {
                    device: self.device,
                    what: "transmit completion for unknown descriptor",
                    value: token.into(),
                });
            };
            // SAFETY: the same buffer slice that was added under this token.
            unsafe { self.txq.pop_used(token, &[self.tx[i].as_slice()], &mut []) }?;
            self.tx_free.push(i);
        }
        Ok(())
    }

    /// Queues `len` bytes written by `fill` into a free transmit buffer, or returns `false` if every
    /// buffer is in flight. Does not wait for the device.
    pub(super) fn send<T: VirtioTransport>(
        &mut self,
        transport: &mut T,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<bool> {
        let Some(i) = self.tx_free.pop() else {
            return Ok(false);
        };
        let buf = &mut self.tx[i];
        assert!(buf.set_len(len));
        fill(buf.as_mut_slice());
        // SAFETY: the buffer stays untouched in `tx` until pop_used with this token.
        let token = match unsafe { self.txq.add(&[self.tx[i].as_slice()], &mut []) } {
            Ok(t) => t,
            Err(e) => {
                self.tx_free.push(i);
                return Err(e.into());
            }
        };
        self.claim(TX_QUEUE, token, i)?;
        self.kick(transport, TX_QUEUE);
        Ok(true)
    }
}
