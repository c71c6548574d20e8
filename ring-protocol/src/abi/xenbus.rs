//! The xenbus connection states both ends of a split device publish in their XenStore `state` node
//! (`xen/include/public/io/xenbus.h`), written as decimal text.

/// `enum xenbus_state` (`xen/include/public/io/xenbus.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum XenbusState {
    /// 0: not yet set up.
    Unknown = 0,
    /// 1: setting up.
    Initialising = 1,
    /// 2: waiting for the other end's details (backend only).
    InitWait = 2,
    /// 3: details published (frontend).
    Initialised = 3,
    /// 4: connected.
    Connected = 4,
    /// 5: tearing down.
    Closing = 5,
    /// 6: gone.
    Closed = 6,
    /// 7: reconfiguring.
    Reconfiguring = 7,
    /// 8: reconfigured.
    Reconfigured = 8,
}

impl XenbusState {
    /// The state for wire value `n` (text in XenStore).
    pub fn from_number(n: u64) -> Option<Self> {
        Some(match n {
            0 => Self::Unknown,
            1 => Self::Initialising,
            2 => Self::InitWait,
            3 => Self::Initialised,
            4 => Self::Connected,
            5 => Self::Closing,
            6 => Self::Closed,
            7 => Self::Reconfiguring,
            8 => Self::Reconfigured,
            _ => return None,
        })
    }
}
