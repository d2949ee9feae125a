//! The varlink interface `org.cfsdeploy.Images` (described in
//! `org.cfsdeploy.Images.varlink` next to this file): `serve --varlink`
//! answers it ([`service`]), `image pull-layer`/`push-layer` call it
//! ([`client`]). Both sides share the wire types below, so what the
//! server sends is what the client parses.
//!
//! Layers travel in the transfer form of [`cfs_images::transfer`]: the
//! split stream in a sealed memfd and a directory of objects, both as
//! descriptors passed with the call or reply (`SCM_RIGHTS`), named in the
//! parameters by their index among the message's descriptors.

mod client;
mod fds;
mod service;

use cfs_images::transfer::ObjectNames;
use serde::{Deserialize, Serialize};
use zlink::introspect;

pub use client::{pull_layer, push_layer, Moved};
pub use service::serve;

/// The ref below `streams/refs/` that a layer pushed or pulled under
/// `name` gets: a namespace of its own, so a layer cannot replace a tag.
pub fn layer_ref(name: &str) -> String {
    format!("layers/{name}")
}

/// One pulled image, as `List()` reports it.
#[derive(Debug, Serialize, Deserialize, introspect::Type)]
struct Image {
    name: String,
    manifest_digest: String,
    config_digest: String,
    image_id: Option<String>,
    boot_image_id: Option<String>,
    diff_ids: Vec<String>,
}

/// `List()`'s reply.
#[derive(Debug, Serialize, Deserialize, introspect::Type)]
struct Images {
    images: Vec<Image>,
}

/// How the files of an objects directory are named.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, introspect::Type)]
#[serde(rename_all = "lowercase")]
#[zlink(rename_all = "lowercase")]
enum ObjectNaming {
    /// `XX/<rest of the hex digest>`, a repository's `objects/`.
    Repository,
    /// `<hex digest>`, one flat directory.
    Flat,
}

impl From<ObjectNaming> for ObjectNames {
    fn from(naming: ObjectNaming) -> Self {
        match naming {
            ObjectNaming::Repository => ObjectNames::Repository,
            ObjectNaming::Flat => ObjectNames::Flat,
        }
    }
}

/// `PullLayer()`'s reply; the `*_fd` fields index the reply's descriptors.
#[derive(Debug, Serialize, Deserialize, introspect::Type)]
struct PulledLayer {
    stream_fd: u32,
    objects_fd: u32,
    object_names: ObjectNaming,
    algorithm: String,
}

/// `PushLayer()`'s reply.
#[derive(Debug, Serialize, Deserialize, introspect::Type)]
struct PushedLayer {
    stream_digest: String,
    stream_ref: String,
    reflinked: u64,
    copied: u64,
    present: u64,
    bytes: u64,
}

/// Errors the interface replies with.
#[derive(Debug, zlink::ReplyError, introspect::ReplyError)]
#[zlink(interface = "org.cfsdeploy.Images")]
enum ImagesError {
    /// The repository could not be read or written; `reason` says why.
    RepositoryError { reason: String },
    /// The repository has no layer with that diff_id.
    NoSuchLayer { diff_id: String },
    /// What the caller sent (descriptors, stream, objects) is refused;
    /// nothing was named.
    LayerRefused { reason: String },
}

impl std::fmt::Display for ImagesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::RepositoryError { reason } => write!(f, "the service's repository: {reason}"),
            Self::NoSuchLayer { diff_id } => write!(f, "the service has no layer {diff_id}"),
            Self::LayerRefused { reason } => write!(f, "the service refused the layer: {reason}"),
        }
    }
}

impl std::error::Error for ImagesError {}
