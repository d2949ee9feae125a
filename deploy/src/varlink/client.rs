//! Our client of `org.cfsdeploy.Images`: `image push-layer` and
//! `image pull-layer`. A pulled layer is checked here exactly as the
//! service checks a pushed one: neither side trusts the other's
//! descriptors.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use anyhow::{bail, Context, Result};
use cfs_erofs::digest::FsVerityDigest;
use cfs_images::transfer::{ObjectDir, TransferStats};
use cfs_images::Repository;
use cfs_oci::layer_transfer::{self, LayerImport};
use zlink::proxy;

use super::{fds, layer_ref, ImagesError, ObjectNaming, PulledLayer, PushedLayer};

#[proxy("org.cfsdeploy.Images")]
trait ImagesProxy {
    #[zlink(return_fds)]
    async fn pull_layer(
        &mut self,
        diff_id: &str,
    ) -> zlink::Result<(Result<PulledLayer, ImagesError>, Vec<OwnedFd>)>;

    async fn push_layer(
        &mut self,
        diff_id: &str,
        name: &str,
        stream_fd: u32,
        objects_fd: u32,
        object_names: ObjectNaming,
        #[zlink(fds)] fds: Vec<OwnedFd>,
    ) -> zlink::Result<Result<PushedLayer, ImagesError>>;
}

/// What a push or pull stored where.
#[derive(Debug)]
pub struct Moved {
    /// The stream's digest (hex).
    pub stream_digest: String,
    /// Its ref below `streams/refs/`.
    pub stream_ref: String,
    /// How the objects got in.
    pub stats: TransferStats,
}

fn block_on<T>(future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("starting the varlink client's runtime")?
        .block_on(future)
}

/// Sends the layer `diff_id` of `repo` to the service at `socket`, which
/// names it `layers/<name>`.
pub fn push_layer<H: FsVerityDigest>(
    repo: &Repository<H>,
    socket: &Path,
    diff_id: &str,
    name: &str,
) -> Result<Moved> {
    let export = layer_transfer::export_layer(repo, diff_id)?;
    let stream = fds::sealed_memfd(&export.stream).context("putting the stream in a memfd")?;
    let pushed = block_on(async {
        let mut conn = zlink::tokio::unix::connect(socket)
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        let reply = conn
            .push_layer(
                diff_id,
                name,
                0,
                1,
                ObjectNaming::Repository,
                vec![stream, export.objects],
            )
            .await
            .context("calling PushLayer")?;
        Ok(reply?)
    })?;
    Ok(Moved {
        stream_digest: pushed.stream_digest,
        stream_ref: pushed.stream_ref,
        stats: TransferStats {
            reflinked: pushed.reflinked,
            copied: pushed.copied,
            present: pushed.present,
            bytes: pushed.bytes,
        },
    })
}

/// Fetches the layer `diff_id` from the service at `socket` into `repo`,
/// naming it `layers/<name>`.
pub fn pull_layer<H: FsVerityDigest>(
    repo: &Repository<H>,
    socket: &Path,
    diff_id: &str,
    name: &str,
) -> Result<Moved> {
    let (layer, received) = block_on(async {
        let mut conn = zlink::tokio::unix::connect(socket)
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        let (reply, received) = conn
            .pull_layer(diff_id)
            .await
            .context("calling PullLayer")?;
        Ok((reply?, received))
    })?;
    let ours = H::ALGORITHM.to_string();
    if layer.algorithm != ours {
        bail!(
            "the service's repository uses {}, this one {ours}",
            layer.algorithm
        );
    }
    let [stream, objects] = fds::take(received, [layer.stream_fd, layer.objects_fd])
        .map_err(anyhow::Error::msg)
        .context("the service's reply")?;
    fds::check_directory(&objects)
        .map_err(anyhow::Error::msg)
        .context("the service's reply")?;
    let stream = fds::read_stream(stream)
        .map_err(anyhow::Error::msg)
        .context("the service's reply")?;
    let stream_ref = layer_ref(name);
    let objects = ObjectDir {
        dir: objects.as_fd(),
        names: layer.object_names.into(),
    };
    let LayerImport { stream, stats } =
        layer_transfer::import_layer(repo, diff_id, stream, objects, &stream_ref)?;
    Ok(Moved {
        stream_digest: stream.to_hex(),
        stream_ref,
        stats,
    })
}
