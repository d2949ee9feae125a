//! Fetching from `oci:` layouts, which we read directly: every byte must
//! equal the layout's, platform choice must follow the index, damage must
//! fail clearly, and no skopeo may run.
//!
//! This binary puts a fake `skopeo` first on `PATH` that only leaves a
//! mark, so any attempt to start skopeo (proxy or `inspect`) is seen. It
//! holds only `oci:` tests, so changing `PATH` for the whole process is
//! safe.

mod oci_fetch_common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cfs_oci::fetch::{FetchError, Source};
use oci_fetch_common::*;

/// Installs the fake skopeo once; returns the file it marks when run.
fn skopeo_marker() -> &'static Path {
    static MARKER: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, marker) = MARKER.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("skopeo-was-run");
        let fake = dir.path().join("skopeo");
        std::fs::write(
            &fake,
            format!("#!/bin/sh\necho \"$@\" >> '{}'\nexit 1\n", marker.display()),
        )
        .expect("writing the fake skopeo");
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![dir.path().to_owned()];
        paths.extend(std::env::split_paths(&path));
        std::env::set_var("PATH", std::env::join_paths(paths).expect("valid PATH"));
        (dir, marker)
    });
    marker
}

fn assert_no_skopeo() {
    let marker = skopeo_marker();
    assert!(
        !marker.exists(),
        "skopeo was run: {}",
        std::fs::read_to_string(marker).unwrap_or_default()
    );
}

fn open(reference: &str, platform: Option<&str>) -> Result<Source, FetchError> {
    skopeo_marker();
    Source::open(reference, &options(platform))
}

#[test]
fn layout_bytes_are_read_exactly_for_each_platform() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = write_test_layout(dir.path());
    let reference = format!("oci:{}:{TAG}", dir.path().display());
    for platform in ["linux/amd64", "linux/arm64"] {
        let source = open(&reference, Some(platform)).expect("opening");
        let image = layout.image(platform).expect("in the layout");
        assert_identical(&source, image, layout.index.as_ref());
    }
    match host_image(&layout) {
        Some(image) => {
            let source = open(&reference, None).expect("opening");
            assert_identical(&source, image, layout.index.as_ref());
        }
        None => println!("skipped the default platform: the host is neither amd64 nor arm64"),
    }
    // Without a tag: the layout's only image.
    let untagged = format!("oci:{}", dir.path().display());
    let source = open(&untagged, Some("linux/arm64")).expect("opening");
    assert_eq!(
        source.manifest().digest.to_string(),
        layout.image("linux/arm64").expect("arm64").manifest.digest
    );
    assert_no_skopeo();
}

#[test]
fn single_image_layouts_have_no_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let written = cfs_tests::oci_layout::write_layout(
        dir.path(),
        TAG,
        &[cfs_tests::oci_layout::ImageSpec::linux(
            "riscv64",
            vec![cfs_tests::oci_layout::LayerSpec {
                tar: cfs_tests::oci_layout::tar_archive(&[("a", b"b")]),
                blob: cfs_tests::oci_layout::LayerBlob::Zstd,
            }],
        )],
    )
    .expect("writing");
    // The platform only chooses from an index; a lone image is taken as is.
    let source = open(&format!("oci:{}:{TAG}", dir.path().display()), None).expect("opening");
    assert_identical(&source, &written.images[0], None);
    assert_no_skopeo();
}

#[test]
fn layout_mistakes_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_test_layout(dir.path());
    let base = dir.path().display().to_string();
    let missing = open(&format!("oci:{base}:nope"), None).expect_err("no such tag");
    assert!(
        matches!(missing, FetchError::TagNotFound { .. }),
        "{missing}"
    );
    assert!(missing.to_string().contains("\"nope\""), "{missing}");
    let platform = open(&format!("oci:{base}:{TAG}"), Some("linux/s390x")).expect_err("absent");
    assert!(
        platform.to_string().contains("linux/amd64, linux/arm64"),
        "{platform}"
    );
    let nowhere = open("oci:/nonexistent/layout:x", None).expect_err("no layout");
    assert!(
        nowhere.to_string().contains("/nonexistent/layout"),
        "{nowhere}"
    );
    let bad = open("docker:/x", None).expect_err("unknown transport");
    assert!(matches!(bad, FetchError::InvalidReference(_)), "{bad}");
    assert_no_skopeo();
}

#[test]
fn corrupt_metadata_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = write_test_layout(dir.path());
    let image = layout.image("linux/arm64").expect("arm64");
    let config = image.config.digest.trim_start_matches("sha256:");
    flip_byte(&dir.path().join("blobs/sha256").join(config));
    let reference = format!("oci:{}:{TAG}", dir.path().display());
    // The config is fetched when first needed, and checked then.
    let source = open(&reference, Some("linux/arm64")).expect("the manifest is intact");
    let err = source.config().expect_err("corrupt config");
    assert!(matches!(err, FetchError::Verify { .. }), "{err}");
    assert!(err.to_string().contains(&image.config.digest), "{err}");
    let layer = &source.manifest().manifest.layers()[0];
    let Err(err) = source.open_layer(layer) else {
        panic!("layers need the config")
    };
    assert!(matches!(err, FetchError::Verify { .. }), "{err}");
    // The other platform is untouched.
    let other = open(&reference, Some("linux/amd64")).expect("amd64 still opens");
    other.config().expect("amd64's config is intact");
    assert_no_skopeo();
}

#[test]
fn broken_layers_fail_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = write_broken_layout(dir.path());
    let image = &layout.images[0];
    let blob = image.layers[2].blob.digest.trim_start_matches("sha256:");
    flip_byte(&dir.path().join("blobs/sha256").join(blob));
    let source = open(&format!("oci:{}:{TAG}", dir.path().display()), None).expect("opening");
    let [truncated, wrong, corrupt] = broken_layer_errors(&source, image);
    assert!(
        truncated.contains("gzip layer stream is corrupt or truncated"),
        "{truncated}"
    );
    assert!(wrong.contains(&image.layers[1].diff_id), "{wrong}");
    assert!(corrupt.contains(&image.layers[2].blob.digest), "{corrupt}");
    // A consumer that stops early still learns of the damage from finish().
    let layers = source.manifest().manifest.layers();
    let mut partial = source.open_layer(&layers[2]).expect("opening");
    let mut first = [0u8; 16];
    std::io::Read::read_exact(&mut partial, &mut first).expect("the start reads");
    assert!(partial.finish().is_err());
    assert_no_skopeo();
}

#[test]
fn layers_open_concurrently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = write_test_layout(dir.path());
    let image = layout.image("linux/amd64").expect("amd64");
    let source = open(
        &format!("oci:{}:{TAG}", dir.path().display()),
        Some("linux/amd64"),
    )
    .expect("opening");
    let layers = source.manifest().manifest.layers();
    std::thread::scope(|scope| {
        for (descriptor, layer) in layers.iter().zip(&image.layers) {
            let source = &source;
            scope.spawn(move || {
                let tar = layer_tar(source, descriptor, &layer.diff_id).expect("reading");
                assert!(tar == layer.tar);
            });
        }
    });
    assert_no_skopeo();
}
