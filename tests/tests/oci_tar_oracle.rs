//! Tar layers against composefs-oci 0.9.4: `split_layer` must write the
//! same split stream bytes as the reference's `split_async` for every tar
//! the reference accepts, `layer_entries` must read the same entries as
//! its `get_entry`, and `merge_layers` must build the same tree as its
//! `process_entry` (same dumpfile after the OCI transform), except for
//! the documented departures, which get tests of their own that show the
//! reference's behaviour and ours next to what `umoci unpack` does.
//! Hostile tars are each refused with their own error, leaving the
//! repository fsck-clean.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use cfs_erofs::digest::{FsVerityDigest, Sha256Digest};
use cfs_erofs::dumpfile;
use cfs_erofs::transform::{transform_for_oci, XattrFilter};
use cfs_erofs::tree::{LeafContent, RegularFile};
use cfs_images::splitstream::SplitStream;
use cfs_images::{InitOptions, Repository as OurRepo};
use cfs_oci::merge::{merge_layers, Departure, DepartureKind, MergeError};
use cfs_oci::tar::{layer_entries, split_layer, SplitLayer, TarEntry, TarError, TarItem};
use composefs::fsverity::{Algorithm, FsVerityHashValue, Sha256HashValue};
use composefs::generic_tree::{OciTransformOptions, XattrFiltering};
use composefs::repository::{Repository as TheirRepo, RepositoryConfig};
use composefs::splitstream::SplitStreamReader;
use composefs::tree::{FileSystem as TheirFs, Stat as TheirStat};
use composefs_oci::tar::TarItem as TheirItem;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

const LAYER: u64 = composefs_oci::LAYER_CONTENT_TYPE;

/// A repository of ours and one of the reference's, both insecure
/// (tmpfs has no fs-verity), and a runtime for the reference's async API.
struct Both {
    _dir: tempfile::TempDir,
    ours: OurRepo<Sha256Digest>,
    theirs: Arc<TheirRepo<Sha256HashValue>>,
    runtime: tokio::runtime::Runtime,
}

/// A layer split by both, checked identical.
struct Layer {
    ours: SplitLayer,
    theirs: Sha256HashValue,
}

impl Both {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ours = OurRepo::init(
            &dir.path().join("ours"),
            &InitOptions {
                insecure: true,
                ..Default::default()
            },
        )
        .unwrap();
        let config = RepositoryConfig::new(Algorithm::for_hash::<Sha256HashValue>()).set_insecure();
        let (theirs, _) =
            TheirRepo::init_path(rustix::fs::CWD, dir.path().join("theirs"), config).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        Self {
            _dir: dir,
            ours,
            theirs: Arc::new(theirs),
            runtime,
        }
    }

    fn their_split(&self, tar: &[u8]) -> anyhow::Result<Sha256HashValue> {
        let (id, _) = self.runtime.block_on(composefs_oci::tar::split_async(
            tar,
            self.theirs.clone(),
            LAYER,
        ))?;
        Ok(id)
    }

    fn their_stream(&self, id: &Sha256HashValue) -> Vec<u8> {
        let mut bytes = Vec::new();
        File::from(self.theirs.open_object(id).unwrap())
            .read_to_end(&mut bytes)
            .unwrap();
        bytes
    }

    /// Splits `tar` with both and checks the streams are identical.
    fn split(&self, what: &str, tar: &[u8]) -> Layer {
        let ours = split_layer(&self.ours, tar)
            .unwrap_or_else(|e| panic!("{what}: our split failed: {e}"));
        let theirs = self
            .their_split(tar)
            .unwrap_or_else(|e| panic!("{what}: the reference's split failed: {e:#}"));
        assert_eq!(ours.size, tar.len() as u64, "{what}: size");
        let their_bytes = self.their_stream(&theirs);
        assert!(
            ours.stream_bytes == their_bytes,
            "{what}: split streams differ ({} vs {} bytes)",
            ours.stream_bytes.len(),
            their_bytes.len()
        );
        // Reassembled, the stream is the tar.
        let stream = SplitStream::<Sha256Digest>::parse(ours.stream_bytes.clone()).unwrap();
        let mut back = Vec::new();
        stream
            .reassemble(
                |d| self.ours.open_object(d).map_err(std::io::Error::other),
                &mut back,
            )
            .unwrap();
        assert!(back == tar, "{what}: reassembly differs from the tar");
        let layer = Layer { ours, theirs };
        assert_eq!(
            self.our_entries(&layer),
            self.their_entries(&layer),
            "{what}: entries"
        );
        layer
    }

    fn our_entries(&self, layer: &Layer) -> Vec<String> {
        let stream = SplitStream::<Sha256Digest>::parse(layer.ours.stream_bytes.clone()).unwrap();
        layer_entries(&stream)
            .map(|e| describe_ours(&e.unwrap()))
            .collect()
    }

    fn their_reader(&self, layer: &Layer) -> SplitStreamReader<Sha256HashValue> {
        let file = File::from(self.theirs.open_object(&layer.theirs).unwrap());
        SplitStreamReader::new(file, Some(LAYER)).unwrap()
    }

    fn their_entries(&self, layer: &Layer) -> Vec<String> {
        let mut reader = self.their_reader(layer);
        let mut out = Vec::new();
        while let Some(entry) = composefs_oci::tar::get_entry(&mut reader).unwrap() {
            out.push(describe_theirs(&entry));
        }
        out
    }

    /// Our merged tree's dumpfile after the OCI transform, and departures.
    fn merge_ours(
        &self,
        layers: &[Layer],
        filter: XattrFilter,
    ) -> Result<(String, Vec<Departure>), MergeError> {
        let streams: Vec<_> = layers
            .iter()
            .map(|l| SplitStream::<Sha256Digest>::parse(l.ours.stream_bytes.clone()).unwrap())
            .collect();
        let mut merged = merge_layers(streams.iter().map(layer_entries))?;
        merged.fs.check().expect("merged tree is consistent");
        transform_for_oci(&mut merged.fs, filter).expect("transform");
        Ok((dumpfile::to_string(&merged.fs), merged.departures))
    }

    /// The reference's `create_filesystem`, from the layer streams.
    fn merge_theirs(&self, layers: &[Layer], filter: XattrFilter) -> anyhow::Result<String> {
        let mut fs = TheirFs::<Sha256HashValue>::new(TheirStat::uninitialized());
        for layer in layers {
            let mut reader = self.their_reader(layer);
            while let Some(entry) = composefs_oci::tar::get_entry(&mut reader)? {
                composefs_oci::image::process_entry(&mut fs, entry)?;
            }
        }
        let xattrs = match filter {
            XattrFilter::AllowlistOnly => XattrFiltering::AllowlistOnly,
            XattrFilter::KeepUserXattrs => XattrFiltering::KeepUserXattrs,
        };
        fs.transform_for_oci(&OciTransformOptions { xattrs })?;
        let mut out = Vec::new();
        composefs::dumpfile::write_dumpfile(&mut out, &fs)?;
        Ok(String::from_utf8(out)?)
    }

    /// Splits and merges `tars` with both; the dumpfiles must match and
    /// we must report no departure.
    fn merge_same(&self, what: &str, tars: &[Vec<u8>]) -> String {
        let layers: Vec<_> = tars
            .iter()
            .enumerate()
            .map(|(i, t)| self.split(&format!("{what} layer {i}"), t))
            .collect();
        let mut first = None;
        for filter in XattrFilter::ALL {
            let (ours, departures) = self
                .merge_ours(&layers, filter)
                .unwrap_or_else(|e| panic!("{what}: our merge failed: {e}"));
            assert!(departures.is_empty(), "{what}: {departures:?}");
            let theirs = self
                .merge_theirs(&layers, filter)
                .unwrap_or_else(|e| panic!("{what}: the reference's merge failed: {e:#}"));
            if ours != theirs {
                panic!(
                    "{what} ({filter:?}): dumpfiles differ\n--- ours\n{ours}\n--- theirs\n{theirs}"
                );
            }
            first.get_or_insert(ours);
        }
        first.expect("two filters")
    }
}

fn xattr_text<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> String {
    pairs
        .map(|(k, v)| format!("{}={}", k.escape_ascii(), v.escape_ascii()))
        .collect::<Vec<_>>()
        .join(",")
}

fn describe_ours(entry: &TarEntry<Sha256Digest>) -> String {
    let item = match &entry.item {
        TarItem::Directory => "dir".to_owned(),
        TarItem::Hardlink(target) => format!("link {}", target.escape_ascii()),
        TarItem::Leaf(content) => match content {
            LeafContent::Regular(RegularFile::Inline(data)) => {
                format!("file {}", hex::encode(data))
            }
            LeafContent::Regular(RegularFile::External { digest, size }) => {
                format!("object {} {size}", digest.to_hex())
            }
            LeafContent::Symlink(target) => format!("symlink {}", target.escape_ascii()),
            LeafContent::BlockDevice(rdev) => format!("blk {rdev}"),
            LeafContent::CharacterDevice(rdev) => format!("chr {rdev}"),
            LeafContent::Fifo => "fifo".to_owned(),
            LeafContent::Socket => "socket".to_owned(),
        },
    };
    // A hard link's own metadata is unused, and we do not compare it.
    let stat = if matches!(entry.item, TarItem::Hardlink(_)) {
        String::new()
    } else {
        let s = &entry.stat;
        format!(
            "{:o} {}:{} {}.{} [{}]",
            s.mode.bits(),
            s.uid,
            s.gid,
            s.mtime.sec,
            s.mtime.nsec,
            xattr_text(s.xattrs.iter().map(|(k, v)| (&k[..], &v[..])))
        )
    };
    format!("{} {stat} {item}", entry.path.escape_ascii())
}

/// The reference keeps `.` components (`./a` becomes `/./a`), which its
/// tree code skips; compare canonical forms.
fn canonical(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for component in path.components() {
        if let std::path::Component::Normal(name) = component {
            out.push(b'/');
            out.extend_from_slice(name.as_bytes());
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

fn describe_theirs(entry: &composefs_oci::tar::TarEntry<Sha256HashValue>) -> String {
    use composefs::tree::LeafContent as L;
    let item = match &entry.item {
        TheirItem::Directory => "dir".to_owned(),
        TheirItem::Hardlink(target) => {
            format!("link {}", canonical(Path::new(target)).escape_ascii())
        }
        TheirItem::Leaf(content) => match content {
            L::Regular(composefs::tree::RegularFile::Inline(data)) => {
                format!("file {}", hex::encode(data))
            }
            L::Regular(composefs::tree::RegularFile::External(id, size)) => {
                format!("object {} {size}", id.to_hex())
            }
            L::Regular(other) => format!("unexpected {other:?}"),
            L::Symlink(target) => format!("symlink {}", target.as_bytes().escape_ascii()),
            L::BlockDevice(rdev) => format!("blk {rdev}"),
            L::CharacterDevice(rdev) => format!("chr {rdev}"),
            L::Fifo => "fifo".to_owned(),
            L::Socket => "socket".to_owned(),
        },
    };
    let stat = if matches!(entry.item, TheirItem::Hardlink(_)) {
        String::new()
    } else {
        let s = &entry.stat;
        // The reference keeps whatever the mode field holds; the tree
        // (and the image) only use the permission bits.
        format!(
            "{:o} {}:{} {}.{} [{}]",
            s.st_mode & 0o7777,
            s.st_uid,
            s.st_gid,
            s.st_mtim_sec,
            s.st_mtim_nsec,
            xattr_text(s.xattrs.iter().map(|(k, v)| (k.as_bytes(), &v[..])))
        )
    };
    format!("{} {stat} {item}", canonical(&entry.path).escape_ascii())
}

// --- a tar writer with full control over every header byte ----------

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Ustar,
    Gnu,
    V7,
}

/// One header block; fields are filled with sane defaults.
struct Header([u8; 512]);

impl Header {
    fn new(format: Format, type_flag: u8, name: &[u8], size: u64) -> Self {
        let mut h = Header([0; 512]);
        h.bytes(0..100, name);
        h.octal(100..108, 0o644);
        h.octal(108..116, 0);
        h.octal(116..124, 0);
        h.octal(124..136, size);
        h.octal(136..148, 1_700_000_000);
        h.0[156] = type_flag;
        match format {
            Format::Ustar => {
                h.bytes(257..265, b"ustar\x0000");
            }
            Format::Gnu => {
                h.bytes(257..265, b"ustar  \0");
            }
            Format::V7 => {}
        }
        if format != Format::V7 {
            h.octal(329..337, 0);
            h.octal(337..345, 0);
        }
        h
    }

    fn bytes(&mut self, range: std::ops::Range<usize>, value: &[u8]) -> &mut Self {
        let field = &mut self.0[range];
        field.fill(0);
        let n = value.len().min(field.len());
        field[..n].copy_from_slice(&value[..n]);
        self
    }

    fn octal(&mut self, range: std::ops::Range<usize>, value: u64) -> &mut Self {
        let width = range.len() - 1;
        let text = format!("{value:0width$o}");
        self.bytes(range, text.as_bytes())
    }

    fn mode(&mut self, mode: u64) -> &mut Self {
        self.octal(100..108, mode)
    }

    fn owner(&mut self, uid: u64, gid: u64) -> &mut Self {
        self.octal(108..116, uid).octal(116..124, gid)
    }

    fn mtime(&mut self, mtime: u64) -> &mut Self {
        self.octal(136..148, mtime)
    }

    fn link(&mut self, target: &[u8]) -> &mut Self {
        self.bytes(157..257, target)
    }

    fn device(&mut self, major: u64, minor: u64) -> &mut Self {
        self.octal(329..337, major).octal(337..345, minor)
    }

    fn prefix(&mut self, prefix: &[u8]) -> &mut Self {
        self.bytes(345..500, prefix)
    }

    /// The block with its checksum.
    fn block(&self) -> [u8; 512] {
        let mut block = self.0;
        block[148..156].fill(b' ');
        let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        block
    }
}

/// A tar being written by hand.
#[derive(Default)]
struct Tar(Vec<u8>);

fn padded(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    out.resize(data.len().next_multiple_of(512), 0);
    out
}

/// PAX data for `records`.
fn pax_data(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut data = Vec::new();
    for (key, value) in records {
        let body = key.len() + value.len() + 3;
        let mut len = body + 1;
        while len.to_string().len() + body != len {
            len += 1;
        }
        data.extend_from_slice(format!("{len} {key}=").as_bytes());
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    data
}

impl Tar {
    fn member(&mut self, header: &Header, content: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&header.block());
        self.0.extend_from_slice(&padded(content));
        self
    }

    fn file(&mut self, name: &str, content: &[u8]) -> &mut Self {
        let h = Header::new(Format::Ustar, b'0', name.as_bytes(), content.len() as u64);
        self.member(&h, content)
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        let mut h = Header::new(Format::Ustar, b'5', name.as_bytes(), 0);
        h.mode(0o755);
        self.member(&h, b"")
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let data = pax_data(records);
        let h = Header::new(Format::Ustar, b'x', b"PaxHeaders/x", data.len() as u64);
        self.member(&h, &data)
    }

    fn gnu_long(&mut self, type_flag: u8, value: &[u8]) -> &mut Self {
        let mut data = value.to_vec();
        data.push(0);
        let h = Header::new(Format::Gnu, type_flag, b"././@LongLink", data.len() as u64);
        self.member(&h, &data)
    }

    fn zero_blocks(&mut self, count: usize) -> &mut Self {
        self.0.extend(std::iter::repeat_n(0u8, 512 * count));
        self
    }

    fn end(&mut self) -> Vec<u8> {
        self.zero_blocks(2);
        std::mem::take(&mut self.0)
    }
}

/// Bytes that do not compress to nothing.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random()).collect()
}

/// The usual top of a root filesystem layer.
fn base(tar: &mut Tar) -> &mut Tar {
    tar.dir("usr/").dir("usr/bin/").dir("etc/")
}

// --- byte identity of split streams ----------------------------------

#[test]
fn file_sizes_and_kinds() {
    let both = Both::new();
    let mut tar = Tar::default();
    base(&mut tar);
    for (i, len) in [0usize, 1, 63, 64, 65, 511, 512, 513, 4096, 70_000]
        .into_iter()
        .enumerate()
    {
        tar.file(&format!("usr/bin/f{len}"), &content(len, i as u64));
    }
    // The same large content twice: one object, referenced twice.
    tar.file("etc/again", &content(70_000, 9));
    let mut sym = Header::new(Format::Ustar, b'2', b"usr/bin/sym", 0);
    sym.link(b"../lib/target").mode(0o777);
    tar.member(&sym, b"");
    let mut link = Header::new(Format::Ustar, b'1', b"usr/bin/hard", 0);
    link.link(b"usr/bin/f65");
    tar.member(&link, b"");
    let mut chr = Header::new(Format::Ustar, b'3', b"etc/null", 0);
    chr.device(1, 3).mode(0o666);
    tar.member(&chr, b"");
    let mut blk = Header::new(Format::Ustar, b'4', b"etc/sda", 0);
    blk.device(8, 0x12345).mode(0o660);
    tar.member(&blk, b"");
    let fifo = Header::new(Format::Ustar, b'6', b"etc/fifo", 0);
    tar.member(&fifo, b"");
    let whiteout_dev = Header::new(Format::Ustar, b'3', b"etc/wh", 0);
    tar.member(&whiteout_dev, b"");
    let mut setuid = Header::new(Format::Ustar, b'0', b"usr/bin/su", 3);
    setuid.mode(0o4755).owner(0, 42);
    tar.member(&setuid, b"su!");
    let mut contiguous = Header::new(Format::Ustar, b'7', b"etc/contiguous", 100);
    contiguous.mode(0o600);
    tar.member(&contiguous, &content(100, 77));
    // An old-Go header: file type bits in the mode field.
    let mut old_go = Header::new(Format::Ustar, b'0', b"etc/oldgo", 5);
    old_go.mode(0o100644);
    tar.member(&old_go, b"hello");
    let mut old_go_dir = Header::new(Format::Ustar, b'5', b"etc/oldgodir/", 0);
    old_go_dir.mode(0o40755);
    tar.member(&old_go_dir, b"");
    let tar = tar.end();
    let layer = both.split("file sizes", &tar);
    let entries = both.our_entries(&layer);
    assert_eq!(entries.len(), 24, "{entries:#?}");
    // 1 MiB + 3 bytes, through the streaming path.
    let mut big = Tar::default();
    big.file("big", &content((1 << 20) + 3, 5));
    both.split("1 MiB file", &big.end());
}

#[test]
fn header_formats_and_extensions() {
    let both = Both::new();
    let long_dir = "d".repeat(90);
    let long_name = format!("{long_dir}/{}", "n".repeat(150));
    let long_target = format!("/{}", "t".repeat(300));
    let mut tar = Tar::default();
    base(&mut tar);
    // A ustar prefix field.
    let mut prefixed = Header::new(Format::Ustar, b'0', b"file-in-prefix-dir", 4);
    prefixed.prefix(b"usr/bin");
    tar.member(&prefixed, b"data");
    // GNU long name and long link, for a file, a symlink and a hard link.
    tar.dir(&format!("{long_dir}/"));
    tar.gnu_long(b'L', long_name.as_bytes());
    tar.member(
        &Header::new(Format::Gnu, b'0', b"short", 70),
        &content(70, 1),
    );
    tar.gnu_long(b'L', format!("{long_dir}/sym").as_bytes());
    tar.gnu_long(b'K', long_target.as_bytes());
    tar.member(&Header::new(Format::Gnu, b'2', b"short", 0), b"");
    tar.gnu_long(b'K', long_name.as_bytes());
    let mut hard = Header::new(Format::Gnu, b'1', b"usr/hardlink", 0);
    hard.link(b"ignored");
    tar.member(&hard, b"");
    // PAX: path, linkpath, ids, nanoseconds, xattrs, and a size that
    // overrides the header's.
    let pax_path = format!("usr/{}", "p".repeat(200));
    tar.pax(&[
        ("path", pax_path.as_bytes()),
        ("uid", b"4000000000"),
        ("gid", b"70000"),
        ("mtime", b"1700000000.123456789"),
        ("SCHILY.xattr.user.comment", b"a=b\0c"),
        ("SCHILY.xattr.security.capability", b"\x01\x00\x00\x02"),
        ("uname", b"nobody"),
        ("atime", b"1.5"),
        ("size", b"80"),
    ]);
    tar.member(
        &Header::new(Format::Ustar, b'0', b"wrong-name", 0),
        &content(80, 2),
    );
    for (i, fraction) in ["5", "05", "123456", "1234567891234", "", "x"]
        .iter()
        .enumerate()
    {
        let mtime = format!("1600000000.{fraction}");
        tar.pax(&[("mtime", mtime.as_bytes())]);
        tar.file(&format!("etc/t{i}"), b"x");
    }
    // The fraction of the first mtime record, the seconds of the last.
    tar.pax(&[("mtime", b"100.25"), ("mtime", b"200.75")]);
    tar.file("etc/two-mtimes", b"y");
    tar.pax(&[("linkpath", long_target.as_bytes())]);
    tar.member(&Header::new(Format::Ustar, b'2', b"etc/paxsym", 0), b"");
    // Metadata the parser must skip or ignore: a global header, a lone
    // zero block, a global header between a PAX header and its entry.
    let global = pax_data(&[("comment", b"global")]);
    tar.member(
        &Header::new(
            Format::Ustar,
            b'g',
            b"pax_global_header",
            global.len() as u64,
        ),
        &global,
    );
    tar.zero_blocks(1);
    tar.file("etc/after-zero", b"z");
    tar.pax(&[("path", b"etc/forgotten")]);
    tar.member(
        &Header::new(Format::Ustar, b'g', b"g", global.len() as u64),
        &global,
    );
    tar.file("etc/remembered", b"r");
    // V7 header; a GNU header; huge ids and times in base-256.
    tar.member(&Header::new(Format::V7, 0, b"etc/v7", 3), b"old");
    tar.member(&Header::new(Format::Gnu, b'0', b"etc/gnu", 3), b"new");
    let mut negative = Header::new(Format::Gnu, b'0', b"etc/negative-mtime", 0);
    negative.bytes(136..148, &[0xff; 12]);
    tar.member(&negative, b"");
    let mut big_uid = Header::new(Format::Gnu, b'0', b"etc/big-uid", 0);
    let mut field = [0u8; 8];
    field[0] = 0x80;
    field[4..].copy_from_slice(&3_000_000_000u32.to_be_bytes());
    big_uid.bytes(108..116, &field);
    tar.member(&big_uid, b"");
    both.split("formats", &tar.end());
}

#[test]
fn archive_ends() {
    let both = Both::new();
    let mut tar = Tar::default();
    tar.file("a", &content(100, 1));
    let plain = tar.end();
    // GNU tar pads to a 10 KiB record; some writers add junk.
    let mut record = plain.clone();
    record.resize(10240, 0);
    both.split("record padding", &record);
    let mut junk = plain.clone();
    junk.extend_from_slice(b"trailing junk is kept for the diff_id");
    both.split("trailing junk", &junk);
    // No end marker at all, and an empty input.
    both.split("no end marker", &plain[..plain.len() - 1024]);
    both.split("empty", b"");
    both.split("only the end marker", &[0; 1024]);
}

/// Random layers written by the `tar` crate.
fn random_layer(
    rng: &mut StdRng,
    layer: usize,
    top: &str,
    lower_files: &[String],
) -> (Vec<u8>, Vec<String>) {
    let mut builder = tar::Builder::new(Vec::new());
    let mut files = Vec::new();
    let mut dirs = vec![top.to_owned()];
    let gnu = rng.random_bool(0.5);
    let new_header = |rng: &mut StdRng, kind: tar::EntryType, mode: u32| {
        let mut h = if gnu {
            tar::Header::new_gnu()
        } else {
            tar::Header::new_ustar()
        };
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(rng.random_range(0..3) * 1000);
        h.set_gid(rng.random_range(0..3));
        h.set_mtime(rng.random_range(0..2_000_000_000));
        h
    };
    for dir in ["usr/", top] {
        let mut h = new_header(rng, tar::EntryType::Directory, 0o755);
        builder.append_data(&mut h, dir, std::io::empty()).unwrap();
    }
    for i in 0..rng.random_range(5..40) {
        let parent = dirs[rng.random_range(0..dirs.len())].clone();
        let long = if rng.random_bool(0.1) {
            "L".repeat(rng.random_range(90..200))
        } else {
            String::new()
        };
        let path = format!("{parent}/e{layer}_{i}{long}");
        if rng.random_bool(0.2) {
            let records: Vec<(String, Vec<u8>)> = vec![
                (
                    "mtime".into(),
                    format!(
                        "{}.{}",
                        rng.random_range(0..2_000_000_000u64),
                        rng.random_range(0..1_000_000_000u32)
                    )
                    .into_bytes(),
                ),
                ("SCHILY.xattr.user.x".into(), vec![rng.random(); 3]),
            ];
            builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .unwrap();
        }
        match rng.random_range(0..10) {
            0 | 1 => {
                let mut h = new_header(rng, tar::EntryType::Directory, 0o750);
                builder
                    .append_data(&mut h, &path, std::io::empty())
                    .unwrap();
                dirs.push(path);
            }
            2 => {
                let mut h = new_header(rng, tar::EntryType::Symlink, 0o777);
                builder.append_link(&mut h, &path, "some/target").unwrap();
            }
            3 if !lower_files.is_empty() || !files.is_empty() => {
                let pool: Vec<&String> = lower_files.iter().chain(&files).collect();
                let target = pool[rng.random_range(0..pool.len())].clone();
                let mut h = new_header(rng, tar::EntryType::Link, 0o644);
                builder.append_link(&mut h, &path, &target).unwrap();
            }
            4 => {
                let mut h = new_header(rng, tar::EntryType::Fifo, 0o600);
                builder
                    .append_data(&mut h, &path, std::io::empty())
                    .unwrap();
            }
            _ => {
                let len = match rng.random_range(0..4) {
                    0 => rng.random_range(0..=64),
                    1 => rng.random_range(65..600),
                    _ => rng.random_range(0..20_000),
                };
                let data = content(len, rng.random());
                let mut h = new_header(rng, tar::EntryType::Regular, 0o644);
                h.set_size(len as u64);
                builder.append_data(&mut h, &path, &data[..]).unwrap();
                files.push(path);
            }
        }
    }
    (builder.into_inner().unwrap(), files)
}

#[test]
fn random_layers_split_and_merge_identically() {
    let both = Both::new();
    for seed in 0..40 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut tars = Vec::new();
        let mut files = Vec::new();
        for layer in 0..3 {
            let top = format!("usr/l{}", rng.random_range(0..2));
            // Whiteouts of lower entries come first in their layer.
            let mut tar = Vec::new();
            if layer > 0 && rng.random_bool(0.5) {
                let mut extra = tar::Builder::new(Vec::new());
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                extra
                    .append_data(&mut h, "usr/l0", std::io::empty())
                    .unwrap();
                let mut h = tar::Header::new_ustar();
                h.set_size(0);
                h.set_mode(0o644);
                let marker = if rng.random_bool(0.5) {
                    "usr/l0/.wh..wh..opq".to_owned()
                } else {
                    format!("usr/l0/.wh.e0_{}", rng.random_range(0..10))
                };
                extra.append_data(&mut h, marker, std::io::empty()).unwrap();
                tar = extra.into_inner().unwrap();
                tar.truncate(tar.len() - 1024);
                files.retain(|f: &String| !f.starts_with("usr/l0/"));
            }
            let (entries, new_files) = random_layer(&mut rng, layer, &top, &files);
            tar.extend_from_slice(&entries);
            files.extend(new_files);
            tars.push(tar);
        }
        both.merge_same(&format!("seed {seed}"), &tars);
    }
}

// --- merging ----------------------------------------------------------

#[test]
fn layers_merge_as_the_reference_does() {
    let both = Both::new();
    let mut lower = Tar::default();
    base(&mut lower);
    lower
        .dir("run/")
        .file("run/stub", b"build-time mount point")
        .dir("usr/lib/")
        .file("usr/lib/a", &content(200, 1))
        .file("usr/lib/b", b"b")
        .dir("usr/lib/sub/")
        .file("usr/lib/sub/c", b"c")
        .dir("usr/share/")
        .file("usr/share/doc", b"doc")
        .file("etc/replaced-by-dir", b"x")
        .dir("etc/replaced-by-file/")
        .file("etc/replaced-by-file/inner", b"y")
        .file("usr/bin/target", &content(100, 2));
    let mut root = Header::new(Format::Ustar, b'5', b"./", 0);
    root.mode(0o700).owner(5, 5);
    lower.member(&root, b"");
    let mut upper = Tar::default();
    upper.dir("usr/lib/");
    let mut wh = Header::new(Format::Ustar, b'0', b"usr/lib/.wh.a", 0);
    wh.mode(0);
    upper.member(&wh, b"");
    upper.file("usr/lib/.wh.missing", b"");
    upper
        .file("usr/share/.wh..wh..opq", b"")
        .file("usr/share/new", b"new");
    let mut restat = Header::new(Format::Ustar, b'5', b"usr/lib/sub/", 0);
    restat.mode(0o700).owner(1, 2).mtime(5);
    upper.member(&restat, b"");
    upper
        .dir("etc/replaced-by-dir/")
        .file("etc/replaced-by-file", b"now a file");
    let mut link = Header::new(Format::Ustar, b'1', b"usr/bin/link-to-lower", 0);
    link.link(b"usr/bin/target");
    upper.member(&link, b"");
    let mut link = Header::new(Format::Ustar, b'1', b"usr/bin/link-to-sub", 0);
    link.link(b"./usr/lib/sub/c");
    upper.member(&link, b"");
    let mut usr = Header::new(Format::Ustar, b'5', b"usr/", 0);
    usr.mode(0o751).mtime(1_234_567_890);
    upper.member(&usr, b"");
    let mut xattr_dir = Tar::default();
    xattr_dir.pax(&[
        ("SCHILY.xattr.user.keep", b"1"),
        ("SCHILY.xattr.security.capability", b"cap"),
        ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
        (
            "SCHILY.xattr.security.selinux",
            b"system_u:object_r:usr_t:s0",
        ),
    ]);
    xattr_dir.dir("usr/");
    upper.0.extend_from_slice(&xattr_dir.0);
    let dump = both.merge_same("two layers", &[lower.end(), upper.end()]);
    assert!(dump.contains("/usr/share/new "), "{dump}");
    assert!(!dump.contains("/usr/share/doc "), "{dump}");
    assert!(!dump.contains("/usr/lib/a "), "{dump}");
}

#[test]
fn missing_parents_are_created() {
    let both = Both::new();
    let mut tar = Tar::default();
    tar.file("usr/bin/sh", &content(100, 3))
        .file("etc/os-release", b"ID=x");
    let layers = [both.split("no directory entries", &tar.end())];
    let theirs = both.merge_theirs(&layers, XattrFilter::default());
    let error = format!(
        "{:#}",
        theirs.expect_err("the reference needs parent entries")
    );
    assert!(error.contains("does not exist"), "{error}");
    let (ours, departures) = both.merge_ours(&layers, XattrFilter::default()).unwrap();
    let created: Vec<_> = departures
        .iter()
        .map(|d| {
            (
                d.layer,
                String::from_utf8_lossy(&d.path).into_owned(),
                d.kind,
            )
        })
        .collect();
    assert_eq!(
        created,
        [
            (0, "/usr".into(), DepartureKind::CreatedParent),
            (0, "/usr/bin".into(), DepartureKind::CreatedParent),
            (0, "/etc".into(), DepartureKind::CreatedParent),
        ]
    );
    assert_eq!(
        departures[0].to_string(),
        "layer 0: created missing directory /usr (the reference tool fails here)"
    );
    let lines: Vec<&str> = ours.lines().collect();
    assert_eq!(lines[0], "/ 0 40755 4 0 0 0 0.0 - - -", "{ours}");
    assert!(
        ours.contains("\n/etc 0 40755 2 0 0 0 0.0 - - -\n"),
        "{ours}"
    );
    assert!(
        ours.contains("\n/usr/bin 0 40755 2 0 0 0 0.0 - - -\n"),
        "{ours}"
    );
    // A later entry for the directory sets its metadata as usual.
    let mut tar = Tar::default();
    tar.file("usr/a", b"a");
    let mut usr = Header::new(Format::Ustar, b'5', b"usr", 0);
    usr.mode(0o700).mtime(77);
    tar.member(&usr, b"");
    let layers = [both.split("parent after child", &tar.end())];
    let (ours, departures) = both.merge_ours(&layers, XattrFilter::default()).unwrap();
    assert_eq!(departures.len(), 1);
    assert!(
        ours.contains("\n/usr 0 40700 2 0 0 0 77.0 - - -\n"),
        "{ours}"
    );
}

#[test]
fn opaque_marker_after_its_siblings() {
    let both = Both::new();
    let mut lower = Tar::default();
    base(&mut lower)
        .dir("usr/x/")
        .file("usr/x/lower", b"lower")
        .dir("usr/x/d/")
        .file("usr/x/d/lower", b"lower");
    let mut upper = Tar::default();
    upper
        .dir("usr/x/")
        .file("usr/x/upper", b"upper")
        .dir("usr/x/d/")
        .file("usr/x/d/upper", b"upper")
        .file("usr/x/.wh..wh..opq", b"")
        .file("usr/x/after", b"after");
    let layers = [
        both.split("lower", &lower.end()),
        both.split("opaque last", &upper.end()),
    ];
    let theirs = both.merge_theirs(&layers, XattrFilter::default()).unwrap();
    let (ours, departures) = both.merge_ours(&layers, XattrFilter::default()).unwrap();
    let names = |dump: &str| -> Vec<String> {
        dump.lines()
            .filter_map(|l| l.split(' ').next())
            .filter(|p| p.starts_with("/usr/x/"))
            .map(str::to_owned)
            .collect()
    };
    // The reference loses this layer's own entries archived before it.
    assert_eq!(names(&theirs), ["/usr/x/after"]);
    // Engines (and we) hide only what lower layers put there.
    assert_eq!(
        names(&ours),
        ["/usr/x/after", "/usr/x/d", "/usr/x/d/upper", "/usr/x/upper"]
    );
    assert_eq!(departures.len(), 1, "{departures:?}");
    assert_eq!(departures[0].kind, DepartureKind::OpaqueKeptLayerEntries);
    assert_eq!(departures[0].path, b"/usr/x");
    // The marker first, as tools write it: no departure, same tree.
    let mut upper = Tar::default();
    upper
        .dir("usr/x/")
        .file("usr/x/.wh..wh..opq", b"")
        .file("usr/x/upper", b"upper");
    let mut lower = Tar::default();
    base(&mut lower).dir("usr/x/").file("usr/x/lower", b"lower");
    both.merge_same("opaque first", &[lower.end(), upper.end()]);
}

/// An OCI image layout with one uncompressed layer per tar, for umoci.
fn oci_layout(dir: &Path, tars: &[Vec<u8>]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let digest = hex::encode(Sha256::digest(bytes));
        std::fs::write(blobs.join(&digest), bytes).unwrap();
        (format!("sha256:{digest}"), bytes.len())
    };
    let layers: Vec<_> = tars.iter().map(|t| put(t)).collect();
    let diff_ids: Vec<String> = layers.iter().map(|(d, _)| format!("\"{d}\"")).collect();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let (config_digest, config_len) = put(config.as_bytes());
    let layer_descs: Vec<String> = layers
        .iter()
        .map(|(d, n)| {
            format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{n}}}"#)
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_len}}},"layers":[{}]}}"#,
        layer_descs.join(",")
    );
    let (manifest_digest, manifest_len) = put(manifest.as_bytes());
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{manifest_len},"annotations":{{"org.opencontainers.image.ref.name":"t"}}}}]}}"#
        ),
    )
    .unwrap();
}

/// What `umoci unpack` makes of `tars`: the rootfs directory, or `None`
/// (with the reason printed) when umoci is not there.
fn umoci_unpack(dir: &Path, tars: &[Vec<u8>]) -> Option<std::path::PathBuf> {
    let Ok(out) = Command::new("umoci").arg("--version").output() else {
        eprintln!("SKIPPED the umoci comparison: umoci is not installed (apt-get install umoci)");
        return None;
    };
    assert!(out.status.success());
    let layout = dir.join("layout");
    oci_layout(&layout, tars);
    let bundle = dir.join("bundle");
    let status = Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:t", layout.display()))
        .arg(&bundle)
        .status()
        .unwrap();
    assert!(status.success(), "umoci unpack failed");
    Some(bundle.join("rootfs"))
}

#[test]
fn departures_match_umoci() {
    let both = Both::new();
    let mut lower = Tar::default();
    base(&mut lower).dir("usr/x/").file("usr/x/lower", b"lower");
    let mut upper = Tar::default();
    upper
        .file("usr/x/upper", b"upper")
        .file("usr/x/.wh..wh..opq", b"")
        .file("opt/app/bin/tool", b"tool");
    let tars = [lower.end(), upper.end()];
    let layers: Vec<_> = tars
        .iter()
        .enumerate()
        .map(|(i, t)| both.split(&format!("umoci layer {i}"), t))
        .collect();
    let (ours, departures) = both.merge_ours(&layers, XattrFilter::default()).unwrap();
    let kinds: Vec<_> = departures.iter().map(|d| d.kind).collect();
    assert_eq!(
        kinds,
        [
            DepartureKind::OpaqueKeptLayerEntries,
            DepartureKind::CreatedParent,
            DepartureKind::CreatedParent,
            DepartureKind::CreatedParent
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    let Some(rootfs) = umoci_unpack(dir.path(), &tars) else {
        return;
    };
    // The same entries, and the created parents have the same mode and
    // owner (umoci's mtime is the time of extraction; ours is 0).
    let mut theirs = Vec::new();
    let mut stack = vec![rootfs.clone()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            let rel = format!("/{}", entry.path().strip_prefix(&rootfs).unwrap().display());
            if meta.is_dir() {
                stack.push(entry.path());
                theirs.push(format!("{rel} {:o}", meta.permissions().mode() & 0o7777));
            } else {
                theirs.push(rel);
            }
        }
    }
    theirs.sort();
    let mut mine: Vec<String> = ours
        .lines()
        .skip(1)
        .map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            if fields[2].starts_with("40") {
                format!("{} {}", fields[0], &fields[2][2..])
            } else {
                fields[0].to_owned()
            }
        })
        .collect();
    mine.sort();
    assert_eq!(mine, theirs);
}

// --- hostile tars -------------------------------------------------------

/// Each tar and the error it must give.
/// A hostile tar: what it is, its bytes, and a test of its error.
type Case = (&'static str, Vec<u8>, fn(&TarError) -> bool);

fn hostile_corpus() -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    let mut add = |what, tar: &mut Tar, check| cases.push((what, tar.end(), check));
    add(
        "absolute path",
        Tar::default().file("/etc/passwd", b"x"),
        |e| matches!(e, TarError::AbsolutePath { path } if path == "/etc/passwd"),
    );
    add(
        "absolute .. path",
        Tar::default().file("/../etc/passwd", b"x"),
        |e| matches!(e, TarError::AbsolutePath { .. }),
    );
    let mut absolute_link = Header::new(Format::Ustar, b'1', b"usr/link", 0);
    absolute_link.link(b"/etc/passwd");
    add(
        "absolute hard link target",
        Tar::default()
            .file("etc/passwd", b"x")
            .member(&absolute_link, b""),
        |e| matches!(e, TarError::AbsoluteLinkTarget { path, target } if path == "/usr/link" && target == "/etc/passwd"),
    );
    add("inner ..", Tar::default().file("usr/../../x", b"x"), |e| {
        matches!(e, TarError::DotDot { .. })
    });
    add(
        "NUL in a PAX path",
        Tar::default()
            .pax(&[("path", b"usr/a\0b")])
            .file("usr/x", b"x"),
        |e| matches!(e, TarError::Nul { what: "path", .. }),
    );
    let long = format!("a/{}", "b/".repeat(2100));
    add(
        "path longer than 4096",
        Tar::default()
            .pax(&[("path", long.as_bytes())])
            .file("x", b""),
        |e| matches!(e, TarError::PathTooLong { .. }),
    );
    add(
        "name longer than 255",
        Tar::default()
            .gnu_long(b'L', "n".repeat(300).as_bytes())
            .file("x", b""),
        |e| matches!(e, TarError::NameTooLong { len: 300, .. }),
    );
    let target = "t".repeat(1025);
    add(
        "symlink target longer than 1024",
        Tar::default()
            .pax(&[("linkpath", target.as_bytes())])
            .member(&Header::new(Format::Ustar, b'2', b"s", 0), b""),
        |e| matches!(e, TarError::SymlinkTooLong { len: 1025, .. }),
    );
    add(
        "empty symlink",
        Tar::default().member(&Header::new(Format::Ustar, b'2', b"s", 0), b""),
        |e| matches!(e, TarError::EmptySymlink { .. }),
    );
    add(
        "hard link without target",
        Tar::default().member(&Header::new(Format::Ustar, b'1', b"h", 0), b""),
        |e| matches!(e, TarError::NoLinkTarget { .. }),
    );
    add(
        "size beyond the stream",
        Tar::default().member(&Header::new(Format::Ustar, b'0', b"f", 1 << 30), b"short"),
        |e| matches!(e, TarError::Truncated { .. }),
    );
    let mut huge = Header::new(Format::Gnu, b'0', b"f", 0);
    let mut field = [0xffu8; 12];
    field[0] = 0x80;
    huge.bytes(124..136, &field);
    add(
        "base-256 size beyond 64 bits",
        Tar::default().member(&huge, b""),
        |e| matches!(e, TarError::BadNumber { field: "size", .. }),
    );
    let mut max = Header::new(Format::Gnu, b'0', b"f", 0);
    let mut field = [0u8; 12];
    field[0] = 0x80;
    field[4..].copy_from_slice(&u64::MAX.to_be_bytes());
    max.bytes(124..136, &field);
    add(
        "size whose padding overflows",
        Tar::default().member(&max, b""),
        |e| matches!(e, TarError::SizeTooLarge { .. }),
    );
    let mut bad_octal = Header::new(Format::Ustar, b'0', b"f", 0);
    bad_octal.bytes(100..108, b"0000989\0");
    add(
        "non-octal mode",
        Tar::default().member(&bad_octal, b""),
        |e| matches!(e, TarError::BadNumber { field: "mode", .. }),
    );
    let mut tar = Tar::default();
    tar.file("f", b"x");
    tar.0[0] = b'g';
    add("bad checksum", &mut tar, |e| {
        matches!(e, TarError::Checksum { .. })
    });
    add(
        "unknown entry type",
        Tar::default().member(&Header::new(Format::Ustar, b'V', b"label", 0), b""),
        |e| {
            matches!(
                e,
                TarError::UnknownEntryType {
                    type_flag: b'V',
                    ..
                }
            )
        },
    );
    add(
        "GNU sparse file",
        Tar::default().member(&Header::new(Format::Gnu, b'S', b"sparse", 0), b""),
        |e| matches!(e, TarError::Sparse { .. }),
    );
    add(
        "PAX sparse file",
        Tar::default()
            .pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")])
            .file("sparse", b""),
        |e| matches!(e, TarError::Sparse { .. }),
    );
    add(
        "directory with content",
        Tar::default().member(&Header::new(Format::Ustar, b'5', b"d/", 600), &[7; 600]),
        |e| matches!(e, TarError::ContentOnNonFile { size: 600, .. }),
    );
    add(
        "device in a V7 header",
        Tar::default().member(&Header::new(Format::V7, b'3', b"dev", 0), b""),
        |e| matches!(e, TarError::NoDeviceNumbers { .. }),
    );
    add(
        "file path ending in /",
        Tar::default().file("usr/file/", b"x"),
        |e| matches!(e, TarError::TrailingSlash { .. }),
    );
    add(
        "uid beyond 32 bits",
        Tar::default().pax(&[("uid", b"4294967296")]).file("f", b""),
        |e| matches!(e, TarError::IdTooLarge { field: "uid", .. }),
    );
    add(
        "mtime beyond 64 bits",
        Tar::default()
            .pax(&[("mtime", b"18446744073709551615")])
            .file("f", b""),
        |e| matches!(e, TarError::MtimeOutOfRange { .. }),
    );
    add(
        "malformed PAX record",
        Tar::default()
            .member(&Header::new(Format::Ustar, b'x', b"p", 6), b"9 a=b\n")
            .file("f", b""),
        |e| matches!(e, TarError::BadPaxRecord { .. }),
    );
    add(
        "PAX size that is not a number",
        Tar::default().pax(&[("size", b"12a")]).file("f", b""),
        |e| matches!(e, TarError::BadPaxValue { .. }),
    );
    add(
        "empty xattr name",
        Tar::default()
            .pax(&[("SCHILY.xattr.", b"v")])
            .file("f", b""),
        |e| matches!(e, TarError::BadXattr { .. }),
    );
    add(
        "two GNU long names",
        Tar::default()
            .gnu_long(b'L', b"a")
            .gnu_long(b'L', b"b")
            .file("f", b""),
        |e| matches!(e, TarError::DuplicateExtension { .. }),
    );
    add(
        "extension with no entry",
        Tar::default().gnu_long(b'L', b"a"),
        |e| matches!(e, TarError::OrphanedExtension { .. }),
    );
    let mut tar = Tar::default();
    tar.gnu_long(b'L', &vec![b'x'; (1 << 20) + 1])
        .file("f", b"");
    add("too much extension data", &mut tar, |e| {
        matches!(e, TarError::MetadataTooLarge { .. })
    });
    add(
        "empty path",
        Tar::default().member(&Header::new(Format::Ustar, b'0', b"", 0), b""),
        |e| matches!(e, TarError::EmptyPath { .. }),
    );
    // Cases whose end is not a plain end marker.
    let mut cut = Tar::default();
    cut.file("a", &content(1000, 1));
    let whole = cut.end();
    cases.push(("cut inside a header", whole[..100].to_vec(), |e| {
        matches!(
            e,
            TarError::Truncated {
                what: "a header block",
                ..
            }
        )
    }));
    cases.push(("cut inside a large file", whole[..700].to_vec(), |e| {
        matches!(
            e,
            TarError::Truncated {
                what: "the content of a file",
                ..
            }
        )
    }));
    cases.push((
        "one zero block at the end",
        whole[..whole.len() - 512].to_vec(),
        |e| {
            matches!(
                e,
                TarError::Truncated {
                    what: "the end-of-archive marker",
                    ..
                }
            )
        },
    ));
    let mut trailing = whole.clone();
    trailing.resize(whole.len() + (1 << 20) + 512, 0);
    cases.push(("megabytes after the end", trailing, |e| {
        matches!(e, TarError::TrailingData { .. })
    }));
    cases
}

#[test]
fn hostile_tars_are_refused() {
    let both = Both::new();
    let mut messages = BTreeMap::new();
    for (what, tar, check) in hostile_corpus() {
        let error = match split_layer(&both.ours, &tar[..]) {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => e,
        };
        assert!(check(&error), "{what}: unexpected error {error:?}");
        let message = error.to_string();
        assert!(message.len() < 400, "{what}: {message}");
        if let Some(other) = messages.insert(message.clone(), what) {
            panic!("{what} and {other} give the same message: {message}");
        }
        let report = both.ours.fsck(false).unwrap();
        assert!(report.is_clean(), "{what}: {report:?}");
    }
    eprintln!(
        "{} hostile tars refused, each with its own message",
        messages.len()
    );
}

#[test]
fn hard_links_that_cannot_be() {
    let both = Both::new();
    let mut tar = Tar::default();
    let mut link = Header::new(Format::Ustar, b'1', b"usr/link", 0);
    link.link(b"usr/nowhere");
    base(&mut tar).member(&link, b"");
    let layers = [both.split("dangling hard link", &tar.end())];
    let error = both
        .merge_ours(&layers, XattrFilter::default())
        .unwrap_err();
    assert!(
        matches!(error, MergeError::HardlinkTargetMissing { .. }),
        "{error}"
    );
    assert!(both.merge_theirs(&layers, XattrFilter::default()).is_err());
    let mut tar = Tar::default();
    let mut link = Header::new(Format::Ustar, b'1', b"usr/link", 0);
    link.link(b"usr/bin");
    base(&mut tar).member(&link, b"");
    let layers = [both.split("hard link to a directory", &tar.end())];
    let error = both
        .merge_ours(&layers, XattrFilter::default())
        .unwrap_err();
    assert!(
        matches!(error, MergeError::HardlinkToDirectory { .. }),
        "{error}"
    );
    assert!(both.merge_theirs(&layers, XattrFilter::default()).is_err());
    let mut tar = Tar::default();
    base(&mut tar)
        .file("usr/file", b"f")
        .file("usr/file/below", b"b");
    let layers = [both.split("file under a file", &tar.end())];
    let error = both
        .merge_ours(&layers, XattrFilter::default())
        .unwrap_err();
    assert!(
        matches!(error, MergeError::ParentNotDirectory { .. }),
        "{error}"
    );
    assert!(both.merge_theirs(&layers, XattrFilter::default()).is_err());
}

/// GNU tar's own archives of an on-disk tree, in its formats.
#[test]
fn gnu_tar_archives() {
    if Command::new("tar").arg("--version").output().is_err() {
        eprintln!("SKIPPED gnu_tar_archives: no tar command");
        return;
    }
    let both = Both::new();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let deep = root
        .join("usr/share")
        .join("d".repeat(120))
        .join("e".repeat(120));
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    for (i, len) in [0usize, 10, 64, 65, 3000, 100_000].into_iter().enumerate() {
        std::fs::write(deep.join(format!("f{len}")), content(len, i as u64)).unwrap();
        std::fs::write(
            root.join(format!("usr/{}{len}", "n".repeat(150))),
            content(len, 9),
        )
        .unwrap();
    }
    std::fs::hard_link(deep.join("f3000"), root.join("etc/hard")).unwrap();
    std::os::unix::fs::symlink("x".repeat(200), root.join("etc/long-symlink")).unwrap();
    std::os::unix::fs::symlink("../usr", root.join("etc/usr")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("etc/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    for format in ["gnu", "pax", "posix", "oldgnu"] {
        let out = Command::new("tar")
            .args(["--format", format, "--numeric-owner", "-C"])
            .arg(&root)
            .args(["-cf", "-", "."])
            .output()
            .unwrap();
        assert!(out.status.success(), "tar --format {format}");
        both.merge_same(&format!("GNU tar --format {format}"), &[out.stdout]);
    }
}
