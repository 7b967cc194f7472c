//! The crate's one error type. Every load-time problem carries the file and
//! line of the directive that caused it, so an operator can fix the rule set.

use std::path::PathBuf;

/// Where in a rule file a directive started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file the directive came from (`<string>` name for in-memory text).
    pub file: PathBuf,
    /// 1-based line number of the directive's first line.
    pub line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// Errors raised while loading a rule set. Evaluation never fails: a request
/// always gets a verdict.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A rule file or data file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A directive is malformed.
    #[error("{at}: {message}")]
    Syntax {
        /// Where the directive is.
        at: Location,
        /// What is wrong.
        message: String,
    },
    /// A directive, variable, operator, transformation or action that could
    /// change a verdict is not supported by this engine.
    #[error("{at}: unsupported {kind} `{name}`")]
    Unsupported {
        /// Where it is used.
        at: Location,
        /// `directive`, `variable`, `operator`, `transformation` or `action`.
        kind: &'static str,
        /// Its name as written.
        name: String,
    },
    /// A regression test file (go-ftw YAML) is malformed.
    #[error("{path}: {message}")]
    Test {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the test and stage where known.
        message: String,
    },
    /// A per-request exclusion ([`crate::Exclusions`]) is malformed.
    #[error("exclusion `{exclusion}`: {message}")]
    Exclusion {
        /// The exclusion as given.
        exclusion: String,
        /// What is wrong.
        message: String,
    },
    /// A regular expression does not compile with either regex engine.
    #[error("{at}: bad regular expression: {message}")]
    Regex {
        /// Where it is used.
        at: Location,
        /// The regex engines' complaint.
        message: String,
    },
}

impl Error {
    /// The location of the offending directive, if the error has one.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Error::Io { .. } | Error::Test { .. } | Error::Exclusion { .. } => None,
            Error::Syntax { at, .. } | Error::Unsupported { at, .. } | Error::Regex { at, .. } => {
                Some(at)
            }
        }
    }
}

pub(crate) fn syntax(at: &Location, message: impl Into<String>) -> Error {
    Error::Syntax {
        at: at.clone(),
        message: message.into(),
    }
}
