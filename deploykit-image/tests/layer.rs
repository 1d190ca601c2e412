//! Layers are reproducible whatever the order files are added in, wherever they are read
//! from and whenever they were written; and they hold exactly what was added.

use std::collections::BTreeMap;
use std::io::Read;

use proptest::prelude::*;

use deploykit_image::Layer;

fn files() -> impl Strategy<Value = BTreeMap<String, (Vec<u8>, bool)>> {
    // Paths of 1-3 segments from a small alphabet (so directories are shared), long names
    // included (tar's 100-byte name limit needs the long-name extension).
    let segment = prop_oneof!["[a-c]{1,3}", "[a-z]{90,120}",];
    prop::collection::btree_map(
        prop::collection::vec(segment, 1..4).prop_map(|s| s.join("/")),
        (prop::collection::vec(any::<u8>(), 0..2000), any::<bool>()),
        1..12,
    )
    .prop_filter("no file is another's directory", |files| {
        !files
            .keys()
            .any(|a| files.keys().any(|b| b.starts_with(&format!("{a}/"))))
    })
}

fn mode(executable: bool) -> u32 {
    if executable { 0o755 } else { 0o644 }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_same_files_make_the_same_layer(files in files(), seed in any::<u64>()) {
        // One layer from bytes in path order...
        let mut a = Layer::new();
        for (path, (content, x)) in &files {
            a.add_bytes(path, content.clone(), mode(*x)).unwrap();
        }
        // ... one from files on disk, written in a shuffled order at different times.
        let dir = tempfile::tempdir().unwrap();
        let mut order: Vec<_> = files.iter().collect();
        let n = order.len();
        for i in 0..n {
            order.swap(i, (seed as usize).wrapping_add(i * 7) % n);
        }
        let mut b = Layer::new();
        for (i, (path, (content, x))) in order.iter().enumerate() {
            let on_disk = dir.path().join(format!("f{i}"));
            std::fs::write(&on_disk, content).unwrap();
            b.add_file(&format!("/{path}"), on_disk, mode(*x)).unwrap();
        }
        let (mut one, mut two) = (Vec::new(), Vec::new());
        let info = a.write(&mut one).unwrap();
        prop_assert_eq!(&info, &b.write(&mut two).unwrap());
        prop_assert_eq!(&one, &two);
        prop_assert_eq!(info.files, files.len());
        prop_assert_eq!(info.size, one.len() as u64);

        // The tarball holds exactly the files (and their directories), in path order, owned
        // by root at time 0, with their modes.
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(one.as_slice()));
        let mut seen = BTreeMap::new();
        let mut previous = String::new();
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().trim_end_matches('/').to_string();
            prop_assert!(path > previous, "{} after {}", path, previous);
            previous = path.clone();
            let header = entry.header();
            prop_assert_eq!(header.mtime().unwrap(), 0);
            prop_assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0));
            let mode = header.mode().unwrap();
            if header.entry_type().is_file() {
                let mut content = Vec::new();
                entry.read_to_end(&mut content).unwrap();
                seen.insert(path, (content, mode == 0o755));
            } else {
                prop_assert!(header.entry_type().is_dir());
                prop_assert_eq!(mode, 0o755);
            }
        }
        prop_assert_eq!(seen, files);
    }
}

#[test]
fn a_tree_keeps_links_and_the_executable_bit_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("assets/css")).unwrap();
    std::fs::write(dir.path().join("assets/css/site.css"), "body{}").unwrap();
    std::fs::write(dir.path().join("server"), "#!/bin/sh").unwrap();
    std::fs::set_permissions(
        dir.path().join("server"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    std::fs::set_permissions(
        dir.path().join("assets/css/site.css"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::symlink("css/site.css", dir.path().join("assets/site.css")).unwrap();
    let mut layer = Layer::new();
    layer.add_tree("/srv", dir.path()).unwrap();
    assert_eq!(
        layer.paths().collect::<Vec<_>>(),
        [
            "srv",
            "srv/assets",
            "srv/assets/css",
            "srv/assets/css/site.css",
            "srv/assets/site.css",
            "srv/server"
        ]
    );
    let mut out = Vec::new();
    layer.write(&mut out).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(out.as_slice()));
    let modes: BTreeMap<String, (u32, Option<String>)> = tar
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let link = e
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                (e.header().mode().unwrap(), link),
            )
        })
        .collect();
    assert_eq!(modes["srv/server"], (0o755, None));
    assert_eq!(modes["srv/assets/css/site.css"], (0o644, None));
    assert_eq!(
        modes["srv/assets/site.css"].1.as_deref(),
        Some("css/site.css")
    );
}

#[test]
fn a_missing_source_file_is_an_error_naming_it() {
    let mut layer = Layer::new();
    layer
        .add_file("srv/app", "/nonexistent/deploykit/app", 0o755)
        .unwrap();
    let e = layer.write(Vec::new()).unwrap_err();
    assert!(e.to_string().contains("image.layer.srv/app"), "{e}");
    assert!(
        e.chain().contains("/nonexistent/deploykit/app"),
        "{}",
        e.chain()
    );
}
