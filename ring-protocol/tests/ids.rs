//! Id slabs: ids stay below the capacity, are unique while in flight, and bad ids from a peer are refused
//! with the right error.

use std::collections::HashSet;

use proptest::prelude::*;
use ring_protocol::Error;
use ring_protocol::ring::IdSlab;

#[test]
fn hands_out_every_id_once_then_reports_exhaustion() {
    let mut slab = IdSlab::<u32, 16>::new();
    let ids: HashSet<u32> = (0..16).map(|v| slab.insert(v * 10).unwrap()).collect();
    assert_eq!(ids, (0..16).collect());
    assert!(slab.is_full());
    assert_eq!(slab.insert(0), Err(Error::IdsExhausted { capacity: 16 }));
    for id in 0..16u32 {
        assert_eq!(*slab.get(u64::from(id)).unwrap() % 10, 0);
    }
    let v = slab.remove(5).unwrap();
    assert_eq!(slab.insert(v + 1), Ok(5));
    assert_eq!(slab.get(5), Ok(&(v + 1)));
}

#[test]
fn refuses_out_of_range_and_free_ids() {
    let mut slab = IdSlab::<(), 8>::new();
    assert_eq!(slab.remove(0), Err(Error::IdNotInFlight { id: 0 }));
    assert_eq!(slab.remove(8), Err(Error::IdOutOfRange { id: 8, capacity: 8 }));
    assert_eq!(
        slab.remove(u64::MAX),
        Err(Error::IdOutOfRange {
            id: u64::MAX,
            capacity: 8
        })
    );
    let id = slab.insert(()).unwrap();
    *slab.get_mut(u64::from(id)).unwrap() = ();
    slab.remove(u64::from(id)).unwrap();
    assert_eq!(
        slab.remove(u64::from(id)),
        Err(Error::IdNotInFlight { id: u64::from(id) })
    );
    assert_eq!(
        slab.get(u64::from(id)),
        Err(Error::IdNotInFlight { id: u64::from(id) })
    );
    assert!(slab.is_empty());
    let msg = Error::IdOutOfRange { id: 8, capacity: 8 }.to_string();
    assert!(msg.contains('8'), "{msg}");
}

#[cfg(feature = "alloc")]
#[test]
fn boxed_slab_behaves_like_the_fixed_one() {
    use ring_protocol::ring::IdSlabBox;
    let mut slab = IdSlabBox::<String>::new(3);
    let a = slab.insert("a".into()).unwrap();
    let b = slab.insert("b".into()).unwrap();
    let c = slab.insert("c".into()).unwrap();
    assert_eq!(slab.insert("d".into()), Err(Error::IdsExhausted { capacity: 3 }));
    assert_eq!(slab.remove(u64::from(b)).unwrap(), "b");
    assert_eq!(slab.remove(3), Err(Error::IdOutOfRange { id: 3, capacity: 3 }));
    assert_eq!(
        slab.remove(u64::from(b)),
        Err(Error::IdNotInFlight { id: u64::from(b) })
    );
    assert_eq!(
        (
            slab.get(u64::from(a)).unwrap().as_str(),
            slab.get(u64::from(c)).unwrap().as_str()
        ),
        ("a", "c")
    );
    assert_eq!(slab.len(), 2);
}

#[test]
fn insert_at_claims_an_id_chosen_elsewhere_once_and_insert_never_hands_it_out() {
    let mut slab = IdSlab::<&str, 4>::new();
    // A descriptor head the queue library picked: 2.
    slab.insert_at(2, "head 2").unwrap();
    assert_eq!(
        slab.insert_at(2, "again"),
        Err(Error::IdAlreadyInFlight { id: 2 })
    );
    assert_eq!(
        slab.get(2),
        Ok(&"head 2"),
        "a refused claim leaves the first alone"
    );
    assert_eq!(
        slab.insert_at(4, "x"),
        Err(Error::IdOutOfRange { id: 4, capacity: 4 })
    );
    assert_eq!(
        slab.insert_at(u64::MAX, "x"),
        Err(Error::IdOutOfRange {
            id: u64::MAX,
            capacity: 4
        })
    );
    // The slab's own ids skip the claimed one, and the free list survives claims in its middle.
    let mut got: Vec<u32> = (0..3).map(|_| slab.insert("mine").unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, [0, 1, 3]);
    assert_eq!(slab.insert("full"), Err(Error::IdsExhausted { capacity: 4 }));
    assert_eq!(slab.next_id(), None);
    slab.remove(1).unwrap();
    slab.remove(2).unwrap();
    slab.insert_at(1, "head 1").unwrap();
    assert_eq!(slab.next_id(), Some(2));
    assert_eq!(slab.insert("next"), Ok(2));
    assert!(slab.is_full());
}

#[test]
fn next_id_names_the_id_insert_hands_out() {
    let mut slab = IdSlab::<u8, 8>::new();
    for round in 0..3u8 {
        for v in 0..8 {
            let want = slab.next_id().unwrap();
            assert_eq!(slab.insert(v + round), Ok(want));
        }
        assert_eq!(slab.next_id(), None);
        for id in [5u64, 0, 7, 2, 1, 6, 3, 4] {
            slab.remove(id).unwrap();
        }
    }
}

#[test]
fn iter_take_first_and_drain_see_exactly_the_ids_in_flight() {
    let mut slab = IdSlab::<u32, 8>::new();
    for v in 0..8 {
        slab.insert(v * 100).unwrap();
    }
    for id in [1u64, 4, 6] {
        slab.remove(id).unwrap();
    }
    assert!(slab.contains(0) && !slab.contains(1) && !slab.contains(8) && !slab.contains(u64::MAX));
    let seen: Vec<(u32, u32)> = slab.iter().map(|(id, &v)| (id, v)).collect();
    assert_eq!(seen, [(0, 0), (2, 200), (3, 300), (5, 500), (7, 700)]);
    assert_eq!(slab.take_first(), Some((0, 0)));
    assert_eq!(slab.len(), 4);
    // A drain stopped early leaves the rest in flight.
    let first_two: Vec<(u32, u32)> = slab.drain().take(2).collect();
    assert_eq!(first_two, [(2, 200), (3, 300)]);
    assert_eq!(slab.len(), 2);
    assert_eq!(slab.drain().collect::<Vec<_>>(), [(5, 500), (7, 700)]);
    assert!(slab.is_empty());
    assert_eq!(slab.take_first(), None);
    // Everything drained is free again.
    let mut ids: Vec<u32> = (0..8).map(|v| slab.insert(v).unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..8).collect::<Vec<_>>());
}

#[derive(Debug, Clone)]
enum Op {
    Insert,
    Remove(u64),
    InsertAt(u64),
    TakeFirst,
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random inserts, claims of chosen ids, removals of random (often bogus) ids and teardown
    /// takes against a map of the ids in flight.
    #[test]
    fn slab_matches_set_model(ops in prop::collection::vec(prop_oneof![
        3 => Just(Op::Insert),
        3 => (0u64..40).prop_map(Op::Remove),
        2 => (0u64..40).prop_map(Op::InsertAt),
        1 => Just(Op::TakeFirst),
    ], 1..200)) {
        let mut slab = IdSlab::<u64, 32>::new();
        let mut live = std::collections::BTreeMap::new();
        let mut next = 0u64;
        for op in ops {
            match op {
                Op::Insert => match slab.insert(next) {
                    Ok(id) => {
                        prop_assert!(id < 32);
                        prop_assert!(live.insert(u64::from(id), next).is_none(), "id {} handed out twice", id);
                        next += 1;
                    }
                    Err(e) => {
                        prop_assert_eq!(e, Error::IdsExhausted { capacity: 32 });
                        prop_assert_eq!(live.len(), 32);
                    }
                },
                Op::Remove(id) => {
                    let expect = match live.remove(&id) {
                        Some(v) => Ok(v),
                        None if id >= 32 => Err(Error::IdOutOfRange { id, capacity: 32 }),
                        None => Err(Error::IdNotInFlight { id }),
                    };
                    prop_assert_eq!(slab.remove(id), expect);
                }
                Op::InsertAt(id) => {
                    let expect = if id >= 32 {
                        Err(Error::IdOutOfRange { id, capacity: 32 })
                    } else {
                        match live.entry(id) {
                            std::collections::btree_map::Entry::Occupied(_) => Err(Error::IdAlreadyInFlight { id }),
                            std::collections::btree_map::Entry::Vacant(v) => {
                                v.insert(next);
                                Ok(())
                            }
                        }
                    };
                    prop_assert_eq!(slab.insert_at(id, next), expect);
                    next += 1;
                }
                Op::TakeFirst => {
                    let expect = live.pop_first().map(|(id, v)| (id as u32, v));
                    prop_assert_eq!(slab.take_first(), expect);
                }
            }
            prop_assert_eq!(slab.len(), live.len());
            prop_assert_eq!(slab.is_full(), live.len() == 32);
            let ids: Vec<u64> = slab.iter().map(|(id, _)| u64::from(id)).collect();
            prop_assert_eq!(ids, live.keys().copied().collect::<Vec<_>>());
            if let Some(id) = slab.next_id() {
                prop_assert!(!live.contains_key(&u64::from(id)));
            }
        }
    }
}
