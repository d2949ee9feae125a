//! Turning a layer blob into its uncompressed tar stream.
//!
//! The layer's media type says how it is compressed: gzip (possibly several
//! concatenated members, as parallel compressors write), zstd (possibly
//! several frames), or nothing. A damaged or truncated stream must fail
//! loudly rather than yield a short tar that might still parse, so the
//! decoders' errors, and a stream that ends inside a member or frame, come
//! back as [`DecompressError`]s naming the compression. Errors of the
//! underlying reader (I/O, digest verification) pass through unchanged, so
//! the caller can still tell a corrupt download from a corrupt encoding.

use std::fmt;
use std::io::{self, BufReader, Read};

use oci_spec::image::MediaType;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip, one or more members.
    Gzip,
    /// zstd, one or more frames.
    Zstd,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

impl Compression {
    /// The compression of a layer with this media type, or `None` if it is
    /// not a layer type we know (OCI and Docker schema 2 tar layers,
    /// distributable or not).
    pub fn from_media_type(media_type: &MediaType) -> Option<Compression> {
        match media_type {
            MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => {
                Some(Compression::None)
            }
            MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
                Some(Compression::Gzip)
            }
            MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => {
                Some(Compression::Zstd)
            }
            MediaType::Other(other) => match other.as_str() {
                "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
                | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                    Some(Compression::Gzip)
                }
                "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A compressed stream that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("{compression} layer stream is corrupt or truncated: {source}")]
pub struct DecompressError {
    /// The compression being decoded.
    pub compression: Compression,
    /// What the decoder reported.
    #[source]
    pub source: io::Error,
}

/// The media type of a blob whose compression we do not know.
#[derive(Debug, thiserror::Error)]
#[error("unsupported layer media type {media_type}")]
pub struct UnsupportedMediaType {
    /// The media type.
    pub media_type: MediaType,
}

/// Marks errors that come from the compressed input itself, so they are
/// not blamed on the decoder.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct InputError(io::Error);

/// Tags every error of the wrapped reader as an [`InputError`].
struct TagInput<R>(R);

impl<R: Read> Read for TagInput<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), InputError(e)))
    }
}

/// The decoder's output, with its errors sorted into input errors (passed
/// through as they were) and decoding errors ([`DecompressError`]).
struct Decoded<D> {
    decoder: D,
    compression: Compression,
}

impl<D: Read> Read for Decoded<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.decoder.read(buf).map_err(|e| {
            if e.get_ref().is_some_and(|inner| inner.is::<InputError>()) {
                let inner = e
                    .into_inner()
                    .expect("checked is_some above")
                    .downcast::<InputError>()
                    .expect("checked is::<InputError> above");
                return inner.0;
            }
            let kind = match e.kind() {
                io::ErrorKind::UnexpectedEof => io::ErrorKind::UnexpectedEof,
                _ => io::ErrorKind::InvalidData,
            };
            io::Error::new(
                kind,
                DecompressError {
                    compression: self.compression,
                    source: e,
                },
            )
        })
    }
}

/// The uncompressed tar stream of a layer blob with this media type.
pub fn decompress<'a>(
    media_type: &MediaType,
    reader: impl Read + Send + 'a,
) -> Result<Box<dyn Read + Send + 'a>, UnsupportedMediaType> {
    let compression =
        Compression::from_media_type(media_type).ok_or_else(|| UnsupportedMediaType {
            media_type: media_type.clone(),
        })?;
    Ok(decompress_as(compression, reader))
}

/// The uncompressed stream of `reader`, compressed with `compression`.
pub fn decompress_as<'a>(
    compression: Compression,
    reader: impl Read + Send + 'a,
) -> Box<dyn Read + Send + 'a> {
    let input = TagInput(reader);
    match compression {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(Decoded {
            decoder: GzipStrict::new(input),
            compression,
        }),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(BufReader::new(input))
                .expect("creating a zstd decoding context only fails on allocation failure");
            Box::new(Decoded {
                decoder,
                compression,
            })
        }
    }
}

/// Multi-member gzip that also refuses an empty input, which flate2 reads
/// as an empty stream but is no gzip file at all.
struct GzipStrict<R: Read> {
    decoder: flate2::read::MultiGzDecoder<BufReader<R>>,
    produced_any: bool,
}

impl<R: Read> GzipStrict<R> {
    fn new(reader: R) -> Self {
        Self {
            decoder: flate2::read::MultiGzDecoder::new(BufReader::new(reader)),
            produced_any: false,
        }
    }
}

impl<R: Read> Read for GzipStrict<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.decoder.read(buf)?;
        if n > 0 {
            self.produced_any = true;
        } else if !self.produced_any && self.decoder.header().is_none() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "empty input, no gzip header",
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sample() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("in memory");
        e.finish().expect("in memory")
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(data, 3).expect("in memory")
    }

    fn read(media: MediaType, blob: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decompress(&media, blob)
            .expect("known media type")
            .read_to_end(&mut out)?;
        Ok(out)
    }

    fn decode_error(err: &io::Error) -> Option<&DecompressError> {
        err.get_ref().and_then(|e| e.downcast_ref())
    }

    #[test]
    fn round_trips() {
        let data = sample();
        assert_eq!(read(MediaType::ImageLayer, &data).expect("plain"), data);
        assert_eq!(
            read(MediaType::ImageLayerGzip, &gzip(&data)).expect("gzip"),
            data
        );
        assert_eq!(
            read(MediaType::ImageLayerZstd, &zstd(&data)).expect("zstd"),
            data
        );
        let docker = MediaType::Other("application/vnd.docker.image.rootfs.diff.tar.gzip".into());
        assert_eq!(read(docker, &gzip(&data)).expect("docker gzip"), data);
    }

    #[test]
    fn multi_member_gzip_and_multi_frame_zstd() {
        let data = sample();
        let (a, b) = data.split_at(12345);
        let mut two = gzip(a);
        two.extend(gzip(b));
        assert_eq!(read(MediaType::ImageLayerGzip, &two).expect("gzip"), data);
        let mut frames = zstd(a);
        frames.extend(zstd(b));
        assert_eq!(
            read(MediaType::ImageLayerZstd, &frames).expect("zstd"),
            data
        );
    }

    #[test]
    fn truncated_streams_fail() {
        let data = sample();
        for (media, blob) in [
            (MediaType::ImageLayerGzip, gzip(&data)),
            (MediaType::ImageLayerZstd, zstd(&data)),
        ] {
            for cut in [0, 1, 10, blob.len() / 2, blob.len() - 1] {
                let Err(err) = read(media.clone(), &blob[..cut]) else {
                    panic!("{media} cut at {cut} decoded");
                };
                let inner = decode_error(&err).unwrap_or_else(|| panic!("{media} {cut}: {err}"));
                assert!(err.to_string().contains("corrupt or truncated"), "{err}");
                assert_eq!(
                    inner.compression,
                    Compression::from_media_type(&media).expect("known")
                );
            }
        }
    }

    #[test]
    fn corrupt_streams_fail() {
        let data = sample();
        for (media, mut blob) in [
            (MediaType::ImageLayerGzip, gzip(&data)),
            (MediaType::ImageLayerZstd, zstd(&data)),
        ] {
            let middle = blob.len() / 2;
            blob[middle] ^= 0x55;
            match read(media.clone(), &blob) {
                Err(err) => assert!(decode_error(&err).is_some(), "{media}: {err}"),
                // zstd frames without a checksum can decode to other
                // bytes: the diff_id check is what catches those.
                Ok(out) => assert!(media == MediaType::ImageLayerZstd && out != data),
            }
        }
        // A plain tar labelled as gzip is not silently accepted.
        let Err(err) = read(MediaType::ImageLayerGzip, &data) else {
            panic!("a plain stream decoded as gzip");
        };
        assert!(decode_error(&err).is_some(), "{err}");
        // Trailing garbage after the last gzip member is refused too.
        let mut trailing = gzip(&data);
        trailing.extend(b"garbage!garbage!");
        assert!(read(MediaType::ImageLayerGzip, &trailing).is_err());
    }

    #[test]
    fn input_errors_pass_through() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "network gone",
                ))
            }
        }
        for media in [
            MediaType::ImageLayer,
            MediaType::ImageLayerGzip,
            MediaType::ImageLayerZstd,
        ] {
            let mut out = Vec::new();
            let err = decompress(&media, Broken)
                .expect("known")
                .read_to_end(&mut out)
                .expect_err("broken input");
            assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{media}");
            assert_eq!(err.to_string(), "network gone");
        }
    }

    #[test]
    fn unknown_media_types_are_refused() {
        let err = decompress(&MediaType::ImageConfig, &b""[..])
            .err()
            .expect("config is no layer");
        assert!(err.to_string().contains("config"), "{err}");
    }
}
