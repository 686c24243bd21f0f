//! The real executor: a task becomes a container. Pull the image into the node's store,
//! prepare the task's network namespace, turn the task's container spec plus the image
//! config into an OCI spec (Docker's defaults), and drive skiff-runtime. Container ids are
//! task ids, so a restarted agent finds its containers by listing the runtime.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
    Mount, MountBuilder, PosixRlimit, PosixRlimitBuilder, PosixRlimitType,
};
use skiff_image::{Image, ImageStore, Reference};
use skiff_network::{NetworkMode, NodeNetwork};
use skiff_proto::v1 as pb;
use skiff_runtime::runtime::ANNOTATION_STOP_SIGNAL;
use skiff_runtime::{
    ContainerId, CreateOptions, EtcFiles, ExecOptions, Rootfs, Runtime, SpecOptions, Status,
    docker_spec,
};

use crate::worker::executor::{ExecError, Executor, Existing, Exit};

/// Runs tasks as skiff containers.
pub struct ContainerExecutor {
    runtime: Runtime,
    images: ImageStore,
    network: Option<Arc<NodeNetwork>>,
    /// Per-container writable layers: `<dir>/<task id>/{upper,work}`.
    layers_dir: PathBuf,
    /// Named volumes: `<dir>/<project>_<name>`.
    volumes_dir: PathBuf,
}

impl ContainerExecutor {
    /// `network` is None only where the node runs no overlay (tests of the runtime path).
    pub fn new(
        runtime: Runtime,
        images: ImageStore,
        network: Option<Arc<NodeNetwork>>,
        data_dir: &Path,
    ) -> Self {
        let layers_dir = data_dir.join("rw");
        // One writable layer per task: spread them over the disk (skiff_runtime::placement).
        let spread = std::fs::create_dir_all(&layers_dir)
            .and_then(|()| skiff_runtime::placement::spread_subdirectories(&layers_dir));
        match spread {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(dir = %layers_dir.display(), "filesystem has no FS_TOPDIR_FL")
            }
            Err(err) => {
                tracing::warn!(dir = %layers_dir.display(), %err, "could not mark the writable layers' directory (chattr +T)")
            }
        }
        ContainerExecutor {
            runtime,
            images,
            network,
            layers_dir,
            volumes_dir: data_dir.join("volumes"),
        }
    }

    async fn image(&self, reference: &str) -> Result<Image, ExecError> {
        let r =
            Reference::parse(reference).map_err(|e| ExecError::rejected("image reference", e))?;
        if let Ok(image) = self.images.get(&r).await {
            return Ok(image);
        }
        let name = r.to_string();
        self.images
            .pull(&r, move |p| {
                tracing::debug!(image = %name, layer = p.layer, current = p.current, total = p.total, "pull");
            })
            .await
            .map_err(|e| ExecError::rejected("pull image", e))
    }
}

fn cid(task_id: &str) -> Result<ContainerId, ExecError> {
    ContainerId::new(task_id).map_err(|e| ExecError::rejected("container id", e))
}

impl Executor for ContainerExecutor {
    async fn prepare(&self, task: &pb::Task) -> Result<(), ExecError> {
        let spec = task.spec.clone().unwrap_or_default();
        let container = spec.container.clone().unwrap_or_default();
        if container.image.is_empty() {
            return Err(ExecError::rejected("task spec", "no image given"));
        }
        let image = self.image(&container.image).await?;
        let id = cid(&task.id)?;

        let mode = NetworkMode::parse(&container.network_mode)
            .map_err(|e| ExecError::rejected("network mode", e))?;
        let (netns, resolv_conf) = match &self.network {
            Some(net) => {
                let ns = net
                    .attach(&task.id, mode, &task.networks)
                    .await
                    .map_err(|e| ExecError::new("attach network", e))?;
                (ns.map(|n| n.0), net.resolv_conf(&task.id).await)
            }
            None => (None, None),
        };

        let rw = self.layers_dir.join(&task.id);
        let (upper, work) = (rw.join("upper"), rw.join("work"));
        for dir in [&upper, &work] {
            std::fs::create_dir_all(dir).map_err(|e| {
                ExecError::new("create writable layer", format!("{}: {e}", dir.display()))
            })?;
        }
        let mounts = self.mounts(&spec, &container)?;
        let hostname = if container.hostname.is_empty() {
            skiff_proto::short_id(&task.id)
        } else {
            container.hostname.clone()
        };
        let mut options = spec_options(
            &task.id,
            &spec,
            &container,
            &image,
            netns,
            hostname.clone(),
            mounts,
        );
        options.rlimits =
            rlimits(&container.ulimits).map_err(|e| ExecError::rejected("ulimits", e))?;
        let mut oci = docker_spec(&options);
        let stop_signal = [
            &container.stop_signal,
            &image.config.stop_signal.clone().unwrap_or_default(),
        ]
        .into_iter()
        .find(|s| !s.is_empty())
        .cloned();
        if let Some(sig) = stop_signal {
            if skiff_runtime::runtime::parse_signal(&sig).is_none() {
                return Err(ExecError::rejected(
                    "stop signal",
                    format!("{sig:?} is not a signal"),
                ));
            }
            let mut annotations = oci.annotations().clone().unwrap_or_default();
            annotations.insert(ANNOTATION_STOP_SIGNAL.to_owned(), sig);
            oci.set_annotations(Some(annotations));
        }
        let hosts = hosts_file(&hostname, &task.networks);
        self.runtime
            .create(
                &id,
                CreateOptions {
                    spec: oci,
                    rootfs: Rootfs::Overlay {
                        lowers: image.layers.clone(),
                        upper,
                        work,
                    },
                    etc: EtcFiles {
                        hosts: Some(hosts),
                        hostname: Some(format!("{hostname}\n")),
                        resolv_conf,
                    },
                },
            )
            .await
            .map_err(|e| ExecError::new("create container", e))?;
        Ok(())
    }

    async fn start(&self, task_id: &str) -> Result<u32, ExecError> {
        let pid = self
            .runtime
            .start(&cid(task_id)?)
            .await
            .map_err(|e| ExecError::new("start container", e))?;
        Ok(u32::try_from(pid).unwrap_or(0))
    }

    async fn wait(&self, task_id: &str) -> Result<Exit, ExecError> {
        let status = self
            .runtime
            .wait(&cid(task_id)?)
            .await
            .map_err(|e| ExecError::new("wait for container", e))?;
        Ok(Exit {
            code: status.code,
            signal: status.signal,
            oom_killed: status.oom_killed,
        })
    }

    async fn stop(&self, task_id: &str, grace: Duration) -> Result<(), ExecError> {
        self.runtime
            .stop(&cid(task_id)?, grace)
            .await
            .map(drop)
            .map_err(|e| ExecError::new("stop container", e))
    }

    async fn release_network(&self, task_id: &str) -> Result<(), ExecError> {
        match &self.network {
            Some(net) => net
                .detach(task_id)
                .await
                .map_err(|e| ExecError::new("detach network", e)),
            None => Ok(()),
        }
    }

    async fn remove(&self, task_id: &str) -> Result<(), ExecError> {
        let id = cid(task_id)?;
        if self.runtime.state(&id).is_ok() {
            self.runtime
                .delete(&id, true)
                .await
                .map_err(|e| ExecError::new("delete container", e))?;
        }
        if let Some(net) = &self.network {
            net.detach(task_id)
                .await
                .map_err(|e| ExecError::new("detach network", e))?;
        }
        let rw = self.layers_dir.join(task_id);
        if rw.exists() {
            std::fs::remove_dir_all(&rw).map_err(|e| {
                ExecError::new("remove writable layer", format!("{}: {e}", rw.display()))
            })?;
        }
        Ok(())
    }

    async fn exec(
        &self,
        task_id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<i32, ExecError> {
        let process = self
            .runtime
            .exec(
                &cid(task_id)?,
                ExecOptions {
                    args: argv.to_vec(),
                    env: None,
                    cwd: None,
                    user: None,
                    tty: false,
                },
            )
            .await
            .map_err(|e| ExecError::new("exec", e))?;
        match tokio::time::timeout(timeout, process.output()).await {
            Ok(Ok((code, _, _))) => Ok(code),
            Ok(Err(e)) => Err(ExecError::new("exec", e)),
            Err(_) => Err(ExecError::new(
                "exec",
                format!("timed out after {timeout:?}"),
            )),
        }
    }

    async fn image_healthcheck(&self, task: &pb::Task) -> Option<pb::HealthCheck> {
        let reference = &task.spec.as_ref()?.container.as_ref()?.image;
        let image = self
            .images
            .get(&Reference::parse(reference).ok()?)
            .await
            .ok()?;
        image.config.healthcheck.map(|h| health_from_image(&h))
    }

    async fn list(&self) -> Result<Vec<Existing>, ExecError> {
        let states = self
            .runtime
            .list()
            .await
            .map_err(|e| ExecError::new("list containers", e))?;
        Ok(states
            .into_iter()
            .filter(|s| s.status != Status::Created)
            .map(|s| Existing {
                task_id: s.id.clone(),
                exit: match s.status {
                    Status::Running | Status::Paused => None,
                    _ => Some(s.exit.map_or(
                        Exit {
                            code: -1,
                            signal: 0,
                            oom_killed: false,
                        },
                        |e| Exit {
                            code: e.code,
                            signal: e.signal,
                            oom_killed: e.oom_killed,
                        },
                    )),
                },
                pid: u32::try_from(s.pid).unwrap_or(0),
            })
            .collect())
    }
}

impl ContainerExecutor {
    /// The task's bind, volume and tmpfs mounts as OCI mounts; named volumes are
    /// directories on the node, made on first use.
    fn mounts(
        &self,
        spec: &pb::ServiceSpec,
        c: &pb::ContainerSpec,
    ) -> Result<Vec<Mount>, ExecError> {
        let mut out = Vec::new();
        for m in &c.mounts {
            let mut options = vec!["rbind".to_string()];
            if m.read_only {
                options.push("ro".into());
            }
            let built = match m.r#type() {
                pb::mount::Type::Bind => {
                    if !Path::new(&m.source).exists() {
                        return Err(ExecError::rejected(
                            "bind mount",
                            format!("source {} does not exist on this node", m.source),
                        ));
                    }
                    MountBuilder::default()
                        .destination(&m.target)
                        .typ("bind")
                        .source(&m.source)
                        .options(options)
                        .build()
                }
                pb::mount::Type::Volume => {
                    let dir = self
                        .volumes_dir
                        .join(format!("{}_{}", spec.project, m.source));
                    std::fs::create_dir_all(&dir).map_err(|e| {
                        ExecError::new("create volume", format!("{}: {e}", dir.display()))
                    })?;
                    MountBuilder::default()
                        .destination(&m.target)
                        .typ("bind")
                        .source(dir)
                        .options(options)
                        .build()
                }
                pb::mount::Type::Tmpfs => {
                    let mut opts = vec!["nosuid".to_string(), "nodev".into()];
                    if m.tmpfs_size_bytes > 0 {
                        opts.push(format!("size={}", m.tmpfs_size_bytes));
                    }
                    if m.tmpfs_mode > 0 {
                        opts.push(format!("mode={:o}", m.tmpfs_mode));
                    }
                    MountBuilder::default()
                        .destination(&m.target)
                        .typ("tmpfs")
                        .source("tmpfs")
                        .options(opts)
                        .build()
                }
            };
            out.push(
                built.map_err(|e| ExecError::rejected("mount", format!("{}: {e}", m.target)))?,
            );
        }
        Ok(out)
    }
}

/// Pure: the runtime options for a task, from its spec and its image's config, with
/// Compose's precedence (the service's entrypoint/command/env/workdir/user over the
/// image's).
pub fn spec_options(
    task_id: &str,
    spec: &pb::ServiceSpec,
    c: &pb::ContainerSpec,
    image: &Image,
    netns: Option<PathBuf>,
    hostname: String,
    mounts: Vec<Mount>,
) -> SpecOptions {
    let cfg = &image.config;
    let entrypoint = if c.entrypoint.is_empty() {
        cfg.entrypoint.clone()
    } else {
        c.entrypoint.clone()
    };
    // A new entrypoint drops the image's CMD, as Docker does.
    let cmd = if !c.command.is_empty() {
        c.command.clone()
    } else if c.entrypoint.is_empty() {
        cfg.cmd.clone()
    } else {
        Vec::new()
    };
    let mut env = cfg.env.clone();
    for kv in &c.env {
        let key = kv.split('=').next().unwrap_or(kv);
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    env.push(format!("SKIFF_TASK_ID={task_id}"));
    let pick = |ours: &str, theirs: &str| {
        if !ours.is_empty() {
            Some(ours.to_owned())
        } else if !theirs.is_empty() {
            Some(theirs.to_owned())
        } else {
            None
        }
    };
    SpecOptions {
        args: entrypoint.into_iter().chain(cmd).collect(),
        env,
        cwd: pick(&c.working_dir, &cfg.workdir),
        user: pick(&c.user, &cfg.user),
        hostname: Some(hostname),
        cap_add: c.cap_add.clone(),
        cap_drop: c.cap_drop.clone(),
        resources: resources(spec.resources.as_ref()),
        mounts,
        read_only: c.read_only,
        init: c.init,
        netns,
        no_new_privileges: c.no_new_privileges,
        seccomp_unconfined: false,
        rlimits: Vec::new(),
    }
}

/// Compose's `ulimits` (`nofile: {soft, hard}`) as OCI rlimits.
pub fn rlimits(ulimits: &[pb::Ulimit]) -> Result<Vec<PosixRlimit>, String> {
    use PosixRlimitType as T;
    ulimits
        .iter()
        .map(|u| {
            let typ = match u.name.to_ascii_lowercase().as_str() {
                "cpu" => T::RlimitCpu,
                "fsize" => T::RlimitFsize,
                "data" => T::RlimitData,
                "stack" => T::RlimitStack,
                "core" => T::RlimitCore,
                "rss" => T::RlimitRss,
                "nproc" => T::RlimitNproc,
                "nofile" => T::RlimitNofile,
                "memlock" => T::RlimitMemlock,
                "as" => T::RlimitAs,
                "locks" => T::RlimitLocks,
                "sigpending" => T::RlimitSigpending,
                "msgqueue" => T::RlimitMsgqueue,
                "nice" => T::RlimitNice,
                "rtprio" => T::RlimitRtprio,
                "rttime" => T::RlimitRttime,
                other => return Err(format!("unknown ulimit {other:?}")),
            };
            // -1 is "unlimited" in Docker's form.
            let value = |v: i64| u64::try_from(v).unwrap_or(u64::MAX);
            let hard = if u.hard == 0 { u.soft } else { u.hard };
            PosixRlimitBuilder::default()
                .typ(typ)
                .soft(value(u.soft))
                .hard(value(hard))
                .build()
                .map_err(|e| format!("ulimit {}: {e}", u.name))
        })
        .collect()
}

/// Limits as cgroup settings: `cpus: 0.5` is a 50 ms quota per 100 ms period.
fn resources(r: Option<&pb::ResourceRequirements>) -> Option<LinuxResources> {
    let limits = r?.limits.as_ref()?;
    let mut b = LinuxResourcesBuilder::default();
    let mut any = false;
    if limits.memory_bytes > 0 {
        b = b.memory(
            LinuxMemoryBuilder::default()
                .limit(limits.memory_bytes)
                .build()
                .ok()?,
        );
        any = true;
    }
    if limits.nano_cpus > 0 {
        let period: u64 = 100_000;
        let quota = limits.nano_cpus.saturating_mul(100_000) / 1_000_000_000;
        b = b.cpu(
            LinuxCpuBuilder::default()
                .period(period)
                .quota(quota.max(1000))
                .build()
                .ok()?,
        );
        any = true;
    }
    if limits.pids > 0 {
        b = b.pids(
            LinuxPidsBuilder::default()
                .limit(limits.pids)
                .build()
                .ok()?,
        );
        any = true;
    }
    if !any {
        return None;
    }
    b.build().ok()
}

/// An image's `HEALTHCHECK` (durations in nanoseconds) as the task's health check.
pub fn health_from_image(h: &skiff_image::Healthcheck) -> pb::HealthCheck {
    pb::HealthCheck {
        test: h.test.clone(),
        interval_ms: h.interval / 1_000_000,
        timeout_ms: h.timeout / 1_000_000,
        start_period_ms: h.start_period / 1_000_000,
        retries: h.retries,
    }
}

/// `/etc/hosts`: localhost, and the task's own addresses under its hostname.
fn hosts_file(hostname: &str, networks: &[pb::NetworkAttachment]) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for n in networks {
        for a in &n.addresses {
            let ip = a.split('/').next().unwrap_or(a);
            out.push_str(&format!("{ip}\t{hostname}\n"));
        }
    }
    if networks.is_empty() {
        out.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entrypoint: &[&str], cmd: &[&str], env: &[&str]) -> Image {
        let config = skiff_image::ImageConfig {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|s| s.to_string()).collect(),
            workdir: "/srv".into(),
            ..Default::default()
        };
        Image {
            reference: Reference::parse("busybox").expect("ref"),
            digest: skiff_image::Digest::of(b"x"),
            manifest_digest: skiff_image::Digest::of(b"y"),
            id: skiff_image::Digest::of(b"z"),
            config,
            layers: vec![],
            size: 0,
        }
    }

    fn opts(c: pb::ContainerSpec, img: &Image) -> SpecOptions {
        spec_options(
            "t1",
            &pb::ServiceSpec::default(),
            &c,
            img,
            None,
            "h".into(),
            vec![],
        )
    }

    #[test]
    fn command_and_entrypoint_follow_dockers_precedence() {
        let img = image(&["/entry"], &["default", "args"], &[]);
        assert_eq!(
            opts(pb::ContainerSpec::default(), &img).args,
            vec!["/entry", "default", "args"]
        );
        let c = pb::ContainerSpec {
            command: vec!["mine".into()],
            ..Default::default()
        };
        assert_eq!(opts(c, &img).args, vec!["/entry", "mine"]);
        let c = pb::ContainerSpec {
            entrypoint: vec!["/other".into()],
            ..Default::default()
        };
        assert_eq!(
            opts(c, &img).args,
            vec!["/other"],
            "a new entrypoint drops the image CMD"
        );
    }

    #[test]
    fn service_env_overrides_the_images_and_workdir_falls_back_to_it() {
        let img = image(&[], &["sh"], &["PATH=/bin", "MODE=image"]);
        let c = pb::ContainerSpec {
            env: vec!["MODE=service".into()],
            ..Default::default()
        };
        let o = opts(c, &img);
        assert!(o.env.contains(&"MODE=service".to_string()));
        assert!(!o.env.contains(&"MODE=image".to_string()));
        assert!(o.env.contains(&"PATH=/bin".to_string()));
        assert_eq!(o.cwd.as_deref(), Some("/srv"));
    }

    #[test]
    fn cpu_and_memory_limits_become_cgroup_settings() {
        let r = pb::ResourceRequirements {
            limits: Some(pb::Resources {
                nano_cpus: 500_000_000,
                memory_bytes: 32 << 20,
                pids: 64,
            }),
            reservations: None,
        };
        let res = resources(Some(&r)).expect("limits");
        let cpu = res.cpu().as_ref().expect("cpu");
        assert_eq!(cpu.quota(), Some(50_000));
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(
            res.memory().as_ref().and_then(|m| m.limit()),
            Some(32 << 20)
        );
        assert_eq!(res.pids().as_ref().map(|p| p.limit()), Some(64));
        assert!(resources(None).is_none());
    }

    #[test]
    fn image_health_checks_arrive_in_milliseconds() {
        let h = skiff_image::Healthcheck {
            test: vec!["CMD-SHELL".into(), "true".into()],
            interval: 5_000_000_000,
            timeout: 2_000_000_000,
            start_period: 0,
            retries: 4,
        };
        let p = health_from_image(&h);
        assert_eq!((p.interval_ms, p.timeout_ms, p.retries), (5_000, 2_000, 4));
        assert_eq!(p.test, h.test);
    }

    #[test]
    fn ulimits_become_rlimits_and_unknown_names_are_refused() {
        let r = rlimits(&[
            pb::Ulimit {
                name: "nofile".into(),
                soft: 1024,
                hard: 2048,
            },
            pb::Ulimit {
                name: "nproc".into(),
                soft: 64,
                hard: 0,
            },
        ])
        .expect("rlimits");
        assert_eq!(r[0].typ(), PosixRlimitType::RlimitNofile);
        assert_eq!((r[0].soft(), r[0].hard()), (1024, 2048));
        assert_eq!(
            (r[1].soft(), r[1].hard()),
            (64, 64),
            "hard defaults to soft"
        );
        let err = rlimits(&[pb::Ulimit {
            name: "bogus".into(),
            soft: 1,
            hard: 1,
        }])
        .expect_err("unknown");
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn hosts_name_the_task_by_its_overlay_address() {
        let nets = vec![pb::NetworkAttachment {
            addresses: vec!["10.213.0.5/24".into()],
            ..Default::default()
        }];
        let hosts = hosts_file("web1", &nets);
        assert!(hosts.contains("10.213.0.5\tweb1"), "{hosts}");
    }
}
