//! `serve --varlink`: the repository's images over varlink, so that
//! other programs (and `varlinkctl`) can ask what is pulled without
//! parsing our command output. The interface is described in
//! `org.cfsdeploy.Images.varlink` next to this file.

use std::path::Path;

use anyhow::{Context, Result};
use cfs_erofs::digest::FsVerityDigest;
use cfs_images::Repository;
use cfs_oci::catalog;
use serde::{Deserialize, Serialize};
use zlink::{introspect, service, tokio::unix, ReplyError, Server};

/// One pulled image, as `List()` reports it.
#[derive(Debug, Serialize, Deserialize, introspect::Type)]
struct Image {
    name: String,
    manifest_digest: String,
    config_digest: String,
    image_id: Option<String>,
    boot_image_id: Option<String>,
}

/// `List()`'s reply.
#[derive(Debug, Serialize, Deserialize, introspect::Type)]
struct Images {
    images: Vec<Image>,
}

/// Errors the interface replies with.
#[derive(Debug, ReplyError, introspect::ReplyError)]
#[zlink(interface = "org.cfsdeploy.Images")]
enum ImagesError {
    /// The repository could not be read; `reason` says why.
    RepositoryError { reason: String },
}

/// Reads the repository's images now; a closure because the service
/// macro takes no generic types and the repository's hash is one.
type ListImages = Box<dyn Fn() -> Result<Images, ImagesError> + Send + Sync>;

/// The service: one repository, read on every call so that it reports
/// what is there now.
struct ImagesService {
    list_images: ListImages,
}

impl std::fmt::Debug for ImagesService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImagesService").finish_non_exhaustive()
    }
}

#[service(interface = "org.cfsdeploy.Images")]
impl ImagesService {
    /// Every tagged image, or only the one called `name`. (The optional
    /// parameter also makes `"parameters": {}` a valid call: zlink
    /// refuses an empty object for a method that takes none.)
    async fn list(&mut self, name: Option<String>) -> Result<Images, ImagesError> {
        let mut images = (self.list_images)()?;
        if let Some(name) = name {
            images.images.retain(|image| image.name == name);
        }
        Ok(images)
    }
}

fn list_images<H: FsVerityDigest>(repo: &Repository<H>) -> Result<Images, ImagesError> {
    let images = catalog::list(repo).map_err(|e| ImagesError::RepositoryError {
        reason: e.to_string(),
    })?;
    Ok(Images {
        images: images
            .into_iter()
            .map(|image| Image {
                name: image.tag,
                manifest_digest: image.manifest_digest,
                config_digest: image.config_digest,
                image_id: image.image.map(|id| id.to_hex()),
                boot_image_id: image.boot_image.map(|id| id.to_hex()),
            })
            .collect(),
    })
}

/// Listens on `socket` and answers calls until the process is killed.
pub fn serve<H: FsVerityDigest + Send + Sync + 'static>(
    repo: Repository<H>,
    socket: &Path,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("starting the varlink service's runtime")?;
    runtime.block_on(async {
        let listener =
            unix::bind(socket).with_context(|| format!("listening on {}", socket.display()))?;
        let list_images = Box::new(move || list_images(&repo));
        Server::new(listener, ImagesService { list_images })
            .run()
            .await
            .context("serving varlink")
    })
}
