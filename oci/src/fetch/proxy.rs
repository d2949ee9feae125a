//! Fetching through skopeo's image proxy (`skopeo experimental-image-proxy`).
//!
//! skopeo speaks every transport the containers tools know, with their
//! registry configuration, credentials and policy; we drive it with the
//! `containers-image-proxy` crate. Three facts about that proxy shape this
//! module:
//!
//! - It serves one request at a time, and a blob's data only reaches end
//!   of file after `FinishPipe`, which blocks the proxy until the whole
//!   blob has been written into the pipe. One proxy process therefore
//!   streams one layer at a time. For concurrent layer fetches we keep a
//!   small pool of proxy processes, each with the image open, started on
//!   demand up to the configured limit.
//! - The protocol of Debian 12's skopeo (1.9) has no call for the raw
//!   top-level manifest, and picks an index entry for the host platform on
//!   its own. So we read the top-level manifest with `skopeo inspect --raw`,
//!   choose the entry ourselves with the same code as for `oci:` layouts,
//!   start the proxies with `--override-os/-arch/-variant` for that entry,
//!   and check that the proxy then serves exactly the manifest we chose.
//! - The crate is async (tokio). The rest of the pull is synchronous code
//!   running on plain threads, so this module owns a small runtime and
//!   exposes blocking calls; layer data crosses from the async task to the
//!   reading thread through a bounded channel of chunks.

use std::io::{self, Read};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use containers_image_proxy::{ImageProxy, ImageProxyConfig, OpenedImage};
use oci_spec::image::{Descriptor, Digest, ImageManifest, MediaType};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::platform::Platform;
use super::FetchError;

/// Bytes per chunk sent from the fetching task to the reader.
const CHUNK: usize = 128 << 10;
/// Chunks buffered between the fetching task and the reader.
const CHANNEL_CHUNKS: usize = 8;

/// How to start a proxy process; every process of a pool starts the same.
#[derive(Debug, Clone)]
struct Settings {
    reference: String,
    insecure_tls: bool,
    /// The index entry's platform, when the image is an index.
    platform: Option<Platform>,
}

impl Settings {
    /// skopeo with the global options that choose the platform.
    fn skopeo(&self) -> Command {
        let mut command = Command::new("skopeo");
        if let Some(platform) = &self.platform {
            command
                .arg("--override-os")
                .arg(&platform.os)
                .arg("--override-arch")
                .arg(&platform.architecture);
            if let Some(variant) = &platform.variant {
                command.arg("--override-variant").arg(variant);
            }
        }
        command
    }

    fn proxy_error(
        &self,
        operation: &'static str,
    ) -> impl FnOnce(containers_image_proxy::Error) -> FetchError + '_ {
        move |source| FetchError::Proxy {
            operation,
            reference: self.reference.clone(),
            source,
        }
    }
}

/// One proxy process with the image open.
struct Connection {
    proxy: ImageProxy,
    image: OpenedImage,
}

impl Connection {
    async fn open(settings: &Settings) -> Result<Connection, FetchError> {
        let mut config = ImageProxyConfig::default();
        config.skopeo_cmd = Some(settings.skopeo());
        config.insecure_skip_tls_verification = Some(settings.insecure_tls);
        let proxy = ImageProxy::new_with_config(config)
            .await
            .map_err(settings.proxy_error("starting the image proxy for"))?;
        let image = proxy
            .open_image(&settings.reference)
            .await
            .map_err(settings.proxy_error("opening"))?;
        Ok(Connection { proxy, image })
    }

    /// Stops the process; errors are of no use when we are discarding it.
    async fn shut_down(self) {
        let _ = self.proxy.close_image(&self.image).await;
        let _ = self.proxy.finalize().await;
    }
}

/// The pool of proxy processes for one image.
struct Pool {
    settings: Settings,
    /// Connections not in use; `None` once the source is being dropped.
    idle: Mutex<Option<Vec<Connection>>>,
    /// One permit per process allowed to exist.
    permits: Arc<Semaphore>,
}

impl Pool {
    /// A connection to use alone, and the permit that entitles us to it.
    async fn checkout(&self) -> Result<(OwnedSemaphorePermit, Connection), FetchError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let idle = self
            .idle
            .lock()
            .expect("no panics while locked")
            .as_mut()
            .and_then(Vec::pop);
        let connection = match idle {
            Some(connection) => connection,
            None => Connection::open(&self.settings).await?,
        };
        Ok((permit, connection))
    }

    /// Returns a connection for reuse, or hands it back when the source
    /// is closing, for the caller to shut down.
    #[must_use]
    fn checkin(&self, connection: Connection) -> Option<Connection> {
        match self.idle.lock().expect("no panics while locked").as_mut() {
            Some(idle) => {
                idle.push(connection);
                None
            }
            None => Some(connection),
        }
    }
}

/// What skopeo must serve, as the top-level document (or the chosen index
/// entry) says.
#[derive(Debug)]
pub(super) struct Expected {
    /// The manifest's digest.
    pub digest: Digest,
    /// Whether the manifest is not OCI, so that skopeo serves its OCI
    /// translation (and the translated config).
    pub translated: bool,
}

/// What skopeo gave us when the image was opened.
#[derive(Debug)]
pub(super) struct Opened {
    /// The manifest digest skopeo reports (of the source's own manifest).
    pub digest: Digest,
    /// The manifest as OCI JSON (translated by skopeo if it was not OCI).
    pub raw_manifest: Vec<u8>,
    /// `raw_manifest`, parsed.
    pub manifest: ImageManifest,
    /// Whether `raw_manifest` is skopeo's translation (it does not hash to
    /// `digest`).
    pub converted: bool,
}

/// For `containers-storage:`, what to fetch instead of each manifest layer.
///
/// Container storage keeps the original manifest but holds layers only
/// uncompressed, so it cannot serve the manifest's (compressed) blobs; it
/// serves a layer's tar by its diff_id instead. The tar's size is not
/// written anywhere we can read through skopeo 1.9's protocol, so these
/// fetches go without a size (see [`stream_blob`]) and rest on the diff_id.
#[derive(Debug)]
struct Substitutes(Vec<(Digest, Descriptor)>);

impl Substitutes {
    fn get(&self, descriptor: &Descriptor) -> Option<&Descriptor> {
        self.0
            .iter()
            .find(|(original, _)| original == descriptor.digest())
            .map(|(_, substitute)| substitute)
    }
}

/// An image opened through skopeo.
pub(super) struct ProxySource {
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    pool: Arc<Pool>,
    /// Set once the config is known, for `containers-storage:` only.
    substitutes: OnceLock<Substitutes>,
}

impl std::fmt::Debug for ProxySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxySource")
            .field("reference", &self.pool.settings.reference)
            .finish_non_exhaustive()
    }
}

/// The top-level manifest or index, raw, as `skopeo inspect --raw` prints it.
pub(super) fn inspect_raw(reference: &str, insecure_tls: bool) -> Result<Vec<u8>, FetchError> {
    let mut command = Command::new("skopeo");
    command.arg("inspect").arg("--raw");
    if insecure_tls {
        command.arg("--tls-verify=false");
    }
    let output = command
        .arg(reference)
        .output()
        .map_err(|source| FetchError::SkopeoSpawn { source })?;
    if !output.status.success() {
        return Err(FetchError::SkopeoInspect {
            reference: reference.to_owned(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output.stdout)
}

impl ProxySource {
    /// Starts the first proxy process, opens the image and fetches its
    /// manifest. `platform` is the chosen index entry's
    /// platform when the image is an index.
    pub(super) fn open(
        reference: &str,
        insecure_tls: bool,
        platform: Option<Platform>,
        max_processes: usize,
        expected: &Expected,
    ) -> Result<(ProxySource, Opened), FetchError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cfs-oci-fetch")
            .enable_all()
            .build()
            .map_err(|source| FetchError::Runtime { source })?;
        let settings = Settings {
            reference: reference.to_owned(),
            insecure_tls,
            platform,
        };
        let pool = Arc::new(Pool {
            settings,
            idle: Mutex::new(Some(Vec::new())),
            permits: Arc::new(Semaphore::new(max_processes.max(1))),
        });
        let source = ProxySource {
            runtime: Some(runtime),
            pool: Arc::clone(&pool),
            substitutes: OnceLock::new(),
        };
        let opened = source.block_on(async move {
            let (_permit, connection) = pool.checkout().await?;
            let result = fetch_metadata(&pool.settings, &connection, expected).await;
            if let Some(closing) = pool.checkin(connection) {
                closing.shut_down().await;
            }
            result
        })?;
        Ok((source, opened))
    }

    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime
            .as_ref()
            .expect("the runtime lives until drop")
            .block_on(future)
    }

    /// The config blob, unverified: as stored, or skopeo's translation
    /// when the manifest is `converted`.
    pub(super) fn fetch_config(
        &self,
        manifest: &ImageManifest,
        converted: bool,
    ) -> Result<Vec<u8>, FetchError> {
        let pool = Arc::clone(&self.pool);
        self.block_on(async move {
            let (_permit, connection) = pool.checkout().await?;
            let result = fetch_config(&pool.settings, &connection, manifest, converted).await;
            if let Some(closing) = pool.checkin(connection) {
                closing.shut_down().await;
            }
            result
        })
    }

    /// For `containers-storage:`, records that each manifest layer is
    /// served as the uncompressed tar named by its diff_id (from the
    /// verified config); other transports serve the manifest's blobs.
    pub(super) fn serve_diff_ids(
        &self,
        manifest: &ImageManifest,
        config: &[u8],
    ) -> Result<(), FetchError> {
        let reference = &self.pool.settings.reference;
        let unusable = |reason: String| FetchError::LayerInfo {
            reference: reference.clone(),
            reason,
        };
        let value: serde_json::Value = serde_json::from_slice(config)
            .map_err(|e| unusable(format!("the config does not parse: {e}")))?;
        let diff_ids = value
            .pointer("/rootfs/diff_ids")
            .and_then(|ids| ids.as_array())
            .ok_or_else(|| unusable("the config has no rootfs.diff_ids".into()))?;
        if diff_ids.len() != manifest.layers().len() {
            return Err(unusable(format!(
                "the config lists {} diff_ids for {} layers",
                diff_ids.len(),
                manifest.layers().len()
            )));
        }
        let mut pairs = Vec::with_capacity(diff_ids.len());
        for (layer, diff_id) in manifest.layers().iter().zip(diff_ids) {
            let diff_id = diff_id
                .as_str()
                .and_then(|text| Digest::try_from(text).ok())
                .ok_or_else(|| unusable(format!("bad diff_id {diff_id}")))?;
            // Size 0 stands for "unknown" here; see `Substitutes`.
            let served = Descriptor::new(MediaType::ImageLayer, 0, diff_id);
            pairs.push((layer.digest().clone(), served));
        }
        // A second call (config fetched twice by racing threads) finds
        // the same pairs already set.
        let _ = self.substitutes.set(Substitutes(pairs));
        Ok(())
    }

    /// What the source actually serves for a manifest layer, and whether
    /// its size is known: the layer itself, except for
    /// `containers-storage:` (see [`Substitutes`]).
    pub(super) fn served<'a>(&'a self, descriptor: &'a Descriptor) -> (&'a Descriptor, bool) {
        match self.substitutes.get().and_then(|s| s.get(descriptor)) {
            Some(substitute) => (substitute, false),
            None => (descriptor, true),
        }
    }

    /// Starts streaming a blob; its bytes arrive unverified (the caller
    /// wraps the reader in a verifier). Without `size_known`, the size
    /// skopeo checks is ignored.
    pub(super) fn open_blob(
        &self,
        descriptor: &Descriptor,
        size_known: bool,
    ) -> Result<BlobReader, FetchError> {
        let pool = Arc::clone(&self.pool);
        let digest = descriptor.digest().clone();
        let size = size_known.then_some(descriptor.size());
        let (chunks, receiver) = mpsc::channel(CHANNEL_CHUNKS);
        let (started, start_result) = oneshot::channel();
        self.runtime
            .as_ref()
            .expect("the runtime lives until drop")
            .spawn(async move {
                let (permit, connection) = match pool.checkout().await {
                    Ok(checked_out) => checked_out,
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                let healthy =
                    stream_blob(&pool.settings, &connection, &digest, size, started, &chunks).await;
                let leftover = if healthy {
                    pool.checkin(connection)
                } else {
                    Some(connection)
                };
                if let Some(connection) = leftover {
                    connection.shut_down().await;
                }
                drop(permit);
                // The reader sees end of file only now, once the connection
                // is back in the pool (or gone): a source dropped right
                // after reading a layer then finds every process idle.
                drop(chunks);
            });
        self.block_on(start_result)
            .unwrap_or(Err(FetchError::ProxyTaskLost))?;
        Ok(BlobReader {
            receiver,
            chunk: Vec::new(),
            position: 0,
        })
    }
}

impl Drop for ProxySource {
    fn drop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        let idle = self
            .pool
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        runtime.block_on(async {
            for connection in idle {
                connection.shut_down().await;
            }
        });
        // Layer streams still running hold their own processes: they shut
        // them down if they finish now (the pool is closed), and otherwise
        // the processes exit when their socket closes as the runtime drops
        // the tasks.
        runtime.shutdown_timeout(Duration::from_secs(10));
    }
}

/// The manifest, with skopeo's digest for it.
async fn fetch_metadata(
    settings: &Settings,
    connection: &Connection,
    expected: &Expected,
) -> Result<Opened, FetchError> {
    let (digest, raw_manifest) = connection
        .proxy
        .fetch_manifest_raw_oci(&connection.image)
        .await
        .map_err(settings.proxy_error("fetching the manifest of"))?;
    let digest = Digest::try_from(digest.as_str()).map_err(|_| FetchError::BadDigest {
        digest: digest.clone(),
    })?;
    if digest != expected.digest {
        return Err(FetchError::ManifestChanged {
            reference: settings.reference.clone(),
            expected: expected.digest.clone(),
            actual: digest,
        });
    }
    let converted = expected.translated;
    if !converted {
        super::verify::check_bytes(&raw_manifest, &digest, None).map_err(|source| {
            FetchError::Verify {
                what: "manifest",
                source,
            }
        })?;
    }
    let manifest: ImageManifest = super::parse_json(&raw_manifest, "manifest", &digest)?;
    Ok(Opened {
        digest,
        raw_manifest,
        manifest,
        converted,
    })
}

/// The raw config. skopeo's config calls re-serialize the config, so
/// unless the manifest itself was translated (and its config with it) we
/// fetch the config blob as stored.
async fn fetch_config(
    settings: &Settings,
    connection: &Connection,
    manifest: &ImageManifest,
    converted: bool,
) -> Result<Vec<u8>, FetchError> {
    if converted {
        connection
            .proxy
            .fetch_config_raw(&connection.image)
            .await
            .map_err(settings.proxy_error("fetching the config of"))
    } else {
        fetch_small_blob(settings, connection, manifest.config()).await
    }
}

/// A metadata blob, read whole (verification is the caller's).
async fn fetch_small_blob(
    settings: &Settings,
    connection: &Connection,
    descriptor: &Descriptor,
) -> Result<Vec<u8>, FetchError> {
    let size = descriptor.size();
    if size > super::MAX_METADATA_SIZE {
        return Err(FetchError::TooLarge {
            what: "config",
            size,
        });
    }
    let (reader, finish) = connection
        .proxy
        .get_blob(&connection.image, descriptor.digest(), size)
        .await
        .map_err(settings.proxy_error("fetching the config of"))?;
    let read = async move {
        let mut raw = Vec::new();
        let mut reader = reader.take(size + 1);
        reader.read_to_end(&mut raw).await.map(|_| raw)
    };
    let (raw, finished) = tokio::join!(read, finish);
    finished.map_err(settings.proxy_error("fetching the config of"))?;
    raw.map_err(|source| FetchError::ProxyRead {
        reference: settings.reference.clone(),
        source,
    })
}

/// Whether a failed `FinishPipe` only reports the size we could not give:
/// skopeo checks the byte count against the size we pass, after copying
/// the whole blob, with this message (unchanged from skopeo 1.9 to its
/// current proxy code). Its digest check comes after and would replace
/// this message, and the caller checks the diff_id itself.
fn only_unknown_size(error: &containers_image_proxy::Error, copied: u64) -> bool {
    matches!(
        error,
        containers_image_proxy::Error::RequestInitiationFailure { method, error }
            if &**method == "FinishPipe"
                && **error == *format!("expected 0 bytes in blob, got {copied}")
    )
}

/// Copies one blob into `chunks`, then reports how the proxy finished.
/// `size: None` fetches a blob of unknown size. Returns whether the
/// connection can be reused.
async fn stream_blob(
    settings: &Settings,
    connection: &Connection,
    digest: &Digest,
    size: Option<u64>,
    started: oneshot::Sender<Result<(), FetchError>>,
    chunks: &mpsc::Sender<io::Result<Vec<u8>>>,
) -> bool {
    let (reader, finish) = match connection
        .proxy
        .get_blob(&connection.image, digest, size.unwrap_or(0))
        .await
    {
        Ok(parts) => parts,
        Err(source) => {
            let _ = started.send(Err(FetchError::Proxy {
                operation: "fetching a blob of",
                reference: settings.reference.clone(),
                source,
            }));
            return false;
        }
    };
    if started.send(Ok(())).is_err() {
        // The opener is gone: close the pipe and let the proxy finish.
        drop(reader);
        let _ = finish.await;
        return false;
    }
    // The copy owns the pipe's read end: when it stops early (reader
    // dropped by the caller, read error) the pipe closes, so the proxy's
    // writer fails and `finish` returns instead of waiting forever.
    let copy_chunks = chunks.clone();
    let copy = async move {
        let mut reader = reader;
        let mut copied = 0u64;
        loop {
            let mut buffer = vec![0u8; CHUNK];
            let n = reader.read(&mut buffer).await?;
            if n == 0 {
                return Ok(Some(copied));
            }
            copied += n as u64;
            buffer.truncate(n);
            if copy_chunks.send(Ok(buffer)).await.is_err() {
                return Ok(None);
            }
        }
    };
    let (copied, finished): (io::Result<Option<u64>>, _) = tokio::join!(copy, finish);
    match (copied, finished) {
        (Ok(Some(_)), Ok(())) => true,
        (Ok(Some(copied)), Err(source)) if size.is_none() && only_unknown_size(&source, copied) => {
            true
        }
        // The reader went away: nobody to tell.
        (Ok(None), _) => false,
        (Err(e), _) => {
            let _ = chunks.send(Err(e)).await;
            false
        }
        (Ok(Some(_)), Err(source)) => {
            let error = FetchError::Proxy {
                operation: "streaming a blob of",
                reference: settings.reference.clone(),
                source,
            };
            let _ = chunks.send(Err(io::Error::other(error))).await;
            false
        }
    }
}

/// The blocking end of a blob stream. Call it from plain threads: reading
/// blocks the thread, so not from inside an async runtime.
#[derive(Debug)]
pub(super) struct BlobReader {
    receiver: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    position: usize,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position >= self.chunk.len() {
            match self.receiver.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.position = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let available = self.chunk.get(self.position..).unwrap_or_default();
        let n = available.len().min(buf.len());
        buf.get_mut(..n)
            .expect("n is at most buf.len()")
            .copy_from_slice(available.get(..n).expect("n is at most available.len()"));
        self.position += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skopeo_is_told_the_platform() {
        let mut settings = Settings {
            reference: "dir:x".into(),
            insecure_tls: false,
            platform: None,
        };
        assert_eq!(settings.skopeo().get_args().count(), 0);
        settings.platform = Some(Platform::new("linux", "arm", Some("v7")));
        let args: Vec<_> = settings.skopeo().get_args().map(|a| a.to_owned()).collect();
        assert_eq!(
            args,
            [
                "--override-os",
                "linux",
                "--override-arch",
                "arm",
                "--override-variant",
                "v7"
            ]
        );
    }

    #[test]
    fn only_the_unknown_size_complaint_is_forgiven() {
        let failure =
            |method: &str, error: &str| containers_image_proxy::Error::RequestInitiationFailure {
                method: method.into(),
                error: error.into(),
            };
        let size = failure("FinishPipe", "expected 0 bytes in blob, got 10240");
        assert!(only_unknown_size(&size, 10240));
        assert!(!only_unknown_size(&size, 10239));
        let corrupt = failure("FinishPipe", "corrupted blob, expecting sha256:00");
        assert!(!only_unknown_size(&corrupt, 10240));
        let other = failure("GetBlob", "expected 0 bytes in blob, got 10240");
        assert!(!only_unknown_size(&other, 10240));
    }

    #[test]
    fn blob_reader_passes_chunks_errors_and_the_end() {
        let (sender, receiver) = mpsc::channel(4);
        let mut reader = BlobReader {
            receiver,
            chunk: Vec::new(),
            position: 0,
        };
        sender.blocking_send(Ok(b"hello ".to_vec())).expect("open");
        sender.blocking_send(Ok(Vec::new())).expect("open");
        sender.blocking_send(Ok(b"world".to_vec())).expect("open");
        let mut out = [0u8; 4];
        let mut got = Vec::new();
        for _ in 0..3 {
            let n = reader.read(&mut out).expect("data");
            got.extend_from_slice(&out[..n]);
        }
        assert_eq!(got, b"hello worl");
        sender
            .blocking_send(Err(io::Error::other("proxy said no")))
            .expect("open");
        let mut rest = [0u8; 16];
        assert_eq!(reader.read(&mut rest).expect("the rest of a chunk"), 1);
        let err = reader.read(&mut rest).expect_err("the error");
        assert_eq!(err.to_string(), "proxy said no");
        drop(sender);
        assert_eq!(reader.read(&mut rest).expect("end of file"), 0);
    }
}
