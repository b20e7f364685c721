//! The PostgreSQL store's URL: `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`
//! (or `postgresql://`), with libpq's parameters (`connect_timeout`,
//! `application_name`, ...) as PostgreSQL's own client reads them. How the
//! store names itself never shows the password.

use std::str::FromStr;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct PostgresOptions {
    pub(super) config: postgres::Config,
    /// The URL without its password, for logs.
    pub(super) shown: String,
}

impl PostgresOptions {
    pub fn from_url(url: &str) -> Result<Self, String> {
        let mut config = postgres::Config::from_str(url)
            .map_err(|e| format!("not a PostgreSQL URL ({e}); expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"))?;
        if config.get_connect_timeout().is_none() {
            // A PostgreSQL that is down answers 503 within seconds, not
            // after the operating system's TCP timeout.
            config.connect_timeout(Duration::from_secs(3));
        }
        if config.get_application_name().is_none() {
            config.application_name("lablink");
        }
        let shown = match url.split_once('@') {
            Some((credentials, rest)) => {
                let (scheme, user) = credentials.split_once("://").unwrap_or(("postgres", ""));
                let user = user.split(':').next().unwrap_or("");
                format!("{scheme}://{user}@{rest}")
            }
            None => url.to_string(),
        };
        Ok(Self { config, shown })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows() {
        let o = PostgresOptions::from_url("postgres://lab:s3cret@db.example:5433/lablink").unwrap();
        assert_eq!(o.shown, "postgres://lab@db.example:5433/lablink");
        assert_eq!(o.config.get_dbname(), Some("lablink"));
        assert!(PostgresOptions::from_url("postgres://a@b:notaport/x").is_err());
    }
}
