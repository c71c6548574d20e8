//! xenbus key parsing on both sides, against values a hostile peer writes into XenStore:
//!
//! - guest side (`frontends/src/xen/xenbus.rs`, `netfront.rs`): `parse_number`, `parse_flag`,
//!   `parse_mac`, `is_unicast_mac`, and the state numbers;
//! - backend side (`backends/src/xen/xenbus.rs` `Frontend`, and blkback's and netback's
//!   `frontend_reads` and `ring_keys`, through their `fuzzing` entry points): the frontend's
//!   directory as the backend reads it, round by round.
//!
//! Invariants: a parsed value round-trips (a number is its digits without leading zeros or
//! surrounding whitespace, at most 20 of them; a MAC prints back as its text); what is accepted
//! is exactly what the grammar allows; the backend reads at most the keys its protocol names
//! (bounded rounds, no path separators, a ring order's worth of `ring-ref<i>`), and accepts a
//! frontend only with a supported protocol, an order up to 4, one grant reference per ring page
//! and an event channel, all of which fit 32 bits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pvkit_backends::xen::xenbus::Frontend;
use pvkit_backends::xen::{blkback, netback};
use pvkit_frontends::xen::netfront::{is_unicast_mac, parse_mac};
use pvkit_frontends::xen::xenbus::{MAX_NUMBER_DIGITS, parse_flag, parse_number};
use pvkit_fuzz::Input;
use ring_protocol::abi::xenbus::XenbusState;

/// The grammar `parse_number` implements, written independently.
fn number_model(v: &[u8]) -> Option<u64> {
    let d = v.trim_ascii();
    if d.is_empty() || d.len() > MAX_NUMBER_DIGITS || !d.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(d).ok()?.parse().ok()
}

/// The backend's grammar: decimal, or hexadecimal after `0x`, trailing NULs and whitespace allowed.
fn backend_number_model(v: &str) -> Option<u64> {
    let v = v.trim_end_matches('\0').trim();
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

const KEYS: [&str; 14] = [
    "protocol",
    "ring-page-order",
    "ring-ref",
    "ring-ref0",
    "ring-ref1",
    "ring-ref3",
    "ring-ref15",
    "event-channel",
    "request-rx-copy",
    "multi-queue-num-queues",
    "tx-ring-ref",
    "rx-ring-ref",
    "feature-persistent",
    "ring-ref16",
];

const VALUES: [&str; 12] = [
    "0",
    "1",
    "4",
    "5",
    "0x10",
    "4294967296",
    "x86_64-abi",
    "x86_32-abi",
    "",
    " 7\0",
    "-1",
    "18446744073709551615",
];

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    // Guest side: one value of any bytes.
    let v = input.chunk(40);
    let n = parse_number(v);
    assert_eq!(n, number_model(v), "parse_number({v:?})");
    if let Some(n) = n {
        let digits = v.trim_ascii();
        let stripped = std::str::from_utf8(digits)
            .expect("digits")
            .trim_start_matches('0');
        let want = if stripped.is_empty() { "0" } else { stripped };
        assert_eq!(n.to_string(), want, "round trip of {v:?}");
    }
    assert_eq!(
        parse_flag(v),
        n.and_then(|n| match n {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        })
    );
    if let Some(n) = n
        && let Some(s) = XenbusState::from_number(n)
    {
        assert_eq!(s as u64, n, "state number round trip");
    }
    if let Ok(s) = std::str::from_utf8(v) {
        if let Some(mac) = parse_mac(s) {
            let printed: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(
                printed.join(":"),
                s.trim().to_ascii_lowercase(),
                "MAC round trip of {s:?}"
            );
            assert_eq!(is_unicast_mac(mac), mac[0] & 1 == 0 && mac != [0; 6]);
        } else {
            let t = s.trim();
            let groups: Vec<&str> = t.split(':').collect();
            assert!(
                groups.len() != 6
                    || groups
                        .iter()
                        .any(|g| g.len() != 2 || !g.bytes().all(|c| c.is_ascii_hexdigit())),
                "a MAC refused: {s:?}"
            );
        }
    }

    // Backend side: a frontend directory of chosen keys and values, read as the backend reads it.
    let mut dir: Vec<(String, String)> = Vec::new();
    for _ in 0..input.u8() % 12 {
        let k = KEYS[input.below(KEYS.len())].to_string();
        let v = if input.bool() {
            VALUES[input.below(VALUES.len())].to_string()
        } else {
            String::from_utf8_lossy(input.chunk(24)).into_owned()
        };
        dir.push((k, v));
    }
    let front = Frontend::from_keys(dir.clone());
    for (k, v) in &dir {
        let first = front.get(k).expect("present");
        assert_eq!(
            front.number(k).ok(),
            backend_number_model(first),
            "number({k}) of {v:?}"
        );
    }
    // The rounds of reads blkback makes, as `read_front` drives them: only keys it names, at most
    // a 16-page ring's worth.
    let mut so_far = Frontend::default();
    let mut asked: Vec<String> = Vec::new();
    for _ in 0..4 {
        let new: Vec<String> = blkback::fuzzing::frontend_reads(&so_far)
            .into_iter()
            .filter(|k| !asked.contains(k))
            .collect();
        if new.is_empty() {
            break;
        }
        for k in new {
            assert!(!k.is_empty() && !k.contains('/'), "key {k:?}");
            assert!(
                ["protocol", "ring-page-order", "ring-ref", "event-channel"].contains(&k.as_str())
                    || k.strip_prefix("ring-ref")
                        .and_then(|i| i.parse::<u32>().ok())
                        .is_some_and(|i| i < 16),
                "blkback asks for {k}"
            );
            asked.push(k);
        }
        let read: Vec<(String, String)> = dir.iter().filter(|(k, _)| asked.contains(k)).cloned().collect();
        so_far = Frontend::from_keys(read);
    }
    assert!(asked.len() <= 4 + 16, "{} keys read", asked.len());
    if let Ok((refs, port)) = blkback::fuzzing::ring_keys(&front) {
        let order = front.opt_number("ring-page-order").expect("parsed").unwrap_or(0);
        assert!(order <= 4, "ring order {order} accepted");
        assert_eq!(refs.len(), 1 << order, "one grant reference per ring page");
        let p = front.get("protocol");
        assert!(p.is_none_or(|p| p == "x86_64-abi"), "protocol {p:?} accepted");
        assert_eq!(u64::from(port), front.number("event-channel").expect("parsed"));
        for (i, r) in refs.iter().enumerate() {
            let key = if order == 0 && front.get("ring-ref").is_some() {
                "ring-ref".to_string()
            } else {
                format!("ring-ref{i}")
            };
            assert_eq!(u64::from(*r), front.number(&key).expect("parsed"), "{key}");
        }
    }
    assert!(
        netback::fuzzing::frontend_reads()
            .iter()
            .all(|k| !k.contains('/'))
    );
    if let Ok((tx, rx, port)) = netback::fuzzing::ring_keys(&front) {
        assert_eq!(
            front.opt_number("request-rx-copy").ok(),
            Some(Some(1)),
            "rx-copy requested"
        );
        assert!(
            front
                .opt_number("multi-queue-num-queues")
                .expect("parsed")
                .is_none_or(|n| n <= 1)
        );
        assert_eq!(u64::from(tx), front.number("tx-ring-ref").expect("parsed"));
        assert_eq!(u64::from(rx), front.number("rx-ring-ref").expect("parsed"));
        assert_eq!(u64::from(port), front.number("event-channel").expect("parsed"));
    }
});
