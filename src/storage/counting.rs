//! A store wrapper for tests that counts what goes through it: write
//! transactions and reads. It offers no group commit, so every write is one
//! counted transaction.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Store, StoreError, Work};

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

impl<S: Store + ?Sized> Store for Counting<S> {
    fn transaction(&self, work: &mut Work<'_>) -> Result<(), StoreError> {
        self.transactions.fetch_add(1, Ordering::SeqCst);
        self.inner.transaction(work)
    }
    fn read(&self, work: &mut Work<'_>) -> Result<(), StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read(work)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn blocks(&self) -> bool {
        self.inner.blocks()
    }
    fn durable(&self) -> bool {
        self.inner.durable()
    }
}
