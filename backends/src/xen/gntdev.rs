//! Grants of another domain's pages, through dom0's `/dev/xen/gntdev`.
//!
//! Two ways to reach a frontend's memory:
//! - [`GntDev::map`] maps granted pages into this process (one ioctl, then `mmap`; undone on drop:
//!   `munmap`, then the unmap ioctl). Worth it for memory touched again and again: shared rings.
//! - [`GntDev::copy_from_guest`] / [`GntDev::copy_to_guest`] have Xen copy bytes between granted
//!   pages and a local buffer (`GNTTABOP_copy`, one ioctl for a whole scatter list). For I/O buffers
//!   that are used once per request this is cheaper than map + unmap (no page-table updates, no TLB
//!   shootdown) and the data is copied exactly once, which is also what validation wants: the backend
//!   only ever looks at its own copy.
//!
//! A grant the frontend never issued (or revoked) fails with a per-piece Xen status, reported as
//! [`GrantError::Status`]; nothing is mapped or copied for it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::Arc;

use ring_protocol::abi::grant_table::{GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF, GNTST_OKAY, GrantRef};
use ring_protocol::abi::xen::DomId;

use super::sys::{
    GntdevCopyForeign, GntdevCopyPtr, GntdevGrantCopy, GntdevGrantCopySegment, GntdevGrantRef,
    GntdevMapGrantRefHeader, GntdevUnmapGrantRef, IOCTL_GNTDEV_GRANT_COPY, IOCTL_GNTDEV_MAP_GRANT_REF,
    IOCTL_GNTDEV_UNMAP_GRANT_REF,
};

/// The grant device node.
pub const GNTDEV_PATH: &str = "/dev/xen/gntdev";
/// Size of a grantable page.
pub use ring_protocol::abi::PAGE_SIZE;

/// What went wrong with a grant operation.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The device or a system call failed.
    #[error("{what}: {error}")]
    Io {
        /// What was being done.
        what: String,
        /// What the OS said.
        error: io::Error,
    },
    /// Xen refused one grant (never issued, revoked, wrong domain, read-only...).
    #[error("grant {gref} of domain {domid} refused by Xen (GNTST {status})")]
    Status {
        /// The domain.
        domid: DomId,
        /// The grant.
        gref: GrantRef,
        /// Xen's `GNTST_*` code.
        status: i16,
    },
    /// A piece that cannot be a grant access (crosses its page's end) or does not match the buffer.
    #[error("bad grant copy request: {0}")]
    Invalid(String),
}

/// Part of a granted page: `len` bytes at `offset` of grant `gref`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantPiece {
    /// The grant.
    pub gref: GrantRef,
    /// Byte offset in the page.
    pub offset: u16,
    /// Bytes.
    pub len: u16,
}

/// Copying to and from a frontend's granted pages: what the protocol adapters need of [`GntDev`]
/// (tests substitute a table of local pages).
pub trait GrantCopy: Send + Sync {
    /// Copies the granted `pieces` of `domid`, in order, into `dst` (exactly their total length).
    fn copy_from_guest(&self, domid: DomId, pieces: &[GrantPiece], dst: &mut [u8]) -> Result<(), GrantError>;
    /// Copies `src` (exactly the pieces' total length) into the granted `pieces` of `domid`.
    fn copy_to_guest(&self, domid: DomId, pieces: &[GrantPiece], src: &[u8]) -> Result<(), GrantError>;
}

impl GrantCopy for GntDev {
    fn copy_from_guest(&self, domid: DomId, pieces: &[GrantPiece], dst: &mut [u8]) -> Result<(), GrantError> {
        GntDev::copy_from_guest(self, domid, pieces, dst)
    }

    fn copy_to_guest(&self, domid: DomId, pieces: &[GrantPiece], src: &[u8]) -> Result<(), GrantError> {
        GntDev::copy_to_guest(self, domid, pieces, src)
    }
}

/// An open `/dev/xen/gntdev`.
#[derive(Debug)]
pub struct GntDev {
    file: File,
}

impl GntDev {
    /// Opens the grant device.
    pub fn open() -> Result<Arc<Self>, GrantError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(GNTDEV_PATH)
            .map_err(|error| GrantError::Io {
                what: format!("opening {GNTDEV_PATH}"),
                error,
            })?;
        Ok(Arc::new(GntDev { file }))
    }

    /// Maps the pages `refs` of `domid`, in order, as one contiguous range.
    pub fn map(
        self: &Arc<Self>,
        domid: DomId,
        refs: &[GrantRef],
        writable: bool,
    ) -> Result<GrantMapping, GrantError> {
        if refs.is_empty() {
            return Err(GrantError::Invalid("mapping zero grants".into()));
        }
        // The argument is the header (count, pad, index) followed by one (domid, gref) pair per
        // grant, built as u64 words so that the header's u64 is aligned; on a little-endian machine
        // the low half of a word is the field at the lower address.
        const _: () = assert!(cfg!(target_endian = "little"));
        let mut arg: Vec<u64> = Vec::with_capacity(2 + refs.len());
        arg.push(refs.len() as u64);
        arg.push(0);
        arg.extend(
            refs.iter()
                .map(|&gref| u64::from(domid) | (u64::from(gref) << 32)),
        );
        const _: () = assert!(size_of::<GntdevMapGrantRefHeader>() == 16 && size_of::<GntdevGrantRef>() == 8);
        let base = arg.as_mut_ptr();
        // SAFETY: the request's argument is the buffer built above, which lives across the call.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), IOCTL_GNTDEV_MAP_GRANT_REF, base) };
        if rc < 0 {
            return Err(GrantError::Io {
                what: format!("mapping grants {refs:?} of domain {domid}"),
                error: io::Error::last_os_error(),
            });
        }
        // The kernel filled in the header's `index`.
        let index = arg[1];
        let len = refs.len() * PAGE_SIZE;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a fresh shared mapping of the grant device at the offset it handed out; the kernel
        // maps the grants here (this is where Xen may refuse one).
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                index as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            let error = io::Error::last_os_error();
            self.unmap_index(index, refs.len());
            return Err(GrantError::Io {
                what: format!("mmap of grants {refs:?} of domain {domid}"),
                error,
            });
        }
        Ok(GrantMapping {
            dev: self.clone(),
            ptr: NonNull::new(addr.cast()).expect("mmap returned null"),
            len,
            index,
        })
    }

    fn unmap_index(&self, index: u64, count: usize) {
        let mut arg = GntdevUnmapGrantRef {
            index,
            count: count as u32,
            pad: 0,
        };
        // SAFETY: the argument is a valid struct that lives across the call.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), IOCTL_GNTDEV_UNMAP_GRANT_REF, &mut arg) };
        if rc < 0 {
            tracing::warn!(index, count, error = %io::Error::last_os_error(), "unmapping grants failed");
        }
    }

    /// Copies the granted `pieces` of `domid`, in order, into `dst` (which must be exactly as long as
    /// the pieces together).
    pub fn copy_from_guest(
        &self,
        domid: DomId,
        pieces: &[GrantPiece],
        dst: &mut [u8],
    ) -> Result<(), GrantError> {
        check_pieces(pieces, dst.len())?;
        // SAFETY: `dst` is exclusively borrowed for the call and as long as the pieces (checked).
        unsafe { self.copy(domid, pieces, dst.as_mut_ptr(), false) }
    }

    /// Copies `src` into the granted `pieces` of `domid`, in order (`src` must be exactly as long as
    /// the pieces together).
    pub fn copy_to_guest(&self, domid: DomId, pieces: &[GrantPiece], src: &[u8]) -> Result<(), GrantError> {
        check_pieces(pieces, src.len())?;
        // SAFETY: `src` is borrowed for the call and as long as the pieces (checked); copying to the
        // guest only reads it.
        unsafe { self.copy(domid, pieces, src.as_ptr().cast_mut(), true) }
    }

    /// One grant copy of `pieces` to (`to_guest`) or from the local bytes at `local`, laid out one
    /// after the other.
    ///
    /// # Safety
    ///
    /// `local` must be valid for the pieces' total length: readable, and writable unless `to_guest`.
    unsafe fn copy(
        &self,
        domid: DomId,
        pieces: &[GrantPiece],
        local: *mut u8,
        to_guest: bool,
    ) -> Result<(), GrantError> {
        let mut at = 0usize;
        let mut segs: Vec<GntdevGrantCopySegment> = pieces
            .iter()
            .map(|p| {
                let here = GntdevCopyPtr {
                    virt: local.wrapping_add(at).cast(),
                };
                at += usize::from(p.len);
                let (source, dest, flags) = if to_guest {
                    (here, foreign(domid, p), GNTCOPY_DEST_GREF)
                } else {
                    (foreign(domid, p), here, GNTCOPY_SOURCE_GREF)
                };
                GntdevGrantCopySegment {
                    source,
                    dest,
                    len: p.len,
                    flags,
                    status: 0,
                }
            })
            .collect();
        self.run_copy(domid, pieces, &mut segs)
    }

    fn run_copy(
        &self,
        domid: DomId,
        pieces: &[GrantPiece],
        segs: &mut [GntdevGrantCopySegment],
    ) -> Result<(), GrantError> {
        if segs.is_empty() {
            return Ok(());
        }
        let mut arg = GntdevGrantCopy {
            count: segs.len() as libc::c_uint,
            segments: segs.as_mut_ptr(),
        };
        // SAFETY: every segment's local side points into a buffer the caller borrowed for this call
        // (mutably for copies into it), with the lengths checked by `check_pieces`; the kernel writes
        // only the buffers and the segments' status fields.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), IOCTL_GNTDEV_GRANT_COPY, &mut arg) };
        if rc < 0 {
            return Err(GrantError::Io {
                what: format!("grant copy of {} pieces of domain {domid}", segs.len()),
                error: io::Error::last_os_error(),
            });
        }
        match segs.iter().zip(pieces).find(|(s, _)| s.status != GNTST_OKAY) {
            Some((s, p)) => Err(GrantError::Status {
                domid,
                gref: p.gref,
                status: s.status,
            }),
            None => Ok(()),
        }
    }
}

fn foreign(domid: DomId, p: &GrantPiece) -> GntdevCopyPtr {
    GntdevCopyPtr {
        foreign: GntdevCopyForeign {
            gref: p.gref,
            offset: p.offset,
            domid,
        },
    }
}

/// Every piece stays inside its page and the pieces add up to the local buffer.
fn check_pieces(pieces: &[GrantPiece], buf_len: usize) -> Result<(), GrantError> {
    let mut total = 0usize;
    for p in pieces {
        if usize::from(p.offset) + usize::from(p.len) > PAGE_SIZE {
            return Err(GrantError::Invalid(format!(
                "{} bytes at offset {} of grant {} cross the page's end",
                p.len, p.offset, p.gref
            )));
        }
        total += usize::from(p.len);
    }
    if total != buf_len {
        return Err(GrantError::Invalid(format!(
            "pieces total {total} bytes, the local buffer is {buf_len}"
        )));
    }
    Ok(())
}

/// Granted pages mapped into this process; unmapped on drop.
#[derive(Debug)]
pub struct GrantMapping {
    dev: Arc<GntDev>,
    ptr: NonNull<u8>,
    len: usize,
    index: u64,
}

// SAFETY: the mapping is an address range owned by this value; the frontend may write it at any time,
// so users access it only through atomics or volatile copies (ring-protocol does), from any thread.
unsafe impl Send for GrantMapping {}

impl GrantMapping {
    /// The first mapped byte.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Mapped bytes (pages × 4096).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is mapped (never: a mapping has at least one page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for GrantMapping {
    fn drop(&mut self) {
        // SAFETY: the range is the mmap made in `GntDev::map`, unmapped exactly once here; nothing
        // borrows it past this value's life (rings over it are dropped first by their owners).
        if unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) } != 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "munmap of a grant mapping failed");
        }
        self.dev.unmap_index(self.index, self.len / PAGE_SIZE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_must_stay_in_their_page_and_fill_the_buffer() {
        let p = |offset, len| GrantPiece { gref: 9, offset, len };
        assert!(check_pieces(&[p(0, 4096)], 4096).is_ok());
        assert!(check_pieces(&[p(512, 3584), p(0, 512)], 4096).is_ok());
        assert!(matches!(
            check_pieces(&[p(512, 4096)], 4096),
            Err(GrantError::Invalid(_))
        ));
        assert!(matches!(
            check_pieces(&[p(0, 512)], 1024),
            Err(GrantError::Invalid(_))
        ));
        assert!(check_pieces(&[], 0).is_ok());
    }

    /// ring-protocol's fake grant table as dom0 sees it: copies reach the granted page both ways,
    /// and a wrong domain, a grant never issued and a write into a read-only grant are refused
    /// with Xen's statuses.
    #[test]
    fn the_fake_grant_table_copies_like_xen() {
        use ring_protocol::abi::grant_table::{GNTST_BAD_DOMAIN, GNTST_BAD_GNTREF, GNTST_PERMISSION_DENIED};
        use ring_protocol::platform::fake::FakeGrantTable;
        use ring_protocol::platform::{Access, ShareMemory};
        use ring_protocol::ring::SharedPages;

        let table = FakeGrantTable::with_owner(64, 5);
        let (rw_page, ro_page) = (SharedPages::new(PAGE_SIZE), SharedPages::new(PAGE_SIZE));
        // SAFETY: both pages are page-aligned allocations that outlive the table's use here; the
        // test touches them only through the table.
        let rw = unsafe { table.share(BACKEND_DOMID, rw_page.as_ptr(), Access::ReadWrite) }.unwrap();
        // SAFETY: as above.
        let ro = unsafe { table.share(BACKEND_DOMID, ro_page.as_ptr(), Access::ReadOnly) }.unwrap();
        let gnt: &dyn GrantCopy = &table;
        let piece = |gref, offset, len| GrantPiece { gref, offset, len };
        gnt.copy_to_guest(5, &[piece(rw, 4000, 96), piece(rw, 0, 4)], &[7u8; 100])
            .unwrap();
        let mut back = [0u8; 100];
        gnt.copy_from_guest(5, &[piece(rw, 3998, 98), piece(rw, 0, 2)], &mut back)
            .unwrap();
        assert_eq!(back[..2], [0, 0]);
        assert!(back[2..].iter().all(|&b| b == 7));
        let status = |r: Result<(), GrantError>| match r {
            Err(GrantError::Status { status, .. }) => status,
            other => panic!("{other:?}"),
        };
        let mut buf = [0u8; 8];
        assert_eq!(
            status(gnt.copy_from_guest(6, &[piece(rw, 0, 8)], &mut buf)),
            GNTST_BAD_DOMAIN
        );
        assert_eq!(
            status(gnt.copy_from_guest(5, &[piece(60, 0, 8)], &mut buf)),
            GNTST_BAD_GNTREF
        );
        assert_eq!(
            status(gnt.copy_to_guest(5, &[piece(ro, 0, 8)], &buf)),
            GNTST_PERMISSION_DENIED
        );
        gnt.copy_from_guest(5, &[piece(ro, 0, 8)], &mut buf).unwrap();
        table.revoke(rw).unwrap();
        table.revoke(ro).unwrap();
    }
}

#[cfg(any(test, feature = "test-utils"))]
pub use fake::{BACKEND_DOMID, FakeGrants};

/// A frontend's granted pages in local memory, for host tests of the protocol adapters (with the
/// `test-utils` feature, for tests outside this crate and the fuzz targets in `fuzz/`).
#[cfg(any(test, feature = "test-utils"))]
mod fake {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use ring_protocol::abi::grant_table::{
        GNTST_BAD_COPY_ARG, GNTST_BAD_DOMAIN, GNTST_BAD_GNTREF, GNTST_GENERAL_ERROR, GNTST_PERMISSION_DENIED,
        GrantRef,
    };
    use ring_protocol::abi::xen::DomId;
    use ring_protocol::platform::fake::FakeGrantTable;

    use super::{GrantCopy, GrantError, GrantPiece, PAGE_SIZE, check_pieces};

    /// The domain the backends run in (dom0), as a frontend's grants name it.
    pub const BACKEND_DOMID: DomId = 0;

    /// What Xen's grant copy would report for a refusal of ring-protocol's fake table.
    fn table_refusal(domid: DomId, gref: GrantRef, e: &ring_protocol::Error) -> GrantError {
        let status = match e {
            ring_protocol::Error::BadGrantRef { .. } => GNTST_BAD_GNTREF,
            ring_protocol::Error::GrantAccessDenied { .. } => GNTST_PERMISSION_DENIED,
            ring_protocol::Error::GrantCopyOutOfPage { .. } => GNTST_BAD_COPY_ARG,
            _ => GNTST_GENERAL_ERROR,
        };
        GrantError::Status { domid, gref, status }
    }

    /// Grant copies by dom0 ([`BACKEND_DOMID`]) against ring-protocol's in-memory grant table: the
    /// frontend's real pages, as its grant table handed them out, checked as Xen checks them (the
    /// granting domain must be the table's owner, each grant must be issued to dom0, writable for
    /// copies into it). With this a host test runs a real frontend against a real engine.
    impl GrantCopy for FakeGrantTable {
        fn copy_from_guest(
            &self,
            domid: DomId,
            pieces: &[GrantPiece],
            dst: &mut [u8],
        ) -> Result<(), GrantError> {
            check_pieces(pieces, dst.len())?;
            each_piece(self, domid, pieces, |p, at| {
                self.peer_read(BACKEND_DOMID, p.gref, usize::from(p.offset), &mut dst[at])
            })
        }

        fn copy_to_guest(&self, domid: DomId, pieces: &[GrantPiece], src: &[u8]) -> Result<(), GrantError> {
            check_pieces(pieces, src.len())?;
            each_piece(self, domid, pieces, |p, at| {
                self.peer_write(BACKEND_DOMID, p.gref, usize::from(p.offset), &src[at])
            })
        }
    }

    /// Runs `copy` for each piece with the range of the local buffer it covers, after Xen's check
    /// that `domid` is the granting domain; a refusal becomes the status Xen would report.
    fn each_piece(
        table: &FakeGrantTable,
        domid: DomId,
        pieces: &[GrantPiece],
        mut copy: impl FnMut(&GrantPiece, std::ops::Range<usize>) -> ring_protocol::Result<()>,
    ) -> Result<(), GrantError> {
        let mut at = 0;
        for p in pieces {
            let len = usize::from(p.len);
            if domid != table.owner() {
                return Err(GrantError::Status {
                    domid,
                    gref: p.gref,
                    status: GNTST_BAD_DOMAIN,
                });
            }
            copy(p, at..at + len).map_err(|e| table_refusal(domid, p.gref, &e))?;
            at += len;
        }
        Ok(())
    }

    /// Something the "guest" does whenever the backend copies from it (tests of double fetches:
    /// the guest rewrites what the backend already read).
    type Hook = Box<dyn FnMut() + Send>;

    /// A frontend's granted pages, in local memory.
    pub struct FakeGrants {
        domid: DomId,
        pages: Mutex<HashMap<u32, Vec<u8>>>,
        on_copy_from: Mutex<Option<Hook>>,
    }

    impl std::fmt::Debug for FakeGrants {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("FakeGrants")
                .field("domid", &self.domid)
                .field("pages", &self.pages.lock().map(|p| p.len()).unwrap_or(0))
                .finish_non_exhaustive()
        }
    }

    impl FakeGrants {
        /// No grants yet, issued by `domid`.
        pub fn new(domid: DomId) -> Self {
            FakeGrants {
                domid,
                pages: Mutex::new(HashMap::new()),
                on_copy_from: Mutex::new(None),
            }
        }

        /// Runs `f` at the start of every later copy from the guest (before any byte is copied).
        pub fn on_copy_from_guest(&self, f: impl FnMut() + Send + 'static) {
            *self.on_copy_from.lock().unwrap() = Some(Box::new(f));
        }

        /// Rewrites bytes of grant `gref`'s page (the guest changing its memory).
        pub fn poke(&self, gref: u32, offset: usize, bytes: &[u8]) {
            self.pages.lock().unwrap().get_mut(&gref).expect("granted")[offset..offset + bytes.len()]
                .copy_from_slice(bytes);
        }

        /// The current contents of grant `gref`'s page.
        pub fn page(&self, gref: u32) -> Vec<u8> {
            self.pages.lock().unwrap()[&gref].clone()
        }

        /// Grants a page filled with `fill` as `gref`.
        pub fn grant(&self, gref: u32, fill: u8) {
            self.pages.lock().unwrap().insert(gref, vec![fill; PAGE_SIZE]);
        }

        fn each(
            &self,
            domid: DomId,
            pieces: &[GrantPiece],
            len: usize,
            mut f: impl FnMut(&mut Vec<u8>, &GrantPiece, usize),
        ) -> Result<(), GrantError> {
            check_pieces(pieces, len)?;
            let mut pages = self.pages.lock().unwrap();
            let mut at = 0;
            for p in pieces {
                let status = if domid != self.domid {
                    GNTST_BAD_DOMAIN
                } else {
                    GNTST_BAD_GNTREF
                };
                let page = pages.get_mut(&p.gref).ok_or(GrantError::Status {
                    domid,
                    gref: p.gref,
                    status,
                })?;
                f(page, p, at);
                at += usize::from(p.len);
            }
            Ok(())
        }
    }

    impl GrantCopy for FakeGrants {
        fn copy_from_guest(
            &self,
            domid: DomId,
            pieces: &[GrantPiece],
            dst: &mut [u8],
        ) -> Result<(), GrantError> {
            if let Some(hook) = self.on_copy_from.lock().unwrap().as_mut() {
                hook();
            }
            let n = dst.len();
            self.each(domid, pieces, n, |page, p, at| {
                let (o, l) = (usize::from(p.offset), usize::from(p.len));
                dst[at..at + l].copy_from_slice(&page[o..o + l]);
            })
        }

        fn copy_to_guest(&self, domid: DomId, pieces: &[GrantPiece], src: &[u8]) -> Result<(), GrantError> {
            self.each(domid, pieces, src.len(), |page, p, at| {
                let (o, l) = (usize::from(p.offset), usize::from(p.len));
                page[o..o + l].copy_from_slice(&src[at..at + l]);
            })
        }
    }
}
