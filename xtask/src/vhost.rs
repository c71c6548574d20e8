//! The vhost-user daemons of `backends/` (`vhost-user-blk`, `vhost-user-net`) against real peers in
//! QEMU: our guest's virtio drivers and a Debian Linux guest's. Scenarios for `cargo xtask test`
//! (group `vhost`, rows `vhost:<name>`) and the block comparison of `cargo xtask bench`.
//!
//! Every run: the daemons in their own process groups with their logs in `<logs>/vhost-*.log`, QEMU
//! under a timeout, the daemons stopped (SIGTERM, then SIGKILL) afterwards, and what the guest wrote
//! checked in the image on the host.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::console::Transcript;
use crate::disk::DiskImage;
use crate::{process, workspace};

const QBOOT: &str = "/usr/share/qemu/qboot.rom";
/// Guest RAM of every vhost run; vhost-user needs it shared (memfd, share=on).
const GUEST_MIB: u64 = 128;
/// Linux needs a little more room for its initramfs and page cache.
const LINUX_MIB: u64 = 256;
/// Sectors of the images (32 MiB).
const IMAGE_SECTORS: u64 = 65536;
/// The echo peer's addresses (the daemon's defaults, spelled out on its command line).
const PEER_MAC: &str = "02:00:00:00:00:01";
const PEER_IP: &str = "10.0.2.1";
const LINUX_IP: &str = "10.0.2.15";
/// vCPUs of the Linux guest and request queues of its disk (multi-queue).
const LINUX_QUEUES: u32 = 2;
/// Pings per size in the Linux scenario.
const PINGS: u64 = 8;
/// Linux modules for virtio-pci, virtio-blk and virtio-net (dependencies are added).
const LINUX_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "virtio_net"];

/// One result row.
#[derive(Debug)]
pub struct Row {
    pub name: String,
    pub result: Result<(), String>,
    pub time: Option<Duration>,
    pub log: PathBuf,
}

/// The scenarios, in the order they run.
pub const SCENARIOS: &[&str] = &[
    "missing-image",
    "blk-integrity@vhost-user-blk",
    "blk-error@vhost-user-blk",
    "net-echo@vhost-user-net",
    "linux@vhost-user",
];

/// Row names (`vhost:<scenario>`).
pub fn row_names() -> Vec<String> {
    SCENARIOS.iter().map(|s| format!("vhost:{s}")).collect()
}

/// Where the scenarios' sockets live: a short path in the temp directory (a Unix socket path must fit
/// in 108 bytes, and the workspace may sit deep in a file system).
fn socket_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("pvkit-vhost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The daemon binaries, built in release mode.
struct Bins {
    blk: PathBuf,
    net: PathBuf,
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

/// QEMU's arguments shared by every vhost run: q35 with memfd-backed, shared guest RAM.
fn qemu_base(mib: u64) -> Vec<OsString> {
    qemu_base_smp(mib, 1)
}

fn qemu_base_smp(mib: u64, cpus: u32) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    for s in [
        "-machine",
        "q35,memory-backend=mem",
        "-object",
        &format!("memory-backend-memfd,id=mem,size={mib}M,share=on"),
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        &format!("{mib}M"),
        "-smp",
        &cpus.to_string(),
        "-bios",
        QBOOT,
        "-nodefaults",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
    ] {
        a.push(s.into());
    }
    a
}

fn vhost_blk_args(socket: &Path) -> Vec<OsString> {
    vhost_blk_args_mq(socket, 1)
}

/// `queues` request queues (QEMU asks the daemon how many it offers; at most that many).
fn vhost_blk_args_mq(socket: &Path, queues: u32) -> Vec<OsString> {
    let mut chardev = OsString::from("socket,id=vu,path=");
    chardev.push(socket);
    vec![
        "-chardev".into(),
        chardev,
        "-device".into(),
        format!("vhost-user-blk-pci,chardev=vu,num-queues={queues}").into(),
    ]
}

fn vhost_net_args(socket: &Path) -> Vec<OsString> {
    let mut chardev = OsString::from("socket,id=vn,path=");
    chardev.push(socket);
    vec![
        "-chardev".into(),
        chardev,
        "-netdev".into(),
        "vhost-user,id=n0,chardev=vn".into(),
        "-device".into(),
        "virtio-net-pci,netdev=n0,romfile=".into(),
    ]
}

/// Our guest kernel with `cmdline`.
fn guest_args(elf: &Path, cmdline: &str) -> Vec<OsString> {
    vec![
        "-device".into(),
        "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
        "-kernel".into(),
        elf.into(),
        "-append".into(),
        cmdline.into(),
    ]
}

/// What one QEMU run produced.
struct QemuRun {
    /// Exit code (None: killed by the timeout or a signal).
    code: Option<i32>,
    console: String,
    transcript: Transcript,
    wall: Duration,
}

/// Runs QEMU with `args` under `timeout`, its output appended to `log`.
fn run_qemu(args: &[OsString], log: &Path, timeout: Duration) -> Result<QemuRun> {
    let qemu = crate::qemu::QemuConfig::default_qemu();
    let mut cmd = Command::new(&qemu);
    cmd.args(args);
    writeln!(
        OpenOptions::new().create(true).append(true).open(log)?,
        "# qemu (timeout {} s): {}",
        timeout.as_secs(),
        workspace::display_command(&cmd)
    )?;
    let out_path = log.with_extension("qemu.out");
    let out = File::create(&out_path)?;
    cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    process::isolate(&mut cmd);
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", qemu.display()))?;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if t0.elapsed() > timeout || process::interrupted() {
            process::kill_group(child.id());
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wall = t0.elapsed();
    let console = String::from_utf8_lossy(&std::fs::read(&out_path)?).into_owned();
    let _ = std::fs::remove_file(&out_path);
    let mut f = OpenOptions::new().append(true).open(log)?;
    f.write_all(console.as_bytes())?;
    let code = status.and_then(|s| s.code());
    writeln!(
        f,
        "# qemu ended: {} after {:.2} s",
        code.map_or("killed (timeout)".to_owned(), |c| format!("exit {c}")),
        wall.as_secs_f64()
    )?;
    let mut transcript = Transcript::default();
    for line in console.lines() {
        transcript.push_line(line.trim_end_matches('\r'));
    }
    Ok(QemuRun {
        code,
        console,
        transcript,
        wall,
    })
}

/// The guest passed `test` (exit status 1 = pass, PASS record).
fn guest_passed(r: &QemuRun, test: &str) -> Result<(), String> {
    if let Some((name, why)) = r.transcript.failures().next() {
        return Err(format!("guest: {name} FAIL {why}"));
    }
    if r.code != Some(1) || !r.transcript.passed(test) {
        return Err(format!(
            "guest did not pass {test} (QEMU {}; last output: {})",
            r.code
                .map_or("killed by the timeout".to_owned(), |c| format!("exit {c}")),
            r.console.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
        ));
    }
    Ok(())
}

/// Runs every scenario; one row each.
pub fn test_suite() -> Vec<Row> {
    let logs = workspace::log_dir();
    let _ = std::fs::create_dir_all(&logs);
    let setup = (|| -> Result<(Bins, PathBuf)> { Ok((build_daemons()?, workspace::build_guest()?)) })();
    let (bins, elf) = match setup {
        Ok(x) => x,
        Err(e) => {
            return SCENARIOS
                .iter()
                .map(|s| Row {
                    name: format!("vhost:{s}"),
                    result: Err(format!("prerequisite missing: {e:#}")),
                    time: None,
                    log: logs.join(format!("vhost-{s}.log")),
                })
                .collect();
        }
    };
    let work = workspace::xtask_dir().join("vhost");
    let _ = std::fs::create_dir_all(&work);
    let rows = SCENARIOS
        .iter()
        .map(|&s| {
            let log = logs.join(format!("vhost-{s}.log"));
            let _ = std::fs::remove_file(&log);
            eprintln!("==> vhost:{s}");
            let t0 = Instant::now();
            let r = match s {
                "missing-image" => missing_image(&bins, &work, &log),
                "blk-integrity@vhost-user-blk" => blk_integrity(&bins, &elf, &work, &log),
                "blk-error@vhost-user-blk" => blk_read_only(&bins, &elf, &work, &log),
                "net-echo@vhost-user-net" => net_echo(&bins, &elf, &log),
                "linux@vhost-user" => linux(&bins, &work, &log),
                _ => unreachable!("scenario list"),
            };
            let result = match r {
                Ok(notes) => {
                    for n in &notes {
                        eprintln!("    {n}");
                    }
                    note(&log, &notes);
                    Ok(())
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    note(&log, &[format!("FAIL: {why}")]);
                    Err(why)
                }
            };
            Row {
                name: format!("vhost:{s}"),
                result,
                time: Some(t0.elapsed()),
                log,
            }
        })
        .collect();
    if let Ok(dir) = socket_dir() {
        let _ = std::fs::remove_dir_all(dir);
    }
    rows
}

fn note(log: &Path, lines: &[String]) {
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(log) {
        for l in lines {
            let _ = writeln!(f, "# host check: {l}");
        }
    }
}

/// A nonexistent image is refused at startup with a message naming it; nothing listens.
fn missing_image(bins: &Bins, work: &Path, log: &Path) -> Result<Vec<String>> {
    let socket = socket_dir()?.join("missing.sock");
    let _ = std::fs::remove_file(&socket);
    let image = work.join("no-such-dir/no-such-disk.img");
    let out = Command::new(&bins.blk)
        .arg("--socket")
        .arg(&socket)
        .arg("--image")
        .arg(&image)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", bins.blk.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    std::fs::write(log, format!("# exit: {}\n{stderr}", out.status))?;
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

/// Our guest's blk-integrity over vhost-user-blk, twice against one daemon (QEMU quits and comes
/// back), each run checked in the image; the daemon must not grow in descriptors or threads.
fn blk_integrity(bins: &Bins, elf: &Path, work: &Path, log: &Path) -> Result<Vec<String>> {
    let img_path = work.join("blk-integrity.img");
    let img = DiskImage::create(&img_path, IMAGE_SECTORS, 0x7668_6f73)?;
    let socket = socket_dir()?.join("blk-integrity.sock");
    let daemon = Daemon::start(
        &bins.blk,
        &[
            "--socket".into(),
            socket.clone().into(),
            "--image".into(),
            img_path.clone().into(),
        ],
        &socket,
        log,
    )?;
    let test = "blk-integrity@virtio-blk";
    let extents = 64u64;
    let mut notes = Vec::new();
    let mut after = Vec::new();
    for (round, seed) in [(1, 11u64), (2, 22u64)] {
        if round == 2 {
            // A QEMU killed in the middle of I/O (no orderly vring shutdown) before round 2: 1 s
            // phases, killed ~3.9 s after launch, in phase 3 or 4 (random reads or writes at qd 32).
            let cmdline = "tests=blk-throughput@virtio-blk blk-throughput@virtio-blk.ms=1000";
            let mut args = qemu_base(GUEST_MIB);
            args.extend(vhost_blk_args(&socket));
            args.extend(guest_args(elf, cmdline));
            let r = run_qemu(&args, log, Duration::from_millis(3900))?;
            let phases = r.transcript.perfs().count();
            if r.code.is_some() || phases >= 6 {
                bail!(
                    "the throughput run meant to be killed mid-I/O ended by itself ({:?})",
                    r.code
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
        let mut args = qemu_base(GUEST_MIB);
        args.extend(vhost_blk_args(&socket));
        args.extend(guest_args(elf, &cmdline));
        let r = run_qemu(&args, log, Duration::from_secs(60))?;
        guest_passed(&r, test).map_err(|e| anyhow::anyhow!("round {round}: {e}"))?;
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
    let pool_args = |direct: bool| {
        let mut a: Vec<OsString> = vec![
            "--socket".into(),
            socket.clone().into(),
            "--image".into(),
            img_path.clone().into(),
            "--workers".into(),
            "2".into(),
            "--connections".into(),
            "1".into(),
        ];
        if direct {
            a.push("--direct".into());
        }
        a
    };
    let (mut daemon, direct) = match Daemon::start(&bins.blk, &pool_args(true), &socket, log) {
        Ok(d) => (d, true),
        // A filesystem without O_DIRECT (tmpfs) refuses the open: say so and test the pool alone.
        Err(e) => {
            notes.push(format!("O_DIRECT unavailable for {}: {e:#}", img_path.display()));
            (Daemon::start(&bins.blk, &pool_args(false), &socket, log)?, false)
        }
    };
    let seed = 33u64;
    let cmdline = format!("tests={test} {test}.seed={seed} {test}.extents={extents} {test}.qd=16");
    let mut args = qemu_base(GUEST_MIB);
    args.extend(vhost_blk_args(&socket));
    args.extend(guest_args(elf, &cmdline));
    let r = run_qemu(&args, log, Duration::from_secs(60))?;
    guest_passed(&r, test).map_err(|e| anyhow::anyhow!("round 3 (workers=2, direct={direct}): {e}"))?;
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

/// `--read-only`: our guest's write fails with the device's error status; the image is unchanged.
fn blk_read_only(bins: &Bins, elf: &Path, work: &Path, log: &Path) -> Result<Vec<String>> {
    let img_path = work.join("blk-error.img");
    let img = DiskImage::create(&img_path, IMAGE_SECTORS, 0x726f_6e6c)?;
    let socket = socket_dir()?.join("blk-error.sock");
    let mut daemon = Daemon::start(
        &bins.blk,
        &[
            "--socket".into(),
            socket.clone().into(),
            "--image".into(),
            img_path.clone().into(),
            "--read-only".into(),
            "--connections".into(),
            "1".into(),
        ],
        &socket,
        log,
    )?;
    let test = "blk-error@virtio-blk";
    let mut args = qemu_base(GUEST_MIB);
    args.extend(vhost_blk_args(&socket));
    args.extend(guest_args(elf, &format!("tests={test}")));
    let r = run_qemu(&args, log, Duration::from_secs(60))?;
    guest_passed(&r, test).map_err(anyhow::Error::msg)?;
    img.verify_unchanged()?;
    if daemon.wait_exit(Duration::from_secs(5))?.is_none() {
        bail!("vhost-user-blk (--connections 1) did not exit after QEMU quit");
    }
    let refused = std::fs::read_to_string(log)?.contains("refused: the device is read-only");
    if !refused {
        bail!("the daemon's log does not show the refused write");
    }
    Ok(vec![
        "guest saw the write fail with the device's error status; image unchanged; daemon logged the refusal"
            .to_owned(),
    ])
}

/// Our guest's net-echo over vhost-user-net with the net core's echo peer.
fn net_echo(bins: &Bins, elf: &Path, log: &Path) -> Result<Vec<String>> {
    let socket = socket_dir()?.join("net-echo.sock");
    let mut daemon = Daemon::start(
        &bins.net,
        &[
            "--socket".into(),
            socket.clone().into(),
            "--echo-peer".into(),
            "--peer-mac".into(),
            PEER_MAC.into(),
            "--connections".into(),
            "1".into(),
        ],
        &socket,
        log,
    )?;
    let test = "net-echo@virtio-net";
    let frames = 300u64;
    let cmdline = format!("tests={test} {test}.frames={frames} {test}.ms=300");
    let mut args = qemu_base(GUEST_MIB);
    args.extend(vhost_net_args(&socket));
    args.extend(guest_args(elf, &cmdline));
    let r = run_qemu(&args, log, Duration::from_secs(60))?;
    guest_passed(&r, test).map_err(anyhow::Error::msg)?;
    let rate = r
        .transcript
        .perfs()
        .find(|p| p.get("pattern") == Some("echo64"))
        .and_then(|p| Some((p.get_u64("ops")?, p.get_u64("guest_us")?)));
    let Some(_) = daemon.wait_exit(Duration::from_secs(5))? else {
        bail!("vhost-user-net (--connections 1) did not exit after QEMU quit");
    };
    let echoed = peer_stat(&daemon.log, "echoed").context("the daemon's log has no echo peer counts")?;
    // The guest's frames plus its rate phase all went through the echo peer.
    let min = frames + rate.map_or(0, |(ops, _)| ops);
    if echoed < min {
        bail!("the echo peer answered {echoed} frames, the guest verified at least {min}");
    }
    Ok(vec![format!(
        "guest PASS: {frames} frames verified, rate phase {}; echo peer answered {echoed} frames",
        rate.map_or("absent".to_owned(), |(ops, us)| format!(
            "{ops} echoes in {us} us ({:.0}/s)",
            ops as f64 * 1e6 / us.max(1) as f64
        ))
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

/// The Linux guest's init: load the virtio modules, write random data to the disk with `O_DIRECT`
/// and read it back, read the host's half, discard a MiB, then ping the echo peer.
fn linux_init(modules: &[String]) -> String {
    let insmods: String = modules
        .iter()
        .map(|m| format!("insmod /{m} || echo \"PVKIT-LINUX FAIL insmod {m}\"\n"))
        .collect();
    format!(
        r#"#!/bin/sh
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
{insmods}
n=0; while [ ! -b /dev/vda ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done
echo "PVKIT-LINUX vda_sectors=$(cat /sys/block/vda/size)"
echo "PVKIT-LINUX discard_max=$(cat /sys/block/vda/queue/discard_max_bytes)"
echo "PVKIT-LINUX hw_queues=$(ls /sys/block/vda/mq | wc -l)"
dd if=/dev/urandom of=/tmp/data bs=1M count=8 2>/dev/null
echo "PVKIT-LINUX wrote_sha256=$(sha256sum /tmp/data | cut -d' ' -f1)"
dd if=/tmp/data of=/dev/vda bs=1M oflag=direct conv=fsync 2>/dev/null || echo "PVKIT-LINUX FAIL dd write"
echo 3 > /proc/sys/vm/drop_caches
echo "PVKIT-LINUX readback_sha256=$(dd if=/dev/vda bs=1M count=8 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
echo "PVKIT-LINUX host_sha256=$(dd if=/dev/vda bs=1M skip=8 count=8 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
blkdiscard -o 25165824 -l 1048576 /dev/vda && echo "PVKIT-LINUX discarded=1"
echo "PVKIT-LINUX discard_sha256=$(dd if=/dev/vda bs=1M skip=24 count=1 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
ifconfig eth0 {LINUX_IP} netmask 255.255.255.0 up
ping -c {PINGS} -i 0.2 -s 1400 {PEER_IP} > /tmp/p1
echo "PVKIT-LINUX ping1400 $(grep 'packets transmitted' /tmp/p1)"
ping -c {PINGS} -i 0.2 {PEER_IP} > /tmp/p2
echo "PVKIT-LINUX ping56 $(grep 'packets transmitted' /tmp/p2)"
echo "PVKIT-LINUX done"
poweroff -f
"#
    )
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
    if data.len() as u64 != IMAGE_SECTORS * 512 {
        bail!(
            "image {} is {} bytes, it was created with {}",
            path.display(),
            data.len(),
            IMAGE_SECTORS * 512
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
    img.add("init", 0o755, Payload::Bytes(linux_init(&modules).into_bytes()));
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
    let mut blk = Daemon::start(
        &bins.blk,
        &[
            "--socket".into(),
            blk_sock.clone().into(),
            "--image".into(),
            img_path.clone().into(),
            "--queues".into(),
            LINUX_QUEUES.to_string().into(),
            "--connections".into(),
            "1".into(),
        ],
        &blk_sock,
        &blk_log,
    )?;
    let mut net = Daemon::start(
        &bins.net,
        &[
            "--socket".into(),
            net_sock.clone().into(),
            "--echo-peer".into(),
            "--peer-ip".into(),
            PEER_IP.into(),
            "--connections".into(),
            "1".into(),
        ],
        &net_sock,
        log,
    )?;
    let mut args = qemu_base_smp(LINUX_MIB, LINUX_QUEUES);
    args.extend(vhost_blk_args_mq(&blk_sock, LINUX_QUEUES));
    args.extend(vhost_net_args(&net_sock));
    args.extend([
        "-kernel".into(),
        kernel.into(),
        "-initrd".into(),
        initramfs.into(),
        "-append".into(),
        "console=ttyS0 rdinit=/init quiet".into(),
    ]);
    let r = run_qemu(&args, log, Duration::from_secs(180))?;
    let c = &r.console;
    if let Some(l) = c.lines().find(|l| l.contains("PVKIT-LINUX FAIL")) {
        bail!("Linux guest: {}", l.trim());
    }
    if !c.contains("PVKIT-LINUX done") {
        bail!(
            "the Linux guest did not finish (QEMU {}): {}",
            r.code
                .map_or("killed by the timeout".to_owned(), |c| format!("exit {c}")),
            c.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
        );
    }
    let get = |k: &str| linux_value(c, k).with_context(|| format!("the Linux guest printed no {k}"));
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

/// One `PVKIT PERF` phase of a throughput run.
#[derive(Debug, Clone)]
pub(crate) struct Phase {
    pub(crate) pattern: String,
    pub(crate) qd: u64,
    pub(crate) ops: u64,
    pub(crate) guest_us: u64,
    pub(crate) notifies: u64,
    pub(crate) irqs: u64,
}

impl Phase {
    pub(crate) fn ops_per_s(&self) -> f64 {
        self.ops as f64 * 1e6 / self.guest_us.max(1) as f64
    }

    pub(crate) fn cost_line(&self, dev: &str) -> String {
        let per = |n: u64| n as f64 / self.ops.max(1) as f64;
        format!(
            "cost {dev:<16} {:<12} qd={:<2} {:>8.1} us/op {:>6.3} kicks/op {:>6.3} irqs/op ({} ops)",
            self.pattern,
            self.qd,
            self.guest_us as f64 / self.ops.max(1) as f64,
            per(self.notifies),
            per(self.irqs),
            self.ops
        )
    }
}

pub(crate) fn phases(t: &Transcript) -> Result<Vec<Phase>> {
    t.perfs()
        .map(|p| {
            let get = |k: &str| p.get_u64(k).with_context(|| format!("PERF line without {k}"));
            Ok(Phase {
                pattern: p.get("pattern").context("PERF line without pattern")?.to_owned(),
                qd: get("qd")?,
                ops: get("ops")?,
                guest_us: get("guest_us")?,
                notifies: get("notifies")?,
                irqs: get("irqs")?,
            })
        })
        .collect()
}

/// Adds one run's phases to the totals of earlier rounds (ops and times summed per phase).
pub(crate) fn accumulate(total: &mut Vec<Phase>, run: Vec<Phase>, who: &str) -> Result<()> {
    if total.is_empty() {
        *total = run;
        return Ok(());
    }
    if run.len() != total.len() {
        bail!(
            "{who}: {} phases, an earlier round had {}",
            run.len(),
            total.len()
        );
    }
    for (t, x) in total.iter_mut().zip(run) {
        t.ops += x.ops;
        t.guest_us += x.guest_us;
        t.notifies += x.notifies;
        t.irqs += x.irqs;
    }
    Ok(())
}

/// The side-by-side table of a block comparison: ops/s of the baseline `a` and of ours `b` per
/// phase with the ratio b/a, both sides' per-op cost lines, and the geometric mean of the ratios
/// against `target`. `names` are (short column name, long name for cost lines) of a and b.
pub(crate) fn comparison_table(
    names: [(&str, &str); 2],
    a: &[Phase],
    b: &[Phase],
    target: f64,
) -> Result<String> {
    if a.len() != b.len()
        || a.iter()
            .zip(b)
            .any(|(x, y)| x.pattern != y.pattern || x.qd != y.qd)
    {
        bail!("the two sides ran different phases: {a:?} vs {b:?}");
    }
    let mut out = format!(
        "{:<12} {:>3} {:>14} {:>14} {:>7}\n",
        "pattern",
        "qd",
        format!("{} ops/s", names[0].0),
        format!("{} ops/s", names[1].0),
        "ratio"
    );
    let mut ratios = Vec::new();
    for (x, y) in a.iter().zip(b) {
        let ratio = y.ops_per_s() / x.ops_per_s().max(1e-9);
        ratios.push(ratio);
        out.push_str(&format!(
            "{:<12} {:>3} {:>14.0} {:>14.0} {:>6.2}x\n",
            x.pattern,
            x.qd,
            x.ops_per_s(),
            y.ops_per_s(),
            ratio
        ));
    }
    for (x, y) in a.iter().zip(b) {
        out.push_str(&format!(
            "{}\n{}\n",
            x.cost_line(names[0].1),
            y.cost_line(names[1].1)
        ));
    }
    let geo = ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len().max(1) as f64;
    out.push_str(&format!(
        "geometric mean ratio {:.2}x (target >= {target:.2}x); lowest {:.2}x\n",
        geo.exp(),
        ratios.iter().copied().fold(f64::INFINITY, f64::min)
    ));
    Ok(out)
}

/// `cargo xtask bench` block comparison: our vhost-user-blk against QEMU's built-in virtio-blk
/// (`cache=writeback`, its default), both on the same image and the same guest memory setup, driven by
/// the guest's `blk-throughput@virtio-blk` (4 KiB random reads/writes at qd 1 and 32, 64 KiB
/// sequential). `rounds` boots of each, alternating; ops/s summed over the rounds.
pub fn bench_blk(rounds: usize, ms: u64, workers: usize) -> Result<i32> {
    let bins = build_daemons()?;
    let elf = workspace::build_guest()?;
    let work = workspace::xtask_dir().join("vhost");
    std::fs::create_dir_all(&work)?;
    let log = workspace::log_dir().join("bench-vhost-blk.log");
    std::fs::create_dir_all(workspace::log_dir())?;
    let _ = std::fs::remove_file(&log);
    let img_path = work.join("bench.img");
    DiskImage::create(&img_path, 2 * IMAGE_SECTORS, 0x6265_6e63)?;
    let test = "blk-throughput@virtio-blk";
    let cmdline = format!("tests={test} {test}.ms={ms} {test}.qd=32 {test}.bs=4096");
    let timeout = Duration::from_secs(60 + 6 * ms / 1000 * 2);
    let socket = socket_dir()?.join("bench.sock");
    let mut daemon_args: Vec<OsString> = vec![
        "--socket".into(),
        socket.clone().into(),
        "--image".into(),
        img_path.clone().into(),
    ];
    if workers > 0 {
        daemon_args.extend(["--workers".into(), workers.to_string().into()]);
    }
    let daemon = Daemon::start(&bins.blk, &daemon_args, &socket, &log)?;
    let mut qemu_drive = OsString::from("file=");
    qemu_drive.push(&img_path);
    qemu_drive.push(",format=raw,if=none,id=d0,cache=writeback");
    let mut totals: [Vec<Phase>; 2] = [Vec::new(), Vec::new()];
    let names = ["qemu virtio-blk", "vhost-user-blk"];
    for round in 0..rounds {
        for (i, name) in names.iter().enumerate() {
            let mut args = qemu_base(GUEST_MIB);
            if i == 0 {
                args.extend(["-drive".into(), qemu_drive.clone()]);
                args.extend(["-device".into(), "virtio-blk-pci,drive=d0".into()]);
            } else {
                args.extend(vhost_blk_args(&socket));
            }
            args.extend(guest_args(&elf, &cmdline));
            eprintln!("bench: round {}/{rounds}: {name}", round + 1);
            let r = run_qemu(&args, &log, timeout)?;
            guest_passed(&r, test).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            accumulate(&mut totals[i], phases(&r.transcript)?, name)?;
        }
    }
    daemon.stop()?;
    let mut out = format!(
        "vhost-user-blk vs QEMU virtio-blk: guest blk-throughput, {ms} ms per phase, {rounds} round(s) each, workers={workers}\n"
    );
    out.push_str(&comparison_table(
        [("qemu", names[0]), ("vhost", names[1])],
        &totals[0],
        &totals[1],
        1.0,
    )?);
    print!("{out}");
    OpenOptions::new()
        .append(true)
        .open(&log)?
        .write_all(out.as_bytes())?;
    eprintln!("bench: log {}", log.display());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(pattern: &str, qd: u64, ops: u64, guest_us: u64) -> Phase {
        Phase {
            pattern: pattern.into(),
            qd,
            ops,
            guest_us,
            notifies: ops,
            irqs: ops / 2,
        }
    }

    #[test]
    fn comparison_sums_rounds_and_reports_ratios_and_their_geometric_mean() {
        let mut a = Vec::new();
        accumulate(&mut a, vec![phase("randread4k", 1, 100, 1_000_000)], "a").unwrap();
        accumulate(&mut a, vec![phase("randread4k", 1, 100, 1_000_000)], "a").unwrap();
        assert_eq!((a[0].ops, a[0].guest_us), (200, 2_000_000));
        assert!(
            accumulate(&mut a, Vec::new(), "a").is_err(),
            "a round with other phases"
        );
        let a = vec![
            phase("randread4k", 1, 100, 1_000_000),
            phase("seqread64k", 1, 100, 1_000_000),
        ];
        let b = vec![
            phase("randread4k", 1, 400, 1_000_000),
            phase("seqread64k", 1, 25, 1_000_000),
        ];
        let t = comparison_table([("x", "x dev"), ("y", "y dev")], &a, &b, 1.0).unwrap();
        assert!(t.contains("4.00x") && t.contains("0.25x"), "{t}");
        assert!(
            t.contains("geometric mean ratio 1.00x (target >= 1.00x); lowest 0.25x"),
            "{t}"
        );
        assert!(t.contains("cost y dev"), "{t}");
        let other = vec![phase("randwrite4k", 1, 1, 1), phase("seqread64k", 1, 1, 1)];
        assert!(comparison_table([("x", "x"), ("y", "y")], &a, &other, 1.0).is_err());
    }
}
