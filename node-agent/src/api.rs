//! The agent API (`skiff.v1.Agent`): task logs, exec and the node's images for the
//! masters, which proxy `skiffctl logs`, `skiffctl exec` and `skiffctl image` to the
//! node(s) concerned. Served with mTLS;
//! only certificates of role manager get in (the interceptor in `agent.rs`).
//!
//! ```text
//!  master ──TaskLogs{task, follow, since, tail}──► Runtime::logs ──► LogLine*
//!  master ══TaskExec: ExecStart, stdin*, resize*, close══► Runtime::exec (pipes | pty)
//!         ◄═ stdout*/stderr* … exit_code (last) ═════════
//! ```
//!
//! Every exec session is a task on the API's tracker; shutdown or a caller that goes
//! away kills the exec process (never the container).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use skiff_image::{Image, ImageError, ImageStore, Reference};
use skiff_proto::v1 as pb;
use skiff_proto::v1::agent_server::Agent;
use skiff_runtime::{ContainerId, ExecOptions, LogEntry, LogOptions, Runtime, RuntimeError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// The node's assigned tasks as the API needs them: task id → ("<service>.<slot>", image
/// reference as the spec gives it), kept current from the assignments.
#[derive(Clone, Debug, Default)]
pub struct TaskNames(Arc<RwLock<HashMap<String, (String, String)>>>);

impl TaskNames {
    /// Replaces the names with those of `tasks`.
    pub fn set(&self, tasks: &[pb::Task]) {
        let names = tasks
            .iter()
            .map(|t| {
                let image = t
                    .spec
                    .as_ref()
                    .and_then(|s| s.container.as_ref())
                    .map(|c| c.image.clone())
                    .unwrap_or_default();
                (t.id.clone(), (task_name(t), image))
            })
            .collect();
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = names;
    }

    fn get(&self, task_id: &str) -> String {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(task_id)
            .map(|(name, _)| name.clone())
            .unwrap_or_default()
    }

    /// The names of the tasks whose image is `reference` (compared normalized), sorted.
    pub fn using(&self, reference: &Reference) -> Vec<String> {
        let mut users: Vec<String> = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter(|(_, image)| Reference::parse(image).is_ok_and(|r| r == *reference))
            .map(|(name, _)| name.clone())
            .collect();
        users.sort();
        users.dedup();
        users
    }
}

/// Swarm's task name: `<service>.<slot>`, or `<service>.<node id>` for global tasks.
pub fn task_name(t: &pb::Task) -> String {
    if t.slot > 0 {
        format!("{}.{}", t.service_name, t.slot)
    } else {
        format!("{}.{}", t.service_name, t.node_id)
    }
}

/// The service.
#[derive(Clone)]
pub struct AgentApi {
    runtime: Runtime,
    images: ImageStore,
    node_id: String,
    names: TaskNames,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl AgentApi {
    /// Exec sessions are spawned on `tracker` and killed when `shutdown` fires.
    pub fn new(
        runtime: Runtime,
        images: ImageStore,
        node_id: String,
        names: TaskNames,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        AgentApi {
            runtime,
            images,
            node_id,
            names,
            tracker,
            shutdown,
        }
    }

    /// The same service whose exec sessions and log followers end with `shutdown`.
    pub fn with_shutdown(&self, shutdown: CancellationToken) -> Self {
        AgentApi {
            shutdown,
            ..self.clone()
        }
    }

    fn container(&self, task_id: &str) -> Result<ContainerId, Status> {
        ContainerId::new(task_id)
            .map_err(|e| Status::invalid_argument(format!("task id {task_id:?}: {e}")))
    }

    fn status(&self, task_id: &str, err: RuntimeError) -> Status {
        match err {
            RuntimeError::NotFound { .. } => Status::not_found(format!(
                "task {task_id} has no container on node {}",
                self.node_id
            )),
            RuntimeError::WrongState { .. } => Status::failed_precondition(err.to_string()),
            other => Status::internal(format!("task {task_id}: {other}")),
        }
    }

    fn image_info(&self, image: &Image) -> pb::ImageInfo {
        pb::ImageInfo {
            reference: image.reference.to_string(),
            id: image.id.to_string(),
            digest: image.digest.to_string(),
            size: image.size,
            used_by: self.names.using(&image.reference),
            node_id: self.node_id.clone(),
            ..Default::default()
        }
    }
}

fn reference(input: &str) -> Result<Reference, Status> {
    Reference::parse(input)
        .map_err(|e| Status::invalid_argument(format!("image reference {input:?}: {e}")))
}

/// An image store error as a status: an image the node lacks is NOT_FOUND; anything
/// else (an unknown image or registry, a bad digest) is FAILED_PRECONDITION with the
/// store's reason, which names the reference and the registry.
fn image_status(reference: &Reference, err: ImageError) -> Status {
    match err {
        ImageError::NotFound { .. } => {
            Status::not_found(format!("image {reference} is not on this node"))
        }
        other => Status::failed_precondition(format!("image {reference}: {other}")),
    }
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for AgentApi {
    type TaskLogsStream = Stream_<pb::LogLine>;
    type TaskExecStream = Stream_<pb::ExecOutput>;

    async fn list_images(
        &self,
        _request: Request<pb::AgentListImagesRequest>,
    ) -> Result<Response<pb::AgentImages>, Status> {
        let images = self
            .images
            .list()
            .await
            .map_err(|e| Status::internal(format!("listing images: {e}")))?;
        Ok(Response::new(pb::AgentImages {
            images: images.iter().map(|i| self.image_info(i)).collect(),
        }))
    }

    async fn pull_image(
        &self,
        request: Request<pb::AgentPullImageRequest>,
    ) -> Result<Response<pb::AgentImages>, Status> {
        let r = reference(&request.get_ref().reference)?;
        tracing::info!(image = %r, "pull asked by a master");
        let image = self
            .images
            .pull(&r, |_| {})
            .await
            .map_err(|e| image_status(&r, e))?;
        Ok(Response::new(pb::AgentImages {
            images: vec![self.image_info(&image)],
        }))
    }

    async fn remove_image(
        &self,
        request: Request<pb::AgentRemoveImageRequest>,
    ) -> Result<Response<pb::AgentRemoveImageResponse>, Status> {
        let r = reference(&request.get_ref().reference)?;
        let users = self.names.using(&r);
        if !users.is_empty() {
            return Err(Status::failed_precondition(format!(
                "image {r} is used by task {} on this node",
                users.join(", ")
            )));
        }
        self.images
            .remove(&r)
            .await
            .map_err(|e| image_status(&r, e))?;
        let freed_bytes = self
            .images
            .gc()
            .await
            .map_err(|e| Status::internal(format!("freeing the layers of {r}: {e}")))?;
        tracing::info!(image = %r, freed_bytes, "image removed");
        Ok(Response::new(pb::AgentRemoveImageResponse { freed_bytes }))
    }

    async fn task_logs(
        &self,
        request: Request<pb::TaskLogsRequest>,
    ) -> Result<Response<Self::TaskLogsStream>, Status> {
        let r = request.into_inner();
        let id = self.container(&r.task_id)?;
        let opts = LogOptions {
            follow: r.follow,
            since: (r.since_ms > 0)
                .then(|| UNIX_EPOCH + Duration::from_millis(r.since_ms.unsigned_abs())),
            tail: (r.tail > 0).then(|| usize::try_from(r.tail).unwrap_or(usize::MAX)),
        };
        let mut entries = self
            .runtime
            .logs(&id, opts)
            .await
            .map_err(|e| self.status(&r.task_id, e))?;
        let (task_id, task_name, node_id) = (
            r.task_id.clone(),
            self.names.get(&r.task_id),
            self.node_id.clone(),
        );
        let (tx, rx) = mpsc::channel(256);
        let shutdown = self.shutdown.clone();
        // A following stream ends with the agent, so the server can drain.
        self.tracker.spawn(
            async move {
                loop {
                    let entry = tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tx.closed() => return,
                        e = entries.recv() => e,
                    };
                    let Some(e) = entry else { return };
                    if tx
                        .send(Ok(log_line(&e, &task_id, &task_name, &node_id)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            .instrument(tracing::info_span!("logs", task = %r.task_id)),
        );
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn task_exec(
        &self,
        request: Request<Streaming<pb::ExecInput>>,
    ) -> Result<Response<Self::TaskExecStream>, Status> {
        let mut input = request.into_inner();
        let start = match input.message().await? {
            Some(pb::ExecInput {
                input: Some(pb::exec_input::Input::Start(s)),
            }) => s,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of an exec must be ExecStart",
                ));
            }
        };
        if start.command.is_empty() {
            return Err(Status::invalid_argument("exec needs a command"));
        }
        let id = self.container(&start.task)?;
        let env = if start.env.is_empty() {
            None
        } else {
            let spec = self
                .runtime
                .spec(&id)
                .map_err(|e| self.status(&start.task, e))?;
            let base = spec
                .process()
                .as_ref()
                .and_then(|p| p.env().clone())
                .unwrap_or_default();
            Some(merge_env(base, &start.env))
        };
        let opts = ExecOptions {
            args: start.command.clone(),
            env,
            cwd: (!start.working_dir.is_empty()).then(|| start.working_dir.clone().into()),
            user: (!start.user.is_empty()).then(|| start.user.clone()),
            tty: start.tty,
        };
        let mut process = self
            .runtime
            .exec(&id, opts)
            .await
            .map_err(|e| self.status(&start.task, e))?;
        if let Some(pty) = &process.pty
            && start.rows > 0
            && start.cols > 0
        {
            resize(pty, start.rows, start.cols);
        }
        tracing::info!(task = %start.task, command = ?start.command, tty = start.tty, "exec");
        let (tx, rx) = mpsc::channel::<Result<pb::ExecOutput, Status>>(64);
        let shutdown = self.shutdown.clone();
        let span = tracing::info_span!("exec", task = %start.task);
        self.tracker.spawn(
            async move {
                let sink = match process.pty.as_ref().map(std::fs::File::try_clone) {
                    Some(Ok(f)) => Sink::Pty(Some(f)),
                    Some(Err(err)) => {
                        let _ = tx
                            .send(Err(Status::internal(format!("duplicating the pty: {err}"))))
                            .await;
                        return;
                    }
                    None => Sink::Pipe(process.child.stdin.take()),
                };
                let finished = {
                    let outputs = pump_outputs(&mut process, tx.clone());
                    tokio::pin!(outputs);
                    let feed = feed(&mut input, sink);
                    tokio::pin!(feed);
                    tokio::select! {
                        () = &mut outputs => true,
                        fed = &mut feed => {
                            if fed {
                                tokio::select! {
                                    () = &mut outputs => true,
                                    () = shutdown.cancelled() => false,
                                    () = tx.closed() => false,
                                }
                            } else {
                                tracing::info!("caller went away: killing the exec process");
                                false
                            }
                        }
                        () = shutdown.cancelled() => false,
                        () = tx.closed() => false,
                    }
                };
                if !finished {
                    // Dropping the process kills the exec helper (kill_on_drop).
                    return;
                }
                let out = match process.wait().await {
                    Ok(code) => Ok(pb::ExecOutput {
                        output: Some(pb::exec_output::Output::ExitCode(code)),
                    }),
                    Err(err) => Err(Status::internal(format!("waiting for exec: {err}"))),
                };
                let _ = tx.send(out).await;
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Where stdin goes.
enum Sink {
    Pipe(Option<tokio::process::ChildStdin>),
    Pty(Option<std::fs::File>),
}

impl Sink {
    async fn write(&mut self, data: Vec<u8>) {
        match self {
            Sink::Pipe(Some(stdin)) => {
                if stdin.write_all(&data).await.is_err() {
                    *self = Sink::Pipe(None);
                }
            }
            Sink::Pty(slot) => {
                let Some(f) = slot.take() else { return };
                let back = tokio::task::spawn_blocking(move || {
                    let mut f = f;
                    f.write_all(&data).ok().map(|()| f)
                })
                .await
                .ok()
                .flatten();
                *slot = back;
            }
            Sink::Pipe(None) => {}
        }
    }

    async fn close(&mut self) {
        match self {
            Sink::Pipe(stdin) => {
                stdin.take();
            }
            // A terminal has no end of file; ^D is what a user types for one.
            Sink::Pty(_) => {
                self.write(vec![4]).await;
                if let Sink::Pty(f) = self {
                    f.take();
                }
            }
        }
    }

    fn resize(&self, rows: u32, cols: u32) {
        if let Sink::Pty(Some(f)) = self {
            resize(f, rows, cols);
        }
    }
}

fn resize(pty: &std::fs::File, rows: u32, cols: u32) {
    let size = rustix::termios::Winsize {
        ws_row: u16::try_from(rows).unwrap_or(u16::MAX),
        ws_col: u16::try_from(cols).unwrap_or(u16::MAX),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    if let Err(err) = rustix::termios::tcsetwinsize(pty, size) {
        tracing::debug!(%err, "resizing the exec terminal");
    }
}

/// Feeds the caller's input to the process until the caller ends its stream (true) or
/// breaks it (false).
async fn feed(input: &mut Streaming<pb::ExecInput>, mut sink: Sink) -> bool {
    loop {
        match input.message().await {
            Ok(Some(msg)) => match msg.input {
                Some(pb::exec_input::Input::Stdin(data)) => sink.write(data).await,
                Some(pb::exec_input::Input::CloseStdin(true)) => sink.close().await,
                Some(pb::exec_input::Input::Resize(s)) => sink.resize(s.rows, s.cols),
                _ => {}
            },
            Ok(None) => {
                sink.close().await;
                // Keep the terminal (or pipe) open for output; the caller is done typing.
                return true;
            }
            Err(status) => {
                tracing::debug!(%status, "exec input broke");
                return false;
            }
        }
    }
}

/// Sends the process's output until it ends (pipes: both at EOF; pty: EIO once the
/// process and everything holding the terminal exited).
async fn pump_outputs(
    process: &mut skiff_runtime::ExecProcess,
    tx: mpsc::Sender<Result<pb::ExecOutput, Status>>,
) {
    if let Some(pty) = process.pty.as_ref().map(std::fs::File::try_clone) {
        let Ok(mut pty) = pty else { return };
        let tx = tx.clone();
        let reader = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match pty.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let msg = pb::ExecOutput {
                            output: Some(pb::exec_output::Output::Stdout(buf[..n].to_vec())),
                        };
                        if tx.blocking_send(Ok(msg)).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let _ = reader.await;
        return;
    }
    let out = process.child.stdout.take();
    let err = process.child.stderr.take();
    tokio::join!(
        copy_out(out, tx.clone(), pb::exec_output::Output::Stdout),
        copy_out(err, tx, pb::exec_output::Output::Stderr),
    );
}

async fn copy_out<R: AsyncRead + Unpin>(
    from: Option<R>,
    tx: mpsc::Sender<Result<pb::ExecOutput, Status>>,
    wrap: fn(Vec<u8>) -> pb::exec_output::Output,
) {
    let Some(mut from) = from else { return };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let msg = pb::ExecOutput {
                    output: Some(wrap(buf[..n].to_vec())),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Docker's `exec -e`: the container's environment with these set or replaced.
pub fn merge_env(mut base: Vec<String>, extra: &[String]) -> Vec<String> {
    for kv in extra {
        let key = kv.split('=').next().unwrap_or(kv);
        base.retain(|e| e.split('=').next() != Some(key));
        base.push(kv.clone());
    }
    base
}

fn log_line(e: &LogEntry, task_id: &str, task_name: &str, node_id: &str) -> pb::LogLine {
    pb::LogLine {
        task_id: task_id.to_owned(),
        task_name: task_name.to_owned(),
        node_id: node_id.to_owned(),
        stream: e.stream.clone(),
        timestamp_ms: rfc3339_ms(&e.time).unwrap_or(0),
        line: e.log.clone().into_bytes(),
    }
}

/// Pure: `2025-01-02T03:04:05.123456789Z` (the runtime's fixed-width log time) in unix
/// milliseconds.
pub fn rfc3339_ms(s: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    if s.len() < 20 || s.as_bytes().get(4) != Some(&b'-') || s.as_bytes().get(10) != Some(&b'T') {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let millis = match s.as_bytes().get(19) {
        Some(b'.') => {
            let frac: String = s[20..]
                .chars()
                .take_while(char::is_ascii_digit)
                .chain(std::iter::repeat('0'))
                .take(3)
                .collect();
            frac.parse::<i64>().ok()?
        }
        _ => 0,
    };
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_become_unix_milliseconds() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00.000000000Z"), Some(0));
        assert_eq!(
            rfc3339_ms("2025-01-02T03:04:05.123456789Z"),
            Some(1_735_787_045_123)
        );
        assert_eq!(rfc3339_ms("2000-03-01T00:00:00Z"), Some(951_868_800_000));
        assert_eq!(rfc3339_ms("garbage"), None);
    }

    #[test]
    fn exec_env_sets_and_replaces_like_docker() {
        let base = vec!["PATH=/bin".to_owned(), "MODE=a".to_owned()];
        let env = merge_env(base, &["MODE=b".into(), "NEW=1".into()]);
        assert_eq!(env, vec!["PATH=/bin", "MODE=b", "NEW=1"]);
    }

    #[test]
    fn task_names_follow_swarm() {
        let t = pb::Task {
            id: "t1".into(),
            service_name: "demo_web".into(),
            slot: 2,
            node_id: "n1".into(),
            ..Default::default()
        };
        assert_eq!(task_name(&t), "demo_web.2");
        let g = pb::Task { slot: 0, ..t };
        assert_eq!(task_name(&g), "demo_web.n1");
        let names = TaskNames::default();
        names.set(std::slice::from_ref(&g));
        assert_eq!(names.get("t1"), "demo_web.n1");
        assert_eq!(names.get("nope"), "");
    }
}
