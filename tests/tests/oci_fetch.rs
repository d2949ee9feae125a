//! Fetching through skopeo: the test layout is copied with `skopeo copy`
//! to `oci-archive:`, `dir:`, `docker-archive:`, `containers-storage:`
//! (in a private store) and a real registry on 127.0.0.1, and what we
//! read back must be the layout's bytes. Skipped, with the reason printed,
//! when skopeo or the registry is not installed (`scripts/setup.sh`
//! installs them).
//!
//! The tests run one at a time: they count this process's skopeo
//! children to check that a dropped source leaves none behind.

mod oci_fetch_common;

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cfs_oci::fetch::{FetchError, Source};
use cfs_tests::registry::Registry;
use cfs_tests::tools::installed;
use oci_fetch_common::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether skopeo is there; prints why a test is skipped if not.
fn skopeo_available(test: &str) -> bool {
    let ok = installed("skopeo");
    if !ok {
        println!("skipped {test}: skopeo is not installed (run scripts/setup.sh)");
    }
    ok
}

/// `skopeo copy` with the given extra arguments, keeping every blob and
/// manifest as it is (skopeo would otherwise compress the plain layer);
/// panics with skopeo's message when it fails.
fn skopeo_copy(args: &[&str]) {
    let output = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet", "--preserve-digests"])
        .args(args)
        .output()
        .expect("running skopeo");
    assert!(
        output.status.success(),
        "skopeo copy {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Our skopeo child processes.
fn skopeo_children() -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // pid (comm) state ppid ...
            let Some((comm, rest)) = stat.split_once(") ") else {
                return false;
            };
            let parent = rest.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok());
            comm.ends_with("(skopeo") && parent == Some(me)
        })
        .collect()
}

/// Waits a little for skopeo children to exit, then insists.
fn assert_no_skopeo_children() {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !skopeo_children().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        skopeo_children(),
        Vec::<u32>::new(),
        "skopeo processes left"
    );
}

/// Opens `reference` for each platform of the test layout (and the
/// default), and checks every byte.
fn check_multi_platform(reference: &str, layout: &cfs_tests::oci_layout::WrittenLayout) {
    for platform in ["linux/amd64", "linux/arm64"] {
        let source = Source::open(reference, &options(Some(platform))).expect("opening");
        assert_identical(
            &source,
            layout.image(platform).expect("written"),
            layout.index.as_ref(),
        );
    }
    if let Some(image) = host_image(layout) {
        let source = Source::open(reference, &options(None)).expect("opening");
        assert_identical(&source, image, layout.index.as_ref());
    }
    assert_no_skopeo_children();
}

#[test]
fn oci_archive_and_dir_are_byte_identical() {
    let _serial = serial();
    if !skopeo_available("oci_archive_and_dir_are_byte_identical") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let layout_dir = dir.path().join("layout");
    let layout = write_test_layout(&layout_dir);
    let from = format!("oci:{}:{TAG}", layout_dir.display());
    let archive = format!(
        "oci-archive:{}:{TAG}",
        dir.path().join("image.tar").display()
    );
    skopeo_copy(&["--all", &from, &archive]);
    check_multi_platform(&archive, &layout);
    let plain = format!("dir:{}", dir.path().join("dir").display());
    skopeo_copy(&["--all", &from, &plain]);
    check_multi_platform(&plain, &layout);
}

#[test]
fn docker_archive_gives_the_same_layers() {
    let _serial = serial();
    if !skopeo_available("docker_archive_gives_the_same_layers") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let layout_dir = dir.path().join("layout");
    let layout = write_test_layout(&layout_dir);
    // Docker images cannot hold zstd layers: take the arm64 image, which
    // has none. An archive holds one image, so no platform is chosen.
    let image = layout.image("linux/arm64").expect("arm64");
    let from = format!("oci:{}:{TAG}", layout_dir.display());
    let archive = format!(
        "docker-archive:{}:cfs/test:{TAG}",
        dir.path().join("docker.tar").display()
    );
    let output = Command::new("skopeo")
        .args([
            "--override-arch",
            "arm64",
            "--insecure-policy",
            "copy",
            "--quiet",
        ])
        .args([&from, &archive])
        .output()
        .expect("running skopeo");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let source = Source::open(&archive, &options(None)).expect("opening");
    // A docker-archive holds a Docker manifest and uncompressed layers;
    // skopeo hands us its OCI translation.
    assert!(source.manifest().converted);
    assert_same_tars(&source, image);
    drop(source);
    assert_no_skopeo_children();
}

#[test]
fn containers_storage_gives_the_same_layers() {
    let _serial = serial();
    if !skopeo_available("containers_storage_gives_the_same_layers") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let layout_dir = dir.path().join("layout");
    let layout = write_test_layout(&layout_dir);
    let Some(image) = host_image(&layout) else {
        println!("skipped containers_storage_gives_the_same_layers: host is not amd64 or arm64");
        return;
    };
    // A private vfs store in the tempdir, so the host's storage is untouched.
    let store = format!(
        "[vfs@{}+{}]",
        dir.path().join("root").display(),
        dir.path().join("run").display()
    );
    let reference = format!("containers-storage:{store}localhost/cfs-fetch:{TAG}");
    let from = format!("oci:{}:{TAG}", layout_dir.display());
    let output = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet", &from, &reference])
        .output()
        .expect("running skopeo");
    if !output.status.success() {
        println!(
            "skipped containers_storage_gives_the_same_layers: containers-storage is unusable \
             here: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        return;
    }
    let source = Source::open(&reference, &options(None)).expect("opening");
    // The store keeps the manifest and config as pulled, but the layers
    // only uncompressed.
    let manifest = source.manifest();
    assert_eq!(manifest.digest.to_string(), image.manifest.digest);
    assert!(manifest.raw == image.manifest.bytes && !manifest.converted);
    assert!(source.config().expect("config").raw == image.config.bytes);
    assert_same_tars(&source, image);
    // The raw layer stream is the tar, checked against its diff_id.
    let layers = manifest.manifest.layers();
    let layer = source.open_layer(&layers[0]).expect("opening");
    assert_eq!(layer.digest().to_string(), image.layers[0].diff_id);
    drop(layer);
    drop(source);
    assert_no_skopeo_children();
}

#[test]
fn registry_over_plain_http() {
    let _serial = serial();
    if !skopeo_available("registry_over_plain_http") {
        return;
    }
    if !installed("docker-registry") {
        println!("skipped registry_over_plain_http: docker-registry is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let layout_dir = dir.path().join("layout");
    let layout = write_test_layout(&layout_dir);
    let registry = Registry::start(dir.path()).expect("docker-registry is installed");
    let from = format!("oci:{}:{TAG}", layout_dir.display());
    let image = format!("docker://{}/cfs/test:{TAG}", registry.address);
    skopeo_copy(&["--all", "--dest-tls-verify=false", &from, &image]);

    // TLS verification is on by default, and plain HTTP refused.
    let refused = Source::open(&image, &options(None)).expect_err("plain HTTP needs the flag");
    assert!(
        matches!(refused, FetchError::SkopeoInspect { .. }),
        "{refused}"
    );

    for platform in ["linux/amd64", "linux/arm64"] {
        let mut insecure = options(Some(platform));
        insecure.insecure_tls = true;
        let source = Source::open(&image, &insecure).expect("opening");
        assert_identical(
            &source,
            layout.image(platform).expect("written"),
            layout.index.as_ref(),
        );
    }
    assert_no_skopeo_children();
    drop(registry);
}

#[test]
fn skopeo_layers_stream_in_parallel_and_can_be_abandoned() {
    let _serial = serial();
    if !skopeo_available("skopeo_layers_stream_in_parallel_and_can_be_abandoned") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let layout_dir = dir.path().join("layout");
    let layout = write_test_layout(&layout_dir);
    let image = layout.image("linux/amd64").expect("amd64");
    let archive = format!(
        "oci-archive:{}:{TAG}",
        dir.path().join("image.tar").display()
    );
    skopeo_copy(&[
        "--all",
        &format!("oci:{}:{TAG}", layout_dir.display()),
        &archive,
    ]);
    let mut two = options(Some("linux/amd64"));
    two.max_parallel = std::num::NonZeroUsize::new(2).expect("non-zero");
    let source = Source::open(&archive, &two).expect("opening");
    let layers = source.manifest().manifest.layers();
    // More readers than proxy processes, each reading its layer at once.
    std::thread::scope(|scope| {
        for _ in 0..2 {
            for (descriptor, layer) in layers.iter().zip(&image.layers) {
                let source = &source;
                scope.spawn(move || {
                    let tar = layer_tar(source, descriptor, &layer.diff_id).expect("reading");
                    assert!(tar == layer.tar);
                });
            }
        }
    });
    assert!(skopeo_children().len() <= 2, "at most two proxies");
    drop(source);
    assert_no_skopeo_children();

    // A layer larger than what the channel and the pipe buffer, so that
    // its fetch is still running when we stop reading.
    let big_dir = dir.path().join("big");
    let big = cfs_tests::oci_layout::write_layout(
        &big_dir,
        TAG,
        &[cfs_tests::oci_layout::ImageSpec::linux(
            "amd64",
            vec![cfs_tests::oci_layout::LayerSpec {
                tar: cfs_tests::oci_layout::tar_archive(&[("big", &filler(9, 4 << 20))]),
                blob: cfs_tests::oci_layout::LayerBlob::Plain,
            }],
        )],
    )
    .expect("writing");
    let big_archive = format!("oci-archive:{}:{TAG}", dir.path().join("big.tar").display());
    skopeo_copy(&[&format!("oci:{}:{TAG}", big_dir.display()), &big_archive]);
    let mut one = options(None);
    one.max_parallel = std::num::NonZeroUsize::MIN;
    let source = Source::open(&big_archive, &one).expect("opening");
    let layer = &source.manifest().manifest.layers()[0];
    // Streams dropped half read give their one proxy back.
    for _ in 0..2 {
        let mut stream = source.open_layer(layer).expect("opening");
        let mut start = [0u8; 100];
        std::io::Read::read_exact(&mut stream, &mut start).expect("reading the start");
    }
    let blob = layer_bytes(&source, layer).expect("reading the whole layer");
    assert!(blob == big.images[0].layers[0].blob.bytes);
    // Dropping the source is quick even with a stream still open, and that
    // stream then fails instead of ending short but "fine".
    let mut orphan = source.open_layer(layer).expect("opening");
    let mut start = [0u8; 100];
    std::io::Read::read_exact(&mut orphan, &mut start).expect("reading the start");
    let dropping = Instant::now();
    drop(source);
    assert!(
        dropping.elapsed() < Duration::from_secs(5),
        "{:?}",
        dropping.elapsed()
    );
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut orphan, &mut rest);
    assert!(rest.len() + 100 < big.images[0].layers[0].blob.bytes.len());
    assert!(
        orphan.finish().is_err(),
        "an interrupted stream must not verify"
    );
    assert_no_skopeo_children();
}

#[test]
fn broken_layers_through_skopeo_fail_clearly() {
    let _serial = serial();
    if !skopeo_available("broken_layers_through_skopeo_fail_clearly") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let layout_dir = dir.path().join("layout");
    let layout = write_broken_layout(&layout_dir);
    let image = &layout.images[0];
    let copy = dir.path().join("dir");
    skopeo_copy(&[
        &format!("oci:{}:{TAG}", layout_dir.display()),
        &format!("dir:{}", copy.display()),
    ]);
    let blob = image.layers[2].blob.digest.trim_start_matches("sha256:");
    flip_byte(&copy.join(blob));
    let source = Source::open(&format!("dir:{}", copy.display()), &options(None)).expect("opening");
    let [truncated, wrong, corrupt] = broken_layer_errors(&source, image);
    assert!(
        truncated.contains("gzip layer stream is corrupt or truncated"),
        "{truncated}"
    );
    assert!(wrong.contains(&image.layers[1].diff_id), "{wrong}");
    assert!(corrupt.contains(&image.layers[2].blob.digest), "{corrupt}");
    drop(source);
    assert_no_skopeo_children();
}
