//! `serve --varlink`: the repository's images and layers over varlink,
//! so that other programs (and `varlinkctl`) can ask what is pulled
//! without parsing our command output, and move layers in and out
//! without streaming their content through the socket.
//!
//! Calls are answered one at a time, each from the repository as it is
//! now: it is opened for each call, so `repo gc` runs between calls (and
//! waits for one in progress) however long the service lives. A push is checked whole before anything names it (see
//! [`cfs_oci::layer_transfer`]), so a refused or interrupted push leaves
//! the repository as fsck finds it clean.

use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cfs_erofs::digest::FsVerityDigest;
use cfs_images::transfer::ObjectDir;
use cfs_images::Repository;
use cfs_oci::catalog;
use cfs_oci::layer_transfer::{self, LayerTransferError};
use zlink::{service, tokio::unix, Server};

use super::{fds, layer_ref, Image, Images, ImagesError, ObjectNaming, PulledLayer, PushedLayer};

/// What the service does with its repository; a trait object because the
/// service macro takes no generic types and the repository's hash is one.
trait Store: Send + Sync {
    fn list(&self) -> Result<Images, ImagesError>;
    fn pull_layer(&self, diff_id: &str) -> Result<(PulledLayer, Vec<OwnedFd>), ImagesError>;
    fn push_layer(&self, push: Push<'_>) -> Result<PushedLayer, ImagesError>;
}

/// A `PushLayer()` call, its descriptors checked.
struct Push<'a> {
    diff_id: &'a str,
    name: &'a str,
    stream: Vec<u8>,
    objects: OwnedFd,
    object_names: ObjectNaming,
}

/// The service: one repository.
struct ImagesService {
    store: Box<dyn Store>,
}

impl std::fmt::Debug for ImagesService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImagesService").finish_non_exhaustive()
    }
}

#[service(
    interface = "org.cfsdeploy.Images",
    vendor = "cfs-deploy",
    product = "cfs-deploy",
    version = env!("CARGO_PKG_VERSION")
)]
impl ImagesService {
    /// Every tagged image, or only the one called `name`. (The optional
    /// parameter also makes `"parameters": {}` a valid call: zlink
    /// refuses an empty object for a method that takes none.)
    async fn list(&mut self, name: Option<String>) -> Result<Images, ImagesError> {
        let mut images = self.store.list()?;
        if let Some(name) = name {
            images.images.retain(|image| image.name == name);
        }
        Ok(images)
    }

    /// The layer `diff_id`: its split stream and the objects directory.
    #[zlink(return_fds)]
    async fn pull_layer(
        &mut self,
        diff_id: String,
    ) -> (Result<PulledLayer, ImagesError>, Vec<OwnedFd>) {
        match self.store.pull_layer(&diff_id) {
            Ok((layer, fds)) => (Ok(layer), fds),
            Err(e) => (Err(e), Vec::new()),
        }
    }

    /// Stores the layer `diff_id` sent as a stream and an objects
    /// directory, and names it `layers/<name>`.
    async fn push_layer(
        &mut self,
        diff_id: String,
        name: String,
        stream_fd: u32,
        objects_fd: u32,
        object_names: ObjectNaming,
        #[zlink(fds)] fds: Vec<OwnedFd>,
    ) -> Result<PushedLayer, ImagesError> {
        let refused = |reason| ImagesError::LayerRefused { reason };
        let [stream, objects] = fds::take(fds, [stream_fd, objects_fd]).map_err(refused)?;
        fds::check_directory(&objects).map_err(refused)?;
        let stream = fds::read_stream(stream).map_err(refused)?;
        self.store.push_layer(Push {
            diff_id: &diff_id,
            name: &name,
            stream,
            objects,
            object_names,
        })
    }
}

impl From<LayerTransferError> for ImagesError {
    fn from(error: LayerTransferError) -> Self {
        match error {
            LayerTransferError::NoSuchLayer(diff_id) => ImagesError::NoSuchLayer { diff_id },
            e if e.is_refusal() => ImagesError::LayerRefused {
                reason: e.to_string(),
            },
            e => ImagesError::RepositoryError {
                reason: e.to_string(),
            },
        }
    }
}

fn repository_error(error: impl std::fmt::Display) -> ImagesError {
    ImagesError::RepositoryError {
        reason: error.to_string(),
    }
}

/// The repository at a path, opened anew for each call: an open
/// repository holds a shared lock, and a service that held one for its
/// whole life would keep `repo gc` waiting for as long as it runs.
struct RepoAt<H> {
    path: PathBuf,
    hash: PhantomData<fn() -> H>,
}

impl<H: FsVerityDigest> RepoAt<H> {
    fn open(&self) -> Result<Repository<H>, ImagesError> {
        Repository::open(&self.path).map_err(repository_error)
    }
}

impl<H: FsVerityDigest> Store for RepoAt<H> {
    fn list(&self) -> Result<Images, ImagesError> {
        let images = catalog::list(&self.open()?).map_err(repository_error)?;
        Ok(Images {
            images: images
                .into_iter()
                .map(|image| Image {
                    name: image.tag,
                    manifest_digest: image.manifest_digest,
                    config_digest: image.config_digest,
                    image_id: image.image.map(|id| id.to_hex()),
                    boot_image_id: image.boot_image.map(|id| id.to_hex()),
                    diff_ids: image.layers.into_iter().map(|l| l.diff_id).collect(),
                })
                .collect(),
        })
    }

    fn pull_layer(&self, diff_id: &str) -> Result<(PulledLayer, Vec<OwnedFd>), ImagesError> {
        let repo = self.open()?;
        let export = layer_transfer::export_layer(&repo, diff_id)?;
        let stream = fds::sealed_memfd(&export.stream).map_err(repository_error)?;
        let layer = PulledLayer {
            stream_fd: 0,
            objects_fd: 1,
            object_names: ObjectNaming::Repository,
            algorithm: H::ALGORITHM.to_string(),
        };
        Ok((layer, vec![stream, export.objects]))
    }

    fn push_layer(&self, push: Push<'_>) -> Result<PushedLayer, ImagesError> {
        let repo = self.open()?;
        let stream_ref = layer_ref(push.name);
        let objects = ObjectDir {
            dir: push.objects.as_fd(),
            names: push.object_names.into(),
        };
        let import =
            layer_transfer::import_layer(&repo, push.diff_id, push.stream, objects, &stream_ref)?;
        Ok(PushedLayer {
            stream_digest: import.stream.to_hex(),
            stream_ref,
            reflinked: import.stats.reflinked,
            copied: import.stats.copied,
            present: import.stats.present,
            bytes: import.stats.bytes,
        })
    }
}

/// Listens on `socket` and answers calls about the repository at `repo`
/// (opened for each call) until the process is killed.
pub fn serve<H: FsVerityDigest + 'static>(repo: &Path, socket: &Path) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("starting the varlink service's runtime")?;
    runtime.block_on(async {
        let listener =
            unix::bind(socket).with_context(|| format!("listening on {}", socket.display()))?;
        let store = Box::new(RepoAt::<H> {
            path: repo.to_owned(),
            hash: PhantomData,
        });
        Server::new(listener, ImagesService { store })
            .run()
            .await
            .context("serving varlink")
    })
}
