//! A vhost-user message relay between QEMU and a daemon, to absorb one ordering quirk.
//!
//! QEMU (checked with 10.0) sends `SET_VRING_ENABLE` for a vhost-user netdev while attaching it to
//! the virtio-net device, before the first `SET_FEATURES`. The `vhost` crate (0.18) and
//! `vhost-user-backend` (0.24) refuse `SET_VRING_ENABLE` until `VHOST_USER_F_PROTOCOL_FEATURES` has
//! been acked through `SET_FEATURES`, and end the connection; without that feature QEMU refuses to
//! start the device at all. The relay answers such early `SET_VRING_ENABLE`s itself (success, if a
//! reply was asked for), remembers the last state asked for each ring, and replays those right after
//! forwarding `SET_FEATURES` (without asking for replies): QEMU does not enable the rings again when it
//! starts the device. Everything else passes through unchanged, file descriptors included.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

const HDR_LEN: usize = 12;
const SET_FEATURES: u32 = 2;
const SET_VRING_ENABLE: u32 = 18;
const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
/// Largest payload the protocol carries (SET_MEM_TABLE with 8 regions is 8 + 8 * 32 bytes; config
/// space messages up to 256 bytes); anything much larger is a broken peer.
const MAX_PAYLOAD: usize = 4096;

/// Receives exactly `buf.len()` bytes; file descriptors that come with them are appended to `fds`.
/// `Ok(false)` at a clean end of stream before the first byte.
fn recv_exact(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let mut iov = libc::iovec {
            iov_base: buf[got..].as_mut_ptr().cast(),
            iov_len: buf.len() - got,
        };
        // Control buffer for up to MAX_FDS descriptors, u64-aligned as cmsghdr needs.
        let mut cbuf = [0u64; 16];
        // SAFETY: msghdr is plain data; all-zero is a valid empty value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        // SAFETY: `msg` points at live buffers (`iov` into `buf`, `cbuf`) of the lengths given.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        collect_fds(&msg, fds);
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n as usize;
    }
    Ok(true)
}

/// Takes ownership of the descriptors in a received message's control data.
fn collect_fds(msg: &libc::msghdr, fds: &mut Vec<OwnedFd>) {
    // SAFETY: `msg` was filled by recvmsg; the CMSG_* macros walk its control buffer within
    // `msg_controllen`.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: non-null headers returned by CMSG_FIRSTHDR/NXTHDR lie inside the control buffer.
        let hdr = unsafe { &*cmsg };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a pure computation.
            let data_len = hdr.cmsg_len as usize - unsafe { libc::CMSG_LEN(0) } as usize;
            // SAFETY: the data of an SCM_RIGHTS message is `data_len` bytes of ints.
            let data = unsafe { libc::CMSG_DATA(cmsg) };
            for i in 0..data_len / std::mem::size_of::<RawFd>() {
                let at = data.wrapping_add(i * std::mem::size_of::<RawFd>());
                // SAFETY: `at` is inside the data just measured; unaligned read for safety.
                let fd = unsafe { at.cast::<RawFd>().read_unaligned() };
                // SAFETY: the kernel installed this descriptor for us; nobody else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
}

/// Sends `buf` with `fds` attached to its first byte.
fn send_with_fds(sock: &UnixStream, buf: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
    if fds.is_empty() {
        return (&*sock).write_all(buf);
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let payload = std::mem::size_of_val(raw.as_slice()) as u32;
    let mut cbuf = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: plain data, zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: pure computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(payload) } as usize;
    // SAFETY: the control buffer (128 bytes) holds CMSG_SPACE of up to 8 ints.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    // SAFETY: pure computations.
    let cmsg_len = unsafe { libc::CMSG_LEN(payload) } as usize;
    let header = libc::cmsghdr {
        cmsg_len,
        cmsg_level: libc::SOL_SOCKET,
        cmsg_type: libc::SCM_RIGHTS,
    };
    // SAFETY: `cmsg` points at the start of `cbuf` (u64-aligned, 128 bytes), room for the header.
    unsafe { cmsg.write(header) };
    // SAFETY: as above; the data area lies inside `cbuf`.
    let data = unsafe { libc::CMSG_DATA(cmsg) };
    // SAFETY: `data` has room for `payload` bytes (CMSG_SPACE of 8 ints fits `cbuf`); `raw` holds them.
    unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), data, payload as usize) };
    // SAFETY: `msg` describes live buffers; the descriptors stay open (we own them) during the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    (&*sock).write_all(&buf[n as usize..])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Relays frontend-to-backend messages until either side closes.
fn frontend_to_backend(
    front: &UnixStream,
    back: &UnixStream,
    front_writer: &Mutex<UnixStream>,
) -> io::Result<()> {
    let mut features_seen = false;
    // Early SET_VRING_ENABLE messages, the last one per ring index, in arrival order.
    let mut early: Vec<[u8; HDR_LEN + 8]> = Vec::new();
    loop {
        let mut hdr = [0u8; HDR_LEN];
        let mut fds = Vec::new();
        if !recv_exact(front, &mut hdr, &mut fds)? {
            return Ok(());
        }
        let (req, flags, size) = (u32_at(&hdr, 0), u32_at(&hdr, 4), u32_at(&hdr, 8) as usize);
        if size > MAX_PAYLOAD {
            return Err(io::Error::other(format!(
                "vhost-user message {req} claims {size} payload bytes"
            )));
        }
        let mut msg = hdr.to_vec();
        msg.resize(HDR_LEN + size, 0);
        if size > 0 && !recv_exact(front, &mut msg[HDR_LEN..], &mut fds)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match req {
            SET_FEATURES if !features_seen => {
                features_seen = true;
                send_with_fds(back, &msg, &fds)?;
                for m in early.drain(..) {
                    send_with_fds(back, &m, &[])?;
                }
                continue;
            }
            SET_VRING_ENABLE if !features_seen && size == 8 => {
                let mut m = [0u8; HDR_LEN + 8];
                m.copy_from_slice(&msg);
                m[4..8].copy_from_slice(&(flags & !FLAG_NEED_REPLY).to_le_bytes());
                early.retain(|e| e[HDR_LEN..HDR_LEN + 4] != m[HDR_LEN..HDR_LEN + 4]);
                early.push(m);
                tracing::debug!(
                    ring = u32_at(&m, HDR_LEN),
                    enable = u32_at(&m, HDR_LEN + 4),
                    "vhost-user relay: SET_VRING_ENABLE before SET_FEATURES answered and held"
                );
                if flags & FLAG_NEED_REPLY != 0 {
                    let mut reply = [0u8; HDR_LEN + 8];
                    reply[0..4].copy_from_slice(&req.to_le_bytes());
                    reply[4..8].copy_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
                    reply[8..12].copy_from_slice(&8u32.to_le_bytes());
                    front_writer
                        .lock()
                        .expect("frontend writer lock")
                        .write_all(&reply)?;
                }
                continue;
            }
            _ => {}
        }
        send_with_fds(back, &msg, &fds)?;
    }
}

/// Relays one connection: `front` is QEMU, `back` the daemon. Returns when either side closes;
/// both are shut down then.
pub fn relay(front: UnixStream, back: UnixStream) -> io::Result<()> {
    let front_writer = Arc::new(Mutex::new(front.try_clone()?));
    let back_reader = back.try_clone()?;
    let fw = front_writer.clone();
    let replies = std::thread::Builder::new()
        .name("vhost-user relay".into())
        .spawn(move || -> io::Result<()> {
            // Backend-to-frontend traffic is replies without descriptors (these backends open no
            // backend-initiated channel); copy it in whole reads under the writer lock.
            let mut r = back_reader;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                if fw
                    .lock()
                    .expect("frontend writer lock")
                    .write_all(&buf[..n])
                    .is_err()
                {
                    break;
                }
            }
            let _ = fw
                .lock()
                .expect("frontend writer lock")
                .shutdown(std::net::Shutdown::Both);
            Ok(())
        })?;
    let r = frontend_to_backend(&front, &back, &front_writer);
    let _ = back.shutdown(std::net::Shutdown::Both);
    let _ = front.shutdown(std::net::Shutdown::Both);
    let _ = replies.join();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    fn msg(req: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&req.to_le_bytes());
        m.extend_from_slice(&(FLAG_VERSION | flags).to_le_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn vring_state(index: u32, num: u32) -> Vec<u8> {
        [index.to_le_bytes(), num.to_le_bytes()].concat()
    }

    /// Reads one message (header + payload) and its descriptors.
    fn recv_msg(s: &UnixStream) -> (Vec<u8>, Vec<OwnedFd>) {
        let mut fds = Vec::new();
        let mut hdr = [0u8; HDR_LEN];
        assert!(recv_exact(s, &mut hdr, &mut fds).unwrap(), "message expected");
        let mut m = hdr.to_vec();
        m.resize(HDR_LEN + u32_at(&hdr, 8) as usize, 0);
        if m.len() > HDR_LEN {
            recv_exact(s, &mut m[HDR_LEN..], &mut fds).unwrap();
        }
        (m, fds)
    }

    #[test]
    fn early_vring_enable_is_answered_and_replayed_after_set_features() {
        let (qemu, front) = UnixStream::pair().unwrap();
        let (back, daemon) = UnixStream::pair().unwrap();
        let relay = std::thread::spawn(move || relay(front, back));
        daemon
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        qemu.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();

        // GET_FEATURES passes through and its reply comes back.
        (&qemu).write_all(&msg(1, 0, &[])).unwrap();
        let (m, _) = recv_msg(&daemon);
        assert_eq!(m, msg(1, 0, &[]));
        let reply = msg(1, FLAG_REPLY, &(1u64 << 30).to_le_bytes());
        (&daemon).write_all(&reply).unwrap();
        let mut got = vec![0u8; reply.len()];
        (&qemu).read_exact(&mut got).unwrap();
        assert_eq!(got, reply);

        // Early SET_VRING_ENABLE (ring 1 on, ring 0 on then off): acked by the relay, not forwarded.
        for (ring, on) in [(1, 1), (0, 1), (0, 0)] {
            (&qemu)
                .write_all(&msg(SET_VRING_ENABLE, FLAG_NEED_REPLY, &vring_state(ring, on)))
                .unwrap();
            let mut ack = vec![0u8; HDR_LEN + 8];
            (&qemu).read_exact(&mut ack).unwrap();
            assert_eq!(ack, msg(SET_VRING_ENABLE, FLAG_REPLY, &0u64.to_le_bytes()));
        }

        // SET_FEATURES goes through, then the last state of each ring, without NEED_REPLY.
        let features = msg(SET_FEATURES, 0, &(1u64 << 30 | 1 << 32).to_le_bytes());
        (&qemu).write_all(&features).unwrap();
        assert_eq!(recv_msg(&daemon).0, features);
        assert_eq!(recv_msg(&daemon).0, msg(SET_VRING_ENABLE, 0, &vring_state(1, 1)));
        assert_eq!(recv_msg(&daemon).0, msg(SET_VRING_ENABLE, 0, &vring_state(0, 0)));

        // A message with a descriptor (SET_VRING_KICK-like) carries it across.
        let file = tempfile::tempfile().unwrap();
        let kick = msg(12, 0, &0u64.to_le_bytes());
        send_with_fds(&qemu, &kick, &[file.as_fd().try_clone_to_owned().unwrap()]).unwrap();
        let (m, fds) = recv_msg(&daemon);
        assert_eq!(m, kick);
        assert_eq!(fds.len(), 1);
        let passed = File::from(fds.into_iter().next().unwrap());
        assert_eq!(passed.metadata().unwrap().ino(), file.metadata().unwrap().ino());

        // Later SET_VRING_ENABLE passes through untouched.
        let late = msg(SET_VRING_ENABLE, FLAG_NEED_REPLY, &vring_state(0, 1));
        (&qemu).write_all(&late).unwrap();
        assert_eq!(recv_msg(&daemon).0, late);

        // A payload larger than the protocol allows ends the relay with an error.
        (&qemu)
            .write_all(&msg(5, 0, &vec![0u8; MAX_PAYLOAD + 1]))
            .unwrap();
        assert!(relay.join().unwrap().is_err());
    }
}
