//! Envoy's ext_proc protocol translated to and from the [`Pipeline`]: one [`ExchangeStream`]
//! per gRPC stream (one HTTP exchange), fed each `ProcessingRequest`, answering each with the
//! matching `ProcessingResponse`.
//!
//! Pure and synchronous (the async gRPC service only moves messages), so every sequence of
//! messages, sensible or not, can be tested without a network.

use super::context::{Attributes, RequestContext, ResponseHead};
use super::pipeline::{Action, Event, Exchange, Pipeline, Point, Reply};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderMap, HeaderValue, HeaderValueOption, Metadata,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Message;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Answer;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpHeaders,
    ImmediateResponse, ProcessingRequest, ProcessingResponse, TrailersResponse, body_mutation,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, value::Kind};
use std::collections::HashMap;
use std::sync::Arc;

/// One gRPC stream: the exchange, the config snapshot it started with, and the body buffers.
pub(crate) struct ExchangeStream {
    pipeline: Arc<Pipeline>,
    exchange: Exchange,
    request_body: Buffer,
    response_body: Buffer,
    /// From the first message's `protocol_config`: does Envoy send request bodies at all?
    request_body_mode: Option<i32>,
    /// From the first message's `protocol_config`: Envoy streams the request body right behind
    /// the headers without waiting for their answer, so the answers wait for the body instead.
    body_follows_headers: bool,
    /// The request check ran (at the headers or the body).
    request_checked: bool,
    /// The request's `content-length`: its body is complete once that many bytes came, even
    /// when the last chunk does not say so (trailers follow).
    request_length: Option<usize>,
    /// The answers held until the request body is checked ([`Self::body_follows_headers`]):
    /// the headers', then one per body chunk but the last.
    held: Vec<ProcessingResponse>,
}

/// What one message did: the answer for Envoy (none when Envoy expects none), the answers to
/// earlier messages it releases (sent first, in order), the point of the exchange it reached,
/// and the stages' events.
pub(crate) struct Handled {
    pub(crate) answer: Option<ProcessingResponse>,
    pub(crate) released: Vec<ProcessingResponse>,
    pub(crate) point: Option<Point>,
    pub(crate) events: Vec<Event>,
}

impl Handled {
    /// Every answer to send now, in order.
    pub(crate) fn answers(self) -> impl Iterator<Item = ProcessingResponse> {
        self.released.into_iter().chain(self.answer)
    }
}

/// A body gathered from its chunks, up to `limit` bytes; past it, only the fact (and the
/// length) is kept.
struct Buffer {
    bytes: Vec<u8>,
    limit: usize,
    overflow: bool,
    received: usize,
}

impl Buffer {
    fn new(limit: usize) -> Self {
        Buffer {
            bytes: Vec::new(),
            limit,
            overflow: false,
            received: 0,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        self.received = self.received.saturating_add(chunk.len());
        if self.overflow {
            return;
        }
        if self.bytes.len().saturating_add(chunk.len()) > self.limit {
            self.overflow = true;
            self.bytes = Vec::new();
        } else {
            self.bytes.extend_from_slice(chunk);
        }
    }

    /// The whole body, or `None` when it overflowed.
    fn take(&mut self) -> Option<Vec<u8>> {
        self.received = 0;
        let overflow = std::mem::replace(&mut self.overflow, false);
        let bytes = std::mem::take(&mut self.bytes);
        (!overflow).then_some(bytes)
    }
}

impl ExchangeStream {
    pub(crate) fn new(pipeline: Arc<Pipeline>) -> Self {
        // One byte over maxResponseBytes is enough to know a response is too large.
        let response_limit = pipeline.max_response_bytes.saturating_add(1);
        ExchangeStream {
            request_body: Buffer::new(pipeline.max_request_bytes),
            response_body: Buffer::new(response_limit),
            pipeline,
            exchange: Exchange::default(),
            request_body_mode: None,
            body_follows_headers: false,
            request_checked: false,
            request_length: None,
            held: Vec::new(),
        }
    }

    /// The policy of the config snapshot this stream uses.
    pub(crate) fn policy(&self) -> &str {
        &self.pipeline.policy
    }

    /// The discovery settings of the config snapshot this stream uses (None: discovery off).
    pub(crate) fn discovery(&self) -> Option<&super::learn::DiscoveryConfig> {
        self.pipeline.discovery.as_ref()
    }

    /// Handles one message from Envoy.
    pub(crate) fn handle(&mut self, message: ProcessingRequest) -> Handled {
        if let Some(config) = &message.protocol_config {
            self.request_body_mode = Some(config.request_body_mode);
            self.body_follows_headers = config.send_body_without_waiting_for_header_response
                && config.request_body_mode == BodySendMode::Streamed as i32;
        }
        let mut events = Vec::new();
        let mut released = Vec::new();
        let observe_only = message.observability_mode;
        let (point, answer) = match message.request {
            Some(Message::RequestHeaders(headers)) => {
                let attributes = attributes(
                    &message.attributes,
                    &headers.attributes,
                    message.metadata_context.as_ref(),
                );
                self.request_headers(headers, attributes, &mut events)
            }
            Some(Message::RequestBody(body)) => {
                self.request_body.push(&body.body);
                let complete = body.end_of_stream
                    || self
                        .request_length
                        .is_some_and(|length| self.request_body.received >= length);
                if complete {
                    let (point, answer) = self.check_request_body(&mut events);
                    released = self.release(answer.as_ref());
                    (point, answer)
                } else if self.holding() {
                    self.held
                        .extend(answer_body(Action::Continue, Answer::RequestBody));
                    (None, None)
                } else {
                    (None, answer_body(Action::Continue, Answer::RequestBody))
                }
            }
            Some(Message::RequestTrailers(_)) if !self.request_checked => {
                // A body that ended with trailers: check it now.
                let (point, action) = self.check_request_body_action(&mut events);
                let answer = answer_trailers(action, Answer::RequestTrailers);
                released = self.release(answer.as_ref());
                (point, answer)
            }
            Some(Message::ResponseHeaders(headers)) => self.response_headers(headers, &mut events),
            Some(Message::ResponseBody(body)) => {
                self.response_body.push(&body.body);
                if body.end_of_stream {
                    let body = self.response_body.take();
                    let action = self.run(Point::ResponseBody, body.as_deref(), &mut events);
                    (
                        Some(Point::ResponseBody),
                        answer_body(action, Answer::ResponseBody),
                    )
                } else {
                    (None, answer_body(Action::Continue, Answer::ResponseBody))
                }
            }
            Some(Message::RequestTrailers(_)) => (
                None,
                answer_trailers(Action::Continue, Answer::RequestTrailers),
            ),
            Some(Message::ResponseTrailers(_)) => (
                None,
                answer_trailers(Action::Continue, Answer::ResponseTrailers),
            ),
            None => (None, None),
        };
        // Observability mode: Envoy expects no answer at all.
        let (answer, released) = if observe_only {
            (None, Vec::new())
        } else {
            (answer, released)
        };
        Handled {
            answer,
            released,
            point,
            events,
        }
    }

    /// Whether the answers wait for the request body ([`Self::body_follows_headers`]).
    fn holding(&self) -> bool {
        self.body_follows_headers && !self.request_checked
    }

    /// The held answers, released with the request body's `answer`; dropped when that answer
    /// ends the exchange (a refusal answers everything at once).
    fn release(&mut self, answer: Option<&ProcessingResponse>) -> Vec<ProcessingResponse> {
        let held = std::mem::take(&mut self.held);
        if answer.is_some_and(ends_exchange) {
            Vec::new()
        } else {
            held
        }
    }

    fn run(&mut self, point: Point, body: Option<&[u8]>, events: &mut Vec<Event>) -> Action {
        self.pipeline.run(point, &mut self.exchange, body, events)
    }

    fn request_headers(
        &mut self,
        headers: HttpHeaders,
        attributes: Attributes,
        events: &mut Vec<Event>,
    ) -> (Option<Point>, Option<ProcessingResponse>) {
        let request = RequestContext::new(header_pairs(headers.headers.as_ref()), attributes);
        let bodies_sent = self.request_body_mode != Some(BodySendMode::None as i32);
        let ends_at_headers = headers.end_of_stream || !bodies_sent;
        self.request_length = request
            .header("content-length")
            .and_then(|v| v.trim().parse().ok());
        self.exchange = Exchange {
            request,
            request_ends_at_headers: ends_at_headers,
            ..Exchange::default()
        };
        self.request_checked = ends_at_headers;
        let action = self.run(Point::RequestHeaders, None, events);
        let answer = answer_headers(action, Answer::RequestHeaders);
        if self.holding() && !answer.as_ref().is_some_and(ends_exchange) {
            // Continue, but only once the body is checked: held.
            self.held.extend(answer);
            return (Some(Point::RequestHeaders), None);
        }
        (Some(Point::RequestHeaders), answer)
    }

    fn check_request_body(
        &mut self,
        events: &mut Vec<Event>,
    ) -> (Option<Point>, Option<ProcessingResponse>) {
        let (point, action) = self.check_request_body_action(events);
        (point, answer_body(action, Answer::RequestBody))
    }

    fn check_request_body_action(&mut self, events: &mut Vec<Event>) -> (Option<Point>, Action) {
        if self.request_checked {
            // A second end of stream (or a body after a header-only request): nothing to check.
            return (None, Action::Continue);
        }
        self.request_checked = true;
        let body = self.request_body.take();
        let action = self.run(Point::RequestBody, body.as_deref(), events);
        (Some(Point::RequestBody), action)
    }

    fn response_headers(
        &mut self,
        headers: HttpHeaders,
        events: &mut Vec<Event>,
    ) -> (Option<Point>, Option<ProcessingResponse>) {
        let pairs = header_pairs(headers.headers.as_ref());
        self.exchange.response = Some(ResponseHead::new(&pairs));
        self.exchange.scan_response = false;
        let action = self.run(Point::ResponseHeaders, None, events);
        let mut answer = answer_headers(action, Answer::ResponseHeaders);
        if let Some(answer) = answer.as_mut()
            && matches!(answer.response, Some(Answer::ResponseHeaders(_)))
            && !self.pipeline.wants_response_body(&self.exchange)
        {
            answer.mode_override = Some(nothing_more());
        }
        (Some(Point::ResponseHeaders), answer)
    }
}

/// The processing mode for the rest of an exchange whose response body no stage needs: Envoy
/// sends nothing more (it honours this only with the filter's `allow_mode_override`, rendered
/// for the sensitive-data scan; otherwise the body comes as configured, and is let through).
fn nothing_more() -> ProcessingMode {
    ProcessingMode {
        request_header_mode: HeaderSendMode::Skip as i32,
        response_header_mode: HeaderSendMode::Skip as i32,
        request_body_mode: BodySendMode::None as i32,
        response_body_mode: BodySendMode::None as i32,
        request_trailer_mode: HeaderSendMode::Skip as i32,
        response_trailer_mode: HeaderSendMode::Skip as i32,
    }
}

/// Header name/value pairs; Envoy sends values in `raw_value` (bytes), older versions in
/// `value`. A value that is not UTF-8 is read lossily (it can only fail a check).
fn header_pairs(map: Option<&HeaderMap>) -> Vec<(String, String)> {
    map.map(|m| m.headers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|h| {
            let value = if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            };
            (h.key.clone(), value)
        })
        .collect()
}

/// The request attributes (in the message, or in the headers message for older Envoys) and the
/// JWT subject from the forwarded metadata.
fn attributes(
    message: &HashMap<String, Struct>,
    in_headers: &HashMap<String, Struct>,
    metadata: Option<&Metadata>,
) -> Attributes {
    let lookup = |name: &str| {
        message
            .values()
            .chain(in_headers.values())
            .find_map(|s| string_field(s, name))
    };
    Attributes {
        source_address: lookup("source.address"),
        peer_uri_san: lookup("connection.uri_san_peer_certificate"),
        route_name: lookup("xds.route_name"),
        jwt_claims: super::access_log::jwt_claims(metadata),
    }
}

fn string_field(s: &Struct, name: &str) -> Option<String> {
    match s.fields.get(name).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(text)) => Some(text.clone()),
        _ => None,
    }
}

fn header(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_string(),
            raw_value: value.as_bytes().to_vec(),
            ..HeaderValue::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..HeaderValueOption::default()
    }
}

fn immediate(reply: Reply) -> ProcessingResponse {
    let response = ImmediateResponse {
        status: Some(HttpStatus {
            code: i32::from(reply.status),
        }),
        headers: Some(HeaderMutation {
            set_headers: std::iter::once(header("content-type", reply.content_type))
                .chain(reply.headers.iter().map(|(n, v)| header(n, v)))
                .collect(),
            remove_headers: Vec::new(),
        }),
        body: reply.body,
        grpc_status: None,
        details: reply.details.to_string(),
    };
    wrap(Answer::ImmediateResponse(response))
}

/// Whether an answer ends the exchange (an immediate response: Envoy answers the client).
fn ends_exchange(answer: &ProcessingResponse) -> bool {
    matches!(answer.response, Some(Answer::ImmediateResponse(_)))
}

fn wrap(answer: Answer) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(answer),
        ..ProcessingResponse::default()
    }
}

/// The answer to a headers message (a body replacement is not possible there: continue).
fn answer_headers(
    action: Action,
    variant: fn(HeadersResponse) -> Answer,
) -> Option<ProcessingResponse> {
    Some(match action {
        Action::Respond(reply) => immediate(reply),
        Action::Continue | Action::ReplaceBody(_) => wrap(variant(HeadersResponse::default())),
    })
}

/// The answer to a body message: a replaced body carries its new `content-length` (Envoy keeps
/// the header in BUFFERED mode and refuses a body that does not match it).
fn answer_body(action: Action, variant: fn(BodyResponse) -> Answer) -> Option<ProcessingResponse> {
    Some(match action {
        Action::Respond(reply) => immediate(reply),
        Action::Continue => wrap(variant(BodyResponse::default())),
        Action::ReplaceBody(body) => {
            let length = body.len().to_string();
            wrap(variant(BodyResponse {
                response: Some(CommonResponse {
                    header_mutation: Some(HeaderMutation {
                        set_headers: vec![header("content-length", &length)],
                        remove_headers: Vec::new(),
                    }),
                    body_mutation: Some(BodyMutation {
                        mutation: Some(body_mutation::Mutation::Body(body)),
                    }),
                    ..CommonResponse::default()
                }),
            }))
        }
    })
}

fn answer_trailers(
    action: Action,
    variant: fn(TrailersResponse) -> Answer,
) -> Option<ProcessingResponse> {
    Some(match action {
        Action::Respond(reply) => immediate(reply),
        Action::Continue | Action::ReplaceBody(_) => wrap(variant(TrailersResponse::default())),
    })
}
