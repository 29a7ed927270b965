//! The gateway's Kubernetes objects: ConfigMap `<policy>-apiguard` (plain files), Secret
//! `<policy>-apiguard-secrets` (private keys, API keys), Deployment and Service
//! `<policy>-apiguard`. Labelled `app.kubernetes.io/managed-by: apiguard` and
//! `apiguard.dev/policy: <name>`, owned by the policy; the controller server-side applies them.

use super::{RenderError, RenderOptions, RenderedGateway, envoy, policy_ref};
use crate::api::ApiSecurityPolicy;
use crate::api::names::annotations::{BOOTSTRAP_HASH, CONFIG_HASH};
use crate::api::names::labels::{COMPONENT, MANAGED_BY, MANAGED_BY_VALUE, POLICY};
use crate::sensor::config::{
    IDENTITY_CA_FILE, IDENTITY_CERT_FILE, IDENTITY_KEY_FILE, SENSOR_ADMIN_PORT, SENSOR_CONFIG_FILE,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapProjection, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, SeccompProfile,
    Secret, SecretKeySelector, SecretProjection, SecurityContext, Service, ServicePort,
    ServiceSpec, TCPSocketAction, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use std::collections::BTreeMap;

/// Labels of every object generated for the policy.
pub fn labels(policy: &ApiSecurityPolicy) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
        (
            POLICY.to_string(),
            policy.metadata.name.clone().unwrap_or_default(),
        ),
    ])
}

/// Labels that select the gateway's pods (the Deployment's selector and NetworkPolicy peers).
pub(crate) fn gateway_pod_labels(policy: &ApiSecurityPolicy) -> BTreeMap<String, String> {
    let mut l = labels(policy);
    l.insert(COMPONENT.to_string(), "gateway".to_string());
    l
}

/// The policy as owner (controller) of generated objects; None for a policy not read from a
/// cluster (no uid), e.g. in `apiguard render`.
pub(crate) fn owner_reference(policy: &ApiSecurityPolicy) -> Option<OwnerReference> {
    policy.controller_owner_ref(&())
}

pub(crate) fn meta(policy: &ApiSecurityPolicy, name: String, component: &str) -> ObjectMeta {
    let mut labels = labels(policy);
    labels.insert(COMPONENT.to_string(), component.to_string());
    ObjectMeta {
        name: Some(name),
        namespace: policy.metadata.namespace.clone(),
        labels: Some(labels),
        owner_references: owner_reference(policy).map(|o| vec![o]),
        ..Default::default()
    }
}

/// All gateway objects of a rendered policy.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayObjects {
    pub config_map: ConfigMap,
    pub secret: Secret,
    pub deployment: Deployment,
    pub service: Service,
}

/// The ConfigMap, Secret, Deployment and Service of a rendered policy's gateway.
pub(crate) fn gateway_objects(
    policy: &ApiSecurityPolicy,
    rendered: &RenderedGateway,
    options: &RenderOptions,
) -> Result<GatewayObjects, RenderError> {
    check_one_files_directory(policy, options)?;
    Ok(GatewayObjects {
        config_map: gateway_config_map(policy, rendered),
        secret: gateway_secret(policy, rendered),
        deployment: gateway_deployment(policy, rendered, options),
        service: gateway_service(policy),
    })
}

/// One projected volume holds the ConfigMap's and the Secret's files: the kubelet swaps it as a
/// whole, so a renewal never shows Envoy a new certificate next to an old key (two volumes are
/// updated one after the other, and Envoy would reject or miss the change). So the options must
/// put both kinds of files in one directory.
fn check_one_files_directory(
    policy: &ApiSecurityPolicy,
    options: &RenderOptions,
) -> Result<(), RenderError> {
    if options.config_dir != options.secret_dir {
        return Err(RenderError::Invalid {
            policy: policy_ref(policy),
            field: "options".into(),
            message: format!(
                "config ({}) and secret ({}) files must share one directory in a Deployment (one projected volume, swapped atomically on renewal)",
                options.config_dir, options.secret_dir
            ),
        });
    }
    Ok(())
}

/// ConfigMap `<policy>-apiguard`: the plain files, annotated with the config hash.
fn gateway_config_map(policy: &ApiSecurityPolicy, rendered: &RenderedGateway) -> ConfigMap {
    let mut metadata = meta(policy, policy.gateway_name(), "gateway");
    metadata.annotations = Some(BTreeMap::from([(
        CONFIG_HASH.to_string(),
        rendered.config_hash.clone(),
    )]));
    ConfigMap {
        metadata,
        data: Some(rendered.config_files()),
        ..Default::default()
    }
}

/// Secret `<policy>-apiguard-secrets`: private keys and API keys.
fn gateway_secret(policy: &ApiSecurityPolicy, rendered: &RenderedGateway) -> Secret {
    Secret {
        metadata: meta(policy, policy.gateway_secrets_name(), "gateway"),
        type_: Some("Opaque".into()),
        data: Some(
            rendered
                .secret_files()
                .into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// Hash of the bootstrap file alone: a pod template annotation, so a changed bootstrap (which
/// Envoy reads only at start) rolls the pods.
fn bootstrap_hash(rendered: &RenderedGateway) -> String {
    super::hash_files(
        rendered
            .files
            .get(envoy::BOOTSTRAP_FILE)
            .map(|f| (envoy::BOOTSTRAP_FILE, f.contents.as_str()))
            .into_iter(),
    )
}

/// Deployment `<policy>-apiguard`: the Envoy pods.
fn gateway_deployment(
    policy: &ApiSecurityPolicy,
    rendered: &RenderedGateway,
    options: &RenderOptions,
) -> Deployment {
    let pod_labels = gateway_pod_labels(policy);
    Deployment {
        metadata: meta(policy, policy.gateway_name(), "gateway"),
        spec: Some(DeploymentSpec {
            replicas: Some(options.replicas),
            selector: LabelSelector {
                match_labels: Some(pod_labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        BOOTSTRAP_HASH.to_string(),
                        bootstrap_hash(rendered),
                    )])),
                    ..Default::default()
                }),
                spec: Some(gateway_pod_spec(policy, rendered, options)),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The gateway pod: no service account token, no service links, non-root, one Envoy container,
/// and the sensor sidecar when the gateway has a `sensor.yaml`.
fn gateway_pod_spec(
    policy: &ApiSecurityPolicy,
    rendered: &RenderedGateway,
    options: &RenderOptions,
) -> PodSpec {
    let mut containers = vec![envoy_container(options)];
    let mut volumes = vec![files_volume(policy, rendered), tmp_volume()];
    if rendered.files.contains_key(SENSOR_CONFIG_FILE) {
        let pushes = pushes_inventory(rendered);
        let mut sensor = sensor_container(options, pushes);
        sensor
            .env
            .get_or_insert_with(Vec::new)
            .extend(shared_state_env(policy, rendered, options));
        if sensor.env.as_ref().is_some_and(Vec::is_empty) {
            sensor.env = None;
        }
        containers.push(sensor);
        volumes.push(sensor_volume(policy, pushes, rendered));
    }
    PodSpec {
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            // The volume's group: Envoy (uid/gid 101) reads the 0440 files.
            fs_group: Some(101),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        containers,
        volumes: Some(volumes),
        ..Default::default()
    }
}

/// The Envoy container: serves `bootstrap.yaml` of the files directory on port `https`.
fn envoy_container(options: &RenderOptions) -> Container {
    Container {
        name: "envoy".into(),
        image: Some(options.envoy_image.clone()),
        args: Some(vec![
            "-c".into(),
            format!("{}/{}", options.config_dir, envoy::BOOTSTRAP_FILE),
            "--disable-hot-restart".into(),
            "--log-level".into(),
            "info".into(),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("https".into()),
            container_port: i32::from(options.listen_port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(https_probe(1)),
        liveness_probe: Some(https_probe(10)),
        security_context: Some(envoy_security_context()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "gateway".into(),
                mount_path: options.config_dir.clone(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..Default::default()
            },
        ]),
        ..Default::default()
    }
}

/// The sensor's uid and gid (the operator image's `nonroot` user). It reads its 0440 files
/// (`sensor.yaml`, and the workload identity when it pushes its inventory) through the pod's
/// fsGroup (101, Envoy's gid), which the kubelet adds to every container's groups and gives
/// the volume's files.
const SENSOR_UID: i64 = 65532;
/// The name of the sensor's admin port (probes, metrics).
const SENSOR_ADMIN_PORT_NAME: &str = "sensor-admin";

/// Whether the sensor pushes its inventory: the workload identity files were rendered.
fn pushes_inventory(rendered: &RenderedGateway) -> bool {
    [IDENTITY_CERT_FILE, IDENTITY_KEY_FILE, IDENTITY_CA_FILE]
        .iter()
        .all(|f| rendered.files.contains_key(*f))
}

/// The sensor sidecar: `apiguard sensor` on `sensor.yaml`, gRPC on the loopback address Envoy
/// calls, the admin port (probes, metrics) on the pod IP. When it pushes its inventory, its pod
/// name (`POD_NAME`, from the downward API) names the reporter.
fn sensor_container(options: &RenderOptions, pushes: bool) -> Container {
    let probe = |path: &str, initial: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(SENSOR_ADMIN_PORT_NAME.into()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(initial),
        period_seconds: Some(10),
        ..Default::default()
    };
    let mut security = envoy_security_context();
    security.run_as_user = Some(SENSOR_UID);
    security.run_as_group = Some(SENSOR_UID);
    Container {
        name: "sensor".into(),
        image: Some(options.sensor_image.clone()),
        args: Some(vec![
            "sensor".into(),
            "--config".into(),
            format!("{}/{SENSOR_CONFIG_FILE}", options.sensor_config_dir),
            "--listen".into(),
            options.sensor_address.clone(),
            "--admin-addr".into(),
            format!("0.0.0.0:{SENSOR_ADMIN_PORT}"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some(SENSOR_ADMIN_PORT_NAME.into()),
            container_port: i32::from(SENSOR_ADMIN_PORT),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(probe("/readyz", 1)),
        liveness_probe: Some(probe("/healthz", 10)),
        resources: Some(options.sensor_resources.clone()),
        env: pushes.then(|| {
            vec![EnvVar {
                name: "POD_NAME".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.name".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]
        }),
        security_context: Some(security),
        volume_mounts: Some(vec![VolumeMount {
            name: "sensor".into(),
            mount_path: options.sensor_config_dir.clone(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The sensor's Redis (`options.shared_state`): `APIGUARD_REDIS_URL`, `APIGUARD_REDIS_CA_FILE`
/// (the ConfigMap's [`envoy::REDIS_CA_FILE`], beside `sensor.yaml`) with a private CA, and
/// `APIGUARD_REDIS_PASSWORD` from the gateway Secret's [`envoy::REDIS_PASSWORD_FILE`] key.
fn shared_state_env(
    policy: &ApiSecurityPolicy,
    rendered: &RenderedGateway,
    options: &RenderOptions,
) -> Vec<EnvVar> {
    let Some(shared) = &options.shared_state else {
        return Vec::new();
    };
    let mut env = vec![EnvVar {
        name: "APIGUARD_REDIS_URL".into(),
        value: Some(shared.url.clone()),
        ..Default::default()
    }];
    // The files the sensor's volume holds beside sensor.yaml: each variable names its path.
    for (name, file) in [
        (crate::sensor::REDIS_CA_FILE_ENV, envoy::REDIS_CA_FILE),
        (
            crate::sensor::REDIS_CLIENT_CERT_ENV,
            envoy::REDIS_CLIENT_CERT_FILE,
        ),
        (
            crate::sensor::REDIS_CLIENT_KEY_ENV,
            envoy::REDIS_CLIENT_KEY_FILE,
        ),
    ] {
        if rendered.files.contains_key(file) {
            env.push(EnvVar {
                name: name.into(),
                value: Some(format!("{}/{file}", options.sensor_config_dir)),
                ..Default::default()
            });
        }
    }
    if rendered.files.contains_key(envoy::REDIS_PASSWORD_FILE) {
        env.push(EnvVar {
            name: crate::sensor::REDIS_PASSWORD_ENV.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: policy.gateway_secrets_name(),
                    key: envoy::REDIS_PASSWORD_FILE.into(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    env
}

/// Volume `sensor`: only `sensor.yaml` of the ConfigMap (and `redis-ca.crt` when the operator
/// has a Redis CA; the sensor never sees the gateway's
/// serving or upstream keys). When it pushes its inventory, a projected volume of `sensor.yaml`,
/// `identity.crt` and `identity-ca.crt` from the ConfigMap and `identity.key` from the Secret
/// (swapped as a whole on renewal, like the gateway's files).
fn sensor_volume(policy: &ApiSecurityPolicy, pushes: bool, rendered: &RenderedGateway) -> Volume {
    let item = |name: &str| KeyToPath {
        key: name.into(),
        path: name.into(),
        ..Default::default()
    };
    let has = |name: &str| rendered.files.contains_key(name);
    let mut config_items = vec![item(SENSOR_CONFIG_FILE)];
    let mut secret_items = Vec::new();
    if has(envoy::REDIS_CA_FILE) {
        config_items.push(item(envoy::REDIS_CA_FILE));
    }
    if pushes {
        config_items.extend([item(IDENTITY_CERT_FILE), item(IDENTITY_CA_FILE)]);
        secret_items.push(item(IDENTITY_KEY_FILE));
    }
    if has(envoy::REDIS_CLIENT_KEY_FILE) {
        secret_items.extend([
            item(envoy::REDIS_CLIENT_CERT_FILE),
            item(envoy::REDIS_CLIENT_KEY_FILE),
        ]);
    }
    if secret_items.is_empty() {
        return Volume {
            name: "sensor".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: policy.gateway_name(),
                default_mode: Some(0o440),
                items: Some(config_items),
                ..Default::default()
            }),
            ..Default::default()
        };
    }
    Volume {
        name: "sensor".into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o440),
            sources: Some(vec![
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: policy.gateway_name(),
                        items: Some(config_items),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    secret: Some(SecretProjection {
                        name: policy.gateway_secrets_name(),
                        items: Some(secret_items),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
        }),
        ..Default::default()
    }
}

/// A TCP probe of the `https` port every 10 seconds, starting after `initial` seconds.
fn https_probe(initial: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String("https".into()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(initial),
        period_seconds: Some(10),
        ..Default::default()
    }
}

/// Envoy as uid/gid 101, read-only root, no privilege escalation, no capabilities.
fn envoy_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(101),
        run_as_group: Some(101),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        privileged: Some(false),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Volume `gateway`: the ConfigMap's and the Secret's files projected into one volume (see
/// [`check_one_files_directory`]); the sensor's Redis credentials (password, client key) are
/// left out.
fn files_volume(policy: &ApiSecurityPolicy, rendered: &RenderedGateway) -> Volume {
    let sensor_only = |k: &str| envoy::SENSOR_ONLY_SECRET_FILES.contains(&k);
    let secret_items = rendered.files.keys().any(|k| sensor_only(k)).then(|| {
        rendered
            .secret_files()
            .into_keys()
            .filter(|k| !sensor_only(k))
            .map(|k| KeyToPath {
                key: k.clone(),
                path: k,
                ..Default::default()
            })
            .collect()
    });
    Volume {
        name: "gateway".into(),
        projected: Some(ProjectedVolumeSource {
            // Owner root, group fsGroup (Envoy's): keys readable by Envoy and nobody else.
            default_mode: Some(0o440),
            sources: Some(
                std::iter::once(VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: policy.gateway_name(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                // An empty `items` would project every key: no projection instead.
                .chain(
                    (secret_items.as_ref().is_none_or(|i: &Vec<_>| !i.is_empty())).then(|| {
                        VolumeProjection {
                            secret: Some(SecretProjection {
                                name: policy.gateway_secrets_name(),
                                items: secret_items,
                                ..Default::default()
                            }),
                            ..Default::default()
                        }
                    }),
                )
                .collect(),
            ),
        }),
        ..Default::default()
    }
}

/// Volume `tmp`: the writable `/tmp` of a read-only root filesystem.
fn tmp_volume() -> Volume {
    Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

/// Service `<policy>-apiguard`: port 443 (`https`), or 80 (`http`) when TLS is disabled, to the
/// gateway pods' `https` port.
fn gateway_service(policy: &ApiSecurityPolicy) -> Service {
    let tls = !policy.spec.tls().is_disabled();
    Service {
        metadata: meta(policy, policy.gateway_name(), "gateway"),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(gateway_pod_labels(policy)),
            ports: Some(vec![ServicePort {
                name: Some(if tls { "https" } else { "http" }.into()),
                port: if tls { 443 } else { 80 },
                target_port: Some(IntOrString::String("https".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::tests::example;

    #[test]
    fn gateway_objects_split_secrets_and_carry_labels_and_owner() {
        let mut f = example("partner-api-mtls-apikeys.yaml");
        f.policy.metadata.uid = Some("1234".into());
        let g = f.render().expect("render");
        let o = gateway_objects(&f.policy, &g, &f.options).expect("objects");
        assert_eq!(
            o.config_map.metadata.name.as_deref(),
            Some("partner-settlements-apiguard")
        );
        assert_eq!(
            o.secret.metadata.name.as_deref(),
            Some("partner-settlements-apiguard-secrets")
        );
        let cm = o.config_map.data.expect("data");
        assert!(cm.contains_key("bootstrap.yaml") && !cm.contains_key("server.key"));
        let secret = o.secret.data.expect("data");
        assert!(secret.contains_key("server.key") && secret.contains_key("apikeys.json"));
        for meta in [
            &o.config_map.metadata,
            &o.secret.metadata,
            &o.deployment.metadata,
            &o.service.metadata,
        ] {
            let labels = meta.labels.clone().expect("labels");
            assert_eq!(labels.get(MANAGED_BY).map(String::as_str), Some("apiguard"));
            assert_eq!(
                labels.get(POLICY).map(String::as_str),
                Some("partner-settlements")
            );
            let owner = &meta.owner_references.as_ref().expect("owner")[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
                ("ApiSecurityPolicy", "1234", Some(true))
            );
        }
        let pod = o.deployment.spec.expect("spec").template.spec.expect("pod");
        let c = &pod.containers[0];
        let sc = c.security_context.clone().expect("security context");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
        assert_eq!(c.image.as_deref(), Some(f.options.envoy_image.as_str()));
    }

    #[test]
    fn config_and_secret_are_one_projected_volume_readable_by_envoy_only() {
        let f = example("partner-api-mtls-apikeys.yaml");
        let g = f.render().expect("render");
        let o = gateway_objects(&f.policy, &g, &f.options).expect("objects");
        let pod = o.deployment.spec.expect("spec").template.spec.expect("pod");
        let mounts = pod.containers[0].volume_mounts.clone().expect("mounts");
        let gateway = mounts.iter().find(|m| m.name == "gateway").expect("mount");
        assert_eq!(gateway.mount_path, f.options.config_dir);
        assert_eq!(gateway.read_only, Some(true));
        assert_eq!(mounts.len(), 2, "the gateway volume and /tmp: {mounts:?}");
        let volumes = pod.volumes.expect("volumes");
        let projected = volumes
            .iter()
            .find(|v| v.name == "gateway")
            .and_then(|v| v.projected.clone())
            .expect("projected volume");
        assert_eq!(projected.default_mode, Some(0o440));
        let sources = projected.sources.expect("sources");
        assert_eq!(
            sources[0].config_map.as_ref().map(|c| c.name.as_str()),
            o.config_map.metadata.name.as_deref()
        );
        assert_eq!(
            sources[1].secret.as_ref().map(|s| s.name.as_str()),
            o.secret.metadata.name.as_deref()
        );
        let psc = pod.security_context.expect("pod security context");
        let envoy_gid = pod.containers[0]
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_group);
        assert_eq!(psc.fs_group, envoy_gid, "the 0440 files' group is Envoy's");

        // Two directories would be two volumes, updated one after the other: refused.
        let mut split = f.options.clone();
        split.secret_dir = "/etc/apiguard/secrets".into();
        let e = gateway_objects(&f.policy, &g, &split)
            .unwrap_err()
            .to_string();
        assert!(e.contains("one projected volume"), "{e}");
    }

    #[test]
    fn no_owner_without_uid() {
        let f = example("bola-user-orders.yaml");
        let g = f.render().expect("render");
        let o = gateway_objects(&f.policy, &g, &f.options).expect("objects");
        assert_eq!(o.config_map.metadata.owner_references, None);
    }

    /// The sensor container and its volume of a rendered example.
    fn sensor_parts(f: &crate::render::tests::Fixture) -> (Container, Volume, PodSpec) {
        let g = f.render().expect("render");
        let o = gateway_objects(&f.policy, &g, &f.options).expect("objects");
        let pod = o.deployment.spec.expect("spec").template.spec.expect("pod");
        let sensor = pod
            .containers
            .iter()
            .find(|c| c.name == "sensor")
            .cloned()
            .expect("sensor container");
        let volume = pod
            .volumes
            .as_ref()
            .and_then(|v| v.iter().find(|v| v.name == "sensor").cloned())
            .expect("sensor volume");
        (sensor, volume, pod)
    }

    #[test]
    fn a_redis_ca_is_in_the_config_map_beside_the_sensors_config() {
        let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let mut f = example("bola-user-orders.yaml");
        f.options.shared_state = Some(crate::render::SharedStateOptions {
            url: "rediss://redis.data:6379".into(),
            password: None,
            ca_pem: Some(ca.into()),
            client_identity: None,
        });
        let g = f.render().expect("render");
        let o = gateway_objects(&f.policy, &g, &f.options).expect("objects");
        let data = o.config_map.data.as_ref().expect("data");
        assert_eq!(data[envoy::REDIS_CA_FILE], ca);
        let (sensor, volume, _) = sensor_parts(&f);
        let env = sensor.env.expect("env");
        let path = env
            .iter()
            .find(|e| e.name == crate::sensor::REDIS_CA_FILE_ENV)
            .and_then(|e| e.value.clone());
        assert_eq!(
            path,
            Some(format!(
                "{}/{}",
                f.options.sensor_config_dir,
                envoy::REDIS_CA_FILE
            ))
        );
        let items: Vec<String> = volume
            .config_map
            .and_then(|c| c.items)
            .into_iter()
            .flatten()
            .chain(
                volume
                    .projected
                    .and_then(|p| p.sources)
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.config_map?.items)
                    .flatten(),
            )
            .map(|i| i.key)
            .collect();
        assert!(
            items.iter().any(|k| k == envoy::REDIS_CA_FILE),
            "the sensor's volume holds the CA: {items:?}"
        );
        // Without a CA: no file, no variable.
        f.options.shared_state.as_mut().expect("set").ca_pem = None;
        let g = f.render().expect("render");
        assert!(!g.files.contains_key(envoy::REDIS_CA_FILE));
        let (sensor, _, _) = sensor_parts(&f);
        assert!(
            sensor
                .env
                .expect("env")
                .iter()
                .all(|e| e.name != crate::sensor::REDIS_CA_FILE_ENV)
        );
    }

    #[test]
    fn a_redis_client_certificate_is_in_the_secret_for_the_sensor_only() {
        let mut f = example("bola-user-orders.yaml");
        f.options.shared_state = Some(crate::render::SharedStateOptions {
            url: "rediss://redis.data:6380".into(),
            client_identity: Some(crate::shared_state::ClientIdentity {
                cert_pem: b"CLIENT-CERT".to_vec(),
                key_pem: b"CLIENT-KEY".to_vec(),
            }),
            ..Default::default()
        });
        let g = f.render().expect("render");
        let o = gateway_objects(&f.policy, &g, &f.options).expect("objects");
        let secret = o.secret.data.as_ref().expect("data");
        assert_eq!(
            secret[envoy::REDIS_CLIENT_CERT_FILE].0,
            b"CLIENT-CERT".to_vec()
        );
        assert_eq!(
            secret[envoy::REDIS_CLIENT_KEY_FILE].0,
            b"CLIENT-KEY".to_vec()
        );
        let config_map = serde_json::to_string(&o.config_map).expect("json");
        assert!(!config_map.contains("CLIENT-KEY"), "never in the ConfigMap");
        let (sensor, volume, pod) = sensor_parts(&f);
        let env = sensor.env.expect("env");
        let value = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
        };
        let dir = &f.options.sensor_config_dir;
        assert_eq!(
            value(crate::sensor::REDIS_CLIENT_CERT_ENV),
            Some(format!("{dir}/{}", envoy::REDIS_CLIENT_CERT_FILE))
        );
        assert_eq!(
            value(crate::sensor::REDIS_CLIENT_KEY_ENV),
            Some(format!("{dir}/{}", envoy::REDIS_CLIENT_KEY_FILE))
        );
        // The sensor's volume projects both from the Secret, beside sensor.yaml.
        let sources = volume
            .projected
            .expect("projected")
            .sources
            .expect("sources");
        let from_secret: Vec<String> = sources
            .iter()
            .filter_map(|s| s.secret.as_ref()?.items.clone())
            .flatten()
            .map(|i| i.key)
            .collect();
        assert!(
            from_secret.contains(&envoy::REDIS_CLIENT_CERT_FILE.to_owned())
                && from_secret.contains(&envoy::REDIS_CLIENT_KEY_FILE.to_owned()),
            "{from_secret:?}"
        );
        // Envoy's projection lists the Secret's keys but these.
        let envoy_items: Vec<String> = pod
            .volumes
            .expect("volumes")
            .into_iter()
            .find(|v| v.name == "gateway")
            .and_then(|v| v.projected?.sources)
            .into_iter()
            .flatten()
            .filter_map(|s| s.secret?.items)
            .flatten()
            .map(|i| i.key)
            .collect();
        assert!(!envoy_items.is_empty());
        assert!(
            envoy_items
                .iter()
                .all(|k| !envoy::SENSOR_ONLY_SECRET_FILES.contains(&k.as_str())),
            "{envoy_items:?}"
        );
    }

    #[test]
    fn the_sensor_gets_redis_by_env_and_the_password_from_the_secret_only() {
        let mut f = example("bola-user-orders.yaml");
        f.options.shared_state = Some(crate::render::SharedStateOptions {
            url: "redis://redis.data:6379".into(),
            password: Some("s3cret-pw".into()),
            ca_pem: None,
            client_identity: None,
        });
        let g = f.render().expect("render");
        let o = gateway_objects(&f.policy, &g, &f.options).expect("objects");
        let secret = o.secret.data.as_ref().expect("data");
        assert_eq!(
            secret[envoy::REDIS_PASSWORD_FILE].0,
            b"s3cret-pw".to_vec(),
            "the password is in the gateway Secret"
        );
        let plain = serde_json::to_string(&o.config_map).expect("json");
        assert!(!plain.contains("s3cret-pw"), "never in the ConfigMap");
        let (sensor, _, pod) = sensor_parts(&f);
        let env = sensor.env.expect("env");
        let url = env
            .iter()
            .find(|e| e.name == "APIGUARD_REDIS_URL")
            .expect("url");
        assert_eq!(url.value.as_deref(), Some("redis://redis.data:6379"));
        let password = env
            .iter()
            .find(|e| e.name == crate::sensor::REDIS_PASSWORD_ENV)
            .expect("password");
        assert_eq!(password.value, None);
        let from = password
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("secretKeyRef");
        assert_eq!(from.name, f.policy.gateway_secrets_name());
        assert_eq!(from.key, envoy::REDIS_PASSWORD_FILE);
        assert!(
            !serde_json::to_string(&sensor.args)
                .expect("json")
                .contains("s3cret-pw"),
            "never in an argument"
        );
        // Envoy's projection lists the Secret's keys but the password.
        let envoy_volume = pod
            .volumes
            .expect("volumes")
            .into_iter()
            .find(|v| v.name == "gateway")
            .expect("gateway volume");
        let items: Vec<String> = envoy_volume
            .projected
            .expect("projected")
            .sources
            .expect("sources")
            .into_iter()
            .filter_map(|s| s.secret)
            .flat_map(|s| s.items.expect("items listed"))
            .map(|i| i.key)
            .collect();
        assert!(!items.is_empty());
        assert!(
            !items.iter().any(|k| k == envoy::REDIS_PASSWORD_FILE),
            "{items:?}"
        );
        // Without Redis, nothing changes: no env, the whole Secret projected.
        let f = example("bola-user-orders.yaml");
        let (sensor, _, _) = sensor_parts(&f);
        assert!(
            sensor
                .env
                .is_none_or(|e| e.iter().all(|e| !e.name.contains("REDIS")))
        );
    }

    #[test]
    fn the_pushing_sensor_mounts_its_identity_with_the_key_from_the_secret() {
        let mut f = example("bola-user-orders.yaml");
        f.options.discovery_report = Some(crate::render::DiscoveryReportOptions {
            url: "https://apiguard.apiguard-system.svc/v1/discovery".into(),
            interval_seconds: 30,
        });
        let (sensor, volume, pod) = sensor_parts(&f);
        let projected = volume.projected.expect("a projected volume");
        assert_eq!(projected.default_mode, Some(0o440));
        let sources = projected.sources.expect("sources");
        let items = |i: &Option<Vec<KeyToPath>>| -> Vec<(String, String)> {
            i.iter()
                .flatten()
                .map(|k| (k.key.clone(), k.path.clone()))
                .collect()
        };
        let cm = sources[0].config_map.as_ref().expect("the ConfigMap");
        assert_eq!(cm.name, "orders-apiguard");
        assert_eq!(
            items(&cm.items),
            [
                ("sensor.yaml".to_string(), "sensor.yaml".to_string()),
                ("identity.crt".into(), "identity.crt".into()),
                ("identity-ca.crt".into(), "identity-ca.crt".into()),
            ]
        );
        let secret = sources[1].secret.as_ref().expect("the Secret");
        assert_eq!(secret.name, "orders-apiguard-secrets");
        assert_eq!(
            items(&secret.items),
            [("identity.key".to_string(), "identity.key".to_string())],
            "only the workload key: never the serving or upstream keys"
        );
        assert_eq!(sources.len(), 2);
        // The files (owner root, group fsGroup, 0440) are readable by the sensor through the
        // fsGroup the kubelet adds to its groups.
        let sc = sensor.security_context.expect("security context");
        assert_eq!(sc.run_as_user, Some(SENSOR_UID));
        let fs_group = pod.security_context.and_then(|s| s.fs_group);
        assert_eq!(fs_group, Some(101));
        assert_ne!(sc.run_as_group, fs_group, "read by group, not by owner");
        let env = sensor.env.expect("env");
        assert_eq!(env.len(), 1);
        assert_eq!(env[0].name, "POD_NAME");
        let field = env[0]
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .expect("from the downward API");
        assert_eq!(field.field_path, "metadata.name");
        assert_eq!(
            sensor.volume_mounts.expect("mounts")[0].mount_path,
            f.options.sensor_config_dir
        );
    }

    #[test]
    fn without_the_push_the_sensor_sees_only_sensor_yaml() {
        let f = example("bola-user-orders.yaml");
        let (sensor, volume, _) = sensor_parts(&f);
        assert!(volume.projected.is_none());
        let cm = volume.config_map.expect("the ConfigMap only");
        let keys: Vec<String> = cm.items.iter().flatten().map(|k| k.key.clone()).collect();
        assert_eq!(keys, ["sensor.yaml"]);
        assert_eq!(cm.default_mode, Some(0o440));
        assert_eq!(sensor.env, None);
    }
}
