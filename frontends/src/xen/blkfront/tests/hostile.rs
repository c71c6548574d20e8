//! blkfront against the fake backend turned hostile ([`Mode`]), and (feature `hostile-frontend`)
//! blkfront turned hostile on purpose. Every way a backend domain can
//! break the protocol halts only this device, with a typed error, and frees nothing it still holds.

use super::*;

#[test]
fn hostile_backend_that_never_connects_times_out_and_releases_everything() {
    let (mut xs, w, grants) = world(
        "0",
        "0",
        Mode {
            absent: true,
            ..Mode::default()
        },
    );
    let e = connect(&mut xs, &w, grants, quick()).unwrap_err();
    match e {
        Error::XenbusTimeout(t) => {
            assert_eq!(
                (t.frontend.as_str(), t.state, t.awaited),
                ("device/vbd/51712", 2, "Connected")
            );
        }
        other => panic!("expected a xenbus timeout, got {other:?}"),
    }
    assert_eq!(stats(grants), (0, 0, 0), "the ring's grant ended, nothing leaked");
    assert_eq!(w.events.closed(), 1, "event channel closed");
    assert_eq!(w.fe_state(), 6, "frontend gave the device up (Closed)");
    assert!(w.now.get() < 2_000_000, "bounded: {} us", w.now.get());
}

#[test]
fn xsa396_backend_that_maps_the_ring_and_never_connects_gets_the_ring_abandoned_not_freed() {
    let (mut xs, w, grants) = world(
        "2",
        "0",
        Mode {
            silent: true,
            keep_ring: true,
            ..Mode::default()
        },
    );
    let e = connect(&mut xs, &w, grants, quick()).unwrap_err();
    assert!(matches!(e, Error::XenbusTimeout(_)), "{e:?}");
    let refs = published_ring_refs(&w);
    assert_eq!(refs.len(), 4);
    assert_eq!(
        stats(grants),
        (4, 4, 4),
        "four ring grants abandoned, four pages leaked"
    );
    let ring = w.be.borrow().ring_ptr.unwrap();
    for p in 0..4 {
        assert!(
            FAKE_DMA.is_live(ring.wrapping_add(p * PAGE_SIZE)),
            "ring page {p} freed while mapped"
        );
    }
    assert_still_granted_and_never_reused(grants, &refs);
}

#[test]
fn xsa396_connect_failing_after_the_backend_mapped_the_ring_abandons_it_and_counts() {
    // The backend maps the ring, says Connected with a bad sector-size, and keeps the ring mapped
    // through the close handshake.
    let (mut xs, w, grants) = world_with(
        &[("max-ring-page-order", "1"), ("sector-size", "3000")],
        Mode {
            keep_ring: true,
            ..Mode::default()
        },
    );
    let e = connect(&mut xs, &w, grants, quick()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Protocol {
                what: "sector-size",
                value: 3000,
                ..
            }
        ),
        "{e:?}"
    );
    let refs = published_ring_refs(&w);
    assert_eq!(stats(grants), (2, 2, 2));
    let ring = w.be.borrow().ring_ptr.unwrap();
    assert!(FAKE_DMA.is_live(ring) && FAKE_DMA.is_live(ring.wrapping_add(PAGE_SIZE)));
    assert_still_granted_and_never_reused(grants, &refs);
    assert_eq!(w.fe_state(), 6, "frontend Closed");
    // The page is still the backend's, untouched by anyone else: what it writes stays.
    // SAFETY: the abandoned ring page is leaked (never freed), so it stays valid.
    unsafe { ring.wrapping_add(100).write_volatile(0xa5) };
    // SAFETY: as above.
    assert_eq!(unsafe { ring.wrapping_add(100).read_volatile() }, 0xa5);
}

#[test]
fn xsa396_connect_failing_after_the_ring_was_mapped_ends_the_grants_once_the_backend_lets_go() {
    // Same failure, but the backend unmaps when asked to close: nothing is leaked.
    let (mut xs, w, grants) = world_with(
        &[("max-ring-page-order", "1"), ("sector-size", "3000")],
        Mode::default(),
    );
    connect(&mut xs, &w, grants, quick()).unwrap_err();
    assert!(
        w.be.borrow().ring_ptr.is_some(),
        "the backend had mapped the ring"
    );
    assert_eq!(stats(grants), (0, 0, 0));
}

#[test]
fn hostile_backend_publishing_bad_sizes_and_orders_gets_a_typed_error_or_a_clamped_value() {
    let refused: &[(&str, &str)] = &[
        ("sector-size", "0"),
        ("sector-size", "256"),
        ("sector-size", "1536"),
        ("sector-size", "3000"),
        ("sector-size", "8192"),
        ("sector-size", "18446744073709551615"),
        ("sector-size", "99999999999999999999999"),
        ("sector-size", "-512"),
        ("sector-size", "+512"),
        ("sector-size", "5l2"),
        ("sector-size", ""),
        ("sectors", "18446744073709551615"),
        ("sectors", "36028797018963968"),
        ("sectors", "lots"),
        ("info", "4294967296"),
        ("feature-flush-cache", "2"),
        ("feature-barrier", "yes"),
        ("max-ring-page-order", "-1"),
        ("feature-max-indirect-segments", "1e9"),
    ];
    for &(key, value) in refused {
        let (mut xs, w, grants) = world_with(&[(key, value)], Mode::default());
        let e = connect(&mut xs, &w, grants, quick()).map(|_| ()).unwrap_err();
        assert!(
            matches!(e, Error::Protocol { .. } | Error::XenStore(_)),
            "{key}={value:?}: {e:?}"
        );
        let text = format!("{e}");
        assert!(
            text.contains(key),
            "{key}={value:?}: the message names the key: {text}"
        );
        assert_eq!(stats(grants), (0, 0, 0), "{key}={value:?}: ring released");
    }
    // Absurd offers we can live with are clamped.
    let (mut xs, w, grants) = world_with(
        &[
            ("max-ring-page-order", "4294967298"),
            ("feature-max-indirect-segments", "4294967296"),
            ("sectors", "36028797018963967"),
            ("sector-size", "4096"),
        ],
        Mode::default(),
    );
    let dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
    let (f, i) = (dev.features(), dev.info());
    assert_eq!((f.ring_order, f.indirect_segments), (2, 256));
    assert_eq!((i.capacity_sectors, i.sector_size), (36028797018963967 / 8, 4096));
    drop(dev);
    let (mut xs, w, grants) = world_with(&[("feature-max-indirect-segments", "5")], Mode::default());
    let dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
    assert_eq!(
        (dev.features().indirect_segments, dev.info().max_request_bytes),
        (0, 11 * PAGE_SIZE),
        "fewer indirect segments than a direct request holds: direct only"
    );
}

#[test]
fn xsa155_forged_response_id_is_copied_then_refused_and_halts_only_that_device() {
    for (forged, what) in [
        (1u64 << 40, "out of range"),
        (31, "in range, never issued"),
        (u64::MAX, "all ones"),
        (0, "the id of the request just completed (a duplicate answer)"),
    ] {
        let (mut xs, w, grants) = world(
            "0",
            "0",
            Mode {
                forge_id: Some((1, forged)),
                ..Mode::default()
            },
        );
        w.be.borrow_mut().disk[512..1024].fill(0x42);
        let mut dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
        dev.submit(read_req(7, 1, 512)).map_err(|r| r.error).unwrap();
        dev.submit(read_req(8, 1, 512)).map_err(|r| r.error).unwrap();
        // The honest first answer completes its request with the right data.
        let c = next(&mut dev, &w).unwrap();
        assert_eq!(c.tag, 7, "{what}");
        c.result.unwrap();
        assert!(c.buf.as_slice().iter().all(|&b| b == 0x42), "{what}");
        // The forged one is refused, never used as an index.
        let e = next(&mut dev, &w).unwrap_err();
        assert_eq!(
            e,
            Error::Protocol {
                device: "xen-blk",
                what: "response id not in flight",
                value: forged
            },
            "{what}"
        );
        assert_eq!(dev.broken(), Some(&e));
        // The request it should have answered comes back failed, with its buffer.
        let c = dev.poll().unwrap().unwrap();
        assert_eq!((c.tag, c.buf.len(), c.result), (8, 512, Err(e.clone())), "{what}");
        assert_eq!(dev.poll().unwrap_err(), e);
        let r = dev.submit(read_req(9, 1, 512)).unwrap_err();
        assert_eq!((r.error, r.req.buf.len()), (e.clone(), 512), "{what}");
        assert_eq!(dev.in_flight(), 0);
        dev.disconnect(&mut xs, &w, 200_000).unwrap();
        assert_eq!(stats(grants), (0, 0, 0), "{what}");
    }
}

#[test]
fn xsa155_response_naming_another_operation_is_refused() {
    let (mut xs, w, grants) = world(
        "0",
        "0",
        Mode {
            forge_op: Some(BLKIF_OP_WRITE),
            ..Mode::default()
        },
    );
    let mut dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
    dev.submit(read_req(1, 0, 512)).map_err(|r| r.error).unwrap();
    let e = next(&mut dev, &w).unwrap_err();
    assert_eq!(
        e,
        Error::Protocol {
            device: "xen-blk",
            what: "response operation differs from its request's",
            value: u64::from(BLKIF_OP_WRITE)
        }
    );
    let c = dev.poll().unwrap().unwrap();
    assert_eq!((c.tag, c.result), (1, Err(e)));
    dev.disconnect(&mut xs, &w, 200_000).unwrap();
    assert_eq!(stats(grants), (0, 0, 0));
}

#[test]
fn hostile_backend_overrunning_rsp_prod_halts_the_ring_with_no_out_of_bounds_read() {
    for overrun in [1u32, 32, 1000, u32::MAX / 2] {
        let (mut xs, w, grants) = world(
            "0",
            "0",
            Mode {
                overrun,
                ..Mode::default()
            },
        );
        let mut dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
        dev.submit(read_req(1, 0, 512)).map_err(|r| r.error).unwrap();
        dev.submit(read_req(2, 0, 512)).map_err(|r| r.error).unwrap();
        let e = next(&mut dev, &w).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Ring(ring_protocol::Error::ResponseOverrun { outstanding: 2, .. })
            ),
            "overrun {overrun}: {e:?}"
        );
        // Both requests come back failed with their buffers (their grants ended), then the error.
        for _ in 0..2 {
            let c = dev.poll().unwrap().unwrap();
            assert_eq!((c.buf.len(), c.result), (512, Err(e.clone())));
        }
        assert_eq!(dev.poll().unwrap_err(), e);
        assert_eq!(grants.stats().active, 1, "only the ring is still granted");
        dev.disconnect(&mut xs, &w, 200_000).unwrap();
        assert_eq!(stats(grants), (0, 0, 0));
    }
    // Claiming responses it never wrote (within the requests outstanding): the slots still hold
    // our requests, whose bytes make no valid response id; refused, never used as an index.
    let (mut xs, w, grants) = world(
        "0",
        "0",
        Mode {
            phantom: true,
            ..Mode::default()
        },
    );
    let mut dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
    dev.submit(read_req(1, 0, 512)).map_err(|r| r.error).unwrap();
    let e = next(&mut dev, &w).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Protocol {
                what: "response id not in flight",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(dev.poll().unwrap().unwrap().result, Err(e));
    dev.disconnect(&mut xs, &w, 200_000).unwrap();
    assert_eq!(stats(grants), (0, 0, 0));
}

#[test]
fn xsa396_backend_keeping_a_data_grant_after_its_response_halts_and_the_page_is_never_freed() {
    let (mut xs, w, grants) = world(
        "0",
        "0",
        Mode {
            keep_data: true,
            keep_ring: true,
            ..Mode::default()
        },
    );
    let mut dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
    let req = read_req(5, 0, 2 * PAGE_SIZE);
    let data = req.buf.as_ptr();
    dev.submit(req).map_err(|r| r.error).unwrap();
    let c = next(&mut dev, &w).unwrap();
    let e = Error::Protocol {
        device: "xen-blk",
        what: "backend kept a grant after completing the request",
        value: 0,
    };
    assert_eq!((c.tag, c.buf.len(), c.result), (5, 0, Err(e.clone())));
    assert_eq!(dev.stuck_grants(), 2);
    assert!(FAKE_DMA.is_live(data) && FAKE_DMA.is_live(data.wrapping_add(PAGE_SIZE)));
    assert_eq!(dev.submit(read_req(6, 0, 512)).unwrap_err().error, e);
    let kept = w.be.borrow().kept.clone();
    let ring_refs = published_ring_refs(&w);
    // The backend also keeps everything through the close handshake.
    dev.disconnect(&mut xs, &w, 200_000).unwrap();
    assert_eq!(
        stats(grants),
        (3, 3, 3),
        "two data pages and the ring page abandoned"
    );
    assert!(FAKE_DMA.is_live(data) && FAKE_DMA.is_live(data.wrapping_add(PAGE_SIZE)));
    let all: Vec<u32> = kept.iter().map(|&(r, _)| r).chain(ring_refs).collect();
    assert_still_granted_and_never_reused(grants, &all);
}

#[test]
fn xsa396_a_backend_that_lets_go_late_gets_its_grants_ended_not_abandoned() {
    // The data grants stay mapped after the response but are unmapped when the device closes
    // (like a slow backend): disconnect retries and ends them; nothing leaks.
    let (mut xs, w, grants) = world(
        "0",
        "0",
        Mode {
            keep_data: true,
            ..Mode::default()
        },
    );
    let mut dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
    dev.submit(read_req(5, 0, 512)).map_err(|r| r.error).unwrap();
    assert!(next(&mut dev, &w).unwrap().result.is_err());
    for (r, access) in core::mem::take(&mut w.be.borrow_mut().kept) {
        w.unmap(r, access);
    }
    dev.disconnect(&mut xs, &w, 200_000).unwrap();
    assert_eq!(stats(grants), (0, 0, 0));
}

#[test]
fn hostile_backend_flipping_state_while_connecting_is_refused_with_a_typed_error() {
    let (mut xs, w, grants) = world(
        "0",
        "0",
        Mode {
            flip_on_connect: true,
            ..Mode::default()
        },
    );
    let e = connect(&mut xs, &w, grants, quick()).unwrap_err();
    assert_eq!(
        e,
        Error::Protocol {
            device: "xenbus",
            what: "backend left the handshake (its state shown)",
            value: 5
        }
    );
    assert_eq!(stats(grants), (0, 0, 0), "ring unmapped on close and released");
    assert!(w.now.get() < 2_000_000, "bounded: {} us", w.now.get());
}

#[test]
fn hostile_backend_flipping_state_on_close_cannot_hold_disconnect() {
    let (mut xs, w, grants) = world(
        "0",
        "0",
        Mode {
            flip_on_close: true,
            ..Mode::default()
        },
    );
    let dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
    let before = w.now.get();
    let e = dev.disconnect(&mut xs, &w, 100_000).unwrap_err();
    assert!(matches!(e, Error::XenbusTimeout(_)), "{e:?}");
    assert!(w.be.borrow().flips > 10, "it did flip");
    assert!(w.now.get() - before < 1_000_000, "bounded");
    assert_eq!(w.fe_state(), 6, "frontend Closed anyway");
    // It never unmapped the ring: abandoned, counted.
    assert_eq!(stats(grants), (1, 1, 1));
}

#[cfg(feature = "hostile-frontend")]
#[test]
fn hostile_frontend_publishes_an_index_a_correct_backend_refuses() {
    let (mut xs, w, grants) = world("0", "0", Mode::default());
    let mut dev = connect(&mut xs, &w, grants, BlkOptions::default()).unwrap();
    block::write(&mut dev, &w, 0, &[1u8; 512]).unwrap();
    let before = w.events.take_notifies(FIRST_PORT);
    let published = dev.publish_impossible_requests().unwrap();
    assert_eq!(
        published,
        1 + 32 + 7,
        "a ring's worth and more past the one request made"
    );
    assert_eq!(
        w.events.take_notifies(FIRST_PORT),
        1,
        "the backend is told ({before} before)"
    );
    // What the backend's ring says about it (the fake backend is not run: it would stop there).
    let e =
        w.be.borrow_mut()
            .ring
            .as_mut()
            .unwrap()
            .read_request()
            .unwrap_err();
    assert!(matches!(e, ring_protocol::Error::RequestOverrun { .. }), "{e:?}");
    drop(dev);
}
