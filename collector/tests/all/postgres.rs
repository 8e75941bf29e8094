//! The store on PostgreSQL (a real server, made by the test in a temporary
//! folder): the same behaviour as SQLite (fleet view, rollouts, refusals,
//! schema), and exactly-once with several collectors on one database.

use crate::common::*;
use crate::store::row;
use sluice_collector_core::store::PoolOptions;
use sluice_collector_core::{BatchError, Limits, Store};
use sluice_testkit::{Postgres, or_skip};
use std::sync::Arc;

fn connect(url: &str) -> Store {
    Store::connect(url, &PoolOptions::default()).unwrap()
}

#[test]
fn postgres_stores_views_and_rolls_out_as_sqlite_does() {
    let pg = or_skip!(Postgres::start(false));

    // Refusals and duplicates, on the store itself: SQLite's tests, then
    // what they do not cover.
    crate::store::respelled_is_a_duplicate(&connect(&pg.database("respelled")));
    let url = pg.database("semantics");
    let store = connect(&url);
    crate::store::ids_are_scoped_by_device(&store);
    let replay = store
        .store_batch("a", "k", &[row("same", 1, r#"{"from":"a"}"#)])
        .unwrap();
    assert!(replay.replayed && replay.stored == 1, "{replay:?}");
    let reused = store.store_batch("a", "k", &[row("other", 2, "{}")]);
    assert!(
        matches!(reused, Err(BatchError::KeyReused { .. })),
        "{reused:?}"
    );
    let respelled = store
        .store_batch(
            "a",
            "k2",
            &[row("same", 1, r#"{ "from": "a" }"#), row("n", 3, "{}")],
        )
        .unwrap();
    assert_eq!((respelled.stored, respelled.duplicates), (1, 1));
    let conflict = store.store_batch(
        "a",
        "k3",
        &[row("z", 4, "{}"), row("same", 1, r#"{"from":"x"}"#)],
    );
    assert!(
        matches!(conflict, Err(BatchError::IdConflict { index: 1, .. })),
        "{conflict:?}"
    );
    assert_eq!(
        store.count("a").unwrap(),
        2,
        "the refused batch stored nothing"
    );
    // A batch with the same id twice stores it once.
    let twice = store
        .store_batch("a", "k4", &[row("t", 5, "{}"), row("t", 5, "{}")])
        .unwrap();
    assert_eq!((twice.stored, twice.duplicates), (1, 1));
    drop(store);

    // Schema: opened again it is left as is; a newer one and another
    // application's database are refused, naming the database.
    assert_eq!(connect(&url).count("a").unwrap(), 3);
    assert_eq!(
        pg.psql("semantics", "SELECT version FROM sluice_schema"),
        "5"
    );
    pg.psql("semantics", "UPDATE sluice_schema SET version = 7");
    let newer = Store::connect(&url, &PoolOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        newer.contains("schema version 7") && newer.contains("/semantics"),
        "{newer}"
    );
    let other = pg.database("other");
    pg.psql("other", "CREATE TABLE results(x int)");
    let foreign = Store::connect(&other, &PoolOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        foreign.contains("not a Sluice collector database"),
        "{foreign}"
    );
    let down = Store::connect(
        "postgres://sluice:secret@127.0.0.1:1/x",
        &PoolOptions {
            connect_timeout: std::time::Duration::from_secs(2),
            ..PoolOptions::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        down.contains("127.0.0.1:1") && !down.contains("secret"),
        "names the server, not the password: {down}"
    );

    // The fleet view and a rollout, through the API and the CLI, exactly
    // as the SQLite tests run them.
    let c = Running::start_store(
        connect(&pg.database("fleet")),
        crate::fleet::tokens_with_operator(),
        Limits::default(),
    );
    crate::fleet::fleet_view(&c);
    let c = Running::start_store(
        connect(&pg.database("history")),
        crate::fleet::tokens_with_operator(),
        Limits::default(),
    );
    crate::history::history(&c);
    let db = pg.database("rollouts");
    let c = Running::start_store(
        connect(&db),
        crate::rollouts::operator_tokens(),
        Limits::default(),
    );
    crate::rollouts::stage_by_stage(&c);
    crate::rollouts::chunks_are_the_bundles_bytes(&connect(&pg.database("chunks")));

    // Paging by the (seq, id) cursor, seq repeating across outboxes.
    let c = Running::start_store(connect(&pg.database("paging")), tokens(), Limits::default());
    crate::paging::every_result_is_listed_once_when_seq_repeats(&c);
}

/// Two collectors on one database, every batch sent to both at once (a
/// device retrying through a load balancer), some re-formed under new
/// keys: each result is stored once, each batch is acknowledged by both
/// with the same counts, and one of the two says it replayed.
#[test]
fn two_collectors_on_one_postgres_store_every_result_once() {
    let pg = or_skip!(Postgres::start(false));
    let url = pg.database("fleet");
    let collectors: Vec<Running> = (0..2)
        .map(|_| Running::start_store(connect(&url), tokens(), Limits::default()))
        .collect();
    let urls: Arc<Vec<String>> = Arc::new(collectors.iter().map(Running::url).collect());
    let batches = 40;
    let per_batch = 25;
    let threads: Vec<_> = (0..2)
        .map(|side| {
            let urls = urls.clone();
            std::thread::spawn(move || {
                let mut acks = Vec::new();
                for n in 0..batches {
                    let records: Vec<_> = (0..per_batch)
                        .map(|i| record("a", (n * per_batch + i) as i64, "x"))
                        .collect();
                    let answer = post(
                        &urls[side],
                        "ta",
                        &batch("a", &format!("k{n}"), records.clone()),
                    );
                    assert_eq!(answer.status, 200, "{answer:?}");
                    acks.push(answer.body);
                    // Every fifth batch is re-formed (a split, say) under a
                    // new key, overlapping the next one.
                    if n % 5 == 0 {
                        let overlap: Vec<_> = (per_batch / 2..per_batch + per_batch / 2)
                            .map(|i| record("a", (n * per_batch + i) as i64, "x"))
                            .collect();
                        let key = format!("re{n}-{side}");
                        let answer = post(&urls[1 - side], "ta", &batch("a", &key, overlap));
                        assert_eq!(answer.status, 200, "{answer:?}");
                    }
                }
                acks
            })
        })
        .collect();
    let acks: Vec<Vec<serde_json::Value>> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (n, (x, y)) in acks[0].iter().zip(&acks[1]).enumerate() {
        assert_eq!(x["stored"], y["stored"], "batch {n}: {x} {y}");
        assert_eq!(x["duplicates"], y["duplicates"], "batch {n}");
        assert_eq!(
            x["stored"].as_u64().unwrap() + x["duplicates"].as_u64().unwrap(),
            per_batch as u64
        );
        assert!(
            x["replayed"].as_bool().unwrap() ^ y["replayed"].as_bool().unwrap(),
            "batch {n}: one collector stored it, the other replayed it: {x} {y}"
        );
    }
    // The re-formed batches overlap the next batch, never past the last.
    let total = (batches * per_batch) as u64;
    assert_eq!(
        pg.psql(
            "fleet",
            "SELECT COUNT(*), COUNT(DISTINCT id) FROM results WHERE device = 'a'"
        ),
        format!("{total}|{total}")
    );
    assert_eq!(
        pg.psql(
            "fleet",
            "SELECT records FROM fleet_devices WHERE device = 'a'"
        ),
        total.to_string(),
        "the fleet view counted each result once"
    );
}
