//! Reading on another thread, so that producing bytes (reading, checking
//! and decompressing a layer) overlaps with consuming them (splitting the
//! tar, hashing and writing objects). Each side is about half of a layer
//! import's CPU time.

use std::io::{self, Read};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::thread::Scope;

/// Bytes per chunk handed over.
const CHUNK: usize = 256 << 10;
/// Chunks in flight between the threads.
const DEPTH: usize = 4;

/// The consuming end: reads what the producing thread read, errors
/// included, in order.
#[derive(Debug)]
pub(crate) struct ReadAhead {
    chunks: Receiver<io::Result<Vec<u8>>>,
    /// Chunks read, back to the producer for reuse: fresh zeroed buffers
    /// would cost a memset of every byte.
    spent: Sender<Vec<u8>>,
    current: Vec<u8>,
    position: usize,
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
        let mut chunk = reusable.try_recv().unwrap_or_default();
        chunk.resize(CHUNK, 0);
        let result = match reader.read(&mut chunk) {
            Ok(n) => {
                chunk.truncate(n);
                Ok(chunk)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
        let last = !matches!(&result, Ok(chunk) if !chunk.is_empty());
        if sender.send(result).is_err() || last {
            return;
        }
    });
    ReadAhead {
        chunks,
        spent,
        current: Vec::new(),
        position: 0,
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.position == self.current.len() {
            match self.chunks.recv() {
                Ok(Ok(chunk)) => {
                    let spent = std::mem::replace(&mut self.current, chunk);
                    // The producer may be gone; the buffer is then dropped.
                    let _ = self.spent.send(spent);
                    self.position = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The producer sent its end of file (an empty chunk) and
                // left; later reads see end of file again.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.position);
        buf[..n].copy_from_slice(&self.current[self.position..self.position + n]);
        self.position += n;
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
