//! `skiffctl`: parses flags, runs the command, maps errors to exit codes.

use clap::Parser;
use skiffctl::cli::Cli;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("skiffctl: cannot start the async runtime: {err}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(skiffctl::commands::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // `exec` passes its command's exit code on; the command already spoke.
            if !matches!(err, skiffctl::commands::CtlError::Exited(_)) {
                eprintln!("skiffctl: {err}");
            }
            std::process::ExitCode::from(err.exit_code())
        }
    }
}
