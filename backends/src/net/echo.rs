//! The echo peer: the host test port that answers the guests' echo frames, ARP, ping and UDP echo.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use super::{BindError, ETH_HEADER_LEN, ETHERTYPE_PVKIT_ECHO, Mac, PortId, PortPolicy, PortSink, Switch};

pub(super) const ETHERTYPE_IPV4: u16 = 0x0800;
pub(super) const ETHERTYPE_ARP: u16 = 0x0806;

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

/// The Internet checksum (RFC 1071) of `data`.
pub(super) fn checksum(data: &[u8]) -> u16 {
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
    /// Creates the peer and attaches it to `switch` on a learning port (its address is learned from
    /// its first reply; another learning port could claim it). [`try_attach`](Self::try_attach)
    /// binds the port to `mac` instead, which is what a daemon serving untrusted guests wants.
    pub fn attach(switch: &Arc<Switch>, mac: Mac, ip: [u8; 4]) -> Arc<Self> {
        let peer = Self::new(switch, mac, ip);
        let port = switch.add_port(peer.clone());
        peer.port.set(port).expect("port set once");
        peer
    }

    fn new(switch: &Arc<Switch>, mac: Mac, ip: [u8; 4]) -> Arc<Self> {
        Arc::new(EchoPeer {
            mac,
            ip,
            switch: Arc::downgrade(switch),
            port: OnceLock::new(),
            stats: EchoStats::default(),
            ip_id: AtomicUsize::new(1),
        })
    }

    /// Creates the peer and attaches it to `switch` on a port bound to `mac`: nobody else can send
    /// from its address, and frames for it are never flooded elsewhere.
    pub fn try_attach(
        switch: &Arc<Switch>,
        mac: Mac,
        ip: [u8; 4],
    ) -> std::result::Result<Arc<Self>, BindError> {
        let peer = Self::new(switch, mac, ip);
        let port = switch.add_port_with(peer.clone(), PortPolicy::Bound(mac))?;
        peer.port.set(port).expect("port set once");
        Ok(peer)
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
