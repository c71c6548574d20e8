//! Parses the Xen machine's serial log (Xen, dom0 and, forwarded by dom0, each domU's console) into
//! one report per scenario. The `PVKIT-XEN ...` lines come from `xtask/xen/init.sh`.

use std::time::Duration;

use crate::console::{Fields, Transcript};

const TAG: &str = "PVKIT-XEN ";

/// How a domU ended, as dom0 saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// `SCHEDOP_shutdown` with this reason (`poweroff`, `crash`, `reboot`, ...).
    Shutdown(String),
    /// Still running at the scenario's timeout; dom0 destroyed it.
    Timeout,
    /// `xl create` failed before the domain existed.
    CreateFailed,
    /// xl ended without a shutdown reason.
    Unknown,
}

/// Everything one scenario reported.
#[derive(Debug, Default)]
pub struct ScenarioReport {
    pub name: String,
    pub domid: Option<u32>,
    /// From `xl create` starting to the domain existing (dom0's clock).
    pub create: Option<Duration>,
    /// From `xl create` starting to the domain's shutdown (or the timeout).
    pub run: Option<Duration>,
    pub end: Option<End>,
    /// The domU's console lines, in order.
    pub console: Vec<String>,
    /// The `PVKIT` records among them (or, if the console ring carried none, among the lines Xen
    /// printed for the domain's `console_io` hypercalls).
    pub transcript: Transcript,
    /// dom0-side check results (`CHECK key=value ...`).
    pub checks: Fields,
    /// Free-text notes (xl's messages on failure, missing logs).
    pub notes: Vec<String>,
}

/// The whole boot.
#[derive(Debug, Default)]
pub struct HarnessReport {
    /// Seconds from dom0's kernel start to the toolstack being up (dom0's `/proc/uptime`).
    pub dom0_ready: Option<f64>,
    pub scenarios: Vec<ScenarioReport>,
    /// dom0 printed `HARNESS END` (every scenario ran).
    pub finished: bool,
    /// `FATAL` lines of the dom0 init.
    pub fatal: Vec<String>,
    /// Lines Xen printed for a domain's `console_io` writes: `(d<id>) text`.
    pub hypervisor_lines: Vec<(u32, String)>,
    /// What dom0's platform watcher (`xtask/xen/platform.rs`) saw: its event lines, and its totals
    /// once it stopped.
    pub platform_events: Vec<String>,
    pub platform: Option<PlatformTotals>,
}

/// The platform watcher's totals over a boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlatformTotals {
    /// FS base checks made, and how many found a FS base not the thread's own.
    pub fsbase_checks: u64,
    pub fsbase_lost: u64,
    /// Rounds of fresh pages written and read back, and words that read back wrong.
    pub fresh_rounds: u64,
    pub fresh_bad: u64,
    /// Vector register patterns held across a sleep, and how many came back changed.
    pub vector_checks: u64,
    pub vector_bad: u64,
}

impl HarnessReport {
    pub fn scenario(&self, name: &str) -> Option<&ScenarioReport> {
        self.scenarios.iter().find(|s| s.name == name)
    }

    /// Parses the serial log.
    pub fn parse(log: &str) -> HarnessReport {
        let mut r = HarnessReport::default();
        for line in log.lines() {
            let line = line.trim_end_matches('\r');
            if let Some(guest) = hypervisor_guest_line(line) {
                r.hypervisor_lines.push(guest);
                continue;
            }
            // Xen may write its own text in front of a dom0 line on the shared serial port.
            let Some(at) = line.find(TAG) else { continue };
            r.record(&line[at + TAG.len()..]);
        }
        for s in &mut r.scenarios {
            if s.transcript.records.is_empty()
                && let Some(domid) = s.domid
            {
                for (_, text) in r.hypervisor_lines.iter().filter(|(d, _)| *d == domid) {
                    s.transcript.push_line(text);
                }
            }
        }
        r
    }

    fn current(&mut self, name: &str) -> &mut ScenarioReport {
        if self.scenarios.last().is_none_or(|s| s.name != name) {
            self.scenarios.push(ScenarioReport {
                name: name.to_owned(),
                ..ScenarioReport::default()
            });
        }
        self.scenarios.last_mut().expect("just pushed")
    }

    fn record(&mut self, rest: &str) {
        if let Some(up) = rest.strip_prefix("DOM0 READY uptime=") {
            self.dom0_ready = up.trim().parse().ok();
        } else if rest.starts_with("HARNESS END") {
            self.finished = true;
        } else if let Some(p) = rest.strip_prefix("PLATFORM totals ") {
            let f = Fields::parse(p);
            let n = |k| f.get_u64(k).unwrap_or(0);
            self.platform = Some(PlatformTotals {
                fsbase_checks: n("fsbase_checks"),
                fsbase_lost: n("fsbase_lost"),
                fresh_rounds: n("fresh_rounds"),
                fresh_bad: n("fresh_bad"),
                vector_checks: n("vector_checks"),
                vector_bad: n("vector_bad"),
            });
        } else if let Some(p) = rest.strip_prefix("PLATFORM ") {
            self.platform_events.push(p.to_owned());
        } else if let Some(why) = rest.strip_prefix("FATAL ") {
            self.fatal.push(why.to_owned());
        } else if let Some(c) = rest.strip_prefix("CONSOLE ") {
            if let Some((name, text)) = c
                .split_once(" | ")
                .or_else(|| c.strip_suffix(" |").map(|n| (n, "")))
            {
                let s = self.current(name);
                s.transcript.push_line(text);
                s.console.push(text.to_owned());
            }
        } else if let Some(sc) = rest.strip_prefix("SCENARIO ") {
            let Some((name, what)) = sc.split_once(' ') else {
                return;
            };
            let s = self.current(name);
            let ms = |f: &Fields, k: &str| f.get_u64(k).map(Duration::from_millis);
            if let Some(f) = what.strip_prefix("CREATED ") {
                let f = Fields::parse(f);
                s.domid = f.get_u64("domid").and_then(|d| u32::try_from(d).ok());
                s.create = ms(&f, "create_ms");
            } else if let Some(f) = what.strip_prefix("END ") {
                let f = Fields::parse(f);
                s.run = ms(&f, "run_ms");
                s.end = Some(match f.get("reason").unwrap_or("unknown") {
                    "timeout" => End::Timeout,
                    "create-failed" => End::CreateFailed,
                    "unknown" => End::Unknown,
                    other => End::Shutdown(other.to_owned()),
                });
            } else if let Some(f) = what.strip_prefix("CHECK ") {
                s.checks.0.extend(Fields::parse(f).0);
            } else if let Some(n) = what.strip_prefix("NOTE ") {
                s.notes.push(n.to_owned());
            }
        }
    }
}

/// `(d3) text` or `(XEN) (d3) text` -> `(3, text)`.
fn hypervisor_guest_line(line: &str) -> Option<(u32, String)> {
    let rest = line.strip_prefix("(XEN) ").unwrap_or(line);
    let rest = rest.strip_prefix("(d")?;
    let (id, text) = rest.split_once(") ")?;
    Some((id.parse().ok()?, text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::Record;

    const LOG: &str = "\
(XEN) Xen version 4.17.7\r
PVKIT-XEN DOM0 READY uptime=7.91
PVKIT-XEN SCENARIO selfcheck BEGIN
PVKIT-XEN SCENARIO selfcheck CREATED domid=1 create_ms=5230
PVKIT-XEN CONSOLE selfcheck | [    0.000000] Linux version 6.1
PVKIT-XEN CONSOLE selfcheck | PVKIT BOOT platform=xen-pv hypervisor=xen mem_mib=64 cmdline=\"tests=hello\"
PVKIT-XEN CONSOLE selfcheck |
(XEN) noise PVKIT-XEN CONSOLE selfcheck | PVKIT TEST hello PASS heap_mib=60
PVKIT-XEN SCENARIO selfcheck CHECK image_sha256=abc sectors=8
PVKIT-XEN SCENARIO selfcheck END reason=poweroff run_ms=14020
PVKIT-XEN SCENARIO dead BEGIN
PVKIT-XEN SCENARIO dead CREATED domid=2 create_ms=100
(d2) PVKIT BOOT platform=xen-pv hypervisor=xen
(XEN) (d2) PVKIT EXIT 1
(d7) PVKIT EXIT 0
PVKIT-XEN SCENARIO dead NOTE xl: libxl: error
PVKIT-XEN SCENARIO dead END reason=timeout run_ms=60000
PVKIT-XEN SCENARIO nope BEGIN
PVKIT-XEN SCENARIO nope END reason=create-failed run_ms=300
PVKIT-XEN HARNESS END
";

    #[test]
    fn sections_per_scenario() {
        let r = HarnessReport::parse(LOG);
        assert_eq!(r.dom0_ready, Some(7.91));
        assert!(r.finished);
        assert!(r.fatal.is_empty());
        let names: Vec<&str> = r.scenarios.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["selfcheck", "dead", "nope"]);

        let s = r.scenario("selfcheck").unwrap();
        assert_eq!(s.domid, Some(1));
        assert_eq!(s.create, Some(Duration::from_millis(5230)));
        assert_eq!(s.run, Some(Duration::from_millis(14020)));
        assert_eq!(s.end, Some(End::Shutdown("poweroff".into())));
        assert_eq!(s.console.len(), 4);
        assert_eq!(s.console[2], "");
        assert!(s.transcript.boot().is_some());
        assert!(s.transcript.passed("hello"));
        assert_eq!(s.checks.get("image_sha256"), Some("abc"));
        assert_eq!(s.checks.get_u64("sectors"), Some(8));

        // No console records: Xen's console_io lines of that domid stand in (not d7's).
        let d = r.scenario("dead").unwrap();
        assert_eq!(d.end, Some(End::Timeout));
        assert!(d.console.is_empty());
        assert!(d.transcript.boot().is_some());
        assert_eq!(d.transcript.exit_record(), Some(1));
        assert!(matches!(
            d.transcript.records.last(),
            Some(Record::Exit { code: 1 })
        ));
        assert_eq!(d.notes, ["xl: libxl: error"]);

        let n = r.scenario("nope").unwrap();
        assert_eq!(n.end, Some(End::CreateFailed));
        assert_eq!(n.domid, None);
    }

    #[test]
    fn cut_short_log() {
        let r = HarnessReport::parse("PVKIT-XEN FATAL xenstored failed\n");
        assert!(!r.finished);
        assert_eq!(r.fatal, ["xenstored failed"]);
        assert!(r.scenarios.is_empty());
        let r = HarnessReport::parse("PVKIT-XEN SCENARIO a BEGIN\nPVKIT-XEN CONSOLE a | x\n");
        assert_eq!(r.scenario("a").unwrap().end, None);
    }
}
