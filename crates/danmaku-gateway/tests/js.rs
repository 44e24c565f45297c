//! The JavaScript tests: the client library under Node's own test runner
//! (`clients/js/test`) and the web pages in a real headless Chromium driven
//! by `playwright-core` (`web/test`), each against real gateway processes
//! that the tests start from this build's binary.
//!
//! So that `cargo test --workspace` stays the one test command on a fresh
//! Debian machine, this installs what the JavaScript tests need when it is
//! missing: Node, npm and Chromium from Debian, and the npm packages of
//! `package.json` (as root; otherwise it says the one line to run).

use std::path::{Path, PathBuf};
use std::process::Command;

use danmaku_testkit::{ensure_debian_package, runs};

/// The repository root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `*.test.mjs` files of `dir`, sorted.
fn test_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with(".test.mjs"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn ensure_node() {
    if let Err(hint) = ensure_debian_package("nodejs", || runs("node", &["--version"])) {
        panic!("the JavaScript tests need Node: {hint}");
    }
}

/// Chromium, and `npm install` of `package.json` (playwright-core) once.
fn ensure_browser() {
    if let Err(hint) = ensure_debian_package("chromium", || runs("chromium", &["--version"])) {
        panic!("the browser tests need Chromium: {hint}");
    }
    let root = root();
    if root
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return;
    }
    if let Err(hint) = ensure_debian_package("npm", || runs("npm", &["--version"])) {
        panic!("the browser tests need npm: {hint}");
    }
    let status = Command::new("flock")
        .args([
            "/tmp/danmaku-testkit-npm.lock",
            "npm",
            "install",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
        ])
        .current_dir(&root)
        .status()
        .expect("npm runs");
    assert!(status.success(), "npm install failed in {}", root.display());
}

/// Runs `node --test` on the test files of `dir` and fails with its output
/// unless every test passed. One suite at a time: the browser's 500
/// comments/s would otherwise compete for the CPU with the client's
/// reconnect tests, whose waits are bounded.
fn node_test(dir: &str) {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = root();
    let files = test_files(&root.join(dir));
    assert!(!files.is_empty(), "no *.test.mjs in {dir}");
    let output = Command::new("node")
        // Node 20 has WebSocket only behind this flag (22 has it built in).
        .args(["--experimental-websocket", "--test", "--test-concurrency=1"])
        .args(&files)
        .current_dir(&root)
        .env("DANMAKU_GATEWAY_BIN", env!("CARGO_BIN_EXE_danmaku-gateway"))
        .env("DANMAKU_ARTIFACTS", root.join("target/test-artifacts"))
        .env("CHROMIUM", "/usr/bin/chromium")
        .output()
        .expect("node runs");
    let out = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
    println!("{out}\n{err}");
    assert!(
        output.status.success(),
        "node --test {dir} failed:\n{out}\n{err}"
    );
    assert!(out.contains("# pass"), "no test ran:\n{out}");
}

#[test]
fn the_javascript_client_passes_its_tests_against_real_gateways() {
    ensure_node();
    node_test("clients/js/test");
}

#[test]
fn the_web_pages_pass_their_tests_in_a_real_browser() {
    ensure_node();
    ensure_browser();
    node_test("web/test");
}
