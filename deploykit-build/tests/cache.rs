//! The build cache: unchanged stages are skipped and their outputs restored; a changed input
//! re-runs exactly the stages downstream of it; a cache that lost or mangled content makes a
//! stage run again, never a wrong output; secrets never reach the cache in clear.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;

use deploykit_build::{BuildCache, CommandStage, ImageStage, Outcome, Output, Pipeline};
use deploykit_core::build::{ArtifactKind, BuildContext, BuildStage};
use deploykit_testing::MemoryTarget;

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// A stage that concatenates its inputs into `out/<name>` and logs that it ran.
fn concat(name: &str, inputs: &[String]) -> Arc<dyn BuildStage> {
    let script = format!(
        "echo {name} >> runs.log && mkdir -p out && cat $(find {} -type f | sort) > out/{name}",
        inputs.join(" ")
    );
    Arc::new(
        CommandStage::builder()
            .name(name)
            .steps(vec![sh(&script)])
            .inputs(inputs.iter().map(Into::into).collect())
            .outputs(vec![Output::new(format!("out/{name}"), ArtifactKind::File)])
            .build()
            .unwrap(),
    )
}

fn ran(dir: &Path) -> Vec<String> {
    let log = std::fs::read_to_string(dir.join("runs.log")).unwrap_or_default();
    std::fs::remove_file(dir.join("runs.log")).ok();
    log.lines().map(str::to_string).collect()
}

fn cached(stages: Vec<Arc<dyn BuildStage>>, target: &Arc<MemoryTarget>) -> Pipeline {
    Pipeline::new(stages)
        .unwrap()
        .with_cache(BuildCache::new(target.clone(), "cache"), "web")
}

#[tokio::test]
async fn an_unchanged_build_runs_nothing_and_restores_deleted_outputs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/a.js"), "a").unwrap();
    std::fs::write(dir.path().join("src/b.js"), "b").unwrap();
    let target = Arc::new(MemoryTarget::new());
    let pipeline = || {
        cached(
            vec![
                concat("compile", &["src".into()]),
                concat("test", &["out/compile".into()]),
            ],
            &target,
        )
    };
    let ctx = BuildContext::new(dir.path());
    let first = pipeline().run(&ctx).await.unwrap();
    assert_eq!(ran(dir.path()), ["compile", "test"]);
    assert!(
        first.explain().contains("first build with this cache"),
        "{}",
        first.explain()
    );

    std::fs::remove_dir_all(dir.path().join("out")).unwrap();
    let second = pipeline().run(&ctx).await.unwrap();
    assert!(ran(dir.path()).is_empty(), "nothing ran");
    assert!(
        second
            .stages
            .iter()
            .all(|s| matches!(s.outcome, Outcome::Reused { .. }))
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/compile")).unwrap(),
        "ab"
    );
    assert_eq!(
        second.artifacts, first.artifacts,
        "the same artifacts, same paths"
    );

    std::fs::write(dir.path().join("src/b.js"), "B").unwrap();
    let third = pipeline().run(&ctx).await.unwrap();
    assert_eq!(ran(dir.path()), ["compile", "test"]);
    let explained = third.explain();
    assert!(
        explained.contains("compile [Compile]: ran (input src/b.js changed)"),
        "{explained}"
    );
    assert!(
        explained.contains("test [Test]: ran (input out/compile changed)"),
        "{explained}"
    );
}

#[tokio::test]
async fn an_output_that_comes_out_the_same_stops_the_rebuild_there() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.js"), "let x = 1; // one").unwrap();
    let target = Arc::new(MemoryTarget::new());
    // "Minify": strip the comment, so a comment change gives the same bundle.
    let minify: Arc<dyn BuildStage> = Arc::new(
        CommandStage::builder()
            .name("compile")
            .steps(vec![sh(
                "echo compile >> runs.log && sed 's#//.*##' app.js > app.min.js",
            )])
            .inputs(vec!["app.js".into()])
            .outputs(vec![Output::new("app.min.js", ArtifactKind::Static)])
            .build()
            .unwrap(),
    );
    let stages = vec![minify, concat("package", &["app.min.js".into()])];
    let ctx = BuildContext::new(dir.path());
    cached(stages.clone(), &target).run(&ctx).await.unwrap();
    assert_eq!(ran(dir.path()), ["compile", "package"]);
    std::fs::write(dir.path().join("app.js"), "let x = 1; // uno").unwrap();
    let build = cached(stages, &target).run(&ctx).await.unwrap();
    assert_eq!(ran(dir.path()), ["compile"], "{}", build.explain());
    assert_eq!(build.artifacts[0].kind, ArtifactKind::Static);
}

#[tokio::test]
async fn a_cache_that_lost_or_mangled_content_makes_the_stage_run_again() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "hello").unwrap();
    let target = Arc::new(MemoryTarget::new());
    let stages = vec![concat("compile", &["in.txt".into()])];
    let ctx = BuildContext::new(dir.path());
    cached(stages.clone(), &target).run(&ctx).await.unwrap();
    ran(dir.path());

    // A blob flipped on the store: the restore notices, the stage runs, the output is right.
    let blob = target
        .keys()
        .into_iter()
        .find(|(k, _)| k.starts_with("cache/blobs/"))
        .unwrap()
        .0;
    target.corrupt(&blob, 0);
    std::fs::write(dir.path().join("out/compile"), "stale").unwrap();
    let build = cached(stages.clone(), &target).run(&ctx).await.unwrap();
    assert_eq!(ran(dir.path()), ["compile"]);
    assert!(
        build
            .explain()
            .contains("cached outputs could not be restored"),
        "{}",
        build.explain()
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/compile")).unwrap(),
        "hello"
    );

    // An entry whose blob is gone altogether: the same.
    for (key, _) in target.keys() {
        if key.starts_with("cache/blobs/") {
            deploykit_core::backup::BackupTarget::delete(target.as_ref(), &key)
                .await
                .unwrap();
        }
    }
    std::fs::remove_file(dir.path().join("out/compile")).unwrap();
    cached(stages, &target).run(&ctx).await.unwrap();
    assert_eq!(ran(dir.path()), ["compile"]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/compile")).unwrap(),
        "hello"
    );
}

#[tokio::test]
async fn a_restored_directory_holds_exactly_what_was_cached() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "x").unwrap();
    let target = Arc::new(MemoryTarget::new());
    let split: Arc<dyn BuildStage> = Arc::new(
        CommandStage::builder()
            .name("compile")
            .steps(vec![sh("mkdir -p dist/chunks && cp in.txt dist/app.js && cp in.txt dist/chunks/c1.js && chmod +x dist/app.js")])
            .inputs(vec!["in.txt".into()])
            .outputs(vec![Output::new("dist", ArtifactKind::Static)])
            .build()
            .unwrap(),
    );
    let ctx = BuildContext::new(dir.path());
    let first = cached(vec![split.clone()], &target)
        .run(&ctx)
        .await
        .unwrap();
    // Another tool left a stale chunk, and the bundle lost its mode.
    std::fs::write(dir.path().join("dist/chunks/old.js"), "stale").unwrap();
    std::fs::remove_file(dir.path().join("dist/app.js")).unwrap();
    let second = cached(vec![split], &target).run(&ctx).await.unwrap();
    assert!(matches!(second.stages[0].outcome, Outcome::Reused { .. }));
    assert!(
        !dir.path().join("dist/chunks/old.js").exists(),
        "a stale file is removed"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("dist/app.js"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "the executable bit is restored");
    assert_eq!(second.artifacts[0].digest, first.artifacts[0].digest);
}

#[tokio::test]
async fn secret_variables_reach_the_cache_only_as_digests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "x").unwrap();
    let target = Arc::new(MemoryTarget::new());
    let mut ctx = BuildContext::new(dir.path());
    ctx.variables
        .insert("NPM_TOKEN".into(), "npm_s3cr3t_value_1234".into());
    cached(vec![concat("compile", &["in.txt".into()])], &target)
        .run(&ctx)
        .await
        .unwrap();
    for (key, _) in target.keys() {
        let bytes = deploykit_core::backup::BackupTarget::get(target.as_ref(), &key)
            .await
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("npm_s3cr3t_value_1234"),
            "{key} holds the secret"
        );
    }
    // A new token re-runs the stage (its value is part of the key, by digest).
    ctx.variables.insert("NPM_TOKEN".into(), "npm_other".into());
    let build = cached(vec![concat("compile", &["in.txt".into()])], &target)
        .run(&ctx)
        .await
        .unwrap();
    assert!(
        build.explain().contains("variable NPM_TOKEN changed"),
        "{}",
        build.explain()
    );
}

#[tokio::test]
async fn an_image_stage_is_reused_only_while_its_image_is_in_the_layout() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("dist")).unwrap();
    std::fs::write(dir.path().join("dist/index.html"), "<h1>v1</h1>").unwrap();
    let target = Arc::new(MemoryTarget::new());
    let image: Arc<dyn BuildStage> = Arc::new(
        ImageStage::builder()
            .image_name("web")
            .layout("layout")
            .files(vec![("/srv/www".into(), "dist".into())])
            .build(),
    );
    let ctx = BuildContext::new(dir.path());
    let first = cached(vec![image.clone()], &target)
        .run(&ctx)
        .await
        .unwrap();
    let again = cached(vec![image.clone()], &target)
        .run(&ctx)
        .await
        .unwrap();
    assert!(matches!(again.stages[0].outcome, Outcome::Reused { .. }));
    assert_eq!(
        again.deployable().unwrap().digest,
        first.deployable().unwrap().digest
    );

    // The layout was wiped: the image is built again, with the same digest.
    std::fs::remove_dir_all(dir.path().join("layout")).unwrap();
    let rebuilt = cached(vec![image.clone()], &target)
        .run(&ctx)
        .await
        .unwrap();
    assert!(
        matches!(rebuilt.stages[0].outcome, Outcome::Ran(_)),
        "{}",
        rebuilt.explain()
    );
    assert_eq!(
        rebuilt.deployable().unwrap().digest,
        first.deployable().unwrap().digest
    );

    std::fs::write(dir.path().join("dist/index.html"), "<h1>v2</h1>").unwrap();
    let changed = cached(vec![image], &target).run(&ctx).await.unwrap();
    assert_ne!(
        changed.deployable().unwrap().digest,
        first.deployable().unwrap().digest
    );
    assert!(
        changed
            .explain()
            .contains("file /srv/www <- dist/index.html changed"),
        "{}",
        changed.explain()
    );
}

/// What stage `i` reads: some of the 4 source files, and some earlier stages' outputs.
type Reads = (BTreeSet<usize>, BTreeSet<usize>);

/// Random pipelines, and the source file that changes.
fn pipelines() -> impl Strategy<Value = (Vec<Reads>, usize)> {
    (2usize..6).prop_flat_map(|n| {
        let stages = (0..n)
            .map(|i| {
                (
                    prop::collection::btree_set(0usize..4, 0..3),
                    prop::collection::btree_set(0..i.max(1), 0..=i.min(2))
                        .prop_map(move |s| s.into_iter().filter(|d| *d < i).collect()),
                )
                    .prop_filter("a stage reads something", |(src, deps): &Reads| {
                        !src.is_empty() || !deps.is_empty()
                    })
            })
            .collect::<Vec<_>>();
        (stages, 0usize..4)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn a_changed_source_reruns_exactly_the_stages_downstream((stages, changed) in pipelines()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("src")).unwrap();
            for f in 0..4 {
                std::fs::write(dir.path().join(format!("src/{f}")), format!("{f}\n")).unwrap();
            }
            let build: Vec<Arc<dyn BuildStage>> = stages
                .iter()
                .enumerate()
                .map(|(i, (src, deps))| {
                    let inputs: Vec<String> = src
                        .iter()
                        .map(|f| format!("src/{f}"))
                        .chain(deps.iter().map(|d| format!("out/s{d}")))
                        .collect();
                    concat(&format!("s{i}"), &inputs)
                })
                .collect();
            let target = Arc::new(MemoryTarget::new());
            let ctx = BuildContext::new(dir.path());
            cached(build.clone(), &target).run(&ctx).await.unwrap();
            prop_assert_eq!(ran(dir.path()).len(), stages.len());

            std::fs::write(dir.path().join(format!("src/{changed}")), "changed\n").unwrap();
            let report = cached(build, &target).run(&ctx).await.unwrap();
            // Downstream: reads the file, or an output of a stage downstream.
            let mut downstream = BTreeMap::new();
            for (i, (src, deps)) in stages.iter().enumerate() {
                let hit = src.contains(&changed) || deps.iter().any(|d| downstream[d]);
                downstream.insert(i, hit);
            }
            let expected: Vec<String> =
                downstream.iter().filter(|(_, hit)| **hit).map(|(i, _)| format!("s{i}")).collect();
            prop_assert_eq!(ran(dir.path()), expected, "{}", report.explain());
            Ok(())
        })?;
    }
}
