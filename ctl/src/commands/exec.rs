//! `skiffctl exec`: a command in a running task's container, through the masters to the
//! agent that runs it. Standard input goes up with `-i`; with `-t` the local terminal is
//! put in raw mode (restored on every exit path) and its size is sent along; the
//! command's exit code becomes skiffctl's.

use skiff_proto::v1::{self as pb, cluster_api_client::ClusterApiClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::commands::CtlError;

/// What `exec` was asked for.
#[derive(Clone, Debug, Default)]
pub struct ExecArgs {
    pub task: String,
    pub project: Option<String>,
    pub command: Vec<String>,
    pub interactive: bool,
    pub tty: bool,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub env: Vec<String>,
}

/// Runs the command and returns its exit code.
pub async fn exec(client: &mut ClusterApiClient<Channel>, args: ExecArgs) -> Result<i32, CtlError> {
    for e in &args.env {
        if !e.contains('=') || e.starts_with('=') {
            return Err(CtlError::Input(format!("--env {e:?}: expected KEY=VALUE")));
        }
    }
    let (rows, cols) = if args.tty {
        terminal::size().unwrap_or((24, 80))
    } else {
        (0, 0)
    };
    let (tx, rx) = mpsc::channel::<pb::ExecInput>(16);
    let start = pb::ExecInput {
        input: Some(pb::exec_input::Input::Start(pb::ExecStart {
            task: args.task.clone(),
            project: args.project.clone().unwrap_or_default(),
            command: args.command.clone(),
            tty: args.tty,
            env: args.env.clone(),
            user: args.user.clone().unwrap_or_default(),
            working_dir: args.workdir.clone().unwrap_or_default(),
            rows: u32::from(rows),
            cols: u32::from(cols),
        })),
    };
    tx.send(start)
        .await
        .map_err(|_| CtlError::Cluster("exec stream closed before it started".into()))?;
    // Standard input: read until EOF, then say so; without -i it is closed at once.
    let stdin_task = if args.interactive {
        let tx = tx.clone();
        Some(tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 8192];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let input = pb::exec_input::Input::Stdin(buf[..n].to_vec());
                        if tx.send(pb::ExecInput { input: Some(input) }).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let close = pb::exec_input::Input::CloseStdin(true);
            let _ = tx.send(pb::ExecInput { input: Some(close) }).await;
        }))
    } else {
        let close = pb::exec_input::Input::CloseStdin(true);
        let _ = tx.send(pb::ExecInput { input: Some(close) }).await;
        None
    };
    drop(tx);
    let _raw = if args.tty && args.interactive {
        terminal::RawMode::enter()
    } else {
        None
    };
    let result = pump(client, rx).await;
    if let Some(task) = stdin_task {
        task.abort();
    }
    result
}

async fn pump(
    client: &mut ClusterApiClient<Channel>,
    rx: mpsc::Receiver<pb::ExecInput>,
) -> Result<i32, CtlError> {
    let mut output = client
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    while let Some(msg) = output.message().await? {
        match msg.output {
            Some(pb::exec_output::Output::Stdout(data)) => {
                let _ = stdout.write_all(&data).await;
                let _ = stdout.flush().await;
            }
            Some(pb::exec_output::Output::Stderr(data)) => {
                let _ = stderr.write_all(&data).await;
                let _ = stderr.flush().await;
            }
            Some(pb::exec_output::Output::ExitCode(code)) => return Ok(code),
            None => {}
        }
    }
    Err(CtlError::Cluster(
        "the exec stream ended without an exit code (agent or master went away?)".into(),
    ))
}

/// The local terminal: its size, and raw mode for `-it`.
mod terminal {
    use rustix::termios::{self, OptionalActions, Termios};

    /// (rows, cols) of the terminal on stdout, if it is one.
    pub fn size() -> Option<(u16, u16)> {
        let ws = termios::tcgetwinsize(std::io::stdout()).ok()?;
        (ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
    }

    /// Raw mode on stdin while alive; the old settings come back on drop.
    pub struct RawMode {
        saved: Termios,
    }

    impl RawMode {
        /// None when stdin is not a terminal.
        pub fn enter() -> Option<Self> {
            let stdin = std::io::stdin();
            let saved = termios::tcgetattr(&stdin).ok()?;
            let mut raw = saved.clone();
            raw.make_raw();
            termios::tcsetattr(&stdin, OptionalActions::Now, &raw).ok()?;
            Some(RawMode { saved })
        }
    }

    impl Drop for RawMode {
        fn drop(&mut self) {
            let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
        }
    }
}
