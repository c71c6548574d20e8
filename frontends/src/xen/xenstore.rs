//! A XenStore client over the guest end of the XenStore ring page.
//!
//! Messages are framed and parsed by the shared wire codec ([`ring_protocol::xenstore`]): a request
//! is written into the request ring (in pieces if the 1 KiB ring is fuller than the message), the
//! peer is notified, and the reply is assembled from the response ring. Replies carry the request's `req_id`; watch events (`XS_WATCH_EVENT`) can arrive
//! in between at any time and are queued for [`XenStore::next_watch_event`]. An `XS_ERROR` reply's
//! payload (an errno name such as `ENOENT`) becomes a typed [`XsErrorKind`].
//!
//! Hardening: a reply header claiming more than [`XENSTORE_PAYLOAD_MAX`] bytes halts the client (the
//! byte stream cannot be resynchronised; every later call fails with that error); an unknown message
//! type, a reply of another type than the request or a reply to a request we did not send is a
//! protocol error for the request waiting; a reply to an earlier request (one that timed out or
//! failed, or a repeat) is dropped as late (and counted): request ids only go up, so it is never
//! taken for the answer to a later one. Response bytes are buffered up to one whole message at
//! most, and at most [`MAX_QUEUED_EVENTS`] watch events wait in the queue (a repeat of a queued
//! event is merged, the oldest is dropped beyond that; both counted), so a peer flooding watched
//! nodes cannot make the guest allocate without bound. The byte rings themselves halt on inconsistent indices. Every wait
//! has a timeout.
//!
//! Transactions: [`XenStore::transaction`] runs a closure inside `XS_TRANSACTION_START` /
//! `XS_TRANSACTION_END` and runs it again when the commit fails with `EAGAIN` (another writer touched
//! what it read), up to [`TRANSACTION_RETRIES`] times.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use ring_protocol::abi::xenstore::{XENSTORE_PAYLOAD_MAX, XSD_ERRORS, XsdSockmsg};
use ring_protocol::byte_ring::Duplex;
use ring_protocol::platform::Notify;
use ring_protocol::xenstore::{self as wire, Incoming, MAX_MESSAGE, Request};

use crate::wait::{Waiter, wait_for};
use crate::{Error, Result};

/// Times a transaction is retried after `EAGAIN`.
pub const TRANSACTION_RETRIES: u32 = 16;
/// Default timeout for one request, in microseconds.
pub const DEFAULT_TIMEOUT_US: u64 = 5_000_000;
/// Watch events kept queued at most.
pub const MAX_QUEUED_EVENTS: usize = 64;

/// A XenStore error, by the name the daemon sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XsErrorKind {
    /// `EINVAL`: malformed request.
    Invalid,
    /// `EACCES`: permission denied.
    Access,
    /// `EEXIST`: node exists.
    Exists,
    /// `EISDIR`.
    IsDir,
    /// `ENOENT`: no such node.
    NotFound,
    /// `ENOMEM`.
    NoMem,
    /// `ENOSPC`: quota.
    NoSpace,
    /// `EIO`.
    Io,
    /// `ENOTEMPTY`.
    NotEmpty,
    /// `ENOSYS`: request type not supported.
    NoSys,
    /// `EROFS`.
    ReadOnly,
    /// `EBUSY`.
    Busy,
    /// `EAGAIN`: the transaction conflicted; retry it.
    Again,
    /// `EISCONN`.
    IsConn,
    /// `E2BIG`: too large.
    TooBig,
    /// `EPERM`.
    Perm,
    /// A name not in xs_wire.h's table.
    Other(String),
}

impl XsErrorKind {
    /// The kind for the wire name `name`.
    pub fn from_name(name: &str) -> Self {
        let known = [
            Self::Invalid,
            Self::Access,
            Self::Exists,
            Self::IsDir,
            Self::NotFound,
            Self::NoMem,
            Self::NoSpace,
            Self::Io,
            Self::NotEmpty,
            Self::NoSys,
            Self::ReadOnly,
            Self::Busy,
            Self::Again,
            Self::IsConn,
            Self::TooBig,
            Self::Perm,
        ];
        XSD_ERRORS
            .iter()
            .zip(known)
            .find(|(e, _)| e.name == name)
            .map_or_else(|| Self::Other(String::from(name)), |(_, k)| k)
    }

    /// The wire name.
    pub fn name(&self) -> &str {
        let index = match self {
            Self::Invalid => 0,
            Self::Access => 1,
            Self::Exists => 2,
            Self::IsDir => 3,
            Self::NotFound => 4,
            Self::NoMem => 5,
            Self::NoSpace => 6,
            Self::Io => 7,
            Self::NotEmpty => 8,
            Self::NoSys => 9,
            Self::ReadOnly => 10,
            Self::Busy => 11,
            Self::Again => 12,
            Self::IsConn => 13,
            Self::TooBig => 14,
            Self::Perm => 15,
            Self::Other(s) => return s,
        };
        XSD_ERRORS[index].name
    }
}

impl fmt::Display for XsErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A transaction id (0 = none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxId(pub u32);

/// Outside any transaction.
pub const NO_TX: TxId = TxId(0);

/// A fired watch: the path that changed and the watch's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The node that changed (or the watched path itself, for the event on registration).
    pub path: String,
    /// The token given to [`XenStore::watch`].
    pub token: String,
}

/// Counts, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XsStats {
    /// Requests sent.
    pub requests: u64,
    /// Notifications sent to the daemon.
    pub notifies: u64,
    /// Watch events received.
    pub watch_events: u64,
    /// Transactions retried after `EAGAIN`.
    pub retries: u64,
    /// Watch events dropped because the queue was full, or merged with an identical queued one.
    pub watch_events_dropped: u64,
    /// Late replies to requests that had timed out, dropped.
    pub late_replies: u64,
}

/// The client.
pub struct XenStore<N: Notify> {
    ring: Duplex,
    notify: N,
    next_req_id: u32,
    /// Bytes read from the response ring that do not yet form a whole message.
    partial: Vec<u8>,
    events: VecDeque<WatchEvent>,
    /// Set when the reply stream became unreadable; every later call fails with it.
    halted: Option<Error>,
    timeout_us: u64,
    stats: XsStats,
}

impl<N: Notify> fmt::Debug for XenStore<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XenStore")
            .field("next_req_id", &self.next_req_id)
            .field("queued_events", &self.events.len())
            .field("stats", &self.stats)
            .finish()
    }
}

/// A request the XenStore daemon refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XsFailure {
    /// The request (`read`, `write`, `transaction_end`, ...).
    pub op: &'static str,
    /// The path it named.
    pub path: String,
    /// The daemon's error.
    pub kind: XsErrorKind,
}

impl fmt::Display for XsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "xenstore {} '{}' failed: {}", self.op, self.path, self.kind)
    }
}

/// The XenStore error kind of `e`, if it is a refused XenStore request.
pub fn xs_kind(e: &Error) -> Option<&XsErrorKind> {
    match e {
        Error::XenStore(f) => Some(&f.kind),
        _ => None,
    }
}

fn xs_err(op: &'static str, path: &str, kind: XsErrorKind) -> Error {
    Error::XenStore(alloc::boxed::Box::new(XsFailure {
        op,
        path: String::from(path),
        kind,
    }))
}

fn protocol(what: &'static str, value: u64) -> Error {
    Error::Protocol {
        device: "xenstore",
        what,
        value,
    }
}

impl<N: Notify> XenStore<N> {
    /// A client over `ring` (from `ring_protocol::byte_ring::xenstore_guest`), notifying the daemon
    /// through `notify` (the XenStore event channel).
    pub fn new(ring: Duplex, notify: N) -> Self {
        Self {
            ring,
            notify,
            next_req_id: 1,
            partial: Vec::new(),
            events: VecDeque::new(),
            halted: None,
            timeout_us: DEFAULT_TIMEOUT_US,
            stats: XsStats::default(),
        }
    }

    /// Sets the per-request timeout.
    pub fn set_timeout_us(&mut self, timeout_us: u64) {
        self.timeout_us = timeout_us;
    }

    /// Counts so far.
    pub fn stats(&self) -> XsStats {
        self.stats
    }

    fn kick(&mut self) -> Result<()> {
        self.stats.notifies += 1;
        self.notify.notify().map_err(Error::Ring)
    }

    /// The error that halted the client, if any.
    pub fn halted(&self) -> Option<&Error> {
        self.halted.as_ref()
    }

    fn check(&self) -> Result<()> {
        self.halted.clone().map_or(Ok(()), Err)
    }

    fn send(&mut self, waiter: &dyn Waiter, req: &Request<'_>, tx: TxId) -> Result<u32> {
        self.check()?;
        let req_id = self.next_req_id;
        let mut msg = Vec::new();
        req.encode(req_id, tx.0, &mut msg).map_err(|e| match e {
            ring_protocol::Error::XsPayloadTooLong { len } => Error::BadLength {
                op: "xenstore request",
                len: len as usize,
                unit: 1,
                max: XENSTORE_PAYLOAD_MAX,
            },
            other => Error::Ring(other),
        })?;
        self.next_req_id = self.next_req_id.wrapping_add(1).max(1);
        let mut sent = 0;
        let timeout = self.timeout_us;
        while sent < msg.len() {
            let t = self.ring.tx.write(&msg[sent..]).map_err(Error::Ring)?;
            sent += t.bytes;
            if t.notify {
                self.kick()?;
            }
            if sent < msg.len() {
                // Ring full: wait for the daemon to consume.
                wait_for(waiter, timeout, "room in the XenStore request ring", || {
                    Ok((self.ring.tx.free_space().map_err(Error::Ring)? > 0).then_some(()))
                })?;
            }
        }
        self.stats.requests += 1;
        Ok(req_id)
    }

    /// Pulls available response bytes; returns one complete message if there is one.
    fn try_take_message(&mut self) -> Result<Option<(XsdSockmsg, Vec<u8>)>> {
        self.check()?;
        let mut buf = [0u8; 256];
        // Never more than one whole message buffered: the rest stays in the ring.
        while self.partial.len() < MAX_MESSAGE {
            let room = (MAX_MESSAGE - self.partial.len()).min(buf.len());
            let t = self.ring.rx.read(&mut buf[..room]).map_err(Error::Ring)?;
            if t.bytes == 0 {
                break;
            }
            self.partial.extend_from_slice(&buf[..t.bytes]);
            if t.notify {
                // The daemon may wait for room to write the rest of a long reply.
                self.kick()?;
            }
        }
        match wire::split_message(&self.partial) {
            Ok(None) => Ok(None),
            Ok(Some((header, payload, used))) => {
                let payload = payload.to_vec();
                self.partial.drain(..used);
                Ok(Some((header, payload)))
            }
            Err(ring_protocol::Error::XsPayloadTooLong { len }) => {
                // The byte stream cannot be resynchronised: halt.
                let e = protocol("reply payload length", len);
                self.halted = Some(e.clone());
                Err(e)
            }
            Err(e) => Err(Error::Ring(e)),
        }
    }

    /// Whether `id` names a request sent before the one waiting (`waiting`, or any request sent so
    /// far when none waits): its reply is late. Ids only go up (wrapping, never 0), so a late reply
    /// can never be taken for the answer to a later request. Remembering only some of the requests
    /// that failed would not do: once more of their replies arrive than are remembered, each
    /// forgotten one fails the request waiting, whose own reply is then late in turn, and no
    /// request ever succeeds again (found by the `xenstore_guest` fuzz target with ten timeouts in a
    /// row).
    fn sent_before(&self, id: u32, waiting: Option<u32>) -> bool {
        let newest = waiting.unwrap_or(self.next_req_id);
        // How far back `id` is; a request id is never 0, and more than 2^31 back is the future.
        let back = newest.wrapping_sub(id);
        id != 0 && back != 0 && back <= 1 << 31
    }

    /// Takes whatever has arrived, queueing watch events; returns the reply to `req_id` if it came.
    fn pump(&mut self, req_id: Option<u32>) -> Result<Option<(XsdSockmsg, Vec<u8>)>> {
        while let Some((h, payload)) = self.try_take_message()? {
            match wire::classify(&h, &payload) {
                Ok(Incoming::WatchEvent { path, token }) => {
                    self.stats.watch_events += 1;
                    let event = WatchEvent {
                        path: String::from_utf8_lossy(path).into_owned(),
                        token: String::from_utf8_lossy(token).into_owned(),
                    };
                    if self.events.contains(&event) {
                        // Watchers re-read what they watch: one queued copy tells them enough.
                        self.stats.watch_events_dropped += 1;
                        continue;
                    }
                    if self.events.len() >= MAX_QUEUED_EVENTS {
                        self.events.pop_front();
                        self.stats.watch_events_dropped += 1;
                    }
                    self.events.push_back(event);
                }
                Ok(Incoming::Reply) if Some(h.req_id) == req_id => return Ok(Some((h, payload))),
                Ok(Incoming::Reply) if self.sent_before(h.req_id, req_id) => {
                    self.stats.late_replies += 1;
                }
                Ok(Incoming::Reply) => {
                    return Err(protocol("reply to an unknown request id", u64::from(h.req_id)));
                }
                Err(ring_protocol::Error::XsUnknownType { ty }) => {
                    return Err(protocol("unknown message type", u64::from(ty)));
                }
                Err(ring_protocol::Error::XsMalformed { .. }) => {
                    return Err(protocol(
                        "watch event without a path and a token",
                        payload.len() as u64,
                    ));
                }
                Err(e) => return Err(Error::Ring(e)),
            }
        }
        Ok(None)
    }

    /// One request/reply round trip. Returns the reply payload. `op` and `path` name the request
    /// in errors.
    fn request(
        &mut self,
        waiter: &dyn Waiter,
        op: &'static str,
        req: Request<'_>,
        tx: TxId,
        path: &str,
    ) -> Result<Vec<u8>> {
        let req_id = match self.send(waiter, &req, tx) {
            // A NUL would end the path early on the wire and shift what follows it.
            Err(Error::Ring(ring_protocol::Error::XsNulInArgument)) => {
                return Err(xs_err(op, path, XsErrorKind::Invalid));
            }
            other => other?,
        };
        let timeout = self.timeout_us;
        // If the request fails before its reply came (a timeout, or a stray message the daemon sent
        // first), its reply may still come: `pump` drops it then as late.
        let (h, reply) = wait_for(waiter, timeout, "a XenStore reply", || self.pump(Some(req_id)))?;
        match wire::reply_result(&h, &reply, req.msg_type(), req_id) {
            Ok(Ok(_)) => Ok(reply),
            Ok(Err(name)) => Err(xs_err(
                op,
                path,
                XsErrorKind::from_name(&String::from_utf8_lossy(name)),
            )),
            Err(_) => Err(protocol(
                "reply of another type than the request",
                u64::from(h.type_),
            )),
        }
    }

    /// Reads node `path`.
    pub fn read(&mut self, waiter: &dyn Waiter, tx: TxId, path: &str) -> Result<Vec<u8>> {
        self.request(waiter, "read", Request::Read { path }, tx, path)
    }

    /// Reads node `path` as UTF-8 text.
    pub fn read_string(&mut self, waiter: &dyn Waiter, tx: TxId, path: &str) -> Result<String> {
        let v = self.read(waiter, tx, path)?;
        String::from_utf8(v).map_err(|e| protocol("non-UTF-8 value", e.utf8_error().valid_up_to() as u64))
    }

    /// Reads node `path` as a decimal number (see [`super::xenbus::parse_number`]).
    pub fn read_u64(&mut self, waiter: &dyn Waiter, tx: TxId, path: &str) -> Result<u64> {
        let v = self.read(waiter, tx, path)?;
        super::xenbus::parse_number(&v).ok_or_else(|| {
            let shown: String = String::from_utf8_lossy(&v[..v.len().min(32)]).into_owned();
            xs_err(
                "read number",
                path,
                XsErrorKind::Other(format!("not a number: {shown:?}")),
            )
        })
    }

    /// Writes `value` to node `path` (creating it).
    pub fn write(&mut self, waiter: &dyn Waiter, tx: TxId, path: &str, value: &[u8]) -> Result<()> {
        self.request(waiter, "write", Request::Write { path, value }, tx, path)
            .map(|_| ())
    }

    /// Creates node `path`.
    pub fn mkdir(&mut self, waiter: &dyn Waiter, tx: TxId, path: &str) -> Result<()> {
        self.request(waiter, "mkdir", Request::Mkdir { path }, tx, path)
            .map(|_| ())
    }

    /// Removes node `path` and its children.
    pub fn rm(&mut self, waiter: &dyn Waiter, tx: TxId, path: &str) -> Result<()> {
        self.request(waiter, "rm", Request::Rm { path }, tx, path)
            .map(|_| ())
    }

    /// The children of node `path`.
    pub fn directory(&mut self, waiter: &dyn Waiter, tx: TxId, path: &str) -> Result<Vec<String>> {
        let reply = self.request(waiter, "directory", Request::Directory { path }, tx, path)?;
        Ok(wire::strings(&reply)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect())
    }

    /// The home path of domain `domid` (`/local/domain/<domid>`).
    pub fn domain_path(&mut self, waiter: &dyn Waiter, domid: u16) -> Result<String> {
        let id = format!("{domid}");
        let reply = self.request(
            waiter,
            "get_domain_path",
            Request::GetDomainPath { domid },
            NO_TX,
            &id,
        )?;
        Ok(String::from_utf8_lossy(wire::first_string(&reply)).into_owned())
    }

    /// Watches `path` (and everything below it); events carry `token`. The daemon fires the watch once
    /// right away.
    pub fn watch(&mut self, waiter: &dyn Waiter, path: &str, token: &str) -> Result<()> {
        self.request(waiter, "watch", Request::Watch { path, token }, NO_TX, path)
            .map(|_| ())
    }

    /// Removes a watch.
    pub fn unwatch(&mut self, waiter: &dyn Waiter, path: &str, token: &str) -> Result<()> {
        self.request(waiter, "unwatch", Request::Unwatch { path, token }, NO_TX, path)
            .map(|_| ())
    }

    /// The next watch event (queued or arriving within `timeout_us`).
    pub fn next_watch_event(&mut self, waiter: &dyn Waiter, timeout_us: u64) -> Result<WatchEvent> {
        wait_for(waiter, timeout_us, "a XenStore watch event", || {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            self.pump(None)?;
            Ok(self.events.pop_front())
        })
    }

    /// Drops queued watch events.
    pub fn clear_watch_events(&mut self) {
        self.events.clear();
    }

    /// Starts a transaction.
    pub fn transaction_start(&mut self, waiter: &dyn Waiter) -> Result<TxId> {
        let reply = self.request(waiter, "transaction_start", Request::TransactionStart, NO_TX, "")?;
        wire::transaction_id(&reply).map(TxId).ok_or_else(|| {
            protocol(
                "transaction id that is not a non-zero number",
                wire::first_string(&reply).len() as u64,
            )
        })
    }

    /// Ends a transaction: commits it if `commit`, else aborts it. A conflicting commit fails with
    /// [`XsErrorKind::Again`].
    pub fn transaction_end(&mut self, waiter: &dyn Waiter, tx: TxId, commit: bool) -> Result<()> {
        self.request(
            waiter,
            "transaction_end",
            Request::TransactionEnd { commit },
            tx,
            "",
        )
        .map(|_| ())
    }

    /// Runs `body` in a transaction and commits it, running it again (in a new transaction) when the
    /// commit reports `EAGAIN`. An error from `body` aborts the transaction and is returned.
    pub fn transaction<T>(
        &mut self,
        waiter: &dyn Waiter,
        mut body: impl FnMut(&mut Self, TxId) -> Result<T>,
    ) -> Result<T> {
        let mut attempt = 0;
        loop {
            let tx = self.transaction_start(waiter)?;
            let value = match body(self, tx) {
                Ok(v) => v,
                Err(e) => {
                    let _ = self.transaction_end(waiter, tx, false);
                    return Err(e);
                }
            };
            match self.transaction_end(waiter, tx, true) {
                Ok(()) => return Ok(value),
                Err(e) if xs_kind(&e) == Some(&XsErrorKind::Again) && attempt < TRANSACTION_RETRIES => {
                    attempt += 1;
                    self.stats.retries += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(any(test, feature = "test-utils"))]
pub mod fake;

#[cfg(test)]
mod tests;
