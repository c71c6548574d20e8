//! The vhost-user relay's message reader (`backends/src/vhost/relay/mod.rs` `relay`): one connection of
//! a hostile VMM over a real socket pair, messages sent in pieces (header and payload apart, or
//! whole), descriptors attached to any piece and in any number, headers claiming any payload size,
//! the stream ending anywhere.
//!
//! Invariants: the relay returns (never hangs or panics); what reaches the library's socket is
//! exactly the messages it should forward, byte for byte and in order: every message up to the
//! first refused one (the gate's verdict, a payload over 4096 bytes, more than 8 descriptors with
//! one message, a truncated one), `SET_VRING_ENABLE`s before the first `SET_FEATURES` held back
//! (the last per ring, answered when a reply was asked for) and replayed right after it; every
//! forwarded message carries exactly its own descriptors; and no descriptor leaks, whatever was
//! refused.
#![no_main]

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;
use pvkit_backends::vhost::relay::{Gate, MAX_FDS, Policy, relay};
use pvkit_fuzz::relay::{Msg, SET_FEATURES, SET_VRING_ENABLE, make, message};
use pvkit_fuzz::{Input, open_fds};

fn send(sock: &UnixStream, bytes: &[u8], fds: &[OwnedFd]) {
    if fds.is_empty() {
        (&*sock).write_all(bytes).expect("write");
        return;
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let payload = raw.len() * size_of::<RawFd>();
    // SAFETY: pure computation.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: plain data, zero is an empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: the control buffer holds CMSG_SPACE(payload) bytes, 8-byte aligned: room for one
    // header and the descriptors.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(payload as u32) as usize;
        std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), payload);
    }
    // SAFETY: `msg` describes live buffers; the descriptors are open.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
    assert_eq!(n as usize, bytes.len(), "sendmsg");
}

/// Everything readable until the end of the stream, with the descriptors received and the byte
/// offset each batch of descriptors arrived at.
fn drain(sock: &UnixStream) -> (Vec<u8>, Vec<(usize, Vec<OwnedFd>)>) {
    let mut out = Vec::new();
    let mut fds = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut cbuf = [0u64; 64];
        // SAFETY: plain data.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&cbuf);
        // SAFETY: `msg` points at live buffers of the given sizes.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
        let mut got = Vec::new();
        // SAFETY: walking the control data recvmsg filled, within msg_controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..len / 4 {
                        let fd = libc::CMSG_DATA(c).add(4 * i).cast::<RawFd>().read_unaligned();
                        got.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if !got.is_empty() {
            fds.push((out.len(), got));
        }
        if n == 0 {
            return (out, fds);
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}

fuzz_target!(|data: &[u8]| {
    let before = open_fds();
    {
        run(data);
    }
    assert_eq!(open_fds(), before, "descriptors leaked");
});

fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let policy = Policy {
        protocol_features: 0x8 | 0x200,
        queues: 2,
        max_queue_size: 256,
        allow_unsealed_memory: false,
        max_memory: 1 << 40,
    };
    let (f_peer, f_relay) = UnixStream::pair().expect("pair");
    let (b_relay, b_peer) = UnixStream::pair().expect("pair");
    // The model: a gate of its own (the gate's verdicts are checked by `relay_gate`), the early
    // enables, what must reach the library and the replies the VMM must get.
    let mut gate = Gate::new(policy.clone());
    let mut want = Vec::new();
    let mut want_fds: Vec<(usize, usize)> = Vec::new();
    let mut want_replies = Vec::new();
    let mut early: Vec<Vec<u8>> = Vec::new();
    let mut features_seen = false;
    let mut stopped = false;
    let mut unmodelled = false;
    let mut sent = 0usize;
    for _ in 0..16 {
        if input.is_empty() || sent > 48 * 1024 {
            break;
        }
        let m: Msg = message(&mut input);
        let bytes = m.bytes();
        // Sometimes a header claiming another size (more than the protocol allows, or than follows).
        let mut wire = bytes.clone();
        let claimed = match input.u8() % 16 {
            0 => {
                let c = 4097 + u32::from(input.u16());
                wire[8..12].copy_from_slice(&c.to_le_bytes());
                Some(c)
            }
            1 => {
                let c = m.payload.len() as u32 + 1 + u32::from(input.u8());
                wire[8..12].copy_from_slice(&c.to_le_bytes());
                Some(c)
            }
            _ => None,
        };
        // Descriptors on the header piece, the payload piece, or split between them.
        let split = if m.payload.is_empty() { 0 } else { input.below(3) };
        let fds: Vec<OwnedFd> = m.fds.iter().map(|&k| make(k)).collect();
        let on_header = match split {
            0 => fds.len(),
            1 => 0,
            _ => fds.len() / 2,
        };
        if m.payload.is_empty() || split == 0 && input.bool() {
            send(&f_peer, &wire, &fds);
        } else {
            send(&f_peer, &wire[..12], &fds[..on_header]);
            send(&f_peer, &wire[12..], &fds[on_header..]);
        }
        sent += wire.len();
        if stopped || unmodelled {
            continue;
        }
        // What the relay must do with it. More than 8 descriptors on one piece are truncated by
        // the kernel, more than 8 over the message refused: either way the connection ends.
        let too_many = on_header > MAX_FDS || fds.len() > MAX_FDS;
        match claimed {
            // Refused at the header (whatever the descriptors).
            Some(c) if c > 4096 => {
                stopped = true;
                continue;
            }
            // The payload read swallows the next messages' bytes (or the stream ends): what is
            // forwarded from here on is not modelled, only that it follows what came before.
            Some(_) => {
                if on_header > MAX_FDS {
                    stopped = true;
                } else {
                    unmodelled = true;
                }
                continue;
            }
            None => {}
        }
        if too_many || gate.check(m.req, m.flags, &m.payload, &fds).is_err() {
            stopped = true;
            continue;
        }
        if m.req == SET_FEATURES && !features_seen {
            features_seen = true;
            if !fds.is_empty() {
                want_fds.push((want.len(), fds.len()));
            }
            want.extend_from_slice(&bytes);
            for e in early.drain(..) {
                want.extend_from_slice(&e);
            }
            continue;
        }
        if m.req == SET_VRING_ENABLE && !features_seen {
            let mut e = bytes.clone();
            e[4..8].copy_from_slice(&(m.flags & !8).to_le_bytes());
            early.retain(|x| x[12..16] != e[12..16]);
            early.push(e);
            if m.flags & 8 != 0 {
                let mut r = Vec::new();
                r.extend_from_slice(&m.req.to_le_bytes());
                r.extend_from_slice(&(1u32 | 4).to_le_bytes());
                r.extend_from_slice(&8u32.to_le_bytes());
                r.extend_from_slice(&[0; 8]);
                want_replies.extend(r);
            }
            continue;
        }
        if !fds.is_empty() {
            want_fds.push((want.len(), fds.len()));
        }
        want.extend_from_slice(&bytes);
    }
    f_peer.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let _ = relay(f_relay, b_relay, policy);
    let (got, got_fds) = drain(&b_peer);
    let mut replies = Vec::new();
    let _ = (&f_peer).read_to_end(&mut replies);
    for (_, f) in &got_fds {
        assert!(
            f.len() <= MAX_FDS,
            "{} descriptors forwarded with one message",
            f.len()
        );
    }
    if unmodelled {
        assert!(
            got.starts_with(&want),
            "forwarded bytes before the unmodelled message"
        );
        assert!(replies.starts_with(&want_replies));
        return;
    }
    assert!(
        got == want,
        "forwarded {} bytes, {} expected",
        got.len(),
        want.len()
    );
    // Batches in order (a batch arrives with whichever read takes its message's first byte).
    let got_counts: Vec<usize> = got_fds.iter().map(|(_, f)| f.len()).collect();
    let want_counts: Vec<usize> = want_fds.iter().map(|&(_, n)| n).collect();
    assert_eq!(
        got_counts, want_counts,
        "descriptors forwarded with their own messages"
    );
    assert!(
        replies == want_replies,
        "replies to the VMM: {} bytes, {} expected",
        replies.len(),
        want_replies.len()
    );
}
