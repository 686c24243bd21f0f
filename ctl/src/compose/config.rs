//! The I/O shell around the loader: which files (`-f`, `COMPOSE_FILE`, or the default
//! names in the current directory), which project directory, which environment (the
//! process environment over `.env` or `--env-file`), and `skiffctl config`, which
//! prints the normalized project or the wire request.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::dotenv;
use super::error::{ComposeError, ErrorKind, Origin};
use super::load::{LoadInput, Loaded, Source, load};
use super::tree::MAX_FILE_BYTES;

/// The files compose looks for when no `-f` is given, in order of preference.
pub const DEFAULT_FILES: &[&str] = &[
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];
const OVERRIDE_FILES: &[&str] = &[
    "compose.override.yaml",
    "compose.override.yml",
    "docker-compose.override.yaml",
    "docker-compose.override.yml",
];

/// Where a project comes from: the flags `config` and `deploy` share.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ComposeArgs {
    /// Compose file(s), merged in order; `-` reads standard input. Default:
    /// compose.yaml (or docker-compose.yml...) and its .override file.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        env = "COMPOSE_FILE",
        value_delimiter = ':'
    )]
    pub files: Vec<PathBuf>,
    /// Project name. Default: `name:` in the files, else the project directory's name.
    #[arg(short = 'p', long = "project-name", env = "COMPOSE_PROJECT_NAME")]
    pub project_name: Option<String>,
    /// Where relative paths start and `.env` is read. Default: the first file's directory.
    #[arg(long, value_name = "DIR")]
    pub project_directory: Option<PathBuf>,
    /// Variables for interpolation from these files instead of <project dir>/.env.
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_files: Vec<PathBuf>,
    /// Activate services of this profile (repeatable; `*` for all).
    #[arg(
        long = "profile",
        value_name = "NAME",
        env = "COMPOSE_PROFILES",
        value_delimiter = ','
    )]
    pub profiles: Vec<String>,
}

/// `skiffctl config`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub compose: ComposeArgs,
    /// Only check the files: print nothing, exit 0 when they are valid.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print the service names, one per line.
    #[arg(long, conflicts_with = "quiet")]
    pub services: bool,
    /// Print the request `skiffctl deploy` would send (JSON) instead of compose YAML.
    #[arg(long, conflicts_with_all = ["quiet", "services"])]
    pub wire: bool,
}

impl ComposeArgs {
    /// Reads the files and the environment and loads the project.
    pub fn load(&self) -> Result<Loaded, ComposeError> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let files = self.sources(&cwd)?;
        let project_dir = match &self.project_directory {
            Some(d) => d.clone(),
            None => self
                .files
                .first()
                .filter(|f| f.as_os_str() != "-")
                .and_then(|f| f.parent().map(Path::to_path_buf))
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or_else(|| cwd.clone()),
        };
        let project_dir = std::fs::canonicalize(&project_dir).unwrap_or(project_dir);
        let process_env: BTreeMap<String, String> = std::env::vars().collect();
        let env = project_environment(&process_env, &project_dir, &self.env_files)?;
        load(&LoadInput {
            files,
            env: &env,
            project_name: self.project_name.clone().filter(|p| !p.is_empty()),
            project_dir,
            profiles: self.profiles.clone(),
            read_file: &|p| read_limited(p),
        })
    }

    fn sources(&self, cwd: &Path) -> Result<Vec<Source>, ComposeError> {
        let paths: Vec<(PathBuf, Arc<str>)> = if self.files.is_empty() {
            let Some(main) = DEFAULT_FILES.iter().find(|f| cwd.join(f).is_file()) else {
                return Err(ComposeError {
                    origin: Origin::CommandLine,
                    path: String::new(),
                    kind: ErrorKind::NoFile {
                        tried: DEFAULT_FILES.join(", "),
                        dir: cwd.to_path_buf(),
                    },
                });
            };
            let mut found = vec![(cwd.join(main), Arc::from(*main))];
            if let Some(over) = OVERRIDE_FILES.iter().find(|f| cwd.join(f).is_file()) {
                found.push((cwd.join(over), Arc::from(*over)));
            }
            found
        } else {
            self.files
                .iter()
                .map(|p| (p.clone(), Arc::from(p.display().to_string())))
                .collect()
        };
        paths
            .into_iter()
            .map(|(path, name)| {
                let bytes = if path.as_os_str() == "-" {
                    read_stdin()
                } else {
                    read_limited(&path)
                }
                .map_err(|err| ComposeError {
                    origin: Origin::File(name.clone()),
                    path: String::new(),
                    kind: ErrorKind::Read {
                        path: path.clone(),
                        err,
                    },
                })?;
                Ok(Source {
                    name: if path.as_os_str() == "-" {
                        Arc::from("<stdin>")
                    } else {
                        name
                    },
                    bytes,
                })
            })
            .collect()
    }
}

/// Reads a file, refusing more than twice the compose size limit (the parser reports
/// the exact limit; this only keeps a huge file out of memory).
fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(2 * MAX_FILE_BYTES as u64)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn read_stdin() -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(2 * MAX_FILE_BYTES as u64)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The variables interpolation sees: `env_files` (or `<dir>/.env` if it exists), with
/// the process environment winning.
pub fn project_environment(
    process: &BTreeMap<String, String>,
    project_dir: &Path,
    env_files: &[PathBuf],
) -> Result<BTreeMap<String, String>, ComposeError> {
    let default = project_dir.join(".env");
    let (files, required): (Vec<PathBuf>, bool) = if env_files.is_empty() {
        (vec![default], false)
    } else {
        (env_files.to_vec(), true)
    };
    let mut env = BTreeMap::new();
    for path in files {
        let name: Arc<str> = Arc::from(path.display().to_string());
        let bytes = match read_limited(&path) {
            Ok(b) => b,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !required => continue,
            Err(err) => {
                return Err(ComposeError {
                    origin: Origin::File(name),
                    path: String::new(),
                    kind: ErrorKind::Read { path, err },
                });
            }
        };
        let text = String::from_utf8(bytes).map_err(|_| ComposeError {
            origin: Origin::File(name.clone()),
            path: String::new(),
            kind: ErrorKind::NotUtf8,
        })?;
        let lookup = |k: &str| process.get(k).or_else(|| env.get(k)).cloned();
        let lines = dotenv::parse(&name, &text, &lookup)?;
        for line in lines {
            if let Some(v) = line.value {
                env.insert(line.key, v);
            }
        }
    }
    env.extend(process.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(env)
}

/// Output formats of `skiffctl config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl From<crate::cli::Output> for Format {
    /// `-o table` (the default, for people) is YAML here.
    fn from(o: crate::cli::Output) -> Self {
        match o {
            crate::cli::Output::Table => Format::Yaml,
            crate::cli::Output::Json => Format::Json,
        }
    }
}

/// What `skiffctl config` prints for `loaded`.
pub fn render(loaded: &Loaded, args: &ConfigArgs, format: Format) -> Result<String, String> {
    if args.quiet {
        return Ok(String::new());
    }
    if args.services {
        let mut out = String::new();
        for name in loaded.project.services.keys() {
            out.push_str(name);
            out.push('\n');
        }
        return Ok(out);
    }
    if args.wire {
        let request = super::wire::deploy_request(&loaded.project);
        return serde_json::to_string_pretty(&request)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string());
    }
    match format {
        Format::Json => serde_json::to_string_pretty(&loaded.project)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string()),
        Format::Yaml => {
            // Commands stay on one line each: folded scalars are valid but hard to read.
            let options = serde_saphyr::ser_options! { prefer_block_scalars: false };
            serde_saphyr::to_string_with_options(&loaded.project, options)
                .map_err(|e| e.to_string())
        }
    }
}

/// Runs `skiffctl config`: warnings to stderr, the result to stdout.
pub fn run(args: &ConfigArgs, format: Format) -> Result<(), ComposeError> {
    let loaded = args.compose.load()?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    match render(&loaded, args, format) {
        Ok(text) => {
            print!("{text}");
            Ok(())
        }
        Err(message) => Err(ComposeError {
            origin: Origin::CommandLine,
            path: String::new(),
            kind: ErrorKind::Invalid {
                message: format!("cannot print the project: {message}"),
            },
        }),
    }
}
