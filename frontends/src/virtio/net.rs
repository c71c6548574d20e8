//! virtio-net on the crate's `VirtIONetRaw`, with receive and transmit buffers in [`DmaBuf`]s.
//!
//! Frames are copied once each way between the caller's slice and a DMA buffer that also holds the
//! `virtio_net_hdr` (counted in `bytes_copied`).

use alloc::sync::Arc;
use alloc::vec::Vec;

use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::Transport;

use super::VirtioHal;
use super::transport::VirtioPci;
use crate::counters::{AtomicCounters, Counters};
use crate::dma::DmaBuf;
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
/// Size of each buffer: header + 1514-byte frame fits, as the crate requires ≥ 1526.
const BUF_LEN: usize = 2048;
const MTU: usize = 1500;
/// `virtio_net_config.status` offset and its link-up bit; `VIRTIO_NET_F_STATUS`.
const CONFIG_STATUS: usize = 6;
const STATUS_LINK_UP: u16 = 1;
const F_STATUS: u64 = 1 << 16;

/// A virtio-net device.
pub struct VirtioNet {
    dev: VirtIONetRaw<VirtioHal, VirtioPci, QUEUE_SIZE>,
    irq: SharedIrqAck,
    counters: Arc<AtomicCounters>,
    link_up: bool,
    /// Posted receive buffers: (token, buffer).
    rx: Vec<Option<(u16, DmaBuf)>>,
    /// Transmit buffers: free ones have no token.
    tx: Vec<(Option<u16>, DmaBuf)>,
}

impl core::fmt::Debug for VirtioNet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioNet")
            .field("mac", &self.dev.mac_address())
            .finish_non_exhaustive()
    }
}

impl VirtioNet {
    /// Initialises the device and posts the receive buffers.
    pub fn new(mut transport: VirtioPci) -> Result<Self> {
        // The link state is read before the crate takes the transport (the crate does not expose it);
        // a device without VIRTIO_NET_F_STATUS is always up.
        let link_up = if transport.read_device_features() & F_STATUS != 0 {
            transport.read_config_space::<u16>(CONFIG_STATUS)? & STATUS_LINK_UP != 0
        } else {
            true
        };
        let irq: SharedIrqAck = transport.irq();
        let counters = transport.counters();
        let dev = VirtIONetRaw::new(transport)?;
        let mut me = Self {
            dev,
            irq,
            counters,
            link_up,
            rx: Vec::new(),
            tx: Vec::new(),
        };
        for _ in 0..TX_BUFFERS {
            me.tx.push((None, DmaBuf::new(BUF_LEN)?));
        }
        for _ in 0..RX_BUFFERS {
            let mut buf = DmaBuf::new(BUF_LEN)?;
            // SAFETY: the buffer is kept untouched in `rx` until receive_complete with this token.
            let token = unsafe { me.dev.receive_begin(buf.as_mut_slice()) }?;
            me.rx.push(Some((token, buf)));
        }
        Ok(me)
    }

    /// Takes back transmit buffers the device is done with.
    fn reclaim_tx(&mut self) -> Result<()> {
        while let Some(token) = self.dev.poll_transmit() {
            let Some(entry) = self.tx.iter_mut().find(|(t, _)| *t == Some(token)) else {
                return Err(Error::Protocol {
                    device: NAME,
                    what: "transmit completion for unknown descriptor",
                    value: token.into(),
                });
            };
            // SAFETY: the same buffer slice that transmit_begin got for this token.
            unsafe { self.dev.transmit_complete(token, entry.1.as_slice()) }?;
            entry.0 = None;
        }
        Ok(())
    }
}

impl NetDevice for VirtioNet {
    fn name(&self) -> &'static str {
        NAME
    }

    fn mac(&self) -> [u8; 6] {
        self.dev.mac_address()
    }

    fn link_up(&self) -> bool {
        self.link_up
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
        self.reclaim_tx()?;
        let in_flight = self.tx.iter().filter(|(t, _)| t.is_some()).count();
        let Some(i) = self.tx.iter().position(|(t, _)| t.is_none()) else {
            return Err(Error::QueueFull {
                device: NAME,
                in_flight,
            });
        };
        let buf = &mut self.tx[i].1;
        assert!(buf.set_len(BUF_LEN));
        let hdr = self.dev.fill_buffer_header(buf.as_mut_slice())?;
        buf.as_mut_slice()[hdr..hdr + frame.len()].copy_from_slice(frame);
        assert!(buf.set_len(hdr + frame.len()));
        self.counters.copied(frame.len() as u64);
        // SAFETY: the buffer stays in `tx` with its token, untouched, until transmit_complete.
        let token = unsafe { self.dev.transmit_begin(self.tx[i].1.as_slice()) }.map_err(|e| match e {
            virtio_drivers::Error::QueueFull => Error::QueueFull {
                device: NAME,
                in_flight,
            },
            other => other.into(),
        })?;
        self.tx[i].0 = Some(token);
        Ok(())
    }

    fn receive(&mut self, out: &mut [u8]) -> Result<Option<usize>> {
        self.reclaim_tx()?;
        let Some(token) = self.dev.poll_receive() else {
            return Ok(None);
        };
        let Some(i) = self
            .rx
            .iter()
            .position(|e| matches!(e, Some((t, _)) if *t == token))
        else {
            return Err(Error::Protocol {
                device: NAME,
                what: "receive completion for unknown descriptor",
                value: token.into(),
            });
        };
        let (_, mut buf) = self.rx[i].take().expect("position found it");
        // SAFETY: the same buffer that receive_begin got for this token.
        let (hdr, len) = unsafe { self.dev.receive_complete(token, buf.as_mut_slice()) }?;
        let result = if hdr + len > buf.len() {
            Err(Error::Protocol {
                device: NAME,
                what: "received length past the buffer",
                value: (hdr + len) as u64,
            })
        } else if len > out.len() {
            Err(Error::BadLength {
                op: "receive",
                len,
                unit: 1,
                max: out.len(),
            })
        } else {
            out[..len].copy_from_slice(&buf.as_slice()[hdr..hdr + len]);
            self.counters.copied(len as u64);
            Ok(Some(len))
        };
        // Re-post the buffer whatever happened to the frame.
        buf.as_mut_slice().fill(0);
        // SAFETY: as in new(): kept untouched until its completion.
        let token = unsafe { self.dev.receive_begin(buf.as_mut_slice()) }?;
        self.rx[i] = Some((token, buf));
        result
    }

    fn irq_ack(&self) -> Option<SharedIrqAck> {
        Some(self.irq.clone())
    }

    fn counters(&self) -> Counters {
        self.counters.snapshot()
    }
}
