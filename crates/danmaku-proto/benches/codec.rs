//! Criterion micro-benches for the codecs: encode and decode of `danmaku` and
//! of `batch` frames (spliced from pre-encoded items) in both formats.

// criterion_group! generates undocumented public functions.
#![allow(missing_docs)]
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use danmaku_proto::{batch_frame, decode_server, encode, Danmaku, Format, Mode, ServerEvent};

fn sample(i: u64) -> ServerEvent {
    ServerEvent::Danmaku(Danmaku {
        id: format!("k3x9q2m1-{i:x}"),
        room: "lobby".into(),
        user: "guest-4f2a9c".into(),
        name: Some("观众".into()),
        text: "前方高能！！！ this part is great 2333".into(),
        color: "#ffffff".into(),
        mode: Mode::Scroll,
        ts: 1_763_700_000_000 + i,
    })
}

fn codecs(c: &mut Criterion) {
    let one = sample(1);
    for format in Format::ALL {
        let name = format.subprotocol();
        let encoded = encode(format, &one);
        let mut g = c.benchmark_group(format!("{name}/danmaku"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("encode", |b| b.iter(|| encode(format, black_box(&one))));
        g.bench_function("decode", |b| {
            b.iter(|| decode_server(format, black_box(encoded.as_bytes())).unwrap())
        });
        g.finish();

        let items: Vec<_> = (0..50).map(|i| encode(format, &sample(i))).collect();
        let batch = batch_frame(format, &items);
        let mut g = c.benchmark_group(format!("{name}/batch50"));
        g.throughput(Throughput::Elements(50));
        g.bench_function("splice", |b| {
            b.iter(|| batch_frame(format, black_box(&items)))
        });
        g.bench_function("decode", |b| {
            b.iter(|| decode_server(format, black_box(batch.as_bytes())).unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, codecs);
criterion_main!(benches);
