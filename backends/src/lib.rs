//! Host-side backends for pvkit.
//!
//! This crate will hold one block core and one net core serving both virtio (vhost-user daemons) and
//! Xen (userspace blkback/netback/console in dom0). It is empty until that issue lands: nothing here
//! claims to work yet.
