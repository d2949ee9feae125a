//! SELinux file-context policy: parsing `file_contexts`-style files and
//! answering "which label does this path get".
//!
//! Boot images are labelled at build time from the policy shipped inside
//! the image, and the labels end up in the image's bytes and so in the
//! digest that sealed UKIs carry on their command line. What counts here is
//! therefore agreeing with composefs-rs 0.9.4, not with libselinux; where
//! the two disagree we follow composefs-rs:
//!
//! - a spec line is `REGEX [-T] CONTEXT`, fields split on whitespace, a
//!   line whose first field starts with `#` is a comment (a `#` later on
//!   the line is not), anything after the context is an error;
//! - each regex is compiled as `^(REGEX)T$`, or `^(REGEX).$` without a type,
//!   and matched against the path bytes followed by one file-type byte, so
//!   the type is part of the match rather than a separate check;
//! - the **last** matching line wins, counting in file order across
//!   `file_contexts`, `.local`, `.homedirs` (libselinux instead prefers
//!   regex-free lines and loads `.local` last);
//! - all patterns go into one lazy DFA (`regex-automata`, the engine of
//!   the `regex` crate, configured as composefs-rs configures it: bytes,
//!   Unicode off, `.` matching any byte but NUL), searched anchored with
//!   leftmost-first priority over the lines in reverse, so the answer is
//!   the last line with a match; constructs its syntax rejects and
//!   composefs-rs hands to PCRE2 instead (lookaround, backreferences,
//!   atomic groups, possessive quantifiers) are refused here rather than
//!   given different semantics;
//! - substitutions (`.subs`, then `.subs_dist`, later lines winning) map a
//!   whole path to another, byte for byte; see [`Policy::substitute`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use regex_automata::hybrid::dfa::{Builder, Cache, Config, DFA};
use regex_automata::hybrid::BuildError;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchError};

/// The context string that means "no label at all".
const NO_LABEL: &str = "<<none>>";

/// Cache for the lazy DFA that matches all patterns at once; composefs-rs
/// uses the same capacity and, like it, we never let the DFA give up and
/// fall back to a slower engine.
const DFA_CACHE_SIZE: usize = 10_000_000;

/// The kind of file a path names, as spec lines qualify it (`-d`, `--`...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A regular file (`--`).
    Regular,
    /// A directory (`-d`).
    Directory,
    /// A symbolic link (`-l`).
    Symlink,
    /// A block device (`-b`).
    BlockDevice,
    /// A character device (`-c`).
    CharacterDevice,
    /// A named pipe (`-p`).
    Fifo,
    /// A Unix socket (`-s`).
    Socket,
}

impl FileKind {
    /// The byte appended to a path before matching, which is also the
    /// letter after `-` in a spec line.
    pub const fn code(self) -> u8 {
        match self {
            Self::Regular => b'-',
            Self::Directory => b'd',
            Self::Symlink => b'l',
            Self::BlockDevice => b'b',
            Self::CharacterDevice => b'c',
            Self::Fifo => b'p',
            Self::Socket => b's',
        }
    }

    fn from_qualifier(text: &str) -> Option<Self> {
        Some(match text {
            "-" => Self::Regular,
            "d" => Self::Directory,
            "l" => Self::Symlink,
            "b" => Self::BlockDevice,
            "c" => Self::CharacterDevice,
            "p" => Self::Fifo,
            "s" => Self::Socket,
            _ => return None,
        })
    }
}

/// What is wrong with one line of a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineProblem {
    /// A spec line with a regex (and maybe a type) but no context.
    MissingContext,
    /// A `-X` field whose letter is not a known file type.
    UnknownFileType(String),
    /// More fields than the line's format has.
    TrailingData(String),
    /// A substitution line with only one path.
    MissingTarget,
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingContext => f.write_str("no security context after the path regex"),
            Self::UnknownFileType(code) => write!(f, "unknown file type -{code}"),
            Self::TrailingData(rest) => write!(f, "unexpected field {rest:?} at end of line"),
            Self::MissingTarget => f.write_str("substitution without a target path"),
        }
    }
}

/// A policy that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A line that is not UTF-8 text (composefs-rs reads lines as strings).
    #[error("{file} line {line}: not valid UTF-8")]
    NotUtf8 {
        /// The file, as named by the caller.
        file: String,
        /// 1-based line number.
        line: usize,
    },
    /// A line that does not have the file's format.
    #[error("{file} line {line}: {problem}")]
    Syntax {
        /// The file, as named by the caller.
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        problem: LineProblem,
    },
    /// A path regex the engine does not accept.
    #[error("{file} line {line}: path regex {regex:?} does not compile: {source}")]
    Regex {
        /// The file, as named by the caller.
        file: String,
        /// 1-based line number.
        line: usize,
        /// The regex as written in the file.
        regex: String,
        /// The engine's complaint.
        #[source]
        source: Box<BuildError>,
    },
    /// Every regex compiles alone but not all together.
    #[error("the {count} path regexes do not compile together: {source}")]
    Patterns {
        /// Number of spec lines.
        count: usize,
        /// The engine's complaint.
        #[source]
        source: Box<BuildError>,
    },
    /// The matcher could not decide on a path (only possible with
    /// constructs such as a Unicode word boundary on non-ASCII bytes).
    #[error("matching {path:?} against the path regexes failed: {source}")]
    Search {
        /// The path, lossily as text.
        path: String,
        /// The engine's complaint.
        #[source]
        source: MatchError,
    },
}

/// The lines of a text file as `lines()` on a reader yields them: split on
/// `\n`, one trailing `\r` dropped, no empty piece after a final newline.
/// Each line is checked for UTF-8 only when it is reached, so a bad line
/// after the one a caller stops at is not an error.
fn text_lines<'a>(
    file: &'a str,
    bytes: &'a [u8],
) -> impl Iterator<Item = Result<(usize, &'a str), PolicyError>> + 'a {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let pieces = (!bytes.is_empty()).then(|| body.split(|&b| b == b'\n'));
    pieces
        .into_iter()
        .flatten()
        .enumerate()
        .map(move |(index, raw)| {
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            std::str::from_utf8(raw)
                .map(|text| (index + 1, text))
                .map_err(|_| PolicyError::NotUtf8 {
                    file: file.to_owned(),
                    line: index + 1,
                })
        })
}

/// The policy type named by an `/etc/selinux/config` file: the value of
/// the first `SELINUXTYPE=` line (key compared without case, both sides
/// trimmed), or `None` if there is none.
pub fn policy_type(file: &str, config: &[u8]) -> Result<Option<String>, PolicyError> {
    for line in text_lines(file, config) {
        let (_, text) = line?;
        // A commented-out line has a key starting with `#`, so it never
        // equals the name.
        if let Some((key, value)) = text.split_once('=') {
            if key.trim().eq_ignore_ascii_case("SELINUXTYPE") {
                return Ok(Some(value.trim().to_owned()));
            }
        }
    }
    Ok(None)
}

/// Where a spec line came from, for error messages.
#[derive(Debug, Clone, Copy)]
struct Origin {
    file: usize,
    line: usize,
}

/// Collects spec and substitution files, then compiles them into a
/// [`Policy`].
#[derive(Debug, Default)]
pub struct PolicyBuilder {
    files: Vec<String>,
    /// Anchored pattern per spec line, in file order.
    patterns: Vec<String>,
    /// The regex as written, per spec line.
    written: Vec<String>,
    contexts: Vec<Box<str>>,
    origins: Vec<Origin>,
    aliases: HashMap<Box<[u8]>, Box<[u8]>>,
}

impl PolicyBuilder {
    /// An empty policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the lines of a spec file (`file_contexts` and its `.local` and
    /// `.homedirs` companions, in that order); `name` is only used in
    /// errors.
    pub fn add_specs(&mut self, name: &str, content: &[u8]) -> Result<(), PolicyError> {
        let file = self.files.len();
        self.files.push(name.to_owned());
        let syntax = |line, problem| PolicyError::Syntax {
            file: name.to_owned(),
            line,
            problem,
        };
        for line in text_lines(name, content) {
            let (line, text) = line?;
            let mut fields = text.split_whitespace();
            let regex = match fields.next() {
                None => continue,
                Some(first) if first.starts_with('#') => continue,
                Some(regex) => regex,
            };
            let second = fields
                .next()
                .ok_or_else(|| syntax(line, LineProblem::MissingContext))?;
            let (type_matcher, context) = match second.strip_prefix('-') {
                Some(qualifier) => {
                    let kind = FileKind::from_qualifier(qualifier).ok_or_else(|| {
                        syntax(line, LineProblem::UnknownFileType(qualifier.to_owned()))
                    })?;
                    let context = fields
                        .next()
                        .ok_or_else(|| syntax(line, LineProblem::MissingContext))?;
                    (char::from(kind.code()), context)
                }
                None => ('.', second),
            };
            if let Some(extra) = fields.next() {
                return Err(syntax(line, LineProblem::TrailingData(extra.to_owned())));
            }
            self.patterns.push(format!("^({regex}){type_matcher}$"));
            self.written.push(regex.to_owned());
            self.contexts.push(context.into());
            self.origins.push(Origin { file, line });
        }
        Ok(())
    }

    /// Adds the lines of a substitution file (`file_contexts.subs`, then
    /// `file_contexts.subs_dist`): `ALIAS TARGET` per line; a later line
    /// for the same alias replaces the earlier one.
    pub fn add_substitutions(&mut self, name: &str, content: &[u8]) -> Result<(), PolicyError> {
        let syntax = |line, problem| PolicyError::Syntax {
            file: name.to_owned(),
            line,
            problem,
        };
        for line in text_lines(name, content) {
            let (line, text) = line?;
            let mut fields = text.split_whitespace();
            let alias = match fields.next() {
                None => continue,
                Some(first) if first.starts_with('#') => continue,
                Some(alias) => alias,
            };
            let target = fields
                .next()
                .ok_or_else(|| syntax(line, LineProblem::MissingTarget))?;
            if let Some(extra) = fields.next() {
                return Err(syntax(line, LineProblem::TrailingData(extra.to_owned())));
            }
            self.aliases
                .insert(alias.as_bytes().into(), target.as_bytes().into());
        }
        Ok(())
    }

    fn dfa_builder() -> Builder {
        let mut builder = Builder::new();
        builder
            .syntax(
                syntax::Config::new()
                    .unicode(false)
                    .utf8(false)
                    .line_terminator(0),
            )
            .configure(
                Config::new()
                    .cache_capacity(DFA_CACHE_SIZE)
                    .skip_cache_capacity_check(true),
            );
        builder
    }

    /// Compiles every spec line into one matcher.
    pub fn build(self) -> Result<Policy, PolicyError> {
        // Leftmost-first prefers the lowest pattern id; the last line must
        // win, so the lines go in backwards.
        let reversed: Vec<&str> = self.patterns.iter().rev().map(String::as_str).collect();
        let dfa = match Self::dfa_builder().build_many(&reversed) {
            Ok(dfa) => dfa,
            Err(source) => return Err(self.explain(source)),
        };
        let cache = Mutex::new(dfa.create_cache());
        Ok(Policy {
            dfa,
            cache,
            contexts: self.contexts,
            aliases: self.aliases,
        })
    }

    /// Finds the line whose regex does not compile, so the error can name
    /// it; falls back to the combined build's own error.
    fn explain(&self, combined: BuildError) -> PolicyError {
        let builder = Self::dfa_builder();
        for (index, pattern) in self.patterns.iter().enumerate() {
            if let Err(source) = builder.build(pattern) {
                let origin = self.origins[index];
                return PolicyError::Regex {
                    file: self.files[origin.file].clone(),
                    line: origin.line,
                    regex: self.written[index].clone(),
                    source: Box::new(source),
                };
            }
        }
        PolicyError::Patterns {
            count: self.patterns.len(),
            source: Box::new(combined),
        }
    }
}

/// A compiled file-context policy.
#[derive(Debug)]
pub struct Policy {
    dfa: DFA,
    /// The lazy DFA's states, built as paths are looked up.
    cache: Mutex<Cache>,
    /// Context per line, in file order.
    contexts: Vec<Box<str>>,
    aliases: HashMap<Box<[u8]>, Box<[u8]>>,
}

/// The outcome of looking a path up in a [`Policy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label<'a> {
    /// The path gets this context.
    Context(&'a str),
    /// A line matched with `<<none>>`: the path gets no label.
    Unlabelled,
    /// No line matched: the path gets no label.
    NoMatch,
}

impl<'a> Label<'a> {
    /// The context to store, if any.
    pub fn context(self) -> Option<&'a str> {
        match self {
            Self::Context(context) => Some(context),
            Self::Unlabelled | Self::NoMatch => None,
        }
    }
}

impl Policy {
    /// The label for `path` (absolute, as bytes) of kind `kind`: the context
    /// of the last spec line that matches.
    pub fn lookup(&self, path: &[u8], kind: FileKind) -> Result<Label<'_>, PolicyError> {
        let mut key = Vec::with_capacity(path.len() + 1);
        key.extend_from_slice(path);
        key.push(kind.code());
        let input = Input::new(&key).anchored(Anchored::Yes);
        let found = {
            // A panic elsewhere while holding the lock leaves a cache that
            // is merely stale; reset it rather than give up.
            let mut cache = self.cache.lock().unwrap_or_else(|poisoned| {
                let mut cache = poisoned.into_inner();
                cache.reset(&self.dfa);
                cache
            });
            self.dfa.try_search_fwd(&mut cache, &input)
        };
        let found = found.map_err(|source| PolicyError::Search {
            path: String::from_utf8_lossy(path).into_owned(),
            source,
        })?;
        // Pattern ids count the lines from the last one.
        let line = found.and_then(|m| self.contexts.len().checked_sub(1 + m.pattern().as_usize()));
        Ok(match line.map(|index| &*self.contexts[index]) {
            None => Label::NoMatch,
            Some(NO_LABEL) => Label::Unlabelled,
            Some(context) => Label::Context(context),
        })
    }

    /// The path to label `path` as, if a substitution names exactly this
    /// path. Callers apply it while walking down a tree, so the substituted
    /// path is the prefix of everything below and may itself be
    /// substituted again one level down.
    pub fn substitute(&self, path: &[u8]) -> Option<&[u8]> {
        self.aliases.get(path).map(|target| &**target)
    }

    /// Number of spec lines.
    pub fn len(&self) -> usize {
        self.contexts.len()
    }

    /// Whether the policy has no spec lines at all.
    pub fn is_empty(&self) -> bool {
        self.contexts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(specs: &str, subs: &str) -> Policy {
        let mut builder = PolicyBuilder::new();
        builder
            .add_specs("file_contexts", specs.as_bytes())
            .unwrap();
        builder.add_substitutions("subs", subs.as_bytes()).unwrap();
        builder.build().unwrap()
    }

    fn context<'a>(policy: &'a Policy, path: &str, kind: FileKind) -> Option<&'a str> {
        policy.lookup(path.as_bytes(), kind).unwrap().context()
    }

    #[test]
    fn last_matching_line_wins() {
        let p = policy(
            "/usr(/.*)?  u:r:usr_t:s0\n\
             /usr/bin/tool  u:r:tool_t:s0\n\
             /usr/bin(/.*)?  u:r:bin_t:s0\n",
            "",
        );
        // The more specific exact line loses to the later, broader one:
        // no libselinux-style preference for regex-free lines.
        assert_eq!(
            context(&p, "/usr/bin/tool", FileKind::Regular),
            Some("u:r:bin_t:s0")
        );
        assert_eq!(
            context(&p, "/usr/lib", FileKind::Directory),
            Some("u:r:usr_t:s0")
        );
        assert_eq!(
            p.lookup(b"/etc", FileKind::Directory).unwrap(),
            Label::NoMatch
        );
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn file_type_qualifiers() {
        let mut specs = String::from("/x(/.*)?  u:r:any_t:s0\n");
        let kinds = [
            ("--", FileKind::Regular),
            ("-d", FileKind::Directory),
            ("-l", FileKind::Symlink),
            ("-b", FileKind::BlockDevice),
            ("-c", FileKind::CharacterDevice),
            ("-p", FileKind::Fifo),
            ("-s", FileKind::Socket),
        ];
        for (qualifier, kind) in kinds {
            specs.push_str(&format!(
                "/x/{}  {qualifier}  u:r:{}_t:s0\n",
                char::from(kind.code()),
                char::from(kind.code())
            ));
        }
        let p = policy(&specs, "");
        for (_, kind) in kinds {
            let code = char::from(kind.code());
            let path = format!("/x/{code}");
            assert_eq!(
                context(&p, &path, kind),
                Some(format!("u:r:{code}_t:s0").as_str())
            );
            // Any other kind falls back to the untyped line.
            for (_, other) in kinds.iter().filter(|(_, k)| *k != kind) {
                assert_eq!(context(&p, &path, *other), Some("u:r:any_t:s0"));
            }
        }
    }

    #[test]
    fn none_removes_and_later_lines_still_win() {
        let p = policy(
            "/(.*)?  u:r:default_t:s0\n\
             /tmp(/.*)?  <<none>>\n\
             /tmp/keep  --  u:r:keep_t:s0\n",
            "",
        );
        assert_eq!(
            p.lookup(b"/tmp/x", FileKind::Regular).unwrap(),
            Label::Unlabelled
        );
        assert_eq!(
            p.lookup(b"/tmp", FileKind::Directory).unwrap(),
            Label::Unlabelled
        );
        assert_eq!(
            context(&p, "/tmp/keep", FileKind::Regular),
            Some("u:r:keep_t:s0")
        );
        assert_eq!(
            p.lookup(b"/tmp/keep", FileKind::Directory).unwrap(),
            Label::Unlabelled
        );
        assert_eq!(
            context(&p, "/", FileKind::Directory),
            Some("u:r:default_t:s0")
        );
    }

    #[test]
    fn regex_dialect() {
        let p = policy(
            "/a/.*  u:r:dot_t:s0\n\
             /b/[^/]+  u:r:class_t:s0\n\
             /c/\\w+  u:r:word_t:s0\n\
             /d)|(/e  u:r:alt_t:s0\n",
            "",
        );
        // `.` matches newline and non-UTF-8 bytes.
        assert_eq!(
            context(&p, "/a/x\ny", FileKind::Regular),
            Some("u:r:dot_t:s0")
        );
        assert_eq!(
            p.lookup(b"/b/\xff\xfe", FileKind::Regular)
                .unwrap()
                .context(),
            Some("u:r:class_t:s0")
        );
        // `\w` is ASCII only.
        assert_eq!(
            context(&p, "/c/abc_1", FileKind::Regular),
            Some("u:r:word_t:s0")
        );
        assert_eq!(context(&p, "/c/\u{e9}", FileKind::Regular), None);
        // Unbalanced groups: the first alternative matches a prefix, the
        // second stays anchored at the start.
        assert_eq!(
            context(&p, "/d/anything", FileKind::Regular),
            Some("u:r:alt_t:s0")
        );
        assert_eq!(context(&p, "/x/e", FileKind::Regular), None);
        assert_eq!(context(&p, "/e", FileKind::Regular), Some("u:r:alt_t:s0"));
    }

    #[test]
    fn comments_blank_lines_and_errors() {
        let p = policy("# comment\n\n   \t\n#/x u:r:x_t:s0\n/y\tu:r:y_t:s0\r\n", "");
        assert_eq!(p.len(), 1);
        assert_eq!(context(&p, "/y", FileKind::Regular), Some("u:r:y_t:s0"));

        let error = |specs: &str| {
            let mut b = PolicyBuilder::new();
            match b.add_specs("fc", specs.as_bytes()) {
                Err(e) => e.to_string(),
                Ok(()) => b
                    .build()
                    .map(|_| String::new())
                    .unwrap_or_else(|e| e.to_string()),
            }
        };
        assert_eq!(
            error("/a u:r:a_t:s0\n/b\n"),
            "fc line 2: no security context after the path regex"
        );
        assert_eq!(
            error("/a -d\n"),
            "fc line 1: no security context after the path regex"
        );
        assert_eq!(
            error("/a -q u:r:a_t:s0\n"),
            "fc line 1: unknown file type -q"
        );
        assert_eq!(
            error("/a u:r:a_t:s0 # trailing\n"),
            "fc line 1: unexpected field \"#\" at end of line"
        );
        assert!(error("/a(?=b) u:r:a_t:s0\n").starts_with("fc line 1: path regex \"/a(?=b)\""));
        let mut b = PolicyBuilder::new();
        assert!(matches!(
            b.add_specs("fc", b"/a u:r:a_t:s0\n/\xff u:r:b_t:s0\n"),
            Err(PolicyError::NotUtf8 { line: 2, .. })
        ));
    }

    #[test]
    fn substitutions() {
        let mut b = PolicyBuilder::new();
        b.add_specs("fc", b"/opt(/.*)? u:r:opt_t:s0\n").unwrap();
        b.add_substitutions("subs", b"# c\n/srv /opt\n/web /srv\n")
            .unwrap();
        b.add_substitutions("subs_dist", b"/web /var/www\n")
            .unwrap();
        assert!(matches!(
            b.add_substitutions("bad", b"/only\n"),
            Err(PolicyError::Syntax {
                problem: LineProblem::MissingTarget,
                ..
            })
        ));
        let p = b.build().unwrap();
        assert_eq!(p.substitute(b"/srv"), Some(&b"/opt"[..]));
        // The later file wins for the same alias.
        assert_eq!(p.substitute(b"/web"), Some(&b"/var/www"[..]));
        // Only whole paths are substituted.
        assert_eq!(p.substitute(b"/srv/x"), None);
    }

    #[test]
    fn config_file() {
        let parse = |text: &str| policy_type("config", text.as_bytes()).unwrap();
        assert_eq!(
            parse(
                "# SELINUXTYPE=no\nSELINUX=enforcing\n selinuxtype = targeted \nSELINUXTYPE=mls\n"
            ),
            Some("targeted".to_owned())
        );
        assert_eq!(parse("SELINUX=permissive\n"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("SELINUXTYPE="), Some(String::new()));
        // Bad bytes after the answer are never read.
        assert_eq!(
            policy_type("config", b"SELINUXTYPE=x\n\xff\n").unwrap(),
            Some("x".to_owned())
        );
        assert!(policy_type("config", b"\xff\nSELINUXTYPE=x\n").is_err());
    }
}
