//! Build pipelines of real commands: artifacts by content digest, inputs passed on, cleanup
//! after success and failure, and every failure named.

use std::sync::Arc;
use std::time::Duration;

use deploykit_build::{CommandStage, Pipeline};
use deploykit_core::build::{BuildContext, BuildStage};
use deploykit_core::{Digest, Error};

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn stage(
    name: &str,
    steps: Vec<Vec<String>>,
    outputs: &[&str],
    cleanup: &[&str],
) -> Arc<dyn BuildStage> {
    Arc::new(
        CommandStage::builder()
            .name(name)
            .steps(steps)
            .outputs(outputs.iter().map(|o| (*o).into()).collect())
            .cleanup(cleanup.iter().map(Into::into).collect())
            .build()
            .expect("stage"),
    )
}

fn context(dir: &std::path::Path) -> BuildContext {
    let mut ctx = BuildContext::new(dir);
    ctx.variables.insert("VERSION".into(), "1.4.2".into());
    ctx
}

#[tokio::test]
async fn stages_run_in_order_and_outputs_are_digested() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::new(vec![
        stage(
            "prepare",
            vec![sh(
                "mkdir -p scratch && echo \"src $VERSION\" > scratch/src",
            )],
            &[],
            &["scratch"],
        ),
        stage(
            "compile",
            vec![sh("cp scratch/src app.bin"), sh("echo built >> app.bin")],
            &["app.bin"],
            &[],
        ),
        stage(
            "package",
            vec![sh("tar cf app.tar app.bin")],
            &["app.tar"],
            &[],
        ),
    ])
    .unwrap();
    let artifacts = pipeline
        .run(&context(dir.path()))
        .await
        .expect("build")
        .artifacts;
    assert_eq!(artifacts.len(), 2);
    assert_eq!(artifacts[0].name, "app.bin");
    assert_eq!(artifacts[0].digest, Digest::of_bytes(b"src 1.4.2\nbuilt\n"));
    assert_eq!(artifacts[0].size, 16);
    assert!(dir.path().join("app.tar").is_file());
    assert!(
        !dir.path().join("scratch").exists(),
        "prepare's scratch was cleaned up"
    );
    // The same inputs give the same artifact.
    let again = pipeline
        .run(&context(dir.path()))
        .await
        .expect("rebuild")
        .artifacts;
    assert_eq!(again[0].digest, artifacts[0].digest);
}

#[tokio::test]
async fn a_failing_step_is_named_and_everything_that_ran_is_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::new(vec![
        stage("prepare", vec![sh("mkdir scratch")], &[], &["scratch"]),
        stage(
            "test",
            vec![sh("true"), sh("echo '2 tests failed' >&2; exit 3")],
            &[],
            &[],
        ),
        stage("package", vec![sh("touch never")], &[], &[]),
    ])
    .unwrap();
    let err = pipeline.run(&context(dir.path())).await.unwrap_err();
    assert_eq!(
        err.chain(),
        "build stage test step 1 (sh) failed: exit status: 3: 2 tests failed"
    );
    assert!(!dir.path().join("scratch").exists());
    assert!(
        !dir.path().join("never").exists(),
        "no stage runs after a failure"
    );
}

#[tokio::test]
async fn validation_runs_before_anything_and_names_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::new(vec![
        stage("prepare", vec![sh("touch side-effect")], &[], &[]),
        stage(
            "compile",
            vec![vec!["no-such-compiler-xyz".into()]],
            &[],
            &[],
        ),
    ])
    .unwrap();
    let err = pipeline.run(&context(dir.path())).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid build.compile.steps[0]: program \"no-such-compiler-xyz\" is not on PATH or in the working directory"
    );
    assert!(!dir.path().join("side-effect").exists());
}

#[tokio::test]
async fn missing_outputs_timeouts_and_bad_stages_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let missing =
        Pipeline::new(vec![stage("compile", vec![sh("true")], &["app.bin"], &[])]).unwrap();
    assert!(
        missing
            .run(&ctx)
            .await
            .unwrap_err()
            .chain()
            .contains("declared output app.bin was not produced")
    );

    let slow = CommandStage::builder()
        .name("test")
        .steps(vec![sh("sleep 5")])
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let err = Pipeline::new(vec![Arc::new(slow)])
        .unwrap()
        .run(&ctx)
        .await
        .unwrap_err();
    assert!(
        err.chain().contains("still running after 200ms; killed"),
        "{}",
        err.chain()
    );

    let bad = |steps: Vec<Vec<String>>, outputs: Vec<deploykit_build::Output>| {
        CommandStage::builder()
            .name("s")
            .steps(steps)
            .outputs(outputs)
            .build()
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        bad(vec![], vec![]),
        "invalid build.s.steps: a stage needs at least one step"
    );
    assert_eq!(
        bad(vec![vec![]], vec![]),
        "invalid build.s.steps[0]: a command needs a program"
    );
    assert!(
        bad(vec![sh("true")], vec!["../escape".into()])
            .contains("must stay inside the working directory")
    );
    let twice = Pipeline::new(vec![
        stage("a", vec![sh("true")], &[], &[]),
        stage("a", vec![sh("true")], &[], &[]),
    ]);
    assert!(matches!(twice, Err(Error::InvalidSpec { .. })));
}
