//! blkback's blkif engine (`backends/src/xen/blkback.rs`, through its `fuzzing` entry point) over a
//! fake grant table and a small image, against a hostile frontend: requests of any bytes (every
//! operation, segment counts, sector ranges, indirect pages with any contents, grant references
//! that do not exist), published with honest or impossible producer indices.
//!
//! Invariants: the engine fails only by halting the ring, and only when the producer index was
//! impossible; it never publishes more responses than requests, every response answers a request
//! that was made (its id) with a status blkif defines and zero padding (XSA-216); once drained,
//! every request has exactly one response; and after whatever the input did, an honest write
//! followed by a read of the same sectors comes back with the written bytes.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use pvkit_backends::block::BlockCore;
use pvkit_backends::xen::Error;
use pvkit_backends::xen::blkback::BlkEngine;
use pvkit_backends::xen::xenbus::Engine;
use pvkit_backends::xen::gntdev::{FakeGrants, GrantCopy, GrantPiece};
use pvkit_fuzz::{Input, RawFront, SharedMem, image, poll_readable};
use ring_protocol::abi::blkif::{
    BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, BlkifRequest, BlkifResponse,
};
use ring_protocol::platform::fake::CountingNotifier;
use ring_protocol::ring::BackRing;

const DOMID: u16 = 5;
/// Image size in sectors (32 KiB on tmpfs).
const SECTORS: u64 = 64;
const SLOT: usize = 112;
/// Grant references the honest check uses (the input's are 0..16).
const HONEST_SRC: u32 = 1000;
const HONEST_DST: u32 = 1001;

fn core() -> Arc<BlockCore> {
    static CORE: OnceLock<Arc<BlockCore>> = OnceLock::new();
    CORE.get_or_init(|| image("blkback", SECTORS)).clone()
}

/// A request slot built from the input: mostly well-formed fields with hostile values.
fn request(input: &mut Input<'_>, id: u64) -> [u8; SLOT] {
    let mut s = [0u8; SLOT];
    if input.u8().is_multiple_of(8) {
        let raw = input.bytes(SLOT);
        s[..raw.len()].copy_from_slice(raw);
        return s;
    }
    const OPS: [u8; 6] = [
        BLKIF_OP_READ,
        BLKIF_OP_WRITE,
        BLKIF_OP_FLUSH_DISKCACHE,
        BLKIF_OP_DISCARD,
        BLKIF_OP_INDIRECT,
        0xff,
    ];
    let op = OPS[input.below(OPS.len())];
    s[0] = if op == 0xff { input.u8() } else { op };
    s[8..16].copy_from_slice(&id.to_le_bytes());
    match op {
        BLKIF_OP_INDIRECT => {
            // indirect_op u8, nr_segments u16, id, sector, handle u16, pad, indirect_grefs[8]
            s[1] = [BLKIF_OP_READ, BLKIF_OP_WRITE, input.u8()][input.below(3)];
            s[2..4].copy_from_slice(&(u16::from(input.u8()) % 300).to_le_bytes());
            s[16..24].copy_from_slice(&u64::from(input.u8()).to_le_bytes());
            for g in 0..8 {
                s[32 + 4 * g..36 + 4 * g].copy_from_slice(&u32::from(input.u8() % 16).to_le_bytes());
            }
        }
        BLKIF_OP_DISCARD => {
            // flag u8, id, sector u64, nr_sectors u64
            s[1] = input.u8() & 1;
            s[16..24].copy_from_slice(&u64::from(input.u16()).to_le_bytes());
            let n = if input.bool() {
                input.u64()
            } else {
                u64::from(input.u8())
            };
            s[24..32].copy_from_slice(&n.to_le_bytes());
        }
        _ => {
            // nr_segments u8, handle u16, id, sector u64, seg[11] of (gref u32, first u8, last u8, pad)
            s[1] = input.u8() % 14;
            let sector = if input.bool() {
                input.u64()
            } else {
                u64::from(input.u8())
            };
            s[16..24].copy_from_slice(&sector.to_le_bytes());
            for g in 0..11 {
                let at = 24 + 8 * g;
                s[at..at + 4].copy_from_slice(&u32::from(input.u8() % 16).to_le_bytes());
                let first = input.u8() % 10;
                s[at + 4] = first;
                s[at + 5] = first.saturating_add(input.u8() % 4);
            }
        }
    }
    s
}

fn response(bytes: &[u8]) -> BlkifResponse {
    use zerocopy::FromBytes;
    BlkifResponse::read_from_bytes(bytes).expect("16 bytes")
}

/// Serves until every outstanding request is answered (the AIO completions reaped) or the engine
/// fails; returns the responses taken and the failure.
fn serve(
    engine: &mut BlkEngine,
    front: &mut RawFront<'_>,
    outstanding: &mut HashMap<u64, u32>,
    in_flight: &mut u32,
    hostile: bool,
) -> (Vec<BlkifResponse>, Option<Error>) {
    let mut out = Vec::new();
    for round in 0..200 {
        let r = engine.process(&CountingNotifier::new());
        // With an impossible index published the guest's count means nothing, but the backend still
        // cannot answer more than a ring's worth beyond what was taken.
        let bound = if hostile { front.size } else { *in_flight };
        for bytes in front.take_responses(16, bound) {
            out.push(response(&bytes));
            *in_flight = in_flight.saturating_sub(1);
        }
        if let Err(e) = r {
            return (out, Some(e));
        }
        if (*in_flight == 0 && !hostile) || (hostile && round >= 3) {
            break;
        }
        poll_readable(engine.extra_fd().expect("the AIO completion fd"), if hostile { 0 } else { 5 });
    }
    for r in &out {
        assert!(
            [BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP].contains(&r.status),
            "status {}",
            r.status
        );
        assert_eq!((r._pad0, r._pad1), (0, [0; 4]), "response padding (XSA-216)");
        if hostile {
            // Slots the guest never wrote were published: their ids are whatever the memory held.
            continue;
        }
        let n = outstanding
            .get_mut(&r.id)
            .unwrap_or_else(|| panic!("response to request id {} never made", r.id));
        *n -= 1;
        if *n == 0 {
            outstanding.remove(&r.id);
        }
    }
    (out, None)
}

/// One engine kept across inputs: creating its AIO context is cheap, but destroying one waits for
/// the kernel (io_destroy, several milliseconds), which would make each input cost that. After an
/// input that halted the ring or left it with an impossible index it starts over on a fresh ring
/// (`BlkEngine::restart`). Run with `-detect_leaks=0`: memory kept across inputs (the rig, its
/// buffer pool) would make libFuzzer run LeakSanitizer's stop-the-world scan after most inputs.
struct Rig {
    /// Declared before `mem`: the engine's ring is dropped before its memory.
    engine: BlkEngine,
    grants: Arc<FakeGrants>,
    mem: Box<SharedMem>,
    req_pvt: u32,
    rsp_cons: u32,
}

// SAFETY: the rig is only ever used from the fuzzing thread that holds the mutex; the engine's
// ring points into `mem`, which lives (boxed, not moved) as long as the rig.
unsafe impl Send for Rig {}

fn rig() -> Rig {
    let mem = Box::new(SharedMem::new(4096));
    RawFront::new(&mem, SLOT);
    // SAFETY: `mem` outlives the engine (same struct, dropped after it) and the harness touches it
    // only atomically.
    let ring = unsafe { BackRing::<BlkifRequest, BlkifResponse>::new(mem.ptr(), mem.len()) }.expect("ring");
    let grants = Arc::new(FakeGrants::new(DOMID));
    let gnt: Arc<dyn GrantCopy> = grants.clone();
    let engine = BlkEngine::new(ring, DOMID, core(), gnt).expect("engine");
    Rig {
        engine,
        grants,
        mem,
        req_pvt: 0,
        rsp_cons: 0,
    }
}

static RIG: std::sync::Mutex<Option<Rig>> = std::sync::Mutex::new(None);

/// Rigs done with are dropped on other threads: an AIO context's io_destroy blocks for a grace
/// period of the kernel (tens of milliseconds); several dropped at once wait in parallel.
fn retire(r: Rig) {
    static DROPPER: OnceLock<std::sync::mpsc::SyncSender<Rig>> = OnceLock::new();
    let tx = DROPPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Rig>(64);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for _ in 0..8 {
            let rx = rx.clone();
            std::thread::spawn(move || {
                loop {
                    let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match next {
                        Ok(r) => drop(r),
                        Err(_) => return,
                    }
                }
            });
        }
        tx
    });
    let _ = tx.send(r);
}

fuzz_target!(|data: &[u8]| {
    let mut slot = RIG.lock().unwrap_or_else(|e| e.into_inner());
    let mut r = slot.take().unwrap_or_else(rig);
    if one(data, &mut r) {
        *slot = Some(r);
        return;
    }
    // The input halted the ring or left it with an impossible index: start over on a fresh ring
    // (as a reconnect would), keeping the AIO context if nothing is in flight.
    RawFront::new(&r.mem, SLOT);
    // SAFETY: as in `rig`.
    let ring =
        unsafe { BackRing::<BlkifRequest, BlkifResponse>::new(r.mem.ptr(), r.mem.len()) }.expect("ring");
    if r.engine.restart(ring).is_ok() {
        (r.req_pvt, r.rsp_cons) = (0, 0);
        *slot = Some(r);
    } else {
        retire(r);
    }
});

/// Runs one input; returns whether the rig can serve the next one.
fn one(data: &[u8], rig: &mut Rig) -> bool {
    let mut input = Input::new(data);
    let Rig {
        engine,
        grants,
        mem,
        req_pvt,
        rsp_cons,
    } = rig;
    let mut front = RawFront::resume(mem, SLOT, *req_pvt, *rsp_cons);
    for g in 0..12 {
        grants.grant(g, g as u8);
    }
    let grants = grants.clone();
    let mut outstanding: HashMap<u64, u32> = HashMap::new();
    // Requests published and not yet answered, as the frontend sees it.
    let mut in_flight = 0u32;
    let mut queued = 0u32;
    let mut hostile_index = false;
    let mut next_id = 0u64;
    let mut ops = 0;
    while !input.is_empty() && ops < 64 {
        ops += 1;
        match input.u8() % 6 {
            0 | 1 => {
                if in_flight + queued < front.size {
                    let id = if input.bool() {
                        next_id
                    } else {
                        u64::from(input.u8() % 4)
                    };
                    next_id += 1;
                    let slot = request(&mut input, id);
                    let id = u64::from_le_bytes(slot[8..16].try_into().expect("8"));
                    *outstanding.entry(id).or_default() += 1;
                    front.push_slot(&slot);
                    queued += 1;
                }
            }
            2 => {
                // The guest rewrites one of its pages (indirect segment lists, data).
                let g = u32::from(input.u8() % 12);
                let off = usize::from(input.u16()) % 4096;
                let bytes = input.chunk(255);
                let n = bytes.len().min(4096 - off);
                grants.poke(g, off, &bytes[..n]);
            }
            3 => {
                if input.u8() % 16 == 15 {
                    // An impossible (or merely wrong) producer index.
                    front.publish_raw(input.u32());
                    hostile_index = true;
                } else {
                    front.publish();
                    in_flight += queued;
                    queued = 0;
                }
            }
            _ => {
                let (_, failed) = serve(
                    engine,
                    &mut front,
                    &mut outstanding,
                    &mut in_flight,
                    hostile_index,
                );
                if let Some(e) = failed {
                    assert!(hostile_index, "engine failed with honest indices: {e}");
                    assert!(
                        matches!(e, Error::RingHalted { .. }),
                        "failed other than by halting: {e}"
                    );
                    assert!(engine.process(&CountingNotifier::new()).is_err(), "a halted ring stays halted");
                    return false;
                }
            }
        }
    }
    if hostile_index {
        return false;
    }
    // Drain whatever the input left, then serve an honest write and read back its bytes.
    front.publish();
    in_flight += queued;
    let (_, failed) = serve(engine, &mut front, &mut outstanding, &mut in_flight, false);
    assert!(failed.is_none(), "honest indices: {failed:?}");
    assert_eq!(in_flight, 0, "every request answered");
    assert!(
        outstanding.is_empty(),
        "requests without a response: {outstanding:?}"
    );
    let pattern: Vec<u8> = (0..4096u32)
        .map(|i| (i * 7 + u32::from(input.u8())) as u8)
        .collect();
    grants.grant(HONEST_SRC, 0);
    grants
        .copy_to_guest(
            DOMID,
            &[GrantPiece {
                gref: HONEST_SRC,
                offset: 0,
                len: 4096,
            }],
            &pattern,
        )
        .expect("fill");
    grants.grant(HONEST_DST, 0);
    let rw = |op: u8, id: u64, gref: u32| {
        let mut s = [0u8; SLOT];
        s[0] = op;
        s[1] = 1;
        s[8..16].copy_from_slice(&id.to_le_bytes());
        s[16..24].copy_from_slice(&8u64.to_le_bytes());
        s[24..28].copy_from_slice(&gref.to_le_bytes());
        s[28] = 0;
        s[29] = 7;
        s
    };
    for (op, id, gref) in [
        (BLKIF_OP_WRITE, 1 << 40, HONEST_SRC),
        (BLKIF_OP_READ, (1 << 40) + 1, HONEST_DST),
    ] {
        front.push_slot(&rw(op, id, gref));
        front.publish();
        in_flight += 1;
        outstanding.insert(id, 1);
        let (rsp, failed) = serve(engine, &mut front, &mut outstanding, &mut in_flight, false);
        assert!(failed.is_none(), "{failed:?}");
        assert_eq!(
            rsp.iter().map(|r| (r.id, r.status)).collect::<Vec<_>>(),
            vec![(id, BLKIF_RSP_OKAY)],
            "the honest request after the input is served"
        );
    }
    assert_eq!(grants.page(HONEST_DST), pattern, "read back what was written");
    mem.check_canaries();
    (*req_pvt, *rsp_cons) = (front.req_pvt, front.rsp_cons);
    true
}
