use super::*;
use proptest::prelude::*;
use rstest::rstest;
use serde_json::{Value, json};

const V30: &str = include_str!("testdata/users-3.0.yaml");
const V31: &str = include_str!("testdata/users-3.1.yaml");
const USER_30: &str = "/users/42";
const USER_31: &str = "/users/7f1c2f3e-8a4b-4c5d-9e6f-0a1b2c3d4e5f";
const HEADERS: &[(&str, &str)] = &[("X-Request-Id", "abc")];

fn compile(text: &str) -> Contract {
    Contract::compile(text, &ContractOptions::default()).expect("the fixture compiles")
}

fn user_path(doc: &str) -> &'static str {
    if doc == V30 { USER_30 } else { USER_31 }
}

fn json_request<'a>(method: &'a str, path: &'a str, body: &'a [u8]) -> Request<'a> {
    Request {
        method,
        path,
        content_type: Some("application/json"),
        body: Some(body),
        ..Request::default()
    }
}

/// The refusal's status and `(location, reason)` pairs; panics when not refused.
fn refusal(check: &RequestCheck) -> (u16, Vec<(String, &'static str)>) {
    match check {
        RequestCheck::Refused { problem, .. } => (
            problem.status,
            problem
                .errors
                .iter()
                .map(|e| (e.location.clone(), e.reason))
                .collect(),
        ),
        other => panic!("not refused: {other:?}"),
    }
}

fn patch_user(doc: &str, body: Value) -> RequestCheck {
    let body = body.to_string();
    compile(doc).check_request(&json_request("PATCH", user_path(doc), body.as_bytes()))
}

fn post_order(doc: &str, body: Value) -> RequestCheck {
    let body = body.to_string();
    compile(doc).check_request(&json_request("POST", "/orders", body.as_bytes()))
}

fn order() -> Value {
    json!({"customer": 1, "items": [{"sku": "ABC-1234", "quantity": 2, "price": 9.5}]})
}

#[rstest]
fn valid_bodies_are_allowed(#[values(V30, V31)] doc: &str) {
    let check = patch_user(doc, json!({"name": "Ada", "password": "correct horse"}));
    assert!(matches!(check, RequestCheck::Allowed { .. }), "{check:?}");
    let check = post_order(doc, order());
    assert!(matches!(check, RequestCheck::Allowed { .. }), "{check:?}");
}

#[rstest]
#[case::unknown_property(json!({"name": "Ada", "isAdmin": true}), "body/isAdmin", "unknownProperty")]
#[case::read_only(json!({"name": "Ada", "role": "admin"}), "body/role", "readOnly")]
#[case::wrong_type(json!({"name": 12}), "body/name", "type")]
#[case::too_short(json!({"name": ""}), "body/name", "minLength")]
#[case::enum_or_pattern(json!({"name": "Ada", "email": "not-an-email"}), "body/email", "format")]
fn invalid_user_patches_are_refused(
    #[values(V30, V31)] doc: &str,
    #[case] body: Value,
    #[case] location: &str,
    #[case] reason: &str,
) {
    let (status, errors) = refusal(&patch_user(doc, body));
    assert_eq!(status, 400);
    assert!(
        errors.iter().any(|(l, r)| l == location && *r == reason),
        "{errors:?}"
    );
}

#[rstest]
fn nested_order_violations_are_located(#[values(V30, V31)] doc: &str) {
    let mut body = order();
    body["items"][0]["price"] = json!("free");
    body["items"][0]["extra"] = json!(1);
    body.as_object_mut().unwrap().remove("customer");
    let (status, errors) = refusal(&post_order(doc, body));
    assert_eq!(status, 400);
    for expected in [
        ("body/items/0/price", "type"),
        ("body/items/0/extra", "unknownProperty"),
        ("body/customer", "required"),
    ] {
        assert!(
            errors
                .iter()
                .any(|(l, r)| l == expected.0 && *r == expected.1),
            "{expected:?} in {errors:?}"
        );
    }
}

#[rstest]
fn read_only_in_arrays_and_all_of_is_refused(#[values(V30, V31)] doc: &str) {
    let mut body = order();
    body["total"] = json!(10);
    let (_, errors) = refusal(&post_order(doc, body));
    assert_eq!(errors, vec![("body/total".to_string(), "readOnly")]);
}

#[rstest]
fn wrong_or_missing_content_type_is_415(#[values(V30, V31)] doc: &str) {
    let contract = compile(doc);
    let body = order().to_string();
    let mut request = json_request("POST", "/orders", body.as_bytes());
    request.content_type = Some("text/plain");
    let (status, errors) = refusal(&contract.check_request(&request));
    assert_eq!(status, 415);
    assert_eq!(
        errors,
        vec![("header/content-type".to_string(), "contentType")]
    );
    request.content_type = None;
    assert_eq!(refusal(&contract.check_request(&request)).0, 415);
    request.content_type = Some("Application/JSON; charset=utf-8");
    assert!(matches!(
        contract.check_request(&request),
        RequestCheck::Allowed { .. }
    ));
}

#[rstest]
#[case::v30_not_an_integer(V30, "/users/abc", "type")]
#[case::v30_below_minimum(V30, "/users/0", "minimum")]
#[case::v31_not_a_uuid(V31, "/users/not-a-uuid", "format")]
fn path_parameters_are_checked(#[case] doc: &str, #[case] path: &str, #[case] reason: &str) {
    let request = Request {
        method: "GET",
        path,
        headers: HEADERS,
        ..Request::default()
    };
    let (status, errors) = refusal(&compile(doc).check_request(&request));
    assert_eq!(
        (status, errors),
        (400, vec![("path/id".to_string(), reason)])
    );
}

#[rstest]
#[case::above_maximum("limit=101", Some("maximum"))]
#[case::not_an_integer("limit=ten", Some("type"))]
#[case::in_range("limit=100&other=1", None)]
#[case::absent("", None)]
fn query_parameters_are_checked(
    #[values(V30, V31)] doc: &str,
    #[case] query: &str,
    #[case] reason: Option<&str>,
) {
    let request = Request {
        method: "GET",
        path: "/orders",
        query,
        ..Request::default()
    };
    let check = compile(doc).check_request(&request);
    match reason {
        Some(reason) => assert_eq!(
            refusal(&check),
            (400, vec![("query/limit".to_string(), reason)])
        ),
        None => assert!(matches!(check, RequestCheck::Allowed { .. }), "{check:?}"),
    }
}

#[rstest]
fn required_headers_are_checked(#[values(V30, V31)] doc: &str) {
    let contract = compile(doc);
    let mut request = Request {
        method: "get",
        path: user_path(doc),
        ..Request::default()
    };
    assert_eq!(
        refusal(&contract.check_request(&request)),
        (400, vec![("header/x-request-id".to_string(), "required")])
    );
    request.headers = HEADERS;
    assert!(matches!(
        contract.check_request(&request),
        RequestCheck::Allowed { .. }
    ));
}

#[rstest]
#[case("DELETE", "/orders")]
#[case("GET", "/orders/1")]
#[case("GET", "/")]
#[case("GET", "/accounts")]
fn undeclared_operations(#[values(V30, V31)] doc: &str, #[case] method: &str, #[case] path: &str) {
    let request = Request {
        method,
        path,
        ..Request::default()
    };
    assert_eq!(
        compile(doc).check_request(&request),
        RequestCheck::Undeclared
    );
}

#[test]
fn a_literal_path_wins_over_a_template() {
    let contract = compile(V30);
    let request = Request {
        method: "GET",
        path: "/users/me",
        ..Request::default()
    };
    let RequestCheck::Allowed { operation } = contract.check_request(&request) else {
        panic!("allowed");
    };
    assert_eq!(contract.operation_name(operation), "GET /users/me");
}

#[rstest]
fn allow_lets_unknown_properties_through(#[values(V30, V31)] doc: &str) {
    let options = ContractOptions {
        unknown_properties: UnknownProperties::Allow,
    };
    let contract = Contract::compile(doc, &options).unwrap();
    let body = json!({"name": "Ada", "isAdmin": true}).to_string();
    let check = contract.check_request(&json_request("PATCH", user_path(doc), body.as_bytes()));
    assert!(matches!(check, RequestCheck::Allowed { .. }), "{check:?}");
    // readOnly is refused whatever the option.
    let body = json!({"name": "Ada", "role": "admin"}).to_string();
    let check = contract.check_request(&json_request("PATCH", user_path(doc), body.as_bytes()));
    assert_eq!(
        refusal(&check).1,
        vec![("body/role".to_string(), "readOnly")]
    );
}

#[rstest]
fn nullable_accepts_null(#[values(V30, V31)] doc: &str) {
    let check = patch_user(doc, json!({"name": "Ada", "nickname": null}));
    assert!(matches!(check, RequestCheck::Allowed { .. }), "{check:?}");
    let (_, errors) = refusal(&patch_user(doc, json!({"name": null})));
    assert_eq!(errors, vec![("body/name".to_string(), "type")]);
}

#[test]
fn nullable_objects_and_free_form_maps_in_3_0() {
    let check = patch_user(
        V30,
        json!({"name": "A", "address": null, "tags": {"any": "x"}}),
    );
    assert!(matches!(check, RequestCheck::Allowed { .. }), "{check:?}");
    let (_, errors) = refusal(&patch_user(
        V30,
        json!({"name": "A", "address": {"planet": "x"}}),
    ));
    assert_eq!(
        errors,
        vec![("body/address/planet".to_string(), "unknownProperty")]
    );
}

#[test]
fn values_are_never_echoed() {
    let secret = "sk_live_SECRET_4242";
    for body in [
        json!({"name": 12, "role": secret, "email": secret, "nickname": 7, "password": 1}),
        json!({"name": secret, "isAdmin": secret}),
        json!([secret]),
    ] {
        let check = patch_user(V30, body);
        let RequestCheck::Refused { problem, .. } = check else {
            panic!("refused");
        };
        let text = problem.to_json().to_string();
        assert!(!text.contains("SECRET"), "{text}");
        assert!(!format!("{problem:?}").contains("SECRET"));
    }
    let request = Request {
        method: "GET",
        path: "/orders",
        query: "limit=sk_live_SECRET_4242",
        ..Request::default()
    };
    let RequestCheck::Refused { problem, .. } = compile(V30).check_request(&request) else {
        panic!("refused");
    };
    assert!(!problem.to_json().to_string().contains("SECRET"));
}

#[test]
fn problem_json_shape() {
    let RequestCheck::Refused { problem, .. } = patch_user(V30, json!({"name": "A", "role": "x"}))
    else {
        panic!("refused");
    };
    assert_eq!(
        problem.to_json(),
        json!({
            "type": "https://apiguard.dev/problems/contract-violation",
            "title": "Request does not match the API contract",
            "status": 400,
            "detail": "1 violation of the API contract",
            "errors": [{"location": "body/role", "reason": "readOnly"}],
        })
    );
}

#[rstest]
fn invalid_json_is_refused(#[values(V30, V31)] doc: &str) {
    let check = compile(doc).check_request(&json_request("POST", "/orders", b"{\"customer\":"));
    assert_eq!(refusal(&check), (400, vec![("body".to_string(), "json")]));
}

fn allowed(contract: &Contract, method: &str, path: &str) -> OperationRef {
    let request = Request {
        method,
        path,
        headers: HEADERS,
        ..Request::default()
    };
    match contract.check_request(&request) {
        RequestCheck::Allowed { operation } => operation,
        other => panic!("{other:?}"),
    }
}

#[rstest]
fn responses_lose_write_only_and_undeclared_properties(#[values(V30, V31)] doc: &str) {
    let contract = compile(doc);
    let op = allowed(&contract, "GET", user_path(doc));
    let body = json!({"id": 1, "name": "Ada", "role": "admin", "password": "hunter22", "ssn": "1"});
    let check = contract.redact_response(
        op,
        200,
        Some("application/json"),
        body.to_string().as_bytes(),
        1 << 20,
    );
    let new: Value = serde_json::from_slice(check.body.as_deref().unwrap()).unwrap();
    assert_eq!(new.get("password"), None);
    assert_eq!(new.get("ssn"), None);
    assert_eq!(new["role"], "admin");
    let removed: Vec<_> = check
        .removed
        .iter()
        .map(|e| (e.location.as_str(), e.reason))
        .collect();
    assert_eq!(
        removed,
        vec![("body/password", "writeOnly"), ("body/ssn", "undeclared")]
    );
}

#[rstest]
fn responses_are_redacted_in_arrays_through_refs_and_all_of(#[values(V30, V31)] doc: &str) {
    let contract = compile(doc);
    let op = allowed(&contract, "GET", "/orders");
    let item = json!({"sku": "ABC-1234", "quantity": 1, "price": 2, "cost": 1, "margin": 1});
    let body = json!([{"customer": 1, "items": [item.clone(), item], "internal": true}]);
    let check = contract.redact_response(
        op,
        200,
        Some("application/json"),
        body.to_string().as_bytes(),
        1 << 20,
    );
    let new: Value = serde_json::from_slice(check.body.as_deref().unwrap()).unwrap();
    assert_eq!(
        new,
        json!([{"customer": 1, "items": [
            {"sku": "ABC-1234", "quantity": 1, "price": 2},
            {"sku": "ABC-1234", "quantity": 1, "price": 2}]}])
    );
    assert_eq!(check.removed.len(), 5, "{:?}", check.removed);
    assert!(
        check
            .removed
            .contains(&FieldError::new("body/0/items/1/cost", "writeOnly"))
    );
    assert!(check.violations.is_empty(), "{:?}", check.violations);
}

#[test]
fn response_status_ranges_default_and_violations() {
    let contract = compile(V30);
    let body = br#"{"name":"A"}"#;
    let RequestCheck::Allowed { operation: op } =
        contract.check_request(&json_request("PATCH", USER_30, body))
    else {
        panic!("allowed");
    };
    // 2XX range; role missing is reported, not enforced.
    let check = contract.redact_response(
        op,
        204,
        Some("application/json"),
        br#"{"id":1,"name":"A"}"#,
        1024,
    );
    assert_eq!(check.body, None);
    assert_eq!(
        check.violations,
        vec![FieldError::new("body/role", "required")]
    );
    // No declared response for 500 on PATCH: unchecked.
    let check = contract.redact_response(op, 500, Some("application/json"), b"{}", 1024);
    assert_eq!(check.unchecked, Some(Unchecked::NoSchema));
    // default on GET, problem+json.
    let get = allowed(&contract, "GET", USER_30);
    let check = contract.redact_response(
        get,
        503,
        Some("application/problem+json"),
        br#"{"title":"x","trace":"t"}"#,
        1024,
    );
    assert_eq!(
        check.removed,
        vec![FieldError::new("body/trace", "undeclared")]
    );
}

#[test]
fn too_large_responses_pass_unchecked() {
    let contract = compile(V30);
    let op = allowed(&contract, "GET", USER_30);
    let body = br#"{"id":1,"name":"A","role":"admin","password":"p"}"#;
    let check = contract.redact_response(op, 200, Some("application/json"), body, 16);
    assert_eq!(check.unchecked, Some(Unchecked::TooLarge));
    assert_eq!(check.body, None);
    assert!(check.removed.is_empty());
}

#[rstest]
#[case::bad_yaml("openapi: 3.0.0\npaths: [\n", "(document)")]
#[case::not_openapi("swagger: '2.0'\n", "/openapi")]
#[case::missing_ref(
    "openapi: 3.1.0\npaths:\n  /users/{id}:\n    patch:\n      requestBody:\n        content:\n          application/json:\n            schema: {$ref: '#/components/schemas/Nope'}\n",
    "/paths/~1users~1{id}/patch/requestBody/content/application~1json/schema"
)]
#[case::remote_ref(
    "openapi: 3.0.0\ncomponents:\n  schemas:\n    A: {$ref: 'https://example.com/a.json'}\n",
    "/components/schemas/A"
)]
#[case::invalid_schema(
    "openapi: 3.1.0\npaths:\n  /users/{id}:\n    patch:\n      requestBody:\n        content:\n          application/json:\n            schema: {type: object, properties: {a: {type: 12}}}\n",
    "/paths/~1users~1{id}/patch/requestBody/content/application~1json/schema/properties/a/type"
)]
#[case::bad_status(
    "openapi: 3.0.0\npaths:\n  /a:\n    get:\n      responses:\n        '9000': {description: x}\n",
    "/paths/~1a/get/responses/9000"
)]
#[case::bad_parameter(
    "openapi: 3.0.0\npaths:\n  /a:\n    get:\n      parameters: [{name: x, in: body}]\n",
    "/paths/~1a/get/parameters/0"
)]
fn broken_documents_name_the_pointer(#[case] text: &str, #[case] pointer: &str) {
    let error = Contract::compile(text, &ContractOptions::default()).unwrap_err();
    assert_eq!(
        error.pointer,
        if pointer == "(document)" { "" } else { pointer },
        "{error}"
    );
    assert!(
        error.to_string().starts_with(&format!("{pointer}: ")),
        "{error}"
    );
}

#[test]
fn json_documents_compile() {
    let doc: Value = serde_saphyr::from_str(V31).unwrap();
    let contract = compile(&doc.to_string());
    let body = order().to_string();
    assert!(matches!(
        contract.check_request(&json_request("POST", "/orders", body.as_bytes())),
        RequestCheck::Allowed { .. }
    ));
}

/// What the `Value` path says of a body: clean when it parses and neither the shape walk nor
/// the validator reports anything.
fn slow_clean(
    contract: &Contract,
    media: &operations::Media,
    body: &[u8],
    policy: shape::Policy,
) -> bool {
    let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let mut errors = Vec::new();
    if let Some(shape) = media.shape {
        let at = &mut "body".to_string();
        contract
            .shapes
            .strip(shape, &mut value, at, policy, &mut errors);
    }
    if let Some(validator) = &media.validator {
        schema::violations(validator, &value, "body", &mut errors);
    }
    errors.is_empty()
}

/// The fast path (a borrowed tape) and the `Value` path agree on every body schema of
/// `contract`, both directions, either unknown-property policy. Returns how many said clean.
fn assert_paths_agree(contract: &Contract, body: &[u8]) -> usize {
    use schema::Direction;
    if let Some(tape) = tape::Tape::parse(body) {
        let value: Value = serde_json::from_slice(body).expect("the tape parsed it");
        assert_eq!(tape.to_value(), value);
    }
    let mut clean = 0;
    for op in &contract.operations {
        let requests = op.body.iter().flat_map(|b| &b.media);
        let responses = op.responses.iter().flat_map(|r| &r.media);
        let media = requests
            .map(|m| (m, Direction::Request))
            .chain(responses.map(|m| (m, Direction::Response)));
        for (media, direction) in media {
            for undeclared in [true, false] {
                let policy = shape::Policy {
                    direction,
                    undeclared,
                };
                let fast = contract.quick_clean(media, body, policy);
                let slow = slow_clean(contract, media, body, policy);
                assert_eq!(
                    fast,
                    slow,
                    "{} {direction:?} undeclared={undeclared}: {}",
                    op.name,
                    String::from_utf8_lossy(body)
                );
                clean += usize::from(fast);
            }
        }
    }
    clean
}

#[rstest]
fn fast_path_agrees_on_known_bodies(#[values(V30, V31)] doc: &str) {
    let contract = compile(doc);
    let mut bodies = vec![
        order(),
        json!({"name": "Ann", "email": "ann@example.com", "tags": {"a": "b"}}),
        json!({"name": "Ann", "role": "admin"}),
        json!({"name": "", "nickname": null, "address": null}),
        json!({"customer": 1, "items": [{"sku": "ABC-1234", "quantity": 1000, "price": 1}]}),
        json!({"customer": 1, "items": [{"sku": "ABC-1234", "quantity": 1.0, "price": 1}]}),
        json!({"customer": 1, "items": [{"sku": "ABC-1234", "quantity": 2, "price": 1, "cost": 3}]}),
        json!({"customer": 1, "items": []}),
        json!({"id": "7f1c2f3e-8a4b-4c5d-9e6f-0a1b2c3d4e5f", "customer": 1, "items": [{"sku": "ABC-1234", "quantity": 2, "price": 1}]}),
        json!({"title": "x"}),
        json!([1, 2, "x"]),
        json!(null),
    ];
    bodies.push(json!([order(), order()]));
    let mut clean = 0;
    for body in &bodies {
        clean += assert_paths_agree(&contract, body.to_string().as_bytes());
    }
    assert!(clean > 0, "some bodies take the fast path");
    // Escaped strings and keys, and what the tape refuses to decide.
    let escaped = br#"{"customer": 1, "note": "a\"b\u00e9", "items": [{"s\u006bu": "ABC-1234", "quantity": 2, "price": 1}]}"#;
    assert!(assert_paths_agree(&contract, escaped) > 0);
    for raw in [
        &b"{\"customer\": 1, \"customer\": 2, \"items\": []}"[..],
        b"{",
        b"[1,]",
        b"1 2",
        b"",
    ] {
        let policy = shape::Policy {
            direction: schema::Direction::Request,
            undeclared: true,
        };
        let media = &contract
            .operations
            .iter()
            .find_map(|op| op.body.as_ref())
            .unwrap()
            .media[0];
        assert!(!contract.quick_clean(media, raw, policy));
    }
}

/// A body proptest once found the tape's duplicate-key check getting wrong (indexes inside
/// nested objects): kept as a plain case so it runs on every `cargo test`.
#[test]
fn nested_objects_with_the_same_keys_are_not_duplicates() {
    let body = json!([{"$ref": [], "type": null}]).to_string();
    for doc in [V30, V31] {
        let contract = compile(doc);
        assert_paths_agree(&contract, body.as_bytes());
        let nested =
            br#"{"a": {"x": 1, "y": 2}, "b": {"x": 1, "y": 2}, "items": [{"x": 1}, {"x": 2}]}"#;
        assert_paths_agree(&contract, nested);
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-z$/#{}]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("type".to_string()),
                    Just("$ref".to_string()),
                    Just("properties".to_string()),
                    Just("items".to_string()),
                    Just("allOf".to_string()),
                    Just("nullable".to_string()),
                    Just("readOnly".to_string()),
                    "[a-z]{1,6}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_bodies_never_panic(body in arb_json(), raw in prop::collection::vec(any::<u8>(), 0..64)) {
        for doc in [V30, V31] {
            let contract = compile(doc);
            let text = body.to_string();
            for bytes in [text.as_bytes(), raw.as_slice()] {
                for (method, path) in [("PATCH", user_path(doc)), ("POST", "/orders")] {
                    let check = contract.check_request(&json_request(method, path, bytes));
                    let op = match check {
                        RequestCheck::Allowed { operation } | RequestCheck::Refused { operation, .. } => operation,
                        RequestCheck::Undeclared => panic!("declared"),
                    };
                    for status in [200, 201, 404] {
                        let _ = contract.redact_response(op, status, Some("application/json"), bytes, 1 << 16);
                    }
                }
            }
            assert_paths_agree(&contract, text.as_bytes());
        }
    }

    #[test]
    fn random_documents_never_panic(schema in arb_json(), text in "\\PC{0,200}") {
        let _ = Contract::compile(&text, &ContractOptions::default());
        let doc = json!({
            "openapi": "3.0.3",
            "paths": {"/a/{id}": {"post": {
                "parameters": [{"name": "id", "in": "path", "schema": schema}],
                "requestBody": {"content": {"application/json": {"schema": schema}}},
                "responses": {"200": {"content": {"application/json": {"schema": schema}}}}}}},
            "components": {"schemas": {"type": schema}},
        });
        for version in ["3.0.3", "3.1.0"] {
            let mut doc = doc.clone();
            doc["openapi"] = json!(version);
            if let Ok(contract) = Contract::compile(&doc.to_string(), &ContractOptions::default()) {
                let body = schema.to_string();
                assert_paths_agree(&contract, body.as_bytes());
                assert_paths_agree(&contract, b"{}");
                assert_paths_agree(&contract, b"[{\"type\": 1}, null, \"a\"]");
                let check = contract.check_request(&json_request("POST", "/a/1", body.as_bytes()));
                if let RequestCheck::Allowed { operation } | RequestCheck::Refused { operation, .. } = check {
                    let _ = contract.redact_response(operation, 200, Some("application/json"), body.as_bytes(), 1 << 16);
                }
            }
        }
    }
}
