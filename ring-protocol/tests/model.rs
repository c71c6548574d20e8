//! Property test: random interleavings of frontend and backend operations against a model built from
//! `VecDeque`s, on small rings whose free-running indices start near `u32::MAX`.

mod common;

use std::collections::VecDeque;

use common::*;
use proptest::prelude::*;
use ring_protocol::Error;
use ring_protocol::ring::{BackRing, FrontRing, RING_HEADER_SIZE};

#[derive(Debug, Clone)]
enum Op {
    WriteRequests(u8),
    PushRequests { check_notify: bool },
    ReadRequests(u8),
    WriteResponses(u8),
    PushResponses { check_notify: bool },
    ReadResponses(u8),
    FinalCheckRequests,
    FinalCheckResponses,
    UnconsumedRequests,
    UnconsumedResponses,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u8..6).prop_map(Op::WriteRequests),
        2 => any::<bool>().prop_map(|check_notify| Op::PushRequests { check_notify }),
        3 => (1u8..6).prop_map(Op::ReadRequests),
        3 => (1u8..6).prop_map(Op::WriteResponses),
        2 => any::<bool>().prop_map(|check_notify| Op::PushResponses { check_notify }),
        3 => (1u8..6).prop_map(Op::ReadResponses),
        1 => Just(Op::FinalCheckRequests),
        1 => Just(Op::FinalCheckResponses),
        1 => Just(Op::UnconsumedRequests),
        1 => Just(Op::UnconsumedResponses),
    ]
}

/// What each party should see, as queues of entries in flight.
#[derive(Default)]
struct Model {
    size: u32,
    /// Written by the frontend, not yet published.
    req_queued: VecDeque<Small>,
    /// Published, not yet read by the backend.
    req_pushed: VecDeque<Small>,
    /// Read by the backend, not yet answered.
    req_unanswered: VecDeque<Small>,
    /// Answers written, not yet published.
    rsp_queued: VecDeque<Small>,
    /// Published answers, not yet read by the frontend.
    rsp_pushed: VecDeque<Small>,
    /// Shared producer indices as last published, and the event indices.
    req_prod: u32,
    rsp_prod: u32,
    req_event: u32,
    rsp_event: u32,
    /// Private consumer indices.
    req_cons: u32,
    rsp_cons: u32,
    next: u32,
}

impl Model {
    fn slots_in_use(&self) -> usize {
        self.req_queued.len()
            + self.req_pushed.len()
            + self.req_unanswered.len()
            + self.rsp_queued.len()
            + self.rsp_pushed.len()
    }
}

/// Whether `event` is one of `old+1 ..= new` (wrapping).
fn in_batch(old: u32, new: u32, event: u32) -> bool {
    let span = new.wrapping_sub(old);
    (1..=span).any(|k| old.wrapping_add(k) == event)
}

fn answer(r: Small) -> Small {
    Small { a: r.a, b: !r.b }
}

/// `shift` (0 or 1) places the ring one 32-bit word into the allocation, so that it is only 4-byte
/// aligned and the rings copy slots in 32-bit words instead of 64-bit ones.
fn run(slots: u32, start: u32, shift: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let alloc = Mem::new(RING_HEADER_SIZE + 8 * slots as usize + 8);
    let mem = Shifted { mem: &alloc, shift };
    mem.set(REQ_PROD, start);
    mem.set(RSP_PROD, start);
    mem.set(REQ_EVENT, start.wrapping_add(1));
    mem.set(RSP_EVENT, start.wrapping_add(1));
    // SAFETY: `mem` outlives both rings and is accessed only atomically.
    let mut front = unsafe { FrontRing::<Small, Small>::attach(mem.ptr(), mem.len(), start).unwrap() };
    // SAFETY: as above.
    let mut back = unsafe { BackRing::<Small, Small>::attach(mem.ptr(), mem.len(), start).unwrap() };
    let mut m = Model {
        size: slots,
        req_prod: start,
        rsp_prod: start,
        req_event: start.wrapping_add(1),
        rsp_event: start.wrapping_add(1),
        req_cons: start,
        rsp_cons: start,
        ..Model::default()
    };
    prop_assert_eq!(front.size(), slots);

    for op in ops {
        match op {
            Op::WriteRequests(n) => {
                for _ in 0..n {
                    let v = Small {
                        a: m.next,
                        b: mix(u64::from(m.next)) as u32,
                    };
                    let got = front.write_request(&v);
                    if m.slots_in_use() < m.size as usize {
                        prop_assert_eq!(got, Ok(()));
                        m.req_queued.push_back(v);
                        m.next += 1;
                    } else {
                        prop_assert_eq!(got, Err(Error::RingFull { size: m.size }));
                    }
                    prop_assert_eq!(front.free_requests() as usize, m.size as usize - m.slots_in_use());
                }
            }
            Op::PushRequests { check_notify } => {
                let old = m.req_prod;
                let new = old.wrapping_add(m.req_queued.len() as u32);
                m.req_pushed.extend(m.req_queued.drain(..));
                m.req_prod = new;
                if check_notify {
                    let notify = front.push_requests_and_check_notify().unwrap();
                    prop_assert_eq!(notify, in_batch(old, new, m.req_event));
                } else {
                    front.push_requests().unwrap();
                }
                prop_assert_eq!(mem.get(REQ_PROD), new);
            }
            Op::ReadRequests(n) => {
                for _ in 0..n {
                    let got = back.read_request().unwrap();
                    prop_assert_eq!(got, m.req_pushed.pop_front());
                    if let Some(v) = got {
                        m.req_unanswered.push_back(v);
                        m.req_cons = m.req_cons.wrapping_add(1);
                    }
                }
            }
            Op::WriteResponses(n) => {
                for _ in 0..n {
                    match m.req_unanswered.pop_front() {
                        Some(r) => {
                            prop_assert_eq!(back.write_response(&answer(r)), Ok(()));
                            m.rsp_queued.push_back(answer(r));
                        }
                        None => {
                            let rsp_prod_pvt = m.rsp_prod.wrapping_add(m.rsp_queued.len() as u32);
                            prop_assert_eq!(
                                back.write_response(&Small { a: 0, b: 0 }),
                                Err(Error::NoRequestToAnswer {
                                    rsp_prod_pvt,
                                    req_cons: m.req_cons
                                })
                            );
                        }
                    }
                }
            }
            Op::PushResponses { check_notify } => {
                let old = m.rsp_prod;
                let new = old.wrapping_add(m.rsp_queued.len() as u32);
                m.rsp_pushed.extend(m.rsp_queued.drain(..));
                m.rsp_prod = new;
                if check_notify {
                    let notify = back.push_responses_and_check_notify().unwrap();
                    prop_assert_eq!(notify, in_batch(old, new, m.rsp_event));
                } else {
                    back.push_responses().unwrap();
                }
                prop_assert_eq!(mem.get(RSP_PROD), new);
            }
            Op::ReadResponses(n) => {
                for _ in 0..n {
                    let got = front.read_response().unwrap();
                    prop_assert_eq!(got, m.rsp_pushed.pop_front());
                    if got.is_some() {
                        m.rsp_cons = m.rsp_cons.wrapping_add(1);
                    }
                }
            }
            Op::FinalCheckRequests => {
                let work = back.final_check_for_requests().unwrap();
                prop_assert_eq!(work, !m.req_pushed.is_empty());
                if !work {
                    m.req_event = m.req_cons.wrapping_add(1);
                }
                prop_assert_eq!(mem.get(REQ_EVENT), m.req_event);
            }
            Op::FinalCheckResponses => {
                let work = front.final_check_for_responses().unwrap();
                prop_assert_eq!(work, !m.rsp_pushed.is_empty());
                if !work {
                    m.rsp_event = m.rsp_cons.wrapping_add(1);
                }
                prop_assert_eq!(mem.get(RSP_EVENT), m.rsp_event);
            }
            Op::UnconsumedRequests => {
                prop_assert_eq!(back.unconsumed_requests(), Ok(m.req_pushed.len() as u32));
            }
            Op::UnconsumedResponses => {
                prop_assert_eq!(front.unconsumed_responses(), Ok(m.rsp_pushed.len() as u32));
            }
        }
        prop_assert_eq!(
            front.req_prod_pvt(),
            m.req_prod.wrapping_add(m.req_queued.len() as u32)
        );
        prop_assert_eq!(front.rsp_cons(), m.rsp_cons);
        prop_assert_eq!(back.req_cons(), m.req_cons);
        prop_assert_eq!(
            back.rsp_prod_pvt(),
            m.rsp_prod.wrapping_add(m.rsp_queued.len() as u32)
        );
        prop_assert_eq!(front.is_full(), m.slots_in_use() == m.size as usize);
    }
    Ok(())
}

/// A ring placed `shift` words into a [`Mem`].
struct Shifted<'a> {
    mem: &'a Mem,
    shift: usize,
}

impl Shifted<'_> {
    fn ptr(&self) -> std::ptr::NonNull<u8> {
        self.mem
            .ptr()
            .map_addr(|a| a.checked_add(4 * self.shift).unwrap())
    }

    fn len(&self) -> usize {
        self.mem.len() - 8
    }

    fn set(&self, i: usize, v: u32) {
        self.mem.set(i + self.shift, v);
    }

    fn get(&self, i: usize) -> u32 {
        self.mem.get(i + self.shift)
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 512 },
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ring_matches_queue_model(
        slots in prop::sample::select(vec![1u32, 2, 4, 8, 16]),
        start in prop_oneof![Just(0u32), (u32::MAX - 64)..=u32::MAX, any::<u32>()],
        shift in 0usize..=1,
        ops in prop::collection::vec(op(), 1..if cfg!(miri) { 40 } else { 300 }),
    ) {
        run(slots, start, shift, ops)?;
    }
}
