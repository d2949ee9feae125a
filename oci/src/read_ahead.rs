//! Reading on another thread, so that producing bytes (reading, checking
//! and decompressing a layer) overlaps with consuming them (splitting the
//! tar, hashing and writing objects). Each side is about half of a layer
//! import's CPU time.
//!
//! Bytes are copied as little as possible: the producer fills whole
//! chunks (a decompressor returns a few KiB per read; one hand-over per
//! few KiB would cost more in wake-ups than the copying it saves), and
//! the consumer reads them in place through [`BufRead`]. Buffers go back
//! to the producer and keep their full length, so no byte is zeroed
//! twice.

use std::io::{self, BufRead, Read};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::thread::Scope;

/// Bytes per chunk handed over: few hand-overs, and small enough that a
/// chunk is still in the CPU's cache when the consumer hashes it.
const CHUNK: usize = 256 << 10;
/// Chunks in flight between the threads.
const DEPTH: usize = 4;

/// A buffer of [`CHUNK`] bytes, the first `len` of them read.
#[derive(Debug)]
struct Chunk {
    buffer: Vec<u8>,
    len: usize,
}

/// The consuming end: reads what the producing thread read, errors
/// included, in order.
#[derive(Debug)]
pub(crate) struct ReadAhead {
    chunks: Receiver<io::Result<Chunk>>,
    /// Buffers read, back to the producer for reuse.
    spent: Sender<Vec<u8>>,
    current: Chunk,
    position: usize,
}

/// Reads until `buffer` is full or `reader` ends; returns how much was
/// read, and the error that stopped it early, if one did.
fn fill(reader: &mut impl Read, buffer: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut len = 0;
    while len < buffer.len() {
        match reader.read(&mut buffer[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (len, Some(e)),
        }
    }
    (len, None)
}

/// Starts reading `reader` to its end on a thread of `scope`. Dropping
/// the returned reader stops that thread at its next chunk.
pub(crate) fn read_ahead<'scope, R: Read + Send + 'scope>(
    scope: &'scope Scope<'scope, '_>,
    mut reader: R,
) -> ReadAhead {
    let (sender, chunks) = sync_channel(DEPTH);
    let (spent, reusable) = channel::<Vec<u8>>();
    scope.spawn(move || loop {
        let mut buffer = reusable.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
        let (len, error) = fill(&mut reader, &mut buffer);
        // A chunk that is not full is the last: the end, or an error.
        let last = len < CHUNK;
        if len > 0 && sender.send(Ok(Chunk { buffer, len })).is_err() {
            return;
        }
        if let Some(error) = error {
            let _ = sender.send(Err(error));
        }
        if last {
            return;
        }
    });
    ReadAhead {
        chunks,
        spent,
        current: Chunk {
            buffer: Vec::new(),
            len: 0,
        },
        position: 0,
    }
}

impl BufRead for ReadAhead {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.position == self.current.len {
            match self.chunks.recv() {
                Ok(Ok(chunk)) => {
                    let spent = std::mem::replace(&mut self.current, chunk);
                    // The producer may be gone; the buffer is then dropped.
                    if !spent.buffer.is_empty() {
                        let _ = self.spent.send(spent.buffer);
                    }
                    self.position = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The producer reached the end and left; later reads see
                // the end again.
                Err(_) => return Ok(&[]),
            }
        }
        Ok(&self.current.buffer[self.position..self.current.len])
    }

    fn consume(&mut self, amount: usize) {
        self.position = (self.position + amount).min(self.current.len);
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = buf.len().min(available.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields `data` in odd-sized pieces, then an error if `fail`.
    struct Source {
        data: Vec<u8>,
        at: usize,
        fail: bool,
    }

    impl Read for Source {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.at == self.data.len() {
                return match self.fail {
                    true => Err(io::Error::other("broken at the end")),
                    false => Ok(0),
                };
            }
            let n = buf.len().min(7919).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[test]
    fn passes_bytes_errors_and_the_end_in_order() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        for fail in [false, true] {
            std::thread::scope(|scope| {
                let source = Source {
                    data: data.clone(),
                    at: 0,
                    fail,
                };
                let mut out = Vec::new();
                let result = read_ahead(scope, source).read_to_end(&mut out);
                assert_eq!(out, data);
                match fail {
                    true => assert_eq!(result.unwrap_err().to_string(), "broken at the end"),
                    false => assert_eq!(result.unwrap(), data.len()),
                }
            });
        }
    }

    #[test]
    fn hands_over_whole_chunks_and_ends_on_a_boundary() {
        let data: Vec<u8> = (0..2 * CHUNK).map(|i| (i % 253) as u8).collect();
        std::thread::scope(|scope| {
            let source = Source {
                data: data.clone(),
                at: 0,
                fail: false,
            };
            let mut reader = read_ahead(scope, source);
            let mut out = Vec::new();
            loop {
                let chunk = reader.fill_buf().unwrap();
                if chunk.is_empty() {
                    break;
                }
                // The source yields 7919 bytes a read; the chunks are whole.
                assert_eq!(chunk.len(), CHUNK);
                let n = chunk.len();
                out.extend_from_slice(chunk);
                reader.consume(n);
            }
            assert_eq!(out, data);
            assert!(reader.fill_buf().unwrap().is_empty(), "the end stays");
        });
    }

    #[test]
    fn a_dropped_reader_stops_the_thread() {
        std::thread::scope(|scope| {
            let endless = io::repeat(1);
            let mut reader = read_ahead(scope, endless);
            let mut first = [0; 10];
            reader.read_exact(&mut first).unwrap();
            drop(reader);
            // The scope ends only once the producer has stopped.
        });
    }
}
