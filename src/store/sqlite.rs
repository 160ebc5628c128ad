//! Embedded SQLite store (to be written).
#![allow(unused_variables)]
use super::*;

pub struct SqliteStore;

impl SqliteStore {
    pub fn open(path: &str) -> Result<Self, StoreError> {
        todo!()
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn describe(&self) -> String { todo!() }
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> { todo!() }
    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> { todo!() }
    async fn put(&self, key: &str, value: &str) -> Result<Revision, StoreError> { todo!() }
    async fn create(&self, key: &str, value: &str, ttl: Duration) -> Result<Option<Entry>, StoreError> { todo!() }
    async fn refresh(&self, key: &str, value: &str, ttl: Duration, expected: Revision) -> Result<Option<Entry>, StoreError> { todo!() }
    async fn delete(&self, key: &str) -> Result<bool, StoreError> { todo!() }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<mpsc::Receiver<WatchEvent>, StoreError> { todo!() }
}
