//! The sensor's pipeline driven through its ext_proc translation with Envoy's own messages:
//! table tests of each decision, and properties (no message sequence, body or byte string
//! makes it panic).

use super::ext_proc::{ExchangeStream, Handled};
use super::load::compile;
use super::pipeline::{
    Action, Event, Exchange, Pipeline, Reply, RequestVerdict, ResponseVerdict, Stage,
};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, Metadata};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Message;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Answer;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, HttpTrailers, ProcessingRequest, ProcessingResponse,
    ProtocolConfiguration, body_mutation,
};
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::sync::Arc;

/// The users API: `readOnly` id and role, `writeOnly` password (shared with
/// `tests/offline/sensor_envoy.rs`).
const USERS: &str = include_str!("testdata/users.yaml");

/// A sensor.yaml for the users API with `extra` lines under `openapi:` and a policy `mode`.
fn sensor_yaml(mode: &str, openapi: &str) -> String {
    let document = serde_json::to_string(USERS).unwrap();
    format!(
        "apiVersion: apiguard.dev/v1alpha1\nkind: SensorConfig\npolicy: {{namespace: shop, name: users}}\nmode: {mode}\nopenapi:\n  document: {document}\n{openapi}"
    )
}

fn pipeline(mode: &str, openapi: &str) -> Arc<Pipeline> {
    Arc::new(compile("sensor.yaml", &sensor_yaml(mode, openapi)).unwrap())
}

fn enforce_redact() -> Arc<Pipeline> {
    pipeline("Enforce", "  requests: Enforce\n  responses: Redact\n")
}

fn header_map(pairs: &[(&str, &str)]) -> Option<HeaderMap> {
    Some(HeaderMap {
        headers: pairs
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_string(),
                raw_value: v.as_bytes().to_vec(),
                ..HeaderValue::default()
            })
            .collect(),
    })
}

fn buffered() -> Option<ProtocolConfiguration> {
    Some(ProtocolConfiguration {
        request_body_mode: BodySendMode::Buffered as i32,
        response_body_mode: BodySendMode::Buffered as i32,
        send_body_without_waiting_for_header_response: false,
    })
}

fn request_headers(
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    eos: bool,
) -> ProcessingRequest {
    let mut pairs = vec![(":method", method), (":path", path), (":authority", "api")];
    pairs.extend_from_slice(extra);
    ProcessingRequest {
        protocol_config: buffered(),
        request: Some(Message::RequestHeaders(HttpHeaders {
            headers: header_map(&pairs),
            end_of_stream: eos,
            ..HttpHeaders::default()
        })),
        ..ProcessingRequest::default()
    }
}

fn body(message: fn(HttpBody) -> Message, bytes: &[u8]) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(message(HttpBody {
            body: bytes.to_vec(),
            end_of_stream: true,
            ..HttpBody::default()
        })),
        ..ProcessingRequest::default()
    }
}

fn response_headers(status: &str, content_type: &str) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Message::ResponseHeaders(HttpHeaders {
            headers: header_map(&[(":status", status), ("content-type", content_type)]),
            end_of_stream: false,
            ..HttpHeaders::default()
        })),
        ..ProcessingRequest::default()
    }
}

fn answer(handled: &Handled) -> &Answer {
    handled
        .answer
        .as_ref()
        .and_then(|a| a.response.as_ref())
        .expect("an answer")
}

fn is_continue(handled: &Handled) -> bool {
    match answer(handled) {
        Answer::RequestHeaders(h) | Answer::ResponseHeaders(h) => h.response.is_none(),
        Answer::RequestBody(b) | Answer::ResponseBody(b) => b.response.is_none(),
        _ => false,
    }
}

/// The immediate response's status, content type and JSON body.
fn immediate(handled: &Handled) -> (i32, String, Value) {
    let Answer::ImmediateResponse(r) = answer(handled) else {
        panic!("not an immediate response: {:?}", handled.answer);
    };
    let headers = r.headers.as_ref().unwrap();
    let ct = headers
        .set_headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "content-type")
        .map(|h| String::from_utf8(h.raw_value.clone()).unwrap())
        .unwrap();
    let text = String::from_utf8(r.body.clone()).unwrap();
    (
        r.status.unwrap().code,
        ct,
        serde_json::from_str(&text).unwrap(),
    )
}

fn request_verdicts(events: &[Event]) -> Vec<RequestVerdict> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Request { verdict, .. } => Some(*verdict),
            _ => None,
        })
        .collect()
}

fn response_verdict(handled: &Handled) -> ResponseVerdict {
    handled
        .events
        .iter()
        .find_map(|e| match e {
            Event::Response { verdict, .. } => Some(*verdict),
            _ => None,
        })
        .expect("a response event")
}

const JSON: (&str, &str) = ("content-type", "application/json");

/// Sends a PATCH /users/7 with `body` and `content_type`; returns the body message's handling.
fn patch(stream: &mut ExchangeStream, content_type: &str, body_bytes: &[u8]) -> Handled {
    let headers = stream.handle(request_headers(
        "PATCH",
        "/users/7",
        &[("content-type", content_type)],
        false,
    ));
    assert!(is_continue(&headers), "headers wait for the body");
    assert!(headers.events.is_empty());
    stream.handle(body(Message::RequestBody, body_bytes))
}

#[test]
fn a_valid_patch_continues() {
    let mut stream = ExchangeStream::new(enforce_redact());
    let handled = patch(&mut stream, "application/json", br#"{"name":"Ann"}"#);
    assert!(is_continue(&handled), "{:?}", handled.answer);
    assert_eq!(request_verdicts(&handled.events), [RequestVerdict::Allowed]);
}

#[test]
fn mass_assignment_is_refused_with_a_problem_that_echoes_nothing() {
    let mut stream = ExchangeStream::new(enforce_redact());
    let handled = patch(&mut stream, "application/json", br#"{"role":"admin"}"#);
    let (status, ct, problem) = immediate(&handled);
    assert_eq!((status, ct.as_str()), (400, "application/problem+json"));
    assert_eq!(
        problem["errors"],
        json!([{"location": "body/role", "reason": "readOnly"}])
    );
    assert!(!problem.to_string().contains("admin"), "{problem}");
    assert_eq!(request_verdicts(&handled.events), [RequestVerdict::Refused]);
}

#[test]
fn a_wrong_content_type_is_415() {
    let mut stream = ExchangeStream::new(enforce_redact());
    let handled = patch(&mut stream, "text/plain", b"name=Ann");
    let (status, ct, problem) = immediate(&handled);
    assert_eq!((status, ct.as_str()), (415, "application/problem+json"));
    assert_eq!(problem["errors"][0]["location"], "header/content-type");
}

#[test]
fn audit_lets_the_would_be_refusal_through_and_reports_it() {
    for (mode, openapi) in [
        ("Enforce", "  requests: Audit\n"),
        ("Audit", "  requests: Enforce\n"),
    ] {
        let mut stream = ExchangeStream::new(pipeline(mode, openapi));
        let handled = patch(&mut stream, "application/json", br#"{"role":"admin"}"#);
        assert!(is_continue(&handled), "{mode} {openapi}");
        let Some(Event::Request {
            verdict, errors, ..
        }) = handled.events.first()
        else {
            panic!("no event");
        };
        assert_eq!(*verdict, RequestVerdict::Audited);
        assert_eq!(errors[0].location, "body/role");
    }
}

#[test]
fn requests_off_checks_nothing_but_still_finds_the_operation() {
    let mut stream = ExchangeStream::new(pipeline(
        "Enforce",
        "  requests: Off\n  responses: Redact\n",
    ));
    let handled = patch(&mut stream, "text/plain", b"anything");
    assert!(is_continue(&handled));
    assert_eq!(
        request_verdicts(&handled.events),
        [RequestVerdict::Unchecked]
    );
    stream.handle(response_headers("200", "application/json"));
    let handled = stream.handle(body(
        Message::ResponseBody,
        br#"{"name":"a","passwordHash":"x"}"#,
    ));
    assert_eq!(response_verdict(&handled), ResponseVerdict::Redacted);
}

/// Sends a GET /users/7 (headers only) and a 200 JSON response with `response`.
fn get_with_response(stream: &mut ExchangeStream, response: &[u8]) -> Handled {
    let handled = stream.handle(request_headers("GET", "/users/7", &[], true));
    assert!(is_continue(&handled));
    assert_eq!(request_verdicts(&handled.events), [RequestVerdict::Allowed]);
    let handled = stream.handle(response_headers("200", "application/json"));
    assert!(is_continue(&handled));
    stream.handle(body(Message::ResponseBody, response))
}

const LEAKY: &[u8] = br#"{"id":"7","name":"Ann","password":"pw","passwordHash":"$2b$10$abc"}"#;

#[test]
fn redact_replaces_the_body_and_its_content_length() {
    let mut stream = ExchangeStream::new(enforce_redact());
    let handled = get_with_response(&mut stream, LEAKY);
    let Answer::ResponseBody(response) = answer(&handled) else {
        panic!("{:?}", handled.answer);
    };
    let common = response.response.as_ref().unwrap();
    let Some(body_mutation::Mutation::Body(new)) = common
        .body_mutation
        .as_ref()
        .and_then(|m| m.mutation.clone())
    else {
        panic!("no body mutation");
    };
    let value: Value = serde_json::from_slice(&new).unwrap();
    assert_eq!(value, json!({"id": "7", "name": "Ann"}));
    let length = common.header_mutation.as_ref().unwrap().set_headers[0]
        .header
        .clone()
        .unwrap();
    assert_eq!(length.key, "content-length");
    assert_eq!(length.raw_value, new.len().to_string().into_bytes());
    assert_eq!(response_verdict(&handled), ResponseVerdict::Redacted);
}

#[test]
fn responses_audit_reports_without_changing_the_body() {
    let mut stream = ExchangeStream::new(pipeline("Enforce", "  responses: Audit\n"));
    let handled = get_with_response(&mut stream, LEAKY);
    assert!(is_continue(&handled));
    let Some(Event::Response {
        verdict, removed, ..
    }) = handled.events.first()
    else {
        panic!("{:?}", handled.events);
    };
    assert_eq!(*verdict, ResponseVerdict::WouldRedact);
    let locations: Vec<&str> = removed.iter().map(|e| e.location.as_str()).collect();
    assert_eq!(locations, ["body/password", "body/passwordHash"]);
}

#[test]
fn a_response_larger_than_max_response_bytes_passes_unchecked() {
    let mut stream = ExchangeStream::new(pipeline(
        "Enforce",
        "  responses: Redact\n  maxResponseBytes: 16\n",
    ));
    let handled = get_with_response(&mut stream, LEAKY);
    assert!(is_continue(&handled));
    assert_eq!(response_verdict(&handled), ResponseVerdict::TooLarge);
}

#[test]
fn a_request_without_a_body_is_checked_at_its_headers() {
    let mut stream = ExchangeStream::new(enforce_redact());
    // A PATCH whose headers end the stream: no body message will come, so the check runs
    // now (the body is required and has no content type: 415).
    let handled = stream.handle(request_headers("PATCH", "/users/7", &[], true));
    let (status, _, problem) = immediate(&handled);
    assert_eq!(status, 415);
    assert_eq!(problem["errors"][0]["location"], "header/content-type");
    // A GET: only headers, allowed.
    let handled = stream.handle(request_headers("GET", "/users/7?x=1", &[], true));
    assert!(is_continue(&handled));
    assert_eq!(request_verdicts(&handled.events), [RequestVerdict::Allowed]);
}

#[test]
fn an_undeclared_operation_is_refused_with_a_404_that_echoes_nothing() {
    let mut stream = ExchangeStream::new(enforce_redact());
    let handled = stream.handle(request_headers("DELETE", "/admin/secret-42", &[], true));
    let (status, content_type, problem) = immediate(&handled);
    assert_eq!(status, 404);
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(
        problem["type"],
        "https://apiguard.dev/problems/undeclared-operation"
    );
    assert_eq!(
        problem["title"],
        "Operation not declared by the API contract"
    );
    assert_eq!(problem["status"], 404);
    assert_eq!(
        problem["errors"],
        json!([{"location": "operation", "reason": "undeclared"}])
    );
    let text = problem.to_string();
    assert!(
        !text.contains("secret-42") && !text.contains("DELETE"),
        "{text}"
    );
    assert_eq!(
        request_verdicts(&handled.events),
        [RequestVerdict::UndeclaredRefused]
    );
    assert_eq!(
        RequestVerdict::UndeclaredRefused.label(),
        "undeclared_refused"
    );
    // A body-carrying request is refused once its body arrived (before the body: nothing).
    let mut stream = ExchangeStream::new(enforce_redact());
    let handled = stream.handle(request_headers(
        "POST",
        "/users/7",
        &[("content-type", "application/json")],
        false,
    ));
    assert!(is_continue(&handled));
    let handled = stream.handle(body(Message::RequestBody, b"{}"));
    assert_eq!(immediate(&handled).0, 404);
}

#[test]
fn an_undeclared_operation_is_let_through_and_reported_in_audit() {
    for (mode, openapi) in [
        ("Audit", "  requests: Enforce\n  responses: Redact\n"),
        ("Enforce", "  requests: Audit\n  responses: Redact\n"),
    ] {
        let mut stream = ExchangeStream::new(pipeline(mode, openapi));
        let handled = stream.handle(request_headers("DELETE", "/admin", &[], true));
        assert!(is_continue(&handled), "{mode} {openapi}");
        assert_eq!(
            request_verdicts(&handled.events),
            [RequestVerdict::UndeclaredAudited]
        );
        let Event::Request { errors, .. } = &handled.events[0] else {
            panic!("a request event");
        };
        assert_eq!(errors[0].location, "operation");
        assert_eq!(
            RequestVerdict::UndeclaredAudited.label(),
            "undeclared_audited"
        );
    }
}

#[test]
fn an_undeclared_operation_passes_when_reject_undeclared_is_false_or_requests_are_off() {
    for openapi in [
        "  requests: Enforce\n  responses: Redact\n  rejectUndeclared: false\n",
        "  requests: Off\n  responses: Redact\n",
    ] {
        let mut stream = ExchangeStream::new(pipeline("Enforce", openapi));
        let handled = stream.handle(request_headers("DELETE", "/admin", &[], true));
        assert!(is_continue(&handled), "{openapi}");
        assert_eq!(
            request_verdicts(&handled.events),
            [RequestVerdict::Undeclared]
        );
        stream.handle(response_headers("200", "application/json"));
        let handled = stream.handle(body(Message::ResponseBody, LEAKY));
        assert!(is_continue(&handled));
        assert!(handled.events.is_empty(), "no contract for the response");
    }
}

#[test]
fn a_policy_without_a_contract_lets_everything_through() {
    let text =
        "apiVersion: apiguard.dev/v1alpha1\nkind: SensorConfig\npolicy: {namespace: a, name: b}\n";
    let mut stream = ExchangeStream::new(Arc::new(compile("f", text).unwrap()));
    let handled = patch(&mut stream, "text/plain", b"x");
    assert!(is_continue(&handled));
    assert!(handled.events.is_empty());
}

#[test]
fn a_contract_that_does_not_compile_names_the_file_and_pointer() {
    let text = "apiVersion: apiguard.dev/v1alpha1\nkind: SensorConfig\npolicy: {namespace: a, name: b}\nopenapi:\n  document: '{\"openapi\": \"3.1.0\", \"paths\": []}'\n";
    let err = compile("/etc/apiguard/sensor.yaml", text)
        .err()
        .unwrap()
        .to_string();
    assert!(err.starts_with("/etc/apiguard/sensor.yaml: "), "{err}");
    assert!(err.contains("/paths"), "{err}");
}

#[test]
fn attributes_and_jwt_metadata_become_the_principal() {
    fn string(s: &str) -> PbValue {
        PbValue {
            kind: Some(Kind::StringValue(s.to_string())),
        }
    }
    let mut message = request_headers(
        "GET",
        "/users/7",
        &[("x-apiguard-client-id", "billing")],
        true,
    );
    let attributes = Struct {
        fields: [
            ("source.address", string("10.0.0.9:3456")),
            (
                "connection.uri_san_peer_certificate",
                string("spiffe://td/ns/a/sa/b"),
            ),
            ("xds.route_name", string("users")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    };
    message
        .attributes
        .insert("envoy.filters.http.ext_proc".into(), attributes);
    let payload = Struct {
        fields: [("sub".to_string(), string("alice"))].into_iter().collect(),
    };
    let jwt = Struct {
        fields: [(
            "payload".to_string(),
            PbValue {
                kind: Some(Kind::StructValue(payload)),
            },
        )]
        .into_iter()
        .collect(),
    };
    let mut metadata = Metadata::default();
    metadata
        .filter_metadata
        .insert("envoy.filters.http.jwt_authn".into(), jwt);
    message.metadata_context = Some(metadata);

    /// A stage that records the exchange's request context.
    struct Spy(std::sync::Mutex<Option<super::context::RequestContext>>);
    impl Stage for Spy {
        fn request_headers(&self, exchange: &mut Exchange, _: &mut Vec<Event>) -> Action {
            *self.0.lock().unwrap() = Some(exchange.request.clone());
            Action::Continue
        }
    }
    let spy = Arc::new(Spy(Default::default()));
    struct Shared(Arc<Spy>);
    impl Stage for Shared {
        fn request_headers(&self, exchange: &mut Exchange, events: &mut Vec<Event>) -> Action {
            self.0.request_headers(exchange, events)
        }
    }
    let pipeline = Pipeline {
        policy: "a/b".into(),
        discovery: None,
        runtime: None,
        stages: vec![Box::new(Shared(spy.clone()))],
        max_request_bytes: 1024,
        max_response_bytes: 1024,
        global_rate_limits: Default::default(),
    };
    let mut stream = ExchangeStream::new(Arc::new(pipeline));
    stream.handle(message);
    let context = spy.0.lock().unwrap().clone().unwrap();
    assert_eq!(context.client_ip.as_deref(), Some("10.0.0.9"));
    assert_eq!(context.route.as_deref(), Some("users"));
    assert_eq!(context.principal.subject.as_deref(), Some("alice"));
    assert_eq!(context.principal.client_id.as_deref(), Some("billing"));
    assert_eq!(
        context.principal.peer_uri_san.as_deref(),
        Some("spiffe://td/ns/a/sa/b")
    );
}

/// A later stage is one more entry in the list: here a block list by client IP, after the
/// contract stage, answering 403 before the contract's 400 could matter.
#[test]
fn a_later_stage_is_added_without_touching_the_others() {
    struct BlockIp;
    impl Stage for BlockIp {
        fn request_headers(&self, exchange: &mut Exchange, _: &mut Vec<Event>) -> Action {
            if exchange.request.header("x-test-blocked").is_some() {
                return Action::Respond(Reply {
                    status: 403,
                    content_type: "application/problem+json",
                    body: b"{}".to_vec(),
                    details: "blocked",
                    headers: Vec::new(),
                });
            }
            Action::Continue
        }
    }
    let mut pipeline = compile("f", &sensor_yaml("Enforce", "")).unwrap();
    pipeline.stages.push(Box::new(BlockIp));
    let mut stream = ExchangeStream::new(Arc::new(pipeline));
    let handled = stream.handle(request_headers(
        "PATCH",
        "/users/7",
        &[JSON, ("x-test-blocked", "1")],
        false,
    ));
    assert_eq!(immediate(&handled).0, 403);
}

#[test]
fn trailers_and_observability_mode_are_answered_as_envoy_expects() {
    let mut stream = ExchangeStream::new(enforce_redact());
    stream.handle(request_headers("PATCH", "/users/7", &[JSON], false));
    let chunk = ProcessingRequest {
        request: Some(Message::RequestBody(HttpBody {
            body: br#"{"role":"admin"}"#.to_vec(),
            end_of_stream: false,
            ..HttpBody::default()
        })),
        ..ProcessingRequest::default()
    };
    assert!(is_continue(&stream.handle(chunk)));
    let trailers = ProcessingRequest {
        request: Some(Message::RequestTrailers(HttpTrailers::default())),
        ..ProcessingRequest::default()
    };
    assert_eq!(
        immediate(&stream.handle(trailers)).0,
        400,
        "checked at the trailers"
    );

    let mut observed = request_headers("GET", "/users/7", &[], true);
    observed.observability_mode = true;
    let handled = ExchangeStream::new(enforce_redact()).handle(observed);
    assert!(
        handled.answer.is_none(),
        "observability mode expects no answer"
    );
    assert_eq!(request_verdicts(&handled.events), [RequestVerdict::Allowed]);
}

// ---------------------------------------------------------------- a body that follows its headers

/// Envoy's `STREAMED` request body with `send_body_without_waiting_for_header_response`: the
/// body comes right behind the headers, whose answer the sensor holds until the body is checked.
fn streamed_headers(method: &str, path: &str, extra: &[(&str, &str)]) -> ProcessingRequest {
    let mut message = request_headers(method, path, extra, false);
    message.protocol_config = Some(ProtocolConfiguration {
        request_body_mode: BodySendMode::Streamed as i32,
        response_body_mode: BodySendMode::None as i32,
        send_body_without_waiting_for_header_response: true,
    });
    message
}

fn chunk(bytes: &[u8], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Message::RequestBody(HttpBody {
            body: bytes.to_vec(),
            end_of_stream,
            ..HttpBody::default()
        })),
        ..ProcessingRequest::default()
    }
}

/// What each answer is, in order: `headers`, `body` (both "continue"), or the immediate status.
fn kinds(handled: Handled) -> Vec<String> {
    handled
        .answers()
        .map(|a| match a.response {
            Some(Answer::RequestHeaders(h)) if h.response.is_none() => "headers".to_string(),
            Some(Answer::RequestBody(b)) if b.response.is_none() => "body".to_string(),
            Some(Answer::ImmediateResponse(r)) => r.status.unwrap().code.to_string(),
            other => format!("{other:?}"),
        })
        .collect()
}

/// Sends `body` in the given chunks behind streamed headers; returns the answers to each
/// message, in order.
fn streamed_patch(pipeline: Arc<Pipeline>, chunks: &[&[u8]]) -> Vec<Vec<String>> {
    let mut stream = ExchangeStream::new(pipeline);
    let mut answers = vec![kinds(stream.handle(streamed_headers(
        "PATCH",
        "/users/7",
        &[JSON],
    )))];
    for (i, bytes) in chunks.iter().enumerate() {
        answers.push(kinds(stream.handle(chunk(bytes, i + 1 == chunks.len()))));
    }
    answers
}

#[test]
fn a_streamed_body_releases_the_held_answers_once_it_is_checked() {
    let none: Vec<String> = Vec::new();
    assert_eq!(
        streamed_patch(enforce_redact(), &[br#"{"name":"#, br#""Ann"}"#]),
        [
            none.clone(),
            none.clone(),
            vec!["headers".into(), "body".into(), "body".into()]
        ],
        "nothing is answered before the body is checked; then every message, in order"
    );
    assert_eq!(
        streamed_patch(enforce_redact(), &[br#"{"role":"#, br#""admin"}"#]),
        [none.clone(), none.clone(), vec!["400".to_string()]],
        "a refused body is one immediate response: the held headers never continue"
    );
    let audit = pipeline("Audit", "  requests: Enforce\n");
    assert_eq!(
        streamed_patch(audit, &[br#"{"role":"admin"}"#]),
        [none, vec!["headers".to_string(), "body".to_string()]],
        "Audit lets the would-be refusal through"
    );
}

#[test]
fn an_undeclared_operation_with_a_body_never_continues_and_a_bodiless_request_is_not_held() {
    let mut stream = ExchangeStream::new(enforce_redact());
    let handled = stream.handle(streamed_headers("DELETE", "/admin/secret-42", &[JSON]));
    assert_eq!(kinds(handled), Vec::<String>::new());
    assert_eq!(kinds(stream.handle(chunk(b"{}", true))), ["404"]);
    // A request that ends at its headers is answered at once.
    let mut stream = ExchangeStream::new(enforce_redact());
    let mut headers = streamed_headers("GET", "/users/7", &[]);
    if let Some(Message::RequestHeaders(h)) = headers.request.as_mut() {
        h.end_of_stream = true;
    }
    assert_eq!(kinds(stream.handle(headers)), ["headers"]);
}

#[test]
fn the_content_length_ends_a_body_that_trailers_follow() {
    // Envoy sends a body that trailers follow without end_of_stream; its content-length
    // (the gateway's buffer filter sets one) says it is complete, so it is checked then, in
    // either body mode, instead of passing unchecked.
    let body = br#"{"role":"admin"}"#;
    let length = body.len().to_string();
    let headers = [JSON, ("content-length", length.as_str())];
    for streamed in [true, false] {
        let mut stream = ExchangeStream::new(enforce_redact());
        let first = if streamed {
            streamed_headers("PATCH", "/users/7", &headers)
        } else {
            request_headers("PATCH", "/users/7", &headers, false)
        };
        stream.handle(first);
        let handled = stream.handle(chunk(body, false));
        assert_eq!(kinds(handled), ["400"], "streamed: {streamed}");
    }
    // A valid body of that length is let through with the held answers.
    let valid = br#"{"name":"Ann45"}"#;
    assert_eq!(valid.len(), body.len());
    let mut stream = ExchangeStream::new(enforce_redact());
    stream.handle(streamed_headers("PATCH", "/users/7", &headers));
    assert_eq!(
        kinds(stream.handle(chunk(valid, false))),
        ["headers", "body"]
    );
}

// ---------------------------------------------------------------- properties

fn answers_each(message: &ProcessingRequest, handled: &Handled) -> bool {
    message.request.is_none() || message.observability_mode || handled.answer.is_some()
}

fn arb_message() -> impl Strategy<Value = ProcessingRequest> {
    let pairs = prop::collection::vec((":?[a-z-]{1,12}", ".{0,16}"), 0..6);
    (
        0u8..8,
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..64),
        pairs,
    )
        .prop_map(|(kind, eos, bytes, pairs)| {
            let headers = Some(HeaderMap {
                headers: pairs
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: k.clone(),
                        value: v.clone(),
                        ..HeaderValue::default()
                    })
                    .collect(),
            });
            let http_headers = HttpHeaders {
                headers,
                end_of_stream: eos,
                ..HttpHeaders::default()
            };
            let http_body = HttpBody {
                body: bytes,
                end_of_stream: eos,
                ..HttpBody::default()
            };
            let request = match kind {
                0 => Some(Message::RequestHeaders(http_headers)),
                1 => Some(Message::RequestBody(http_body)),
                2 => Some(Message::ResponseHeaders(http_headers)),
                3 => Some(Message::ResponseBody(http_body)),
                4 => Some(Message::RequestTrailers(HttpTrailers::default())),
                5 => Some(Message::ResponseTrailers(HttpTrailers::default())),
                6 => None,
                _ => Some(Message::RequestHeaders(HttpHeaders {
                    headers: header_map(&[(":method", "PATCH"), (":path", "/users/1"), JSON]),
                    end_of_stream: eos,
                    ..HttpHeaders::default()
                })),
            };
            ProcessingRequest {
                request,
                ..ProcessingRequest::default()
            }
        })
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[a-z]{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("role".to_string()),
                    Just("name".to_string()),
                    "[a-z]{1,6}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn random_message_sequences_never_panic_and_get_answers(
        messages in prop::collection::vec(arb_message(), 0..12)
    ) {
        let mut stream = ExchangeStream::new(enforce_redact());
        for message in messages {
            let handled = stream.handle(message.clone());
            prop_assert!(answers_each(&message, &handled));
        }
    }

    #[test]
    fn a_streamed_body_gets_the_buffered_verdict_however_it_is_chunked(
        json in arb_json(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
    ) {
        let bytes = json.to_string().into_bytes();
        let mut stream = ExchangeStream::new(enforce_redact());
        let buffered = kinds(patch(&mut stream, "application/json", &bytes));
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        at.extend([0, bytes.len()]);
        at.sort_unstable();
        at.dedup();
        let chunks: Vec<&[u8]> = at.windows(2).map(|w| &bytes[w[0]..w[1]]).collect();
        let chunks = if chunks.is_empty() { vec![&bytes[..]] } else { chunks };
        let answers = streamed_patch(enforce_redact(), &chunks);
        let (last, before) = answers.split_last().unwrap();
        prop_assert!(before.iter().all(Vec::is_empty), "{:?}", answers);
        if buffered == ["body"] {
            let mut expected = vec!["headers".to_string()];
            expected.extend(chunks.iter().map(|_| "body".to_string()));
            prop_assert_eq!(last, &expected);
        } else {
            prop_assert_eq!(last, &buffered, "the same refusal");
        }
    }

    #[test]
    fn random_bytes_decoded_as_messages_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        use prost::Message as _;
        if let Ok(message) = ProcessingRequest::decode(bytes.as_slice()) {
            let mut stream = ExchangeStream::new(enforce_redact());
            let _ = stream.handle(message);
        }
        if let Ok(answer) = ProcessingResponse::decode(bytes.as_slice()) {
            let _ = answer;
        }
    }

    #[test]
    fn random_bodies_are_allowed_or_refused_with_a_problem(
        raw in prop::collection::vec(any::<u8>(), 0..128),
        json in arb_json(),
        use_json in any::<bool>(),
    ) {
        let bytes = if use_json { json.to_string().into_bytes() } else { raw };
        let mut stream = ExchangeStream::new(enforce_redact());
        let handled = patch(&mut stream, "application/json", &bytes);
        match answer(&handled) {
            Answer::RequestBody(_) => {}
            Answer::ImmediateResponse(r) => {
                prop_assert_eq!(r.status.unwrap().code, 400);
                let problem: Value = serde_json::from_slice(&r.body).unwrap();
                prop_assert!(problem["errors"].as_array().is_some_and(|e| !e.is_empty()));
            }
            other => prop_assert!(false, "unexpected answer {:?}", other),
        }
        // Responses too: any body, redacted or passed, never a panic.
        stream.handle(response_headers("200", "application/json"));
        let handled = stream.handle(body(Message::ResponseBody, &bytes));
        prop_assert!(handled.answer.is_some());
    }
}

// The sensitive-data stage (`discovery.sensitiveData`), through the ext_proc translation.

/// A sensor.yaml without a contract: discovery of `GET /users/{id}` with `sensitiveData`.
fn scanning(mode: &str) -> Arc<Pipeline> {
    let text = format!(
        "apiVersion: apiguard.dev/v1alpha1\nkind: SensorConfig\npolicy: {{namespace: shop, name: users}}\ndiscovery:\n  declared: [{{rule: read, methods: [GET], paths: ['/users/{{id}}']}}]\n  sensitiveData: {mode}\n"
    );
    Arc::new(compile("sensor.yaml", &text).unwrap())
}

const PII: &[u8] = br#"{"id":"7","email":"ann.example@example.org","card":"4111 1111 1111 1111"}"#;

/// Whether the answer asks Envoy to send no response body (a `mode_override`).
fn skips_the_body(handled: &Handled) -> bool {
    let mode = handled.answer.as_ref().and_then(|a| a.mode_override);
    if let Some(mode) = mode {
        assert_eq!(mode.response_body_mode, BodySendMode::None as i32);
    }
    mode.is_some()
}

/// One exchange `GET path` answered with `content_type` and `response`; the events of the
/// response body, and whether the sensor asked Envoy not to send it (the body is then handled
/// anyway, as when the filter does not allow the override: it must not be scanned).
fn scan_exchange_skips(
    pipeline: &Arc<Pipeline>,
    path: &str,
    content_type: &str,
    response: &[u8],
) -> (Vec<Event>, bool) {
    let mut stream = ExchangeStream::new(pipeline.clone());
    let handled = stream.handle(request_headers("GET", path, &[], true));
    assert!(is_continue(&handled));
    let handled = stream.handle(response_headers("200", content_type));
    assert!(is_continue(&handled));
    let skipped = skips_the_body(&handled);
    let handled = stream.handle(body(Message::ResponseBody, response));
    assert!(is_continue(&handled), "scanning never changes a response");
    if skipped {
        assert!(handled.events.is_empty(), "{:?}", handled.events);
    }
    (handled.events, skipped)
}

fn scan_exchange(
    pipeline: &Arc<Pipeline>,
    path: &str,
    content_type: &str,
    response: &[u8],
) -> Vec<Event> {
    scan_exchange_skips(pipeline, path, content_type, response).0
}

fn found(events: &[Event]) -> Vec<crate::discovery::Sensitive> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Sensitive { found, .. } => Some(*found),
            _ => None,
        })
        .collect()
}

#[test]
fn sampled_scans_the_first_of_every_ten_responses_of_each_endpoint() {
    let p = scanning("Sampled");
    let mut scanned_users = Vec::new();
    for i in 1..=25 {
        // One endpoint, many ids: GET /users/{id}.
        let (events, skipped) =
            scan_exchange_skips(&p, &format!("/users/{i}"), "application/json", PII);
        if !found(&events).is_empty() {
            scanned_users.push(i);
        }
        // The bodies not in the sample are not even sent.
        assert_eq!(skipped, found(&events).is_empty(), "/users/{i}");
        // Another endpoint, interleaved, keeps its own count.
        let events = scan_exchange(&p, "/orders", "application/json", PII);
        assert_eq!(
            found(&events).len(),
            usize::from(i % 10 == 1),
            "/orders response {i}"
        );
    }
    assert_eq!(scanned_users, [1, 11, 21]);
}

#[test]
fn all_scans_every_json_response_and_skips_other_types() {
    let p = scanning("All");
    for ct in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/problem+json",
        "application/vnd.api+json",
    ] {
        for _ in 0..3 {
            let events = scan_exchange(&p, "/users/1", ct, PII);
            let [sensitive] = found(&events)[..] else {
                panic!("{ct}: {events:?}");
            };
            let classes: Vec<_> = sensitive.classes().map(|(c, _)| c.as_str()).collect();
            assert_eq!(classes, ["email", "payment_card"], "{ct}");
        }
    }
    for ct in [
        "text/plain",
        "text/html",
        "application/octet-stream",
        "",
        "json",
    ] {
        let (events, skipped) = scan_exchange_skips(&p, "/users/1", ct, PII);
        assert!(events.is_empty(), "{ct}: {events:?}");
        assert!(
            skipped,
            "{ct}: Envoy need not send a body that is not scanned"
        );
    }
}

#[test]
fn a_body_larger_than_the_sensor_buffers_is_not_scanned() {
    let p = scanning("All");
    assert_eq!(p.max_response_bytes, 1_048_576, "the contract's default");
    let mut large = PII.to_vec();
    large.resize(p.max_response_bytes, b' ');
    assert_eq!(
        found(&scan_exchange(&p, "/users/1", "application/json", &large)).len(),
        1,
        "maxResponseBytes is scanned"
    );
    // One byte over: the edge buffers it (to know it is too large), the stage skips it; more:
    // the edge does not buffer it at all.
    for over in [1, 100] {
        large.resize(p.max_response_bytes + over, b' ');
        let events = scan_exchange(&p, "/users/1", "application/json", &large);
        assert!(events.is_empty(), "+{over}: {events:?}");
    }
}

#[test]
fn off_builds_no_stage_and_a_bad_mode_names_the_field() {
    assert!(scanning("Off").stages.is_empty());
    assert_eq!(scanning("Off").max_response_bytes, 0);
    let text = "apiVersion: apiguard.dev/v1alpha1\nkind: SensorConfig\npolicy: {namespace: shop, name: users}\ndiscovery:\n  sensitiveData: Sometimes\n";
    let Err(err) = compile("sensor.yaml", text) else {
        panic!("Sometimes is not a mode");
    };
    let err = err.to_string();
    assert!(
        err.contains("sensor.yaml") && err.contains("Sometimes"),
        "{err}"
    );
}

#[test]
fn the_scan_sees_the_body_the_client_receives() {
    // `contact` is not in the contract's User schema: Redact removes it, Audit leaves it.
    let leaky = br#"{"id":"7","name":"Ann","contact":"ann.example@example.org"}"#;
    for (responses, exposed) in [("Redact", false), ("Audit", true)] {
        let p = pipeline(
            "Enforce",
            &format!("  responses: {responses}\ndiscovery:\n  sensitiveData: All\n"),
        );
        let mut stream = ExchangeStream::new(p);
        let handled = get_with_response(&mut stream, leaky);
        let [sensitive] = found(&handled.events)[..] else {
            panic!("{responses}: {:?}", handled.events);
        };
        assert_eq!(
            sensitive.count(crate::discovery::SensitiveClass::Email),
            u32::from(exposed),
            "{responses}"
        );
    }
}

#[test]
fn scanned_classes_reach_the_inventory_without_counting_a_request_or_keeping_a_value() {
    use super::access_log::Logged;
    use super::learn::Learner;
    let p = scanning("All");
    let learner = Learner::default();
    let events = scan_exchange(&p, "/users/42", "application/json", PII);
    // A Luhn-invalid number is not a card.
    let events_bad = scan_exchange(
        &p,
        "/users/43",
        "application/json",
        br#"{"card":"4111 1111 1111 1112"}"#,
    );
    assert!(found(&events_bad)[0].is_empty(), "{events_bad:?}");
    let sensitive = |events: &[Event]| -> Vec<(String, String, crate::discovery::Sensitive)> {
        events
            .iter()
            .filter_map(Event::sensitive)
            .map(|(m, p, f)| (m.to_string(), p.to_string(), *f))
            .collect()
    };
    for found in [sensitive(&events), sensitive(&events_bad)] {
        learner.add_sensitive(
            p.discovery.as_ref(),
            found.iter().map(|(m, p, f)| (m.as_str(), p.as_str(), f)),
        );
    }
    let report = learner.report("shop/users");
    let users = &report.endpoints[0];
    assert_eq!(
        (users.method.as_str(), users.path.as_str()),
        ("GET", "/users/{id}")
    );
    assert_eq!(users.requests, 0, "the access log counts the request");
    assert_eq!(report.observed, 0);
    // Then the access log entry of the same exchange arrives.
    learner.observe(
        p.discovery.as_ref(),
        &[Logged {
            method: "GET".into(),
            path: "/users/42".into(),
            status: 200,
            route: "read".into(),
            authenticated: true,
            content_type: Some("application/json".into()),
            time: std::time::SystemTime::now(),
            caller: Default::default(),
        }],
    );
    let report = learner.report("shop/users");
    assert_eq!(report.endpoints.len(), 1);
    let users = &report.endpoints[0];
    assert_eq!(users.requests, 1);
    let json = serde_json::to_string(&report).unwrap();
    assert!(
        json.contains(r#""sensitive":["email","payment_card"]"#),
        "{json}"
    );
    assert!(
        json.contains(r#""sensitiveCounts":{"email":1,"payment_card":1}"#),
        "{json}"
    );
    for value in ["ann.example", "example.org", "4111", "1111 1111", "1112"] {
        assert!(!json.contains(value), "{value} in {json}");
    }
    // With discovery off, nothing is added.
    let other = Learner::default();
    other.add_sensitive(None, events.iter().filter_map(Event::sensitive));
    assert!(other.report("shop/users").endpoints.is_empty());
}

#[test]
fn scan_metrics_and_log_lines_carry_classes_never_values() {
    use super::observe::SensorMetrics;
    use std::io::Write;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let p = scanning("All");
    let events = scan_exchange(
        &p,
        "/users/ann.example@example.org",
        "application/json",
        PII,
    );
    let registry = crate::admin::Metrics::new();
    let metrics = SensorMetrics::register(&registry);
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || metrics.record("shop/users", &events));
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("email:1,payment_card:1"),
        "the classes are logged: {logs}"
    );
    let text = registry.encode();
    for class in ["email", "payment_card"] {
        let series = format!(
            "apiguard_sensitive_responses_total{{policy=\"shop/users\",class=\"{class}\"}} 1"
        );
        assert!(text.contains(&series), "{series} in {text}");
    }
    for value in ["ann.example", "example.org", "4111", "1111 1111"] {
        assert!(!logs.contains(value), "{value} in {logs}");
        assert!(!text.contains(value), "{value} in {text}");
    }
}

#[test]
fn the_body_is_skipped_only_when_no_stage_needs_it() {
    // A contract that redacts responses needs the body of a declared operation, sampled or not.
    let p = pipeline(
        "Enforce",
        "  responses: Redact\ndiscovery:\n  sensitiveData: Sampled\n",
    );
    for i in 0..3 {
        let mut stream = ExchangeStream::new(p.clone());
        stream.handle(request_headers("GET", "/users/7", &[], true));
        let handled = stream.handle(response_headers("200", "application/json"));
        assert!(!skips_the_body(&handled), "response {i}");
    }
    // With responses Off, only the sample's bodies are wanted.
    let p = pipeline(
        "Enforce",
        "  responses: Off\ndiscovery:\n  sensitiveData: Sampled\n",
    );
    let skipped: Vec<bool> = (0..3)
        .map(|_| {
            let mut stream = ExchangeStream::new(p.clone());
            stream.handle(request_headers("GET", "/users/7", &[], true));
            skips_the_body(&stream.handle(response_headers("200", "application/json")))
        })
        .collect();
    assert_eq!(skipped, [false, true, true]);
    // All: every JSON body is wanted.
    let p = scanning("All");
    let mut stream = ExchangeStream::new(p);
    stream.handle(request_headers("GET", "/users/7", &[], true));
    let handled = stream.handle(response_headers("200", "application/json"));
    assert!(!skips_the_body(&handled));
}
