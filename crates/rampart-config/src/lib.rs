//! Rampart's declarative configuration, `rampart.toml`.
//!
//! The file is parsed in two steps (as ripgrep parses its flags): first into
//! raw serde types that remember where each value stood in the file, then
//! validated once into [`Config`], a form that cannot be invalid. Every
//! problem is a [`Diagnostic`] with `file:line:column`, the field path and
//! what is wrong; validation reports every problem it finds, not just the
//! first. Unknown fields are rejected. The rest of Rampart never re-checks
//! what this crate has accepted.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod model;
mod raw;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use model::*;

/// The configuration Rampart generates for `rampart up --dev` when no file is given.
pub const DEV_CONFIG: &str = include_str!("dev.toml");

/// `edge.waf_rules` entries with this prefix name a rule set built into the
/// binary, not a file.
pub const BUILTIN_PREFIX: &str = "builtin:";

/// The built-in baseline rule set (`rampart_waf::BASELINE_RULES`).
pub const BUILTIN_BASELINE: &str = "builtin:baseline";

/// One problem in a configuration file, located precisely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file, as the user named it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// The field path, such as `routes[2].service`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, self.line, self.column, self.path, self.message
            )
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}", display_all(.0))]
    Invalid(Vec<Diagnostic>),
}

fn display_all(d: &[Diagnostic]) -> String {
    d.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// The located problems, if the file was read.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid(d) => d,
            ConfigError::Io { .. } => &[],
        }
    }
}

/// The largest configuration file accepted.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::Io {
                path: path.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("file is larger than {MAX_CONFIG_BYTES} bytes"),
                ),
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let text = String::from_utf8(bytes).map_err(|_| ConfigError::Io {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "file is not UTF-8"),
        })?;
        let mut cfg = Config::parse(&text, &path.display().to_string())?;
        cfg.source = Some(path.to_path_buf());
        // Files the config names are relative to the config file.
        if let (Some(edge), Some(base)) = (cfg.edge.as_mut(), path.parent()) {
            for c in &mut edge.certificates {
                c.cert = base.join(&c.cert);
                c.key = base.join(&c.key);
            }
            for r in edge
                .waf_rules
                .iter_mut()
                .filter(|r| !r.starts_with(BUILTIN_PREFIX))
            {
                *r = base.join(&*r).display().to_string();
            }
            for ca in &mut edge.client_ca {
                *ca = base.join(&*ca);
            }
        }
        if let Some(base) = path.parent() {
            for ca in &mut cfg.control.client_ca {
                *ca = base.join(&*ca);
            }
            for s in &mut cfg.services {
                if let Some(ca) = s.tls_ca.as_mut() {
                    *ca = base.join(&*ca);
                }
                if let Some(id) = s.tls_client.as_mut() {
                    id.cert = base.join(&id.cert);
                    id.key = base.join(&id.key);
                }
            }
        }
        if let (StoreBackend::Postgres(pg), Some(base)) = (&mut cfg.store, path.parent()) {
            if let Some(ca) = pg.tls_ca.as_mut() {
                *ca = base.join(&*ca);
            }
        }
        if let (Some(redis), Some(base)) = (cfg.redis.as_mut(), path.parent()) {
            if let Some(ca) = redis.tls_ca.as_mut() {
                *ca = base.join(&*ca);
            }
        }
        if let Some(base) = path.parent() {
            for r in &mut cfg.routes {
                if let Some(s) = r.json_schema.as_mut() {
                    *s = base.join(&*s);
                }
            }
        }
        Ok(cfg)
    }

    /// Validates configuration text; `file` names it in diagnostics.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let lines = LineIndex::new(text);
        let raw = raw::parse(text).map_err(|e| {
            ConfigError::Invalid(vec![lines.diagnostic(file, e.span, e.path, e.message)])
        })?;
        validate::validate(raw).map_err(|errs| {
            ConfigError::Invalid(
                errs.into_iter()
                    .map(|e| lines.diagnostic(file, e.span, e.path, e.message))
                    .collect(),
            )
        })
    }

    /// The development configuration used by `rampart up --dev`.
    pub fn dev() -> Result<Config, ConfigError> {
        Config::parse(DEV_CONFIG, "<built-in dev config>")
    }

    /// The data directory the file names, if any.
    pub fn data_dir(&self) -> Option<&PathBuf> {
        self.node.data_dir.as_ref()
    }
}

/// Maps byte offsets to 1-based line and column.
struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts.get(line - 1).copied().unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(0)
            + 1;
        (line, column)
    }

    fn diagnostic(
        &self,
        file: &str,
        span: Option<std::ops::Range<usize>>,
        path: String,
        message: String,
    ) -> Diagnostic {
        let (line, column) = self.position(span.map(|s| s.start).unwrap_or(0));
        Diagnostic {
            file: file.to_string(),
            line,
            column,
            path,
            message,
        }
    }
}

#[cfg(test)]
mod tests;
