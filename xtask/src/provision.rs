//! Installing what `run` and `test` need on Debian 12 (idempotent), or saying exactly how elsewhere.
//!
//! Detection ([`Facts`]) and decisions ([`plan`]) are pure so they can be unit-tested; only [`ensure`]
//! looks at the machine and runs commands.

use std::fmt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::qemu::{QBOOT, QEMU, QemuConfig};
use crate::{process, workspace};

/// Oldest QEMU xtask accepts.
pub const QEMU_MIN_MAJOR: u32 = 10;
/// The backports source xtask writes (deb822).
pub const BACKPORTS_FILE: &str = "/etc/apt/sources.list.d/bookworm-backports.sources";
pub const BACKPORTS_SOURCE: &str = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\n\
                                    Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";
/// The header the differential tests compile against (package libxen-dev).
pub const XEN_RING_HEADER: &str = "/usr/include/xen/io/ring.h";
/// The Linux uapi header the virtio cross-check compiles against (package linux-libc-dev).
pub const VIRTIO_RING_HEADER: &str = "/usr/include/linux/virtio_ring.h";

/// `major.minor.micro`
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// Parses the first line of `qemu-system-x86_64 --version`, e.g.
/// `QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)` or `... version 7.2.0`.
pub fn parse_qemu_version(output: &str) -> Option<Version> {
    let line = output.lines().find(|l| l.contains("QEMU emulator version"))?;
    let rest = line.split("QEMU emulator version").nth(1)?.trim_start();
    let word = rest.split(|c: char| c.is_whitespace() || c == '(').next()?;
    let mut nums = word.split('.').map(|n| {
        let digits: String = n.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = nums.next()??;
    let minor = nums.next().flatten().unwrap_or(0);
    let micro = nums.next().flatten().unwrap_or(0);
    Some(Version(major, minor, micro))
}

/// What QEMU looks like on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QemuState {
    Missing,
    /// Runs, but `--version` did not say which version.
    Unknown(String),
    Found(Version),
}

/// What provisioning found on the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// `ID` and `VERSION_ID` from /etc/os-release.
    pub os: (String, String),
    pub root: bool,
    /// The QEMU binary that was asked for its version.
    pub qemu_path: String,
    pub qemu: QemuState,
    pub qboot: bool,
    pub xen_headers: bool,
    /// `shellcheck` runs.
    pub shellcheck: bool,
    /// Some apt source already names bookworm-backports.
    pub backports_configured: bool,
}

impl Facts {
    pub fn is_debian12(&self) -> bool {
        self.os.0 == "debian" && self.os.1 == "12"
    }

    pub fn qemu_ok(&self) -> bool {
        matches!(self.qemu, QemuState::Found(v) if v.0 >= QEMU_MIN_MAJOR) && self.qboot
    }

    /// Looks at this machine.
    pub fn detect(qemu_path: &Path) -> Facts {
        let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let qemu = match Command::new(qemu_path).arg("--version").output() {
            Err(_) => QemuState::Missing,
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                match parse_qemu_version(&text) {
                    Some(v) => QemuState::Found(v),
                    None => QemuState::Unknown(text.lines().next().unwrap_or("").to_owned()),
                }
            }
        };
        Facts {
            os: parse_os_release(&os_release),
            root: process::is_root(),
            qemu_path: qemu_path.display().to_string(),
            qemu,
            qboot: Path::new(QBOOT).is_file(),
            xen_headers: Path::new(XEN_RING_HEADER).is_file() && Path::new(VIRTIO_RING_HEADER).is_file(),
            shellcheck: Command::new("shellcheck")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            backports_configured: backports_configured(),
        }
    }
}

/// `(ID, VERSION_ID)` with quotes removed.
pub fn parse_os_release(text: &str) -> (String, String) {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_owned())
            .unwrap_or_default()
    };
    (get("ID"), get("VERSION_ID"))
}

fn backports_configured() -> bool {
    let mut files = vec![std::path::PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(dir.flatten().map(|e| e.path()));
    }
    files.iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines()
                .any(|l| !l.trim_start().starts_with('#') && l.contains("bookworm-backports"))
        })
    })
}

/// Which prerequisites the caller needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    pub qemu: bool,
    pub xen_headers: bool,
    pub shellcheck: bool,
}

/// One provisioning action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    AddBackportsSource,
    AptUpdate,
    InstallQemu,
    InstallXenHeaders,
    InstallShellcheck,
}

impl Step {
    /// The shell command a person would type (as root) for this step.
    pub fn shell(self) -> String {
        match self {
            Step::AddBackportsSource => format!(
                "printf '{}' > {BACKPORTS_FILE}",
                BACKPORTS_SOURCE.replace('\n', "\\n")
            ),
            Step::AptUpdate => "apt-get update".to_owned(),
            Step::InstallQemu => "apt-get install -y -t bookworm-backports qemu-system-x86".to_owned(),
            Step::InstallXenHeaders => "apt-get install -y libxen-dev linux-libc-dev".to_owned(),
            Step::InstallShellcheck => "apt-get install -y shellcheck".to_owned(),
        }
    }
}

/// The steps that bring a machine described by `facts` to what `needs` asks for (empty if nothing is
/// missing). The plan is the same on any OS; whether it may be executed is decided by [`ensure`].
pub fn plan(facts: &Facts, needs: Needs) -> Vec<Step> {
    let want_qemu = needs.qemu && !facts.qemu_ok();
    let want_xen = needs.xen_headers && !facts.xen_headers;
    let want_shellcheck = needs.shellcheck && !facts.shellcheck;
    let mut steps = Vec::new();
    if want_qemu && !facts.backports_configured {
        steps.push(Step::AddBackportsSource);
    }
    if want_qemu || want_xen || want_shellcheck {
        steps.push(Step::AptUpdate);
    }
    if want_qemu {
        steps.push(Step::InstallQemu);
    }
    if want_xen {
        steps.push(Step::InstallXenHeaders);
    }
    if want_shellcheck {
        steps.push(Step::InstallShellcheck);
    }
    steps
}

/// Why each wanted thing is missing, for messages.
fn missing(facts: &Facts, needs: Needs) -> Vec<String> {
    let mut out = Vec::new();
    if needs.qemu {
        match &facts.qemu {
            QemuState::Missing => out.push(format!("{} is not installed (or does not run)", facts.qemu_path)),
            QemuState::Unknown(l) => out.push(format!("qemu-system-x86_64 --version gave no version: {l:?}")),
            QemuState::Found(v) if v.0 < QEMU_MIN_MAJOR => {
                out.push(format!("QEMU {v} is older than {QEMU_MIN_MAJOR}"));
            }
            QemuState::Found(_) => {}
        }
        if !facts.qboot {
            out.push(format!("{QBOOT} is missing"));
        }
    }
    if needs.xen_headers && !facts.xen_headers {
        out.push(format!(
            "{XEN_RING_HEADER} or {VIRTIO_RING_HEADER} is missing (libxen-dev, linux-libc-dev)"
        ));
    }
    if needs.shellcheck && !facts.shellcheck {
        out.push("shellcheck is not installed".to_owned());
    }
    out
}

/// What is missing for QEMU runs right now, without installing anything (honours `PVKIT_QEMU`).
pub fn qemu_problems() -> Vec<String> {
    let facts = Facts::detect(&QemuConfig::default_qemu());
    missing(
        &facts,
        Needs {
            qemu: true,
            xen_headers: false,
            shellcheck: false,
        },
    )
}

/// Makes sure QEMU is there (what `run`, `bench` and the Xen harness need).
pub fn ensure_qemu() -> Result<()> {
    ensure(
        Needs {
            qemu: true,
            xen_headers: false,
            shellcheck: false,
        },
        false,
    )
}

/// Makes sure `needs` are met: installs them on Debian 12 as root, otherwise fails with the exact
/// commands to run. With `dry_run`, only prints what it would do.
pub fn ensure(needs: Needs, dry_run: bool) -> Result<()> {
    ensure_simulated(needs, dry_run, &Simulation::default())
}

/// Pretend facts for exercising the decision paths with `provision --dry-run` on any machine.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Simulation {
    /// Pretend `qemu-system-x86_64 --version` printed this ("" = QEMU missing). Needs --dry-run.
    #[arg(long, requires = "dry_run")]
    pub simulate_qemu_version: Option<String>,
    /// Pretend /etc/os-release says ID:VERSION_ID (e.g. ubuntu:24.04). Needs --dry-run.
    #[arg(long, requires = "dry_run")]
    pub simulate_os: Option<String>,
    /// Pretend not to be root. Needs --dry-run.
    #[arg(long, requires = "dry_run")]
    pub simulate_non_root: bool,
    /// Pretend libxen-dev's headers and the backports source are absent. Needs --dry-run.
    #[arg(long, requires = "dry_run")]
    pub simulate_bare: bool,
}

impl Simulation {
    fn apply(&self, facts: &mut Facts) {
        if let Some(v) = &self.simulate_qemu_version {
            facts.qemu = match parse_qemu_version(v) {
                Some(ver) => QemuState::Found(ver),
                None if v.is_empty() => QemuState::Missing,
                None => QemuState::Unknown(v.clone()),
            };
        }
        if let Some(os) = &self.simulate_os {
            let (id, ver) = os.split_once(':').unwrap_or((os, ""));
            facts.os = (id.to_owned(), ver.to_owned());
        }
        if self.simulate_non_root {
            facts.root = false;
        }
        if self.simulate_bare {
            facts.xen_headers = false;
            facts.shellcheck = false;
            facts.backports_configured = false;
        }
    }
}

/// [`ensure`], with facts altered by `sim` (only used with `dry_run`).
pub fn ensure_simulated(mut needs: Needs, dry_run: bool, sim: &Simulation) -> Result<()> {
    if needs.qemu
        && let Some(custom) = std::env::var_os("PVKIT_QEMU")
    {
        // The user chose a QEMU; check it, but installing the system one would not help.
        let facts = Facts::detect(Path::new(&custom));
        let problems = missing(
            &facts,
            Needs {
                qemu: true,
                xen_headers: false,
                shellcheck: false,
            },
        );
        if !problems.is_empty() {
            bail!(
                "PVKIT_QEMU={}: {}",
                Path::new(&custom).display(),
                problems.join("; ")
            );
        }
        needs.qemu = false;
    }
    let mut facts = Facts::detect(Path::new(QEMU));
    if dry_run {
        sim.apply(&mut facts);
    }
    let steps = plan(&facts, needs);
    if dry_run {
        eprintln!("provision: {facts:?}");
    }
    if steps.is_empty() {
        if dry_run {
            eprintln!("provision: nothing to do");
        }
        return Ok(());
    }
    let why = missing(&facts, needs).join("; ");
    let script: Vec<String> = steps.iter().map(|s| s.shell()).collect();
    if !facts.is_debian12() || !facts.root {
        let (id, ver) = &facts.os;
        let whom = if facts.is_debian12() {
            "xtask is not running as root".to_owned()
        } else {
            format!("this machine is not Debian 12 (os-release ID={id:?} VERSION_ID={ver:?})")
        };
        bail!(
            "{why}.\nxtask installs these itself only on Debian 12 as root, but {whom}. On Debian 12, run as root:\n  \
             {}\nElsewhere install QEMU >= {QEMU_MIN_MAJOR} (with qboot.rom) and the Xen public headers with your \
             package manager.",
            script.join("\n  ")
        );
    }
    eprintln!("provision: {why}; installing");
    for step in steps {
        if dry_run {
            eprintln!("provision (dry run): would run: {}", step.shell());
            continue;
        }
        eprintln!("provision: {}", step.shell());
        match step {
            Step::AddBackportsSource => std::fs::write(BACKPORTS_FILE, BACKPORTS_SOURCE)
                .with_context(|| format!("writing {BACKPORTS_FILE}"))?,
            Step::AptUpdate => apt(&["update"])?,
            Step::InstallQemu => apt(&["install", "-y", "-t", "bookworm-backports", "qemu-system-x86"])?,
            Step::InstallXenHeaders => apt(&["install", "-y", "libxen-dev", "linux-libc-dev"])?,
            Step::InstallShellcheck => apt(&["install", "-y", "shellcheck"])?,
        }
    }
    if dry_run {
        return Ok(());
    }
    let after = Facts::detect(Path::new(QEMU));
    let still = missing(&after, needs);
    if !still.is_empty() {
        bail!(
            "provisioning ran but these are still missing: {}",
            still.join("; ")
        );
    }
    Ok(())
}

fn apt(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("apt-get");
    cmd.args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(std::process::Stdio::null());
    workspace::run_visible(&mut cmd)
}

/// Makes sure the nightly toolchain has Miri and rust-src (Miri's stage needs them; no root needed).
pub fn ensure_miri(dry_run: bool) -> Result<()> {
    let rustup = |args: &[&str]| {
        Command::new("rustup")
            .args(args)
            .env_remove("RUSTUP_TOOLCHAIN")
            .output()
            .map_err(|e| anyhow::anyhow!("rustup not found ({e}); install rustup from https://rustup.rs"))
    };
    // Ask for the list first: `rustup +nightly ...` on a machine without nightly could auto-install
    // it with the default (large) profile.
    let toolchains = String::from_utf8_lossy(&rustup(&["toolchain", "list"])?.stdout).into_owned();
    let mut cmd = Command::new("rustup");
    cmd.env_remove("RUSTUP_TOOLCHAIN");
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        cmd.args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "-c",
            "miri,rust-src",
        ]);
    } else {
        let out = rustup(&["+nightly", "component", "list", "--installed"])?;
        let list = String::from_utf8_lossy(&out.stdout);
        let has = |c: &str| list.lines().any(|l| l.starts_with(c));
        if out.status.success() && has("miri") && has("rust-src") {
            return Ok(());
        }
        cmd.args(["+nightly", "component", "add", "miri", "rust-src"]);
    }
    if dry_run {
        eprintln!(
            "provision (dry run): would run: {}",
            workspace::display_command(&cmd)
        );
        return Ok(());
    }
    workspace::run_visible(&mut cmd)
}

/// Installs what `cargo xtask fuzz` needs: a nightly toolchain (minimal profile) and cargo-fuzz
/// (`cargo install cargo-fuzz --locked`), each only if missing.
pub fn ensure_cargo_fuzz(dry_run: bool) -> Result<()> {
    let run = |mut cmd: Command| -> Result<()> {
        cmd.env_remove("RUSTUP_TOOLCHAIN");
        if dry_run {
            eprintln!(
                "provision (dry run): would run: {}",
                workspace::display_command(&cmd)
            );
            return Ok(());
        }
        workspace::run_visible(&mut cmd)
    };
    let toolchains = Command::new("rustup")
        .args(["toolchain", "list"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .map_err(|e| anyhow::anyhow!("rustup not found ({e}); install rustup from https://rustup.rs"))?;
    if !String::from_utf8_lossy(&toolchains.stdout)
        .lines()
        .any(|l| l.starts_with("nightly"))
    {
        let mut cmd = Command::new("rustup");
        cmd.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
        run(cmd)?;
    }
    let mut probe = Command::new("cargo");
    workspace::sanitize(&mut probe);
    let has_fuzz = probe
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        let mut cmd = Command::new("cargo");
        workspace::sanitize(&mut cmd);
        cmd.args(["install", "cargo-fuzz", "--locked"]);
        run(cmd)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_versions() {
        let debian =
            "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright (c) 2003-2025";
        assert_eq!(parse_qemu_version(debian), Some(Version(10, 0, 2)));
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2.0 (Debian 1:7.2+dfsg-7+deb12u7)"),
            Some(Version(7, 2, 0))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 8.2.92 (v9.0.0-rc2)"),
            Some(Version(8, 2, 92))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 10.1.50"),
            Some(Version(10, 1, 50))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 11.0"),
            Some(Version(11, 0, 0))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 9.2.0-rc1"),
            Some(Version(9, 2, 0))
        );
        assert_eq!(
            parse_qemu_version("bash: qemu-system-x86_64: command not found"),
            None
        );
        assert_eq!(parse_qemu_version("QEMU emulator version garbage"), None);
        assert_eq!(parse_qemu_version(""), None);
        // Numeric, not lexicographic: 10 > 9.
        assert!(Version(10, 0, 0) > Version(9, 2, 5));
    }

    #[test]
    fn os_release() {
        let t = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n";
        assert_eq!(parse_os_release(t), ("debian".into(), "12".into()));
        assert_eq!(
            parse_os_release("ID=ubuntu\nVERSION_ID=\"24.04\"\nID_LIKE=debian\n"),
            ("ubuntu".into(), "24.04".into())
        );
        assert_eq!(parse_os_release(""), (String::new(), String::new()));
    }

    fn facts(qemu: QemuState, backports: bool, xen: bool) -> Facts {
        Facts {
            os: ("debian".into(), "12".into()),
            root: true,
            qemu_path: QEMU.to_owned(),
            qemu,
            qboot: true,
            xen_headers: xen,
            shellcheck: true,
            backports_configured: backports,
        }
    }

    const ALL: Needs = Needs {
        qemu: true,
        xen_headers: true,
        shellcheck: false,
    };

    #[test]
    fn nothing_to_do_when_everything_is_there() {
        assert!(plan(&facts(QemuState::Found(Version(10, 0, 2)), true, true), ALL).is_empty());
        assert!(plan(&facts(QemuState::Found(Version(11, 0, 0)), false, true), ALL).is_empty());
    }

    #[test]
    fn old_or_missing_qemu_goes_through_backports() {
        use Step::*;
        let old = facts(QemuState::Found(Version(7, 2, 0)), false, true);
        assert_eq!(plan(&old, ALL), vec![AddBackportsSource, AptUpdate, InstallQemu]);
        let missing = facts(QemuState::Missing, true, true);
        assert_eq!(plan(&missing, ALL), vec![AptUpdate, InstallQemu]);
        let unknown = facts(QemuState::Unknown("huh".into()), true, false);
        assert_eq!(
            plan(&unknown, ALL),
            vec![AptUpdate, InstallQemu, InstallXenHeaders]
        );
        let mut no_qboot = facts(QemuState::Found(Version(10, 0, 2)), true, true);
        no_qboot.qboot = false;
        assert_eq!(plan(&no_qboot, ALL), vec![AptUpdate, InstallQemu]);
        // Only what is asked for.
        assert!(
            plan(
                &old,
                Needs {
                    qemu: false,
                    xen_headers: true,
                    shellcheck: false,
                }
            )
            .is_empty()
        );
        assert_eq!(
            plan(
                &facts(QemuState::Missing, true, false),
                Needs {
                    qemu: false,
                    xen_headers: true,
                    shellcheck: false,
                }
            ),
            vec![AptUpdate, InstallXenHeaders]
        );
    }

    #[test]
    fn commands_are_the_documented_ones() {
        assert_eq!(
            Step::InstallQemu.shell(),
            "apt-get install -y -t bookworm-backports qemu-system-x86"
        );
        let add = Step::AddBackportsSource.shell();
        assert!(
            add.contains("Suites: bookworm-backports") && add.ends_with(BACKPORTS_FILE),
            "{add}"
        );
        assert!(BACKPORTS_SOURCE.contains("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"));
        let m = missing(&facts(QemuState::Found(Version(7, 2, 0)), true, false), ALL);
        assert_eq!(
            m,
            vec![
                "QEMU 7.2.0 is older than 10",
                "/usr/include/xen/io/ring.h or /usr/include/linux/virtio_ring.h is missing (libxen-dev, \
                 linux-libc-dev)"
            ]
        );
    }
}
