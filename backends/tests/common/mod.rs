//! Shared pieces of the vhost-user tests: a memfd as guest memory, a driver-side split virtqueue, a
//! raw vhost-user frontend that sends whatever it is told (a hostile VMM), and helpers to watch the
//! daemon (its backends, its peak memory, its threads ending in time).
#![allow(dead_code)]

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{Ordering, fence};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ::vhost::vhost_user::Frontend;
use ::vhost::{VhostUserMemoryRegionInfo, VringConfigData};
use ring_protocol::abi::virtio::{
    Le16, Le32, Le64, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VirtqAvail, VirtqDesc,
    VirtqUsed, VirtqUsedElem,
};
use vmm_sys_util::eventfd::EventFd;
use zerocopy::{FromBytes, IntoBytes};

pub const MEM_SIZE: usize = 1 << 20;
pub const QSIZE: u16 = 16;
const DESC_LEN: usize = size_of::<VirtqDesc>();
const AVAIL_IDX: usize = std::mem::offset_of!(VirtqAvail, idx);
const USED_IDX: usize = std::mem::offset_of!(VirtqUsed, idx);

/// A descriptor, as the driver writes it.
fn desc(addr: usize, len: u32, flags: u16, next: u16) -> VirtqDesc {
    VirtqDesc {
        addr: Le64::new(addr as u64),
        len: Le32::new(len),
        flags: Le16::new(flags),
        next: Le16::new(next),
    }
}

/// The shared "guest memory": a memfd mapped in this process.
pub struct GuestMem {
    pub fd: OwnedFd,
    base: *mut u8,
}

impl GuestMem {
    /// Sealed against shrinking and growing, as QEMU's memory-backend-memfd does by default.
    pub fn new() -> Self {
        Self::with_seals(true)
    }

    /// Without seals: the VMM could shrink the file under the daemon.
    pub fn unsealed() -> Self {
        Self::with_seals(false)
    }

    fn with_seals(sealed: bool) -> Self {
        // SAFETY: memfd_create with a valid NUL-terminated name.
        let raw = unsafe { libc::memfd_create(c"pvkit-test-guest".as_ptr(), libc::MFD_ALLOW_SEALING) };
        assert!(raw >= 0, "memfd_create failed");
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: plain system call on our descriptor.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), MEM_SIZE as i64) }, 0);
        if sealed {
            // SAFETY: plain system call on our descriptor.
            let r = unsafe {
                libc::fcntl(
                    fd.as_raw_fd(),
                    libc::F_ADD_SEALS,
                    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
                )
            };
            assert_eq!(r, 0, "sealing the memfd");
        }
        // SAFETY: a new shared mapping of the whole memfd; checked for failure below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        GuestMem {
            fd,
            base: base.cast(),
        }
    }

    pub fn va(&self, gpa: usize) -> u64 {
        self.base as u64 + gpa as u64
    }

    pub fn write(&self, gpa: usize, data: &[u8]) {
        assert!(gpa + data.len() <= MEM_SIZE);
        // SAFETY: in bounds of the mapping (asserted); the daemon only touches other bytes now.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.wrapping_add(gpa), data.len()) };
    }

    pub fn read(&self, gpa: usize, len: usize) -> Vec<u8> {
        assert!(gpa + len <= MEM_SIZE);
        let mut v = vec![0; len];
        // SAFETY: in bounds of the mapping (asserted).
        unsafe { std::ptr::copy_nonoverlapping(self.base.wrapping_add(gpa), v.as_mut_ptr(), len) };
        v
    }

    /// Guest address of a host pointer into this memory.
    pub fn gpa_of(&self, va: u64) -> usize {
        (va - self.base as u64) as usize
    }

    pub fn u16_at(&self, gpa: usize) -> u16 {
        // SAFETY: in bounds, 2-byte aligned ring fields; volatile because the daemon writes them.
        unsafe { self.base.wrapping_add(gpa).cast::<u16>().read_volatile() }
    }
}

impl Drop for GuestMem {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        unsafe { libc::munmap(self.base.cast(), MEM_SIZE) };
    }
}

/// A driver-side split virtqueue in `GuestMem`.
pub struct Queue<'a> {
    mem: &'a GuestMem,
    /// Guest addresses of the descriptor table, available ring and used ring.
    pub desc: usize,
    pub avail: usize,
    pub used: usize,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl<'a> Queue<'a> {
    /// A queue whose rings start at `base`: descriptors, then avail at +0x100, used at +0x200.
    pub fn new(mem: &'a GuestMem, base: usize) -> Self {
        Queue {
            mem,
            desc: base,
            avail: base + 0x100,
            used: base + 0x200,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// Adds a chain of (gpa, len, device-writable) buffers; returns its head.
    pub fn add(&mut self, bufs: &[(usize, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let idx = (self.next_desc + i as u16) % QSIZE;
            let last = i == bufs.len() - 1;
            let flags = if last { 0 } else { VRING_DESC_F_NEXT } | if w { VRING_DESC_F_WRITE } else { 0 };
            let d = desc(addr, len, flags, (idx + 1) % QSIZE);
            self.mem.write(self.desc + DESC_LEN * idx as usize, d.as_bytes());
        }
        self.next_desc = (self.next_desc + bufs.len() as u16) % QSIZE;
        let slot = self.avail + VirtqAvail::ring_offset(self.avail_idx % QSIZE);
        self.mem.write(slot, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        head
    }

    /// Adds a chain whose head descriptor points at an indirect table written at `table`, of
    /// `bufs` (gpa, len, device-writable); returns its head.
    pub fn add_indirect(&mut self, table: usize, bufs: &[(usize, u32, bool)]) -> u16 {
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let last = i == bufs.len() - 1;
            let flags = if last { 0 } else { VRING_DESC_F_NEXT } | if w { VRING_DESC_F_WRITE } else { 0 };
            let d = desc(addr, len, flags, (i + 1) as u16);
            self.mem.write(table + DESC_LEN * i, d.as_bytes());
        }
        let head = self.next_desc;
        let d = desc(table, (DESC_LEN * bufs.len()) as u32, VRING_DESC_F_INDIRECT, 0);
        self.mem.write(self.desc + DESC_LEN * head as usize, d.as_bytes());
        self.next_desc = (self.next_desc + 1) % QSIZE;
        let slot = self.avail + VirtqAvail::ring_offset(self.avail_idx % QSIZE);
        self.mem.write(slot, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        head
    }

    /// A hostile driver: publishes `idx` as the available index (whatever was added) and kicks.
    pub fn publish_raw(&self, idx: u16, kick: &EventFd) {
        fence(Ordering::Release);
        self.mem.write(self.avail + AVAIL_IDX, &idx.to_le_bytes());
        kick.write(1).unwrap();
    }

    /// The driver's available index (what the next `kick` publishes).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// The device's used index.
    pub fn used_idx(&self) -> u16 {
        self.mem.u16_at(self.used + USED_IDX)
    }

    /// Publishes the added chains and kicks.
    pub fn kick(&self, kick: &EventFd) {
        // Release: the descriptors and ring entries above are visible to the device before the
        // index that hands them over.
        fence(Ordering::Release);
        self.mem
            .write(self.avail + AVAIL_IDX, &self.avail_idx.to_le_bytes());
        kick.write(1).unwrap();
    }

    /// Waits for `n` more used entries; returns (id, len) of each.
    pub fn wait_used(&mut self, n: u16) -> Vec<(u32, u32)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.mem.u16_at(self.used + USED_IDX).wrapping_sub(self.used_seen) < n {
            assert!(
                Instant::now() < deadline,
                "device did not complete {n} requests in 10 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // Acquire: the used entries and the data they cover were written before the index.
        fence(Ordering::Acquire);
        (0..n)
            .map(|_| {
                let e = self.mem.read(
                    self.used + VirtqUsed::ring_offset(self.used_seen % QSIZE),
                    size_of::<VirtqUsedElem>(),
                );
                let e = VirtqUsedElem::read_from_bytes(&e).unwrap();
                self.used_seen = self.used_seen.wrapping_add(1);
                (e.id.get(), e.len.get())
            })
            .collect()
    }
}

/// The vring addresses of `q` for SET_VRING_ADDR.
pub fn vring_config(mem: &GuestMem, q: &Queue<'_>) -> VringConfigData {
    VringConfigData {
        queue_max_size: QSIZE,
        queue_size: QSIZE,
        flags: 0,
        desc_table_addr: mem.va(q.desc),
        used_ring_addr: mem.va(q.used),
        avail_ring_addr: mem.va(q.avail),
        log_addr: None,
    }
}

/// The memfd as the one memory region at guest address 0.
pub fn region(mem: &GuestMem) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem.va(0),
        mmap_offset: 0,
        mmap_handle: mem.fd.as_raw_fd(),
    }
}

/// Waits up to `timeout` for `f` to hold.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    f()
}

/// Joins `t` if it ends within `timeout`; panics otherwise (a hung daemon fails the test instead
/// of hanging it).
pub fn join_within<T>(t: std::thread::JoinHandle<T>, timeout: Duration, what: &str) -> T {
    assert!(
        wait_for(timeout, || t.is_finished()),
        "{what} did not end within {timeout:?}"
    );
    t.join().expect("thread panicked")
}

/// The process's peak resident memory (VmHWM) in KiB.
pub fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A connection factory that remembers (weakly) every backend it built.
pub struct Spy<C, B> {
    pub inner: C,
    pub seen: Arc<Mutex<Vec<Weak<B>>>>,
}

impl<C, B> Spy<C, B> {
    pub fn new(inner: C) -> (Self, Arc<Mutex<Vec<Weak<B>>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        (
            Spy {
                inner,
                seen: seen.clone(),
            },
            seen,
        )
    }
}

impl<B, C> pvkit_backends::vhost::Connection<B> for Spy<C, B>
where
    B: pvkit_backends::vhost::DaemonBackend,
    C: pvkit_backends::vhost::Connection<B>,
{
    fn backend(
        &mut self,
        mem: &pvkit_backends::vhost::Memory,
        log: &Arc<pvkit_backends::ratelimit::RateLimit>,
    ) -> pvkit_backends::Result<Arc<B>> {
        let b = self.inner.backend(mem, log)?;
        self.seen.lock().unwrap().push(Arc::downgrade(&b));
        Ok(b)
    }
}

/// The `n`th backend built (waiting for it), if it is still alive.
pub fn nth_backend<B>(seen: &Mutex<Vec<Weak<B>>>, n: usize) -> Arc<B> {
    assert!(
        wait_for(Duration::from_secs(10), || seen.lock().unwrap().len() > n),
        "backend {n} built"
    );
    seen.lock().unwrap()[n].upgrade().expect("backend alive")
}

/// A vhost-user frontend that sends raw messages: a hostile VMM.
pub struct RawFrontend {
    pub sock: UnixStream,
}

pub const F_VERSION: u32 = 1;
pub const F_NEED_REPLY: u32 = 8;

impl RawFrontend {
    pub fn connect(sock: &Path) -> Self {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match UnixStream::connect(sock) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    return RawFrontend { sock: s };
                }
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("connecting to {}: {e}", sock.display()),
            }
        }
    }

    /// Sends one message with `fds` attached (any number: the kernel allows 253 per sendmsg).
    pub fn send(&self, req: u32, flags: u32, payload: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
        let mut m = Vec::new();
        m.extend_from_slice(&req.to_le_bytes());
        m.extend_from_slice(&flags.to_le_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        m.extend_from_slice(payload);
        send_fds(&self.sock, &m, fds)
    }

    /// Reads one reply (header + payload); `None` once the daemon closed the connection.
    pub fn reply(&self) -> Option<Vec<u8>> {
        let mut hdr = [0u8; 12];
        (&self.sock).read_exact(&mut hdr).ok()?;
        let len = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
        let mut p = vec![0u8; len];
        (&self.sock).read_exact(&mut p).ok()?;
        Some([&hdr[..], &p].concat())
    }

    /// Whether the daemon closed the connection (reads EOF within the read timeout).
    pub fn closed(&self) -> bool {
        let mut b = [0u8; 64];
        loop {
            match (&self.sock).read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// sendmsg with SCM_RIGHTS for any number of descriptors (a hostile VMM ignores the limit).
pub fn send_fds(sock: &UnixStream, buf: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    pvkit_backends::vhost::relay::send_any_fds(sock, buf, fds)
}

/// A SET_MEM_TABLE payload for `regions` (gpa, size, user address, mmap offset).
pub fn mem_table_payload(regions: &[(u64, u64, u64, u64)]) -> Vec<u8> {
    pvkit_backends::vhost::relay::mem_table_payload(regions)
}

/// Connects to `sock`, retrying while the server starts.
pub fn connect_retry(sock: &Path, queues: u64) -> Frontend {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Frontend::connect(sock, queues) {
            Ok(f) => return f,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("connecting to {}: {e}", sock.display()),
        }
    }
}
