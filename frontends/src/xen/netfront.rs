//! netfront: a [`NetDevice`] over a Xen network backend (Linux netback), single queue, copy mode.
//!
//! Connection ([`NetFront::connect`]): wait for the backend (`InitWait`), require its
//! `feature-rx-copy` (the backend copies received packets into our granted pages), read the MAC
//! from the frontend directory's `mac`, set up one-page tx and rx rings with grants and an event
//! channel, publish `tx-ring-ref`, `rx-ring-ref`, `event-channel`, `request-rx-copy` and
//! `feature-rx-notify` with state `Connected` in one transaction, wait for the backend's
//! `Connected`, then post receive buffers (one granted page each).
//!
//! Transmit copies the frame into a per-slot page granted read-only for that request and ended on
//! the response. Receive takes a response, ends the page's grant, copies the packet out and posts the
//! page again with a fresh grant. Ids are slot indices checked on every response; a packet spanning
//! several slots (`NETRXF_more_data`, only with scatter-gather, which we do not request) or carrying
//! extra-info slots is dropped and counted.

use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use ring_protocol::abi::event_channel::EvtchnPort;
use ring_protocol::abi::grant_table::GrantRef;
use ring_protocol::abi::netif::{
    NETIF_RSP_NULL, NETRXF_EXTRA_INFO, NETRXF_MORE_DATA, NetifRxRequest, NetifRxResponse, NetifTxRequest,
    NetifTxResponse,
};
use ring_protocol::platform::{Access, Notify};
use ring_protocol::ring::FrontRing;

use super::blkfront::XenDeviceHost;
use super::grant::GrantTable;
use super::xenbus::{self, XenbusDevice, XenbusState};
use super::xenstore::{NO_TX, XenStore, XsErrorKind, xs_kind};
use crate::counters::{AtomicCounters, Counters};
use crate::dma::{DmaBuf, PAGE_SIZE};
use crate::net::{ETH_HEADER_LEN, NetDevice};
use crate::wait::{IrqAck, SharedIrqAck, Waiter};
use crate::{Error, Result};

/// xenbus keys of the network protocol (netif.h prose).
pub mod keys {
    /// Frontend: grant of the tx ring page.
    pub const TX_RING_REF: &str = "tx-ring-ref";
    /// Frontend: grant of the rx ring page.
    pub const RX_RING_REF: &str = "rx-ring-ref";
    /// Frontend: the event channel.
    pub const EVENT_CHANNEL: &str = "event-channel";
    /// Frontend: ask the backend to copy received packets.
    pub const REQUEST_RX_COPY: &str = "request-rx-copy";
    /// Frontend: we notify when posting rx buffers.
    pub const FEATURE_RX_NOTIFY: &str = "feature-rx-notify";
    /// Backend: it can copy received packets.
    pub const FEATURE_RX_COPY: &str = "feature-rx-copy";
    /// Frontend (and backend): the interface's MAC address.
    pub const MAC: &str = "mac";
}

/// Largest frame: Ethernet header + 1500.
pub const MAX_FRAME: usize = ETH_HEADER_LEN + 1500;
/// Receive buffers kept posted.
pub const RX_BUFFERS: usize = 64;
/// Transmit slots.
pub const TX_SLOTS: usize = 64;

#[derive(Debug, Default)]
struct Irq {
    counters: AtomicCounters,
    events: AtomicU64,
}

impl IrqAck for Irq {
    fn ack(&self) -> bool {
        // Relaxed: a statistic; the ring indices order the data.
        self.events.fetch_add(1, Ordering::Relaxed);
        self.counters.interrupted();
        true
    }
}

#[derive(Debug)]
struct Slot {
    page: DmaBuf,
    gref: Option<GrantRef>,
}

/// Counts of what netfront dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetDrops {
    /// Receive responses with an error status.
    pub rx_errors: u64,
    /// Multi-slot or extra-info packets dropped.
    pub rx_unsupported: u64,
    /// Transmit responses with an error status.
    pub tx_errors: u64,
}

/// A connected network frontend.
pub struct NetFront<H: XenDeviceHost + 'static> {
    host: &'static H,
    grants: &'static GrantTable,
    dev: XenbusDevice,
    mac: [u8; 6],
    tx: FrontRing<NetifTxRequest, NetifTxResponse>,
    rx: FrontRing<NetifRxRequest, NetifRxResponse>,
    ring_pages: Vec<(DmaBuf, GrantRef)>,
    port: EvtchnPort,
    tx_slots: Vec<Slot>,
    tx_free: Vec<u16>,
    rx_slots: Vec<Slot>,
    drops: NetDrops,
    irq: Arc<Irq>,
}

impl<H: XenDeviceHost> core::fmt::Debug for NetFront<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NetFront")
            .field("dev", &self.dev.frontend)
            .field("mac", &self.mac)
            .field("drops", &self.drops)
            .finish()
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl<H: XenDeviceHost> NetFront<H> {
    /// Connects to the backend of `dev`.
    ///
    /// # Errors
    /// A XenStore failure, [`Error::XenbusTimeout`], [`Error::Unsupported`] if the backend cannot copy
    /// received packets, [`Error::Protocol`] for a malformed MAC, grant or event channel failures.
    pub fn connect<N: Notify>(
        xs: &mut XenStore<N>,
        w: &dyn Waiter,
        host: &'static H,
        grants: &'static GrantTable,
        dev: XenbusDevice,
        timeout_us: u64,
    ) -> Result<Self> {
        xenbus::set_state(xs, w, NO_TX, &dev, XenbusState::Initialising)?;
        xenbus::wait_backend(
            xs,
            w,
            &dev,
            "InitWait (ready for the frontend's details)",
            |s| matches!(s, XenbusState::InitWait | XenbusState::Connected),
            timeout_us,
        )?;
        let rx_copy = match xs.read_u64(w, NO_TX, &dev.be(keys::FEATURE_RX_COPY)) {
            Ok(v) => v == 1,
            Err(e) if xs_kind(&e) == Some(&XsErrorKind::NotFound) => false,
            Err(e) => return Err(e),
        };
        if !rx_copy {
            return Err(Error::Unsupported {
                device: "xen-net",
                op: "receive copy (backend lacks feature-rx-copy)",
            });
        }
        let mac_text = xs.read_string(w, NO_TX, &dev.fe(keys::MAC))?;
        let mac = parse_mac(&mac_text).ok_or(Error::Protocol {
            device: "xen-net",
            what: "malformed mac in XenStore (length shown)",
            value: mac_text.len() as u64,
        })?;
        let mut ring_pages = Vec::with_capacity(2);
        for _ in 0..2 {
            let page = DmaBuf::new(PAGE_SIZE)?;
            let gref = grants
                .grant(dev.backend_id, host.frame_of(page.as_ptr()), Access::ReadWrite)
                .map_err(Error::Ring)?;
            ring_pages.push((page, gref));
        }
        let tx_mem = core::ptr::NonNull::new(ring_pages[0].0.as_ptr().cast_mut()).expect("DMA page");
        let rx_mem = core::ptr::NonNull::new(ring_pages[1].0.as_ptr().cast_mut()).expect("DMA page");
        // SAFETY: each ring page is a zeroed DmaBuf kept in `self` for the ring's life, shared only with
        // the backend through its grant.
        let tx = unsafe { FrontRing::<NetifTxRequest, NetifTxResponse>::init(tx_mem, PAGE_SIZE) }
            .map_err(Error::Ring)?;
        // SAFETY: as above.
        let rx = unsafe { FrontRing::<NetifRxRequest, NetifRxResponse>::init(rx_mem, PAGE_SIZE) }
            .map_err(Error::Ring)?;
        let port = host.alloc_unbound(dev.backend_id)?;
        let (tx_ref, rx_ref) = (ring_pages[0].1, ring_pages[1].1);
        let d = &dev;
        xs.transaction(w, |xs, t| {
            xs.write(w, t, &d.fe(keys::TX_RING_REF), format!("{tx_ref}").as_bytes())?;
            xs.write(w, t, &d.fe(keys::RX_RING_REF), format!("{rx_ref}").as_bytes())?;
            xs.write(w, t, &d.fe(keys::EVENT_CHANNEL), format!("{port}").as_bytes())?;
            xs.write(w, t, &d.fe(keys::REQUEST_RX_COPY), b"1")?;
            xs.write(w, t, &d.fe(keys::FEATURE_RX_NOTIFY), b"1")?;
            xenbus::set_state(xs, w, t, d, XenbusState::Connected)
        })?;
        xenbus::wait_backend(
            xs,
            w,
            &dev,
            "Connected",
            |s| s == XenbusState::Connected,
            timeout_us,
        )?;
        let irq = Arc::new(Irq::default());
        host.bind(port, irq.clone())?;
        let mut tx_slots = Vec::with_capacity(TX_SLOTS);
        for _ in 0..TX_SLOTS.min(tx.size() as usize) {
            tx_slots.push(Slot {
                page: DmaBuf::new(PAGE_SIZE)?,
                gref: None,
            });
        }
        let tx_free = (0..tx_slots.len() as u16).rev().collect();
        let mut me = Self {
            host,
            grants,
            dev,
            mac,
            tx,
            rx,
            ring_pages,
            port,
            tx_slots,
            tx_free,
            rx_slots: Vec::new(),
            drops: NetDrops::default(),
            irq,
        };
        for id in 0..RX_BUFFERS.min(me.rx.size() as usize) {
            me.rx_slots.push(Slot {
                page: DmaBuf::new(PAGE_SIZE)?,
                gref: None,
            });
            me.post_rx(id as u16)?;
        }
        me.push_rx()?;
        Ok(me)
    }

    /// The xenbus device.
    pub fn device(&self) -> &XenbusDevice {
        &self.dev
    }

    /// What was dropped so far.
    pub fn drops(&self) -> NetDrops {
        self.drops
    }

    fn kick(&self) -> Result<()> {
        self.irq.counters.notified(1);
        self.host.notify(self.port)
    }

    fn post_rx(&mut self, id: u16) -> Result<()> {
        let slot = &mut self.rx_slots[id as usize];
        let frame = self.host.frame_of(slot.page.as_ptr());
        let gref = self
            .grants
            .grant(self.dev.backend_id, frame, Access::ReadWrite)
            .map_err(Error::Ring)?;
        slot.gref = Some(gref);
        self.rx
            .write_request(&NetifRxRequest { id, pad: 0, gref })
            .map_err(Error::Ring)
    }

    fn push_rx(&mut self) -> Result<()> {
        if self.rx.push_requests_and_check_notify().map_err(Error::Ring)? {
            self.kick()?;
        }
        Ok(())
    }

    fn end(&mut self, gref: GrantRef) -> Result<()> {
        self.grants.end_access(gref).map_err(Error::Ring)
    }

    fn reap_tx(&mut self) -> Result<()> {
        loop {
            let Some(rsp) = self.tx.read_response().map_err(Error::Ring)? else {
                if self.tx.final_check_for_responses().map_err(Error::Ring)? {
                    continue;
                }
                return Ok(());
            };
            if rsp.status == NETIF_RSP_NULL {
                continue;
            }
            let id = rsp.id;
            let Some(slot) = self.tx_slots.get_mut(id as usize) else {
                return Err(Error::Protocol {
                    device: "xen-net",
                    what: "tx response id out of range",
                    value: u64::from(id),
                });
            };
            let Some(gref) = slot.gref.take() else {
                return Err(Error::Protocol {
                    device: "xen-net",
                    what: "tx response for an idle slot",
                    value: u64::from(id),
                });
            };
            if rsp.status < 0 {
                self.drops.tx_errors += 1;
            }
            self.end(gref)?;
            self.tx_free.push(id);
        }
    }
}

impl<H: XenDeviceHost> NetDevice for NetFront<H> {
    fn name(&self) -> &'static str {
        "xen-net"
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn link_up(&self) -> bool {
        true
    }

    fn mtu(&self) -> usize {
        MAX_FRAME - ETH_HEADER_LEN
    }

    fn transmit(&mut self, frame: &[u8]) -> Result<()> {
        if frame.len() < ETH_HEADER_LEN || frame.len() > MAX_FRAME {
            return Err(Error::BadLength {
                op: "transmit",
                len: frame.len(),
                unit: 1,
                max: MAX_FRAME,
            });
        }
        if self.tx_free.is_empty() || self.tx.is_full() {
            self.reap_tx()?;
        }
        let Some(id) = self.tx_free.pop() else {
            return Err(Error::QueueFull {
                device: "xen-net",
                in_flight: self.tx_slots.len(),
            });
        };
        let slot = &mut self.tx_slots[id as usize];
        slot.page.as_mut_slice()[..frame.len()].copy_from_slice(frame);
        let frame_no = self.host.frame_of(slot.page.as_ptr());
        let gref = match self.grants.grant(self.dev.backend_id, frame_no, Access::ReadOnly) {
            Ok(g) => g,
            Err(e) => {
                self.tx_free.push(id);
                return Err(Error::Ring(e));
            }
        };
        self.tx_slots[id as usize].gref = Some(gref);
        self.irq.counters.copied(frame.len() as u64);
        self.tx
            .write_request(&NetifTxRequest {
                gref,
                offset: 0,
                flags: 0,
                id,
                size: frame.len() as u16,
            })
            .map_err(Error::Ring)?;
        if self.tx.push_requests_and_check_notify().map_err(Error::Ring)? {
            self.kick()?;
        }
        Ok(())
    }

    fn receive(&mut self, buf: &mut [u8]) -> Result<Option<usize>> {
        self.reap_tx()?;
        loop {
            let Some(rsp) = self.rx.read_response().map_err(Error::Ring)? else {
                if self.rx.final_check_for_responses().map_err(Error::Ring)? {
                    continue;
                }
                return Ok(None);
            };
            let id = rsp.id;
            let Some(gref) = self.rx_slots.get_mut(id as usize).and_then(|s| s.gref.take()) else {
                return Err(Error::Protocol {
                    device: "xen-net",
                    what: "rx response id not posted",
                    value: u64::from(id),
                });
            };
            self.end(gref)?;
            let ok = rsp.status >= 0 && rsp.flags & (NETRXF_MORE_DATA | NETRXF_EXTRA_INFO) == 0;
            let off = usize::from(rsp.offset);
            let len = usize::try_from(rsp.status).unwrap_or(0);
            let result = if !ok {
                if rsp.status < 0 {
                    self.drops.rx_errors += 1;
                } else {
                    self.drops.rx_unsupported += 1;
                }
                None
            } else if off + len > PAGE_SIZE || len > buf.len() {
                self.drops.rx_errors += 1;
                None
            } else {
                buf[..len].copy_from_slice(&self.rx_slots[id as usize].page.as_slice()[off..off + len]);
                self.irq.counters.copied(len as u64);
                Some(len)
            };
            self.post_rx(id)?;
            self.push_rx()?;
            if result.is_some() {
                return Ok(result);
            }
        }
    }

    fn irq_ack(&self) -> Option<SharedIrqAck> {
        Some(self.irq.clone())
    }

    fn counters(&self) -> Counters {
        self.irq.counters.snapshot()
    }
}

impl<H: XenDeviceHost> NetFront<H> {
    /// Disconnects (xenbus close handshake) and ends the ring grants and the event channel. Posted
    /// receive buffers are ended too (the backend has unmapped them once it is closed).
    pub fn disconnect<N: Notify>(
        mut self,
        xs: &mut XenStore<N>,
        w: &dyn Waiter,
        timeout_us: u64,
    ) -> Result<XenbusState> {
        let seen = xenbus::close(xs, w, &self.dev, timeout_us)?;
        self.host.close(self.port);
        let mut kept = 0;
        let rx_grefs: Vec<GrantRef> = self.rx_slots.iter_mut().filter_map(|s| s.gref.take()).collect();
        let tx_grefs: Vec<GrantRef> = self.tx_slots.iter_mut().filter_map(|s| s.gref.take()).collect();
        let ring: Vec<GrantRef> = self.ring_pages.iter().map(|(_, g)| *g).collect();
        for g in rx_grefs.into_iter().chain(tx_grefs).chain(ring) {
            if self.grants.end_access(g).is_err() {
                kept += 1;
            }
        }
        if kept > 0 {
            // The backend still reaches some pages: they must never be reused.
            core::mem::forget(core::mem::take(&mut self.rx_slots));
            core::mem::forget(core::mem::take(&mut self.tx_slots));
            core::mem::forget(core::mem::take(&mut self.ring_pages));
        }
        Ok(seen)
    }
}

#[cfg(test)]
mod tests;
