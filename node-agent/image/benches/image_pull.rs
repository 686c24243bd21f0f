//! `cargo bench --bench image_pull`: pull + unpack a ~100 MB, 4-layer image from a local
//! `docker-registry`, skiff vs `skopeo copy docker://… oci:…` + `umoci unpack`, side by
//! side, fresh store each run. Prints a table and one `RESULT image_pull …` line.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use skiff_image::testing::{Compression, ImageBuilder, LayerBuilder, Registry};
use skiff_image::{ImageStore, LayerState};

/// Runs per tool (median reported); `IMAGE_PULL_RUNS` overrides.
const RUNS: usize = 5;

/// Bytes that gzip can only squeeze a little, like binaries: xorshift noise with runs.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let x = self.next();
            if x.is_multiple_of(8) {
                // a short run of one byte value (compressible stretch)
                out.extend(std::iter::repeat_n((x >> 8) as u8, 24));
            } else {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out.truncate(len);
        out
    }
}

/// ~100 MB in four layers shaped like real ones: many small files, mid-size files, a
/// few large ones.
fn bench_image() -> (ImageBuilder, u64) {
    let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
    let mut total = 0u64;
    let shapes: [(&str, usize, usize); 4] = [
        ("usr/lib/small", 3000, 8 * 1024),
        ("usr/share/mid", 400, 64 * 1024),
        ("opt/app/big", 12, 2 * 1024 * 1024),
        ("srv/data", 2, 12 * 1024 * 1024),
    ];
    let mut image = ImageBuilder::new();
    for (dir, count, size) in shapes {
        let mut layer = LayerBuilder::new();
        for i in 0..count {
            // sizes spread around the mean so files are not all alike
            let len = size / 2 + noise.next() as usize % size;
            let data = noise.fill(len);
            total += len as u64;
            layer = layer.file(&format!("{dir}/{:02}/f{i}", i % 50), &data, 0o644);
        }
        image = image.layer(layer.tar(), Compression::Gzip);
    }
    (image, total)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn have(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async_main());
}

async fn async_main() {
    let work = tempfile::Builder::new()
        .prefix("skiff-bench-image-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let registry = Registry::start().await.expect("registry");
    let t = Instant::now();
    let (builder, total) = bench_image();
    let built = builder.build();
    let compressed: u64 = built.manifest.layers.iter().map(|l| l.size).sum();
    let r = registry.reference("bench/image:v1");
    built.push(&registry.client(), &r).await.expect("push");
    println!(
        "image: {} layers, {:.1} MB of files, {:.1} MB compressed (built and pushed in {:.1}s)",
        built.manifest.layers.len(),
        total as f64 / 1e6,
        compressed as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    let runs: usize = std::env::var("IMAGE_PULL_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RUNS);
    // IMAGE_PULL_PEER=0 skips the peer (profiling skiff alone)
    let peer =
        std::env::var("IMAGE_PULL_PEER").as_deref() != Ok("0") && have("skopeo") && have("umoci");
    let mut ours = Vec::new();
    let mut durable = Vec::new();
    let mut ours_cpu = Vec::new();
    let mut leftovers = Vec::new();
    let mut theirs_cpu = Vec::new();
    let mut theirs = Vec::new();
    // run 0 of each tool is a warm-up (registry page cache, ext4 state left by earlier
    // processes) and is printed but not counted
    for i in 0..=runs {
        let root = work.path().join(format!("skiff-{i}"));
        // each run starts with no dirty pages from the previous one to write back
        settle();
        let c0 = cpu().0;
        let t = Instant::now();
        let store = ImageStore::open(&root, registry.config())
            .await
            .expect("open");
        let start = Instant::now();
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let ev = events.clone();
        let image = store
            .pull(&r, move |p| {
                if matches!(p.state, LayerState::Done) || p.current == 0 {
                    ev.lock()
                        .expect("lock")
                        .push((start.elapsed(), p.layer, p.state));
                }
            })
            .await
            .expect("pull");
        let d = t.elapsed();
        ours_cpu.push(cpu().0 - c0);
        if std::env::var_os("IMAGE_PULL_VERBOSE").is_some() {
            for (at, layer, state) in events.lock().expect("lock").iter() {
                println!(
                    "    {:>7.1} ms layer {layer} {state:?}",
                    at.as_secs_f64() * 1e3
                );
            }
        }
        assert_eq!(image.layers.len(), 4);
        ours.push(d);
        // the index reaches disk in the background (one syncfs); neither peer tool
        // fsyncs its unpacked tree, so that flush is shown but not compared
        store.sync().await.expect("sync");
        durable.push(t.elapsed());
        drop(store);
        // Every run gets a fresh, empty store directory. Old ones are deleted only at the
        // end: deleting thousands of files right before a run makes ext4's inode
        // allocator skip "recently deleted" inodes (ext4_create → recently_deleted was
        // 65% of a profile), which penalises whichever tool runs next.
        leftovers.push(root);

        if peer {
            let layout = work.path().join(format!("oci-{i}"));
            let bundle = work.path().join(format!("bundle-{i}"));
            settle();
            let c0 = cpu().1;
            let t = Instant::now();
            run(Command::new("skopeo")
                .args(["copy", "--quiet", "--src-tls-verify=false"])
                .arg(format!("docker://{r}"))
                .arg(format!("oci:{}:v1", layout.display())));
            run(Command::new("umoci")
                .arg("unpack")
                .arg("--image")
                .arg(format!("{}:v1", layout.display()))
                .arg(&bundle));
            theirs.push(t.elapsed());
            theirs_cpu.push(cpu().1 - c0);
            leftovers.push(layout);
            leftovers.push(bundle);
        }
        println!(
            "{} {i}: skiff {:>7.1} ms (cpu {:>5.2} s, on disk after {:>7.1} ms)   skopeo+umoci {}",
            if i == 0 { "warm-up" } else { "run" },
            ours[i].as_secs_f64() * 1e3,
            ours_cpu[i],
            durable[i].as_secs_f64() * 1e3,
            theirs.get(i).map_or("n/a".to_owned(), |d| format!(
                "{:>7.1} ms (cpu {:>5.2} s)",
                d.as_secs_f64() * 1e3,
                theirs_cpu[i]
            ))
        );
    }
    for p in &leftovers {
        remove(p);
    }
    for v in [&mut ours, &mut durable] {
        v.remove(0);
    }
    if peer {
        theirs.remove(0);
    }
    let o = median(ours).as_secs_f64() * 1e3;
    println!();
    println!("| tool                       | median of {runs} (ms) |");
    println!("|----------------------------|-----------------|");
    let od = median(durable).as_secs_f64() * 1e3;
    println!("| skiff pull+unpack          | {o:>15.1} |");
    println!("| skiff, until synced        | {od:>15.1} |");
    // ours = until the index and everything it names is on disk (conservative: the
    // peers never fsync their unpacked trees)
    if peer {
        let p = median(theirs).as_secs_f64() * 1e3;
        println!("| skopeo copy + umoci unpack | {p:>15.1} |");
        println!(
            "RESULT image_pull ours={od:.0}ms peer={p:.0}ms ratio={:.2}",
            p / od
        );
    } else {
        println!("RESULT image_pull ours={od:.0}ms peer=none");
    }
}

/// (own, children's) CPU seconds so far, from /proc/self/stat (utime+stime, cutime+cstime).
fn cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // fields after "(comm)": state is index 0, utime is field 14 overall → index 11 here
    let tick = 100.0;
    if f.len() < 15 {
        return (0.0, 0.0);
    }
    ((f[11] + f[12]) / tick, (f[13] + f[14]) / tick)
}

fn settle() {
    run(&mut Command::new("sync"));
}

fn remove(p: &Path) {
    if p.exists() {
        std::fs::remove_dir_all(p).expect("clean");
    }
}
