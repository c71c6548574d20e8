//! netback: the netif protocol (`io/netif.h`) connected to a port of the net core's switch.
//!
//! Offered: receive by copy (`feature-rx-copy`; the frontend posts pages, the backend copies frames
//! into them), notification of newly posted receive buffers (`feature-rx-notify`), one queue, one
//! event channel for both rings. Not offered: scatter-gather, GSO, multicast control, split event
//! channels. Frames therefore fit one page each way (the frontend's MTU stays 1500).
//!
//! Transmit: each packet (its first slot gives the whole size, `NETTXF_more_data` chains further
//! slots, `NETTXF_extra_info` is followed by extra-info slots) is copied out with one grant copy,
//! validated, its IPv4 TCP/UDP checksum filled in when the frontend left it blank
//! (`NETTXF_csum_blank`, which Linux does since IPv4 checksum offload needs no feature key), and sent
//! into the switch. Every slot gets its response (`NETIF_RSP_NULL` for extra-info slots); a malformed
//! packet gets `NETIF_RSP_ERROR` on all its slots and is dropped. Receive: frames the switch queued
//! for this port are copied into posted buffers; while none is posted the oldest frame waits (the
//! port's queue is bounded and counts what it drops).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use ring_protocol::abi::netif::{
    NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY, NETTXF_CSUM_BLANK, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA,
    NetifExtraInfo, NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse,
    XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_NR_SLOTS_MIN,
};
use ring_protocol::abi::xen::DomId;
use ring_protocol::ring::BackRing;
use vmm_sys_util::eventfd::EventFd;
use zerocopy::{FromBytes, IntoBytes};

use super::evtchn::EventChannel;
use super::gntdev::{GntDev, GrantCopy, GrantPiece, PAGE_SIZE};
use super::xenbus::{Backend, Connected, DeviceId, Engine, Frontend, Rings};
use crate::net::{Mac, PortId, QueuedPort, Switch};

/// Frames queued for a guest port before the switch drops.
const PORT_QUEUE: usize = 256;
/// Malformed packets logged one by one before the log only counts them.
const LOGGED_FAILURES: u64 = 16;
/// Smallest frame: an Ethernet header.
const ETH_HLEN: usize = 14;

/// A vif on the switch.
#[derive(Debug)]
pub struct NetBackend {
    switch: Arc<Switch>,
    gnt: Arc<GntDev>,
    mac: Mac,
}

impl NetBackend {
    /// A vif whose frontend gets MAC `mac`, attached to `switch` once connected.
    pub fn new(switch: Arc<Switch>, gnt: Arc<GntDev>, mac: Mac) -> Self {
        NetBackend { switch, gnt, mac }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(m: &Mac) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

impl Backend for NetBackend {
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

    fn connect(&self, id: &DeviceId, front: &Frontend) -> Result<Box<dyn Rings>, String> {
        if front.opt_number("request-rx-copy")? != Some(1) {
            return Err("the frontend does not request rx-copy (the only receive mode offered)".into());
        }
        if front.opt_number("multi-queue-num-queues")?.is_some_and(|n| n > 1) {
            return Err("multiple queues requested, one is offered".into());
        }
        let gref = |key: &str| -> Result<u32, String> {
            let v = front.number(key)?;
            u32::try_from(v).map_err(|_| format!("{key} {v} is not a grant reference"))
        };
        let (tx_ref, rx_ref) = (gref("tx-ring-ref")?, gref("rx-ring-ref")?);
        let port = front.number("event-channel")?;
        let port = u32::try_from(port).map_err(|_| format!("event-channel {port} is out of range"))?;
        let tx_map = self
            .gnt
            .map(id.domid, &[tx_ref], true)
            .map_err(|e| format!("cannot map tx-ring-ref {tx_ref}: {e}"))?;
        let rx_map = self
            .gnt
            .map(id.domid, &[rx_ref], true)
            .map_err(|e| format!("cannot map rx-ring-ref {rx_ref}: {e}"))?;
        // SAFETY: each mapping lives in the same `NetRings` as its ring and is dropped after it; only
        // the ring touches the memory, with atomics.
        let tx = unsafe { BackRing::<NetifTxRequest, NetifTxResponse>::new(tx_map.as_ptr(), tx_map.len()) }
            .map_err(|e| format!("tx ring unusable: {e}"))?;
        // SAFETY: as above.
        let rx = unsafe { BackRing::<NetifRxRequest, NetifRxResponse>::new(rx_map.as_ptr(), rx_map.len()) }
            .map_err(|e| format!("rx ring unusable: {e}"))?;
        let channel = EventChannel::bind_interdomain(id.domid, port)
            .map_err(|e| format!("cannot bind event-channel {port} of domain {}: {e}", id.domid))?;
        tracing::info!(device = %id, tx_ref, rx_ref, port, local_port = channel.local_port(), "rings mapped");
        let gnt: Arc<dyn GrantCopy> = self.gnt.clone();
        let engine = NetRing::new(tx, rx, self.switch.clone(), gnt, id.domid, id.to_string())?;
        Ok(Connected::new(engine, vec![tx_map, rx_map], channel))
    }
}

#[derive(Debug, Default)]
struct Counts {
    tx_packets: u64,
    tx_bytes: u64,
    tx_errors: u64,
    rx_packets: u64,
    rx_bytes: u64,
    rx_dropped: u64,
    notifies: u64,
    checksums_filled: u64,
}

/// The netif protocol engine of one vif (its two rings and its switch port), independent of how
/// the rings and the frontend's pages are reached (host tests drive it on local memory).
struct NetRing {
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
    counts: Counts,
}

impl Drop for NetRing {
    fn drop(&mut self) {
        let _ = self.switch.remove_port(self.sw_port);
    }
}

impl Engine for NetRing {
    fn process(&mut self, notify: &mut dyn FnMut() -> Result<(), String>) -> Result<(), String> {
        NetRing::process(self, notify)
    }

    fn summary(&self, events: u64) -> String {
        NetRing::summary(self, events)
    }

    fn extra_fd(&self) -> Option<RawFd> {
        Some(self.wake.as_raw_fd())
    }
}

impl NetRing {
    fn new(
        tx: BackRing<NetifTxRequest, NetifTxResponse>,
        rx: BackRing<NetifRxRequest, NetifRxResponse>,
        switch: Arc<Switch>,
        gnt: Arc<dyn GrantCopy>,
        domid: DomId,
        name: String,
    ) -> Result<Self, String> {
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?);
        let w = wake.clone();
        let queue = QueuedPort::new(
            PORT_QUEUE,
            Box::new(move || {
                let _ = w.write(1);
            }),
        );
        let sw_port = switch.add_port(queue.clone());
        Ok(NetRing {
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
            counts: Counts::default(),
        })
    }

    /// Serves both rings and the port's queue until nothing is left; `notify` tells the frontend.
    fn process(&mut self, notify_frontend: &mut dyn FnMut() -> Result<(), String>) -> Result<(), String> {
        let mut notify = false;
        loop {
            let more_tx = self.transmit(&mut notify)?;
            let more_rx = self.receive(&mut notify)?;
            if !more_tx && !more_rx {
                break;
            }
        }
        if notify {
            notify_frontend()?;
            self.counts.notifies += 1;
        }
        Ok(())
    }

    fn summary(&self, events: u64) -> String {
        let c = &self.counts;
        format!(
            "tx_packets={} tx_bytes={} tx_errors={} checksums_filled={} rx_packets={} rx_bytes={} \
             rx_dropped={} queue_dropped={} events={} notifies={}",
            c.tx_packets,
            c.tx_bytes,
            c.tx_errors,
            c.checksums_filled,
            c.rx_packets,
            c.rx_bytes,
            c.rx_dropped,
            self.queue.dropped(),
            events,
            c.notifies
        )
    }
}

fn halted(e: ring_protocol::Error) -> String {
    format!("ring halted: {e}")
}

impl NetRing {
    /// Serves the transmit ring until empty; returns whether requests arrived after the final check.
    fn transmit(&mut self, notify: &mut bool) -> Result<bool, String> {
        while let Some(first) = self.tx.read_request().map_err(halted)? {
            // Collect the packet's slots: data slots and extra-info slots, in ring order.
            let mut slots: Vec<(NetifTxRequest, bool)> = vec![(first, false)];
            let mut problem: Option<String> = None;
            let mut extras = first.flags & NETTXF_EXTRA_INFO != 0;
            let mut more = first.flags & NETTXF_MORE_DATA != 0;
            while extras || more {
                if slots.len() > XEN_NETIF_NR_SLOTS_MIN + 4 {
                    problem.get_or_insert_with(|| {
                        format!("packet spans more than {XEN_NETIF_NR_SLOTS_MIN} slots")
                    });
                }
                let Some(next) = self.tx.read_request().map_err(halted)? else {
                    problem.get_or_insert_with(|| "packet's next slot is not on the ring".into());
                    break;
                };
                if extras {
                    let info = NetifExtraInfo::read_from_prefix(next.as_bytes())
                        .expect("slot holds extra info")
                        .0;
                    extras = info.flags & XEN_NETIF_EXTRA_FLAG_MORE != 0;
                    slots.push((next, true));
                } else {
                    more = next.flags & NETTXF_MORE_DATA != 0;
                    slots.push((next, false));
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
                    if self.counts.tx_errors <= LOGGED_FAILURES {
                        tracing::warn!(device = %self.name, id = first.id, "transmit refused: {why}");
                    }
                    NETIF_RSP_ERROR
                }
            };
            for (req, extra) in &slots {
                let rsp = NetifTxResponse {
                    id: req.id,
                    status: if *extra { NETIF_RSP_NULL } else { status },
                };
                self.tx.write_response(&rsp).map_err(halted)?;
            }
        }
        *notify |= self.tx.push_responses_and_check_notify().map_err(halted)?;
        self.tx.final_check_for_requests().map_err(halted)
    }

    /// Copies one packet out, validates it and sends it into the switch.
    fn packet(&mut self, slots: &[(NetifTxRequest, bool)]) -> Result<(), String> {
        let data: Vec<&NetifTxRequest> = slots.iter().filter(|(_, e)| !e).map(|(r, _)| r).collect();
        let total = usize::from(data[0].size);
        let rest: usize = data[1..].iter().map(|r| usize::from(r.size)).sum();
        if rest > total {
            return Err(format!(
                "packet size {total} is smaller than its later slots ({rest} bytes)"
            ));
        }
        let mut pieces = Vec::with_capacity(data.len());
        for (i, r) in data.iter().enumerate() {
            let len = if i == 0 { total - rest } else { usize::from(r.size) };
            if usize::from(r.offset) + len > PAGE_SIZE {
                return Err(format!(
                    "slot {i}: {len} bytes at offset {} cross the page's end",
                    r.offset
                ));
            }
            pieces.push(GrantPiece {
                gref: r.gref,
                offset: r.offset,
                len: len as u16,
            });
        }
        if total < ETH_HLEN {
            return Err(format!("{total}-byte packet is shorter than an Ethernet header"));
        }
        let mut frame = vec![0u8; total];
        self.gnt
            .copy_from_guest(self.domid, &pieces, &mut frame)
            .map_err(|e| e.to_string())?;
        if data[0].flags & NETTXF_CSUM_BLANK != 0 && fill_l4_checksum(&mut frame) {
            self.counts.checksums_filled += 1;
        }
        self.counts.tx_packets += 1;
        self.counts.tx_bytes += total as u64;
        self.switch.send(self.sw_port, &frame).map_err(|e| e.to_string())
    }

    /// Moves queued frames into posted receive buffers; returns whether more work showed up.
    fn receive(&mut self, notify: &mut bool) -> Result<bool, String> {
        while let Some(frame) = self.pending.take().or_else(|| self.queue.pop()) {
            if frame.len() > PAGE_SIZE {
                self.counts.rx_dropped += 1;
                continue;
            }
            let Some(req) = self.rx.read_request().map_err(halted)? else {
                self.pending = Some(frame);
                // Ask to be told when buffers are posted; if some came meanwhile, go on.
                if self.rx.final_check_for_requests().map_err(halted)? {
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
                    if self.counts.rx_dropped <= LOGGED_FAILURES {
                        tracing::warn!(device = %self.name, id = req.id, "receive buffer refused: {e}");
                    }
                    NETIF_RSP_ERROR
                }
            };
            let rsp = NetifRxResponse {
                id: req.id,
                offset: 0,
                flags: 0,
                status,
            };
            self.rx.write_response(&rsp).map_err(halted)?;
        }
        *notify |= self.rx.push_responses_and_check_notify().map_err(halted)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use ring_protocol::ring::{FrontRing, SharedPages};

    use crate::net::{ETHERTYPE_PVKIT_ECHO, EchoPeer};
    use crate::xen::gntdev::FakeGrants;

    const DOMID: DomId = 3;
    const GUEST: Mac = [0, 0x16, 0x3e, 0, 0, 0x10];
    const PEER: Mac = [2, 0x70, 0x76, 0x6b, 0x69, 0x74];

    /// Our frontend's two rings and the backend engine on local pages, a switch with an echo peer
    /// and a sniffer port that sees every flooded frame.
    struct Rig {
        tx: FrontRing<NetifTxRequest, NetifTxResponse>,
        rx: FrontRing<NetifRxRequest, NetifRxResponse>,
        back: NetRing,
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
        let echo = EchoPeer::attach(&switch, PEER, [10, 99, 0, 1]);
        let sniffer = QueuedPort::new(64, Box::new(|| {}));
        switch.add_port(sniffer.clone());
        let grants = Arc::new(FakeGrants::new(DOMID));
        let gnt: Arc<dyn GrantCopy> = grants.clone();
        let back = NetRing::new(btx, brx, switch, gnt, DOMID, "vif test".into()).unwrap();
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
            self.back.process(&mut || Ok(())).unwrap();
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
            self.back.process(&mut || Ok(())).unwrap();
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
        let frame = echo_frame(3000);
        rig.fill(30, 2000, &frame[..2000]);
        rig.fill(31, 0, &frame[2000..]);
        let rsp = rig.transmit(&[
            tx_req(1, 30, 2000, 3000, NETTXF_MORE_DATA | NETTXF_EXTRA_INFO),
            // An extra-info slot (GSO type none), then the chained data slot.
            tx_req(2, 0, 0, 0, 0),
            tx_req(3, 31, 0, 1000, 0),
        ]);
        assert_eq!(
            rsp,
            vec![(1, NETIF_RSP_OKAY), (2, NETIF_RSP_NULL), (3, NETIF_RSP_OKAY)]
        );
        let rsp = rig.receive(&[40]);
        assert_eq!(rsp[0].status, 3000);
        assert_eq!(
            &rig.grants.page(40)[14..3000],
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
        let e = rig.back.process(&mut || Ok(())).unwrap_err();
        assert!(e.contains("ring halted"), "{e}");
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
