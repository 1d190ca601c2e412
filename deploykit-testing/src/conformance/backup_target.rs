//! The [`BackupTarget`] contract. Call [`run_all`] on an empty target; each check writes
//! under its own key prefix (`conf-<check>/`), so the checks can also be called one by one.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use deploykit_core::{BackupTarget, Error, ObjectMeta, Result};

/// A future borrowed from the target under test.
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Polls all `futures` concurrently until every one is done; results in input order.
async fn join_all<T>(futures: Vec<BoxFuture<'_, T>>) -> Vec<T> {
    let mut pending: Vec<Option<BoxFuture<'_, T>>> = futures.into_iter().map(Some).collect();
    let mut results: Vec<Option<T>> = pending.iter().map(|_| None).collect();
    poll_fn(|cx| {
        let mut busy = false;
        for (slot, result) in pending.iter_mut().zip(results.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => {
                        *result = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => busy = true,
                }
            }
        }
        if busy { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    results
        .into_iter()
        .map(|r| r.expect("every future finished"))
        .collect()
}

/// `len` bytes of a pattern that differs between `seed`s and has no short period.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(i as u32 >> 8) as u8 ^ seed)
        .collect()
}

/// The keys and sizes of `list(prefix)`.
async fn listed(target: &dyn BackupTarget, prefix: &str) -> Vec<(String, u64)> {
    target
        .list(prefix)
        .await
        .unwrap_or_else(|e| panic!("list {prefix:?}: {}", e.chain()))
        .into_iter()
        .map(|ObjectMeta { key, size, .. }| (key, size))
        .collect()
}

fn owned(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|(k, s)| ((*k).to_owned(), *s)).collect()
}

async fn must_get(target: &dyn BackupTarget, key: &str) -> Vec<u8> {
    target
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("get {key:?}: {}", e.chain()))
}

async fn must_put(target: &dyn BackupTarget, key: &str, data: Vec<u8>) {
    target
        .put(key, data)
        .await
        .unwrap_or_else(|e| panic!("put {key:?}: {}", e.chain()));
}

/// Run every backup-target check.
pub async fn run_all(target: &dyn BackupTarget) {
    put_then_get_round_trips(target).await;
    put_replaces(target).await;
    put_if_absent_creates_once(target).await;
    concurrent_put_if_absent_has_one_winner(target).await;
    missing_keys_are_not_found(target).await;
    get_range_reads_and_clips(target).await;
    list_by_prefix(target).await;
    list_many_keys(target).await;
    nested_keys(target).await;
    delete_removes(target).await;
    invalid_keys_are_rejected(target).await;
}

/// What is put is got back byte for byte: a small object, an empty one and a 3 MiB one.
pub async fn put_then_get_round_trips(target: &dyn BackupTarget) {
    let cases = [
        ("conf-rt/small", b"hello, backup".to_vec()),
        ("conf-rt/empty", Vec::new()),
        ("conf-rt/large", pattern(7, 3 * 1024 * 1024)),
    ];
    for (key, data) in cases {
        must_put(target, key, data.clone()).await;
        let got = must_get(target, key).await;
        assert!(
            got == data,
            "get {key:?} must return the {} bytes put, got {} bytes{}",
            data.len(),
            got.len(),
            if got.len() == data.len() {
                " with different content"
            } else {
                ""
            }
        );
    }
    assert_eq!(
        listed(target, "conf-rt/").await,
        owned(&[
            ("conf-rt/empty", 0),
            ("conf-rt/large", 3 * 1024 * 1024),
            ("conf-rt/small", 13)
        ]),
        "list must report every object put, with its size"
    );
}

/// A put over an existing object replaces it entirely, whether longer or shorter.
pub async fn put_replaces(target: &dyn BackupTarget) {
    let key = "conf-replace/k";
    must_put(target, key, b"first".to_vec()).await;
    must_put(target, key, b"second, longer".to_vec()).await;
    assert_eq!(
        must_get(target, key).await,
        b"second, longer",
        "put must replace the object"
    );
    must_put(target, key, b"3rd".to_vec()).await;
    assert_eq!(
        must_get(target, key).await,
        b"3rd",
        "put of a shorter object must leave none of the longer one behind"
    );
    assert_eq!(
        listed(target, "conf-replace/").await,
        owned(&[(key, 3)]),
        "a replaced object is listed once, with its new size"
    );
}

/// `put_if_absent` creates a missing object, then refuses with `AlreadyExists` and leaves the
/// existing object untouched, also when that object was written by a plain `put`.
pub async fn put_if_absent_creates_once(target: &dyn BackupTarget) {
    let key = "conf-pia/k";
    target
        .put_if_absent(key, b"original".to_vec())
        .await
        .unwrap_or_else(|e| panic!("put_if_absent of a missing key must succeed: {}", e.chain()));
    assert_eq!(must_get(target, key).await, b"original");
    match target.put_if_absent(key, b"usurper".to_vec()).await {
        Err(Error::AlreadyExists { .. }) => {}
        other => panic!("put_if_absent over an existing key must be AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        must_get(target, key).await,
        b"original",
        "a refused put_if_absent must leave the existing object untouched"
    );

    let plain = "conf-pia/plain";
    must_put(target, plain, b"by put".to_vec()).await;
    match target.put_if_absent(plain, b"usurper".to_vec()).await {
        Err(Error::AlreadyExists { .. }) => {}
        other => panic!(
            "put_if_absent over an object written by put must be AlreadyExists, got {other:?}"
        ),
    }
    assert_eq!(must_get(target, plain).await, b"by put");
    assert_eq!(
        listed(target, "conf-pia/").await,
        owned(&[(key, 8), (plain, 6)]),
        "refused conditional puts must not leave anything listed"
    );
}

/// Eight concurrent `put_if_absent`s of one key: exactly one succeeds, the others are
/// `AlreadyExists`, and the object is the winner's. Repeated over a few keys.
pub async fn concurrent_put_if_absent_has_one_winner(target: &dyn BackupTarget) {
    const WRITERS: u8 = 8;
    for round in 0..4 {
        let key = format!("conf-race/{round}");
        let payload = |i: u8| pattern(i, 4096 + usize::from(i));
        let futures: Vec<BoxFuture<'_, Result<()>>> = (0..WRITERS)
            .map(|i| target.put_if_absent(&key, payload(i)))
            .collect();
        let results = join_all(futures).await;
        let winners: Vec<u8> = (0..WRITERS)
            .filter(|&i| results[usize::from(i)].is_ok())
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "exactly one of {WRITERS} concurrent put_if_absent of {key:?} must succeed; \
             results: {results:?}"
        );
        for (i, result) in results.iter().enumerate() {
            assert!(
                matches!(result, Ok(()) | Err(Error::AlreadyExists { .. })),
                "a losing concurrent put_if_absent must be AlreadyExists, writer {i} got \
                 {result:?}"
            );
        }
        assert!(
            must_get(target, &key).await == payload(winners[0]),
            "after a race of put_if_absent, {key:?} must hold the winner's data intact"
        );
    }
    assert_eq!(
        listed(target, "conf-race/").await.len(),
        4,
        "a race of put_if_absent must leave exactly one object per key"
    );
}

/// Reading a key never written is `NotFound`, for `get` and `get_range` alike.
pub async fn missing_keys_are_not_found(target: &dyn BackupTarget) {
    for key in ["conf-missing/nope", "conf-missing/deep/er/nope"] {
        match target.get(key).await {
            Err(Error::NotFound { .. }) => {}
            other => panic!("get of missing {key:?} must be NotFound, got {other:?}"),
        }
        match target.get_range(key, 0..10).await {
            Err(Error::NotFound { .. }) => {}
            other => panic!("get_range of missing {key:?} must be NotFound, got {other:?}"),
        }
    }
    assert!(
        listed(target, "conf-missing/").await.is_empty(),
        "list under a prefix never written must be empty"
    );
}

/// `get_range` returns exactly the bytes asked for, clips a range running past the end, and
/// returns nothing for a range starting at or past the end (or an empty range).
pub async fn get_range_reads_and_clips(target: &dyn BackupTarget) {
    let key = "conf-range/k";
    let data = pattern(3, 1000);
    must_put(target, key, data.clone()).await;
    let cases: [(std::ops::Range<u64>, &[u8], &str); 7] = [
        (0..1000, &data[..], "the whole object"),
        (10..20, &data[10..20], "a range inside"),
        (0..1, &data[..1], "the first byte"),
        (
            990..2000,
            &data[990..],
            "a range running past the end, clipped",
        ),
        (1000..1010, &[], "a range starting at the end, empty"),
        (2000..3000, &[], "a range starting past the end, empty"),
        (500..500, &[], "an empty range"),
    ];
    for (range, want, what) in cases {
        let got = target
            .get_range(key, range.clone())
            .await
            .unwrap_or_else(|e| panic!("get_range {key:?} {range:?}: {}", e.chain()));
        assert!(
            got == want,
            "get_range {range:?} must return {what} ({} bytes), got {} bytes",
            want.len(),
            got.len()
        );
    }
}

/// `list(prefix)` returns exactly the objects whose keys start with `prefix` (a prefix need
/// not end at a `/`), in byte-wise key order across directory levels, with their sizes.
pub async fn list_by_prefix(target: &dyn BackupTarget) {
    for (key, len) in [
        ("conf-list/b", 2),
        ("conf-list/a", 1),
        ("conf-list/c/d", 3),
        ("conf-list/c/e/f", 4),
        ("conf-listx/other", 5),
        ("conf-lis", 6),
        // Byte order: `-` < `/` < `0`, so `a-c` < `a/b` < `a0` whatever directories hold.
        ("conf-list/order/a0", 7),
        ("conf-list/order/a/b", 8),
        ("conf-list/order/a-c", 9),
    ] {
        must_put(target, key, vec![b'x'; len]).await;
    }
    assert_eq!(
        listed(target, "conf-list/").await,
        owned(&[
            ("conf-list/a", 1),
            ("conf-list/b", 2),
            ("conf-list/c/d", 3),
            ("conf-list/c/e/f", 4),
            ("conf-list/order/a-c", 9),
            ("conf-list/order/a/b", 8),
            ("conf-list/order/a0", 7),
        ]),
        "list must return the keys under the prefix, in key order, with sizes, and nothing \
         from other prefixes"
    );
    assert_eq!(
        listed(target, "conf-list/c").await,
        owned(&[("conf-list/c/d", 3), ("conf-list/c/e/f", 4)]),
        "a prefix ending inside a segment must match keys below it"
    );
    assert_eq!(
        listed(target, "conf-list/order/a").await,
        owned(&[
            ("conf-list/order/a-c", 9),
            ("conf-list/order/a/b", 8),
            ("conf-list/order/a0", 7),
        ]),
        "a partial-name prefix must match files and directories alike, in key order"
    );
    assert_eq!(
        listed(target, "conf-lis").await.len(),
        9,
        "a prefix that is also a key must match that key and everything longer"
    );
    assert_eq!(
        listed(target, "conf-list/a").await,
        owned(&[("conf-list/a", 1)]),
        "a prefix equal to a key must list that key"
    );
    assert!(
        listed(target, "conf-list/zzz").await.is_empty(),
        "a prefix matching nothing must list nothing"
    );
}

/// Listing returns every one of 1,100 objects (more than one page of a typical object store),
/// in order.
pub async fn list_many_keys(target: &dyn BackupTarget) {
    const COUNT: usize = 1100;
    let keys: Vec<String> = (0..COUNT).map(|i| format!("conf-many/{i:05}")).collect();
    for batch in keys.chunks(64) {
        let futures: Vec<BoxFuture<'_, Result<()>>> = batch
            .iter()
            .map(|key| target.put(key, key.as_bytes().to_vec()))
            .collect();
        for (key, result) in batch.iter().zip(join_all(futures).await) {
            result.unwrap_or_else(|e| panic!("put {key:?}: {}", e.chain()));
        }
    }
    let got = listed(target, "conf-many/").await;
    let want: Vec<(String, u64)> = keys.iter().map(|k| (k.clone(), k.len() as u64)).collect();
    assert_eq!(got.len(), COUNT, "list must return all {COUNT} objects");
    assert!(
        got == want,
        "list of {COUNT} objects must be complete and in key order"
    );
    assert_eq!(
        listed(target, "conf-many/0105").await,
        want[1050..1060].to_vec(),
        "a narrow prefix among many keys must list only its keys"
    );
}

/// Keys with several segments work like any other, beside siblings at every level.
pub async fn nested_keys(target: &dyn BackupTarget) {
    let deep = "conf-nested/a/b/c";
    must_put(target, deep, b"deep".to_vec()).await;
    must_put(target, "conf-nested/a/b2", b"sibling".to_vec()).await;
    must_put(target, "conf-nested/top", b"top".to_vec()).await;
    assert_eq!(must_get(target, deep).await, b"deep");
    assert_eq!(
        listed(target, "conf-nested/a/").await,
        owned(&[(deep, 4), ("conf-nested/a/b2", 7)])
    );
    match target.get("conf-nested/a/b").await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("a key that is only a prefix of others must be NotFound, got {other:?}"),
    }
    target
        .delete(deep)
        .await
        .unwrap_or_else(|e| panic!("delete {deep:?}: {}", e.chain()));
    assert_eq!(
        listed(target, "conf-nested/").await,
        owned(&[("conf-nested/a/b2", 7), ("conf-nested/top", 3)]),
        "deleting a nested key must leave its siblings"
    );
    must_put(target, deep, b"again".to_vec()).await;
    assert_eq!(must_get(target, deep).await, b"again");
}

/// `delete` removes an object (gone from `get` and `list`); deleting a missing key, or the
/// same key twice, is not an error.
pub async fn delete_removes(target: &dyn BackupTarget) {
    let key = "conf-delete/k";
    must_put(target, key, b"doomed".to_vec()).await;
    must_put(target, "conf-delete/keep", b"kept".to_vec()).await;
    target
        .delete(key)
        .await
        .unwrap_or_else(|e| panic!("delete {key:?}: {}", e.chain()));
    match target.get(key).await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("get after delete must be NotFound, got {other:?}"),
    }
    assert_eq!(
        listed(target, "conf-delete/").await,
        owned(&[("conf-delete/keep", 4)]),
        "a deleted object must not be listed, and others must stay"
    );
    for missing in [key, "conf-delete/never", "conf-delete/never/deeper"] {
        target
            .delete(missing)
            .await
            .unwrap_or_else(|e| panic!("deleting missing {missing:?} must succeed: {}", e.chain()));
    }
    target
        .put_if_absent(key, b"reborn".to_vec())
        .await
        .unwrap_or_else(|e| panic!("put_if_absent after delete must succeed: {}", e.chain()));
    assert_eq!(must_get(target, key).await, b"reborn");
}

/// Keys that are not relative `/`-separated paths of non-empty, non-`..` segments are
/// `InvalidSpec` for every operation taking a key, and nothing is written.
pub async fn invalid_keys_are_rejected(target: &dyn BackupTarget) {
    fn check<T: std::fmt::Debug>(op: &str, key: &str, result: Result<T>) {
        match result {
            Err(Error::InvalidSpec { .. }) => {}
            other => panic!("{op} of invalid key {key:?} must be InvalidSpec, got {other:?}"),
        }
    }
    let before = listed(target, "").await;
    for key in ["", "/abs", "a/../b", "a//b", "conf-invalid/"] {
        check("put", key, target.put(key, b"x".to_vec()).await);
        check(
            "put_if_absent",
            key,
            target.put_if_absent(key, b"x".to_vec()).await,
        );
        check("get", key, target.get(key).await);
        check("get_range", key, target.get_range(key, 0..1).await);
        check("delete", key, target.delete(key).await);
    }
    assert!(
        listed(target, "").await == before,
        "rejected puts must not store anything"
    );
}
