//! The net core's tests: switching, learning, binding, the echo peer, the frame limits.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::echo::{ETHERTYPE_ARP, ETHERTYPE_IPV4, checksum};
use super::*;
use crate::Error;

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
    let f1 = frame(B, A, ETHERTYPE_PVKIT_ECHO, b"hello b");
    sw.send(pa, &f1).unwrap();
    assert!(drain(&qa).is_empty());
    assert_eq!(drain(&qb), vec![f1.clone()]);
    assert_eq!(drain(&qc), vec![f1]);
    assert_eq!(sw.lookup(&A), Some(pa));
    // B answers: A is known now, so only A gets it; B is learned too.
    let f2 = frame(A, B, ETHERTYPE_PVKIT_ECHO, b"hello a");
    sw.send(pb, &f2).unwrap();
    assert_eq!(drain(&qa), vec![f2]);
    assert!(drain(&qb).is_empty() && drain(&qc).is_empty());
    // And A to B is unicast from now on.
    let f3 = frame(B, A, ETHERTYPE_PVKIT_ECHO, b"again");
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
    sw.send(pa, &frame(B, A, ETHERTYPE_PVKIT_ECHO, b"x")).unwrap();
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
        sw.send(pa, &frame(B, A, ETHERTYPE_PVKIT_ECHO, &[i])).unwrap();
    }
    assert_eq!(q.len(), 2);
    assert_eq!(q.dropped(), 3);
    assert_eq!(q.pop().unwrap()[14], 0, "oldest frames kept");
}

#[test]
fn echo_peer_answers_pvkit_arp_ping_and_udp() {
    let sw = Switch::new();
    let peer_mac = ring_protocol::abi::pvkit_echo::PEER_MAC;
    let peer_ip = [10, 0, 2, 1];
    let peer = EchoPeer::try_attach(&sw, peer_mac, peer_ip).unwrap();
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

fn bound(sw: &Switch, mac: Mac) -> (PortId, Arc<QueuedPort>) {
    let p = QueuedPort::new(64, Box::new(|| {}));
    (sw.add_port_with(p.clone(), PortPolicy::Bound(mac)).unwrap(), p)
}

fn learning(sw: &Switch, max: usize) -> (PortId, Arc<QueuedPort>) {
    let p = QueuedPort::new(64, Box::new(|| {}));
    (
        sw.add_port_with(p.clone(), PortPolicy::Learning { max }).unwrap(),
        p,
    )
}

/// A cheap deterministic stream of random unicast source addresses.
fn random_macs(n: usize, seed: u64) -> impl Iterator<Item = Mac> {
    let mut x = seed | 1;
    (0..n).map(move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        [b[0] & 0xfe, b[1], b[2], b[3], b[4], b[5]]
    })
}

const HOST: Mac = [0x5a, 0, 0, 0, 0, 0x99];

/// A guest (bound port) sending from another guest's, the echo peer's or the host's address
/// behind the tap: every such frame is dropped and counted on the sender's port, and the
/// victims keep their traffic.
#[test]
fn switch_mac_spoof_of_another_guest_the_echo_peer_or_the_host_is_dropped_and_counted() {
    let sw = Switch::new();
    let (ga, qa) = bound(&sw, A);
    let (gb, qb) = bound(&sw, B);
    let peer_mac = [2, 0x70, 0x76, 0x6b, 0x69, 0x74];
    let peer = EchoPeer::try_attach(&sw, peer_mac, [10, 0, 2, 1]).unwrap();
    let (tap, qt) = learning(&sw, 16);
    // The host speaks first: its address is learned on the tap.
    sw.send(tap, &frame(BCAST, HOST, ETHERTYPE_ARP, &[0; 28]))
        .unwrap();
    assert_eq!(sw.lookup(&HOST), Some(tap));
    drain(&qa);
    drain(&qb);

    for victim in [B, peer_mac, HOST] {
        let e = sw
            .send(ga, &frame(BCAST, victim, ETHERTYPE_ARP, &[0; 28]))
            .unwrap_err();
        assert!(
            matches!(e, Error::SourceNotAllowed { port, .. } if port == ga),
            "{e}"
        );
    }
    // A multicast source and an unknown one are refused too; its own address passes.
    assert!(
        sw.send(ga, &frame(B, [3, 0, 0, 0, 0, 1], ETHERTYPE_PVKIT_ECHO, b"x"))
            .is_err()
    );
    assert!(sw.send(ga, &frame(B, C, ETHERTYPE_PVKIT_ECHO, b"x")).is_err());
    sw.send(ga, &frame(B, A, ETHERTYPE_PVKIT_ECHO, b"hello")).unwrap();
    assert_eq!(sw.port_counts(ga).unwrap().spoofed, 5);
    assert_eq!(sw.port_counts(ga).unwrap().frames_in, 6);
    assert_eq!(sw.stats().spoofed.load(Ordering::Relaxed), 5);
    // Nothing the spoofer sent reached anyone but B's one good frame; the table is unchanged.
    assert_eq!(drain(&qb), vec![frame(B, A, ETHERTYPE_PVKIT_ECHO, b"hello")]);
    assert!(drain(&qt).is_empty());
    assert_eq!(peer.stats().arp.load(Ordering::Relaxed), 0);
    assert_eq!(
        (sw.lookup(&B), sw.lookup(&peer_mac), sw.lookup(&HOST)),
        (Some(gb), Some(peer.port()), Some(tap))
    );
    // A learning port cannot claim a bound address either.
    assert!(sw.send(tap, &frame(BCAST, B, ETHERTYPE_ARP, &[0; 28])).is_err());
    assert_eq!(sw.port_counts(tap).unwrap().spoofed, 1);
    assert_eq!(sw.lookup(&B), Some(gb));
    // Binding an address twice is refused.
    let q = QueuedPort::new(1, Box::new(|| {}));
    assert_eq!(
        sw.add_port_with(q.clone(), PortPolicy::Bound(A)),
        Err(BindError::InUse { mac: A, port: ga })
    );
    assert!(matches!(
        sw.add_port_with(q, PortPolicy::Bound(BCAST)),
        Err(BindError::Multicast { .. })
    ));
}

/// A port sending 100,000 random source addresses: from a bound port they are all dropped;
/// from a learning port only its own quota is learned (its own oldest entries are evicted).
/// Either way the other ports' entries stay and their unicast traffic is never flooded to the
/// flooder (no hub).
#[test]
fn switch_random_mac_flood_neither_floods_others_unicast_nor_evicts_their_entries() {
    let sw = Switch::new();
    let (ga, qa) = bound(&sw, A);
    let (gb, qb) = bound(&sw, B);
    let (tap, qt) = learning(&sw, 16);
    let (vm, qv) = learning(&sw, 64);
    sw.send(tap, &frame(B, HOST, ETHERTYPE_PVKIT_ECHO, b"host to b"))
        .unwrap();
    assert_eq!(drain(&qb).len(), 1);
    let b_to_host = frame(HOST, B, ETHERTYPE_PVKIT_ECHO, b"b to host");
    let flooded_before = sw.stats().flooded.load(Ordering::Relaxed);

    let (mut at_tap, mut at_b, mut at_a, mut at_vm) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (sender, seed) in [(ga, 1), (vm, 3)] {
        for (i, src) in random_macs(100_000, seed).enumerate() {
            let _ = sw.send(sender, &frame(C, src, ETHERTYPE_PVKIT_ECHO, &[]));
            // Meanwhile B and the host talk.
            if i % 10_000 == 0 {
                sw.send(gb, &b_to_host).unwrap();
                sw.send(tap, &frame(B, HOST, ETHERTYPE_PVKIT_ECHO, b"host to b"))
                    .unwrap();
                at_tap.extend(drain(&qt));
                at_b.extend(drain(&qb));
                at_a.extend(drain(&qa));
                at_vm.extend(drain(&qv));
            }
            if i % 50 == 0 {
                // The tap's reader keeps up with the flood it is sent.
                at_tap.extend(drain(&qt));
            }
        }
    }
    assert_eq!(sw.port_counts(ga).unwrap().spoofed, 100_000, "bound: all dropped");
    let v = sw.port_counts(vm).unwrap();
    assert_eq!(
        (v.learned, v.evicted),
        (64, 100_000 - 64),
        "learning: its own quota only"
    );
    assert_eq!(sw.lookup(&HOST), Some(tap), "the host's entry survives");
    assert_eq!((sw.lookup(&A), sw.lookup(&B)), (Some(ga), Some(gb)));
    assert_eq!(sw.port_counts(tap).unwrap().learned, 1);
    // B's and the host's frames were unicast every time: the flooders never saw them.
    assert_eq!(at_tap.iter().filter(|f| **f == b_to_host).count(), 20);
    assert_eq!(at_b.len(), 20);
    assert!(at_a.is_empty(), "the bound flooder got nothing");
    assert!(at_vm.iter().all(|f| *f != b_to_host), "no hub");
    // The only floods were the learning port's unknown destination C (to the tap, the other
    // learning port), never to the bound ports.
    let flooded = sw.stats().flooded.load(Ordering::Relaxed) - flooded_before;
    assert_eq!(flooded, 100_000);
    assert_eq!(sw.stats().unicast.load(Ordering::Relaxed), 41);
}

/// The whole table stops learning at [`MAX_LEARNED`] entries instead of starting over: the
/// entries it has stay, new addresses are counted as refused.
#[test]
fn a_full_table_stops_learning_and_keeps_every_entry() {
    let sw = Switch::new();
    let (tap, _qt) = learning(&sw, 16);
    sw.send(tap, &frame(BCAST, HOST, ETHERTYPE_PVKIT_ECHO, &[]))
        .unwrap();
    let greedy: Vec<(PortId, Arc<QueuedPort>)> = (0..3).map(|_| learning(&sw, 2000)).collect();
    for (i, (p, _)) in greedy.iter().enumerate() {
        for src in random_macs(2000, 100 + 2 * i as u64) {
            sw.send(*p, &frame(BCAST, src, ETHERTYPE_PVKIT_ECHO, &[]))
                .unwrap();
        }
    }
    let learned: usize = greedy
        .iter()
        .map(|(p, _)| sw.port_counts(*p).unwrap().learned)
        .sum();
    assert_eq!(learned + 1, MAX_LEARNED);
    assert_eq!(
        sw.stats().learn_refused.load(Ordering::Relaxed),
        (6000 + 1 - MAX_LEARNED) as u64
    );
    assert_eq!(sw.lookup(&HOST), Some(tap));
    // Removing a port frees its entries for the others.
    sw.remove_port(greedy[0].0).unwrap();
    sw.send(tap, &frame(BCAST, C, ETHERTYPE_PVKIT_ECHO, &[])).unwrap();
    assert_eq!(sw.lookup(&C), Some(tap));
}

#[test]
fn frames_longer_than_the_mtu_are_refused() {
    let sw = Switch::new();
    let (ga, _) = bound(&sw, A);
    let (_, qb) = bound(&sw, B);
    let mut f = frame(B, A, ETHERTYPE_PVKIT_ECHO, &vec![0; MAX_FRAME_LEN - 14]);
    sw.send(ga, &f).unwrap();
    f.push(0);
    assert!(matches!(
        sw.send(ga, &f),
        Err(Error::FrameTooLong { len, max: MAX_FRAME_LEN }) if len == MAX_FRAME_LEN + 1
    ));
    assert_eq!(drain(&qb).len(), 1);
    assert_eq!(sw.stats().bad_length.load(Ordering::Relaxed), 1);
}
