//! The Envoy bootstrap (node, admin, file-based LDS/CDS sources, overload manager) and the
//! self-contained static bootstrap that `envoy --mode validate` runs on.

use super::types::*;
use super::{API_KEYS_FILE, BOOTSTRAP_FILE, CDS_FILE, Ctx, LDS_FILE};
use crate::render::RenderedGateway;
use serde_json::json;
use std::collections::BTreeMap;

pub(super) fn build_bootstrap(ctx: &Ctx<'_>) -> Bootstrap {
    let o = ctx.opts();
    let meta = &ctx.input.policy.metadata;
    let source = |path: String, dir: &str| ConfigSource {
        path_config_source: PathConfigSource {
            path,
            watched_directory: WatchedDirectory {
                path: dir.trim_end_matches('/').to_string(),
            },
        },
        resource_api_version: "V3",
    };
    Bootstrap {
        node: Node {
            id: format!(
                "apiguard~{}~{}",
                meta.namespace.as_deref().unwrap_or("default"),
                meta.name.as_deref().unwrap_or("")
            ),
            cluster: "apiguard-gateway".into(),
        },
        admin: Admin {
            address: socket(&o.admin_address, o.admin_port),
        },
        dynamic_resources: DynamicResources {
            lds_config: source(ctx.config_path(LDS_FILE), &o.config_dir),
            cds_config: source(ctx.config_path(CDS_FILE), &o.config_dir),
        },
        overload_manager: OverloadManager {
            resource_monitors: vec![ResourceMonitor {
                name: "envoy.resource_monitors.global_downstream_max_connections",
                typed_config: Any::DownstreamConnectionsConfig(DownstreamConnectionsConfig {
                    max_active_downstream_connections: 50_000,
                }),
            }],
        },
    }
}

pub(super) fn socket(address: &str, port: u16) -> Address {
    Address {
        socket_address: SocketAddress {
            address: address.to_string(),
            port_value: port,
        },
    }
}

/// A self-contained bootstrap with the listener, clusters and extension configs of `gateway`
/// inlined as static resources: `envoy --mode validate` checks file-based dynamic resources
/// only when they are static, so this is what validation runs on. Not for serving.
pub fn static_bootstrap(gateway: &RenderedGateway) -> Result<String, String> {
    use serde_json::Value;
    let file = |name: &str| -> Result<Value, String> {
        let f = gateway
            .files
            .get(name)
            .ok_or_else(|| format!("the rendered gateway has no {name}"))?;
        if name.ends_with(".yaml") {
            serde_saphyr::from_str(&f.contents).map_err(|e| format!("{name}: {e}"))
        } else {
            serde_json::from_str(&f.contents).map_err(|e| format!("{name}: {e}"))
        }
    };
    let resources = |v: Value| -> Vec<Value> {
        match v.get("resources") {
            Some(Value::Array(items)) => items
                .iter()
                .cloned()
                .map(|mut r| {
                    if let Some(o) = r.as_object_mut() {
                        o.remove("@type");
                    }
                    r
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    let mut extensions = BTreeMap::new();
    if gateway.files.contains_key(API_KEYS_FILE) {
        for ext in resources(file(API_KEYS_FILE)?) {
            if let (Some(Value::String(name)), Some(config)) =
                (ext.get("name"), ext.get("typed_config"))
            {
                extensions.insert(name.clone(), config.clone());
            }
        }
    }
    let mut listeners = resources(file(LDS_FILE)?);
    fn inline_discovery(v: &mut Value, ext: &BTreeMap<String, Value>) {
        match v {
            Value::Object(o) => {
                if o.contains_key("config_discovery")
                    && let Some(Value::String(name)) = o.get("name")
                    && let Some(config) = ext.get(name)
                {
                    let config = config.clone();
                    o.remove("config_discovery");
                    o.insert("typed_config".into(), config);
                }
                for child in o.values_mut() {
                    inline_discovery(child, ext);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|c| inline_discovery(c, ext)),
            _ => {}
        }
    }
    for l in &mut listeners {
        inline_discovery(l, &extensions);
    }
    let clusters = resources(file(CDS_FILE)?);
    let mut bootstrap = file(BOOTSTRAP_FILE)?;
    let o = bootstrap
        .as_object_mut()
        .ok_or_else(|| "bootstrap is not an object".to_string())?;
    o.remove("dynamic_resources");
    o.insert(
        "static_resources".into(),
        json!({"listeners": listeners, "clusters": clusters}),
    );
    serde_json::to_string_pretty(&bootstrap).map_err(|e| e.to_string())
}
