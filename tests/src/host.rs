//! Running host tools (`ip`, `iptables`) for the lab, with errors that say which command
//! failed and what it printed. The lab is test tooling: it shells out where the agent
//! itself speaks netlink.

use std::process::Command;

/// A host command that could not run or failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot run `{command}`: {err}")]
    Spawn {
        command: String,
        err: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Runs `program args…`, returning its stdout; a non-zero exit is an error carrying stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, HostError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|err| HostError::Spawn {
            command: command.clone(),
            err,
        })?;
    if !out.status.success() {
        return Err(HostError::Failed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip args…`.
pub fn ip(args: &[&str]) -> Result<String, HostError> {
    run("ip", args)
}

/// Runs a command and ignores failure: for teardown of things that may already be gone.
pub fn run_quiet(program: &str, args: &[&str]) {
    let _ignored = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_command_is_named_with_its_stderr() {
        let err = run("ip", &["link", "show", "skiff-no-such-link"]).expect_err("must fail");
        let text = err.to_string();
        assert!(text.contains("ip link show skiff-no-such-link"), "{text}");
        assert!(text.contains("skiff-no-such-link"), "{text}");
    }

    #[test]
    fn a_missing_program_is_named() {
        let err = run("skiff-no-such-program", &[]).expect_err("must fail");
        assert!(err.to_string().contains("skiff-no-such-program"));
    }
}
