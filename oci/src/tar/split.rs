//! Splitting an uncompressed tar layer into a split stream.
//!
//! The tar is read once, as it arrives: header blocks go into the
//! stream, each large file body is streamed straight into a repository
//! object (memory stays bounded by the largest run of inline data, as the
//! format needs each run's length before its bytes). The diff_id is the
//! caller's to check, on the bytes as they are read (`fetch` does), so the
//! stream reassembles to exactly the tar it was checked on. What goes inline and what
//! becomes an object follows the reference exactly: regular files of more
//! than [`INLINE_CONTENT_MAX`] bytes are objects, with their padding
//! inline; everything after the end-of-archive marker is kept inline too,
//! as the diff_id covers it.

use std::io::{self, BufRead, Read};

use cfs_erofs::digest::FsVerityDigest;
use cfs_images::splitstream::{ContentType, SplitStreamWriter};
use cfs_images::Repository;

use super::header::{self, Blocks, Event, BLOCK};
use super::{shown, Shape, TarError, INLINE_CONTENT_MAX};

/// Most bytes accepted after the end-of-archive marker. Tar writers pad
/// to a record (10 KiB for GNU tar and Python); more is not a layer.
pub const TRAILING_MAX: u64 = 1 << 20;

/// A tar layer split into a split stream, not yet stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitLayer {
    /// The split stream file; the objects it names are stored already.
    pub stream_bytes: Vec<u8>,
    /// Length of the tar in bytes.
    pub size: u64,
}

/// Where the bytes of a tar being split come from: a plain byte stream
/// ([`split_layer`]), or a layer rebuilt from a container store, which
/// can hand over a file body as a file rather than as bytes.
pub(crate) trait TarInput {
    /// Reads the next bytes of the tar; `Ok(0)` at its end.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Stores the next `size` bytes of the tar, a file's body, as an
    /// object of `repo`.
    fn store_body<H: FsVerityDigest>(
        &mut self,
        repo: &Repository<H>,
        size: u64,
    ) -> Result<H, BodyFailure>;
}

/// Why a file body could not be stored whole, after `read` of its bytes.
pub(crate) struct BodyFailure {
    /// Bytes of the body consumed before the failure.
    pub read: u64,
    /// What went wrong.
    pub kind: BodyFailureKind,
}

/// What stopped a file body.
pub(crate) enum BodyFailureKind {
    /// The tar ended inside it.
    Eof,
    /// Reading failed.
    Read(io::Error),
    /// The repository refused the object.
    Store(cfs_images::Error),
}

/// A plain tar byte stream, read through its buffer.
struct Stream<R>(R);

impl<R: BufRead> TarInput for Stream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }

    fn store_body<H: FsVerityDigest>(
        &mut self,
        repo: &Repository<H>,
        size: u64,
    ) -> Result<H, BodyFailure> {
        let mut body = Body {
            input: &mut self.0,
            left: size,
            failure: None,
        };
        let stored = repo.ensure_object_from_buf_read(&mut body);
        let (read, failure) = (size - body.left, body.failure);
        if let Some(kind) = failure {
            return Err(BodyFailure { read, kind });
        }
        stored.map_err(|e| BodyFailure {
            read,
            kind: BodyFailureKind::Store(e),
        })
    }
}

/// The tar being split and the stream being written.
struct Splitter<'a, I, H: FsVerityDigest> {
    input: &'a mut I,
    writer: SplitStreamWriter<H>,
    /// Bytes consumed from the tar.
    offset: u64,
}

impl<I: TarInput, H: FsVerityDigest> Splitter<'_, I, H> {
    /// Reads until `buf` is full or the tar ends; returns the count.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.input.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(TarError::Read {
                        offset: self.offset + filled as u64,
                        source,
                    })
                }
            }
        }
        self.offset += filled as u64;
        Ok(filled)
    }

    /// Copies exactly `len` (at most a block) bytes inline.
    fn inline(&mut self, len: usize, what: &'static str) -> Result<(), TarError> {
        let mut buf = [0u8; BLOCK];
        let buf = &mut buf[..len];
        if self.fill(buf)? < len {
            return Err(TarError::Truncated {
                offset: self.offset,
                what,
            });
        }
        self.writer.write_inline(buf);
        Ok(())
    }

    /// Stores a file body of `size` bytes as an object and refers to it
    /// from the stream.
    fn external(&mut self, repo: &Repository<H>, size: u64, path: &[u8]) -> Result<(), TarError> {
        match self.input.store_body(repo, size) {
            Ok(digest) => {
                self.offset += size;
                self.writer.write_external(digest, size);
                Ok(())
            }
            Err(BodyFailure { read, kind }) => {
                self.offset += read;
                Err(match kind {
                    BodyFailureKind::Eof => TarError::Truncated {
                        offset: self.offset,
                        what: "the content of a file",
                    },
                    BodyFailureKind::Read(source) => TarError::Read {
                        offset: self.offset,
                        source,
                    },
                    BodyFailureKind::Store(source) => TarError::Store {
                        path: shown(path),
                        source: Box::new(source),
                    },
                })
            }
        }
    }

    /// Keeps everything after the end-of-archive marker inline.
    fn trailing(&mut self) -> Result<(), TarError> {
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0u64;
        loop {
            let n = self.fill(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            total += n as u64;
            if total > TRAILING_MAX {
                return Err(TarError::TrailingData {
                    limit: TRAILING_MAX,
                });
            }
            self.writer.write_inline(&buf[..n]);
        }
    }
}

impl<I: TarInput, H: FsVerityDigest> Blocks for Splitter<'_, I, H> {
    fn next_block(&mut self, block: &mut [u8; BLOCK]) -> Result<bool, TarError> {
        match self.fill(block)? {
            0 => Ok(false),
            BLOCK => {
                self.writer.write_inline(block);
                Ok(true)
            }
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

/// The next `left` bytes of the tar, failing at an early end so that a
/// short body is never stored as if complete. Read through [`BufRead`],
/// the body is hashed and written from the input's buffer, uncopied.
struct Body<'a, R> {
    input: &'a mut R,
    left: u64,
    failure: Option<BodyFailureKind>,
}

impl<R: BufRead> BufRead for Body<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.left == 0 {
            return Ok(&[]);
        }
        match self.input.fill_buf() {
            Ok([]) => {
                self.failure = Some(BodyFailureKind::Eof);
                Err(io::ErrorKind::UnexpectedEof.into())
            }
            Ok(available) => {
                let n = usize::try_from(self.left)
                    .map_or(available.len(), |left| left.min(available.len()));
                Ok(&available[..n])
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let kind = e.kind();
                self.failure = Some(BodyFailureKind::Read(e));
                Err(kind.into())
            }
        }
    }

    fn consume(&mut self, amount: usize) {
        self.input.consume(amount);
        self.left -= amount as u64;
    }
}

impl<R: BufRead> Read for Body<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = buf.len().min(available.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// Splits the uncompressed tar `tar` into a split stream, storing every
/// regular file body of more than [`INLINE_CONTENT_MAX`] bytes as an
/// object of `repo`.
///
/// The stream is byte-identical to composefs-rs 0.9.4's for the same tar.
/// Every entry is checked as [`layer_entries`](super::layer_entries)
/// checks it, so a layer that splits also reads back. File bodies are
/// hashed and written straight from `tar`'s buffer (wrap a plain reader
/// in a `BufReader`).
///
/// # Errors
/// [`TarError`] for a malformed or hostile archive, a read error, or a
/// failure to store an object. Nothing names the objects already
/// written; garbage collection removes them.
pub fn split_layer<H: FsVerityDigest>(
    repo: &Repository<H>,
    tar: impl BufRead,
) -> Result<SplitLayer, TarError> {
    split_input(repo, &mut Stream(tar))
}

/// [`split_layer`] for any [`TarInput`].
pub(crate) fn split_input<H: FsVerityDigest, I: TarInput>(
    repo: &Repository<H>,
    input: &mut I,
) -> Result<SplitLayer, TarError> {
    let mut splitter = Splitter {
        input,
        writer: SplitStreamWriter::<H>::new(ContentType::OCI_LAYER),
        offset: 0,
    };
    loop {
        match header::next_event(&mut splitter)? {
            Event::Member(header) => {
                let entry = header.check()?;
                let padded = entry.size.next_multiple_of(BLOCK as u64);
                // `check` allows content on regular files only.
                let large =
                    matches!(entry.shape, Shape::File) && entry.size > INLINE_CONTENT_MAX as u64;
                if large {
                    splitter.external(repo, entry.size, &entry.path)?;
                    let padding = (padded - entry.size) as usize;
                    splitter.inline(padding, "the padding of a file")?;
                } else {
                    splitter.inline(padded as usize, "the content of a file")?;
                }
            }
            Event::End => {
                splitter.trailing()?;
                break;
            }
            Event::Eof => break,
        }
    }
    Ok(SplitLayer {
        stream_bytes: splitter.writer.finish(),
        size: splitter.offset,
    })
}
