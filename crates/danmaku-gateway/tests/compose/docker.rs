//! The Docker side of the compose test: a Docker engine (installed from
//! Debian's packages and started when none answers), stand-in images for the
//! official ones this machine cannot pull, and a compose project that is
//! always taken down, leaving nothing behind.
//!
//! Stand-in images get names of their own under `danmaku-test/`, with a
//! hash of what they are built from in the tag, so a developer's real
//! Docker cache is never touched and a changed recipe builds afresh. They
//! are kept between runs: a warm run builds nothing but the gateway's
//! changed layers.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use danmaku_testkit::{ensure_debian_package, runs};

/// The Debian release every stand-in and the runtime image is built on, the
/// same as the official images' default (`debian:bookworm-slim`).
const SUITE: &str = "bookworm";
/// Where debootstrap fetches Debian from.
const MIRROR: &str = "http://deb.debian.org/debian";
/// The apt sources of the base image: the release with its updates and
/// security fixes, as the official Debian images have.
const SOURCES: &str = "deb http://deb.debian.org/debian bookworm main\n\
deb http://deb.debian.org/debian bookworm-updates main\n\
deb http://deb.debian.org/debian-security bookworm-security main\n";

/// The repository root (the compose file's directory).
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Scratch space for build contexts and the Debian root, under `target/`.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("compose")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `program args`, returning its output; panics if it cannot start.
pub(crate) fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

/// Runs `program args` and returns its stdout, panicking with its stderr
/// if it fails.
pub(crate) fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `docker args`, stdout on success.
pub(crate) fn docker(args: &[&str]) -> String {
    run_ok("docker", args)
}

/// Makes sure a Docker engine answers: installs Debian's `docker.io`,
/// `docker-compose` and `debootstrap` when missing, and starts `dockerd`
/// when no daemon answers. The daemon is left running, like the other
/// services of a development machine.
pub(crate) fn ensure_engine() {
    let need = |package: &str, installed: &dyn Fn() -> bool| {
        ensure_debian_package(package, installed)
            .unwrap_or_else(|hint| panic!("the compose test needs {package}: {hint}"));
    };
    need("docker.io", &|| {
        runs("dockerd", &["--version"]) && runs("docker", &["--version"])
    });
    need("docker-compose", &|| compose_program().is_some());
    need("debootstrap", &|| {
        Path::new("/usr/sbin/debootstrap").exists()
    });
    if runs("docker", &["info"]) {
        return;
    }
    let log = scratch("engine").join("dockerd.log");
    let log_file = std::fs::File::create(&log).unwrap();
    eprintln!(
        "no Docker daemon answers: starting dockerd (log: {})",
        log.display()
    );
    // `setsid --fork`: the daemon runs on in a session of its own,
    // outliving this test process and its signals.
    let forked = Command::new("setsid")
        .args(["--fork", "dockerd"])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .status()
        .expect("starting dockerd");
    assert!(forked.success(), "setsid --fork dockerd: {forked}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !runs("docker", &["info"]) {
        assert!(
            Instant::now() < deadline,
            "dockerd did not answer within 60 s; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// How to run compose here: `docker compose` (v2) when the plugin is
/// there, else the standalone `docker-compose`. Both read the same file.
pub(crate) fn compose_program() -> Option<Vec<String>> {
    if runs("docker", &["compose", "version"]) {
        Some(vec!["docker".into(), "compose".into()])
    } else if runs("docker-compose", &["version"]) {
        Some(vec!["docker-compose".into()])
    } else {
        None
    }
}

/// A `docker build` that uses BuildKit, as (program, leading args, whether
/// `DOCKER_BUILDKIT=1` is needed): `docker buildx build` where the buildx
/// plugin is installed, else a client from before Docker 23 (Debian's
/// `docker.io`), which has BuildKit built in. Newer clients without buildx
/// cannot use BuildKit at all.
pub(crate) fn buildkit_build() -> (String, Vec<String>) {
    if runs("docker", &["buildx", "version"]) {
        return (
            "docker".into(),
            vec!["buildx".into(), "build".into(), "--load".into()],
        );
    }
    for client in ["docker", "/usr/bin/docker"] {
        let version = run(client, &["version", "--format", "{{.Client.Version}}"]);
        let major: u32 = String::from_utf8_lossy(&version.stdout)
            .split('.')
            .next()
            .and_then(|m| m.trim().parse().ok())
            .unwrap_or(u32::MAX);
        if major < 23 {
            return (client.into(), vec!["build".into()]);
        }
    }
    panic!("no Docker client here builds with BuildKit: install the buildx plugin or Debian's docker.io");
}

/// The names of the stand-in images, passed to compose as the variables
/// users set to bring their own.
pub(crate) struct Images {
    pub(crate) runtime: String,
    pub(crate) rust: String,
    pub(crate) redis: String,
    pub(crate) haproxy: String,
    pub(crate) prometheus: String,
}

fn short_hash(parts: &[&[u8]]) -> String {
    let mut h = DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    format!("{:08x}", h.finish() as u32)
}

fn image_exists(tag: &str) -> bool {
    runs("docker", &["image", "inspect", tag])
}

/// Builds every stand-in image that is not in the cache yet.
pub(crate) fn ensure_images() -> Images {
    let runtime = ensure_base();
    let recipe = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/compose/images")
            .join(format!("{name}.Dockerfile"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let service = |name: &str, version: &str| {
        let dockerfile = recipe(name);
        let tag = format!(
            "danmaku-test/{name}:{version}-{}",
            short_hash(&[&dockerfile, runtime.as_bytes()])
        );
        if !image_exists(&tag) {
            let ctx = scratch(&format!("image-{name}"));
            std::fs::write(ctx.join("Dockerfile"), &dockerfile).unwrap();
            build_image(&tag, &ctx, &runtime);
        }
        tag
    };
    let redis = service("redis", "7.0");
    let haproxy = service("haproxy", "2.6");
    let prometheus = service("prometheus", "v2.42.0");
    let rust = ensure_rust(&runtime, &recipe("rust"));
    Images {
        runtime,
        rust,
        redis,
        haproxy,
        prometheus,
    }
}

/// `docker build` of `ctx` on top of `base`, with the classic builder.
fn build_image(tag: &str, ctx: &Path, base: &str) {
    eprintln!("building stand-in image {tag}");
    let status = Command::new("docker")
        .args(["build", "-q", "--force-rm", "--build-arg"])
        .arg(format!("BASE={base}"))
        .args(["-t", tag])
        .arg(ctx)
        .env("DOCKER_BUILDKIT", "0")
        .stdout(Stdio::null())
        .status()
        .expect("running docker build");
    assert!(status.success(), "building {tag} failed");
}

/// A Debian base image from `debootstrap --variant=minbase`, loaded with
/// `docker import`: what `debian:bookworm-slim` is, made from Debian's
/// packages alone.
fn ensure_base() -> String {
    let tag = format!(
        "danmaku-test/debian:{SUITE}-slim-{}",
        short_hash(&[SUITE.as_bytes(), MIRROR.as_bytes(), SOURCES.as_bytes()])
    );
    if image_exists(&tag) {
        return tag;
    }
    eprintln!("building stand-in image {tag} with debootstrap");
    let root = scratch("debian-root");
    let _ = std::fs::remove_dir_all(&root);
    let root_str = root.to_str().unwrap();
    run_ok(
        "debootstrap",
        &["--variant=minbase", SUITE, root_str, MIRROR],
    );
    std::fs::write(root.join("etc/apt/sources.list"), SOURCES).unwrap();
    // As in the official slim images: no package lists or archives.
    for dir in ["var/lib/apt/lists", "var/cache/apt/archives"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            if entry.path().is_file() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let script = format!(
        "tar -C '{root_str}' -c . | docker import -c 'CMD [\"bash\"]' - '{tag}' >/dev/null"
    );
    run_ok("sh", &["-c", &script]);
    let _ = std::fs::remove_dir_all(&root);
    tag
}

/// A Rust build image with this machine's own toolchain (`rustc --print
/// sysroot`: cargo, rustc and the standard library) and its local
/// certificate authorities, since crates.io may be reached through a proxy
/// that only they let cargo trust.
fn ensure_rust(base: &str, dockerfile: &[u8]) -> String {
    let sysroot = run_ok("rustc", &["--print", "sysroot"]).trim().to_owned();
    let version = run_ok("rustc", &["--version"]);
    let number = version.split_whitespace().nth(1).unwrap_or("0").to_owned();
    let mut certs: Vec<PathBuf> = std::fs::read_dir("/usr/local/share/ca-certificates")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    certs.retain(|p| p.extension().is_some_and(|e| e == "crt"));
    certs.sort();
    let cert_bytes: Vec<Vec<u8>> = certs.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let mut parts: Vec<&[u8]> = vec![dockerfile, base.as_bytes(), version.as_bytes()];
    parts.extend(cert_bytes.iter().map(Vec::as_slice));
    let tag = format!("danmaku-test/rust:{number}-{SUITE}-{}", short_hash(&parts));
    if image_exists(&tag) {
        return tag;
    }
    let ctx = scratch("image-rust");
    let _ = std::fs::remove_dir_all(&ctx);
    std::fs::create_dir_all(ctx.join("toolchain/bin")).unwrap();
    std::fs::create_dir_all(ctx.join("certs")).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    for bin in ["cargo", "rustc", "rustdoc"] {
        std::fs::copy(
            Path::new(&sysroot).join("bin").join(bin),
            ctx.join("toolchain/bin").join(bin),
        )
        .unwrap();
    }
    run_ok(
        "cp",
        &[
            "-a",
            &format!("{sysroot}/lib"),
            ctx.join("toolchain/lib").to_str().unwrap(),
        ],
    );
    for cert in &certs {
        std::fs::copy(cert, ctx.join("certs").join(cert.file_name().unwrap())).unwrap();
    }
    build_image(&tag, &ctx, base);
    let _ = std::fs::remove_dir_all(&ctx);
    tag
}

/// A compose project of the repository's `docker-compose.yml` (plus any
/// override files), taken down with its volumes on drop, also when the test
/// fails half way.
pub(crate) struct Stack {
    pub(crate) project: String,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
    down: bool,
}

impl Stack {
    pub(crate) fn new(project: &str, files: &[&str], env: Vec<(String, String)>) -> Stack {
        let root = repo_root();
        Stack {
            project: project.to_owned(),
            files: files.iter().map(|f| root.join(f)).collect(),
            env,
            down: false,
        }
    }

    /// The compose command line for `args`, without running it.
    fn command(&self, args: &[&str]) -> Command {
        let program = compose_program().expect("compose is installed");
        let mut cmd = Command::new(&program[0]);
        cmd.args(&program[1..]);
        cmd.current_dir(repo_root());
        cmd.arg("--project-name").arg(&self.project);
        for f in &self.files {
            cmd.arg("--file").arg(f);
        }
        cmd.args(args);
        // The classic builder: the Dockerfile must build without BuildKit.
        cmd.env("DOCKER_BUILDKIT", "0");
        cmd.env("COMPOSE_DOCKER_CLI_BUILD", "0");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs compose with `args`, its output going to the test's.
    pub(crate) fn compose_visible(&self, args: &[&str]) {
        let status = self.command(args).status().expect("running compose");
        assert!(status.success(), "compose {args:?} failed: {status}");
    }

    /// Ids of this project's containers of `service` that are running.
    pub(crate) fn running(&self, service: &str) -> Vec<String> {
        let project = format!("label=com.docker.compose.project={}", self.project);
        let service = format!("label=com.docker.compose.service={service}");
        docker(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &project,
            "--filter",
            &service,
        ])
        .lines()
        .map(str::to_owned)
        .collect()
    }

    /// `docker compose down -v`: containers, networks and volumes go.
    pub(crate) fn down(&mut self) {
        self.down = true;
        let out = self
            .command(&["down", "--volumes", "--remove-orphans", "--timeout", "10"])
            .output()
            .expect("running compose down");
        assert!(
            out.status.success(),
            "compose down failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// What of this project is still there: containers, networks, volumes.
    pub(crate) fn leftovers(&self) -> Vec<String> {
        leftovers_of(&self.project)
    }
}

/// Containers, networks and volumes labelled with compose project `project`.
fn leftovers_of(project: &str) -> Vec<String> {
    let label = format!("label=com.docker.compose.project={project}");
    let mut left = Vec::new();
    for (kind, args) in [
        ("container", vec!["ps", "-a", "-q", "--filter", &label]),
        ("network", vec!["network", "ls", "-q", "--filter", &label]),
        ("volume", vec!["volume", "ls", "-q", "--filter", &label]),
    ] {
        left.extend(docker(&args).lines().map(|id| format!("{kind} {id}")));
    }
    left
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What the services said, for whoever reads the failure.
            if let Ok(out) = self
                .command(&["logs", "--no-color", "--tail", "40"])
                .output()
            {
                eprintln!("compose logs:\n{}", String::from_utf8_lossy(&out.stdout));
            }
        }
        if !self.down {
            if let Ok(out) = self
                .command(&["down", "--volumes", "--remove-orphans", "--timeout", "5"])
                .output()
            {
                if !out.status.success() {
                    eprintln!(
                        "compose down failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
    }
}

/// Takes down what an earlier run of this test left behind when it was
/// killed before it could clean up (projects named `<prefix>*`).
pub(crate) fn remove_stale_projects(prefix: &str) {
    let names = docker(&[
        "ps",
        "-a",
        "--format",
        "{{.Label \"com.docker.compose.project\"}}",
    ]);
    let mut projects: Vec<&str> = names.lines().filter(|p| p.starts_with(prefix)).collect();
    let networks = docker(&["network", "ls", "--format", "{{.Name}}"]);
    projects.extend(
        networks
            .lines()
            .filter(|n| n.starts_with(prefix))
            .filter_map(|n| n.rsplit_once('_').map(|(p, _)| p)),
    );
    projects.sort_unstable();
    projects.dedup();
    for project in projects {
        eprintln!("removing what an earlier run left: {project}");
        let label = format!("label=com.docker.compose.project={project}");
        let ids = docker(&["ps", "-a", "-q", "--filter", &label]);
        for id in ids.lines() {
            let _ = run("docker", &["rm", "-f", "-v", id]);
        }
        for kind in ["network", "volume"] {
            let ids = docker(&[kind, "ls", "-q", "--filter", &label]);
            for id in ids.lines() {
                let _ = run("docker", &[kind, "rm", id]);
            }
        }
        assert!(
            leftovers_of(project).is_empty(),
            "could not clean {project}"
        );
    }
}
