//! Ping: resolve an IPv4 peer with ARP, then send ICMP echo requests and check every reply. Unlike
//! the echo workload it needs no echo program on the far side: the peer's own IP stack answers (a
//! Linux dom0 on the other end of netback). ARP requests for our address are answered meanwhile, so
//! the peer can reach us too.
//!
//! Frames: ARP over Ethernet (`0x0806`, hardware type 1, protocol `0x0800`) and IPv4 with no options
//! (`0x0800`, IHL 5, TTL 64, DF) carrying ICMP echo (type 8, code 0, identifier `0x7076`). Each
//! request's payload is a pattern of its sequence number; a reply must carry the same sequence number
//! and exactly that payload.

use alloc::vec::Vec;

use crate::counters::Counters;
use crate::net::NetDevice;
use crate::wait::{Waiter, wait_for};
use crate::{Error, Result};

/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// ICMP identifier of our echo requests.
pub const ICMP_ID: u16 = 0x7076;
/// Longest payload of one request: a 1500-byte IP packet less the IP and ICMP headers.
pub const MAX_PAYLOAD: usize = 1500 - 20 - 8;
/// How often an unanswered ARP request is sent again.
pub const ARP_RETRY_US: u64 = 1_000_000;
/// Smallest frame that can hold an ARP packet or an IPv4 + ICMP header.
const MIN_PARSED: usize = 42;

/// What to ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingParams {
    /// Our address.
    pub ip: [u8; 4],
    /// The peer's address.
    pub peer: [u8; 4],
    /// Echo requests to send (sequence numbers `0..count`).
    pub count: u16,
    /// Payload bytes of each request (at most [`MAX_PAYLOAD`]).
    pub size: usize,
    /// How long to wait for the ARP reply, and for each echo reply.
    pub timeout_us: u64,
}

/// What a ping run saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingReport {
    /// The peer's MAC address, from its ARP reply.
    pub peer_mac: [u8; 6],
    /// Echo replies received and checked (= `count`).
    pub replies: u16,
    /// Time until the ARP reply.
    pub arp_us: u64,
    /// Time for all echo requests and replies.
    pub ping_us: u64,
    /// Time per request and reply, on average (`ping_us / count`).
    pub avg_rtt_us: u64,
    /// Largest round trip.
    pub max_rtt_us: u64,
    /// ARP requests for our address that we answered.
    pub arp_answers: u64,
    /// The device's counts over the run.
    pub counters: Counters,
}

/// Parses a dotted IPv4 address (`10.99.0.2`).
pub fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut ip = [0u8; 4];
    let mut parts = s.split('.');
    for b in &mut ip {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        *b = p.parse().ok()?;
    }
    parts.next().is_none().then_some(ip)
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ARP packet (`op` 1 request, 2 reply) from `mac`/`ip` to Ethernet `dst`, about
/// `target_mac`/`target_ip`, padded to 60 bytes.
pub fn arp_frame(
    op: u16,
    mac: [u8; 6],
    ip: [u8; 4],
    dst: [u8; 6],
    target_mac: [u8; 6],
    target_ip: [u8; 4],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    // Ethernet hardware, IPv4 protocol, 6-byte and 4-byte addresses.
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&target_mac);
    f.extend_from_slice(&target_ip);
    f.resize(60, 0);
    f
}

/// An ICMP echo request with sequence number `seq` and `payload`, from `mac`/`ip` to
/// `peer_mac`/`peer`.
pub fn icmp_echo(
    mac: [u8; 6],
    ip: [u8; 4],
    peer_mac: [u8; 6],
    peer: [u8; 4],
    seq: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(42 + payload.len());
    f.extend_from_slice(&peer_mac);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let total = (20 + 8 + payload.len()) as u16;
    let mut iph = [0u8; 20];
    iph[0] = 0x45;
    iph[2..4].copy_from_slice(&total.to_be_bytes());
    iph[4..6].copy_from_slice(&seq.to_be_bytes());
    iph[6] = 0x40; // don't fragment
    iph[8] = 64; // TTL
    iph[9] = 1; // ICMP
    iph[12..16].copy_from_slice(&ip);
    iph[16..20].copy_from_slice(&peer);
    let c = inet_checksum(&iph);
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&iph);
    let mut icmp = alloc::vec![8u8, 0, 0, 0];
    icmp.extend_from_slice(&ICMP_ID.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = inet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&icmp);
    f
}

/// The payload of request `seq`.
pub fn payload(seq: u16, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u16).wrapping_mul(31).wrapping_add(seq) as u8)
        .collect()
}

fn ethertype(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[12], f[13]])
}

/// Whether `f` is an ARP request for `ip`; if so, the asker's MAC and IP.
fn arp_request_for(f: &[u8], ip: [u8; 4]) -> Option<([u8; 6], [u8; 4])> {
    if f.len() < MIN_PARSED || ethertype(f) != ETHERTYPE_ARP || f[20..22] != [0, 1] || f[38..42] != ip {
        return None;
    }
    Some((f[22..28].try_into().ok()?, f[28..32].try_into().ok()?))
}

/// Answers `f` if it is an ARP request for our address; returns whether it was one.
fn answer_arp(dev: &mut dyn NetDevice, f: &[u8], mac: [u8; 6], ip: [u8; 4]) -> Result<bool> {
    let Some((sha, spa)) = arp_request_for(f, ip) else {
        return Ok(false);
    };
    dev.transmit(&arp_frame(2, mac, ip, sha, sha, spa))?;
    Ok(true)
}

/// Resolves `p.peer`, then sends `p.count` echo requests of `p.size` payload bytes one at a time,
/// each reply checked for its sequence number and payload.
///
/// # Errors
/// [`Error::Timeout`] if the ARP reply or an echo reply does not come within `p.timeout_us`;
/// [`Error::Mismatch`] for a reply whose payload is short or differs; [`Error::BadLength`] for a
/// payload past [`MAX_PAYLOAD`]; the device's errors.
pub fn ping(dev: &mut dyn NetDevice, waiter: &dyn Waiter, p: &PingParams) -> Result<PingReport> {
    if p.size > MAX_PAYLOAD {
        return Err(Error::BadLength {
            op: "ping payload",
            len: p.size,
            unit: 1,
            max: MAX_PAYLOAD,
        });
    }
    if !dev.link_up() {
        return Err(Error::LinkDown { device: dev.name() });
    }
    let mac = dev.mac();
    let before = dev.counters();
    let mut buf = alloc::vec![0u8; 1600];
    let mut arp_answers = 0u64;
    let t0 = waiter.now_us();
    // ARP for the peer, asking again every ARP_RETRY_US until answered.
    let mut last_arp: Option<u64> = None;
    let peer_mac = loop {
        let now = waiter.now_us();
        let waited_us = now.saturating_sub(t0);
        if waited_us > p.timeout_us {
            return Err(Error::Timeout {
                what: "an ARP reply from the peer",
                waited_us,
            });
        }
        if last_arp.is_none_or(|t| now.saturating_sub(t) > ARP_RETRY_US) {
            dev.transmit(&arp_frame(1, mac, p.ip, [0xff; 6], [0; 6], p.peer))?;
            last_arp = Some(now);
        }
        let mut found = None;
        while let Some(n) = dev.receive(&mut buf)? {
            let f = &buf[..n];
            if n >= MIN_PARSED && ethertype(f) == ETHERTYPE_ARP && f[20..22] == [0, 2] && f[28..32] == p.peer
            {
                found = Some(<[u8; 6]>::try_from(&f[22..28]).expect("6 bytes"));
            } else if answer_arp(dev, f, mac, p.ip)? {
                arp_answers += 1;
            }
        }
        if let Some(m) = found {
            break m;
        }
        waiter.idle(&mut || false);
    };
    let arp_us = waiter.now_us().saturating_sub(t0);
    let t1 = waiter.now_us();
    let mut rtt_max = 0u64;
    for seq in 0..p.count {
        let sent_payload = payload(seq, p.size);
        let sent = waiter.now_us();
        dev.transmit(&icmp_echo(mac, p.ip, peer_mac, p.peer, seq, &sent_payload))?;
        let got = wait_for(waiter, p.timeout_us, "an ICMP echo reply", || {
            while let Some(n) = dev.receive(&mut buf)? {
                let f = &buf[..n];
                if answer_arp(dev, f, mac, p.ip)? {
                    arp_answers += 1;
                    continue;
                }
                if n >= MIN_PARSED
                    && ethertype(f) == ETHERTYPE_IPV4
                    && f[23] == 1
                    && f[34] == 0
                    && u16::from_be_bytes([f[40], f[41]]) == seq
                {
                    return Ok(Some(f[42..].to_vec()));
                }
            }
            Ok(None)
        })?;
        rtt_max = rtt_max.max(waiter.now_us().saturating_sub(sent));
        if got.len() < p.size {
            return Err(Error::Mismatch {
                what: "ICMP echo reply payload length",
                index: seq.into(),
                expected: p.size as u64,
                found: got.len() as u64,
            });
        }
        if let Some(at) = got.iter().zip(&sent_payload).position(|(a, b)| a != b) {
            return Err(Error::Mismatch {
                what: "ICMP echo reply payload byte (first that differs)",
                index: seq.into(),
                expected: sent_payload[at].into(),
                found: got[at].into(),
            });
        }
    }
    let ping_us = waiter.now_us().saturating_sub(t1);
    Ok(PingReport {
        peer_mac,
        replies: p.count,
        arp_us,
        ping_us,
        avg_rtt_us: ping_us / u64::from(p.count.max(1)),
        max_rtt_us: rtt_max,
        arp_answers,
        counters: dev.counters().since(&before),
    })
}

#[cfg(test)]
mod tests {
    use alloc::collections::VecDeque;

    use super::*;
    use crate::wait::fake::StepClock;

    const MAC: [u8; 6] = [0x00, 0x16, 0x3e, 1, 2, 3];
    const IP: [u8; 4] = [10, 99, 0, 2];
    const PEER_MAC: [u8; 6] = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff];
    const PEER: [u8; 4] = [10, 99, 0, 1];

    /// An IPv4 host behind a fake device: answers ARP for its address and ICMP echo requests (with
    /// the checksums checked), asks once for our address itself, and can misbehave.
    #[derive(Default)]
    struct Peer {
        inbox: VecDeque<Vec<u8>>,
        /// Never answers ARP.
        mute: bool,
        /// Flips this payload byte of every echo reply.
        corrupt_at: Option<usize>,
        /// Answers ARP only to the n-th request (1-based).
        arp_after: usize,
        arp_seen: usize,
        asked_for_us: bool,
        our_mac_learned: Option<[u8; 6]>,
        replies: u64,
        counters: Counters,
    }

    impl NetDevice for Peer {
        fn name(&self) -> &'static str {
            "ping-peer"
        }
        fn mac(&self) -> [u8; 6] {
            MAC
        }
        fn link_up(&self) -> bool {
            true
        }
        fn mtu(&self) -> usize {
            1500
        }
        fn transmit(&mut self, f: &[u8]) -> Result<()> {
            self.counters.notifications += 1;
            match ethertype(f) {
                ETHERTYPE_ARP if f[20..22] == [0, 1] && f[38..42] == PEER => {
                    self.arp_seen += 1;
                    if !self.mute && self.arp_seen >= self.arp_after {
                        self.inbox.push_back(arp_frame(2, PEER_MAC, PEER, MAC, MAC, IP));
                    }
                    if !self.asked_for_us {
                        self.asked_for_us = true;
                        self.inbox
                            .push_back(arp_frame(1, PEER_MAC, PEER, [0xff; 6], [0; 6], IP));
                    }
                }
                ETHERTYPE_ARP if f[20..22] == [0, 2] => {
                    self.our_mac_learned = Some(f[22..28].try_into().unwrap());
                }
                ETHERTYPE_IPV4 => {
                    assert_eq!(inet_checksum(&f[14..34]), 0, "IP header checksum");
                    assert_eq!(inet_checksum(&f[34..]), 0, "ICMP checksum");
                    assert_eq!((f[34], &f[26..30], &f[30..34]), (8, &IP[..], &PEER[..]));
                    let mut r = f.to_vec();
                    r[..6].copy_from_slice(&MAC);
                    r[6..12].copy_from_slice(&PEER_MAC);
                    r[26..30].copy_from_slice(&PEER);
                    r[30..34].copy_from_slice(&IP);
                    r[34] = 0;
                    if let Some(at) = self.corrupt_at {
                        r[42 + at] ^= 0x5a;
                    }
                    self.replies += 1;
                    self.inbox.push_back(r);
                }
                _ => {}
            }
            Ok(())
        }
        fn receive(&mut self, b: &mut [u8]) -> Result<Option<usize>> {
            Ok(self.inbox.pop_front().map(|f| {
                b[..f.len()].copy_from_slice(&f);
                f.len()
            }))
        }
        fn irq_ack(&self) -> Option<crate::wait::SharedIrqAck> {
            None
        }
        fn counters(&self) -> Counters {
            self.counters
        }
    }

    fn params(count: u16, size: usize) -> PingParams {
        PingParams {
            ip: IP,
            peer: PEER,
            count,
            size,
            timeout_us: 5_000_000,
        }
    }

    #[test]
    fn resolves_the_peer_answers_its_arp_and_checks_every_reply() {
        let mut peer = Peer {
            arp_after: 3,
            ..Peer::default()
        };
        let clock = StepClock::new(300_000);
        let r = ping(&mut peer, &clock, &params(20, MAX_PAYLOAD)).unwrap();
        assert_eq!((r.peer_mac, r.replies, r.arp_answers), (PEER_MAC, 20, 1));
        assert_eq!(peer.replies, 20);
        assert_eq!(peer.our_mac_learned, Some(MAC), "our ARP answer named our MAC");
        assert_eq!(
            peer.arp_seen, 3,
            "unanswered ARP requests are sent again, about once a second"
        );
        // 3 ARP requests + 1 ARP answer + 20 echo requests.
        assert_eq!(r.counters.notifications, 24);
        assert!(r.max_rtt_us > 0 && r.avg_rtt_us > 0 && r.arp_us > 0);
        let r = ping(&mut Peer::default(), &clock, &params(3, 0)).unwrap();
        assert_eq!(r.replies, 3, "empty payloads");
    }

    #[test]
    fn a_peer_that_never_answers_arp_times_out() {
        let mut peer = Peer {
            mute: true,
            ..Peer::default()
        };
        let e = ping(&mut peer, &StepClock::new(100_000), &params(1, 56)).unwrap_err();
        assert!(
            matches!(e, Error::Timeout { what: "an ARP reply from the peer", waited_us } if waited_us > 5_000_000),
            "{e:?}"
        );
    }

    #[test]
    fn a_corrupted_or_short_reply_is_caught() {
        let mut peer = Peer {
            corrupt_at: Some(17),
            ..Peer::default()
        };
        let e = ping(&mut peer, &StepClock::new(10), &params(5, 56)).unwrap_err();
        let sent = payload(0, 56)[17];
        assert_eq!(
            e,
            Error::Mismatch {
                what: "ICMP echo reply payload byte (first that differs)",
                index: 0,
                expected: sent.into(),
                found: (sent ^ 0x5a).into(),
            }
        );
        let e = ping(
            &mut Peer::default(),
            &StepClock::new(10),
            &params(1, MAX_PAYLOAD + 1),
        )
        .unwrap_err();
        assert!(matches!(e, Error::BadLength { len: 1473, .. }), "{e:?}");
    }

    #[test]
    fn addresses_and_checksums() {
        assert_eq!(parse_ipv4("10.99.0.2"), Some(IP));
        for bad in [
            "10.99.0",
            "10.99.0.2.1",
            "256.0.0.1",
            "1..2.3",
            "+1.2.3.4",
            "a.b.c.d",
            "",
        ] {
            assert_eq!(parse_ipv4(bad), None, "{bad:?}");
        }
        // RFC 1071's example.
        assert_eq!(
            inet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        let f = icmp_echo(MAC, IP, PEER_MAC, PEER, 7, &payload(7, 5));
        assert_eq!(
            (f.len(), inet_checksum(&f[14..34]), inet_checksum(&f[34..])),
            (47, 0, 0)
        );
        assert_eq!(u16::from_be_bytes([f[40], f[41]]), 7);
    }
}
