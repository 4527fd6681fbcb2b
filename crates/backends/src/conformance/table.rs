//! The table conformance suite.

use std::sync::Arc;

use sluice_core::table::{AttrValue, Condition, Item, TableError, EXPIRES_AT};
use sluice_core::TableBackend;

type Backend = Arc<dyn TableBackend>;

fn item(pairs: &[(&str, AttrValue)]) -> Item {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub async fn conditional_writes(backend: Backend, prefix: &str) {
    let table = format!("{prefix}-cond");
    backend.ensure_table(&table).await.unwrap();
    backend.ensure_table(&table).await.unwrap();
    assert_eq!(backend.get(&table, "lease-1").await.unwrap(), None);
    let first = item(&[
        ("owner", AttrValue::S("a".into())),
        ("counter", AttrValue::N(1)),
    ]);
    backend
        .put(&table, "lease-1", first.clone(), Condition::Absent)
        .await
        .unwrap();
    assert_eq!(
        backend
            .put(&table, "lease-1", first.clone(), Condition::Absent)
            .await,
        Err(TableError::ConditionFailed)
    );
    assert_eq!(
        backend.get(&table, "lease-1").await.unwrap(),
        Some(first.clone())
    );
    let taken = item(&[
        ("owner", AttrValue::S("b".into())),
        ("counter", AttrValue::N(2)),
    ]);
    let stale = Condition::Equals("counter".into(), AttrValue::N(7));
    assert_eq!(
        backend.put(&table, "lease-1", taken.clone(), stale).await,
        Err(TableError::ConditionFailed)
    );
    let current = Condition::All(vec![
        Condition::Equals("counter".into(), AttrValue::N(1)),
        Condition::Equals("owner".into(), AttrValue::S("a".into())),
    ]);
    backend
        .put(&table, "lease-1", taken.clone(), current)
        .await
        .unwrap();
    assert_eq!(backend.get(&table, "lease-1").await.unwrap(), Some(taken));
    let with_list = item(&[
        ("parents", AttrValue::L(vec!["s-0".into(), "s-1".into()])),
        ("done", AttrValue::B(true)),
    ]);
    backend
        .put(&table, "lease-2", with_list.clone(), Condition::Always)
        .await
        .unwrap();
    assert_eq!(
        backend.get(&table, "lease-2").await.unwrap(),
        Some(with_list)
    );
    assert_eq!(
        backend
            .put(
                &table,
                "lease-2",
                Item::new(),
                Condition::Missing("parents".into())
            )
            .await,
        Err(TableError::ConditionFailed)
    );
    assert_eq!(
        backend
            .delete(
                &table,
                "lease-1",
                Condition::Equals("counter".into(), AttrValue::N(1))
            )
            .await,
        Err(TableError::ConditionFailed)
    );
    backend
        .delete(&table, "lease-1", Condition::Present)
        .await
        .unwrap();
    assert_eq!(backend.get(&table, "lease-1").await.unwrap(), None);
    backend
        .delete(&table, "never-there", Condition::Always)
        .await
        .unwrap();
    let keys: Vec<String> = backend
        .scan(&table)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["lease-2"]);
}

pub async fn counters_add_atomically(backend: Backend, prefix: &str) {
    let table = format!("{prefix}-count");
    backend.ensure_table(&table).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (backend, table) = (backend.clone(), table.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                backend
                    .add(&table, "views:purchase", "count", 1)
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        backend
            .add(&table, "views:purchase", "count", 0)
            .await
            .unwrap(),
        80
    );
    assert_eq!(
        backend
            .add(&table, "views:purchase", "count", -5)
            .await
            .unwrap(),
        75
    );
}

pub async fn expired_items_read_as_absent(backend: Backend, prefix: &str) {
    let table = format!("{prefix}-ttl");
    backend.ensure_table(&table).await.unwrap();
    let past = item(&[(EXPIRES_AT, AttrValue::N(now_secs() - 10))]);
    let future = item(&[(EXPIRES_AT, AttrValue::N(now_secs() + 3600))]);
    backend
        .put(&table, "event-old", past, Condition::Always)
        .await
        .unwrap();
    backend
        .put(&table, "event-new", future.clone(), Condition::Always)
        .await
        .unwrap();
    assert_eq!(backend.get(&table, "event-old").await.unwrap(), None);
    assert_eq!(
        backend.get(&table, "event-new").await.unwrap(),
        Some(future.clone())
    );
    // A dedup claim succeeds over an expired key and fails over a live one.
    backend
        .put(&table, "event-old", future.clone(), Condition::Absent)
        .await
        .unwrap();
    assert_eq!(
        backend
            .put(&table, "event-new", future, Condition::Absent)
            .await,
        Err(TableError::ConditionFailed)
    );
    let keys: Vec<String> = backend
        .scan(&table)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["event-new", "event-old"]);
}

pub async fn missing_tables_are_errors(backend: Backend, prefix: &str) {
    let table = format!("{prefix}-nothere");
    assert_eq!(
        backend.get(&table, "k").await,
        Err(TableError::TableNotFound(table.clone()))
    );
    assert_eq!(
        backend
            .put(&table, "k", Item::new(), Condition::Always)
            .await,
        Err(TableError::TableNotFound(table.clone()))
    );
}

pub async fn put_many_checks_each_condition(backend: Backend, prefix: &str) {
    let table = format!("{prefix}-many");
    backend.ensure_table(&table).await.unwrap();
    let item = |n: i64| Item::from([("n".to_owned(), AttrValue::N(n))]);
    backend
        .put(&table, "taken", item(1), Condition::Absent)
        .await
        .unwrap();
    let results = backend
        .put_many(
            &table,
            vec![
                ("fresh".into(), item(2), Condition::Absent),
                ("taken".into(), item(3), Condition::Absent),
                (
                    "taken".into(),
                    item(4),
                    Condition::Equals("n".into(), AttrValue::N(1)),
                ),
                // Sees the write just before it in the same call.
                ("fresh".into(), item(5), Condition::Absent),
            ],
        )
        .await;
    assert_eq!(
        results,
        [
            Ok(()),
            Err(TableError::ConditionFailed),
            Ok(()),
            Err(TableError::ConditionFailed)
        ]
    );
    assert_eq!(backend.get(&table, "fresh").await.unwrap(), Some(item(2)));
    assert_eq!(backend.get(&table, "taken").await.unwrap(), Some(item(4)));
    let missing = backend
        .put_many(
            "no-such-table",
            vec![("k".into(), item(1), Condition::Always)],
        )
        .await;
    assert!(
        matches!(missing[..], [Err(TableError::TableNotFound(_))]),
        "{missing:?}"
    );
}
