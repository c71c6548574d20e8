//! Parser for the guest's machine-readable console records (`PVKIT ...` lines).
//!
//! The format is the guest <-> xtask contract in `guest-kernel/README.md`. Every record is one line that
//! starts with `PVKIT `; anything else on the console is free text and is passed through untouched.

use std::fmt;

/// `key=value` pairs of a record, in the order the guest printed them.
///
/// Values may be quoted (`cmdline="a b"`); a bare word that follows a pair without its own `=` is taken
/// as part of the previous value (`name=Page fault`), so free-text values survive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(pub Vec<(String, String)>);

impl Fields {
    /// Parses `a=1 b="x y" c=z w` into `[(a,1), (b,"x y"), (c,"z w")]`.
    pub fn parse(text: &str) -> Self {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut rest = text.trim();
        while !rest.is_empty() {
            // One whitespace-separated token, except that a quoted value runs to its closing quote.
            let (token, after) = match rest.find('=') {
                Some(eq) if !rest[..eq].contains(char::is_whitespace) && rest[eq + 1..].starts_with('"') => {
                    let body = &rest[eq + 2..];
                    match body.find('"') {
                        Some(close) => (&rest[..eq + 2 + close + 1], &body[close + 1..]),
                        None => (rest, ""),
                    }
                }
                _ => match rest.find(char::is_whitespace) {
                    Some(ws) => (&rest[..ws], &rest[ws..]),
                    None => (rest, ""),
                },
            };
            rest = after.trim_start();
            match token.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    let v = v
                        .strip_prefix('"')
                        .map_or(v, |v| v.strip_suffix('"').unwrap_or(v));
                    out.push((k.to_owned(), v.to_owned()));
                }
                _ => match out.last_mut() {
                    Some((_, v)) => {
                        v.push(' ');
                        v.push_str(token);
                    }
                    None => out.push((String::new(), token.to_owned())),
                },
            }
        }
        Fields(out)
    }

    /// The first value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The first value for `key` as an integer, accepting decimal or `0x` hex (with `_` separators).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(parse_u64)
    }
}

impl fmt::Display for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            if k.is_empty() {
                write!(f, "{v}")?;
            } else {
                write!(f, "{k}={v}")?;
            }
        }
        Ok(())
    }
}

/// Parses `123`, `0x7b` or `0xdead_0000_0000`.
pub fn parse_u64(s: &str) -> Option<u64> {
    let s: String = s.chars().filter(|&c| c != '_').collect();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// One `PVKIT` console record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `PVKIT BOOT platform=.. hypervisor=.. mem_mib=.. cmdline="..."`
    Boot(Fields),
    /// `PVKIT TEST <name> START`
    TestStart { name: String },
    /// `PVKIT TEST <name> PASS [key=value ...]`
    TestPass { name: String, fields: Fields },
    /// `PVKIT TEST <name> FAIL <reason>`
    TestFail { name: String, reason: String },
    /// `PVKIT INFO <text>`
    Info(String),
    /// `PVKIT EXCEPTION vector=.. name=.. error=.. rip=.. cr2=.. ...`
    Exception(Fields),
    /// `PVKIT PANIC at <file>:<line>:<col>: <message>`
    Panic { location: String, message: String },
    /// `PVKIT SUMMARY passed=<n> failed=<m>`
    Summary { passed: u64, failed: u64 },
    /// `PVKIT EXIT <code>`
    Exit { code: u64 },
    /// `PVKIT ERROR <text>` (unknown test, bad command line, ...)
    Error(String),
    /// `PVKIT PERF dev=.. pattern=.. qd=.. mode=.. ops=.. bytes=.. guest_us=.. notifies=.. irqs=..
    /// copied_bytes=.. [label fields]`: one measured workload phase.
    Perf(Fields),
    /// A `PVKIT` line this parser does not understand (kept so it can be reported, not lost).
    Malformed(String),
}

impl Record {
    /// Parses one console line. `None` for lines that are not `PVKIT` records.
    pub fn parse(line: &str) -> Option<Record> {
        let line = line.trim_end_matches(['\r', '\n']);
        let body = line.trim_start().strip_prefix("PVKIT ")?;
        let malformed = || Some(Record::Malformed(line.to_owned()));
        let (kind, rest) = body.split_once(' ').unwrap_or((body, ""));
        let rest = rest.trim();
        Some(match kind {
            "BOOT" => Record::Boot(Fields::parse(rest)),
            "TEST" => {
                let mut parts = rest.splitn(3, ' ');
                let (Some(name), Some(verdict)) = (parts.next(), parts.next()) else {
                    return malformed();
                };
                let tail = parts.next().unwrap_or("").trim();
                let name = name.to_owned();
                match verdict {
                    "START" => Record::TestStart { name },
                    "PASS" => Record::TestPass {
                        name,
                        fields: Fields::parse(tail),
                    },
                    "FAIL" => Record::TestFail {
                        name,
                        reason: tail.to_owned(),
                    },
                    _ => return malformed(),
                }
            }
            "INFO" => Record::Info(rest.to_owned()),
            "EXCEPTION" => Record::Exception(Fields::parse(rest)),
            "PANIC" => {
                let rest = rest.strip_prefix("at ").unwrap_or(rest);
                // The location is `file:line:col`; the message follows the next ": ".
                match rest.split_once(": ") {
                    Some((location, message)) => Record::Panic {
                        location: location.to_owned(),
                        message: message.to_owned(),
                    },
                    None => Record::Panic {
                        location: String::new(),
                        message: rest.to_owned(),
                    },
                }
            }
            "SUMMARY" => {
                let f = Fields::parse(rest);
                match (f.get_u64("passed"), f.get_u64("failed")) {
                    (Some(passed), Some(failed)) => Record::Summary { passed, failed },
                    _ => return malformed(),
                }
            }
            "EXIT" => match parse_u64(rest) {
                Some(code) => Record::Exit { code },
                None => return malformed(),
            },
            "ERROR" => Record::Error(rest.to_owned()),
            "PERF" => Record::Perf(Fields::parse(rest)),
            _ => return malformed(),
        })
    }
}

/// Everything a run's console said, in order, with what xtask needs pre-extracted.
#[derive(Debug, Default, Clone)]
pub struct Transcript {
    pub records: Vec<Record>,
    /// Number of console lines of any kind (PVKIT or not).
    pub lines: usize,
}

impl Transcript {
    pub fn push_line(&mut self, line: &str) -> Option<&Record> {
        self.lines += 1;
        let rec = Record::parse(line)?;
        self.records.push(rec);
        self.records.last()
    }

    pub fn boot(&self) -> Option<&Fields> {
        self.records.iter().find_map(|r| match r {
            Record::Boot(f) => Some(f),
            _ => None,
        })
    }

    /// The final verdict the guest gave for `name`, if any.
    pub fn verdict(&self, name: &str) -> Option<&Record> {
        self.records.iter().rev().find(
            |r| matches!(r, Record::TestPass { name: n, .. } | Record::TestFail { name: n, .. } if n == name),
        )
    }

    pub fn passed(&self, name: &str) -> bool {
        matches!(self.verdict(name), Some(Record::TestPass { .. }))
    }

    pub fn failures(&self) -> impl Iterator<Item = (&str, &str)> {
        self.records.iter().filter_map(|r| match r {
            Record::TestFail { name, reason } => Some((name.as_str(), reason.as_str())),
            _ => None,
        })
    }

    pub fn errors(&self) -> impl Iterator<Item = &str> {
        self.records.iter().filter_map(|r| match r {
            Record::Error(e) | Record::Malformed(e) => Some(e.as_str()),
            _ => None,
        })
    }

    pub fn exceptions(&self) -> impl Iterator<Item = &Fields> {
        self.records.iter().filter_map(|r| match r {
            Record::Exception(f) => Some(f),
            _ => None,
        })
    }

    pub fn panics(&self) -> impl Iterator<Item = (&str, &str)> {
        self.records.iter().filter_map(|r| match r {
            Record::Panic { location, message } => Some((location.as_str(), message.as_str())),
            _ => None,
        })
    }

    pub fn summary(&self) -> Option<(u64, u64)> {
        self.records.iter().rev().find_map(|r| match r {
            Record::Summary { passed, failed } => Some((*passed, *failed)),
            _ => None,
        })
    }

    pub fn exit_record(&self) -> Option<u64> {
        self.records.iter().rev().find_map(|r| match r {
            Record::Exit { code } => Some(*code),
            _ => None,
        })
    }

    /// Tests that started but never reported a verdict (the guest died or hung inside them).
    pub fn unfinished(&self) -> Vec<&str> {
        let mut open: Vec<&str> = Vec::new();
        for r in &self.records {
            match r {
                Record::TestStart { name } => open.push(name),
                Record::TestPass { name, .. } | Record::TestFail { name, .. } => open.retain(|n| n != name),
                _ => {}
            }
        }
        open
    }

    /// The `PVKIT PERF` records, in order (the k-th belongs to the k-th phase marker).
    pub fn perfs(&self) -> impl Iterator<Item = &Fields> {
        self.records.iter().filter_map(|r| match r {
            Record::Perf(f) => Some(f),
            _ => None,
        })
    }

    /// `vendor:device` ids from `PVKIT INFO pci <bdf> <vvvv:dddd> ...` lines.
    pub fn pci_ids(&self) -> Vec<String> {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::Info(text) => {
                    let mut words = text.split_whitespace();
                    (words.next() == Some("pci"))
                        .then(|| words.find(|w| is_pci_id(w)).map(str::to_lowercase))?
                }
                _ => None,
            })
            .collect()
    }
}

/// `vvvv:dddd` in hex.
pub fn is_pci_id(w: &str) -> bool {
    let b = w.as_bytes();
    b.len() == 9 && b[4] == b':' && b.iter().enumerate().all(|(i, c)| i == 4 || c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_records_are_ignored() {
        assert_eq!(Record::parse("hello world"), None);
        assert_eq!(Record::parse("PVKITTEST x PASS"), None);
        assert_eq!(Record::parse(""), None);
    }

    #[test]
    fn boot_line_with_quoted_cmdline() {
        let r = Record::parse(
            "PVKIT BOOT platform=pvh hypervisor=none mem_mib=127 cmdline=\"tests=hello,pci pci.expect=8086:29c0\"\r",
        )
        .unwrap();
        let Record::Boot(f) = r else {
            panic!("not a boot record: {r:?}")
        };
        assert_eq!(f.get("platform"), Some("pvh"));
        assert_eq!(f.get("hypervisor"), Some("none"));
        assert_eq!(f.get_u64("mem_mib"), Some(127));
        assert_eq!(f.get("cmdline"), Some("tests=hello,pci pci.expect=8086:29c0"));
    }

    #[test]
    fn test_verdicts() {
        assert_eq!(
            Record::parse("PVKIT TEST heap START"),
            Some(Record::TestStart { name: "heap".into() })
        );
        let Some(Record::TestPass { name, fields }) = Record::parse("PVKIT TEST timer PASS ticks=99 hz=100")
        else {
            panic!()
        };
        assert_eq!(name, "timer");
        assert_eq!(fields.get_u64("ticks"), Some(99));
        assert_eq!(fields.get_u64("hz"), Some(100));
        assert_eq!(
            Record::parse("PVKIT TEST pci FAIL expected 8086:29c0 not found"),
            Some(Record::TestFail {
                name: "pci".into(),
                reason: "expected 8086:29c0 not found".into()
            })
        );
        assert_eq!(
            Record::parse("PVKIT TEST hello PASS"),
            Some(Record::TestPass {
                name: "hello".into(),
                fields: Fields::default()
            })
        );
        assert!(matches!(
            Record::parse("PVKIT TEST hello MAYBE"),
            Some(Record::Malformed(_))
        ));
        assert!(matches!(Record::parse("PVKIT TEST"), Some(Record::Malformed(_))));
    }

    #[test]
    fn exception_with_spaces_in_name_and_hex_values() {
        let Some(Record::Exception(f)) = Record::parse(
            "PVKIT EXCEPTION vector=14 name=Page fault error=0x2 rip=0x10203a cr2=0xdead_0000_0000 rsp=0x1ff0",
        ) else {
            panic!()
        };
        assert_eq!(f.get_u64("vector"), Some(14));
        assert_eq!(f.get("name"), Some("Page fault"));
        assert_eq!(f.get_u64("error"), Some(2));
        assert_eq!(f.get_u64("cr2"), Some(0xdead_0000_0000));
        assert_eq!(f.get_u64("rsp"), Some(0x1ff0));
    }

    #[test]
    fn panic_summary_exit_error() {
        assert_eq!(
            Record::parse(
                "PVKIT PANIC at guest-kernel/src/tests.rs:42:9: deliberate panic from fault-panic test"
            ),
            Some(Record::Panic {
                location: "guest-kernel/src/tests.rs:42:9".into(),
                message: "deliberate panic from fault-panic test".into()
            })
        );
        assert_eq!(
            Record::parse("PVKIT SUMMARY passed=4 failed=1"),
            Some(Record::Summary { passed: 4, failed: 1 })
        );
        assert!(matches!(
            Record::parse("PVKIT SUMMARY passed=x"),
            Some(Record::Malformed(_))
        ));
        assert_eq!(Record::parse("PVKIT EXIT 0"), Some(Record::Exit { code: 0 }));
        assert_eq!(Record::parse("PVKIT EXIT 1"), Some(Record::Exit { code: 1 }));
        assert_eq!(
            Record::parse("PVKIT ERROR unknown test 'xyz'"),
            Some(Record::Error("unknown test 'xyz'".into()))
        );
        assert!(matches!(
            Record::parse("PVKIT WHATEVER 1"),
            Some(Record::Malformed(_))
        ));
    }

    #[test]
    fn transcript_tracks_verdicts_and_unfinished_tests() {
        let mut t = Transcript::default();
        for l in [
            "noise from firmware",
            "PVKIT BOOT platform=pvh hypervisor=tcg mem_mib=127 cmdline=\"\"",
            "PVKIT TEST hello START",
            "PVKIT TEST hello PASS",
            "PVKIT TEST pci START",
            "PVKIT INFO pci 00:00.0 8086:29c0 class=0x060000",
            "PVKIT INFO pci 00:01.0 1234:11E8 class=0x00ff00 bar0=0xfe000000",
            "PVKIT INFO something else 1234:5678",
            "PVKIT TEST pci FAIL missing 1af4:1005",
            "PVKIT TEST fault-pagefault START",
            "PVKIT EXCEPTION vector=14 cr2=0x1000",
            "PVKIT SUMMARY passed=1 failed=2",
            "PVKIT EXIT 1",
        ] {
            t.push_line(l);
        }
        assert_eq!(t.lines, 13);
        assert!(t.boot().is_some());
        assert!(t.passed("hello"));
        assert!(!t.passed("pci"));
        assert_eq!(
            t.failures().collect::<Vec<_>>(),
            vec![("pci", "missing 1af4:1005")]
        );
        assert_eq!(t.unfinished(), vec!["fault-pagefault"]);
        assert_eq!(t.pci_ids(), vec!["8086:29c0", "1234:11e8"]);
        assert_eq!(t.summary(), Some((1, 2)));
        assert_eq!(t.exit_record(), Some(1));
        assert_eq!(t.exceptions().count(), 1);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("0xdead_0000_0000"), Some(0xdead_0000_0000));
        assert_eq!(parse_u64("0XFF"), Some(255));
        assert_eq!(parse_u64("1_000"), Some(1000));
        assert_eq!(parse_u64("-1"), None);
        assert_eq!(parse_u64("0x"), None);
        assert!(is_pci_id("8086:29c0"));
        assert!(!is_pci_id("8086:29c"));
        assert!(!is_pci_id("00:01.0"));
    }
}
