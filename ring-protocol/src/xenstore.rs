//! The XenStore wire codec, shared by every XenStore client: the guest's (over the ring page) and
//! dom0's (over `/dev/xen/xenbus` or xenstored's socket) speak the same messages
//! ([`abi::xenstore`](crate::abi::xenstore)): an [`XsdSockmsg`] header and up to
//! [`XENSTORE_PAYLOAD_MAX`] payload bytes.
//!
//! - Outgoing: [`Request`] names every request a client sends and [`Request::encode`] frames it
//!   (header and payload), refusing an argument with a NUL in it (it would end the string early on
//!   the wire and shift what follows) and a payload past the maximum.
//! - Incoming: [`parse_header`] and [`split_message`] bound the payload length a header claims
//!   before anything is buffered for it ([`Error::XsPayloadTooLong`]: the byte stream cannot be
//!   resynchronised after that, so a client stops reading it); [`classify`] tells watch events from
//!   replies and checks the message type; [`reply_result`] checks that a reply answers the request
//!   waiting for it (same id; same type, or `XS_ERROR` with an error name).
//! - Payload helpers: [`strings`], [`first_string`], [`transaction_id`], [`xsd_error`].
//!
//! No allocation: frames go to any `Extend<u8>` (a `Vec<u8>`), parsing borrows from the caller's
//! buffer. What a client keeps (queued watch events, abandoned request ids) and how it bounds that
//! is the client's policy.

use core::mem::size_of;

use zerocopy::{FromBytes, IntoBytes};

use crate::abi::xenstore::{XENSTORE_PAYLOAD_MAX, XSD_ERRORS, XsdError, XsdSockmsg, XsdSockmsgType};
use crate::{Error, Result};

/// Bytes of a message header.
pub const HEADER_LEN: usize = size_of::<XsdSockmsg>();
/// The longest message: a header and the largest payload.
pub const MAX_MESSAGE: usize = HEADER_LEN + XENSTORE_PAYLOAD_MAX;

/// A request a client sends, with its arguments. Paths, tokens and permission entries are strings
/// that go on the wire NUL-terminated; a value is raw bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// `XS_READ`: a node's value.
    Read {
        /// The node.
        path: &'a str,
    },
    /// `XS_WRITE`: set a node's value, creating it (and missing parents).
    Write {
        /// The node.
        path: &'a str,
        /// The new value (not NUL-terminated).
        value: &'a [u8],
    },
    /// `XS_MKDIR`: create a node.
    Mkdir {
        /// The node.
        path: &'a str,
    },
    /// `XS_RM`: remove a node and everything below it.
    Rm {
        /// The node.
        path: &'a str,
    },
    /// `XS_DIRECTORY`: a node's children.
    Directory {
        /// The node.
        path: &'a str,
    },
    /// `XS_GET_PERMS`: a node's permission list.
    GetPerms {
        /// The node.
        path: &'a str,
    },
    /// `XS_SET_PERMS`: set a node's permission list (owner first; entries like `r1`, `n0`).
    SetPerms {
        /// The node.
        path: &'a str,
        /// The entries.
        perms: &'a [&'a str],
    },
    /// `XS_WATCH`: watch a path and everything below it; events carry `token`.
    Watch {
        /// The watched path.
        path: &'a str,
        /// The token events carry.
        token: &'a str,
    },
    /// `XS_UNWATCH`: remove a watch.
    Unwatch {
        /// The watched path.
        path: &'a str,
        /// Its token.
        token: &'a str,
    },
    /// `XS_TRANSACTION_START`: the reply is the new transaction's id.
    TransactionStart,
    /// `XS_TRANSACTION_END`: commit (`T`) or abort (`F`) the header's transaction.
    TransactionEnd {
        /// Commit (true) or abort.
        commit: bool,
    },
    /// `XS_GET_DOMAIN_PATH`: a domain's home path.
    GetDomainPath {
        /// The domain.
        domid: u16,
    },
}

/// One piece of a payload.
#[derive(Clone, Copy)]
enum Part<'a> {
    /// A string, NUL-terminated on the wire; it must not contain a NUL itself.
    Str(&'a [u8]),
    /// Raw bytes.
    Raw(&'a [u8]),
}

impl Part<'_> {
    fn len(&self) -> usize {
        match self {
            Part::Str(s) => s.len() + 1,
            Part::Raw(r) => r.len(),
        }
    }
}

/// Decimal digits of `n`, right-aligned in `buf`; returns the digits.
fn decimal(mut n: u16, buf: &mut [u8; 5]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

impl<'a> Request<'a> {
    /// The message type.
    pub fn msg_type(&self) -> XsdSockmsgType {
        match self {
            Request::Read { .. } => XsdSockmsgType::Read,
            Request::Write { .. } => XsdSockmsgType::Write,
            Request::Mkdir { .. } => XsdSockmsgType::Mkdir,
            Request::Rm { .. } => XsdSockmsgType::Rm,
            Request::Directory { .. } => XsdSockmsgType::Directory,
            Request::GetPerms { .. } => XsdSockmsgType::GetPerms,
            Request::SetPerms { .. } => XsdSockmsgType::SetPerms,
            Request::Watch { .. } => XsdSockmsgType::Watch,
            Request::Unwatch { .. } => XsdSockmsgType::Unwatch,
            Request::TransactionStart => XsdSockmsgType::TransactionStart,
            Request::TransactionEnd { .. } => XsdSockmsgType::TransactionEnd,
            Request::GetDomainPath { .. } => XsdSockmsgType::GetDomainPath,
        }
    }

    /// The payload's pieces; `digits` holds a domain id's text.
    fn parts<'b>(&'b self, digits: &'b mut [u8; 5]) -> ([Option<Part<'b>>; 2], &'b [&'a str]) {
        let s = |x: &'b str| Some(Part::Str(x.as_bytes()));
        match *self {
            Request::Read { path }
            | Request::Mkdir { path }
            | Request::Rm { path }
            | Request::Directory { path }
            | Request::GetPerms { path } => ([s(path), None], &[]),
            Request::Write { path, value } => ([s(path), Some(Part::Raw(value))], &[]),
            Request::SetPerms { path, perms } => ([s(path), None], perms),
            Request::Watch { path, token } | Request::Unwatch { path, token } => ([s(path), s(token)], &[]),
            // An empty string argument, as xenstored expects.
            Request::TransactionStart => ([Some(Part::Str(b"")), None], &[]),
            Request::TransactionEnd { commit } => {
                ([Some(Part::Str(if commit { b"T" } else { b"F" })), None], &[])
            }
            Request::GetDomainPath { domid } => ([Some(Part::Str(decimal(domid, digits))), None], &[]),
        }
    }

    /// Appends the whole message (header, then payload) to `out`; returns its length.
    ///
    /// # Errors
    /// [`Error::XsNulInArgument`] if a string argument contains a NUL byte;
    /// [`Error::XsPayloadTooLong`] if the payload would exceed [`XENSTORE_PAYLOAD_MAX`]. Nothing is
    /// appended then.
    pub fn encode<E: Extend<u8>>(&self, req_id: u32, tx_id: u32, out: &mut E) -> Result<usize> {
        let mut digits = [0u8; 5];
        let (fixed, extra) = self.parts(&mut digits);
        let parts = || {
            fixed
                .iter()
                .flatten()
                .copied()
                .chain(extra.iter().map(|p| Part::Str(p.as_bytes())))
        };
        let mut len = 0usize;
        for p in parts() {
            if let Part::Str(s) = p
                && s.contains(&0)
            {
                return Err(Error::XsNulInArgument);
            }
            len += p.len();
        }
        if len > XENSTORE_PAYLOAD_MAX {
            return Err(Error::XsPayloadTooLong { len: len as u64 });
        }
        let header = XsdSockmsg {
            type_: self.msg_type() as u32,
            req_id,
            tx_id,
            // At most XENSTORE_PAYLOAD_MAX (checked above).
            len: len as u32,
        };
        out.extend(header.as_bytes().iter().copied());
        for p in parts() {
            match p {
                Part::Str(s) => out.extend(s.iter().copied().chain([0])),
                Part::Raw(r) => out.extend(r.iter().copied()),
            }
        }
        Ok(HEADER_LEN + len)
    }
}

/// The header at the start of `bytes`, or `None` if fewer than [`HEADER_LEN`] bytes are there.
///
/// # Errors
/// [`Error::XsPayloadTooLong`] if the header claims more than [`XENSTORE_PAYLOAD_MAX`] payload
/// bytes: a protocol violation after which the stream cannot be trusted.
pub fn parse_header(bytes: &[u8]) -> Result<Option<XsdSockmsg>> {
    let Ok((header, _)) = XsdSockmsg::read_from_prefix(bytes) else {
        return Ok(None);
    };
    if header.len as usize > XENSTORE_PAYLOAD_MAX {
        return Err(Error::XsPayloadTooLong {
            len: u64::from(header.len),
        });
    }
    Ok(Some(header))
}

/// One whole message at the start of `buf` (bytes received so far): its header, its payload and
/// the bytes it takes; `None` if the message is not complete yet.
///
/// # Errors
/// As [`parse_header`].
pub fn split_message(buf: &[u8]) -> Result<Option<(XsdSockmsg, &[u8], usize)>> {
    let Some(header) = parse_header(buf)? else {
        return Ok(None);
    };
    let end = HEADER_LEN + header.len as usize;
    Ok(buf.get(HEADER_LEN..end).map(|payload| (header, payload, end)))
}

/// What an incoming message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// `XS_WATCH_EVENT`: a watched node changed (or the watch was registered).
    WatchEvent {
        /// The node that changed.
        path: &'a [u8],
        /// The watch's token.
        token: &'a [u8],
    },
    /// Any other known type: a reply to some request (match it with [`reply_result`]).
    Reply,
}

/// Tells a watch event from a reply.
///
/// # Errors
/// [`Error::XsUnknownType`] for a type number xs_wire.h does not define;
/// [`Error::XsMalformed`] for a watch event whose payload is not a path and a token.
pub fn classify<'a>(header: &XsdSockmsg, payload: &'a [u8]) -> Result<Incoming<'a>> {
    match XsdSockmsgType::from_wire(header.type_) {
        None => Err(Error::XsUnknownType { ty: header.type_ }),
        Some(XsdSockmsgType::WatchEvent) => {
            let mut parts = payload.split(|&b| b == 0);
            match (parts.next(), parts.next()) {
                // Two NUL-terminated strings: "path\0token\0" (the token may be empty).
                (Some(path), Some(token)) if payload.ends_with(&[0]) && !path.is_empty() => {
                    Ok(Incoming::WatchEvent { path, token })
                }
                _ => Err(Error::XsMalformed {
                    what: "watch event without a path and a token",
                }),
            }
        }
        Some(_) => Ok(Incoming::Reply),
    }
}

/// Whether the message `header` + `payload` answers request `req_id` of type `expected`: the
/// reply's payload, or the error name of an `XS_ERROR` reply.
///
/// # Errors
/// [`Error::XsUnexpectedReply`] if the message carries another request id, or a type that is
/// neither `expected` nor `XS_ERROR`.
pub fn reply_result<'a>(
    header: &XsdSockmsg,
    payload: &'a [u8],
    expected: XsdSockmsgType,
    req_id: u32,
) -> Result<core::result::Result<&'a [u8], &'a [u8]>> {
    let ty = XsdSockmsgType::from_wire(header.type_);
    match ty {
        _ if header.req_id != req_id => {}
        Some(XsdSockmsgType::Error) => return Ok(Err(first_string(payload))),
        Some(t) if t == expected => return Ok(Ok(payload)),
        _ => {}
    }
    Err(Error::XsUnexpectedReply {
        expected_type: expected as u32,
        expected_id: req_id,
        got_type: header.type_,
        got_id: header.req_id,
    })
}

/// The NUL-separated strings of a payload (a directory listing, a permission list), without the
/// terminating NUL's empty tail; an empty payload has none.
pub fn strings(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = payload.strip_suffix(&[0]).unwrap_or(payload);
    body.split(|&b| b == 0).filter(move |_| !body.is_empty())
}

/// The payload up to its first NUL (a single-string reply: an error name, a path, a number).
pub fn first_string(payload: &[u8]) -> &[u8] {
    payload.split(|&b| b == 0).next().unwrap_or_default()
}

/// The transaction id of an `XS_TRANSACTION_START` reply: a non-zero decimal `u32`, or `None`.
pub fn transaction_id(payload: &[u8]) -> Option<u32> {
    let s = first_string(payload);
    if s.is_empty() || s.len() > 10 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = s
        .iter()
        .try_fold(0u32, |n, &d| n.checked_mul(10)?.checked_add(u32::from(d - b'0')))?;
    (n != 0).then_some(n)
}

/// The table entry of the error named `name` (the payload of an `XS_ERROR` reply), if it is one
/// of xs_wire.h's.
pub fn xsd_error(name: &[u8]) -> Option<&'static XsdError> {
    XSD_ERRORS.iter().find(|e| e.name.as_bytes() == name)
}

#[cfg(test)]
mod tests {
    extern crate alloc;
    use alloc::vec::Vec;

    use super::*;

    fn encode(r: Request<'_>) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        let n = r.encode(7, 3, &mut v)?;
        assert_eq!(n, v.len());
        Ok(v)
    }

    #[test]
    fn requests_frame_as_header_and_nul_terminated_strings() {
        let m = encode(Request::Write {
            path: "/a/b",
            value: b"xyz",
        })
        .unwrap();
        let (h, payload, used) = split_message(&m).unwrap().unwrap();
        assert_eq!(
            (h.type_, h.req_id, h.tx_id, h.len, used),
            (XsdSockmsgType::Write as u32, 7, 3, 8, m.len())
        );
        assert_eq!(payload, b"/a/b\0xyz");
        let m = encode(Request::Watch {
            path: "/p",
            token: "t",
        })
        .unwrap();
        assert_eq!(&m[HEADER_LEN..], b"/p\0t\0");
        let m = encode(Request::SetPerms {
            path: "/p",
            perms: &["n0", "r1"],
        })
        .unwrap();
        assert_eq!(&m[HEADER_LEN..], b"/p\0n0\0r1\0");
        assert_eq!(
            &encode(Request::GetDomainPath { domid: 65535 }).unwrap()[HEADER_LEN..],
            b"65535\0"
        );
        assert_eq!(
            &encode(Request::GetDomainPath { domid: 0 }).unwrap()[HEADER_LEN..],
            b"0\0"
        );
        assert_eq!(&encode(Request::TransactionStart).unwrap()[HEADER_LEN..], b"\0");
        assert_eq!(
            &encode(Request::TransactionEnd { commit: false }).unwrap()[HEADER_LEN..],
            b"F\0"
        );
    }

    #[test]
    fn bad_arguments_are_refused_before_anything_is_written() {
        let mut v = Vec::new();
        let r = Request::Read { path: "/a\0/b" };
        assert_eq!(r.encode(1, 0, &mut v), Err(Error::XsNulInArgument));
        let big = [b'x'; XENSTORE_PAYLOAD_MAX];
        let w = Request::Write {
            path: "/a",
            value: &big,
        };
        assert_eq!(w.encode(1, 0, &mut v), Err(Error::XsPayloadTooLong { len: 4099 }));
        assert!(v.is_empty());
        // The largest payload that fits.
        let w = Request::Write {
            path: "/a",
            value: &big[..XENSTORE_PAYLOAD_MAX - 3],
        };
        assert_eq!(w.encode(1, 0, &mut v), Ok(MAX_MESSAGE));
    }

    #[test]
    fn headers_claiming_too_much_are_refused_and_partial_messages_wait() {
        let h = XsdSockmsg {
            type_: XsdSockmsgType::Read as u32,
            req_id: 1,
            tx_id: 0,
            len: XENSTORE_PAYLOAD_MAX as u32 + 1,
        };
        assert_eq!(
            split_message(h.as_bytes()),
            Err(Error::XsPayloadTooLong { len: 4097 })
        );
        let m = encode(Request::Read { path: "/x" }).unwrap();
        assert_eq!(split_message(&m[..HEADER_LEN - 1]), Ok(None));
        assert_eq!(split_message(&m[..m.len() - 1]), Ok(None));
        let mut two = m.clone();
        two.extend_from_slice(&m);
        let (_, _, used) = split_message(&two).unwrap().unwrap();
        assert_eq!(used, m.len(), "one message at a time");
    }

    #[test]
    fn incoming_messages_are_classified_and_matched_to_their_request() {
        let hdr = |ty: u32, id: u32, len: usize| XsdSockmsg {
            type_: ty,
            req_id: id,
            tx_id: 0,
            len: len as u32,
        };
        let ev = b"/a/b\0tok\0";
        assert_eq!(
            classify(&hdr(XsdSockmsgType::WatchEvent as u32, 0, ev.len()), ev),
            Ok(Incoming::WatchEvent {
                path: b"/a/b",
                token: b"tok"
            })
        );
        for bad in [&b""[..], b"/a/b", b"/a/b\0tok", b"\0tok\0"] {
            assert!(matches!(
                classify(&hdr(XsdSockmsgType::WatchEvent as u32, 0, bad.len()), bad),
                Err(Error::XsMalformed { .. })
            ));
        }
        assert_eq!(
            classify(&hdr(20, 1, 0), b""),
            Err(Error::XsUnknownType { ty: 20 })
        );
        let read = XsdSockmsgType::Read;
        let ok = hdr(read as u32, 5, 2);
        assert_eq!(classify(&ok, b"v\0"), Ok(Incoming::Reply));
        assert_eq!(reply_result(&ok, b"v\0", read, 5), Ok(Ok(&b"v\0"[..])));
        let err = hdr(XsdSockmsgType::Error as u32, 5, 7);
        assert_eq!(reply_result(&err, b"ENOENT\0", read, 5), Ok(Err(&b"ENOENT"[..])));
        assert_eq!(
            xsd_error(b"ENOENT").map(|e| e.errnum),
            Some(crate::abi::errno::ENOENT)
        );
        assert!(matches!(
            reply_result(&ok, b"", read, 6),
            Err(Error::XsUnexpectedReply {
                expected_id: 6,
                got_id: 5,
                ..
            })
        ));
        assert!(matches!(
            reply_result(&ok, b"", XsdSockmsgType::Write, 5),
            Err(Error::XsUnexpectedReply { .. })
        ));
    }

    #[test]
    fn payload_helpers() {
        assert_eq!(strings(b"a\0bc\0").collect::<Vec<_>>(), [&b"a"[..], b"bc"]);
        assert_eq!(strings(b"").count(), 0);
        assert_eq!(strings(b"\0").count(), 0);
        assert_eq!(first_string(b"OK\0"), b"OK");
        assert_eq!(transaction_id(b"17\0"), Some(17));
        for bad in [&b"0\0"[..], b"", b"-1", b"12a", b"4294967296", b"99999999999"] {
            assert_eq!(transaction_id(bad), None, "{bad:?}");
        }
        assert_eq!(transaction_id(b"4294967295"), Some(u32::MAX));
    }
}
