//! Error numbers of the Xen ABI (`xen/include/public/errno.h`): hypercalls return their negation,
//! and the XenStore wire protocol names them (see
//! [`xenstore::XSD_ERRORS`](super::xenstore::XSD_ERRORS)). Only the ones pvkit uses are listed.

/// Operation not permitted.
#[doc(alias = "XEN_EPERM")]
pub const EPERM: i32 = 1;
/// No such file or directory (XenStore: no such node).
#[doc(alias = "XEN_ENOENT")]
pub const ENOENT: i32 = 2;
/// No such process (hypercalls: no such domain).
#[doc(alias = "XEN_ESRCH")]
pub const ESRCH: i32 = 3;
/// I/O error.
#[doc(alias = "XEN_EIO")]
pub const EIO: i32 = 5;
/// Argument list too long (XenStore: message too long).
#[doc(alias = "XEN_E2BIG")]
pub const E2BIG: i32 = 7;
/// Try again.
#[doc(alias = "XEN_EAGAIN")]
pub const EAGAIN: i32 = 11;
/// Out of memory.
#[doc(alias = "XEN_ENOMEM")]
pub const ENOMEM: i32 = 12;
/// Permission denied.
#[doc(alias = "XEN_EACCES")]
pub const EACCES: i32 = 13;
/// Bad address.
#[doc(alias = "XEN_EFAULT")]
pub const EFAULT: i32 = 14;
/// Device or resource busy.
#[doc(alias = "XEN_EBUSY")]
pub const EBUSY: i32 = 16;
/// File exists.
#[doc(alias = "XEN_EEXIST")]
pub const EEXIST: i32 = 17;
/// Is a directory.
#[doc(alias = "XEN_EISDIR")]
pub const EISDIR: i32 = 21;
/// Invalid argument.
#[doc(alias = "XEN_EINVAL")]
pub const EINVAL: i32 = 22;
/// No space left on device (XenStore: quota exceeded).
#[doc(alias = "XEN_ENOSPC")]
pub const ENOSPC: i32 = 28;
/// Read-only file system.
#[doc(alias = "XEN_EROFS")]
pub const EROFS: i32 = 30;
/// Function not implemented.
#[doc(alias = "XEN_ENOSYS")]
pub const ENOSYS: i32 = 38;
/// Directory not empty.
#[doc(alias = "XEN_ENOTEMPTY")]
pub const ENOTEMPTY: i32 = 39;
/// Operation not supported.
#[doc(alias = "XEN_EOPNOTSUPP")]
pub const EOPNOTSUPP: i32 = 95;
/// Already connected.
#[doc(alias = "XEN_EISCONN")]
pub const EISCONN: i32 = 106;
