//! What the report of a Xen PV row's domU must show: the guest's verdicts (through `crate::checks`)
//! and what only dom0 can see (its counts, our daemon's log, the disk image's digest).

use std::path::Path;
use std::process::Command;

use super::report::{End, ScenarioReport};
use super::scenario::*;
use crate::checks::{self, GuestEnd, GuestRun};
use crate::console::Record;
use crate::matrix::{Backend, Profile, Row, Variant, Workload};

/// The guest's end of a domU.
pub fn guest_end(r: &ScenarioReport) -> GuestEnd {
    match &r.end {
        Some(End::Shutdown(why)) if why == "poweroff" => GuestEnd::Pass,
        Some(End::Shutdown(why)) if why == "crash" => GuestEnd::Fail,
        Some(End::Shutdown(why)) => GuestEnd::Crash(format!("the domain shut down with reason {why}")),
        Some(End::Timeout) => {
            GuestEnd::Crash("the domain was still running at its timeout; destroyed".to_owned())
        }
        Some(End::CreateFailed) => GuestEnd::Crash(format!("xl create failed: {}", xl_errors(r))),
        Some(End::Unknown) => {
            GuestEnd::Crash(format!("xl ended without a shutdown reason: {}", xl_errors(r)))
        }
        None => GuestEnd::Crash("the domain never ended (the harness boot was cut short)".to_owned()),
    }
}

/// What is wrong with a row's report (empty: passed). `nonce` is the run's nonce, `disk` the host
/// disk's slot (its image is read after the run).
pub fn check(row: &Row, r: &ScenarioReport, nonce: &str, disk: Option<&DiskSlot>) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(slot) = disk {
        check_image_digest(r, slot, &mut problems);
    }
    let spec = spec(row, nonce, Profile::Test);
    if let Some(ours) = &spec.ours {
        check_backend(row, ours, r, &mut problems);
    }
    let end = guest_end(r);
    let run = GuestRun {
        transcript: &r.transcript,
        end: &end,
        test_times: None,
    };
    let tests = guest_tests(row);
    let test = tests[0].as_str();
    let field = |k: &str| run.pass(test).and_then(|f| f.get(k)).map(str::to_owned);
    match row.workload {
        Workload::LinuxPeer => check_linux(r, nonce, disk, &mut problems),
        Workload::FaultPagefault => {
            checks::failed_as_meant(&run, test, &mut problems);
            checks::pagefault(&r.transcript, &mut problems);
        }
        Workload::FaultPanic => {
            checks::failed_as_meant(&run, test, &mut problems);
            checks::panic(&r.transcript, &mut problems);
        }
        Workload::DeviceAbsent => check_refused(&run, &["absent"], &mut problems),
        Workload::NoBackend => {
            // The message must name the backend that never connected and its state.
            check_refused(&run, &[STUB_BACKEND, "state 2"], &mut problems);
            if r.checks.get("stub_vbd") != Some("written") {
                problems.push("dom0 did not write the stub vbd nodes".to_owned());
            }
        }
        w => {
            let refs: Vec<&str> = tests.iter().map(String::as_str).collect();
            checks::all_passed(&run, &refs, &mut problems);
            match w {
                Workload::Hello => {
                    let platform = r.transcript.boot().and_then(|b| b.get("platform"));
                    if platform != Some("xen-pv") {
                        problems.push(format!("BOOT platform={platform:?}, expected xen-pv"));
                    }
                }
                Workload::Cpuid => checks::cpuid(&run, "xen", &mut problems),
                Workload::Timer => checks::timer(&run, TIMER_HZ, TIMER_MS, &mut problems),
                Workload::Xenstore => {
                    let want = xenstore_value(nonce);
                    if run.pass(test).is_some() && field("value").as_deref() != Some(want.as_str()) {
                        problems.push(format!(
                            "the guest's watch saw value={:?}, dom0 wrote {want}",
                            field("value")
                        ));
                    }
                    let domid = r.domid.map(|d| d.to_string());
                    if run.pass(test).is_some()
                        && (field("domid") != domid || field("name") != Some(spec.name.clone()))
                    {
                        problems.push(format!(
                            "the guest read domid={:?} name={:?} from XenStore; dom0 created domid {domid:?} \
                             named {}",
                            field("domid"),
                            field("name"),
                            spec.name
                        ));
                    }
                    if r.checks.get("ping_written") != Some("1") {
                        problems.push("dom0 never saw data/pvkit-ready, so it wrote no ping".to_owned());
                    }
                }
                Workload::ConsoleInput => {
                    let want = console_input(nonce);
                    if run.pass(test).is_some() && field("line").as_deref() != Some(want.as_str()) {
                        problems.push(format!(
                            "the guest read line={:?}, dom0 typed {want:?}",
                            field("line")
                        ));
                    }
                    if r.checks.get("console_input") != Some("written") {
                        problems
                            .push("dom0 never saw the guest's ready line, so it typed nothing".to_owned());
                    }
                }
                Workload::BlkIntegrity => check_integrity(&run, nonce, disk, &mut problems),
                Workload::NetPing | Workload::BadInput | Workload::BlkHostile => {
                    check_ping(row, &run, r, &mut problems);
                    if w == Workload::BadInput {
                        check_bad_input(r, &mut problems);
                    }
                    if w == Workload::BlkHostile {
                        check_hostile_ring(r, &mut problems);
                    }
                }
                Workload::NetEcho => {
                    check_cost_fields(r, test, &["echo64", "echo1514"], &mut problems);
                    if row.backend == Backend::Linux {
                        check_dom0_echo(&run, r, test, &mut problems);
                    }
                }
                Workload::BlkThroughput => check_cost_fields(
                    r,
                    test,
                    &["randread4k", "randwrite4k", "seqread64k", "seqwrite64k"],
                    &mut problems,
                ),
                Workload::ConsoleEcho => check_cost_fields(r, test, &["stream"], &mut problems),
                _ => {}
            }
        }
    }
    problems
}

/// Every sector the guest wrote holds its pattern in the image, and the guest's byte count matches.
pub(super) fn check_integrity(
    run: &GuestRun<'_>,
    nonce: &str,
    disk: Option<&DiskSlot>,
    problems: &mut Vec<String>,
) {
    let (Some(slot), Some(fields)) = (disk, run.pass(BLK_TEST)) else {
        return;
    };
    let image = crate::disk::DiskImage {
        path: slot.image.clone(),
        sectors: BLK_SECTORS,
        fill_seed: BLK_FILL,
    };
    match image.verify_integrity(blk_seed(nonce), BLK_EXTENTS as usize, true) {
        Ok(c) => {
            let want = 2 * c.sectors_written * crate::disk::SECTOR as u64;
            if fields.get_u64("bytes") != Some(want) {
                problems.push(format!(
                    "guest reports bytes={:?}, the {} extents it writes and reads back are {want} bytes",
                    fields.get("bytes"),
                    c.extents
                ));
            }
        }
        Err(e) => problems.push(format!("image check: {e:#}")),
    }
}

/// The ping test's figures, and dom0's count of the echo requests its kernel answered.
pub(super) fn check_ping(row: &Row, run: &GuestRun<'_>, r: &ScenarioReport, problems: &mut Vec<String>) {
    if let Some(fields) = run.pass(NET_TEST) {
        let want = [
            ("replies", NET_PINGS.to_string()),
            ("size", NET_PING_SIZE.to_string()),
            ("mac", GUEST_MAC.to_owned()),
        ];
        for (k, v) in want {
            if fields.get(k) != Some(v.as_str()) {
                problems.push(format!(
                    "{NET_TEST} PASS has {k}={:?}, expected {v}",
                    fields.get(k)
                ));
            }
        }
    }
    if row.variant == Some(Variant::Tap) && r.checks.get("tap") != Some("up") {
        problems.push("dom0 could not bring the tap interface up".to_owned());
    }
    let kernel_answers = row.backend == Backend::Linux || row.variant == Some(Variant::Tap);
    match r.checks.get_u64("dom0_icmp_echo_requests") {
        _ if !kernel_answers || row.workload != Workload::NetPing => {}
        Some(n) if n >= NET_PINGS => {}
        other => problems.push(format!(
            "dom0's kernel counted {other:?} ICMP echo requests, the guest sends {NET_PINGS}"
        )),
    }
}

/// dom0's L2 echo peer verified and echoed every frame the guest verified (its own frames and
/// its rate phases).
pub(super) fn check_dom0_echo(
    run: &GuestRun<'_>,
    r: &ScenarioReport,
    test: &str,
    problems: &mut Vec<String>,
) {
    let Some(fields) = run.pass(test) else { return };
    let rate: u64 = r.transcript.perfs().filter_map(|p| p.get_u64("ops")).sum();
    let guest = fields.get_u64("ops").unwrap_or(0) + rate;
    match r.checks.get_u64("echoed") {
        Some(n) if n == guest => {}
        other => problems.push(format!(
            "dom0's echo peer echoed {other:?} frames, the guest verified {guest}"
        )),
    }
}

/// The cost fields every PERF line of `test` and its PASS line must carry under Xen PV: the
/// phases expected, exits that are all hypercalls (an event channel send among them), latency.
pub(super) fn check_cost_fields(
    r: &ScenarioReport,
    test: &str,
    patterns: &[&str],
    problems: &mut Vec<String>,
) {
    let perfs: Vec<_> = r.transcript.perfs().collect();
    for want in patterns {
        if !perfs.iter().any(|p| p.get("pattern") == Some(want)) {
            problems.push(format!("{test}: no PERF line with pattern={want}"));
        }
    }
    let pass = match r.transcript.verdict(test) {
        Some(Record::TestPass { fields, .. }) => Some(fields),
        _ => None,
    };
    // Event channel sends: a phase may legitimately have none (a backend still busy when the next
    // request comes needs no notification, which on a loaded host happens for a whole short
    // phase), but a test whose phases together sent none never told its backend anything.
    let sends = |f: &&crate::console::Fields| f.get("hc").is_some_and(|hc| hc.contains("event_channel_op:"));
    if !perfs.is_empty() && !perfs.iter().any(sends) {
        problems.push(format!(
            "{test}: no phase names event_channel_op among its hypercalls"
        ));
    }
    for f in perfs.into_iter().chain(pass) {
        let what = format!("{test} {}", f.get("pattern").unwrap_or("PASS"));
        let n = |k: &str| f.get_u64(k);
        match (
            n("exits"),
            n("hypercalls"),
            n("exits_pio"),
            n("exits_mmio"),
            n("exits_hlt"),
        ) {
            (Some(e), Some(h), Some(0), Some(0), Some(0)) if h > 0 && e == h => {}
            other => problems.push(format!(
                "{what}: exits/hypercalls/pio/mmio/hlt = {other:?}, expected only hypercalls (> 0) on Xen PV"
            )),
        }
        if f.get("hc").is_none_or(str::is_empty) {
            problems.push(format!("{what}: no hypercalls by name (hc={:?})", f.get("hc")));
        }
        if f.get("pattern").is_some() && n("lat_p50_ns").is_none_or(|l| l == 0) {
            problems.push(format!(
                "{what}: no latency (lat_p50_ns={:?})",
                f.get("lat_p50_ns")
            ));
        }
    }
}

/// The Linux domU's self-check: console both ways, its disk written and read back through the
/// backend and checked on the host, pings answered; against our backend also hvc1 both ways.
pub(super) fn check_linux(
    r: &ScenarioReport,
    nonce: &str,
    disk: Option<&DiskSlot>,
    problems: &mut Vec<String>,
) {
    match &r.end {
        Some(End::Shutdown(why)) if why == "poweroff" => {}
        _ => problems.push(format!("the Linux domU did not power off: {:?}", guest_end(r))),
    }
    let has = |want: &str| r.console.iter().any(|l| l.trim() == want);
    for want in [
        format!("PVKIT-SELFCHECK nonce={nonce}"),
        format!("PVKIT-SELFCHECK ping={SELFCHECK_PINGS}/{SELFCHECK_PINGS}"),
        format!("PVKIT-SELFCHECK input={}", console_input(nonce)),
        "PVKIT-SELFCHECK pattern=written".to_owned(),
        "PVKIT-SELFCHECK pattern=read-back".to_owned(),
    ] {
        if !has(&want) {
            problems.push(format!(
                "the Linux domU's console ({} lines) lacks `{want}`",
                r.console.len()
            ));
        }
    }
    let Some(slot) = disk else {
        problems.push("the Linux row has no host disk".to_owned());
        return;
    };
    match sha256_file(&slot.image) {
        Ok(host) => {
            let said = r
                .console
                .iter()
                .find_map(|l| l.trim().strip_prefix("PVKIT-SELFCHECK disk_sha256="));
            if said != Some(host.as_str()) {
                problems.push(format!(
                    "the domU read the whole disk with SHA-256 {said:?}; the image on the host \
                     afterwards has {host}"
                ));
            }
        }
        Err(e) => problems.push(format!("hashing the disk image: {e:#}")),
    }
    match std::fs::read(&slot.image) {
        Ok(img) => {
            let want = format!("PVKIT-SELFCHECK-DISK nonce={nonce}\n");
            if !img.starts_with(want.as_bytes()) {
                problems.push(format!(
                    "the disk image does not start with {want:?} (the domU's write through \
                     blkfront/blkback/loop did not reach it): {:?}",
                    String::from_utf8_lossy(&img[..img.len().min(48)])
                ));
            }
        }
        Err(e) => problems.push(format!("reading the disk image: {e}")),
    }
}

/// The hostile-ring row: the guest saw its ring refused (state Closing or Closed, an error node)
/// and our daemon logged why.
pub(super) fn check_hostile_ring(r: &ScenarioReport, problems: &mut Vec<String>) {
    if let Some(Record::TestPass { fields, .. }) = r.transcript.verdict(HOSTILE_TEST)
        && (!matches!(fields.get("backend_state"), Some("5" | "6"))
            || fields.get("backend_error") != Some("1"))
    {
        problems.push(format!(
            "{HOSTILE_TEST} saw backend_state={:?} backend_error={:?}, expected 5 or 6 and 1",
            fields.get("backend_state"),
            fields.get("backend_error")
        ));
    }
    let device = format!("device=vbd {XVDA} of domain");
    let halted = r.notes.iter().any(|n| {
        n.starts_with("backend:")
            && n.contains("ERROR")
            && n.contains(&device)
            && n.contains("device halted")
            && n.contains("ring halted")
    });
    if !halted {
        problems.push(format!(
            "our daemon's log has no ERROR line saying vbd {XVDA}'s ring was halted"
        ));
    }
}

/// The two refusals of the bad-input row.
pub(super) fn check_bad_input(r: &ScenarioReport, problems: &mut Vec<String>) {
    if r.checks.get("missing_image_exit") != Some("1") {
        problems.push(format!(
            "the daemon given a missing image exited with {:?}, expected 1",
            r.checks.get("missing_image_exit")
        ));
    }
    let want = format!("cannot open image {MISSING_IMAGE}");
    if !r
        .notes
        .iter()
        .any(|n| n.starts_with("missing-image:") && n.contains(&want))
    {
        problems.push(format!("the daemon given a missing image did not say `{want}`"));
    }
    if r.checks.get("hostile_state") != Some("5") {
        problems.push(format!(
            "the vbd with a garbage ring-ref is in state {:?}, expected 5 (Closing: refused)",
            r.checks.get("hostile_state")
        ));
    }
    let device = format!("device=vbd {HOSTILE_VBD} of domain");
    let refused = r.notes.iter().any(|n| {
        n.starts_with("backend:")
            && n.contains("ERROR")
            && n.contains(&device)
            && n.contains("refused:")
            && n.contains(&HOSTILE_RING_REF.to_string())
    });
    if !refused {
        problems.push(format!(
            "the daemon's log has no ERROR line refusing vbd {HOSTILE_VBD} and naming ring-ref {HOSTILE_RING_REF}"
        ));
    }
}

/// Our daemon's report of a fatal signal (`pvkit_backends::crash`) among the row's `backend:`
/// notes, with the frames in the daemon resolved on the host against `binary` (the build dom0's
/// stripped copy came from): which signal, which thread, and the functions it was in.
pub(super) fn crash_report(r: &ScenarioReport, binary: &Path) -> Option<String> {
    let lines: Vec<&str> = r
        .notes
        .iter()
        .filter_map(|n| n.strip_prefix("backend: "))
        .collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("pvkit-xen-backend: fatal "))?;
    let offsets: Vec<&str> = lines[at + 1..]
        .iter()
        .take_while(|l| l.contains(")[0x"))
        .filter(|l| l.contains("/pvkit/pvkit-xen-backend"))
        .filter_map(|l| l.split("(+").nth(1)?.split(')').next())
        .collect();
    let mut out = format!("our daemon died: {}", lines[at]);
    if offsets.is_empty() {
        return Some(out);
    }
    match Command::new("addr2line")
        .args(["-f", "-C", "-i", "-s", "-e"])
        .arg(binary)
        .args(&offsets)
        .output()
    {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            // The report's own frame (the handler) says nothing about the crash.
            let frames: Vec<String> = text
                .lines()
                .collect::<Vec<_>>()
                .chunks(2)
                .filter(|f| !f[0].starts_with("pvkit_backends::crash::"))
                .map(|f| f.join(" at "))
                .collect();
            out.push_str(&format!("; in: {}", frames.join(" <- ")));
        }
        _ => out.push_str(&format!(
            "; frames (resolve with addr2line -f -C -e {}): {}",
            binary.display(),
            offsets.join(" ")
        )),
    }
    Some(out)
}

/// The number after `key=` in `line`.
pub(super) fn count_in(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// What our daemon must have shown: ready before the domain ran, exit 0 after it was gone, and for
/// each device it served a disconnect summary with work done and nothing failed.
pub(super) fn check_backend(row: &Row, ours: &OurDevices, r: &ScenarioReport, problems: &mut Vec<String>) {
    if let Some(crash) = crash_report(r, &super::backend_build_path()) {
        problems.push(crash);
    }
    if r.checks.get("backend") != Some("ready") {
        problems.push(format!(
            "our backend daemon never said ready (backend={:?})",
            r.checks.get("backend")
        ));
    }
    if r.checks.get("backend_exit") != Some("0") {
        problems.push(format!(
            "our backend daemon did not exit with 0 once the domain was gone (backend_exit={:?})",
            r.checks.get("backend_exit")
        ));
    }
    let summary = |dev: &str| {
        r.notes.iter().find(|n| {
            n.starts_with("backend:")
                && n.contains(&format!("device={dev} of domain"))
                && n.contains("disconnected:")
        })
    };
    // The hostile row's vbd is halted on purpose: its summary counts the refusal.
    if ours.disk && row.workload != Workload::BlkHostile {
        match summary(&format!("vbd {XVDA}")) {
            Some(n) if count_in(n, "requests").is_some_and(|c| c > 0) && count_in(n, "failed") == Some(0) => {
            }
            other => problems.push(format!(
                "our blkback's summary of vbd {XVDA} shows no clean work: {other:?}"
            )),
        }
    }
    for v in &ours.vifs {
        let devid = v.split(':').next().unwrap_or_default();
        match summary(&format!("vif {devid}")) {
            Some(n)
                if count_in(n, "tx_packets").is_some_and(|c| c > 0)
                    && count_in(n, "rx_packets").is_some_and(|c| c > 0)
                    && count_in(n, "tx_errors") == Some(0) => {}
            other => problems.push(format!(
                "our netback's summary of vif {devid} shows no clean traffic: {other:?}"
            )),
        }
    }
    if let Some(c) = &ours.console {
        check_console(c, r, summary(&format!("console {}", c.devid)), problems);
    }
    let dev = match row.workload {
        Workload::BlkThroughput => format!("vbd {XVDA}"),
        Workload::NetEcho => "vif 0".to_owned(),
        Workload::ConsoleEcho => "console 1".to_owned(),
        _ => return,
    };
    if let Some(n) = summary(&dev) {
        cross_check(row, r, n, problems);
    }
}

/// The guest's counts of a comparison row against what our daemon counted for the same device:
/// the requests, frames or bytes it served, the notifications it received (the guest sent at least
/// as many: event channel sends coalesce while one is pending) and the ones it sent (the guest took
/// at most as many upcalls).
pub(super) fn cross_check(row: &Row, r: &ScenarioReport, summary: &str, problems: &mut Vec<String>) {
    let test = row.test();
    let Some(Record::TestPass { fields, .. }) = r.transcript.verdict(&test) else {
        return;
    };
    let perf_sum = |k: &str| -> u64 { r.transcript.perfs().filter_map(|p| p.get_u64(k)).sum() };
    let pass = |k: &str| fields.get_u64(k).unwrap_or(0);
    let daemon = |k: &str| count_in(summary, k).unwrap_or(0);
    let what = format!("{test}: the guest's and our daemon's counts");
    match row.workload {
        Workload::BlkThroughput => {
            // Every request the guest completed is one the daemon served, and nothing else ran.
            if pass("ops") != daemon("requests") {
                problems.push(format!(
                    "{what}: the guest completed {} requests, blkback served {}",
                    pass("ops"),
                    daemon("requests")
                ));
            }
        }
        Workload::NetEcho => {
            // The guest's verified frames and its rate phases' echoes all crossed netback; a rate
            // phase may end with its window (8 frames) still in flight.
            let guest = pass("ops") + perf_sum("ops");
            let (tx, rx) = (daemon("tx_packets"), daemon("rx_packets"));
            if tx < guest || tx > guest + 16 || rx != tx {
                problems.push(format!(
                    "{what}: the guest verified {guest} echoes, netback carried {tx} frames out and {rx} back"
                ));
            }
        }
        Workload::ConsoleEcho => {
            if pass("ops") != daemon("echoed") {
                problems.push(format!(
                    "{what}: the guest verified {} bytes echoed, the console backend echoed {}",
                    pass("ops"),
                    daemon("echoed")
                ));
            }
        }
        _ => return,
    }
    // On the console, whose one phase is the whole test, the notifications add up too: the
    // guest's sends cover the events the daemon got (sends coalesce while one is pending), the
    // daemon's sends cover the upcalls the guest took. (netfront also sends while connecting,
    // outside its counted workload, so there only the frames are compared.)
    if row.workload == Workload::ConsoleEcho
        && (daemon("events") > pass("notifies") || pass("irqs") > daemon("notifies"))
    {
        problems.push(format!(
            "{what}: the guest sent {} notifications and took {} upcalls, the daemon received {} events \
             and sent {} notifications",
            pass("notifies"),
            pass("irqs"),
            daemon("events"),
            daemon("notifies")
        ));
    }
}

/// Our console both ways. Log mode: the guest's line is in dom0's log of it, the guest read the
/// daemon's line, and the daemon's summary counts exactly that input and at least that output.
/// Echo mode: the daemon wrote back what it read, without sink errors.
pub(super) fn check_console(
    c: &OurConsole,
    r: &ScenarioReport,
    summary: Option<&String>,
    problems: &mut Vec<String>,
) {
    let (log_expect, input) = match &c.mode {
        ConsoleMode::Log { expect, input, .. } => (expect, input),
        ConsoleMode::Echo => {
            // Every byte the guest wrote went back.
            match summary {
                Some(n)
                    if count_in(n, "echoed").is_some_and(|e| e > 0)
                        && count_in(n, "echoed") == count_in(n, "bytes_out")
                        && count_in(n, "sink_errors") == Some(0) => {}
                other => problems.push(format!(
                    "our console backend's summary of console {} should show echoed = bytes_out > 0 \
                     without sink errors: {other:?}",
                    c.devid
                )),
            }
            return;
        }
    };
    let label = format!("hvc{}:", c.devid);
    let logged: Vec<&str> = r
        .notes
        .iter()
        .filter_map(|n| n.strip_prefix(label.as_str()))
        .map(str::trim)
        .collect();
    if !logged.contains(&log_expect.as_str()) {
        problems.push(format!(
            "dom0's log of console {} ({} lines) lacks the guest's `{log_expect}`",
            c.devid,
            logged.len(),
        ));
    }
    let want = format!("PVKIT-SELFCHECK hvc{}-input={input}", c.devid);
    if !r.console.iter().any(|l| l.trim() == want) {
        let said = r
            .console
            .iter()
            .find(|l| l.contains(&format!("hvc{}-input=", c.devid)));
        problems.push(format!(
            "the guest did not read our console's input line: expected `{want}`, it said {said:?}"
        ));
    }
    let (want_in, min_out) = (input.len() as u64 + 1, log_expect.len() as u64 + 1);
    match summary {
        Some(n)
            if count_in(n, "bytes_in") == Some(want_in)
                && count_in(n, "bytes_out").is_some_and(|b| b >= min_out)
                && count_in(n, "sink_errors") == Some(0) => {}
        other => problems.push(format!(
            "our console backend's summary of console {} should show bytes_in={want_in} and \
             bytes_out>={min_out} without sink errors: {other:?}",
            c.devid
        )),
    }
}

/// Bad input: the block test must fail with a message containing each of `why`, and the guest
/// shut down with `crash` (its fail), well before the domain's timeout.
pub(super) fn check_refused(run: &GuestRun<'_>, why: &[&str], problems: &mut Vec<String>) {
    checks::failed_as_meant(run, BLK_TEST, problems);
    match run.transcript.verdict(BLK_TEST) {
        Some(Record::TestFail { reason, .. }) if why.iter().all(|w| reason.contains(w)) => {}
        Some(Record::TestFail { reason, .. }) => {
            problems.push(format!(
                "{BLK_TEST} failed with {reason:?}, expected it to mention {why:?}"
            ));
        }
        Some(_) => {}
        None => problems.push(format!("{BLK_TEST} reported no verdict")),
    }
}

/// dom0's SHA-256 of the image (after the domU and the loop device are gone) must equal the host's.
pub(super) fn check_image_digest(r: &ScenarioReport, slot: &DiskSlot, problems: &mut Vec<String>) {
    let Some(dom0) = r.checks.get("image_sha256") else {
        problems.push("dom0 reported no image_sha256".to_owned());
        return;
    };
    match sha256_file(&slot.image) {
        Ok(host) if host == dom0 => {}
        Ok(host) => problems.push(format!(
            "dom0 read image_sha256={dom0} from {}, the host file {} has {host}",
            slot.dom0_dev,
            slot.image.display()
        )),
        Err(e) => problems.push(format!("{e:#}")),
    }
}

/// The SHA-256 of a file, from the host's `sha256sum` (coreutils).
pub fn sha256_file(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .context("running sha256sum")?;
    anyhow::ensure!(out.status.success(), "sha256sum {} failed", path.display());
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.split_whitespace().next().unwrap_or_default().to_owned())
}

/// The first few error lines xl printed (all of them are in the log).
pub(super) fn xl_errors(r: &ScenarioReport) -> String {
    let errors: Vec<&str> = r
        .notes
        .iter()
        .filter(|n| n.contains("error"))
        .map(|n| n.strip_prefix("xl: ").unwrap_or(n))
        .take(3)
        .collect();
    if errors.is_empty() {
        "xl printed no error (see the log)".to_owned()
    } else {
        errors.join(" / ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::PAGEFAULT_ADDRESS;
    use crate::matrix::named as row;
    use crate::xen::report::HarnessReport;

    fn report(log: &str) -> HarnessReport {
        HarnessReport::parse(log)
    }

    fn scenario_log(name: &str, lines: &[&str], tail: &str) -> String {
        let mut s = format!("PVKIT-XEN SCENARIO {name} CREATED domid=4 create_ms=10\n");
        for l in lines {
            s.push_str(&format!("PVKIT-XEN CONSOLE {name} | {l}\n"));
        }
        s.push_str(tail);
        s
    }

    #[test]
    fn linux_peer_needs_nonce_ping_disk_digest_and_poweroff() {
        let dir = std::env::temp_dir().join(format!("pvkit-xen-selfcheck-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("disk.img");
        let mut bytes = b"PVKIT-SELFCHECK-DISK nonce=42\n".to_vec();
        bytes.resize(4096, 0xa5);
        std::fs::write(&image, &bytes).unwrap();
        let digest = sha256_file(&image).unwrap();
        let slot = DiskSlot {
            image: image.clone(),
            dom0_dev: "/dev/vda".into(),
            loop_dev: "/dev/loop0".into(),
        };
        let r = row("xen-pv/linux/linux-peer");
        let name = domain_name(&r);
        let host_digest = digest.clone();
        let log = |reason: &str, digest: &str, ping: &str| {
            let lines = [
                "PVKIT-SELFCHECK pattern=written".to_owned(),
                "PVKIT-SELFCHECK pattern=read-back".to_owned(),
                format!("PVKIT-SELFCHECK disk_sha256={host_digest}"),
                format!("PVKIT-SELFCHECK ping={ping}"),
                "PVKIT-SELFCHECK nonce=42".to_owned(),
                "PVKIT-SELFCHECK input=pvkit-input-42".to_owned(),
            ];
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            scenario_log(
                &name,
                &refs,
                &format!(
                    "PVKIT-XEN SCENARIO {name} CHECK image_sha256={digest}\n\
                     PVKIT-XEN SCENARIO {name} END reason={reason} run_ms=9000\n"
                ),
            )
        };
        let problems = |text: String, nonce: &str| {
            let h = report(&text);
            check(&r, h.scenario(&name).unwrap(), nonce, Some(&slot))
        };
        assert_eq!(
            problems(log("poweroff", &digest, "3/3"), "42"),
            Vec::<String>::new()
        );
        assert!(
            !problems(log("poweroff", &digest, "3/3"), "43").is_empty(),
            "stale nonce"
        );
        assert!(!problems(log("crash", &digest, "3/3"), "42").is_empty());
        assert!(
            !problems(log("poweroff", &digest, "0/3"), "42").is_empty(),
            "no ping answers"
        );
        assert!(
            !problems(log("poweroff", &"0".repeat(64), "3/3"), "42").is_empty(),
            "dom0 digest differs"
        );
        let text = log("poweroff", &digest, "3/3").replace("PVKIT-SELFCHECK pattern=read-back", "");
        assert!(!problems(text, "42").is_empty(), "pattern not read back");
        std::fs::write(&image, vec![0u8; 4096]).unwrap();
        let zero = sha256_file(&image).unwrap();
        assert!(
            !problems(log("poweroff", &zero, "3/3"), "42").is_empty(),
            "nonce not on disk"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn faults_and_refusals_need_a_crash_shutdown_and_their_report() {
        let exc = format!(
            "PVKIT EXCEPTION vector=14 name=\"Page fault\" error=0x0 rip=0x1 cr2={PAGEFAULT_ADDRESS:#x}"
        );
        let pf = row("xen-pv/fault-pagefault");
        let lines = [
            "PVKIT BOOT platform=xen-pv hypervisor=xen",
            "PVKIT TEST fault-pagefault START",
            exc.as_str(),
            "PVKIT TEST fault-pagefault FAIL exception vector=14",
            "PVKIT EXIT 1",
        ];
        let problems = |r: &Row, lines: &[&str], tail: &str| {
            let name = domain_name(r);
            let text = scenario_log(&name, lines, &tail.replace("NAME", &name));
            check(r, report(&text).scenario(&name).unwrap(), "", None)
        };
        let end = |reason: &str| format!("PVKIT-XEN SCENARIO NAME END reason={reason} run_ms=1\n");
        assert_eq!(problems(&pf, &lines, &end("crash")), Vec::<String>::new());
        assert!(!problems(&pf, &lines, &end("poweroff")).is_empty());
        assert!(!problems(&pf, &lines[..4], &end("crash")).is_empty(), "no EXIT 1");

        let stub = row("xen-pv/no-backend@xen-blk");
        let stuck = format!(
            "PVKIT TEST {BLK_TEST} FAIL backend /local/domain/0/backend/pvkit-stub/1/51712 still in state 2 after 10 s"
        );
        let refused = ["PVKIT BOOT platform=xen-pv", stuck.as_str(), "PVKIT EXIT 1"];
        let written = "PVKIT-XEN SCENARIO NAME CHECK stub_vbd=written\n";
        assert_eq!(
            problems(&stub, &refused, &(written.to_owned() + &end("crash"))),
            Vec::<String>::new()
        );
        assert!(!problems(&stub, &refused, &end("crash")).is_empty(), "no stub");
        assert!(
            !problems(&stub, &refused, &(written.to_owned() + &end("timeout"))).is_empty(),
            "hung"
        );
        let absent = row("xen-pv/device-absent@xen-blk");
        let gone = format!("PVKIT TEST {BLK_TEST} FAIL device xen-blk absent");
        let lines = ["PVKIT BOOT platform=xen-pv", gone.as_str(), "PVKIT EXIT 1"];
        assert_eq!(problems(&absent, &lines, &end("crash")), Vec::<String>::new());
        assert!(!problems(&absent, &lines, &end("poweroff")).is_empty());
        assert!(
            !problems(&stub, &lines, &(written.to_owned() + &end("crash"))).is_empty(),
            "absent is not stuck"
        );
    }

    #[test]
    fn xenstore_needs_dom0s_value_domid_and_name() {
        let xs = row("xen-pv/xenstore");
        let problems = |pass_line: String, written: bool| {
            let lines = [
                "PVKIT BOOT platform=xen-pv hypervisor=xen",
                "PVKIT TEST xenstore START",
                pass_line.as_str(),
                "PVKIT SUMMARY passed=1 failed=0",
                "PVKIT EXIT 0",
            ];
            let mut tail = String::new();
            if written {
                tail.push_str("PVKIT-XEN SCENARIO xenstore CHECK ping_written=1\n");
            }
            tail.push_str("PVKIT-XEN SCENARIO xenstore END reason=poweroff run_ms=1\n");
            let h = report(&scenario_log("xenstore", &lines, &tail));
            check(&xs, h.scenario("xenstore").unwrap(), "n1", None)
        };
        let pass = |domid: u32, name: &str, value: &str| {
            format!("PVKIT TEST xenstore PASS domid={domid} name={name} value={value}")
        };
        assert_eq!(
            problems(pass(4, "xenstore", "from-dom0-n1"), true),
            Vec::<String>::new()
        );
        assert!(
            !problems(pass(4, "xenstore", "from-dom0-n0"), true).is_empty(),
            "stale value"
        );
        assert!(
            !problems(pass(5, "xenstore", "from-dom0-n1"), true).is_empty(),
            "wrong domid"
        );
        assert!(
            !problems(pass(4, "other", "from-dom0-n1"), true).is_empty(),
            "wrong name"
        );
        assert!(
            !problems(pass(4, "xenstore", "from-dom0-n1"), false).is_empty(),
            "dom0 never wrote"
        );
    }

    /// A crash report in the daemon's log fails the row, naming the thread and the functions:
    /// resolved here against this test binary (at the offset of `crash_report` itself), and
    /// left as offsets when the binary cannot resolve them.
    #[test]
    fn a_daemon_crash_report_names_the_thread_and_the_functions() {
        let exe = std::env::current_exe().unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let base = maps
            .lines()
            .find(|l| l.ends_with(exe.to_str().unwrap()))
            .and_then(|l| usize::from_str_radix(l.split('-').next()?, 16).ok())
            .unwrap();
        let offset = crash_report as *const () as usize - base;
        let log = scenario_log(
            "c",
            &[],
            &format!(
                "PVKIT-XEN SCENARIO c NOTE backend: INFO x: connected\n\
             PVKIT-XEN SCENARIO c NOTE backend: pvkit-xen-backend: fatal SIGABRT (code -6) in thread \"vif-5-0\" (tid 81), sent; backtrace:\n\
             PVKIT-XEN SCENARIO c NOTE backend: /pvkit/pvkit-xen-backend(+{offset:#x})[0x55d0c0de0000]\n\
             PVKIT-XEN SCENARIO c NOTE backend: /lib/x86_64-linux-gnu/libc.so.6(abort+0xd3)[0x7fc5a8ba9472]\n\
             PVKIT-XEN SCENARIO c END reason=poweroff run_ms=1\n"
            ),
        );
        let h = report(&log);
        let r = h.scenario("c").unwrap();
        let got = crash_report(r, &exe).unwrap();
        assert!(got.contains("in thread \"vif-5-0\""), "{got}");
        assert!(got.contains("crash_report"), "{got}");
        let got = crash_report(r, Path::new("/nonexistent/pvkit-xen-backend")).unwrap();
        assert!(got.contains(&format!("{offset:#x}")), "{got}");
        let quiet = report(&scenario_log(
            "q",
            &[],
            "PVKIT-XEN SCENARIO q END reason=poweroff run_ms=1\n",
        ));
        assert_eq!(crash_report(quiet.scenario("q").unwrap(), &exe), None);
    }

    #[test]
    fn console_input_needs_the_typed_line() {
        let r = row("xen-pv/xenconsoled/console-input@xen-console");
        let name = domain_name(&r);
        let problems = |line: &str, typed: bool| {
            let pass = format!("PVKIT TEST {CONSOLE_TEST} PASS bytes=25 line=\"{line}\"");
            let lines = [
                "PVKIT BOOT platform=xen-pv",
                CONSOLE_READY,
                pass.as_str(),
                "PVKIT SUMMARY passed=1 failed=0",
                "PVKIT EXIT 0",
            ];
            let mut tail = String::new();
            if typed {
                tail.push_str(&format!(
                    "PVKIT-XEN SCENARIO {name} CHECK console_input=written\n"
                ));
            }
            tail.push_str(&format!(
                "PVKIT-XEN SCENARIO {name} END reason=poweroff run_ms=1\n"
            ));
            let h = report(&scenario_log(&name, &lines, &tail));
            check(&r, h.scenario(&name).unwrap(), "7", None)
        };
        assert_eq!(problems("pvkit-input-7", true), Vec::<String>::new());
        assert!(!problems("pvkit-input-6", true).is_empty(), "another line");
        assert!(!problems("pvkit-input-7", false).is_empty(), "dom0 typed nothing");
    }

    #[test]
    fn our_backend_must_be_ready_exit_cleanly_and_show_work() {
        let r = row("xen-pv/pvkit-xen/blk-hostile@xen-blk");
        let ours = OurDevices {
            disk: true,
            vifs: vec!["0:00:16:3e:00:00:10".into()],
            ..Default::default()
        };
        let integrity = row("xen-pv/pvkit-xen/blk-integrity@xen-blk");
        let log = |exit: &str, vbd_failed: u32, tx: u32| {
            format!(
                "PVKIT-XEN SCENARIO s BEGIN\n\
                 PVKIT-XEN SCENARIO s CHECK backend=ready\n\
                 PVKIT-XEN SCENARIO s CHECK backend_exit={exit}\n\
                 PVKIT-XEN SCENARIO s NOTE backend: INFO x: disconnected: requests=9 reads=4 failed={vbd_failed} \
                 events=3 device=vbd 51712 of domain 4\n\
                 PVKIT-XEN SCENARIO s NOTE backend: INFO x: disconnected: tx_packets={tx} tx_bytes=1 tx_errors=0 \
                 rx_packets=2 device=vif 0 of domain 4\n\
                 PVKIT-XEN SCENARIO s END reason=poweroff run_ms=9\n"
            )
        };
        let problems = |row: &Row, text: String| {
            let h = report(&text);
            let mut p = Vec::new();
            check_backend(row, &ours, h.scenario("s").unwrap(), &mut p);
            p
        };
        assert_eq!(problems(&integrity, log("0", 0, 5)), Vec::<String>::new());
        assert!(!problems(&integrity, log("still-running", 0, 5)).is_empty());
        assert!(
            !problems(&integrity, log("0", 1, 5)).is_empty(),
            "a failed request"
        );
        assert!(!problems(&integrity, log("0", 0, 0)).is_empty(), "no traffic");
        assert_eq!(
            problems(&r, log("0", 1, 5)),
            Vec::<String>::new(),
            "the hostile vbd fails on purpose"
        );
        assert_eq!(count_in("x requests=12 failed=0", "requests"), Some(12));
        assert_eq!(count_in("x requests=12", "failed"), None);
    }

    #[test]
    fn our_console_must_carry_a_line_each_way() {
        let s = spec(&row("xen-pv/pvkit-xen/linux-peer"), "n9", Profile::Test);
        let c = s.ours.unwrap().console.unwrap();
        let ConsoleMode::Log { input, .. } = &c.mode else {
            panic!("log mode")
        };
        let log = |logged: &str, read: &str, bytes_in: usize| {
            format!(
                "PVKIT-XEN SCENARIO s BEGIN\n\
                 PVKIT-XEN CONSOLE s | PVKIT-SELFCHECK hvc1-input={read}\r\n\
                 PVKIT-XEN SCENARIO s NOTE hvc1: {logged}\n\
                 PVKIT-XEN SCENARIO s NOTE backend: INFO x: disconnected: bytes_out=37 bytes_in={bytes_in} \
                 input_left=0 batches=1 sink_errors=0 lost_out=0 events=2 notifies=2 device=console 1 of domain 4\n\
                 PVKIT-XEN SCENARIO s END reason=poweroff run_ms=9\n"
            )
        };
        let problems = |text: String| {
            let h = report(&text);
            let s = h.scenario("s").unwrap();
            let mut p = Vec::new();
            check_console(
                &c,
                s,
                s.notes.iter().find(|n| n.contains("device=console 1 ")),
                &mut p,
            );
            p
        };
        let n = input.len() + 1;
        let good = log("PVKIT-SELFCHECK hvc1 nonce=n9", "pvkit-hvc1-input-n9", n);
        assert_eq!(problems(good.clone()), Vec::<String>::new());
        assert!(!problems(log("PVKIT-SELFCHECK hvc1 nonce=n8", "pvkit-hvc1-input-n9", n)).is_empty());
        assert!(
            !problems(log("PVKIT-SELFCHECK hvc1 nonce=n9", "", n)).is_empty(),
            "guest read nothing"
        );
        assert!(!problems(log("PVKIT-SELFCHECK hvc1 nonce=n9", "pvkit-hvc1-input-n9", n - 1)).is_empty());
        assert!(
            !problems(good.replace("bytes_out=37", "bytes_out=0")).is_empty(),
            "no output counted"
        );
        assert!(!problems(good.replace("device=console 1", "device=console 2")).is_empty());
    }

    #[test]
    fn xen_pv_costs_are_hypercalls_and_some_phase_sends_an_event() {
        let perf = |pattern: &str, hc: &str| {
            format!(
                "PVKIT PERF dev=xen-blk pattern={pattern} ops=40 exits=9 hypercalls=9 exits_pio=0 \
                 exits_mmio=0 exits_hlt=0 hc={hc} lat_p50_ns=1000"
            )
        };
        let problems = |lines: &[String]| {
            let mut lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            let pass = "PVKIT TEST t PASS exits=18 hypercalls=18 exits_pio=0 exits_mmio=0 exits_hlt=0 \
                        hc=event_channel_op:2,iret:16";
            lines.push(pass);
            let h = report(&scenario_log(
                "c",
                &lines,
                "PVKIT-XEN SCENARIO c END reason=poweroff run_ms=9\n",
            ));
            let mut p = Vec::new();
            check_cost_fields(h.scenario("c").unwrap(), "t", &["a", "b"], &mut p);
            p
        };
        let sends = "event_channel_op:1,iret:8";
        let quiet = "iret:5,sched_op:4";
        assert_eq!(
            problems(&[perf("a", sends), perf("b", sends)]),
            Vec::<String>::new()
        );
        assert_eq!(
            problems(&[perf("a", sends), perf("b", quiet)]),
            Vec::<String>::new(),
            "a short phase without a send (the backend was still busy) is fine"
        );
        assert_eq!(
            problems(&[perf("a", quiet), perf("b", quiet)]).len(),
            1,
            "no phase sent"
        );
        assert_eq!(problems(&[perf("a", sends)]).len(), 1, "a phase missing");
        let with_pio = perf("b", sends).replace("exits_pio=0", "exits_pio=2");
        assert_eq!(
            problems(&[perf("a", sends), with_pio]).len(),
            1,
            "port I/O on Xen PV"
        );
    }

    #[test]
    fn bad_input_needs_both_refusals() {
        let log = |exit: &str, state: &str, refused: &str| {
            format!(
                "PVKIT-XEN SCENARIO b BEGIN\n\
                 PVKIT-XEN SCENARIO b CHECK missing_image_exit={exit}\n\
                 PVKIT-XEN SCENARIO b NOTE missing-image: pvkit-xen-backend: error: vbd 51712: cannot open image \
                 {MISSING_IMAGE}: No such file or directory\n\
                 PVKIT-XEN SCENARIO b CHECK hostile_state={state}\n\
                 PVKIT-XEN SCENARIO b NOTE backend: ERROR x: {refused}: cannot map the ring (ring-ref \
                 [{HOSTILE_RING_REF}]): Invalid argument device=vbd {HOSTILE_VBD} of domain 3\n\
                 PVKIT-XEN SCENARIO b END reason=poweroff run_ms=9\n"
            )
        };
        let problems = |text: String| {
            let h = report(&text);
            let mut p = Vec::new();
            check_bad_input(h.scenario("b").unwrap(), &mut p);
            p
        };
        assert_eq!(problems(log("1", "5", "refused")), Vec::<String>::new());
        assert!(!problems(log("0", "5", "refused")).is_empty());
        assert!(!problems(log("1", "4", "refused")).is_empty());
        assert!(!problems(log("1", "5", "connected")).is_empty());
    }

    #[test]
    fn hostile_ring_needs_the_refusal_seen_by_the_guest_and_logged_by_the_daemon() {
        let log = |state: &str, logged: &str| {
            format!(
                "PVKIT-XEN SCENARIO h BEGIN\n\
                 PVKIT-XEN CONSOLE h | PVKIT TEST {HOSTILE_TEST} PASS honest_bytes=8 published_req_prod=184 \
                 backend_state={state} backend_error=1\n\
                 PVKIT-XEN SCENARIO h NOTE backend: ERROR x: {logged}: ring halted: index past \
                 device=vbd {XVDA} of domain 3\n\
                 PVKIT-XEN SCENARIO h END reason=poweroff run_ms=9\n"
            )
        };
        let problems = |text: String| {
            let h = report(&text);
            let mut p = Vec::new();
            check_hostile_ring(h.scenario("h").unwrap(), &mut p);
            p
        };
        let halted = "frontend broke the protocol, device halted";
        assert_eq!(problems(log("5", halted)), Vec::<String>::new());
        assert!(!problems(log("4", halted)).is_empty(), "still connected");
        assert!(!problems(log("5", "connected")).is_empty(), "nothing logged");
    }

    #[test]
    fn our_daemons_counts_must_match_the_guests() {
        let summary = |dev: &str, counts: &str| {
            format!(
                "PVKIT-XEN SCENARIO s NOTE backend: INFO x: disconnected: {counts} device={dev} of domain 4\n"
            )
        };
        let problems = |r: &Row, console: &[&str], counts: String| {
            let mut text = String::from("PVKIT-XEN SCENARIO s BEGIN\n");
            for l in console {
                text.push_str(&format!("PVKIT-XEN CONSOLE s | {l}\n"));
            }
            text.push_str(&counts);
            let h = report(&text);
            let mut p = Vec::new();
            let line = h.scenario("s").unwrap().notes[0].clone();
            cross_check(r, h.scenario("s").unwrap(), &line, &mut p);
            p
        };
        let blk = row("xen-pv/pvkit-xen/blk-throughput@xen-blk");
        let pass = "PVKIT TEST blk-throughput@xen-blk PASS phases=6 ops=71 mode=irq";
        assert!(
            problems(
                &blk,
                &[pass],
                summary("vbd 51712", "requests=71 failed=0 events=8 notifies=27")
            )
            .is_empty()
        );
        assert_eq!(
            problems(&blk, &[pass], summary("vbd 51712", "requests=70 failed=0")).len(),
            1
        );
        let net = row("xen-pv/pvkit-xen/net-echo@xen-net");
        let lines = [
            "PVKIT PERF dev=xen-net pattern=echo64 ops=480 notifies=60 irqs=60",
            "PVKIT PERF dev=xen-net pattern=echo1514 ops=296 notifies=37 irqs=37",
            "PVKIT TEST net-echo@xen-net PASS ops=200 notifies=25 irqs=25",
        ];
        let counts = |tx: u64, rx: u64| {
            summary(
                "vif 0",
                &format!("tx_packets={tx} rx_packets={rx} events=124 notifies=122"),
            )
        };
        assert!(problems(&net, &lines, counts(976, 976)).is_empty());
        assert!(
            !problems(&net, &lines, counts(900, 900)).is_empty(),
            "frames the daemon never saw"
        );
        assert!(
            !problems(&net, &lines, counts(976, 970)).is_empty(),
            "frames not echoed"
        );
        let con = row("xen-pv/pvkit-xen/console-echo@xen-console");
        let pass = ["PVKIT TEST console-echo@xen-console PASS ops=8192 notifies=31 irqs=8"];
        let counts = |echoed: u64, events: u64, notifies: u64| {
            summary(
                "console 1",
                &format!("bytes_in=8192 echoed={echoed} events={events} notifies={notifies}"),
            )
        };
        assert!(problems(&con, &pass, counts(8192, 12, 8)).is_empty());
        assert!(!problems(&con, &pass, counts(8000, 12, 8)).is_empty());
        assert!(
            !problems(&con, &pass, counts(8192, 40, 8)).is_empty(),
            "more events than sends"
        );
        assert!(
            !problems(&con, &pass, counts(8192, 12, 7)).is_empty(),
            "more upcalls than notifications"
        );
    }
}
