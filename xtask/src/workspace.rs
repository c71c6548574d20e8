//! Paths of the workspace and nested `cargo` invocations with a clean environment.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The target triple the guest kernel is built for.
pub const GUEST_TARGET: &str = "x86_64-unknown-none";
/// The guest kernel's package (and binary) name.
pub const GUEST_PACKAGE: &str = "guest-kernel";

/// The workspace root (the parent of this crate's manifest directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in a subdirectory of the workspace")
        .to_owned()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` if set (relative to the root), else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => root().join("target"),
    }
}

/// Where xtask keeps its own files (logs).
pub fn xtask_dir() -> PathBuf {
    target_dir().join("xtask")
}

pub fn log_dir() -> PathBuf {
    xtask_dir().join("logs")
}

/// The guest ELF produced by [`build_guest`].
pub fn guest_elf() -> PathBuf {
    target_dir()
        .join(GUEST_TARGET)
        .join("release")
        .join(GUEST_PACKAGE)
}

/// Variables the outer `cargo run` (or a user's shell) set for xtask that must not leak into nested
/// cargo invocations: flags meant for one build would override `.cargo/config.toml`'s per-target
/// rustflags (the guest needs `relocation-model=static`), and a pinned `RUSTUP_TOOLCHAIN` or `CARGO`
/// path would defeat `cargo +nightly`.
const SANITIZED_VARS: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTDOC",
    "RUSTUP_TOOLCHAIN",
    "CARGO",
    "CARGO_MAKEFLAGS",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "__CARGO_FIX_PLZ",
];

/// `cargo` (through the rustup proxy on `PATH`, so `+nightly` works) run in the workspace root, with
/// the environment of the outer cargo removed.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root());
    sanitize(&mut cmd);
    cmd
}

/// Removes the outer cargo's environment from `cmd` (see [`SANITIZED_VARS`]), so a rustup proxy
/// (`cargo`, `rustc`, `rustup`) started in the workspace picks the pinned toolchain itself.
pub fn sanitize(cmd: &mut Command) {
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if SANITIZED_VARS.contains(&key) || key.starts_with("CARGO_PKG_") || key.starts_with("CARGO_CFG_") {
            cmd.env_remove(key);
        }
    }
    // `cargo run` prepends the running toolchain's and the target directory's library paths; they
    // must not leak into another toolchain's rustc (cargo +nightly miri).
    if let Some(paths) = env::var_os("LD_LIBRARY_PATH") {
        let target = target_dir();
        let kept: Vec<PathBuf> = env::split_paths(&paths)
            .filter(|p| !p.starts_with(&target) && !p.components().any(|c| c.as_os_str() == "toolchains"))
            .collect();
        match env::join_paths(&kept) {
            Ok(joined) if !kept.is_empty() => cmd.env("LD_LIBRARY_PATH", joined),
            _ => cmd.env_remove("LD_LIBRARY_PATH"),
        };
    }
}

/// Human-readable form of a command line (program and arguments, shell-quoted where needed).
pub fn display_command(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            words.push(format!(
                "{}={}",
                k.to_string_lossy(),
                shell_quote(&v.to_string_lossy())
            ));
        }
    }
    words.push(shell_quote(&cmd.get_program().to_string_lossy()));
    words.extend(cmd.get_args().map(|a| shell_quote(&a.to_string_lossy())));
    words.join(" ")
}

/// Quotes `s` for a POSIX shell if it contains anything but safe characters.
pub fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Builds the guest kernel ELF (always release: the QEMU scenarios time it) and returns its path.
pub fn build_guest() -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "-p",
        GUEST_PACKAGE,
        "--release",
        "--target",
        GUEST_TARGET,
    ]);
    run_visible(&mut cmd)?;
    let elf = guest_elf();
    if !elf.is_file() {
        bail!("cargo built {GUEST_PACKAGE} but {} does not exist", elf.display());
    }
    Ok(elf)
}

/// Runs `cmd` with inherited stdio, failing with the command line if it does not succeed.
pub fn run_visible(cmd: &mut Command) -> Result<()> {
    let shown = display_command(cmd);
    eprintln!("$ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("-append"), "-append");
        assert_eq!(
            shell_quote("tests=hello pci.expect=8086:29c0"),
            "'tests=hello pci.expect=8086:29c0'"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn nested_cargo_drops_outer_flags() {
        let cmd = cargo();
        let removed: Vec<_> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_owned())
            .collect();
        // `cargo test` sets CARGO and CARGO_MANIFEST_DIR for this test binary; both must be dropped.
        assert!(
            removed.iter().any(|k| k == "CARGO"),
            "CARGO not removed: {removed:?}"
        );
        assert!(
            removed.iter().any(|k| k == "CARGO_MANIFEST_DIR"),
            "CARGO_MANIFEST_DIR not removed"
        );
        assert!(root().join("Cargo.toml").is_file());
    }
}
