//! The process's Kubernetes client, with a layer that counts every API request by verb and
//! response code (`apiguard_kube_requests_total`): how much an operator asks of the apiserver is
//! a figure platform teams watch (controller-runtime's `rest_client_requests_total`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{self, Method, Request, Response};
use kube::client::{Body, ClientBuilder};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tower::{Layer, Service};

use crate::admin::MetricSink;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `GET` (get or list), `WATCH`, `CREATE`, `APPLY` (server-side apply), `PATCH`, `UPDATE`,
    /// `DELETE`, or `OTHER`.
    pub verb: &'static str,
    /// HTTP status code, or `error` when no response came.
    pub code: String,
}

/// The counter family; clone it into the layer and the registry.
pub(crate) type RequestCounter = Family<RequestLabels, Counter>;

/// Registers `apiguard_kube_requests_total` and returns it.
pub fn register(mut sink: impl MetricSink) -> RequestCounter {
    let family = RequestCounter::default();
    sink.add(
        "apiguard_kube_requests",
        "Requests to the Kubernetes API by verb and response code",
        family.clone(),
    );
    family
}

/// The verb of one request, as the apiserver's audit log would name it (coarsely).
pub(crate) fn verb_of<B>(req: &Request<B>) -> &'static str {
    let query = req.uri().query().unwrap_or_default();
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let apply = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/apply-patch"));
    match *req.method() {
        Method::GET if watch => "WATCH",
        Method::GET => "GET",
        Method::POST => "CREATE",
        Method::PATCH if apply => "APPLY",
        Method::PATCH => "PATCH",
        Method::PUT => "UPDATE",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// A tower layer counting requests into a [`RequestCounter`].
#[derive(Clone)]
pub(crate) struct CountRequests(pub RequestCounter);

impl<S> Layer<S> for CountRequests {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            counter: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Counted<S> {
    inner: S,
    counter: RequestCounter,
}

impl<S, B> Service<Request<Body>> for Counted<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let verb = verb_of(&req);
        let counter = self.counter.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            let code = match &res {
                Ok(r) => r.status().as_u16().to_string(),
                Err(_) => "error".to_string(),
            };
            counter.get_or_create(&RequestLabels { verb, code }).inc();
            res
        })
    }
}

/// The client of `apiguard run`: in-cluster service account or KUBECONFIG, counted.
pub(crate) async fn counted_client(counter: RequestCounter) -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&CountRequests(counter))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn req(method: Method, uri: &str, content_type: Option<&str>) -> Request<Body> {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            b = b.header(http::header::CONTENT_TYPE, ct);
        }
        b.body(Body::empty()).unwrap()
    }

    #[test]
    fn verbs_are_named_like_the_apiserver_names_them() {
        let cases = [
            (Method::GET, "/api/v1/namespaces/a/pods/x", None, "GET"),
            (Method::GET, "/api/v1/pods?labelSelector=a%3Db", None, "GET"),
            (
                Method::GET,
                "/api/v1/pods?resourceVersion=1&watch=true",
                None,
                "WATCH",
            ),
            (Method::POST, "/api/v1/namespaces/a/secrets", None, "CREATE"),
            (
                Method::PATCH,
                "/x?fieldManager=apiguard&force=true",
                Some("application/apply-patch+yaml"),
                "APPLY",
            ),
            (
                Method::PATCH,
                "/x",
                Some("application/merge-patch+json"),
                "PATCH",
            ),
            (Method::PUT, "/x", None, "UPDATE"),
            (Method::DELETE, "/x", None, "DELETE"),
            (Method::OPTIONS, "/x", None, "OTHER"),
        ];
        for (m, uri, ct, want) in cases {
            assert_eq!(verb_of(&req(m.clone(), uri, ct)), want, "{m} {uri}");
        }
    }

    #[tokio::test]
    async fn every_response_is_counted_by_verb_and_code() {
        let counter = RequestCounter::default();
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let svc = CountRequests(counter.clone()).layer(mock);
        let server = tokio::spawn(async move {
            for code in [200u16, 404] {
                let (_, send) = handle.next_request().await.unwrap();
                send.send_response(
                    Response::builder()
                        .status(code)
                        .body(Body::empty())
                        .unwrap(),
                );
            }
        });
        svc.clone()
            .oneshot(req(Method::GET, "/a", None))
            .await
            .unwrap();
        svc.oneshot(req(Method::GET, "/b", None)).await.unwrap();
        server.await.unwrap();
        let get = |code: &str| {
            counter
                .get_or_create(&RequestLabels {
                    verb: "GET",
                    code: code.into(),
                })
                .get()
        };
        assert_eq!((get("200"), get("404"), get("500")), (1, 1, 0));
    }
}
