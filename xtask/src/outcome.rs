//! The one result type of a matrix row (and of every other stage of `cargo xtask test`), and the
//! JUnit XML file written beside the result table.
//!
//! Four states, as XTF and kvm-unit-tests have them: PASS; FAIL (the guest or a host check found
//! something wrong); CRASH (the guest never reported: a triple fault, a hang killed by the timeout,
//! silence, a dead QEMU or Xen boot); SKIP with the reason (an environment this host cannot run, a
//! stage left out on request). Every row that does not pass carries the one command that
//! reproduces it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::costs::Measure;
use crate::matrix::Row;

/// How a row or stage ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
    Crash(String),
    Skip(String),
}

impl Verdict {
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail(_) => "FAIL",
            Verdict::Crash(_) => "CRASH",
            Verdict::Skip(_) => "SKIP",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Pass => None,
            Verdict::Fail(r) | Verdict::Crash(r) | Verdict::Skip(r) => Some(r),
        }
    }

    /// A failure of the run: FAIL or CRASH.
    pub fn is_bad(&self) -> bool {
        matches!(self, Verdict::Fail(_) | Verdict::Crash(_))
    }

    /// From a list of problems and, separately, whether the guest crashed (a crash wins: the
    /// problems then mostly restate that nothing was reported).
    pub fn from_problems(crash: Option<String>, problems: &[String]) -> Verdict {
        match crash {
            Some(c) if problems.is_empty() => Verdict::Crash(c),
            Some(c) => Verdict::Crash(format!("{c}; {}", problems.join("; "))),
            None if problems.is_empty() => Verdict::Pass,
            None => Verdict::Fail(problems.join("; ")),
        }
    }
}

/// The result of one matrix row.
#[derive(Debug, Clone)]
pub struct CellResult {
    pub row: Row,
    pub verdict: Verdict,
    /// Wall time of the boot (QEMU rows) or of the domain (Xen rows, dom0's clock).
    pub time: Option<Duration>,
    pub log: Option<PathBuf>,
    /// What the host checked and saw (one line each).
    pub notes: Vec<String>,
    /// The row's cost records, one per measured phase.
    pub costs: Vec<Measure>,
}

impl CellResult {
    pub fn new(row: &Row, verdict: Verdict) -> CellResult {
        CellResult {
            row: *row,
            verdict,
            time: None,
            log: None,
            notes: Vec::new(),
            costs: Vec::new(),
        }
    }

    /// The command that reruns this row alone.
    pub fn repro(&self) -> String {
        repro(&self.row)
    }
}

/// `cargo xtask test --scenario <row>`.
pub fn repro(row: &Row) -> String {
    format!("cargo xtask test --only matrix --scenario {}", row.name())
}

/// One line of the stage table of `cargo xtask test` (stages and rows alike).
#[derive(Debug, Clone)]
pub struct Line {
    pub name: String,
    pub verdict: Verdict,
    pub time: Option<Duration>,
    pub log: Option<PathBuf>,
    /// How to rerun it alone.
    pub repro: Option<String>,
    /// The JUnit class: the stage group or the row's environment.
    pub class: String,
}

/// The JUnit XML of a test run: one `testsuite`, one `testcase` per line; FAIL is `<failure>`,
/// CRASH is `<error>` (JUnit's "did not run to a verdict"), SKIP is `<skipped message=...>`.
pub fn junit(lines: &[Line], total: Duration) -> String {
    let count = |f: fn(&Verdict) -> bool| lines.iter().filter(|l| f(&l.verdict)).count();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"pvkit\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\">",
        lines.len(),
        count(|v| matches!(v, Verdict::Fail(_))),
        count(|v| matches!(v, Verdict::Crash(_))),
        count(|v| matches!(v, Verdict::Skip(_))),
        total.as_secs_f64()
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"cargo xtask test\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\">",
        lines.len(),
        count(|v| matches!(v, Verdict::Fail(_))),
        count(|v| matches!(v, Verdict::Crash(_))),
        count(|v| matches!(v, Verdict::Skip(_))),
        total.as_secs_f64()
    );
    for l in lines {
        let _ = write!(
            x,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            xml(&l.class),
            xml(&l.name),
            l.time.unwrap_or_default().as_secs_f64()
        );
        let mut body = String::new();
        match &l.verdict {
            Verdict::Pass => {}
            Verdict::Fail(why) => {
                let _ = writeln!(
                    body,
                    "      <failure message=\"{}\">{}</failure>",
                    xml(first_line(why)),
                    xml(why)
                );
            }
            Verdict::Crash(why) => {
                let _ = writeln!(
                    body,
                    "      <error type=\"crash\" message=\"{}\">{}</error>",
                    xml(first_line(why)),
                    xml(why)
                );
            }
            Verdict::Skip(why) => {
                let _ = writeln!(body, "      <skipped message=\"{}\"/>", xml(why));
            }
        }
        let mut out = String::new();
        if let Some(log) = &l.log {
            let _ = writeln!(out, "log: {}", log.display());
        }
        if let Some(r) = l.repro.as_ref().filter(|_| l.verdict.is_bad()) {
            let _ = writeln!(out, "reproduce: {r}");
        }
        if !out.is_empty() {
            let _ = writeln!(body, "      <system-out>{}</system-out>", xml(&out));
        }
        if body.is_empty() {
            x.push_str("/>\n");
        } else {
            x.push_str(">\n");
            x.push_str(&body);
            x.push_str("    </testcase>\n");
        }
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Escapes text for XML attributes and content (and drops control characters XML 1.0 forbids).
fn xml(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            '\n' | '\t' | '\r' => o.push(c),
            c if (c as u32) < 0x20 => {}
            c => o.push(c),
        }
    }
    o
}

/// Writes `text` to `path`, creating its directory.
pub fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(name: &str, verdict: Verdict) -> Line {
        Line {
            name: name.into(),
            verdict,
            time: Some(Duration::from_millis(1500)),
            log: Some("/l/x.log".into()),
            repro: Some(format!("cargo xtask test --scenario {name}")),
            class: "matrix.qemu-pvh".into(),
        }
    }

    #[test]
    fn junit_has_four_states_and_the_repro_command() {
        let lines = [
            line("a", Verdict::Pass),
            line("b", Verdict::Fail("image <differs> & more".into())),
            line("c", Verdict::Crash("QEMU killed by signal 9".into())),
            line("d", Verdict::Skip("no VT on this host".into())),
        ];
        let x = junit(&lines, Duration::from_secs(3));
        assert!(
            x.contains("tests=\"4\" failures=\"1\" errors=\"1\" skipped=\"1\""),
            "{x}"
        );
        assert!(
            x.contains("<testcase classname=\"matrix.qemu-pvh\" name=\"a\" time=\"1.500\">"),
            "{x}"
        );
        assert!(
            x.contains("<failure message=\"image &lt;differs&gt; &amp; more\">"),
            "{x}"
        );
        assert!(x.contains("<error type=\"crash\""), "{x}");
        assert!(x.contains("<skipped message=\"no VT on this host\"/>"), "{x}");
        assert!(x.contains("reproduce: cargo xtask test --scenario b"), "{x}");
        assert!(!x.contains("reproduce: cargo xtask test --scenario a"), "{x}");
        assert_eq!(x.matches("<testcase").count(), 4);
        assert!(xml("a\u{1}b") == "ab");
    }

    #[test]
    fn a_crash_wins_over_problems() {
        assert_eq!(Verdict::from_problems(None, &[]), Verdict::Pass);
        assert!(matches!(
            Verdict::from_problems(None, &["x".into()]),
            Verdict::Fail(_)
        ));
        assert!(
            matches!(Verdict::from_problems(Some("t".into()), &["x".into()]), Verdict::Crash(r) if r == "t; x")
        );
    }
}
