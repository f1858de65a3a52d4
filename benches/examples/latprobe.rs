use exactly_benches::pipeline::{data, measure};
use exactly_testkit::broker;
use std::time::Duration;
fn main() {
    let bs = broker::bootstrap();
    let t = broker::unique_name("latprobe");
    broker::create_topics(&bs, &[(t.as_str(), 4)]);
    for rate in [100u64, 1000, 2000] {
        let mut s = data::measure_latency(&bs, &t, &t, 4, &format!("p{rate}"), rate, 3.0, 100, Duration::from_secs(10)).unwrap();
        let p = measure::percentiles(&mut s.latencies_ms).unwrap();
        println!("rate {rate}: {p:?}");
    }
    broker::delete_topics(&bs, &[t.as_str()]);
}
