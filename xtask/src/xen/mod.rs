//! The Xen harness: real Xen 4.17 with a Linux dom0, booted in QEMU (TCG), running domU scenarios.
//!
//! - `packages`: the Debian packages, fetched with `apt-get download`, unpacked, cached by version;
//! - `elf`, `cpio`: `DT_NEEDED` / `.modinfo` reading and the newc writer the images need;
//! - `dom0`: dom0's initramfs (busybox, bash, toolstack, libraries, modules, `xtask/xen/init.sh`);
//! - `scenario`: what each domU is and what its report must show;
//! - `boot`: the QEMU command and runner; `report`: the serial log split per scenario.
//!
//! One Xen boot runs every requested scenario in turn (dom0's init creates each domU with `xl`,
//! waits for it, forwards its console and dom0's checks over the serial line, then powers off).

pub mod bench;
pub mod boot;
pub mod cpio;
pub mod dom0;
pub mod elf;
pub mod packages;
pub mod report;
pub mod scenario;

/// dom0's Ethernet echo peer: built into its own binary for dom0, included here for its tests.
#[cfg(test)]
#[path = "../../xen/echo.rs"]
mod echo_peer;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use self::dom0::Payload;
use self::report::HarnessReport;
use self::scenario::{Bundle, DomainSpec, XenScenario};
use crate::disk::DiskImage;
use crate::{provision, table, workspace};

/// `cargo xtask xen`: run Xen scenarios in one Xen boot.
#[derive(Debug, Args)]
pub struct XenArgs {
    /// Scenarios to run, in this order (default: those of `cargo xtask test`).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub scenario: Vec<XenScenario>,
    /// Boot this guest ELF instead of building the guest kernel.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Kill QEMU if the whole Xen boot has not powered off after this many seconds (default: 120 s
    /// plus each scenario's own timeout).
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Only show progress and results, not the serial line.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Where the harness keeps its packages, trees and images.
pub fn cache_dir() -> PathBuf {
    workspace::xtask_dir().join("xen")
}

/// Host-side durations of one harness run.
#[derive(Debug, Default, Clone)]
pub struct Timings {
    /// apt resolution, download and unpacking (near zero when cached).
    pub packages: Duration,
    /// Building the initramfs images.
    pub images: Duration,
    pub boot: boot::Milestones,
}

/// One finished harness boot.
pub struct Harness {
    pub report: HarnessReport,
    pub boot: boot::Boot,
    pub timings: Timings,
    pub log: PathBuf,
}

/// Fetches and builds what is needed, boots Xen with `bundle`'s scenarios and parses the result.
pub fn run_harness(
    bundle: &Bundle,
    log: &Path,
    timeout: Option<Duration>,
    on_line: impl FnMut(&str),
) -> Result<Harness> {
    let mut timings = Timings::default();
    provision::ensure(
        provision::Needs {
            qemu: true,
            xen_headers: false,
        },
        false,
    )?;
    let cache = cache_dir();
    std::fs::create_dir_all(&cache)?;
    let t0 = Instant::now();
    let (tree, kver) = packages::ensure_tree(&cache)?;
    timings.packages = t0.elapsed();

    let t0 = Instant::now();
    let xen = tree.join("boot/xen-4.17-amd64");
    if !xen.is_file() {
        let gz = tree.join("boot/xen-4.17-amd64.gz");
        let out = Command::new("gzip")
            .arg("-dc")
            .arg(&gz)
            .output()
            .with_context(|| format!("gzip -dc {}", gz.display()))?;
        if !out.status.success() {
            bail!("gzip -dc {} failed: {}", gz.display(), out.status);
        }
        std::fs::write(&xen, out.stdout)?;
    }
    let vmlinuz = tree.join(format!("boot/vmlinuz-{kver}"));
    let mut img = dom0::base(&tree, &kver)?;
    if bundle.specs.iter().any(|s| !s.vifs.is_empty()) {
        let echo = build_echo(&cache)?;
        img.host_program(&tree, &echo, scenario::ECHO_PATH)?;
    }
    if bundle.specs.iter().any(|s| s.ours.is_some()) {
        let backend = build_backend(&cache)?;
        img.host_program(&tree, &backend, scenario::BACKEND_PATH)?;
    }
    add_bundle(&mut img, bundle, &tree, &vmlinuz)?;
    let initramfs = cache.join("dom0-initramfs.cpio");
    img.write(&initramfs)?;
    timings.images = t0.elapsed();

    let timeout = timeout.unwrap_or_else(|| {
        Duration::from_secs(120) + bundle.specs.iter().map(|s| s.timeout).sum::<Duration>()
    });
    let machine = boot::Machine {
        xen,
        dom0_kernel: vmlinuz,
        dom0_initramfs: initramfs,
        drives: bundle.slots.iter().flatten().map(|s| s.image.clone()).collect(),
        timeout,
    };
    eprintln!("$ {}", workspace::display_command(&machine.command()?));
    let b = boot::boot(&machine, log, on_line)?;
    timings.boot = b.milestones.clone();
    Ok(Harness {
        report: HarnessReport::parse(&b.serial),
        boot: b,
        timings,
        log: log.to_owned(),
    })
}

/// The scenario files, the guest and the Linux domU into dom0's image.
fn add_bundle(img: &mut dom0::Image, bundle: &Bundle, tree: &Path, vmlinuz: &Path) -> Result<()> {
    let mut list = String::new();
    for (s, slot) in bundle.specs.iter().zip(&bundle.slots) {
        if s.name.is_empty() || !s.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            bail!(
                "scenario name {:?} must be non-empty ASCII letters, digits and '-'",
                s.name
            );
        }
        list.push_str(&s.name);
        list.push('\n');
        let dir = format!("pvkit/s/{}", s.name);
        let text = |t: &str| Payload::Bytes(t.as_bytes().to_vec());
        img.add(
            &format!("{dir}/domain.cfg"),
            0o644,
            text(&s.xl_config(slot.as_ref())),
        );
        if s.paused || s.ours.as_ref().is_some_and(|o| !o.hotplug) {
            img.add(&format!("{dir}/paused"), 0o644, text(""));
        }
        img.add(
            &format!("{dir}/timeout"),
            0o644,
            text(&format!("{}\n", s.timeout.as_secs().max(1))),
        );
        let mut pre = String::new();
        let mut post = String::new();
        // Our daemon is started first (the domain is paused) and must be gone before the disk is
        // detached.
        let running: Option<String> = match (scenario::backend_running(s, slot.as_ref()), &s.running) {
            (Some(b), Some(r)) => Some(b + r),
            (b, r) => b.or_else(|| r.clone()),
        };
        post.extend(scenario::backend_post(s));
        if let (Some(slot), Some(disk)) = (slot, s.host_disk) {
            DiskImage::create(&slot.image, disk.sectors, disk.fill_seed)?;
            pre.push_str(&scenario::disk_pre(slot));
            post.push_str(&scenario::disk_post(slot));
        }
        pre.extend(s.pre.clone());
        post.extend(s.post.clone());
        for (file, body) in [("pre", Some(pre)), ("running", running), ("post", Some(post))] {
            if let Some(body) = body.filter(|b| !b.is_empty()) {
                img.add(&format!("{dir}/{file}"), 0o644, text(&body));
            }
        }
    }
    img.add("pvkit/scenarios", 0o644, Payload::Bytes(list.into_bytes()));
    if bundle.specs.iter().any(|s| !s.vifs.is_empty()) {
        img.add(
            scenario::VIF_SCRIPT_PATH,
            0o755,
            Payload::Bytes(scenario::vif_script().into_bytes()),
        );
    }
    if let Some(guest) = &bundle.guest {
        if !guest.is_file() {
            bail!("guest ELF {} does not exist", guest.display());
        }
        img.add(scenario::GUEST_PATH, 0o644, Payload::File(guest.clone()));
    }
    if bundle.linux {
        img.add(
            scenario::LINUX_KERNEL_PATH,
            0o644,
            Payload::File(vmlinuz.to_owned()),
        );
        let mut domu = dom0::Image::default();
        domu.busybox(tree)?;
        domu.add(
            "init",
            0o755,
            Payload::Bytes(scenario::LINUX_DOMU_INIT.as_bytes().to_vec()),
        );
        let kver = tree_kernel_version(vmlinuz)?;
        for m in dom0::module_paths(tree, &kver, scenario::LINUX_DOMU_MODULES)? {
            let name = m.rsplit('/').next().expect("a path has a last part");
            domu.add(&format!("modules/{name}"), 0o644, Payload::File(tree.join(&m)));
        }
        let path = cache_dir().join("linux-domu-initramfs.cpio");
        domu.write(&path)?;
        img.add(scenario::LINUX_INITRD_PATH, 0o644, Payload::File(path));
    }
    Ok(())
}

/// Compiles `xtask/xen/echo.rs` (std only) with the host's `rustc` unless the binary is newer than
/// its source.
fn build_echo(cache: &Path) -> Result<PathBuf> {
    let src = workspace::root().join("xtask/xen/echo.rs");
    let out = cache.join("pvkit-echo");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&out).is_some() && modified(&out) >= modified(&src) {
        return Ok(out);
    }
    let mut cmd = Command::new("rustc");
    cmd.args([
        "--edition",
        "2024",
        "-O",
        "-C",
        "debuginfo=0",
        "--crate-name",
        "pvkit_echo",
        "-o",
    ])
    .arg(&out)
    .arg(&src)
    .current_dir(workspace::root());
    let o = cmd
        .output()
        .with_context(|| format!("running {}", workspace::display_command(&cmd)))?;
    if !o.status.success() {
        bail!(
            "building dom0's echo peer failed: {}\n{}",
            workspace::display_command(&cmd),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(out)
}

/// Builds `pvkit-xen-backend` (release) and copies it without debug info into the cache (the
/// dom0 image holds it in RAM).
fn build_backend(cache: &Path) -> Result<PathBuf> {
    let mut cmd = workspace::cargo();
    cmd.args([
        "build",
        "-p",
        "pvkit-backends",
        "--release",
        "--bin",
        "pvkit-xen-backend",
    ]);
    workspace::run_visible(&mut cmd)?;
    let built = workspace::target_dir().join("release/pvkit-xen-backend");
    let out = cache.join("pvkit-xen-backend");
    match Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&built)
        .arg(&out)
        .status()
    {
        Ok(st) if st.success() => Ok(out),
        // No binutils: ship it with its debug info (bigger, same program).
        Ok(_) | Err(_) => Ok(built),
    }
}

/// `6.1.0-N-amd64` from `.../vmlinuz-6.1.0-N-amd64`.
fn tree_kernel_version(vmlinuz: &Path) -> Result<String> {
    vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .map(str::to_owned)
        .with_context(|| format!("no kernel version in {}", vmlinuz.display()))
}

/// A per-run value the Linux self-check must echo (so an old log cannot pass).
pub fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:x}{:x}", t.as_secs(), std::process::id())
}

/// One row of results.
pub struct Row {
    pub name: String,
    /// `Err(reason)` if the scenario failed.
    pub result: std::result::Result<(), String>,
    pub time: Option<Duration>,
}

/// Checks every scenario of a finished harness run.
pub fn rows(h: &Harness, bundle: &Bundle, scenarios: &[XenScenario], nonce: &str) -> Vec<Row> {
    let boot_problem = boot_problem(h);
    scenarios
        .iter()
        .map(|s| {
            let name = s.name();
            let result = match h.report.scenario(name) {
                None => Err(format!(
                    "no report from dom0 for this scenario{}",
                    boot_problem
                        .as_ref()
                        .map(|p| format!(" ({p})"))
                        .unwrap_or_default()
                )),
                Some(r) => {
                    let problems = s.check(r, nonce, bundle.slot(name));
                    if problems.is_empty() {
                        Ok(())
                    } else {
                        Err(problems.join("; "))
                    }
                }
            };
            Row {
                name: format!("xen:{name}"),
                result,
                time: h.report.scenario(name).and_then(|r| r.run),
            }
        })
        .collect()
}

/// Why the boot as a whole went wrong, if it did.
pub fn boot_problem(h: &Harness) -> Option<String> {
    let mut p = Vec::new();
    p.extend(h.report.fatal.iter().map(|f| format!("dom0 init: {f}")));
    match &h.boot.exit {
        Ok(0) => {}
        Ok(c) => p.push(format!("QEMU exited with status {c} (dom0's poweroff gives 0)")),
        Err(why) => p.push(why.clone()),
    }
    if h.report.dom0_ready.is_none() {
        p.push("dom0 never reported its toolstack ready".to_owned());
    } else if !h.report.finished {
        p.push("dom0 did not finish the scenario list".to_owned());
    }
    (!p.is_empty()).then(|| p.join("; "))
}

/// Prints the measured times of a run.
pub fn print_timings(h: &Harness) {
    let t = &h.timings;
    let d = |x: Option<Duration>| x.map(table::duration).unwrap_or_else(|| "-".to_owned());
    println!(
        "xen harness: packages {}, images {}, Xen banner {}, dom0 ready {} (dom0 uptime {}), QEMU exit {}",
        table::duration(t.packages),
        table::duration(t.images),
        d(t.boot.xen_banner),
        d(t.boot.dom0_ready),
        h.report
            .dom0_ready
            .map(|s| format!("{s:.2} s"))
            .unwrap_or_else(|| "-".to_owned()),
        d(t.boot.exited),
    );
    for s in &h.report.scenarios {
        println!(
            "  domU {}: xl create {}, run {}, end {:?}",
            s.name,
            d(s.create),
            d(s.run),
            s.end
        );
    }
}

/// Shows a serial line: domU console lines without their prefix, the rest as is.
fn show_line(line: &str, quiet: bool) {
    if let Some(at) = line.find("PVKIT-XEN ") {
        let rest = &line[at + "PVKIT-XEN ".len()..];
        if let Some(c) = rest.strip_prefix("CONSOLE ") {
            if !quiet {
                println!("  {c}");
            }
        } else {
            eprintln!("[xen] {rest}");
        }
    } else if !quiet {
        println!("  | {line}");
    }
}

/// Which backends serve a domU's devices under `cargo xtask run --hypervisor xen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XenBackends {
    /// Linux's kernel blkback and netback in dom0.
    Linux,
    /// pvkit's userspace blkback and netback (`pvkit-xen-backend`) in dom0.
    Pvkit,
}

/// Where `cargo xtask run` runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Hypervisor {
    /// QEMU directly: the guest boots as a PVH guest of q35.
    Qemu,
    /// Real Xen 4.17 with a Linux dom0, booted in QEMU TCG: the guest runs as a PV domU.
    Xen,
}

/// `cargo xtask run --hypervisor xen`: our guest once as a PV domU, its tests in a table. The serial
/// log is `<target>/xtask/logs/xen-run.log`.
pub fn run_guest(args: &crate::RunArgs) -> Result<i32> {
    if args.accel != crate::qemu::Accel::Tcg {
        bail!("Xen runs under TCG only (it cannot boot under this machine's kvm_pvm)");
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!(
            "--timeout must be a positive number of seconds, got {}",
            args.timeout
        );
    }
    let mut words: Vec<String> = Vec::new();
    if args.tests.is_empty() {
        words.push(scenario::run_default_cmdline());
    } else {
        words.push(format!("tests={}", args.tests.join(",")));
    }
    words.extend(args.append.split_whitespace().map(str::to_owned));
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => workspace::build_guest()?,
    };
    let ours = args.xen_backends == XenBackends::Pvkit;
    let spec = scenario::run_spec(words.join(" "), Duration::from_secs_f64(args.timeout), ours);
    eprintln!(
        "xen: domU command line {:?}, a 16 MiB disk (xvda) and a vif, served by {} \
         (--devices does not apply: a PV domU has no PCI)",
        spec.cmdline,
        if ours {
            "pvkit-xen-backend (the switch's echo peer answers)"
        } else {
            "Linux's blkback and netback (dom0's echo peer answers)"
        }
    );
    let log = workspace::log_dir().join("xen-run.log");
    let quiet = args.quiet;
    let bundle = Bundle::new(vec![spec], Some(kernel), &cache_dir().join("disks"));
    let h = run_harness(&bundle, &log, None, |l| show_line(l, quiet))?;
    let Some(r) = h.report.scenario("run") else {
        print_timings(&h);
        println!("log: {}", log.display());
        println!(
            "RESULT: FAIL (no report from dom0: {})",
            boot_problem(&h).unwrap_or_default()
        );
        return Ok(1);
    };
    let t = &r.transcript;
    let mut names: Vec<&str> = Vec::new();
    for rec in &t.records {
        if let crate::console::Record::TestStart { name }
        | crate::console::Record::TestPass { name, .. }
        | crate::console::Record::TestFail { name, .. } = rec
            && !names.contains(&name.as_str())
        {
            names.push(name);
        }
    }
    let cells: Vec<Vec<String>> = names
        .iter()
        .map(|name| {
            let (result, detail) = match t.verdict(name) {
                Some(crate::console::Record::TestPass { fields, .. }) => ("PASS", fields.to_string()),
                Some(crate::console::Record::TestFail { reason, .. }) => ("FAIL", reason.clone()),
                _ => ("NO VERDICT", "started but never finished".to_owned()),
            };
            vec![(*name).to_owned(), result.to_owned(), detail]
        })
        .collect();
    println!();
    if cells.is_empty() {
        println!("(the guest reported no tests)");
    } else {
        print!("{}", table::render(&["test", "result", "details"], &cells));
    }
    let tests: Vec<&str> = names.clone();
    let mut problems = Vec::new();
    scenario::check_guest(r, &tests, &mut problems);
    for p in &problems {
        println!("problem: {p}");
    }
    print_timings(&h);
    println!("log: {}", log.display());
    let ok = problems.is_empty() && !names.is_empty();
    println!("{}", if ok { "RESULT: PASS" } else { "RESULT: FAIL" });
    Ok(if ok { 0 } else { 1 })
}

/// The row names `cargo xtask test` shows for the Xen scenarios.
pub fn test_suite_rows() -> Vec<String> {
    XenScenario::in_test_suite()
        .iter()
        .map(|s| format!("xen:{}", s.name()))
        .collect()
}

/// `cargo xtask test`'s Xen stage: the scenarios of [`XenScenario::in_test_suite`] in one Xen boot,
/// serial log in `log`. A boot that goes wrong fails every scenario with the reason.
pub fn test_suite(log: &Path, kernel: Option<&Path>) -> Result<Vec<Row>> {
    let scenarios = XenScenario::in_test_suite();
    let nonce = nonce();
    let specs: Vec<DomainSpec> = scenarios.iter().map(|s| s.spec(&nonce)).collect();
    let guest = match (kernel, specs.iter().any(|s| s.kernel == scenario::Kernel::Pvkit)) {
        (_, false) => None,
        (Some(k), true) => Some(k.to_owned()),
        (None, true) => Some(workspace::build_guest()?),
    };
    let bundle = Bundle::new(specs, guest, &cache_dir().join("disks"));
    let h = run_harness(&bundle, log, None, |l| {
        if let Some(at) = l.find("PVKIT-XEN SCENARIO ") {
            eprintln!("    [xen] {}", &l[at + "PVKIT-XEN ".len()..]);
        }
    })?;
    print_timings(&h);
    Ok(rows(&h, &bundle, scenarios, &nonce))
}

/// `cargo xtask xen`.
pub fn xen(args: &XenArgs) -> Result<i32> {
    let scenarios: Vec<XenScenario> = if args.scenario.is_empty() {
        XenScenario::in_test_suite().to_vec()
    } else {
        args.scenario.clone()
    };
    let nonce = nonce();
    let specs: Vec<DomainSpec> = scenarios.iter().map(|s| s.spec(&nonce)).collect();
    let needs_guest = specs.iter().any(|s| s.kernel == scenario::Kernel::Pvkit);
    let guest = match (&args.kernel, needs_guest) {
        (_, false) => None,
        (Some(k), true) => Some(k.clone()),
        (None, true) => Some(workspace::build_guest()?),
    };
    let bundle = Bundle::new(specs, guest, &cache_dir().join("disks"));
    let log = workspace::log_dir().join("xen.log");
    let quiet = args.quiet;
    let h = run_harness(&bundle, &log, args.timeout.map(Duration::from_secs_f64), |l| {
        show_line(l, quiet)
    })?;
    let rows = rows(&h, &bundle, &scenarios, &nonce);
    println!();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                if r.result.is_ok() { "PASS" } else { "FAIL" }.to_owned(),
                r.time.map(table::duration).unwrap_or_else(|| "-".to_owned()),
                r.result.clone().err().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["scenario", "result", "domU time", "problems"], &cells)
    );
    print_timings(&h);
    if let Some(p) = boot_problem(&h) {
        println!("boot problem: {p}");
    }
    println!("log: {}", h.log.display());
    let ok = rows.iter().all(|r| r.result.is_ok()) && boot_problem(&h).is_none();
    println!("{}", if ok { "RESULT: PASS" } else { "RESULT: FAIL" });
    Ok(if ok { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::echo_peer::{ETHERTYPE, echo_frame};

    #[test]
    fn echo_peer_swaps_macs_of_workload_frames_only() {
        let guest = [0x00, 0x16, 0x3e, 0, 0, 0x10];
        let peer = [0x02, 0, 0, 0, 0, 0x01];
        let mut frame = Vec::new();
        frame.extend_from_slice(&peer);
        frame.extend_from_slice(&guest);
        frame.extend_from_slice(&ETHERTYPE.to_be_bytes());
        frame.extend_from_slice(b"payload");
        let sent = frame.clone();
        assert!(echo_frame(&mut frame));
        assert_eq!(&frame[..6], &guest);
        assert_eq!(&frame[6..12], &peer);
        assert_eq!(&frame[12..], &sent[12..], "type and payload untouched");
        let mut ipv4 = sent.clone();
        ipv4[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let before = ipv4.clone();
        assert!(!echo_frame(&mut ipv4));
        assert_eq!(ipv4, before);
        assert!(!echo_frame(&mut sent[..13].to_vec()), "runt frame");
    }
}
