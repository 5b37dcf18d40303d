//! Running commands the way a newcomer can follow: each command that builds, tests or installs
//! (`run`) is printed before it runs; a probe that only asks (`output`) runs quietly.

use std::process::{Command, Output};

use anyhow::{Context as _, bail};

/// Prints a step of the narration.
pub fn step(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

/// `cmd` as one line: the variables it sets, the program, its arguments (unquoted). Variables
/// it removes from the environment (`cargo` in main.rs removes the outer cargo's) are not shown.
fn show(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            parts.push(format!("{}={}", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` with inherited output; fails when it does.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    println!("$ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd));
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its output, whatever its exit status.
pub fn output(cmd: &mut Command) -> anyhow::Result<Output> {
    cmd.output()
        .with_context(|| format!("starting {}", show(cmd)))
}
