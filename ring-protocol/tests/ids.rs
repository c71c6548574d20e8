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

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random inserts and removals of random (often bogus) ids against a set of ids in flight.
    #[test]
    fn slab_matches_set_model(ops in prop::collection::vec(prop_oneof![Just(None), (0u64..40).prop_map(Some)], 1..200)) {
        let mut slab = IdSlab::<u64, 32>::new();
        let mut live = std::collections::HashMap::new();
        let mut next = 0u64;
        for op in ops {
            match op {
                None => match slab.insert(next) {
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
                Some(id) => {
                    let expect = match live.remove(&id) {
                        Some(v) => Ok(v),
                        None if id >= 32 => Err(Error::IdOutOfRange { id, capacity: 32 }),
                        None => Err(Error::IdNotInFlight { id }),
                    };
                    prop_assert_eq!(slab.remove(id), expect);
                }
            }
            prop_assert_eq!(slab.len(), live.len());
        }
    }
}
