//! The multi-node suite: a real cluster (3 masters, agents) on a lab, driven with
//! `skiffctl` as a user would. One lab per test, one test at a time (2 cores), each torn
//! down by its guard whatever happens.

use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use skiff_lab::{Cluster, Role};

/// Labs are heavy: one at a time in this binary.
static ONE_LAB: Mutex<()> = Mutex::new(());

fn cluster(masters: usize, agents: usize) -> Cluster {
    // Each lab lives in <root>/<lab id> and removes that directory on teardown.
    let root = std::path::Path::new("/var/tmp/skiff-tests");
    Cluster::start(root, masters, agents).unwrap_or_else(|e| panic!("cluster up: {e}"))
}

/// Writes `yaml` into the lab directory and deploys it; returns what skiffctl printed.
fn deploy(c: &Cluster, name: &str, yaml: &str) -> String {
    deploy_with(c, name, yaml, &["--timeout", "120"])
}

/// [`deploy`] with other `skiffctl deploy` flags (`--detach`).
fn deploy_with(c: &Cluster, name: &str, yaml: &str, flags: &[&str]) -> String {
    let file = c.lab.state().dir.join(name);
    std::fs::write(&file, yaml).expect("write compose file");
    let file = file.display().to_string();
    let mut args = vec!["deploy", "-f", file.as_str()];
    args.extend_from_slice(flags);
    c.ctl(&args)
        .ok(&args)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.lab.dump_logs(40)))
}

/// Tasks of `service` (`<project>_<name>`) that should run, as `skiffctl ps` shows them.
fn tasks(c: &Cluster, service: &str) -> Result<Vec<Value>, String> {
    let rows = c.ctl_json(&["ps", service])?;
    Ok(rows
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t["desired"] == "running")
        .collect())
}

/// Waits until exactly `n` tasks of `service` should run and do, none of them on node
/// `avoid` (a hostname), and returns them.
fn running_off(
    c: &Cluster,
    service: &str,
    n: usize,
    avoid: Option<&str>,
    within: Duration,
) -> Vec<Value> {
    c.wait("cluster", &format!("{n} running {service}"), within, || {
        let wanted = tasks(c, service)?;
        let up = wanted
            .iter()
            .filter(|t| {
                t["state"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("running"))
            })
            .count();
        let misplaced = wanted
            .iter()
            .filter(|t| avoid.is_some_and(|a| t["node"] == a))
            .count();
        if up == n && wanted.len() == n && misplaced == 0 {
            Ok(wanted)
        } else {
            Err(format!(
                "{up} of {} running, {misplaced} on {avoid:?}: {wanted:?}",
                wanted.len()
            ))
        }
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until exactly `n` tasks of `service` should run and do.
fn running(c: &Cluster, service: &str, n: usize, within: Duration) -> Vec<Value> {
    running_off(c, service, n, None, within)
}

/// Runs `args` inside the container whose main process is `pid` (all its namespaces).
fn in_container(pid: i64, args: &[&str]) -> Result<String, String> {
    // The host's `timeout`: the image's busybox has no such applet.
    let out = std::process::Command::new("timeout")
        .args(["5", "nsenter", "-t", &pid.to_string()])
        .args(["-m", "-u", "-i", "-n", "-p", "-r", "-w"])
        .args(args)
        .output()
        .map_err(|e| format!("nsenter: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{args:?} in pid {pid}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Fetches `url` from inside machine `machine`'s network namespace.
fn fetch_on(c: &Cluster, machine: &str, url: &str) -> Result<String, String> {
    let m = c.lab.machine(machine).map_err(|e| e.to_string())?;
    // curl, not the host's static busybox wget, which crashes in glibc's NSS here.
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", m.net.netns))
        .args(["curl", "-sS", "--max-time", "2", url])
        .output()
        .map_err(|e| format!("wget: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "curl {url} on {machine}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn web_app(image: &str, replicas: usize) -> String {
    format!(
        r#"name: demo
services:
  web:
    image: {image}
    command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"]
    ports: ["8080:80"]
    networks: [front]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/"]
      interval: 1s
      timeout: 1s
      retries: 2
    deploy:
      replicas: {replicas}
      placement:
        max_replicas_per_node: 1
  client:
    image: {image}
    command: ["sleep", "100000"]
    networks: [front]
    depends_on:
      web:
        condition: service_healthy
networks:
  front: {{}}
"#
    )
}

#[test]
fn an_app_answers_by_service_name_across_machines_and_on_every_published_port() {
    let _one = ONE_LAB.lock().unwrap_or_else(|p| p.into_inner());
    let c = cluster(3, 3);
    // Every master runs with transparent huge pages off (its allocator would otherwise
    // zero a 2 MiB page at each first touch of fresh heap, on the deploy's path).
    for m in c.lab.machines(Role::Master) {
        for d in &m.daemons {
            let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid))
                .expect("master's /proc status");
            assert!(
                status
                    .lines()
                    .any(|l| l.split_whitespace().eq(["THP_enabled:", "0"])),
                "{}: THP still on ({:?})",
                d.pid,
                status.lines().find(|l| l.starts_with("THP"))
            );
        }
    }
    let image = c.push_busybox("busybox:latest").expect("push busybox");
    let app = web_app(&image, 2);
    deploy(&c, "app.yaml", &app);
    let web = running(&c, "demo_web", 2, Duration::from_secs(60));
    let client = running(&c, "demo_client", 1, Duration::from_secs(60));

    // The same file again changes nothing.
    let again = deploy(&c, "app.yaml", &app);
    assert!(again.contains("up to date"), "{again}");

    // The client reaches a web replica by name, whichever machine it runs on.
    let pid = client[0]["pid"].as_i64().expect("client pid");
    let page = c
        .wait("client", "web by name", Duration::from_secs(20), || {
            // Not `wget -T`: Debian's busybox 1.35 crashes with it once connected.
            in_container(pid, &["wget", "-q", "-O", "-", "http://web/"])
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!page.trim().is_empty(), "empty page");

    // The published port answers on every agent, also one that runs no web replica.
    let web_nodes: Vec<&str> = web.iter().filter_map(|t| t["node"].as_str()).collect();
    for machine in ["a1", "a2", "a3"] {
        let addr = c.lab.machine(machine).expect("machine").net.addr;
        let page = c
            .wait(machine, "published port", Duration::from_secs(20), || {
                fetch_on(&c, "m1", &format!("http://{addr}:8080/"))
            })
            .unwrap_or_else(|e| panic!("{e} (web runs on {web_nodes:?})"));
        assert!(!page.trim().is_empty());
    }

    // Removing the project removes its tasks.
    let rm = ["rm", "demo"];
    c.ctl(&rm).ok(&rm).expect("rm demo");
    c.wait(
        "cluster",
        "no tasks or containers of demo",
        Duration::from_secs(60),
        || {
            let all = c.ctl_json(&["ps"])?;
            let left = all
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["name"].as_str().is_some_and(|n| n.starts_with("demo_")))
                .count();
            let containers: usize = ["a1", "a2", "a3"]
                .iter()
                .map(|m| containers_on(&c, m))
                .sum();
            if left == 0 && containers == 0 {
                Ok(())
            } else {
                Err(format!("{left} tasks and {containers} containers left"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn losing_the_leader_an_agent_or_a_link_keeps_the_desired_replicas() {
    let _one = ONE_LAB.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = cluster(3, 3);
    let image = c.push_busybox("busybox:latest").expect("push busybox");
    let app = format!(
        "name: keep\nservices:\n  sleeper:\n    image: {image}\n    command: [\"sleep\", \"100000\"]\n    deploy:\n      replicas: 3\n"
    );
    deploy(&c, "keep.yaml", &app);
    running(&c, "keep_sleeper", 3, Duration::from_secs(60));

    // The leader dies: the others elect one and accept writes.
    let masters = c.ctl_json(&["master", "ls"]).expect("master ls");
    let leader_addr = masters
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["leader"].as_bool() == Some(true) || m["role"] == "leader")
        .and_then(|m| m["addr"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no leader in {masters}"));
    let leader = ["m1", "m2", "m3"]
        .into_iter()
        .find(|m| leader_addr.starts_with(&c.lab.machine(m).expect("m").net.addr.to_string()))
        .expect("leader machine");
    c.lab.kill_machine(leader).expect("kill leader");
    let scale = ["scale", "keep_sleeper=4"];
    c.wait(
        "cluster",
        "a write after the leader died",
        Duration::from_secs(20),
        || c.ctl(&scale).ok(&scale),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let before = running(&c, "keep_sleeper", 4, Duration::from_secs(60));

    // An agent dies (SIGKILL): its tasks run elsewhere within heartbeat timeout + 5 s.
    let victim = before[0]["node"].as_str().expect("node").to_owned();
    let machine = agent_named(&c, &victim);
    let killed = c.lab.kill_machine(&machine).expect("kill agent");
    // Down after 3 missed 5 s heartbeats (+2.5 s margin), then replaced: within +5 s.
    running_off(
        &c,
        "keep_sleeper",
        4,
        Some(&victim),
        Duration::from_secs(17 + 3 + 5),
    );
    // It comes back: what it ran before is not running twice.
    c.lab
        .restart_machine(&machine, &killed)
        .expect("restart agent");
    c.wait_node_ready(&machine, Duration::from_secs(30))
        .expect("agent back");
    running(&c, "keep_sleeper", 4, Duration::from_secs(30));

    // A link is cut and healed: exactly the desired replicas afterwards.
    let cut = running(&c, "keep_sleeper", 4, Duration::from_secs(5))[0]["node"]
        .as_str()
        .expect("node")
        .to_owned();
    let cut_machine = agent_named(&c, &cut);
    c.lab.cut(&cut_machine).expect("cut");
    c.wait(
        "cluster",
        "tasks moved off the cut machine",
        Duration::from_secs(30),
        || {
            let t = tasks(&c, "keep_sleeper")?;
            if t.iter().any(|t| t["node"] == cut.as_str()) {
                Err(format!("still on {cut}: {t:?}"))
            } else {
                Ok(())
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    c.lab.heal(&cut_machine).expect("heal");
    c.wait_node_ready(&cut_machine, Duration::from_secs(30))
        .expect("healed agent ready");
    running(&c, "keep_sleeper", 4, Duration::from_secs(30));
    // Stale containers stop too (those ignoring SIGTERM after the 10 s grace).
    c.wait(
        "agents",
        "4 containers in all",
        Duration::from_secs(30),
        || {
            let total: usize = ["a1", "a2", "a3"]
                .iter()
                .map(|m| containers_on(&c, m))
                .sum();
            if total == 4 {
                Ok(())
            } else {
                Err(format!("{total} containers running across the agents"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn an_update_that_fails_its_health_check_rolls_back_and_an_agent_restart_keeps_containers_and_traffic()
 {
    let _one = ONE_LAB.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = cluster(1, 2);
    let image = c.push_busybox("busybox:latest").expect("push busybox");
    let app = |port: u16| {
        format!(
            r#"name: roll
services:
  web:
    image: {image}
    command: ["httpd", "-f", "-p", "{port}", "-h", "/"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:80/etc/passwd"]
      interval: 1s
      timeout: 1s
      retries: 2
      start_period: 1s
    deploy:
      replicas: 2
      placement:
        max_replicas_per_node: 1
      update_config:
        parallelism: 1
        monitor: 5s
        failure_action: rollback
  client:
    image: {image}
    command: ["sleep", "100000"]
    deploy:
      replicas: 2
      placement:
        max_replicas_per_node: 1
"#
        )
    };
    deploy(&c, "roll.yaml", &app(80));
    let first = running(&c, "roll_web", 2, Duration::from_secs(60));

    // Listening on the wrong port fails the health check: the update rolls back.
    let file = c.lab.state().dir.join("roll.yaml");
    std::fs::write(&file, app(81)).expect("write");
    let file = file.display().to_string();
    let out = c.ctl(&["deploy", "-f", &file, "--timeout", "90"]);
    assert_ne!(out.code, 0, "a rolled-back deploy is a failure: {out:?}");
    c.wait(
        "cluster",
        "the old spec back",
        Duration::from_secs(60),
        || {
            let svc = c.ctl_json(&["inspect", "roll_web"])?;
            if svc.to_string().contains("\"80\"") || svc.to_string().contains("-p\",\"80") {
                Ok(())
            } else {
                Err(format!("spec is {svc}"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    running(&c, "roll_web", 2, Duration::from_secs(60));

    // A client on each agent reaches web by name (the VIP spreads over both replicas).
    let client_tasks = running(&c, "roll_client", 2, Duration::from_secs(60));
    let clients: Vec<i64> = client_tasks
        .iter()
        .filter_map(|t| t["pid"].as_i64())
        .collect();
    let client_on_a1 = client_tasks
        .iter()
        .find(|t| t["node"].as_str().map(|n| agent_named(&c, n)) == Some("a1".into()))
        .and_then(|t| t["pid"].as_i64())
        .expect("a client on a1");
    let lookup = in_container(client_on_a1, &["nslookup", "web"]).expect("nslookup web");
    let vip = answers(&lookup)
        .first()
        .cloned()
        .expect("web has an address");
    let by_vip = format!("http://{vip}/etc/passwd");
    let fetch = |pid: i64, url: &str| in_container(pid, &["wget", "-q", "-O", "/dev/null", url]);
    // The rolled-back replicas settle: ten answers in a row for each client.
    for &pid in &clients {
        c.wait(
            "roll_client",
            "web answers ten times in a row",
            Duration::from_secs(30),
            || (0..10).try_for_each(|_| fetch(pid, "http://web/etc/passwd").map(drop)),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    // The agent stops and starts again: its containers keep running, same processes.
    let on_a1: Vec<i64> = tasks(&c, "roll_web")
        .expect("tasks")
        .iter()
        .filter(|t| t["node"].as_str().map(|n| agent_named(&c, n)) == Some("a1".into()))
        .filter_map(|t| t["pid"].as_i64())
        .collect();
    let stopped = c
        .lab
        .stop_machine("a1", Duration::from_secs(10))
        .expect("stop a1");
    for pid in &on_a1 {
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "container {pid} died with its agent"
        );
    }
    // With no agent on a1, a lookup there waits in the DNS socket the keeper holds...
    let waiting = std::thread::spawn(move || in_container(client_on_a1, &["nslookup", "web"]));
    // ...while traffic to the service keeps flowing on kernel state alone.
    for round in 0..5 {
        for &pid in &clients {
            fetch(pid, &by_vip)
                .unwrap_or_else(|e| panic!("round {round} with a1's agent stopped: {e}"));
        }
    }
    c.lab.restart_machine("a1", &stopped).expect("start a1");
    // ...and the new agent, taking the socket back, answers it.
    let answered = waiting.join().expect("lookup thread");
    let answered =
        answered.unwrap_or_else(|e| panic!("lookup made while a1's agent was down: {e}"));
    assert_eq!(answers(&answered), vec![vip.clone()], "{answered}");
    c.wait_node_ready("a1", Duration::from_secs(30))
        .expect("a1 ready");
    let after = running(&c, "roll_web", 2, Duration::from_secs(30));
    let pids_after: Vec<i64> = after.iter().filter_map(|t| t["pid"].as_i64()).collect();
    for pid in &on_a1 {
        assert!(pids_after.contains(pid), "{pid} not adopted: {after:?}");
    }
    // And by name, with the agent back: every fetch answered. (The failed update just
    // before left an ended task whose address the rollback's task may reuse: it must
    // not answer in the new one's place.)
    for round in 0..20 {
        for &pid in &clients {
            fetch(pid, "http://web/etc/passwd")
                .unwrap_or_else(|e| panic!("round {round} after a1's agent came back: {e}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(first);
}

#[test]
fn logs_follow_a_restarted_replica_exec_reaches_another_machine_and_teardown_leaves_nothing() {
    let _one = ONE_LAB.lock().unwrap_or_else(|p| p.into_inner());
    let before = host_state();
    let c = cluster(1, 2);
    let image = c.push_busybox("busybox:latest").expect("push busybox");
    // Each container says who it is, then fails after 3 s: restarted as a new task.
    let app = format!(
        r#"name: tick
services:
  ticker:
    image: {image}
    command: ["sh", "-c", "echo hello from $$(hostname); sleep 3; exit 1"]
    deploy:
      restart_policy:
        condition: any
        delay: 1s
  shell:
    image: {image}
    command: ["sleep", "100000"]
"#
    );
    let file = c.lab.state().dir.join("tick.yaml");
    std::fs::write(&file, app).expect("write");
    let file = file.display().to_string();
    let deploy_args = ["deploy", "-f", file.as_str(), "--detach"];
    c.ctl(&deploy_args).ok(&deploy_args).expect("deploy");
    running(&c, "tick_shell", 1, Duration::from_secs(60));

    // `logs -f` keeps going across restarts: lines from at least two containers.
    let mut follow = c
        .ctl_command(&["logs", "-f", "tick_ticker"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("skiffctl logs -f");
    let stdout = follow.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut speakers = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while speakers.len() < 2 && std::time::Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500))
            && let Some((_, who)) = line.split_once("hello from ")
        {
            assert!(line.starts_with("tick_ticker.1"), "{line}");
            speakers.insert(who.trim().to_owned());
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        speakers.len() >= 2,
        "logs -f saw only {speakers:?}\n{}",
        c.lab.dump_logs(30)
    );

    // exec with a terminal and input, on whichever machine the task runs.
    let mut exec = c
        .ctl_command(&["exec", "-it", "tick_shell", "sh"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("skiffctl exec");
    {
        use std::io::Write;
        let mut stdin = exec.stdin.take().expect("stdin");
        stdin
            .write_all(b"echo in-$(hostname)-$((6*7)); exit 7\n")
            .expect("write");
    }
    let out = exec.wait_with_output().expect("exec output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shell = tasks(&c, "tick_shell").expect("tasks");
    let hostname = shell[0]["id"].as_str().expect("id");
    assert!(text.contains(&format!("in-{hostname}-42")), "{text}");

    drop(c);
    let after = host_state();
    assert_eq!(before, after, "the lab left something behind");
}

#[test]
fn projects_are_isolated_and_service_dns_follows_the_replicas() {
    let _one = ONE_LAB.lock().unwrap_or_else(|p| p.into_inner());
    let c = cluster(1, 2);
    let image = c.push_busybox("busybox:latest").expect("push busybox");
    let shop = |replicas: usize| {
        format!(
            r#"name: shop
services:
  web:
    image: {image}
    command: ["httpd", "-f", "-p", "80", "-h", "/etc"]
    deploy:
      replicas: {replicas}
      placement:
        max_replicas_per_node: 1
  client:
    image: {image}
    command: ["sleep", "100000"]
"#
        )
    };
    deploy(&c, "shop.yaml", &shop(1));
    deploy(
        &c,
        "other.yaml",
        &format!(
            "name: other\nservices:\n  intruder:\n    image: {image}\n    command: [\"sleep\", \"100000\"]\n"
        ),
    );
    running(&c, "shop_web", 1, Duration::from_secs(60));
    let client = running(&c, "shop_client", 1, Duration::from_secs(60))[0]["pid"]
        .as_i64()
        .expect("client pid");
    let intruder = running(&c, "other_intruder", 1, Duration::from_secs(60))[0]["pid"]
        .as_i64()
        .expect("intruder pid");

    // tasks.web lists the replicas: one, then two after scaling.
    let backends = |n: usize| {
        c.wait(
            "shop_client",
            &format!("{n} backends of web"),
            Duration::from_secs(30),
            || {
                let out = in_container(client, &["nslookup", "tasks.web"])?;
                let ips = answers(&out);
                if ips.len() == n {
                    Ok(ips)
                } else {
                    Err(format!("tasks.web is {ips:?}"))
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let one = backends(1);
    deploy(&c, "shop.yaml", &shop(2));
    let two = backends(2);
    assert!(two.contains(&one[0]), "{one:?} ⊄ {two:?}");
    in_container(
        client,
        &["wget", "-q", "-O", "/dev/null", "http://web/passwd"],
    )
    .expect("the client reaches web");

    // Another project's container knows no `web` and cannot reach its replicas.
    let lookup = in_container(intruder, &["nslookup", "web"]);
    assert!(
        lookup
            .as_ref()
            .map(|o| answers(o).is_empty())
            .unwrap_or(true),
        "other project resolved web: {lookup:?}"
    );
    for ip in &two {
        let url = format!("http://{ip}/passwd");
        assert!(
            in_container(intruder, &["wget", "-q", "-O", "/dev/null", &url]).is_err(),
            "other project reached {ip}"
        );
    }

    // Removing the service removes its name.
    let rm = ["rm", "shop", "--service", "web"];
    c.ctl(&rm).ok(&rm).expect("rm web");
    c.wait(
        "shop_client",
        "web gone from DNS",
        Duration::from_secs(30),
        || match in_container(client, &["nslookup", "web"]) {
            Ok(out) if !answers(&out).is_empty() => Err(format!("still {out}")),
            _ => Ok(()),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));

    images_on_the_nodes(&c, &image);
}

/// `skiffctl image`: what each node holds and which task uses it, a pull onto every
/// node, a removal refused where a task uses the image and done where none does.
fn images_on_the_nodes(c: &Cluster, busybox: &str) {
    let images = |args: &[&str]| -> Vec<Value> {
        let mut full = vec!["image"];
        full.extend_from_slice(args);
        let out = c.ctl_json(&full).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out["errors"], serde_json::json!([]), "{out}");
        out["images"].as_array().cloned().unwrap_or_default()
    };
    let with = |rows: &[Value], reference: &str| -> Vec<Value> {
        rows.iter()
            .filter(|r| r["reference"] == reference)
            .cloned()
            .collect()
    };
    // shop_client and other_intruder run somewhere; each such node lists busybox as used.
    let listed = images(&["ls"]);
    let used: Vec<String> = with(&listed, busybox)
        .iter()
        .flat_map(|r| r["used_by"].as_array().cloned().unwrap_or_default())
        .filter_map(|u| u.as_str().map(str::to_owned))
        .collect();
    assert!(
        used.iter().any(|u| u.starts_with("shop_client."))
            && used.iter().any(|u| u.starts_with("other_intruder.")),
        "{listed:?}"
    );

    let tools = c.push_busybox("tools:2").expect("push tools");
    let pulled = images(&["pull", &tools]);
    assert_eq!(with(&pulled, &tools).len(), 2, "one per agent: {pulled:?}");
    let a1 = pulled[0]["node"].as_str().expect("node").to_owned();
    let on_a1 = images(&["ls", "--node", &a1]);
    assert!(on_a1.iter().all(|r| r["node"] == a1.as_str()), "{on_a1:?}");
    assert_eq!(with(&on_a1, &tools)[0]["used_by"], serde_json::json!([]));

    let rm = ["image", "rm", busybox];
    let refused = c.ctl(&rm);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("used by task"), "{refused:?}");
    let removed = images(&["rm", &tools]);
    assert_eq!(removed.len(), 2, "{removed:?}");
    // tools:2 is busybox under another name: its layers stay for busybox.
    assert!(
        removed.iter().all(|r| r["freed_bytes"].is_u64()),
        "{removed:?}"
    );
    let left = images(&["ls"]);
    assert!(with(&left, &tools).is_empty(), "{left:?}");
    assert!(!with(&left, busybox).is_empty(), "{left:?}");

    let nothing = format!("{}/nothing:1", c.registry);
    let pull = ["image", "pull", nothing.as_str()];
    let failed = c.ctl(&pull);
    assert_eq!(failed.code, 1, "{failed:?}");
    assert!(failed.stderr.contains("nothing"), "{failed:?}");
}

/// The addresses in busybox `nslookup` output (not the server's).
fn answers(out: &str) -> Vec<String> {
    out.split("Name:")
        .skip(1)
        .flat_map(|block| {
            block
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Address:"))
                .map(|a| a.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What a lab may touch on the host: network namespaces, links, mounts and skiff's
/// cgroups, as sorted lists.
fn host_state() -> Vec<Vec<String>> {
    let lines = |program: &str, args: &[&str], field: usize| -> Vec<String> {
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut v: Vec<String> = out
            .lines()
            .filter_map(|l| l.split_whitespace().nth(field))
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    };
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(str::to_owned)
        .collect();
    mounts.sort();
    let mut cgroups = Vec::new();
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            if let Ok(entries) = std::fs::read_dir(h.path()) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with("skiff") {
                        cgroups.push(format!("{}/{name}", h.file_name().to_string_lossy()));
                    }
                }
            }
        }
    }
    cgroups.sort();
    vec![
        lines("ip", &["netns", "list"], 0),
        lines("ip", &["-o", "link", "show"], 1),
        mounts,
        cgroups,
    ]
}

/// The lab machine whose agent registered with `hostname`.
fn agent_named(c: &Cluster, hostname: &str) -> String {
    ["a1", "a2", "a3", "a4", "a5"]
        .into_iter()
        .find(|m| {
            c.node(m)
                .ok()
                .is_some_and(|n| n["hostname"].as_str() == Some(hostname))
        })
        .unwrap_or_else(|| panic!("no agent machine named {hostname}"))
        .to_owned()
}

/// How many skiff containers run on agent machine `name` (its cgroup parent's children).
fn containers_on(c: &Cluster, name: &str) -> usize {
    let dir = format!(
        "/sys/fs/cgroup/pids/{}/{name}-containers",
        c.lab.state().cgroup
    );
    std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().join("cgroup.procs").is_file())
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("cgroup.procs"))
                        .is_ok_and(|p| !p.trim().is_empty())
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn drain_empties_a_node_on_failure_gives_up_and_an_impossible_request_waits_with_its_reason() {
    let _one = ONE_LAB.lock().unwrap_or_else(|p| p.into_inner());
    let c = cluster(1, 2);
    let image = c.push_busybox("busybox:latest").expect("push busybox");
    let yaml = format!(
        r#"name: rules
services:
  sleeper:
    image: {image}
    command: ["sleep", "100000"]
    deploy:
      replicas: 4
  crasher:
    image: {image}
    command: ["sh", "-c", "exit 3"]
    deploy:
      restart_policy:
        condition: on-failure
        delay: 1s
        max_attempts: 2
  huge:
    image: {image}
    command: ["sleep", "100000"]
    deploy:
      resources:
        reservations:
          memory: 4096G
"#
    );
    // Detached: `huge` never converges.
    deploy_with(&c, "rules.yaml", &yaml, &["--detach"]);

    // Four sleepers on two agents.
    let sleepers = running(&c, "rules_sleeper", 4, Duration::from_secs(60));
    let on = |tasks: &[Value], node: &str| tasks.iter().filter(|t| t["node"] == node).count();
    let a2 = c.node("a2").expect("a2")["hostname"]
        .as_str()
        .expect("hostname")
        .to_owned();
    assert!(on(&sleepers, &a2) > 0, "{sleepers:?}");

    // The crasher runs once and is restarted twice, then stays down.
    let all = |service: &str| -> Result<Vec<Value>, String> {
        Ok(c.ctl_json(&["ps", service, "-a"])?
            .as_array()
            .cloned()
            .unwrap_or_default())
    };
    c.wait(
        "cluster",
        "three failed crasher tasks, none wanted",
        Duration::from_secs(60),
        || {
            let ts = all("rules_crasher")?;
            let failed = ts
                .iter()
                .filter(|t| t["state"].as_str().is_some_and(|s| s.starts_with("failed")))
                .count();
            let wanted = ts.iter().filter(|t| t["desired"] == "running").count();
            if failed == 3 && wanted == 0 {
                Ok(())
            } else {
                Err(format!("{ts:?}"))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_secs(3));
    let later = all("rules_crasher").expect("ps");
    assert_eq!(later.len(), 3, "no fourth attempt: {later:?}");

    // No node has 4 TiB: the task waits, saying why.
    let huge = c
        .wait(
            "cluster",
            "huge pending with its reason",
            Duration::from_secs(30),
            || {
                let ts = tasks(&c, "rules_huge")?;
                match ts.as_slice() {
                    [t] if t["state"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("pending")) =>
                    {
                        Ok(t.clone())
                    }
                    _ => Err(format!("{ts:?}")),
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let reason = huge["error"].as_str().unwrap_or_default();
    assert!(reason.contains("insufficient memory"), "{huge}");

    // Draining a2 moves its sleepers to a1; a2's agent stops its containers.
    let drain = ["node", "update", "a2", "--availability", "drain"];
    c.ctl(&drain).ok(&drain).expect("drain");
    let moved = running(&c, "rules_sleeper", 4, Duration::from_secs(60));
    assert_eq!(on(&moved, &a2), 0, "{moved:?}");
    c.wait(
        "a2",
        "no container left",
        Duration::from_secs(30),
        || match containers_on(&c, "a2") {
            0 => Ok(()),
            n => Err(format!("{n} containers")),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // Scaling down stops the highest slots; a1 is left with exactly two sleepers.
    let scale = ["scale", "rules_sleeper=2"];
    c.ctl(&scale).ok(&scale).expect("scale down");
    let left = running(&c, "rules_sleeper", 2, Duration::from_secs(60));
    let mut slots: Vec<String> = left
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect();
    slots.sort();
    assert_eq!(slots, ["rules_sleeper.1", "rules_sleeper.2"], "{left:?}");
}
