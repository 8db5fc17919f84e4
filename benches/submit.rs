//! `batchlens submit` of a folder of photos to a local service, end to end: 2,000 synthetic
//! 1080×1350 JPEGs (quality 85, about 150 KB each, 1 to 7 per post folder) uploaded by the
//! release CLI to the release service binary (SQLite, a temp data dir, openai-sim in this
//! process, downscaling on as shipped). Prints images/s from the CLI's start to its exit
//! (every image accepted, the job submitted), the peak RSS of both processes (the CLI's
//! from `wait4`, the service's VmHWM) and the CPU time each spent: on a machine shared with
//! other work the wall clock wanders, CPU ms per image much less. Then the baseline: a simple client in this process
//! posting base64 JSON chunks (under 56 MiB each) to a fresh service, timed the same way.
//!
//! `cargo bench --bench submit` (`BENCH_IMAGES=…` for a shorter run, `BENCH_BASELINE=0` to
//! skip the baseline). The photos are generated once and kept under
//! `target/bench-photos/`. Asserts nothing about time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use openai_sim::{SimConfig, SimServer};
use serde_json::{json, Value};

mod common;

const WIDTH: u32 = 1080;
const HEIGHT: u32 = 1350;
const QUALITY: u8 = 85;
/// Texture cells of this many pixels and sensor noise of ±NOISE, one of NOISE per image in
/// turn, like photos of plain and busy scenes: at quality 85, ±3 gives about 113 KB, ±8
/// about 427 KB, ±3 to ±6 153 KB on average, and these three near the 200 KB of a phone
/// photo (the run prints the mean).
const CELL: u32 = 8;
const NOISE: [u64; 3] = [5, 6, 7];
/// The baseline's request size: the CLI's default chunk.
const JSON_CHUNK_BYTES: usize = 56 * 1024 * 1024;
/// No run of this benchmark takes longer; a stuck one is killed.
const RUN_LIMIT: Duration = Duration::from_secs(900);

/// The sensor noise of the `i`th photo.
fn noise(i: usize) -> u64 {
    NOISE[i % NOISE.len()]
}

/// One photo of the set: `posts/p0012/look-3.jpg`.
fn relative_path(post: usize, look: usize) -> PathBuf {
    PathBuf::from(format!("posts/p{post:04}/look-{look}.jpg"))
}

/// The first `n` photos' relative paths, posts of 1 to 7 photos (4 on average).
fn layout(n: usize) -> Vec<PathBuf> {
    let mut paths = Vec::with_capacity(n);
    let mut post = 0;
    while paths.len() < n {
        let size = 1 + ((post * 2_654_435_761usize) >> 7) % 7;
        for look in 1..=size.min(n - paths.len()) {
            paths.push(relative_path(post, look));
        }
        post += 1;
    }
    paths
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Generates the photos missing from the cache, on every core.
fn ensure_photos(cache: &Path, paths: &[PathBuf]) {
    let missing: Vec<(usize, &PathBuf)> = paths
        .iter()
        .enumerate()
        .filter(|(_, p)| !cache.join(p).exists())
        .collect();
    if missing.is_empty() {
        return;
    }
    let start = Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for part in missing.chunks(missing.len().div_ceil(threads)) {
            scope.spawn(move || {
                for (i, rel) in part {
                    let path = cache.join(rel);
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    let bytes =
                        common::photo_jpeg(*i as u64, (WIDTH, HEIGHT), QUALITY, CELL, noise(*i));
                    // Whole files only: an interrupted run leaves no half photo behind.
                    let tmp = path.with_extension("tmp");
                    std::fs::write(&tmp, bytes).unwrap();
                    std::fs::rename(&tmp, &path).unwrap();
                }
            });
        }
    });
    println!(
        "generated {} photos in {:.1} s",
        missing.len(),
        start.elapsed().as_secs_f64()
    );
}

/// A folder holding exactly the first `n` photos (hard links into the cache).
fn run_folder(cache: &Path, paths: &[PathBuf]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(cache.parent().unwrap())
        .unwrap();
    for rel in paths {
        let to = dir.path().join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::hard_link(cache.join(rel), &to)
            .or_else(|_| std::fs::copy(cache.join(rel), &to).map(|_| ()))
            .unwrap();
    }
    dir
}

/// The release service binary on a port of its choosing, over SQLite in `data`.
struct Service {
    child: Child,
    base: String,
}

impl Service {
    fn start(sim: &SimServer, data: &Path) -> Service {
        let mut child = Command::new(env!("CARGO_BIN_EXE_batchlens"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "DATABASE_URL",
                format!("sqlite://{}", data.join("b.db").display()),
            )
            .env("OPENAI_BASE_URL", sim.base_url())
            .env("OPENAI_API_KEY", "sk-bench")
            .env("BATCHLENS__SERVER__PORT", "0")
            .env("BATCHLENS__DATA_DIR", data)
            .env("BATCHLENS__LOG__LEVEL", "warn,batchlens::startup=info")
            .env("BATCHLENS__LOG__FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the batchlens binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        testkit::on_listening_addr(stdout, move |addr| {
            let _ = tx.send(addr);
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the service logs its address within 60 s");
        Service {
            child,
            base: format!("http://{addr}"),
        }
    }

    async fn wait_ready(&self, http: &reqwest::Client) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Ok(r) = http.get(format!("{}/readyz", self.base)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the service is not ready after 60 s");
    }

    fn peak_rss_mib(&self) -> f64 {
        vm_hwm_mib(self.child.id())
    }

    /// User + system CPU time so far (/proc/<pid>/stat).
    fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // The fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        // utime and stime are fields 14 and 15, the 12th and 13th after the name.
        Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / hz)
    }

    fn stop(mut self) {
        // SIGTERM, as an operator stops it; SIGKILL if it lingers.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn vm_hwm_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// What a run measured.
struct Figures {
    images: usize,
    elapsed: Duration,
    client_mib: f64,
    service_mib: f64,
    client_cpu: Duration,
    service_cpu: Duration,
}

impl Figures {
    fn print(&self, label: &str, bytes: u64) {
        let secs = self.elapsed.as_secs_f64();
        println!("{label}");
        println!(
            "  {} images ({:.1} MB) in {secs:.2} s: {:.1} images/s, {:.1} MB/s",
            self.images,
            bytes as f64 / 1e6,
            self.images as f64 / secs,
            bytes as f64 / 1e6 / secs
        );
        println!(
            "  peak RSS: client {:.1} MiB, service {:.1} MiB",
            self.client_mib, self.service_mib
        );
        let per_image = |cpu: Duration| cpu.as_secs_f64() * 1000.0 / self.images as f64;
        let (client, service) = (per_image(self.client_cpu), per_image(self.service_cpu));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        println!(
            "  CPU per image: client {client:.2} ms, service {service:.2} ms \
             ({:.0} images/s if both had the {cores} cores to themselves)",
            cores as f64 * 1000.0 / (client + service)
        );
    }
}

/// Waits for `child` with a deadline; its exit status, peak RSS (MiB) and CPU time, from
/// wait4.
fn wait_with_rusage(child: &mut Child, limit: Duration) -> (i32, f64, Duration) {
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    loop {
        let mut status = 0;
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let got = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(got >= 0, "wait4: {}", std::io::Error::last_os_error());
        if got == pid {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                -1
            };
            // ru_maxrss is in KiB on Linux.
            return (code, usage.ru_maxrss as f64 / 1024.0, cpu_of(&usage));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the run took over {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn cpu_of(usage: &libc::rusage) -> Duration {
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// CPU time of this process so far.
fn own_cpu() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    cpu_of(&usage)
}

/// The job's progress counters.
async fn progress(http: &reqwest::Client, base: &str, id: &str) -> Value {
    let job: Value = http
        .get(format!("{base}/v1/jobs/{id}"))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    job["progress"].clone()
}

fn assert_all_accepted(progress: &Value, n: usize) {
    assert_eq!(progress["total"], json!(n), "{progress}");
    assert_eq!(progress["rejected"], json!(0), "{progress}");
}

async fn run_cli(sim: &SimServer, folder: &Path, n: usize) -> Figures {
    let data = tempfile::tempdir().unwrap();
    let service = Service::start(sim, data.path());
    let http = reqwest::Client::new();
    service.wait_ready(&http).await;

    let service_before = service.cpu();
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_batchlens"))
        .args(["submit", "--mode", "batch", "--name", "bench", "--url"])
        .arg(&service.base)
        .arg(folder)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("batchlens submit starts");
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let (code, client_mib, client_cpu) = wait_with_rusage(&mut child, RUN_LIMIT);
    let elapsed = start.elapsed();
    let service_mib = service.peak_rss_mib();
    let service_cpu = service.cpu().saturating_sub(service_before);
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert_eq!(code, 0, "batchlens submit failed:\n{err}");
    let id = out.lines().last().unwrap_or_default().trim().to_string();
    assert_all_accepted(&progress(&http, &service.base, &id).await, n);
    service.stop();
    Figures {
        images: n,
        elapsed,
        client_mib,
        service_mib,
        client_cpu,
        service_cpu,
    }
}

/// A hand-written client: base64 each file into a JSON item, POST chunks under the limit
/// to an open job, one after another, then submit.
async fn run_baseline(sim: &SimServer, folder: &Path, paths: &[PathBuf]) -> Figures {
    let data = tempfile::tempdir().unwrap();
    let service = Service::start(sim, data.path());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    service.wait_ready(&http).await;
    let base = service.base.clone();
    let post = |path: String, body: Vec<u8>| {
        let http = http.clone();
        async move {
            let resp = http
                .post(path)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let answer: Value = resp.json().await.unwrap();
            assert!(status.is_success(), "{status}: {answer}");
            answer
        }
    };

    common::reset_peak_rss();
    let (client_before, service_before) = (own_cpu(), service.cpu());
    let start = Instant::now();
    let open = json!({"open": true, "mode": "batch", "name": "bench"});
    let job = post(format!("{base}/v1/jobs"), open.to_string().into_bytes()).await;
    let id = job["id"].as_str().unwrap().to_string();
    let items_url = format!("{base}/v1/jobs/{id}/items");
    let mut body = Vec::with_capacity(JSON_CHUNK_BYTES);
    for rel in paths {
        let bytes = std::fs::read(folder.join(rel)).unwrap();
        let post_id = rel.parent().unwrap().file_name().unwrap().to_string_lossy();
        let stem = rel.file_stem().unwrap().to_string_lossy();
        let item = json!({
            "custom_id": format!("{post_id}:{stem}"),
            "post_id": post_id,
            "mime_type": "image/jpeg",
            "image_base64": STANDARD.encode(&bytes),
        })
        .to_string();
        if !body.is_empty() && body.len() + item.len() + 2 > JSON_CHUNK_BYTES {
            body.extend_from_slice(b"]}");
            post(items_url.clone(), std::mem::take(&mut body)).await;
        }
        body.extend_from_slice(if body.is_empty() {
            b"{\"items\":[".as_slice()
        } else {
            b",".as_slice()
        });
        body.extend_from_slice(item.as_bytes());
    }
    body.extend_from_slice(b"]}");
    post(items_url, body).await;
    post(format!("{base}/v1/jobs/{id}/submit"), Vec::new()).await;
    let elapsed = start.elapsed();
    let client_mib = common::peak_rss_mib();
    let service_mib = service.peak_rss_mib();
    let client_cpu = own_cpu().saturating_sub(client_before);
    let service_cpu = service.cpu().saturating_sub(service_before);
    assert_all_accepted(&progress(&http, &base, &id).await, paths.len());
    service.stop();
    Figures {
        images: paths.len(),
        elapsed,
        client_mib,
        service_mib,
        client_cpu,
        service_cpu,
    }
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(2_000);
    let baseline = std::env::var("BENCH_BASELINE").map_or(true, |v| v != "0");
    let root = target_dir().join("bench-photos");
    let noises = NOISE.map(|n| n.to_string()).join("-");
    let cache = root.join(format!("{WIDTH}x{HEIGHT}-q{QUALITY}-c{CELL}-n{noises}"));
    let paths = layout(n);
    ensure_photos(&cache, &paths);
    let folder = run_folder(&cache, &paths);
    let bytes: u64 = paths
        .iter()
        .map(|p| std::fs::metadata(cache.join(p)).unwrap().len())
        .sum();
    let posts = paths
        .iter()
        .map(|p| p.parent().unwrap())
        .collect::<std::collections::HashSet<_>>()
        .len();
    println!(
        "{n} JPEGs {WIDTH}x{HEIGHT} q{QUALITY} in {posts} post folders, {:.0} KB on average ({})",
        bytes as f64 / n as f64 / 1e3,
        cache.display()
    );

    // Batches stay in progress: the service has nothing to finish while it is measured.
    let sim = SimServer::spawn(SimConfig {
        in_progress_ms: 3600 * 1000,
        ..SimConfig::fast()
    })
    .await
    .unwrap();
    let cli = run_cli(&sim, folder.path(), n).await;
    cli.print(
        "batchlens submit (release CLI → release service, SQLite)",
        bytes,
    );
    if baseline {
        let base = run_baseline(&sim, folder.path(), &paths).await;
        base.print(
            "baseline: base64 JSON chunks of 56 MiB, one at a time (client in the bench process)",
            bytes,
        );
        println!(
            "batchlens submit is {:.2}x the baseline's images/s",
            base.elapsed.as_secs_f64() / cli.elapsed.as_secs_f64()
        );
    }
    println!("aim: at least 150 images/s, the client under 100 MB RSS");
}
