//! Durability of the embedded table: a crash that loses every byte not
//! synced keeps every acknowledged write. The table runs on a storage that
//! holds two images, what was written and what the last sync made durable;
//! the crash reopens the durable one.

use std::sync::{Arc, Mutex};

use sluice_backends::local::LocalTable;
use sluice_core::table::{AttrValue, Condition, Item};
use sluice_core::TableBackend;

#[derive(Debug, Default)]
struct Images {
    written: Vec<u8>,
    durable: Vec<u8>,
}

/// A storage whose syncs copy what was written into the durable image.
#[derive(Debug, Clone, Default)]
struct CrashingStorage(Arc<Mutex<Images>>);

impl CrashingStorage {
    /// What a crash now would leave: the durable image, as a new storage.
    fn after_crash(&self) -> Self {
        let durable = self.0.lock().unwrap().durable.clone();
        Self(Arc::new(Mutex::new(Images {
            written: durable.clone(),
            durable,
        })))
    }
}

impl redb::StorageBackend for CrashingStorage {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.0.lock().unwrap().written.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let images = self.0.lock().unwrap();
        let start = offset as usize;
        let bytes = images
            .written
            .get(start..start + out.len())
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "past the end")
            })?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.lock().unwrap().written.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        let mut images = self.0.lock().unwrap();
        images.durable = images.written.clone();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut images = self.0.lock().unwrap();
        let (start, end) = (offset as usize, offset as usize + data.len());
        if images.written.len() < end {
            images.written.resize(end, 0);
        }
        images.written[start..end].copy_from_slice(data);
        Ok(())
    }
}

fn item(n: i64) -> Item {
    [("n".to_owned(), AttrValue::N(n))].into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_that_loses_what_was_not_synced_keeps_every_acknowledged_write() {
    let storage = CrashingStorage::default();
    let table = LocalTable::on_storage(storage.clone()).unwrap();
    table.ensure_table("t").await.unwrap();
    // Writers side by side: puts, conditional puts, counters, batches.
    let writers: Vec<_> = (0..4i64)
        .map(|w| {
            let table = table.clone();
            tokio::spawn(async move {
                for i in 0..40 {
                    let key = format!("w{w}-{i}");
                    table
                        .put("t", &key, item(i), Condition::Absent)
                        .await
                        .unwrap();
                    table.add("t", &format!("count-{w}"), "n", 1).await.unwrap();
                }
                let batch: Vec<(String, Item, Condition)> = (0..10)
                    .map(|i| (format!("w{w}-batch-{i}"), item(i), Condition::Absent))
                    .collect();
                for outcome in table.put_many("t", batch).await {
                    outcome.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let mut acknowledged = table.scan("t").await.unwrap();
    acknowledged.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(acknowledged.len(), 4 * (40 + 1 + 10));
    // The crash comes now, with the table open: no closing flush.
    let crashed = storage.after_crash();
    let after = LocalTable::on_storage(crashed).unwrap();
    let mut survived = after.scan("t").await.unwrap();
    survived.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(survived, acknowledged);
    for w in 0..4 {
        let counter = after
            .get("t", &format!("count-{w}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(counter["n"], AttrValue::N(40));
    }
}
