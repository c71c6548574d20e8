//! Where a core's bytes live: the [`Storage`] trait, and [`FileStorage`], an image file or block
//! device read and written with `preadv`/`pwritev`.

use std::fs::File;
use std::os::fd::AsRawFd;

/// Where the bytes live: the image file, or a model of one in tests.
pub trait Storage: Send + Sync + 'static {
    /// Length in bytes.
    fn len(&self) -> u64;
    /// Whether the storage is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Read exactly the iovecs' total length at `offset`.
    ///
    /// # Safety
    ///
    /// Every iovec describes memory writable for its length for the duration of the call.
    unsafe fn read_vectored_at(&self, iov: &mut [libc::iovec], offset: u64) -> std::io::Result<()>;
    /// Write exactly the iovecs' total length at `offset`.
    ///
    /// # Safety
    ///
    /// Every iovec describes memory readable for its length for the duration of the call.
    unsafe fn write_vectored_at(&self, iov: &mut [libc::iovec], offset: u64) -> std::io::Result<()>;
    /// Make every completed write durable.
    fn sync_data(&self) -> std::io::Result<()>;
    /// Deallocate a range; it reads back as zeros.
    fn punch_hole(&self, offset: u64, len: u64) -> std::io::Result<()>;
}

/// The image file.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    len: u64,
}

/// Drops the first `n` bytes from an iovec list in place; returns the index of the first non-empty
/// entry.
fn advance(iov: &mut [libc::iovec], mut n: usize, mut first: usize) -> usize {
    while n > 0 && first < iov.len() {
        let take = n.min(iov[first].iov_len);
        // Stays within the original buffer: take <= iov_len.
        iov[first].iov_base = iov[first].iov_base.wrapping_byte_add(take);
        iov[first].iov_len -= take;
        n -= take;
        if iov[first].iov_len == 0 {
            first += 1;
        }
    }
    while first < iov.len() && iov[first].iov_len == 0 {
        first += 1;
    }
    first
}

impl FileStorage {
    /// Wraps an open image file or block device (whose size is where seeking to the end lands:
    /// its metadata says 0).
    pub fn new(mut file: File) -> std::io::Result<Self> {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::FileTypeExt;
        let len = if file.metadata()?.file_type().is_block_device() {
            file.seek(SeekFrom::End(0))?
        } else {
            file.metadata()?.len()
        };
        Ok(FileStorage { file, len })
    }

    /// Runs a vectored positional transfer to completion (short transfers continue, EINTR retries).
    ///
    /// # Safety
    ///
    /// As [`Storage::read_vectored_at`] / [`Storage::write_vectored_at`] for `write == false / true`.
    unsafe fn transfer(&self, iov: &mut [libc::iovec], mut offset: u64, write: bool) -> std::io::Result<()> {
        let mut first = advance(iov, 0, 0);
        while first < iov.len() {
            let n = (iov.len() - first).min(libc::UIO_MAXIOV as usize) as libc::c_int;
            let rest = iov[first..].as_ptr();
            let fd = self.file.as_raw_fd();
            let off = offset as libc::off_t;
            let done = if write {
                // SAFETY: `rest` points at `n` valid iovecs whose memory the caller vouches for; the
                // file descriptor is ours and open.
                unsafe { libc::pwritev(fd, rest, n, off) }
            } else {
                // SAFETY: as above.
                unsafe { libc::preadv(fd, rest, n, off) }
            };
            if done < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if done == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("end of image at byte {offset}"),
                ));
            }
            offset += done as u64;
            first = advance(iov, done as usize, first);
        }
        Ok(())
    }
}

impl std::os::fd::AsRawFd for FileStorage {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

impl Storage for FileStorage {
    fn len(&self) -> u64 {
        self.len
    }

    unsafe fn read_vectored_at(&self, iov: &mut [libc::iovec], offset: u64) -> std::io::Result<()> {
        // SAFETY: forwarded caller contract.
        unsafe { self.transfer(iov, offset, false) }
    }

    unsafe fn write_vectored_at(&self, iov: &mut [libc::iovec], offset: u64) -> std::io::Result<()> {
        // SAFETY: forwarded caller contract.
        unsafe { self.transfer(iov, offset, true) }
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    fn punch_hole(&self, offset: u64, len: u64) -> std::io::Result<()> {
        // SAFETY: plain system call on our own descriptor with integer arguments.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}
