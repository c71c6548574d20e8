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
//! page again with a fresh grant. Ids come from an [`IdSlabBox`] per ring and every response's id is
//! refused unless in flight; a packet spanning
//! several slots (`NETRXF_more_data`, only with scatter-gather, which we do not request) or carrying
//! extra-info slots is dropped and counted.
//!
//! The driver is generic over the platform ([`XenPlatform`]); it names no global.
//!
//! Against a hostile backend: every shared page (the two rings, each posted receive buffer, each
//! transmit buffer in flight) is a [`Granted`] owning the page and its grant, so nothing is freed
//! while the backend can still reach it; what it keeps past disconnect is abandoned to it and
//! counted. A response naming an id not in flight, a producer index past the requests outstanding,
//! or a grant still held after its response halts the device: every later call fails with that
//! error, other devices are untouched. A connection that fails after publishing its rings runs the
//! close handshake (bounded) before letting them go.

use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use ring_protocol::abi::event_channel::EvtchnPort;
use ring_protocol::abi::netif::{
    NETIF_RSP_NULL, NETRXF_EXTRA_INFO, NETRXF_MORE_DATA, NetifRxRequest, NetifRxResponse, NetifTxRequest,
    NetifTxResponse,
};
use ring_protocol::platform::{Access, Notify};
use ring_protocol::ring::{FrontRing, IdSlabBox};

use super::blkfront::ABORT_TIMEOUT_US;
use super::evtchn::EventChannels;
use super::grant::{Granted, NotGranted};
use super::xenbus::{self, XenbusDevice, XenbusState};
use super::xenstore::{NO_TX, XenStore};
use super::{GrantMemory, XenPlatform};
use crate::counters::{AtomicCounters, Counters};
use crate::dma::{DmaBuf, PAGE_SIZE};
use crate::net::{ETH_HEADER_LEN, NetDevice};
use crate::wait::{IrqAck, SharedIrqAck, Waiter, wait_for};
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

const DEVICE: &str = "xen-net";

fn protocol(what: &'static str, value: u64) -> Error {
    Error::Protocol {
        device: DEVICE,
        what,
        value,
    }
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

/// A connected network frontend over the platform `XenPlatform<G, E>`.
pub struct NetFront<G: GrantMemory, E: EventChannels> {
    platform: XenPlatform<G, E>,
    dev: XenbusDevice,
    mac: [u8; 6],
    /// Declared before `ring_pages`: the rings' pointers go before their memory.
    tx: FrontRing<NetifTxRequest, NetifTxResponse>,
    rx: FrontRing<NetifRxRequest, NetifRxResponse>,
    /// The tx and rx ring pages.
    ring_pages: Vec<Granted<G>>,
    /// `None` once closed.
    port: Option<EvtchnPort>,
    /// The transmits in flight by id: each frame's page, shared with the backend.
    tx_busy: IdSlabBox<Granted<G>>,
    /// Transmit pages not in flight.
    tx_idle: Vec<DmaBuf>,
    /// The receive buffers posted, by id.
    rx_posted: IdSlabBox<Granted<G>>,
    /// Receive pages that could not be granted again yet (grant table full).
    rx_idle: Vec<DmaBuf>,
    /// Grants the backend still held after their response: kept, retried at disconnect, abandoned
    /// if still held then.
    stuck: Vec<Granted<G>>,
    /// Set once the backend broke the protocol; every later call fails with it.
    broken: Option<Error>,
    drops: NetDrops,
    irq: Arc<Irq>,
}

impl<G: GrantMemory, E: EventChannels> core::fmt::Debug for NetFront<G, E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NetFront")
            .field("dev", &self.dev.frontend)
            .field("mac", &self.mac)
            .field("drops", &self.drops)
            .field("broken", &self.broken)
            .finish()
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Whether `mac` can be an interface's own address: not multicast (nor broadcast), not all zero.
pub fn is_unicast_mac(mac: [u8; 6]) -> bool {
    mac[0] & 1 == 0 && mac != [0; 6]
}

impl<G: GrantMemory, E: EventChannels> NetFront<G, E> {
    /// Connects to the backend of `dev` over `platform`.
    ///
    /// # Errors
    /// A XenStore failure, [`Error::XenbusTimeout`], [`Error::Unsupported`] if the backend cannot copy
    /// received packets, [`Error::Protocol`] for a malformed or non-unicast MAC or a backend that
    /// leaves the handshake, grant or event channel failures. Whatever failed, the pages shared so
    /// far are ended, or abandoned to the backend (and counted) if it keeps holding them.
    pub fn connect<N: Notify>(
        xs: &mut XenStore<N>,
        w: &dyn Waiter,
        platform: XenPlatform<G, E>,
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
        if !xenbus::read_flag(xs, w, NO_TX, &dev.be(keys::FEATURE_RX_COPY))? {
            return Err(Error::Unsupported {
                device: DEVICE,
                op: "receive copy (backend lacks feature-rx-copy)",
            });
        }
        let mac_text = xs.read_string(w, NO_TX, &dev.fe(keys::MAC))?;
        let mac = parse_mac(&mac_text)
            .filter(|&m| is_unicast_mac(m))
            .ok_or(protocol(
                "mac in XenStore malformed or not unicast (length shown)",
                mac_text.len() as u64,
            ))?;
        let tx_buf = DmaBuf::new(platform.dma, PAGE_SIZE)?;
        let rx_buf = DmaBuf::new(platform.dma, PAGE_SIZE)?;
        let tx_mem = core::ptr::NonNull::new(tx_buf.as_ptr().cast_mut()).expect("DMA page");
        let rx_mem = core::ptr::NonNull::new(rx_buf.as_ptr().cast_mut()).expect("DMA page");
        // SAFETY: each ring page is a zeroed DmaBuf that moves into `ring_pages` below (its memory
        // does not move with it), which lives as long as the rings (declared after them in `Self`);
        // shared only with the backend, through its grant.
        let tx = unsafe { FrontRing::<NetifTxRequest, NetifTxResponse>::init(tx_mem, PAGE_SIZE) }
            .map_err(Error::Ring)?;
        // SAFETY: as above.
        let rx = unsafe { FrontRing::<NetifRxRequest, NetifRxResponse>::init(rx_mem, PAGE_SIZE) }
            .map_err(Error::Ring)?;
        let mut ring_pages = Vec::with_capacity(2);
        for page in [tx_buf, rx_buf] {
            let g = Granted::new(platform.grants.clone(), dev.backend_id, page, Access::ReadWrite)
                .map_err(|e| Error::Ring(e.error))?;
            ring_pages.push(g);
        }
        let port = platform.events.alloc_unbound(dev.backend_id)?;
        let rx_n = RX_BUFFERS.min(rx.size() as usize);
        let tx_n = TX_SLOTS.min(tx.size() as usize);
        let mut me = Self {
            platform,
            dev,
            mac,
            tx,
            rx,
            ring_pages,
            port: Some(port),
            tx_busy: IdSlabBox::new(tx_n),
            tx_idle: Vec::new(),
            rx_posted: IdSlabBox::new(rx_n),
            rx_idle: Vec::new(),
            stuck: Vec::new(),
            broken: None,
            drops: NetDrops::default(),
            irq: Arc::new(Irq::default()),
        };
        match me.negotiate(xs, w, timeout_us) {
            Ok(()) => Ok(me),
            Err(e) => {
                // The backend may have mapped the rings and buffers by now: close the handshake so
                // it lets go, then end what it let go of; the drop abandons the rest.
                let t = timeout_us.min(ABORT_TIMEOUT_US);
                let _ = xenbus::close(xs, w, &me.dev, t);
                me.close_port();
                me.release(w, t);
                Err(e)
            }
        }
    }

    /// The connection steps from publishing the rings on.
    fn negotiate<N: Notify>(&mut self, xs: &mut XenStore<N>, w: &dyn Waiter, timeout_us: u64) -> Result<()> {
        let port = self.port.expect("open during connect");
        let (tx_ref, rx_ref) = (self.ring_pages[0].refs()[0], self.ring_pages[1].refs()[0]);
        let d = &self.dev;
        xs.transaction(w, |xs, t| {
            xs.write(w, t, &d.fe(keys::TX_RING_REF), format!("{tx_ref}").as_bytes())?;
            xs.write(w, t, &d.fe(keys::RX_RING_REF), format!("{rx_ref}").as_bytes())?;
            xs.write(w, t, &d.fe(keys::EVENT_CHANNEL), format!("{port}").as_bytes())?;
            xs.write(w, t, &d.fe(keys::REQUEST_RX_COPY), b"1")?;
            xs.write(w, t, &d.fe(keys::FEATURE_RX_NOTIFY), b"1")?;
            xenbus::set_state(xs, w, t, d, XenbusState::Connected)
        })?;
        xenbus::wait_backend_or_refuse(
            xs,
            w,
            d,
            "Connected",
            |s| s == XenbusState::Connected,
            |s| matches!(s, XenbusState::Closing | XenbusState::Closed),
            timeout_us,
        )?;
        self.platform.events.bind(port, self.irq.clone())?;
        for _ in 0..self.tx_busy.capacity() {
            self.tx_idle.push(DmaBuf::new(self.platform.dma, PAGE_SIZE)?);
        }
        for _ in 0..self.rx_posted.capacity() {
            self.post_rx(DmaBuf::new(self.platform.dma, PAGE_SIZE)?)?;
        }
        self.push_rx()
    }

    /// The xenbus device.
    pub fn device(&self) -> &XenbusDevice {
        &self.dev
    }

    /// What was dropped so far.
    pub fn drops(&self) -> NetDrops {
        self.drops
    }

    /// Why the device stopped, if the backend broke the protocol.
    pub fn broken(&self) -> Option<&Error> {
        self.broken.as_ref()
    }

    /// Grants the backend kept after their response (never reused).
    pub fn stuck_grants(&self) -> usize {
        self.stuck.iter().map(|g| g.refs().len()).sum()
    }

    fn check(&self) -> Result<()> {
        self.broken.clone().map_or(Ok(()), Err)
    }

    fn halt<T>(&mut self, e: Error) -> Result<T> {
        self.broken.get_or_insert(e.clone());
        Err(e)
    }

    fn close_port(&mut self) {
        if let Some(port) = self.port.take() {
            self.platform.events.close(port);
        }
    }

    fn kick(&self) -> Result<()> {
        let port = self.port.ok_or(protocol("event channel (already closed)", 0))?;
        self.irq.counters.notified(1);
        self.platform.events.notify(port)
    }

    /// Grants `page` to the backend as a receive buffer under a fresh id and queues the request; if
    /// the grant fails the page waits in `rx_idle` for the next try.
    fn post_rx(&mut self, page: DmaBuf) -> Result<()> {
        let g = match Granted::new(
            self.platform.grants.clone(),
            self.dev.backend_id,
            page,
            Access::ReadWrite,
        ) {
            Ok(g) => g,
            Err(NotGranted { buf, error }) => {
                if !buf.is_empty() {
                    self.rx_idle.push(buf);
                }
                return Err(Error::Ring(error));
            }
        };
        let gref = g.refs()[0];
        // One id per receive page, so one is free for every page in hand; ids fit netif's u16
        // (the slab holds at most a ring's 256 slots).
        let id = match self.rx_posted.insert(g) {
            Ok(id) => id as u16,
            Err(e) => return self.halt(Error::Ring(e)),
        };
        if let Err(e) = self.rx.write_request(&NetifRxRequest { id, pad: 0, gref }) {
            return self.halt(Error::Ring(e));
        }
        Ok(())
    }

    fn push_rx(&mut self) -> Result<()> {
        match self.rx.push_requests_and_check_notify() {
            Ok(true) => self.kick(),
            Ok(false) => Ok(()),
            Err(e) => self.halt(Error::Ring(e)),
        }
    }

    fn reap_tx(&mut self) -> Result<()> {
        loop {
            let rsp = match self.tx.read_response() {
                Ok(Some(r)) => r,
                Ok(None) => match self.tx.final_check_for_responses() {
                    Ok(true) => continue,
                    Ok(false) => return Ok(()),
                    Err(e) => return self.halt(Error::Ring(e)),
                },
                Err(e) => return self.halt(Error::Ring(e)),
            };
            if rsp.status == NETIF_RSP_NULL {
                continue;
            }
            // `rsp` is our copy: the id is checked before it names anything.
            let id = rsp.id;
            let Ok(g) = self.tx_busy.remove(u64::from(id)) else {
                return self.halt(protocol("tx response id not in flight", u64::from(id)));
            };
            if rsp.status < 0 {
                self.drops.tx_errors += 1;
            }
            match g.revoke() {
                Ok(page) => self.tx_idle.push(page),
                Err(held) => {
                    self.stuck.push(held);
                    return self.halt(protocol(
                        "backend kept a tx grant after its response",
                        u64::from(id),
                    ));
                }
            }
        }
    }

    /// Ends every grant still alive (rings, posted rx buffers, tx in flight, stuck), retrying while
    /// the backend holds some, up to `timeout_us`; the rest is abandoned to the backend (and
    /// counted) when dropped.
    fn release(&mut self, w: &dyn Waiter, timeout_us: u64) {
        let mut held: Vec<Granted<G>> = core::mem::take(&mut self.stuck);
        held.extend(self.rx_posted.drain().map(|(_, g)| g));
        held.extend(self.tx_busy.drain().map(|(_, g)| g));
        held.append(&mut self.ring_pages);
        let _ = wait_for(w, timeout_us, "the backend to let go of its grants", || {
            held = core::mem::take(&mut held)
                .into_iter()
                .filter_map(|g| g.revoke().err())
                .collect();
            Ok(held.is_empty().then_some(()))
        });
        drop(held);
    }
}

impl<G: GrantMemory, E: EventChannels> NetDevice for NetFront<G, E> {
    fn name(&self) -> &'static str {
        DEVICE
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn link_up(&self) -> bool {
        self.broken.is_none()
    }

    fn mtu(&self) -> usize {
        MAX_FRAME - ETH_HEADER_LEN
    }

    fn transmit(&mut self, frame: &[u8]) -> Result<()> {
        self.check()?;
        if frame.len() < ETH_HEADER_LEN || frame.len() > MAX_FRAME {
            return Err(Error::BadLength {
                op: "transmit",
                len: frame.len(),
                unit: 1,
                max: MAX_FRAME,
            });
        }
        if self.tx_idle.is_empty() || self.tx.is_full() {
            self.reap_tx()?;
        }
        let Some(mut page) = self.tx_idle.pop() else {
            return Err(Error::QueueFull {
                device: DEVICE,
                in_flight: self.tx_busy.len(),
            });
        };
        page.as_mut_slice()[..frame.len()].copy_from_slice(frame);
        let g = match Granted::new(
            self.platform.grants.clone(),
            self.dev.backend_id,
            page,
            Access::ReadOnly,
        ) {
            Ok(g) => g,
            Err(NotGranted { buf, error }) => {
                if !buf.is_empty() {
                    self.tx_idle.push(buf);
                }
                return Err(Error::Ring(error));
            }
        };
        let gref = g.refs()[0];
        // A page in hand means a free id (one id per transmit page); ids fit netif's u16.
        let id = match self.tx_busy.insert(g) {
            Ok(id) => id as u16,
            Err(e) => return self.halt(Error::Ring(e)),
        };
        self.irq.counters.copied(frame.len() as u64);
        if let Err(e) = self.tx.write_request(&NetifTxRequest {
            gref,
            offset: 0,
            flags: 0,
            id,
            size: frame.len() as u16,
        }) {
            return self.halt(Error::Ring(e));
        }
        match self.tx.push_requests_and_check_notify() {
            Ok(true) => self.kick(),
            Ok(false) => Ok(()),
            Err(e) => self.halt(Error::Ring(e)),
        }
    }

    fn receive(&mut self, buf: &mut [u8]) -> Result<Option<usize>> {
        self.check()?;
        self.reap_tx()?;
        if let Some(page) = self.rx_idle.pop() {
            self.post_rx(page)?;
            self.push_rx()?;
        }
        loop {
            let rsp = match self.rx.read_response() {
                Ok(Some(r)) => r,
                Ok(None) => match self.rx.final_check_for_responses() {
                    Ok(true) => continue,
                    Ok(false) => return Ok(None),
                    Err(e) => return self.halt(Error::Ring(e)),
                },
                Err(e) => return self.halt(Error::Ring(e)),
            };
            // `rsp` is our copy: the id is checked before it names anything.
            let id = rsp.id;
            let Ok(g) = self.rx_posted.remove(u64::from(id)) else {
                return self.halt(protocol("rx response id not posted", u64::from(id)));
            };
            let page = match g.revoke() {
                Ok(page) => page,
                Err(held) => {
                    self.stuck.push(held);
                    return self.halt(protocol(
                        "backend kept an rx grant after its response",
                        u64::from(id),
                    ));
                }
            };
            // The grant has ended: the backend can no longer change the page under us.
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
                buf[..len].copy_from_slice(&page.as_slice()[off..off + len]);
                self.irq.counters.copied(len as u64);
                Some(len)
            };
            self.post_rx(page)?;
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

impl<G: GrantMemory, E: EventChannels> NetFront<G, E> {
    /// Disconnects: the xenbus close handshake, then the event channel is closed and every grant is
    /// ended (rings, posted receive buffers, transmits in flight). Grants the backend still holds
    /// are retried for up to `timeout_us`, then abandoned to it (counted in the grant table's
    /// `leaked_pages`). Resources are released even when the handshake fails.
    ///
    /// # Errors
    /// The handshake's failure ([`Error::XenbusTimeout`] if the backend does not close).
    pub fn disconnect<N: Notify>(
        mut self,
        xs: &mut XenStore<N>,
        w: &dyn Waiter,
        timeout_us: u64,
    ) -> Result<XenbusState> {
        let seen = xenbus::close(xs, w, &self.dev, timeout_us);
        self.close_port();
        self.release(w, timeout_us);
        seen
    }
}

impl<G: GrantMemory, E: EventChannels> Drop for NetFront<G, E> {
    /// Without [`disconnect`](Self::disconnect): closes the event channel; each grant ends, or its
    /// pages are abandoned to the backend if it still holds them.
    fn drop(&mut self) {
        self.close_port();
    }
}

#[cfg(test)]
mod tests;
