//! The machine's own ceilings as criterion rows, beside the kernels'
//! benches (DESIGN.md section 6): the FMA peak of one core per vector width
//! this CPU has (`vfmadd231ps` ymm/zmm, `vdpbf16ps` zmm, NEON `fmla`), L1
//! and L2 copy bounds with that width's loads and stores, and DRAM read on
//! one core and on all cores. FMA rows count flops as criterion's
//! "elements" (Gelem/s reads as GFLOP/s); copy and DRAM rows count bytes
//! read plus written, in decimal GB/s.
//!
//! The loops live in `examples/report/ceilings.rs`, shared with the report
//! example that prints halfkern's ratios to them.
//!
//! ```sh
//! cargo bench --bench ceilings
//! ```

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[path = "../examples/report/ceilings.rs"]
#[expect(
    dead_code,
    reason = "the report also reads each probe's kind and description"
)]
mod ceilings;

use ceilings::Unit;

fn ceiling(c: &mut Criterion) {
    let mut g = c.benchmark_group("ceiling");
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    for mut p in ceilings::probes() {
        g.throughput(match p.unit {
            Unit::Flop => Throughput::Elements(p.work as u64),
            Unit::Byte => Throughput::BytesDecimal(p.work as u64),
        });
        g.bench_function(&p.id, |b| b.iter(&mut p.run));
    }
    g.finish();
}

criterion_group!(benches, ceiling);
criterion_main!(benches);
