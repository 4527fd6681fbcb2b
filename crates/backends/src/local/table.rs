//! The embedded table backend on redb: each logical table is a redb table
//! of key → JSON-encoded item. Every write is a durable transaction; a
//! condition is checked inside the same transaction as the write.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use sluice_core::table::{condition_holds, is_expired, AttrValue, Condition, Item, TableError};
use sluice_core::TableBackend;

use super::stream::now_ms;

/// Embedded, durable tables in one redb file.
#[derive(Clone)]
pub struct LocalTable {
    db: Arc<Database>,
}

fn storage(e: impl std::fmt::Display) -> TableError {
    TableError::Storage(e.to_string())
}

fn definition(table: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(table)
}

fn decode(bytes: &[u8]) -> Result<Item, TableError> {
    serde_json::from_slice(bytes).map_err(|e| storage(format!("damaged item: {e}")))
}

fn check_name(table: &str) -> Result<(), TableError> {
    if table.is_empty() || table.len() > 255 {
        return Err(TableError::InvalidArgument(format!(
            "table name {table:?} must be 1 to 255 characters"
        )));
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), TableError> {
    if key.is_empty() || key.len() > 2048 {
        return Err(TableError::InvalidArgument(
            "keys are 1 to 2048 bytes".into(),
        ));
    }
    Ok(())
}

fn now_secs() -> i64 {
    now_ms() / 1000
}

impl LocalTable {
    pub fn open(path: &Path) -> Result<Self, TableError> {
        let db = Database::create(path).map_err(|e| storage(format!("{}: {e}", path.display())))?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Tables on another storage than a file (a test's, that loses what
    /// was not synced when it simulates a crash).
    pub fn on_storage(storage_backend: impl redb::StorageBackend) -> Result<Self, TableError> {
        let db = Database::builder()
            .create_with_backend(storage_backend)
            .map_err(storage)?;
        Ok(Self { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, TableError> + Send + 'static,
    ) -> Result<T, TableError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(|e| storage(format!("table task failed: {e}")))?
    }

    /// Runs `change` on the live item under `key` inside one write
    /// transaction; `change` returns the item to store (or `None` to delete).
    async fn update<T: Send + 'static>(
        &self,
        table: &str,
        key: &str,
        change: impl FnOnce(Option<Item>) -> Result<(Option<Item>, T), TableError> + Send + 'static,
    ) -> Result<T, TableError> {
        check_name(table)?;
        check_key(key)?;
        let (table, key) = (table.to_owned(), key.to_owned());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(storage)?;
            let answer = {
                // open_table in a write transaction would create the table.
                if !table_exists(&txn, &table)? {
                    return Err(TableError::TableNotFound(table.clone()));
                }
                let mut handle = txn.open_table(definition(&table)).map_err(storage)?;
                let current = match handle.get(key.as_str()).map_err(storage)? {
                    Some(bytes) => {
                        Some(decode(bytes.value())?).filter(|item| !is_expired(item, now_secs()))
                    }
                    None => None,
                };
                let (next, answer) = change(current)?;
                match next {
                    Some(item) => {
                        let bytes = serde_json::to_vec(&item).map_err(storage)?;
                        handle
                            .insert(key.as_str(), bytes.as_slice())
                            .map_err(storage)?;
                    }
                    None => {
                        handle.remove(key.as_str()).map_err(storage)?;
                    }
                }
                answer
            };
            txn.commit().map_err(storage)?;
            Ok(answer)
        })
        .await
    }

    /// Removes expired items from every table. Returns how many went.
    pub fn sweep_expired(&self) -> Result<usize, TableError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let mut removed = 0;
        let now = now_secs();
        let tables: Vec<String> = txn
            .list_tables()
            .map_err(storage)?
            .map(|handle| handle.name().to_owned())
            .collect();
        for name in tables {
            let mut handle = txn.open_table(definition(&name)).map_err(storage)?;
            let expired: Vec<String> = handle
                .iter()
                .map_err(storage)?
                .filter_map(Result::ok)
                .filter(|(_, v)| decode(v.value()).is_ok_and(|item| is_expired(&item, now)))
                .map(|(k, _)| k.value().to_owned())
                .collect();
            for key in expired {
                handle.remove(key.as_str()).map_err(storage)?;
                removed += 1;
            }
        }
        txn.commit().map_err(storage)?;
        Ok(removed)
    }
}

/// Opens a table for reading; a table nobody created is `TableNotFound`.
fn open_read(
    txn: &redb::ReadTransaction,
    table: &str,
) -> Result<redb::ReadOnlyTable<&'static str, &'static [u8]>, TableError> {
    match txn.open_table(definition(table)) {
        Ok(handle) => Ok(handle),
        Err(redb::TableError::TableDoesNotExist(_)) => {
            Err(TableError::TableNotFound(table.to_owned()))
        }
        Err(e) => Err(storage(e)),
    }
}

fn table_exists(txn: &redb::WriteTransaction, table: &str) -> Result<bool, TableError> {
    Ok(txn
        .list_tables()
        .map_err(storage)?
        .any(|handle| handle.name() == table))
}

#[async_trait]
impl TableBackend for LocalTable {
    async fn ensure_table(&self, table: &str) -> Result<(), TableError> {
        check_name(table)?;
        let table = table.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(storage)?;
            txn.open_table(definition(&table)).map_err(storage)?;
            txn.commit().map_err(storage)
        })
        .await
    }

    async fn get(&self, table: &str, key: &str) -> Result<Option<Item>, TableError> {
        check_name(table)?;
        check_key(key)?;
        let (table, key) = (table.to_owned(), key.to_owned());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(storage)?;
            let handle = open_read(&txn, &table)?;
            match handle.get(key.as_str()).map_err(storage)? {
                Some(bytes) => {
                    Ok(Some(decode(bytes.value())?).filter(|item| !is_expired(item, now_secs())))
                }
                None => Ok(None),
            }
        })
        .await
    }

    async fn put(
        &self,
        table: &str,
        key: &str,
        item: Item,
        condition: Condition,
    ) -> Result<(), TableError> {
        self.update(table, key, move |current| {
            if condition_holds(&condition, current.as_ref()) {
                Ok((Some(item), ()))
            } else {
                Err(TableError::ConditionFailed)
            }
        })
        .await
    }

    async fn put_many(
        &self,
        table: &str,
        puts: Vec<(String, Item, Condition)>,
    ) -> Vec<Result<(), TableError>> {
        let count = puts.len();
        let failed = |e: TableError| vec![Err(e); count];
        if let Err(e) = check_name(table) {
            return failed(e);
        }
        if let Some(e) = puts.iter().find_map(|(key, _, _)| check_key(key).err()) {
            return failed(e);
        }
        let table = table.to_owned();
        // One transaction, one commit: each item's condition is checked
        // against what is there, earlier items of the call included.
        let written = self
            .blocking(move |db| {
                let txn = db.begin_write().map_err(storage)?;
                let mut out = Vec::with_capacity(puts.len());
                {
                    if !table_exists(&txn, &table)? {
                        return Err(TableError::TableNotFound(table.clone()));
                    }
                    let mut handle = txn.open_table(definition(&table)).map_err(storage)?;
                    let now = now_secs();
                    for (key, item, condition) in puts {
                        let current = match handle.get(key.as_str()).map_err(storage)? {
                            Some(bytes) => {
                                Some(decode(bytes.value())?).filter(|item| !is_expired(item, now))
                            }
                            None => None,
                        };
                        if condition_holds(&condition, current.as_ref()) {
                            let bytes = serde_json::to_vec(&item).map_err(storage)?;
                            handle
                                .insert(key.as_str(), bytes.as_slice())
                                .map_err(storage)?;
                            out.push(Ok(()));
                        } else {
                            out.push(Err(TableError::ConditionFailed));
                        }
                    }
                }
                txn.commit().map_err(storage)?;
                Ok(out)
            })
            .await;
        written.unwrap_or_else(failed)
    }

    async fn delete(&self, table: &str, key: &str, condition: Condition) -> Result<(), TableError> {
        self.update(table, key, move |current| {
            if condition_holds(&condition, current.as_ref()) {
                Ok((None, ()))
            } else {
                Err(TableError::ConditionFailed)
            }
        })
        .await
    }

    async fn add(&self, table: &str, key: &str, attr: &str, delta: i64) -> Result<i64, TableError> {
        let attr = attr.to_owned();
        self.update(table, key, move |current| {
            let mut item = current.unwrap_or_default();
            let value = match item.get(&attr) {
                None => delta,
                Some(AttrValue::N(n)) => n
                    .checked_add(delta)
                    .ok_or_else(|| TableError::InvalidArgument(format!("{attr} would overflow")))?,
                Some(_) => {
                    return Err(TableError::InvalidArgument(format!(
                        "{attr} is not a number"
                    )))
                }
            };
            item.insert(attr, AttrValue::N(value));
            Ok((Some(item), value))
        })
        .await
    }

    async fn scan(&self, table: &str) -> Result<Vec<(String, Item)>, TableError> {
        check_name(table)?;
        let table = table.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(storage)?;
            let handle = open_read(&txn, &table)?;
            let now = now_secs();
            let mut items = Vec::new();
            for row in handle.iter().map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                let item = decode(v.value())?;
                if !is_expired(&item, now) {
                    items.push((k.value().to_owned(), item));
                }
            }
            Ok(items)
        })
        .await
    }
}
