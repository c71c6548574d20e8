//! vhost-user-blk end to end without QEMU: the test plays the frontend (rust-vmm's vhost-user
//! `Frontend` over the daemon's socket) and the guest driver (a split virtqueue written by hand in a
//! shared memfd), against `pvkit_backends::vhost::serve` running the real backend on a temp image.
//! Checks: data written lands in the image and reads back; flush and the config space; malformed
//! and hostile chains get an error status without stopping the device; a second connection after
//! the first frontend went away is served.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{GuestMem, MEM_SIZE, QSIZE, Queue, connect_retry, region, vring_config};

use ::vhost::VhostBackend;
use ::vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use ::vhost::vhost_user::{Frontend, VhostUserFrontend};
use pvkit_backends::block::{BlockCore, BlockOptions};
use pvkit_backends::vhost::{ServeOptions, blk::BlkConnections, serve};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const IMAGE_SECTORS: u64 = 2048;

fn header(t: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&t.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// Connects and sets up queue 0; returns the frontend and its kick/call eventfds.
fn connect(sock: &Path, mem: &GuestMem) -> (Frontend, EventFd, EventFd) {
    let mut fe = connect_retry(sock, 1);
    fe.set_owner().unwrap();
    let features = fe.get_features().unwrap();
    for bit in [32u32, 9, 12, 13, 30] {
        assert_ne!(features & (1 << bit), 0, "feature bit {bit} offered");
    }
    let proto = fe.get_protocol_features().unwrap();
    assert!(
        proto.contains(VhostUserProtocolFeatures::CONFIG),
        "CONFIG (QEMU requires it)"
    );
    fe.set_protocol_features(VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ)
        .unwrap();
    // VERSION_1, FLUSH, protocol features; no EVENT_IDX so every completion interrupts.
    fe.set_features((1 << 32) | (1 << 9) | (1 << 30)).unwrap();
    assert_eq!(fe.get_queue_num().unwrap(), 1);
    let (_, cfg) = fe
        .get_config(0, 60, VhostUserConfigFlags::WRITABLE, &[0u8; 60])
        .unwrap();
    assert_eq!(
        u64::from_le_bytes(cfg[0..8].try_into().unwrap()),
        IMAGE_SECTORS,
        "capacity in the config space"
    );
    fe.set_mem_table(&[region(mem)]).unwrap();
    fe.set_vring_num(0, QSIZE).unwrap();
    fe.set_vring_addr(0, &vring_config(mem, &Queue::new(mem, 0)))
        .unwrap();
    fe.set_vring_base(0, 0).unwrap();
    let call = EventFd::new(EFD_NONBLOCK).unwrap();
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    fe.set_vring_call(0, &call).unwrap();
    fe.set_vring_kick(0, &kick).unwrap();
    fe.set_vring_enable(0, true).unwrap();
    (fe, kick, call)
}

#[test]
fn requests_hostile_chains_and_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![0xeeu8; IMAGE_SECTORS as usize * 512]).unwrap();
    let sock = dir.path().join("blk.sock");
    let core = Arc::new(BlockCore::open(&img, BlockOptions::default()).unwrap());
    let s2 = sock.clone();
    let server = std::thread::spawn(move || {
        serve(
            "vhost-user-blk-test",
            &s2,
            BlkConnections {
                core,
                pool: None,
                queues: 1,
            },
            &ServeOptions {
                max_connections: Some(2),
                ..Default::default()
            },
        )
    });

    let mem = GuestMem::new();
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
    {
        let (fe, kick, _call) = connect(&sock, &mem);
        let mut q = Queue::new(&mem, 0);
        mem.write(0x1000, &header(T_OUT, 2));
        mem.write(0x2000, &pattern);
        let w = q.add(&[(0x1000, 16, false), (0x2000, 1024, false), (0x1800, 1, true)]);
        mem.write(0x1010, &header(T_FLUSH, 0));
        let f = q.add(&[(0x1010, 16, false), (0x1801, 1, true)]);
        q.kick(&kick);
        let used = q.wait_used(2);
        assert!(
            used.contains(&(u32::from(w), 1)) && used.contains(&(u32::from(f), 1)),
            "{used:?}"
        );
        assert_eq!(mem.read(0x1800, 2), vec![S_OK, S_OK]);
        let on_disk = std::fs::read(&img).unwrap();
        assert_eq!(&on_disk[1024..2048], &pattern[..], "the write is in the image");
        assert!(on_disk[..1024].iter().chain(&on_disk[2048..]).all(|&b| b == 0xee));

        // Read back into two scattered buffers; then hostile and malformed chains.
        mem.write(0x1020, &header(T_IN, 2));
        let r = q.add(&[
            (0x1020, 16, false),
            (0x3000, 512, true),
            (0x4000, 512, true),
            (0x1802, 1, true),
        ]);
        mem.write(0x1030, &header(T_IN, IMAGE_SECTORS - 1));
        let past = q.add(&[(0x1030, 16, false), (0x5000, 1024, true), (0x1803, 1, true)]);
        mem.write(0x1040, &header(T_IN, 0));
        let outside = q.add(&[
            (0x1040, 16, false),
            (MEM_SIZE + 0x1000, 512, true),
            (0x1804, 1, true),
        ]);
        mem.write(0x1050, &header(T_OUT, 0));
        let wrong_dir = q.add(&[(0x1050, 16, false), (0x2000, 512, true), (0x1805, 1, true)]);
        mem.write(0x1060, &header(T_IN, 0));
        let no_status = q.add(&[(0x1060, 16, false), (0x6000, 512, false)]);
        mem.write(0x1806, &[0xaa; 5]);
        q.kick(&kick);
        let used = q.wait_used(5);
        let len_of = |h: u16| used.iter().find(|u| u.0 == u32::from(h)).map(|u| u.1);
        assert_eq!(len_of(r), Some(1025), "read: data + status");
        assert_eq!(mem.read(0x3000, 512), &pattern[..512]);
        assert_eq!(mem.read(0x4000, 512), &pattern[512..]);
        assert_eq!(
            len_of(no_status),
            Some(0),
            "no status byte: completed without one"
        );
        assert_eq!(
            mem.read(0x1802, 4),
            vec![S_OK, S_IOERR, S_IOERR, S_IOERR],
            "read ok; past the end, outside guest memory and wrong direction refused"
        );
        assert!(len_of(past).is_some() && len_of(outside).is_some() && len_of(wrong_dir).is_some());
        assert_eq!(
            std::fs::read(&img).unwrap()[..512],
            [0xeeu8; 512],
            "the wrong-direction write did not happen"
        );
        drop(fe);
    }

    // The frontend went away; a new one is served on the same socket.
    let mem2 = GuestMem::new();
    let (fe, kick, _call) = connect(&sock, &mem2);
    let mut q = Queue::new(&mem2, 0);
    mem2.write(0x1000, &header(T_IN, 2));
    q.add(&[(0x1000, 16, false), (0x3000, 1024, true), (0x1800, 1, true)]);
    q.kick(&kick);
    q.wait_used(1);
    assert_eq!(mem2.read(0x1800, 1), vec![S_OK]);
    assert_eq!(
        mem2.read(0x3000, 1024),
        pattern,
        "second connection reads the data back"
    );
    drop(fe);
    server.join().unwrap().unwrap();
}
