//! Fuzzes the load generator's WebSocket frame parser, and the frame scanner
//! behind it, on arbitrary server bytes. The first byte sets the size of
//! each simulated socket read, so headers and payloads split across reads.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    danmaku_loadgen::fuzz::frames(stream, usize::from(chunk));
});
