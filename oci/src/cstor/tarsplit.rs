//! The tar-split format containers-storage keeps next to each layer
//! (`<layer>.tar-split.gz`): gzip of JSON lines, one per piece of the
//! original tar, in order.
//!
//! - type 2, a *segment*: `payload` holds raw tar bytes (headers, padding,
//!   the end-of-archive marker), base64;
//! - type 1, a *file entry*: a member's content, `size` bytes, taken from
//!   the file `name` (or `name_raw`, base64, when the name is not UTF-8)
//!   below the layer's directory; `payload` is a CRC-64 we do not need,
//!   since the whole rebuilt tar is checked against its diff_id.
//!
//! `position` counts the lines from 0. The data comes from a store other
//! users may write, so every line is bounded and checked.

use std::io::BufRead;

use base64::Engine;

/// Longest line accepted: raw segments hold headers (PAX data up to the
/// splitter's 1 MiB limit) and padding, never file content.
const LINE_MAX: u64 = 4 << 20;

/// One piece of the original tar.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Segment {
    /// Bytes of the tar as they were.
    Raw(Vec<u8>),
    /// `size` bytes of content from the file `name` of the layer.
    File {
        /// The member's name as the tar header has it.
        name: Vec<u8>,
        /// Its content length.
        size: u64,
    },
}

/// Why a tar-split line is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TarSplitError {
    /// The file could not be read or decompressed.
    #[error("line {line}: reading: {source}")]
    Read {
        /// The line being read (from 1).
        line: u64,
        /// What the system or gzip said.
        #[source]
        source: std::io::Error,
    },
    /// A line longer than anything a tar header needs.
    #[error("line {line} is longer than {LINE_MAX} bytes")]
    LineTooLong {
        /// The line (from 1).
        line: u64,
    },
    /// A line that is not the JSON of an entry.
    #[error("line {line}: {source}")]
    Json {
        /// The line (from 1).
        line: u64,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A line whose fields do not make an entry.
    #[error("line {line}: {reason}")]
    Bad {
        /// The line (from 1).
        line: u64,
        /// What is wrong.
        reason: String,
    },
}

#[derive(serde::Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    name_raw: Option<String>,
    #[serde(default)]
    size: Option<i64>,
    #[serde(default)]
    payload: Option<String>,
    position: i64,
}

/// Reads the segments of a tar-split file in order.
pub(super) struct TarSplit<R> {
    input: R,
    line: u64,
    buffer: Vec<u8>,
}

impl<R: BufRead> TarSplit<R> {
    /// Reads `input`, the decompressed tar-split.
    pub(super) fn new(input: R) -> Self {
        TarSplit {
            input,
            line: 0,
            buffer: Vec::new(),
        }
    }

    /// The next segment, or `None` at the end.
    pub(super) fn next_segment(&mut self) -> Result<Option<Segment>, TarSplitError> {
        self.buffer.clear();
        let line = self.line + 1;
        let read = std::io::Read::take(&mut self.input, LINE_MAX + 1)
            .read_until(b'\n', &mut self.buffer)
            .map_err(|source| TarSplitError::Read { line, source })?;
        if read == 0 {
            return Ok(None);
        }
        if read as u64 > LINE_MAX {
            return Err(TarSplitError::LineTooLong { line });
        }
        self.line = line;
        let parsed: Line = serde_json::from_slice(&self.buffer)
            .map_err(|source| TarSplitError::Json { line, source })?;
        let bad = |reason: String| TarSplitError::Bad { line, reason };
        if u64::try_from(parsed.position).ok() != Some(line - 1) {
            return Err(bad(format!(
                "position {} where {} was expected",
                parsed.position,
                line - 1
            )));
        }
        let decode = |field: &str, text: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| bad(format!("{field} is not base64: {e}")))
        };
        match parsed.kind {
            1 => {
                let name = match (&parsed.name_raw, parsed.name) {
                    (Some(raw), _) => decode("name_raw", raw)?,
                    (None, Some(name)) => name.into_bytes(),
                    (None, None) => return Err(bad("a file entry without a name".into())),
                };
                let size = u64::try_from(parsed.size.unwrap_or(0))
                    .map_err(|_| bad(format!("negative size {:?}", parsed.size)))?;
                Ok(Some(Segment::File { name, size }))
            }
            2 => {
                let payload = parsed
                    .payload
                    .ok_or_else(|| bad("a segment without a payload".into()))?;
                Ok(Some(Segment::Raw(decode("payload", &payload)?)))
            }
            other => Err(bad(format!("unknown entry type {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(text: &str) -> Result<Vec<Segment>, TarSplitError> {
        let mut reader = TarSplit::new(text.as_bytes());
        let mut all = Vec::new();
        while let Some(segment) = reader.next_segment()? {
            all.push(segment);
        }
        Ok(all)
    }

    #[test]
    fn entries_in_order() {
        let text = concat!(
            r#"{"type":2,"payload":"aGk=","position":0}"#,
            "\n",
            r#"{"type":1,"name":"big","size":3,"payload":"gd9YRGNk4E8=","position":1}"#,
            "\n",
            r#"{"type":1,"name":"link","payload":null,"position":2}"#,
            "\n",
            r#"{"type":1,"name":"x","name_raw":"/w==","size":1,"payload":null,"position":3}"#,
            "\n",
        );
        assert_eq!(
            segments(text).expect("valid"),
            vec![
                Segment::Raw(b"hi".to_vec()),
                Segment::File {
                    name: b"big".to_vec(),
                    size: 3
                },
                Segment::File {
                    name: b"link".to_vec(),
                    size: 0
                },
                Segment::File {
                    name: vec![0xff],
                    size: 1
                },
            ]
        );
    }

    #[test]
    fn bad_lines_are_refused() {
        for (text, expected) in [
            (r#"{"type":2,"payload":"aGk=","position":1}"#, "position 1"),
            (r#"{"type":2,"position":0}"#, "without a payload"),
            (r#"{"type":2,"payload":"!!","position":0}"#, "not base64"),
            (r#"{"type":1,"size":3,"position":0}"#, "without a name"),
            (
                r#"{"type":1,"name":"a","size":-3,"position":0}"#,
                "negative size",
            ),
            (r#"{"type":3,"position":0}"#, "unknown entry type 3"),
            ("nonsense", "line 1"),
        ] {
            let err = segments(text).expect_err(text).to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
