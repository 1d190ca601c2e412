//! The sample web application (`examples/web`) from source to a running image, as the README
//! walks through it: `deploykit build` runs its four stages (esbuild from the npm registry
//! bundles, minifies, tree-shakes and splits), packages an OCI image and pushes it to a real
//! registry (read back with skopeo); a rebuild with nothing changed skips every stage; a
//! change re-runs only what depends on it; `deploykit render` pins the pushed digest for
//! Kubernetes; `deploykit deploy` runs it on the local backend.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, json, run, start_daemon};
use deploykit_testing::registry::LocalRegistry;

/// The example's sources in `dir`, pushing to `registry`.
fn sample(dir: &Path, registry: &str) {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/web");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    for file in ["package.json", "package-lock.json", "server.mjs"] {
        std::fs::copy(example.join(file), dir.join(file)).unwrap();
    }
    for entry in std::fs::read_dir(example.join("src")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join("src").join(entry.file_name())).unwrap();
    }
    let toml = std::fs::read_to_string(example.join("deploykit.toml")).unwrap();
    let toml = toml.replace(
        "# image = \"127.0.0.1:5000/sample/web\"",
        &format!("image = \"{registry}/sample/web\""),
    );
    assert!(
        toml.contains(registry),
        "the example names its image repository"
    );
    std::fs::write(dir.join("deploykit.toml"), toml).unwrap();
}

fn build(dir: &Path) -> serde_json::Value {
    let out = run(dir, &["build", "web", "--explain", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    json(&out)
}

fn outcomes(record: &serde_json::Value) -> Vec<(String, String)> {
    record["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Pushes a stand-in base image to `registry`'s `base/node`: its reference by digest.
fn base_image(registry: &str) -> String {
    use deploykit_image::{Image, Layer, Layout, Reference, Registry};
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open_or_create(dir.path()).unwrap();
    let mut os = Layer::new();
    os.add_bytes("usr/local/bin/node", b"#!/bin/sh\n".to_vec(), 0o755)
        .unwrap();
    let built = Image::scratch()
        .layer(os)
        .env("PATH", "/usr/local/bin")
        .build(&layout, "node")
        .unwrap();
    let target: Reference = format!("{registry}/base/node:20").parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = rt
        .block_on(Registry::new().push(&layout, &built.descriptor, &target, &[]))
        .unwrap();
    target.with_digest(report.digest).unwrap().to_string()
}

/// GET `path` from the proxy: the body of a 200 answer.
fn get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("skopeo runs");
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_sample_web_app_builds_pushes_rebuilds_from_the_cache_renders_and_deploys() {
    let registry =
        LocalRegistry::start(false).expect("the registry starts (apt-get install docker-registry)");
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path(), registry.host());
    // A base image on the same registry, pinned by digest (a stand-in for node:20-slim).
    let base = base_image(registry.host());
    let toml = std::fs::read_to_string(dir.path().join("deploykit.toml")).unwrap();
    let toml = toml.replace(
        "[services.web.package]\n",
        &format!("[services.web.package]\nbase = \"{base}\"\n"),
    );
    std::fs::write(dir.path().join("deploykit.toml"), toml).unwrap();
    // Builds are signed, and a deploy needs the signature.
    let out = run(dir.path(), &["keygen", "keys/build.key"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut toml = std::fs::read_to_string(dir.path().join("deploykit.toml")).unwrap();
    toml.push_str(
        "\n[build]\nsigning_key = \"keys/build.key\"\nverify_key = \"keys/build.key.pub\"\n",
    );
    std::fs::write(dir.path().join("deploykit.toml"), &toml).unwrap();

    let started = Instant::now();
    let cold = build(dir.path());
    let cold_time = started.elapsed();
    let all = |outcome: &str| {
        ["prepare", "compile", "test", "package"]
            .map(|s| (s.to_string(), outcome.to_string()))
            .to_vec()
    };
    assert_eq!(outcomes(&cold), all("ran"), "{cold}");
    let image = cold["image"].as_str().expect("pushed").to_string();
    let digest = cold["artifact"].as_str().unwrap().to_string();
    assert_eq!(image, format!("{}/sample/web@{digest}", registry.host()));
    assert_eq!(
        cold["push"]["mounted"], 1,
        "the base layer is mounted, not uploaded: {cold}"
    );
    let kinds: Vec<&str> = cold["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["file", "static", "image"]);
    assert_eq!(
        cold["attestations"].as_array().unwrap().len(),
        2,
        "provenance and SBOM: {cold}"
    );
    let tag = format!(
        "{}/sample/web:{}",
        registry.host(),
        digest.replacen(':', "-", 1)
    );
    let referrers: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{tag}"),
    ]))
    .unwrap();
    assert_eq!(
        referrers["manifests"].as_array().unwrap().len(),
        2,
        "{referrers}"
    );

    // The bundle: minified, split (the chart is a chunk), tree-shaken.
    let app = std::fs::read_to_string(dir.path().join("dist/app.js")).unwrap();
    assert!(
        !app.contains("TREE-SHAKEN-AWAY") && !app.contains("\n  "),
        "{app}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("dist/chunks"))
            .unwrap()
            .count(),
        1
    );
    assert!(dir.path().join("dist/app.css").is_file());

    // The registry serves it; its layers hold the bundle and the server.
    let inspect: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--no-tags",
        "--tls-verify=false",
        &format!("docker://{image}"),
    ]))
    .unwrap();
    assert_eq!(inspect["Digest"], digest.as_str());
    let config: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--config",
        "--tls-verify=false",
        &format!("docker://{image}"),
    ]))
    .unwrap();
    assert_eq!(config["config"]["User"], "65532");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["node", "/app/server.mjs"])
    );
    assert_eq!(
        config["config"]["ExposedPorts"],
        serde_json::json!({"8080/tcp": {}})
    );
    let copy = tempfile::tempdir().unwrap();
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{image}"),
        &format!("dir:{}", copy.path().display()),
    ]);
    let mut listed = String::new();
    for layer in inspect["Layers"].as_array().unwrap() {
        let file = copy.path().join(&layer.as_str().unwrap()[7..]);
        let out = Command::new("tar").arg("-tzf").arg(&file).output().unwrap();
        listed.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    assert!(
        listed.lines().any(|l| l == "usr/local/bin/node"),
        "the base's files: {listed}"
    );
    for path in [
        "app/dist/app.js",
        "app/dist/index.html",
        "app/dist/app.css",
        "app/server.mjs",
    ] {
        assert!(listed.lines().any(|l| l == path), "{path} not in {listed}");
    }

    // Nothing changed: every stage skipped, nothing uploaded, well under 5 % of the cold time.
    let started = Instant::now();
    let warm = build(dir.path());
    let warm_time = started.elapsed();
    assert_eq!(outcomes(&warm), all("skipped"), "{warm}");
    assert_eq!(warm["artifact"], cold["artifact"]);
    assert_eq!(
        warm["attestations"], cold["attestations"],
        "the same signed statements"
    );
    println!("cold build {cold_time:.2?}, no-change rebuild {warm_time:.2?}");
    assert!(
        warm_time < cold_time / 5,
        "cold {cold_time:?}, warm {warm_time:?}"
    );

    // A comment in the chart: the bundle comes out the same, so the image is not rebuilt.
    let chart = dir.path().join("src/chart.js");
    let text = std::fs::read_to_string(&chart).unwrap();
    std::fs::write(&chart, format!("{text}// a comment minification drops\n")).unwrap();
    let comment = build(dir.path());
    assert_eq!(
        outcomes(&comment),
        [
            ("prepare", "skipped"),
            ("compile", "ran"),
            ("test", "ran"),
            ("package", "skipped")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert!(
        comment["stages"][1]["why"]
            .as_str()
            .unwrap()
            .contains("input src/chart.js changed"),
        "{comment}"
    );
    assert_eq!(comment["artifact"], cold["artifact"]);

    // A change the tests catch: the build fails at the test stage, and nothing is packaged.
    let format = dir.path().join("src/format.js");
    let original = std::fs::read_to_string(&format).unwrap();
    std::fs::write(&format, original.replace("} %`", "}%`")).unwrap();
    let out = run(dir.path(), &["build", "web"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("build stage test step 0 (node) failed"),
        "{stderr}"
    );
    assert!(stderr.contains("'97%' !== '97 %'"), "{stderr}");
    std::fs::write(&format, original).unwrap();

    // A real change: a new image, a new digest.
    let text = std::fs::read_to_string(&chart).unwrap();
    std::fs::write(&chart, text.replace("#2f6fde", "#de2f6f")).unwrap();
    let changed = build(dir.path());
    assert_eq!(changed["stages"][3]["outcome"], "ran", "{changed}");
    assert_ne!(changed["artifact"], cold["artifact"]);
    let changed_digest = changed["artifact"].as_str().unwrap().to_string();

    // Kubernetes pins the pushed digest.
    let out = run(dir.path(), &["render", "web", "--namespace", "shop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(
        yaml.contains(&format!(
            "image: {}/sample/web@{changed_digest}",
            registry.host()
        )),
        "{yaml}"
    );

    // The local backend runs it.
    let port = free_port();
    let _daemon = start_daemon(dir.path(), &format!("127.0.0.1:{port}"));
    let out = run(
        dir.path(),
        &["deploy", "web", "--label", "v1", "-o", "json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = json(&run(dir.path(), &["status", "web", "-o", "json"]));
    let text = status.to_string();
    assert!(
        text.contains(&changed_digest),
        "the deployed revision is the image: {text}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        if let Some(body) = get(port, "/") {
            break body;
        }
        assert!(Instant::now() < deadline, "the page never answered");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(page.contains("deploykit sample web"), "{page}");

    // Trust another key: the same image is refused, saying why.
    let out = run(dir.path(), &["keygen", "keys/other.key"]);
    assert!(out.status.success());
    std::fs::write(
        dir.path().join("deploykit.toml"),
        toml.replace("keys/build.key.pub", "keys/other.key.pub"),
    )
    .unwrap();
    let out = run(dir.path(), &["deploy", "web", "--label", "v2"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to deploy") && stderr.contains("not signed by key"),
        "{stderr}"
    );
}
