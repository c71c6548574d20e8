//! The guest kernel's test runner, the part that needs no hardware: the kernel command line, each
//! test's parameters, which tests run, and the lines the runner prints. The kernel keeps only the
//! registry of tests (name, parameters, function) and the printing; host tests cover the rest.
//!
//! Command line: `tests=<name>[,<name>...]` (default: [`DEFAULT_TESTS`](crate::workload::DEFAULT_TESTS))
//! and `<test>.<param>=<value>` tokens, separated by whitespace. Output per test:
//! `PVKIT TEST <name> START`, then `PASS [key=value ...]` or `FAIL <reason>`; the run ends with
//! `PVKIT SUMMARY passed=<n> failed=<m>` and `PVKIT EXIT <0|1>` ([`Summary`]). Throughput phases
//! print one `PVKIT PERF` line each ([`perf_line`]).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::workload::{Perf, Report};

/// A parsed command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cmdline<'a> {
    /// `tests=` if given (in order, duplicates kept).
    pub tests: Option<Vec<&'a str>>,
    /// `(test, param, value)` from `test.param=value` tokens.
    pub params: Vec<(&'a str, &'a str, &'a str)>,
    /// One message per token that is not understood.
    pub errors: Vec<String>,
}

/// Parses `line`. Checking names against the tests that exist is [`plan`]'s job.
pub fn parse_cmdline(line: &str) -> Cmdline<'_> {
    let mut out = Cmdline::default();
    for token in line.split_whitespace() {
        let Some((key, value)) = token.split_once('=') else {
            out.errors.push(format!("unknown option '{token}'"));
            continue;
        };
        if key == "tests" {
            let list: Vec<&str> = value.split(',').filter(|s| !s.is_empty()).collect();
            if out.tests.is_some() {
                out.errors
                    .push(format!("option 'tests=' given twice ('{token}')"));
            } else if list.is_empty() {
                out.errors.push(format!("option '{token}' names no test"));
            } else {
                out.tests = Some(list);
            }
        } else if let Some((test, param)) = key
            .split_once('.')
            .filter(|(t, p)| !t.is_empty() && !p.is_empty())
        {
            out.params.push((test, param, value));
        } else {
            out.errors.push(format!("unknown option '{token}'"));
        }
    }
    out
}

/// Parses a decimal number, or says which parameter had which bad value.
///
/// # Errors
/// A message naming `test.param` and the value.
pub fn parse_u64(test: &str, param: &str, value: &str) -> Result<u64, String> {
    value
        .parse::<u64>()
        .map_err(|_| format!("{test}.{param}='{value}' is not a decimal number"))
}

/// Parameters of one test, from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params<'a> {
    test: &'static str,
    items: Vec<(&'a str, &'a str)>,
}

impl<'a> Params<'a> {
    /// The parameters `items` (`(param, value)`, later ones win) of `test`.
    pub fn new(test: &'static str, items: Vec<(&'a str, &'a str)>) -> Self {
        Self { test, items }
    }

    /// The raw value of `param`, if given.
    pub fn get(&self, param: &str) -> Option<&'a str> {
        self.items
            .iter()
            .rev()
            .find(|(p, _)| *p == param)
            .map(|&(_, v)| v)
    }

    /// `param` as a number in `range`, or `default` when absent.
    ///
    /// # Errors
    /// A message naming `test.param` if the value is not a decimal number or outside `range`.
    pub fn u64_in(
        &self,
        param: &str,
        default: u64,
        range: core::ops::RangeInclusive<u64>,
    ) -> Result<u64, String> {
        let Some(value) = self.get(param) else {
            return Ok(default);
        };
        let n = parse_u64(self.test, param, value)?;
        if range.contains(&n) {
            Ok(n)
        } else {
            Err(format!(
                "{}.{param}={n} is outside {}..={}",
                self.test,
                range.start(),
                range.end()
            ))
        }
    }
}

/// What a test returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Passed; the text is appended to the PASS line (`key=value ...`, may be empty).
    Pass(String),
    /// Failed, with the reason.
    Fail(String),
}

impl Outcome {
    /// A pass with `extra` fields appended (a workload's exit counts, say); a failure unchanged.
    pub fn with_fields(self, extra: &str) -> Self {
        match self {
            Self::Pass(kv) if kv.is_empty() => Self::Pass(String::from(extra)),
            Self::Pass(kv) if extra.is_empty() => Self::Pass(kv),
            Self::Pass(kv) => Self::Pass(format!("{kv} {extra}")),
            fail => fail,
        }
    }
}

/// A test as the runner knows it: its name and the parameters it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestSpec {
    /// Name on the command line and in the output.
    pub name: &'static str,
    /// Parameters it accepts (`<name>.<param>=`).
    pub params: &'static [&'static str],
}

/// What to run, from a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<'a> {
    /// Indices into the registry of the tests to run, in order.
    pub selected: Vec<usize>,
    /// What was wrong with the command line (nothing runs then).
    pub errors: Vec<String>,
    params: Vec<(&'a str, &'a str, &'a str)>,
}

impl<'a> Plan<'a> {
    /// The parameters given for `test`.
    pub fn params(&self, test: &'static str) -> Params<'a> {
        Params::new(
            test,
            self.params
                .iter()
                .filter(|(t, _, _)| *t == test)
                .map(|&(_, p, v)| (p, v))
                .collect(),
        )
    }
}

/// Decides what runs: the tests `line` names (or `default_tests`), each looked up in `registry`;
/// every unknown test, unknown parameter and malformed token is an error. `truncated_at` is the
/// loader's limit if the command line was cut short (an error too).
pub fn plan<'a>(
    line: &'a str,
    truncated_at: Option<usize>,
    registry: &[TestSpec],
    default_tests: &[&str],
) -> Plan<'a> {
    let parsed = parse_cmdline(line);
    let mut errors = parsed.errors;
    if let Some(max) = truncated_at {
        errors.push(format!("command line longer than {max} bytes or not UTF-8"));
    }
    let find = |name: &str| registry.iter().position(|t| t.name == name);
    let names: Vec<&str> = parsed.tests.unwrap_or_else(|| default_tests.to_vec());
    let mut selected = Vec::with_capacity(names.len());
    for n in names {
        match find(n) {
            Some(i) => selected.push(i),
            None => errors.push(format!("unknown test '{n}'")),
        }
    }
    for &(test, param, value) in &parsed.params {
        match find(test) {
            Some(i) if registry[i].params.contains(&param) => {}
            Some(_) => errors.push(format!("unknown option '{test}.{param}={value}'")),
            None => errors.push(format!(
                "unknown option '{test}.{param}={value}' (no test '{test}')"
            )),
        }
    }
    Plan {
        selected,
        errors,
        params: parsed.params,
    }
}

/// `PVKIT TEST <name> START`.
pub fn start_line(name: &str) -> impl fmt::Display + '_ {
    struct Start<'n>(&'n str);
    impl fmt::Display for Start<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "PVKIT TEST {} START", self.0)
        }
    }
    Start(name)
}

/// `PVKIT TEST <name> PASS [fields]` or `PVKIT TEST <name> FAIL <reason>`.
pub fn verdict_line<'a>(name: &'a str, outcome: &'a Outcome) -> impl fmt::Display + 'a {
    struct Verdict<'a>(&'a str, &'a Outcome);
    impl fmt::Display for Verdict<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.1 {
                Outcome::Pass(kv) if kv.is_empty() => write!(f, "PVKIT TEST {} PASS", self.0),
                Outcome::Pass(kv) => write!(f, "PVKIT TEST {} PASS {kv}", self.0),
                Outcome::Fail(reason) => write!(f, "PVKIT TEST {} FAIL {reason}", self.0),
            }
        }
    }
    Verdict(name, outcome)
}

/// The end of a run: `PVKIT SUMMARY passed=<n> failed=<m>` and `PVKIT EXIT <code>` (two lines, no
/// trailing newline). Formats without allocating, for the fatal path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Tests passed.
    pub passed: u32,
    /// Tests failed (and command-line errors).
    pub failed: u32,
}

impl Summary {
    /// 0 if something ran and nothing failed, else 1.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.failed > 0 || self.passed == 0)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PVKIT SUMMARY passed={} failed={}\nPVKIT EXIT {}",
            self.passed,
            self.failed,
            self.exit_code()
        )
    }
}

/// A workload report's fields: `ops bytes guest_us notifies irqs copied_bytes` and the latency
/// percentiles (`lat_p50_ns lat_p99_ns lat_max_ns`).
pub fn report_fields(r: &Report) -> String {
    format!(
        "ops={} bytes={} guest_us={} notifies={} irqs={} copied_bytes={} {}",
        r.ops,
        r.bytes,
        r.guest_us,
        r.counters.notifications,
        r.counters.interrupts,
        r.counters.bytes_copied,
        r.latency.fields()
    )
}

/// `PVKIT PERF dev=<dev> pattern=<p> qd=<n> mode=<m> <report fields> <exits> <label>`: one phase.
pub fn perf_line(dev: &str, perf: &Perf, mode: &str, exits: &str, label: &str) -> String {
    format!(
        "PVKIT PERF dev={dev} pattern={} qd={} mode={mode} {} {exits} {label}",
        perf.pattern,
        perf.qd,
        report_fields(&perf.report)
    )
}

/// A MAC address as `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use alloc::string::ToString;
    use alloc::vec;

    use super::*;
    use crate::counters::Counters;
    use crate::workload::latency::Latency;

    const REGISTRY: &[TestSpec] = &[
        TestSpec {
            name: "hello",
            params: &["mem_mib"],
        },
        TestSpec {
            name: "blk-integrity@xen-blk",
            params: &["qd", "mode"],
        },
    ];

    #[test]
    fn command_line_tokens_parse_or_are_named_in_errors() {
        let c = parse_cmdline(
            "  tests=hello,,blk-integrity@xen-blk hello.mem_mib=64 a.b.c=d=e junk x= .p=1 t.=2 ",
        );
        assert_eq!(c.tests, Some(vec!["hello", "blk-integrity@xen-blk"]));
        assert_eq!(c.params, [("hello", "mem_mib", "64"), ("a", "b.c", "d=e")]);
        assert_eq!(
            c.errors,
            [
                "unknown option 'junk'",
                "unknown option 'x='",
                "unknown option '.p=1'",
                "unknown option 't.=2'"
            ]
        );
        assert_eq!(
            parse_cmdline("tests=a tests=b").errors,
            ["option 'tests=' given twice ('tests=b')"]
        );
        assert_eq!(
            parse_cmdline("tests=,").errors,
            ["option 'tests=,' names no test"]
        );
        assert_eq!(parse_cmdline(""), Cmdline::default());
    }

    #[test]
    fn a_plan_selects_known_tests_and_refuses_unknown_names_and_parameters() {
        let p = plan(
            "tests=blk-integrity@xen-blk,hello blk-integrity@xen-blk.qd=4",
            None,
            REGISTRY,
            &[],
        );
        assert_eq!((p.selected.as_slice(), p.errors.len()), (&[1, 0][..], 0));
        assert_eq!(p.params("blk-integrity@xen-blk").get("qd"), Some("4"));
        assert_eq!(p.params("hello").get("qd"), None);
        let p = plan("", None, REGISTRY, &["hello"]);
        assert_eq!(p.selected, [0], "the default list");
        let p = plan(
            "tests=hello,nope hello.qd=1 nope.x=2",
            Some(1024),
            REGISTRY,
            &["hello"],
        );
        assert_eq!(p.selected, [0]);
        assert_eq!(
            p.errors,
            [
                "command line longer than 1024 bytes or not UTF-8",
                "unknown test 'nope'",
                "unknown option 'hello.qd=1'",
                "unknown option 'nope.x=2' (no test 'nope')"
            ]
        );
    }

    #[test]
    fn parameters_are_bounded_numbers_and_the_last_one_wins() {
        let p = Params::new("t", vec![("qd", "8"), ("qd", "16"), ("ms", "x1"), ("big", "99")]);
        assert_eq!(p.u64_in("qd", 1, 1..=256), Ok(16));
        assert_eq!(p.u64_in("absent", 7, 1..=256), Ok(7));
        assert_eq!(
            p.u64_in("ms", 1, 0..=10),
            Err("t.ms='x1' is not a decimal number".into())
        );
        assert_eq!(
            p.u64_in("big", 1, 0..=10),
            Err("t.big=99 is outside 0..=10".into())
        );
    }

    #[test]
    fn result_lines_have_the_shape_the_host_parses() {
        assert_eq!(start_line("hello").to_string(), "PVKIT TEST hello START");
        let pass = Outcome::Pass("a=1".into()).with_fields("exits=3");
        assert_eq!(
            verdict_line("t", &pass).to_string(),
            "PVKIT TEST t PASS a=1 exits=3"
        );
        let empty = Outcome::Pass(String::new());
        assert_eq!(verdict_line("t", &empty).to_string(), "PVKIT TEST t PASS");
        assert_eq!(
            verdict_line("t", &empty.with_fields("x=1")).to_string(),
            "PVKIT TEST t PASS x=1"
        );
        let fail = Outcome::Fail("why".into()).with_fields("x=1");
        assert_eq!(verdict_line("t", &fail).to_string(), "PVKIT TEST t FAIL why");
        let s = Summary { passed: 3, failed: 0 };
        assert_eq!(
            (s.to_string(), s.exit_code()),
            ("PVKIT SUMMARY passed=3 failed=0\nPVKIT EXIT 0".into(), 0)
        );
        assert_eq!(Summary { passed: 0, failed: 0 }.exit_code(), 1, "nothing ran");
        assert_eq!(Summary { passed: 5, failed: 1 }.exit_code(), 1);
        let perf = Perf {
            pattern: "randread4k",
            qd: 32,
            report: Report {
                ops: 10,
                bytes: 40960,
                guest_us: 1000,
                counters: Counters {
                    notifications: 2,
                    interrupts: 3,
                    bytes_copied: 4,
                },
                latency: Latency {
                    count: 10,
                    p50_ns: 5,
                    p99_ns: 6,
                    max_ns: 7,
                },
            },
        };
        assert_eq!(
            perf_line("xen-blk", &perf, "irq", "exits=9", "vbd=51712"),
            "PVKIT PERF dev=xen-blk pattern=randread4k qd=32 mode=irq ops=10 bytes=40960 guest_us=1000 \
             notifies=2 irqs=3 copied_bytes=4 lat_p50_ns=5 lat_p99_ns=6 lat_max_ns=7 exits=9 vbd=51712"
        );
        assert_eq!(
            Mac([0, 0x16, 0x3e, 0xa, 0xb, 0xc]).to_string(),
            "00:16:3e:0a:0b:0c"
        );
    }
}
