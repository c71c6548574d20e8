//! Building blocks of the Xen userspace backends (dom0). So far: [`xenstore`], a XenStore client
//! over `/dev/xen/xenbus` or xenstored's socket. The grant-mapping (`/dev/xen/gntdev`) and event
//! channel (`/dev/xen/evtchn`) layers and the blkback/netback/console adapters are still to come.

pub mod xenstore;
