//! Listing a prefix in pages, all read at one revision.
//!
//! One range read of a whole prefix is one gRPC response, and the client refuses responses over
//! 4 MiB (tonic's default): a few values of ~1 MB under the leases' prefix (etcd accepts values up
//! to 1.5 MiB by default, and anyone who can write one key can write them), or tens of thousands
//! of honest leases, would make every listing fail, and the agent could never list its leases.
//! So a listing is read `PAGE_KEYS` keys at a time in key order, each page continuing after the
//! last key of the one before. The first page's revision pins the others (a range read at that
//! revision), so the pages are one consistent snapshot and the listing's revision is that one. A
//! page refused as too large is retried with half as many keys (down to one; a single key the
//! client cannot receive is an error naming it), and the page size grows back after a success.
//! If the pinned revision is compacted before the last page, the listing starts over.
//!
//! The loop is generic over the page read so that its logic is tested against a fake store
//! (below); `EtcdStore::list` plugs in the real range read.

use crate::store::Revision;
use std::future::Future;

/// Keys per page: a lease is ~150 bytes, so a page of honest leases is ~75 KB.
pub(super) const PAGE_KEYS: i64 = 500;

/// How often a listing starts over because its revision was compacted under it, before giving up.
pub(super) const RESTARTS: usize = 5;

/// One page read: keys in `[start, end)` at `revision` (0: the current one), at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Request {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    pub revision: Revision,
    pub limit: i64,
}

/// What a page read returned: its items in key order, whether more keys follow in the range, and
/// the revision it was read at (for the first, unpinned page: the store's current revision).
pub(super) struct Page<T> {
    pub items: Vec<T>,
    pub more: bool,
    pub revision: Revision,
}

/// Why the store refused a page, as far as paging can do something about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// The response was larger than the client accepts.
    TooLarge,
    /// The revision asked for was compacted.
    Compacted,
}

/// Why a listing failed.
#[derive(Debug)]
pub(super) enum Failed<E> {
    /// The read itself failed (unreachable store, permission, …).
    Read(E),
    /// Even a page of one key was too large: the key at or after `start`.
    KeyTooLarge { start: Vec<u8> },
    /// The revision was compacted under the listing `RESTARTS` times in a row.
    Compacted { revision: Revision },
}

/// The range of keys starting with `prefix`, as etcd takes it: `[prefix, end)`, where the
/// empty prefix (every key) is `["\0", "\0")` ("\0" as end means "no end").
pub(super) fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (vec![0], vec![0]);
    }
    for i in (0..prefix.len()).rev() {
        if prefix[i] < 0xff {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            return (prefix.to_vec(), end);
        }
    }
    // All 0xff: no key past the prefix's keys exists, so no end.
    (prefix.to_vec(), vec![0])
}

/// Reads every key starting with `prefix`, a page at a time, as one snapshot; returns the items
/// in key order and the revision they were read at.
pub(super) async fn list<T, E, F, Fut>(
    prefix: &[u8],
    key_of: impl Fn(&T) -> &[u8],
    mut read: F,
) -> Result<(Vec<T>, Revision), Failed<E>>
where
    F: FnMut(Request) -> Fut,
    Fut: Future<Output = Result<Result<Page<T>, Refused>, E>>,
{
    let (first, end) = prefix_range(prefix);
    let mut compacted_at = 0;
    for _ in 0..RESTARTS {
        let mut items = Vec::new();
        let mut revision: Revision = 0;
        let mut start = first.clone();
        let mut limit = PAGE_KEYS;
        let complete = loop {
            let req = Request {
                start: start.clone(),
                end: end.clone(),
                revision,
                limit,
            };
            match read(req).await.map_err(Failed::Read)? {
                Ok(page) => {
                    if revision == 0 {
                        revision = page.revision;
                    }
                    let Some(last) = page.items.last() else {
                        break true;
                    };
                    start = key_of(last).to_vec();
                    start.push(0);
                    items.extend(page.items);
                    if !page.more {
                        break true;
                    }
                    limit = (limit * 2).min(PAGE_KEYS);
                }
                Err(Refused::TooLarge) if limit > 1 => limit /= 2,
                Err(Refused::TooLarge) => return Err(Failed::KeyTooLarge { start }),
                Err(Refused::Compacted) => {
                    compacted_at = revision;
                    break false;
                }
            }
        };
        if complete {
            return Ok((items, revision));
        }
    }
    Err(Failed::Compacted { revision: compacted_at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// A multi-version store: key → every (revision, value size or None when deleted), a
    /// response limit in bytes, and a compaction floor, like etcd's.
    #[derive(Default)]
    struct Fake {
        versions: BTreeMap<Vec<u8>, Vec<(Revision, Option<usize>)>>,
        head: Revision,
        compacted: Revision,
        max_response: usize,
        log: Vec<Request>,
    }

    impl Fake {
        fn new(max_response: usize) -> Fake {
            Fake {
                max_response,
                ..Fake::default()
            }
        }

        fn put(&mut self, key: &str, size: usize) {
            self.head += 1;
            let h = self.head;
            self.versions.entry(key.into()).or_default().push((h, Some(size)));
        }

        fn delete(&mut self, key: &str) {
            self.head += 1;
            let h = self.head;
            self.versions.entry(key.into()).or_default().push((h, None));
        }

        /// Live keys at `rev`, with their sizes.
        fn at(&self, rev: Revision) -> Vec<(Vec<u8>, usize)> {
            self.versions
                .iter()
                .filter_map(|(k, vs)| {
                    let (_, v) = vs.iter().rev().find(|(r, _)| *r <= rev)?;
                    Some((k.clone(), (*v)?))
                })
                .collect()
        }

        fn read(&mut self, req: Request) -> Result<Page<(Vec<u8>, usize)>, Refused> {
            self.log.push(req.clone());
            let rev = if req.revision == 0 { self.head } else { req.revision };
            if rev < self.compacted {
                return Err(Refused::Compacted);
            }
            let in_range: Vec<_> = self
                .at(rev)
                .into_iter()
                .filter(|(k, _)| *k >= req.start && (req.end == [0] || *k < req.end))
                .collect();
            let n = usize::try_from(req.limit).unwrap();
            let items: Vec<_> = in_range.iter().take(n).cloned().collect();
            if items.iter().map(|(k, s)| k.len() + s).sum::<usize>() > self.max_response {
                return Err(Refused::TooLarge);
            }
            Ok(Page {
                more: in_range.len() > items.len(),
                items,
                revision: self.head,
            })
        }
    }

    type Listed = Result<(Vec<(Vec<u8>, usize)>, Revision), Failed<()>>;

    /// Lists `prefix` from `fake`, calling `between(fake, page number)` after each page read.
    async fn list_fake(fake: &RefCell<Fake>, prefix: &str, between: impl Fn(&mut Fake, usize)) -> Listed {
        let pages = RefCell::new(0);
        list(
            prefix.as_bytes(),
            |kv: &(Vec<u8>, usize)| kv.0.as_slice(),
            |req| {
                let out = fake.borrow_mut().read(req);
                let n = *pages.borrow();
                *pages.borrow_mut() += 1;
                between(&mut fake.borrow_mut(), n);
                async move { Ok(out) }
            },
        )
        .await
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("/p/{i:05}")).collect()
    }

    #[test]
    fn prefix_ranges() {
        assert_eq!(prefix_range(b"/a/"), (b"/a/".to_vec(), b"/a0".to_vec()));
        assert_eq!(prefix_range(b""), (vec![0], vec![0]));
        assert_eq!(prefix_range(b"a\xff"), (b"a\xff".to_vec(), b"b".to_vec()));
        assert_eq!(prefix_range(b"\xff\xff"), (b"\xff\xff".to_vec(), vec![0]));
    }

    #[tokio::test]
    async fn pages_cover_the_prefix_once_in_order() {
        let fake = RefCell::new(Fake::new(usize::MAX));
        for k in keys(1234) {
            fake.borrow_mut().put(&k, 10);
        }
        fake.borrow_mut().put("/p", 1); // the prefix without its slash: outside
        fake.borrow_mut().put("/q/0", 1);
        let head = fake.borrow().head;
        let (items, rev) = list_fake(&fake, "/p/", |_, _| {}).await.unwrap();
        assert_eq!(rev, head);
        let got: Vec<String> = items
            .iter()
            .map(|(k, _)| String::from_utf8(k.clone()).unwrap())
            .collect();
        assert_eq!(got, keys(1234));
        {
            let log = &fake.borrow().log;
            assert_eq!(log.len(), 3, "pages of {PAGE_KEYS}");
            assert!(log.iter().all(|r| r.limit == PAGE_KEYS && r.end == b"/p0"));
            assert_eq!(log[0].revision, 0);
            assert!(log[1..].iter().all(|r| r.revision == head), "later pages pinned");
            assert_eq!(log[1].start, b"/p/00499\0");
        }
        // Everything, and nothing at all.
        let (all, _) = list_fake(&fake, "", |_, _| {}).await.unwrap();
        assert_eq!(all.len(), 1236);
        let (none, rev) = list_fake(&fake, "/none/", |_, _| {}).await.unwrap();
        assert_eq!((none.len(), rev), (0, head));
    }

    #[tokio::test]
    async fn writes_between_pages_are_not_seen() {
        let fake = RefCell::new(Fake::new(usize::MAX));
        for k in keys(1500) {
            fake.borrow_mut().put(&k, 10);
        }
        let head = fake.borrow().head;
        let want = fake.borrow().at(head);
        // After every page: a new key early in the range, one late, a changed value, a delete.
        let (items, rev) = list_fake(&fake, "/p/", |f, n| {
            f.put(&format!("/p/00000-{n}"), 1);
            f.put(&format!("/p/99999-{n}"), 1);
            f.put("/p/01400", 99);
            f.delete(&format!("/p/0{}", 1300 + n));
        })
        .await
        .unwrap();
        assert_eq!(rev, head);
        assert_eq!(items, want);
    }

    #[tokio::test]
    async fn a_page_too_large_is_halved_then_grows_back() {
        // 1,000 keys, five of ~1 MB; a response holds at most 4 MiB, i.e. four of them.
        let fake = RefCell::new(Fake::new(4 << 20));
        for (i, k) in keys(1000).iter().enumerate() {
            let size = if (10..15).contains(&i) { 1_000_000 } else { 100 };
            fake.borrow_mut().put(k, size);
        }
        let (items, _) = list_fake(&fake, "/p/", |_, _| {}).await.unwrap();
        assert_eq!(items.len(), 1000);
        let log = &fake.borrow().log;
        let limits: Vec<i64> = log.iter().map(|r| r.limit).collect();
        // Halved from the first page's start until the page fits (keys 0-6), then grown back.
        assert_eq!(limits[..7], [500, 250, 125, 62, 31, 15, 7], "{limits:?}");
        assert!(log[..7].iter().all(|r| r.start == b"/p/"));
        assert!(limits[7..].contains(&PAGE_KEYS), "{limits:?}");
        assert!(limits.len() < 20, "{limits:?}");
    }

    #[tokio::test]
    async fn a_single_key_too_large_is_named() {
        let fake = RefCell::new(Fake::new(1000));
        for (i, k) in keys(10).iter().enumerate() {
            fake.borrow_mut().put(k, if i == 7 { 5000 } else { 10 });
        }
        match list_fake(&fake, "/p/", |_, _| {}).await {
            Err(Failed::KeyTooLarge { start }) => assert_eq!(start, b"/p/00006\0"),
            other => panic!("{:?}", other.map(|(i, r)| (i.len(), r))),
        }
    }

    #[tokio::test]
    async fn compaction_mid_listing_starts_over() {
        let fake = RefCell::new(Fake::new(usize::MAX));
        for k in keys(1200) {
            fake.borrow_mut().put(&k, 10);
        }
        // After the first page, a write and a compaction up to it: the pinned revision is gone.
        let (items, rev) = list_fake(&fake, "/p/", |f, n| {
            if n == 0 {
                f.put("/p/00000", 20);
                f.compacted = f.head;
            }
        })
        .await
        .unwrap();
        assert_eq!(rev, fake.borrow().head, "the second listing's revision");
        assert_eq!(items.len(), 1200);
        assert_eq!(items[0].1, 20, "the value as of the new revision");
        {
            let log = &fake.borrow().log;
            // Page 1, refused page 2, then pages 1-3 again.
            assert_eq!(log.len(), 5);
            assert_eq!((log[2].revision, log[2].start.as_slice()), (0, b"/p/".as_slice()));
        }

        // Compacted under every attempt: an error, not an endless loop.
        let fake = RefCell::new(Fake::new(usize::MAX));
        for k in keys(1200) {
            fake.borrow_mut().put(&k, 10);
        }
        let out = list_fake(&fake, "/p/", |f, _| {
            f.put("/p/x", 1);
            f.compacted = f.head;
        })
        .await;
        assert!(
            matches!(out, Err(Failed::Compacted { .. })),
            "{:?}",
            out.map(|(i, _)| i.len())
        );
        assert_eq!(fake.borrow().log.len(), 2 * RESTARTS);
    }
}
