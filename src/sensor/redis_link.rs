//! The sensor's link to the shared state store (`--redis-url`): the handle the rate limit
//! service (and detection) share, or none without a URL.
//!
//! A Redis that is down when the sensor starts does not stop it: the store connects in the
//! background and, until then, every operation fails as unavailable (global rate limits fail
//! open). A URL that does not parse, or a password variable that is set but empty, is an error
//! naming the flag.

use super::SensorArgs;
use crate::shared_state::{Password, RedisConfig, SharedState};
use anyhow::Context;

/// The environment variable holding the Redis password (from a Secret); it replaces one in
/// the URL.
pub const REDIS_PASSWORD_ENV: &str = "APIGUARD_REDIS_PASSWORD";

/// The environment variable of `--redis-ca-file` (the operator sets it in the sidecar).
pub const REDIS_CA_FILE_ENV: &str = "APIGUARD_REDIS_CA_FILE";
/// The environment variables of `--redis-client-cert-file` and `--redis-client-key-file`.
pub const REDIS_CLIENT_CERT_ENV: &str = "APIGUARD_REDIS_CLIENT_CERT_FILE";
/// See [`REDIS_CLIENT_CERT_ENV`].
pub const REDIS_CLIENT_KEY_ENV: &str = "APIGUARD_REDIS_CLIENT_KEY_FILE";

/// The store `args` name, connecting in the background; None without `--redis-url`.
pub(crate) async fn connect(args: &SensorArgs) -> anyhow::Result<Option<SharedState>> {
    let Some(config) = redis_config(args.redis_url.as_deref(), password_from_env()?)? else {
        anyhow::ensure!(
            args.redis_ca_file.is_none() && args.redis_client_cert_file.is_none(),
            "--redis-ca-file or --redis-client-cert-file is set without --redis-url"
        );
        return Ok(None);
    };
    let config = match &args.redis_ca_file {
        Some(path) => config
            .with_ca_file(path)
            .with_context(|| format!("--redis-ca-file ({REDIS_CA_FILE_ENV})"))?,
        None => config,
    };
    let config = match (&args.redis_client_cert_file, &args.redis_client_key_file) {
        (Some(cert), Some(key)) => config.with_client_cert_files(cert, key).with_context(|| {
            format!(
                "--redis-client-cert-file / --redis-client-key-file \
                     ({REDIS_CLIENT_CERT_ENV} / {REDIS_CLIENT_KEY_ENV})"
            )
        })?,
        _ => config,
    };
    tracing::info!(redis = %config, "global rate limits and shared state through Redis");
    Ok(Some(SharedState::connect_in_background(config)))
}

/// The config of `url` with `password` (None without a URL); an error names the flag.
pub(crate) fn redis_config(
    url: Option<&str>,
    password: Option<Password>,
) -> anyhow::Result<Option<RedisConfig>> {
    let Some(url) = url.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let config = RedisConfig::parse(url).context("--redis-url (APIGUARD_REDIS_URL)")?;
    Ok(Some(match password {
        Some(p) => config.with_password(p),
        None => config,
    }))
}

/// The password in [`REDIS_PASSWORD_ENV`], when set.
fn password_from_env() -> anyhow::Result<Option<Password>> {
    if std::env::var_os(REDIS_PASSWORD_ENV).is_none() {
        return Ok(None);
    }
    Password::from_env(REDIS_PASSWORD_ENV)
        .map(Some)
        .with_context(|| format!("the Redis password ({REDIS_PASSWORD_ENV})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_url_is_no_store() {
        assert!(redis_config(None, None).unwrap().is_none());
        assert!(redis_config(Some(""), None).unwrap().is_none());
    }

    #[test]
    fn a_bad_url_names_the_flag_and_hides_the_password() {
        let err = redis_config(Some("http://:hunter2@redis:6379"), None).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.starts_with("--redis-url (APIGUARD_REDIS_URL): "),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn the_password_replaces_the_urls() {
        let config = redis_config(
            Some("redis://:inurl@127.0.0.1:6390"),
            Some(Password::new("fromsecret")),
        )
        .unwrap()
        .unwrap();
        assert_eq!(config.password().unwrap().expose(), "fromsecret");
        assert!(!config.to_string().contains("fromsecret"));
    }

    #[tokio::test]
    async fn a_redis_that_is_down_does_not_stop_the_start() {
        // Nothing listens on port 1: the store is returned, unconnected, and fails fast.
        let config = redis_config(Some("redis://127.0.0.1:1"), None)
            .unwrap()
            .unwrap();
        let store = SharedState::connect_in_background(config);
        assert!(!store.connected());
        let key = crate::shared_state::Key::new("a/b", "rl:x:y").unwrap();
        let err = store.hit(&key, 60, 1).await.unwrap_err();
        assert!(
            matches!(err, crate::shared_state::Error::Unavailable(_)),
            "{err:?}"
        );
    }
}
