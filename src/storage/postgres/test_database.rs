//! For tests: a fresh database on the PostgreSQL server named by
//! `LABLINK_TEST_POSTGRES` (a URL to an existing database there, whose user
//! may create databases; `.ci/postgres.sh` starts one), dropped when the
//! test ends. Without the variable, tests that need it are skipped and say
//! so.

use postgres::{Client, NoTls};

pub struct TestDatabase {
    admin: String,
    name: String,
    url: String,
}

/// A new empty database, or `None` (skipped, with the reason printed) when
/// no PostgreSQL server is given.
pub fn fresh() -> Option<TestDatabase> {
    let Ok(admin) = std::env::var("LABLINK_TEST_POSTGRES") else {
        eprintln!("skipped: LABLINK_TEST_POSTGRES is not set (.ci/postgres.sh sets it)");
        return None;
    };
    let name = format!("lablink_test_{}", uuid::Uuid::new_v4().simple());
    let mut client = Client::connect(&admin, NoTls).expect("LABLINK_TEST_POSTGRES connects");
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("the test user may create databases");
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    let url = format!("{base}/{name}");
    Some(TestDatabase { admin, name, url })
}

impl TestDatabase {
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Ok(mut client) = Client::connect(&self.admin, NoTls) {
            let _ = client.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}
