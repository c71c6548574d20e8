//! The xenbus device model: finding devices in XenStore and running the frontend half of the
//! connection handshake.
//!
//! A device of kind `k` (`vbd`, `vif`, ...) with id `n` has a frontend directory `device/k/n` in the
//! guest's home, holding `backend` (the backend directory's path), `backend-id` and the frontend
//! `state`; the backend directory holds the backend `state` and its feature keys. Both ends step
//! through [`XenbusState`]: the frontend publishes its rings and says `Initialised`, waits for the
//! backend's `Connected`, then says `Connected`; teardown goes `Closing` → `Closed` on both sides.
//! Waiting for the backend uses a watch on its `state` node; every wait has a timeout and fails with
//! a message naming the device, the state seen and the state awaited.
//!
//! Everything the backend writes is peer input: [`parse_number`] and [`parse_flag`] accept only
//! short decimal numbers (and flags `0`/`1`), and the drivers bound each value they read before
//! using it. A backend that leaves the handshake (`Closing`/`Closed` while we wait for it to connect)
//! ends the wait at once with an error instead of being waited for.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use ring_protocol::abi::xen::{DOMID_FIRST_RESERVED, DomId};
use ring_protocol::platform::Notify;

use super::xenstore::{NO_TX, TxId, XenStore, XsErrorKind, XsFailure, xs_kind};
use crate::wait::Waiter;
use crate::{Error, Result};

/// Digits in the longest number a key may hold (`u64::MAX` has 20).
pub const MAX_NUMBER_DIGITS: usize = 20;
/// How long a wait for the backend goes without re-reading its state, even with no watch event (a
/// flood of events could have pushed ours out of the client's bounded queue).
pub const STATE_POLL_US: u64 = 100_000;
/// Longest backend directory path accepted from the frontend directory's `backend` node.
pub const MAX_BACKEND_PATH: usize = 256;

/// Parses a decimal number written by a peer: ASCII digits only (no sign), at most
/// [`MAX_NUMBER_DIGITS`], surrounding ASCII whitespace allowed; `None` if malformed or past `u64`.
pub fn parse_number(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > MAX_NUMBER_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits
        .iter()
        .try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// Parses a `feature-*` flag: `0` or `1` (as a number); anything else is `None`.
pub fn parse_flag(value: &[u8]) -> Option<bool> {
    match parse_number(value)? {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

/// Shows at most 32 bytes of a peer's value, escaped, for an error message.
fn shown(value: &[u8]) -> String {
    let mut s = String::new();
    for &b in value.iter().take(32) {
        s.extend(core::ascii::escape_default(b).map(char::from));
    }
    if value.len() > 32 {
        s.push_str("...");
    }
    s
}

fn malformed(path: &str, what: &str, value: &[u8]) -> Error {
    Error::XenStore(alloc::boxed::Box::new(XsFailure {
        op: "parse",
        path: String::from(path),
        kind: XsErrorKind::Other(format!("not {what}: \"{}\"", shown(value))),
    }))
}

/// Reads a number key; `None` if the node does not exist.
///
/// # Errors
/// A XenStore failure; a malformed value (see [`parse_number`]) as a XenStore error naming the path.
pub fn read_number<N: Notify>(
    xs: &mut XenStore<N>,
    w: &dyn Waiter,
    tx: TxId,
    path: &str,
) -> Result<Option<u64>> {
    let value = match xs.read(w, tx, path) {
        Ok(v) => v,
        Err(e) if xs_kind(&e) == Some(&XsErrorKind::NotFound) => return Ok(None),
        Err(e) => return Err(e),
    };
    parse_number(&value)
        .map(Some)
        .ok_or_else(|| malformed(path, "a decimal number", &value))
}

/// Reads a `feature-*` flag; a missing node is `false`.
///
/// # Errors
/// As [`read_number`]; a value other than `0` or `1`.
pub fn read_flag<N: Notify>(xs: &mut XenStore<N>, w: &dyn Waiter, tx: TxId, path: &str) -> Result<bool> {
    let value = match xs.read(w, tx, path) {
        Ok(v) => v,
        Err(e) if xs_kind(&e) == Some(&XsErrorKind::NotFound) => return Ok(false),
        Err(e) => return Err(e),
    };
    parse_flag(&value).ok_or_else(|| malformed(path, "a flag (0 or 1)", &value))
}

pub use ring_protocol::abi::xenbus::XenbusState;

/// A device found under `device/<kind>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XenbusDevice {
    /// `vbd`, `vif`, ...
    pub kind: String,
    /// The id (for a vbd, the virtual device number, e.g. 51712 for xvda).
    pub id: String,
    /// Frontend directory (relative to the domain's home): `device/<kind>/<id>`.
    pub frontend: String,
    /// Backend directory (absolute).
    pub backend: String,
    /// The backend's domain.
    pub backend_id: DomId,
}

impl XenbusDevice {
    /// `<frontend>/<key>`.
    pub fn fe(&self, key: &str) -> String {
        format!("{}/{key}", self.frontend)
    }

    /// `<backend>/<key>`.
    pub fn be(&self, key: &str) -> String {
        format!("{}/{key}", self.backend)
    }
}

/// A backend that did not reach the awaited state in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XenbusTimeout {
    /// Frontend directory (`device/vbd/51712`).
    pub frontend: String,
    /// Backend directory.
    pub backend: String,
    /// The backend's last state (a [`XenbusState`] number).
    pub state: u8,
    /// What was awaited.
    pub awaited: &'static str,
    /// How long.
    pub waited_us: u64,
}

impl core::fmt::Display for XenbusTimeout {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "xen device {}: backend {} still in state {} after {} us, waiting for {}",
            self.frontend, self.backend, self.state, self.waited_us, self.awaited
        )
    }
}

/// The devices of `kind`, in id order. None is not an error (an empty list).
pub fn enumerate<N: Notify>(xs: &mut XenStore<N>, w: &dyn Waiter, kind: &str) -> Result<Vec<XenbusDevice>> {
    let dir = format!("device/{kind}");
    let mut ids = match xs.directory(w, NO_TX, &dir) {
        Ok(ids) => ids,
        Err(e) if xs_kind(&e) == Some(&XsErrorKind::NotFound) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    ids.sort_by_key(|id| (id.len(), id.clone()));
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let frontend = format!("{dir}/{id}");
        let backend = xs.read_string(w, NO_TX, &format!("{frontend}/backend"))?;
        if !backend.starts_with('/') || backend.len() > MAX_BACKEND_PATH || backend.contains('\0') {
            return Err(Error::Protocol {
                device: "xenbus",
                what: "backend path that is not a plain absolute path (length shown)",
                value: backend.len() as u64,
            });
        }
        let backend_id = xs.read_u64(w, NO_TX, &format!("{frontend}/backend-id"))?;
        let backend_id = DomId::try_from(backend_id)
            .ok()
            .filter(|&d| d < DOMID_FIRST_RESERVED)
            .ok_or(Error::Protocol {
                device: "xenbus",
                what: "backend-id out of range",
                value: backend_id,
            })?;
        out.push(XenbusDevice {
            kind: String::from(kind),
            id,
            frontend,
            backend,
            backend_id,
        });
    }
    Ok(out)
}

/// Reads a `state` node (a missing node reads as [`XenbusState::Unknown`], as when a backend
/// directory is gone).
pub fn read_state<N: Notify>(
    xs: &mut XenStore<N>,
    w: &dyn Waiter,
    tx: TxId,
    path: &str,
) -> Result<XenbusState> {
    let n = match xs.read_u64(w, tx, path) {
        Ok(n) => n,
        Err(e) if xs_kind(&e) == Some(&XsErrorKind::NotFound) => return Ok(XenbusState::Unknown),
        Err(e) => return Err(e),
    };
    XenbusState::from_number(n).ok_or(Error::Protocol {
        device: "xenbus",
        what: "state value",
        value: n,
    })
}

/// Writes the frontend's state.
pub fn set_state<N: Notify>(
    xs: &mut XenStore<N>,
    w: &dyn Waiter,
    tx: TxId,
    dev: &XenbusDevice,
    state: XenbusState,
) -> Result<()> {
    xs.write(w, tx, &dev.fe("state"), format!("{}", state as u8).as_bytes())
}

/// Waits (through a watch on the backend's `state`) until `accept` likes the backend's state, or
/// until `timeout_us`.
///
/// # Errors
/// [`Error::XenbusTimeout`]; a XenStore failure or a malformed state value.
pub fn wait_backend<N: Notify>(
    xs: &mut XenStore<N>,
    w: &dyn Waiter,
    dev: &XenbusDevice,
    what: &'static str,
    accept: impl Fn(XenbusState) -> bool,
    timeout_us: u64,
) -> Result<XenbusState> {
    wait_backend_or_refuse(xs, w, dev, what, accept, |_| false, timeout_us)
}

/// As [`wait_backend`], but a state `refuse` matches ends the wait at once with
/// [`Error::Protocol`] (`backend left the handshake`, the state as value): a backend that closes while
/// we wait for it to connect is not waited for, however often it flips back and forth.
///
/// # Errors
/// As [`wait_backend`], and the refusal.
pub fn wait_backend_or_refuse<N: Notify>(
    xs: &mut XenStore<N>,
    w: &dyn Waiter,
    dev: &XenbusDevice,
    what: &'static str,
    accept: impl Fn(XenbusState) -> bool,
    refuse: impl Fn(XenbusState) -> bool,
    timeout_us: u64,
) -> Result<XenbusState> {
    let path = dev.be("state");
    let token = format!("xenbus:{}", dev.frontend);
    xs.watch(w, &path, &token)?;
    let start = w.now_us();
    let result = loop {
        let state = match read_state(xs, w, NO_TX, &path) {
            Ok(s) => s,
            Err(e) => break Err(e),
        };
        if accept(state) {
            break Ok(state);
        }
        if refuse(state) {
            break Err(Error::Protocol {
                device: "xenbus",
                what: "backend left the handshake (its state shown)",
                value: state as u64,
            });
        }
        let waited = w.now_us().saturating_sub(start);
        if waited >= timeout_us {
            break Err(Error::XenbusTimeout(alloc::boxed::Box::new(XenbusTimeout {
                frontend: dev.frontend.clone(),
                backend: dev.backend.clone(),
                state: state as u8,
                awaited: what,
                waited_us: waited,
            })));
        }
        // Any event (ours or not) or a quiet slice: look at the state again.
        match xs.next_watch_event(w, (timeout_us - waited).min(STATE_POLL_US)) {
            Ok(_) | Err(Error::Timeout { .. }) => {}
            Err(e) => break Err(e),
        }
    };
    let _ = xs.unwatch(w, &path, &token);
    result
}

/// Tears the connection down: frontend `Closing`, wait for the backend to close (or go away), then
/// frontend `Closed` and wait for the backend's `Closed` (a Linux block backend lets go of the
/// rings only on the frontend's `Closed`). Returns the state seen after `Closing`. The caller ends
/// its grants and event channel afterwards; each wait is bounded by `timeout_us`.
///
/// # Errors
/// [`Error::XenbusTimeout`] if the backend does not follow (the frontend still ends `Closed`), or a
/// XenStore failure.
pub fn close<N: Notify>(
    xs: &mut XenStore<N>,
    w: &dyn Waiter,
    dev: &XenbusDevice,
    timeout_us: u64,
) -> Result<XenbusState> {
    let gone = |s| matches!(s, XenbusState::Closed | XenbusState::Unknown);
    let closing = set_state(xs, w, NO_TX, dev, XenbusState::Closing).and_then(|()| {
        wait_backend(
            xs,
            w,
            dev,
            "Closing or Closed",
            |s| s == XenbusState::Closing || gone(s),
            timeout_us,
        )
    });
    // Closed whatever happened: the frontend gives the device up either way.
    set_state(xs, w, NO_TX, dev, XenbusState::Closed)?;
    let seen = closing?;
    if !gone(seen) {
        wait_backend(xs, w, dev, "Closed", gone, timeout_us)?;
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use alloc::vec;
    use core::cell::{Cell, RefCell};

    use super::super::xenstore::fake::FakeXenStore;
    use super::*;
    use crate::wait::WaitMode;

    struct NoKick;
    impl Notify for NoKick {
        fn notify(&self) -> ring_protocol::Result<()> {
            Ok(())
        }
    }

    /// Runs the fake daemon when the client idles; after `at` idles, writes `script` entries as a
    /// backend in dom0 would.
    struct Scripted {
        daemon: RefCell<FakeXenStore>,
        now: Cell<u64>,
        idles: Cell<u64>,
        script: RefCell<Vec<(u64, String, &'static [u8])>>,
    }

    impl Waiter for Scripted {
        fn now_us(&self) -> u64 {
            let t = self.now.get();
            self.now.set(t + 100);
            t
        }
        fn mode(&self) -> WaitMode {
            WaitMode::Poll
        }
        fn idle(&self, ready: &mut dyn FnMut() -> bool) -> bool {
            if ready() {
                return true;
            }
            let n = self.idles.get() + 1;
            self.idles.set(n);
            let mut d = self.daemon.borrow_mut();
            self.script.borrow_mut().retain(|(at, path, value)| {
                if *at <= n {
                    d.external_write(path, value);
                    false
                } else {
                    true
                }
            });
            d.step();
            drop(d);
            ready()
        }
    }

    fn setup(script: Vec<(u64, String, &'static [u8])>) -> (XenStore<NoKick>, Scripted) {
        let (mut daemon, ring) = FakeXenStore::new(3);
        let be = "/local/domain/0/backend/vbd/3";
        for (id, state) in [("51712", "2"), ("768", "2")] {
            daemon.external_write(
                &format!("device/vbd/{id}/backend"),
                format!("{be}/{id}").as_bytes(),
            );
            daemon.external_write(&format!("device/vbd/{id}/backend-id"), b"0");
            daemon.external_write(&format!("{be}/{id}/state"), state.as_bytes());
        }
        (
            XenStore::new(ring, NoKick),
            Scripted {
                daemon: RefCell::new(daemon),
                now: Cell::new(0),
                idles: Cell::new(0),
                script: RefCell::new(script),
            },
        )
    }

    #[test]
    fn enumerates_devices_in_numeric_order_and_none_is_empty() {
        let (mut xs, w) = setup(vec![]);
        let devs = enumerate(&mut xs, &w, "vbd").unwrap();
        let ids: Vec<&str> = devs.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["768", "51712"]);
        assert_eq!(devs[1].backend, "/local/domain/0/backend/vbd/3/51712");
        assert_eq!(devs[1].backend_id, 0);
        assert_eq!(devs[1].fe("ring-ref"), "device/vbd/51712/ring-ref");
        assert!(enumerate(&mut xs, &w, "vif").unwrap().is_empty());
    }

    #[test]
    fn connect_waits_for_the_backend_and_close_runs_both_sides_to_closed() {
        let be = String::from("/local/domain/0/backend/vbd/3/51712/state");
        let (mut xs, w) = setup(vec![
            (5, be.clone(), b"4"),
            (20, be.clone(), b"5"),
            (30, be, b"6"),
        ]);
        let dev = enumerate(&mut xs, &w, "vbd").unwrap().remove(1);
        set_state(&mut xs, &w, NO_TX, &dev, XenbusState::Initialised).unwrap();
        let s = wait_backend(
            &mut xs,
            &w,
            &dev,
            "Connected",
            |s| s == XenbusState::Connected,
            1_000_000,
        )
        .unwrap();
        assert_eq!(s, XenbusState::Connected);
        set_state(&mut xs, &w, NO_TX, &dev, XenbusState::Connected).unwrap();
        assert_eq!(
            read_state(&mut xs, &w, NO_TX, "device/vbd/51712/state").unwrap(),
            XenbusState::Connected
        );
        let seen = close(&mut xs, &w, &dev, 1_000_000).unwrap();
        assert!(matches!(seen, XenbusState::Closing | XenbusState::Closed));
        assert_eq!(
            read_state(&mut xs, &w, NO_TX, "device/vbd/51712/state").unwrap(),
            XenbusState::Closed
        );
    }

    #[test]
    fn a_backend_that_never_connects_times_out_with_a_clear_error() {
        let (mut xs, w) = setup(vec![]);
        let dev = enumerate(&mut xs, &w, "vbd").unwrap().remove(0);
        let e = wait_backend(
            &mut xs,
            &w,
            &dev,
            "Connected",
            |s| s == XenbusState::Connected,
            50_000,
        )
        .unwrap_err();
        match e {
            Error::XenbusTimeout(t) => {
                let XenbusTimeout {
                    frontend,
                    state,
                    awaited,
                    waited_us,
                    ..
                } = *t;
                assert_eq!(
                    (frontend.as_str(), state, awaited),
                    ("device/vbd/768", 2, "Connected")
                );
                assert!(waited_us >= 50_000);
            }
            other => panic!("expected a xenbus timeout, got {other:?}"),
        }
        assert_eq!(
            format!(
                "{}",
                Error::XenbusTimeout(alloc::boxed::Box::new(XenbusTimeout {
                    frontend: "device/vbd/768".into(),
                    backend: "b".into(),
                    state: 2,
                    awaited: "Connected",
                    waited_us: 7
                }))
            ),
            "xen device device/vbd/768: backend b still in state 2 after 7 us, waiting for Connected"
        );
    }

    #[test]
    fn backend_numbers_and_flags_parse_only_short_decimals() {
        for (text, want) in [
            (&b"0"[..], Some(0)),
            (b"512", Some(512)),
            (b" 4096\n", Some(4096)),
            (b"18446744073709551615", Some(u64::MAX)),
            (b"18446744073709551616", None),
            (b"000000000000000000001", None),
            (b"", None),
            (b"   ", None),
            (b"-1", None),
            (b"+1", None),
            (b"1e3", None),
            (b"0x10", None),
            (b"12 34", None),
            (b"1\0", None),
            (b"\xff", None),
        ] {
            assert_eq!(parse_number(text), want, "{text:?}");
        }
        assert_eq!(parse_flag(b"1"), Some(true));
        assert_eq!(parse_flag(b"0"), Some(false));
        assert_eq!(parse_flag(b"2"), None);
        assert_eq!(parse_flag(b"yes"), None);
        let (mut xs, w) = setup(vec![]);
        let be = "/local/domain/0/backend/vbd/3/768";
        for (k, v) in [("a", &b"7"[..]), ("b", b"seven"), ("f", b"1"), ("g", b"on")] {
            w.daemon.borrow_mut().external_write(&format!("{be}/{k}"), v);
        }
        assert_eq!(
            read_number(&mut xs, &w, NO_TX, &format!("{be}/a")).unwrap(),
            Some(7)
        );
        assert_eq!(
            read_number(&mut xs, &w, NO_TX, &format!("{be}/none")).unwrap(),
            None
        );
        let e = read_number(&mut xs, &w, NO_TX, &format!("{be}/b")).unwrap_err();
        assert_eq!(
            format!("{e}"),
            format!("xenstore parse '{be}/b' failed: not a decimal number: \"seven\"")
        );
        assert!(read_flag(&mut xs, &w, NO_TX, &format!("{be}/f")).unwrap());
        assert!(!read_flag(&mut xs, &w, NO_TX, &format!("{be}/none")).unwrap());
        assert!(read_flag(&mut xs, &w, NO_TX, &format!("{be}/g")).is_err());
        // A long hostile value is shown cut short.
        w.daemon
            .borrow_mut()
            .external_write(&format!("{be}/long"), &[b'x'; 4000]);
        let e = read_number(&mut xs, &w, NO_TX, &format!("{be}/long")).unwrap_err();
        assert!(format!("{e}").len() < 200, "{e}");
    }

    #[test]
    fn enumerate_refuses_a_reserved_backend_id_or_a_relative_backend_path() {
        let (mut xs, w) = setup(vec![]);
        w.daemon
            .borrow_mut()
            .external_write("device/vbd/768/backend-id", b"32752");
        let e = enumerate(&mut xs, &w, "vbd").unwrap_err();
        assert_eq!(
            e,
            Error::Protocol {
                device: "xenbus",
                what: "backend-id out of range",
                value: 32752
            }
        );
        let (mut xs, w) = setup(vec![]);
        w.daemon
            .borrow_mut()
            .external_write("device/vbd/768/backend", b"backend/vbd/3/768");
        assert!(matches!(
            enumerate(&mut xs, &w, "vbd"),
            Err(Error::Protocol { .. })
        ));
    }

    #[test]
    fn hostile_backend_flooding_its_state_subtree_cannot_hide_its_state() {
        // Connected, then 2000 writes below the watched state node that push its event out of
        // the client's queue: the wait still sees the state.
        let be = "/local/domain/0/backend/vbd/3/768/state";
        let mut script: Vec<(u64, String, &'static [u8])> = vec![(20, String::from(be), b"4")];
        script.extend((0..2000).map(|i| (20, format!("{be}/junk{i}"), &b"x"[..])));
        let (mut xs, w) = setup(script);
        let dev = enumerate(&mut xs, &w, "vbd").unwrap().remove(0);
        let s = wait_backend(
            &mut xs,
            &w,
            &dev,
            "Connected",
            |s| s == XenbusState::Connected,
            5_000_000,
        )
        .unwrap();
        assert_eq!(s, XenbusState::Connected);
        assert!(w.idles.get() > 20, "the flood came while we waited");
        assert!(
            xs.stats().watch_events_dropped > 0,
            "the flood did overflow the queue: {:?}",
            xs.stats()
        );
    }

    #[test]
    fn hostile_backend_closing_while_awaited_is_refused_at_once() {
        let be = String::from("/local/domain/0/backend/vbd/3/768/state");
        let (mut xs, w) = setup(vec![(3, be, b"5")]);
        let dev = enumerate(&mut xs, &w, "vbd").unwrap().remove(0);
        let e = wait_backend_or_refuse(
            &mut xs,
            &w,
            &dev,
            "Connected",
            |s| s == XenbusState::Connected,
            |s| matches!(s, XenbusState::Closing | XenbusState::Closed),
            60_000_000,
        )
        .unwrap_err();
        assert_eq!(
            e,
            Error::Protocol {
                device: "xenbus",
                what: "backend left the handshake (its state shown)",
                value: 5
            }
        );
        assert!(w.now.get() < 1_000_000, "not waited out: {} us", w.now.get());
    }
}
