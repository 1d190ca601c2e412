//! Signed provenance and SBOMs: what they say, where they are attached (an OCI layout, a real
//! registry), and an orchestrator that refuses — and audits — an image without a valid one:
//! unsigned, signed by another key, changed after signing, or a statement about another image.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::Value;

use deploykit_build::attest::{
    self, AttestationSource, Envelope, PROVENANCE, SBOM, SignatureVerifier, Signer,
};
use deploykit_build::{Build, BuildCache, CommandStage, ImageStage, Pipeline};
use deploykit_core::audit::{AuditAction, AuditOutcome};
use deploykit_core::build::{ArtifactVerifier, BuildContext, BuildStage};
use deploykit_core::{
    Actor, DeployRequest, Digest, EnvironmentKind, EnvironmentName, EnvironmentSpec, Orchestrator,
    Phase, ServiceId, ServiceSpec,
};
use deploykit_image::oci::{self, Manifest};
use deploykit_image::{Layout, Reference, Registry};
use deploykit_testing::registry::LocalRegistry;
use deploykit_testing::{MemoryStore, MemoryTarget, SimCluster};

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// A build of `page` into an image in `dir/layout`.
async fn build(dir: &std::path::Path, page: &str) -> Build {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/index.html"), page).unwrap();
    let compile: Arc<dyn BuildStage> = Arc::new(
        CommandStage::builder()
            .name("compile")
            .steps(vec![sh("mkdir -p dist && cp src/index.html dist/")])
            .inputs(vec!["src".into()])
            .outputs(vec!["dist".into()])
            .build()
            .unwrap(),
    );
    let package: Arc<dyn BuildStage> = Arc::new(
        ImageStage::builder()
            .image_name("web")
            .layout("layout")
            .files(vec![("/srv/www".into(), "dist".into())])
            .build(),
    );
    Pipeline::new(vec![compile, package])
        .unwrap()
        .with_cache(BuildCache::new(Arc::new(MemoryTarget::new()), ""), "web")
        .run(&BuildContext::new(dir))
        .await
        .unwrap()
}

fn digest_of(build: &Build) -> Digest {
    build.deployable().unwrap().digest.clone()
}

fn statement_of(layout: &Layout, image: &str, predicate: &str) -> Value {
    for referrer in layout.referrers(image).unwrap() {
        let manifest: Manifest =
            oci::parse("m", &layout.read_blob(&referrer.digest).unwrap()).unwrap();
        let envelope: Envelope =
            oci::parse("e", &layout.read_blob(&manifest.layers[0].digest).unwrap()).unwrap();
        let payload = base64::engine::general_purpose::STANDARD
            .decode(&envelope.payload)
            .unwrap();
        let statement: Value = serde_json::from_slice(&payload).unwrap();
        if statement["predicateType"] == predicate {
            return statement;
        }
    }
    panic!("no {predicate} statement for {image}");
}

fn ids() -> (ServiceId, EnvironmentName) {
    (
        ServiceId::new("web").unwrap(),
        EnvironmentName::new("production").unwrap(),
    )
}

#[tokio::test]
async fn the_provenance_names_the_builder_inputs_and_commands_and_the_sbom_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let built = build(dir.path(), "<h1>v1</h1>").await;
    let signer = Signer::from_seed([1; 32]);
    let signed = attest::sign_build(
        "web",
        &built,
        &signer,
        "2026-12-07T00:00:00Z",
        "2026-12-07T00:00:01Z",
    )
    .unwrap();
    assert_eq!(signed.len(), 2);
    let layout = Layout::open(dir.path().join("layout")).unwrap();
    let image = digest_of(&built);

    let provenance = statement_of(&layout, image.as_str(), PROVENANCE);
    assert_eq!(provenance["_type"], attest::STATEMENT);
    assert_eq!(
        format!(
            "sha256:{}",
            provenance["subject"][0]["digest"]["sha256"]
                .as_str()
                .unwrap()
        ),
        image.as_str()
    );
    let predicate = &provenance["predicate"];
    assert_eq!(predicate["runDetails"]["builder"]["id"], attest::BUILDER_ID);
    let deps = predicate["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap();
    let page = blake3::hash(b"<h1>v1</h1>").to_hex().to_string();
    assert!(
        deps.contains(
            &serde_json::json!({"uri": "file:src/index.html", "digest": {"blake3": page}})
        ),
        "{deps:?}"
    );
    let stages = &predicate["buildDefinition"]["externalParameters"]["stages"];
    assert_eq!(stages[0]["name"], "compile");
    assert_eq!(
        stages[0]["parameters"]["steps"][0][2],
        "mkdir -p dist && cp src/index.html dist/"
    );

    let sbom = statement_of(&layout, image.as_str(), SBOM);
    let components = sbom["predicate"]["components"].as_array().unwrap();
    let sha = format!(
        "{:x}",
        <sha2::Sha256 as sha2::Digest>::digest(b"<h1>v1</h1>")
    );
    assert_eq!(components.len(), 1, "{components:?}");
    assert_eq!(components[0]["name"], "/srv/www/index.html");
    assert_eq!(components[0]["hashes"][0]["content"], sha.as_str());
}

#[tokio::test]
async fn only_an_image_with_a_provenance_signed_by_the_trusted_key_passes() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::from_seed([1; 32]);
    let v1 = build(dir.path(), "<h1>v1</h1>").await;
    attest::sign_build("web", &v1, &signer, "t0", "t1").unwrap();
    let v1 = digest_of(&v1);
    let layout_dir = dir.path().join("layout");
    let verifier = SignatureVerifier::new(
        signer.public(),
        AttestationSource::Layout(layout_dir.clone()),
    );
    let (web, production) = ids();
    verifier
        .verify(&web, &production, &v1)
        .await
        .expect("signed by the trusted key");

    // Unsigned: a second image nobody signed.
    let v2 = digest_of(&build(dir.path(), "<h1>v2</h1>").await);
    let e = verifier
        .verify(&web, &production, &v2)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("it is unsigned"), "{e}");

    // Signed by another key.
    let mallory = Signer::from_seed([9; 32]);
    let unsigned_build = build(dir.path(), "<h1>v2</h1>").await;
    attest::sign_build("web", &unsigned_build, &mallory, "t0", "t1").unwrap();
    let e = verifier
        .verify(&web, &production, &v2)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not signed by key"), "{e}");

    // v1's real signed provenance, replayed onto v2: it is about another image.
    let layout = Layout::open(&layout_dir).unwrap();
    let v1_statement = statement_of(&layout, v1.as_str(), PROVENANCE);
    let subject = oci::Descriptor::of(oci::MANIFEST, &layout.read_blob(v2.as_str()).unwrap());
    attest::attach(
        &layout,
        &subject,
        &Envelope::sign(&v1_statement, &signer),
        PROVENANCE,
    )
    .unwrap();
    let e = verifier
        .verify(&web, &production, &v2)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("its statement is about {v1}")), "{e}");

    // A statement about v2, signed, then changed: the signature no longer verifies.
    let mut forged = Envelope::sign(
        &attest::statement("web", v2.as_str(), PROVENANCE, serde_json::json!({})),
        &signer,
    );
    let mut statement = attest::statement(
        "web",
        v2.as_str(),
        PROVENANCE,
        serde_json::json!({"builder": "me"}),
    );
    statement["predicate"]["extra"] = Value::Bool(true);
    forged.payload =
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&statement).unwrap());
    attest::attach(&layout, &subject, &forged, PROVENANCE).unwrap();
    let e = verifier
        .verify(&web, &production, &v2)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("does not verify: the statement was changed after it was signed"),
        "{e}"
    );

    // Not an image at all.
    let e = verifier
        .verify(&web, &production, &Digest::of_bytes(b"binary"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an image digest"), "{e}");
}

#[tokio::test]
async fn the_orchestrator_refuses_and_audits_an_unsigned_image() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::from_seed([1; 32]);
    let signed = build(dir.path(), "<h1>v1</h1>").await;
    attest::sign_build("web", &signed, &signer, "t0", "t1").unwrap();
    let signed = digest_of(&signed);
    let unsigned = digest_of(&build(dir.path(), "<h1>v2</h1>").await);

    // The simulated cluster runs on tokio's clock: paused once the real builds are done.
    tokio::time::pause();
    let sim = SimCluster::new();
    let production = EnvironmentSpec::builder()
        .name("production")
        .kind(EnvironmentKind::Production)
        .replicas(2)
        .build()
        .unwrap();
    let orchestrator = Orchestrator::builder(MemoryStore::new())
        .environment(production, Arc::new(sim.clone()))
        .clock(Arc::new(sim.clock()))
        .artifact_verifier(Arc::new(SignatureVerifier::new(
            signer.public(),
            AttestationSource::Layout(dir.path().join("layout")),
        )))
        .open()
        .await
        .unwrap();
    let web = ServiceSpec::builder()
        .name("web")
        .port(8080)
        .build()
        .unwrap();
    let request = |artifact: &Digest, label: &str| {
        DeployRequest::builder()
            .service(web.clone())
            .environment("production")
            .artifact(artifact.clone())
            .label(label)
            .requested_by(Actor::new("alice"))
            .build()
    };
    let e = orchestrator
        .deploy(request(&unsigned, "v2"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("it is unsigned"), "{e}");
    let id = orchestrator.deploy(request(&signed, "v1")).await.unwrap();
    assert_eq!(
        orchestrator.wait(&id).await.unwrap().phase,
        Phase::Succeeded
    );

    let refused: Vec<_> = orchestrator
        .audit_log()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.outcome == AuditOutcome::Denied)
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(
        (refused[0].actor.to_string(), refused[0].action),
        ("alice".to_string(), AuditAction::Deploy)
    );
    assert!(
        refused[0].detail.contains("unsigned"),
        "{}",
        refused[0].detail
    );
    orchestrator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestations_pushed_beside_the_image_are_found_and_checked_in_the_registry() {
    let registry = LocalRegistry::start(false).expect("the registry starts");
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::from_seed([1; 32]);
    let built = build(dir.path(), "<h1>v1</h1>").await;
    let referrers = attest::sign_build("web", &built, &signer, "t0", "t1").unwrap();
    let (layout, descriptor) =
        deploykit_build::image_stage::image_descriptor(built.deployable().unwrap()).unwrap();
    let target: Reference = format!("{}/shop/web", registry.host()).parse().unwrap();
    let target = target.with_digest(&descriptor.digest).unwrap();
    let client = Arc::new(Registry::new());
    client
        .push(&layout, &descriptor, &target, &[])
        .await
        .unwrap();
    for (layout, referrer) in &referrers {
        client
            .push_referrer(layout, referrer, &target)
            .await
            .unwrap();
    }
    // Pushing them again changes nothing.
    for (layout, referrer) in &referrers {
        client
            .push_referrer(layout, referrer, &target)
            .await
            .unwrap();
    }
    let found = client.referrers(&target).await.unwrap();
    assert_eq!(found.len(), 2, "{found:?}");

    // The fallback tag is an OCI index an independent client reads.
    let tag = deploykit_image::registry::fallback_tag(&descriptor.digest);
    let raw = std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/shop/web:{tag}", registry.host()),
        ])
        .output()
        .unwrap();
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    let index: Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);

    let verifier = SignatureVerifier::new(
        signer.public(),
        AttestationSource::Registry {
            registry: client.clone(),
            repository: target.name(),
        },
    );
    let (web, production) = ids();
    verifier
        .verify(&web, &production, &digest_of(&built))
        .await
        .expect("verified from the registry");
    let other = SignatureVerifier::new(
        Signer::from_seed([2; 32]).public(),
        AttestationSource::Registry {
            registry: client,
            repository: target.name(),
        },
    );
    assert!(
        other
            .verify(&web, &production, &digest_of(&built))
            .await
            .is_err()
    );
}
