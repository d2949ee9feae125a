//! What the fetch tests share: the test image and the comparisons between
//! what a [`Source`] reads and what the layout holds.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::io::Read;
use std::path::Path;

use cfs_oci::fetch::oci_spec::image::{Descriptor, Digest};
use cfs_oci::fetch::{FetchOptions, Platform, Source};
use cfs_tests::oci_layout::{
    tar_archive, write_layout, Blob, ImageSpec, LayerBlob, LayerSpec, WrittenImage, WrittenLayout,
};

/// The tag every test layout uses.
pub const TAG: &str = "v1";

/// Deterministic filler that does not compress to nothing.
pub fn filler(seed: u32, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 64) as u8 + b' '
        })
        .collect()
}

/// A two-platform image: amd64 with gzip, zstd and plain layers, arm64
/// with a two-member gzip layer and a gzip layer.
pub fn write_test_layout(dir: &Path) -> WrittenLayout {
    let big = filler(1, 300_000);
    let doc = filler(2, 150_000);
    let arm = filler(3, 200_000);
    let amd64 = ImageSpec::linux(
        "amd64",
        vec![
            LayerSpec {
                tar: tar_archive(&[
                    ("etc/", b""),
                    ("etc/hostname", b"amd64-host\n"),
                    ("usr/", b""),
                    ("usr/bin/", b""),
                    ("usr/bin/tool", &big),
                ]),
                blob: LayerBlob::Gzip,
            },
            LayerSpec {
                tar: tar_archive(&[("usr/share/doc/readme", &doc)]),
                blob: LayerBlob::Zstd,
            },
            LayerSpec {
                tar: tar_archive(&[("etc/motd", b"welcome\n")]),
                blob: LayerBlob::Plain,
            },
        ],
    );
    let arm64 = ImageSpec::linux(
        "arm64",
        vec![
            LayerSpec {
                tar: tar_archive(&[("etc/hostname", b"arm64-host\n"), ("usr/bin/tool", &arm)]),
                blob: LayerBlob::GzipTwoMembers,
            },
            LayerSpec {
                tar: tar_archive(&[("etc/motd", b"arm welcome\n")]),
                blob: LayerBlob::Gzip,
            },
        ],
    );
    write_layout(dir, TAG, &[amd64, arm64]).expect("writing the test layout")
}

/// The layout's image for the host platform, if it has one.
pub fn host_image(layout: &WrittenLayout) -> Option<&WrittenImage> {
    layout.image(&Platform::host().to_string())
}

/// Options for a platform (`None`: the host's).
pub fn options(platform: Option<&str>) -> FetchOptions {
    let mut options = FetchOptions::default();
    options.platform = platform.map(|p| p.parse().expect("valid platform"));
    options
}

pub fn digest(text: &str) -> Digest {
    Digest::try_from(text).expect("valid digest")
}

fn read_all(reader: impl Read) -> std::io::Result<Vec<u8>> {
    let mut reader = reader;
    let mut out = Vec::new();
    reader.read_to_end(&mut out)?;
    Ok(out)
}

/// Reads a whole layer blob through the source.
pub fn layer_bytes(source: &Source, descriptor: &Descriptor) -> std::io::Result<Vec<u8>> {
    read_all(source.open_layer(descriptor).expect("opening the layer"))
}

/// Reads a whole layer tar through the source.
pub fn layer_tar(
    source: &Source,
    descriptor: &Descriptor,
    diff_id: &str,
) -> std::io::Result<Vec<u8>> {
    read_all(
        source
            .open_layer_tar(descriptor, &digest(diff_id))
            .expect("opening the layer"),
    )
}

/// Every byte the source reads equals the layout's: manifest, config,
/// index, compressed blobs and uncompressed tars.
pub fn assert_identical(source: &Source, image: &WrittenImage, index: Option<&Blob>) {
    let manifest = source.manifest();
    assert_eq!(manifest.digest.to_string(), image.manifest.digest);
    assert!(
        manifest.raw == image.manifest.bytes,
        "manifest bytes differ"
    );
    assert!(!manifest.converted);
    assert_eq!(
        source.config().expect("config").digest.to_string(),
        image.config.digest
    );
    assert!(
        source.config().expect("config").raw == image.config.bytes,
        "config bytes differ"
    );
    match (source.index(), index) {
        (Some(got), Some(want)) => {
            assert_eq!(got.digest.to_string(), want.digest);
            assert!(got.raw == want.bytes, "index bytes differ");
        }
        (None, None) => {}
        (got, want) => panic!(
            "index: got {:?}, want {:?}",
            got.map(|b| b.digest.to_string()),
            want.map(|b| &b.digest)
        ),
    }
    let layers = manifest.manifest.layers();
    assert_eq!(layers.len(), image.layers.len());
    for (descriptor, layer) in layers.iter().zip(&image.layers) {
        assert_eq!(descriptor.digest().to_string(), layer.blob.digest);
        let blob = layer_bytes(source, descriptor).expect("reading the blob");
        assert!(
            blob == layer.blob.bytes,
            "blob {} differs",
            layer.blob.digest
        );
        let tar = layer_tar(source, descriptor, &layer.diff_id).expect("reading the tar");
        assert!(tar == layer.tar, "tar {} differs", layer.diff_id);
    }
}

/// The uncompressed layers equal the layout's, for sources that store
/// layers their own way (`docker-archive:`, `containers-storage:`).
pub fn assert_same_tars(source: &Source, image: &WrittenImage) {
    let config: serde_json::Value =
        serde_json::from_slice(&source.config().expect("config").raw).expect("config is JSON");
    let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
        .as_array()
        .expect("diff_ids")
        .iter()
        .map(|d| d.as_str().expect("string"))
        .collect();
    let want: Vec<&str> = image.layers.iter().map(|l| l.diff_id.as_str()).collect();
    assert_eq!(diff_ids, want);
    let layers = source.manifest().manifest.layers();
    assert_eq!(layers.len(), image.layers.len());
    for (descriptor, layer) in layers.iter().zip(&image.layers) {
        let tar = layer_tar(source, descriptor, &layer.diff_id).expect("reading the tar");
        assert!(tar == layer.tar, "tar {} differs", layer.diff_id);
    }
}

/// Broken layers for the error tests: a truncated gzip stream, a gzip of
/// other content than its diff_id names, and a healthy one to corrupt.
pub fn write_broken_layout(dir: &Path) -> WrittenLayout {
    let tar = tar_archive(&[("etc/data", &filler(7, 100_000))]);
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gzip, &tar).expect("in memory");
    let full = gzip.finish().expect("in memory");
    let truncated = full[..full.len() / 2].to_vec();
    let other = tar_archive(&[("etc/data", b"not what the diff_id says")]);
    let mut other_gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut other_gzip, &other).expect("in memory");
    let gzip_type = "application/vnd.oci.image.layer.v1.tar+gzip".to_owned();
    let image = ImageSpec::linux(
        &Platform::host().architecture,
        vec![
            LayerSpec {
                tar: tar.clone(),
                blob: LayerBlob::Custom {
                    media_type: gzip_type.clone(),
                    blob: truncated,
                },
            },
            LayerSpec {
                tar: tar.clone(),
                blob: LayerBlob::Custom {
                    media_type: gzip_type,
                    blob: other_gzip.finish().expect("in memory"),
                },
            },
            LayerSpec {
                tar,
                blob: LayerBlob::Gzip,
            },
        ],
    );
    write_layout(dir, TAG, &[image]).expect("writing the broken layout")
}

/// Flips one byte in the middle of a file.
pub fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).expect("reading the blob");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(path, bytes).expect("writing the blob");
}

/// The three error cases of a source opened on [`write_broken_layout`]:
/// truncated gzip, wrong diff_id, and (once the caller flipped a byte of
/// the third blob) a corrupt blob. Returns the three error messages.
pub fn broken_layer_errors(source: &Source, image: &WrittenImage) -> [String; 3] {
    let layers = source.manifest().manifest.layers();
    let truncated = layer_tar(source, &layers[0], &image.layers[0].diff_id)
        .expect_err("a truncated gzip stream must fail");
    assert!(
        truncated
            .get_ref()
            .is_some_and(|e| e.is::<cfs_oci::fetch::DecompressError>()),
        "{truncated}"
    );
    let wrong = layer_tar(source, &layers[1], &image.layers[1].diff_id)
        .expect_err("a tar that does not match its diff_id must fail");
    assert!(
        matches!(
            cfs_oci::fetch::VerifyError::from_io(&wrong),
            Some(cfs_oci::fetch::VerifyError::DigestMismatch { expected, .. })
                if expected.to_string() == image.layers[1].diff_id
        ),
        "{wrong}"
    );
    let corrupt = layer_bytes(source, &layers[2]).expect_err("a corrupt blob must fail");
    [
        truncated.to_string(),
        wrong.to_string(),
        corrupt.to_string(),
    ]
}
