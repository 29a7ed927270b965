//! `apiguard policy from-openapi`: the starter policy of a realistic document (snapshot), how
//! `security` requirements map to rules and authentication (table), that no document panics
//! and every generated policy passes the policy's own validation (property), and the command
//! as a user runs it: exit codes, stderr, and `apiguard lint` of its output.

use crate::support::tools::root;
use apiguard::api::validate::validate_spec;
use apiguard::api::{ApiSecurityPolicy, AuthorizationRule, Exposure, PolicyMode};
use apiguard::contract::starter::{Starter, StarterOptions, from_openapi};
use proptest::prelude::*;
use rstest::rstest;
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Output, Stdio};

const ORDERS: &str = "examples/openapi/orders-api.openapi.yaml";

fn orders_document() -> String {
    std::fs::read_to_string(root().join(ORDERS)).expect("the example document")
}

/// The policy passes the Rust invariants (`apiguard lint`, the webhook) and the CRD's CEL
/// rules (the apiserver).
fn assert_valid(policy: &ApiSecurityPolicy, context: &str) {
    assert_eq!(
        validate_spec(&policy.spec),
        vec![],
        "{context}: Rust validation"
    );
    if let Err(e) = policy.validate_cel() {
        panic!("{context}: CEL validation: {e:?}");
    }
}

/// The two YAML documents of the output, parsed back.
fn parse_output(yaml: &str) -> (Value, ApiSecurityPolicy) {
    let docs: Vec<&str> = yaml.split("\n---\n").collect();
    assert_eq!(docs.len(), 2, "a ConfigMap and a policy:\n{yaml}");
    let config_map: Value = serde_saphyr::from_str(docs[0]).expect("the ConfigMap parses");
    let policy: ApiSecurityPolicy = serde_saphyr::from_str(docs[1]).expect("the policy parses");
    (config_map, policy)
}

#[test]
fn the_orders_api_starter_policy() {
    let text = orders_document();
    let options = StarterOptions {
        namespace: Some("shop".into()),
        service: Some("orders".into()),
        ..StarterOptions::default()
    };
    let starter = from_openapi(&text, &options).expect("a starter policy");
    assert_eq!(starter.warnings, vec![], "a clean document has no warning");
    assert_valid(&starter.policy, ORDERS);
    let yaml = starter.to_yaml().expect("yaml");
    insta::assert_snapshot!(yaml);

    // The printed objects are the same objects, and the document survives verbatim.
    let (config_map, policy) = parse_output(&yaml);
    assert_eq!(policy.spec, starter.policy.spec);
    assert_eq!(config_map["data"]["openapi.yaml"], Value::String(text));
    assert_eq!(config_map["metadata"]["name"], "orders-api-openapi");
    let spec = &policy.spec;
    assert_eq!(
        spec.mode,
        PolicyMode::Audit,
        "a safe rollout starts in Audit"
    );
    assert_eq!(spec.exposure, Exposure::Public);
    assert_eq!(spec.hosts, ["orders.shop.example"]);
    let names: Vec<&str> = spec.rules().iter().map(|r| r.name.as_str()).collect();
    let me = names.iter().position(|n| *n == "get-current-user").unwrap();
    let user = names.iter().position(|n| *n == "get-user").unwrap();
    assert!(me < user, "/users/me before /users/{{userId}}: {names:?}");
}

#[test]
fn a_json_document_is_stored_under_openapi_json() {
    let doc = json!({
        "openapi": "3.0.3",
        "info": {"title": "Pets", "version": "1"},
        "paths": {"/pets": {"get": {"security": [], "responses": {"200": {"description": "ok"}}}}}
    });
    let starter = from_openapi(&doc.to_string(), &StarterOptions::default()).unwrap();
    let data = starter.config_map.data.as_ref().unwrap();
    assert!(data.contains_key("openapi.json"), "{data:?}");
    let openapi = starter.policy.spec.openapi.as_ref().unwrap();
    assert_eq!(
        openapi.source.config_map_ref.as_ref().unwrap().key,
        "openapi.json"
    );
    assert_eq!(starter.policy.metadata.name.as_deref(), Some("pets"));
    // Every rule public: no authentication is needed, and none is invented.
    assert!(starter.policy.spec.authentication.is_none());
    assert_valid(&starter.policy, "pets");
}

/// A document with `schemes`, the document-level `security` and one operation `GET /things`
/// with `op_security` (`Value::Null`: none).
fn security_document(schemes: Value, doc_security: Value, op_security: Value) -> String {
    let mut op = json!({"operationId": "listThings", "responses": {"200": {"description": "ok"}}});
    if !op_security.is_null() {
        op["security"] = op_security;
    }
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "Things", "version": "1"},
        "components": {"securitySchemes": schemes},
        "paths": {"/things": {"get": op}}
    });
    if !doc_security.is_null() {
        doc["security"] = doc_security;
    }
    doc.to_string()
}

fn schemes() -> Value {
    json!({
        "oauth": {"type": "oauth2", "flows": {"clientCredentials": {"tokenUrl": "https://idp.example/token", "scopes": {"a": "", "b": ""}}}},
        "oidc": {"type": "openIdConnect", "openIdConnectUrl": "https://idp.example/realms/shop/.well-known/openid-configuration"},
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
        "key": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
        "queryKey": {"type": "apiKey", "in": "query", "name": "api_key"},
        "basic": {"type": "http", "scheme": "basic"}
    })
}

/// What one operation's rule and the policy's authentication look like.
#[derive(Debug, PartialEq)]
struct Mapped {
    public: bool,
    providers: Vec<String>,
    scopes: Vec<String>,
    api_key_clients: Vec<String>,
    /// The JWT providers' names and issuers.
    jwt: Vec<(String, String)>,
    api_key_header: Option<String>,
    warnings: usize,
}

fn mapped(starter: &Starter) -> Mapped {
    let rule: &AuthorizationRule = &starter.policy.spec.rules()[0];
    let allow = rule.allow.clone().unwrap_or_default();
    let auth = starter.policy.spec.authentication.clone();
    Mapped {
        public: rule.public,
        providers: rule.providers.clone(),
        scopes: allow.scopes,
        api_key_clients: allow.api_key_clients,
        jwt: auth
            .as_ref()
            .and_then(|a| a.jwt.as_ref())
            .map(|j| {
                j.providers
                    .iter()
                    .map(|p| (p.name.clone(), p.issuer.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        api_key_header: auth.and_then(|a| a.api_keys).map(|k| k.header),
        warnings: starter.warnings.len(),
    }
}

const PLACEHOLDER_ISSUER: &str = "https://REPLACE-ME.invalid/";

fn s(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn jwt(name: &str, issuer: &str) -> Vec<(String, String)> {
    vec![(name.into(), issuer.into())]
}

#[rstest]
#[case::oauth2_scopes_become_allow_scopes(
    Value::Null, json!([{"oauth": ["b", "a"]}]),
    Mapped { public: false, providers: s(&["oauth"]), scopes: s(&["a", "b"]), api_key_clients: vec![], jwt: jwt("oauth", PLACEHOLDER_ISSUER), api_key_header: None, warnings: 0 })]
#[case::openid_connect_names_its_issuer(
    Value::Null, json!([{"oidc": ["a"]}]),
    Mapped { public: false, providers: s(&["oidc"]), scopes: s(&["a"]), api_key_clients: vec![], jwt: jwt("oidc", "https://idp.example/realms/shop"), api_key_header: None, warnings: 0 })]
#[case::http_bearer_is_a_placeholder_jwt_provider(
    Value::Null, json!([{"bearer": []}]),
    Mapped { public: false, providers: s(&["bearer"]), scopes: vec![], api_key_clients: vec![], jwt: jwt("bearer", PLACEHOLDER_ISSUER), api_key_header: None, warnings: 0 })]
#[case::bearer_roles_are_not_scopes(
    Value::Null, json!([{"bearer": ["admin"]}]),
    Mapped { public: false, providers: s(&["bearer"]), scopes: vec![], api_key_clients: vec![], jwt: jwt("bearer", PLACEHOLDER_ISSUER), api_key_header: None, warnings: 1 })]
#[case::a_header_api_key_is_api_keys_authentication(
    Value::Null, json!([{"key": []}]),
    Mapped { public: false, providers: vec![], scopes: vec![], api_key_clients: vec![], jwt: vec![], api_key_header: Some("x-api-key".into()), warnings: 0 })]
#[case::a_token_and_a_key_both_required(
    Value::Null, json!([{"oauth": ["a"], "key": []}]),
    Mapped { public: false, providers: s(&["oauth"]), scopes: s(&["a"]), api_key_clients: s(&["REPLACE-ME"]), jwt: jwt("oauth", PLACEHOLDER_ISSUER), api_key_header: Some("x-api-key".into()), warnings: 0 })]
#[case::empty_security_is_public(
    json!([{"oauth": ["a"]}]), json!([]),
    Mapped { public: true, providers: vec![], scopes: vec![], api_key_clients: vec![], jwt: vec![], api_key_header: None, warnings: 0 })]
#[case::an_empty_alternative_makes_authentication_optional_so_public(
    Value::Null, json!([{"oauth": ["a"]}, {}]),
    Mapped { public: true, providers: vec![], scopes: vec![], api_key_clients: vec![], jwt: vec![], api_key_header: None, warnings: 0 })]
#[case::the_document_security_is_the_default(
    json!([{"oauth": ["a"]}]), Value::Null,
    Mapped { public: false, providers: s(&["oauth"]), scopes: s(&["a"]), api_key_clients: vec![], jwt: jwt("oauth", PLACEHOLDER_ISSUER), api_key_header: None, warnings: 0 })]
#[case::operation_security_overrides_the_document(
    json!([{"oauth": ["a"]}]), json!([{"oauth": ["b"]}]),
    Mapped { public: false, providers: s(&["oauth"]), scopes: s(&["b"]), api_key_clients: vec![], jwt: jwt("oauth", PLACEHOLDER_ISSUER), api_key_header: None, warnings: 0 })]
#[case::no_security_anywhere_requires_a_caller_of_a_placeholder_provider(
    Value::Null, Value::Null,
    Mapped { public: false, providers: vec![], scopes: vec![], api_key_clients: vec![], jwt: jwt("REPLACE-ME", PLACEHOLDER_ISSUER), api_key_header: None, warnings: 0 })]
#[case::alternatives_keep_the_first_with_a_warning(
    Value::Null, json!([{"oauth": ["a"]}, {"key": []}]),
    Mapped { public: false, providers: s(&["oauth"]), scopes: s(&["a"]), api_key_clients: vec![], jwt: jwt("oauth", PLACEHOLDER_ISSUER), api_key_header: None, warnings: 1 })]
#[case::an_unsupported_alternative_is_passed_over(
    Value::Null, json!([{"basic": []}, {"oauth": ["a"]}]),
    Mapped { public: false, providers: s(&["oauth"]), scopes: s(&["a"]), api_key_clients: vec![], jwt: jwt("oauth", PLACEHOLDER_ISSUER), api_key_header: None, warnings: 1 })]
fn security_requirements_map_to_rules(
    #[case] doc_security: Value,
    #[case] op_security: Value,
    #[case] expected: Mapped,
) {
    let text = security_document(schemes(), doc_security, op_security);
    let starter = from_openapi(&text, &StarterOptions::default()).expect("a starter");
    assert_eq!(
        mapped(&starter),
        expected,
        "warnings: {:?}",
        starter.warnings
    );
    assert_valid(&starter.policy, &text);
}

#[rstest]
#[case::query_api_key(json!([{"queryKey": []}]), "in the query")]
#[case::http_basic(json!([{"basic": []}]), "HTTP basic")]
fn an_operation_no_requirement_can_express_is_skipped_with_a_warning(
    #[case] op_security: Value,
    #[case] why: &str,
) {
    // A second, expressible operation keeps the document usable.
    let mut doc: Value =
        serde_json::from_str(&security_document(schemes(), Value::Null, op_security)).unwrap();
    doc["paths"]["/health"] =
        json!({"get": {"security": [], "responses": {"200": {"description": "ok"}}}});
    let starter = from_openapi(&doc.to_string(), &StarterOptions::default()).unwrap();
    let rules: Vec<&str> = starter
        .policy
        .spec
        .rules()
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(rules, ["get-health"]);
    assert_eq!(starter.warnings.len(), 1, "{:?}", starter.warnings);
    assert_eq!(starter.warnings[0].pointer, "/paths/~1things/get/security");
    assert!(
        starter.warnings[0].message.contains(why),
        "{}",
        starter.warnings[0]
    );
}

#[rstest]
#[case::unknown_scheme(json!([{"nope": []}]), "/paths/~1things/get/security/0/nope", "no security scheme \"nope\"")]
#[case::not_a_list(json!({"oauth": []}), "/paths/~1things/get/security", "a list of requirements")]
#[case::scopes_not_a_list(json!([{"oauth": "a"}]), "/paths/~1things/get/security/0/oauth", "a list of scopes")]
fn a_malformed_requirement_is_an_error_at_its_pointer(
    #[case] op_security: Value,
    #[case] pointer: &str,
    #[case] message: &str,
) {
    let text = security_document(schemes(), Value::Null, op_security);
    let err = from_openapi(&text, &StarterOptions::default()).unwrap_err();
    assert_eq!(err.pointer, pointer, "{err}");
    assert!(err.message.contains(message), "{err}");
}

#[rstest]
#[case::template_inside_a_segment("/files/{name}.json", true)]
#[case::trailing_slash("/files/", true)]
#[case::space("/my files", true)]
#[case::dash_in_a_parameter_name("/orders/{order-id}", false)]
#[case::root("/", false)]
fn paths_the_policy_cannot_express_are_skipped_with_a_warning(
    #[case] path: &str,
    #[case] skipped: bool,
) {
    let doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "Files", "version": "1"},
        "paths": {
            path: {"get": {"security": [], "responses": {"200": {"description": "ok"}}}},
            "/health": {"get": {"security": [], "responses": {"200": {"description": "ok"}}}}
        }
    });
    let starter = from_openapi(&doc.to_string(), &StarterOptions::default()).unwrap();
    let rules = starter.policy.spec.rules();
    assert_eq!(rules.len(), if skipped { 1 } else { 2 }, "{rules:#?}");
    assert_eq!(
        starter.warnings.len(),
        usize::from(skipped),
        "{:?}",
        starter.warnings
    );
    if path == "/orders/{order-id}" {
        assert!(
            rules
                .iter()
                .any(|r| r.route.paths == ["/orders/{order_id}"])
        );
    }
    assert_valid(&starter.policy, path);
}

#[test]
fn more_than_64_operations_are_grouped_per_path() {
    let mut paths = serde_json::Map::new();
    for i in 0..40 {
        let op = || json!({"security": [], "responses": {"200": {"description": "ok"}}});
        paths.insert(format!("/items{i}"), json!({"get": op(), "put": op()}));
    }
    let doc =
        json!({"openapi": "3.1.0", "info": {"title": "Many", "version": "1"}, "paths": paths});
    let starter = from_openapi(&doc.to_string(), &StarterOptions::default()).unwrap();
    let rules = starter.policy.spec.rules();
    assert_eq!(rules.len(), 40);
    assert!(
        rules.iter().all(|r| r.route.methods == ["GET", "PUT"]),
        "{rules:#?}"
    );
    assert_eq!(starter.warnings, vec![]);
    assert_valid(&starter.policy, "many");
}

#[test]
fn more_than_64_paths_are_grouped_by_security_keeping_overlaps_apart() {
    let op = |scope: &str| json!({"get": {"security": [{"oauth": [scope]}], "responses": {"200": {"description": "ok"}}}});
    let mut paths = serde_json::Map::new();
    for i in 0..100 {
        paths.insert(
            format!("/items{i}"),
            op(if i % 2 == 0 { "even" } else { "odd" }),
        );
    }
    // Overlapping routes of different scopes stay separate rules, the literal one first.
    paths.insert("/users/{userId}".into(), op("users:read"));
    paths.insert("/users/me".into(), op("even"));
    let doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "Many", "version": "1"},
        "components": {"securitySchemes": schemes()},
        "paths": paths
    });
    let starter = from_openapi(&doc.to_string(), &StarterOptions::default()).unwrap();
    assert_eq!(starter.warnings, vec![]);
    let rules = starter.policy.spec.rules();
    let covered: usize = rules.iter().map(|r| r.route.paths.len()).sum();
    assert_eq!(covered, 102);
    assert!(rules.len() <= 10, "{rules:#?}");
    let me = rules.iter().position(|r| r.route.paths == ["/users/me"]);
    let user = rules
        .iter()
        .position(|r| r.route.paths == ["/users/{userId}"]);
    assert!(me.is_some() && user.is_some() && me < user, "{rules:#?}");
    for rule in rules {
        let scopes = &rule.allow.as_ref().unwrap().scopes;
        if rule.route.paths.iter().any(|p| p.starts_with("/items")) {
            assert!(rule.route.paths.len() <= 16);
            let even = |p: &String| p.trim_start_matches("/items").parse::<u32>().unwrap() % 2 == 0;
            let expected = if even(&rule.route.paths[0]) {
                "even"
            } else {
                "odd"
            };
            assert_eq!(scopes, &[expected]);
            assert!(
                rule.route
                    .paths
                    .iter()
                    .all(|p| even(p) == (expected == "even"))
            );
        }
    }
    assert_valid(&starter.policy, "many");
}

#[rstest]
#[case::not_yaml("{not json", "", "invalid JSON")]
#[case::not_openapi("apiVersion: v1\nkind: Service\n", "/openapi", "missing")]
#[case::swagger_2(
    "swagger: '2.0'\ninfo: {title: x, version: '1'}\npaths: {}\n",
    "/openapi",
    "missing"
)]
#[case::unsupported_version(
    "openapi: 4.0.0\npaths: {}\n",
    "/openapi",
    "unsupported OpenAPI version"
)]
#[case::no_paths(
    "openapi: 3.1.0\ninfo: {title: x, version: '1'}\n",
    "/paths",
    "no paths"
)]
#[case::empty_paths("openapi: 3.1.0\npaths: {}\n", "/paths", "no paths")]
#[case::no_operations(
    "openapi: 3.1.0\npaths: {/x: {summary: nothing}}\n",
    "/paths",
    "no operations"
)]
#[case::bad_ref(
    "openapi: 3.1.0\npaths: {/x: {get: {responses: {'200': {$ref: '#/components/responses/Nope'}}}}}\n",
    "/paths/~1x/get/responses/200",
    "does not exist"
)]
fn a_document_that_cannot_be_used_is_an_error_at_its_pointer(
    #[case] text: &str,
    #[case] pointer: &str,
    #[case] message: &str,
) {
    let err = from_openapi(text, &StarterOptions::default()).unwrap_err();
    assert_eq!(err.pointer, pointer, "{err}");
    assert!(err.message.contains(message), "{err}");
}

/// Random documents made of OpenAPI's own keys (so that generation gets past the version check
/// often), with random values in between.
fn arb_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "openapi",
            "paths",
            "security",
            "components",
            "securitySchemes",
            "get",
            "post",
            "type",
            "in",
            "name",
            "scheme",
            "responses",
            "servers",
            "url",
            "operationId",
            "$ref",
        ])
        .prop_map(str::to_string),
        "/[a-z{}._-]{0,8}(/[a-z{}]{0,5})?",
        "[a-zA-Z:]{1,6}",
    ]
    .boxed();
    let leaf = prop_oneof![
        prop::sample::select(vec![
            Value::Null,
            json!(true),
            json!(7),
            json!("3.1.0"),
            json!("3.0.3"),
            json!("oauth2"),
            json!("openIdConnect"),
            json!("apiKey"),
            json!("header"),
            json!("http"),
            json!("bearer"),
            json!("https://api.example.com/v1"),
            json!("#/components/securitySchemes/a"),
            json!([]),
            json!({}),
        ]),
        "[ -~]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An operation's `security`: absent, or alternatives over the schemes `a`, `b`, `c` (and
/// `d`, which no document declares).
fn arb_security() -> impl Strategy<Value = Option<Value>> {
    let requirement = prop::collection::btree_map(
        prop::sample::select(vec!["a", "b", "c", "d"]),
        prop::collection::vec("[a-z:]{1,4}", 0..3),
        0..3,
    )
    .prop_map(|m| json!(m));
    prop::option::of(prop::collection::vec(requirement, 0..3).prop_map(Value::Array))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// No document panics the generator, and whatever it generates passes the policy's own
    /// validation and prints.
    #[test]
    fn random_documents_never_panic(mut doc in arb_value(), version in prop_oneof![Just("3.0.3"), Just("3.1.0")]) {
        if let Value::Object(map) = &mut doc {
            map.insert("openapi".into(), json!(version));
        }
        for text in [doc.to_string(), serde_saphyr::to_string(&doc).unwrap_or_default()] {
            if let Ok(starter) = from_openapi(&text, &StarterOptions::default()) {
                prop_assert_eq!(validate_spec(&starter.policy.spec), vec![]);
                prop_assert!(starter.policy.validate_cel().is_ok());
                prop_assert!(starter.to_yaml().is_ok());
            }
        }
    }

    /// Well-formed documents with random paths, schemes and requirements (so that most reach
    /// the mapping): a policy that passes validation, or an error; every operation is either
    /// covered by a rule or named in a warning.
    #[test]
    fn random_security_documents_map_or_warn(
        paths in prop::collection::btree_map(
            "/[a-z]{1,3}(/(\\{[a-z-]{1,3}\\}|[a-z]{1,3}|[a-z]\\{x\\}))?",
            prop::collection::btree_map(
                prop::sample::select(vec!["get", "put", "post", "delete", "patch"]),
                (arb_security(), prop::option::of("[a-zA-Z_ ]{0,8}")),
                1..3,
            ),
            1..8,
        ),
        doc_security in prop::option::of(arb_security()),
        schemes in prop::collection::btree_map(
            prop::sample::select(vec!["a", "b", "c"]),
            prop::sample::select(vec![
                json!({"type": "oauth2", "flows": {}}),
                json!({"type": "openIdConnect", "openIdConnectUrl": "https://idp.example/.well-known/openid-configuration"}),
                json!({"type": "http", "scheme": "bearer"}),
                json!({"type": "http", "scheme": "basic"}),
                json!({"type": "apiKey", "in": "header", "name": "X-Key"}),
                json!({"type": "apiKey", "in": "header", "name": "X-Other"}),
                json!({"type": "apiKey", "in": "query", "name": "k"}),
                json!({"type": "mutualTLS"}),
            ]),
            0..4,
        ),
    ) {
        let mut doc_paths = serde_json::Map::new();
        let mut operations = 0;
        for (path, ops) in &paths {
            let mut item = serde_json::Map::new();
            for (method, (security, operation_id)) in ops {
                let mut op = json!({"responses": {"200": {"description": "ok"}}});
                if let Some(security) = security {
                    op["security"] = security.clone();
                }
                if let Some(id) = operation_id {
                    op["operationId"] = json!(id);
                }
                item.insert(method.to_string(), op);
                operations += 1;
            }
            doc_paths.insert(path.clone(), Value::Object(item));
        }
        let mut doc = json!({
            "openapi": "3.1.0",
            "info": {"title": "Random", "version": "1"},
            "components": {"securitySchemes": schemes},
            "paths": doc_paths,
        });
        if let Some(security) = doc_security.flatten() {
            doc["security"] = security;
        }
        if let Ok(starter) = from_openapi(&doc.to_string(), &StarterOptions::default()) {
            prop_assert_eq!(validate_spec(&starter.policy.spec), vec![]);
            prop_assert!(starter.policy.validate_cel().is_ok());
            let covered: usize = starter
                .policy
                .spec
                .rules()
                .iter()
                .map(|r| r.route.methods.len() * r.route.paths.len())
                .sum();
            let skipped = starter
                .warnings
                .iter()
                .filter(|w| w.message.contains("skipped"))
                .count();
            prop_assert_eq!(covered + skipped, operations, "{:?}", starter.warnings);
        }
    }

    /// Random path templates: a template either becomes a valid policy path or is a warning.
    #[test]
    fn random_paths_are_expressed_or_warned(path in "/[a-zA-Z0-9{}._~ *%-]{0,10}(/[a-z{}_-]{0,6}){0,3}") {
        let doc = json!({
            "openapi": "3.1.0",
            "info": {"title": "P", "version": "1"},
            "paths": {path.clone(): {"get": {"security": [], "responses": {"200": {"description": "ok"}}}}}
        });
        match from_openapi(&doc.to_string(), &StarterOptions::default()) {
            Ok(starter) => {
                prop_assert_eq!(validate_spec(&starter.policy.spec), vec![]);
                prop_assert_eq!(starter.policy.spec.rules().len(), 1);
            }
            Err(e) => prop_assert!(!e.message.is_empty()),
        }
    }
}

fn apiguard(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_apiguard"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run apiguard");
    let mut input = child.stdin.take().unwrap();
    // A process that fails before reading its stdin closes the pipe: that is its answer.
    let _ = input.write_all(stdin.unwrap_or_default());
    drop(input);
    child.wait_with_output().expect("apiguard output")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn cli_prints_a_policy_that_lints_clean() {
    let out = apiguard(
        &[
            "policy",
            "from-openapi",
            ORDERS,
            "--namespace",
            "shop",
            "--service",
            "orders",
            "--port",
            "http",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let yaml = String::from_utf8(out.stdout.clone()).unwrap();
    let (_, policy) = parse_output(&yaml);
    assert_eq!(policy.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(policy.spec.target.service, "orders");
    assert_valid(&policy, "the CLI's policy");
    // The placeholders are named on stderr too (the output usually goes to a pipe).
    assert!(
        stderr(&out).contains("note: JWT provider \"shopAuth\""),
        "{}",
        stderr(&out)
    );

    let lint = apiguard(&["lint", "-", "--format", "json"], Some(yaml.as_bytes()));
    let report: Value = serde_json::from_slice(&lint.stdout).unwrap_or_else(|e| {
        panic!(
            "lint output is not JSON ({e}): {}",
            String::from_utf8_lossy(&lint.stdout)
        )
    });
    let denies: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "deny")
        .collect();
    assert_eq!(denies, Vec::<&Value>::new(), "{report:#}");
    assert_eq!(report["errors"], json!([]), "{report:#}");
    assert_eq!(lint.status.code(), Some(0), "{report:#}");
}

#[test]
fn cli_reads_stdin_and_warns_about_skipped_operations() {
    let doc = "openapi: 3.0.3\ninfo: {title: Files, version: '1'}\npaths:\n  /files/{name}.json:\n    get: {security: [], responses: {'200': {description: ok}}}\n  /health:\n    get: {security: [], responses: {'200': {description: ok}}}\n";
    let out = apiguard(&["policy", "from-openapi", "-"], Some(doc.as_bytes()));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "warning: -: /paths/~1files~1{name}.json/get: the path cannot be a policy route"
        ),
        "{err}"
    );
    assert!(err.contains("skipped"), "{err}");
}

#[rstest]
#[case::unreadable_file(&["policy", "from-openapi", "no/such/file.yaml"], None, "no/such/file.yaml: cannot read")]
#[case::not_openapi(&["policy", "from-openapi", "crds/apiguard.dev_apisecuritypolicies.yaml"], None, "crds/apiguard.dev_apisecuritypolicies.yaml: /openapi: missing")]
#[case::no_paths(&["policy", "from-openapi", "-"], Some("openapi: 3.1.0\ninfo: {title: x, version: '1'}\n"), "-: /paths: no paths")]
#[case::unsupported_version(&["policy", "from-openapi", "-"], Some("openapi: 2.0.0\n"), "-: /openapi: unsupported OpenAPI version")]
#[case::bad_name(&["policy", "from-openapi", ORDERS, "--name", "Orders_API"], None, "--name \"Orders_API\"")]
#[case::bad_port(&["policy", "from-openapi", ORDERS, "--port", "70000"], None, "--port 70000")]
fn cli_bad_input_exits_2_naming_the_file_and_pointer(
    #[case] args: &[&str],
    #[case] stdin: Option<&str>,
    #[case] message: &str,
) {
    let out = apiguard(args, stdin.map(str::as_bytes));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "nothing printed on error");
    let err = stderr(&out);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(message), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
