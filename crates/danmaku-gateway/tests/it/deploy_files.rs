//! The deployment files read as text, without Docker (the compose test
//! runs them for real): every image in `docker-compose.yml` is pinned and
//! named by a variable, the gateway service can scale, Redis keeps nothing
//! on disk, and `deploy/Dockerfile` stays within what the classic builder
//! understands. Also the image's health check, `danmaku-gateway
//! healthcheck`, against a real gateway.

use serde_json::Value;

use crate::support::TestGateway;

/// A file of the repository.
fn read(path: &str) -> String {
    let path = format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn compose() -> Value {
    serde_yaml::from_str(&read("docker-compose.yml")).unwrap()
}

#[test]
fn every_compose_image_is_pinned_behind_a_variable() {
    let compose = compose();
    let services = compose["services"].as_object().unwrap();
    for name in ["redis", "gateway", "balancer", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    for (name, service) in services {
        let image = service["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no image"));
        // `${VARIABLE:-default}`, so a site (or a test) can bring its own.
        let inner = image
            .strip_prefix("${")
            .and_then(|s| s.strip_suffix('}'))
            .unwrap_or_else(|| panic!("{name}: image {image} is not a variable"));
        let (var, default) = inner
            .split_once(":-")
            .unwrap_or_else(|| panic!("{name}: {image} has no default"));
        assert!(var.ends_with("_IMAGE"), "{name}: variable {var}");
        let (_, tag) = default
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("{name}: {default} has no tag"));
        if name == "gateway" {
            // Built here from deploy/Dockerfile, not pulled.
            assert_eq!(service["build"]["dockerfile"], "deploy/Dockerfile");
        } else {
            assert!(
                tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()),
                "{name}: {default} is not pinned to a version"
            );
        }
    }
    let args = &services["gateway"]["build"]["args"];
    assert_eq!(args["RUST_IMAGE"], "${RUST_IMAGE:-rust:1.95-bookworm}");
    assert_eq!(
        args["RUNTIME_IMAGE"],
        "${RUNTIME_IMAGE:-debian:bookworm-slim}"
    );
}

#[test]
fn the_gateway_scales_behind_the_one_published_port() {
    let compose = compose();
    let s = &compose["services"];
    let gateway = &s["gateway"];
    assert!(
        gateway.get("container_name").is_none(),
        "a fixed name cannot scale"
    );
    assert!(
        gateway.get("ports").is_none(),
        "replicas publish no host port"
    );
    let env = &gateway["environment"];
    assert!(
        env.get("DANMAKU_INSTANCE_ID").is_none(),
        "the entrypoint names each replica"
    );
    assert_eq!(env["DANMAKU_REDIS_URL"], "redis://redis:6379");
    // The balancer's network is the one the gateways trust.
    let subnet = &compose["networks"]["front"]["ipam"]["config"][0]["subnet"];
    assert_eq!(env["DANMAKU_TRUSTED_PROXIES"], *subnet);
    assert_eq!(s["balancer"]["networks"], serde_json::json!(["front"]));
    assert_eq!(s["balancer"]["ports"].as_array().unwrap().len(), 1);
    for observer in ["prometheus", "grafana"] {
        assert_eq!(s[observer]["profiles"], serde_json::json!(["monitoring"]));
    }
    let entrypoint = read("deploy/docker-entrypoint.sh");
    assert!(
        entrypoint.contains("DANMAKU_INSTANCE_ID=\"${HOSTNAME"),
        "{entrypoint}"
    );
    assert!(
        entrypoint.contains("exec \"$@\""),
        "the gateway must be PID 1"
    );
}

#[test]
fn redis_has_a_memory_limit_and_no_persistence() {
    let compose = compose();
    let redis = &compose["services"]["redis"];
    assert!(redis["mem_limit"].is_string(), "{redis}");
    let command: Vec<&str> = redis["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let after = |flag: &str| {
        let i = command
            .iter()
            .position(|a| *a == flag)
            .unwrap_or_else(|| panic!("{flag}"));
        command[i + 1]
    };
    assert_eq!(after("--save"), "");
    assert_eq!(after("--appendonly"), "no");
    assert!(after("--maxmemory").contains("mb"));
}

#[test]
fn the_dockerfile_builds_with_the_classic_builder() {
    let dockerfile = read("deploy/Dockerfile");
    let lines: Vec<&str> = dockerfile.lines().filter(|l| !l.starts_with('#')).collect();
    // BuildKit-only syntax the classic builder refuses or misreads.
    assert!(!dockerfile.starts_with("# syntax"), "no frontend directive");
    for line in &lines {
        for buildkit in [
            "--mount",
            "--link",
            "--chmod",
            "--network",
            "--security",
            "<<",
        ] {
            assert!(!line.contains(buildkit), "BuildKit-only: {line}");
        }
    }
    assert!(lines.contains(&"ARG RUST_IMAGE=rust:1.95-bookworm"));
    assert!(lines.contains(&"ARG RUNTIME_IMAGE=debian:bookworm-slim"));
    assert!(lines.contains(&"FROM ${RUST_IMAGE} AS build"));
    assert!(lines.contains(&"FROM ${RUNTIME_IMAGE}"));
    assert!(
        lines.iter().any(|l| l.starts_with("USER danmaku")),
        "runs as non-root"
    );
    assert!(lines.iter().any(|l| l.starts_with("HEALTHCHECK")));
    // Every workspace crate's manifest is in the dependency layer, or the
    // stubbed build cannot resolve the workspace.
    let crates = std::fs::read_dir(format!("{}/..", env!("CARGO_MANIFEST_DIR"))).unwrap();
    for entry in crates.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let copy = format!("COPY crates/{name}/Cargo.toml crates/{name}/");
        assert!(
            lines.contains(&copy.as_str()),
            "deploy/Dockerfile lacks `{copy}`"
        );
    }
}

/// `danmaku-gateway healthcheck` with the listen address `addr`: its exit
/// status and what it printed.
async fn healthcheck(addr: std::net::SocketAddr) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_danmaku-gateway"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("DANMAKU_")) {
        cmd.env_remove(key);
    }
    let out = cmd
        .args(["healthcheck", "--timeout", "5"])
        .env("DANMAKU_LISTEN", addr.to_string())
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn the_healthcheck_subcommand_probes_a_running_gateway() {
    let gw = TestGateway::start(crate::support::settings()).await;
    let addr = gw.addr;
    let (ok, text) = healthcheck(addr).await;
    assert!(ok, "a running gateway is healthy: {text}");
    gw.stop().await.unwrap();
    let (ok, text) = healthcheck(addr).await;
    assert!(!ok, "a stopped gateway is not: {text}");
    assert!(
        text.contains(&addr.to_string()),
        "the failure names the address: {text}"
    );
}
