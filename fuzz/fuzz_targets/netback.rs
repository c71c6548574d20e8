//! netback's netif engine (`backends/src/xen/netback.rs`, `NetEngine`) on a
//! switch port bound to the vif's MAC, over a fake grant table, against a hostile frontend:
//! transmit slots of any values (chains, extra-info slots, sizes, offsets, grant references that do
//! not exist), receive buffers, frames arriving for the guest, honest or impossible producer indices.
//!
//! Invariants: the engine fails only by halting, and only on an impossible index; it never
//! publishes more responses than requests on either ring; every transmit response answers a slot
//! that was sent, with a netif status; every frame reaching the switch comes from the vif's own MAC
//! and is 14 to 1514 bytes, at most one per packet answered `OKAY`; every frame in a receive buffer
//! is one of the frames sent to the guest, byte for byte, within the MTU; and afterwards an honest
//! transmit reaches the switch intact and an honest frame for the guest lands in a posted buffer.
#![no_main]

use std::collections::HashMap;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pvkit_backends::net::{Mac, QueuedPort, Switch};
use pvkit_backends::xen::gntdev::{FakeGrants, GrantCopy, GrantPiece};
use pvkit_backends::xen::netback::NetEngine;
use pvkit_backends::xen::{Engine, Error};
use pvkit_fuzz::{Input, RawFront, SharedMem};
use ring_protocol::abi::netif::{
    NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA, NetifRxRequest,
    NetifRxResponse, NetifTxRequest, NetifTxResponse,
};
use ring_protocol::platform::fake::CountingNotifier;
use ring_protocol::ring::BackRing;

const DOMID: u16 = 3;
const GUEST: Mac = [0, 0x16, 0x3e, 0, 0, 0x10];
const SNIFFER: Mac = [2, 0, 0, 0, 0, 0x99];
const MAX_FRAME: usize = 1514;

fn tx_slot(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> [u8; 12] {
    let mut s = [0u8; 12];
    s[0..4].copy_from_slice(&gref.to_le_bytes());
    s[4..6].copy_from_slice(&offset.to_le_bytes());
    s[6..8].copy_from_slice(&flags.to_le_bytes());
    s[8..10].copy_from_slice(&id.to_le_bytes());
    s[10..12].copy_from_slice(&size.to_le_bytes());
    s
}

fn rx_slot(id: u16, gref: u32) -> [u8; 8] {
    let mut s = [0u8; 8];
    s[0..2].copy_from_slice(&id.to_le_bytes());
    s[4..8].copy_from_slice(&gref.to_le_bytes());
    s
}

/// A frame from the sniffer to the guest (or broadcast), `len` bytes.
fn frame_for_guest(len: usize, seed: u8, broadcast: bool) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len.max(14))
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    f[..6].copy_from_slice(if broadcast { &[0xff; 6] } else { &GUEST });
    f[6..12].copy_from_slice(&SNIFFER);
    f
}

struct Rings<'a> {
    tx: RawFront<'a>,
    rx: RawFront<'a>,
    tx_out: u32,
    rx_out: u32,
    tx_queued: u32,
    rx_queued: u32,
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let (tm, rm) = (SharedMem::new(4096), SharedMem::new(4096));
    let mut r = Rings {
        tx: RawFront::new(&tm, 12),
        rx: RawFront::new(&rm, 8),
        tx_out: 0,
        rx_out: 0,
        tx_queued: 0,
        rx_queued: 0,
    };
    // SAFETY: the memories outlive the engine (declared before it, dropped after it) and this
    // harness touches them only atomically.
    let tx = unsafe { BackRing::<NetifTxRequest, NetifTxResponse>::new(tm.ptr(), tm.len()) }.expect("tx");
    // SAFETY: as above.
    let rx = unsafe { BackRing::<NetifRxRequest, NetifRxResponse>::new(rm.ptr(), rm.len()) }.expect("rx");
    let switch = Switch::new();
    let sniffer = QueuedPort::new(1024, Box::new(|| {}));
    let sniffer_port = switch.add_port(sniffer.clone());
    let grants = Arc::new(FakeGrants::new(DOMID));
    for g in 0..10u32 {
        grants.grant(g, g as u8);
        // Most pages start with a plausible Ethernet header from the guest.
        let mut hdr = [0xffu8; 14];
        hdr[6..12].copy_from_slice(&GUEST);
        grants.poke(g, 0, &hdr);
    }
    let gnt: Arc<dyn GrantCopy> = grants.clone();
    let mut engine = NetEngine::new(tx, rx, DOMID, switch.clone(), GUEST, gnt).expect("engine");
    let mut tx_ids: HashMap<u16, u32> = HashMap::new();
    let mut rx_grefs: HashMap<u16, u32> = HashMap::new();
    let mut sent_to_guest: Vec<Vec<u8>> = Vec::new();
    let mut hostile = false;
    let mut okays = 0usize;
    let mut sniffed = 0usize;
    let mut ops = 0;

    // Serves; checks every response and every frame that reached the switch.
    let serve = |engine: &mut NetEngine,
                 r: &mut Rings<'_>,
                 tx_ids: &mut HashMap<u16, u32>,
                 rx_grefs: &HashMap<u16, u32>,
                 sent_to_guest: &[Vec<u8>],
                 hostile: bool,
                 okays: &mut usize,
                 sniffed: &mut usize|
     -> Option<Error> {
        let res = engine.process(&CountingNotifier::new());
        let bound = |out: u32, size: u32| if hostile { size } else { out };
        for rsp in r.tx.take_responses(4, bound(r.tx_out, r.tx.size)) {
            r.tx_out = r.tx_out.saturating_sub(1);
            let id = u16::from_le_bytes([rsp[0], rsp[1]]);
            let status = i16::from_le_bytes([rsp[2], rsp[3]]);
            assert!(
                [NETIF_RSP_OKAY, NETIF_RSP_ERROR, NETIF_RSP_NULL].contains(&status),
                "tx status {status}"
            );
            if status == NETIF_RSP_OKAY {
                *okays += 1;
            }
            if !hostile {
                let n = tx_ids
                    .get_mut(&id)
                    .unwrap_or_else(|| panic!("tx response to id {id} never sent"));
                *n -= 1;
                if *n == 0 {
                    tx_ids.remove(&id);
                }
            }
        }
        for rsp in r.rx.take_responses(8, bound(r.rx_out, r.rx.size)) {
            r.rx_out = r.rx_out.saturating_sub(1);
            let id = u16::from_le_bytes([rsp[0], rsp[1]]);
            let status = i16::from_le_bytes([rsp[6], rsp[7]]);
            assert!(
                status == NETIF_RSP_ERROR || (14..=MAX_FRAME as i16).contains(&status),
                "rx status {status}"
            );
            if status > 0 && !hostile {
                let gref = rx_grefs[&id];
                let page = grants.page(gref);
                let got = &page[..status as usize];
                assert!(
                    sent_to_guest.iter().any(|f| f[..] == *got),
                    "a frame in the guest's buffer that nobody sent it"
                );
            }
        }
        while let Some(f) = sniffer.pop() {
            *sniffed += 1;
            assert_eq!(
                &f[6..12],
                &GUEST,
                "a frame from the vif with another source address"
            );
            assert!((14..=MAX_FRAME).contains(&f.len()), "frame of {} bytes", f.len());
        }
        assert!(
            *sniffed <= *okays,
            "{sniffed} frames switched for {okays} packets answered OKAY"
        );
        res.err()
    };

    while !input.is_empty() && ops < 64 {
        ops += 1;
        match input.u8() % 8 {
            0 | 1 => {
                if r.tx_out + r.tx_queued < r.tx.size {
                    let slot = if input.u8().is_multiple_of(8) {
                        let mut s = [0u8; 12];
                        let raw = input.bytes(12);
                        s[..raw.len()].copy_from_slice(raw);
                        s
                    } else {
                        let gref = u32::from(input.u8() % 12);
                        let offset = if input.bool() {
                            u16::from(input.u8())
                        } else {
                            input.u16()
                        };
                        let flags = u16::from(input.u8()) & (NETTXF_MORE_DATA | NETTXF_EXTRA_INFO | 3);
                        let id = u16::from(input.u8());
                        let size = if input.bool() {
                            14 + u16::from(input.u8()) * 6
                        } else {
                            input.u16()
                        };
                        tx_slot(gref, offset, flags, id, size)
                    };
                    *tx_ids.entry(u16::from_le_bytes([slot[8], slot[9]])).or_default() += 1;
                    r.tx.push_slot(&slot);
                    r.tx_queued += 1;
                }
            }
            2 => {
                if r.rx_out + r.rx_queued < r.rx.size {
                    // Unique ids, so that each response names one buffer.
                    let id = rx_grefs.len() as u16;
                    let gref = 1000 + u32::from(id);
                    grants.grant(gref, 0xee);
                    rx_grefs.insert(id, gref);
                    r.rx.push_slot(&rx_slot(id, gref));
                    r.rx_queued += 1;
                }
            }
            3 => {
                let which = input.bool();
                let f = if which { &mut r.tx } else { &mut r.rx };
                if input.u8() % 16 == 15 {
                    f.publish_raw(input.u32());
                    hostile = true;
                } else {
                    f.publish();
                    if which {
                        r.tx_out += std::mem::take(&mut r.tx_queued);
                    } else {
                        r.rx_out += std::mem::take(&mut r.rx_queued);
                    }
                }
            }
            4 => {
                let len = usize::from(input.u16()) % 1700;
                let f = frame_for_guest(len, input.u8(), input.bool());
                if switch.send(sniffer_port, &f).is_ok() {
                    sent_to_guest.push(f);
                }
            }
            5 => {
                let g = u32::from(input.u8() % 10);
                let off = usize::from(input.u16()) % 4096;
                let bytes = input.chunk(255);
                grants.poke(g, off, &bytes[..bytes.len().min(4096 - off)]);
            }
            _ => {
                if let Some(e) = serve(
                    &mut engine,
                    &mut r,
                    &mut tx_ids,
                    &rx_grefs,
                    &sent_to_guest,
                    hostile,
                    &mut okays,
                    &mut sniffed,
                ) {
                    assert!(hostile, "engine failed with honest indices: {e}");
                    assert!(
                        matches!(e, Error::RingHalted { .. }),
                        "failed other than by halting: {e}"
                    );
                    assert!(
                        engine.process(&CountingNotifier::new()).is_err(),
                        "a halted ring stays halted"
                    );
                    return;
                }
            }
        }
    }
    if hostile {
        return;
    }
    // Everything the input queued, published and served; then one honest frame each way.
    r.tx.publish();
    r.tx_out += std::mem::take(&mut r.tx_queued);
    r.rx.publish();
    r.rx_out += std::mem::take(&mut r.rx_queued);
    let e = serve(
        &mut engine,
        &mut r,
        &mut tx_ids,
        &rx_grefs,
        &sent_to_guest,
        false,
        &mut okays,
        &mut sniffed,
    );
    assert!(e.is_none(), "{e:?}");
    assert_eq!(r.tx_out, 0, "every transmit slot answered");
    assert!(tx_ids.is_empty(), "transmit slots without a response: {tx_ids:?}");
    // Receive buffers the input posted may still be unused: fill them with frames first.
    while r.rx_out > 0 {
        let f = frame_for_guest(60, 1, true);
        switch.send(sniffer_port, &f).expect("send");
        sent_to_guest.push(f);
        let before = r.rx_out;
        let e = serve(
            &mut engine,
            &mut r,
            &mut tx_ids,
            &rx_grefs,
            &sent_to_guest,
            false,
            &mut okays,
            &mut sniffed,
        );
        assert!(e.is_none(), "{e:?}");
        if r.rx_out == before {
            break;
        }
    }
    let mut honest = vec![0u8; 300];
    honest[..6].copy_from_slice(&[0xff; 6]);
    honest[6..12].copy_from_slice(&GUEST);
    for (i, b) in honest[12..].iter_mut().enumerate() {
        *b = (i as u8) ^ input.u8();
    }
    grants.grant(200, 0);
    grants
        .copy_to_guest(
            DOMID,
            &[GrantPiece {
                gref: 200,
                offset: 100,
                len: 300,
            }],
            &honest,
        )
        .expect("fill");
    while sniffer.pop().is_some() {}
    let (okays_before, sniffed_before) = (okays, sniffed);
    r.tx.push_slot(&tx_slot(200, 100, 0, 0xbeef, 300));
    tx_ids.insert(0xbeef, 1);
    r.tx.publish();
    r.tx_out += 1;
    // The honest frame is checked here, before `serve` drains the sniffer.
    let res = engine.process(&CountingNotifier::new());
    assert!(res.is_ok(), "{res:?}");
    let got = sniffer.pop().expect("the honest frame reached the switch");
    assert_eq!(got, honest, "switched intact");
    sniffed += 1;
    let e = serve(
        &mut engine,
        &mut r,
        &mut tx_ids,
        &rx_grefs,
        &sent_to_guest,
        false,
        &mut okays,
        &mut sniffed,
    );
    assert!(e.is_none(), "{e:?}");
    assert_eq!(okays, okays_before + 1, "the honest packet answered OKAY");
    assert_eq!(sniffed, sniffed_before + 1);
    if r.rx_out == 0 {
        let f = frame_for_guest(200, 7, false);
        grants.grant(201, 0xee);
        rx_grefs.insert(0xcafe, 201);
        r.rx.push_slot(&rx_slot(0xcafe, 201));
        r.rx.publish();
        r.rx_out += 1;
        switch.send(sniffer_port, &f).expect("send");
        sent_to_guest.push(f.clone());
        // Frames queued before (no buffers) come first; serve until ours lands or the queue is
        // exhausted.
        for _ in 0..300 {
            let e = serve(
                &mut engine,
                &mut r,
                &mut tx_ids,
                &rx_grefs,
                &sent_to_guest,
                false,
                &mut okays,
                &mut sniffed,
            );
            assert!(e.is_none(), "{e:?}");
            if grants.page(201)[..200] == f[..] {
                break;
            }
            if r.rx_out == 0 {
                r.rx.push_slot(&rx_slot(0xcafe, 201));
                r.rx.publish();
                r.rx_out += 1;
            }
        }
        assert_eq!(
            &grants.page(201)[..200],
            &f[..],
            "the honest frame landed in the posted buffer"
        );
    }
    tm.check_canaries();
    rm.check_canaries();
});
