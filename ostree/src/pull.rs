//! Pulling a commit from a local ostree repository into a composefs
//! repository: content objects, the plain and boot EROFS images, a stream
//! that keeps them alive, and a tag, in that order.
//!
//! As for OCI images, the tag is the only root GC knows and moves last,
//! so a pull stopped anywhere leaves the previous tag intact and at worst
//! unreferenced objects.

use std::path::Path;

use cfs_erofs::digest::FsVerityDigest;
use cfs_images::splitstream::{boot_image_ref_key, image_ref_key};
use cfs_images::splitstream::{ContentType, SplitStreamWriter};
use cfs_images::Repository;

use crate::checksum::Checksum;
use crate::convert::{commit_to_filesystem, CommitObjects, ConvertStats};
use crate::delta::pull::{apply_delta, find_delta};
use crate::error::OstreeError;
use crate::fetch::{FetchStats, Fetcher, IndexedObjects, DEFAULT_FETCH_JOBS};
use crate::index::ObjectIndex;
use crate::object::Commit;
use crate::repo::LocalRepo;
use crate::sign::{Signer, TrustedKeys};
use crate::source::open_source;

/// The content type of the stream that keeps a pulled commit's images
/// alive (`ostcommt`); it carries the commit object's bytes.
pub const OSTREE_COMMIT: ContentType = ContentType::from_ascii(*b"ostcommt");

/// The stream of a pulled commit. Not composefs-rs's `ostree-commit-`
/// name: its stream of that name has another format, and neither tool
/// should take the other's for its own.
pub fn commit_stream_id(commit: &Checksum) -> String {
    format!("ostree-images-{commit}")
}

/// Where a tag of a pulled commit lives below `streams/refs/`:
/// `ostree/<tag>` with `%` and `/` escaped, as composefs-rs names them.
pub fn tag_ref(tag: &str) -> String {
    format!("ostree/{}", tag.replace('%', "%25").replace('/', "%2F"))
}

/// The commit the tag `tag` names, if it exists.
fn tagged_commit<H: FsVerityDigest>(
    repo: &Repository<H>,
    tag: &str,
) -> Result<Option<Checksum>, OstreeError> {
    let name = tag_ref(tag);
    Ok(repo
        .list_refs("streams")?
        .into_iter()
        .find(|(rel, _)| *rel == name)
        .and_then(|(_, target)| {
            let stream = target.rsplit('/').next()?;
            Checksum::from_hex(stream.strip_prefix("ostree-images-")?).ok()
        }))
}

/// What a pull did.
#[derive(Debug)]
pub struct PullReport<H> {
    /// The commit pulled.
    pub commit: Checksum,
    /// Its subject line.
    pub subject: String,
    /// The plain EROFS image.
    pub image: H,
    /// The boot EROFS image, or why there is none.
    pub boot_image: Result<H, String>,
    /// What was read and stored; all zero when the commit was already
    /// pulled complete.
    pub stats: ConvertStats,
    /// The tag set.
    pub tag: String,
    /// The key whose signature on the commit was verified; `None` when
    /// no key is configured.
    pub signed_by: Option<Signer>,
}

/// Reads policy files of the image from the repository, for SELinux
/// labelling of the boot image.
struct RepoContent<'a, H>(&'a Repository<H>);

impl<H: FsVerityDigest> cfs_boot::ContentSource<H> for RepoContent<'_, H> {
    fn read_external(&self, _path: &Path, digest: &H, _size: u64) -> std::io::Result<Vec<u8>> {
        self.0.read_object(digest).map_err(std::io::Error::other)
    }
}

/// Pulls `rev` (a ref or a commit checksum) from the ostree repository
/// at `source` into `repo` and tags it `tag` (default: `rev`).
///
/// A commit already pulled complete costs reading its ref: nothing else
/// is read or written but the tag.
pub fn pull_local<H: FsVerityDigest>(
    repo: &Repository<H>,
    source: &Path,
    rev: &str,
    tag: Option<&str>,
) -> Result<PullReport<H>, OstreeError> {
    let source = LocalRepo::open(source)?;
    let checksum = source.resolve(rev)?;
    let tag = tag.unwrap_or(rev).to_owned();
    if let Some(report) = already_pulled(repo, &checksum, &tag, || {
        Ok(source.read_commit(&checksum)?.0.subject)
    })? {
        return Ok(report);
    }
    let (commit, commit_bytes) = source.read_commit(&checksum)?;
    store_commit(repo, &checksum, &commit, &commit_bytes, &source, tag)
}

/// How to pull from a remote repository.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// How many fetches run at a time.
    pub fetch_jobs: usize,
    /// Whether to use a static delta when the remote has one that fits.
    pub static_deltas: bool,
    /// Keys commits (and the summary, when a ref is resolved through
    /// it) must be signed with; none configured means no check.
    pub keys: TrustedKeys,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        Self {
            fetch_jobs: DEFAULT_FETCH_JOBS,
            static_deltas: true,
            keys: TrustedKeys::default(),
        }
    }
}

/// Pulls `rev` (a ref or a commit checksum) from the archive repository
/// at `location` (`http://`, `https://` URL or a directory) into `repo`,
/// as `ostree pull` would, and tags it `tag` (default: `rev`). Objects
/// the repository's index already holds are not fetched again.
pub fn pull_remote<H: FsVerityDigest>(
    repo: &Repository<H>,
    location: &str,
    rev: &str,
    tag: Option<&str>,
    options: &RemoteOptions,
) -> Result<(PullReport<H>, FetchStats), OstreeError> {
    let source = open_source(location)?;
    let index = ObjectIndex::open(repo)?;
    let fetcher = Fetcher::new(&*source, &index, repo, options.fetch_jobs);
    fetcher.check_config()?;
    let checksum = fetcher.resolve(rev, &options.keys)?;
    let tag = tag.unwrap_or(rev).to_owned();
    let commitmeta = fetcher.commitmeta(&checksum)?;
    // A delta brings the commit and its objects into the index; the
    // steps below then find them there and fetch only what it left out.
    let delta = if options.static_deltas && repo.has_stream(&commit_stream_id(&checksum))?.is_none()
    {
        let current = tagged_commit(repo, &tag)?;
        find_delta(&fetcher, &index, repo, &checksum, current.as_ref())?
    } else {
        None
    };
    let (commit, commit_bytes) = fetcher.commit(&checksum)?;
    let signed_by = if options.keys.is_empty() {
        None
    } else {
        Some(options.keys.verify(
            &format!("commit {checksum}"),
            &commit_bytes,
            commitmeta.as_deref(),
        )?)
    };
    if let Some(mut report) = already_pulled(repo, &checksum, &tag, || Ok(commit.subject.clone()))?
    {
        report.signed_by = signed_by;
        return Ok((report, fetcher.stats()));
    }
    // The commit is checked; only now do the delta's parts come.
    if let Some(delta) = &delta {
        apply_delta(&fetcher, &index, repo, delta)?;
    }
    fetcher.fetch_tree(&commit)?;
    let mut report = store_commit(
        repo,
        &checksum,
        &commit,
        &commit_bytes,
        &IndexedObjects::new(&index),
        tag,
    )?;
    report.signed_by = signed_by;
    Ok((report, fetcher.stats()))
}

/// The report for a commit already pulled complete, after tagging it
/// again; `None` if it was not.
fn already_pulled<H: FsVerityDigest>(
    repo: &Repository<H>,
    checksum: &Checksum,
    tag: &str,
    subject: impl FnOnce() -> Result<String, OstreeError>,
) -> Result<Option<PullReport<H>>, OstreeError> {
    let stream_id = commit_stream_id(checksum);
    let format = repo.format();
    let Ok((_, stored)) = repo.open_stream(&stream_id) else {
        return Ok(None);
    };
    let Some(image) = stored.named_ref(image_ref_key(format)) else {
        return Ok(None);
    };
    let subject = subject()?;
    repo.name_stream(&stream_id, &tag_ref(tag))?;
    Ok(Some(PullReport {
        commit: *checksum,
        subject,
        image: *image,
        boot_image: stored
            .named_ref(boot_image_ref_key(format))
            .copied()
            .ok_or_else(|| "not generated when first pulled".to_owned()),
        stats: ConvertStats::default(),
        tag: tag.to_owned(),
        signed_by: None,
    }))
}

/// Builds the commit's tree from `objects`, writes its plain and boot
/// images and the stream keeping them alive, then moves the tag.
fn store_commit<H: FsVerityDigest>(
    repo: &Repository<H>,
    checksum: &Checksum,
    commit: &Commit,
    commit_bytes: &[u8],
    objects: &dyn CommitObjects<H>,
    tag: String,
) -> Result<PullReport<H>, OstreeError> {
    let stream_id = commit_stream_id(checksum);
    let format = repo.format();
    let (mut fs, stats) = commit_to_filesystem(objects, commit, repo)?;
    let image_error = |e: cfs_erofs::writer::WriteError| OstreeError::Image(e.to_string());
    let plain = cfs_erofs::writer::mkfs(&fs, format).map_err(image_error)?;
    let image = repo.write_image(&plain, None)?;
    let boot_image = match cfs_boot::transform_for_boot(&mut fs, &RepoContent(repo)) {
        Ok(()) => {
            let bytes = cfs_erofs::writer::mkfs(&fs, format).map_err(image_error)?;
            Ok(repo.write_image(&bytes, None)?)
        }
        // A commit without /boot or /sysroot is not bootable; say so and
        // keep the plain image.
        Err(e) => Err(e.to_string()),
    };

    let mut writer = SplitStreamWriter::<H>::new(OSTREE_COMMIT);
    let stream_ref = |w: &mut SplitStreamWriter<H>, name: &str, digest: H| {
        w.add_stream_ref(name, digest)
            .map_err(|e| OstreeError::Image(e.to_string()))
    };
    stream_ref(&mut writer, image_ref_key(format), image)?;
    if let Ok(boot) = &boot_image {
        stream_ref(&mut writer, boot_image_ref_key(format), *boot)?;
    }
    writer.write_external(repo.ensure_object(commit_bytes)?, commit_bytes.len() as u64);
    repo.write_stream(&stream_id, &writer.finish(), None)?;
    repo.name_stream(&stream_id, &tag_ref(&tag))?;
    Ok(PullReport {
        commit: *checksum,
        subject: commit.subject.clone(),
        image,
        boot_image,
        stats,
        tag,
        signed_by: None,
    })
}
