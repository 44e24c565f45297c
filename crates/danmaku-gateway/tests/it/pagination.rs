//! `/api/rooms` in pages: `?limit=` (default 100, at most 1000) and an
//! opaque `?cursor=` from the previous page's `next_cursor`, in a stable
//! order (online descending, then room id), with `total_online` and
//! `total_rooms` over every page; bad values get 400 naming the parameter.

use std::collections::HashSet;

use danmaku_gateway::{RoomCount, RoomsResponse};

use crate::support::{eventually, http_get, Client, TestGateway};

async fn page(gw: &TestGateway, query: &str) -> RoomsResponse {
    let (status, body) = http_get(gw.addr, &format!("/api/rooms{query}")).await;
    assert_eq!(status, 200, "{query}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Every page of `limit` rooms, following the cursors.
async fn all_pages(gw: &TestGateway, limit: usize) -> Vec<RoomsResponse> {
    let mut pages = vec![page(gw, &format!("?limit={limit}")).await];
    while let Some(cursor) = pages.last().unwrap().next_cursor.clone() {
        assert!(pages.len() < 1_000, "the cursors end");
        pages.push(page(gw, &format!("?limit={limit}&cursor={cursor}")).await);
    }
    pages
}

#[tokio::test]
async fn rooms_come_in_pages_that_cover_every_room_once_in_order() {
    // More sockets than the per-address cap, all from 127.0.0.1.
    let gw = TestGateway::with(|s| s.max_connections_per_ip = 0).await;
    // 105 rooms: more than a default page. r000..r004 have 3, 2, 2, 1, 1
    // extra viewers, so counts tie and ties go by room id.
    let extra = [3, 2, 2, 1, 1];
    let mut clients: Vec<Client> = Vec::new();
    for i in 0..105 {
        let room = format!("r{i:03}");
        for _ in 0..1 + extra.get(i).copied().unwrap_or(0) {
            clients.push(gw.join(&room).await);
        }
    }
    let total_online = clients.len() as u64;
    let mut expected: Vec<RoomCount> = (0..105)
        .map(|i| RoomCount {
            room: format!("r{i:03}"),
            online: 1 + extra.get(i).copied().unwrap_or(0) as u64,
        })
        .collect();
    expected.sort_by(|a, b| b.online.cmp(&a.online).then_with(|| a.room.cmp(&b.room)));

    // The default page holds 100 rooms and says there is more.
    let first = page(&gw, "").await;
    assert_eq!(first.rooms.len(), 100);
    assert_eq!(first.rooms[..], expected[..100]);
    assert_eq!((first.total_rooms, first.total_online), (105, total_online));
    let rest = page(&gw, &format!("?cursor={}", first.next_cursor.unwrap())).await;
    assert_eq!(rest.rooms[..], expected[100..]);
    assert_eq!(rest.next_cursor, None, "the last page has no cursor");

    // Small pages, followed to the end, list every room once, in order.
    for limit in [1, 3, 7, 50, 104, 105, 1000] {
        let pages = all_pages(&gw, limit).await;
        assert_eq!(pages.len(), 105usize.div_ceil(limit), "limit {limit}");
        for p in &pages {
            assert!(
                p.rooms.len() <= limit && !p.rooms.is_empty(),
                "limit {limit}"
            );
            assert_eq!((p.total_rooms, p.total_online), (105, total_online));
        }
        let listed: Vec<RoomCount> = pages.into_iter().flat_map(|p| p.rooms).collect();
        assert_eq!(listed, expected, "limit {limit}");
    }
    // The last page of an exact fit has no cursor either.
    assert_eq!(page(&gw, "?limit=105").await.next_cursor, None);
    drop(clients);
}

#[tokio::test]
async fn a_cursor_keeps_its_place_when_rooms_before_it_go() {
    // More sockets than the per-address cap, all from 127.0.0.1.
    let gw = TestGateway::with(|s| s.max_connections_per_ip = 0).await;
    let mut rooms: Vec<Vec<Client>> = Vec::new();
    for i in 0..6 {
        let mut viewers = Vec::new();
        for _ in 0..(6 - i) {
            viewers.push(gw.join(&format!("k{i}")).await);
        }
        rooms.push(viewers);
    }
    let p1 = page(&gw, "?limit=2").await;
    let names: Vec<&str> = p1.rooms.iter().map(|r| r.room.as_str()).collect();
    assert_eq!(names, ["k0", "k1"]);
    // The busiest room empties between two requests: an offset would now
    // skip k2; the cursor goes on from where the page ended.
    rooms[0].clear();
    eventually("k0 is gone", || async {
        (page(&gw, "").await.total_rooms == 5).then_some(())
    })
    .await;
    let p2 = page(&gw, &format!("?limit=2&cursor={}", p1.next_cursor.unwrap())).await;
    let names: Vec<&str> = p2.rooms.iter().map(|r| r.room.as_str()).collect();
    assert_eq!(names, ["k2", "k3"]);
    let seen: HashSet<String> = p1
        .rooms
        .into_iter()
        .chain(p2.rooms)
        .map(|r| r.room)
        .collect();
    assert_eq!(seen.len(), 4);
}

#[tokio::test]
async fn bad_limits_and_cursors_get_400_naming_the_parameter() {
    // More sockets than the per-address cap, all from 127.0.0.1.
    let gw = TestGateway::with(|s| s.max_connections_per_ip = 0).await;
    let _c = gw.join("one").await;
    for query in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=ten",
        "limit=",
        "limit=1.5",
        "limit=%FF",
        "limit=5&limit=6",
    ] {
        let (status, body) = http_get(gw.addr, &format!("/api/rooms?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains("limit"), "{query}: {body}");
    }
    for query in [
        "cursor=garbage",
        "cursor=5",
        "cursor=x.room",
        "cursor=5.a%20b",
        "cursor=5.",
        "cursor=%FF",
        "cursor=1.a&cursor=1.b",
    ] {
        let (status, body) = http_get(gw.addr, &format!("/api/rooms?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains("cursor"), "{query}: {body}");
    }
    // The bounds themselves, an empty cursor and unknown parameters are fine.
    for query in ["?limit=1", "?limit=1000", "?cursor=", "?other=1"] {
        let p = page(&gw, query).await;
        assert_eq!(p.total_rooms, 1, "{query}");
    }
}
