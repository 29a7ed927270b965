//! The runtime intake's pure core: which detections and anomalies are announced, once, across
//! gateway replicas, repeated pushes and operator restarts; `status.runtime`; bad reports.

use super::*;
use crate::detect::KeyLabel;

const MIN: i64 = 60_000;
/// 2027-01-15T08:00:00Z.
const T0: i64 = 1_800_000_000_000;
const TTL: i64 = 15 * MIN;

fn block(detector: &str, key: &str, at: i64, lasts: i64) -> Detection {
    Detection {
        detector: detector.into(),
        key: key.into(),
        key_kind: KeyLabel::ClientIp,
        key_name: None,
        action: Action::Block,
        count: 20,
        distinct: None,
        window_seconds: 60,
        at_ms: at,
        blocked_until_ms: Some(at + lasts),
    }
}

fn alert(detector: &str, key: &str, at: i64) -> Detection {
    Detection {
        detector: detector.into(),
        key: key.into(),
        key_kind: KeyLabel::Claim,
        key_name: Some("sub".into()),
        action: Action::Alert,
        count: 50,
        distinct: Some("userId".into()),
        window_seconds: 300,
        at_ms: at,
        blocked_until_ms: None,
    }
}

fn anomaly(endpoint: &str, at: i64) -> Anomaly {
    Anomaly {
        endpoint: endpoint.into(),
        factor: 10.2,
        rate_per_minute: 407.3,
        baseline_per_minute: 40.1,
        minutes: 3,
        at_ms: at,
    }
}

fn report(detections: Vec<Detection>, anomalies: Vec<Anomaly>) -> RuntimeReport {
    let active_blocks = detections
        .iter()
        .filter(|d| d.blocked_until_ms.is_some())
        .filter_map(Detection::active_block)
        .collect();
    RuntimeReport {
        detections,
        anomalies,
        active_blocks,
    }
}

fn take(m: &mut RuntimeMemory, reporter: &str, r: &RuntimeReport, now: i64) -> RuntimeTaken {
    m.take(reporter, Some(r), now, TTL, 64)
}

fn reasons(t: &RuntimeTaken) -> Vec<&str> {
    t.announce.iter().map(|a| a.reason.as_str()).collect()
}

#[test]
fn a_block_seen_by_two_replicas_and_pushed_again_is_announced_once() {
    let mut m = RuntimeMemory::default();
    let a = block("login-stuffing", "203.0.113.7", T0, 15 * MIN);
    // The other replica blocked the same client 4 s later.
    let b = block("login-stuffing", "203.0.113.7", T0 + 4_000, 15 * MIN);
    let first = take(&mut m, "gw-0", &report(vec![a.clone()], vec![]), T0 + 1_000);
    assert_eq!(reasons(&first), [BLOCK_EVENT_REASON]);
    assert_eq!(first.active_blocks, 1);
    let note = &first.announce[0].note;
    assert!(
        note.contains("login-stuffing") && note.contains("203.0.113.7"),
        "{note}"
    );
    assert!(
        note.contains("blocked until 2027-01-15T08:15:00Z"),
        "{note}"
    );

    let second = take(&mut m, "gw-1", &report(vec![b], vec![]), T0 + 5_000);
    assert!(second.announce.is_empty(), "{second:?}");
    assert_eq!(
        second.active_blocks, 1,
        "one detector and key across replicas"
    );
    // The same recent list, pushed again (and again after a minute).
    for now in [T0 + 30_000, T0 + 90_000] {
        let again = take(&mut m, "gw-0", &report(vec![a.clone()], vec![]), now);
        assert!(again.announce.is_empty(), "{again:?}");
        assert_eq!(again.active_blocks, 1);
    }
}

#[test]
fn a_block_after_the_last_one_ended_is_a_new_incident() {
    let mut m = RuntimeMemory::default();
    let first = block("login-stuffing", "203.0.113.7", T0, 15 * MIN);
    let later = block("login-stuffing", "203.0.113.7", T0 + 15 * MIN, 15 * MIN);
    assert_eq!(
        take(&mut m, "gw-0", &report(vec![first.clone()], vec![]), T0)
            .announce
            .len(),
        1
    );
    let t = take(
        &mut m,
        "gw-0",
        &report(vec![first, later], vec![]),
        T0 + 15 * MIN + 1_000,
    );
    assert_eq!(reasons(&t), [BLOCK_EVENT_REASON]);
    assert_eq!(t.announce[0].at, T0 + 15 * MIN);
    // Another key, or another detector on the same key, is another subject.
    let t = take(
        &mut m,
        "gw-0",
        &report(
            vec![
                block("login-stuffing", "198.51.100.9", T0 + 16 * MIN, MIN),
                block("scraping", "203.0.113.7", T0 + 16 * MIN, MIN),
            ],
            vec![],
        ),
        T0 + 16 * MIN,
    );
    assert_eq!(t.announce.len(), 2);
}

#[test]
fn an_alert_lasts_its_window_and_shows_the_hash_it_was_given() {
    let mut m = RuntimeMemory::default();
    let key = "sha256:2bd806c97f0e00af";
    let a = alert("bola", key, T0);
    let t = take(&mut m, "gw-0", &report(vec![a.clone()], vec![]), T0 + 2_000);
    assert_eq!(reasons(&t), [ABUSE_EVENT_REASON]);
    assert_eq!(t.announce[0].until, T0 + 300_000);
    assert_eq!(t.active_blocks, 0);
    let note = &t.announce[0].note;
    assert!(
        note.contains(key) && note.contains("distinct userId"),
        "{note}"
    );
    // Within the window, the other replica's alert of the key is the same incident.
    let t = take(
        &mut m,
        "gw-1",
        &report(vec![alert("bola", key, T0 + 200_000)], vec![]),
        T0 + 201_000,
    );
    assert!(t.announce.is_empty());
    // After it, a new one.
    let t = take(
        &mut m,
        "gw-1",
        &report(vec![alert("bola", key, T0 + 300_000)], vec![]),
        T0 + 301_000,
    );
    assert_eq!(reasons(&t), [ABUSE_EVENT_REASON]);
}

#[test]
fn an_anomaly_is_announced_once_per_endpoint_and_names_the_endpoint_and_factor() {
    let mut m = RuntimeMemory::default();
    let at = T0 + 3 * MIN;
    let r = report(vec![], vec![anomaly("GET /v1/orders", at)]);
    let t = take(&mut m, "gw-0", &r, at + 1_000);
    assert_eq!(reasons(&t), [ANOMALY_EVENT_REASON]);
    let note = &t.announce[0].note;
    assert!(
        note.starts_with("GET /v1/orders: traffic 10.2 times its baseline"),
        "{note}"
    );
    assert!(t.announce.iter().all(|a| !a.is_detection()));
    assert!(take(&mut m, "gw-0", &r, at + 30_000).announce.is_empty());
    // The other replica's anomaly of the same surge, a minute later: the same incident.
    let other = report(vec![], vec![anomaly("GET /v1/orders", at + MIN)]);
    assert!(
        take(&mut m, "gw-1", &other, at + 61_000)
            .announce
            .is_empty()
    );
    // Another endpoint: its own.
    let other = report(vec![], vec![anomaly("POST /v1/orders", at + MIN)]);
    assert_eq!(take(&mut m, "gw-1", &other, at + 61_000).announce.len(), 1);
}

#[test]
fn what_fired_long_ago_is_not_announced_when_first_seen() {
    let mut m = RuntimeMemory::default();
    let old_alert = alert("bola", "sha256:2bd806c97f0e00af", T0);
    let t = take(
        &mut m,
        "gw-0",
        &report(vec![old_alert.clone()], vec![]),
        T0 + ANNOUNCE_HORIZON_MS,
    );
    assert!(t.announce.is_empty(), "{t:?}");
    // A block still in force is announced however long ago it started.
    let long_block = block("login-stuffing", "203.0.113.7", T0, 2 * 60 * MIN);
    let t = take(
        &mut m,
        "gw-0",
        &report(vec![long_block], vec![]),
        T0 + 60 * MIN,
    );
    assert_eq!(reasons(&t), [BLOCK_EVENT_REASON]);
    // Just within the horizon: announced.
    let mut m = RuntimeMemory::default();
    let t = take(
        &mut m,
        "gw-0",
        &report(vec![old_alert], vec![]),
        T0 + ANNOUNCE_HORIZON_MS - 1,
    );
    assert_eq!(t.announce.len(), 1);
}

#[test]
fn memory_forgets_incidents_only_once_their_copies_are_stale() {
    let mut m = RuntimeMemory::default();
    let a = alert("bola", "sha256:2bd806c97f0e00af", T0);
    let copy = alert("bola", "sha256:2bd806c97f0e00af", T0 + 250_000);
    assert_eq!(
        take(&mut m, "gw-0", &report(vec![a], vec![]), T0)
            .announce
            .len(),
        1
    );
    assert!(
        take(
            &mut m,
            "gw-1",
            &report(vec![copy.clone()], vec![]),
            T0 + 251_000
        )
        .announce
        .is_empty()
    );
    // The first incident's horizon passed; the copy's has not: still not announced.
    let now = T0 + ANNOUNCE_HORIZON_MS + 1;
    assert!(
        take(&mut m, "gw-1", &report(vec![copy.clone()], vec![]), now)
            .announce
            .is_empty()
    );
    // Past every horizon, the memory is empty and the copy stale.
    let now = T0 + 250_000 + ANNOUNCE_HORIZON_MS;
    assert!(
        take(&mut m, "gw-1", &report(vec![copy], vec![]), now)
            .announce
            .is_empty()
    );
    assert!(m.lasting.is_empty());
}

#[test]
fn a_restarted_intake_seeded_from_the_events_announces_nothing_again() {
    let a = block("login-stuffing", "203.0.113.7", T0, 15 * MIN);
    let b = block("login-stuffing", "203.0.113.7", T0 + 4_000, 15 * MIN);
    let r = report(vec![a], vec![anomaly("GET /v1/orders", T0)]);
    let mut before = RuntimeMemory::default();
    let published = take(&mut before, "gw-0", &r, T0 + 1_000).announce;
    assert_eq!(published.len(), 2);
    // What the Events keep, read back.
    let read_back: Vec<Announcement> = published
        .iter()
        .map(|a| Announcement::from_annotation(&a.annotation()).unwrap())
        .collect();
    for (a, b) in published.iter().zip(&read_back) {
        assert_eq!(
            (&a.reason, &a.subject, a.at, a.until),
            (&b.reason, &b.subject, b.at, b.until)
        );
        assert_eq!(a.id(), b.id(), "the Event name is found again");
    }
    let mut after = RuntimeMemory::default();
    assert!(!after.seeded());
    after.seed(read_back, T0 + 60_000);
    assert!(after.seeded());
    // The other replica's copy reaches the fresh intake first: still the same incident.
    let t = take(&mut after, "gw-1", &report(vec![b], vec![]), T0 + 60_000);
    assert!(t.announce.is_empty(), "{t:?}");
    assert!(
        take(&mut after, "gw-0", &r, T0 + 61_000)
            .announce
            .is_empty()
    );
    assert_eq!(take(&mut after, "gw-0", &r, T0 + 61_000).active_blocks, 1);
}

#[test]
fn the_annotation_is_the_announcement_without_its_note() {
    let a = detection_announcement(&block("login-stuffing", "203.0.113.7", T0, MIN));
    let json: serde_json::Value = serde_json::from_str(&a.annotation()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"reason": "ClientBlocked", "kind": "detection",
            "detector": "login-stuffing", "key": "203.0.113.7", "at": T0, "until": T0 + MIN})
    );
    assert_eq!(a.id().len(), 16);
    assert_ne!(
        a.id(),
        detection_announcement(&block("login-stuffing", "203.0.113.8", T0, MIN)).id()
    );
    assert!(Announcement::from_annotation("not json").is_none());
}

#[test]
fn blocks_in_force_merge_across_replicas_and_drop_when_ended_or_silent() {
    let mut m = RuntimeMemory::default();
    let a = block("login-stuffing", "203.0.113.7", T0, 2 * MIN);
    let b = block("login-stuffing", "198.51.100.9", T0, 20 * MIN);
    assert_eq!(
        take(
            &mut m,
            "gw-0",
            &report(vec![a.clone(), b.clone()], vec![]),
            T0
        )
        .active_blocks,
        2
    );
    assert_eq!(
        take(&mut m, "gw-1", &report(vec![a.clone()], vec![]), T0).active_blocks,
        2
    );
    // a ended (blockedUntil is exclusive: served from then on).
    assert_eq!(
        take(&mut m, "gw-1", &report(vec![a], vec![]), T0 + 2 * MIN).active_blocks,
        1
    );
    // gw-0 now reports no detections at all: its blocks go.
    assert_eq!(m.take("gw-0", None, T0 + 3 * MIN, TTL, 64).active_blocks, 0);
    // A replica silent for longer than the TTL no longer counts.
    let mut m = RuntimeMemory::default();
    take(&mut m, "gw-0", &report(vec![b], vec![]), T0);
    let empty = RuntimeReport::default();
    assert_eq!(take(&mut m, "gw-1", &empty, T0 + TTL).active_blocks, 1);
    assert_eq!(take(&mut m, "gw-1", &empty, T0 + TTL + 1).active_blocks, 0);
}

#[test]
fn status_adds_what_was_published_to_the_stored_counts() {
    let blocked = detection_announcement(&block("login-stuffing", "203.0.113.7", T0 + 500, MIN));
    let alerted = detection_announcement(&alert("bola", "sha256:2bd806c97f0e00af", T0 + 20_000));
    let surged = anomaly_announcement(&anomaly("GET /v1/orders", T0 + 90_000));
    let first = runtime_status(None, &[blocked.clone(), surged.clone()], 1, T0 + 100_000);
    assert_eq!(
        first,
        RuntimeStatus {
            active_blocks: 1,
            detections: 1,
            anomalies: 1,
            last_detection_time: Some("2027-01-15T08:00:00.5Z".into()),
            last_report_time: "2027-01-15T08:01:40Z".into(),
        }
    );
    let second = runtime_status(Some(&first), &[alerted], 0, T0 + 130_000);
    assert_eq!(
        (second.detections, second.anomalies, second.active_blocks),
        (2, 1, 0)
    );
    assert_eq!(
        second.last_detection_time.as_deref(),
        Some("2027-01-15T08:00:20Z")
    );
    // Nothing new: the counts and the last detection stay (compared as times, not text:
    // "…:00.5Z" sorts after "…:00Z" as text).
    let later = runtime_status(Some(&second), &[blocked], 0, T0 + 140_000);
    assert_eq!(
        later.last_detection_time.as_deref(),
        Some("2027-01-15T08:00:20Z")
    );
    let same = runtime_status(Some(&second), &[], 0, T0 + 140_000);
    assert_eq!((same.detections, same.anomalies), (2, 1));
    assert_eq!(same.last_detection_time, second.last_detection_time);
}

#[test]
fn bad_reports_are_refused_naming_the_field() {
    let ok = report(
        vec![
            block("login-stuffing", "203.0.113.7", T0, MIN),
            alert("bola", "sha256:2bd806c97f0e00af", T0),
        ],
        vec![anomaly("GET /v1/orders", T0)],
    );
    assert_eq!(check(&ok), Ok(()));
    let refused = |r: RuntimeReport| check(&r).unwrap_err().to_string();

    let mut r = ok.clone();
    r.detections[1].key = String::new();
    assert_eq!(refused(r), "runtime.detections[1].key: empty");
    let mut r = ok.clone();
    r.detections[0].blocked_until_ms = None;
    assert_eq!(
        refused(r),
        "runtime.detections[0].blockedUntil: missing for action Block"
    );
    let mut r = ok.clone();
    r.detections[1].blocked_until_ms = Some(T0);
    assert_eq!(
        refused(r),
        "runtime.detections[1].blockedUntil: set for action Alert"
    );
    let mut r = ok.clone();
    r.detections[0].detector = "x\ny".into();
    assert_eq!(
        refused(r),
        "runtime.detections[0].detector: holds control characters"
    );
    let mut r = ok.clone();
    r.anomalies[0].endpoint = "G".repeat(513);
    assert_eq!(
        refused(r),
        "runtime.anomalies[0].endpoint: longer than 512 bytes"
    );
    let mut r = ok.clone();
    r.anomalies[0].factor = f64::NAN;
    assert_eq!(
        refused(r),
        "runtime.anomalies[0].factor: NaN is not a finite, non-negative number"
    );
    let mut r = ok.clone();
    r.active_blocks[0].key = String::new();
    assert_eq!(refused(r), "runtime.activeBlocks[0].key: empty");
    let mut r = ok;
    r.detections = (0..101).map(|i| alert("bola", "k", T0 + i)).collect();
    assert_eq!(
        refused(r),
        "runtime.detections: 101 entries, at most 100 are taken"
    );
}

#[test]
fn memory_is_bounded() {
    let mut m = RuntimeMemory::default();
    for chunk in 0..(MAX_REMEMBERED / 100 + 2) {
        let detections = (0..100)
            .map(|i| {
                alert(
                    "bola",
                    &format!("sha256:{chunk:08x}{i:08x}"),
                    T0 + i64::try_from(chunk).unwrap(),
                )
            })
            .collect();
        take(&mut m, "gw-0", &report(detections, vec![]), T0);
    }
    assert_eq!(m.lasting.len(), MAX_REMEMBERED);
}
