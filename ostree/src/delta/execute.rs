//! Executing a part's operations: the objects they build, each checked
//! against the name the part header gives it before it is handed on.
//!
//! Operations are one opcode byte and unsigned LEB128 arguments
//! (`ostree-repo-static-delta-processing.c`):
//!
//! | op | byte | arguments | builds |
//! |---|---|---|---|
//! | open-splice-and-close | `S` | metadata: size, offset; content: mode, xattrs, size, offset | a whole object from payload bytes (a symlink's are its target) |
//! | open | `o` | mode, xattrs, size | starts a regular file of that size |
//! | write | `w` | size, offset | appends bytes of the read source if one is set, else of the payload |
//! | set-read-source | `r` | offset | payload\[offset..+32\] names a content object of the base commit to read from |
//! | unset-read-source | `R` | | forgets it |
//! | close | `c` | | finishes the open file; also forgets the read source |
//! | bspatch | `B` | offset, length | the open file is the read source patched by payload\[offset..+length\] |
//!
//! Every offset and length is checked against the payload, the read
//! source and the declared size; an operation out of place (a write with
//! nothing open, more objects than the header lists, a close with bytes
//! missing) is refused where libostree would assert or skip an object.

use super::bspatch;
use super::error::DeltaError;
use super::part::Part;
use super::superblock::{ObjectType, PartHeader};
use crate::checksum::Checksum;
use crate::error::OstreeError;
use crate::object::{FileHeader, Meta};

/// The file-type bits of a mode, and the two types content objects have.
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// Where the contents of the base commit's files come from, for `r`.
pub trait ReadSource {
    /// The content of content object `checksum`, checked against it.
    fn read_content(&self, checksum: &Checksum) -> Result<Vec<u8>, OstreeError>;
}

/// A delta from scratch has nothing to read from: any `r` is refused.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoReadSource;

impl ReadSource for NoReadSource {
    fn read_content(&self, checksum: &Checksum) -> Result<Vec<u8>, OstreeError> {
        Err(OstreeError::Missing {
            checksum: *checksum,
            kind: "file",
        })
    }
}

/// Where the objects a part builds go. Each arrives checked: its bytes
/// hash to `checksum` as ostree computes it.
pub trait ObjectSink {
    /// A directory listing or directory metadata object.
    fn metadata(
        &mut self,
        kind: ObjectType,
        checksum: &Checksum,
        bytes: &[u8],
    ) -> Result<(), OstreeError>;

    /// A content object: its header and content (empty for a symlink).
    fn content(
        &mut self,
        checksum: &Checksum,
        header: &FileHeader,
        content: &[u8],
    ) -> Result<(), OstreeError>;
}

/// How many operations of each kind a part ran, as
/// `ostree static-delta show` counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// `S`
    pub open_splice_and_close: usize,
    /// `o`
    pub open: usize,
    /// `w`
    pub write: usize,
    /// `r`
    pub set_read_source: usize,
    /// `R`
    pub unset_read_source: usize,
    /// `c`
    pub close: usize,
    /// `B`
    pub bspatch: usize,
}

impl std::ops::AddAssign for OpCounts {
    fn add_assign(&mut self, other: Self) {
        self.open_splice_and_close += other.open_splice_and_close;
        self.open += other.open;
        self.write += other.write;
        self.set_read_source += other.set_read_source;
        self.unset_read_source += other.unset_read_source;
        self.close += other.close;
        self.bspatch += other.bspatch;
    }
}

/// Runs the operations of part `index`, handing each object it builds
/// to `sink`, reading base-commit files from `source`.
pub fn execute(
    index: usize,
    header: &PartHeader,
    part: &Part,
    source: &dyn ReadSource,
    sink: &mut dyn ObjectSink,
) -> Result<OpCounts, OstreeError> {
    let mut run = Run {
        part_index: index,
        objects: &header.objects,
        declared_size: header.uncompressed_size,
        part,
        source,
        next: 0,
        pos: 0,
        op_index: 0,
        opcode: "",
        read_source: None,
        open: None,
        counts: OpCounts::default(),
    };
    while let Some(&opcode) = part.ops.get(run.pos) {
        run.pos += 1;
        run.step(opcode, sink)?;
        run.op_index += 1;
    }
    run.opcode = "end";
    if let Some(open) = &run.open {
        return Err(run.fail(format!("operations end with {} still open", open.checksum)));
    }
    if run.next != run.objects.len() {
        return Err(run.fail(format!(
            "operations build {} of the {} objects the part header lists",
            run.next,
            run.objects.len()
        )));
    }
    Ok(run.counts)
}

/// A content object being written by `o`, `w`/`B`, `c`.
struct OpenFile {
    checksum: Checksum,
    header: FileHeader,
    size: u64,
    content: Vec<u8>,
}

struct Run<'a> {
    part_index: usize,
    objects: &'a [(ObjectType, Checksum)],
    /// The total size of the objects the part header declares.
    declared_size: u64,
    part: &'a Part,
    source: &'a dyn ReadSource,
    /// The next object of `objects` to build.
    next: usize,
    /// Position in `part.ops`.
    pos: usize,
    op_index: usize,
    opcode: &'static str,
    read_source: Option<(Checksum, Vec<u8>)>,
    open: Option<OpenFile>,
    counts: OpCounts,
}

impl Run<'_> {
    fn fail(&self, reason: impl Into<String>) -> OstreeError {
        DeltaError::Op {
            part: self.part_index,
            index: self.op_index,
            opcode: self.opcode,
            reason: reason.into(),
        }
        .into()
    }

    fn step(&mut self, opcode: u8, sink: &mut dyn ObjectSink) -> Result<(), OstreeError> {
        match opcode {
            b'S' => {
                self.opcode = "open-splice-and-close";
                self.counts.open_splice_and_close += 1;
                self.open_splice_and_close(sink)
            }
            b'o' => {
                self.opcode = "open";
                self.counts.open += 1;
                self.open_file()
            }
            b'w' => {
                self.opcode = "write";
                self.counts.write += 1;
                self.write()
            }
            b'r' => {
                self.opcode = "set-read-source";
                self.counts.set_read_source += 1;
                let offset = self.varint()?;
                let name = self.payload(offset, 32)?;
                let checksum = Checksum::from_bytes(name).expect("a 32-byte slice");
                let content = self.source.read_content(&checksum)?;
                self.read_source = Some((checksum, content));
                Ok(())
            }
            b'R' => {
                self.opcode = "unset-read-source";
                self.counts.unset_read_source += 1;
                self.read_source = None;
                Ok(())
            }
            b'c' => {
                self.opcode = "close";
                self.counts.close += 1;
                self.close(sink)
            }
            b'B' => {
                self.opcode = "bspatch";
                self.counts.bspatch += 1;
                self.bspatch()
            }
            other => {
                self.opcode = "unknown";
                Err(self.fail(format!("unknown opcode {other:#04x}")))
            }
        }
    }

    /// Reads one unsigned LEB128 argument.
    fn varint(&mut self) -> Result<u64, OstreeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.part.ops.get(self.pos) else {
                return Err(self.fail("operations end inside an argument"));
            };
            self.pos += 1;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                break;
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.fail("argument does not fit in 64 bits"))
    }

    /// `length` bytes of the payload at `offset`.
    fn payload(&self, offset: u64, length: u64) -> Result<&[u8], OstreeError> {
        let range = usize::try_from(offset).ok().and_then(|start| {
            let end = start.checked_add(usize::try_from(length).ok()?)?;
            Some(start..end)
        });
        range
            .and_then(|range| self.part.payload.get(range))
            .ok_or_else(|| {
                self.fail(format!(
                    "payload range {offset}+{length} is outside the {}-byte payload",
                    self.part.payload.len()
                ))
            })
    }

    /// The next object the header lists, which this operation builds.
    fn next_object(&self) -> Result<(ObjectType, Checksum), OstreeError> {
        if let Some(open) = &self.open {
            return Err(self.fail(format!("{} is still open", open.checksum)));
        }
        self.objects.get(self.next).copied().ok_or_else(|| {
            self.fail(format!(
                "builds more than the {} objects the part header lists",
                self.objects.len()
            ))
        })
    }

    /// Reads mode and xattr indexes: the metadata of a content object.
    fn content_meta(&mut self) -> Result<Meta, OstreeError> {
        let mode_index = self.varint()?;
        let xattr_index = self.varint()?;
        let &(uid, gid, mode) = usize::try_from(mode_index)
            .ok()
            .and_then(|i| self.part.modes.get(i))
            .ok_or_else(|| {
                self.fail(format!(
                    "mode index {mode_index} is outside the {} modes",
                    self.part.modes.len()
                ))
            })?;
        let xattrs = usize::try_from(xattr_index)
            .ok()
            .and_then(|i| self.part.xattrs.get(i))
            .ok_or_else(|| {
                self.fail(format!(
                    "xattr index {xattr_index} is outside the {} xattr sets",
                    self.part.xattrs.len()
                ))
            })?
            .clone();
        Ok(Meta {
            uid,
            gid,
            mode,
            xattrs,
        })
    }

    fn open_splice_and_close(&mut self, sink: &mut dyn ObjectSink) -> Result<(), OstreeError> {
        let (kind, checksum) = self.next_object()?;
        if kind != ObjectType::File {
            let size = self.varint()?;
            let offset = self.varint()?;
            let bytes = self.payload(offset, size)?;
            let actual = Checksum::of(&[bytes]);
            if actual != checksum {
                return Err(self.mismatch(kind, checksum, actual));
            }
            sink.metadata(kind, &checksum, bytes)?;
        } else {
            let meta = self.content_meta()?;
            let size = self.varint()?;
            let offset = self.varint()?;
            let bytes = self.payload(offset, size)?;
            // A symlink's bytes are its target, and it has no content.
            let (target, content) = if meta.mode & S_IFMT == S_IFLNK {
                let target = std::str::from_utf8(bytes)
                    .map_err(|_| self.fail("symlink target is not UTF-8"))?;
                (target.to_owned(), &[][..])
            } else {
                (String::new(), bytes)
            };
            let header =
                FileHeader::from_parts(meta, target).map_err(|reason| self.fail(reason))?;
            self.finish_content(sink, checksum, &header, content)?;
        }
        self.close_object();
        Ok(())
    }

    fn open_file(&mut self) -> Result<(), OstreeError> {
        let (kind, checksum) = self.next_object()?;
        if kind != ObjectType::File {
            return Err(self.fail(format!(
                "opens {checksum}, a {} object, as a file",
                kind.extension()
            )));
        }
        let meta = self.content_meta()?;
        if meta.mode & S_IFMT != S_IFREG {
            return Err(self.fail(format!(
                "opens {checksum} of mode {:o} as a regular file",
                meta.mode
            )));
        }
        let header =
            FileHeader::from_parts(meta, String::new()).map_err(|reason| self.fail(reason))?;
        let size = self.varint()?;
        // Writes from a read source cost a few operation bytes each, so
        // the payload does not bound a file built from them; the part
        // header's total does (the generator counts every file in it).
        if size > self.declared_size {
            return Err(self.fail(format!(
                "opens a {size}-byte file in a part declaring {} bytes of objects",
                self.declared_size
            )));
        }
        self.open = Some(OpenFile {
            checksum,
            header,
            size,
            content: Vec::new(),
        });
        Ok(())
    }

    fn write(&mut self) -> Result<(), OstreeError> {
        let size = self.varint()?;
        let offset = self.varint()?;
        let Some(open) = &self.open else {
            return Err(self.fail("nothing is open to write to"));
        };
        if open.content.len() as u64 + size > open.size {
            return Err(self.fail(format!(
                "writes past the {} bytes declared for {}",
                open.size, open.checksum
            )));
        }
        let bytes = match &self.read_source {
            Some((name, content)) => {
                let range = usize::try_from(offset)
                    .ok()
                    .and_then(|start| Some(start..start.checked_add(usize::try_from(size).ok()?)?));
                range.and_then(|r| content.get(r)).ok_or_else(|| {
                    self.fail(format!(
                        "reads {offset}+{size}, past the end of read source {name} ({} bytes)",
                        content.len()
                    ))
                })?
            }
            None => self.payload(offset, size)?,
        };
        let bytes = bytes.to_vec();
        self.open
            .as_mut()
            .expect("checked above")
            .content
            .extend_from_slice(&bytes);
        Ok(())
    }

    fn bspatch(&mut self) -> Result<(), OstreeError> {
        let offset = self.varint()?;
        let length = self.varint()?;
        let patch = self.payload(offset, length)?;
        let Some(open) = &self.open else {
            return Err(self.fail("nothing is open to patch into"));
        };
        let Some((_, old)) = &self.read_source else {
            return Err(self.fail("no read source to patch"));
        };
        if !open.content.is_empty() {
            return Err(self.fail("patches a file already partly written"));
        }
        let content = bspatch::apply(old, patch, open.size)
            .map_err(|e| self.fail(format!("bsdiff patch of {}: {e}", open.checksum)))?;
        self.open.as_mut().expect("checked above").content = content;
        Ok(())
    }

    fn close(&mut self, sink: &mut dyn ObjectSink) -> Result<(), OstreeError> {
        let Some(open) = self.open.take() else {
            return Err(self.fail("nothing is open to close"));
        };
        if open.content.len() as u64 != open.size {
            return Err(self.fail(format!(
                "closes {} after {} of its {} bytes",
                open.checksum,
                open.content.len(),
                open.size
            )));
        }
        self.finish_content(sink, open.checksum, &open.header, &open.content)?;
        self.close_object();
        Ok(())
    }

    /// Checks a built content object and hands it on.
    fn finish_content(
        &self,
        sink: &mut dyn ObjectSink,
        checksum: Checksum,
        header: &FileHeader,
        content: &[u8],
    ) -> Result<(), OstreeError> {
        let actual = Checksum::of(&[&header.checksum_header(), content]);
        if actual != checksum {
            return Err(self.mismatch(ObjectType::File, checksum, actual));
        }
        sink.content(&checksum, header, content)
    }

    /// What every finished object does: the next one is up, and the read
    /// source is forgotten (libostree's close does both).
    fn close_object(&mut self) {
        self.next += 1;
        self.read_source = None;
    }

    fn mismatch(&self, kind: ObjectType, expected: Checksum, actual: Checksum) -> OstreeError {
        DeltaError::ObjectMismatch {
            part: self.part_index,
            kind: kind.extension(),
            expected,
            actual,
        }
        .into()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const REGULAR: u32 = 0o100644;

    fn varint(mut value: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    /// Ops from (opcode, arguments) pairs.
    fn ops(list: &[(u8, &[u64])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (opcode, args) in list {
            out.push(*opcode);
            for arg in *args {
                varint(*arg, &mut out);
            }
        }
        out
    }

    fn header_for(mode: u32, target: &str) -> FileHeader {
        let meta = Meta {
            uid: 0,
            gid: 0,
            mode,
            xattrs: vec![(b"user.a\0".to_vec(), b"1".to_vec())],
        };
        FileHeader::from_parts(meta, target.into()).unwrap()
    }

    fn content_checksum(header: &FileHeader, content: &[u8]) -> Checksum {
        Checksum::of(&[&header.checksum_header(), content])
    }

    struct Base(HashMap<Checksum, Vec<u8>>);

    impl ReadSource for Base {
        fn read_content(&self, checksum: &Checksum) -> Result<Vec<u8>, OstreeError> {
            self.0.get(checksum).cloned().ok_or(OstreeError::Missing {
                checksum: *checksum,
                kind: "file",
            })
        }
    }

    #[derive(Default)]
    struct Sink(Vec<(Checksum, Vec<u8>)>);

    impl ObjectSink for Sink {
        fn metadata(&mut self, _: ObjectType, c: &Checksum, b: &[u8]) -> Result<(), OstreeError> {
            self.0.push((*c, b.to_vec()));
            Ok(())
        }
        fn content(&mut self, c: &Checksum, _: &FileHeader, b: &[u8]) -> Result<(), OstreeError> {
            self.0.push((*c, b.to_vec()));
            Ok(())
        }
    }

    /// A part with one mode table entry per mode given, one xattr set,
    /// and `payload`.
    fn part(modes: &[u32], payload: &[u8], ops: Vec<u8>) -> Part {
        Part {
            modes: modes.iter().map(|m| (0, 0, *m)).collect(),
            xattrs: vec![vec![(b"user.a\0".to_vec(), b"1".to_vec())]],
            payload: payload.to_vec(),
            ops,
        }
    }

    fn run(
        objects: Vec<(ObjectType, Checksum)>,
        part: &Part,
        base: &Base,
    ) -> Result<(OpCounts, Sink), OstreeError> {
        let header = PartHeader {
            checksum: Checksum([0; 32]),
            compressed_size: 0,
            uncompressed_size: 1 << 20,
            objects,
        };
        let mut sink = Sink::default();
        let counts = execute(3, &header, part, base, &mut sink)?;
        Ok((counts, sink))
    }

    /// The error message of a refused part, which must name the part and
    /// the operation.
    fn refusal(result: Result<(OpCounts, Sink), OstreeError>) -> String {
        let message = result.err().expect("refused").to_string();
        assert!(message.starts_with("delta part 3"), "{message}");
        message
    }

    #[test]
    fn every_opcode_builds_checked_objects() {
        let old = b"the old version of a file, long enough to patch".to_vec();
        let mut new = old.clone();
        new[4..7].copy_from_slice(b"NEW");
        let mut patch = Vec::new();
        bsdiff::diff(&old, &new, &mut patch).unwrap();
        let old_sum = Checksum::of(&[b"a base commit file"]);
        let base = Base(HashMap::from([(old_sum, old.clone())]));

        // payload: [dirtree "\0"][symlink target][content][old name][patch]
        let mut payload = vec![0u8];
        payload.extend(b"../target");
        payload.extend(b"hello world");
        let name_at = payload.len() as u64;
        payload.extend(old_sum.0);
        let patch_at = payload.len() as u64;
        payload.extend(&patch);

        let regular = header_for(REGULAR, "");
        let symlink = header_for(0o120777, "../target");
        let spliced: Vec<u8> = [&old[..10], &b"hello"[..], &old[20..]].concat();
        let objects = vec![
            (ObjectType::DirTree, Checksum::of(&[&[0]])),
            (ObjectType::File, content_checksum(&symlink, b"")),
            (ObjectType::File, content_checksum(&regular, b"hello world")),
            (ObjectType::File, content_checksum(&regular, &spliced)),
            (ObjectType::File, content_checksum(&regular, &new)),
        ];
        let spliced_len = spliced.len() as u64;
        let ops = ops(&[
            (b'S', &[1, 0]),
            (b'S', &[1, 0, 9, 1]),
            (b'o', &[0, 0, 11]),
            (b'w', &[5, 10]),
            (b'w', &[6, 15]),
            (b'c', &[]),
            (b'r', &[name_at]),
            (b'o', &[0, 0, spliced_len]),
            (b'w', &[10, 0]),
            (b'R', &[]),
            (b'w', &[5, 10]),
            (b'r', &[name_at]),
            (b'w', &[old.len() as u64 - 20, 20]),
            (b'c', &[]),
            (b'r', &[name_at]),
            (b'o', &[0, 0, new.len() as u64]),
            (b'B', &[patch_at, patch.len() as u64]),
            (b'c', &[]),
            (b'R', &[]),
        ]);
        let part = part(&[REGULAR, 0o120777], &payload, ops);
        let (counts, sink) = run(objects.clone(), &part, &base).unwrap();
        let built: Vec<Checksum> = sink.0.iter().map(|(c, _)| *c).collect();
        assert_eq!(built, objects.iter().map(|o| o.1).collect::<Vec<_>>());
        assert_eq!(sink.0[4].1, new);
        assert_eq!(
            counts,
            OpCounts {
                open_splice_and_close: 2,
                open: 3,
                write: 5,
                set_read_source: 3,
                unset_read_source: 2,
                close: 3,
                bspatch: 1,
            }
        );
    }

    #[test]
    fn hostile_operations_are_refused() {
        let regular = header_for(REGULAR, "");
        let file = (ObjectType::File, content_checksum(&regular, b"hello"));
        let meta = (ObjectType::DirMeta, Checksum::of(&[b"hello"]));
        let base = Base(HashMap::new());
        let payload = b"hello";
        type Case<'a> = (&'a str, Vec<(ObjectType, Checksum)>, Vec<u8>, &'a str);
        let cases: Vec<Case> = vec![
            (
                "splice past payload",
                vec![meta],
                ops(&[(b'S', &[6, 0])]),
                "outside the 5-byte payload",
            ),
            (
                "offset overflow",
                vec![meta],
                ops(&[(b'S', &[5, u64::MAX])]),
                "outside",
            ),
            (
                "write past size",
                vec![file],
                ops(&[(b'o', &[0, 0, 3]), (b'w', &[5, 0])]),
                "writes past the 3 bytes",
            ),
            (
                "close early",
                vec![file],
                ops(&[(b'o', &[0, 0, 5]), (b'w', &[2, 0]), (b'c', &[])]),
                "after 2 of its 5 bytes",
            ),
            (
                "unknown opcode",
                vec![file],
                vec![b'Z'],
                "unknown opcode 0x5a",
            ),
            (
                "too many objects",
                vec![meta],
                ops(&[(b'S', &[5, 0]), (b'S', &[5, 0])]),
                "more than the 1 objects",
            ),
            (
                "left open",
                vec![file],
                ops(&[(b'o', &[0, 0, 5]), (b'w', &[5, 0])]),
                "still open",
            ),
            (
                "objects missing",
                vec![meta, meta],
                ops(&[(b'S', &[5, 0])]),
                "build 1 of the 2 objects",
            ),
            (
                "truncated argument",
                vec![meta],
                vec![b'S', 0x85],
                "inside an argument",
            ),
            (
                "argument overflow",
                vec![meta],
                [&[b'S'][..], &[0xff; 10], &[1]].concat(),
                "64 bits",
            ),
            (
                "write with nothing open",
                vec![file],
                ops(&[(b'w', &[1, 0])]),
                "nothing is open",
            ),
            (
                "read source past end",
                vec![file],
                ops(&[(b'r', &[0])]),
                "outside the 5-byte payload",
            ),
            (
                "patch without source",
                vec![file],
                ops(&[(b'o', &[0, 0, 5]), (b'B', &[0, 5])]),
                "no read source",
            ),
            (
                "mode index",
                vec![file],
                ops(&[(b'o', &[7, 0, 5])]),
                "mode index 7 is outside the 2 modes",
            ),
            (
                "xattr index",
                vec![file],
                ops(&[(b'o', &[0, 1, 5])]),
                "xattr index 1 is outside",
            ),
            (
                "open a symlink",
                vec![file],
                ops(&[(b'o', &[1, 0, 5])]),
                "as a regular file",
            ),
            (
                "open metadata",
                vec![meta],
                ops(&[(b'o', &[0, 0, 5])]),
                "a dirmeta object, as a file",
            ),
            (
                "nested open",
                vec![file, file],
                ops(&[(b'o', &[0, 0, 5]), (b'o', &[0, 0, 5])]),
                "still open",
            ),
            (
                "close with nothing open",
                vec![file],
                ops(&[(b'c', &[])]),
                "nothing is open to close",
            ),
            (
                "wrong content",
                vec![file],
                ops(&[(b'S', &[0, 0, 4, 0])]),
                "but it hashes to",
            ),
        ];
        for (what, objects, ops, expected) in cases {
            let part = part(&[REGULAR, 0o120777], payload, ops);
            let message = refusal(run(objects, &part, &base));
            assert!(message.contains(expected), "{what}: {message}");
        }
        // A read source the base does not have is the source's error.
        let mut payload = b"hello".to_vec();
        payload.extend([7u8; 32]);
        let part = part(&[REGULAR], &payload, ops(&[(b'r', &[5])]));
        assert!(matches!(
            run(vec![file], &part, &base),
            Err(OstreeError::Missing { .. })
        ));
    }
}
