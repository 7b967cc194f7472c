//! Versioned schema migrations, applied in order, each in its own transaction.
//!
//! A migration is never edited once released: changes come as a new entry.

use rusqlite::{params, Connection};

use crate::StoreError;

/// One step of the schema.
pub(crate) struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "records",
    sql: "CREATE TABLE records (
            ns TEXT NOT NULL,
            key TEXT NOT NULL,
            value BLOB NOT NULL,
            version INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            PRIMARY KEY (ns, key)
          ) WITHOUT ROWID;",
}];

/// The schema version this build migrates to.
pub const LATEST_VERSION: u32 = 1;

/// Brings the database to [`LATEST_VERSION`]; returns the versions applied.
pub(crate) fn migrate(conn: &mut Connection, now: u64) -> Result<Vec<u32>, StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at INTEGER NOT NULL
        );",
    )?;
    let current = current_version(conn)?;
    if current > LATEST_VERSION {
        return Err(StoreError::NewerSchema {
            found: current,
            supported: LATEST_VERSION,
        });
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        let tx = conn.transaction()?;
        tx.execute_batch(m.sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![m.version, m.name, now as i64],
        )?;
        tx.commit()?;
        applied.push(m.version);
    }
    Ok(applied)
}

pub(crate) fn current_version(conn: &Connection) -> Result<u32, StoreError> {
    let v: Option<u32> = conn.query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
        r.get(0)
    })?;
    Ok(v.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_ordered_and_end_at_latest() {
        let versions: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
        let mut sorted = versions.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(versions, sorted);
        assert_eq!(versions.last().copied(), Some(LATEST_VERSION));
    }

    #[test]
    fn from_empty_then_idempotent_then_refuses_newer() {
        let mut c = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut c, 1).unwrap(), vec![1]);
        assert_eq!(current_version(&c).unwrap(), LATEST_VERSION);
        assert!(migrate(&mut c, 2).unwrap().is_empty());
        c.execute("INSERT INTO schema_migrations VALUES (99, 'future', 3)", [])
            .unwrap();
        assert!(matches!(
            migrate(&mut c, 4),
            Err(StoreError::NewerSchema { found: 99, .. })
        ));
    }
}
