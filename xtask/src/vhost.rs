//! The `pvkit-vhost-user` backend of the QEMU PVH rows: pvkit's `vhost-user-blk` and
//! `vhost-user-net` daemons with QEMU as the vhost-user frontend, against our guest's virtio
//! drivers and a Debian Linux guest's.
//!
//! Every run: the daemons in their own process groups with their output in the row's log (the
//! Linux disk daemon in `<log>.blk.log`), QEMU through the one runner (`qemu::run`), the daemons
//! stopped (SIGTERM, then SIGKILL) afterwards, and what the guest wrote checked in the image on
//! the host.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::checks::{GuestRun, WORKLOAD_SEED};
use crate::costs::Measure;
use crate::disk::{DiskImage, SECTOR};
use crate::matrix::{Row, Workload};
use crate::outcome::{CellResult, Verdict};
use crate::qemu::{self, Boot, Device, QemuConfig, RunResult, VhostAttach};
use crate::qemu_env::{self, Ctx, guest_end};
use crate::{process, workspace};

/// Guest RAM of the Linux guest (its initramfs and page cache need a little more room).
const LINUX_MIB: u32 = 256;
/// Sectors of the images (32 MiB).
const IMAGE_SECTORS: u64 = 65536;
/// The echo peer's address (the daemon's default, spelled out on its command line; its MAC is the
/// workloads' `PEER_MAC`).
const PEER_IP: &str = "10.0.2.1";
const LINUX_IP: &str = "10.0.2.15";
/// vCPUs of the Linux guest and request queues of its disk (multi-queue).
const LINUX_QUEUES: u32 = 2;
/// Pings per size in the Linux scenario.
const PINGS: u64 = 8;
/// Linux modules for virtio-pci, virtio-blk and virtio-net (dependencies are added).
const LINUX_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "virtio_net"];
/// The Linux guest's init (a checked shell script).
const LINUX_INIT: &str = include_str!("../guest/vhost-linux-init.sh");

/// Where the sockets live: a short path in the temp directory (a Unix socket path must fit in 108
/// bytes, and the workspace may sit deep in a file system).
fn socket_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("pvkit-vhost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The daemon binaries, built in release mode.
#[derive(Debug, Clone)]
pub struct Bins {
    pub blk: PathBuf,
    pub net: PathBuf,
}

/// Builds the daemons once per xtask process.
pub fn bins() -> Result<Bins> {
    static BINS: OnceLock<std::result::Result<Bins, String>> = OnceLock::new();
    BINS.get_or_init(|| build_daemons().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("prerequisite missing: building the vhost-user daemons: {e}"))
}

fn build_daemons() -> Result<Bins> {
    let mut cmd = workspace::cargo();
    cmd.args(["build", "-p", "pvkit-backends", "--release", "--bins"]);
    workspace::run_visible(&mut cmd)?;
    let dir = workspace::target_dir().join("release");
    let bins = Bins {
        blk: dir.join("vhost-user-blk"),
        net: dir.join("vhost-user-net"),
    };
    for b in [&bins.blk, &bins.net] {
        if !b.is_file() {
            bail!("cargo built pvkit-backends but {} does not exist", b.display());
        }
    }
    Ok(bins)
}

/// A running daemon in its own process group.
struct Daemon {
    child: Child,
    log: PathBuf,
    done: Option<ExitStatus>,
}

impl Daemon {
    /// Starts `bin args`, output appended to `log`, and waits until `socket` exists.
    fn start(bin: &Path, args: &[OsString], socket: &Path, log: &Path) -> Result<Daemon> {
        let _ = std::fs::remove_file(socket);
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .env("RUST_LOG", "info");
        process::isolate(&mut cmd);
        writeln!(
            OpenOptions::new().append(true).open(log)?,
            "# daemon: {}",
            workspace::display_command(&cmd)
        )?;
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut d = Daemon {
            child,
            log: log.to_owned(),
            done: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Some(st) = d.child.try_wait()? {
                d.done = Some(st);
                bail!(
                    "{} exited with {st} before listening on {}: {}",
                    bin.display(),
                    socket.display(),
                    tail(log, 5)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not create {} within 10 s",
                    bin.display(),
                    socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(d)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Open descriptors and threads, for leak checks.
    fn resources(&self) -> (usize, usize) {
        let count = |p: String| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
        (
            count(format!("/proc/{}/fd", self.pid())),
            count(format!("/proc/{}/task", self.pid())),
        )
    }

    /// Waits up to `timeout` for the daemon to exit on its own.
    fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.done {
                return Ok(Some(st));
            }
            if let Some(st) = self.child.try_wait()? {
                self.done = Some(st);
                continue;
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then SIGKILL to the group if it has not exited within 5 s. Returns how it ended.
    fn stop(mut self) -> Result<ExitStatus> {
        if self.done.is_none() {
            // SAFETY: kill(2) on our own child, which has not been reaped (`done` is None).
            unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
            if self.wait_exit(Duration::from_secs(5))?.is_none() {
                process::kill_group(self.pid());
                self.done = Some(self.child.wait()?);
            }
        }
        Ok(self.done.take().expect("exited"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.done.is_none() {
            process::kill_group(self.child.id());
            let _ = self.child.wait();
        }
    }
}

fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// The daemon arguments `--socket S` plus `args`.
fn daemon_args(socket: &Path, args: &[&str]) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["--socket".into(), socket.into()];
    a.extend(args.iter().map(OsString::from));
    a
}

/// Boots our guest with `append` and `dev` served by the daemon at `socket`. Each boot's console
/// goes to `<log>.<round>.qemu.log`, the command line and outcome also into `log`.
fn boot(
    ctx: &Ctx,
    dev: Device,
    socket: &Path,
    append: &str,
    timeout: Duration,
    log: &Path,
    round: &str,
) -> Result<RunResult> {
    let mut cfg = QemuConfig::pvh(&ctx.elf, append.to_owned(), vec![dev], timeout);
    cfg.accel = ctx.accel;
    cfg.io.vhost.insert(
        dev,
        VhostAttach {
            socket: socket.to_owned(),
            queues: 1,
        },
    );
    let qlog = log.with_extension(format!("{round}.qemu.log"));
    let r = qemu::run(&cfg, &qlog, qemu_env::show(ctx.verbose))?;
    writeln!(
        OpenOptions::new().create(true).append(true).open(log)?,
        "# qemu ({round}): {}\n# console: {}\n# outcome: {} after {:.2} s",
        r.command,
        qlog.display(),
        r.outcome,
        r.wall.as_secs_f64()
    )?;
    Ok(r)
}

/// The guest passed `test`: the shared checks, or a message for `bail!`.
fn passed(row: &Row, r: &RunResult, ctx: &Ctx) -> Result<(), String> {
    let end = guest_end(r);
    let run = GuestRun {
        transcript: &r.transcript,
        end: &end,
        test_times: Some(&r.test_times),
    };
    let problems = qemu_env::guest_checks(row, &run, r, ctx.accel);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Runs one `pvkit-vhost-user` row.
pub fn run_row(row: &Row, ctx: &Ctx, log: &Path) -> Result<CellResult> {
    let _ = std::fs::remove_file(log);
    let mut cell = CellResult::new(row, Verdict::Pass);
    let bins = match bins() {
        Ok(b) => b,
        Err(e) => {
            cell.verdict = Verdict::Fail(format!("{e:#}"));
            return Ok(cell);
        }
    };
    let work = workspace::xtask_dir().join("vhost");
    std::fs::create_dir_all(&work)?;
    let result = match row.workload {
        Workload::BadInput => missing_image(&bins, &work, log),
        Workload::BlkIntegrity | Workload::BlkThroughput | Workload::BlkError => {
            blk_once(row, ctx, &bins, &work, log, &mut cell.costs)
        }
        Workload::BlkReconnect => blk_reconnect(row, ctx, &bins, &work, log),
        Workload::NetEcho => net_echo(row, ctx, &bins, log, &mut cell.costs),
        Workload::LinuxPeer => linux(&bins, &work, log),
        w => bail!("no vhost-user scenario runs {}", w.name()),
    };
    match result {
        Ok(notes) => cell.notes = notes,
        Err(e) => cell.verdict = Verdict::Fail(format!("{e:#}")),
    }
    Ok(cell)
}

/// A nonexistent image is refused at startup with a message naming it; nothing listens.
fn missing_image(bins: &Bins, work: &Path, log: &Path) -> Result<Vec<String>> {
    let socket = socket_dir()?.join("missing.sock");
    let _ = std::fs::remove_file(&socket);
    let image = work.join("no-such-dir/no-such-disk.img");
    let mut cmd = Command::new(&bins.blk);
    cmd.arg("--socket")
        .arg(&socket)
        .arg("--image")
        .arg(&image)
        .stdin(Stdio::null());
    let shown = workspace::display_command(&cmd);
    let out = cmd
        .output()
        .with_context(|| format!("running {}", bins.blk.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    std::fs::write(
        log,
        format!("# command: {shown}\n# exit: {}\n{stderr}", out.status),
    )?;
    if out.status.success() {
        bail!("vhost-user-blk accepted a missing image (exit 0)");
    }
    let first = stderr.lines().next().unwrap_or("").trim().to_owned();
    let path = image.display().to_string();
    if !stderr.contains(&path) || !stderr.contains("No such file") {
        bail!("the startup error does not name the missing image {path} and the cause: {stderr:?}");
    }
    if socket.exists() {
        bail!("vhost-user-blk created its socket although the image is missing");
    }
    Ok(vec![format!("refused at startup with {}: {first}", out.status)])
}

/// One boot of a block workload against one daemon: integrity (the image checked on the host),
/// throughput (its phases are the row's costs), or a write to a read-only disk (refused with the
/// device's error, image unchanged, the refusal logged).
fn blk_once(
    row: &Row,
    ctx: &Ctx,
    bins: &Bins,
    work: &Path,
    log: &Path,
    costs: &mut Vec<Measure>,
) -> Result<Vec<String>> {
    let name = row.workload.name();
    let img_path = work.join(format!("{name}.img"));
    let img = DiskImage::create(&img_path, IMAGE_SECTORS, 0x7668_6f73)?;
    let socket = socket_dir()?.join(format!("{name}.sock"));
    let image = img_path.to_string_lossy().into_owned();
    let mut args = vec!["--image", image.as_str(), "--connections", "1"];
    if row.workload == Workload::BlkError {
        args.push("--read-only");
    }
    let mut daemon = Daemon::start(&bins.blk, &daemon_args(&socket, &args), &socket, log)?;
    let append = qemu_env::cmdline(row, ctx.profile, ctx.accel);
    let r = boot(
        ctx,
        Device::VirtioBlk,
        &socket,
        &append,
        Duration::from_secs(60),
        log,
        "guest",
    )?;
    passed(row, &r, ctx).map_err(anyhow::Error::msg)?;
    let mut notes = vec![format!("guest PASS in {:.2} s", r.wall.as_secs_f64())];
    match row.workload {
        Workload::BlkIntegrity => {
            let extents = crate::rig::param(&append, &row.test(), "extents")
                .unwrap_or(pvkit_frontends::workload::defaults::INTEGRITY_EXTENTS as u64);
            let check = img.verify_integrity(WORKLOAD_SEED, extents as usize, true)?;
            notes.push(format!(
                "image holds the guest's pattern: {} extents, {} sectors, crc32 {:#010x}; every other sector untouched",
                check.extents, check.sectors_written, check.crc32
            ));
        }
        Workload::BlkThroughput => {
            costs.extend(r.transcript.perfs().map(Measure::from_perf));
            if costs.len() != 6 {
                bail!("{} throughput phases reported, expected 6", costs.len());
            }
        }
        Workload::BlkError => {
            img.verify_unchanged()?;
            notes.push("image unchanged".to_owned());
        }
        _ => unreachable!("blk_once runs integrity, throughput and error rows"),
    }
    if daemon.wait_exit(Duration::from_secs(5))?.is_none() {
        bail!("vhost-user-blk (--connections 1) did not exit after QEMU quit");
    }
    if row.workload == Workload::BlkError {
        if !std::fs::read_to_string(log)?.contains("refused: the device is read-only") {
            bail!("the daemon's log does not show the refused write");
        }
        notes.push("the daemon logged the refused write".to_owned());
    }
    Ok(notes)
}

/// One daemon, several QEMUs: two integrity runs with a QEMU killed in the middle of I/O between
/// them (the daemon must not grow in descriptors or threads), then a second daemon on the same
/// image with O_DIRECT and a worker pool of 2.
fn blk_reconnect(row: &Row, ctx: &Ctx, bins: &Bins, work: &Path, log: &Path) -> Result<Vec<String>> {
    let img_path = work.join("blk-reconnect.img");
    let img = DiskImage::create(&img_path, IMAGE_SECTORS, 0x7668_6f73)?;
    let socket = socket_dir()?.join("blk-reconnect.sock");
    let image = img_path.to_string_lossy().into_owned();
    let daemon = Daemon::start(
        &bins.blk,
        &daemon_args(&socket, &["--image", &image]),
        &socket,
        log,
    )?;
    let test = "blk-integrity@virtio-blk";
    let integrity = Row {
        workload: Workload::BlkIntegrity,
        ..*row
    };
    let extents = 64u64;
    let mut notes = Vec::new();
    let mut after = Vec::new();
    for (round, seed) in [(1, 11u64), (2, 22u64)] {
        if round == 2 {
            // A QEMU killed in the middle of I/O (no orderly vring shutdown) before round 2: 1 s
            // phases, killed ~3.9 s after launch, in phase 3 or 4 (random reads or writes at qd 32).
            let cmdline = "tests=blk-throughput@virtio-blk blk-throughput@virtio-blk.ms=1000";
            let r = boot(
                ctx,
                Device::VirtioBlk,
                &socket,
                cmdline,
                Duration::from_millis(3900),
                log,
                "killed",
            )?;
            let phases = r.transcript.perfs().count();
            if r.exit_code.is_some() || phases >= 6 {
                bail!(
                    "the throughput run meant to be killed mid-I/O ended by itself ({})",
                    r.outcome
                );
            }
            if phases == 0 {
                bail!("QEMU was killed before the guest's first I/O phase ended (no PERF line in 3.9 s)");
            }
            notes.push(format!(
                "a QEMU killed in the middle of I/O (after {phases} throughput phases) was survived"
            ));
            std::thread::sleep(Duration::from_millis(300));
        }
        let cmdline = format!("tests={test} {test}.seed={seed} {test}.extents={extents} {test}.qd=16");
        let r = boot(
            ctx,
            Device::VirtioBlk,
            &socket,
            &cmdline,
            Duration::from_secs(60),
            log,
            &format!("round{round}"),
        )?;
        passed(&integrity, &r, ctx).map_err(|e| anyhow::anyhow!("round {round}: {e}"))?;
        // Round 1 is the only writer of a fresh image; later runs overwrite parts of it.
        let check = img
            .verify_integrity(seed, extents as usize, round == 1)
            .with_context(|| format!("round {round}: image check"))?;
        notes.push(format!(
            "round {round}: guest PASS in {:.2} s; image holds the pattern of seed {seed}: {} extents, {} sectors, crc32 {:#010x}",
            r.wall.as_secs_f64(),
            check.extents,
            check.sectors_written,
            check.crc32
        ));
        // Let the daemon notice the disconnect and release the connection.
        std::thread::sleep(Duration::from_millis(300));
        after.push(daemon.resources());
    }
    if after[0] != after[1] {
        bail!(
            "the daemon grew across a reconnect: (fds, threads) {:?} after round 1, {:?} after round 2",
            after[0],
            after[1]
        );
    }
    let st = daemon.stop()?;
    if !st.success() {
        bail!("vhost-user-blk did not exit cleanly on SIGTERM: {st}");
    }
    notes.push(format!(
        "daemon (fds, threads) {:?} after each connection; exited 0 on SIGTERM",
        after[0]
    ));

    // Round 3: a second daemon on the same image with O_DIRECT and the worker pool.
    let pool = |direct: bool| {
        let mut a = vec!["--image", image.as_str(), "--workers", "2", "--connections", "1"];
        if direct {
            a.push("--direct");
        }
        daemon_args(&socket, &a)
    };
    let (mut daemon, direct) = match Daemon::start(&bins.blk, &pool(true), &socket, log) {
        Ok(d) => (d, true),
        // A filesystem without O_DIRECT (tmpfs) refuses the open: say so and test the pool alone.
        Err(e) => {
            notes.push(format!("O_DIRECT unavailable for {}: {e:#}", img_path.display()));
            (Daemon::start(&bins.blk, &pool(false), &socket, log)?, false)
        }
    };
    let seed = 33u64;
    let cmdline = format!("tests={test} {test}.seed={seed} {test}.extents={extents} {test}.qd=16");
    let r = boot(
        ctx,
        Device::VirtioBlk,
        &socket,
        &cmdline,
        Duration::from_secs(60),
        log,
        "round3",
    )?;
    passed(&integrity, &r, ctx).map_err(|e| anyhow::anyhow!("round 3 (workers=2, direct={direct}): {e}"))?;
    let check = img
        .verify_integrity(seed, extents as usize, false)
        .context("round 3: image check")?;
    if daemon.wait_exit(Duration::from_secs(5))?.is_none() {
        bail!("vhost-user-blk (--connections 1) did not exit after QEMU quit");
    }
    notes.push(format!(
        "round 3 (worker pool of 2, O_DIRECT {}): guest PASS; image holds seed {seed}: {} sectors, crc32 {:#010x}",
        if direct { "on" } else { "off" },
        check.sectors_written,
        check.crc32
    ));
    Ok(notes)
}

/// Our guest's net-echo over vhost-user-net with the net core's echo peer: every frame the guest
/// verified went through the peer.
fn net_echo(row: &Row, ctx: &Ctx, bins: &Bins, log: &Path, costs: &mut Vec<Measure>) -> Result<Vec<String>> {
    let socket = socket_dir()?.join("net-echo.sock");
    let peer_mac = crate::peer::net_echo::mac_text(&pvkit_frontends::workload::net::PEER_MAC);
    let mut daemon = Daemon::start(
        &bins.net,
        &daemon_args(
            &socket,
            &["--echo-peer", "--peer-mac", &peer_mac, "--connections", "1"],
        ),
        &socket,
        log,
    )?;
    let append = qemu_env::cmdline(row, ctx.profile, ctx.accel);
    let r = boot(
        ctx,
        Device::VirtioNet,
        &socket,
        &append,
        Duration::from_secs(60),
        log,
        "guest",
    )?;
    passed(row, &r, ctx).map_err(anyhow::Error::msg)?;
    let test = row.test();
    let frames = r
        .transcript
        .verdict(&test)
        .and_then(|v| match v {
            crate::console::Record::TestPass { fields, .. } => fields.get_u64("ops"),
            _ => None,
        })
        .unwrap_or(0);
    costs.extend(r.transcript.perfs().map(Measure::from_perf));
    let rate: u64 = costs.iter().map(|m| m.ops).sum();
    let Some(_) = daemon.wait_exit(Duration::from_secs(5))? else {
        bail!("vhost-user-net (--connections 1) did not exit after QEMU quit");
    };
    let echoed = peer_stat(&daemon.log, "echoed").context("the daemon's log has no echo peer counts")?;
    // The guest's frames plus its rate phases all went through the echo peer.
    if echoed < frames + rate {
        bail!(
            "the echo peer answered {echoed} frames, the guest verified {frames} and {rate} in its rate phases"
        );
    }
    Ok(vec![format!(
        "guest PASS: {frames} frames verified, {rate} in its rate phases; echo peer answered {echoed} frames"
    )])
}

/// A counter from the daemon's final `echo peer done stats=EchoStats { echoed: N, ... }` line.
fn peer_stat(log: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|l| l.contains("echo peer done"))?;
    let at = line.find(&format!("{key}: "))? + key.len() + 2;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The value after `PVKIT-LINUX <key>=` in the console.
fn linux_value<'a>(console: &'a str, key: &str) -> Option<&'a str> {
    let prefix = format!("PVKIT-LINUX {key}=");
    console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(prefix.as_str()))
        .map(str::trim)
}

fn read_image(path: &Path) -> Result<Vec<u8>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if data.len() as u64 != IMAGE_SECTORS * SECTOR as u64 {
        bail!(
            "image {} is {} bytes, it was created with {}",
            path.display(),
            data.len(),
            IMAGE_SECTORS * SECTOR as u64
        );
    }
    Ok(data)
}

fn sha256_of(data: &[u8]) -> Result<String> {
    // No hashing crate in xtask: sha256sum(1) from coreutils.
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running sha256sum")?;
    child.stdin.take().expect("piped stdin").write_all(data)?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.split_whitespace().next().unwrap_or("").to_owned())
}

/// Builds the Linux initramfs (busybox, the virtio modules, the init script) from the Debian packages
/// the Xen harness uses (shared cache). Returns the kernel and the initramfs.
fn linux_images(work: &Path) -> Result<(PathBuf, PathBuf)> {
    use crate::xen::dom0::{Image, Payload, module_paths};
    let (tree, kver) = crate::xen::packages::ensure_tree(&crate::xen::cache_dir())?;
    let kernel = tree.join(format!("boot/vmlinuz-{kver}"));
    if !kernel.is_file() {
        bail!("{} is missing from the unpacked kernel package", kernel.display());
    }
    let modules = module_paths(&tree, &kver, LINUX_MODULES)?;
    let mut img = Image::default();
    img.busybox(&tree)?;
    for m in &modules {
        img.add(m, 0o644, Payload::File(tree.join(m)));
    }
    let mut list = modules.join("\n");
    list.push('\n');
    img.add("modules.list", 0o644, Payload::Bytes(list.into_bytes()));
    img.add("init", 0o755, Payload::Bytes(LINUX_INIT.as_bytes().to_vec()));
    let initramfs = work.join("linux-initramfs.cpio");
    img.write(&initramfs)?;
    Ok((kernel, initramfs))
}

/// A Debian Linux guest: virtio_blk over vhost-user-blk (dd with checksums, discard) and virtio_net
/// over vhost-user-net (ping to the echo peer); the image is checked on the host.
fn linux(bins: &Bins, work: &Path, log: &Path) -> Result<Vec<String>> {
    let (kernel, initramfs) =
        linux_images(work).context("prerequisite missing: the Linux guest (Debian packages)")?;
    let img_path = work.join("linux.img");
    DiskImage::create(&img_path, IMAGE_SECTORS, 0x6c69_6e78)?;
    let host_half = read_image(&img_path)?[8 << 20..16 << 20].to_vec();
    let host_sha = sha256_of(&host_half)?;
    let blk_sock = socket_dir()?.join("linux-blk.sock");
    let net_sock = socket_dir()?.join("linux-net.sock");
    let blk_log = log.with_extension("blk.log");
    let _ = std::fs::remove_file(&blk_log);
    let image = img_path.to_string_lossy().into_owned();
    let queues = LINUX_QUEUES.to_string();
    let mut blk = Daemon::start(
        &bins.blk,
        &daemon_args(
            &blk_sock,
            &["--image", &image, "--queues", &queues, "--connections", "1"],
        ),
        &blk_sock,
        &blk_log,
    )?;
    let mut net = Daemon::start(
        &bins.net,
        &daemon_args(
            &net_sock,
            &["--echo-peer", "--peer-ip", PEER_IP, "--connections", "1"],
        ),
        &net_sock,
        log,
    )?;
    let mut cfg = QemuConfig::pvh(
        Path::new("/"),
        String::new(),
        vec![Device::VirtioBlk, Device::VirtioNet],
        Duration::from_secs(180),
    );
    cfg.boot = Boot::Linux {
        kernel,
        initrd: initramfs,
        append: format!(
            "console=ttyS0 rdinit=/init quiet pvkit.ip={LINUX_IP} pvkit.peer={PEER_IP} pvkit.pings={PINGS}"
        ),
    };
    cfg.memory_mib = LINUX_MIB;
    cfg.cpus = LINUX_QUEUES;
    cfg.first_output_timeout = Duration::from_secs(30);
    cfg.io.vhost.insert(
        Device::VirtioBlk,
        VhostAttach {
            socket: blk_sock,
            queues: LINUX_QUEUES,
        },
    );
    cfg.io.vhost.insert(
        Device::VirtioNet,
        VhostAttach {
            socket: net_sock,
            queues: 1,
        },
    );
    let qlog = log.with_extension("qemu.log");
    let r = qemu::run(&cfg, &qlog, |_| {})?;
    let c = std::fs::read_to_string(&qlog).unwrap_or_default();
    writeln!(
        OpenOptions::new().create(true).append(true).open(log)?,
        "# qemu: {}\n# console: {}\n# outcome: {}",
        r.command,
        qlog.display(),
        r.outcome
    )?;
    if let Some(l) = c.lines().find(|l| l.contains("PVKIT-LINUX FAIL")) {
        bail!("Linux guest: {}", l.trim());
    }
    if !c.contains("PVKIT-LINUX done") {
        bail!(
            "the Linux guest did not finish ({}): {}",
            r.outcome,
            c.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
        );
    }
    let get = |k: &str| linux_value(&c, k).with_context(|| format!("the Linux guest printed no {k}"));
    let mut notes = Vec::new();
    if get("vda_sectors")? != IMAGE_SECTORS.to_string() {
        bail!(
            "Linux sees {} sectors, the image has {IMAGE_SECTORS}",
            get("vda_sectors")?
        );
    }
    if get("hw_queues")? != LINUX_QUEUES.to_string() {
        bail!(
            "Linux runs {} virtio-blk queues, QEMU was given {LINUX_QUEUES}",
            get("hw_queues")?
        );
    }
    notes.push(format!(
        "Linux uses {LINUX_QUEUES} virtio-blk queues (2 vCPUs, multi-queue)"
    ));
    let wrote = get("wrote_sha256")?;
    if get("readback_sha256")? != wrote {
        bail!(
            "Linux read back {} after writing {wrote}",
            get("readback_sha256")?
        );
    }
    if get("host_sha256")? != host_sha {
        bail!(
            "Linux read {} from the host's half of the image, the host wrote {host_sha}",
            get("host_sha256")?
        );
    }
    notes.push(format!(
        "Linux wrote 8 MiB (sha256 {wrote}), read it back and the host's 8 MiB equal"
    ));
    let zeros = sha256_of(&vec![0u8; 1 << 20])?;
    if get("discard_sha256")? != zeros {
        bail!("a discarded MiB does not read back as zeros in Linux");
    }
    for key in ["ping1400", "ping56"] {
        let prefix = format!("PVKIT-LINUX {key} ");
        let line = c
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .with_context(|| format!("no {key} result"))?;
        if !line.contains(&format!("{PINGS} packets transmitted, {PINGS} packets received")) {
            bail!("Linux {key}: {line}");
        }
    }
    notes.push(format!(
        "Linux pinged {PEER_IP} {PINGS}x1400 B and {PINGS}x56 B, all answered"
    ));
    if blk.wait_exit(Duration::from_secs(5))?.is_none() || net.wait_exit(Duration::from_secs(5))?.is_none() {
        bail!("a daemon (--connections 1) did not exit after QEMU quit");
    }
    let icmp = peer_stat(&net.log, "icmp").context("no echo peer counts in the daemon's log")?;
    let arp = peer_stat(&net.log, "arp").unwrap_or(0);
    if icmp != 2 * PINGS || arp == 0 {
        bail!(
            "the echo peer counted {icmp} pings and {arp} ARP requests, expected {} and >= 1",
            2 * PINGS
        );
    }
    // The host's view of the image: the guest's 8 MiB, the host's 8 MiB untouched, the discarded MiB zero.
    let data = read_image(&img_path)?;
    let image_sha = sha256_of(&data[..8 << 20])?;
    if image_sha != wrote {
        bail!("the image's first 8 MiB hash to {image_sha}, the guest wrote {wrote}");
    }
    if data[8 << 20..16 << 20] != host_half[..] {
        bail!("the host's half of the image changed");
    }
    if data[24 << 20..25 << 20].iter().any(|&b| b != 0) {
        bail!("the discarded MiB is not zero in the image");
    }
    notes.push(format!(
        "image checked on the host (sha256 {image_sha}, discard punched); echo peer: {icmp} pings, {arp} ARP; QEMU {:.1} s",
        r.wall.as_secs_f64()
    ));
    Ok(notes)
}

/// Removes the socket directory of this xtask process.
pub fn cleanup() {
    if let Ok(dir) = socket_dir() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_counts_are_read_from_its_last_summary() {
        let dir = std::env::temp_dir().join(format!("pvkit-vhost-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("d.log");
        std::fs::write(
            &log,
            "x\nINFO echo peer done stats=EchoStats { echoed: 3, icmp: 1 }\n\
             INFO echo peer done stats=EchoStats { echoed: 412, icmp: 16, arp: 2 }\n",
        )
        .unwrap();
        assert_eq!(peer_stat(&log, "echoed"), Some(412));
        assert_eq!(peer_stat(&log, "arp"), Some(2));
        assert_eq!(peer_stat(&log, "nothing"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
