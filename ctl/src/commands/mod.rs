//! One module per group of verbs. Each takes the parsed arguments and a connected
//! client (or the contexts file), prints its result, and returns a typed error that
//! `main` maps to an exit code.

mod cluster;
mod context;
pub mod deploy;
mod exec;
mod images;
mod logs;
mod nodes;
mod resources;
mod services;

use skiff_proto::v1::cluster_api_client::ClusterApiClient;
use tonic::transport::Channel;

use crate::cli::{Cli, Command};
use crate::client::{self, ClientError};
use crate::context::{Context, ContextError, Contexts};

/// What went wrong, sorted by what the exit code tells a script.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The cluster said no: exit 1.
    #[error("{0}")]
    Cluster(String),
    /// The input was wrong: exit 2.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Context(#[from] ContextError),
    /// No master answered: exit 3.
    #[error(transparent)]
    Connect(#[from] ClientError),
    /// `exec`'s command ended with this code, which becomes skiffctl's.
    #[error("the command exited with {0}")]
    Exited(i32),
}

impl CtlError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Cluster(_) => 1,
            CtlError::Input(_) | CtlError::Context(_) => 2,
            CtlError::Connect(_) => 3,
            // Shells report 128+N for signals; exit codes are one byte.
            CtlError::Exited(code) => u8::try_from(*code).unwrap_or(1),
        }
    }
}

impl From<tonic::Status> for CtlError {
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::Unavailable if status.message().is_empty() => {
                CtlError::Cluster("the cluster is unavailable (no leader?)".into())
            }
            tonic::Code::InvalidArgument => CtlError::Input(status.message().to_owned()),
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                CtlError::Cluster(format!("refused by the cluster: {}", status.message()))
            }
            _ => CtlError::Cluster(status.message().to_owned()),
        }
    }
}

/// Runs one command line.
pub async fn run(cli: Cli) -> Result<(), CtlError> {
    let global = cli.global;
    let format = global.output;
    match cli.command {
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "skiffctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Context(cmd) => context::run(cmd, format),
        Command::Config(args) => crate::compose::config::run(&args, format.into())
            .map_err(|err| CtlError::Input(err.to_string())),
        Command::Deploy(args) => {
            // Bad files fail here, before any master is asked anything.
            let loaded = args
                .compose
                .load()
                .map_err(|err| CtlError::Input(err.to_string()))?;
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            let request = crate::compose::deploy_request(&loaded.project);
            let follow = deploy::Follow {
                detach: args.detach,
                timeout: std::time::Duration::from_secs(args.timeout),
            };
            let ctx = pick_context(global.context.as_deref(), &global.master)?;
            let mut client = client::connect(&ctx).await?;
            deploy::deploy(&mut client, request, follow).await
        }
        command => {
            let ctx = pick_context(global.context.as_deref(), &global.master)?;
            let client = client::connect(&ctx).await?;
            dispatch(command, client, format).await
        }
    }
}

async fn dispatch(
    command: Command,
    mut client: ClusterApiClient<Channel>,
    format: crate::cli::Output,
) -> Result<(), CtlError> {
    match command {
        Command::Ls => services::projects(&mut client, format).await,
        Command::Services { project } => services::list(&mut client, project, format).await,
        Command::Ps {
            service,
            project,
            node,
            all,
        } => services::ps(&mut client, service, project, node, all, format).await,
        Command::Logs {
            service,
            project,
            follow,
            since,
            tail,
            timestamps,
        } => {
            let args = logs::LogsArgs {
                service,
                project,
                follow,
                since,
                tail,
                timestamps,
            };
            logs::logs(&mut client, args).await
        }
        Command::Exec {
            interactive,
            tty,
            project,
            user,
            workdir,
            env,
            task,
            command,
        } => {
            let args = exec::ExecArgs {
                task,
                project,
                command,
                interactive,
                tty,
                user,
                workdir,
                env,
            };
            match exec::exec(&mut client, args).await? {
                0 => Ok(()),
                code => Err(CtlError::Exited(code)),
            }
        }
        Command::Inspect { service, project } => {
            services::inspect(&mut client, service, project).await
        }
        Command::Scale { targets, project } => services::scale(&mut client, targets, project).await,
        Command::Update {
            service,
            project,
            image,
        } => services::update_image(&mut client, service, project, image).await,
        Command::Rollback { service, project } => {
            services::rollback(&mut client, service, project).await
        }
        Command::Rm { project, service } => services::remove(&mut client, project, service).await,
        Command::Node(cmd) => nodes::run(&mut client, cmd, format).await,
        Command::Network(cmd) => resources::network(&mut client, cmd, format).await,
        Command::Volume(cmd) => resources::volume(&mut client, cmd, format).await,
        Command::Image(cmd) => images::run(&mut client, cmd, format).await,
        Command::Cluster(cmd) => cluster::cluster(&mut client, cmd, format).await,
        Command::Master(cmd) => cluster::master(&mut client, cmd, format).await,
        Command::Token(cmd) => cluster::token(&mut client, cmd, format).await,
        Command::Completion { .. }
        | Command::Context(_)
        | Command::Config(_)
        | Command::Deploy(_) => Ok(()),
    }
}

/// The context for this command: the named or current one, with `--master` overriding
/// its addresses; `--master` alone works without any context (plain or TLS-less masters).
fn pick_context(name: Option<&str>, masters: &[String]) -> Result<Context, CtlError> {
    let path = crate::context::default_path();
    let all = Contexts::load(&path)?;
    let ctx = match all.resolve(name, &path) {
        Ok(ctx) => ctx,
        Err(ContextError::NoneChosen) if !masters.is_empty() => Context::default(),
        Err(err) => return Err(err.into()),
    };
    Ok(if masters.is_empty() {
        ctx
    } else {
        Context {
            masters: masters.to_vec(),
            ..ctx
        }
    })
}
