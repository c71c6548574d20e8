//! The net core: a small L2 switch with MAC learning and flooding, guest ports (bounded frame queues
//! an adapter drains into its receive ring) and a host test port ([`EchoPeer`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crossbeam_queue::ArrayQueue;

use crate::{Error, Result};

/// An Ethernet address.
pub type Mac = [u8; 6];

/// Length of an Ethernet II header (destination, source, EtherType).
pub const ETH_HEADER_LEN: usize = 14;

/// EtherType of pvkit's echo frames (IEEE local experimental 1).
pub const ETHERTYPE_PVKIT_ECHO: u16 = 0x88b5;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;

/// At most this many learned addresses; when full the table starts over (flooding until relearned).
const MAX_LEARNED: usize = 4096;

/// Identifies a port on a [`Switch`].
pub type PortId = usize;

/// Something frames are delivered to.
pub trait PortSink: Send + Sync {
    /// Takes one frame. It must not block; a full port drops the frame (and counts it).
    fn deliver(&self, frame: &[u8]);
}

/// Counts kept by the switch.
#[derive(Debug, Default)]
pub struct SwitchStats {
    /// Frames sent into the switch.
    pub frames_in: AtomicU64,
    /// Frames forwarded to exactly one learned port.
    pub unicast: AtomicU64,
    /// Frames flooded to every other port.
    pub flooded: AtomicU64,
    /// Frames dropped because the destination was learned on the sending port.
    pub filtered: AtomicU64,
}

#[derive(Default)]
struct Inner {
    ports: Vec<Option<Arc<dyn PortSink>>>,
    table: HashMap<Mac, PortId>,
}

/// A learning L2 switch.
#[derive(Default)]
pub struct Switch {
    inner: Mutex<Inner>,
    stats: SwitchStats,
}

impl fmt::Debug for Switch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.lock().expect("switch lock");
        f.debug_struct("Switch")
            .field("ports", &inner.ports.iter().filter(|p| p.is_some()).count())
            .field("learned", &inner.table.len())
            .field("stats", &self.stats)
            .finish()
    }
}

fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

impl Switch {
    /// An empty switch.
    pub fn new() -> Arc<Self> {
        Arc::new(Switch::default())
    }

    /// Attaches a port; frames for it go to `sink`.
    pub fn add_port(&self, sink: Arc<dyn PortSink>) -> PortId {
        let mut inner = self.inner.lock().expect("switch lock");
        if let Some(free) = inner.ports.iter().position(Option::is_none) {
            inner.ports[free] = Some(sink);
            free
        } else {
            inner.ports.push(Some(sink));
            inner.ports.len() - 1
        }
    }

    /// Detaches a port and forgets the addresses learned on it.
    pub fn remove_port(&self, port: PortId) -> Result<()> {
        let mut inner = self.inner.lock().expect("switch lock");
        match inner.ports.get_mut(port) {
            Some(slot @ Some(_)) => *slot = None,
            _ => return Err(Error::NoSuchPort { port }),
        }
        inner.table.retain(|_, p| *p != port);
        Ok(())
    }

    /// The port an address was learned on.
    pub fn lookup(&self, mac: &Mac) -> Option<PortId> {
        self.inner.lock().expect("switch lock").table.get(mac).copied()
    }

    /// The switch's counts.
    pub fn stats(&self) -> &SwitchStats {
        &self.stats
    }

    /// Switches one frame arriving on port `from`: learns its source address, then delivers it to
    /// the port its destination was learned on, or floods it to every other port (broadcast,
    /// multicast, unknown). Sinks run after the switch's lock is released, so a sink may send.
    pub fn send(&self, from: PortId, frame: &[u8]) -> Result<()> {
        if frame.len() < ETH_HEADER_LEN {
            return Err(Error::ShortFrame { len: frame.len() });
        }
        let dst: Mac = frame[0..6].try_into().expect("6 bytes");
        let src: Mac = frame[6..12].try_into().expect("6 bytes");
        self.stats.frames_in.fetch_add(1, Ordering::Relaxed);
        let targets: Vec<Arc<dyn PortSink>> = {
            let mut inner = self.inner.lock().expect("switch lock");
            if inner.ports.get(from).is_none_or(Option::is_none) {
                return Err(Error::NoSuchPort { port: from });
            }
            if !is_multicast(&src) {
                if inner.table.len() >= MAX_LEARNED && !inner.table.contains_key(&src) {
                    inner.table.clear();
                }
                inner.table.insert(src, from);
            }
            let learned = if is_multicast(&dst) {
                None
            } else {
                inner.table.get(&dst).copied()
            };
            match learned {
                Some(p) if p == from => {
                    self.stats.filtered.fetch_add(1, Ordering::Relaxed);
                    Vec::new()
                }
                Some(p) => {
                    self.stats.unicast.fetch_add(1, Ordering::Relaxed);
                    inner.ports[p].iter().cloned().collect()
                }
                None => {
                    self.stats.flooded.fetch_add(1, Ordering::Relaxed);
                    inner
                        .ports
                        .iter()
                        .enumerate()
                        .filter(|&(i, _)| i != from)
                        .filter_map(|(_, p)| p.clone())
                        .collect()
                }
            }
        };
        for t in targets {
            t.deliver(frame);
        }
        Ok(())
    }
}

/// A guest port: a bounded queue of frames waiting for the guest's receive buffers, and a callback
/// that tells the adapter there is something to deliver.
pub struct QueuedPort {
    frames: ArrayQueue<Vec<u8>>,
    wake: Box<dyn Fn() + Send + Sync>,
    dropped: AtomicU64,
}

impl fmt::Debug for QueuedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuedPort")
            .field("queued", &self.frames.len())
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl QueuedPort {
    /// A port holding at most `capacity` frames; `wake` runs after each frame is queued.
    pub fn new(capacity: usize, wake: Box<dyn Fn() + Send + Sync>) -> Arc<Self> {
        Arc::new(QueuedPort {
            frames: ArrayQueue::new(capacity.max(1)),
            wake,
            dropped: AtomicU64::new(0),
        })
    }

    /// The oldest queued frame.
    pub fn pop(&self) -> Option<Vec<u8>> {
        self.frames.pop()
    }

    /// Puts a frame back at the end (when the guest has no buffer big enough right now, the adapter
    /// keeps it in its own one-frame slot instead; this is for tests and simple users).
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Frames dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl PortSink for QueuedPort {
    fn deliver(&self, frame: &[u8]) {
        if self.frames.push(frame.to_vec()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        (self.wake)();
    }
}

/// What the echo peer answered.
#[derive(Debug, Default)]
pub struct EchoStats {
    /// pvkit echo frames (EtherType 0x88b5) sent back.
    pub echoed: AtomicU64,
    /// ARP replies for its IPv4 address.
    pub arp: AtomicU64,
    /// ICMP echo replies.
    pub icmp: AtomicU64,
    /// UDP datagrams to port 7 echoed.
    pub udp: AtomicU64,
    /// Frames for it that it did not understand.
    pub ignored: AtomicU64,
}

/// The host test port: a peer with its own MAC and IPv4 address that answers
/// - pvkit echo frames (EtherType 0x88b5, the guest's `net-echo` workload): sent back with the
///   addresses swapped;
/// - ARP requests for its address, ICMP echo requests (ping) and UDP to port 7 (echo) from a Linux
///   guest.
pub struct EchoPeer {
    mac: Mac,
    ip: [u8; 4],
    switch: Weak<Switch>,
    port: OnceLock<PortId>,
    stats: EchoStats,
    ip_id: AtomicUsize,
}

impl fmt::Debug for EchoPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EchoPeer")
            .field("mac", &self.mac)
            .field("ip", &self.ip)
            .field("stats", &self.stats)
            .finish()
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl EchoPeer {
    /// Creates the peer and attaches it to `switch`.
    pub fn attach(switch: &Arc<Switch>, mac: Mac, ip: [u8; 4]) -> Arc<Self> {
        let peer = Arc::new(EchoPeer {
            mac,
            ip,
            switch: Arc::downgrade(switch),
            port: OnceLock::new(),
            stats: EchoStats::default(),
            ip_id: AtomicUsize::new(1),
        });
        let port = switch.add_port(peer.clone());
        peer.port.set(port).expect("port set once");
        peer
    }

    /// What it answered so far.
    pub fn stats(&self) -> &EchoStats {
        &self.stats
    }

    /// Its port on the switch.
    pub fn port(&self) -> PortId {
        *self.port.get().expect("attached")
    }

    /// The reply to one frame, if any.
    pub fn answer(&self, frame: &[u8]) -> Option<Vec<u8>> {
        if frame.len() < ETH_HEADER_LEN {
            return None;
        }
        let dst: Mac = frame[0..6].try_into().ok()?;
        let src: Mac = frame[6..12].try_into().ok()?;
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let for_me = dst == self.mac;
        let mut out = Vec::with_capacity(frame.len());
        out.extend_from_slice(&src);
        out.extend_from_slice(&self.mac);
        out.extend_from_slice(&frame[12..14]);
        let body = &frame[ETH_HEADER_LEN..];
        match ethertype {
            ETHERTYPE_PVKIT_ECHO if for_me => {
                out.extend_from_slice(body);
                self.stats.echoed.fetch_add(1, Ordering::Relaxed);
                Some(out)
            }
            ETHERTYPE_ARP if body.len() >= 28 => {
                // htype 1, ptype IPv4, hlen 6, plen 4, op 1 (request), target IP ours.
                let request = body[0..8] == [0, 1, 8, 0, 6, 4, 0, 1];
                if !request || body[24..28] != self.ip {
                    return None;
                }
                out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
                out.extend_from_slice(&self.mac);
                out.extend_from_slice(&self.ip);
                out.extend_from_slice(&body[8..18]); // requester's MAC and IP
                self.stats.arp.fetch_add(1, Ordering::Relaxed);
                Some(out)
            }
            ETHERTYPE_IPV4 if for_me && body.len() >= 20 => self.answer_ipv4(body, out),
            _ => {
                if for_me {
                    self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                }
                None
            }
        }
    }

    fn answer_ipv4(&self, ip: &[u8], mut out: Vec<u8>) -> Option<Vec<u8>> {
        let ihl = usize::from(ip[0] & 0xf) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || total > ip.len() || ip[16..20] != self.ip {
            self.stats.ignored.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let proto = ip[9];
        let payload = &ip[ihl..total];
        let mut reply_payload = payload.to_vec();
        match proto {
            1 if payload.len() >= 8 && payload[0] == 8 => {
                reply_payload[0] = 0; // echo reply
                reply_payload[2..4].fill(0);
                let c = checksum(&reply_payload);
                reply_payload[2..4].copy_from_slice(&c.to_be_bytes());
                self.stats.icmp.fetch_add(1, Ordering::Relaxed);
            }
            17 if payload.len() >= 8 && payload[2..4] == [0, 7] => {
                reply_payload[0..2].copy_from_slice(&payload[2..4]);
                reply_payload[2..4].copy_from_slice(&payload[0..2]);
                reply_payload[6..8].fill(0); // no UDP checksum (allowed over IPv4)
                self.stats.udp.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        let mut hdr = [0u8; 20];
        hdr[0] = 0x45;
        hdr[2..4].copy_from_slice(&((20 + reply_payload.len()) as u16).to_be_bytes());
        let id = self.ip_id.fetch_add(1, Ordering::Relaxed) as u16;
        hdr[4..6].copy_from_slice(&id.to_be_bytes());
        hdr[8] = 64;
        hdr[9] = proto;
        hdr[12..16].copy_from_slice(&self.ip);
        hdr[16..20].copy_from_slice(&ip[12..16]);
        let c = checksum(&hdr);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        out.extend_from_slice(&hdr);
        out.extend_from_slice(&reply_payload);
        Some(out)
    }
}

impl PortSink for EchoPeer {
    fn deliver(&self, frame: &[u8]) {
        if let Some(reply) = self.answer(frame)
            && let (Some(switch), Some(&port)) = (self.switch.upgrade(), self.port.get())
        {
            // The peer's replies are never for itself, so this recursion is one level deep.
            let _ = switch.send(port, &reply);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [2, 0, 0, 0, 0, 0xa];
    const B: Mac = [2, 0, 0, 0, 0, 0xb];
    const C: Mac = [2, 0, 0, 0, 0, 0xc];
    const BCAST: Mac = [0xff; 6];

    fn frame(dst: Mac, src: Mac, ethertype: u16, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    fn port(sw: &Switch) -> (PortId, Arc<QueuedPort>) {
        let p = QueuedPort::new(16, Box::new(|| {}));
        (sw.add_port(p.clone()), p)
    }

    fn drain(p: &QueuedPort) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| p.pop()).collect()
    }

    #[test]
    fn learns_then_forwards_unicast_and_floods_unknown() {
        let sw = Switch::new();
        let (pa, qa) = port(&sw);
        let (pb, qb) = port(&sw);
        let (_pc, qc) = port(&sw);
        // Unknown destination: flooded to everyone but the sender.
        let f1 = frame(B, A, 0x88b5, b"hello b");
        sw.send(pa, &f1).unwrap();
        assert!(drain(&qa).is_empty());
        assert_eq!(drain(&qb), vec![f1.clone()]);
        assert_eq!(drain(&qc), vec![f1]);
        assert_eq!(sw.lookup(&A), Some(pa));
        // B answers: A is known now, so only A gets it; B is learned too.
        let f2 = frame(A, B, 0x88b5, b"hello a");
        sw.send(pb, &f2).unwrap();
        assert_eq!(drain(&qa), vec![f2]);
        assert!(drain(&qb).is_empty() && drain(&qc).is_empty());
        // And A to B is unicast from now on.
        let f3 = frame(B, A, 0x88b5, b"again");
        sw.send(pa, &f3).unwrap();
        assert_eq!(drain(&qb), vec![f3.clone()]);
        assert!(drain(&qc).is_empty());
        // Broadcast floods even with everything learned.
        let f4 = frame(BCAST, A, 0x0806, &[0; 28]);
        sw.send(pa, &f4).unwrap();
        assert_eq!(drain(&qb).len() + drain(&qc).len(), 2);
        assert_eq!(sw.stats().flooded.load(Ordering::Relaxed), 2);
        assert_eq!(sw.stats().unicast.load(Ordering::Relaxed), 2);
        // A port that moves is relearned; a removed port is forgotten and floods again.
        sw.remove_port(pb).unwrap();
        assert_eq!(sw.lookup(&B), None);
        sw.send(pa, &frame(B, A, 0x88b5, b"x")).unwrap();
        assert_eq!(drain(&qc).len(), 1);
        assert!(matches!(
            sw.send(pa, &[0u8; 10]),
            Err(Error::ShortFrame { len: 10 })
        ));
        assert!(matches!(sw.send(pb, &f3), Err(Error::NoSuchPort { .. })));
    }

    #[test]
    fn full_port_drops_and_counts() {
        let sw = Switch::new();
        let (pa, _) = port(&sw);
        let q = QueuedPort::new(2, Box::new(|| {}));
        sw.add_port(q.clone());
        for i in 0..5u8 {
            sw.send(pa, &frame(B, A, 0x88b5, &[i])).unwrap();
        }
        assert_eq!(q.len(), 2);
        assert_eq!(q.dropped(), 3);
        assert_eq!(q.pop().unwrap()[14], 0, "oldest frames kept");
    }

    #[test]
    fn echo_peer_answers_pvkit_arp_ping_and_udp() {
        let sw = Switch::new();
        let peer_mac = [2, 0, 0, 0, 0, 1];
        let peer_ip = [10, 0, 2, 1];
        let peer = EchoPeer::attach(&sw, peer_mac, peer_ip);
        let (g, q) = port(&sw);

        let body: Vec<u8> = (0..100u8).collect();
        sw.send(g, &frame(peer_mac, C, ETHERTYPE_PVKIT_ECHO, &body))
            .unwrap();
        let back = drain(&q);
        assert_eq!(back, vec![frame(C, peer_mac, ETHERTYPE_PVKIT_ECHO, &body)]);

        // ARP who-has 10.0.2.1 tell 10.0.2.15.
        let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
        arp.extend_from_slice(&C);
        arp.extend_from_slice(&[10, 0, 2, 15]);
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&peer_ip);
        sw.send(g, &frame(BCAST, C, ETHERTYPE_ARP, &arp)).unwrap();
        let reply = drain(&q).pop().expect("arp reply");
        assert_eq!(&reply[0..6], &C);
        assert_eq!(&reply[14 + 6..14 + 8], &[0, 2], "ARP reply op");
        assert_eq!(&reply[14 + 8..14 + 14], &peer_mac, "sender MAC is the peer's");
        assert_eq!(&reply[14 + 24..14 + 28], &[10, 0, 2, 15]);

        // ICMP echo request with a payload.
        let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
        icmp.extend_from_slice(b"ping payload!");
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
        ip.extend_from_slice(&[10, 0, 2, 15]);
        ip.extend_from_slice(&peer_ip);
        let total = (20 + icmp.len()) as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip.extend_from_slice(&icmp);
        sw.send(g, &frame(peer_mac, C, ETHERTYPE_IPV4, &ip)).unwrap();
        let reply = drain(&q).pop().expect("icmp reply");
        let rip = &reply[14..];
        assert_eq!(checksum(&rip[..20]), 0, "IPv4 header checksum valid");
        assert_eq!(&rip[12..16], &peer_ip);
        assert_eq!(&rip[16..20], &[10, 0, 2, 15]);
        assert_eq!(rip[20], 0, "echo reply");
        assert_eq!(checksum(&rip[20..]), 0, "ICMP checksum valid");
        assert_eq!(&rip[28..], b"ping payload!");

        // UDP to port 7.
        let mut udp = vec![0x30, 0x39, 0, 7, 0, 13, 0, 0];
        udp.extend_from_slice(b"udp!!");
        let mut ip2 = ip[..20].to_vec();
        ip2[9] = 17;
        ip2[2..4].copy_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
        ip2.extend_from_slice(&udp);
        sw.send(g, &frame(peer_mac, C, ETHERTYPE_IPV4, &ip2)).unwrap();
        let reply = drain(&q).pop().expect("udp reply");
        assert_eq!(&reply[14 + 20..14 + 24], &[0, 7, 0x30, 0x39]);
        assert_eq!(&reply[14 + 28..], b"udp!!");

        let s = peer.stats();
        assert_eq!(
            (
                s.echoed.load(Ordering::Relaxed),
                s.arp.load(Ordering::Relaxed),
                s.icmp.load(Ordering::Relaxed),
                s.udp.load(Ordering::Relaxed)
            ),
            (1, 1, 1, 1)
        );
        // Frames for someone else: no answer.
        sw.send(g, &frame(B, C, ETHERTYPE_PVKIT_ECHO, &body)).unwrap();
        assert!(drain(&q).is_empty());
    }
}
