//! The fleet as users run it: the repository's `docker-compose.yml` and
//! `deploy/Dockerfile` on a real Docker engine, with three gateways behind
//! HAProxy, Redis and Prometheus, and TLS terminated at the balancer
//! (`deploy/compose.tls.yml`). Images this machine cannot pull are built
//! from Debian's packages under names of its own and passed in through the
//! image variables (docker.rs).
//!
//! One test walks the whole life of a stack, because bringing one up costs
//! far more than any check on it: spread over the replicas, every comment
//! to every viewer, scaling up without touching the balancer, a drained
//! replica's viewers coming back through the balancer, real client
//! addresses behind the balancer, Prometheus finding every replica, and
//! `down -v` leaving nothing.

mod docker;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use docker::{docker, Stack};

/// How long one expectation may take: containers on two loaded cores are
/// slower than in-process gateways.
const PATIENCE: Duration = Duration::from_secs(60);
/// Prefix of this test's compose projects (stale ones are removed first).
const PROJECT_PREFIX: &str = "danmaku-compose-test-";

/// A free TCP port on this machine for a published port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.1 GET: status and body, or `None` if the connection failed.
async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    // The gateway's JSON answers are small; undo chunking if it was used.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A GET whose answer must be 200 with a JSON body.
async fn get_json(addr: SocketAddr, path: &str) -> Option<Value> {
    match http_get(addr, path).await? {
        (200, body) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// A WebSocket viewer of one room, over any stream (plain or TLS).
struct Viewer<S> {
    ws: WebSocketStream<S>,
    /// `hello.server`: the instance that holds it.
    server: String,
    /// Comment ids seen, in order.
    seen: Vec<String>,
    /// Answers to posts (acks and rejects), oldest first.
    answers: Vec<Value>,
    nonce: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Viewer<S> {
    /// Upgrades `stream` to a WebSocket for `url` and reads `hello`.
    async fn open(url: &str, stream: S) -> Result<Viewer<S>, String> {
        let (ws, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::client_async(url, stream))
            .await
            .map_err(|_| "upgrade timed out".to_owned())?
            .map_err(|e| format!("upgrade failed: {e}"))?;
        let mut v = Viewer {
            ws,
            server: String::new(),
            seen: Vec::new(),
            answers: Vec::new(),
            nonce: 0,
        };
        match v.next().await {
            Some(Ok(hello)) if hello["type"] == "hello" => {
                v.server = hello["server"].as_str().unwrap_or_default().to_owned();
                Ok(v)
            }
            other => Err(format!("expected hello, got {other:?}")),
        }
    }

    /// The next event (batches unpacked as they are recorded): `None` when
    /// the socket ended, `Some(Err(code))` for a close frame.
    async fn next(&mut self) -> Option<Result<Value, u16>> {
        loop {
            let msg = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a frame in time");
            let text = match msg {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Close(frame))) => {
                    return Some(Err(frame.map_or(1005, |f| u16::from(f.code))))
                }
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(_)) => continue,
            };
            let event: Value = serde_json::from_str(text.as_str()).unwrap();
            let items = match event["type"].as_str() {
                Some("batch") => event["items"].as_array().cloned().unwrap_or_default(),
                _ => vec![event],
            };
            let mut other = None;
            for item in items {
                match item["type"].as_str() {
                    Some("danmaku") => self.seen.push(item["id"].as_str().unwrap().to_owned()),
                    Some("ack") | Some("reject") => self.answers.push(item),
                    Some("online") => {}
                    _ => other = Some(item),
                }
            }
            if let Some(e) = other {
                return Some(Ok(e));
            }
            return Some(Ok(json!({"type": "progress"})));
        }
    }

    /// Sends a post with a fresh nonce.
    async fn post(&mut self, text: &str) -> String {
        self.nonce += 1;
        let nonce = format!("n{}", self.nonce);
        let post = json!({"type": "post", "text": text, "nonce": nonce});
        self.ws
            .send(Message::Text(post.to_string().into()))
            .await
            .unwrap();
        nonce
    }

    /// Reads until the answer to `nonce` (ack or reject) has come.
    async fn answer(&mut self, nonce: &str) -> Value {
        loop {
            if let Some(i) = self.answers.iter().position(|a| a["nonce"] == nonce) {
                return self.answers.remove(i);
            }
            match self.next().await {
                Some(Ok(_)) => {}
                other => panic!("socket ended waiting for the answer to {nonce}: {other:?}"),
            }
        }
    }

    /// Reads until every id in `ids` has been seen.
    async fn sees_all(&mut self, ids: &[String]) {
        while !ids.iter().all(|id| self.seen.contains(id)) {
            match self.next().await {
                Some(Ok(_)) => {}
                other => panic!(
                    "viewer on {} ended before seeing {ids:?} (saw {:?}): {other:?}",
                    self.server, self.seen
                ),
            }
        }
    }

    /// Reads until the close frame, returning its code.
    async fn close_code(&mut self) -> u16 {
        loop {
            match self.next().await {
                Some(Ok(_)) => {}
                Some(Err(code)) => return code,
                None => panic!("viewer on {} ended without a close frame", self.server),
            }
        }
    }
}

/// A plain viewer of `room` through the balancer at `addr`, connecting from
/// `source` when given (an address of this machine).
async fn join(
    addr: SocketAddr,
    source: Option<IpAddr>,
    room: &str,
) -> Result<Viewer<TcpStream>, String> {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).unwrap();
    }
    let tcp = tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    Viewer::open(&format!("ws://{addr}/ws/{room}"), tcp).await
}

/// Like [`join`], retrying as a real client would while the balancer
/// catches up with a replica that went away.
async fn join_retrying(addr: SocketAddr, room: &str) -> Viewer<TcpStream> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match join(addr, None, room).await {
            Ok(v) => return v,
            Err(e) => {
                assert!(Instant::now() < deadline, "could not rejoin {room}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Posts `count` comments from `viewers` in turn (one each, so no
/// connection's own budget runs out) and returns the accepted ids.
async fn post_round<S: AsyncRead + AsyncWrite + Unpin>(
    viewers: &mut [Viewer<S>],
    count: usize,
    tag: &str,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..count {
        let v = &mut viewers[i % viewers.len()];
        let nonce = v.post(&format!("{tag} #{i}")).await;
        let answer = v.answer(&nonce).await;
        assert_eq!(answer["type"], "ack", "post {tag} #{i} refused: {answer}");
        ids.push(answer["id"].as_str().unwrap().to_owned());
    }
    ids
}

/// Waits until the fleet, asked through the balancer, lists exactly `ids`.
async fn wait_for_instances(addr: SocketAddr, ids: &BTreeSet<String>, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = http_get(addr, "/api/instances").await;
        let listed = seen
            .as_ref()
            .and_then(|(status, body)| (*status == 200).then(|| instances(body)).flatten());
        if listed.as_ref() == Some(ids) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: want {ids:?}, last answer {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The instance ids of an `/api/instances` answer.
fn instances(body: &str) -> Option<BTreeSet<String>> {
    let v: Value = serde_json::from_str(body).ok()?;
    Some(
        v["instances"]
            .as_array()?
            .iter()
            .filter_map(|i| i["id"].as_str().map(str::to_owned))
            .collect(),
    )
}

/// The container hostname of each running replica, by container id.
fn replica_hostnames(stack: &Stack) -> BTreeMap<String, String> {
    stack
        .running("gateway")
        .into_iter()
        .map(|id| {
            let host = docker(&["inspect", "-f", "{{.Config.Hostname}}", &id])
                .trim()
                .to_owned();
            (host, id)
        })
        .collect()
}

/// A container's address on network `network`.
fn container_ip(id: &str, network: &str) -> IpAddr {
    let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
    docker(&["inspect", "-f", &format, id])
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("address of {id} on {network}: {e}"))
}

/// The balancer's start time and restart count: they must not change
/// while the gateways scale.
fn balancer_identity(stack: &Stack) -> (String, String) {
    let ids = stack.running("balancer");
    assert_eq!(ids.len(), 1, "one balancer");
    let s = docker(&["inspect", "-f", "{{.Id}} {{.State.StartedAt}}", &ids[0]]);
    let r = docker(&["inspect", "-f", "{{.RestartCount}}", &ids[0]]);
    (s.trim().to_owned(), r.trim().to_owned())
}

/// A self-signed certificate for `localhost`, as the PEM bundle HAProxy
/// reads (certificate then key) in a directory of its own.
struct BalancerCert {
    dir: std::path::PathBuf,
    cert: CertificateDer<'static>,
}

impl BalancerCert {
    fn new() -> BalancerCert {
        let dir = std::env::temp_dir().join(format!("danmaku-compose-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let pem = format!("{}{}", made.cert.pem(), made.signing_key.serialize_pem());
        std::fs::write(dir.join("danmaku.pem"), pem).unwrap();
        // HAProxy runs as its own user inside the container.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            dir.join("danmaku.pem"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        BalancerCert {
            dir,
            cert: made.cert.der().clone(),
        }
    }

    /// A `wss://` viewer through the balancer's TLS port.
    async fn join(
        &self,
        port: u16,
        room: &str,
    ) -> Result<Viewer<tokio_rustls::client::TlsStream<TcpStream>>, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let tls = tokio::time::timeout(
            Duration::from_secs(10),
            connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
        )
        .await
        .map_err(|_| "TLS handshake timed out".to_owned())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
        Viewer::open(&format!("wss://localhost:{port}/ws/{room}"), tls).await
    }
}

impl Drop for BalancerCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Adds `ip/32` to interface `dev` for the life of the value, so the test
/// can connect from several client addresses.
struct ExtraAddress {
    ip: IpAddr,
    dev: String,
}

impl ExtraAddress {
    fn add(ip: IpAddr, dev: &str) -> ExtraAddress {
        docker::run_ok("ip", &["addr", "add", &format!("{ip}/32"), "dev", dev]);
        ExtraAddress {
            ip,
            dev: dev.to_owned(),
        }
    }
}

impl Drop for ExtraAddress {
    fn drop(&mut self) {
        let _ = docker::run(
            "ip",
            &["addr", "del", &format!("{}/32", self.ip), "dev", &self.dev],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_fleet_scales_drains_and_sees_real_clients() {
    let started = Instant::now();
    docker::ensure_engine();
    docker::remove_stale_projects(PROJECT_PREFIX);
    let images = docker::ensure_images();
    eprintln!(
        "engine and stand-in images ready after {:?}",
        started.elapsed()
    );

    let http_port = free_port();
    let https_port = free_port();
    let prometheus_port = free_port();
    // A front network of this run's own, so a stale one cannot collide.
    let third = 100 + std::process::id() % 150;
    let subnet = format!("172.31.{third}.0/24");
    let cert = BalancerCert::new();
    let env: Vec<(String, String)> = [
        ("REDIS_IMAGE", images.redis.clone()),
        ("HAPROXY_IMAGE", images.haproxy.clone()),
        ("PROMETHEUS_IMAGE", images.prometheus.clone()),
        ("RUST_IMAGE", images.rust.clone()),
        ("RUNTIME_IMAGE", images.runtime.clone()),
        ("DANMAKU_IMAGE", "danmaku-test/gateway:compose".to_owned()),
        ("DANMAKU_HTTP_PORT", http_port.to_string()),
        ("DANMAKU_HTTPS_PORT", https_port.to_string()),
        ("PROMETHEUS_PORT", prometheus_port.to_string()),
        ("DANMAKU_FRONT_SUBNET", subnet.clone()),
        ("DANMAKU_TLS_DIR", cert.dir.to_string_lossy().into_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let project = format!("{PROJECT_PREFIX}{}", std::process::id());
    let mut stack = Stack::new(
        &project,
        &["docker-compose.yml", "deploy/compose.tls.yml"],
        env,
    );

    // The gateway image from deploy/Dockerfile, with the classic builder.
    let build = Instant::now();
    // --force-rm: a failed step leaves no container behind.
    stack.compose_visible(&["build", "--quiet", "--force-rm", "gateway"]);
    eprintln!("gateway image built in {:?}", build.elapsed());
    // And with BuildKit: the same Dockerfile must build there too.
    let build = Instant::now();
    let (program, args) = docker::buildkit_build();
    let status = std::process::Command::new(&program)
        .args(&args)
        .args([
            "--file",
            "deploy/Dockerfile",
            "--tag",
            "danmaku-test/gateway:buildkit",
        ])
        .arg(format!("--build-arg=RUST_IMAGE={}", images.rust))
        .arg(format!("--build-arg=RUNTIME_IMAGE={}", images.runtime))
        .arg(".")
        .current_dir(docker::repo_root())
        .env("DOCKER_BUILDKIT", "1")
        .stdin(std::process::Stdio::null())
        .status()
        .expect("running a BuildKit build");
    assert!(
        status.success(),
        "deploy/Dockerfile does not build with BuildKit"
    );
    eprintln!("built again with BuildKit in {:?}", build.elapsed());
    stack.compose_visible(&[
        "up",
        "-d",
        "--scale",
        "gateway=3",
        "redis",
        "gateway",
        "balancer",
        "prometheus",
    ]);
    let lb: SocketAddr = ([127, 0, 0, 1], http_port).into();

    // Three replicas, each named after its container's hostname.
    let hosts = replica_hostnames(&stack);
    assert_eq!(hosts.len(), 3, "three gateway replicas run: {hosts:?}");
    let expected: BTreeSet<String> = hosts.keys().cloned().collect();
    wait_for_instances(lb, &expected, "the fleet to list the three replicas").await;

    // Viewers through the one published port spread over all three (the
    // balancer's health checks may take a moment to admit each replica).
    let room = "compose";
    let mut viewers = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let spread: BTreeSet<String> = viewers
            .iter()
            .map(|v: &Viewer<_>| v.server.clone())
            .collect();
        if spread == expected && viewers.len() >= 12 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "viewers did not spread over {expected:?}: {spread:?}"
        );
        if viewers.len() >= 12 {
            // Not spread yet: let the balancer see every replica, start over.
            viewers.clear();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        viewers.push(
            join(lb, None, room)
                .await
                .expect("joining through the balancer"),
        );
    }
    let per_server = |viewers: &[Viewer<TcpStream>]| {
        let mut n: BTreeMap<String, usize> = BTreeMap::new();
        for v in viewers {
            *n.entry(v.server.clone()).or_default() += 1;
        }
        n
    };
    eprintln!("viewers per replica: {:?}", per_server(&viewers));

    // Every viewer sees every comment, whichever replica took the post.
    let ids = post_round(&mut viewers, 3, "first").await;
    for v in &mut viewers {
        v.sees_all(&ids).await;
    }

    // Scale to four: the balancer, untouched, sends new viewers there.
    let balancer_before = balancer_identity(&stack);
    stack.compose_visible(&[
        "up",
        "-d",
        "--no-recreate",
        "--scale",
        "gateway=4",
        "redis",
        "gateway",
        "balancer",
        "prometheus",
    ]);
    let hosts = replica_hostnames(&stack);
    assert_eq!(hosts.len(), 4, "four replicas run: {hosts:?}");
    let fourth = hosts
        .keys()
        .find(|h| !expected.contains(*h))
        .expect("a new replica")
        .clone();
    let all4: BTreeSet<String> = hosts.keys().cloned().collect();
    wait_for_instances(lb, &all4, "the fleet to list four replicas").await;
    let deadline = Instant::now() + PATIENCE;
    let mut newcomers = Vec::new();
    while !newcomers
        .iter()
        .any(|v: &Viewer<TcpStream>| v.server == fourth)
    {
        assert!(
            Instant::now() < deadline,
            "no new viewer reached the fourth replica {fourth}"
        );
        newcomers.push(join(lb, None, room).await.expect("joining after scaling"));
        if newcomers.len() % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    eprintln!(
        "after scaling, {} new viewers until one reached {fourth}",
        newcomers.len()
    );
    assert_eq!(
        balancer_identity(&stack),
        balancer_before,
        "the balancer was neither recreated nor restarted"
    );
    viewers.append(&mut newcomers);
    let ids = post_round(&mut viewers, 2, "scaled").await;
    for v in &mut viewers {
        v.sees_all(&ids).await;
    }

    // Stop the replica holding the most viewers: they get 1001, come back
    // through the balancer on the others, and miss nothing posted after.
    let counts = per_server(&viewers);
    let (victim, held) = counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(s, n)| (s.clone(), *n))
        .unwrap();
    let victim_container = hosts[&victim].clone();
    let stop = tokio::process::Command::new("docker")
        .args(["stop", "--time", "20", &victim_container])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (mut moved, mut stayed): (Vec<_>, Vec<_>) =
        viewers.into_iter().partition(|v| v.server == victim);
    assert_eq!(moved.len(), held);
    for v in &mut moved {
        assert_eq!(
            v.close_code().await,
            1001,
            "a drained replica closes with 1001"
        );
    }
    let stopped = stop.wait_with_output().await.unwrap();
    assert!(stopped.status.success(), "docker stop {victim_container}");
    let mut back = Vec::new();
    for _ in 0..moved.len() {
        let v = join_retrying(lb, room).await;
        assert_ne!(
            v.server, victim,
            "a viewer came back to the stopped replica"
        );
        back.push(v);
    }
    eprintln!("{held} viewers of the stopped {victim} got 1001 and came back elsewhere");
    drop(moved);
    stayed.append(&mut back);
    let mut viewers = stayed;
    let ids = post_round(&mut viewers, 3, "after the drain").await;
    for v in &mut viewers {
        v.sees_all(&ids).await;
    }
    let live: BTreeSet<String> = all4.iter().filter(|h| **h != victim).cloned().collect();
    wait_for_instances(lb, &live, "the fleet to forget the stopped replica").await;

    // Real client addresses reach the gateways: two addresses of this
    // machine on the front network; one spends its address budget, the
    // other is still served. Were the gateways keying on the balancer's
    // address, both would be refused.
    let front = format!("{project}_front");
    let bridge_id = docker(&["network", "inspect", "-f", "{{.Id}}", &front]);
    let bridge = format!("br-{}", &bridge_id.trim()[..12]);
    let balancer_ip = container_ip(&stack.running("balancer")[0], &front);
    let (a, b): (IpAddr, IpAddr) = (
        format!("172.31.{third}.201").parse().unwrap(),
        format!("172.31.{third}.202").parse().unwrap(),
    );
    let _addrs = (ExtraAddress::add(a, &bridge), ExtraAddress::add(b, &bridge));
    let direct: SocketAddr = (balancer_ip, 8080).into();
    let mut limited = None;
    let mut flood = Vec::new();
    'flood: for c in 0..10 {
        let mut v = join(direct, Some(a), "per-ip")
            .await
            .expect("joining from a");
        // Within one connection's own burst (3), so only the address budget
        // can refuse.
        for p in 0..3 {
            let nonce = v.post(&format!("from a, {c}/{p}")).await;
            let answer = v.answer(&nonce).await;
            if answer["type"] == "reject" {
                limited = Some(answer);
                break 'flood;
            }
        }
        flood.push(v);
    }
    let limited = limited.expect("address a ran out of its budget");
    eprintln!(
        "address {a} refused after {} connections: {limited}",
        flood.len() + 1
    );
    assert_eq!(limited["code"], "rate_limited", "{limited}");
    let mut other = join(direct, Some(b), "per-ip")
        .await
        .expect("joining from b");
    let nonce = other.post("from b").await;
    let answer = other.answer(&nonce).await;
    assert_eq!(
        answer["type"], "ack",
        "address b is not limited by a's posts: {answer}"
    );
    drop((flood, other));

    // wss:// through the balancer's TLS port (deploy/compose.tls.yml).
    let mut secure = cert
        .join(https_port, room)
        .await
        .expect("wss through the balancer");
    let ids = post_round(std::slice::from_mut(&mut secure), 1, "over wss").await;
    secure.sees_all(&ids).await;
    for v in &mut viewers {
        v.sees_all(&ids).await;
    }
    drop(secure);

    // Prometheus finds every live replica through DNS, and each is up.
    let prometheus: SocketAddr = ([127, 0, 0, 1], prometheus_port).into();
    let live_ips: BTreeSet<String> = stack
        .running("gateway")
        .iter()
        .map(|id| format!("{}:8080", container_ip(id, &format!("{project}_back"))))
        .collect();
    assert_eq!(live_ips.len(), 3);
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        let answer = get_json(prometheus, "/api/v1/targets?state=active").await;
        let targets: Vec<Value> = answer
            .as_ref()
            .and_then(|v| v["data"]["activeTargets"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t["labels"]["job"] == "danmaku-gateway")
            .collect();
        let up: BTreeSet<String> = targets
            .iter()
            .filter(|t| t["health"] == "up")
            .filter_map(|t| t["labels"]["instance"].as_str().map(str::to_owned))
            .collect();
        if up == live_ips && targets.len() == live_ips.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus does not scrape exactly the live replicas {live_ips:?}: {targets:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    drop(viewers);
    stack.down();
    let left = stack.leftovers();
    assert!(left.is_empty(), "down -v left {left:?}");
    eprintln!("the compose test took {:?}", started.elapsed());
}
