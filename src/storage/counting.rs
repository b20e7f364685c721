//! A store wrapper for tests that counts what goes through it: write
//! transactions and reads.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{CommitListener, Store, StoreError, Work};

pub(crate) struct Counting<S: ?Sized> {
    pub(crate) inner: Box<S>,
    pub(crate) transactions: AtomicUsize,
    pub(crate) reads: AtomicUsize,
}

impl<S: Store + ?Sized> Counting<S> {
    pub(crate) fn new(inner: Box<S>) -> Self {
        Self {
            inner,
            transactions: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
        }
    }

    /// How many write transactions ran.
    pub(crate) fn writes(&self) -> usize {
        self.transactions.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl<S: Store + ?Sized> Store for Counting<S> {
    async fn transaction(&self, work: Work) -> Result<(), StoreError> {
        self.transactions.fetch_add(1, Ordering::SeqCst);
        self.inner.transaction(work).await
    }
    async fn read(&self, work: Work) -> Result<(), StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read(work).await
    }
    fn listen(&self, listener: CommitListener) {
        self.inner.listen(listener);
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn durable(&self) -> bool {
        self.inner.durable()
    }
}
