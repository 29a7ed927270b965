//! The user's first minutes, on a real node: the chart installed as a user does (operator pods
//! Running and Ready, leader election between the two replicas, the webhook called by the
//! apiserver through its Service), an insecure Ingress refused, then a policy and its target
//! Deployment: the gateway pods (Envoy and the sensor sidecar) Running and Ready, and HTTPS
//! through the gateway Service: public route 200, no token 401, wrong scope 403, valid token
//! 200 with the target seeing the mTLS hop from the gateway's identity, a body breaking the
//! OpenAPI contract refused by the sensor; the sensors' discovery and runtime detection
//! reported to the operator (PolicyReport, status, Events).

use serde_json::{Value, json};

use crate::support::envoy::Request;
use crate::support::node::{RELEASE_NS, is_ready, node_cluster, serial};
use crate::workload;

#[test]
fn the_chart_runs_the_operator_and_a_policy_gets_a_working_gateway() {
    let _serial = serial();
    let cluster = node_cluster();

    // The operator: two replicas Running and Ready, one holding the controller Lease.
    let operators = cluster.ready_pods(RELEASE_NS, "app.kubernetes.io/name=apiguard", 2);
    let names: Vec<&str> = operators
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    let holder = crate::support::tools::wait_until(
        std::time::Duration::from_secs(60),
        "a holder of the controller Lease",
        || {
            let lease = cluster.get(RELEASE_NS, "lease", "apiguard-controller")?;
            lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
        },
    );
    assert!(
        names.contains(&holder.as_str()),
        "the Lease holder {holder} is not an operator pod {names:?}"
    );
    for pod in &operators {
        let image = pod["spec"]["containers"][0]["image"].as_str().unwrap();
        assert!(
            image.starts_with("ghcr.io/apiguard/apiguard:"),
            "the operator runs {image}, not the chart's image"
        );
    }
    // The webhook is the in-cluster Service, not a URL.
    let vwc = cluster
        .get("", "validatingwebhookconfiguration", "apiguard")
        .expect("the chart's webhook configuration");
    let client = &vwc["webhooks"][0]["clientConfig"];
    assert!(client["url"].is_null(), "{client}");
    assert_eq!(client["service"]["namespace"], RELEASE_NS, "{client}");

    // An insecure Ingress is refused by the in-cluster webhook.
    let ns = cluster.namespace("journey-ingress");
    let example =
        crate::support::tools::root().join("examples/insecure/APG001-cors-wildcard-origin.yaml");
    let text = std::fs::read_to_string(&example).unwrap();
    let mut ingress = apiguard::manifest::parse_str("APG001", &text)
        .unwrap()
        .remove(0)
        .object;
    ingress["metadata"]["namespace"] = Value::from(ns.name.as_str());
    let refused = cluster
        .cp
        .kubectl_with_stdin(["apply", "-f", "-"], &ingress.to_string());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        !refused.status.success() && text.contains("APG001"),
        "the insecure Ingress was not refused naming APG001: {text}"
    );

    // A policy and its target: the gateway pods run Envoy and the sensor, both Ready.
    // A runtime detector (alert only): 3 requests under /v1/admin/ from one client.
    let api = workload::deploy(
        cluster,
        "journey",
        json!({"runtime": {"detectors": [{
            "name": "admin-probing",
            "match": {"paths": ["/v1/admin/*"]},
            "threshold": {"count": 3, "window": "5m"},
        }]}}),
    );
    for pod in api.gateway_pods() {
        let (names, images): (Vec<&str>, Vec<&str>) = pod["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap(), c["image"].as_str().unwrap()))
            .unzip();
        assert_eq!(names, ["envoy", "sensor"], "{pod}");
        assert_eq!(images[0], cluster.envoy_image);
        assert!(
            images[1].starts_with("ghcr.io/apiguard/apiguard:"),
            "{images:?}"
        );
        assert!(is_ready(&pod));
        let statuses = pod["status"]["containerStatuses"].as_array().unwrap();
        assert!(
            statuses.iter().all(|s| s["ready"] == true),
            "a container is not ready: {statuses:#?}"
        );
    }

    // HTTPS through the gateway Service.
    let public = api.call(&Request::get("/public/catalog")).unwrap();
    assert_eq!(public.status, 200, "{}", public.text());
    let echo: Value = public.json();
    assert_eq!(echo["path"], "/public/catalog");
    assert_eq!(
        echo["peer"]["uris"],
        json!([api.gateway_spiffe_id()]),
        "the target did not see the gateway's identity on the mTLS hop: {echo}"
    );
    let anonymous = api.call(&Request::get("/orders")).unwrap();
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    let wrong_scope = api
        .call(&Request::get("/orders").bearer(&api.token("profile:read")))
        .unwrap();
    assert_eq!(wrong_scope.status, 403, "{}", wrong_scope.text());
    let allowed = api
        .call(&Request::get("/orders").bearer(&api.token("orders:read")))
        .unwrap();
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    assert_eq!(
        allowed.json()["peer"]["uris"],
        json!([api.gateway_spiffe_id()])
    );

    // The sensor sidecar enforces the contract: a valid body passes, an undeclared property
    // (mass assignment) is refused with problem+json, and the target never sees it.
    let writer = api.token("orders:write");
    let valid = api
        .call(
            &Request::post("/orders")
                .bearer(&writer)
                .json(r#"{"item":"book","quantity":2}"#),
        )
        .unwrap();
    assert_eq!(valid.status, 200, "{}", valid.text());
    assert_eq!(valid.json()["body"], r#"{"item":"book","quantity":2}"#);
    let mass_assignment = api
        .call(
            &Request::post("/orders")
                .bearer(&writer)
                .json(r#"{"item":"book","price":0}"#),
        )
        .unwrap();
    assert_eq!(mass_assignment.status, 400, "{}", mass_assignment.text());
    assert_eq!(
        mass_assignment.header("content-type"),
        Some("application/problem+json"),
        "{mass_assignment:?}"
    );
    assert!(
        mass_assignment.text().contains("/price"),
        "the problem does not locate the property: {}",
        mass_assignment.text()
    );

    // Discovery: each gateway pod's sensor learned what its Envoy served, from the access log
    // stream (its admin port on the pod IP, as the kubelet's probes reach it).
    let _ = api.call(&Request::get("/v1/admin/export")).unwrap();
    let pods = api.gateway_pods();
    crate::support::tools::wait_until(
        std::time::Duration::from_secs(30),
        "the gateway pods' inventories hold every request made",
        || {
            let mut orders_get = 0;
            let mut shadow = false;
            for pod in &pods {
                let ip = pod["status"]["podIP"].as_str()?;
                let inventory = inventory_of(ip)?;
                for e in inventory["endpoints"].as_array()? {
                    if e["method"] == "GET" && e["path"] == "/orders" {
                        assert_eq!(e["declared"], true, "{e}");
                        orders_get += e["requests"].as_u64()?;
                    }
                    shadow |= e["path"] == "/v1/admin/export" && e["declared"] == false;
                }
            }
            // GET /orders: anonymous, wrong scope, allowed (and the readiness probe's own
            // calls went to /public/ready).
            (orders_get >= 3 && shadow).then_some(())
        },
    );

    // The sensors pushed their inventories to the operator through its Service, over mTLS
    // with the gateway's certificate (the chart's report interval is 5 s here): the policy's
    // PolicyReport names the shadow endpoint, its status counts it, one Event announces it.
    let report_name = format!("apiguard-{}", workload::POLICY);
    let shadow = crate::support::tools::wait_until(
        std::time::Duration::from_secs(90),
        "the policy's PolicyReport with the shadow endpoint",
        || {
            let report = cluster.get(api.ns(), "policyreport", &report_name)?;
            report["results"]
                .as_array()?
                .iter()
                .find(|r| {
                    r["rule"] == "shadow-endpoint" && r["properties"]["path"] == "/v1/admin/export"
                })
                .cloned()
        },
    );
    assert_eq!(shadow["result"], "fail", "{shadow}");
    let policy = cluster
        .get(api.ns(), "apisecuritypolicy", workload::POLICY)
        .unwrap();
    let discovery = &policy["status"]["discovery"];
    assert!(
        discovery["undeclared"].as_i64() >= Some(1) && discovery["endpoints"].as_i64() >= Some(2),
        "{discovery}"
    );
    let events = cluster.cp.kubectl_ok([
        "get",
        "events",
        "-n",
        api.ns(),
        "--field-selector",
        "reason=ShadowEndpoint",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert_eq!(
        events.matches("GET /v1/admin/export").count(),
        1,
        "one Event for the shadow endpoint, from both replicas' pushes: {events}"
    );

    // Runtime detection in the pods: 6 probes of /v1/admin/ over two gateway replicas (one
    // of them sees at least 3) make its sensor detect the client; the push brings it to the
    // operator: one AbuseDetected Event on the policy, counted in status.runtime.
    for _ in 0..6 {
        let _ = api.call(&Request::get("/v1/admin/export")).unwrap();
    }
    let detected = crate::support::tools::wait_until(
        std::time::Duration::from_secs(90),
        "an AbuseDetected Event for the admin probing",
        || {
            let events = cluster.cp.kubectl_ok([
                "get",
                "events",
                "-n",
                api.ns(),
                "--field-selector",
                "reason=AbuseDetected",
                "-o",
                "jsonpath={.items[*].message}",
            ]);
            events.contains("admin-probing").then_some(events)
        },
    );
    assert_eq!(
        detected.matches("admin-probing").count(),
        1,
        "one Event per detector and client: {detected}"
    );
    let policy = cluster
        .get(api.ns(), "apisecuritypolicy", workload::POLICY)
        .unwrap();
    assert!(
        policy["status"]["runtime"]["detections"].as_i64() >= Some(1),
        "{}",
        policy["status"]
    );
}

/// `GET http://IP:9003/inventory` of a gateway pod's sensor.
fn inventory_of(ip: &str) -> Option<Value> {
    let out = std::process::Command::new("curl")
        .args(["-fsS", "-m", "5", &format!("http://{ip}:9003/inventory")])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}
