//! The two small Lua programs of the gateway.
//!
//! Envoy 1.40's RBAC CEL cannot build strings (`'/users/' + sub`), so the object-level
//! ownership check (path parameter == claim) runs in Lua, configured per route through route
//! metadata. Lua also records the request's decision for the access log.

/// Name of the ownership/decision filter; its route metadata lives under this key.
pub(crate) const AUTHZ_FILTER: &str = "apiguard.authz";
/// Name of the filter that fills in the decision of requests denied before `AUTHZ_FILTER`.
pub(crate) const OUTCOME_FILTER: &str = "apiguard.outcome";

/// Runs after jwt_authn and rbac. Route metadata: `owner_segment` (1-based path segment of
/// the owner parameter), `owner_claim`, `audit` (record instead of deny).
pub(crate) const AUTHZ: &str = r#"
function envoy_on_request(handle)
  local meta = handle:metadata()
  local info = handle:streamInfo():dynamicMetadata()
  local audit = meta:get("audit") == true
  local reasons = {}
  local segment = meta:get("owner_segment")
  if segment ~= nil then
    local claim = meta:get("owner_claim")
    local jwt = info:get("envoy.filters.http.jwt_authn")
    local value = nil
    if jwt ~= nil and jwt["payload"] ~= nil then
      value = jwt["payload"][claim]
    end
    local path = string.gsub(handle:headers():get(":path") or "", "%?.*$", "")
    local index, found = 0, nil
    for part in string.gmatch(path, "[^/]+") do
      index = index + 1
      if index == segment then
        found = part
      end
    end
    if type(value) ~= "string" or found == nil or found ~= value then
      table.insert(reasons, "ownership")
    end
  end
  if audit then
    local rbac = info:get("envoy.filters.http.rbac")
    if rbac ~= nil then
      for key, value in pairs(rbac) do
        if string.find(key, "shadow_engine_result", 1, true) and value == "denied" then
          table.insert(reasons, "authorization")
          break
        end
      end
    end
  end
  if #reasons == 0 then
    info:set("apiguard", "decision", "allow")
  elseif audit then
    info:set("apiguard", "decision", "audit-deny:" .. table.concat(reasons, ","))
  else
    info:set("apiguard", "decision", "deny:" .. table.concat(reasons, ","))
    handle:respond({[":status"] = "403", ["content-type"] = "text/plain"}, "forbidden\n")
  end
end
"#;

/// Runs first, on the response only: a request that never reached `AUTHZ_FILTER` was answered
/// by an earlier filter or a direct response (401, 403, 404, 413, 415, 429, CORS preflight).
pub(crate) const OUTCOME: &str = r#"
function envoy_on_request(handle)
end
function envoy_on_response(handle)
  local info = handle:streamInfo():dynamicMetadata()
  local m = info:get("apiguard")
  if m == nil or m["decision"] == nil then
    local status = tonumber(handle:headers():get(":status")) or 0
    if status >= 400 then
      info:set("apiguard", "decision", "deny")
    else
      info:set("apiguard", "decision", "allow")
    end
  end
end
"#;
