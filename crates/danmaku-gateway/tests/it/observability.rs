//! What an operator reads: `/metrics` (OpenMetrics text) and
//! `/api/stats`, both from the one registry, typed as clients decode them.

use danmaku_gateway::StatsResponse;
use danmaku_proto::{RejectCode, ServerEvent};

use crate::support::{http_request, TestGateway};

/// The value of one sample line of a Prometheus text document.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_and_stats_count_posts_rejects_and_connections_from_one_registry() {
    let gw = TestGateway::start(crate::support::settings()).await;
    let mut a = gw.join("m").await;
    let _b = gw.join("m").await;
    a.post("hello").await;
    loop {
        match a.next_event().await {
            ServerEvent::Ack { .. } => break,
            ServerEvent::Danmaku(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    a.post("   ").await;
    loop {
        match a.next_event().await {
            ServerEvent::Reject { code, .. } => {
                assert_eq!(code, RejectCode::Empty);
                break;
            }
            ServerEvent::Danmaku(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }

    let (status, text) = http_request(
        gw.addr,
        "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(sample(&text, "danmaku_connections"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "danmaku_rooms"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "danmaku_posts_accepted_total"), Some(1.0));
    assert_eq!(
        sample(&text, "danmaku_posts_rejected_total{code=\"empty\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "danmaku_posts_rejected_total{code=\"rate_limited\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "danmaku_comments_fanned_out_total"),
        Some(1.0)
    );
    assert!(sample(&text, "danmaku_frames_pushed_total").unwrap() >= 2.0);
    // The time from post to fan-out and the flush sizes, once per comment
    // and per flush; frames written to sockets (the hello, the ack and the
    // comment at least).
    assert_eq!(
        sample(&text, "danmaku_post_to_fanout_seconds_count"),
        Some(1.0),
        "{text}"
    );
    assert!(sample(&text, "danmaku_post_to_fanout_seconds_sum").unwrap() < 5.0);
    assert_eq!(sample(&text, "danmaku_batch_items_count"), Some(1.0));
    assert_eq!(sample(&text, "danmaku_batch_items_sum"), Some(1.0));
    assert!(sample(&text, "danmaku_frames_written_total").unwrap() >= 3.0);
    // Moderation actions by kind and build info are there from the start.
    assert_eq!(
        sample(&text, "danmaku_moderation_actions_total{action=\"recall\"}"),
        Some(0.0)
    );
    assert!(text.contains("danmaku_build_info{"), "{text}");
    // The bus's counters are in the same registry.
    assert!(text.contains("danmaku_bus_"), "{text}");
    // Every metric has its HELP and TYPE, and counters end in _total.
    for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
        let parts: Vec<&str> = line.split(' ').collect();
        assert!(parts[2].starts_with("danmaku_"), "{line}");
        if parts[3] == "counter" {
            assert!(
                text.contains(&format!("{}_total", parts[2])),
                "{line} has no _total sample"
            );
        }
    }

    let stats: StatsResponse = serde_json::from_value(gw.get_json("/api/stats").await).unwrap();
    assert_eq!(stats.connections, 2);
    assert_eq!((stats.posts_accepted, stats.posts_rejected), (1, 1));
    assert_eq!(stats.comments_fanned_out, 1);
    assert!(stats.max_queued_frames >= 1);
}

/// The `Content-Type` of a `/metrics` answer to a request with `accept`.
async fn metrics_content_type(gw: &TestGateway, accept: Option<&str>) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    let request = format!("GET /metrics HTTP/1.1\r\nHost: t\r\n{accept}Connection: close\r\n\r\n");
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap();
    (content_type, body.to_owned())
}

/// Prometheus asks for OpenMetrics and must be told it got OpenMetrics:
/// its parser of the older text format refuses the `info` type of
/// `danmaku_build_info` and marks the target down (seen in the compose
/// stack before this was fixed).
#[tokio::test]
async fn metrics_say_openmetrics_to_a_scraper_that_asks_for_it() {
    let gw = TestGateway::start(crate::support::settings()).await;
    // What Prometheus 2.42 sends.
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (content_type, body) = metrics_content_type(&gw, Some(prometheus)).await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(body.contains("# TYPE danmaku_build info"), "{body}");
    assert!(
        body.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    let (content_type, _) = metrics_content_type(&gw, None).await;
    assert_eq!(
        content_type, "text/plain; charset=utf-8",
        "browsers show it"
    );
    gw.stop().await.unwrap();
}
