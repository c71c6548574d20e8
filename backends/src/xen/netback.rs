//! netback: the netif protocol (`io/netif.h`) connected to a port of the net core's switch.
//!
//! Offered: receive by copy (`feature-rx-copy`; the frontend posts pages, the backend copies frames
//! into them), notification of newly posted receive buffers (`feature-rx-notify`), one queue, one
//! event channel for both rings. Not offered: scatter-gather, GSO, multicast control, split event
//! channels. Frames are therefore at most [`MAX_FRAME`] bytes (1514: the frontend's MTU of 1500
//! plus the Ethernet header) each way.
//!
//! Transmit: each packet (its first slot gives the whole size, `NETTXF_more_data` chains further
//! slots, `NETTXF_extra_info` is followed by extra-info slots) is read slot by slot into local copies,
//! and everything after that looks only at the copies: the chain is bounded
//! ([`XEN_NETIF_NR_SLOTS_MIN`] data slots, one extra-info slot per type), the size is checked
//! against [`MAX_FRAME`] before anything is copied, extra-info types that were not offered (GSO,
//! multicast control) are refused, every slot must stay inside its page. Then the data is copied out
//! with one grant copy, its IPv4 TCP/UDP checksum filled in when the frontend left it blank
//! (`NETTXF_csum_blank`, which Linux does since IPv4 checksum offload needs no feature key), and the
//! frame is sent into the switch on a port bound to the vif's MAC (frames from any other source
//! address are dropped there). Every slot gets its response (`NETIF_RSP_NULL` for extra-info slots);
//! a malformed or refused packet gets `NETIF_RSP_ERROR` on all its slots and is dropped, counted, and
//! logged at a bounded rate. Receive: frames the switch queued for this port are copied into posted
//! buffers; while none is posted the oldest frame waits, and the port's queue holds at most
//! [`PORT_QUEUE`] frames (beyond that the switch drops and counts), so a guest that posts no
//! buffers costs dom0 a bounded amount of memory.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use ring_protocol::abi::netif::{
    NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY, NETTXF_CSUM_BLANK, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA,
    NetifExtraInfo, NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse,
    XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_EXTRA_TYPE_HASH, XEN_NETIF_EXTRA_TYPE_MAX,
    XEN_NETIF_EXTRA_TYPE_MCAST_ADD, XEN_NETIF_EXTRA_TYPE_MCAST_DEL, XEN_NETIF_NR_SLOTS_MIN,
};
use ring_protocol::abi::xen::DomId;
use ring_protocol::ring::BackRing;
use vmm_sys_util::eventfd::EventFd;
use zerocopy::{FromBytes, IntoBytes};

use super::evtchn::EventChannel;
use super::gntdev::{GntDev, GrantCopy, GrantError, GrantPiece, PAGE_SIZE};
use super::xenbus::{Backend, Connected, DeviceId, Engine, Frontend, Notify};
use super::{Error, Result};
pub use crate::net::format_mac;
use crate::net::{ETH_DATA_LEN, ETH_HEADER_LEN, Mac, PortId, PortPolicy, QueuedPort, Switch};
use crate::ratelimit::{RateLimit, limited_info, limited_warn};

/// Frames queued for a guest port before the switch drops (at most 256 x 1518 bytes).
pub const PORT_QUEUE: usize = 256;
/// Smallest frame: an Ethernet header.
const ETH_HLEN: usize = ETH_HEADER_LEN;
/// Longest frame either way: no `feature-sg`, no GSO, so the frontend's MTU of 1500 bytes.
pub const MAX_FRAME: usize = ETH_HEADER_LEN + ETH_DATA_LEN;
/// Data slots one packet may span: the minimum every netback accepts (`netif.h`). A 1514-byte
/// frame needs at most two.
pub const MAX_DATA_SLOTS: usize = XEN_NETIF_NR_SLOTS_MIN;
/// Extra-info slots one packet may carry: one of each type.
pub const MAX_EXTRA_SLOTS: usize = XEN_NETIF_EXTRA_TYPE_MAX as usize - 1;

/// A vif on the switch.
#[derive(Debug)]
pub struct NetBackend {
    switch: Arc<Switch>,
    gnt: Arc<GntDev>,
    mac: Mac,
    /// The device's log budget, across its connections.
    log: Arc<RateLimit>,
}

impl NetBackend {
    /// A vif whose frontend gets MAC `mac`, attached to `switch` once connected on a port bound to
    /// `mac`.
    pub fn new(switch: Arc<Switch>, gnt: Arc<GntDev>, mac: Mac) -> Self {
        NetBackend {
            switch,
            gnt,
            mac,
            log: Arc::new(RateLimit::default()),
        }
    }
}

impl Backend for NetBackend {
    type Engine = NetEngine;

    fn frontend_keys(&self, id: &DeviceId) -> Vec<(String, String)> {
        vec![
            ("handle".into(), id.devid.to_string()),
            ("mac".into(), format_mac(&self.mac)),
        ]
    }

    fn backend_keys(&self, id: &DeviceId) -> Vec<(String, String)> {
        vec![
            ("handle".into(), id.devid.to_string()),
            ("mac".into(), format_mac(&self.mac)),
            ("type".into(), "pvkit".into()),
            ("feature-rx-copy".into(), "1".into()),
            ("feature-rx-flip".into(), "0".into()),
            ("feature-rx-notify".into(), "1".into()),
            ("feature-sg".into(), "0".into()),
            ("feature-gso-tcpv4".into(), "0".into()),
            ("feature-gso-tcpv6".into(), "0".into()),
            ("feature-split-event-channels".into(), "0".into()),
        ]
    }

    fn frontend_reads(&self, _: &Frontend) -> Vec<String> {
        frontend_reads()
    }

    fn connect(&self, id: &DeviceId, front: &Frontend) -> Result<Connected<NetEngine>> {
        let (tx_ref, rx_ref, port) = ring_keys(front)?;
        let tx_map = self
            .gnt
            .map(id.domid, &[tx_ref], true)
            .map_err(|error| Error::GrantMap {
                what: "tx ring",
                key: "tx-ring-ref",
                refs: vec![tx_ref],
                error,
            })?;
        let rx_map = self
            .gnt
            .map(id.domid, &[rx_ref], true)
            .map_err(|error| Error::GrantMap {
                what: "rx ring",
                key: "rx-ring-ref",
                refs: vec![rx_ref],
                error,
            })?;
        // SAFETY: each mapping lives in the same `NetEngines` as its ring and is dropped after it; only
        // the ring touches the memory, with atomics.
        let tx = unsafe { BackRing::<NetifTxRequest, NetifTxResponse>::new(tx_map.as_ptr(), tx_map.len()) }
            .map_err(|error| Error::RingUnusable {
            what: "tx ring",
            bytes: tx_map.len(),
            error,
        })?;
        // SAFETY: as above.
        let rx = unsafe { BackRing::<NetifRxRequest, NetifRxResponse>::new(rx_map.as_ptr(), rx_map.len()) }
            .map_err(|error| Error::RingUnusable {
            what: "rx ring",
            bytes: rx_map.len(),
            error,
        })?;
        let channel =
            EventChannel::bind_interdomain(id.domid, port).map_err(|error| Error::BindEventChannel {
                key: "event-channel",
                port,
                domid: id.domid,
                error,
            })?;
        limited_info!(self.log, device = %id, tx_ref, rx_ref, port, local_port = channel.local_port(), "rings mapped");
        let gnt: Arc<dyn GrantCopy> = self.gnt.clone();
        let engine = NetEngine::build(
            tx,
            rx,
            self.switch.clone(),
            self.mac,
            gnt,
            id.domid,
            id.to_string(),
            self.log.clone(),
        )?;
        Ok(Connected::new(engine, vec![tx_map, rx_map], channel))
    }
}

/// The frontend keys netif needs (all of them, whatever was read before).
fn frontend_reads() -> Vec<String> {
    [
        "request-rx-copy",
        "multi-queue-num-queues",
        "tx-ring-ref",
        "rx-ring-ref",
        "event-channel",
    ]
    .map(String::from)
    .into()
}

/// What `connect` takes from the frontend's keys, validated: the transmit and receive rings' grant
/// references and the event channel.
fn ring_keys(front: &Frontend) -> Result<(u32, u32, u32)> {
    if front.opt_number("request-rx-copy")? != Some(1) {
        return Err(Error::NoRxCopy);
    }
    if let Some(queues) = front.opt_number("multi-queue-num-queues")?
        && queues > 1
    {
        return Err(Error::MultiQueue { queues });
    }
    let (tx_ref, rx_ref) = (front.grant_ref("tx-ring-ref")?, front.grant_ref("rx-ring-ref")?);
    let port = front.port("event-channel")?;
    Ok((tx_ref, rx_ref, port))
}

#[derive(Debug, Default)]
struct Counts {
    tx_packets: u64,
    tx_bytes: u64,
    tx_errors: u64,
    /// Transmitted packets refused for claiming more than [`MAX_FRAME`] bytes.
    tx_oversize: u64,
    rx_packets: u64,
    rx_bytes: u64,
    rx_dropped: u64,
    /// Frames for the guest longer than [`MAX_FRAME`] (a VLAN-tagged frame from the tap), dropped.
    rx_oversize: u64,
    notifies: u64,
    checksums_filled: u64,
}

/// The netif protocol engine of one vif (its two rings and its switch port), independent of how
/// the rings and the frontend's pages are reached (host tests drive it on local memory). Dropping
/// it takes its port off the switch.
pub struct NetEngine {
    tx: BackRing<NetifTxRequest, NetifTxResponse>,
    rx: BackRing<NetifRxRequest, NetifRxResponse>,
    wake: Arc<EventFd>,
    queue: Arc<QueuedPort>,
    switch: Arc<Switch>,
    sw_port: PortId,
    gnt: Arc<dyn GrantCopy>,
    domid: DomId,
    name: String,
    /// A frame taken from the queue that waits for a posted receive buffer.
    pending: Option<Vec<u8>>,
    log: Arc<RateLimit>,
    counts: Counts,
}

impl std::fmt::Debug for NetEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetEngine")
            .field("name", &self.name)
            .field("port", &self.sw_port)
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl Drop for NetEngine {
    fn drop(&mut self) {
        let _ = self.switch.remove_port(self.sw_port);
    }
}

impl Engine for NetEngine {
    fn process(&mut self, notify: &dyn Notify) -> Result<()> {
        NetEngine::process(self, notify)
    }

    fn summary(&self, events: u64) -> String {
        NetEngine::summary(self, events)
    }

    fn extra_fd(&self) -> Option<RawFd> {
        Some(self.wake.as_raw_fd())
    }
}

impl NetEngine {
    /// The netif engine of one vif of domain `domid`: it serves the transmit ring `tx` and the
    /// receive ring `rx` (the backend ends of the frontend's two rings, however their memory is
    /// reached), sends the frontend's frames into `switch` on a new port bound to `mac` and
    /// receives the frames the switch has for that port; the frontend's pages are read and
    /// written through `gnt`. The port is taken off the switch when the engine is dropped.
    ///
    /// Drive it with [`Engine::process`] whenever the frontend sent an event or
    /// [`Engine::extra_fd`] (the port's wakeup eventfd) is readable; refusals of single packets
    /// are logged (at a bounded rate) under the name `vif of domain <domid>`.
    ///
    /// # Errors
    /// [`Error::EventFd`] if the port's wakeup eventfd cannot be made, [`Error::SwitchPort`] if
    /// `mac` cannot be bound (a group address, or bound to another port already).
    pub fn new(
        tx: BackRing<NetifTxRequest, NetifTxResponse>,
        rx: BackRing<NetifRxRequest, NetifRxResponse>,
        domid: DomId,
        switch: Arc<Switch>,
        mac: Mac,
        gnt: Arc<dyn GrantCopy>,
    ) -> Result<Self> {
        let name = format!("vif of domain {domid}");
        Self::build(
            tx,
            rx,
            switch,
            mac,
            gnt,
            domid,
            name,
            Arc::new(RateLimit::default()),
        )
    }

    /// The engine's port on its switch.
    pub fn port(&self) -> PortId {
        self.sw_port
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        tx: BackRing<NetifTxRequest, NetifTxResponse>,
        rx: BackRing<NetifRxRequest, NetifRxResponse>,
        switch: Arc<Switch>,
        mac: Mac,
        gnt: Arc<dyn GrantCopy>,
        domid: DomId,
        name: String,
        log: Arc<RateLimit>,
    ) -> Result<Self> {
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?);
        let w = wake.clone();
        let queue = QueuedPort::new(
            PORT_QUEUE,
            Box::new(move || {
                let _ = w.write(1);
            }),
        );
        let sw_port = switch
            .add_port_with(queue.clone(), PortPolicy::Bound(mac))
            .map_err(Error::SwitchPort)?;
        Ok(NetEngine {
            tx,
            rx,
            wake,
            queue,
            switch,
            sw_port,
            gnt,
            domid,
            name,
            pending: None,
            log,
            counts: Counts::default(),
        })
    }

    /// Serves both rings and the port's queue until nothing is left; `notify` tells the frontend.
    fn process(&mut self, notify_frontend: &dyn Notify) -> Result<()> {
        let mut notify = false;
        loop {
            let more_tx = self.transmit(&mut notify)?;
            let more_rx = self.receive(&mut notify)?;
            if !more_tx && !more_rx {
                break;
            }
        }
        if notify {
            notify_frontend.notify().map_err(Error::Notify)?;
            self.counts.notifies += 1;
        }
        Ok(())
    }

    fn summary(&self, events: u64) -> String {
        let c = &self.counts;
        let port = self.switch.port_counts(self.sw_port).unwrap_or_default();
        format!(
            "tx_packets={} tx_bytes={} tx_errors={} tx_oversize={} tx_spoofed={} checksums_filled={} \
             rx_packets={} rx_bytes={} rx_dropped={} rx_oversize={} queue_dropped={} logs_suppressed={} \
             events={} notifies={}",
            c.tx_packets,
            c.tx_bytes,
            c.tx_errors,
            c.tx_oversize,
            port.spoofed,
            c.checksums_filled,
            c.rx_packets,
            c.rx_bytes,
            c.rx_dropped,
            c.rx_oversize,
            self.queue.dropped(),
            self.log.suppressed_total(),
            events,
            c.notifies
        )
    }
}

/// The error that halts `ring`.
fn halted(ring: &'static str) -> impl Fn(ring_protocol::Error) -> Error {
    move |error| Error::RingHalted { ring, error }
}

/// Why a transmitted packet was refused: all its slots are answered `NETIF_RSP_ERROR` and it is
/// dropped (the ring goes on).
#[derive(Debug, thiserror::Error)]
enum TxRefusal {
    #[error("packet's next slot is not on the ring")]
    Unterminated,
    #[error("packet spans more than {MAX_DATA_SLOTS} data slots or {MAX_EXTRA_SLOTS} extra-info slots")]
    TooManySlots,
    #[error("GSO extra info, but GSO was not offered")]
    Gso,
    #[error("multicast control extra info, but it was not offered")]
    Multicast,
    #[error("extra info of unknown type {0}")]
    UnknownExtra(u8),
    #[error("{0}-byte packet exceeds the MTU ({MAX_FRAME} bytes)")]
    Oversize(usize),
    #[error("{0}-byte packet is shorter than an Ethernet header")]
    Runt(usize),
    #[error("packet size {total} is smaller than its later slots ({rest} bytes)")]
    LaterSlotsTooLong { total: usize, rest: usize },
    #[error("slot {slot}: {len} bytes at offset {offset} cross the page's end")]
    CrossesPage { slot: usize, len: usize, offset: u16 },
    #[error(transparent)]
    Grant(GrantError),
    #[error(transparent)]
    Switch(crate::Error),
}

impl NetEngine {
    /// Serves the transmit ring until empty; returns whether requests arrived after the final check.
    fn transmit(&mut self, notify: &mut bool) -> Result<bool> {
        let halted = halted("tx ring");
        while let Some(first) = self.tx.read_request().map_err(&halted)? {
            // Collect the packet's slots, each copied out of the ring once: data slots and
            // extra-info slots, in ring order. A chain longer than allowed is still consumed to its
            // end (at most the ring's size: the ring refuses more unanswered requests), so the
            // ring stays in step, and refused as a whole.
            let mut slots: Vec<(NetifTxRequest, bool)> = vec![(first, false)];
            let mut problem: Option<TxRefusal> = None;
            let mut extras = first.flags & NETTXF_EXTRA_INFO != 0;
            let mut more = first.flags & NETTXF_MORE_DATA != 0;
            let (mut data_slots, mut extra_slots) = (1usize, 0usize);
            while extras || more {
                let Some(next) = self.tx.read_request().map_err(&halted)? else {
                    problem.get_or_insert(TxRefusal::Unterminated);
                    break;
                };
                if extras {
                    let info = NetifExtraInfo::read_from_prefix(next.as_bytes())
                        .expect("slot holds extra info")
                        .0;
                    extras = info.flags & XEN_NETIF_EXTRA_FLAG_MORE != 0;
                    extra_slots += 1;
                    slots.push((next, true));
                } else {
                    more = next.flags & NETTXF_MORE_DATA != 0;
                    data_slots += 1;
                    slots.push((next, false));
                }
                if data_slots > MAX_DATA_SLOTS || extra_slots > MAX_EXTRA_SLOTS {
                    problem.get_or_insert(TxRefusal::TooManySlots);
                }
            }
            let result = match problem {
                Some(p) => Err(p),
                None => self.packet(&slots),
            };
            let status = match result {
                Ok(()) => NETIF_RSP_OKAY,
                Err(why) => {
                    self.counts.tx_errors += 1;
                    limited_warn!(self.log, device = %self.name, id = first.id, "transmit refused: {why}");
                    NETIF_RSP_ERROR
                }
            };
            for (req, extra) in &slots {
                let rsp = NetifTxResponse {
                    id: req.id,
                    status: if *extra { NETIF_RSP_NULL } else { status },
                };
                self.tx.write_response(&rsp).map_err(&halted)?;
            }
        }
        *notify |= self.tx.push_responses_and_check_notify().map_err(&halted)?;
        self.tx.final_check_for_requests().map_err(&halted)
    }

    /// Validates one packet (our copies of its slots), copies it out and sends it into the switch.
    fn packet(&mut self, slots: &[(NetifTxRequest, bool)]) -> std::result::Result<(), TxRefusal> {
        for (req, _) in slots.iter().filter(|(_, e)| *e) {
            let info = NetifExtraInfo::read_from_prefix(req.as_bytes())
                .expect("slot holds extra info")
                .0;
            match info.type_ {
                XEN_NETIF_EXTRA_TYPE_HASH => {} // a hint we have no use for
                XEN_NETIF_EXTRA_TYPE_GSO => return Err(TxRefusal::Gso),
                XEN_NETIF_EXTRA_TYPE_MCAST_ADD | XEN_NETIF_EXTRA_TYPE_MCAST_DEL => {
                    return Err(TxRefusal::Multicast);
                }
                t => return Err(TxRefusal::UnknownExtra(t)),
            }
        }
        let data: Vec<&NetifTxRequest> = slots.iter().filter(|(_, e)| !e).map(|(r, _)| r).collect();
        let total = usize::from(data[0].size);
        if total > MAX_FRAME {
            self.counts.tx_oversize += 1;
            return Err(TxRefusal::Oversize(total));
        }
        if total < ETH_HLEN {
            return Err(TxRefusal::Runt(total));
        }
        let rest: usize = data[1..].iter().map(|r| usize::from(r.size)).sum();
        let Some(first_len) = total.checked_sub(rest) else {
            return Err(TxRefusal::LaterSlotsTooLong { total, rest });
        };
        let mut pieces = Vec::with_capacity(data.len());
        for (i, r) in data.iter().enumerate() {
            let len = if i == 0 { first_len } else { usize::from(r.size) };
            if usize::from(r.offset) + len > PAGE_SIZE {
                return Err(TxRefusal::CrossesPage {
                    slot: i,
                    len,
                    offset: r.offset,
                });
            }
            pieces.push(GrantPiece {
                gref: r.gref,
                offset: r.offset,
                // At most PAGE_SIZE (checked above).
                len: len as u16,
            });
        }
        let mut frame = vec![0u8; total];
        self.gnt
            .copy_from_guest(self.domid, &pieces, &mut frame)
            .map_err(TxRefusal::Grant)?;
        if data[0].flags & NETTXF_CSUM_BLANK != 0 && fill_l4_checksum(&mut frame) {
            self.counts.checksums_filled += 1;
        }
        self.switch
            .send(self.sw_port, &frame)
            .map_err(TxRefusal::Switch)?;
        self.counts.tx_packets += 1;
        self.counts.tx_bytes += total as u64;
        Ok(())
    }

    /// Moves queued frames into posted receive buffers; returns whether more work showed up.
    fn receive(&mut self, notify: &mut bool) -> Result<bool> {
        let halted = halted("rx ring");
        while let Some(frame) = self.pending.take().or_else(|| self.queue.pop()) {
            if frame.len() > MAX_FRAME {
                self.counts.rx_oversize += 1;
                self.counts.rx_dropped += 1;
                continue;
            }
            let Some(req) = self.rx.read_request().map_err(&halted)? else {
                self.pending = Some(frame);
                // Ask to be told when buffers are posted; if some came meanwhile, go on.
                if self.rx.final_check_for_requests().map_err(&halted)? {
                    continue;
                }
                break;
            };
            let piece = GrantPiece {
                gref: req.gref,
                offset: 0,
                len: frame.len() as u16,
            };
            let status = match self.gnt.copy_to_guest(self.domid, &[piece], &frame) {
                Ok(()) => {
                    self.counts.rx_packets += 1;
                    self.counts.rx_bytes += frame.len() as u64;
                    frame.len() as i16
                }
                Err(e) => {
                    self.counts.rx_dropped += 1;
                    limited_warn!(self.log, device = %self.name, id = req.id, "receive buffer refused: {e}");
                    NETIF_RSP_ERROR
                }
            };
            let rsp = NetifRxResponse {
                id: req.id,
                offset: 0,
                flags: 0,
                status,
            };
            self.rx.write_response(&rsp).map_err(&halted)?;
        }
        *notify |= self.rx.push_responses_and_check_notify().map_err(&halted)?;
        Ok(self.pending.is_none() && !self.queue.is_empty())
    }
}

/// Fills in the TCP or UDP checksum of an IPv4 frame whose sender left it to the device; returns
/// whether it did (other frames are left alone).
pub fn fill_l4_checksum(frame: &mut [u8]) -> bool {
    const IPV4: u16 = 0x0800;
    if frame.len() < ETH_HLEN + 20 || u16::from_be_bytes([frame[12], frame[13]]) != IPV4 {
        return false;
    }
    let ip = ETH_HLEN;
    let ihl = usize::from(frame[ip] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]));
    if frame[ip] >> 4 != 4 || ihl < 20 || total < ihl || ip + total > frame.len() {
        return false;
    }
    let (proto, l4) = (frame[ip + 9], ip + ihl);
    let l4_len = total - ihl;
    let csum_at = match proto {
        6 if l4_len >= 20 => l4 + 16,
        17 if l4_len >= 8 => l4 + 6,
        _ => return false,
    };
    frame[csum_at] = 0;
    frame[csum_at + 1] = 0;
    let mut sum: u64 = 0;
    for c in frame[ip + 12..ip + 20].chunks(2) {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    sum += u64::from(proto) + l4_len as u64;
    for c in frame[l4..l4 + l4_len].chunks(2) {
        sum += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut csum = !(sum as u16);
    if proto == 17 && csum == 0 {
        csum = 0xffff;
    }
    frame[csum_at..csum_at + 2].copy_from_slice(&csum.to_be_bytes());
    true
}

/// Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, never in the default build):
/// the frontend-key parsing (the engine itself is [`NetEngine::new`]).
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    use super::*;

    /// The frontend keys the backend reads.
    pub fn frontend_reads() -> Vec<String> {
        super::frontend_reads()
    }

    /// The rings' grant references and the event channel, from the frontend's keys (what `connect`
    /// validates before mapping anything).
    ///
    /// # Errors
    /// The refusal `connect` would log.
    pub fn ring_keys(front: &Frontend) -> Result<(u32, u32, u32)> {
        super::ring_keys(front)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring_protocol::ring::{FrontRing, SharedPages};

    use crate::net::{ETHERTYPE_PVKIT_ECHO, EchoPeer};
    use crate::xen::gntdev::FakeGrants;
    use ring_protocol::platform::fake::CountingNotifier;

    const DOMID: DomId = 3;
    const GUEST: Mac = [0, 0x16, 0x3e, 0, 0, 0x10];
    const PEER: Mac = [2, 0x70, 0x76, 0x6b, 0x69, 0x74];

    /// Our frontend's two rings and the backend engine on local pages, a switch with an echo peer
    /// and a sniffer port that sees every flooded frame.
    struct Rig {
        tx: FrontRing<NetifTxRequest, NetifTxResponse>,
        rx: FrontRing<NetifRxRequest, NetifRxResponse>,
        back: NetEngine,
        grants: Arc<FakeGrants>,
        sniffer: Arc<QueuedPort>,
        echo: Arc<EchoPeer>,
        _mem: (SharedPages, SharedPages),
    }

    fn rig() -> Rig {
        let (tm, rm) = (SharedPages::new(PAGE_SIZE), SharedPages::new(PAGE_SIZE));
        // The pages outlive the rings (same struct, dropped after them); all four rings access
        // them only atomically.
        // SAFETY: as said.
        let tx = unsafe { FrontRing::init(tm.as_ptr(), tm.len()) }.unwrap();
        // SAFETY: as said.
        let rx = unsafe { FrontRing::init(rm.as_ptr(), rm.len()) }.unwrap();
        // SAFETY: as said.
        let btx = unsafe { BackRing::new(tm.as_ptr(), tm.len()) }.unwrap();
        // SAFETY: as said.
        let brx = unsafe { BackRing::new(rm.as_ptr(), rm.len()) }.unwrap();
        let switch = Switch::new();
        let echo = EchoPeer::try_attach(&switch, PEER, [10, 99, 0, 1]).unwrap();
        let sniffer = QueuedPort::new(64, Box::new(|| {}));
        switch.add_port(sniffer.clone());
        let grants = Arc::new(FakeGrants::new(DOMID));
        let gnt: Arc<dyn GrantCopy> = grants.clone();
        let back = NetEngine::new(btx, brx, DOMID, switch, GUEST, gnt).unwrap();
        Rig {
            tx,
            rx,
            back,
            grants,
            sniffer,
            echo,
            _mem: (tm, rm),
        }
    }

    fn echo_frame(len: usize) -> Vec<u8> {
        let mut f = Vec::with_capacity(len);
        f.extend_from_slice(&PEER);
        f.extend_from_slice(&GUEST);
        f.extend_from_slice(&ETHERTYPE_PVKIT_ECHO.to_be_bytes());
        f.extend((0..len - 14).map(|i| i as u8));
        f
    }

    /// An extra-info slot of `type_` with `flags` (as it sits in a tx ring slot).
    fn extra_slot(id: u16, type_: u8, flags: u8) -> NetifTxRequest {
        let mut r = tx_req(id, 0, 0, 0, 0);
        let info = NetifExtraInfo {
            type_,
            flags,
            u: [0; 6],
        };
        r.as_mut_bytes()[..8].copy_from_slice(info.as_bytes());
        r
    }

    fn tx_req(id: u16, gref: u32, offset: u16, size: u16, flags: u16) -> NetifTxRequest {
        NetifTxRequest {
            gref,
            offset,
            flags,
            id,
            size,
        }
    }

    impl Rig {
        /// Puts `bytes` into grant `gref` at `offset`.
        fn fill(&self, gref: u32, offset: u16, bytes: &[u8]) {
            self.grants.grant(gref, 0);
            let piece = GrantPiece {
                gref,
                offset,
                len: bytes.len() as u16,
            };
            self.grants.copy_to_guest(DOMID, &[piece], bytes).unwrap();
        }

        /// Pushes transmit slots, serves, returns the (id, status) of every response.
        fn transmit(&mut self, slots: &[NetifTxRequest]) -> Vec<(u16, i16)> {
            for s in slots {
                self.tx.write_request(s).unwrap();
            }
            self.tx.push_requests().unwrap();
            self.back.process(&CountingNotifier::new()).unwrap();
            let mut out = Vec::new();
            while let Some(r) = self.tx.read_response().unwrap() {
                out.push((r.id, r.status));
            }
            out
        }

        /// Posts receive buffers `grefs`, serves, returns the responses.
        fn receive(&mut self, grefs: &[u32]) -> Vec<NetifRxResponse> {
            for (i, &gref) in grefs.iter().enumerate() {
                self.grants.grant(gref, 0xee);
                self.rx
                    .write_request(&NetifRxRequest {
                        id: i as u16,
                        pad: 0,
                        gref,
                    })
                    .unwrap();
            }
            self.rx.push_requests().unwrap();
            self.back.process(&CountingNotifier::new()).unwrap();
            let mut out = Vec::new();
            while let Some(r) = self.rx.read_response().unwrap() {
                out.push(r);
            }
            out
        }
    }

    #[test]
    fn a_frame_goes_out_and_its_echo_waits_for_a_posted_buffer() {
        let mut rig = rig();
        let frame = echo_frame(600);
        rig.fill(10, 100, &frame);
        assert_eq!(
            rig.transmit(&[tx_req(1, 10, 100, 600, 0)]),
            vec![(1, NETIF_RSP_OKAY)]
        );
        assert_eq!(
            rig.echo.stats().echoed.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // No receive buffer posted yet: the echo waits; then it lands in the first posted page.
        let rsp = rig.receive(&[20, 21]);
        assert_eq!(rsp.len(), 1, "one frame for two buffers");
        assert_eq!((rsp[0].id, rsp[0].offset, rsp[0].status), (0, 0, 600));
        let page = rig.grants.page(20);
        assert_eq!(&page[0..6], &GUEST, "addressed back to the guest");
        assert_eq!(&page[6..12], &PEER);
        assert_eq!(&page[14..600], &frame[14..], "payload unchanged");
        assert!(page[600..].iter().all(|&b| b == 0xee), "nothing past the frame");
        assert_eq!(rig.back.counts.rx_packets, 1);
    }

    #[test]
    fn chained_and_extra_info_slots_get_one_response_each() {
        let mut rig = rig();
        // A frame whose buffer crosses a page boundary (as Linux's linear data does): two slots.
        let frame = echo_frame(1400);
        rig.fill(30, 3000, &frame[..1096]);
        rig.fill(31, 0, &frame[1096..]);
        let rsp = rig.transmit(&[
            tx_req(1, 30, 3000, 1400, NETTXF_MORE_DATA | NETTXF_EXTRA_INFO),
            // An extra-info slot (a hash hint, ignored), then the chained data slot.
            extra_slot(2, XEN_NETIF_EXTRA_TYPE_HASH, 0),
            tx_req(3, 31, 0, 304, 0),
        ]);
        assert_eq!(
            rsp,
            vec![(1, NETIF_RSP_OKAY), (2, NETIF_RSP_NULL), (3, NETIF_RSP_OKAY)]
        );
        let rsp = rig.receive(&[40]);
        assert_eq!(rsp[0].status, 1400);
        assert_eq!(
            &rig.grants.page(40)[14..1400],
            &frame[14..],
            "reassembled in order"
        );
    }

    #[test]
    fn malformed_packets_are_refused_and_the_ring_goes_on() {
        let mut rig = rig();
        rig.fill(50, 0, &echo_frame(200));
        let rsp = rig.transmit(&[
            // The first slot claims fewer bytes than the later slot carries.
            tx_req(1, 50, 0, 100, NETTXF_MORE_DATA),
            tx_req(2, 50, 0, 200, 0),
            // Crosses its page's end.
            tx_req(3, 50, 4000, 200, 0),
            // Shorter than an Ethernet header.
            tx_req(4, 50, 0, 10, 0),
            // A grant the frontend never issued.
            tx_req(5, 77, 0, 200, 0),
            // A good one.
            tx_req(6, 50, 0, 200, 0),
        ]);
        assert_eq!(
            rsp,
            vec![
                (1, NETIF_RSP_ERROR),
                (2, NETIF_RSP_ERROR),
                (3, NETIF_RSP_ERROR),
                (4, NETIF_RSP_ERROR),
                (5, NETIF_RSP_ERROR),
                (6, NETIF_RSP_OKAY),
            ]
        );
        assert_eq!((rig.back.counts.tx_errors, rig.back.counts.tx_packets), (4, 1));
        assert_eq!(
            rig.echo.stats().echoed.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn a_blank_udp_checksum_is_filled_in_before_the_switch() {
        let mut rig = rig();
        let mut frame = udp_frame(b"checksum me");
        frame[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 0x99]); // unknown: flooded to the sniffer
        frame[6..12].copy_from_slice(&GUEST);
        rig.fill(60, 0, &frame);
        let n = frame.len() as u16;
        assert_eq!(
            rig.transmit(&[tx_req(1, 60, 0, n, NETTXF_CSUM_BLANK)]),
            vec![(1, NETIF_RSP_OKAY)]
        );
        let seen = rig.sniffer.pop().expect("the flooded frame");
        let mut expect = frame.clone();
        assert!(fill_l4_checksum(&mut expect));
        assert_ne!(seen[40..42], [0, 0], "checksum present");
        assert_eq!(seen, expect);
        assert_eq!(rig.back.counts.checksums_filled, 1);
    }

    #[test]
    fn an_impossible_producer_index_halts_the_rings() {
        let mut rig = rig();
        // SAFETY: req_prod is the tx ring's first word, accessed atomically by both rings.
        let req_prod = unsafe { std::sync::atomic::AtomicU32::from_ptr(rig._mem.0.as_ptr().as_ptr().cast()) };
        req_prod.store(rig.tx.size() + 9, std::sync::atomic::Ordering::Release);
        let e = rig.back.process(&CountingNotifier::new()).unwrap_err();
        assert!(matches!(e, Error::RingHalted { ring: "tx ring", .. }), "{e}");
        assert!(e.to_string().contains("ring halted"), "{e}");
    }

    fn echoed(rig: &Rig) -> u64 {
        rig.echo.stats().echoed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// No `feature-sg`, no GSO: a packet claiming more than 1514 bytes is refused with an error
    /// before anything is copied, whether in one slot or chained; frames longer than that from the
    /// switch (a VLAN-tagged frame from a tap) never reach the guest. All counted.
    #[test]
    fn netback_oversize_frame_is_refused_with_an_error_and_counted() {
        let mut rig = rig();
        let big = echo_frame(MAX_FRAME);
        rig.fill(70, 0, &big);
        rig.fill(71, 0, &[0; 100]);
        let rsp = rig.transmit(&[
            tx_req(1, 70, 0, 4000, 0),
            tx_req(2, 70, 0, MAX_FRAME as u16 + 1, NETTXF_MORE_DATA),
            tx_req(3, 71, 0, 1, 0),
            tx_req(4, 70, 0, u16::MAX, 0),
            tx_req(5, 70, 0, MAX_FRAME as u16, 0),
        ]);
        assert_eq!(
            rsp,
            vec![
                (1, NETIF_RSP_ERROR),
                (2, NETIF_RSP_ERROR),
                (3, NETIF_RSP_ERROR),
                (4, NETIF_RSP_ERROR),
                (5, NETIF_RSP_OKAY),
            ]
        );
        assert_eq!((rig.back.counts.tx_oversize, rig.back.counts.tx_packets), (3, 1));
        assert_eq!(echoed(&rig), 1, "only the 1514-byte frame reached the switch");
        // From the switch: a 1518-byte frame (the switch's limit) for the guest is dropped at the
        // vif, a 1514-byte one is delivered.
        let sender = QueuedPort::new(4, Box::new(|| {}));
        let sp = rig.back.switch.add_port(sender);
        let mut vlan = echo_frame(crate::net::MAX_FRAME_LEN);
        vlan[0..6].copy_from_slice(&GUEST);
        vlan[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x77]);
        rig.back.switch.send(sp, &vlan).unwrap();
        let rsp = rig.receive(&[80, 81]);
        assert_eq!(rsp.len(), 1, "the echo of frame 5 only");
        assert_eq!(rsp[0].status, MAX_FRAME as i16);
        assert_eq!(rig.back.counts.rx_oversize, 1);
    }

    /// XSA-39 class: malformed slot chains. A chain of more data slots than allowed, a chain with
    /// too many extra-info slots, a chain the frontend never ends and an extra-info type that was
    /// not offered are each refused on every slot, the work is bounded by the ring, and the next
    /// packet goes through.
    #[test]
    fn xsa39_netback_overlong_and_malformed_slot_chains_are_refused_and_the_ring_goes_on() {
        let mut rig = rig();
        rig.fill(50, 0, &echo_frame(200));
        let mut slots = Vec::new();
        // 40 chained data slots (more than the 18 allowed).
        slots.push(tx_req(100, 50, 0, 200, NETTXF_MORE_DATA));
        for i in 1..40u16 {
            let flags = if i < 39 { NETTXF_MORE_DATA } else { 0 };
            slots.push(tx_req(100 + i, 50, 0, 0, flags));
        }
        // Six extra-info slots chained with XEN_NETIF_EXTRA_FLAG_MORE (at most 4 types exist).
        slots.push(tx_req(200, 50, 0, 200, NETTXF_EXTRA_INFO));
        for i in 1..=6u16 {
            let more = if i < 6 { XEN_NETIF_EXTRA_FLAG_MORE } else { 0 };
            slots.push(extra_slot(200 + i, XEN_NETIF_EXTRA_TYPE_HASH, more));
        }
        // A GSO extra (GSO was not offered), and an unknown extra type.
        slots.push(tx_req(300, 50, 0, 200, NETTXF_EXTRA_INFO));
        slots.push(extra_slot(301, XEN_NETIF_EXTRA_TYPE_GSO, 0));
        slots.push(tx_req(310, 50, 0, 200, NETTXF_EXTRA_INFO));
        slots.push(extra_slot(311, 0, 0));
        // A good packet.
        slots.push(tx_req(400, 50, 0, 200, 0));
        // A chain that never ends: its last published slot says more data follows.
        slots.push(tx_req(500, 50, 0, 200, NETTXF_MORE_DATA));
        slots.push(tx_req(501, 50, 0, 0, NETTXF_MORE_DATA));
        let rsp = rig.transmit(&slots);
        assert_eq!(rsp.len(), slots.len(), "every slot answered once");
        let status_of = |id: u16| rsp.iter().find(|(i, _)| *i == id).map(|(_, s)| *s);
        assert!((100..140).all(|id| status_of(id) == Some(NETIF_RSP_ERROR)));
        assert_eq!(status_of(200), Some(NETIF_RSP_ERROR));
        assert!((201..=206).all(|id| status_of(id) == Some(NETIF_RSP_NULL)));
        assert_eq!(
            (status_of(300), status_of(301), status_of(310), status_of(311)),
            (
                Some(NETIF_RSP_ERROR),
                Some(NETIF_RSP_NULL),
                Some(NETIF_RSP_ERROR),
                Some(NETIF_RSP_NULL)
            )
        );
        assert_eq!(status_of(400), Some(NETIF_RSP_OKAY));
        assert_eq!(
            (status_of(500), status_of(501)),
            (Some(NETIF_RSP_ERROR), Some(NETIF_RSP_ERROR))
        );
        assert_eq!((rig.back.counts.tx_errors, rig.back.counts.tx_packets), (5, 1));
        assert_eq!(echoed(&rig), 1);
        // And the ring goes on.
        assert_eq!(
            rig.transmit(&[tx_req(600, 50, 0, 200, 0)]),
            vec![(600, NETIF_RSP_OKAY)]
        );
    }

    /// XSA-155 class (double fetch) for transmit: the guest rewrites a slot (size, offset, grant)
    /// after the backend read it, while the backend copies the data. The frame that reaches the
    /// switch is the one the original slot described.
    #[test]
    fn xsa155_netback_acts_on_its_copy_of_the_slots() {
        let mut rig = rig();
        let frame = echo_frame(600);
        rig.fill(10, 100, &frame);
        rig.fill(11, 0, &echo_frame(1500));
        let slot = rig._mem.0.as_ptr().as_ptr() as usize
            + 64
            + (rig.tx.req_prod_pvt() % rig.tx.size()) as usize * 12;
        rig.grants.on_copy_from_guest(move || {
            // gref 11, offset 0, flags 0, id 1, size 1500: three 32-bit words.
            for (i, w) in [11u32, 0, 1 | (1500 << 16)].into_iter().enumerate() {
                // SAFETY: a 4-aligned word of the tx ring's slot, in memory that outlives the
                // rig's rings; accessed atomically like the rings' own accesses.
                let word = unsafe { std::sync::atomic::AtomicU32::from_ptr((slot + 4 * i) as *mut u32) };
                word.store(w, std::sync::atomic::Ordering::Relaxed);
            }
        });
        assert_eq!(
            rig.transmit(&[tx_req(1, 10, 100, 600, 0)]),
            vec![(1, NETIF_RSP_OKAY)]
        );
        assert_eq!(rig.back.counts.tx_bytes, 600);
        let rsp = rig.receive(&[20]);
        assert_eq!(rsp[0].status, 600, "the echo of the original 600 bytes");
        assert_eq!(&rig.grants.page(20)[14..600], &frame[14..]);
    }

    /// XSA-392 class: a guest that posts no receive buffers. Ten thousand frames for it cost dom0
    /// at most the port's queue (256 frames) plus one waiting frame; the rest are dropped and
    /// counted; the sender and the other ports go on; buffers posted later get the oldest frames.
    #[test]
    fn xsa392_netback_receive_queue_is_bounded_while_the_guest_posts_nothing() {
        let mut rig = rig();
        let other = QueuedPort::new(16, Box::new(|| {}));
        let op = rig
            .back
            .switch
            .add_port_with(other.clone(), PortPolicy::Bound([2, 0, 0, 0, 0, 0x55]))
            .unwrap();
        let sender = QueuedPort::new(4, Box::new(|| {}));
        let sp = rig
            .back
            .switch
            .add_port_with(sender, PortPolicy::Bound([2, 0, 0, 0, 0, 0x66]))
            .unwrap();
        for i in 0..10_000u32 {
            let mut f = echo_frame(100);
            f[0..6].copy_from_slice(&GUEST);
            f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x66]);
            f[14..18].copy_from_slice(&i.to_be_bytes());
            rig.back.switch.send(sp, &f).unwrap();
            if i % 1000 == 0 {
                rig.back.process(&CountingNotifier::new()).unwrap();
                let mut g = f.clone();
                g[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 0x55]);
                rig.back.switch.send(sp, &g).unwrap();
            }
        }
        rig.back.process(&CountingNotifier::new()).unwrap();
        assert_eq!(rig.back.queue.len(), PORT_QUEUE);
        assert!(rig.back.pending.is_some());
        assert_eq!(rig.back.queue.dropped(), 10_000 - PORT_QUEUE as u64 - 1);
        assert_eq!(other.len(), 10, "the other port got every frame for it");
        assert_eq!(rig.back.switch.lookup(&[2, 0, 0, 0, 0, 0x55]), Some(op));
        // Buffers posted now receive the oldest frames first, in order.
        let grefs: Vec<u32> = (0..200).map(|i| 3000 + i).collect();
        let rsp = rig.receive(&grefs);
        assert_eq!(rsp.len(), 200);
        for (k, &g) in grefs.iter().enumerate() {
            assert_eq!(
                &rig.grants.page(g)[14..18],
                &(k as u32).to_be_bytes(),
                "frame {k}"
            );
        }
    }

    /// A vif sending from any address but its own (another guest's, the echo peer's): the frame is
    /// refused with an error, counted on its switch port, and never reaches the switch.
    #[test]
    fn switch_mac_spoof_through_netback_is_refused_and_counted() {
        let mut rig = rig();
        let mut f = echo_frame(200);
        f[6..12].copy_from_slice(&PEER);
        rig.fill(90, 0, &f);
        let mut g = echo_frame(200);
        g[6..12].copy_from_slice(&[0x02, 0xde, 0xad, 0xbe, 0xef, 0x01]);
        rig.fill(91, 0, &g);
        let rsp = rig.transmit(&[tx_req(1, 90, 0, 200, 0), tx_req(2, 91, 0, 200, 0)]);
        assert_eq!(rsp, vec![(1, NETIF_RSP_ERROR), (2, NETIF_RSP_ERROR)]);
        let counts = rig.back.switch.port_counts(rig.back.sw_port).unwrap();
        assert_eq!((counts.spoofed, counts.frames_in), (2, 2));
        assert_eq!(echoed(&rig), 0);
        assert!(rig.sniffer.is_empty());
        assert_eq!(rig.back.switch.lookup(&PEER), Some(rig.echo.port()));
        assert!(rig.back.summary(0).contains("tx_spoofed=2"));
    }

    /// An Ethernet + IPv4 + UDP frame with `payload`, checksum field zero.
    fn udp_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let total = 20 + 8 + payload.len();
        f.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 1, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&[10, 99, 0, 2, 10, 99, 0, 1]);
        let ulen = 8 + payload.len();
        f.extend_from_slice(&[0x30, 0x39, 0x00, 0x07, (ulen >> 8) as u8, ulen as u8, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn udp_checksum_verifies_over_the_pseudo_header() {
        let mut f = udp_frame(b"pvkit!");
        assert!(fill_l4_checksum(&mut f));
        // Summing pseudo-header and segment including the checksum gives 0xffff.
        let l4 = 34;
        let mut sum: u64 = 0;
        for c in f[26..34].chunks(2) {
            sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        sum += 17 + (f.len() - l4) as u64;
        for c in f[l4..].chunks(2) {
            sum += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
    }

    #[test]
    fn non_ip_and_truncated_frames_are_left_alone() {
        let mut arp = vec![0u8; 60];
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert!(!fill_l4_checksum(&mut arp));
        let mut f = udp_frame(b"x");
        f.truncate(40);
        assert!(!fill_l4_checksum(&mut f));
    }

    #[test]
    fn macs_print_like_xl_writes_them() {
        assert_eq!(format_mac(&[0, 0x16, 0x3e, 0, 0, 0x10]), "00:16:3e:00:00:10");
    }
}
