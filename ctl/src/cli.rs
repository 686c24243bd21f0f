//! The command line: every verb `skiffctl` offers, as clap types.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Deploy compose projects to a skiff cluster and see what they are doing.
///
/// Exit codes: 0 success, 1 the operation failed, 2 bad input or usage, 3 no master
/// could be reached.
#[derive(Debug, Parser)]
#[command(name = "skiffctl", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Use this context instead of the current one.
    #[arg(long, global = true, env = "SKIFF_CONTEXT")]
    pub context: Option<String>,
    /// Master addresses (comma-separated) instead of the context's.
    #[arg(long, global = true, env = "SKIFF_MASTER", value_delimiter = ',')]
    pub master: Vec<String>,
    /// Output for people (table) or scripts (json).
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people: tables (YAML for `config`).
    #[value(alias = "yaml")]
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check compose files and print the normalized project (YAML, or JSON with -o json).
    Config(crate::compose::ConfigArgs),
    /// Deploy (or update) a compose project: show what changes, apply it, and follow it
    /// until every service runs as asked (exit 1 if it fails or times out).
    Deploy(DeployArgs),
    /// List deployed projects.
    Ls,
    /// List services (of one project with -p).
    Services {
        #[arg(short, long)]
        project: Option<String>,
    },
    /// List tasks: where each replica runs, its state and age.
    Ps {
        /// A service (name or id); all services if omitted.
        service: Option<String>,
        #[arg(short, long)]
        project: Option<String>,
        /// Only tasks on this node (id or hostname).
        #[arg(long)]
        node: Option<String>,
        /// Also tasks that have ended.
        #[arg(short, long)]
        all: bool,
    },
    /// Print what a service's replicas (or one task) write, merged from every node,
    /// each line prefixed by its task.
    Logs {
        /// A service (`<project>_<name>`, or the name with -p), a task id, or
        /// `<service>.<slot>`.
        service: String,
        #[arg(short, long)]
        project: Option<String>,
        /// Keep following new output (also of replicas that restart).
        #[arg(short, long)]
        follow: bool,
        /// Only lines newer than this: a duration ago (`30s`, `10m`, `2h`) or unix seconds.
        #[arg(long)]
        since: Option<String>,
        /// Only the last N lines of each task.
        #[arg(long, value_name = "N")]
        tail: Option<u64>,
        /// Prefix each line with its time.
        #[arg(short, long)]
        timestamps: bool,
    },
    /// Run a command in a running task's container, on whichever node it runs.
    /// Exits with the command's exit code.
    Exec {
        /// Keep standard input open and send it to the command.
        #[arg(short, long)]
        interactive: bool,
        /// Give the command a terminal (use with -i for a shell).
        #[arg(short, long)]
        tty: bool,
        #[arg(short, long)]
        project: Option<String>,
        /// Run as this user (`name`, `uid` or `uid:gid`) instead of the container's.
        #[arg(short, long)]
        user: Option<String>,
        /// Working directory inside the container.
        #[arg(short, long)]
        workdir: Option<String>,
        /// Extra environment variables, KEY=VALUE (repeatable).
        #[arg(short, long = "env")]
        env: Vec<String>,
        /// A task id, `<service>.<slot>`, or a service (its first running task).
        task: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Show a service as stored in the cluster (JSON).
    Inspect {
        service: String,
        #[arg(short, long)]
        project: Option<String>,
    },
    /// Set a service's replica count.
    Scale {
        /// SERVICE=REPLICAS, e.g. web=5.
        #[arg(required = true)]
        targets: Vec<String>,
        #[arg(short, long)]
        project: Option<String>,
    },
    /// Change a service's image (a rolling update).
    Update {
        service: String,
        #[arg(short, long)]
        project: Option<String>,
        /// The new image reference.
        #[arg(long)]
        image: String,
    },
    /// Go back to a service's previous spec.
    Rollback {
        service: String,
        #[arg(short, long)]
        project: Option<String>,
    },
    /// Remove a project (all its services, networks) or, with --service, one service.
    Rm {
        /// The project to remove.
        project: String,
        /// Remove only this service of the project.
        #[arg(long)]
        service: Option<String>,
    },
    /// Nodes of the cluster.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Networks.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Images in the nodes' stores: list, pull ahead of a deployment, remove.
    #[command(subcommand)]
    Image(ImageCommand),
    /// The cluster itself.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Masters: list, remove, hand over leadership.
    #[command(subcommand)]
    Master(MasterCommand),
    /// Join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Which cluster skiffctl talks to.
    #[command(subcommand)]
    Context(ContextCommand),
    /// Print a shell completion script.
    Completion {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes with state, availability and resources.
    Ls,
    /// Show one node (JSON).
    Inspect { node: String },
    /// Change availability or labels.
    Update {
        node: String,
        /// active, pause or drain.
        #[arg(long, value_enum)]
        availability: Option<Availability>,
        /// KEY=VALUE labels to add (repeatable).
        #[arg(long = "label-add")]
        label_add: Vec<String>,
        /// Label keys to remove (repeatable).
        #[arg(long = "label-rm")]
        label_rm: Vec<String>,
    },
    /// Remove a node from the cluster (its certificate stops working).
    Rm {
        node: String,
        /// Remove it even if it still looks alive.
        #[arg(long)]
        force: bool,
    },
}

/// `skiffctl deploy`.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub compose: crate::compose::ComposeArgs,
    /// Return as soon as the cluster accepted the changes.
    #[arg(short, long)]
    pub detach: bool,
    /// Seconds to wait for convergence before giving up (exit 1).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub timeout: u64,
}

/// Node availability, as the scheduler reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// List networks.
    Ls {
        #[arg(short, long)]
        project: Option<String>,
    },
    /// Show one network (JSON).
    Inspect { network: String },
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// List volumes.
    Ls {
        #[arg(short, long)]
        project: Option<String>,
    },
    /// Show one volume (JSON).
    Inspect { volume: String },
    /// Remove a volume.
    Rm {
        volume: String,
        #[arg(short, long)]
        project: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List the images on every ready node (or one).
    Ls {
        /// Only this node (id or hostname).
        #[arg(long)]
        node: Option<String>,
    },
    /// Pull an image onto every ready node (or one), e.g. before a deployment.
    Pull {
        /// The image reference, e.g. `registry.example:5000/web:2`.
        reference: String,
        /// Only this node (id or hostname).
        #[arg(long)]
        node: Option<String>,
    },
    /// Remove an image from every ready node (or one) and free its layers; a node
    /// where a task still uses it refuses.
    Rm {
        /// The image reference.
        reference: String,
        /// Only this node (id or hostname).
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Cluster id, leader, term, commit index, sizes.
    Info,
}

#[derive(Debug, Subcommand)]
pub enum MasterCommand {
    /// List masters, the leader, and how far each has replicated.
    Ls,
    /// Remove a master from the raft group.
    Rm { id: String },
    /// Hand leadership to another master (any other voter if none is named).
    TransferLeader { to: Option<String> },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Show the worker and manager join tokens.
    Ls,
    /// Make new join tokens; the old ones stop working.
    Rotate {
        /// Rotate the worker token.
        #[arg(long)]
        worker: bool,
        /// Rotate the manager token.
        #[arg(long)]
        manager: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// List contexts; the current one is marked.
    Ls,
    /// Make a context the current one.
    Use { name: String },
    /// Add (or replace) a context.
    Add {
        name: String,
        /// Master addresses, comma-separated.
        #[arg(long, required = true, value_delimiter = ',')]
        master: Vec<String>,
        /// Cluster CA certificate (PEM).
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
        /// Admin client certificate (PEM).
        #[arg(long)]
        cert: Option<std::path::PathBuf>,
        /// Admin client key (PEM).
        #[arg(long)]
        key: Option<std::path::PathBuf>,
        /// Make it the current context.
        #[arg(long = "use")]
        make_current: bool,
    },
    /// Remove a context.
    Rm { name: String },
}
