//! Whole vhost-user messages on a Unix socket: bytes with the descriptors that came with them
//! (at most [`MAX_FDS`]), and the payload helpers the gate uses.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use vhost::vhost_user::message::FrontendReq;
use vm_memory::ByteValued;

use super::{MAX_FDS, Refused, RelayError};

/// Control buffer for [`MAX_FDS`] descriptors, on receive and on send: the kernel truncates
/// anything beyond on receive (closing those descriptors) and reports it (`MSG_CTRUNC`).
// SAFETY: CMSG_SPACE is a pure computation on its argument.
const CMSG_BYTES: usize = unsafe { libc::CMSG_SPACE((MAX_FDS * size_of::<RawFd>()) as u32) } as usize;
/// The control buffer in u64 words (cmsghdr needs 8-byte alignment).
const CMSG_WORDS: usize = CMSG_BYTES.div_ceil(8);
const _: () = assert!(CMSG_WORDS * 8 >= CMSG_BYTES && CMSG_BYTES < 128);

/// Receives exactly `buf.len()` bytes; file descriptors that come with them are appended to `fds`,
/// at most [`MAX_FDS`] in all. `Ok(false)` at a clean end of stream before the first byte.
pub(super) fn recv_exact(
    sock: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<bool, RelayError> {
    let mut got = 0;
    while got < buf.len() {
        let mut iov = libc::iovec {
            iov_base: buf[got..].as_mut_ptr().cast(),
            iov_len: buf.len() - got,
        };
        let mut cbuf = [0u64; CMSG_WORDS];
        // SAFETY: msghdr is plain data; all-zero is a valid empty value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = CMSG_BYTES;
        // SAFETY: `msg` points at live buffers (`iov` into `buf`, `cbuf`) of the lengths given.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        collect_fds(&msg, fds);
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            // The kernel closed what did not fit; `fds` (closed by the caller's drop) is the rest.
            return Err(Refused::FdsTruncated.into());
        }
        if fds.len() > MAX_FDS {
            return Err(Refused::TooManyFds { fds: fds.len() }.into());
        }
        if n == 0 {
            if got == 0 && fds.is_empty() {
                return Ok(false);
            }
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        got += n as usize;
    }
    Ok(true)
}

/// Takes ownership of the descriptors in a received message's control data.
pub(super) fn collect_fds(msg: &libc::msghdr, fds: &mut Vec<OwnedFd>) {
    // SAFETY: `msg` was filled by recvmsg; the CMSG_* macros walk its control buffer within
    // `msg_controllen`.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: non-null headers returned by CMSG_FIRSTHDR/NXTHDR lie inside the control buffer.
        let hdr = unsafe { &*cmsg };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a pure computation.
            let data_len = (hdr.cmsg_len as usize).saturating_sub(unsafe { libc::CMSG_LEN(0) } as usize);
            // SAFETY: the data of an SCM_RIGHTS message is `data_len` bytes of ints.
            let data = unsafe { libc::CMSG_DATA(cmsg) };
            for i in 0..data_len / size_of::<RawFd>() {
                let at = data.wrapping_add(i * size_of::<RawFd>());
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

/// Sends `buf` with `fds` (at most [`MAX_FDS`]) attached to its first byte.
pub(super) fn send_with_fds(sock: &UnixStream, buf: &[u8], fds: &[OwnedFd]) -> Result<(), RelayError> {
    if fds.len() > MAX_FDS {
        return Err(Refused::TooManyFds { fds: fds.len() }.into());
    }
    let mut raw = [0 as RawFd; MAX_FDS];
    for (r, f) in raw.iter_mut().zip(fds) {
        *r = f.as_raw_fd();
    }
    let mut cbuf = [0u64; CMSG_WORDS];
    Ok(send_rights(sock, buf, &raw[..fds.len()], &mut cbuf)?)
}

/// Sends `buf` with any number of descriptors attached (a test playing a VMM that ignores the
/// protocol's limit of [`MAX_FDS`]); the control buffer is sized for them.
///
/// # Errors
/// What `sendmsg` or `write` said.
#[cfg(any(test, feature = "test-utils"))]
pub fn send_any_fds(sock: &UnixStream, buf: &[u8], fds: &[RawFd]) -> io::Result<()> {
    // SAFETY: pure computation.
    let space = unsafe { libc::CMSG_SPACE(size_of_val(fds) as u32) } as usize;
    send_rights(sock, buf, fds, &mut vec![0u64; space.div_ceil(8)])
}

/// `sendmsg` of `buf` with an `SCM_RIGHTS` message carrying `fds` in `cbuf`, then the rest of
/// `buf`.
fn send_rights(sock: &UnixStream, buf: &[u8], fds: &[RawFd], cbuf: &mut [u64]) -> io::Result<()> {
    if fds.is_empty() {
        return (&*sock).write_all(buf);
    }
    let payload = size_of_val(fds);
    // SAFETY: pure computation.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    assert!(
        space <= size_of_val(cbuf),
        "control buffer too small for {} descriptors",
        fds.len()
    );
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: plain data, zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: the control buffer holds CMSG_SPACE(payload) bytes (checked), so a header fits.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    // SAFETY: pure computation.
    let cmsg_len = unsafe { libc::CMSG_LEN(payload as u32) } as usize;
    let header = libc::cmsghdr {
        cmsg_len,
        cmsg_level: libc::SOL_SOCKET,
        cmsg_type: libc::SCM_RIGHTS,
    };
    // SAFETY: `cmsg` points at the start of `cbuf` (u64-aligned), room for the header.
    unsafe { cmsg.write(header) };
    // SAFETY: as above; the data area lies inside `cbuf`.
    let data = unsafe { libc::CMSG_DATA(cmsg) };
    // SAFETY: `data` has room for `payload` bytes (CMSG_SPACE(payload) fits `cbuf`); `fds` holds
    // them.
    unsafe { std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), data, payload) };
    // SAFETY: `msg` describes live buffers; the caller keeps the descriptors open during the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    (&*sock).write_all(&buf[n as usize..])
}

pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// A payload as a message struct (copied: the payload has no alignment).
/// A SET_MEM_TABLE payload for `regions`, each (guest address, size, VMM address, mmap offset):
/// the message a test plays the VMM with, honest or not (any count, any values).
#[cfg(any(test, feature = "test-utils"))]
pub fn mem_table_payload(regions: &[(u64, u64, u64, u64)]) -> Vec<u8> {
    use vhost::vhost_user::message::{VhostUserMemory, VhostUserMemoryRegion};
    let mut p = VhostUserMemory::new(regions.len() as u32).as_slice().to_vec();
    for &(gpa, size, uva, offset) in regions {
        p.extend_from_slice(VhostUserMemoryRegion::new(gpa, size, uva, offset).as_slice());
    }
    p
}

pub(super) fn payload_as<T: ByteValued + Default>(req: FrontendReq, payload: &[u8]) -> Result<T, Refused> {
    if payload.len() != size_of::<T>() {
        return Err(Refused::PayloadSize {
            req,
            size: payload.len(),
            expected: size_of::<T>(),
        });
    }
    let mut v = T::default();
    v.as_mut_slice().copy_from_slice(payload);
    Ok(v)
}

pub(super) fn expect_fds(req: FrontendReq, fds: &[OwnedFd], expected: usize) -> Result<(), Refused> {
    if fds.len() != expected {
        return Err(Refused::FdCount {
            req,
            fds: fds.len(),
            expected,
        });
    }
    Ok(())
}
