//! The watch of an object by name the serving loop uses (the serving Secret and the
//! ValidatingWebhookConfiguration).

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

/// A stream yielding `()` whenever the object `name` changes (or the watch (re)starts).
/// Watch errors are logged (naming `kind` and `name`) and retried with backoff.
pub(crate) fn watch_by_name<K>(
    api: Api<K>,
    kind: &str,
    name: &str,
) -> futures::stream::BoxStream<'static, ()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let what = format!("{kind} {name}");
    watcher(api, config)
        .default_backoff()
        .filter_map(move |event| {
            let what = what.clone();
            async move {
                match event {
                    Ok(watcher::Event::Apply(_))
                    | Ok(watcher::Event::Delete(_))
                    | Ok(watcher::Event::InitDone) => Some(()),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(watched = %what, error = %e, "watch failed; retrying");
                        None
                    }
                }
            }
        })
        .boxed()
}
