//! The JSON access log format.

use crate::api::Audit;
use crate::render::CLIENT_ID_HEADER;
use std::collections::BTreeMap;

/// The JSON access log line: who, what, when, which rule, and the decision (`audit_mode`: the
/// policy is in `mode: Audit`).
pub fn access_log_format(audit: &Audit, audit_mode: bool) -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        f.insert(k.to_string(), v.to_string());
    };
    put("time", "%START_TIME%");
    put("client", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%");
    put("method", "%REQ(:METHOD)%");
    put("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%");
    put("authority", "%REQ(:AUTHORITY)%");
    put("rule", "%ROUTE_NAME%");
    put("status", "%RESPONSE_CODE%");
    put(
        "subject",
        "%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:payload:sub)%",
    );
    put("client_id", &format!("%REQ({CLIENT_ID_HEADER})%"));
    put("client_cert", "%DOWNSTREAM_PEER_URI_SAN%");
    put("decision", &super::decision::decision_format(audit_mode));
    put("reason", "%RESPONSE_CODE_DETAILS%");
    put("response_flags", "%RESPONSE_FLAGS%");
    put("duration_ms", "%DURATION%");
    put("request_id", "%REQ(X-REQUEST-ID)%");
    // Discovery (`apiguard discover`) counts the media types each endpoint answers with.
    put("response_content_type", "%RESP(CONTENT-TYPE)%");
    for c in &audit.include_claims {
        put(
            &format!("claim_{c}"),
            &format!("%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:payload:{c})%"),
        );
    }
    f
}
