//! Images pushed to and pulled from a real registry (Debian's `docker-registry`, the CNCF
//! distribution registry, on loopback), checked with an independent client (`skopeo`).

use std::process::Command;

use deploykit_image::oci::{self, Platform};
use deploykit_image::{Image, Layer, Layout, Reference, Registry};
use deploykit_testing::registry::{LocalRegistry, PASSWORD, USER};

fn registry(auth: bool) -> LocalRegistry {
    assert!(
        deploykit_testing::registry::available(),
        "these tests need Debian's docker-registry (apt-get install docker-registry skopeo; \
         .ci/test installs them)"
    );
    LocalRegistry::start(auth).expect("the registry starts")
}

/// `skopeo` with `args`; its stdout, or a panic with its stderr.
fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("skopeo runs (apt-get install skopeo)");
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An image of a small file and a 300 KiB one (several chunks at 64 KiB).
fn app_image(layout: &Layout, marker: &str) -> deploykit_image::Built {
    let mut small = Layer::new();
    small
        .add_bytes(
            "srv/index.html",
            format!("<h1>{marker}</h1>").into_bytes(),
            0o644,
        )
        .unwrap();
    let mut big = Layer::new();
    let noise: Vec<u8> = (0..300 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    big.add_bytes("srv/big.bin", noise, 0o644).unwrap();
    Image::scratch()
        .layer(big)
        .layer(small)
        .entrypoint(["/srv/server"])
        .env("MODE", "production")
        .port(8080)
        .build(layout, marker)
        .unwrap()
}

fn client() -> Registry {
    Registry::new().chunk_size(64 * 1024).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_image_is_what_skopeo_reads_back() {
    let registry = registry(false);
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open_or_create(dir.path()).unwrap();
    let built = app_image(&layout, "v1");
    let target: Reference = format!("{}/shop/web:v1", registry.host()).parse().unwrap();
    let report = client()
        .push(&layout, &built.descriptor, &target, &[])
        .await
        .unwrap();
    assert_eq!(report.digest, built.descriptor.digest);
    assert_eq!((report.uploaded, report.present, report.mounted), (3, 0, 0));

    let pinned = target.with_digest(&report.digest).unwrap().to_string();
    let raw = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{pinned}"),
    ]);
    assert_eq!(
        oci::sha256(raw.as_bytes()),
        report.digest,
        "the registry serves our manifest bytes"
    );
    let inspect: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{}", target),
    ]))
    .unwrap();
    assert_eq!(
        inspect["Digest"],
        report.digest.as_str(),
        "the tag points at the digest"
    );
    let layers: Vec<&str> = built
        .manifest
        .layers
        .iter()
        .map(|l| l.digest.as_str())
        .collect();
    assert_eq!(inspect["Layers"], serde_json::json!(layers));
    assert_eq!(inspect["Env"], serde_json::json!(["MODE=production"]));

    // A copy to a directory holds our layers byte for byte.
    let copy = tempfile::tempdir().unwrap();
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{pinned}"),
        &format!("dir:{}", copy.path().display()),
    ]);
    for layer in &built.manifest.layers {
        let copied = std::fs::read(copy.path().join(&layer.digest[7..])).unwrap();
        assert_eq!(copied, layout.read_blob(&layer.digest).unwrap());
    }
    // And skopeo reads the layout deploykit wrote.
    let local: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        &format!("oci:{}:v1", dir.path().display()),
    ]))
    .unwrap();
    assert_eq!(local["Digest"], report.digest.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushing_again_sends_no_blob_and_another_repository_mounts_them() {
    let registry = registry(false);
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open_or_create(dir.path()).unwrap();
    let built = app_image(&layout, "v1");
    let web: Reference = format!("{}/shop/web:v1", registry.host()).parse().unwrap();
    client()
        .push(&layout, &built.descriptor, &web, &[])
        .await
        .unwrap();

    let again = client()
        .push(&layout, &built.descriptor, &web, &[])
        .await
        .unwrap();
    assert_eq!(
        (again.uploaded, again.uploaded_bytes, again.present),
        (0, 0, 3)
    );

    let mirror: Reference = format!("{}/mirror/web:v1", registry.host())
        .parse()
        .unwrap();
    let mounted = client()
        .push(
            &layout,
            &built.descriptor,
            &mirror,
            &["shop/web".to_string()],
        )
        .await
        .unwrap();
    assert_eq!((mounted.mounted, mounted.uploaded), (3, 0), "{mounted:?}");
    skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{mirror}"),
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_behind_a_password_takes_only_the_right_one() {
    let registry = registry(true);
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open_or_create(dir.path()).unwrap();
    let built = app_image(&layout, "v1");
    let target: Reference = format!("{}/shop/web:v1", registry.host()).parse().unwrap();

    let e = client()
        .push(&layout, &built.descriptor, &target, &[])
        .await
        .unwrap_err();
    assert!(
        e.chain().contains("asks for a user and password"),
        "{}",
        e.chain()
    );
    let e = client()
        .credentials(USER, "wrong")
        .push(&layout, &built.descriptor, &target, &[])
        .await
        .unwrap_err();
    assert!(
        e.chain().contains("refused these credentials"),
        "{}",
        e.chain()
    );
    assert!(
        skopeo_fails(&[
            "inspect",
            "--tls-verify=false",
            "--creds",
            &format!("{USER}:{PASSWORD}"),
            &format!("docker://{target}")
        ]),
        "nothing was pushed by the refused attempts"
    );

    let report = client()
        .credentials(USER, PASSWORD)
        .push(&layout, &built.descriptor, &target, &[])
        .await
        .unwrap();
    let inspect = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        &format!("{USER}:{PASSWORD}"),
        &format!("docker://{target}"),
    ]);
    assert!(inspect.contains(&report.digest));
}

fn skopeo_fails(args: &[&str]) -> bool {
    !Command::new("skopeo")
        .args(args)
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_on_a_base_pulled_by_digest_keeps_the_base_layers_and_settings() {
    let registry = registry(false);
    // A base image, pushed by one build...
    let base_dir = tempfile::tempdir().unwrap();
    let base_layout = Layout::open_or_create(base_dir.path()).unwrap();
    let mut os = Layer::new();
    os.add_bytes("etc/os-release", b"ID=deploykit-test\n".to_vec(), 0o644)
        .unwrap();
    os.add_bytes("bin/busybox", b"not really".to_vec(), 0o755)
        .unwrap();
    let base = Image::scratch()
        .layer(os)
        .env("PATH", "/bin")
        .user("65532")
        .cmd(["sh"])
        .build(&base_layout, "base")
        .unwrap();
    let base_ref: Reference = format!("{}/base/os:1", registry.host()).parse().unwrap();
    let pushed = client()
        .push(&base_layout, &base.descriptor, &base_ref, &[])
        .await
        .unwrap();

    // ... pulled by digest into another layout, and built on.
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open_or_create(dir.path()).unwrap();
    let pinned = base_ref.with_digest(&pushed.digest).unwrap();
    let pulled = client()
        .pull(&pinned, &layout, &Platform::host())
        .await
        .unwrap();
    assert_eq!(pulled.descriptor.digest, pushed.digest);
    let mut app = Layer::new();
    app.add_bytes("srv/server", b"#!/bin/sh\n".to_vec(), 0o755)
        .unwrap();
    let built = Image::on(pulled)
        .layer(app)
        .entrypoint(["/srv/server"])
        .env("MODE", "production")
        .build(&layout, "app")
        .unwrap();
    assert_eq!(built.manifest.layers[0], base.manifest.layers[0]);
    assert_eq!(built.config.rootfs.diff_ids.len(), 2);
    let run = &built.config.config;
    assert_eq!(
        run.env,
        Some(vec!["PATH=/bin".into(), "MODE=production".into()])
    );
    assert_eq!(run.user.as_deref(), Some("65532"));
    assert_eq!(run.cmd, None, "a new entrypoint drops the base's arguments");

    let target: Reference = format!("{}/shop/app:v1", registry.host()).parse().unwrap();
    let report = client()
        .push(
            &layout,
            &built.descriptor,
            &target,
            &["base/os".to_string()],
        )
        .await
        .unwrap();
    assert_eq!(
        (report.mounted, report.uploaded),
        (1, 2),
        "the base layer is mounted: {report:?}"
    );

    // A tag the registry does not have, and a digest it does not have, are not found.
    let missing: Reference = format!("{}/base/os:2", registry.host()).parse().unwrap();
    let e = client()
        .pull(&missing, &layout, &Platform::host())
        .await
        .unwrap_err();
    assert!(matches!(e, deploykit_core::Error::NotFound { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_blob_changed_on_disk_is_refused_and_nothing_is_tagged() {
    let registry = registry(false);
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open_or_create(dir.path()).unwrap();
    let built = app_image(&layout, "v1");
    let small = &built.manifest.layers[1];
    std::fs::write(layout.blob_path(&small.digest).unwrap(), b"tampered").unwrap();
    let target: Reference = format!("{}/shop/web:v1", registry.host()).parse().unwrap();
    let e = client()
        .push(&layout, &built.descriptor, &target, &[])
        .await
        .unwrap_err();
    assert!(e.chain().contains(&small.digest), "{}", e.chain());
    assert!(skopeo_fails(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{target}")
    ]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_is_not_there_is_an_error_naming_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::open_or_create(dir.path()).unwrap();
    let built = app_image(&layout, "v1");
    let target: Reference = format!("127.0.0.1:{port}/shop/web:v1").parse().unwrap();
    let quick = deploykit_core::retry::RetryPolicy::default()
        .with_max_attempts(2)
        .unwrap();
    let e = client()
        .retry(quick)
        .push(&layout, &built.descriptor, &target, &[])
        .await
        .unwrap_err();
    assert!(
        e.chain().contains(&format!("127.0.0.1:{port}")),
        "{}",
        e.chain()
    );
}
