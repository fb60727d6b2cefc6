//! `WAYMARK_*` environment overrides, applied over the file.

use std::collections::HashMap;

use super::{
    default_edge_max_body, default_replay_window, ByteSize, Config, ConfigError, EdgeConfig,
    HumanDuration,
};

impl Config {
    /// Applies `WAYMARK_*` overrides from `env`.
    pub fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        fn get<'a>(env: &'a HashMap<String, String>, var: &str) -> Option<&'a str> {
            env.get(var).map(String::as_str)
        }
        fn bad(var: &'static str, message: impl Into<String>) -> ConfigError {
            ConfigError::Env {
                var,
                message: message.into(),
            }
        }
        if let Some(v) = get(env, "WAYMARK_LISTEN") {
            self.listen = v
                .parse()
                .map_err(|e| bad("WAYMARK_LISTEN", format!("{v:?}: {e}")))?;
        }
        if let Some(v) = get(env, "WAYMARK_CLICKHOUSE_URL") {
            self.clickhouse.url = v.into();
        }
        if let Some(v) = get(env, "WAYMARK_CLICKHOUSE_DATABASE") {
            self.clickhouse.database = v.into();
        }
        if let Some(v) = get(env, "WAYMARK_CLICKHOUSE_USER") {
            self.clickhouse.user = v.into();
        }
        if let Some(v) = get(env, "WAYMARK_CLICKHOUSE_PASSWORD") {
            self.clickhouse.password = v.into();
        }
        if let Some(v) = get(env, "WAYMARK_CLICKHOUSE_CLUSTER") {
            self.clickhouse.cluster = (!v.is_empty()).then(|| v.into());
        }
        if let Some(v) = get(env, "WAYMARK_CLICKHOUSE_COMPRESSION") {
            self.clickhouse.compression = super::Compression::parse(v)
                .map_err(|e| bad("WAYMARK_CLICKHOUSE_COMPRESSION", e))?;
        }
        if let Some(v) = get(env, "WAYMARK_SPOOL_DIR") {
            self.spool.dir = v.into();
        }
        if let Some(v) = get(env, "WAYMARK_SPOOL_MAX_BYTES") {
            self.spool.max_bytes =
                ByteSize::parse(v).map_err(|e| bad("WAYMARK_SPOOL_MAX_BYTES", e))?;
        }
        if let Some(v) = get(env, "WAYMARK_WRITER_MAX_ROWS") {
            self.writer.max_rows = v
                .parse()
                .map_err(|e| bad("WAYMARK_WRITER_MAX_ROWS", format!("{v:?}: {e}")))?;
        }
        if let Some(v) = get(env, "WAYMARK_WRITER_MAX_BYTES") {
            self.writer.max_bytes =
                ByteSize::parse(v).map_err(|e| bad("WAYMARK_WRITER_MAX_BYTES", e))?;
        }
        if let Some(v) = get(env, "WAYMARK_WRITER_MAX_AGE") {
            self.writer.max_age =
                HumanDuration::parse(v).map_err(|e| bad("WAYMARK_WRITER_MAX_AGE", e))?;
        }
        if let Some(v) = get(env, "WAYMARK_WRITER_MAX_BACKOFF") {
            self.writer.max_backoff =
                HumanDuration::parse(v).map_err(|e| bad("WAYMARK_WRITER_MAX_BACKOFF", e))?;
        }
        if let Some(v) = get(env, "WAYMARK_WRITER_MAX_ATTEMPTS") {
            self.writer.max_attempts = v
                .parse()
                .map_err(|e| bad("WAYMARK_WRITER_MAX_ATTEMPTS", format!("{v:?}: {e}")))?;
        }
        if let Some(v) = get(env, "WAYMARK_EDGE_SECRET") {
            match &mut self.edge {
                Some(edge) => edge.secret = Some(v.into()),
                None => {
                    self.edge = Some(EdgeConfig {
                        secret: Some(v.into()),
                        replay_window: default_replay_window(),
                        max_body: default_edge_max_body(),
                    })
                }
            }
        }
        Ok(())
    }
}
