//! Reading a layer's entries back from its split stream.
//!
//! The tar headers are inline in the stream; a large file body is one
//! object chunk whose size the header gives. Nothing is read from the
//! repository: the entries name objects by digest, and the tree built
//! from them does the same.

use cfs_erofs::digest::FsVerityDigest;
use cfs_erofs::tree::{LeafContent, RegularFile};
use cfs_images::splitstream::{Chunk, Chunks, ContentType, SplitStream};

use super::header::{self, Blocks, Event, BLOCK};
use super::{shown, Checked, Shape, TarEntry, TarError, TarItem, INLINE_CONTENT_MAX};

/// The inline bytes of a split stream as one run, with the object
/// chunks between them handed out on request.
struct Inline<'a, H> {
    chunks: Chunks<'a, H>,
    /// The current inline piece and how much of it is used.
    piece: Vec<u8>,
    used: usize,
    /// An object chunk met while looking for inline bytes.
    object: Option<&'a H>,
    /// Tar bytes consumed.
    offset: u64,
}

impl<'a, H: FsVerityDigest> Inline<'a, H> {
    /// Makes inline bytes available; `false` at an object chunk or the
    /// end of the stream.
    fn refill(&mut self) -> Result<bool, TarError> {
        while self.used == self.piece.len() {
            if self.object.is_some() {
                return Ok(false);
            }
            match self.chunks.next().transpose()? {
                None => return Ok(false),
                Some(Chunk::Inline(piece)) => {
                    self.piece = piece;
                    self.used = 0;
                }
                Some(Chunk::External(digest)) => self.object = Some(digest),
            }
        }
        Ok(true)
    }

    /// Copies inline bytes into `buf` until it is full or they run out;
    /// returns how many.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let mut filled = 0;
        while filled < buf.len() && self.refill()? {
            let n = (buf.len() - filled).min(self.piece.len() - self.used);
            buf[filled..filled + n].copy_from_slice(&self.piece[self.used..self.used + n]);
            self.used += n;
            filled += n;
        }
        self.offset += filled as u64;
        Ok(filled)
    }

    /// Reads `len` (at most a block) inline bytes that must be there.
    fn exact(&mut self, len: usize, entry: &Checked) -> Result<[u8; BLOCK], TarError> {
        let mut buf = [0u8; BLOCK];
        if self.fill(&mut buf[..len])? < len {
            return Err(self.missing(entry));
        }
        Ok(buf)
    }

    /// The error for content that is not where the header says.
    fn missing(&self, entry: &Checked) -> TarError {
        if self.object.is_some() {
            TarError::ChunkMismatch {
                path: shown(&entry.path),
                size: entry.size,
                found: "as an object",
            }
        } else {
            TarError::Truncated {
                offset: self.offset,
                what: "the content of a file",
            }
        }
    }

    /// The object chunk that must come next, for a large file.
    fn object(&mut self, entry: &Checked) -> Result<H, TarError> {
        if self.refill()? {
            return Err(TarError::ChunkMismatch {
                path: shown(&entry.path),
                size: entry.size,
                found: "inline",
            });
        }
        let digest = self.object.take().ok_or_else(|| self.missing(entry))?;
        self.offset += entry.size;
        Ok(*digest)
    }
}

impl<H: FsVerityDigest> Blocks for Inline<'_, H> {
    fn next_block(&mut self, block: &mut [u8; BLOCK]) -> Result<bool, TarError> {
        let start = self.offset;
        match self.fill(block)? {
            0 if self.object.is_none() => Ok(false),
            BLOCK => Ok(true),
            _ if self.object.is_some() => Err(TarError::UnexpectedObject { offset: start }),
            _ => Err(TarError::Truncated {
                offset: self.offset,
                what: "a header block",
            }),
        }
    }

    fn offset(&self) -> u64 {
        self.offset
    }
}

/// Iterator over the entries of a layer's split stream; see
/// [`layer_entries`].
pub struct LayerEntries<'a, H> {
    inline: Inline<'a, H>,
    /// Set after the last entry or an error.
    done: bool,
    /// An error found before the first entry.
    error: Option<TarError>,
}

impl<H: FsVerityDigest> std::fmt::Debug for LayerEntries<'_, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerEntries")
            .field("offset", &self.inline.offset)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<H: FsVerityDigest> LayerEntries<'_, H> {
    fn step(&mut self) -> Result<Option<TarEntry<H>>, TarError> {
        let header = match header::next_event(&mut self.inline)? {
            Event::Member(header) => header,
            Event::End | Event::Eof => return Ok(None),
        };
        let entry = header.check()?;
        let padded = entry.size.next_multiple_of(BLOCK as u64);
        let item = match entry.shape {
            Shape::File if entry.size > INLINE_CONTENT_MAX as u64 => {
                let digest = self.inline.object(&entry)?;
                let padding = (padded - entry.size) as usize;
                self.inline.exact(padding, &entry)?;
                TarItem::Leaf(LeafContent::Regular(RegularFile::External {
                    digest,
                    size: entry.size,
                }))
            }
            Shape::File => {
                let content = self.inline.exact(padded as usize, &entry)?;
                let data = &content[..entry.size as usize];
                TarItem::Leaf(LeafContent::Regular(RegularFile::Inline(data.into())))
            }
            // Other kinds have no content (`check` makes sure).
            Shape::Directory => TarItem::Directory,
            Shape::Symlink(ref target) => TarItem::Leaf(LeafContent::Symlink(target.clone())),
            Shape::Hardlink(ref target) => TarItem::Hardlink(target.clone()),
            Shape::CharDevice(rdev) => TarItem::Leaf(LeafContent::CharacterDevice(rdev)),
            Shape::BlockDevice(rdev) => TarItem::Leaf(LeafContent::BlockDevice(rdev)),
            Shape::Fifo => TarItem::Leaf(LeafContent::Fifo),
        };
        Ok(Some(TarEntry {
            path: entry.path,
            stat: entry.stat,
            item,
        }))
    }
}

impl<H: FsVerityDigest> Iterator for LayerEntries<'_, H> {
    type Item = Result<TarEntry<H>, TarError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(error) = self.error.take() {
            self.done = true;
            return Some(Err(error));
        }
        if self.done {
            return None;
        }
        let result = self.step();
        if !matches!(result, Ok(Some(_))) {
            self.done = true;
        }
        result.transpose()
    }
}

/// The entries of a tar layer stored as `stream`, in archive order.
///
/// Each entry is checked as [`split_layer`](super::split_layer) checks
/// it; a regular file's body must be inline if it has at most
/// [`INLINE_CONTENT_MAX`] bytes and an object otherwise. Entries after
/// the end-of-archive marker do not exist. The iterator ends after the
/// first error.
pub fn layer_entries<H: FsVerityDigest>(stream: &SplitStream<H>) -> LayerEntries<'_, H> {
    let error = (stream.content_type() != ContentType::OCI_LAYER)
        .then(|| TarError::NotALayer(stream.content_type()));
    LayerEntries {
        inline: Inline {
            chunks: stream.chunks(),
            piece: Vec::new(),
            used: 0,
            object: None,
            offset: 0,
        },
        done: false,
        error,
    }
}

#[cfg(test)]
mod tests {
    use cfs_erofs::digest::Sha256Digest;
    use cfs_images::splitstream::SplitStreamWriter;
    use cfs_images::{InitOptions, Repository};

    use super::*;
    use crate::tar::split_layer;

    /// A ustar header block for a regular file.
    fn header(name: &str, size: u64) -> [u8; BLOCK] {
        let mut block = [0u8; BLOCK];
        block[..name.len()].copy_from_slice(name.as_bytes());
        block[100..108].copy_from_slice(b"0000644\0");
        block[108..116].copy_from_slice(b"0000000\0");
        block[116..124].copy_from_slice(b"0000000\0");
        block[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        block[136..148].copy_from_slice(b"00000000001\0");
        block[156] = b'0';
        block[257..265].copy_from_slice(b"ustar\x0000");
        block[148..156].fill(b' ');
        let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        block
    }

    fn entries(stream: Vec<u8>) -> Vec<Result<TarEntry<Sha256Digest>, TarError>> {
        let stream = SplitStream::parse(stream).unwrap();
        layer_entries(&stream).collect()
    }

    #[test]
    fn split_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::<Sha256Digest>::init(
            &dir.path().join("repo"),
            &InitOptions {
                insecure: true,
                ..Default::default()
            },
        )
        .unwrap();
        let mut tar = Vec::new();
        tar.extend_from_slice(&header("small", 3));
        tar.extend_from_slice(b"abc");
        tar.resize(1024, 0);
        tar.extend_from_slice(&header("large", 600));
        tar.extend((0..600).map(|i| i as u8));
        tar.resize(1024 + 512 + 1024, 0);
        tar.extend_from_slice(&[0; 1024]);
        let layer = split_layer(&repo, &tar[..]).unwrap();
        assert_eq!(layer.size, tar.len() as u64);
        let read = entries(layer.stream_bytes);
        let read: Vec<_> = read.into_iter().map(Result::unwrap).collect();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].path, b"/small");
        assert_eq!(
            read[0].item,
            TarItem::Leaf(LeafContent::Regular(RegularFile::Inline(Box::new(*b"abc"))))
        );
        let TarItem::Leaf(LeafContent::Regular(RegularFile::External { digest, size })) =
            read[1].item
        else {
            panic!("{:?}", read[1]);
        };
        assert_eq!(size, 600);
        let stored = repo.read_object(&digest).unwrap();
        assert_eq!(stored, (0..600).map(|i| i as u8).collect::<Vec<_>>());
        assert_eq!(read[1].stat.mtime.sec, 1);
    }

    #[test]
    fn chunks_must_follow_the_size_rule() {
        let digest = Sha256Digest([7; 32]);
        // A 3-byte file stored as an object.
        let mut w = SplitStreamWriter::new(ContentType::OCI_LAYER);
        w.write_inline(&header("small", 3));
        w.write_external(digest, 3);
        w.write_inline(&[0; 509]);
        let got = entries(w.finish());
        assert!(
            matches!(
                &got[0],
                Err(TarError::ChunkMismatch {
                    found: "as an object",
                    ..
                })
            ),
            "{got:?}"
        );
        // A 100-byte file stored inline.
        let mut w = SplitStreamWriter::<Sha256Digest>::new(ContentType::OCI_LAYER);
        w.write_inline(&header("large", 100));
        w.write_inline(&[1; 512]);
        let got = entries(w.finish());
        assert!(
            matches!(
                &got[0],
                Err(TarError::ChunkMismatch {
                    found: "inline",
                    ..
                })
            ),
            "{got:?}"
        );
        // An object where a header belongs.
        let mut w = SplitStreamWriter::new(ContentType::OCI_LAYER);
        w.write_inline(&[0; 100]);
        w.write_external(digest, 412);
        let got = entries(w.finish());
        assert!(
            matches!(&got[0], Err(TarError::UnexpectedObject { offset: 0 })),
            "{got:?}"
        );
        // The header says more than the stream has.
        let mut w = SplitStreamWriter::<Sha256Digest>::new(ContentType::OCI_LAYER);
        w.write_inline(&header("large", 100));
        let got = entries(w.finish());
        assert!(
            matches!(&got[0], Err(TarError::Truncated { .. })),
            "{got:?}"
        );
        // Not a layer; and the iterator ends after an error.
        let w = SplitStreamWriter::<Sha256Digest>::new(ContentType::OCI_CONFIG);
        let got = entries(w.finish());
        assert_eq!(got.len(), 1);
        assert!(matches!(got[0], Err(TarError::NotALayer(_))));
    }
}
